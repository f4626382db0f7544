"""The dataset as arrays (``TinyImageNet``, ``Split``), loaded from the cache as memory
maps, and its deterministic subsets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tokenize
from pathlib import Path

import numpy as np

from tinylib.data.cache import (CacheDamaged, cache_dir, damaged_file, other_source, prepare, read_manifest,
                                 source_for_repair)
from tinylib.data.common import HOW_TO_GET_DATA, IMAGE_SHAPE, DataError


# ----------------------------------------------------------------------------
# The dataset as arrays, and deterministic subsets.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, 64, 64, 3), int labels (-1 for test), files, boxes."""

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray, label_map: np.ndarray | None = None) -> "Split":
        labels = self.labels[index]
        if label_map is not None:
            labels = label_map[labels]
        return Split(np.asarray(self.images[index]), np.asarray(labels, dtype=np.int32),
                     tuple(self.files[i] for i in index), np.asarray(self.boxes[index]))


@dataclasses.dataclass(frozen=True)
class TinyImageNet:
    """Tiny ImageNet (or a subset of it) as arrays, with readable class names."""

    train: Split
    val: Split
    test: Split | None
    wnids: tuple[str, ...]
    words: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Short readable names: the first synonym in words.txt (n01443537 -> goldfish)."""
        return tuple(w.split(",")[0].strip() for w in self.words)

    def source_path(self, split: str, index: int) -> str:
        """Where image ``index`` of ``split`` lies in the official layout, relative to the
        dataset folder (``train/<wnid>/images/<file>``, ``val/images/<file>``,
        ``test/images/<file>``): the file ``data.decode_image`` decoded it from."""
        part = getattr(self, split, None) if split in ("train", "val", "test") else None
        if part is None:
            raise ValueError(f"{split!r}: the splits are 'train', 'val' and 'test' (where the dataset has test images)")
        if split == "train":
            return f"train/{self.wnids[part.labels[index]]}/images/{part.files[index]}"
        return f"{split}/images/{part.files[index]}"

    def subset(self, classes: int | None = None, per_class: int | None = None,
               val_per_class: int | None = None, seed: int = 0) -> "TinyImageNet":
        """``classes`` classes, ``per_class`` train and ``val_per_class`` val images each.

        The choice depends only on the seed and the file names (hashed), so it is
        the same on every machine and NumPy version.  Labels are renumbered
        0..classes-1 in wnid order.  ``None`` keeps everything.
        """
        if classes is None and per_class is None and val_per_class is None:
            return self
        chosen = range(self.num_classes)
        if classes is not None:
            if not 1 <= classes <= self.num_classes:
                raise ValueError(f"classes must be between 1 and {self.num_classes}, got {classes}")
            chosen = sorted(sorted(chosen, key=lambda c: _rank(seed, self.wnids[c]))[:classes])
        label_map = np.full(self.num_classes, -1, dtype=np.int32)
        label_map[list(chosen)] = np.arange(len(chosen))
        return TinyImageNet(
            train=self.train.take(_pick(self.train, chosen, per_class, seed, "train"), label_map),
            val=self.val.take(_pick(self.val, chosen, val_per_class, seed, "val"), label_map),
            test=self.test,
            wnids=tuple(self.wnids[c] for c in chosen),
            words=tuple(self.words[c] for c in chosen),
        )

    def summary(self) -> str:
        test = f", {len(self.test):,} test" if self.test is not None else ", no test images"
        return (f"Tiny ImageNet: {self.num_classes} classes, {len(self.train):,} train, "
                f"{len(self.val):,} val{test}")


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def _pick(split: Split, chosen, per_class: int | None, seed: int, name: str) -> np.ndarray:
    picked = []
    for c in chosen:
        members = np.flatnonzero(split.labels == c)
        if per_class is not None:
            if per_class > len(members):
                raise ValueError(f"asked for {per_class} {name} images per class, but class {c} "
                                 f"has only {len(members)}")
            members = sorted(members, key=lambda i: _rank(seed, split.files[i]))[:per_class]
        picked.extend(sorted(members))
    return np.asarray(picked, dtype=np.int64)


def load(prepare_if_needed: bool = True) -> TinyImageNet:
    """The whole dataset as memory-mapped arrays, preparing the cache if needed.

    A damaged cache file is found when its size or mtime changed (its checksum is
    then recomputed) or when NumPy cannot read it, and the cache is rebuilt when
    a source is at hand; otherwise a DataError names the file.
    """
    folder = cache_dir()
    manifest = read_manifest(folder)
    if prepare_if_needed and _needs_preparing(folder, manifest):
        prepare()
        manifest = read_manifest(folder)
    if manifest is None:
        raise DataError(f"no prepared dataset in {folder}; run `python -m tinylib prepare`. "
                        f"{HOW_TO_GET_DATA}")
    if not prepare_if_needed:
        damage = damaged_file(folder, manifest)
        if damage is not None:
            raise damage
    try:
        return _open_cache(folder, manifest)
    except CacheDamaged as damage:
        if not prepare_if_needed:
            raise
        prepare(source_for_repair(manifest, damage), force=True)
        return _open_cache(folder, read_manifest(folder))


def _needs_preparing(folder: Path, manifest: dict | None) -> bool:
    """Missing, built from another source than ``TINYLIB_DATA``, or damaged (quietly)."""
    return manifest is None or other_source(manifest) is not None or (
        damaged_file(folder, manifest) is not None)


def _open_cache(folder: Path, manifest: dict | None) -> TinyImageNet:
    """The cache's arrays, each checked against the manifest's counts."""
    if manifest is None:
        raise DataError(f"no complete cache in {folder}; run `python -m tinylib prepare`")
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise CacheDamaged(folder / "meta.json", f"not valid JSON: {err}") from None

    def split(name: str) -> Split | None:
        if name not in manifest["counts"]:
            return None
        rows = manifest["counts"][name]
        return Split(
            images=_load_npy(folder / f"{name}_images.npy", (rows, *IMAGE_SHAPE), np.uint8, "r"),
            labels=_load_npy(folder / f"{name}_labels.npy", (rows,), np.int32),
            files=tuple(meta["files"][name]),
            boxes=_load_npy(folder / f"{name}_boxes.npy", (rows, 4), np.int16),
        )

    return TinyImageNet(split("train"), split("val"), split("test"),
                        tuple(meta["wnids"]), tuple(meta["words"]))


def _load_npy(path: Path, shape: tuple, dtype, mmap_mode: str | None = None) -> np.ndarray:
    """np.load, never unpickling; a header NumPy cannot read, or one describing
    other data than the manifest says, is a damaged file."""
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError, SyntaxError, TypeError, KeyError, UnicodeDecodeError, tokenize.TokenError):
        # A flipped bit in the header: NumPy's parser fails in many ways (and its own text
        # may suggest unpickling, which is not shown).
        raise CacheDamaged(path, "NumPy cannot read its .npy header") from None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise CacheDamaged(path, f"its header says {array.dtype} {array.shape}, "
                                 f"expected {np.dtype(dtype)} {tuple(shape)}")
    return array


def load_subset(profile=None) -> TinyImageNet:
    """The subset a profile asks for (see ``tinylib.profiles``)."""
    from tinylib.profiles import get_profile

    return load().subset(**get_profile(profile).subset_kwargs())
