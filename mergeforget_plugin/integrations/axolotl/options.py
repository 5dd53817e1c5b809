"""The options of a recipe run, defined once for ``mergeforget train`` (argparse) and ``axolotl
continual-train`` (click): the same flags, help and choices, and one mapping to ``run_recipe``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...core.slao import allowed_values


@dataclass(frozen=True)
class TrainOption:
    """One command-line option; ``argument`` is the ``run_recipe`` keyword it sets."""

    flag: str
    argument: str
    help: str
    is_flag: bool = False
    choices: tuple[str, ...] | None = None
    type: type | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The name argparse and click give the option's value (``--dry-run``: ``dry_run``)."""
        return self.flag.removeprefix("--").replace("-", "_")


_STRATEGIES = tuple(allowed_values()["strategy"])

TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("--resume", "resume", "continue after the last finished task of OUTPUT/state", is_flag=True),
    TrainOption("--dry-run", "dry_run", "validate and write the per-task configs, train nothing", is_flag=True),
    TrainOption("--verbose", "stream_output", "show Axolotl's output instead of logging it per task", is_flag=True),
    TrainOption("--strategy", "strategy", "replace the recipe's strategy", choices=_STRATEGIES),
    TrainOption("--output-dir", "output_dir", "replace the recipe's output_dir (relative to the working directory)"),
    TrainOption(
        "--nproc-per-node",
        "processes",
        "train each task with N processes through axolotl's torchrun launcher (one per GPU, with the "
        "recipe's deepspeed or fsdp_config); without it, one plain process",
        type=int,
        metavar="N",
    ),
    TrainOption(
        "--accept-regression",
        "accept_regression",
        "take the task the recipe's guard refused (with --resume): its drops are recorded in the state's history",
        is_flag=True,
    ),
    TrainOption(
        "--baseline",
        "baseline",
        "then train the same tasks with this strategy into OUTPUT-BASELINE (OUTPUT: the first run's "
        "output directory) and print both runs side by side",
        choices=_STRATEGIES,
    ),
)


def run_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """``run_recipe`` keywords from parsed option values (keyed by each option's ``dest``)."""
    return {
        option.argument: bool(values.get(option.dest)) if option.is_flag else values.get(option.dest)
        for option in TRAIN_OPTIONS
    }
