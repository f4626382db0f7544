"""The benchmark scripts still run (their figures are for people; this only checks they work)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_model_throughput_prints_the_device_and_a_row_per_model(capsys):
    load("model_throughput").main(["--models", "model1,model2", "--batch", "4", "--steps", "1",
                                   "--warmup", "1", "--precision", "float32"])
    out = capsys.readouterr().out
    assert out.startswith("device: ") and "batch 4" in out and "input alone" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("model1 ", "model2 "))]
    assert [row[0] for row in rows] == ["model1", "model2"]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)  # ms/step, with and without augmentation
    assert "MixUp/CutMix inside the compiled step (model1" in out
    assert all(float(row[-2]) == 0.191 and float(row[-1]) > 0 for row in rows)  # GFLOP/image, GFLOP/s
