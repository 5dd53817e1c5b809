"""Scoring held-out tasks and the continual-learning report (accuracy matrix, AA/BWT/FWT)."""

from __future__ import annotations

import json

import pytest
import torch

from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.evaluation.metrics import continual_metrics
from mergeforget_plugin.evaluation.report import build_report, compare_reports, save_evaluation, write_report
from mergeforget_plugin.evaluation.scoring import (
    EvalSet,
    accuracy,
    choice_predictions,
    choice_scores,
    eval_set_from_rows,
    generated_answers,
)

from .helpers import REPO, demo_rows


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def reference_scores(model, tokenizer, eval_set):
    """Log-likelihood of each option after each prompt, one unpadded sequence at a time."""
    table = []
    with torch.no_grad():
        for prompt in eval_set.prompts:
            prompt_ids = tokenizer(prompt)["input_ids"]
            row = []
            for option in eval_set.options:
                ids = torch.tensor([prompt_ids + tokenizer(option, add_special_tokens=False)["input_ids"]])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                targets = ids[0, 1:]
                row.append(sum(logprobs[p, targets[p]].item() for p in range(len(prompt_ids) - 1, len(targets))))
            table.append(row)
    return torch.tensor(table)


@pytest.mark.parametrize("token_budget", [64, 100_000], ids=["a-few-prompts-per-batch", "one-batch"])
def test_choice_scores_equal_one_sequence_at_a_time(tiny, token_budget):
    model, tokenizer = tiny
    eval_set = eval_set_from_rows("plurals", demo_rows("plurals", "test"), option_rows=demo_rows("plurals", "train"))
    assert (
        len(eval_set.options) == 40
        and max(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in eval_set.options) > 1
    )
    expected = reference_scores(model, tokenizer, eval_set)
    scores = choice_scores(model, tokenizer, eval_set, token_budget=token_budget)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    expected_predictions = [eval_set.options[int(i)] for i in expected.argmax(1)]
    assert choice_predictions(model, tokenizer, eval_set, token_budget=token_budget) == expected_predictions


@pytest.mark.parametrize(
    "options",
    [["a", "b", "c"], [" New York", " New Delhi", " Paris", " New"]],
    ids=["single-token-options", "options-sharing-a-prefix"],
)
def test_choice_scores_for_single_token_and_shared_prefix_options(tiny, options):
    model, tokenizer = tiny
    prompts = [row["prompt"] for row in demo_rows("capitals", "test")[:6]]
    eval_set = EvalSet("c", prompts, [options[0]] * len(prompts), options=options)
    lengths = {len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options}
    assert (lengths == {1}) == (options[0] == "a")  # the two cases really differ
    torch.testing.assert_close(
        choice_scores(model, tokenizer, eval_set, token_budget=50),
        reference_scores(model, tokenizer, eval_set),
        rtol=1e-4,
        atol=1e-4,
    )


def test_an_evaluation_set_is_tokenized_once(tiny):
    model, tokenizer = tiny
    calls = []

    class CountingTokenizer:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args, **kwargs):
            calls.append(args)
            return self.inner(*args, **kwargs)

        def __len__(self):
            return len(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    counting = CountingTokenizer(tokenizer)
    eval_set = eval_set_from_rows("antonyms", demo_rows("antonyms", "test"), option_rows=demo_rows("antonyms", "train"))
    first = choice_predictions(model, counting, eval_set)
    tokenizations = len(calls)
    assert tokenizations == 2  # prompts once, options once, each as one batch
    assert choice_predictions(model, counting, eval_set) == first and len(calls) == tokenizations


def test_exact_match_compares_the_first_generated_line(tiny):
    model, tokenizer = tiny
    rows = demo_rows("capitals", "test")[:4]
    prompts = [row["prompt"] for row in rows]
    produced = generated_answers(model, tokenizer, EvalSet("c", prompts, ["x"] * 4, metric="exact_match"))
    answers = [produced[0], produced[1], produced[2] + " not it", "never generated"]
    assert accuracy(model, tokenizer, EvalSet("c", prompts, answers, metric="exact_match")) == 0.5


def test_accuracy_leaves_the_training_mode_as_it_was(tiny):
    model, tokenizer = tiny
    model.train()
    eval_set = EvalSet("t", ["a b", "c d"], [" x", " y"])
    accuracy(model, tokenizer, eval_set)
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [], "answers": []}, "at least one"),
        ({"prompts": ["p"], "answers": [" a"], "options": [" b", " c"]}, r"answers \[' a'\] are not among the options"),
        ({"prompts": ["p", "q"], "answers": [" a", " a"]}, "needs at least two options"),
    ],
)
def test_eval_set_raises_on_unusable_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalSet("task", **kwargs)


def test_rows_without_the_prompt_field_name_the_field():
    # A `text` row is a language-modelling task (scored by loss); a row of no known shape is refused.
    with pytest.raises(ValueError, match=r"row 0 has no field 'prompt' \(fields: \['question'\]\)"):
        eval_set_from_rows("t", [{"question": "x"}])


def test_prompt_format_reuses_the_axolotl_training_template():
    eval_set = eval_set_from_rows(
        "t",
        [{"q": "2+2?", "a": " 4"}, {"q": "3+3?", "a": " 6"}],
        prompt_field="q",
        answer_field="a",
        prompt_format="Question: {instruction}\nAnswer:",
    )
    assert eval_set.prompts == ["Question: 2+2?\nAnswer:", "Question: 3+3?\nAnswer:"]


def test_continual_metrics_follow_the_documented_definitions():
    rows = [
        {"a": 0.9, "b": 0.3, "c": 0.2},
        {"a": 0.6, "b": 0.8, "c": 0.4},
        {"a": 0.5, "b": 0.7, "c": 0.9},
    ]
    zero_shot = {"a": 0.25, "b": 0.25, "c": 0.25}
    metrics = continual_metrics(["a", "b", "c"], rows, zero_shot)
    assert metrics["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert metrics["forgetting"] == pytest.approx({"a": 0.4, "b": 0.1})
    assert metrics["bwt"] == pytest.approx(-(0.4 + 0.1) / 2)
    assert metrics["fwt"] == pytest.approx(((0.3 - 0.25) + (0.4 - 0.25)) / 2)
    assert continual_metrics([], [], None)["average_accuracy"] is None


def test_report_files_from_an_interrupted_run(tmp_path):
    out = tmp_path / "run"
    layout = RunLayout(out)
    save_evaluation(layout, 0, None, {"a": 0.5, "b": 0.5, "c": 0.5})
    save_evaluation(layout, 1, "a", {"a": 0.9, "b": 0.5, "c": 0.4})
    save_evaluation(layout, 2, "b", {"a": 0.7, "b": 0.95, "c": 0.45})
    paths = write_report(layout)
    assert [p.name for p in paths] == ["report.json", "report.md", "accuracy_matrix.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == ["a", "b", "c"] and report["rows_after"] == ["a", "b"]
    assert report["accuracy_matrix"] == [[0.9, 0.5, 0.4], [0.7, 0.95, 0.45]]
    assert report["metrics"]["bwt"] == pytest.approx(-0.2) and report["metrics"]["fwt"] == pytest.approx(0.0)
    assert "torch" in report["versions"]
    markdown = (out / "report.md").read_text()
    assert "| base (zero-shot) | 50.0 | 50.0 | 50.0 |" in markdown and "| b | 70.0 | 95.0 | 45.0 |" in markdown
    assert "BWT, backward transfer (negative = forgetting) | -20.0" in markdown
    png = (out / "accuracy_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_compare_puts_runs_of_the_same_tasks_side_by_side(tmp_path):
    reports = []
    for name, last_row in (("slao-run", {"a": 0.8, "b": 0.9}), ("seq-run", {"a": 0.4, "b": 0.95})):
        layout = RunLayout(tmp_path / name)
        save_evaluation(layout, 0, None, {"a": 0.5, "b": 0.5})
        save_evaluation(layout, 1, "a", {"a": 0.9, "b": 0.6})
        save_evaluation(layout, 2, "b", last_row)
        report = build_report(layout)
        report["finished_tasks"], report["strategy"] = ["a", "b"], {"strategy": name.split("-")[0]}
        reports.append(report)
    table = compare_reports(reports).splitlines()
    assert table[0] == "| | slao-run (slao) | seq-run (seq) |"
    # AA = mean of the last row; BWT = R[2][a] - R[1][a].
    assert "| AA (after the last task) | 85.0 | 67.5 |" in table
    assert "| BWT (negative = forgetting) | -10.0 | -50.0 |" in table
    assert "| a: after its training → after the last task | 90.0 → 80.0 | 90.0 → 40.0 |" in table
    assert "| b: after its training → after the last task | 90.0 → 90.0 | 95.0 → 95.0 |" in table


def test_report_of_a_run_with_no_evaluations_is_empty_but_valid(tmp_path):
    report = build_report(RunLayout(tmp_path))
    assert report["tasks"] == [] and report["metrics"]["average_accuracy"] is None
    assert [p.name for p in write_report(RunLayout(tmp_path))] == ["report.json", "report.md"]


def test_order_disparity_follows_the_documented_definition():
    from mergeforget_plugin.evaluation.metrics import order_disparity

    result = order_disparity(
        {"0123": {"a": 0.9, "b": 0.5, "c": 0.7}, "3210": {"a": 0.6, "b": 0.55, "c": 0.7}, "1032": {"a": 0.8, "b": 0.4}}
    )
    assert result["opd"] == pytest.approx({"a": 0.3, "b": 0.15})  # c is missing from one order: left out
    assert result["mopd"] == pytest.approx(0.3) and result["aopd"] == pytest.approx(0.225)
    with pytest.raises(ValueError, match="at least two task orders"):
        order_disparity({"0123": {"a": 0.9}})


@pytest.mark.parametrize(
    "module",
    [
        "mergeforget_plugin.evaluation.metrics",
        "mergeforget_plugin.core.slao",
        "stats",
        "mergeforget_plugin.evaluation.schedule",
        "mergeforget_plugin.core.environment",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
