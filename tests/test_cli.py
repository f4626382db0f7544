"""`python -m tinylib`: the command line over the book's calls."""

from __future__ import annotations

import json

import keras
import pytest

from tinylib import cli


def test_models_lists_the_study_models_and_the_resnets(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("model1", "model5", "resnet18", "resnet50"):
        assert name in out


@pytest.mark.realdata
@pytest.mark.slow
def test_train_with_the_modern_recipe_writes_its_run(real_data_path, tmp_path, capsys):
    code = cli.main(["train", "resnet18", "--recipe", "modern", "--profile", "smoke", "--epochs", "1",
                     "--runs", str(tmp_path)])
    assert code == 0
    folder = tmp_path / f"resnet18-smoke-{keras.backend.backend()}-modern"
    record = json.loads((folder / "record.json").read_text())
    assert record["recipe"]["name"] == "modern" and record["epochs_run"] == 1 and record["finished"]
    assert record["augmentation"]["layer"] == "RandomResizedCrop"
    assert "best val top-1" in capsys.readouterr().out


def test_an_unknown_model_is_refused_before_any_data_is_touched(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYLIB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINYLIB_DATA", raising=False)
    assert cli.main(["train", "nosuch", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'nosuch'" in err and "model1" in err
    assert not (tmp_path / "home").exists()  # no download tried, no cache made


@pytest.mark.slow
@pytest.mark.realdata
def test_two_fresh_runs_of_the_same_train_command_give_the_same_training(real_data_path, tmp_path, capsys):
    """The command line seeds the initial weights as the book's calls do (it did not)."""
    command = ["train", "model1", "--profile", "smoke", "--epochs", "1", "--runs", str(tmp_path), "--fresh"]
    losses = []
    for _ in range(2):
        assert cli.main(command) == 0
        record = json.loads((tmp_path / f"model1-smoke-{keras.backend.backend()}" / "record.json").read_text())
        losses.append(record["history"]["loss"])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "-3", "must be at least 1, got -3"), ("--epochs", "0", "must be at least 1, got 0"),
    ("--batch-size", "-4", "must be at least 1, got -4"), ("--epochs", "two", "'two' is not a whole number"),
])
def test_train_refuses_epochs_and_batch_sizes_below_one(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "model1", "--profile", "smoke", "--runs", str(tmp_path), option, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_reproduce_refuses_a_negative_budget(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--budget", "-5"])
    assert "must be 0 or more, got -5" in capsys.readouterr().err


def test_train_stops_within_its_budget_and_publishes_the_record_as_it_stands(tmp_path, tiny_env, synthetic,
                                                                              monkeypatch, capsys):
    """A long run in stretches: each sitting stops at an epoch's end (exit status 3), its
    record goes to the results folder unfinished, and the same command later finishes it."""
    from tinylib import profiles, reproduce, train

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    sized = profiles.Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=3, batch_size=8)
    monkeypatch.setattr(profiles, "PROFILES", {**profiles.PROFILES, "smoke": sized})  # the synthetic set's size
    command = ["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "results")]
    name = f"model1-smoke-{keras.backend.backend()}"
    assert cli.main([*command, "--budget", "0"]) == reproduce.WORK_REMAINS  # nothing trained, nothing published
    assert not (tmp_path / "results").exists() and "nothing trained" in capsys.readouterr().out
    # A budget that holds one epoch (how long one lasts is tests/test_reproduce.py's matter):
    monkeypatch.setattr(train, "_would_overrun", lambda run, deadline: deadline is not None and run.epochs_done >= 1)
    assert cli.main([*command, "--budget", "60"]) == reproduce.WORK_REMAINS
    record = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert record["epochs_run"] == 1 and not record["finished"]
    out = capsys.readouterr().out
    assert "unfinished: run the same command again" in out
    assert "| model1 | smoke | 1 (unfinished) |" in (tmp_path / "results" / "summary.md").read_text()

    assert cli.main(command) == 0
    record = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert record["epochs_run"] == 3 and record["finished"] and record["resumed_at_epoch"] == 1
    assert "| model1 | smoke | 3 |" in (tmp_path / "results" / "summary.md").read_text()

    # On a machine without the run folder, the published run is not started again from epoch 1...
    import shutil

    shutil.rmtree(tmp_path / "runs" / name)
    capsys.readouterr()
    assert cli.main(command) == 2 and "would start again from epoch 1" in capsys.readouterr().err
    # ...unless asked, and a shorter run then leaves the published record alone.
    assert cli.main([*command, "--fresh", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "kept " in out and "it holds the run further along (3 epochs trained, this record 2)" in out
    assert json.loads((tmp_path / "results" / f"{name}.json").read_text())["epochs_run"] == 3


def test_a_sitting_killed_at_the_end_of_a_session_still_publishes_the_epochs_it_finished(
        tmp_path, tiny_env, synthetic, monkeypatch, capsys):
    """A SIGTERM (a job limit, a session's end) between epochs: the record of the epoch done
    reaches the results folder now, not at a next sitting that may never come."""
    import os
    import signal

    from tinylib import profiles, train

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    sized = profiles.Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=3, batch_size=8)
    monkeypatch.setattr(profiles, "PROFILES", {**profiles.PROFILES, "smoke": sized})

    def killed_after_one_epoch(run, deadline):
        if run.epochs_done >= 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return False

    monkeypatch.setattr(train, "_would_overrun", killed_after_one_epoch)
    results = tmp_path / "results"
    command = ["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(results)]
    assert cli.main(command) == 128 + signal.SIGTERM  # the process's status, as Python's default gives
    name = f"model1-smoke-{keras.backend.backend()}"
    record = json.loads((results / f"{name}.json").read_text())
    assert record["epochs_run"] == 1 and not record["finished"]
    said = capsys.readouterr()
    assert "unfinished: run the same command again" in said.out
    assert "interrupted: run the same command again to resume" in said.err
    assert "| model1 | smoke | 1 (unfinished) |" in (results / "summary.md").read_text()


def test_a_sitting_cut_short_before_it_trained_publishes_nothing(tmp_path, tiny_env, monkeypatch, capsys):
    """Ctrl-C or SIGTERM while the data loads: the record in the folder is not this sitting's
    (here another run, about to be started over with --fresh), so the results stay as they are."""
    import os
    import signal

    from tinylib import data

    name = f"model1-smoke-{keras.backend.backend()}"
    folder = tmp_path / "runs" / name
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"model": "model1", "optimizer": "SGD", "epochs_run": 5,
                                                    "epochs": 30, "finished": False, "date": "2026-01-01"}))
    results = tmp_path / "results"
    command = ["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(results),
               "--fresh"]

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load", interrupted)
    assert cli.main(command) == 130
    monkeypatch.setattr(data, "load", lambda: os.kill(os.getpid(), signal.SIGTERM))

    def unhandled(signum, frame):  # what Python's default would do is kill the test run
        raise AssertionError("the SIGTERM reached the test: the command left it to Python's default")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        status = cli.main(command)  # unwound as Ctrl-C is, by the command's own handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 128 + signal.SIGTERM
    assert not results.exists() and "record:" not in capsys.readouterr().out


def _documented_commands():
    """Every ``python -m tinylib ...`` a reader is shown: the README, the chapters, this CLI's docstring."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [(root / "README.md").read_text(encoding="utf-8"), cli.__doc__,
             (root / "book" / "results" / "README.md").read_text(encoding="utf-8")]
    for notebook in sorted((root / "book").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        texts.append("\n".join("".join(cell["source"]) for cell in cells))
    commands = set()
    for text in texts:
        text = re.sub(r"\s*\\\n\s*", " ", text)  # a shell line continued
        for found in re.finditer(r"python -m tinylib([^\n`#);]*)", text):
            commands.add(re.split(r"\s{2,}", found.group(1).strip())[0])  # a comment in two spaces ends it
    return sorted(commands)


def test_every_command_the_readme_and_the_book_show_is_one_the_command_line_takes():
    """A renamed or dropped option fails here, not in a reader's terminal."""
    import shlex

    commands = _documented_commands()
    assert any(c.startswith("train model2 ") and "--budget" in c for c in commands)  # the README's sittings
    parser = cli.build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for command in commands:
        if len(command.split()) < 2:  # the command or a subcommand named in prose
            assert command in ("", "--help", *subcommands), f"`python -m tinylib {command}`: no such command"
            continue
        try:
            parser.parse_args(shlex.split(command))
        except SystemExit as exited:  # --help exits 0; a refusal exits 2
            assert exited.code == 0, f"`python -m tinylib {command}` is not a command tinylib takes"


def test_a_published_run_whose_folder_is_elsewhere_is_not_started_again(tmp_path, tiny_env, capsys):
    """On a machine without the run folder, `--results` would have trained hours from epoch 1."""
    results = tmp_path / "results"
    results.mkdir()
    name = f"model1-smoke-{keras.backend.backend()}"
    (results / f"{name}.json").write_text(json.dumps({"model": "model1", "epochs_run": 12, "epochs": 30,
                                                      "finished": False}))
    command = ["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(results)]
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert "12 epochs trained" in err and "holds no run" in err and "--fresh for the first sitting only" in err
    assert not (tmp_path / "runs" / name).exists() and not tiny_env.exists()  # refused before the data


@pytest.mark.parametrize("options, suffix", [(["--optimizer", "sgd"], "-sgd"),
                                             (["--learning-rate", "0.001"], "-lr0.001"),
                                             (["--optimizer", "RMSprop", "--learning-rate", "1e-3"], "-rmsprop-lr0.001"),
                                             (["--learning-rate", "0.00010000000001"], "")])
def test_another_optimizer_or_rate_trains_in_a_folder_of_its_own(tmp_path, tiny_env, capsys, options, suffix):
    """The study's run and an SGD run of the same model are two rows of the results
    (results.record_key): two folders, so neither resumes, nor is refused by, the other.
    The published record stands in for the folder's name: the refusal names it, before the data."""
    from tinylib import results as results_lib

    results = tmp_path / "results"
    results.mkdir()
    name = f"model1-smoke-{keras.backend.backend()}{suffix}"
    record = {"model": "model1", "epochs_run": 5, "epochs": 30, "finished": False}
    (results / f"{name}.json").write_text(json.dumps(record))
    command = ["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(results)]
    assert cli.main([*command, *options]) == 2
    assert f"{name}.json holds this run" in capsys.readouterr().err and not tiny_env.exists()
    # The row the record stands for carries the same spelling as the folder.
    optimizer = options[options.index("--optimizer") + 1] if "--optimizer" in options else "adam"
    rate = float(options[options.index("--learning-rate") + 1]) if "--learning-rate" in options else 1e-4
    assert results_lib.optimizer_suffix(optimizer, rate) == suffix
    assert results_lib.record_key({**record, "profile": "smoke", "optimizer": optimizer,
                                   "learning_rate": rate}).endswith("model1" + suffix)


@pytest.mark.parametrize("options, message", [
    (["--learning-rate", "0"], "must be a positive number, got 0"),
    (["--learning-rate=-1e-3"], "must be a positive number, got -1e-3"),
    (["--precision", "float16"], "invalid choice: 'float16'"),
])
def test_train_refuses_a_rate_or_precision_that_cannot_train(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "model1", "--profile", "smoke", "--runs", str(tmp_path), *options])
    assert exited.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("model, options, message", [
    ("model1", ["--weights", "imagenet"], "--weights is for model5 only: model1 trains from scratch"),
    ("resnet50", ["--weights", "imagenet"], "the ImageNet-pretrained ResNet50 is model5"),
    ("model5", ["--weights", "/no/such/file.weights.h5"], "no such file"),
    ("model1", ["--optimizer", "adagrad"], "Unknown optimizer 'adagrad'"),
    ("model1", ["--hours", "1"], "add --recipe fast"),
    ("resnet18", ["--recipe", "modern", "--hours", "1"], "add --recipe fast"),
    ("model1", ["--batch-size", "41"], "more than the 40 training images of profile 'smoke'"),
])
def test_train_refuses_options_that_contradict_the_model_recipe_or_data_before_the_data(
        tmp_path, tiny_env, capsys, model, options, message):
    assert cli.main(["train", model, "--profile", "smoke", "--runs", str(tmp_path / "runs"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not tiny_env.exists()  # refused before the data was looked for


def test_a_results_folder_that_cannot_take_a_record_is_refused_before_training(tmp_path, tiny_env, capsys):
    blocked = tmp_path / "results.json"
    blocked.write_text("{}")
    for command in (["train", "model1", "--profile", "smoke"], ["reproduce", "--only", "model1", "--profile", "smoke"]):
        assert cli.main([*command, "--runs", str(tmp_path / "runs"), "--results", str(blocked)]) == 2
        assert "is a file: give a folder" in capsys.readouterr().err
    assert not tiny_env.exists()


def test_the_books_results_folder_takes_full_scale_records_only(tmp_path, tiny_env, capsys):
    """A quick or smoke run published beside the study's figures would pass for a row."""
    from tinylib.results import default_results_dir

    for command in (["train", "model1", "--profile", "smoke"], ["reproduce", "--only", "model1", "--profile", "quick"]):
        assert cli.main([*command, "--runs", str(tmp_path / "runs"), "--results", str(default_results_dir())]) == 2
        err = capsys.readouterr().err
        assert "is the book's own results folder, which holds full-scale records only" in err
        assert "Add --profile full, or give another folder" in err
    assert not tiny_env.exists()


def test_a_results_folder_that_does_not_exist_is_said_so_before_training(tmp_path, tiny_env, capsys, monkeypatch):
    """A typo (results for book/results) would find no published run to skip: the student is told."""
    from tinylib import data

    def no_data():
        raise data.DataError("stop here")

    monkeypatch.setattr(data, "load", no_data)
    made = tmp_path / "results"
    assert cli.main(["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"),
                     "--results", str(made)]) == 2
    out = capsys.readouterr().out
    assert f"--results {made} does not exist: it will be made when a record is published" in out
    assert not made.exists()  # nothing trained, nothing published


def test_evaluate_names_what_it_takes_when_given_a_record_file_or_an_unknown_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYLIB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs" / "model1-smoke-tensorflow").mkdir(parents=True)
    (tmp_path / "runs" / "model1-smoke-tensorflow" / "record.json").write_text("{}")
    published = tmp_path / "model4-full-tensorflow.json"
    published.write_text("{}")
    assert cli.main(["evaluate", str(published)]) == 2
    assert "is a file: evaluate takes a run folder" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "nosuch")]) == 2
    err = capsys.readouterr().err
    assert "no run folder" in err and "model1-smoke-tensorflow" in err  # the runs there, named
    assert cli._run_folder("model1-smoke-tensorflow") == tmp_path / "runs" / "model1-smoke-tensorflow"
    # --results publishes the re-estimate: alone it is refused, before any model is loaded.
    assert cli.main(["evaluate", "model1-smoke-tensorflow", "--results", str(tmp_path / "results")]) == 2
    assert "give both" in capsys.readouterr().err and not (tmp_path / "results").exists()
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "model1-smoke-tensorflow", "--recalibrate-bn", "0"])


def test_reproduce_only_takes_names_in_any_case_and_refuses_an_empty_list():
    from tinylib import reproduce

    assert [p.name for p in reproduce.select("Model4, MODEL2")] == ["model2", "model4"]
    with pytest.raises(ValueError, match="names no run"):
        reproduce.select(" , ")


def test_fresh_names_the_run_it_is_about_to_delete(tmp_path, tiny_env, capsys, monkeypatch):
    from tinylib import data

    def no_data():
        raise data.DataError("stop here")

    monkeypatch.setattr(data, "load", no_data)
    folder = tmp_path / "runs" / f"model1-smoke-{keras.backend.backend()}"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"epochs_run": 2, "finished": True, "best_val_top1": 0.25}))
    assert cli.main(["train", "model1", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--fresh"]) == 2
    out = capsys.readouterr().out
    assert f"--fresh: {folder} holds a finished run of 2 epochs (best val top-1 25.00%): it is deleted" in out


def test_a_notebook_call_with_zero_epochs_or_a_negative_batch_is_refused():
    from tinylib import train

    for counts in ({"epochs": 0}, {"batch_size": -8}, {"epochs": 2.5}):
        with pytest.raises(ValueError, match="must be a whole number of at least 1"):
            train.fit(None, None, "smoke", **counts)


def test_a_device_out_of_memory_says_to_halve_the_batch():
    class ResourceExhaustedError(Exception):  # TensorFlow's, by name: the check must not import TensorFlow
        pass

    class XlaRuntimeError(Exception):
        pass

    for err in (ResourceExhaustedError("OOM when allocating tensor"),
                XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1073741824 bytes")):
        assert "--batch-size, half the one used" in cli.explain_error(err)
    assert cli.explain_error(XlaRuntimeError("INTERNAL: something else")) is None  # a bug: the traceback


def test_evaluate_says_what_to_pass_for_a_run_or_a_whole_dataset():
    from types import SimpleNamespace

    from tinylib import evaluate

    run = SimpleNamespace(model=object(), record={})
    with pytest.raises(TypeError, match=r"pass run\.model"):
        evaluate.evaluate(run, None, [])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    dataset = SimpleNamespace(val=None, train=None)
    with pytest.raises(TypeError, match=r"pass one split, such as ds\.val"):
        evaluate.evaluate(model, dataset, [])


def test_model5_from_random_weights_trains_in_a_folder_of_its_own(tmp_path, tiny_env, capsys):
    """--weights none: never the folder of the study's run from ImageNet's weights (whose
    record here stands in for it), so neither resumes, nor is refused by, the other."""
    results = tmp_path / "results"
    results.mkdir()
    name = f"model5-smoke-{keras.backend.backend()}-random"
    (results / f"{name}.json").write_text(json.dumps({"model": "model5", "epochs_run": 2, "epochs": 30}))
    command = ["train", "model5", "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(results)]
    assert cli.main([*command, "--weights", "none"]) == 2
    assert f"{name}.json holds this run" in capsys.readouterr().err and not tiny_env.exists()
