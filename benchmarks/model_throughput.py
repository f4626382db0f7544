"""Training throughput of every model: images per second at the full profile's batch size.

For each model it times training steps on in-memory images, with the in-model
augmentation and without it, and prints the device. It also times the input side
alone (slicing batches from memory and copying them to the device): when that is
many times faster than a training step, training is not input-bound, and the
difference between the two training figures is what augmentation costs on the device.
The modern recipe's MixUp/CutMix runs inside the compiled step (``tinylib.mixing``):
its cost is timed as the difference it makes to the first model's step. Each model's row gives its FLOPs per training image
(``tinylib.flops``) and the FLOP/s its step achieved without augmentation, so the distance to what the
hardware can do shows.

    python benchmarks/model_throughput.py [--models model1,resnet18] [--batch 128] [--steps 20]
    KERAS_BACKEND=jax python benchmarks/model_throughput.py        # on a GPU: mixed bfloat16

Images are random uint8 (speed does not depend on the pixels). Model 5 is built
with random weights (speed does not depend on them either); the ResNets at full width.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib import flops, models  # noqa: E402
from tinylib.augment import augmentation  # noqa: E402
from tinylib.profiles import PROFILES  # noqa: E402
from tinylib.environment import configure_precision, device_name  # noqa: E402

NUM_CLASSES = 200


def build(name, augment):
    extra = {"weights": None} if name == "model5" else {}
    return models.build_model(name, num_classes=NUM_CLASSES, augmentation=augmentation(seed=0) if augment else None,
                              **extra)


class _StepClock(keras.callbacks.Callback):
    """The time at the end of every training step, inside one ``fit``."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def time_training(model, images, labels, batch, steps, warmup):
    """Seconds per step over ``steps`` steps that follow ``warmup`` steps, in one ``fit``
    (a second ``fit`` call could retrace the step function and time the tracing)."""
    n = batch * (steps + warmup)
    clock = _StepClock()
    model.fit(images[:n], labels[:n], batch_size=batch, epochs=1, verbose=0, shuffle=False,
              callbacks=[clock])
    return (clock.ends[-1] - clock.ends[warmup - 1]) / steps


def time_input(images, labels, batch, steps):
    """Seconds per batch to gather a shuffled batch from memory and put it on the device."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        rows = np.sort(rng.choice(len(images), batch, replace=False))
        x = keras.ops.convert_to_tensor(images[rows].astype("float32"))
        y = keras.ops.convert_to_tensor(labels[rows])
        keras.ops.convert_to_numpy(keras.ops.sum(x)) + keras.ops.convert_to_numpy(keras.ops.sum(y))
    return (time.perf_counter() - start) / steps


def time_mixing(name, images, labels, batch, steps, warmup):
    """Seconds per step of ``name`` with the modern recipe's MixUp/CutMix layer, and without it."""
    from tinylib.recipes import RECIPES

    extra = {"weights": None} if name == "model5" else {}
    seconds = []
    for mixing in (RECIPES["modern"].mixing_layer(seed=0), None):
        keras.utils.clear_session()
        keras.utils.set_random_seed(0)
        model = models.build_model(name, num_classes=NUM_CLASSES, mixing=mixing, **extra)
        seconds.append(time_training(model, images, labels, batch, steps, warmup))
    return tuple(seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODELS), help="comma-separated (default: all)")
    parser.add_argument("--batch", type=int, default=PROFILES["full"].batch_size,
                        help="batch size (default: the full profile's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation), at least 1")
    parser.add_argument("--precision", default="auto", help="auto (mixed bfloat16 on a GPU) | float32 | ...")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--steps and --warmup must be at least 1 (the first step compiles)")

    policy = configure_precision(args.precision)
    batch, steps = args.batch, args.steps
    rng = np.random.default_rng(0)
    n = batch * (steps + args.warmup)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, n)]
    print(f"device: {device_name()}; backend {keras.backend.backend()}; dtype policy {policy}; "
          f"batch {batch}; {steps} timed steps after {args.warmup} warm-up steps", flush=True)
    feed = time_input(images, labels, batch, steps)
    print(f"input alone (gather a batch, copy it to the device): {feed * 1e3:.1f} ms/batch, "
          f"{batch / feed:,.0f} images/s", flush=True)
    first = models.normalize_name(args.models.split(",")[0])
    mixed, plain = time_mixing(first, images, labels, batch, steps, args.warmup)
    print(f"MixUp/CutMix inside the compiled step ({first}, no other augmentation): "
          f"{(mixed - plain) * 1e3:+.1f} ms/step ({mixed * 1e3:.1f} with, {plain * 1e3:.1f} without)", flush=True)
    print(f"{'model':10s} {'params':>12s} {'ms/step aug':>12s} {'ms/step no aug':>15s} "
          f"{'images/s aug':>13s} {'images/s no aug':>16s} {'step/input':>11s} {'GFLOP/image':>12s} "
          f"{'GFLOP/s':>9s}", flush=True)
    for name in args.models.split(","):
        name = models.normalize_name(name)
        results = {}
        for augment in (True, False):
            keras.utils.clear_session()
            keras.utils.set_random_seed(0)
            model = build(name, augment)
            results[augment] = time_training(model, images, labels, batch, steps, args.warmup)
            params, work = model.count_params(), flops.training_flops(model)
            del model
        aug, plain = results[True], results[False]
        print(f"{name:10s} {params:12,d} {aug * 1e3:12.1f} {plain * 1e3:15.1f} {batch / aug:13,.0f} "
              f"{batch / plain:16,.0f} {aug / feed:10.0f}x {work / 1e9:12.3f} {work * batch / plain / 1e9:9.1f}",
              flush=True)


if __name__ == "__main__":
    main()
