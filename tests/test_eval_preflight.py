"""Evaluation settings and held-out data are read and checked before anything trains (`--dry-run` too),
and the SuperNI data preparation from the natural-instructions release's task files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from mergeforget_plugin.data.standard_cl import DataPrepError
from mergeforget_plugin.data.superni import ORDER_1, ORDER_2, prepare_superni, split_sizes
from mergeforget_plugin.errors import RecipeError
from mergeforget_plugin.evaluation.scoring import read_rows
from mergeforget_plugin.integrations.axolotl.recipe import load_recipe
from mergeforget_plugin.integrations.axolotl.runner import task_config

from .helpers import DEMO_DATA, REPO

DATASET_TYPE = {"field_instruction": "prompt", "field_output": "completion", "format": "{instruction}"}
GENERATIVE = REPO / "recipes" / "data" / "generative"


def recipe_with(tmp_path, *, test_path=None, eval_block=None, probes=None, schedule=None):
    task = {
        "name": "headline",
        "datasets": [{"path": str(GENERATIVE / "headline.train.jsonl"), "ds_type": "json", "type": DATASET_TYPE}],
    }
    if test_path is not False:
        task["test_datasets"] = [
            {"path": str(test_path or GENERATIVE / "headline.test.jsonl"), "ds_type": "json", "type": DATASET_TYPE}
        ]
    if eval_block is not None:
        task["eval"] = eval_block
    recipe = {
        "output_dir": "out",
        "axolotl": {"base_model": "/models/tiny", "adapter": "lora", "learning_rate": 1e-3},
        "tasks": [
            task,
            {
                "name": "capitals",
                "datasets": [
                    {"path": str(DEMO_DATA / "capitals.train.jsonl"), "ds_type": "json", "type": DATASET_TYPE}
                ],
            },
        ],
    }
    if probes is not None:
        recipe["probes"] = probes
    if schedule is not None:
        recipe["eval"] = {"schedule": schedule}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_generative_task_s_settings_reach_the_plugin_block(tmp_path):
    probe_file = DEMO_DATA / "plurals.test.jsonl"
    path = recipe_with(
        tmp_path,
        eval_block={"metric": "rouge_l", "metrics": ["loss"], "max_new_tokens": 12, "stop": ["\n", "."]},
        probes=[{"name": "plurals_probe", "path": str(probe_file), "metric": "loss"}],
        schedule="all",
    )
    loaded = load_recipe(path)
    block = task_config(loaded, 1, loaded.base_axolotl_config())["mergeforget"]
    assert block["evaluation"][0] | {"path": None} == block["evaluation"][0] | {
        "metric": "rouge_l",
        "metrics": ["loss"],
        "max_new_tokens": 12,
        "stop": ["\n", "."],
        "path": None,
    }
    assert block["probes"][0]["name"] == "plurals_probe" and block["probes"][0]["path"] == str(probe_file)
    assert block["eval_schedule"] == "all" and block["sequence"] == ["headline", "capitals"]
    eval_set = loaded.eval_specs()[0].to_eval_set()
    assert eval_set.metrics == ["rouge_l", "loss"] and eval_set.stop == ["\n", "."]
    # Without eval settings the free-text task is scored with held-out loss, not by ranking every headline.
    plain = load_recipe(recipe_with(tmp_path)).eval_specs()[0].to_eval_set()
    assert plain.metric == "loss" and plain.options == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_block": {"metric": "bleu"}}, r"task 1 \('headline'\), eval.metric: Input should be 'choice'"),
        ({"eval_block": {"metrics": ["rouge_l"]}, "test_path": False}, r"eval: rouge_l score held-out rows"),
        ({"eval_block": {"metric": "rouge_l", "max_new_tokens": 0}}, r"eval.max_new_tokens: Input should be greater"),
        (
            {"probes": [{"name": "general", "path": "nowhere.jsonl"}]},
            r"probes\[0\] \('general'\), path: .*nowhere.jsonl does not exist",
        ),
        ({"probes": [{"name": "general"}]}, r"probes.0: give either path .* or lm_eval"),
        ({"probes": [{"name": "capitals", "path": str(DEMO_DATA / "plurals.test.jsonl")}]}, "differ from task names"),
        ({"schedule": "sometimes"}, r"eval.schedule: Input should be 'needed' or 'all'"),
    ],
)
def test_bad_evaluation_settings_are_refused_naming_the_task_and_field(tmp_path, kwargs, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe_with(tmp_path, **kwargs))


def test_bad_held_out_data_is_refused_by_dry_run_naming_file_and_line(tmp_path):
    rows = GENERATIVE.joinpath("headline.test.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(rows[:3] + [rows[3] + " trailing"] + rows[4:]) + "\n")
    path = recipe_with(tmp_path, test_path=broken)
    command = [sys.executable, "-m", "mergeforget_plugin.cli", "train", str(path), "--dry-run"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert f"task 1 ('headline'), test_datasets.0: {broken}:4: not a JSON object" in completed.stderr
    assert not (tmp_path / "out").exists()
    # A row without the answer field: the task, the file and the field are named.
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(
        RecipeError, match=rf"Task 'headline' \({missing}\): evaluation row 0 has no field 'completion'"
    ):
        load_recipe(recipe_with(tmp_path, test_path=missing))
    # rouge_l against an empty reference.
    empty = tmp_path / "empty-answer.jsonl"
    empty.write_text(json.dumps({"prompt": "a", "completion": " "}) + "\n")
    with pytest.raises(RecipeError, match="rouge_l compares each generation with its reference, but row 0"):
        load_recipe(recipe_with(tmp_path, test_path=empty, eval_block={"metric": "rouge_l"}))


def release_task(definition="Classify the sentence.", instances=3, outputs=lambda i: [f"label {i}"]):
    """A task file in the natural-instructions release's layout."""
    return {
        "Contributors": ["x"],
        "Source": ["y"],
        "Definition": [definition],
        "Input_language": ["English"],
        "Positive Examples": [{"input": "an example", "output": "label", "explanation": "why"}],
        "Negative Examples": [],
        "Instances": [{"id": f"t-{i}", "input": f"input text {i}", "output": outputs(i)} for i in range(instances)],
        "Instance License": ["Unknown"],
    }


def write_release(root, tasks):
    (root / "tasks").mkdir(parents=True)
    for name, content in tasks.items():
        (root / "tasks" / f"{name}.json").write_text(json.dumps(content, indent=1))


def test_superni_rows_follow_the_protocol_and_are_seeded(tmp_path):
    assert len(ORDER_1) == len(set(ORDER_1)) == 15 and set(ORDER_1) == set(ORDER_2)
    names = list(ORDER_1[:2])
    write_release(tmp_path / "ni", {names[0]: release_task(instances=1300), names[1]: release_task(instances=200)})
    manifest = prepare_superni(tmp_path / "out", tmp_path / "ni", names)
    assert [(manifest["tasks"][n]["train"], manifest["tasks"][n]["test"]) for n in names] == [(1000, 100), (180, 20)]
    train, test = (
        read_rows(tmp_path / "out" / names[0] / "train.jsonl"),
        read_rows(tmp_path / "out" / names[0] / "test.jsonl"),
    )
    assert len(train) == 1000 and len(test) == 100 and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    row = test[0]
    number = row["prompt"].split("input text ")[1].split("\n")[0]
    assert row["prompt"] == (
        "Definition: Classify the sentence.\n\nNow complete the following example -\n"
        f"Input: input text {number}\nOutput:"
    )
    assert row["completion"] == f" label {number}"
    again = prepare_superni(tmp_path / "again", tmp_path / "ni", names)
    assert (tmp_path / "again" / names[0] / "test.jsonl").read_bytes() == (
        tmp_path / "out" / names[0] / "test.jsonl"
    ).read_bytes()
    other = prepare_superni(tmp_path / "other", tmp_path / "ni", names, seed=1)
    assert again["tasks"] == other["tasks"]  # another seed: the same sizes, other rows
    assert (tmp_path / "other" / names[0] / "test.jsonl").read_bytes() != (
        tmp_path / "out" / names[0] / "test.jsonl"
    ).read_bytes()
    assert split_sizes(100, 1000, 100) == (90, 10) and split_sizes(5, 1000, 100) == (4, 1)


def test_superni_command_writes_the_rows_the_recipes_read(tmp_path):
    from mergeforget_plugin.cli import main

    write_release(tmp_path / "ni", {name: release_task(instances=30) for name in ORDER_1})
    out = tmp_path / "recipes-data" / "superni"
    assert main(["prepare-data", "superni", str(out), "--from", str(tmp_path / "ni")]) == 0
    for order in ("superni-order1.yaml", "superni-order2.yaml"):
        recipe = yaml.safe_load((REPO / "recipes" / order).read_text())
        assert len(recipe["tasks"]) == 15
        for task in recipe["tasks"]:
            for entry in (*task["datasets"], *task["test_datasets"]):
                assert (out.parent.parent / entry["path"].replace("data/", "recipes-data/", 1)).is_file()
            assert task["eval"]["metric"] == "rouge_l"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"tasks/task1572_samsum_summary.json does not exist"),
        (release_task(instances=0), r"task1572_samsum_summary.json: the task has no Instances"),
        (release_task(outputs=lambda i: [] if i == 1 else ["x"]), r"instance 1 \(t-1\) has an empty output list"),
        (release_task(definition=""), "no Definition"),
    ],
    ids=["missing-task-file", "no-instances", "empty-output-list", "no-definition"],
)
def test_superni_refuses_unusable_task_files_naming_the_file(tmp_path, content, message):
    write_release(tmp_path / "ni", {} if content is None else {ORDER_1[0]: content})
    with pytest.raises(DataPrepError, match=message):
        prepare_superni(tmp_path / "out", tmp_path / "ni", ORDER_1[:1])
    assert not (tmp_path / "out").exists()


def test_a_broken_training_file_is_named_by_line_before_anything_trains(tmp_path):
    rows = (GENERATIVE / "headline.train.jsonl").read_bytes().splitlines()
    broken = tmp_path / "train.jsonl"
    broken.write_bytes(b"\n".join(rows[:5] + [b'{"prompt": "\xff"}'] + rows[5:]) + b"\n")
    path = recipe_with(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["tasks"][1]["datasets"][0]["path"] = str(broken)
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=rf"task 2 \('capitals'\), datasets.0: {broken}:6: not UTF-8 text"):
        load_recipe(path)
