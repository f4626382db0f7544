"""The official layout, parsed: wnids, words, the training folders and the validation
annotations.  The only code that knows Tiny ImageNet's file names."""

from __future__ import annotations

import dataclasses


from tinylib.data.common import SPLITS, DataError


# ----------------------------------------------------------------------------
# Parsing the official layout.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Layout:
    """What the text files say: classes, and which file holds which label."""

    wnids: list[str]
    words: dict[str, str]
    files: dict[str, list[str]]
    labels: dict[str, list[int]]
    boxes: dict[str, list[tuple[int, int, int, int]]]


def _text(source, rel: str) -> str:
    if not source.exists(rel):
        raise DataError(f"missing file {rel} in {source.describe()}: expected the official layout")
    return source.read(rel).decode("utf-8")


def _box(fields: list[str], where: str) -> tuple[int, int, int, int]:
    try:
        return tuple(int(v) for v in fields[:4])  # type: ignore[return-value]
    except ValueError:
        raise DataError(f"{where}: expected four integer box coordinates, got {fields}") from None


def _is_image(name: str) -> bool:
    """A JPEG of the dataset; not a hidden file such as macOS's '._x.JPEG' (a copy's metadata)."""
    return name.upper().endswith((".JPEG", ".JPG")) and not name.startswith(".")


def _refuse_missing_images(source, wnid: str, class_boxes: dict, found: list[str]) -> None:
    """The boxes file names every training image of its class (500 in the official set): a
    folder with fewer is an interrupted extraction or copy, whose cache would silently
    train on less."""
    missing = sorted(set(class_boxes) - set(found))
    if missing:
        raise DataError(
            f"train/{wnid}/images in {source.describe()} lacks {len(missing)} of the {len(class_boxes)} images "
            f"that train/{wnid}/{wnid}_boxes.txt lists ({missing[0]}, ...): an interrupted extraction or copy? "
            "Extract the official zip again (or point TINYLIB_DATA at the zip itself).")


def parse_layout(source) -> Layout:
    """Read wnids, words, train folders, val annotations and test images."""
    wnids = sorted(w.strip() for w in _text(source, "wnids.txt").split() if w.strip())
    if not wnids:
        raise DataError(f"wnids.txt in {source.describe()} is empty")
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    for line in _text(source, "words.txt").splitlines():
        wnid, _, name = line.partition("\t")
        if wnid in index:
            words[wnid] = name.strip()

    files, labels, boxes = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    for wnid in wnids:
        box_rel = f"train/{wnid}/{wnid}_boxes.txt"
        class_boxes = {}
        for line in _text(source, box_rel).splitlines():
            fields = line.split()
            if fields:
                class_boxes[fields[0]] = _box(fields[1:], f"{box_rel}: line {line!r}")
        found = [name for name in source.list_dir(f"train/{wnid}/images") if _is_image(name)]
        _refuse_missing_images(source, wnid, class_boxes, found)
        for name in found:
            files["train"].append(f"train/{wnid}/images/{name}")
            labels["train"].append(index[wnid])
            boxes["train"].append(class_boxes.get(name, (-1, -1, -1, -1)))

    annotations = "val/val_annotations.txt"
    # Reorganised into class folders (scripts that do it often keep val_annotations.txt):
    # said before any image is looked for where the official layout has it.
    class_dirs = [d for d in source.list_dir("val") if d in index] if source.is_dir("val") else []
    if class_dirs and (not source.exists(annotations) or not source.is_dir("val/images")):
        raise DataError(
            f"val/ in {source.describe()} is laid out as class folders ({class_dirs[0]}/, ...), "
            "not the official val/images + val/val_annotations.txt. Labels must come from "
            "val_annotations.txt; re-extract the official zip."
        )
    if not source.exists(annotations):
        raise DataError(f"missing file {annotations} in {source.describe()}")
    for number, line in enumerate(_text(source, annotations).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{annotations} line {number}"
        if len(fields) < 2:
            raise DataError(f"{where}: expected 'file wnid x0 y0 x1 y1', got {line!r}")
        if fields[1] not in index:
            raise DataError(f"{where}: wnid {fields[1]} is not in wnids.txt")
        files["val"].append(f"val/images/{fields[0]}")
        labels["val"].append(index[fields[1]])
        boxes["val"].append(_box(fields[2:], where) if len(fields) >= 6 else (-1, -1, -1, -1))

    if source.is_dir("test/images"):
        for name in source.list_dir("test/images"):
            if _is_image(name):
                files["test"].append(f"test/images/{name}")
                labels["test"].append(-1)
                boxes["test"].append((-1, -1, -1, -1))
    return Layout(wnids, words, files, labels, boxes)


