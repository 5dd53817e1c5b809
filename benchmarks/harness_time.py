"""Where a benchmark run's time goes outside the optimizer steps, per task.

On a GPU the optimizer steps of a 135M model take milliseconds, so whatever the harness does
around them (building trainers, tokenizing rows, scoring, the package's boundary) is the whole of
the difference between a GPU and a CPU run: the last GPU measurement found that GPU about 2% busy
(../shared/GPU.md). This runs `continual_benchmark.py`'s own cells and times, per task:
  steps     from each optimizer step's start to its end (TrainerCallback on_step_begin/on_step_end:
            forward, backward, optimizer step),
  trainer   building the trainer (TRL tokenizes the task's rows there),
  scoring   the held-out scoring the benchmark does after the task,
  rest      the remainder of the task's wall time: train() around the steps (data loading, callbacks,
            the package's boundary: orthogonal init, merge, state written and reloaded).
A task's window runs from its trainer's construction to the next one's (the last to the run's end).

Run:    python benchmarks/harness_time.py --preset cpu --methods slao,seq
        python benchmarks/harness_time.py --smoke
        python benchmarks/harness_time.py --benchmarks-dir OTHER_CHECKOUT/benchmarks   # older code, same clock
        python benchmarks/harness_time.py --preset gpu --device cuda --steps 60         # other options: the grid's
Writes --output (JSON) and prints a table. It patches transformers' Trainer and the package's
scorer from outside, so the code it measures is unchanged and an older checkout can be measured
the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Clock:
    """Intervals by kind, on one timeline."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []
        self.task_starts: list[float] = []
        self._inside: set[str] = set()

    def timed(self, kind: str, function):
        """``function`` wrapped to record its duration as ``kind`` (not again when it calls itself)."""

        def wrapper(*args, **kwargs):
            if kind in self._inside:
                return function(*args, **kwargs)
            self._inside.add(kind)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.intervals.append((kind, started, time.perf_counter()))
                self._inside.discard(kind)

        return wrapper

    def per_task(self, end: float) -> list[dict[str, float]]:
        """Seconds of each kind in each task's window, and the window's wall time."""
        windows = list(zip(self.task_starts, [*self.task_starts[1:], end], strict=True))
        tasks = []
        for start, stop in windows:
            spent = {"wall": stop - start, "steps": 0.0, "trainer": 0.0, "scoring": 0.0}
            count = 0
            for kind, begin, finish in self.intervals:
                if start <= begin < stop:
                    spent[kind] += finish - begin
                    count += kind == "steps"
            spent["rest"] = spent["wall"] - spent["steps"] - spent["trainer"] - spent["scoring"]
            spent["outside_steps"] = spent["wall"] - spent["steps"]
            tasks.append({**{k: round(v, 3) for k, v in spent.items()}, "optimizer_steps": count})
        return tasks


def install(clock: Clock) -> None:
    """Patch transformers' Trainer (its construction, a step clock) and the package's scorer."""
    import transformers
    from transformers import TrainerCallback

    from mergeforget_plugin.evaluation import scoring

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.intervals.append(("steps", self.began, time.perf_counter()))

    import trl

    def patched(original):
        # SFTTrainer prepares (tokenizes) the dataset in its own __init__ around Trainer's: the
        # outermost construction opens the task's window and is timed once.
        timed = clock.timed("trainer", original)

        def init(self, *args, **kwargs):
            outermost = "trainer" not in clock._inside
            if outermost:
                clock.task_starts.append(time.perf_counter())
            timed(self, *args, **kwargs)
            if outermost:
                self.add_callback(StepClock())

        return init

    transformers.Trainer.__init__ = patched(transformers.Trainer.__init__)
    trl.SFTTrainer.__init__ = patched(trl.SFTTrainer.__init__)
    # What the benchmark scores through: evaluate_all -> score (before 2026-12-05), row_scores (since).
    for name in ("score", "row_scores"):
        if hasattr(scoring, name):
            setattr(scoring, name, clock.timed("scoring", getattr(scoring, name)))


def given_order(benchmark, preset: str, passed_on: list[str]) -> str:
    """The suite's given task order as an --orders value ('01234' for the toy suite's five tasks)."""
    suite_name = "toy"
    for i, option in enumerate(passed_on):
        if option.startswith("--suite="):
            suite_name = option.split("=", 1)[1]
        elif option == "--suite" and i + 1 < len(passed_on):
            suite_name = passed_on[i + 1]
    suite = importlib.import_module(benchmark.SUITES[suite_name])
    names = suite.SMOKE_TASKS if preset == "smoke" else suite.TASK_ORDER
    return "".join(map(str, range(len(names))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks-dir", default=str(Path(__file__).parent), help="whose continual_benchmark.py")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--methods", default="slao,seq")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="harness_time.json")
    # Anything else goes to continual_benchmark.py after the preset (e.g. --device cuda --steps 60).
    options, passed_on = parser.parse_known_args()
    if any(option.split("=")[0] in ("--seeds", "--orders") for option in passed_on):
        # Timings are kept per method: a second seed or order would overwrite the first's.
        parser.error("one seed and one order: use --seed (the order is the suite's given one)")
    sys.path.insert(0, options.benchmarks_dir)
    benchmark = importlib.import_module("continual_benchmark")
    preset = "smoke" if options.smoke else options.preset
    out = Path(options.output).resolve().parent / "harness_time_runs"
    # The benchmark's own argument parsing, so each preset's values apply as in a grid run.
    sys.argv = [
        "continual_benchmark.py",
        "--preset",
        preset,
        "--methods",
        options.methods,
        "--seeds",
        str(options.seed),
        "--orders",
        given_order(benchmark, preset, passed_on),
        "--workers",
        "1",
        "--output-dir",
        str(out),
        *passed_on,
    ]
    clock = Clock()
    install(clock)
    timings: dict[str, list[dict[str, float]]] = {}
    original_run_cell = benchmark.run_cell

    def run_cell(seed, order, all_tasks, methods, args, out_dir, **hooks):
        # hooks: on_run, where the measured code has it (a one-process grid saves after every run).
        runs = []
        for method in methods:
            clock.intervals.clear()
            clock.task_starts.clear()
            runs += original_run_cell(seed, order, all_tasks, [method], args, out_dir, **hooks)
            timings[method] = clock.per_task(time.perf_counter())
        return runs

    benchmark.run_cell = run_cell
    started = time.time()
    benchmark.main()
    record = {
        "benchmarks_dir": str(Path(options.benchmarks_dir).resolve()),
        "preset": preset,
        "seed": options.seed,
        "wall_seconds": round(time.time() - started, 1),
        "per_task": timings,
    }
    Path(options.output).write_text(json.dumps(record, indent=2))
    print(f"\nTime per task outside the optimizer steps ({preset}, seed {options.seed}), seconds:")
    print("| method | task | wall | steps | outside steps | trainer | scoring | rest |")
    print("|---|---|---|---|---|---|---|---|")
    for method, tasks in timings.items():
        for index, spent in enumerate(tasks, start=1):
            print(
                f"| {method} | {index} | {spent['wall']:.1f} | {spent['steps']:.1f} | {spent['outside_steps']:.1f} | "
                f"{spent['trainer']:.1f} | {spent['scoring']:.1f} | {spent['rest']:.1f} |"
            )


if __name__ == "__main__":
    main()
