"""What the optimizer comparison's runs did (``train.compare_optimizers``): how far each
optimizer moved the weights from where they started, and the table chapter 5 shows.

A learning rate that suits Adam can leave plain SGD almost where it began: its first
epoch's loss is then the loss of an unsure model (ln of the classes), and its weights
have hardly moved. The distance says so in one number per optimizer.
"""

from __future__ import annotations

import numpy as np


def _weights(model) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights]


def weight_travel(run, data, profile) -> float:
    """How far the run's trained weights lie from the ones it started from, relative to
    those: ||final - initial|| / ||initial|| over every trainable weight. The initial weights
    are rebuilt as ``compare_optimizers`` built them (the run's seed, its model and optimizer)."""
    import keras

    from tinylib import train

    record = run.record
    keras.utils.set_random_seed(int(record.get("seed", profile.seed)))
    start = train.build(record["model"], data, profile, optimizer=record["optimizer"],
                        learning_rate=record["learning_rate"])
    final, initial = _weights(run.model), _weights(start)
    moved = sum(float(np.sum((f.astype("float64") - i) ** 2)) for f, i in zip(final, initial))
    size = sum(float(np.sum(i.astype("float64") ** 2)) for i in initial)
    return float(np.sqrt(moved / size))


def comparison_table(runs: dict, data, profile):
    """A row per optimizer (a pandas DataFrame, formatted for display): its epochs, its first
    epoch's losses, its last validation loss, its best validation accuracy and how far it
    moved its weights (``weight_travel``)."""
    import pandas as pd

    rows = {run.record["optimizer"]: {
        "epochs": run.record["epochs_run"],
        "train loss, epoch 1": run.history["loss"][0],
        "val loss, epoch 1": run.history["val_loss"][0],
        "val loss, last": run.history["val_loss"][-1],
        "best val accuracy": run.record["best_val_top1"],
        "weights moved": weight_travel(run, data, profile),
    } for run in runs.values()}
    return pd.DataFrame.from_dict(rows, orient="index").style.format({
        "train loss, epoch 1": "{:.3f}", "val loss, epoch 1": "{:.4f}", "val loss, last": "{:.4f}",
        "best val accuracy": "{:.3f}", "weights moved": "{:.2e}"})


def reference_line(runs: dict, num_classes: int) -> str:
    """The learning rates the runs used, and the two yardsticks of a model that has learned
    nothing: chance accuracy and the loss of a uniform guess."""
    rates = sorted({run.record["learning_rate"] for run in runs.values()})
    return (f"learning rate: {', '.join(f'{rate:g}' for rate in rates)}\n"
            f"for reference: chance accuracy 1/{num_classes} = {1 / num_classes:.3f}, "
            f"an unsure model's loss ln {num_classes} = {np.log(num_classes):.3f}")
