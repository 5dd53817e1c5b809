"""Shared fixtures: a tiny local Llama (built once per session) and the shipped demo tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "recipes" / "data" / "demo"
DEMO_TASKS = ("antonyms", "plurals", "capitals")


def demo_rows(name: str, split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DEMO_DATA / f"{name}.{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from mergeforget_plugin.data.tiny_model import build_tiny_llama

    corpus = [row["prompt"] + row["completion"] for name in DEMO_TASKS for row in demo_rows(name, "train")]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), corpus)


@pytest.fixture
def tiny_peft_model(tiny_model_dir):
    """A fresh float32 tiny Llama with LoRA r=4 on q_proj/v_proj."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
