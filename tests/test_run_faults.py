"""What a user does by accident to a training run: kills, two terminals, changed settings.

A tiny model (a pooling layer and a dense layer) keeps these tests to seconds; what
they check is the run folder's bookkeeping, which is the same for every model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TRAIN_PER_CLASS, WNIDS

from tinylib import files, runs

REPO = Path(__file__).resolve().parents[1]

# A tiny model trained in a fresh process. argv: runs folder, epochs, then flags:
#   SLEEP=s        every training batch sleeps s seconds (so epochs take measurable time)
#   DIE_IN=epoch   SIGKILL (or SIGTERM with SIGNAL=TERM) itself in that epoch (1-based)
#   DIE_SAVING=1   SIGKILL itself half way through writing final.weights.h5 (with EARLY=1, which
#                  makes the final weights other than the last epoch's, so they are written)
#   KILL_AT=k      SIGKILL itself right after its k-th change to the runs folder: a file or folder
#                  made, linked, renamed or removed, or a file opened for writing (found by watching the
#                  calls that change a folder, not by knowing tinylib's file names)
#   CHANGES=path   write there how many changes the run made
#   EARLY=1        the study's early stopping, made to stop after epoch 2 (best: epoch 1); EARLY=patient:
#                  the same best epoch, but patient enough not to stop (its end still restores epoch 1)
#   DIE_AFTER_STATE=n  SIGKILL itself right after the n-th rename onto state.json (epoch n's end)
#   FROM_DISK=1    report the final weights file's weights (as KILL_AT does), not the model's in memory
DRIVER = textwrap.dedent("""
    import builtins, os, signal, sys, time
    import keras
    import numpy as np
    from tinylib import augment, data, train
    from tinylib.profiles import Profile

    runs, epochs = sys.argv[1], int(sys.argv[2])
    watched = os.path.realpath(runs) + os.sep
    kill_at, changes = int(os.environ.get("KILL_AT", 0)), [0]

    die_after_state, states = int(os.environ.get("DIE_AFTER_STATE", 0)), [0]

    def changed(*paths):
        if any(os.path.realpath(os.fspath(p)).startswith(watched) for p in paths if isinstance(p, (str, os.PathLike))):
            changes[0] += 1
            if changes[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if die_after_state and any(str(p).endswith("state.json") for p in paths[1:]):
                states[0] += 1
                if states[0] == die_after_state:
                    os.kill(os.getpid(), signal.SIGKILL)

    def watch(module, name, paths=1):
        real = getattr(module, name)
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            changed(*args[:paths])
            return result
        setattr(module, name, call)

    for name, paths in (("replace", 2), ("rename", 2), ("link", 2), ("unlink", 1), ("remove", 1), ("mkdir", 1),
                        ("rmdir", 1)):
        watch(os, name, paths)
    real_open = builtins.open
    def open_watched(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            changed(file)
        return handle
    builtins.open = open_watched
    if os.environ.get("EARLY"):
        made = train.make_callbacks
        patience = 5 if os.environ["EARLY"] == "patient" else 1  # patient: never stops in 2 epochs
        def early(names):  # no epoch after the first counts as better
            return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=10.0,
                                                  restore_best_weights=True, verbose=0)
                    if n == "early_stopping" else made([n])[0] for n in names]
        train.make_callbacks = early
    keras.utils.set_random_seed(0)
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=epochs,
                      batch_size=int(os.environ.get("BATCH", 8)))
    ds = data.load()
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = augment.augmentation(seed=0)(x)  # random draws, whose state a resume must restore
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(ds.num_classes, activation="softmax")(x), name="tiny")
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    sleep, die_in = float(os.environ.get("SLEEP", 0)), int(os.environ.get("DIE_IN", 0))
    sig = signal.SIGTERM if os.environ.get("SIGNAL") == "TERM" else signal.SIGKILL

    class Faults(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(sleep)
            if self.epoch == die_in and batch == int(os.environ.get("DIE_AT_BATCH", 1)):
                os.kill(os.getpid(), sig)

    if os.environ.get("DIE_SAVING"):
        save = keras.Model.save_weights
        def save_then_die(self, path, *args, **kwargs):
            save(self, path, *args, **kwargs)
            if str(path).endswith("final.weights.h5"):
                size = os.path.getsize(path)
                with open(path, "r+b") as f:  # what a kill half way through the write leaves
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        keras.Model.save_weights = save_then_die

    every = float(os.environ["EVERY"]) if os.environ.get("EVERY") else None
    run = train.fit(model, ds, profile, runs=runs, callbacks=["early_stopping"] if os.environ.get("EARLY") else [],
                    extra_callbacks=[Faults()], verbose=0, checkpoint_every=every, name=os.environ.get("NAME"))
    if os.environ.get("CHANGES"):
        with real_open(os.environ["CHANGES"], "w") as f:
            f.write(str(changes[0]))
    saved = os.path.join(run.path, "final.weights.h5")
    if os.environ.get("KILL_AT") or os.environ.get("FROM_DISK"):  # what the run left on disk, not what this process holds
        model.load_weights(saved)
    np.save(os.path.join(os.path.dirname(runs), os.path.basename(run.path) + "-weights-at-end.npy"),
            np.concatenate([w.ravel() for w in model.get_weights()]))
    print("RUN", run.path, run.record["epochs_run"], run.record["wall_seconds"])
""")


DRIVER_FLAGS = ("SLEEP", "DIE_IN", "SIGNAL", "DIE_SAVING", "EVERY", "NAME", "BATCH", "DIE_AT_BATCH",
                "KILL_AT", "CHANGES", "EARLY")


def _driver_env() -> dict:
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
           "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for key in DRIVER_FLAGS:
        env.pop(key, None)
    return env


def _drive(forks, tmp_path: Path, epochs: int = 2, **flags) -> subprocess.CompletedProcess:
    """The driver in a process of its own (a fork of tests/forks.py's server, imports done once)."""
    env = _driver_env()
    env.update({k: str(v) for k, v in flags.items()})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return forks.run([driver, tmp_path / "runs", epochs], env=env)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


@pytest.fixture
def run_dir(tmp_path, tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    import keras

    return tmp_path / "runs" / f"tiny-smoke-{keras.backend.backend()}"


# --- atomic writes ------------------------------------------------------------------------


def test_an_atomic_write_flushes_the_file_then_its_folder(tmp_path, monkeypatch):
    """The new file reaches the disk before its rename, and the rename before the writer goes
    on (to delete the checkpoint the new state no longer names, say)."""
    from tinylib import files

    flushed = []
    monkeypatch.setattr(files, "_fsync", lambda path: flushed.append(Path(path)))
    target = tmp_path / "state.json"
    files.write_text(target, "{}")
    assert len(flushed) == 2 and flushed[0].name.startswith(".tmp-") and flushed[1] == tmp_path
    flushed.clear()
    assert files.atomic_link(target, tmp_path / "linked.json") and flushed == [tmp_path]


def test_atomic_path_leaves_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "final.weights.h5"
    target.write_bytes(b"old and whole")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            assert tmp.name.endswith("final.weights.h5")  # Keras checks the ending
            tmp.write_bytes(b"half of the n")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.weights.h5"]


def test_a_kill_while_saving_the_final_weights_is_finished_by_the_next_call(forks, tmp_path, run_dir):
    died = _drive(forks, tmp_path, DIE_SAVING=1, EARLY=1)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    # The simulated kill left half a file under the temporary name, never under the real one,
    # and a record that does not say finished (its end was not saved: reproduce must not skip it).
    assert not (run_dir / "final.weights.h5").exists()
    assert list(run_dir.glob(".tmp-*"))
    assert _record(run_dir)["epochs_run"] == 2 and not _record(run_dir)["finished"]

    again = _drive(forks, tmp_path, EARLY=1, FROM_DISK=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished" in again.stdout
    assert (run_dir / "final.weights.h5").is_file() and not list(run_dir.glob(".tmp-*"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["checkpoint"] == "final.weights.h5"
    assert not list(run_dir.glob("checkpoint-epoch-*"))

    # The final weights on disk are the ones an uninterrupted run ends with (early stopping's
    # best epoch restored), not the last epoch's: a chapter that reloads the run gets that model.
    import numpy as np

    straight = _drive(forks, tmp_path, EARLY=1, NAME="straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / f"{run_dir.name}-weights-at-end.npy"),
                               np.load(tmp_path / "straight-weights-at-end.npy"), rtol=1e-5, atol=1e-6)


def test_a_kill_between_the_last_epochs_state_and_its_record_is_finished_with_the_best_weights(
        forks, tmp_path, run_dir):
    """The last epoch's checkpoint is named, the record not yet written (it says one epoch
    fewer, unfinished): the next call has no epoch to train, and early stopping, which never
    began in it, cannot restore its best epoch: the run's end is done from the disk."""
    import numpy as np

    straight = _drive(forks, tmp_path, EARLY="patient", NAME="straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    died = _drive(forks, tmp_path, EARLY="patient", DIE_AFTER_STATE=2)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    assert json.loads((run_dir / "state.json").read_text())["epochs_done"] == 2
    assert not _record(run_dir)["finished"] and _record(run_dir)["epochs_run"] == 1

    again = _drive(forks, tmp_path, EARLY="patient", FROM_DISK=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restored the best epoch's weights" in again.stdout and "is finished" in again.stdout
    record = _record(run_dir)
    assert record["finished"] and record["epochs_run"] == 2
    np.testing.assert_allclose(np.load(tmp_path / f"{run_dir.name}-weights-at-end.npy"),
                               np.load(tmp_path / "straight-weights-at-end.npy"), rtol=1e-5, atol=1e-6)


def test_a_kill_mid_epoch_keeps_the_time_spent_up_to_the_last_checkpoint(forks, tmp_path, run_dir):
    """Wall time counts every invocation: a kill -9 loses only the time since the last
    checkpoint inside the epoch, not the whole epoch's."""
    died = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, SLEEP=0.25, DIE_IN=2, DIE_AT_BATCH=3)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    record = _record(run_dir)
    assert record["epochs_run"] == 1 and not record["finished"]
    # Epoch 2's first three batches (a quarter second each) are in the time kept.
    assert record["wall_seconds"] >= record["history"]["seconds"][0] + 0.6, record["wall_seconds"]


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    import keras


    damaged = tmp_path / "checkpoint-epoch-001.weights.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(runs.CheckpointError, match=r"checkpoint-epoch-001.*--fresh"):
        runs.load_checkpoint(model, damaged)


# --- kills, and the time they cost ---------------------------------------------------------


@pytest.mark.parametrize("how", ["KILL", "TERM"])
def test_wall_time_counts_interrupted_invocations(forks, tmp_path, run_dir, how):
    died = _drive(forks, tmp_path, epochs=3, SLEEP=0.4, DIE_IN=3, SIGNAL=how)
    assert died.returncode != 0
    if how == "TERM":  # a polite kill unwinds: the lock is released and the record written
        assert died.returncode == 128 + signal.SIGTERM, died.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epochs_done"] == 2
    # Each epoch has 3 batches of 0.4 s: two finished epochs took at least 2.4 s.
    before = _record(run_dir)["wall_seconds"]
    assert before >= 2.4

    resumed = _drive(forks, tmp_path, epochs=3, SLEEP=0.4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = _record(run_dir)
    assert record["finished"] and record["epochs_run"] == 3 and record["resumed_at_epoch"] == 2
    assert record["wall_seconds"] >= before + 1.2  # the earlier time, plus the third epoch's


# --- two terminals --------------------------------------------------------------------------


def test_a_second_training_of_the_same_run_folder_is_refused(forks, tmp_path, run_dir):
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO)!r})
            from tinylib.files import FolderLock
            lock = FolderLock({str(run_dir)!r}).acquire()
            print("held", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = _drive(forks, tmp_path, epochs=1)
        assert refused.returncode != 0
        assert "RunInUse" in refused.stderr and f"pid {holder.pid}" in refused.stderr
        assert not (run_dir / "record.json").exists()  # nothing was trained side by side
    finally:
        holder.kill()
        holder.wait()
    assert _drive(forks, tmp_path, epochs=1).returncode == 0  # the lock died with its holder


def test_the_lock_is_released_when_a_run_ends(tmp_path, smoke):
    """In this process, which lives on (a notebook's kernel): the exit of a process would
    release its locks whatever fit did.  A second flock on the folder, even from this same
    process, is refused while the run's is held."""
    from tinylib import train

    ds, profile = smoke
    for _ in range(2):  # trained, then found finished and returned as it is
        run = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
        files.FolderLock(run.path).acquire().release()  # would raise LockedError if still held
    with pytest.raises(ValueError):  # a refusal (another batch size) gives it back too
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, batch_size=4, runs=tmp_path, callbacks=[],
                  verbose=0, name=run.path.name)
    files.FolderLock(run.path).acquire().release()


# --- resuming with other settings ------------------------------------------------------------


def _tiny(num_classes, name="tiny"):
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name=name)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def smoke(tmp_path, tiny_env, synthetic, monkeypatch):
    from tinylib import data
    from tinylib.profiles import Profile

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=8)
    return data.load(), profile


def test_a_changed_batch_size_is_refused_with_what_differs(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    first = train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)
    name = first.path.name  # another batch has a folder of its own, unless the profile's run is named
    with pytest.raises(runs.RunConflict, match=r"batch_size: 8 -> 4.*--fresh"):
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, batch_size=4, runs=tmp_path, name=name,
                  callbacks=[], verbose=0)
    fresh = train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, batch_size=4, runs=tmp_path, name=name,
                      callbacks=[], verbose=0, resume=False)
    assert fresh.record["batch_size"] == 4 and "resumed_at_epoch" not in fresh.record


def test_other_callbacks_or_another_backend_are_another_run(tmp_path, smoke):
    """Early stopping's and the plateau's state come back by position, and each backend keeps
    its own random generators: a resume that changes either would continue a different run."""
    from tinylib import train

    ds, profile = smoke
    first = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=["early_stopping"],
                      verbose=0)
    with pytest.raises(runs.RunConflict, match=r"\(callbacks: \['early_stopping'\] -> \[\]\)"):  # said once
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)
    other = {**runs.read_record(first.path), "backend": "jax" if first.record["backend"] != "jax" else "torch"}
    assert runs.identity_differences(other, first.record) == [
        f"backend: {other['backend']!r} -> {first.record['backend']!r}"]


def test_a_record_keeps_its_callbacks_settings_and_a_run_with_other_ones_is_another_run(tmp_path, smoke):
    """The record says which patience ended its run; a folder from before the settings were
    recorded ran with early stopping's old patience (5), and today's is refused on it, where a
    run without callbacks from then (Models 3 to 5 at full scale) resumes as it was."""
    from tinylib import train

    ds, profile = smoke
    names = ["early_stopping", "reduce_lr_on_plateau"]
    first = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=names, verbose=0)
    settings = _record(first.path)["callback_settings"]
    assert settings["early_stopping"]["patience"] == train.EARLY_STOPPING_PATIENCE == 2 * train.PLATEAU_PATIENCE
    assert settings["reduce_lr_on_plateau"] == {"monitor": "val_loss", "patience": train.PLATEAU_PATIENCE,
                                                "min_delta": 0.0001, "factor": 0.2, "min_lr": 1e-06, "cooldown": 0}
    # The settings of the records from before: today's but for early stopping's patience.
    assert runs.identity_differences({"callback_settings": runs.SETTINGS_BEFORE_RECORDED},
                                     {"callback_settings": settings}) == [
        f"callback_settings.early_stopping.patience: 5 -> {train.EARLY_STOPPING_PATIENCE}"]
    old = {key: value for key, value in _record(first.path).items() if key != "callback_settings"}
    (first.path / runs.RECORD_FILE).write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(runs.RunConflict,
                       match=rf"callback_settings.early_stopping.patience: 5 -> {train.EARLY_STOPPING_PATIENCE}.*--fresh"):
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=names, verbose=0)

    plain = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0,
                      name="plain")
    assert _record(plain.path)["callback_settings"] == {}
    old = {key: value for key, value in _record(plain.path).items() if key != "callback_settings"}
    (plain.path / runs.RECORD_FILE).write_text(json.dumps(old), encoding="utf-8")
    again = train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0,
                      name="plain")
    assert again.record["resumed_at_epoch"] == 1 and again.record["epochs_run"] == 2


def test_a_changed_build_option_is_refused(tmp_path, smoke):
    from tinylib import models, train

    ds, profile = smoke
    model = models.build_model("model2", num_classes=ds.num_classes)
    train.fit(model, ds, profile, runs=tmp_path, callbacks=[], verbose=0)
    # Every option is recorded, the defaults included, so the record alone rebuilds the model.
    assert _record(tmp_path / f"model2-smoke-{_backend()}")["build_options"] == {"dropout": 0.5}
    other = models.build_model("model2", num_classes=ds.num_classes, dropout=0.3)
    with pytest.raises(runs.RunConflict, match=r"build_options.dropout: 0.5 -> 0.3"):
        train.fit(other, ds, profile, runs=tmp_path, callbacks=[], verbose=0)


def test_a_record_from_before_defaults_were_recorded_still_resumes(tmp_path, smoke):
    from tinylib import files, models, train

    ds, profile = smoke
    folder = tmp_path / f"model2-smoke-{_backend()}"
    train.fit(models.build_model("model2", num_classes=ds.num_classes), ds, profile, epochs=1, runs=tmp_path,
              callbacks=[], verbose=0)
    files.write_json(folder / "record.json", {**_record(folder), "build_options": {}})  # as older records were
    longer = train.fit(models.build_model("model2", num_classes=ds.num_classes), ds, profile, epochs=2,
                       runs=tmp_path, callbacks=[], verbose=0)
    assert longer.record["epochs_run"] == 2 and longer.record["build_options"] == {"dropout": 0.5}


def test_an_option_a_record_predates_counts_as_its_default_and_another_value_is_refused(tmp_path, smoke):
    """A run from before the stem's stride was an option trained stride 1: asked for stride 2,
    its folder is refused, not resumed into another architecture with the same weights' shapes."""
    from tinylib import files, models, train

    ds, profile = smoke
    folder = tmp_path / f"resnet18-smoke-{_backend()}"
    train.fit(models.build_model("resnet18", num_classes=ds.num_classes, width=16), ds, profile, runs=tmp_path,
              callbacks=[], verbose=0)
    older = {k: v for k, v in _record(folder)["build_options"].items() if k != "stem_stride"}
    files.write_json(folder / "record.json", {**_record(folder), "build_options": older})
    strided = models.build_model("resnet18", num_classes=ds.num_classes, width=16, stem_stride=2)
    with pytest.raises(runs.RunConflict, match=r"build_options.stem_stride: 1 -> 2"):
        train.fit(strided, ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)


def test_another_batch_is_another_run_in_a_folder_of_its_own(tmp_path, smoke):
    """Asked for Keras' default batch, a run does not resume, nor stop at, the profile's run."""
    from tinylib import train

    ds, profile = smoke
    first = train.fit(_tiny(ds.num_classes), ds, profile, runs=tmp_path, callbacks=[], verbose=0)
    other = train.fit(_tiny(ds.num_classes), ds, profile, runs=tmp_path, callbacks=[], verbose=0, batch_size=4)
    assert other.path.name == first.path.name + "-batch4" and "resumed_at_epoch" not in other.record
    same = train.fit(_tiny(ds.num_classes), ds, profile, runs=tmp_path, callbacks=[], verbose=0,
                     batch_size=profile.batch_size)  # the profile's batch, asked for by its number
    assert same.path == first.path
    assert train.run_folder("m", profile, batch_size=4, seed=7).name.endswith("-batch4-seed7")


def test_another_seed_is_another_run(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    first = train.fit(_tiny(ds.num_classes), ds, profile, runs=tmp_path, callbacks=[], verbose=0)
    other = train.fit(_tiny(ds.num_classes), ds, profile, runs=tmp_path, callbacks=[], verbose=0, seed=7)
    assert other.path.name == first.path.name + "-seed7" and "resumed_at_epoch" not in other.record
    assert (first.record["seed"], other.record["seed"]) == (profile.seed, 7)
    with pytest.raises(runs.RunConflict, match="seed: 0 -> 7"):
        train.fit(_tiny(ds.num_classes), ds, profile, name=first.path.name, runs=tmp_path, callbacks=[],
                  verbose=0, seed=7)


@pytest.mark.slow
def test_an_ablation_with_other_epochs_or_seed_trains_new_runs(tmp_path, smoke, monkeypatch):
    """Chapter 13's exercises: twice the epochs, another seed; neither returns the finished runs."""
    from tinylib import train
    from tinylib.recipes import Recipe

    ds, profile = smoke
    monkeypatch.setenv("TINYLIB_RUNS", str(tmp_path))
    recipes = {"study": Recipe(), "cosine": Recipe(name="cosine", schedule="cosine", learning_rate=1e-3)}
    # Model 1, the smallest network: the run names are what is checked, not the network.
    options = dict(callbacks=[], verbose=0)
    base = train.compare_recipes("model1", ds, profile, recipes, **options)
    longer = train.compare_recipes("model1", ds, profile, recipes, epochs=2 * profile.epochs, **options)
    reseeded = train.compare_recipes("model1", ds, profile, recipes, seed=3, **options)
    for label in recipes:
        assert longer[label].path.name == base[label].path.name + "-2ep"
        assert reseeded[label].path.name == base[label].path.name + "-seed3"
        assert longer[label].record["epochs_run"] == 2 and "resumed_at_epoch" not in longer[label].record
        assert reseeded[label].record["seed"] == 3 and "resumed_at_epoch" not in reseeded[label].record
        assert base[label].record["epochs_run"] == 1


def _backend():
    import keras

    return keras.backend.backend()


def test_more_epochs_continue_a_finished_run_in_one_call(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    first = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    assert first.record["finished"] and first.record["epochs_run"] == 1
    longer = train.fit(_tiny(ds.num_classes), ds, profile, epochs=3, runs=tmp_path, callbacks=[], verbose=0)
    record = longer.record
    assert record["finished"] and record["epochs_run"] == 3 and record["epochs"] == 3
    assert len(record["history"]["loss"]) == 3  # the first epoch kept, two more trained
    assert record["epochs_changed"] == [{"at_epoch": 1, "from": 1, "to": 3}]
    assert _record(longer.path)["epochs_changed"] == record["epochs_changed"]
    # Asking again for 3 returns the finished run; asking for fewer than done is refused.
    again = train.fit(_tiny(ds.num_classes), ds, profile, epochs=3, runs=tmp_path, callbacks=[], verbose=0)
    assert again.record["epochs_run"] == 3
    with pytest.raises(runs.RunConflict, match="already trained 3 epochs; asked for 2"):
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)


def test_a_scheduled_recipe_must_be_built_for_the_epochs_it_trains(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    model = train.build("resnet18", ds, profile, recipe="modern", epochs=2, width=16)
    with pytest.raises(ValueError, match="build it with epochs=4"):
        train.fit(model, ds, profile, epochs=4, runs=tmp_path, verbose=0)


# --- errors on the command line ---------------------------------------------------------------


def _cli(forks, *args, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return forks.run(["-m", "tinylib", *args], env=env, cwd=REPO)


def test_cli_errors_name_the_path_and_what_to_do_without_a_traceback(forks, tmp_path, tiny_env, synthetic):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    env = {"TINYLIB_DATA": str(synthetic), "TINYLIB_HOME": str(tiny_env)}
    result = _cli(forks, "train", "model2", "--profile", "smoke", "--epochs", "1", "--runs", str(blocker), env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert str(blocker) in result.stderr and "a file stands where a folder should be" in result.stderr

    run = tmp_path / "runs" / "damaged"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"model": "model2", "profile": "smoke", "optimizer": "Adam",
                                                  "learning_rate": 1e-4, "dataset": {"classes": 4}}))
    (run / "state.json").write_text(json.dumps({"epochs_done": 1, "checkpoint": "final.weights.h5",
                                                 "history": {}}))
    (run / "final.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # truncated
    result = _cli(forks, "evaluate", str(run), env={**env, "TINYLIB_PROFILE": "smoke"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "final.weights.h5" in result.stderr and "--fresh" in result.stderr


def test_describe_os_error_says_what_to_do_for_each_kind():
    import errno

    for number, advice in [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                           (errno.EACCES, "no permission"), (errno.ENOTDIR, "a file stands")]:
        text = files.describe_os_error(OSError(number, os.strerror(number), "/some/where"))
        assert "/some/where" in text and advice in text, text


def _ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_a_sweep_removes_what_ended_writers_left_and_keeps_a_live_writers_temporary(tmp_path):
    gone = _ended_pid()
    stale_file = tmp_path / f"{files.TEMPORARY_PREFIX}{gone}-evaluation-val.json"
    stale_file.write_text("{half")
    stale_folder = tmp_path / f"{files.TEMPORARY_PREFIX}{gone}-npm-x1y2"  # a killed fetch's scratch
    (stale_folder / "package").mkdir(parents=True)
    (stale_folder / "package" / "weights.bin").write_bytes(b"x")
    # Another process's, writing now (an evaluate in a run folder that train opens).
    live = tmp_path / f"{files.TEMPORARY_PREFIX}{os.getppid()}-evaluation-val.json"
    live.write_text("{being writ")
    kept = tmp_path / "record.json"
    kept.write_text("{}")
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, kept.name])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a start time from /proc is Linux's")
def test_a_temporary_whose_pid_a_later_process_was_given_is_stale(tmp_path, monkeypatch):
    """A killed writer's pid given to a process started after the temporary was written: that
    process cannot be its writer, so the sweep removes the temporary; one it can have written stays."""
    import time as clock

    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = files.process_started_at(later.pid)
        assert started is not None and abs(started - clock.time()) < 60  # when it started, to the second
        temporary = tmp_path / f"{files.TEMPORARY_PREFIX}{later.pid}-record.json"
        temporary.write_text("{half")
        assert files.remove_stale_temporaries(tmp_path) == [] and temporary.exists()  # it can be its writer's
        # The same temporary, had the process started an hour after it was written (a reused pid).
        monkeypatch.setattr(files, "process_started_at", lambda pid: clock.time() + 3600 if pid == later.pid else None)
        assert files.remove_stale_temporaries(tmp_path) == [temporary]
        # A modification time set to the past (a copy, an unpacked archive) is not read as its age.
        monkeypatch.setattr(files, "process_started_at", lambda pid: started)
        folder = tmp_path / f"{files.TEMPORARY_PREFIX}{later.pid}-npm-x1y2"
        (folder / "package").mkdir(parents=True)
        os.utime(folder, (0, 0))
        assert files.remove_stale_temporaries(tmp_path) == [] and folder.exists()
    finally:
        later.kill()
        later.wait()
    monkeypatch.undo()
    assert files.process_started_at(later.pid) is None  # gone: no start time to compare


def test_stale_temporaries_of_a_killed_writer_are_cleared_when_the_run_resumes(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    run = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    stale = run.path / f".tmp-{_ended_pid()}-checkpoint-epoch-002.weights.h5"
    stale.write_bytes(b"half")
    time.sleep(0.01)
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    assert not stale.exists()


# --- checkpoints inside an epoch ---------------------------------------------------------------


def test_a_kill_mid_epoch_resumes_at_that_batch_with_the_result_of_an_uninterrupted_run(forks, tmp_path, run_dir):
    import numpy as np

    # 24 images in batches of 4: 6 batches an epoch; a checkpoint after every batch.
    straight = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    died = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="killed", DIE_IN=2, DIE_AT_BATCH=3)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    killed = tmp_path / "runs" / "killed"
    state = json.loads((killed / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["partial"]["epoch"] == 1 and state["partial"]["batches"] == 4
    name = "partial-epoch-002-batch-000004.weights.h5"  # a checkpoint's files are named by their step
    assert state["checkpoint"] == name and (killed / name).is_file()
    assert [p.name for p in killed.glob("partial-*")] == [name]  # the older ones removed once the state named it

    resumed = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 of 2 and batch 4 of epoch 2" in resumed.stdout
    # The same weights and the same epoch metrics as the run that was never interrupted:
    # same batches in the same order, same random augmentation and dropout, same sums.
    a = np.load(tmp_path / "straight-weights-at-end.npy")
    b = np.load(tmp_path / "killed-weights-at-end.npy")
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    one, two = _record(tmp_path / "runs" / "straight"), _record(killed)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(two["history"][key], one["history"][key], rtol=1e-5, atol=1e-6)
    assert not list(killed.glob("partial-*"))  # a finished run keeps only its final weights
    assert two["resumed_at_epoch"] == 1 and two["epochs_run"] == 2


def test_early_stopping_keeps_its_patience_and_best_weights_across_a_resume(tmp_path, smoke, monkeypatch):
    import numpy as np

    from tinylib import train

    made = []
    original = train.make_callbacks
    monkeypatch.setattr(train, "make_callbacks", lambda names: made.extend(original(names)) or made[-len(names):])
    ds, profile = smoke
    names = ["early_stopping", "reduce_lr_on_plateau"]
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=names, verbose=0)
    first_stop, first_lr = made[0], made[1]
    state = json.loads((tmp_path / "tiny-smoke-" f"{_backend()}" / "state.json").read_text())
    assert state["callbacks"]["0"]["best"] == pytest.approx(first_stop.best)
    assert state["callbacks"]["0"]["wait"] == first_stop.wait
    assert state["callbacks"]["1"]["best"] == pytest.approx(first_lr.best)

    class Probe(__import__("keras").callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.seen = (made[2].best, made[2].wait, made[2].best_weights is not None, made[3].best)

    probe = Probe()
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=3, runs=tmp_path, callbacks=names, verbose=0,
              extra_callbacks=[probe])
    val_losses = state["history"]["val_loss"]
    assert probe.seen[0] == pytest.approx(min(val_losses))  # not reset to inf by the new fit
    assert probe.seen[1] == first_stop.wait and probe.seen[2]
    assert probe.seen[3] == pytest.approx(first_lr.best)
    assert np.isfinite(probe.seen[0])


def test_early_stopping_among_the_extra_callbacks_is_refused_before_any_training(tmp_path, smoke):
    """An extra callback sees Keras begin and end training around every epoch: early stopping
    there would forget its patience and restore its best weights after each epoch."""
    import keras

    from tinylib import train

    ds, profile = smoke
    for extra in (keras.callbacks.EarlyStopping(patience=10), keras.callbacks.ReduceLROnPlateau()):
        with pytest.raises(ValueError, match=r"callbacks=\['early_stopping'"):
            train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path / "runs",
                      extra_callbacks=[extra], verbose=0)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_progress_lines_read_well_in_a_log(tmp_path, smoke, capsys):
    from tinylib import progress, train

    ds, profile = smoke
    line = progress.ProgressLog(epochs=2, batch_size=4, every=0.0)
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, batch_size=4, runs=tmp_path, callbacks=[],
              verbose=0, extra_callbacks=[line])
    out = capsys.readouterr().out
    assert "\r" not in out
    steps = [l for l in out.splitlines() if " step " in l]
    assert steps and all("images/s" in l and "epoch left" in l for l in steps)
    assert "epoch 2/2 step 6/6" in out or "epoch 2/2 step 5/6" in out
    ends = [l for l in out.splitlines() if " done in " in l]
    assert len(ends) == 2 and "val_accuracy" in ends[0] and "run left about" in ends[0]
    capped = progress.ProgressLog(epochs=100, batch_size=32, may_stop_early=True)  # early stopping may end it
    capped.set_params({"steps": 10})
    capped.on_epoch_begin(0)
    capped.on_epoch_end(0, {"loss": 4.0})
    last = capsys.readouterr().out
    assert "epoch 1/100 done in" in last and "; run left at most " in last
    # A resumed run's first line already has a time left: the median over the run's past epochs,
    # which one slow epoch does not move (1,860 s twice and one of 2,600: 1,860 s an epoch).
    resumed = progress.ProgressLog(epochs=30, batch_size=128, every=0.0, past_epochs=[1860.0, 2600.0, 1860.0])
    resumed.set_params({"steps": 782})
    resumed.on_epoch_begin(3)
    resumed.first_step = (0, time.perf_counter() - 10.0)
    resumed.last = 0.0
    resumed.on_train_batch_end(99, {"loss": 2.0})
    line = capsys.readouterr().out
    assert "epoch 4/30 step 100/782" in line and "run left about" in line
    left = line.split("run left about ")[1].strip()
    assert left.startswith("13h") or left.startswith("14h"), line  # 26 epochs of 1,860 s, and this one's rest
    # Four steps a call: Keras numbers the epoch's last call (2 steps of 782) as if it ran 4.
    resumed.last = 0.0
    resumed.on_train_batch_end(783, {"loss": 2.0})
    line = capsys.readouterr().out
    assert "step 782/782" in line and "epoch left 0s" in line, line
    assert progress.duration(42) == "42s" and progress.duration(785) == "13m05s"
    assert progress.duration(5 * 3600 + 12 * 60) == "5h12m"
    assert progress.duration(float("nan")) == progress.duration(float("inf")) == "?"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_several_steps_per_execution_train_the_same_run(forks, tmp_path, tiny_env, synthetic, backend):
    """What a GPU run does to save Python round trips (16 steps per call) gives the same training,
    and its mid-epoch checkpoints still name the batch reached."""
    pytest.importorskip(backend)
    script = '''
import json, sys
import keras
from tinylib import data, train
from tinylib.profiles import Profile

profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=2, batch_size=4)
ds = data.load()
out = {}

class Watch(keras.callbacks.Callback):  # after the checkpointer: what its state.json names, call by call
    def __init__(self, folder):
        super().__init__()
        self.folder, self.seen = folder, []
    def on_train_batch_end(self, batch, logs=None):
        partial = json.loads((self.folder / "state.json").read_text()).get("partial") or {}
        self.seen.append([partial.get("batches"), partial.get("checkpoint")])

from pathlib import Path
for steps in (1, 3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(ds.num_classes, activation="softmax")(x), name=f"tiny{steps}")
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    watch = Watch(Path(sys.argv[1]) / f"tiny{steps}-smoke-{keras.backend.backend()}")
    run = train.fit(model, ds, profile, runs=sys.argv[1], callbacks=[], verbose=0, checkpoint_every=0.0,
                    steps_per_execution=steps, extra_callbacks=[watch])
    assert run.path == watch.folder, run.path
    assert run.record["speed"]["steps_per_execution"] == steps  # the run's own, not the device's default
    out[steps] = {"loss": run.record["history"]["loss"], "recorded": run.record["steps_per_execution"],
                  "seen": watch.seen}
print(json.dumps(out))
'''
    env = {**os.environ, "KERAS_BACKEND": backend, "TINYLIB_DATA": str(synthetic), "TINYLIB_HOME": str(tiny_env),
           "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = forks.run(["-c", script, tmp_path], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["1"]["recorded"] == 1 and runs["3"]["recorded"] == 3
    assert runs["3"]["loss"] == pytest.approx(runs["1"]["loss"], rel=1e-4)
    # 24 images in batches of 4: calls of 3 steps end at batches 3 and 6, and 6 ends the epoch
    # (its checkpoint is the epoch's): each epoch's one mid-epoch checkpoint names batch 3.
    def at(epoch, batches):
        return [batches, f"partial-epoch-{epoch:03d}-batch-{batches:06d}.weights.h5"]

    assert runs["1"]["seen"] == [at(e, b) for e in (1, 2) for b in (1, 2, 3, 4, 5, 5)], runs["1"]["seen"]
    assert runs["3"]["seen"] == [at(1, 3), at(1, 3), at(2, 3), at(2, 3)], runs["3"]["seen"]


def test_a_run_killed_mid_epoch_resumes_with_more_steps_a_call_from_a_batch_between_calls(forks, tmp_path, run_dir):
    """A sitting of one step a call killed at batch 3 of epoch 2, resumed at a CPU's default of
    4 steps a call (not a multiple of 4 away from the epoch's start, nor from its end): the
    straight run's weights and history, to float noise."""
    import numpy as np

    straight = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    died = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="killed", DIE_IN=2, DIE_AT_BATCH=2)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    killed = tmp_path / "runs" / "killed"
    assert json.loads((killed / "state.json").read_text())["partial"]["batches"] == 3
    resumed = _drive(forks, tmp_path, epochs=2, BATCH=4, EVERY=0, NAME="killed", TINYLIB_STEPS_PER_EXECUTION=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 of 2 and batch 3 of epoch 2" in resumed.stdout
    np.testing.assert_allclose(np.load(tmp_path / "killed-weights-at-end.npy"),
                               np.load(tmp_path / "straight-weights-at-end.npy"), rtol=1e-4, atol=1e-5)
    one, two = _record(tmp_path / "runs" / "straight"), _record(killed)
    assert two["steps_per_execution"] == 4 and one["steps_per_execution"] == 1
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(two["history"][key], one["history"][key], rtol=1e-4, atol=1e-5)


def test_early_stopping_restores_the_best_weights_only_when_the_run_ends(tmp_path, smoke):
    """Each epoch starts from where the last one ended, as in one Keras fit; only the run's end
    puts the best epoch's weights back. (Fitting once per epoch made Keras' early stopping put
    them back after every epoch: Model 2 then trained from its best epoch again and again.)"""
    import keras
    import numpy as np

    from tinylib import train

    ds, profile = smoke
    keras.utils.set_random_seed(0)
    model = _tiny(ds.num_classes)
    # A rate this large makes the validation loss jump about: some epoch is no improvement.
    model.compile(keras.optimizers.SGD(learning_rate=1e4), "categorical_crossentropy", metrics=["accuracy"])
    snapshots = {"begin": [], "end": []}

    class Snapshots(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            snapshots["begin"].append([np.array(w) for w in self.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            snapshots["end"].append([np.array(w) for w in self.model.get_weights()])

    run = train.fit(model, ds, profile, epochs=5, runs=tmp_path, callbacks=["early_stopping"],
                    extra_callbacks=[Snapshots()], verbose=0)
    val_loss = run.record["history"]["val_loss"]
    setbacks = [k for k in range(1, len(val_loss) - 1) if val_loss[k] >= min(val_loss[:k])]
    assert setbacks, f"the scenario needs an epoch, not the last, that is no improvement: {val_loss}"
    for epoch in range(1, len(val_loss)):  # each epoch begins with the weights the previous one ended with
        for began, ended in zip(snapshots["begin"][epoch], snapshots["end"][epoch - 1]):
            np.testing.assert_array_equal(began, ended)
    best = int(np.argmin(val_loss))
    for final, kept in zip(model.get_weights(), snapshots["end"][best]):  # the end restores the best epoch's
        np.testing.assert_array_equal(final, kept)
    # What a published evaluation checks the final checkpoint against: that best epoch's figure.
    from tinylib import recalibration, runs

    recorded = recalibration.recorded_score(runs.load_run(run.path), runs.read_state(run.path))
    assert recorded == (best + 1, run.record["history"]["val_accuracy"][best], True)


# --- a kill at every change a run makes to its folder ------------------------------------------


def kill_at_every_change(forks, tmp_path, stride: int = 1, epochs: int = 3, **flags) -> int:
    """Train straight for ``epochs``; then, for each change k the run makes to its folder
    (every ``stride``-th), kill a fresh run right after change k and run it again: it must
    end with the straight run's final weights and history. Returns how many changes the run
    makes."""
    import numpy as np

    straight = _drive(forks, tmp_path, epochs=epochs, NAME="straight", CHANGES=tmp_path / "changes.txt", **flags)
    assert straight.returncode == 0, straight.stderr[-3000:]
    count = int((tmp_path / "changes.txt").read_text())
    expected = np.load(tmp_path / "straight-weights-at-end.npy")
    history = _record(tmp_path / "runs" / "straight")["history"]
    failures = []
    for k in range(1, count + 1, stride):
        failures.extend(_kill_and_resume(forks, tmp_path, k, expected, history, epochs, flags))
    assert not failures, f"{len(failures)} of the {count} changes:\n" + "\n".join(failures)
    return count


def _kill_and_resume(forks, tmp_path, k, expected, history, epochs, flags) -> list[str]:
    """Kill a fresh run right after its change k, run it again, and say how it differs."""
    import numpy as np

    name = f"killed-at-{k}"
    died = _drive(forks, tmp_path, epochs=epochs, NAME=name, KILL_AT=k, **flags)
    assert died.returncode == -signal.SIGKILL, (k, died.stderr[-3000:])
    again = _drive(forks, tmp_path, epochs=epochs, NAME=name, **flags)
    if again.returncode != 0:
        return [f"change {k}: the resume failed: {again.stderr.strip().splitlines()[-1:]}"]
    weights = np.load(tmp_path / f"{name}-weights-at-end.npy")
    resumed = _record(tmp_path / "runs" / name)
    if not np.allclose(weights, expected, rtol=1e-5, atol=1e-6):
        return [f"change {k}: other final weights (max difference {np.abs(weights - expected).max():.2g})"]
    if not all(len(resumed["history"][key]) == len(history[key])
               and np.allclose(resumed["history"][key], history[key], rtol=1e-5, atol=1e-6)
               for key in ("loss", "val_loss")):
        return [f"change {k}: another history ({len(resumed['history']['loss'])} epochs, not {len(history['loss'])})"]
    straight = _record(tmp_path / "runs" / "straight")
    if not resumed["finished"] or resumed["epochs_run"] != straight["epochs_run"]:
        return [f"change {k}: epochs {resumed['epochs_run']}, finished {resumed['finished']}"]
    return []


@pytest.mark.slow
def test_a_kill_at_every_change_to_the_run_folder_resumes_to_the_same_run(forks, tmp_path, run_dir):
    """Early stopping (it ends the run after epoch 2 and restores epoch 1's weights) and a
    mid-epoch checkpoint after every batch: each kill leaves either the checkpoint before or
    the one after, never a state naming weights that are gone."""
    count = kill_at_every_change(forks, tmp_path, EARLY=1, EVERY=0)
    assert count > 10  # the sweep saw the run's checkpoints, not nothing


@pytest.mark.slow
def test_a_kill_at_every_change_resumes_to_the_same_run_on_jax(forks, tmp_path, run_dir, monkeypatch):
    """The same on JAX, which saves and restores its state (random generators, optimizer
    variables) its own way, and the other end of a run: without early stopping the run ends
    with its last epoch's weights, and that epoch's checkpoint becomes the final one under a
    second name (a hard link), not a second write. (The TensorFlow sweep above ends with
    early stopping's restore, which writes the final weights.) Two epochs of two batches: a
    third epoch would repeat the second's changes, and a third batch would add a mid-epoch
    checkpoint replacing another, which the TensorFlow sweep kills at already; each change
    left out is two fewer runs of one of CI's longest tests."""
    pytest.importorskip("jax")
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # _drive passes it to the children
    two_batches = TRAIN_PER_CLASS * len(WNIDS) // 2
    assert kill_at_every_change(forks, tmp_path, epochs=2, EVERY=0, BATCH=two_batches) > 10


def test_a_final_checkpoint_is_written_only_where_the_end_changed_the_weights(tmp_path, smoke, monkeypatch):
    """Model 3's checkpoint is 1.7 GB: a run whose end leaves the weights as its last epoch
    left them links that epoch's checkpoint as the final one; a run whose early stopping
    put an earlier epoch back writes it. Either final file reloads to the model's weights."""
    import keras
    import numpy as np

    from tinylib import train

    ds, profile = smoke
    written = []
    save = runs.save_weights

    def counting(model, path):
        written.append(Path(path).name)
        return save(model, path)

    monkeypatch.setattr(train, "save_weights", counting)
    for name, callbacks, rate in (("kept", [], 1e-3), ("restored", ["early_stopping"], 1e4)):
        keras.utils.set_random_seed(0)
        model = _tiny(ds.num_classes)
        model.compile(keras.optimizers.SGD(learning_rate=rate), "categorical_crossentropy", metrics=["accuracy"])
        written.clear()
        run = train.fit(model, ds, profile, epochs=3, runs=tmp_path, name=name, callbacks=callbacks, verbose=0)
        val_loss = run.record["history"]["val_loss"]
        restored = name == "restored"
        if restored:
            assert int(np.argmin(val_loss)) < len(val_loss) - 1, f"the scenario needs a restore: {val_loss}"
        assert ("final.weights.h5" in written) == restored, (name, written)
        reloaded = _tiny(ds.num_classes)
        reloaded.compile(keras.optimizers.SGD(), "categorical_crossentropy")
        reloaded.optimizer.build(reloaded.trainable_variables)
        runs.load_checkpoint(reloaded, run.path / "final.weights.h5")
        for got, want in zip(reloaded.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
        assert sorted(p.name for p in run.path.glob("*.weights.h5")) == ["final.weights.h5"]


def test_a_run_killed_in_its_first_epoch_is_checked_on_resume_and_keeps_its_time(forks, tmp_path, run_dir):
    """The record is on disk from the run's first step: a resume with another batch size is
    refused, not silently recorded as the first one, and the killed invocation's time is kept."""
    died = _drive(forks, tmp_path, epochs=2, BATCH=4, SLEEP=0.3, DIE_IN=1, DIE_AT_BATCH=4, SIGNAL="TERM")
    assert died.returncode != 0
    record = _record(run_dir)
    assert record["epochs_run"] == 0 and record["batch_size"] == 4 and record["wall_seconds"] > 1.0
    other = _drive(forks, tmp_path, epochs=2, BATCH=8)
    assert other.returncode != 0 and "batch_size: 4 -> 8" in other.stderr, other.stderr[-2000:]
    same = _drive(forks, tmp_path, epochs=2, BATCH=4)
    assert same.returncode == 0, same.stderr[-3000:]
    assert _record(run_dir)["wall_seconds"] > record["wall_seconds"]  # the killed minutes still count


def test_a_full_disk_during_training_is_one_clear_error_and_the_last_checkpoint_is_kept(tmp_path, smoke,
                                                                                       monkeypatch):
    """Checked before h5py writes (out of space mid-write it can crash the process: exit 139)."""
    from collections import namedtuple

    from tinylib import cli, train

    ds, profile = smoke
    run = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    state = json.loads((run.path / "state.json").read_text())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError) as raised:
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)
    message = cli.explain_error(raised.value)
    assert "checkpoint-epoch-002.weights.h5" in message and "disk is full" in message, message
    assert "\n" not in message
    assert json.loads((run.path / "state.json").read_text())["checkpoint"] == state["checkpoint"]
    assert (run.path / state["checkpoint"]).is_file()
    # The record written as it unwound holds no epoch that no checkpoint has.
    record = json.loads((run.path / "record.json").read_text())
    assert record["epochs_run"] == 1 and len(record["history"]["val_accuracy"]) == 1
    monkeypatch.undo()
    again = train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)
    assert again.epochs_done == 2


def test_each_epochs_learning_rate_is_the_one_it_trained_with(tmp_path, smoke, monkeypatch):
    """ReduceLROnPlateau lowers the rate at an epoch's end, before the record reads it: the
    record kept the next epoch's rate (one epoch out), so a plot put each step an epoch early."""
    import keras

    from tinylib import train

    ds, profile = smoke
    # Every epoch after the first is a plateau (none beats the best by 10): the rate halves
    # at the end of each from the second on.
    monkeypatch.setattr(train, "make_callbacks", lambda names: [keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=0, min_delta=10.0, min_lr=0.0, verbose=0)])
    model = _tiny(ds.num_classes)
    model.optimizer.learning_rate.assign(1e-3)
    seen = []

    class Seen(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    run = train.fit(model, ds, profile, epochs=3, runs=tmp_path, callbacks=["reduce_lr_on_plateau"],
                    extra_callbacks=[Seen()], verbose=0)
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4])
    assert run.record["history"]["learning_rate"] == pytest.approx(seen)


def test_a_sigterm_handler_set_from_c_is_given_back_as_the_default(monkeypatch):
    """signal.signal returns None for a handler that C code set; Python cannot put None back."""
    import signal

    from tinylib import processes

    real, before = signal.signal, signal.getsignal(signal.SIGTERM)
    given = []

    def recording(signum, handler):
        given.append(handler)
        previous = real(signum, handler)
        return None if len(given) == 1 else previous

    monkeypatch.setattr(signal, "signal", recording)
    try:
        with processes.sigterm_as_exit():
            pass
        assert given[-1] is signal.SIG_DFL
    finally:
        real(signal.SIGTERM, before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_started_with_tied_to_this_process_dies_when_its_parent_is_killed(tmp_path):
    """The rule: every process tinylib starts dies with it, even under ``kill -9`` (no cleanup runs)."""
    parent_code = (
        "import subprocess, sys, threading, time\n"
        "from tinylib import processes\n"
        # A thread of its own, as TensorFlow's would be, when the child is forked.
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                         preexec_fn=processes.tied_to_this_process)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    child = int(parent.stdout.readline())
    try:
        os.kill(child, 0)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # A dead child the init process has not reaped yet counts as gone.
            state = Path(f"/proc/{child}/stat").read_text().split(") ")[-1][:1] \
                if Path(f"/proc/{child}/stat").exists() else "X"
            if state in "ZX":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the child outlived its killed parent")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_whose_parent_died_before_its_prctl_stops_before_its_command_starts():
    """A caller killed between the fork and the ``prctl`` leaves a re-parented child that no signal
    will reach: ``tied_to_this_process`` checks its parent after setting the signal. The parent it
    checks against is noted at each fork, so a child started by a forked process (whose copy of
    the module was imported by its own parent) still runs. The death is staged last: a hook that
    runs in the child after the fork (and before ``preexec_fn``) says another process forked it.
    Run in a fresh interpreter, whose fork hooks the test leaves behind."""
    code = (
        "import os, subprocess, sys\n"
        "from tinylib import processes\n"
        "command = [sys.executable, '-c', 'print(\\'started\\')']\n"
        "def start():\n"
        "    try:\n"
        "        done = subprocess.run(command, preexec_fn=processes.tied_to_this_process, capture_output=True,\n"
        "                              text=True)\n"
        "        return f'{done.returncode}:{done.stdout.strip()}'\n"
        "    except subprocess.SubprocessError:\n"
        "        return 'refused'\n"
        "here = start()\n"
        "reader, writer = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(writer, start().encode())\n"
        "    os._exit(0)\n"
        "os.close(writer)\n"
        "forked = os.read(reader, 100).decode()\n"
        "os.wait()\n"
        "def orphaned():\n"
        "    processes._forking_pid = -1\n"
        "os.register_at_fork(after_in_child=orphaned)\n"
        "print(here, forked, start())\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[1])
    assert shown.stdout.split() == ["0:started", "0:started", "refused"], shown.stdout + shown.stderr


def test_a_run_folder_that_cannot_be_made_says_which_setting_moves_it(tmp_path):
    """A notebook shows the exception's last line: it names the folder and what to do."""
    import keras

    from tinylib import train

    blocked = tmp_path / "runs"
    blocked.write_text("")  # a file where the runs folder should be
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)], name="model1")
    with pytest.raises(OSError, match=r"making the run folder: .*runs.*a file stands where a folder should be") as raised:
        train.fit(model, None, "smoke", runs=blocked, epochs=1)
    assert raised.value.errno is None  # the command line prints it as it is, not described again


def test_a_run_early_stopping_ended_is_not_extended_before_its_end_was_saved(tmp_path):
    """Early stopping ended the run (its saved state says at which epoch) and the run was
    killed before its end wrote stopped_early into the record: more epochs are refused all
    the same, as they are once the end is saved."""
    from tinylib.runs import RunConflict, epochs_change

    assert epochs_change(tmp_path, {"epochs": 5}, 3, 8) == {"at_epoch": 3, "from": 5, "to": 8}
    for previous, stopped in (({"epochs": 5, "stopped_early": True}, False), ({"epochs": 5}, True)):
        with pytest.raises(RunConflict, match="stopped early after epoch 3"):
            epochs_change(tmp_path, previous, 3, 8, stopped=stopped)


def test_a_records_images_per_second_leave_out_the_first_epoch_and_take_the_median(tmp_path):
    """The rate the chapters' cost lines, a budget's first plan and the hours figure read:
    training images over the median epoch's training seconds, the first epoch (which also
    compiles) left out where there are others; and the GFLOP/s and share of the peak from it."""
    from tinylib.runs import Run

    record = {"epochs": 4, "dataset": {"train_images": 1_000},
              "speed": {"train_gflop_per_image": 2.0, "matmul_peak_gflops_per_second": 100.0}}
    run = Run(path=tmp_path, model=None, record=record,
              history={"train_seconds": [900.0, 100.0, 110.0, 120.0]}, epochs_done=4)
    written = run.write_record()
    assert written["train_images_per_second"] == 9.1  # 1,000 / 110 s, not / 100 or / the mean with 900
    assert written["speed"]["train_gflops_per_second"] == pytest.approx(18.2)
    assert written["speed"]["fraction_of_matmul_peak"] == pytest.approx(0.182)
    alone = Run(path=tmp_path, model=None, record={"epochs": 1, "dataset": {"train_images": 1_000}},
                history={"train_seconds": [250.0]}, epochs_done=1)
    assert alone.write_record()["train_images_per_second"] == 4.0  # one epoch: it is all there is
