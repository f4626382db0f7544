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


import keras

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


def recalibrate(model: keras.Model, images, batch_size: int = 256, progress=None) -> int:
    """Re-estimate every trainable BatchNorm layer's moving mean and variance over ``images``
    as they are, without the model's augmentation or MixUp: returns the batches used.

    Training updates those statistics on the *augmented* images (and, at momentum 0.99,
    over about the last hundred batches), while validation feeds clean images: the layers
    then normalise with statistics of images unlike the ones they see. This replaces them
    with the average of the batch statistics of ``images`` (training images, unaugmented:
    no validation image is used), the "precise BatchNorm" of Wu and Johnson (2021). Only
    the moving statistics change; frozen layers (``trainable=False``, as in a fine-tuned
    backbone) keep theirs. ``images`` are what the model takes (uint8 or floats, 0-255).
    """
    layers = [layer for layer in _all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    plain = _without_training_only_layers(model)
    momenta = [layer.momentum for layer in layers]
    batches = 0
    try:
        for start in range(0, len(images), batch_size):
            batches += 1
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / batches  # the running average of every batch so far
            batch = keras.ops.convert_to_tensor(images[start:start + batch_size], dtype="float32")
            plain(batch, training=True)
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return batches


def _all_layers(model: keras.Model) -> list:
    """Every layer of ``model``, those of the models nested in it included (ResNet50's backbone)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def _without_training_only_layers(model: keras.Model) -> keras.Model:
    """``model`` sharing every layer (and so every variable) of its own, with the layers that
    act only in training (augmentation, MixUp/CutMix) left out: a training-mode call then
    normalises the images as they are."""
    from tinylib.augment import TrainingOnlyAugmentation
    from tinylib.mixing import MixUpCutMix

    if not any(isinstance(layer, (TrainingOnlyAugmentation, MixUpCutMix)) for layer in model.layers):
        return model
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError("recalibrate needs a functional model to leave its augmentation out of")

    def shared(layer):
        if isinstance(layer, (TrainingOnlyAugmentation, MixUpCutMix)):
            return keras.layers.Identity(name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=shared)
