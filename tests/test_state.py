"""The continual state on disk: exact round trips, atomic snapshots, clear refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mergeforget_plugin.core.slao import MergeForgetConfig
from mergeforget_plugin.core.state import (
    BaseModelFingerprint,
    LoRASignature,
    StateError,
    StateMismatchError,
    check_writable,
    load_state,
    save_state,
    snapshot_dirs,
    tidy_state_dir,
)

from .helpers import FINGERPRINT, READ_ONLY_WAYS, REPO, SIGNATURE, make_state, read_only


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


FULL_DISK_SCRIPT = """
import resource, signal, sys
from mergeforget_plugin.core.state import StateError, save_state
from tests.helpers import make_state
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
try:
    save_state(make_state(2), sys.argv[1])
except StateError as error:
    print(error)
"""


def test_a_full_disk_leaves_the_previous_snapshot_untouched(tmp_path):
    import subprocess
    import sys

    save_state(make_state(1), tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # A real write failure: the kernel refuses bytes past a file-size limit, as on a full disk.
    completed = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert completed.stdout.strip() == (
        f"Could not write the state of task 2 to {tmp_path} (File too large). The previous snapshot "
        f"{tmp_path / 'task-0001'} is untouched. Free space or fix permissions, then resume to redo the task."
    ), completed.stderr[-2000:]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["task-0001"]
    assert load_state(tmp_path).finished_tasks == ["task1"]


@pytest.mark.parametrize("how", sorted(READ_ONLY_WAYS))
def test_a_read_only_state_directory_is_refused_before_anything_is_replaced(tmp_path, how):
    # Each way of making the directory read-only gives one reason: an immutable directory (root)
    # "Operation not permitted", mode bits (any other user) "Permission denied".
    save_state(make_state(1), tmp_path)
    restore = read_only(tmp_path, how)
    try:
        with pytest.raises(StateError) as refused:
            check_writable(tmp_path)
        with pytest.raises(StateError, match="is not writable") as refused_save:
            save_state(make_state(2), tmp_path)
    finally:
        restore()
    expected = (
        f"The state directory {tmp_path} is not writable ({READ_ONLY_WAYS[how]}). Nothing was trained or "
        "replaced: choose a writable directory with free space, then run again."
    )
    assert str(refused.value) == expected
    assert str(refused_save.value) == expected
    assert load_state(tmp_path).finished_tasks == ["task1"]


def test_truncated_tensor_files_are_detected_naming_the_file(tmp_path):
    save_state(make_state(1), tmp_path)
    snapshot = save_state(make_state(2), tmp_path)
    for name in ("merged.safetensors", "finetuned.safetensors"):
        original = (snapshot / name).read_bytes()
        for cut in (1, len(original) // 2, len(original) - 8):
            (snapshot / name).write_bytes(original[:cut])
            with pytest.raises(StateError) as refused:
                load_state(tmp_path)
            assert str(refused.value) == (
                f"{snapshot / name} is missing or does not match the checksum in its manifest. The previous "
                f"task's snapshot {tmp_path / 'task-0001'} is intact: delete {snapshot} and resume to redo that task."
            )
        (snapshot / name).write_bytes(original)
    assert load_state(tmp_path).finished_tasks == ["task1", "task2"]


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


def test_same_setup_is_accepted_within_dtype_rounding(tmp_path):
    state = make_state(1)
    rounded = BaseModelFingerprint(FINGERPRINT.architecture, [0.5001, -0.2501, 0.1251])
    # Accepted: no StateMismatchError, and neither side reports a difference.
    assert state.check_compatible(SIGNATURE, rounded, "here") is None
    assert state.base_model.mismatches(rounded) == [] and state.signature.mismatches(SIGNATURE) == []
    # A state on disk whose model was read in float32 continues with the same model read in
    # bfloat16 or float16; a change beyond rounding (5%) is still refused.
    values = torch.randn(8, generator=torch.Generator().manual_seed(0))
    on_disk = dataclasses.replace(state, base_model=BaseModelFingerprint(FINGERPRINT.architecture, values.tolist()))
    save_state(on_disk, tmp_path)
    loaded = load_state(tmp_path)
    assert loaded.base_model == on_disk.base_model and loaded.next_task_index == 2
    for dtype in (torch.bfloat16, torch.float16):
        model_side = BaseModelFingerprint(FINGERPRINT.architecture, values.to(dtype).float().tolist())
        assert model_side.embedding_signature != loaded.base_model.embedding_signature, dtype  # rounded: not equal
        assert loaded.check_compatible(SIGNATURE, model_side, "here") is None, dtype
    changed = BaseModelFingerprint(FINGERPRINT.architecture, (values * 1.05).tolist())
    with pytest.raises(StateMismatchError, match="same architecture but different weights"):
        loaded.check_compatible(SIGNATURE, changed, "here")


def test_changing_strategy_mid_sequence_is_refused():
    with pytest.raises(StateMismatchError, match="keeps one strategy from start to end"):
        make_state(1).check_config(MergeForgetConfig(), "here")


def test_tidy_removes_what_an_interrupted_write_left_behind(tmp_path):
    for count in (1, 2, 3):
        save_state(make_state(count), tmp_path, keep=3)  # as if killed before the older ones were removed
    (tmp_path / ".task-0004.abc.tmp").mkdir()
    (tmp_path / ".task-0004.abc.tmp" / "merged.safetensors").write_bytes(b"half")
    tidy_state_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task-0002", "task-0003"]
    assert load_state(tmp_path).finished_tasks == ["task1", "task2", "task3"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_snapshot_files_are_plain_safetensors_with_the_manifests_checksum(tmp_path, dtype):
    import hashlib

    from safetensors.torch import load_file

    state = make_state(1, dtype)
    snapshot = save_state(state, tmp_path)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    for filename, weights in (("merged.safetensors", state.merged), ("finetuned.safetensors", state.finetuned)):
        data = (snapshot / filename).read_bytes()
        assert manifest["sha256"][filename] == hashlib.sha256(data).hexdigest()
        tensors = load_file(str(snapshot / filename))
        assert set(tensors) == {f"{name}.lora_{part}" for name in weights for part in "AB"}
        assert all(
            torch.equal(tensors[f"{n}.lora_A"], p.a) and torch.equal(tensors[f"{n}.lora_B"], p.b)
            for n, p in weights.items()
        )


def test_a_snapshot_this_process_wrote_is_reused_until_a_file_changes(tmp_path, monkeypatch):
    import mergeforget_plugin.core.state as state_module

    save_state(make_state(1), tmp_path)
    saved = make_state(2)
    snapshot = save_state(saved, tmp_path)

    def no_reading(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(state_module, "load_file", no_reading)
    reused = load_state(tmp_path)
    assert reused.finished_tasks == saved.finished_tasks and reused.merged.keys() == saved.merged.keys()
    assert reused.finished_tasks is not saved.finished_tasks  # a caller's changes do not reach the cache
    # Rewriting a file (same bytes, new modification time) sends the next load through the checksums.
    (snapshot / "merged.safetensors").write_bytes((snapshot / "merged.safetensors").read_bytes())
    with pytest.raises(AssertionError, match="merged.safetensors was read again"):
        load_state(tmp_path)
