"""What a task boundary costs, how the adapter grows with T, and the callback's per-step overhead.

Run:    python benchmarks/boundary_cost.py            # Llama-7B-shaped LoRA, T = 1..15, step overhead
Smoke:  python benchmarks/boundary_cost.py --smoke    # small shapes, seconds (CI runs this)

1. Boundary: orthogonal init + merge + atomic state save (and load) for a LoRA of rank 16 on
   q,k,v,o,gate,up,down of 32 layers shaped like Llama-7B (hidden 4096, MLP 11008), float32, CPU;
   first on tensors (the math and the state alone), then end to end through MergeForgetCallback's
   hooks on a real PEFT model with those LoRA layers. That model's frozen base weights stay on
   PyTorch's `meta` device (shapes without memory; a boundary never reads them), so only the
   40 M LoRA parameters and a small embedding take memory.
2. Adapter bytes after T = 1..15 tasks: the exported SLAO adapter vs an O-LoRA-style adapter that
   keeps one LoRA block per task (both written to disk and measured), on a SmolLM2-shaped LoRA
   (r=8 on q,v of 30 layers, hidden 576), plus SLAO at T = 1 and 15 on the 7B shape.
3. Per-step overhead: mean seconds per optimizer step of SFTTrainer on a tiny model with and
   without MergeForgetCallback (boundaries excluded).

Prints tables and writes --output-dir/boundary_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mergeforget_plugin.core.state as state_module  # noqa: E402
from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig, merge_task, task_start_weights  # noqa: E402
from mergeforget_plugin.core.state import (  # noqa: E402
    BaseModelFingerprint,
    ContinualState,
    LoRASignature,
    load_state,
    save_state,
)


def lora_shapes(layers: int, hidden: int, mlp: int, modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) per adapted module."""
    shape = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, hidden),
        "v_proj": (hidden, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, mlp),
        "up_proj": (hidden, mlp),
        "down_proj": (mlp, hidden),
    }
    return {f"model.layers.{i}.{m}": shape[m] for i in range(layers) for m in modules}


def random_lora(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, LoRAPair]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: LoRAPair(
            torch.randn(rank, n, generator=generator) * 0.01, torch.randn(m, rank, generator=generator) * 0.01
        )
        for name, (n, m) in shapes.items()
    }


def state_for(shapes, rank, merged, finetuned, tasks) -> ContinualState:
    return ContinualState(
        signature=LoRASignature(
            {name: rank for name in shapes}, float(2 * rank), False, sorted({n.rsplit(".", 1)[1] for n in shapes})
        ),
        base_model=BaseModelFingerprint({"model_type": "llama"}, None),
        config=MergeForgetConfig(),
        adapter_config={"peft_type": "LORA", "r": rank},
        finished_tasks=tasks,
        merged=merged,
        finetuned=finetuned,
    )


def boundary_cost(shapes, rank: int, repeats: int, workdir: Path) -> dict:
    config = MergeForgetConfig()
    previous_ft = random_lora(shapes, rank, 0)
    merged = random_lora(shapes, rank, 1)
    timings: dict[str, list[float]] = {"init": [], "merge": [], "save": [], "load": []}
    for repeat in range(repeats):
        state_dir = workdir / f"state-{repeat}"
        started = time.perf_counter()
        start = task_start_weights(2, previous_ft, merged, config)
        timings["init"].append(time.perf_counter() - started)
        trained = {n: LoRAPair(p.a + 0.001, p.b + 0.001) for n, p in start.items()}  # stands in for training
        started = time.perf_counter()
        new_merged = merge_task(2, merged, trained, config)
        timings["merge"].append(time.perf_counter() - started)
        started = time.perf_counter()
        save_state(state_for(shapes, rank, new_merged, trained, ["t1", "t2"]), state_dir)
        timings["save"].append(time.perf_counter() - started)
        getattr(state_module, "_RECENT", {}).clear()  # a cold load, as a new process (each Axolotl task) does it
        started = time.perf_counter()
        load_state(state_dir)
        timings["load"].append(time.perf_counter() - started)
        shutil.rmtree(state_dir)
    result = {key: statistics.median(values) for key, values in timings.items()}
    result["boundary"] = result["init"] + result["merge"] + result["save"]
    result["modules"] = len(shapes)
    result["lora_parameters"] = sum(rank * (n + m) for n, m in shapes.values())
    return result


def seven_b_shaped_peft_model(layers: int, hidden: int, mlp: int, rank: int, modules: tuple[str, ...]):
    """A PEFT LoRA model shaped like Llama-7B whose frozen base weights live on the `meta` device.

    The LoRA factors are real float32 tensors (PEFT's init: Kaiming A, zero B) and so is the input
    embedding (the state's base-model fingerprint reads it; its vocabulary is cut to 1024 rows).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergeforget_plugin.peft_bridge import lora_layers

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=1024,
    )
    with torch.device("meta"):
        model = get_peft_model(
            LlamaForCausalLM(config), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(modules))
        )
    embedding = model.get_input_embeddings()
    embedding.to_empty(device="cpu")
    torch.nn.init.normal_(embedding.weight, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    for layer in lora_layers(model).values():
        for part in (layer.lora_A["default"], layer.lora_B["default"]):
            part.to_empty(device="cpu")
        torch.nn.init.kaiming_uniform_(layer.lora_A["default"].weight, a=5**0.5, generator=generator)
        torch.nn.init.zeros_(layer.lora_B["default"].weight)
    return model


def boundary_through_callback(model, boundaries: int, workdir: Path) -> dict:
    """Seconds of MergeForgetCallback's on_train_begin and on_train_end at task boundaries 2..1+boundaries.

    Training is replaced by a small change to every LoRA factor, so each task merges something new.
    """
    from transformers import TrainerControl, TrainerState

    from mergeforget_plugin import MergeForgetCallback

    state_dir = workdir / "callback-state"
    parameters = [p for n, p in model.named_parameters() if "lora_" in n]
    timings: dict[str, list[float]] = {"task_begin_cold": [], "task_begin": [], "task_end": []}
    for task in range(1, boundaries + 2):
        callback = MergeForgetCallback(state_dir, task_name=f"task{task}")
        trainer_state, control = TrainerState(), TrainerControl()
        if task >= 2:
            # As a new process begins a task (every Axolotl task): the state is read and verified.
            getattr(state_module, "_RECENT", {}).clear()
            started = time.perf_counter()
            MergeForgetCallback(state_dir, task_name=f"task{task}").on_train_begin(
                None, TrainerState(), control, model=model
            )
            timings["task_begin_cold"].append(time.perf_counter() - started)
        started = time.perf_counter()
        callback.on_train_begin(None, trainer_state, control, model=model)
        begun = time.perf_counter()
        with torch.no_grad():
            for parameter in parameters:  # stands in for training
                parameter.add_(1e-3)
        trainer_state.global_step = 1
        ending = time.perf_counter()
        callback.on_train_end(None, trainer_state, control, model=model)
        ended = time.perf_counter()
        if task >= 2:  # task 1 has no init and nothing to merge into
            timings["task_begin"].append(begun - started)
            timings["task_end"].append(ended - ending)
    result = {key: statistics.median(values) for key, values in timings.items()}
    result["boundary"] = result["task_begin"] + result["task_end"]
    result["lora_parameters"] = sum(p.numel() for p in parameters)
    result["state_bytes"] = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    result["boundaries"] = boundaries
    shutil.rmtree(state_dir)
    return result


def slao_adapter_bytes(shapes, rank: int, tasks: list[int], workdir: Path) -> dict[int, int]:
    """Run T boundaries of SLAO and export the adapter after the listed T: bytes on disk."""
    from mergeforget_plugin.evaluation.model_card import export_adapter

    config = MergeForgetConfig()
    merged, finetuned, sizes = None, random_lora(shapes, rank, 0), {}
    for t in range(1, max(tasks) + 1):
        if t > 1:
            start = task_start_weights(t, finetuned, merged, config)
            finetuned = {n: LoRAPair(p.a + 0.001 * t, p.b + 0.001 * t) for n, p in start.items()}
        merged = merge_task(t, merged, finetuned, config)
        if t in tasks:
            out = export_adapter(
                state_for(shapes, rank, merged, finetuned, [f"t{i}" for i in range(1, t + 1)]), workdir / f"slao-{t}"
            )
            sizes[t] = (out / "adapter_model.safetensors").stat().st_size
            shutil.rmtree(out)
    return sizes


def olora_adapter_bytes(shapes, rank: int, tasks: list[int], workdir: Path) -> dict[int, int]:
    """An O-LoRA-style adapter holds one LoRA block per task seen: write it after each T."""
    sizes = {}
    for t in tasks:
        tensors = {}
        for block in range(1, t + 1):
            for name, pair in random_lora(shapes, rank, block).items():
                tensors[f"base_model.model.{name}.lora_A.task{block}.weight"] = pair.a
                tensors[f"base_model.model.{name}.lora_B.task{block}.weight"] = pair.b
        path = workdir / f"olora-{t}.safetensors"
        save_file(tensors, str(path))
        sizes[t] = path.stat().st_size
        path.unlink()
    return sizes


def step_overhead(steps: int, workdir: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mergeforget_plugin import MergeForgetCallback, build_tiny_llama

    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?\nAnswer:", "completion": f" {2 * i}"} for i in range(64)]
    model_dir = build_tiny_llama(workdir / "tiny", [r["prompt"] + r["completion"] for r in rows])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self._start)

    results = {}
    for with_callback in (False, True, False, True):  # interleaved, to spread machine noise over both
        torch.manual_seed(0)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(model_dir),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )
        timer = StepTimer()
        callbacks = [timer] + (
            [MergeForgetCallback(workdir / f"state-{time.time_ns()}", task_name="t")] if with_callback else []
        )
        SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=str(workdir / "run"),
                max_steps=steps,
                per_device_train_batch_size=8,
                report_to=[],
                use_cpu=True,
                bf16=False,
                save_strategy="no",
                disable_tqdm=True,
                logging_steps=steps,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            callbacks=callbacks,
        ).train()
        results.setdefault("with_callback" if with_callback else "without_callback", []).extend(timer.durations[1:])
    return {
        key: {"mean_s": statistics.mean(v), "median_s": statistics.median(v), "steps": len(v)}
        for key, v in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small shapes and few steps: seconds")
    parser.add_argument("--repeats", type=int, default=3, help="boundary measurements (median is reported)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per overhead run")
    parser.add_argument("--output-dir", default="outputs/benchmark", help="boundary_cost.json goes here")
    args = parser.parse_args()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    if args.smoke:
        big, big_rank, small, small_rank, sweep, steps = (
            lora_shapes(2, 256, 512, all_modules),
            16,
            lora_shapes(2, 64, 128, ("q_proj", "v_proj")),
            4,
            [1, 2, 3],
            4,
        )
        args.repeats = 1
    else:
        big, big_rank = lora_shapes(32, 4096, 11008, all_modules), 16
        small, small_rank, sweep, steps = (
            lora_shapes(30, 576, 1536, ("q_proj", "v_proj")),
            8,
            list(range(1, 16)),
            args.steps,
        )

    results: dict = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        work = Path(scratch)
        results["boundary_7b_shape"] = boundary_cost(big, big_rank, args.repeats, work)
        b = results["boundary_7b_shape"]
        print(f"Boundary, {b['modules']} modules, r={big_rank}, {b['lora_parameters']:,} LoRA parameters")
        print(f"(float32, CPU, median of {args.repeats}):")
        print("| step | seconds |\n|---|---|")
        for key in ("init", "merge", "save", "boundary", "load"):
            print(f"| {key if key != 'load' else 'load (cold, as in a new process)'} | {b[key]:.3f} |")

        layers, hidden, mlp = (2, 256, 512) if args.smoke else (32, 4096, 11008)
        model = seven_b_shaped_peft_model(layers, hidden, mlp, big_rank, all_modules)
        results["boundary_7b_shape_callback"] = boundary_through_callback(model, args.repeats, work)
        del model
        c = results["boundary_7b_shape_callback"]
        print(f"\nThe same boundary end to end through MergeForgetCallback on a PEFT model, median of {args.repeats}:")
        print("| hook | what it does | seconds |\n|---|---|---|")
        print(f"| on_train_begin, same process | check the model, reuse the state, QR init | {c['task_begin']:.3f} |")
        print(
            f"| on_train_begin, new process | the same, reading and verifying the state | {c['task_begin_cold']:.3f} |"
        )
        print(f"| on_train_end | read the LoRA, merge, load the merged LoRA, save the state | {c['task_end']:.3f} |")
        print(f"| boundary (same process: TRL's train_sequence) | | {c['boundary']:.3f} |")
        print(f"({c['lora_parameters']:,} LoRA parameters; state directory {c['state_bytes']:,} bytes)")

        results["adapter_bytes_small_shape"] = {
            "slao": slao_adapter_bytes(small, small_rank, sweep, work),
            "olora": olora_adapter_bytes(small, small_rank, sweep, work),
        }
        ends = [sweep[0], sweep[-1]]
        results["adapter_bytes_7b_shape_slao"] = slao_adapter_bytes(big, big_rank, ends, work)
        sizes = results["adapter_bytes_small_shape"]
        print(f"\nAdapter bytes after T tasks ({len(small)} modules, r={small_rank}):")
        print("| T | SLAO | O-LoRA (one block per task) |\n|---|---|---|")
        for t in sweep:
            print(f"| {t} | {sizes['slao'][t]:,} | {sizes['olora'][t]:,} |")
        big_sizes = results["adapter_bytes_7b_shape_slao"]
        ratio = big_sizes[ends[-1]] / big_sizes[ends[0]]
        print(
            f"\nBoundary-shaped SLAO adapter (see the first table): {big_sizes[ends[0]]:,} bytes after T={ends[0]}, ",
            end="",
        )
        print(f"{big_sizes[ends[-1]]:,} after T={ends[-1]} (ratio {ratio:.2f})")

        results["step_overhead"] = step_overhead(steps, work)
        overhead = results["step_overhead"]
        print("\nSeconds per optimizer step, tiny model (boundaries excluded):")
        print("| run | mean | median | steps |\n|---|---|---|---|")
        for key, value in overhead.items():
            print(f"| {key} | {value['mean_s']:.4f} | {value['median_s']:.4f} | {value['steps']} |")
    (out / "boundary_cost.json").write_text(json.dumps(results, indent=2))
    print(f"\nWrote {out / 'boundary_cost.json'}")


if __name__ == "__main__":
    main()
