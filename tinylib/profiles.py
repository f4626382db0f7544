"""Run profiles: the one place that says what 'smoke', 'quick' and 'full' mean.

A profile fixes how much data and how many epochs a run uses, so the same
notebook cell can take seconds in CI, minutes on a laptop CPU, or reproduce
the study at full scale (hours a model on a CPU, where this book's records were
made; much less on a GPU).  Choose one with the environment
variable ``TINYLIB_PROFILE``; without it, 'full' is used where a GPU is
visible and 'quick' everywhere else.
"""

from __future__ import annotations

import dataclasses
import os
from types import MappingProxyType

PROFILE_ENV = "TINYLIB_PROFILE"


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big a run is: the data subset, the epochs and the batch size.

    ``classes`` / ``train_per_class`` / ``val_per_class`` of ``None`` mean
    "all of them" (200 classes, 500 train and 50 val images per class).
    ``model_epochs`` lets a heavy model train for fewer epochs than the
    default, so a CPU build stays within its time budget ('optimizers' is the
    optimizer comparison's entry, 'recipes' the recipe ablation's, 'transfer_head' and
    'transfer_all' the fine-tuning stages'); ``model_options`` are architecture
    options ('transfer' holds the upsampled size for fine-tuning).
    """

    name: str
    classes: int | None
    train_per_class: int | None
    val_per_class: int | None
    epochs: int
    batch_size: int
    seed: int = 0
    model_epochs: MappingProxyType = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    model_options: MappingProxyType = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    description: str = ""

    def epochs_for(self, model_name: str) -> int:
        """Epochs for one model in this profile."""
        return int(self.model_epochs.get(model_name, self.epochs))

    def options_for(self, model_name: str) -> dict:
        """Architecture options this profile needs for one model (none at full scale).

        Short runs take few optimizer steps, too few for BatchNorm's moving
        statistics (momentum 0.99) to settle, so the quick profile lets them adapt faster.
        """
        return dict(self.model_options.get(model_name, {}))

    def subset_kwargs(self) -> dict:
        """The arguments of ``TinyImageNet.subset`` this profile asks for."""
        return {
            "classes": self.classes,
            "per_class": self.train_per_class,
            "val_per_class": self.val_per_class,
            "seed": self.seed,
        }

    @property
    def num_classes(self) -> int:
        """How many classes the profile trains on (all 200 where ``classes`` is None)."""
        return self.classes or 200

    @property
    def train_images(self) -> int:
        """How many training images an epoch sees (all 100,000 where the counts are None)."""
        return self.num_classes * (self.train_per_class or 500)

    @property
    def val_images(self) -> int:
        """How many validation images a run is scored on (all 10,000 where the counts are None)."""
        return self.num_classes * (self.val_per_class or 50)

    def describe(self, *, epochs: int | None = None, batch_size: int | None = None,
                 model: str | None = None) -> str:
        """One line a student can read: what this profile trains on.

        ``epochs``/``batch_size`` are what a command asks for where they differ from the
        profile's (``--epochs``, ``--batch-size``); ``model`` the model it trains, whose epochs
        in this profile may be its own (Model 2's cap): the line never shows a figure the run
        does not use, nor calls the profile's own figure an override, without saying so.
        """
        def changed(value, default):
            return f" (the profile's: {default})" if value is not None and value != default else ""

        own = self.epochs_for(model) if model else self.epochs
        epochs_used = epochs if epochs is not None else own
        whose = (f" ({model}'s in this profile; {self.epochs} for most models)"
                 if epochs_used == own != self.epochs else changed(epochs, own))
        batch_used = batch_size if batch_size is not None else self.batch_size
        return (
            f"profile '{self.name}': {self.num_classes} classes, {self.train_images:,} train / "
            f"{self.val_images:,} val images, {epochs_used} epochs{whose}, "
            f"batch {batch_used}{changed(batch_size, self.batch_size)}"
        )


PROFILES: MappingProxyType = MappingProxyType(
    {
        "smoke": Profile(
            name="smoke",
            classes=5,
            train_per_class=8,
            val_per_class=4,
            epochs=2,
            batch_size=8,
            model_epochs=MappingProxyType(
                # Model 3: one epoch, as each of its checkpoints writes 1.7 GB.
                {"model3": 1, "recipes": 1, "transfer_head": 1, "transfer_all": 1}
            ),
            model_options=MappingProxyType(
                # The ResNets as in quick: at an eighth of the width (8 channels) TensorFlow's
                # oneDNN kernels crash (SIGABRT/SIGSEGV) while training on x86 CPUs (TF 2.20, 2.21).
                {m: {"width": 16, "stem_stride": 2} for m in ("resnet18", "resnet34", "resnet50")}
                | {"transfer": {"image_size": 96}}
            ),
            description="seconds: for tests and nbval; numbers mean nothing",
        ),
        "quick": Profile(
            name="quick",
            classes=10,
            train_per_class=100,
            val_per_class=30,
            epochs=6,
            batch_size=32,
            model_epochs=MappingProxyType(
                {"model3": 2, "model4": 3, "model5": 2, "optimizers": 3,
                 "recipes": 6, "transfer_head": 2, "transfer_all": 1}
            ),
            model_options=MappingProxyType(
                {m: {"bn_momentum": 0.9} for m in ("model3", "model4", "model5")}
                # A quarter of ResNet-18's width (16 times fewer operations) and a stride-2
                # stem (4 times fewer again), so the ablation's seven runs take minutes on a
                # CPU; the full profile uses the paper's width and a stride-1 stem.
                | {m: {"width": 16, "stem_stride": 2} for m in ("resnet18", "resnet34", "resnet50")}
                | {"transfer": {"image_size": 96}}
            ),
            description="minutes on a laptop CPU: each model learns on a 10-class subset; "
            "the heavy models train fewer epochs, and the ResNets are narrower",
        ),
        "full": Profile(
            name="full",
            classes=None,
            train_per_class=None,
            val_per_class=None,
            epochs=30,
            batch_size=128,
            model_epochs=MappingProxyType(
                # Model 2 trains until its early stopping (the study's callback; the slides give
                # no epoch count) ends the run: 100 epochs is only a cap, high enough not to stop it.
                # ResNet-9's 40 bound chapter 13's run on a time budget, which stops sooner.
                {"model2": 100, "resnet18": 60, "resnet34": 60, "resnet50": 60, "resnet9": 40,
                 "transfer_head": 3, "transfer_all": 15}
            ),
            model_options=MappingProxyType({"transfer": {"image_size": 128}}),
            description="the study's scale: all 100,000 train and 10,000 val images "
            "(hours a model on a CPU: see book/results for measured times)",
        ),
    }
)


def table():
    """Every profile in one table (a pandas DataFrame, a row a profile): its classes, images,
    epochs, batch and what it is for."""
    import pandas as pd

    return pd.DataFrame.from_dict({p.name: {
        "classes": p.num_classes, "train images": p.train_images, "val images": p.val_images,
        "epochs": p.epochs, "batch": p.batch_size, "what it is for": p.description,
    } for p in PROFILES.values()}, orient="index")


def gpu_available() -> bool:
    """True when the active Keras backend computes on a GPU (``tinylib.environment``)."""
    from tinylib.environment import gpu_available as on_gpu

    return on_gpu()


def get_profile(name: str | Profile | None = None) -> Profile:
    """Return a profile by name, from ``TINYLIB_PROFILE``, or by the hardware.

    An explicit ``name`` wins, then the environment variable, then 'full' on a
    GPU and 'quick' on a CPU.
    """
    if isinstance(name, Profile):
        return name
    chosen = name or os.environ.get(PROFILE_ENV)
    if not chosen:
        chosen = "full" if gpu_available() else "quick"
    try:
        return PROFILES[chosen.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown profile {chosen!r}: choose one of {', '.join(PROFILES)} "
            f"(set {PROFILE_ENV}=quick, for example)"
        ) from None
