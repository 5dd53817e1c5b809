"""Intervals for benchmark results, without pseudo-replication.

A run is one (seed, task order) cell. Two things make those cells less independent than they look:
the orders of one seed share the seed's LoRA init and batch draws, and an order-blind method (one
LoRA per task, then a merge) ends with the same accuracies in every order, so its AA cells of one
seed are one value counted several times. The primary interval is therefore over seeds, with the orders of a
seed averaged first (:func:`over_seeds`); the seed x order interval (:func:`mean_interval` over every
cell) and the sign count of paired wins (:func:`sign_count`) are reported beside it, and the
interval over held-out rows and seeds (:func:`rows_and_seeds`) beside that.

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


# What a comparison can detect and how sure it is, from the held-out rows as well as the seeds.
# Every run of a grid scores the same held-out rows (the split is fixed), so those rows are a
# second sample beside the training seeds: one task's accuracy on n rows has a standard error of
# sqrt(p (1 - p) / n), 7 points at n = 50 and p = 0.5. rows_and_seeds below counts both: the rows
# by a bootstrap (the same resamples for every run, so a paired difference resamples the same rows),
# the seeds by their spread.
POWER = 0.8
ALPHA = 0.05
BOOTSTRAP_DRAWS = 2000


def detectable_over_seeds(differences: Sequence[float], power: float = POWER, alpha: float = ALPHA) -> float | None:
    """The smallest true mean difference a two-sided paired t-test over these per-seed differences
    detects with probability ``power``: (t(1 - alpha/2) + t(power)) x sd / sqrt(n), df = n - 1
    (the usual approximation; ``None`` below two seeds).

    >>> round(detectable_over_seeds([0.01, 0.03, 0.05]), 4)
    0.0619
    """
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return None
    spread = statistics.stdev(differences) / math.sqrt(n)
    return float(t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * spread


def row_draws(task: str, rows: int, draws: int = BOOTSTRAP_DRAWS):
    """Bootstrap indices into a task's ``rows`` held-out rows, ``(draws, rows)``, the same for every
    run and method (seeded by the task's name): a paired comparison resamples the same rows on both
    sides, as both sides scored the same rows."""
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(task.encode())).integers(0, rows, size=(draws, rows))


def resampled(items: Mapping[str, Sequence[float]], tasks: Sequence[str], draws: int = BOOTSTRAP_DRAWS):
    """The mean over ``tasks`` of each task's per-row values resampled (row_draws): ``(draws,)``."""
    import numpy as np

    total = np.zeros(draws)
    for task in tasks:
        values = np.asarray(items[task], dtype=float)
        total += values[row_draws(task, len(values), draws)].mean(1)
    return total / len(tasks)


def rows_and_seeds(
    replicates: Mapping[Run, Sequence[float]],
    estimates: Mapping[Run, float],
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """The interval over held-out rows and seeds. ``replicates[(seed, order)]`` holds one run's value
    under each row resample (row_draws: the same resamples for every run), ``estimates`` the runs'
    own values. Two errors, added in quadrature:

    - rows: the standard deviation over resamples of the mean over seeds (each seed's orders
      averaged first), how far the grid's number would move on other held-out rows;
    - seeds: stdev of the per-seed values / sqrt(n), how far it would move with other seeds.

    The seeds are not bootstrapped: with three of them a resample has ten distinct outcomes and its
    percentile interval is far too narrow. The interval is mean +- t(df) x se, df by
    Welch-Satterthwaite: only the seeds' part is estimated from n - 1 degrees of freedom (the rows'
    from thousands of resamples), so df is n - 1 where the seeds dominate and tends to the normal
    where the rows do. ``detectable`` is the smallest true difference detected at 80% power with that
    error, ``p`` the two-sided p-value of mean / se. One seed: the interval holds the rows' error only
    (normal) and there is no p (nothing is known of the seeds).

    >>> one = {(0, "01"): [0.0, 0.2], (1, "01"): [0.2, 0.4]}
    >>> summary = rows_and_seeds(one, {(0, "01"): 0.1, (1, "01"): 0.3})
    >>> round(summary["row_se"], 4), round(summary["se"], 4), round(summary["df"], 2), summary["n"]
    (0.1414, 0.1732, 9.0, 2)
    """
    import numpy as np
    from scipy.stats import t

    by_seed: dict[int, list] = {}
    for (run_seed, _order), values in replicates.items():
        by_seed.setdefault(run_seed, []).append(np.asarray(values, dtype=float))
    per_seed_estimates = seed_means(estimates)
    if sorted(by_seed) != sorted(per_seed_estimates):
        raise ValueError("rows_and_seeds: the resampled runs and the estimates are not of the same seeds.")
    per_seed = np.stack([np.mean(v, axis=0) for _, v in sorted(by_seed.items())])  # (seeds, draws)
    seed_values = list(per_seed_estimates.values())
    seeds = len(seed_values)
    row_error = float(per_seed.mean(0).std(ddof=1))
    seed_error = statistics.stdev(seed_values) / math.sqrt(seeds) if seeds > 1 else 0.0
    error = math.sqrt(row_error**2 + seed_error**2)
    df = error**4 / (seed_error**4 / (seeds - 1)) if seed_error > 0 else math.inf
    mean = statistics.fmean(seed_values)
    half = float(t.ppf(0.5 + confidence / 2, df)) * error
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "se": error,
        "row_se": row_error,
        "df": df,
        "detectable": float(t.ppf(0.5 + confidence / 2, df) + t.ppf(POWER, df)) * error,
        "p": float(2 * t.sf(abs(mean) / error, df)) if seeds > 1 and error > 0 else None,
        "n": seeds,
    }


def holm(p_values: Mapping[str, float], alpha: float = ALPHA) -> dict[str, bool]:
    """Holm's step-down test over one table's comparisons: which are significant at ``alpha``
    family-wise (a table of 5-10 comparisons would find one at 0.05 by chance about as often as not).

    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
    {'a': True, 'b': False, 'c': False}
    """
    ordered = sorted(p_values, key=p_values.get)
    found, stopped = {}, False
    for rank, name in enumerate(ordered):
        stopped = stopped or p_values[name] > alpha / (len(ordered) - rank)
        found[name] = not stopped
    return {name: found[name] for name in p_values}


def verdict(intervals: Sequence[Mapping[str, float | None] | None]) -> str:
    """The words a difference earns: "higher" or "lower" only when every given interval excludes 0,
    else "not distinguishable" (never "level with": an interval that includes 0 does not show equality).

    >>> verdict([{"low": 0.01, "high": 0.05}, {"low": -0.01, "high": 0.06}])
    'not distinguishable'
    >>> verdict([{"low": 0.01, "high": 0.05}])
    'higher'
    >>> verdict([{"low": None, "high": None}, {"low": 0.01, "high": 0.05}])
    'not distinguishable'
    """
    given = [i for i in intervals if i is not None]
    if any(i.get("low") is None for i in given):  # one seed: its spread over seeds is unknown
        return "not distinguishable"
    if given and all(i["low"] > 0 for i in given):
        return "higher"
    if given and all(i["high"] < 0 for i in given):
        return "lower"
    return "not distinguishable"


def t_test_p(differences: Sequence[float]) -> float | None:
    """Two-sided p-value of a one-sample t-test that the mean of ``differences`` is 0; None below 2
    values or with no spread among them (the test is undefined there, and a p of 0 would let two
    identical seeds pass Holm's test on their own)."""
    from scipy.stats import ttest_1samp

    if len(differences) < 2 or statistics.pstdev(differences) == 0:
        return None
    return float(ttest_1samp(differences, 0.0).pvalue)
