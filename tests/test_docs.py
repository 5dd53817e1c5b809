"""The documentation: every ```python block of README.md and docs/ runs on the CPU (or is marked with
why it cannot), every public name has an API entry, and the site builds with `mkdocs build --strict`.

A block that cannot run here (it needs a GPU, several GPUs or the Hub) carries an HTML comment
`<!-- not run: REASON -->` on the line before its fence; every other block is a case of
`test_python_block_runs`, so a new block cannot go untested. The blocks run with small local
stand-ins: the tiny Llama for a model from the Hub, the demo tasks' rows for the user's datasets,
and an `SFTConfig` with the CPU settings and a 3-step budget.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import REPO, demo_rows

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NOT_RUN = re.compile(r"^\s*<!-- not run: (.*?) -->\s*$", flags=re.M)  # on a line of its own
FENCE = re.compile(r"^(\s*)(`{3,})([^`\s]*)\s*$")
# Models the blocks name on the Hub, and the local stand-in for each.
HUB_MODELS = {"HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class Block:
    page: Path
    index: int  # among the page's ```python blocks
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason, for a block marked `<!-- not run: ... -->`

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.index}"


def python_blocks(page: Path) -> list[Block]:
    """The page's ```python blocks (fences at any indentation), each with the marker before it."""
    lines = page.read_text().split("\n")
    blocks, start = [], None  # start: the open fence's line, language, indentation and backticks
    for at, line in enumerate(lines):
        fence = FENCE.match(line)
        if not fence:
            continue
        indent, ticks, language = len(fence.group(1)), len(fence.group(2)), fence.group(3)
        if start is None:
            start = (at, language, indent, ticks)
            continue
        if language or ticks < start[3]:  # a fence inside a block is text of the block
            continue
        opened, language, indent, _ = start
        start = None
        if language != "python":
            continue
        previous = next((text for text in reversed(lines[:opened]) if text.strip()), "")
        marker = NOT_RUN.match(previous)
        code = "\n".join(text[indent:] for text in lines[opened + 1 : at]) + "\n"
        blocks.append(Block(page, len(blocks), opened + 1, code, marker.group(1).strip() if marker else None))
    assert start is None, f"{page}: the code block opened at line {start[0] + 1} never closes"
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in python_blocks(page)]
RUN = [block for block in ALL_BLOCKS if block.not_run is None]


def test_the_block_finder_reads_markers_and_indented_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nrun = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\ngpu = 1\n```\n"
        "\n- a list item:\n\n  ```python\n  indented = 1\n  ```\n\n```bash\necho no\n```\n"
        "\n````markdown\n```python\nshown = 1\n```\n````\n"
    )
    blocks = python_blocks(page)
    assert [(block.code, block.not_run) for block in blocks] == [
        ("run = 1\n", None),
        ("gpu = 1\n", "needs a GPU"),
        ("indented = 1\n", None),
    ]


def test_every_python_block_is_found_and_every_marker_has_a_reason():
    for page in PAGES:
        text, where = page.read_text(), page.relative_to(REPO)
        # Python under another fence name would escape the runner: one spelling only.
        assert not re.search(r"^\s*```(py|python3|pycon|ipython)\s*$", text, flags=re.M), f"{where}: use ```python"
        fences = len(re.findall(r"^\s*```python\s*$", text, flags=re.M))
        assert fences == len(python_blocks(page)), f"{where}: a ```python fence the runner does not see"
        markers = NOT_RUN.findall(text)
        marked = [block for block in python_blocks(page) if block.not_run is not None]
        assert len(markers) == len(marked), f"{where}: a `<!-- not run: ... -->` that is not right before a block"
        assert all(block.not_run for block in marked), f"{where}: a `<!-- not run: -->` without its reason"
    assert any(block.page.name == "README.md" for block in RUN), "the README's quickstart must run"
    assert {block.page.name for block in RUN} >= {"README.md", "trl.md", "replay-guard.md"}


@pytest.fixture
def stand_ins(tiny_model_dir, chat_model_dir, tmp_path, monkeypatch):
    """A namespace of what the blocks leave to the reader, and a CPU `SFTConfig`; runs in `tmp_path`."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    from mergeforget_plugin import Task

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        loader = auto.from_pretrained.__func__

        def from_local(cls, name, *args, _loader=loader, **kwargs):
            # SmolLM2-135M-Instruct has a ChatML template: so has its stand-in.
            return _loader(cls, chat_model_dir if str(name) in HUB_MODELS else name, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(from_local))
    real_config = trl.SFTConfig

    def cpu_config(**kwargs):
        # What a CPU-only user adds (docs/trl.md, "Notes for CPU runs"), plus a short budget.
        return real_config(**{"use_cpu": True, "bf16": False, "max_steps": 3, "report_to": [], **kwargs})

    monkeypatch.setattr(trl, "SFTConfig", cpu_config)
    train = {name: Dataset.from_list(demo_rows(name, "train")[:16]) for name in ("antonyms", "plurals", "capitals")}
    test = {name: Dataset.from_list(demo_rows(name, "test")) for name in ("antonyms", "plurals")}
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return {
        "base_model": transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        "tokenizer": transformers.AutoTokenizer.from_pretrained(tiny_model_dir),
        "model": get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])),
        "ds_sentiment": train["antonyms"],
        "ds_topics": train["plurals"],
        "ds_qa": train["capitals"],
        "train_a": train["antonyms"],
        "test_a": test["antonyms"],
        "train_b": train["plurals"],
        "test_b": test["plurals"],
        "tasks": [
            Task("sentiment", train["antonyms"], test["antonyms"]),
            Task("topics", train["plurals"], test["plurals"]),
        ],
        "args": cpu_config(output_dir="out"),
    }


@pytest.mark.parametrize("block", RUN, ids=[block.name for block in RUN])
def test_python_block_runs(block, stand_ins, tmp_path):
    exec(compile(block.code, f"{block.name} (line {block.line})", "exec"), stand_ins)

    from mergeforget_plugin import load_state

    for state_dir in sorted(path for path in tmp_path.rglob("state") if path.is_dir()):
        # A block that trains leaves a state with its finished tasks.
        assert load_state(state_dir).finished_tasks, state_dir
    if (tmp_path / "out" / "state").is_dir():
        assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_every_yaml_block_parses():
    import yaml

    blocks = [
        (page, code)
        for page in PAGES
        for code in re.findall(r"^```yaml\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    ]
    assert len(blocks) >= 5
    for page, code in blocks:
        value = yaml.safe_load(code)
        assert isinstance(value, dict), f"{page.relative_to(REPO)}: {code[:80]}"
        if "plugins" in value:  # the Axolotl plugin block names the plugin as Axolotl imports it
            assert value["plugins"] == ["mergeforget_plugin.MergeForgetPlugin"] and "mergeforget" in value


def test_api_reference_documents_every_public_name_and_nothing_else():
    import mergeforget_plugin

    entries = [
        match
        for page in sorted((REPO / "docs" / "api").glob("*.md"))
        for match in re.findall(r"^::: mergeforget_plugin\.(\S+)\s*$", page.read_text(), flags=re.M)
    ]
    assert sorted(entries) == sorted(set(entries)), "a name documented twice"
    assert set(entries) == set(mergeforget_plugin.__all__)


def test_mkdocs_build_is_strict_clean(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='the docs site needs the `docs` extra: pip install -e ".[docs]"')
    site = tmp_path / "site"
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    # The README's marked sections and benchmarks/RESULTS.md are included, not copied.
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in (site / "index.html").read_text()
    demo = (site / "demo" / "index.html").read_text()
    assert "2026-11-25" in demo and "76.9" in demo and "shows no more than that" in demo
    assert "lambda_schedule" in (site / "strategies" / "index.html").read_text()
    assert "R[j][j]" in (site / "results" / "index.html").read_text()
    # The API pages come from the docstrings: a section of parameters for each of the TRL entry points.
    api = (site / "api" / "trl" / "index.html").read_text()
    assert all(name in api for name in ("MergeForgetCallback", "train_sequence", "SequenceResult"))
    assert api.count("Parameters:") >= 2
