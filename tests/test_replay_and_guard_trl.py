"""Replay and the forgetting guard through TRL's real SFTTrainer on a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from mergeforget_plugin import ForgettingGuard, ReplayConfig, RunLayout, Task, train_sequence
from mergeforget_plugin.cli import main
from mergeforget_plugin.core.state import REPLAY_FILE, load_state, snapshot_dirs
from mergeforget_plugin.errors import ForgettingGuardError, ReplayError
from mergeforget_plugin.peft_bridge import read_lora

from .helpers import demo_tasks, peft_model, sft_config, weather

SCRIPT = Path(__file__).with_name("replay_sequence_script.py")


def test_the_guard_stops_a_task_that_overwrites_an_earlier_one_and_keeps_the_previous_adapter(
    learning_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(learning_model_dir)
    rows = {"learn": weather(False), "unlearn": weather(True)}
    tasks = [Task(name, Dataset.from_list(rows[name]), Dataset.from_list(rows[name][:2])) for name in rows]
    model = peft_model(learning_model_dir)
    guard = ForgettingGuard(max_forgetting=10)
    args = sft_config(tmp_path, max_steps=12, learning_rate=1e-2, lr_scheduler_type="constant")
    train_sequence(model, tasks[:1], args=args, processing_class=tokenizer, guard=guard)
    adapter = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    report = (tmp_path / "report.json").read_text()
    learned = json.loads((tmp_path / "evaluations" / "after-01.json").read_text())["accuracy"]["learn"]
    assert learned == 1.0  # the first task is learned, so there is something to forget

    with pytest.raises(
        ForgettingGuardError, match=r"Task 'unlearn' \(task 2\) was not taken: after its merge 'learn' fell"
    ) as raised:
        train_sequence(model, tasks, args=args, processing_class=tokenizer, guard=guard)
    assert "guard.max_forgetting = 10" in str(raised.value) and "accept_regression=True" in str(raised.value)

    # Nothing of the good state was overwritten: state, adapter, report and rows stay at task 1.
    state = load_state(tmp_path / "state")
    assert state.finished_tasks == ["learn"] and [p.name for p in snapshot_dirs(tmp_path / "state")] == ["task-0001"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert (tmp_path / "report.json").read_text() == report
    assert not (tmp_path / "evaluations" / "after-02.json").exists()
    # The model the caller holds has the deployed LoRA back.
    held = read_lora(model)
    assert all((held[n].a == state.merged[n].a).all() and (held[n].b == state.merged[n].b).all() for n in held)
    # The rejected LoRA and its row are kept beside the task for inspection.
    rejected = tmp_path / "tasks" / "task-02-unlearn" / "rejected"
    verdict = json.loads((rejected / "verdict.json").read_text())
    assert verdict["max_forgetting"] == 10 and verdict["regressions"][0]["task"] == "learn"
    assert verdict["regressions"][0]["drop"] > 10 and (rejected / "merged.safetensors").is_file()
    assert json.loads((rejected / "evaluation.json").read_text())["task_index"] == 2

    # Resuming retries the task; accepting the regression takes it and says so in the history.
    result = train_sequence(
        model, tasks, args=args, processing_class=tokenizer, guard=ForgettingGuard(10, accept_regression=True)
    )
    assert result.state.finished_tasks == ["learn", "unlearn"]
    accepted = result.state.history[-1]["accepted_regressions"]
    assert [r["task"] for r in accepted] == ["learn"] and accepted[0]["drop"] == verdict["regressions"][0]["drop"]


def test_a_guard_without_held_out_rows_or_replay_of_mismatched_fields_is_refused_before_training(
    tiny_model_dir, tmp_path
):
    model = peft_model(tiny_model_dir)
    tasks = [Task(t.name, t.train_dataset) for t in demo_tasks()]
    with pytest.raises(Exception, match="guard.max_forgetting measures forgetting on held-out rows"):
        train_sequence(model, tasks, args=sft_config(tmp_path), guard=ForgettingGuard(5))
    chat = Task("chat", Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(
        ReplayError, match=r"Task 'chat', train_dataset \(replay\): task 'chat' has the fields \['messages'\]"
    ):
        train_sequence(model, [*tasks[:1], chat], args=sft_config(tmp_path), replay=ReplayConfig(4, fraction=0.5))
    assert not (tmp_path / "state").exists() or not snapshot_dirs(tmp_path / "state")


def test_a_run_with_replay_killed_mid_snapshot_resumes_bit_identical_with_its_buffer_checksummed(
    tiny_model_dir, tmp_path, capsys
):
    from transformers import AutoTokenizer

    from .replay_sequence_script import REPLAY, TASKS, run

    reference, killed, marker = tmp_path / "reference", tmp_path / "killed", tmp_path / "paused"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    done = run(peft_model(tiny_model_dir), tokenizer, reference).state
    # Killed while task 2's snapshot is half written: the buffer after task 2 exists nowhere yet.
    environment = {**os.environ, "MERGEFORGET_PAUSE_AT": "state-write@2", "MERGEFORGET_PAUSE_MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(tiny_model_dir), str(killed)], env=environment)
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never reached task 2's snapshot write"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert load_state(killed / "state").finished_tasks == [TASKS[0]]
    again = run(peft_model(tiny_model_dir), tokenizer, killed).state  # resumes with task 2

    assert again.finished_tasks == done.finished_tasks == list(TASKS)
    assert again.replay_buffer == done.replay_buffer
    assert {name: len(rows) for name, rows in done.replay_buffer.items()} == {TASKS[0]: 3, TASKS[1]: 3}
    for name, pair in done.merged.items():
        assert torch.equal(again.merged[name].a, pair.a) and torch.equal(again.merged[name].b, pair.b)
    manifest = json.loads((snapshot_dirs(killed / "state")[-1] / "manifest.json").read_text())
    assert REPLAY_FILE in manifest["sha256"] and manifest["replay"] == REPLAY.to_dict()
    # Task 2 trained on its 32 rows plus a quarter as many replayed ones (a fifth of the mix): the
    # buffer's 6 rows of task 1, then 2 of them again.
    trained_on = [
        json.loads((killed / "tasks" / RunLayout.task_slug(i, n) / "rows.json").read_text())
        for i, n in enumerate(TASKS, 1)
    ]
    assert trained_on == [32, 40]
    assert main(["status", str(killed / "state")]) == 0
    shown = capsys.readouterr().out
    assert f"Replay buffer ({REPLAY.to_dict()}): 6 rows, " in shown and f"{TASKS[0]} 3, {TASKS[1]} 3" in shown


def test_resuming_with_rows_of_other_fields_than_the_buffer_says_what_a_resumed_sequence_can_do(
    tiny_model_dir, tmp_path
):
    first = [Task(t.name, t.train_dataset) for t in demo_tasks()][:1]
    replay = ReplayConfig(4, fraction=0.5)
    train_sequence(peft_model(tiny_model_dir), first, args=sft_config(tmp_path, max_steps=1), replay=replay)
    chat = Task("chat", Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(ReplayError) as raised:
        train_sequence(
            peft_model(tiny_model_dir), [*first, chat], args=sft_config(tmp_path, max_steps=1), replay=replay
        )
    # The buffer is in the state, and the state keeps replay on: turning it off is no way out.
    message = str(raised.value)
    assert f"{RunLayout(tmp_path).state}'s replay buffer holds the earlier rows" in message, message
    assert "turn replay off" not in message
    assert load_state(RunLayout(tmp_path).state).finished_tasks == [first[0].name]
