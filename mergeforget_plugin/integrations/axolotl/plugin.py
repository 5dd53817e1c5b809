"""The Axolotl plugin: ``axolotl train`` with ``plugins: [mergeforget_plugin.MergeForgetPlugin]`` is one task.

The plugin holds its :class:`~mergeforget_plugin.engine.ContinualTask`. The task begins in
``post_model_load``, after every LoRA init Axolotl does and before the trainer exists, so a
mismatched state stops the run before any step. The trainer carries a ``TaskCallback`` over the
same task for what needs the trainer (progress, the trainer's rank at the end). The task ends when
training ends, before Axolotl saves the model, so what Axolotl saves is the merged LoRA. The
settings are checked by Axolotl's own config validation (see ``args.py``).
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin

from ...core.layout import RunLayout
from ...data.models import resolve_model_reference
from ...engine import ContinualTask
from ...errors import TrainingDataError
from ..callback import TaskCallback
from .args import MergeForgetSettings
from .failure import record_failures


class MergeForgetPlugin(BasePlugin):
    """Axolotl plugin for SLAO continual learning with a single LoRA (arXiv:2512.23017)."""

    def __init__(self) -> None:
        super().__init__()
        self.task: ContinualTask | None = None

    def get_input_args(self) -> str:
        return "mergeforget_plugin.integrations.axolotl.args.MergeForgetArgs"

    def register(self, cfg: Any) -> None:
        # Every training process loads the plugin: from here on an exception that ends it is
        # written where the recipe runner looks (when the runner started the process).
        record_failures()
        # Runs before Axolotl validates the config: the embedded model's name becomes the local
        # checkpoint it is converted to, which Axolotl can load.
        if cfg.get("base_model"):
            cfg["base_model"] = resolve_model_reference(str(cfg["base_model"]))

    def pre_lora_load(self, cfg: Any, model: Any) -> None:
        # The task-1 LoRA init draws from the global RNG, which Axolotl's model and dataset
        # loading leave in a run-dependent state; seeding here makes a re-run after a kill start
        # task 1 where the killed run did. (Tasks 2+ start from the state, not the RNG.)
        if cfg.get("seed") is not None:
            from transformers import set_seed

            set_seed(int(cfg.get("seed")))

    def post_model_load(self, cfg: Any, model: Any) -> None:
        settings = MergeForgetSettings.model_validate(dict(cfg["mergeforget"]))
        tokenizer = None
        if settings.evaluation or settings.probes:
            from axolotl.loaders import load_tokenizer

            tokenizer = load_tokenizer(cfg)
        # Held-out rows of an Axolotl type are tokenized as this config tokenizes training rows.
        eval_sets = [spec.to_eval_set(tokenizer, cfg) for spec in settings.evaluation]
        probes = [spec.to_probe() for spec in settings.probes]
        self.task = ContinualTask(
            RunLayout.of_state_dir(settings.state_dir),
            settings.task_name,
            settings=settings.continual_config(),
            eval_sets=eval_sets,
            probes=probes,
            sequence=settings.sequence,
            train_rows=settings.train_rows(),
        )
        # Under DeepSpeed ZeRO-3 the model is partitioned here but has no engine yet to gather its
        # weights for a forward pass: the missing evaluation rows wait for the trainer's start.
        from ...peft_bridge import is_sharded

        self.task.begin(model, tokenizer, score_rows=not is_sharded(model))

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        # Axolotl drops the tokenized rows longer than sequence_len (its default
        # excess_length_strategy) or shorter than min_sample_len; a task left with none fails at its
        # first step with torch's "num_samples=0", which names neither the task nor the setting.
        # (With sample_packing on, Axolotl counts the steps while it loads the data and fails
        # there, before any plugin hook sees the dataset.) No earlier hook sees the tokenized rows.
        try:
            left = len(trainer.train_dataset)
        except TypeError:  # a streamed dataset, or none: nothing to count before it is read
            return
        if self.task is None or left:
            return
        strategy = cfg.get("excess_length_strategy") or "drop"
        dropped = f"longer than sequence_len ({cfg.get('sequence_len')} tokens; excess_length_strategy {strategy!r})"
        if cfg.get("min_sample_len"):
            dropped += f" or shorter than min_sample_len ({cfg.get('min_sample_len')})"
        truncate = "" if strategy == "truncate" else ", set excess_length_strategy: truncate"
        raise TrainingDataError(
            f"Task {self.task.name!r}: no training row is left once Axolotl has dropped those {dropped}. Raise "
            f"sequence_len (the recipe's `axolotl:` or the task's `overrides:`){truncate} or shorten the rows; "
            'Axolotl\'s log says how many it dropped ("Dropped N sequences outside valid range").'
        )

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        return [TaskCallback(self.task)] if self.task is not None else []

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl calls post_train twice per run; the task ends once (at the trainer's
        # on_train_end, or here if training ended without it).
        if self.task is not None:
            self.task.end(model)
