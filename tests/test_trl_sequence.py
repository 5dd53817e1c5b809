"""End to end through TRL's real SFTTrainer: three tasks, LoRA and QLoRA, with the callback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from mergeforget_plugin import (
    MergeForgetCallback,
    MergeForgetConfig,
    StateError,
    StateMismatchError,
    train_sequence,
)
from mergeforget_plugin.core.slao import orthogonal_basis
from mergeforget_plugin.core.state import load_snapshot, load_state, snapshot_dirs
from mergeforget_plugin.peft_bridge import read_lora

from .helpers import DEMO_TASKS, demo_tasks, peft_model, sft_config


class RecordTaskStart(TrainerCallback):
    """Keeps a copy of the LoRA each task starts training from (runs after the SLAO callback)."""

    def __init__(self):
        self.starts = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.starts.append(read_lora(model))


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora-nf4"])
def test_three_task_sequence_with_sft_trainer(tiny_model_dir, tmp_path, quantized):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = peft_model(tiny_model_dir, quantized)
    recorder = RecordTaskStart()
    tasks = demo_tasks()

    first = train_sequence(
        model, tasks[:1], args=sft_config(tmp_path), processing_class=tokenizer, callbacks=[recorder]
    )
    adapter_bytes_after_1 = (first.adapter_dir / "adapter_model.safetensors").stat().st_size
    # A second call resumes: the finished task is skipped, tasks 2 and 3 run.
    result = train_sequence(model, tasks, args=sft_config(tmp_path), processing_class=tokenizer, callbacks=[recorder])

    state = result.state
    assert state.finished_tasks == list(DEMO_TASKS) == [h["task"] for h in state.history]
    assert len(recorder.starts) == 3 and list(result.eval_loss) == ["plurals", "capitals"]
    assert [h["merge_coefficient"] for h in state.history] == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(3)])
    assert all(h["global_step"] == 6 and math.isfinite(h["last_train_loss"]) for h in state.history)
    assert (result.adapter_dir / "adapter_model.safetensors").stat().st_size == adapter_bytes_after_1
    assert [p.name for p in snapshot_dirs(result.state_dir)] == ["task-0002", "task-0003"]

    # The report covers the whole sequence, including the task finished by the first call.
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p.name for p in result.report_files] == ["report.json", "report.md", "accuracy_matrix.png"]
    assert report["tasks"] == list(DEMO_TASKS) and report["rows_after"] == list(DEMO_TASKS)
    assert set(report["zero_shot"]) == set(DEMO_TASKS)
    # Row 1 was measured by the first call, which only knew task 1; later rows cover every task.
    first_row, *later_rows = report["accuracy_matrix"]
    assert 0 <= first_row[0] <= 1 and first_row[1:] == [None, None]
    assert all(len(row) == 3 and all(0 <= v <= 1 for v in row) for row in later_rows)
    assert list(result.accuracy) == ["plurals", "capitals"]
    assert report["accuracy_matrix"][2] == [result.accuracy["capitals"][t] for t in DEMO_TASKS]

    # The callback applied the SLAO equations: task 3 started from QR(A_ft,2) and B_ft,2, and
    # ended with B_merge,3 = B_merge,2 + (B_ft,3 - B_merge,2) / sqrt(3), A_merge,3 = A_ft,3.
    after_2 = load_snapshot(snapshot_dirs(result.state_dir)[0])
    start_3 = recorder.starts[2]
    for name, pair in state.merged.items():
        torch.testing.assert_close(start_3[name].a, orthogonal_basis(after_2.finetuned[name].a), atol=0, rtol=0)
        assert torch.equal(start_3[name].b, after_2.finetuned[name].b)
        b_merge_2, b_ft_3 = after_2.merged[name].b, state.finetuned[name].b
        expected = b_merge_2.float() + (b_ft_3.float() - b_merge_2.float()) / math.sqrt(3)
        torch.testing.assert_close(pair.b, expected.to(pair.b.dtype))
        assert torch.equal(pair.a, state.finetuned[name].a)
        assert not torch.equal(b_ft_3, b_merge_2)  # training moved B, so the check above is not vacuous

    # The model holds the merged (deployed) LoRA, and the exported adapter reproduces it in stock PEFT.
    in_model = read_lora(model)
    assert all(torch.equal(in_model[n].b, state.merged[n].b) for n in in_model)
    kwargs = {}
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs), result.adapter_dir
    )
    # TRL trains QLoRA adapters in bf16 and PEFT loads them into fp32 layers: compare in the training dtype.
    adapter_dtype = next(iter(state.merged.values())).b.dtype
    for parameter_name, param in reloaded.named_parameters():
        if "lora_" in parameter_name:
            param.data = param.data.to(adapter_dtype)
    reloaded_weights = read_lora(reloaded)
    assert all(
        torch.equal(reloaded_weights[n].a, state.merged[n].a) and torch.equal(reloaded_weights[n].b, state.merged[n].b)
        for n in reloaded_weights
    )
    ids = tokenizer("Name the capital city of: Peru\nAnswer: Lima", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        difference = (model(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
    print(
        f"\nLoRA dtype {adapter_dtype}; export round trip ({'qlora' if quantized else 'lora'}): "
        f"max |logit difference| = {difference:.3g}"
    )
    assert difference <= 1e-5


def test_slao_and_seqlora_share_task_one_then_diverge(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    losses = {}
    for strategy in ("slao", "seq"):
        result = train_sequence(
            peft_model(tiny_model_dir),
            demo_tasks(),
            args=sft_config(tmp_path / strategy),
            output_dir=tmp_path / strategy,
            processing_class=tokenizer,
            config=MergeForgetConfig(strategy=strategy),
        )
        losses[strategy] = result.eval_loss
    print("\ntask-1 (antonyms) eval loss after each task:")
    for strategy, matrix in losses.items():
        print(f"  {strategy:5s}", "  ".join(f"{after}={row['antonyms']:.4f}" for after, row in matrix.items()))
    # Same seed, same first task: identical. From task 2 on the strategies differ.
    assert losses["slao"]["antonyms"] == losses["seq"]["antonyms"]
    assert losses["slao"]["capitals"] != losses["seq"]["capitals"]
    assert all(math.isfinite(v) for m in losses.values() for row in m.values() for v in row.values())


def test_mismatched_rank_is_refused_before_any_training_step(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_sequence(peft_model(tiny_model_dir), demo_tasks()[:1], args=sft_config(tmp_path), processing_class=tokenizer)
    steps = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    with pytest.raises(StateMismatchError, match=r"LoRA rank r=4 in the state vs r=8 in the model"):
        train_sequence(
            peft_model(tiny_model_dir, rank=8),
            demo_tasks()[:2],
            args=sft_config(tmp_path),
            processing_class=tokenizer,
            callbacks=[CountSteps()],
        )
    assert steps == []
    assert load_state(tmp_path / "state").finished_tasks == ["antonyms"]


def test_callback_merges_once_and_refuses_a_finished_task_name(tiny_model_dir, tmp_path):
    from trl import SFTTrainer

    model = peft_model(tiny_model_dir)
    callback = MergeForgetCallback(tmp_path / "state", task_name="antonyms")
    (task,) = demo_tasks(["antonyms"])
    trainer = SFTTrainer(
        model=model, args=sft_config(tmp_path / "t1"), train_dataset=task.train_dataset, callbacks=[callback]
    )
    trainer.train()
    callback.on_train_end(trainer.args, trainer.state, trainer.control, model=model)  # a second firing
    assert load_state(tmp_path / "state").finished_tasks == ["antonyms"]
    assert [p.name for p in snapshot_dirs(tmp_path / "state")] == ["task-0001"]

    again = SFTTrainer(
        model=model,
        args=sft_config(tmp_path / "t2"),
        train_dataset=task.train_dataset,
        callbacks=[MergeForgetCallback(tmp_path / "state", task_name="antonyms")],
    )
    with pytest.raises(StateError, match="Task 'antonyms' already finished"):
        again.train()


def test_sequence_input_is_validated_before_training(tiny_model_dir, tmp_path):
    tasks = demo_tasks(["antonyms", "plurals"])
    with pytest.raises(ValueError, match="tasks is empty"):
        train_sequence(peft_model(tiny_model_dir), [], args=sft_config(tmp_path))
    with pytest.raises(ValueError, match=r"repeated: \['antonyms'\]"):
        train_sequence(peft_model(tiny_model_dir), [tasks[0], tasks[0]], args=sft_config(tmp_path))
    with pytest.raises(ValueError, match="pass peft_config"):
        from transformers import AutoModelForCausalLM

        train_sequence(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tasks, args=sft_config(tmp_path))


def test_a_row_a_kill_interrupted_is_scored_when_the_next_task_begins(tiny_model_dir, tmp_path):
    """A state saved before its row was scored (what a kill left with versions up to 0.1.0) gets the row back."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = peft_model(tiny_model_dir)
    tasks = demo_tasks(["antonyms", "plurals"])
    train_sequence(model, tasks[:1], args=sft_config(tmp_path), processing_class=tokenizer)
    row = tmp_path / "evaluations" / "after-01.json"
    measured = json.loads(row.read_text())
    row.unlink()

    result = train_sequence(model, tasks, args=sft_config(tmp_path), processing_class=tokenizer)
    rescored = json.loads(row.read_text())
    # Scored with task 1's merged LoRA again (the same number), now on every task of this call.
    assert rescored["after_task"] == "antonyms" and rescored["accuracy"]["antonyms"] == measured["accuracy"]["antonyms"]
    assert set(rescored["accuracy"]) == {"antonyms", "plurals"}
    assert result.state.finished_tasks == ["antonyms", "plurals"] and list(result.accuracy) == ["plurals"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows_after"] == ["antonyms", "plurals"]
    assert report["accuracy_matrix"][0] == [rescored["accuracy"][name] for name in report["tasks"]]
    # The TRL path writes the layout the Axolotl runner writes: tasks/task-NN-NAME/.
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == ["task-01-antonyms", "task-02-plurals"]


def test_the_loss_pass_can_be_left_out_and_accuracy_is_still_scored(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tasks = demo_tasks()[:2]
    result = train_sequence(
        peft_model(tiny_model_dir), tasks, args=sft_config(tmp_path), processing_class=tokenizer, loss_matrix=False
    )
    assert result.eval_loss == {}
    assert list(result.accuracy) == [task.name for task in tasks]
    assert set(result.accuracy[tasks[-1].name]) == {task.name for task in tasks if task.eval_dataset is not None}
