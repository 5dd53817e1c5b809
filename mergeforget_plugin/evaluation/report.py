"""The continual-learning report of a run: score matrices and metrics as JSON, Markdown and heatmaps.

Evaluation rows are stored one file per row (``evaluations/after-00.json`` for the base model,
``after-03.json`` after task 3; see :class:`~mergeforget_plugin.core.layout.RunLayout`), so an
interrupted run still renders the rows it reached. A row holds, per task, every metric scored
(``scores``), which one is the task's primary metric (``primary_metric``) and its value
(``accuracy``, the field rows have always had), and the probes' scores (``probes``). A row
written before metrics were named holds only ``accuracy``; it reads as the metric ``accuracy``.

The report has one matrix per metric, and the primary matrix (each task's primary metric) that
AA, BWT, FWT and ``accuracy_matrix.png`` use. The metrics are those of
:mod:`mergeforget_plugin.evaluation.metrics`, oriented so that a negative BWT is forgetting for every metric.
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..core.atomic import write_atomic
from ..core.layout import RunLayout
from .metrics import AccuracyMatrix, metric_info

_LABEL_METRICS = ("choice", "exact_match", "accuracy")


def evaluation_record(
    tasks_trained: int,
    after_task: str | None,
    scores: Mapping[str, Mapping[str, float]],
    primary: Mapping[str, str],
    probes: Mapping[str, Mapping[str, float]] | None = None,
    probe_metric: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One row: ``scores[task][metric]``, ``primary[task]`` the task's primary metric, and the
    probes' ``{probe: {metric: value}}`` with their primary metrics."""
    record: dict[str, Any] = {
        "task_index": tasks_trained,
        "after_task": after_task,
        "accuracy": {task: values[primary[task]] for task, values in scores.items()},
        "scores": {task: dict(values) for task, values in scores.items()},
        "primary_metric": {task: primary[task] for task in scores},
    }
    if probes:
        record["probes"] = {name: dict(values) for name, values in probes.items()}
        record["probe_metric"] = {name: (probe_metric or {})[name] for name in probes}
    return record


def merge_records(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with the tasks and probes of ``old`` (the same row) it does not score itself."""
    if not old:
        return dict(new)
    old = normalized(old)
    merged = dict(new)
    for key in ("accuracy", "scores", "primary_metric", "probes", "probe_metric"):
        if old.get(key) or new.get(key):
            merged[key] = {**(old.get(key) or {}), **(new.get(key) or {})}
    return merged


def save_row(layout: RunLayout, record: Mapping[str, Any]) -> Path:
    """Write one evaluation row atomically."""
    return write_atomic(layout.evaluation_row(record["task_index"]), json.dumps(record, indent=2))


def save_evaluation(
    layout: RunLayout,
    tasks_trained: int,
    after_task: str | None,
    accuracy: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write accuracies (one number per task) measured after ``tasks_trained`` tasks (0: the base model)."""
    record = {"task_index": tasks_trained, "after_task": after_task, "accuracy": accuracy, **(extra or {})}
    return write_atomic(layout.evaluation_row(tasks_trained), json.dumps(record, indent=2))


def normalized(record: Mapping[str, Any]) -> dict[str, Any]:
    """A row with ``scores`` and ``primary_metric``; an old row's accuracies become the metric ``accuracy``."""
    record = dict(record)
    if "scores" not in record:
        record["scores"] = {task: {"accuracy": value} for task, value in record["accuracy"].items()}
        record["primary_metric"] = dict.fromkeys(record["accuracy"], "accuracy")
    record.setdefault("probes", {})
    record.setdefault("probe_metric", {})
    return record


def load_evaluations(layout: RunLayout) -> list[dict[str, Any]]:
    """Every stored row, base model first, normalized (see :func:`normalized`)."""
    records = [normalized(json.loads(path.read_text())) for path in layout.evaluation_rows()]
    return sorted(records, key=lambda record: record["task_index"])


def _matrix(
    records: Sequence[Mapping[str, Any]], values_of, higher_is_better: bool = True, *, skip_empty: bool = False
) -> AccuracyMatrix:
    matrix = AccuracyMatrix(higher_is_better=higher_is_better)
    for record in records:
        values = values_of(record)
        if values or not skip_empty:
            matrix.update(record["task_index"], record["after_task"], values)
    return matrix


def accuracy_matrix(layout: RunLayout) -> AccuracyMatrix:
    """The primary matrix of the rows stored in ``layout`` (each task's primary metric)."""
    return _matrix(load_evaluations(layout), lambda record: record["accuracy"])


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mergeforget-plugin", "torch", "transformers", "peft", "trl", "axolotl", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def format_value(value: float | None, signed: bool = False, metric: str = "accuracy") -> str:
    """A score as the report prints it: fractions as points (0.553 -> '55.3', or '+55.3' when
    signed), losses and other ratios as measured to three decimals."""
    if value is None:
        return "n/a"
    if metric_info(metric).unit == "fraction":
        points = round(100 * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
        return f"{points:+.1f}" if signed else f"{points:.1f}"
    rounded = round(value, 3) + 0.0
    return f"{rounded:+.3f}" if signed else f"{rounded:.3f}"


def _matrix_summary(matrix: AccuracyMatrix, metric: str) -> dict[str, Any]:
    info = metric_info(metric)
    return {
        "tasks": matrix.tasks,
        "zero_shot": matrix.zero_shot,
        "rows_after": matrix.rows_after,
        "table": matrix.table(),
        "metrics": matrix.result(),
        "higher_is_better": info.higher_is_better,
        "unit": info.unit,
    }


def _probe_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    names = list(dict.fromkeys(name for record in records for name in record["probes"]))
    probes = {}
    for name in names:
        metric = next(r["probe_metric"][name] for r in reversed(records) if name in r["probe_metric"])
        base = next(
            (r["probes"][name].get(metric) for r in records if r["task_index"] == 0 and name in r["probes"]), None
        )
        rows = [r["probes"].get(name, {}).get(metric) for r in records if r["task_index"] > 0]
        final = next((value for value in reversed(rows) if value is not None), None)
        info = metric_info(metric)
        probes[name] = {
            "metric": metric,
            "higher_is_better": info.higher_is_better,
            "zero_shot": base,
            "rows": rows,
            "all_metrics": {r["task_index"]: r["probes"][name] for r in records if name in r["probes"]},
            "final": final,
            # final - base: what the sequence did to this ability (negative is a loss when higher is better)
            "change": None if final is None or base is None else final - base,
        }
    return probes


def build_report(layout: RunLayout, state: Any = None, recipe: str | None = None) -> dict[str, Any]:
    """Collect a run's evaluation rows and its state (a ``ContinualState`` or ``None``) into one dictionary."""
    records = load_evaluations(layout)
    finished = state.finished_tasks if state is not None else []
    history = {record["task"]: record for record in (state.history if state is not None else [])}
    primary: dict[str, str] = {}
    for record in records:
        primary.update(record["primary_metric"])
    kinds = {(metric_info(m).higher_is_better, metric_info(m).unit) for m in primary.values()}
    uniform = len(kinds) <= 1
    higher = next(iter(kinds))[0] if kinds else True
    matrix = _matrix(records, lambda record: record["accuracy"], higher)
    matrices = _metric_matrices(records)
    if uniform:
        metrics = matrix.result()
    else:  # AA, BWT and FWT over numbers of different units mean nothing: each metric's own are in matrices
        metrics = {
            "average_accuracy": None,
            "bwt": None,
            "fwt": None,
            "forgetting": {
                task: matrices[primary[task]]["metrics"]["forgetting"][task]
                for task in matrix.result()["forgetting"]
                if task in matrices[primary[task]]["metrics"]["forgetting"]
            },
        }
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
        "metrics": metrics,
        "primary_metric": {task: primary[task] for task in matrix.tasks if task in primary},
        "primary_uniform": uniform,
        "metric_matrices": matrices,
        "probes": _probe_summary(records),
        "per_task": [
            {"task": name}
            | {key: history.get(name, {}).get(key) for key in ("seconds", "adapter_bytes", "merge_coefficient")}
            for name in finished
        ],
    }


def _metric_matrices(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One matrix (with its AA, BWT, FWT and forgetting) per metric any row scored."""
    metric_names = list(dict.fromkeys(m for r in records for values in r["scores"].values() for m in values))
    return {
        metric: _matrix_summary(
            _matrix(
                records,
                lambda record, metric=metric: {t: v[metric] for t, v in record["scores"].items() if metric in v},
                metric_info(metric).higher_is_better,
                skip_empty=True,
            ),
            metric,
        )
        for metric in metric_names
    }


def metric_label(metric: str) -> str:
    info = metric_info(metric)
    if info.unit == "fraction":
        return f"{metric} (%, higher is better)"
    return f"{metric} ({'nats per answer token, ' if info.unit == 'nats' else ''}lower is better)"


def _is_label_report(report: Mapping[str, Any]) -> bool:
    return all(metric in _LABEL_METRICS for metric in report.get("primary_metric", {}).values())


def _table_lines(
    tasks: Sequence[str],
    zero_shot: Mapping[str, float] | None,
    rows_after: Sequence[str],
    table: Sequence[Sequence[float | None]],
    metric_of,
) -> list[str]:
    def cell(value: float | None, task: str) -> str:
        return "" if value is None else format_value(value, metric=metric_of(task))

    lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    if zero_shot is not None:
        lines.append("| base (zero-shot) | " + " | ".join(cell(zero_shot.get(t), t) for t in tasks) + " |")
    for after, row in zip(rows_after, table, strict=True):
        lines.append(f"| {after} | " + " | ".join(cell(v, t) for v, t in zip(row, tasks, strict=True)) + " |")
    return lines


def _summary_lines(metrics: Mapping[str, Any], metric: str) -> list[str]:
    label = "average accuracy" if metric in _LABEL_METRICS else f"mean {metric}"
    aa = f"AA, {label} after the last task"
    unit = "points" if metric_info(metric).unit == "fraction" else metric_info(metric).unit
    return [
        f"| metric | value ({unit}) |",
        "|---|---|",
        f"| {aa} | {format_value(metrics['average_accuracy'], metric=metric)} |",
        f"| BWT, backward transfer (negative = forgetting) | {format_value(metrics['bwt'], True, metric)} |",
        f"| FWT, forward transfer vs zero-shot | {format_value(metrics['fwt'], True, metric)} |",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    tasks, matrix, metrics = report["tasks"], report["accuracy_matrix"], report["metrics"]
    primary = report.get("primary_metric", {})
    uniform = report.get("primary_uniform", True)
    shared = next(iter(primary.values())) if uniform and primary else "accuracy"
    lines = [f"# Continual-learning report: {report['output_dir']}", ""]
    if report["strategy"]:
        lines += [f"Strategy: `{report['strategy']}`", ""]
    finished = report["finished_tasks"]
    lines += [f"Finished tasks: {len(finished)}" + (f" ({', '.join(finished)})" if finished else ""), ""]
    if not tasks:  # nothing held out: a table with no column would read as a result
        lines += [
            "No task has held-out rows, so nothing was scored and there is no matrix. Give each task held-out "
            "rows (`eval_dataset` on the TRL path, `test_datasets` in a recipe) to measure what it keeps.",
        ]
        return "\n".join(lines) + "\n"
    if _is_label_report(report):
        lines += ["## Accuracy matrix (%)", "", "Rows: after training task i; columns: task evaluated.", ""]
    else:
        lines += [
            "## Primary metric matrix",
            "",
            "Rows: after training task i; columns: task evaluated. Primary metric per task: "
            + ", ".join(f"{task} {metric_label(metric)}" for task, metric in primary.items())
            + ". A blank cell was not scored (eval schedule `needed`).",
            "",
        ]
    lines += _table_lines(
        tasks, report["zero_shot"], report["rows_after"], matrix, lambda t: primary.get(t, "accuracy")
    )
    lines += ["", "## Metrics", ""]
    if uniform:
        lines += _summary_lines(metrics, shared)
    else:
        lines += ["The tasks' primary metrics differ in unit, so AA, BWT and FWT are given per metric below."]
    lines.append("")
    if metrics["forgetting"]:
        lines += ["Forgetting per task (R[j][j] - R[T][j]; for lower-is-better metrics R[T][j] - R[j][j]): "]
        lines += [
            ", ".join(
                f"{task} {format_value(value, True, primary.get(task, 'accuracy'))}"
                for task, value in metrics["forgetting"].items()
            ),
            "",
        ]
    for metric, summary in report.get("metric_matrices", {}).items():
        if uniform and metric == shared and set(summary["tasks"]) == set(tasks):
            continue  # the primary matrix above
        lines += [f"## {metric_label(metric)}", ""]
        lines += _table_lines(
            summary["tasks"], summary["zero_shot"], summary["rows_after"], summary["table"], lambda t, m=metric: m
        )
        lines += [""] + _summary_lines(summary["metrics"], metric) + [""]
    lines += _probe_lines(report) + _per_task_lines(report)
    lines += [
        "Definitions: AA = mean_j R[T][j]; BWT = mean_{j<T} (R[T][j] - R[j][j]); FWT = mean_{k>=2} (R[k-1][k] - b_k).",
        "For lower-is-better metrics (loss, perplexity) the differences are taken the other way round, so a "
        "negative BWT is forgetting (a loss that rose) and a positive FWT is help for every metric.",
    ]
    return "\n".join(lines) + "\n"


def _probe_lines(report: dict[str, Any]) -> list[str]:
    """The report's probes section: each probe's row over the sequence and its change from the base."""
    if not report.get("probes"):
        return []
    lines = [
        "## General ability kept (probes)",
        "",
        "Evaluation-only sets, never trained on. Change = after the last task - base model.",
        "",
        "| probe | metric | base | " + " | ".join(f"after {a}" for a in report["rows_after"]) + " | change |",
        "|---|---|---|" + "---|" * len(report["rows_after"]) + "---|",
    ]
    for name, probe in report["probes"].items():
        metric = probe["metric"]
        cells = ["" if v is None else format_value(v, metric=metric) for v in probe["rows"]]
        cells += [""] * (len(report["rows_after"]) - len(cells))
        lines.append(
            f"| {name} | {metric_label(metric)} | {format_value(probe['zero_shot'], metric=metric)} | "
            + " | ".join(cells)
            + f" | {format_value(probe['change'], True, metric)} |"
        )
    return lines + [""]


def _per_task_lines(report: dict[str, Any]) -> list[str]:
    """The report's per-task section: merge coefficient, seconds and adapter bytes of each task."""
    if not report["per_task"]:
        return []
    lines = ["## Per task", "", "| task | λ | seconds | adapter bytes |", "|---|---|---|---|"]
    for entry in report["per_task"]:
        lam = "" if entry["merge_coefficient"] is None else f"{entry['merge_coefficient']:.3f}"
        seconds = "" if entry["seconds"] is None else f"{entry['seconds']:.1f}"
        lines.append(f"| {entry['task']} | {lam} | {seconds} | {entry['adapter_bytes'] or ''} |")
    return lines + [""]


def _heatmap_cells(tasks: Sequence[str], values: Sequence[Sequence[float | None]], metric_of):
    """What each cell shows: its colour value, its brightness (0 dark .. 1 bright, for the text's
    colour) and its text, and the colour scale; one metric is coloured on its own unit, mixed
    metrics each column from its worst to its best cell."""
    kinds = {metric_of(task) for task in tasks}
    single = metric_info(next(iter(kinds))) if len(kinds) == 1 else None
    cells = [value for row in values for value in row if value is not None]
    low, high = (min(cells), max(cells)) if cells else (0.0, 1.0)
    colours = [[float("nan")] * len(tasks) for _ in values]
    brightness = [[0.0] * len(tasks) for _ in values]
    texts = [[""] * len(tasks) for _ in values]
    for j, task in enumerate(tasks):
        info = metric_info(metric_of(task))
        column = [row[j] for row in values if row[j] is not None]
        column_low, column_high = (min(column), max(column)) if column else (0.0, 1.0)
        for i, row in enumerate(values):
            value = row[j]
            if value is None:
                continue
            fraction = info.unit == "fraction"
            texts[i][j] = f"{100 * value:.0f}" if fraction else f"{value:.2f}"
            if single is not None:
                colours[i][j] = 100 * value if fraction else value
                share = value if fraction else (0.5 if high == low else (value - low) / (high - low))
            else:
                share = 0.5 if column_high == column_low else (value - column_low) / (column_high - column_low)
                colours[i][j] = 100 * (share if info.higher_is_better else 1 - share)
            brightness[i][j] = share if info.higher_is_better else 1 - share
    if single is not None and single.unit != "fraction":  # lower is better: the reversed map keeps better brighter
        scale = {"vmin": low, "vmax": high if high > low else low + 1e-9}
        scale["cmap"] = "viridis" if single.higher_is_better else "viridis_r"
    else:  # fractions on 0-100 %, or each column's worst-to-best share
        scale = {"vmin": 0, "vmax": 100, "cmap": "viridis"}
    return single, scale, colours, brightness, texts


def _heatmap(
    tasks: Sequence[str],
    labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    metric_of,
    title: str,
) -> bytes:
    """An annotated heatmap whose colour bar is in the metric's unit and direction: fractions on
    0-100 %, other metrics (loss, perplexity) on their own range, brighter where better. When the
    columns hold metrics of different units, each column is coloured from its worst (dark) to its
    best (bright) cell and the colour bar says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single, scale, colours, brightness, texts = _heatmap_cells(tasks, values, metric_of)
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * max(1, len(tasks)), 1.2 + 0.6 * max(1, len(labels))))
    image = axes.imshow(colours, aspect="auto", **scale)
    axes.set_xticks(range(len(tasks)), labels=tasks, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("task evaluated")
    for i, row in enumerate(colours):
        for j, colour in enumerate(row):
            if colour == colour:  # not NaN
                white = brightness[i][j] < 0.6
                axes.text(j, i, texts[i][j], ha="center", va="center", color="white" if white else "black")
    axes.set_title(title)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    if single is not None:
        bar.set_label(metric_label(single.name))
    else:
        bar.set_ticks([0, 100], labels=["worst", "best"])
        bar.set_label("per column (metrics differ in unit)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def _rows_for_plot(zero_shot, rows_after, table, tasks):
    labels = (["base"] if zero_shot is not None else []) + [f"after {a}" for a in rows_after]
    values = ([[zero_shot.get(t) for t in tasks]] if zero_shot is not None else []) + [list(r) for r in table]
    return labels, values


def plot_accuracy_matrix(report: dict[str, Any]) -> bytes:
    """An annotated heatmap of the primary matrix (with the zero-shot row on top when known), as PNG bytes."""
    tasks, primary = report["tasks"], report.get("primary_metric", {})
    labels, values = _rows_for_plot(report["zero_shot"], report["rows_after"], report["accuracy_matrix"], tasks)
    metric = next(iter(primary.values())) if primary and report.get("primary_uniform", True) else "accuracy"
    if _is_label_report(report):
        title = "accuracy (%)"
    else:
        title = metric_label(metric) if report.get("primary_uniform", True) else "primary metric per task"
    aa, bwt = report["metrics"]["average_accuracy"], report["metrics"]["bwt"]
    if aa is not None:
        title += f"  AA {format_value(aa, metric=metric)}"
    if bwt is not None:
        title += f"  BWT {format_value(bwt, True, metric)}"
    return _heatmap(tasks, labels, values, lambda t: primary.get(t, "accuracy"), title)


def plot_metric_matrix(report: dict[str, Any], metric: str) -> bytes:
    """The heatmap of one metric's matrix, as PNG bytes."""
    summary = report["metric_matrices"][metric]
    labels, values = _rows_for_plot(summary["zero_shot"], summary["rows_after"], summary["table"], summary["tasks"])
    title = metric_label(metric)
    if summary["metrics"]["average_accuracy"] is not None:
        title += f"  AA {format_value(summary['metrics']['average_accuracy'], metric=metric)}"
    if summary["metrics"]["bwt"] is not None:
        title += f"  BWT {format_value(summary['metrics']['bwt'], True, metric)}"
    return _heatmap(summary["tasks"], labels, values, lambda t: metric, title)


def extra_metrics(report: Mapping[str, Any]) -> list[str]:
    """The metrics that get their own heatmap: every metric but the one the primary matrix shows."""
    primary = report.get("primary_metric", {})
    shared = next(iter(primary.values())) if primary and report.get("primary_uniform", True) else None
    return [
        metric
        for metric, summary in report.get("metric_matrices", {}).items()
        if summary["tasks"]
        and not (metric == shared and set(summary["tasks"]) == set(report["tasks"]))
        and metric != "accuracy"
    ]


def write_report(
    layout: RunLayout, state: Any = None, recipe: str | None = None, *, report: dict[str, Any] | None = None
) -> list[Path]:
    """Write report.json, report.md and (when any row exists) the heatmaps; return their paths.

    ``report`` is :func:`build_report`'s result when the caller has it already."""
    report = report if report is not None else build_report(layout, state, recipe)
    written = [
        write_atomic(layout.report_json, json.dumps(report, indent=2)),
        write_atomic(layout.report_markdown, render_markdown(report)),
    ]
    if report["tasks"]:
        written.append(write_atomic(layout.accuracy_heatmap, plot_accuracy_matrix(report)))
        for metric in extra_metrics(report):
            written.append(write_atomic(layout.metric_heatmap(metric), plot_metric_matrix(report, metric)))
    return written


def _run_name(report: Mapping[str, Any]) -> str:
    return f"{Path(report['output_dir']).name} ({(report['strategy'] or {}).get('strategy', '?')})"


def compare_reports(reports: list[dict[str, Any]]) -> str:
    """Several runs of the same tasks side by side, as Markdown: AA, BWT, FWT, and each task's
    primary metric right after its own training and after the last task (the difference is what
    the run forgot). Runs are named by their output folder and strategy."""
    if not reports:
        raise ValueError("compare_reports needs at least one report.")
    names = [_run_name(report) for report in reports]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(reports)]

    def shared_metric(report: Mapping[str, Any]) -> str:
        primary = report.get("primary_metric", {})
        return next(iter(primary.values())) if primary and report.get("primary_uniform", True) else "accuracy"

    for key, label, signed in (
        ("average_accuracy", "AA (after the last task)", False),
        ("bwt", "BWT (negative = forgetting)", True),
        ("fwt", "FWT (vs zero-shot)", True),
    ):
        cells = [format_value(r["metrics"][key], signed, shared_metric(r)) for r in reports]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    tasks = list(dict.fromkeys(task for report in reports for task in report["finished_tasks"]))
    for task in tasks:
        cells = []
        for report in reports:
            if task not in report["finished_tasks"] or task not in report["rows_after"]:
                cells.append("n/a")
                continue
            metric = report.get("primary_metric", {}).get(task, "accuracy")
            column = report["tasks"].index(task)
            own = report["accuracy_matrix"][report["rows_after"].index(task)][column]
            last = report["accuracy_matrix"][-1][column]
            cells.append(f"{format_value(own, metric=metric)} → {format_value(last, metric=metric)}")
        lines.append(f"| {task}: after its training → after the last task | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_forgetting_curves(reports: list[dict[str, Any]]) -> bytes:
    """One panel per task: its primary metric after every task (the base model first), one line per
    run, a dashed line where the task's own training ends. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(task for report in reports for task in report["tasks"]))
    columns = min(4, max(1, len(tasks)))
    rows = (len(tasks) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    for index, task in enumerate(tasks):
        axis = axes[index // columns][index % columns]
        metric = "accuracy"
        for report in reports:
            if task not in report["tasks"]:
                continue
            metric = report.get("primary_metric", {}).get(task, "accuracy")
            scale = 100 if metric_info(metric).unit == "fraction" else 1
            column = report["tasks"].index(task)
            series = ([report["zero_shot"].get(task)] if report["zero_shot"] is not None else [None]) + [
                row[column] for row in report["accuracy_matrix"]
            ]
            points = [(x, scale * y) for x, y in enumerate(series) if y is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=_run_name(report))
            if task in report["rows_after"]:
                axis.axvline(report["rows_after"].index(task) + 1, color="grey", linestyle="--", linewidth=0.8)
        length = 1 + max(len(report["accuracy_matrix"]) for report in reports)
        axis.set_xticks(range(length), labels=["base", *map(str, range(1, length))])
        axis.set_title(task)
        axis.set_xlabel("tasks trained")
        axis.set_ylabel(metric_label(metric))
        axis.grid(alpha=0.3)
    for index in range(len(tasks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    if tasks:
        axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def comparison_problems(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why runs cannot be put side by side: each run whose tasks (names and order) or whose primary
    metric of a task differ from the first run's, one line each; empty when they can be."""
    first = reports[0]
    problems = []
    for report in reports[1:]:
        pair = f"{first['output_dir']} and {report['output_dir']}"
        tasks, other = first["tasks"], report["tasks"]
        if other != tasks:
            lacks = [task for task in tasks if task not in other]
            adds = [task for task in other if task not in tasks]
            parts = [f"the second {verb} {names}" for verb, names in (("lacks", lacks), ("adds", adds)) if names]
            difference = "; ".join(parts) or "the same tasks in another order"
            problems.append(f"{pair} evaluate different tasks ({difference}): {tasks} vs {other}")
            continue
        metrics = [first.get("primary_metric", {}), report.get("primary_metric", {})]
        differing = [
            f"{task}: {_metric_and_unit(metrics[0].get(task))} vs {_metric_and_unit(metrics[1].get(task))}"
            for task in first["tasks"]
            if metrics[0].get(task, "accuracy") != metrics[1].get(task, "accuracy")
        ]
        if differing:
            problems.append(f"{pair} score tasks with different metrics ({'; '.join(differing)})")
    return problems


def _metric_and_unit(metric: str | None) -> str:
    metric = metric or "accuracy"
    return f"{metric} ({metric_info(metric).unit})"


def compare_runs(run_dirs: Sequence[str | Path], plot: str | Path | None = None) -> str:
    """``mergeforget compare``: the runs' table (:func:`compare_reports`), and their forgetting
    curves written as a PNG (``plot``; by default beside the first run, ``RunLayout.comparison_plot``).

    Each run is a run folder or its state folder (:meth:`RunLayout.of_run_or_state_dir`). Runs whose
    tasks or metrics differ (:func:`comparison_problems`) are refused with an
    :class:`~mergeforget_plugin.errors.EvaluationError` before anything is written."""
    from ..core.state import load_state
    from ..errors import EvaluationError, StateError

    layouts = [RunLayout.of_run_or_state_dir(run_dir) for run_dir in run_dirs]
    reports = []
    for run_dir, layout in zip(run_dirs, layouts, strict=True):
        if not layout.evaluation_rows():
            raise StateError(
                f"{run_dir} holds no evaluation rows (none in {layout.evaluations}): give the folder of a run "
                "that evaluated its tasks, or its state folder."
            )
        reports.append(build_report(layout, load_state(layout.state)))
    problems = comparison_problems(reports)
    if problems:
        listed = "\n  - ".join(problems)
        raise EvaluationError(
            "compare puts runs of the same tasks, in the same order and scored with the same metrics, side by side; "
            f"these differ:\n  - {listed}\nCompare only runs of the same tasks and metrics (a recipe run and its "
            "--baseline, say), or read each run on its own with `mergeforget report`."
        )
    picture = Path(plot) if plot is not None else layouts[0].comparison_plot
    write_atomic(picture, plot_forgetting_curves(reports))
    return compare_reports(reports) + f"\nForgetting curves (one panel per task): {picture}\n"
