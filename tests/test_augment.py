"""Semantics of tinylib.augment: what each transform does, and when.

Run once per backend: KERAS_BACKEND=tensorflow and KERAS_BACKEND=jax.
"""

import contextlib
import math

import keras
import numpy as np
import pytest
from keras import ops

from tinylib import augment
from tinylib.augment import RandomAffineAugment, apply_affine

NO_CHANGE = dict(rotation=0, shift=0, shear=0, zoom=0, brightness=(1, 1), flip=False)
IDG_NO_CHANGE = dict(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0,
                     zoom_range=0, horizontal_flip=False, brightness_range=None)


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
    angles = [0.0, 0.1, 0.2]
    matrix = numpy(augment.affine_matrix(8, 8, angle=angles, zoom=1.1))
    assert matrix.shape == (3, 8)
    for row, angle in zip(matrix, angles):  # row i is image i's own transform
        np.testing.assert_allclose(row, numpy(augment.affine_matrix(8, 8, angle=angle, zoom=1.1))[0], atol=1e-6)
    assert not np.allclose(matrix[0], matrix[2])


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


def test_idg_brightness_gives_the_plain_formulas_values_bit_for_bit():
    """The brightness step in fewer passes is the same function as PIL's rule written out
    plainly (clip to the unit range, truncate to a grey level, multiply, clip, truncate,
    and a final clip): inputs beyond [0, 1], grey levels on their edges, factors above 1,
    0 and below 0 included."""
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.uniform(-0.5, 1.5, (6, 5, 5, 3)),
                             np.broadcast_to(np.arange(256).reshape(1, 16, 16, 1) / 255.0, (6, 16, 16, 3))
                             [:, :5, :5]]).astype("float32")
    factor = np.array([0.0, 0.35, 1.0, 1.65, 4.0, -0.5] * 2, "float32")
    f = factor.reshape(-1, 1, 1, 1)
    grey = np.floor(np.clip(images, 0.0, 1.0) * np.float32(255.0) + np.float32(augment._SNAP))
    plain = np.clip(np.floor(np.clip(grey * f, 0.0, 255.0)) / np.float32(255.0), 0.0, 1.0)
    ours = numpy(augment.apply_idg_transform(images, {"brightness": factor}))
    np.testing.assert_array_equal(ours, plain)


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
    single = augment.augment_batch(images[0], seed=0, **IDG_NO_CHANGE)
    np.testing.assert_array_equal(single, images[0])


def test_augmentation_is_the_study_idg_layer():
    layer = augment.augmentation(seed=3)
    assert isinstance(layer, augment.ImageDataGeneratorAugment) and layer.name == "augmentation"
    config = layer.get_config()
    for key, value in augment.STUDY_AUGMENTATION.items():
        expected = [1 - value, 1 + value] if key == "zoom_range" else value
        assert config[key] == (list(expected) if isinstance(expected, tuple) else expected), key
    assert augment.augmentation(rotation_range=5).rotation_range == 5  # overrides


@pytest.mark.parametrize("layer_factory", [
    lambda: RandomAffineAugment(rotation=10, shift=(0.1, 0.3), zoom=0.1, seed=4),
    lambda: augment.augmentation(rotation_range=10, width_shift_range=4, height_shift_range=[0.1, 0.2],
                                 zoom_range=(0.9, 1.3), fill_mode="wrap", cval=0.5, seed=4),
])
def test_config_round_trip_and_saved_model_reload(tmp_path, layer_factory):
    layer = layer_factory()
    if isinstance(layer, augment.ImageDataGeneratorAugment):
        clone = augment.ImageDataGeneratorAugment.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert clone.width_shift_range == 4 and clone.zoom_range == (0.9, 1.3)
        model = keras.Sequential([keras.Input((8, 8, 3)), layer, keras.layers.Flatten(), keras.layers.Dense(2)])
        path = tmp_path / "idg.keras"
        model.save(path)
        reloaded = keras.models.load_model(path).layers[0]
        assert isinstance(reloaded, augment.ImageDataGeneratorAugment)
        assert reloaded.get_config() == layer.get_config()
        return
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
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # The compiled step ran with the layer in it: a finite loss, and the step moved the weights.
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


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
    images = random_images(n=8, size=16)  # eight: a coin flip that flips none of them is unlikely
    for name, layer in augment.single_transform_layers(seed=0).items():
        out = numpy(augment.apply(layer, images, seed=1))
        assert out.shape == images.shape, name
        assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6, name
        assert np.abs(out - images).max() > 1e-3, name  # it transformed them: training mode, not a pass-through


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


# --- the study's augmentation: ImageDataGenerator, with IDG itself as the oracle -----

ImageDataGenerator = augment.image_data_generator_class()  # Keras' own, imported where each Keras keeps it

IDG_MODES = ("nearest", "constant", "reflect", "wrap")
# Values allowed to differ from IDG's by more than half a grey level: those whose source
# point lies within float32 noise (~1e-5 px) of a place where IDG's float64 result jumps
# (the image border in 'constant', wrap's seam) or of a whole grey level that IDG
# truncates before brightness.  Measured: about 12 values in 100,000, none off by more
# than two levels.  Rounding where IDG truncates, or a bias of half a level, would put a
# third of the values off.
STRAY_FRACTION = 1e-3
WORST_LEVELS = 2.0


def idg_parameters(rng, trial):
    """A random parameter set, wider than the study's; zx != zy, flips and brightness on/off."""
    return dict(
        theta=rng.uniform(-45, 45), tx=rng.uniform(-16, 16), ty=rng.uniform(-16, 16),
        shear=rng.uniform(-30, 30), zx=rng.uniform(0.6, 1.4), zy=rng.uniform(0.6, 1.4),
        flip_horizontal=bool(trial % 2), brightness=rng.uniform(0.6, 1.4) if trial % 3 else None,
    )


def compare_with_idg(images_uint8, trials, seed=0, modes=IDG_MODES):
    """Largest difference (grey levels) and the fraction of values off by more than half a level."""
    rng = np.random.RandomState(seed)
    worst, stray, total = 0.0, 0, 0
    for mode in modes:
        generator = ImageDataGenerator(fill_mode=mode, cval=40.0)
        for trial in range(trials):
            image = images_uint8[trial % len(images_uint8)].astype("float32")
            params = idg_parameters(rng, trial)
            expected = generator.apply_transform(image.copy(), params)
            ours = numpy(augment.apply_idg_transform(image / 255.0, params, fill_mode=mode, cval=40 / 255))
            diff = np.abs(ours * 255.0 - expected)
            worst, stray, total = max(worst, diff.max()), stray + (diff > 0.5 + 1e-3).sum(), total + diff.size
    return worst, stray / total


def synthetic_uint8(n=3, size=64, seed=0):
    smooth = smooth_images(n=1, size=size)[0]
    noisy = random_images(n=n - 1, size=size, seed=seed)
    return np.round(np.concatenate([smooth[None], noisy]) * 255).astype("uint8")


def test_idg_parameters_give_idg_images_on_synthetic_images():
    worst, stray = compare_with_idg(synthetic_uint8(), trials=12)
    assert stray <= STRAY_FRACTION and worst <= WORST_LEVELS + 1e-3, (worst, stray)


def test_idg_match_holds_for_non_square_images_and_with_pixel_shifts():
    """Non-square: IDG centres its first (column) axis with the height; we follow it."""
    images = np.round(random_images(n=2, size=64)[:, :40, :56] * 255).astype("uint8")
    worst, stray = compare_with_idg(images, trials=6, seed=1)
    assert stray <= STRAY_FRACTION and worst <= WORST_LEVELS + 1e-3, (worst, stray)
    # Whole-pixel shifts alone (what an int shift range draws): no interpolation, exact.
    image = synthetic_uint8(n=2)[1]
    for params in ({"tx": 3, "ty": -5}, {"tx": -7, "flip_horizontal": 1}, {"flip_horizontal": 1}):
        expected = ImageDataGenerator(fill_mode="constant").apply_transform(image.astype("float32"), params)
        ours = numpy(augment.apply_idg_transform(image / 255.0, params, fill_mode="constant"))
        np.testing.assert_allclose(ours * 255.0, expected, atol=1e-3)


def test_the_check_has_teeth():
    """Keras' own resample (other boundary rules) or a swapped tx/ty would fail it."""
    image = synthetic_uint8(n=2)[1].astype("float32")
    params = {"theta": 10.0, "tx": 6.0, "ty": -2.0, "zx": 0.8, "zy": 1.1}
    expected = ImageDataGenerator(fill_mode="constant").apply_transform(image.copy(), params)
    swapped = numpy(augment.apply_idg_transform(image / 255, {**params, "tx": -2.0, "ty": 6.0},
                                                fill_mode="constant"))
    assert np.abs(swapped * 255 - expected).max() > 50
    matrix = augment.idg_transform_matrix(64, 64, **params)
    keras_own = numpy(ops.image.affine_transform(image[None] / 255, matrix, fill_mode="constant"))[0]
    assert np.abs(keras_own * 255 - expected).max() > 20  # it blends the border with cval


@pytest.mark.realdata
def test_idg_parameters_give_idg_images_on_real_images(real_data_path):
    from tinylib.data import decode_image

    files = sorted((real_data_path / "train").glob("*/images/*.JPEG"))[::5000][:6]
    assert files, f"no training JPEGs under {real_data_path}"
    images = np.stack([decode_image(f.read_bytes(), f.name) for f in files])
    worst, stray = compare_with_idg(images, trials=12, seed=2)
    assert stray <= STRAY_FRACTION and worst <= WORST_LEVELS + 1e-3, (worst, stray)


def test_random_layer_applies_the_parameters_it_draws():
    """The layer = draw_parameters + apply_idg_transform, with one generator state."""
    images = random_images(n=4, size=16)
    layer = augment.augmentation(seed=5)
    out = augment.apply(layer, images, seed=11)
    layer.seed_generator.state.assign(ops.convert_to_tensor([11, 0], layer.seed_generator.state.dtype))
    params = layer.draw_parameters(4, 16, 16)  # the same draws as the call above
    expected = numpy(augment.apply_idg_transform(images, params, fill_mode="nearest"))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def draws_from_both(kwargs, n=4000):
    layer = augment.ImageDataGeneratorAugment(seed=0, **kwargs)
    ours = {k: None if v is None else numpy(v) for k, v in layer.draw_parameters(n, 64, 64).items()}
    generator = ImageDataGenerator(**kwargs)
    np.random.seed(0)
    theirs = [generator.get_random_transform((64, 64, 3)) for _ in range(n)]
    theirs = {k: None if ours[k] is None else np.array([t[k] for t in theirs], dtype="float64")
              for k in ours}
    return ours, theirs


def test_drawn_parameters_have_idg_distributions():
    from scipy import stats

    kwargs = dict(rotation_range=20, width_shift_range=0.2, height_shift_range=0.1, shear_range=15,
                  zoom_range=0.2, horizontal_flip=True, brightness_range=(0.8, 1.2))
    ours, theirs = draws_from_both(kwargs)
    for key in ("theta", "tx", "ty", "shear", "zx", "zy", "brightness"):
        assert stats.ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
        lo, hi = theirs[key].min(), theirs[key].max()
        span = hi - lo
        assert lo - 0.01 * span <= ours[key].min() < lo + 0.01 * span, key
        assert hi - 0.01 * span < ours[key].max() <= hi + 0.01 * span, key
    assert abs(ours["tx"].max() - 6.4) < 0.1 and abs(ours["ty"].max() - 12.8) < 0.1  # 0.1*64, 0.2*64
    assert abs(ours["flip_horizontal"].mean() - theirs["flip_horizontal"].mean()) < 0.05
    # zx and zy independent (IDG draws two), not one shared zoom.
    assert abs(np.corrcoef(ours["zx"], ours["zy"])[0, 1]) < 0.06
    assert np.abs(ours["zx"] - ours["zy"]).mean() > 0.1


def test_int_and_list_shift_ranges_draw_like_idg():
    ours, theirs = draws_from_both(dict(width_shift_range=4, height_shift_range=[0.1, 0.25]), n=2000)
    assert set(np.unique(ours["ty"])) == set(np.unique(theirs["ty"])) == {-3, -2, -1, 0, 1, 2, 3}
    np.testing.assert_allclose(np.unique(ours["tx"]), [-16.0, -6.4, 6.4, 16.0], rtol=1e-6)
    for key in ("tx", "ty"):
        counts = [np.unique(d[key], return_counts=True)[1] / len(d[key]) for d in (ours, theirs)]
        np.testing.assert_allclose(*counts, atol=0.05)
    assert (ours["zx"] == 1).all() and ours["brightness"] is None and not ours["flip_horizontal"].any()


def test_idg_layer_inference_is_identity_and_rejects_bad_arguments():
    images = random_images(n=2)
    np.testing.assert_array_equal(numpy(augment.augmentation(seed=0)(images)), images)
    np.testing.assert_array_equal(
        numpy(augment.ImageDataGeneratorAugment(**IDG_NO_CHANGE)(images, training=True)), images)
    with pytest.raises(ValueError, match="fill_mode"):
        augment.ImageDataGeneratorAugment(fill_mode="mirror")
    with pytest.raises(ValueError, match="zoom_range"):
        augment.ImageDataGeneratorAugment(zoom_range=(0.8, 0.9, 1.0))
    with pytest.raises(ValueError, match="bilinear"):
        augment.ImageDataGeneratorAugment(interpolation="nearest")


JAX_SCRIPT = '''
import numpy as np, keras
assert keras.backend.backend() == "jax"
import test_augment as t
worst, stray = t.compare_with_idg(t.synthetic_uint8(), trials=4, modes=("nearest", "wrap"))
assert stray <= t.STRAY_FRACTION and worst <= t.WORST_LEVELS + 1e-3, (worst, stray)
model = keras.Sequential([keras.Input((16, 16, 3)), t.augment.augmentation(seed=0),
                          keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
model.compile(optimizer="sgd", loss="categorical_crossentropy")  # fit jit-compiles the layer
x = t.random_images(n=8, size=16)
before = [w.copy() for w in model.get_weights()]
history = model.fit(x, np.eye(2, dtype="float32")[np.arange(8) % 2], batch_size=4, verbose=0)
assert abs(history.history["loss"][0] - np.log(2)) < 1.0, history.history
assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
print("JAX OK", worst, stray)
'''


def test_idg_layer_on_the_jax_backend(run_on_jax):
    if keras.backend.backend() == "jax":
        pytest.skip("this run is JAX already: the tests above cover it")
    result = run_on_jax(JAX_SCRIPT, "jax_idg.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "JAX OK" in result.stdout


def _torchvision_crop_fractions(rng, n, height, width, scale, ratio, attempts=10):
    """torchvision.transforms.RandomResizedCrop.get_params, its algorithm in NumPy (the
    oracle; torchvision itself is not a dependency), without its rounding to pixels."""
    sizes, fallbacks = [], []
    for _ in range(n):
        for _ in range(attempts):
            area = rng.uniform(*scale) * height * width
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
            if 0 < w <= width and 0 < h <= height:
                sizes.append((w / width, h / height))
                fallbacks.append(False)
                break
        else:
            fallbacks.append(True)
            in_ratio = width / height
            if in_ratio < ratio[0]:
                w, h = width, width / ratio[0]
            elif in_ratio > ratio[1]:
                h, w = height, height * ratio[1]
            else:
                w, h = width, height
            sizes.append((w / width, h / height))
    return np.array(sizes), np.array(fallbacks)


@pytest.mark.parametrize("scale, ratio, shape", [((0.35, 1.0), (3 / 4, 4 / 3), (64, 64)),
                                                 ((0.08, 1.0), (3 / 4, 4 / 3), (48, 96)),
                                                 ((0.9, 1.0), (0.2, 5.0), (64, 64))])
def test_crop_draws_areas_and_ratios_as_torchvision_does(scale, ratio, shape):
    """No crop is clipped out of its ranges: a draw that does not fit is drawn again (ten
    tries), then the whole image (narrowed to the ratio's range) is taken, as torchvision does."""
    height, width = shape
    layer = augment.RandomResizedCrop(scale=scale, ratio=ratio, seed=5)
    w, h, found = (numpy(v) for v in layer.crop_sizes(4000, height, width))
    area, aspect = w * h, (w * width) / (h * height)
    assert np.all(w <= 1 + 1e-6) and np.all(h <= 1 + 1e-6)
    drawn = found.astype(bool)
    assert np.all(area[drawn] >= scale[0] - 1e-5) and np.all(area[drawn] <= scale[1] + 1e-5)
    assert np.all(aspect[drawn] >= ratio[0] - 1e-4) and np.all(aspect[drawn] <= ratio[1] + 1e-4)
    oracle, oracle_fallbacks = _torchvision_crop_fractions(np.random.default_rng(0), 4000, height, width,
                                                           scale, ratio)
    ours = np.stack([w, h], axis=1)
    # The same distribution: means and quartiles of both fractions, and the share of fallbacks.
    np.testing.assert_allclose(ours.mean(0), oracle.mean(0), atol=0.015)
    np.testing.assert_allclose(np.percentile(ours, [25, 50, 75], axis=0),
                               np.percentile(oracle, [25, 50, 75], axis=0), atol=0.03)
    assert abs((~drawn).mean() - oracle_fallbacks.mean()) < 0.02  # how often no try fits


def test_where_xla_compiles_the_step_the_layers_resample_by_gathers_with_the_same_images(monkeypatch):
    """On TensorFlow with a GPU Keras compiles the training step with XLA, which has no kernel
    for TensorFlow's fused image transform: there (faked here) every layer resamples by
    gathers, with the same images, and a layer that only the fused transform can serve
    opts out of XLA, as Keras' own random image layers do."""
    layers = {
        "idg": lambda: augment.augmentation(seed=5),
        "crop": lambda: augment.RandomResizedCrop(seed=5),
        "affine": lambda: RandomAffineAugment(seed=5),
    }
    images = smooth_images(n=4)
    fused = {name: numpy(make()(images, training=True)) for name, make in layers.items()}
    monkeypatch.setattr(augment, "_xla_may_compile", lambda: True)
    calls = []
    real = ops.image.affine_transform
    monkeypatch.setattr(ops.image, "affine_transform", lambda *a, **k: calls.append(a) or real(*a, **k))
    for name, make in layers.items():
        layer = make()
        assert layer.supports_jit, name
        np.testing.assert_allclose(numpy(layer(images, training=True)), fused[name], atol=1e-5, err_msg=name)
    assert calls == []
    assert not RandomAffineAugment(fill_mode="constant").supports_jit
    assert not augment.RandomResizedCrop(interpolation="nearest").supports_jit


def test_a_model_compiled_with_xla_over_the_fused_transform_trains_without_it(monkeypatch):
    """Where XLA does not compile the step by itself (a CPU) the layers keep TensorFlow's fused
    image transform, which XLA has no kernel for: each says so, and a model compiled with
    ``jit_compile=True`` trains without XLA, with Keras' warning, instead of failing in its
    first step (it did: 'Detected at node .../ImageProjectiveTransformV3'). On JAX nothing
    is fused, and the step compiles."""
    monkeypatch.setattr(augment, "_xla_may_compile", lambda: False)
    fused = keras.backend.backend() == "tensorflow"
    for make in (lambda: augment.augmentation(seed=0), lambda: augment.RandomResizedCrop(seed=0),
                 lambda: RandomAffineAugment(seed=0)):
        layer = make()
        assert all(inner.supports_jit for inner in layer._flatten_layers()) != fused, layer.name
    assert RandomAffineAugment(rotation=0, shift=0, shear=0, zoom=0, flip=False).supports_jit  # brightness alone
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(augment.augmentation(seed=0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.warns(UserWarning, match="jit_compile") if fused else contextlib.nullcontext():
        model.compile("sgd", "categorical_crossentropy", jit_compile=True)
    assert model.jit_compile != fused
    history = model.fit(smooth_images(n=4), np.eye(2)[[0, 1, 0, 1]], batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
