"""Semantics of tinylib.augment: what each transform does, and when.

Run once per backend: KERAS_BACKEND=tensorflow and KERAS_BACKEND=jax.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from tinylib import augment
from tinylib.augment import RandomAffineAugment, apply_affine

NO_CHANGE = dict(rotation=0, shift=0, shear=0, zoom=0, brightness=(1, 1), flip=False)


def random_images(n=2, size=16, seed=0):
    """Asymmetric (random) float images in [0, 1]."""
    return np.random.RandomState(seed).rand(n, size, size, 3).astype("float32")


def smooth_images(n=1, size=32):
    """Slowly varying images, so two resamples are close to one."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin(3 * x + 1), np.cos(2 * y), x * y], axis=-1)
    return np.repeat(((image + 1) / 2)[None], n, axis=0).astype("float32")


def numpy(x):
    return ops.convert_to_numpy(x)


# --- the pure, deterministic transform -------------------------------------


def test_identity_parameters_resample_to_the_input():
    images = random_images()
    np.testing.assert_allclose(numpy(apply_affine(images)), images, atol=1e-6)


def test_shift_right_with_nearest_fill_repeats_the_edge_column():
    images = random_images()
    out = numpy(apply_affine(images, shift_x=5, fill_mode="nearest"))
    np.testing.assert_allclose(out[:, :, 5:], images[:, :, :-5], atol=1e-6)
    for col in range(5):
        np.testing.assert_allclose(out[:, :, col], images[:, :, 0], atol=1e-6)


def test_shift_down_moves_rows_down():
    images = random_images()
    out = numpy(apply_affine(images, shift_y=3))
    np.testing.assert_allclose(out[:, 3:], images[:, :-3], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], images[:, 0], atol=1e-6)


def test_flip_parameter_mirrors_left_right():
    images = random_images()
    out = numpy(apply_affine(images, flip=1))
    np.testing.assert_allclose(out, images[:, :, ::-1], atol=1e-6)


def test_quarter_turn_about_the_centre_matches_rot90():
    images = random_images(n=1, size=9)
    out = numpy(apply_affine(images, angle=math.pi / 2))
    np.testing.assert_allclose(out[0], np.rot90(images[0]), atol=1e-5)


def test_composed_transform_equals_sequential_transforms_inside():
    images = smooth_images()
    angle, zoom, shift = 0.3, 0.85, 4.0
    composed = numpy(apply_affine(images, angle=angle, zoom=zoom, shift_x=shift))
    step = apply_affine(images, zoom=zoom)
    step = apply_affine(step, angle=angle)
    step = numpy(apply_affine(step, shift_x=shift))
    interior = (slice(None), slice(10, 22), slice(10, 22))
    np.testing.assert_allclose(composed[interior], step[interior], atol=0.02)
    # ...and the check has teeth: a different angle is far off.
    other = numpy(apply_affine(images, angle=-angle, zoom=zoom, shift_x=shift))
    assert np.abs(other[interior] - step[interior]).max() > 0.1


def test_affine_matrix_takes_one_parameter_set_per_image():
    matrix = numpy(augment.affine_matrix(8, 8, angle=[0.0, 0.1, 0.2], zoom=1.1))
    assert matrix.shape == (3, 8)
    np.testing.assert_allclose(matrix[:, 6:], 0)


# --- the random layer -------------------------------------------------------


def test_zero_ranges_are_identity_in_training():
    images = random_images()
    layer = RandomAffineAugment(**NO_CHANGE)
    np.testing.assert_allclose(numpy(layer(images, training=True)), images, atol=1e-6)


def test_inference_returns_input_unchanged_even_with_ranges_on():
    images = random_images(n=4)
    layer = augment.augmentation(seed=1)
    np.testing.assert_array_equal(numpy(layer(images)), images)
    np.testing.assert_array_equal(numpy(layer(images, training=False)), images)
    assert np.abs(numpy(layer(images, training=True)) - images).max() > 0.1


def test_flip_only_with_probability_one_mirrors_exactly():
    images = random_images(n=3)
    layer = RandomAffineAugment(**{**NO_CHANGE, "flip": True}, flip_probability=1.0)
    out = numpy(layer(images, training=True))
    np.testing.assert_allclose(out, images[:, :, ::-1], atol=1e-6)


def test_default_flip_mirrors_some_images_and_keeps_others():
    images = random_images(n=32, size=8)
    layer = RandomAffineAugment(**{**NO_CHANGE, "flip": True}, seed=3)
    out = numpy(layer(images, training=True))
    kept = np.all(np.isclose(out, images, atol=1e-6), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(out, images[:, :, ::-1], atol=1e-6), axis=(1, 2, 3))
    assert np.all(kept | mirrored)
    assert 4 <= mirrored.sum() <= 28


def test_brightness_multiplies_and_output_is_clipped_to_unit_range():
    images = np.full((2, 8, 8, 3), 0.6, "float32")
    darker = RandomAffineAugment(**{**NO_CHANGE, "brightness": (0.5, 0.5)})
    np.testing.assert_allclose(numpy(darker(images, training=True)), 0.3, atol=1e-6)
    brighter = RandomAffineAugment(**{**NO_CHANGE, "brightness": (2.0, 2.0)})
    np.testing.assert_allclose(numpy(brighter(images, training=True)), 1.0, atol=1e-6)


def test_default_augmentation_stays_within_unit_range():
    images = random_images(n=8, size=32)
    out = numpy(augment.augmentation(seed=0)(images, training=True))
    assert out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_each_training_call_draws_new_parameters():
    images = random_images(n=2)
    layer = augment.augmentation(seed=0)
    first = numpy(layer(images, training=True))
    second = numpy(layer(images, training=True))
    assert np.abs(first - second).max() > 0.05


def test_apply_with_a_seed_is_repeatable():
    images = random_images(n=2)
    layer = augment.augmentation()
    a, b = augment.apply(layer, images, seed=7), augment.apply(layer, images, seed=7)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a - augment.apply(layer, images, seed=8)).max() > 0.05


def test_augment_batch_returns_uint8_images_of_the_same_shape():
    images = (random_images(n=2, size=16) * 255).astype("uint8")
    out = augment.augment_batch(images, seed=0)
    assert out.dtype == np.uint8 and out.shape == images.shape
    single = augment.augment_batch(images[0], seed=0, **NO_CHANGE)
    np.testing.assert_array_equal(single, images[0])


def test_config_round_trip_and_saved_model_reload(tmp_path):
    layer = augment.augmentation(rotation=10, shift=(0.1, 0.3), zoom=0.1, seed=4)
    clone = RandomAffineAugment.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.shift == (0.1, 0.3)

    model = keras.Sequential(
        [keras.Input((8, 8, 3)), layer, keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    reloaded = loaded.layers[0]
    assert isinstance(reloaded, RandomAffineAugment)
    assert reloaded.get_config() == layer.get_config()


def test_layer_trains_inside_model_fit():
    """fit compiles the train step (jit under JAX), with the layer's RNG in it."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            augment.augmentation(seed=0),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x = random_images(n=8, size=8)
    y = np.eye(2, dtype="float32")[np.arange(8) % 2]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError):
        RandomAffineAugment(zoom=1.5)
    with pytest.raises(ValueError):
        RandomAffineAugment(shift=(0.1, 0.2, 0.3))


# --- one layer per transform, for the book ----------------------------------


def test_single_transform_layers_share_the_ranges():
    layers = augment.single_transform_layers(
        rotation=30, shift=0.1, shear=0.3, zoom=0.25, brightness=(0.7, 1.3)
    )
    assert set(layers) == {"rotation", "shift", "shear", "zoom", "flip", "brightness"}
    config = {name: layer.get_config() for name, layer in layers.items()}
    assert config["rotation"]["factor"] == pytest.approx((-30 / 360, 30 / 360))
    assert config["shift"]["height_factor"] == config["shift"]["width_factor"] == 0.1
    assert config["shear"]["x_factor"] == pytest.approx((-0.3, 0.3))
    assert config["zoom"]["height_factor"] == pytest.approx((-0.25, 0.25))
    assert config["flip"]["mode"] == "horizontal"
    assert config["brightness"]["brightness"] == [0.7, 1.3]
    for name in ("rotation", "shift", "shear", "zoom"):
        assert config[name]["fill_mode"] == "nearest"


def test_single_transform_layers_run_in_training_mode():
    images = random_images(n=2, size=16)
    for name, layer in augment.single_transform_layers(seed=0).items():
        out = augment.apply(layer, images, seed=1)
        assert out.shape == images.shape, name
        assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6, name


# --- random-resized crop (the modern recipe's augmentation) ------------------------


def column_ramp(n=4, size=16):
    """Each pixel holds its column index: a crop's horizontal scale is readable."""
    ramp = np.broadcast_to(np.arange(size, dtype="float32")[None, :, None], (size, size, 3))
    return np.repeat(ramp[None], n, axis=0).copy()


def test_crop_of_the_whole_image_without_flip_is_the_identity():
    layer = augment.RandomResizedCrop(scale=(1, 1), ratio=(1, 1), flip=False, seed=0)
    images = random_images()
    np.testing.assert_allclose(numpy(layer(images, training=True)), images, atol=1e-5)
    np.testing.assert_array_equal(numpy(layer(images)), images)  # inference: unchanged


def test_crop_of_a_quarter_of_the_area_zooms_in_twice():
    layer = augment.RandomResizedCrop(scale=(0.25, 0.25), ratio=(1, 1), flip=False, seed=1)
    out = numpy(layer(column_ramp(), training=True))
    steps = np.diff(out[..., 0], axis=2)
    np.testing.assert_allclose(steps, 0.5, atol=1e-4)  # half a column per output pixel
    assert out.min() >= 0 and out.max() <= 15  # read from inside the image only
    assert len({float(o[0, 0, 0]) for o in out}) > 1  # a different place per image


def test_crop_flip_mirrors_some_images():
    layer = augment.RandomResizedCrop(scale=(1, 1), ratio=(1, 1), flip=True, seed=3)
    images = column_ramp(n=16)
    out = numpy(layer(images, training=True))
    flipped = [np.allclose(o, i[:, ::-1], atol=1e-4) for o, i in zip(out, images)]
    kept = [np.allclose(o, i, atol=1e-4) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_crop_rejects_bad_ranges_and_round_trips_its_config():
    with pytest.raises(ValueError, match="scale"):
        augment.RandomResizedCrop(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="ratio"):
        augment.RandomResizedCrop(ratio=(2.0, 1.0))
    layer = augment.RandomResizedCrop(scale=(0.5, 1.0), seed=2)
    again = augment.RandomResizedCrop.from_config(layer.get_config())
    assert again.scale == (0.5, 1.0) and again.seed == 2
