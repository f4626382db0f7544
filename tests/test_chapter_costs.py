"""tinylib.chapter_costs: the chapters' cost lines come from measured builds or say they were not measured."""

from __future__ import annotations

import json

import pytest

from tinylib import chapter_costs

nbformat = pytest.importorskip("nbformat")
jupyter_cache = pytest.importorskip("jupyter_cache")


def _executed(cache_dir, name: str, seconds: float) -> None:
    """A notebook in an execution cache, as a book build leaves it."""
    from jupyter_cache.base import CacheBundleIn

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"print({seconds!r})")])
    jupyter_cache.get_cache(str(cache_dir)).cache_notebook_bundle(
        CacheBundleIn(notebook, f"/somewhere/book/{name}.ipynb", data={"execution_seconds": seconds}),
        check_validity=False, overwrite=True)


def test_without_measurements_every_profile_is_not_yet_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLIB_PROFILE", "quick")
    line = chapter_costs.cost_line("06_model1", folder=tmp_path)
    assert line == ("Running this chapter: quick profile on a 2-core CPU: not yet measured; "
                    "full profile on a GPU or, for hours, a CPU: not yet measured.")


def test_a_recorded_build_gives_each_chapter_its_time(tmp_path):
    cache = tmp_path / "cache"
    _executed(cache, "06_model1", 185.0)
    _executed(cache, "07_model2", 30.0)
    build = chapter_costs.record_build(cache, "quick", "CPU: x86_64 (2 cores)", "tensorflow", folder=tmp_path)
    assert build["seconds"] == {"06_model1": 185.0, "07_model2": 30.0} and build["total_minutes"] == 3.6
    saved = json.loads((tmp_path / chapter_costs.TIMES_FILE).read_text())
    assert saved["quick"]["device"] == "CPU: x86_64 (2 cores)"
    line = chapter_costs.cost_line("06_model1", folder=tmp_path)
    assert "quick profile: 3.1 min on CPU: x86_64 (2 cores) (tensorflow, measured " in line
    assert "full profile on a GPU or, for hours, a CPU: not yet measured" in line
    assert "quick profile: 30 s on CPU" in chapter_costs.cost_line("07_model2", folder=tmp_path)  # under a minute
    # A chapter that build did not run stays unmeasured.
    assert "quick profile on a 2-core CPU: not yet measured" in chapter_costs.cost_line("13_x", folder=tmp_path)


def test_recording_an_empty_cache_says_to_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        chapter_costs.record_build(tmp_path / "empty", "quick", "CPU", "tensorflow", folder=tmp_path)


def test_every_chapter_prints_its_own_cost_line():
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    chapters = sorted(book.glob("[0-9][0-9]_*.ipynb"))
    assert chapters
    for path in chapters:
        cells = [c for c in nbformat.read(path, as_version=4).cells if "chapter-cost" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{path.name}: one cell tagged chapter-cost"
        assert f'chapter_costs.cost_line("{path.stem}")' in cells[0].source, f"{path.name} prints another chapter's cost"


def test_a_model_chapter_gives_its_full_scale_runs_measured_time_and_full_says_how_to_choose_quick(
        tmp_path, monkeypatch):
    (tmp_path / "model2-full.json").write_text(json.dumps({
        "model": "model2", "profile": "full", "best_val_top1": 0.2, "final_train_top1": 0.19, "epochs": 100,
        "epochs_run": 19, "finished": False, "wall_seconds": 4852.0, "device": "CPU: x86_64 (2 cores)",
        "backend": "tensorflow", "weights": "random"}))
    monkeypatch.setenv("TINYLIB_PROFILE", "quick")
    line = chapter_costs.cost_line("07_model2", folder=tmp_path)
    assert ("full profile on a GPU or, for hours, a CPU: not yet measured (its training run alone: 81 min for 19 of 100 epochs "
            "(unfinished") in line and "CPU: x86_64 (2 cores), model2-full.json)" in line
    assert "TINYLIB_PROFILE" not in line
    assert "its training run" not in chapter_costs.cost_line("06_model1", folder=tmp_path)  # no record of its own
    monkeypatch.setenv("TINYLIB_PROFILE", "full")
    assert line + " " + chapter_costs.CHOOSE_QUICK == chapter_costs.cost_line("07_model2", folder=tmp_path)


def test_a_training_cell_gives_its_cost_at_the_records_measured_rate(tmp_path):
    from tinylib.profiles import Profile

    (tmp_path / "model2-full.json").write_text(json.dumps({
        "model": "model2", "profile": "full", "best_val_top1": 0.2, "final_train_top1": 0.19,
        "train_images_per_second": 500.0, "device": "CPU: x86_64 (2 cores)", "backend": "tensorflow",
        "weights": "random"}))
    profile = Profile("p", classes=10, train_per_class=300, val_per_class=10, epochs=4, batch_size=8)
    line = chapter_costs.training_estimate("model2", profile, folder=tmp_path, policy="float32")
    assert line.startswith("This cell trains model2 for 4 epochs on 3,000 images (p): about 0.4 min of training "
                           "steps (validation not included) at the 500 train images/s that model2's full-scale "
                           "record measured on CPU: x86_64 (2 cores) (float32); this run trains in batches of 8, "
                           "so expect another time")
    assert "1 epoch on 3,000" in chapter_costs.training_estimate("model2", profile, epochs=1, folder=tmp_path)
    assert "not yet measured (no full-scale record of model4)" in chapter_costs.training_estimate(
        "model4", profile, folder=tmp_path)


def test_a_model_without_a_record_is_estimated_from_the_saved_benchmark(tmp_path):
    """benchmarks/model_throughput.py --save writes the rates; a model with no full-scale
    record gets its estimate from there, saying where it came from."""
    from tinylib import throughput
    from tinylib.profiles import Profile

    profile = Profile("p", classes=10, train_per_class=300, val_per_class=10, epochs=4, batch_size=8)
    json_path, table_path = throughput.save(
        tmp_path, device="CPU: x86_64 (2 cores)", backend="tensorflow", dtype_policy="mixed_bfloat16", batch=128,
        peak={"float32": 210.4, "bfloat16": 384.0},
        models={"model4": {"images_per_second": 150.0, "images_per_second_without_augmentation": 160.0,
                           "train_gflop_per_image": 1.03}})
    line = chapter_costs.training_estimate("model4", profile, folder=tmp_path, policy="mixed_bfloat16")
    assert line.startswith("This cell trains model4 for 4 epochs on 3,000 images (p): about 1.3 min of training "
                           "steps (validation not included) at the 150 train images/s that "
                           "benchmarks/model_throughput.py (")
    assert "measured on CPU: x86_64 (2 cores) (mixed_bfloat16, batch 128); this run trains in batches of 8" in line
    assert line.endswith("model4 has no full-scale record yet (a finished run is read back instead).")
    assert "not yet measured" in chapter_costs.training_estimate("model3", profile, folder=tmp_path)
    table = table_path.read_text()
    assert "| model4 | 150 | 160 | 1.030 | 154 | 11.1 min |" in table  # 100,000 / 150 / 60
    assert "float32 210 GFLOP/s, bfloat16 384 GFLOP/s" in table
    assert throughput.read(tmp_path)["models"]["model4"]["images_per_second"] == 150.0
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_timing_some_models_keeps_the_others_with_what_they_were_measured_under(tmp_path):
    from tinylib import throughput

    row = {"images_per_second": 100.0, "images_per_second_without_augmentation": 110.0, "train_gflop_per_image": 1.0}
    throughput.save(tmp_path, device="CPU: old", backend="tensorflow", dtype_policy="float32", batch=128,
                    peak={"float32": 200.0}, models={"model3": row, "model4": row}, fused_batchnorm=False)
    throughput.save(tmp_path, device="CPU: new", backend="tensorflow", dtype_policy="mixed_bfloat16", batch=128,
                    peak={"float32": 220.0}, models={"model4": {**row, "images_per_second": 150.0}},
                    fused_batchnorm=True)
    data = throughput.read(tmp_path)
    assert data["models"]["model4"]["images_per_second"] == 150.0 and "device" not in data["models"]["model4"]
    rate, conditions = throughput.rate("model3", tmp_path)
    assert rate == 100.0 and conditions["device"] == "CPU: old" and conditions["dtype_policy"] == "float32"
    assert throughput.rate("model4", tmp_path)[1]["device"] == "CPU: new"
    table = (tmp_path / throughput.THROUGHPUT_TABLE).read_text()
    assert "| model3 [1] | 100 |" in table and "[1] model3: measured" in table and "on CPU: old" in table
    # Which BatchNorm each measurement used goes with it: the kept row's, and the new one's.
    assert conditions["fused_batchnorm"] is False and throughput.rate("model4", tmp_path)[1]["fused_batchnorm"]
    assert "float32, BatchNorm: Keras' own, batch 128." in table and "mixed_bfloat16, BatchNorm: TensorFlow's fused kernel, batch" in table


def test_a_profile_with_a_smaller_build_scales_the_full_scale_rate_by_its_flops(tmp_path):
    """The small profiles' ResNets are a quarter as wide with a strided stem: the full-scale
    rate would overstate their time tens of times over."""
    from tinylib import flops, models
    from tinylib.profiles import get_profile

    (tmp_path / "resnet18-full.json").write_text(json.dumps({
        "model": "resnet18", "profile": "full", "best_val_top1": 0.2, "train_images_per_second": 20.0,
        "device": "CPU: x86_64 (2 cores)", "backend": "tensorflow", "weights": "random"}))
    quick = get_profile("quick")

    def cost(profile):
        return flops.training_flops(models.build_model("resnet18", num_classes=200, compile=False,
                                                       **get_profile(profile).options_for("resnet18")))

    ratio = cost("full") / cost("quick")
    # A quarter of the width (16 times fewer operations in a convolution) and a stride-2 stem
    # (4 times fewer positions): about 64 times, a little less for the first convolution's
    # 3 input channels and the classifier, which shrink with the width alone.
    assert 50 < ratio < 64
    assert chapter_costs.smaller_build("resnet18", quick) == pytest.approx(ratio)
    line = chapter_costs.training_estimate("resnet18", quick, epochs=1, folder=tmp_path)
    minutes = quick.train_images / (20.0 * ratio) / 60
    assert f"about {minutes:,.1f} min of training steps" in line and f"({ratio:,.0f} times fewer FLOPs an image" in line
    # Model 4's small profiles change its BatchNorm momentum only: the same network, no scaling.
    assert chapter_costs.smaller_build("model4", quick) == 1.0


def test_the_estimate_takes_the_rate_measured_in_this_runs_precision_and_batch(tmp_path):
    """A float32 record and a mixed-bfloat16 benchmark of one model: a mixed-bfloat16 run is
    estimated at the benchmark's rate, a float32 run at the record's, and a run on another
    batch is told that its rate was measured on another."""
    from tinylib import throughput
    from tinylib.profiles import Profile

    (tmp_path / "model2-full.json").write_text(json.dumps({
        "model": "model2", "profile": "full", "best_val_top1": 0.2, "final_train_top1": 0.19, "batch_size": 128,
        "train_images_per_second": 500.0, "device": "CPU: x86_64 (2 cores)", "backend": "tensorflow",
        "weights": "random", "dtype_policy": "float32"}))
    throughput.save(tmp_path, device="CPU: x86_64 (2 cores)", backend="tensorflow", dtype_policy="mixed_bfloat16",
                    batch=128, peak={"float32": 200.0, "bfloat16": 400.0},
                    models={"model2": {"images_per_second": 1000.0, "images_per_second_without_augmentation": 1100.0,
                                       "train_gflop_per_image": 0.18}})
    profile = Profile("p", classes=10, train_per_class=300, val_per_class=10, epochs=4, batch_size=128)
    fast = chapter_costs.training_estimate("model2", profile, folder=tmp_path, policy="mixed_bfloat16")
    assert "at the 1,000 train images/s that benchmarks/model_throughput.py" in fast and "0.2 min" in fast
    assert "(mixed_bfloat16, batch 128)" in fast and "expect another time" not in fast
    slow = chapter_costs.training_estimate("model2", profile, folder=tmp_path, policy="float32")
    assert "at the 500 train images/s that model2's full-scale record" in slow and "0.4 min" in slow
    assert "(float32, batch 128)" in slow and "expect another time" not in slow
    other = chapter_costs.training_estimate("model2", Profile("q", classes=10, train_per_class=300, val_per_class=10,
                                                              epochs=4, batch_size=32), folder=tmp_path,
                                            policy="float16")
    assert "this run trains in float16 on batches of 32, so expect another time" in other
    larger = chapter_costs.training_estimate("model2", profile, folder=tmp_path, policy="float32", batch_size=512)
    assert "this run trains in batches of 512, so expect another time" in larger  # chapter 9's larger batch



def test_a_rate_kept_from_before_the_batch_was_recorded_has_an_unknown_batch(tmp_path):
    """throughput.json kept rows with their own device, precision and date, but not their
    batch until the batch joined the conditions: such a row's batch is unknown, not the
    newer measurement's, and a budget's first plan does not take it for its own."""
    from tinylib import budget, throughput

    row = {"images_per_second": 100.0, "images_per_second_without_augmentation": 110.0,
           "train_gflop_per_image": 1.0}
    old = {"device": "CPU: a", "backend": "tensorflow", "dtype_policy": "mixed_bfloat16", "fused_batchnorm": None,
           "measured": "2026-12-04"}
    (tmp_path / throughput.THROUGHPUT_FILE).write_text(json.dumps({
        "device": "CPU: a", "backend": "tensorflow", "dtype_policy": "mixed_bfloat16", "batch_size": 128,
        "matmul_peak_gflops_per_second": {"float32": 200.0}, "measured": "2026-12-06",
        "models": {"model3": row, "model2": {**row, **old}}}))
    assert throughput.rate("model3", tmp_path)[1]["batch_size"] == 128  # measured with the file
    assert throughput.rate("model2", tmp_path)[1]["batch_size"] is None  # kept, its batch unknown
    record = {"model": "model2", "device": "CPU: a", "dtype_policy": "mixed_bfloat16", "batch_size": 128,
              "speed": {"matmul_peak_gflops_per_second": 300.0}}
    assert budget.expected_gflops(record, tmp_path)[1] == "half the matmul peak"
    # Saved again, the kept row keeps its unknown batch rather than taking the new one.
    throughput.save(tmp_path, device="CPU: a", backend="tensorflow", dtype_policy="mixed_bfloat16", batch=64,
                    peak={"float32": 200.0}, models={"model3": row})
    assert throughput.rate("model2", tmp_path)[1]["batch_size"] is None
    assert throughput.rate("model3", tmp_path)[1]["batch_size"] == 64
