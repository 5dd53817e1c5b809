"""Axolotl integration: one line under ``plugins:`` makes ``axolotl train`` run one SLAO task.

Laid out like Axolotl's own ``integrations/<name>/``: ``plugin.py`` (the hooks), ``args.py`` (the
``mergeforget:`` settings and their cross-field rules, merged into Axolotl's config schema),
``recipe.py`` (a YAML list of tasks on top of one Axolotl config), ``runner.py`` (one
``axolotl train`` per task, resumable) and ``cli.py`` (``axolotl continual-train``).

```yaml
plugins:
  - mergeforget_plugin.MergeForgetPlugin
mergeforget:
  state_dir: ./outputs/cl/state   # shared by every task of the sequence
  task_name: sentiment            # this run's task
```

Importing this package does not import Axolotl; ``MergeForgetPlugin`` does, on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "MergeForgetPlugin":
        from .plugin import MergeForgetPlugin

        return MergeForgetPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MergeForgetPlugin"]
