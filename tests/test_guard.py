"""The forgetting guard's verdict as a plain function of stored rows (no model)."""

from __future__ import annotations

import pytest

from mergeforget_plugin.engine import guard_verdict
from mergeforget_plugin.errors import ForgettingGuardError, MergeForgetError
from mergeforget_plugin.evaluation.guard import ForgettingGuard, drop_of, regressions


def row(index: int, scores: dict[str, float], metric: str = "choice") -> dict:
    return {
        "task_index": index,
        "scores": {task: {metric: value} for task, value in scores.items()},
        "primary_metric": dict.fromkeys(scores, metric),
        "accuracy": dict(scores),
    }


def test_a_drop_is_measured_from_the_task_s_best_since_it_was_trained():
    stored = [row(0, {"a": 0.9, "b": 0.2}), row(1, {"a": 0.6, "b": 0.3}), row(2, {"a": 0.8, "b": 0.7})]
    now = row(3, {"a": 0.65, "b": 0.68, "c": 0.5})
    found = regressions(stored, now, ["a", "b", "c"], limit=10)
    # a's best is 0.8 after task 2 (the base model's 0.9 is not a's own), so it fell 15 points; b fell 2.
    assert [(r.task, r.best_after, round(r.drop, 6)) for r in found] == [("a", 2, 15.0)]
    assert "'a' fell 15.0 points (choice 80.0 after task 2, 65.0 now)" in found[0].describe()
    assert regressions(stored, now, ["a", "b", "c"], limit=15) == []  # the limit itself is allowed


def test_a_loss_is_worse_when_it_rises_and_is_measured_in_nats():
    assert drop_of("loss", best=1.0, now=1.5) == pytest.approx(0.5)
    assert drop_of("rouge_l", best=0.40, now=0.30) == pytest.approx(10.0)
    stored = [row(1, {"a": 1.0}, "loss")]
    found = regressions(stored, row(2, {"a": 1.8, "b": 2.0}, "loss"), ["a", "b"], limit=0.5)
    assert [(r.task, round(r.drop, 6)) for r in found] == [("a", 0.8)]
    assert "nats" in found[0].describe()


def test_the_task_just_trained_and_unscored_tasks_are_not_judged():
    now = row(2, {"b": 0.1})  # a was not scored in this row; b is the task just trained
    assert regressions([row(1, {"a": 0.9})], now, ["a", "b"], limit=1) == []


def test_an_accepted_drop_is_the_task_s_new_level():
    stored = [row(1, {"a": 0.9}), row(2, {"a": 0.5, "b": 0.8})]
    history = [{"task_index": 1}, {"task_index": 2, "accepted_regressions": [{"task": "a", "drop": 40.0}]}]
    now = row(3, {"a": 0.45, "b": 0.8, "c": 0.6})
    assert guard_verdict(ForgettingGuard(10), stored, now, ["a", "b", "c"], history) == []
    # Without the accepted drop on record, a is 45 points below its best.
    assert [r.task for r in guard_verdict(ForgettingGuard(10), stored, now, ["a", "b", "c"])] == ["a"]
    lower = row(3, {"a": 0.3, "b": 0.8, "c": 0.6})
    assert [round(r.drop, 6) for r in guard_verdict(ForgettingGuard(10), stored, lower, ["a", "b", "c"], history)] == [
        20.0
    ]


def test_no_guard_no_verdict():
    now = row(2, {"a": 0.0, "b": 0.9})
    assert guard_verdict(None, [row(1, {"a": 1.0})], now, ["a", "b"]) == []
    assert [r.task for r in guard_verdict(ForgettingGuard(5), [row(1, {"a": 1.0})], now, ["a", "b"])] == ["a"]


def test_accept_regression_must_be_a_boolean():
    with pytest.raises(ForgettingGuardError, match="accept_regression: must be True or False"):
        ForgettingGuard(5, accept_regression="yes")


@pytest.mark.parametrize("limit", [0, -3, float("inf"), float("nan"), True, "5"])
def test_a_limit_that_is_not_a_positive_number_is_refused_naming_where_it_is_set(limit):
    with pytest.raises(ForgettingGuardError, match="recipe.yaml: guard.max_forgetting") as raised:
        ForgettingGuard(limit, where="recipe.yaml: guard.max_forgetting")
    assert isinstance(raised.value, MergeForgetError)
