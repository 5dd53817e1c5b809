"""Shared fixtures: a tiny local Llama (built once per session) and LoRA on it. Helpers that are not
fixtures (paths, demo tasks, recipes) live in tests/helpers.py and tests/axolotl_helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

from mergeforget_plugin.core.environment import offline_environment

# Before any test imports transformers or the Hub client, which read these once.
os.environ.update(offline_environment())

import pytest  # noqa: E402

from .helpers import DEMO_TASKS, demo_rows  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from mergeforget_plugin.data.tiny_model import build_tiny_llama

    corpus = [row["prompt"] + row["completion"] for name in DEMO_TASKS for row in demo_rows(name, "train")]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), corpus)


@pytest.fixture(scope="session")
def learning_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose LoRA learns the weather task in a few steps (the shared one's logits barely move)."""
    from mergeforget_plugin import build_tiny_llama

    corpus = [row["prompt"] + row["completion"] for name in DEMO_TASKS for row in demo_rows(name, "train")]
    return build_tiny_llama(tmp_path_factory.mktemp("learning-model"), corpus, initializer_range=0.3)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer has ChatML's turn tokens and template (SmolLM2-Instruct's), trained
    quickly enough to move (see learning_model_dir)."""
    from mergeforget_plugin import build_tiny_llama

    corpus = [row["prompt"] + row["completion"] for name in DEMO_TASKS for row in demo_rows(name, "train")]
    return build_tiny_llama(tmp_path_factory.mktemp("chat-model"), corpus, initializer_range=0.3, chat_template=True)


@pytest.fixture
def tiny_peft_model(tiny_model_dir):
    """A fresh float32 tiny Llama with LoRA r=4 on q_proj/v_proj."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


@pytest.fixture(scope="session")
def axolotl_reference_run(tiny_model_dir, tmp_path_factory) -> Path:
    """One uninterrupted `mergeforget train` of the tiny three-task recipe (3 steps a task), shared
    by the tests that compare against it: a folder holding ``recipe.yaml`` and the run in ``out/``.
    Read it, never write into it; a test that runs more copies it first."""
    pytest.importorskip("axolotl", reason="the runner needs the [axolotl] extra")
    from .axolotl_helpers import mergeforget, tiny_recipe

    folder = tmp_path_factory.mktemp("axolotl-reference")
    completed = mergeforget("train", str(tiny_recipe(folder, tiny_model_dir)), cwd=folder)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return folder
