"""Evaluations and seconds the `needed` schedule saves against `all`, on a 15-task sequence.

Run:    python benchmarks/eval_schedule.py            # 15 tasks, tiny random Llama, CPU (about two minutes)
Smoke:  python benchmarks/eval_schedule.py --smoke    # 4 tasks (CI runs this)

The same sequence runs through `train_sequence` twice, once per schedule: T tasks cycled from the
shipped demo and generative data (label tasks scored with `choice`, free-text ones with `loss` and
`rouge_l`), one optimizer step each, so the time is mostly evaluation. The table gives the task
evaluations each schedule made (counted from the stored rows), what `schedule.evaluation_count`
predicts, the wall time of the whole sequence, and the AA/BWT/FWT of the `choice` and `loss`
matrices (the tasks' primary metrics differ in unit, so these are per metric). They must agree:
the schedules score the same entries for them, and the tasks and training are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# No model hub here: the offline settings, before transformers is imported.
from mergeforget_plugin.core.environment import offline_environment  # noqa: E402

os.environ.update(offline_environment())

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "data"
SOURCES = (
    ("demo", "antonyms", {}),
    ("generative", "headline", {"metric": "rouge_l", "metrics": ["loss"], "max_new_tokens": 8}),
    ("demo", "plurals", {}),
    ("demo", "capitals", {}),
    ("generative", "reply", {"metric": "loss"}),
)


def rows(folder: str, name: str, split: str, count: int) -> list[dict[str, str]]:
    path = DATA / folder / f"{name}.{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--test-rows", type=int, default=8, help="held-out rows per task")
    parser.add_argument("--smoke", action="store_true", help="4 tasks")
    parser.add_argument("--output-dir", default="outputs/benchmark")
    args = parser.parse_args()
    if args.smoke:
        args.tasks = 4

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    import mergeforget_plugin.engine as engine
    from mergeforget_plugin import Task, build_tiny_llama, train_sequence
    from mergeforget_plugin.core.layout import RunLayout
    from mergeforget_plugin.evaluation.report import build_report, load_evaluations
    from mergeforget_plugin.evaluation.schedule import evaluation_count
    from mergeforget_plugin.evaluation.scoring import eval_set_from_rows

    out = Path(args.output_dir) / "eval_schedule"
    corpus = [r["prompt"] + r["completion"] for folder, name, _ in SOURCES for r in rows(folder, name, "train", 64)]
    model_dir = build_tiny_llama(out / "tiny-model", corpus)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def tasks() -> list[Task]:
        made = []
        for index in range(args.tasks):
            folder, name, settings = SOURCES[index % len(SOURCES)]
            made.append(
                Task(
                    f"{name}-{index + 1:02d}",
                    Dataset.from_list(rows(folder, name, "train", 16)),
                    Dataset.from_list(rows(folder, name, "test", args.test_rows)),
                    **settings,
                )
            )
        return made

    # Seconds spent scoring, apart from the trainers' own set-up: the engine's one scoring call, timed.
    scoring = {"seconds": 0.0}
    score_all = engine.score_all

    def timed_score_all(*arguments, **keywords):
        started = time.perf_counter()
        try:
            return score_all(*arguments, **keywords)
        finally:
            scoring["seconds"] += time.perf_counter() - started

    engine.score_all = timed_score_all
    probe = eval_set_from_rows("plurals_probe", rows("demo", "plurals", "test", args.test_rows), metric="loss")
    results = {"command": " ".join(sys.argv), "tasks": args.tasks, "test_rows": args.test_rows, "runs": {}}
    print(
        "| schedule | task evaluations | predicted | probe evaluations | seconds | of which scoring "
        "| choice AA / BWT / FWT "
        "| loss AA / BWT / FWT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for schedule in ("all", "needed"):
        run_dir = out / schedule
        shutil.rmtree(run_dir, ignore_errors=True)  # a run left here would be resumed, not measured
        scoring["seconds"] = 0.0
        started = time.perf_counter()
        train_sequence(
            AutoModelForCausalLM.from_pretrained(model_dir),
            tasks(),
            args=SFTConfig(
                output_dir=str(run_dir),
                max_steps=1,
                per_device_train_batch_size=8,
                learning_rate=5e-3,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                bf16=False,
                disable_tqdm=True,
                seed=0,
            ),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
            probes=[probe],
            eval_schedule=schedule,
            loss_matrix=False,
        )
        seconds = time.perf_counter() - started
        records = load_evaluations(RunLayout(run_dir))
        scored = sum(len(record["scores"]) for record in records)
        probes = sum(len(record["probes"]) for record in records)
        matrices = build_report(RunLayout(run_dir))["metric_matrices"]
        metrics = {
            metric: {key: summary["metrics"][key] for key in ("average_accuracy", "bwt", "fwt")}
            for metric, summary in matrices.items()
        }
        predicted = evaluation_count(schedule, args.tasks, 1)
        results["runs"][schedule] = {
            "task_evaluations": scored,
            "probe_evaluations": probes,
            "predicted": predicted,
            "seconds": seconds,
            "scoring_seconds": scoring["seconds"],
            "metrics": metrics,
        }

        def cells(metric: str, scale: float, metrics: dict = metrics) -> str:
            values = metrics.get(metric, {})
            return " / ".join("n/a" if values.get(k) is None else f"{scale * values[k]:.3f}" for k in values)

        print(
            f"| {schedule} | {scored} | {predicted[0]} | {probes} | {seconds:.1f} | {scoring['seconds']:.1f} | "
            f"{cells('choice', 100)} | "
            f"{cells('loss', 1)} |",
            flush=True,
        )
    saved = results["runs"]["all"]["seconds"] - results["runs"]["needed"]["seconds"]
    saved_scoring = results["runs"]["all"]["scoring_seconds"] - results["runs"]["needed"]["scoring_seconds"]
    results["seconds_saved"], results["scoring_seconds_saved"] = saved, saved_scoring
    print(
        f"\nneeded: {results['runs']['all']['task_evaluations'] - results['runs']['needed']['task_evaluations']} "
        f"task evaluations, {saved_scoring:.1f} s of scoring and {saved:.1f} s of wall time fewer than all"
    )
    out.mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "eval_schedule.json").write_text(json.dumps(results, indent=2))
    print(f"Wrote {Path(args.output_dir) / 'eval_schedule.json'}")


if __name__ == "__main__":
    main()
