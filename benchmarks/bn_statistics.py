"""Which part of the augmentation moves BatchNorm's statistics, measured on a trained run.

A run trained on augmented images keeps BatchNorm statistics of augmented images and is
scored on clean ones (``tinylib.recalibration``). This scores one run's checkpoint on its
validation images with the statistics re-estimated over the same training images passed
through each variant of the augmentation the run trained with: none, one family of
transforms at a time (the flip; the brightness; the geometry: rotation, shifts, shear and
zoom, with their fill), the shifts in whole pixels (moved as far, not interpolated), and
the whole at a tenth, half and full range. The further a variant's statistics sit from the
clean images', the lower its score: the rows say which transforms the evaluation's
statistics suffer from, and how that grows with the ranges, which the study's slides do
not give. The first row keeps the statistics training left.

One more line turns the question round: the validation images passed once through the
run's own augmentation, scored with the statistics training left. A study whose validation
batches came from its augmenting ``ImageDataGenerator`` (a common way to write it; the
slides do not say which generator fed validation) would have reported that figure.

    python benchmarks/bn_statistics.py RUN_DIR --images 20000
    python benchmarks/bn_statistics.py RUN_DIR --save book/results   # chapter 9's figure

Needs the run's dataset (``TINYLIB_DATA``/``TINYLIB_HOME`` as it trained) and a run
trained with ``ImageDataGeneratorAugment`` (the study's models). Changes nothing in the run
folder; ``--save`` writes the scores where chapter 9 reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from tinylib.processes import sigterm_as_exit

GEOMETRY = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range")


def variants(augmentation: dict | None, size: int = 64) -> dict[str, dict | None]:
    """{name: the ImageDataGeneratorAugment settings to re-estimate over (None: the images
    as they are)} from a record's ``augmentation``: the transforms the run trained with, one
    family at a time, its shifts in whole pixels of ``size``-pixel images (moved as far, not
    interpolated), then all of them at a tenth, half and full range. A family the run did
    not train with has no row (it would repeat the first)."""
    layer = (augmentation or {}).get("layer", "RandomAffineAugment" if augmentation else None)
    if layer != "ImageDataGeneratorAugment":
        raise ValueError(f"the run trained with {layer or 'no augmentation'}: this measures the study's "
                         "ImageDataGeneratorAugment")
    settings = {key: value for key, value in augmentation.items() if key not in ("layer", "seed")}
    zoom = settings.get("zoom_range", 0.0)
    if isinstance(zoom, (int, float)):  # IDG's z means [1 - z, 1 + z]
        settings["zoom_range"] = [1.0 - zoom, 1.0 + zoom]
    off = {"rotation_range": 0.0, "width_shift_range": 0.0, "height_shift_range": 0.0, "shear_range": 0.0,
           "zoom_range": [1.0, 1.0], "horizontal_flip": False, "brightness_range": None}
    keep = {key: settings[key] for key in ("fill_mode", "cval", "interpolation") if key in settings}

    def only(*names):
        return {**off, **keep, **{name: settings[name] for name in names if name in settings}}

    def scaled(fraction):
        ranges = dict(settings)
        for key in ("rotation_range", "shear_range"):
            ranges[key] = settings.get(key, 0.0) * fraction
        for key in ("width_shift_range", "height_shift_range"):
            ranges[key] = _scaled_shift(settings.get(key, 0.0), fraction, size)
        for key in ("zoom_range", "brightness_range"):
            if settings.get(key) is not None:
                low, high = settings[key]
                ranges[key] = [1 - (1 - low) * fraction, 1 + (high - 1) * fraction]
        return ranges

    found = {"none (the images as they are)": None}
    if settings.get("horizontal_flip"):
        found["flip only"] = only("horizontal_flip")
    if settings.get("brightness_range") is not None:
        found["brightness only"] = only("brightness_range")
    found["geometry only"] = only(*GEOMETRY)
    # IDG takes an int shift as whole pixels (0 to n-1, either way): the resampling then copies
    # pixels, and the images move about as far without being interpolated.
    whole = {key: _whole_pixels(settings.get(key, 0.0), size) for key in ("width_shift_range", "height_shift_range")}
    if any(whole.values()):
        found["whole-pixel shifts only"] = {**only(), **whole}
    # A tenth of the ranges moves an image by little more than a pixel: what is left is mostly
    # the interpolation between pixels, which every rotation, zoom, shear or fractional shift does.
    found.update({"all, at a tenth of the ranges": scaled(0.1), "all, at half the ranges": scaled(0.5),
                  "all (as the run trained)": settings})
    return found


def _whole_pixels(shift, size: int) -> int:
    """An IDG shift range as whole pixels reaching as far: a fraction of ``size`` (float < 1) or
    pixels (float >= 1) to the int n whose shifts run 0 to n-1; an int as it is; 0 for a list or none."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift:
        return 0
    if isinstance(shift, int):
        return abs(shift)
    pixels = abs(shift) * size if abs(shift) < 1 else abs(shift)
    return math.floor(pixels) + 1


def _scaled_shift(shift, fraction: float, size: int):
    """``fraction`` of an IDG shift range, in its own unit: a fraction of the image stays one, an
    int stays whole pixels (at least 1), pixels below one become a fraction; a list is kept."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)):
        return shift
    if isinstance(shift, int):
        return max(1, round(shift * fraction)) if shift else 0
    if abs(shift) < 1:
        return shift * fraction
    return shift * fraction if abs(shift * fraction) >= 1 else shift * fraction / size


def augmented(images: np.ndarray, settings: dict | None, seed: int = 0, batch: int = 500) -> np.ndarray:
    """``images`` (0-255) through an ImageDataGeneratorAugment with ``settings``, back on 0-255."""
    if settings is None:
        return images
    import keras

    from tinylib.augment import ImageDataGeneratorAugment

    layer = ImageDataGeneratorAugment(seed=seed, **settings)
    out = np.empty(images.shape, "float32")  # one copy of the images in float32 (20,000: about 1 GB), not two
    for i in range(0, len(images), batch):
        out[i:i + batch] = keras.ops.convert_to_numpy(
            layer(images[i:i + batch].astype("float32") / 255.0, training=True)) * 255.0
    return out


def augmented_validation(model, dataset, augmentation: dict, seed: int = 0) -> float:
    """Validation top-1 with every validation image passed once through the run's whole
    augmentation (drawn with ``seed``), the model's statistics as they are: what a validation
    generator that augments as training's did would report. The images go back to uint8
    (rounded), as the model takes them; that moves a pixel by at most half a grey level."""
    from tinylib import evaluate

    settings = variants(augmentation, size=dataset.val.images.shape[1])["all (as the run trained)"]
    images = np.clip(np.rint(augmented(dataset.val.images, settings, seed=seed)), 0, 255).astype(np.uint8)
    return evaluate.evaluate(model, dataclasses.replace(dataset.val, images=images), dataset.class_names).top1


def plan(augmentation: dict | None, size: int = 64, run_batch: int | None = None) -> dict[str, tuple]:
    """{name: (augmentation settings, the re-estimate's batch size)}: :func:`variants`, in
    batches of ``recalibration.BATCH_SIZE``; with ``run_batch`` (the batch the run trained
    with, where it is not that), the whole augmentation once more in batches of that size."""
    from tinylib.recalibration import BATCH_SIZE

    chosen = {name: (settings, BATCH_SIZE) for name, settings in variants(augmentation, size).items()}
    if run_batch and run_batch != BATCH_SIZE:
        whole = chosen["all (as the run trained)"][0]
        chosen[f"all (as the run trained), in its batches of {run_batch}"] = (whole, run_batch)
    return chosen


def measure(model, dataset, augmentation: dict, count: int, report=print, only=None,
            run_batch: int | None = None, as_trained: float | None = None) -> dict[str, float]:
    """{variant: validation top-1} with the statistics re-estimated over ``count`` training
    images through each variant (those whose names start with one of ``only``, if given);
    first, the statistics the model came with. With ``run_batch`` (the batch the run trained
    with, where it is not the re-estimate's), a last variant re-estimates through the whole
    augmentation in batches of that size: between it and the first row, only the averaging
    differs (training's moving average over the last batches, against every image's).
    ``as_trained``: the first row, where the caller has scored it already."""
    from tinylib import batchnorm, evaluate
    from tinylib.recalibration import progress_lines, training_images

    def top1() -> float:
        return evaluate.evaluate(model, dataset.val, dataset.class_names).top1

    scores = {"the statistics training left": top1() if as_trained is None else as_trained}
    report(f"{'the statistics training left':47s} {scores['the statistics training left']:7.2%}")
    images = training_images(dataset, count)
    for name, (settings, batch_size) in plan(augmentation, dataset.train.images.shape[1], run_batch).items():
        if only and not name.startswith(tuple(only)):
            continue
        start = time.time()
        batchnorm.recalibrate(model, augmented(images, settings), batch_size=batch_size,
                              progress=progress_lines(name))
        scores[name] = top1()
        report(f"{name:47s} {scores[name]:7.2%}   ({time.time() - start:.0f} s)")
    return scores


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (`train` prints it)")
    parser.add_argument("--images", type=_positive_int, default=20_000, help="training images to re-estimate over")
    parser.add_argument("--only", help="the variants whose names start so, comma-separated ('geometry,all')")
    parser.add_argument("--save", metavar="DIR", help="write the scores to DIR/evaluations/<run>-bn-statistics.json "
                                                      "(book/results: chapter 9's figure)")
    args = parser.parse_args(argv)
    if args.only and args.save:
        parser.error("--save publishes every variant: leave out --only")
    from tinylib import data, evaluate, recalibration, runs
    from tinylib.profiles import get_profile

    run = Path(args.run)
    record = runs.load_run(run)
    if args.save:
        recalibration.check_publishable(record, run.name)
    model, checked = recalibration.loaded_with_state(run, evaluate.load_trained_model)
    state = checked or runs.read_state(run) or {}
    dataset = data.load().subset(**get_profile(record["profile"]).subset_kwargs())
    runs.check_same_classes(record, dataset, run.name)
    count = min(args.images, len(dataset.train))
    print(f"{record['model']}, {run}: after epoch {state.get('epochs_done', record.get('epochs_run'))}"
          f"{' and ' + str(state['partial']['batches']) + ' batches' if state.get('partial') else ''}; "
          f"validation top-1 on {len(dataset.val):,} images, the statistics re-estimated over {count:,} "
          "training images through:", flush=True)
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    as_trained = evaluate.evaluate(model, dataset.val, dataset.class_names).top1
    try:  # these are the run's weights and images: the check a saved figure needs
        print(recalibration.check_against_record(as_trained, len(dataset.val), record, checked, bool(args.save)),
              flush=True)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print("the validation images passed once through the run's augmentation...", flush=True)
    turned = augmented_validation(model, dataset, record["augmentation"])
    print(f"the validation images augmented as in training, the statistics training left: {turned:.2%}", flush=True)
    scores = measure(model, dataset, record["augmentation"], count, report=lambda line: print(line, flush=True),
                     only=only, run_batch=record.get("batch_size"), as_trained=as_trained)
    if args.save:
        settings = {name: {"augmentation": augmentation, "batch_size": batch_size} for name, (augmentation, batch_size)
                    in plan(record["augmentation"], dataset.train.images.shape[1], record.get("batch_size")).items()}
        saved = recalibration.publish_augmentation_scores(scores, count, len(dataset.val), record, state, run.name,
                                                          args.save, settings=settings, validation_augmented=turned)
        print(f"saved: {saved}")


if __name__ == "__main__":
    with sigterm_as_exit():
        main()
