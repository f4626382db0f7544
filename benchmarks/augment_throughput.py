"""Augmentation throughput: tinylib's one-pass layer vs the seed's ImageDataGenerator.

Both pipelines read the same uint8 images (N, 64, 64, 3) from NumPy, rescale
them to [0, 1] and apply rotation 20 deg, shift 0.2, shear, zoom 0.2,
brightness x[0.8, 1.2] and horizontal flips with nearest fill, and both hand
back NumPy batches (so the tinylib timing includes the device sync).

Shear: tinylib's ``shear=0.2`` is a shear *factor* (tan of the angle);
ImageDataGenerator's ``shear_range`` is in degrees, so it gets
``degrees(atan(0.2))`` = 11.3 degrees, the same maximum shear.

    python benchmarks/augment_throughput.py [--images 2048] [--batch 128]

Images: the first N training images of Tiny ImageNet when ``TINYLIB_DATA``
is set and ``tinylib.data`` can load them; random uint8 images otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib.augment import augmentation  # noqa: E402

ROTATION, SHIFT, SHEAR, ZOOM, BRIGHTNESS = 20, 0.2, 0.2, 0.2, (0.8, 1.2)


def load_images(n):
    """(images, description): real Tiny ImageNet if available, else random."""
    if os.environ.get("TINYLIB_DATA"):
        try:
            from tinylib import data

            train = data.load().train
            images = np.asarray(train.images[:n])
            if len(images) == n:
                return images, f"{n} Tiny ImageNet train images (TINYLIB_DATA)"
            reason = f"only {len(images)} images available"
        except Exception as error:  # any failure: fall back, but say why
            reason = f"{type(error).__name__}: {error}"
        print(f"note: could not use real images ({reason}); using random ones")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    return images, f"{n} random uint8 images (set TINYLIB_DATA for real ones)"


def image_data_generator_class():
    """The legacy generator: public in Keras 2, only under keras.src in Keras 3."""
    try:
        from keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


def seed_pipeline(images, batch):
    """The seed's ImageDataGenerator(...).flow(x, y, batch_size)."""
    generator = image_data_generator_class()(
        rescale=1 / 255,
        rotation_range=ROTATION,
        width_shift_range=SHIFT,
        height_shift_range=SHIFT,
        shear_range=math.degrees(math.atan(SHEAR)),
        zoom_range=ZOOM,
        brightness_range=BRIGHTNESS,
        horizontal_flip=True,
        fill_mode="nearest",
    )
    labels = np.zeros(len(images), dtype="int32")
    flow = generator.flow(images, labels, batch_size=batch, shuffle=False, seed=0)
    return lambda _: next(flow)[0]


def tinylib_layer():
    """Rescaling + augmentation, exactly the model head used in training."""
    rescale = keras.layers.Rescaling(1 / 255)
    augment = augmentation(
        rotation=ROTATION, shift=SHIFT, shear=SHEAR, zoom=ZOOM,
        brightness=BRIGHTNESS, flip=True, fill_mode="nearest", seed=0,
    )
    head = keras.Sequential([keras.Input((64, 64, 3)), rescale, augment])
    return head


def tinylib_eager(head):
    return lambda x: keras.ops.convert_to_numpy(head(x, training=True))


def tinylib_compiled(head):
    """The head compiled the way model.fit compiles it, per backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda x: head(x, training=True))
        return lambda x: step(x).numpy()
    if backend == "jax":
        import jax

        @jax.jit
        def step(state, x):
            return head.stateless_call([], state, x, training=True)

        state = [v.value for v in head.non_trainable_variables]

        def run(x):
            nonlocal state
            out, state = step(state, x)
            return np.asarray(out)

        return run
    return tinylib_eager(head)


def throughput(run, images, batch):
    """Images per second over one pass through all full batches."""
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    start = time.perf_counter()
    for b in batches:
        out = run(b)
        assert out.shape == b.shape
    return len(batches) * batch / (time.perf_counter() - start)


def best_of(pipelines, images, batch, rounds):
    """Best rate per pipeline over interleaved rounds, after one warm-up batch.

    Interleaving and taking the best keeps the ratio fair when other work
    shares the CPU.
    """
    for run in pipelines.values():
        run(images[:batch])
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(rounds):
        for name, run in pipelines.items():
            best[name] = max(best[name], throughput(run, images, batch))
    return best


def describe_device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(str(d) for d in jax.devices())
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    else:
        devices = "?"
    return (
        f"keras {keras.__version__}, backend {backend}, devices [{devices}], "
        f"{os.cpu_count()} CPU cores"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    images, source = load_images(args.images)
    print(describe_device())
    print(f"images: {source}; batch {args.batch}; best of {args.rounds} rounds")

    head = tinylib_layer()
    pipelines = {
        "seed ImageDataGenerator.flow": seed_pipeline(images, args.batch),
        "tinylib layer, eager": tinylib_eager(head),
        "tinylib layer, compiled": tinylib_compiled(head),
    }
    results = best_of(pipelines, images, args.batch, args.rounds)
    baseline = results["seed ImageDataGenerator.flow"]
    for name, rate in results.items():
        print(f"{name:32s} {rate:10,.0f} images/s   {rate / baseline:6.1f}x seed")


if __name__ == "__main__":
    main()
