"""Figures: each returns a Figure with the expected axes, images, lines and bars, and names classes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no window, ever

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tinylib import evaluate, plots  # noqa: E402
from tinylib.data import Split  # noqa: E402

NAMES = ("goldfish", "bullfrog", "Egyptian cat", "school bus")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_count(fig):
    return sum(len(ax.images) for ax in fig.axes)


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


@pytest.fixture
def split():
    """20 images, labels 0..3 with 8, 6, 4 and 2 images: deliberately unbalanced."""
    labels = np.repeat(np.arange(4), [8, 6, 4, 2]).astype(np.int32)
    images = np.zeros((len(labels), 64, 64, 3), np.uint8)
    images[..., 0] = (labels * 60)[:, None, None]  # the label is readable from the pixels
    return Split(images, labels, tuple(f"img_{i}.JPEG" for i in range(len(labels))),
                 np.zeros((len(labels), 4), np.int16))


@pytest.fixture
def evaluation(split):
    """Every goldfish is right; two bullfrogs and one cat are called school bus."""
    predicted = split.labels.copy()
    predicted[[8, 9]] = 3
    predicted[14] = 3
    probabilities = np.full((len(split), 4), 0.1)
    probabilities[np.arange(len(split)), predicted] = 0.7
    probabilities[14, 3] = 0.64  # a less confident mistake
    return evaluate.evaluation_from_probabilities(probabilities, split.labels, NAMES)


def test_sample_grid_shows_n_images_titled_with_their_class(split):
    fig = plots.sample_grid(split, NAMES, n=10, cols=4, seed=1)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 10 and image_count(fig) == 10  # no empty frames in the last row
    for ax in fig.axes:
        label = int(ax.images[0].get_array()[0, 0, 0]) // 60
        assert ax.get_title() == NAMES[label]
    assert plots.sample_grid(split, NAMES, n=100).axes.__len__() == len(split)  # at most all


def test_images_per_class_draws_one_bar_per_class_with_its_count(split):
    fig = plots.images_per_class(split, NAMES)
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [8, 6, 4, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert "20 images in 4 classes" in ax.get_title()


def test_augmentation_grid_has_a_row_per_image_and_a_column_per_transform(split):
    from tinylib import augment

    layers = augment.single_transform_layers(seed=0)  # two of them: Keras' and tinylib's own
    transforms = {"flip (numpy)": lambda images: images[:, :, ::-1],
                  "flip": layers["flip"], "brightness": layers["brightness"]}
    fig = plots.augmentation_grid(split.images[:3], transforms)
    columns = 1 + len(transforms)
    assert len(fig.axes) == image_count(fig) == 3 * columns
    assert titles(fig)[:columns] == ["original", *transforms]
    flipped = fig.axes[1].images[0].get_array()
    np.testing.assert_array_equal(flipped, split.images[0][:, ::-1])
    shown = np.asarray(fig.axes[columns - 1].images[0].get_array())  # a Keras layer's output
    assert shown.dtype != np.uint8 and 0.0 <= shown.min() and shown.max() <= 1.0


def test_augmentation_grid_shows_a_draw_of_its_own_in_each_column_of_one_kind_of_layer():
    """Four random crops side by side are four draws, repeatably (the seed reseeds each)."""
    from tinylib.augment import RandomResizedCrop

    def shown(fig):
        return [np.asarray(ax.images[0].get_array()) for ax in fig.axes[1:5]]

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # every crop shows
    crops = {f"crop {i}": RandomResizedCrop(seed=i) for i in range(4)}
    first = shown(plots.augmentation_grid(image, crops))
    assert all(not np.array_equal(first[0], other) for other in first[1:])
    again = shown(plots.augmentation_grid(image, {name: RandomResizedCrop() for name in crops}))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_augmentation_grid_takes_a_single_transform(split):
    fig = plots.augmentation_grid(split.images[0], lambda images: 255 - images)
    assert titles(fig) == ["original", "augmented"]


HISTORY = {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.8, 1.7], "accuracy": [0.2, 0.4, 0.5],
           "val_accuracy": [0.2, 0.3, 0.35], "seconds": [3.0, 2.0, 2.0]}


def test_training_curves_train_solid_val_dashed_from_epoch_1():
    record = {"model": "model2", "history": {"loss": [1.0, 0.9], "val_loss": [1.1, 1.0]}}
    fig = plots.training_curves({"model1": HISTORY, "model2": record}, metrics=("loss", "accuracy"))
    loss, accuracy = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    assert [(line.get_label(), line.get_linestyle()) for line in loss.lines] == [
        ("model1 train", "-"), ("model1 val", "--"), ("model2 train", "-"), ("model2 val", "--")]
    assert len(accuracy.lines) == 2  # model2 has no accuracy: nothing drawn, nothing faked
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), HISTORY["val_loss"])
    assert loss.lines[0].get_color() != loss.lines[2].get_color()


def test_training_curves_takes_a_single_run_or_history():
    class FakeRun:  # anything with .history, like tinylib.train.Run
        history = HISTORY

    assert len(plots.training_curves(FakeRun(), metrics="loss").axes[0].lines) == 2
    assert len(plots.training_curves(HISTORY).axes) == 2
    fig = plots.training_curves(HISTORY, metrics=("top5",))
    assert not fig.axes[0].lines and "no 'top5'" in fig.axes[0].texts[0].get_text()


def test_confusion_heatmap_keeps_the_most_confused_classes(evaluation):
    fig = plots.confusion_heatmap(evaluation, top=3)
    (ax,) = fig.axes
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["school bus", "bullfrog", "Egyptian cat"]  # 3, 2 and 1 errors; goldfish none
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    cells = [t.get_text() for t in ax.texts]
    assert cells == ["2", "", "", "2", "4", "", "1", "", "3"]  # the sub-matrix by rows, zeros blank
    assert len(plots.confusion_heatmap(evaluation, top=15).axes[0].texts) == 16  # only 4 classes


def test_misclassified_examples_titles_true_predicted_and_confidence(evaluation, split):
    fig = plots.misclassified_examples(evaluation, split.images, n=12)
    assert len(fig.axes) == image_count(fig) == 3  # only three mistakes exist
    first, *_, last = titles(fig)
    assert "bullfrog ->" in first and "school bus (p=0.70)" in first
    assert "Egyptian cat ->" in last and "school bus (p=0.64)" in last
    assert len(plots.misclassified_examples(evaluation, split.images, n=1).axes) == 1


def test_pictures_of_other_images_than_the_ones_scored_are_refused(evaluation, split):
    for draw in (plots.misclassified_examples, plots.guesses, plots.confused_pairs):
        with pytest.raises(ValueError, match="pass the images the evaluation scored"):
            draw(evaluation, split.images[:-1])


def test_guesses_colour_right_green_and_wrong_red():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    guessed = evaluate.evaluation_from_probabilities(probabilities, [0, 1, 2], ("cat", "dog", "owl"))
    fig = plots.guesses(guessed, np.zeros((3, 64, 64, 3), np.uint8), n=12)
    assert image_count(fig) == 3
    by_title = {ax.get_title(): ax.title.get_color() for ax in fig.axes}
    assert by_title == {"cat\nguess: cat (0.90)": "tab:green", "dog\nguess: dog (0.70)": "tab:green",
                        "owl\nguess: cat (0.60)": "tab:red"}


def test_misclassified_examples_without_mistakes():
    perfect = evaluate.evaluation_from_probabilities(np.eye(3), [0, 1, 2], "abc")
    fig = plots.misclassified_examples(perfect, np.zeros((3, 64, 64, 3), np.uint8))
    assert image_count(fig) == 0 and "no misclassified" in fig.axes[0].texts[0].get_text()


def test_results_table_plot_draws_missing_results_as_notes_not_bars():
    rows = [
        {"model": "model1", "source": "study", "train": 0.62, "val": 0.21},
        {"model": "model1", "source": "this book", "train": None, "val": None},
        {"model": "model2", "source": "this book", "train": 0.40, "val": None, "unfinished": True},
    ]
    fig = plots.results_table_plot(rows)
    (ax,) = fig.axes
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [0.21, 0.40, 0.62]  # three real results, three bars
    notes = [t for t in ax.texts if t.get_text() == "not yet run"]
    assert len(notes) == 3
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["model1\n(study)", "model1\n(this book)", "model2\n(this book, so far)"]
    assert {t.get_text() for t in ax.texts} >= {"62%", "21%", "40%"}


def test_results_table_plot_draws_a_rows_interval_as_an_error_bar():
    rows = [{"model": "model1", "source": "study", "train": 0.6, "val": 0.2},
            {"model": "model1", "source": "this book", "train": 0.3, "val": 0.25, "val_interval": (0.24, 0.27)}]
    fig = plots.results_table_plot(rows)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    segments = bars.errorbar.lines[2][0].get_segments()
    spans = sorted((round(seg[0][1], 3), round(seg[1][1], 3)) for seg in segments)
    assert spans == [(0.2, 0.2), (0.24, 0.27)]
    plt.close(fig)


def test_accuracy_against_hours_puts_each_epoch_at_the_hours_trained_by_its_end():
    fast = {"history": {"val_accuracy": [0.2, 0.4, 0.45], "seconds": [1800, 1800, 3600]}}
    slow = {"history": {"val_accuracy": [0.1, 0.3], "seconds": [7200, 3600, 99]}}  # a longer seconds list is cut
    fig = plots.accuracy_against_hours({"fast": fast, "slow": slow}, references={"the study": 0.4314},
                                       budget_hours=3)
    (ax,) = fig.axes
    first, second, study, budget = ax.lines
    assert list(first.get_xdata()) == pytest.approx([0.5, 1.0, 2.0])
    assert list(second.get_xdata()) == pytest.approx([2.0, 3.0])
    assert list(second.get_ydata()) == [0.1, 0.3]
    assert list(study.get_ydata()) == [0.4314, 0.4314] and list(budget.get_xdata()) == [3, 3]
    assert [line.get_label() for line in ax.lines] == ["fast", "slow", "the study", "3 hours"]
    plt.close(fig)


def test_accuracy_against_hours_leaves_out_a_record_without_its_epochs_seconds_and_says_so():
    fig = plots.accuracy_against_hours({"old run": {"history": {"val_accuracy": [0.2, 0.3], "seconds": [60]}},
                                        "new run": {"history": {"val_accuracy": [0.2], "seconds": [60]}}})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["new run"]
    assert any("left out, no seconds per epoch in the record: old run" in text.get_text() for text in ax.texts)
    plt.close(fig)


def test_training_curves_label_their_axes_start_a_second_stage_after_the_first_and_show_one_epoch():
    first = {"loss": [2.0, 1.5], "accuracy": [0.1, 0.2], "val_accuracy": [0.12, 0.22]}
    second = {"loss": [1.2], "accuracy": [0.3], "val_accuracy": [0.31]}
    fig = plots.training_curves({"head": first, "all": second}, metrics=("loss", "accuracy"),
                                first_epochs={"all": 2})
    loss, accuracy = fig.axes
    assert accuracy.get_ylabel() == "top-1 accuracy" and loss.get_ylabel() == "loss"
    assert accuracy.yaxis.get_major_formatter().__class__.__name__ == "PercentFormatter"
    line = next(line for line in accuracy.lines if line.get_label() == "all val")
    assert list(line.get_xdata()) == [3] and line.get_marker() == "o"  # after the head's 2 epochs, a dot
    assert next(line for line in accuracy.lines if line.get_label() == "head val").get_marker() in ("None", None, "")
    plt.close(fig)


def test_first_layer_filters_draws_each_models_first_kernels_in_rgb():
    import keras

    from tinylib import models, plots

    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c1")(inputs))
    x = models.ImageNetPreprocess()(inputs)
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(20, 5, name="stem")(inner_in), name="backbone")
    bgr = keras.Model(inputs, inner(x))
    kernel = np.zeros((5, 5, 3, 20), np.float32)
    kernel[:, :, 2, 0] = 1.0  # filter 0 looks at the BGR model's channel 2, red
    inner.get_layer("stem").set_weights([kernel, np.zeros(20, np.float32)])
    fig = plots.first_layer_filters({"plain": plain, "bgr": bgr}, max_filters=16, cols=8)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 4 + 16
    red = np.asarray(images[4])
    assert red.shape == (5, 5, 3) and np.allclose(red[..., 0], 1.0) and np.allclose(red[..., 1:], 0.5)
    assert "4 of 4 filters, 3x3" in fig.subfigs[0]._suptitle.get_text()
    plt.close(fig)


def test_confused_pairs_shows_the_mistakes_first_and_tells_same_named_classes_apart():
    """Row: images of the true class, those taken for the other one first (framed), then the
    other class. Two classes with one name are told apart by index, not by name."""
    labels = np.repeat(np.arange(3), 4)
    predictions = labels.copy()
    predictions[[2, 3]] = 2  # two images of class 0, its last two, taken for class 2
    probabilities = np.eye(3)[predictions] * 0.9 + 0.1 / 3
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))  # each image says which it is
    evaluation = evaluate.evaluation_from_probabilities(probabilities, labels, ["cat", "dog", "cat"])
    fig = plots.confused_pairs(evaluation, images, pairs=1, per_class=3)
    shown = [int(np.asarray(ax.images[0].get_array())[0, 0, 0]) for ax in fig.axes[:6]]
    assert shown == [2, 3, 0, 8, 9, 10]  # the two mistakes, one other of class 0; then class 2
    framed = [any(isinstance(p, plt.Rectangle) for p in ax.patches) for ax in fig.axes[:6]]
    assert framed == [True, True, False, False, False, False]
    assert [fig.axes[i].get_title(loc="left") for i in (0, 3)] == ["true: cat", "taken for: cat"]
