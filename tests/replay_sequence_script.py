"""A two-task TRL sequence with replay: run in its own process (and killed) by the replay kill test,
and in the test's process for the reference and the resumed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeforget_plugin import ReplayConfig  # noqa: E402

TASKS = ("antonyms", "plurals")
REPLAY = ReplayConfig(buffer_rows=6, fraction=0.2, seed=1)


def run(model, tokenizer, output: Path):
    from transformers import TrainerCallback

    from mergeforget_plugin import train_sequence
    from tests.helpers import demo_tasks, sft_config

    class RecordMix(TrainerCallback):
        """Writes how many rows a task trains on, beside its trainer outputs."""

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / "rows.json").write_text(json.dumps(len(train_dataloader.dataset)))

    return train_sequence(
        model,
        demo_tasks(TASKS),
        args=sft_config(output),
        processing_class=tokenizer,
        replay=REPLAY,
        loss_matrix=False,
        callbacks=[RecordMix()],
    )


if __name__ == "__main__":
    from transformers import AutoTokenizer

    from tests.helpers import peft_model

    model_dir, output = sys.argv[1], Path(sys.argv[2])
    run(peft_model(model_dir), AutoTokenizer.from_pretrained(model_dir), output)
