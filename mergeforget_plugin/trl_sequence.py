"""Run a list of tasks through TRL's ``SFTTrainer`` one after another, carrying one SLAO LoRA."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .callback import MergeForgetCallback
from .peft_bridge import export_adapter, write_lora
from .slao import MergeForgetConfig
from .state import ContinualState, StateError, load_state


@dataclass
class Task:
    """One task of a sequence.

    Args:
        name: Unique name; used for the task's output folder and in the continual state.
        train_dataset: A dataset `SFTTrainer` accepts (e.g. `prompt`/`completion` or `text` rows).
        eval_dataset: Held-out rows, evaluated after every task to build the loss matrix.
        overrides: `SFTConfig` fields for this task only, e.g. `{"learning_rate": 1e-4}`.
    """

    name: str
    train_dataset: Any
    eval_dataset: Any | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SequenceResult:
    """What `train_sequence` leaves behind.

    `eval_loss[after][task]` is the evaluation loss of `task` after training `after` (rows only for
    the tasks trained in this call; a resumed call has no rows for earlier tasks).
    """

    state: ContinualState
    adapter_dir: Path
    state_dir: Path
    eval_loss: dict[str, dict[str, float]]


def _check_tasks(tasks: list[Task], state: ContinualState | None, state_dir: Path) -> None:
    if not tasks:
        raise ValueError("tasks is empty: give at least one Task to train.")
    names = [task.name for task in tasks]
    for task in tasks:
        if not isinstance(task.name, str) or not task.name.strip() or "/" in task.name:
            raise ValueError(f"Task name {task.name!r} must be a non-empty string without '/'.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Task names must be unique; repeated: {duplicates}.")
    if state is not None and names[: len(state.finished_tasks)] != state.finished_tasks:
        raise StateError(
            f"The state in {state_dir} has finished the tasks {state.finished_tasks}, which are not the first tasks "
            f"of this sequence {names}. Resume with the same task order, or use a new output directory."
        )


def train_sequence(
    model: torch.nn.Module,
    tasks: list[Task],
    *,
    args: Any,
    output_dir: str | os.PathLike[str] | None = None,
    processing_class: Any = None,
    peft_config: Any = None,
    config: MergeForgetConfig | None = None,
    callbacks: list[Any] | None = None,
) -> SequenceResult:
    """Train ``tasks`` in order with ``SFTTrainer`` and SLAO; export one standard PEFT adapter.

    Resumable: tasks already finished in ``OUTPUT_DIR/state`` are skipped, so calling it again
    after a crash continues with the first unfinished task.

    Args:
        model: A `PeftModel`, or a base model together with `peft_config` (wrapped once here).
        tasks: The tasks, in training order.
        args: A `trl.SFTConfig` used for every task (its `output_dir` is replaced per task).
        output_dir: Root folder: `state/` (continual state), `adapter/` (the merged PEFT adapter),
            `tasks/<name>/` (trainer outputs). Defaults to `args.output_dir`.
        processing_class: The tokenizer, passed to `SFTTrainer`.
        peft_config: A `peft.LoraConfig`, when `model` is not a `PeftModel` yet.
        config: Strategy and ablations; defaults to the paper's SLAO.
        callbacks: Extra `TrainerCallback`s for every task; they run after the SLAO callback.

    Returns:
        A [`SequenceResult`] with the final state, the adapter folder and the loss matrix.
    """
    from peft import PeftModel, get_peft_model
    from trl import SFTTrainer

    config = config if config is not None else MergeForgetConfig()
    root = Path(output_dir if output_dir is not None else args.output_dir)
    state_dir, adapter_dir = root / "state", root / "adapter"
    state = load_state(state_dir)
    _check_tasks(tasks, state, state_dir)

    if not isinstance(model, PeftModel):
        if peft_config is None:
            raise ValueError("model is not a PeftModel: pass peft_config (a peft.LoraConfig) to wrap it.")
        from transformers import set_seed

        set_seed(args.seed)  # the LoRA init draws from the global RNG: same seed, same task-1 start
        model = get_peft_model(model, peft_config)

    if state is not None and len(state.finished_tasks) == len(tasks):
        write_lora(model, state.merged)

    eval_datasets = {task.name: task.eval_dataset for task in tasks if task.eval_dataset is not None}
    eval_loss: dict[str, dict[str, float]] = {}
    for task in tasks:
        if state is not None and task.name in state.finished_tasks:
            continue
        callback = MergeForgetCallback(state_dir, task_name=task.name, config=config)
        task_args = dataclasses.replace(args, output_dir=str(root / "tasks" / task.name), **task.overrides)
        trainer = SFTTrainer(
            model=model,
            args=task_args,
            train_dataset=task.train_dataset,
            eval_dataset=eval_datasets or None,
            processing_class=processing_class,
            callbacks=[callback, *(callbacks or [])],
        )
        trainer.train()
        state = callback.state
        if eval_datasets:
            metrics = trainer.evaluate()
            row = {name: float(metrics[f"eval_{name}_loss"]) for name in eval_datasets}
            eval_loss[task.name] = row
            if not all(math.isfinite(value) for value in row.values()):
                raise StateError(f"Evaluation after task {task.name!r} gave a non-finite loss: {row}.")

    assert state is not None  # _check_tasks guarantees at least one task
    export_adapter(state, adapter_dir)
    return SequenceResult(state=state, adapter_dir=adapter_dir, state_dir=state_dir, eval_loss=eval_loss)
