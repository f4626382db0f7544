"""Speed choices measured in real training runs, side by side: what a full-scale record will say.

``speed_choices.py`` times a few steps of the training step; this trains the model for
``--epochs`` epochs with ``python -m tinylib train`` once per variant (its own process,
its own throwaway run folder, the real data and the whole training loop: batches from
the memory-mapped cache, validation, checkpoints, progress), and prints the images/s
each run's record gives (``train_images_per_second``: the median epoch after the first,
which also compiles) and its fraction of the matrix-product peak the run measured.

    python benchmarks/run_speed.py                          # Model 2, old defaults vs new, 2 epochs each
    python benchmarks/run_speed.py --model model4 --profile quick --epochs 3

The variants are ``speed_choices.py``'s whose only argument is the precision, and
``code@COMMIT``: the project as that commit left it, trained with its own defaults (its
``tinylib`` from ``git archive``, in this environment, with a data cache of its own
prepared from ``TINYLIB_DATA``). The old defaults of ``speed_choices.py`` undo tinylib's
speed settings on today's code; ``code@`` also undoes what no setting names (how the
augmentation resamples, how batches reach the model), so it measures a record's code
itself:

    python benchmarks/run_speed.py --only code@c5feb44,old,new   # the code of Model 2's 594 images/s record

Keep the machine quiet: the figures are ratios within this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tinylib.processes import sigterm_as_exit, tied_to_this_process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed_choices import VARIANTS, clean_environment, fastest_of_rounds  # noqa: E402


CODE_PREFIX = "code@"  # code@COMMIT: that commit's own code and defaults


def runnable(variant: str) -> bool:
    """Whether the training command can express the variant (a precision and an environment,
    or another commit's code)."""
    if variant.startswith(CODE_PREFIX):
        return bool(variant.removeprefix(CODE_PREFIX))
    arguments = VARIANTS[variant][1]
    return len(arguments) == 2 and arguments[0] == "--precision"


def describe(variant: str) -> str:
    if variant.startswith(CODE_PREFIX):
        return f"the code of commit {variant.removeprefix(CODE_PREFIX)}, with its own defaults"
    return VARIANTS[variant][0]


def commit_of(name: str) -> str:
    """The full hash of ``name`` in this project's repository; a clear error if it names none."""
    found = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"error: {name!r} names no commit of this repository (git log shows them)")
    return found.stdout.strip()


@contextlib.contextmanager
def commit_files(commit: str):
    """(a scratch folder holding ``commit``'s files, the environment that trains with them): its
    ``tinylib`` first on the path (``PYTHONPATH``, not only the working folder, which
    ``PYTHONSAFEPATH`` would leave out, and before the editable install of today's), and a
    ``TINYLIB_HOME`` of its own, so that code whose data cache differs from today's neither
    reads nor rewrites this one. One folder serves every round of the variant."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", "--format=tar", commit],
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="run-speed-code-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # the "data" filter where this Python has it (3.11.4, 3.10.12): a commit's own files, nothing outside
            tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        home = Path(folder) / "tinylib-home"
        home.mkdir()
        yield Path(folder), {"PYTHONPATH": folder, "TINYLIB_HOME": str(home)}


def train_once(variant: str, model: str, profile: str, epochs: int, source=None) -> dict:
    """The record of one throwaway run of ``model`` in ``variant``, or {"error": ...}; ``source``:
    (folder, environment) of another commit's code (:func:`commit_files`), else this project's."""
    code, settings = source or (HERE.parent, {})
    arguments, environment = ([], {}) if variant.startswith(CODE_PREFIX) else VARIANTS[variant][1:]
    name = "speed-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in variant)
    with tempfile.TemporaryDirectory(prefix="run-speed-") as folder:
        command = [sys.executable, "-m", "tinylib", "train", model, "--profile", profile, "--epochs", str(epochs),
                   "--runs", folder, "--name", name, "--fresh", *arguments]
        env = {key: value for key, value in clean_environment().items() if key != "PYTHONSAFEPATH"}
        env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **settings, **environment}
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=code,
                                preexec_fn=tied_to_this_process)  # a killed benchmark stops its run
        record_file = Path(folder) / name / "record.json"
        if result.returncode != 0 or not record_file.is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": tail[0][:200]}
        record = json.loads(record_file.read_text(encoding="utf-8"))
        if "train_images_per_second" not in record:  # a commit older than the rate in its records
            return {"error": "its record gives no train_images_per_second"}
        return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the first also compiles)")
    choices = [v for v in VARIANTS if runnable(v)]
    parser.add_argument("--only", default="old,new", help="variants, comma-separated: " + ", ".join(choices)
                        + ", code@COMMIT")
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant, in turn; each keeps its fastest")
    args = parser.parse_args(argv)
    variants = [v for v in args.only.split(",") if v]
    if not variants:
        parser.error("--only names no variant")
    unknown = [v for v in variants if v not in choices and not (v.startswith(CODE_PREFIX) and runnable(v))]
    if unknown:
        parser.error(f"unknown or not runnable variants {unknown}; choose from {', '.join(choices)}, code@COMMIT")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch also compiles, and is not counted")
    # each commit named once, before any run (a typo costs no hour), and the same code in every round
    commits = {v: commit_of(v.removeprefix(CODE_PREFIX)) for v in variants if v.startswith(CODE_PREFIX)}
    if commits and not os.environ.get("TINYLIB_DATA"):
        parser.error("code@COMMIT prepares that code's own data cache: set TINYLIB_DATA to the dataset")
    with contextlib.ExitStack() as stack:
        sources = {v: stack.enter_context(commit_files(commit)) for v, commit in commits.items()}
        best = fastest_of_rounds(
            variants, args.rounds,
            lambda variant: train_once(variant, args.model, args.profile, args.epochs, sources.get(variant)),
            lambda kept, record: max(kept, record, key=lambda r: r["train_images_per_second"]),
            lambda variant: describe(variant) + (f" ({commits[variant][:12]})" if variant in commits else ""))
    base = best.get(variants[0], {}).get("train_images_per_second")
    print(f"{args.model}, {args.profile} profile, {args.epochs} epochs per run; images/s of the median epoch "
          "after the first, from each run's record")
    width, against = max(14, *map(len, variants)), "x " + variants[0]
    column = max(8, len(against))
    print(f"{'variant':{width}s} {'img/s':>8s} {against:>{column}s} {'% of peak':>10s}  computed in, peak")
    for variant in variants:
        record = best[variant]
        if "error" in record:
            print(f"{variant:{width}s} failed: {record['error']}")
            continue
        rate, speed = record["train_images_per_second"], record.get("speed")
        ratio = f"{rate / base:>{column}.2f}" if base else f"{'-':>{column}s}"
        if speed:
            peak = (f"{speed.get('fraction_of_matmul_peak', 0):>10.0%}  {record.get('dtype_policy', '?')}, "
                    f"{speed.get('matmul_peak_dtype')} peak {speed.get('matmul_peak_gflops_per_second', 0):,.0f} GFLOP/s")
        else:  # a record of code older than the peak's measurement
            peak = f"{'-':>10s}  {record.get('dtype_policy', '?')}, no peak in its record"
        print(f"{variant:{width}s} {rate:>8,.0f} {ratio} {peak}")
    print(f"on {next(iter(best.values())).get('device', '?')}")


if __name__ == "__main__":
    with sigterm_as_exit():  # a polite kill removes the scratch folders too
        main()
