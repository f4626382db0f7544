"""Seconds to the end of the first training batch, with and without the optimizer built first.

Keras' TensorFlow trainer creates the optimizer's variables (Adam's moments) while it
traces the training step, and TensorFlow traces a step that created variables a second
time. ``train.build_optimizer``, which ``train.fit`` calls, creates them before the first
step, so the step is traced once. This prints, for each model, the time from ``fit`` to
the end of its first batch both ways, and their ratio:

    python benchmarks/first_step.py                      # Models 2 and 5, batch 8
    python benchmarks/first_step.py --models model1,model4 --rounds 3

Each variant gets a new model in a cleared Keras session, in turns, ``--rounds`` times,
keeping its fastest. Keep the machine quiet while it runs: the figures are ratios within
this one run. On JAX, Keras builds the optimizer before tracing on its own: both columns
then measure the same thing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib import models, train  # noqa: E402
from tinylib.augment import augmentation  # noqa: E402
from tinylib.environment import device_name  # noqa: E402

VARIANTS = ("traced by Keras", "built first")


class _FirstBatch(keras.callbacks.Callback):
    def __init__(self, start: float):
        super().__init__()
        self.start, self.seconds = start, None

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.start


def first_batch_seconds(model_name: str, variant: str, batch: int, classes: int = 5) -> float:
    """Build ``model_name`` afresh and time ``fit`` to the end of its first batch."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    options = {"weights": None} if model_name == "model5" else {}
    model = models.build_model(model_name, num_classes=classes, augmentation=augmentation(seed=0), **options)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * batch, 64, 64, 3), dtype=np.uint8)
    labels = keras.utils.to_categorical(rng.integers(0, classes, 2 * batch), classes)
    start = time.perf_counter()
    if variant == "built first":
        train.build_optimizer(model)
    clock = _FirstBatch(start)
    model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    return clock.seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="model2,model5")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="turns per variant; each keeps its fastest")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    print(f"{keras.backend.backend()} on {device_name()}, batch {args.batch}, fastest of {args.rounds} rounds",
          flush=True)
    best = {(m, v): float("inf") for m in names for v in VARIANTS}
    for _ in range(args.rounds):
        for name in names:
            for variant in VARIANTS:
                best[name, variant] = min(best[name, variant], first_batch_seconds(name, variant, args.batch))
    print(f"{'model':8s} {VARIANTS[0]:>16s} {VARIANTS[1]:>12s}  ratio")
    for name in names:
        traced, built = best[name, VARIANTS[0]], best[name, VARIANTS[1]]
        print(f"{name:8s} {traced:15.1f}s {built:11.1f}s  {traced / built:5.2f}")
    return best


if __name__ == "__main__":
    main()
