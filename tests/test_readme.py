"""The README's Python examples run as written (with small local stand-ins for the user's data)."""

from __future__ import annotations

import re

import pytest

from .helpers import REPO, demo_rows


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_the_trl_examples():
    blocks = python_blocks()
    assert len(blocks) == 3 and "MergeForgetCallback" in blocks[0] and "train_sequence" in blocks[1]
    assert "ReplayConfig" in blocks[2] and "ForgettingGuard" in blocks[2]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_readme_python_example_runs(index, tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    datasets = {name: Dataset.from_list(demo_rows(name, "train")[:16]) for name in ("antonyms", "plurals", "capitals")}
    tests = {name: Dataset.from_list(demo_rows(name, "test")) for name in ("antonyms", "plurals")}
    namespace = {
        "base_model": AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir),
        "ds_sentiment": datasets["antonyms"],
        "ds_topics": datasets["plurals"],
        "ds_qa": datasets["capitals"],
        "train_a": datasets["antonyms"],
        "test_a": tests["antonyms"],
        "train_b": datasets["plurals"],
        "test_b": tests["plurals"],
    }
    if index >= 1:  # the later blocks continue from the first block's `model`
        from peft import LoraConfig, get_peft_model

        namespace["model"] = get_peft_model(
            namespace["base_model"], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
        )
    import trl

    real_config = trl.SFTConfig

    def cpu_config(**kwargs):
        # What a CPU-only user adds (README, "Notes for CPU runs"), plus a short budget.
        return real_config(**{"use_cpu": True, "bf16": False, "max_steps": 3, "report_to": [], **kwargs})

    if index == 2:  # the replay and guard block names its tasks and arguments as the second block does
        from mergeforget_plugin import Task

        namespace["tasks"] = [
            Task("sentiment", datasets["antonyms"], tests["antonyms"]),
            Task("topics", datasets["plurals"], tests["plurals"]),
        ]
        namespace["args"] = cpu_config(output_dir="out")

    monkeypatch.setattr(trl, "SFTConfig", cpu_config)
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), namespace)

    from mergeforget_plugin import load_state

    state = load_state(tmp_path / "out" / "state")
    assert state.finished_tasks == (["sentiment", "topics", "qa"] if index == 0 else ["sentiment", "topics"])
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    if index == 2:  # the buffer is in the state, at its size: 200 rows asked, the 32 the two tasks have
        assert state.replay.buffer_rows == 200 and sum(len(rows) for rows in state.replay_buffer.values()) == 32
