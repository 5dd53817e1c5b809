"""Resident memory per process at a task boundary, one process vs FSDP2 over two (CPU, gloo).

Run:    python benchmarks/sharded_boundary.py            # hidden 1024, 8 layers, LoRA r=128 on all 7 linears
Smoke:  python benchmarks/sharded_boundary.py --smoke    # the tests' tiny shapes, seconds

Runs tests/fsdp_sequence_script.py (two tasks through MergeForgetCallback, 3 steps each) once in a
plain process and once under torchrun with two processes whose model is sharded with
`fully_shard`. Each process reports, for every task's end (gather, merge, scatter back,
evaluation, state write by the first process), its resident memory before and its peak during
(Linux VmHWM, reset just before). The table gives the peak increase in MiB and in units of the
LoRA's full size; the first process also writes the state and renders the report's figure.

Prints a table and writes --output-dir/sharded_boundary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mergeforget_plugin.core.environment import offline_environment

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "fsdp_sequence_script.py"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_bytes(model_dir: Path, rank: int, modules: list[str]) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=rank, target_modules=modules))
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)


def run(command: list[str], cwd: Path) -> None:
    env = offline_environment(OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(completed.stdout[-2000:] + completed.stderr[-4000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tests' tiny model and LoRA")
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from mergeforget_plugin.data.tiny_model import build_tiny_llama
    from tests.helpers import DEMO_TASKS, demo_rows

    if args.smoke:
        shape, rank, modules = {}, 4, ["q_proj", "v_proj"]
    else:
        shape, rank, modules = {"hidden_size": 1024, "num_layers": 8, "num_heads": 16, "num_kv_heads": 4}, 128, MODULES
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        corpus = [row["prompt"] + row["completion"] for name in DEMO_TASKS for row in demo_rows(name, "train")]
        model_dir = build_tiny_llama(root / "model", corpus, **shape)
        size = lora_bytes(model_dir, rank, modules)
        extra = [str(rank), *modules]
        run([sys.executable, str(SCRIPT), str(model_dir), str(root / "plain"), "plain", *extra], root)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29591"]
        run([*torchrun, str(SCRIPT), str(model_dir), str(root / "fsdp"), "fsdp", *extra], root)
        rows = []
        for setup, folder, ranks in (("1 process", "plain", [0]), ("FSDP2, 2 processes", "fsdp", [0, 1])):
            for process in ranks:
                lines = (root / folder / f"boundary-rank{process}.jsonl").read_text().splitlines()
                for record in map(json.loads, lines):
                    increase = (record["peak_during_kib"] - record["rss_before_kib"]) * 1024
                    rows.append(
                        {
                            "setup": setup,
                            "process": process,
                            "task": record["task"],
                            "rss_before_mib": record["rss_before_kib"] / 1024,
                            "peak_during_mib": record["peak_during_kib"] / 1024,
                            "increase_mib": increase / 2**20,
                            "increase_in_loras": increase / size,
                        }
                    )
    print(f"LoRA: rank {rank} on {', '.join(modules)}; {size / 2**20:.1f} MiB in float32 (shape {shape or 'tiny'})")
    print(f"{'setup':<20} {'proc':>4} {'task':<9} {'RSS before':>11} {'peak during':>12} {'increase':>9} {'x LoRA':>7}")
    for row in rows:
        print(
            f"{row['setup']:<20} {row['process']:>4} {row['task']:<9} {row['rss_before_mib']:>9.0f} M "
            f"{row['peak_during_mib']:>10.0f} M {row['increase_mib']:>7.0f} M {row['increase_in_loras']:>7.2f}"
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"lora_rank": rank, "modules": modules, "model_shape": shape, "lora_bytes": size, "rows": rows}
    name = "sharded_boundary_smoke.json" if args.smoke else "sharded_boundary.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out / name}")


if __name__ == "__main__":
    main()
