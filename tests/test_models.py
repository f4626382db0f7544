"""tinylib.models against the study's Keras summaries.

Run once per backend: KERAS_BACKEND=tensorflow and KERAS_BACKEND=jax.
"""

import functools

import keras
import numpy as np
import pytest

from tinylib import models
from tinylib.augment import ImageDataGeneratorAugment, RandomAffineAugment, augmentation

C, B, A, P, F, D, DO, G = (
    "Conv2D",
    "BatchNormalization",
    "Activation",
    "MaxPooling2D",
    "Flatten",
    "Dense",
    "Dropout",
    "GlobalAveragePooling2D",
)

# (layer class, output shape without batch, parameters), num_classes=200.
STUDY_TABLES = {
    "model1": [
        (C, (62, 62, 32), 896), (P, (31, 31, 32), 0),
        (C, (29, 29, 64), 18_496), (P, (14, 14, 64), 0),
        (F, (12_544,), 0),
        (D, (1024,), 12_846_080), (D, (200,), 205_000),
    ],
    "model2": [
        (C, (62, 62, 32), 896), (P, (31, 31, 32), 0),
        (C, (29, 29, 64), 18_496), (P, (14, 14, 64), 0),
        (C, (12, 12, 128), 73_856), (P, (6, 6, 128), 0),
        (F, (4_608,), 0),
        (D, (512,), 2_359_808), (DO, (512,), 0), (D, (200,), 102_600),
    ],
    "model3": [
        (C, (64, 64, 64), 1_792), (B, (64, 64, 64), 256), (A, (64, 64, 64), 0),
        (C, (64, 64, 64), 36_928), (B, (64, 64, 64), 256), (A, (64, 64, 64), 0),
        (P, (32, 32, 64), 0),
        (C, (32, 32, 128), 73_856), (B, (32, 32, 128), 512), (A, (32, 32, 128), 0),
        (C, (32, 32, 128), 147_584), (B, (32, 32, 128), 512), (A, (32, 32, 128), 0),
        (P, (16, 16, 128), 0),
        (C, (16, 16, 256), 295_168), (B, (16, 16, 256), 1_024), (A, (16, 16, 256), 0),
        (C, (16, 16, 512), 1_180_160), (B, (16, 16, 512), 2_048), (A, (16, 16, 512), 0),
        (P, (8, 8, 512), 0),
        (F, (32_768,), 0),
        (D, (4096,), 134_221_824), (B, (4096,), 16_384), (A, (4096,), 0),
        (D, (1024,), 4_195_328), (B, (1024,), 4_096), (A, (1024,), 0),
        (D, (200,), 205_000),
    ],
    "model4": [
        (C, (64, 64, 64), 1_792), (B, (64, 64, 64), 256), (A, (64, 64, 64), 0),
        (P, (32, 32, 64), 0),
        (C, (32, 32, 128), 73_856), (B, (32, 32, 128), 512), (A, (32, 32, 128), 0),
        (P, (16, 16, 128), 0),
        (C, (16, 16, 256), 295_168), (B, (16, 16, 256), 1_024), (A, (16, 16, 256), 0),
        (P, (8, 8, 256), 0),
        (F, (16_384,), 0),
        (D, (512,), 8_389_120), (B, (512,), 2_048), (A, (512,), 0), (DO, (512,), 0),
        (D, (200,), 102_600),
    ],
}
STUDY_TOTALS = {
    "model1": 13_070_472,
    "model2": 2_555_656,
    "model3": 140_382_728,
    "model4": 8_866_376,
}
RESNET50_NOTOP_PARAMS = 23_587_712
MODEL5_HEAD = [
    (G, (2048,), 0),
    (D, (1024,), 2_098_176),
    (DO, (1024,), 0),
    (D, (200,), 205_000),
]

HEAD_LAYERS = (keras.layers.InputLayer, keras.layers.Rescaling, RandomAffineAugment, ImageDataGeneratorAugment)


def architecture(model):
    """(class, output shape, params) of every layer after the 0-param head."""
    return [
        (type(layer).__name__, tuple(layer.output.shape[1:]), layer.count_params())
        for layer in model.layers
        if not isinstance(layer, HEAD_LAYERS)
    ]


@functools.lru_cache(maxsize=None)
def study_model(name):
    """Each study-sized model built once per test session (model3 is 140M)."""
    weights = None if name == "model5" else models.DEFAULT_WEIGHTS
    return models.build_model(name, weights=weights, compile=False)


def predict(model, x):
    """Inference on a tiny batch, without compiling a predict function."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def uint8_batch(n=2, size=64, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def saved_backbone():
    """A randomly initialised ResNet50 notop whose weights the tests save."""
    return keras.applications.ResNet50(
        include_top=False, input_shape=(64, 64, 3), weights=None
    )


# --- architectures -----------------------------------------------------------


@pytest.mark.parametrize("name", ["model1", "model2", "model3", "model4"])
def test_layers_match_the_study_summary(name):
    model = study_model(name)
    assert architecture(model) == STUDY_TABLES[name]
    assert model.count_params() == STUDY_TOTALS[name]


def test_model5_is_resnet50_notop_plus_the_study_head():
    model = study_model("model5")
    (backbone, *head) = architecture(model)
    assert backbone == ("Functional", (2, 2, 2048), RESNET50_NOTOP_PARAMS)
    assert head == MODEL5_HEAD
    assert model.count_params() == RESNET50_NOTOP_PARAMS + 2_098_176 + 205_000
    assert model.tinylib_weights == "random"


@pytest.mark.parametrize("name", list(models.MODELS))
def test_forward_pass_gives_class_probabilities(name):
    probabilities = predict(study_model(name), uint8_batch())
    assert probabilities.shape == (2, 200)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_head_rescales_uint8_to_unit_range():
    model = models.build_model("model2", num_classes=7, compile=False)
    rescale = model.layers[1]
    assert isinstance(rescale, keras.layers.Rescaling)
    assert rescale.scale == pytest.approx(1 / 255)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 7)


def test_model1_has_l2_on_every_kernel():
    small = dict(num_classes=7, input_shape=(16, 16, 3), compile=False)
    model = models.build_model("model1", l2=1e-3, **small)
    assert len(model.losses) == 4
    weighted = [layer for layer in model.layers if hasattr(layer, "kernel")]
    assert weighted and all(layer.kernel_regularizer is not None and layer.bias_regularizer is None
                            and layer.kernel_regularizer.l2 == pytest.approx(1e-3) for layer in weighted)
    kernels = sum(float(np.sum(np.square(keras.ops.convert_to_numpy(layer.kernel)))) for layer in weighted)
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(1e-3 * kernels,
                                                                                               rel=1e-5)
    unregularized = models.build_model("model1", l2=0, **small)
    assert len(unregularized.losses) == 0


# --- augmentation in the head ------------------------------------------------


def test_augmentation_sits_after_rescaling_and_only_acts_in_training():
    small = dict(num_classes=7, input_shape=(32, 32, 3), compile=False)
    augmented = models.build_model("model1", augmentation=augmentation(seed=0), **small)
    assert isinstance(augmented.layers[1], keras.layers.Rescaling)
    assert isinstance(augmented.layers[2], ImageDataGeneratorAugment)

    plain = models.build_model("model1", **small)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(augmented.get_layer(layer.name).get_weights())
    x = uint8_batch(n=4, size=32)
    inference = predict(augmented, x)
    np.testing.assert_allclose(inference, predict(plain, x), atol=1e-5)
    training = keras.ops.convert_to_numpy(augmented(x, training=True))
    assert np.abs(training - inference).max() > 1e-4


# --- names, compile, optimizers ------------------------------------------------


@pytest.mark.parametrize("alias", ["model1", "model_1", "Model 1", "MODEL-1"])
def test_names_are_normalized(alias):
    assert models.normalize_name(alias) == "model1"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="model1.*model5"):
        models.build_model("model9")


def test_list_models_describes_each_model():
    described = models.list_models()
    assert list(described) == ["model1", "model2", "model3", "model4", "model5", "resnet18", "resnet34", "resnet50",
                              "resnet9"]
    assert all(isinstance(text, str) and text for text in described.values())


def test_study_callbacks_are_exposed_as_data():
    expected = ("early_stopping", "reduce_lr_on_plateau")
    assert models.study_callbacks("Model 2") == expected
    assert models.study_callbacks("model1") == ()


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adam", keras.optimizers.Adam),
        ("rmsprop", keras.optimizers.RMSprop),
        ("sgd", keras.optimizers.SGD),
        ("nadam", keras.optimizers.Nadam),
    ],
)
def test_make_optimizer(name, cls):
    optimizer = models.make_optimizer(name, learning_rate=3e-3)
    assert isinstance(optimizer, cls)
    learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    assert learning_rate == pytest.approx(3e-3)


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="adam"):
        models.make_optimizer("adagrad")


def test_default_compile_is_adam_1e4_crossentropy_top1_top5():
    model = models.build_model("model2", num_classes=7, input_shape=(32, 32, 3))
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(1e-4)
    y = np.eye(7, dtype="float32")[[0, 3, 5, 6]]
    result = model.evaluate(uint8_batch(n=4, size=32), y, return_dict=True, verbose=0)
    assert set(result) == {"loss", "accuracy", "top5"}
    # Categorical cross-entropy of a near-uniform start is about log(7).
    assert result["loss"] == pytest.approx(np.log(7), rel=0.3)


def test_the_compiled_top5_is_the_books_top5():
    """With more than five classes, the metric Keras reports during training is the top-5
    accuracy the book's evaluation computes from the same probabilities (numpy's argsort
    as the oracle), not a top-k of fewer classes."""
    from tinylib import evaluate

    model = models.build_model("model2", num_classes=12, input_shape=(32, 32, 3))
    images = uint8_batch(n=24, size=32)
    labels = np.arange(24) % 12
    keras_top5 = model.evaluate(images, np.eye(12, dtype="float32")[labels], return_dict=True, verbose=0)["top5"]
    probabilities = model.predict(images, verbose=0)
    by_hand = np.mean([label in np.argsort(-p)[:5] for p, label in zip(probabilities, labels)])
    book = evaluate.evaluation_from_probabilities(probabilities, labels, [str(i) for i in range(12)]).top5
    assert keras_top5 == pytest.approx(by_hand) and book == pytest.approx(by_hand)
    assert 0 < by_hand < 1  # the check has something to tell apart


def test_compiled_model_with_augmentation_trains_one_step():
    model = models.build_model(
        "model2",
        num_classes=5,
        input_shape=(32, 32, 3),
        augmentation=augmentation(seed=0),
        optimizer="sgd",
    )
    y = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(uint8_batch(n=4, size=32), y, batch_size=4, epochs=1, verbose=0)
    # The compiled step ran with the augmentation in it: a finite loss, and the step changed the weights.
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0, history.history
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# --- weights -----------------------------------------------------------------------


def test_models_1_to_4_record_random_weights_and_refuse_pretrained():
    assert study_model("model4").tinylib_weights == "random"
    with pytest.raises(ValueError, match="no pretrained"):
        models.build_model("model1", weights="imagenet")


def test_model5_loads_a_local_backbone_weights_file(tmp_path, saved_backbone):
    saved = saved_backbone
    path = tmp_path / "w.weights.h5"
    saved.save_weights(path)
    model = models.build_model("model5", num_classes=3, weights=path, compile=False)
    assert model.tinylib_weights == str(path)
    loaded = model.get_layer("resnet50").get_weights()
    expected = saved.get_weights()
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        np.testing.assert_array_equal(got, want)
    # The comparison can fail: another random backbone differs.
    fresh = study_model("model5").get_layer("resnet50").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, expected))


def test_model5_loads_a_legacy_h5_file_like_the_official_one(tmp_path, saved_backbone):
    """The official notop file is in Keras 2's .h5 weights format."""
    h5py = pytest.importorskip("h5py")
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    saved = saved_backbone
    path = tmp_path / models.RESNET50_NOTOP_FILE
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, saved)
    model = models.build_model("model5", num_classes=3, weights=path, compile=False)
    backbone = model.get_layer("resnet50")
    for name in ("conv1_conv", "conv5_block3_3_conv"):
        np.testing.assert_array_equal(
            backbone.get_layer(name).get_weights()[0],
            saved.get_layer(name).get_weights()[0],
        )


def test_model5_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        models.build_model("model5", weights=missing)


def test_a_damaged_keras_download_never_hides_the_converted_weights(monkeypatch, tmp_path):
    """A download cut short (or a proxy's page) stays in Keras' cache under the weights'
    name: the converted weights are used instead; without them the error says to delete it."""
    from tinylib import pretrained

    damaged = tmp_path / "keras" / "models" / models.RESNET50_NOTOP_FILE
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"<html>blocked by the proxy</html>")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert models._keras_download() == (str(damaged), False)
    converted = tmp_path / "converted.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(converted)
    monkeypatch.setattr(pretrained, "installed", lambda include_top=False: converted)
    model = models.build_model("model5", num_classes=3, compile=False)
    assert model.get_layer("resnet50").tinylib_weights_source == pretrained.SOURCE

    monkeypatch.setattr(pretrained, "installed", lambda include_top=False: None)

    def corrupted(*args, **kwargs):  # what Keras' get_file raises when its download fails its hash
        raise ValueError("Incomplete or corrupted file detected.")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", corrupted)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="damaged") as caught:
        models.build_model("model5", num_classes=3, compile=False)
    assert str(damaged) in str(caught.value) and "python -m tinylib weights resnet50" in str(caught.value)


def test_model5_imagenet_download_failure_raises_a_clear_error(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("TINYLIB_HOME", str(tmp_path / "home"))  # no converted weights either
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline_get_file(*args, **kwargs):
        calls.append(args)
        raise Exception("URL fetch failure: [Errno -3] name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline_get_file)
    # No weights argument: ImageNet is model5's default.
    with pytest.raises(models.PretrainedWeightsUnavailable) as caught:
        models.build_model("model5", num_classes=3, compile=False)
    assert calls, "the ImageNet download path was not taken"
    message = str(caught.value)
    assert models.RESNET50_NOTOP_FILE in message
    assert "weights=None" in message
    assert "cannot reach" in message and "python -m tinylib weights resnet50" in message
    assert isinstance(caught.value, RuntimeError)
    assert "URL fetch failure" in str(caught.value.__cause__)


# --- beyond the study: ResNets for 64x64 and Model 5's options --------------------

# Trainable parameters of torchvision's ImageNet ResNets (its published totals, for
# 1000 classes and the 7x7 stem), moved to this book's network: the 3x3 stem has
# 64*3*9 weights instead of 64*3*49, and the classifier 200 outputs instead of 1000.
TORCHVISION_TOTALS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
FINAL_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_parameter_counts_match_torchvision_moved_to_64x64_and_200_classes(name):
    model = models.build_model(name, compile=False)
    stem_change = 64 * 3 * 9 - 64 * 3 * 49
    channels = FINAL_CHANNELS[name]
    head_change = (channels * 200 + 200) - (channels * 1000 + 1000)
    assert trainable_count(model) == TORCHVISION_TOTALS[name] + stem_change + head_change


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_stem_keeps_64x64_and_the_last_stage_sees_8x8(name):
    model = models.build_model(name, compile=False)
    assert model.get_layer("stem_conv").output.shape[1:3] == (64, 64)
    assert model.get_layer("stem_conv").kernel.shape[:2] == (3, 3)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    last_block = [layer for layer in model.layers if layer.name.endswith("_out")][-1]
    assert last_block.name.startswith("stage4") and last_block.output.shape[1:] == (8, 8, FINAL_CHANNELS[name])
    # What chapter 13 prints: each stage halves the side and doubles the channels (stage 1: 64 wide, x4 in a bottleneck).
    channels = FINAL_CHANNELS[name] // 8
    assert models.stage_shapes(model) == {f"stage{i}": (64 // 2 ** (i - 1), 64 // 2 ** (i - 1), channels * 2 ** (i - 1))
                                          for i in range(1, 5)}
    assert models.stage_shapes(models.build_model("model4", num_classes=5, compile=False)) == {}


def test_resnet_width_scales_channels_and_blocks_start_as_identity():
    narrow = models.build_model("resnet18", num_classes=5, width=8, compile=False)
    assert narrow.get_layer("stage4_block2_out").output.shape[-1] == 64
    # Zero-initialized last BatchNorm of each block: the residual branch adds 0 at first.
    gamma = narrow.get_layer("stage2_block1_bn2").gamma
    assert np.all(keras.ops.convert_to_numpy(gamma) == 0)
    assert np.all(keras.ops.convert_to_numpy(narrow.get_layer("stage2_block1_bn1").gamma) == 1)
    with pytest.raises(ValueError, match="depth"):
        models.resnet(keras.Input((64, 64, 3)), 5, depth=101)


# Page's ResNet-9 (the DAWNBench CIFAR-10 net, widths 64-128-256-512, no bias in its
# convolutions or its classifier): 6,573,120 trainable parameters for 10 classes.
PAGE_RESNET9_CIFAR10 = 6_573_120


def test_resnet9_has_pages_parameters_and_sees_32_16_8_pixel_maps():
    model = models.build_model("resnet9", num_classes=10, compile=False)
    assert trainable_count(model) == PAGE_RESNET9_CIFAR10 + 10  # + this classifier's 10 biases
    assert model.get_layer("stem_pool").output.shape[1:] == (32, 32, 64)
    assert model.get_layer("stage1_res_add").output.shape[1:] == (16, 16, 128)
    assert model.get_layer("stage3_res_add").output.shape[1:] == (4, 4, 512)
    wide = models.build_model("resnet9", width=64, stem_pool=False, compile=False)
    narrow = models.build_model("resnet9", width=32, stem_pool=False, compile=False)
    assert wide.get_layer("stage3_res_add").output.shape[1:] == (8, 8, 512)
    from tinylib import flops

    # Half the width, a quarter of the arithmetic (the stem's 3 input channels aside).
    assert flops.forward_flops(narrow) / flops.forward_flops(wide) == pytest.approx(0.25, rel=0.01)


@pytest.mark.parametrize("name", ["resnet9", "resnet18", "model4"])
def test_a_fresh_network_starts_unsure_near_the_chance_loss(name):
    """A fresh classifier should spread its bets: a cross-entropy near ln(classes) at
    initialisation. Far above it, the network starts confidently wrong, and the first
    steps of a high learning rate go into undoing that (ResNet-9 without Page's logit
    scale started at 12.6 against ln 200 = 5.3)."""
    keras.utils.set_random_seed(0)
    classes = 200
    model = models.build_model(name, num_classes=classes, compile=False,
                               **({"width": 16} if name.startswith("resnet") else {}))
    images = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3)).astype("uint8")
    probabilities = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
    labels = np.arange(32) % classes
    loss = -np.mean(np.log(probabilities[np.arange(32), labels]))
    assert loss < np.log(classes) + 1.0, f"{name} starts at cross-entropy {loss:.2f}, ln {classes} = {np.log(classes):.2f}"


def test_resnets_are_registered_beside_the_study_models():
    assert set(models.STUDY_MODELS) | set(models.BEYOND_STUDY) == set(models.MODELS)
    assert models.normalize_name("ResNet-18") == "resnet18"
    assert "64x64" in models.list_models()["resnet50"]
    assert models.build_model("resnet18", num_classes=5, width=4, compile=False).tinylib_weights == "random"


def test_resnet_softmax_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = models.build_model("resnet18", num_classes=5, width=4, compile=False)
        assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
        out = model(uint8_batch(n=2), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def test_imagenet_preprocess_matches_keras_preprocess_input():
    images = uint8_batch(n=2, size=8)
    layer = models.ImageNetPreprocess()
    got = keras.ops.convert_to_numpy(layer(images / 255.0))
    want = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_model5_upsamples_inside_the_model_and_keeps_its_parameters():
    model = models.build_model("model5", num_classes=5, weights=None, compile=False,
                               preprocess="imagenet", image_size=96)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.get_layer("upsample").output.shape[1:] == (96, 96, 3)
    assert model.get_layer("resnet50").output.shape[1:] == (3, 3, 2048)
    assert isinstance(model.get_layer("imagenet_preprocess"), models.ImageNetPreprocess)
    assert model.count_params() == RESNET50_NOTOP_PARAMS + 2_098_176 + 5 * 1024 + 5
    with pytest.raises(ValueError, match="preprocess"):
        models.build_model("model5", num_classes=5, weights=None, preprocess="torch")


def test_resolve_pretrained_falls_back_to_random_loudly_when_offline(monkeypatch, capsys, tmp_path):
    def offline_get_file(*args, **kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setenv("TINYLIB_HOME", str(tmp_path / "home"))  # no converted weights either

    monkeypatch.setattr(keras.utils, "get_file", offline_get_file)
    assert models.resolve_pretrained("imagenet") is None
    out = capsys.readouterr().out
    assert "WITHOUT PRETRAINED WEIGHTS" in out and models.RESNET50_WEIGHTS_URL in out
    assert "python -m tinylib weights resnet50" in out
    assert models.resolve_pretrained(tmp_path / "missing.h5") is None
    present = tmp_path / "present.weights.h5"
    present.write_bytes(b"")
    assert models.resolve_pretrained(present) == present
    assert models.resolve_pretrained(None) is None


@pytest.mark.parametrize("name", ["model1", "model2", "model4", "resnet18", "model5"])
def test_the_recorded_build_options_alone_rebuild_the_model(name):
    """A record keeps every architecture option, defaults included, and they rebuild the same network."""
    given = {"resnet18": {"width": 16}, "model5": {"image_size": 96, "preprocess": "imagenet"}}.get(name, {})
    model = models.build_model(name, num_classes=10, weights=None, compile=False, **given)
    options = model.tinylib_build_options
    assert given.items() <= options.items()
    assert set(options) == set(models.architecture_options(name)), "an option without its default"
    rebuilt = models.build_model(name, num_classes=10, weights=None, compile=False, **options)
    assert rebuilt.count_params() == model.count_params()
    assert [layer.output.shape for layer in rebuilt.layers] == [layer.output.shape for layer in model.layers]


def test_one_optimizer_factory_serves_the_study_and_the_recipes():
    """The same name makes the same optimizer in models and recipes; the study's SGD is plain."""
    from tinylib import optimizers, recipes

    assert models.make_optimizer is optimizers.make_optimizer is recipes.make_optimizer
    assert set(recipes.OPTIMIZERS) == set(optimizers.OPTIMIZERS)
    comparison_sgd = models.make_optimizer("sgd")  # plain SGD, Keras' default: the slides give no settings
    assert comparison_sgd.momentum == 0.0 and not comparison_sgd.nesterov
    recipe_sgd = recipes.Recipe(optimizer="sgd", momentum=0.9).make_optimizer()
    assert recipe_sgd.momentum == 0.9 and recipe_sgd.nesterov
    assert type(recipes.Recipe(optimizer="adamw").make_optimizer()) is type(models.make_optimizer("adamw"))


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_a_strided_block_centres_its_windows_on_the_pixels_its_shortcut_takes(stem_stride):
    """torchvision pads a strided 3x3 convolution by one pixel on every side, so output i is
    centred on input 2i, the pixel the strided 1x1 shortcut takes (Keras' "same" would
    centre it on 2i+1). A kernel that copies its centre shows where each window is centred."""
    model = models.build_model("resnet18", num_classes=5, width=4, stem_stride=stem_stride, compile=False)
    block = "stage2_block1"
    pad, main = model.get_layer(f"{block}_conv1_pad"), model.get_layer(f"{block}_conv1")
    shortcut = model.get_layer(f"{block}_proj_conv")
    size, channels = shortcut.input.shape[1], shortcut.input.shape[-1]
    centre = np.zeros(main.kernel.shape, "float32")
    centre[1, 1, 0, 0] = 1.0
    main.kernel.assign(centre)
    shortcut.kernel.assign(centre[1:2, 1:2])
    image = np.arange(size * size * channels, dtype="float32").reshape(1, size, size, channels)
    through_main = keras.ops.convert_to_numpy(main(pad(image)))[0, ..., 0]
    through_shortcut = keras.ops.convert_to_numpy(shortcut(image))[0, ..., 0]
    np.testing.assert_array_equal(through_main, image[0, ::2, ::2, 0])
    np.testing.assert_array_equal(through_shortcut, through_main)


def test_a_resnet_run_begun_before_the_symmetric_padding_is_rebuilt_or_refused_as_it_began(tmp_path):
    """A record written before ``strided_padding`` existed was built with Keras' "same"
    padding: it is read so (rebuilt that way, or refused by a run built the new way), not
    as the new default, which would resume it on another network without a word."""
    from tinylib import runs

    old = models.build_model("resnet18", num_classes=5, width=4, strided_padding="same", compile=False)
    new = models.build_model("resnet18", num_classes=5, width=4, compile=False)
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in old.layers)
    assert any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in new.layers)
    recorded = {key: value for key, value in new.tinylib_build_options.items() if key != "strided_padding"}
    assert models.recorded_options("resnet18", recorded)["strided_padding"] == "same"
    assert models.recorded_options("resnet18", new.tinylib_build_options)["strided_padding"] == "symmetric"
    assert "strided_padding" not in models.recorded_options("model4", {})  # only where the architecture has it
    before = {"model": "resnet18", "build_options": recorded}
    with pytest.raises(runs.RunConflict, match="build_options.strided_padding: 'same' -> 'symmetric'"):
        runs.check_same_run(tmp_path, before, {"model": "resnet18", "build_options": new.tinylib_build_options})
    runs.check_same_run(tmp_path, before, {"model": "resnet18", "build_options": old.tinylib_build_options})
