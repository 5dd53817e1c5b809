"""How much one fresh LoRA learns each real-text task at a given budget: the room a task leaves.

Run:    python benchmarks/task_calibration.py                       # every task of the catalogue, 1 and 3
                                                                    # epochs of 64 rows, SmolLM2-135M, 2 workers
Smoke:  python benchmarks/task_calibration.py --smoke               # tiny random model, two tasks (CI runs this)

The grid in continual_benchmark.py wants tasks a model learns: right after its own training each
task should be well above zero-shot and below a ceiling, or the grid cannot show forgetting. This
script measures that for every task of real_text_tasks.CATALOGUE before a task joins the grid: the
base model's score on the held-out rows, then the score of a LoRA trained from the base on the
task alone (the grid's LoRA: every linear layer, rank 8, constant learning rate, the same seeded
init for every task), for each budget in --budgets (``BATCHxSTEPS``, the epochs follow from the
training rows). Each (task, budget) is one job; jobs run in --workers processes of one thread.

The table gives zero-shot, trained and their difference in points (ROUGE-L x 100 for the headline
tasks), the epochs, and the training seconds of each job; --output-dir/calibration.json keeps them,
with the trained model's answer to every held-out row (and, for a label task, how often it gave
each label), the command, commit, versions and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import continual_benchmark as grid
import real_text_tasks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_budget(text: str) -> tuple[int, int]:
    """'4x16' -> (batch 4, 16 steps)."""
    try:
        batch, steps = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--budgets: {text!r} is not BATCHxSTEPS, e.g. 4x16") from None
    if batch < 1 or steps < 1:
        raise SystemExit(f"--budgets: {text!r} needs a batch and a step count of at least 1")
    return batch, steps


def run_job(name: str, budget: tuple[int, int], args: argparse.Namespace) -> dict:
    """Zero-shot and trained score of one task at one budget, in this worker's base model."""
    from collections import Counter

    from mergeforget_plugin.evaluation.scoring import accuracy, choice_predictions, eval_set_from_rows, generate_greedy

    base, tokenizer = grid._LOADED["base"], grid._LOADED["tokenizer"]
    task = real_text_tasks.build_tasks(args.train_size, args.test_size, names=(name,))[name]
    scoring = real_text_tasks.SCORING[name]
    eval_set = eval_set_from_rows(name, task["test"], option_rows=task["train"], **scoring)
    zero_shot = accuracy(base, tokenizer, eval_set)
    batch, steps = budget
    job_args = argparse.Namespace(**{**vars(args), "batch_size": batch, "steps": steps})
    started = time.time()
    run_dir = Path(args.output_dir) / f"{name}-{batch}x{steps}"
    model = grid.train_task_loras(base, tokenizer, {name: task}, job_args, run_dir)
    seconds = time.time() - started
    model.base_model.set_adapter("task1")
    # What the trained model answers, so a score can be read (one label for every row, say).
    answer = choice_predictions if scoring["metric"] == "choice" else generate_greedy
    answers = answer(model, tokenizer, eval_set)
    return {
        "task": name,
        "metric": scoring["metric"],
        "batch_size": batch,
        "steps": steps,
        "epochs": batch * steps / len(task["train"]),
        "train_rows": len(task["train"]),
        "test_rows": len(task["test"]),
        "zero_shot": zero_shot,
        "trained": accuracy(model, tokenizer, eval_set),
        "train_seconds": seconds,
        "trained_answers": answers,
        "trained_answer_counts": dict(Counter(answers)) if scoring["metric"] == "choice" else None,
    }


def print_table(results: dict) -> None:
    print("\n| task | metric | batch x steps | epochs | zero-shot | trained | difference | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for job in results["jobs"]:
        zero, trained = 100 * job["zero_shot"], 100 * job["trained"]
        print(
            f"| {job['task']} | {job['metric']} | {job['batch_size']} x {job['steps']} | {job['epochs']:.2f} | "
            f"{zero:.1f} | {trained:.1f} | {trained - zero:+.1f} | {job['train_seconds']:.0f} |"
        )
    workers = results["settings"]["workers"]
    print(f"\nWall time: {results['wall_seconds']:.0f} s ({workers} worker{'s' if workers != 1 else ''}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(real_text_tasks.CATALOGUE), help="comma-separated task names")
    parser.add_argument("--budgets", default="4x16,4x48", help="comma-separated BATCHxSTEPS (default: 1 and 3 epochs)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0, help="the LoRA's init and the batches")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, two tasks, two steps")
    parser.add_argument("--output-dir", default="outputs/calibration")
    args = parser.parse_args()
    names = args.tasks.split(",")
    unknown = sorted(set(names) - set(real_text_tasks.CATALOGUE))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; tasks: {', '.join(real_text_tasks.CATALOGUE)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # What the grid's LoRA and trainer read (continual_benchmark.sft_config, lora_config).
    args.rank, args.device, args.max_length = 8, "cpu", real_text_tasks.MAX_LENGTH
    if args.smoke:
        from mergeforget_plugin import build_tiny_llama

        names, args.budgets, args.train_size, args.test_size = list(real_text_tasks.SMOKE_TASKS), "8x2", 20, 10
        args.max_length, args.workers = 384, 1  # the tiny tokenizer needs about 3 x SmolLM2's tokens
        built = real_text_tasks.build_tasks(args.train_size, args.test_size, names=tuple(names))
        corpus = [r["prompt"] + r["completion"] for t in built.values() for r in t["train"] + t["test"]]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        from mergeforget_plugin.data.models import default_model_dir

        model_dir = default_model_dir()
    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    jobs = [(name, budget) for name in names for budget in budgets]

    results = {
        **grid.provenance(model_dir, args),
        "jobs": [],
    }
    started = time.time()
    if args.workers <= 1:
        grid._load(str(model_dir), "cpu", None)
        results["jobs"] = [run_job(name, budget, args) for name, budget in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // args.workers)
        with ProcessPoolExecutor(
            max_workers=args.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=grid._load,
            initargs=(str(model_dir), "cpu", threads),
        ) as pool:
            results["jobs"] = list(pool.map(run_job, [n for n, _ in jobs], [b for _, b in jobs], [args] * len(jobs)))
    results["wall_seconds"] = time.time() - started
    (out / "calibration.json").write_text(json.dumps(results, indent=2))
    print_table(results)


if __name__ == "__main__":
    main()
