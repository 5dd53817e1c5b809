"""The forgetting guard: refuse a task whose merge leaves an earlier task worse than a limit allows.

After a task is merged and its row scored, every earlier task's primary metric in that row is
compared with the task's best since it was trained (its own row and every later one). A drop of
more than ``max_forgetting`` stops the sequence before anything of the task is written, so the
state, the exported adapter and the report stay at the previous task. Drops are in points for the
metrics that are fractions (accuracy, ROUGE-L: 0.80 -> 0.69 is 11 points) and in nats for a loss.

Plain functions of the stored rows (``tests/test_guard.py`` runs them without a model); the engine
calls :func:`regressions` at a task's end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ForgettingGuardError, check_mapping
from .metrics import metric_info


@dataclass(frozen=True)
class ForgettingGuard:
    """Stop a sequence when a task's merge makes an earlier task drop more than ``max_forgetting``.

    Args:
        max_forgetting: The largest drop of an earlier task's primary metric from its best, in
            points (fraction metrics x 100) or nats (a loss); a positive number.
        accept_regression: Take a task that breaks the limit anyway (its regressions are recorded
            in the state's history).
        where: Where the limit is set, for error messages.
        accept_with: How the user of this adapter takes a refused task anyway, for error messages
            (the recipe runner names its ``--accept-regression``).
    """

    max_forgetting: float
    accept_regression: bool = False
    where: str = "guard.max_forgetting"
    accept_with: str = "ForgettingGuard(..., accept_regression=True)"

    def __post_init__(self) -> None:
        value = self.max_forgetting
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ForgettingGuardError(
                f"{self.where}: the largest drop allowed must be a positive number of points (or nats for a "
                f"loss), got {value!r}; for example 5 stops a task that costs an earlier one 5 accuracy points."
            )
        if not isinstance(self.accept_regression, bool):
            raise ForgettingGuardError(f"accept_regression: must be True or False, got {self.accept_regression!r}.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "guard", known: Sequence[str] = ()) -> ForgettingGuard:
        """From a recipe's or a plugin block's ``guard`` mapping (``known``: the keys it may hold,
        default every field), refusing unknown keys by name."""
        known = tuple(known) or ("max_forgetting", "accept_regression", "where", "accept_with")
        check_mapping(
            data,
            where,
            known=known,
            required={"max_forgetting": "say how many points an earlier task may drop (5, say)"},
            error=ForgettingGuardError,
            holds="max_forgetting",
        )
        return cls(**{"where": f"{where}.max_forgetting", **data})


@dataclass(frozen=True)
class Regression:
    """An earlier task that dropped more than the guard allows."""

    task: str
    metric: str
    best: float
    best_after: int  # the row (tasks trained) that held the best
    now: float
    drop: float  # points or nats, positive

    def describe(self) -> str:
        info = metric_info(self.metric)
        scale, unit = (100.0, "points") if info.unit == "fraction" else (1.0, "nats")
        return (
            f"{self.task!r} fell {self.drop:.1f} {unit} ({self.metric} {self.best * scale:.1f} after task "
            f"{self.best_after}, {self.now * scale:.1f} now)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "best": self.best,
            "best_after": self.best_after,
            "now": self.now,
            "drop": self.drop,
        }


def drop_of(metric: str, best: float, now: float) -> float:
    """How much worse ``now`` is than ``best``: points for a fraction metric, nats for a loss (or a ratio)."""
    info = metric_info(metric)
    worse = best - now if info.higher_is_better else now - best
    return worse * (100.0 if info.unit == "fraction" else 1.0)


def regressions(
    records: Sequence[Mapping[str, Any]],
    row: Mapping[str, Any],
    finished: Sequence[str],
    limit: float,
    since: Mapping[str, int] | None = None,
) -> list[Regression]:
    """The earlier tasks of ``row`` (the row after ``finished[-1]``) that dropped more than ``limit``.

    ``records`` are the stored rows (normalized, by ``task_index``); task ``finished[j]`` was
    trained in row ``j + 1``, so its best is over the rows from ``j + 1`` on, ``row`` included.
    ``since`` moves a task's first row later: the row where a drop of it was accepted.
    """
    found = []
    for position, task in enumerate(finished[:-1]):
        metric = row.get("primary_metric", {}).get(task)
        if metric is None or task not in row.get("scores", {}):
            continue  # not scored in this row
        trained_at = max(position + 1, (since or {}).get(task, 0))
        history = [
            (record["task_index"], record["scores"][task][metric])
            for record in records
            if record["task_index"] >= trained_at
            and record["task_index"] < row["task_index"]
            and metric in record.get("scores", {}).get(task, {})
        ]
        now = row["scores"][task][metric]
        history.append((row["task_index"], now))
        best_after, best = max(history, key=lambda item: drop_of(metric, item[1], now))  # the best, first if tied
        drop = drop_of(metric, best, now)
        if round(drop, 9) > limit:  # 0.80 - 0.65 is 15.000000000000002 points, which a limit of 15 allows
            found.append(Regression(task, metric, best, best_after, now, drop))
    return found
