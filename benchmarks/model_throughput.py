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
    python benchmarks/model_throughput.py --models model2 --per-layer 12   # where the time goes
    python benchmarks/model_throughput.py --models model2 --per-layer 12 --precision float32,mixed_bfloat16 \\
        --no-mixing --save-layers book/results   # where bfloat16 pays, layer by layer (chapter 13)
    KERAS_BACKEND=jax python benchmarks/model_throughput.py        # on a GPU: mixed bfloat16

Each model's line reads ``MODEL: N img/s, G GFLOP/s, P% of this machine's float32 matmul
peak (M GFLOP/s)``, the peak measured in the same run (and the bfloat16 one where the
device has it): the training step as ``train_model`` runs it at full scale, then the
same model without augmentation.

Images are random uint8 (speed does not depend on the pixels). Model 5 is built
with random weights (speed does not depend on them either); the ResNets at full width.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib import flops, models, train  # noqa: E402
from tinylib.augment import augmentation  # noqa: E402
from tinylib.profiles import PROFILES  # noqa: E402
from tinylib.layer_times import LAYERS_FILE  # noqa: E402
from tinylib import environment  # noqa: E402
from tinylib.batches import ShuffledBatches  # noqa: E402
from tinylib.environment import configure_precision, device_name  # noqa: E402

NUM_CLASSES = 200


def build(name, augment):
    extra = {"weights": None} if name == "model5" else {}
    return models.build_model(name, num_classes=NUM_CLASSES, augmentation=augmentation(seed=0) if augment else None,
                              **extra)


class _StepClock(keras.callbacks.Callback):
    """The index and time of every training call's last step, inside one ``fit`` (with
    several steps per compiled call, Keras reports once per call, with the last index)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((batch, time.perf_counter()))


SETTINGS = {}  # --steps-per-execution, for time_training


def fresh_session():
    """``keras.utils.clear_session()``, keeping the dtype policy, which it resets to float32
    (without this, every model after the first was timed in float32)."""
    policy = keras.config.dtype_policy()
    keras.utils.clear_session()
    keras.config.set_dtype_policy(policy)


def time_training(model, images, labels, batch, steps, warmup):
    """Seconds per step over ``steps`` steps that follow ``warmup`` steps, in one ``fit``
    (a second ``fit`` call could retrace the step function and time the tracing)."""
    n = batch * (steps + warmup)
    clock = _StepClock()
    model.steps_per_execution = SETTINGS.get("steps_per_execution") or environment.steps_per_execution()
    if environment.jit_compile() is True:  # --jit-compile, or TINYLIB_JIT_COMPILE=1
        with warnings.catch_warnings():  # Keras warns where the model refuses; the error below says why
            warnings.simplefilter("ignore")
            model.jit_compile = True
        if not model.jit_compile:  # timed without XLA, it would be labelled with it
            refusing = sorted({layer.name for layer in model._flatten_layers() if not layer.supports_jit})
            why = (f"{', '.join(refusing)} run TensorFlow's fused image transform, which XLA has no kernel for"
                   if refusing else "Keras refuses it (op determinism is on, or this is a Mac's GPU)")
            raise ValueError(f"XLA cannot compile this model's step here: {why}")
    train.build_optimizer(model)  # as a run does: the step is traced once
    # Batches reach the model as in a run: gathered from uint8 arrays by tinylib.batches.
    model.fit(ShuffledBatches(images[:n], labels[:n], batch, seed=0), epochs=1, verbose=0, callbacks=[clock])
    # Keras numbers a call's end by its first step plus steps per call, even for a last, shorter call.
    ends = [(min(b, steps + warmup - 1), t) for b, t in clock.ends]
    first = next((b, t) for b, t in ends if b >= warmup - 1)
    last = ends[-1]
    if last[0] <= first[0]:
        raise ValueError(f"too few steps to time: {steps} after {warmup} warm-up steps, "
                         f"{model.steps_per_execution} per call")
    return (last[1] - first[1]) / (last[0] - first[0])


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
        fresh_session()
        keras.utils.set_random_seed(0)
        model = models.build_model(name, num_classes=NUM_CLASSES, mixing=mixing, **extra)
        seconds.append(time_training(model, images, labels, batch, steps, warmup))
    return tuple(seconds)


def peaks(size: int) -> dict:
    """This machine's matrix-product GFLOP/s through the backend: float32, and bfloat16
    where the device multiplies it natively (a GPU, a CPU with AVX512_BF16 or AMX)."""
    measured = {"float32": environment.matmul_peak("float32", size=size)}
    if environment.gpu_available() or environment.cpu_has_bfloat16():
        measured["bfloat16"] = environment.matmul_peak("bfloat16", size=size)
    return measured


def speed_line(label: str, seconds_per_step: float, batch: int, work: float, peak: dict) -> str:
    """``MODEL: N img/s, G GFLOP/s, P% of this machine's matmul peak (M GFLOP/s)``, the
    float32 peak first (the yardstick the issue sets), then the bfloat16 one where there is one."""
    rate = batch / seconds_per_step
    gflops = work * rate / 1e9
    parts = [f"{label}: {rate:,.0f} img/s, {gflops:,.0f} GFLOP/s, "
             f"{100 * gflops / peak['float32']:.0f}% of this machine's float32 matmul peak "
             f"({peak['float32']:,.0f} GFLOP/s)"]
    if "bfloat16" in peak:
        parts.append(f"{100 * gflops / peak['bfloat16']:.0f}% of its bfloat16 peak ({peak['bfloat16']:,.0f})")
    return "; ".join(parts)


def _flat_layers(model):
    """The layers that compute, nested models (Model 5's backbone) opened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def _fastest(run, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``run`` (traced first), each waited for."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def layer_times(model, batch: int, repeats: int = 3) -> list[dict]:
    """Seconds of each layer's forward and backward pass alone, on random inputs of
    its shape (TensorFlow): where a training step's time goes.

    The backward pass is the one a training step runs: the gradients of the layer's
    weights, and of its input only where a layer with weights comes before it in the
    model's order (``input_gradient``; right for a chain, and for the ResNets, whose
    branches all come after the stem): a step never differentiates the augmentation or
    the first convolution's input.

    Timed alone, a layer needs a loss to differentiate: a float32 sum of its output, whose
    gradient fills a tensor of the output's shape. A training step does neither (the next
    layer does that work), and for a layer with a large output and little arithmetic they
    cost as much as the layer. So each row's ``seconds`` is net of that sum and its
    gradient where the step takes one, timed on their own on an output of the same shape and
    dtype (``baseline_seconds``); a layer cheaper than its own bookkeeping counts as 0."""
    import tensorflow as tf

    def loss_of(out):
        return tf.reduce_sum(tf.cast(out, "float32"))

    rows = []
    weights_before = False
    for layer in _flat_layers(model):
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        input_gradient, weights_before = weights_before, weights_before or bool(layer.trainable_weights)
        if not all(hasattr(x, "shape") for x in inputs):
            continue
        xs = [tf.cast(tf.random.uniform((batch, *x.shape[1:])), x.dtype) for x in inputs]

        @tf.function
        def step(*xs, layer=layer, several=len(inputs) > 1, input_gradient=input_gradient):
            with tf.GradientTape() as tape:
                if input_gradient:
                    tape.watch(xs)
                out = layer(list(xs) if several else xs[0], training=True)
                loss = loss_of(out)
            return loss, tape.gradient(loss, [*(xs if input_gradient else ()), *layer.trainable_variables])

        out = layer(xs if len(inputs) > 1 else xs[0], training=True)
        # The step differentiates the sum only where it wants a gradient (of the layer's
        # weights or input): the augmentation's and the rescaling's steps fill none.
        backward = input_gradient or bool(layer.trainable_variables)

        @tf.function
        def bookkeeping(out, backward=backward):
            with tf.GradientTape() as tape:
                tape.watch(out)
                loss = loss_of(out)
            return loss, (tape.gradient(loss, out) if backward else None)

        seconds = _fastest(lambda step=step, xs=xs: float(step(*xs)[0]), repeats)
        baseline = _fastest(lambda bookkeeping=bookkeeping, out=out: float(bookkeeping(out)[0]), repeats)
        rows.append({"layer": layer.name, "kind": type(layer).__name__, "seconds": max(0.0, seconds - baseline),
                     "baseline_seconds": baseline,
                     # the forward product, then the weights' gradient and the input's where computed
                     "gflop": (1 + bool(layer.trainable_weights) + input_gradient)
                     * flops.layer_flops(layer) * batch / 1e9,
                     "input_gradient": input_gradient, "input_channels": int(inputs[0].shape[-1])})
    return rows


def print_layer_times(name, batch, augment, step_seconds, top) -> list[dict]:
    """Print the ``top`` slowest layers of ``name`` and the share of each kind; return every layer's row."""
    fresh_session()
    model = build(name, augment)
    rows = layer_times(model, batch)
    ranked = sorted(rows, key=lambda r: -r["seconds"])
    total = sum(r["seconds"] for r in rows)
    print(f"{name}: where a training step's {step_seconds * 1e3:.0f} ms go, each layer's forward and backward "
          f"alone (sum {total * 1e3:.0f} ms):", flush=True)
    for r in ranked[:top]:
        rate = f"{r['gflop'] / r['seconds']:8,.0f} GFLOP/s" if r["gflop"] and r["seconds"] else " " * 16
        print(f"  {r['layer']:28s} {r['kind']:24s} {r['seconds'] * 1e3:8.1f} ms {100 * r['seconds'] / total:5.1f}% "
              f"{rate}", flush=True)
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["seconds"]
    print("  by kind: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kinds.items(),
                                                                                   key=lambda kv: -kv[1])),
          flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODELS), help="comma-separated (default: all)")
    parser.add_argument("--batch", type=int, default=PROFILES["full"].batch_size,
                        help="batch size (default: the full profile's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation), at least 1")
    parser.add_argument("--precision", default="auto",
                        help="auto (tinylib's choice for this device) | float32 | mixed_bfloat16 | ...; "
                             "several, comma-separated, are measured one after the other in this run")
    parser.add_argument("--peak-size", type=int, default=4096, help="matrix size of the peak measurement")
    parser.add_argument("--per-layer", type=int, default=0, metavar="N",
                        help="also show the N slowest layers of each model (TensorFlow)")
    parser.add_argument("--no-mixing", action="store_true", help="skip the MixUp/CutMix measurement")
    parser.add_argument("--save", metavar="FOLDER",
                        help="write throughput.json and throughput.md there (book/results: the chapters' "
                             "training estimates read it where a model has no full-scale record); models "
                             "measured before and not now are kept, with when and how they were measured")
    parser.add_argument("--save-layers", metavar="FOLDER",
                        help=f"with --per-layer: write every layer's time, per model and precision, to "
                             f"FOLDER/{LAYERS_FILE} (book/results: chapter 13 draws where bfloat16 pays)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--steps-per-execution", type=int, default=None,
                        help="training steps per compiled call (default: tinylib's for this device)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--steps and --warmup must be at least 1 (the first step compiles)")
    precisions = [part.strip() for part in args.precision.split(",") if part.strip()]
    if args.save and len(precisions) > 1:
        parser.error("--save writes one precision's rates (throughput.json holds one): give one --precision")
    if args.save_layers and not (args.per_layer and keras.backend.backend() == "tensorflow"):
        parser.error("--save-layers saves the per-layer times: add --per-layer N (TensorFlow only)")
    if args.save_layers and not {"float32", "mixed_bfloat16"} <= set(precisions):
        parser.error("--save-layers compares float32 with mixed bfloat16 in one run: "
                     "--precision float32,mixed_bfloat16")

    SETTINGS.update(steps_per_execution=args.steps_per_execution)
    if args.jit_compile:  # before any model is built: the augmentation then resamples by gathers, which XLA compiles
        os.environ[environment.JIT_ENV] = "1"
    batch, steps = args.batch, args.steps
    rng = np.random.default_rng(0)
    n = batch * (steps + args.warmup)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, n)]
    measured, layers, peak = {}, {}, None
    for precision in precisions:
        policy = configure_precision(precision)
        print(f"device: {device_name()}; backend {keras.backend.backend()}; dtype policy {policy}; "
              f"batch {batch}; {steps} timed steps after {args.warmup} warm-up steps", flush=True)
        if peak is None:  # once a run: every precision's figures against the same peaks
            peak = peaks(args.peak_size)
            print("matmul peak (" + f"{args.peak_size}x{args.peak_size}): "
                  + ", ".join(f"{dtype} {value:,.0f} GFLOP/s" for dtype, value in peak.items()), flush=True)
            feed = time_input(images, labels, batch, steps)
            print(f"input alone (gather a batch, copy it to the device): {feed * 1e3:.1f} ms/batch, "
                  f"{batch / feed:,.0f} images/s", flush=True)
            if not args.no_mixing:
                first = models.normalize_name(args.models.split(",")[0])
                mixed, plain = time_mixing(first, images, labels, batch, steps, args.warmup)
                print(f"MixUp/CutMix inside the compiled step ({first}, no other augmentation): "
                      f"{(mixed - plain) * 1e3:+.1f} ms/step ({mixed * 1e3:.1f} with, {plain * 1e3:.1f} without)",
                      flush=True)
        for name in args.models.split(","):
            name = models.normalize_name(name)
            for augment in (True, False):
                fresh_session()
                keras.utils.set_random_seed(0)
                model = build(name, augment)
                seconds = time_training(model, images, labels, batch, steps, args.warmup)
                work = flops.training_flops(model)
                arithmetic = [layer.compute_dtype for layer in model.layers if layer.weights][0]
                del model
                label = name if augment else f"{name} without augmentation"
                row = measured.setdefault(policy, {}).setdefault(name, {})
                row["images_per_second" if augment else "images_per_second_without_augmentation"] \
                    = round(batch / seconds, 1)
                row["train_gflop_per_image"] = float(f"{work / 1e9:.4g}")
                print(speed_line(label, seconds, batch, work, peak) + f"; {seconds * 1e3:.1f} ms/step, "
                      f"{work / 1e9:.3f} GFLOP/image, computed in {arithmetic}", flush=True)
                if augment and args.per_layer and keras.backend.backend() == "tensorflow":
                    rows = print_layer_times(name, batch, augment, seconds, args.per_layer)
                    layers.setdefault(name, {})[policy] = {"step_seconds": seconds, "computed_in": arithmetic,
                                                           "layers": rows}
    if args.save:
        from tinylib import throughput

        saved = throughput.save(args.save, device=device_name(), backend=keras.backend.backend(), dtype_policy=policy,
                                batch=batch, peak=peak, models=measured[policy],
                                fused_batchnorm=environment.speed_settings().get("fused_batchnorm"))
        print(f"wrote {saved[0]} and {saved[1]}", flush=True)
    if args.save_layers:
        from tinylib import layer_times as layer_record

        saved = layer_record.save(args.save_layers, device=device_name(), backend=keras.backend.backend(),
                                  batch=batch, peak=peak, models=layers,
                                  fused_batchnorm=environment.speed_settings().get("fused_batchnorm"))
        print(f"wrote {saved}", flush=True)


if __name__ == "__main__":
    main()
