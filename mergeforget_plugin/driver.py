"""One sequence driver: the loop every entry point runs, whatever trains a task.

The TRL path (:func:`~mergeforget_plugin.train_sequence`) trains a task with an in-process
``SFTTrainer``; the recipe runner with an ``axolotl train`` process. Both hand the driver a
:class:`TaskTrainer` and the driver owns the rest, the same way for both:

1. plan from the state: the tasks it finished are skipped, and a resumed run says so;
2. train each unfinished task in order (the trainer's :meth:`TaskTrainer.train`; the task's
   :class:`~mergeforget_plugin.engine.ContinualTask` merges, scores and saves it);
3. after the last task, or after the forgetting guard refused one, write the merged adapter and
   the report of the tasks the state took (:func:`~mergeforget_plugin.engine.finish_sequence`),
   so ``adapter/`` and the report always match the state, as the guard's message says.

It prints the same calm lines on both paths (first process only): a resume notice, one line as each
task starts and ends, where the adapter and the report are.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .core.export import ADAPTER_WEIGHTS_FILE
from .core.layout import RunLayout
from .core.state import ContinualState, load_state
from .engine import agreed, finish_sequence, is_main_process
from .errors import ForgettingGuardError, StateError


class TaskTrainer:
    """How an entry point trains one task; the driver decides which tasks run, in which order."""

    def train(self, index: int, name: str) -> None:
        """Train task ``name`` (1-based ``index``) to its end: when this returns, the task is in the state."""
        raise NotImplementedError

    def describe(self, index: int, name: str) -> str:
        """What the task's first console line says it does."""
        return "training"

    def skip(self, index: int, name: str) -> None:
        """Task ``name`` finished in an earlier run (the recipe runner's progress bar counts it)."""


@dataclass
class SequenceEnd:
    """What a driven sequence left: its state (``None`` when no task finished), the tasks trained
    and skipped in this call, and the report files."""

    state: ContinualState | None
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report_files: list[Path] = field(default_factory=list)


def drive_sequence(
    layout: RunLayout,
    names: Sequence[str],
    trainer: TaskTrainer,
    *,
    echo: Callable[[str], None] = print,
    recipe: str | None = None,
    main_process: bool | None = None,
) -> SequenceEnd:
    """Train the unfinished tasks of ``names`` with ``trainer``, then write the adapter and the report.

    A :class:`~mergeforget_plugin.errors.ForgettingGuardError` from a task is raised again once the
    adapter and the report of the tasks taken so far are written.
    """
    main = is_main_process(main_process)
    say = echo if main else (lambda line: None)
    state = load_state(layout.state)
    finished = list(state.finished_tasks) if state is not None else []
    end = SequenceEnd(state)
    total = len(names)
    if finished:
        left = [name for name in names if name not in finished]
        then = f"training from task {names.index(left[0]) + 1} ({left[0]})" if left else "nothing left to train"
        say(f"Resuming {layout.state}: {len(finished)} of {total} task(s) finished ({', '.join(finished)}); {then}.")
    with _older_objects_frozen():
        try:
            for index, name in enumerate(names, start=1):
                if name in finished:
                    end.skipped.append(name)
                    trainer.skip(index, name)
                    continue
                say(f"[task {index}/{total}] {name}: {trainer.describe(index, name)}")
                started = time.time()
                trainer.train(index, name)
                end.trained.append(name)
                say(f"[task {index}/{total}] {name}: done in {time.time() - started:.1f} s")
        except ForgettingGuardError:
            # The adapter and the report a user deploys and reads are those of the tasks taken so far.
            _finish(layout, end, say, recipe, main_process, stopped=True)
            raise
    return _finish(layout, end, say, recipe, main_process, stopped=False)


# The most objects the interpreter keeps in the collector's permanent generation by itself: none on
# Python 3.10, 3.11 and 3.13; on 3.12.1, 375 immortal tuples, at start and again after each full
# collection (`python3.12 -I -S -c "import gc; print(gc.get_freeze_count())"`). A caller's
# gc.freeze() holds thousands (about 4,600 in a bare 3.12 interpreter, 600,000 after torch,
# transformers and TRL are imported), whenever it was made.
_INTERPRETERS_OWN_FROZEN = 1000


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the objects alive before the sequence (the imports, the model) out of the garbage
    collector's full walks while it runs. Every ``Trainer.train()`` begins with accelerate's
    ``free_memory()``, a full ``gc.collect()``: with torch, transformers and TRL imported that walks
    about 600,000 objects, 0.4-0.7 s per task on a CPU outside the optimizer steps
    (benchmarks/harness_time.py), most of what a short task spends around them. What the tasks create
    (a finished task's trainer and optimizer state) is collected as before; the frozen objects go
    back to the collector when the sequence ends (Python 3.12 takes its own immortal tuples back at
    its next full collection). A caller that froze objects keeps its own policy: nothing more is
    frozen, since ``gc.unfreeze()`` cannot thaw only what this froze, and a freeze left in place
    would keep this sequence's model from ever being collected."""
    if gc.get_freeze_count() > _INTERPRETERS_OWN_FROZEN:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _finish(
    layout: RunLayout,
    end: SequenceEnd,
    say: Callable[[str], None],
    recipe: str | None,
    main_process: bool | None,
    *,
    stopped: bool,
) -> SequenceEnd:
    end.state = load_state(layout.state)
    if end.state is None:
        if stopped:
            return end  # the guard cannot refuse task 1: nothing to measure forgetting on
        raise StateError(f"No state in {layout.state} after the run.")
    if stopped and agreed(_published(layout, end.state)):  # every process takes the first one's word
        # An earlier call already left the adapter and the report of exactly these tasks: keep them.
        end.report_files = [layout.report_json]
    else:
        end.report_files = finish_sequence(layout, end.state, recipe=recipe, main_process=main_process)
    count = len(end.state.finished_tasks)
    say(f"{count if stopped else f'All {count}'} task(s) finished. Merged adapter: {layout.adapter}")
    if end.report_files:
        say(f"Report: {', '.join(str(path) for path in end.report_files)}")
    return end


def _published(layout: RunLayout, state: ContinualState) -> bool:
    """Whether ``adapter/`` and the report already hold the state's finished tasks."""
    try:
        report = json.loads(layout.report_json.read_text())
    except (OSError, ValueError):
        return False
    weights = layout.adapter / ADAPTER_WEIGHTS_FILE
    return weights.is_file() and report.get("finished_tasks") == list(state.finished_tasks)
