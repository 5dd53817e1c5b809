"""The engine's decisions as plain functions: which rows are missing, what each row scores, where a
task starts, what the state is once it ends, who writes. No model is built here."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
import torch

from mergeforget_plugin.core.layout import RunLayout, check_task_names, task_name_problem
from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig, merge_coefficient, task_start_weights
from mergeforget_plugin.core.state import BaseModelFingerprint, ContinualState, LoRASignature, load_state
from mergeforget_plugin.engine import (
    MissingRows,
    finished_state,
    is_main_process,
    missing_rows,
    publish,
    row_sets,
    start_state,
    starting_lora,
    unscored,
)
from mergeforget_plugin.errors import MergeForgetError, StateError, StateMismatchError, TaskNameError
from mergeforget_plugin.evaluation.report import evaluation_record


@dataclass
class _Set:  # what the plan reads of an EvalSet or a probe
    task: str
    metrics: tuple[str, ...] = ("accuracy",)


def _lora(seed: int, modules=("q", "v")) -> dict[str, LoRAPair]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: LoRAPair(torch.randn(2, 6, generator=generator), torch.randn(5, 2, generator=generator))
        for name in modules
    }


def _setup() -> tuple[LoRASignature, BaseModelFingerprint]:
    signature = LoRASignature(ranks={"q": 2, "v": 2}, lora_alpha=4.0, use_rslora=False, target_modules=["q", "v"])
    return signature, BaseModelFingerprint(architecture={"hidden_size": 6}, embedding_signature=None)


def _new_state(config: MergeForgetConfig | None = None) -> ContinualState:
    return start_state(None, "a", config or MergeForgetConfig(), _setup(), {"r": 2}, "here")


def test_unscored_counts_a_set_as_scored_only_with_every_metric_it_declares():
    sets = [_Set("a", ("loss", "rouge_l")), _Set("b", ("loss",))]
    assert unscored(sets, {"a": {"loss": 1.0}, "b": {"loss": 2.0}}) == [sets[0]]
    assert unscored(sets, {"a": {"loss": 1.0, "rouge_l": 0.3}, "b": {"loss": 2.0}}) == []
    assert unscored(sets, {}) == sets


def test_missing_rows_finds_the_base_row_and_a_row_a_kill_lost():
    sets, probes = [_Set("a"), _Set("b")], [_Set("p")]
    complete_base = {0: {"scores": {"a": {"accuracy": 1}, "b": {"accuracy": 1}}, "probes": {"p": {"accuracy": 1}}}}
    assert missing_rows({}, 1, sets, probes) == MissingRows(base=True, previous=None)
    assert missing_rows(complete_base, 1, sets, probes) == MissingRows(base=False, previous=None)
    # Task 3 begins: row 1 is there, row 2 is not (the run was killed after task 2's state, before its row).
    assert missing_rows({**complete_base, 1: {}}, 3, sets, probes) == MissingRows(base=False, previous=2)
    assert missing_rows({**complete_base, 1: {}, 2: {}}, 3, sets, probes).previous is None
    # A probe added on resume is missing from the base row.
    assert missing_rows(complete_base, 2, sets, [*probes, _Set("q")]).base


def test_row_sets_follow_the_schedule_and_skip_what_a_stored_row_holds():
    sets, probes = [_Set("a"), _Set("b"), _Set("c")], [_Set("p")]
    sequence = ["a", "b", "c"]
    tasks, probe_sets = row_sets("needed", sequence, ["a"], sets, probes)
    assert [s.task for s in tasks] == ["a", "b"] and probe_sets == []
    tasks, probe_sets = row_sets("needed", sequence, sequence, sets, probes)
    assert [s.task for s in tasks] == sequence and [p.task for p in probe_sets] == ["p"]
    tasks, probe_sets = row_sets("all", sequence, ["a"], sets, probes)
    assert [s.task for s in tasks] == sequence and [p.task for p in probe_sets] == ["p"]
    stored = {"scores": {"a": {"accuracy": 0.5}}, "probes": {"p": {"accuracy": 0.1}}}
    tasks, probe_sets = row_sets("all", sequence, [], sets, probes, stored)
    assert [s.task for s in tasks] == ["b", "c"] and probe_sets == []


def test_start_state_refuses_another_setup_another_strategy_and_a_finished_name():
    state = finished_state(_new_state(), "a", _lora(0))
    with pytest.raises(StateError, match="'a' already finished"):
        start_state(state, "a", MergeForgetConfig(), _setup(), {}, "here")
    with pytest.raises(StateMismatchError):
        start_state(state, "b", MergeForgetConfig(strategy="seq"), _setup(), {}, "here")
    signature, fingerprint = _setup()
    other = LoRASignature(ranks={"q": 4, "v": 4}, lora_alpha=4.0, use_rslora=False, target_modules=["q", "v"])
    with pytest.raises(StateMismatchError):
        start_state(state, "b", MergeForgetConfig(), (other, fingerprint), {}, "here")
    assert start_state(state, "b", MergeForgetConfig(), _setup(), {}, "here") is state


def test_starting_lora_is_none_for_task_one_then_the_configured_init():
    state = _new_state()
    assert starting_lora(state, state.config) is None
    state = finished_state(state, "a", _lora(0))
    start = starting_lora(state, state.config)
    expected = task_start_weights(2, state.finetuned, state.merged, state.config)
    assert set(start) == {"q", "v"}
    for name in start:
        torch.testing.assert_close(start[name].a, expected[name].a)
        torch.testing.assert_close(start[name].b, state.finetuned[name].b)
        # the paper's init: rows of A orthonormal
        torch.testing.assert_close(start[name].a @ start[name].a.T, torch.eye(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["slao", "seq"])
def test_finished_state_merges_and_records_the_task(strategy):
    config = MergeForgetConfig(strategy=strategy)
    first = finished_state(_new_state(config), "a", _lora(0), {"global_step": 3}, seconds=1.23456)
    assert first.finished_tasks == ["a"] and first.history[0]["global_step"] == 3
    assert first.history[0]["seconds"] == 1.235 and first.history[0]["merge_coefficient"] == 1.0
    second = finished_state(first, "b", _lora(1))
    weight = merge_coefficient(2, config)
    assert second.history[1]["merge_coefficient"] == weight == (1 / 2**0.5 if strategy == "slao" else 1.0)
    for name, pair in second.merged.items():
        torch.testing.assert_close(pair.a, _lora(1)[name].a)
        blended = first.merged[name].b + weight * (_lora(1)[name].b - first.merged[name].b)
        torch.testing.assert_close(pair.b, blended)
    assert first.finished_tasks == ["a"]  # the previous state is left as it was


def test_seq_means_no_merge_in_one_place():
    seq, slao = MergeForgetConfig(strategy="seq"), MergeForgetConfig()
    assert not seq.merges and slao.merges
    assert [merge_coefficient(i, seq) for i in (1, 2, 5)] == [1.0, 1.0, 1.0]
    state = finished_state(_new_state(seq), "a", _lora(0))
    start = starting_lora(state, seq)
    for name in start:  # SeqLoRA carries the last task's LoRA on unchanged
        torch.testing.assert_close(start[name].a, state.finetuned[name].a)
        torch.testing.assert_close(start[name].b, state.finetuned[name].b)


def test_publish_writes_the_row_before_the_state_and_the_report(tmp_path):
    layout = RunLayout(tmp_path / "run")
    state = finished_state(_new_state(), "a", _lora(0))
    row = evaluation_record(1, "a", {"a": {"accuracy": 0.5}}, {"a": "accuracy"})
    publish(layout, state, row, export_dir=tmp_path / "export")
    assert json.loads(layout.evaluation_row(1).read_text())["accuracy"] == {"a": 0.5}
    assert load_state(layout.state).finished_tasks == ["a"]
    assert (tmp_path / "export" / "adapter_model.safetensors").is_file()
    assert layout.report_json.is_file()
    # Without evaluation nothing but the state is written.
    quiet = RunLayout(tmp_path / "quiet")
    publish(quiet, state, None, evaluates=False)
    assert load_state(quiet.state).finished_tasks == ["a"] and not quiet.report_json.exists()


def test_the_trainer_decides_who_writes(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert is_main_process() is False
    assert is_main_process(True) is True  # TrainerState.is_world_process_zero wins over the environment
    monkeypatch.setenv("RANK", "0")
    assert is_main_process(False) is False and is_main_process() is True


def test_task_names_have_one_rule():
    assert task_name_problem("sst2") is None and task_name_problem("a.b-c_d") is None
    for bad in ("", "has space", "a/b", "-lead", 3):
        assert task_name_problem(bad) is not None
    with pytest.raises(TaskNameError, match="unique; repeated: \\['a'\\]"):
        check_task_names(["a", "b", "a"])
    with pytest.raises(TaskNameError, match="empty"):
        check_task_names([])
    assert issubclass(TaskNameError, MergeForgetError) and issubclass(TaskNameError, ValueError)


def test_every_error_class_is_one_family():
    import mergeforget_plugin.errors as errors

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) >= 9
    assert all(issubclass(cls, errors.MergeForgetError) for cls in classes)
    from mergeforget_plugin.data.standard_cl import DataPrepError

    assert DataPrepError is errors.DataPrepError


def test_a_failed_process_leaves_a_record_the_runner_reads(tmp_path):
    import subprocess

    from mergeforget_plugin.integrations.axolotl.failure import FAILURE_FILE_VARIABLE, describe_failure, read_failure

    target = tmp_path / "failure.json"
    code = (
        "from mergeforget_plugin.integrations.axolotl.failure import record_failures\n"
        "from mergeforget_plugin.errors import StateMismatchError\n"
        "record_failures()\n"
        "raise StateMismatchError('the state was made for another base model')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, FAILURE_FILE_VARIABLE: str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1 and "StateMismatchError" in completed.stderr  # Python still reports it
    record = read_failure(target)
    assert {key: record[key] for key in ("error", "message", "ours")} == {
        "error": "StateMismatchError",
        "message": "the state was made for another base model",
        "ours": True,
    }
    assert describe_failure(record) == "StateMismatchError: the state was made for another base model"
    assert read_failure(tmp_path / "absent.json") is None

    # A crash that is not ours says where it was raised and in which process.
    crash = tmp_path / "crash.json"
    code = (
        "from mergeforget_plugin.integrations.axolotl.failure import record_failures\n"
        "record_failures()\n"
        "def _stamp():\n"
        "    open('/nonexistent/finetuned.safetensors')\n"
        "_stamp()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, FAILURE_FILE_VARIABLE: str(crash), "RANK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    line = describe_failure(read_failure(crash))
    assert line.startswith(
        "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/finetuned.safetensors'"
    )
    assert line.endswith("(raised at <string>:4 in _stamp, rank 1)")
