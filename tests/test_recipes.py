"""tinylib.recipes and tinylib.mixing: each ingredient of the modern recipe does what it says."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from tinylib import augment, data, models, recipes, runs, train
from tinylib.mixing import MixingClassifier, MixUpCutMix, mixed_batch
from tinylib.profiles import Profile
from tinylib.recipes import RECIPES, Recipe


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_unknown_settings_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="adamw"):
        Recipe(optimizer="lamb")
    with pytest.raises(ValueError, match="warmup"):
        Recipe(warmup=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        Recipe(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="modern"):
        recipes.get_recipe("fancy")


def test_the_study_recipe_is_the_study_training():
    study = recipes.get_recipe(None)
    optimizer = study.make_optimizer(10, 3)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-4)
    assert study.make_loss().get_config()["label_smoothing"] == 0
    assert isinstance(study.augmentation_layer(), augment.ImageDataGeneratorAugment)
    assert study.describe() == "recipe 'study': the study's"


def test_ablation_adds_one_ingredient_per_step_and_ends_at_modern():
    steps = list(recipes.ablation_recipes().items())
    assert steps[0][1] == RECIPES["study"] and steps[-1][1] == RECIPES["modern"]
    names = [recipe.name for _, recipe in steps]
    assert len(set(names)) == len(names)  # each step has its own run folder
    fields = [f.name for f in dataclasses.fields(Recipe) if f.name != "name"]
    for (_, before), (label, after) in zip(steps, steps[1:]):
        changed = {f for f in fields if getattr(before, f) != getattr(after, f)}
        assert changed, label
        for field in changed:  # nothing changed so far is changed back
            assert getattr(after, field) == getattr(RECIPES["modern"], field)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    recipe = Recipe(optimizer="sgd", learning_rate=0.1, schedule="cosine", warmup=0.1)
    schedule = recipe.learning_rate_schedule(steps_per_epoch=10, epochs=10)  # 100 steps, 10 warmup
    rate = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(101)]
    assert rate[0] == pytest.approx(0.01)  # the first step trains, as in the other schedules' warmup
    assert rate[4] == pytest.approx(0.05)
    assert rate[9] == rate[10] == pytest.approx(0.1)
    # After the warmup, Keras' own cosine decay is the oracle.
    keras_cosine = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=90)
    for step in (10, 30, 55, 99, 100):
        assert rate[step] == pytest.approx(float(keras.ops.convert_to_numpy(keras_cosine(step - 10))), abs=1e-7)
    assert all(a >= b for a, b in zip(rate[10:], rate[11:]))
    assert rate[55] == pytest.approx(0.05, rel=1e-3)  # half way down the cosine
    assert rate[100] == pytest.approx(0.0, abs=1e-7)


def test_linear_schedule_warms_up_then_falls_to_zero_as_keras_polynomial_decay():
    schedule = Recipe(optimizer="sgd", learning_rate=0.2, schedule="linear", warmup=0.1) \
        .learning_rate_schedule(steps_per_epoch=10, epochs=10)  # 100 steps, 10 warmup
    rate = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(101)]
    assert rate[0] == pytest.approx(0.02) and rate[9] == pytest.approx(0.2)
    oracle = keras.optimizers.schedules.PolynomialDecay(0.2, decay_steps=90, end_learning_rate=0.0, power=1.0)
    for step in range(10, 101):
        assert rate[step] == pytest.approx(float(keras.ops.convert_to_numpy(oracle(step - 10))), abs=1e-6)
    assert rate[100] == 0.0
    restored = type(schedule).from_config(schedule.get_config())
    assert float(keras.ops.convert_to_numpy(restored(50))) == pytest.approx(rate[50])


def test_constant_schedule_with_warmup_ramps_then_holds():
    schedule = Recipe(learning_rate=0.01, warmup=0.5).learning_rate_schedule(steps_per_epoch=4, epochs=2)
    rate = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(8)]
    assert rate[0] == pytest.approx(0.0025) and rate[3:] == pytest.approx([0.01] * 5)


def test_sgd_has_nesterov_momentum_and_adamw_keeps_its_stated_decay():
    sgd = RECIPES["modern"].make_optimizer(5, 2)
    assert type(sgd) is keras.optimizers.SGD and sgd.momentum == 0.9 and sgd.nesterov
    adamw = Recipe(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05).make_optimizer()
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.05
    assert Recipe(optimizer="adamw").make_optimizer().weight_decay == 0.0


def test_weight_decay_shrinks_kernels_but_not_batchnorm_or_biases():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"),
                              keras.layers.BatchNormalization(name="bn")])
    optimizer = Recipe(optimizer="sgd", momentum=0.0, learning_rate=0.1, weight_decay=0.5).make_optimizer()
    for layer in model.layers:  # non-zero everywhere, so a shrink would show
        layer.set_weights([np.full(w.shape, 2.0, "float32") for w in layer.get_weights()])
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables))
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    for path in before:
        if path.endswith("kernel"):
            np.testing.assert_allclose(after[path], before[path] * (1 - 0.1 * 0.5))
        else:  # bias, gamma, beta
            np.testing.assert_array_equal(after[path], before[path])


def test_label_smoothing_puts_a_floor_under_a_confident_loss():
    y = np.eye(4, dtype="float32")[[0, 1]]
    p = np.clip(y, 1e-7, 1.0)
    plain = float(Recipe().make_loss()(y, p))
    smoothed = float(Recipe(label_smoothing=0.1).make_loss()(y, p))
    assert plain < 1e-5 and smoothed > 0.5


def test_crop_recipe_uses_random_resized_crop_and_none_uses_nothing():
    assert isinstance(Recipe(augmentation="crop").augmentation_layer(), augment.RandomResizedCrop)
    assert Recipe(augmentation="none").augmentation_layer() is None


# --- MixUp / CutMix, inside the model ------------------------------------------------


def coloured_batch(n=16, classes=4):
    """Class c's images are all 40*c: a mixed image's mean is its label-weighted colour."""
    labels = np.arange(n) % classes
    images = np.broadcast_to((40.0 * labels)[:, None, None, None], (n, 64, 64, 3)).astype("uint8").copy()
    return images, np.eye(classes, dtype="float32")[labels]


@pytest.mark.parametrize("mix", [dict(mixup=0.4), dict(cutmix=1.0), dict(mixup=0.2, cutmix=1.0)])
def test_mixed_labels_match_the_mixed_pixels(mix):
    images, onehot = coloured_batch()
    layer = MixUpCutMix(seed=0, **mix)
    mixed_somewhere = False
    for _ in range(6):  # each call draws anew
        x, y = mixed_batch(images, onehot, layer)
        assert x.shape == (16, 64, 64, 3) and y.shape == (16, 4)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
        colours = y @ (40.0 * np.arange(4))
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), colours, atol=0.01)
        mixed_somewhere |= bool((y.max(axis=1) < 0.999).any())
    assert mixed_somewhere
    # Outside training the layer does nothing.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images.astype("float32"), training=False)),
                                  images.astype("float32"))


def test_cutmix_pastes_one_box_of_the_mirrored_partner():
    images = np.zeros((4, 64, 64, 3), dtype="float32")
    images[2:] = 200.0  # the last two images' partners (the first two) are black
    layer = MixUpCutMix(cutmix=1.0, seed=1)
    x, _ = mixed_batch(images, np.eye(4, dtype="float32"), layer)
    pasted = x[3, :, :, 0] == 0.0  # where image 3 shows its partner, image 0
    share = float(keras.ops.convert_to_numpy(layer.share))
    assert 0.0 < pasted.mean() < 1.0 and share == pytest.approx(1.0 - pasted.mean())
    rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
    assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a box, filled


def test_the_training_loss_mixes_the_labels_and_evaluation_does_not():
    images, onehot = coloured_batch(n=8)
    layer = MixUpCutMix(mixup=0.4, seed=2)
    model = models.build_model("model1", num_classes=4, mixing=layer, compile=False, l2=0.0)
    assert isinstance(model, MixingClassifier)
    models.compile_model(model)
    predictions = model(images.astype("float32"), training=True)  # mixes, and sets the share
    share = float(keras.ops.convert_to_numpy(layer.share))
    assert 0.0 < share < 1.0
    loss = keras.losses.CategoricalCrossentropy()
    trained = model.compute_loss(y=onehot, y_pred=predictions, training=True)
    evaluated = model.compute_loss(y=onehot, y_pred=predictions, training=False)
    expected = loss(share * onehot + (1 - share) * onehot[::-1], predictions)
    np.testing.assert_allclose(float(trained), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(evaluated), float(loss(onehot, predictions)), rtol=1e-5)
    with pytest.raises(ValueError, match="mixup"):
        MixUpCutMix()


def test_the_images_are_cropped_before_they_are_mixed():
    """A crop after CutMix would keep another part of the box than the share the labels are
    weighed by: the augmentation comes first, the mixing right after it (timm's order)."""
    from tinylib.augment import RandomResizedCrop

    model = models.build_model("model1", num_classes=4, mixing=MixUpCutMix(cutmix=1.0, seed=0),
                               augmentation=RandomResizedCrop(seed=0), compile=False, l2=0.0)
    names = [type(layer).__name__ for layer in model.layers]
    assert names.index("RandomResizedCrop") + 1 == names.index("MixUpCutMix")


def smoke_profile(epochs=2):
    return Profile("smoke", classes=None, train_per_class=None, val_per_class=None,
                   epochs=epochs, batch_size=8)


@pytest.mark.slow
def test_modern_recipe_trains_a_resnet_and_records_every_ingredient(tmp_path, tiny_env, synthetic,
                                                                    monkeypatch, restore_policy):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    run = train.train_model("resnet18", ds, smoke_profile(), recipe="modern", build_options={"width": 16},
                            runs=tmp_path, verbose=0)
    record = run.record
    assert record["finished"] and run.path.name == f"resnet18-smoke-{keras.backend.backend()}-modern"
    assert record["recipe"] == RECIPES["modern"].to_dict()
    assert record["optimizer"] == "SGD" and record["learning_rate"] == 0.05
    assert record["augmentation"]["layer"] == "RandomResizedCrop"
    assert record["callbacks"] == []  # the study's callbacks belong to the study's recipe
    rates = record["history"]["learning_rate"]  # cosine: falls to zero by the last step
    assert rates[0] > rates[1] and rates[1] == pytest.approx(0.0, abs=1e-6)
    # The same folder with another recipe is another run: refused, not resumed.
    other = train.build("resnet18", ds, smoke_profile(), recipe=RECIPES["modern"].replace(label_smoothing=0.2),
                        width=16)
    with pytest.raises(ValueError, match="recipe"):
        train.fit(other, ds, smoke_profile(), runs=tmp_path, verbose=0)


@pytest.mark.slow
def test_compare_recipes_trains_each_recipe_in_its_own_folder(tmp_path, tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    chosen = {"study": "study", "no augmentation": Recipe(name="plain", augmentation="none")}
    runs = train.compare_recipes("model2", ds, smoke_profile(epochs=1), recipes=chosen, runs=tmp_path, verbose=0)
    assert list(runs) == ["study", "no augmentation"]
    backend = keras.backend.backend()
    assert {r.path.name for r in runs.values()} == {f"model2-smoke-{backend}-study", f"model2-smoke-{backend}-plain"}
    assert runs["no augmentation"].record["augmentation"] is None
    assert all(r.record["epochs_run"] == 1 for r in runs.values())


def test_mixed_float16_wraps_the_optimizer_in_loss_scaling(tiny_env, synthetic, monkeypatch, restore_policy):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    before = keras.config.dtype_policy().name
    model = train.build("resnet18", ds, smoke_profile(), recipe=Recipe(name="fp16", precision="mixed_float16"),
                        width=16)
    assert keras.config.dtype_policy().name == before  # the model keeps it; Keras' global policy is given back
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("stem_conv").compute_dtype == "float16"
    record = runs.new_record(model, ds, smoke_profile(), 2, 8, ())
    assert record["optimizer"] == "Adam" and record["dtype_policy"] == "mixed_float16"


def test_a_network_starts_from_the_same_weights_whatever_is_built_in_front_of_it():
    """An ablation row changes one ingredient: a crop instead of the study's augmentation, no
    augmentation, or MixUp/CutMix in front must not also change the network's initial weights
    (Keras draws every unseeded layer's seed from Python's random: train.layers_in_front)."""
    import types

    fake = types.SimpleNamespace(num_classes=5, train=np.zeros(40))
    profile = smoke_profile()

    def first_kernel(**kwargs):
        keras.utils.set_random_seed(7)
        model = train.build("model1", fake, profile, **kwargs)
        kernels = [v for v in model.trainable_variables if v.path.endswith("kernel")]
        return keras.ops.convert_to_numpy(kernels[0]), keras.ops.convert_to_numpy(kernels[-1])

    study = first_kernel()
    mixing = RECIPES["modern"]
    assert mixing.mixes_batches and mixing.augmentation != "study"
    for kwargs in ({"augment": False}, {"recipe": mixing}, {"recipe": Recipe(augmentation="crop")}):
        for ours, theirs in zip(first_kernel(**kwargs), study):
            np.testing.assert_array_equal(ours, theirs, err_msg=str(kwargs))
    # ...and the seed still draws them: another seed, other weights.
    keras.utils.set_random_seed(8)
    other = train.build("model1", fake, profile)
    assert not np.array_equal(keras.ops.convert_to_numpy(other.trainable_variables[0]), study[0])
