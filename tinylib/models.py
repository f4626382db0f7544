"""The seed study's five CNNs, layer for layer.

Every model takes uint8-range images (0..255) of shape ``input_shape`` and
starts with the same head: ``Rescaling(1/255)`` (the seed trained on [0, 1]
images) and then an optional augmentation layer (see ``tinylib.augment``)
that is active only in training.  The head has no parameters, so parameter
counts match the seed's Keras summaries exactly (the tests check them).

``build_model("model3")`` returns a compiled ``keras.Model``;
``model.tinylib_weights`` says where its initial weights came from
(``"random"``, ``"imagenet"`` or the path of a weights file), for run records.
"""

from __future__ import annotations

import os
import re
from types import MappingProxyType

import keras
from keras import layers

__all__ = [
    "MODELS",
    "SEED_CALLBACKS",
    "PretrainedWeightsUnavailable",
    "build_model",
    "list_models",
    "make_optimizer",
    "normalize_name",
    "seed_callbacks",
]

RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    + RESNET50_NOTOP_FILE
)


class PretrainedWeightsUnavailable(RuntimeError):
    """The ImageNet weights could not be fetched (usually: no internet)."""


# --- the five architectures ------------------------------------------------
# Each builder maps the head's output tensor (float images in [0, 1]) to
# class probabilities; ``build_model`` adds the head and compiles.


def model1(x, num_classes, l2=1e-4):
    """Two small conv blocks and a 1024-unit dense layer, L2-regularized."""
    reg = keras.regularizers.L2(l2) if l2 else None
    x = layers.Conv2D(32, 3, activation="relu", kernel_regularizer=reg, name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", kernel_regularizer=reg, name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    return layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=reg, name="predictions"
    )(x)


def model2(x, num_classes, dropout=0.5):
    """Three conv blocks, dense 512 and dropout; trained with early stopping."""
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def _conv_bn_relu(x, filters, name, bn_momentum=0.99):
    """Conv (same padding) -> BatchNorm -> ReLU, as the seed wrote it."""
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _dense_bn_relu(x, units, name, bn_momentum=0.99):
    x = layers.Dense(units, name=f"{name}_dense")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def model3(x, num_classes, bn_momentum=0.99):
    """VGG-like: six conv+BN blocks, dense 4096 and 1024 with BN (~140M params).

    ``bn_momentum`` (Keras' default 0.99) only sets how fast BatchNorm's moving
    statistics follow the data: short runs need a lower value (see tinylib.profiles).
    """
    blocks = [(64, 64), (128, 128), (256, 512)]
    for b, filters_pair in enumerate(blocks, start=1):
        for c, filters in enumerate(filters_pair, start=1):
            x = _conv_bn_relu(x, filters, f"block{b}_{c}", bn_momentum)
        x = layers.MaxPooling2D(name=f"pool{b}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense_bn_relu(x, 4096, "fc1", bn_momentum)
    x = _dense_bn_relu(x, 1024, "fc2", bn_momentum)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def model4(x, num_classes, dropout=0.5, bn_momentum=0.99):
    """Three conv+BN blocks, dense 512 with BN and dropout."""
    for b, filters in enumerate((64, 128, 256), start=1):
        x = _conv_bn_relu(x, filters, f"block{b}", bn_momentum)
        x = layers.MaxPooling2D(name=f"pool{b}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense_bn_relu(x, 512, "fc1", bn_momentum)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def model5(x, num_classes, weights="imagenet", dropout=0.5, bn_momentum=None):
    """ResNet50 backbone (ImageNet weights by default), GAP, dense 1024, dropout.

    ``bn_momentum`` overrides the backbone's BatchNorm momentum (0.99) for short runs.
    """
    backbone = _resnet50_backbone(tuple(x.shape[1:]), weights)
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def _resnet50_backbone(input_shape, weights):
    """``keras.applications.ResNet50`` without top, with a clear error when
    the ImageNet weights cannot be fetched or a weights file is missing."""
    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"ResNet50 backbone weights file not found: {weights!r}"
            )
    try:
        return keras.applications.ResNet50(
            include_top=False, input_shape=input_shape, weights=weights
        )
    except (ValueError, TypeError):
        raise  # bad arguments (e.g. images too small), not a download issue
    except Exception as error:
        if weights != "imagenet":
            raise
        raise PretrainedWeightsUnavailable(
            "Could not fetch the ImageNet weights for the ResNet50 backbone "
            f"({type(error).__name__}: {error}). Keras downloads them on first "
            "use into ~/.keras/models/ (or $KERAS_HOME/models/). To get them: "
            "run once with internet access so Keras caches the file, or "
            f"download {RESNET50_WEIGHTS_URL} yourself and pass its path, "
            f"build_model('model5', weights='/path/to/{RESNET50_NOTOP_FILE}'). "
            "To train from random initialisation instead, pass weights=None."
        ) from error


MODELS = MappingProxyType(
    {
        "model1": model1,
        "model2": model2,
        "model3": model3,
        "model4": model4,
        "model5": model5,
    }
)

# Models that can start from pretrained weights (and default to them).
PRETRAINED = frozenset({"model5"})

# Callbacks the seed used per model, by name; the training module builds them.
SEED_CALLBACKS = MappingProxyType(
    {"model2": ("early_stopping", "reduce_lr_on_plateau")}
)


def normalize_name(name):
    """'Model 1', 'model_1', 'MODEL-1' -> 'model1'; ValueError if unknown."""
    key = re.sub(r"[\s_\-]+", "", str(name).lower())
    if key not in MODELS:
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(MODELS)}"
        )
    return key


def list_models():
    """Model names with a one-line description each."""
    return {name: builder.__doc__.splitlines()[0] for name, builder in MODELS.items()}


def seed_callbacks(name):
    """Names of the callbacks the seed trained this model with (maybe none)."""
    return SEED_CALLBACKS.get(normalize_name(name), ())


# --- optimizers and compilation ------------------------------------------

OPTIMIZERS = MappingProxyType(
    {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
        "nadam": keras.optimizers.Nadam,
    }
)


def make_optimizer(name="adam", learning_rate=1e-4):
    """One of the optimizers the seed compared, by name."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {name!r}. Valid names: {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[key](learning_rate=learning_rate)


def compile_model(model, optimizer="adam", learning_rate=1e-4):
    """Categorical cross-entropy (one-hot labels) with top-1 and top-5 accuracy."""
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, learning_rate)
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )
    return model


# --- the public builder -----------------------------------------------------

DEFAULT_WEIGHTS = "default"  # ImageNet for model5, random for the others


def build_model(
    name,
    num_classes=200,
    input_shape=(64, 64, 3),
    augmentation=None,
    weights=DEFAULT_WEIGHTS,
    compile=True,
    optimizer="adam",
    learning_rate=1e-4,
    **options,
):
    """Build one of the seed's models, with the head, compiled by default.

    ``augmentation`` is a layer (e.g. ``tinylib.augment.augmentation()``)
    applied after rescaling, only in training.  ``weights`` matters only for
    model5: ``"imagenet"`` (its default), a path to a backbone weights file,
    or ``None`` for random initialisation.  ``options`` go to the
    architecture (``l2`` for model1, ``dropout`` for models 2, 4 and 5).
    """
    key = normalize_name(name)
    if key in PRETRAINED:
        if weights == DEFAULT_WEIGHTS:
            weights = "imagenet"
        options["weights"] = weights
        origin = "random" if weights is None else os.fspath(weights)
    elif weights in (DEFAULT_WEIGHTS, None):
        origin = "random"
    else:
        raise ValueError(
            f"{key} has no pretrained weights (only {', '.join(sorted(PRETRAINED))} "
            f"has); got weights={weights!r}"
        )

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if augmentation is not None:
        x = augmentation(x)
    outputs = MODELS[key](x, num_classes, **options)
    model = keras.Model(inputs, outputs, name=key)
    # A plain attribute: Keras allows it; it is not saved with the model.
    model.tinylib_weights = origin
    if compile:
        compile_model(model, optimizer, learning_rate)
    return model
