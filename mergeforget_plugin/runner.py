"""Run a recipe's tasks one after another through the real `axolotl train`, resumably.

For every task the runner writes a complete Axolotl config (``OUTPUT/configs/task-02-name.yaml``:
the base config, the task's datasets and overrides, and the plugin block) and runs
``python -m axolotl.cli.main train CONFIG --launcher python`` in a child process. A task counts
as finished only when its state snapshot is on disk, so a crash or kill at any moment loses at
most the task that was running; ``--resume`` starts again from the first unfinished task.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .recipe import EMBEDDED_MODEL_PREFIX, LoadedRecipe, RecipeError, load_recipe
from .report import evaluations_dir_for, save_evaluation, write_report
from .state import (
    ContinualState,
    StateError,
    StateMismatchError,
    check_writable,
    finished_task_names,
    load_state,
    tidy_state_dir,
)

PLUGIN_PATH = "mergeforget_plugin.MergeForgetPlugin"
AXOLOTL_ENVIRONMENT = {
    "AXOLOTL_DO_NOT_TRACK": "1",  # without it Axolotl's telemetry retries hang for minutes offline
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
_ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_PR_SET_PDEATHSIG = 1


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values in full: per-task configs are read by people, not only by Axolotl."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class RunError(StateError):
    """A sequence run that cannot start or continue, with what to do about it."""


@dataclass
class TaskRun:
    index: int
    name: str
    config_path: Path
    output_dir: Path
    seconds: float | None = None
    skipped: bool = False


def task_slug(index: int, name: str) -> str:
    return f"task-{index:02d}-{name}"


def _resolve_model(value: str, loaded: LoadedRecipe) -> str:
    if value.startswith(EMBEDDED_MODEL_PREFIX):
        from .models import DEFAULT_MODEL_NAME, default_model_dir

        requested = value[len(EMBEDDED_MODEL_PREFIX) :]
        if requested != DEFAULT_MODEL_NAME:
            raise RecipeError(
                f"base_model {value!r}: the embedded model is {EMBEDDED_MODEL_PREFIX}{DEFAULT_MODEL_NAME}."
            )
        return str(default_model_dir())
    candidate = loaded.resolve(value)
    return str(candidate) if candidate.exists() else value


def task_config(loaded: LoadedRecipe, index: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The complete Axolotl config for task ``index`` (1-based) of the recipe."""
    recipe = loaded.recipe
    task = recipe.tasks[index - 1]
    config = dict(base if base is not None else loaded.base_axolotl_config())
    config.update(task.overrides)
    config["base_model"] = _resolve_model(str(config["base_model"]), loaded)
    config["datasets"] = [{**entry, "path": str(loaded.resolve(entry["path"]))} for entry in task.datasets]
    if task.test_datasets:
        config["test_datasets"] = [
            {**entry, "path": str(loaded.resolve(entry["path"]))} for entry in task.test_datasets
        ]
        config["val_set_size"] = 0
    out = loaded.output_dir
    config["output_dir"] = str(out / "tasks" / task_slug(index, task.name))
    config.setdefault("dataset_prepared_path", str(out / "prepared"))
    plugins = list(config.get("plugins") or [])
    if PLUGIN_PATH not in plugins:
        plugins.append(PLUGIN_PATH)
    config["plugins"] = plugins
    config["mergeforget"] = {
        **recipe.mergeforget.model_dump(),
        "state_dir": str(loaded.state_dir),
        "task_name": task.name,
        "evaluation": [spec.model_dump() for spec in loaded.eval_specs()],
    }
    return config


def write_task_configs(loaded: LoadedRecipe) -> list[Path]:
    """Write one Axolotl YAML per task into ``OUTPUT/configs/`` and return their paths."""
    base = loaded.base_axolotl_config()
    base["base_model"] = _resolve_model(str(base["base_model"]), loaded)
    directory = loaded.output_dir / "configs"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, task in enumerate(loaded.recipe.tasks, start=1):
        path = directory / f"{task_slug(index, task.name)}.yaml"
        header = f"# Task {index} of {len(loaded.recipe.tasks)} of {loaded.path}\n# Run by hand: axolotl train {path}\n"
        temporary = path.with_suffix(".yaml.tmp")
        temporary.write_text(header + yaml.dump(task_config(loaded, index, base), Dumper=_PlainDumper, sort_keys=False))
        os.replace(temporary, path)
        paths.append(path)
    return paths


def _check_state(loaded: LoadedRecipe, state: ContinualState | None, resume: bool, base: dict[str, Any]) -> None:
    names = [task.name for task in loaded.recipe.tasks]
    if state is None:
        return
    done = state.finished_tasks
    if not resume:
        raise RunError(
            f"{loaded.state_dir} already holds {len(done)} finished task(s) ({', '.join(done)}). "
            "Pass --resume to continue the sequence, or set another output_dir to start a new one."
        )
    if names[: len(done)] != done:
        raise RunError(
            f"{loaded.state_dir} finished the tasks {done}, but the recipe's sequence starts with "
            f"{names[: len(done)]}. Resume with the same task order, or use another output_dir."
        )
    if state.config != loaded.recipe.mergeforget.to_config():
        raise StateMismatchError(
            f"{loaded.state_dir} was made with {state.config.to_dict()}, but the recipe asks for "
            f"{loaded.recipe.mergeforget.to_config().to_dict()}. A sequence keeps one strategy from start to end."
        )
    expected_rank = base.get("lora_r")
    ranks = set(state.signature.ranks.values())
    if expected_rank is not None and ranks != {int(expected_rank)}:
        raise StateMismatchError(
            f"{loaded.state_dir} holds a LoRA of rank {sorted(ranks)}, but the recipe sets lora_r: {expected_rank}. "
            "All tasks share one LoRA: use the rank of the earlier tasks, or another output_dir."
        )
    model_config = Path(str(base["base_model"])) / "config.json"
    if model_config.is_file():
        architecture = json.loads(model_config.read_text())
        different = [
            f"{key}={state.base_model.architecture.get(key)!r} in the state "
            f"vs {architecture.get(key)!r} in {model_config}"
            for key in _ARCHITECTURE_KEYS
            if key in state.base_model.architecture and architecture.get(key) != state.base_model.architecture[key]
        ]
        if different:
            raise StateMismatchError(
                f"{loaded.state_dir} was made for another base model: {'; '.join(different)}. "
                "Train with the base model of the earlier tasks, or use another output_dir."
            )


def _die_with_parent() -> None:
    # The training process must not outlive a killed runner, or it could finish a task that a
    # resumed run is training again.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _acquire_lock(output_dir: Path) -> int:
    output_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(output_dir / ".mergeforget.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunError(
            f"Another mergeforget run is using {output_dir}; wait for it to end or use another output_dir."
        ) from None
    return descriptor


def _failure_summary(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    ours = [
        line
        for line in lines
        if any(
            name in line
            for name in ("StateMismatchError", "StateError", "UnsupportedAdapterError", "SLAOMathError", "ValueError")
        )
    ]
    tail = ours[-3:] if ours else lines[-15:]
    return "\n".join(tail)


def _evaluate_unscored_last_task(
    loaded: LoadedRecipe, final: ContinualState, adapter: Path, base: dict[str, Any]
) -> None:
    """Score the final adapter if the last task's run was killed after saving it but before evaluating.

    (For earlier tasks the next task's run does this, inside Axolotl.)
    """
    specs = loaded.eval_specs()
    row = evaluations_dir_for(loaded.state_dir) / f"after-{len(final.finished_tasks):02d}.json"
    if not specs or row.exists():
        return
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .evaluation import eval_set_from_spec, evaluate_all

    dtype = torch.bfloat16 if base.get("bf16") is True else torch.float16 if base.get("fp16") else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if base.get("load_in_4bit"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    elif base.get("load_in_8bit"):
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model_path = str(base["base_model"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, **kwargs), adapter)
    tokenizer = AutoTokenizer.from_pretrained(str(base.get("tokenizer_config") or model_path))
    accuracy = evaluate_all(model.eval(), tokenizer, [eval_set_from_spec(spec) for spec in specs])
    save_evaluation(row.parent, len(final.finished_tasks), final.finished_tasks[-1], accuracy)


def run_recipe(
    recipe_path: str | os.PathLike[str],
    *,
    resume: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    stream_output: bool = False,
) -> list[TaskRun]:
    """Validate the recipe, then train every unfinished task with `axolotl train`.

    Returns one :class:`TaskRun` per task (finished earlier ones marked ``skipped``). Raises
    :class:`~mergeforget_plugin.recipe.RecipeError`, :class:`RunError` or
    :class:`~mergeforget_plugin.state.StateError` before anything trains when the recipe, the
    output directory or the state does not fit.
    """
    loaded = load_recipe(recipe_path)
    base = loaded.base_axolotl_config()
    base["base_model"] = _resolve_model(str(base["base_model"]), loaded)
    _check_state(loaded, load_state(loaded.state_dir), resume, base)
    check_writable(loaded.output_dir, "output directory")
    config_paths = write_task_configs(loaded)
    tasks = loaded.recipe.tasks
    runs = [
        TaskRun(i, task.name, path, loaded.output_dir / "tasks" / task_slug(i, task.name))
        for i, (task, path) in enumerate(zip(tasks, config_paths, strict=True), start=1)
    ]
    if dry_run:
        echo(f"Recipe {loaded.path} is valid: {len(tasks)} task(s). Per-task Axolotl configs:")
        for run in runs:
            echo(f"  axolotl train {run.config_path}")
        return runs

    lock = _acquire_lock(loaded.output_dir)
    # A run killed between a snapshot's rename and the removal of the older ones left them behind.
    tidy_state_dir(loaded.state_dir)
    environment = {**os.environ}
    for key, value in AXOLOTL_ENVIRONMENT.items():
        environment.setdefault(key, value)
    try:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(runs), desc="tasks", unit="task", disable=None)
        for run in runs:
            if run.name in finished_task_names(loaded.state_dir):
                run.skipped = True
                progress.update(1)
                continue
            run.output_dir.mkdir(parents=True, exist_ok=True)
            log_path = run.output_dir / "train.log"
            progress.set_postfix_str(run.name)
            echo(f"[task {run.index}/{len(runs)}] {run.name}: axolotl train {run.config_path} (log: {log_path})")
            command = [sys.executable, "-m", "axolotl.cli.main", "train", str(run.config_path), "--launcher", "python"]
            started = time.time()
            with open(log_path, "w") as log:
                child = subprocess.Popen(
                    command,
                    stdout=None if stream_output else log,
                    stderr=subprocess.STDOUT if not stream_output else None,
                    env=environment,
                    preexec_fn=_die_with_parent,
                    pass_fds=(lock,),
                )
                returncode = child.wait()
            run.seconds = time.time() - started
            if returncode != 0 or run.name not in finished_task_names(loaded.state_dir):
                raise RunError(
                    f"Task {run.index} ({run.name}) did not finish (axolotl exited with {returncode}). "
                    f"Earlier tasks are safe in {loaded.state_dir}; fix the cause and run again with --resume.\n"
                    f"From {log_path}:\n{_failure_summary(log_path)}"
                )
            write_report(loaded.output_dir, recipe=str(loaded.path))
            echo(f"[task {run.index}/{len(runs)}] {run.name}: done in {run.seconds:.1f} s")
            progress.update(1)
        progress.close()
    finally:
        os.close(lock)

    from .peft_bridge import export_adapter

    final = load_state(loaded.state_dir)
    if final is None:
        raise StateError(f"No state in {loaded.state_dir} after the run.")
    adapter = export_adapter(final, loaded.output_dir / "adapter")
    _evaluate_unscored_last_task(loaded, final, adapter, base)
    reports = write_report(loaded.output_dir, recipe=str(loaded.path))
    echo(f"All {len(final.finished_tasks)} task(s) finished. Merged adapter: {adapter}")
    echo(f"Report: {', '.join(str(path) for path in reports)}")
    return runs
