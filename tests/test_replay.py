"""Replay's buffer and draws as plain functions, and the buffer inside the state's snapshot (no model)."""

from __future__ import annotations

import json

import pytest
import torch

from mergeforget_plugin.core.replay import (
    ReplayConfig,
    add_task,
    check_fields,
    decode,
    describe,
    encode,
    plain_rows,
    replay_count,
    replayed_rows,
    resumed_advice,
    shares,
)
from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig
from mergeforget_plugin.core.state import (
    REPLAY_FILE,
    BaseModelFingerprint,
    ContinualState,
    LoRASignature,
    load_state,
    save_state,
)
from mergeforget_plugin.engine import finished_state, replay_for
from mergeforget_plugin.errors import MergeForgetError, ReplayError, StateError, StateMismatchError


def rows(task: str, count: int) -> list[dict[str, str]]:
    return [{"prompt": f"{task} question {i}", "completion": f" {task}-{i}"} for i in range(count)]


def test_the_buffer_stays_at_its_size_and_balanced_as_tasks_arrive():
    config = ReplayConfig(buffer_rows=10, fraction=0.2, seed=3)
    buffer: dict = {}
    for t, name in enumerate(["a", "b", "c", "d"], start=1):
        buffer = add_task(buffer, name, rows(name, 50), config)
        sizes = [len(kept) for kept in buffer.values()]
        assert sum(sizes) == 10 and sizes == shares(10, t) and max(sizes) - min(sizes) <= 1
    assert list(buffer) == ["a", "b", "c", "d"]
    assert all(row["prompt"].startswith(name) for name, kept in buffer.items() for row in kept)


def test_a_shrinking_share_keeps_the_first_rows_of_the_task_s_draw():
    config = ReplayConfig(buffer_rows=12, count=4, seed=0)
    after_one = add_task({}, "a", rows("a", 30), config)
    after_three = add_task(add_task(after_one, "b", rows("b", 30), config), "c", rows("c", 30), config)
    assert after_three["a"] == after_one["a"][:4]
    assert len(after_one["a"]) == 12 and after_one["a"] != rows("a", 30)[:12]  # a seeded draw, not the head


def test_the_draw_depends_on_the_seed_and_the_task_not_on_the_process():
    one = add_task({}, "a", rows("a", 40), ReplayConfig(buffer_rows=8, fraction=0.5, seed=1))
    again = add_task({}, "a", rows("a", 40), ReplayConfig(buffer_rows=8, fraction=0.5, seed=1))
    other = add_task({}, "a", rows("a", 40), ReplayConfig(buffer_rows=8, fraction=0.5, seed=2))
    assert one == again and one != other


def test_a_task_with_fewer_rows_than_its_share_keeps_them_all():
    buffer = add_task({}, "small", rows("small", 3), ReplayConfig(buffer_rows=10, fraction=0.2))
    assert len(buffer["small"]) == 3


def test_fraction_is_the_replayed_share_of_the_mixed_training_set():
    config = ReplayConfig(buffer_rows=5, fraction=0.2)
    assert replay_count(40, config, buffered=5) == 10  # 10 of the 50 rows trained on are replayed
    assert replay_count(40, config, buffered=0) == 0
    assert replay_count(40, ReplayConfig(buffer_rows=5, count=7), buffered=5) == 7
    buffer = add_task({}, "a", rows("a", 5), config)
    replayed = replayed_rows(buffer, "b", 40, config)
    assert len(replayed) == 10 and {json.dumps(r) for r in replayed} == {json.dumps(r) for r in buffer["a"]}
    assert replayed == replayed_rows(buffer, "b", 40, config)  # seeded
    assert replayed_rows({}, "b", 40, config) == []


def test_rows_with_line_separators_and_tasks_that_keep_no_row_survive_the_round_trip():
    config = ReplayConfig(buffer_rows=2, count=1)
    buffer = add_task({}, "odd", [{"prompt": "a\u2028b\x85c\u2029d", "completion": " x"}], config)
    buffer = add_task(add_task(buffer, "b", rows("b", 3), config), "c", rows("c", 3), config)
    assert [len(kept) for kept in buffer.values()] == [1, 1, 0]  # three tasks share two rows
    assert decode(encode(buffer), "replay.jsonl") == buffer


def test_rows_that_json_cannot_hold_are_refused_naming_the_row():
    assert plain_rows([{"b": (1, 2), "a": "x"}], "here") == [{"a": "x", "b": [1, 2]}]
    with pytest.raises(ReplayError, match=r"Task 'a', training rows, row 2: replay keeps training rows as JSON"):
        plain_rows([{"text": "ok"}, {"image": b"\x89PNG"}], "Task 'a', training rows")


def test_the_buffer_round_trips_through_its_bytes():
    buffer = add_task(
        add_task({}, "a", rows("a", 4), ReplayConfig(buffer_rows=6, fraction=0.1)),
        "b",
        rows("b", 4),
        ReplayConfig(buffer_rows=6, fraction=0.1),
    )
    assert decode(encode(buffer), "replay.jsonl") == buffer
    assert describe(buffer) == {"rows": {"a": 3, "b": 3}, "bytes": len(encode(buffer))}
    with pytest.raises(ReplayError, match="replay.jsonl, line 2"):
        decode(b'{"task": "a", "row": {}}\nnot json\n', "replay.jsonl")


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"buffer_rows": 0, "fraction": 0.2}, "replay.buffer_rows"),
        ({"buffer_rows": 2.5, "fraction": 0.2}, "replay.buffer_rows"),
        ({"buffer_rows": True, "fraction": 0.2}, "replay.buffer_rows"),
        ({"buffer_rows": 10, "fraction": 1.0}, "replay.fraction"),
        ({"buffer_rows": 10, "fraction": -0.1}, "replay.fraction"),
        ({"buffer_rows": 10, "fraction": float("nan")}, "replay.fraction"),
        ({"buffer_rows": 10, "count": -1}, "replay.count"),
        ({"buffer_rows": 10}, "fraction"),
        ({"buffer_rows": 10, "fraction": 0.2, "count": 3}, "not both"),
    ],
)
def test_bad_replay_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(ReplayError, match=field) as raised:
        ReplayConfig(**settings)
    assert isinstance(raised.value, MergeForgetError)


def test_a_recipe_mapping_with_an_unknown_key_is_refused_where_it_is_set():
    with pytest.raises(ReplayError, match=r"recipe.yaml: replay: unknown key\(s\) \['fractoin'\]"):
        ReplayConfig.from_mapping({"buffer_rows": 10, "fractoin": 0.2}, where="recipe.yaml: replay")


def test_replayed_rows_must_have_the_later_task_s_fields():
    check_fields({"a": ["completion", "prompt"]}, "b", ["prompt", "completion"], "here")
    refusal = (
        r"task 'b' has the fields \['messages'\], but task 'a'.* turn replay off \(a sequence already started keeps "
        r"its replay settings: start a new one in another output directory\)\.$"
    )
    with pytest.raises(ReplayError, match=refusal):
        check_fields({"a": ["completion", "prompt"]}, "b", ["messages"], "here")
    # Rows already kept in a state: a resumed sequence keeps replay on, so the refusal says what else to do.
    with pytest.raises(ReplayError) as raised:
        check_fields({"a": ["completion", "prompt"]}, "b", ["messages"], "here", resumed_advice("out/state"))
    assert "out/state's replay buffer holds the earlier rows" in str(raised.value)
    assert "turn replay off" not in str(raised.value)


def _state(replay: ReplayConfig | None) -> ContinualState:
    signature = LoRASignature(ranks={"layer": 2}, lora_alpha=4.0, use_rslora=False, target_modules=["q_proj"])
    fingerprint = BaseModelFingerprint(architecture={"model_type": "llama"}, embedding_signature=None)
    return ContinualState(signature, fingerprint, MergeForgetConfig(), {"r": 2}, replay=replay)


def _lora(seed: int) -> dict[str, LoRAPair]:
    generator = torch.Generator().manual_seed(seed)
    return {"layer": LoRAPair(torch.randn(2, 6, generator=generator), torch.randn(6, 2, generator=generator))}


def test_the_buffer_is_saved_and_checked_with_the_snapshot(tmp_path):
    replay = ReplayConfig(buffer_rows=6, fraction=0.25, seed=5)
    state = finished_state(_state(replay), "a", _lora(0), train_rows=rows("a", 20))
    state = finished_state(state, "b", _lora(1), train_rows=rows("b", 20))
    assert state.history[-1]["replay_buffer"] == describe(state.replay_buffer)
    snapshot = save_state(state, tmp_path / "state")
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["replay"] == replay.to_dict() and REPLAY_FILE in manifest["sha256"]
    loaded = load_state(tmp_path / "state")
    assert loaded.replay == replay and loaded.replay_buffer == state.replay_buffer
    assert replay_for(loaded, "c", 30, replay) == replay_for(state, "c", 30, replay)
    loaded.check_replay(replay, "here")
    with pytest.raises(StateMismatchError, match="replay"):
        loaded.check_replay(None, "here")
    # A buffer that disagrees with its manifest is refused, naming the file.
    (snapshot / REPLAY_FILE).write_bytes((snapshot / REPLAY_FILE).read_bytes().replace(b"a question", b"A question"))
    with pytest.raises(StateError, match=r"replay.jsonl is missing or does not match the checksum"):
        load_state(tmp_path / "state")


def test_a_state_without_replay_has_no_buffer_file_and_loads_as_before(tmp_path):
    state = finished_state(_state(None), "a", _lora(0))
    snapshot = save_state(state, tmp_path / "state")
    assert not (snapshot / REPLAY_FILE).exists()
    assert "replay" not in json.loads((snapshot / "manifest.json").read_text())
    loaded = load_state(tmp_path / "state")
    assert loaded.replay is None and loaded.replay_buffer == {}
    assert replay_for(loaded, "b", 10, None) == []
