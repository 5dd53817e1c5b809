"""The continual state on disk: exact round trips, atomic snapshots, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from mergeforget_plugin.slao import LoRAPair, MergeForgetConfig
from mergeforget_plugin.state import (
    BaseModelFingerprint,
    ContinualState,
    LoRASignature,
    StateError,
    StateMismatchError,
    load_state,
    save_state,
    snapshot_dirs,
)

SIGNATURE = LoRASignature(
    ranks={"layers.0.q_proj": 4, "layers.0.v_proj": 4},
    lora_alpha=8.0,
    use_rslora=False,
    target_modules=["q_proj", "v_proj"],
)
FINGERPRINT = BaseModelFingerprint(
    architecture={"model_type": "llama", "hidden_size": 64}, embedding_signature=[0.5, -0.25, 0.125]
)


def make_state(num_finished: int, dtype: torch.dtype = torch.float32) -> ContinualState:
    generator = torch.Generator().manual_seed(num_finished)

    def weights() -> dict[str, LoRAPair]:
        return {
            name: LoRAPair(
                torch.randn(4, 64, generator=generator).to(dtype), torch.randn(64, 4, generator=generator).to(dtype)
            )
            for name in SIGNATURE.ranks
        }

    return ContinualState(
        signature=SIGNATURE,
        base_model=FINGERPRINT,
        config=MergeForgetConfig(lambda_schedule="inv"),
        adapter_config={"peft_type": "LORA", "r": 4},
        finished_tasks=[f"task{i}" for i in range(1, num_finished + 1)],
        merged=weights(),
        finetuned=weights(),
        history=[{"task": f"task{i}"} for i in range(1, num_finished + 1)],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    state = make_state(2, dtype)
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert loaded.finished_tasks == ["task1", "task2"] and loaded.next_task_index == 3
    assert (
        loaded.config == state.config and loaded.signature == state.signature and loaded.base_model == state.base_model
    )
    assert loaded.adapter_config == state.adapter_config and loaded.history == state.history
    for attribute in ("merged", "finetuned"):
        for name, pair in getattr(state, attribute).items():
            got = getattr(loaded, attribute)[name]
            assert got.a.dtype == dtype and torch.equal(got.a, pair.a) and torch.equal(got.b, pair.b)


def test_empty_directory_has_no_state(tmp_path):
    assert load_state(tmp_path / "missing") is None


def test_only_the_last_two_snapshots_are_kept_and_state_size_is_constant(tmp_path):
    sizes = []
    for finished in range(1, 6):
        save_state(make_state(finished), tmp_path)
        sizes.append(sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors")))
        assert [p.name for p in snapshot_dirs(tmp_path)] == [
            f"task-{n:04d}" for n in range(max(1, finished - 1), finished + 1)
        ]
    assert sizes[1:] == [sizes[1]] * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert load_state(tmp_path).finished_tasks[-1] == "task5"


def test_a_failed_write_leaves_the_previous_snapshot_untouched(tmp_path, monkeypatch):
    save_state(make_state(1), tmp_path)
    import mergeforget_plugin.state as state_module

    def failing_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module.os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        save_state(make_state(2), tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["task-0001"]
    assert load_state(tmp_path).finished_tasks == ["task1"]


def test_newer_format_is_refused(tmp_path):
    snapshot = save_state(make_state(1), tmp_path)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["format_version"] = 99
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StateError, match="format_version 99, newer than the 1 .* Upgrade mergeforget-plugin"):
        load_state(tmp_path)


def test_corrupted_tensor_file_is_detected_and_the_previous_snapshot_is_named(tmp_path):
    save_state(make_state(1), tmp_path)
    snapshot = save_state(make_state(2), tmp_path)
    data = bytearray((snapshot / "merged.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (snapshot / "merged.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        StateError, match=r"task-0002/merged.safetensors is missing or does not match the checksum.*task-0001 is intact"
    ):
        load_state(tmp_path)


def test_unreadable_manifest_is_refused_with_the_file_name(tmp_path):
    snapshot = save_state(make_state(1), tmp_path)
    (snapshot / "manifest.json").write_text("{not json")
    with pytest.raises(StateError, match=r"Cannot read .*task-0001/manifest.json"):
        load_state(tmp_path)


@pytest.mark.parametrize(
    ("signature", "fingerprint", "message"),
    [
        (
            LoRASignature({"layers.0.q_proj": 8, "layers.0.v_proj": 8}, 8.0, False, ["q_proj", "v_proj"]),
            FINGERPRINT,
            r"LoRA rank r=4 in the state vs r=8 in the model",
        ),
        (
            LoRASignature({"layers.0.q_proj": 4}, 8.0, False, ["q_proj"]),
            FINGERPRINT,
            r"target modules \['q_proj', 'v_proj'\] in the state vs \['q_proj'\]",
        ),
        (
            LoRASignature(SIGNATURE.ranks, 8.0, True, ["q_proj", "v_proj"]),
            FINGERPRINT,
            "use_rslora=False in the state vs True",
        ),
        (
            SIGNATURE,
            BaseModelFingerprint({"model_type": "llama", "hidden_size": 128}, [0.5, -0.25, 0.125]),
            "base model: hidden_size=64 in the state vs 128",
        ),
        (
            SIGNATURE,
            BaseModelFingerprint(FINGERPRINT.architecture, [0.5, 0.25, 0.125]),
            "same architecture but different weights",
        ),
    ],
)
def test_state_from_another_setup_is_refused_naming_the_mismatch(signature, fingerprint, message):
    with pytest.raises(StateMismatchError, match=message):
        make_state(1).check_compatible(signature, fingerprint, "somewhere")


def test_same_setup_is_accepted_within_dtype_rounding():
    make_state(1).check_compatible(
        SIGNATURE, BaseModelFingerprint(FINGERPRINT.architecture, [0.5001, -0.2501, 0.1251]), "here"
    )


def test_changing_strategy_mid_sequence_is_refused():
    with pytest.raises(StateMismatchError, match="keeps one strategy from start to end"):
        make_state(1).check_config(MergeForgetConfig(), "here")
