"""tinylib.diagnose: why a full-scale row stands where it does, every number from its record."""

import json

import numpy as np
import pytest

from tinylib import diagnose


def _record(folder, model, val, train, *, rates=None, seconds=None, **fields):
    history = {"val_accuracy": val, "accuracy": train}
    if rates is not None:
        history["learning_rate"] = rates
    if seconds is not None:
        history["seconds"] = seconds
    record = {"model": model, "profile": "full", "best_val_top1": max(val), "final_train_top1": train[-1],
              "epochs_run": len(val), "epochs": len(val), "finished": True, "backend": "tensorflow",
              "device": "CPU", "weights": "random", "history": history, **fields}
    (folder / f"{model}.json").write_text(json.dumps(record))
    return record


def test_the_curve_facts_are_the_curves_own_numbers(tmp_path):
    val = [0.10, 0.14, 0.13, 0.17, 0.16, 0.20]
    record = _record(tmp_path, "model2", val, [0.05, 0.1, 0.12, 0.15, 0.16, 0.19],
                     rates=[1e-4, 1e-4, 1e-4, 2e-5, 2e-5, 4e-6], seconds=[100, 60, 62, 61, 300, 64])
    facts = diagnose.curve_facts(record)
    assert facts["best_epoch"] == 6 and facts["best_val"] == pytest.approx(0.20)
    assert facts["lowered_at"] == [4, 6]  # the epochs that began with a lower rate
    second_half = np.abs(np.diff(val[3:]))
    assert facts["swing"] == pytest.approx(np.median(second_half))
    assert facts["trend"] == pytest.approx(np.polyfit(np.arange(5), val[1:], 1)[0])
    # The slope's standard error, as an ordinary least-squares fit gives it (n - 2 degrees of freedom).
    x, y = np.arange(5.0), np.asarray(val[1:])
    fitted = np.polyval(np.polyfit(x, y, 1), x)
    expected = np.sqrt(np.sum((y - fitted) ** 2) / 3 / np.sum((x - x.mean()) ** 2))
    assert facts["trend_error"] == pytest.approx(expected) and facts["trend_epochs"] == 5
    assert facts["epoch_seconds"] == pytest.approx(63.0)


def test_a_row_at_the_studys_figure_says_when_it_got_there(tmp_path):
    _record(tmp_path, "model1", [0.10, 0.15, 0.142, 0.2], [0.1, 0.2, 0.25, 0.3])
    story = diagnose.gap_story("model1", tmp_path)
    assert story.startswith("**Against the study's figure:**") and "14.19% at epoch 2 of the 4" in story


def test_a_short_row_that_fit_less_than_the_study_says_so_and_the_hours_left(tmp_path):
    _record(tmp_path, "model4", [0.10, 0.12, 0.15, 0.14, 0.18, 0.20], [0.05, 0.1, 0.12, 0.15, 0.17, 0.19],
            seconds=[400, 360, 360, 360, 360, 360], epochs=30, finished=False)
    story = diagnose.gap_story("model4", tmp_path)
    assert "short of the study's 38.61% so far:**" in story and "(6 of 6) is 18.61 points below" in story
    # Unfinished: the epochs it has left are the first reason, not the study's steps or augmentation.
    assert "reached 19.00% so far, below the study's 37.52%: after 6 of its 30 epochs this run had not yet fit" \
        in story and "Either the study's model" not in story
    # 19% train against 20% val is 1.00 below, the study's 1.09 below: not a harder task than the study's.
    assert "sat 1.00 points below its validation accuracy, the study's 1.09 points below. That is no sign" in story
    assert "24 of its 30 epochs are left: about 2.4 h at its median epoch of 6.0 min" in story
    assert "still rising" not in story  # it is unfinished, not out of epochs


def test_a_run_whose_training_accuracy_sits_further_below_validation_than_the_studys_is_told_so(tmp_path):
    val = [0.10, 0.15, 0.17, 0.18, 0.19, 0.19, 0.20, 0.20, 0.21, 0.20]
    augmentation = {"layer": "ImageDataGeneratorAugment"}
    _record(tmp_path, "model4", val, [v - 0.08 for v in val], augmentation=augmentation,
            build_options={"dropout": 0.5})
    story = diagnose.gap_story("model4", tmp_path)
    assert "8.00 points below its validation accuracy, the study's 1.09 points below. That is a sign" in story
    assert "(stronger augmentation or dropout)" in story
    assert "Its training accuracy (on augmented images, with dropout, as Keras measures it)" in story
    # Model 1 has no dropout: the story names the augmentation alone.
    _record(tmp_path, "model4", val, [v - 0.08 for v in val], augmentation=augmentation, build_options={})
    story = diagnose.gap_story("model4", tmp_path)
    assert "(on augmented images, as Keras measures it)" in story and "dropout" not in story


def test_a_short_run_is_not_read_as_a_harder_task(tmp_path):
    """Keras averages training accuracy over an epoch while the weights improve: early in any
    run it sits below validation accuracy, whatever the augmentation."""
    _record(tmp_path, "model4", [0.10, 0.15, 0.20], [0.05, 0.10, 0.12])
    story = diagnose.gap_story("model4", tmp_path)
    assert "this run had not fit its training images" in story and "Either the study's model" in story  # finished
    assert "8.00 points below its validation accuracy, the study's 1.09 points below. After 3 epochs that says" \
        in story and "sign that" not in story


def test_the_hours_left_of_a_run_that_early_stopping_may_end_are_a_cap(tmp_path):
    _record(tmp_path, "model2", [0.10, 0.12, 0.15, 0.14], [0.09, 0.11, 0.14, 0.15], seconds=[400, 360, 360, 360],
            epochs=100, finished=False, callbacks=["early_stopping", "reduce_lr_on_plateau"])
    story = diagnose.gap_story("model2", tmp_path)
    assert "At most 96 of its 100 epochs are left, a cap that early stopping may end sooner: at most about 9.6 h" \
        in story


def test_early_stopping_soon_after_the_rate_fell_is_told(tmp_path):
    val = [0.10, 0.15, 0.18, 0.20, 0.21, 0.205, 0.208, 0.207]
    train = [0.1, 0.15, 0.18, 0.2, 0.205, 0.21, 0.215, 0.22]
    names = ["early_stopping", "reduce_lr_on_plateau"]
    _record(tmp_path, "model2", val, train, rates=[1e-4] * 6 + [2e-5] * 2, epochs=100, stopped_early=True,
            callbacks=names)
    story = diagnose.gap_story("model2", tmp_path)
    assert "its best epoch (5 of 8) is 1.72 points below it" in story
    # The study's train accuracy (20.17%) first reached at epoch 5 (20.5%), where val was 21.0%.
    assert "reached the study's 20.17% at epoch 5, where its validation accuracy was 21.00%" in story
    assert "lowered for epoch 7; early stopping ended the run after epoch 8, so the last, lowest rate trained 2 epochs" in story
    # A record from before the callbacks' settings were recorded: early stopping's patience was 5 then.
    assert "trained 2 epochs (its early stopping waited 5 epochs without improvement, its rate reduction 3)." in story
    from tinylib import train as train_lib

    _record(tmp_path, "model2", val, train, rates=[1e-4] * 6 + [2e-5] * 2, epochs=100, stopped_early=True,
            callbacks=names, callback_settings=train_lib.callback_settings(names))
    assert "(its early stopping waited 6 epochs without improvement, its rate reduction 3)." \
        in diagnose.gap_story("model2", tmp_path)
    assert story.startswith("**Why it is short of the study's 22.72%:**")  # 1.72 points on 10,000 images each


def test_a_gap_within_the_noise_of_the_two_validation_sets_is_not_called_a_shortfall(tmp_path):
    _record(tmp_path, "model2", [0.18, 0.2164, 0.21], [0.18, 0.2, 0.2146], epochs=100, stopped_early=True,
            dataset={"val_images": 10_000})
    story = diagnose.gap_story("model2", tmp_path)
    assert story.startswith("**Below the study's 22.72%, within noise:** its best epoch (2 of 3) is 1.08 points "
                            "below it, a gap these validation sets do not show beyond noise (the intervals overlap).")


def test_no_record_or_no_study_row_tells_nothing(tmp_path):
    assert diagnose.gap_story("model3", tmp_path) == ""
    _record(tmp_path, "resnet9", [0.3, 0.4], [0.3, 0.4])
    assert diagnose.gap_story("resnet9", tmp_path) == ""


def test_a_run_on_larger_batches_than_keras_default_is_told_its_steps_against_the_defaults(tmp_path):
    val, train = [0.10, 0.12, 0.15], [0.05, 0.1, 0.12]
    _record(tmp_path, "model4", val, train, batch_size=128, learning_rate=1e-4, dataset={"train_images": 100_000})
    story = diagnose.gap_story("model4", tmp_path)
    assert "batches of 128 images: 782 optimizer steps an epoch at a learning rate of 0.0001" in story
    assert "is 32: 3,125 steps an epoch, 4.0 times as many updates" in story
    _record(tmp_path, "model4", val, train, rates=[1e-4, 1e-4, 2e-5], batch_size=128, learning_rate=1e-4,
            dataset={"train_images": 100_000})
    assert "at a learning rate starting at 0.0001" in diagnose.gap_story("model4", tmp_path)  # then lowered
    _record(tmp_path, "model4", val, train, batch_size=32, learning_rate=1e-4, dataset={"train_images": 100_000})
    assert "optimizer steps" not in diagnose.gap_story("model4", tmp_path)  # the default: nothing to say
    _record(tmp_path, "model4", val, train, batch_size=16, learning_rate=1e-4, dataset={"train_images": 100_000})
    assert "optimizer steps" not in diagnose.gap_story("model4", tmp_path)  # more steps than the default's


def test_keras_default_batch_is_the_one_diagnose_names():
    """The oracle: Keras' own defaults, in ImageDataGenerator (which the study used) and in fit's documentation."""
    import inspect

    import keras

    from tinylib.augment import image_data_generator_class

    generator = image_data_generator_class()
    for method in (generator.flow, generator.flow_from_directory):
        assert inspect.signature(method).parameters["batch_size"].default == diagnose.KERAS_DEFAULT_BATCH
    documented = next(c.fit.__doc__ for c in keras.Model.__mro__ if getattr(getattr(c, "fit", None), "__doc__", None))
    assert f"`batch_size` will default to {diagnose.KERAS_DEFAULT_BATCH}" in " ".join(documented.split())


def _at_batch(folder, name, batch, val, model="model2", **fields):
    fields = {"profile_batch_size": 128, "dataset": {"train_images": 100_000, "val_images": 10_000},
              "optimizer": "Adam", "seed": 0, **fields}
    record = _record(folder, model, val, [v - 0.01 for v in val], batch_size=batch, **fields)
    (folder / f"{model}.json").rename(folder / name)
    return record


def test_a_run_on_another_batch_than_its_profiles_is_a_row_of_its_own(tmp_path):
    from tinylib import results

    assert results.record_key({"model": "model2", "batch_size": 32, "profile_batch_size": 128}) == "model2-batch32"
    assert results.record_key({"model": "model2", "batch_size": 128, "profile_batch_size": 128}) == "model2"
    # Records from before the profile's batch was recorded: the profile's, times the devices.
    assert results.record_key({"model": "model2", "profile": "full", "batch_size": 32, "devices": 1}) == "model2-batch32"
    assert results.record_key({"model": "model2", "profile": "full", "batch_size": 256, "devices": 2}) == "model2"
    assert results.record_key({"model": "model2", "profile": "mine", "batch_size": 32}) == "model2"
    # Every kind of row: another batch never stands in for the profile's comparison, recipe or stage.
    other = {"batch_size": 32, "profile_batch_size": 128}
    assert results.record_key({"model": "model2", "comparison": "optimizers", "optimizer": "SGD", **other}) == \
        "model2-optimizer-sgd-batch32"
    assert results.record_key({"model": "resnet18", "recipe": {"name": "modern"}, **other}) == "resnet18-modern-batch32"
    assert results.record_key({"model": "model5", "stage": "head", "image_size": 128, **other}) == \
        "model5-finetune-128px-head-batch32"
    assert results.study_figures({"model": "model2", "comparison": "optimizers", "optimizer": "SGD", **other}) == {}
    # Another seed, an optimizer at another rate, a stage from random weights: each a row of its own too.
    assert results.record_key({"model": "model2", "profile": "full", "seed": 1}) == "model2-seed1"
    assert results.record_key({"model": "model2", "profile": "full", "seed": 0}) == "model2"
    assert results.record_key({"model": "model2", "comparison": "optimizers", "optimizer": "SGD",
                               "learning_rate": 0.01}) == "model2-optimizer-sgd-lr0.01"
    assert results.record_key({"model": "model2", "comparison": "optimizers", "optimizer": "SGD",
                               "learning_rate": 9.999999747378752e-05}) == "model2-optimizer-sgd"  # float32's 1e-4
    assert results.record_key({"model": "model5", "stage": "all", "image_size": 64, "pretrained": False}) == \
        "model5-finetune-64px-random-all"
    assert results.record_key({"model": "model5", "stage": "all", "image_size": 64, "freeze_batchnorm": False}) == \
        "model5-finetune-64px-bn-training-all"
    assert results.record_key({"model": "model5", "stage": "all", "image_size": 64, "freeze_batchnorm": True}) == \
        "model5-finetune-64px-all"
    # A study's model trained another way than Adam at 1e-4 (--optimizer, --learning-rate) is not its row.
    assert results.record_key({"model": "model2", "optimizer": "SGD", "learning_rate": 1e-4}) == "model2-sgd"
    assert results.record_key({"model": "model3", "optimizer": "Adam", "learning_rate": 1e-3}) == "model3-lr0.001"
    assert results.record_key({"model": "model3", "optimizer": "Adam", "learning_rate": 1e-4}) == "model3"
    # The seed the record's own profile had, before the profile's as this version defines it.
    assert results.record_key({"model": "model2", "profile": "full", "seed": 3, "dataset": {"seed": 3}}) == "model2"
    small = _at_batch(tmp_path, "small.json", 32, [0.3])
    _at_batch(tmp_path, "large.json", 128, [0.2])
    assert results.full_scale_records(tmp_path)["model2"]["batch_size"] == 128  # the study's row: the profile's run
    assert results.study_figures(small) == results.STUDY_RESULTS["model2"]


def test_the_batch_story_compares_per_epoch_per_step_and_at_the_end(tmp_path):
    # Batch 32: 3,125 steps an epoch; batch 128: 782, whose 10 epochs are 7,820 steps: batch 32's first 2 epochs.
    _at_batch(tmp_path, "small.json", 32, [0.10, 0.15, 0.16], epochs=100, finished=False, callbacks=["early_stopping"])
    _at_batch(tmp_path, "large.json", 128, [0.05, 0.08, 0.09, 0.10, 0.12, 0.14, 0.16, 0.17, 0.18, 0.21],
              rates=[1e-4] * 9 + [2e-5], epochs=100, stopped_early=True, callbacks=["early_stopping"])
    _at_batch(tmp_path, "worse.json", 128, [0.01, 0.02])  # a worse run at the same batch is not the one compared
    _at_batch(tmp_path, "sgd.json", 64, [0.5], optimizer="SGD")  # not the batch alone: not compared
    _at_batch(tmp_path, "bare.json", 16, [0.5], dataset={})  # no dataset size: cannot be placed by its steps
    _record(tmp_path, "model2", [0.5], [0.5], batch_size=64, recipe={"name": "modern"},
            dataset={"train_images": 100_000})  # not the study's way: not compared
    assert list(diagnose.by_batch("model2", tmp_path)) == [32, 128]
    story = diagnose.batch_story("model2", tmp_path)
    assert story.startswith("**The batch:** over the 3 epochs both runs trained, Model 2 at batch 32 (3,125 "
                            "optimizer steps an epoch) reached 16.00% validation top-1 at best, above, beyond noise, "
                            "the 9.00% of batch 128 (782 steps an epoch).")
    assert ("Over the first 7,820 optimizer steps, batch 32 reached 15.00% at best (its 2 epochs, 6,250 steps), "
            "below, beyond noise, the 21.00% of batch 128 (its 10 epochs, 7,820 steps; its learning rate first "
            "lowered for epoch 10).") in story
    assert ("batch 32, 16.00% so far, 3 of 100 epochs (unfinished" in story
            and "batch 128, 21.00%, stopped early after 10 of 100 epochs, in `large.json`" in story)
    assert "their patience waits 4 times the steps" in story


def test_the_batch_story_names_the_run_not_yet_measured(tmp_path):
    _at_batch(tmp_path, "large.json", 128, [0.1, 0.2])
    story = diagnose.batch_story("model2", tmp_path)
    assert story.startswith("Only batch 128 has a full-scale record of Model 2")
    command = "python -m tinylib train model2 --profile full --batch-size 32 --budget 170 --results book/results"
    assert f"at batch 32 is not yet measured (`{command}`" in story
    from tinylib import cli

    assert cli.build_parser().parse_args(command.split()[3:]).batch_size == 32  # a command tinylib takes
    assert diagnose.batch_story("model4", tmp_path).startswith("No full-scale record of Model 4")


def test_with_only_keras_default_batch_measured_the_missing_run_is_the_profiles_own(tmp_path):
    _at_batch(tmp_path, "small.json", 32, [0.1, 0.2])
    story = diagnose.batch_story("model2", tmp_path)
    assert ("at batch 128, the `full` profile's, is not yet measured (`python -m tinylib reproduce --only model2 "
            "--profile full --budget 170 --results book/results`") in story
    assert "`model2-full-<backend>.json`" in story and "--batch-size" not in story


def test_the_batch_figure_puts_a_run_at_its_steps(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from tinylib import plots

    runs = {f"batch {b}": _at_batch(tmp_path, f"{b}.json", b, [0.1, 0.2]) for b in (32, 128)}
    fig = plots.curves_by_steps(runs, references={"the study": 0.2272})
    by_epoch, by_step = fig.axes
    assert list(by_epoch.lines[0].get_xdata()) == [1, 2]
    assert list(by_step.lines[0].get_xdata()) == pytest.approx([3.125, 6.25])  # thousands of steps
    assert list(by_step.lines[1].get_xdata()) == pytest.approx([0.782, 1.564])
    assert [line.get_label() for line in by_step.lines] == ["batch 32", "batch 128", "the study"]


def test_the_batch_story_names_every_batch_measured_not_only_the_two_compared(tmp_path):
    _at_batch(tmp_path, "small.json", 32, [0.10, 0.15])
    _at_batch(tmp_path, "mid.json", 64, [0.12, 0.19])
    _at_batch(tmp_path, "large.json", 128, [0.05, 0.08])
    story = diagnose.batch_story("model2", tmp_path)
    assert story.startswith("**The batch:** over the 2 epochs both runs trained, Model 2 at batch 32")
    assert "batch 64, 19.00%, 2 epochs, in `mid.json`" in story


def test_with_both_runs_ended_the_batch_story_says_whether_the_batch_accounts_for_the_gap(tmp_path):
    _at_batch(tmp_path, "small.json", 32, [0.18, 0.205], epochs=100, stopped_early=True)
    _at_batch(tmp_path, "large.json", 128, [0.20, 0.2164], epochs=100, stopped_early=True)
    story = diagnose.batch_story("model2", tmp_path)
    assert "Both runs have ended: at its best, batch 32 is within noise of batch 128." in story
    assert "Only batch 128 is not below, beyond noise, the study's 22.72%." in story  # 21.64% on 10,000 images
    _at_batch(tmp_path, "large.json", 128, [0.15, 0.17], epochs=100, stopped_early=True)
    story = diagnose.batch_story("model2", tmp_path)
    assert "batch 32 is above, beyond noise, batch 128" in story
    assert ("Both are below, beyond noise, the study's 22.72%: at the study's learning rate the batch alone does not "
            "close that gap (batch 32 ends 2.22 points short of it, batch 128 5.72)") in story
    _at_batch(tmp_path, "small.json", 32, [0.18, 0.205], epochs=100, finished=False)
    assert "Both runs have ended" not in diagnose.batch_story("model2", tmp_path)  # one still under way


def test_runs_of_different_planned_lengths_are_weighed_at_their_ends_with_the_lengths_named(tmp_path):
    """A run whose plan was raised (``--epochs 60`` on a 30-epoch run) ends later than the
    other: its end weighs the batch and the length together, and the story says so."""
    _at_batch(tmp_path, "model4-batch32.json", 32, [0.25, 0.30, 0.3243], model="model4", epochs=60,
              epochs_changed=[{"at_epoch": 2, "from": 30, "to": 60}])
    _at_batch(tmp_path, "model4.json", 128, [0.25, 0.2902], model="model4", epochs=30)
    story = diagnose.batch_story("model4", tmp_path)
    assert ("Both runs have ended, batch 32 planned for 60 epochs and batch 128 for 30, so their ends weigh the batch "
            "and the run's length together: at its best, batch 32 is above, beyond noise, batch 128.") in story
    assert ("at the study's learning rate neither the batch nor the longer run closes that gap "
            "(batch 32 ends 6.18 points short of it, batch 128 9.59)") in story
    assert "planned 30, raised to 60 after epoch 2" in story  # the run's own line says where its plan changed


def test_a_record_at_another_batch_and_another_precision_is_set_aside_with_the_reason(tmp_path):
    _at_batch(tmp_path, "large.json", 128, [0.1, 0.2], dtype_policy="mixed_bfloat16")
    _at_batch(tmp_path, "small.json", 32, [0.1, 0.15], dtype_policy="float32")
    assert list(diagnose.by_batch("model2", tmp_path)) == [128]
    story = diagnose.batch_story("model2", tmp_path)
    assert "at batch 32 is not yet measured" in story
    assert ("`small.json` (batch 32) is set aside: it differs from the batch-128 run in more than its batch "
            "(dtype_policy: 'mixed_bfloat16' -> 'float32').") in story


def test_runs_that_waited_differently_before_stopping_early_are_compared_and_the_story_says_so(tmp_path):
    """Early stopping's patience moves where a run ends, not what it trains before: a run from
    before the settings were recorded (patience 5) is compared with one of today's (6), and the
    story names both; another rate reduction changes the rates trained, and sets a run aside."""
    from tinylib import train as train_lib

    names = ["early_stopping", "reduce_lr_on_plateau"]
    today = train_lib.callback_settings(names)
    _at_batch(tmp_path, "large.json", 128, [0.10, 0.20], callbacks=names, callback_settings=today)
    _at_batch(tmp_path, "small.json", 32, [0.12, 0.15], callbacks=names)  # from before: patience 5
    assert list(diagnose.by_batch("model2", tmp_path)) == [32, 128]
    story = diagnose.batch_story("model2", tmp_path)
    assert (f"Their early stopping waited differently for an improvement (batch 32 5 epochs, batch 128 "
            f"{train_lib.EARLY_STOPPING_PATIENCE} epochs; the rate's reduction the same)") in story
    slower = {**today, "reduce_lr_on_plateau": {**today["reduce_lr_on_plateau"], "patience": 10}}
    _at_batch(tmp_path, "small.json", 32, [0.12, 0.15], callbacks=names, callback_settings=slower)
    assert list(diagnose.by_batch("model2", tmp_path)) == [128]
    assert "callback_settings.reduce_lr_on_plateau.patience: 3 -> 10" in diagnose.batch_story("model2", tmp_path)


def test_a_precision_the_books_check_found_within_noise_does_not_set_a_run_aside(tmp_path):
    """Two runs of one model in two precisions (as Model 4's batch-128 run in mixed bfloat16 and
    its first batch-32 run in float32, on a CPU without bfloat16): chapter 13's check, not a guess,
    says whether they can be compared."""
    _at_batch(tmp_path, "large.json", 128, [0.10, 0.20], model="model4", dtype_policy="mixed_bfloat16")
    _at_batch(tmp_path, "small.json", 32, [0.12, 0.15], model="model4", dtype_policy="float32")
    # The check: Model 2 in mixed bfloat16 against its float32 record, over the same 2 epochs.
    _at_batch(tmp_path, "float32.json", 128, [0.100, 0.131], dtype_policy="float32")
    _at_batch(tmp_path, "check.json", 128, [0.101, 0.132], dtype_policy="mixed_bfloat16", comparison="precision")
    assert list(diagnose.by_batch("model4", tmp_path)) == [32, 128]
    story = diagnose.batch_story("model4", tmp_path)
    assert "The runs differ in their arithmetic too (batch 32 in float32, batch 128 in mixed_bfloat16)." in story
    assert ("They are compared because the book's precision check (chapter 13) found no difference beyond noise "
            "between mixed_bfloat16 and float32 over the first 2 epochs of Model 2 at full scale (13.20% against "
            "13.10% at best); the comparison assumes that this holds for Model 4 too") in story
    assert "set aside" not in story
    assert list(diagnose.batch_curves("model4", tmp_path)) == ["batch 32 (float32)", "batch 128 (mixed_bfloat16)"]
    assert list(diagnose.batch_curves("model2", tmp_path)) == ["batch 128"]  # one arithmetic: the batch alone
    _at_batch(tmp_path, "small.json", 32, [0.12, 0.15], model="model4", dtype_policy="float32", epochs=60,
              finished=False)
    assert list(diagnose.batch_curves("model4", tmp_path)) == ["batch 32 (float32), so far",
                                                               "batch 128 (mixed_bfloat16)"]
    # A check that found the two arithmetics apart sets the run aside again.
    _at_batch(tmp_path, "check.json", 128, [0.101, 0.20], dtype_policy="mixed_bfloat16", comparison="precision")
    assert list(diagnose.by_batch("model4", tmp_path)) == [128]
    assert "(dtype_policy: 'mixed_bfloat16' -> 'float32')" in diagnose.batch_story("model4", tmp_path)
    # Without a check, likewise.
    (tmp_path / "check.json").unlink()
    assert list(diagnose.by_batch("model4", tmp_path)) == [128]


def test_a_models_own_precision_check_comes_before_model_2s(tmp_path):
    _at_batch(tmp_path, "m2.json", 128, [0.100, 0.131], dtype_policy="float32")
    _at_batch(tmp_path, "m2-check.json", 128, [0.101, 0.132], dtype_policy="mixed_bfloat16", comparison="precision")
    _at_batch(tmp_path, "m4.json", 128, [0.100, 0.131], model="model4", dtype_policy="float32")
    policies = {"float32", "mixed_bfloat16"}
    assert diagnose.precision_checked("model4", policies, tmp_path)["model"] == "model2"  # no check of its own
    _at_batch(tmp_path, "m4-check.json", 128, [0.10, 0.25], model="model4", dtype_policy="mixed_bfloat16",
              comparison="precision")
    assert diagnose.precision_checked("model4", policies, tmp_path) is None  # its own found them apart
    assert diagnose.precision_checked("model2", policies, tmp_path)["epochs"] == 2
    assert diagnose.precision_checked("model2", {"float32"}, tmp_path) is None
    assert diagnose.precision_checked("model2", {"mixed_float16", "mixed_bfloat16"}, tmp_path) is None


def test_an_epoch_at_the_studys_exact_count_reaches_it_though_float32_rounds_below():
    import numpy as np

    from tinylib.diagnose import _first_epoch_at

    as_keras_keeps_it = float(np.float32(0.3861))  # 0.38609999418258667
    assert as_keras_keeps_it < 0.3861
    assert _first_epoch_at(np.array([0.30, as_keras_keeps_it]), 0.3861) == 2
    assert _first_epoch_at(np.array([0.30, 0.3860]), 0.3861) is None  # one image short is short


def test_still_rising_is_said_only_beyond_two_standard_errors(tmp_path):
    """A finished run's last stretch: a steady rise is "still rising"; the same mean rise
    through swings as large as the published Model 4's is not claimed."""
    steady = [0.10 + 0.01 * i for i in range(10)]
    _record(tmp_path, "model4", steady, [v - 0.01 for v in steady])
    story = diagnose.gap_story("model4", tmp_path)
    assert "It was still rising when its planned epochs ran out." in story
    assert "Over its last 5 epochs validation accuracy rose by 1.00 points an epoch" in story
    swinging = [0.10, 0.12, 0.14, 0.16, 0.18, 0.2561, 0.2705, 0.2743, 0.2513, 0.2902]  # Model 4's last five
    _record(tmp_path, "model4", swinging, [v - 0.01 for v in swinging])
    story = diagnose.gap_story("model4", tmp_path)
    assert "It was still rising" not in story and "its last 5 epochs cannot say" in story
    assert "rose by 0.49 points an epoch (least-squares slope, standard error 0.49), within two standard errors" \
        in story


def test_at_the_studys_fit_a_run_validates_lower_only_beyond_noise(tmp_path):
    """Model 2's study row: 20.17% training, 22.72% validation. At the epoch this run's
    training accuracy reaches 20.17%, its validation accuracy is set against 22.72% with
    both validation sets' noise."""
    train = [0.10, 0.15, 0.2017, 0.22]
    _record(tmp_path, "model2", [0.12, 0.16, 0.2010, 0.2050], train)
    assert "this run validates lower." in diagnose.gap_story("model2", tmp_path)
    _record(tmp_path, "model2", [0.12, 0.16, 0.2250, 0.2260], train)
    assert "this run validates about as well as the study's, within noise." in diagnose.gap_story("model2", tmp_path)
