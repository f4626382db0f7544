"""Data augmentation as in-graph Keras layers.

The study's slides name the transforms of Keras' ``ImageDataGenerator`` (IDG), which
transforms one image at a time in NumPy/SciPy on the CPU.  :class:`ImageDataGeneratorAugment` is
that augmentation, exactly: IDG's argument names and units, its parameters
drawn per image with the distributions of ``get_random_transform``, composed
as ``apply_transform`` composes them (``rotation @ shift @ shear @ zoom`` about
the centre, then the horizontal flip, then brightness), and resampled with
scipy's bilinear boundary rules.  It differs in how, not what: all geometry
(flip included) is one batched resample inside the model, on whatever device
the model runs on, with either the TensorFlow or the JAX backend.
:func:`augmentation` returns it with the study's values,
:data:`STUDY_AUGMENTATION` (the one place they are written down), and
:func:`apply_idg_transform` applies given IDG parameters (tests, the book).

:class:`RandomAffineAugment` is tinylib's own, simpler parametrisation of the
same kinds of transforms (used to show each transform alone in chapter 4).
It is *not* IDG's; its conventions (all ranges symmetric around "no change"):

* ``rotation``: degrees, angle drawn from ``[-rotation, rotation]``.
* ``shift``: fraction of the image size, drawn from ``[-shift, shift]``; a
  float for both axes or a ``(height, width)`` pair.
* ``shear``: horizontal shear *factor* (tan of the shear angle), drawn from
  ``[-shear, shear]``, the meaning of ``keras.layers.RandomShear``'s
  ``x_factor``.  IDG's ``shear_range`` is an angle in degrees with a
  different matrix (it also scales one axis by the angle's cosine).
* ``zoom``: ONE factor per image (aspect ratio kept) drawn from
  ``[1 - zoom, 1 + zoom]``; above 1 shows more of the image (zooms out).
  IDG instead draws two independent factors (height and width).
* ``brightness``: a ``(low, high)`` range of per-image *multipliers*, like
  IDG's ``brightness_range`` (but on floats, without IDG's uint8 rounding).
  (``keras.layers.RandomBrightness`` adds an offset instead.)

Inputs are float images in ``[0, 1]`` (the model head rescales uint8 first);
outputs are clipped to ``[0, 1]``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "STUDY_AUGMENTATION",
    "ImageDataGeneratorAugment",
    "apply_idg_transform",
    "idg_transform_matrix",
    "RandomAffineAugment",
    "RandomResizedCrop",
    "affine_matrix",
    "apply_affine",
    "augmentation",
    "single_transform_layers",
    "apply",
    "augment_batch",
]


def affine_matrix(
    height,
    width,
    angle=0.0,
    shift_x=0.0,
    shift_y=0.0,
    shear=0.0,
    zoom=1.0,
    flip=0.0,
):
    """Per-image transform rows for ``keras.ops.image.affine_transform``.

    Every parameter is a scalar or a ``(batch,)`` tensor; the result has
    shape ``(batch, 8)``.  The parameters describe what happens to the
    *content*, about the image centre:

    * ``angle``: rotation in radians (positive turns the content
      counter-clockwise as displayed, like ``np.rot90``),
    * ``shift_x`` / ``shift_y``: pixels the content moves right / down,
    * ``shear``: horizontal shear factor,
    * ``zoom``: sampling scale, the same for both axes; above 1 zooms out,
    * ``flip``: 1 mirrors the image left-right, 0 leaves it.

    Keras wants the inverse map (output pixel -> input pixel), so that is
    what is built: ``input = L (output - centre - shift) + centre`` with
    ``L = rotation @ shear @ zoom @ flip``.
    """
    params = [angle, shift_x, shift_y, shear, zoom, flip]
    params = [ops.reshape(ops.cast(p, "float32"), (-1,)) for p in params]
    angle, shift_x, shift_y, shear, zoom, flip = params
    # Broadcast every parameter to one batch size.
    batch = ops.shape(angle + shift_x + shift_y + shear + zoom + flip)
    angle, shift_x, shift_y, shear, zoom, flip = [
        ops.broadcast_to(p, batch) for p in params
    ]

    cos, sin = ops.cos(angle), ops.sin(angle)
    mirror = 1.0 - 2.0 * flip  # -1 flips x, +1 keeps it
    a0 = cos * zoom * mirror
    a1 = (cos * shear - sin) * zoom
    b0 = sin * zoom * mirror
    b1 = (sin * shear + cos) * zoom
    cx = (width - 1) / 2.0  # pixel centres sit on integer coordinates
    cy = (height - 1) / 2.0
    ox, oy = cx + shift_x, cy + shift_y
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def apply_affine(
    images,
    interpolation="bilinear",
    fill_mode="nearest",
    **params,
):
    """Apply fixed (not random) transform parameters to a batch of images.

    ``params`` are those of :func:`affine_matrix`.  This is the same
    resample the random layer uses, exposed so tests and the book can use
    known parameters.
    """
    images = ops.convert_to_tensor(images)
    height, width = images.shape[-3], images.shape[-2]
    transform = affine_matrix(height, width, **params)
    if len(images.shape) == 4:
        transform = ops.broadcast_to(transform, (ops.shape(images)[0], 8))
    else:
        transform = transform[0]
    return ops.image.affine_transform(
        images,
        transform,
        interpolation=interpolation,
        fill_mode=fill_mode,
        data_format="channels_last",
    )


def _pair(value, name):
    """A symmetric range given as one number, or a (height, width) pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair, got {value}")
        return float(value[0]), float(value[1])
    return float(value), float(value)


class TrainingOnlyAugmentation(keras.layers.Layer):
    """What this module's layers share: they augment only with ``training=True``,
    draw their parameters from one seeded generator, and keep the image shape."""

    paused = False  # True: a training call leaves the images as they are (batchnorm.recalibrate)

    def __init__(self, seed=None, **kwargs):
        # Pixels are moved and blended in float32 whatever the model computes in, so the
        # augmentation gives IDG's numbers under any policy (the first convolution casts).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch,), minval=low, maxval=high, seed=self.seed_generator)

    def call(self, inputs, training=False):
        if not training or self.paused:
            return inputs
        images = ops.cast(inputs, self.compute_dtype)
        return self.augment(images, ops.shape(images)[0], images.shape[1], images.shape[2])

    def augment(self, images, batch, height, width):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tinylib")
class RandomAffineAugment(TrainingOnlyAugmentation):
    """Random rotation/shift/shear/zoom/flip in one resample, then brightness.

    tinylib's own parametrisation (see the module docstring), not
    ``ImageDataGenerator``'s: for the study's augmentation use
    :class:`ImageDataGeneratorAugment` (:func:`augmentation`).

    Active only when called with ``training=True`` (``model.fit`` does
    that); otherwise it returns its input unchanged.  Unlike Keras' own
    preprocessing layers, calling it directly without ``training`` does
    *not* augment, so ``model(x)`` and ``model.predict`` never augment.
    See the module docstring for the meaning of each range.
    """

    def __init__(
        self,
        rotation=20.0,
        shift=0.2,
        shear=0.2,
        zoom=0.2,
        brightness=(0.8, 1.2),
        flip=True,
        flip_probability=0.5,
        fill_mode="nearest",
        interpolation="bilinear",
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.rotation = float(rotation)
        self.shift = _pair(shift, "shift")
        self.shear = float(shear)
        self.zoom = float(zoom)
        self.brightness = (
            None if brightness is None else tuple(float(b) for b in brightness)
        )
        self.flip = bool(flip)
        self.flip_probability = float(flip_probability)
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        if not 0.0 <= self.zoom < 1.0:
            raise ValueError(f"zoom must be in [0, 1), got {zoom}")
        if self.brightness is not None and len(self.brightness) != 2:
            raise ValueError(f"brightness must be (low, high), got {brightness}")
        if self._has_geometry and _affine_is_fused(interpolation, fill_mode):
            self.supports_jit = False  # XLA cannot compile the fused transform: Keras trains without it

    @property
    def _has_geometry(self):
        return bool(
            self.rotation
            or any(self.shift)
            or self.shear
            or self.zoom
            or (self.flip and self.flip_probability > 0)
        )

    @property
    def _has_brightness(self):
        return self.brightness is not None and self.brightness != (1.0, 1.0)

    def augment(self, images, batch, height, width):
        if self._has_geometry:
            rot = math.radians(self.rotation)
            shift_h, shift_w = self.shift
            if self.flip:
                flip = ops.cast(
                    self._uniform(batch, 0.0, 1.0) < self.flip_probability,
                    "float32",
                )
            else:
                flip = 0.0
            transform = affine_matrix(
                height,
                width,
                angle=self._uniform(batch, -rot, rot),
                shift_x=self._uniform(batch, -shift_w, shift_w) * width,
                shift_y=self._uniform(batch, -shift_h, shift_h) * height,
                shear=self._uniform(batch, -self.shear, self.shear),
                zoom=self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom),
                flip=flip,
            )
            images = _affine_transform(images, transform, self.interpolation, self.fill_mode)
        if self._has_brightness:
            low, high = self.brightness
            factor = ops.cast(self._uniform(batch, low, high), images.dtype)
            images = ops.clip(images * factor[:, None, None, None], 0.0, 1.0)
        return images

    def get_config(self):
        config = super().get_config()
        config.update(
            rotation=self.rotation,
            shift=list(self.shift),
            shear=self.shear,
            zoom=self.zoom,
            brightness=None if self.brightness is None else list(self.brightness),
            flip=self.flip,
            flip_probability=self.flip_probability,
            fill_mode=self.fill_mode,
            interpolation=self.interpolation,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="tinylib")
class RandomResizedCrop(TrainingOnlyAugmentation):
    """Random crop of random area and aspect ratio, resized back to full size, plus flip.

    The "Inception-style" crop that modern ImageNet recipes use instead of the
    affine augmentation of the study's recipe: each training image shows a different part of
    the object at a different scale, so the network cannot rely on where things are.
    The crop covers a fraction of the area drawn from ``scale`` and has a width/height
    ratio drawn log-uniformly from ``ratio``, as torchvision's ``RandomResizedCrop`` draws
    them: a draw whose crop would not fit inside the image is drawn again, up to ten
    times, and then the crop is the whole image (for a square image and ranges that
    hold 1), so no draw is clipped out of its ranges. It always lies inside the image, so
    no pixels are invented (no fill mode).  One resample, like ``RandomAffineAugment``;
    active only with ``training=True``.  Keras has ``RandomCrop`` (fixed size, no
    resize) but no random-resized crop, hence this layer.
    """

    def __init__(self, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True,
                 interpolation="bilinear", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.scale = tuple(float(v) for v in scale)
        self.ratio = tuple(float(v) for v in ratio)
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio}")
        self.flip = bool(flip)
        self.interpolation = interpolation
        if _affine_is_fused(interpolation, "nearest"):
            self.supports_jit = False  # XLA cannot compile the fused transform: Keras trains without it

    ATTEMPTS = 10  # torchvision's

    def crop_sizes(self, batch, height, width):
        """Each image's crop width and height, as fractions of the image's (torchvision's
        draw: up to ``ATTEMPTS`` tries for a crop that fits, else the largest centred crop
        whose ratio is in range)."""
        shape = (batch, self.ATTEMPTS)
        area = keras.random.uniform(shape, *self.scale, seed=self.seed_generator)
        log_ratio = keras.random.uniform(shape, math.log(self.ratio[0]), math.log(self.ratio[1]),
                                         seed=self.seed_generator)
        aspect = ops.exp(log_ratio)  # width / height in pixels
        crop_w = ops.sqrt(area * aspect * (height / width))
        crop_h = ops.sqrt(area / aspect * (width / height))
        fits = ops.logical_and(crop_w <= 1.0, crop_h <= 1.0)
        first = ops.expand_dims(ops.argmax(ops.cast(fits, "int32"), axis=1), 1)
        found = ops.any(fits, axis=1)
        # None of the tries fits: the whole image, narrowed to the ratio's range (torchvision's fallback).
        image_ratio = width / height
        fallback_w = min(1.0, self.ratio[1] / image_ratio) if image_ratio > self.ratio[1] else 1.0
        fallback_h = min(1.0, image_ratio / self.ratio[0]) if image_ratio < self.ratio[0] else 1.0
        crop_w = ops.where(found, ops.squeeze(ops.take_along_axis(crop_w, first, axis=1), 1), fallback_w)
        crop_h = ops.where(found, ops.squeeze(ops.take_along_axis(crop_h, first, axis=1), 1), fallback_h)
        return crop_w, crop_h, found

    def augment(self, images, batch, height, width):
        crop_w, crop_h, found = self.crop_sizes(batch, height, width)
        # Output pixel 0 reads input `left`, pixel W-1 reads `left + crop_w (W-1)`:
        # both inside the image, so no pixel is read from outside it.
        # Anywhere inside the image; the fallback crop centred, as torchvision places it.
        left = ops.where(found, self._uniform(batch, 0.0, 1.0), 0.5) * (1.0 - crop_w) * (width - 1)
        top = ops.where(found, self._uniform(batch, 0.0, 1.0), 0.5) * (1.0 - crop_h) * (height - 1)
        sx, sy = crop_w, crop_h  # input pixels per output pixel
        if self.flip:
            mirror = ops.cast(self._uniform(batch, 0.0, 1.0) < 0.5, "float32")
        else:
            mirror = ops.zeros_like(sx)
        # Output pixel (u, v) reads input (a0 u + a2, b1 v + b2); a flip reads u from the right.
        a0 = sx * (1.0 - 2.0 * mirror)
        a2 = left + mirror * sx * (width - 1)
        b1 = sy
        b2 = top
        zeros = ops.zeros_like(a0)
        transform = ops.stack([a0, zeros, a2, zeros, b1, b2, zeros, zeros], axis=1)
        return _affine_transform(images, transform, self.interpolation, "nearest")

    def get_config(self):
        config = super().get_config()
        config.update(scale=list(self.scale), ratio=list(self.ratio), flip=self.flip,
                      interpolation=self.interpolation, seed=self.seed)
        return config


# --- the study's augmentation: exactly Keras' ImageDataGenerator ---------------------

# The study's augmentation settings, in ImageDataGenerator's own names and units.
# The slides name the transforms (rescale, shear, zoom, flip (this book: horizontal), rotation,
# shift, brightness, fill_mode='nearest') but give no ranges.  These are values in the
# style of common Keras ImageDataGenerator tutorials, chosen by this book (rotation 20,
# shifts 0.2, zoom 0.2, flips, nearest fill; brightness 0.8-1.2), not values from
# the slides.  shear_range=0.2 is what those tutorials write: ImageDataGenerator
# reads it in DEGREES, so it is a shear of at most 0.2 degrees, i.e. practically
# none.  We keep it because it is what the common recipe writes; a
# visible shear would be e.g. shear_range=11.3 (= atan(0.2) in degrees, the
# largest shear of RandomAffineAugment's shear=0.2).
STUDY_AUGMENTATION = dict(
    rotation_range=20,
    width_shift_range=0.2,
    height_shift_range=0.2,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip=True,
    brightness_range=(0.8, 1.2),
    fill_mode="nearest",
)


def image_data_generator_class():
    """Keras' ``ImageDataGenerator``, the study's augmentation and this module's oracle: public in
    Keras 2, kept by Keras 3 only as legacy code under ``keras.src``."""
    try:
        from keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


IDG_FILL_MODES = ("nearest", "constant", "reflect", "wrap")
IDG_PARAMETER_NAMES = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "brightness")
_SNAP = 1e-4  # coordinates this close to a whole pixel are read as that pixel (float32 noise)


def idg_transform_matrix(height, width, theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0,
                         flip_horizontal=0.0):
    """ImageDataGenerator's transform as rows for ``keras.ops.image.affine_transform``.

    The parameters are those of ``ImageDataGenerator.get_random_transform`` (scalars
    or ``(batch,)`` tensors): ``theta`` and ``shear`` in degrees, ``tx``/``ty`` in
    pixels, ``zx``/``zy`` zoom factors, ``flip_horizontal`` 0 or 1.  The matrix is
    IDG's ``rotation @ shift @ shear @ zoom`` about the centre (IDG's
    ``transform_matrix_offset_center``, centre ``size / 2 - 0.5``), in IDG's own
    coordinate order, followed by the left-right flip IDG applies after the
    resample, folded into the same matrix.  Result: ``(batch, 8)``, the inverse map
    (output pixel -> input pixel) Keras expects.

    Two IDG details reproduced as they are: after IDG's axis swap, its first
    coordinate (the one ``tx``, drawn from ``height_shift_range``, moves) is the
    image's column axis, and that axis is centred with the *height*
    (``transform_matrix_offset_center(m, h, w)``); both only matter for
    non-square images or different height and width shift ranges.
    """
    params = [theta, tx, ty, shear, zx, zy, flip_horizontal]
    params = [ops.reshape(ops.cast(p, "float32"), (-1,)) for p in params]
    batch = ops.shape(sum(params))
    theta, tx, ty, shear, zx, zy, flip = [ops.broadcast_to(p, batch) for p in params]
    theta = theta * (math.pi / 180.0)
    shear = shear * (math.pi / 180.0)
    cos, sin = ops.cos(theta), ops.sin(theta)
    # L = rotation @ shear @ zoom, t = rotation @ (tx, ty): IDG's matrix product.
    l00 = cos * zx
    l01 = -zy * (cos * ops.sin(shear) + sin * ops.cos(shear))
    l10 = sin * zx
    l11 = zy * (cos * ops.cos(shear) - sin * ops.sin(shear))
    t0 = cos * tx - sin * ty
    t1 = sin * tx + cos * ty
    # transform_matrix_offset_center(matrix, h, w): offset first coordinate by h.
    o0, o1 = height / 2.0 - 0.5, width / 2.0 - 0.5
    t0 = t0 + o0 - (l00 * o0 + l01 * o1)
    t1 = t1 + o1 - (l10 * o0 + l11 * o1)
    # Flip after the resample: output column c reads the resample at width-1-c.
    mirror = 1.0 - 2.0 * flip
    t0 = t0 + flip * l00 * (width - 1)
    t1 = t1 + flip * l10 * (width - 1)
    zeros = ops.zeros_like(l00)
    return ops.stack([l00 * mirror, l01, t0, l10 * mirror, l11, t1, zeros, zeros], axis=1)


def _scipy_coordinate(coordinate, size, fill_mode):
    """Map a (float) input coordinate as ``scipy.ndimage`` (order 1) does.

    Returns the coordinate to interpolate at and whether it is inside the image
    (only 'constant' reads ``cval`` outside).  scipy's boundary rules, not Keras':
    'constant' gives ``cval`` for any point beyond the first or last pixel centre
    (no blending with ``cval``), and 'wrap' repeats with period ``size - 1`` (the
    first and last pixel overlap), as ``scipy.ndimage`` documents.
    """
    n = float(size)
    rounded = ops.round(coordinate)
    c = ops.where(ops.abs(coordinate - rounded) < _SNAP, rounded, coordinate)
    inside = ops.logical_and(c >= 0.0, c <= n - 1.0)
    if fill_mode in ("nearest", "constant"):
        c = ops.clip(c, 0.0, n - 1.0)
    elif fill_mode == "reflect":  # half-sample symmetric: d c b a | a b c d | d c b a
        c = c - 2.0 * n * ops.floor(c / (2.0 * n))
        c = ops.where(c >= n, 2.0 * n - 1.0 - c, c)
    elif fill_mode == "wrap":
        period = max(n - 1.0, 1.0)
        below = c + period * (ops.floor(-c / period) + 1.0)
        above = c - period * ops.floor(c / period)
        c = ops.where(c < 0.0, below, ops.where(c > n - 1.0, above, c))
    else:
        raise ValueError(f"fill_mode must be one of {IDG_FILL_MODES}, got {fill_mode!r}")
    return c, inside


def _xla_may_compile() -> bool:
    """Whether Keras may compile the training step with XLA where XLA has no kernel for
    TensorFlow's fused image transform (``ImageProjectiveTransformV3``): TensorFlow with a
    GPU, where ``jit_compile="auto"`` turns XLA on (on a CPU it never does), or wherever
    ``environment.jit_compile()`` asks for XLA (``TINYLIB_JIT_COMPILE=1``). Keras' own
    random image layers opt out of XLA for this op; these layers take the gathers of
    :func:`_resample_like_scipy` there, which XLA compiles, or opt out where they cannot."""
    if keras.backend.backend() != "tensorflow":
        return False
    from tinylib import environment

    asked = environment.jit_compile()
    return environment.gpu_available() if asked == "auto" else bool(asked)


def _gathers_serve(interpolation: str, fill_mode: str) -> bool:
    """Whether :func:`_resample_like_scipy` gives Keras' ``affine_transform``'s numbers:
    bilinear, with coordinates clamped to the edge pixels ('nearest') in both."""
    return interpolation == "bilinear" and fill_mode == "nearest"


def _affine_is_fused(interpolation: str, fill_mode: str) -> bool:
    """Whether :func:`_affine_transform` runs TensorFlow's fused image transform, which XLA
    cannot compile: a layer that runs it says so (``supports_jit``), and a model compiled with
    ``jit_compile=True`` (on a CPU, where tinylib keeps the fused kernel for its speed)
    then trains without XLA, with Keras' warning, instead of failing in its first step."""
    gathers = _xla_may_compile() and _gathers_serve(interpolation, fill_mode)  # _affine_transform's own test
    return keras.backend.backend() == "tensorflow" and not gathers


def _affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest"):
    """Keras' ``affine_transform`` of a batch, or the same resample by gathers where XLA
    may compile the step (:func:`_xla_may_compile`)."""
    if _xla_may_compile() and _gathers_serve(interpolation, fill_mode):
        return _resample_like_scipy(images, transform, fill_mode="nearest")
    return ops.image.affine_transform(images, ops.cast(transform, images.dtype), interpolation=interpolation,
                                      fill_mode=fill_mode, data_format="channels_last")


def _resample(images, transform, fill_mode="nearest", cval=0.0):
    """IDG's bilinear resample of a batch. For 'nearest' on TensorFlow, Keras' own
    ``affine_transform`` (one fused kernel, half the time of the gathers below, and the
    same rule: coordinates clamped to the edge pixels) where XLA will not compile the step;
    elsewhere, and for the modes whose boundary rules Keras does not share with scipy,
    :func:`_resample_like_scipy`."""
    if _resample_is_fused(fill_mode):
        return ops.image.affine_transform(images, ops.cast(transform, "float32"), interpolation="bilinear",
                                          fill_mode="nearest", data_format="channels_last")
    return _resample_like_scipy(images, transform, fill_mode=fill_mode, cval=cval)


def _resample_is_fused(fill_mode: str) -> bool:
    """Whether :func:`_resample` runs TensorFlow's fused image transform (see :func:`_affine_is_fused`)."""
    return fill_mode == "nearest" and keras.backend.backend() == "tensorflow" and not _xla_may_compile()


def _resample_like_scipy(images, transform, fill_mode="nearest", cval=0.0):
    """Bilinear resample of a batch, with ``scipy.ndimage.affine_transform(order=1)``'s
    boundary rules (which ``keras.ops.image.affine_transform`` does not share for
    'constant' and 'wrap').  ``transform``: ``(batch, 8)`` rows as in Keras."""
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows = ops.convert_to_tensor(rows.reshape(1, -1).astype("float32"))
    cols = ops.convert_to_tensor(cols.reshape(1, -1).astype("float32"))
    t = ops.cast(transform, "float32")
    x = t[:, 0:1] * cols + t[:, 1:2] * rows + t[:, 2:3]  # input column, (batch, H*W)
    y = t[:, 3:4] * cols + t[:, 4:5] * rows + t[:, 5:6]  # input row
    x, inside_x = _scipy_coordinate(x, width, fill_mode)
    y, inside_y = _scipy_coordinate(y, height, fill_mode)
    x0, y0 = ops.floor(x), ops.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def index(i, size):
        return ops.cast(ops.clip(i, 0, size - 1), "int32")

    x0, x1 = index(x0, width), index(x0 + 1, width)
    y0, y1 = index(y0, height), index(y0 + 1, height)
    # One row gather per corner from (batch * H * W, channels): cheaper than a
    # per-channel take_along_axis.
    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1))

    def gather(yi, xi):
        return ops.take(flat, base + yi * width + xi, axis=0)

    top = gather(y0, x0) * (1.0 - fx) + gather(y0, x1) * fx
    bottom = gather(y1, x0) * (1.0 - fx) + gather(y1, x1) * fx
    out = top * (1.0 - fy) + bottom * fy
    if fill_mode == "constant":
        inside = ops.logical_and(inside_x, inside_y)[..., None]
        out = ops.where(inside, out, ops.cast(cval, out.dtype))
    return ops.reshape(out, (batch, height, width, channels))


def _idg_brightness(images, brightness):
    """IDG's ``apply_brightness_shift``: PIL's Brightness on the image cast to uint8.

    IDG truncates the (interpolated) pixel values to uint8, PIL multiplies by the
    factor (a blend with black, in float32) and truncates again, clipped to
    [0, 255]; reproduced here on the 0-255 scale of the [0, 1] input.
    """
    # Each operation below is a pass over the batch: the factor is made non-negative
    # once per image, so that one bound (255) clips the product of the non-negative grey
    # levels, and the result needs no clip to [0, 1] after it (the same values for any
    # finite factor).
    factor = ops.maximum(ops.cast(ops.reshape(brightness, (-1, 1, 1, 1)), "float32"), 0.0)
    grey = ops.floor(ops.clip(images, 0.0, 1.0) * 255.0 + _SNAP)
    return ops.floor(ops.minimum(grey * factor, 255.0)) / 255.0


def apply_idg_transform(images, params, fill_mode="nearest", cval=0.0, interpolation="bilinear"):
    """Apply given ImageDataGenerator parameters to a batch of float ``[0, 1]`` images.

    ``params`` is a dict with ``get_random_transform``'s keys (``theta``, ``tx``,
    ``ty``, ``shear``, ``zx``, ``zy``, ``flip_horizontal``, ``brightness``), each a
    scalar or one value per image; missing keys (or ``brightness=None``) mean "no
    change".  One bilinear resample (flip included), then brightness, clipped to
    ``[0, 1]``: what ``ImageDataGenerator.apply_transform`` gives, up to one grey
    level.  ``cval`` is in the units of ``images`` (IDG's ``cval / 255``).  This is
    what :class:`ImageDataGeneratorAugment` runs on the parameters it draws.
    """
    if interpolation != "bilinear":
        raise ValueError(f"only 'bilinear' (IDG's order=1) is supported, got {interpolation!r}")
    images = ops.convert_to_tensor(images)
    single = len(images.shape) == 3
    if single:
        images = images[None]
    images = ops.cast(images, "float32")
    height, width = images.shape[1], images.shape[2]
    batch = ops.shape(images)[0]
    geometry = {k: params[k] for k in IDG_PARAMETER_NAMES[:-1] if params.get(k) is not None}
    transform = idg_transform_matrix(height, width, **geometry)
    transform = ops.broadcast_to(transform, (batch, 8))
    out = _resample(images, transform, fill_mode=fill_mode, cval=cval)
    if params.get("brightness") is not None:
        brightness = ops.broadcast_to(ops.reshape(ops.cast(params["brightness"], "float32"), (-1,)),
                                      (batch,))
        out = _idg_brightness(out, brightness)  # in [0, 1] already
    else:
        out = ops.clip(out, 0.0, 1.0)
    return out[0] if single else out


def _shift_range(value, name):
    """IDG's ``width_shift_range``/``height_shift_range``: a float, an int or a list."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return [float(v) for v in np.ravel(value)]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


@keras.saving.register_keras_serializable(package="tinylib")
class ImageDataGeneratorAugment(TrainingOnlyAugmentation):
    """Keras' ``ImageDataGenerator`` augmentation, as one batched in-graph layer.

    Takes IDG's argument names and units and draws, per image, the parameters
    ``ImageDataGenerator.get_random_transform`` draws, with the same
    distributions:

    * ``rotation_range``: degrees, ``theta ~ U(-r, r)``.
    * ``height_shift_range`` -> ``tx``, ``width_shift_range`` -> ``ty``: a float
      ``< 1`` is a fraction of the image size, ``>= 1`` pixels, ``U(-s, s)``; an
      int ``n`` picks from ``0 .. n-1`` pixels with a random sign, a list picks
      one of its values with a random sign (fractions if all ``< 1``), as IDG.
    * ``shear_range``: DEGREES, ``shear ~ U(-s, s)``; IDG's shear matrix
      ``[[1, -sin s], [0, cos s]]`` (it also scales one axis by ``cos s``).
    * ``zoom_range``: ``z`` means ``[1 - z, 1 + z]`` (or give the pair); ``zx`` and
      ``zy`` are drawn independently (the aspect ratio changes); above 1 zooms out.
    * ``horizontal_flip``: flips half the images.
    * ``brightness_range``: ``(low, high)`` multipliers, applied as IDG does, on
      values truncated to uint8 (see :func:`apply_idg_transform`).
    * ``fill_mode``: 'nearest', 'constant', 'reflect' or 'wrap' with scipy's
      meaning; ``cval`` in the input's units (``[0, 1]``: IDG's ``cval / 255``).

    All geometry, flip included, is one bilinear resample (IDG: scipy ``order=1``),
    composed as IDG composes it (``rotation @ shift @ shear @ zoom`` about the
    centre, flip after).  Inputs are floats in ``[0, 1]`` (after
    ``Rescaling(1/255)``; IDG rescales after augmenting, which commutes with
    everything here up to IDG's uint8 truncation in brightness); outputs are
    clipped to ``[0, 1]``.  Active only with ``training=True``.  Defaults are
    IDG's (no augmentation); :data:`STUDY_AUGMENTATION` holds the study's values.
    """

    def __init__(self, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0,
                 shear_range=0.0, zoom_range=0.0, horizontal_flip=False, brightness_range=None,
                 fill_mode="nearest", cval=0.0, interpolation="bilinear", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rotation_range = float(rotation_range)
        self.width_shift_range = _shift_range(width_shift_range, "width_shift_range")
        self.height_shift_range = _shift_range(height_shift_range, "height_shift_range")
        self.shear_range = float(shear_range)
        if isinstance(zoom_range, (int, float)) and not isinstance(zoom_range, bool):
            self.zoom_range = (1.0 - float(zoom_range), 1.0 + float(zoom_range))
        elif isinstance(zoom_range, (tuple, list)) and len(zoom_range) == 2:
            self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        else:
            raise ValueError(f"zoom_range must be a float or a pair, got {zoom_range!r}")
        self.horizontal_flip = bool(horizontal_flip)
        if brightness_range is not None:
            if len(brightness_range) != 2:
                raise ValueError(f"brightness_range must be (low, high), got {brightness_range!r}")
            brightness_range = (float(brightness_range[0]), float(brightness_range[1]))
        self.brightness_range = brightness_range
        if fill_mode not in IDG_FILL_MODES:
            raise ValueError(f"fill_mode must be one of {IDG_FILL_MODES}, got {fill_mode!r}")
        if interpolation != "bilinear":
            raise ValueError(f"only 'bilinear' (IDG's order=1) is supported, got {interpolation!r}")
        self.fill_mode = fill_mode
        self.cval = float(cval)
        self.interpolation = interpolation
        if _resample_is_fused(fill_mode):
            self.supports_jit = False  # XLA cannot compile the fused transform: Keras trains without it

    def _shift(self, spec, batch, size):
        """One shift per image, in pixels, drawn as IDG's get_random_transform does."""
        if not spec:
            return ops.zeros((batch,), "float32")
        if isinstance(spec, float):
            shift = self._uniform(batch, -spec, spec)
        else:
            values = np.arange(spec) if isinstance(spec, int) else np.asarray(spec)
            index = keras.random.randint((batch,), 0, len(values), seed=self.seed_generator)
            shift = ops.take(ops.convert_to_tensor(values.astype("float32")), index)
            sign = ops.where(self._uniform(batch, 0.0, 1.0) < 0.5, -1.0, 1.0)
            shift = shift * sign
        if np.max(spec) < 1:
            shift = shift * float(size)
        return shift

    def draw_parameters(self, batch, height=64, width=64):
        """Per-image parameters with IDG's keys, each a ``(batch,)`` float tensor.

        ``brightness`` is ``None`` without a ``brightness_range``, as in IDG.
        """
        zeros = ops.zeros((batch,), "float32")
        r, s = self.rotation_range, self.shear_range
        low, high = self.zoom_range
        params = {
            "theta": self._uniform(batch, -r, r) if r else zeros,
            "tx": self._shift(self.height_shift_range, batch, height),
            "ty": self._shift(self.width_shift_range, batch, width),
            "shear": self._uniform(batch, -s, s) if s else zeros,
        }
        if low == 1 and high == 1:
            params["zx"] = params["zy"] = zeros + 1.0
        else:
            params["zx"] = self._uniform(batch, low, high)
            params["zy"] = self._uniform(batch, low, high)
        if self.horizontal_flip:
            params["flip_horizontal"] = ops.cast(self._uniform(batch, 0.0, 1.0) < 0.5, "float32")
        else:
            params["flip_horizontal"] = zeros
        params["brightness"] = (None if self.brightness_range is None
                                else self._uniform(batch, *self.brightness_range))
        return params

    def augment(self, images, batch, height, width):
        params = self.draw_parameters(batch, height, width)
        out = apply_idg_transform(images, params, fill_mode=self.fill_mode, cval=self.cval,
                                  interpolation=self.interpolation)
        return ops.cast(out, images.dtype)

    def get_config(self):
        config = super().get_config()

        def plain(value):
            return list(value) if isinstance(value, (tuple, list)) else value

        config.update(
            rotation_range=self.rotation_range,
            width_shift_range=plain(self.width_shift_range),
            height_shift_range=plain(self.height_shift_range),
            shear_range=self.shear_range,
            zoom_range=list(self.zoom_range),
            horizontal_flip=self.horizontal_flip,
            brightness_range=plain(self.brightness_range),
            fill_mode=self.fill_mode,
            cval=self.cval,
            interpolation=self.interpolation,
            seed=self.seed,
        )
        return config


def augmentation(name="augmentation", **ranges):
    """The study's augmentation (``ImageDataGenerator``'s) as one layer for the model head.

    Put it after ``Rescaling(1/255)``: it expects floats in ``[0, 1]``.  An
    :class:`ImageDataGeneratorAugment` with :data:`STUDY_AUGMENTATION`'s values;
    ``ranges`` (IDG's argument names, e.g. ``rotation_range=10``, ``seed=0``)
    override them.
    """
    return ImageDataGeneratorAugment(name=name, **{**STUDY_AUGMENTATION, **ranges})


def single_transform_layers(
    rotation=20.0,
    shift=0.2,
    shear=0.2,
    zoom=0.2,
    brightness=(0.8, 1.2),
    fill_mode="nearest",
    seed=None,
):
    """One layer per transform, to show each alone (tinylib's parametrisation).

    The ranges are :class:`RandomAffineAugment`'s (``shear`` a factor, one
    zoom for both axes), not :data:`STUDY_AUGMENTATION`'s IDG ones.
    Keras' own layers where their meaning matches ours.  Two caveats: Keras'
    ``RandomShear`` shears about the top-left corner rather than the centre
    (same shear, plus a shift), and ``RandomBrightness`` adds rather than
    multiplies, so brightness uses a brightness-only ``RandomAffineAugment``.
    Keras' layers augment whenever called (their ``training`` defaults to
    True); for ours pass ``training=True``, or use :func:`apply`.
    """
    shift_h, shift_w = _pair(shift, "shift")
    common = dict(fill_mode=fill_mode, interpolation="bilinear", seed=seed)
    return {
        "rotation": keras.layers.RandomRotation(rotation / 360.0, **common),
        "shift": keras.layers.RandomTranslation(shift_h, shift_w, **common),
        "shear": keras.layers.RandomShear(x_factor=shear, **common),
        "zoom": keras.layers.RandomZoom((-zoom, zoom), **common),
        "flip": keras.layers.RandomFlip("horizontal", seed=seed),
        "brightness": RandomAffineAugment(
            rotation=0, shift=0, shear=0, zoom=0, flip=False,
            brightness=brightness, seed=seed, name="brightness",
        ),
    }


def apply(layer, images, seed=None):
    """Run one augmentation layer in training mode on float ``[0, 1]`` images.

    ``seed`` makes the call repeatable (it reseeds the layer's generator),
    handy for figures.  Returns a NumPy array.
    """
    if seed is not None:
        for generator in _seed_generators(layer):
            state = ops.convert_to_tensor([seed, 0], generator.state.dtype)
            generator.state.assign(state)
    return ops.convert_to_numpy(layer(images, training=True))


def _seed_generators(layer):
    """The random generators a layer (Keras' or ours) draws from."""
    return [
        value
        for value in vars(layer).values()
        if isinstance(value, keras.random.SeedGenerator)
    ]


def augment_batch(images_uint8, seed=None, **ranges):
    """Augment uint8 images (as loaded) with the study's augmentation; uint8 out, to plot.

    ``ranges`` are :func:`augmentation`'s (IDG's names: ``rotation_range=...``),
    overriding :data:`STUDY_AUGMENTATION`.
    """
    images = np.asarray(images_uint8, dtype="float32") / 255.0
    single = images.ndim == 3
    if single:
        images = images[None]
    out = apply(augmentation(seed=seed, **ranges), images)
    out = np.clip(np.rint(out * 255.0), 0, 255).astype("uint8")
    return out[0] if single else out
