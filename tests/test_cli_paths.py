"""The paths the `mergeforget` commands take: a run folder or its state folder, never a missing path;
`compare` refuses runs of other tasks or metrics; `train` names the extra it needs.

Runs are built with the package's own functions (a made-up state saved with ``save_state``, rows
written with ``save_row``), so nothing trains."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mergeforget_plugin.cli import main
from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.core.state import save_state
from mergeforget_plugin.errors import StateError
from mergeforget_plugin.evaluation.report import evaluation_record, save_row

from .helpers import make_state

TASKS = ["task1", "task2"]


def finished_state(tasks=TASKS):
    """helpers.make_state with the history records the engine writes (what `status` prints)."""
    state = make_state(len(tasks))
    history = [
        {
            "task": task,
            "task_index": index,
            "merge_coefficient": 1.0 / index,
            "global_step": 3,
            "last_train_loss": 0.5,
            "merged": {"b_norm_mean": 0.25},
            "seconds": 1.5,
        }
        for index, task in enumerate(tasks, start=1)
    ]
    return replace(state, finished_tasks=list(tasks), history=history)


def make_run(root, tasks=TASKS, metric="accuracy", state=True):
    """A run folder as a sequence leaves it: state/ with its snapshots and one evaluation row per task."""
    layout = RunLayout(root)
    if state:
        save_state(finished_state(tasks), layout.state)
    primary = dict.fromkeys(tasks, metric)
    for index, after in enumerate([None, *tasks]):
        scores = {task: {metric: 0.5 + 0.1 * index - 0.05 * position} for position, task in enumerate(tasks)}
        save_row(layout, evaluation_record(index, after, scores, primary))
    return root


def listing(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_a_run_folder_and_its_state_folder_give_the_same_layout(tmp_path):
    run = make_run(tmp_path / "run")
    assert RunLayout.of_run_or_state_dir(run) == RunLayout(run)
    assert RunLayout.of_run_or_state_dir(run / "state") == RunLayout(run)
    # A state folder of another name (a callback's state_dir) is known by its snapshots.
    save_state(finished_state(), tmp_path / "ckpt" / "slao")
    assert RunLayout.of_run_or_state_dir(tmp_path / "ckpt" / "slao") == RunLayout(
        tmp_path / "ckpt", tmp_path / "ckpt" / "slao"
    )
    # An empty state/ (the first task still training) and a fresh, empty run folder.
    (tmp_path / "fresh" / "state").mkdir(parents=True)
    assert RunLayout.of_run_or_state_dir(tmp_path / "fresh" / "state") == RunLayout(tmp_path / "fresh")
    assert RunLayout.of_run_or_state_dir(tmp_path / "fresh") == RunLayout(tmp_path / "fresh")
    (tmp_path / "empty").mkdir()
    assert RunLayout.of_run_or_state_dir(tmp_path / "empty") == RunLayout(tmp_path / "empty")


def test_a_missing_path_a_file_or_a_foreign_folder_is_refused_naming_it(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(StateError, match=r"exist: expected a run folder .* or its state folder"):
        RunLayout.of_run_or_state_dir(missing)
    assert not (tmp_path / "does").exists()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StateError, match="notes.txt is a file, not a folder"):
        RunLayout.of_run_or_state_dir(tmp_path / "notes.txt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"")
    with pytest.raises(StateError, match="photos is neither a run folder nor a state folder: expected"):
        RunLayout.of_run_or_state_dir(tmp_path / "photos")
    # A part of a run is refused with the folder to give instead.
    run = make_run(tmp_path / "run")
    (snapshot,) = [p for p in (run / "state").iterdir() if p.name == "task-0002"]
    with pytest.raises(StateError, match=f"one snapshot of a state: give {run / 'state'} instead"):
        RunLayout.of_run_or_state_dir(snapshot)
    with pytest.raises(StateError, match=f"a run's evaluations: give {run} instead"):
        RunLayout.of_run_or_state_dir(run / "evaluations")


@pytest.mark.parametrize(
    "command",
    [
        "status {missing}",
        "report {missing}",
        "export {missing} {tmp}/adapter",
        "compare {missing}",
        "compare {tmp}/run {missing}",
    ],
    ids=["status", "report", "export", "compare", "compare-second"],
)
def test_every_command_refuses_a_missing_path_and_creates_nothing(tmp_path, capsys, command):
    make_run(tmp_path / "run")
    before = listing(tmp_path)
    missing = tmp_path / "missing" / "run"
    assert main(command.format(missing=missing, tmp=tmp_path).split()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergeforget: error: {missing} does not exist: expected a run folder")
    assert listing(tmp_path) == before  # no missing/, no adapter/, no report, no comparison.png


def test_status_of_a_run_folder_equals_status_of_its_state_folder(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["status", str(run)]) == 0
    of_run = capsys.readouterr().out
    assert main(["status", str(run / "state")]) == 0
    assert capsys.readouterr().out == of_run
    assert f"State: {run / 'state'}\n" in of_run and "Finished tasks: 2; next task index: 3" in of_run
    assert [line.split()[1] for line in of_run.splitlines() if line[:3].strip() in ("1", "2")] == TASKS


def test_status_of_a_fresh_run_folder_names_its_state_folder(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    (fresh / "configs").mkdir(parents=True)  # a recipe run that has not finished task 1
    assert main(["status", str(fresh)]) == 0
    assert (
        capsys.readouterr().out
        == f"{fresh / 'state'}: no finished task yet (the state folder of the run in {fresh}).\n"
    )
    assert listing(fresh) == ["configs"]


def test_report_of_a_state_folder_writes_into_the_run_folder(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    state_files = listing(run / "state")
    assert main(["report", str(run / "state")]) == 0
    assert f"Wrote {run / 'report.json'}" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["tasks"] == TASKS and report["finished_tasks"] == TASKS and len(report["accuracy_matrix"]) == 2
    assert listing(run / "state") == state_files  # nothing written into the state folder


def test_export_takes_a_run_folder_or_its_state_folder(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["export", str(run), str(tmp_path / "from-run")]) == 0
    assert main(["export", str(run / "state"), str(tmp_path / "from-state")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Wrote the merged adapter after 2 task(s)") == 2
    weights = [(tmp_path / name / "adapter_model.safetensors").read_bytes() for name in ("from-run", "from-state")]
    assert weights[0] == weights[1] and len(weights[0]) > 1000


def test_export_of_a_run_with_no_finished_task_names_its_state_folder(tmp_path, capsys):
    (tmp_path / "fresh").mkdir()
    assert main(["export", str(tmp_path / "fresh"), str(tmp_path / "adapter")]) == 2
    err = capsys.readouterr().err
    state = tmp_path / "fresh" / "state"
    assert err == f"mergeforget: error: {state} holds no finished task, so there is no adapter to export.\n"
    assert not (tmp_path / "adapter").exists()


def test_compare_takes_run_and_state_folders_of_the_same_tasks(tmp_path, capsys):
    first, second = make_run(tmp_path / "first"), make_run(tmp_path / "second")
    assert main(["compare", str(first / "state"), str(second)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| | first (slao) | second (slao) |")
    assert f"Forgetting curves (one panel per task): {first / 'comparison.png'}" in printed
    assert (first / "comparison.png").read_bytes()[:4] == b"\x89PNG" and not (
        first / "state" / "comparison.png"
    ).exists()


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (
            dict(tasks=["task1", "task3"]),
            "evaluate different tasks (the second lacks ['task2']; the second adds ['task3'])",
        ),
        (dict(tasks=["task2", "task1"]), "evaluate different tasks (the same tasks in another order)"),
        (dict(metric="rouge_l"), "score tasks with different metrics (task1: accuracy (fraction) vs rouge_l ("),
    ],
    ids=["tasks", "order", "metric"],
)
def test_compare_refuses_runs_of_other_tasks_or_metrics(tmp_path, capsys, other, expected):
    first, second = make_run(tmp_path / "first"), make_run(tmp_path / "second", **other)
    before = listing(tmp_path)
    assert main(["compare", str(first), str(second)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mergeforget: error: compare puts runs of the same tasks")
    assert f"{first} and {second} {expected}" in captured.err
    assert "Compare only runs of the same tasks and metrics" in captured.err
    assert listing(tmp_path) == before  # no comparison.png


def test_train_without_axolotl_names_the_extra_before_reading_the_recipe(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "axolotl" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "recipe.yaml", "--output-dir", "out"]) == 2  # the recipe does not exist either
    err = capsys.readouterr().err
    assert err.startswith("mergeforget: error: `mergeforget train` runs Axolotl, which is not installed")
    assert 'pip install "mergeforget-plugin[axolotl]"' in err
    assert listing(tmp_path) == []


def test_help_says_a_run_folder_or_its_state_folder():
    import argparse

    from mergeforget_plugin.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, dest in (
        ("status", "state_dir"),
        ("report", "output_dir"),
        ("export", "state_dir"),
        ("compare", "output_dirs"),
    ):
        (argument,) = [a for a in commands.choices[name]._actions if a.dest == dest]
        assert "a run folder or its state folder" in argument.help, name
