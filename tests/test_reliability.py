"""Faults and bad input: nothing lost, nothing half-written, a clear message instead of a traceback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback

from mergeforget_plugin import MergeForgetCallback, SLAOMathError, Task, train_sequence
from mergeforget_plugin.core.state import load_state, snapshot_dirs
from mergeforget_plugin.errors import RecipeError
from mergeforget_plugin.integrations.axolotl.recipe import load_recipe, parse_recipe

from .axolotl_helpers import minimal_recipe, write
from .helpers import READ_ONLY_WAYS, demo_tasks, peft_model, read_only, sft_config


def resident_megabytes() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class PoisonLoRA(TrainerCallback):
    """Puts a NaN into one lora_B just before training ends (what a diverged run leaves behind)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")


def test_a_diverged_task_is_refused_and_the_last_good_state_is_untouched(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = peft_model(tiny_model_dir)
    first, second = demo_tasks(["antonyms", "plurals"])
    train_sequence(model, [first], args=sft_config(tmp_path), processing_class=tokenizer)
    before = load_state(tmp_path / "state")
    files_before = {p: p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()}

    trainer = SFTTrainer(
        model=model,
        args=sft_config(tmp_path / "t2"),
        train_dataset=second.train_dataset,
        processing_class=tokenizer,
        # Callbacks run in order: the poison lands before the SLAO callback merges.
        callbacks=[PoisonLoRA(), MergeForgetCallback(tmp_path / "state", task_name="plurals")],
    )
    with pytest.raises(SLAOMathError, match=r"fine-tuned lora_B has 1 non-finite value"):
        trainer.train()
    assert {p: p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()} == files_before
    assert load_state(tmp_path / "state").finished_tasks == before.finished_tasks == ["antonyms"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
recipe_keys = st.sampled_from(
    ["output_dir", "base_config", "axolotl", "mergeforget", "tasks", "name", "datasets", "extra"]
)
TASK_FIELDS = ["name", "datasets", "test_datasets", "overrides", "eval", "typo"]
# Tasks that parse, so the fuzzing reaches valid task lists and recipes too, not only refusals.
dataset_entries = st.lists(st.fixed_dictionaries({"path": st.text(min_size=1, max_size=12)}), min_size=1, max_size=2)
well_formed_tasks = st.fixed_dictionaries(
    {"name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True), "datasets": dataset_entries},
    optional={
        "test_datasets": dataset_entries,
        "overrides": st.dictionaries(st.sampled_from(["num_epochs", "max_steps", "seed"]), json_values, max_size=2),
        # A metric without test_datasets is refused for the whole recipe, naming the task.
        "eval": st.fixed_dictionaries({}, optional={"metric": st.sampled_from(["choice", "loss", "rouge_l"])}),
    },
)
# A well-formed task with one field replaced by (or, for "typo", added as) any JSON value.
broken_tasks = st.builds(
    lambda task, field, value: {**task, field: value}, well_formed_tasks, st.sampled_from(TASK_FIELDS), json_values
)
well_formed_recipes = st.fixed_dictionaries(
    {
        "output_dir": st.text(max_size=12),
        "axolotl": st.fixed_dictionaries({"base_model": st.text(max_size=12)}),
        "tasks": st.lists(well_formed_tasks, min_size=1, max_size=3, unique_by=lambda task: task["name"]),
    },
    optional={"mergeforget": st.fixed_dictionaries({}, optional={"strategy": st.sampled_from(["slao", "seq"])})},
)
recipe_like = st.dictionaries(recipe_keys, json_values, max_size=6) | json_values | well_formed_recipes


def assert_parsed_as_given(parsed, data):
    """What a successful parse promises: the tasks as given, in order, and a recipe that round-trips."""
    assert parsed.output_dir == data["output_dir"]
    assert [task.name for task in parsed.tasks] == [task["name"] for task in data["tasks"]]
    assert [task.datasets for task in parsed.tasks] == [task["datasets"] for task in data["tasks"]]
    assert [task.test_datasets for task in parsed.tasks] == [task.get("test_datasets", []) for task in data["tasks"]]
    again = parse_recipe(parsed.model_dump(), "again.yaml")
    assert again.model_dump_json() == parsed.model_dump_json()  # JSON: NaN in an axolotl key compares equal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=recipe_like)
@example(data=minimal_recipe())
def test_malformed_recipes_give_the_validation_message_never_a_traceback(data):
    try:
        parsed = parse_recipe(data, "fuzzed.yaml")
    except RecipeError as error:
        event("refused")
        assert str(error).startswith("fuzzed.yaml ")
    else:
        event("parsed")
        assert_parsed_as_given(parsed, data)


def expected_task_problems(tasks) -> list[str]:
    """The start of each line the recipe's message must have for ``tasks``' own fields, in order:
    the task by position (and by name where it has a string one), then the field."""
    from pydantic import ValidationError

    from mergeforget_plugin.integrations.axolotl.recipe import TaskSpec

    lines = []
    for index, task in enumerate(tasks):
        try:
            TaskSpec.model_validate(task)
        except ValidationError as error:
            name = task.get("name")
            label = f"task {index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
            for problem in error.errors():
                field = ".".join(str(part) for part in problem["loc"]) or "entry"
                lines.append(f"\n  - {label}, {field}: ")
    return lines


@settings(max_examples=150, deadline=None)
@given(
    tasks=st.lists(
        st.dictionaries(st.sampled_from(TASK_FIELDS), json_values, max_size=5) | well_formed_tasks | broken_tasks,
        max_size=4,
    )
)
@example(tasks=minimal_recipe()["tasks"])
@example(tasks=[{"name": "a", "datasets": [{"path": "p"}]}, {"name": 3, "typo": 1}, {"name": "b c", "datasets": []}])
def test_malformed_task_lists_name_the_task(tasks):
    recipe = {"output_dir": "out", "axolotl": {"base_model": "m"}, "tasks": tasks}
    try:
        parsed = parse_recipe(recipe, "fuzzed.yaml")
    except RecipeError as error:
        message = str(error)
        assert "fuzzed.yaml is not a valid recipe" in message
        expected = expected_task_problems(tasks)
        event("refused: a task's field" if expected else "refused: the task list")
        if expected:  # each offending task is named, with each offending field, in order
            position = 0
            for line in expected:
                assert line in message[position:], (line, message)
                position = message.index(line, position) + len(line)
            return
        # Every task is valid on its own: the list as a whole is refused, naming the task where one is at fault.
        names = [task["name"] for task in tasks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if not tasks:
            assert "\n  - tasks: List should have at least 1 item" in message
        elif repeated:
            assert message.endswith(f"\n  - recipe: task names must be unique; repeated: {repeated}")
        else:
            evals = [task.get("eval", {}) for task in tasks]
            index = next(
                i
                for i, task in enumerate(tasks)
                if (evals[i].get("metric") or evals[i].get("metrics")) and not task.get("test_datasets")
            )
            assert f"\n  - recipe: tasks[{index}] ({names[index]!r}) eval: " in message
    else:
        event("parsed")
        assert_parsed_as_given(parsed, recipe)


@pytest.mark.slow
def test_fifty_task_soak_keeps_the_state_constant_and_b_bounded(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    rows = demo_tasks(["antonyms", "plurals", "capitals"])
    tasks = [Task(f"task{i:02d}", Dataset.from_list(list(rows[i % 3].train_dataset)[:8])) for i in range(50)]
    sizes, rss_mb = [], []

    class StateSize(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if snapshot_dirs(tmp_path / "state"):
                sizes.append(sum(f.stat().st_size for f in (tmp_path / "state").rglob("*.safetensors")))

        def on_train_end(self, args, state, control, **kwargs):
            rss_mb.append(resident_megabytes())

    result = train_sequence(
        peft_model(tiny_model_dir),
        tasks,
        args=sft_config(tmp_path, max_steps=2, per_device_train_batch_size=4, logging_steps=2),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        callbacks=[StateSize()],
    )
    history = result.state.history
    assert len(history) == 50 and len(snapshot_dirs(tmp_path / "state")) == 2
    assert len(set(sizes[1:])) == 1  # two snapshots from task 2 on, whatever the count
    norms = [record["merged"]["b_norm_max"] for record in history]
    assert all(math.isfinite(n) for n in norms) and max(norms) < 10 * max(norms[:5])
    # Memory does not grow with the number of tasks: resident memory after task 50 is within
    # 256 MB of that after task 10 (the first tasks warm up allocator and caches).
    assert rss_mb[49] - rss_mb[9] < 256
    print(
        f"\nmerged |B| max after tasks 1, 10, 25, 50: {[round(norms[i], 4) for i in (0, 9, 24, 49)]}; "
        f"resident MB after tasks 1, 10, 25, 50: {[round(rss_mb[i]) for i in (0, 9, 24, 49)]}, "
        f"peak over the soak {round(max(rss_mb))}"
    )


class RunsCodeWhenUnpickled:
    """What a malicious adapter_model.bin can hold: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_adapter(directory):
    import pickle

    directory.mkdir()
    (directory / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (directory / "adapter_model.bin").write_bytes(pickle.dumps(RunsCodeWhenUnpickled(directory / "pwned")))
    return directory


def test_a_pickled_adapter_named_in_a_recipe_is_refused_unopened(tmp_path):
    adapter = pickled_adapter(tmp_path / "warm-start")
    recipe = minimal_recipe()
    recipe["tasks"][0]["overrides"] = {"lora_model_dir": "warm-start"}
    with pytest.raises(RecipeError) as refused:
        load_recipe(write(tmp_path, recipe))
    assert str(refused.value) == (
        f"{tmp_path / 'recipe.yaml'}: tasks[0] ('antonyms') overrides.lora_model_dir: {adapter} holds "
        "adapter_model.bin, pickle file(s) that can run code when loaded; mergeforget-plugin loads adapters only "
        "from adapter_model.safetensors. Convert it once where you trust the file (torch.load(path, "
        "weights_only=True), then safetensors.torch.save_file) or point tasks[0] ('antonyms') "
        "overrides.lora_model_dir at a safetensors adapter."
    )
    assert not (adapter / "pwned").exists()
    # Beside a safetensors copy the pickle is never chosen, so the recipe is accepted.
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    load_recipe(write(tmp_path, recipe))


def test_a_pickled_adapter_in_an_axolotl_config_is_refused_by_the_plugin_args(tmp_path):
    from pydantic import ValidationError

    from mergeforget_plugin.integrations.axolotl.args import MergeForgetArgs

    adapter = pickled_adapter(tmp_path / "adapter")
    cfg = {"adapter": "lora", "lora_model_dir": str(adapter), "mergeforget": {"state_dir": "s", "task_name": "t"}}
    with pytest.raises(ValidationError, match=r"lora_model_dir: .*adapter holds adapter_model.bin, pickle file"):
        MergeForgetArgs.model_validate(cfg)
    assert not (adapter / "pwned").exists()


@pytest.mark.parametrize("how", sorted(READ_ONLY_WAYS))
def test_a_read_only_output_directory_stops_the_runner_before_training(tmp_path, tiny_model_dir, how):
    from mergeforget_plugin.errors import StateError
    from mergeforget_plugin.integrations.axolotl.runner import run_recipe

    recipe = write(tmp_path, minimal_recipe(tiny_model_dir))
    (tmp_path / "out").mkdir()
    restore = read_only(tmp_path / "out", how)
    try:
        with pytest.raises(
            StateError,
            match=rf"^The output directory .*out is not writable \({READ_ONLY_WAYS[how]}\)\. Nothing was trained",
        ):
            run_recipe(recipe)
    finally:
        restore()
    assert list((tmp_path / "out").iterdir()) == []
