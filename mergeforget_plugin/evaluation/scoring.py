"""Scoring a model on held-out tasks: one scorer for every metric a task can declare.

- ``choice`` (answers from a small label set): every candidate answer is scored by the sum of
  its tokens' log-probabilities after the prompt; the prediction is the best-scoring candidate.
  Each prompt runs through the model once, whatever the number of candidates
  (:func:`choice_scores`).
- ``loss`` (any data): mean negative log-likelihood per answer token given the prompt, over all
  held-out rows (the answer's tokens and the end-of-sequence token, as supervised fine-tuning
  trains them); ``perplexity`` = exp(loss) comes with it (:func:`completion_losses`).
- ``rouge_l`` and ``exact_match`` (generative): greedy decoding of at most ``max_new_tokens``,
  cut at the first stop string once the answer has begun, stripped (:func:`generate_greedy`).
  ``rouge_l`` is the ROUGE-L F1 against the reference, computed by the ``rouge-score`` package
  with the settings Super-NaturalInstructions' evaluation uses (``RougeScorer(["rougeL"],
  use_stemmer=True)``, its default tokenizer); ``exact_match`` counts answers equal to the
  stripped reference. Both share one generation.

Which metric is a task's primary one (the one AA, BWT, FWT and the heatmap use) when it declares
none: ``choice`` when the answers form a small label set (options are given, or the held-out and
training answers have at most :data:`LABEL_SET_MAX` distinct values of at most
:data:`LABEL_MAX_WORDS` words each), otherwise ``loss``, which needs nothing but the data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import EvaluationError
from . import shapes
from .metrics import SCORABLE

Metric = Literal["choice", "loss", "rouge_l", "exact_match"]

# Tokens per forward pass (batch x padded length, options included): bounds activation memory.
_CPU_TOKEN_BUDGET = 4096
_GPU_TOKEN_BUDGET = 65536
# Logits kept per forward pass of the loss (rows x kept positions): a 49k-token vocabulary in
# float32 is 200 KB per position, so 1024 positions stay near 200 MB on a CPU.
_CPU_LOGIT_BUDGET = 1024
_GPU_LOGIT_BUDGET = 16384
# A batch stops growing once padding would exceed this share of its real prompt tokens. Sorted by
# length, one budget-sized batch otherwise pads every prompt to the set's longest: on one CPU
# thread, the benchmark's 48 language_b chat lines (15 tokens on average) scored in 4.8 s as one
# batch and in 2.7 s with this bound (benchmarks/eval_throughput.py measures the scorer).
_PADDING_SLACK = 0.1
# Generation pads more before it splits a batch: each decode step reads the weights once for
# every row of the batch, so fewer, fuller batches save steps, and padding costs only the
# prompt's one forward pass and a longer cache.
_GENERATION_PADDING_SLACK = 1.0
# Generation asks the host whether every row of a batch has stopped once every this many tokens,
# not after each one: the check waits for the device.
_STOP_CHECK_EVERY = 4

LABEL_SET_MAX = 64
LABEL_MAX_WORDS = 5
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_STOP = ("\n",)
_GENERATIVE = ("rouge_l", "exact_match")


def default_metric(answers: Iterable[str], options: Sequence[str] = (), shape: str = "prompt_completion") -> str:
    """The primary metric of a task that names none (see the module docstring for the rule): a
    ``text`` task has no answers, only tokens to predict, so ``loss``."""
    if shape == "text":
        return "loss"
    if options:
        return "choice"
    distinct = {str(answer).strip() for answer in answers}
    if len(distinct) <= LABEL_SET_MAX and all(len(answer.split()) <= LABEL_MAX_WORDS for answer in distinct):
        return "choice"
    return "loss"


@dataclass
class EvalSet:
    """The held-out examples of one task (or probe) and how to score them.

    ``metric`` is the primary metric; ``metrics`` every metric scored (the primary first). Give
    either, both or neither (then :func:`default_metric` chooses). ``max_new_tokens`` and
    ``stop`` shape the generation of ``rouge_l`` and ``exact_match``.

    ``shape`` says what a prompt is (:mod:`~mergeforget_plugin.evaluation.shapes`): a string for
    ``prompt_completion`` (the default); the turns before the answer for ``conversational``; unused
    (``""``) for ``text``, whose ``answers`` are the texts. ``answers`` are the references as text.
    A ``tokens`` set (tokenized by the trainer's own code) gives ``token_ids``: ``prompts``,
    ``answers`` (the ids the loss covers), ``options`` and ``end`` (ids that also end a generation),
    valid for the one tokenizer that made them.
    """

    task: str
    prompts: list[Any]
    answers: list[str]
    metric: str | None = None
    options: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))
    shape: str = "prompt_completion"
    token_ids: dict[str, list[list[int]]] | None = field(default=None, repr=False)
    # Token ids per tokenizer, filled on first use: the engine scores every set after every task.
    _encoded: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"Task {self.task!r}"
        if len(self.prompts) != len(self.answers) or not self.prompts:
            raise EvaluationError(f"{where}: evaluation needs as many answers as prompts, and at least one.")
        if self.shape not in shapes.SHAPES:
            raise EvaluationError(f"{where}: unknown shape {self.shape!r}; one of {', '.join(shapes.SHAPES)}.")
        if (self.shape == "tokens") != (self.token_ids is not None):
            raise EvaluationError(f"{where}: token_ids come with shape 'tokens', and only with it.")
        metrics = list(dict.fromkeys(self.metrics))
        if self.metric is None:
            self.metric = metrics[0] if metrics else default_metric(self.answers, self.options, self.shape)
        self.metrics = [self.metric, *(name for name in metrics if name != self.metric)]
        unknown = [name for name in self.metrics if name not in SCORABLE]
        if unknown:
            raise EvaluationError(f"{where}: unknown metric {unknown[0]!r}; choose from {', '.join(SCORABLE)}.")
        unfit = [name for name in self.metrics if name not in shapes.METRICS_OF_SHAPE[self.shape]]
        if unfit:
            raise EvaluationError(
                f"{where}: {', '.join(unfit)} cannot score text rows: they have no answer to pick or generate, "
                "only tokens to predict. Score them with metric loss, or give prompt/completion or messages rows."
            )
        if "choice" in self.metrics:
            if not self.options:
                self.options = sorted(set(self.answers))
            missing = sorted(set(self.answers) - set(self.options))
            if missing:
                raise EvaluationError(f"{where}: answers {missing[:3]} are not among the options {self.options[:5]}.")
            if len(self.options) < 2:
                raise EvaluationError(f"{where}: `choice` scoring needs at least two options, got {self.options}.")
        if any(name in _GENERATIVE for name in self.metrics):
            if (
                isinstance(self.max_new_tokens, bool)
                or not isinstance(self.max_new_tokens, int)
                or (self.max_new_tokens < 1)
            ):
                raise EvaluationError(
                    f"{where}: max_new_tokens must be a positive whole number, got {self.max_new_tokens!r}."
                )
            if any(not isinstance(stop, str) or not stop for stop in self.stop):
                raise EvaluationError(f"{where}: every stop string must be non-empty text, got {self.stop!r}.")
        if "rouge_l" in self.metrics:
            empty = [number for number, answer in enumerate(self.answers) if not str(answer).strip()]
            if empty:
                raise EvaluationError(
                    f"{where}: rouge_l compares each generation with its reference, but row {empty[0]} has an "
                    "empty answer. Give every held-out row its reference."
                )


def _json_line(line: str, path: Path, number: int) -> Any:
    """Line ``number`` of a JSON Lines file, parsed; refused naming the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise EvaluationError(
            f"{path}:{number}: not a JSON object ({error.msg} at column {error.colno}). Each line of a JSON "
            'Lines file holds one row, e.g. {"prompt": ..., "completion": ...}.'
        ) from None


def _parse_json_lines(text: str, path: Path) -> list[Any]:
    return [_json_line(line, path, number) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _json_document(text: str, path: Path) -> Any:
    """The file as one JSON document (a list, or an object that may span lines), or ``None`` when
    it is JSON Lines (a second object follows the first)."""
    stripped = text.lstrip()
    if not stripped.startswith(("[", "{")):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if stripped.startswith("{") and error.msg == "Extra data":
            return None  # one object per line
        raise EvaluationError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno}).") from None


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file or a JSON file (a list of objects, or ``{"data": [...]}``), read as
    ``datasets``' JSON loader reads either whatever the file is called. A malformed line, a row
    that is not an object, a missing or empty file: refused naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EvaluationError(f"{path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise EvaluationError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    except OSError as error:
        raise EvaluationError(f"{path} cannot be read: {error.strerror or error}.") from None
    stripped = text.lstrip()
    if not stripped:
        raise EvaluationError(f"{path} is empty: give at least one row.")
    rows: list[Any]
    document = _json_document(text, path)
    if document is not None:
        data = document
        rows = data if isinstance(data, list) else list(data.get("data", [data])) if isinstance(data, dict) else [data]
    else:
        rows = _parse_json_lines(text, path)
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvaluationError(f"{path}: row {number + 1} is {type(row).__name__}, not an object of named fields.")
    if not rows:
        raise EvaluationError(f"{path} holds no rows.")
    return rows


def row_summary(path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """What :func:`read_rows` would refuse in ``path``, found line by line without keeping the rows
    (a training file may be large); returns the number of rows and the first row's fields, sorted
    (replay compares every task's fields before anything trains)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            start = handle.read(4096).lstrip()
            handle.seek(0)
            first = handle.readline().strip()
    except OSError:
        rows = read_rows(path)  # read_rows names what is wrong
        return len(rows), sorted(rows[0])
    try:
        one_line_object = first.startswith(b"{") and isinstance(json.loads(first), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        one_line_object = False
    if not start or start.startswith(b"[") or (start.startswith(b"{") and not one_line_object):
        rows = read_rows(path)  # one JSON document (or nothing): read as a whole
        return len(rows), sorted(rows[0])
    count, fields = 0, None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise EvaluationError(f"{path}:{number}: not UTF-8 text ({error.reason}).") from None
            row = _json_line(line, path, number)
            if not isinstance(row, dict):
                raise EvaluationError(f"{path}:{number}: {type(row).__name__}, not an object of named fields.")
            if fields is None:
                fields = sorted(row)
            count += 1
    if not count:
        raise EvaluationError(f"{path} holds no rows.")
    if count == 1:  # one line may be one JSON document ({"data": [...]}): read as read_rows reads it
        rows = read_rows(path)
        return len(rows), sorted(rows[0])
    return count, fields


def eval_set_from_rows(
    task: str,
    rows: Iterable[dict[str, Any]],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "completion",
    prompt_format: str = "{prompt}",
    metric: str | None = None,
    metrics: Sequence[str] = (),
    options: Sequence[str] | None = None,
    option_rows: Iterable[dict[str, Any]] = (),
    max_examples: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: Sequence[str] | None = None,
    source: str | None = None,
) -> EvalSet:
    """Build an :class:`EvalSet` from rows of any shape :mod:`~mergeforget_plugin.evaluation.shapes`
    knows (every row the shape of the first); for `choice`, the options default to every answer
    seen in ``rows`` and ``option_rows`` (e.g. the training split). ``prompt_field``,
    ``answer_field`` and ``prompt_format`` read prompt-completion rows kept under other names.
    ``stop`` defaults to a newline for prompt-completion rows and to nothing for conversations (the
    template's end-of-turn token ends them). ``source`` names the file in messages."""
    rows = list(rows)
    if max_examples is not None:
        rows = rows[:max_examples]
    where = f"Task {task!r}" + (f" ({source})" if source else "")
    named = (prompt_field, answer_field) != ("prompt", "completion")
    shape = "prompt_completion" if named or not rows else shapes.row_shape(rows[0]) or "prompt_completion"
    for number, row in enumerate(rows):
        if not named and shapes.row_shape(row) not in (shape, None):
            raise EvaluationError(
                f"{where}: evaluation row {number} is {shapes.row_shape(row)}, row 0 {shape}; give one shape per task."
            )
    option_answers = shapes.references(option_rows, f"{where}, training", answer_field)
    if shape == "conversational":
        split = [shapes.conversation(row, f"{where}, evaluation row {n}") for n, row in enumerate(rows)]
        prompts: list[Any] = [turns for turns, _ in split]
        answers = [answer for _, answer in split]
    elif shape == "text":
        bad = next((n for n, row in enumerate(rows) if not isinstance(row["text"], str) or not row["text"]), None)
        if bad is not None:
            raise EvaluationError(f"{where}: evaluation row {bad} has no text in 'text'; give every row its text.")
        prompts, answers = [""] * len(rows), [row["text"] for row in rows]
    else:
        prompts, answers = _prompt_completion(rows, where, prompt_field, answer_field, prompt_format)
    if metric is None and not metrics and not options:
        metric = default_metric([*answers, *option_answers], shape=shape)
    if "choice" in (metric, *metrics) and not options:
        options = sorted({*answers, *option_answers})
    if stop is None:
        stop = DEFAULT_STOP if shape == "prompt_completion" else ()
    return EvalSet(
        task, prompts, answers, metric, list(options or []), list(metrics), max_new_tokens, list(stop), shape
    )


def _prompt_completion(
    rows: list[dict[str, Any]], where: str, prompt_field: str, answer_field: str, prompt_format: str
) -> tuple[list[str], list[str]]:
    """The prompts (``prompt_format`` filled from ``prompt_field``) and answers of prompt-completion rows."""
    for number, row in enumerate(rows):
        for name in (prompt_field, answer_field):
            if name not in row:
                raise EvaluationError(
                    f"{where}: evaluation row {number} has no field {name!r} (fields: {sorted(row)}). Give "
                    "prompt/completion, messages or text rows, or set prompt_field/answer_field to the names "
                    "your data uses."
                )
    # `{prompt}`, `{instruction}` (Axolotl's custom-format name) and the field's own name all
    # stand for the prompt field, so the training template can be reused as is.
    try:
        prompts = [
            prompt_format.format(
                **{"prompt": row[prompt_field], "instruction": row[prompt_field], prompt_field: row[prompt_field]}
            )
            for row in rows
        ]
    except (KeyError, IndexError, ValueError) as error:
        raise EvaluationError(
            f"{where}: the prompt format {prompt_format!r} cannot be filled from field {prompt_field!r} ({error})."
        ) from None
    for number, row in enumerate(rows):
        if row[answer_field] is None or isinstance(row[answer_field], (list, dict)):
            raise EvaluationError(
                f"{where}: evaluation row {number} has {type(row[answer_field]).__name__} in {answer_field!r}; "
                "give the reference answer as text."
            )
    return prompts, [str(row[answer_field]) for row in rows]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters())


def _tokenizer_key(tokenizer: Any) -> tuple[Any, ...]:
    return (id(tokenizer), getattr(tokenizer, "name_or_path", None), len(tokenizer))


def _encoded(eval_set: EvalSet, tokenizer: Any, what: str) -> list[list[int]]:
    """Token ids of the set's ``prompts``, ``answers`` (what the loss covers), ``options`` (what
    `choice` ranks) or ``end`` (one list: ids that end a generation besides end-of-sequence), made
    once per tokenizer, as :mod:`~mergeforget_plugin.evaluation.shapes` says for the set's shape."""
    key = (*_tokenizer_key(tokenizer), what)
    cached = eval_set._encoded.get(key)
    if cached is None:
        cached = eval_set._encoded[key] = _encode(eval_set, tokenizer, what)
    return cached


def _encode(eval_set: EvalSet, tokenizer: Any, what: str) -> list[list[int]]:
    if eval_set.token_ids is not None:
        return [list(ids) for ids in eval_set.token_ids.get(what, [[]] if what == "end" else [])]
    if eval_set.shape == "conversational":
        return _encode_conversations(eval_set, tokenizer, what)
    if eval_set.shape == "text":
        pairs = [shapes.text_ids(tokenizer, text) for text in eval_set.answers]
        return [pair[0 if what == "prompts" else 1] for pair in pairs] if what != "end" else [[]]
    if what == "end":
        return [[]]
    if what == "prompts":
        return [list(ids) for ids in tokenizer(list(eval_set.prompts))["input_ids"]]
    texts = list(eval_set.options if what == "options" else eval_set.answers)
    encoded = [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    empty = [text for text, ids in zip(texts, encoded, strict=True) if not ids]
    if empty and (what == "options" or tokenizer.eos_token_id is None):
        raise EvaluationError(
            f"Task {eval_set.task!r}: {what} {empty[:3]} encode to no token, so they cannot be scored."
        )
    if what == "answers":  # as fine-tuning trains them: the answer, then end-of-sequence
        eos = tokenizer.eos_token_id
        encoded = [ids + ([eos] if eos is not None else []) for ids in encoded]
    return encoded


def _encode_conversations(eval_set: EvalSet, tokenizer: Any, what: str) -> list[list[int]]:
    shapes.require_chat_template(tokenizer, eval_set.task)
    if what in ("prompts", "answers"):
        pairs = [
            shapes.conversation_ids(tokenizer, turns, answer)
            for turns, answer in zip(eval_set.prompts, eval_set.answers, strict=True)
        ]
        return [pair[0 if what == "prompts" else 1] for pair in pairs]
    tail = shapes.end_of_turn(tokenizer, eval_set.prompts[0])
    if what == "end":  # the token a template closes a turn with (<|im_end|>, <|eot_id|>, ...)
        return [tail[:1]]
    # An option is ranked by its own tokens, as in the first row's conversation: the end-of-turn
    # tokens that follow every option are left out, as end-of-sequence is for prompt-completion.
    options = [shapes.conversation_ids(tokenizer, eval_set.prompts[0], option)[1] for option in eval_set.options]
    options = [ids[: len(ids) - len(tail)] if tail and ids[len(ids) - len(tail) :] == tail else ids for ids in options]
    empty = [option for option, ids in zip(eval_set.options, options, strict=True) if not ids]
    if empty:
        raise EvaluationError(
            f"Task {eval_set.task!r}: options {empty[:3]} encode to no token, so they cannot be scored."
        )
    return options


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def _length_batches(
    lengths: Sequence[int], fits: Callable[[int, int], bool], slack: float = _PADDING_SLACK
) -> list[list[int]]:
    """Indices into ``lengths``, sorted by length and cut into batches: a batch grows while
    ``fits(rows, width)`` holds and its padding stays within ``slack`` of its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, start = [], 0
    while start < len(order):
        # Sorted by length, a batch's last row is its longest.
        end, real = start + 1, lengths[order[start]]
        while end < len(order):
            width, rows = lengths[order[end]], end + 1 - start
            if not fits(rows, width):
                break
            real += width
            if rows * width > (1 + slack) * real:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


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


def _budget(model_device: torch.device, token_budget: int | None) -> int:
    return token_budget or (_GPU_TOKEN_BUDGET if model_device.type == "cuda" else _CPU_TOKEN_BUDGET)


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
    prompts = _encoded(eval_set, tokenizer, "prompts")
    options = _encoded(eval_set, tokenizer, "options")
    device = _device_of(model)
    budget = _budget(device, token_budget)
    pad_id = _pad_id(tokenizer)
    count = len(options)
    first_tokens = torch.tensor([option[0] for option in options], device=device)
    longest_option = max(len(option) for option in options)
    if longest_option > 1:
        # Options right-padded. Input position t (all but the last token) predicts token t + 1; an
        # option's last token is only a target, so it is never run through the model.
        option_ids, option_mask = _padded(options, pad_id, device)
        rest_inputs, rest_input_mask = option_ids[:, :-1], option_mask[:, :-1]
        rest_targets, rest_keep = option_ids[:, 1:], option_mask[:, 1:].bool()
    # Forward rows per prompt: the prompt itself, plus one row per option when options continue.
    rows_per_prompt = count if longest_option > 1 else 1
    scores = torch.empty((len(prompts), count), dtype=torch.float32, device=device)
    batches = _length_batches(
        [len(p) for p in prompts], lambda rows, width: rows * rows_per_prompt * (width + longest_option) <= budget
    )
    for rows in batches:
        ids, mask = _padded([prompts[i] for i in rows], pad_id, device)
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
    return scores.cpu()


@torch.no_grad()
def choice_predictions(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, *, token_budget: int | None = None
) -> list[str]:
    """The best-scoring option for every prompt."""
    best = choice_scores(model, tokenizer, eval_set, token_budget=token_budget).argmax(1)
    return [eval_set.options[int(i)] for i in best]


def _within_logit_budget(
    batches: list[list[int]], prompts: Sequence[Sequence[int]], sequences: Sequence[Sequence[int]], budget: int
) -> list[list[int]]:
    """Each batch cut so that rows x kept positions (from the shortest prompt's last token to the
    longest sequence's end) stays within ``budget``."""
    cut = []
    for rows in batches:
        while rows:
            take = len(rows)
            while take > 1:
                kept = max(len(sequences[i]) for i in rows[:take]) - min(len(prompts[i]) for i in rows[:take]) + 1
                if take * kept <= budget:
                    break
                take -= 1
            cut.append(rows[:take])
            rows = rows[take:]
    return cut


@torch.no_grad()
def completion_losses(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, *, token_budget: int | None = None
) -> torch.Tensor:
    """Summed negative log-likelihood of each answer given its prompt and the answer's token count,
    shape (rows, 2), on the CPU.

    Prompt and answer run through the model once, right-padded and batched by length. Only the
    positions from the batch's shortest prompt on reach the LM head (``logits_to_keep``), so the
    logits of long prompts are never materialized.
    """
    prompts = _encoded(eval_set, tokenizer, "prompts")
    answers = _encoded(eval_set, tokenizer, "answers")
    sequences = [p + a for p, a in zip(prompts, answers, strict=True)]
    device = _device_of(model)
    budget = _budget(device, token_budget)
    logit_budget = _GPU_LOGIT_BUDGET if device.type == "cuda" else _CPU_LOGIT_BUDGET
    longest_answer = max(len(a) for a in answers)
    pad_id = _pad_id(tokenizer)
    result = torch.zeros((len(sequences), 2), dtype=torch.float64, device=device)
    batches = _length_batches(
        [len(s) for s in sequences],
        lambda rows, width: rows * width <= budget and rows * (longest_answer + 1) <= logit_budget,
    )
    for rows in _within_logit_budget(batches, prompts, sequences, logit_budget):
        ids, mask = _padded([sequences[i] for i in rows], pad_id, device)
        width = ids.shape[1]
        starts = torch.tensor([len(prompts[i]) for i in rows], device=device)  # first answer token's position
        ends = starts + torch.tensor([len(answers[i]) for i in rows], device=device)
        first_kept = max(int(starts.min()) - 1, 0)  # the position that predicts the earliest answer token
        kept = width - first_kept
        try:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=kept).logits
        except TypeError:
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, -kept:]  # position first_kept + c predicts token first_kept + c + 1
        targets_at = torch.arange(first_kept + 1, width + 1, device=device).clamp(max=width - 1)
        targets = ids[:, targets_at]
        target_position = targets_at.unsqueeze(0)
        keep = (target_position >= starts.unsqueeze(1)) & (target_position < ends.unsqueeze(1))
        keep[:, -1] = False  # the last position predicts nothing
        nll = -(_token_logprobs(logits, targets) * keep).sum(1)
        result[torch.tensor(rows, device=device)] = torch.stack([nll.double(), keep.sum(1).double()], 1)
    return result.cpu()


@dataclass(frozen=True)
class _StopTable:
    """Per vocabulary entry: is it an end-of-sequence token, does its text hold a stop string, does
    it hold one after its first visible character, is it whitespace only. Built once per tokenizer,
    stop strings and vocabulary width."""

    eos: torch.Tensor
    stop_anywhere: torch.Tensor
    stop_after_text: torch.Tensor
    blank: torch.Tensor


def _stop_table(
    tokenizer: Any, ends: tuple[int, ...], stop: tuple[str, ...], width: int, device: torch.device
) -> _StopTable:
    cache = _STOP_TABLES.setdefault(_tokenizer_key(tokenizer), {})
    key = (ends, stop, width, str(device))
    if key not in cache:
        texts = tokenizer.batch_decode([[i] for i in range(min(width, len(tokenizer)))], skip_special_tokens=True)
        texts += [""] * (width - len(texts))
        anywhere = [any(s in text for s in stop) for text in texts]
        after_text = [any(s in text[len(text) - len(text.lstrip()) :] for s in stop) for text in texts]
        eos = torch.zeros(width, dtype=torch.bool)
        eos[[i for i in ends if i < width]] = True
        cache[key] = _StopTable(
            eos.to(device),
            torch.tensor(anywhere, device=device),
            torch.tensor(after_text, device=device),
            torch.tensor([not text.strip() for text in texts], device=device),
        )
    return cache[key]


_STOP_TABLES: dict[Any, dict[Any, _StopTable]] = {}


def _eos_ids(tokenizer: Any, model: torch.nn.Module, eval_set: EvalSet | None = None) -> list[int]:
    """The ids that end a generation: the model's generation config's, as ``model.generate`` uses,
    and the set's own (a chat template's end-of-turn token)."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None) if config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ends = [] if ids is None else [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
    own = _encoded(eval_set, tokenizer, "end")[0] if eval_set is not None else []
    return list(dict.fromkeys([*ends, *own]))


def finish_answer(text: str, stop: Sequence[str]) -> str:
    """A generated text as an answer: leading whitespace dropped, cut at the first stop string, stripped."""
    text = text.lstrip()
    cut = min((index for index in (text.find(s) for s in stop) if index >= 0), default=len(text))
    return text[:cut].strip()


def _greedy_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    eval_set: EvalSet,
    prompts: list[list[int]],
    pad_id: int,
    device: torch.device,
    early_exit: bool,
) -> list[list[int]]:
    """The greedy answer tokens of one batch of ``prompts`` (see :func:`generate_greedy`), each cut
    at its first end-of-sequence token."""
    new_tokens = eval_set.max_new_tokens
    ids, mask = _padded(prompts, pad_id, device, left=True)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    try:
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    except TypeError:
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    logits = output.logits[:, -1]
    ends = _eos_ids(tokenizer, model, eval_set)
    table = _stop_table(tokenizer, tuple(ends), tuple(eval_set.stop), logits.shape[-1], device)
    generated = torch.full((len(prompts), new_tokens), pad_id, dtype=torch.long, device=device)
    stopped = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    begun = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    position = positions[:, -1:]
    steps = new_tokens
    for step in range(new_tokens):
        token = logits.argmax(-1)
        generated[:, step] = token
        stopped |= table.eos[token] | table.stop_after_text[token] | (begun & table.stop_anywhere[token])
        begun |= ~table.blank[token]
        if step + 1 == new_tokens or (early_exit and (step + 1) % _STOP_CHECK_EVERY == 0 and bool(stopped.all())):
            steps = step + 1
            break
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        position = position + 1
        output = model(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=position,
            past_key_values=output.past_key_values,
            use_cache=True,
        )
        logits = output.logits[:, -1]
    eos = set(ends)
    answers = []
    for sequence in generated[:, :steps].tolist():
        end = next((i for i, t in enumerate(sequence) if t in eos), len(sequence))
        answers.append(sequence[:end])
    return answers


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, *, token_budget: int | None = None
) -> list[str]:
    """Greedy answers to every prompt (see :func:`finish_answer`), batched.

    Prompts are sorted by length, left-padded and batched up to ``token_budget`` tokens (prompt
    and ``max_new_tokens``); each step feeds one token per row over the key/value cache. A row
    stops at an end-of-sequence token or at a token that completes a stop string once its answer
    has begun (decided on the device from a table of the vocabulary); the batch ends when every
    row has stopped (checked every ``_STOP_CHECK_EVERY`` tokens) or after ``max_new_tokens``. The
    answers equal those of ``model.generate`` one prompt at a time (tests assert it).
    """
    prompts = _encoded(eval_set, tokenizer, "prompts")
    device = _device_of(model)
    budget = _budget(device, token_budget)
    new_tokens = eval_set.max_new_tokens
    pad_id = _pad_id(tokenizer)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    early_exit = not (distributed and torch.distributed.get_world_size() > 1)
    tokens_out: list[list[int]] = [[] for _ in prompts]
    batches = _length_batches(
        [len(p) for p in prompts],
        lambda rows, width: rows * (width + new_tokens) <= budget,
        _GENERATION_PADDING_SLACK,
    )
    for rows in batches:
        batch = _greedy_batch(model, tokenizer, eval_set, [prompts[i] for i in rows], pad_id, device, early_exit)
        for row, tokens in zip(rows, batch, strict=True):
            tokens_out[row] = tokens
    texts = tokenizer.batch_decode(tokens_out, skip_special_tokens=True)
    return [finish_answer(text, eval_set.stop) for text in texts]


@torch.no_grad()
def generate_one_at_a_time(model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet) -> list[str]:
    """The reference for :func:`generate_greedy`: ``model.generate`` on one unpadded prompt at a
    time, every answer finished the same way. Slow; tests and the throughput benchmark use it."""
    from transformers import GenerationConfig

    device = _device_of(model)
    # Plain greedy decoding: a model's own generation config may add penalties the scorer does not apply.
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=eval_set.max_new_tokens,
        eos_token_id=_eos_ids(tokenizer, model, eval_set) or None,
        pad_token_id=_pad_id(tokenizer),
    )
    answers = []
    for prompt in _encoded(eval_set, tokenizer, "prompts"):
        ids = torch.tensor([prompt], device=device)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        answers.append(finish_answer(text, eval_set.stop))
    return answers


def generated_answers(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, max_new_tokens: int | None = None
) -> list[str]:
    """Greedy answers of every prompt (:func:`generate_greedy`); ``max_new_tokens`` replaces the set's own."""
    if max_new_tokens is not None and max_new_tokens != eval_set.max_new_tokens:
        from dataclasses import replace

        eval_set = replace(eval_set, max_new_tokens=max_new_tokens)
    return generate_greedy(model, tokenizer, eval_set)


_ROUGE: list[Any] = []


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference, as Super-NaturalInstructions scores it."""
    if not _ROUGE:
        from rouge_score import rouge_scorer

        _ROUGE.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True))
    scorer = _ROUGE[0]
    return [
        scorer.score(target=reference, prediction=prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def row_scores(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, metrics: Sequence[str] | None = None
) -> dict[str, list[float]]:
    """Each held-out row's score, ``{metric: [value per row]}``, for the per-row metrics of
    ``eval_set`` (or only ``metrics`` of them): 1.0 or 0.0 for ``choice`` and ``exact_match``, the
    F1 for ``rouge_l``. :func:`score` is their mean; a benchmark resamples them (a bootstrap over
    rows). ``loss`` is a token-weighted total, not a mean of rows, so it is not here. One generation
    serves ``rouge_l`` and ``exact_match``. Leaves the model's mode as found."""
    wanted = list(eval_set.metrics if metrics is None else metrics)
    was_training = model.training
    model.eval()
    values: dict[str, list[float]] = {}
    try:
        if "choice" in wanted:
            predictions = choice_predictions(model, tokenizer, eval_set)
            values["choice"] = [float(p == a) for p, a in zip(predictions, eval_set.answers, strict=True)]
        if any(name in _GENERATIVE for name in wanted):
            generated = generate_greedy(model, tokenizer, eval_set)
            if "exact_match" in wanted:
                values["exact_match"] = [
                    float(p == a.strip()) for p, a in zip(generated, eval_set.answers, strict=True)
                ]
            if "rouge_l" in wanted:
                values["rouge_l"] = rouge_l(generated, [a.strip() for a in eval_set.answers])
    finally:
        model.train(was_training)
    return values


def score(
    model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet, metrics: Sequence[str] | None = None
) -> dict[str, float]:
    """The metrics of ``eval_set`` (or only ``metrics`` of them), ``{metric: value}``: the mean of
    :func:`row_scores` for the per-row metrics; ``loss`` adds ``perplexity``. Leaves the model's
    mode as found."""
    wanted = list(eval_set.metrics if metrics is None else metrics)
    values = {name: _mean(rows) for name, rows in row_scores(model, tokenizer, eval_set, wanted).items()}
    if "loss" in wanted:
        was_training = model.training
        model.eval()
        try:
            totals = completion_losses(model, tokenizer, eval_set).sum(0)
        finally:
            model.train(was_training)
        values["loss"] = float(totals[0] / totals[1])
        values["perplexity"] = math.exp(min(values["loss"], 700.0))
    # The order scores have always come in (reports and trackers list them so).
    order = ("choice", "loss", "perplexity", "exact_match", "rouge_l")
    return {name: values[name] for name in order if name in values}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values)


def accuracy(model: torch.nn.Module, tokenizer: Any, eval_set: EvalSet) -> float:
    """The set's primary metric (the fraction answered correctly for ``choice``/``exact_match``)."""
    return score(model, tokenizer, eval_set, [eval_set.metric])[eval_set.metric]


def score_all(model: torch.nn.Module, tokenizer: Any, eval_sets: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Every metric of every set, ``{task: {metric: value}}``, in order. A set with its own
    ``score(model, tokenizer)`` (an lm-evaluation-harness probe) scores itself."""
    from tqdm.auto import tqdm

    return {
        s.task: (s.score(model, tokenizer) if hasattr(s, "score") else score(model, tokenizer, s))
        for s in tqdm(eval_sets, desc="evaluating tasks", leave=False, disable=None)
    }


def evaluate_all(model: torch.nn.Module, tokenizer: Any, eval_sets: Sequence[EvalSet]) -> dict[str, float]:
    """The primary metric on every task's held-out set, in order."""
    scored = score_all(model, tokenizer, eval_sets)
    return {s.task: scored[s.task][s.metric] for s in eval_sets}
