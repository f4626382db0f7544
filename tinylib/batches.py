"""Training batches in an order fixed by (seed, epoch), so a run can stop anywhere and resume.

Keras shuffles arrays with its own random state, which a new process cannot
recreate: a run killed in the middle of an epoch could only start that epoch again.
Here the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, and a
``ShuffledBatches`` can start part way through an epoch (``start``), so a run resumed
after batch ``k`` is fed exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math

import keras
import numpy as np

__all__ = ["ShuffledBatches", "epoch_order", "steps_per_epoch"]


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """The optimizer steps of one epoch: its batches, the last one partly filled."""
    return max(1, math.ceil(train_images / batch_size))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` training images in ``epoch``: a permutation from (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class ShuffledBatches(keras.utils.PyDataset):
    """One epoch's batches of ``images`` (uint8, as loaded) and one-hot ``labels``.

    ``epoch`` picks the order (a permutation from ``(seed, epoch)``) and ``start`` the
    batch to begin at, for an epoch resumed in the middle.  Each batch depends on
    ``(seed, epoch, batch)`` alone, never on how often Keras called the dataset, so
    ``tinylib.train`` builds one per epoch.
    """

    def __init__(self, images, labels, batch_size, seed=0, epoch=0, start=0, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels = images, np.asarray(labels, dtype="float32")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        if not len(self.images):
            raise ValueError("no images to make batches of")
        self.batches_per_epoch = steps_per_epoch(len(self.images), self.batch_size)
        if not 0 <= start < self.batches_per_epoch:
            raise ValueError(f"start must be in [0, {self.batches_per_epoch}), got {start}")
        self.start = int(start)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` next (its batches from ``start`` on)."""
        self.epoch = int(epoch)
        self.order = epoch_order(len(self.images), self.seed, self.epoch)
        self.shuffled(self.epoch)

    def shuffled(self, epoch: int) -> None:
        """Hook for subclasses that draw more per epoch (MixUp/CutMix choices)."""

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def rows(self, index: int) -> np.ndarray:
        """The rows of batch ``index`` of this dataset, in the epoch's random order.

        The order within a batch is random too, not sorted: the images are stored class by
        class, so a sorted batch would come ordered by label, and whatever pairs positions
        (MixUp/CutMix mix each image with the one at the mirrored position) would pair
        the first classes with the last, not images at random."""
        batch = self.start + index
        return self.order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def __getitem__(self, index):
        rows = self.rows(index)
        ascending = np.argsort(rows, kind="stable")  # read in storage order (faster from a memory map)
        images = np.empty((len(rows), *self.images.shape[1:]), dtype=self.images.dtype)
        images[ascending] = self.images[rows[ascending]]
        return images, self.labels[rows]

    def on_epoch_end(self):
        """Nothing: Keras calls this at moments that are not epoch ends (when an iterator is
        reset), so a dataset serves one epoch, and ``fit`` gets a new one for the next."""
