"""Data for the SuperNI continual benchmark: 15 Super-NaturalInstructions tasks, scored with ROUGE-L.

The benchmark the SLAO paper reports as "SuperNI" (after SAPT, Zhao et al. 2024, whose public
scripts fix the task list and the two orders: ``gen_script_superni_llama.py`` in
circle-hit/SAPT; GainLoRA's scripts use the same orders). Each task is a file ``tasks/<task>.json``
of the natural-instructions release (allenai/natural-instructions): a ``Definition`` (a list
of strings) and ``Instances`` (``{"id", "input", "output": [references]}``).

Rows are written as SAPT's zero-shot loader builds its prompt (``cl_dataset.py``)::

    Definition: <definition>

    Now complete the following example -
    Input: <input>
    Output:

with the first reference as the completion (after one space, so that a tokenizer sees a word
start). Sizes: SAPT's copies hold 1,000 training and 100 test instances for ten of the tasks,
and fewer for five smaller ones (samsum 160 / 20, diplomacy 126 / 16, outcome extraction
338 / 43, multi_woz 142 / 18, commonsenseqa 975 / 100); here a task with fewer instances than
``train + test`` keeps a tenth of them (at most ``test``) for testing and trains on the rest.
Sampling is a seeded shuffle per task: the same files and seed write the same rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import write_atomic
from ..errors import DataPrepError

ORDER_1 = (
    "task1572_samsum_summary",
    "task363_sst2_polarity_classification",
    "task1290_xsum_summarization",
    "task181_outcome_extraction",
    "task002_quoref_answer_generation",
    "task1510_evalution_relation_extraction",
    "task639_multi_woz_user_utterance_generation",
    "task1729_personachat_generate_next",
    "task073_commonsenseqa_answer_generation",
    "task1590_diplomacy_text_generation",
    "task748_glucose_reverse_cause_event_detection",
    "task511_reddit_tifu_long_text_summarization",
    "task591_sciq_answer_generation",
    "task1687_sentiment140_classification",
    "task875_emotion_classification",
)
ORDER_2 = (
    "task748_glucose_reverse_cause_event_detection",
    "task073_commonsenseqa_answer_generation",
    "task1590_diplomacy_text_generation",
    "task639_multi_woz_user_utterance_generation",
    "task1572_samsum_summary",
    "task1687_sentiment140_classification",
    "task591_sciq_answer_generation",
    "task363_sst2_polarity_classification",
    "task1510_evalution_relation_extraction",
    "task1729_personachat_generate_next",
    "task181_outcome_extraction",
    "task511_reddit_tifu_long_text_summarization",
    "task002_quoref_answer_generation",
    "task1290_xsum_summarization",
    "task875_emotion_classification",
)
TRAIN_PER_TASK = 1000
TEST_PER_TASK = 100
# About SAPT's 1,024-token input limit for LLaMA models, in characters of English text.
MAX_INPUT_CHARS = 4000


def prompt(definition: str, text: str) -> str:
    return f"Definition: {definition}\n\nNow complete the following example -\nInput: {text}\nOutput:"


def task_file(root: Path, task: str) -> Path:
    """``ROOT/tasks/<task>.json`` (a checkout of the release) or ``ROOT/<task>.json``."""
    for candidate in (root / "tasks" / f"{task}.json", root / f"{task}.json"):
        if candidate.is_file():
            return candidate
    raise DataPrepError(
        f"{root / 'tasks' / f'{task}.json'} does not exist (nor {root / f'{task}.json'}). Give --from the folder of "
        "a natural-instructions checkout (it holds tasks/), or a folder of the task files."
    )


def read_task(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """The task's definition and its ``(input, first reference)`` pairs; refuses a file that has none."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataPrepError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
    if not isinstance(data, dict):
        raise DataPrepError(f"{path}: expected a JSON object with Definition and Instances.")
    definition = data.get("Definition")
    if isinstance(definition, list):
        definition = definition[0] if definition else None
    if not isinstance(definition, str) or not definition.strip():
        raise DataPrepError(f"{path}: no Definition (a non-empty string, or a list whose first item is one).")
    instances = data.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise DataPrepError(f"{path}: the task has no Instances, so it gives no rows.")
    if len(instances) < 2:
        raise DataPrepError(f"{path}: one instance cannot give both a training and a test row.")
    pairs = []
    for number, instance in enumerate(instances):
        name = f"{path}: instance {number}" + (f" ({instance.get('id')})" if isinstance(instance, dict) else "")
        if not isinstance(instance, dict) or not isinstance(instance.get("input"), str):
            raise DataPrepError(f"{name} has no input text.")
        output = instance.get("output")
        # The release stores a list of references; some copies store one string.
        references = [output] if isinstance(output, str) else output
        if not isinstance(references, list) or not references or not str(references[0]).strip():
            raise DataPrepError(f"{name} has an empty output list: every instance needs a reference.")
        pairs.append((instance["input"], str(references[0]).strip()))
    return definition.strip(), pairs


def split_sizes(available: int, train: int, test: int) -> tuple[int, int]:
    """(train rows, test rows) for a task with ``available`` instances (see the module docstring)."""
    if available >= train + test:
        return train, test
    held_out = min(test, max(1, available // 10))
    return min(train, available - held_out), held_out


def prepare_superni(
    out_dir: str | Path,
    source: str | Path,
    tasks: Sequence[str] = ORDER_1,
    *,
    train_per_task: int = TRAIN_PER_TASK,
    test_per_task: int = TEST_PER_TASK,
    seed: int = 0,
    max_input_chars: int = MAX_INPUT_CHARS,
) -> dict[str, Any]:
    """Write OUT/<task>/train.jsonl and test.jsonl for every task, and OUT/manifest.json; return the manifest.

    Every task file is read and checked before anything is written.
    """
    if train_per_task < 1 or test_per_task < 1 or max_input_chars < 1:
        raise DataPrepError("--train-per-class, --test-per-task and --max-text-chars must be at least 1.")
    root = Path(source)
    if not root.is_dir():
        raise DataPrepError(f"--from {root}: not a directory. Give a natural-instructions checkout (it holds tasks/).")
    read = {task: (task_file(root, task), read_task(task_file(root, task))) for task in tasks}
    out = Path(out_dir)
    manifest: dict[str, Any] = {
        "benchmark": "superni",
        "source": str(root),
        "seed": seed,
        "train_per_task": train_per_task,
        "test_per_task": test_per_task,
        "max_input_chars": max_input_chars,
        "prompt": prompt("<Definition[0]>", "<input>") + " <output[0]>",
        "tasks": {},
    }
    for task, (path, (definition, pairs)) in read.items():
        order = list(range(len(pairs)))
        random.Random(f"{seed}:{task}").shuffle(order)
        train, test = split_sizes(len(pairs), train_per_task, test_per_task)
        splits = {"test": order[:test], "train": order[test : test + train]}
        for split, indices in splits.items():
            rows = [
                {"prompt": prompt(definition, pairs[i][0][:max_input_chars]), "completion": " " + pairs[i][1]}
                for i in indices
            ]
            write_atomic(out / task / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        manifest["tasks"][task] = {
            "file": str(path),
            "instances": len(pairs),
            "train": len(splits["train"]),
            "test": len(splits["test"]),
        }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
