"""Each speed choice of CPU training measured side by side in one run: what ``environment`` keeps.

Runs ``model_throughput.py`` once per variant, each in its own process (the backend,
the thread pools and oneDNN are fixed when TensorFlow starts), one after another on
the same machine, and prints one table: images/s of the full-scale training step
(augmentation inside the model) and its fraction of the float32 matrix-product peak
measured in the same process, against tinylib's old defaults (float32, Keras'
BatchNorm and Adam, TensorFlow, no XLA, one step per call). The float32 variants but
'fused-f32' each change one of those defaults; the others change one of tinylib's own
choices ('new'). Settings of tinylib's (``TINYLIB_*``) in the shell are left out, so that
each variant measures what it names.

    python benchmarks/speed_choices.py                       # Models 2 and 4, every choice
    python benchmarks/speed_choices.py --models model1,model2,model3,model4,model5 --only old,new

Keep the machine quiet while it runs: the figures are ratios within this one run. Every
variant is measured ``--rounds`` times in turn and keeps its fastest, so a drift of the
machine's speed over the minutes of the run falls on all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tinylib.processes import sigterm_as_exit, tied_to_this_process

HERE = Path(__file__).resolve().parent

# Keras' own BatchNorm and Adam update, not TensorFlow's fused kernels (tinylib.batchnorm, tinylib.fused_adam)
UNFUSED = {"TINYLIB_FUSED_BATCHNORM": "0", "TINYLIB_FUSED_ADAM": "0"}
OLD = {**UNFUSED, "TINYLIB_STEPS_PER_EXECUTION": "1"}  # and one step per call
SPEED_SETTINGS = ("TINYLIB_FUSED_BATCHNORM", "TINYLIB_FUSED_ADAM", "TINYLIB_STEPS_PER_EXECUTION", "TINYLIB_PRECISION",
                  "TINYLIB_JIT_COMPILE")
# name: (what it is, extra arguments, extra environment)
VARIANTS = {
    "old": ("old defaults: float32, Keras' BatchNorm and Adam, TensorFlow with oneDNN, no XLA, 1 step per call",
            ["--precision", "float32"], OLD),
    "new": ("tinylib's choices for this device (environment.automatic_precision and steps_per_execution, "
            "tinylib.batchnorm, tinylib.fused_adam)", ["--precision", "auto"], {}),
    "new-1-step": ("tinylib's choices but 1 step per compiled call", ["--precision", "auto"],
                   {"TINYLIB_STEPS_PER_EXECUTION": "1"}),
    "keras-adam": ("tinylib's choices but Keras' Adam update (no fused kernel)", ["--precision", "auto"],
                   {"TINYLIB_FUSED_ADAM": "0"}),
    "bf16-unfused": ("the old defaults in mixed bfloat16 (Keras' BatchNorm and Adam, 1 step per call)",
                     ["--precision", "mixed_bfloat16"], OLD),
    "fused-f32": ("tinylib's choices in float32 (fused kernels, its steps per call)", ["--precision", "float32"], {}),
    "xla": ("float32 with XLA (TINYLIB_JIT_COMPILE=1: the augmentation resamples by gathers, which XLA compiles)",
            ["--precision", "float32"], {**OLD, "TINYLIB_JIT_COMPILE": "1"}),
    "spe4": ("float32, 4 steps per compiled call", ["--precision", "float32"],
             {**UNFUSED, "TINYLIB_STEPS_PER_EXECUTION": "4"}),
    "threads-1-2": ("float32, 1 inter-op and 2 intra-op threads", ["--precision", "float32"],
                    {**OLD, "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "2"}),
    "no-onednn": ("float32 without oneDNN (TF_ENABLE_ONEDNN_OPTS=0)", ["--precision", "float32"],
                  {**OLD, "TF_ENABLE_ONEDNN_OPTS": "0"}),
    "bf16-xla": ("mixed bfloat16 with XLA", ["--precision", "mixed_bfloat16"], {"TINYLIB_JIT_COMPILE": "1"}),
    "jax": ("JAX (XLA), float32, 1 step per call", ["--precision", "float32"],
            {"KERAS_BACKEND": "jax", "TINYLIB_STEPS_PER_EXECUTION": "1"}),
    "jax-bf16": ("JAX (XLA), mixed bfloat16", ["--precision", "mixed_bfloat16"], {"KERAS_BACKEND": "jax"}),
}
def clean_environment() -> dict:
    """This process's environment without tinylib's speed settings, which the variants set."""
    return {key: value for key, value in os.environ.items() if key not in SPEED_SETTINGS}


def measure(variant: str, models: str, steps: int, peak_size: int) -> dict:
    """{model: (images/s with augmentation, % of the float32 peak, that peak in GFLOP/s)} of one
    variant, read from the ``throughput.json`` that ``model_throughput.py --save`` writes. Each
    variant measures the peak in its own process: where it moved between variants, the machine's
    speed did, and the table shows it."""
    _, arguments, environment = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix="speed-choices-") as folder:
        command = [sys.executable, str(HERE / "model_throughput.py"), "--models", models, "--steps", str(steps),
                   "--no-mixing", "--peak-size", str(peak_size), "--save", folder, *arguments]
        env = {**clean_environment(), "TF_CPP_MIN_LOG_LEVEL": "3", **environment}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600,
                                preexec_fn=tied_to_this_process)  # a killed benchmark stops its child
        saved_file = Path(folder) / "throughput.json"  # tinylib.throughput.THROUGHPUT_FILE
        saved = json.loads(saved_file.read_text(encoding="utf-8")) if result.returncode == 0 and \
            saved_file.is_file() else {}
    peak = (saved.get("matmul_peak_gflops_per_second") or {}).get("float32")
    rows = {}
    for model, figures in (saved.get("models") or {}).items():
        rate = figures["images_per_second"]
        rows[model] = (rate, round(100 * rate * figures["train_gflop_per_image"] / peak) if peak else 0, peak or 0)
    if not rows:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}
    return rows


def fastest_of_rounds(variants, rounds: int, measure, faster, describe=lambda variant: VARIANTS[variant][0]) -> dict:
    """Measure every variant ``rounds`` times, in turn, and keep each one's fastest.

    Interleaving spreads a drift of the machine's speed over all the variants.
    ``measure(variant)`` returns a result, or {"error": ...}; ``faster(kept, new)`` the
    better of two results. A failed measurement never replaces a good one.
    """
    best: dict = {}
    for round_ in range(1, rounds + 1):
        for variant in variants:
            print(f"... round {round_}, {variant}: {describe(variant)}", file=sys.stderr, flush=True)
            result = measure(variant)
            kept = best.get(variant)
            if kept is None or "error" in kept:
                best[variant] = result
            elif "error" not in result:
                best[variant] = faster(kept, result)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="model2,model4")
    parser.add_argument("--only", default=",".join(VARIANTS), help="variants, comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=24, help="timed steps per model (several compiled calls)")
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every variant this many times, in turn, and keep each one's fastest "
                             "(a machine's speed drifts over minutes: interleaving spreads the drift)")
    args = parser.parse_args(argv)
    variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    models = args.models.split(",")
    results = fastest_of_rounds(
        variants, args.rounds, lambda variant: measure(variant, args.models, args.steps, args.peak_size),
        lambda kept, row: {m: max(kept.get(m, (0, 0, 0)), row.get(m, (0, 0, 0))) for m in {*kept, *row}})
    head = f"{'variant':12s}" + "".join(f"{m + ' img/s':>15s}{'x old':>7s}{'% f32 peak':>11s}" for m in models)
    head += f"{'f32 peak GFLOP/s':>18s}"  # each variant's own: a drift of the machine shows here
    print(head)
    old = results.get("old", {})
    for variant in variants:
        row = results[variant]
        if "error" in row:
            print(f"{variant:12s} failed: {row['error']}")
            continue
        cells = ""
        for m in models:
            rate, percent, _ = row.get(m, (float("nan"), 0, 0))
            ratio = rate / old[m][0] if m in old else float("nan")
            cells += f"{rate:15,.0f}{ratio:7.2f}{percent:10d}%"
        peak = max(figures[2] for figures in row.values())
        print(f"{variant:12s}{cells}{peak:18,.0f}")
    for variant in variants:
        print(f"  {variant}: {VARIANTS[variant][0]}")


if __name__ == "__main__":
    with sigterm_as_exit():  # a polite kill removes the scratch folders too
        main()
