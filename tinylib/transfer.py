"""Transfer learning with Model 5: fine-tune the pretrained backbone in stages.

Chapter 10 trains all of Model 5 from the first step (the slides do not say whether
the study froze any layers): the randomly initialized head sends large, noisy
gradients into the pretrained backbone and spoils some of what it knew. The usual remedy (Keras' transfer-learning guide; Kornblith et al. 2019)
runs in two stages:

1. **head**: the backbone is frozen (``trainable = False``, which in Keras also
   runs its BatchNorm layers in inference mode) and only the new head learns, at
   a normal learning rate;
2. **all**: every layer is unfrozen and the whole network trains on from stage 1's
   weights at a learning rate ten times lower, so the backbone moves only a little.
   Its BatchNorm layers stay frozen by default: their ImageNet statistics are
   better estimates than small batches of Tiny ImageNet give.

Optionally the images are upsampled inside the model (``image_size=128``), so the
filters, learned on ImageNet's 224x224 crops, see objects nearer the size they
learned them at. Inputs get the preprocessing the ImageNet weights expect.
Each stage is an ordinary run (``tinylib.train.fit``) with its own folder and
record; a run without ImageNet weights says ``"weights": "random"`` and
``"pretrained": false`` in its record.
"""

from __future__ import annotations


import keras

from tinylib import environment, models
from tinylib.profiles import get_profile
from tinylib.train import Run, begun_precision, build, fit

__all__ = ["STAGES", "backbone_of", "fine_tune", "set_backbone_trainable"]

STAGES = ("head", "all")


def backbone_of(model: keras.Model) -> keras.Model:
    """Model 5's ResNet50 backbone (one nested layer of the model)."""
    return model.get_layer("resnet50")


def set_backbone_trainable(model: keras.Model, trainable: bool, freeze_batchnorm: bool = True) -> None:
    """Freeze or unfreeze the backbone; unfrozen, its BatchNorm layers may stay frozen."""
    backbone = backbone_of(model)
    backbone.trainable = trainable
    if trainable and freeze_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def fine_tune(data, profile=None, *, weights="imagenet", image_size: int | None = None,
              head_epochs: int | None = None, all_epochs: int | None = None,
              head_learning_rate: float = 1e-3, all_learning_rate: float = 1e-4,
              freeze_batchnorm: bool = True, augment: bool = True, name: str | None = None,
              stages=STAGES, devices=None, preprocess: str = "imagenet", **fit_kwargs) -> dict[str, Run]:
    """Train Model 5 in stages: the head on a frozen backbone, then all layers.

    ``weights`` is 'imagenet' (Keras' download), a weights file, or None (random:
    the stages then say nothing about pretraining, and the records say so).
    ``image_size`` upsamples inside the model (None keeps 64x64; 'profile' takes
    the profile's choice: 96 in smoke and quick, 128 in full). The epochs
    default to the profile's 'transfer_head' and 'transfer_all' entries.
    Returns ``{"head": run, "all": run}`` (the stages asked for); each stage
    resumes on its own, and stage 'all' starts from stage 'head''s final weights.
    ``preprocess`` is the backbone's inputs: 'imagenet' (what its weights expect) or 'unit'
    (the study's [0, 1], to separate the inputs from the stages).
    The stages train in folders named after the run (``-finetune-128px-head``; from
    random weights ``-finetune-128px-random-head``; on [0, 1] inputs ``-unit`` before
    the stage, and stage 'all' with BatchNorm training ``-bn-training-all``;
    ``-batch<N>``/``-seed<N>`` added on another batch or seed, and a ``suffix`` if given);
    a ``name`` is used as given (``<name>-head``): another batch or seed then needs
    another name. A ``seed`` draws the head's initial weights too, as in ``train_model``. Stages begun
    in another precision than 'auto' now gives go on in theirs, as ``train_model``'s runs do.
    On the JAX backend, where several GPUs are visible (or ``devices`` names several), both stages train
    data-parallel over all of them, as ``train.train_model`` does.
    """
    with environment.parallel_scope(devices):
        return _fine_tune(data, profile, weights=weights, image_size=image_size, head_epochs=head_epochs,
                          all_epochs=all_epochs, head_learning_rate=head_learning_rate,
                          all_learning_rate=all_learning_rate, freeze_batchnorm=freeze_batchnorm,
                          augment=augment, name=name, stages=stages, preprocess=preprocess, **fit_kwargs)


def stage_suffix(image_size: int | None, pretrained: bool, stage: str, extra: str = "", *,
                 preprocess: str = "imagenet", freeze_batchnorm: bool = True) -> str:
    """A stage's run folder suffix, '-finetune-128px-head': before the stage, '-random' from
    random weights, '-unit' on [0, 1] inputs, '-bn-training' for stage 'all' with its
    BatchNorm training (as ``results.record_key`` names the rows), and ``extra``;
    reproduce names the planned stages with it."""
    return (f"-finetune-{image_size or 64}px" + ("" if pretrained else "-random")
            + ("-unit" if preprocess == "unit" else "")
            + ("-bn-training" if stage == "all" and not freeze_batchnorm else "") + extra + f"-{stage}")


def _fine_tune(data, profile, *, weights, image_size, head_epochs, all_epochs, head_learning_rate,
               all_learning_rate, freeze_batchnorm, augment, name, stages, preprocess,
               **fit_kwargs) -> dict[str, Run]:
    profile = get_profile(profile)
    if image_size == "profile":
        image_size = profile.options_for("transfer").get("image_size")
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise ValueError(f"stages must be taken from {STAGES}, got {stages}")
    if "all" in stages and "head" not in stages:  # else 'all' would start from a random head
        raise ValueError("stage 'all' starts from stage 'head''s final weights: ask for both, "
                         "stages=('head', 'all') (a finished head stage is read back, not trained again)")
    seed = fit_kwargs.get("seed")  # as train_model: the caller's seed draws the weights and trains
    pretrained = weights is not None
    # A suffix unless named: another batch or seed then trains in folders of its own (run_folder).
    extra = fit_kwargs.pop("suffix", "")

    def folder_of(stage: str) -> dict:
        if name:
            return {"name": f"{name}-{stage}"}
        return {"suffix": stage_suffix(image_size, pretrained, stage, extra, preprocess=preprocess,
                                       freeze_batchnorm=freeze_batchnorm)}

    # Both stages build on one model: the precision the head stage began in, if it has begun.
    begun = begun_precision("model5", profile, fit_kwargs, **folder_of("head"))
    with environment.resumed_run_precision(begun):
        keras.utils.set_random_seed(profile.seed if seed is None else seed)
        model = build("model5", data, profile, augment=augment, weights=weights, preprocess=preprocess,
                      image_size=image_size, compile=False)
        return _train_stages(model, data, profile, stages=stages, folder_of=folder_of, pretrained=pretrained,
                             notes={"pretrained": pretrained, "image_size": image_size or 64, "preprocess": preprocess},
                             epochs={"head": head_epochs or profile.epochs_for("transfer_head"),
                                     "all": all_epochs or profile.epochs_for("transfer_all")},
                             rates={"head": head_learning_rate, "all": all_learning_rate},
                             freeze_batchnorm=freeze_batchnorm, **fit_kwargs)


def _train_stages(model, data, profile, *, stages, folder_of, pretrained, notes, epochs, rates,
                  freeze_batchnorm, **fit_kwargs) -> dict[str, Run]:
    """Each stage asked for, in order, on ``model``: frozen or not, recompiled, fit."""
    origin = model.tinylib_weights
    runs = {}
    for stage in STAGES:
        if stage == "head":
            set_backbone_trainable(model, False)
        else:
            set_backbone_trainable(model, True, freeze_batchnorm=freeze_batchnorm)
        if stage not in stages:
            continue
        # Recompiling after changing `trainable` is what makes the change take effect.
        models.compile_model(model, "adam", rates[stage])
        model.tinylib_weights = origin
        if not pretrained:
            print(f"Stage '{stage}' WITHOUT pretrained weights: the backbone starts from random weights.")
        runs[stage] = fit(model, data, profile, **folder_of(stage), epochs=epochs[stage],
                          callbacks=(), notes={**notes, "stage": stage,
                                               "trainable_parameters": _trainable_count(model),
                                               # BatchNorm trains or not in stage 'all' only (the head's is frozen whole)
                                               **({"freeze_batchnorm": freeze_batchnorm} if stage == "all" else {})},
                          **fit_kwargs)
        if not runs[stage].record.get("finished"):  # out of time: stage 'all' needs 'head' whole
            break
    return runs


def _trainable_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(v) for v in model.trainable_variables))
