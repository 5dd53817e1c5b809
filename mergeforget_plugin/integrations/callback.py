"""A transformers ``TrainerCallback`` that makes one ``trainer.train()`` call one task of an SLAO sequence.

It imports transformers only, so any ``Trainer`` can carry it: TRL's ``SFTTrainer``, or the
trainer Axolotl builds. Every hook forwards to :class:`~mergeforget_plugin.engine.ContinualTask`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..core.layout import RunLayout
from ..core.slao import MergeForgetConfig
from ..core.state import ContinualState
from ..engine import ContinualTask, training_summary
from ..evaluation.scoring import EvalSet
from ..evaluation.trackers import requested


class MergeForgetCallback(TrainerCallback):
    """Train one task of a continual sequence with SLAO ([Qiao & Mahdavi, 2026](https://arxiv.org/abs/2512.23017)).

    Each ``trainer.train()`` with this callback is one task. The callback reads the continual state
    in ``state_dir``; for task ``i >= 2`` it sets the LoRA to the orthogonal initialization

    A_ft,i^(0) = Q_i^T  with  Q_i R_i = QR(A_ft,i-1^T),    B_ft,i^(0) = B_ft,i-1

    before the first step, and after the last step merges the task into the running LoRA

    A_merge,i = A_ft,i,    B_merge,i = B_merge,i-1 + (B_ft,i - B_merge,i-1) / sqrt(i),

    saves the new state atomically, and loads the merged LoRA into the model, so that evaluation
    after ``train()`` sees the adapter users deploy.

    Args:
        state_dir (`str` or `os.PathLike`):
            Directory of the continual state, shared by all tasks of the sequence. Created by the
            first task. Evaluation rows and the report go beside it (``state_dir/../evaluations``).
        task_name (`str`):
            Name of the task this trainer trains. A name already finished in the state is refused.
        config ([`MergeForgetConfig`], *optional*):
            Strategy and ablation switches; defaults to the paper's SLAO. Must match the state's.
        export_dir (`str` or `os.PathLike`, *optional*):
            If set, the merged LoRA is also written there as a standard PEFT adapter after the task.
        adapter_name (`str`, defaults to `"default"`):
            The PEFT adapter to carry.
        eval_sets (`list[EvalSet]`, *optional*):
            Held-out sets of every task; when given, the merged LoRA is scored on them after the
            task (and the base model before the first), with the trainer's ``processing_class``,
            with each set's metrics (``choice``, ``loss``, ``rouge_l``, ``exact_match``).
        probes (`list`, *optional*):
            Evaluation-only sets never trained on ([`EvalSet`] or [`LMEvalProbe`]), scored in the
            same rows: the report shows their change from the base model ("general ability kept").
        eval_schedule (`str`, *optional*):
            `"needed"` scores what AA, BWT, FWT and the final row read (after task t: tasks 1..t+1;
            after the last task: every task and probe); `"all"` scores every set after every task.
            Default: `"needed"` when `sequence` is given, else `"all"`.
        sequence (`list[str]`, *optional*):
            Every task name of the sequence in training order, which `"needed"` reads.

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
    >>> trainer.train()  # starts from the orthogonal init, ends with the merged adapter loaded
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
    ) -> None:
        self.task = ContinualTask(
            RunLayout.of_state_dir(state_dir),
            task_name,
            config,
            eval_sets=eval_sets,
            export_dir=export_dir,
            adapter_name=adapter_name,
            probes=probes,
            eval_schedule=eval_schedule,
            sequence=sequence,
        )

    @property
    def state(self) -> ContinualState | None:
        """The continual state: as loaded when the task began, as saved once it ended."""
        return self.task.state

    @property
    def task_index(self) -> int | None:
        return self.task.index

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The report goes where the trainer logs (TensorBoard, W&B), with the task index as the step.
        self.task.trackers = requested(getattr(args, "report_to", None))
        # A trainer resumed from a mid-task checkpoint holds weights that already started from
        # this task's init; setting the init again would throw that training away.
        self.task.begin(kwargs["model"], kwargs.get("processing_class"), apply_init=state.global_step == 0)
        self.task.score_pending_rows(kwargs["model"])

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.task.after_step(state.global_step, state.max_steps)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model: torch.nn.Module = kwargs["model"]
        summary = training_summary(state.global_step, state.log_history)
        self.task.end(model, kwargs.get("processing_class"), extra=summary)
