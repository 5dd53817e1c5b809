"""The one error family of mergeforget-plugin: every refusal says what is wrong and what to do.

Each error is a :class:`MergeForgetError`, so a command line (ours, or a user's script) can catch
the whole family in one place and print the sentence instead of a traceback. The concrete classes
also derive from the built-in exception that describes them (``ValueError`` for bad input,
``RuntimeError`` for a state that cannot be used), so existing ``except ValueError`` code keeps
working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class MergeForgetError(Exception):
    """Base of every error mergeforget-plugin raises on purpose."""


class StateError(MergeForgetError, RuntimeError):
    """A continual state directory that cannot be used, with what to do about it."""


class StateMismatchError(StateError):
    """The state was made for another base model, rank, target modules, LoRA variant or strategy."""


class SLAOMathError(MergeForgetError, ValueError):
    """An input the SLAO equations cannot be applied to (non-finite values, impossible shapes)."""


class UnsupportedAdapterError(MergeForgetError, ValueError):
    """The model's adapter is not a plain LoRA that SLAO can carry across tasks."""


class RecipeError(MergeForgetError, ValueError):
    """A recipe that cannot be run, with every problem found and what to change."""


class RunError(MergeForgetError):
    """A sequence run that cannot start or continue, with what to do about it."""


class EvaluationError(MergeForgetError, ValueError):
    """Held-out data or evaluation settings that cannot be scored: names the task, file, line or field."""


class TaskNameError(MergeForgetError, ValueError):
    """A task name that cannot name a task (it becomes a folder name), or a repeated one."""


class DataPrepError(MergeForgetError, ValueError):
    """A benchmark source that cannot be turned into task rows: names the file, line or field."""


class ReplayError(MergeForgetError, ValueError):
    """Replay settings or replayed rows that cannot be used: names the field, file or task."""


class TrainingDataError(MergeForgetError, ValueError):
    """A task's training rows that the trainer cannot train on: names the task, the row and the field."""


class ForgettingGuardError(MergeForgetError):
    """A task's merge made an earlier task worse than the guard allows; the previous state is kept."""


def check_mapping(
    data: Any,
    where: str,
    known: Iterable[str],
    required: Mapping[str, str],
    error: type[MergeForgetError],
    holds: str,
) -> None:
    """Refuse a settings block (a recipe's ``replay:``, a plugin's ``guard:``) that is not a mapping,
    has a key outside ``known``, or lacks a ``required`` key (mapped to what to say instead), with
    ``error`` naming the block by ``where``. ``holds`` says what the mapping should hold."""
    if not isinstance(data, Mapping):
        raise error(f"{where}: must be a mapping with {holds}, got {data!r}.")
    known = set(known)
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}.")
    for key, what_to_say in required.items():
        if key not in data:
            raise error(f"{where}.{key}: missing; {what_to_say}.")
