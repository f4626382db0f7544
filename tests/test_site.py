"""The website, as a reader sees it: build the book, serve it, browse it headless.

One session-scoped build of the book (every notebook executed, in TINYLIB_PROFILE,
smoke when unset) into a temporary folder, so book/_build and its execution cache
are left alone. The HTML is served on 127.0.0.1 and Debian's chromium, driven by
Selenium through Debian's chromedriver, visits every chapter in _toc.yml order:
the page has its title, every image loaded, no error output, and its "next" link
leads to the next chapter. A full-page screenshot of each chapter is written to
<build>/_build/screenshots and copied to book/_build/screenshots for a person to
look at after CI.

Needs `apt-get install chromium chromium-driver` and the `test` extra (selenium).
Without them the module is skipped, except where CI is set: there it fails.
Selenium Manager never runs: the driver is given by path, so nothing is downloaded.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tinylib.processes import tied_to_this_process

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
REPO_SCREENSHOTS = BOOK / "_build" / "screenshots"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else None
)
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

# ipykernel's own default backend; an inherited MPLBACKEND=Agg (CI exports it for the
# library's tests) would make plt.show() draw nothing, and the pages would lose their figures.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
PAGE_TIMEOUT_S = 60
SESSION_RUNS_ENV = "TINYLIB_TEST_SESSION_RUNS"  # set by book/conftest.py
SCREENSHOT_MAX_HEIGHT = 16000  # px; a longer page is cut there


def _missing_tools() -> list[str]:
    missing = []
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    if importlib.util.find_spec("jupyter_book") is None or importlib.util.find_spec("yaml") is None:
        missing.append("jupyter-book (pip install -e '.[book]')")
    if not CHROMIUM:
        missing.append("chromium (apt-get install chromium)")
    if not CHROMEDRIVER:
        missing.append("chromedriver (apt-get install chromium-driver)")
    return missing


MISSING = _missing_tools()
MISSING_REASON = "the browser test needs " + ", ".join(MISSING)

pytestmark = [
    pytest.mark.site,
    pytest.mark.skipif(
        bool(MISSING) and not IN_CI,
        reason=MISSING_REASON + " (where CI is set this is a failure, not a skip)",
    ),
]


# --- the chapters, in _toc.yml order -----------------------------------------------

def toc_docnames() -> list[str]:
    """root, then every 'file' of a jb-book toc, depth first: the order of the
    'next' links."""
    try:
        import yaml  # comes with jupyter-book
    except ImportError:  # the module is skipped (or fails in CI) for want of jupyter-book
        return []
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                names.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [Path(n).with_suffix("").as_posix() if Path(n).suffix in (".ipynb", ".md") else n
            for n in names]


CHAPTERS = toc_docnames()


# --- fixtures ---------------------------------------------------------------------

@dataclass
class Build:
    output: Path       # --path-output: the site is in output/_build/html
    html: Path
    returncode: int
    log: Path
    seconds: float

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def browser_tools():
    if MISSING:  # only reached where CI is set: locally the module is skipped
        pytest.fail(MISSING_REASON + " (CI is set, so this fails instead of skipping)",
                    pytrace=False)


EXECUTED_ENV = "TINYLIB_TEST_EXECUTED_NOTEBOOKS"  # set by book/conftest.py


def stage_book(target: Path, executed: Path | None) -> tuple[Path, list[str]]:
    """A copy of the book to build, in ``target``: each chapter that nbval already ran
    in this session (``executed``, book/conftest.py) with its outputs, and excluded from
    execution, so the build renders it as nbval ran it; every other chapter as
    committed, executed by the build. Returns the book folder and the chapters reused.

    The copy has the repository's _config.yml and _toc.yml beside it (book/'s are
    symlinks to them) and a link to tinylib/, whose sources the chapters include.
    """
    import yaml

    shutil.copytree(BOOK, target / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__"))
    (target / "tinylib").symlink_to(ROOT / "tinylib", target_is_directory=True)
    shutil.copy2(ROOT / "_toc.yml", target / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    reused = []
    if executed is not None and executed.is_dir():
        for notebook in sorted(executed.glob("*.ipynb")):
            if (target / "book" / notebook.name).is_file():
                shutil.copy2(notebook, target / "book" / notebook.name)
                reused.append(notebook.name)
    config["execute"]["exclude_patterns"] = list(config["execute"].get("exclude_patterns") or []) + reused
    (target / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target / "book", reused


@pytest.fixture(scope="session")
def site(browser_tools, tmp_path_factory) -> Build:
    """`jupyter-book build book/ --path-output TMP`, as `make book` builds (-W -n
    --keep-going). The chapters nbval ran earlier in this session are built from its
    executed copies; any other chapter is executed by the build, in the profile in
    force (smoke if none)."""
    from offline import not_runnable_offline  # the build runs every chapter nbval did not

    for chapter in CHAPTERS:
        why = not_runnable_offline(Path(chapter).name)
        if why:
            pytest.skip(f"the build would run {chapter}, which cannot run here without the network: {why}")
    output = tmp_path_factory.mktemp("site")
    executed = os.environ.get(EXECUTED_ENV)
    book, reused = stage_book(tmp_path_factory.mktemp("staged"), Path(executed) if executed else None)
    env = os.environ.copy()
    env["TINYLIB_PROFILE"] = env.get("TINYLIB_PROFILE") or "smoke"
    env["MPLBACKEND"] = INLINE_BACKEND
    # Runs of this test session only, never runs left in TINYLIB_HOME. When the whole
    # suite runs, nbval (book/conftest.py) shares them, so a chapter the build executes
    # reads the runs nbval's chapters trained, as a reader's second visit would.
    env["TINYLIB_RUNS"] = os.environ.get(SESSION_RUNS_ENV) or str(output / "runs")
    command = [
        sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build", str(book), "--path-output", str(output), "-W", "-n", "--keep-going",
    ]
    log = output / "build.log"
    start = time.monotonic()
    with log.open("w") as stream:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=stream,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=tied_to_this_process)
    seconds = time.monotonic() - start
    print(f"\njupyter-book build (TINYLIB_PROFILE={env['TINYLIB_PROFILE']}; {len(reused)} chapters "
          f"as nbval ran them, the rest executed): {seconds:.0f} s, exit {result.returncode}, log {log}")
    return Build(output, output / "_build" / "html", result.returncode, log, seconds)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="session")
def server(site):
    """The built HTML on a free port of 127.0.0.1; yields the base URL."""
    if not (site.html / "index.html").is_file():
        pytest.fail(f"the build wrote no {site.html / 'index.html'}:\n{site.log_tail()}",
                    pytrace=False)
    handler = functools.partial(_QuietHandler, directory=str(site.html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def browser(browser_tools, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--window-size=1280,900", "--hide-scrollbars",
        # Hermetic: every host but the local server fails at once (the theme's CDN
        # scripts, MathJax), so a page never waits on the network.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Given a path, Selenium does not run Selenium Manager (which would download a driver).
    service = Service(executable_path=CHROMEDRIVER, popen_kw={"preexec_fn": tied_to_this_process})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots(site) -> Path:
    folder = site.output / "_build" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(REPO_SCREENSHOTS, ignore_errors=True)  # no stale pictures from a past run
    REPO_SCREENSHOTS.mkdir(parents=True)
    return folder


# --- page helpers -------------------------------------------------------------------

def open_page(driver, url: str) -> None:
    driver.get(url)
    wait_until_loaded(driver)


def wait_until_loaded(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, PAGE_TIMEOUT_S)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    # Lazy images load only near the viewport: load them all, then wait for each.
    driver.execute_script(
        "document.querySelectorAll('img[loading=\"lazy\"]').forEach(i => { i.loading = 'eager'; });")
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete);"))


def page_heading(driver) -> str:
    """The text of the article's h1, without the '#' permalink."""
    return driver.execute_script("""
        const h1 = document.querySelector('article.bd-article h1');
        if (!h1) return '';
        const copy = h1.cloneNode(true);
        copy.querySelectorAll('.headerlink').forEach(a => a.remove());
        return copy.textContent.trim();
    """)


def broken_images(driver) -> list[str]:
    return driver.execute_script("""
        return Array.from(document.images)
            .filter(i => !(i.complete && i.naturalWidth > 0))
            .map(i => i.currentSrc || i.src || i.outerHTML.slice(0, 120));
    """)


# What myst-nb renders: an exception as div.output.traceback, stderr as div.output.stderr.
# stderr by itself is no error (Keras progress bars and warnings, shown on purpose:
# stderr_output: show); a Python traceback or exception line is.
ERROR_SCRIPT = r"""
    const found = [];
    const excerpt = e => (e.innerText || e.textContent || '').trim().slice(0, 300);
    document.querySelectorAll(
        '.cell_output .traceback, .output.traceback, .output.error, div.system-message'
    ).forEach(e => found.push(e.className + ': ' + excerpt(e)));
    const exception = /Traceback|^\s*(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception)(?::|$)/m;
    document.querySelectorAll('.output.stderr').forEach(e => {
        if (exception.test(e.innerText || e.textContent || '')) found.push('stderr: ' + excerpt(e));
    });
    if ((document.body.innerText || '').includes('Traceback (most recent call last)'))
        found.push('the page text contains "Traceback (most recent call last)"');
    return found;
"""


def error_output(driver) -> list[str]:
    return driver.execute_script(ERROR_SCRIPT)


def images_without_alt_text(driver) -> list[str]:
    """The chapter's figures (cell outputs and the page's own images) that carry no alt text."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('article img'))
            .filter(i => !(i.getAttribute('alt') || '').trim())
            .map(i => (i.currentSrc || i.src || '').split('/').pop());
    """)


def figure_images(driver) -> int:
    """How many images the chapter's cell outputs show (the figures its cells drew)."""
    return driver.execute_script("return document.querySelectorAll('article .cell_output img').length;")


def figure_cells(name: str) -> int:
    """How many of the chapter's code cells declare a figure (its alt text, mystnb.image.alt)."""
    import nbformat

    path = BOOK / f"{name}.ipynb"
    if not path.is_file():  # a page written in Markdown
        return 0
    notebook = nbformat.read(path, as_version=4)
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               and ((cell.metadata.get("mystnb") or {}).get("image") or {}).get("alt"))


def start_up_noise(driver) -> list[str]:
    """TensorFlow's start-up lines on the page (tinylib.startup keeps them off)."""
    from tinylib import startup

    text = driver.execute_script("return document.body.innerText || '';")
    return [line for line in text.splitlines() if startup.is_noise(line)]


def failed_resources(driver, base_url: str) -> list[str]:
    """The console's reports of this site's own files that failed to load (a 404 for
    a script, a stylesheet, an image). Other hosts are unreachable on purpose (see
    `browser`), and script errors are the theme's business: Jupyter Book 1's pages
    declare sphinx-thebe's THEBE_JS_URL twice, a harmless SyntaxError on every page."""
    return [
        entry["message"] for entry in driver.get_log("browser")
        if "Failed to load resource" in entry.get("message", "")
        and base_url in entry["message"] and "favicon.ico" not in entry["message"]
    ]


def save_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window: make the viewport as tall as the page
    (Chrome DevTools Protocol), capture it, restore it. (Page.captureScreenshot's
    captureBeyondViewport instead shifted the theme's layout sideways on long pages.)"""
    width, height = driver.execute_script(
        "const e = document.documentElement;"
        "return [e.clientWidth, Math.max(e.scrollHeight, document.body.scrollHeight)];")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": min(height, SCREENSHOT_MAX_HEIGHT),
        "deviceScaleFactor": 1, "mobile": False,
    })
    try:
        driver.execute_script("window.scrollTo(0, 0);")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))


def path_of(url: str) -> str:
    return urlparse(url).path.rsplit("/", 1)[-1]


# --- tests ------------------------------------------------------------------------

def test_the_book_builds_without_errors_or_warnings(site):
    assert site.returncode == 0, (
        f"jupyter-book build -W -n --keep-going failed (exit {site.returncode}); "
        f"log: {site.log}\n{site.log_tail()}"
    )


def test_every_toc_entry_became_a_page(site):
    missing = [name for name in CHAPTERS if not (site.html / f"{name}.html").is_file()]
    assert not missing, f"no HTML page for {missing}; log: {site.log}\n{site.log_tail()}"


def test_the_front_page_opens_the_first_chapter(browser, server):
    open_page(browser, server)
    assert path_of(browser.current_url) == f"{CHAPTERS[0]}.html"


def test_the_error_check_tells_a_traceback_from_progress_on_stderr(browser, server):
    """The check itself, on myst-nb's markup: a Keras progress bar and a warning on
    stderr pass; an exception fails."""
    harmless = (
        '<article class="bd-article"><h1>t</h1><div class="cell_output">'
        '<div class="output stderr"><pre>Epoch 1/2\n3/3 ━━━━━━ 1s 20ms/step - loss: 1.6\n'
        'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n'
        'x.py:2: UserWarning: careful</pre></div></div></article>'
    )
    raised = (
        '<div class="cell_output"><div class="output traceback"><pre>ValueError   '
        'Traceback (most recent call last)</pre></div></div>'
    )
    on_stderr = '<div class="output stderr"><pre>Exception in thread\nKeyError: 3</pre></div>'
    for body, errors in ((harmless, 0), (harmless + raised, 2), (harmless + on_stderr, 1)):
        browser.get("data:text/html;charset=utf-8;base64,"
                    + base64.b64encode(f"<html><body>{body}</body></html>".encode()).decode())
        assert len(error_output(browser)) == errors, body


@pytest.mark.parametrize("index", range(len(CHAPTERS)), ids=CHAPTERS)
def test_chapter_page(index, site, server, browser, screenshots):
    """One chapter, as a reader sees it: title, images, no errors, the next link."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name = CHAPTERS[index]
    url = server + f"{name}.html"
    if not (site.html / f"{name}.html").is_file():
        pytest.fail(f"{name}.html was not built; log: {site.log}\n{site.log_tail()}", pytrace=False)
    browser.get_log("browser")  # drop what earlier pages logged
    open_page(browser, url)

    shot_name = name.replace("/", "_")
    if not shot_name[:2].isdigit():
        shot_name = f"{index + 1:02d}_{shot_name}"
    shot = screenshots / f"{shot_name}.png"
    save_screenshot(browser, shot)
    shutil.copy2(shot, REPO_SCREENSHOTS / shot.name)

    heading = page_heading(browser)
    assert heading, f"{name}: the page has no h1 (a chapter starts with '# Title')"
    assert heading in browser.title, f"{name}: title {browser.title!r} lacks the h1 {heading!r}"

    assert not broken_images(browser), f"{name}: images that did not load: {broken_images(browser)}"
    errors = error_output(browser)
    assert not errors, f"{name}: error output on the page:\n" + "\n".join(errors)
    # A cell may draw only where there is something to draw (a full-scale record), but a
    # chapter of figure cells that shows none lost them: a kernel whose matplotlib never
    # hooked its inline backend into the cells' outputs shows nothing and raises nothing.
    if figure_cells(name):
        assert figure_images(browser), (f"{name}: {figure_cells(name)} cells declare a figure, and the page "
                                        "shows none of them")
    unlabelled = images_without_alt_text(browser)
    assert not unlabelled, f"{name}: figures without alt text (cell metadata mystnb.image.alt): {unlabelled}"
    noise = start_up_noise(browser)
    assert not noise, f"{name}: TensorFlow's start-up lines on the page:\n" + "\n".join(noise)
    failed = failed_resources(browser, server)
    assert not failed, f"{name}: files of the site that failed to load:\n" + "\n".join(failed)

    following = CHAPTERS[index + 1] if index + 1 < len(CHAPTERS) else None
    links = browser.find_elements(By.CSS_SELECTOR, "a.right-next")
    if following is None:
        assert not links, f"{name} is the last chapter but has a next link: {links[0].get_attribute('href')}"
        return
    assert len(links) == 1, f"{name}: expected one 'next' link (a.right-next), found {len(links)}"
    link = links[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
    link.click()
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda d: path_of(d.current_url) != f"{name}.html")
    wait_until_loaded(browser)
    assert path_of(browser.current_url) == f"{following}.html", (
        f"{name}: 'next' went to {browser.current_url}, not to {following}.html"
    )
