"""MkDocs hooks of the documentation site (mkdocs.yml, `hooks:`).

1. `::: mergeforget_plugin.NAME` for the names the package root imports on first use.
   `mergeforget_plugin/__init__.py` imports most public names lazily, through `__getattr__` and its
   `_LAZY` table (name -> module), so griffe, which reads the source without running it, cannot find
   them at the package root. The hook reads that table from the source and rewrites
   `mergeforget_plugin.NAME` in `:::` lines and cross-references to `mergeforget_plugin.MODULE.NAME`,
   so the pages name every object as users import it.
2. A whole Markdown file of the repository included with `--8<-- "PATH.md"` on a line of its own
   (docs/results.md: benchmarks/RESULTS.md) is inserted here, with `][` outside code escaped, so
   that its matrix entries (`R[j][j]`) are not read as cross-references. Sections of a file
   (`--8<-- "README.md:NAME"`) are left to pymdownx.snippets.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "mergeforget_plugin"
REPO = Path(__file__).resolve().parent.parent
INIT = REPO / PACKAGE / "__init__.py"
WHOLE_FILE = re.compile(r'^--8<-- "([^":]+\.md)"$', flags=re.M)
CODE_SPAN = re.compile(r"(`+).*?\1")


def lazy_modules() -> dict[str, str]:
    """The package root's `_LAZY` table, read from its source."""
    for node in ast.parse(INIT.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(target, ast.Name) and target.id == "_LAZY" for target in targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{INIT} has no _LAZY table: update docs/hooks.py to how the package imports its names")


def escape_references(text: str) -> str:
    """`text` with every `][` outside fenced blocks and code spans written `]\\[`."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            parts, end = [], 0
            for span in CODE_SPAN.finditer(line):
                parts += [line[end : span.start()].replace("][", "]\\["), span.group(0)]
                end = span.end()
            line = "".join([*parts, line[end:].replace("][", "]\\[")])
        lines.append(line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_) -> str:
    markdown = WHOLE_FILE.sub(lambda match: escape_references((REPO / match.group(1)).read_text()), markdown)
    table = lazy_modules()

    def canonical(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{PACKAGE}.{table[name]}.{name}" if name in table else match.group(0)

    # `::: mergeforget_plugin.NAME` at the start of a line, and `[title][mergeforget_plugin.NAME]`.
    return re.sub(rf"(^::: |\]\[){re.escape(PACKAGE)}\.(\w+)\b(?!\.)", canonical, markdown, flags=re.M)
