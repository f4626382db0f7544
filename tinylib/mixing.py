"""MixUp and CutMix inside the model's training step, compiled, on the device that trains.

Both mix the *labels* as well as the images: MixUp blends two images and their
one-hot labels with one weight; CutMix pastes a box of one image into another and
weighs the labels by the share of pixels each image keeps. Done batch by batch on
the host, they cost a round trip per batch between the host and the device; here
they are part of the compiled training step:

* :class:`MixUpCutMix`, a layer of the model (active only in training), mixes each
  image with the one at the mirrored position of the batch (``tinylib.batches`` serves
  each batch in the epoch's random order, never sorted by row and so by class, so the
  pairs are random: timm's choice), and keeps the share of
  every image that is still its own (one share per batch, as timm draws it);
* :class:`MixingClassifier`, the model, mixes the labels with that share in its
  training loss (``compute_loss``), in the same step; evaluation uses the labels
  as they are. Training accuracy is measured against each image's own label.

The model's own augmentation (crop, flip) runs first, image by image, and the mixing
after it, as timm orders them: a crop after CutMix would keep another part of the box
than the share the labels were weighed by. The draws
come from the layer's seed generator, whose state a run's checkpoints keep, so a
resumed run draws what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["MixUpCutMix", "MixingClassifier", "mix_labels", "mixed_batch"]


def mix_labels(labels, share):
    """Labels of a mixed batch: ``share`` of each image's own, the rest of its partner's."""
    labels = ops.convert_to_tensor(labels)
    share = ops.cast(share, labels.dtype)
    return share * labels + (1.0 - share) * ops.flip(labels, axis=0)


class MixUpCutMix(keras.layers.Layer):
    """MixUp and/or CutMix on a training batch: one of the two per batch.

    ``mixup`` and ``cutmix`` are the Beta parameters (alpha) of each, 0 for off. With
    both on, a batch gets CutMix with probability ``cutmix_probability``, else MixUp,
    as in timm's recipe. After a training call, ``share`` holds the share of each
    image that is its own (for :func:`mix_labels`). Outside training it does nothing.
    Computes in float32 whatever the global precision policy.
    """

    paused = False  # True: a training call leaves the images as they are (batchnorm.recalibrate)

    def __init__(self, mixup=0.0, cutmix=0.0, cutmix_probability=0.5, seed=None, **kwargs):
        kwargs.setdefault("name", "mixing")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not (mixup or cutmix):
            raise ValueError("MixUpCutMix needs mixup > 0 or cutmix > 0")
        if mixup < 0 or cutmix < 0 or not 0.0 <= cutmix_probability <= 1.0:
            raise ValueError(f"mixup and cutmix must be >= 0 and cutmix_probability in [0, 1], got "
                             f"{mixup}, {cutmix}, {cutmix_probability}")
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.cutmix_probability = float(cutmix_probability) if mixup and cutmix else float(bool(cutmix))
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # A non-trainable variable, like BatchNorm's statistics: written by the forward pass,
        # read by the loss in the same compiled step.
        self.share = self.add_weight(shape=(), initializer="ones", trainable=False, name="share")

    def call(self, images, training=False):
        if not training or self.paused:
            return images
        partners = ops.flip(images, axis=0)
        if self.mixup:
            weight = keras.random.beta((), self.mixup, self.mixup, seed=self.seed_generator)
            blended = weight * images + (1.0 - weight) * partners
        if self.cutmix:
            pasted, kept = self._cut(images, partners)
        if self.mixup and self.cutmix:
            use_cutmix = keras.random.uniform((), seed=self.seed_generator) < self.cutmix_probability
            mixed, share = ops.where(use_cutmix, pasted, blended), ops.where(use_cutmix, kept, weight)
        elif self.cutmix:
            mixed, share = pasted, kept
        else:
            mixed, share = blended, weight
        self.share.assign(ops.cast(share, self.share.dtype))
        return mixed

    def _cut(self, images, partners):
        """CutMix: a box of the partner pasted in; the share kept counts whole pixels.

        The box's area follows 1 - lambda with lambda ~ Beta(alpha, alpha) and its centre is
        uniform, clipped at the borders (Yun et al. 2019), so the share is counted
        from the pasted pixels themselves.
        """
        height, width = images.shape[1], images.shape[2]
        weight = keras.random.beta((), self.cutmix, self.cutmix, seed=self.seed_generator)
        ratio = ops.sqrt(1.0 - weight)
        half_h = ops.cast(height * ratio, "int32") // 2
        half_w = ops.cast(width * ratio, "int32") // 2
        centre_y = keras.random.randint((), 0, height, seed=self.seed_generator)
        centre_x = keras.random.randint((), 0, width, seed=self.seed_generator)
        rows = ops.arange(height, dtype="int32")[:, None]
        cols = ops.arange(width, dtype="int32")[None, :]
        inside = ((rows >= centre_y - half_h) & (rows < centre_y + half_h)
                  & (cols >= centre_x - half_w) & (cols < centre_x + half_w))
        mask = ops.cast(inside, images.dtype)[None, :, :, None]
        return images * (1.0 - mask) + partners * mask, 1.0 - ops.mean(mask)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mixup": self.mixup, "cutmix": self.cutmix,
                "cutmix_probability": self.cutmix_probability, "seed": self.seed}


class MixingClassifier(keras.Model):
    """A functional classifier with a :class:`MixUpCutMix` layer.

    Its training loss takes the labels mixed as the layer mixed the images in the same
    step; evaluation (``training=False``) takes them as they are.
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and y is not None:
            mixing = next(layer for layer in self.layers if isinstance(layer, MixUpCutMix))
            y = mix_labels(y, mixing.share)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)


def mixed_batch(images, labels, layer: MixUpCutMix):
    """One batch through ``layer`` as training mixes it: ``(images, labels)`` as NumPy arrays,
    images float in 0..255 as given, for a look at what the model is fed."""
    mixed = layer(ops.convert_to_tensor(images, dtype="float32"), training=True)
    return (ops.convert_to_numpy(mixed),
            ops.convert_to_numpy(mix_labels(ops.convert_to_tensor(labels, dtype="float32"), layer.share)))
