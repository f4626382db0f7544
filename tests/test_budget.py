"""tinylib.budget: a run on a time budget plans its length, re-plans it from each epoch's
measured time, ends with the learning rate at zero when no epoch fits, and resumes on
the schedule it had reached (the same weights as a run never interrupted)."""

from __future__ import annotations

import json
import time

import keras
import numpy as np
import pytest

from tinylib import budget, data, runs, train
from tinylib.profiles import Profile
from tinylib.recipes import RECIPES, Recipe, _WarmupLinearDecay


def rates(schedule, steps):
    return np.array([schedule.rate_at(step) for step in steps])


def test_the_first_plan_divides_the_work_by_the_expected_rate_within_the_cap():
    # 1 GFLOP per image at 100 GFLOP/s: 100 images/s, 1,100 s an epoch with validation.
    assert budget.first_plan(1.0, 100.0, 100_000, 3 * 3600, cap=100) == 9
    assert budget.first_plan(1.0, 100.0, 100_000, 3 * 3600, cap=5) == 5
    assert budget.first_plan(1.0, 100.0, 100_000, 10.0, cap=5) == 1  # at least one epoch


def test_the_expected_rate_is_the_benchmarks_on_this_device_else_half_the_peak(tmp_path):
    from tinylib import throughput

    record = {"model": "resnet9", "device": "CPU: a", "dtype_policy": "mixed_bfloat16", "batch_size": 128,
              "speed": {"matmul_peak_gflops_per_second": 300.0}}
    assert budget.expected_gflops(record, tmp_path) == (150.0, "half the matmul peak")
    throughput.save(tmp_path, device="CPU: a", backend="tensorflow", dtype_policy="mixed_bfloat16", batch=128,
                    peak={"float32": 200.0}, models={"resnet9": {"images_per_second": 100.0, "images_per_second_without_augmentation": 110.0,
                                                                 "train_gflop_per_image": 2.3}})
    gflops, basis = budget.expected_gflops(record, tmp_path)
    assert gflops == pytest.approx(230.0) and "benchmark" in basis
    # The benchmark's images/s with this run's FLOPs per image (counted another way before):
    counted = {**record, "speed": {**record["speed"], "train_gflop_per_image": 2.29}}
    assert budget.expected_gflops(counted, tmp_path)[0] == pytest.approx(229.0)
    other = {**record, "device": "CPU: b"}  # measured elsewhere: not this machine's rate
    assert budget.expected_gflops(other, tmp_path) == (150.0, "half the matmul peak")
    smaller = {**record, "batch_size": 32}  # a rate measured on batches of 128 does not hold for 32
    assert budget.expected_gflops(smaller, tmp_path) == (150.0, "half the matmul peak")


def test_the_epochs_that_fit_count_what_is_left_after_the_reserve():
    assert budget.epochs_that_fit(3600, 1000, 500, epochs_done=2, cap=30) == 2 + (3600 - 1000 - 60) // 500
    assert budget.epochs_that_fit(3600, 3590, 500, epochs_done=7, cap=30) == 7  # nothing more fits
    assert budget.epochs_that_fit(10 ** 6, 0, 1, epochs_done=0, cap=30) == 30
    # The first epoch compiles: left out of the estimate when there are others.
    assert budget.epoch_seconds({"seconds": [900, 100, 110, 120, 130]}) == 120
    assert budget.epoch_seconds({"seconds": [900]}) == 900 and budget.epoch_seconds({}) is None


def test_a_replanned_schedule_keeps_its_past_and_falls_straight_to_zero_at_the_new_end():
    schedule = _WarmupLinearDecay(0.1, warmup_steps=10, total_steps=110)
    before = rates(schedule, range(0, 40))
    shorter = schedule.replanned(40, 70)
    np.testing.assert_allclose(rates(shorter, range(0, 40)), before, rtol=1e-6)
    at = schedule.rate_at(40)
    assert shorter.rate_at(40) == pytest.approx(at)
    assert shorter.rate_at(55) == pytest.approx(at / 2)
    assert shorter.rate_at(70) == 0.0
    longer = shorter.replanned(60, 160)  # twice re-planned: both earlier lines kept
    np.testing.assert_allclose(rates(longer, range(0, 60)), rates(shorter, range(0, 60)), rtol=1e-6)
    assert longer.rate_at(110) == pytest.approx(shorter.rate_at(60) / 2)
    again = _WarmupLinearDecay.from_config(longer.get_config())
    np.testing.assert_allclose(rates(again, range(0, 170, 7)), rates(longer, range(0, 170, 7)), rtol=1e-6)


def test_a_replan_starts_the_new_line_at_the_step_the_schedule_reads(monkeypatch):
    """Under loss scaling (mixed float16) the optimizer does not count the steps it skipped:
    3 skipped in 100 batches, the line is re-drawn from step 97, so it still reaches zero
    after the epochs that are left, not 3 steps before them."""
    import keras

    schedule = _WarmupLinearDecay(0.1, warmup_steps=10, total_steps=1000)
    inner = type("Inner", (), {"iterations": keras.Variable(97, dtype="int64"), "_learning_rate": schedule})()
    model = type("Model", (), {"optimizer": type("LossScale", (), {"inner_optimizer": inner})()})()
    given = []
    monkeypatch.setattr(budget, "set_schedule", lambda model, schedule: given.append(schedule))
    plan = {"hours": 1.0, "cap": 30, "plans": [{"epochs": 10}]}
    monkeypatch.setattr(budget, "epochs_that_fit", lambda *args: 5)
    assert budget.replan(model, plan, {"seconds": [100.0, 100.0]}, 200.0, epochs_done=2, steps_per_epoch=50) == 5
    (replanned,) = given
    assert replanned.segments[-1][0] == 97 and replanned.total_steps == 97 + 3 * 50
    assert budget._schedule_step(type("Fresh", (), {"optimizer": object()})(), 100) == 100  # no counter yet


def test_a_budget_needs_the_linear_schedule_and_says_which_recipe_has_it():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="recipe='fast'"):
        budget.schedule_of(model)


def test_the_schedule_is_found_inside_mixed_float16s_loss_scale_optimizer():
    """Keras wraps the optimizer under mixed_float16 (a GPU of compute capability 7.x): the
    wrapper's own rate is a dummy, the schedule is its inner optimizer's."""
    from tinylib.recipes import _WarmupLinearDecay

    schedule = _WarmupLinearDecay(0.1, warmup_steps=2, total_steps=10)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule)), "mse")
    assert budget.schedule_of(model) is schedule


def _budget_run(ds, tmp_path, **fit_kwargs):
    profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=10, batch_size=8)
    keras.utils.set_random_seed(0)
    recipe = RECIPES["fast"].replace(precision="float32")
    model = train.build("resnet9", ds, profile, recipe=recipe, width=8)
    fit_kwargs.setdefault("hours", 0.1)
    return train.fit(model, ds, profile, runs=tmp_path, verbose=fit_kwargs.pop("verbose", 0), **fit_kwargs)


@pytest.fixture
def clock(monkeypatch):
    """Every epoch takes 100 s: a budget of 0.1 h (360 s, 60 of them kept for the end) fits 3."""
    monkeypatch.setattr(budget, "epoch_seconds", lambda history: 100.0 if history.get("seconds") else None)
    monkeypatch.setattr(runs.Run, "wall_seconds", property(lambda self: 100.0 * self.epochs_done))


@pytest.mark.slow
def test_a_run_on_a_budget_replans_ends_at_zero_and_is_scored_with_flips(tmp_path, tiny_env, synthetic,
                                                                          monkeypatch, clock, capsys):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    run = _budget_run(data.load(), tmp_path, verbose="log")
    # The progress lines count to the plan's end (3 epochs), not to the profile's cap of 10.
    log = capsys.readouterr().out
    assert "epoch 2/3 done" in log and "epoch 3/3 done" in log and "/10 done" not in log.split("epoch 1/")[-1]
    record = run.record
    assert record["finished"] and record["ended_by"] == "time budget" and record["epochs_run"] == 3
    plans = record["time_budget"]["plans"]
    assert plans[0]["after_epoch"] == 0 and plans[-1] == {**plans[-1], "after_epoch": 1, "epochs": 3}
    steps = -(-len(data.load().train) // 8)
    learning_rates = record["history"]["learning_rate"]
    assert learning_rates[-1] <= RECIPES["fast"].learning_rate / steps  # the last step's rate: nearly zero
    # With flips: each image and its mirror image, their probabilities added (predicted here by hand).
    val = data.load().val
    images = np.asarray(val.images)
    both = run.model.predict(images, verbose=0) + run.model.predict(images[:, :, ::-1], verbose=0)
    assert record["val_top1_flips"] == pytest.approx(np.mean(both.argmax(axis=1) == val.labels), abs=1e-6)
    assert record["val_top1_plain"] == pytest.approx(record["final_val_top1"], abs=1e-6)
    # Killed while the flips were scored (the run finished, its record without them): asked again, it scores them.
    saved = json.loads((run.path / "record.json").read_text())
    flips = {key: saved.pop(key) for key in ("val_top1_flips", "val_top1_plain")}
    (run.path / "record.json").write_text(json.dumps(saved))
    again = _budget_run(data.load(), tmp_path).record
    assert again["epochs_run"] == 3 and again["val_top1_flips"] == pytest.approx(flips["val_top1_flips"], abs=1e-6)


@pytest.mark.slow
def test_a_budget_run_resumed_trains_the_same_weights_as_one_never_interrupted(tmp_path, tiny_env, synthetic,
                                                                               monkeypatch, clock, capsys):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    whole = _budget_run(ds, tmp_path / "whole")
    with monkeypatch.context() as patch:  # a deadline (an hour away) judged to come after the first epoch
        patch.setattr(train, "_would_overrun", lambda run, deadline: run.epochs_done >= 1)
        first = _budget_run(ds, tmp_path / "parts", deadline=time.monotonic() + 3600)
    assert first.out_of_time and first.epochs_done == 1 and not first.record["finished"]
    capsys.readouterr()
    resumed = _budget_run(ds, tmp_path / "parts", hours=None)  # a later sitting that leaves the budget out
    assert "on the time budget it began with, 0.1 h" in capsys.readouterr().out
    assert resumed.record["epochs_run"] == 3 and resumed.record["ended_by"] == "time budget"
    for a, b in zip(resumed.model.get_weights(), whole.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A run begun without a budget does not take one half-way: its schedule would change.
    with monkeypatch.context() as patch:
        patch.setattr(train, "_would_overrun", lambda run, deadline: run.epochs_done >= 1)
        _budget_run(ds, tmp_path / "plain", hours=None, deadline=time.monotonic() + 3600)
    with pytest.raises(runs.RunConflict, match="began without a time budget"):
        _budget_run(ds, tmp_path / "plain")


def test_the_command_line_refuses_a_budget_that_is_not_a_positive_number(capsys):
    from tinylib import cli

    for bad in ("0", "-1", "three", "nan"):
        with pytest.raises(SystemExit):
            cli.main(["train", "resnet9", "--hours", bad])
        assert "--hours" in capsys.readouterr().err


def test_the_fast_recipe_has_the_budgets_schedule():
    assert RECIPES["fast"].schedule == "linear" and isinstance(RECIPES["fast"], Recipe)
    assert isinstance(RECIPES["fast"].learning_rate_schedule(10, 3), _WarmupLinearDecay)


def test_the_fast_ablation_takes_out_one_ingredient_per_row():
    import dataclasses

    from tinylib.recipes import fast_ablation_recipes

    rows = fast_ablation_recipes()
    fast = rows.pop("fast")
    names = {recipe.name for recipe in rows.values()}
    assert len(names) == len(rows) and "fast" not in names  # each row its own run folder
    for label, recipe in rows.items():
        changed = {f.name for f in dataclasses.fields(Recipe)
                   if f.name != "name" and getattr(recipe, f.name) != getattr(fast, f.name)}
        if label.startswith("- SGD"):  # the optimizer, at its own rate, with the same decay a step
            assert changed == {"optimizer", "learning_rate", "weight_decay"}
            assert recipe.weight_decay * recipe.learning_rate == pytest.approx(fast.weight_decay * fast.learning_rate)
        else:
            assert len(changed) == 1, (label, changed)


def test_the_candidates_table_gives_each_networks_work_and_the_epochs_it_fits():
    from tinylib import flops, models

    candidates = [("resnet9", {"width": 32}), ("resnet9", {})]
    table = budget.candidates_table(candidates, 200.0, train_images=100_000, hours=3)
    assert list(table.index) == ["resnet9 (width 32)", "resnet9"]
    default = models.build_model("resnet9", compile=False)
    work = flops.training_flops(default) / 1e9
    assert table.loc["resnet9", "parameters"] == f"{default.count_params():,}"
    assert table.loc["resnet9", "GFLOP per training image"] == round(work, 2)
    assert table.loc["resnet9", "epochs in 3 h"] == budget.first_plan(work, 200.0, 100_000, 3 * 3600, cap=1000)
    # chapter 13's claim: the width sizes the arithmetic as its square (half the width, about a quarter)
    ratio = table.loc["resnet9 (width 32)", "GFLOP per training image"] / table.loc["resnet9", "GFLOP per training image"]
    assert 0.2 < ratio < 0.3
    assert table.loc["resnet9 (width 32)", "epochs in 3 h"] > table.loc["resnet9", "epochs in 3 h"]
    unmeasured = budget.candidates_table(candidates[:1], None)
    assert unmeasured.loc["resnet9 (width 32)", "epochs in 3 h"] == "not yet measured"
    # the budget's hours and an epoch's images are the caller's: half the images, two hours
    other = budget.candidates_table(candidates[1:], 200.0, train_images=50_000, hours=2)
    assert other.loc["resnet9", "epochs in 2 h"] == budget.first_plan(work, 200.0, 50_000, 2 * 3600, cap=1000)
    assert other.loc["resnet9", "epochs in 2 h"] > table.loc["resnet9", "epochs in 3 h"]  # 2/3 the time, 1/2 the images


@pytest.mark.slow
def test_a_budget_spent_before_a_sitting_trains_still_ends_on_early_stoppings_best_weights(
        tmp_path, tiny_env, synthetic, monkeypatch, clock, capsys):
    """A sitting that finds its time budget spent before any epoch fits nothing, so Keras'
    early stopping holds no best weights in memory: the run's end puts them back from disk,
    as a run that ends in one sitting does."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    with monkeypatch.context() as patch:  # the first sitting: two epochs, then its deadline
        patch.setattr(train, "_would_overrun", lambda run, deadline: run.epochs_done >= 2)
        first = _budget_run(ds, tmp_path, deadline=time.monotonic() + 3600, callbacks=["early_stopping"])
    assert first.out_of_time and first.epochs_done == 2
    state = json.loads((first.path / "state.json").read_text())
    best = first.path / state["best_weights"]
    # Best weights unlike the last epoch's (whichever epoch was best): only a restore gives them.
    with np.load(best) as arrays:
        kept = [arrays[f"arr_{i}"] * 0.5 for i in range(len(arrays.files))]
    np.savez(best, *kept)
    monkeypatch.setattr(budget, "replan", lambda model, budget_, history, spent, done, steps: done)  # spent
    capsys.readouterr()
    resumed = _budget_run(ds, tmp_path, hours=None, callbacks=["early_stopping"])
    assert "the time budget of 0.1 h is spent after 2 epochs" in capsys.readouterr().out
    assert resumed.record["finished"] and resumed.record["ended_by"] == "time budget"
    for final, wanted in zip(resumed.model.get_weights(), kept, strict=True):
        np.testing.assert_array_equal(final, wanted)
