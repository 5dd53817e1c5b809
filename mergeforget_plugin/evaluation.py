"""Scoring a model on held-out tasks: label ranking by log-likelihood, or exact match.

`choice` (classification-style): every candidate answer is scored by the sum of its tokens'
log-probabilities after the prompt; the prediction is the best-scoring candidate. Each prompt
runs through the model once, whatever the number of candidates (see :func:`choice_scores`).

`exact_match` (generative): greedy decoding of at most `max_new_tokens`; the prediction counts
when its first line, stripped, equals the stripped answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

Metric = Literal["choice", "exact_match"]
# Tokens per forward pass (batch x padded length, options included): bounds activation memory.
_CPU_TOKEN_BUDGET = 4096
_GPU_TOKEN_BUDGET = 65536
# A batch stops growing once padding would exceed this share of its real prompt tokens. Sorted by
# length, one budget-sized batch otherwise pads every prompt to the set's longest: on one CPU
# thread, the benchmark's 48 language_b chat lines (15 tokens on average) scored in 4.8 s as one
# batch and in 2.7 s with this bound (benchmarks/eval_throughput.py measures the scorer).
_PADDING_SLACK = 0.1


@dataclass
class EvalSet:
    """The held-out examples of one task and how to score them."""

    task: str
    prompts: list[str]
    answers: list[str]
    metric: Metric = "choice"
    options: list[str] = field(default_factory=list)
    # Token ids per tokenizer, filled on first use: the engine scores every set after every task.
    _encoded: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.answers) or not self.prompts:
            raise ValueError(f"Task {self.task!r}: evaluation needs as many answers as prompts, and at least one.")
        if self.metric == "choice":
            if not self.options:
                self.options = sorted(set(self.answers))
            missing = sorted(set(self.answers) - set(self.options))
            if missing:
                raise ValueError(
                    f"Task {self.task!r}: answers {missing[:3]} are not among the options {self.options[:5]}."
                )
            if len(self.options) < 2:
                raise ValueError(
                    f"Task {self.task!r}: `choice` scoring needs at least two options, got {self.options}."
                )


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON Lines or JSON (list of objects) file."""
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else list(data.get("data", []))


def eval_set_from_rows(
    task: str,
    rows: Iterable[dict[str, Any]],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "completion",
    prompt_format: str = "{prompt}",
    metric: Metric = "choice",
    options: Sequence[str] | None = None,
    option_rows: Iterable[dict[str, Any]] = (),
    max_examples: int | None = None,
) -> EvalSet:
    """Build an :class:`EvalSet`; for `choice`, the options default to every answer seen in
    ``rows`` and ``option_rows`` (e.g. the training split)."""
    rows = list(rows)
    if max_examples is not None:
        rows = rows[:max_examples]
    for number, row in enumerate(rows):
        for name in (prompt_field, answer_field):
            if name not in row:
                raise ValueError(
                    f"Task {task!r}: evaluation row {number} has no field {name!r} (fields: {sorted(row)}). "
                    "Set prompt_field/answer_field to the names your data uses."
                )
    # `{prompt}`, `{instruction}` (Axolotl's custom-format name) and the field's own name all
    # stand for the prompt field, so the training template can be reused as is.
    prompts = [
        prompt_format.format(
            **{"prompt": row[prompt_field], "instruction": row[prompt_field], prompt_field: row[prompt_field]}
        )
        for row in rows
    ]
    answers = [str(row[answer_field]) for row in rows]
    if metric == "choice" and not options:
        options = sorted({*answers, *(str(r[answer_field]) for r in option_rows if answer_field in r)})
    return EvalSet(task, prompts, answers, metric, list(options or []))


def eval_set_from_spec(spec: Any) -> EvalSet:
    """An :class:`EvalSet` from a recipe's :class:`~mergeforget_plugin.recipe.EvalSpec`."""
    option_rows = [row for path in spec.option_paths for row in read_rows(path)]
    return eval_set_from_rows(
        spec.task,
        read_rows(spec.path),
        prompt_field=spec.prompt_field or "prompt",
        answer_field=spec.answer_field or "completion",
        prompt_format=spec.prompt_format,
        metric=spec.metric,
        options=spec.options,
        option_rows=option_rows,
        max_examples=spec.max_examples,
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters())


@dataclass(frozen=True)
class _Encoded:
    """An evaluation set as token ids, made once per tokenizer (the engine scores it after every task)."""

    prompts: list[list[int]]
    options: list[list[int]]


def _encode(eval_set: EvalSet, tokenizer: Any) -> _Encoded:
    key = (id(tokenizer), getattr(tokenizer, "name_or_path", None), len(tokenizer))
    cached = eval_set._encoded.get(key)
    if cached is None:
        prompts = tokenizer(list(eval_set.prompts))["input_ids"]
        options = tokenizer(list(eval_set.options), add_special_tokens=False)["input_ids"]
        empty = [option for option, ids in zip(eval_set.options, options, strict=True) if not ids]
        if empty:
            raise ValueError(
                f"Task {eval_set.task!r}: options {empty[:3]} encode to no token, so they cannot be scored."
            )
        cached = eval_set._encoded[key] = _Encoded([list(p) for p in prompts], [list(o) for o in options])
    return cached


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _right_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under ``logits`` along the last axis, in float32, without materializing log_softmax."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _prompt_forward(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, *, use_cache: bool
) -> tuple[Any, torch.Tensor]:
    """The model's output on right-padded prompts, and the logits at each prompt's last token (batch, vocab).

    Only the last positions are sent through the LM head (``logits_to_keep``, with the batch's
    distinct last positions, which are few since prompts are batched by length); a model whose
    forward does not take ``logits_to_keep`` computes them all.
    """
    last_positions = lengths - 1
    kept = torch.unique(last_positions)
    try:
        output = model(input_ids=ids, attention_mask=mask, use_cache=use_cache, logits_to_keep=kept)
        column = torch.searchsorted(kept, last_positions)
    except TypeError:
        output = model(input_ids=ids, attention_mask=mask, use_cache=use_cache)
        column = last_positions
    return output, output.logits[torch.arange(len(ids), device=ids.device), column]


@torch.no_grad()
def choice_scores(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, *, token_budget: int | None = None
) -> torch.Tensor:
    """Log-likelihood of every option after every prompt, shape (prompts, options), on the CPU.

    Each prompt runs through the model once. Its last position gives every option's first token;
    when an option is longer, the rest is scored in one more forward of all options over the
    prompt's key/value cache, repeated per option (``Cache.batch_repeat_interleave``, the
    beam-search API, which every attention implementation supports). Prompts are sorted by length
    and batched up to ``token_budget`` tokens (a larger default on a GPU), and scores stay on the
    device until the set is done.
    """
    encoded = _encode(eval_set, tokenizer)
    device = _device_of(model)
    budget = token_budget or (_GPU_TOKEN_BUDGET if device.type == "cuda" else _CPU_TOKEN_BUDGET)
    pad_id = _pad_id(tokenizer)
    options = encoded.options
    count = len(options)
    first_tokens = torch.tensor([option[0] for option in options], device=device)
    longest_option = max(len(option) for option in options)
    if longest_option > 1:
        # Options right-padded. Input position t (all but the last token) predicts token t + 1; an
        # option's last token is only a target, so it is never run through the model.
        option_ids, option_mask = _right_padded(options, pad_id, device)
        rest_inputs, rest_input_mask = option_ids[:, :-1], option_mask[:, :-1]
        rest_targets, rest_keep = option_ids[:, 1:], option_mask[:, 1:].bool()
    # Forward rows per prompt: the prompt itself, plus one row per option when options continue.
    rows_per_prompt = count if longest_option > 1 else 1
    order = sorted(range(len(encoded.prompts)), key=lambda i: len(encoded.prompts[i]))
    scores = torch.empty((len(order), count), dtype=torch.float32, device=device)
    start = 0
    while start < len(order):
        # Sorted by length, a batch's last prompt is its longest: grow the batch while it fits the
        # budget and its padding stays small.
        end, real = start + 1, len(encoded.prompts[order[start]])
        while end < len(order):
            width, rows = len(encoded.prompts[order[end]]), end + 1 - start
            if rows * rows_per_prompt * (width + longest_option) > budget:
                break
            real += width
            if rows * width > (1 + _PADDING_SLACK) * real:
                break
            end += 1
        rows = order[start:end]
        ids, mask = _right_padded([encoded.prompts[i] for i in rows], pad_id, device)
        lengths = mask.sum(1)
        output, last = _prompt_forward(model, ids, mask, lengths, use_cache=longest_option > 1)
        batch_scores = torch.log_softmax(last.float(), dim=-1)[:, first_tokens]  # every option's first token
        if longest_option > 1:
            cache = output.past_key_values
            cache.batch_repeat_interleave(count)
            # Option tokens see their own prompt (not its padding) and the option tokens before them.
            attention = torch.cat([mask.repeat_interleave(count, 0), rest_input_mask.repeat(len(rows), 1)], dim=1)
            positions = lengths.repeat_interleave(count).unsqueeze(1) + torch.arange(longest_option - 1, device=device)
            continued = model(
                input_ids=rest_inputs.repeat(len(rows), 1),
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=False,
            ).logits
            targets = rest_targets.repeat(len(rows), 1)
            rest = (_token_logprobs(continued, targets) * rest_keep.repeat(len(rows), 1)).sum(1)
            batch_scores = batch_scores + rest.view(len(rows), count)
        scores[torch.tensor(rows, device=device)] = batch_scores
        start = end
    return scores.cpu()


@torch.no_grad()
def choice_predictions(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, *, token_budget: int | None = None
) -> list[str]:
    """The best-scoring option for every prompt."""
    best = choice_scores(model, tokenizer, eval_set, token_budget=token_budget).argmax(1)
    return [eval_set.options[int(i)] for i in best]


@torch.no_grad()
def generated_answers(model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, max_new_tokens: int = 16) -> list[str]:
    """Greedy completions, one prompt at a time (no padding effects), first line only."""
    device = _device_of(model)
    outputs = []
    for prompt in eval_set.prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        outputs.append(text.strip().split("\n")[0].strip())
    return outputs


def accuracy(model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet) -> float:
    """Fraction of examples answered correctly, with the set's metric. Leaves the model's mode as found."""
    was_training = model.training
    model.eval()
    try:
        if eval_set.metric == "choice":
            predictions = choice_predictions(model, tokenizer, eval_set)
            correct = [p == a for p, a in zip(predictions, eval_set.answers, strict=True)]
        else:
            predictions = generated_answers(model, tokenizer, eval_set)
            correct = [p == a.strip() for p, a in zip(predictions, eval_set.answers, strict=True)]
    finally:
        model.train(was_training)
    return sum(correct) / len(correct)


def evaluate_all(model: torch.nn.Module, tokenizer: Any, eval_sets: Sequence[EvalSet]) -> dict[str, float]:
    """Accuracy on every task's held-out set, in order."""
    from tqdm.auto import tqdm

    return {
        s.task: accuracy(model, tokenizer, s)
        for s in tqdm(eval_sets, desc="evaluating tasks", leave=False, disable=None)
    }
