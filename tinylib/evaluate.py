"""Evaluation: what a trained model gets right and wrong, as numbers and lists.

The flow is::

    model + split  ->  probabilities (N, C)  ->  Evaluation
      ->  top-1 / top-5, per-class accuracy, confusion matrix,
          most confused pairs, misclassified images  ->  summary() / to_dict()

Everything after the probabilities is NumPy, so an ``Evaluation`` can also be
built from probabilities saved earlier (``evaluation_from_probabilities``) and
the plots in ``tinylib.plots`` never need a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path

import numpy as np

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluation_from_probabilities",
    "load_trained_model",
    "predict_probabilities",
    "predict_test",
]


def predict_probabilities(model, images, batch_size: int = 256, flips: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images, as float32 NumPy.

    float32 even under mixed precision, so sums and comparisons are exact enough.
    ``flips``: test-time augmentation, the mean of the probabilities of each image and
    of its mirror image (a network trained with flips has seen both; averaging the two
    views cancels some of each one's errors, for twice the inference).
    """
    if flips:
        plain, mirrored = predict_both_views(model, images, batch_size)
        return (plain + mirrored) / 2
    return _probabilities(model, np.asarray(images), batch_size)


def predict_both_views(model, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities of each image and of its mirror image: the plain prediction and
    the test-time flips' mean both follow from these two passes."""
    images = np.asarray(images)
    return _probabilities(model, images, batch_size), _probabilities(model, images[:, :, ::-1], batch_size)


def _probabilities(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare
class Evaluation:
    """A model's probabilities on labelled images, and what follows from them.

    ``probabilities`` is (N, C), ``labels`` the N true labels, ``class_names``
    the C readable names, ``files`` the N file names when known.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    files: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def predictions(self) -> np.ndarray:
        """The predicted class of each image (the most probable one)."""
        return self.probabilities.argmax(axis=1)

    @property
    def confidences(self) -> np.ndarray:
        """The probability the model gave its own prediction."""
        return self.probabilities.max(axis=1)

    def top_k_accuracy(self, k: int) -> float:
        """Share of images whose true class is among the k most probable.

        ``k`` is clamped to the number of classes.  Ties at the boundary count
        as hits, as in Keras' ``TopKCategoricalAccuracy``.
        """
        k = min(k, self.num_classes)
        true_probability = np.take_along_axis(self.probabilities, self.labels[:, None], axis=1)
        better_classes = (self.probabilities > true_probability).sum(axis=1)
        return float(np.mean((better_classes < k) & self._finite))

    @functools.cached_property
    def _finite(self) -> np.ndarray:
        """Images whose probabilities are all numbers: a diverged model's NaN row is a miss
        (NaN compares false, so it would otherwise beat no class and count as a top-k hit),
        as in Keras' top-k metric."""
        return np.isfinite(self.probabilities).all(axis=1)

    @property
    def top1(self) -> float:
        """Accuracy of the single prediction (consistent with the confusion matrix); an image
        with a non-finite probability is a miss."""
        return float(np.mean((self.predictions == self.labels) & self._finite))

    @property
    def top5(self) -> float:
        return self.top_k_accuracy(5)

    @functools.cached_property
    def confusion_matrix(self) -> np.ndarray:
        """Counts (C, C): rows are true classes, columns predicted classes.  An image whose
        probabilities are not all numbers has no prediction and is in no column."""
        c = self.num_classes
        finite = self._finite
        return np.bincount(self.labels[finite] * c + self.predictions[finite], minlength=c * c).reshape(c, c)

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Accuracy of each class (C,), every image of it counted (one without a prediction is
        a miss, as in ``top1``); NaN for a class with no images here."""
        support = np.bincount(self.labels, minlength=self.num_classes)
        correct = np.diag(self.confusion_matrix).astype(float)
        return np.divide(correct, support, out=np.full(len(support), np.nan), where=support > 0)

    @property
    def per_class(self) -> dict[str, float]:
        """Per-class accuracy keyed by class name."""
        return dict(zip(self.class_names, self.per_class_accuracy.tolist()))

    def most_confused(self, n: int = 10) -> list[tuple[str, str, int]]:
        """The n most frequent mistakes: (true name, predicted name, count), largest first."""
        return [(self.class_names[t], self.class_names[p], count) for t, p, count in self.most_confused_classes(n)]

    def most_confused_classes(self, n: int = 10) -> list[tuple[int, int, int]]:
        """``most_confused`` by class index: (true class, predicted class, count), largest
        first (indices, as two classes may share a name)."""
        errors = self.confusion_matrix.copy()
        np.fill_diagonal(errors, 0)
        order = np.argsort(-errors, axis=None, kind="stable")[:n]
        pairs = zip(*np.unravel_index(order, errors.shape))
        return [(int(t), int(p), int(errors[t, p])) for t, p in pairs if errors[t, p] > 0]

    def misclassified(self, n: int | None = None) -> np.ndarray:
        """Indices of wrong predictions, the most confident mistakes first."""
        wrong = np.flatnonzero((self.predictions != self.labels) | ~self._finite)
        order = np.argsort(-self.confidences[wrong], kind="stable")
        return wrong[order][:n]

    def correctly_classified(self, n: int | None = None) -> np.ndarray:
        """Indices of right predictions, the most confident first (``misclassified``'s other half)."""
        right = np.flatnonzero((self.predictions == self.labels) & self._finite)
        order = np.argsort(-self.confidences[right], kind="stable")
        return right[order][:n]

    def summary(self, classes: int = 3) -> str:
        """A few printable lines: accuracy, best and worst classes, top confusions."""
        accuracy = self.per_class_accuracy
        ranked = [int(i) for i in np.argsort(-accuracy, kind="stable") if not np.isnan(accuracy[i])]

        def named(indices):
            return ", ".join(f"{self.class_names[i]} {accuracy[i]:.0%}" for i in indices)

        lines = [
            f"{len(self.labels):,} images, {self.num_classes} classes: "
            f"top-1 {self.top1:.1%}, top-5 {self.top5:.1%}",
            f"best classes:  {named(ranked[:classes])}",
            f"worst classes: {named(ranked[::-1][:classes])}",
        ]
        confused = self.most_confused(classes)
        if confused:
            lines.append("most confused: " + ", ".join(f"{t} -> {p} ({c})" for t, p, c in confused))
        return "\n".join(lines)

    def to_dict(self, most_confused: int = 20) -> dict:
        """Plain types for JSON; a class without images has accuracy None."""
        return {
            "images": int(len(self.labels)),
            "classes": self.num_classes,
            "top1": self.top1,
            "top5": self.top5,
            "per_class": {name: (None if np.isnan(acc) else acc) for name, acc in self.per_class.items()},
            "most_confused": [{"true": t, "predicted": p, "count": c}
                              for t, p, c in self.most_confused(most_confused)],
        }


def evaluation_from_probabilities(probabilities, labels, class_names, files=None) -> Evaluation:
    """An ``Evaluation`` from probabilities computed earlier (checked for shape)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    class_names = tuple(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities must be (images, {len(class_names)} classes), "
                         f"got shape {probabilities.shape}")
    if labels.shape != (len(probabilities),):
        raise ValueError(f"{len(probabilities)} probability rows but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"labels must be 0..{len(class_names) - 1}; got {labels.min()}..{labels.max()} "
            "(test images have no labels (-1): use predict_test for them)"
        )
    files = None if files is None else tuple(files)
    return Evaluation(probabilities, labels, class_names, files)


def evaluate(model, split, class_names, batch_size: int = 256, flips: bool = False) -> Evaluation:
    """Run ``model`` on a labelled split (``tinylib.data.Split``) and evaluate it
    (``flips``: with each image's mirror image too, see ``predict_probabilities``)."""
    _check_model_and_split(model, split)
    probabilities = predict_probabilities(model, split.images, batch_size, flips=flips)
    return evaluation_from_probabilities(probabilities, split.labels, class_names, split.files)


def _check_model_and_split(model, split) -> None:
    """The easy slips in a chapter's call, said in the chapter's terms: a Run (which the
    plots take) for its model, a dataset for one of its splits."""
    if not hasattr(model, "predict"):
        hint = " (a training run: pass run.model)" if hasattr(model, "model") and hasattr(model, "record") else ""
        raise TypeError(f"evaluate takes a Keras model, got {type(model).__name__}{hint}")
    if not (hasattr(split, "images") and hasattr(split, "labels")):
        hint = " (the whole dataset: pass one split, such as ds.val)" if hasattr(split, "val") else ""
        raise TypeError(f"evaluate takes a labelled split, got {type(split).__name__}{hint}")


def predict_test(model, test_split, class_names, top: int = 5,
                 batch_size: int = 256) -> list[tuple[str, list[str]]]:
    """(file, [the ``top`` most probable class names]) for each unlabelled test image."""
    if test_split is None:
        raise ValueError(
            "this copy of Tiny ImageNet has no test images (no test/images folder), so there "
            "is nothing to predict; evaluate on the val split instead"
        )
    probabilities = predict_probabilities(model, test_split.images, batch_size)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [(file, [class_names[i] for i in row]) for file, row in zip(test_split.files, best)]


def load_trained_model(run_dir):
    """The model of a run folder, rebuilt and loaded from its current checkpoint.

    Rebuilt with the architecture, class count, precision and optimizer in ``record.json``
    and without augmentation, which only acts in training.  The optimizer is
    built first because the checkpoint holds its variables too (as keras'
    ``BackupAndRestore`` does).
    """
    from tinylib import environment, runs, train

    run_dir = Path(run_dir)
    record = runs.load_run(run_dir)
    checkpoint = runs.current_checkpoint(run_dir)
    from tinylib.models import MODELS, recorded_options

    options = dict(record.get("build_options", {}))
    if record["model"] in MODELS:  # an option the record predates: built as it was then
        options = recorded_options(record["model"], options)
    recipe = _recorded_recipe(record)
    if recipe is None:
        if record.get("optimizer"):
            options["optimizer"] = record["optimizer"].lower()
        if record.get("learning_rate") is not None:
            options["learning_rate"] = record["learning_rate"]
    # A recipe's optimizer (SGD's momentum has variables the checkpoint holds) and its
    # MixUp/CutMix layer (a variable too); the augmentation has none, and is left out.
    # In the precision the run trained in (a model keeps its own policy; Keras' global one is given back).
    policy = record.get("dtype_policy")
    with environment.using_precision(policy) if policy else contextlib.nullcontext():
        model = train.build_run_model(record["model"], record["dataset"]["classes"], recipe=recipe, weights=None,
                                      **options)
    model.optimizer.build(model.trainable_variables)
    runs.load_checkpoint(model, checkpoint)
    return model


def _recorded_recipe(record: dict):
    """The ``Recipe`` a run's record names, or None (no recipe, or one this version cannot read)."""
    from tinylib.recipes import Recipe

    recipe = record.get("recipe")
    if not isinstance(recipe, dict):
        return None
    try:
        return Recipe(**recipe)
    except (TypeError, ValueError):
        return None
