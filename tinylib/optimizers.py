"""Every optimizer a run uses, made in one place.

The study chose Adam at a learning rate of 1e-4 and assessed RMSprop, SGD and Nadam as
alternatives (its slides give no rate or setting for those; this book runs them at
Keras' defaults, at the same 1e-4); the recipes of ``tinylib.recipes`` add AdamW, momentum and decoupled weight
decay. One factory makes both, so a name means the same optimizer everywhere and the
record's optimizer can be rebuilt from its name.
"""

from __future__ import annotations

from types import MappingProxyType

import keras

from tinylib import fused_adam

# name -> Keras class; the first four are the study's comparison. Adam and AdamW are
# Keras' own, their update one fused kernel on TensorFlow (tinylib.fused_adam).
OPTIMIZERS = MappingProxyType({
    "adam": fused_adam.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
    "nadam": keras.optimizers.Nadam,
    "adamw": fused_adam.AdamW,
})
STUDY_OPTIMIZERS = ("adam", "rmsprop", "sgd", "nadam")

# Decoupled weight decay is not applied to BatchNorm's scale and shift or to biases:
# shrinking them towards zero regularizes nothing and only fights the normalization.
NO_DECAY_PATTERN = ("gamma", "beta", "bias")


def make_optimizer(name: str = "adam", learning_rate=1e-4, *, momentum: float = 0.0,
                   weight_decay: float = 0.0):
    """The optimizer ``name`` at ``learning_rate`` (a float or a Keras schedule).

    ``momentum`` is SGD's (Nesterov when set; 0, Keras' default, is plain SGD, which the
    optimizer comparison uses: the slides give no SGD settings). ``weight_decay`` is decoupled, as Keras applies it, and spares BatchNorm's
    scale and shift and the biases; AdamW gets 0 unless given, so that its own default
    (0.004) cannot hide in a record.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}. Valid names: {', '.join(OPTIMIZERS)}")
    kwargs = {"learning_rate": learning_rate}
    if key == "sgd":
        kwargs.update(momentum=momentum, nesterov=bool(momentum))
    if weight_decay or key == "adamw":
        kwargs["weight_decay"] = weight_decay
    optimizer = OPTIMIZERS[key](**kwargs)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_PATTERN))
    return optimizer
