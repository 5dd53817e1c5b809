"""Two generative tasks from real text on a CPU, SLAO against SeqLoRA: ROUGE-L and held-out loss after every task.

Run (after the README's install):  python examples/generative_cpu.py
Defaults: SmolLM2-135M-Instruct (the embedded default), the tasks in recipes/data/generative/
(headline of a BBC News article from its first paragraph; reply to a chatterbot-corpus line; see
examples/make_generative_data.py), one epoch of 96 rows per task, and the demo's `capitals` task
as a probe that is never trained on (is general knowledge kept?). `--model tiny` builds a tiny
random Llama instead (seconds; for smoke tests).

Each task is scored with ROUGE-L F1 of greedy generations (its primary metric) and the held-out
loss; the report of each run is in OUTPUT/<strategy>/report.md, and the two runs' forgetting
curves in OUTPUT/slao/comparison.png.
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

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"
TASKS = ("headline", "reply")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' (default), 'tiny', or a local model directory")
    parser.add_argument("--output-dir", default="outputs/generative_cpu")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs over each task's training rows")
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps per task (overrides --epochs)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["slao", "seq"], choices=["slao", "seq"])
    return parser.parse_args()


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_matrix(report: dict, metric: str) -> None:
    summary = report["metric_matrices"][metric]
    scale, digits = (100, 1) if summary["unit"] == "fraction" else (1, 3)
    names = summary["tasks"]
    print("after \\ on".ljust(12) + "".join(name.rjust(11) for name in names))
    labelled = ([("base", summary["zero_shot"])] if summary["zero_shot"] else []) + [
        (after, dict(zip(names, row, strict=True)))
        for after, row in zip(summary["rows_after"], summary["table"], strict=True)
    ]
    for label, row in labelled:
        cells = "".join(("" if row.get(n) is None else f"{scale * row[n]:.{digits}f}").rjust(11) for n in names)
        print(label.ljust(12) + cells)
    m = summary["metrics"]
    aa = "n/a" if m["average_accuracy"] is None else f"{scale * m['average_accuracy']:.{digits}f}"
    bwt = "n/a" if m["bwt"] is None else f"{scale * m['bwt']:+.{digits}f}"
    print(f"AA {aa}   BWT {bwt} (negative = forgetting)")


def main() -> None:
    args = parse_args()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from mergeforget_plugin import MergeForgetConfig, Task, build_tiny_llama, eval_set_from_rows, train_sequence
    from mergeforget_plugin.data.models import default_model_dir
    from mergeforget_plugin.evaluation.report import compare_runs

    out = Path(args.output_dir)
    data = {
        name: (rows(DATA / "generative" / f"{name}.train.jsonl"), rows(DATA / "generative" / f"{name}.test.jsonl"))
        for name in TASKS
    }
    probe_rows = rows(DATA / "demo" / "capitals.test.jsonl")
    probe_options = rows(DATA / "demo" / "capitals.train.jsonl")
    if args.model == "smollm2":
        model_dir = default_model_dir()
    elif args.model == "tiny":
        corpus = [r["prompt"] + r["completion"] for train, test in data.values() for r in train + test]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        model_dir = Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    runs = []
    for strategy in args.strategies:
        started = time.time()
        tasks = [
            Task(
                name,
                Dataset.from_list(train),
                Dataset.from_list(test),
                metric="rouge_l",
                metrics=["loss"],
                max_new_tokens=24,
            )
            for name, (train, test) in data.items()
        ]
        probe = eval_set_from_rows("capitals_probe", probe_rows, metric="choice", option_rows=probe_options)
        result = train_sequence(
            AutoModelForCausalLM.from_pretrained(model_dir),
            tasks,
            args=SFTConfig(
                output_dir=str(out / strategy),
                num_train_epochs=args.epochs,
                max_steps=args.max_steps,
                per_device_train_batch_size=8,
                learning_rate=args.learning_rate,
                logging_steps=4,
                save_strategy="no",
                report_to=[],
                seed=args.seed,
                use_cpu=True,
                bf16=False,
                disable_tqdm=True,
            ),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "v_proj"]),
            config=MergeForgetConfig(strategy=strategy),
            probes=[probe],
            eval_schedule="all",
            loss_matrix=False,
        )
        report = json.loads((out / strategy / "report.json").read_text())
        print(f"\n== {strategy}: {time.time() - started:.0f} s ==")
        print("ROUGE-L F1 (points), rows: after training task i, columns: task evaluated")
        print_matrix(report, "rouge_l")
        print("Held-out loss (nats per answer token; lower is better)")
        print_matrix(report, "loss")
        capitals = report["probes"]["capitals_probe"]
        print(
            f"Probe capitals_probe (choice, never trained on): base {100 * capitals['zero_shot']:.1f} -> "
            + " -> ".join(f"{100 * v:.1f}" for v in capitals["rows"])
            + f" (change {100 * capitals['change']:+.1f})"
        )
        runs.append(result.adapter_dir.parent)
    if len(runs) > 1:
        print()
        print(compare_runs(runs))


if __name__ == "__main__":
    main()
