"""Intervals for benchmark results: the mean over runs (seeds x task orders) with a Student-t 95% interval.

Used by continual_benchmark.py; kept apart so the tests check it against known values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


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


def paired_difference(first: Mapping[object, float], second: Mapping[object, float]) -> dict[str, float | int | None]:
    """``mean_interval`` of first[k] - second[k] over the runs ``k`` both have (same seed and order)."""
    keys = sorted(set(first) & set(second), key=str)
    if not keys:
        raise ValueError("paired_difference needs runs that both methods have.")
    return mean_interval([first[k] - second[k] for k in keys])
