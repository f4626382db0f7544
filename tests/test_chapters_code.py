"""The chapters read the same in JupyterLab, Colab and the website.

jupyterlab-myst (JupyterLab) and Colab render MyST's Markdown but not Sphinx's
``literalinclude``, myst-nb's ``{glue}`` or the ``{doc}`` role, so the chapters use
none of them: library code is copied into the Markdown by tools/sync_included_code.py
(checked here against the source), numbers from the records are shown as a cell's
output (``tinylib.results.show_full_scale``), and chapters link to each other with
plain Markdown links to the .ipynb files, which Jupyter Book and JupyterLab both follow.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _tool():
    spec = importlib.util.spec_from_file_location("sync_included_code", ROOT / "tools" / "sync_included_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_every_included_block_is_the_librarys_code_as_it_is_now():
    tool = _tool()
    off = [line for notebook in CHAPTERS for line in tool.stale_cells(notebook)[1]]
    assert not off, "run: python tools/sync_included_code.py\n" + "\n".join(off)
    shown = {pair for notebook in CHAPTERS for pair in tool.included(_markdown(notebook))}
    assert ("tinylib/models.py", "model4") in shown and len(shown) >= 10


def test_a_changed_function_makes_its_block_stale(tmp_path, monkeypatch):
    tool = _tool()
    (tmp_path / "lib.py").write_text("import os\n\n\n@staticmethod\ndef shown(x):\n    return x + 1\n\n\ndef other():\n    pass\n")
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    text = "Intro.\n\n```{literalinclude} ../lib.py\n:language: python\n:pyobject: shown\n```\n\nAfter."
    once = tool.synced(text)
    assert "@staticmethod\ndef shown(x):\n    return x + 1\n```" in once and "other" not in once
    assert tool.synced(once) == once and tool.included(once) == [("lib.py", "shown")]
    (tmp_path / "lib.py").write_text("def shown(x):\n    return x + 2\n")
    assert "return x + 2" in tool.synced(once)
    with pytest.raises(LookupError, match="no top-level missing"):
        tool.source_of("lib.py", "missing")


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_the_chapter_uses_only_markup_that_jupyterlab_and_colab_render(notebook):
    text = _markdown(notebook)
    unrendered = [m.group(0) for m in re.finditer(r"\{literalinclude\}|\{glue(:\w+)?\}|\{doc\}", text)]
    assert not unrendered, f"{notebook.name}: {unrendered}"
    for target in re.findall(r"\]\(([^)#\s]+\.ipynb)(?:#[^)]*)?\)", text):
        assert (notebook.parent / target).is_file(), f"{notebook.name} links to {target}, which is not a chapter"


def test_a_story_is_printed_outside_ipython(capsys):
    from tinylib import results

    results.show_markdown("**bold** 12.3%")
    assert capsys.readouterr().out == "**bold** 12.3%\n"
