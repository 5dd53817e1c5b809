"""Train one LoRA on three tasks in a row with TRL's SFTTrainer and SLAO, then print the loss matrix.

Run (after the README's install):  python examples/trl_sequence.py
Defaults: SmolLM2-135M-Instruct (the embedded default), the demo tasks in recipes/data/demo/.
`--model tiny` builds a tiny random Llama instead (seconds; for smoke tests).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# No model hub here: the offline settings, before transformers is imported.
from mergeforget_plugin.core.environment import offline_environment  # noqa: E402

os.environ.update(offline_environment())

DEMO_DATA = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo"
TASK_NAMES = ("antonyms", "plurals", "capitals")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' (default), 'tiny', or a local model directory")
    parser.add_argument("--output-dir", default="outputs/trl_sequence", help="state/, adapter/ and tasks/ go here")
    parser.add_argument("--strategy", default="slao", choices=["slao", "seq"], help="slao (paper) or seq (SeqLoRA)")
    parser.add_argument("--max-steps", type=int, default=12, help="optimizer steps per task")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from mergeforget_plugin import MergeForgetConfig, Task, build_tiny_llama, train_sequence
    from mergeforget_plugin.data.models import default_model_dir

    output_dir = Path(args.output_dir)
    if args.model == "smollm2":
        model_dir = default_model_dir()
    elif args.model == "tiny":
        corpus = [
            row["prompt"] + row["completion"]
            for name in TASK_NAMES
            for row in map(json.loads, (DEMO_DATA / f"{name}.train.jsonl").read_text().splitlines())
        ]
        model_dir = build_tiny_llama(output_dir / "tiny-model", corpus)
    else:
        model_dir = Path(args.model)

    def split(name: str, part: str):
        return load_dataset("json", data_files=str(DEMO_DATA / f"{name}.{part}.jsonl"), split="train")

    tasks = [Task(name, split(name, "train"), split(name, "test")) for name in TASK_NAMES]
    result = train_sequence(
        AutoModelForCausalLM.from_pretrained(model_dir),
        tasks,
        args=SFTConfig(
            output_dir=str(output_dir),
            max_steps=args.max_steps,
            per_device_train_batch_size=8,
            learning_rate=args.learning_rate,
            logging_steps=4,
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            use_cpu=True,
            # TRL's defaults are for GPUs: bf16 autocast, and gradient checkpointing, which buys
            # memory with a second forward pass. On a CPU both only cost time (2 steps of a demo
            # task on SmolLM2-135M, 2 cores: 22-27 s a step with both, 1.0-1.1 s without).
            bf16=False,
            gradient_checkpointing=False,
        ),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "v_proj"]),
        config=MergeForgetConfig(strategy=args.strategy),
    )

    print(f"\nEval loss after each task ({args.strategy}); rows: trained so far, columns: task evaluated")
    names = list(TASK_NAMES)
    print("after \\ on".ljust(12) + "".join(name.rjust(11) for name in names))
    for after, row in result.eval_loss.items():
        print(after.ljust(12) + "".join(f"{row[name]:11.3f}" for name in names))
    print(f"\nFinished tasks: {result.state.finished_tasks}")
    print(f"Merged adapter (standard PEFT): {result.adapter_dir}")


if __name__ == "__main__":
    main()
