"""Continual-learning metrics over the accuracy matrix, kept apart from whatever feeds them.

``R[i][j]`` is the score on task j after training tasks 1..i, ``b_j`` the base model's
zero-shot score on task j, T the last row (the sign conventions of Avalanche):

- AA (average accuracy) = mean over j of R[T][j]
- BWT (backward transfer) = mean over j < T of (R[T][j] - R[j][j]); negative means forgetting
- forgetting of task j = R[j][j] - R[T][j] (so mean forgetting = -BWT)
- FWT (forward transfer) = mean over k >= 2 of (R[k-1][k] - b_k)

For a metric where lower is better (``loss``, ``perplexity``) the differences are taken the other
way round, so the signs read the same for every metric: BWT = mean over j < T of
(R[j][j] - R[T][j]), negative when the loss rose (forgetting); forgetting of task j =
R[T][j] - R[j][j], the rise of its loss; FWT = mean over k >= 2 of (b_k - R[k-1][k]), positive
when earlier tasks lowered the loss of the next one. AA stays the plain mean of the last row.
- OPD_j (order disparity, over runs of the same tasks in several orders) = max - min over orders
  of R[T][j]; MOPD = max_j OPD_j, AOPD = mean_j OPD_j
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricInfo:
    """What a metric's numbers mean: the report formats, orients and explains them from this."""

    name: str
    higher_is_better: bool
    unit: str  # "fraction" (shown as points, x100) or "nats"/"ratio" (shown as measured)
    description: str


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("choice", True, "fraction", "accuracy: the best-scoring option by log-likelihood is the answer"),
        MetricInfo("exact_match", True, "fraction", "greedy generation, cut at the stop strings, equals the answer"),
        MetricInfo("rouge_l", True, "fraction", "ROUGE-L F1 of the greedy generation against the reference"),
        MetricInfo("loss", False, "nats", "mean negative log-likelihood per answer token, given the prompt"),
        MetricInfo("perplexity", False, "ratio", "exp(loss)"),
        # Rows written before metrics were named hold one accuracy per task (choice or exact_match).
        MetricInfo("accuracy", True, "fraction", "accuracy (a row written before metrics were named)"),
    )
}
# What a task's evaluation may declare (perplexity comes with loss; accuracy is the old rows' name).
SCORABLE = ("choice", "exact_match", "rouge_l", "loss")


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; an lm-evaluation-harness metric (``acc``, ...) is read
    as a higher-is-better fraction unless its name says otherwise."""
    if name in METRICS:
        return METRICS[name]
    lower = any(part in name for part in ("perplexity", "loss", "bits_per_byte", "ter"))
    return MetricInfo(name, not lower, "ratio" if lower else "fraction", f"{name} (lm-evaluation-harness)")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def continual_metrics(
    trained: list[str],
    rows: list[dict[str, float]],
    zero_shot: dict[str, float] | None,
    *,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """AA, BWT, FWT and per-task forgetting.

    ``trained[i]`` is the task trained for row i and ``rows[i]`` the score per task after it
    (R[i+1] in 1-based notation). Terms whose score was not measured are left out. With
    ``higher_is_better=False`` the differences are oriented as the module docstring says.
    """
    if not rows:
        return {"average_accuracy": None, "bwt": None, "fwt": None, "forgetting": {}}
    sign = 1.0 if higher_is_better else -1.0
    final = rows[-1]
    forgetting = {
        task: sign * (rows[j][task] - final[task])
        for j, task in enumerate(trained[:-1])
        if rows[j].get(task) is not None and final.get(task) is not None
    }
    fwt_terms = [
        sign * (rows[k - 1][trained[k]] - zero_shot[trained[k]])
        for k in range(1, len(trained))
        if zero_shot is not None and zero_shot.get(trained[k]) is not None and rows[k - 1].get(trained[k]) is not None
    ]
    return {
        "average_accuracy": _mean([final[task] for task in trained if final.get(task) is not None]),
        "bwt": _mean([-value for value in forgetting.values()]),
        "fwt": _mean(fwt_terms),
        "forgetting": forgetting,
    }


class AccuracyMatrix:
    """The accuracy matrix of one sequence, filled one row at a time.

    ``update(0, None, acc)`` records the base model (zero-shot; later calls add tasks to it),
    ``update(i, task, acc)`` the row after the i-th task. ``result()`` gives the metrics above.

    >>> matrix = AccuracyMatrix()
    >>> matrix.update(0, None, {"a": 0.5, "b": 0.5})
    >>> matrix.update(1, "a", {"a": 0.9, "b": 0.5})
    >>> matrix.update(2, "b", {"a": 0.7, "b": 0.8})
    >>> round(matrix.result()["bwt"], 6), round(matrix.result()["fwt"], 6)
    (-0.2, 0.0)

    ``higher_is_better=False`` (a loss matrix) orients BWT, FWT and forgetting as the module
    docstring says.
    """

    def __init__(self, higher_is_better: bool = True) -> None:
        self.higher_is_better = higher_is_better
        self.reset()

    def reset(self) -> None:
        self.zero_shot: dict[str, float] | None = None
        self._rows: dict[int, tuple[str, dict[str, float]]] = {}

    def update(self, tasks_trained: int, after_task: str | None, accuracy: dict[str, float]) -> None:
        if tasks_trained == 0:
            self.zero_shot = {**(self.zero_shot or {}), **accuracy}
        else:
            self._rows[tasks_trained] = (str(after_task), dict(accuracy))

    @property
    def rows_after(self) -> list[str]:
        """The task trained before each row, in training order."""
        return [task for _, (task, _) in sorted(self._rows.items())]

    @property
    def rows(self) -> list[dict[str, float]]:
        return [row for _, (_, row) in sorted(self._rows.items())]

    @property
    def tasks(self) -> list[str]:
        """Every task evaluated in any row, in the order first seen."""
        seen = [*(self.zero_shot or {})] + [task for row in self.rows for task in row]
        return list(dict.fromkeys(seen))

    def table(self) -> list[list[float | None]]:
        """R as a list of rows over :attr:`tasks`; ``None`` where a task was not evaluated."""
        return [[row.get(task) for task in self.tasks] for row in self.rows]

    def result(self) -> dict[str, Any]:
        return continual_metrics(self.rows_after, self.rows, self.zero_shot, higher_is_better=self.higher_is_better)


def order_disparity(final_rows: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """How much the final accuracy of each task depends on the order the tasks were trained in.

    ``final_rows[order]`` is R[T] (accuracy per task after the last task) of a run with that task
    order. OPD_j = max over orders of R[T][j] - min over orders of R[T][j]; MOPD = max_j OPD_j;
    AOPD = mean_j OPD_j (as defined for the Standard CL benchmark's task orders).

    >>> result = order_disparity({"1": {"a": 0.9, "b": 0.6}, "2": {"a": 0.7, "b": 0.65}})
    >>> {task: round(value, 6) for task, value in result["opd"].items()}, round(result["mopd"], 6)
    ({'a': 0.2, 'b': 0.05}, 0.2)
    """
    if len(final_rows) < 2:
        raise ValueError("Order disparity compares at least two task orders.")
    tasks = sorted(set.intersection(*(set(row) for row in final_rows.values())))
    opd = {
        task: max(row[task] for row in final_rows.values()) - min(row[task] for row in final_rows.values())
        for task in tasks
    }
    return {"opd": opd, "mopd": max(opd.values()) if opd else None, "aopd": _mean(list(opd.values()))}
