"""Task-sequence recipes: a YAML file that lists tasks on top of one Axolotl config.

```yaml
# Run: mergeforget train recipes/demo-smollm2.yaml
output_dir: ../outputs/demo          # relative paths are relative to this file
base_config: my-axolotl-config.yaml  # model, LoRA and trainer settings shared by all tasks
axolotl: {learning_rate: 5.0e-4}     # optional keys applied on top of base_config
mergeforget: {strategy: slao}        # MergeForgetConfig fields
replay: {buffer_rows: 64, fraction: 0.2}  # optional: mix earlier tasks' rows into later ones
guard: {max_forgetting: 5}           # optional: stop when an earlier task drops more than 5 points
tasks:
  - name: antonyms
    datasets: [{path: data/demo/antonyms.train.jsonl, ds_type: json, type: ...}]
    test_datasets: [{path: data/demo/antonyms.test.jsonl, ds_type: json, type: ..., split: train}]
    overrides: {num_epochs: 2}
```

The recipe is checked in full, with messages that name the task and the field, before anything
is trained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ... import preflight
from ...core.layout import RunLayout, repeated_names, task_name_problem
from ...core.replay import ReplayConfig, replay_count
from ...core.state import pickled_adapter_problem
from ...errors import MergeForgetError, RecipeError
from ...evaluation.guard import ForgettingGuard
from ...evaluation.schedule import DEFAULT_SCHEDULE
from ...preflight import TaskPlan
from ...settings import ContinualConfig, field_help
from .args import EvalSettings, EvalSpec, ProbeSpec, StrategySettings

# Keys that define the one LoRA every task shares, or that the runner sets per task.
SHARED_KEYS = frozenset(
    {
        "base_model",
        "adapter",
        "lora_r",
        "lora_alpha",
        "lora_target_modules",
        "lora_target_linear",
        "peft_use_rslora",
        "peft_use_dora",
        "load_in_4bit",
        "load_in_8bit",
    }
)
RUNNER_KEYS = frozenset({"datasets", "test_datasets", "output_dir", "plugins", "mergeforget"})
# Settings Axolotl's own validation lets through that fail only inside training (a negative
# micro_batch_size reaches the DataLoader): each must be a positive number, the first group whole.
POSITIVE_INTEGERS = (
    "micro_batch_size",
    "gradient_accumulation_steps",
    "eval_batch_size",
    "batch_size",
    "sequence_len",
    "lora_r",
)  # not max_steps: -1 is the trainers' "unset"
POSITIVE_NUMBERS = ("num_epochs", "learning_rate", "lora_alpha")


class TaskSpec(BaseModel):
    """One task: its name, its Axolotl datasets, an optional held-out split and per-task overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique name: letters, digits, '_', '-', '.'")
    datasets: list[dict[str, Any]] = Field(min_length=1, description="Axolotl `datasets:` entries for this task")
    test_datasets: list[dict[str, Any]] = Field(default_factory=list, description="held-out split(s) to evaluate")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Axolotl keys for this task only")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="how test_datasets are scored")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = task_name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("datasets", "test_datasets")
    @classmethod
    def _dataset_paths(cls, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, entry in enumerate(entries):
            if not isinstance(entry.get("path"), str) or not entry["path"]:
                raise ValueError(f"entry {index} has no `path`")
        return entries

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        shared = sorted(SHARED_KEYS & set(overrides))
        if shared:
            raise ValueError(
                f"{', '.join(shared)} cannot change between tasks: all tasks train one shared LoRA on one base "
                "model. Set it once in base_config or axolotl."
            )
        runner = sorted(RUNNER_KEYS & set(overrides))
        if runner:
            raise ValueError(f"{', '.join(runner)} are set by the runner; give datasets at the task level instead.")
        return overrides


_SCHEDULES = Literal[get_args(get_args(get_type_hints(ContinualConfig)["eval_schedule"])[0])]  # type: ignore[misc]


class SequenceEvalSettings(BaseModel):
    """The recipe's top-level ``eval:`` block: settings of the whole sequence's evaluation."""

    model_config = ConfigDict(extra="forbid")

    # ContinualConfig.eval_schedule, whose "unset" a recipe never needs: it knows its task order.
    schedule: _SCHEDULES = Field(DEFAULT_SCHEDULE, description=field_help("eval_schedule"))  # type: ignore[valid-type]


class Recipe(BaseModel):
    """A continual-learning sequence on top of one Axolotl config."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field(description="where state/, adapter/, configs/ and tasks/ go")
    base_config: str | None = Field(None, description="an Axolotl YAML file with the model and LoRA settings")
    axolotl: dict[str, Any] = Field(default_factory=dict, description="Axolotl keys applied on top of base_config")
    mergeforget: StrategySettings = Field(  # type: ignore[valid-type]
        default_factory=StrategySettings, description="the strategy: MergeForgetConfig's fields"
    )
    tasks: list[TaskSpec] = Field(min_length=1, description="the tasks, in training order")
    probes: list[ProbeSpec] = Field(
        default_factory=list, description="evaluation-only sets never trained on, scored after every task"
    )
    eval: SequenceEvalSettings = Field(default_factory=SequenceEvalSettings, description="the evaluation schedule")
    # ContinualConfig's replay and guard, given as mappings (as in the plugin's block).
    replay: dict[str, Any] | None = Field(None, description=field_help("replay") + "; off by default")
    guard: dict[str, Any] | None = Field(
        None, description=field_help("guard") + "; max_forgetting in points (nats for a loss)"
    )

    @field_validator("replay")
    @classmethod
    def _replay(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                ReplayConfig.from_mapping(value, "replay")
            except MergeForgetError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("guard")
    @classmethod
    def _guard(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if isinstance(value, dict) and "accept_regression" in value:
                raise ValueError(
                    "guard.accept_regression: a recipe does not take regressions for good; pass --accept-regression "
                    "to the run that should take the task the guard refused"
                )
            try:
                ForgettingGuard.from_mapping(value, "guard", known=("max_forgetting",))
            except MergeForgetError as error:
                raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [task.name for task in self.tasks]
        repeated = repeated_names(names)
        if repeated:
            raise ValueError(f"task names must be unique; repeated: {repeated}")
        probe_names = [probe.name for probe in self.probes]
        clash = sorted({name for name in probe_names if probe_names.count(name) > 1 or name in names})
        if clash:
            raise ValueError(f"probe names must be unique and differ from task names; repeated: {clash}")
        for index, task in enumerate(self.tasks):
            if task.eval.declares_metrics and not task.test_datasets:
                metrics = ", ".join(
                    dict.fromkeys([*([task.eval.metric] if task.eval.metric else []), *task.eval.metrics])
                )
                raise ValueError(
                    f"tasks[{index}] ({task.name!r}) eval: {metrics} score held-out rows with references, but the task "
                    "has no test_datasets; add them or leave eval.metric(s) out"
                )
        guard = ContinualConfig(guard=self.guard and ForgettingGuard.from_mapping(self.guard, "guard"))
        if preflight.guard_problems(guard, any(task.test_datasets for task in self.tasks), give="test_datasets"):
            raise ValueError(  # the pre-flight's rule, in the recipe's words
                "guard: measures forgetting on held-out rows, but no task has test_datasets; add them or leave the "
                "guard out"
            )
        if not self.base_config and "base_model" not in self.axolotl:
            raise ValueError("give base_config (an Axolotl YAML) or at least axolotl.base_model")
        runner = sorted(RUNNER_KEYS & set(self.axolotl))
        if runner:
            raise ValueError(f"axolotl.{', axolotl.'.join(runner)}: set by the runner; give datasets per task instead")
        return self


def _format_validation_error(error: ValidationError, recipe: dict[str, Any] | None, source: str) -> str:
    lines = []
    tasks = recipe.get("tasks") if isinstance(recipe, dict) else None
    for problem in error.errors():
        location = list(problem["loc"])
        if len(location) >= 2 and location[0] == "tasks" and isinstance(location[1], int) and isinstance(tasks, list):
            index = location[1]
            task = tasks[index] if index < len(tasks) else None
            name = task.get("name") if isinstance(task, dict) else None
            label = f"task {index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
            field = ".".join(str(part) for part in location[2:]) or "entry"
            where = f"{label}, {field}"
        else:
            where = ".".join(str(part) for part in location) or "recipe"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the recipe format in the README)"
        elif problem["type"] == "missing":
            message = "required, but missing"
        # A message that names its own field (replay.fraction: ...) is not prefixed a second time.
        lines.append(f"  - {message}" if message.startswith(where) else f"  - {where}: {message}")
    return f"{source} is not a valid recipe:\n" + "\n".join(lines)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raise :class:`RecipeError` listing every problem."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source} must be a YAML mapping with output_dir, base_config and tasks; got {type(data).__name__}."
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_validation_error(error, data, source)) from None


def read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{what} {path} does not exist.") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{what} {path} is not valid YAML: {error}") from None


class LoadedRecipe:
    """A validated recipe with its paths resolved against the recipe file."""

    def __init__(self, recipe: Recipe, path: Path) -> None:
        self.recipe = recipe
        self.path = path
        self.root = path.parent
        self._base: dict[str, Any] | None = None  # the base config, read once (see base_axolotl_config)
        self._summaries: dict[Path, tuple[int, list[str]]] = {}  # rows and fields per dataset file, read once

    @property
    def replay(self) -> ReplayConfig | None:
        """The recipe's replay settings (``None``: replay is off)."""
        if self.recipe.replay is None:
            return None
        return ReplayConfig.from_mapping(self.recipe.replay, f"replay in {self.path}")

    def guard_settings(self, accept_regression: bool = False) -> dict[str, Any] | None:
        """The ``guard`` block each task's plugin gets (``None``: no guard); ``accept_regression``
        is the command line's ``--accept-regression``."""
        if self.recipe.guard is None:
            return None
        return {
            "max_forgetting": self.recipe.guard["max_forgetting"],
            "accept_regression": accept_regression,
            "where": f"guard.max_forgetting in {self.path}",
            "accept_with": f"`mergeforget train {self.path} --resume --accept-regression`",
        }

    def train_files(self, index: int) -> list[Path]:
        """The training files of task ``index`` (1-based), resolved."""
        return [self.resolve(entry["path"]) for entry in self.recipe.tasks[index - 1].datasets]

    def file_rows(self, path: Path) -> tuple[int, list[str]]:
        """How many rows a local JSON (Lines) dataset file holds and its first row's fields, read once
        for the data checks, the row counts, the replay checks and the resume checks together."""
        from ...evaluation.scoring import row_summary

        if path not in self._summaries:
            self._summaries[path] = row_summary(path)
        return self._summaries[path]

    def train_row_count(self, index: int) -> int:
        """How many training rows task ``index`` (1-based) has in its local JSON (Lines) files."""
        return sum(self.file_rows(path)[0] for path in self.train_files(index))

    def replayed_row_count(self, index: int) -> int:
        """How many replayed rows task ``index`` (1-based) trains on beside its own (0 without replay)."""
        replay = self.replay
        if replay is None or index == 1:
            return 0
        return replay_count(self.train_row_count(index), replay, buffered=1)

    def resolve(self, value: str) -> Path:
        candidate = Path(os.path.expanduser(value))
        return candidate if candidate.is_absolute() else (self.root / candidate).resolve()

    def with_overrides(self, *, strategy: str | None = None, output_dir: str | None = None) -> LoadedRecipe:
        """This recipe with the command line's ``--strategy`` and ``--output-dir`` (relative to the
        working directory, as command-line paths are) in place of its own."""
        update: dict[str, Any] = {}
        if output_dir is not None:
            update["output_dir"] = str(Path(os.path.expanduser(output_dir)).resolve())
        if strategy is not None:
            try:
                update["mergeforget"] = StrategySettings(
                    **{**self.recipe.mergeforget.model_dump(), "strategy": strategy}
                )
            except ValidationError as error:
                problems = "; ".join(problem["msg"].removeprefix("Value error, ") for problem in error.errors())
                raise RecipeError(f"--strategy {strategy}: {problems}") from None
        if not update:
            return self
        overridden = LoadedRecipe(self.recipe.model_copy(update=update), self.path)
        overridden._summaries = self._summaries  # the same training files: read once for both
        return overridden

    @property
    def layout(self) -> RunLayout:
        """The run's output directory (``output_dir``, relative to the recipe file)."""
        return RunLayout(self.resolve(self.recipe.output_dir))

    def base_axolotl_config(self) -> dict[str, Any]:
        """``base_config``'s settings under the recipe's ``axolotl:`` ones; the file is read once."""
        if self._base is None:
            self._base = self._read_base_config()
        return dict(self._base)

    def _read_base_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.recipe.base_config:
            base_path = self.resolve(self.recipe.base_config)
            loaded = read_yaml(base_path, "base_config")
            if not isinstance(loaded, dict):
                raise RecipeError(f"base_config {base_path} must be a YAML mapping of Axolotl keys.")
            config.update(loaded)
        config.update(self.recipe.axolotl)
        if "base_model" not in config:
            raise RecipeError(f"Neither base_config nor axolotl in {self.path} sets base_model.")
        return config

    def source_of(self, key: str, task_index: int) -> str | None:
        """Where task ``task_index`` (1-based) gets Axolotl setting ``key`` from, as a user would look it
        up; ``None`` when the recipe does not set it."""
        task = self.recipe.tasks[task_index - 1]
        if key in task.overrides:
            return f"tasks[{task_index - 1}] ({task.name!r}) overrides.{key}"
        if key in self.recipe.axolotl:
            return f"axolotl.{key}"
        if key in self.base_axolotl_config():
            return f"{key} in base_config {self.resolve(str(self.recipe.base_config))}"
        return None

    def eval_specs(self) -> list[EvalSpec]:
        """The held-out evaluation of every task that has test_datasets, with paths resolved."""
        specs = []
        for task in self.recipe.tasks:
            if not task.test_datasets:
                continue
            test = task.test_datasets[0]
            kind = test.get("type")
            custom = kind if isinstance(kind, dict) else {}
            specs.append(
                EvalSpec(
                    task=task.name,
                    path=str(self.resolve(test["path"])),
                    option_paths=[str(self.resolve(entry["path"])) for entry in task.datasets],
                    prompt_format=str(custom.get("no_input_format") or custom.get("format") or "{prompt}"),
                    dataset={**test, "path": str(self.resolve(test["path"]))} if isinstance(kind, str) else {},
                    **{
                        **task.eval.model_dump(),
                        "prompt_field": task.eval.prompt_field or custom.get("field_instruction") or "prompt",
                        "answer_field": task.eval.answer_field or custom.get("field_output") or "completion",
                    },
                )
            )
        return specs

    def probe_specs(self) -> list[ProbeSpec]:
        """The recipe's probes with their paths resolved."""
        specs = []
        for probe in self.recipe.probes:
            update: dict[str, Any] = {}
            if probe.path is not None:
                update["path"] = str(self.resolve(probe.path))
            if probe.lm_eval is not None and probe.lm_eval.include_path is not None:
                update["lm_eval"] = probe.lm_eval.model_copy(
                    update={"include_path": str(self.resolve(probe.lm_eval.include_path))}
                )
            specs.append(probe.model_copy(update=update))
        return specs

    def missing_files(self) -> list[str]:
        """Every dataset file the recipe names that is not on disk (see :func:`missing_files`)."""
        return missing_files(self)


def missing_files(loaded: LoadedRecipe) -> list[str]:
    """Every dataset file the recipe names that is not on disk, as 'task X, field: path'."""
    problems = []
    for index, task in enumerate(loaded.recipe.tasks, start=1):
        for field in ("datasets", "test_datasets"):
            for number, entry in enumerate(getattr(task, field)):
                path = loaded.resolve(entry["path"])
                if not path.exists():
                    problems.append(f"task {index} ({task.name!r}), {field}.{number}.path: {path} does not exist")
    for number, probe in enumerate(loaded.probe_specs()):
        if probe.path is not None and not Path(probe.path).exists():
            problems.append(f"probes[{number}] ({probe.name!r}), path: {probe.path} does not exist")
        elif probe.lm_eval is not None and probe.lm_eval.include_path and not Path(probe.lm_eval.include_path).is_dir():
            problems.append(
                f"probes[{number}] ({probe.name!r}), lm_eval.include_path: {probe.lm_eval.include_path} is not a "
                "directory"
            )
    return problems


def replay_problems(loaded: LoadedRecipe) -> list[str]:
    """Why the recipe's tasks cannot replay into each other: every training file must be local JSON
    or JSON Lines (the buffer keeps rows as JSON), and every task's rows must have the same fields
    (the pre-flight's rule), since any task's rows are replayed into every later one in that task's
    own format."""
    if loaded.replay is None:
        return []
    problems: list[str] = []
    plans = []
    for index, task in enumerate(loaded.recipe.tasks, start=1):
        for number, path in enumerate(loaded.train_files(index)):
            where = f"task {index} ({task.name!r}), datasets.{number}"
            if path.suffix not in (".json", ".jsonl") or not path.is_file():
                problems.append(
                    f"{where}: replay keeps training rows from local JSON or JSON Lines files, and {path} is "
                    "not one; convert it, or leave replay out"
                )
                continue
            count, fields = loaded.file_rows(path)
            plans.append(TaskPlan(task.name, f"{where} ({path})", fields=fields, row_count=count))
    settings = ContinualConfig(replay=loaded.replay)
    return problems + [str(problem) for problem in preflight.replay_problems(settings, plans, None, "", label="")]


def setting_problems(loaded: LoadedRecipe) -> list[str]:
    """The settings of any task that cannot train (see POSITIVE_INTEGERS), one line per setting and source."""
    base = loaded.base_axolotl_config()
    problems: dict[str, str] = {}  # keyed by source, so a shared setting is named once
    for index, task in enumerate(loaded.recipe.tasks, start=1):
        config = {**base, **task.overrides}
        for key in (*POSITIVE_INTEGERS, *POSITIVE_NUMBERS):
            value = config.get(key)
            if value is None:
                continue
            whole = key in POSITIVE_INTEGERS
            kind = (int,) if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                what = "a positive whole number" if whole else "a positive number"
                problems.setdefault(str(loaded.source_of(key, index)), f"{value!r} must be {what}")
    return [f"{source}: {message}" for source, message in problems.items()]


def data_problems(loaded: LoadedRecipe) -> list[str]:
    """What reading the data would refuse, before any task trains: every local JSON or JSON
    Lines dataset parsed (a bad line is named by file and line), and every held-out set and
    probe built as the training processes will build it (fields, metrics, references)."""
    problems: list[str] = []
    checked: set[Path] = set()
    for index, task in enumerate(loaded.recipe.tasks, start=1):
        for field in ("datasets", "test_datasets"):
            for number, entry in enumerate(getattr(task, field)):
                path = loaded.resolve(entry["path"])
                if path in checked or not path.is_file() or path.suffix not in (".json", ".jsonl"):
                    continue
                checked.add(path)
                try:
                    loaded.file_rows(path)
                except MergeForgetError as error:
                    problems.append(f"task {index} ({task.name!r}), {field}.{number}: {error}")
    # The sets below read the same files: they are built only once every file parses.
    return problems or _scoring_problems(loaded)


def _scoring_problems(loaded: LoadedRecipe) -> list[str]:
    """Every held-out set and probe built as the training processes will build it."""
    problems: list[str] = []
    for spec in loaded.eval_specs():
        try:
            spec.check()
        except MergeForgetError as error:
            index = [task.name for task in loaded.recipe.tasks].index(spec.task) + 1
            problems.append(f"task {index} ({spec.task!r}), test_datasets.0 / eval: {error}")
    for number, spec in enumerate(loaded.probe_specs()):
        try:
            probe = spec.to_probe()
            if hasattr(probe, "check_available"):
                probe.check_available()
        except MergeForgetError as error:
            problems.append(f"probes[{number}] ({spec.name!r}): {error}")
    return problems


def load_recipe(path: str | os.PathLike[str], *, check_files: bool = True) -> LoadedRecipe:
    """Read, validate and (by default) check the dataset files of a recipe."""
    recipe_path = Path(path).resolve()
    loaded = LoadedRecipe(parse_recipe(read_yaml(recipe_path, "Recipe"), str(recipe_path)), recipe_path)
    if check_files:
        missing = loaded.missing_files()
        if missing:
            raise RecipeError(
                f"{recipe_path} names dataset files that do not exist:\n  - "
                + "\n  - ".join(missing)
                + "\nPoint each path at a local copy (relative paths are relative to the recipe file)."
            )
        data = data_problems(loaded)
        if data:
            raise RecipeError(f"{recipe_path} names data that cannot be read or scored:\n  - " + "\n  - ".join(data))
        replay = replay_problems(loaded)
        if replay:
            raise RecipeError(f"{recipe_path} cannot replay its tasks' rows:\n  - " + "\n  - ".join(replay))
        settings = setting_problems(loaded)
        if settings:
            raise RecipeError(f"{recipe_path} has settings no task can train with:\n  - " + "\n  - ".join(settings))
        base = loaded.base_axolotl_config()
        configs = [("axolotl", base)] + [
            (f"tasks[{index}] ({task.name!r}) overrides", task.overrides)
            for index, task in enumerate(loaded.recipe.tasks)
        ]
        for where, config in configs:
            if config.get("lora_model_dir"):
                directory = loaded.resolve(str(config["lora_model_dir"]))
                problem = pickled_adapter_problem(directory, f"{where}.lora_model_dir")
                if problem:
                    raise RecipeError(f"{recipe_path}: {problem}")
    return loaded
