"""Before/after of a boundary: 4 tasks through MergeForgetCallback on the 7B-shaped LoRA, in one process.

Prints the median on_train_begin / on_train_end of tasks 2-4 (boundary_cost.py's measurement) and which
package it imported. The
RESULTS.md table ran it in alternating processes against the previous commit and the working tree:

    git worktree add /tmp/old HEAD; script=$PWD/benchmarks/results/ab_boundary.py
    for i in 1 2 3; do for p in /tmp/old "$PWD"; do (cd /tmp && PYTHONPATH=$p python "$script"); done; done
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from boundary_cost import (  # the same measurement as boundary_cost.py
    boundary_through_callback,
    seven_b_shaped_peft_model,
)

import mergeforget_plugin

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
model = seven_b_shaped_peft_model(32, 4096, 11008, 16, MODULES)
with tempfile.TemporaryDirectory(dir="/tmp") as work:
    timings = boundary_through_callback(model, 3, Path(work))
summary = {"begin": timings["task_begin"], "end": timings["task_end"], "begin_new_process": timings["task_begin_cold"]}
print(json.dumps({"code": str(Path(mergeforget_plugin.__file__).parent), **summary}))
