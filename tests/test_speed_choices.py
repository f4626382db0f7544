"""The device-dependent choices in ``tinylib.environment``, with the CPU's features faked.

Mixed bfloat16 is the automatic precision where it is faster and learns as float32 does
(a GPU; a CPU with bfloat16 instructions under TensorFlow with oneDNN), float32 elsewhere.
A run resumed under 'auto' keeps the precision it began with; an explicit other policy
is refused. Each record carries the choices, its GFLOP/s and their fraction of the
machine's matrix-product peak.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tinylib import environment, runs

ZEN5 = frozenset("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni".split())
AVX2_ONLY = frozenset("fpu sse2 avx2 fma".split())
SAPPHIRE_RAPIDS = frozenset("fpu avx512f amx_tile amx_bf16 amx_int8".split())


@pytest.fixture
def policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert environment.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert environment.cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert environment.cpu_flags(tmp_path / "missing") == frozenset()
    assert environment.cpu_has_bfloat16(environment.cpu_flags(x86))
    assert not environment.cpu_has_bfloat16(environment.cpu_flags(arm))  # no measured kernel path there


@pytest.mark.parametrize(("capability", "expected"), [
    ((9, 0), "mixed_bfloat16"),  # H100, H200
    ((8, 0), "mixed_bfloat16"),  # A100
    ((8, 6), "mixed_bfloat16"),  # RTX 30xx, A10
    ((7, 5), "mixed_float16"),   # T4 (Colab's free GPU), RTX 20xx: no bfloat16 arithmetic
    ((7, 0), "mixed_float16"),   # V100
    ((6, 0), "float32"),         # P100: no tensor cores
    (None, "mixed_bfloat16"),    # a GPU that reports none (keeps the choice for accelerators that say nothing)
])
def test_a_gpu_gets_the_mixed_precision_its_tensor_cores_compute_in(capability, expected):
    assert environment.automatic_precision("tensorflow", gpu=True, flags=AVX2_ONLY, capability=capability) == expected
    assert environment.automatic_precision("jax", gpu=True, flags=ZEN5, capability=capability) == expected


@pytest.mark.parametrize(("backend", "gpu", "flags", "onednn", "expected"), [
    ("tensorflow", False, ZEN5, None, "mixed_bfloat16"),
    ("tensorflow", False, SAPPHIRE_RAPIDS, None, "mixed_bfloat16"),
    ("tensorflow", False, AVX2_ONLY, None, "float32"),
    ("tensorflow", False, frozenset(), None, "float32"),  # flags unknown: the safe choice
    ("tensorflow", False, ZEN5, "0", "float32"),  # without oneDNN bfloat16 is 20 times slower
    ("jax", False, ZEN5, None, "float32"),  # XLA's CPU bfloat16 is slower than its float32
    ("jax", True, AVX2_ONLY, None, "mixed_bfloat16"),  # a GPU: its own choice (below), here one that reports none
    ("tensorflow", True, AVX2_ONLY, "0", "mixed_bfloat16"),
])
def test_the_automatic_precision_follows_the_device(monkeypatch, backend, gpu, flags, onednn, expected):
    if onednn is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    assert environment.automatic_precision(backend, gpu=gpu, flags=flags, capability=None) == expected


@pytest.mark.parametrize(("backend", "gpu", "expected"), [
    ("tensorflow", True, environment.GPU_STEPS_PER_EXECUTION),
    ("jax", True, environment.GPU_STEPS_PER_EXECUTION),
    ("torch", True, 1),  # Keras' torch trainer refuses more than one step a call
    ("tensorflow", False, environment.CPU_STEPS_PER_EXECUTION),
    ("jax", False, environment.CPU_STEPS_PER_EXECUTION),
])
def test_steps_per_execution_follow_the_device_and_the_backend(monkeypatch, backend, gpu, expected):
    monkeypatch.delenv(environment.STEPS_ENV, raising=False)
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    monkeypatch.setattr(environment, "gpu_available", lambda: gpu)
    assert environment.steps_per_execution() == expected


def test_the_steps_per_call_setting_wins_and_a_bad_one_says_what_to_give(monkeypatch):
    monkeypatch.setattr(environment, "gpu_available", lambda: False)
    monkeypatch.setenv(environment.STEPS_ENV, "1")
    assert environment.steps_per_execution() == 1
    for bad in ("0", "four", "-2", "1.5"):
        monkeypatch.setenv(environment.STEPS_ENV, bad)
        with pytest.raises(ValueError, match="whole number of steps"):
            environment.steps_per_execution()


def test_configure_precision_auto_reads_the_cpu(monkeypatch, tmp_path, policy):
    if keras.backend.backend() != "tensorflow" or environment.gpu_available():
        pytest.skip("the CPU's bfloat16 choice is TensorFlow's on a CPU")
    monkeypatch.delenv(environment.PRECISION_ENV, raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(environment, "CPU_FLAGS_FILE", cpuinfo)
    cpuinfo.write_text("flags\t: " + " ".join(sorted(ZEN5)) + "\n")
    assert environment.configure_precision() == "mixed_bfloat16"
    cpuinfo.write_text("flags\t: " + " ".join(sorted(AVX2_ONLY)) + "\n")
    assert environment.configure_precision() == "float32"
    assert keras.config.dtype_policy().name == "float32"
    monkeypatch.setenv(environment.PRECISION_ENV, "mixed_bfloat16")  # the setting wins over the CPU
    assert environment.configure_precision() == "mixed_bfloat16"
    assert environment.speed_settings(flags=AVX2_ONLY)["automatic_precision"] == "float32"


@pytest.mark.parametrize(("flags", "bfloat16"), [("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 fma", False)])
def test_the_settings_state_what_this_machines_cpu_gives(policy, monkeypatch, tmp_path, flags, bfloat16):
    """A run's record states the machine's own choice: read from its /proc/cpuinfo (a file
    here), bfloat16 on TensorFlow with oneDNN where the CPU multiplies it, float32 elsewhere."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(environment, "CPU_FLAGS_FILE", cpuinfo)
    monkeypatch.setattr(environment, "gpu_available", lambda: False)  # a GPU would choose its own
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)  # oneDNN's default: on
    settings = environment.speed_settings()
    assert settings["cpu_bfloat16"] is bfloat16
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert settings["automatic_precision"] == ("mixed_bfloat16" if bfloat16 and on_tensorflow else "float32")


def test_a_matrix_product_peak_is_measured_once_per_process():
    first = environment.matmul_peak("float32", size=256, repeats=2)
    assert first > 0
    assert environment.matmul_peak("float32", size=256, repeats=2) == first


def _train_smoke(ds, tmp_path, epochs=1, **kwargs):
    from tinylib import train
    from tinylib.profiles import Profile

    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=epochs, batch_size=4)
    return train.train_model("model1", ds, profile, runs=tmp_path / "runs", verbose=0, checkpoint_every=0.0,
                             **kwargs)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_precision_it_began_with(tiny_env, synthetic, monkeypatch, tmp_path, policy,
                                                         capsys):
    """A run begun in float32 and continued where 'auto' now means bfloat16 (another CPU,
    or a newer tinylib) stays a float32 run; asked explicitly for another policy, it is
    refused with what differs."""
    from tinylib import data

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    environment.configure_precision("float32")
    first = _train_smoke(ds, tmp_path, epochs=1)
    assert first.record["dtype_policy"] == "float32"
    assert runs.recorded_precision(first.path) == "float32"

    monkeypatch.setenv(environment.PRECISION_ENV, "mixed_bfloat16")
    assert environment.configure_precision() == "mixed_bfloat16"
    resumed = _train_smoke(ds, tmp_path, epochs=2)
    assert "precision: float32, as this run began" in capsys.readouterr().out
    assert resumed.record["dtype_policy"] == "float32" and resumed.record["epochs_run"] == 2
    assert resumed.model.layers[-1].compute_dtype == "float32"
    assert all(layer.compute_dtype == "float32" for layer in resumed.model.layers)
    assert keras.config.dtype_policy().name == "mixed_bfloat16"  # the policy in force is given back

    environment.configure_precision("mixed_bfloat16")  # asked for, not chosen: a different run
    with pytest.raises(runs.RunConflict, match="dtype_policy: 'float32' -> 'mixed_bfloat16'"):
        _train_smoke(ds, tmp_path, epochs=3)


@pytest.mark.slow
def test_a_record_gives_its_speed_against_the_machines_peak(tiny_env, synthetic, monkeypatch, tmp_path, policy):
    from tinylib import data, flops

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    environment.configure_precision("float32")
    run = _train_smoke(ds, tmp_path, epochs=2)
    speed = run.record["speed"]
    assert "dtype_policy" not in speed and speed["matmul_peak_dtype"] == "float32"
    assert speed["train_gflop_per_image"] == pytest.approx(flops.training_flops(run.model) / 1e9, rel=1e-3)
    assert speed["matmul_peak_gflops_per_second"] > 0
    reached = run.record["train_images_per_second"] * speed["train_gflop_per_image"]
    assert speed["train_gflops_per_second"] == pytest.approx(reached, rel=1e-2)
    assert speed["fraction_of_matmul_peak"] == pytest.approx(reached / speed["matmul_peak_gflops_per_second"],
                                                             rel=1e-2)


def test_augmentation_moves_pixels_in_float32_under_mixed_bfloat16(policy):
    """Under mixed bfloat16 the augmentation would blend pixels in 8 bits: it keeps float32."""
    import numpy as np

    from tinylib import models
    from tinylib.augment import augmentation

    keras.config.set_dtype_policy("mixed_bfloat16")
    model = models.build_model("model1", num_classes=10, augmentation=augmentation(seed=0))
    by_name = {layer.name: layer for layer in model.layers}
    assert by_name["rescale"].compute_dtype == "float32"
    augment = [layer for layer in model.layers if "augment" in type(layer).__name__.lower()]
    assert augment and all(layer.compute_dtype == "float32" for layer in augment)
    assert model.layers[-1].compute_dtype == "float32"
    conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert conv and conv[0].compute_dtype == "bfloat16"
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("uint8")
    assert np.isfinite(keras.ops.convert_to_numpy(model(images, training=True))).all()


def test_the_torch_backend_without_keras_distribution_still_lists_its_devices(monkeypatch):
    """Keras' torch backend has no distribution library (list_devices raises
    AttributeError): the devices come from torch itself, so profiles and precision work."""
    import sys
    import types

    def no_distribution():
        raise AttributeError("'NoneType' object has no attribute 'list_devices'")

    monkeypatch.setattr(keras.distribution, "list_devices", no_distribution)
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(device_count=lambda: 2, is_available=lambda: True,
                                                            get_device_capability=lambda: (7, 5)))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert environment.devices_list() == ["cuda:0", "cuda:1"] and environment.gpu_available()
    assert environment.gpu_compute_capability() == (7, 5)
    assert environment.automatic_precision() == "mixed_float16"
    fake.cuda.device_count = lambda: 0
    assert environment.devices_list() == ["cpu:0"] and not environment.gpu_available()


def test_a_peak_counts_every_product_of_its_chain(monkeypatch):
    """The peak times ``chain`` products per wait: its GFLOP/s count all of them, so a longer
    chain at the same speed per product gives the same figure, not one ``chain`` times higher."""
    seconds = {"now": 0.0}
    calls = {"matmul": 0}
    real = environment.keras.ops.matmul

    def counting(a, b):
        calls["matmul"] += 1
        seconds["now"] += 0.5  # half a second a product
        return real(a, b)

    monkeypatch.setattr(environment.keras.ops, "matmul", counting)
    monkeypatch.setattr(environment.time, "perf_counter", lambda: seconds["now"])
    environment._PEAKS.clear()
    one = environment.matmul_peak("float32", size=8, repeats=2, chain=1)
    four = environment.matmul_peak("float32", size=8, repeats=2, chain=4)
    assert one == pytest.approx(2 * 8 ** 3 / 0.5 / 1e9) and four == pytest.approx(one)
    assert calls["matmul"] == 3 * 1 + 3 * 4  # a warm-up and two rounds each
    environment._PEAKS.clear()


@pytest.mark.slow
def test_a_cpu_run_trains_its_default_steps_a_call_and_resumes_with_another(tiny_env, synthetic, monkeypatch,
                                                                           tmp_path):
    """The CPU's default of several steps a call, in a whole run: recorded, the epoch's
    last short call included, and resumed one step a call (not part of the run's identity)."""
    from tinylib import data

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    monkeypatch.setattr(environment, "gpu_available", lambda: False)
    monkeypatch.delenv(environment.STEPS_ENV)
    ds = data.load()
    first = _train_smoke(ds, tmp_path, epochs=1)  # 24 images in batches of 4: calls of 4 and 2 steps
    assert first.record["steps_per_execution"] == environment.CPU_STEPS_PER_EXECUTION == 4
    assert first.record["epochs_run"] == 1 and np.isfinite(first.record["history"]["loss"][0])
    monkeypatch.setenv(environment.STEPS_ENV, "1")
    resumed = _train_smoke(ds, tmp_path, epochs=2)
    assert resumed.record["epochs_run"] == 2 and resumed.record["steps_per_execution"] == 1


def test_xla_is_keras_own_choice_unless_set_and_the_augmentation_follows_it(monkeypatch):
    """``TINYLIB_JIT_COMPILE`` (for side-by-side timings) overrides Keras' 'auto' both ways, and
    the augmentation resamples by gathers exactly where XLA will compile the step."""
    from tinylib import augment

    monkeypatch.delenv(environment.JIT_ENV, raising=False)
    assert environment.jit_compile() == "auto"
    tensorflow = keras.backend.backend() == "tensorflow"  # JAX has no fused transform to avoid
    for gpu in (False, True):
        monkeypatch.setattr(environment, "gpu_available", lambda gpu=gpu: gpu)
        assert augment._xla_may_compile() == (tensorflow and gpu)
        monkeypatch.setenv(environment.JIT_ENV, "1")
        assert environment.jit_compile() is True and augment._xla_may_compile() == tensorflow
        monkeypatch.setenv(environment.JIT_ENV, "0")
        assert environment.jit_compile() is False and not augment._xla_may_compile()
        monkeypatch.delenv(environment.JIT_ENV)
    monkeypatch.setenv(environment.JIT_ENV, "yes please")
    with pytest.raises(ValueError, match="give 1 or 0"):
        environment.jit_compile()


@pytest.mark.slow
def test_a_run_asked_for_xla_trains_with_it_and_its_record_says_so(tiny_env, synthetic, monkeypatch, tmp_path,
                                                                   policy):
    """On a CPU, TensorFlow's step is compiled with XLA only where asked: the augmentation then
    resamples by gathers (XLA has no kernel for the fused transform it takes otherwise)."""
    from tinylib import data

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    monkeypatch.setenv(environment.JIT_ENV, "1")
    ds = data.load()
    environment.configure_precision("float32")
    run = _train_smoke(ds, tmp_path, epochs=1)
    assert run.model.jit_compile is True and run.record["speed"]["jit_compile"] is True
    assert np.isfinite(run.record["history"]["loss"]).all()
    monkeypatch.delenv(environment.JIT_ENV)
    assert "jit_compile" not in environment.speed_settings()  # Keras' own choice: nothing to say


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="JAX always compiles with XLA")
def test_a_step_compiled_with_xla_learns_what_the_step_without_it_learns(monkeypatch):
    """A speed setting only: XLA (``TINYLIB_JIT_COMPILE=1``) changes how the step runs, not what
    it computes. XLA's kernels draw other random numbers from the same seeds than TensorFlow's
    own (the augmentation's parameters, dropout's masks: another sample of the same training),
    so the random parts are left out here: a few steps of Model 2 without dropout or
    augmentation end at the same weights and losses both ways, to float noise. The
    augmentation's two resamples, given the same parameters, are compared in test_augment."""
    from tinylib import models

    if environment.gpu_available():
        pytest.skip("a GPU multiplies in TF32 by default: not float32's noise")
    from speed_settings import train_each_way, weights_of

    def build():
        model = models.build_model("model2", num_classes=5, input_shape=(32, 32, 3), learning_rate=1e-3, dropout=0.0)
        model.jit_compile = environment.jit_compile()  # as train.fit sets it
        return model

    (xla, loss_xla), (plain, loss_plain) = train_each_way(monkeypatch, environment.JIT_ENV, ("1", "0"), build)
    assert xla.jit_compile is True and plain.jit_compile is False
    np.testing.assert_allclose(loss_xla, loss_plain, rtol=1e-4)
    with_xla, without = weights_of(xla), weights_of(plain)
    for name in with_xla:
        np.testing.assert_allclose(with_xla[name], without[name], rtol=1e-3, atol=1e-5, err_msg=name)
