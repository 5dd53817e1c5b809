"""Recipe validation: every shipped recipe loads, and bad recipes fail with one clear message."""

from __future__ import annotations

import copy

import pytest
import yaml

from mergeforget_plugin.core.state import save_state
from mergeforget_plugin.errors import RecipeError, RunError, StateMismatchError
from mergeforget_plugin.integrations.axolotl.recipe import load_recipe, parse_recipe
from mergeforget_plugin.integrations.axolotl.runner import run_recipe, task_config, write_task_configs

from .axolotl_helpers import minimal_recipe, write
from .helpers import DEMO_DATA, REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_is_valid_and_says_how_to_run_it(path):
    assert path.read_text().startswith("# Run: mergeforget train recipes/")
    loaded = load_recipe(path, check_files=False)
    assert len(loaded.recipe.tasks) >= 3


def test_demo_recipe_data_is_shipped_and_configs_are_complete(tmp_path):
    loaded = load_recipe(REPO / "recipes" / "demo-smollm2.yaml")
    assert loaded.missing_files() == []
    base = loaded.base_axolotl_config()
    config = task_config(loaded, 2, base)
    assert config["datasets"][0]["path"] == str(DEMO_DATA / "language_b.train.jsonl")
    assert config["mergeforget"]["task_name"] == "language_b" and config["plugins"] == [
        "mergeforget_plugin.MergeForgetPlugin"
    ]
    assert config["lora_mlp_kernel"] is False and config["bf16"] is False


def test_conversational_demo_recipe_is_the_demo_as_chat_template_rows():
    from mergeforget_plugin.evaluation.scoring import read_rows

    chat = load_recipe(REPO / "recipes" / "demo-smollm2-chat.yaml")
    plain = load_recipe(REPO / "recipes" / "demo-smollm2.yaml")
    assert chat.missing_files() == [] and chat.base_axolotl_config()["chat_template"] == "tokenizer_default"
    assert [t.name for t in chat.recipe.tasks] == [t.name for t in plain.recipe.tasks]
    for task, spec in zip(plain.recipe.tasks, chat.eval_specs(), strict=True):
        assert spec.dataset["type"] == "chat_template" and spec.dataset["field_messages"] == "messages"
        spec.check()  # the rows a training process will score
        for split in ("train", "test"):  # the same rows, as one user turn and one assistant turn
            rows = read_rows(DEMO_DATA / f"{task.name}.{split}.jsonl")
            conversations = read_rows(DEMO_DATA / "chat" / f"{task.name}.{split}.jsonl")
            assert [c["messages"] for c in conversations] == [
                [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"].strip()}]
                for r in rows
            ]


def test_per_task_configs_are_written_for_running_by_hand(tmp_path, tiny_model_dir):
    path = write(tmp_path, minimal_recipe(tiny_model_dir))
    paths = write_task_configs(load_recipe(path))
    assert [p.name for p in paths] == ["task-01-antonyms.yaml", "task-02-plurals.yaml"]
    text = paths[1].read_text()
    assert f"# Run by hand: axolotl train {paths[1]}" in text and "&id" not in text
    config = yaml.safe_load(text)
    assert config["mergeforget"]["state_dir"] == str(tmp_path / "out" / "state")
    assert config["output_dir"] == str(tmp_path / "out" / "tasks" / "task-02-plurals")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(tasks=[]), r"tasks: List should have at least 1 item"),
        (lambda r: r.update(epochs=3), r"epochs: unknown key"),
        (lambda r: r["tasks"][1].update(dataset=[]), r"task 2 \('plurals'\), dataset: unknown key"),
        (lambda r: r["tasks"][1].pop("datasets"), r"task 2 \('plurals'\), datasets: required, but missing"),
        (
            lambda r: r["tasks"][0].update(overrides={"lora_r": 16}),
            r"task 1 \('antonyms'\), overrides: lora_r cannot change between tasks",
        ),
        (lambda r: r["tasks"][1].update(name="antonyms"), r"task names must be unique; repeated: \['antonyms'\]"),
        (
            lambda r: r["tasks"][0].update(name="bad name/with slash"),
            r"task 1 \('bad name/with slash'\), name: 'bad name/with slash' must start",
        ),
        (
            lambda r: r.update(mergeforget={"strategy": "seq", "lambda_schedule": "inv"}),
            "strategy='seq' .* lambda_schedule would have no effect",
        ),
        (
            lambda r: r.update(mergeforget={"lambda_constant": 2}),
            r"mergeforget: lambda_constant=2.0 must be in \(0, 1\]",
        ),
        (lambda r: r["axolotl"].update(datasets=[]), r"axolotl.datasets: set by the runner"),
        (lambda r: r.pop("axolotl"), r"give base_config \(an Axolotl YAML\) or at least axolotl.base_model"),
    ],
)
def test_invalid_recipes_fail_with_a_message_naming_the_task_and_field(mutate, message):
    recipe = minimal_recipe()
    mutate(recipe)
    with pytest.raises(RecipeError, match=message):
        parse_recipe(recipe, "recipe.yaml")


def test_missing_dataset_file_is_named_before_anything_runs(tmp_path):
    recipe = minimal_recipe()
    recipe["tasks"][1]["datasets"][0]["path"] = "data/nowhere.jsonl"
    with pytest.raises(
        RecipeError, match=r"task 2 \('plurals'\), datasets.0.path: .*data/nowhere.jsonl does not exist"
    ):
        run_recipe(write(tmp_path, recipe))
    assert not (tmp_path / "out").exists()


def test_recipe_that_is_not_yaml_or_not_a_mapping(tmp_path):
    (tmp_path / "broken.yaml").write_text("tasks: [unclosed")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def _finished_state(signature_rank: int, architecture: dict, tasks=("antonyms",)):
    import torch

    from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig
    from mergeforget_plugin.core.state import BaseModelFingerprint, ContinualState, LoRASignature

    pair = LoRAPair(torch.zeros(signature_rank, 64), torch.zeros(64, signature_rank))
    return ContinualState(
        LoRASignature({"model.layers.0.self_attn.q_proj": signature_rank}, 8.0, False, ["q_proj"]),
        BaseModelFingerprint(architecture, [1.0]),
        MergeForgetConfig(),
        {},
        list(tasks),
        {"model.layers.0.self_attn.q_proj": pair},
        {"model.layers.0.self_attn.q_proj": pair},
    )


def test_existing_state_needs_resume_and_the_same_order(tmp_path, tiny_model_dir):
    path = write(tmp_path, minimal_recipe(tiny_model_dir))
    save_state(_finished_state(4, {"model_type": "llama", "hidden_size": 64}), tmp_path / "out" / "state")
    with pytest.raises(RunError, match=r"already holds 1 finished task\(s\) \(antonyms\). Pass --resume"):
        run_recipe(path)
    reordered = minimal_recipe(tiny_model_dir)
    reordered["tasks"].reverse()
    with pytest.raises(RunError, match="Resume with the same task order"):
        run_recipe(write(tmp_path, reordered), resume=True)


def test_state_from_another_rank_or_model_is_refused_before_training(tmp_path, tiny_model_dir):
    path = write(tmp_path, minimal_recipe(tiny_model_dir))
    state_dir = tmp_path / "out" / "state"
    save_state(_finished_state(16, {"model_type": "llama", "hidden_size": 64}), state_dir)
    with pytest.raises(
        StateMismatchError, match=r"LoRA rank r=16 in the state vs r=4 in the recipe's Axolotl settings"
    ):
        run_recipe(path, resume=True)
    save_state(_finished_state(4, {"model_type": "llama", "hidden_size": 576}, ("antonyms",)), state_dir)
    with pytest.raises(
        StateMismatchError, match=r"base model: hidden_size=576 in the state vs 64 in the recipe's Axolotl settings"
    ):
        run_recipe(path, resume=True)
    assert not (tmp_path / "out" / "tasks").exists()


def test_changing_the_strategy_of_a_running_sequence_is_refused(tmp_path, tiny_model_dir):
    recipe = minimal_recipe(tiny_model_dir, mergeforget={"lambda_schedule": "inv"})
    save_state(_finished_state(4, {"model_type": "llama", "hidden_size": 64}), tmp_path / "out" / "state")
    with pytest.raises(StateMismatchError, match="keeps one strategy from start to end"):
        run_recipe(write(tmp_path, copy.deepcopy(recipe)), resume=True)


def test_command_line_strategy_and_output_dir_replace_the_recipes(tmp_path, tiny_model_dir, monkeypatch):
    path = write(tmp_path, minimal_recipe(tiny_model_dir, mergeforget={"lambda_schedule": "inv"}))
    monkeypatch.chdir(tmp_path)
    # `seq` has no merge, so the recipe's lambda_schedule conflicts with it: said before anything runs.
    with pytest.raises(RecipeError, match="--strategy seq: .*lambda_schedule would have no effect"):
        run_recipe(path, strategy="seq", output_dir="baseline", dry_run=True)
    path = write(tmp_path, minimal_recipe(tiny_model_dir))
    run_recipe(path, strategy="seq", output_dir="baseline", dry_run=True)
    config = yaml.safe_load((tmp_path / "baseline" / "configs" / "task-02-plurals.yaml").read_text())
    assert config["mergeforget"]["strategy"] == "seq"
    assert config["mergeforget"]["state_dir"] == str(tmp_path / "baseline" / "state")
    assert not (tmp_path / "out").exists()  # the recipe's own output_dir is left alone


def test_settings_no_task_can_train_with_are_named_before_anything_runs(tmp_path, tiny_model_dir):
    recipe = minimal_recipe(tiny_model_dir)
    recipe["axolotl"]["micro_batch_size"] = -2  # Axolotl's own validation lets this through
    recipe["tasks"][1]["overrides"] = {"learning_rate": 0}
    with pytest.raises(RecipeError) as caught:
        run_recipe(write(tmp_path, recipe), dry_run=True)
    assert str(caught.value).splitlines()[1:] == [
        "  - axolotl.micro_batch_size: -2 must be a positive whole number",
        "  - tasks[1] ('plurals') overrides.learning_rate: 0 must be a positive number",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "base_model, message",
    [
        ("{tmp}/no-such-model", r"axolotl.base_model: the directory .*/no-such-model does not exist"),
        ("{tmp}", r"axolotl.base_model: .* has no config.json"),
        (
            "nobody-here/no-such-model",
            r"axolotl.base_model: 'nobody-here/no-such-model' is neither a local directory nor a model id that "
            r"resolves offline",
        ),
    ],
    ids=["missing-directory", "directory-without-config", "unresolvable-model-id"],
)
def test_a_base_model_that_cannot_be_loaded_is_named_before_anything_runs(tmp_path, base_model, message):
    recipe = minimal_recipe(base_model.format(tmp=tmp_path))
    with pytest.raises(RecipeError, match=message):
        run_recipe(write(tmp_path, recipe), dry_run=True)
    assert not (tmp_path / "out").exists()


def test_axolotl_rejections_of_a_task_config_are_named_before_anything_runs(tmp_path, tiny_model_dir):
    recipe = minimal_recipe(tiny_model_dir)
    recipe["axolotl"]["warmup_steps"] = "a few"
    del recipe["axolotl"]["learning_rate"]  # required by Axolotl
    recipe["tasks"][1]["overrides"] = {"gradient_accumulation_steps": 2, "batch_size": 16}
    with pytest.raises(RecipeError) as caught:
        run_recipe(write(tmp_path, recipe), dry_run=True)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("Axolotl rejects the task configs of ")
    assert lines[1:3] == [
        "  - axolotl.learning_rate: required by Axolotl, but set nowhere (add it under axolotl: or to base_config)",
        "  - axolotl.warmup_steps: Input should be a valid integer, unable to parse string as an integer",
    ]
    assert lines[3:] == [
        f"  - {tmp_path / 'out' / 'configs' / 'task-02-plurals.yaml'}: "
        "please set only one of gradient_accumulation_steps or batch_size"
    ]
    assert not (tmp_path / "out" / "tasks").exists()


def test_gpu_qlora_recipe_passes_the_pre_flight_with_its_gpu_settings(tmp_path):
    # Validated on CPU as CI can: the recipe, its data, the embedded model, Axolotl's validation of
    # every task config. Training it needs a GPU (4-bit bf16 compute, fused LoRA kernels).
    recipe = REPO / "recipes" / "gpu-qlora-smollm2.yaml"
    runs = run_recipe(recipe, dry_run=True, output_dir=tmp_path / "gpu")
    assert [run.name for run in runs] == ["domain", "language_b", "polarity", "kind"]
    config = yaml.safe_load(runs[0].config_path.read_text())
    assert config["adapter"] == "qlora" and config["load_in_4bit"] is True and config["bf16"] == "auto"
    assert config["lora_mlp_kernel"] and config["lora_qkv_kernel"] and config["lora_o_kernel"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"replay": {"buffer_rows": 0, "fraction": 0.2}}, r"replay.buffer_rows: must be a positive whole number"),
        ({"replay": {"buffer_rows": 16, "fraction": 1.0}}, r"replay.fraction: the replayed share .* \[0, 1\)"),
        ({"replay": {"buffer_rows": 16}}, r"replay: say how much to replay"),
        ({"replay": {"buffer_rows": 16, "fraction": 0.2, "size": 3}}, r"replay: unknown key\(s\) \['size'\]"),
        ({"guard": {"max_forgetting": -5}}, r"guard.max_forgetting: the largest drop allowed must be a positive"),
        ({"guard": {"max_forgetting": 5, "accept_regression": True}}, r"pass --accept-regression"),
        ({"guard": {"max_forgetting": 5}}, r"guard: measures forgetting on held-out rows, but no task has"),
    ],
)
def test_replay_and_guard_settings_are_refused_naming_the_field(block, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(minimal_recipe(**block), "recipe.yaml")


def test_replay_needs_rows_of_one_format_in_local_json_files(tmp_path, tiny_model_dir):
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "q", "answer": " a"}\n')
    recipe = minimal_recipe(tiny_model_dir, replay={"buffer_rows": 8, "fraction": 0.2})
    recipe["tasks"][1]["datasets"][0]["path"] = str(other)
    with pytest.raises(
        RecipeError,
        match=r"task 2 \('plurals'\), datasets.0 .*other.jsonl\): task 'plurals' has the fields \['answer', "
        r"'question'\], but task 'antonyms', whose rows would be replayed into it, has \['completion', 'prompt'\]",
    ):
        run_recipe(write(tmp_path, recipe), dry_run=True)
    parquet = tmp_path / "rows.parquet"
    parquet.write_bytes(b"PAR1")
    recipe["tasks"][1]["datasets"][0] = {"path": str(parquet), "ds_type": "parquet", "type": "alpaca"}
    with pytest.raises(RecipeError, match=r"task 2 \('plurals'\), datasets.0: replay keeps training rows from local"):
        run_recipe(write(tmp_path, recipe), dry_run=True)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_replay_buffer_whose_rows_no_longer_fit_an_unfinished_task(tmp_path, tiny_model_dir):
    import dataclasses

    from mergeforget_plugin import ReplayConfig

    # The first task trained on question/answer rows; the recipe's second task now reads prompt/completion.
    state = dataclasses.replace(
        _finished_state(4, {"model_type": "llama", "hidden_size": 64}),
        replay=ReplayConfig(8, fraction=0.2),
        replay_buffer={"antonyms": [{"question": "hot", "answer": " cold"}]},
    )
    save_state(state, tmp_path / "out" / "state")
    path = write(tmp_path, minimal_recipe(tiny_model_dir, replay={"buffer_rows": 8, "fraction": 0.2}))
    with pytest.raises(
        RecipeError,
        match=r"task 2 \('plurals'\), datasets.0: task 'plurals' has the fields \['completion', 'prompt'\], but "
        r"task 'antonyms', whose rows would be replayed into it, has \['answer', 'question'\]. .*: .*out/state's "
        r"replay buffer holds the earlier rows, so give the task rows with their fields, or start a new sequence",
    ):
        run_recipe(path, resume=True, dry_run=True)
    assert not (tmp_path / "out" / "tasks").exists()


def test_row_summary_counts_rows_and_names_the_first_rows_fields_in_one_pass(tmp_path):
    from mergeforget_plugin.errors import EvaluationError
    from mergeforget_plugin.evaluation.scoring import row_summary

    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"prompt": "hot", "completion": " cold"}\n\n{"prompt": "up", "completion": " down"}\n')
    assert row_summary(lines) == (2, ["completion", "prompt"])
    document = tmp_path / "rows.json"
    document.write_text('[{"text": "a"}, {"text": "b", "label": 1}]')
    assert row_summary(document) == (2, ["text"])
    document.write_text('{"data": [{"text": "a", "label": 0}, {"text": "b", "label": 1}]}\n')  # one line, one document
    assert row_summary(document) == (2, ["label", "text"])
    lines.write_text('{"prompt": "hot", "completion": " cold"}\n["not", "a", "row"]\n')
    with pytest.raises(EvaluationError, match=r"rows.jsonl:2: list, not an object of named fields"):
        row_summary(lines)


def test_replay_reads_each_training_file_once_before_task_one(tmp_path, tiny_model_dir, monkeypatch):
    from pathlib import Path

    from mergeforget_plugin.evaluation import scoring

    read, real = [], scoring.row_summary
    monkeypatch.setattr(scoring, "row_summary", lambda path: read.append(Path(path)) or real(path))
    recipe = minimal_recipe(tiny_model_dir, replay={"buffer_rows": 8, "fraction": 0.2})
    path = write(tmp_path, recipe)
    files = {Path(dataset["path"]).resolve() for task in recipe["tasks"] for dataset in task["datasets"]}
    # Counted for the steps, compared for replay's one row format: one pass over each file, also
    # when the command line moves the output directory (a second view of the recipe).
    for options in ({}, {"output_dir": str(tmp_path / "elsewhere")}):
        read.clear()
        run_recipe(path, dry_run=True, **options)
        assert sorted(read) == sorted(files), (options, read)


def test_replayed_rows_are_one_more_dataset_in_the_tasks_own_format(tmp_path, tiny_model_dir):
    recipe = minimal_recipe(tiny_model_dir, replay={"buffer_rows": 8, "fraction": 0.2, "seed": 3})
    paths = write_task_configs(load_recipe(write(tmp_path, recipe)))
    first, second = (yaml.safe_load(path.read_text()) for path in paths)
    assert len(first["datasets"]) == 1  # nothing to replay into the first task
    own, replayed = second["datasets"]
    assert replayed == {
        "path": str(tmp_path / "out" / "tasks" / "task-02-plurals" / "replayed.jsonl"),
        "ds_type": "json",
        "type": own["type"],
    }
    assert second["mergeforget"]["replay"] == {"buffer_rows": 8, "fraction": 0.2, "count": None, "seed": 3}
    assert second["mergeforget"]["train_files"] == [own["path"]]
    assert "writes" in paths[1].read_text().splitlines()[2]  # the header says where the rows come from


def test_accept_regression_needs_a_guard_and_reaches_every_task_config(tmp_path, tiny_model_dir):
    from mergeforget_plugin.integrations.axolotl.options import run_arguments

    path = write(tmp_path, minimal_recipe(tiny_model_dir))
    with pytest.raises(RecipeError, match="--accept-regression takes a task the guard refused, but .* sets no guard"):
        run_recipe(path, **{**run_arguments({}), "accept_regression": True})
    recipe = minimal_recipe(tiny_model_dir, guard={"max_forgetting": 5})
    for task in recipe["tasks"]:
        task["test_datasets"] = [{**task["datasets"][0], "split": "train"}]
    loaded = load_recipe(write(tmp_path, recipe))
    guard = task_config(loaded, 2, accept_regression=True)["mergeforget"]["guard"]
    assert guard["max_forgetting"] == 5 and guard["accept_regression"] is True
    assert "--resume --accept-regression" in guard["accept_with"]
    assert task_config(loaded, 2)["mergeforget"]["guard"]["accept_regression"] is False
