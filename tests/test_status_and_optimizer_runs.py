"""Chapter 1's report of where a session stands, and chapter 5's table of the optimizer runs."""

from __future__ import annotations

import types

import numpy as np
import pytest

from tinylib import data, optimizer_runs, status
from tinylib.profiles import Profile


def test_the_report_names_the_profile_what_chose_it_the_data_the_cache_and_the_runs(tiny_env, synthetic,
                                                                                    monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLIB_PROFILE", "smoke")
    monkeypatch.setenv("TINYLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TINYLIB_DATA", str(tmp_path / "nowhere"))
    lines = status.report().splitlines()
    assert lines[0].startswith("profile 'smoke'") and lines[1] == "  chosen by TINYLIB_PROFILE"
    assert lines[3].startswith("device: ") and "does not exist" in lines[4]  # a bad TINYLIB_DATA, said
    assert lines[5] == f"cache: {data.cache_dir()} (empty: data.load() will fill it)"
    assert lines[6] == f"training runs: {tmp_path / 'runs'}"
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.prepare()
    text = status.report(Profile("mine", classes=2, train_per_class=3, val_per_class=1, epochs=1, batch_size=2))
    assert "profile 'mine'" in text and "chosen by the caller" in text and f"data: folder {synthetic}" in text
    counts = data.read_manifest()["counts"]
    assert f"({counts['train']:,} train, {counts['val']:,} val" in text
    monkeypatch.delenv("TINYLIB_DATA")
    monkeypatch.setenv("TINYLIB_HOME", str(tmp_path / "empty-home"))
    assert "data: not found yet; the first data.load() will download it" in status.report()


@pytest.fixture
def small(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    return data.load(), Profile("tiny", classes=None, train_per_class=None, val_per_class=None, epochs=1,
                                batch_size=4, seed=3)


def _run(model, history=None, **record):
    return types.SimpleNamespace(model=model, history=history or {}, record={
        "model": "model2", "optimizer": "SGD", "learning_rate": 1e-2, "seed": 3, **record})


def test_weight_travel_is_the_distance_from_the_weights_the_run_started_from(small):
    """Rebuilt from the run's seed, model and optimizer, as compare_optimizers built them: 0 for
    the starting weights themselves, and the relative distance for weights moved by hand."""
    import keras

    from tinylib import train

    ds, profile = small
    keras.utils.set_random_seed(3)
    start = train.build("model2", ds, profile, optimizer="sgd", learning_rate=1e-2)
    assert optimizer_runs.weight_travel(_run(start), ds, profile) == 0.0
    initial = [keras.ops.convert_to_numpy(w) for w in start.trainable_weights]
    for weight, value in zip(start.trainable_weights, initial):
        weight.assign(value * 1.5)  # every weight moved by half its value
    assert optimizer_runs.weight_travel(_run(start), ds, profile) == pytest.approx(0.5, rel=1e-5)
    assert optimizer_runs.weight_travel(_run(start, seed=4), ds, profile) != pytest.approx(0.5, rel=1e-3)  # another start


def test_the_comparison_table_has_a_row_per_optimizer_and_the_reference_line_its_yardsticks(small, monkeypatch):
    ds, profile = small
    monkeypatch.setattr(optimizer_runs, "weight_travel", lambda run, data, profile: run.record["moved"])
    history = {"loss": [5.1, 4.0], "val_loss": [5.2, 4.5]}
    runs = {name: _run(None, history, optimizer=name.capitalize(), epochs_run=2, best_val_top1=0.25,
                       moved=moved, learning_rate=1e-4)
            for name, moved in (("adam", 0.3), ("sgd", 1e-4))}
    table = optimizer_runs.comparison_table(runs, ds, profile).data
    assert list(table.index) == ["Adam", "Sgd"]
    assert table.loc["Sgd"].to_dict() == {"epochs": 2, "train loss, epoch 1": 5.1, "val loss, epoch 1": 5.2,
                                          "val loss, last": 4.5, "best val accuracy": 0.25, "weights moved": 1e-4}
    line = optimizer_runs.reference_line(runs, 4)
    assert line == ("learning rate: 0.0001\nfor reference: chance accuracy 1/4 = 0.250, "
                    f"an unsure model's loss ln 4 = {np.log(4):.3f}")
