"""Where a run computes: the device, its precision, and the versions that made a record.

Device detection goes through Keras' own ``keras.distribution.list_devices``, so it
is the same question on every backend; a GPU's marketing name, which Keras does not
give, comes from the backend when it can say.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import keras
import numpy as np

from tinylib import startup


def devices_list() -> list[str]:
    """The backend's devices as Keras names them ('cpu:0', 'gpu:0', ...)."""
    with startup.quiet_native_output():  # TensorFlow's first CUDA probe prints on a CPU machine
        try:
            return [str(d).lower() for d in keras.distribution.list_devices()]
        except (NotImplementedError, RuntimeError, ValueError):
            return ["cpu:0"]


def gpu_available() -> bool:
    """True when the active Keras backend computes on a GPU."""
    return any(d.split(":")[0] in ("gpu", "cuda") for d in devices_list())


def data_parallel(devices=None):
    """Keras' data-parallel distribution over ``devices``, or None where one device computes.

    ``devices`` defaults to every GPU the backend sees; a run uses them all when there
    are several. Keras' distribution API serves the JAX backend (elsewhere: None).
    Build and train the model inside ``distribution.scope()``.
    """
    if keras.backend.backend() != "jax":
        return None
    if devices is None:
        devices = [d for d in devices_list() if d.split(":")[0] in ("gpu", "cuda")]
    if len(devices) < 2:
        return None
    return keras.distribution.DataParallel(devices=list(devices))


def parallel_scope(devices=None):
    """The scope to build and train a model in: ``data_parallel(devices)``'s, or none
    where one device computes."""
    import contextlib

    distribution = data_parallel(devices)
    return distribution.scope() if distribution is not None else contextlib.nullcontext()


GPU_STEPS_PER_EXECUTION = 16


def steps_per_execution() -> int:
    """Training steps per compiled call: several on a GPU, where a small model's step is
    shorter than Python's round trip to launch it; one on a CPU, where it is not."""
    return GPU_STEPS_PER_EXECUTION if gpu_available() else 1


def device_count() -> int:
    """How many devices the distribution in force (if any) spreads each batch over."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    return int(distribution.device_mesh.devices.size)


def device_name() -> str:
    """A readable name of the device the backend computes on."""
    backend = keras.backend.backend()
    if not gpu_available():
        return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"GPU: {details.get('device_name', gpus[0].name)}"
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"GPU: {device.device_kind}"
    except Exception:  # a name is nice to have, never worth a crash
        pass
    return "GPU"


PRECISION_ENV = "TINYLIB_PRECISION"


def configure_precision(policy: str = "auto") -> str:
    """Set Keras' global dtype policy; call it before building a model.

    'auto' is ``TINYLIB_PRECISION`` when set (CI uses it to run the chapters on a CPU
    with the precision a GPU gets), else mixed precision (bfloat16 compute, float32
    weights) where a GPU is visible and plain float32 on a CPU, where mixed precision
    is slower.
    """
    if policy == "auto":
        policy = os.environ.get(PRECISION_ENV) or ("mixed_bfloat16" if gpu_available() else "float32")
    keras.config.set_dtype_policy(policy)
    return policy


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    backend = keras.backend.backend()
    try:
        module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
        versions[backend] = module.__version__
    except (KeyError, ImportError):
        pass
    from tinylib import __version__

    versions["tinylib"] = __version__
    return versions


def git_commit() -> str | None:
    """The commit of the tinylib checkout, when it is one; '+dirty' with uncommitted changes."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip()

        commit = git("rev-parse", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+dirty"
        return commit or None
    except (OSError, subprocess.SubprocessError):
        return None

