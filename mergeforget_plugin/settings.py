"""What a continual run is configured by: one frozen dataclass, checked once, when it is made.

:class:`ContinualConfig` is to a sequence what PEFT's ``LoraConfig`` is to an adapter: the strategy
(:class:`~mergeforget_plugin.core.slao.MergeForgetConfig`), the evaluation schedule, replay, the
forgetting guard, the export and the trackers. :class:`~mergeforget_plugin.engine.ContinualTask`,
:class:`~mergeforget_plugin.MergeForgetCallback` and :func:`~mergeforget_plugin.train_sequence` take
it as ``settings=``; the Axolotl plugin builds it from its ``mergeforget:`` block
(:meth:`ContinualConfig.from_mapping`). Every field is checked in ``__post_init__`` with a sentence
that names the field and what to change; the rules that need the tasks too (held-out rows for the
guard, one row format for replay, the state) are the pre-flight's
(:func:`mergeforget_plugin.engine.sequence_problems`).

Imports no framework.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .core.replay import ReplayConfig
from .core.slao import MergeForgetConfig
from .errors import MergeForgetError, check_mapping
from .evaluation.guard import ForgettingGuard
from .evaluation.schedule import check_schedule

TRACKERS = ("tensorboard", "wandb")


class SettingsError(MergeForgetError, ValueError):
    """A :class:`ContinualConfig` field that cannot configure a run: names the field and what to change."""


@dataclass(frozen=True)
class ContinualConfig:
    """Everything a continual run is configured by, besides its tasks and the trainer's own arguments.

    Args:
        strategy ([`MergeForgetConfig`] or `dict`, defaults to the paper's SLAO):
            How the running LoRA is initialized and merged at each task boundary; a mapping is read as
            ``MergeForgetConfig(**mapping)``. Must match the state's when a sequence resumes.
        eval_schedule (`str`, *optional*):
            ``"needed"`` scores, after task t, the tasks AA/BWT/FWT read (1..t+1) and every set after the
            last; ``"all"`` scores every set after every task. Default: ``"needed"`` when the sequence's
            task order is known (``train_sequence``, a recipe), else ``"all"``.
        replay ([`ReplayConfig`] or `dict`, *optional*):
            Keep a constant-size buffer of earlier tasks' training rows in the state and mix them into
            every later task. Off by default: the buffer holds training text.
        guard ([`ForgettingGuard`] or `dict`, *optional*):
            Refuse a task, keeping the previous state, adapter and report, when its merge makes an earlier
            task drop more than ``guard.max_forgetting``. Needs held-out rows.
        export_dir (`str`, *optional*):
            Also write the merged LoRA there as a standard PEFT adapter after every task.
        adapter_name (`str`, defaults to `"default"`):
            The PEFT adapter the sequence carries.
        trackers (`tuple[str, ...]`, defaults to `()`):
            Where the report also goes after each task (``"tensorboard"``, ``"wandb"``). The TRL
            callback uses the trainer's ``report_to`` instead.

    Example:

    ```python
    >>> from mergeforget_plugin import ContinualConfig
    >>> ContinualConfig(replay={"buffer_rows": 64, "fraction": 0.2}, guard={"max_forgetting": 5}).guard.max_forgetting
    5
    >>> ContinualConfig(eval_schedule="sometimes")
    Traceback (most recent call last):
    ...
    mergeforget_plugin.errors.EvaluationError: eval_schedule 'sometimes' is not one of needed, all.

    ```
    """

    strategy: MergeForgetConfig = field(
        default_factory=MergeForgetConfig,
        metadata={"help": "how the running LoRA is initialized and merged (MergeForgetConfig; default: SLAO)"},
    )
    eval_schedule: Literal["needed", "all"] | None = field(
        default=None,
        metadata={
            "help": "needed: what AA/BWT/FWT and the final row read; all: every set every time (default: needed "
            "when the task order is known, else all)"
        },
    )
    replay: ReplayConfig | None = field(
        default=None,
        metadata={
            "help": "keep a buffer of earlier tasks' training rows in the state and mix them into later tasks "
            "(ReplayConfig: buffer_rows, fraction or count, seed)"
        },
    )
    guard: ForgettingGuard | None = field(
        default=None,
        metadata={
            "help": "refuse a task whose merge makes an earlier task drop more than max_forgetting "
            "(ForgettingGuard); needs held-out rows"
        },
    )
    export_dir: str | None = field(
        default=None, metadata={"help": "also write the merged LoRA here as a PEFT adapter after every task"}
    )
    adapter_name: str = field(default="default", metadata={"help": "the PEFT adapter the sequence carries"})
    trackers: tuple[str, ...] = field(
        default=(), metadata={"help": "where the report also goes after each task: tensorboard, wandb"}
    )

    def __post_init__(self) -> None:
        self._set("strategy", _strategy(self.strategy))
        if isinstance(self.replay, Mapping):
            self._set("replay", ReplayConfig.from_mapping(self.replay, "replay"))
        elif self.replay is not None and not isinstance(self.replay, ReplayConfig):
            raise SettingsError(f"replay: give a ReplayConfig or a mapping of its fields, got {self.replay!r}.")
        if isinstance(self.guard, Mapping):
            self._set("guard", ForgettingGuard.from_mapping(self.guard, "guard"))
        elif self.guard is not None and not isinstance(self.guard, ForgettingGuard):
            raise SettingsError(f"guard: give a ForgettingGuard or a mapping of its fields, got {self.guard!r}.")
        if self.eval_schedule is not None:
            check_schedule(self.eval_schedule)
        if self.export_dir is not None:
            if not isinstance(self.export_dir, str | os.PathLike) or not str(self.export_dir):
                raise SettingsError(f"export_dir: give a folder path, got {self.export_dir!r}.")
            self._set("export_dir", os.fspath(self.export_dir))
        if not isinstance(self.adapter_name, str) or not self.adapter_name:
            raise SettingsError(f"adapter_name: give the PEFT adapter's name ('default'), got {self.adapter_name!r}.")
        trackers = (self.trackers,) if isinstance(self.trackers, str) else self.trackers
        if not isinstance(trackers, list | tuple) or any(name not in TRACKERS for name in trackers):
            raise SettingsError(f"trackers: choose from {', '.join(TRACKERS)}, got {self.trackers!r}.")
        self._set("trackers", tuple(trackers))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: fields are normalized once, here

    def replace(self, **changes: Any) -> ContinualConfig:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "settings") -> ContinualConfig:
        """From a settings block (the Axolotl plugin's, say): the strategy's fields at the top level
        beside this class's own, unknown keys refused by name."""
        strategy_keys = [item.name for item in dataclasses.fields(MergeForgetConfig)]
        own_keys = [item.name for item in dataclasses.fields(cls) if item.name != "strategy"]
        check_mapping(
            data, where, known=[*strategy_keys, *own_keys], required={}, error=SettingsError, holds="settings"
        )
        strategy = {key: data[key] for key in strategy_keys if key in data}
        return cls(strategy=MergeForgetConfig(**strategy), **{key: data[key] for key in own_keys if key in data})


def _strategy(value: Any) -> MergeForgetConfig:
    if isinstance(value, MergeForgetConfig):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {item.name for item in dataclasses.fields(MergeForgetConfig)})
        if unknown:
            raise SettingsError(f"strategy: unknown field(s) {unknown}; MergeForgetConfig has no such field.")
        return MergeForgetConfig(**value)
    raise SettingsError(f"strategy: give a MergeForgetConfig or a mapping of its fields, got {value!r}.")


def merged_settings(
    settings: ContinualConfig | None, where: str, defaults: Mapping[str, Any], **keywords: Any
) -> ContinualConfig:
    """``settings``, or the :class:`ContinualConfig` that the keyword arguments an entry point still
    takes one by one (``config=``, ``replay=``, ``guard=``, ...) describe. Those keywords are
    deprecated (a ``DeprecationWarning`` names them); giving one beside ``settings`` is refused,
    since two values for one field would leave it unclear which one runs."""
    given = {name: value for name, value in keywords.items() if value is not None and value != defaults.get(name)}
    if settings is not None and not isinstance(settings, ContinualConfig):
        raise SettingsError(f"{where}: settings must be a ContinualConfig, got {type(settings).__name__}.")
    if settings is not None and given:
        raise SettingsError(
            f"{where}: {', '.join(sorted(given))} given beside settings=; set "
            f"{'it' if len(given) == 1 else 'them'} in the ContinualConfig instead (settings.replace(...))."
        )
    if settings is not None:
        return settings
    if given:
        fields = ", ".join(f"{'strategy' if name == 'config' else name}=..." for name in sorted(given))
        warnings.warn(
            f"{where}: pass settings=ContinualConfig({fields}) instead of {', '.join(sorted(given))}=; the "
            "keywords will be removed in a later release.",
            DeprecationWarning,
            stacklevel=3,
        )
    return ContinualConfig(**{("strategy" if name == "config" else name): value for name, value in given.items()})


def field_help(name: str) -> str:
    """The help text of :class:`ContinualConfig`'s field ``name``: other surfaces that declare the
    setting (a recipe's keys, the plugin's block) describe it in these words."""
    return next(item.metadata["help"] for item in dataclasses.fields(ContinualConfig) if item.name == name)
