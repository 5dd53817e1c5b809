"""Build a tiny Llama-style model and tokenizer locally, for smoke tests and CI (no model hub)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# ChatML as SmolLM2-135M-Instruct's template renders it, less the system turn it adds when none is given.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_llama(
    output_dir: str | os.PathLike[str],
    corpus: Iterable[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    initializer_range: float = 0.02,
    chat_template: bool = False,
) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus``, build a random tiny Llama, save both.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` like any local checkpoint (also from Axolotl's
    ``base_model:``). ``initializer_range`` is the weights' init scale: at the default (transformers'
    0.02) the logits of so small a model barely move from uniform and a LoRA learns little; a test
    that needs a task learned in a few steps raises it. ``chat_template`` gives the tokenizer
    ChatML's turn tokens (``<|im_start|>``, ``<|im_end|>``) and template, as SmolLM2-Instruct
    has (without its default system turn), while end-of-sequence stays ``</s>``. Returns the
    directory.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", *(["<|im_start|>", "<|im_end|>"] if chat_template else [])]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = CHATML
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out
