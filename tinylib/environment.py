"""Where a run computes: the device, its precision, and the versions that made a record.

Device detection goes through Keras' own ``keras.distribution.list_devices``, so it
is the same question on every backend; a GPU's marketing name, which Keras does not
give, comes from the backend when it can say.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path

import keras
import numpy as np

from tinylib import processes, startup


def devices_list() -> list[str]:
    """The backend's devices as Keras names them ('cpu:0', 'gpu:0', ...)."""
    with startup.quiet_native_output():  # TensorFlow's first CUDA probe prints on a CPU machine
        try:
            return [str(d).lower() for d in keras.distribution.list_devices()]
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            # AttributeError: Keras' torch backend has no distribution library; ask torch itself.
            if keras.backend.backend() == "torch":
                import torch

                return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu:0"]
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
    distribution = data_parallel(devices)
    return distribution.scope() if distribution is not None else contextlib.nullcontext()


def fused_kernel_enabled(setting: str) -> bool:
    """Whether a fused TensorFlow kernel of tinylib's is used: on TensorFlow, unless its
    environment ``setting`` is 0 or false (for side-by-side timings)."""
    if keras.backend.backend() != "tensorflow":
        return False
    return os.environ.get(setting, "1").strip().lower() not in ("0", "false")


GPU_STEPS_PER_EXECUTION = 16
CPU_STEPS_PER_EXECUTION = 4
STEPS_ENV = "TINYLIB_STEPS_PER_EXECUTION"


def steps_per_execution() -> int:
    """Training steps per compiled call: ``TINYLIB_STEPS_PER_EXECUTION`` where set; else 16
    on a GPU, where a small model's step is shorter than Python's round trip to launch it,
    and 4 on a CPU, where that round trip (Keras' loop and the callbacks, a few
    milliseconds) is still a few percent of a small model's step
    (``benchmarks/speed_choices.py``, variants 'new' and 'new-1-step'); 1 on the torch
    backend, whose trainer takes one step a call."""
    if keras.backend.backend() == "torch":
        return 1
    setting = os.environ.get(STEPS_ENV, "").strip()
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"{STEPS_ENV}={setting!r}: give a whole number of steps, 1 or more "
                             f"(or unset it for this device's default)")
        return int(setting)
    return GPU_STEPS_PER_EXECUTION if gpu_available() else CPU_STEPS_PER_EXECUTION


JIT_ENV = "TINYLIB_JIT_COMPILE"


def jit_compile() -> bool | str:
    """Whether Keras compiles the training step with XLA: ``TINYLIB_JIT_COMPILE`` (1 or 0)
    where set, for side-by-side timings (``benchmarks/speed_choices.py``, variant 'xla');
    else Keras' own 'auto': XLA under JAX and on a GPU, never on a CPU under TensorFlow, whose
    oneDNN kernels and tinylib's fused ones run outside XLA. The augmentation follows it
    (``augment._xla_may_compile``): a step XLA compiles resamples by gathers."""
    setting = os.environ.get(JIT_ENV, "").strip().lower()
    if not setting:
        return "auto"
    if setting in ("1", "true"):
        return True
    if setting in ("0", "false"):
        return False
    raise ValueError(f"{JIT_ENV}={setting!r}: give 1 or 0 (or unset it for Keras' own choice)")


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
CPU_FLAGS_FILE = Path("/proc/cpuinfo")
# CPU features with bfloat16 dot products, which oneDNN uses for TensorFlow's convolutions and matmuls.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``/proc/cpuinfo``); empty where unknown."""
    try:
        text = Path(cpuinfo or CPU_FLAGS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bfloat16(flags=None) -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN (on by default on x86 Linux;
    ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off, and bfloat16 then falls to slow generic kernels)."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, (8, 0) for an A100, or None where the backend
    cannot say (no GPU, or another kind of accelerator)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        elif backend == "jax":
            import jax

            capability = getattr(jax.devices()[0], "compute_capability", None)
        elif backend == "torch":
            import torch

            capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        else:
            capability = None
        if isinstance(capability, str):  # JAX: '8.0'
            capability = tuple(int(part) for part in capability.split(".")[:2])
        return (int(capability[0]), int(capability[1])) if capability else None
    except Exception:  # a capability is a hint for the precision, never worth a crash
        return None


BFLOAT16_GPU_CAPABILITY = (8, 0)  # Ampere and later multiply bfloat16 in their tensor cores
FLOAT16_GPU_CAPABILITY = (7, 0)  # Volta and Turing (a T4, Colab's free GPU): float16 only


def gpu_precision(capability: tuple[int, int] | None) -> str:
    """The mixed precision a GPU of this compute capability computes fastest in: bfloat16
    from Ampere on (and where the capability is unknown: an accelerator that does not
    report one), float16 with loss scaling (Keras adds it) on Volta and Turing, which have
    no bfloat16 arithmetic and would emulate it more slowly than float32, float32 before."""
    if capability is None or tuple(capability) >= BFLOAT16_GPU_CAPABILITY:
        return "mixed_bfloat16"
    if tuple(capability) >= FLOAT16_GPU_CAPABILITY:
        return "mixed_float16"
    return "float32"


_UNKNOWN = object()


def automatic_precision(backend: str | None = None, gpu: bool | None = None, flags=None,
                        capability=_UNKNOWN) -> str:
    """The dtype policy 'auto' means here, and why: the fastest that learns as float32 does.

    On a GPU, its own: mixed bfloat16 (bfloat16 arithmetic, float32 weights) from Ampere on,
    mixed float16 on Volta and Turing, float32 before (``gpu_precision``). On a CPU with
    bfloat16 instructions under TensorFlow with oneDNN, mixed bfloat16: there a training step
    of Model 2 takes about 0.6 of float32's (``benchmarks/speed_choices.py``) and a
    full-scale run learns the same curve (chapter 13). Elsewhere float32: JAX's CPU
    bfloat16 and CPUs without the instructions are slower than float32.
    """
    backend = backend or keras.backend.backend()
    if gpu_available() if gpu is None else gpu:
        return gpu_precision(gpu_compute_capability() if capability is _UNKNOWN else capability)
    if backend == "tensorflow" and onednn_enabled() and cpu_has_bfloat16(flags):
        return "mixed_bfloat16"
    return "float32"


_RUN_POLICY: list[str] = []  # the policy a resumed run began with, while it trains (see resumed_run_precision)
_AUTOMATIC = [True]  # whether the policy in force came from 'auto'


def configure_precision(policy: str = "auto") -> str:
    """Set Keras' global dtype policy; call it before building a model.

    'auto' is ``TINYLIB_PRECISION`` when set (CI uses it to run the chapters with the
    precision a GPU gets), else :func:`automatic_precision`: a GPU's own mixed precision
    (bfloat16 from Ampere on, ``gpu_precision``), mixed bfloat16 on a CPU with bfloat16
    instructions (TensorFlow), float32 elsewhere. While a resumed
    run trains (:func:`resumed_run_precision`), 'auto' is the policy that run began with.
    """
    _AUTOMATIC[0] = policy == "auto"
    if policy == "auto":
        policy = (_RUN_POLICY[-1] if _RUN_POLICY else None) or os.environ.get(PRECISION_ENV) \
            or automatic_precision()
    keras.config.set_dtype_policy(policy)
    return policy


@contextlib.contextmanager
def using_precision(policy: str):
    """``configure_precision(policy)`` for a block; the policy in force before is given back."""
    previous, automatic = keras.config.dtype_policy(), _AUTOMATIC[0]
    try:
        yield configure_precision(policy)
    finally:
        keras.config.set_dtype_policy(previous)
        _AUTOMATIC[0] = automatic


@contextlib.contextmanager
def resumed_run_precision(recorded: str | None):
    """Build and train a resumed run in the precision it began with, when the precision
    in force was chosen automatically: a run started in float32 and continued on a
    machine where 'auto' now means bfloat16 stays the run it was. An explicit policy is
    left alone (the run then refuses to resume, saying what differs)."""
    current = keras.config.dtype_policy().name
    if not recorded or recorded == current or not _AUTOMATIC[0]:
        yield current
        return
    print(f"precision: {recorded}, as this run began (a new run here would compute in {current})", flush=True)
    _RUN_POLICY.append(recorded)
    keras.config.set_dtype_policy(recorded)
    try:
        yield recorded
    finally:
        _RUN_POLICY.pop()
        keras.config.set_dtype_policy(current)


def matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 5, chain: int = 4) -> float:
    """GFLOP/s of the fastest of ``repeats`` rounds of ``chain`` dependent ``size`` x ``size``
    matrix products through the active backend: the yardstick a training step's FLOP/s is a
    fraction of. A round waits once, on a float32 sum of its last product; chaining the
    products (each multiplies the one before) spreads that sum and cast over ``chain``
    products and keeps a backend that dispatches asynchronously (JAX) from overlapping them."""
    key = (keras.backend.backend(), dtype, size, repeats, chain)
    if key not in _PEAKS:
        # Entries of variance 1/size keep a chain's products near unit scale (no overflow).
        a = keras.random.normal((size, size), seed=0, dtype="float32", stddev=size ** -0.5)
        a = keras.ops.cast(a, dtype)

        def products():
            b = a
            for _ in range(chain):
                b = keras.ops.matmul(b, a)
            keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.sum(b), "float32"))

        products()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            products()
            best = min(best, time.perf_counter() - start)
        _PEAKS[key] = 2 * size ** 3 * chain / best / 1e9
    return _PEAKS[key]


_PEAKS: dict = {}


def compute_dtype(policy: str | None = None) -> str:
    """The arithmetic dtype of a policy ('mixed_bfloat16' computes in bfloat16)."""
    return keras.dtype_policies.get(policy or keras.config.dtype_policy().name).compute_dtype


def speed_settings(flags=None) -> dict:
    """The device-dependent choices a run trains with, for its record."""
    backend = keras.backend.backend()
    settings = {  # the run's own policy is the record's "dtype_policy"
        "automatic_precision": automatic_precision(backend, flags=flags),
        "cpu_bfloat16": cpu_has_bfloat16(flags),
        "steps_per_execution": steps_per_execution(),
    }
    jit = jit_compile()
    if jit != "auto":  # set for a timing: the record says so
        settings["jit_compile"] = jit
    if backend == "tensorflow":
        from tinylib import batchnorm, fused_adam

        settings["onednn"] = onednn_enabled()
        settings["fused_batchnorm"] = batchnorm.fused_available()
        settings["fused_adam"] = fused_adam.fused_available()
    return settings


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
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                  timeout=10, preexec_fn=processes.tied_to_this_process).stdout.strip()

        commit = git("rev-parse", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+dirty"
        return commit or None
    except (OSError, subprocess.SubprocessError):
        return None

