"""Where a training step's time goes, layer by layer, in float32 and in bfloat16.

A faster arithmetic speeds up only the layers that do arithmetic. On a CPU with
bfloat16 instructions the matrix products of convolutions and dense layers run
faster, while the layers that mostly move memory (the augmentation, which stays
float32 on purpose, pooling, dropout) gain far less: Amdahl's law caps the whole
step's gain below the matrix products'. ``benchmarks/model_throughput.py
--per-layer N --precision float32,mixed_bfloat16 --save-layers book/results`` times
every layer of a model in both precisions in one run; this module keeps that
measurement (``layer-times.json``) and says what it shows.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from tinylib import files

LAYERS_FILE = "layer-times.json"
SLOW, FAST = "float32", "mixed_bfloat16"  # the precisions compared
COMMAND = ("python benchmarks/model_throughput.py --models {model} --per-layer 12 "
           "--precision float32,mixed_bfloat16 --no-mixing --save-layers book/results")
THIN_PRODUCT_CHANNELS = 4  # a convolution with this few input channels makes a thin matrix product


def save(folder: Path | str, *, device: str, backend: str, batch: int, peak: dict, models: dict,
         fused_batchnorm: bool | None = None) -> Path:
    """Write the measurement atomically: ``models`` maps a model to {policy: {"step_seconds",
    "computed_in", "layers": [rows of ``model_throughput.layer_times``]}}. Models measured
    before and not now are kept, each with its own device and date."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    earlier = read(folder)
    conditions = {"device": device, "backend": backend, "batch_size": batch, "fused_batchnorm": fused_batchnorm,
                  "matmul_peak_gflops_per_second": {k: round(v, 1) for k, v in peak.items()},
                  "measured": datetime.date.today().isoformat()}
    kept = {name: entry for name, entry in (earlier.get("models") or {}).items() if name not in models}
    fresh = {name: {"model": name, **conditions,
                    "policies": {policy: _rounded(entry) for policy, entry in by_policy.items()}}
             for name, by_policy in models.items()}
    path = folder / LAYERS_FILE
    files.write_json(path, {"models": {**kept, **fresh}}, indent=1)
    return path


def _rounded(entry: dict) -> dict:
    rows = [{**row, "seconds": round(row["seconds"], 6), "gflop": float(f"{row['gflop']:.4g}"),
             **({"baseline_seconds": round(row["baseline_seconds"], 6)} if "baseline_seconds" in row else {})}
            for row in entry["layers"]]
    return {**entry, "step_seconds": round(entry["step_seconds"], 6), "layers": rows}


def read(folder: Path | str | None = None) -> dict:
    """The saved measurement, or {} when none was saved."""
    from tinylib.results import default_results_dir

    return files.read_json_object(Path(folder or default_results_dir()) / LAYERS_FILE)


def measurement(model: str, folder: Path | str | None = None) -> dict | None:
    """``model``'s entry, when it was timed in both precisions; else None."""
    entry = (read(folder).get("models") or {}).get(model)
    policies = (entry or {}).get("policies") or {}
    return entry if SLOW in policies and FAST in policies else None


def _partition(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the layers with matrix products, the others)."""
    return [row for row in rows if row["gflop"]], [row for row in rows if not row["gflop"]]


def _seconds(rows: list[dict]) -> float:
    return sum(row["seconds"] for row in rows)


def precision_gain(entry: dict) -> dict:
    """What bfloat16 bought one model, from its entry (``measurement``): the ratios of the
    matrix-product peaks, of the whole step and of each kind of layer, the others' share of
    the layers' time, the product furthest from the peak, and the step the layers alone
    would add up to had every product run at the bfloat16 peak (against float32's). The
    figures that need a bfloat16 peak are None where the machine has none (a CPU without
    bfloat16 instructions, where mixed bfloat16 is emulated)."""
    slow, fast = entry["policies"][SLOW], entry["policies"][FAST]
    peak = entry["matmul_peak_gflops_per_second"]
    native = peak.get("bfloat16")
    slow_products, slow_others = map(_seconds, _partition(slow["layers"]))
    products_rows, other_rows = _partition(fast["layers"])
    fast_products, fast_others = _seconds(products_rows), _seconds(other_rows)
    work = sum(row["gflop"] for row in products_rows)
    timed = [row for row in products_rows if row["seconds"] > 0]  # one at 0 (net of its bookkeeping) is no candidate
    if native:  # the product that loses the most time to the peak, not merely the slowest per FLOP
        furthest = max(timed, key=lambda row: row["seconds"] - row["gflop"] / native, default=None)
    else:
        furthest = min(timed, key=lambda row: row["gflop"] / row["seconds"], default=None)
    others = sorted(other_rows, key=lambda row: -row["seconds"])
    batch = entry["batch_size"]
    return {
        "peak": (peak["float32"], native),
        "peak_ratio": native / peak["float32"] if native else None,
        "images_per_second": (batch / slow["step_seconds"], batch / fast["step_seconds"]),
        "step_ratio": slow["step_seconds"] / fast["step_seconds"],
        "products_ratio": slow_products / fast_products if fast_products else None,
        "others_ratio": slow_others / fast_others if fast_others else None,
        "others_share": (slow_others / (slow_products + slow_others), fast_others / (fast_products + fast_others)),
        "others": [row["layer"] for row in others],
        "furthest": furthest,
        "furthest_rate": furthest["gflop"] / furthest["seconds"] if furthest else None,
        "furthest_at_peak": furthest["gflop"] / native if furthest and native else None,
        "layers_ratio": (slow_products + slow_others) / (fast_products + fast_others),
        "bound": (slow_products + slow_others) / (fast_others + work / native) if native else None,
    }


def story(model: str = "model2", folder: Path | str | None = None) -> str:
    """What mixed bfloat16 bought ``model``'s training step and why not more (Markdown),
    every number read from ``layer-times.json``; "not yet measured" and the command without it."""
    from tinylib.results import model_title

    title = model_title(model)
    entry = measurement(model, folder)
    if entry is None:
        return (f"**Where bfloat16 pays ({title}):** not yet measured. `book/results/{LAYERS_FILE}` holds no "
                f"timing of {title}'s layers in both precisions; on a CPU with bfloat16 instructions (or a GPU) "
                f"`{COMMAND.format(model=model)}` makes one.")
    gain = precision_gain(entry)
    (peak32, peak16), (rate32, rate16) = gain["peak"], gain["images_per_second"]
    head = (f"**Where bfloat16 pays ({title}; {entry['device']}, {entry['backend']}, batch {entry['batch_size']}, "
            f"measured {entry['measured']}):** ")
    peaks = (f"this machine multiplies large matrices {gain['peak_ratio']:.2f}× as fast in bfloat16 as in float32 "
             f"({peak16:,.0f} against {peak32:,.0f} GFLOP/s), and " if peak16 else
             "this machine has no bfloat16 instructions (no bfloat16 peak was measured: its bfloat16 is "
             "emulated), and ")
    step = f"{title}'s training step became {gain['step_ratio']:.2f}× as fast ({rate32:,.0f} to {rate16:,.0f} images/s)."
    return head + peaks + step + _layers_sentences(gain)


def _layers_sentences(gain: dict) -> str:
    """The layer-by-layer part of ``story``: each kind of layer, the product furthest from
    the peak, and the bound, each only where the measurement has it."""
    products = gain["products_ratio"]
    text = (f" Timed one layer at a time, its convolutions and dense layers became {products:.2f}× as fast"
            if products else " Timed one layer at a time, it has no convolution or dense layer")
    others = [f"`{name}`" for name in gain["others"][:3]]
    if others:
        named = ", ".join(others[:-1]) + f" and {others[-1]}" if len(others) > 1 else others[0]
        verb = "moves" if len(gain["others"]) == 1 else "move"
        kept = " (the augmentation stays float32 on purpose)" if "augmentation" in gain["others"] else ""
        before, after = (round(100 * share) for share in gain["others_share"])
        trend = (f"grew from {before}% to {after}%" if after > before else
                 f"fell from {before}% to {after}%" if after < before else f"stayed at {after}%")
        ratio = f"{gain['others_ratio']:.2f}×" if gain["others_ratio"] else "no faster"
        text += (f" and the other layers {ratio}: {named} {verb} memory rather than multiply"
                 f"{kept}, and their share of the layers' time {trend}.")
    else:
        text += "."
    furthest = gain["furthest"]
    if furthest is not None:
        thin = (f": its {furthest['input_channels']} input channels make a matrix product too thin to keep the "
                "cores busy" if furthest.get("kind") == "Conv2D"
                and 0 < furthest.get("input_channels", 0) <= THIN_PRODUCT_CHANNELS else "")
        if gain["furthest_at_peak"] is not None:
            text += (f" The product that loses the most time to the peak is `{furthest['layer']}`: "
                     f"{1e3 * furthest['seconds']:.1f} ms where the peak would take "
                     f"{1e3 * gain['furthest_at_peak']:.1f} ({gain['furthest_rate']:,.0f} GFLOP/s){thin}.")
        else:
            text += (f" The product furthest from the float32 one's pace is `{furthest['layer']}`, at "
                     f"{gain['furthest_rate']:,.0f} GFLOP/s in bfloat16{thin}.")
    text += f" All the layers together, timed alone, became {gain['layers_ratio']:.2f}× as fast"
    if gain["bound"] is None:
        return text + "."
    return text + (f"; had every convolution and dense layer run at the bfloat16 peak, with the other layers as "
                   f"measured, they would have become {gain['bound']:.2f}× as fast. What lies between the two is "
                   f"the kernels' distance from the peak, not the precision's.")
