"""Where a training step's time goes, from TensorFlow's profiler: per layer and per kernel.

Trains ``--steps`` steps of one model as a full-scale run does (the profile's batch,
augmentation inside the model, batches from uint8 arrays, the optimizer's update) under
``tf.profiler``, after a few steps that compile, then sums the trace's kernel times per
step: by layer (forward and backward apart, the optimizer's update as one row) and by
kernel type, and prints the largest kernels.

    python benchmarks/profile_step.py [--model model2] [--steps 10] [--precision auto]

The kernel times are summed over the threads that ran them, so their total exceeds the
step's wall time where two kernels ran at once, and falls short of it by the time the
threads waited; and the profiler's own tracing lengthens the step, so the step's images/s
here read below ``model_throughput.py``'s. ``model_throughput.py --per-layer`` times each
layer alone instead.
Keep the machine quiet: on a busy one every kernel takes longer, the small ones most.
TensorFlow only.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from model_throughput import NUM_CLASSES, build  # noqa: E402
from tinylib import environment, train  # noqa: E402
from tinylib.batches import ShuffledBatches  # noqa: E402
from tinylib.profiles import PROFILES  # noqa: E402

WARMUP_STEPS = 3


def kernel_times(trace_folder: str | Path) -> dict[str, float]:
    """Seconds per kernel ('scope/name:Type') summed over a trace's compute threads."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as err:  # an internal module of TensorFlow's wheel
        raise SystemExit(f"This TensorFlow has no readable profiler trace format ({err}).") from err
    files = sorted(Path(trace_folder).rglob("*.xplane.pb"))
    if not files:
        raise SystemExit(f"The profiler wrote no trace under {trace_folder}.")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    seconds: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's threads, not tf.data's
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(("ExecutorState", "Threadpool")):
                    seconds[name] += event.duration_ps * 1e-12
    return dict(seconds)


def layer_of(kernel: str, model_name: str, optimizer_name: str, layer_names=()) -> str:
    """The row a kernel counts in: 'conv1', 'conv1 (backward)', 'optimizer update' or
    'loss, metrics and the rest', from the scopes of its name. TensorFlow numbers a scope
    used twice ('conv1_1'), and Keras an optimizer or layer whose name is taken ('adam_3'):
    a scope names ``name`` when it is ``name`` or ``name`` with such a number."""
    scopes = kernel.rsplit(":", 1)[0].split("/")

    def names(scope: str, name: str) -> bool:
        return scope == name or re.sub(r"_\d+$", "", scope) == name

    if any(names(scope, optimizer_name) for scope in scopes):
        return "optimizer update"
    index = next((i for i, scope in enumerate(scopes) if names(scope, model_name)), None)
    if index is not None and index + 1 < len(scopes) - 1:  # a layer's scope, not an operation of the model
        scope = scopes[index + 1]
        layer = next((name for name in layer_names if names(scope, name)), re.sub(r"_\d+$", "", scope))
        return layer + (" (backward)" if "gradient_tape" in scopes else "")
    return "loss, metrics and the rest"


def profile(name: str, steps: int, batch: int) -> tuple[float, dict[str, float], keras.Model]:
    """Wall seconds per step and kernel seconds (summed, per step) of ``steps`` steps."""
    import tensorflow as tf

    model = build(name, augment=True)
    model.steps_per_execution = environment.steps_per_execution()
    train.build_optimizer(model)
    rng = np.random.default_rng(0)
    n = batch * max(steps, WARMUP_STEPS)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, n)]
    model.fit(ShuffledBatches(images[:batch * WARMUP_STEPS], labels[:batch * WARMUP_STEPS], batch, seed=0),
              epochs=1, verbose=0)  # compiles
    timed = ShuffledBatches(images[:batch * steps], labels[:batch * steps], batch, seed=1)
    with tempfile.TemporaryDirectory(prefix="profile-step-") as folder:
        tf.profiler.experimental.start(folder)
        try:
            begin = time.perf_counter()
            model.fit(timed, epochs=1, verbose=0)
            wall = time.perf_counter() - begin
        finally:
            tf.profiler.experimental.stop()
        kernels = {kernel: seconds / steps for kernel, seconds in kernel_times(folder).items()}
    return wall / steps, kernels, model


def _table(title: str, rows: dict[str, float], total: float, top: int) -> None:
    print(title)
    for key, seconds in sorted(rows.items(), key=lambda row: -row[1])[:top]:
        print(f"  {key[:78]:78s} {1e3 * seconds:8.2f} ms {100 * seconds / total:5.1f}%")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps, after a few that compile")
    parser.add_argument("--batch", type=int, default=PROFILES["full"].batch_size)
    parser.add_argument("--precision", default="auto", help="auto (tinylib's choice here), float32, mixed_bfloat16")
    parser.add_argument("--top", type=int, default=15, help="kernels listed")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        sys.exit("This reads TensorFlow's profiler: run it with KERAS_BACKEND=tensorflow.")
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be at least 1")
    policy = environment.configure_precision(args.precision)
    wall, kernels, model = profile(args.model, args.steps, args.batch)
    total = sum(kernels.values())
    layers: collections.Counter = collections.Counter()
    types: collections.Counter = collections.Counter()
    for kernel, seconds in kernels.items():
        layers[layer_of(kernel, model.name, model.optimizer.name, {layer.name for layer in model.layers})] += seconds
        types[kernel.rsplit(":", 1)[1]] += seconds
    print(f"{args.model}, batch {args.batch}, {policy}, {environment.device_name()}: {1e3 * wall:.1f} ms a step "
          f"({args.batch / wall:,.0f} images/s) over {args.steps} profiled steps; kernels {1e3 * total:.1f} ms a step, "
          "summed over threads")
    _table("by layer:", layers, total, len(layers))
    _table("by kernel type:", types, total, args.top)
    _table("largest kernels:", kernels, total, args.top)
    return {"wall_seconds": wall, "layers": dict(layers), "types": dict(types)}


if __name__ == "__main__":
    main()
