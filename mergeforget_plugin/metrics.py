"""Continual-learning metrics over the accuracy matrix, kept apart from whatever feeds them.

``R[i][j]`` is the accuracy on task j after training tasks 1..i, ``b_j`` the base model's
zero-shot accuracy on task j, T the last row (the sign conventions of Avalanche):

- AA (average accuracy) = mean over j of R[T][j]
- BWT (backward transfer) = mean over j < T of (R[T][j] - R[j][j]); negative means forgetting
- forgetting of task j = R[j][j] - R[T][j] (so mean forgetting = -BWT)
- FWT (forward transfer) = mean over k >= 2 of (R[k-1][k] - b_k)
- OPD_j (order disparity, over runs of the same tasks in several orders) = max - min over orders
  of R[T][j]; MOPD = max_j OPD_j, AOPD = mean_j OPD_j
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
    """

    def __init__(self) -> None:
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
        return continual_metrics(self.rows_after, self.rows, self.zero_shot)


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
