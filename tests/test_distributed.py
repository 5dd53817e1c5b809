"""Two processes with DDP over gloo on the CPU (torchrun, the launcher accelerate uses for
multi-GPU; `accelerate launch --cpu` needs MPI for more than one process) through the TRL path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mergeforget_plugin.state import load_state, snapshot_dirs

from .conftest import REPO

SCRIPT = str(REPO / "tests" / "ddp_sequence_script.py")


def run(command, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]


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
