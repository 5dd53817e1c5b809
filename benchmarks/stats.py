"""Intervals for benchmark results, without pseudo-replication.

A run is one (seed, task order) cell. Two things make those cells less independent than they look:
the orders of one seed share the seed's LoRA init and batch draws, and an order-blind method (one
LoRA per task, then a merge) ends with the same accuracies in every order, so its AA cells of one
seed are one value counted several times. The primary interval is therefore over seeds, with the orders of a
seed averaged first (:func:`over_seeds`); the seed x order interval (:func:`mean_interval` over every
cell) and the sign count of paired wins (:func:`sign_count`) are reported beside it.

Used by continual_benchmark.py; kept apart so the tests check it against known values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Run = tuple[int, str]  # (seed, task order)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | int | None]:
    """Mean of ``values`` and the two-sided Student-t interval around it (``None`` bounds for one value).

    >>> summary = mean_interval([1.0, 2.0, 3.0])
    >>> summary["mean"], round(summary["low"], 3), round(summary["high"], 3)
    (2.0, -0.484, 4.484)
    """
    from scipy.stats import t

    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval needs at least one value.")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def seed_means(values: Mapping[Run, float]) -> dict[int, float]:
    """The mean over each seed's task orders: one value per seed."""
    by_seed: dict[int, list[float]] = {}
    for (seed, _order), value in values.items():
        by_seed.setdefault(seed, []).append(float(value))
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items())}


def over_seeds(values: Mapping[Run, float]) -> dict[str, float | int | None]:
    """The primary summary: :func:`mean_interval` over seeds of the order-averaged values (n = seeds)."""
    return mean_interval(list(seed_means(values).values()))


def paired_difference(first: Mapping[Run, float], second: Mapping[Run, float]) -> dict[str, float | int | None]:
    """``mean_interval`` of first[k] - second[k] over the runs ``k`` both have (same seed and order)."""
    keys = _common(first, second)
    return mean_interval([first[k] - second[k] for k in keys])


def paired_over_seeds(first: Mapping[Run, float], second: Mapping[Run, float]) -> dict[str, float | int | None]:
    """The primary paired summary: per seed, the order-averaged first minus the order-averaged second
    (over the runs both have), then :func:`mean_interval` over seeds."""
    keys = _common(first, second)
    return over_seeds({k: first[k] - second[k] for k in keys})


def sign_count(first: Mapping[Run, float], second: Mapping[Run, float], tie: float = 1e-9) -> dict[str, int]:
    """How many paired runs ``first`` wins, ties (within ``tie``) and loses."""
    differences = [first[k] - second[k] for k in _common(first, second)]
    return {
        "wins": sum(d > tie for d in differences),
        "ties": sum(abs(d) <= tie for d in differences),
        "losses": sum(d < -tie for d in differences),
    }


def _common(first: Mapping[Run, float], second: Mapping[Run, float]) -> list[Run]:
    keys = sorted(set(first) & set(second), key=str)
    if not keys:
        raise ValueError("a paired comparison needs runs that both methods have.")
    return keys
