"""``axolotl continual-train RECIPE``: the recipe runner as an Axolotl command (entry point
group ``axolotl.cli_commands``), with the same options as ``mergeforget train`` (see ``options.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ...errors import MergeForgetError
from .options import TRAIN_OPTIONS, run_arguments


def _with_train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(TRAIN_OPTIONS):  # click lists options in the order they are applied, last first
        kind = click.Choice(option.choices) if option.choices else option.type
        help_text = option.help[:1].upper() + option.help[1:] + "."
        if option.is_flag:
            command = click.option(option.flag, is_flag=True, help=help_text)(command)
        else:
            command = click.option(option.flag, type=kind, metavar=option.metavar, help=help_text)(command)
    return command


@click.command(name="continual-train")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@_with_train_options
def continual_train(recipe: str, **options: Any) -> None:
    """Train a task sequence with SLAO (one merged LoRA), one `axolotl train` per task."""
    from .runner import run_recipe

    try:
        run_recipe(recipe, **run_arguments(options))
    except MergeForgetError as error:
        raise click.ClickException(str(error)) from None
