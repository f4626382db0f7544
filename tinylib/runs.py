"""Run folders and their records: naming, locking, resuming, checking a run is the same run.

Every run lives in its own folder (``runs_dir()/<run name>``)::

    record.json                       the run record: written when the run starts, rewritten after every epoch
    checkpoint-epoch-NNN.weights.h5   model + optimizer state after epoch NNN
    partial-epoch-NNN-batch-BBBBBB.weights.h5
                                      the same, inside epoch NNN after batch BBBBBB (``tinylib.checkpointing``)
    best-epoch-NNN.npz                early stopping's best weights (epoch NNN), for a resume
    final.weights.h5                  what the model ends with (early stopping may restore the best epoch);
                                      where that is the last epoch's checkpoint, the same file (a hard link)
    state.json                        which checkpoint and best weights are current, and the history so far

A checkpoint is one unit: every file of it has a name of its own (never rewritten in
place), each is written atomically, and ``state.json`` is written last and names them;
only then are the files of the unit before removed.  So a run killed at any moment finds
``state.json`` naming files that are all on disk, and resumes from them with the same
history. This is the only module that writes run records; ``tinylib.train`` decides what
goes in them.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from tinylib import files
from tinylib import models as models_lib
from tinylib.environment import device_count, device_name, git_commit, library_versions
from tinylib.profiles import Profile


RUNS_ENV = "TINYLIB_RUNS"


STATE_FILE = "state.json"


RECORD_FILE = "record.json"


KEEP_CHECKPOINTS = 1  # Model 3's weights and Adam state are 1.7 GB: keep one


FINAL_CHECKPOINT = "final.weights.h5"
EPOCH_PATTERN = "checkpoint-epoch-*.weights.h5"


def epoch_checkpoint_name(epochs_done: int) -> str:
    """The checkpoint taken at the end of epoch ``epochs_done`` (1-based: after that many epochs)."""
    return f"checkpoint-epoch-{epochs_done:03d}.weights.h5"


PARTIAL_CHECKPOINT = "partial.weights.h5"  # before the checkpoints were named by step: still read
PARTIAL_PATTERN = "partial-epoch-*-batch-*.weights.h5"


BEST_WEIGHTS = "best-weights.npz"  # before the best weights were named by epoch: still read
BEST_PATTERN = "best-epoch-*.npz"


def partial_checkpoint_name(epoch: int, batches: int) -> str:
    """The mid-epoch checkpoint of ``epoch`` (0-based) after ``batches`` batches: a name of its own."""
    return f"partial-epoch-{epoch + 1:03d}-batch-{batches:06d}.weights.h5"


def best_weights_name(epoch: int) -> str:
    """Early stopping's best weights, taken at the end of ``epoch`` (0-based)."""
    return f"best-epoch-{epoch + 1:03d}.npz"


def remove_unnamed(path: Path, pattern: str, keep: str | None) -> None:
    """Remove the files of an older unit (``pattern``) now that ``state.json`` names ``keep``."""
    for old in path.glob(pattern):
        if old.name != keep:
            old.unlink(missing_ok=True)


def runs_dir() -> Path:
    """Where runs go: ``TINYLIB_RUNS``, else ``<TINYLIB_HOME>/runs``."""
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser().absolute()
    from tinylib.data import home

    return home() / "runs"


def write_run_json(path: Path, payload: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half."""
    files.write_json(path, payload, default=_jsonable)


def checkpoint_bytes(model: keras.Model) -> int:
    """About how many bytes a checkpoint of ``model`` takes: its weights and optimizer state."""
    variables = list(model.weights) + list(getattr(getattr(model, "optimizer", None), "variables", []) or [])
    return sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
               for v in variables) + (1 << 20)


def save_weights(model: keras.Model, path: Path) -> Path:
    """Save weights (and optimizer state) atomically: a kill mid-save leaves the old file.

    Where the disk has no room for it, an OSError (ENOSPC) that names the file says so
    before anything is written: h5py, out of space mid-write, can crash the process.
    """
    path = Path(path)
    need = checkpoint_bytes(model)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < need:
        raise OSError(errno.ENOSPC, f"no room for a checkpoint of {need / 1e6:,.0f} MB "
                                    f"({free / 1e6:,.0f} MB free); the last checkpoint is kept", str(path))
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
    best_weights: str | None = None  # the file of early stopping's best weights that state.json names
    save_seconds: float = 0.0  # how long the run's last checkpoint took to save: a stop allows for one
    stopped: bool = False  # early stopping had ended the run when it was interrupted: only the end is left
    out_of_time: bool = False  # stopped by a deadline (at an epoch's end or a checkpoint inside one): resumable
    started: float | None = None  # perf_counter() when this invocation began training

    @property
    def wall_seconds(self) -> float:
        """Training time of the run so far, over every invocation that trained it."""
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.wall_before + running

    @property
    def checkpoint(self) -> Path | None:
        state = read_state(self.path)
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
            speed = record.get("speed") or {}
            if speed.get("train_gflop_per_image") and speed.get("matmul_peak_gflops_per_second"):
                reached = record["train_images_per_second"] * speed["train_gflop_per_image"]
                speed["train_gflops_per_second"] = float(f"{reached:.4g}")
                speed["fraction_of_matmul_peak"] = float(f"{reached / speed['matmul_peak_gflops_per_second']:.3g}")
        for key, name in (("val_accuracy", "val_top1"), ("val_top5", "val_top5")):
            values = self.history.get(key)
            if values:
                record[f"best_{name}"] = max(values)
                record[f"final_{name}"] = values[-1]
        if self.history.get("accuracy"):
            record["final_train_top1"] = self.history["accuracy"][-1]
        # Finished once its end is saved (the final checkpoint named in the state), not at its
        # last epoch: a kill in between leaves a run the next call finishes, not one it skips.
        ended = (self.epochs_done >= record["epochs"] or record.get("stopped_early", False)
                 or record.get("ended_by") == "time budget")
        record["finished"] = bool(ended and (read_state(self.path) or {}).get("checkpoint") == FINAL_CHECKPOINT)
        write_run_json(self.path / RECORD_FILE, record)
        return record


def check_same_classes(record: dict, dataset, run_name: str) -> None:
    """Refuse to score a run on data with other classes than it trained on (another copy of
    the dataset, another profile's subset): its scores would be wrong without a word."""
    if list(dataset.wnids) != (record.get("dataset") or {}).get("wnids"):
        from tinylib import data

        raise ValueError(f"the data found now ({(data.read_manifest() or {}).get('source', '?')}) gives other "
                         f"classes than {run_name} trained on: point TINYLIB_DATA (and TINYLIB_HOME) at the "
                         "dataset it trained on")


def read_state(path: Path) -> dict | None:
    try:
        return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def current_checkpoint(path: Path) -> Path:
    """The checkpoint ``state.json`` names; FileNotFoundError, saying why, when there is none."""
    path = Path(path)
    state = read_state(path)
    if not isinstance(state, dict) or not isinstance(state.get("checkpoint"), str):
        raise FileNotFoundError(
            f"no checkpoint in {path}: {STATE_FILE} is missing or unreadable "
            "(the run has not finished an epoch yet)")
    checkpoint = path / state["checkpoint"]
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{path / STATE_FILE} names {checkpoint.name}, which is missing")
    return checkpoint


def run_name(model: keras.Model | str, profile: Profile, suffix: str = "", backend: str | None = None) -> str:
    """A run's folder name: ``<model>-<profile>-<backend><suffix>`` (a model or its name)."""
    name = model if isinstance(model, str) else model.name
    return f"{name}-{profile.name}-{backend or keras.backend.backend()}{suffix}"


class RunConflict(ValueError):
    """A run folder holds a run that this call cannot continue (other settings, fewer epochs)."""


class RunInUse(RuntimeError):
    """Another process is training the same run folder right now."""


def lock_run(path: Path) -> files.FolderLock:
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


def clear_run(path: Path) -> None:
    """Start a run folder afresh: forget its state, record and checkpoints."""
    for stale in [path / STATE_FILE, path / RECORD_FILE, path / FINAL_CHECKPOINT, path / PARTIAL_CHECKPOINT,
                  path / BEST_WEIGHTS, *path.glob(EPOCH_PATTERN), *path.glob(PARTIAL_PATTERN),
                  *path.glob(BEST_PATTERN)]:
        stale.unlink(missing_ok=True)


def epochs_change(path: Path, previous: dict, done: int, epochs: int, stopped: bool = False) -> dict | None:
    """The change of planned epochs a resume asks for, or None; raises when it cannot be honoured.
    ``stopped``: early stopping had ended the run (its saved state says so), whether or not
    the run's end, which writes ``stopped_early`` in the record, was reached."""
    planned = previous.get("epochs", epochs)
    if epochs == planned:
        return None
    fresh = "To train it with other settings, start afresh (resume=False, --fresh) or use another name (name=..., --name)."
    if epochs < done:
        raise RunConflict(f"{path} has already trained {done} epochs; asked for {epochs}. {fresh}")
    if previous.get("stopped_early") or stopped:
        raise RunConflict(f"{path} stopped early after epoch {done} (early stopping found no more "
                          f"progress); asking for {epochs} epochs does not undo that. {fresh}")
    return {"at_epoch": done, "from": planned, "to": epochs}


# What must be equal for a folder's run to be continued: anything else is another run.
# The callbacks' state is restored by position, and a backend's random generators and
# optimizer variables are its own: either changed is another run too.
IDENTITY = ("model", "parameters", "weights", "augmentation", "optimizer", "learning_rate", "recipe",
            "batch_size", "build_options", "dataset", "seed", "dtype_policy", "callbacks", "callback_settings",
            "backend")


def recorded_precision(path: Path) -> str | None:
    """The dtype policy of the run in ``path`` (its record is written when it starts), else
    None: a resumed run keeps its precision (``environment.resumed_run_precision``)."""
    record = read_record(path)
    policy = record.get("dtype_policy") if isinstance(record, dict) else None
    return policy if isinstance(policy, str) else None


# The callbacks' settings of every record written before they were recorded (``callback_settings``):
# early stopping then waited 5 epochs, not twice the plateau's 3.
SETTINGS_BEFORE_RECORDED = {
    "early_stopping": {"monitor": "val_loss", "patience": 5, "min_delta": 0, "restore_best_weights": True,
                       "start_from_epoch": 0, "baseline": None},
    "reduce_lr_on_plateau": {"monitor": "val_loss", "patience": 3, "min_delta": 0.0001, "factor": 0.2,
                             "min_lr": 1e-06, "cooldown": 0},
}


def recorded_callback_settings(record: dict) -> dict | None:
    """The settings of the record's callbacks, by name: as recorded, or, for a record from before
    they were, what they were then (``SETTINGS_BEFORE_RECORDED``); None for a record that names
    no callbacks at all (not one of ``train.fit``'s)."""
    if isinstance(record.get("callback_settings"), dict):
        return record["callback_settings"]
    names = record.get("callbacks")
    if not isinstance(names, list):
        return None
    return {name: SETTINGS_BEFORE_RECORDED.get(name, {}) for name in names}


def identity_differences(previous: dict, record: dict) -> list[str]:
    """What makes ``record`` another run than ``previous`` (``IDENTITY``), in words; [] if none."""
    previous, record = _with_default_options(previous), _with_default_options(record)
    previous, record = _with_callback_settings(previous), _with_callback_settings(record)
    changed = [key for key in IDENTITY if key in previous and key in record and previous[key] != record[key]]
    if "callbacks" in changed:  # other callbacks: their settings differ with them, said once
        changed = [key for key in changed if key != "callback_settings"]
    return [_difference(key, previous[key], record[key]) for key in changed]


def check_same_run(path: Path, previous: dict, record: dict) -> None:
    """Refuse to resume a run folder that holds a different run (say, other weights)."""
    differences = identity_differences(previous, record)
    if differences:
        details = ", ".join(differences)
        raise RunConflict(
            f"{path} holds a different run ({details}): give this run another name (name=..., --name) "
            "or start it afresh, replacing the old one (resume=False, --fresh)")


def _with_default_options(record: dict) -> dict:
    """``record`` with every build option its model has, a missing one at its default.

    Records written before every default was recorded, or before an option existed,
    hold only the options given: a missing option was its default then, as it is now,
    except where the default changed what is built (``models.LEGACY_OPTIONS``). Filled
    in, a run asked for another value of it (say, a stride-2 stem) is refused.
    """
    options = record.get("build_options")
    if not isinstance(options, dict) or record.get("model") not in models_lib.MODELS:
        return record
    return {**record, "build_options": models_lib.recorded_options(record["model"], options)}


def _with_callback_settings(record: dict) -> dict:
    """``record`` with its callbacks' settings, filled in for a record from before they were
    recorded: resuming such a run with today's settings is refused (they act at other epochs)."""
    settings = recorded_callback_settings(record)
    return record if settings is None else {**record, "callback_settings": settings}


def _difference(key: str, old, new) -> str:
    """One changed setting in words; dicts show only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        if key == "dataset" and "wnids" in keys:
            keys = [k for k in keys if k != "wnids"] + ["classes chosen"]
            old, new = {**old, "classes chosen": "..."}, {**new, "classes chosen": "other"}
        return ", ".join(_difference(f"{key}.{k}", old.get(k), new.get(k)) for k in keys)
    return f"{key}: {old!r} -> {new!r}"


def read_record(path: Path) -> dict:
    try:
        return json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def new_record(model, data, profile, epochs, batch_size, callbacks) -> dict:
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
        "devices": device_count(),  # > 1: trained data-parallel, the batch spread over them
        "dtype_policy": model.dtype_policy.name,  # what the model was built to compute in
        "weights": getattr(model, "tinylib_weights", "random"),
        "weights_source": getattr(model, "tinylib_weights_source", getattr(model, "tinylib_weights", "random")),
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
        "profile_batch_size": profile.batch_size * device_count(),  # another batch_size: asked for
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
    from tinylib.augment import RandomAffineAugment, TrainingOnlyAugmentation

    for layer in model.layers:
        if isinstance(layer, TrainingOnlyAugmentation):
            config = layer.get_config()
            config = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
            if isinstance(layer, RandomAffineAugment):
                return config  # the study's augmentation, recorded as records before the crop had it
            return {"layer": type(layer).__name__, **config}
    return None


def load_run(path: Path | str) -> dict:
    """The record of a run folder (or a record file), for tables and plots."""
    path = Path(path)
    record = read_record(path) if path.is_dir() else json.loads(path.read_text(encoding="utf-8"))
    if not record:
        raise FileNotFoundError(f"no {RECORD_FILE} in {path}: is it a run folder?")
    return record

