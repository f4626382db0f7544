"""`python -m tinylib`: the command line over the book's calls."""

from __future__ import annotations

import json

import keras
import pytest

from tinylib import cli


def test_models_lists_the_seed_models_and_the_resnets(capsys):
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
