"""A few training steps of a study model with a speed setting one way, then the other.

A speed setting changes how a step runs, not what it learns: the tests that say so train
the same model on the same data from the same seed each way and compare where they end.
"""

from __future__ import annotations

import keras
import numpy as np


def train_each_way(monkeypatch, variable: str, values, build, steps_per_call: int | None = None) -> list:
    """[(model, its epochs' losses)] for each value of the environment ``variable``: ``build()``
    makes the compiled model (read the setting there), two epochs of three steps of 16 images
    (32x32, five classes) train it, in order, ``steps_per_call`` steps a compiled call."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 32, 32, 3)).astype("uint8")
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, 48)]
    ends = []
    for value in values:
        monkeypatch.setenv(variable, value)
        keras.utils.set_random_seed(0)
        model = build()
        if steps_per_call is not None:
            model.steps_per_execution = steps_per_call
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
        ends.append((model, history["loss"]))
    return ends


def weights_of(model, leave_out=()) -> dict:
    """{path: value} of every weight of ``model`` (trainable or not) but those in ``leave_out``."""
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights if w.path not in leave_out}
