"""Examples per second of the evaluation: `choice` scoring (the 0.1.0 scorer against the current one)
and greedy generation for `rouge_l` / `exact_match` (`model.generate` one prompt at a time against
the batched generation).

Run:    python benchmarks/eval_throughput.py                 # SmolLM2-135M-Instruct, CPU (and CUDA if present)
Smoke:  python benchmarks/eval_throughput.py --smoke         # tiny random model, seconds (CI runs this)

Both sides run on the same evaluation sets in the same process, one after the other, each
repeated; the tables give the median examples/s, the speed-up, and on how many examples both
gave the same answer (they must: the same log-likelihoods; the same greedy tokens).

Choice sets: the five real-text classification tasks of continual_benchmark.py (cl_tasks.py: 2-5
labels, one or several tokens each) and the shipped demo tasks (antonyms, plurals, capitals:
20-40 multi-token options each). Generation sets: the generative demo tasks (headline, reply:
24 held-out rows each, at most 24 new tokens, stopping at a newline; headline once more with no
stop string, so every row runs to the limit) and capitals (at most 8 new tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "recipes" / "data" / "demo"


@torch.no_grad()
def choice_predictions_v010(model, tokenizer, eval_set, batch_size: int = 32) -> list[str]:
    """The scorer of mergeforget-plugin 0.1.0: one right-padded sequence per (prompt, option), batched."""
    device = next(p.device for p in model.parameters())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    option_ids = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in eval_set.options]
    pairs = []
    for prompt in eval_set.prompts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        pairs.extend((prompt_ids + ids, len(prompt_ids)) for ids in option_ids)
    scores = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (sequence, _) in enumerate(chunk):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        positions = torch.arange(1, width, device=device).unsqueeze(0)
        start = torch.tensor([s for _, s in chunk], device=device).unsqueeze(1)
        keep = (positions >= start) & (positions < mask.sum(1, keepdim=True))
        scores.append((logprobs * keep).sum(1).cpu())
    table = torch.cat(scores).view(len(eval_set.prompts), len(eval_set.options))
    return [eval_set.options[int(i)] for i in table.argmax(1)]


def eval_sets(test_size: int):
    from cl_tasks import build_tasks

    from mergeforget_plugin.evaluation.scoring import eval_set_from_rows, read_rows

    sets = [
        eval_set_from_rows(name, task["test"], option_rows=task["train"])
        for name, task in build_tasks(train_size=64, test_size=test_size).items()
    ]
    for name in ("antonyms", "plurals", "capitals"):
        sets.append(
            eval_set_from_rows(
                name, read_rows(DEMO / f"{name}.test.jsonl"), option_rows=read_rows(DEMO / f"{name}.train.jsonl")
            )
        )
    return sets


def generation_sets():
    from mergeforget_plugin.evaluation.scoring import eval_set_from_rows, read_rows

    generative = REPO / "recipes" / "data" / "generative"
    sets = []
    for name, stop, new_tokens, label in (
        ("headline", ["\n"], 24, "headline"),
        ("reply", ["\n"], 24, "reply"),
        ("headline", [], 24, "headline-no-stop"),
    ):
        rows = read_rows(generative / f"{name}.test.jsonl")
        sets.append(eval_set_from_rows(label, rows, metric="rouge_l", max_new_tokens=new_tokens, stop=stop))
    sets.append(
        eval_set_from_rows("capitals", read_rows(DEMO / "capitals.test.jsonl"), metric="exact_match", max_new_tokens=8)
    )
    return sets


def timed(function, *arguments, repeats: int) -> tuple[float, object]:
    durations, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = function(*arguments)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, few rows: seconds")
    parser.add_argument("--devices", default="auto", help="'auto' (cpu, and cuda when present) or a comma list")
    parser.add_argument("--test-size", type=int, default=96, help="held-out rows per classification task")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per scorer (median is reported)")
    parser.add_argument("--output-dir", default="outputs/benchmark")
    parser.add_argument(
        "--parts", nargs="+", default=["choice", "generation"], choices=["choice", "generation"], help="what to time"
    )
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeforget_plugin.evaluation.scoring import choice_predictions, generate_greedy, generate_one_at_a_time

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.test_size, args.repeats = 10, 1  # 2 rows per label of a 5-label task; 8 are kept
    sets = eval_sets(args.test_size) if "choice" in args.parts else []
    generating = generation_sets() if "generation" in args.parts else []
    if args.smoke:
        from mergeforget_plugin import build_tiny_llama

        sets = [s for s in sets if s.task in ("language_a", "plurals")]
        generating = [s for s in generating if s.task in ("headline", "capitals")]
        for eval_set in [*sets, *generating]:
            eval_set.prompts, eval_set.answers = eval_set.prompts[:8], eval_set.answers[:8]
        corpus = [p for s in sets for p in s.prompts + s.options] + [
            p + a for s in generating for p, a in zip(s.prompts, s.answers, strict=True)
        ]
        model_dir = build_tiny_llama(out / "tiny-model", corpus)
    else:
        from mergeforget_plugin.data.models import default_model_dir

        model_dir = default_model_dir()
    devices = (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = {
        "command": " ".join(sys.argv),
        "model": str(model_dir),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": [],
        "generation_rows": [],
    }
    print("| device | task | examples | options | 0.1.0 ex/s | current ex/s | speed-up | same predictions |")
    print("|---|---|---|---|---|---|---|---|")
    for device in devices:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        for eval_set in sets:
            old_seconds, old = timed(choice_predictions_v010, model, tokenizer, eval_set, repeats=args.repeats)
            new_seconds, new = timed(choice_predictions, model, tokenizer, eval_set, repeats=args.repeats)
            examples = len(eval_set.prompts)
            row = {
                "device": device,
                "task": eval_set.task,
                "examples": examples,
                "options": len(eval_set.options),
                "old_examples_per_s": examples / old_seconds,
                "new_examples_per_s": examples / new_seconds,
                "speedup": old_seconds / new_seconds,
                "same_predictions": sum(a == b for a, b in zip(old, new, strict=True)),
            }
            results["rows"].append(row)
            print(
                f"| {device} | {row['task']} | {examples} | {row['options']} | {row['old_examples_per_s']:.1f} | "
                f"{row['new_examples_per_s']:.1f} | {row['speedup']:.2f}x | {row['same_predictions']}/{examples} |",
                flush=True,
            )
        rows = [r for r in results["rows"] if r["device"] == device]
        for name, key in (("0.1.0", "old_examples_per_s"), ("current", "new_examples_per_s")):
            if rows:
                total = sum(r["examples"] for r in rows) / sum(r["examples"] / r[key] for r in rows)
                results[f"{device}_{name}_examples_per_s_all_sets"] = total
        if rows:
            print(
                f"\n{device}: all sets {results[f'{device}_0.1.0_examples_per_s_all_sets']:.1f} -> "
                f"{results[f'{device}_current_examples_per_s_all_sets']:.1f} examples/s\n"
            )
        print(
            "| device | generation set | examples | max new tokens | stop | one at a time ex/s | batched ex/s "
            "| speed-up | same answers |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for eval_set in generating:
            old_seconds, old = timed(generate_one_at_a_time, model, tokenizer, eval_set, repeats=args.repeats)
            new_seconds, new = timed(generate_greedy, model, tokenizer, eval_set, repeats=args.repeats)
            examples = len(eval_set.prompts)
            row = {
                "device": device,
                "task": eval_set.task,
                "examples": examples,
                "max_new_tokens": eval_set.max_new_tokens,
                "stop": eval_set.stop,
                "one_at_a_time_examples_per_s": examples / old_seconds,
                "batched_examples_per_s": examples / new_seconds,
                "speedup": old_seconds / new_seconds,
                "same_answers": sum(a == b for a, b in zip(old, new, strict=True)),
                "example_answer": new[0],
            }
            results["generation_rows"].append(row)
            print(
                f"| {device} | {row['task']} | {examples} | {row['max_new_tokens']} | {json.dumps(row['stop'])} | "
                f"{row['one_at_a_time_examples_per_s']:.2f} | {row['batched_examples_per_s']:.2f} | "
                f"{row['speedup']:.2f}x | {row['same_answers']}/{examples} |",
                flush=True,
            )
        rows = [r for r in results["generation_rows"] if r["device"] == device]
        if not rows:
            continue
        for name, key in (("one_at_a_time", "one_at_a_time_examples_per_s"), ("batched", "batched_examples_per_s")):
            total = sum(r["examples"] for r in rows) / sum(r["examples"] / r[key] for r in rows)
            results[f"{device}_generation_{name}_examples_per_s_all_sets"] = total
        one, batched = (
            results[f"{device}_generation_{name}_examples_per_s_all_sets"] for name in ("one_at_a_time", "batched")
        )
        print(f"\n{device}: generation, all sets {one:.2f} -> {batched:.2f} examples/s\n")
    (out / "eval_throughput.json").write_text(json.dumps(results, indent=2))
    print(f"Wrote {out / 'eval_throughput.json'}")


if __name__ == "__main__":
    main()
