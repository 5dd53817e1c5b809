"""The Axolotl path, with the real `axolotl train`: plugin, recipe runner, resume after a kill."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

pytest.importorskip("axolotl", reason="the Axolotl path needs the [axolotl] extra")

from mergeforget_plugin.core.environment import offline_environment  # noqa: E402
from mergeforget_plugin.core.state import load_state, snapshot_dirs  # noqa: E402

from .axolotl_helpers import mergeforget, tiny_recipe  # noqa: E402
from .helpers import DEMO_TASKS, REPO, demo_rows, peft_model, sft_config, weather  # noqa: E402

HEADLINES = REPO / "recipes" / "data" / "generative" / "headline.test.jsonl"


def logits_with_lora(base_model, weights, scaling, input_ids):
    """The logits of ``base_model`` with the LoRA ``weights`` added by hand, outside PEFT: each
    adapted module's output gets ``scaling * B A x``."""

    def add_lora(pair):
        return lambda module, inputs, output: (
            output + scaling * (inputs[0].to(pair.a.dtype) @ pair.a.T @ pair.b.T).to(output.dtype)
        )

    hooks = [base_model.get_submodule(name).register_forward_hook(add_lora(pair)) for name, pair in weights.items()]
    try:
        with torch.no_grad():
            return base_model(input_ids=input_ids).logits
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora-nf4"])
def test_recipe_runs_three_tasks_through_axolotl_train(tmp_path, tiny_model_dir, quantized):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from mergeforget_plugin.peft_bridge import read_lora

    # The LoRA run also scores capitals with held-out loss and ROUGE-L beside its labels, and a
    # probe that no task trains on, inside the Axolotl processes.
    generative = (
        {}
        if quantized
        else {
            "task_eval": {"capitals": {"metric": "choice", "metrics": ["loss", "rouge_l"], "max_new_tokens": 4}},
            "extra": {
                "probes": [{"name": "headline_probe", "path": str(HEADLINES), "metric": "loss", "max_examples": 6}]
            },
        }
    )
    recipe = tiny_recipe(tmp_path, tiny_model_dir, quantized=quantized, tensorboard=not quantized, **generative)
    completed = mergeforget("train", str(recipe), cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    out = tmp_path / "out"

    state = load_state(out / "state")
    # Axolotl calls post_train twice per run; exactly one merge per task must reach the state.
    assert state.finished_tasks == list(DEMO_TASKS) == [record["task"] for record in state.history]
    assert [record["task_index"] for record in state.history] == [1, 2, 3]
    assert [p.name for p in snapshot_dirs(out / "state")] == ["task-0002", "task-0003"]

    task_dirs = [out / "tasks" / f"task-0{i}-{name}" for i, name in enumerate(DEMO_TASKS, start=1)]
    # The training processes' progress, which the runner's step bar reads, and a console with the
    # runner's own lines only (library output goes to each task's train.log).
    assert [json.loads((d / "progress.json").read_text()) for d in task_dirs] == [{"step": 3, "max_steps": 3}] * 3
    runner_lines = ("[task ", "All 3 task(s) finished", "Report: ")
    assert all(line.startswith(runner_lines) for line in completed.stdout.splitlines())
    assert "Failed to load" not in completed.stdout + completed.stderr
    if not quantized:  # use_tensorboard: the report after every task, read back with TensorBoard's reader
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "runs" / "continual"))
        events.Reload()
        report = json.loads((out / "report.json").read_text())
        logged = [(e.step, e.value) for e in events.Scalars("continual/average_accuracy")]
        assert [step for step, _ in logged] == [1, 2, 3]
        assert logged[-1][1] == pytest.approx(report["metrics"]["average_accuracy"], abs=1e-6)
        assert [e.step for e in events.Scalars("continual/forgetting/antonyms")] == [2, 3]
        assert [e.step for e in events.Scalars("continual/probe_change/headline_probe")] == [3]
        assert [e.step for e in events.Scalars("continual/loss/capitals")] == [2, 3]  # `needed`: from task 2 on
        assert report["metric_matrices"]["rouge_l"]["tasks"] == ["capitals"]
        probe = report["probes"]["headline_probe"]
        assert probe["metric"] == "loss" and probe["change"] == pytest.approx(probe["final"] - probe["zero_shot"])
        assert "## General ability kept (probes)" in (out / "report.md").read_text()
    sizes = [(d / "adapter_model.safetensors").stat().st_size for d in task_dirs]
    assert sizes == [sizes[0]] * 3 == [(out / "adapter" / "adapter_model.safetensors").stat().st_size] * 3
    # What Axolotl saved after the last task is the merged (deployed) LoRA, bit for bit.
    from safetensors.torch import load_file

    saved = load_file(str(task_dirs[-1] / "adapter_model.safetensors"))
    exported = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved.keys() == exported.keys() and all(
        torch.equal(saved[k].to(exported[k].dtype), exported[k]) for k in saved
    )

    kwargs = {}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    # Accuracy on every task after every task, scored inside the Axolotl processes, and the report.
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in (out / "evaluations").iterdir()) == [f"after-0{i}.json" for i in range(4)]
    assert report["tasks"] == list(DEMO_TASKS) == report["rows_after"] and set(report["zero_shot"]) == set(DEMO_TASKS)
    assert (out / "accuracy_matrix.png").stat().st_size > 5000 and "| capitals |" in (out / "report.md").read_text()
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs), out / "adapter"
    )
    input_ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids).logits
    assert torch.isfinite(logits).all()
    # The exported adapter is the state's merged LoRA: PEFT loads exactly its factors, and the model
    # then computes what the base model does with them added (scaling lora_alpha / r = 8 / 4), which
    # is not what the base model alone computes.
    loaded = read_lora(reloaded)
    assert loaded.keys() == state.merged.keys()
    for name, pair in state.merged.items():
        assert torch.equal(loaded[name].a, pair.a.to(loaded[name].a.dtype)), name
        assert torch.equal(loaded[name].b, pair.b.to(loaded[name].b.dtype)), name
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs)
    with torch.no_grad():
        base_logits = base(input_ids=input_ids).logits
    expected = logits_with_lora(base, state.merged, 8 / 4, input_ids)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-5), float((logits - expected).abs().max())
    assert float((logits - base_logits).abs().max()) > 1e-4
    print(
        f"\n{'qlora' if quantized else 'lora'}: seconds per task {[round(r['seconds'], 1) for r in state.history]}, "
        f"state bytes {sum(f.stat().st_size for f in (out / 'state').rglob('*') if f.is_file())}"
    )


@pytest.mark.slow
@pytest.mark.xdist_group("axolotl_reference_run")
def test_kill_during_a_task_loses_nothing_and_resume_finishes(tmp_path, tiny_model_dir, axolotl_reference_run):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, long_task="plurals")
    env = offline_environment()
    runner = subprocess.Popen(
        [sys.executable, "-m", "mergeforget_plugin.cli", "train", str(recipe)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "out"
    second_log = out / "tasks" / "task-02-plurals" / "train.log"
    deadline = time.time() + 900
    # Wait until task 1 is finished and task 2 is training (its progress bar has started).
    while time.time() < deadline and not (second_log.is_file() and "it/s]" in second_log.read_text(errors="replace")):
        assert runner.poll() is None, "the runner ended before it could be killed"
        time.sleep(0.5)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    # The training child dies with its parent (PDEATHSIG): no orphan finishes task 2 behind our back.
    while (
        time.time() < deadline
        and subprocess.run(["pgrep", "-f", "task-02-plurals.yaml"], capture_output=True).returncode == 0
    ):
        time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", "task-02-plurals.yaml"], capture_output=True).returncode == 1

    killed_state = load_state(out / "state")
    assert killed_state.finished_tasks == ["antonyms"]
    first_task_record = killed_state.history[0]
    first_log_mtime = (out / "tasks" / "task-01-antonyms" / "train.log").stat().st_mtime

    refused = mergeforget("train", str(recipe), cwd=tmp_path)
    assert refused.returncode == 2 and "Pass --resume" in refused.stderr

    recipe = tiny_recipe(tmp_path, tiny_model_dir)  # a shorter budget for the rest is allowed
    resumed = mergeforget("train", str(recipe), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    final = load_state(out / "state")
    assert final.finished_tasks == list(DEMO_TASKS)
    assert final.history[0] == first_task_record  # task 1 was not retrained
    assert (out / "tasks" / "task-01-antonyms" / "train.log").stat().st_mtime == first_log_mtime
    assert "[task 1/3]" not in resumed.stdout and "[task 2/3] plurals: done" in resumed.stdout
    # Task 2 restarted from its start: the sequence ends as the uninterrupted run of the same recipe did.
    reference = load_state(axolotl_reference_run / "out" / "state")
    assert reference.merged.keys() == final.merged.keys() and reference.merged
    assert all(
        torch.equal(final.merged[n].a, p.a) and torch.equal(final.merged[n].b, p.b) for n, p in reference.merged.items()
    )


def axolotl_config(**changes):
    """A complete Axolotl config with the plugin, as `axolotl train` validates it."""
    from axolotl.utils.dict import DictDefault

    config = {
        "base_model": "/models/tiny",
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "datasets": [{"path": "train.jsonl", "type": "alpaca"}],
        "micro_batch_size": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "sequence_len": 64,
        "output_dir": "out",
        "plugins": ["mergeforget_plugin.MergeForgetPlugin"],
        "mergeforget": {"state_dir": "s", "task_name": "t"},
    }
    return DictDefault({**config, **changes})


def test_plugin_settings_are_checked_by_axolotls_own_config_validation():
    from axolotl.cli.config import prepare_plugins
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from pydantic import ValidationError

    prepare_plugins(axolotl_config())
    assert (
        "mergeforget_plugin.integrations.axolotl.args.MergeForgetArgs" in PluginManager.get_instance().get_input_args()
    )
    with pytest.raises(ValidationError, match="has no `mergeforget:` block"):
        validate_config(axolotl_config(mergeforget=None))
    with pytest.raises(ValidationError, match=r"mergeforget.task_name\s+Field required"):
        validate_config(axolotl_config(mergeforget={"state_dir": "s"}))
    with pytest.raises(ValidationError, match="needs `adapter: lora` or `adapter: qlora`"):
        validate_config(axolotl_config(adapter=None))
    with pytest.raises(ValidationError, match="peft_use_dora: true is not supported"):
        validate_config(axolotl_config(peft_use_dora=True))
    with pytest.raises(ValidationError, match=r"mergeforget.lambda_schedule\s+Input should be 'inv_sqrt', 'inv' or"):
        validate_config(axolotl_config(mergeforget={"state_dir": "s", "task_name": "t", "lambda_schedule": "x"}))
    with pytest.raises(ValidationError, match="strategy='seq' .* init would have no effect"):
        validate_config(
            axolotl_config(mergeforget={"state_dir": "s", "task_name": "t", "strategy": "seq", "init": "standard"})
        )
    validated = validate_config(
        axolotl_config(
            adapter="qlora", load_in_4bit=True, mergeforget={"state_dir": "s", "task_name": "t", "b_init": "merge"}
        )
    )
    assert validated["mergeforget"]["b_init"] == "merge" and validated["mergeforget"]["lambda_schedule"] == "inv_sqrt"


def test_plugin_merges_once_although_post_train_fires_twice(tmp_path, tiny_peft_model):
    from axolotl.utils.dict import DictDefault

    from mergeforget_plugin.integrations.axolotl.plugin import MergeForgetPlugin

    cfg = DictDefault({"adapter": "lora", "mergeforget": {"state_dir": str(tmp_path / "state"), "task_name": "t1"}})
    plugin = MergeForgetPlugin()
    plugin.register(cfg)
    plugin.post_model_load(cfg, tiny_peft_model)
    with torch.no_grad():
        for name, param in tiny_peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01)  # stands in for training
    plugin.post_train(cfg, tiny_peft_model)
    plugin.post_train(cfg, tiny_peft_model)
    state = load_state(tmp_path / "state")
    assert state.finished_tasks == ["t1"] and len(state.history) == 1
    assert [p.name for p in snapshot_dirs(tmp_path / "state")] == ["task-0001"]


@pytest.mark.slow
def test_axolotl_continual_train_command_is_registered(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    env = offline_environment()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "axolotl.cli.main",
            "continual-train",
            str(recipe),
            "--dry-run",
            "--strategy",
            "seq",
            "--output-dir",
            "seqlora",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "is valid: 3 task(s)" in completed.stdout
    config = yaml.safe_load((tmp_path / "seqlora" / "configs" / "task-03-capitals.yaml").read_text())
    assert config["mergeforget"]["strategy"] == "seq" and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("axolotl_reference_run")
def test_train_with_a_baseline_trains_both_and_prints_them_side_by_side(tmp_path, axolotl_reference_run):
    # A finished SLAO run, resumed with a baseline: nothing of it retrains, the baseline trains.
    shutil.copytree(axolotl_reference_run, tmp_path, dirs_exist_ok=True)
    before = load_state(tmp_path / "out" / "state")
    completed = mergeforget("train", "recipe.yaml", "--resume", "--baseline", "seq", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    slao, seq = load_state(tmp_path / "out" / "state"), load_state(tmp_path / "out-seq" / "state")
    assert slao.config.strategy == "slao" and seq.config.strategy == "seq"
    assert slao.finished_tasks == seq.finished_tasks == list(DEMO_TASKS)
    assert slao.history == before.history  # the SLAO run was not trained again
    assert "[task 1/3] antonyms: done" in completed.stdout  # once, for the baseline
    assert completed.stdout.count("[task 1/3] antonyms: done") == 1
    assert "| | out (slao) | out-seq (seq) |" in completed.stdout
    assert f"| {DEMO_TASKS[0]}: after its training → after the last task |" in completed.stdout


@pytest.mark.slow
def test_shipped_axolotl_example_runs_with_plain_axolotl_train(tmp_path):
    """The README's Axolotl config, unchanged, run from a copy of the repository layout."""

    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    (tmp_path / "examples" / "axolotl").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "axolotl" / "smollm2-slao.yaml", tmp_path / "examples" / "axolotl")
    env = offline_environment()
    completed = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.main", "train", "examples/axolotl/smollm2-slao.yaml", "--max-steps=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    out = tmp_path / "outputs" / "axolotl-example"
    state = load_state(out / "state")
    assert state.finished_tasks == ["antonyms"] and state.history[0]["global_step"] == 2
    assert (out / "antonyms" / "adapter_model.safetensors").is_file()


def run_tree(root):
    """A run's files, relative to its root; inside tasks/ only the task folders (trainers write their own files)."""
    skipped = ("configs", "prepared", ".mergeforget.lock")
    paths = set()
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in skipped or (relative.parts[0] == "tasks" and len(relative.parts) > 2):
            continue
        if relative.parts[0] == "tasks" or path.is_file():
            paths.add(str(relative))
    return paths


@pytest.mark.slow
@pytest.mark.xdist_group("axolotl_reference_run")
def test_trl_and_axolotl_runs_of_the_same_tasks_leave_the_same_layout(
    tmp_path, tiny_model_dir, axolotl_reference_run, capsys
):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from mergeforget_plugin import Task, train_sequence
    from mergeforget_plugin.cli import main

    shutil.copytree(axolotl_reference_run / "out", tmp_path / "out")  # `report` below rewrites files
    tasks = [
        Task(name, Dataset.from_list(demo_rows(name, "train")), Dataset.from_list(demo_rows(name, "test")))
        for name in DEMO_TASKS
    ]
    train_sequence(
        peft_model(tiny_model_dir),
        tasks,
        args=sft_config(tmp_path / "trl", max_steps=3),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    axolotl_tree, trl_tree = run_tree(tmp_path / "out"), run_tree(tmp_path / "trl")
    assert axolotl_tree == trl_tree
    assert {
        "adapter/adapter_model.safetensors",
        "evaluations/after-03.json",
        "report.md",
        "tasks/task-02-plurals",
    } <= trl_tree
    for root in (tmp_path / "out", tmp_path / "trl"):
        assert main(["status", str(root / "state")]) == 0
        assert main(["report", str(root)]) == 0
        assert main(["export", str(root / "state"), str(tmp_path / f"export-{root.name}")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Finished tasks: 3; next task index: 4") == 2 and printed.count("| capitals |") >= 2


@pytest.mark.slow
def test_recipe_replays_earlier_rows_and_its_guard_stops_a_task_that_overwrites_an_earlier_one(
    tmp_path, learning_model_dir
):
    from safetensors.torch import load_file

    from mergeforget_plugin import ReplayConfig
    from mergeforget_plugin.engine import replay_for

    # Task 2 trains the same two prompts with the answers swapped: it overwrites task 1.
    recipe_path = tiny_recipe(tmp_path, learning_model_dir, max_steps=12)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["axolotl"].update(learning_rate=1e-2, micro_batch_size=4)
    replay = {"buffer_rows": 8, "count": 4, "seed": 1}
    recipe.update(replay=replay, guard={"max_forgetting": 10})
    template = recipe["tasks"][0]
    recipe["tasks"] = []
    for name, swapped in (("learn", False), ("unlearn", True)):
        rows = weather(swapped)
        for split, part in (("train", rows), ("test", rows[:2])):
            (tmp_path / f"{name}.{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
        recipe["tasks"].append(
            {
                "name": name,
                "datasets": [{**template["datasets"][0], "path": str(tmp_path / f"{name}.train.jsonl")}],
                "test_datasets": [{**template["test_datasets"][0], "path": str(tmp_path / f"{name}.test.jsonl")}],
            }
        )
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"

    stopped = mergeforget("train", str(recipe_path), cwd=tmp_path)
    assert stopped.returncode != 0
    message = stopped.stdout + stopped.stderr
    assert "Task 'unlearn' (task 2) was not taken: after its merge 'learn' fell" in message, message[-3000:]
    assert f"more than guard.max_forgetting in {recipe_path} = 10 allows" in message
    assert f"mergeforget train {recipe_path} --resume --accept-regression" in message

    # The state, the adapter and the rows stay at task 1 (the runner exports what was taken); the
    # rejected LoRA and row are beside task 2.
    assert "1 task(s) finished. Merged adapter:" in stopped.stdout
    state = load_state(out / "state")
    assert state.finished_tasks == ["learn"] and not (out / "evaluations" / "after-02.json").exists()
    exported = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in _peft_tensors(state.merged).items())
    verdict = json.loads((out / "tasks" / "task-02-unlearn" / "rejected" / "verdict.json").read_text())
    assert verdict["regressions"][0]["task"] == "learn" and verdict["regressions"][0]["drop"] > 10

    # Task 2 trained on its own rows plus task 1's replayed ones: one more dataset of its Axolotl
    # config, in its format, drawn from the state's buffer (so a resumed run writes the same rows).
    config = yaml.safe_load((out / "configs" / "task-02-unlearn.yaml").read_text())
    replayed_path = out / "tasks" / "task-02-unlearn" / "replayed.jsonl"
    assert config["datasets"][1]["path"] == str(replayed_path)
    replayed = [json.loads(line) for line in replayed_path.read_text().splitlines()]
    assert state.replay_buffer.keys() == {"learn"} and len(state.replay_buffer["learn"]) == 8
    assert replayed == replay_for(state, "unlearn", 24, ReplayConfig.from_mapping(replay))
    assert len(replayed) == 4 and all(row in weather(False) for row in replayed)
    status = mergeforget("status", str(out / "state"), cwd=tmp_path)
    assert "learn" in status.stdout and "bytes" in status.stdout, status.stdout

    # Resume with --accept-regression: the task is taken, and the history says which drop was accepted.
    taken = mergeforget("train", str(recipe_path), "--resume", "--accept-regression", cwd=tmp_path)
    assert taken.returncode == 0, taken.stdout[-2000:] + taken.stderr[-4000:]
    state = load_state(out / "state")
    assert state.finished_tasks == ["learn", "unlearn"]
    assert [r["task"] for r in state.history[-1]["accepted_regressions"]] == ["learn"]
    assert {name: len(rows) for name, rows in state.replay_buffer.items()} == {"learn": 4, "unlearn": 4}


def test_a_task_whose_rows_axolotl_all_drops_as_too_long_is_refused_by_name(tmp_path, tiny_model_dir):
    """Axolotl drops rows longer than sequence_len; with none left, torch's sampler fails with
    "num_samples=0". The plugin refuses first, naming the task, the setting and the ways out."""
    recipe_path = tiny_recipe(tmp_path, tiny_model_dir, tasks=("plurals",))
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["tasks"][0]["overrides"] = {"sequence_len": 4}  # every demo row is longer
    recipe_path.write_text(yaml.safe_dump(recipe))
    refused = mergeforget("train", str(recipe_path), cwd=tmp_path)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert (
        "TrainingDataError: Task 'plurals': no training row is left once Axolotl has dropped those longer than "
        "sequence_len (4 tokens; excess_length_strategy 'drop')" in message
    ), message[-3000:]
    assert "set excess_length_strategy: truncate" in message and "num_samples" not in message
    state = load_state(tmp_path / "out" / "state")
    assert state is None or state.finished_tasks == []


def _peft_tensors(merged):
    """The state's merged LoRA under the names PEFT saves it with."""
    return {
        f"base_model.model.{name}.lora_{side}.weight": getattr(pair, side.lower())
        for name, pair in merged.items()
        for side in ("A", "B")
    }
