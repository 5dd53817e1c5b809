"""The continual-learning report: accuracy matrix, AA / BWT / FWT / forgetting, as JSON, Markdown and a heatmap.

Definitions (as in Avalanche and the CL literature; ``R[i][j]`` is the accuracy on task j after
training tasks 1..i, ``b_j`` the base model's zero-shot accuracy on task j, T the last row):

- AA (average accuracy) = mean over j of R[T][j]
- BWT (backward transfer) = mean over j < T of (R[T][j] - R[j][j]); negative means forgetting
- forgetting of task j = R[j][j] - R[T][j] (so mean forgetting = -BWT)
- FWT (forward transfer) = mean over k >= 2 of (R[k-1][k] - b_k)

Evaluations are stored one file per row (``OUTPUT/evaluations/after-00.json`` for the base model,
``after-03.json`` after task 3), so an interrupted run still renders the rows it reached.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

EVALUATIONS_DIR = "evaluations"
REPORT_FILES = ("report.json", "report.md", "accuracy_matrix.png")


def evaluations_dir_for(state_dir: str | os.PathLike[str]) -> Path:
    """Evaluations live beside the state: ``OUTPUT/state`` → ``OUTPUT/evaluations``."""
    return Path(state_dir).parent / EVALUATIONS_DIR


def save_evaluation(
    evaluations_dir: str | os.PathLike[str],
    task_index: int,
    after_task: str | None,
    accuracy: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the accuracies measured after ``task_index`` tasks (0: the base model) atomically."""
    directory = Path(evaluations_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"after-{task_index:02d}.json"
    record = {"task_index": task_index, "after_task": after_task, "accuracy": accuracy, **(extra or {})}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, path)
    return path


def load_evaluations(evaluations_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    directory = Path(evaluations_dir)
    if not directory.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in sorted(directory.glob("after-*.json"))]
    return sorted(records, key=lambda record: record["task_index"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def continual_metrics(
    trained: list[str], rows: list[dict[str, float]], zero_shot: dict[str, float] | None
) -> dict[str, Any]:
    """AA, BWT, FWT and per-task forgetting.

    ``trained[i]`` is the task trained for row i and ``rows[i]`` the accuracy per task after it
    (R[i+1] in 1-based notation). Terms whose accuracy was not measured are left out.
    """
    if not rows:
        return {"average_accuracy": None, "bwt": None, "fwt": None, "forgetting": {}}
    final = rows[-1]
    forgetting = {
        task: rows[j][task] - final[task] for j, task in enumerate(trained[:-1]) if task in rows[j] and task in final
    }
    fwt_terms = [
        rows[k - 1][trained[k]] - zero_shot[trained[k]]
        for k in range(1, len(trained))
        if zero_shot is not None and trained[k] in zero_shot and trained[k] in rows[k - 1]
    ]
    return {
        "average_accuracy": _mean([final[task] for task in trained if task in final]),
        "bwt": _mean([-value for value in forgetting.values()]),
        "fwt": _mean(fwt_terms),
        "forgetting": forgetting,
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mergeforget-plugin", "torch", "transformers", "peft", "trl", "axolotl", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _format(value: float | None, signed: bool = False) -> str:
    """A fraction as points: 0.553 -> '55.3' (or '+55.3' when signed)."""
    if value is None:
        return "n/a"
    points = round(100 * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{points:+.1f}" if signed else f"{points:.1f}"


def build_report(output_dir: str | os.PathLike[str], recipe: str | None = None) -> dict[str, Any]:
    """Collect the evaluations and the state of a run into one report dictionary."""
    from .state import load_state

    out = Path(output_dir)
    records = load_evaluations(out / EVALUATIONS_DIR)
    state = load_state(out / "state")
    zero_shot = next((r["accuracy"] for r in records if r["task_index"] == 0), None)
    rows = [r for r in records if r["task_index"] > 0]
    tasks = list(dict.fromkeys(task for record in records for task in record["accuracy"]))
    finished = state.finished_tasks if state is not None else []
    history = {record["task"]: record for record in (state.history if state is not None else [])}
    return {
        "output_dir": str(out),
        "recipe": recipe,
        "versions": _versions(),
        "strategy": state.config.to_dict() if state is not None else None,
        "tasks": tasks,
        "finished_tasks": finished,
        "zero_shot": zero_shot,
        "accuracy_matrix": [[r["accuracy"].get(task) for task in tasks] for r in rows],
        "rows_after": [r["after_task"] for r in rows],
        "metrics": continual_metrics([r["after_task"] for r in rows], [r["accuracy"] for r in rows], zero_shot),
        "per_task": [
            {
                "task": name,
                "seconds": history.get(name, {}).get("seconds"),
                "adapter_bytes": history.get(name, {}).get("adapter_bytes"),
                "merge_coefficient": history.get(name, {}).get("merge_coefficient"),
            }
            for name in finished
        ],
    }


def render_markdown(report: dict[str, Any]) -> str:
    tasks, matrix, metrics = report["tasks"], report["accuracy_matrix"], report["metrics"]
    lines = [f"# Continual-learning report: {report['output_dir']}", ""]
    if report["strategy"]:
        lines += [f"Strategy: `{report['strategy']}`", ""]
    lines += [f"Finished tasks: {len(report['finished_tasks'])} of {len(tasks)}", ""]
    lines += ["## Accuracy matrix (%)", "", "Rows: after training task i; columns: task evaluated.", ""]
    lines += ["| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    if report["zero_shot"] is not None:
        lines.append("| base (zero-shot) | " + " | ".join(_format(report["zero_shot"].get(t)) for t in tasks) + " |")
    for after, row in zip(report["rows_after"], matrix, strict=True):
        lines.append(f"| {after} | " + " | ".join(_format(v) for v in row) + " |")
    lines += [
        "",
        "## Metrics",
        "",
        "| metric | value (points) |",
        "|---|---|",
        f"| AA, average accuracy after the last task | {_format(metrics['average_accuracy'])} |",
        f"| BWT, backward transfer (negative = forgetting) | {_format(metrics['bwt'], signed=True)} |",
        f"| FWT, forward transfer vs zero-shot | {_format(metrics['fwt'], signed=True)} |",
        "",
    ]
    if metrics["forgetting"]:
        lines += ["Forgetting per task (R[j][j] - R[T][j], points): "]
        lines += [
            ", ".join(f"{task} {_format(value, signed=True)}" for task, value in metrics["forgetting"].items()),
            "",
        ]
    if report["per_task"]:
        lines += ["## Per task", "", "| task | λ | seconds | adapter bytes |", "|---|---|---|---|"]
        for entry in report["per_task"]:
            lam = "" if entry["merge_coefficient"] is None else f"{entry['merge_coefficient']:.3f}"
            seconds = "" if entry["seconds"] is None else f"{entry['seconds']:.1f}"
            lines.append(f"| {entry['task']} | {lam} | {seconds} | {entry['adapter_bytes'] or ''} |")
        lines.append("")
    lines += [
        "Definitions: AA = mean_j R[T][j]; BWT = mean_{j<T} (R[T][j] - R[j][j]); FWT = mean_{k>=2} (R[k-1][k] - b_k)."
    ]
    return "\n".join(lines) + "\n"


def plot_accuracy_matrix(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """An annotated heatmap of the accuracy matrix (with the zero-shot row on top when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    labels = (["base"] if report["zero_shot"] is not None else []) + [f"after {a}" for a in report["rows_after"]]
    values = ([[report["zero_shot"].get(t) for t in tasks]] if report["zero_shot"] is not None else []) + report[
        "accuracy_matrix"
    ]
    grid = [[float("nan") if v is None else 100 * v for v in row] for row in values]
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * max(1, len(tasks)), 1.2 + 0.6 * max(1, len(labels))))
    image = axes.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(tasks)), labels=tasks, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("task evaluated")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                axes.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
    aa = report["metrics"]["average_accuracy"]
    bwt = report["metrics"]["bwt"]
    title = "accuracy (%)"
    if aa is not None:
        title += f"  AA {100 * aa:.1f}"
    if bwt is not None:
        title += f"  BWT {100 * bwt:+.1f}"
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target


def write_report(output_dir: str | os.PathLike[str], recipe: str | None = None) -> list[Path]:
    """Write report.json, report.md and accuracy_matrix.png into ``output_dir``."""
    out = Path(output_dir)
    report = build_report(out, recipe)
    json_path, markdown_path, plot_path = (out / name for name in REPORT_FILES)
    json_path.write_text(json.dumps(report, indent=2))
    markdown_path.write_text(render_markdown(report))
    written = [json_path, markdown_path]
    if report["tasks"]:
        written.append(plot_accuracy_matrix(report, plot_path))
    return written
