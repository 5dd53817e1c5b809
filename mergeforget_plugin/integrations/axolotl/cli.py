"""``axolotl continual-train RECIPE``: the recipe runner as an Axolotl command (entry point
group ``axolotl.cli_commands``)."""

from __future__ import annotations

import click

from ...core.slao import allowed_values
from ...errors import MergeForgetError


@click.command(name="continual-train")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue after the last finished task of OUTPUT/state.")
@click.option("--dry-run", is_flag=True, help="Validate and write the per-task configs; train nothing.")
@click.option("--verbose", is_flag=True, help="Show Axolotl's output instead of logging it per task.")
@click.option("--strategy", type=click.Choice(allowed_values()["strategy"]), help="Replace the recipe's strategy.")
@click.option("--output-dir", help="Replace the recipe's output_dir (relative to the working directory).")
def continual_train(
    recipe: str, resume: bool, dry_run: bool, verbose: bool, strategy: str | None, output_dir: str | None
) -> None:
    """Train a task sequence with SLAO (one merged LoRA), one `axolotl train` per task."""
    from .runner import run_recipe

    try:
        run_recipe(
            recipe,
            resume=resume,
            dry_run=dry_run,
            stream_output=verbose,
            strategy=strategy,
            output_dir=output_dir,
        )
    except MergeForgetError as error:
        raise click.ClickException(str(error)) from None
