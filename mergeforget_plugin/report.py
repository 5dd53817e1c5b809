"""The continual-learning report of a run: accuracy matrix and metrics as JSON, Markdown and a heatmap.

Evaluation rows are stored one file per row (``evaluations/after-00.json`` for the base model,
``after-03.json`` after task 3; see :class:`~mergeforget_plugin.layout.RunLayout`), so an
interrupted run still renders the rows it reached. The metrics are those of
:mod:`mergeforget_plugin.metrics`.
"""

from __future__ import annotations

import io
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .layout import RunLayout
from .metrics import AccuracyMatrix


def save_evaluation(
    layout: RunLayout,
    tasks_trained: int,
    after_task: str | None,
    accuracy: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the accuracies measured after ``tasks_trained`` tasks (0: the base model) atomically."""
    record = {"task_index": tasks_trained, "after_task": after_task, "accuracy": accuracy, **(extra or {})}
    return write_atomic(layout.evaluation_row(tasks_trained), json.dumps(record, indent=2))


def load_evaluations(layout: RunLayout) -> list[dict[str, Any]]:
    """Every stored row, base model first."""
    records = [json.loads(path.read_text()) for path in layout.evaluation_rows()]
    return sorted(records, key=lambda record: record["task_index"])


def accuracy_matrix(layout: RunLayout) -> AccuracyMatrix:
    """The accuracy matrix of the rows stored in ``layout``."""
    matrix = AccuracyMatrix()
    for record in load_evaluations(layout):
        matrix.update(record["task_index"], record["after_task"], record["accuracy"])
    return matrix


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


def build_report(layout: RunLayout, state: Any = None, recipe: str | None = None) -> dict[str, Any]:
    """Collect a run's evaluation rows and its state (a ``ContinualState`` or ``None``) into one dictionary."""
    matrix = accuracy_matrix(layout)
    finished = state.finished_tasks if state is not None else []
    history = {record["task"]: record for record in (state.history if state is not None else [])}
    return {
        "output_dir": str(layout.root),
        "recipe": recipe,
        "versions": _versions(),
        "strategy": state.config.to_dict() if state is not None else None,
        "tasks": matrix.tasks,
        "finished_tasks": finished,
        "zero_shot": matrix.zero_shot,
        "accuracy_matrix": matrix.table(),
        "rows_after": matrix.rows_after,
        "metrics": matrix.result(),
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


def plot_accuracy_matrix(report: dict[str, Any]) -> bytes:
    """An annotated heatmap of the accuracy matrix (with the zero-shot row on top when known), as PNG bytes."""
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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    return image.getvalue()


def write_report(layout: RunLayout, state: Any = None, recipe: str | None = None) -> list[Path]:
    """Write report.json, report.md and (when any row exists) accuracy_matrix.png; return their paths."""
    report = build_report(layout, state, recipe)
    written = [
        write_atomic(layout.report_json, json.dumps(report, indent=2)),
        write_atomic(layout.report_markdown, render_markdown(report)),
    ]
    if report["tasks"]:
        written.append(write_atomic(layout.accuracy_heatmap, plot_accuracy_matrix(report)))
    return written


def compare_reports(reports: list[dict[str, Any]]) -> str:
    """Several runs of the same tasks side by side, as Markdown: AA, BWT, FWT, and each task's
    accuracy right after its own training and after the last task (the difference is what the
    run forgot). Runs are named by their output folder and strategy."""
    if not reports:
        raise ValueError("compare_reports needs at least one report.")
    names = [
        f"{Path(report['output_dir']).name} ({(report['strategy'] or {}).get('strategy', '?')})" for report in reports
    ]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(reports)]
    for key, label, signed in (
        ("average_accuracy", "AA (after the last task)", False),
        ("bwt", "BWT (negative = forgetting)", True),
        ("fwt", "FWT (vs zero-shot)", True),
    ):
        lines.append(f"| {label} | " + " | ".join(_format(r["metrics"][key], signed) for r in reports) + " |")
    tasks = list(dict.fromkeys(task for report in reports for task in report["finished_tasks"]))
    for task in tasks:
        cells = []
        for report in reports:
            if task not in report["finished_tasks"] or task not in report["rows_after"]:
                cells.append("n/a")
                continue
            column = report["tasks"].index(task)
            own = report["accuracy_matrix"][report["rows_after"].index(task)][column]
            last = report["accuracy_matrix"][-1][column]
            cells.append(f"{_format(own)} → {_format(last)}")
        lines.append(f"| {task}: after its training → after the last task | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
