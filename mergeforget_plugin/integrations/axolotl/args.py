"""The ``mergeforget:`` block of an Axolotl config (and of a recipe), as pydantic settings.

The strategy fields are not written here: they are built from
:class:`~mergeforget_plugin.slao.MergeForgetConfig` (types, defaults and help texts), and every
block is checked by constructing a ``MergeForgetConfig`` from it, so its cross-field rules apply
unchanged. :class:`MergeForgetArgs` is what Axolotl merges into its own config schema; its
``model_validator`` s see the whole Axolotl config and reject settings SLAO cannot carry before
any model is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ...slao import MergeForgetConfig
from ...state import pickled_adapter_problem


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


class EvalSettings(BaseModel):
    """How a task's held-out split is scored (the ``eval:`` block of a recipe task)."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["choice", "exact_match"] = Field(
        "choice", description="choice: rank the options by log-likelihood; exact_match: greedy generation"
    )
    options: list[str] | None = Field(None, description="candidate answers for choice (default: every answer seen)")
    max_examples: int | None = Field(None, gt=0, description="score at most this many held-out rows")
    prompt_field: str | None = Field(None, description="row field with the prompt (default: from the dataset type)")
    answer_field: str | None = Field(None, description="row field with the answer (default: from the dataset type)")


class EvalSpec(EvalSettings):
    """One task's evaluation as the plugin receives it: files resolved, fields known."""

    task: str
    path: str = Field(description="held-out rows (JSON Lines or a JSON list)")
    option_paths: list[str] = Field(default_factory=list, description="files whose answers are options too")
    prompt_format: str = Field("{prompt}", description="template the prompt field is put in, as in training")


class MergeForgetSettings(StrategySettings):  # type: ignore[misc, valid-type]
    """The ``mergeforget:`` block of an Axolotl config."""

    state_dir: str = Field(description="continual state directory shared by every task of the sequence")
    task_name: str = Field(description="name of the task this run trains; must not be finished in state_dir yet")
    export_dir: str | None = Field(None, description="also write the merged LoRA here as a PEFT adapter")
    evaluation: list[EvalSpec] = Field(
        default_factory=list,
        description="held-out sets scored with the merged LoRA after this task (and zero-shot before task 1)",
    )


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
