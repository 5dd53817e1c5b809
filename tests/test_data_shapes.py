"""Every data shape TRL's SFTTrainer trains is scored on the TRL path, on the tokens the trainer
trains: conversational `messages` and prompt/completion turns, language-modelling `text`, and
prompt/completion strings (scored exactly as before). What a user passes as rows, and what is
refused before anything trains."""

from __future__ import annotations

import json

import pytest
import torch

from mergeforget_plugin import EvaluationError, Task, train_sequence
from mergeforget_plugin.evaluation.scoring import (
    _encoded,
    _eos_ids,
    completion_losses,
    eval_set_from_rows,
    generate_greedy,
    generate_one_at_a_time,
    score,
)

from .helpers import as_conversation, demo_rows, sft_config

SYSTEM = "Answer in one word."


def conversational_prompt_completion(row):
    turns = as_conversation(row, SYSTEM)["messages"]
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def text_row(row):
    return {"text": row["prompt"] + row["completion"]}


def _trained_by_sft_trainer(model_dir, rows, tmp_path):
    """The rows as SFTTrainer tokenizes them for training: (input_ids, trained positions)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=sft_config(tmp_path / "sft", max_steps=1),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trained = []
    for example in trainer.train_dataset:
        ids = example["input_ids"]
        if "labels" in example:  # TRL 1.9 to 1.14
            mask = [label != -100 for label in example["labels"]]
        elif "completion_mask" in example:  # newer TRL
            mask = [bool(m) for m in example["completion_mask"]]
        else:  # language modelling: every token
            mask = [True] * len(ids)
        trained.append((ids, mask))
    return tokenizer, trained


@pytest.mark.parametrize("shape", ["conversational prompt-completion", "messages", "text"])
def test_each_shape_is_scored_on_the_tokens_sft_trainer_trains(chat_model_dir, tmp_path, shape):
    make = {
        "conversational prompt-completion": conversational_prompt_completion,
        "messages": lambda row: as_conversation(row, SYSTEM),
        "text": text_row,
    }[shape]
    rows = [make(row) for row in demo_rows("capitals", "test")[:6]]
    tokenizer, trained = _trained_by_sft_trainer(chat_model_dir, rows, tmp_path)
    eval_set = eval_set_from_rows("capitals", rows)
    prompts, answers = _encoded(eval_set, tokenizer, "prompts"), _encoded(eval_set, tokenizer, "answers")
    for (ids, mask), prompt, answer in zip(trained, prompts, answers, strict=True):
        assert ids == prompt + answer  # the same tokens, the prompt first
        if shape == "conversational prompt-completion":  # and the loss covers what TRL trains
            assert mask == [False] * len(prompt) + [True] * len(answer)
    if shape == "text":  # every token after the first, end-of-sequence included
        assert eval_set.metric == "loss" and all(len(p) == 1 for p in prompts)
        assert answers[0][-1] == tokenizer.eos_token_id
    else:  # the last assistant turn, closed by the template's end-of-turn token
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert (
            tokenizer.decode(answers[0])
            == rows[0]["messages" if shape == "messages" else "completion"][-1]["content"] + "<|im_end|>\n"
        )
        assert end in answers[0] and eval_set.answers[0] == demo_rows("capitals", "test")[0]["completion"].strip()


def test_a_conversation_is_scored_on_its_last_assistant_turn_and_generation_ends_at_end_of_turn(chat_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir)
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"].strip()},
            ]
        }
        for row in demo_rows("capitals", "test")[:4]
    ]
    eval_set = eval_set_from_rows("multi", rows, metric="rouge_l", metrics=["loss"], max_new_tokens=6)
    # The prompt is every turn before the last assistant turn, system and earlier turns included.
    assert eval_set.prompts[0] == rows[0]["messages"][:4] and eval_set.stop == []
    assert eval_set.answers[0] == rows[0]["messages"][4]["content"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in _eos_ids(tokenizer, model, eval_set) and end != tokenizer.eos_token_id
    prompt = tokenizer.decode(_encoded(eval_set, tokenizer, "prompts")[0])
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM) and prompt.endswith("<|im_start|>assistant\n")
    assert generate_greedy(model, tokenizer, eval_set) == generate_one_at_a_time(model, tokenizer, eval_set)
    # The loss is the answer's tokens given the prompt, computed by hand.
    prompt_ids, answer_ids = _encoded(eval_set, tokenizer, "prompts")[0], _encoded(eval_set, tokenizer, "answers")[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    targets = torch.tensor(answer_ids)
    by_hand = -torch.log_softmax(logits[len(prompt_ids) - 1 : -1], -1).gather(1, targets[:, None]).sum()
    assert completion_losses(model, tokenizer, eval_set)[0, 0].item() == pytest.approx(by_hand.item(), rel=1e-4)


def test_prompt_completion_strings_score_exactly_as_before(tiny_model_dir):
    """The tokens of prompt/completion rows are those the scorer always used: the prompt with the
    tokenizer's special tokens, the answer without them and then end-of-sequence; options alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = demo_rows("antonyms", "test")
    eval_set = eval_set_from_rows("antonyms", rows, metric="choice", metrics=["loss"])
    assert eval_set.shape == "prompt_completion" and eval_set.stop == ["\n"] and eval_set.metric == "choice"
    assert _encoded(eval_set, tokenizer, "prompts") == tokenizer([r["prompt"] for r in rows])["input_ids"]
    answers = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    assert _encoded(eval_set, tokenizer, "answers") == [ids + [tokenizer.eos_token_id] for ids in answers]
    assert (
        _encoded(eval_set, tokenizer, "options") == tokenizer(eval_set.options, add_special_tokens=False)["input_ids"]
    )
    with torch.no_grad():  # choice by hand: each option's summed log-probability after the prompt
        predictions = []
        for row in rows:
            prompt = tokenizer(row["prompt"])["input_ids"]
            totals = []
            for option in eval_set.options:
                ids = tokenizer(option, add_special_tokens=False)["input_ids"]
                logits = model(torch.tensor([prompt + ids])).logits[0].float()
                log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
                totals.append(log_probs.gather(1, torch.tensor(ids)[:, None]).sum().item())
            predictions.append(eval_set.options[max(range(len(totals)), key=totals.__getitem__)])
    expected = sum(p == r["completion"] for p, r in zip(predictions, rows, strict=True)) / len(rows)
    assert score(model, tokenizer, eval_set)["choice"] == pytest.approx(expected)


def test_the_rows_a_user_passes_become_one_dataset(tmp_path):
    import datasets
    import pandas as pd

    rows = demo_rows("plurals", "train")[:5]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parquet, csv = tmp_path / "rows.parquet", tmp_path / "rows.csv"
    pd.DataFrame(rows).to_parquet(parquet)
    pd.DataFrame(rows).to_csv(csv, index=False)
    for given in (rows, pd.DataFrame(rows), jsonl, str(parquet), csv, datasets.Dataset.from_list(rows)):
        task = Task("plurals", given, given)
        assert isinstance(task.train_dataset, datasets.Dataset) and task.train_dataset.to_list() == rows
        assert task.eval_set().answers == [row["completion"] for row in rows]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)})
    with pytest.raises(
        EvaluationError, match=r"Task 'plurals', train_dataset: a DatasetDict with splits 'train', 'test'"
    ):
        Task("plurals", both)
    with pytest.raises(EvaluationError, match=r"Task 'plurals', eval_dataset: int is not a dataset"):
        Task("plurals", rows, 3)
    with pytest.raises(EvaluationError, match=r"Task 'plurals', train_dataset: .*rows\.txt is not a"):
        Task("plurals", tmp_path / "rows.txt")
    with pytest.raises(EvaluationError, match=r"Task 'plurals', train_dataset: row 1 is str, not a dict"):
        Task("plurals", [rows[0], "text"])


@pytest.mark.parametrize(
    ("rows", "settings", "message"),
    [
        (
            [{"messages": [{"role": "user", "content": "a"}]}],
            {},
            r"Task 't', evaluation row 0, messages: no assistant turn, so there is no answer to score",
        ),
        (
            [{"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]}],
            {},
            r"Task 't', evaluation row 0, messages turn 0: unknown role 'human'",
        ),
        (
            [{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}],
            {},
            r"messages turn 0: content is list; held-out turns are scored as text",
        ),
        ([{"text": "a b"}], {"metric": "choice"}, r"Task 't': choice cannot score text rows"),
        ([{"text": "a b"}], {"metrics": ["rouge_l"]}, r"Task 't': rouge_l cannot score text rows"),
        (
            [{"prompt": "a", "completion": "b"}, {"messages": [{"role": "assistant", "content": "b"}]}],
            {},
            r"evaluation row 1 is conversational, row 0 prompt_completion",
        ),
    ],
)
def test_held_out_rows_that_cannot_be_scored_are_refused_naming_the_row(rows, settings, message):
    with pytest.raises(EvaluationError, match=message):
        eval_set_from_rows("t", rows, **settings)


def test_a_conversational_task_without_a_chat_template_is_refused_before_training(tiny_model_dir, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [as_conversation(row) for row in demo_rows("capitals", "train")[:4]]
    with pytest.raises(EvaluationError, match=r"set `processing_class.chat_template`") as refused:
        train_sequence(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            [Task("capitals", rows)],
            args=sft_config(tmp_path),
            processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
            peft_config=LoraConfig(r=2, target_modules=["q_proj"]),
        )
    assert "Task 'capitals': its rows are conversations" in str(refused.value)
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
def test_a_sequence_of_every_shape_reports_each_tasks_metric(chat_model_dir, tmp_path):
    """Three tasks in three shapes through SFTTrainer: the report, the result and the trackers name
    each task's metric; `text` is scored by loss (a matrix in nats), the conversations by choice."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeforget_plugin.evaluation.trackers import task_scalars

    tasks = [
        Task(
            "antonyms",
            [as_conversation(r) for r in demo_rows("antonyms", "train")],
            [as_conversation(r) for r in demo_rows("antonyms", "test")],
        ),
        Task(
            "capitals",
            [conversational_prompt_completion(r) for r in demo_rows("capitals", "train")],
            [conversational_prompt_completion(r) for r in demo_rows("capitals", "test")],
        ),
        Task(
            "plurals",
            [text_row(r) for r in demo_rows("plurals", "train")],
            [text_row(r) for r in demo_rows("plurals", "test")],
        ),
    ]
    result = train_sequence(
        AutoModelForCausalLM.from_pretrained(chat_model_dir),
        tasks,
        args=sft_config(tmp_path, max_steps=4),
        processing_class=AutoTokenizer.from_pretrained(chat_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert result.primary_metric == {"antonyms": "choice", "capitals": "choice", "plurals": "loss"}
    last = result.scores["plurals"]
    assert set(last["plurals"]) == {"loss", "perplexity"} and set(last["antonyms"]) == {"choice"}
    assert result.accuracy["plurals"]["plurals"] == last["plurals"]["loss"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["primary_metric"] == result.primary_metric
    loss = report["metric_matrices"]["loss"]
    assert loss["tasks"] == ["plurals"] and loss["table"][-1][0] == pytest.approx(last["plurals"]["loss"])
    markdown = (tmp_path / "report.md").read_text()
    assert "Finished tasks: 3 (antonyms, capitals, plurals)" in markdown
    assert (
        "antonyms choice (%, higher is better), capitals choice (%, higher is better), plurals loss (nats" in markdown
    )
    scalars = task_scalars(report)
    assert "continual/loss/plurals" in scalars and "continual/accuracy/antonyms" in scalars
    assert "continual/accuracy/plurals" not in scalars
