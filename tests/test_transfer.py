"""tinylib.transfer: staged fine-tuning of Model 5, with a weights file the test makes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tinylib import data, transfer
from tinylib.profiles import Profile

PROFILE = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=8)


def conv1_kernel(model):
    return keras.ops.convert_to_numpy(transfer.backbone_of(model).get_layer("conv1_conv").kernel).copy()


@pytest.mark.slow
def test_stages_train_the_head_then_everything_from_a_weights_file(tmp_path, tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    saved = keras.applications.ResNet50(include_top=False, input_shape=(64, 64, 3), weights=None)
    path = tmp_path / "backbone.weights.h5"
    saved.save_weights(path)
    file_kernel = keras.ops.convert_to_numpy(saved.get_layer("conv1_conv").kernel)

    # Stage 1 alone first: it trains the head and leaves the backbone as the file has it.
    first = transfer.fine_tune(ds, PROFILE, weights=path, image_size=72, runs=tmp_path / "runs",
                               stages=("head",), verbose=0)["head"]
    np.testing.assert_array_equal(conv1_kernel(first.model), file_kernel)
    # Both stages: stage 1 is found finished, stage 2 starts from its weights.
    runs = transfer.fine_tune(ds, PROFILE, weights=path, image_size=72, runs=tmp_path / "runs", verbose=0)
    head, everything = runs["head"].record, runs["all"].record
    assert runs["head"].path.name == f"model5-smoke-{keras.backend.backend()}-finetune-72px-head"
    for record in (head, everything):
        assert record["weights"] == str(path) and record["pretrained"] is True
        assert record["image_size"] == 72 and record["preprocess"] == "imagenet" and record["finished"]
    # Stage 1 trains only the head: Dense 1024 and the classifier.
    assert head["stage"] == "head" and head["trainable_parameters"] == 2048 * 1024 + 1024 + 1024 * 4 + 4
    assert head["learning_rate"] == pytest.approx(1e-3)
    # Stage 2 trains the backbone too (its BatchNorm layers stay frozen), at a lower rate.
    assert everything["stage"] == "all" and everything["learning_rate"] == pytest.approx(1e-4)
    backbone_bn = sum(int(np.prod(w.shape)) for layer in transfer.backbone_of(runs["all"].model).layers
                      if isinstance(layer, keras.layers.BatchNormalization) for w in layer.weights)
    assert everything["trainable_parameters"] == everything["parameters"] - backbone_bn
    assert not np.allclose(conv1_kernel(runs["all"].model), file_kernel)  # stage 2 moved the backbone


@pytest.mark.slow
def test_a_run_without_pretrained_weights_says_so(tmp_path, tiny_env, synthetic, monkeypatch, capsys):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    # On another batch than the profile's 8: a folder of its own, as fit gives its runs.
    runs = transfer.fine_tune(ds, PROFILE, weights=None, stages=("head",), runs=tmp_path, batch_size=4, verbose=0)
    record = runs["head"].record
    assert record["weights"] == "random" and record["pretrained"] is False and record["image_size"] == 64
    assert runs["head"].path.name.endswith("-finetune-64px-random-head-batch4") and record["batch_size"] == 4
    assert "WITHOUT pretrained weights" in capsys.readouterr().out
    with pytest.raises(ValueError, match="stages"):
        transfer.fine_tune(ds, PROFILE, weights=None, stages=("backbone",), runs=tmp_path)
    with pytest.raises(ValueError, match="starts from stage 'head'"):  # else from a random head
        transfer.fine_tune(ds, PROFILE, weights=None, stages=("all",), runs=tmp_path)


def test_a_seed_given_to_fine_tune_draws_the_heads_initial_weights_too(monkeypatch):
    """As train_model and compare_optimizers: not the profile's seed for the weights and the
    caller's for the batches."""
    seeds = []

    class Built(Exception):
        pass

    def build(*args, **kwargs):
        raise Built

    monkeypatch.setattr(keras.utils, "set_random_seed", seeds.append)
    monkeypatch.setattr(transfer, "build", build)
    with pytest.raises(Built):
        transfer.fine_tune(None, PROFILE, weights=None, seed=7)
    with pytest.raises(Built):
        transfer.fine_tune(None, PROFILE, weights=None)
    assert seeds == [7, PROFILE.seed]
