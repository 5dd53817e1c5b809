"""One settings object, one pre-flight, one sequence driver: what the TRL path now shares with the recipe runner.

The settings and the pre-flight are plain objects, tested without a model; the driver is tested
through the real ``train_sequence`` (TRL's ``SFTTrainer`` on a tiny model).
"""

from __future__ import annotations

import gc
import json
import warnings

import pytest
from datasets import Dataset

from mergeforget_plugin import (
    ContinualConfig,
    ForgettingGuard,
    MergeForgetConfig,
    ReplayConfig,
    Task,
    train_sequence,
)
from mergeforget_plugin.core.state import load_state
from mergeforget_plugin.driver import _INTERPRETERS_OWN_FROZEN
from mergeforget_plugin.errors import (
    EvaluationError,
    ForgettingGuardError,
    ReplayError,
    StateMismatchError,
    TaskNameError,
    TrainingDataError,
)
from mergeforget_plugin.preflight import TaskPlan, sequence_problems
from mergeforget_plugin.settings import SettingsError, merged_settings

from .helpers import demo_rows, peft_model, sft_config, weather

PROMPT_COMPLETION = (("text",), ("messages",), ("prompt", "completion"), ("input_ids",))


def test_settings_take_mappings_and_refuse_each_bad_field_by_name():
    settings = ContinualConfig(
        strategy={"lambda_schedule": "inv"}, replay={"buffer_rows": 8, "count": 2}, guard={"max_forgetting": 5}
    )
    assert settings.strategy == MergeForgetConfig(lambda_schedule="inv")
    assert settings.replay == ReplayConfig(8, count=2) and settings.guard.max_forgetting == 5
    assert ContinualConfig(export_dir=__import__("pathlib").Path("out")).export_dir == "out"
    refused = [
        (dict(strategy="slao"), SettingsError, "strategy: give a MergeForgetConfig"),
        (dict(strategy={"lamda": 1}), SettingsError, r"strategy: unknown field\(s\) \['lamda'\]"),
        (dict(replay={"buffer_rows": 0, "count": 1}), ReplayError, "replay.buffer_rows"),
        (dict(guard={"max_forgetting": -1}), ForgettingGuardError, "guard.max_forgetting"),
        (dict(eval_schedule="some"), EvaluationError, "eval_schedule 'some'"),
        (dict(trackers=("mlflow",)), SettingsError, "trackers: choose from tensorboard, wandb"),
        (dict(adapter_name=""), SettingsError, "adapter_name"),
    ]
    for fields, error, message in refused:
        with pytest.raises(error, match=message):
            ContinualConfig(**fields)
    with pytest.raises(SettingsError, match=r"settings: unknown key\(s\) \['lambda'\]"):
        ContinualConfig.from_mapping({"lambda": 1})
    block = ContinualConfig.from_mapping({"strategy": "seq", "guard": {"max_forgetting": 3}})
    assert block.strategy.strategy == "seq" and block.guard.max_forgetting == 3


def test_keywords_fold_into_the_settings_with_a_warning_and_never_beside_them():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = merged_settings(None, "train_sequence", {}, config=MergeForgetConfig(strategy="seq"), guard=None)
    assert folded == ContinualConfig(strategy=MergeForgetConfig(strategy="seq"))
    assert [w.category for w in caught] == [DeprecationWarning] and "settings=ContinualConfig(strategy=" in str(
        caught[0].message
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing given one by one: no warning
        assert merged_settings(None, "x", {"eval_schedule": "needed"}, eval_schedule="needed") == ContinualConfig()
    with pytest.raises(SettingsError, match="train_sequence: replay given beside settings="):
        merged_settings(ContinualConfig(), "train_sequence", {}, replay=ReplayConfig(4, count=1))


def test_the_preflight_names_every_problem_of_a_sequence_before_task_one():
    guard = ContinualConfig(guard={"max_forgetting": 5}, replay={"buffer_rows": 4, "count": 1})
    plans = [
        TaskPlan.of_rows("a", "Task 'a', train_dataset", [{"prompt": "p", "completion": "c"}]),
        TaskPlan.of_rows("b", "Task 'b', train_dataset", []),
        TaskPlan.of_rows(
            "c",
            "Task 'c', train_dataset",
            [{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": None}],
            formats=PROMPT_COMPLETION,
        ),
        TaskPlan.of_rows("d", "Task 'd', train_dataset", [{"question": "q"}], formats=PROMPT_COMPLETION),
    ]
    problems = [str(problem) for problem in sequence_problems(guard, plans)]
    assert problems == [
        "guard.max_forgetting measures forgetting on held-out rows, but no task has any: give the tasks evaluation "
        "rows (eval_dataset), or leave the guard out.",
        "Task 'b', train_dataset: task 'b' has no training rows; give it some, or leave the task out.",
        "Task 'c', train_dataset: row 1 has no value (None) in 'completion'; fill it, or drop the row.",
        "Task 'd', train_dataset: the rows hold the fields ['question'], but the trainer reads a row by one of: "
        "text; messages; prompt and completion; input_ids. Rename the fields (Dataset.rename_column), or map the "
        "rows to one of these.",
        "Task 'd', train_dataset (replay): task 'd' has the fields ['question'], but task 'a', whose rows would be "
        "replayed into it, has ['completion', 'prompt']. Replay needs one row format for the whole sequence: give "
        "the tasks the same fields, or turn replay off (a sequence already started keeps its replay settings: "
        "start a new one in another output directory).",
    ]
    assert sequence_problems(ContinualConfig(), [plans[0], plans[0]])[0].error is TaskNameError


def test_train_sequence_refuses_bad_training_rows_naming_task_and_row_before_anything_trains(tiny_model_dir, tmp_path):
    good = Dataset.from_list(demo_rows("antonyms", "train")[:8])
    rows = demo_rows("plurals", "train")[:8]
    rows[5] = {**rows[5], "completion": None}
    with pytest.raises(TrainingDataError, match=r"Task 'plurals', train_dataset: row 5 has no value \(None\) in"):
        train_sequence(
            peft_model(tiny_model_dir),
            [Task("antonyms", good), Task("plurals", Dataset.from_list(rows))],
            args=sft_config(tmp_path),
        )
    with pytest.raises(TrainingDataError, match="Task 'empty', train_dataset: task 'empty' has no training rows"):
        train_sequence(
            peft_model(tiny_model_dir), [Task("antonyms", good), Task("empty", [])], args=sft_config(tmp_path)
        )
    assert not (tmp_path / "state").exists() and not (tmp_path / "tasks").exists()


def test_a_guard_stop_inside_one_call_leaves_the_adapter_and_report_of_the_tasks_taken(
    learning_model_dir, tmp_path, capsys
):
    from transformers import AutoTokenizer

    from mergeforget_plugin.peft_bridge import read_lora

    tokenizer = AutoTokenizer.from_pretrained(learning_model_dir)
    rows = {"learn": weather(False), "unlearn": weather(True)}
    tasks = [Task(name, Dataset.from_list(rows[name]), Dataset.from_list(rows[name][:2])) for name in rows]
    model = peft_model(learning_model_dir)
    args = sft_config(tmp_path, max_steps=12, learning_rate=1e-2, lr_scheduler_type="constant")
    settings = ContinualConfig(guard=ForgettingGuard(max_forgetting=10))
    with pytest.raises(ForgettingGuardError, match=r"The state, the adapter and the report stay at task 1"):
        train_sequence(model, tasks, args=args, processing_class=tokenizer, settings=settings)
    state = load_state(tmp_path / "state")
    assert state.finished_tasks == ["learn"]
    # What the message promises is on disk: the adapter holds task 1's merged LoRA, the report task 1's row.
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    held = read_lora(model)  # the model was given task 1's LoRA back
    for name, pair in state.merged.items():
        assert exported[f"base_model.model.{name}.lora_A.weight"].equal(pair.a) and held[name].a.equal(pair.a)
    assert json.loads((tmp_path / "report.json").read_text())["finished_tasks"] == ["learn"]
    printed = capsys.readouterr().out
    assert (
        gc.get_freeze_count() <= _INTERPRETERS_OWN_FROZEN
    )  # the driver thawed what it froze, on the guard's way out too
    assert "[task 1/2] learn: training" in printed and "[task 2/2] unlearn: training" in printed
    assert f"1 task(s) finished. Merged adapter: {tmp_path / 'adapter'}" in printed
    assert f"Report: {tmp_path / 'report.json'}" in printed


def test_rerunning_a_finished_sequence_says_so_and_checks_the_model_against_the_state(
    tiny_model_dir, learning_model_dir, tmp_path, capsys
):
    tasks = [Task(name, Dataset.from_list(demo_rows(name, "train")[:8])) for name in ("antonyms", "plurals")]
    first = train_sequence(peft_model(tiny_model_dir), tasks, args=sft_config(tmp_path, max_steps=2))
    assert first.state.finished_tasks == ["antonyms", "plurals"]
    capsys.readouterr()
    again = train_sequence(peft_model(tiny_model_dir), tasks, args=sft_config(tmp_path, max_steps=2))
    printed = capsys.readouterr().out
    assert f"Resuming {tmp_path / 'state'}: 2 of 2 task(s) finished (antonyms, plurals); nothing left to train." in (
        printed
    )
    assert "[task " not in printed and "All 2 task(s) finished. Merged adapter:" in printed
    assert again.state.history == first.state.history and again.report_files
    # Another base model (same shapes, other weights) is refused before anything runs.
    with pytest.raises(StateMismatchError, match="base model"):
        train_sequence(peft_model(learning_model_dir), tasks, args=sft_config(tmp_path, max_steps=2))


def test_each_task_trains_with_the_objects_alive_before_the_sequence_frozen(tiny_model_dir, tmp_path):
    """Trainer.train() starts with a full gc.collect() (accelerate's free_memory); the driver keeps
    the imports and the model out of it while the sequence runs, and gives them back after."""
    from transformers import TrainerCallback

    seen = []

    class FreezeCount(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(gc.get_freeze_count())

    # Python 3.12 keeps its own immortal tuples frozen (375 of them); that is no caller's freeze.
    assert gc.get_freeze_count() <= _INTERPRETERS_OWN_FROZEN
    tasks = [Task(name, Dataset.from_list(demo_rows(name, "train")[:8])) for name in ("antonyms", "plurals")]
    train_sequence(peft_model(tiny_model_dir), tasks, args=sft_config(tmp_path, max_steps=1), callbacks=[FreezeCount()])
    assert len(seen) == 2 and all(count > _INTERPRETERS_OWN_FROZEN + 10_000 for count in seen)
    assert gc.get_freeze_count() <= _INTERPRETERS_OWN_FROZEN


def test_the_interpreters_own_frozen_objects_and_any_callers_freeze_fall_either_side_of_the_line():
    """What this Python keeps frozen by itself (Python 3.12: 375 immortal tuples, again after a full
    collection) reads as no caller's freeze; a gc.freeze() even in a bare interpreter does."""
    import subprocess
    import sys

    script = (
        "import gc; own = gc.get_freeze_count(); gc.unfreeze(); gc.collect(); again = gc.get_freeze_count(); "
        "gc.freeze(); print(own, again, gc.get_freeze_count())"
    )
    printed = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=True)
    own, again, callers = map(int, printed.stdout.split())
    assert max(own, again) <= _INTERPRETERS_OWN_FROZEN < callers


def test_a_caller_that_froze_objects_keeps_its_freeze_and_the_sequences_model_is_still_collected(
    tiny_model_dir, tmp_path
):
    """The benchmark freezes its imports and base model itself: the driver then freezes nothing more,
    since gc.unfreeze() could not thaw only its own share, and the sequence's model must stay
    collectable once the caller lets it go."""
    import weakref

    tasks = [Task(name, Dataset.from_list(demo_rows(name, "train")[:8])) for name in ("antonyms", "plurals")]
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()  # frozen objects can still be freed by reference counting: never more
        model = peft_model(tiny_model_dir)  # made after the caller's freeze, as the benchmark's runs are
        gone = weakref.ref(model)
        result = train_sequence(model, tasks, args=sft_config(tmp_path, max_steps=1))
        assert result.state.finished_tasks == ["antonyms", "plurals"] and 0 < gc.get_freeze_count() <= frozen
        del model, result
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
