"""Write the "install tinylib" cell of every chapter from _config.yml's repository.

A chapter opened from the website's launch buttons in Colab runs where tinylib is not
installed, and its first code cell imports it. So every chapter, book/NN_*.ipynb, starts
its code with one cell that installs tinylib from the course's repository when (and only
when) ``import tinylib`` fails. The repository and branch in that cell come from the one
setting the book has for them, ``repository.url`` and ``repository.branch`` in
_config.yml (the launch buttons read the same two). After changing them, run

    python tools/sync_launch_cells.py          # rewrite the cells that differ
    python tools/sync_launch_cells.py --check  # exit 1, naming them, if any differ

tests/test_workflows.py fails while a chapter's cell is missing or out of date.

The cell is tagged ``remove-cell``: Jupyter Book leaves it off the rendered page (a reader
of the website needs no install step), while the .ipynb that Colab, Binder and JupyterLab
open keeps it. It is a no-op where tinylib is installed (JupyterLab after ``make``,
Binder, nbval, the book's build).

Each notebook is read, changed and written in one step, and written only when its cell
changes; nothing else in the notebook is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = ROOT / "_config.yml"
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"

CELL_ID = "install-tinylib"  # nbformat 4.5 cell id: fixed, so a rewrite does not churn it
TAGS = ["remove-cell", CELL_ID]  # remove-cell: Jupyter Book leaves it off the page

TEMPLATE = '''\
# In Colab, or any Jupyter without tinylib: install it from the course's repository.
# Where tinylib is installed (JupyterLab after `make`, Binder, the book's build) this does nothing.
# The data needs no step here: without TINYLIB_DATA, tinylib downloads the official
# Tiny ImageNet zip (248 MB) into its cache the first time a chapter loads the dataset.
try:
    import tinylib
except ImportError:
    import os, subprocess, sys
    repository, branch, folder = {repository}, {branch}, os.path.abspath({folder})
    if not os.path.isdir(folder):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", branch, repository, folder], check=True)
    # Editable, so tinylib finds the full-scale run records in the clone's book/results.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder], check=True)
    sys.path.insert(0, folder)  # this kernel imports it now; a new one finds the install itself
    import tinylib'''


def repository(config_path: Path = CONFIG) -> tuple[str, str]:
    """(url, branch) of _config.yml's ``repository`` section."""
    import yaml

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    repo = config.get("repository") or {}
    url = str(repo.get("url") or "").strip().rstrip("/")
    if not url:
        raise SystemExit(f"{config_path}: repository.url is not set")
    if url.endswith(".git"):
        url = url[: -len(".git")]
    return url, str(repo.get("branch") or "main").strip()


# _config.yml's repository.url until the book is published: nothing to clone there.
PLACEHOLDER = "https://github.com/example/"

UNPUBLISHED = '''\
# In Colab, or any Jupyter without tinylib: install it from the course's repository.
# Where tinylib is installed (JupyterLab after `make`, Binder, the book's build) this does nothing.
try:
    import tinylib
except ImportError:
    raise RuntimeError(
        "tinylib is not installed in this Jupyter, and this copy of the course names no repository "
        "to install it from: repository.url in _config.yml is still the placeholder "
        {repository} ". Install tinylib from your copy of the course (pip install -e PATH), "
        "or set repository.url and run tools/sync_launch_cells.py.") from None'''


def cell_source(url: str, branch: str) -> str:
    """The install cell's code for a repository URL and branch.

    While the URL is the placeholder, the cell fails at once with what to do, instead of
    a git clone that asks for a password or fails with git's own message.
    """
    if url.startswith(PLACEHOLDER):
        return UNPUBLISHED.format(repository=json.dumps(url))
    folder = url.rsplit("/", 1)[-1] or "tinylib-course"
    return TEMPLATE.format(repository=json.dumps(url), branch=json.dumps(branch),
                           folder=json.dumps(folder))


def chapters(book: Path = BOOK) -> list[Path]:
    return sorted(book.glob(CHAPTER_GLOB))


def is_install_cell(cell) -> bool:
    return cell.get("id") == CELL_ID or CELL_ID in cell.get("metadata", {}).get("tags", [])


def problem(nb, source: str) -> str | None:
    """Why a notebook's install cell is not as it should be, or None."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or not is_install_cell(code[0]):
        return "its first code cell is not the install cell"
    cell = code[0]
    if cell.source != source:
        return "its install cell differs from the one _config.yml's repository gives"
    if cell.metadata.get("tags") != TAGS:
        return f"its install cell's tags are {cell.metadata.get('tags')}, not {TAGS}"
    if len([c for c in nb.cells if is_install_cell(c)]) != 1:
        return "it has more than one install cell"
    return None


def apply(nb, source: str) -> None:
    """Put the install cell first among the code cells, with this source: right after
    the chapter's title (its first cell, when that is Markdown)."""
    import nbformat

    old = [c for c in nb.cells if is_install_cell(c)]
    nb.cells = [c for c in nb.cells if not is_install_cell(c)]
    cell = nbformat.v4.new_code_cell(source=source)
    cell.metadata = {"tags": list(TAGS)}
    if old:  # keep whatever else a person put in its metadata
        cell.metadata = {**old[0].get("metadata", {}), "tags": list(TAGS)}
    if nb.nbformat > 4 or nb.nbformat_minor >= 5:
        cell.id = CELL_ID
    else:
        cell.pop("id", None)
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    after_title = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(min(after_title, first_code), cell)


def sync(paths: list[Path], source: str, check: bool) -> list[tuple[Path, str]]:
    """Rewrite (or, with check, only report) each notebook whose install cell is off."""
    import nbformat

    off = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)  # read, change and write in one go
        why = problem(nb, source)
        if why is None:
            continue
        off.append((path, why))
        if not check:
            apply(nb, source)
            nbformat.validate(nb)
            from tinylib import files  # a chapter is written whole or not at all

            text = nbformat.writes(nb)
            files.write_text(path, text if text.endswith("\n") else text + "\n")
    return off


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a chapter's cell is missing or differs")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help=f"notebooks to sync (default: book/{CHAPTER_GLOB})")
    args = parser.parse_args(argv)
    url, branch = repository()
    off = sync(args.notebooks or chapters(), cell_source(url, branch), args.check)
    for path, why in off:
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"{shown}: {why}" + ("" if args.check else ": rewritten"))
    if args.check and off:
        print("run: python tools/sync_launch_cells.py", file=sys.stderr)
        return 1
    if not off:
        print(f"every chapter installs tinylib from {url} ({branch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
