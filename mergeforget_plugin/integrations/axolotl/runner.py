"""Run a recipe's tasks one after another through the real ``axolotl train``, resumably.

For every task the runner writes a complete Axolotl config (``configs/task-02-name.yaml`` of the
run's :class:`~mergeforget_plugin.core.layout.RunLayout`: the base config, the task's datasets and
overrides, and the plugin block) and runs ``python -m axolotl.cli.main train CONFIG --launcher
python`` in a child process. Inside it, the plugin runs the task through the engine. A task
counts as finished only when its state snapshot is on disk, so a crash or kill at any moment loses
at most the task that was running; ``--resume`` starts again from the first unfinished task.
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

import yaml

from ...core.atomic import write_atomic
from ...core.environment import offline_environment
from ...core.layout import RunLayout
from ...core.replay import buffer_fields
from ...core.state import (
    BaseModelFingerprint,
    ContinualState,
    LoRASignature,
    architecture_of,
    check_writable,
    finished_task_names,
    load_state,
    tidy_state_dir,
)
from ...data.models import resolve_model_reference
from ...driver import TaskTrainer, drive_sequence
from ...engine import check_sequence, replay_for
from ...errors import ForgettingGuardError, RecipeError, RunError
from ...preflight import TaskPlan, replay_problems
from ...settings import ContinualConfig
from .failure import FAILURE_FILE_VARIABLE, describe_failure, read_failure
from .recipe import LoadedRecipe, load_recipe

PLUGIN_PATH = "mergeforget_plugin.MergeForgetPlugin"
_PR_SET_PDEATHSIG = 1


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values in full: per-task configs are read by people, not only by Axolotl."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass
class TaskRun:
    index: int
    name: str
    config_path: Path
    output_dir: Path
    seconds: float | None = None
    skipped: bool = False


def _resolve_model(value: str, loaded: LoadedRecipe) -> str:
    try:
        resolved = resolve_model_reference(value)
    except ValueError as error:
        raise RecipeError(str(error)) from None
    if resolved != value:
        return resolved
    candidate = loaded.resolve(value)
    return str(candidate) if candidate.exists() else value


def _check_model(value: str, where: str) -> None:
    """``base_model`` must be a model folder, or a model id the Hub resolves (offline: one in the cache).

    Otherwise the first task's ``axolotl train`` would fail while loading, with a traceback about
    repository ids.
    """
    path = Path(value)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecipeError(f"{where}: {value} has no config.json. Point base_model at a model folder.")
        return
    if path.is_absolute() or value.startswith((".", "~")) or value.count("/") > 1:
        raise RecipeError(
            f"{where}: the directory {value} does not exist. Point base_model at a local model folder "
            "(relative paths are relative to the recipe file) or a Hugging Face model id."
        )
    from huggingface_hub import constants, hf_hub_download

    try:
        hf_hub_download(value, "config.json")
    except Exception as error:  # a malformed id, a cache miss offline, a 404, a gated model: all mean the same here
        offline = " offline (HF_HUB_OFFLINE=1: only models already in the cache)" if constants.HF_HUB_OFFLINE else ""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(
            f"{where}: {value!r} is neither a local directory nor a model id that resolves{offline} ({reason}). "
            "Point base_model at a local model folder or a Hugging Face model id you can download."
        ) from None


def base_config(loaded: LoadedRecipe) -> dict[str, Any]:
    """The Axolotl settings shared by every task, with ``base_model`` resolved to a local path when it is
    one, and checked to name a model that can be loaded."""
    base = loaded.base_axolotl_config()
    base["base_model"] = _resolve_model(str(base["base_model"]), loaded)
    where = (
        "axolotl.base_model"
        if "base_model" in loaded.recipe.axolotl
        else f"base_model in {loaded.resolve(str(loaded.recipe.base_config))}"
    )
    _check_model(str(base["base_model"]), f"{loaded.path}: {where}")
    return base


# Keys of a task's first dataset entry that say where its rows are, not how they read: the
# replayed rows' entry takes the rest (the task's own format) with its own local path.
_SOURCE_KEYS = ("path", "data_files", "name", "revision", "split", "shards", "ds_type")


def replayed_dataset(loaded: LoadedRecipe, index: int) -> dict[str, Any] | None:
    """The dataset entry of task ``index``'s replayed rows (``None`` when it replays none): the rows
    are written from the state just before the task starts (:func:`write_replayed_rows`)."""
    if loaded.replayed_row_count(index) == 0:
        return None
    task = loaded.recipe.tasks[index - 1]
    own = {key: value for key, value in task.datasets[0].items() if key not in _SOURCE_KEYS}
    return {"path": str(loaded.layout.replayed_rows(index, task.name)), "ds_type": "json", **own}


def write_replayed_rows(loaded: LoadedRecipe, index: int) -> Path | None:
    """Write the rows task ``index`` replays, drawn from the state the earlier tasks left: a function
    of that state, so a resumed run writes the same rows an uninterrupted one did."""
    if replayed_dataset(loaded, index) is None:
        return None
    task = loaded.recipe.tasks[index - 1]
    rows = replay_for(load_state(loaded.layout.state), task.name, loaded.train_row_count(index), loaded.replay)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_atomic(loaded.layout.replayed_rows(index, task.name), lines)


def task_config(
    loaded: LoadedRecipe, index: int, base: dict[str, Any] | None = None, *, accept_regression: bool = False
) -> dict[str, Any]:
    """The complete Axolotl config for task ``index`` (1-based) of the recipe (``accept_regression``:
    the guard takes a task whose merge breaks its limit)."""
    recipe, layout = loaded.recipe, loaded.layout
    task = recipe.tasks[index - 1]
    config = dict(base if base is not None else base_config(loaded))
    config.update(task.overrides)
    config["datasets"] = [{**entry, "path": str(loaded.resolve(entry["path"]))} for entry in task.datasets]
    replayed = replayed_dataset(loaded, index)
    if replayed is not None:
        config["datasets"].append(replayed)
    if task.test_datasets:
        config["test_datasets"] = [
            {**entry, "path": str(loaded.resolve(entry["path"]))} for entry in task.test_datasets
        ]
        config["val_set_size"] = 0
    config["output_dir"] = str(layout.task_dir(index, task.name))
    config.setdefault("dataset_prepared_path", str(layout.prepared))
    plugins = list(config.get("plugins") or [])
    if PLUGIN_PATH not in plugins:
        plugins.append(PLUGIN_PATH)
    config["plugins"] = plugins
    config["mergeforget"] = {
        **recipe.mergeforget.model_dump(),
        "state_dir": str(layout.state),
        "task_name": task.name,
        "evaluation": [spec.model_dump() for spec in loaded.eval_specs()],
        "probes": [spec.model_dump(exclude_unset=True) for spec in loaded.probe_specs()],
        "eval_schedule": recipe.eval.schedule,
        "sequence": [entry.name for entry in recipe.tasks],
    }
    if loaded.replay is not None:
        config["mergeforget"]["replay"] = loaded.replay.to_dict()
        config["mergeforget"]["train_files"] = [str(path) for path in loaded.train_files(index)]
    guard = loaded.guard_settings(accept_regression)
    if guard is not None:
        config["mergeforget"]["guard"] = guard
    return config


def write_task_configs(
    loaded: LoadedRecipe, base: dict[str, Any] | None = None, *, accept_regression: bool = False
) -> list[Path]:
    """Write one Axolotl YAML per task into the layout's ``configs/`` and return their paths
    (``base``: :func:`base_config`'s result when the caller has it)."""
    base = base if base is not None else base_config(loaded)
    tasks = loaded.recipe.tasks
    paths = []
    for index, task in enumerate(tasks, start=1):
        path = loaded.layout.task_config(index, task.name)
        header = f"# Task {index} of {len(tasks)} of {loaded.path}\n# Run by hand: axolotl train {path}\n"
        if replayed_dataset(loaded, index) is not None:
            header += f"# (the runner writes {loaded.layout.replayed_rows(index, task.name)} from the state first)\n"
        config = task_config(loaded, index, base, accept_regression=accept_regression)
        body = yaml.dump(config, Dumper=_PlainDumper, sort_keys=False)
        paths.append(write_atomic(path, header + body))
    return paths


def check_axolotl_configs(loaded: LoadedRecipe, config_paths: list[Path], environment: dict[str, str]) -> None:
    """Axolotl's own validation of every per-task config (see preflight.py), before any task trains."""
    from .preflight import axolotl_problems

    try:
        found = axolotl_problems(config_paths, environment)
    except RuntimeError as error:
        raise RecipeError(str(error)) from None
    problems: dict[str, str] = {}  # keyed by source, so a setting every task shares is named once
    for index, path in enumerate(config_paths, start=1):
        for problem in found.get(str(path), []):
            key, _, message = problem.partition(": ")
            source = loaded.source_of(key, index) if message else None
            if source is None and message == "Field required" and key.isidentifier():
                source, message = (
                    f"axolotl.{key}",
                    "required by Axolotl, but set nowhere (add it under axolotl: or to base_config)",
                )
            elif source is None:  # a check across settings, or a key the runner wrote: name the task's config
                source, message = str(path), problem
            problems.setdefault(source, message)
    if problems:
        lines = "\n  - ".join(f"{source}: {message}" for source, message in problems.items())
        raise RecipeError(f"Axolotl rejects the task configs of {loaded.path}:\n  - {lines}")


def declared_setup(config: dict[str, Any], state: ContinualState) -> tuple[LoRASignature, BaseModelFingerprint]:
    """What an Axolotl config says of the LoRA and the base model, before any model is loaded.

    What only a loaded model tells (the adapted module names; ``lora_alpha``, rsLoRA or the target
    modules when the config leaves them to Axolotl) is taken from the state, so it cannot differ
    here; the plugin checks the loaded model again when each task begins.
    """
    known = state.signature
    rank, targets = config.get("lora_r"), config.get("lora_target_modules")
    signature = LoRASignature(
        ranks={name: int(rank) for name in known.ranks} if rank is not None else dict(known.ranks),
        lora_alpha=float(config["lora_alpha"]) if config.get("lora_alpha") is not None else known.lora_alpha,
        use_rslora=bool(config["peft_use_rslora"]) if config.get("peft_use_rslora") is not None else known.use_rslora,
        target_modules=sorted(targets)
        if isinstance(targets, list) and not config.get("lora_target_linear")
        else known.target_modules,
    )
    model_config = Path(str(config["base_model"])) / "config.json"
    architecture = architecture_of(json.loads(model_config.read_text())) if model_config.is_file() else {}
    return signature, BaseModelFingerprint(architecture=architecture, embedding_signature=None)


def _die_with_parent() -> None:
    # The training process must not outlive a killed runner, or it could finish a task that a
    # resumed run is training again.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _acquire_lock(layout: RunLayout) -> int:
    layout.root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunError(
            f"Another mergeforget run is using {layout.root}; wait for it to end or use another output_dir."
        ) from None
    return descriptor


class _StepBar:
    """One progress bar over the steps of every task of the run (on a terminal only).

    A task's planned steps come from its config's ``max_steps``, or from the training process
    once it has counted them (``RunLayout.task_progress``); the total is shown once every task's
    plan is known.
    """

    def __init__(self, runs: list[TaskRun], layout: RunLayout) -> None:
        from tqdm.auto import tqdm

        self.layout, self.runs = layout, runs
        self.planned = {run.index: _planned_steps(run.config_path) for run in runs}
        self.done = dict.fromkeys(self.planned, 0)
        self.bar = tqdm(total=self._total(), unit="step", dynamic_ncols=True, disable=None)

    def _total(self) -> int | None:
        return None if None in self.planned.values() else sum(self.planned.values())

    def write(self, line: str) -> None:
        self.bar.write(line)

    def start(self, run: TaskRun) -> None:
        self.bar.set_description(f"task {run.index}/{len(self.runs)} {run.name}")

    def poll(self, run: TaskRun) -> None:
        try:
            progress = json.loads(self.layout.task_progress(run.index, run.name).read_text())
        except (OSError, ValueError):
            return  # not started yet, or replaced while being read
        if progress.get("max_steps"):
            self.planned[run.index] = int(progress["max_steps"])
        self.done[run.index] = int(progress.get("step") or 0)
        self._refresh()

    def finish(self, run: TaskRun) -> None:
        if self.planned[run.index] is not None:
            self.done[run.index] = self.planned[run.index]
        self._refresh()

    def _refresh(self) -> None:
        self.bar.total = self._total()
        self.bar.n = sum(self.done.values())
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _planned_steps(config_path: Path) -> int | None:
    max_steps = (yaml.safe_load(config_path.read_text()) or {}).get("max_steps")
    return int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else None


def _failure_summary(failure_path: Path, log_path: Path) -> str:
    """The failed process's own record of its exception, else the end of its log (killed, say)."""
    record = read_failure(failure_path)
    if record is not None:
        return describe_failure(record)
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    return "\n".join(lines[-15:])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunPlan:
    """A recipe run once everything is checked: what the pipeline's later steps read, computed once."""

    loaded: LoadedRecipe
    base: dict[str, Any]
    state: ContinualState | None
    runs: list[TaskRun]
    environment: dict[str, str]

    @property
    def layout(self) -> RunLayout:
        return self.loaded.layout


def _checked_state(loaded: LoadedRecipe, base: dict[str, Any], resume: bool) -> ContinualState | None:
    """The state of the run's output directory, checked against the recipe (``None``: a new run)."""
    layout = loaded.layout
    state = load_state(layout.state)
    if state is not None and not resume:
        raise RunError(
            f"{layout.state} already holds {len(state.finished_tasks)} finished task(s) "
            f"({', '.join(state.finished_tasks)}). Pass --resume to continue the sequence, or set another "
            "output_dir to start a new one."
        )
    if state is not None:
        check_sequence(
            layout,
            [task.name for task in loaded.recipe.tasks],
            loaded.recipe.mergeforget.to_config(),
            state=state,
            declared=declared_setup(base, state),
            declared_in="the recipe's Axolotl settings",
            replay=loaded.replay,
        )
        _check_buffer_fields(loaded, state)
    check_writable(layout.root, "output directory")
    return state


def _check_buffer_fields(loaded: LoadedRecipe, state: ContinualState) -> None:
    """On resume, the rows the state's buffer holds must read as every unfinished task's rows do
    (the recipe's files may have changed since the earlier tasks trained): the pre-flight's replay
    rule, against the state."""
    if loaded.replay is None or not buffer_fields(state.replay_buffer):
        return
    plans = [
        TaskPlan(task.name, f"{loaded.path}: task {index} ({task.name!r}), datasets.0", fields=fields)
        for index, task in enumerate(loaded.recipe.tasks, start=1)
        if task.name not in state.finished_tasks
        for fields in [loaded.file_rows(loaded.train_files(index)[0])[1]]
    ]
    settings = ContinualConfig(replay=loaded.replay)
    problems = replay_problems(settings, plans, state, str(loaded.layout.state), label="")
    if problems:
        raise RecipeError(str(problems[0]))


def _training_environment() -> dict[str, str]:
    # Axolotl's torchrun launcher runs `torchrun` from PATH: make it this Python's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return offline_environment(PATH=path)


def plan_run(
    recipe_path: str | os.PathLike[str],
    *,
    resume: bool = False,
    strategy: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    accept_regression: bool = False,
) -> RunPlan:
    """Every check a run makes before it trains, each file read once: the recipe, the model, the
    state, the per-task configs (written) and Axolotl's own validation of them."""
    loaded = load_recipe(recipe_path).with_overrides(
        strategy=strategy, output_dir=None if output_dir is None else str(output_dir)
    )
    if accept_regression and loaded.recipe.guard is None:
        raise RecipeError(f"--accept-regression takes a task the guard refused, but {loaded.path} sets no guard.")
    base = base_config(loaded)
    state = _checked_state(loaded, base, resume)
    config_paths = write_task_configs(loaded, base, accept_regression=accept_regression)
    environment = _training_environment()
    check_axolotl_configs(loaded, config_paths, environment)
    runs = [
        TaskRun(i, task.name, path, loaded.layout.task_dir(i, task.name))
        for i, (task, path) in enumerate(zip(loaded.recipe.tasks, config_paths, strict=True), start=1)
    ]
    return RunPlan(loaded, base, state, runs, environment)


def _command(config_path: Path, processes: int | None) -> list[str]:
    command = [sys.executable, "-m", "axolotl.cli.main", "train", str(config_path)]
    if processes is None:
        return [*command, "--launcher", "python"]
    torchrun = ["--nproc_per_node", str(processes), "--master_port", str(_free_port())]
    return [*command, "--launcher", "torchrun", "--", *torchrun]


def _train_task(
    plan: RunPlan, run: TaskRun, *, lock: int, progress: _StepBar, stream_output: bool, processes: int | None
) -> None:
    """One ``axolotl train``; raises :class:`RunError` unless it exits 0 and its task is in the state."""
    layout = plan.layout
    run.output_dir.mkdir(parents=True, exist_ok=True)
    for stale in (layout.task_progress(run.index, run.name), layout.task_failure(run.index, run.name)):
        stale.unlink(missing_ok=True)  # a killed attempt's
    write_replayed_rows(plan.loaded, run.index)
    log_path, failure_path = layout.task_log(run.index, run.name), layout.task_failure(run.index, run.name)
    started = time.time()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            _command(run.config_path, processes),
            stdout=None if stream_output else log,
            stderr=subprocess.STDOUT if not stream_output else None,
            env={**plan.environment, FAILURE_FILE_VARIABLE: str(failure_path)},
            preexec_fn=_die_with_parent,
            pass_fds=(lock,),
        )
        while (returncode := child.poll()) is None:
            progress.poll(run)
            time.sleep(0.5)
    run.seconds = time.time() - started
    record = read_failure(failure_path) if returncode != 0 else None
    if record is not None and record.get("error") == ForgettingGuardError.__name__:
        raise ForgettingGuardError(record["message"])  # the guard's own sentence: what stayed, how to go on
    if returncode != 0 or run.name not in finished_task_names(layout.state):
        raise RunError(
            f"Task {run.index} ({run.name}) did not finish (axolotl exited with {returncode}). "
            f"Earlier tasks are safe in {layout.state}; fix the cause and run again with --resume.\n"
            f"From {log_path}:\n{_failure_summary(failure_path, log_path)}"
        )


class _AxolotlTasks(TaskTrainer):
    """The recipe runner's way to train a task: an ``axolotl train`` process, under the run's lock,
    with one progress bar over every task of the run."""

    def __init__(self, plan: RunPlan, *, lock: int, progress: _StepBar, stream_output: bool, processes: int | None):
        self.plan, self.lock, self.progress = plan, lock, progress
        self.stream_output, self.processes = stream_output, processes

    def describe(self, index: int, name: str) -> str:
        run = self.plan.runs[index - 1]
        return f"axolotl train {run.config_path} (log: {self.plan.layout.task_log(index, name)})"

    def skip(self, index: int, name: str) -> None:
        run = self.plan.runs[index - 1]
        run.skipped = True
        self.progress.finish(run)

    def train(self, index: int, name: str) -> None:
        run = self.plan.runs[index - 1]
        self.progress.start(run)
        _train_task(
            self.plan,
            run,
            lock=self.lock,
            progress=self.progress,
            stream_output=self.stream_output,
            processes=self.processes,
        )
        self.progress.finish(run)


def _drive(plan: RunPlan, echo: Callable[[str], None] | None, *, stream_output: bool, processes: int | None) -> None:
    """Every unfinished task in order through the sequence driver, under the run's lock, then the
    adapter and the report (also after the guard refused a task)."""
    layout, runs = plan.layout, plan.runs
    lock = _acquire_lock(layout)
    # A run killed between a snapshot's rename and the removal of the older ones left them behind.
    tidy_state_dir(layout.state)
    progress = _StepBar(runs, layout)
    tasks = _AxolotlTasks(plan, lock=lock, progress=progress, stream_output=stream_output, processes=processes)
    try:
        drive_sequence(
            layout, [run.name for run in runs], tasks, echo=echo or progress.write, recipe=str(plan.loaded.path)
        )
    finally:
        progress.close()
        os.close(lock)


def _echo_dry_run(plan: RunPlan, echo: Callable[[str], None]) -> None:
    echo(
        f"Recipe {plan.loaded.path} is valid: {len(plan.runs)} task(s), every task config accepted by Axolotl's "
        "validation. Per-task Axolotl configs:"
    )
    for run in plan.runs:
        echo(f"  axolotl train {run.config_path}")


def baseline_dir(first: Path, baseline: str) -> Path:
    """Where ``--baseline`` trains the same tasks: beside the first run, named after the strategy."""
    return first.with_name(f"{first.name}-{baseline}")


def run_recipe(
    recipe_path: str | os.PathLike[str],
    *,
    resume: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = None,
    stream_output: bool = False,
    strategy: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    processes: int | None = None,
    baseline: str | None = None,
    accept_regression: bool = False,
) -> list[TaskRun]:
    """Validate the recipe, then train every unfinished task with ``axolotl train``.

    Returns one :class:`TaskRun` per task (finished earlier ones marked ``skipped``). Raises a
    :class:`~mergeforget_plugin.errors.MergeForgetError` (``RecipeError``, ``RunError``,
    ``StateError``) before anything trains when the recipe, the output directory or the state does
    not fit. ``strategy`` and ``output_dir`` replace the recipe's (the same tasks as a baseline, say).
    ``processes`` trains each task with that many processes on this machine through Axolotl's
    ``--launcher torchrun`` (one per GPU, sharing the recipe's ``deepspeed`` or ``fsdp_config``);
    ``None`` runs one plain process (``--launcher python``). ``baseline`` then trains the same
    tasks with that strategy into :func:`baseline_dir` and echoes both runs side by side.
    ``accept_regression`` lets the recipe's guard take a task whose merge breaks its limit (the
    drops are recorded in the state's history); without it such a task stops the run with a
    :class:`~mergeforget_plugin.errors.ForgettingGuardError`, the earlier tasks kept.
    ``echo`` prints the runner's own lines (default: above the progress bar, on stdout); the
    training processes' output goes to each task's log, or to the console with ``stream_output``.
    """
    if processes is not None and processes < 1:
        raise RunError(f"--nproc-per-node must be at least 1, got {processes}.")
    plan = plan_run(
        recipe_path, resume=resume, strategy=strategy, output_dir=output_dir, accept_regression=accept_regression
    )
    if dry_run:
        _echo_dry_run(plan, echo or print)
        return plan.runs
    _drive(plan, echo, stream_output=bool(stream_output), processes=processes)
    if baseline is not None:
        second = baseline_dir(plan.layout.root, baseline)
        run_recipe(
            recipe_path,
            resume=resume,
            echo=echo,
            stream_output=stream_output,
            strategy=baseline,
            output_dir=second,
            processes=processes,
            accept_regression=accept_regression,
        )
        from ...evaluation.report import compare_runs

        (echo or print)("\n" + compare_runs([plan.layout.root, second]))
    return plan.runs
