"""`python -m tinylib reproduce`: the plan, the budget, the results folder and its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from tinylib import reproduce
from tinylib.processes import tied_to_this_process

REPO = Path(__file__).resolve().parents[1]


def _profile(epochs=2):
    from tinylib.profiles import Profile

    return Profile("full", classes=None, train_per_class=None, val_per_class=None, epochs=epochs,
                   batch_size=8)


@pytest.fixture
def ds(tiny_env, synthetic, monkeypatch):
    from tinylib import data

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    return data.load()


def test_the_plan_is_in_order_of_value_and_only_picks_from_it():
    assert reproduce.PLAN_NAMES[:5] == ("model1", "model2", "model4", "model3", "model5")
    assert reproduce.PLAN_NAMES[5:] == ("resnet18-modern", "resnet9-fast", "model5-finetune", "optimizers",
                                        "precision")
    picked = reproduce.select("optimizers, model3")
    assert [p.name for p in picked] == ["model3", "optimizers"]  # the plan's order, not the asked one
    with pytest.raises(ValueError, match="unknown run.*model9.*choose from"):
        reproduce.select("model9")


def test_a_sitting_with_too_little_left_for_another_epoch_stops_at_its_end_and_the_run_resumes(tmp_path, ds, monkeypatch):
    from tinylib import train

    profile = _profile(epochs=3)
    keras.utils.set_random_seed(0)
    model = train.build("model2", ds, profile)
    # Too little of the sitting is left for another epoch after the first:
    monkeypatch.setattr(train, "_would_overrun", lambda run, deadline: run.epochs_done >= 1)
    run = train.fit(model, ds, profile, runs=tmp_path, verbose=0, deadline=time.monotonic() + 3600)
    assert run.out_of_time and run.epochs_done == 1 and run.partial is None
    record = json.loads((run.path / "record.json").read_text())
    assert record["epochs_run"] == 1 and not record["finished"] and not record.get("stopped_early")
    assert not (run.path / "final.weights.h5").exists()
    monkeypatch.undo()
    again = train.fit(train.build("model2", ds, profile), ds, profile, runs=tmp_path, verbose=0)
    assert again.record["finished"] and again.record["epochs_run"] == 3 and again.record["resumed_at_epoch"] == 1


def test_an_epoch_longer_than_the_sitting_left_still_starts_and_a_short_remainder_does_not(monkeypatch):
    """Judged by the last epoch's whole length, a sitting left up to an epoch of its time
    unused (half an hour of Model 3's); an epoch now starts whenever a couple of minutes (or,
    for short epochs, one epoch's time) are left, and the checkpointer stops it where the
    deadline comes."""
    from tinylib import train

    class Run:
        def __init__(self, *seconds, partial=None):
            self.history = {"seconds": list(seconds)} if seconds else {}
            self.partial = partial

    now = 1000.0
    monkeypatch.setattr(train.time, "monotonic", lambda: now)
    long = Run(12.0, 1800.0)  # the last epoch took half an hour
    assert not train._would_overrun(long, None)
    assert not train._would_overrun(long, now + 600)  # ten minutes left: start, stop at a checkpoint
    assert not train._would_overrun(long, now + train.MIN_SITTING_SECONDS + 1)
    assert train._would_overrun(long, now + train.MIN_SITTING_SECONDS - 1)  # not worth a start
    assert not train._would_overrun(Run(5.0), now + 6) and train._would_overrun(Run(5.0), now + 4)  # short epochs
    assert not train._would_overrun(Run(), now + 1)  # a first epoch: nothing to judge by
    assert not train._would_overrun(Run(50.0, partial={"train_seconds": 45.0}), now + 6)  # 5 s of it left


def test_inside_an_epoch_that_cannot_end_in_time_the_stop_is_saved_before_the_deadline(monkeypatch):
    """Batches of 10 s, a save of 5 s, a validation of 10 s (the last epoch's), 10 batches an
    epoch: the checkpoint is taken at the last batch after which a save still ends in time,
    and an epoch whose batches, validation and save all fit is never stopped."""
    from tinylib import checkpointing

    class Run:
        history = {"seconds": [110.0], "train_seconds": [100.0]}
        save_seconds = 5.0  # the run's last save, read from its state.json

    clock = {"now": 0.0}
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(checkpointing.time, "perf_counter", lambda: clock["now"])
    saver = checkpointing.Checkpointer(Run())
    saver.params = {"steps": 10}
    saver.batches_start = 0.0
    assert not saver._due(4)  # no deadline
    clock["now"] = 50.0  # five batches done, five left: 50 s, then 10 s of validation and a 5-s save
    saver.deadline = 115.0
    assert not saver._due(4)  # the epoch ends at 115 s: in time
    saver.deadline = 114.0
    assert not saver._due(4)  # cannot end in time, but another batch and a save still fit (65 s)
    saver.deadline = 64.0
    assert saver._due(4)  # another batch and its save would end at 65 s: save now, at 55 s
    Run.history = {}  # a first epoch: no validation to judge by
    saver.deadline = 100.0
    assert not saver._due(4)  # at 50 s: the epoch cannot end by 100 s (105), but a batch and a save fit
    clock["now"] = 90.0
    assert saver._due(8)  # at 90 s: the last batch and a save would end at 105 s, and no save follows it
    Run.history = {"seconds": [110.0], "train_seconds": [100.0]}
    saver.deadline = 110.0
    assert saver._due(8)  # the epoch would end at 115 s, past 110, and no save follows its last batch: save now
    saver.deadline = 116.0
    assert not saver._due(8)  # the last batch, its validation and the epoch's save end at 115 s: in time
    # A first epoch whose record gives its validation images: 300 of them at 100 images a batch
    # are 3 batches of a forward pass each, a third of a 10-s step: 10 s, as the last epoch's above.
    Run.history, Run.record = {}, {"dataset": {"train_images": 1_000, "val_images": 300}}
    saver.deadline = 112.0
    assert saver._due(8)  # 90 s + the last batch + 10 s of validation + a save end at 115 s: save now
    saver.deadline = 116.0
    assert not saver._due(8)
    # The same first epoch resumed at batch 5: this call serves the 5 batches left, its
    # validation is still the whole epoch's 3 batches.
    saver.offset, saver.params, saver.batches_start = 5, {"steps": 5}, 50.0
    saver.deadline = 112.0
    assert saver._due(3)  # at 90 s, 4 of the 5 done: the last, 10 s of validation and a save end at 115 s


def test_a_deadline_inside_an_epoch_stops_at_a_checkpoint_there_and_the_run_resumes_at_that_batch(tmp_path, ds,
                                                                                                   capsys, monkeypatch):
    """A first epoch has no length to judge by (Model 3's lasts two hours on a CPU): it is not
    run past the sitting's end but stopped at a checkpoint, taken there, at the batch reached."""
    from tinylib import train

    class Slow(keras.callbacks.Callback):  # each step a little over the deadline's reach
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.6)

    profile = _profile(epochs=2)  # 24 images in batches of 8: 3 steps an epoch
    keras.utils.set_random_seed(0)
    # The epoch starts whatever the setup took (on a busy machine, more than the half second):
    # the deadline is met inside it.
    monkeypatch.setattr(train, "_would_overrun", lambda run, deadline: False)
    run = train.fit(train.build("model2", ds, profile), ds, profile, runs=tmp_path, verbose=0,
                    checkpoint_every=None, deadline=time.monotonic() + 0.5, extra_callbacks=[Slow()])
    assert run.out_of_time and run.epochs_done == 0
    state = json.loads((run.path / "state.json").read_text())
    assert state["partial"]["epoch"] == 0 and 1 <= state["partial"]["batches"] < 3
    assert state["save_seconds"] > 0  # the next sitting's first stop allows for a save as long
    assert "stopped inside epoch 1, at batch" in capsys.readouterr().out
    record = json.loads((run.path / "record.json").read_text())
    assert record["epochs_run"] == 0 and not record["finished"] and record["wall_seconds"] > 0
    monkeypatch.undo()
    from tinylib.runs import Run

    resumed = Run(path=run.path, model=train.build("model2", ds, profile), record=dict(run.record))
    assert not train._resume(resumed, 2, 3) and resumed.save_seconds == state["save_seconds"]
    capsys.readouterr()  # what _resume printed: the line below must come from fit's own resume
    again = train.fit(train.build("model2", ds, profile), ds, profile, runs=tmp_path, verbose=0)
    assert again.record["finished"] and again.record["epochs_run"] == 2
    assert f"batch {state['partial']['batches']} of epoch 1" in capsys.readouterr().out


def test_results_get_the_finished_records_and_a_summary_and_finished_runs_are_skipped(tmp_path, ds, capsys):
    results = tmp_path / "results"
    plan = reproduce.select("model2")
    outcome = reproduce.run_plan(plan, ds, _profile(epochs=1), results=results, runs_folder=tmp_path / "runs")
    assert outcome == {"done": ["model2"], "left": [], "records": outcome["records"]}
    folder = f"model2-full-{keras.backend.backend()}"
    record = json.loads((results / f"{folder}.json").read_text())
    assert record["finished"] and record["model"] == "model2"
    rows = json.loads((results / "summary.json").read_text())
    assert [row["run"] for row in rows] == ["model2"] and rows[0]["study_val_top1"] == 0.2272
    table = (results / "summary.md").read_text()
    assert "| model2 | full | 1 | 8 |" in table and "22.72% / 20.17%" in table  # runs that differ in the batch apart
    assert rows[0]["batch_size"] == 8
    # The book reads the results folder: the summary never passes for a record.
    from tinylib import results as book_results

    assert set(book_results.full_scale_records(results)) == {"model2"}

    # A bare machine (no run folders) with the results folder: nothing is trained again.
    capsys.readouterr()
    again = reproduce.run_plan(plan, ds, _profile(epochs=1), results=results, runs_folder=tmp_path / "bare")
    assert again["done"] == ["model2"] and "skipped" in capsys.readouterr().out
    assert not (tmp_path / "bare").exists()


def test_a_finished_record_of_another_epoch_count_is_trained_again(tmp_path):
    # A profile that raised Model 2's cap (30 -> 100 epochs) must not take the old record for done.
    results = tmp_path / "results"
    results.mkdir()
    (results / "model2-full-tensorflow.json").write_text(json.dumps({"finished": True, "epochs": 30}))
    assert reproduce._finished_in(results, "model2-full-tensorflow", 30)
    assert not reproduce._finished_in(results, "model2-full-tensorflow", 100)
    from tinylib.profiles import get_profile

    full = get_profile("full")
    assert reproduce.expected_runs(reproduce.select("model2")[0], full, "tensorflow") == {
        "model2-full-tensorflow": 100}
    assert reproduce.expected_runs(reproduce.select("resnet18-modern")[0], full, "jax") == {
        "resnet18-full-jax-modern": full.epochs_for("resnet18")}


def test_every_planned_run_is_skipped_once_its_finished_records_are_published(tmp_path):
    """A fresh machine with no run folders picks up with the first run not yet published:
    the comparisons of several runs and the fine-tuning too, not hours of them again."""
    from tinylib.profiles import get_profile

    full = get_profile("full")
    runs = {planned.name: reproduce.expected_runs(planned, full, "tensorflow") for planned in reproduce.PLAN}
    assert runs["precision"] == {"model2-full-tensorflow-mixed_bfloat16-8ep": 8}  # the committed record's name
    assert set(runs["optimizers"]) == {f"model2-full-tensorflow-{o}" for o in ("adam", "rmsprop", "sgd", "nadam")}
    assert runs["model5-finetune"] == {"model5-full-tensorflow-finetune-128px-head": full.epochs_for("transfer_head"),
                                       "model5-full-tensorflow-finetune-128px-all": full.epochs_for("transfer_all")}
    results = tmp_path / "results"
    results.mkdir()
    for folders in runs.values():
        for folder, epochs in folders.items():
            (results / f"{folder}.json").write_text(json.dumps({"model": folder.split("-")[0], "profile": "full",
                                                                "finished": True, "epochs": epochs,
                                                                "best_val_top1": 0.1}))
    plan = list(reproduce.PLAN)
    outcome = reproduce.run_plan(plan, lambda: pytest.fail("nothing should load the data"), full, results=results)
    assert outcome["done"] == [planned.name for planned in plan] and not outcome["left"]
    # One stage missing: the fine-tuning is not skipped (its data is asked for).
    (results / "model5-full-tensorflow-finetune-128px-all.json").unlink()
    with pytest.raises(LookupError):
        reproduce.run_plan(reproduce.select("model5-finetune"), lambda: (_ for _ in ()).throw(LookupError("data")),
                           full, results=results)


def test_optimizer_comparison_runs_never_stand_in_for_the_study_row(tmp_path, ds):
    from tinylib import results as book_results
    from tinylib import train

    runs = train.compare_optimizers("model2", ds, _profile(epochs=1), optimizers=("sgd",), runs=tmp_path,
                                    verbose=0)
    reproduce.copy_record(runs["sgd"].path, tmp_path / "results")
    assert set(book_results.full_scale_records(tmp_path / "results")) == {"model2-optimizer-sgd"}


def test_the_command_exits_3_when_the_budget_leaves_work(forks, tmp_path, tiny_env, synthetic):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "TINYLIB_DATA": str(synthetic),
           "TINYLIB_HOME": str(tiny_env)}
    result = forks.run(["-m", "tinylib", "reproduce", "--only", "model2,model4", "--profile", "smoke",
                        "--budget", "0", "--runs", tmp_path / "runs"], env=env, cwd=REPO)
    assert result.returncode == reproduce.WORK_REMAINS, result.stderr[-3000:]
    assert "left: model2, model4" in result.stdout and "run the same command again" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", [1])  # one moment per CI run: the plan takes 14 s or more each time
def test_a_kill_at_a_random_moment_loses_no_finished_epoch_and_the_rerun_finishes(forks, tmp_path, tiny_env,
                                                                                    synthetic, kill_seed):
    """A job limit's SIGKILL anywhere (preparing, building, mid-epoch, writing a record): the same
    command again finishes every run with each epoch trained exactly once."""
    import random

    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "TINYLIB_DATA": str(synthetic),
           "TINYLIB_HOME": str(tiny_env)}
    # The command's own path (reproduce.run_plan), on the synthetic data set with a profile of its size.
    script = tmp_path / "plan.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from tinylib import data, reproduce\n"
        "from tinylib.profiles import Profile\n"
        "profile = Profile('smoke', classes=None, train_per_class=None, val_per_class=None, epochs=3, batch_size=8)\n"
        f"outcome = reproduce.run_plan(reproduce.select('model2,model4'), data.load, profile, "
        f"results=Path({str(tmp_path / 'results')!r}), runs_folder=Path({str(tmp_path / 'runs')!r}))\n"
        "sys.exit(reproduce.WORK_REMAINS if outcome['left'] else 0)\n")
    # In forks of a process that imported everything (tests/forks.py): the moment falls in the
    # plan's own work, not in importing TensorFlow.
    moment = random.Random(kill_seed).uniform(1.0, 10.0)  # seconds; the plan took 13.6 s on a quiet 2-core Zen 2
    killed = forks.run([script], env=env, cwd=REPO, kill_after=moment)
    killed_output = killed.stdout + killed.stderr
    assert killed.returncode == -9, f"the plan ended before the kill at {moment:.1f} s: {killed_output[-2000:]}"
    rerun = forks.run([script], env=env, cwd=REPO)
    assert rerun.returncode == 0, (f"killed at {moment:.1f} s:\n{killed_output[-2000:]}", rerun.stdout[-2000:],
                                   rerun.stderr[-3000:])
    for name in ("model2", "model4"):
        record = json.loads((tmp_path / "runs" / f"{name}-smoke-{keras.backend.backend()}" / "record.json").read_text())
        assert record["finished"], (name, moment)
        epochs = record["epochs_run"]
        assert all(len(values) == epochs for values in record["history"].values()), (name, moment)
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert {row["run"] for row in summary} >= {"model2", "model4"}


@pytest.mark.slow
def test_the_beyond_the_study_runs_of_the_plan_train_and_summarize(tmp_path, ds):
    results = tmp_path / "results"
    # Fine-tuning, the plan's other branch, runs on JAX below (and tests/test_transfer.py
    # trains its stages on TensorFlow).
    plan = reproduce.select("resnet18-modern,resnet9-fast,optimizers,precision")
    outcome = reproduce.run_plan(plan, ds, _profile(epochs=1), results=results, runs_folder=tmp_path / "runs")
    assert outcome["done"] == ["resnet18-modern", "resnet9-fast", "optimizers", "precision"] and not outcome["left"]
    runs = {row["run"]: row for row in json.loads((results / "summary.json").read_text())}
    assert set(runs) == {"resnet18-modern", "resnet9-fast",
                         *(f"model2-optimizer-{o}" for o in ("adam", "rmsprop", "sgd", "nadam")),
                         "model2-precision-mixed_bfloat16"}
    assert all(row["profile"] == "full" and row["finished"] for row in runs.values())
    # The afternoon's run is the one chapter 13 reads: on its time budget, under the recipe's name.
    from tinylib import budget, results as book_results

    afternoon = book_results.full_scale_records(results)[budget.AFTERNOON_RUN]
    assert afternoon["time_budget"]["hours"] == budget.AFTERNOON_HOURS
    assert afternoon["recipe"]["name"] == budget.AFTERNOON_RECIPE and afternoon["model"] == budget.AFTERNOON_MODEL
    assert reproduce.expected_runs(reproduce.select("resnet9-fast")[0], _profile(), "tensorflow") == {
        "resnet9-full-tensorflow-fast": None}


BLOCKER = '''import os
with open(os.environ["TF_IMPORT_MARKER"], "a") as marker:
    import traceback
    marker.write("".join(traceback.format_stack()) + "\\n---\\n")
raise ImportError("TensorFlow is blocked: this test proves the path runs without it")
'''


JAX_PLAN = "model2,resnet18-modern,model5-finetune"


def test_the_jax_plan_takes_every_branch_of_the_plan():
    """The subset run on JAX below covers each branch of reproduce._train, and every
    planned run it leaves out takes the path of one it keeps."""
    import inspect

    from tinylib import transfer

    source = inspect.getsource(reproduce._train)
    kept = JAX_PLAN.split(",")
    for branch in ("resnet18-modern", "model5-finetune"):
        assert f'"{branch}"' in source and branch in kept
    # The time budget's branch is a recipe's train_model (ResNet-18's path) with hours:
    # the beyond-the-study test above trains it on TensorFlow; tests/test_budget.py passes on JAX too.
    assert "planned.name == AFTERNOON_RUN" in source and "hours=budget.AFTERNOON_HOURS" in source
    assert "model2" in kept  # train_model with the study's callbacks
    # Model 5 is train_model (Model 2's path) with the ImageNet weights that
    # resolve_pretrained finds; fine-tuning finds them the same way and builds Model 5
    # with them through the same builder, train.build, so the JAX run of fine-tuning
    # covers Model 5's build, weights and training without ResNet50 compiled twice more.
    assert source.count("models.resolve_pretrained(\"imagenet\")") == 2
    assert 'build("model5", data, profile' in inspect.getsource(transfer._fine_tune)
    # Left out: the study models that take Model 2's path, and the optimizer comparison
    # (Model 2 four times; its branch is trained on TensorFlow by the beyond-the-study test).
    assert set(reproduce.PLAN_NAMES) - set(kept) == {"model1", "model3", "model4", "model5", "resnet9-fast",
                                                     "optimizers", "precision"}


@pytest.mark.realdata
@pytest.mark.slow
def test_every_planned_run_trains_on_jax_where_tensorflow_is_absent(real_data_path, tmp_path):
    pytest.importorskip("jax")
    blocked = tmp_path / "blocked" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(BLOCKER)
    marker = tmp_path / "tensorflow-imports.txt"
    # With the precision a GPU gets: this is the path a GPU machine without TensorFlow runs.
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_IMPORT_MARKER": str(marker), "MPLBACKEND": "Agg",
           "TINYLIB_PRECISION": "mixed_bfloat16",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), str(REPO)])}
    # One run of each path through the plan: Model 2 (train_model with the study's callbacks;
    # Models 1, 3 and 4 take the same path without them), ResNet-18 (a recipe) and
    # fine-tuning (transfer.fine_tune: Model 5 with the pretrained weights, through the
    # builder Model 5's own run uses). The optimizer comparison is Model 2's run four
    # times (train.compare_optimizers), run on TensorFlow by the test above.
    result = subprocess.run([sys.executable, "-m", "tinylib", "reproduce", "--profile", "smoke",
                             "--only", JAX_PLAN,
                             "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                            env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path,
                            preexec_fn=tied_to_this_process)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    rows = json.loads((tmp_path / "results" / "summary.json").read_text())
    names = {row["run"] for row in rows}
    assert {"model2", "resnet18-modern"} <= names
    assert {"model5-finetune-96px-head", "model5-finetune-96px-all"} <= names
    trained = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*-smoke-*.json")]
    assert trained and all(r["backend"] == "jax" and r["dtype_policy"] == "mixed_bfloat16" for r in trained)
    # No import of TensorFlow was tried on the way, guarded or not, except Keras' own probe
    # (its LazyModule asks whether TensorFlow is available when it serializes a config).
    attempts = marker.read_text().split("\n---\n") if marker.exists() else []
    ours = [trace for trace in attempts if trace.strip() and "keras/src/utils/module_utils.py" not in trace]
    assert not ours, ours[0][-3000:]


def test_compare_optimizers_draws_the_weights_from_the_callers_seed(tmp_path, ds):
    """As train_model: a seed given to compare_optimizers draws the initial weights too (it used
    the profile's for the weights and the caller's for training)."""
    from tinylib import train

    profile = _profile(epochs=1)
    compared = train.compare_optimizers("model1", ds, profile, optimizers=("adam",), seed=7, runs=tmp_path / "a")
    alone = train.train_model("model1", ds, profile, seed=7, runs=tmp_path / "b")
    assert compared["adam"].history["loss"] == alone.history["loss"]
    assert compared["adam"].path.name == f"model1-full-{keras.backend.backend()}-adam-seed7"  # not the profile's


def test_a_comparison_refuses_one_name_for_all_its_optimizers():
    from tinylib import train

    with pytest.raises(ValueError, match="suffix=... instead of name="):
        train.compare_optimizers("model1", None, _profile(epochs=1), name="mine")


def test_a_comparison_on_another_batch_trains_in_folders_of_its_own(tmp_path, ds):
    """As fit's own runs: the profile's comparison neither resumes nor refuses one on batch 4."""
    from tinylib import train

    profile = _profile(epochs=1)
    ours = train.compare_optimizers("model1", ds, profile, optimizers=("adam",), runs=tmp_path)["adam"]
    other = train.compare_optimizers("model1", ds, profile, optimizers=("adam",), batch_size=4, runs=tmp_path)["adam"]
    assert ours.path.name == f"model1-full-{keras.backend.backend()}-adam"
    assert other.path.name == f"{ours.path.name}-batch4" and other.record["batch_size"] == 4
    assert other.record["finished"] and other.record.get("resumed_at_epoch") is None


def test_a_published_record_gives_way_only_to_its_own_run_further_along():
    base = {"model": "model2", "optimizer": "Adam", "batch_size": 32, "epochs": 100}
    published = {**base, "epochs_run": 17, "finished": False}
    assert reproduce.why_keep(None, published) is None
    assert reproduce.why_keep(published, {**base, "epochs_run": 20, "finished": False}) is None  # the next sitting
    assert reproduce.why_keep(published, {**base, "epochs_run": 25, "finished": True, "stopped_early": True}) is None
    assert "further along" in reproduce.why_keep(published, {**base, "epochs_run": 3, "finished": False})
    assert "another run (optimizer: 'Adam' -> 'SGD')" in reproduce.why_keep(
        published, {**base, "optimizer": "SGD", "epochs_run": 30, "finished": True})
    assert "not the continuation" in reproduce.why_keep(  # --fresh --epochs 20 over an unfinished run of 100
        published, {**base, "epochs": 20, "epochs_run": 20, "finished": True})
    # The same run asked for more epochs after the 17 published (a raised cap): its continuation.
    raised = {**base, "epochs": 150, "epochs_changed": [{"from": 100, "to": 150, "at_epoch": 19}]}
    assert reproduce.why_keep(published, {**raised, "epochs_run": 21, "finished": False}) is None
    assert "not the continuation" in reproduce.why_keep(  # a change from another length is another run
        published, {**raised, "epochs_changed": [{"from": 30, "to": 150, "at_epoch": 19}], "epochs_run": 21})
    finished = {**base, "epochs_run": 37, "finished": True, "stopped_early": True}
    assert "finished" in reproduce.why_keep(finished, {**base, "epochs_run": 40, "finished": False})
    assert reproduce.why_keep(finished, {**base, "epochs": 150, "epochs_run": 60, "finished": True}) is None
    assert "time budget" in reproduce.why_keep({**finished, "time_budget": {"hours": 3.0}},
                                               {**finished, "time_budget": {"hours": 1.0}})


def test_a_comparison_stops_at_the_run_the_deadline_stopped(monkeypatch):
    """The next optimizer, recipe or precision would start its first epoch past the deadline."""
    from tinylib import train

    trained = []

    def fake_fit(model, data, profile, **kwargs):
        trained.append(kwargs.get("suffix"))
        return types.SimpleNamespace(out_of_time=len(trained) == 2, record={})

    monkeypatch.setattr(train, "build", lambda *args, **kwargs: None)
    monkeypatch.setattr(train, "fit", fake_fit)
    runs = train.compare_optimizers("model2", types.SimpleNamespace(num_classes=5), "smoke")
    assert list(runs) == ["adam", "rmsprop"] and trained == ["-adam", "-rmsprop"]


@pytest.mark.slow
def test_a_sitting_stopped_inside_its_first_epoch_says_where_and_exits_cleanly(tmp_path, tiny_env, synthetic):
    """The deadline comes inside the first epoch: the command says where the run stands (not
    'nothing trained'), and the epoch's batch generator is freed before Python exits, where
    TensorFlow's finalizer of it printed 'Python interpreter state is not initialized'. A
    fresh interpreter, not a fork of the tests' server: a fork leaves without finalizing."""

    env = {**os.environ, "PYTHONPATH": str(REPO), "TINYLIB_DATA": str(synthetic), "TINYLIB_HOME": str(tiny_env)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # TensorFlow's warnings shown, as a student's terminal shows them
    command = ("import sys; from tinylib import checkpointing, cli, profiles\n"
               "profiles.PROFILES = {**profiles.PROFILES, 'smoke': profiles.Profile('smoke', classes=None, "
               "train_per_class=None, val_per_class=None, epochs=2, batch_size=2)}\n"  # 12 steps an epoch
               # The deadline comes at the sixth batch, however long the setup took.
               "batch_end = checkpointing.Checkpointer.on_train_batch_end\n"
               "def at_the_sixth(self, batch, logs=None):\n"
               "    self.deadline = 0.0 if batch >= 5 else float('inf')\n"
               "    return batch_end(self, batch, logs)\n"
               "checkpointing.Checkpointer.on_train_batch_end = at_the_sixth\n"
               f"sys.exit(cli.main(['train', 'model1', '--profile', 'smoke', '--budget', '60', "
               f"'--runs', {str(tmp_path / 'runs')!r}]))")
    result = subprocess.run([sys.executable, "-c", command], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600, preexec_fn=tied_to_this_process)
    assert result.returncode == reproduce.WORK_REMAINS, result.stderr[-3000:]
    assert "stopped inside epoch 1, at batch 6 (a checkpoint)" in result.stdout, result.stdout
    assert "no epoch finished yet: the run stands inside epoch 1, at batch 6 (a checkpoint)" in result.stdout
    assert "interpreter state is not initialized" not in result.stderr, result.stderr[-3000:]


def test_a_sitting_starts_no_further_run_in_its_last_minutes(monkeypatch, capsys):
    """After a run it trained, a sitting does not start the next one with less than a first
    epoch's minimum left (it would build, load and checkpoint for a few batches); the
    sitting's first run is started on the budget given."""
    from tinylib import train
    from tinylib.profiles import get_profile

    clock = [1000.0]
    monkeypatch.setattr(reproduce.time, "monotonic", lambda: clock[0])
    trained = []

    def fake_train(planned, data, profile, deadline, runs_folder):
        trained.append(planned.name)
        clock[0] = deadline - train.MIN_SITTING_SECONDS + 1  # it ends with just under the minimum left
        return [types.SimpleNamespace(record={"finished": True}, path=None)]

    monkeypatch.setattr(reproduce, "_train", fake_train)
    full = get_profile("full")
    outcome = reproduce.run_plan(reproduce.select("model2,model4"), object(), full, budget_minutes=60)
    assert trained == ["model2"] and outcome["done"] == ["model2"] and outcome["left"] == ["model4"]
    assert "=== model4: under 2 minutes of the budget left: it starts in the next sitting" in capsys.readouterr().out
    # With the minimum left, it starts; a sitting's first run starts on whatever budget it is given.
    trained.clear()
    monkeypatch.setattr(reproduce, "_train", lambda planned, *rest: trained.append(planned.name) or [
        types.SimpleNamespace(record={"finished": True}, path=None)])
    assert reproduce.run_plan(reproduce.select("model2,model4"), object(), full, budget_minutes=60)["left"] == []
    assert reproduce.run_plan(reproduce.select("model4"), object(), full, budget_minutes=0.01)["left"] == []
    assert trained == ["model2", "model4", "model4"]


@pytest.mark.parametrize("callbacks", [[], ["early_stopping"]])
def test_a_run_asked_to_end_at_the_epochs_it_finished_ends_with_their_weights(tmp_path, ds, monkeypatch, capsys,
                                                                               callbacks):
    """Stopped inside epoch 2, then asked for 1 epoch: the run ends with epoch 1's weights
    (or, under early stopping, its best epoch's, as Keras' end of training puts them back),
    not with the batches trained since, and no resume point is left behind."""
    from tinylib import checkpointing, train
    from tinylib.runs import epoch_checkpoint_name, load_checkpoint

    profile = _profile(epochs=2)  # 24 images in batches of 8: 3 steps an epoch
    batch_end = checkpointing.Checkpointer.on_train_batch_end

    def inside_the_second_epoch(self, batch, logs=None):
        self.deadline = 0.0 if self.epoch == 1 and batch >= 1 else float("inf")
        return batch_end(self, batch, logs)

    monkeypatch.setattr(checkpointing.Checkpointer, "on_train_batch_end", inside_the_second_epoch)
    keras.utils.set_random_seed(0)
    run = train.fit(train.build("model2", ds, profile), ds, profile, runs=tmp_path, verbose=0, callbacks=callbacks,
                    checkpoint_every=None, deadline=time.monotonic() + 3600)
    assert run.out_of_time and run.epochs_done == 1 and run.partial["epoch"] == 1
    monkeypatch.undo()
    expected = train.build("model2", ds, profile)
    load_checkpoint(expected, run.path / epoch_checkpoint_name(1))
    capsys.readouterr()
    ended = train.fit(train.build("model2", ds, profile), ds, profile, runs=tmp_path, verbose=0, callbacks=callbacks,
                      epochs=1)
    assert ended.record["finished"] and ended.record["epochs_run"] == 1
    assert "ending after epoch 1 as asked" in capsys.readouterr().out
    for got, want in zip(ended.model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)
    state = json.loads((run.path / "state.json").read_text())
    assert state["checkpoint"] == "final.weights.h5" and state["partial"] is None
    assert not list(run.path.glob("partial-*"))


def test_a_row_finished_on_another_backend_is_not_trained_again(tmp_path):
    """A GPU session on JAX goes on with the rows not yet done: the finished TensorFlow
    records stand for their rows (and the other way round)."""
    from tinylib.profiles import get_profile

    full = get_profile("full")
    results = tmp_path / "results"
    results.mkdir()
    (results / "model1-full-jax.json").write_text(json.dumps(
        {"model": "model1", "profile": "full", "finished": True, "epochs": full.epochs_for("model1"),
         "best_val_top1": 0.2}))
    model1 = reproduce.select("model1")[0]
    assert reproduce.published_folders(results, model1, full, "tensorflow") == {
        "model1-full-jax": full.epochs_for("model1")}
    assert reproduce.published_folders(results, reproduce.select("model2")[0], full, "tensorflow") is None
    # A Model 5 record from random weights under the study's folder name is not the study's row.
    (results / "model5-full-tensorflow.json").write_text(json.dumps(
        {"model": "model5", "profile": "full", "finished": True, "epochs": full.epochs_for("model5"),
         "best_val_top1": 0.2, "weights": "random"}))
    assert reproduce.published_folders(results, reproduce.select("model5")[0], full, "tensorflow") is None
    outcome = reproduce.run_plan([model1], lambda: pytest.fail("nothing should load the data"), full, results=results)
    assert outcome["done"] == ["model1"] and outcome["records"][0]["best_val_top1"] == 0.2


def test_model5_without_the_imagenet_weights_trains_in_a_folder_of_its_own(monkeypatch, tmp_path):
    """Where the weights cannot be had, the planned Model 5 trains from random weights in a
    '-random' folder: its record never takes the study's row, nor the folder a later
    sitting with the weights trains in; a results folder not made yet is made."""
    from tinylib import models, train

    asked = []
    monkeypatch.setattr(models, "resolve_pretrained", lambda weights: None)
    monkeypatch.setattr(train, "build", lambda name, data, profile, **options: options)
    monkeypatch.setattr(train, "begun_precision", lambda *args, **kwargs: None)
    monkeypatch.setattr(train, "fit", lambda model, data, profile, **kwargs: asked.append((model, kwargs)) or [])
    reproduce._train(reproduce.select("model5")[0], None, _profile(), None, tmp_path)
    assert asked[0][1].get("suffix") == "-random" and asked[0][0]["weights"] is None
    monkeypatch.setattr(models, "resolve_pretrained", lambda weights: weights)
    reproduce._train(reproduce.select("model5")[0], None, _profile(), None, tmp_path)
    assert not asked[1][1].get("suffix") and asked[1][0]["weights"] == "imagenet"
    reproduce.write_summary(tmp_path / "not" / "yet")
    assert (tmp_path / "not" / "yet" / "summary.md").is_file()
