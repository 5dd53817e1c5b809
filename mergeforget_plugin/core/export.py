"""The merged LoRA of a continual state, written as a standard PEFT adapter directory.

Needs no PEFT: an adapter directory is ``adapter_config.json`` (kept in the state from the model's
own ``LoraConfig``) and ``adapter_model.safetensors`` with PEFT's key names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save

from ..errors import StateError
from .atomic import write_atomic
from .faults import pause_point
from .state import ContinualState

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT saves a LoRA layer at `base_model.model.<module path>.lora_A.weight`.
PEFT_PREFIX = "base_model.model."


def export_adapter(state: ContinualState, output_dir: str | os.PathLike[str]) -> Path:
    """Write the merged LoRA of ``state`` as a standard PEFT adapter directory and return it.

    ``PeftModel.from_pretrained(base_model, output_dir)`` loads it. Each file is replaced
    atomically; the config is the same for every task of a sequence, so an export interrupted
    between the two files still pairs the new weights with a correct config.
    """
    if not state.merged:
        raise StateError("No task has finished yet, so there is no merged adapter to export.")
    out = Path(output_dir)
    tensors = {}
    for name, pair in state.merged.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = pair.a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = pair.b.contiguous()
    write_atomic(out / ADAPTER_WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    pause_point("export", len(state.finished_tasks))
    write_atomic(out / ADAPTER_CONFIG_FILE, json.dumps(state.adapter_config, indent=2, sort_keys=True))
    return out
