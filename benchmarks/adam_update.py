"""Adam's update alone, Keras' way and through TensorFlow's fused kernel, side by side.

For each model, one optimizer step over that model's trainable variables with fixed
gradients, compiled as a training step is, timed both ways in turn in one process
(``tinylib.fused_adam``: the same update in one pass over each variable instead of a
dozen); it prints milliseconds per update, the ratio, and how far the two ways' weights
are apart after the timed steps (float rounding only).

    python benchmarks/adam_update.py [--models model2,model4] [--steps 30]

TensorFlow only (JAX compiles Keras' update into one loop already). Keep the machine
quiet: the figures are ratios within this one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib import fused_adam, models  # noqa: E402


def _model_variables(name: str) -> list:
    extra = {"weights": None} if name == "model5" else {}
    return models.build_model(name, num_classes=200, **extra).trainable_variables


def _compiled_update(optimizer, gradients, variables):
    """One update as a compiled function with no arguments (the variables are captured:
    passed as arguments, TensorFlow would take them for tensors)."""
    import tensorflow as tf

    return tf.function(lambda: optimizer.apply(gradients, variables))


def time_updates(name: str, steps: int, rounds: int = 3) -> dict:
    """Milliseconds per update each way (the fastest of ``rounds`` rounds, taken in turn)
    and the largest difference between the two ways' weights afterwards."""
    import tensorflow as tf

    start = [keras.ops.convert_to_numpy(v) for v in _model_variables(name)]
    rng = np.random.default_rng(0)
    gradients = [tf.constant(rng.standard_normal(w.shape).astype("float32") * 1e-3) for w in start]
    ways = {}
    for way, optimizer_class in (("keras", keras.optimizers.Adam), ("fused", fused_adam.Adam)):
        variables = [keras.Variable(w) for w in start]
        optimizer = optimizer_class(1e-4)
        optimizer.build(variables)
        step = _compiled_update(optimizer, gradients, variables)
        step()  # traces
        ways[way] = (step, variables)
    seconds = {way: float("inf") for way in ways}
    for _ in range(rounds):
        for way, (step, variables) in ways.items():
            begin = time.perf_counter()
            for _ in range(steps):
                step()
            float(keras.ops.convert_to_numpy(variables[0][(0,) * len(variables[0].shape)]))  # waits for it
            seconds[way] = min(seconds[way], (time.perf_counter() - begin) / steps)
    apart = max(float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))
                for a, b in zip(ways["keras"][1], ways["fused"][1]))
    return {"parameters": sum(int(np.prod(w.shape)) for w in start), "apart": apart,
            **{f"{way}_ms": 1e3 * s for way, s in seconds.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="model2,model4")
    parser.add_argument("--steps", type=int, default=30, help="updates per timing")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        sys.exit("This compares TensorFlow's fused kernel with Keras' update: run it with KERAS_BACKEND=tensorflow.")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    setting = os.environ.pop(fused_adam.FUSED_ENV, None)  # the fused way is what is compared
    try:
        return _print_rows(args)
    finally:
        if setting is not None:
            os.environ[fused_adam.FUSED_ENV] = setting


def _print_rows(args) -> dict:
    print(f"{'model':8s} {'parameters':>12s} {'Keras ms':>9s} {'fused ms':>9s} {'speed-up':>9s}  weights apart")
    rows = {}
    for name in [m for m in args.models.split(",") if m]:
        row = rows[name] = time_updates(name, args.steps)
        print(f"{name:8s} {row['parameters']:>12,d} {row['keras_ms']:9.2f} {row['fused_ms']:9.2f} "
              f"{row['keras_ms'] / row['fused_ms']:8.2f}x  {row['apart']:.1e}")
    return rows


if __name__ == "__main__":
    main()
