"""The continual state carried between tasks, saved as safetensors + JSON and written atomically.

A state directory holds one snapshot per finished task (``task-0003/`` after the third task). A
snapshot is written in a temporary directory and renamed into place, so a crash or kill leaves
either the old snapshot or the new one, never half of one. The previous snapshot is kept until the
next one is complete, then older ones are removed: the directory stays at two snapshots whatever
the number of tasks.

Each snapshot holds:

- ``manifest.json``: format version, the finished task names, the strategy, the LoRA signature,
  the base model fingerprint, the PEFT adapter config and a SHA-256 of every tensor file.
- ``merged.safetensors``: the running merged LoRA (what users deploy).
- ``finetuned.safetensors``: the last task's fine-tuned LoRA (the next task starts from it).
- ``replay.jsonl``, when the sequence replays: the buffer of earlier tasks' training rows
  (:mod:`mergeforget_plugin.core.replay`), checksummed like the tensors, so a kill never leaves a
  buffer that disagrees with the LoRA. Snapshots written without replay have no such file.

Nothing here unpickles: tensors are read with safetensors, metadata with ``json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import StateError, StateMismatchError
from . import replay as replay_buffer
from .atomic import fsync_dir, private_staging_dir, write_synced
from .faults import pause_point
from .slao import LoRAPair, MergeForgetConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MERGED_FILE = "merged.safetensors"
FINETUNED_FILE = "finetuned.safetensors"
REPLAY_FILE = "replay.jsonl"
_SNAPSHOT_PATTERN = re.compile(r"^task-(\d{4,})$")
# bf16/fp16 rounding moves an embedding value by at most 2**-8 relative; different checkpoints
# differ by the scale of the weights themselves.
_SIGNATURE_RTOL = 2e-2
_SIGNATURE_ATOL = 1e-4


# Architecture keys that identify a base model; dtype, paths and quantization are left out on
# purpose so that the same model loaded in 4-bit or bf16 keeps its fingerprint.
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


def architecture_of(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The identifying keys of a model config (``config.json`` or ``PretrainedConfig.to_dict()``)."""
    return {key: model_config[key] for key in ARCHITECTURE_KEYS if key in model_config}


PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
SAFE_ADAPTER_FILE = "adapter_model.safetensors"


def pickled_adapter_problem(directory: str | os.PathLike[str], field: str) -> str | None:
    """Why the adapter in ``directory`` must not be loaded, or ``None`` when it is safetensors (or absent).

    Pickle files can run arbitrary code when loaded, so an adapter that exists only as
    ``adapter_model.bin`` (or ``.pt``/``.pkl``...) is refused rather than unpickled.
    """
    folder = Path(directory)
    if not folder.is_dir() or (folder / SAFE_ADAPTER_FILE).is_file():
        return None
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickled:
        return None
    return (
        f"{field}: {folder} holds {', '.join(pickled)}, pickle file(s) that can run code when loaded; "
        f"mergeforget-plugin loads adapters only from {SAFE_ADAPTER_FILE}. Convert it once where you trust "
        "the file (torch.load(path, weights_only=True), then safetensors.torch.save_file) or point "
        f"{field} at a safetensors adapter."
    )


@dataclass(frozen=True)
class LoRASignature:
    """What must stay the same across all tasks of a sequence for one LoRA to be carried."""

    ranks: dict[str, int]
    lora_alpha: float
    use_rslora: bool
    target_modules: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranks": dict(sorted(self.ranks.items())),
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": sorted(self.target_modules),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRASignature:
        return cls(
            ranks={str(k): int(v) for k, v in data["ranks"].items()},
            lora_alpha=float(data["lora_alpha"]),
            use_rslora=bool(data["use_rslora"]),
            target_modules=list(data["target_modules"]),
        )

    def mismatches(self, other: LoRASignature, other_name: str = "the model") -> list[str]:
        """Human-readable differences between the state's signature (self) and ``other``'s."""
        problems = []
        if sorted(self.target_modules) != sorted(other.target_modules):
            problems.append(
                f"target modules {sorted(self.target_modules)} in the state "
                f"vs {sorted(other.target_modules)} in {other_name}"
            )
        elif set(self.ranks) != set(other.ranks):
            missing = sorted(set(self.ranks) - set(other.ranks))[:3]
            extra = sorted(set(other.ranks) - set(self.ranks))[:3]
            problems.append(
                f"adapted modules differ (missing from {other_name}: {missing}; new in {other_name}: {extra})"
            )
        else:
            differing = [name for name in self.ranks if self.ranks[name] != other.ranks[name]]
            if differing:
                name = differing[0]
                problems.append(
                    f"LoRA rank r={self.ranks[name]} in the state vs r={other.ranks[name]} in {other_name} "
                    f"(e.g. {name}; {len(differing)} module(s) differ)"
                )
        if not math.isclose(self.lora_alpha, other.lora_alpha):
            problems.append(f"lora_alpha={self.lora_alpha:g} in the state vs {other.lora_alpha:g} in {other_name}")
        if self.use_rslora != other.use_rslora:
            problems.append(f"use_rslora={self.use_rslora} in the state vs {other.use_rslora} in {other_name}")
        return problems


def _signatures_match(first: list[float], second: list[float]) -> bool:
    return len(first) == len(second) and all(
        math.isclose(a, b, rel_tol=_SIGNATURE_RTOL, abs_tol=_SIGNATURE_ATOL) for a, b in zip(first, second, strict=True)
    )


def _preview(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values[:3]) + ", ...]"


@dataclass(frozen=True)
class BaseModelFingerprint:
    """Identifies the frozen base model: its architecture and a signature of its input embedding."""

    architecture: dict[str, Any]
    embedding_signature: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "embedding_signature": self.embedding_signature}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseModelFingerprint:
        return cls(architecture=dict(data["architecture"]), embedding_signature=data.get("embedding_signature"))

    def mismatches(self, other: BaseModelFingerprint, other_name: str = "the model") -> list[str]:
        """Differences in the architecture keys both sides know, then in the embedding signature.

        A key only one side has (an older config without ``head_dim``, say) is not a difference;
        ``model_type`` and the sizes tell models apart.
        """
        problems = [
            f"{key}={self.architecture[key]!r} in the state vs {other.architecture[key]!r} in {other_name}"
            for key in ARCHITECTURE_KEYS
            if key in self.architecture
            and key in other.architecture
            and self.architecture[key] != other.architecture[key]
        ]
        if (
            not problems
            and self.embedding_signature is not None
            and other.embedding_signature is not None
            and not _signatures_match(self.embedding_signature, other.embedding_signature)
        ):
            problems.append(
                "same architecture but different weights (the first input-embedding values are "
                f"{_preview(self.embedding_signature)} in the state "
                f"vs {_preview(other.embedding_signature)} in {other_name})"
            )
        return problems


@dataclass
class ContinualState:
    """Everything a sequence needs to go on after ``len(finished_tasks)`` tasks.

    ``merged`` and ``finetuned`` are empty before the first task finishes. ``replay`` is the
    replay settings the sequence started with (``None``: no replay) and ``replay_buffer`` the rows
    kept, by task.
    """

    signature: LoRASignature
    base_model: BaseModelFingerprint
    config: MergeForgetConfig
    adapter_config: dict[str, Any]
    finished_tasks: list[str] = field(default_factory=list)
    merged: dict[str, LoRAPair] = field(default_factory=dict)
    finetuned: dict[str, LoRAPair] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    replay: replay_buffer.ReplayConfig | None = None
    replay_buffer: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def next_task_index(self) -> int:
        """The 1-based index of the task that runs next."""
        return len(self.finished_tasks) + 1

    def check_compatible(
        self, signature: LoRASignature, base_model: BaseModelFingerprint, where: str, other_name: str = "the model"
    ) -> None:
        """Raise :class:`StateMismatchError` naming every difference between the state and a model.

        ``other_name`` says what the signature and fingerprint were read from: a loaded model, or
        a config before any model is loaded (the recipe runner's pre-flight).
        """
        problems = [f"base model: {p}" for p in self.base_model.mismatches(base_model, other_name)]
        problems += [f"LoRA: {p}" for p in self.signature.mismatches(signature, other_name)]
        if problems:
            raise StateMismatchError(
                f"The continual state in {where} was made for a different setup and cannot be continued:\n  - "
                + "\n  - ".join(problems)
                + "\nTrain with the same base model and LoRA settings as the earlier tasks, or start a new "
                "sequence in an empty state directory."
            )

    def check_config(self, config: MergeForgetConfig, where: str) -> None:
        """Raise :class:`StateMismatchError` unless ``config`` is the strategy the sequence started with."""
        if config != self.config:
            raise StateMismatchError(
                f"The continual state in {where} was made with {self.config.to_dict()}, but this run asks for "
                f"{config.to_dict()}. A sequence keeps one strategy from start to end: use the same settings, "
                "or start a new sequence in an empty state directory."
            )

    def check_replay(self, replay: replay_buffer.ReplayConfig | None, where: str) -> None:
        """Raise :class:`StateMismatchError` unless ``replay`` is what the sequence started with: the
        buffer's size and draw are fixed for a sequence, like its strategy."""
        before = self.replay.to_dict() if self.replay is not None else None
        now = replay.to_dict() if replay is not None else None
        if before != now:
            raise StateMismatchError(
                f"The continual state in {where} was made with replay {before or 'off'}, but this run asks for "
                f"{now or 'no replay'}. A sequence keeps its replay settings from start to end: use the same "
                "ones, or start a new sequence in an empty state directory."
            )


# safetensors' names for the dtypes a LoRA factor can have.
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """Write ``tensors`` to ``path`` in the safetensors format, fsync it, and return its SHA-256.

    The package's one safetensors writer: state snapshots and exported adapters both use it.

    The bytes go from each tensor's memory straight to the file, and are hashed on a second thread
    while they are written: no serialized copy of the whole file and no re-read for the checksum.
    (Written here rather than by safetensors' own writer, so a failed write is an ``OSError`` with
    its errno.) ``safetensors.torch.load_file`` reads the result.
    """
    header: dict[str, Any] = {}
    chunks: list[memoryview] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise StateError(f"{name}: LoRA weights of dtype {tensor.dtype} cannot be saved; use a float dtype.")
        raw = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }
        chunks.append(raw)
        offset += raw.nbytes
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    chunks.insert(0, memoryview(struct.pack("<Q", len(encoded)) + encoded))

    def digest() -> str:
        hashed = hashlib.sha256()
        for chunk in chunks:
            hashed.update(chunk)
        return hashed.hexdigest()

    with ThreadPoolExecutor(max_workers=1) as pool:
        checksum = pool.submit(digest)  # hashlib and file writes both release the GIL
        with open(path, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        return checksum.result()


# The snapshot this process wrote or verified last, per state directory: a task that begins in the
# process where the previous one ended reuses it instead of reading and hashing hundreds of
# megabytes again, as long as the snapshot's files are untouched since (same manifest text, same
# size, modification time and inode of every file); any rewrite sends the load through the checksums.
_RECENT: dict[Path, tuple[Path, tuple[Any, ...], ContinualState]] = {}


def _stamp(snapshot: Path) -> tuple[Any, ...]:
    """What changes when any file of ``snapshot`` is rewritten: its manifest text and each file's stat."""
    names = [MANIFEST, MERGED_FILE, FINETUNED_FILE] + ([REPLAY_FILE] if (snapshot / REPLAY_FILE).exists() else [])
    stats = [os.stat(snapshot / name) for name in names]
    return ((snapshot / MANIFEST).read_text(), *((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensors_of(weights: Mapping[str, LoRAPair]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, pair in weights.items():
        tensors[f"{name}.lora_A"] = pair.a.detach().to("cpu").contiguous()
        tensors[f"{name}.lora_B"] = pair.b.detach().to("cpu").contiguous()
    return tensors


def save_lora_file(path: Path, weights: Mapping[str, LoRAPair]) -> str:
    """One LoRA as a safetensors file (``<module>.lora_A`` / ``.lora_B``, as in a snapshot); its SHA-256."""
    return write_safetensors(path, _tensors_of(weights))


def _weights_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, LoRAPair]:
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    return {name: LoRAPair(tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]) for name in names}


def snapshot_dirs(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Finished-task snapshots in ``state_dir``, oldest first."""
    root = Path(state_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _SNAPSHOT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def check_writable(directory: str | os.PathLike[str], what: str = "state directory") -> None:
    """Raise :class:`StateError` unless a file can be written and synced in ``directory`` (created if needed).

    Run before training, so a read-only or full disk stops the run before any work is spent.
    """
    folder = Path(directory)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_synced(probe, b"mergeforget")
        probe.unlink()
    except OSError as error:
        raise StateError(
            f"The {what} {folder} is not writable ({error.strerror or error}). Nothing was trained or replaced: "
            "choose a writable directory with free space, then run again."
        ) from error


def save_state(state: ContinualState, state_dir: str | os.PathLike[str], *, keep: int = 2) -> Path:
    """Write ``state`` as a new snapshot of ``state_dir`` atomically and return the snapshot path.

    The snapshot is complete on disk (files and directory fsynced) before it gets its final name,
    and older snapshots beyond the newest ``keep`` are removed only after that.
    """
    if not state.finished_tasks:
        raise StateError("A state is saved after a task finishes; this one has no finished task.")
    root = Path(state_dir)
    check_writable(root)
    final = root / f"task-{len(state.finished_tasks):04d}"
    staging = private_staging_dir(root, prefix=f".{final.name}.")
    try:
        files = {MERGED_FILE: state.merged, FINETUNED_FILE: state.finetuned}
        checksums = {}
        for filename, weights in files.items():
            checksums[filename] = write_safetensors(staging / filename, _tensors_of(weights))
            pause_point("state-write", len(state.finished_tasks))
        if state.replay is not None:
            encoded = replay_buffer.encode(state.replay_buffer)
            checksums[REPLAY_FILE] = hashlib.sha256(encoded).hexdigest()
            write_synced(staging / REPLAY_FILE, encoded)
        manifest = {
            "format_version": FORMAT_VERSION,
            "finished_tasks": state.finished_tasks,
            "config": state.config.to_dict(),
            "lora": state.signature.to_dict(),
            "base_model": state.base_model.to_dict(),
            "adapter_config": state.adapter_config,
            "history": state.history,
            "sha256": checksums,
        }
        if state.replay is not None:
            manifest["replay"] = state.replay.to_dict()
        write_synced(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        fsync_dir(staging)
        if final.exists():
            # A snapshot for this task count already exists (a task re-run after a crash between
            # rename and return). Replace it: the new one is complete.
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_dir(root)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            kept = snapshot_dirs(root)
            raise StateError(
                f"Could not write the state of task {len(state.finished_tasks)} to {root} ({error.strerror or error}). "
                + (f"The previous snapshot {kept[-1]} is untouched. " if kept else "")
                + "Free space or fix permissions, then resume to redo the task."
            ) from error
        raise
    _RECENT[root.resolve()] = (final.resolve(), _stamp(final), state)
    pause_point("state-commit", len(state.finished_tasks))
    tidy_state_dir(root, keep=keep)
    return final


def tidy_state_dir(state_dir: str | os.PathLike[str], *, keep: int = 2) -> None:
    """Remove snapshots older than the newest ``keep`` and staging directories of interrupted writes.

    Only the one process that writes the state may call this (a runner holding the output
    directory's lock, or :func:`save_state`): a staging directory is assumed abandoned.
    """
    root = Path(state_dir)
    if not root.is_dir():
        return
    for leftover in root.glob(".task-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in snapshot_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_state(state_dir: str | os.PathLike[str]) -> ContinualState | None:
    """Load the newest snapshot of ``state_dir``; ``None`` when no task has finished yet.

    Raises :class:`StateError` naming the file when a snapshot is newer than this package,
    truncated, corrupted or not what its manifest says.
    """
    snapshots = snapshot_dirs(state_dir)
    if not snapshots:
        return None
    return load_snapshot(snapshots[-1], previous=snapshots[-2] if len(snapshots) > 1 else None)


def finished_task_names(state_dir: str | os.PathLike[str]) -> list[str]:
    """The finished tasks of the newest snapshot, read from its manifest alone (no tensors).

    For progress checks between tasks; :func:`load_state` verifies the tensor files.
    """
    snapshots = snapshot_dirs(state_dir)
    if not snapshots:
        return []
    try:
        return list(json.loads((snapshots[-1] / MANIFEST).read_text())["finished_tasks"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StateError(f"Cannot read {snapshots[-1] / MANIFEST}: {error}.") from error


def _read_manifest(manifest_path: Path, recovery: str) -> dict[str, Any]:
    """A snapshot's manifest, refused unless it is a mergeforget state this version reads."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise StateError(f"Cannot read {manifest_path}: {error}.{recovery}") from error
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise StateError(f"{manifest_path} has no integer format_version: it is not a mergeforget state.{recovery}")
    if version > FORMAT_VERSION:
        raise StateError(
            f"{manifest_path} has format_version {version}, newer than the {FORMAT_VERSION} this version of "
            "mergeforget-plugin reads. Upgrade mergeforget-plugin to continue this sequence."
        )
    return manifest


def load_snapshot(snapshot: Path, *, previous: Path | None = None) -> ContinualState:
    recovery = (
        f" The previous task's snapshot {previous} is intact: delete {snapshot} and resume to redo that task."
        if previous is not None
        else f" Delete {snapshot} and resume to redo that task."
    )
    manifest_path = snapshot / MANIFEST
    recent = _RECENT.get(snapshot.parent.resolve())
    if recent is not None and recent[0] == snapshot.resolve():
        try:
            if recent[1] == _stamp(snapshot):
                return _fresh_copy(recent[2])
        except OSError:
            pass  # a file is gone: the full load below names it
    manifest = _read_manifest(manifest_path, recovery)
    try:
        tensors = {}
        for filename in (MERGED_FILE, FINETUNED_FILE):
            path = snapshot / filename
            expected = manifest["sha256"][filename]
            if not path.is_file() or _sha256(path) != expected:
                raise StateError(f"{path} is missing or does not match the checksum in its manifest.{recovery}")
            tensors[filename] = _weights_of(load_file(str(path)))
        replay, kept = None, {}
        if manifest.get("replay") is not None:  # older snapshots and runs without replay have none
            path = snapshot / REPLAY_FILE
            data = path.read_bytes() if path.is_file() else None
            if data is None or hashlib.sha256(data).hexdigest() != manifest["sha256"].get(REPLAY_FILE):
                raise StateError(f"{path} is missing or does not match the checksum in its manifest.{recovery}")
            replay = replay_buffer.ReplayConfig.from_mapping(manifest["replay"], where=f"{manifest_path}: replay")
            kept = replay_buffer.decode(data, str(path))
        state = ContinualState(
            signature=LoRASignature.from_dict(manifest["lora"]),
            base_model=BaseModelFingerprint.from_dict(manifest["base_model"]),
            config=MergeForgetConfig(**manifest["config"]),
            adapter_config=dict(manifest["adapter_config"]),
            finished_tasks=list(manifest["finished_tasks"]),
            merged=tensors[MERGED_FILE],
            finetuned=tensors[FINETUNED_FILE],
            history=list(manifest.get("history", [])),
            replay=replay,
            replay_buffer=kept,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise StateError(f"{manifest_path} is malformed ({type(error).__name__}: {error}).{recovery}") from error
    try:
        _RECENT[snapshot.parent.resolve()] = (snapshot.resolve(), _stamp(snapshot), state)
    except OSError:
        pass
    return _fresh_copy(state)


def _fresh_copy(state: ContinualState) -> ContinualState:
    """The same state in new containers (a caller may extend its lists); tensors are never changed in place."""
    return replace(
        state,
        merged=dict(state.merged),
        finetuned=dict(state.finetuned),
        finished_tasks=list(state.finished_tasks),
        history=list(state.history),
        replay_buffer={task: [dict(row) for row in rows] for task, rows in state.replay_buffer.items()},
    )
