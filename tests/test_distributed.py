"""Two processes over gloo on the CPU (torchrun, the launcher accelerate uses for multi-GPU;
`accelerate launch --cpu` needs MPI for more than one process): DDP through the TRL path, and a
LoRA sharded with FSDP2 (`fully_shard`) through the callback's hooks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from mergeforget_plugin.core.environment import offline_environment
from mergeforget_plugin.core.faults import PAUSE_AT_ENV, PAUSE_MARKER_ENV
from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.core.state import load_state, snapshot_dirs
from mergeforget_plugin.evaluation.report import load_evaluations

from .helpers import REPO, peft_model

SCRIPT = str(REPO / "tests" / "ddp_sequence_script.py")
FSDP_SCRIPT = str(REPO / "tests" / "fsdp_sequence_script.py")
# DS_ACCELERATOR=cpu: DeepSpeed's CPU backend (no GPU here); DDP and FSDP ignore it.
ENV = offline_environment(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")


def run(command, cwd):
    completed = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def run_until_killed(command, cwd, marker, point: str) -> None:
    """Start ``command`` (torchrun), wait until a process pauses at ``point``, then SIGKILL the
    launcher and every process under it at once, as a lost machine would."""
    env = {**ENV, PAUSE_AT_ENV: point, PAUSE_MARKER_ENV: str(marker)}
    launcher = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not marker.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"no process reached {point}"
    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=60)
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE for process in processes)


def max_difference(state, reference) -> float:
    return max(
        float(max((state.merged[n].a - p.a).abs().max(), (state.merged[n].b - p.b).abs().max()))
        for n, p in reference.merged.items()
    )


def _end_a_task_on_every_rank(rank: int, init_file: str, model_dir: str, out: str) -> None:
    from mergeforget_plugin.engine import ContinualTask

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = peft_model(model_dir)
        task = ContinualTask(RunLayout(f"{out}/rank{rank}"), "antonyms")
        # What Axolotl 0.21's trainer said under ZeRO-3 on two CPU processes: "world process zero" on both.
        task.begin(model, main_process=True)
        task.end(model, main_process=True)
    finally:
        torch.distributed.destroy_process_group()


def test_only_rank_zero_writes_whatever_the_trainer_says(tiny_model_dir, tmp_path):
    # Each rank gets its own output folder, so a second writer shows as a second state.
    torch.multiprocessing.spawn(
        _end_a_task_on_every_rank, args=(str(tmp_path / "init"), str(tiny_model_dir), str(tmp_path)), nprocs=2
    )
    assert load_state(RunLayout(tmp_path / "rank0").state).finished_tasks == ["antonyms"]
    assert snapshot_dirs(RunLayout(tmp_path / "rank1").state) == []


@pytest.mark.slow
def test_two_process_ddp_run_matches_a_single_process_run(tiny_model_dir, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run([sys.executable, SCRIPT, str(tiny_model_dir), str(single), "8"], tmp_path)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    run([*launch, SCRIPT, str(tiny_model_dir), str(ddp), "4"], tmp_path)

    # Every rank started every task from the same LoRA (the init is computed from the shared state).
    starts = [[json.loads(line) for line in (ddp / f"starts-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(starts[0]) == 2 and starts[0] == starts[1]

    # One merge per task, written once; the same global batch gives the single-process result.
    state = load_state(ddp / "state")
    assert state.finished_tasks == ["antonyms", "plurals"] and len(state.history) == 2
    assert [p.name for p in snapshot_dirs(ddp / "state")] == ["task-0001", "task-0002"]
    reference = load_state(single / "state")
    difference = max(float((state.merged[n].b - reference.merged[n].b).abs().max()) for n in reference.merged)
    scale = max(float(p.b.abs().max()) for p in reference.merged.values())
    print(f"\nDDP vs single process: max |B_merge difference| = {difference:.3g} (max |B_merge| = {scale:.3g})")
    assert difference <= 1e-4 * max(1.0, scale)
    assert all(torch.isfinite(p.b).all() for p in state.merged.values())


@pytest.mark.slow
def test_fsdp2_sharded_lora_matches_one_process_and_survives_a_kill(tiny_model_dir, tmp_path):
    single, sharded, killed = tmp_path / "single", tmp_path / "fsdp", tmp_path / "killed"
    run([sys.executable, FSDP_SCRIPT, str(tiny_model_dir), str(single), "plain"], tmp_path)
    run([*torchrun(29534), FSDP_SCRIPT, str(tiny_model_dir), str(sharded), "fsdp"], tmp_path)

    # The init and the merge ran on gathered factors; every process wrote its shards back, and
    # they assemble into exactly the merged LoRA the state saved once.
    state, reference = load_state(sharded / "state"), load_state(single / "state")
    assert state.finished_tasks == ["antonyms", "plurals"]
    assert [p.name for p in snapshot_dirs(sharded / "state")] == ["task-0001", "task-0002"]
    for rank in (0, 1):
        records = [json.loads(line) for line in (sharded / f"boundary-rank{rank}.jsonl").read_text().splitlines()]
        assert [r["assembled_vs_saved"] for r in records] == [0.0, 0.0]
    difference = max_difference(state, reference)
    print(f"\nFSDP2 (2 processes) vs one process: max |merged LoRA difference| = {difference:.3g}")
    assert difference <= 1e-5
    # Every process ran the evaluation's forward passes (they all-gather); the first wrote the rows.
    assert [r["task_index"] for r in load_evaluations(RunLayout(sharded))] == [0, 1, 2]

    # Kill both processes while the first writes task 2's state, then resume: task 1 is kept,
    # task 2 is trained again, and the sequence ends where the uninterrupted run ended.
    command = [*torchrun(29535), FSDP_SCRIPT, str(tiny_model_dir), str(killed), "fsdp"]
    run_until_killed(command, tmp_path, tmp_path / "paused", "state-write@2")
    assert load_state(killed / "state").finished_tasks == ["antonyms"]
    run([*torchrun(29536), FSDP_SCRIPT, str(tiny_model_dir), str(killed), "fsdp"], tmp_path)
    resumed = load_state(killed / "state")
    assert resumed.finished_tasks == ["antonyms", "plurals"]
    assert max_difference(resumed, state) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_through_sft_trainer_matches_one_process(tiny_model_dir, tmp_path, stage):
    """DeepSpeed on the CPU through TRL's SFTTrainer. ZeRO-2 partitions the optimizer's float32
    copy of the LoRA, ZeRO-3 the LoRA itself; both must start each task from the init and merge
    as one process does. ZeRO-3 is also killed while saving task 2 and resumed."""
    pytest.importorskip("deepspeed")
    single, sharded = tmp_path / "single", tmp_path / f"zero{stage}"
    run([sys.executable, SCRIPT, str(tiny_model_dir), str(single), "8"], tmp_path)
    run([*torchrun(29537 + stage), SCRIPT, str(tiny_model_dir), str(sharded), "4", f"ZERO{stage}"], tmp_path)

    state, reference = load_state(sharded / "state"), load_state(single / "state")
    assert state.finished_tasks == ["antonyms", "plurals"]
    assert [p.name for p in snapshot_dirs(sharded / "state")] == ["task-0001", "task-0002"]
    starts = [(sharded / f"starts-rank{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert len(starts[0]) == 2 and starts[0] == starts[1]
    difference = max_difference(state, reference)
    print(f"\nDeepSpeed ZeRO-{stage} (2 processes) vs one process: max |merged LoRA difference| = {difference:.3g}")
    assert difference <= 1e-5
    # Under ZeRO-3 every process runs the evaluation (each forward gathers the weights).
    assert [r["task_index"] for r in load_evaluations(RunLayout(sharded))] == [0, 1, 2]
    if stage == 2:
        return

    killed = tmp_path / "killed"
    command = [*torchrun(29541), SCRIPT, str(tiny_model_dir), str(killed), "4", "ZERO3"]
    run_until_killed(command, tmp_path, tmp_path / "paused", "state-write@2")
    assert load_state(killed / "state").finished_tasks == ["antonyms"]
    run([*torchrun(29542), SCRIPT, str(tiny_model_dir), str(killed), "4", "ZERO3"], tmp_path)
    resumed = load_state(killed / "state")
    assert resumed.finished_tasks == ["antonyms", "plurals"]
    assert max_difference(resumed, state) == 0.0
