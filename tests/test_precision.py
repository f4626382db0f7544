"""The precision a GPU gets (mixed bfloat16), on the CPU: the chapters that train or explain still run.

On a GPU, ``configure_precision('auto')`` picks ``mixed_bfloat16``; CI has no GPU, so
``TINYLIB_PRECISION`` asks for it on the CPU. Run this way, chapter 6 (a study model's
training, evaluation and top-5 metric), chapter 13 (the recipes, MixUp and CutMix) and
chapter 15 (Grad-CAM) once failed where a GPU would have failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinylib import environment

REPO = Path(__file__).resolve().parents[1]


def test_the_environment_variable_sets_the_automatic_precision(monkeypatch):
    import keras

    previous = keras.config.dtype_policy()
    try:
        monkeypatch.setenv(environment.PRECISION_ENV, "mixed_bfloat16")
        assert environment.configure_precision() == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        assert environment.configure_precision("float32") == "float32"  # an explicit policy wins
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.slow
def test_every_model_trains_evaluates_and_explains_under_mixed_bfloat16(tiny_env, synthetic, monkeypatch, tmp_path):
    """Chapter 15's path, in-process, under the precision a GPU gets (TINYLIB_PRECISION, as
    a chapter sets it): train, evaluate with top-5, Grad-CAM and the explanation figure,
    for one model of each kind of layer: Model 2 (convolutions, dense, dropout; Model 1 is
    a subset), Model 4 (BatchNorm after convolutions and dense layers, as Model 3, which
    is only bigger), Model 5 (Keras' ResNet50) and ResNet-18 with the modern recipe
    (its own schedule, MixUp/CutMix). Chapters 6 and 13 make the same calls."""
    import keras
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from tinylib import data, evaluate, gradcam, plots, train
    from tinylib.profiles import get_profile

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    profile = get_profile("smoke")
    previous = keras.config.dtype_policy()
    try:
        monkeypatch.setenv(environment.PRECISION_ENV, "mixed_bfloat16")
        assert environment.configure_precision() == "mixed_bfloat16"
        for name, options in (("model2", {}), ("model4", {}),
                              ("model5", {"build_options": {"weights": None}}), ("resnet18", {"recipe": "modern"})):
            run = train.train_model(name, ds, profile, epochs=1, runs=tmp_path / "runs", **options)
            assert run.record["dtype_policy"] == "mixed_bfloat16", name
            assert run.model.layers[-1].compute_dtype == "float32", name  # the softmax, for the metrics
            ev = evaluate.evaluate(run.model, ds.val, ds.class_names)
            assert ev.probabilities.dtype == np.float32 and np.allclose(ev.probabilities.sum(axis=1), 1, atol=1e-3)
            assert 0 <= ev.top1 <= ev.top5 <= 1, name
            heat = gradcam.gradcam(run.model, ds.val.images[:2])
            assert heat.shape[0] == 2 and np.isfinite(heat).all(), name
            assert heat.min() >= 0 and heat.max() <= 1 + 1e-6, name
            fig = plots.explain_prediction(run.model, ds.val.images[0], ds.class_names, label=int(ds.val.labels[0]))
            assert fig.axes, name
            matplotlib.pyplot.close("all")
    finally:
        keras.config.set_dtype_policy(previous)


def test_mixup_and_cutmix_compute_in_float32_under_mixed_bfloat16(tiny_env, synthetic, monkeypatch):
    """Keras' MixUp and CutMix took the global bfloat16 policy and failed on float32 batches;
    tinylib's layer mixes in float32 whatever the policy, and its model trains under it."""
    import keras
    import numpy as np

    from tinylib import data, models
    from tinylib.mixing import MixUpCutMix, mixed_batch

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    labels = keras.utils.to_categorical(ds.train.labels, ds.num_classes).astype("float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0)):
            layer = MixUpCutMix(mixup=mixup, cutmix=cutmix, seed=0)
            images, mixed = mixed_batch(ds.train.images[:4], labels[:4], layer)
            assert images.dtype == np.float32 and mixed.dtype == np.float32
            assert np.allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
        model = models.build_model("model1", num_classes=ds.num_classes, mixing=MixUpCutMix(mixup=0.2, cutmix=1.0))
        before = [w.copy() for w in model.get_weights()]
        history = model.fit(ds.train.images[:8], labels[:8], batch_size=4, epochs=1, verbose=0)
        # The mixed step ran in bfloat16: a finite loss, and the float32 weights moved.
        assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0, history.history
        assert all(w.dtype == np.float32 for w in model.get_weights())
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    finally:
        keras.config.set_dtype_policy(previous)
