"""One task of a continual sequence, from pre-flight to saved state: the engine under every entry point.

:class:`ContinualTask` owns a task's life. ``begin`` runs the pre-flight (the state's own
compatibility checks), scores the evaluation rows that are missing, and sets the task's starting
LoRA. ``end`` merges the trained LoRA into the running one, scores the task's row, and saves the
state atomically. The TRL callback, ``train_sequence``, the Axolotl plugin and the recipe runner
are thin adapters that call these at the right moment of their framework. They never repeat the
orchestration.

The module has two halves. The plan is plain functions over the state and the stored rows, tested
without a model (``tests/test_engine_plan.py``): the state a task starts from (:func:`start_state`),
its starting LoRA (:func:`starting_lora`), the rows it finds missing (:func:`missing_rows`), what
each row scores (:func:`row_sets`), the state once it ends (:func:`finished_state`). The effects are
few and named: the LoRA read from and written into the model, scoring, and :func:`publish`, which
writes a finished task's files.

Order at the end of a task, and why:

1. merge (nothing written yet, so a kill here loses only this task);
2. load the merged LoRA into the model (every process), so evaluation and the framework's own
   save see the adapter users deploy;
3. score the task's row and write it, *before* the state: once the state says the task is
   finished, its row is already on disk. A kill in between re-runs the task, which overwrites
   the row;
4. save the state (the task counts as finished once its snapshot is renamed into place), export
   the adapter when asked, refresh the report.

Only the first process writes files (the trainer says which, where there is one). The others
wait at a barrier until the snapshot is complete. When the weights are sharded (FSDP2, DeepSpeed
ZeRO-3), every process also reads and writes the LoRA (each factor is gathered, then scattered
back) and runs the evaluation's forward passes.

This module imports no transformers, PEFT, TRL or Axolotl at module level (a layering test
checks it): what it needs from PEFT models comes from :mod:`mergeforget_plugin.peft_bridge`,
imported when a task begins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .core.atomic import write_atomic
from .core.faults import pause_point
from .core.layout import RunLayout, check_task_names
from .core.replay import ReplayConfig, add_task, describe, plain_rows, replayed_rows
from .core.slao import LoRAPair, MergeForgetConfig, merge_coefficient, merge_task, task_start_weights
from .core.state import BaseModelFingerprint, ContinualState, LoRASignature, check_writable, load_state, save_state
from .errors import ForgettingGuardError, ReplayError, StateError
from .evaluation.guard import ForgettingGuard, Regression, regressions
from .evaluation.model_card import export_adapter
from .evaluation.report import build_report, evaluation_record, load_evaluations, merge_records, save_row, write_report
from .evaluation.schedule import DEFAULT_SCHEDULE, row_plan
from .evaluation.scoring import EvalSet, score_all
from .preflight import refuse, state_problems, task_problems
from .settings import ContinualConfig, merged_settings

# The training step at which the `training-step` fault-injection point pauses (see faults.py).
_PAUSE_STEP = 2
# Seconds between two writes of a task's progress file (the recipe runner polls it twice a second).
_PROGRESS_INTERVAL = 0.5


def is_main_process(trainer_says: bool | None = None) -> bool:
    """Whether this process writes files: what the trainer says (``TrainerState.is_world_process_zero``)
    where there is a trainer, else the ``RANK`` a launcher set. An initialized process group's rank
    must agree: a hand-written loop's default ``TrainerState()`` says True on every process, and so
    did Axolotl 0.21's trainer under DeepSpeed ZeRO-3 on two CPU processes (seen in CI)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0 and trainer_says is not False
    if trainer_says is not None:
        return bool(trainer_says)
    return int(os.environ.get("RANK", "0")) == 0


def agreed(value: Any) -> Any:
    """The first process's ``value`` on every process (the one that scored decides for all)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


def wait_for_everyone() -> None:
    """A barrier across the processes of a distributed run; nothing in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_sequence(
    layout: RunLayout,
    task_names: Sequence[str],
    config: MergeForgetConfig,
    *,
    state: ContinualState | None = None,
    declared: tuple[LoRASignature, BaseModelFingerprint] | None = None,
    declared_in: str = "the config",
    replay: ReplayConfig | None = None,
) -> ContinualState | None:
    """Pre-flight of a whole sequence before anything trains; returns the state (``None`` if new).

    The finished tasks must be the first tasks of ``task_names``, in order, and the sequence must
    keep its strategy. ``state`` is the state already loaded from ``layout.state`` (read here when
    not given). ``declared`` is what a config says of the LoRA and the base model before any model
    is loaded (the recipe runner's view); it is checked with the state's own compatibility checks.
    Each task repeats the full check against the loaded model in :meth:`ContinualTask.begin`.
    """
    check_task_names(task_names)
    state = state if state is not None else load_state(layout.state)
    if state is None:
        return None
    where = str(layout.state)
    refuse(state_problems(ContinualConfig(strategy=config, replay=replay), task_names, state, where))
    if declared is not None:
        state.check_compatible(*declared, where, other_name=declared_in)
    return state


def training_summary(global_step: int, log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a trainer reports about a finished task, for the state's per-task history."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return {"global_step": global_step, "last_train_loss": losses[-1] if losses else None}


# -- The plan of a task: plain functions over the state and the stored rows, tested without a model.


def start_state(
    state: ContinualState | None,
    name: str,
    config: MergeForgetConfig,
    described: tuple[LoRASignature, BaseModelFingerprint],
    adapter_config: dict[str, Any],
    where: str,
    replay: ReplayConfig | None = None,
) -> ContinualState:
    """The state a task begins from: a new one for the first task, else the saved one once it has
    passed the compatibility checks against the loaded model and the run's config (replay included)."""
    signature, fingerprint = described
    if state is None:
        return ContinualState(
            signature=signature, base_model=fingerprint, config=config, adapter_config=adapter_config, replay=replay
        )
    state.check_compatible(signature, fingerprint, where)
    state.check_config(config, where)
    state.check_replay(replay, where)
    if name in state.finished_tasks:
        raise StateError(
            f"Task {name!r} already finished (task {state.finished_tasks.index(name) + 1} of {where}). "
            "Give the new task another name, or use a new state directory to start over."
        )
    return state


def begun_state(layout: RunLayout, name: str, settings: ContinualConfig, model: torch.nn.Module) -> ContinualState:
    """:func:`start_state` for ``model``, read from ``layout``'s state folder (which must be writable)."""
    from .peft_bridge import adapter_config_dict, describe_model

    check_writable(layout.state)
    return start_state(
        load_state(layout.state),
        name,
        settings.strategy,
        describe_model(model, settings.adapter_name),
        adapter_config_dict(model, settings.adapter_name),
        str(layout.state),
        settings.replay,
    )


def starting_lora(state: ContinualState, config: MergeForgetConfig) -> dict[str, LoRAPair] | None:
    """The LoRA the next task of ``state`` starts training from; ``None`` for task 1 (the LoRA's own init)."""
    index = state.next_task_index
    return task_start_weights(index, state.finetuned, state.merged, config) if index >= 2 else None


def replay_for(
    state: ContinualState | None, name: str, own_rows: int, replay: ReplayConfig | None
) -> list[dict[str, Any]]:
    """The earlier tasks' rows task ``name`` trains on beside its ``own_rows`` rows, from the state
    it starts from (``None`` before the first task, which replays nothing)."""
    if replay is None or state is None:
        return []
    return replayed_rows(state.replay_buffer, name, own_rows, replay)


def unscored(eval_sets: Sequence[Any], stored: Mapping[str, Mapping[str, float]]) -> list[Any]:
    """The sets of ``eval_sets`` a stored row lacks: a set counts as scored when every metric it
    declares is there (a metric added when a run resumes is not)."""
    return [s for s in eval_sets if not all(metric in stored.get(s.task, {}) for metric in s.metrics)]


@dataclass(frozen=True)
class MissingRows:
    """The rows a task scores before it trains: the base model's (``base``), when some task or probe
    lacks it, and the previous task's (``previous``, its index), when a kill lost it."""

    base: bool
    previous: int | None


def missing_rows(
    records: Mapping[int, Mapping[str, Any]], index: int, eval_sets: Sequence[Any], probes: Sequence[Any]
) -> MissingRows:
    """What :class:`MissingRows` task ``index`` finds, given the stored rows by ``task_index``."""
    base = records.get(0) or {}
    base_missing = bool(unscored(eval_sets, base.get("scores", {})) or unscored(probes, base.get("probes", {})))
    previous = index - 1
    return MissingRows(base_missing, previous if previous >= 1 and previous not in records else None)


def row_sets(
    schedule: str,
    sequence: Sequence[str],
    trained: Sequence[str],
    eval_sets: Sequence[Any],
    probes: Sequence[Any],
    stored: Mapping[str, Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """The task sets and probes the row after ``trained`` scores: what the schedule plans, less what
    ``stored`` (a row already on disk) holds."""
    tasks, probe_names = row_plan(schedule, sequence, trained, [p.task for p in probes])
    stored = stored or {}
    task_sets = [s for s in unscored(eval_sets, stored.get("scores", {})) if s.task in tasks]
    probe_sets = [p for p in unscored(probes, stored.get("probes", {})) if p.task in probe_names]
    return task_sets, probe_sets


def finished_state(
    previous: ContinualState,
    name: str,
    finetuned: dict[str, LoRAPair],
    extra: Mapping[str, Any] | None = None,
    *,
    seconds: float = 0.0,
    train_rows: Sequence[Mapping[str, Any]] | None = None,
) -> ContinualState:
    """The state once task ``name`` (the next of ``previous``) has trained to ``finetuned``: the
    merged LoRA, the finished task, the task's record in the history and, when the sequence
    replays, the buffer with ``train_rows`` (the task's own training rows) drawn into it."""
    index, config = previous.next_task_index, previous.config
    merged = merge_task(index, previous.merged or None, finetuned, config)
    buffer = previous.replay_buffer
    if previous.replay is not None:
        if train_rows is None:
            raise ReplayError(f"Task {name!r}: the sequence replays, so the task's training rows must be given.")
        buffer = add_task(previous.replay_buffer, name, train_rows, previous.replay)
    record = {
        "task": name,
        "task_index": index,
        "merge_coefficient": merge_coefficient(index, config),
        "seconds": round(seconds, 3),
        "finetuned": _norm_summary(finetuned),
        "merged": _norm_summary(merged),
        "adapter_bytes": sum(t.numel() * t.element_size() for pair in merged.values() for t in pair),
        **({"replay_buffer": describe(buffer)} if previous.replay is not None else {}),
        **(extra or {}),
    }
    return dataclasses.replace(
        previous,
        finished_tasks=[*previous.finished_tasks, name],
        merged=merged,
        finetuned=finetuned,
        history=[*previous.history, record],
        replay_buffer=buffer,
    )


def guard_verdict(
    guard: ForgettingGuard | None,
    records: Sequence[Mapping[str, Any]],
    row: Mapping[str, Any] | None,
    finished: Sequence[str],
    history: Sequence[Mapping[str, Any]] = (),
) -> list[Regression]:
    """The earlier tasks that dropped more than the guard allows in ``row``, the row just scored
    after ``finished[-1]`` (none without a guard). A drop the run accepted earlier (``history``:
    the state's, whose records name their ``accepted_regressions``) is the task's new level: only
    a further drop from there counts."""
    if guard is None or row is None:
        return []
    accepted = {
        regression["task"]: record["task_index"]
        for record in history
        for regression in record.get("accepted_regressions", ())
    }
    return regressions(records, row, finished, guard.max_forgetting, since=accepted)


def task_verdict(
    guard: ForgettingGuard | None,
    layout: RunLayout,
    row: Mapping[str, Any] | None,
    state: ContinualState,
    history: Sequence[Mapping[str, Any]],
) -> list[Regression]:
    """:func:`guard_verdict` of the row just scored after ``state``'s last task, against the rows on
    disk. The process that scored decides for all (no collective without a guard)."""
    if guard is None:
        return []
    records = load_evaluations(layout) if row is not None else []
    found = guard_verdict(guard, records, row, state.finished_tasks, history)
    return agreed(found if row is not None else [])


def _norm_summary(weights: dict[str, LoRAPair]) -> dict[str, float]:
    a_norms = torch.stack([pair.a.to(torch.float32).norm() for pair in weights.values()])
    b_norms = torch.stack([pair.b.to(torch.float32).norm() for pair in weights.values()])
    return {
        "a_norm_mean": float(a_norms.mean()),
        "b_norm_mean": float(b_norms.mean()),
        "b_norm_max": float(b_norms.max()),
    }


# -- The effects: the LoRA in the model, scoring, files.


@contextmanager
def _lora_held(model: torch.nn.Module, weights: dict[str, LoRAPair], adapter_name: str) -> Iterator[None]:
    """``weights`` in the model for the block, then the LoRA it held before."""
    from .peft_bridge import read_lora, write_lora

    kept = read_lora(model, adapter_name)
    write_lora(model, weights, adapter_name)
    try:
        yield
    finally:
        write_lora(model, kept, adapter_name)


def publish(
    layout: RunLayout,
    state: ContinualState,
    row: Mapping[str, Any] | None,
    *,
    export_dir: Path | None = None,
    trackers: Sequence[str] = (),
    evaluates: bool = True,
) -> None:
    """What the first process writes when a task ends, in this order: the task's row, the state (the
    task is finished once its snapshot is renamed into place), the export, the report, the trackers."""
    if row is not None:
        save_row(layout, row)
    save_state(state, layout.state)
    report = build_report(layout, state) if evaluates else None
    if export_dir is not None:
        export_adapter(state, export_dir, report=report)
    if report is not None:
        write_report(layout, state, report=report)
        if trackers:
            from .evaluation.trackers import log_task

            log_task(trackers, layout, state.next_task_index - 1, report)
    pause_point("task-saved", state.next_task_index - 1)


@dataclass
class TaskRows:
    """The evaluation rows one task scores: the base model's and a row a kill lost (before it
    trains), and its own (after its merge), each as :func:`row_sets` plans it.

    Which process scores is decided once, when the task begins (``main``: this process writes;
    ``collective``: the weights are sharded, so every process runs each forward pass).
    """

    layout: RunLayout
    name: str
    eval_sets: list[Any]
    probes: list[Any]
    schedule: str
    sequence: list[str]
    adapter_name: str = "default"
    tokenizer: Any = None
    main: bool = True
    collective: bool = False

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_sets or self.probes)

    @property
    def scores_here(self) -> bool:
        # Sharded weights need every process in each forward pass; otherwise the first scores alone.
        return self.evaluates and (self.collective or self.main)

    def score(self, model: torch.nn.Module, eval_sets: Sequence[Any]) -> dict[str, dict[str, float]]:
        if not eval_sets:
            return {}
        if self.tokenizer is None:
            raise StateError(
                f"Task {self.name!r} has evaluation sets but no tokenizer to score them with: pass the tokenizer "
                "(the trainer's processing_class) or leave the evaluation out."
            )
        return score_all(model, self.tokenizer, eval_sets)

    def row(
        self, model: torch.nn.Module, tasks_trained: int, trained: Sequence[str], *, stored: Any = None
    ) -> dict[str, Any] | None:
        """The row after ``trained`` as :func:`row_sets` plans it, as an evaluation record; ``None``
        where this process does not score."""
        if not self.scores_here:
            return None
        task_sets, probe_sets = row_sets(self.schedule, self.sequence, trained, self.eval_sets, self.probes, stored)
        return evaluation_record(
            tasks_trained,
            trained[-1] if trained else None,
            self.score(model, task_sets),
            {s.task: s.metric for s in task_sets},
            self.score(model, probe_sets),
            {p.task: p.metric for p in probe_sets},
        )

    def score_missing(self, model: torch.nn.Module, state: ContinualState, *, keep_lora: bool) -> None:
        """The rows :func:`missing_rows` finds before ``state``'s next task: the base model's, then
        the previous task's (with the merged LoRA in the model while it is scored; ``keep_lora``:
        what the model held comes back)."""
        if not self.scores_here:
            return
        records = {record["task_index"]: record for record in load_evaluations(self.layout)}
        if self.collective:
            wait_for_everyone()  # every process has read the rows before the first writes new ones
        missing = missing_rows(records, state.next_task_index, self.eval_sets, self.probes)
        if missing.base:
            disable_adapter = getattr(model, "disable_adapter", None)
            if disable_adapter is None:
                raise StateError(
                    "Scoring the base model needs a PeftModel (its disable_adapter()); wrap the model first."
                )
            with disable_adapter():  # b_j: the base model itself, whatever the LoRA holds now
                row = self.row(model, 0, [], stored=records.get(0))
            if self.main:
                save_row(self.layout, merge_records(records.get(0), row))
        if missing.previous is not None:
            if keep_lora:
                with _lora_held(model, state.merged, self.adapter_name):
                    row = self.row(model, missing.previous, state.finished_tasks)
            else:  # the task's start replaces the LoRA right after
                from .peft_bridge import write_lora

                write_lora(model, state.merged, self.adapter_name)
                row = self.row(model, missing.previous, state.finished_tasks)
            if self.main:
                save_row(self.layout, row)


def save_rejection(
    layout: RunLayout,
    state: ContinualState,
    name: str,
    scores: Any,
    guard: ForgettingGuard,
    found: Sequence[Regression],
    main: bool,
) -> ForgettingGuardError:
    """The guard's refusal of ``state``'s last task: its merged LoRA, its row and the verdict go
    beside the task (``main``: this process writes); returns the error that says what stayed and
    what to do."""
    from .core.state import save_lora_file

    index = state.next_task_index - 1
    folder = layout.rejected(index, name)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        save_lora_file(folder / "merged.safetensors", state.merged)
        write_atomic(folder / "evaluation.json", json.dumps(scores, indent=2))
        verdict = {"task": name, "task_index": index, "max_forgetting": guard.max_forgetting}
        verdict["regressions"] = [r.to_dict() for r in found]
        write_atomic(folder / "verdict.json", json.dumps(verdict, indent=2))
    drops = "; ".join(r.describe() for r in found)
    levers = "more replay, " if state.replay is not None else ""
    return ForgettingGuardError(
        f"Task {name!r} (task {index}) was not taken: after its merge {drops}, more than "
        f"{guard.where} = {guard.max_forgetting:g} allows. The state, the adapter and the report stay at task "
        f"{index - 1}; the rejected LoRA and its row are in {folder}. Change how {name!r} trains "
        f"({levers}a lower learning rate, fewer steps) and run again to retry it, or take it anyway with "
        f"{guard.accept_with}."
    )


@dataclass
class TaskProgress:
    """A task's progress file (``RunLayout.task_progress``), which the recipe runner polls for its
    progress bar: written at most every ``_PROGRESS_INTERVAL`` seconds and at the last step, so a
    fast trainer does not write a file per step; the fault tests pause at ``_PAUSE_STEP``."""

    path: Path | None = None  # None until the task begins, and on every process but the first
    index: int | None = None
    written_at: float = float("-inf")

    def after_step(self, global_step: int, max_steps: int | None = None) -> None:
        last_step = max_steps is not None and max_steps > 0 and global_step >= max_steps
        now = time.monotonic()
        if self.path is not None and (last_step or now - self.written_at >= _PROGRESS_INTERVAL):
            write_atomic(self.path, json.dumps({"step": global_step, "max_steps": max_steps}))
            self.written_at = now
        if global_step == _PAUSE_STEP:
            pause_point("training-step", self.index)


_DEPRECATED = ("config", "export_dir", "adapter_name", "trackers", "eval_schedule", "replay", "guard")


def task_settings(settings: ContinualConfig | None, name: str, sequence: Any, **keywords: Any) -> ContinualConfig:
    """A task's settings, from ``settings`` or the deprecated keywords, with the evaluation schedule
    filled in: ``needed`` reads the order of the sequence, so without one (a callback used on its
    own) every row scores everything, as before the schedule existed."""
    unknown = sorted(set(keywords) - set(_DEPRECATED))
    if unknown:
        raise TypeError(f"ContinualTask() got unexpected keyword argument(s) {unknown}")
    keywords["trackers"] = tuple(keywords.get("trackers") or ())
    settings = merged_settings(
        settings, f"ContinualTask {name!r}", {"adapter_name": "default", "trackers": ()}, **keywords
    )
    if settings.eval_schedule is None:
        settings = settings.replace(eval_schedule=DEFAULT_SCHEDULE if sequence is not None else "all")
    return settings


class ContinualTask:
    """The life of one task of a continual sequence (see the module docstring for the order).

    Args:
        layout: The run's output directory; the state is ``layout.state``.
        name: The task's name; a name already finished in the state is refused.
        settings: What the run is configured by (:class:`~mergeforget_plugin.settings.ContinualConfig`:
            strategy, evaluation schedule, replay, guard, export, adapter name, trackers); must match
            the state's. Defaults to the paper's SLAO with nothing else on.
        eval_sets: Held-out sets of every task of the sequence. When given, the base model's
            row, this task's row and any row a kill interrupted are scored.
        probes: Evaluation-only sets (:class:`EvalSet`, or an lm-evaluation-harness probe), never
            trained on, scored in the same rows as the tasks.
        sequence: The names of every task of the sequence, in order (default: the tasks of
            ``eval_sets``); the ``"needed"`` schedule reads it to know the next task and the last.
        train_rows: This task's training rows (plain mappings), needed when the sequence replays.
        config, export_dir, adapter_name, trackers, eval_schedule, replay, guard: Deprecated; the
            fields of ``settings`` of the same names (``config`` is ``settings.strategy``).
    """

    def __init__(
        self,
        layout: RunLayout,
        name: str,
        config: MergeForgetConfig | None = None,
        *,
        settings: ContinualConfig | None = None,
        eval_sets: Sequence[EvalSet] = (),
        probes: Sequence[Any] = (),
        sequence: Sequence[str] | None = None,
        train_rows: Sequence[Mapping[str, Any]] | None = None,
        **deprecated: Any,
    ) -> None:
        check_task_names([name])
        self.settings = settings = task_settings(settings, name, sequence, config=config, **deprecated)
        self.layout, self.name = layout, name
        sets, probes = list(eval_sets), list(probes)
        refuse(task_problems(settings, name, sets, probes, train_rows))
        order = list(sequence) if sequence is not None else [s.task for s in sets]
        self.rows = TaskRows(layout, name, sets, probes, settings.eval_schedule, order, settings.adapter_name)
        # As the state will store them, so a run that goes on in memory replays what a resumed one does.
        self.train_rows = plain_rows(train_rows, f"Task {name!r}, training rows") if train_rows is not None else None
        self.regressions: list[Regression] = []  # what the guard saw at this task's end
        self.state: ContinualState | None = None  # as loaded when the task began, as saved once it ended
        self.index: int | None = None
        self.scores: dict[str, Any] | None = None  # this task's whole row record, once scored
        self.progress = TaskProgress()
        self._started_at = 0.0
        self._finished = False
        self._rows_pending = False

    # The settings by the names the engine used before they had an object of their own.
    config = property(lambda self: self.settings.strategy)
    replay = property(lambda self: self.settings.replay)
    guard = property(lambda self: self.settings.guard)
    eval_schedule = property(lambda self: self.settings.eval_schedule)
    adapter_name = property(lambda self: self.settings.adapter_name)
    trackers = property(lambda self: list(self.settings.trackers))
    export_dir = property(lambda self: Path(self.settings.export_dir) if self.settings.export_dir is not None else None)
    eval_sets = property(lambda self: self.rows.eval_sets)
    probes = property(lambda self: self.rows.probes)
    sequence = property(lambda self: self.rows.sequence)

    # This task's row in each task's primary metric, once it has ended and been scored.
    accuracy = property(lambda self: self.scores["accuracy"] if self.scores is not None and self._finished else None)

    def begin(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        *,
        apply_init: bool = True,
        score_rows: bool = True,
        main_process: bool | None = None,
    ) -> int:
        """Pre-flight, missing evaluation rows, then the task's starting LoRA. Runs once; returns the index.
        ``apply_init=False`` keeps the model's LoRA (a trainer resumed from a mid-task checkpoint
        trained from this task's init already); ``score_rows=False`` leaves the missing rows to
        :meth:`score_pending_rows` (a model DeepSpeed has partitioned but not wrapped yet cannot run
        a forward pass); ``main_process``: the trainer's word on whether this process writes."""
        if self.index is not None:
            return self.index
        from .peft_bridge import is_sharded, write_lora

        self._started_at = time.time()
        self.state = begun_state(self.layout, self.name, self.settings, model)
        self.index = self.state.next_task_index
        # Decided once, here: sharded weights (FSDP2, ZeRO-3) run forward passes with every process
        # (each gathers the shards), so every process scores and the first writes.
        self.rows.main, self.rows.collective = is_main_process(main_process), is_sharded(model)
        self.progress.index = self.index
        if self.rows.main:
            self.progress.path = self.layout.task_progress(self.index, self.name)
        self.rows.tokenizer = tokenizer if tokenizer is not None else self.rows.tokenizer
        self._rows_pending = self.rows.evaluates and not score_rows
        if score_rows:
            self.rows.score_missing(model, self.state, keep_lora=not apply_init)
        start = starting_lora(self.state, self.config) if apply_init else None
        if start is not None:
            write_lora(model, start, self.adapter_name)
        return self.index

    def score_pending_rows(self, model: torch.nn.Module) -> None:
        """The missing rows ``begin(score_rows=False)`` left, once the model can run (the trainer
        has wrapped it); the LoRA keeps this task's start."""
        if self._rows_pending:
            self._rows_pending = False
            self.rows.score_missing(model, self.state, keep_lora=True)

    def end(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        *,
        extra: dict[str, Any] | None = None,
        trackers: Sequence[str] | None = None,
        main_process: bool | None = None,
    ) -> ContinualState:
        """Merge, load the merged LoRA, score this task's row, publish the state; returns it. Runs once.
        ``trackers`` replaces the settings' (the callback passes the trainer's ``report_to``);
        ``main_process`` is the trainer's word on whether this process writes."""
        if self._finished:
            return self.state
        if self.state is None or self.index is None:
            raise StateError("The task ended before it began: begin() must run before end().")
        from .peft_bridge import read_lora, write_lora

        self.rows.tokenizer = tokenizer if tokenizer is not None else self.rows.tokenizer
        main = self.rows.main if main_process is None else is_main_process(main_process)
        state = finished_state(
            self.state,
            self.name,
            read_lora(model, self.adapter_name),
            extra,
            seconds=time.time() - self._started_at,
            train_rows=self.train_rows,
        )
        pause_point("merge", self.index)
        write_lora(model, state.merged, self.adapter_name)  # what evaluation and the framework's save see
        self.scores = self.rows.row(model, self.index, state.finished_tasks)
        self.regressions = task_verdict(self.guard, self.layout, self.scores, state, self.state.history)
        if self.regressions and not self.guard.accept_regression:
            error = save_rejection(self.layout, state, self.name, self.scores, self.guard, self.regressions, main)
            write_lora(model, self.state.merged, self.adapter_name)  # the adapter that stays deployed
            wait_for_everyone()
            raise error
        if self.regressions:  # taken anyway: the history says which drops were accepted
            state.history[-1]["accepted_regressions"] = [r.to_dict() for r in self.regressions]
        if main:
            trackers, evaluates = self.trackers if trackers is None else trackers, self.rows.evaluates
            publish(self.layout, state, self.scores, export_dir=self.export_dir, trackers=trackers, evaluates=evaluates)
        wait_for_everyone()  # other processes read this snapshot when the next task starts
        self.state, self._finished = state, True
        return state

    def after_step(self, global_step: int, max_steps: int | None = None) -> None:
        """Called by the adapters after every optimizer step (see :class:`TaskProgress`)."""
        self.progress.after_step(global_step, max_steps)


def finish_sequence(
    layout: RunLayout, state: ContinualState, *, recipe: str | None = None, main_process: bool | None = None
) -> list[Path]:
    """After the last task: the merged adapter in ``layout.adapter`` and the report. Returns the report files.

    Only the first process writes; every process waits until it has.
    """
    written: list[Path] = []
    if is_main_process(main_process):
        report = build_report(layout, state, recipe)
        export_adapter(state, layout.adapter, report=report if layout.evaluation_rows() else None)
        written = write_report(layout, state, recipe, report=report)
    wait_for_everyone()
    return written
