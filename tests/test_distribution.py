"""Data parallel over several devices (Keras' distribution API, JAX): the same training as on one.

CI has one CPU; XLA splits it into two virtual devices, which is enough to check that
a run uses every device, spreads the batch over them, records how many, and follows
the loss trajectory of one device training the same global batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''
import json, sys
import keras
from tinylib import data, environment, train
from tinylib.profiles import Profile

profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=2, batch_size=8)
ds = data.load()
devices = keras.distribution.list_devices("cpu")
assert len(devices) == 2, devices
common = dict(augment=False, build_options={"dropout": 0.0}, callbacks=[], verbose=0, runs=sys.argv[1])
one = train.train_model("model2", ds, profile, batch_size=16, name="one-device", **common)
two = train.train_model("model2", ds, profile, devices=devices, name="two-devices", **common)
folders = {"one": train.run_folder("model2", profile, batch_size=16).name}
with environment.parallel_scope(devices):  # 16 is the profile's 8 times the devices in force
    folders["two"] = train.run_folder("model2", profile, batch_size=16).name
print(json.dumps({**{name: {k: run.record[k] for k in ("history", "devices", "batch_size")}
                        for name, run in (("one", one), ("two", two))}, "folders": folders}))
'''


def _on_two_jax_devices(forks, script: str, tmp_path, tiny_env, synthetic):
    """Run ``script`` on JAX with the CPU split into two devices; its last line, as JSON."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TINYLIB_DATA": str(synthetic), "TINYLIB_HOME": str(tiny_env), "PYTHONPATH": str(REPO),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = forks.run(["-c", script, tmp_path / "runs"], env=env, cwd=tmp_path)  # tests/forks.py
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_train_like_one_device_with_the_same_global_batch(forks, tmp_path, tiny_env, synthetic):
    runs = _on_two_jax_devices(forks, SCRIPT, tmp_path, tiny_env, synthetic)
    assert (runs["one"]["devices"], runs["one"]["batch_size"]) == (1, 16)
    assert (runs["two"]["devices"], runs["two"]["batch_size"]) == (2, 16)  # the profile's 8 on each device
    assert runs["folders"] == {"one": "model2-smoke-jax-batch16", "two": "model2-smoke-jax"}  # a run of its own: one
    for key in ("loss", "val_loss", "accuracy"):
        one, two = runs["one"]["history"][key], runs["two"]["history"][key]
        assert len(one) == len(two) == 2
        assert two == pytest.approx(one, rel=1e-3, abs=1e-4), key


def test_one_device_needs_no_distribution():
    from tinylib import environment

    assert environment.data_parallel(["cpu:0"]) is None
    assert environment.device_count() == 1


FINE_TUNE_SCRIPT = '''
import json, sys
import keras
from tinylib import data, transfer
from tinylib.profiles import Profile

profile = Profile("smoke", classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=4)
devices = keras.distribution.list_devices("cpu")
runs = transfer.fine_tune(data.load(), profile, weights=None, stages=("head",), head_epochs=1, devices=devices,
                          runs=sys.argv[1], verbose=0)
print(json.dumps({k: runs["head"].record[k] for k in ("devices", "batch_size", "history", "finished")}))
'''


@pytest.mark.slow
def test_fine_tuning_uses_every_device(forks, tmp_path, tiny_env, synthetic):
    head = _on_two_jax_devices(forks, FINE_TUNE_SCRIPT, tmp_path, tiny_env, synthetic)
    assert head["finished"] and (head["devices"], head["batch_size"]) == (2, 8)
    assert all(value == value for value in head["history"]["loss"])  # a number, not NaN


def test_batches_the_devices_cannot_share_are_refused_before_training():
    """A batch, or an epoch's last partial batch, that the devices do not divide fails at
    that step under data parallelism: hours in, and again at every resume."""
    from tinylib.train import _check_batches_split

    _check_batches_split(1, 128, 100_000, 10_000)  # one device: anything goes
    for devices in (2, 4, 8):  # the full profile on the usual counts: batches of 128 a device
        _check_batches_split(devices, 128 * devices, 100_000, 10_000)
    with pytest.raises(ValueError, match=r"3 devices cannot share the last training batch \(160 images\) or the "
                                         r"last validation batch \(16 images\) equally"):
        _check_batches_split(3, 384, 100_000, 10_000)
    with pytest.raises(ValueError, match=r"cannot share a batch \(100 images\).*CUDA_VISIBLE_DEVICES"):
        _check_batches_split(8, 100, 800, 80)
