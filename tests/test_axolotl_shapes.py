"""Held-out sets of Axolotl's dataset types (chat_template, alpaca, completion, input_output) are
scored on the tokens Axolotl trains rows of that type on, refused before training when their rows
cannot be read, and scored through a real `axolotl train`."""

from __future__ import annotations

import json
import re

import pytest

from mergeforget_plugin.errors import RecipeError
from mergeforget_plugin.integrations.axolotl.recipe import load_recipe

from .axolotl_helpers import CPU_KEYS, mergeforget, minimal_recipe, write
from .helpers import demo_rows

SYSTEM = "Answer in one word."
SHAREGPT = {
    "type": "chat_template",
    "field_messages": "conversations",
    "message_property_mappings": {"role": "from", "content": "value"},
    "roles": {"user": ["human"], "assistant": ["gpt"]},
}
ENTRIES = {
    "chat_template": SHAREGPT,
    "alpaca": {"type": "alpaca"},
    "completion": {"type": "completion"},
    "input_output": {"type": "input_output"},
}


def as_type(kind, row):
    """A demo prompt/completion row in the fields of Axolotl dataset type ``kind``."""
    prompt, answer = row["prompt"], row["completion"]
    if kind == "chat_template":
        turns = [("system", SYSTEM), ("human", prompt), ("gpt", answer.strip())]
        return {"conversations": [{"from": role, "value": text} for role, text in turns]}
    if kind == "alpaca":
        return {"instruction": prompt, "input": "", "output": answer.strip()}
    if kind == "completion":
        return {"text": prompt + answer}
    return {"segments": [{"label": False, "text": prompt}, {"label": True, "text": answer}]}


def typed_file(folder, kind, task, split):
    path = folder / f"{task}.{kind}.{split}.jsonl"
    path.write_text("".join(json.dumps(as_type(kind, row)) + "\n" for row in demo_rows(task, split)))
    return path


@pytest.mark.parametrize("kind", list(ENTRIES))
def test_held_out_rows_of_each_axolotl_type_are_the_tokens_axolotl_trains(chat_model_dir, tmp_path, kind):
    """The same rows as training data (Axolotl's own preparation) and as a held-out set: the same
    tokens, and the scored answer is the last run of trained tokens."""
    pytest.importorskip("axolotl")
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.data import prepare_datasets
    from axolotl.utils.dict import DictDefault

    from mergeforget_plugin.evaluation.scoring import _encoded
    from mergeforget_plugin.integrations.axolotl.args import EvalSpec

    path = typed_file(tmp_path, kind, "capitals", "test")
    entry = {**ENTRIES[kind], "path": str(path), "ds_type": "json"}
    config = {
        "base_model": str(chat_model_dir),
        "datasets": [entry],
        "chat_template": "tokenizer_default",
        "sequence_len": 128,
        "micro_batch_size": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "adapter": "lora",
        "lora_r": 2,
        "lora_target_modules": ["q_proj"],
        "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "shuffle_merged_datasets": False,
        "val_set_size": 0,
        **CPU_KEYS,
    }
    cfg = validate_config(DictDefault(config))
    normalize_config(cfg)
    tokenizer = load_tokenizer(cfg)
    trained = prepare_datasets(cfg, tokenizer)[0]
    eval_set = EvalSpec(task="capitals", path=str(path), dataset=entry).to_eval_set(tokenizer, cfg)
    prompts, answers = _encoded(eval_set, tokenizer, "prompts"), _encoded(eval_set, tokenizer, "answers")
    assert len(trained) == len(prompts) == len(demo_rows("capitals", "test"))
    for row, prompt, answer in zip(trained, prompts, answers, strict=True):
        assert row["input_ids"][: len(prompt) + len(answer)] == prompt + answer
        assert row["labels"][len(prompt) : len(prompt) + len(answer)] == answer  # trained, every token
        if kind != "completion":  # and nothing after the answer is trained
            assert all(label == -100 for label in row["labels"][len(prompt) + len(answer) :])
    references = [row["completion"].strip() for row in demo_rows("capitals", "test")]
    if kind == "completion":  # trained on every token: the first is the prompt, scored by loss
        assert eval_set.metric == "loss" and all(len(prompt) == 1 for prompt in prompts)
    else:
        assert eval_set.answers == references and eval_set.metric == "choice"
    if kind == "chat_template":  # generation also ends at the template's end-of-turn token
        assert _encoded(eval_set, tokenizer, "end") == [[tokenizer.convert_tokens_to_ids("<|im_end|>")]]
        assert eval_set.stop == []


@pytest.mark.parametrize(
    ("kind", "rows", "eval_settings", "message"),
    [
        (
            SHAREGPT,
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}],
            {},
            r"row 0, conversations turn 1: unknown role 'bot'; map it with `roles:`",
        ),
        (
            SHAREGPT,
            [{"conversations": [{"from": "human", "value": "a"}]}],
            {},
            r"row 0, conversations: no assistant turn, so there is no answer to score",
        ),
        (
            SHAREGPT,
            [{"conversations": [{"role": "user", "content": "a"}]}],
            {},
            r"conversations turn 0: needs 'from' and 'value' \(set message_property_mappings",
        ),
        ({"type": "alpaca"}, [{"instruction": "a"}], {}, r"row 0: no field 'output'"),
        ({"type": "completion"}, [{"text": "a"}], {"metric": "choice"}, r"choice cannot score `completion` rows"),
        ({"type": "alpaca_chat"}, [{"instruction": "a", "output": "b"}], {}, r"type 'alpaca_chat' is not scored"),
    ],
)
def test_held_out_rows_an_axolotl_type_cannot_read_are_refused_before_training(
    tmp_path, kind, rows, eval_settings, message
):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = minimal_recipe()
    task = recipe["tasks"][0]
    task["test_datasets"] = [{"path": str(held_out), "ds_type": "json", **kind}]
    if eval_settings:
        task["eval"] = eval_settings
    with pytest.raises(
        RecipeError, match=r"task 1 \('antonyms'\), test_datasets.0 / eval: Task 'antonyms' \("
    ) as error:
        load_recipe(write(tmp_path, recipe))
    assert str(held_out) in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)


@pytest.mark.slow
def test_a_recipe_of_chat_template_and_completion_tasks_reports_each_tasks_metric(chat_model_dir, tmp_path):
    """`mergeforget train` through the real `axolotl train`: a chat_template task scored by choice
    (its answers are a label set) and a completion task scored by loss."""
    pytest.importorskip("axolotl")
    axolotl = {
        "base_model": str(chat_model_dir),
        "chat_template": "tokenizer_default",
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "sequence_len": 96,
        "micro_batch_size": 8,
        "max_steps": 3,
        "num_epochs": 1,
        "optimizer": "adamw_torch",
        "learning_rate": 5e-3,
        "seed": 0,
        "save_strategy": "no",
        **CPU_KEYS,
    }

    def task(name, kind):
        entry = {**ENTRIES[kind], "ds_type": "json"}
        return {
            "name": name,
            "datasets": [{**entry, "path": str(typed_file(tmp_path, kind, name, "train"))}],
            "test_datasets": [{**entry, "path": str(typed_file(tmp_path, kind, name, "test")), "split": "train"}],
        }

    recipe = {
        "output_dir": "out",
        "axolotl": axolotl,
        "tasks": [task("capitals", "chat_template"), task("plurals", "completion")],
    }
    completed = mergeforget("train", str(write(tmp_path, recipe)), cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["primary_metric"] == {"capitals": "choice", "plurals": "loss"}
    assert report["finished_tasks"] == ["capitals", "plurals"]
    assert report["metric_matrices"]["loss"]["tasks"] == ["plurals"]
    assert len(report["metric_matrices"]["choice"]["table"]) == 2
