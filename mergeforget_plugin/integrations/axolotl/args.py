"""The ``mergeforget:`` block of an Axolotl config (and of a recipe), as pydantic settings.

The strategy fields are not written here: they are built from
:class:`~mergeforget_plugin.core.slao.MergeForgetConfig` (types, defaults and help texts), and every
block is checked by constructing a ``MergeForgetConfig`` from it, so its cross-field rules apply
unchanged. :class:`MergeForgetArgs` is what Axolotl merges into its own config schema; its
``model_validator`` s see the whole Axolotl config and reject settings SLAO cannot carry before
any model is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from ...core.replay import ReplayConfig
from ...core.slao import MergeForgetConfig
from ...core.state import pickled_adapter_problem
from ...errors import MergeForgetError
from ...evaluation.guard import ForgettingGuard
from ...evaluation.metrics import SCORABLE
from ...evaluation.scoring import DEFAULT_MAX_NEW_TOKENS, EvalSet, eval_set_from_rows, read_rows
from ...preflight import guard_problems
from ...settings import ContinualConfig
from .held_out import STRATEGY_TYPES, base_type, check_rows, strategy_eval_set


class _BuildsConfig(BaseModel):
    """Settings that hold MergeForgetConfig's fields and are valid exactly when it accepts them."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _check_with_config(self) -> _BuildsConfig:
        self.to_config()  # MergeForgetConfig rejects conflicting fields with a sentence
        return self

    def to_config(self) -> MergeForgetConfig:
        return MergeForgetConfig(
            **{item.name: getattr(self, item.name) for item in dataclasses.fields(MergeForgetConfig)}
        )


def _config_fields() -> dict[str, Any]:
    hints = get_type_hints(MergeForgetConfig)
    return {
        item.name: (hints[item.name], Field(item.default, description=item.metadata["help"]))
        for item in dataclasses.fields(MergeForgetConfig)
    }


StrategySettings = create_model(
    "StrategySettings",
    __base__=_BuildsConfig,
    __module__=__name__,
    __doc__="The strategy: MergeForgetConfig's fields, validated by MergeForgetConfig.",
    **_config_fields(),
)


# The names the scorer knows (evaluation.metrics), so a new metric is declared once.
MetricName = Literal[SCORABLE]  # type: ignore[valid-type]


class EvalSettings(BaseModel):
    """How a task's held-out split is scored (the ``eval:`` block of a recipe task)."""

    model_config = ConfigDict(extra="forbid")

    metric: MetricName | None = Field(
        None,
        description="the primary metric (AA, BWT, FWT, heatmap): choice ranks the options by log-likelihood; loss "
        "is the answer's mean token NLL; rouge_l and exact_match score greedy generations. Default: choice when "
        "the answers form a small label set, else loss",
    )
    metrics: list[MetricName] = Field(default_factory=list, description="more metrics, each with its own matrix")
    options: list[str] | None = Field(None, description="candidate answers for choice (default: every answer seen)")
    max_examples: int | None = Field(None, gt=0, description="score at most this many held-out rows")
    prompt_field: str | None = Field(None, description="row field with the prompt (default: from the dataset type)")
    answer_field: str | None = Field(None, description="row field with the answer (default: from the dataset type)")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, gt=0, description="longest generation (rouge_l, exact_match)")
    stop: list[str] | None = Field(
        None,
        description="strings that end a generated answer once it has begun (default: a newline for prompt/answer "
        "fields, none for chat_template rows, which end at the template's end-of-turn token)",
    )

    @property
    def declares_metrics(self) -> bool:
        return self.metric is not None or bool(self.metrics)


class EvalSpec(EvalSettings):
    """One task's evaluation as the plugin receives it: files resolved, fields known."""

    task: str
    path: str = Field(description="held-out rows (JSON Lines or a JSON list)")
    option_paths: list[str] = Field(default_factory=list, description="files whose answers are options too")
    prompt_format: str = Field("{prompt}", description="template the prompt field is put in, as in training")
    dataset: dict[str, Any] = Field(
        default_factory=dict, description="the test_datasets entry, whose type says how its rows are tokenized"
    )

    @property
    def strategy_type(self) -> bool:
        """Whether the rows are of an Axolotl type tokenized by its prompt strategy (see ``held_out``)."""
        return base_type(self.dataset) is not None

    def _option_rows(self) -> list[dict[str, Any]]:
        # The training rows' answers are options (and tell a label set from free text) when the
        # metric may be `choice`; Axolotl also reads other formats, which hold no options here.
        may_rank = self.metric is None and not self.metrics or "choice" in (self.metric, *self.metrics)
        return [
            row
            for path in self.option_paths
            if may_rank and path.endswith((".json", ".jsonl"))
            for row in read_rows(path)
        ]

    def check(self) -> None:
        """What a training process would refuse of the rows, found before anything trains (no tokenizer)."""
        if not self.strategy_type:
            self.to_eval_set()
            return
        rows = read_rows(self.path)[: self.max_examples]
        check_rows(
            rows, self.dataset, [m for m in (self.metric, *self.metrics) if m], f"Task {self.task!r} ({self.path})"
        )

    def to_eval_set(self, tokenizer: Any = None, cfg: Any = None) -> EvalSet:
        """The rows, read and checked (a malformed line or a missing field names the file). Rows of an
        Axolotl type (``chat_template``, ``alpaca``, ...) are tokenized by its strategy, which needs
        the training process's ``tokenizer`` and ``cfg``."""
        if self.strategy_type:
            if tokenizer is None or cfg is None:
                raise MergeForgetError(
                    f"Task {self.task!r}: rows of type {self.dataset.get('type')!r} need the tokenizer."
                )
            if base_type(self.dataset) not in STRATEGY_TYPES:
                self.check()  # names the types that are scored
            return strategy_eval_set(
                self.task,
                read_rows(self.path)[: self.max_examples],
                self.dataset,
                tokenizer,
                cfg,
                option_rows=self._option_rows(),
                metric=self.metric,
                metrics=self.metrics,
                options=self.options,
                max_new_tokens=self.max_new_tokens,
                stop=self.stop,
                where=f"Task {self.task!r} ({self.path})",
            )
        return eval_set_from_rows(
            self.task,
            read_rows(self.path),
            prompt_field=self.prompt_field or "prompt",
            answer_field=self.answer_field or "completion",
            prompt_format=self.prompt_format,
            metric=self.metric,
            metrics=self.metrics,
            options=self.options,
            option_rows=self._option_rows(),
            max_examples=self.max_examples,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            source=self.path,
        )


class LMEvalSettings(BaseModel):
    """An lm-evaluation-harness task as a probe (see ``evaluation.lm_eval_probe.LMEvalProbe``)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, description="the harness task name")
    include_path: str | None = Field(None, description="a folder of task YAML files (relative to the recipe)")
    metric: str = Field("acc", description="the harness metric that is the probe's primary one")
    limit: int | None = Field(None, gt=0, description="score only the first documents")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples per document")
    batch_size: int = Field(8, gt=0, description="the harness's batch size")


class ProbeSpec(EvalSettings):
    """An evaluation-only set never trained on: held-out rows (``path``) or an lm-evaluation-harness task."""

    name: str = Field(description="the probe's name in the report; must differ from every task name")
    path: str | None = Field(None, description="rows to score (JSON Lines or a JSON list)")
    prompt_format: str = Field("{prompt}", description="template the prompt field is put in")
    lm_eval: LMEvalSettings | None = Field(None, description="an lm-evaluation-harness task instead of rows")

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSpec:
        if (self.path is None) == (self.lm_eval is None):
            raise ValueError("give either path (rows to score) or lm_eval (a harness task), not both or neither")
        if self.lm_eval is not None:
            rows_only = sorted(
                (self.model_fields_set & set(EvalSettings.model_fields)) | ({"prompt_format"} & self.model_fields_set)
            )
            if rows_only:
                raise ValueError(
                    f"{', '.join(rows_only)} apply to rows (path); an lm_eval probe takes its metric and limit under "
                    "lm_eval: (lm_eval.metric, lm_eval.limit)"
                )
        return self

    def to_probe(self) -> Any:
        """The probe, its rows read and checked (or, for lm_eval, the harness task found)."""
        if self.lm_eval is not None:
            from ...evaluation.lm_eval_probe import LMEvalProbe

            settings = self.lm_eval
            return LMEvalProbe(
                self.name,
                settings.task,
                settings.include_path,
                settings.metric,
                settings.limit,
                settings.num_fewshot,
                settings.batch_size,
            )
        return EvalSpec(
            **{key: value for key, value in self.model_dump().items() if key in EvalSpec.model_fields},
            task=self.name,
        ).to_eval_set()


# Settings objects that a YAML block gives as a mapping: ContinualConfig builds them (and names
# the key of a bad value) when the plugin makes it.
_AS_MAPPING = ("ReplayConfig", "ForgettingGuard")


def _continual_fields() -> dict[str, Any]:
    """ContinualConfig's fields (but the strategy, whose fields sit at the top of the block), with
    their types, defaults and help texts: a new setting of a run is one field of ContinualConfig."""
    hints = get_type_hints(ContinualConfig)
    fields = {}
    for item in dataclasses.fields(ContinualConfig):
        if item.name == "strategy":
            continue
        hint = hints[item.name]
        if any(getattr(arg, "__name__", "") in _AS_MAPPING for arg in get_args(hint)):
            hint = dict[str, Any] | None
        fields[item.name] = (hint, Field(item.default, description=item.metadata["help"]))
    return fields


ContinualSettings = create_model(
    "ContinualSettings",
    __base__=StrategySettings,
    __module__=__name__,
    __doc__="ContinualConfig's fields as a settings block (the strategy's at the top level).",
    **_continual_fields(),
)


class MergeForgetSettings(ContinualSettings):  # type: ignore[misc, valid-type]
    """The ``mergeforget:`` block of an Axolotl config: a run's settings (:class:`ContinualSettings`)
    and what the plugin needs to know of this task's place in the sequence."""

    state_dir: str = Field(description="continual state directory shared by every task of the sequence")
    task_name: str = Field(description="name of the task this run trains; must not be finished in state_dir yet")
    evaluation: list[EvalSpec] = Field(
        default_factory=list,
        description="held-out sets scored with the merged LoRA after this task (and zero-shot before task 1)",
    )
    probes: list[ProbeSpec] = Field(
        default_factory=list, description="evaluation-only sets never trained on, scored with the tasks"
    )
    sequence: list[str] | None = Field(
        None, description="every task name of the sequence in order (default: the tasks of `evaluation`)"
    )
    train_files: list[str] = Field(
        default_factory=list,
        description="this task's own training rows (JSON or JSON Lines), which replay draws into the buffer",
    )
    _continual: ContinualConfig | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _levers(self) -> MergeForgetSettings:
        # Built once here so a bad block stops Axolotl's config validation, not the task's end; the
        # rules over the settings are the pre-flight's, the same the TRL path runs.
        try:
            self._continual = settings = self._build()
        except MergeForgetError as error:  # a ValueError is what pydantic reports as the field's problem
            raise ValueError(str(error)) from None
        problems = guard_problems(settings, bool(self.evaluation), give="mergeforget.evaluation")
        if problems:
            raise ValueError(str(problems[0]))
        if self.replay is not None and not self.train_files:
            raise ValueError(
                "mergeforget.replay needs mergeforget.train_files, the task's own training rows (JSON or JSON "
                "Lines) that the buffer keeps; the recipe runner writes both"
            )
        return self

    def continual_config(self) -> ContinualConfig:
        """What this task's sequence is configured by, as the TRL path's ``settings=`` holds it
        (built once, when the block was validated)."""
        return self._continual if self._continual is not None else self._build()

    def _build(self) -> ContinualConfig:
        values = {name: getattr(self, name) for name in _continual_fields()}
        values.update(replay=self.replay_config(), guard=self.forgetting_guard())
        return ContinualConfig(strategy=self.to_config(), **values)

    def replay_config(self) -> ReplayConfig | None:
        return None if self.replay is None else ReplayConfig.from_mapping(self.replay, "mergeforget.replay")

    def forgetting_guard(self) -> ForgettingGuard | None:
        return None if self.guard is None else ForgettingGuard.from_mapping(self.guard, "mergeforget.guard")

    def train_rows(self) -> list[dict[str, Any]] | None:
        """The task's own training rows, when the sequence replays (read from ``train_files``)."""
        if self.replay is None:
            return None
        return [row for path in self.train_files for row in read_rows(path)]


class MergeForgetArgs(BaseModel):
    """Plugin input args, merged into Axolotl's config schema (``get_input_args``)."""

    mergeforget: MergeForgetSettings | None = Field(
        None,
        json_schema_extra={"description": "SLAO continual learning: state_dir, task_name and strategy options"},
    )

    @model_validator(mode="before")
    @classmethod
    def _needs_the_block(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("mergeforget"):
            raise ValueError(
                "plugins lists mergeforget_plugin.MergeForgetPlugin but the config has no `mergeforget:` block. "
                "Add at least:\nmergeforget:\n  state_dir: ./outputs/cl/state\n  task_name: my-task"
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _plain_lora_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        adapter = data.get("adapter")
        if adapter not in ("lora", "qlora"):
            raise ValueError(
                f"mergeforget carries one LoRA across tasks, so it needs `adapter: lora` or `adapter: qlora` "
                f"(the config has adapter: {adapter!r})."
            )
        if data.get("peft_use_dora"):
            raise ValueError("peft_use_dora: true is not supported: the SLAO merge is defined for plain LoRA.")
        if data.get("lora_model_dir"):
            problem = pickled_adapter_problem(str(data["lora_model_dir"]), "lora_model_dir")
            if problem:
                raise ValueError(problem)
        return data
