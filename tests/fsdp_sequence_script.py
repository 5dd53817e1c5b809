"""Two tasks through `MergeForgetCallback` on a model sharded with FSDP2 (`fully_shard`), or the same
two tasks in one plain process for reference; run by tests/test_distributed.py.

The Hugging Face Trainer does not run FSDP on a CPU (with `use_cpu` it falls back to DDP; without,
it refuses: "Using fsdp only works in distributed training"), so a short training loop here calls
the callback's hooks where the Trainer would. Every process takes its share of one global batch,
and the loss is scaled so that FSDP's gradient average equals the single-process gradient.

Each process also appends to `boundary-rank{R}.jsonl`, per task: resident memory before the task's
end (merge, evaluation, state write), the peak during it (Linux `VmHWM`, reset before the boundary
through /proc/self/clear_refs), and how far the LoRA its shards assemble into is from the state.

Usage: python tests/fsdp_sequence_script.py MODEL_DIR OUTPUT_DIR {fsdp,plain} [LORA_RANK [MODULE ...]]
(default: rank 4 on q_proj and v_proj; benchmarks/sharded_boundary.py asks for a larger LoRA).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

from mergeforget_plugin import MergeForgetCallback
from mergeforget_plugin.core.state import load_state
from mergeforget_plugin.evaluation.scoring import eval_set_from_rows, read_rows
from mergeforget_plugin.peft_bridge import is_sharded, lora_layers, read_lora

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo"
TASKS = ("antonyms", "plurals")
STEPS, GLOBAL_BATCH = 3, 8


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def batch_loss(model, tokenizer, rows, all_rows, world: int) -> torch.Tensor:
    """Summed next-token loss of ``rows``, over the label tokens of the whole global batch, times
    the number of processes (FSDP averages the gradients of the processes)."""

    def encode(batch):
        texts = [row["prompt"] + row["completion"] for row in batch]
        return tokenizer(texts, return_tensors="pt", padding=True)

    total_tokens = int(encode(all_rows)["attention_mask"][:, 1:].sum())
    encoded = encode(rows)
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    labels = encoded["input_ids"][:, 1:].masked_fill(encoded["attention_mask"][:, 1:] == 0, -100)
    summed = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
    )
    return summed / total_tokens * world


def main() -> None:
    model_dir, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    sharded = mode == "fsdp"
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    rank_r = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    modules = sys.argv[5:] or ["q_proj", "v_proj"]
    lora = LoraConfig(r=rank_r, lora_alpha=2 * rank_r, target_modules=modules)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora)
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        factors = [f["default"].weight for layer in lora_layers(model).values() for f in (layer.lora_A, layer.lora_B)]
        assert is_sharded(model) and all(factor.placements[0].is_shard() for factor in factors)

    eval_sets = [eval_set_from_rows(name, read_rows(DEMO / f"{name}.test.jsonl")[:8]) for name in TASKS]
    args = TrainingArguments(output_dir=str(out / "trainer"), report_to=[], use_cpu=True)
    state = load_state(out / "state")
    done = state.finished_tasks if state is not None else []
    for name in TASKS:
        if name in done:
            continue
        callback = MergeForgetCallback(out / "state", name, eval_sets=eval_sets)
        # A hand-written loop's TrainerState says "world process zero" on every rank; the engine's
        # process-group rank decides who writes.
        trainer_state, control = TrainerState(max_steps=STEPS), TrainerControl()
        callback.on_train_begin(args, trainer_state, control, model=model, processing_class=tokenizer)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        rows = read_rows(DEMO / f"{name}.train.jsonl")
        for step in range(STEPS):
            global_batch = rows[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
            batch_loss(model, tokenizer, global_batch[rank::world], global_batch, world).backward()
            optimizer.step()
            optimizer.zero_grad()
            trainer_state.global_step += 1
            callback.on_step_end(args, trainer_state, control, model=model)
        del optimizer
        before = memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        callback.on_train_end(args, trainer_state, control, model=model, processing_class=tokenizer)
        record = {"task": name, "rss_before_kib": before, "peak_during_kib": memory_kib("VmHWM"), "world": world}
        # The shards every process wrote back assemble into the merged LoRA the state saved.
        saved, assembled = load_state(out / "state").merged, read_lora(model)
        record["assembled_vs_saved"] = max(
            float((saved[n].a - assembled[n].a).abs().max().item() + (saved[n].b - assembled[n].b).abs().max().item())
            for n in saved
        )
        with open(out / f"boundary-rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
    if sharded:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
