"""A transformers ``TrainerCallback`` that makes one ``trainer.train()`` call one task of an SLAO sequence.

It imports transformers only, so any ``Trainer`` can carry it: TRL's ``SFTTrainer``, or the
trainer Axolotl builds. Every hook forwards to :class:`~mergeforget_plugin.engine.ContinualTask`:
:class:`TaskCallback` runs a task something else began (the Axolotl plugin begins its task when the
model is loaded, before the trainer exists); :class:`MergeForgetCallback` also makes and begins it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..core.layout import RunLayout
from ..core.replay import ReplayConfig
from ..core.slao import MergeForgetConfig
from ..core.state import ContinualState, load_state
from ..engine import ContinualTask, replay_for, training_summary
from ..errors import ReplayError
from ..evaluation.guard import ForgettingGuard
from ..evaluation.scoring import EvalSet
from ..evaluation.trackers import requested
from ..preflight import TaskPlan, refuse, replay_problems, state_problems
from ..settings import ContinualConfig, merged_settings


class TaskCallback(TrainerCallback):
    """The trainer's side of a :class:`ContinualTask` that has begun already: rows left to score once
    the trainer has wrapped the model, progress after each step, and the task's end.

    The rank comes from the trainer (``TrainerState.is_world_process_zero``) and the trackers from
    its ``report_to``.
    """

    def __init__(self, task: ContinualTask) -> None:
        self.task = task

    @property
    def state(self) -> ContinualState | None:
        """The continual state: as loaded when the task began, as saved once it ended."""
        return self.task.state

    @property
    def task_index(self) -> int | None:
        return self.task.index

    @property
    def accuracy(self) -> dict[str, float] | None:
        """This task's row in each task's primary metric, once the task has ended and been scored."""
        return self.task.accuracy

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.task.score_pending_rows(kwargs["model"])

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.task.after_step(state.global_step, state.max_steps)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model: torch.nn.Module = kwargs["model"]
        self.task.end(
            model,
            kwargs.get("processing_class"),
            extra=training_summary(state.global_step, state.log_history),
            # The report goes where the trainer logs (TensorBoard, W&B), with the task index as the step.
            trackers=requested(getattr(args, "report_to", None)),
            main_process=state.is_world_process_zero,
        )


class MergeForgetCallback(TaskCallback):
    """Train one task of a continual sequence with SLAO ([Qiao & Mahdavi, 2026](https://arxiv.org/abs/2512.23017)).

    Each ``trainer.train()`` with this callback is one task of the sequence kept in ``state_dir``.
    Before the first step the LoRA is set to the task's start (from task 2 on, as ``config`` says:
    the paper's orthogonal init by default); after the last step the task is merged into the
    running LoRA, the state is saved atomically, and the merged LoRA is loaded into the model, so
    evaluation and saving after ``train()`` see the adapter users deploy.

    Args:
        state_dir (`str` or `os.PathLike`):
            Directory of the continual state, shared by all tasks of the sequence; created by the
            first task. Evaluation rows and the report go beside it (``state_dir/../evaluations``).
        task_name (`str`):
            Name of the task this trainer trains. A name already finished in the state is refused.
        config ([`MergeForgetConfig`], *optional*):
            Strategy and ablations (init, merge schedule); defaults to the paper's SLAO. Must match
            the state's.
        export_dir (`str` or `os.PathLike`, *optional*):
            Also write the merged LoRA there as a standard PEFT adapter after the task.
        adapter_name (`str`, defaults to `"default"`):
            The PEFT adapter to carry.
        eval_sets (`list[EvalSet]`, *optional*):
            Held-out sets of every task, scored after the task (and the base model before the
            first) with the trainer's ``processing_class``.
        probes (`list`, *optional*):
            Evaluation-only sets never trained on ([`EvalSet`] or [`LMEvalProbe`]).
        eval_schedule (`str`, *optional*):
            `"needed"` or `"all"` (see `mergeforget_plugin.evaluation.schedule`). Default: `"needed"`
            when `sequence` is given, else `"all"`.
        sequence (`list[str]`, *optional*):
            Every task name of the sequence in training order, which `"needed"` reads.
        replay ([`ReplayConfig`], *optional*):
            Keep a constant-size buffer of earlier tasks' training rows in the state and mix them
            into this task's: give the task's own rows as `train_dataset` and train on the
            callback's `train_dataset`, which adds the replayed ones. The buffer holds training text.
        train_dataset (`datasets.Dataset` or `list[dict]`, *optional*):
            This task's own training rows; needed with `replay`.
        guard ([`ForgettingGuard`], *optional*):
            Refuse the task, keeping the previous state, adapter and report, when its merge makes an
            earlier task (of `eval_sets`) drop more than `guard.max_forgetting`.
        settings ([`ContinualConfig`], *optional*):
            What the sequence is configured by: the strategy, the evaluation schedule, replay, the guard,
            the export and the adapter name in one object. `config`, `export_dir`, `adapter_name`,
            `eval_schedule`, `replay` and `guard` are its fields given one by one (deprecated: a
            `DeprecationWarning` says so); give either, not both.

    Example:

    ```python
    >>> from trl import SFTConfig, SFTTrainer
    >>> from mergeforget_plugin import MergeForgetCallback
    >>> trainer = SFTTrainer(
    ...     model=peft_model,
    ...     args=SFTConfig(output_dir="out/task2"),
    ...     train_dataset=task2_dataset,
    ...     callbacks=[MergeForgetCallback("out/state", task_name="task2")],
    ... )
    >>> trainer.train()  # starts from task 2's init, ends with the merged adapter loaded
    ```
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        task_name: str,
        config: MergeForgetConfig | None = None,
        export_dir: str | os.PathLike[str] | None = None,
        adapter_name: str = "default",
        eval_sets: Sequence[EvalSet] = (),
        probes: Sequence[Any] = (),
        eval_schedule: str | None = None,
        sequence: Sequence[str] | None = None,
        replay: ReplayConfig | None = None,
        train_dataset: Any = None,
        guard: ForgettingGuard | None = None,
        *,
        settings: ContinualConfig | None = None,
    ) -> None:
        layout = RunLayout.of_state_dir(state_dir)
        settings = merged_settings(
            settings,
            "MergeForgetCallback",
            {"adapter_name": "default"},
            config=config,
            export_dir=export_dir,
            adapter_name=adapter_name,
            eval_schedule=eval_schedule,
            replay=replay,
            guard=guard,
        )
        if settings.replay is not None and train_dataset is None:
            raise ReplayError(
                f"Task {task_name!r}: replay draws from the task's own rows: pass them as train_dataset, and train "
                "on the callback's train_dataset (which adds the replayed rows)."
            )
        own = dataset_rows(train_dataset, f"Task {task_name!r}, train_dataset") if settings.replay is not None else None
        super().__init__(
            ContinualTask(
                layout,
                task_name,
                settings=settings,
                eval_sets=eval_sets,
                probes=probes,
                sequence=sequence,
                train_rows=own,
            )
        )
        #: What the trainer trains on: ``train_dataset`` plus the rows replayed from earlier tasks.
        self.train_dataset = train_dataset
        self.replayed = 0
        if settings.replay is not None:
            state = load_state(layout.state)
            if state is not None:
                plan = TaskPlan(task_name, f"Task {task_name!r}, train_dataset", fields=sorted(own[0]) if own else [])
                refuse(
                    state_problems(settings, state.finished_tasks, state, str(layout.state))
                    + replay_problems(settings, [plan], state, str(layout.state))
                )
            rows = replay_for(state, task_name, len(own), settings.replay)
            self.train_dataset, self.replayed = with_rows(train_dataset, rows), len(rows)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A trainer resumed from a mid-task checkpoint holds weights that already started from
        # this task's init; setting the init again would throw that training away.
        self.task.begin(
            kwargs["model"],
            kwargs.get("processing_class"),
            apply_init=state.global_step == 0,
            main_process=state.is_world_process_zero,
        )
        super().on_train_begin(args, state, control, **kwargs)


def dataset_rows(dataset: Any, where: str) -> list[dict[str, Any]]:
    """The rows of a task's training set as plain dicts: what replay draws from."""
    if isinstance(dataset, list | tuple):
        return [dict(row) for row in dataset]
    if hasattr(dataset, "to_list"):  # datasets.Dataset; an IterableDataset has no rows to draw in advance
        return dataset.to_list()
    raise ReplayError(
        f"{where}: replay draws from the task's training rows before it trains, and a {type(dataset).__name__} "
        "cannot be read that way; give a datasets.Dataset or a list of rows."
    )


def training_plan(name: str, dataset: Any, where: str, **known: Any) -> TaskPlan:
    """What the pre-flight can know of a task's training rows before it trains: every row of a list,
    a ``datasets.Dataset``'s columns, row count and first empty value (from its Arrow table, without
    reading the rows into Python); nothing of an ``IterableDataset``, which is read only as it trains."""
    if isinstance(dataset, list | tuple):
        return TaskPlan.of_rows(name, where, dataset, **known)
    table = getattr(dataset, "data", None)
    if hasattr(dataset, "column_names") and hasattr(table, "column"):  # datasets.Dataset
        import pyarrow.compute as pc

        nulls = [
            pc.index(pc.is_null(table.column(column)), True).as_py()
            for column in dataset.column_names
            if table.column(column).null_count
        ]
        first_empty = None
        if nulls:  # the earliest row with an empty field, read once
            row = dataset[min(nulls)]
            first_empty = (min(nulls), sorted(c for c in dataset.column_names if row[c] is None))
        return TaskPlan(
            name, where, fields=sorted(dataset.column_names), row_count=len(dataset), first_empty=first_empty, **known
        )
    return TaskPlan(name, where, **known)


def with_rows(dataset: Any, rows: list[dict[str, Any]]) -> Any:
    """``dataset`` with ``rows`` (the same fields) appended; the trainer's sampler mixes them."""
    if not rows:
        return dataset
    if isinstance(dataset, list | tuple):
        return [*dataset, *rows]
    from datasets import Dataset, concatenate_datasets

    return concatenate_datasets([dataset, Dataset.from_list(rows, features=dataset.features)])
