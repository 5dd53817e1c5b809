"""Run a list of tasks through TRL's ``SFTTrainer`` one after another, carrying one SLAO LoRA."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .callback import MergeForgetCallback, wait_for_everyone
from .evaluation import eval_set_from_rows, evaluate_all
from .peft_bridge import export_adapter, write_lora
from .report import evaluations_dir_for, load_evaluations, save_evaluation, write_report
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
        metric: How `eval_dataset` rows (`prompt`/`completion`) are scored for the accuracy matrix:
            `"choice"` ranks the candidate answers by log-likelihood, `"exact_match"` generates.
        options: Candidate answers for `"choice"`; default: every completion in the task's data.
    """

    name: str
    train_dataset: Any
    eval_dataset: Any | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "choice"
    options: list[str] | None = None


@dataclass
class SequenceResult:
    """What `train_sequence` leaves behind.

    `eval_loss[after][task]` and `accuracy[after][task]` are the evaluation loss and accuracy of
    `task` after training `after` (rows only for the tasks trained in this call; the report in
    `report_files` covers every task of the sequence, resumed or not).
    """

    state: ContinualState
    adapter_dir: Path
    state_dir: Path
    eval_loss: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    report_files: list[Path]


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

    # Under accelerate/torchrun every process runs this function; only the first one writes files.
    # (`args` knows the process layout with the device settings the trainers will use.)
    is_main_process = args.process_index == 0
    eval_datasets = {task.name: task.eval_dataset for task in tasks if task.eval_dataset is not None}
    eval_sets = [
        eval_set_from_rows(
            task.name, task.eval_dataset, metric=task.metric, options=task.options, option_rows=task.train_dataset
        )
        for task in tasks
        if task.eval_dataset is not None
    ]
    evaluations = evaluations_dir_for(state_dir)
    if eval_sets and processing_class is None:
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(model.config.name_or_path)
    zero_shot = next((r["accuracy"] for r in load_evaluations(evaluations) if r["task_index"] == 0), {})
    unseen = [eval_set for eval_set in eval_sets if eval_set.task not in zero_shot]
    if unseen:
        with model.disable_adapter():  # b_j: the base model itself, whatever the LoRA holds now
            zero_shot = {**zero_shot, **evaluate_all(model, processing_class, unseen)}
        if is_main_process:
            save_evaluation(evaluations, 0, None, zero_shot)
    eval_loss: dict[str, dict[str, float]] = {}
    accuracy: dict[str, dict[str, float]] = {}
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
        if eval_sets:
            accuracy[task.name] = evaluate_all(model, processing_class, eval_sets)
            if is_main_process:
                save_evaluation(evaluations, state.next_task_index - 1, task.name, accuracy[task.name])

    assert state is not None  # _check_tasks guarantees at least one task
    report_files = []
    if is_main_process:
        export_adapter(state, adapter_dir)
        report_files = write_report(root)
    wait_for_everyone()
    return SequenceResult(
        state=state,
        adapter_dir=adapter_dir,
        state_dir=state_dir,
        eval_loss=eval_loss,
        accuracy=accuracy,
        report_files=report_files,
    )
