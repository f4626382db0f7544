"""Keras' BatchNormalization, computed by TensorFlow's fused kernel where it can be.

Keras 3 normalises a batch with separate operations (moments, then
``tf.nn.batch_normalization``), each a pass over the activations in float32.
TensorFlow's ``FusedBatchNormV3`` does the statistics, the normalisation and its
gradient in one kernel each (oneDNN's on a CPU, cuDNN's on a GPU), and reads bfloat16
activations directly under mixed precision. On the 2-core CPU a Model 4 training
step spends about 40% of its time in BatchNorm the Keras way
(``benchmarks/model_throughput.py --per-layer``); the fused kernel is the same
arithmetic, faster.

The layer is Keras' own, class name and weights included (summaries, checkpoints and
ImageNet weights read the same); only the training call on TensorFlow differs, and
only for the inputs the fused kernel takes: 4-D channels-last activations, no mask, no
renormalisation. Everything else, JAX included, is Keras' computation.
"""

from __future__ import annotations

import contextlib

import keras

from tinylib.recalibration import BATCH_SIZE  # recalibration imports no model module: no cycle

FUSED_ENV = "TINYLIB_FUSED_BATCHNORM"


def fused_available() -> bool:
    """Whether training calls go through TensorFlow's fused kernel: on TensorFlow,
    unless ``TINYLIB_FUSED_BATCHNORM=0`` (for side-by-side timings)."""
    from tinylib import environment

    return environment.fused_kernel_enabled(FUSED_ENV)


@keras.saving.register_keras_serializable(package="tinylib")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step uses the fused kernel
    on TensorFlow. Same weights, same moving-average update, same outputs (to float
    rounding): the kernel's unbiased variance is scaled back to Keras' biased one."""

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and not self.renorm and len(inputs.shape) == 4
                and self.axis in (-1, 3, [3], [-1]) and fused_available())

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, epsilon=self.epsilon, is_training=True, data_format="NHWC")
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 2.0)  # unbiased -> Keras' biased
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)


def fuse(model: keras.Model) -> keras.Model:
    """``model`` with each Keras BatchNormalization layer replaced by this module's, same
    names and weights: for models built elsewhere (``keras.applications.ResNet50``)."""
    if not any(type(layer) is keras.layers.BatchNormalization for layer in model.layers):
        return model

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fused = keras.models.clone_model(model, clone_function=clone)
    fused.set_weights(model.get_weights())
    return fused


def recalibrate(model: keras.Model, images, batch_size: int = BATCH_SIZE, progress=None) -> int:
    """Re-estimate every trainable BatchNorm layer's moving mean and variance over ``images``
    as they are, without the model's augmentation, MixUp or dropout: returns the batches used.

    Training updates those statistics on the *augmented* images (and, at momentum m, over
    about the last 1 / (1 - m) batches), while validation feeds clean images: the layers
    then normalise with statistics of images unlike the ones they see. This replaces them
    with the average of the batch statistics of ``images`` (training images, unaugmented:
    no validation image is used), each batch weighed by its images: the "precise
    BatchNorm" of Wu and Johnson (2021). Like training's moving average, it averages each
    batch's own variance, which leaves out how the batches' means vary: the larger the
    batch, the nearer the images' whole variance. The images are split into batches of
    near-equal size (at most ``batch_size``), so no batch is left with a few images.
    No trained weight changes; frozen layers (``trainable=False``, as in a fine-tuned
    backbone) keep their statistics; interrupted, the model gets its statistics back.
    ``images`` are what the model takes (uint8 or floats, 0-255).
    """
    if len(images) < 2:
        raise ValueError(f"recalibrate needs at least two images to re-estimate a variance over, got {len(images)}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (a batch of one image has no variance), got {batch_size}")
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    statistics = [(variable, keras.ops.convert_to_numpy(variable))
                  for layer in layers for variable in (layer.moving_mean, layer.moving_variance)]
    splits = -(-len(images) // batch_size)
    edges = [round(i * len(images) / splits) for i in range(splits + 1)]
    seen = 0
    try:
        with _training_only_layers_paused(model):
            for start, stop in zip(edges[:-1], edges[1:]):
                batch = keras.ops.convert_to_tensor(images[start:stop], dtype="float32")
                seen += stop - start
                for layer in layers:
                    layer.momentum = 1.0 - (stop - start) / seen  # the average over every image so far
                model(batch, training=True)
                if progress is not None:
                    progress(seen, len(images))
    except BaseException:
        for variable, value in statistics:  # no half-averaged statistics left behind
            variable.assign(value)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return splits


# Keras' own layers that act only in training and have no pause: recalibrate refuses them.
_UNPAUSABLE_PREFIXES = ("Random", "Gaussian", "AlphaDropout")
_UNPAUSABLE_NAMES = frozenset({"MixUp", "CutMix", "RandAugment", "AugMix", "Solarization"})


@contextlib.contextmanager
def _training_only_layers_paused(model: keras.Model):
    """Inside: a training-mode call of ``model`` leaves the images as they are (tinylib's
    augmentation and MixUp/CutMix paused, dropout at rate 0), so BatchNorm sees them so."""
    from tinylib.augment import TrainingOnlyAugmentation
    from tinylib.mixing import MixUpCutMix

    changed = []
    try:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, (TrainingOnlyAugmentation, MixUpCutMix)):
                changed.append((layer, "paused", layer.paused))
                layer.paused = True
            elif isinstance(layer, keras.layers.Dropout):
                changed.append((layer, "rate", layer.rate))
                layer.rate = 0.0
            elif type(layer).__name__.startswith(_UNPAUSABLE_PREFIXES) or type(layer).__name__ in _UNPAUSABLE_NAMES:
                raise ValueError(f"recalibrate cannot pause layer {layer.name!r} ({type(layer).__name__}), which "
                                 "acts only in training: give it the model without it (evaluate.load_trained_model "
                                 "builds a run's model without its augmentation)")
        yield
    finally:
        for layer, name, value in changed:
            setattr(layer, name, value)
