"""The chapters as a student opens them: in a real JupyterLab, in headless Chromium.

JupyterLab runs from this environment (the `book` extra installs jupyterlab-myst) on
127.0.0.1, serving a copy of book/; Chromium opens chapters that hold every kind of markup the book uses, and waits until every
Markdown cell is rendered. Each must show its MyST as the website does: exercises and
solutions as boxes, the library code it copies (tools/sync_included_code.py) as code,
its links to other chapters as links to their notebooks, and no "Unknown Directive" or
"Unknown Role" box, which is how jupyterlab-myst shows markup it cannot render. A
screenshot of each is written to book/_build/screenshots-jupyterlab/<chapter>.png.

Needs what tests/test_site.py needs (chromium, chromedriver, selenium): skipped
without them, except where CI is set, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_site import IN_CI, MISSING, MISSING_REASON, browser, browser_tools, save_screenshot  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
# Chapters that between them hold every kind of markup the book uses (a test below keeps it
# so): the bibliography and citations, exercises and both kinds of solution, admonitions,
# copied functions and classes, links. tests/test_chapters_code.py checks every chapter
# statically for markup that JupyterLab cannot render.
OPENED = ["01_introduction", "09_model4", "14_transfer_learning"]
RENDER_TIMEOUT_S = 90
# Beside the site's screenshots, not in their folder, which the site's test empties when it starts.
SCREENSHOTS = ROOT / "book" / "_build" / "screenshots-jupyterlab"

pytestmark = pytest.mark.skipif(bool(MISSING) and not IN_CI,
                                reason=MISSING_REASON + " (where CI is set this is a failure, not a skip)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(browser_tools, tmp_path_factory):
    """A JupyterLab server on a copy of book/, with every cell rendered (no windowing)."""
    pytest.importorskip("jupyterlab")
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_build", "results"))
    settings = base / "settings" / "@jupyterlab"
    # Windowing renders only the cells in view: all of them here, so each can be checked.
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    log = base / "jupyterlab.log"
    from tinylib.processes import tied_to_this_process

    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={base / 'settings'}",
         f"--LabApp.workspaces_dir={base / 'workspaces'}", "--LabApp.news_url="],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=tied_to_this_process, env={**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config")})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + log.read_text(errors="replace")[-3000:])
                time.sleep(0.3)
        yield url, root
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _markdown_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def _markup_kinds(notebook: Path) -> set[str]:
    """The MyST directives and roles a chapter uses, and whether it copies a function or a class."""
    text = "\n".join(_markdown_cells(notebook))
    kinds = set(re.findall(r"^(?:```+|:::+)\{([\w:-]+)\}", text, re.MULTILINE))
    kinds |= {f"role {r}" for r in re.findall(r"\{([\w:-]+)\}`", text)}
    kinds |= {f"copied {k}" for k in re.findall(r"^(def|class) ", "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL)), re.MULTILINE)}
    return kinds


def test_the_opened_chapters_hold_every_kind_of_markup_the_book_uses():
    opened = set().union(*(_markup_kinds(ROOT / "book" / f"{name}.ipynb") for name in OPENED))
    for notebook in CHAPTERS:
        missing = _markup_kinds(notebook) - opened
        assert not missing, f"{notebook.name} uses {sorted(missing)}, which no chapter in OPENED does: add it to OPENED"


RENDERED = "return Array.from(document.querySelectorAll('.jp-MarkdownCell .myst'))"


@pytest.mark.parametrize("chapter", OPENED)
def test_a_chapter_renders_in_jupyterlab_as_on_the_website(chapter, lab, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    url, root = lab
    source = _markdown_cells(root / "book" / f"{chapter}.ipynb")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(f"{url}/lab/tree/book/{chapter}.ipynb?reset")  # ?reset: only this notebook open
    try:
        WebDriverWait(browser, RENDER_TIMEOUT_S).until(
            lambda d: d.execute_script(RENDERED + ".filter(e => e.childElementCount > 0).length") >= len(source))
    except Exception:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        save_screenshot(browser, SCREENSHOTS / f"{chapter}-timeout.png")
        raise AssertionError(f"{chapter}: fewer than {len(source)} Markdown cells rendered by jupyterlab-myst "
                             f"within {RENDER_TIMEOUT_S} s") from None
    html = "\n".join(browser.execute_script(RENDERED + ".map(e => e.innerHTML)"))
    text = "\n".join(browser.execute_script(RENDERED + ".map(e => e.innerText)"))
    code = browser.execute_script(
        "return Array.from(document.querySelectorAll('.jp-MarkdownCell .myst pre')).map(e => e.innerText)")
    save_screenshot(browser, SCREENSHOTS / f"{chapter}.png")

    assert not re.findall(r"Unknown (Directive|Role)", text), \
        f"{chapter}: jupyterlab-myst could not render: {re.findall(r'.{0,60}Unknown (?:Directive|Role).{0,60}', text)}"
    joined = "\n".join(source)
    boxes = len(re.findall(r"^(?:```|:::)\{(?:exercise|solution-start)\}", joined, re.MULTILINE))
    assert html.count('class="myst-exercise') >= boxes, f"{chapter}: {boxes} exercises and solutions"
    for name in re.findall(r"^% included from \S+: (\w+) ", joined, re.MULTILINE):
        assert any(re.search(rf"^(def|class) {name}\b", block, re.MULTILINE) for block in code), \
            f"{chapter}: the code of {name} is not shown"
    for target in set(re.findall(r"\]\(([0-9][0-9]_\w+\.ipynb)\)", joined)):
        assert re.search(rf'<a [^>]*href="[^"]*{re.escape(target)}[^"]*"', html), f"{chapter}: no link to {target}"
