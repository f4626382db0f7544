"""The book's figures: data, augmentation, training curves and evaluation.

Every function draws from arrays, histories or an ``Evaluation`` that already
exist (plots never train or predict; the Grad-CAM figures at the end are the
exception: they run the model they explain), returns the matplotlib ``Figure`` and
never calls ``plt.show()``.  In a notebook, assign it (``fig = plots...``): pyplot
draws the open figures at the end of a cell, once. A cell that ends with the bare
call shows the figure twice (pyplot's drawing, then IPython's display of the value).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import PercentFormatter

from tinylib.results import history_of

__all__ = [
    "accuracy_against_hours",
    "augmentation_grid",
    "confused_pairs",
    "confusion_heatmap",
    "curves_by_steps",
    "explain_prediction",
    "first_layer_filters",
    "gradcam_grid",
    "guesses",
    "idg_side_by_side",
    "images_per_class",
    "layer_times_by_precision",
    "learning_rate_schedules",
    "mixed_batch",
    "misclassified_examples",
    "most_confused_classes",
    "results_table_plot",
    "sample_grid",
    "training_curves",
]

TRAIN_STYLE = dict(linestyle="-")
VAL_STYLE = dict(linestyle="--")
MAX_NAMED_BARS = 60  # beyond this, class names on an axis overlap


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _image_grid(count: int, cols: int, cell: float = 1.6, title_lines: int = 1, figsize=None):
    """A figure with exactly ``count`` image axes, ``cols`` per row, no ticks."""
    cols = max(1, min(cols, count))
    rows = max(1, math.ceil(count / cols))
    row_height = cell + 0.2 * title_lines
    fig, axes = plt.subplots(rows, cols, figsize=figsize or (cell * cols, row_height * rows),
                             squeeze=False)
    axes = axes.ravel()
    for ax in axes[count:]:
        fig.delaxes(ax)  # no empty frames after the last image
    for ax in axes[:count]:
        ax.set_axis_off()
    return fig, list(axes[:count])


def _show_image(ax, image, title: str | None = None, fontsize: float = 8) -> None:
    """uint8 images as they are; float images are taken as [0, 1] (augment's convention)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0.0, 1.0)
    ax.imshow(image)
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def _label_name(label: int, class_names) -> str:
    return class_names[label] if label >= 0 else "(no label)"


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def sample_grid(split, class_names, n: int = 16, seed: int = 0, cols: int = 8, figsize=None):
    """``n`` random images of a split with their class names, to see what the data is."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(split), size=min(n, len(split)), replace=False)
    fig, axes = _image_grid(len(picked), cols, figsize=figsize)
    for ax, i in zip(axes, picked):
        _show_image(ax, split.images[i], _label_name(int(split.labels[i]), class_names))
    fig.tight_layout()
    return fig


def images_per_class(split, class_names, ax=None, figsize=None):
    """One bar per class: is the split balanced?  Names on the axis while they fit."""
    labels = np.asarray(split.labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
    if ax is None:
        named = len(counts) <= MAX_NAMED_BARS
        _, ax = plt.subplots(figsize=figsize or (max(6.0, 0.25 * len(counts)) if named else 10.0, 3.5))
    positions = np.arange(len(counts))
    ax.bar(positions, counts, color="C0")
    if len(counts) <= MAX_NAMED_BARS:
        ax.set_xticks(positions, class_names, rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"class (0..{len(counts) - 1})")
    ax.set_ylabel("images")
    ax.set_title(f"{counts.sum():,} images in {len(counts)} classes "
                 f"({counts.min()}-{counts.max()} per class)")
    ax.figure.tight_layout()
    return ax.figure


# ----------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------


def _as_transform(transform, seed: int | None) -> Callable:
    """A callable uint8 images -> images; a Keras layer is run in training mode on [0, 1]."""
    keras = sys.modules.get("keras")  # a layer means Keras is loaded; never start it for a plot
    if keras is not None and isinstance(transform, keras.layers.Layer):
        from tinylib import augment

        return lambda images: augment.apply(transform, np.asarray(images, "float32") / 255.0, seed=seed)
    return transform


def augmentation_grid(images, transforms, seed: int | None = 0, figsize=None):
    """Rows are images; columns the original, then each transform applied to it.

    ``transforms`` maps a name to a callable (uint8 images (N, H, W, 3) ->
    images, uint8 or float in [0, 1]) or to a Keras layer, such as the values
    of ``tinylib.augment.single_transform_layers()``; a single callable or
    layer is shown as 'augmented'.  ``seed`` makes layers repeatable: the k-th column's
    layer draws from ``seed + k``, so that columns of one kind of layer (four random crops)
    show four draws, not one four times; None leaves each layer's own generator as it is.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if not isinstance(transforms, Mapping):
        transforms = {"augmented": transforms}
    columns = {"original": images}
    for k, (name, transform) in enumerate(transforms.items()):
        columns[name] = np.asarray(_as_transform(transform, None if seed is None else seed + k)(images))
    fig, axes = _image_grid(len(images) * len(columns), len(columns), figsize=figsize)
    for col, (name, shown) in enumerate(columns.items()):
        for row in range(len(images)):
            _show_image(axes[row * len(columns) + col], shown[row], name if row == 0 else None, 9)
    fig.tight_layout()
    return fig


def idg_side_by_side(images, params, fill_mode: str = "nearest", figsize=None):
    """The same parameters through Keras' ImageDataGenerator and through tinylib.

    Rows are uint8 images; columns the original, IDG's ``apply_transform``,
    ``tinylib.augment.apply_idg_transform`` and their difference in grey levels
    (0-255 scale, shown on a 0-2 scale: anything above one level stands out).
    ``params`` is one dict of IDG parameters (``theta``, ``tx``, ``ty``, ``shear``,
    ``zx``, ``zy``, ``flip_horizontal``, ``brightness``) for every image, or a list
    with one per image.  Needs Keras (it runs both).
    """
    from tinylib import augment

    ImageDataGenerator = augment.image_data_generator_class()
    images = np.asarray(images)
    images = images[None] if images.ndim == 3 else images
    params = [params] * len(images) if isinstance(params, Mapping) else list(params)
    generator = ImageDataGenerator(fill_mode=fill_mode)
    fig, axes = _image_grid(4 * len(images), 4, cell=2.0, title_lines=2, figsize=figsize)
    for row, (image, p) in enumerate(zip(images, params)):
        idg = generator.apply_transform(image.astype("float32"), dict(p)) / 255.0
        ours = np.asarray(augment.apply_idg_transform(image / 255.0, p, fill_mode=fill_mode))
        diff = np.abs(ours - idg).max(axis=-1) * 255.0
        cells = axes[4 * row: 4 * row + 4]
        _show_image(cells[0], image, "original" if row == 0 else None, 9)
        _show_image(cells[1], idg, "ImageDataGenerator" if row == 0 else None, 9)
        _show_image(cells[2], ours, "tinylib (one resample)" if row == 0 else None, 9)
        cells[3].imshow(diff, cmap="magma", vmin=0, vmax=2)
        cells[3].set_title(f"|difference| max {diff.max():.1f}\ngrey levels (scale 0-2)", fontsize=9)
    fig.suptitle("Same parameters, IDG vs tinylib", fontsize=10)
    fig.tight_layout()
    return fig


def mixed_batch(batch, class_names, n: int = 8, cols: int = 8, figsize=None):
    """Images of a MixUp/CutMix batch, each titled with the labels it carries now.

    ``batch`` is ``(images, labels)`` as ``tinylib.mixing.mixed_batch`` returns them:
    float images in 0..255 and soft labels; the title lists the classes with a
    weight above 1%, largest first.
    """
    images, labels = (np.asarray(a) for a in batch)
    count = min(n, len(images))
    fig, axes = _image_grid(count, cols, cell=1.8, title_lines=2, figsize=figsize)
    for ax, image, label in zip(axes, images[:count], labels[:count]):
        parts = [f"{label[c]:.0%} {class_names[c].split(',')[0]}" for c in np.argsort(-label) if label[c] > 0.01]
        _show_image(ax, np.clip(image, 0, 255).astype("uint8"), "\n".join(parts[:2]), 7)
    fig.tight_layout()
    return fig


def learning_rate_schedules(recipes, steps_per_epoch: int, epochs: int, ax=None, figsize=None):
    """The learning rate of each recipe over a run, step by step (log scale)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (7, 3))
    total = steps_per_epoch * epochs
    steps = np.unique(np.linspace(0, total - 1, min(total, 400)).astype(int))  # enough points for a curve
    for label, recipe in recipes.items():
        schedule = recipe.learning_rate_schedule(steps_per_epoch, epochs)
        rates = [float(schedule(int(s))) if callable(schedule) else float(schedule) for s in steps]
        ax.plot(steps / steps_per_epoch, rates, label=f"{label} ({recipe.optimizer})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return ax.figure


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def _labelled_histories(histories) -> dict:
    """{label: history}; a single Run, record or history gets one label."""
    single = hasattr(histories, "history") or (
        isinstance(histories, Mapping)
        and ("history" in histories or any(isinstance(v, (list, tuple)) for v in histories.values()))
    )
    if single:
        label = histories.get("model", "run") if isinstance(histories, Mapping) else "run"
        return {label: history_of(histories)}
    return {label: history_of(h) for label, h in histories.items()}


def training_curves(histories, metrics=("loss", "accuracy"), figsize=None, first_epochs: Mapping | None = None):
    """One panel per metric; train solid, validation dashed; one colour per run.

    ``histories`` maps a label to a history dict, a ``tinylib.runs.Run`` or
    a run record (``runs.load_run``); a single one of those works too.
    Epochs count from 1, as Keras prints them. ``first_epochs`` maps a label to the
    epochs trained before its history began (a fine-tuning's second stage, after its
    first): its curve starts after them. A run of one epoch is a dot.
    """
    labelled = _labelled_histories(histories)
    before = dict(first_epochs or {})
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize or (4.5 * len(metrics), 3.5),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for colour, (label, history) in enumerate(labelled.items()):
            for key, style, part in ((metric, TRAIN_STYLE, "train"), (f"val_{metric}", VAL_STYLE, "val")):
                values = history.get(key)
                if values:
                    epochs = np.arange(1, len(values) + 1) + before.get(label, 0)
                    ax.plot(epochs, values, color=f"C{colour}", label=f"{label} {part}",
                            marker="o" if len(values) == 1 else None, **style)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        _metric_axis(ax, metric)
        if ax.lines:
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{metric}' in these histories", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    fig.tight_layout()
    return fig


def curves_by_steps(records, metric: str = "val_accuracy", references: Mapping | None = None, figsize=None):
    """One metric of runs that differ in their batch, against epochs (left) and against
    optimizer steps (right), one colour per run: an epoch of a smaller batch is more steps.

    ``records`` maps a label to a run record (it needs ``history``, ``batch_size`` and
    ``dataset['train_images']``), as ``diagnose.by_batch`` gives them; ``references`` maps
    a label to a level drawn across both panels (the study's figure).
    """
    from tinylib.diagnose import record_steps_per_epoch

    fig, (by_epoch, by_step) = plt.subplots(1, 2, figsize=figsize or (9, 3.5), sharey=True)
    for colour, (label, record) in enumerate(records.items()):
        values = np.asarray(record["history"][metric], dtype=float)
        epochs = np.arange(1, len(values) + 1)
        steps = epochs * record_steps_per_epoch(record)
        by_epoch.plot(epochs, values, color=f"C{colour}", marker=".", label=label)
        by_step.plot(steps / 1000, values, color=f"C{colour}", marker=".", label=label)
    for ax in (by_epoch, by_step):
        _reference_levels(ax, references)
    by_epoch.set_xlabel("epoch")
    by_epoch.xaxis.get_major_locator().set_params(integer=True)
    by_step.set_xlabel("optimizer steps (thousands)")
    _metric_axis(by_epoch, metric)
    for ax in (by_epoch, by_step):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _reference_levels(ax, references: Mapping | None) -> None:
    """Each ``references`` level (a label: a value, such as the study's figure) drawn across ``ax``."""
    for label, level in (references or {}).items():
        ax.axhline(level, color="grey", linestyle=":", label=label)


def _metric_axis(ax, metric: str) -> None:
    """The y axis named after ``metric``, in percent where it is an accuracy (top-5 too)."""
    names = {"val_accuracy": "validation top-1", "accuracy": "top-1 accuracy", "top5": "top-5 accuracy",
             "val_top5": "validation top-5"}
    ax.set_ylabel(names.get(metric, metric.replace("_", " ")))
    if "accuracy" in metric or metric.endswith("top5"):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def accuracy_against_hours(records, metric: str = "val_accuracy", references: Mapping | None = None,
                           budget_hours: float | None = None, ax=None, figsize=None):
    """One metric of runs against the hours each had trained at the end of every epoch
    (the sum of its epochs' own seconds, so a run's start-up is left out), one colour per
    run: what an afternoon of a CPU buys with each network.

    ``records`` maps a label to a run record (it needs ``history[metric]`` and
    ``history['seconds']``), as ``results.hours_records`` gives them; ``references`` maps
    a label to a level drawn across (``results.study_best``); ``budget_hours`` draws the
    budget's end. Hours on different machines or precisions are not one scale: say which
    each run had (the labels of ``results.hours_records`` name the precision).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (9, 4))
    left_out = []
    for colour, (label, record) in enumerate(records.items()):
        history = record.get("history") or {}
        values, seconds = history.get(metric), history.get("seconds")
        if not values or not seconds or len(seconds) < len(values):
            left_out.append(label)  # an older record: no hours to place its epochs at
            continue
        hours = np.cumsum(np.asarray(seconds[:len(values)], dtype=float)) / 3600
        ax.plot(hours, values, color=f"C{colour}", marker=".", label=label)
    if left_out:
        ax.text(0.99, 0.02, f"left out, no seconds per epoch in the record: {', '.join(left_out)}", ha="right",
                va="bottom", transform=ax.transAxes, fontsize=7, color="grey")
    _reference_levels(ax, references)
    if budget_hours is not None:
        ax.axvline(budget_hours, color="black", linestyle="--", linewidth=1, label=f"{budget_hours:g} hours")
    ax.set_xlabel("hours of training (each epoch's own time, summed)")
    _metric_axis(ax, metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: the curves end high
    ax.figure.tight_layout()
    return ax.figure


def scores_by_variant(scores: Mapping[str, float], title: str, references: Mapping | None = None, ax=None,
                      figsize=None):
    """One horizontal bar per variant (top to bottom in ``scores``' order), its accuracy
    written at its end, and reference levels as dotted lines."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (8.0, 0.45 * len(scores) + 1.6))
    names, values = list(scores), [scores[name] for name in scores]
    positions = np.arange(len(names))[::-1]
    ax.barh(positions, values, color=[f"C{0 if i else 1}" for i in range(len(names))])
    ax.set_yticks(positions, names)
    for position, value in zip(positions, values):
        ax.text(value, position, f" {value:.2%}", va="center", fontsize=8)
    for label, level in (references or {}).items():
        ax.axvline(level, color="grey", linestyle=":", label=f"{label} ({level:.2%})")
    if references:
        ax.legend(loc="lower right", fontsize=8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(0, max(values + [v for v in (references or {}).values()]) * 1.15)
    ax.set_title(title, fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def layer_times_by_precision(entry: dict, ax=None, figsize=None):
    """Each layer's milliseconds in a training step (forward and backward, timed alone), one
    bar per precision, in the network's order: the layers that multiply matrices shrink with
    bfloat16, the ones that move memory hardly do. ``entry`` is one model's measurement
    (``layer_times.measurement``)."""
    import pandas as pd

    frame = pd.DataFrame([
        {"layer": f"{row['layer']} ({row['kind']})", "ms": 1e3 * row["seconds"], "precision": policy}
        for policy, side in entry["policies"].items() for row in side["layers"]])
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (8, 0.32 * frame["layer"].nunique() + 1.2))
    order = sorted(entry["policies"], key=lambda policy: policy != "float32")  # float32 first, in one colour
    sns.barplot(frame, x="ms", y="layer", hue="precision", hue_order=order, orient="h", ax=ax)
    ax.set_xlabel("ms a step: each layer's forward and backward, timed alone")
    ax.set_ylabel("")
    ax.grid(axis="x", alpha=0.3)
    from tinylib.results import model_title

    model = f"{model_title(entry['model'])}: " if entry.get("model") else ""
    ax.set_title(f"{model}{entry['device']}, batch {entry['batch_size']}, measured {entry['measured']}", fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def most_confused_classes(evaluation, top: int = 15) -> np.ndarray:
    """The ``top`` classes with the most off-diagonal errors (as true or as predicted)."""
    matrix = evaluation.confusion_matrix
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    return np.argsort(-errors, kind="stable")[:top]


def confusion_heatmap(evaluation, top: int = 15, ax=None, figsize=None):
    """The confusion matrix restricted to the classes most often confused.

    200 x 200 cells cannot be read; the ``top`` classes with the most errors
    can.  Colours are scaled to the largest mistake, so the (saturated)
    diagonal does not wash the confusions out; cells are annotated with
    their counts, zeros left blank so the mistakes stand out.
    """
    classes = most_confused_classes(evaluation, top)
    matrix = evaluation.confusion_matrix[np.ix_(classes, classes)]
    names = [evaluation.class_names[i] for i in classes]
    mistakes = matrix - np.diag(np.diag(matrix))
    if ax is None:
        side = 2.0 + 0.5 * len(classes)
        _, ax = plt.subplots(figsize=figsize or (side + 1.0, side))
    counts = np.where(matrix > 0, matrix.astype(str), "")
    sns.heatmap(matrix, annot=counts, fmt="", cmap="Blues", vmin=0, vmax=max(int(mistakes.max()), 1),
                cbar=False, square=True, xticklabels=names, yticklabels=names, ax=ax,
                annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusions among the {len(classes)} most confused classes")
    ax.figure.tight_layout()
    return ax.figure


def confused_pairs(evaluation, images, pairs: int = 3, per_class: int = 4, figsize=None):
    """The most confused pairs of classes, with images of both: what the mistakes look like.

    One row per pair (true class, the class it was taken for, and how often):
    ``per_class`` images of the true class, those taken for the other first (the
    mistakes themselves, framed in red), then ``per_class`` images of the other class.
    ``images`` are those the evaluation was computed on, in the same order.
    """
    _check_same_images(evaluation, images)
    confused = evaluation.most_confused_classes(pairs)
    if not confused:
        fig, ax = plt.subplots(figsize=figsize or (4, 1))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no confused pairs: every image was classified correctly", ha="center", va="center")
        return fig
    cols = 2 * per_class
    fig, axes = plt.subplots(len(confused), cols, figsize=figsize or (1.3 * cols, 1.75 * len(confused)),
                             squeeze=False)
    labels, predictions = evaluation.labels, evaluation.predictions
    for row, (true, predicted, count) in enumerate(confused):
        mistakes = np.flatnonzero((labels == true) & (predictions == predicted))
        others = np.flatnonzero((labels == true) & (predictions != predicted))
        for half, (cls, members) in enumerate(((true, np.concatenate([mistakes, others])),
                                               (predicted, np.flatnonzero(labels == predicted)))):
            for j in range(per_class):
                ax = axes[row, half * per_class + j]
                ax.set_axis_off()
                if j < len(members):
                    _show_image(ax, images[members[j]])
                    if half == 0 and j < len(mistakes):  # taken for the other class: framed
                        ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False,
                                                   edgecolor="red", linewidth=2, clip_on=False))
            name = evaluation.class_names[cls]
            axes[row, half * per_class].set_title(
                ("true: " if half == 0 else "taken for: ") + name.split(",")[0], fontsize=8, loc="left")
        axes[row, cols - 1].text(1.05, 0.5, f"{count}x", transform=axes[row, cols - 1].transAxes,
                                 va="center", fontsize=9)
    fig.tight_layout()
    return fig


def _check_same_images(evaluation, images) -> None:
    """Pictures of other images than the ones scored would be titled with the wrong answers."""
    if len(images) != len(evaluation.labels):
        raise ValueError(f"{len(images):,} images for an evaluation of {len(evaluation.labels):,}: pass the "
                         "images the evaluation scored, in its order (the split's .images)")


def misclassified_examples(evaluation, images, n: int = 12, cols: int = 6, figsize=None):
    """The model's most confident mistakes, titled 'true -> predicted (p=0.83)'.

    ``images`` are those the evaluation was computed on, in the same order.
    """
    _check_same_images(evaluation, images)
    wrong = evaluation.misclassified(n)
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=figsize or (4, 1))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return fig
    names, predictions, confidences = evaluation.class_names, evaluation.predictions, evaluation.confidences
    fig, axes = _image_grid(len(wrong), cols, cell=2.0, title_lines=2, figsize=figsize)
    for ax, i in zip(axes, wrong):
        title = f"{names[evaluation.labels[i]]} ->\n{names[predictions[i]]} (p={confidences[i]:.2f})"
        _show_image(ax, images[i], title, 8)
    fig.tight_layout()
    return fig


def guesses(evaluation, images, n: int = 12, cols: int = 6, seed: int = 0, figsize=None):
    """``n`` random images with the true class and the model's guess: green right, red wrong."""
    _check_same_images(evaluation, images)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(evaluation.labels), size=min(n, len(evaluation.labels)), replace=False))
    names, predictions, confidences = evaluation.class_names, evaluation.predictions, evaluation.confidences
    fig, axes = _image_grid(len(picked), cols, cell=2.0, title_lines=2, figsize=figsize)
    for ax, i in zip(axes, picked):
        right = predictions[i] == evaluation.labels[i]
        _show_image(ax, images[i], f"{names[evaluation.labels[i]]}\nguess: {names[predictions[i]]} "
                                   f"({confidences[i]:.2f})", 8)
        ax.title.set_color("tab:green" if right else "tab:red")
    fig.tight_layout()
    return fig


def results_table_plot(rows, ax=None, figsize=None):
    """Train and val accuracy per model, side by side, for the results chapter.

    ``rows`` are dicts with 'model', 'source' ('study', 'this book', or 'this book, batch 32' for a
    run on another batch),
    'train' and 'val' (accuracies in [0, 1], or None), and optionally 'val_interval'
    (low, high), drawn as an error bar.  A None is drawn as no
    bar with a 'not yet run' note: a missing result never looks like a zero; a row
    with ``unfinished`` says "so far" under its bars.
    """
    rows = list(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (max(5.0, 1.1 * len(rows) + 1.5), 4))
    positions = np.arange(len(rows))
    width = 0.38
    for offset, key, colour in ((-width / 2, "train", "C0"), (width / 2, "val", "C1")):
        present = [i for i, row in enumerate(rows) if row.get(key) is not None]
        errors = None
        if key == "val" and any(rows[i].get("val_interval") for i in present):
            # A row's 95% interval (``val_interval``) as an error bar; none where it has none.
            errors = np.array([[rows[i][key] - rows[i]["val_interval"][0], rows[i]["val_interval"][1] - rows[i][key]]
                               if rows[i].get("val_interval") else [0.0, 0.0] for i in present]).T
        bars = ax.bar(positions[present] + offset, [rows[i][key] for i in present], width,
                      color=colour, label=key, yerr=errors, capsize=3 if errors is not None else 0)
        ax.bar_label(bars, labels=[f"{rows[i][key]:.0%}" for i in present], fontsize=7)
        for i in sorted(set(range(len(rows))) - set(present)):
            ax.text(positions[i] + offset, 0.02, "not yet run", rotation=90, ha="center",
                    va="bottom", fontsize=7, color="grey")
    # A long source ('this book, batch 32') over two lines, so that neighbouring labels do not meet.
    ax.set_xticks(positions, [f"{row['model']}\n(" + row.get("source", "?").replace(", ", ",\n")
                              + (", so far)" if row.get("unfinished") else ")") for row in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per model: the study's numbers and this book's runs")
    ax.figure.tight_layout()
    return ax.figure


def _first_convolution(model):
    """The first Conv2D of ``model`` (nested models included) and whether an
    ImageNetPreprocess layer (RGB -> BGR) comes before it."""
    import keras

    from tinylib.models import ImageNetPreprocess

    seen_bgr = False

    def walk(layer):
        nonlocal seen_bgr
        for inner in getattr(layer, "layers", []):
            if isinstance(inner, ImageNetPreprocess):
                seen_bgr = True
            if isinstance(inner, keras.layers.Conv2D):
                return inner
            found = walk(inner)
            if found is not None:
                return found
        return None

    conv = walk(model)
    if conv is None:
        raise ValueError(f"{model.name} has no Conv2D layer")
    return conv, seen_bgr


def first_layer_filters(models: Mapping, max_filters: int = 32, cols: int = 16, figsize=None):
    """The kernels of each model's first convolution, drawn as small RGB images.

    ``models`` maps a label to a Keras model. The first layer is the only one whose
    weights are pictures: each kernel is a patch of colour that the layer responds to.
    All kernels of a layer share one scale (mid-grey is zero), so a weak filter looks
    faint; the channels are put back in RGB order where the model's preprocessing feeds
    the convolution BGR (Model 5's ImageNet weights).
    """
    models = dict(models)
    layers = {label: _first_convolution(model) for label, model in models.items()}
    rows = [math.ceil(min(max_filters, conv.filters) / cols) for conv, _ in layers.values()]
    fig = plt.figure(layout="constrained", figsize=figsize or (cols * 0.5, sum(rows) * 0.5 + 0.35 * len(models)))
    panels = fig.subfigures(len(models), 1, height_ratios=[r + 0.7 for r in rows], squeeze=False)[:, 0]
    for panel, (label, (conv, bgr)), count in zip(panels, layers.items(), rows):
        kernel = np.asarray(conv.get_weights()[0], dtype=np.float32)  # (height, width, in, out)
        if kernel.shape[2] != 3:
            raise ValueError(f"{label}: the first convolution sees {kernel.shape[2]} channels, not RGB")
        if bgr:
            kernel = kernel[:, :, ::-1, :]
        scale = np.abs(kernel).max() or 1.0
        shown = min(max_filters, kernel.shape[3])
        axes = panel.subplots(count, cols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k < shown:
                ax.imshow(0.5 + 0.5 * kernel[:, :, :, k] / scale, interpolation="nearest")
        panel.suptitle(f"{label}: {shown} of {kernel.shape[3]} filters, {kernel.shape[0]}x{kernel.shape[1]} "
                       f"({conv.name})", x=0.01, ha="left", fontsize=9)
    return fig


# ----------------------------------------------------------------------------
# Explanations (Grad-CAM): these run the model, see tinylib.gradcam
# ----------------------------------------------------------------------------

HEATMAP_CMAP = "jet"
HEATMAP_ALPHA = 0.45


def _short_name(name: str) -> str:
    """'goldfish, Carassius auratus' -> 'goldfish': long synonyms overflow titles."""
    return str(name).split(",")[0].strip()


def _as_uint8(image) -> np.ndarray:
    """Model inputs are 0..255 (uint8 or float); show them as uint8."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)


def _show_heatmap(ax, image, heatmap, title: str | None = None, fontsize: float = 8, **title_style) -> None:
    """The image with a Grad-CAM map in [0, 1] over it, half transparent."""
    ax.imshow(_as_uint8(image))
    ax.imshow(heatmap, cmap=HEATMAP_CMAP, alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=fontsize, **title_style)


def explain_prediction(model, image, class_names, label: int | None = None, k: int = 5,
                       layer: str | None = None, figsize=None):
    """The image, Grad-CAM of the top-1 class over it, and the top-``k`` probabilities.

    ``image`` is one image, 0..255 as the model takes it; ``label`` its true
    class index, if known (its bar is highlighted).  ``layer`` defaults to the
    model's last feature map (``tinylib.gradcam.find_target_layer``).
    """
    from tinylib import gradcam  # starts Keras: only figures that run a model do

    probabilities = gradcam.class_probabilities(model, image)[0]
    top = np.argsort(-probabilities, kind="stable")[:k]
    heatmap = gradcam.gradcam(model, image, class_index=int(top[0]), layer=layer)[0]
    fig, (ax_image, ax_cam, ax_bars) = plt.subplots(1, 3, figsize=figsize or (11, 3.4),
                                                    gridspec_kw={"width_ratios": [1, 1, 1.4]})
    image = np.asarray(image)
    true_title = "image" if label is None else _short_name(_label_name(label, class_names))
    _show_image(ax_image, _as_uint8(image), true_title, 9)
    ax_image.set_axis_off()
    predicted = _short_name(class_names[top[0]])
    _show_heatmap(ax_cam, image, heatmap, f"Grad-CAM: {predicted} (p={probabilities[top[0]]:.2f})", 9)

    positions = np.arange(len(top))
    colours = ["C1" if label is not None and i == label else "C0" for i in top]
    ax_bars.barh(positions, probabilities[top], color=colours)
    ax_bars.set_yticks(positions, [_short_name(class_names[i]) for i in top], fontsize=8)
    ax_bars.invert_yaxis()  # most probable on top
    ax_bars.set_xlim(0, 1)
    ax_bars.xaxis.set_major_formatter(PercentFormatter(1.0))
    missing = label is not None and label >= 0 and label not in top
    ax_bars.set_title(f"top-{len(top)}" + (" (true class not among them)" if missing else ""),
                      fontsize=9)
    fig.tight_layout()
    return fig


def gradcam_grid(models, images, class_names, labels=None, figsize=None):
    """Rows are images; columns the image, then each model's Grad-CAM of its top-1 class.

    ``models`` maps a display name to a model; ``images`` are 0..255 as the
    models take them.  With ``labels`` each title is green when that model
    is right and red when it is wrong.
    """
    from tinylib import gradcam  # starts Keras: only figures that run a model do

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    columns = 1 + len(models)
    fig, axes = _image_grid(len(images) * columns, columns, cell=1.9, title_lines=2, figsize=figsize)
    for row, image in enumerate(images):
        title = None if labels is None else _short_name(_label_name(int(labels[row]), class_names))
        _show_image(axes[row * columns], _as_uint8(image), title, 8)
    for col, (name, model) in enumerate(models.items(), start=1):
        probabilities = gradcam.class_probabilities(model, images)
        predicted = probabilities.argmax(axis=1)
        heatmaps = gradcam.gradcam(model, images, class_index=predicted)
        for row, image in enumerate(images):
            guess = predicted[row]
            style = {}
            if labels is not None:
                style["color"] = "green" if guess == labels[row] else "red"
            title = f"pred: {_short_name(class_names[guess])} {probabilities[row, guess]:.2f}"
            _show_heatmap(axes[row * columns + col], image, heatmaps[row],
                          f"{name}\n{title}" if row == 0 else title, 8, **style)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------
# Architecture diagrams
# ----------------------------------------------------------------------------

RESIDUAL_SHORTCUTS = ("identity", "projection")


def residual_block_diagram(shortcuts=RESIDUAL_SHORTCUTS, figsize=None):
    """A basic residual block (ResNet-18 and -34), drawn as ``tinylib.models._residual_block`` builds it.

    The main path is 3×3 conv, BatchNorm, ReLU, 3×3 conv, BatchNorm (its scale starts
    at zero, so the block starts as the identity); the shortcut carries the input
    past it; the two are added and a ReLU follows. One panel per entry of
    ``shortcuts``: 'identity' (input and output have the same shape) and 'projection'
    (a 1×1 convolution with BatchNorm, where the block halves the map with stride 2
    or changes the number of channels). Draws boxes and arrows only; returns the Figure.
    """
    shortcuts = (shortcuts,) if isinstance(shortcuts, str) else tuple(shortcuts)
    unknown = [s for s in shortcuts if s not in RESIDUAL_SHORTCUTS]
    if unknown or not shortcuts:
        raise ValueError(f"shortcuts must be taken from {RESIDUAL_SHORTCUTS}, got {shortcuts}")
    fig, axes = plt.subplots(1, len(shortcuts), figsize=figsize or (3.6 * len(shortcuts), 5.2),
                             squeeze=False)
    main_x, side_x = 0.36, 0.82
    box = dict(boxstyle="round,pad=0.35", linewidth=1.0)
    arrow = dict(arrowstyle="-|>", color="0.25", linewidth=1.0, shrinkA=9, shrinkB=9)
    for ax, shortcut in zip(axes[0], shortcuts):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 10)
        ax.set_axis_off()
        stride = ", stride 2" if shortcut == "projection" else ""
        main = [  # (y, label, face colour) top to bottom
            (9.3, "x (input)", "white"),
            (8.1, f"3×3 conv{stride}", "#cfe2f3"),
            (7.1, "BatchNorm", "#fff2cc"),
            (6.1, "ReLU", "#d9ead3"),
            (5.1, "3×3 conv", "#cfe2f3"),
            (4.1, "BatchNorm (γ starts at 0)", "#fff2cc"),
        ]
        for y, label, colour in main:
            ax.text(main_x, y, label, ha="center", va="center", fontsize=9,
                    bbox={**box, "facecolor": colour, "edgecolor": "0.3"})
        for (y0, *_), (y1, *_) in zip(main, main[1:]):
            ax.annotate("", xy=(main_x, y1), xytext=(main_x, y0), arrowprops=arrow)
        add_y, relu_y, out_y = 2.7, 1.6, 0.5
        ax.text(main_x, add_y, "+", ha="center", va="center", fontsize=13, fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.25", facecolor="white", edgecolor="0.3"))
        ax.text(main_x, relu_y, "ReLU", ha="center", va="center", fontsize=9,
                bbox={**box, "facecolor": "#d9ead3", "edgecolor": "0.3"})
        ax.text(main_x, out_y, "output", ha="center", va="center", fontsize=9,
                bbox={**box, "facecolor": "white", "edgecolor": "0.3"})
        ax.annotate("", xy=(main_x, add_y), xytext=(main_x, main[-1][0]), arrowprops=arrow)
        ax.annotate("", xy=(main_x, relu_y), xytext=(main_x, add_y), arrowprops=arrow)
        ax.annotate("", xy=(main_x, out_y), xytext=(main_x, relu_y), arrowprops=arrow)
        # The shortcut: from the input, down the right-hand side, into the addition.
        line = dict(color="C3", linewidth=1.6)
        ax.plot([main_x + 0.16, side_x], [9.3, 9.3], **line)
        ax.plot([side_x, side_x], [9.3, add_y], **line)
        ax.annotate("", xy=(main_x, add_y), xytext=(side_x, add_y),
                    arrowprops={**arrow, "color": "C3", "linewidth": 1.6, "shrinkA": 0})
        if shortcut == "projection":
            for y, label, colour in ((6.6, "1×1 conv,\nstride 2", "#cfe2f3"), (5.1, "BatchNorm", "#fff2cc")):
                ax.text(side_x, y, label, ha="center", va="center", fontsize=8,
                        bbox={**box, "facecolor": colour, "edgecolor": "C3"})
            title = "projection shortcut\n(new map size or channels)"
        else:
            ax.text(side_x + 0.03, 6.0, "identity", ha="left", va="center", fontsize=8,
                    color="C3", rotation=90)
            title = "identity shortcut\n(same shape in and out)"
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__.append("residual_block_diagram")
