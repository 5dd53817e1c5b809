"""The package's layers: lower modules never import higher ones, and the core imports no framework.

Fails when a change makes the math, the state or the engine depend on transformers, PEFT, TRL or
Axolotl at import time, makes the TRL path and the Axolotl integration import each other, or lets
anything but a command line import the recipe runner; and when a test file imports a test module or
conftest.py (shared helpers live in tests/helpers.py and tests/axolotl_helpers.py, fixtures in conftest).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from .helpers import REPO

PACKAGE = REPO / "mergeforget_plugin"
THIS_FILE = Path(__file__).resolve()
# Every module, by layer: a module may import its own layer and the layers below it.
LAYERS = [
    {"errors", "core", "core.faults", "core.atomic", "core.environment"},
    {
        "core.slao",
        "core.layout",
        "core.replay",
        "evaluation.metrics",
        "evaluation.guard",
        "evaluation.schedule",
        "evaluation.scoring",
        "evaluation.shapes",
        "evaluation",
        "evaluation.lm_eval_probe",
        "data",
        "data.models",
        "data.tiny_model",
        "data.standard_cl",
        "data.superni",
    },
    {"core.state", "evaluation.report", "settings"},
    {"preflight"},
    {"core.export", "evaluation.trackers"},
    {"peft_bridge", "evaluation.model_card"},
    {"engine"},
    {"driver"},
    {"integrations", "integrations.callback"},
    {
        "integrations.trl",
        "integrations.trl.sequence",
        "integrations.axolotl",
        "integrations.axolotl.args",
        "integrations.axolotl.recipe",
        "integrations.axolotl.plugin",
        "integrations.axolotl.runner",
        "integrations.axolotl.preflight",
        "integrations.axolotl.failure",
        "integrations.axolotl.options",
        "integrations.axolotl.held_out",
    },
    {"cli", "integrations.axolotl.cli"},
]
LAYER_OF = {module: number for number, modules in enumerate(LAYERS) for module in modules}
FRAMEWORKS = ("transformers", "peft", "trl", "axolotl")
CORE = (
    "errors",
    "core",
    "core.atomic",
    "core.environment",
    "core.faults",
    "core.slao",
    "core.layout",
    "core.replay",
    "core.state",
    "core.export",
    "evaluation",
    "evaluation.metrics",
    "evaluation.guard",
    "evaluation.schedule",
    "evaluation.scoring",
    "evaluation.shapes",
    "evaluation.lm_eval_probe",
    "evaluation.report",
    "evaluation.trackers",
    "evaluation.model_card",
    "settings",
    "preflight",
    "engine",
    "driver",
)


def package_modules() -> dict[str, ast.Module]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def imported_package_modules(name: str, tree: ast.Module) -> set[str]:
    """The package modules ``name`` imports anywhere (module level or inside functions)."""
    package = name.split(".") if (PACKAGE / name.replace(".", "/")).is_dir() else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            candidates = [target] if node.module else [".".join([*base, alias.name]) for alias in node.names]
            found.update(candidate for candidate in candidates if candidate)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mergeforget_plugin."):
            found.add(node.module.removeprefix("mergeforget_plugin."))
    return found & set(LAYER_OF)


def test_every_module_has_a_layer():
    assert set(package_modules()) - {""} == set(LAYER_OF)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} (layer {LAYER_OF[name]}) imports {target} (layer {LAYER_OF[target]})"
        for name, tree in package_modules().items()
        if name
        for target in imported_package_modules(name, tree)
        if LAYER_OF[target] > LAYER_OF[name]
    ]
    assert upward == []


def test_core_imports_nothing_above_it():
    # core/ is the math, the state, the layout and the adapter files: it must stay usable (and
    # testable) without the evaluation, the engine or an integration, so it imports only itself
    # and the errors.
    modules = package_modules()
    outside = {
        f"{name} imports {target}"
        for name, tree in modules.items()
        if name == "core" or name.startswith("core.")
        for target in imported_package_modules(name, tree)
        if not (target == "core" or target.startswith("core.") or target == "errors")
    }
    assert outside == set()


def test_the_trl_path_and_the_axolotl_integration_never_import_each_other():
    modules = package_modules()
    axolotl_side = {name for name in modules if name.startswith("integrations.axolotl")}
    trl_imports = imported_package_modules("integrations.trl.sequence", modules["integrations.trl.sequence"])
    assert "integrations.axolotl" not in str(trl_imports)
    for name in axolotl_side:
        assert not any(m.startswith("integrations.trl") for m in imported_package_modules(name, modules[name])), name
        assert not any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(part == "trl" for part in ((getattr(node, "module", None) or "").split(".")))
            for node in ast.walk(modules[name])
        ), f"{name} imports TRL"


def test_only_a_command_line_imports_the_runner():
    importers = {
        name
        for name, tree in package_modules().items()
        if "integrations.axolotl.runner" in imported_package_modules(name, tree)
    }
    assert importers == {"cli", "integrations.axolotl.cli"}


def test_the_core_imports_no_training_framework():
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(CORE)!r}: importlib.import_module('mergeforget_plugin.' + name)\n"
        f"print(json.dumps(sorted(m for m in {list(FRAMEWORKS)!r} if m in sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []


def is_test_module(name: str) -> bool:
    return name == "conftest" or name.startswith("test_")


def imports_of_test_modules(tree: ast.AST, *, in_strings: bool = True) -> list[str]:
    """Every import in ``tree`` (a file of tests/) of conftest or of a ``test_*`` module, with ``from``
    or plain ``import``: relative (a module beside it, or a name of ``.``), through the ``tests``
    package, or top-level (as pytest's rootdir on ``sys.path`` would allow). With ``in_strings``,
    strings that parse as Python are searched too: the scripts tests run in a subprocess."""
    found = []
    for node in ast.walk(tree):
        if in_strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                found += imports_of_test_modules(ast.parse(textwrap.dedent(node.value)))
            except SyntaxError:
                pass
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            base = ["tests", *module] if node.level > 0 else module
            targets = [base, *([*base, alias.name] for alias in node.names)]  # `from PACKAGE import MODULE`
        else:
            continue
        if any(
            is_test_module(parts[0]) or (parts[0] == "tests" and len(parts) > 1 and is_test_module(parts[1]))
            for parts in targets
            if parts
        ):
            found.append(ast.unparse(node))
    return found


def test_no_test_file_imports_a_test_module_or_conftest():
    # The forms to refuse, spelt through these names so that a grep for such imports finds none here.
    conftest, test_module = "conftest", "test_recipes"
    flagged = [
        f"from .{conftest} import REPO",
        f"from . import {conftest}",
        f"from .{test_module} import write",
        f"from . import helpers, {test_module}",
        f"from tests.{test_module} import write",
        f"from tests import {conftest}",
        f"import tests.{conftest}",
        f"import tests.{test_module} as recipes",
        f"import {conftest}",
        f"from {test_module} import write",
        f'SCRIPT = """\nimport sys\nfrom tests.{test_module} import write\n"""',  # a subprocess's script
    ]
    allowed = [
        "from .helpers import REPO, demo_tasks",
        "from . import helpers",
        "from tests.axolotl_helpers import tiny_recipe",
        "import tests.helpers",
        "from hypothesis import strategies",
        "from mergeforget_plugin.core.state import load_state",
        "import pytest",
        'DOC = "a test_ module is imported by nothing"',
    ]
    assert [len(imports_of_test_modules(ast.parse(line))) for line in flagged] == [1] * len(flagged)
    assert [imports_of_test_modules(ast.parse(line)) for line in allowed] == [[]] * len(allowed)

    files = sorted((REPO / "tests").rglob("*.py"))
    assert REPO / "tests" / "conftest.py" in files and REPO / "tests" / "helpers.py" in files
    imports = [
        f"{path.relative_to(REPO)}: {line}"
        for path in files
        # This file's strings are the examples above; its own imports are checked.
        for line in imports_of_test_modules(ast.parse(path.read_text(), str(path)), in_strings=path != THIS_FILE)
    ]
    assert imports == [], "import shared helpers from tests/helpers.py or tests/axolotl_helpers.py instead"
