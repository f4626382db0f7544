"""Copy the library code the chapters show into their Markdown, from tinylib's source.

A chapter shows a model or a helper exactly as tinylib defines it. Sphinx's
``literalinclude`` would read it from the source when the book is built, but
JupyterLab (jupyterlab-myst) and Colab render no ``literalinclude``: a student who
opens the notebook would see nothing where the code belongs. So the code sits in the
Markdown cell as a plain ``python`` block, under a MyST comment that names where it
comes from::

    % included from tinylib/models.py: model4 (tools/sync_included_code.py)
    ```python
    def model4(...):
        ...
    ```

and this tool rewrites each such block from the source. After changing tinylib, run

    python tools/sync_included_code.py          # rewrite the blocks that differ
    python tools/sync_included_code.py --check  # exit 1, naming them, if any differ

tests/test_chapters_code.py fails while a block differs from the source, so the page
cannot drift from the code. Where a cell still has a ``literalinclude`` of a
``:pyobject:``, the tool turns it into such a block.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"

MARKER = "% included from {path}: {name} (tools/sync_included_code.py)"
BLOCK = re.compile(r"^% included from (?P<path>\S+): (?P<name>\w+) \(tools/sync_included_code\.py\)\n"
                   r"```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
LITERALINCLUDE = re.compile(r"^```\{literalinclude\} \.\./(?P<path>\S+)\n:language: python\n"
                            r":pyobject: (?P<name>\w+)\n```$", re.MULTILINE)


def source_of(path: str, name: str) -> str:
    """The source of the top-level function or class ``name`` in ``path`` (from the
    repository's root), decorators included, as Sphinx's ``:pyobject:`` takes it."""
    text = (ROOT / path).read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return "\n".join(text.splitlines()[first - 1:node.end_lineno]) + "\n"
    raise LookupError(f"{path} defines no top-level {name}")


def block(path: str, name: str) -> str:
    return MARKER.format(path=path, name=name) + "\n```python\n" + source_of(path, name) + "```"


def synced(markdown: str) -> str:
    """``markdown`` with every included block (and any literalinclude) as the source is now."""
    markdown = LITERALINCLUDE.sub(lambda m: block(m["path"], m["name"]), markdown)
    return BLOCK.sub(lambda m: block(m["path"], m["name"]), markdown)


def included(markdown: str) -> list[tuple[str, str]]:
    """The (path, name) of every included block in ``markdown``."""
    return [(m["path"], m["name"]) for m in BLOCK.finditer(markdown)]


def _source_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def stale_cells(notebook: Path) -> tuple[dict, list[str]]:
    """The notebook with its blocks synced, and a line for each cell that changed."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    changed = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        new = synced(text)
        if new != text:
            cell["source"] = _source_lines(new)
            names = ", ".join(f"{p}: {n}" for p, n in included(new))
            changed.append(f"{notebook.relative_to(ROOT)} (cell {cell.get('id')}): {names}")
    return nb, changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which blocks differ (exit 1 if any)")
    args = parser.parse_args(argv)
    off = []
    for notebook in sorted(BOOK.glob(CHAPTER_GLOB)):
        nb, changed = stale_cells(notebook)
        off.extend(changed)
        if changed and not args.check:
            from tinylib import files  # written whole or not at all (flushed, then renamed)

            files.write_text(notebook, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    for line in off:
        print(("differs: " if args.check else "rewrote: ") + line)
    return 1 if off and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
