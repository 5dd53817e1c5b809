"""The one place that names the files and folders of a continual-learning run.

Every entry point (TRL's ``train_sequence``, the Axolotl plugin, the recipe runner, the CLI)
reads and writes an output directory through :class:`RunLayout`, so a TRL run and an Axolotl run
of the same tasks leave the same tree and ``mergeforget status|report|export`` read either::

    OUTPUT/
      state/                     continual state: task-NNNN/ snapshots (see state.py)
      evaluations/after-NN.json  one evaluation row per finished task; after-00 is the base model
      adapter/                   the merged LoRA as a standard PEFT adapter
      report.json, report.md, accuracy_matrix.png (the primary metric), matrix-METRIC.png (the others)
      configs/task-NN-NAME.yaml  per-task Axolotl configs (recipe runs)
      tasks/task-NN-NAME/        each task's trainer output (and train.log for recipe runs)
      prepared/                  Axolotl's tokenized datasets (recipe runs)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError, TaskNameError

# A task's name becomes a folder name (``tasks/task-02-NAME``) and a key of the report: the one rule.
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TASK_NAME_RULE = "must start with a letter or digit and use only letters, digits, '_', '-', '.'"
# What a state folder holds: ``task-0003/`` snapshots and, while one is written, ``.task-0003.*.tmp``
# staging folders (the names core/state.py gives them; this layer cannot import it).
_STATE_ENTRY = re.compile(r"^(task-\d{4,}|\.task-\d{4,}\..*\.tmp)$")
EXPECTED_FOLDER = (
    "a run folder (a run's output_dir, holding state/ and evaluations/) or its state folder (holding task-NNNN/ "
    "snapshots)"
)


def task_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a task, or ``None`` when it can.

    >>> task_name_problem("sst2"), task_name_problem("bad name/with slash")
    (None, "'bad name/with slash' must start with a letter or digit and use only letters, digits, '_', '-', '.'")
    """
    if isinstance(name, str) and TASK_NAME.match(name):
        return None
    return f"{name!r} {TASK_NAME_RULE}"


def repeated_names(names: Sequence[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({name for name in names if list(names).count(name) > 1})


def check_task_names(names: Sequence[str]) -> None:
    """Refuse an empty sequence, a name :func:`task_name_problem` refuses, or a repeated name."""
    if not names:
        raise TaskNameError("tasks is empty: give at least one task to train.")
    for name in names:
        problem = task_name_problem(name)
        if problem is not None:
            raise TaskNameError(f"Task name {problem}.")
    repeated = repeated_names(names)
    if repeated:
        raise TaskNameError(f"Task names must be unique; repeated: {repeated}.")


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's output directory ``root``.

    ``state`` is ``root/state`` unless a caller named its own state directory (a
    ``MergeForgetCallback`` or an Axolotl config names only ``state_dir``; everything else goes
    beside it, in its parent).
    """

    root: Path
    state: Path

    def __init__(self, root: str | os.PathLike[str], state: str | os.PathLike[str] | None = None) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "state", Path(state) if state is not None else Path(root) / "state")

    @classmethod
    def of_state_dir(cls, state_dir: str | os.PathLike[str]) -> RunLayout:
        """The layout around a state directory: evaluations, report and adapter go beside it."""
        return cls(Path(state_dir).parent, state_dir)

    @classmethod
    def of_run_or_state_dir(cls, path: str | os.PathLike[str]) -> RunLayout:
        """The layout of what a user typed: a run folder, or the state folder of one.

        A folder holding ``task-NNNN/`` snapshots (or a snapshot being written) is a state folder,
        and so is an empty folder named ``state``; a folder holding any of a run's entries
        (``state/``, ``evaluations/``, ``adapter/``, ``configs/``, ``tasks/``, ``report.json``...) is
        a run folder, and so is an empty one (a run that has written nothing yet). Raises
        :class:`StateError` naming the path for a path that does not exist, a file, or a folder
        that holds something else; it creates nothing.
        """
        folder = Path(path)
        if not folder.exists():
            raise StateError(f"{folder} does not exist: expected {EXPECTED_FOLDER}. Check the path.")
        if not folder.is_dir():
            raise StateError(f"{folder} is a file, not a folder: expected {EXPECTED_FOLDER}.")
        names = {entry.name for entry in folder.iterdir()}
        run = cls(folder)
        if any(_STATE_ENTRY.match(name) for name in names) or (not names and folder.name == run.state.name):
            return cls.of_state_dir(folder)
        if not names or names & {entry.name for entry in run._entries()}:
            return run
        hint = _looks_like(folder, names)
        raise StateError(f"{folder} is neither a run folder nor a state folder{hint}: expected {EXPECTED_FOLDER}.")

    def _entries(self) -> tuple[Path, ...]:
        """What a run writes directly in ``root`` (any one of them marks a run folder)."""
        return (
            self.state,
            self.evaluations,
            self.adapter,
            self.report_json,
            self.report_markdown,
            self.accuracy_heatmap,
            self.configs,
            self.prepared,
            self.lock,
            self.root / "tasks",
            self.root / "runs",
        )

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    def evaluation_row(self, tasks_trained: int) -> Path:
        """Evaluation row after ``tasks_trained`` tasks; 0 is the base model (zero-shot)."""
        return self.evaluations / f"after-{tasks_trained:02d}.json"

    def evaluation_rows(self) -> list[Path]:
        """Every stored evaluation row."""
        return sorted(self.evaluations.glob("after-*.json")) if self.evaluations.is_dir() else []

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_markdown(self) -> Path:
        return self.root / "report.md"

    @property
    def accuracy_heatmap(self) -> Path:
        return self.root / "accuracy_matrix.png"

    def metric_heatmap(self, metric: str) -> Path:
        """The heatmap of a metric other than the primary one (``matrix-loss.png``)."""
        return self.root / f"matrix-{metric}.png"

    @property
    def comparison_plot(self) -> Path:
        """``mergeforget compare``'s forgetting curves, beside the first run it compares."""
        return self.root / "comparison.png"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard events of the report after every task, when the trainer logs to TensorBoard."""
        return self.root / "runs" / "continual"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def lock(self) -> Path:
        return self.root / ".mergeforget.lock"

    @staticmethod
    def task_slug(index: int, name: str) -> str:
        """``task-02-plurals``: the index keeps folders in training order."""
        return f"task-{index:02d}-{name}"

    def task_dir(self, index: int, name: str) -> Path:
        return self.root / "tasks" / self.task_slug(index, name)

    def task_log(self, index: int, name: str) -> Path:
        return self.task_dir(index, name) / "train.log"

    def task_progress(self, index: int, name: str) -> Path:
        """``{"step": s, "max_steps": m}`` of a training task, rewritten at most twice a second and
        at the last step (the recipe runner's progress bar reads it from the training process)."""
        return self.task_dir(index, name) / "progress.json"

    def task_failure(self, index: int, name: str) -> Path:
        """``{"error": type, "message": text, "ours": bool}`` of the exception that ended a training
        process, which the recipe runner shows instead of guessing from the log."""
        return self.task_dir(index, name) / "failure.json"

    def task_config(self, index: int, name: str) -> Path:
        return self.configs / f"{self.task_slug(index, name)}.yaml"

    def rejected(self, index: int, name: str) -> Path:
        """What the forgetting guard turned down for a task: ``merged.safetensors`` (the merged LoRA
        it would have deployed), ``evaluation.json`` (its row) and ``verdict.json`` (the drops)."""
        return self.task_dir(index, name) / "rejected"

    def replayed_rows(self, index: int, name: str) -> Path:
        """The earlier tasks' rows a recipe task trains on beside its own (JSON Lines, one more
        dataset of its Axolotl config), written from the state just before the task starts."""
        return self.task_dir(index, name) / "replayed.jsonl"


def _looks_like(folder: Path, names: set[str]) -> str:
    """What a folder that is no run or state folder looks like, when it is a part of one."""
    if "manifest.json" in names:
        return f" (it looks like one snapshot of a state: give {folder.parent} instead)"
    if any(re.match(r"^after-\d+\.json$", name) for name in names):
        return f" (it looks like a run's evaluations: give {folder.parent} instead)"
    if "adapter_config.json" in names:
        return " (it looks like an exported adapter: give the run folder it was exported from)"
    return ""
