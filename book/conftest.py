"""pytest settings for the chapter notebooks, which `python -m pytest` runs with nbval.

Not part of the book: with `only_build_toc_files: true`, Jupyter Book builds only
the files _toc.yml names. These hooks apply to the items under book/ only, so the
library's tests in tests/ see the environment unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The kernel's backend for matplotlib. ipykernel picks this one itself unless
# MPLBACKEND is set; CI exports MPLBACKEND=Agg for the library's tests, and with
# Agg `plt.show()` draws nothing, so a figure that fails to render would go unnoticed.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
RUNS = pytest.StashKey[str]()
KEEP = pytest.StashKey[bool]()
# tests/test_site.py builds the site with the same runs folder, so a chapter's
# training runs once per test session, not once for nbval and once for the site.
SESSION_RUNS_ENV = "TINYLIB_TEST_SESSION_RUNS"


# A runs folder given by the caller is used and kept (tests/test_precision.py reads the
# records the chapters wrote); otherwise each session makes its own and removes it.
GIVEN_RUNS_ENV = "TINYLIB_NOTEBOOK_RUNS"
# Each chapter nbval ran without a failure is written here with the outputs its cells
# gave, and tests/test_site.py (which pytest runs after the chapters) builds the site
# from these copies instead of executing every chapter a second time.
EXECUTED_ENV = "TINYLIB_TEST_EXECUTED_NOTEBOOKS"
EXECUTED = pytest.StashKey[str]()
# The chapters not to hand on as executed: a cell failed, or the chapter was skipped.
NOT_EXECUTED = pytest.StashKey[set]()
# The chapters' kernels are forks of one server that imported TensorFlow once
# (tests/forked_kernel.py), not fifteen fresh kernels that each import it: set this to 1
# for fresh ones.
FRESH_KERNELS_ENV = "TINYLIB_TEST_FRESH_KERNELS"
KERNELS = pytest.StashKey[object]()
# Chapters that keep a fresh kernel all the same, whose import of TensorFlow (and what it
# prints) happens in the kernel as a reader's does: the site test reads their pages for
# TensorFlow's start-up lines, which a forked kernel's import leaves in the server's log.
# The first chapter runs while the server imports, so it costs no time.
FRESH_KERNEL_CHAPTERS = ("01_introduction",)


def _forked_kernel_module():
    """tests/forked_kernel.py."""
    return _tests_module("forked_kernel")


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist, pytest runs everything in one process
    LoadScopeScheduling = None

# One unit of work under pytest-xdist: the chapters and the browser test that builds the
# site from them (tests/conftest.py sorts it after them).
TOGETHER = ("book/", "tests/test_site.py")
# Modules whose tests share one costly fixture (a JupyterLab server and a browser): one unit each.
MODULE_UNITS = ("tests/test_jupyterlab.py",)


if LoadScopeScheduling is not None:
    class ChaptersOnOneWorker(LoadScopeScheduling):
        """``--dist loadgroup`` as this suite needs it: a chapter's cells share one kernel,
        in order, and the site is built from the chapters this worker ran; every other
        test is a unit of its own. The largest unit, the book, starts first.

        (pytest-xdist's own ``xdist_group`` marks do not group under pytest 9.2, whose
        node ids no longer take the group's suffix.)
        """

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(TOGETHER):
                return "book"
            return nodeid.split("::")[0] if nodeid.startswith(MODULE_UNITS) else nodeid

    @pytest.hookimpl(optionalhook=True)  # xdist may be installed and switched off (-p no:xdist)
    def pytest_xdist_make_scheduler(config, log):
        # Also for the modes that would deal single cells to workers (a bare `-n 2` is
        # "load"): a chapter's cells out of order, in two kernels, fail for no reason.
        if config.getvalue("dist") in ("load", "loadgroup", "worksteal"):
            return ChaptersOnOneWorker(config, log)
        return None


def pytest_configure(config):
    given = os.environ.get(GIVEN_RUNS_ENV)
    config.stash[RUNS] = given or tempfile.mkdtemp(prefix="tinylib-test-runs-")
    config.stash[KEEP] = bool(given)
    os.environ[SESSION_RUNS_ENV] = config.stash[RUNS]
    config.stash[EXECUTED] = tempfile.mkdtemp(prefix="tinylib-test-executed-")
    config.stash[NOT_EXECUTED] = set()
    os.environ[EXECUTED_ENV] = config.stash[EXECUTED]
    # --nbval-current-env (pyproject's addopts) asks for this Python's kernel: the forked
    # kernel is that kernel, forked by a server in this Python (where usable(): Linux, no NVIDIA GPU).
    if getattr(config.option, "nbval_current_env", False) and os.environ.get(FRESH_KERNELS_ENV) != "1" \
            and (forked := _forked_kernel_module()).usable():
        server = forked.KernelServer()
        config.stash[KERNELS] = (server, forked.write_kernel_spec(server.folder / "jupyter"))
        config.option.nbval_current_env = False
        config.option.nbval_kernel_name = forked.KERNEL_NAME


def _is_notebook_cell(item) -> bool:
    return hasattr(item, "cell") and hasattr(item, "test_outputs") and hasattr(item.parent, "nb")


# A chapter rewrite interrupted before its rename (tinylib.files.atomic_path) is no chapter.
collect_ignore_glob = [".tmp-*"]

def _tests_module(name: str):
    """tests/<name>.py, by its path: `pytest book/` alone does not put tests/ on sys.path."""
    path = Path(__file__).resolve().parents[1] / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tinylib_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Skip, saying what to do, the chapters that would fetch the dataset or the weights
    (tests/offline.py); a skipped chapter is not written as executed for the site test."""
    offline, reasons = _tests_module("offline"), {}
    for item in items:
        if _is_notebook_cell(item):
            chapter = Path(str(item.parent.fspath)).stem
            if chapter not in reasons:
                reasons[chapter] = offline.not_runnable_offline(chapter)
            if reasons[chapter]:
                item.add_marker(pytest.mark.skip(reason=reasons[chapter]))
                config.stash[NOT_EXECUTED].add(item.parent.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each cell's outputs in the notebook nbval read, and which notebooks had a cell fail."""
    report = yield
    if _is_notebook_cell(item) and call.when == "call":
        if item.test_outputs is not None:
            item.cell.outputs = item.test_outputs
            item.cell.execution_count = item.cell_num + 1
        if report.failed:
            item.config.stash[NOT_EXECUTED].add(item.parent.nodeid)
    elif _is_notebook_cell(item) and report.failed:
        item.config.stash[NOT_EXECUTED].add(item.parent.nodeid)
    return report


def pytest_runtest_teardown(item, nextitem):
    """After a notebook's last cell: write it, with its outputs, if every cell passed."""
    if not _is_notebook_cell(item) or (nextitem is not None and nextitem.parent is item.parent):
        return
    if item.parent.nodeid in item.config.stash[NOT_EXECUTED]:
        return
    import nbformat

    from tinylib import files

    target = Path(item.config.stash[EXECUTED]) / Path(str(item.parent.fspath)).name
    with files.atomic_path(target) as tmp:
        nbformat.write(item.parent.nb, str(tmp))


def notebook_environment(config) -> dict[str, str]:
    kernels = {}
    if KERNELS in config.stash:  # where nbval finds the forked kernel's spec, and the kernel its server
        server, spec = config.stash[KERNELS]
        kernels = {"JUPYTER_PATH": os.pathsep.join(filter(None, (str(spec), os.environ.get("JUPYTER_PATH"))))}
    return {
        **kernels,
        # The profile in force (CI sets smoke); without one, smoke: seconds per
        # notebook, rather than the hardware default (quick on a CPU, full on a GPU).
        "TINYLIB_PROFILE": os.environ.get("TINYLIB_PROFILE") or "smoke",
        "MPLBACKEND": INLINE_BACKEND,
        # Training runs in a folder of this session's own: a chapter that trains must
        # train, not resume a finished run left in TINYLIB_HOME by an earlier build.
        # (Chapter 11 still finds the runs chapters 6 to 10 made in this session.)
        "TINYLIB_RUNS": config.stash[RUNS],
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """nbval starts a notebook's kernel while setting up its first cell, and the
    kernel copies os.environ then: set the notebooks' environment around setup."""
    wanted = notebook_environment(item.config)
    if KERNELS in item.config.stash and _is_notebook_cell(item):
        server = item.config.stash[KERNELS][0]
        server.start({**os.environ, **wanted})  # once, importing in the kernels' environment
        if Path(str(item.parent.fspath)).stem not in FRESH_KERNEL_CHAPTERS:
            wanted.update(server.environment())  # waits for the imports; {} if the server failed
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        return (yield)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pytest_unconfigure(config):
    if KERNELS in config.stash:
        config.stash[KERNELS][0].close()
    if EXECUTED in config.stash:
        shutil.rmtree(config.stash[EXECUTED], ignore_errors=True)
        os.environ.pop(EXECUTED_ENV, None)
    if RUNS in config.stash:
        if not config.stash.get(KEEP, False):
            shutil.rmtree(config.stash[RUNS], ignore_errors=True)
        os.environ.pop(SESSION_RUNS_ENV, None)
