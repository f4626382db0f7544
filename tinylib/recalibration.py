"""A trained run scored again with its BatchNorm statistics re-estimated on clean images.

Training updates each BatchNorm layer's moving mean and variance on the images it trains
on, and those are *augmented* (shifted, zoomed, sheared, their borders filled with the
nearest pixels, their brightness changed); validation feeds the images as they are. The
layers then normalise clean images with the statistics of augmented ones.
:func:`tinylib.batchnorm.recalibrate` re-estimates the statistics over training images
without augmentation; no trained weight changes, and no validation image is used. Where
the two scores differ beyond noise (both are of the same images: McNemar's paired test),
the difference is what the statistics cost the run's validation accuracy, which the
run's own curves cannot show.

``python -m tinylib evaluate RUN --recalibrate-bn 20000 --results book/results`` writes
the evaluation under ``book/results/evaluations/``; :func:`story` tells it in a chapter.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tinylib import files
from tinylib.results import (NOT_YET_MEASURED, STUDY_RESULTS, against_phrase, default_results_dir, model_title,
                             pct, record_key, the_studys_way)
from tinylib.stats import mcnemar_p, p_text

EVALUATIONS = "evaluations"  # a subfolder: the record readers glob the results folder's own *.json
SUFFIX = "-bn-recalibrated.json"
AUGMENTATION_SUFFIX = "-bn-statistics.json"  # benchmarks/bn_statistics.py --save
SEED = 0  # which training images: the same ones for every run
BATCH_SIZE = 256  # the re-estimate's batches, at most (batchnorm.recalibrate's default too)
AS_RECORDED = 0.01  # a checkpoint rescored may differ from its run's own figure by float noise, not by a point


def evaluate_recalibrated(model, dataset, split: str = "val", images: int = 20_000, progress=True,
                          as_trained=None, batch_size: int = BATCH_SIZE) -> dict:
    """Score ``model`` on ``dataset``'s ``split`` as it is, then again after re-estimating its
    BatchNorm statistics over ``images`` training images (drawn with :data:`SEED`, unaugmented)
    in batches of up to ``batch_size``, with a progress line every tenth of them (``progress``:
    True, or a callable of (done, total), or None for none).

    Returns the second score's figures beside the first's, or {} for a model with no
    trainable BatchNorm layer. The model keeps the re-estimated statistics.
    """
    from tinylib import batchnorm, evaluate

    target = getattr(dataset, split)
    if as_trained is None:  # the caller's own scoring of the model as it is, if it has one
        as_trained = evaluate.evaluate(model, target, dataset.class_names)
    chosen = training_images(dataset, images)
    count = len(chosen)
    if progress is True:
        progress = progress_lines()
    if not batchnorm.recalibrate(model, chosen, batch_size=batch_size, progress=progress):
        return {}
    again = evaluate.evaluate(model, target, dataset.class_names)
    right_before = as_trained.predictions == as_trained.labels
    right_after = again.predictions == again.labels
    only_before, only_after = int(np.sum(right_before & ~right_after)), int(np.sum(right_after & ~right_before))
    return {"split": split, "images_scored": len(target), "train_images": count, "seed": SEED,
            "batch_size": batch_size,
            "top1_as_trained": as_trained.top1, "top5_as_trained": as_trained.top5,
            "top1": again.top1, "top5": again.top5,
            "right_only_as_trained": only_before, "right_only_recalibrated": only_after,
            "mcnemar_p": mcnemar_p(only_before, only_after), "evaluation": again}


def progress_lines(label: str = "BatchNorm's statistics"):
    """A progress callable for :func:`tinylib.batchnorm.recalibrate`: a line every tenth of the
    images, with the rate (in a log or a notebook, that is enough)."""
    import time

    from tinylib import progress

    start, reported = time.time(), [0]

    def report(done: int, total: int) -> None:
        progress.report_count(label, done, total, start, done - reported[0], every=max(total // 10, 1),
                              action="re-estimating")
        reported[0] = done

    return report


def check_publishable(record: dict, run_name: str) -> None:
    """Refuse to publish an evaluation of a run the book does not read: the chapters read
    full-scale runs' alone (:func:`published`), and any other would sit there unread."""
    if record.get("profile") != "full":
        raise ValueError(f"{run_name} is a {record.get('profile')!r}-profile run: the book publishes evaluations "
                         "of full-scale runs only (leave out --results/--save to measure it)")


def figures_only(figures: dict) -> dict:
    """:func:`evaluate_recalibrated`'s figures without its ``evaluation`` (the re-estimated
    model's own :class:`~tinylib.evaluate.Evaluation`): what a JSON file holds of them."""
    return {key: value for key, value in figures.items() if key != "evaluation"}


class Recorded(NamedTuple):
    """What a run recorded for the weights its checkpoint holds (:func:`recorded_score`)."""

    epoch: int  # 1-based
    top1: float  # the validation top-1 at that epoch's end
    best: bool  # early stopping's best epoch, put back at the run's end (not its last)

    def label(self) -> str:
        return f"epoch {self.epoch}" + (", early stopping's best by validation loss" if self.best else "")


def recorded_score(record: dict, state: dict | None) -> Recorded | None:
    """The epoch whose weights a run folder's checkpoint holds (``state``, its ``state.json``),
    with the validation top-1 the run recorded at that epoch's end; None where that cannot be
    told (no checkpoint, one inside an epoch, an epoch the history lacks).

    A finished run with early stopping ends on its best epoch's weights, not its last
    (``restore_best_weights``): its state names them (``best-epoch-NNN.npz``) or, in a state
    from before they were named, keeps early stopping's own ``best_epoch``."""
    from tinylib.runs import FINAL_CHECKPOINT

    if not state or state.get("partial") or not isinstance(state.get("epochs_done"), int):
        return None
    epoch, best = state["epochs_done"], False
    if state.get("checkpoint") == FINAL_CHECKPOINT and "early_stopping" in (record.get("callbacks") or []):
        epoch, best = _best_epoch(state), True
    # The state's history is written with its epochs_done; the record's follows it (a kill between: one short).
    history = (state.get("history") or record.get("history") or {}).get("val_accuracy") or []
    if not isinstance(epoch, int) or not 1 <= epoch <= len(history) or history[epoch - 1] is None:
        return None
    return Recorded(epoch, float(history[epoch - 1]), best)


def _best_epoch(state: dict) -> int | None:
    """Early stopping's best epoch (1-based) in a run's state, or None where it names none."""
    import re

    named = re.fullmatch(r"best-epoch-(\d+)\.npz", str(state.get("best_weights")))
    if named:
        return int(named.group(1))
    for kept in (state.get("callbacks") or {}).values():  # EarlyStopping's is the one with a stopped_epoch
        if isinstance(kept, dict) and "stopped_epoch" in kept and isinstance(kept.get("best_epoch"), int):
            return kept["best_epoch"] + 1
    return None


def against_record(top1: float, recorded: Recorded, images: int) -> tuple[str, bool]:
    """A line comparing a checkpoint's validation top-1 (over ``images`` images) with what its
    run recorded for that epoch (:func:`recorded_score`), and whether the two agree to within
    float noise (:data:`AS_RECORDED`, or one image of a small split): where they do not, the
    weights or the images are probably not those the run validated with."""
    tolerance = max(AS_RECORDED, 1 / max(images, 1))
    same = abs(top1 - recorded.top1) <= tolerance + 1e-9
    line = (f"the checkpoint ({recorded.label()}) scores {top1:.2%}; the run recorded {recorded.top1:.2%} "
            "at that epoch")
    if not same:
        line += (f": further apart than float noise ({tolerance:.1%}), so probably not the weights or the images "
                 "the run validated with (a checkpoint from another run's folder? the data prepared from another "
                 "copy? TINYLIB_DATA and TINYLIB_HOME as when it trained)")
    return line, same


def loaded_with_state(run: Path, load):
    """``load(run)``, and the run's state that named the loaded checkpoint: None where the run
    wrote another meanwhile (it is being trained), so no figure is checked against the wrong one."""
    from tinylib.runs import read_state

    before = read_state(run)
    loaded = load(run)
    return loaded, before if read_state(run) == before else None


def check_against_record(top1: float, images: int, record: dict, state: dict | None, publishing: bool) -> str:
    """The line that says whether a checkpoint's validation top-1 is what its run recorded for
    it (``state``: :func:`loaded_with_state`'s); ValueError where ``publishing`` would put an
    evaluation in the book of weights or images that are probably not the run's, or of a
    checkpoint the run replaced while it was loaded."""
    if state is None:
        if publishing:
            raise ValueError("the run wrote another checkpoint while this one was loaded (is it being trained?): "
                             "nothing is published; publish between its checkpoints, or once it stops")
        return "not checked against the run's record: the run wrote another checkpoint while this one was loaded"
    recorded = recorded_score(record, state)
    if recorded is None:
        return ("no figure of the run's to check this checkpoint against (a checkpoint inside an epoch, or an "
                "epoch its history lacks)")
    line, same = against_record(top1, recorded, images)
    if not same and publishing:
        raise ValueError(f"{line}; nothing is published")
    return line if same else f"warning: {line}"


def training_images(dataset, count: int) -> np.ndarray:
    """The ``count`` training images (at most the split's own) every re-estimate uses: drawn
    with :data:`SEED`, in the split's order."""
    count = min(int(count), len(dataset.train))
    return dataset.train.images[np.sort(np.random.default_rng(SEED).permutation(len(dataset.train))[:count])]


def publish(figures: dict, record: dict, state: dict | None, run_name: str, results: Path | str) -> Path:
    """Write the figures with what identifies the run and its checkpoint (epochs done, and the
    batch of a mid-epoch one) to ``results/evaluations/<run>-<split>-bn-recalibrated.json``,
    with the validation top-1 the run recorded for the checkpoint's epoch where it can be told
    (:func:`_checkpoint_identity`)."""
    payload = figures_only(figures)
    payload.update(_checkpoint_identity(record, state, run_name))
    return _write(Path(results) / EVALUATIONS / f"{run_name}-{figures['split']}{SUFFIX}", payload)


def publish_augmentation_scores(scores: dict, train_images: int, images_scored: int, record: dict,
                                state: dict | None, run_name: str, results: Path | str, settings: dict | None = None,
                                validation_augmented: float | None = None) -> Path:
    """``benchmarks/bn_statistics.py --save``: the validation top-1 with the statistics
    re-estimated through each part of the augmentation (and each variant's augmentation
    settings, where given), with the score of the validation images augmented as in training
    where measured, to ``results/evaluations/<run>-bn-statistics.json``."""
    payload = {"scores": scores, "train_images": train_images, "images_scored": images_scored, "seed": SEED,
               **_checkpoint_identity(record, state, run_name)}
    if settings is not None:
        payload["settings"] = {name: settings.get(name) for name in scores if name in settings}
    if validation_augmented is not None:
        payload["validation_augmented_top1"] = validation_augmented
    return _write(Path(results) / EVALUATIONS / f"{run_name}{AUGMENTATION_SUFFIX}", payload)


def _checkpoint_identity(record: dict, state: dict | None, run_name: str) -> dict:
    """What a published evaluation says of the run and its checkpoint."""
    recorded = recorded_score(record, state)
    state = state or {}
    return {"run": run_name, "key": record_key(record), "studys_way": the_studys_way(record),
            "model": record.get("model"), "profile": record.get("profile"),
            "batch_size": record.get("batch_size"), "backend": record.get("backend"), "device": record.get("device"),
            "dtype_policy": record.get("dtype_policy"), "epochs_planned": record.get("epochs"),
            "epochs_done": state.get("epochs_done", record.get("epochs_run")),
            "batches_into_next_epoch": (state.get("partial") or {}).get("batches", 0),
            # What the run recorded for these weights: the figure that tells them from another run's.
            "val_top1_recorded": recorded.top1 if recorded else None,
            "val_top1_recorded_epoch": recorded.epoch if recorded else None}


def _write(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_json(path, payload)


def published(model: str, folder: Path | str | None = None, suffix: str = f"-val{SUFFIX}") -> list[dict]:
    """The published full-scale evaluations of ``model``'s runs on the validation images (or,
    with ``suffix=AUGMENTATION_SUFFIX``, its augmentation scores), in file-name order."""
    found = []
    for path in sorted((Path(folder or default_results_dir()) / EVALUATIONS).glob(f"*{suffix}")):
        payload = files.read_json_object(path)
        if payload.get("model") == model and payload.get("profile") == "full":
            found.append(payload)
    return found


def against_its_record(e: dict, folder: Path | str | None = None) -> tuple[str, list[str]]:
    """How a published evaluation ``e`` stands to the record the book shows for its run
    (``<run>.json`` beside it): ('', []) where nothing tells them apart; ('missing', []) where
    there is no such record; ('another', reasons) where the weights are of another run of the
    same name (another precision, or another figure recorded at the same epoch); ('later', [its
    epoch, the record's epochs]) where they are of an epoch beyond the record's last."""
    path = Path(folder or default_results_dir()) / f"{e.get('run')}.json"
    if not path.is_file():
        return "missing", []
    record = files.read_json_object(path)
    reasons = []
    if e.get("dtype_policy") and record.get("dtype_policy") and e["dtype_policy"] != record["dtype_policy"]:
        reasons.append(f"trained in {e['dtype_policy']}, the record's run in {record['dtype_policy']}")
    # Not the epochs planned: a record published before its run's plan was raised plans fewer.
    done, run = e.get("epochs_done"), int(record.get("epochs_run") or 0)
    history = (record.get("history") or {}).get("val_accuracy") or []
    recorded, epoch, noise = e.get("val_top1_recorded"), e.get("val_top1_recorded_epoch"), 1e-6
    if epoch is None and not e.get("batches_into_next_epoch"):  # a file from before the epoch was kept:
        # its own score with the statistics training left is the run's figure at that epoch, to float noise
        recorded = e.get("top1_as_trained", (e.get("scores") or {}).get("the statistics training left"))
        epoch, noise = done, AS_RECORDED
        if e.get("images_scored") != (record.get("dataset") or {}).get("val_images", e.get("images_scored")):
            recorded = None
    if recorded is not None and isinstance(epoch, int) and 1 <= epoch <= len(history) \
            and abs(history[epoch - 1] - recorded) > noise + 1e-9:
        reasons.append(f"their run's validation top-1 at epoch {epoch} was {pct(recorded)}, the record's "
                       f"{pct(history[epoch - 1])}")
    if reasons:
        return "another", reasons
    if isinstance(done, int) and done > run:
        return "later", [str(done), str(run)]
    return "", []


def beside_its_record(e: dict, folder: Path | str | None = None) -> str:
    """A sentence where a published evaluation ``e`` is not of the weights whose record the
    book shows for its run (:func:`against_its_record`); "" where nothing tells them apart. A
    chapter then cannot set one run's evaluation beside another's record without saying so."""
    kind, reasons = against_its_record(e, folder)
    name = f"`{e.get('run')}.json`"
    if kind == "missing":
        return f" No record of this run is published beside it ({name})."
    if kind == "another":
        return (f" These figures are of another run of this name than the record beside them ({name}): "
                f"{'; '.join(reasons)}.")
    if kind == "later":
        return f" These figures are of epoch {reasons[0]}, beyond the {reasons[1]} epochs of the record beside them ({name})."
    return ""


def show_augmentation_scores(model: str, folder: Path | str | None = None):
    """Chapter 9's figure: the published scores with the statistics re-estimated through each
    part of the augmentation, one bar each (of the last file in name order, where several runs
    of ``model`` have one), or a line saying what to run."""
    from tinylib import plots

    measured = published(model, folder, AUGMENTATION_SUFFIX)
    if not measured:
        print(f"which part of the augmentation moves the statistics: {NOT_YET_MEASURED} "
              "(python benchmarks/bn_statistics.py RUN_DIR --save book/results)")
        return None
    e = measured[-1]
    where = f"after epoch {e['epochs_done']}" + (f" and {e['batches_into_next_epoch']:,} batches"
                                                 if e.get("batches_into_next_epoch") else "")
    title = (f"{model_title(model)} ({e['key']}), {where}: validation top-1 on {e['images_scored']:,} images, with\n"
             f"BatchNorm's statistics as training left them (first bar), then re-estimated over\n"
             f"{e['train_images']:,} training images passed through each part of the augmentation")
    caveat = beside_its_record(e, folder).strip()
    if caveat:  # in the figure's own title: a line printed above it would read as the cell's
        title += "\n" + textwrap.fill(caveat.replace("`", ""), 90, break_on_hyphens=False)
    study = STUDY_RESULTS.get(model, {}).get("val") if e.get("studys_way") else None
    return plots.scores_by_variant(e["scores"], title, references={"the study": study} if study else None)


def augmented_validation_story(model: str, folder: Path | str | None = None) -> str:
    """A chapter's sentence: the run's validation images passed once through its own
    augmentation, scored with the statistics training left (``bn_statistics.py --save``), beside
    the same images as they are; or that it is not yet measured."""
    measured = [e for e in published(model, folder, AUGMENTATION_SUFFIX) if "validation_augmented_top1" in e]
    if not measured:
        return (f"**Validation images augmented as in training:** {model_title(model)}: {NOT_YET_MEASURED} "
                "(`python benchmarks/bn_statistics.py RUN_DIR --save book/results` on a full-scale run folder).")
    e = measured[-1]
    turned, plain = e["validation_augmented_top1"], e["scores"]["the statistics training left"]
    return (f"**Validation images augmented as in training:** with the statistics its training left, "
            f"{model_title(model)} ({e['key']}) after epoch {e['epochs_done']} scores {pct(turned)} on its "
            f"{e['images_scored']:,} validation images passed once through the run's own augmentation, against "
            f"{pct(plain)} on the same images as they are: what the run would report had its validation "
            "batches come from a generator that augments, as training's does." + beside_its_record(e, folder))


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
    sentences = [_sentence(title, e, study) + beside_its_record(e, folder) for e in evaluations]
    return "**BatchNorm's statistics:** " + " ".join(sentences)


def _sentence(title: str, e: dict, study: float | None) -> str:
    where = f"after epoch {e['epochs_done']}"
    if e.get("epochs_planned"):
        where += f" of its {e['epochs_planned']} planned"
    if e.get("batches_into_next_epoch"):
        where += f" and {e['batches_into_next_epoch']:,} batches of the next"
    n, before, after = e["images_scored"], e["top1_as_trained"], e["top1"]
    p = e["mcnemar_p"]
    verdict = "a change beyond noise" if p < 0.05 else "a change not shown beyond noise"
    precision = f", {e['dtype_policy']}" if e.get("dtype_policy") else ""
    text = (f"{title} ({e['key']}, batch {e['batch_size']}{precision}), {where}, scores {pct(before)} on the {n:,} "
            f"validation images with the statistics its training left, and {pct(after)} once they are "
            f"re-estimated over {e['train_images']:,} training images as they are, unaugmented: with the same "
            f"trained weights, {e['right_only_recalibrated']:,} images are right only after the re-estimate and "
            f"{e['right_only_as_trained']:,} only before it, {verdict} (McNemar's exact test, {p_text(p)}).")
    if study is not None and e.get("studys_way"):
        text += (f" As trained it is {against_phrase(before, n, study, n)} the study's {pct(study)}; re-estimated, "
                 f"{against_phrase(after, n, study, n)} it.")
    return text
