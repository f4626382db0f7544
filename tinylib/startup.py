"""Starting Keras quietly and on a backend that is installed.

Two things go wrong before a chapter has done anything:

* Without TensorFlow and with ``KERAS_BACKEND`` unset, ``import keras`` fails: Keras
  defaults to TensorFlow. :func:`choose_backend` picks an installed backend (JAX,
  then PyTorch) and says so once.
* TensorFlow's C++ start-up writes lines such as "All log messages before
  absl::InitializeLog() ..." and "Could not find cuda drivers" straight to file
  descriptor 2, before its own log level applies, so every page of the book would
  open with them in red. :func:`quiet_native_output` captures descriptor 2 around
  TensorFlow's import and first device probe and writes back every line that is not
  one of these known start-up lines: real warnings and errors still show.

``import tinylib`` calls :func:`install`; it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

BACKEND_ENV = "KERAS_BACKEND"
FALLBACK_BACKENDS = ("jax", "torch")  # tried in this order when TensorFlow is missing

# Lines TensorFlow and XLA print on every start on a machine without a GPU (or with
# one), none of which asks the reader to do anything.
NOISE = tuple(re.compile(pattern) for pattern in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"cuda_platform\.cc:\d+\] failed call to cuInit",
    r"cuda_executor\.cc:\d+\] .*(NUMA node|non-zero NUMA)",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"TF-TRT Warning: Could not find TensorRT",
))


def is_noise(line: str) -> bool:
    """True for a known, harmless TensorFlow/XLA start-up line."""
    return any(pattern.search(line) for pattern in NOISE)


@contextlib.contextmanager
def quiet_native_output():
    """Capture file descriptor 2 for the block; re-emit every line that is not noise.

    The capture is synchronous (a temporary file, copied back when the block ends),
    so nothing is lost or reordered when the block raises. Where descriptor 2 cannot
    be redirected (no real stderr), the block runs as is.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _configured_backend() -> str | None:
    """The backend the user chose: ``KERAS_BACKEND``, else ``~/.keras/keras.json``."""
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    return _keras_json_backend()


def _keras_json_backend() -> str | None:
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text(encoding="utf-8")).get("backend") or None
    except (OSError, ValueError, AttributeError):
        return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_backend() -> str | None:
    """Set ``KERAS_BACKEND`` to an installed backend when the one Keras would use is missing.

    ``KERAS_BACKEND`` set by the user is never changed. Otherwise Keras would use the
    backend in ``~/.keras/keras.json``, or TensorFlow; Keras writes that file itself,
    naming TensorFlow, the first time it is imported, even where TensorFlow is not
    installed, so the file alone is no sign of a choice. When that backend is missing,
    JAX (then PyTorch) is used and said once. Returns the backend chosen here, or None
    when nothing was changed.
    """
    if os.environ.get(BACKEND_ENV):
        return None
    wanted = _keras_json_backend() or "tensorflow"
    if _installed(wanted):
        return None
    for backend in FALLBACK_BACKENDS:
        if _installed(backend):
            os.environ[BACKEND_ENV] = backend
            print(f"tinylib: Keras' {wanted} backend is not installed; using its {backend} backend "
                  f"(set {BACKEND_ENV} to choose another)", file=sys.stderr)
            return backend
    return None


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader's module with descriptor 2 filtered, then probes the devices."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with quiet_native_output():
            self.loader.exec_module(module)
            # The CUDA probe ("failed call to cuInit") happens at the first device
            # query; make it here, inside the capture, rather than in a chapter's cell.
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, and has it imported by :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # one import only; also avoids finding ourselves
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


PATH_SETTINGS = ("TINYLIB_HOME", "TINYLIB_RUNS", "TINYLIB_DATA")


def absolute_path_settings() -> None:
    """Make relative path settings absolute, from the folder tinylib was imported in.

    A relative ``TINYLIB_HOME=cache`` means the folder where the command was typed; a
    later ``os.chdir`` (a notebook, a script) or a child process started elsewhere (a
    Jupyter kernel runs in the notebook's folder) must not make it mean another.
    """
    for name in PATH_SETTINGS:
        value = os.environ.get(name)
        if value and not os.path.isabs(os.path.expanduser(value)):
            os.environ[name] = os.path.abspath(os.path.expanduser(value))


def printable_output() -> None:
    """A terminal that cannot show a character (an ASCII locale) gets an escape (``\\xe9``)
    instead of a UnicodeEncodeError: class names come from words.txt, paths from the user."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if hasattr(stream, "reconfigure") and encoding not in ("utf8", "utf8sig"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change: leave it
                pass


GPU_MEMORY_SETTINGS = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",      # TensorFlow: take GPU memory as it is needed
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: the same (it takes 75% at start otherwise)
}


def gpu_memory_on_demand() -> None:
    """Let each process take GPU memory as it needs it instead of nearly all of it at start,
    so that two chapters open in JupyterLab can share one GPU. Set before the backend
    starts (it cannot change after); a value already set is left as it is."""
    for name, value in GPU_MEMORY_SETTINGS.items():
        os.environ.setdefault(name, value)


def install() -> None:
    """Pick a backend if needed, make path settings absolute, keep printing safe and
    filter TensorFlow's start-up lines; idempotent."""
    absolute_path_settings()
    printable_output()
    choose_backend()
    # INFO lines off; TensorFlow's warnings and errors stay visible.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    gpu_memory_on_demand()
    if "tensorflow" in sys.modules or _configured_backend() not in (None, "tensorflow"):
        return
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
