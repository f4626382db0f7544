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
