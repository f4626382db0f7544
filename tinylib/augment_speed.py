"""What the study's augmentation costs: ImageDataGenerator against tinylib's layer, timed on
the same images with the same settings (chapter 4 and ``benchmarks/augment_throughput.py``).

Each pipeline is a function from a batch of uint8 images to the augmented batch as NumPy (so a
timing includes the device's sync). The rates are interleaved rounds' best, after a warm-up
batch each: other work sharing the CPU slows a round, not the ratio.
"""

from __future__ import annotations

import time

import numpy as np

from tinylib.augment import STUDY_AUGMENTATION, augmentation, image_data_generator_class


def study_generator():
    """The study's generator: ``ImageDataGenerator(rescale=1/255, **STUDY_AUGMENTATION)``."""
    return image_data_generator_class()(rescale=1 / 255, **STUDY_AUGMENTATION)


def generator_flow(images: np.ndarray, batch: int):
    """The study's generator over decoded images in memory (``flow``): the augmentation alone,
    without the JPEG decoding ``flow_from_directory`` adds every epoch."""
    flow = study_generator().flow(np.asarray(images, dtype="float32"), np.zeros(len(images), "int32"),
                                  batch_size=batch, shuffle=False, seed=0)
    return lambda _: next(flow)[0]


def model_head(seed: int = 0):
    """Rescaling and the study's augmentation: the head every model trains with."""
    import keras

    return keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Rescaling(1 / 255), augmentation(seed=seed)])


def layer_eager(head=None):
    """tinylib's layer called eagerly, one batch a call (slower than inside ``fit``'s compiled step)."""
    import keras

    head = model_head() if head is None else head
    return lambda x: keras.ops.convert_to_numpy(head(x, training=True))


def layer_compiled(head=None):
    """tinylib's layer compiled the way ``Model.fit`` compiles it, on TensorFlow and JAX (tinylib's
    backends; on another, it is called eagerly)."""
    import keras

    head = model_head() if head is None else head
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda x: head(x, training=True))
        return lambda x: step(x).numpy()
    if backend == "jax":
        import jax

        @jax.jit
        def stateless_step(state, x):
            return head.stateless_call([], state, x, training=True)

        state = [v.value for v in head.non_trainable_variables]

        def run(x):
            nonlocal state
            out, state = stateless_step(state, x)
            return np.asarray(out)

        return run
    return layer_eager(head)


def rate(pipeline, images: np.ndarray, batch: int) -> float:
    """Images per second over one pass through ``images``' full batches."""
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    if not batches:
        raise ValueError(f"{len(images)} images make no batch of {batch}: time at least one whole batch")
    start = time.perf_counter()
    for part in batches:
        out = pipeline(part)
        if out.shape != part.shape:
            raise ValueError(f"a pipeline gave {out.shape} for a batch of {part.shape}")
    return len(batches) * batch / (time.perf_counter() - start)


def best_rates(pipelines: dict, images: np.ndarray, batch: int, rounds: int = 3) -> dict:
    """{name: the best images/s of ``rounds`` interleaved rounds}, after one warm-up batch each."""
    for pipeline in pipelines.values():
        pipeline(images[:batch])
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            best[name] = max(best[name], rate(pipeline, images, batch))
    return best


def epoch_lines(rates: dict, images_per_epoch: int) -> str:
    """Each rate as images/s and as the seconds it would take to augment one epoch."""
    width = max(map(len, rates))
    return "\n".join(f"  {name:{width}s} {value:9,.0f} images/s -> {images_per_epoch / value:8.1f} s an epoch"
                     for name, value in rates.items())
