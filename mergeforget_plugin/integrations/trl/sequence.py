"""Run a list of tasks through TRL's ``SFTTrainer`` one after another, carrying one SLAO LoRA.

A thin loop over :class:`~mergeforget_plugin.integrations.callback.MergeForgetCallback`: the
pre-flight, the evaluation rows, the merge and the output layout are the engine's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.layout import RunLayout
from ...core.replay import ReplayConfig, buffer_fields, check_fields, plain_rows, resumed_advice
from ...core.slao import MergeForgetConfig
from ...core.state import ContinualState
from ...engine import check_sequence, finish_sequence
from ...errors import EvaluationError, ForgettingGuardError, StateError
from ...evaluation.guard import ForgettingGuard
from ...evaluation.metrics import SCORABLE
from ...evaluation.schedule import DEFAULT_SCHEDULE, check_schedule
from ...evaluation.scoring import DEFAULT_MAX_NEW_TOKENS, DEFAULT_STOP, EvalSet, eval_set_from_rows
from ..callback import MergeForgetCallback, dataset_rows


@dataclass
class Task:
    """One task of a sequence.

    Args:
        name: Unique name; used for the task's output folder and in the continual state.
        train_dataset: A dataset `SFTTrainer` accepts (e.g. `prompt`/`completion` or `text` rows).
        eval_dataset: Held-out rows, evaluated after every task to build the loss matrix.
        overrides: `SFTConfig` fields for this task only, e.g. `{"learning_rate": 1e-4}`.
        metric: The primary metric of `eval_dataset` rows (`prompt`/`completion`), which AA, BWT,
            FWT and the heatmap use: `"choice"` ranks the candidate answers by log-likelihood,
            `"loss"` is the answer's mean token negative log-likelihood, `"rouge_l"` and
            `"exact_match"` score greedy generations. Default: `"choice"` when the answers form a
            small label set, else `"loss"` (see `mergeforget_plugin.evaluation.scoring`).
        metrics: More metrics to score (each gets its own matrix in the report).
        options: Candidate answers for `"choice"`; default: every completion in the task's data.
        max_new_tokens: Longest generation for `"rouge_l"` and `"exact_match"`.
        stop: Strings that end a generated answer once it has begun.
    """

    name: str
    train_dataset: Any
    eval_dataset: Any | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    options: list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))

    def __post_init__(self) -> None:
        where = f"Task {self.name!r}"
        for name in [*([self.metric] if self.metric is not None else []), *self.metrics]:
            if name not in SCORABLE:
                raise EvaluationError(f"{where}, metric: unknown metric {name!r}; choose from {', '.join(SCORABLE)}.")
        declared = {self.metric, *self.metrics}
        if self.eval_dataset is None and declared - {None}:
            raise EvaluationError(
                f"{where}, metrics: {', '.join(sorted(declared - {None}))} need held-out rows with references: "
                "give eval_dataset, or leave the metrics out."
            )
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EvaluationError(
                f"{where}, max_new_tokens: must be a positive whole number, got {self.max_new_tokens!r}."
            )

    def eval_set(self) -> EvalSet | None:
        """The task's held-out rows as an :class:`EvalSet` (``None`` without ``eval_dataset``)."""
        if self.eval_dataset is None:
            return None
        return eval_set_from_rows(
            self.name,
            self.eval_dataset,
            metric=self.metric,
            metrics=self.metrics,
            options=self.options,
            option_rows=self.train_dataset,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
        )


@dataclass
class SequenceResult:
    """What `train_sequence` leaves behind.

    `eval_loss[after][task]` and `accuracy[after][task]` are the evaluation loss and accuracy of
    `task` after training `after` (rows only for the tasks trained in this call; the report in
    `report_files` covers every task of the sequence, resumed or not). In a distributed run the
    accuracies are scored, and `accuracy` and `report_files` filled, on the first process only.
    """

    state: ContinualState
    adapter_dir: Path
    state_dir: Path
    eval_loss: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    report_files: list[Path]


def train_sequence(
    model: torch.nn.Module,
    tasks: list[Task],
    *,
    args: Any,
    output_dir: str | os.PathLike[str] | None = None,
    processing_class: Any = None,
    peft_config: Any = None,
    config: MergeForgetConfig | None = None,
    callbacks: list[Any] | None = None,
    loss_matrix: bool = True,
    probes: list[Any] | None = None,
    eval_schedule: str = DEFAULT_SCHEDULE,
    replay: ReplayConfig | None = None,
    guard: ForgettingGuard | None = None,
) -> SequenceResult:
    """Train ``tasks`` in order with ``SFTTrainer`` and SLAO; export one standard PEFT adapter.

    Resumable: tasks already finished in ``OUTPUT_DIR/state`` are skipped, so calling it again
    after a crash continues with the first unfinished task.

    Args:
        model: A `PeftModel`, or a base model together with `peft_config` (wrapped once here).
        tasks: The tasks, in training order.
        args: A `trl.SFTConfig` used for every task (its `output_dir` is replaced per task).
        output_dir: Root folder, laid out as [`RunLayout`] says: `state/`, `evaluations/`, `adapter/`
            (the merged PEFT adapter), `tasks/task-NN-NAME/` (trainer outputs) and the report, as a
            recipe run through Axolotl writes them. Defaults to `args.output_dir`.
        processing_class: The tokenizer, passed to `SFTTrainer`.
        peft_config: A `peft.LoraConfig`, when `model` is not a `PeftModel` yet.
        config: Strategy and ablations; defaults to the paper's SLAO.
        callbacks: Extra `TrainerCallback`s for every task; they run after the SLAO callback.
        loss_matrix: After every task, also run `trainer.evaluate()` on every task's `eval_dataset` and
            return the losses as `SequenceResult.eval_loss`. Costs one more forward pass over every
            evaluation set per task; the report does not need it (a task's `"loss"` metric puts
            the held-out loss in the report, the heatmaps and the trackers).
        probes: Evaluation-only sets never trained on ([`EvalSet`], e.g. from `eval_set_from_rows`,
            or [`LMEvalProbe`]), scored with the tasks; the report shows their change from the base.
        eval_schedule: `"needed"` (default) or `"all"`; see `mergeforget_plugin.evaluation.schedule`.
        replay: Keep a constant-size buffer of earlier tasks' training rows in the state and mix
            them into every later task's training set ([`ReplayConfig`]); every task needs the
            same fields. Off by default: the buffer holds training text.
        guard: Stop, keeping the previous task's state, adapter and report, when a task's merge
            makes an earlier task drop more than `guard.max_forgetting` ([`ForgettingGuard`];
            `accept_regression=True` takes it anyway). Resuming retries the task.

    Returns:
        A [`SequenceResult`] with the final state, the adapter folder and the loss matrix.
    """
    from trl import SFTTrainer

    config = config if config is not None else MergeForgetConfig()
    layout = RunLayout(output_dir if output_dir is not None else args.output_dir)
    state = check_sequence(layout, [task.name for task in tasks], config, replay=replay)
    check_schedule(eval_schedule)
    eval_sets, probes = _checked_evaluation(tasks, probes)
    if guard is not None and not eval_sets:
        raise ForgettingGuardError(f"{guard.where} measures forgetting on held-out rows: give the tasks eval_dataset.")
    if replay is not None:
        _check_replay_fields(tasks, state, str(layout.state))
    model = _peft_model(model, peft_config, args.seed, state, len(tasks))
    if (eval_sets or probes) and processing_class is None:
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(model.config.name_or_path)
    eval_datasets = {task.name: task.eval_dataset for task in tasks if task.eval_dataset is not None}
    eval_loss: dict[str, dict[str, float]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    for index, task in enumerate(tasks, start=1):
        if state is not None and task.name in state.finished_tasks:
            continue
        callback = MergeForgetCallback(
            layout.state,
            task_name=task.name,
            config=config,
            eval_sets=eval_sets,
            probes=probes,
            eval_schedule=eval_schedule,
            sequence=[t.name for t in tasks],
            replay=replay,
            train_dataset=task.train_dataset,
            guard=guard,
        )
        task_args = dataclasses.replace(args, output_dir=str(layout.task_dir(index, task.name)), **task.overrides)
        trainer = SFTTrainer(
            model=model,
            args=task_args,
            train_dataset=callback.train_dataset,
            eval_dataset=eval_datasets or None,
            processing_class=processing_class,
            callbacks=[callback, *(callbacks or [])],
        )
        trainer.train()
        state = callback.state
        if eval_datasets and loss_matrix:
            eval_loss[task.name] = _loss_row(trainer, eval_datasets, task.name)
        if callback.accuracy is not None:
            accuracy[task.name] = callback.accuracy

    assert state is not None  # check_sequence refuses an empty task list
    return SequenceResult(
        state=state,
        adapter_dir=layout.adapter,
        state_dir=layout.state,
        eval_loss=eval_loss,
        accuracy=accuracy,
        report_files=finish_sequence(layout, state),
    )


def _checked_evaluation(tasks: list[Task], probes: list[Any] | None) -> tuple[list[EvalSet], list[Any]]:
    """Every held-out set read and checked, and every lm-evaluation-harness probe found, before anything trains."""
    eval_sets = [eval_set for eval_set in (task.eval_set() for task in tasks) if eval_set is not None]
    probes = list(probes or [])
    for probe in probes:
        if hasattr(probe, "check_available"):
            probe.check_available()
    return eval_sets, probes


def _check_replay_fields(tasks: list[Task], state: ContinualState | None, state_dir: str) -> None:
    """Before anything trains: every task's rows can be replayed into every later one (one row format)."""
    fields = buffer_fields(state.replay_buffer) if state else {}
    # Rows kept in a state cannot be dropped by turning replay off (the state keeps its settings).
    advice = {"what_to_do": resumed_advice(state_dir)} if fields else {}
    for task in tasks:
        where, data = f"Task {task.name!r}, train_dataset", task.train_dataset
        if not isinstance(data, list | tuple) and not hasattr(data, "to_list"):
            dataset_rows(data, where)  # refuses what cannot be read row by row in advance
        # The first row stands for the rest (a Dataset has one type per column): its fields, and
        # whether the state can keep it as JSON; the whole set is read when the task begins.
        first = plain_rows([data[0]], where) if len(data) else []
        own = sorted(first[0]) if first else []
        check_fields(fields, task.name, own, f"Task {task.name!r}, train_dataset (replay)", **advice)
        fields.setdefault(task.name, own)


def _peft_model(model: Any, peft_config: Any, seed: int, state: ContinualState | None, tasks: int) -> Any:
    """``model`` as a PeftModel (wrapped once with ``peft_config``), holding the deployed LoRA when
    every task has finished already."""
    from peft import PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        if peft_config is None:
            raise ValueError("model is not a PeftModel: pass peft_config (a peft.LoraConfig) to wrap it.")
        from transformers import set_seed

        set_seed(seed)  # the LoRA init draws from the global RNG: same seed, same task-1 start
        model = get_peft_model(model, peft_config)
    if state is not None and len(state.finished_tasks) == tasks:
        from ...peft_bridge import write_lora

        write_lora(model, state.merged)  # nothing left to train: the model holds the deployed LoRA
    return model


def _loss_row(trainer: Any, eval_datasets: dict[str, Any], task: str) -> dict[str, float]:
    """``trainer.evaluate()`` on every task's held-out rows after ``task``: its losses, checked finite."""
    metrics = trainer.evaluate()
    row = {name: float(metrics[f"eval_{name}_loss"]) for name in eval_datasets}
    if not all(math.isfinite(value) for value in row.values()):
        raise StateError(f"Evaluation after task {task!r} gave a non-finite loss: {row}.")
    return row
