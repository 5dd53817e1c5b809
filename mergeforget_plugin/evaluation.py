"""Scoring a model on held-out tasks: label ranking by log-likelihood, or exact match.

`choice` (classification-style): every candidate answer is scored by the sum of its tokens'
log-probabilities after the prompt; the prediction is the best-scoring candidate. Deterministic
and cheap: one forward pass per (example, candidate) pair, batched.

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


@dataclass
class EvalSet:
    """The held-out examples of one task and how to score them."""

    task: str
    prompts: list[str]
    answers: list[str]
    metric: Metric = "choice"
    options: list[str] = field(default_factory=list)

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


def _sequence_logprobs(
    model: torch.nn.Module, sequences: list[list[int]], starts: list[int], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Sum of log p(token) over positions >= start, for each (right-padded) sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(1, width, device=device).unsqueeze(0)
    start = torch.tensor(starts, device=device).unsqueeze(1)
    lengths = mask.sum(1, keepdim=True)
    keep = (positions >= start) & (positions < lengths)
    return (logprobs * keep).sum(1).cpu()


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters())


@torch.no_grad()
def choice_predictions(model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, batch_size: int = 32) -> list[str]:
    """The best-scoring option for every prompt."""
    device = _device_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    option_ids = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in eval_set.options]
    pairs: list[tuple[list[int], int]] = []
    for prompt in eval_set.prompts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        pairs.extend((prompt_ids + ids, len(prompt_ids)) for ids in option_ids)
    scores = torch.cat(
        [
            _sequence_logprobs(model, [s for s, _ in chunk], [start for _, start in chunk], pad_id, device)
            for chunk in (pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size))
        ]
    ).view(len(eval_set.prompts), len(eval_set.options))
    return [eval_set.options[int(i)] for i in scores.argmax(1)]


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
