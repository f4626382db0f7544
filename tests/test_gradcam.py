"""Grad-CAM: maps that point at the evidence, on every model, on TensorFlow and JAX, and its figures."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # before pyplot: no window, ever

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tinylib import augment, gradcam, models, plots  # noqa: E402

NAMES = ["goldfish, Carassius auratus", "European fire salamander, Salamandra salamandra",
         "bullfrog, Rana catesbeiana", "Egyptian cat"]
BLOCK = (slice(5, 7), slice(1, 3))  # rows 5-6, columns 1-2 of an 8x8 image


def tiny_model():
    """Feature map = the image (1x1 conv, kernel 1); class 0 rises with brightness, class 1 falls."""
    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="feat")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions",
                                 kernel_initializer=keras.initializers.Constant([[1.0, -1.0]]),
                                 bias_initializer="zeros")(x)
    return keras.Model(inputs, outputs, name="tiny")


def block_image():
    image = np.zeros((8, 8, 1), np.float32)
    image[BLOCK] = 200.0
    return image


def block_mask():
    mask = np.zeros((8, 8), np.float32)
    mask[BLOCK] = 1.0
    return mask


def check_tiny_model(model):
    """Shared with the JAX subprocess: the map is the bright block for class 0, nothing for class 1."""
    assert gradcam.find_target_layer(model) == "feat"
    cams = gradcam.gradcam(model, np.stack([block_image(), block_image()]), class_index=[0, 1])
    assert cams.shape == (2, 8, 8) and cams.dtype == np.float32
    assert np.unravel_index(cams[0].argmax(), (8, 8)) in {(r, c) for r in (5, 6) for c in (1, 2)}
    np.testing.assert_allclose(cams[0], block_mask(), atol=1e-6)  # peak 1 on the block, 0 elsewhere
    np.testing.assert_array_equal(cams[1], 0.0)  # negative weights: ReLU leaves nothing, no NaN


def test_a_prediction_too_confident_for_float32_still_has_its_map():
    """Logits 2,500 apart: the rival's probability underflows to 0 and the class's rounds to
    1, so the probability's gradient is 0 everywhere; the logits' contrast still points at
    the block, and the model's softmax is never changed to get them."""
    model = tiny_model()
    model.get_layer("predictions").kernel.assign([[100.0, -100.0]])
    probabilities = gradcam.class_probabilities(model, block_image())
    assert probabilities[0, 0] == 1.0 and probabilities[0, 1] == 0.0
    cams = gradcam.gradcam(model, np.stack([block_image(), block_image()]), class_index=[0, 1])
    np.testing.assert_allclose(cams[0], block_mask(), atol=1e-6)
    np.testing.assert_array_equal(cams[1], 0.0)
    assert model.get_layer("predictions").activation.__name__ == "softmax"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def build():
    """Each model built once for the module (model3 is the slow one), 4 classes, random weights."""
    cache = {}

    def get(name):
        if name not in cache:
            keras.utils.set_random_seed(0)
            weights = {"weights": None} if name == "model5" else {}
            cache[name] = models.build_model(name, num_classes=len(NAMES), compile=False, **weights)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)


def test_gradcam_points_at_the_evidence_for_the_class():
    check_tiny_model(tiny_model())


def test_gradcam_defaults_to_the_predicted_class_and_takes_one_image():
    model = tiny_model()
    cam = gradcam.gradcam(model, block_image())  # one image; class 0 is the predicted one
    assert cam.shape == (1, 8, 8)
    np.testing.assert_allclose(cam[0], block_mask(), atol=1e-6)
    np.testing.assert_array_equal(gradcam.gradcam(model, block_image(), class_index=1), 0.0)
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        gradcam.gradcam(model, block_image(), class_index=[0, 1])


def test_find_target_layer_is_the_last_feature_map(build):
    assert gradcam.find_target_layer(build("model1")) == "pool2"
    assert gradcam.find_target_layer(build("model5")) == "resnet50"  # a nested model, as one layer
    augmented = models.build_model("model1", num_classes=4, compile=False,
                                   augmentation=augment.augmentation())
    assert gradcam.find_target_layer(augmented) == "pool2"


def test_find_target_layer_refuses_a_model_without_feature_maps():
    inputs = keras.Input((64, 64, 3), name="images")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)  # 4D, but the image, not features
    x = keras.layers.Flatten()(x)
    mlp = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="mlp")
    with pytest.raises(ValueError, match="'mlp' has no layer with a 4D"):
        gradcam.find_target_layer(mlp)


def test_the_maps_table_gives_each_models_heat_map_resolution(build, images):
    from types import SimpleNamespace

    runs = {name: SimpleNamespace(model=build(name), record={"weights": weights})
            for name, weights in (("model1", "random"), ("model5", "imagenet"))}
    scores = {"model1": SimpleNamespace(top1=0.125, top5=0.5), "model5": SimpleNamespace(top1=0.5, top5=0.875)}
    table = gradcam.maps_table(runs, scores)
    # 64 -> conv 62 -> pool 31 -> conv 29 -> pool 14; ResNet50's five halvings leave 2
    assert table.loc["model1"].tolist() == ["random", "pool2", "14×14", "12.5%", "50.0%"]
    assert table.loc["model5"].tolist() == ["imagenet", "resnet50", "2×2", "50.0%", "87.5%"]
    for name, run in runs.items():  # the size of the map the heat map is computed from
        features, _ = gradcam.split_at(run.model, gradcam.find_target_layer(run.model))
        assert gradcam.target_map_size(run.model) == tuple(features(images.astype(np.float32)).shape[1:3])
    assert gradcam.target_map_size(runs["model1"].model, "conv2") == (29, 29)


@pytest.mark.parametrize("name", ["model1", "model2", "model3", "model4", "model5"])
def test_gradcam_on_every_study_model(build, images, name):
    cams = gradcam.gradcam(build(name), images)
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    assert np.allclose(cams.max(axis=(1, 2)), 1.0)  # random weights still give a non-zero map


@pytest.mark.parametrize("name", ["model1", "model5"])
def test_split_at_round_trip(build, images, name):
    model = build(name)
    features, head = gradcam.split_at(model, gradcam.find_target_layer(model))
    maps = features(images.astype(np.float32), training=False)
    assert len(maps.shape) == 4
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(maps, training=False)),
                               model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_predict_top_k_is_sorted_and_named(build, images):
    model = build("model1")
    top = gradcam.predict_top_k(model, images[0], NAMES, k=3)
    probabilities = model.predict(images[:1], verbose=0)[0]
    assert [name for name, _ in top] == [NAMES[i] for i in np.argsort(-probabilities)[:3]]
    np.testing.assert_allclose([p for _, p in top], np.sort(probabilities)[::-1][:3], rtol=1e-5)


JAX_SCRIPT = textwrap.dedent("""
    import keras, numpy as np
    from tinylib import gradcam, models
    import test_gradcam

    assert keras.backend.backend() == "jax", keras.backend.backend()
    test_gradcam.check_tiny_model(test_gradcam.tiny_model())
    model = models.build_model("model1", num_classes=4, compile=False)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    cams = gradcam.gradcam(model, images)
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all() and 0 <= cams.min() <= cams.max() <= 1
    print("JAX OK")
""")


def test_gradcam_on_the_jax_backend(run_on_jax):
    result = run_on_jax(JAX_SCRIPT, "jax_gradcam.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "JAX OK" in result.stdout


def test_explain_prediction_shows_image_heatmap_and_top_k(build, images):
    model = build("model1")
    probabilities = model.predict(images[:1], verbose=0)[0]
    predicted = int(probabilities.argmax())
    label = int(np.argsort(probabilities)[0])  # the least probable: a wrong prediction, still in the top 4
    fig = plots.explain_prediction(model, images[0], NAMES, label=label, k=4)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    image_ax, cam_ax, bars_ax = fig.axes
    assert image_ax.get_title() == NAMES[label].split(",")[0]
    assert len(cam_ax.images) == 2  # the image and the heat map over it
    assert cam_ax.get_title() == f"Grad-CAM: {NAMES[predicted].split(',')[0]} (p={probabilities[predicted]:.2f})"
    bars = bars_ax.patches
    assert len(bars) == 4
    assert [t.get_text() for t in bars_ax.get_yticklabels()][0] == NAMES[predicted].split(",")[0]
    assert [t.get_text() for t in bars_ax.get_yticklabels()][-1] == NAMES[label].split(",")[0]
    assert bars[-1].get_facecolor() != bars[0].get_facecolor()  # the true class stands out
    assert len({b.get_facecolor() for b in bars[:-1]}) == 1
    unlabelled = plots.explain_prediction(model, images[0], NAMES, k=2)
    assert unlabelled.axes[0].get_title() == "image" and len(unlabelled.axes[2].patches) == 2


def test_gradcam_grid_one_row_per_image_one_column_per_model(build, images):
    chosen = {"first": build("model1"), "second": build("model2")}
    predicted = {name: model.predict(images, verbose=0).argmax(axis=1) for name, model in chosen.items()}
    labels = [predicted["first"][0], (predicted["first"][1] + 1) % len(NAMES)]  # right, then wrong
    fig = plots.gradcam_grid(chosen, images, NAMES, labels=labels)
    assert len(fig.axes) == 2 * 3
    first_row = fig.axes[:3]
    assert first_row[0].get_title() == NAMES[labels[0]].split(",")[0]
    assert first_row[1].get_title().startswith("first\npred: ")
    assert len(fig.axes[1].images) == 2 and len(fig.axes[3].images) == 1  # heat map over image; image
    assert matplotlib.colors.same_color(fig.axes[1].title.get_color(), "green")
    assert matplotlib.colors.same_color(fig.axes[4].title.get_color(), "red")
    for row in range(2):  # the second model: colour says whether it is right
        expected = "green" if predicted["second"][row] == labels[row] else "red"
        title = fig.axes[row * 3 + 2].title
        assert matplotlib.colors.same_color(title.get_color(), expected)
        assert NAMES[predicted["second"][row]].split(",")[0] in title.get_text()
    plain = plots.gradcam_grid({"only": build("model1")}, images[0], NAMES)
    assert len(plain.axes) == 2 and "," not in plain.axes[1].get_title()


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_gradcam_under_mixed_precision(images, policy):
    """What a GPU run uses: the maps and gradients come in half precision."""
    previous = keras.config.dtype_policy()
    keras.utils.set_random_seed(0)
    exact = models.build_model("model2", num_classes=len(NAMES), compile=False)
    keras.config.set_dtype_policy(policy)
    try:
        model = models.build_model("model2", num_classes=len(NAMES), compile=False)
        model.set_weights(exact.get_weights())  # the same network, computed in half precision
        maps = gradcam.gradcam(model, images)
    finally:
        keras.config.set_dtype_policy(previous)
    assert maps.dtype == np.float32 and maps.shape == (len(images), 64, 64)
    assert np.isfinite(maps).all() and 0.0 <= maps.min() and maps.max() <= 1.0
    # Not a map of zeros (what gradients lost to float16's range would give): each peaks at 1,
    # and it is the float32 map up to half precision's rounding.
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-6)
    reference = gradcam.gradcam(exact, images)
    for ours, theirs in zip(maps, reference):
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9


def test_resnet9s_softmax_activation_is_scored_on_its_logits_too(images):
    """ResNet-9 ends in an Activation("softmax"), not a Dense: its input is the logits, and
    a prediction too confident for float32 still has a map (scored on the probabilities,
    the gradient would round to zero)."""
    keras.utils.set_random_seed(0)
    model = models.build_model("resnet9", num_classes=len(NAMES), width=8, compile=False)
    model.get_layer("logit_scale").scale = 1e4  # logits thousands apart: a probability of exactly 1
    probabilities = gradcam.class_probabilities(model, images)
    assert np.all(probabilities.max(axis=1) == 1.0)
    cams = gradcam.gradcam(model, images)
    assert np.isfinite(cams).all() and all(cam.max() == pytest.approx(1.0) for cam in cams)
