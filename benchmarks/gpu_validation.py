"""The project's GPU validation: one command, one JSON, meant to fit 8 minutes on one GPU.

Run (on a GPU machine, from the repository root; offline: benchmarks/gpu/kit.py prepares and installs
what it needs, docs/benchmarks.md "On a GPU, offline"):
    python benchmarks/gpu_validation.py --output gpu_validation.json
On a CPU (what CI runs, seconds): the same steps at smoke size, to check the script itself:
    python benchmarks/gpu_validation.py --cpu-check --output gpu_validation.json

Three steps, each timed; a step that cannot run says why in the JSON instead of stopping the others
(GPU time is short: one missing package must not cost the rest). A step that is skipped (its
package is not installed) FAILS the validation unless --allow-skip names it: a run that checked
nothing must not exit 0.
  axolotl    recipes/gpu-qlora-smollm2.yaml trained for real through `mergeforget train` (QLoRA nf4,
             bf16, Axolotl's fused LoRA kernels), at --axolotl-steps steps a task; the report's AA/BWT.
             --cpu-check: the recipe's pre-flight only (`--dry-run`; Axolotl on CPU cannot run it).
  trl_qlora  the TRL path (train_sequence) on a 4-bit nf4 base (bitsandbytes; bf16 compute on the GPU,
             float32 on the CPU check), LoRA r=16 on every linear layer, the three demo tasks of
             examples/trl_sequence.py, SLAO; the exported adapter reloaded in stock PEFT on a fresh
             4-bit base must give the trained model's logits, and its size must not grow.
  grid_slice slao and seq of benchmarks/continual_benchmark.py's gpu preset at --grid-steps steps a task,
             one seed, one order, timed by harness_time.py (in and outside the optimizer steps).
Budget: each subprocess step has a 420 s limit. The 8-minute aim is an estimate for one H100 (the
GPU has not run it): docs/benchmarks.md says how it was made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "recipes" / "data" / "demo"
TRL_TASKS = ("antonyms", "plurals", "capitals")
LOGIT_TOLERANCE = 1e-2  # bf16 logits of the same weights (float32 on CPU: far below)


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "axolotl"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    from mergeforget_plugin.core.environment import offline_environment

    return subprocess.run(command, cwd=cwd, env=offline_environment(), capture_output=True, text=True, timeout=timeout)


def step_axolotl(out: Path, cpu_check: bool, steps: int) -> dict:
    import importlib.util

    import yaml

    if importlib.util.find_spec("axolotl") is None:
        return {"status": "skipped", "why": "axolotl is not installed here"}
    recipe = yaml.safe_load((REPO / "recipes" / "gpu-qlora-smollm2.yaml").read_text())
    recipe["axolotl"]["max_steps"] = steps
    recipe["output_dir"] = str(out / "axolotl")
    for task in recipe["tasks"]:  # the recipe's data paths are relative to recipes/
        for entry in task.get("datasets", []) + task.get("test_datasets", []):
            entry["path"] = str(REPO / "recipes" / entry["path"])
    path = out / "gpu-qlora-smollm2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "mergeforget_plugin.cli", "train", str(path)]
    completed = _run(command + (["--dry-run"] if cpu_check else []), out, timeout=420)
    result = {"status": "ok" if completed.returncode == 0 else "failed", "steps_per_task": steps}
    if completed.returncode != 0:
        result["stderr_tail"] = completed.stderr[-2000:]
        return result
    if cpu_check:
        result["dry_run"] = [line for line in completed.stdout.splitlines() if "is valid" in line]
        return result
    report = json.loads((out / "axolotl" / "report.json").read_text())
    state = json.loads(sorted((out / "axolotl" / "state").glob("task-*/manifest.json"))[-1].read_text())
    result.update(
        metrics=report["metrics"],
        final_row=dict(zip(report["tasks"], report["accuracy_matrix"][-1], strict=True)),
        seconds_per_task=[round(record["seconds"], 1) for record in state["history"]],
    )
    return result


def step_trl_qlora(out: Path, cpu_check: bool, steps: int) -> dict:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return {"status": "skipped", "why": "bitsandbytes is not installed here (QLoRA needs it)"}
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig

    from mergeforget_plugin import Task, build_tiny_llama, train_sequence
    from mergeforget_plugin.data.models import default_model_dir

    if cpu_check:
        rows = [
            json.loads(line) for n in TRL_TASKS for line in (DEMO_DATA / f"{n}.train.jsonl").read_text().splitlines()
        ]
        model_dir = build_tiny_llama(out / "tiny-model", [r["prompt"] + r["completion"] for r in rows])
    else:
        model_dir = default_model_dir()
    compute = torch.float32 if cpu_check else torch.bfloat16

    def quantized_base():
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
        return AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=quantization, dtype=compute, device_map={"": 0 if not cpu_check else "cpu"}
        )

    model = quantized_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tasks = [Task(name, DEMO_DATA / f"{name}.train.jsonl", DEMO_DATA / f"{name}.test.jsonl") for name in TRL_TASKS]
    result = train_sequence(
        model,
        tasks,
        args=SFTConfig(
            output_dir=str(out / "trl"),
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=5e-4,
            save_strategy="no",
            report_to=[],
            use_cpu=cpu_check,
            bf16=not cpu_check,
            gradient_checkpointing=False,
            disable_tqdm=True,
        ),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    # The exported adapter, reloaded in stock PEFT on a fresh 4-bit base, computes what the trained
    # model (``model``, which PEFT adapted in place and which holds the merged LoRA now) does.
    reloaded = PeftModel.from_pretrained(quantized_base(), result.adapter_dir).eval()
    model.eval()
    device = next(model.parameters()).device
    inputs = tokenizer("Antonym of hot:", return_tensors="pt").to(device)
    with torch.no_grad():
        difference = (model(**inputs).logits - reloaded(**inputs).logits).abs().max().item()
    sizes = [record["adapter_bytes"] for record in result.state.history]
    return {
        # The same weights in the same dtype: anything beyond rounding means the export is not the model.
        "status": "ok" if difference <= LOGIT_TOLERANCE and len(set(sizes)) == 1 else "failed",
        "quantization": "nf4",
        "compute_dtype": str(compute).removeprefix("torch."),
        "steps_per_task": steps,
        "finished_tasks": result.state.finished_tasks,
        "scores": result.scores,
        "reloaded_max_logit_difference": difference,
        "adapter_bytes": sizes,
    }


def step_grid(out: Path, cpu_check: bool, steps: int) -> dict:
    """slao and seq of the benchmark's gpu preset (``steps`` a task, not its 125, to fit the budget),
    through harness_time.py: besides each run's metrics, where each task's time went, in and
    outside the optimizer steps, which is what planning a grid on this GPU needs."""
    timings = out / "grid" / "harness_time.json"
    command = [sys.executable, str(REPO / "benchmarks" / "harness_time.py"), "--methods", "slao,seq", "--seed", "0"]
    command += ["--output", str(timings)]
    command += ["--smoke"] if cpu_check else ["--preset", "gpu", "--device", "cuda", "--steps", str(steps)]
    completed = _run(command, REPO / "benchmarks", timeout=420)
    if completed.returncode != 0:
        return {"status": "failed", "stderr_tail": completed.stderr[-2000:]}
    results = json.loads((out / "grid" / "harness_time_runs" / "results.json").read_text())
    per_task = json.loads(timings.read_text())["per_task"]
    time_spent = {}
    for method, tasks in per_task.items():
        count, inside = sum(t["optimizer_steps"] for t in tasks), sum(t["steps"] for t in tasks)
        time_spent[method] = {
            "optimizer_steps": count,
            "step_seconds": round(inside, 1),
            "outside_step_seconds": round(sum(t["outside_steps"] for t in tasks), 1),
            "steps_per_second": round(count / inside, 2) if inside else None,
        }
    return {
        "status": "ok",
        "preset": "smoke" if cpu_check else "gpu",
        "steps_per_task": results["settings"]["steps"],
        "runs": [
            {"method": r["method"], "metrics": r["metrics"], "seconds": round(r["seconds"], 1)} for r in results["runs"]
        ],
        "time": time_spent,
        "per_task": per_task,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_validation.json", help="the one JSON every step writes into")
    parser.add_argument("--work-dir", default="outputs/gpu_validation", help="the steps' runs go here")
    parser.add_argument(
        "--cpu-check", action="store_true", help="smoke size on the CPU: checks the script, not the GPU"
    )
    parser.add_argument("--axolotl-steps", type=int, default=40, help="optimizer steps per task of the Axolotl run")
    parser.add_argument("--trl-steps", type=int, default=40, help="optimizer steps per task of the TRL run")
    parser.add_argument(
        "--grid-steps",
        type=int,
        default=60,
        help="optimizer steps per task of the grid slice (the gpu preset trains 125; 60 fits the 8-minute aim)",
    )
    parser.add_argument("--steps", default="axolotl,trl_qlora,grid_slice", help="which steps, comma-separated")
    parser.add_argument(
        "--allow-skip",
        default="",
        help="steps that may be skipped (package not installed) without failing the run, comma-separated; "
        "by default a skipped step fails: a validation that checked nothing must not pass",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        sys.exit("No GPU here: run with --cpu-check to test the script on the CPU.")
    out = Path(args.work_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "command": " ".join(sys.argv),
        "device": "cpu (--cpu-check)" if args.cpu_check else torch.cuda.get_device_name(),
        "versions": _versions(),
        "steps": {},
    }
    steps = {
        "axolotl": lambda: step_axolotl(out, args.cpu_check, 2 if args.cpu_check else args.axolotl_steps),
        "trl_qlora": lambda: step_trl_qlora(out, args.cpu_check, 2 if args.cpu_check else args.trl_steps),
        "grid_slice": lambda: step_grid(out, args.cpu_check, args.grid_steps),
    }
    wanted = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(wanted) - set(steps))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {', '.join(steps)}")
    for name in wanted:
        started = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            result = steps[name]()
        except Exception as error:  # one failed step must not cost the others' GPU time
            result = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-3000:],
            }
        result["seconds"] = round(time.time() - started, 1)
        if name == "trl_qlora" and torch.cuda.is_available():  # the other steps train in subprocesses
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        record["steps"][name] = result
        Path(args.output).write_text(json.dumps(record, indent=2))
        print(f"{name}: {result['status']} in {result['seconds']} s", flush=True)
    allowed = {name for name in args.allow_skip.split(",") if name}
    failed = [
        name
        for name, result in record["steps"].items()
        if result["status"] == "failed" or (result["status"] == "skipped" and name not in allowed)
    ]
    record["failed"] = failed
    record["total_seconds"] = round(sum(result["seconds"] for result in record["steps"].values()), 1)
    Path(args.output).write_text(json.dumps(record, indent=2))
    print(f"total {record['total_seconds']} s; failed: {', '.join(failed) or 'none'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
