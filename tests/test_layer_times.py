"""Where bfloat16 pays, layer by layer: the record the benchmark writes and what the book says of it."""

from __future__ import annotations

import json

import pytest

from tinylib import layer_times

PEAK = {"float32": 200.0, "bfloat16": 400.0}


def _row(layer, kind, seconds, gflop=0.0, channels=3):
    return {"layer": layer, "kind": kind, "seconds": seconds, "gflop": gflop, "input_gradient": False,
            "input_channels": channels}


def _measured():
    """Four layers whose figures are easy to follow by hand: the products halve or better,
    the others hardly move."""
    return {"model2": {
        "float32": {"step_seconds": 0.2, "computed_in": "float32", "layers": [
            _row("augmentation", "ImageDataGeneratorAugment", 0.010), _row("conv1", "Conv2D", 0.030, 1.7),
            _row("conv2", "Conv2D", 0.060, 6.0, 32), _row("pool2", "MaxPooling2D", 0.010, 0.0, 64)]},
        "mixed_bfloat16": {"step_seconds": 0.1, "computed_in": "bfloat16", "layers": [
            _row("augmentation", "ImageDataGeneratorAugment", 0.008), _row("conv1", "Conv2D", 0.020, 1.7),
            _row("conv2", "Conv2D", 0.030, 6.0, 32), _row("pool2", "MaxPooling2D", 0.008, 0.0, 64)]}}}


def _save(folder, models=None):
    return layer_times.save(folder, device="CPU: test (2 cores)", backend="tensorflow", batch=128, peak=PEAK,
                            models=models or _measured(), fused_batchnorm=True)


def test_the_measurement_is_saved_with_its_conditions_and_earlier_models_are_kept(tmp_path):
    path = _save(tmp_path)
    assert path.name == layer_times.LAYERS_FILE
    data = json.loads(path.read_text())
    entry = data["models"]["model2"]
    assert entry["device"] == "CPU: test (2 cores)" and entry["batch_size"] == 128
    assert entry["matmul_peak_gflops_per_second"] == PEAK and set(entry["policies"]) == {"float32", "mixed_bfloat16"}
    other = {"model4": {"float32": _measured()["model2"]["float32"]}}
    _save(tmp_path, other)
    data = layer_times.read(tmp_path)
    assert set(data["models"]) == {"model2", "model4"}
    assert layer_times.measurement("model2", tmp_path) is not None
    assert layer_times.measurement("model4", tmp_path) is None  # one precision only: nothing to compare
    assert layer_times.read(tmp_path / "nowhere") == {}


def test_the_gain_is_worked_out_from_the_layers_as_by_hand(tmp_path):
    _save(tmp_path)
    gain = layer_times.precision_gain(layer_times.measurement("model2", tmp_path))
    assert gain["peak_ratio"] == pytest.approx(2.0)
    assert gain["step_ratio"] == pytest.approx(2.0)
    assert gain["images_per_second"] == pytest.approx((640, 1280))
    assert gain["products_ratio"] == pytest.approx(0.090 / 0.050)
    assert gain["others_ratio"] == pytest.approx(0.020 / 0.016)
    assert gain["others_share"] == pytest.approx((0.020 / 0.110, 0.016 / 0.066))
    assert gain["others"] == ["augmentation", "pool2"]  # slowest first
    # conv1 loses 20 - 1.7/400 = 15.75 ms to the peak, conv2 30 - 6/400 = 15 ms
    assert gain["furthest"]["layer"] == "conv1" and gain["furthest_rate"] == pytest.approx(85.0)
    assert gain["furthest_at_peak"] == pytest.approx(1.7 / 400)
    assert gain["layers_ratio"] == pytest.approx(0.110 / 0.066)
    # the products at 400 GFLOP/s: 7.7 GFLOP in 19.25 ms, the others as measured (16 ms)
    assert gain["bound"] == pytest.approx(0.110 / (0.016 + 0.01925))


def test_the_story_reads_every_figure_from_the_record(tmp_path):
    _save(tmp_path)
    text = layer_times.story("model2", tmp_path)
    assert text.startswith("**Where bfloat16 pays (Model 2; CPU: test (2 cores), tensorflow, batch 128, measured ")
    for figure in ("2.00× as fast in bfloat16 as in float32 (400 against 200 GFLOP/s)",
                   "became 2.00× as fast (640 to 1,280 images/s)", "dense layers became 1.80× as fast",
                   "the other layers 1.25×", "`augmentation` and `pool2` move memory",
                   "the augmentation stays float32 on purpose", "from 18% to 24%",
                   "loses the most time to the peak is `conv1`: 20.0 ms where the peak would take 4.2 (85 GFLOP/s): "
                   "its 3 input channels make a matrix product too thin",
                   "became 1.67× as fast", "they would have become 3.12× as fast"):
        assert figure in text, figure


def test_without_both_precisions_the_story_says_not_yet_measured_and_how(tmp_path):
    text = layer_times.story("model2", tmp_path)
    assert "not yet measured" in text
    assert "--precision float32,mixed_bfloat16" in text and "--save-layers book/results" in text


def test_the_figure_draws_a_bar_per_layer_and_precision(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from tinylib import plots

    _save(tmp_path)
    fig = plots.layer_times_by_precision(layer_times.measurement("model2", tmp_path))
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == [
        "augmentation (ImageDataGeneratorAugment)", "conv1 (Conv2D)", "conv2 (Conv2D)", "pool2 (MaxPooling2D)"]
    widths = sorted(round(bar.get_width(), 6) for bar in ax.patches if bar.get_width())
    assert widths == sorted([10.0, 30.0, 60.0, 10.0, 8.0, 20.0, 30.0, 8.0])
    assert {text.get_text() for text in ax.get_legend().get_texts()} == {"float32", "mixed_bfloat16"}


def test_without_a_bfloat16_peak_the_story_gives_the_steps_and_layers_it_has(tmp_path):
    """A CPU without bfloat16 instructions measures no bfloat16 peak (its bfloat16 is emulated):
    no ratio of peaks, no bound, and no KeyError."""
    layer_times.save(tmp_path, device="CPU: avx2 (2 cores)", backend="tensorflow", batch=128,
                     peak={"float32": 150.0}, models=_measured())
    gain = layer_times.precision_gain(layer_times.measurement("model2", tmp_path))
    assert gain["peak_ratio"] is None and gain["bound"] is None
    text = layer_times.story("model2", tmp_path)
    assert "no bfloat16 instructions" in text and "became 2.00× as fast (640 to 1,280 images/s)" in text
    assert "peak, with the other layers as measured" not in text and text.endswith("became 1.67× as fast.")


def test_the_story_says_fell_where_the_other_layers_share_fell_and_names_a_lone_layer(tmp_path):
    measured = _measured()
    for side in measured["model2"].values():
        side["layers"] = [row for row in side["layers"] if row["layer"] != "augmentation"]
    measured["model2"]["mixed_bfloat16"]["layers"][-1]["seconds"] = 0.004  # pool2: 10 ms -> 4 ms
    _save(tmp_path, measured)
    text = layer_times.story("model2", tmp_path)
    assert "`pool2` moves memory rather than multiply, and their share of the layers' time fell from 10% to 7%" \
        in text, text
    assert "on purpose" not in text  # no augmentation among them
    only_products = _measured()
    for side in only_products["model2"].values():
        side["layers"] = [row for row in side["layers"] if row["gflop"]]
    _save(tmp_path, only_products)
    assert "dense layers became 1.80× as fast. The product that loses the most time" in layer_times.story("model2", tmp_path)


def test_equal_shares_stay_and_the_figure_is_titled_with_the_model(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from tinylib import plots

    measured = _measured()
    fast = measured["model2"]["mixed_bfloat16"]["layers"]
    # bfloat16: the others 10 ms and the products 45 ms, 18% of 55, as float32's 20 ms of 110
    fast[0]["seconds"], fast[2]["seconds"], fast[3]["seconds"] = 0.005, 0.025, 0.005
    _save(tmp_path, measured)
    assert "their share of the layers' time stayed at 18%" in layer_times.story("model2", tmp_path)
    fig = plots.layer_times_by_precision(layer_times.measurement("model2", tmp_path))
    assert fig.axes[0].get_title().startswith("Model 2: CPU: test (2 cores), batch 128, measured ")


@pytest.mark.parametrize("peak", [PEAK, {"float32": 200.0}], ids=["bfloat16 peak", "no bfloat16 peak"])
def test_a_product_timed_at_zero_is_no_candidate_for_the_slowest(tmp_path, peak):
    """A layer's time is net of its bookkeeping and floored at 0: a product at 0 s (noise on a
    tiny layer) divided its FLOPs by zero in the gain and in the story."""
    measured = _measured()
    measured["model2"]["mixed_bfloat16"]["layers"][2]["seconds"] = 0.0  # conv2
    layer_times.save(tmp_path, device="CPU: test (2 cores)", backend="tensorflow", batch=128, peak=peak,
                     models=measured)
    gain = layer_times.precision_gain(layer_times.measurement("model2", tmp_path))
    assert gain["furthest"]["layer"] == "conv1" and gain["furthest_rate"] == pytest.approx(85.0)
    assert "`conv1`" in layer_times.story("model2", tmp_path)
