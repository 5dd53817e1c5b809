"""The engine's building blocks: one run layout, one atomic write, one strategy definition, old states."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from mergeforget_plugin.cli import main
from mergeforget_plugin.core.atomic import write_atomic
from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.core.slao import MergeForgetConfig, allowed_values
from mergeforget_plugin.core.state import load_state

from .helpers import REPO

OLD_STATE = REPO / "tests" / "data" / "state-v0.1.0"


def test_a_state_written_by_version_0_1_0_still_loads_and_exports(tmp_path, capsys):
    state = load_state(OLD_STATE)
    assert state.finished_tasks == ["task1", "task2"] and state.config == MergeForgetConfig(lambda_schedule="inv")
    assert sorted(state.merged) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert main(["status", str(OLD_STATE)]) == 0
    assert "Finished tasks: 2; next task index: 3" in capsys.readouterr().out
    assert main(["export", str(OLD_STATE), str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_the_layout_names_every_path_of_a_run(tmp_path):
    layout = RunLayout(tmp_path / "run")
    assert RunLayout.of_state_dir(layout.state) == layout
    own = RunLayout.of_state_dir(tmp_path / "cl-state")  # a callback user's own name for the state
    assert own.state == tmp_path / "cl-state" and own.evaluations == tmp_path / "evaluations"
    assert layout.evaluation_row(3) == tmp_path / "run" / "evaluations" / "after-03.json"
    assert layout.task_dir(2, "plurals") == tmp_path / "run" / "tasks" / "task-02-plurals"
    assert layout.task_config(2, "plurals") == tmp_path / "run" / "configs" / "task-02-plurals.yaml"
    assert layout.task_log(2, "plurals").parent == layout.task_dir(2, "plurals")
    assert [p.name for p in (layout.report_json, layout.report_markdown, layout.accuracy_heatmap)] == [
        "report.json",
        "report.md",
        "accuracy_matrix.png",
    ]


def test_write_atomic_replaces_whole_files_with_ordinary_permissions(tmp_path):
    target = tmp_path / "deep" / "row.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["row.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    write_atomic(target, "old")

    def full_disk(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_the_strategy_is_defined_once_and_every_settings_block_follows_it():
    pytest.importorskip("pydantic")
    from mergeforget_plugin.integrations.axolotl.args import MergeForgetSettings, StrategySettings
    from mergeforget_plugin.integrations.axolotl.recipe import Recipe

    config_fields = {item.name: item for item in dataclasses.fields(MergeForgetConfig)}
    for settings in (StrategySettings, MergeForgetSettings):
        for name, item in config_fields.items():
            assert settings.model_fields[name].default == item.default
            assert settings.model_fields[name].description == item.metadata["help"]
    assert Recipe.model_fields["mergeforget"].annotation is StrategySettings
    assert StrategySettings.model_validate({"init": "standard"}).to_config() == MergeForgetConfig(init="standard")
    documented = " ".join(MergeForgetConfig.__doc__.split())  # the docstring wraps the help texts
    assert all(item.metadata["help"] in documented for item in config_fields.values())


def test_readme_strategy_table_lists_every_field_and_value():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| field | values (default first) | meaning |") :].split("\n\n")[0]
    rows = {match[0]: match[1] for match in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, flags=re.M)}
    assert set(rows) == {item.name for item in dataclasses.fields(MergeForgetConfig)}
    for name, values in allowed_values().items():
        assert re.findall(r"`(\w+)`", rows[name]) == list(values), name
