"""Axolotl's own validation of every per-task config, before task 1 trains.

``axolotl train`` validates its config only when a task's process starts, so without this a
setting Axolotl rejects (a negative ``micro_batch_size``, say) would surface minutes into the
sequence, or after earlier tasks had trained. The runner calls :func:`axolotl_problems` once for
all task configs, in a child process with the training children's environment: importing Axolotl
registers plugins, reads its telemetry settings and probes the GPU, none of which belong in the
runner's own process.

``python -m mergeforget_plugin.integrations.axolotl.preflight CONFIG...`` prints one JSON object,
``{config path: [problem, ...]}``, each problem ``"field: message"`` as Axolotl words it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml


def _validate(path: str) -> list[str]:
    """What ``axolotl train`` would reject in the config at ``path``: the checks of its ``load_cfg``
    (plugins registered, the machine's capabilities) up to, not including, loading the model."""
    from axolotl.cli.config import gpu_capabilities, prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault
    from pydantic import ValidationError

    cfg = DictDefault(yaml.safe_load(Path(path).read_text()))
    cfg.axolotl_config_path = path
    prepare_plugins(cfg)
    capabilities, env_capabilities = gpu_capabilities()
    try:
        validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message}" if field else message)
        return problems
    except (ValueError, TypeError) as error:
        return [str(error)]
    return []


def axolotl_problems(config_paths: Sequence[Path], environment: Mapping[str, str]) -> dict[str, list[str]]:
    """Axolotl's objections to each config, ``{path: [problem, ...]}`` (empty lists when it accepts them)."""
    command = [sys.executable, "-m", __name__, *map(str, config_paths)]
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(environment), check=False)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"Axolotl's config validation could not run ({' '.join(command)}):\n{tail}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(paths: Sequence[str]) -> None:
    # Axolotl logs while it validates; only the JSON line goes to stdout.
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        problems = {path: _validate(path) for path in paths}
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
    print(json.dumps(problems))


if __name__ == "__main__":
    main(sys.argv[1:])
