"""Stand-in for wandb on the offline GPU kit: Axolotl 0.19 imports wandb at module level
(axolotl/utils/callbacks/__init__.py) but uses it only when a recipe sets wandb_project."""

__version__ = "0.0+kit-shim"
run = None
