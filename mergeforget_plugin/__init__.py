"""mergeforget-plugin: continual LoRA fine-tuning with SLAO ("Merge before Forget", ICLR 2026).

One LoRA adapter, carried across a sequence of tasks with orthogonal initialization and
time-aware asymmetric merging, for TRL (`MergeForgetCallback`, `train_sequence`) and Axolotl.

The math (`mergeforget_plugin.slao`) and the state (`mergeforget_plugin.state`) import only
torch and safetensors; everything that needs transformers, PEFT or TRL is imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .slao import (
    LoRAPair,
    MergeForgetConfig,
    SLAOMathError,
    merge_coefficient,
    merge_task,
    orthogonal_basis,
    task_start_weights,
)
from .state import ContinualState, StateError, StateMismatchError, load_state, save_state

__version__ = "0.1.0"

_LAZY = {
    "MergeForgetCallback": "callback",
    "Task": "trl_sequence",
    "SequenceResult": "trl_sequence",
    "train_sequence": "trl_sequence",
    "export_adapter": "peft_bridge",
    "read_lora": "peft_bridge",
    "write_lora": "peft_bridge",
    "UnsupportedAdapterError": "peft_bridge",
    "build_tiny_llama": "tiny_model",
    "MergeForgetPlugin": "axolotl_plugin",
    "load_recipe": "recipe",
    "RecipeError": "recipe",
    "run_recipe": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContinualState",
    "LoRAPair",
    "MergeForgetConfig",
    "SLAOMathError",
    "StateError",
    "StateMismatchError",
    "load_state",
    "merge_coefficient",
    "merge_task",
    "orthogonal_basis",
    "save_state",
    "task_start_weights",
    *_LAZY,
]
