"""Reading and writing LoRA factors of real PEFT models (plain and bitsandbytes 4-bit), and export."""

from __future__ import annotations

import json

import pytest
import torch

from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig
from mergeforget_plugin.core.state import ContinualState
from mergeforget_plugin.errors import UnsupportedAdapterError
from mergeforget_plugin.evaluation.model_card import export_adapter
from mergeforget_plugin.peft_bridge import (
    adapter_config_dict,
    base_model_fingerprint,
    lora_layers,
    lora_signature,
    read_lora,
    write_lora,
)


def random_like(weights: dict[str, LoRAPair], seed: int) -> dict[str, LoRAPair]:
    generator = torch.Generator().manual_seed(seed)
    return {
        n: LoRAPair(torch.randn(p.a.shape, generator=generator), torch.randn(p.b.shape, generator=generator) * 0.1)
        for n, p in weights.items()
    }


def test_read_lists_every_adapted_module_with_peft_shapes(tiny_peft_model):
    weights = read_lora(tiny_peft_model)
    assert sorted(weights) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    q = weights["model.layers.0.self_attn.q_proj"]
    assert q.a.shape == (4, 64) and q.b.shape == (64, 4)
    assert torch.count_nonzero(q.b) == 0  # PEFT's init: B = 0


def test_write_then_read_round_trips_exactly(tiny_peft_model):
    new = random_like(read_lora(tiny_peft_model), 0)
    write_lora(tiny_peft_model, new)
    back = read_lora(tiny_peft_model)
    assert all(torch.equal(back[n].a, new[n].a) and torch.equal(back[n].b, new[n].b) for n in new)


def test_written_weights_change_the_forward_pass(tiny_peft_model):
    ids = torch.tensor([[5, 6, 7, 8]])
    before = tiny_peft_model(input_ids=ids).logits
    write_lora(tiny_peft_model, random_like(read_lora(tiny_peft_model), 1))
    assert not torch.allclose(tiny_peft_model(input_ids=ids).logits, before)


def test_signature_and_fingerprint(tiny_peft_model, tiny_model_dir):
    signature = lora_signature(tiny_peft_model)
    assert (
        set(signature.ranks.values()) == {4}
        and signature.lora_alpha == 8.0
        and signature.target_modules == ["q_proj", "v_proj"]
    )
    fingerprint = base_model_fingerprint(tiny_peft_model)
    assert fingerprint.architecture["hidden_size"] == 64 and fingerprint.architecture["model_type"] == "llama"
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    other = LlamaForCausalLM(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)  # same shape, new weights
    assert base_model_fingerprint(other).mismatches(fingerprint)
    same_in_bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert not base_model_fingerprint(same_in_bf16).mismatches(fingerprint)


@pytest.mark.parametrize(
    ("lora_kwargs", "message"),
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"lora_bias": True}, "lora_bias=True"),
        ({"init_lora_weights": "pissa"}, "rewrites the frozen base weights"),
        ({"target_modules": ["embed_tokens", "q_proj"]}, "embedding LoRA"),
    ],
)
def test_unsupported_lora_variants_raise(tiny_model_dir, lora_kwargs, message):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora_kwargs}
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(**options))
    with pytest.raises(UnsupportedAdapterError, match=message):
        lora_signature(model)


def test_model_without_lora_raises(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    with pytest.raises(UnsupportedAdapterError, match="no PEFT config"):
        lora_signature(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


def test_exported_adapter_loads_in_stock_peft_with_identical_logits(tiny_peft_model, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = random_like(read_lora(tiny_peft_model), 2)
    write_lora(tiny_peft_model, merged)
    signature = lora_signature(tiny_peft_model)
    state = ContinualState(
        signature,
        base_model_fingerprint(tiny_peft_model),
        MergeForgetConfig(),
        adapter_config_dict(tiny_peft_model),
        ["t1"],
        merged,
        merged,
    )
    out = export_adapter(state, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    ids = torch.tensor([[1, 9, 30, 41, 7, 2]])
    with torch.no_grad():
        expected, got = tiny_peft_model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert (expected - got).abs().max() <= 1e-6
    reloaded_weights = read_lora(reloaded)
    assert all(torch.equal(reloaded_weights[n].b, merged[n].b) for n in merged)


@pytest.mark.parametrize(
    ("quantization", "layer_name"),
    [
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.float32}, "Linear4bit"),
        ({"load_in_8bit": True}, "Linear8bitLt"),
    ],
    ids=["nf4", "int8"],
)
def test_quantized_bases_read_and_write(tiny_model_dir, quantization, layer_name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=BitsAndBytesConfig(**quantization))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.endswith("lora.bnb") and type(layer.base_layer).__name__ == layer_name
    new = random_like(read_lora(model), 3)
    ids = torch.tensor([[3, 4, 5, 6]])
    before = model(input_ids=ids).logits
    write_lora(model, new)
    back = read_lora(model)
    assert all(torch.equal(back[n].a, new[n].a) and torch.equal(back[n].b, new[n].b) for n in new)
    assert not torch.allclose(model(input_ids=ids).logits, before)
    assert not base_model_fingerprint(model).mismatches(
        base_model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    )


def test_sharded_lora_factors_are_gathered_and_written_back(tiny_peft_model, tmp_path):
    """FSDP2 shards parameters as DTensors: reading gathers a factor, writing fills the shard.
    (Two real processes: tests/test_distributed.py.)"""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    from mergeforget_plugin.peft_bridge import is_sharded

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        plain = read_lora(tiny_peft_model)
        name, layer = next(iter(lora_layers(tiny_peft_model).items()))
        weight = layer.lora_A["default"].weight.detach()
        layer.lora_A["default"].weight = torch.nn.Parameter(distribute_tensor(weight, mesh, [Replicate()]))
        assert not is_sharded(tiny_peft_model)
        assert torch.equal(read_lora(tiny_peft_model)[name].a, weight)
        layer.lora_A["default"].weight = torch.nn.Parameter(distribute_tensor(weight, mesh, [Shard(0)]))
        assert is_sharded(tiny_peft_model)
        assert torch.equal(read_lora(tiny_peft_model)[name].a, weight)
        changed = {key: LoRAPair(pair.a + 1.0, pair.b) for key, pair in plain.items()}
        write_lora(tiny_peft_model, changed)
        written = layer.lora_A["default"].weight
        assert isinstance(written, DTensor) and written.placements == (Shard(0),)
        assert torch.equal(written.full_tensor(), weight + 1.0)
    finally:
        dist.destroy_process_group()
