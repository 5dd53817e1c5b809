"""The report in the run's own trackers, read back with each tracker's own reader (offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergeforget_plugin import train_sequence
from mergeforget_plugin.evaluation.metrics import continual_metrics
from mergeforget_plugin.evaluation.trackers import requested, task_scalars

from .helpers import demo_tasks, peft_model, sft_config

TASKS = ("antonyms", "plurals")


def expected_rows(out):
    """What the trackers should hold after each of the two tasks, from the run's report: {step: {key: value}}."""
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == list(TASKS) and report["rows_after"] == list(TASKS)
    (a1, p1), (a2, p2) = report["accuracy_matrix"]
    fwt = p1 - report["zero_shot"]["plurals"]
    return {
        1: {  # FWT needs a second trained task, BWT and forgetting an earlier one
            "continual/accuracy/antonyms": a1,
            "continual/accuracy/plurals": p1,
            "continual/average_accuracy": a1,
        },
        2: {
            "continual/accuracy/antonyms": a2,
            "continual/accuracy/plurals": p2,
            "continual/average_accuracy": (a2 + p2) / 2,
            "continual/bwt": a2 - a1,
            "continual/fwt": fwt,
            "continual/forgetting/antonyms": a1 - a2,
        },
    }


def test_report_to_names_the_supported_trackers():
    assert requested(None) == [] and requested("none") == [] and requested([]) == []
    assert requested("wandb") == ["wandb"] and requested(["tensorboard", "mlflow"]) == ["tensorboard"]
    assert requested("all") == ["tensorboard", "wandb"]


def test_task_scalars_name_every_number_of_the_report():
    tasks = ["a", "b", "c"]
    rows = [{"a": 0.9, "b": 0.4}, {"a": 0.7, "b": 0.8, "c": 0.3}]
    report = {
        "tasks": tasks,
        "accuracy_matrix": [[row.get(t) for t in tasks] for row in rows],
        "metrics": continual_metrics(["a", "b"], rows, {"a": 0.1, "b": 0.25, "c": 0.2}),
    }
    assert task_scalars(report) == pytest.approx(
        {
            "continual/accuracy/a": 0.7,
            "continual/accuracy/b": 0.8,
            "continual/accuracy/c": 0.3,
            "continual/average_accuracy": 0.75,
            "continual/bwt": -0.2,
            "continual/fwt": 0.4 - 0.25,
            "continual/forgetting/a": 0.2,
        }
    )


def test_tensorboard_gets_every_tasks_row_with_the_task_index_as_step(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_sequence(
        peft_model(tiny_model_dir),
        demo_tasks(TASKS),
        args=sft_config(tmp_path, max_steps=2, report_to=["tensorboard"]),
        processing_class=tokenizer,
        loss_matrix=False,
    )
    events = EventAccumulator(str(tmp_path / "runs" / "continual"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    expected = expected_rows(tmp_path)
    logged: dict[int, dict[str, float]] = {}
    for key in events.Tags()["scalars"]:
        for event in events.Scalars(key):
            logged.setdefault(event.step, {})[key] = event.value
    assert sorted(logged) == [1, 2]
    for step, values in expected.items():
        assert logged[step] == pytest.approx(values, abs=1e-6), step
    assert [image.step for image in events.Images("continual/accuracy_matrix")] == [1, 2]
    # The trainer's own TensorBoard logs are still per task, beside the continual folder.
    assert list((tmp_path / "tasks" / "task-01-antonyms").rglob("events.out.tfevents.*"))


def test_wandb_offline_run_holds_every_tasks_row_with_continual_task_as_step(tiny_model_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from transformers import AutoTokenizer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "mergeforget-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    try:
        train_sequence(
            peft_model(tiny_model_dir),
            demo_tasks(TASKS),
            args=sft_config(tmp_path / "out", max_steps=2, report_to=["wandb"]),
            processing_class=tokenizer,
            loss_matrix=False,
        )
    finally:
        wandb.finish()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's own reader of a run's transaction log, one JSON record per line.
    inspected = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    logged: dict[int, dict[str, float]] = {}
    images = []
    for line in inspected.stdout.splitlines():
        record = json.loads(line)
        items = record.get("history", {}).get("item", {}) if record.get("type") == "history" else {}
        if "continual/task" in items:
            step = items.pop("continual/task")
            # The image is flattened into continual/accuracy_matrix._type, .path, ...: a PNG in the run folder.
            assert items["continual/accuracy_matrix._type"] == "image-file"
            images.append(run_file.parent / "files" / items["continual/accuracy_matrix.path"])
            logged[step] = {k: v for k, v in items.items() if k.startswith("continual/") and "accuracy_matrix" not in k}
    expected = expected_rows(tmp_path / "out")
    assert (
        sorted(logged) == [1, 2]
        and len(images) == 2
        and all(image.read_bytes().startswith(b"\x89PNG") for image in images)
    )
    for step, values in expected.items():
        assert logged[step] == pytest.approx(values, abs=1e-6), step
