"""What a user does by accident to a training run: kills, two terminals, changed settings.

A tiny model (a pooling layer and a dense layer) keeps these tests to seconds; what
they check is the run folder's bookkeeping, which is the same for every model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinylib import files

REPO = Path(__file__).resolve().parents[1]

# A tiny model trained in a fresh process. argv: runs folder, epochs, then flags:
#   SLEEP=s        every training batch sleeps s seconds (so epochs take measurable time)
#   DIE_IN=epoch   SIGKILL (or SIGTERM with SIGNAL=TERM) itself in that epoch (1-based)
#   DIE_SAVING=1   SIGKILL itself half way through writing final.weights.h5
DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import keras
    from tinylib import data, train
    from tinylib.profiles import Profile

    runs, epochs = sys.argv[1], int(sys.argv[2])
    keras.utils.set_random_seed(0)
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=epochs,
                      batch_size=8)
    ds = data.load()
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(ds.num_classes, activation="softmax")(x), name="tiny")
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    sleep, die_in = float(os.environ.get("SLEEP", 0)), int(os.environ.get("DIE_IN", 0))
    sig = signal.SIGTERM if os.environ.get("SIGNAL") == "TERM" else signal.SIGKILL

    class Faults(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(sleep)
            if self.epoch == die_in and batch == 1:
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

    run = train.fit(model, ds, profile, runs=runs, callbacks=[], extra_callbacks=[Faults()], verbose=0)
    print("RUN", run.path, run.record["epochs_run"], run.record["wall_seconds"])
""")


def _drive(tmp_path: Path, epochs: int = 2, **flags) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
           "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for key in ("SLEEP", "DIE_IN", "SIGNAL", "DIE_SAVING"):
        env.pop(key, None)
    env.update({k: str(v) for k, v in flags.items()})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), str(tmp_path / "runs"), str(epochs)], env=env,
                          capture_output=True, text=True, timeout=600)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


@pytest.fixture
def run_dir(tmp_path, tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    import keras

    return tmp_path / "runs" / f"tiny-smoke-{keras.backend.backend()}"


# --- atomic writes ------------------------------------------------------------------------


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


def test_a_kill_while_saving_the_final_weights_is_finished_by_the_next_call(tmp_path, run_dir):
    died = _drive(tmp_path, DIE_SAVING=1)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    # The simulated kill left half a file under the temporary name, never under the real one.
    assert not (run_dir / "final.weights.h5").exists()
    assert list(run_dir.glob(".tmp-*"))

    again = _drive(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished" in again.stdout
    assert (run_dir / "final.weights.h5").is_file() and not list(run_dir.glob(".tmp-*"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["checkpoint"] == "final.weights.h5"
    assert not list(run_dir.glob("checkpoint-epoch-*"))

    import keras

    from tinylib import train

    # The final weights load: the model a chapter reloads predicts as the trained one did.
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    model.compile("adam", "categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    train.load_checkpoint(model, run_dir / "final.weights.h5")


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    import keras

    from tinylib import train

    damaged = tmp_path / "checkpoint-epoch-001.weights.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(train.CheckpointError, match=r"checkpoint-epoch-001.*--fresh"):
        train.load_checkpoint(model, damaged)


# --- kills, and the time they cost ---------------------------------------------------------


@pytest.mark.parametrize("how", ["KILL", "TERM"])
def test_wall_time_counts_interrupted_invocations(tmp_path, run_dir, how):
    died = _drive(tmp_path, epochs=3, SLEEP=0.4, DIE_IN=3, SIGNAL=how)
    assert died.returncode != 0
    if how == "TERM":  # a polite kill unwinds: the lock is released and the record written
        assert died.returncode == 128 + signal.SIGTERM, died.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epochs_done"] == 2
    # Each epoch has 3 batches of 0.4 s: two finished epochs took at least 2.4 s.
    before = _record(run_dir)["wall_seconds"]
    assert before >= 2.4

    resumed = _drive(tmp_path, epochs=3, SLEEP=0.4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = _record(run_dir)
    assert record["finished"] and record["epochs_run"] == 3 and record["resumed_at_epoch"] == 2
    assert record["wall_seconds"] >= before + 1.2  # the earlier time, plus the third epoch's


# --- two terminals --------------------------------------------------------------------------


def test_a_second_training_of_the_same_run_folder_is_refused(tmp_path, run_dir):
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
        refused = _drive(tmp_path, epochs=1)
        assert refused.returncode != 0
        assert "RunInUse" in refused.stderr and f"pid {holder.pid}" in refused.stderr
        assert not (run_dir / "record.json").exists()  # nothing was trained side by side
    finally:
        holder.kill()
        holder.wait()
    assert _drive(tmp_path, epochs=1).returncode == 0  # the lock died with its holder


def test_the_lock_is_released_when_a_run_ends(tmp_path, run_dir):
    assert _drive(tmp_path, epochs=1).returncode == 0
    files.FolderLock(run_dir).acquire().release()  # would raise LockedError if still held


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
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)
    with pytest.raises(train.RunConflict, match=r"batch_size: 8 -> 4.*--fresh"):
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, batch_size=4, runs=tmp_path,
                  callbacks=[], verbose=0)
    fresh = train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, batch_size=4, runs=tmp_path,
                      callbacks=[], verbose=0, resume=False)
    assert fresh.record["batch_size"] == 4 and "resumed_at_epoch" not in fresh.record


def test_a_changed_build_option_is_refused(tmp_path, smoke):
    from tinylib import models, train

    ds, profile = smoke
    model = models.build_model("model2", num_classes=ds.num_classes)
    train.fit(model, ds, profile, runs=tmp_path, callbacks=[], verbose=0)
    assert model.tinylib_build_options == {} and _record(tmp_path / "model2-smoke-" f"{_backend()}")[
        "build_options"] == {}
    other = models.build_model("model2", num_classes=ds.num_classes, dropout=0.3)
    with pytest.raises(train.RunConflict, match=r"build_options.dropout: None -> 0.3"):
        train.fit(other, ds, profile, runs=tmp_path, callbacks=[], verbose=0)


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
    with pytest.raises(train.RunConflict, match="already trained 3 epochs; asked for 2"):
        train.fit(_tiny(ds.num_classes), ds, profile, epochs=2, runs=tmp_path, callbacks=[], verbose=0)


def test_a_scheduled_recipe_must_be_built_for_the_epochs_it_trains(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    model = train.build("resnet18", ds, profile, recipe="modern", epochs=2, width=16)
    with pytest.raises(ValueError, match="build it with epochs=4"):
        train.fit(model, ds, profile, epochs=4, runs=tmp_path, verbose=0)


# --- errors on the command line ---------------------------------------------------------------


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tinylib", *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=REPO)


def test_cli_errors_name_the_path_and_what_to_do_without_a_traceback(tmp_path, tiny_env, synthetic):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    env = {"TINYLIB_DATA": str(synthetic), "TINYLIB_HOME": str(tiny_env)}
    result = _cli("train", "model2", "--profile", "smoke", "--epochs", "1", "--runs", str(blocker), env=env)
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
    result = _cli("evaluate", str(run), env={**env, "TINYLIB_PROFILE": "smoke"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "final.weights.h5" in result.stderr and "--fresh" in result.stderr


def test_describe_os_error_says_what_to_do_for_each_kind():
    import errno

    for number, advice in [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                           (errno.EACCES, "no permission"), (errno.ENOTDIR, "a file stands")]:
        text = files.describe_os_error(OSError(number, os.strerror(number), "/some/where"))
        assert "/some/where" in text and advice in text, text


def test_stale_temporaries_of_a_killed_writer_are_cleared_when_the_run_resumes(tmp_path, smoke):
    from tinylib import train

    ds, profile = smoke
    run = train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    stale = run.path / f".tmp-99999-checkpoint-epoch-002.weights.h5"
    stale.write_bytes(b"half")
    time.sleep(0.01)
    train.fit(_tiny(ds.num_classes), ds, profile, epochs=1, runs=tmp_path, callbacks=[], verbose=0)
    assert not stale.exists()
