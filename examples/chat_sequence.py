"""The demo's four tasks as conversations, through TRL's SFTTrainer and the model's chat template:
SLAO, then SeqLoRA, then both runs side by side.

Run (after the README's install):  python examples/chat_sequence.py
Defaults: SmolLM2-135M-Instruct (the embedded default) and its ChatML template; the tasks of
`recipes/demo-smollm2-chat.yaml` (data in recipes/data/demo/chat/, `messages` rows), with its
budget: LoRA r=8 on every linear layer, 10 steps of batch 8 per task, lr 2e-3.
`--model tiny` builds a tiny Llama with a ChatML template instead (seconds; for smoke tests).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# No model hub here: the offline settings, before transformers is imported.
from mergeforget_plugin.core.environment import offline_environment  # noqa: E402

os.environ.update(offline_environment())

CHAT_DATA = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo" / "chat"
TASK_NAMES = ("domain", "language_b", "polarity", "kind")
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' (default), 'tiny', or a local model directory")
    parser.add_argument("--output-dir", default="outputs/chat_sequence", help="one run folder per strategy goes here")
    parser.add_argument("--strategies", default="slao,seq", help="comma-separated: slao (paper), seq (SeqLoRA)")
    parser.add_argument("--max-steps", type=int, default=10, help="optimizer steps per task")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-examples", type=int, default=None, help="use only the first rows of each split")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def rows(name: str, split: str, limit: int | None) -> list[dict]:
    return [json.loads(line) for line in (CHAT_DATA / f"{name}.{split}.jsonl").read_text().splitlines()][:limit]


def main() -> None:
    args = parse_args()
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from mergeforget_plugin import ContinualConfig, MergeForgetConfig, Task, build_tiny_llama, train_sequence
    from mergeforget_plugin.data.models import default_model_dir
    from mergeforget_plugin.evaluation.report import compare_runs

    output_dir = Path(args.output_dir)
    if args.model == "smollm2":
        model_dir = default_model_dir()
    elif args.model == "tiny":
        corpus = [
            turn["content"] for name in TASK_NAMES for row in rows(name, "train", None) for turn in row["messages"]
        ]
        model_dir = build_tiny_llama(output_dir / "tiny-model", corpus, chat_template=True)
    else:
        model_dir = Path(args.model)
    limit = args.max_examples
    tasks = [Task(name, rows(name, "train", limit), rows(name, "test", limit)) for name in TASK_NAMES]
    runs = []
    for strategy in args.strategies.split(","):
        started = time.perf_counter()
        run_dir = output_dir / f"chat-{strategy}"
        train_sequence(
            AutoModelForCausalLM.from_pretrained(model_dir),
            tasks,
            args=SFTConfig(
                output_dir=str(run_dir),
                max_steps=args.max_steps,
                per_device_train_batch_size=8,
                learning_rate=args.learning_rate,
                lr_scheduler_type="constant",
                logging_steps=5,
                save_strategy="no",
                report_to=[],
                seed=args.seed,
                use_cpu=True,
                bf16=False,  # TRL's GPU defaults only cost time on a CPU (see examples/trl_sequence.py)
                gradient_checkpointing=False,
            ),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=LINEAR),
            settings=ContinualConfig(strategy=MergeForgetConfig(strategy=strategy)),
        )
        print(f"{strategy}: {time.perf_counter() - started:.0f} s")
        runs.append(run_dir)
    print(compare_runs(runs))


if __name__ == "__main__":
    main()
