"""Generative metrics (held-out loss, ROUGE-L, exact match), probes and the evaluation schedule.

The batched scorers are checked against one-sequence-at-a-time references; the report, the
trackers and the TRL path are checked on two free-text tasks from real text
(recipes/data/generative/), where the old label ranking would have been meaningless.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mergeforget_plugin import EvaluationError, MergeForgetError, Task, train_sequence
from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.evaluation.metrics import continual_metrics
from mergeforget_plugin.evaluation.report import (
    build_report,
    evaluation_record,
    render_markdown,
    save_row,
    write_report,
)
from mergeforget_plugin.evaluation.schedule import evaluation_count, row_plan
from mergeforget_plugin.evaluation.scoring import (
    EvalSet,
    completion_losses,
    default_metric,
    eval_set_from_rows,
    finish_answer,
    generate_greedy,
    generate_one_at_a_time,
    read_rows,
    rouge_l,
    score,
)

from .helpers import REPO, demo_rows, peft_model, sft_config

GENERATIVE = REPO / "recipes" / "data" / "generative"


def generative_rows(name, split, count=None):
    return read_rows(GENERATIVE / f"{name}.{split}.jsonl")[:count]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def mixed_rows():
    """Prompts of very different lengths, so batches differ from one prompt at a time in padding."""
    return (
        demo_rows("capitals", "test")
        + generative_rows("headline", "test", 6)
        + generative_rows("reply", "test", 6)
        + demo_rows("antonyms", "test")
    )


@pytest.mark.parametrize("token_budget", [120, 100_000], ids=["a-few-prompts-per-batch", "one-batch"])
@pytest.mark.parametrize("stop", [[], ["\n"], ["e", "\n"]], ids=["no-stop", "newline", "letter-e"])
def test_batched_generation_equals_generate_one_prompt_at_a_time(tiny, token_budget, stop):
    model, tokenizer = tiny
    eval_set = eval_set_from_rows("mixed", mixed_rows(), metric="rouge_l", max_new_tokens=10, stop=stop)
    expected = generate_one_at_a_time(model, tokenizer, eval_set)
    assert len(set(expected)) > 5  # the answers differ, so equality below is not vacuous
    assert generate_greedy(model, tokenizer, eval_set, token_budget=token_budget) == expected


def test_answers_are_cut_at_the_first_stop_string_once_they_begin():
    assert finish_answer("\n\n Paris\nBerlin", ["\n"]) == "Paris"
    assert finish_answer("  Paris, France. Then", [".", ","]) == "Paris"
    assert finish_answer("no stop here ", []) == "no stop here"


def reference_losses(model, tokenizer, eval_set):
    rows = []
    with torch.no_grad():
        for prompt, answer in zip(eval_set.prompts, eval_set.answers, strict=True):
            prompt_ids = tokenizer(prompt)["input_ids"]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt_ids + answer_ids])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            nll = -sum(logprobs[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(answer_ids))
            rows.append([nll, len(answer_ids)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("token_budget", [90, 100_000], ids=["a-few-rows-per-batch", "one-batch"])
def test_held_out_loss_equals_one_sequence_at_a_time(tiny, token_budget):
    model, tokenizer = tiny
    eval_set = eval_set_from_rows("mixed", mixed_rows(), metric="loss")
    expected = reference_losses(model, tokenizer, eval_set)
    torch.testing.assert_close(
        completion_losses(model, tokenizer, eval_set, token_budget=token_budget), expected, rtol=1e-5, atol=1e-4
    )
    values = score(model, tokenizer, eval_set)
    mean = float(expected[:, 0].sum() / expected[:, 1].sum())
    assert values["loss"] == pytest.approx(mean, rel=1e-5) and values["perplexity"] == pytest.approx(math.exp(mean))


def test_rouge_l_is_superni_s_f1_with_stemming():
    scores = rouge_l(["the cats are running", "a b", ""], ["cat running", "c d", "anything"])
    # LCS "cat run" (stemmed): precision 2/4, recall 2/2 -> F1 2/3.
    assert scores == pytest.approx([2 / 3, 0.0, 0.0])


def test_one_generation_serves_rouge_l_and_exact_match(tiny):
    model, tokenizer = tiny
    rows = generative_rows("headline", "test", 6)
    probe = eval_set_from_rows("h", rows, metric="rouge_l", max_new_tokens=8)
    produced = generate_greedy(model, tokenizer, probe)
    answers = [produced[0], produced[1], produced[2] + " more", "never", "never", "never"]
    eval_set = EvalSet("h", probe.prompts, answers, "exact_match", metrics=["rouge_l"], max_new_tokens=8)
    values = score(model, tokenizer, eval_set)
    assert values["exact_match"] == pytest.approx(2 / 6)
    assert values["rouge_l"] == pytest.approx(sum(rouge_l(produced, [a.strip() for a in answers])) / 6)


def test_the_default_metric_is_choice_for_label_sets_and_loss_for_free_text():
    assert default_metric([" Paris", " Rome", " Paris"]) == "choice"
    assert default_metric([f" word{i}" for i in range(40)]) == "choice"  # 40 one-word answers: still labels
    sentences = [f"This is reference sentence number {i} of the set." for i in range(40)]
    assert default_metric(sentences) == "loss"
    assert default_metric(sentences, options=["a", "b"]) == "choice"
    assert eval_set_from_rows("reply", generative_rows("reply", "test")).metric == "loss"
    assert eval_set_from_rows("plurals", demo_rows("plurals", "test")).metric == "choice"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "bleu"}, "unknown metric 'bleu'"),
        ({"metrics": ["rouge_l"], "answers": ["a", " "]}, "row 1 has an empty answer"),
        ({"metric": "rouge_l", "max_new_tokens": 0}, "max_new_tokens must be a positive whole number"),
        ({"metric": "exact_match", "stop": [""]}, "stop string must be non-empty"),
    ],
)
def test_unusable_evaluation_settings_are_refused_naming_the_task(kwargs, message):
    arguments = {"task": "headline", "prompts": ["p", "q"], "answers": ["a b", "c d"], **kwargs}
    with pytest.raises(EvaluationError, match=message) as raised:
        EvalSet(**arguments)
    assert "Task 'headline'" in str(raised.value) and isinstance(raised.value, MergeForgetError)


def test_task_settings_are_refused_before_anything_trains(tmp_path):
    from datasets import Dataset

    train = Dataset.from_list(generative_rows("headline", "train", 4))
    with pytest.raises(EvaluationError, match=r"Task 'headline', metric: unknown metric 'rouge'"):
        Task("headline", train, train, metric="rouge")
    with pytest.raises(EvaluationError, match=r"Task 'headline', metrics: rouge_l need held-out rows"):
        Task("headline", train, metrics=["rouge_l"])
    with pytest.raises(EvaluationError, match=r"Task 'headline', max_new_tokens"):
        Task("headline", train, train, metric="rouge_l", max_new_tokens=0)
    with pytest.raises(EvaluationError, match="eval_schedule 'some'"):
        train_sequence(None, [Task("headline", train, train)], args=sft_config(tmp_path), eval_schedule="some")
    assert not (tmp_path / "state").exists()


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    broken = tmp_path / "test.jsonl"
    broken.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"} trailing\n')
    with pytest.raises(EvaluationError, match=rf"{broken}:2: not a JSON object"):
        read_rows(broken)
    # A JSON Lines file named .json reads as datasets reads it; an empty file and a list of strings do not.
    lines = tmp_path / "rows.json"
    lines.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n')
    assert [row["prompt"] for row in read_rows(lines)] == ["a", "c"]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvaluationError, match="empty"):
        read_rows(tmp_path / "empty.jsonl")
    (tmp_path / "strings.json").write_text('["a", "b"]')
    with pytest.raises(EvaluationError, match="row 1 is str"):
        read_rows(tmp_path / "strings.json")


def test_loss_forgetting_is_a_rise_and_bwt_stays_negative_for_forgetting():
    rows = [{"a": 1.0, "b": 3.0}, {"a": 1.5, "b": 0.8}]
    metrics = continual_metrics(["a", "b"], rows, {"a": 2.0, "b": 2.5}, higher_is_better=False)
    assert metrics["forgetting"] == pytest.approx({"a": 0.5})  # a's loss rose by 0.5 after b
    assert metrics["bwt"] == pytest.approx(-0.5) and metrics["fwt"] == pytest.approx(2.5 - 3.0)
    assert metrics["average_accuracy"] == pytest.approx((1.5 + 0.8) / 2)


def test_needed_scores_what_the_metrics_read_and_saves_91_of_240_for_15_tasks():
    sequence = ["a", "b", "c", "d"]
    assert row_plan("needed", sequence, [], ["p"]) == (sequence, ["p"])
    assert row_plan("needed", sequence, ["a", "b"], ["p"]) == (["a", "b", "c"], [])
    assert row_plan("needed", sequence, sequence, ["p"]) == (sequence, ["p"])
    assert row_plan("all", sequence, ["a"], ["p"]) == (sequence, ["p"])
    assert evaluation_count("all", 15, 2) == (240, 32) and evaluation_count("needed", 15, 2) == (149, 4)


def test_report_has_a_matrix_per_metric_blank_unscored_cells_and_probes(tmp_path):
    layout = RunLayout(tmp_path)
    primary = {"a": "rouge_l", "b": "rouge_l", "c": "rouge_l"}

    def row(index, after, scores, probes=None):
        save_row(layout, evaluation_record(index, after, scores, primary, probes, {"general": "choice"}))

    def both(rouge, loss):
        return {"rouge_l": rouge, "loss": loss, "perplexity": math.exp(loss)}

    row(0, None, {"a": both(0.1, 3.0), "b": both(0.2, 3.0), "c": both(0.1, 3.0)}, {"general": {"choice": 0.6}})
    row(1, "a", {"a": both(0.5, 2.0), "b": both(0.2, 2.9)})  # `needed`: c is not scored after a
    row(2, "b", {"a": both(0.4, 2.2), "b": both(0.6, 1.5), "c": both(0.15, 2.8)})
    row(3, "c", {"a": both(0.3, 2.5), "b": both(0.5, 1.9), "c": both(0.7, 1.2)}, {"general": {"choice": 0.45}})
    paths = write_report(layout)
    assert [p.name for p in paths] == [
        "report.json",
        "report.md",
        "accuracy_matrix.png",
        "matrix-loss.png",
        "matrix-perplexity.png",
    ]
    report = build_report(layout)
    assert report["accuracy_matrix"][0] == [0.5, 0.2, None]
    assert report["metrics"]["bwt"] == pytest.approx(((0.3 - 0.5) + (0.5 - 0.6)) / 2)
    loss = report["metric_matrices"]["loss"]
    assert loss["higher_is_better"] is False and loss["metrics"]["forgetting"] == pytest.approx({"a": 0.5, "b": 0.4})
    assert loss["metrics"]["bwt"] == pytest.approx(-0.45)  # negative: the losses rose
    assert report["probes"]["general"]["change"] == pytest.approx(-0.15)
    assert report["probes"]["general"]["rows"] == [None, None, 0.45]
    markdown = render_markdown(report)
    assert "| a | 50.0 | 20.0 |  |" in markdown  # the cell `needed` did not score is blank
    assert (
        "## loss (nats per answer token, lower is better)" in markdown and "| c | 2.500 | 1.900 | 1.200 |" in markdown
    )
    assert "| general | choice (%, higher is better) | 60.0 |  |  | 45.0 | -15.0 |" in markdown


def test_a_row_written_before_metrics_had_names_still_reports(tmp_path):
    layout = RunLayout(tmp_path)
    for index, after, accuracy in ((0, None, {"a": 0.5}), (1, "a", {"a": 0.9})):
        (tmp_path / "evaluations").mkdir(exist_ok=True)
        (tmp_path / "evaluations" / f"after-0{index}.json").write_text(
            json.dumps({"task_index": index, "after_task": after, "accuracy": accuracy})
        )
    report = build_report(layout)
    assert report["accuracy_matrix"] == [[0.9]] and report["primary_metric"] == {"a": "accuracy"}
    assert "## Accuracy matrix (%)" in render_markdown(report)


@pytest.mark.slow
def test_generative_sequence_through_trl_reports_loss_rouge_and_a_probe(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tasks = [
        Task(
            name,
            Dataset.from_list(generative_rows(name, "train", 32)),
            Dataset.from_list(generative_rows(name, "test", 8)),
            metric="rouge_l",
            metrics=["loss"],
            max_new_tokens=8,
        )
        for name in ("headline", "reply")
    ] + [
        Task(
            "capitals",
            Dataset.from_list(demo_rows("capitals", "train")),
            Dataset.from_list(demo_rows("capitals", "test")),
        )
    ]
    probe = eval_set_from_rows("plurals_probe", demo_rows("plurals", "test"), metric="loss")
    result = train_sequence(
        peft_model(tiny_model_dir),
        tasks,
        args=sft_config(tmp_path, max_steps=4, report_to=["tensorboard"]),
        processing_class=tokenizer,
        probes=[probe],
        loss_matrix=True,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["primary_metric"] == {"headline": "rouge_l", "reply": "rouge_l", "capitals": "choice"}
    assert report["primary_uniform"] and report["metrics"]["average_accuracy"] is not None
    loss = report["metric_matrices"]["loss"]
    assert loss["tasks"] == ["headline", "reply"] and len(loss["table"]) == 3
    # `needed` (the default): after task 1, capitals (task 3) is not scored; the last row scores everything.
    assert report["accuracy_matrix"][0][2] is None and None not in report["accuracy_matrix"][-1]
    # The scorer's held-out loss is the trainer's own evaluation loss of the same rows.
    for after, row in zip(report["rows_after"], loss["table"], strict=True):
        for task, value in zip(loss["tasks"], row, strict=True):
            assert value == pytest.approx(result.eval_loss[after][task], rel=2e-3), (after, task)
    general = report["probes"]["plurals_probe"]
    assert general["metric"] == "loss" and general["rows"][:2] == [None, None] and general["change"] is not None
    assert general["change"] == pytest.approx(general["final"] - general["zero_shot"])
    for name in ("matrix-loss.png", "matrix-perplexity.png", "accuracy_matrix.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(tmp_path / "runs" / "continual"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"continual/loss/headline", "continual/perplexity/reply", "continual/probe/plurals_probe/loss"} <= tags
    assert [e.step for e in events.Scalars("continual/probe_change/plurals_probe")] == [3]
    assert events.Scalars("continual/loss/headline")[-1].value == pytest.approx(loss["table"][-1][0], abs=1e-5)


@pytest.mark.slow
def test_lm_eval_harness_task_as_a_probe_scores_what_choice_scores(tiny, tmp_path):
    pytest.importorskip("lm_eval")
    from mergeforget_plugin import LMEvalProbe

    model, tokenizer = tiny
    rows = demo_rows("capitals", "test")
    options = sorted({row["completion"] for row in rows + demo_rows("capitals", "train")})
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({**row, "choices": options}) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "capitals_mc.yaml").write_text(
        "task: capitals_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{choices.index(completion)}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n"
    )
    probe = LMEvalProbe("capitals_lm_eval", "capitals_mc", include_path=tasks)
    probe.check_available()
    harness = probe.score(model, tokenizer)
    ours = score(model, tokenizer, eval_set_from_rows("capitals", rows, metric="choice", options=options))
    assert harness["acc"] == pytest.approx(ours["choice"])
    with pytest.raises(EvaluationError, match="knows no task 'nope'"):
        LMEvalProbe("x", "nope", include_path=tasks).check_available()
