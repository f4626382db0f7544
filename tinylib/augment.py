"""The seed's data augmentation, rebuilt as an in-graph Keras layer.

The seed used ``ImageDataGenerator``, which transforms one image at a time
in NumPy/SciPy on the CPU, once per transform.  Here the geometric
transforms (rotation, shift, shear, zoom, horizontal flip) are composed into
one affine matrix per image and applied with a single resample
(``keras.ops.image.affine_transform``), batched, inside the model.  That is
faster, runs on whatever device the model runs on, and works with both the
TensorFlow and the JAX backend.

Conventions (all ranges are symmetric around "no change"):

* ``rotation``: degrees, angle drawn from ``[-rotation, rotation]``.
* ``shift``: fraction of the image size, drawn from ``[-shift, shift]``; a
  float for both axes or a ``(height, width)`` pair.
* ``shear``: horizontal shear *factor* (tan of the shear angle), drawn from
  ``[-shear, shear]``, the meaning of ``keras.layers.RandomShear``'s
  ``x_factor``.  ``ImageDataGenerator``'s ``shear_range`` is in degrees
  instead: ``shear=0.2`` corresponds to ``shear_range=degrees(atan(0.2))``,
  about 11.3 degrees.
* ``zoom``: one factor per image (aspect ratio kept) drawn from
  ``[1 - zoom, 1 + zoom]``; like ``ImageDataGenerator``, a factor above 1
  shows more of the image (zooms out).
* ``brightness``: a ``(low, high)`` range of per-image *multipliers*, as in
  ``ImageDataGenerator(brightness_range=...)``.  (``keras.layers.
  RandomBrightness`` adds an offset instead, so it is not used here.)

Inputs are float images in ``[0, 1]`` (the model head rescales uint8 first);
outputs are clipped to ``[0, 1]``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = [
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
    * ``zoom``: sampling scale; above 1 zooms out, as in ImageDataGenerator,
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


class _TrainingOnlyAugmentation(keras.layers.Layer):
    """What this module's layers share: they augment only with ``training=True``,
    draw their parameters from one seeded generator, and keep the image shape."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch,), minval=low, maxval=high, seed=self.seed_generator)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        images = ops.cast(inputs, self.compute_dtype)
        return self.augment(images, ops.shape(images)[0], images.shape[1], images.shape[2])

    def augment(self, images, batch, height, width):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tinylib")
class RandomAffineAugment(_TrainingOnlyAugmentation):
    """Random rotation/shift/shear/zoom/flip in one resample, then brightness.

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
            images = ops.image.affine_transform(
                images,
                ops.cast(transform, images.dtype),
                interpolation=self.interpolation,
                fill_mode=self.fill_mode,
                data_format="channels_last",
            )
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
class RandomResizedCrop(_TrainingOnlyAugmentation):
    """Random crop of random area and aspect ratio, resized back to full size, plus flip.

    The "Inception-style" crop that modern ImageNet recipes use instead of the
    seed's small rotations and shifts: each training image shows a different part of
    the object at a different scale, so the network cannot rely on where things are.
    The crop covers a fraction of the area drawn from ``scale`` and has a width/height
    ratio drawn log-uniformly from ``ratio``; it always lies inside the image, so no
    pixels are invented (no fill mode).  One resample, like ``RandomAffineAugment``;
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

    def augment(self, images, batch, height, width):
        area = self._uniform(batch, *self.scale)
        log_ratio = self._uniform(batch, math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = ops.exp(log_ratio)
        # Crop size as fractions of the image; clipped so the crop fits inside it.
        crop_w = ops.minimum(ops.sqrt(area * aspect), 1.0)
        crop_h = ops.minimum(ops.sqrt(area / aspect), 1.0)
        # Output pixel 0 reads input `left`, pixel W-1 reads `left + crop_w (W-1)`:
        # both inside the image, so no pixel is read from outside it.
        left = self._uniform(batch, 0.0, 1.0) * (1.0 - crop_w) * (width - 1)
        top = self._uniform(batch, 0.0, 1.0) * (1.0 - crop_h) * (height - 1)
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
        return ops.image.affine_transform(
            images, ops.cast(transform, images.dtype), interpolation=self.interpolation,
            fill_mode="nearest", data_format="channels_last")

    def get_config(self):
        config = super().get_config()
        config.update(scale=list(self.scale), ratio=list(self.ratio), flip=self.flip,
                      interpolation=self.interpolation, seed=self.seed)
        return config


def augmentation(name="augmentation", **ranges):
    """The seed's augmentation as one layer for the model head.

    Put it after ``Rescaling(1/255)``: it expects floats in ``[0, 1]``.
    ``ranges`` are :class:`RandomAffineAugment`'s arguments (rotation=20,
    shift=0.2, shear=0.2, zoom=0.2, brightness=(0.8, 1.2), flip=True,
    flip_probability=0.5, fill_mode="nearest", seed=None): the ranges this
    course chose for the seed, which named the transforms but gave no ranges.
    """
    return RandomAffineAugment(name=name, **ranges)


def single_transform_layers(
    rotation=20.0,
    shift=0.2,
    shear=0.2,
    zoom=0.2,
    brightness=(0.8, 1.2),
    fill_mode="nearest",
    seed=None,
):
    """One layer per transform, with the same ranges, to show each alone.

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
    """Augment uint8 images (as loaded) and return uint8 images to plot.

    ``ranges`` are those of :func:`augmentation`.
    """
    images = np.asarray(images_uint8, dtype="float32") / 255.0
    single = images.ndim == 3
    if single:
        images = images[None]
    out = apply(augmentation(seed=seed, **ranges), images)
    out = np.clip(np.rint(out * 255.0), 0, 255).astype("uint8")
    return out[0] if single else out
