"""Measured training rates of each model on one machine: what a run will cost before it runs.

``benchmarks/model_throughput.py --save book/results`` times every model's full-scale
training step and writes ``throughput.json`` (and a readable ``throughput.md``) with
the device, backend and precision it measured. ``tinylib.chapter_costs`` reads a
model's rate from there when the model has no full-scale record yet, so a chapter's
estimate is a measurement, never a guess.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from tinylib import files

THROUGHPUT_FILE = "throughput.json"
THROUGHPUT_TABLE = "throughput.md"
FULL_SCALE_TRAIN_IMAGES = 100_000


# What a rate was measured under (a rate depends on the batch too); ``fused_batchnorm``: whether BatchNorm went through
# TensorFlow's fused kernel (``tinylib.batchnorm``), None where the file does not say.
CONDITIONS = ("device", "backend", "dtype_policy", "fused_batchnorm", "batch_size", "measured")


def save(folder: Path | str, *, device: str, backend: str, dtype_policy: str, batch: int, peak: dict,
         models: dict, fused_batchnorm: bool | None = None) -> tuple[Path, Path]:
    """Write the measurement (``models``: {name: {images_per_second, ...}}), atomically.

    Models measured before and not now are kept, each with the conditions it was
    measured under (``CONDITIONS``), so timing a few models does not lose the others.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    earlier = read(folder)
    kept = {}
    for name, row in (earlier.get("models") or {}).items():
        if name not in models and isinstance(row, dict):
            kept[name] = {**_conditions_of(earlier, row), **row}
    data = {"device": device, "backend": backend, "dtype_policy": dtype_policy, "fused_batchnorm": fused_batchnorm,
            "batch_size": batch,
            "matmul_peak_gflops_per_second": {k: round(v, 1) for k, v in peak.items()},
            "measured": datetime.date.today().isoformat(), "models": {**models, **kept}}
    json_path, table_path = folder / THROUGHPUT_FILE, folder / THROUGHPUT_TABLE
    files.write_json(json_path, data, indent=1)
    files.write_text(table_path, table(data))
    return json_path, table_path


def read(folder: Path | str | None = None) -> dict:
    """The saved measurement, or {} when none was saved."""
    from tinylib.results import default_results_dir

    return files.read_json_object(Path(folder or default_results_dir()) / THROUGHPUT_FILE)


def rate(model: str, folder: Path | str | None = None) -> tuple[float, dict] | None:
    """(training images/s with augmentation, the measurement) of ``model``, or None."""
    data = read(folder)
    row = (data.get("models") or {}).get(model) or {}
    value = row.get("images_per_second")
    return (float(value), {**data, **_conditions_of(data, row)}) if value else None


# What a rate holds for: a run on another device, in another precision or on another batch
# trains at another rate.
RATE_HOLDS_FOR = ("device", "dtype_policy", "batch_size")


def differences(measured: dict, run: dict, keys: tuple[str, ...] = RATE_HOLDS_FOR) -> list[str]:
    """Which of ``keys`` differ between the conditions a rate was measured under and a run's:
    the one comparison the chapters' cost lines and a budget's first plan make."""
    return [key for key in keys if measured.get(key) != run.get(key)]


def _conditions_of(data: dict, row: dict) -> dict:
    """What ``row`` was measured under: its own conditions where it keeps them (a row kept
    from an earlier measurement), else the file's. A kept row written before the batch was
    one of them has an unknown batch (None), not the file's newer one."""
    kept = "measured" in row
    return {key: row.get(key) if kept or key in row else data.get(key) for key in CONDITIONS}


def _batchnorm(conditions: dict) -> str:
    fused = conditions.get("fused_batchnorm")
    return {True: "BatchNorm: TensorFlow's fused kernel", False: "BatchNorm: Keras' own"}.get(
        fused, "BatchNorm path not recorded")


def table(data: dict) -> str:
    """The measurement as Markdown: each model's rate and a full-scale epoch's training time."""
    peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in data["matmul_peak_gflops_per_second"].items())
    lines = [
        "# Training throughput (written by `benchmarks/model_throughput.py --save`)",
        "",
        f"{data['device']}, {data['backend']}, {data['dtype_policy']}, {_batchnorm(data)}, "
        f"batch {data['batch_size']}, measured {data['measured']}; matrix-product peak: {peaks}.",
        "",
        "| model | train images/s | without augmentation | GFLOP per training image | GFLOP/s "
        f"| a full-scale epoch ({FULL_SCALE_TRAIN_IMAGES:,} images), training only |",
        "|---|---|---|---|---|---|",
    ]
    earlier = []
    for name, row in data["models"].items():
        per_second = row["images_per_second"]
        plain = row.get("images_per_second_without_augmentation")
        mark = ""
        if row.get("measured"):  # kept from an earlier measurement
            batch = f", batch {row['batch_size']}" if row.get("batch_size") else ""
            earlier.append(f"{name}: measured {row['measured']} on {row.get('device')}, {row.get('backend')}, "
                           f"{row.get('dtype_policy')}, {_batchnorm(row)}{batch}.")
            mark = f" [{len(earlier)}]"
        lines.append(f"| {name}{mark} | {per_second:,.0f} | {plain:,.0f} | {row['train_gflop_per_image']:.3f} "
                     f"| {per_second * row['train_gflop_per_image']:,.0f} "
                     f"| {FULL_SCALE_TRAIN_IMAGES / per_second / 60:,.1f} min |")
    if earlier:
        lines += ["", "Kept from earlier measurements:", ""] + [f"[{i}] {text}" for i, text in enumerate(earlier, 1)]
    return "\n".join(lines) + "\n"
