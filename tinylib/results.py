"""The seed's results table and this book's full-scale run records, side by side.

Full-scale records are the ``record.json`` files of runs in the 'full' profile,
copied into ``book/results/``.  A model without one is "not yet run": no number
is ever filled in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

# The seed study's results (slides, "RESULTS"): train and validation accuracy.
SEED_RESULTS = {
    "model1": {"train": 0.2296, "val": 0.1419},
    "model2": {"train": 0.2017, "val": 0.2272},
    "model3": {"train": 0.2950, "val": 0.2488},
    "model4": {"train": 0.3752, "val": 0.3861},
    "model5": {"train": 0.6861, "val": 0.4314},
}
NOT_YET_RUN = "not yet run"


def default_results_dir() -> Path:
    """``book/results`` of this checkout (the chapters run from ``book/``)."""
    return Path(__file__).resolve().parents[1] / "book" / "results"


def record_key(record: dict) -> str:
    """What a record is a result *of*: the model, and how it was trained if not as the seed did.

    'model5' is the seed's way; 'model5-finetune-128px-all' a fine-tuning stage
    (``tinylib.transfer``); 'resnet18-modern' a run with a named recipe. So a
    beyond-the-seed run never stands in for a reproduction of the seed's table.
    """
    model = record["model"]
    if record.get("stage"):
        return f"{model}-finetune-{record.get('image_size', 64)}px-{record['stage']}"
    recipe = (record.get("recipe") or {}).get("name")
    return f"{model}-{recipe}" if recipe else model


def full_scale_records(folder: Path | str | None = None) -> dict[str, dict]:
    """The best full-profile record per ``record_key`` found in ``folder``."""
    best: dict[str, dict] = {}
    for path in sorted(Path(folder or default_results_dir()).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("profile") != "full" or "best_val_top1" not in record:
            continue
        record["record_file"] = path.name
        key = record_key(record)
        if key not in best or record["best_val_top1"] > best[key]["best_val_top1"]:
            best[key] = record
    return best


def comparison_rows(folder: Path | str | None = None) -> list[dict]:
    """Rows for a table or ``plots.results_table_plot``: the seed's and this book's figures.

    This book's row holds None (shown as "not yet run") where no full-scale record exists.
    """
    records = full_scale_records(folder)
    rows = []
    for model, seed in SEED_RESULTS.items():
        rows.append({"model": model, "source": "seed", "train": seed["train"], "val": seed["val"]})
        record = records.get(model)
        rows.append({
            "model": model, "source": "this book",
            "train": record.get("final_train_top1") if record else None,
            "val": record.get("best_val_top1") if record else None,
            "note": _describe(record) if record else NOT_YET_RUN,
        })
    return rows


def _describe(record: dict) -> str:
    return (f"{record['epochs_run']} epochs, {record['backend']} on {record['device']}, "
            f"weights: {record['weights']} ({record['record_file']})")


def comparison_table(folder: Path | str | None = None):
    """The comparison as a small pandas-free text table (list of dicts -> markdown)."""
    lines = ["| model | source | train accuracy | val accuracy | note |", "|---|---|---|---|---|"]
    for row in comparison_rows(folder):
        cells = [f"{row[k]:.2%}" if row[k] is not None else NOT_YET_RUN for k in ("train", "val")]
        lines.append(f"| {row['model']} | {row['source']} | {cells[0]} | {cells[1]} | {row.get('note', 'slides')} |")
    return "\n".join(lines)
