"""The benchmark scripts still run (their figures are for people; this only checks they work)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

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
        assert float(m["work"]) == 0.191
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


def test_speed_choices_reads_each_variants_lines_and_compares_them_with_the_old_defaults(monkeypatch, capsys):
    module = load("speed_choices")
    outputs = {
        "old": "model2: 700 img/s, 134 GFLOP/s, 64% of this machine's float32 matmul peak (210 GFLOP/s)\n"
               "model2 without augmentation: 725 img/s, 139 GFLOP/s, 66% of this machine's float32 matmul peak "
               "(210 GFLOP/s)\n",
        "new": "model2: 1,400 img/s, 268 GFLOP/s, 128% of this machine's float32 matmul peak (210 GFLOP/s); 70% of "
               "its bfloat16 peak (384)\n",
    }

    def fake_run(command, env, **kwargs):
        variant = "new" if "auto" in command else "old"
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "3" and "--no-mixing" in command
        return subprocess.CompletedProcess(command, 0, outputs[variant], "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    module.main(["--models", "model2", "--only", "old,new", "--rounds", "1"])
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["old", "700", "1.00", "64%"]
    assert table[2].split() == ["new", "1,400", "2.00", "128%"]
    with pytest.raises(SystemExit):
        module.main(["--only", "old,turbo"])
