"""Data for the Standard CL Benchmark: the JSONL splits that `recipes/standard-cl-order*.yaml` read.

The five text-classification sets of Zhang, Zhao & LeCun (2015) - AG News, Amazon, Yelp, DBpedia,
Yahoo Answers - in the sample sizes of the O-LoRA / SLAO protocol: 1,000 training rows per class
and 7,600 test rows per task (O-LoRA's released `CL_Benchmark` files hold that many). Rows come
from local copies in the published formats (each dataset's `*_csv` folder or `.tgz`: CSV without
a header, the class index from 1 first) or, on a machine that reaches the Hub, from `datasets`.

Sampling is uniform within each class (reservoir sampling, so a 3.6-million-row file is read
once in constant memory) and seeded: the same source and seed write the same files.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import write_atomic
from ..errors import DataPrepError

TOPIC = "Which topic is this text about?"
SENTIMENT = "How positive is this review?"
REVIEW_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")


@dataclass(frozen=True)
class Source:
    task: str
    question: str
    labels: tuple[str, ...]
    archive: str  # the published folder / tarball name
    csv_fields: tuple[str, ...]  # what each CSV column after the class index is, shown in the prompt
    hub_id: str | None  # None: no copy of this exact set on the Hub is known
    hub_label: str
    hub_fields: tuple[tuple[str, str], ...]  # (column, shown as)


SOURCES = {
    source.task: source
    for source in (
        Source(
            "agnews",
            TOPIC,
            ("World", "Sports", "Business", "Science or Technology"),
            "ag_news_csv",
            ("Title", "Text"),
            "fancyzhx/ag_news",
            "label",
            (("text", "Text"),),
        ),
        Source(
            "dbpedia",
            TOPIC,
            (
                "Company",
                "Educational Institution",
                "Artist",
                "Athlete",
                "Office Holder",
                "Mean of Transportation",
                "Building",
                "Natural Place",
                "Village",
                "Animal",
                "Plant",
                "Album",
                "Film",
                "Written Work",
            ),
            "dbpedia_csv",
            ("Title", "Text"),
            "fancyzhx/dbpedia_14",
            "label",
            (("title", "Title"), ("content", "Text")),
        ),
        Source(
            "yelp",
            SENTIMENT,
            REVIEW_LABELS,
            "yelp_review_full_csv",
            ("Text",),
            "Yelp/yelp_review_full",
            "label",
            (("text", "Text"),),
        ),
        Source(
            "amazon",
            SENTIMENT,
            REVIEW_LABELS,
            "amazon_review_full_csv",
            ("Title", "Text"),
            None,
            "label",
            (("title", "Title"), ("text", "Text")),
        ),
        Source(
            "yahoo",
            TOPIC,
            (
                "Society & Culture",
                "Science & Mathematics",
                "Health",
                "Education & Reference",
                "Computers & Internet",
                "Sports",
                "Business & Finance",
                "Entertainment & Music",
                "Family & Relationships",
                "Politics & Government",
            ),
            "yahoo_answers_csv",
            ("Title", "Question", "Best answer"),
            "community-datasets/yahoo_answers_topics",
            "topic",
            (("question_title", "Title"), ("question_content", "Question"), ("best_answer", "Best answer")),
        ),
    )
}
TRAIN_PER_CLASS = 1000
TEST_PER_TASK = 7600
MAX_TEXT_CHARS = 1000


def _clean(text: str) -> str:
    # The published CSVs write a line break inside a field as a literal backslash-n.
    return " ".join(text.replace("\\n", " ").split())


def _row(source: Source, label: int, fields: Sequence[tuple[str, str]], max_chars: int) -> dict[str, str]:
    text = "\n".join(f"{shown}: {_clean(value)}" for shown, value in fields if _clean(value))
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + " ..."
    prompt = f"{source.question}\nOptions: {', '.join(source.labels)}\n{text}\nAnswer:"
    return {"prompt": prompt, "completion": f" {source.labels[label]}"}


@dataclass
class _Reservoirs:
    """One uniform sample per class, kept while the rows stream past."""

    quotas: list[int]
    rng: random.Random

    def __post_init__(self) -> None:
        self.kept: list[list[dict[str, str]]] = [[] for _ in self.quotas]
        self.seen = [0] * len(self.quotas)

    def offer(self, label: int, row_of) -> None:
        self.seen[label] += 1
        kept, quota, seen = self.kept[label], self.quotas[label], self.seen[label]
        if len(kept) < quota:
            kept.append(row_of())
        else:
            slot = self.rng.randrange(seen)
            if slot < quota:
                kept[slot] = row_of()


def _csv_lines(root: Path, source: Source, split: str) -> Iterator[tuple[str, list[str]]]:
    folder = root / source.archive / f"{split}.csv"
    if folder.is_file():
        with folder.open(newline="", encoding="utf-8") as handle:
            for number, line in enumerate(csv.reader(handle), 1):
                yield f"{folder}:{number}", line
        return
    for name in (f"{source.archive}.tgz", f"{source.archive}.tar.gz"):
        archive = root / name
        if archive.is_file():
            with tarfile.open(archive, "r:gz") as tar:
                member = f"{source.archive}/{split}.csv"
                try:
                    raw = tar.extractfile(member)
                except KeyError:
                    raise DataPrepError(f"{archive} has no {member}; is it the published tarball?") from None
                with io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
                    for number, line in enumerate(csv.reader(handle), 1):
                        yield f"{archive}:{member}:{number}", line
            return
    raise DataPrepError(
        f"{source.task}: found neither {root / source.archive / (split + '.csv')} nor {root / source.archive}.tgz. "
        f"Put the published {source.archive} folder or tarball in {root}, or leave out --from to read the Hub."
    )


def _local_rows(root: Path, source: Source, split: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    for where, line in _csv_lines(root, source, split):
        if len(line) != 1 + len(source.csv_fields):
            raise DataPrepError(
                f"{where}: expected {1 + len(source.csv_fields)} columns (class index, "
                f"{', '.join(source.csv_fields).lower()}), found {len(line)}."
            )
        try:
            label = int(line[0]) - 1
        except ValueError:
            label = -1
        if not 0 <= label < len(source.labels):
            raise DataPrepError(f"{where}: class index {line[0]!r} is not between 1 and {len(source.labels)}.")
        yield label, list(zip(source.csv_fields, line[1:], strict=True))


def _hub_rows(hub_id: str, source: Source, split: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    import datasets

    try:
        table = datasets.load_dataset(hub_id, split=split)
    except Exception as error:  # offline, unknown id, missing split: all mean "use local copies"
        raise DataPrepError(
            f"{source.task}: could not load split {split!r} of {hub_id!r} ({type(error).__name__}: {error}). "
            f"Without the Hub, give --from DIR holding the published {source.archive} folder or tarball."
        ) from error
    columns = [source.hub_label, *(column for column, _ in source.hub_fields)]
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise DataPrepError(f"{hub_id} ({split}) has no column {missing}; its columns are {table.column_names}.")
    for record in table.select_columns(columns):
        label = int(record[source.hub_label])  # ClassLabel: already 0-based
        if not 0 <= label < len(source.labels):
            raise DataPrepError(f"{hub_id} ({split}): label {label} is not between 0 and {len(source.labels) - 1}.")
        yield label, [(shown, str(record[column] or "")) for column, shown in source.hub_fields]


def _quotas(total: int, classes: int) -> list[int]:
    return [total // classes + (1 if index < total % classes else 0) for index in range(classes)]


def _sample(
    rows: Iterable[tuple[int, list[tuple[str, str]]]], source: Source, quotas: list[int], seed: int, max_chars: int
) -> tuple[list[dict[str, str]], list[int], list[int]]:
    reservoirs = _Reservoirs(quotas, random.Random(seed))
    for label, fields in rows:
        reservoirs.offer(label, lambda: _row(source, label, fields, max_chars))  # noqa: B023 (called at once)
    sample = [row for kept in reservoirs.kept for row in kept]
    random.Random(seed).shuffle(sample)  # interleave the classes for training
    return sample, [len(kept) for kept in reservoirs.kept], reservoirs.seen


def prepare(
    out_dir: str | Path,
    tasks: Sequence[str] = tuple(SOURCES),
    *,
    local: str | Path | None = None,
    hub_ids: dict[str, str] | None = None,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_task: int = TEST_PER_TASK,
    seed: int = 0,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> dict[str, dict]:
    """Write OUT/<task>/train.jsonl and test.jsonl for every task, and OUT/manifest.json.

    Returns the manifest: per task and split, the rows asked, written and available per class
    (a class with fewer rows than asked gives all it has; the command line says so).
    """
    unknown = [task for task in tasks if task not in SOURCES]
    if unknown:
        raise DataPrepError(f"Unknown task(s) {unknown}; choose from {sorted(SOURCES)}.")
    if train_per_class < 1 or test_per_task < 1 or max_text_chars < 1:
        raise DataPrepError("--train-per-class, --test-per-task and --max-text-chars must be at least 1.")
    hub_ids = {**{t: s.hub_id for t, s in SOURCES.items() if s.hub_id}, **(hub_ids or {})}
    if local is None:
        without = [task for task in tasks if task not in hub_ids]
        if without:
            raise DataPrepError(
                f"No Hub copy of {without} is known (Zhang et al.'s 5-class Amazon set is not on the Hub as such). "
                f"Give --from DIR holding {', '.join(SOURCES[t].archive for t in without)} (folder or .tgz), "
                f"or --hub-id TASK=ID for a Hub dataset with the same columns."
            )
    out = Path(out_dir)
    manifest: dict[str, dict] = {
        "source": str(local) if local is not None else {t: hub_ids[t] for t in tasks},
        "seed": seed,
        "train_per_class": train_per_class,
        "test_per_task": test_per_task,
        "max_text_chars": max_text_chars,
        "tasks": {},
    }
    for task in tasks:
        source = SOURCES[task]
        manifest["tasks"][task] = {"labels": list(source.labels)}
        classes = len(source.labels)
        for split, quotas in (("train", [train_per_class] * classes), ("test", _quotas(test_per_task, classes))):
            if local is not None:
                rows = _local_rows(Path(local), source, split)
            else:
                rows = _hub_rows(hub_ids[task], source, split)
            sample, per_class, available = _sample(rows, source, quotas, seed, max_text_chars)
            write_atomic(out / task / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in sample))
            manifest["tasks"][task][split] = {
                "rows": len(sample),
                "per_class": per_class,
                "asked_per_class": quotas,
                "available_per_class": available,
            }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
