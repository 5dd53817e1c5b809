"""Two tasks through train_sequence (TRL's SFTTrainer); run by tests/test_distributed.py in one
process and under torchrun with two: DDP over gloo, or DeepSpeed on the CPU with ZERO2 (ZeRO
stage 2: the optimizer's float32 copy is partitioned) or ZERO3 (stage 3: the LoRA itself is).

Usage: python tests/ddp_sequence_script.py MODEL_DIR OUTPUT_DIR PER_DEVICE_BATCH [ZERO2|ZERO3]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig

from mergeforget_plugin import Task, read_lora, train_sequence

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo"


class RecordStarts(TrainerCallback):
    """Writes, per process, a checksum of the LoRA each task starts from."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weights = read_lora(model)
        total = sum(float(p.a.double().sum() + p.b.double().sum()) for p in weights.values())
        rank = args.process_index
        with open(self.out / f"starts-rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps({"global_step": state.global_step, "lora_sum": total}) + "\n")


def main() -> None:
    model_dir, out, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    zero_stage = {"ZERO2": 2, "ZERO3": 3}.get(sys.argv[4]) if len(sys.argv) > 4 else None
    out.mkdir(parents=True, exist_ok=True)

    def rows(name, split):
        return [json.loads(line) for line in (DEMO / f"{name}.{split}.jsonl").read_text().splitlines()]

    # Held-out rows: every task's row of the accuracy matrix is scored after every task (under
    # ZeRO-3 by every process, since each forward pass gathers the partitioned weights).
    tasks = [
        Task(name, Dataset.from_list(rows(name, "train")), Dataset.from_list(rows(name, "test")[:8]))
        for name in ("antonyms", "plurals")
    ]
    zero_config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": zero_stage},
    }
    args = SFTConfig(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=batch,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        deepspeed=zero_config if zero_stage else None,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # Seeded after loading: under ZeRO-3 the load itself draws random numbers (it builds the model
    # partitioned), and the LoRA's random init must be the same as in one process.
    torch.manual_seed(0)
    train_sequence(
        model,
        tasks,
        args=args,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        callbacks=[RecordStarts(out)],
    )


if __name__ == "__main__":
    main()
