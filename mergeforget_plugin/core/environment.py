"""The environment a training process gets when no model hub is reachable: one definition, used by
the recipe runner for every ``axolotl train``, by the examples and by the tests."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Each value is a default: a variable the caller already set wins.
OFFLINE_ENVIRONMENT = {
    "AXOLOTL_DO_NOT_TRACK": "1",  # without it Axolotl's telemetry retries hang for minutes offline
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def offline_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with the offline settings filled in where unset, then ``extra``.

    >>> env = offline_environment({"HF_HUB_OFFLINE": "0"}, OMP_NUM_THREADS="1")
    >>> env["HF_HUB_OFFLINE"], env["AXOLOTL_DO_NOT_TRACK"], env["OMP_NUM_THREADS"]
    ('0', '1', '1')
    """
    environment = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENVIRONMENT.items():
        environment.setdefault(key, value)
    environment.update(extra)
    return environment
