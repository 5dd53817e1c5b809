"""The continual-learning report in the trackers a run already logs to: TensorBoard and Weights & Biases.

When a task's row is scored, :func:`log_task` sends what the report holds at that point, with the
task index as the step:

- ``continual/accuracy/TASK``: each task's primary metric after this task (the row of the matrix),
  when it is an accuracy (``choice``, ``exact_match``, ``rouge_l``); a primary ``loss`` is logged
  as ``continual/loss/TASK``, under its own name;
- ``continual/average_accuracy`` (``continual/mean_loss`` when the tasks are scored by loss),
  ``continual/bwt``, ``continual/fwt`` over the tasks trained so far;
- ``continual/forgetting/TASK``: how much each earlier task lost since right after its training;
- ``continual/METRIC/TASK`` for every metric scored (``loss``, ``perplexity``, ``rouge_l``, ...);
- ``continual/probe/PROBE/METRIC`` and ``continual/probe_change/PROBE`` (the probe's primary
  metric minus the base model's);
- ``continual/accuracy_matrix``: the report's heatmap, as an image.

Which trackers is the trainer's own choice (``TrainingArguments.report_to``; Axolotl fills it from
``use_tensorboard`` and ``use_wandb``). TensorBoard's events go to one folder for the whole
sequence, ``RunLayout.tensorboard``, so ``tensorboard --logdir OUTPUT_DIR`` shows them beside each
task's training curves. On W&B they go to the active run with ``continual/task`` as their step
metric: the run's own step is the trainer's global step, which restarts with every task.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from ..core.layout import RunLayout
from .metrics import metric_info

SUPPORTED = ("tensorboard", "wandb")


def requested(report_to: str | Iterable[str] | None) -> list[str]:
    """The trackers of a ``report_to`` value that this module logs to ("all" means every one)."""
    if report_to is None:
        return []
    names = {report_to} if isinstance(report_to, str) else set(report_to)
    return [name for name in SUPPORTED if name in names or "all" in names]


def task_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of a report (see :func:`~mergeforget_plugin.evaluation.report.build_report`) after its last row."""
    if not report["accuracy_matrix"]:
        return {}
    values: dict[str, float] = {}
    primary = report.get("primary_metric", {})
    # A score is logged under its metric's name unless it is an accuracy (a fraction of answers).
    named = {task: primary.get(task, "accuracy") for task in report["tasks"]}
    named = {task: "accuracy" if metric_info(metric).unit == "fraction" else metric for task, metric in named.items()}
    for task, score in zip(report["tasks"], report["accuracy_matrix"][-1], strict=True):
        if score is not None:
            values[f"continual/{named[task]}/{task}"] = score
    metrics = report["metrics"]
    mean = "average_accuracy" if set(named.values()) <= {"accuracy"} else f"mean_{next(iter(named.values()))}"
    for key, name in (("average_accuracy", mean), ("bwt", "bwt"), ("fwt", "fwt")):
        if metrics.get(key) is not None:
            values[f"continual/{name}"] = metrics[key]
    for task, forgetting in metrics.get("forgetting", {}).items():
        values[f"continual/forgetting/{task}"] = forgetting
    from .report import extra_metrics

    for metric in extra_metrics(report):  # the primary metric is continual/accuracy/TASK already
        summary = report["metric_matrices"][metric]
        if not summary["rows_after"] or summary["rows_after"][-1] != report["rows_after"][-1]:
            continue  # not scored in the last row
        for task, value in zip(summary["tasks"], summary["table"][-1], strict=True):
            if value is not None:
                values[f"continual/{metric}/{task}"] = value
    last = len(report["accuracy_matrix"]) - 1
    for name, probe in report.get("probes", {}).items():
        if len(probe["rows"]) > last and probe["rows"][last] is not None:
            values[f"continual/probe/{name}/{probe['metric']}"] = probe["rows"][last]
            if probe["zero_shot"] is not None:
                values[f"continual/probe_change/{name}"] = probe["rows"][last] - probe["zero_shot"]
    return values


def log_task(trackers: Iterable[str], layout: RunLayout, index: int, report: dict[str, Any]) -> None:
    """Send the report after task ``index`` to each of ``trackers`` (names from :func:`requested`)."""
    trackers = list(trackers)
    values = task_scalars(report)
    if not trackers or not values:
        return
    from .report import plot_accuracy_matrix

    image = plot_accuracy_matrix(report)
    if "tensorboard" in trackers:
        _to_tensorboard(layout, index, values, image)
    if "wandb" in trackers:
        _to_wandb(index, values, image)


def _to_tensorboard(layout: RunLayout, index: int, values: dict[str, float], image: bytes) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(layout.tensorboard))
    try:
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=index)
        pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        writer.add_image("continual/accuracy_matrix", pixels, global_step=index, dataformats="HWC")
    finally:
        writer.close()


def _to_wandb(index: int, values: dict[str, float], image: bytes) -> None:
    import wandb
    from PIL import Image

    run = wandb.run
    if run is None:  # the trainer's W&B callback starts the run; without one there is nowhere to log
        return
    run.define_metric("continual/task")
    for key in [*values, "continual/accuracy_matrix"]:
        run.define_metric(key, step_metric="continual/task")
    picture = wandb.Image(Image.open(io.BytesIO(image)).convert("RGB"), caption=f"after task {index}")
    run.log({**values, "continual/accuracy_matrix": picture, "continual/task": index})
