"""Saving a run as it trains: after every epoch, and every few minutes inside one.

A kill then costs minutes, not an epoch, and a resumed run continues at the batch
where it stopped, with the metrics' running totals, the random generators and the
study's callbacks (early stopping's patience, its best weights) as they were.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tinylib import files
from tinylib.runs import (BEST_PATTERN, BEST_WEIGHTS, EPOCH_PATTERN, KEEP_CHECKPOINTS, PARTIAL_CHECKPOINT,
                          PARTIAL_PATTERN, STATE_FILE, Run, best_weights_name, epoch_checkpoint_name,
                          partial_checkpoint_name, random_state, remove_unnamed, save_weights, write_run_json)


# The state of the study's callbacks that a resumed run must carry on with (Keras resets
# them when ``fit`` starts): without it, early stopping would forget its patience.
CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


CHECKPOINT_EVERY = 300.0  # seconds between checkpoints inside an epoch


class OutOfTime(Exception):
    """Raised out of ``fit`` once a checkpoint inside an epoch has saved the run at the
    sitting's deadline: the run resumes at that batch."""


class Checkpointer(keras.callbacks.Callback):
    """Save the run as it goes: after each epoch, and every few minutes inside one.

    After each epoch: the weights with the optimizer state, then ``state.json``
    pointing at them.  Inside an epoch, every ``every`` seconds (never after its last
    batch: the epoch's end comes next): the same into a file named by the epoch and
    the batch, with the batches done and the metrics' running totals,
    so a run killed mid-epoch resumes at that batch with the same result as an
    uninterrupted one (its batches come in an order fixed by seed and epoch).  It
    also keeps the study's callbacks' state (early stopping's patience, its best
    weights) across resumes.
    """

    def __init__(self, run: "Run", every: float | None = CHECKPOINT_EVERY, keras_callbacks=()):
        super().__init__()
        self.run = run
        self.every = every
        self.keras_callbacks = [c for c in keras_callbacks if type(c) in CALLBACK_STATE]
        self.epoch_start = 0.0
        self.offset = 0  # batches of the first epoch done before this fit call (a mid-epoch resume)
        # A sitting's end (time.monotonic()): where an epoch cannot end before it, the run
        # stops at a checkpoint inside the epoch, taken before the deadline (``_due``), allowing
        # for a save as long as the run's last one (``Run.save_seconds``, kept in state.json).
        self.deadline: float | None = None
        self.batches_start = 0.0  # when this fit call's first batch began

    # --- resume -------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        """Give the study's callbacks back the state Keras just reset."""
        saved = self.run.callback_state
        for index, callback in enumerate(self.keras_callbacks):
            for name, value in saved.get(str(index), {}).items():
                setattr(callback, name, value)
            best = self.run.path / (self.run.best_weights or BEST_WEIGHTS)
            if getattr(callback, "restore_best_weights", False) and best.is_file():
                with np.load(best, allow_pickle=False) as arrays:
                    callback.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = self.last_save = self.batches_start = time.perf_counter()
        self.train_end = None
        self.epoch_rate = None
        self.carried_metrics = None
        partial = self.run.partial
        if self.offset and partial and partial["epoch"] == epoch:  # resumed mid-epoch: carry on
            self.carried_metrics = partial["metrics"]
            self.epoch_start -= partial["train_seconds"]

    # --- inside an epoch ------------------------------------------------------------------

    def on_train_batch_end(self, batch, logs=None):
        if self.carried_metrics:
            # The metrics' running sums (totals and counts) of the batches before the
            # interruption.  Added after the first step, because Keras builds its compiled
            # metrics only when it first traces the step.
            for variable in self.model.metrics_variables:
                if variable.path in self.carried_metrics:
                    saved = np.asarray(self.carried_metrics[variable.path])
                    variable.assign(keras.ops.convert_to_numpy(variable) + saved.astype(variable.dtype))
            self.carried_metrics = None
        due = self._due(batch)
        if not due and (self.every is None or time.perf_counter() - self.last_save < self.every):
            return
        if batch + 1 >= (self.params.get("steps") or float("inf")):
            return  # the epoch's last batch: its end (validation, then a checkpoint) comes next
        started = time.perf_counter()
        name = partial_checkpoint_name(self.epoch, self.offset + batch + 1)
        save_weights(self.model, self.run.path / name)
        self.run.partial = {
            "epoch": self.epoch, "batches": self.offset + batch + 1, "checkpoint": name,
            "train_seconds": time.perf_counter() - self.epoch_start,
            "metrics": {v.path: keras.ops.convert_to_numpy(v).tolist() for v in self.model.metrics_variables},
        }
        self.run.save_seconds = time.perf_counter() - started  # state.json keeps it for the next sitting
        self._write_state(name)
        remove_unnamed(self.run.path, PARTIAL_PATTERN, keep=name)
        (self.run.path / PARTIAL_CHECKPOINT).unlink(missing_ok=True)
        self.run.write_record()  # the time spent so far, which a kill -9 would otherwise lose
        self.last_save = time.perf_counter()
        if due:
            raise OutOfTime(f"the sitting's time is up inside epoch {self.epoch + 1}, after batch "
                            f"{self.offset + batch + 1}")

    def _due(self, batch: int) -> bool:
        """Whether to stop at this batch, for the sitting's deadline: when the epoch cannot end
        before it (its batches left at this call's pace, then its validation, as long as the
        last epoch's or, in a first epoch, as ``_first_validation`` estimates it, and a save), stop at the last batch after which a save still ends before
        it, rather than at the first batch past it: at the one before the epoch's last at the
        latest, since no save follows the last. (The callback runs once per compiled call:
        with several steps per call, the next chance to save is that many steps away.)"""
        if self.deadline is None:
            return False
        now, done = time.monotonic(), batch + 1
        steps = self.params.get("steps") or float("inf")
        per_step = (time.perf_counter() - self.batches_start) / done
        between = max(1, int(getattr(self.model, "steps_per_execution", None) or 1))  # steps to the next chance
        seconds, train_seconds = (self.run.history.get(key) or [] for key in ("seconds", "train_seconds"))
        validation = (seconds[-1] - train_seconds[-1] if seconds and train_seconds
                      else self._first_validation(per_step, steps))
        save = self.run.save_seconds
        if now + (steps - done) * per_step + validation + save <= self.deadline:
            return False  # the epoch ends in time
        return done + between >= steps or now + between * per_step + save >= self.deadline

    def _first_validation(self, per_step: float, steps: float) -> float:
        """A first epoch's validation, before one is timed: as many batches as the validation
        images fill, each a third of a training step (a forward pass of the three passes a
        step makes, as ``tinylib.flops`` counts them). 0 where the record does not say."""
        dataset = (getattr(self.run, "record", None) or {}).get("dataset") or {}
        train, val = dataset.get("train_images"), dataset.get("val_images")
        if not train or not val or steps == float("inf"):
            return 0.0
        batch = train / (self.offset + steps)  # an epoch resumed at batch offset serves the rest only
        return val / batch * per_step / 3.0

    # --- at the end of an epoch ----------------------------------------------------------

    def on_test_begin(self, logs=None):
        if self.train_end is None:  # validation is not training
            # JAX dispatches steps asynchronously: the last ones may still be computing.
            # Reading the step counter waits for them, so only finished work is timed.
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                keras.ops.convert_to_numpy(optimizer.iterations)
            self.train_end = time.perf_counter()
            # The rate the epoch's last step used: read before ReduceLROnPlateau (whose
            # on_epoch_end runs before this callback's) lowers it for the next epoch.
            self.epoch_rate = self._learning_rate()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        now = time.perf_counter()
        logs["seconds"] = now - self.epoch_start
        logs["train_seconds"] = (self.train_end or now) - self.epoch_start
        rate = self.epoch_rate if self.epoch_rate is not None else self._learning_rate()
        if rate is not None:
            logs["learning_rate"] = rate
        # The epoch joins the run only once state.json names its checkpoint: a failure or an
        # interruption before (a full disk, a SIGTERM during a long save) gives the run back as
        # it was, so the record written as it unwinds holds no epoch that no checkpoint has.
        before = ({key: len(values) for key, values in self.run.history.items()}, self.run.epochs_done,
                  self.run.partial, self.offset, self.run.best_weights, self.run.callback_state)
        written = False
        try:
            for key, value in logs.items():
                self.run.history.setdefault(key, []).append(float(value))
            checkpoint = self.run.path / epoch_checkpoint_name(epoch + 1)
            started = time.perf_counter()
            save_weights(self.model, checkpoint)
            self.run.epochs_done = epoch + 1
            self.run.partial, self.offset = None, 0
            self._save_best_weights(epoch)
            self.run.save_seconds = time.perf_counter() - started
            self._write_state(checkpoint.name)
            written = True
        except BaseException:
            if not written:
                self._give_back(*before)
            raise
        # Only now that state.json names the new unit: the files of the units before it.
        for old in sorted(self.run.path.glob(EPOCH_PATTERN))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        remove_unnamed(self.run.path, PARTIAL_PATTERN, keep=None)
        remove_unnamed(self.run.path, BEST_PATTERN, keep=self.run.best_weights)
        for legacy in (PARTIAL_CHECKPOINT, BEST_WEIGHTS):
            if legacy != self.run.best_weights:
                (self.run.path / legacy).unlink(missing_ok=True)
        self.run.write_record()

    def _learning_rate(self) -> float | None:
        rate = getattr(getattr(self.model, "optimizer", None), "learning_rate", None)
        return None if rate is None else float(keras.ops.convert_to_numpy(rate))

    def _give_back(self, lengths, epochs_done, partial, offset, best_weights, callback_state) -> None:
        """The run as it was before an epoch end that did not reach state.json."""
        for key in list(self.run.history):
            if key in lengths:
                del self.run.history[key][lengths[key]:]
            else:
                del self.run.history[key]
        self.run.epochs_done, self.run.partial, self.offset = epochs_done, partial, offset
        self.run.best_weights, self.run.callback_state = best_weights, callback_state

    def _save_best_weights(self, epoch: int) -> None:
        """Early stopping's best weights live in memory: keep them on disk for a resume."""
        for callback in self.keras_callbacks:
            if getattr(callback, "restore_best_weights", False) and callback.best_epoch == epoch \
                    and callback.best_weights is not None:
                name = best_weights_name(epoch)
                with files.atomic_path(self.run.path / name) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, *callback.best_weights)
                self.run.best_weights = name  # named by the state written next

    def _write_state(self, checkpoint: str) -> None:
        self.run.callback_state = {
            str(index): {name: _plain(getattr(callback, name, None)) for name in CALLBACK_STATE[type(callback)]}
            for index, callback in enumerate(self.keras_callbacks)
        }
        write_run_json(self.run.path / STATE_FILE, {
            "epochs_done": self.run.epochs_done, "checkpoint": checkpoint, "history": self.run.history,
            "partial": self.run.partial, "callbacks": self.run.callback_state,
            "best_weights": self.run.best_weights, "random_state": random_state(self.model),
            "save_seconds": round(self.run.save_seconds, 3),
        })


def _plain(value):
    """A callback's attribute as JSON can hold it (NumPy and Keras scalars become floats)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None

