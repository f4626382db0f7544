"""Training: one ``fit`` for every chapter, with checkpoints, resume and a run record.

This module builds models for a profile or a recipe and fits them; the run folders
and records it writes are ``tinylib.runs``, the checkpoints it takes while training
``tinylib.checkpointing``, and the device and precision ``tinylib.environment``:
read runs through ``tinylib.runs`` (``runs.load_run``, ``runs.run_name``) and set the
precision through ``tinylib.environment``.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path

import keras
import numpy as np

from tinylib import budget as budget_lib
from tinylib import environment, files, processes, results
from tinylib import models as models_lib
from tinylib.batches import ShuffledBatches, steps_per_epoch
from tinylib.checkpointing import CHECKPOINT_EVERY, Checkpointer, OutOfTime
from tinylib.optimizers import STUDY_OPTIMIZERS
from tinylib.profiles import Profile, get_profile
from tinylib.progress import ProgressLog
from tinylib.recipes import Recipe, ablation_recipes, get_recipe
from tinylib.runs import (BEST_WEIGHTS, EPOCH_PATTERN, FINAL_CHECKPOINT, PARTIAL_CHECKPOINT,
                          PARTIAL_PATTERN,
                          STATE_FILE, CheckpointError, Run, RunConflict, check_same_run, clear_run, epoch_checkpoint_name,
                          epochs_change, load_checkpoint, lock_run, new_record, read_record, read_state,
                          recorded_precision, restore_random_state, run_name, runs_dir, save_weights,
                          write_run_json)

# Less than this left of a sitting (or than the last epoch took, if less): stop at the epoch's
# end rather than set up another epoch (a trace, the first batches) only to save it at once.
MIN_SITTING_SECONDS = 120.0


# The study's two callbacks for Model 2 with this book's settings (the slides give none). Both
# watch the validation loss and count from the same best epoch, so early stopping waits twice the
# plateau's patience: a lowered rate gets as many epochs to beat the best as the rate before it
# had. (With 5 against 3 it got 2, and Model 2's first full-scale runs ended two epochs after
# their rate fell.)
PLATEAU_PATIENCE = 3
EARLY_STOPPING_PATIENCE = 2 * PLATEAU_PATIENCE


def make_callbacks(names) -> list:
    """Keras callbacks by name: 'early_stopping' and 'reduce_lr_on_plateau', the two the study
    used for Model 2; their settings (patience, factor, floor) are this book's, as the slides give none."""
    made = []
    for name in names:
        if name == "early_stopping":
            made.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=EARLY_STOPPING_PATIENCE,
                                                      restore_best_weights=True, verbose=1))
        elif name == "reduce_lr_on_plateau":
            made.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=PLATEAU_PATIENCE,
                                                          min_lr=1e-6, verbose=1))
        else:
            raise ValueError(f"unknown callback {name!r}: use 'early_stopping' or 'reduce_lr_on_plateau'")
    return made


# What a record keeps of each callback: what decides when it acts and what it does.
CALLBACK_SETTINGS = ("monitor", "patience", "min_delta", "factor", "min_lr", "cooldown",
                     "restore_best_weights", "start_from_epoch", "baseline")


def callback_settings(names, made=None) -> dict:
    """Each named callback's settings (of ``made``, the callbacks a run trains with, else as
    ``make_callbacks`` makes them), for the run record: a run whose callbacks act at other epochs
    is another run (``runs.IDENTITY``), and a record says which patience ended it."""
    settings = {}
    for name, callback in zip(names, make_callbacks(names) if made is None else made):
        found = {key: getattr(callback, key) for key in CALLBACK_SETTINGS if hasattr(callback, key)}
        settings[name] = {key: value.item() if isinstance(value, np.generic) else value
                          for key, value in found.items()}
    return settings


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return keras.utils.to_categorical(labels, num_classes).astype("float32")


def _check_counts(**counts) -> None:
    """``epochs=0`` or ``batch_size=-1`` in a notebook call is a slip, not 'the profile's'
    (None is): refused with what to pass."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1 (or None: the profile's), "
                             f"got {value!r}")


def fit(model: keras.Model, data, profile: Profile | str | None = None, *, name: str | None = None,
        epochs: int | None = None, batch_size: int | None = None, callbacks="study",
        extra_callbacks=(), resume: bool = True, runs: Path | None = None,
        verbose="auto", notes: dict | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY, deadline: float | None = None,
        seed: int | None = None, suffix: str = "", steps_per_execution: int | None = None,
        hours: float | None = None) -> Run:
    """Train ``model`` on ``data`` (a ``TinyImageNet`` subset) as ``profile`` says.

    ``callbacks`` is 'study' (what the study used for this model), or a list of
    names for ``make_callbacks``; ``extra_callbacks`` are Keras callbacks that watch
    (early stopping and rate reductions go in ``callbacks``, whose state the run keeps
    from epoch to epoch: see ``_refuse_stateful_extras``).  With ``resume`` (the default), a run folder
    that holds a checkpoint continues from its last finished epoch; a finished
    run is returned as it is.  Asking a run (finished or not) for more epochs
    than it planned continues it, with a learning-rate schedule re-planned over
    the new length, and the record says so (``epochs_changed``); any other
    change (batch size, data, model, build options, optimizer) is refused with
    what differs.  ``resume=False`` starts the folder afresh.  One process at a
    time trains a run folder: a second is refused (``RunInUse``).

    A model built with a recipe (``build(..., recipe=...)``) that asks for MixUp/CutMix
    mixes its batches itself, inside the training step (``tinylib.mixing``).  ``notes`` are extra fields for the
    record (say, a fine-tuning stage).  Besides the checkpoint after every epoch,
    one is taken every ``checkpoint_every`` seconds inside an epoch (None: never),
    so a kill costs minutes, not an epoch; ``verbose='auto'`` prints Keras' bar in
    a terminal and plain progress lines (``tinylib.progress``) elsewhere.
    ``deadline`` (a ``time.monotonic()`` value) stops the run before it: inside the
    epoch that reaches it, at a checkpoint taken there (at an epoch's end where too little
    is left to start another, ``_would_overrun``): the run is then resumable at that batch and
    ``run.out_of_time`` is True.  ``seed`` (the profile's by
    default) orders the batches; a run with another seed is
    another run, in a folder of its own (``-seed<N>``), as is one on another ``batch_size``
    than the profile's (``-batch<N>``) and one given a ``suffix``.
    ``steps_per_execution`` (default: ``environment.steps_per_execution()``, 16 on a
    GPU, 4 on a CPU) runs that many steps per compiled call; the result is the same.
    ``hours`` trains to a time budget (``tinylib.budget``): as many of ``epochs`` as fit
    in that many hours of training, over every invocation, with a recipe's 'linear'
    schedule re-planned after each epoch to reach zero when the time is up.
    Returns the ``Run``; its record is in
    ``run.record`` and in ``record.json`` in the run folder.
    """
    profile = get_profile(profile)
    _check_counts(epochs=epochs, batch_size=batch_size)
    epochs = epochs or getattr(model, "tinylib_epochs", None) or profile.epochs_for(model.name)
    batch_size = batch_size or profile.batch_size * environment.device_count()
    if environment.device_count() > 1:
        _check_batches_split(environment.device_count(), batch_size, len(data.train), len(data.val))
    recipe = getattr(model, "tinylib_recipe", None)
    _check_schedule_length(model, recipe, epochs)
    _refuse_stateful_extras(extra_callbacks)
    seed = profile.seed if seed is None else int(seed)
    path = run_folder(model.name, profile, recipe=recipe, seed=seed, batch_size=batch_size, suffix=suffix, name=name,
                      runs=runs)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a notebook shows this line: the folder, and the setting that moves it
        raise OSError(files.describe_os_error(err, "making the run folder")) from None
    if callbacks == "study":
        as_the_study = model.name in models_lib.MODELS and recipe in (None, get_recipe("study"))
        callbacks = models_lib.study_callbacks(model.name) if as_the_study else ()
    callbacks = tuple(callbacks)

    model.steps_per_execution = int(steps_per_execution or environment.steps_per_execution())
    jit = environment.jit_compile()
    if jit != "auto":  # TINYLIB_JIT_COMPILE, for a timing
        model.jit_compile = jit  # Keras warns where the model cannot
    record = new_record(model, data, profile, epochs, batch_size, callbacks)
    study_callbacks = make_callbacks(callbacks)
    record["callback_settings"] = callback_settings(callbacks, study_callbacks)
    record["seed"] = seed
    record["steps_per_execution"] = model.steps_per_execution
    record["speed"] = _speed(model)
    record.update(notes or {})
    run = Run(path=path, model=model, record=record)
    lock = lock_run(path)
    try:
        files.remove_stale_temporaries(path)  # left by a writer that was killed
        if not resume:
            clear_run(path)
        steps = steps_per_epoch(len(data.train), batch_size)
        build_optimizer(model)
        previous_budget = (read_record(path) or {}).get("time_budget")
        if hours is None and previous_budget:  # a later sitting that leaves the budget out keeps it
            hours = float(previous_budget["hours"])
            print(f"{path.name}: on the time budget it began with, {hours:g} h (hours=... changes it)", flush=True)
        if not _resume(run, epochs, steps):  # else finished, and nothing more asked of it
            if hours is not None:
                run.record["time_budget"] = _budget(model, run, previous_budget, hours, steps, epochs, recipe)
            run.write_record()  # the run's identity on disk from its first step, checked by any resume
            _train(run, model, data, seed, epochs, batch_size, study_callbacks, extra_callbacks, verbose,
                   checkpoint_every, deadline)
        # Also for a finished run found without them (killed while they were scored): its final weights are loaded.
        if hours is not None and run.record.get("finished") and "val_top1_flips" not in run.record:
            _score_with_flips(run, data, batch_size)
        return run
    finally:
        lock.release()


def build_optimizer(model) -> None:
    """Create the optimizer's variables (Adam's moments) before the first step, for the
    variables the model trains now, as Keras would in that step; a checkpoint's optimizer
    state loads into them. On TensorFlow, Keras otherwise creates them while it traces the
    step, and a traced function that created variables is traced a second time, which for
    ResNet50 on a CPU is many seconds before the first batch (``benchmarks/first_step.py``)."""
    if getattr(model, "optimizer", None) is not None and not model.optimizer.built:  # uncompiled: Keras says so
        model.optimizer.build(model.trainable_variables)


def _score_with_flips(run: Run, data, batch_size: int) -> None:
    """The finished model's validation top-1 with test-time flips, beside the plain one
    computed from the same two passes (``evaluate.predict_both_views``)."""
    from tinylib import evaluate

    labels, names = np.asarray(data.val.labels), [str(i) for i in range(data.num_classes)]
    plain, mirrored = evaluate.predict_both_views(run.model, data.val.images, batch_size)
    # Scored as every evaluation is (evaluate.Evaluation: a diverged model's NaN row is a miss).
    run.record["val_top1_plain"] = evaluate.evaluation_from_probabilities(plain, labels, names).top1
    run.record["val_top1_flips"] = evaluate.evaluation_from_probabilities(plain + mirrored, labels, names).top1
    run.write_record()
    print(f"{run.path.name}: val top-1 {run.record['val_top1_plain']:.2%}, with test-time flips "
          f"{run.record['val_top1_flips']:.2%}", flush=True)


def _check_batches_split(devices: int, batch_size: int, train_images: int, val_images: int) -> None:
    """Data-parallel training gives each device an equal share of every batch: a batch, or
    an epoch's last partial batch, that the devices do not divide would fail at that step
    (hours in, and again at every resume), so it is refused before anything trains."""
    if devices < 2:
        return
    uneven = [f"{what} ({size:,} images)" for what, size in (
        ("a batch", batch_size), ("the last training batch", train_images % batch_size),
        ("the last validation batch", val_images % batch_size)) if size % devices]
    if uneven:
        raise ValueError(f"{devices} devices cannot share {' or '.join(uneven)} equally, as data-parallel "
                         f"training needs: choose a batch size whose batches and last batches of {train_images:,} "
                         f"training and {val_images:,} validation images are multiples of {devices}, or make "
                         "fewer GPUs visible (CUDA_VISIBLE_DEVICES)")


def _budget(model, run: Run, previous: dict | None, hours: float, steps: int, epochs: int, recipe) -> dict:
    """A run's time budget: a new plan, or the schedule a resumed run had reached. A run
    begun without one is refused one half-way: its schedule would change mid-run."""
    if not previous and (run.epochs_done or run.partial):
        raise RunConflict(f"{run.path} began without a time budget ({run.epochs_done} epochs done); it cannot take "
                          "one half-way. Start afresh (resume=False, --fresh) or use another name (name=..., --name).")
    if previous and (run.epochs_done or run.partial):  # resumed, at an epoch's end or inside the first
        budget_lib.resume(model, previous)
        return {**previous, "hours": float(hours)}
    return budget_lib.start(model, run.record, hours, steps, epochs, recipe.warmup if recipe else 0.0)


def run_folder(model_name: str, profile: Profile, *, recipe: Recipe | None = None, seed: int | None = None,
               batch_size: int | None = None, suffix: str = "", name: str | None = None,
               runs: Path | None = None) -> Path:
    """The folder ``fit`` trains a run in: a recipe's runs, runs on another batch than the
    profile's (times the devices in force) and runs with another seed have their own, so
    none of them resumes, or is refused by, the profile's run (``-batch32``, ``-seed1``)."""
    seed = profile.seed if seed is None else int(seed)
    suffix = (f"-{recipe.name}" if recipe is not None else "") + suffix
    if batch_size and int(batch_size) != profile.batch_size * environment.device_count():
        suffix += f"-batch{int(batch_size)}"
    suffix += f"-seed{seed}" if seed != profile.seed else ""
    return Path(runs or runs_dir()).expanduser().absolute() / (name or run_name(model_name, profile, suffix))


def begun_precision(model_name: str, profile: Profile, fit_kwargs: dict, *, recipe: Recipe | None = None,
                    **folder) -> str | None:
    """The precision the run ``fit(**fit_kwargs)`` would resume began in (its record's), or
    None for a fresh start or a run not begun: what to build its model in
    (``environment.resumed_run_precision``). ``folder`` overrides the folder's ``suffix``
    or ``name`` (a fine-tuning stage's)."""
    if not fit_kwargs.get("resume", True):
        return None
    where = {"suffix": fit_kwargs.get("suffix", ""), "name": fit_kwargs.get("name"), **folder}
    return recorded_precision(run_folder(models_lib.normalize_name(model_name), profile, recipe=recipe,
                                         seed=fit_kwargs.get("seed"), batch_size=fit_kwargs.get("batch_size"),
                                         runs=fit_kwargs.get("runs"), **where))


def _speed(model: keras.Model) -> dict:
    """The device-dependent choices of this run, its FLOPs per training image and this
    machine's matrix-product peak in the run's arithmetic (``runs.Run.write_record`` adds
    the GFLOP/s the run reached and their fraction of that peak)."""
    from tinylib import flops

    settings = environment.speed_settings()
    settings["steps_per_execution"] = model.steps_per_execution  # this run's, where it was given
    if "jit_compile" in settings:  # asked for: what the model did (Keras refuses XLA where a layer cannot)
        settings["jit_compile"] = bool(model.jit_compile)
    arithmetic = environment.compute_dtype(model.dtype_policy.name)
    settings["train_gflop_per_image"] = float(f"{flops.training_flops(model) / 1e9:.4g}")
    settings["matmul_peak_dtype"] = arithmetic
    settings["matmul_peak_gflops_per_second"] = float(f"{environment.matmul_peak(arithmetic):.4g}")
    return settings


def _check_schedule_length(model, recipe, epochs: int) -> None:
    """A recipe's schedule is planned in ``build``: training longer or shorter would bend it."""
    planned = getattr(model, "tinylib_epochs", None)
    if recipe is not None and recipe.schedule != "constant" and planned and planned != epochs:
        raise ValueError(f"{model.name} was built with a {recipe.schedule} schedule over {planned} epochs, "
                         f"but fit was asked for {epochs}: build it with epochs={epochs}")


def _resume(run: Run, epochs: int, steps: int) -> bool:
    """Load the folder's last checkpoint into ``run``; True when the run is finished as asked.

    A folder with a record and no checkpoint (a run interrupted in its first epoch) is
    checked against this call's settings all the same, and keeps its time spent.
    ``steps`` is the number of batches in an epoch.
    """
    path, model = run.path, run.model
    state = read_state(path)
    previous = read_record(path)
    if previous:
        check_same_run(path, previous, run.record)
        run.wall_before = previous.get("wall_seconds", 0.0)
    if not state:
        return False
    stopped = any((saved or {}).get("stopped_epoch") for saved in (state.get("callbacks") or {}).values())
    change = epochs_change(path, previous, state["epochs_done"], epochs, stopped=stopped)
    checkpoint, partial = state["checkpoint"], state.get("partial")
    if partial and partial["batches"] >= steps:
        # Taken after the epoch's last batch (older versions did), then interrupted before the
        # epoch ended: no batch is left to resume at. Train the epoch again from its start.
        print(f"{path.name}: the last checkpoint was taken after the last batch of epoch {partial['epoch'] + 1}, "
              "before its end; training that epoch again from its start", flush=True)
        partial = None
        checkpoint = epoch_checkpoint_name(state["epochs_done"]) if state["epochs_done"] else None
    if partial and epochs == state["epochs_done"]:
        # Asked to end at the epochs it has finished while it stands inside the next: the run
        # of that length ends with the last finished epoch's weights, not the batches after it.
        print(f"{path.name}: ending after epoch {epochs} as asked; the batches trained since in epoch "
              f"{epochs + 1} are left out", flush=True)
        partial, checkpoint = None, epoch_checkpoint_name(epochs) if epochs else None
    if checkpoint is not None:
        load_checkpoint(model, path / checkpoint)
        restore_random_state(model, state.get("random_state"))
    run.history, run.epochs_done = state["history"], state["epochs_done"]
    run.callback_state = state.get("callbacks") or {}
    run.save_seconds = float(state.get("save_seconds") or 0.0)  # a sitting's first stop allows for a save
    run.best_weights = state.get("best_weights") or (BEST_WEIGHTS if (path / BEST_WEIGHTS).is_file() else None)
    # Killed between its last epoch's checkpoint and its final one (a record that may not say
    # finished yet): early stopping's end is done from the best weights on disk, as a held
    # callback that never began could not do it.
    finishing = change is None and state["checkpoint"] != FINAL_CHECKPOINT and (
        previous.get("finished") or (state["epochs_done"] >= epochs and not partial))
    if finishing or (previous.get("finished") and change is None):
        if finishing:  # killed while finishing: finish now
            run.record = previous
            _end_and_finish(run, lambda: _restore_best_weights(run),
                            loaded=path / checkpoint if checkpoint else None)
        run.record = read_record(path)
        print(f"{path.name} is finished ({run.epochs_done} epochs): returning its record", flush=True)
        return True
    run.record["resumed_at_epoch"] = state["epochs_done"]
    run.partial = partial
    # Early stopping had ended the run (its state says at which epoch) and the run was
    # interrupted before its end was saved: only the end is left to do.
    run.stopped = change is None and stopped
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


def _restore_best_weights(run: Run) -> None:
    """What early stopping does at the end of a run (restore the best epoch's weights), from
    the best weights kept on disk: for a run whose end was interrupted."""
    if "early_stopping" not in (run.record.get("callbacks") or []) or not run.best_weights:
        return
    best = run.path / run.best_weights
    if not best.is_file():
        raise CheckpointError(f"{best} is missing: the run's best weights cannot be restored; "
                              "train it again with --fresh (fresh=True)")
    with np.load(best, allow_pickle=False) as arrays:
        run.model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
    print(f"{run.path.name}: restored the best epoch's weights ({run.best_weights})", flush=True)


def _train(run: Run, model, data, seed, epochs, batch_size, study_callbacks, extra_callbacks, verbose,
           checkpoint_every, deadline=None) -> None:
    """Fit from where the run stands to ``epochs``, checkpointing as it goes, then save the end state."""
    recipe = getattr(model, "tinylib_recipe", None)
    y_train = _one_hot(data.train.labels, data.num_classes)
    y_val = _one_hot(data.val.labels, data.num_classes)
    print(f"Training {model.name} ({model.count_params():,} parameters) on {data.summary()}, "
          f"{epochs} epochs, batch {batch_size}, {keras.backend.backend()} on {run.record['device']}",
          flush=True)
    if recipe is not None and recipe.mixes_batches:
        print(f"MixUp (alpha {recipe.mixup}) / CutMix (alpha {recipe.cutmix}) inside the training step",
              flush=True)

    def batches(epoch: int, start: int):
        return ShuffledBatches(data.train.images, y_train, batch_size, seed=seed, epoch=epoch,
                               start=start)

    run_end = _hold_train_end(study_callbacks)
    checkpointer = Checkpointer(run, checkpoint_every, study_callbacks)
    checkpointer.deadline = deadline
    verbosity = _verbosity(verbose)
    may_stop_early = any(isinstance(c, keras.callbacks.EarlyStopping) for c in study_callbacks)
    progress = ([ProgressLog(epochs, batch_size, may_stop_early=may_stop_early,
                             past_epochs=run.history.get("seconds") or ())] if verbosity == "log" else [])
    budget = run.record.get("time_budget")
    steps = steps_per_epoch(len(data.train), batch_size)
    first = run.partial["epoch"] if run.partial else run.epochs_done
    fitted = False  # whether this invocation fit at all: Keras' callbacks then hold the run's state in memory
    run.started = time.perf_counter()
    try:
        with processes.sigterm_as_exit():
            # One fit per epoch: each epoch's batches are a dataset of their own, built from
            # (seed, epoch), and a resumed epoch starts at the batch where it stopped.
            for epoch in range(first, epochs if not run.stopped else first):
                if budget is not None and not run.partial:
                    planned = budget_lib.replan(model, budget, run.history, run.wall_seconds, run.epochs_done,
                                                steps)
                    run.write_record()  # the plan, and the schedule a resume continues on
                    for line in progress:  # the run's length is the plan's, not the cap of epochs
                        line.epochs = max(planned, run.epochs_done + 1)
                    if run.epochs_done >= planned:
                        run.record["ended_by"] = "time budget"
                        print(f"{run.path.name}: the time budget of {budget['hours']:g} h is spent after "
                              f"{run.epochs_done} epochs", flush=True)
                        break
                if _would_overrun(run, deadline):
                    run.out_of_time = True
                    break
                start = run.partial["batches"] if run.partial and run.partial["epoch"] == epoch else 0
                checkpointer.offset = start
                for line in progress:
                    line.offset = start
                fitted = True
                try:
                    model.fit(
                        # shuffle=False: the batches come in their own (seed, epoch) order; Keras would
                        # shuffle them again with Python's global random state, which no resume recreates.
                        batches(epoch, start), shuffle=False,
                        validation_data=(np.asarray(data.val.images), y_val), validation_batch_size=batch_size,
                        epochs=epoch + 1, initial_epoch=epoch,
                        callbacks=[*study_callbacks, checkpointer, *progress, *extra_callbacks],
                        verbose=0 if verbosity == "log" else verbosity,
                    )
                except OutOfTime:  # the deadline came inside the epoch: saved at the batch reached
                    run.out_of_time = True
                    break
                if model.stop_training:
                    break
    except BaseException:
        run.write_record()  # keep the time this invocation spent, for the record's wall time
        raise
    finally:
        run.wall_before, run.started = run.wall_seconds, None
    if run.out_of_time:
        processes.free_stopped_work()  # the epoch's batches were being served
        where = (f"inside epoch {run.partial['epoch'] + 1}, at batch {run.partial['batches']} (a checkpoint)"
                 if run.partial else f"after epoch {run.epochs_done}")
        print(f"{run.path.name}: stopped {where} to keep within the time budget, {run.epochs_done} of "
              f"{epochs} epochs done; run the same command again to continue", flush=True)
        run.write_record()
        return
    stopped = model.stop_training or run.stopped
    run.record["stopped_early"] = bool(stopped and run.epochs_done < epochs)

    def end():
        # Nothing fit in this invocation (resumed after early stopping had ended the run, with no
        # epoch left to train, or with a time budget spent before any): the held callbacks never
        # began and hold no best weights, so early stopping's end comes from those on disk.
        if not fitted:
            _restore_best_weights(run)
        else:
            for held in run_end:  # the run's end, once: early stopping puts its best epoch's weights back
                held(None)

    last = run.path / epoch_checkpoint_name(run.epochs_done) if run.epochs_done and not run.partial else None
    _end_and_finish(run, end, loaded=last)


def _refuse_stateful_extras(extra_callbacks) -> None:
    """Refuse early stopping or a rate reduction among ``extra_callbacks``, saying what to pass.

    A run fits one epoch at a time, so Keras begins and ends training around every
    epoch: such a callback passed as an extra would forget its patience at each epoch's
    start and put its best weights back at each epoch's end, and train another run than
    the one asked for. The run keeps the state of ``callbacks`` across epochs and resumes.
    """
    from tinylib.checkpointing import CALLBACK_STATE

    stateful = [type(c).__name__ for c in extra_callbacks if isinstance(c, tuple(CALLBACK_STATE))]
    if stateful:
        raise ValueError(f"{', '.join(stateful)} in extra_callbacks would start again at every epoch (a run "
                         "fits one epoch at a time): pass callbacks=['early_stopping', 'reduce_lr_on_plateau'] "
                         "instead, whose state the run keeps from epoch to epoch and across a resume")


def _hold_train_end(callbacks) -> list:
    """Hold back each callback's ``on_train_end``; return them, to call once when the run ends.

    Keras calls ``on_train_end`` at the end of every ``fit``, and a run fits once per
    epoch: early stopping (``restore_best_weights``) would put its best epoch's weights
    back after every epoch, and the next epoch would train from them, not from where
    the last one ended as a single ``fit`` does.
    """
    held = []
    for callback in callbacks:
        held.append(callback.on_train_end)
        callback.on_train_end = lambda logs=None: None
    return held


def _would_overrun(run: Run, deadline: float | None) -> bool:
    """Whether too little of the sitting is left to start (or go on with) an epoch: less than
    ``MIN_SITTING_SECONDS``, or less than the last epoch took where that is shorter (what is
    left of it, for an epoch resumed half-way). A run's first epoch, with nothing to judge
    by, starts (``reproduce.run_plan`` starts no further run in a sitting's last minutes).

    An epoch that cannot end before the deadline still starts: the checkpointer stops it
    where the deadline comes, at a checkpoint from which the run resumes at that batch with
    the result an uninterrupted run would have. Judging the next epoch by the last one's
    whole length left up to an epoch of every sitting unused (half an hour of Model 3's on
    a CPU).
    """
    if deadline is None:
        return False
    seconds = run.history.get("seconds") or []
    epoch = seconds[-1] - (run.partial["train_seconds"] if run.partial else 0.0) if seconds else 0.0
    return time.monotonic() + min(MIN_SITTING_SECONDS, max(epoch, 0.0)) > deadline


def _end_and_finish(run: Run, end, loaded: Path | None) -> None:
    """Do the run's ``end`` (which may put the best epoch's weights back), then finish it.

    ``loaded`` is the epoch checkpoint the model holds before ``end``, if any: where
    ``end`` leaves the weights as they were, that file already is the final checkpoint.
    """
    before = run.model.get_weights() if loaded is not None and loaded.is_file() else None
    end()
    unchanged = before is not None and all(
        np.array_equal(a, b) for a, b in zip(before, run.model.get_weights(), strict=True))
    del before
    _finish(run, same_as=loaded if unchanged else None)


def _finish(run: Run, same_as: Path | None = None) -> None:
    """Save what the model ends with as the final checkpoint; drop the resume points.

    Early stopping may have put the best epoch's weights back: the final checkpoint
    holds what the model ends with, so a reloaded run predicts as this one does.
    Where the last epoch's checkpoint (``same_as``) holds exactly that, it becomes the
    final one under a second name, without writing it again (Model 3's is 1.7 GB).
    Each step is atomic and the state names the final weights only once they are
    whole, so a kill anywhere in here is finished by the next call.
    """
    final = run.path / FINAL_CHECKPOINT
    if same_as is None or not files.atomic_link(same_as, final):
        save_weights(run.model, final)
    write_run_json(run.path / STATE_FILE, {**read_state(run.path), "checkpoint": FINAL_CHECKPOINT, "partial": None})
    # A finished run needs no resume point; early stopping's best weights stay, for a run
    # asked later for more epochs.
    for finished in [*run.path.glob(EPOCH_PATTERN), *run.path.glob(PARTIAL_PATTERN),
                     run.path / PARTIAL_CHECKPOINT]:
        finished.unlink(missing_ok=True)
    run.write_record()


def _verbosity(verbose):
    """Keras' progress bar in a terminal; tinylib's plain lines ('log') in a log file or a book."""
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else "log"


@contextlib.contextmanager
def layers_in_front():
    """Build the layers in front of a network (augmentation, MixUp/CutMix) with seeds drawn
    aside: Keras draws the seed of every unseeded layer and initializer from Python's
    ``random``, so without this a recipe with a crop, or a run without augmentation, would
    start its network from other initial weights than the same seed gives the study's
    recipe, and an ablation row would change two things. Their seeds come from a stream of
    their own, itself drawn from the current one (so repeatable under one seed); the
    network then draws exactly what it would have drawn with nothing in front of it."""
    state = random.getstate()
    random.seed(f"tinylib layers in front {random.getrandbits(64)}")
    try:
        yield
    finally:
        random.setstate(state)


def build(model_name: str, data, profile=None, augment: bool = True, recipe: Recipe | str | None = None,
          epochs: int | None = None, batch_size: int | None = None, **options) -> keras.Model:
    """Build a model for ``data`` with the study's augmentation and the profile's options.

    With a ``recipe`` (a ``Recipe`` or a name: 'study', 'modern'), the recipe decides
    the precision, the augmentation layer, the optimizer with its schedule (which
    needs the run's length: ``epochs`` and ``batch_size``, the profile's by default)
    and the loss; ``fit`` then reads the recipe from the model.
    """
    from tinylib.augment import augmentation

    profile = get_profile(profile)
    key = models_lib.normalize_name(model_name)
    options = {**profile.options_for(key), **options}
    if recipe is None:
        with layers_in_front():
            layer = augmentation() if augment else None
        return build_run_model(model_name, data.num_classes, augmentation=layer, **options)
    recipe = get_recipe(recipe)
    _check_counts(epochs=epochs, batch_size=batch_size)
    epochs = epochs or profile.epochs_for(key)
    steps = steps_per_epoch(len(data.train), batch_size or profile.batch_size * environment.device_count())
    # The model keeps the recipe's precision; Keras' global policy is given back after.
    with environment.using_precision(recipe.precision):
        with layers_in_front():
            layer = recipe.augmentation_layer() if augment else None
        model = build_run_model(model_name, data.num_classes, recipe=recipe, steps=steps, epochs=epochs,
                                augmentation=layer, **options)
    model.tinylib_epochs = epochs  # the schedule's length: fit trains this many epochs
    return model


def build_run_model(model_name: str, num_classes: int, *, recipe: Recipe | None = None, steps: int = 1,
                    epochs: int = 1, augmentation=None, **options) -> keras.Model:
    """The one builder of a run's compiled model, for training (``build``) and for loading a
    finished run again (``evaluate.load_trained_model``), so the two cannot drift apart.

    Without a recipe: ``models.build_model`` with the study's compile (``optimizer`` and
    ``learning_rate`` may be in ``options``). With one: its MixUp/CutMix layer, and its
    optimizer (whose schedule needs ``steps`` per epoch and ``epochs``) and loss.
    """
    if recipe is None:
        return models_lib.build_model(model_name, num_classes=num_classes, augmentation=augmentation, **options)
    with layers_in_front():
        mixing = recipe.mixing_layer()
    model = models_lib.build_model(model_name, num_classes=num_classes, compile=False, augmentation=augmentation,
                                   mixing=mixing, **options)
    models_lib.compile_model(model, recipe.make_optimizer(steps, epochs), loss=recipe.make_loss())
    model.tinylib_recipe = recipe
    return model


def random_weights_suffix(model_name: str, weights) -> str:
    """'-random' for a pretrained model (Model 5) built without weights, else ''."""
    return "-random" if models_lib.normalize_name(model_name) in models_lib.PRETRAINED and not weights else ""


def train_model(model_name: str, data, profile=None, *, augment: bool = True, build_options=None,
                recipe: Recipe | str | None = None, devices=None, **fit_kwargs) -> Run:
    """Build and train one model in a profile: the one call each model chapter makes.

    ``seed`` (in ``fit_kwargs``; the profile's by default) also draws the initial weights.
    A pretrained model built without its weights (``build_options={"weights": None}``)
    trains in a folder of its own, ``-random`` (``random_weights_suffix``): never in the
    folder, nor the row, of the study's run from ImageNet's weights.
    On the JAX backend, where several GPUs are visible (or ``devices`` names several), the model is built and
    trained data-parallel over all of them (``environment.data_parallel``), each batch
    the profile's batch times the devices; the record says how many.
    """
    profile = get_profile(profile)
    seed = fit_kwargs.get("seed")
    keras.utils.set_random_seed(profile.seed if seed is None else seed)
    if fit_kwargs.get("name") is None and "weights" in (build_options or {}):
        extra = random_weights_suffix(model_name, build_options["weights"])
        if extra not in fit_kwargs.get("suffix", ""):
            fit_kwargs["suffix"] = fit_kwargs.get("suffix", "") + extra
    with environment.parallel_scope(devices):  # first: the devices in force name the run's folder
        recorded = begun_precision(model_name, profile, fit_kwargs,
                                   recipe=get_recipe(recipe) if recipe is not None else None)
        with environment.resumed_run_precision(recorded):
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
    study's recipe and then the modern one's ingredients added one at a time).
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
        if runs[label].out_of_time:  # the deadline came: the next recipe would start past it
            break
    return runs


PRECISION_CHECK_EPOCHS = 8  # enough for the curves to part if bfloat16 learned less (chapter 13)


def precision_check_epochs(model_name: str, profile) -> int:
    """The epochs a precision check trains: 8, or the profile's epochs for the model where fewer."""
    return min(PRECISION_CHECK_EPOCHS, get_profile(profile).epochs_for(models_lib.normalize_name(model_name)))


def precision_run_suffix(policy: str, epochs: int) -> str:
    """A precision check's run folder suffix, '-mixed_bfloat16-8ep' (reproduce names it too)."""
    return f"-{policy}-{epochs}ep"


def optimizer_run_suffix(optimizer: str, learning_rate: float = results.STUDY_LEARNING_RATE) -> str:
    """An optimizer comparison's run folder suffix, '-sgd' or '-sgd-lr0.001' (reproduce names it too)."""
    return f"-{optimizer}" + results.rate_suffix(learning_rate)


def compare_precisions(model_name: str, data, profile=None, precisions=("mixed_bfloat16",),
                       epochs: int | None = None, **fit_kwargs) -> dict[str, Run]:
    """Train the study's model for ``epochs`` in each precision, the study's way otherwise:
    the check that a faster arithmetic learns the curve float32 learns (chapter 13).
    ``epochs`` defaults to 8, or the profile's epochs for the model where fewer.

    Each run has its own folder (``-<policy>-<epochs>ep``) and its record says
    ``comparison: precision``, so it never stands in for the model's row of the table;
    the float32 curve to compare with is the model's own full-scale record, which
    trained its first epochs from the same seed on the same batches.
    """
    profile = get_profile(profile)
    epochs = epochs or precision_check_epochs(model_name, profile)
    runs = {}
    for policy in precisions:
        with environment.using_precision(policy):
            runs[policy] = train_model(model_name, data, profile, epochs=epochs,
                                       suffix=precision_run_suffix(policy, epochs),
                                       notes={"comparison": "precision"}, **fit_kwargs)
        if runs[policy].out_of_time:
            break
    return runs


def compare_optimizers(model_name: str, data, profile=None, optimizers=STUDY_OPTIMIZERS,
                       learning_rate: float = 1e-4, augmentation: bool = True, devices=None,
                       **fit_kwargs) -> dict[str, Run]:
    """Train the same model once per optimizer (the study's comparison), one call for the book.

    Data-parallel over several GPUs where there are, as ``train_model``."""
    profile = get_profile(profile)
    if fit_kwargs.get("name") is not None:  # one name would be one folder for every optimizer
        raise ValueError("compare_optimizers names each optimizer's run folder itself (-adam, -sgd...): "
                         "set its runs apart with suffix=... instead of name=...")
    seed = fit_kwargs.get("seed")  # as train_model: the caller's seed draws the weights and trains
    extra_suffix = fit_kwargs.pop("suffix", "")
    runs = {}
    for optimizer in optimizers:
        keras.utils.set_random_seed(profile.seed if seed is None else seed)
        with environment.parallel_scope(devices):
            model = build(model_name, data, profile, augment=augmentation,
                          optimizer=optimizer, learning_rate=learning_rate)
            fit_kwargs.setdefault("epochs", profile.epochs_for("optimizers"))
            suffix = optimizer_run_suffix(optimizer, learning_rate) + extra_suffix
            # A suffix, not a name: another batch or seed then trains in a folder of its own.
            runs[optimizer] = fit(model, data, profile, suffix=suffix, notes={"comparison": "optimizers"},
                                  **fit_kwargs)
        if runs[optimizer].out_of_time:  # the deadline came: the next optimizer would start past it
            break
    return runs
