"""The `mergeforget` command: inspect a continual state and export its merged adapter."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.layout import RunLayout
from .core.state import load_state
from .data.standard_cl import MAX_TEXT_CHARS, TEST_PER_TASK, TRAIN_PER_CLASS
from .errors import DataPrepError, MergeForgetError, RunError, StateError

AXOLOTL_EXTRA = 'pip install "mergeforget-plugin[axolotl]"'
RUN_OR_STATE = "a run folder or its state folder"


def _status(args: argparse.Namespace) -> int:
    layout = RunLayout.of_run_or_state_dir(args.state_dir)
    state = load_state(layout.state)
    if state is None:
        print(f"{layout.state}: no finished task yet (the state folder of the run in {layout.root}).")
        return 0
    ranks = sorted(set(state.signature.ranks.values()))
    print(f"State: {layout.state}")
    print(f"Strategy: {state.config.to_dict()}")
    print(
        f"LoRA: r={','.join(map(str, ranks))}, alpha={state.signature.lora_alpha:g}, "
        f"{len(state.signature.ranks)} modules ({', '.join(state.signature.target_modules)})"
    )
    print(f"Finished tasks: {len(state.finished_tasks)}; next task index: {state.next_task_index}\n")
    header = f"{'#':>3}  {'task':<24}{'lambda':>8}{'steps':>7}{'last loss':>11}{'|B_merge| mean':>16}{'seconds':>9}"
    print(header)
    print("-" * len(header))
    for record in state.history:
        loss = record.get("last_train_loss")
        seconds = record.get("seconds")
        print(
            f"{record['task_index']:>3}  {record['task']:<24}{record['merge_coefficient']:>8.3f}"
            f"{record.get('global_step', ''):>7}{'' if loss is None else f'{loss:.4f}':>11}"
            f"{record['merged']['b_norm_mean']:>16.4f}{'' if seconds is None else f'{seconds:.1f}':>9}"
        )
    if state.replay is not None:
        from .core.replay import describe

        kept = describe(state.replay_buffer)
        per_task = ", ".join(f"{task} {rows}" for task, rows in kept["rows"].items())
        print(
            f"\nReplay buffer ({state.replay.to_dict()}): {sum(kept['rows'].values())} rows, {kept['bytes']} bytes "
            f"of training text; rows per task: {per_task}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from .evaluation.model_card import export_adapter, report_fits

    layout = RunLayout.of_run_or_state_dir(args.state_dir)
    state = load_state(layout.state)
    if state is None:
        raise StateError(f"{layout.state} holds no finished task, so there is no adapter to export.")
    # The run's evaluations, when they lie beside the state, go into the adapter's model card.
    report = None
    if layout.evaluation_rows():
        from .evaluation.report import build_report

        try:
            report = build_report(layout, state)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(
                f"mergeforget: the evaluations in {layout.evaluations} could not be read ({error}); "
                "the model card gives no scores.",
                file=sys.stderr,
            )
    out = export_adapter(state, args.output_dir, report=report)
    if report_fits(state, report):
        card = f"with the scores in {layout.evaluations}"
    elif report is not None:
        card = f"without scores ({layout.evaluations} holds no row after each task of this state)"
    else:
        card = "without scores (no evaluations beside the state)"
    print(
        f"Wrote the merged adapter after {len(state.finished_tasks)} task(s) to {out} "
        f"(load it with PeftModel.from_pretrained); its model card README.md is {card}."
    )
    return 0


def require_axolotl() -> None:
    """Refuse to train without Axolotl, naming the extra, before any child process would fail on its import."""
    if importlib.util.find_spec("axolotl") is None:
        raise RunError(
            f"`mergeforget train` runs Axolotl, which is not installed for {sys.executable}. Install the extra: "
            f"{AXOLOTL_EXTRA}, then run the command again (status, report, compare, export and prepare-data do "
            "not need it)."
        )


def _train(args: argparse.Namespace) -> int:
    require_axolotl()
    from .integrations.axolotl.options import run_arguments
    from .integrations.axolotl.runner import run_recipe

    run_recipe(args.recipe, **run_arguments(vars(args)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .evaluation.report import compare_runs

    print(compare_runs(args.output_dirs, plot=args.plot))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .evaluation.report import write_report

    layout = RunLayout.of_run_or_state_dir(args.output_dir)
    for path in write_report(layout, load_state(layout.state)):
        print(f"Wrote {path}")
    print()
    print(layout.report_markdown.read_text())
    return 0


def _hub_id(text: str) -> tuple[str, str]:
    task, separator, hub_id = text.partition("=")
    if not separator or not task or not hub_id:
        raise argparse.ArgumentTypeError(f"expected TASK=ID (e.g. amazon=owner/name), got {text!r}")
    return task, hub_id


BENCHMARKS = ("standard-cl", "superni")


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _prepare_data(args: argparse.Namespace) -> int:
    if args.target in BENCHMARKS:
        benchmark, output_dir = args.target, args.output_dir or f"recipes/data/{args.target.replace('-', '_')}"
    elif args.output_dir is not None:
        raise DataPrepError(f"Unknown benchmark {args.target!r}; choose from {', '.join(BENCHMARKS)}.")
    else:  # `prepare-data OUT`: the Standard CL sets, as before benchmarks were named
        benchmark, output_dir = "standard-cl", args.target
    if benchmark == "superni":
        return _prepare_superni(args, output_dir)
    from .data.standard_cl import MAX_TEXT_CHARS, SOURCES, prepare

    unknown = [task for task in args.tasks or [] if task not in SOURCES]
    if unknown:
        raise DataPrepError(f"--tasks: unknown Standard CL task(s) {unknown}; choose from {sorted(SOURCES)}.")
    args.output_dir = output_dir
    manifest = prepare(
        args.output_dir,
        args.tasks or list(SOURCES),
        local=args.source,
        hub_ids=dict(args.hub_id),
        train_per_class=_given(args.train_per_class, TRAIN_PER_CLASS),
        test_per_task=_given(args.test_per_task, TEST_PER_TASK),
        seed=args.seed,
        max_text_chars=_given(args.max_text_chars, MAX_TEXT_CHARS),
    )
    print(f"{'task':<9} {'split':<6} {'rows':>6}  per class")
    for task, splits in manifest["tasks"].items():
        for split in ("train", "test"):
            counts = splits[split]
            written = zip(splits["labels"], counts["per_class"], counts["asked_per_class"], strict=True)
            short = [f"{label}: {got} of {asked}" for label, got, asked in written if got < asked]
            line = f"{task:<9} {split:<6} {counts['rows']:>6}  {min(counts['per_class'])}-{max(counts['per_class'])}"
            print(line + (f"  (the source has fewer rows for {'; '.join(short)})" if short else ""))
    print(f"Wrote {Path(args.output_dir) / '<task>' / '{train,test}.jsonl'} and manifest.json (seed {args.seed}).")
    return 0


def _prepare_superni(args: argparse.Namespace, output_dir: str) -> int:
    from .data.superni import MAX_INPUT_CHARS, ORDER_1, TEST_PER_TASK, TRAIN_PER_TASK, prepare_superni

    if args.source is None:
        raise DataPrepError(
            "superni needs --from DIR: a checkout of the natural-instructions release (github.com/allenai/"
            "natural-instructions; DIR/tasks/<task>.json)."
        )
    if args.hub_id:
        raise DataPrepError("--hub-id is for the Standard CL sets; superni reads --from DIR only.")
    manifest = prepare_superni(
        output_dir,
        args.source,
        args.tasks or ORDER_1,
        train_per_task=_given(args.train_per_class, TRAIN_PER_TASK),
        test_per_task=_given(args.test_per_task, TEST_PER_TASK),
        seed=args.seed,
        max_input_chars=_given(args.max_text_chars, MAX_INPUT_CHARS),
    )
    print(f"{'task':<48} {'instances':>9} {'train':>6} {'test':>5}")
    for task, counts in manifest["tasks"].items():
        print(f"{task:<48} {counts['instances']:>9} {counts['train']:>6} {counts['test']:>5}")
    print(f"Wrote {Path(output_dir) / '<task>' / '{train,test}.jsonl'} and manifest.json (seed {args.seed}).")
    return 0


def _add_train(commands: Any) -> None:
    from .integrations.axolotl.options import TRAIN_OPTIONS

    train = commands.add_parser(
        "train",
        help="run a recipe's tasks in order with `axolotl train` (needs the [axolotl] extra)",
        description=(
            "Validate RECIPE, write one Axolotl config per task to OUTPUT/configs/, and train the tasks "
            "one after another with `axolotl train`, carrying one SLAO LoRA in OUTPUT/state/. The merged "
            "adapter is written to OUTPUT/adapter/."
        ),
    )
    train.add_argument("recipe", help="the recipe YAML (see recipes/)")
    for option in TRAIN_OPTIONS:
        if option.is_flag:
            train.add_argument(option.flag, action="store_true", help=option.help)
        else:
            train.add_argument(
                option.flag, choices=option.choices, type=option.type, metavar=option.metavar, help=option.help
            )
    train.set_defaults(handler=_train)


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="print runs of the same tasks side by side: AA, BWT, FWT and what each task kept",
        description=(
            "Put runs of the same tasks (same names, same order, same metric per task) side by side; runs whose "
            "tasks or metrics differ are refused."
        ),
    )
    compare.add_argument(
        "output_dirs", nargs="+", help=f"the runs: each {RUN_OR_STATE} (the run must hold evaluations/)"
    )
    compare.add_argument(
        "--plot",
        metavar="PNG",
        help="where to write the forgetting curves (one panel per task, one line per run; default: "
        "FIRST_RUN/comparison.png)",
    )
    compare.set_defaults(handler=_compare)


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="show the finished tasks and per-task merge history of a state")
    status.add_argument("state_dir", help=f"{RUN_OR_STATE} (e.g. outputs/run or outputs/run/state)")
    status.set_defaults(handler=_status)


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="render report.json, report.md and accuracy_matrix.png of a finished or interrupted run",
        description=(
            "Collect OUTPUT_DIR/evaluations (accuracy on every task after every task) and OUTPUT_DIR/state "
            "into the accuracy matrix with AA, BWT, FWT and forgetting per task, written into OUTPUT_DIR. "
            "OUTPUT_DIR may be given as the run's state folder too."
        ),
    )
    report.add_argument("output_dir", help=f"{RUN_OR_STATE} (the run holds state/ and evaluations/)")
    report.set_defaults(handler=_report)


def _add_prepare_data(commands: Any) -> None:
    data = commands.add_parser(
        "prepare-data",
        help="write a benchmark's splits as JSONL: the Standard CL sets (AG News, Amazon, Yelp, DBpedia, Yahoo) "
        "or SuperNI's 15 tasks",
        description=(
            "`prepare-data [standard-cl] OUTPUT_DIR`: sample the five text-classification sets of the Standard CL "
            "Benchmark into OUTPUT_DIR/<task>/train.jsonl and test.jsonl, the rows "
            "recipes/standard-cl-order*.yaml read (give recipes/data/standard_cl for them), in the O-LoRA / SLAO "
            "protocol's sizes (1,000 training rows per class, 7,600 test rows per task), from the Hugging Face Hub "
            "or with --from from local copies in the published formats. `prepare-data superni [OUTPUT_DIR] --from "
            "DIR`: the 15 Super-NaturalInstructions tasks of the SuperNI continual benchmark (up to 1,000 training "
            "and 100 test rows per task) from a natural-instructions checkout, the rows "
            "recipes/superni-order*.yaml read (default OUTPUT_DIR: recipes/data/superni)."
        ),
    )
    data.add_argument("target", metavar="BENCHMARK_OR_OUTPUT_DIR", help="standard-cl, superni, or OUTPUT_DIR")
    data.add_argument(
        "output_dir", nargs="?", help="where to write <task>/train.jsonl, <task>/test.jsonl and manifest.json"
    )
    data.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="read local copies: for standard-cl, DIR holds ag_news_csv, dbpedia_csv, yelp_review_full_csv, "
        "amazon_review_full_csv, yahoo_answers_csv (folders with train.csv/test.csv, or their .tgz; without "
        "--from, the Hub); for superni, a natural-instructions checkout (DIR/tasks/<task>.json)",
    )
    data.add_argument("--tasks", nargs="+", help="which sets (default: all of the benchmark's, in order 1)")
    data.add_argument(
        "--train-per-class",
        type=int,
        help=f"training rows per class (standard-cl, default {TRAIN_PER_CLASS}) or per task (superni, default 1000)",
    )
    data.add_argument("--test-per-task", type=int, help=f"test rows per task (default {TEST_PER_TASK}; superni: 100)")
    data.add_argument("--seed", type=int, default=0, help="sampling seed")
    data.add_argument(
        "--max-text-chars",
        type=int,
        help=f"cut each row's text after this many characters (default {MAX_TEXT_CHARS}; superni: 4000)",
    )
    data.add_argument(
        "--hub-id",
        type=_hub_id,
        action="append",
        default=[],
        metavar="TASK=ID",
        help="read TASK from this Hub dataset (or local dataset directory) with the default's columns",
    )
    data.set_defaults(handler=_prepare_data)


def _add_export(commands: Any) -> None:
    export = commands.add_parser("export", help="write the merged LoRA of a state as a standard PEFT adapter")
    export.add_argument("state_dir", help=f"{RUN_OR_STATE} (e.g. outputs/run or outputs/run/state)")
    export.add_argument("output_dir", help="where to write adapter_config.json and adapter_model.safetensors")
    export.set_defaults(handler=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergeforget",
        description=(
            "Continual LoRA fine-tuning with SLAO (Merge before Forget): one adapter carried across a "
            "sequence of tasks. `train` runs a recipe through Axolotl; `status`, `report`, `compare` and `export` "
            "read what any sequence (Axolotl or TRL) left in its run folder (or the run's state folder)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_compare, _add_status, _add_report, _add_prepare_data, _add_export):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MergeForgetError as error:
        print(f"mergeforget: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
