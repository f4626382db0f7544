"""tinylib.batchnorm against Keras' own BatchNormalization as the oracle.

The fused kernel is a speed choice only: the same outputs, gradients and moving
statistics as Keras' layer (to float rounding), the same weights and names, and
Keras' computation wherever the kernel does not apply (JAX, a mask, 2-D inputs).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tinylib import batchnorm, environment, models

TENSORFLOW = keras.backend.backend() == "tensorflow"


def _pair(shape, **config):
    """Keras' layer and tinylib's, built alike, with the same non-trivial weights."""
    oracle = keras.layers.BatchNormalization(**config)
    fused = batchnorm.BatchNormalization(**config)
    oracle.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in oracle.weights]
    oracle.set_weights(weights)
    fused.set_weights(weights)
    return oracle, fused


def _train_call(layer, x):
    """Outputs and d(sum of outputs * w)/d(inputs, gamma, beta) of one training call."""
    w = np.linspace(-1, 1, x.size, dtype="float32").reshape(x.shape)
    if TENSORFLOW:
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
        sources = [x] + [v.value for v in (layer.gamma, layer.beta) if v is not None]
        grads = tape.gradient(loss, sources)
        return np.asarray(y, "float32"), [np.asarray(g) for g in grads]
    y = layer(x, training=True)
    return keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")), []


@pytest.mark.parametrize("config", [dict(momentum=0.99), dict(momentum=0.9, epsilon=1e-5),
                                    dict(momentum=0.5, center=False), dict(momentum=0.5, scale=False)])
def test_a_training_call_matches_keras(config, monkeypatch):
    monkeypatch.delenv(batchnorm.FUSED_ENV, raising=False)  # the fused kernel is what is compared
    x = np.random.default_rng(1).normal(3.0, 2.0, (8, 6, 5, 4)).astype("float32")
    oracle, fused = _pair(x.shape, **config)
    y_oracle, g_oracle = _train_call(oracle, x)
    calls = []
    if TENSORFLOW:  # the comparison is with TensorFlow's fused kernel, not Keras' own again
        import tensorflow as tf

        kernel = tf.compat.v1.nn.fused_batch_norm
        monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    y_fused, g_fused = _train_call(fused, x)
    assert bool(calls) == TENSORFLOW
    np.testing.assert_allclose(y_fused, y_oracle, atol=1e-4)
    for got, expected in zip(g_fused, g_oracle, strict=True):
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)
    for got, expected in zip(fused.weights, oracle.weights):  # moving mean and (biased) variance
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected),
                                   atol=1e-5, rtol=1e-5)


def test_inference_2d_inputs_and_masks_are_keras_own():
    x = np.random.default_rng(2).normal(size=(6, 7)).astype("float32")
    oracle, fused = _pair(x.shape, momentum=0.9)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(x, training=True)),
                               keras.ops.convert_to_numpy(oracle(x, training=True)), atol=1e-5)
    images = np.random.default_rng(3).normal(size=(2, 3, 3, 4)).astype("float32")
    oracle, fused = _pair(images.shape)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(images, training=False)),
                               keras.ops.convert_to_numpy(oracle(images, training=False)), atol=1e-6)
    mask = np.ones((2, 3, 3), bool)
    assert not fused._fusable(images, mask)


@pytest.mark.skipif(not TENSORFLOW, reason="the fused kernel is TensorFlow's")
def test_under_mixed_bfloat16_it_matches_keras_to_bfloat16_rounding():
    with environment.using_precision("mixed_bfloat16"):
        x = np.random.default_rng(4).normal(1.0, 3.0, (16, 8, 8, 6)).astype("float32")
        oracle, fused = _pair(x.shape, momentum=0.9)
        y_oracle, _ = _train_call(oracle, x)
        y_fused, _ = _train_call(fused, x)
    assert fused.compute_dtype == "bfloat16"
    np.testing.assert_allclose(y_fused, y_oracle, atol=0.05)


def test_the_fused_kernel_is_tensorflows_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(batchnorm.FUSED_ENV, raising=False)
    assert batchnorm.fused_available() == TENSORFLOW
    monkeypatch.setenv(batchnorm.FUSED_ENV, "0")
    assert not batchnorm.fused_available()
    x = np.zeros((2, 3, 3, 4), "float32")
    assert not batchnorm.BatchNormalization()._fusable(x, None)


def test_the_study_models_use_it_and_read_as_keras_batchnorm():
    model = models.build_model("model4", num_classes=5)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is batchnorm.BatchNormalization for layer in norms)
    assert {type(layer).__name__ for layer in norms} == {"BatchNormalization"}  # as the study's summary


def test_fuse_swaps_a_built_models_batchnorm_keeping_names_and_weights():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x))
    plain.get_layer("bn").moving_mean.assign(np.arange(4, dtype="float32"))
    fused = batchnorm.fuse(plain)
    assert type(fused.get_layer("bn")) is batchnorm.BatchNormalization
    assert [layer.name for layer in fused.layers if layer.weights] == ["conv", "bn"]
    for got, expected in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, expected)
    images = np.random.default_rng(5).uniform(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(images)),
                               keras.ops.convert_to_numpy(plain(images)), atol=1e-6)
    assert batchnorm.fuse(fused) is fused


def test_a_checkpoint_of_keras_batchnorm_loads(tmp_path):
    """A run begun before this layer existed resumes from its checkpoint."""
    def build(norm):
        inputs = keras.Input((6, 6, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = norm(name="bn")(x)
        return keras.Model(inputs, keras.layers.Flatten(name="flat")(x))

    old = build(keras.layers.BatchNormalization)
    old.get_layer("bn").moving_variance.assign(np.full(4, 7.0, "float32"))
    path = tmp_path / "old.weights.h5"
    old.save_weights(path)
    new = build(batchnorm.BatchNormalization)
    new.load_weights(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.get_layer("bn").moving_variance), 7.0)


def test_recalibration_averages_each_layers_statistics_over_the_images_as_they_are():
    """The moving statistics become the average of the batch statistics of the images,
    unaugmented, unmixed and without dropout, each batch weighed by its images; nothing
    else changes, a frozen layer keeps its statistics and the layers keep their momentum."""
    from tinylib.augment import augmentation
    from tinylib.mixing import MixUpCutMix

    keras.utils.set_random_seed(0)
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, batchnorm.BatchNormalization(name="inner_bn")(inner_in), name="backbone")
    images_in = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(images_in)
    x = augmentation(name="augmentation", seed=1)(x)
    x = MixUpCutMix(mixup=0.2, cutmix=1.0, seed=2)(x)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    x = batchnorm.BatchNormalization(name="bn", momentum=0.9)(x)
    x = inner(x)
    frozen = batchnorm.BatchNormalization(name="frozen")
    frozen.trainable = False
    x = frozen(x)
    model = keras.Model(images_in, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile("adam", "categorical_crossentropy")  # as evaluate.load_trained_model's: no variable is added
    images = np.random.default_rng(0).integers(0, 256, (250, 8, 8, 3)).astype("uint8")
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}

    assert batchnorm.recalibrate(model, images, batch_size=100) == 3  # 83, 84, 83: none left with a few

    conv = keras.Model(images_in, model.get_layer("conv").output)  # inference: no augmentation, mixing, dropout
    edges = (0, 83, 167, 250)
    batches = [np.asarray(conv(images[a:b].astype("float32"))) for a, b in zip(edges[:-1], edges[1:])]
    weights = [83, 84, 83]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, np.average([b.mean((0, 1, 2)) for b in batches], 0, weights),
                               atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance, np.average([b.var((0, 1, 2)) for b in batches], 0, weights),
                               rtol=1e-3)
    assert bn.momentum == 0.9 and model.get_layer("backbone").get_layer("inner_bn").momentum == 0.99
    assert model.get_layer("dropout").rate == 0.5 and not model.get_layer("augmentation").paused
    after = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    assert set(after) == set(before)
    changed = {path for path, value in before.items() if not np.array_equal(value, after[path])}
    assert changed == {"bn/moving_mean", "bn/moving_variance",  # the nested model's too; not the frozen one's
                       "inner_bn/moving_mean", "inner_bn/moving_variance"}, changed


def test_recalibration_refuses_too_few_images_and_gives_everything_back_after_a_failure():
    """Interrupted after a batch (a Ctrl-C in a notebook), the model keeps the statistics,
    momentum, paused flags and dropout rates it came with; layers it cannot pause are refused."""
    from tinylib.augment import augmentation

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, batchnorm.BatchNormalization(name="bn")(inputs))
    for few in (0, 1):
        with pytest.raises(ValueError, match="at least two images"):
            batchnorm.recalibrate(model, np.zeros((few, 4, 4, 3), "uint8"))
    with pytest.raises(ValueError, match="batch_size"):
        batchnorm.recalibrate(model, np.zeros((4, 4, 4, 3), "uint8"), batch_size=1)
    with pytest.raises(Exception):
        batchnorm.recalibrate(model, np.zeros((2, 5, 5, 3), "uint8"))  # not the model's shape
    assert model.get_layer("bn").momentum == 0.99

    x = augmentation(name="augmentation", seed=1)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dropout(0.5, name="dropout")(batchnorm.BatchNormalization(name="bn", momentum=0.9)(x))
    model = keras.Model(inputs, x)
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    mean_before = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean)

    def interrupt(done, total):
        assert model.get_layer("augmentation").paused and model.get_layer("dropout").rate == 0
        raise KeyboardInterrupt

    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3)).astype("uint8")
    with pytest.raises(KeyboardInterrupt):
        batchnorm.recalibrate(model, images, batch_size=10, progress=interrupt)
    for was, now in zip(before, model.weights):
        np.testing.assert_array_equal(was, keras.ops.convert_to_numpy(now))
    assert model.get_layer("bn").momentum == 0.9 and model.get_layer("dropout").rate == 0.5
    assert not model.get_layer("augmentation").paused
    batchnorm.recalibrate(model, images, batch_size=10)  # and the same call, let run, does change them
    assert not np.allclose(mean_before, keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean))

    for unpausable in (keras.layers.GaussianNoise(0.1), keras.layers.MixUp(), keras.layers.Solarization()):
        noisy = keras.Model(inputs, unpausable(batchnorm.BatchNormalization()(inputs)))
        with pytest.raises(ValueError, match="cannot pause layer"):
            batchnorm.recalibrate(noisy, np.zeros((2, 4, 4, 3), "uint8"))


@pytest.mark.skipif(not TENSORFLOW, reason="the fused kernel is TensorFlow's")
def test_training_with_the_fused_batchnorm_learns_what_keras_batchnorm_learns(monkeypatch):
    """A speed setting only: a few steps of Model 4's training (BatchNorm after every layer
    but the last), the same data and seed, end at the same weights, moving statistics and
    losses both ways, to float noise. Not the biases of the layers BatchNorm follows: their
    gradient is zero but for rounding (BatchNorm subtracts the batch's mean, bias and all),
    and Adam divides a gradient by its own size, so they move by rounding noise made the
    size of the learning rate, without changing what the network computes."""
    if environment.gpu_available():
        pytest.skip("a GPU multiplies in TF32 and compiles with XLA by default: not float32's noise")
    from speed_settings import train_each_way, weights_of

    (fused_model, loss_fused), (own_model, loss_keras) = train_each_way(
        monkeypatch, batchnorm.FUSED_ENV, ("1", "0"),
        lambda: models.build_model("model4", num_classes=5, input_shape=(32, 32, 3), learning_rate=1e-3))
    before_norm = {layer.bias.path for layer, after in zip(fused_model.layers, fused_model.layers[1:])
                   if isinstance(after, keras.layers.BatchNormalization) and getattr(layer, "bias", None) is not None}
    fused, own = weights_of(fused_model, before_norm), weights_of(own_model, before_norm)
    assert len(before_norm) == 4  # the three convolutions' and the dense layer's
    assert fused.keys() == own.keys() and any("moving_variance" in name for name in fused)
    np.testing.assert_allclose(loss_fused, loss_keras, rtol=1e-4)
    for name in fused:  # a moving mean averages its input, the noisy biases too
        atol = 1e-3 if name.endswith("moving_mean") else 1e-4
        np.testing.assert_allclose(fused[name], own[name], rtol=1e-3, atol=atol, err_msg=name)
