"""The pre-flight of a sequence: every rule about its settings, its tasks and its state, in one place.

Each rule is a plain function that returns :class:`Problem` s rather than raising, so an entry point
can report them all at once in its own words: ``train_sequence`` names the Python argument
(``Task 'b', train_dataset``), the recipe runner the file and the key. :func:`sequence_problems`
runs them all before anything trains; :func:`task_problems` is the part one task can check on its
own (the TRL callback and the Axolotl plugin, which see one task at a time). :func:`refuse` raises
the first problem's error with every problem's sentence.

Imports no framework: what a task brings is described by :class:`TaskPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .core.layout import repeated_names, task_name_problem
from .core.replay import buffer_fields, check_fields, resumed_advice
from .core.state import ContinualState
from .errors import (
    EvaluationError,
    ForgettingGuardError,
    MergeForgetError,
    ReplayError,
    RunError,
    StateError,
    TaskNameError,
    TrainingDataError,
)
from .settings import ContinualConfig


@dataclass(frozen=True)
class Problem:
    """One reason a sequence cannot start: ``where`` (a field, file or task), the sentence, and the
    error family it belongs to."""

    where: str
    message: str
    error: type[MergeForgetError] = RunError

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass(frozen=True)
class TaskPlan:
    """What the pre-flight knows of one task before it trains.

    Args:
        name: The task's name.
        where: How the entry point names the task's training data (``Task 'a', train_dataset``, or a
            recipe's file, task and key).
        fields: The training rows' fields (``None``: the rows cannot be read before training, e.g. an
            ``IterableDataset``).
        row_count: How many training rows there are (``None``: unknown in advance).
        first_empty: The first row (0-based) with a field that holds nothing (``None``), and those fields.
        held_out: Whether the task has held-out rows to score.
        formats: The sets of fields the trainer reads a row by; the rows must hold one of them (empty:
            not checked here).
    """

    name: str
    where: str
    fields: list[str] | None = None
    row_count: int | None = None
    first_empty: tuple[int, list[str]] | None = None
    held_out: bool = False
    formats: Sequence[Sequence[str]] = ()

    @classmethod
    def of_rows(cls, name: str, where: str, rows: Sequence[Mapping[str, Any]], **known: Any) -> TaskPlan:
        """The plan of rows held in memory (a list of mappings), every row read."""
        first_empty = None
        for number, row in enumerate(rows):
            empty = sorted(key for key, value in dict(row).items() if value is None)
            if empty:
                first_empty = (number, empty)
                break
        fields = sorted(dict(rows[0])) if len(rows) else []
        return cls(name, where, fields=fields, row_count=len(rows), first_empty=first_empty, **known)


def refuse(problems: Sequence[Problem]) -> None:
    """Raise the first problem's error with every problem's sentence (nothing when there is none)."""
    if problems:
        raise problems[0].error("\n".join(str(problem) for problem in problems))


def name_problems(names: Sequence[str]) -> list[Problem]:
    """Names that cannot name a task (each becomes a folder), or that repeat."""
    problems = [
        Problem("", f"Task name {message}.", TaskNameError) for message in filter(None, map(task_name_problem, names))
    ]
    repeated = repeated_names(names)
    if repeated:
        problems.append(Problem("", f"Task names must be unique; repeated: {repeated}.", TaskNameError))
    return problems


def guard_problems(settings: ContinualConfig, held_out: bool, give: str = "eval_dataset") -> list[Problem]:
    """The guard measures forgetting on held-out rows: some task must have them (``give``: what the
    entry point calls them)."""
    if settings.guard is None or held_out:
        return []
    return [
        Problem(
            "",
            f"{settings.guard.where} measures forgetting on held-out rows, but no task has any: give the tasks "
            f"evaluation rows ({give}), or leave the guard out.",
            ForgettingGuardError,
        )
    ]


def row_problems(task: TaskPlan) -> list[Problem]:
    """Training rows the trainer would fail on only once the task starts: none at all, no set of
    fields it reads a row by, or a field that holds nothing (``None``)."""
    if task.row_count == 0:
        return [
            Problem(
                task.where,
                f"task {task.name!r} has no training rows; give it some, or leave the task out.",
                TrainingDataError,
            )
        ]
    problems = []
    if task.fields is not None and task.formats and not any(set(need) <= set(task.fields) for need in task.formats):
        readable = "; ".join(" and ".join(need) for need in task.formats)
        problems.append(
            Problem(
                task.where,
                f"the rows hold the fields {task.fields}, but the trainer reads a row by one of: {readable}. "
                "Rename the fields (Dataset.rename_column), or map the rows to one of these.",
                TrainingDataError,
            )
        )
    if task.first_empty is not None:
        number, empty = task.first_empty
        problems.append(
            Problem(
                task.where,
                f"row {number} has no value (None) in {', '.join(map(repr, empty))}; fill it, or drop the row.",
                TrainingDataError,
            )
        )
    return problems


def replay_problems(
    settings: ContinualConfig,
    tasks: Sequence[TaskPlan],
    state: ContinualState | None,
    state_where: str,
    label: str = " (replay)",
) -> list[Problem]:
    """Replay mixes any task's rows into every later one, so every task's rows must be readable in
    advance and share one set of fields, the state's buffer included (``label`` follows each task's
    ``where`` in the sentence)."""
    if settings.replay is None:
        return []
    fields = buffer_fields(state.replay_buffer) if state is not None else {}
    # Rows kept in a state cannot be dropped by turning replay off (the state keeps its settings).
    advice = {"what_to_do": resumed_advice(state_where)} if fields else {}
    problems = []
    for task in tasks:
        if task.row_count == 0:
            continue  # no rows: row_problems says so, and there is no format to compare
        if task.fields is None:
            problems.append(
                Problem(
                    task.where,
                    "replay draws from the task's training rows before it trains, and they cannot be read that way; "
                    "give a datasets.Dataset or a list of rows.",
                    ReplayError,
                )
            )
            continue
        try:
            check_fields(fields, task.name, task.fields, f"{task.where}{label}", **advice)
        except ReplayError as error:
            problems.append(Problem("", str(error), ReplayError))
        fields.setdefault(task.name, task.fields)
    return problems


def state_problems(
    settings: ContinualConfig, names: Sequence[str], state: ContinualState | None, state_where: str
) -> list[Problem]:
    """A sequence that resumes keeps its task order, its strategy and its replay settings."""
    if state is None:
        return []
    done = state.finished_tasks
    if list(names[: len(done)]) != done:
        return [
            Problem(
                "",
                f"{state_where} finished the tasks {done}, but this sequence starts with "
                f"{list(names[: len(done)])}. Resume with the same task order, or use another output directory.",
            )
        ]
    problems = []
    for check in (
        lambda: state.check_config(settings.strategy, state_where),
        lambda: state.check_replay(settings.replay, state_where),
    ):
        try:
            check()
        except StateError as error:
            problems.append(Problem("", str(error), type(error)))
    return problems


def sequence_problems(
    settings: ContinualConfig,
    tasks: Sequence[TaskPlan],
    state: ContinualState | None = None,
    state_where: str = "the state",
) -> list[Problem]:
    """Every rule about a sequence that can be checked before task 1: names, training rows, the
    guard's held-out rows, replay's row format, and the state it resumes (order, strategy, replay)."""
    names = [task.name for task in tasks]
    if not names:
        return [Problem("", "tasks is empty: give at least one task to train.", TaskNameError)]
    problems = name_problems(names)
    problems += state_problems(settings, names, state, state_where)
    problems += guard_problems(settings, any(task.held_out for task in tasks))
    unfinished = [task for task in tasks if state is None or task.name not in state.finished_tasks]
    for task in unfinished:
        problems += row_problems(task)
    return problems + replay_problems(settings, unfinished, state, state_where)


def task_problems(
    settings: ContinualConfig, name: str, eval_sets: Sequence[Any], probes: Sequence[Any], train_rows: Any
) -> list[Problem]:
    """What one task can check on its own: the guard's held-out rows, replay's training rows, and
    distinct names for the evaluation sets and probes it scores."""
    where = f"Task {name!r}"
    problems = [Problem(where, problem.message, problem.error) for problem in guard_problems(settings, bool(eval_sets))]
    if settings.replay is not None and train_rows is None:
        problems.append(
            Problem(where, "the sequence replays, so its training rows must be given (train_rows).", ReplayError)
        )
    names = [s.task for s in eval_sets] + [p.task for p in probes]
    clash = sorted({task for task in names if names.count(task) > 1})
    if clash:
        problems.append(
            Problem(
                "",
                f"Evaluation sets and probes need distinct names; {clash} is used twice. Rename the probe.",
                EvaluationError,
            )
        )
    return problems
