"""Axolotl integration: one line under `plugins:` makes `axolotl train` run one SLAO task.

```yaml
plugins:
  - mergeforget_plugin.MergeForgetPlugin
mergeforget:
  state_dir: ./outputs/cl/state   # shared by every task of the sequence
  task_name: sentiment            # this run's task
```

The plugin is a thin layer over :class:`~mergeforget_plugin.callback.MergeForgetCallback`:
the orthogonal init is applied in ``post_model_load`` (after every LoRA init Axolotl does, and
before the trainer exists, so a mismatched state stops the run before any step), the merge and
state save run once when training ends, and the merged LoRA is what Axolotl then saves.
"""

from __future__ import annotations

import os
from typing import Any

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .callback import MergeForgetCallback
from .peft_bridge import write_lora
from .recipe import EMBEDDED_MODEL_PREFIX, EvalSpec, StrategySettings
from .report import evaluations_dir_for, save_evaluation
from .state import pickled_adapter_problem


class MergeForgetSettings(StrategySettings):
    """The `mergeforget:` block of an Axolotl config."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(description="continual state directory shared by every task of the sequence")
    task_name: str = Field(description="name of the task this run trains; must not be finished in state_dir yet")
    export_dir: str | None = Field(None, description="also write the merged LoRA here as a PEFT adapter")
    evaluation: list[EvalSpec] = Field(
        default_factory=list,
        description="held-out sets scored with the merged LoRA after this task (and zero-shot before task 1)",
    )


class MergeForgetArgs(BaseModel):
    """Plugin input args merged into Axolotl's config schema."""

    mergeforget: MergeForgetSettings | None = Field(
        None,
        json_schema_extra={"description": "SLAO continual learning: state_dir, task_name and strategy options"},
    )


def _settings(cfg: Any) -> MergeForgetSettings:
    block = cfg.get("mergeforget") if hasattr(cfg, "get") else None
    if not block:
        raise ValueError(
            "plugins lists mergeforget_plugin.MergeForgetPlugin but the config has no `mergeforget:` block. "
            "Add at least:\nmergeforget:\n  state_dir: ./outputs/cl/state\n  task_name: my-task"
        )
    if isinstance(block, MergeForgetSettings):
        return block
    try:
        return MergeForgetSettings.model_validate(dict(block))
    except ValidationError as error:
        problems = "; ".join(f"mergeforget.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"Invalid mergeforget block: {problems}") from None


class MergeForgetPlugin(BasePlugin):
    """Axolotl plugin for SLAO continual learning with a single LoRA (arXiv:2512.23017)."""

    def __init__(self) -> None:
        super().__init__()
        self.callback: MergeForgetCallback | None = None
        self._evaluated = False

    def get_input_args(self) -> str:
        return "mergeforget_plugin.axolotl_plugin.MergeForgetArgs"

    def register(self, cfg: dict) -> None:
        _settings(cfg)
        base_model = str(cfg.get("base_model") or "")
        if base_model.startswith(EMBEDDED_MODEL_PREFIX):
            # `base_model: mergeforget://SmolLM2-135M-Instruct` names the embedded default model;
            # Axolotl needs the local checkpoint it is converted to.
            from .models import DEFAULT_MODEL_NAME, default_model_dir

            if base_model != EMBEDDED_MODEL_PREFIX + DEFAULT_MODEL_NAME:
                raise ValueError(
                    f"base_model {base_model!r}: the embedded model is {EMBEDDED_MODEL_PREFIX}{DEFAULT_MODEL_NAME}."
                )
            cfg["base_model"] = str(default_model_dir())
        adapter = cfg.get("adapter")
        if adapter not in ("lora", "qlora"):
            raise ValueError(
                f"mergeforget carries one LoRA across tasks, so it needs `adapter: lora` or `adapter: qlora` "
                f"(the config has adapter: {adapter!r})."
            )
        if cfg.get("lora_model_dir"):
            problem = pickled_adapter_problem(str(cfg.get("lora_model_dir")), "lora_model_dir")
            if problem:
                raise ValueError(problem)
        if cfg.get("peft_use_dora"):
            raise ValueError("peft_use_dora: true is not supported: the SLAO merge is defined for plain LoRA.")

    def pre_lora_load(self, cfg: Any, model: Any) -> None:
        # The task-1 LoRA init draws from the global RNG, which Axolotl's model and dataset
        # loading leave in a run-dependent state; seeding here makes a re-run after a kill start
        # task 1 where the killed run did. (Tasks 2+ start from the state, not the RNG.)
        if cfg.get("seed") is not None:
            from transformers import set_seed

            set_seed(int(cfg.get("seed")))

    def post_model_load(self, cfg: Any, model: Any) -> None:
        settings = _settings(cfg)
        self.callback = MergeForgetCallback(
            settings.state_dir,
            task_name=settings.task_name,
            config=settings.to_config(),
            export_dir=settings.export_dir,
        )
        task_index = self.callback.prepare(model, apply_init=False)
        previous_row = evaluations_dir_for(settings.state_dir) / f"after-{task_index - 1:02d}.json"
        if settings.evaluation and not previous_row.exists():
            if task_index == 1:
                # Before task 1 the LoRA's B is zero: the model is the base model, so this row is b_j.
                self._evaluate(cfg, model, settings, 0, None)
            else:
                # The previous task's run was killed after its state was saved but before it
                # evaluated: score that task's merged LoRA now, before this task's init replaces it.
                state = self.callback.state
                write_lora(model, state.merged)
                self._evaluate(cfg, model, settings, task_index - 1, state.finished_tasks[-1])
        self.callback.apply_init(model)

    def _evaluate(self, cfg: Any, model: Any, settings: MergeForgetSettings, task_index: int, task: str | None) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        from axolotl.loaders import load_tokenizer

        from .evaluation import eval_set_from_spec, evaluate_all

        accuracy = evaluate_all(model, load_tokenizer(cfg), [eval_set_from_spec(spec) for spec in settings.evaluation])
        save_evaluation(evaluations_dir_for(settings.state_dir), task_index, task, accuracy)

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        return [self.callback] if self.callback is not None else []

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl calls post_train twice per run; the callback merges on its first call (or at
        # on_train_end, whichever comes first) and ignores the rest.
        if self.callback is None:
            return
        self.callback.finish(model, is_main_process=int(os.environ.get("RANK", "0")) == 0)
        settings = _settings(cfg)
        if settings.evaluation and not self._evaluated:
            self._evaluated = True
            self._evaluate(cfg, model, settings, self.callback.task_index, self.callback.task_name)
