"""Kill the sequence runner at every point where a task could be lost; resume must lose nothing.

Each kill lands exactly at a named pause point (:mod:`mergeforget_plugin.core.faults`): the training
process announces it reached the point and waits, and the test SIGKILLs the *runner*; the training
child dies with it (PDEATHSIG). The killed-and-resumed sequence must end bit-identical to an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("axolotl", reason="the runner needs the [axolotl] extra")

from mergeforget_plugin.core.environment import offline_environment  # noqa: E402
from mergeforget_plugin.core.faults import PAUSE_AT_ENV, PAUSE_MARKER_ENV, POINTS  # noqa: E402
from mergeforget_plugin.core.state import load_state, snapshot_dirs  # noqa: E402

from .axolotl_helpers import mergeforget, tiny_recipe  # noqa: E402
from .helpers import DEMO_TASKS  # noqa: E402

# (pause point, task index): one kill at each, in the order a resumed sequence reaches them.
KILLS = [
    ("training-step", 1),
    ("state-write", 1),
    ("merge", 2),
    ("task-saved", 2),
    ("state-commit", 3),
    ("export", 3),
]


def run_until_killed(recipe, cwd, point: str, task_index: int, marker) -> None:
    env = offline_environment(**{PAUSE_AT_ENV: f"{point}@{task_index}", PAUSE_MARKER_ENV: str(marker)})
    runner = subprocess.Popen(
        [sys.executable, "-m", "mergeforget_plugin.cli", "train", str(recipe), "--resume"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while not marker.exists():
        if runner.poll() is not None:
            pytest.fail(f"the runner ended before reaching {point}@{task_index}: {runner.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"{point}@{task_index} was never reached"
        time.sleep(0.2)
    paused_pid = int(marker.read_text().split()[2])
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    marker.unlink()
    # The process paused at the point must die with the runner, not finish behind our back.
    while time.time() < deadline and is_running(paused_pid):
        time.sleep(0.1)
    assert not is_running(paused_pid)


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.xdist_group("axolotl_reference_run")
def test_every_kill_point_resumes_to_a_bit_identical_sequence(tmp_path, tiny_model_dir, axolotl_reference_run):
    assert {point for point, _ in KILLS} == set(POINTS)
    reference_dir, killed_dir = axolotl_reference_run, tmp_path / "killed"
    killed_dir.mkdir()

    recipe = tiny_recipe(killed_dir, tiny_model_dir)
    out = killed_dir / "out"
    finished_after_kill = []
    for point, task_index in KILLS:
        run_until_killed(recipe, killed_dir, point, task_index, tmp_path / "paused")
        state = load_state(out / "state")  # never unreadable, whatever the kill interrupted
        finished_after_kill.append(state.finished_tasks if state else [])
    assert finished_after_kill == [
        [],
        [],
        ["antonyms"],
        ["antonyms", "plurals"],
        list(DEMO_TASKS),
        list(DEMO_TASKS),
    ]
    resumed = mergeforget("train", str(recipe), "--resume", cwd=killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    expected_out = reference_dir / "out"
    for relative in (
        "adapter/adapter_model.safetensors",
        "state/task-0003/merged.safetensors",
        "state/task-0003/finetuned.safetensors",
        "state/task-0002/merged.safetensors",
    ):
        expected, got = load_file(expected_out / relative), load_file(out / relative)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), relative
    assert json.loads((out / "adapter" / "adapter_config.json").read_text()) == json.loads(
        (expected_out / "adapter" / "adapter_config.json").read_text()
    )
    # Nothing half-written is left behind, and the report has every row, including the one whose
    # evaluation the task-saved kill interrupted (scored when the next task started).
    assert [p.name for p in snapshot_dirs(out / "state")] == ["task-0002", "task-0003"]
    assert not list((out / "state").glob(".*.tmp")) and not list((out / "adapter").glob(".*.tmp"))
    report, expected_report = (json.loads((d / "report.json").read_text()) for d in (out, expected_out))
    for key in ("tasks", "rows_after", "zero_shot", "accuracy_matrix", "metrics"):
        assert report[key] == expected_report[key], key
    print(f"\nkill points survived: {len(KILLS)} ({', '.join(f'{p}@{i}' for p, i in KILLS)})")
