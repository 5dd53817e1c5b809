"""How a training process tells the recipe runner why it failed: a small JSON file, not a log to search.

The runner names the file in ``MERGEFORGET_FAILURE_FILE`` for each ``axolotl train`` it starts;
the plugin (loaded by every training process, torchrun's workers included) installs a hook that
writes the exception that ends the process there, then lets Python report it as usual.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from ...core.atomic import write_atomic
from ...errors import MergeForgetError

FAILURE_FILE_VARIABLE = "MERGEFORGET_FAILURE_FILE"


def failure_record(error: BaseException) -> dict[str, Any]:
    """What the runner shows of ``error``: its type, its sentence, and whether it is one of our refusals."""
    return {"error": type(error).__name__, "message": str(error), "ours": isinstance(error, MergeForgetError)}


def record_failures() -> None:
    """When the runner asked for it, write the exception that ends this process to its failure file."""
    target = os.environ.get(FAILURE_FILE_VARIABLE)
    if not target or getattr(sys.excepthook, "_mergeforget", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        # The first record wins: under torchrun the worker fails first, then its launcher with an
        # error that only says a worker failed.
        if not Path(target).exists():
            try:
                write_atomic(target, json.dumps(failure_record(error)))
            except OSError:
                pass  # the log still has the traceback
        previous(kind, error, traceback)

    hook._mergeforget = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def read_failure(path: Path) -> dict[str, Any] | None:
    """The record a failed process left, or ``None`` (killed, or it failed before the plugin loaded)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "message" in record else None
