"""The merged LoRA of a continual state, written as a standard PEFT adapter directory.

Needs no PEFT: an adapter directory is ``adapter_config.json`` (kept in the state from the model's
own ``LoraConfig``) and ``adapter_model.safetensors`` with PEFT's key names, plus the ``README.md``
model card that ``PeftModel.save_pretrained`` would also write (YAML front matter with
``base_model``, ``library_name: peft``, ``pipeline_tag`` and ``tags``, then Markdown), here telling
which tasks the adapter learned, with which strategy, and (given the run's scores, rendered by
:mod:`mergeforget_plugin.evaluation.model_card`) how they score. Like the rest of ``core/``, it imports
nothing above it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ..errors import StateError
from .atomic import replace_atomic, write_atomic
from .faults import pause_point
from .slao import merge_coefficient
from .state import ContinualState, write_safetensors

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MODEL_CARD_FILE = "README.md"
# PEFT saves a LoRA layer at `base_model.model.<module path>.lora_A.weight`.
PEFT_PREFIX = "base_model.model."

_INIT_TEXT = {
    "orthogonal": "A is the orthonormal QR basis of the previous task's fine-tuned A",
    "standard": "A and B start as a fresh LoRA (Kaiming-uniform A, zero B)",
    "carry_over": "A is the previous task's fine-tuned A (unchanged)",
}
_B_INIT_TEXT = {"ft": "the previous task's fine-tuned B", "merge": "the merged B of the earlier tasks"}


def _lambda_rule(config: Any) -> str:
    if config.lambda_schedule == "inv_sqrt":
        return "λ(i) = 1/sqrt(i)"
    if config.lambda_schedule == "inv":
        return "λ(i) = 1/i (a running mean)"
    return f"λ(i) = {config.lambda_constant:g}"


def _front_matter(state: ContinualState) -> str:
    """The card's metadata as PEFT writes it (keys in its order, tags sorted) plus this package's tags."""
    base = state.adapter_config.get("base_model_name_or_path")
    strategy = str(state.config.strategy)
    tags = {"continual-learning", "lora", "mergeforget-plugin", "transformers", strategy}
    data: dict[str, Any] = {}
    if base:
        data["base_model"] = str(base)
        tags.add(f"base_model:adapter:{base}")
    data["library_name"] = "peft"
    # PEFT sets it for a causal LM (the only kind this package trains), never for another task type.
    if state.adapter_config.get("task_type") in (None, "CAUSAL_LM"):
        data["pipeline_tag"] = "text-generation"
    data["tags"] = sorted(tags)
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False) + "---\n"


def _strategy_lines(state: ContinualState) -> list[str]:
    config = state.config
    settings = ", ".join(f"{key}={value}" for key, value in config.to_dict().items())
    if not config.merges:  # SeqLoRA: the other settings must stay at their defaults and do nothing
        return [
            "Strategy: `seq`, no merge (SeqLoRA): one LoRA trained on the tasks one after another; this adapter "
            "is that LoRA after the last task.",
        ]
    if config.strategy != "slao":
        return [f"Strategy: `{config.strategy}`.", "", f"Settings: `{settings}`."]
    start = _INIT_TEXT.get(config.init, config.init)
    if config.init != "standard":
        start += f" and B is {_B_INIT_TEXT.get(config.b_init, config.b_init)}"
    return [
        "Strategy: `slao` (SLAO, Merge before Forget, Qiao & Mahdavi, ICLR 2026, arXiv:2512.23017). "
        f"Task 1 trains a standard LoRA. For task i ≥ 2, {start}; after training, A_merge,i = A_ft,i and "
        f"B_merge,i = B_merge,i-1 + λ(i) (B_ft,i - B_merge,i-1) with merge coefficient {_lambda_rule(config)} "
        "for i ≥ 2 and λ(1) = 1. This adapter is (A_merge, B_merge) after the last task.",
        "",
        f"Settings: `{settings}`.",
    ]


def _task_lines(state: ContinualState) -> list[str]:
    lines = [f"Trained on {len(state.finished_tasks)} task(s), in this order:", ""]
    for index, task in enumerate(state.finished_tasks, start=1):
        if state.config.strategy == "slao":
            lines.append(f"{index}. {task} (λ = {merge_coefficient(index, state.config):.3f})")
        else:
            lines.append(f"{index}. {task}")
    return lines


def _lora_lines(state: ContinualState) -> list[str]:
    signature = state.signature
    ranks = sorted(set(signature.ranks.values()))
    rank = f"r = {ranks[0]}" if len(ranks) == 1 else f"r = {ranks[0]}-{ranks[-1]} (differs by module)"
    targets = ", ".join(f"`{name}`" for name in sorted(signature.target_modules))
    scaling = "rsLoRA scaling (alpha/sqrt(r))" if signature.use_rslora else "scaling alpha/r"
    return [
        f"LoRA: {rank}, lora_alpha = {signature.lora_alpha:g}, {scaling}; target modules {targets} "
        f"({len(signature.ranks)} adapted layers)."
    ]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def model_card(state: ContinualState, evaluation: Sequence[str] = ()) -> str:
    """The ``README.md`` of the exported adapter: PEFT-style front matter, then what the adapter is.

    ``evaluation`` is the card's evaluation section, as lines of Markdown
    (:func:`mergeforget_plugin.evaluation.model_card.evaluation_lines` renders it from the run's
    report). The card holds no timestamp and not the run's folder, so exporting the same state and
    scores again gives the same bytes.
    """
    base = state.adapter_config.get("base_model_name_or_path")
    n = len(state.finished_tasks)
    lines = [
        f"# Continual LoRA adapter ({state.config.strategy}, {n} task(s))",
        "",
        f"One LoRA adapter for `{base}`" if base else "One LoRA adapter (base model not recorded in its config)",
    ]
    what = (
        "the LoRA after the last task" if state.config.strategy == "seq" else "the merged adapter after the last task"
    )
    lines[-1] += f", trained on {n} task(s) in sequence with mergeforget-plugin: {what}."
    lines += ["", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", ""]
    lines += [
        f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_MODEL"}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "```",
        "",
        "## Training",
        "",
    ]
    lines += _task_lines(state) + [""] + _strategy_lines(state) + [""] + _lora_lines(state) + [""]
    if evaluation:
        lines += [*evaluation, ""]
    versions = [
        f"- {name} {version}"
        for name, version in (
            ("PEFT", state.adapter_config.get("peft_version")),
            ("mergeforget-plugin", _version("mergeforget-plugin")),
        )
        if version
    ]
    if versions:
        lines += ["### Framework versions", "", *versions, ""]
    return _front_matter(state) + "\n" + "\n".join(lines)


def write_adapter(state: ContinualState, output_dir: str | os.PathLike[str], *, evaluation: Sequence[str] = ()) -> Path:
    """Write the merged LoRA of ``state`` as a standard PEFT adapter directory and return it.

    ``PeftModel.from_pretrained(base_model, output_dir)`` loads it. Each file is replaced
    atomically; the config is the same for every task of a sequence, so an export interrupted
    between the two files still pairs the new weights with a correct config. The model card
    ``README.md`` (see :func:`model_card`; ``evaluation`` is its section of scores) is written last.
    """
    if not state.merged:
        raise StateError("No task has finished yet, so there is no merged adapter to export.")
    out = Path(output_dir)
    tensors = {}
    for name, pair in state.merged.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = pair.a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = pair.b
    replace_atomic(out / ADAPTER_WEIGHTS_FILE, lambda temporary: write_safetensors(temporary, tensors))
    pause_point("export", len(state.finished_tasks))
    write_atomic(out / ADAPTER_CONFIG_FILE, json.dumps(state.adapter_config, indent=2, sort_keys=True))
    write_atomic(out / MODEL_CARD_FILE, model_card(state, evaluation))
    return out
