"""A trained run scored again with its BatchNorm statistics re-estimated on clean images.

Training updates each BatchNorm layer's moving mean and variance on the images it trains
on, and those are *augmented* (shifted, zoomed, sheared, their borders filled with the
nearest pixels, their brightness changed); validation feeds the images as they are. The
layers then normalise clean images with the statistics of augmented ones.
:func:`tinylib.batchnorm.recalibrate` re-estimates the statistics over training images
without augmentation; nothing else of the model changes, and no validation image is
used. The difference between the two scores is how much of a run's validation accuracy
the statistics cost, which the run's own curves cannot show.

``python -m tinylib evaluate RUN --recalibrate-bn 20000 --results book/results`` writes
the evaluation under ``book/results/evaluations/``; :func:`story` tells it in a chapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinylib import files
from tinylib.results import NOT_YET_MEASURED, STUDY_RESULTS, against_phrase, default_results_dir, model_title, pct

EVALUATIONS = "evaluations"  # a subfolder: the record readers glob the results folder's own *.json
SUFFIX = "-bn-recalibrated.json"
SEED = 0  # which training images: the same ones for every run


def evaluate_recalibrated(model, dataset, split: str = "val", images: int = 20_000, progress=None,
                          as_trained=None) -> dict:
    """Score ``model`` on ``dataset``'s ``split`` as it is, then again after re-estimating its
    BatchNorm statistics over ``images`` training images (drawn with :data:`SEED`, unaugmented).

    Returns the second score's figures beside the first's, or {} for a model with no
    trainable BatchNorm layer. The model keeps the re-estimated statistics.
    """
    from tinylib import batchnorm, evaluate

    target = getattr(dataset, split)
    if as_trained is None:  # the caller's own scoring of the model as it is, if it has one
        as_trained = evaluate.evaluate(model, target, dataset.class_names)
    count = min(int(images), len(dataset.train))
    chosen = np.sort(np.random.default_rng(SEED).permutation(len(dataset.train))[:count])
    if not batchnorm.recalibrate(model, dataset.train.images[chosen], progress=progress):
        return {}
    again = evaluate.evaluate(model, target, dataset.class_names)
    return {"split": split, "images_scored": len(target), "train_images": count, "seed": SEED,
            "top1_as_trained": as_trained.top1, "top5_as_trained": as_trained.top5,
            "top1": again.top1, "top5": again.top5, "evaluation": again}


def publish(figures: dict, record: dict, state: dict | None, run_name: str, results: Path | str) -> Path:
    """Write the figures with what identifies the run and its checkpoint (epochs done, and the
    batch of a mid-epoch one) to ``results/evaluations/<run>-<split>-bn-recalibrated.json``."""
    state = state or {}
    partial = state.get("partial") or {}
    payload = {key: value for key, value in figures.items() if key != "evaluation"}
    payload.update({
        "run": run_name, "model": record.get("model"), "profile": record.get("profile"),
        "batch_size": record.get("batch_size"), "backend": record.get("backend"), "device": record.get("device"),
        "dtype_policy": record.get("dtype_policy"), "epochs_planned": record.get("epochs"),
        "epochs_done": state.get("epochs_done", record.get("epochs_run")),
        "batches_into_next_epoch": partial.get("batches", 0),
        "val_top1_recorded": (record.get("history", {}).get("val_accuracy") or [None])[-1]
        if figures.get("split") == "val" else None,
    })
    path = Path(results) / EVALUATIONS / f"{run_name}-{figures['split']}{SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_json(path, payload)


def published(model: str, folder: Path | str | None = None) -> list[dict]:
    """The published full-scale evaluations of ``model``'s runs on the validation images, in
    file-name order."""
    found = []
    for path in sorted((Path(folder or default_results_dir()) / EVALUATIONS).glob(f"*-val{SUFFIX}")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if payload.get("model") == model and payload.get("profile") == "full":
            found.append(payload)
    return found


def story(model: str, folder: Path | str | None = None) -> str:
    """A chapter's paragraph: each run's validation top-1 with the statistics training left,
    and re-estimated, against the study's figure; or what to run where none is published."""
    title = model_title(model)
    evaluations = published(model, folder)
    if not evaluations:
        return (f"**BatchNorm's statistics:** {title} with them re-estimated on clean training images: "
                f"{NOT_YET_MEASURED} (`python -m tinylib evaluate RUN --recalibrate-bn 20000 --results "
                f"book/results` on a full-scale run folder).")
    study = STUDY_RESULTS.get(model, {}).get("val")
    sentences = [_sentence(title, e, study) for e in evaluations]
    return "**BatchNorm's statistics:** " + " ".join(sentences)


def _sentence(title: str, e: dict, study: float | None) -> str:
    where = f"after epoch {e['epochs_done']}"
    if e.get("batches_into_next_epoch"):
        where += f" and {e['batches_into_next_epoch']:,} batches of the next"
    n, before, after = e["images_scored"], e["top1_as_trained"], e["top1"]
    text = (f"{title} at batch {e['batch_size']}, {where} of its {e['epochs_planned']} planned, scores "
            f"{pct(before)} on the {n:,} validation images with the statistics its training left, and "
            f"{pct(after)} once they are re-estimated over {e['train_images']:,} training images as they are, "
            f"unaugmented ({against_phrase(after, n, before, n)} the first, with the same weights).")
    if study is not None:
        text += (f" As trained it is {against_phrase(before, n, study, n)} the study's {pct(study)}; re-estimated, "
                 f"{against_phrase(after, n, study, n)} it.")
    return text
