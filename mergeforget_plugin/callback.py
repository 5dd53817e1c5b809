"""A transformers/TRL callback that makes one ``trainer.train()`` call one task of an SLAO sequence."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .faults import pause_point
from .peft_bridge import adapter_config_dict, describe_model, export_adapter, read_lora, write_lora
from .slao import LoRAPair, MergeForgetConfig, merge_coefficient, merge_task, task_start_weights
from .state import ContinualState, StateError, check_writable, load_state, save_state


def wait_for_everyone() -> None:
    """A barrier across the processes of a distributed run; nothing in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _norm_summary(weights: dict[str, LoRAPair]) -> dict[str, float]:
    a_norms = torch.stack([pair.a.to(torch.float32).norm() for pair in weights.values()])
    b_norms = torch.stack([pair.b.to(torch.float32).norm() for pair in weights.values()])
    return {
        "a_norm_mean": float(a_norms.mean()),
        "b_norm_mean": float(b_norms.mean()),
        "b_norm_max": float(b_norms.max()),
    }


class MergeForgetCallback(TrainerCallback):
    """Train one task of a continual sequence with SLAO ([Qiao & Mahdavi, 2026](https://arxiv.org/abs/2512.23017)).

    Each ``trainer.train()`` with this callback is one task. The callback reads the continual state
    in ``state_dir``; for task ``i >= 2`` it sets the LoRA to the orthogonal initialization

    A_ft,i^(0) = Q_i^T  with  Q_i R_i = QR(A_ft,i-1^T),    B_ft,i^(0) = B_ft,i-1

    before the first step, and after the last step merges the task into the running LoRA

    A_merge,i = A_ft,i,    B_merge,i = B_merge,i-1 + (B_ft,i - B_merge,i-1) / sqrt(i),

    saves the new state atomically, and loads the merged LoRA into the model, so that evaluation
    after ``train()`` sees the adapter users deploy.

    Args:
        state_dir (`str` or `os.PathLike`):
            Directory of the continual state, shared by all tasks of the sequence. Created by the
            first task.
        task_name (`str`):
            Name of the task this trainer trains. A name already finished in the state is refused.
        config ([`MergeForgetConfig`], *optional*):
            Strategy and ablation switches; defaults to the paper's SLAO. Must match the state's.
        export_dir (`str` or `os.PathLike`, *optional*):
            If set, the merged LoRA is also written there as a standard PEFT adapter after the task.
        adapter_name (`str`, defaults to `"default"`):
            The PEFT adapter to carry.

    Example:

    ```python
    >>> from trl import SFTConfig, SFTTrainer
    >>> from mergeforget_plugin import MergeForgetCallback
    >>> trainer = SFTTrainer(
    ...     model=peft_model,
    ...     args=SFTConfig(output_dir="out/task2"),
    ...     train_dataset=task2_dataset,
    ...     callbacks=[MergeForgetCallback("out/state", task_name="task2")],
    ... )
    >>> trainer.train()  # starts from the orthogonal init, ends with the merged adapter loaded
    ```
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        task_name: str,
        config: MergeForgetConfig | None = None,
        export_dir: str | os.PathLike[str] | None = None,
        adapter_name: str = "default",
    ) -> None:
        if not isinstance(task_name, str) or not task_name.strip():
            raise ValueError("task_name must be a non-empty string naming the task this trainer trains.")
        self.state_dir = Path(state_dir)
        self.task_name = task_name
        self.config = config if config is not None else MergeForgetConfig()
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.adapter_name = adapter_name
        self.state: ContinualState | None = None
        self.task_index: int | None = None
        self._prepared = False
        self._finished = False
        self._started_at = 0.0

    def prepare(self, model: torch.nn.Module, *, apply_init: bool = True) -> int:
        """Check ``model`` against the state and set its LoRA to this task's starting point.

        Called by ``on_train_begin`` unless an integration called it earlier (the Axolotl plugin
        does, right after the model is loaded, so a mismatched state stops the run before the
        trainer is built). Runs once per callback. Returns the task index.
        """
        if self._prepared:
            return self.task_index
        self._started_at = time.time()
        signature, fingerprint = describe_model(model, self.adapter_name)
        check_writable(self.state_dir)
        state = load_state(self.state_dir)
        if state is None:
            state = ContinualState(
                signature=signature,
                base_model=fingerprint,
                config=self.config,
                adapter_config=adapter_config_dict(model, self.adapter_name),
            )
        else:
            where = str(self.state_dir)
            state.check_compatible(signature, fingerprint, where)
            state.check_config(self.config, where)
            if self.task_name in state.finished_tasks:
                raise StateError(
                    f"Task {self.task_name!r} already finished (task {state.finished_tasks.index(self.task_name) + 1} "
                    f"of {where}). Give the new task another name, or use a new state directory to start over."
                )
        self.state = state
        self.task_index = state.next_task_index
        self._prepared = True
        if apply_init:
            self.apply_init(model)
        return self.task_index

    def apply_init(self, model: torch.nn.Module) -> None:
        """Set the model's LoRA to this task's starting point (nothing to do for task 1)."""
        if not self._prepared:
            raise StateError("apply_init() needs prepare() first: the state has not been read.")
        if self.task_index >= 2:
            write_lora(
                model,
                task_start_weights(self.task_index, self.state.finetuned, self.state.merged, self.config),
                self.adapter_name,
            )

    def finish(
        self, model: torch.nn.Module, *, is_main_process: bool = True, extra: dict[str, Any] | None = None
    ) -> ContinualState:
        """Merge the trained task into the running LoRA, save the state and load the merged LoRA.

        Called by ``on_train_end``; later calls return the same state without merging again. Only
        the main process writes files; every process loads the merged LoRA into its model.
        """
        if self._finished:
            return self.state
        if self.state is None or self.task_index is None:
            raise StateError("finish() was called before prepare(): the task was never started with this callback.")
        finetuned = read_lora(model, self.adapter_name)
        previous = self.state.merged if self.state.merged else None
        merged = merge_task(self.task_index, previous, finetuned, self.config)
        pause_point("merge", self.task_index)
        record = {
            "task": self.task_name,
            "task_index": self.task_index,
            "merge_coefficient": merge_coefficient(self.task_index, self.config)
            if self.config.strategy == "slao"
            else 1.0,
            "seconds": round(time.time() - self._started_at, 3) if self._started_at else None,
            "finetuned": _norm_summary(finetuned),
            "merged": _norm_summary(merged),
            "adapter_bytes": sum(t.numel() * t.element_size() for pair in merged.values() for t in pair),
            **(extra or {}),
        }
        state = ContinualState(
            signature=self.state.signature,
            base_model=self.state.base_model,
            config=self.state.config,
            adapter_config=self.state.adapter_config,
            finished_tasks=[*self.state.finished_tasks, self.task_name],
            merged=merged,
            finetuned=finetuned,
            history=[*self.state.history, record],
        )
        if is_main_process:
            save_state(state, self.state_dir)
            if self.export_dir is not None:
                export_adapter(state, self.export_dir)
            pause_point("task-saved", self.task_index)
        # Other processes read this snapshot when the next task starts: wait until it is complete.
        wait_for_everyone()
        write_lora(model, merged, self.adapter_name)
        self.state = state
        self._finished = True
        return state

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        # A trainer resumed from a mid-task checkpoint holds weights that already started from
        # this task's init; setting the init again would throw that training away.
        self.prepare(model, apply_init=state.global_step == 0)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step == 2:
            pause_point("training-step", self.task_index)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._finished:
            return
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        extra = {"global_step": state.global_step, "last_train_loss": losses[-1] if losses else None}
        self.finish(kwargs["model"], is_main_process=state.is_world_process_zero, extra=extra)
