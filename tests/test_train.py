"""Training end to end in the smoke profile: records, checkpoints, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY_MODELS = ["model1", "model2", "model3", "model4", "model5"]
NEW_MODELS = ["resnet18"]  # trained with the modern recipe: MixUp/CutMix batches, cosine schedule

# Trains one model in a fresh process; with KILL set, SIGKILLs itself in the middle of epoch 2.
DRIVER = textwrap.dedent("""
    import os, signal, sys
    import keras
    from tinylib import augment, data, models, train
    from tinylib.profiles import Profile

    model_name, runs = sys.argv[1], sys.argv[2]
    keras.utils.set_random_seed(0)
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=2, batch_size=8)
    ds = data.load()

    class KillMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    if model_name.startswith("resnet"):  # beyond the study: the modern recipe, narrow
        model = train.build(model_name, ds, profile, recipe="modern", width=16)
    else:
        weights = {"weights": None} if model_name == "model5" else {}
        model = models.build_model(model_name, num_classes=ds.num_classes,
                                   augmentation=augment.augmentation(seed=0), **weights)
    extra = [KillMidEpoch()] if os.environ.get("KILL") else []
    run = train.fit(model, ds, profile, runs=runs, extra_callbacks=extra, verbose=0)
    print("RUN", run.path)
""")


def _train(forks, tmp_path: Path, model: str, backend: str, kill: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KILL", None)
    if kill:
        env["KILL"] = "1"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return forks.run([driver, model, tmp_path / "runs"], env=env, timeout=900)  # tests/forks.py


# Each case holds state the small model of tests/test_run_faults.py (killed at every change to
# its run folder, on both backends; dropout and augmentation draws, early stopping and the rate
# reduction across a resume) does not: Model 5 a nested backbone; ResNet-18 with the modern
# recipe BatchNorm's statistics, SGD's momentum, the schedule's step count and the MixUp/CutMix
# layer's draws, on TensorFlow and on JAX (which saves its state its own way). Model 2's state
# (dropout, the study's callbacks) and Model 4's (BatchNorm) are those already; Model 1's
# (weights, Adam's moments) every case holds; Model 3 has nothing the others lack, and 140
# million parameters (each checkpoint writes 1.7 GB). Every model is built and trained on both
# backends by tests/test_models.py and tests/test_reproduce.py.
TENSORFLOW_CASES = ["model5", *NEW_MODELS]
CASES = [(model, "tensorflow") for model in TENSORFLOW_CASES] + [("resnet18", "jax")]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "backend"), CASES)
def test_smoke_training_resumes_after_a_kill_mid_epoch(forks, tmp_path, tiny_env, synthetic, monkeypatch, model, backend):
    pytest.importorskip(backend)
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    killed = _train(forks, tmp_path, model, backend, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    recipe = "-modern" if model in NEW_MODELS else ""
    run_dir = tmp_path / "runs" / f"{model}-smoke-{backend}{recipe}"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epochs_done"] == 1  # epoch 2 was cut off half way

    resumed = _train(forks, tmp_path, model, backend, kill=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    record = json.loads((run_dir / "record.json").read_text())
    assert record["resumed_at_epoch"] == 1
    assert record["epochs_run"] == record["epochs"] == 2 and record["finished"]
    assert len(record["history"]["val_accuracy"]) == 2  # same history: no epoch lost or repeated
    assert record["model"] == model and record["backend"] == backend and record["profile"] == "smoke"
    assert record["weights"] == "random"
    for key in ("best_val_top1", "best_val_top5", "final_train_top1", "train_images_per_second",
                "wall_seconds", "device", "versions", "date", "optimizer", "learning_rate"):
        assert key in record, key
    assert 0 <= record["best_val_top1"] <= record["best_val_top5"] <= 1
    if model in NEW_MODELS:
        # The cosine schedule resumed at the step it had reached: after the last epoch
        # the rate is zero (a schedule restarted at step 0 would be half way down).
        assert record["recipe"]["name"] == "modern" and record["learning_rate"] == pytest.approx(0.05)
        rates = record["history"]["learning_rate"]
        assert rates[0] > 0.0 and rates[1] == pytest.approx(0.0, abs=1e-6)
    else:
        assert record["learning_rate"] == pytest.approx(1e-4)


def test_no_variable_is_created_while_tensorflow_traces_a_step(tiny_env, synthetic, monkeypatch, tmp_path):
    """train.fit builds the optimizer (Adam's moments) before the first step. Left to Keras,
    TensorFlow creates them while tracing the step, and traces a step that created variables
    a second time: Model 5's first batch took twice as long."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the second trace is TensorFlow's")
    import tensorflow as tf

    from tinylib import data, train
    from tinylib.profiles import Profile

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=8)
    model = train.build("model2", ds, profile)
    assert not model.optimizer.built
    in_a_trace = []

    def creator(next_creator, **kwargs):
        if not tf.executing_eagerly():
            in_a_trace.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        run = train.fit(model, ds, profile, runs=tmp_path, verbose=0)
    assert run.record["finished"]
    assert in_a_trace == []
    assert run.record["batch_size"] == run.record["profile_batch_size"] == 8  # the profile's batch: the study's row


def test_a_run_folder_is_not_resumed_by_a_different_run(tmp_path, tiny_env, synthetic, monkeypatch):
    import keras

    from tinylib import data, train
    from tinylib.profiles import Profile

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=8)
    run = train.train_model("model2", ds, profile, runs=tmp_path, verbose=0)
    assert run.record["finished"] and (run.path / "final.weights.h5").exists()
    assert not list(run.path.glob("checkpoint-epoch-*"))  # finished: only the final weights stay
    keras.utils.set_random_seed(0)
    other = train.build("model2", ds, profile, optimizer="sgd")
    with pytest.raises(ValueError, match="different run"):
        train.fit(other, ds, profile, runs=tmp_path, verbose=0)
    again = train.train_model("model2", ds, profile, runs=tmp_path, verbose=0)  # same run: returned as is
    assert again.record["best_val_top1"] == run.record["best_val_top1"]


def test_an_epoch_is_its_batches_counted_one_way_everywhere():
    """``steps_per_epoch`` (schedules, the batch story) and ``ShuffledBatches`` (training) agree."""
    import numpy as np

    from tinylib.batches import ShuffledBatches, steps_per_epoch

    images, labels = np.zeros((10, 2, 2, 3), "uint8"), np.zeros((10, 4), "float32")
    assert [steps_per_epoch(10, b) for b in (3, 5, 10, 32)] == [4, 2, 1, 1]
    for batch in (3, 5, 10, 32):
        batches = ShuffledBatches(images, labels, batch)
        assert len(batches) == steps_per_epoch(10, batch)
        assert sum(len(batches[i][0]) for i in range(len(batches))) == 10
    with pytest.raises(ValueError, match="no images"):
        ShuffledBatches(images[:0], labels[:0], 4)


def test_a_batch_comes_in_random_order_not_sorted_by_the_class_the_images_are_stored_in():
    """The images are stored class by class. MixUp/CutMix pair each image with the one at the
    mirrored position of its batch: in a batch sorted by row, class 0 would be mixed with
    the last classes almost only. Each image keeps its own label, wherever it lands."""
    import numpy as np

    from tinylib.batches import ShuffledBatches, epoch_order

    classes, per_class, batch = 10, 100, 32
    stored = np.repeat(np.arange(classes), per_class)  # class order, as the dataset keeps them
    images = np.broadcast_to(stored[:, None, None, None], (len(stored), 1, 1, 1)).astype("uint8")
    onehot = np.eye(classes, dtype="float32")[stored]
    batches = ShuffledBatches(images, onehot, batch, seed=3, epoch=2)
    order = epoch_order(len(stored), 3, 2)
    mirrored_partner_classes, same = [], 0
    for index in range(len(batches) - 1):  # full batches
        x, y = batches[index]
        np.testing.assert_array_equal(x[:, 0, 0, 0], stored[order[index * batch:(index + 1) * batch]])
        np.testing.assert_array_equal(y.argmax(axis=1), x[:, 0, 0, 0])  # each image with its own label
        labels = x[:, 0, 0, 0].astype(int)
        mirrored_partner_classes += list(labels[::-1][labels == 0])
        same += int(np.all(np.diff(labels) >= 0))
    assert same == 0  # never sorted
    # Class 0's partners spread over the classes, as random pairs do (sorted batches: ~70% class 9).
    shares = np.bincount(mirrored_partner_classes, minlength=classes) / len(mirrored_partner_classes)
    assert shares.max() < 0.3, shares


def test_an_epochs_batches_hold_every_image_once_with_its_label_and_resume_at_any_batch():
    """Images with distinct values: one epoch's batches are a permutation of the images, each
    with its own label; another epoch another order; batches from ``start=k`` are exactly
    batches k... of the epoch from its start (what a resumed epoch is fed)."""
    import numpy as np

    from tinylib.batches import ShuffledBatches

    n, classes = 23, 5  # a last, partial batch of 3
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    labels = np.eye(classes, dtype="float32")[np.arange(n) % classes]

    def epoch(number, start=0):
        batches = ShuffledBatches(images, labels, batch_size=5, seed=7, epoch=number, start=start)
        return [batches[i] for i in range(len(batches))]

    first = epoch(0)
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in first]).astype(int)
    assert sorted(seen) == list(range(n)) and [len(x) for x, _ in first] == [5, 5, 5, 5, 3]
    for x, y in first:  # each image with its own label
        np.testing.assert_array_equal(y.argmax(1), x[:, 0, 0, 0].astype(int) % classes)
    again = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch(0)]).astype(int)
    other = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch(1)]).astype(int)
    np.testing.assert_array_equal(again, seen)
    assert sorted(other) == list(range(n)) and not np.array_equal(other, seen)
    for start in range(1, 5):
        resumed = epoch(0, start)
        assert len(resumed) == 5 - start
        for (x, y), (x0, y0) in zip(resumed, first[start:], strict=True):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)


def test_a_pretrained_model_built_without_its_weights_trains_in_a_random_folder(monkeypatch):
    """The rule the chapters, reproduce and the command line wrote each for themselves: never
    the folder, nor the row, of the study's run from ImageNet's weights."""
    from tinylib import train

    asked = []
    monkeypatch.setattr(train, "build", lambda name, data, profile, **options: options)
    monkeypatch.setattr(train, "begun_precision", lambda *args, **kwargs: None)
    monkeypatch.setattr(train, "fit", lambda model, data, profile, **kwargs: asked.append(kwargs.get("suffix")))
    for options, kwargs in (({"weights": None}, {}), ({"weights": "w.h5"}, {}), ({}, {}),
                            ({"weights": None}, {"suffix": "-x"}), ({"weights": None}, {"suffix": "-random-x"})):
        train.train_model("model5", None, "smoke", build_options=options, **kwargs)
    train.train_model("model2", None, "smoke", build_options={"weights": None})
    train.train_model("model5", None, "smoke", build_options={"weights": None}, name="mine")
    assert asked == ["-random", None, None, "-x-random", "-random-x", None, None]
    assert train.random_weights_suffix("Model 5", None) == "-random" and train.random_weights_suffix("model5", "w") == ""
