"""Evaluation: hand-made probabilities with known answers, then real (tiny) models end to end."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

from tinylib import evaluate as ev
from tinylib.data import Split

NAMES = ("cat", "dog", "fox", "owl", "yak")  # "yak" has no images
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
PREDICTED = [0, 0, 1, 1, 1, 0, 1, 1, 2, 3]
CONFIDENCE = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5, 0.65, 0.9, 0.99]


def probabilities_for(predicted, confidence, num_classes):
    """Rows whose argmax is ``predicted`` with probability ``confidence``, the rest shared."""
    rows = np.array([(1 - c) / (num_classes - 1) for c in confidence])[:, None].repeat(num_classes, 1)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


@pytest.fixture
def known():
    return ev.evaluation_from_probabilities(
        probabilities_for(PREDICTED, CONFIDENCE, len(NAMES)), LABELS, NAMES,
        files=[f"val_{i}.JPEG" for i in range(len(LABELS))])


def test_top1_and_confusion_matrix_match_hand_counts(known):
    assert known.top1 == pytest.approx(0.6)
    expected = np.array([
        [2, 2, 0, 0, 0],
        [1, 2, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(known.confusion_matrix, expected)


def test_per_class_accuracy_names_classes_and_marks_empty_ones(known):
    np.testing.assert_allclose(known.per_class_accuracy, [0.5, 2 / 3, 0.5, 1.0, np.nan])
    assert list(known.per_class) == list(NAMES)
    assert known.per_class["dog"] == pytest.approx(2 / 3)


def test_most_confused_pairs_are_sorted_by_count(known):
    pairs = known.most_confused()
    assert pairs[0] == ("cat", "dog", 2)
    assert set(pairs[1:]) == {("dog", "cat", 1), ("fox", "dog", 1)}  # only real mistakes
    assert known.most_confused(1) == [("cat", "dog", 2)]


def test_misclassified_lists_the_most_confident_mistakes_first(known):
    np.testing.assert_array_equal(known.misclassified(), [3, 5, 2, 7])
    np.testing.assert_array_equal(known.misclassified(2), [3, 5])


def test_correctly_classified_lists_the_most_confident_right_answers_first(known):
    np.testing.assert_array_equal(known.correctly_classified(), [9, 0, 8, 1, 4, 6])  # 0 and 8 tie: index order
    np.testing.assert_array_equal(known.correctly_classified(2), [9, 0])
    assert sorted([*known.correctly_classified(), *known.misclassified()]) == list(range(len(LABELS)))


def test_top_k_counts_the_true_class_among_the_k_most_probable():
    probabilities = np.array([
        [0.10, 0.30, 0.20, 0.15, 0.10, 0.10, 0.05],  # true class 0 is 4th: top-5 only
        [0.30, 0.20, 0.15, 0.12, 0.11, 0.02, 0.10],  # true class 6 is 6th: neither
        [0.05, 0.10, 0.60, 0.10, 0.05, 0.05, 0.05],  # true class 2 is 1st: both
    ])
    result = ev.evaluation_from_probabilities(probabilities, [0, 6, 2], list("abcdefg"))
    assert result.top1 == pytest.approx(1 / 3)
    assert result.top5 == pytest.approx(2 / 3)
    assert result.top_k_accuracy(1) == pytest.approx(1 / 3)
    assert result.top_k_accuracy(7) == result.top_k_accuracy(100) == 1.0  # k clamped


def test_a_diverged_models_nan_row_is_a_miss_as_keras_counts_it():
    """NaN compares false with everything: without care its true class beats no class and
    would count as a top-5 hit, and argmax's first NaN as a top-1 hit for class 0."""
    probabilities = np.array([[np.nan] * 6, [np.nan] * 6, [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]], dtype="float32")
    result = ev.evaluation_from_probabilities(probabilities, [0, 3, 0], list("abcdef"))
    assert result.top1 == pytest.approx(1 / 3) and result.top5 == pytest.approx(1 / 3)
    keras_hits = keras.ops.convert_to_numpy(keras.metrics.top_k_categorical_accuracy(
        keras.utils.to_categorical([0, 3, 0], 6), probabilities, k=5))
    assert result.top5 == pytest.approx(float(np.mean(keras_hits)))
    # The per-class figures and the mistakes agree with top1: the NaN image of class 0 is a miss.
    assert result.per_class_accuracy[0] == pytest.approx(1 / 2) and result.per_class_accuracy[3] == 0.0
    assert result.confusion_matrix.sum() == 1 and sorted(result.misclassified()) == [0, 1]
    assert result.correctly_classified().tolist() == [2]  # the NaN row's argmax is its label: still a miss


def test_top_k_and_confusion_agree_with_keras_and_a_plain_loop():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(12), size=300).astype("float32")
    labels = rng.integers(0, 12, size=300)
    result = ev.evaluation_from_probabilities(probabilities, labels, [f"c{i}" for i in range(12)])
    one_hot = keras.utils.to_categorical(labels, 12)
    for k in (1, 5):
        keras_hits = keras.ops.convert_to_numpy(
            keras.metrics.top_k_categorical_accuracy(one_hot, probabilities, k=k))
        assert result.top_k_accuracy(k) == pytest.approx(float(np.mean(keras_hits)))
    looped = np.zeros((12, 12), dtype=int)
    for true, predicted in zip(labels, probabilities.argmax(1)):
        looped[true, predicted] += 1
    np.testing.assert_array_equal(result.confusion_matrix, looped)


def test_summary_and_to_dict(known):
    text = known.summary()
    assert "top-1 60.0%" in text and "cat -> dog (2)" in text
    record = json.loads(json.dumps(known.to_dict(), allow_nan=False))  # strict JSON
    assert record["top1"] == pytest.approx(0.6) and record["top5"] == 1.0
    assert record["per_class"]["yak"] is None and record["per_class"]["owl"] == 1.0
    assert record["most_confused"][0] == {"true": "cat", "predicted": "dog", "count": 2}


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="predict_test"):
        ev.evaluation_from_probabilities(np.full((2, 3), 1 / 3), [0, -1], "abc")
    with pytest.raises(ValueError, match="3 classes"):
        ev.evaluation_from_probabilities(np.full((2, 4), 0.25), [0, 1], "abc")
    with pytest.raises(ValueError, match="labels"):
        ev.evaluation_from_probabilities(np.full((2, 3), 1 / 3), [0, 1, 2], "abc")


# --------------------------------------------------------------------------------------
# Real models
# --------------------------------------------------------------------------------------


def tiny_model(num_classes=4):
    """A few hundred parameters: enough to check shapes end to end in a blink."""
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def fake_split(n, labels=None):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    return Split(images, labels, tuple(f"img_{i}.JPEG" for i in range(n)), np.zeros((n, 4), np.int16))


def test_evaluate_a_model_end_to_end():
    split = fake_split(10, labels=[0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    result = ev.evaluate(tiny_model(), split, list("abcd"), batch_size=4)
    assert result.probabilities.shape == (10, 4) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    assert result.confusion_matrix.shape == (4, 4) and result.confusion_matrix.sum() == 10
    assert result.files == split.files
    assert 0.0 <= result.top1 <= result.top5 == 1.0  # 4 classes: top-5 is every class


def test_predict_test_names_the_most_probable_classes():
    model = tiny_model(6)
    split = fake_split(5)
    predictions = ev.predict_test(model, split, list("abcdef"), top=3)
    probabilities = ev.predict_probabilities(model, split.images)
    assert [file for file, _ in predictions] == list(split.files)
    for (_, names), row in zip(predictions, probabilities):
        assert len(names) == 3 and names[0] == "abcdef"[row.argmax()]
        assert names == ["abcdef"[i] for i in np.argsort(-row)[:3]]
    assert len(ev.predict_test(model, split, list("abcdef"))[0][1]) == 5


def test_predict_test_without_test_images_says_so():
    with pytest.raises(ValueError, match="no test images"):
        ev.predict_test(tiny_model(), None, list("abcd"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_master):
    """model2, with augmentation as the CLI trains it, one epoch on the synthetic dataset."""
    from tinylib import augment, data, models, train
    from tinylib.profiles import Profile

    tmp = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLIB_HOME", str(tmp / "home"))
        patch.setenv("TINYLIB_DATA", str(synthetic_master))
        dataset = data.load()
    keras.utils.set_random_seed(0)
    model = models.build_model("model2", num_classes=dataset.num_classes, weights=None,
                               augmentation=augment.augmentation(seed=0))  # not rebuilt: training only
    profile = Profile("t", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=4)
    # No callbacks: EarlyStopping would swap in its best weights after the last checkpoint.
    run = train.fit(model, dataset, profile, runs=tmp / "runs", epochs=1, batch_size=4,
                    callbacks=(), verbose=0)
    return run, dataset


def load_quietly(run_dir):
    """Load, and fail on Keras' warning that it skipped (optimizer) variables."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ev.load_trained_model(run_dir)
    skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
    assert not skipped, skipped
    return model


@pytest.mark.slow
def test_load_trained_model_predicts_like_the_trained_model(trained_run):
    run, dataset = trained_run
    loaded = load_quietly(run.path)
    images = np.concatenate([dataset.val.images, dataset.test.images])
    np.testing.assert_allclose(ev.predict_probabilities(loaded, images),
                               ev.predict_probabilities(run.model, images), rtol=1e-5, atol=1e-6)
    from tinylib.batches import steps_per_epoch

    steps = steps_per_epoch(len(dataset.train), 4)  # a last, partial batch is a step too
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == steps  # optimizer restored


@pytest.mark.slow
def test_evaluate_and_predict_test_on_the_trained_model(trained_run):
    run, dataset = trained_run
    result = ev.evaluate(run.model, dataset.val, dataset.class_names)
    assert result.probabilities.shape == (len(dataset.val), 4)
    # The book's top-1 is the accuracy Keras' own evaluation reports for the same model and images.
    one_hot = np.eye(4, dtype="float32")[np.asarray(dataset.val.labels)]
    keras_accuracy = run.model.evaluate(np.asarray(dataset.val.images), one_hot, return_dict=True, verbose=0)
    assert result.top1 == pytest.approx(keras_accuracy["accuracy"], abs=1e-6)
    assert result.confusion_matrix.trace() == round(result.top1 * len(dataset.val))
    assert set(result.per_class) == set(dataset.class_names)
    predictions = ev.predict_test(run.model, dataset.test, dataset.class_names)
    assert len(predictions) == len(dataset.test)
    assert all(sorted(names) == sorted(dataset.class_names) for _, names in predictions)  # top 5 of 4


def test_load_trained_model_uses_the_recorded_optimizer(tmp_path):
    """A run of compare_optimizers: an RMSprop checkpoint needs an RMSprop model to load into."""
    from tinylib import models

    keras.utils.set_random_seed(1)
    saved = models.build_model("model2", num_classes=3, weights=None, optimizer="rmsprop",
                               learning_rate=1e-3)
    saved.optimizer.build(saved.trainable_variables)
    saved.save_weights(tmp_path / "checkpoint-epoch-001.weights.h5")
    (tmp_path / "state.json").write_text(json.dumps({"checkpoint": "checkpoint-epoch-001.weights.h5"}))
    (tmp_path / "record.json").write_text(json.dumps({
        "model": "model2", "dataset": {"classes": 3}, "optimizer": "RMSprop", "learning_rate": 1e-3}))
    keras.utils.set_random_seed(2)  # the rebuilt model starts from other weights
    loaded = load_quietly(tmp_path)
    assert type(loaded.optimizer).__name__ == "RMSprop"
    images = fake_split(3).images
    np.testing.assert_allclose(ev.predict_probabilities(loaded, images),
                               ev.predict_probabilities(saved, images), rtol=1e-5, atol=1e-6)


def test_load_trained_model_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="record.json"):
        ev.load_trained_model(tmp_path)  # not a run folder at all
    (tmp_path / "record.json").write_text(json.dumps({"model": "model2", "dataset": {"classes": 3}}))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ev.load_trained_model(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"checkpoint": "checkpoint-epoch-002.weights.h5"}))
    with pytest.raises(FileNotFoundError, match="checkpoint-epoch-002"):
        ev.load_trained_model(tmp_path)


@pytest.mark.slow
def test_a_modern_recipe_run_with_mixup_and_cutmix_loads_and_predicts_like_the_trained_model(tmp_path,
                                                                                               synthetic_master):
    """The recipe's MixUp/CutMix layer holds a variable the checkpoint has: the loaded model has it too."""
    from tinylib import data, train
    from tinylib.mixing import MixingClassifier
    from tinylib.profiles import Profile

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLIB_HOME", str(tmp_path / "home"))
        patch.setenv("TINYLIB_DATA", str(synthetic_master))
        dataset = data.load()
    profile = Profile("t", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=4)
    run = train.train_model("resnet18", dataset, profile, recipe="modern", runs=tmp_path / "runs", verbose=0,
                            build_options={"width": 16, "stem_stride": 2})
    assert isinstance(run.model, MixingClassifier)
    loaded = load_quietly(run.path)
    assert isinstance(loaded, MixingClassifier)
    # Rebuilt in the precision the run trained in ('auto' may be bfloat16 here), whatever the policy now.
    assert loaded.dtype_policy.name == run.model.dtype_policy.name == run.record["dtype_policy"]
    np.testing.assert_allclose(ev.predict_probabilities(loaded, dataset.val.images),
                               ev.predict_probabilities(run.model, dataset.val.images), rtol=1e-4, atol=1e-5)


def test_flips_average_each_image_with_its_mirror_image():
    # A "model" that sees only the left half: its answer changes when the image is mirrored.
    inputs = keras.Input((4, 4, 3))
    left = keras.layers.Lambda(lambda x: keras.ops.mean(x[:, :, :2], axis=(1, 2)))(inputs)
    model = keras.Model(inputs, keras.layers.Softmax()(left))
    images = np.zeros((2, 4, 4, 3), "uint8")
    images[0, :, :2, 0] = 9  # channel 0 on the left
    images[1, :, 2:, 1] = 9  # channel 1 on the right
    plain = ev.predict_probabilities(model, images)
    mirrored = ev.predict_probabilities(model, images[:, :, ::-1])
    both = ev.predict_probabilities(model, images, flips=True)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=1e-6)
    assert both[0].argmax() == 0 and both[1].argmax() == 1 and plain[1].argmax() != 1


def test_a_checkpoint_rescored_gives_the_figure_its_run_recorded(trained_run):
    """The premise of `evaluate`'s check before it publishes: the run's checkpoint, loaded
    again, scores on the validation images what its run recorded for that epoch."""
    from tinylib import recalibration, runs

    run, dataset = trained_run
    recorded = recalibration.recorded_score(runs.load_run(run.path), runs.read_state(run.path))
    assert recorded == (1, run.record["history"]["val_accuracy"][0], False)
    top1 = ev.evaluate(load_quietly(run.path), dataset.val, dataset.class_names).top1
    assert abs(top1 - recorded.top1) < 1e-6 and recalibration.against_record(top1, recorded, len(dataset.val))[1]


def test_evaluate_publishes_nothing_for_a_checkpoint_that_scores_other_than_its_run_recorded(
        trained_run, synthetic_master, tmp_path, monkeypatch, capsys):
    """`evaluate --results`: weights or images that are not the run's (here, its record says
    another figure) are refused before the minutes of re-estimating; without it, a warning."""
    import shutil

    from tinylib import cli

    run, _ = trained_run
    folder = shutil.copytree(run.path, tmp_path / "model2-full-tensorflow")

    def record_another_figure(by: float) -> None:  # in both files that hold the history
        for name in ("record.json", "state.json"):
            kept = json.loads((folder / name).read_text())
            kept["profile"] = "full"  # publishable; the full profile is the whole synthetic dataset it trained on
            kept["history"]["val_accuracy"][0] += by
            (folder / name).write_text(json.dumps(kept))

    record_another_figure(0.2)
    monkeypatch.setenv("TINYLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic_master))
    results_dir = tmp_path / "results"
    assert cli.main(["evaluate", str(folder), "--recalibrate-bn", "10", "--results", str(results_dir)]) == 2
    captured = capsys.readouterr()
    assert "(epoch 1)" in captured.err and "not the weights or the images" in captured.err
    assert "nothing is published" in captured.err and "Re-estimating" not in captured.out
    assert not results_dir.exists()
    from test_benchmarks import load  # the benchmark that saves chapter 9's bars checks the same

    with pytest.raises(SystemExit, match="not the weights or the images.*nothing is published"):
        load("bn_statistics").main([str(folder), "--images", "10", "--save", str(results_dir)])
    assert not results_dir.exists()
    assert cli.main(["evaluate", str(folder)]) == 0
    assert "warning: the checkpoint (epoch 1)" in capsys.readouterr().out
    record_another_figure(-0.2)
    # A run being trained writes another checkpoint while this one loads: not checked, not published.
    real_load = ev.load_trained_model

    def load_while_training(path):
        model = real_load(path)
        state = json.loads((folder / "state.json").read_text())
        (folder / "state.json").write_text(json.dumps({**state, "partial": {"epoch": 1, "batches": 2}}))
        return model

    original_state = (folder / "state.json").read_text()
    monkeypatch.setattr(ev, "load_trained_model", load_while_training)
    assert cli.main(["evaluate", str(folder), "--recalibrate-bn", "10", "--results", str(results_dir)]) == 2
    assert "while this one was loaded" in capsys.readouterr().err and not results_dir.exists()
    monkeypatch.setattr(ev, "load_trained_model", real_load)
    (folder / "state.json").write_text(original_state)
    assert cli.main(["evaluate", str(folder), "--recalibrate-bn", "10", "--results", str(results_dir)]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint (epoch 1) scores" in out and "warning" not in out
    assert "no trainable BatchNorm layer" in out  # Model 2: nothing to re-estimate, so nothing to publish


def test_evaluate_recalibrated_scores_again_after_re_estimating_batchnorm(trained_run, tmp_path, capsys):
    """`evaluate --recalibrate-bn N`: both scores, and the second's file says over what it was
    re-estimated; a model without BatchNorm (Model 2) says there is nothing to do."""
    import argparse

    from tinylib import augment, cli, models, stats

    run, dataset = trained_run
    args = argparse.Namespace(recalibrate_bn=10_000, split="val", results=None)  # more than the split holds
    assert len(dataset.train) < 10_000
    as_trained = ev.evaluate(run.model, dataset.val, dataset.class_names)
    cli._evaluate_recalibrated(run.model, dataset, dataset.val, args, tmp_path, as_trained)
    assert "no trainable BatchNorm layer" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())

    keras.utils.set_random_seed(0)
    model = models.build_model("model4", num_classes=dataset.num_classes, weights=None,
                               augmentation=augment.augmentation(seed=0))  # left out while re-estimating
    as_trained = ev.evaluate(model, dataset.val, dataset.class_names)
    count = len(dataset.train) - 3  # a draw, not the whole split
    args.recalibrate_bn = count
    cli._evaluate_recalibrated(model, dataset, dataset.val, args, tmp_path, as_trained)
    out = capsys.readouterr().out
    assert f"over {count:,} training images" in out and f"{as_trained.top1:.2%} with the statistics training left" in out
    saved = json.loads((tmp_path / "evaluation-val-bn-recalibrated.json").read_text())["batchnorm_recalibrated"]
    again = ev.evaluate(model, dataset.val, dataset.class_names)
    assert saved["top1"] == again.top1 and saved["train_images"] == count and saved["top1_as_trained"] == as_trained.top1
    right_before, right_after = as_trained.predictions == as_trained.labels, again.predictions == again.labels
    assert saved["right_only_recalibrated"] - saved["right_only_as_trained"] == right_after.sum() - right_before.sum()
    assert saved["right_only_recalibrated"] == (right_after & ~right_before).sum()
    assert saved["mcnemar_p"] == stats.mcnemar_p(saved["right_only_as_trained"], saved["right_only_recalibrated"])
    # The statistics of the unaugmented training images, exactly: block 1's BatchNorm sees the
    # first convolution of the rescaled images, whatever the augmentation layer would draw.
    first = keras.Model(model.inputs, model.get_layer("block1_conv").output)
    chosen = np.sort(np.random.default_rng(0).permutation(len(dataset.train))[:count])
    splits = -(-count // 256)  # near-equal batches of at most 256
    edges = [round(i * count / splits) for i in range(splits + 1)]
    activations = [np.asarray(first(dataset.train.images[chosen][a:b].astype("float32")))
                   for a, b in zip(edges[:-1], edges[1:])]
    expected = np.average([a.mean((0, 1, 2)) for a in activations], 0, [len(a) for a in activations])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("block1_bn").moving_mean), expected,
                               rtol=1e-3, atol=1e-3)
