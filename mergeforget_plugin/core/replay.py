"""Replay with constant memory: a seeded buffer of earlier tasks' training rows, balanced over tasks.

The buffer holds at most ``buffer_rows`` rows whatever the number of tasks, as the LoRA keeps its
size: after task ``t`` each of the ``t`` tasks seen keeps an equal share (the first tasks one row
more when ``buffer_rows`` does not divide), so a task's share shrinks as tasks arrive. A task's
rows are a seeded draw of its training rows, fixed once the task ends; a shrinking share keeps the
first rows of that draw. Nothing here depends on when or where a run resumes: the buffer after
task ``t`` is a function of the seed, the task names and their rows, which is what lets a resumed
run be bit-identical to an uninterrupted one.

The next task trains on its own rows plus replayed ones: ``fraction`` is the replayed share of the
mixed training set, so ``n_own`` rows get ``round(n_own * fraction / (1 - fraction))`` replayed rows
(``count`` gives the number instead), drawn from the buffer in a seeded order, the buffer repeated
when more are asked than it holds.

Rows are plain JSON objects (the task's own fields); the buffer is saved inside the state's
snapshot (:mod:`mergeforget_plugin.core.state`), in the same atomic, checksummed write as the LoRA.
This module imports no framework.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ReplayError, check_mapping

# Replayed rows, by task name in the order the tasks finished.
Buffer = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class ReplayConfig:
    """How much of earlier tasks' training text is kept and mixed into later tasks.

    Args:
        buffer_rows: Rows kept in all, over every task seen (a positive whole number).
        fraction: The replayed share of each later task's training rows, in [0, 1).
        count: Replayed rows per later task instead of ``fraction`` (a non-negative whole number).
        seed: Seeds which rows are kept and the order they are replayed in.
        where: Where the settings come from, for error messages (``"replay"``, a recipe's path).
    """

    buffer_rows: int
    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    where: str = "replay"

    def __post_init__(self) -> None:
        at = self.where
        if isinstance(self.buffer_rows, bool) or not isinstance(self.buffer_rows, int) or self.buffer_rows < 1:
            raise ReplayError(f"{at}.buffer_rows: must be a positive whole number of rows, got {self.buffer_rows!r}.")
        if self.fraction is not None and self.count is not None:
            raise ReplayError(f"{at}: give fraction or count, not both.")
        if self.fraction is None and self.count is None:
            raise ReplayError(f"{at}: say how much to replay, with fraction (in [0, 1)) or count (rows per task).")
        if self.fraction is not None and (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, int | float)
            or not math.isfinite(self.fraction)
            or not 0 <= self.fraction < 1
        ):
            raise ReplayError(
                f"{at}.fraction: the replayed share of a task's training rows must be in [0, 1), got "
                f"{self.fraction!r} (0.2 mixes one replayed row into every four of the task's own)."
            )
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0
        ):
            raise ReplayError(f"{at}.count: must be a whole number of rows, 0 or more, got {self.count!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ReplayError(f"{at}.seed: must be a whole number, got {self.seed!r}.")

    def to_dict(self) -> dict[str, Any]:
        """What the state records (``where`` is not part of it)."""
        return {"buffer_rows": self.buffer_rows, "fraction": self.fraction, "count": self.count, "seed": self.seed}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "replay") -> ReplayConfig:
        """From a recipe's or a state's ``replay`` mapping, refusing unknown keys by name."""
        check_mapping(
            data,
            where,
            known=("buffer_rows", "fraction", "count", "seed"),
            required={"buffer_rows": "say how many rows the buffer keeps in all"},
            error=ReplayError,
            holds="buffer_rows and fraction or count",
        )
        return cls(
            buffer_rows=data["buffer_rows"],
            fraction=data.get("fraction"),
            count=data.get("count"),
            seed=data.get("seed", 0),
            where=where,
        )


def shares(buffer_rows: int, tasks: int) -> list[int]:
    """Rows kept for each of ``tasks`` tasks: equal, the first ones one more when it does not divide.

    >>> shares(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(buffer_rows, tasks)
    return [base + (1 if i < extra else 0) for i in range(tasks)]


def _draw_seed(seed: int, task: str) -> str:
    # A string seed: random.Random hashes it with SHA-512, the same on every platform and process.
    return f"mergeforget-replay:{seed}:{task}"


def plain_rows(rows: Sequence[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """``rows`` as the JSON the state stores them as (keys sorted, tuples as lists), so a run that
    goes on in memory holds the same rows as one resumed from disk; a value JSON cannot hold is
    refused before the task trains."""
    plain = []
    for number, row in enumerate(rows, start=1):
        try:
            plain.append(json.loads(json.dumps(dict(row), sort_keys=True, ensure_ascii=False)))
        except (TypeError, ValueError) as error:
            raise ReplayError(
                f"{where}, row {number}: replay keeps training rows as JSON in the state, and this row cannot be "
                f"written as JSON ({error}). Give rows of text and numbers, or turn replay off."
            ) from error
    return plain


def add_task(
    buffer: Mapping[str, Sequence[Mapping[str, Any]]],
    task: str,
    rows: Sequence[Mapping[str, Any]],
    config: ReplayConfig,
) -> Buffer:
    """The buffer once ``task`` (with its training ``rows``) has finished: a new mapping, inputs unchanged."""
    if task in buffer:
        raise ReplayError(f"Task {task!r} is in the replay buffer already; a task's rows are added once.")
    kept = {name: list(task_rows) for name, task_rows in buffer.items()}
    share = shares(config.buffer_rows, len(kept) + 1)
    # The draw shuffles positions, not rows: the same permutation as shuffling the rows, and only
    # the rows kept are copied.
    order = list(range(len(rows)))
    random.Random(_draw_seed(config.seed, task)).shuffle(order)
    kept[task] = [dict(rows[i]) for i in order[: share[-1]]]
    for (name, task_rows), size in zip(kept.items(), share, strict=True):
        kept[name] = task_rows[:size]
    return kept


def replay_count(own_rows: int, config: ReplayConfig, buffered: int) -> int:
    """How many replayed rows a task with ``own_rows`` training rows gets (0 when the buffer is empty)."""
    if buffered == 0:
        return 0
    if config.count is not None:
        return config.count
    return round(own_rows * config.fraction / (1 - config.fraction))


def replayed_rows(
    buffer: Mapping[str, Sequence[Mapping[str, Any]]], task: str, own_rows: int, config: ReplayConfig
) -> list[dict[str, Any]]:
    """The rows of earlier tasks that ``task`` trains on beside its ``own_rows`` rows, in a seeded order."""
    pool = [dict(row) for name in buffer for row in buffer[name]]
    wanted = replay_count(own_rows, config, len(pool))
    if wanted == 0:
        return []
    rng = random.Random(_draw_seed(config.seed, f"replay-into:{task}"))
    chosen: list[dict[str, Any]] = []
    while len(chosen) < wanted:  # the whole buffer in a fresh order each pass
        order = list(range(len(pool)))
        rng.shuffle(order)
        chosen += [pool[i] for i in order[: wanted - len(chosen)]]
    return chosen


def encode(buffer: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """The buffer as JSON lines, the bytes the state stores: ``{"task": ..., "row": {...}}`` per row,
    ``{"task": ...}`` for a task that keeps no row (so the tasks and their order survive a resume)."""
    lines = []
    for name, rows in buffer.items():
        entries = [{"task": name, "row": row} for row in rows] or [{"task": name}]
        lines += [json.dumps(entry, sort_keys=True, ensure_ascii=False) for entry in entries]
    return "".join(line + "\n" for line in lines).encode()


def decode(data: bytes, where: str) -> Buffer:
    """The buffer :func:`encode` wrote; ``where`` names the file in errors."""
    buffer: Buffer = {}
    # Split on newlines only: str.splitlines would also split inside a row holding U+2028 or U+0085.
    for number, line in enumerate(data.decode().split("\n")[:-1], start=1):
        try:
            entry = json.loads(line)
            rows = buffer.setdefault(str(entry["task"]), [])
            if "row" in entry:
                rows.append(dict(entry["row"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ReplayError(f"{where}, line {number}: not a replay row ({error}).") from error
    return buffer


def describe(buffer: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Rows per task and bytes, as ``mergeforget status`` and the state's history show them."""
    return {"rows": {name: len(rows) for name, rows in buffer.items()}, "bytes": len(encode(buffer))}


def buffer_fields(buffer: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[str]]:
    """The fields of each task's kept rows (a task's rows share one format), for :func:`check_fields`."""
    return {task: sorted(rows[0]) for task, rows in buffer.items() if rows}


def resumed_advice(state_dir: str) -> str:
    """:func:`check_fields`'s last sentence when the earlier rows are in a state's buffer: a resumed
    sequence keeps its replay settings, so turning replay off is no way out."""
    return (
        f"{state_dir}'s replay buffer holds the earlier rows, so give the task rows with their fields, "
        "or start a new sequence in another output directory"
    )


def check_fields(
    buffer_fields: Mapping[str, Sequence[str]],
    task: str,
    task_fields: Sequence[str],
    where: str,
    what_to_do: str = (
        "give the tasks the same fields, or turn replay off (a sequence already started keeps its replay "
        "settings: start a new one in another output directory)"
    ),
) -> None:
    """Refuse replaying into ``task`` rows whose fields differ from the task's own (``buffer_fields``:
    the fields of each earlier task's rows; ``what_to_do``: the refusal's last sentence, see
    :func:`resumed_advice`)."""
    own = sorted(task_fields)
    for name, fields in buffer_fields.items():
        if sorted(fields) != own:
            raise ReplayError(
                f"{where}: task {task!r} has the fields {own}, but task {name!r}, whose rows would be replayed "
                f"into it, has {sorted(fields)}. Replay needs one row format for the whole sequence: {what_to_do}."
            )
