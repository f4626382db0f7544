"""Training: one ``fit`` for every chapter, with checkpoints, resume and a run record.

Every run lives in its own folder (``runs_dir()/<run name>``)::

    checkpoint-epoch-NNN.weights.h5   model + optimizer state after epoch NNN
    final.weights.h5                  what the model ends with (early stopping may restore the best epoch)
    state.json                        which checkpoint is current, and the history so far
    record.json                       the run record, rewritten after every epoch

``state.json`` is written atomically after the checkpoint it names, so a run
killed at any moment (even in the middle of an epoch) resumes from the last
finished epoch with the same epoch count and the same history.  This is the only
module that writes run records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np

from tinylib import files
from tinylib import models as models_lib
from tinylib.batches import ShuffledBatches
from tinylib.progress import ProgressLog
from tinylib.profiles import Profile, get_profile, gpu_available
from tinylib.recipes import Recipe, ablation_recipes, get_recipe, steps_per_epoch

RUNS_ENV = "TINYLIB_RUNS"
STATE_FILE = "state.json"
RECORD_FILE = "record.json"
KEEP_CHECKPOINTS = 1  # Model 3's weights and Adam state are 1.7 GB: keep one
FINAL_CHECKPOINT = "final.weights.h5"


def runs_dir() -> Path:
    """Where runs go: ``TINYLIB_RUNS``, else ``<TINYLIB_HOME>/runs``."""
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser()
    from tinylib.data import home

    return home() / "runs"


# --------------------------------------------------------------------------------------
# Environment: backend, device, precision, versions.
# --------------------------------------------------------------------------------------


def device_name() -> str:
    """A readable name of the device the backend computes on."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"GPU: {details.get('device_name', gpus[0].name)}"
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"GPU: {device.device_kind}"
    except Exception:  # a name is nice to have, never worth a crash
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def configure_precision(policy: str = "auto") -> str:
    """Set Keras' global dtype policy; call it before building a model.

    'auto' picks mixed precision (bfloat16 compute, float32 weights) where a GPU
    is visible and plain float32 on a CPU, where mixed precision is slower.
    """
    if policy == "auto":
        policy = "mixed_bfloat16" if gpu_available() else "float32"
    keras.config.set_dtype_policy(policy)
    return policy


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    backend = keras.backend.backend()
    try:
        module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
        versions[backend] = module.__version__
    except (KeyError, ImportError):
        pass
    from tinylib import __version__

    versions["tinylib"] = __version__
    return versions


def git_commit() -> str | None:
    """The commit of the tinylib checkout, when it is one; '+dirty' with uncommitted changes."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip()

        commit = git("rev-parse", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+dirty"
        return commit or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------
# Callbacks.
# --------------------------------------------------------------------------------------


def make_callbacks(names) -> list:
    """Keras callbacks by name: 'early_stopping' and 'reduce_lr_on_plateau', as the seed used."""
    made = []
    for name in names:
        if name == "early_stopping":
            made.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                      restore_best_weights=True, verbose=1))
        elif name == "reduce_lr_on_plateau":
            made.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=3,
                                                          min_lr=1e-6, verbose=1))
        else:
            raise ValueError(f"unknown callback {name!r}: use 'early_stopping' or 'reduce_lr_on_plateau'")
    return made


def _write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half."""
    files.write_json(path, payload, default=_jsonable)


def save_weights(model: keras.Model, path: Path) -> Path:
    """Save weights (and optimizer state) atomically: a kill mid-save leaves the old file."""
    with files.atomic_path(path) as tmp:
        model.save_weights(tmp, overwrite=True)
    return path


class CheckpointError(OSError):
    """A checkpoint that cannot be read: damaged, or saved by another model."""


def load_checkpoint(model: keras.Model, path: Path) -> None:
    """Load a checkpoint, turning a damaged or mismatched file into a clear error."""
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"cannot load the checkpoint {path} ({type(err).__name__}: {err}). It is damaged or "
            f"belongs to another model: start the run afresh with `--fresh` (resume=False)"
        ) from None


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


# The state of the study's callbacks that a resumed run must carry on with (Keras resets
# them when ``fit`` starts): without it, early stopping would forget its patience.
CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}
PARTIAL_CHECKPOINT = "partial.weights.h5"
BEST_WEIGHTS = "best-weights.npz"
CHECKPOINT_EVERY = 300.0  # seconds between checkpoints inside an epoch


class _Checkpointer(keras.callbacks.Callback):
    """Save the run as it goes: after each epoch, and every few minutes inside one.

    After each epoch: the weights with the optimizer state, then ``state.json``
    pointing at them.  Inside an epoch, every ``every`` seconds: the same into
    ``partial.weights.h5``, with the batches done and the metrics' running totals,
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

    # --- resume -------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        """Give the study's callbacks back the state Keras just reset."""
        saved = self.run.callback_state
        for index, callback in enumerate(self.keras_callbacks):
            for name, value in saved.get(str(index), {}).items():
                setattr(callback, name, value)
            best = self.run.path / BEST_WEIGHTS
            if getattr(callback, "restore_best_weights", False) and best.is_file():
                with np.load(best, allow_pickle=False) as arrays:
                    callback.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = self.last_save = time.perf_counter()
        self.train_end = None
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
        if self.every is None or time.perf_counter() - self.last_save < self.every:
            return
        save_weights(self.model, self.run.path / PARTIAL_CHECKPOINT)
        self.run.partial = {
            "epoch": self.epoch, "batches": self.offset + batch + 1, "checkpoint": PARTIAL_CHECKPOINT,
            "train_seconds": time.perf_counter() - self.epoch_start,
            "metrics": {v.path: keras.ops.convert_to_numpy(v).tolist() for v in self.model.metrics_variables},
        }
        self._write_state(PARTIAL_CHECKPOINT)
        self.last_save = time.perf_counter()

    # --- at the end of an epoch ----------------------------------------------------------

    def on_test_begin(self, logs=None):
        self.train_end = self.train_end or time.perf_counter()  # validation is not training

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        now = time.perf_counter()
        logs["seconds"] = now - self.epoch_start
        logs["train_seconds"] = (self.train_end or now) - self.epoch_start
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        for key, value in logs.items():
            self.run.history.setdefault(key, []).append(float(value))
        checkpoint = self.run.path / f"checkpoint-epoch-{epoch + 1:03d}.weights.h5"
        save_weights(self.model, checkpoint)
        self.run.epochs_done = epoch + 1
        self.run.partial, self.offset = None, 0
        self._save_best_weights(epoch)
        self._write_state(checkpoint.name)
        for old in sorted(self.run.path.glob("checkpoint-epoch-*.weights.h5"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        (self.run.path / PARTIAL_CHECKPOINT).unlink(missing_ok=True)
        self.run.write_record()

    def _save_best_weights(self, epoch: int) -> None:
        """Early stopping's best weights live in memory: keep them on disk for a resume."""
        for callback in self.keras_callbacks:
            if getattr(callback, "restore_best_weights", False) and callback.best_epoch == epoch \
                    and callback.best_weights is not None:
                with files.atomic_path(self.run.path / BEST_WEIGHTS) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, *callback.best_weights)

    def _write_state(self, checkpoint: str) -> None:
        self.run.callback_state = {
            str(index): {name: _plain(getattr(callback, name, None)) for name in CALLBACK_STATE[type(callback)]}
            for index, callback in enumerate(self.keras_callbacks)
        }
        _write_json(self.run.path / STATE_FILE, {
            "epochs_done": self.run.epochs_done, "checkpoint": checkpoint, "history": self.run.history,
            "partial": self.run.partial, "callbacks": self.run.callback_state,
            "random_state": random_state(self.model),
        })


def _seed_states(model) -> list:
    """The states of the model's random generators (augmentation, dropout), in model order."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def random_state(model) -> list:
    """Where the model's random generators stand: Keras' weights files leave them out."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(model)]


def restore_random_state(model, saved) -> None:
    """Put the generators back where ``random_state`` found them, so a resumed run draws
    the augmentations and dropout masks an uninterrupted one would have drawn."""
    states = _seed_states(model)
    if saved and len(saved) == len(states):
        for variable, value in zip(states, saved):
            variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def _plain(value):
    """A callback's attribute as JSON can hold it (NumPy and Keras scalars become floats)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------
# Runs.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A training run: its folder, its model, its history and its record."""

    path: Path
    model: keras.Model
    record: dict
    history: dict = dataclasses.field(default_factory=dict)
    epochs_done: int = 0
    wall_before: float = 0.0  # seconds spent by earlier invocations, interrupted ones included
    partial: dict | None = None  # where inside an epoch the last mid-epoch checkpoint was taken
    callback_state: dict = dataclasses.field(default_factory=dict)  # early stopping's patience, ...
    out_of_time: bool = False  # stopped at an epoch boundary by a deadline: resumable, not finished
    started: float | None = None  # perf_counter() when this invocation began training

    @property
    def wall_seconds(self) -> float:
        """Training time of the run so far, over every invocation that trained it."""
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.wall_before + running

    @property
    def checkpoint(self) -> Path | None:
        state = _read_state(self.path)
        return self.path / state["checkpoint"] if state else None

    def write_record(self) -> dict:
        record = self.record
        record["history"] = self.history
        record["epochs_run"] = self.epochs_done
        record["wall_seconds"] = round(self.wall_seconds, 1)
        seconds = self.history.get("train_seconds", [])[1:] or self.history.get("train_seconds", [])
        if seconds:  # the first epoch also compiles: left out when there are others
            record["train_images_per_second"] = round(
                record["dataset"]["train_images"] / float(np.median(seconds)), 1)
        for key, name in (("val_accuracy", "val_top1"), ("val_top5", "val_top5")):
            values = self.history.get(key)
            if values:
                record[f"best_{name}"] = max(values)
                record[f"final_{name}"] = values[-1]
        if self.history.get("accuracy"):
            record["final_train_top1"] = self.history["accuracy"][-1]
        record["finished"] = self.epochs_done >= record["epochs"] or record.get("stopped_early", False)
        _write_json(self.path / RECORD_FILE, record)
        return record


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_name(model: keras.Model, profile: Profile, suffix: str = "") -> str:
    return f"{model.name}-{profile.name}-{keras.backend.backend()}{suffix}"


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return keras.utils.to_categorical(labels, num_classes).astype("float32")


class RunConflict(ValueError):
    """A run folder holds a run that this call cannot continue (other settings, fewer epochs)."""


class RunInUse(RuntimeError):
    """Another process is training the same run folder right now."""


def fit(model: keras.Model, data, profile: Profile | str | None = None, *, name: str | None = None,
        epochs: int | None = None, batch_size: int | None = None, callbacks="seed",
        extra_callbacks=(), resume: bool = True, runs: Path | None = None,
        verbose="auto", notes: dict | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY, deadline: float | None = None,
        seed: int | None = None, suffix: str = "") -> Run:
    """Train ``model`` on ``data`` (a ``TinyImageNet`` subset) as ``profile`` says.

    ``callbacks`` is 'seed' (what the seed used for this model), or a list of
    names for ``make_callbacks``.  With ``resume`` (the default), a run folder
    that holds a checkpoint continues from its last finished epoch; a finished
    run is returned as it is.  Asking a run (finished or not) for more epochs
    than it planned continues it, with a learning-rate schedule re-planned over
    the new length, and the record says so (``epochs_changed``); any other
    change (batch size, data, model, build options, optimizer) is refused with
    what differs.  ``resume=False`` starts the folder afresh.  One process at a
    time trains a run folder: a second is refused (``RunInUse``).

    A model built with a recipe (``build(..., recipe=...)``) is fed MixUp/CutMix
    batches when its recipe asks for them.  ``notes`` are extra fields for the
    record (say, a fine-tuning stage).  Besides the checkpoint after every epoch,
    one is taken every ``checkpoint_every`` seconds inside an epoch (None: never),
    so a kill costs minutes, not an epoch; ``verbose='auto'`` prints Keras' bar in
    a terminal and plain progress lines (``tinylib.progress``) elsewhere.
    ``deadline`` (a ``time.monotonic()`` value) stops the run at the last epoch
    boundary that the next epoch, timed like the last one, would overrun: the run
    is then resumable and ``run.out_of_time`` is True.  ``seed`` (the profile's by
    default) orders the batches and draws MixUp/CutMix; a run with another seed is
    another run, in a folder of its own (``-seed<N>``), as is one given a ``suffix``.
    Returns the ``Run``; its record is in
    ``run.record`` and in ``record.json`` in the run folder.
    """
    profile = get_profile(profile)
    epochs = epochs or getattr(model, "tinylib_epochs", None) or profile.epochs_for(model.name)
    batch_size = batch_size or profile.batch_size
    recipe = getattr(model, "tinylib_recipe", None)
    _check_schedule_length(model, recipe, epochs)
    seed = profile.seed if seed is None else int(seed)
    # A recipe's runs, and runs with another seed, have their own folders.
    suffix = (f"-{recipe.name}" if recipe is not None else "") + suffix
    suffix += f"-seed{seed}" if seed != profile.seed else ""
    path = Path(runs or runs_dir()) / (name or run_name(model, profile, suffix))
    path.mkdir(parents=True, exist_ok=True)
    if callbacks == "seed":
        seed_model = model.name in models_lib.MODELS and recipe in (None, get_recipe("seed"))
        callbacks = models_lib.seed_callbacks(model.name) if seed_model else ()
    callbacks = tuple(callbacks)

    record = _new_record(model, data, profile, epochs, batch_size, callbacks)
    record["seed"] = seed
    record.update(notes or {})
    run = Run(path=path, model=model, record=record)
    lock = _lock_run(path)
    try:
        files.remove_stale_temporaries(path)  # left by a writer that was killed
        if not resume:
            _clear_run(path)
        if _resume(run, epochs):
            return run  # finished, and nothing more asked of it
        _train(run, model, data, seed, epochs, batch_size, callbacks, extra_callbacks, verbose,
               checkpoint_every, deadline)
        return run
    finally:
        lock.release()


def _lock_run(path: Path) -> files.FolderLock:
    """Hold the run folder for this process; refuse if another one trains it now."""
    lock = files.FolderLock(path)
    try:
        return lock.acquire()
    except files.LockedError:
        raise RunInUse(
            f"{path} is being trained by another process (pid {lock.holder()}); a run folder takes "
            "one training at a time. Wait for it to finish, or train under another name "
            "(name=..., --name)."
        ) from None


def _clear_run(path: Path) -> None:
    """Start a run folder afresh: forget its state, record and checkpoints."""
    for stale in [path / STATE_FILE, path / RECORD_FILE, path / FINAL_CHECKPOINT, path / PARTIAL_CHECKPOINT,
                  path / BEST_WEIGHTS, *path.glob("checkpoint-epoch-*.weights.h5")]:
        stale.unlink(missing_ok=True)


def _check_schedule_length(model, recipe, epochs: int) -> None:
    """A recipe's schedule is planned in ``build``: training longer or shorter would bend it."""
    planned = getattr(model, "tinylib_epochs", None)
    if recipe is not None and recipe.schedule != "constant" and planned and planned != epochs:
        raise ValueError(f"{model.name} was built with a {recipe.schedule} schedule over {planned} epochs, "
                         f"but fit was asked for {epochs}: build it with epochs={epochs}")


def _resume(run: Run, epochs: int) -> bool:
    """Load the folder's last checkpoint into ``run``; True when the run is finished as asked."""
    path, model = run.path, run.model
    state = _read_state(path)
    if not state:
        return False
    previous = _read_record(path)
    _check_same_run(path, previous, run.record)
    change = _epochs_change(path, previous, state["epochs_done"], epochs)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    load_checkpoint(model, path / state["checkpoint"])
    restore_random_state(model, state.get("random_state"))
    run.history, run.epochs_done = state["history"], state["epochs_done"]
    run.wall_before = previous.get("wall_seconds", 0.0)
    if previous.get("finished") and change is None:
        if state["checkpoint"] != FINAL_CHECKPOINT:  # killed while finishing: finish now
            run.record = previous
            _finish(run)
        run.record = _read_record(path)
        print(f"{path.name} is finished ({run.epochs_done} epochs): returning its record", flush=True)
        return True
    run.record["resumed_at_epoch"] = state["epochs_done"]
    run.partial, run.callback_state = state.get("partial"), state.get("callbacks") or {}
    changes = list(previous.get("epochs_changed", []))
    if change is not None:
        changes.append(change)
        print(f"{path.name}: planned epochs {change['from']} -> {change['to']}, continuing after epoch "
              f"{change['at_epoch']} (a learning-rate schedule is re-planned over {change['to']} epochs)",
              flush=True)
    if changes:
        run.record["epochs_changed"] = changes
    inside = f" and batch {run.partial['batches']} of epoch {run.partial['epoch'] + 1}" if run.partial else ""
    print(f"Resuming {path.name} after epoch {state['epochs_done']} of {epochs}{inside}", flush=True)
    return False


def _epochs_change(path: Path, previous: dict, done: int, epochs: int) -> dict | None:
    """The change of planned epochs a resume asks for, or None; raises when it cannot be honoured."""
    planned = previous.get("epochs", epochs)
    if epochs == planned:
        return None
    fresh = "To train it with other settings, start afresh (resume=False, --fresh) or use another name (name=..., --name)."
    if epochs < done:
        raise RunConflict(f"{path} has already trained {done} epochs; asked for {epochs}. {fresh}")
    if previous.get("stopped_early"):
        raise RunConflict(f"{path} stopped early after epoch {done} (early stopping found no more "
                          f"progress); asking for {epochs} epochs does not undo that. {fresh}")
    return {"at_epoch": done, "from": planned, "to": epochs}


def _train(run: Run, model, data, seed, epochs, batch_size, callbacks, extra_callbacks, verbose,
           checkpoint_every, deadline=None) -> None:
    """Fit from where the run stands to ``epochs``, checkpointing as it goes, then save the end state."""
    recipe = getattr(model, "tinylib_recipe", None)
    y_train = _one_hot(data.train.labels, data.num_classes)
    y_val = _one_hot(data.val.labels, data.num_classes)
    print(f"Training {model.name} ({model.count_params():,} parameters) on {data.summary()}, "
          f"{epochs} epochs, batch {batch_size}, {keras.backend.backend()} on {run.record['device']}",
          flush=True)
    mixing = recipe is not None and recipe.mixes_batches
    if mixing:
        print(f"MixUp (alpha {recipe.mixup}) / CutMix (alpha {recipe.cutmix}) on the training batches",
              flush=True)

    def batches(epoch: int, start: int):
        if mixing:
            from tinylib.mixing import MixedBatches

            return MixedBatches(data.train.images, y_train, batch_size, mixup=recipe.mixup,
                                cutmix=recipe.cutmix, seed=seed, epoch=epoch, start=start)
        return ShuffledBatches(data.train.images, y_train, batch_size, seed=seed, epoch=epoch,
                               start=start)

    study_callbacks = make_callbacks(callbacks)
    checkpointer = _Checkpointer(run, checkpoint_every, study_callbacks)
    verbosity = _verbosity(verbose)
    progress = [ProgressLog(epochs, batch_size)] if verbosity == "log" else []
    first = run.partial["epoch"] if run.partial else run.epochs_done
    run.started = time.perf_counter()
    try:
        with _sigterm_as_exit():
            # One fit per epoch: each epoch's batches are a dataset of their own, built from
            # (seed, epoch), and a resumed epoch starts at the batch where it stopped.
            for epoch in range(first, epochs):
                if _would_overrun(run, deadline):
                    run.out_of_time = True
                    break
                start = run.partial["batches"] if run.partial and run.partial["epoch"] == epoch else 0
                checkpointer.offset = start
                for line in progress:
                    line.offset = start
                model.fit(
                    # shuffle=False: the batches come in their own (seed, epoch) order; Keras would
                    # shuffle them again with Python's global random state, which no resume recreates.
                    batches(epoch, start), shuffle=False,
                    validation_data=(np.asarray(data.val.images), y_val), validation_batch_size=batch_size,
                    epochs=epoch + 1, initial_epoch=epoch,
                    callbacks=[*study_callbacks, checkpointer, *progress, *extra_callbacks],
                    verbose=0 if verbosity == "log" else verbosity,
                )
                if model.stop_training:
                    break
    except BaseException:
        if run.epochs_done:  # keep the time this invocation spent, for the record's wall time
            run.write_record()
        raise
    finally:
        run.wall_before, run.started = run.wall_seconds, None
    if run.out_of_time:
        print(f"{run.path.name}: stopped after epoch {run.epochs_done} of {epochs} to keep within the "
              "time budget; run the same command again to continue", flush=True)
        run.write_record()
        return
    run.record["stopped_early"] = bool(model.stop_training and run.epochs_done < epochs)
    _finish(run)


def _would_overrun(run: Run, deadline: float | None) -> bool:
    """Whether another epoch, as long as the last one, would end after ``deadline``."""
    if deadline is None:
        return False
    seconds = run.history.get("seconds") or []
    estimate = seconds[-1] if seconds else 0.0  # a run's first epoch: no estimate, go
    if run.partial:
        estimate = max(estimate - run.partial["train_seconds"], 0.0)
    return time.monotonic() + estimate > deadline


def _finish(run: Run) -> None:
    """Save what the model ends with as the final checkpoint; drop the resume points.

    Early stopping may have put the best epoch's weights back: the final checkpoint
    holds what the model ends with, so a reloaded run predicts as this one does.
    Each step is atomic and the state names the final weights only once they are
    whole, so a kill anywhere in here is finished by the next call.
    """
    save_weights(run.model, run.path / FINAL_CHECKPOINT)
    _write_json(run.path / STATE_FILE, {**_read_state(run.path), "checkpoint": FINAL_CHECKPOINT})
    # A finished run needs no resume point; early stopping's best weights stay, for a run
    # asked later for more epochs.
    for finished in [*run.path.glob("checkpoint-epoch-*.weights.h5"), run.path / PARTIAL_CHECKPOINT]:
        finished.unlink(missing_ok=True)
    run.write_record()


@contextlib.contextmanager
def _sigterm_as_exit():
    """Let a polite kill (SIGTERM: a job limit, ``timeout``) unwind like Ctrl-C does.

    Python's default dies at once and skips ``finally`` blocks; raising SystemExit
    instead saves the record and releases the run folder.  Only the main thread can
    set handlers: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What must be equal for a folder's run to be continued: anything else is another run.
IDENTITY = ("model", "parameters", "weights", "augmentation", "optimizer", "learning_rate", "recipe",
            "batch_size", "build_options", "dataset", "seed")


def _check_same_run(path: Path, previous: dict, record: dict) -> None:
    """Refuse to resume a run folder that holds a different run (say, other weights)."""
    changed = [key for key in IDENTITY if key in previous and key in record
               and _comparable(key, previous[key], record[key]) != _comparable(key, record[key], previous[key])]
    if changed:
        details = ", ".join(_difference(key, previous[key], record[key]) for key in changed)
        raise RunConflict(
            f"{path} holds a different run ({details}): give this run another name (name=..., --name) "
            "or start it afresh, replacing the old one (resume=False, --fresh)")


def _comparable(key: str, value, other):
    """``value`` as compared with ``other``: build options only on the keys both records have.

    Records written before every default was recorded hold only the options given; a
    missing option was its default then, as it is now.
    """
    if key == "build_options" and isinstance(value, dict) and isinstance(other, dict):
        return {k: v for k, v in value.items() if k in other}
    return value


def _difference(key: str, old, new) -> str:
    """One changed setting in words; dicts show only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        if key == "dataset" and "wnids" in keys:
            keys = [k for k in keys if k != "wnids"] + ["classes chosen"]
            old, new = {**old, "classes chosen": "..."}, {**new, "classes chosen": "other"}
        return ", ".join(f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{key}: {old!r} -> {new!r}"


def _read_record(path: Path) -> dict:
    try:
        return json.loads((path / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _verbosity(verbose):
    """Keras' progress bar in a terminal; tinylib's plain lines ('log') in a log file or a book."""
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else "log"


def _new_record(model, data, profile, epochs, batch_size, callbacks) -> dict:
    optimizer = model.optimizer
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under mixed float16's loss scaling
    recipe = getattr(model, "tinylib_recipe", None)
    if recipe is not None:
        learning_rate = recipe.learning_rate  # the peak: a schedule starts its warmup at 0
    elif optimizer is not None:
        learning_rate = float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.6g}")
    else:
        learning_rate = None
    return {
        "model": model.name,
        "parameters": int(model.count_params()),
        "profile": profile.name,
        "backend": keras.backend.backend(),
        "device": device_name(),
        "dtype_policy": keras.config.dtype_policy().name,
        "weights": getattr(model, "tinylib_weights", "random"),
        "augmentation": _augmentation_config(model),
        "build_options": _build_options(model),
        "dataset": {
            "classes": data.num_classes,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "seed": profile.seed,
            "wnids": list(data.wnids),
        },
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": type(optimizer).__name__ if optimizer else None,
        "learning_rate": learning_rate,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "callbacks": list(callbacks),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _build_options(model) -> dict:
    """The architecture options the model was built with (width, dropout, ...), as JSON has them."""
    return json.loads(json.dumps(getattr(model, "tinylib_build_options", {}), default=str))


def _augmentation_config(model) -> dict | None:
    """The settings of the augmentation layer at the model's head, if it has one."""
    from tinylib.augment import RandomAffineAugment, _TrainingOnlyAugmentation

    for layer in model.layers:
        if isinstance(layer, _TrainingOnlyAugmentation):
            config = layer.get_config()
            config = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
            if isinstance(layer, RandomAffineAugment):
                return config  # the seed's augmentation, recorded as records before the crop had it
            return {"layer": type(layer).__name__, **config}
    return None


def load_run(path: Path | str) -> dict:
    """The record of a run folder (or a record file), for tables and plots."""
    path = Path(path)
    record = _read_record(path) if path.is_dir() else json.loads(path.read_text())
    if not record:
        raise FileNotFoundError(f"no {RECORD_FILE} in {path}: is it a run folder?")
    return record


def build(model_name: str, data, profile=None, augment: bool = True, recipe: Recipe | str | None = None,
          epochs: int | None = None, batch_size: int | None = None, **options) -> keras.Model:
    """Build a model for ``data`` with the seed's augmentation and the profile's options.

    With a ``recipe`` (a ``Recipe`` or a name: 'seed', 'modern'), the recipe decides
    the precision, the augmentation layer, the optimizer with its schedule (which
    needs the run's length: ``epochs`` and ``batch_size``, the profile's by default)
    and the loss; ``fit`` then reads the recipe from the model.
    """
    from tinylib.augment import augmentation

    profile = get_profile(profile)
    key = models_lib.normalize_name(model_name)
    options = {**profile.options_for(key), **options}
    if recipe is None:
        return models_lib.build_model(model_name, num_classes=data.num_classes,
                                      augmentation=augmentation() if augment else None, **options)
    recipe = get_recipe(recipe)
    configure_precision(recipe.precision)
    epochs = epochs or profile.epochs_for(key)
    steps = steps_per_epoch(len(data.train), batch_size or profile.batch_size)
    model = models_lib.build_model(model_name, num_classes=data.num_classes, compile=False,
                                   augmentation=recipe.augmentation_layer() if augment else None, **options)
    models_lib.compile_model(model, recipe.make_optimizer(steps, epochs), loss=recipe.make_loss())
    model.tinylib_recipe = recipe
    model.tinylib_epochs = epochs  # the schedule's length: fit trains this many epochs
    return model


def train_model(model_name: str, data, profile=None, *, augment: bool = True, build_options=None,
                recipe: Recipe | str | None = None, **fit_kwargs) -> Run:
    """Build and train one model in a profile: the one call each model chapter makes.

    ``seed`` (in ``fit_kwargs``; the profile's by default) also draws the initial weights.
    """
    profile = get_profile(profile)
    seed = fit_kwargs.get("seed")
    keras.utils.set_random_seed(profile.seed if seed is None else seed)
    build_options = dict(build_options or {})
    if recipe is not None:
        build_options.update(recipe=recipe, epochs=fit_kwargs.get("epochs"),
                             batch_size=fit_kwargs.get("batch_size"))
    model = build(model_name, data, profile, augment=augment, **build_options)
    return fit(model, data, profile, **fit_kwargs)


def compare_recipes(model_name: str, data, profile=None, recipes: dict | None = None,
                    **fit_kwargs) -> dict[str, Run]:
    """Train one model once per recipe, on the same subset from the same seed: an ablation.

    ``recipes`` maps a label to a ``Recipe`` (default: ``ablation_recipes()``, the
    seed's recipe and then the modern one's ingredients added one at a time).
    Each run gets its own folder, named after the recipe, so it resumes on its own.
    ``epochs`` other than the profile's, and ``seed`` other than the profile's, make
    new runs (folders ending ``-<N>ep`` and ``-seed<N>``): twice the epochs is a new
    schedule from scratch, not the finished runs continued.
    """
    profile = get_profile(profile)
    recipes = recipes if recipes is not None else ablation_recipes()
    key = models_lib.normalize_name(model_name)
    planned = profile.epochs_for("recipes") if "recipes" in profile.model_epochs else profile.epochs_for(key)
    fit_kwargs.setdefault("epochs", planned)
    if fit_kwargs["epochs"] != planned and "name" not in fit_kwargs:
        fit_kwargs["suffix"] = fit_kwargs.get("suffix", "") + f"-{fit_kwargs['epochs']}ep"
    runs = {}
    for label, recipe in recipes.items():
        recipe = get_recipe(recipe)
        print(f"--- {label}: {recipe.describe()}", flush=True)
        runs[label] = train_model(key, data, profile, recipe=recipe, **fit_kwargs)
    return runs


def compare_optimizers(model_name: str, data, profile=None, optimizers=("adam", "rmsprop", "sgd", "nadam"),
                       learning_rate: float = 1e-4, augmentation: bool = True, **fit_kwargs) -> dict[str, Run]:
    """Train the same model once per optimizer (the seed's comparison), one call for the book."""
    profile = get_profile(profile)
    runs = {}
    for optimizer in optimizers:
        keras.utils.set_random_seed(profile.seed)
        model = build(model_name, data, profile, augment=augmentation,
                      optimizer=optimizer, learning_rate=learning_rate)
        fit_kwargs.setdefault("epochs", profile.epochs_for("optimizers"))
        suffix = f"-{optimizer}" + ("" if learning_rate == 1e-4 else f"-lr{learning_rate:g}")
        runs[optimizer] = fit(model, data, profile, name=run_name(model, profile, suffix),
                              notes={"comparison": "optimizers"}, **fit_kwargs)
    return runs
