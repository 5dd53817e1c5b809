"""mergeforget-plugin: continual LoRA fine-tuning with SLAO ("Merge before Forget", ICLR 2026).

One LoRA adapter, carried across a sequence of tasks with orthogonal initialization and
time-aware asymmetric merging, for TRL (`MergeForgetCallback`, `train_sequence`) and Axolotl.

The math (`mergeforget_plugin.core.slao`), the state (`.state`) and the engine (`.engine`) import only
torch and safetensors; everything that needs transformers, PEFT, TRL or Axolotl is imported on
first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .core.layout import RunLayout
from .core.replay import ReplayConfig
from .core.slao import (
    LoRAPair,
    MergeForgetConfig,
    merge_coefficient,
    merge_task,
    orthogonal_basis,
    task_start_weights,
)
from .core.state import ContinualState, load_state, save_state
from .errors import (
    DataPrepError,
    EvaluationError,
    ForgettingGuardError,
    MergeForgetError,
    RecipeError,
    ReplayError,
    RunError,
    SLAOMathError,
    StateError,
    StateMismatchError,
    TaskNameError,
    TrainingDataError,
    UnsupportedAdapterError,
)

__version__ = "0.1.0"

_LAZY = {
    "ContinualTask": "engine",
    "ContinualConfig": "settings",
    "MergeForgetCallback": "integrations.callback",
    "Task": "integrations.trl.sequence",
    "SequenceResult": "integrations.trl.sequence",
    "train_sequence": "integrations.trl.sequence",
    "export_adapter": "evaluation.model_card",
    "EvalSet": "evaluation.scoring",
    "ForgettingGuard": "evaluation.guard",
    "eval_set_from_rows": "evaluation.scoring",
    "LMEvalProbe": "evaluation.lm_eval_probe",
    "read_lora": "peft_bridge",
    "write_lora": "peft_bridge",
    "build_tiny_llama": "data.tiny_model",
    "MergeForgetPlugin": "integrations.axolotl.plugin",
    "load_recipe": "integrations.axolotl.recipe",
    "run_recipe": "integrations.axolotl.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContinualState",
    "DataPrepError",
    "EvaluationError",
    "ForgettingGuardError",
    "LoRAPair",
    "MergeForgetConfig",
    "MergeForgetError",
    "RecipeError",
    "ReplayConfig",
    "ReplayError",
    "RunError",
    "RunLayout",
    "SLAOMathError",
    "StateError",
    "StateMismatchError",
    "TaskNameError",
    "TrainingDataError",
    "UnsupportedAdapterError",
    "load_state",
    "merge_coefficient",
    "merge_task",
    "orthogonal_basis",
    "save_state",
    "task_start_weights",
    *_LAZY,
]
