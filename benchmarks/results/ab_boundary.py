"""Before/after of a boundary: 4 tasks through MergeForgetCallback on the 7B-shaped LoRA, in one process.

Prints the median on_train_begin / on_train_end of tasks 2-4 and which package it imported. The
RESULTS.md table ran it in alternating processes against the previous commit and the working tree:

    git worktree add /tmp/old HEAD; script=$PWD/benchmarks/results/ab_boundary.py
    for i in 1 2 3; do for p in /tmp/old "$PWD"; do (cd /tmp && PYTHONPATH=$p python "$script"); done; done
"""

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from boundary_cost import seven_b_shaped_peft_model  # model builder only (no package internals)
from transformers import TrainerControl, TrainerState

import mergeforget_plugin
from mergeforget_plugin import MergeForgetCallback

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
model = seven_b_shaped_peft_model(32, 4096, 11008, 16, MODULES)
parameters = [p for n, p in model.named_parameters() if "lora_" in n]
work = Path(tempfile.mkdtemp(dir="/tmp"))
begins, ends = [], []
for task in range(1, 5):
    callback = MergeForgetCallback(work / "state", task_name=f"t{task}")
    trainer_state, control = TrainerState(), TrainerControl()
    started = time.perf_counter()
    callback.on_train_begin(None, trainer_state, control, model=model)
    begun = time.perf_counter()
    with torch.no_grad():
        for parameter in parameters:  # stands in for training
            parameter.add_(1e-3)
    ending = time.perf_counter()
    callback.on_train_end(None, trainer_state, control, model=model)
    if task > 1:
        begins.append(begun - started)
        ends.append(time.perf_counter() - ending)
shutil.rmtree(work)
summary = {"begin": statistics.median(begins), "end": statistics.median(ends), "begins": begins, "ends": ends}
print(json.dumps({"code": str(Path(mergeforget_plugin.__file__).parent), **summary}))
