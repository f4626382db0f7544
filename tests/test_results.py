"""tinylib.results: the study's table beside full-scale records, never an invented number."""

import json

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
    _record(tmp_path, "seedway.json", model="model5", best_val_top1=0.40, recipe=None)
    _record(tmp_path, "staged.json", model="model5", best_val_top1=0.60, stage="all", image_size=128)
    _record(tmp_path, "resnet.json", model="resnet18", best_val_top1=0.55,
            recipe={"name": "modern", "optimizer": "sgd"})
    records = results.full_scale_records(tmp_path)
    assert set(records) == {"model5", "model5-finetune-128px-all", "resnet18-modern"}
    row = next(r for r in results.comparison_rows(tmp_path) if r["model"] == "model5" and r["source"] == "this book")
    assert row["val"] == 0.40 and "seedway.json" in row["note"]


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
    assert "12 of 30 epochs (unfinished: the run was stopped and can resume) in 42 min" in \
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
    table = results.runs_table(records, changes=True)
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "best val top-1"] == "30.0%"
    low, high = (float(x.rstrip("%")) for x in table.loc["a", "95% interval"].split(" to "))
    assert 24.0 < low < 30.0 < high < 36.0  # Wilson, 90 of 300
    assert table.loc["b", "change"] == "+2.0%" and table.loc["b", "within noise?"] == "yes"
    assert table.loc["c", "within noise?"] == "no"
    assert table.loc["a", "epochs"] == "2 epochs" and table.loc["a", "minutes"] == 1.5


def test_the_study_table_marks_each_step_beyond_or_within_noise():
    table = results.study_table()
    assert list(table.index) == list(results.STUDY_RESULTS)
    assert table.loc["model5", "val accuracy"] == "43.1%" and table.loc["model1", "train accuracy"] == "23.0%"
    assert table.loc["model1", "within noise?"] == ""
    # 14.19% -> 22.72% on 10,000 images each is far beyond noise.
    assert table.loc["model2", "change"] == "+8.5%" and table.loc["model2", "within noise?"] == "no"
