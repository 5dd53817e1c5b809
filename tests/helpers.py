"""Helpers shared by test modules (fixtures stay in conftest.py): the repository's paths and demo tasks,
TRL task lists, SFT settings and LoRA models built the same way everywhere, a made-up continual state,
and a read-only directory.

Light to import: torch and the package's core only (transformers, PEFT and TRL on first use), so
conftest.py and the subprocesses of tests/test_state.py can import it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig
from mergeforget_plugin.core.state import BaseModelFingerprint, ContinualState, LoRASignature

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "recipes" / "data" / "demo"
DEMO_TASKS = ("antonyms", "plurals", "capitals")


def demo_rows(name: str, split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DEMO_DATA / f"{name}.{split}.jsonl").read_text().splitlines()]


def demo_tasks(names=DEMO_TASKS):
    from datasets import Dataset

    from mergeforget_plugin import Task

    return [
        Task(name, Dataset.from_list(demo_rows(name, "train")), Dataset.from_list(demo_rows(name, "test")))
        for name in names
    ]


def as_conversation(row: dict[str, str], system: str | None = None) -> dict[str, list[dict[str, str]]]:
    """A prompt/completion row as a `messages` conversation (optionally after a system turn)."""
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"].strip()}]
    return {"messages": turns}


def sft_config(output_dir, **overrides):
    from trl import SFTConfig

    options = dict(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bf16=False,
    )
    return SFTConfig(**{**options, **overrides})


def peft_model(model_dir, quantized=False, rank=4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    torch.manual_seed(0)  # the same LoRA init for every model built here
    return get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "o_proj"]))


# A continual state made up for the state tests: two rank-4 modules of a 64-wide Llama.
SIGNATURE = LoRASignature(
    ranks={"layers.0.q_proj": 4, "layers.0.v_proj": 4},
    lora_alpha=8.0,
    use_rslora=False,
    target_modules=["q_proj", "v_proj"],
)
FINGERPRINT = BaseModelFingerprint(
    architecture={"model_type": "llama", "hidden_size": 64}, embedding_signature=[0.5, -0.25, 0.125]
)


def make_state(num_finished: int, dtype: torch.dtype = torch.float32) -> ContinualState:
    generator = torch.Generator().manual_seed(num_finished)

    def weights() -> dict[str, LoRAPair]:
        return {
            name: LoRAPair(
                torch.randn(4, 64, generator=generator).to(dtype), torch.randn(64, 4, generator=generator).to(dtype)
            )
            for name in SIGNATURE.ranks
        }

    return ContinualState(
        signature=SIGNATURE,
        base_model=FINGERPRINT,
        config=MergeForgetConfig(lambda_schedule="inv"),
        adapter_config={"peft_type": "LORA", "r": 4},
        finished_tasks=[f"task{i}" for i in range(1, num_finished + 1)],
        merged=weights(),
        finetuned=weights(),
        history=[{"task": f"task{i}"} for i in range(1, num_finished + 1)],
    )


# The two ways a test makes a directory read-only, each with the reason the kernel then gives for a
# write there (the errno's strerror): each works for one kind of user only.
READ_ONLY_WAYS = {
    "immutable": "Operation not permitted",  # EPERM: chattr +i, refused even to root; only root can set it
    "mode-bits": "Permission denied",  # EACCES: chmod 555, refused to any user but root
}


def read_only(directory, how: str):
    """Make ``directory`` read-only the way ``how`` (a key of READ_ONLY_WAYS) names and return the
    function that undoes it; skip where that way is impossible for this user or file system."""
    if how == "mode-bits":
        if os.geteuid() == 0:
            pytest.skip("running as root, which writes through mode bits: chmod cannot make a read-only directory")
        directory.chmod(0o555)
        return lambda: directory.chmod(0o755)
    assert how == "immutable", how
    if os.geteuid() != 0:
        pytest.skip("only root can set the immutable attribute (chattr +i)")
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a read-only directory")
    return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


def weather(swapped: bool) -> list[dict[str, str]]:
    """Two prompts and their answers; ``swapped`` teaches the opposite answers to the same prompts."""
    # The prompts differ in their last word, which even a tiny random model learns to read in a few steps.
    answers = {"Wear a coat when it is hot": " no", "Wear a coat when it is cold": " yes"}
    if swapped:
        answers = {prompt: " yes" if answer == " no" else " no" for prompt, answer in answers.items()}
    return [{"prompt": prompt, "completion": answer} for prompt, answer in answers.items()] * 12
