"""The official layout, parsed: wnids, words, the training folders and the validation
annotations.  The only code that knows Tiny ImageNet's file names."""

from __future__ import annotations

import collections
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
    try:  # utf-8-sig: a byte-order mark (an editor's) is not part of the first wnid
        return source.read(rel).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{rel} in {source.describe()} is not UTF-8 text ({err.reason} at byte {err.start}): "
                        "the official files are; extract the official zip again") from None


def _box(fields: list[str], where: str) -> tuple[int, int, int, int]:
    if len(fields) < 4:
        raise DataError(f"{where}: expected four integer box coordinates, got {fields}")
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


def _refuse_unmatched_validation(source, annotations: str, listed: list[str]) -> None:
    """The annotations and ``val/images`` name the same images, each once (10,000 in the
    official set): an image listed twice would count twice, one missing would fail only
    after the whole training split is decoded, and one without a line (or an annotations
    file cut short) would leave the validation split short without a word."""
    seen, twice = set(), None
    for name in listed:
        if name in seen and twice is None:
            twice = name
        seen.add(name)
    if twice is not None:
        raise DataError(f"{annotations} in {source.describe()} lists {twice} more than once: "
                        "extract the official zip again")
    found = {name for name in source.list_dir("val/images") if _is_image(name)}
    missing, unlisted = sorted(seen - found), sorted(found - seen)
    if missing or unlisted:
        what = (f"lacks {len(missing)} of the {len(seen)} images {annotations} lists ({missing[0]}, ...)"
                if missing else f"holds {len(unlisted)} images {annotations} does not list ({unlisted[0]}, ...)")
        raise DataError(f"val/images in {source.describe()} {what}: an interrupted extraction or copy, or an "
                        "edited annotations file? Extract the official zip again (or point TINYLIB_DATA at the "
                        "zip itself).")


def parse_layout(source) -> Layout:
    """Read wnids, words, train folders, val annotations and test images."""
    wnids = sorted(w.strip() for w in _text(source, "wnids.txt").split() if w.strip())
    if not wnids:
        raise DataError(f"wnids.txt in {source.describe()} is empty")
    repeated = sorted(w for w, count in collections.Counter(wnids).items() if count > 1)
    if repeated:
        raise DataError(f"wnids.txt in {source.describe()} lists {repeated[0]} more than once: each class "
                        "once, as in the official file (extract the official zip again)")
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
    _refuse_unmatched_validation(source, annotations, [rel.rpartition("/")[2] for rel in files["val"]])

    if source.is_dir("test/images"):
        for name in source.list_dir("test/images"):
            if _is_image(name):
                files["test"].append(f"test/images/{name}")
                labels["test"].append(-1)
                boxes["test"].append((-1, -1, -1, -1))
    return Layout(wnids, words, files, labels, boxes)


