"""Moving LoRA factors between a PEFT model, the SLAO math and a standard PEFT adapter directory.

Works for LoRA on ``nn.Linear`` and on bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` bases
(QLoRA): in all of them PEFT keeps ``lora_A`` and ``lora_B`` as ordinary float ``nn.Linear``
layers beside the frozen base, so the same read and write serve every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from .core.export import PEFT_PREFIX
from .core.slao import LoRAPair
from .core.state import BaseModelFingerprint, LoRASignature, architecture_of
from .errors import StateError, UnsupportedAdapterError

# LoRA inits that rewrite the frozen base weights: a sequence cannot carry them from task to task.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def _module_key(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP and similar wrappers keep the real model in .module.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def lora_layers(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, LoraLayer]:
    """Every LoRA layer of ``model`` that carries ``adapter_name``, keyed by its module path."""
    model = _unwrap(model)
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter_name in getattr(module, "lora_embedding_A", {}):
            raise UnsupportedAdapterError(
                f"{_module_key(name)} is an embedding LoRA; mergeforget carries LoRA on linear layers only. "
                "Remove embedding modules from target_modules."
            )
        if adapter_name in module.lora_A:
            layers[_module_key(name)] = module
    if not layers:
        raise UnsupportedAdapterError(
            f"The model has no LoRA layers for adapter {adapter_name!r}. Wrap it with peft.get_peft_model "
            "(or let TRL/Axolotl do it) before training a task."
        )
    return layers


def _peft_config(model: torch.nn.Module, adapter_name: str) -> Any:
    configs = getattr(_unwrap(model), "peft_config", None)
    if not configs or adapter_name not in configs:
        raise UnsupportedAdapterError(f"The model has no PEFT config for adapter {adapter_name!r}.")
    return configs[adapter_name]


def lora_signature(model: torch.nn.Module, adapter_name: str = "default") -> LoRASignature:
    """The rank per module, alpha, rsLoRA flag and target modules of ``model``'s LoRA.

    Raises :class:`UnsupportedAdapterError` for LoRA variants SLAO cannot carry (DoRA, LoRA with
    bias, inits that rewrite the base weights).
    """
    config = _peft_config(model, adapter_name)
    if (
        getattr(config, "peft_type", None) is not None
        and str(getattr(config.peft_type, "value", config.peft_type)) != "LORA"
    ):
        raise UnsupportedAdapterError(f"Adapter {adapter_name!r} is {config.peft_type}, not LoRA.")
    if getattr(config, "use_dora", False):
        raise UnsupportedAdapterError(
            "use_dora=True: DoRA adds a magnitude vector that the SLAO merge does not define. Set use_dora=False."
        )
    if getattr(config, "lora_bias", False):
        raise UnsupportedAdapterError("lora_bias=True is not supported: SLAO merges A and B only. Set lora_bias=False.")
    init = getattr(config, "init_lora_weights", True)
    if isinstance(init, str) and init.split("_")[0].lower() in _BASE_REWRITING_INITS:
        raise UnsupportedAdapterError(
            f"init_lora_weights={init!r} rewrites the frozen base weights, which a task sequence must keep "
            "fixed. Use the default init (init_lora_weights=True)."
        )
    layers = lora_layers(model, adapter_name)
    target = config.target_modules
    targets = sorted(target) if isinstance(target, (set, list, tuple)) else [str(target)]
    return LoRASignature(
        ranks={name: int(layer.r[adapter_name]) for name, layer in layers.items()},
        lora_alpha=float(config.lora_alpha),
        use_rslora=bool(config.use_rslora),
        target_modules=targets,
    )


def base_model_fingerprint(model: torch.nn.Module) -> BaseModelFingerprint:
    """Architecture keys of the model config plus a dtype-robust signature of the input embedding."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    architecture = architecture_of(config.to_dict() if config is not None else {})
    signature = None
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if get_embeddings is not None else None
    weight = getattr(embeddings, "weight", None)
    # Rows past the original vocabulary may be added by a tokenizer resize; the first rows stay.
    if weight is not None and (_partitioned(weight) or (weight.numel() > 0 and weight.ndim == 2)):
        corner = _first_rows(weight.detach() if not _partitioned(weight) else weight)
        if corner is not None:
            signature = [float(v) for v in corner.to(torch.float32).flatten()]
    return BaseModelFingerprint(architecture=architecture, embedding_signature=signature)


def _first_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight[:4, :8]``; for a sharded embedding (FSDP2 rows, ZeRO-3 flat partitions), sent from
    the process holding the first rows instead of gathering a vocabulary-sized matrix.
    ``None``: sharded some other way."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if _partitioned(weight):
        # ZeRO-3: partitions of the flattened tensor, of equal size on every process; the first
        # process's starts with the first rows.
        rows, columns = tuple(weight.ds_shape)
        local = weight.ds_tensor
        if local.numel() < 4 * columns:
            return None
        return _sent_corner(lambda: local.detach()[: 4 * columns].view(4, columns), columns, local.dtype, source=0)
    if not isinstance(weight, DTensor):
        return weight[:4, :8]
    if not all(p.is_replicate() or (isinstance(p, Shard) and p.dim == 0) for p in weight.placements):
        return None
    local = weight.to_local()
    if all(isinstance(p, Replicate) for p in weight.placements):
        return local[:4, :8]
    # Decided from the global shape, the same on every process: the first shard has the 4 rows.
    if weight.shape[0] < 4 * weight.device_mesh.size():
        return None
    source = int(weight.device_mesh.mesh.flatten()[0])  # mesh coordinate 0 holds the first rows
    return _sent_corner(lambda: local[:4], weight.shape[1], local.dtype, source=source)


def _sent_corner(first_rows, columns: int, dtype: torch.dtype, *, source: int) -> torch.Tensor:
    """The 4x8 corner, taken by process ``source`` from ``first_rows()`` (its 4 first rows) and
    broadcast to every process."""
    corner = torch.empty(4, min(8, columns), dtype=dtype, device=_collective_device())
    if torch.distributed.get_rank() == source:
        corner.copy_(first_rows()[:, : corner.shape[1]])
    torch.distributed.broadcast(corner, src=source)
    return corner


def _collective_device() -> torch.device:
    # Where a collective's tensors must be: the current GPU for NCCL, the CPU otherwise (gloo),
    # whatever device an offloaded shard sits on.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _partitioned(weight: torch.Tensor) -> bool:
    # DeepSpeed ZeRO-3 leaves an empty placeholder with a `ds_id` where the parameter was.
    return hasattr(weight, "ds_id")


def _sharded(weight: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    if _partitioned(weight):
        return True
    return isinstance(weight, DTensor) and not all(placement.is_replicate() for placement in weight.placements)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any weight of ``model`` is sharded across processes (FSDP2, DeepSpeed ZeRO-3): then
    every process must take part in running the model (forward passes gather the shards) and in
    reading and writing the LoRA."""
    return any(_sharded(param) for param in _unwrap(model).parameters())


def _whole(weight: torch.Tensor) -> torch.Tensor:
    """All of ``weight``, on the CPU. A sharded factor (FSDP2 or ZeRO-3) is gathered: every process
    must call this for the same factors in the same order. One factor at a time, so a process
    never holds more of the LoRA in accelerator memory than its shards and one gathered factor."""
    from torch.distributed.tensor import DTensor

    if _partitioned(weight):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return weight.detach().to("cpu", copy=True)
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    return weight.detach().to("cpu", copy=True)


def _load(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` (the whole factor) into ``param``. Sharded, this is a collective and the first
    process's values are what every shard receives, even if the processes computed them apart."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if _partitioned(param):
        import deepspeed

        value = value.to(device=_collective_device(), dtype=torch.float32, copy=True)  # the caller's stays
        torch.distributed.broadcast(value, src=0)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.copy_(value)
        _load_optimizer_copy(param, value)
    elif isinstance(param, DTensor):
        local = param.to_local()
        value = distribute_tensor(value.to(device=local.device, dtype=local.dtype), param.device_mesh, param.placements)
        local.copy_(value.to_local())
    else:
        param.copy_(value.to(device=param.device, dtype=param.dtype))
        _load_optimizer_copy(param, value)


def _load_optimizer_copy(param: torch.Tensor, value: torch.Tensor) -> None:
    # DeepSpeed's ZeRO optimizers (stages 1-3) keep their own float32 copy of (their partition of)
    # every trained parameter and copy it over the parameter after each step: a value written only
    # into the parameter would be undone by the task's first step. Measured on ZeRO-3 before this
    # was added: task 2's LoRA ended near task 1's instead of starting from the orthogonal init.
    if hasattr(param, "_z3_optimizer") or getattr(param, "_hp_mapping", None) is not None:
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value.to(torch.float32))


def read_lora(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, LoRAPair]:
    """Copies of every module's ``(lora_A, lora_B)`` weights, on the CPU, in their own dtype.

    Sharded (FSDP2, ZeRO-3), this is a collective: every process gets the whole LoRA."""
    return {
        name: LoRAPair(
            _whole(layer.lora_A[adapter_name].weight),
            _whole(layer.lora_B[adapter_name].weight),
        )
        for name, layer in lora_layers(model, adapter_name).items()
    }


def write_lora(model: torch.nn.Module, weights: Mapping[str, LoRAPair], adapter_name: str = "default") -> None:
    """Copy ``weights`` into the model's LoRA parameters in place (optimizers keep their references).

    Sharded (FSDP2, ZeRO-3), this is a collective that gives every shard the first process's values."""
    layers = lora_layers(model, adapter_name)
    if set(layers) != set(weights):
        missing = sorted(set(layers) - set(weights))[:3]
        raise StateError(f"The weights to load do not cover the model's LoRA modules (e.g. missing {missing}).")
    with torch.no_grad():
        for name, layer in layers.items():
            for part, param, value in (
                ("lora_A", layer.lora_A[adapter_name].weight, weights[name].a),
                ("lora_B", layer.lora_B[adapter_name].weight, weights[name].b),
            ):
                shape = tuple(param.ds_shape) if _partitioned(param) else tuple(param.shape)
                if shape != tuple(value.shape):
                    raise StateError(f"{name}.{part}: shape {tuple(value.shape)} cannot be loaded into {shape}.")
                _load(param, value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def adapter_config_dict(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, Any]:
    """The model's PEFT adapter config as the JSON that ``save_pretrained`` would write."""
    config = _peft_config(model, adapter_name)
    data = _jsonable(config.to_dict())
    data["inference_mode"] = True
    return data


def describe_model(model: torch.nn.Module, adapter_name: str = "default") -> tuple[LoRASignature, BaseModelFingerprint]:
    """Both things a state is checked against, for ``model``."""
    return lora_signature(model, adapter_name), base_model_fingerprint(model)


__all__ = [
    "UnsupportedAdapterError",
    "adapter_config_dict",
    "base_model_fingerprint",
    "describe_model",
    "is_sharded",
    "lora_layers",
    "lora_signature",
    "read_lora",
    "write_lora",
]
