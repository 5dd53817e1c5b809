"""Named pause points for fault-injection tests: where a kill must never lose a finished task.

A SIGKILL timed from outside cannot land reliably "half-way through the state write". The code
marks those moments with :func:`pause_point`. When the environment variable
``MERGEFORGET_PAUSE_AT`` names a point (``state-write`` or ``state-write@2`` for task 2 only), the
process that reaches it writes ``MERGEFORGET_PAUSE_MARKER`` (a file path) and waits there to be
killed. Unset, as in every normal run, a pause point returns at once.

Points, in the order a task reaches them: ``training-step`` (after step 2), ``merge`` (the merged
LoRA is computed, nothing is written), ``state-write`` (one of the snapshot's tensor files is
written in the staging directory), ``state-commit`` (the new snapshot has its final name, older
ones are not yet removed), ``task-saved`` (the task's evaluation row and its state are saved,
the trainer has not saved its own outputs yet) and ``export`` (the exported adapter's weights are
replaced, its config not yet).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PAUSE_AT_ENV = "MERGEFORGET_PAUSE_AT"
PAUSE_MARKER_ENV = "MERGEFORGET_PAUSE_MARKER"
POINTS = ("training-step", "merge", "state-write", "state-commit", "task-saved", "export")
_LONGEST_PAUSE_SECONDS = 600


def pause_point(name: str, task_index: int | None = None) -> None:
    """Wait here to be killed if ``MERGEFORGET_PAUSE_AT`` names this point (and task); else return."""
    wanted = os.environ.get(PAUSE_AT_ENV)
    if not wanted:
        return
    point, _, index = wanted.partition("@")
    if point != name or (index and task_index is not None and int(index) != task_index):
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name} {task_index} {os.getpid()}\n")
    deadline = time.time() + _LONGEST_PAUSE_SECONDS
    while time.time() < deadline:
        time.sleep(0.2)
    # Nobody came: die as the test intended rather than carry on past the fault.
    os.kill(os.getpid(), signal.SIGKILL)
