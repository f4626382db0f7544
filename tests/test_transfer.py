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
    # Frozen BatchNorm normalises with the file's statistics in both stages, and never updates them
    # (tinylib's fused layer falls back to Keras' inference call for a frozen layer).
    def moving(model):
        return {layer.name: [keras.ops.convert_to_numpy(v).copy() for v in (layer.moving_mean, layer.moving_variance)]
                for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    trained_stats, file_stats = moving(transfer.backbone_of(runs["all"].model)), moving(saved)
    assert trained_stats.keys() == file_stats.keys() and len(file_stats) == 53
    for name, (mean, variance) in file_stats.items():
        np.testing.assert_array_equal(trained_stats[name][0], mean)
        np.testing.assert_array_equal(trained_stats[name][1], variance)
    layer = transfer.backbone_of(runs["all"].model).get_layer("conv1_bn")
    layer.trainable = True  # the control: a layer left to train moves its statistics on a training call
    layer(np.random.default_rng(0).normal(size=(4, 8, 8, 64)).astype("float32"), training=True)
    assert not np.array_equal(keras.ops.convert_to_numpy(layer.moving_mean), file_stats["conv1_bn"][0])


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


def test_each_way_of_fine_tuning_has_folders_of_its_own_named_as_its_result_rows():
    """The inputs and stage 'all''s BatchNorm change the run: each has its folders, named as
    results.record_key names its rows (a BatchNorm that trains shares the head stage)."""
    from tinylib import results

    assert transfer.stage_suffix(None, True, "head") == "-finetune-64px-head"
    assert transfer.stage_suffix(128, False, "all", preprocess="unit") == "-finetune-128px-random-unit-all"
    assert transfer.stage_suffix(64, True, "head", freeze_batchnorm=False) == "-finetune-64px-head"
    assert transfer.stage_suffix(64, True, "all", freeze_batchnorm=False) == "-finetune-64px-bn-training-all"
    record = {"model": "model5", "stage": "all", "image_size": 64, "pretrained": True, "preprocess": "unit",
              "freeze_batchnorm": False}
    assert results.record_key(record) == "model5" + transfer.stage_suffix(
        64, True, "all", preprocess="unit", freeze_batchnorm=False)


def test_fine_tuning_builds_in_the_precision_its_head_stage_began_in(tmp_path, monkeypatch):
    """As train_model's runs: stages begun in float32 go on in float32 where 'auto' now means
    another precision, instead of being refused as another run."""
    import json

    from tinylib import environment, train

    head = train.run_folder("model5", PROFILE, runs=tmp_path, suffix=transfer.stage_suffix(None, False, "head"))
    head.mkdir(parents=True)
    (head / "record.json").write_text(json.dumps({"dtype_policy": "mixed_bfloat16"}))
    seen = []

    class Built(Exception):
        pass

    def build(*args, **kwargs):
        seen.append(keras.config.dtype_policy().name)
        raise Built

    monkeypatch.setattr(transfer, "build", build)
    monkeypatch.setenv("TINYLIB_PRECISION", "float32")
    with environment.using_precision("auto"):
        with pytest.raises(Built):
            transfer.fine_tune(None, PROFILE, weights=None, runs=tmp_path)
        with pytest.raises(Built):  # another way of fine-tuning: no stage begun, the precision in force
            transfer.fine_tune(None, PROFILE, weights=None, runs=tmp_path, preprocess="unit")
    assert seen == ["mixed_bfloat16", "float32"]
