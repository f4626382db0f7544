"""The benchmark scripts still run (their figures are for people; this only checks they work)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import keras
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_model_throughput_prints_the_device_the_peak_and_a_line_per_model(capsys):
    module = load("model_throughput")
    module.main(["--models", "model1,model2", "--batch", "4", "--steps", "1", "--warmup", "1",
                 "--precision", "float32", "--peak-size", "256", "--per-layer", "3"])
    out = capsys.readouterr().out
    assert out.startswith("device: ") and "batch 4" in out and "input alone" in out
    assert "MixUp/CutMix inside the compiled step (model1" in out
    peak = float(re.search(r"matmul peak \(256x256\): float32 ([\d,]+) GFLOP/s", out)[1].replace(",", ""))
    lines = {m["label"]: m for m in re.finditer(
        r"^(?P<label>model\d( without augmentation)?): (?P<rate>[\d,]+) img/s, (?P<gflops>[\d,]+) GFLOP/s, "
        r"(?P<percent>\d+)% of this machine's float32 matmul peak \((?P<peak>[\d,]+) GFLOP/s\).*"
        r"; (?P<ms>[\d.]+) ms/step, (?P<work>[\d.]+) GFLOP/image, computed in (?P<dtype>\w+)$", out, re.M)}
    assert list(lines) == ["model1", "model1 without augmentation", "model2", "model2 without augmentation"]
    for m in lines.values():
        rate = 4 / (float(m["ms"]) / 1e3)
        assert float(m["rate"].replace(",", "")) == pytest.approx(rate, rel=0.02, abs=1)
        assert float(m["work"]) == 0.185  # 0.1846 (model1) and 0.1848 (model2) GFLOP, printed to 3 places
        assert m["dtype"] == "float32"
        assert float(m["peak"].replace(",", "")) == pytest.approx(peak, abs=1)
    # The per-layer breakdown names each model's layers, the dense one with its GFLOP/s.
    assert "model1: where a training step's" in out and "model2: where a training step's" in out
    assert re.search(r"^  fc1 +Dense +[\d.]+ ms +[\d.]+% +[\d,]+ GFLOP/s$", out, re.M)
    assert "by kind: " in out
    # Every model is timed in the precision asked for (clear_session resets the policy).
    import keras

    previous = keras.config.dtype_policy()
    try:
        module.main(["--models", "model1,model2", "--batch", "4", "--steps", "1", "--warmup", "1",
                     "--precision", "mixed_bfloat16", "--peak-size", "64", "--no-mixing"])
    finally:
        keras.config.set_dtype_policy(previous)
    out = capsys.readouterr().out
    assert out.count("computed in bfloat16") == 4, out


@pytest.mark.slow
def test_model_throughput_times_each_layer_in_both_precisions_in_one_run(tmp_path, capsys):
    """--save-layers keeps every layer's time per precision; each layer's backward pass is the
    one a step runs: no gradient for the input of the augmentation or of the first convolution."""
    import keras

    from tinylib import layer_times as layer_record

    module = load("model_throughput")
    previous = keras.config.dtype_policy()
    try:
        module.main(["--models", "model2", "--batch", "4", "--steps", "1", "--warmup", "1", "--no-mixing",
                     "--precision", "float32,mixed_bfloat16", "--peak-size", "64", "--per-layer", "3",
                     "--save-layers", str(tmp_path)])
        with pytest.raises(SystemExit):  # throughput.json holds one precision's rates
            module.main(["--models", "model2", "--precision", "float32,mixed_bfloat16", "--save", str(tmp_path)])
        with pytest.raises(SystemExit):  # nothing per layer to save
            module.main(["--models", "model2", "--save-layers", str(tmp_path)])
        with pytest.raises(SystemExit):  # nothing to compare: one precision would replace the two saved
            module.main(["--models", "model2", "--per-layer", "3", "--save-layers", str(tmp_path)])
    finally:
        keras.config.set_dtype_policy(previous)
    out = capsys.readouterr().out
    assert out.count("device: ") == 2 and out.count("matmul peak (64x64)") == 1  # one peak for both precisions
    entry = layer_record.measurement("model2", tmp_path)
    assert entry["batch_size"] == 4
    for policy, computed in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        side = entry["policies"][policy]
        assert side["computed_in"] == computed and side["step_seconds"] > 0
        rows = {row["layer"]: row for row in side["layers"]}
        assert not rows["augmentation"]["input_gradient"] and not rows["conv1"]["input_gradient"]
        assert rows["pool1"]["input_gradient"] and rows["conv2"]["input_gradient"]
        conv1 = 62 * 62 * 3 * 3 * 3 * 32 * 2 * 4 / 1e9  # forward FLOPs of the batch
        assert rows["conv1"]["gflop"] == pytest.approx(2 * conv1, rel=1e-3)  # forward and the weights' gradient
        assert rows["conv1"]["input_channels"] == 3 and rows["pool1"]["gflop"] == 0
    assert "not yet measured" not in layer_record.story("model2", tmp_path)


def test_speed_choices_reads_each_variants_measurement_and_compares_it_with_the_old_defaults(monkeypatch, capsys):
    module = load("speed_choices")
    rates, peaks = {"old": 700, "new": 1400}, {"old": 210.0, "new": 240.0}

    def fake_run(command, env, **kwargs):
        variant = "new" if "auto" in command else "old"
        assert kwargs["preexec_fn"] is module.tied_to_this_process  # a killed benchmark stops its child
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "3" and "--no-mixing" in command
        for kernel in ("TINYLIB_FUSED_BATCHNORM", "TINYLIB_FUSED_ADAM"):  # the old defaults: Keras' own
            assert env.get(kernel) == ("0" if variant == "old" else None)
        assert env.get("TINYLIB_STEPS_PER_EXECUTION") == ("1" if variant == "old" else None)
        folder = Path(command[command.index("--save") + 1])
        (folder / "throughput.json").write_text(json.dumps({
            "matmul_peak_gflops_per_second": {"float32": peaks[variant], "bfloat16": 384.0},
            "models": {"model2": {"images_per_second": rates[variant], "train_gflop_per_image": 0.192}}}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    module.main(["--models", "model2", "--only", "old,new", "--rounds", "1"])
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["old", "700", "1.00", "64%", "210"]  # each variant's own peak, last
    assert table[2].split() == ["new", "1,400", "2.00", "112%", "240"]
    with pytest.raises(SystemExit):
        module.main(["--only", "old,turbo"])


def test_a_short_last_call_is_timed_by_the_steps_it_ran(monkeypatch):
    """With several steps per compiled call Keras numbers a short last call as if it were
    full; timing by those numbers made 4 steps per call look 1.45x faster than it was."""
    import keras
    import numpy as np

    module = load("model_throughput")

    class StepsAsClock(module._StepClock):  # the "time" is the number of steps actually run
        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((batch, float(keras.ops.convert_to_numpy(self.model.optimizer.iterations))))

    monkeypatch.setattr(module, "_StepClock", StepsAsClock)
    monkeypatch.setitem(module.SETTINGS, "steps_per_execution", 4)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    images, labels = np.zeros((14, 2), "uint8"), np.eye(3, dtype="float32")[np.arange(14) % 3]
    # 7 steps of 2 in calls of 4: the second call runs 3 steps, and Keras numbers its end 7.
    assert module.time_training(model, images, labels, batch=2, steps=5, warmup=2) == pytest.approx(1.0)


def test_run_speed_reads_each_runs_record_and_compares_it_with_the_first_variant(monkeypatch, capsys):
    module = load("run_speed")
    rates = {"old": 600.0, "new": 1260.0}

    def fake_run(command, env, **kwargs):
        variant = command[command.index("--name") + 1].removeprefix("speed-")
        assert kwargs["preexec_fn"] is module.tied_to_this_process  # a killed benchmark stops its run
        assert command[:4] == [module.sys.executable, "-m", "tinylib", "train"] and "--fresh" in command
        for kernel in ("TINYLIB_FUSED_BATCHNORM", "TINYLIB_FUSED_ADAM"):  # the old defaults: Keras' own
            assert env.get(kernel) == ("0" if variant == "old" else None)
        assert env.get("TINYLIB_STEPS_PER_EXECUTION") == ("1" if variant == "old" else None)
        run = Path(command[command.index("--runs") + 1]) / f"speed-{variant}"
        run.mkdir()
        (run / "record.json").write_text(json.dumps({
            "train_images_per_second": rates[variant], "dtype_policy": "float32", "device": "CPU: test",
            "speed": {"fraction_of_matmul_peak": 0.5, "matmul_peak_dtype": "float32",
                      "matmul_peak_gflops_per_second": 220.0}}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    module.main(["--only", "old,new"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["old"][1:4] == ["600", "1.00", "50%"]
    assert rows["new"][1:3] == ["1,260", "2.10"]
    with pytest.raises(SystemExit):
        module.main(["--only", "no-such-variant"])
    assert all(module.runnable(v) for v in module.VARIANTS)  # XLA too: an environment setting, as the others


def test_run_speed_trains_a_commits_own_code_from_its_files_with_a_data_cache_of_its_own(monkeypatch, capsys):
    """``code@COMMIT`` measures what no setting can undo: the commit's own tinylib trains,
    from a scratch copy of its files, with its own TINYLIB_HOME (its cache may differ)."""
    module = load("run_speed")
    real_run = subprocess.run
    seen, folders = {}, []

    def fake_run(command, **kwargs):
        if command[0] == "git":
            return real_run(command, **kwargs)
        name = command[command.index("--name") + 1]
        code, env = Path(kwargs["cwd"]), kwargs["env"]
        seen[name] = (code, env.get("TINYLIB_HOME"), (code / "tinylib" / "train.py").is_file(),
                      env.get("PYTHONPATH"), env.get("PYTHONSAFEPATH"))
        folders.append((name, code))
        run = Path(command[command.index("--runs") + 1]) / name
        run.mkdir()
        record = {"train_images_per_second": 500.0 if name == "speed-code-HEAD" else 1000.0,
                  "dtype_policy": "float32", "device": "CPU: test"}
        if name != "speed-code-HEAD":
            record["speed"] = {"fraction_of_matmul_peak": 0.5, "matmul_peak_dtype": "float32",
                               "matmul_peak_gflops_per_second": 220.0}
        (run / "record.json").write_text(json.dumps(record))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    monkeypatch.setenv("TINYLIB_HOME", "/the/shells/home")
    monkeypatch.setenv("PYTHONSAFEPATH", "1")  # would leave the working folder off the path
    monkeypatch.delenv("TINYLIB_DATA", raising=False)
    with pytest.raises(SystemExit):  # that code prepares its own cache: from where?
        module.main(["--only", "code@HEAD,new"])
    assert "set TINYLIB_DATA" in capsys.readouterr().err and not seen
    monkeypatch.setenv("TINYLIB_DATA", "/the/dataset")
    module.main(["--only", "code@HEAD,new", "--rounds", "2"])
    out = capsys.readouterr().out
    code, home, has_tinylib, path, safe_path = seen["speed-code-HEAD"]
    assert has_tinylib and code != module.HERE.parent and not code.exists()  # a scratch copy, removed after
    assert path == str(code) and safe_path is None  # its tinylib first, whatever the shell says
    assert [c for n, c in folders if n == "speed-code-HEAD"] == [code, code]  # one copy for both rounds
    assert home and home.startswith(str(code)) and home != "/the/shells/home"
    assert seen["speed-new"][:2] == (module.HERE.parent, "/the/shells/home")
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["code@HEAD"][1:3] == ["500", "1.00"] and "no peak in its record" in out
    assert rows["new"][1:3] == ["1,000", "2.00"]
    with pytest.raises(SystemExit, match="names no commit"):
        module.main(["--only", "code@no-such-commit-here,new"])


def test_first_step_prints_the_first_batchs_seconds_both_ways_for_each_model(capsys):
    module = load("first_step")
    best = module.main(["--models", "model1", "--batch", "4", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "batch 4, fastest of 1 rounds" in out
    row = re.search(r"^model1 +([\d.]+)s +([\d.]+)s +([\d.]+)$", out, re.M)
    assert row, out
    assert set(best) == {("model1", variant) for variant in module.VARIANTS}
    assert all(0 < seconds < 600 for seconds in best.values())
    assert float(row[3]) == pytest.approx(best["model1", module.VARIANTS[0]] / best["model1", module.VARIANTS[1]],
                                          abs=0.01)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="layer_times times TensorFlow")
def test_each_layers_time_is_net_of_the_sum_and_gradient_that_stand_in_for_the_rest_of_the_step(monkeypatch):
    """A layer timed alone is differentiated through a sum of its output that a training step
    does not compute: its row subtracts that bookkeeping, timed on its own, and never goes
    below zero. The timer is faked (each layer's step, then its bookkeeping, in turn)."""
    from tinylib import models

    module = load("model_throughput")
    timings = iter([5.0, 2.0, 1.0, 3.0] * 20)  # a layer at 5 s with 2 s of bookkeeping; one at 1 s with 3
    timed = []

    def fake_fastest(run, repeats):
        timed.append(run)
        return next(timings)

    monkeypatch.setattr(module, "_fastest", fake_fastest)
    model = models.build_model("model2", num_classes=3, compile=False)
    rows = module.layer_times(model, batch=2)
    assert len(timed) == 2 * len(rows) and len(rows) >= 4
    assert [(r["seconds"], r["baseline_seconds"]) for r in rows[:4]] == [(3.0, 2.0), (0.0, 3.0), (3.0, 2.0), (0.0, 3.0)]
    for run in timed[:4]:  # the passes timed run: the first layer's step and bookkeeping, then the next's
        run()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="it compares TensorFlow's kernel with Keras'")
def test_adam_update_times_both_ways_and_their_weights_agree(capsys):
    rows = load("adam_update").main(["--models", "model1", "--steps", "1"])
    out = capsys.readouterr().out
    assert re.search(r"^model1 +[\d,]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.e+-]+$", out, re.M), out
    assert rows["model1"]["keras_ms"] > 0 and rows["model1"]["fused_ms"] > 0
    assert rows["model1"]["apart"] < 1e-6  # four steps of 1e-4 each way: float rounding apart at most


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="it reads TensorFlow's profiler")
def test_profile_step_sums_the_traces_kernels_per_layer_and_type(capsys):
    keras.optimizers.Adam()  # as in a process that made optimizers before: this one's name is numbered
    figures = load("profile_step").main(["--model", "model1", "--steps", "2", "--batch", "4", "--precision",
                                         "float32"])
    out = capsys.readouterr().out
    assert re.search(r"^model1, batch 4, float32, .*: [\d.]+ ms a step", out, re.M), out
    layers = figures["layers"]
    assert {"optimizer update", "conv1", "conv1 (backward)"} <= set(layers), layers
    assert figures["types"].get("ImageProjectiveTransformV3", 0) > 0  # the augmentation, inside the step
    assert sum(layers.values()) == pytest.approx(sum(figures["types"].values()))
    assert 0 < figures["wall_seconds"] < 60


def test_profile_step_names_each_kernels_row_from_its_scopes():
    layer_of = load("profile_step").layer_of
    assert layer_of("StatefulPartitionedCall/model2_1/conv1_1/Relu:_MklNativeFusedConv2D", "model2", "adam") == "conv1"
    assert layer_of("StatefulPartitionedCall/gradient_tape/model2_1/conv2_1/convolution/Conv2DBackpropFilter:X",
                    "model2", "adam") == "conv2 (backward)"
    assert layer_of("StatefulPartitionedCall/adam/Sqrt_13:Sqrt", "model2", "adam") == "optimizer update"
    assert layer_of("StatefulPartitionedCall/model2_1/Cast:Cast", "model2", "adam") == "loss, metrics and the rest"
    assert layer_of("StatefulPartitionedCall/Equal:Equal", "model2", "adam") == "loss, metrics and the rest"
    assert layer_of("StatefulPartitionedCall/model2_1/block_1/Relu:Relu", "model2", "adam", {"block_1"}) == "block_1"
    assert layer_of("StatefulPartitionedCall/model2_1/block_1_1/Relu:Relu", "model2", "adam", {"block_1"}) == "block_1"
    # A process that made optimizers before names this one 'adam_3' (its scope 'adam_3' or 'adam_3_1').
    for scope in ("adam_3", "adam_3_1"):
        assert layer_of(f"StatefulPartitionedCall/{scope}/Sqrt:Sqrt", "model2", "adam_3") == "optimizer update"
    assert layer_of("StatefulPartitionedCall/adam/Sqrt:Sqrt", "model2", "adam_3") != "optimizer update"


def test_bn_statistics_re_estimates_over_each_family_of_the_runs_augmentation(synthetic, tiny_env, monkeypatch):
    import numpy as np

    from tinylib import augment, data, evaluate, models, recalibration, runs

    module = load("bn_statistics")
    recorded = runs._augmentation_config(keras.Sequential([augment.augmentation()]))
    found = module.variants(recorded)
    assert found["none (the images as they are)"] is None
    assert found["flip only"]["horizontal_flip"] and found["flip only"]["rotation_range"] == 0
    assert found["brightness only"]["brightness_range"] == recorded["brightness_range"]
    assert found["geometry only"]["zoom_range"] == recorded["zoom_range"] and not found["geometry only"]["horizontal_flip"]
    assert found["all, at half the ranges"]["rotation_range"] == recorded["rotation_range"] / 2
    assert found["all, at half the ranges"]["zoom_range"] == pytest.approx([0.9, 1.1])  # 0.8-1.2, halved about 1
    assert found["all, at a tenth of the ranges"]["brightness_range"] == pytest.approx([0.98, 1.02])
    whole = found["whole-pixel shifts only"]  # up to 12.8 of 64 pixels, as IDG's int 13: 0 to 12 whole pixels
    assert whole["width_shift_range"] == whole["height_shift_range"] == 13 and whole["rotation_range"] == 0
    assert found["all (as the run trained)"] == {k: v for k, v in recorded.items() if k not in ("layer", "seed")}
    # Shifts in pixels keep their unit; a float zoom is IDG's [1 - z, 1 + z]; families not trained have no row.
    other = module.variants({"layer": "ImageDataGeneratorAugment", "width_shift_range": 5, "height_shift_range": 3.0,
                             "zoom_range": 0.1, "brightness_range": None, "horizontal_flip": False})
    assert "flip only" not in other and "brightness only" not in other
    assert other["whole-pixel shifts only"]["width_shift_range"] == 5 and other["whole-pixel shifts only"][
        "height_shift_range"] == 4
    assert other["all, at a tenth of the ranges"]["width_shift_range"] == 1  # whole pixels still
    assert other["all, at a tenth of the ranges"]["height_shift_range"] == pytest.approx(0.3 / 64)  # a fraction now
    assert other["geometry only"]["zoom_range"] == pytest.approx([0.9, 1.1])
    assert "whole-pixel shifts only" not in module.variants({"layer": "ImageDataGeneratorAugment", "rotation_range": 5})
    for untrained in (None, {"layer": "RandomResizedCrop"}):
        with pytest.raises(ValueError, match="ImageDataGeneratorAugment"):
            module.variants(untrained)

    # The premise of the whole-pixel row: its images are pixels copied, a tenth of the ranges interpolates.
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3)).astype("uint8")
    copied = module.augmented(images, whole, seed=1)
    assert np.allclose(copied, np.round(copied), atol=1e-3) and not np.array_equal(copied, images)
    assert set(np.unique(np.round(copied)).astype(int)) <= set(np.unique(images))
    # (IDG's brightness step truncates to whole grey levels: without it, a tenth's values lie between the pixels')
    tenth = module.augmented(images, {**found["all, at a tenth of the ranges"], "brightness_range": None}, seed=1)
    assert not np.allclose(tenth, np.round(tenth), atol=1e-3)

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    dataset = data.load()
    keras.utils.set_random_seed(0)
    model = models.build_model("model4", num_classes=dataset.num_classes, weights=None)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    lines = []
    scores = module.measure(model, dataset, recorded, 8, report=lines.append, run_batch=4)
    batched = "all (as the run trained), in its batches of 4"
    assert list(scores) == ["the statistics training left", *found, batched] and len(lines) == len(scores)
    assert module.plan(recorded, run_batch=4)[batched] == (found["all (as the run trained)"], 4)
    assert list(module.plan(recorded, run_batch=recalibration.BATCH_SIZE)) == list(found)  # no second row the same
    # Its clean row is the re-estimate `evaluate --recalibrate-bn` publishes: the same statistics.
    module.measure(model, dataset, recorded, 8, report=lines.append, only=["none"])
    recalibration.evaluate_recalibrated(twin, dataset, images=8, progress=None)
    for name in ("block1_bn", "fc1_bn"):
        for which in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(getattr(model.get_layer(name), which), getattr(twin.get_layer(name), which),
                                       rtol=1e-5, atol=1e-6)
    assert list(module.measure(model, dataset, recorded, 8, report=lines.append, only=["geometry", "flip"])) == [
        "the statistics training left", "flip only", "geometry only"]

    # The validation images through the run's whole augmentation, scored as the model is: an
    # augmentation at zero ranges leaves them as they are, and so the plain score.
    still = {"layer": "ImageDataGeneratorAugment", "rotation_range": 0.0, "width_shift_range": 0.0,
             "height_shift_range": 0.0, "shear_range": 0.0, "zoom_range": 0.0, "horizontal_flip": False,
             "brightness_range": None, "fill_mode": "nearest"}
    plain = evaluate.evaluate(model, dataset.val, dataset.class_names).top1
    assert module.augmented_validation(model, dataset, still) == plain
    scored = []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate",
                        lambda m, split, names: scored.append(split.images) or real(m, split, names))
    module.augmented_validation(model, dataset, recorded)
    expected = module.augmented(dataset.val.images, found["all (as the run trained)"], seed=0)
    assert scored[0].dtype == np.uint8 and not np.array_equal(scored[0], dataset.val.images)
    np.testing.assert_array_equal(scored[0], np.clip(np.rint(expected), 0, 255).astype("uint8"))
