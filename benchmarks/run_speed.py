"""Speed choices measured in real training runs, side by side: what a full-scale record will say.

``speed_choices.py`` times a few steps of the training step; this trains the model for
``--epochs`` epochs with ``python -m tinylib train`` once per variant (its own process,
its own throwaway run folder, the real data and the whole training loop: batches from
the memory-mapped cache, validation, checkpoints, progress), and prints the images/s
each run's record gives (``train_images_per_second``: the median epoch after the first,
which also compiles) and its fraction of the matrix-product peak the run measured.

    python benchmarks/run_speed.py                          # Model 2, old defaults vs new, 2 epochs each
    python benchmarks/run_speed.py --model model4 --profile quick --epochs 3

The variants are ``speed_choices.py``'s whose only argument is the precision. Keep the
machine quiet: the figures are ratios within this one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tinylib.processes import sigterm_as_exit, tied_to_this_process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed_choices import VARIANTS, clean_environment, fastest_of_rounds  # noqa: E402


def runnable(variant: str) -> bool:
    """Whether the training command can express the variant (a precision and an environment)."""
    arguments = VARIANTS[variant][1]
    return len(arguments) == 2 and arguments[0] == "--precision"


def train_once(variant: str, model: str, profile: str, epochs: int) -> dict:
    """The record of one throwaway run of ``model`` in ``variant``, or {"error": ...}."""
    _, arguments, environment = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix="run-speed-") as folder:
        command = [sys.executable, "-m", "tinylib", "train", model, "--profile", profile, "--epochs", str(epochs),
                   "--runs", folder, "--name", f"speed-{variant}", "--fresh", *arguments]
        env = {**clean_environment(), "TF_CPP_MIN_LOG_LEVEL": "3", **environment}
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=HERE.parent,
                                preexec_fn=tied_to_this_process)  # a killed benchmark stops its run
        record_file = Path(folder) / f"speed-{variant}" / "record.json"
        if result.returncode != 0 or not record_file.is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": tail[0][:200]}
        return json.loads(record_file.read_text(encoding="utf-8"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the first also compiles)")
    choices = [v for v in VARIANTS if runnable(v)]
    parser.add_argument("--only", default="old,new", help="variants, comma-separated: " + ", ".join(choices))
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant, in turn; each keeps its fastest")
    args = parser.parse_args(argv)
    variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in variants if v not in choices]
    if unknown:
        parser.error(f"unknown or not runnable variants {unknown}; choose from {', '.join(choices)}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch also compiles, and is not counted")
    best = fastest_of_rounds(
        variants, args.rounds, lambda variant: train_once(variant, args.model, args.profile, args.epochs),
        lambda kept, record: max(kept, record, key=lambda r: r["train_images_per_second"]))
    base = best.get(variants[0], {}).get("train_images_per_second")
    print(f"{args.model}, {args.profile} profile, {args.epochs} epochs per run; images/s of the median epoch "
          "after the first, from each run's record")
    print(f"{'variant':14s} {'img/s':>8s} {'x ' + variants[0]:>8s} {'% of peak':>10s}  computed in, peak")
    for variant in variants:
        record = best[variant]
        if "error" in record:
            print(f"{variant:14s} failed: {record['error']}")
            continue
        rate, speed = record["train_images_per_second"], record.get("speed") or {}
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"{variant:14s} {rate:>8,.0f} {ratio:>8s} {speed.get('fraction_of_matmul_peak', 0):>10.0%}  "
              f"{record['dtype_policy']}, {speed.get('matmul_peak_dtype')} peak "
              f"{speed.get('matmul_peak_gflops_per_second', 0):,.0f} GFLOP/s")
    print(f"on {next(iter(best.values())).get('device', '?')}")


if __name__ == "__main__":
    with sigterm_as_exit():  # a polite kill removes the scratch folders too
        main()
