"""Held-out rows of Axolotl's dataset types, scored as Axolotl trains rows of that type.

A ``test_datasets`` entry whose ``type`` names one of Axolotl's prompt strategies (``chat_template``,
``alpaca``, ``completion``, ``input_output``) is tokenized by that strategy
(``axolotl.utils.data.get_dataset_wrapper``, with the task's config: its ``chat_template``,
``sequence_len``, the entry's ``field_messages``, ``message_property_mappings``, ``roles``, ...),
so a held-out row and a training row of the same text are the same tokens. Of each row the
answer is the *last run of trained tokens* (the strategy's labels; ``train_on_inputs`` is set
false for held-out rows so that labels mark answers only): the last assistant turn and its
end-of-turn token for ``chat_template``, the output and end-of-sequence for ``alpaca``, the last
labelled segment for ``input_output``. The prompt is every token before it. A ``completion`` row
is trained on every token: its first token is the prompt and the rest the answer, scored by
``loss`` only, as a TRL ``text`` row is.

Before anything trains (the recipe's pre-flight, no tokenizer) the rows are checked for what the
type reads: the fields, the turns' roles, an assistant turn to score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import EvaluationError
from ...evaluation import shapes
from ...evaluation.scoring import EvalSet, default_metric
from ...evaluation.shapes import ROLES

# The types whose strategies the held-out rows go through (a custom format, a mapping, is read as
# prompt/answer fields by `eval_set_from_rows`).
STRATEGY_TYPES = ("chat_template", "alpaca", "completion", "input_output")
_LANGUAGE_MODELLING = ("completion",)


def base_type(dataset: Mapping[str, Any]) -> str | None:
    """The strategy a ``test_datasets`` entry names (``alpaca`` of ``alpaca:chat``), or ``None`` for
    a custom format (a mapping) or no type."""
    kind = dataset.get("type")
    return kind.split(":")[0].split(".")[0] if isinstance(kind, str) else None


def check_rows(
    rows: Sequence[Mapping[str, Any]], dataset: Mapping[str, Any], metrics: Sequence[str], where: str
) -> None:
    """Refuse, naming the row and field, what the type's strategy could not read or score."""
    kind = base_type(dataset)
    if kind not in STRATEGY_TYPES:
        raise EvaluationError(
            f"{where}: type {dataset.get('type')!r} is not scored as held-out rows; use chat_template, alpaca, "
            "completion, input_output, or a custom format (field_instruction/field_output)."
        )
    unfit = [name for name in metrics if name != "loss"]
    if kind in _LANGUAGE_MODELLING and unfit:
        raise EvaluationError(
            f"{where}: {', '.join(unfit)} cannot score `completion` rows: every token is trained, so there is no "
            "answer to pick or generate. Score them with metric loss."
        )
    for number, row in enumerate(rows):
        at = f"{where}, row {number}"
        if kind == "chat_template":
            _check_conversation(row, dataset, at)
        elif kind == "alpaca":
            _require(row, ("instruction", "output"), at)
        elif kind == "completion":
            _require(row, (dataset.get("field") or "text",), at)
        else:
            segments = row.get("segments")
            if not isinstance(segments, list) or not any(isinstance(s, Mapping) and s.get("label") for s in segments):
                raise EvaluationError(
                    f"{at}: input_output rows need `segments` with at least one `label: true` segment."
                )


def _require(row: Mapping[str, Any], fields: Sequence[str], at: str) -> None:
    for name in fields:
        if not isinstance(row.get(name), str):
            found = "no field" if name not in row else f"{type(row[name]).__name__} in field"
            raise EvaluationError(f"{at}: {found} {name!r} (fields: {sorted(row)}); the type reads it as text.")


def _check_conversation(row: Mapping[str, Any], dataset: Mapping[str, Any], at: str) -> None:
    field = dataset.get("field_messages") or "messages"
    mappings = dict(dataset.get("message_property_mappings") or {})
    role_key, content_key = mappings.get("role", "role"), mappings.get("content", "content")
    aliases = {source: target for target, sources in (dataset.get("roles") or {}).items() for source in sources}
    turns = row.get(field)
    if not isinstance(turns, list):
        raise EvaluationError(f"{at}: no list of turns in field {field!r} (fields: {sorted(row)}); set field_messages.")
    roles = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            raise EvaluationError(
                f"{at}, {field} turn {number}: needs {role_key!r} and {content_key!r} (set message_property_mappings "
                f"to the names your turns use), got {turn!r:.80}."
            )
        role = aliases.get(turn[role_key], turn[role_key])
        if role not in ROLES:
            raise EvaluationError(
                f"{at}, {field} turn {number}: unknown role {turn[role_key]!r}; map it with `roles:` "
                f"(e.g. roles: {{assistant: [{turn[role_key]!r}]}}) to one of {', '.join(ROLES)}."
            )
        roles.append(role)
    if "assistant" not in roles:
        raise EvaluationError(f"{at}, {field}: no assistant turn, so there is no answer to score.")


def last_trained_span(input_ids: Sequence[int], labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """A tokenized row's prompt (every token before its last run of trained tokens) and answer (that
    run); a row trained on every token from its first splits after the first token."""
    trained = [number for number, label in enumerate(labels) if label != -100]
    if not trained:
        return list(input_ids), []
    end = trained[-1] + 1
    start = end - 1
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    start = max(start, 1)
    return list(input_ids[:start]), list(input_ids[start:end])


def tokenized_rows(
    rows: Sequence[Mapping[str, Any]], dataset: Mapping[str, Any], tokenizer: Any, cfg: Any
) -> list[tuple[list[int], list[int]]]:
    """``rows`` through the prompt strategy of ``dataset``'s type under ``cfg``: each row's
    ``(prompt ids, answer ids)`` (see :func:`last_trained_span`)."""
    from axolotl.utils.data import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.datasets import SFTDataset
    from datasets import Dataset

    config = DictDefault(SFTDataset(**dict(dataset)).model_dump(exclude_none=True))
    held_out_cfg = DictDefault({**dict(cfg), "train_on_inputs": False})
    kind = str(dataset["type"])
    wrapped, _ = get_dataset_wrapper(
        config,
        tokenizer,
        held_out_cfg,
        kind.split(":")[0],
        Dataset.from_list([dict(r) for r in rows]),
        kind.split(":")[1] if ":" in kind else None,
    )
    return [last_trained_span(row["input_ids"], row["labels"]) for row in wrapped]


def strategy_eval_set(
    task: str,
    rows: Sequence[Mapping[str, Any]],
    dataset: Mapping[str, Any],
    tokenizer: Any,
    cfg: Any,
    *,
    option_rows: Sequence[Mapping[str, Any]] = (),
    metric: str | None = None,
    metrics: Sequence[str] = (),
    options: Sequence[str] | None = None,
    max_new_tokens: int,
    stop: Sequence[str] | None,
    where: str,
) -> EvalSet:
    """The held-out ``rows`` of a strategy type as a ``tokens`` :class:`EvalSet` for ``tokenizer``."""
    check_rows(rows, dataset, [m for m in (metric, *metrics) if m], where)
    pairs = tokenized_rows(rows, dataset, tokenizer, cfg)
    special = set(tokenizer.all_special_ids)
    references = [_reference(tokenizer, answer) for _, answer in pairs]
    empty = next((number for number, (_, answer) in enumerate(pairs) if not answer), None)
    if empty is not None:
        raise EvaluationError(f"{where}, row {empty}: no trained token after tokenization, so nothing to score.")
    language_modelling = base_type(dataset) in _LANGUAGE_MODELLING
    # Options are ranked by their own tokens: a trailing end-of-turn or end-of-sequence token is left out.
    own = {}
    if not language_modelling:
        training = tokenized_rows(option_rows, dataset, tokenizer, cfg) if option_rows else []
        for _, answer in [*pairs, *training]:
            own.setdefault(_reference(tokenizer, answer), _without_end(answer, special))
    if metric is None and not metrics and not options:
        metric = "loss" if language_modelling else default_metric(own or references)
    if "choice" in (metric, *metrics):
        options = list(options) if options else sorted(own)
        unseen = [option for option in options if option not in own]
        if unseen:
            raise EvaluationError(
                f"{where}: options {unseen[:3]} are no row's answer; with an Axolotl type the options are the rows' "
                "answers (held-out and training), as the strategy tokenizes them."
            )
    ends = [answer[-1] for _, answer in pairs[:1] if answer[-1] in special]
    if base_type(dataset) == "chat_template" and getattr(tokenizer, "chat_template", None):
        # The template's end-of-turn token ends a generation even when the config does not train it.
        ends += shapes.end_of_turn(tokenizer, [{"role": "user", "content": "?"}])[:1]
    return EvalSet(
        task,
        [prompt for prompt, _ in pairs],
        references,
        metric,
        list(options or []),
        list(metrics),
        max_new_tokens,
        list(stop) if stop is not None else [],
        "tokens",
        {
            "prompts": [prompt for prompt, _ in pairs],
            "answers": [answer for _, answer in pairs],
            "options": [own[option] for option in options or []],
            "end": [list(dict.fromkeys(ends))],
        },
    )


def _reference(tokenizer: Any, answer: Sequence[int]) -> str:
    return tokenizer.decode(list(answer), skip_special_tokens=True).strip()


def _without_end(answer: Sequence[int], special: set[int]) -> list[int]:
    ids = list(answer)
    while len(ids) > 1 and ids[-1] in special:
        ids.pop()
    return ids
