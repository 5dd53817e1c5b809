"""The shapes a task's rows come in, understood in one place: which shape a row has, what of it is
the prompt and what the answer, and which tokens each becomes, the way the trainer makes them.

The shapes are those TRL's ``SFTTrainer`` trains (its own names):

- **prompt-completion**: ``{"prompt": str, "completion": str}``. The prompt is tokenized with the
  tokenizer's special tokens, the answer without them and followed by end-of-sequence, as the
  scorer always has (scores of existing tasks do not move).
- **conversational**: ``{"messages": [turn, ...]}``, or ``{"prompt": [turn, ...], "completion":
  [turn, ...]}`` (read as ``prompt + completion``). A turn is ``{"role": ..., "content": str}``.
  The answer is the *last assistant turn*; the prompt is every turn before it (a system turn,
  earlier user and assistant turns included), rendered by the tokenizer's chat template with the
  generation prompt. The answer's tokens are what the template adds for that turn: its text and the
  template's end-of-turn tokens. Turns after the last assistant turn are neither prompt nor answer.
  This is what TRL trains on for conversational prompt-completion rows, and with
  ``assistant_only_loss=True`` for ``messages`` rows (by default TRL also trains on the prompt's
  tokens of ``messages`` rows; the report scores the answer only). Generation ends at the
  template's end-of-turn token.
- **text** (language modelling): ``{"text": str}``. The whole text, followed by end-of-sequence,
  is the answer, as TRL trains it; its first token is the prompt (a causal model predicts every
  token but the first). Only ``loss`` (and perplexity) can score it.

A row of held-out tokens made by another trainer's tokenization (the Axolotl plugin's) is a fourth
shape, ``tokens``: its prompt and answer ids are given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import EvaluationError

Shape = Literal["prompt_completion", "conversational", "text", "tokens"]
SHAPES: tuple[str, ...] = ("prompt_completion", "conversational", "text", "tokens")
# The roles chat templates render; another role is more likely a typo than a template's own.
ROLES = ("system", "developer", "user", "assistant", "tool")
# What scores a shape: text has no answer to pick or generate, only tokens to predict.
METRICS_OF_SHAPE = {
    "prompt_completion": ("choice", "exact_match", "rouge_l", "loss"),
    "conversational": ("choice", "exact_match", "rouge_l", "loss"),
    "text": ("loss",),
    "tokens": ("choice", "exact_match", "rouge_l", "loss"),
}
TABULAR_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def row_shape(row: Mapping[str, Any], text_field: str = "text") -> Shape | None:
    """The shape of ``row`` as TRL reads it (prompt-completion first, then messages, then text),
    or ``None`` when it has none of their fields."""
    if "prompt" in row:
        return "conversational" if isinstance(row["prompt"], list) else "prompt_completion"
    if "messages" in row:
        return "conversational"
    if text_field in row:
        return "text"
    return None


def conversation(row: Mapping[str, Any], where: str) -> tuple[list[dict[str, Any]], str]:
    """The turns before ``row``'s last assistant turn, and that turn's text; ``where`` names the
    task and row in a refusal (a turn that is not ``{"role", "content"}``, an unknown role, a
    content that is not text, no assistant turn)."""
    field = "messages" if "messages" in row and "prompt" not in row else "prompt/completion"
    turns = list(row["messages"]) if field == "messages" else [*row["prompt"], *(row.get("completion") or [])]
    for number, turn in enumerate(turns):
        at = f"{where}, {field} turn {number}"
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise EvaluationError(f'{at}: a turn is an object {{"role": ..., "content": ...}}, got {turn!r:.80}.')
        if turn["role"] not in ROLES:
            raise EvaluationError(
                f"{at}: unknown role {turn['role']!r}; chat templates render {', '.join(ROLES)}. Rename it."
            )
        if not isinstance(turn["content"], str):
            raise EvaluationError(
                f"{at}: content is {type(turn['content']).__name__}; held-out turns are scored as text."
            )
    last = max((number for number, turn in enumerate(turns) if turn["role"] == "assistant"), default=None)
    if last is None:
        raise EvaluationError(
            f"{where}, {field}: no assistant turn, so there is no answer to score. Give each held-out "
            "conversation the assistant turn it should end with."
        )
    return [dict(turn) for turn in turns[:last]], turns[last]["content"]


def require_chat_template(tokenizer: Any, task: str, how: str = "trl") -> None:
    """Refuse a conversational task whose tokenizer cannot render conversations, saying how to set one."""
    if getattr(tokenizer, "chat_template", None):
        return
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    fix = (
        "set `chat_template:` in the Axolotl config (e.g. chatml)"
        if how == "axolotl"
        else "set `processing_class.chat_template` (e.g. to a ChatML template) before training"
    )
    raise EvaluationError(
        f"Task {task!r}: its rows are conversations, but the tokenizer {name!r} has no chat template to "
        f"render them: {fix}."
    )


def chat_ids(tokenizer: Any, turns: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> list[int]:
    """``turns`` rendered by the tokenizer's chat template and tokenized, as TRL tokenizes them."""
    encoded = tokenizer.apply_chat_template(
        list(turns), tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return [int(i) for i in encoded["input_ids"]]


def conversation_ids(tokenizer: Any, turns: Sequence[Mapping[str, Any]], answer: str) -> tuple[list[int], list[int]]:
    """The prompt's ids (the turns with the generation prompt) and the answer's (what the template
    adds for the assistant turn ``answer``: its text and end-of-turn tokens)."""
    prompt = chat_ids(tokenizer, turns, generation_prompt=True)
    whole = chat_ids(tokenizer, [*turns, {"role": "assistant", "content": answer}], generation_prompt=False)
    # As TRL's completion mask: the tokens past the prompt's length are the answer, even when a
    # template renders the prompt a little differently inside the whole conversation.
    return prompt, whole[len(prompt) :]


def end_of_turn(tokenizer: Any, turns: Sequence[Mapping[str, Any]]) -> list[int]:
    """The tokens a chat template closes an assistant turn with (``<|im_end|>`` and a newline in
    ChatML): the answer tokens of an empty assistant turn."""
    return conversation_ids(tokenizer, turns, "")[1]


def text_ids(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """A language-modelling row as TRL trains it (the text, end-of-sequence appended), split into
    its first token (the prompt) and the rest (the answer)."""
    eos = tokenizer.eos_token or ""
    ids = [int(i) for i in tokenizer(text if text.endswith(eos) else text + eos)["input_ids"]]
    return ids[:1], ids[1:]


def references(rows: Iterable[Mapping[str, Any]], where: str, answer_field: str = "completion") -> list[str]:
    """The reference answer of each row that has one (the options a training split adds)."""
    found = []
    for number, row in enumerate(rows):
        shape = row_shape(row)
        if shape == "conversational":
            found.append(conversation(row, f"{where}, row {number}")[1])
        elif answer_field in row and isinstance(row[answer_field], str):
            found.append(row[answer_field])
    return found


def rows_of(value: Any, where: str, split: str | None = None) -> Any:
    """What a user passes as a task's rows, as a ``datasets.Dataset`` (or the ``IterableDataset``
    given): a ``Dataset``, ``IterableDataset``, list of dicts, pandas ``DataFrame``, or a path to a
    JSON, JSON Lines, Parquet or CSV file. A ``DatasetDict`` needs ``split``; anything else is
    refused by type, naming ``where``."""
    import datasets

    if isinstance(value, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None or split not in value:
            splits = ", ".join(repr(name) for name in value)
            raise EvaluationError(
                f"{where}: a DatasetDict with splits {splits}; pass one split, e.g. dataset[{next(iter(value))!r}]"
                " (or load_dataset(..., split=...))."
            )
        return value[split]
    if isinstance(value, (datasets.Dataset, datasets.IterableDataset)):
        return value
    if isinstance(value, (str, os.PathLike)):
        return _dataset_from_file(Path(value), where)
    if isinstance(value, list):
        bad = next((number for number, row in enumerate(value) if not isinstance(row, Mapping)), None)
        if bad is not None:
            raise EvaluationError(f"{where}: row {bad} is {type(value[bad]).__name__}, not a dict of named fields.")
        # An empty list stays empty: the pre-flight refuses a task without training rows in its own words.
        return datasets.Dataset.from_list([dict(row) for row in value])
    if type(value).__name__ == "DataFrame" and hasattr(value, "to_dict"):
        return datasets.Dataset.from_pandas(value, preserve_index=False)
    raise EvaluationError(
        f"{where}: {type(value).__name__} is not a dataset. Give a datasets.Dataset or IterableDataset, a list "
        "of dicts, a pandas DataFrame, or the path of a JSON, JSON Lines, Parquet or CSV file."
    )


def _dataset_from_file(path: Path, where: str) -> Any:
    import datasets

    kind = TABULAR_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise EvaluationError(
            f"{where}: {path} is not a {', '.join(sorted(TABULAR_SUFFIXES))} file; give one, or load it yourself."
        )
    if not path.is_file():
        raise EvaluationError(f"{where}: {path} does not exist.")
    if kind == "json":
        from .scoring import read_rows  # names the line of a malformed row

        return datasets.Dataset.from_list(read_rows(path))
    return datasets.load_dataset(kind, data_files=str(path), split="train")
