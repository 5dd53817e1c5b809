"""The package's layers: lower modules never import higher ones, and the core imports no framework.

Fails when a change makes the math, the state or the engine depend on transformers, PEFT, TRL or
Axolotl at import time, makes the TRL path and the Axolotl integration import each other, or lets
anything but a command line import the recipe runner.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from .conftest import REPO

PACKAGE = REPO / "mergeforget_plugin"
# Every module, by layer: a module may import its own layer and the layers below it.
LAYERS = [
    {"errors", "core", "core.faults", "core.atomic", "core.environment"},
    {
        "core.slao",
        "core.layout",
        "evaluation.metrics",
        "evaluation.schedule",
        "evaluation.scoring",
        "evaluation",
        "evaluation.lm_eval_probe",
        "data",
        "data.models",
        "data.tiny_model",
        "data.standard_cl",
        "data.superni",
    },
    {"core.state", "evaluation.report"},
    {"core.export", "evaluation.trackers"},
    {"peft_bridge"},
    {"engine"},
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
    "core.state",
    "core.export",
    "evaluation",
    "evaluation.metrics",
    "evaluation.schedule",
    "evaluation.scoring",
    "evaluation.lm_eval_probe",
    "evaluation.report",
    "evaluation.trackers",
    "engine",
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


def test_the_trl_path_and_the_axolotl_integration_never_import_each_other():
    modules = package_modules()
    axolotl_side = {name for name in modules if name.startswith("integrations.axolotl")}
    assert "integrations.axolotl" not in str(imported_package_modules("integrations.trl.sequence", modules["integrations.trl.sequence"]))
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
