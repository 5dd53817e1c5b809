"""How a training process tells the recipe runner why it failed: a small JSON file, not a log to search.

The runner names the file in ``MERGEFORGET_FAILURE_FILE`` for each ``axolotl train`` it starts;
the plugin (loaded by every training process, torchrun's workers included) installs a hook that
writes the exception that ends the process there, then lets Python report it as usual.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from ...core.atomic import write_atomic
from ...errors import MergeForgetError

FAILURE_FILE_VARIABLE = "MERGEFORGET_FAILURE_FILE"


def failure_record(error: BaseException) -> dict[str, Any]:
    """What the runner shows of ``error``: its type, its sentence, whether it is one of our refusals,
    and, for a crash that is not ours, the line that raised it and the process's rank (a log of two
    interleaved processes rarely says which one failed where)."""
    record: dict[str, Any] = {
        "error": type(error).__name__,
        "message": str(error),
        "ours": isinstance(error, MergeForgetError),
    }
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        record["raised_at"] = f"{last.filename}:{last.lineno} in {last.name}"
    if os.environ.get("RANK") is not None:
        record["rank"] = os.environ["RANK"]
    return record


def describe_failure(record: dict[str, Any]) -> str:
    """One line for the runner's error: our refusals as they read, a crash with where it happened."""
    text = f"{record.get('error', 'Error')}: {record['message']}"
    if record.get("ours"):
        return text
    where = [f"raised at {record['raised_at']}"] if record.get("raised_at") else []
    where += [f"rank {record['rank']}"] if record.get("rank") is not None else []
    return text + (f" ({', '.join(where)})" if where else "")


def record_failures() -> None:
    """When the runner asked for it, write the exception that ends this process to its failure file."""
    target = os.environ.get(FAILURE_FILE_VARIABLE)
    if not target or getattr(sys.excepthook, "_mergeforget", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        # The first record wins: under torchrun the worker fails first, then its launcher with an
        # error that only says a worker failed.
        if not Path(target).exists():
            try:
                write_atomic(target, json.dumps(failure_record(error)))
            except OSError:
                pass  # the log still has the traceback
        previous(kind, error, trace)

    hook._mergeforget = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def read_failure(path: Path) -> dict[str, Any] | None:
    """The record a failed process left, or ``None`` (killed, or it failed before the plugin loaded)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "message" in record else None
