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
from ...core.replay import ReplayConfig
from ...core.slao import MergeForgetConfig
from ...core.state import ContinualState, check_writable, load_state
from ...driver import TaskTrainer, drive_sequence
from ...engine import is_main_process
from ...errors import EvaluationError, StateError
from ...evaluation.guard import ForgettingGuard
from ...evaluation.metrics import SCORABLE
from ...evaluation.schedule import DEFAULT_SCHEDULE
from ...evaluation.scoring import DEFAULT_MAX_NEW_TOKENS, EvalSet, eval_set_from_rows
from ...evaluation.shapes import require_chat_template, row_shape, rows_of
from ...preflight import TaskPlan, refuse, sequence_problems
from ...settings import ContinualConfig, merged_settings
from ..callback import MergeForgetCallback, training_plan


@dataclass
class Task:
    """One task of a sequence.

    Args:
        name: Unique name; used for the task's output folder and in the continual state.
        train_dataset: Rows in a shape `SFTTrainer` trains (`prompt`/`completion`, conversational
            `messages` or `prompt`/`completion` turns, or `text`), as a `datasets.Dataset` or
            `IterableDataset`, a list of dicts, a pandas `DataFrame`, or the path of a JSON, JSON
            Lines, Parquet or CSV file. A `DatasetDict` is refused: pass one of its splits.
        eval_dataset: Held-out rows in the same shape and forms, scored after every task for the
            report (see `mergeforget_plugin.evaluation.shapes` for what is the prompt and what the
            answer of each shape).
        overrides: `SFTConfig` fields for this task only, e.g. `{"learning_rate": 1e-4}`.
        metric: The primary metric of `eval_dataset`, which AA, BWT, FWT and the heatmap use:
            `"choice"` ranks the candidate answers by log-likelihood, `"loss"` is the answer's mean
            token negative log-likelihood, `"rouge_l"` and `"exact_match"` score greedy
            generations. Default: `"loss"` for `text` rows; else `"choice"` when the answers form a
            small label set, else `"loss"` (see `mergeforget_plugin.evaluation.scoring`).
        metrics: More metrics to score (each gets its own matrix in the report).
        options: Candidate answers for `"choice"`; default: every answer in the task's data.
        max_new_tokens: Longest generation for `"rouge_l"` and `"exact_match"`.
        stop: Strings that end a generated answer once it has begun. Default: a newline for
            `prompt`/`completion` rows; none for conversations, which end at the chat template's
            end-of-turn token.
    """

    name: str
    train_dataset: Any
    eval_dataset: Any | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    options: list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: list[str] | None = None

    def __post_init__(self) -> None:
        where = f"Task {self.name!r}"
        self.train_dataset = rows_of(self.train_dataset, f"{where}, train_dataset")
        if self.eval_dataset is not None:
            self.eval_dataset = rows_of(self.eval_dataset, f"{where}, eval_dataset")
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

    def plan(self, text_field: str = "text") -> TaskPlan:
        """What the pre-flight checks of the task's training rows before anything trains."""
        return training_plan(
            self.name,
            self.train_dataset,
            f"Task {self.name!r}, train_dataset",
            held_out=self.eval_dataset is not None,
            formats=((text_field,), ("messages",), ("prompt", "completion"), ("input_ids",)),
        )

    @property
    def conversational(self) -> bool:
        """Whether the task's rows are conversations (its tokenizer then needs a chat template)."""
        return any(_first_shape(rows) == "conversational" for rows in (self.train_dataset, self.eval_dataset))

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

    `scores[after][task][metric]` is every metric `task` was scored with after training `after`
    (`"loss"` comes with `"perplexity"`); `accuracy[after][task]` is each task's primary metric
    alone, whatever its unit (`primary_metric[task]` names it); `eval_loss[after][task]` is
    `trainer.evaluate()`'s loss. Rows only for the tasks trained in this call; the report in
    `report_files` covers every task of the sequence, resumed or not. In a distributed run the
    scores are made, and `scores`, `accuracy` and `report_files` filled, on the first process only.
    """

    state: ContinualState
    adapter_dir: Path
    state_dir: Path
    eval_loss: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    report_files: list[Path]
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    primary_metric: dict[str, str] = field(default_factory=dict)


def train_sequence(
    model: torch.nn.Module,
    tasks: list[Task],
    *,
    args: Any,
    output_dir: str | os.PathLike[str] | None = None,
    processing_class: Any = None,
    peft_config: Any = None,
    settings: ContinualConfig | None = None,
    callbacks: list[Any] | None = None,
    loss_matrix: bool = True,
    probes: list[Any] | None = None,
    config: MergeForgetConfig | None = None,
    eval_schedule: str = DEFAULT_SCHEDULE,
    replay: ReplayConfig | None = None,
    guard: ForgettingGuard | None = None,
) -> SequenceResult:
    """Train ``tasks`` in order with ``SFTTrainer`` and SLAO; return a [`SequenceResult`].

    Everything is checked before task 1 trains (settings, training rows, the state, the model
    against it). Resumable: tasks finished in ``OUTPUT_DIR/state`` are skipped. After the last
    task, or when the guard refuses one, ``OUTPUT_DIR/adapter`` (one standard PEFT adapter) and
    the report hold the tasks the state took.

    Args:
        model: A `PeftModel`, or a base model together with `peft_config` (wrapped once here).
        tasks: The tasks, in training order.
        args: A `trl.SFTConfig` used for every task (its `output_dir` is replaced per task).
        output_dir: Root folder, laid out as [`RunLayout`] says (`state/`, `adapter/`, the report, ...,
            as a recipe run through Axolotl writes them). Defaults to `args.output_dir`.
        processing_class: The tokenizer, passed to `SFTTrainer`.
        peft_config: A `peft.LoraConfig`, when `model` is not a `PeftModel` yet.
        settings: What the sequence is configured by ([`ContinualConfig`]): the strategy (default:
            the paper's SLAO), the evaluation schedule (default `"needed"`), replay, the forgetting
            guard, an export folder and the adapter name.
        callbacks: Extra `TrainerCallback`s for every task; they run after the SLAO callback.
        loss_matrix: After every task, also run `trainer.evaluate()` on every `eval_dataset` into
            `SequenceResult.eval_loss` (one more pass; the report's `"loss"` metric does not need it).
        probes: Evaluation-only sets never trained on ([`EvalSet`] or [`LMEvalProbe`]), scored with
            the tasks; the report shows their change from the base model.
        config, eval_schedule, replay, guard: Deprecated: the fields of `settings` one by one
            (`config` is `settings.strategy`); give either, not both.
    """
    keywords = {"config": config, "eval_schedule": eval_schedule, "replay": replay, "guard": guard}
    settings = merged_settings(settings, "train_sequence", {"eval_schedule": DEFAULT_SCHEDULE}, **keywords)
    layout = RunLayout(output_dir if output_dir is not None else args.output_dir)
    state = load_state(layout.state)
    plans = [task.plan(getattr(args, "dataset_text_field", None) or "text") for task in tasks]
    refuse(sequence_problems(settings, plans, state, str(layout.state)))
    eval_sets, probes = _checked_evaluation(tasks, probes)
    processing_class = _scoring_tokenizer(model, processing_class, tasks, bool(eval_sets or probes))
    check_writable(layout.state)
    model = _peft_model(model, peft_config, args.seed)
    _check_model(model, state, len(tasks), settings.adapter_name, str(layout.state))
    extra = list(callbacks or [])
    trainer = _SFTTasks(model, tasks, args, layout, settings, processing_class, eval_sets, probes, extra, loss_matrix)
    end = drive_sequence(layout, [task.name for task in tasks], trainer, main_process=is_main_process())
    primary = {eval_set.task: eval_set.metric for eval_set in eval_sets}
    files = (end.report_files, trainer.scores, primary)
    return SequenceResult(end.state, layout.adapter, layout.state, trainer.eval_loss, trainer.accuracy, *files)


@dataclass
class _SFTTasks(TaskTrainer):
    """The TRL path's way to train a task: an in-process ``SFTTrainer`` with the SLAO callback."""

    model: Any
    tasks: list[Task]
    args: Any
    layout: RunLayout
    settings: ContinualConfig
    processing_class: Any
    eval_sets: list[EvalSet]
    probes: list[Any]
    callbacks: list[Any]
    loss_matrix: bool
    eval_loss: dict[str, dict[str, float]] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # TRL's trainer modules are imported before the driver freezes the objects alive so far, so
        # that each task's full garbage collection (Trainer.train) does not walk them again (driver.py).
        import trl.trainer.sft_trainer  # noqa: F401

    @property
    def eval_datasets(self) -> dict[str, Any]:
        return {task.name: task.eval_dataset for task in self.tasks if task.eval_dataset is not None}

    def train(self, index: int, name: str) -> None:
        from trl import SFTTrainer

        task = self.tasks[index - 1]
        callback = MergeForgetCallback(
            self.layout.state,
            task_name=task.name,
            settings=self.settings,
            eval_sets=self.eval_sets,
            probes=self.probes,
            sequence=[t.name for t in self.tasks],
            train_dataset=task.train_dataset,
        )
        task_args = dataclasses.replace(
            self.args, output_dir=str(self.layout.task_dir(index, task.name)), **task.overrides
        )
        trainer = SFTTrainer(
            model=self.model,
            args=task_args,
            train_dataset=callback.train_dataset,
            eval_dataset=self.eval_datasets or None,
            processing_class=self.processing_class,
            callbacks=[callback, *self.callbacks],
        )
        trainer.train()
        if self.eval_datasets and self.loss_matrix:
            self.eval_loss[task.name] = _loss_row(trainer, self.eval_datasets, task.name)
        if callback.accuracy is not None:
            self.accuracy[task.name] = callback.accuracy
            self.scores[task.name] = {name: dict(values) for name, values in callback.task.scores["scores"].items()}


def _first_shape(rows: Any) -> str | None:
    """The shape of the first row of a ``Dataset`` (``None`` for no rows or an ``IterableDataset``)."""
    if rows is None or not hasattr(rows, "__len__") or not len(rows):
        return None
    return row_shape(rows[0])


def _checked_evaluation(tasks: list[Task], probes: list[Any] | None) -> tuple[list[EvalSet], list[Any]]:
    """Every held-out set read and checked, and every lm-evaluation-harness probe found, before anything trains."""
    eval_sets = [eval_set for eval_set in (task.eval_set() for task in tasks) if eval_set is not None]
    probes = list(probes or [])
    for probe in probes:
        if hasattr(probe, "check_available"):
            probe.check_available()
    return eval_sets, probes


def _peft_model(model: Any, peft_config: Any, seed: int) -> Any:
    """``model`` as a PeftModel (wrapped once with ``peft_config``)."""
    from peft import PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        if peft_config is None:
            raise ValueError("model is not a PeftModel: pass peft_config (a peft.LoraConfig) to wrap it.")
        from transformers import set_seed

        set_seed(seed)  # the LoRA init draws from the global RNG: same seed, same task-1 start
        model = get_peft_model(model, peft_config)
    return model


def _scoring_tokenizer(model: Any, given: Any, tasks: list[Task], scores: bool) -> Any:
    """The tokenizer when rows are scored or rendered as conversations (checked to have a chat
    template for every conversational task: SFTTrainer renders them with it, and so does the scorer)."""
    if not (scores or any(task.conversational for task in tasks)):
        return given
    tokenizer = _tokenizer(model, given)
    for task in tasks:
        if task.conversational:
            require_chat_template(tokenizer, task.name)
    return tokenizer


def _tokenizer(model: Any, given: Any) -> Any:
    """What scores the held-out rows: the tokenizer given, else the model's own."""
    if given is not None:
        return given
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.config.name_or_path)


def _check_model(model: Any, state: ContinualState | None, tasks: int, adapter_name: str, where: str) -> None:
    """The model must be the one the state was trained on, even with nothing left to train; then
    it holds the deployed LoRA."""
    if state is None:
        return
    from ...peft_bridge import describe_model, write_lora

    state.check_compatible(*describe_model(model, adapter_name), where)
    if len(state.finished_tasks) == tasks:
        write_lora(model, state.merged, adapter_name)


def _loss_row(trainer: Any, eval_datasets: dict[str, Any], task: str) -> dict[str, float]:
    """``trainer.evaluate()`` on every task's held-out rows after ``task``: its losses, checked finite."""
    metrics = trainer.evaluate()
    row = {name: float(metrics[f"eval_{name}_loss"]) for name in eval_datasets}
    if not all(math.isfinite(value) for value in row.values()):
        raise StateError(f"Evaluation after task {task!r} gave a non-finite loss: {row}.")
    return row
