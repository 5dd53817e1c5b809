"""The benchmark scripts run (smoke size) and write what their tables claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import REPO


def run(script: str, out) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--output-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_continual_benchmark_smoke_runs_every_method(tmp_path):
    completed = run("continual_benchmark.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert list(runs) == ["slao", "seq", "no_ortho", "inv", "olora", "joint"]
    assert all(len(r["matrix"]) == 2 for m, r in runs.items() if m != "joint") and len(runs["joint"]["matrix"]) == 1
    # One LoRA for the merging methods; O-LoRA adds a block per task.
    assert runs["slao"]["adapter_bytes"][0] == runs["slao"]["adapter_bytes"][1]
    assert runs["olora"]["adapter_bytes"][1] == 2 * runs["olora"]["adapter_bytes"][0]
    assert "| slao |" in completed.stdout and "| olora |" in completed.stdout


def test_boundary_cost_smoke_measures_all_three_parts(tmp_path):
    completed = run("boundary_cost.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "boundary_cost.json").read_text())
    boundary = results["boundary_7b_shape"]
    assert boundary["boundary"] == boundary["init"] + boundary["merge"] + boundary["save"] > 0
    sizes = results["adapter_bytes_small_shape"]
    assert len(set(sizes["slao"].values())) == 1
    assert sizes["olora"]["3"] > sizes["olora"]["2"] > sizes["olora"]["1"]
    assert set(results["step_overhead"]) == {"with_callback", "without_callback"}


def test_eval_throughput_smoke_compares_both_scorers_on_the_same_sets(tmp_path):
    completed = run("eval_throughput.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads((tmp_path / "eval_throughput.json").read_text())["rows"]
    assert [(r["task"], r["options"]) for r in rows] == [("sentiment", 2), ("plurals", 40)]
    # The current scorer predicts what the 0.1.0 scorer predicted, example for example.
    assert all(r["same_predictions"] == r["examples"] == 8 for r in rows)
    assert all(r["old_examples_per_s"] > 0 and r["new_examples_per_s"] > 0 for r in rows)
    assert "| cpu | plurals | 8 | 40 |" in completed.stdout
