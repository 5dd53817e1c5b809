"""Helpers shared by test modules: TRL task lists, SFT settings and LoRA models built the same way everywhere."""

from __future__ import annotations

import torch

from mergeforget_plugin import Task

from .conftest import DEMO_TASKS, demo_rows


def demo_tasks(names=DEMO_TASKS):
    from datasets import Dataset

    return [
        Task(name, Dataset.from_list(demo_rows(name, "train")), Dataset.from_list(demo_rows(name, "test")))
        for name in names
    ]


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
