"""MixUp and CutMix batches for ``fit``: Keras' own layers, applied as batches are served.

Both mix the *labels* as well as the images (MixUp blends two images and their
one-hot labels with one weight; CutMix pastes a box of one image into another and
weighs the labels by the box's area), so they cannot live inside the model the way
the geometric augmentation does: they act on the batches the model is fed. The
model's own augmentation (crop, flip) then runs on the mixed images, on the device.
"""

from __future__ import annotations

import keras
import numpy as np

from tinylib.batches import ShuffledBatches

__all__ = ["MixedBatches"]


class MixedBatches(ShuffledBatches):
    """Shuffled training batches with MixUp and/or CutMix (one of the two per batch).

    ``images`` are uint8 (N, H, W, 3) as loaded, ``labels`` one-hot float32 (N, C).
    With both ``mixup`` and ``cutmix`` on, each batch gets CutMix with probability
    ``cutmix_probability``, else MixUp, as in timm's recipe. The order, and which
    batch gets which mix, is drawn from ``seed`` and the epoch number (see
    ``tinylib.batches``), so a resumed run sees the batches it would have seen.
    """

    def __init__(self, images, labels, batch_size, mixup=0.0, cutmix=0.0, cutmix_probability=0.5,
                 seed=0, epoch=0, start=0, **kwargs):
        if not (mixup or cutmix):
            raise ValueError("MixedBatches needs mixup > 0 or cutmix > 0 (else use ShuffledBatches)")
        self.cutmix_probability = float(cutmix_probability) if mixup and cutmix else float(bool(cutmix))
        # float32 whatever the global policy: they mix host batches of float32 pixels and
        # labels, before the model (and its mixed precision) sees them.
        self.mixup = keras.layers.MixUp(alpha=mixup, seed=seed, dtype="float32") if mixup else None
        self.cutmix = keras.layers.CutMix(factor=cutmix, seed=seed, dtype="float32") if cutmix else None
        super().__init__(images, labels, batch_size, seed=seed, epoch=epoch, start=start, **kwargs)

    def shuffled(self, epoch: int) -> None:
        # Which mix each batch gets: from its own stream, so the order matches ShuffledBatches'.
        self.choice = np.random.default_rng([self.seed, epoch, 1]).random(self.batches_per_epoch)

    def __getitem__(self, index):
        batch_number = self.start + index
        for layer in (self.mixup, self.cutmix):  # each batch's draws depend on (seed, epoch, batch) alone
            if layer is not None:
                layer.generator.state.assign(np.asarray([self.seed, self.epoch * 1_000_003 + batch_number],
                                                        dtype=layer.generator.state.dtype))
        rows = self.rows(index)
        batch = {"images": np.asarray(self.images[rows], dtype="float32"), "labels": self.labels[rows]}
        if self.choice[batch_number] < self.cutmix_probability:
            return self._cut_mix(batch)
        mixed = self.mixup(batch, training=True)
        return (keras.ops.convert_to_numpy(mixed["images"]),
                keras.ops.convert_to_numpy(mixed["labels"]).astype("float32"))

    def _cut_mix(self, batch):
        """Keras' CutMix boxes, with each label weighed by the pixels its box really covers.

        Keras weighs the labels by the box's real-valued area, while the pasted box
        covers whole pixels: on 64x64 images that is off by up to a few percent. The
        exact share is the mean of the pixel mask, which its transformation exposes.
        """
        layer = self.cutmix
        transformation = layer.get_random_transformation(batch, training=True)
        images = layer.transform_images(batch["images"], transformation, training=True)
        mask = keras.ops.convert_to_numpy(transformation["batch_masks"]).astype("float32")
        pasted = mask.mean(axis=(1, 2, 3))[:, None]
        order = keras.ops.convert_to_numpy(transformation["permutation_order"])
        labels = (1.0 - pasted) * batch["labels"] + pasted * batch["labels"][order]
        return keras.ops.convert_to_numpy(images), labels.astype("float32")
