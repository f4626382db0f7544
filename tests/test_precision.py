"""The precision a GPU gets (mixed bfloat16), on the CPU: the chapters that train or explain still run.

On a GPU, ``configure_precision('auto')`` picks ``mixed_bfloat16``; CI has no GPU, so
``TINYLIB_PRECISION`` asks for it on the CPU. Run this way, chapter 6 (a study model's
training, evaluation and top-5 metric), chapter 13 (the recipes, MixUp and CutMix) and
chapter 15 (Grad-CAM) once failed where a GPU would have failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinylib import environment

REPO = Path(__file__).resolve().parents[1]
# Chapter 15 trains every study model and ResNet-18, evaluates them and explains them with
# Grad-CAM. Chapter 6's training of Model 1 is the same path; chapter 13's MixUp/CutMix
# under this policy is checked faster below, and on JAX by the whole reproduce plan
# (tests/test_reproduce.py). CI's 30 minutes leave room for one chapter run twice.
CHAPTERS = ["book/15_inside_the_models.ipynb"]


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


@pytest.mark.realdata
@pytest.mark.slow
def test_the_chapters_that_train_or_explain_run_under_mixed_bfloat16(real_data_path, tmp_path):
    env = {**os.environ, environment.PRECISION_ENV: "mixed_bfloat16", "TINYLIB_PROFILE": "smoke",
           "TINYLIB_NOTEBOOK_RUNS": str(tmp_path / "runs")}  # book/conftest.py: the chapters' runs, kept
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHAPTERS],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:]
    policies = {json.loads(p.read_text())["dtype_policy"] for p in (tmp_path / "runs").glob("*/record.json")}
    assert policies == {"mixed_bfloat16"}, policies


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
        history = model.fit(ds.train.images[:8], labels[:8], batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    finally:
        keras.config.set_dtype_policy(previous)
