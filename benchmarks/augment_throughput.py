"""Augmentation throughput: tinylib's IDG layer vs ImageDataGenerator's own pipelines.

The same augmentation three ways, with the study's values
(``tinylib.augment.STUDY_AUGMENTATION``: rotation 20, shifts 0.2, shear 0.2
degrees, zoom 0.2, flips, brightness 0.8-1.2, nearest fill) and ``rescale=1/255``:

* ``ImageDataGenerator.flow_from_directory``: the generator's pipeline for a folder
  of JPEGs (the slides do not name the study's loader), which reads and decodes them
  every epoch (here N training JPEGs, linked into a
  temporary folder with one subfolder per class);
* ``ImageDataGenerator.flow``: the same generator over the decoded uint8 images
  in memory (augmentation alone);
* tinylib's ``ImageDataGeneratorAugment`` after ``Rescaling`` (the model head),
  eager and compiled, over the same in-memory images; it hands back NumPy
  batches, so its timing includes the device sync.

It prints images/s of each and, for tinylib, both ratios.

    python benchmarks/augment_throughput.py [--images 2048] [--batch 128]

Images: N training JPEGs of ``$TINYLIB_DATA`` (the dataset folder, the folder holding
it, or the zip; round-robin over classes), copied into a temporary folder; without
``TINYLIB_DATA``, N random images written as JPEGs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tinylib.augment import STUDY_AUGMENTATION  # noqa: E402
from tinylib.augment_speed import (  # noqa: E402
    best_rates,
    generator_flow,
    layer_compiled,
    layer_eager,
    model_head,
    study_generator,
)


def copy_training_jpegs(n, folder):
    """Copy N real training JPEGs, round-robin over classes, into ``folder``/class/; return a
    description, or None and why not. ``$TINYLIB_DATA`` is read as tinylib reads it: the
    dataset folder, the folder holding it, or the zip."""
    from tinylib.data import DataError, open_source

    root = os.environ.get("TINYLIB_DATA")
    if not root:
        return None, "TINYLIB_DATA is not set"
    try:
        source = open_source(root)
        per_class = [[(wnid, name) for name in source.list_dir(f"train/{wnid}/images") if name.endswith(".JPEG")]
                     for wnid in source.list_dir("train")]
    except DataError as err:
        return None, str(err)
    chosen = [names[i] for i in range(max(map(len, per_class), default=0)) for names in per_class
              if i < len(names)][:n]
    if len(chosen) < n:
        return None, f"only {len(chosen)} training JPEGs in {source.describe()}"
    for wnid, name in chosen:
        (folder / wnid).mkdir(exist_ok=True)
        (folder / wnid / name).write_bytes(source.read(f"train/{wnid}/images/{name}"))
    return f"{n} Tiny ImageNet train JPEGs ($TINYLIB_DATA)", None


def image_folder(n, folder):
    """Fill ``folder`` with N JPEGs in class subfolders; return (uint8 images, description)."""
    from PIL import Image

    from tinylib.data import decode_image

    source, why_not = copy_training_jpegs(n, folder)
    if source is None:
        print(f"note: {why_not}; using random images written as JPEGs")
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            (folder / f"c{i % 10}").mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / f"c{i % 10}" / f"{i}.JPEG", quality=90)
        source = f"{n} random images as JPEGs (set TINYLIB_DATA for real ones)"
    paths = sorted(folder.glob("*/*.JPEG"))
    images = np.stack([decode_image(p.read_bytes(), p.name) for p in paths])
    return images, source


def directory_pipeline(folder, batch):
    """``flow_from_directory``: the generator reading and decoding the JPEGs of a folder."""
    flow = study_generator().flow_from_directory(str(folder), target_size=(64, 64), batch_size=batch,
                                                 class_mode="sparse", shuffle=False, seed=0)
    return lambda _: next(flow)[0]


def describe_device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(str(d) for d in jax.devices())
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    else:
        devices = "?"
    return (
        f"keras {keras.__version__}, backend {backend}, devices [{devices}], "
        f"{os.cpu_count()} CPU cores"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        images, source = image_folder(args.images, Path(tmp))
        print(describe_device())
        print(f"images: {source}; batch {args.batch}; best of {args.rounds} rounds")
        print(f"augmentation: {STUDY_AUGMENTATION}")
        head = model_head()
        pipelines = {
            "IDG.flow_from_directory": directory_pipeline(Path(tmp), args.batch),
            "IDG.flow (in memory)": generator_flow(images, args.batch),
            "tinylib layer, eager": layer_eager(head),
            "tinylib layer, compiled": layer_compiled(head),
        }
        results = best_rates(pipelines, images, args.batch, args.rounds)
    directory, flow = results["IDG.flow_from_directory"], results["IDG.flow (in memory)"]
    for name, rate in results.items():
        ratios = (f"   {rate / directory:6.1f}x flow_from_directory   {rate / flow:6.1f}x flow"
                  if name.startswith("tinylib") else "")
        print(f"{name:32s} {rate:10,.0f} images/s{ratios}")
    return results

if __name__ == "__main__":
    from tinylib.processes import sigterm_as_exit

    with sigterm_as_exit():  # a polite kill removes the scratch folder too
        main()
