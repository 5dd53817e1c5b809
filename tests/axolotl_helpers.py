"""Helpers shared by the tests of the Axolotl path: recipes (a minimal one to validate, a tiny one that
trains on the CPU) and the `mergeforget` command run as a user runs it.

Imports neither Axolotl nor a training framework, so the recipe tests run without the [axolotl] extra.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from mergeforget_plugin.core.environment import offline_environment

from .helpers import DEMO_DATA, DEMO_TASKS

# The demo tasks' JSON Lines rows as an Axolotl custom prompt format.
DATASET_TYPE = {
    "field_instruction": "prompt",
    "field_output": "completion",
    "format": "{instruction}",
    "no_input_format": "{instruction}",
}
# Axolotl settings that keep a run on the CPU.
CPU_KEYS = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "flash_attention": False,
    "sample_packing": False,
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "dataloader_num_workers": 0,
}


def minimal_recipe(model_dir="/models/tiny", **changes):
    """The smallest valid recipe: two demo tasks on ``model_dir``, with ``changes`` at the top level."""
    recipe = {
        "output_dir": "out",
        "axolotl": {
            "base_model": str(model_dir),
            "adapter": "lora",
            "lora_r": 4,
            "lora_alpha": 8,
            "learning_rate": 1e-3,  # Axolotl requires it
        },
        "tasks": [
            {
                "name": name,
                "datasets": [{"path": str(DEMO_DATA / f"{name}.train.jsonl"), "ds_type": "json", "type": DATASET_TYPE}],
            }
            for name in ("antonyms", "plurals")
        ],
    }
    recipe.update(changes)
    return recipe


def write(tmp_path, recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def tiny_recipe(
    tmp_path,
    model_dir,
    *,
    quantized=False,
    max_steps=3,
    name="recipe.yaml",
    long_task=None,
    tasks=DEMO_TASKS,
    tensorboard=False,
    task_eval=None,
    extra=None,
):
    """A recipe that trains ``tasks`` (held-out split included) on the tiny model in a few CPU steps each."""
    axolotl = {
        "base_model": str(model_dir),
        "adapter": "qlora" if quantized else "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
        "sequence_len": 64,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": max_steps,
        "num_epochs": 1,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "learning_rate": 5e-3,
        "seed": 0,
        "save_strategy": "no",
        "logging_steps": 1,
        **CPU_KEYS,
    }
    if quantized:
        axolotl["load_in_4bit"] = True
    if tensorboard:
        axolotl["use_tensorboard"] = True
    recipe = {
        "output_dir": "out",
        "axolotl": axolotl,
        "tasks": [
            {
                "name": task,
                "datasets": [{"path": str(DEMO_DATA / f"{task}.train.jsonl"), "ds_type": "json", "type": DATASET_TYPE}],
                "test_datasets": [
                    {
                        "path": str(DEMO_DATA / f"{task}.test.jsonl"),
                        "ds_type": "json",
                        "type": DATASET_TYPE,
                        "split": "train",
                    }
                ],
            }
            for task in tasks
        ],
    }
    recipe.update(extra or {})
    for task in recipe["tasks"]:
        if task["name"] in (task_eval or {}):
            task["eval"] = task_eval[task["name"]]
        if task["name"] == long_task:
            task["overrides"] = {"max_steps": 5000}  # long enough to be killed in the middle
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def mergeforget(*args, cwd, timeout=900, extra_env=None):
    """`mergeforget ARGS` in a subprocess, offline, with ``extra_env`` on top."""
    return subprocess.run(
        [sys.executable, "-m", "mergeforget_plugin.cli", *args],
        cwd=cwd,
        env=offline_environment(**(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
