"""`mergeforget prepare-data`: the Standard CL splits from files in the published formats, offline.

The local copies are small files written exactly like Zhang et al.'s `*_csv` releases (no header,
every field quoted, the class index from 1 first, line breaks as a literal backslash-n; DBpedia as
the `.tgz`), and the Hub path reads a local dataset directory in the Hub datasets' column layout
through the same `datasets.load_dataset` call.
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mergeforget_plugin.cli import main
from mergeforget_plugin.data.standard_cl import SOURCES, prepare
from mergeforget_plugin.evaluation.scoring import read_rows
from mergeforget_plugin.integrations.axolotl.recipe import load_recipe

from .helpers import REPO

ROWS_PER_CLASS = {"train": 7, "test": 4}


def write_published_csv(path: Path, classes: int, columns: int, rows_per_class: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        for number in range(rows_per_class):
            for label in range(1, classes + 1):
                fields = [f"class {label} row {number} field {column}\\nsecond line" for column in range(columns)]
                writer.writerow([str(label), *fields])


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    for source in SOURCES.values():
        for split, count in ROWS_PER_CLASS.items():
            write_published_csv(
                root / source.archive / f"{split}.csv", len(source.labels), len(source.csv_fields), count
            )
    # DBpedia as the tarball it is published as.
    with tarfile.open(root / "dbpedia_csv.tgz", "w:gz") as tar:
        tar.add(root / "dbpedia_csv", arcname="dbpedia_csv")
    shutil.rmtree(root / "dbpedia_csv")
    return root


def test_prepare_data_writes_balanced_splits_the_recipes_read(published, tmp_path, capsys):
    recipe = tmp_path / "standard-cl-order1.yaml"
    shutil.copy(REPO / "recipes" / "standard-cl-order1.yaml", recipe)
    out = tmp_path / "data" / "standard_cl"

    code = main(["prepare-data", str(out), "--from", str(published), "--train-per-class", "5", "--test-per-task", "20"])

    assert code == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["tasks"]) == set(SOURCES)
    for task, source in SOURCES.items():
        classes = len(source.labels)
        train, test = read_rows(out / task / "train.jsonl"), read_rows(out / task / "test.jsonl")
        assert Counter(row["completion"] for row in train) == {f" {label}": 5 for label in source.labels}
        asked = [20 // classes + (1 if index < 20 % classes else 0) for index in range(classes)]
        expected_test = [min(count, ROWS_PER_CLASS["test"]) for count in asked]
        test_counts = Counter(row["completion"] for row in test)
        assert [test_counts[f" {label}"] for label in source.labels] == expected_test
        assert manifest["tasks"][task]["test"]["per_class"] == expected_test
        row = train[0]
        assert row["prompt"].startswith(f"{source.question}\nOptions: {', '.join(source.labels)}\n")
        assert row["prompt"].endswith("\nAnswer:")
        assert "\\n" not in row["prompt"] and "second line" in row["prompt"]
        label = row["completion"].strip()
        assert f"class {source.labels.index(label) + 1} row" in row["prompt"]
        # Shuffled: the classes are interleaved, not in blocks.
        assert len({r["completion"] for r in train[:classes]}) > 1
    # AG News' 4 classes asked for 5 test rows each, and the file has 4: said, not hidden.
    assert "agnews    test       16  4-4  (the source has fewer rows for World: 4 of 5;" in printed
    assert printed.count("fewer rows") == 1

    # Every data path of the recipe resolves (relative to the recipe) to a file just written, and
    # the recipe's evaluation reads each test split with the task's labels as its options.
    config = yaml.safe_load(recipe.read_text())
    for task in config["tasks"]:
        for spec in [*task["datasets"], *task["test_datasets"]]:
            assert (recipe.parent / spec["path"]).is_file(), spec["path"]
    specs = load_recipe(recipe).eval_specs()
    assert [spec.task for spec in specs] == ["dbpedia", "amazon", "yahoo", "agnews"]
    for spec in specs:
        eval_set = spec.to_eval_set()
        assert sorted(eval_set.options) == sorted(f" {label}" for label in SOURCES[spec.task].labels)
        assert eval_set.prompts[0].endswith("\nAnswer:")


def test_same_seed_same_files_other_seed_other_sample(published, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(tmp_path / name, ["agnews"], local=published, train_per_class=3, test_per_task=8, seed=seed)
    first, again, other = ((tmp_path / n / "agnews" / "train.jsonl").read_bytes() for n in "abc")
    assert first == again
    assert first != other


def test_hub_layout_through_datasets(tmp_path):
    # A local dataset directory in the Hub's column layout (`label`, `text`), loaded the way the
    # Hub id would be; the real Hub ids are not reachable from these machines.
    hub = tmp_path / "ag_news_hub"
    hub.mkdir()
    for split, count in (("train", 6), ("test", 3)):
        rows = [{"text": f"story {n} of class {label}", "label": label} for n in range(count) for label in range(4)]
        (hub / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    manifest = prepare(tmp_path / "out", ["agnews"], hub_ids={"agnews": str(hub)}, train_per_class=6, test_per_task=8)

    assert manifest["source"] == {"agnews": str(hub)}
    rows = read_rows(tmp_path / "out" / "agnews" / "train.jsonl")
    assert Counter(row["completion"] for row in rows) == {f" {label}": 6 for label in SOURCES["agnews"].labels}
    # Hub labels are 0-based: label 0 is the first class name.
    world = [row for row in rows if row["completion"] == " World"]
    assert all("of class 0" in row["prompt"] for row in world)


def test_bad_sources_are_named_with_what_to_do(published, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(published / "ag_news_csv", broken / "ag_news_csv")
    with (broken / "ag_news_csv" / "train.csv").open("a") as handle:
        handle.write('"9","title","text"\n')

    assert main(["prepare-data", str(tmp_path / "o1"), "--from", str(broken), "--tasks", "agnews"]) == 2
    error = capsys.readouterr().err
    assert f"{broken / 'ag_news_csv' / 'train.csv'}:29: class index '9' is not between 1 and 4" in error

    assert main(["prepare-data", str(tmp_path / "o2"), "--from", str(broken), "--tasks", "yelp"]) == 2
    error = capsys.readouterr().err
    assert "found neither" in error and "yelp_review_full_csv" in error

    # Amazon's 5-class set has no known Hub copy: say what to give instead, before reading anything.
    assert main(["prepare-data", str(tmp_path / "o3"), "--tasks", "agnews", "amazon"]) == 2
    error = capsys.readouterr().err
    assert "['amazon']" in error and "--from DIR" in error and "amazon_review_full_csv" in error
    assert not (tmp_path / "o3").exists()

    assert main(["prepare-data", str(tmp_path / "o4"), "--from", str(published), "--train-per-class", "0"]) == 2
    assert "--train-per-class" in capsys.readouterr().err
