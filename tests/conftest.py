"""Shared fixtures: a tiny synthetic Tiny ImageNet in the exact official layout."""

from __future__ import annotations

import io
import math
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WNIDS = ["n01443537", "n01629819", "n01641577", "n02124075"]
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
    "n02124075": "Egyptian cat",
}
TRAIN_PER_CLASS = 6
VAL_PER_CLASS = 3
TEST_IMAGES = 5


def class_colour(label: int) -> np.ndarray:
    """Each class gets its own colour and brightness, so a test can tell labels from
    pixels even for the images saved as grayscale."""
    return np.array([30 + 50 * label, 60 + 45 * label, 90 + 30 * label], dtype=np.uint8)


def jpeg_bytes(label: int, grey: bool = False, size: int = 64) -> bytes:
    pixels = np.broadcast_to(class_colour(label), (size, size, 3)).copy()
    pixels[:8, :8] = 255  # a corner mark, so flips are visible
    image = Image.fromarray(pixels)
    if grey:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_dataset(root: Path, with_test: bool = True, wnids: list[str] = WNIDS,
                  train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS) -> Path:
    """Write the official layout under ``root/tiny-imagenet-200``; returns that folder. A test
    that trains needs as many classes and images as its profile takes: it passes its own counts."""
    assert math.gcd(3, len(wnids)) == 1, "the val labels' interleaving needs a class count prime to 3"
    assert len(wnids) <= 5, "class_colour gives five classes colours of their own (a sixth would overflow uint8)"
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # unsorted on purpose
    lines = (["n00001740\tentity"] + [f"{w}\t{WORDS.get(w, f'class {w}')}" for w in wnids]
             + ["n09999999\tother"])
    (base / "words.txt").write_text("\n".join(lines) + "\n")
    for label, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            (images / name).write_bytes(jpeg_bytes(label, grey=(i == 0)))
            boxes.append(f"{name}\t{i}\t{i + 1}\t{60 - i}\t{61 - i}")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    val = base / "val" / "images"
    val.mkdir(parents=True)
    rows = []
    for i in range(val_per_class * len(wnids)):
        label = (i * 3) % len(wnids)  # val labels interleaved, unlike folders
        (val / f"val_{i}.JPEG").write_bytes(jpeg_bytes(label, grey=(i == 1)))
        rows.append(f"val_{i}.JPEG\t{wnids[label]}\t1\t2\t50\t60")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    if with_test:
        test = base / "test" / "images"
        test.mkdir(parents=True)
        for i in range(TEST_IMAGES):
            (test / f"test_{i}.JPEG").write_bytes(jpeg_bytes(i % len(wnids)))
    return base


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zip a dataset folder the way the official zip is laid out (top folder inside)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return zip_path


@pytest.fixture(scope="session")
def synthetic_master(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("master"))


@pytest.fixture
def synthetic(tmp_path, synthetic_master) -> Path:
    """A private copy of the synthetic dataset folder that a test may damage."""
    target = tmp_path / "src" / "tiny-imagenet-200"
    shutil.copytree(synthetic_master, target)
    return target


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    """An empty cache and no data setting: each test states its own source."""
    home = tmp_path / "home"
    monkeypatch.setenv("TINYLIB_HOME", str(home))
    monkeypatch.delenv("TINYLIB_DATA", raising=False)
    return home


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    path = os.environ.get("TINYLIB_DATA")
    if not path:
        pytest.skip("TINYLIB_DATA is not set: the real-data tests need the real Tiny ImageNet")
    return Path(path)


@pytest.fixture
def run_on_jax(tmp_path, forks):
    """Run a script in a process of its own on the JAX backend (a fork of tests/forks.py's
    JAX server); returns the finished process.

    For the tests that check a backend other than the one the suite runs on.
    """
    pytest.importorskip("jax")
    tests = Path(__file__).resolve().parent

    def run(script_text: str, name: str = "jax_script.py", timeout: int = 300):
        env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg",
               "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
        script = tmp_path / name
        script.write_text(script_text)
        return forks.run([script], env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def forks():
    """``forks.run(argv, env=..., cwd=...)``: ``python *argv`` in a fresh process whose imports
    were done once for this worker (tests/forks.py)."""
    from forks import ForkServer

    server = ForkServer()
    yield server
    server.close()


def pytest_collection_modifyitems(config, items):
    """The browser test last: it builds the site from the chapters nbval ran earlier in
    the same session (book/conftest.py keeps them), instead of running them again.

    Under pytest-xdist (``make test`` runs three workers) book/conftest.py sends the
    chapters and the browser test to one worker, in this order; the library's tests
    share the other workers' time. The long tests (marked ``slow``: they train, or start fresh
    Pythons that import TensorFlow) come first, the longest work handed out first: left to
    the alphabet, Model 5's, the kill sweeps' and the JAX plan's minutes (tests/test_reproduce.py,
    test_run_faults.py, test_train.py) came last, one worker finishing them while the other
    had nothing left, and the fresh interpreters of tests/test_startup.py ended the run on one
    worker for 40 s after the other had finished.
    """
    items.sort(key=lambda item: (item.get_closest_marker("site") is not None,  # stable: order kept otherwise
                                 item.get_closest_marker("slow") is None))


# --- where CI's minutes go ----------------------------------------------------------------
# CI must stay under 20 minutes. The time of `make test` is that of its busiest worker, so
# each worker reports its tests' time and when it finished, and the summary prints them: the
# worker that ends last is the one whose tests to shorten.
_STARTED = pytest.StashKey[float]()
_WORKERS: dict[str, dict] = {}


class _BusyClock:
    """Sums every test's setup, call and teardown on this process. A plugin of its own: a
    conftest's report hook hears only the tests under its folder, not the chapters'."""

    def __init__(self):
        self.seconds, self.tests = 0.0, 0

    def pytest_runtest_logreport(self, report):
        self.seconds += report.duration
        self.tests += report.when == "call" or (report.when == "setup" and report.skipped)


def pytest_configure(config):
    config.stash[_STARTED] = time.time()
    config.pluginmanager.register(_BusyClock(), "tinylib-busy-clock")


def pytest_sessionfinish(session):
    output = getattr(session.config, "workeroutput", None)  # set on a pytest-xdist worker
    clock = session.config.pluginmanager.get_plugin("tinylib-busy-clock")
    if output is not None and clock is not None:
        output["tinylib_busy"] = {"seconds": clock.seconds, "tests": clock.tests, "finished": time.time()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    busy = getattr(node, "workeroutput", {}).get("tinylib_busy")
    if busy:
        _WORKERS[node.gateway.id] = busy


def pytest_terminal_summary(terminalreporter, config):
    if not _WORKERS:
        return
    started = config.stash[_STARTED]
    terminalreporter.section("time per worker")
    for worker, busy in sorted(_WORKERS.items(), key=lambda item: item[1]["finished"]):
        terminalreporter.write_line(
            f"{worker}: {busy['tests']} tests, {busy['seconds']:.0f} s in them, "
            f"finished {busy['finished'] - started:.0f} s after the start")


@pytest.fixture(autouse=True)
def _each_test_starts_in_the_default_precision():
    """Keras' dtype policy is global, and 'auto' (a recipe's, the command line's) is mixed
    bfloat16 on a CPU with bfloat16 instructions: a test that set it would hand it to the
    next one. Each test starts in float32 and whatever it set is undone after it."""
    import keras

    from tinylib import environment

    keras.config.set_dtype_policy("float32")
    automatic = environment._AUTOMATIC[0]
    yield
    keras.config.set_dtype_policy("float32")
    environment._AUTOMATIC[0] = automatic


@pytest.fixture(autouse=True)
def _one_training_step_per_call(monkeypatch):
    """The tests reason batch by batch (a kill, a checkpoint, a budget stop at batch k), which
    Keras' callbacks see only at the end of each compiled call: they train one step a call
    (``TINYLIB_STEPS_PER_EXECUTION=1``, inherited by the runs they start), not a CPU's default
    of several. Several steps a call are tested where named
    (``test_several_steps_per_execution_train_the_same_run``) and the default itself in
    ``test_speed_choices``; the chapters run with the default."""
    from tinylib import environment

    monkeypatch.setenv(environment.STEPS_ENV, "1")
