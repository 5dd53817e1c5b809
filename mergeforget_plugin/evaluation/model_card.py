"""The scores in an exported adapter's model card, rendered from the run's report.

:mod:`mergeforget_plugin.core.export` writes the adapter and a card that says what it is; the
section that says how it scores reads the report, so it lives here beside the report (``core/``
imports nothing above it). :func:`export_adapter` is the one call that does both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.export import model_card as _card
from ..core.export import write_adapter
from ..core.state import ContinualState
from .metrics import metric_info
from .report import format_value, metric_label


def _best_earlier(report: Mapping[str, Any], task: str, higher_is_better: bool) -> float | None:
    """The task's best score in the rows after its own training and before the last row."""
    column = report["tasks"].index(task)
    rows = report["accuracy_matrix"][report["rows_after"].index(task) : -1]
    values = [row[column] for row in rows if row[column] is not None]
    if not values:
        return None
    return max(values) if higher_is_better else min(values)


def final_table(report: Mapping[str, Any], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Per trained task (``tasks``: the report's ``rows_after``), the numbers the card shows: its
    primary metric, its score right after its own training, its best score after that and before
    the last task, its score after the last task, and its forgetting (the report's, oriented so
    that positive means the task got worse). ``None`` where the report has no such number."""
    primary = report.get("primary_metric", {})
    forgetting = report["metrics"]["forgetting"]
    matrix, rows_after = report["accuracy_matrix"], list(report["rows_after"])
    table = []
    for task in tasks:
        metric = primary.get(task, "accuracy")
        scored = task in report["tasks"] and task in rows_after
        column = report["tasks"].index(task) if scored else None
        table.append(
            {
                "task": task,
                "metric": metric,
                "after_own_training": matrix[rows_after.index(task)][column] if scored else None,
                "best_earlier": _best_earlier(report, task, metric_info(metric).higher_is_better) if scored else None,
                "final": matrix[-1][column] if scored else None,
                "forgetting": forgetting.get(task),
            }
        )
    return table


def report_fits(state: ContinualState, report: Mapping[str, Any] | None) -> bool:
    """Whether ``report`` has one row after each task of ``state``, so its last row scores this adapter.

    Not so when a kill came between a task's evaluation row and its state, or a row is missing.
    """
    return report is not None and list(report.get("rows_after", [])) == list(state.finished_tasks)


def evaluation_lines(state: ContinualState, report: Mapping[str, Any]) -> list[str]:
    trained = list(state.finished_tasks)
    lines = ["## Evaluation", ""]
    if not report_fits(state, report):
        return lines + [
            "The run's evaluation rows (after: "
            + (", ".join(report.get("rows_after", [])) or "none")
            + ") are not one row after each task of this adapter, so no scores are given here; "
            "`mergeforget report` shows what was measured.",
        ]
    table = final_table(report, trained)
    primary = report.get("primary_metric", {})
    metrics_used = list(dict.fromkeys(primary.get(task, "accuracy") for task in trained))
    lines += [
        "Scores from the run's evaluation rows, in each task's primary metric: "
        + "; ".join(metric_label(metric) for metric in metrics_used)
        + ". Forgetting = score after the task's own training - score after the last task (for a "
        "lower-is-better metric such as loss, the other way round), so positive forgetting means the task got "
        "worse. Best earlier: the task's best score after its own training and before the last task.",
        "",
        f"| task | metric | after its own training | best earlier | after the last task ({trained[-1]}) | forgetting |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        metric = row["metric"]
        best = "—" if row["best_earlier"] is None else format_value(row["best_earlier"], metric=metric)
        forgot = "—" if row["forgetting"] is None else format_value(row["forgetting"], True, metric)
        lines.append(
            f"| {row['task']} | {metric} | {format_value(row['after_own_training'], metric=metric)} | {best} | "
            f"{format_value(row['final'], metric=metric)} | {forgot} |"
        )
    lines.append("")
    metrics = report["metrics"]
    if report.get("primary_uniform", True):
        metric = metrics_used[0]
        unit = "points" if metric_info(metric).unit == "fraction" else metric_info(metric).unit
        lines += [
            f"- AA, mean score after the last task: {format_value(metrics['average_accuracy'], metric=metric)} "
            f"({unit})",
            f"- BWT, backward transfer (negative = forgetting): {format_value(metrics['bwt'], True, metric)}",
            f"- FWT, forward transfer vs the base model: {format_value(metrics['fwt'], True, metric)}",
        ]
    else:
        lines.append("AA, BWT and FWT are not given: the tasks' primary metrics differ in unit (see report.json).")
    return lines + _probe_lines(report)


def _probe_lines(report: Mapping[str, Any]) -> list[str]:
    """The card's probes: base model, after the last task, and the change, per probe."""
    lines: list[str] = []
    probes = report.get("probes") or {}
    if probes:
        lines += [
            "",
            "General ability (probes: evaluation-only sets, never trained on; change = after the last task - base "
            "model):",
            "",
            "| probe | metric | base model | after the last task | change |",
            "|---|---|---|---|---|",
        ]
        for name, probe in probes.items():
            metric = probe["metric"]
            lines.append(
                f"| {name} | {metric_label(metric)} | {format_value(probe['zero_shot'], metric=metric)} | "
                f"{format_value(probe['final'], metric=metric)} | {format_value(probe['change'], True, metric)} |"
            )
    return lines


def model_card(state: ContinualState, report: Mapping[str, Any] | None = None) -> str:
    """The ``README.md`` of the exported adapter (:func:`mergeforget_plugin.core.export.model_card`).

    ``report`` is :func:`~mergeforget_plugin.evaluation.report.build_report`'s result for the run;
    with it the card gives each task's final score, best earlier score and forgetting, and AA, BWT,
    FWT. The card holds no timestamp and not the run's folder, so exporting the same state and report
    again gives the same bytes.
    """
    return _card(state, evaluation_lines(state, report) if report is not None else ())


def export_adapter(
    state: ContinualState, output_dir: str | os.PathLike[str], *, report: Mapping[str, Any] | None = None
) -> Path:
    """Write the merged LoRA of ``state`` as a standard PEFT adapter directory and return it.

    ``PeftModel.from_pretrained(base_model, output_dir)`` loads it. Each file is replaced
    atomically; the config is the same for every task of a sequence, so an export interrupted
    between the two files still pairs the new weights with a correct config. The model card
    ``README.md`` (see :func:`model_card`; ``report`` adds the run's scores) is written last.
    """
    return write_adapter(state, output_dir, evaluation=evaluation_lines(state, report) if report is not None else ())
