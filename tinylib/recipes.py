"""Training recipes: every ingredient of a modern recipe as one named, tested setting.

The study trained every model with Adam at 1e-4 (with learning-rate reduction for
Model 2), plain cross-entropy, and affine and brightness augmentation whose ranges
its slides do not give (this book's are ``augment.STUDY_AUGMENTATION``). A ``Recipe``
says all of that in one value, and each field can be changed on its own, which is
what an ablation needs (``ablation_recipes``)::

    study = RECIPES["study"]
    sgd = study.replace(optimizer="sgd", learning_rate=0.05, schedule="cosine")

``RECIPES["modern"]`` combines them: SGD with Nesterov momentum, decoupled weight
decay, label smoothing, cosine decay after a linear warmup, random-resized crops
and MixUp/CutMix (He et al. 2019, "Bag of tricks"; Yun et al. 2019, CutMix).

Where each ingredient acts:

* ``optimizer``, ``learning_rate``, ``momentum``, ``weight_decay``, ``schedule``
  and ``warmup``: the optimizer (``make_optimizer``);
* ``label_smoothing``: the loss (``make_loss``);
* ``augmentation``: a layer in the model, active only in training (``augmentation_layer``);
* ``mixup`` and ``cutmix``: a layer in the model that mixes the images, and the
  model's training loss, which mixes the labels to match (``mixing_layer``,
  ``tinylib.mixing``): both inside the compiled training step;
* ``precision``: Keras' dtype policy (``tinylib.environment.configure_precision``).
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

import keras

from tinylib.optimizers import NO_DECAY_PATTERN, OPTIMIZERS, make_optimizer  # noqa: F401  (the one factory)

__all__ = ["RECIPES", "Recipe", "ablation_recipes", "fast_ablation_recipes", "get_recipe"]

SCHEDULES = ("constant", "cosine", "linear")
AUGMENTATIONS = ("study", "crop", "mild-crop", "none")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is trained, apart from the model and the data.

    * ``optimizer``: 'adam', 'adamw', 'sgd' (with ``momentum``, Nesterov), 'rmsprop' or 'nadam'.
    * ``learning_rate``: the peak rate (after warmup, before decay).
    * ``weight_decay``: decoupled, as Keras applies it: each step multiplies the
      weights by ``1 - learning_rate * weight_decay``. PyTorch's SGD adds its weight
      decay to the gradient instead, where momentum 0.9 multiplies it by ten: its
      usual 5e-4 corresponds to about 5e-3 here.
    * ``label_smoothing``: the target puts ``1 - label_smoothing`` on the true class
      and spreads the rest over all classes, so the network is not pushed to be certain.
    * ``schedule``: 'constant', 'cosine' (decays to zero over the run) or 'linear'
      (decays to zero in a straight line, as ImageNet speed runs do: the rate is still
      useful late, and reaches zero exactly when the budget ends);
      ``warmup``: the fraction of all steps over which the rate rises linearly from 0.
    * ``augmentation``: 'study' (the study's affine transforms and brightness), 'crop'
      (random-resized crop of 35-100% of the area, and flip), 'mild-crop' (50-100%: a
      short run has too few epochs to learn from harder crops) or 'none'.
    * ``mixup`` / ``cutmix``: the Beta parameter of MixUp / CutMix, 0 for off; with
      both on, each batch gets one or the other.
    * ``precision``: 'auto' (``environment.automatic_precision``: mixed bfloat16 on a GPU and on a CPU with
      bfloat16 instructions, float32 elsewhere) or a Keras policy.
    """

    name: str = "study"
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"
    warmup: float = 0.0
    augmentation: str = "study"
    mixup: float = 0.0
    cutmix: float = 0.0
    precision: str = "auto"

    def __post_init__(self):
        for field, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                               ("augmentation", AUGMENTATIONS), ("precision", PRECISIONS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"recipe {self.name!r}: {field} must be one of "
                                 f"{', '.join(allowed)}; got {getattr(self, field)!r}")
        for field in ("learning_rate", "weight_decay", "label_smoothing", "mixup", "cutmix"):
            if getattr(self, field) < 0:
                raise ValueError(f"recipe {self.name!r}: {field} must be >= 0")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"recipe {self.name!r}: warmup is a fraction of the run, in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"recipe {self.name!r}: label_smoothing must be in [0, 1)")

    def replace(self, **changes) -> "Recipe":
        """A copy with some fields changed (give it a new ``name`` to tell the runs apart)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def mixes_batches(self) -> bool:
        return bool(self.mixup or self.cutmix)

    # --- the pieces ---------------------------------------------------------------

    def learning_rate_schedule(self, steps_per_epoch: int, epochs: int):
        """A float for 'constant', else a Keras schedule over ``epochs`` epochs."""
        if self.schedule == "constant" and not self.warmup:
            return self.learning_rate
        total = max(1, int(steps_per_epoch) * int(epochs))
        warmup_steps = int(round(self.warmup * total))
        if self.schedule == "constant":
            return _WarmupConstant(self.learning_rate, warmup_steps)
        if self.schedule == "linear":
            return _WarmupLinearDecay(self.learning_rate, warmup_steps, total)
        return _WarmupCosineDecay(self.learning_rate, warmup_steps, total)

    def make_optimizer(self, steps_per_epoch: int = 1, epochs: int = 1):
        """The optimizer, with its schedule and weight decay."""
        rate = self.learning_rate_schedule(steps_per_epoch, epochs)
        momentum = self.momentum if self.optimizer == "sgd" else 0.0
        return make_optimizer(self.optimizer, rate, momentum=momentum, weight_decay=self.weight_decay)

    def make_loss(self):
        return keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing)

    def mixing_layer(self, seed=None):
        """The in-model MixUp/CutMix layer (``tinylib.mixing``), or None when the recipe mixes nothing."""
        if not self.mixes_batches:
            return None
        from tinylib.mixing import MixUpCutMix

        return MixUpCutMix(mixup=self.mixup, cutmix=self.cutmix, seed=seed)

    def augmentation_layer(self, seed=None):
        """The in-model augmentation layer, or None for 'none'."""
        from tinylib import augment

        if self.augmentation == "study":
            return augment.augmentation(seed=seed)
        if self.augmentation == "crop":
            return augment.RandomResizedCrop(seed=seed, name="augmentation")
        if self.augmentation == "mild-crop":
            return augment.RandomResizedCrop(scale=(0.5, 1.0), seed=seed, name="augmentation")
        return None

    def describe(self) -> str:
        """One line: what differs from the study's recipe."""
        base = Recipe()
        changes = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if f.name != "name" and getattr(self, f.name) != getattr(base, f.name)]
        return f"recipe '{self.name}': " + (", ".join(changes) if changes else "the study's")


@keras.saving.register_keras_serializable(package="tinylib")
class _WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to a constant rate (the cosine schedule has its own warmup)."""

    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        fraction = keras.ops.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        return self.learning_rate * fraction

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tinylib")
class _WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to the peak, then half a cosine down to zero at ``total_steps``: Keras'
    ``CosineDecay`` with its warmup counted as the other schedules count it, from the first
    step's rate (peak / warmup steps) rather than from zero, which would spend the first
    step on a rate of 0."""

    def __init__(self, learning_rate, warmup_steps, total_steps):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = self.learning_rate * keras.ops.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        progress = keras.ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * self.learning_rate * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step >= self.warmup_steps, cosine, warmup)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="tinylib")
class _WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to the peak, then a straight line down to zero at ``total_steps``.

    ``replanned(step, total_steps)`` is the same schedule up to ``step`` and, from there,
    a straight line from the rate reached at ``step`` down to zero at the new end: a run
    on a time budget (``tinylib.budget``) moves its end as its measured speed drifts.
    ``segments`` holds each line as (first step, rate there, step where it reaches zero).
    """

    def __init__(self, learning_rate, warmup_steps, total_steps, segments=None):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        total = max(int(total_steps), self.warmup_steps + 1)
        self.segments = [tuple(x) for x in segments] if segments else [(self.warmup_steps, self.learning_rate, total)]
        self.total_steps = int(self.segments[-1][2])

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rate = self.learning_rate * keras.ops.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        for start, start_rate, end in self.segments:  # each line from its first step on
            line = start_rate * (end - step) / max(1, end - start)
            rate = keras.ops.where(step >= start, line, rate)
        return keras.ops.clip(rate, 0.0, self.learning_rate)

    def rate_at(self, step: int) -> float:
        return float(keras.ops.convert_to_numpy(self(step)))

    def replanned(self, step: int, total_steps: int) -> "_WarmupLinearDecay":
        """This schedule until ``step``, then straight down to zero at ``total_steps``."""
        step = max(int(step), self.warmup_steps)
        start_rate = self.rate_at(step) if step > self.warmup_steps else self.learning_rate
        kept = [segment for segment in self.segments if segment[0] < step]
        return _WarmupLinearDecay(self.learning_rate, self.warmup_steps, total_steps,
                                  segments=[*kept, (step, start_rate, max(int(total_steps), step + 1))])

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "segments": [list(x) for x in self.segments]}


_MODERN = Recipe(
    name="modern",
    optimizer="sgd",
    learning_rate=0.05,
    momentum=0.9,
    weight_decay=5e-3,
    label_smoothing=0.1,
    schedule="cosine",
    warmup=0.05,
    augmentation="crop",
    mixup=0.2,
    cutmix=1.0,
)
RECIPES = MappingProxyType({
    "study": Recipe(),
    "modern": _MODERN,
    # For a from-scratch run on a time budget (tinylib.budget, resnet9): the modern recipe's
    # ingredients that cost no extra compute per step and pay off within a few epochs (no
    # MixUp/CutMix, milder crops), and a rate that falls straight to zero when the time
    # is up. A starting point: fast_ablation_recipes takes its ingredients out one at a time.
    "fast": _MODERN.replace(name="fast", learning_rate=0.1, schedule="linear", warmup=0.03,
                            augmentation="mild-crop", mixup=0.0, cutmix=0.0),
})


def get_recipe(recipe: "Recipe | str | None" = None) -> Recipe:
    """A recipe by name ('study', 'modern'), or the one given; None is the study's."""
    if recipe is None:
        return RECIPES["study"]
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[str(recipe).lower()]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}, "
                         "or make one with tinylib.recipes.Recipe(...)") from None


def ablation_recipes() -> dict[str, Recipe]:
    """The study's recipe, then the modern one's ingredients added one at a time.

    Each step keeps everything before it, so the table reads as a path from the
    study's recipe to the modern one, and each row's change is that ingredient's effect.
    """
    modern = RECIPES["modern"]
    steps = {"study": RECIPES["study"]}
    current = RECIPES["study"]
    for name, changes in (
        ("+ SGD, cosine, warmup", dict(optimizer="sgd", momentum=modern.momentum,
                                        learning_rate=modern.learning_rate,
                                        schedule="cosine", warmup=modern.warmup)),
        ("+ weight decay", dict(weight_decay=modern.weight_decay)),
        ("+ label smoothing", dict(label_smoothing=modern.label_smoothing)),
        ("+ random-resized crop", dict(augmentation="crop")),
        ("+ MixUp/CutMix (modern)", dict(mixup=modern.mixup, cutmix=modern.cutmix)),
    ):
        current = current.replace(name=_slug(name), **changes)
        steps[name] = current
    # The last step is the modern recipe itself: it shares its name, and so its run folder.
    steps["+ MixUp/CutMix (modern)"] = current.replace(name="modern")
    return steps


def fast_ablation_recipes() -> dict[str, Recipe]:
    """The fast recipe, then the same with each of its ingredients taken out in turn.

    Each row differs from the first in one setting, so its change is what that one
    ingredient buys in this setting (read it with its interval, ``stats``).
    """
    fast = RECIPES["fast"]
    rows = {"fast": fast}
    for label, changes in (
        ("- label smoothing", dict(label_smoothing=0.0)),
        ("- weight decay", dict(weight_decay=0.0)),
        ("- crops and flips", dict(augmentation="none")),
        ("- decay to zero (constant rate)", dict(schedule="constant")),
        ("- warmup", dict(warmup=0.0)),
        # Keras' decoupled decay shrinks each weight by rate x decay a step: the same shrinkage at
        # Adam's rate keeps the weight decay in, so that this row takes out the optimizer alone.
        ("- SGD (Adam at 1e-3)", dict(optimizer="adam", learning_rate=1e-3,
                                      weight_decay=fast.weight_decay * fast.learning_rate / 1e-3)),
    ):
        rows[label] = fast.replace(name="fast-" + _slug(label), **changes)
    return rows


def _slug(label: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in label.lower()).split()
    return "-".join(words)
