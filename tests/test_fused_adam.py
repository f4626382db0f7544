"""tinylib.fused_adam against Keras' own Adam and AdamW as the oracle.

The fused kernel is a speed choice only: the same variables after every step (to
float rounding), the same optimizer variables, names, config and checkpoints, and
Keras' computation wherever the kernel does not apply (JAX, AMSGrad, sparse gradients,
``TINYLIB_FUSED_ADAM=0``).
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tinylib import environment, fused_adam, models, optimizers

TENSORFLOW = keras.backend.backend() == "tensorflow"
SHAPES = [(3, 3, 3, 8), (8,), (40, 16), (16,)]


def _steps(optimizer, steps=4, seed=0, variables=None):
    """The variables after ``steps`` updates with the same gradients, from the same start
    (or ``variables``); the gradients grow and change sign, so that the moments and bias
    corrections matter."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    variables = variables or [keras.Variable(v) for v in start]
    gradients = [[rng.standard_normal(s).astype("float32") * (1 + step) for s in SHAPES] for step in range(steps)]
    for step_gradients in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_gradients], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables], variables


def _same(ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("config", [{}, {"learning_rate": 3e-2, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}])
def test_adam_updates_as_keras_does(config, monkeypatch):
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    ours, _ = _steps(fused_adam.Adam(**config))
    theirs, _ = _steps(keras.optimizers.Adam(**config))
    _same(ours, theirs)
    assert not np.allclose(ours[0], _steps(keras.optimizers.Adam(**config), steps=0)[0][0])  # they moved


def test_adamw_decays_and_updates_as_keras_does(monkeypatch):
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    config = {"learning_rate": 1e-2, "weight_decay": 0.1}
    ours, _ = _steps(fused_adam.AdamW(**config))
    theirs, _ = _steps(keras.optimizers.AdamW(**config))
    _same(ours, theirs)


def test_a_learning_rate_changed_between_steps_is_the_one_used(monkeypatch):
    """ReduceLROnPlateau assigns the optimizer's rate between steps; the kernel reads it."""
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    results = []
    for optimizer in (fused_adam.Adam(1e-2), keras.optimizers.Adam(1e-2)):
        _, variables = _steps(optimizer, steps=1)
        optimizer.learning_rate.assign(1e-4)
        results.append(_steps(optimizer, steps=2, seed=1, variables=variables)[0])
    _same(*results)


def _traced_kernels(optimizer) -> set:
    """The operation types of one traced update of ``optimizer`` (TensorFlow)."""
    import tensorflow as tf

    variables = [keras.Variable(np.ones(s, "float32")) for s in SHAPES]
    gradients = [tf.ones(s) for s in SHAPES]
    optimizer.build(variables)
    graph = tf.function(lambda: optimizer.apply(gradients, variables)).get_concrete_function().graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.skipif(not TENSORFLOW, reason="the fused kernel is TensorFlow's")
def test_the_fused_kernel_is_tensorflows_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    assert fused_adam.fused_available()
    assert "ResourceApplyAdam" in _traced_kernels(fused_adam.Adam())
    monkeypatch.setenv(fused_adam.FUSED_ENV, "0")
    assert not fused_adam.fused_available()
    assert "ResourceApplyAdam" not in _traced_kernels(fused_adam.Adam())
    assert environment.speed_settings()["fused_adam"] is False


@pytest.mark.skipif(not TENSORFLOW, reason="the fused kernel is TensorFlow's")
def test_amsgrad_is_keras_own_update(monkeypatch):
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    assert "ResourceApplyAdam" not in _traced_kernels(fused_adam.Adam(amsgrad=True))
    ours, _ = _steps(fused_adam.Adam(1e-2, amsgrad=True))
    theirs, _ = _steps(keras.optimizers.Adam(1e-2, amsgrad=True))
    _same(ours, theirs)


def test_the_names_make_the_fused_classes_and_read_as_keras_own():
    for name, keras_class in (("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW)):
        optimizer = optimizers.make_optimizer(name, 1e-3)
        assert isinstance(optimizer, keras_class)
        def base(optimizer):  # Keras numbers each instance's name
            return re.sub(r"_\d+$", "", optimizer.name)

        assert base(optimizer) == base(keras_class())  # Keras' own name, as records and checkpoints read
    assert isinstance(models.build_model("model2", num_classes=5, input_shape=(32, 32, 3)).optimizer,
                      fused_adam.Adam)


def test_optimizer_state_is_keras_adams_both_ways(tmp_path, monkeypatch):
    """A checkpoint written with Keras' Adam resumes with the fused one and the other way
    round (runs started before this change resume): same variables, same paths."""
    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]

    def model_with(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer, "categorical_crossentropy")
        return model

    for writer, reader in ((keras.optimizers.Adam, fused_adam.Adam), (fused_adam.Adam, keras.optimizers.Adam)):
        written = model_with(writer(1e-2))
        written.fit(x, y, epochs=2, batch_size=8, verbose=0)
        path = tmp_path / f"{writer.__module__.split('.')[0]}.weights.h5"
        written.save_weights(path)
        read = model_with(reader(1e-2))
        read.optimizer.build(read.trainable_variables)
        read.load_weights(path)
        assert len(read.optimizer.variables) == len(written.optimizer.variables)
        for a, b in zip(read.optimizer.variables, written.optimizer.variables):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def _compiled(optimizer, gradients, variables, jit_compile):
    """One update, traced once; the variables are captured (as arguments, TensorFlow would
    take them for tensors)."""
    import tensorflow as tf

    return tf.function(lambda: optimizer.apply(gradients, variables), jit_compile=jit_compile)


@pytest.mark.skipif(not TENSORFLOW, reason="the fused kernel is TensorFlow's")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_compiled_update_matches_keras_and_reads_the_rate_at_each_call(jit_compile, monkeypatch):
    """As a training step runs it: traced once (with XLA where a GPU run turns it on), the
    rate changed between calls as ReduceLROnPlateau does, not frozen at tracing."""
    import tensorflow as tf

    monkeypatch.delenv(fused_adam.FUSED_ENV, raising=False)
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    gradients = [tf.constant(rng.standard_normal(s).astype("float32")) for s in SHAPES]
    results = []
    for optimizer in (fused_adam.Adam(1e-2), keras.optimizers.Adam(1e-2)):
        variables = [keras.Variable(v) for v in start]
        optimizer.build(variables)
        step = _compiled(optimizer, gradients, variables, jit_compile)
        step()
        optimizer.learning_rate.assign(1e-4)
        step()
        step()
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    _same(*results)


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_training_with_the_fused_update_learns_what_keras_update_learns(monkeypatch, steps_per_call):
    """A speed setting only: a few steps of a study model's training, the same data and
    seed, end at the same weights and loss both ways (to float noise), one step a compiled
    call or a CPU's default of four (the last call short)."""
    from speed_settings import train_each_way, weights_of

    (fused_model, loss_fused), (own_model, loss_keras) = train_each_way(
        monkeypatch, fused_adam.FUSED_ENV, ("1", "0"),
        lambda: models.build_model("model2", num_classes=5, input_shape=(32, 32, 3), learning_rate=1e-3),
        steps_per_call=steps_per_call)
    np.testing.assert_allclose(loss_fused, loss_keras, rtol=1e-4)
    fused, own = weights_of(fused_model), weights_of(own_model)
    for name in fused:
        np.testing.assert_allclose(fused[name], own[name], rtol=1e-3, atol=1e-5, err_msg=name)
