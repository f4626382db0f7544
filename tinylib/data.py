"""Tiny ImageNet: find it, decode every image once, cache the arrays, hand out subsets.

This is the only module that knows the dataset's file layout.  The flow is one
direction::

    source (folder | official zip | download)  ->  parse the layout
      ->  decode once into uint8 arrays  ->  on-disk cache with a manifest
      ->  load (a memory map, instant)   ->  subset(classes, per_class, seed)

Sources are tried in this order: the environment variable ``TINYLIB_DATA``
(a ``tiny-imagenet-200`` folder, the folder holding it, or the official zip);
a previous extraction in the cache; a download of the official zip.  The cache
lives in ``TINYLIB_HOME`` (default: ``~/.cache/tinylib``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from tinylib import files, processes
from tinylib.files import write_json

DATA_ENV = "TINYLIB_DATA"
HOME_ENV = "TINYLIB_HOME"
FOLDER_NAME = "tiny-imagenet-200"
OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
OFFICIAL_SIZE = 248_100_043
OFFICIAL_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SHAPE = (64, 64, 3)
CACHE_VERSION = 1
CACHE_DIR_NAME = f"arrays-v{CACHE_VERSION}"
LOCK_NAME = f".{CACHE_DIR_NAME}.lock"  # in TINYLIB_HOME: one preparation at a time
STAMP_NAME = "verified.json"  # in the cache: (size, mtime_ns) of each file when last checksummed
SPLITS = ("train", "val", "test")
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
POOL_MIN_IMAGES = 4000  # below this, starting worker processes costs more than it saves
START_METHOD: str | None = None  # None: fork on Linux unless a threaded framework is loaded

HOW_TO_GET_DATA = (
    f"Point {DATA_ENV} at a folder in the official '{FOLDER_NAME}' layout or at the "
    f"official zip (e.g. export {DATA_ENV}=$HOME/data/{FOLDER_NAME}), or connect to the "
    f"internet so tinylib can download {OFFICIAL_URL} ({OFFICIAL_SIZE:,} bytes) into "
    f"the cache ({HOME_ENV})."
)


class DataError(RuntimeError):
    """The dataset is missing, incomplete or not in the official layout."""


def home() -> Path:
    """The cache folder: ``TINYLIB_HOME`` or the user's cache folder."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "tinylib"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinylib"


# ----------------------------------------------------------------------------
# Sources: a folder or a zip, read through the same three calls.
# ----------------------------------------------------------------------------


class FolderSource:
    """The official layout unpacked on disk."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root.resolve())

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def list_dir(self, rel: str) -> list[str]:
        path = self.root / rel
        if not path.is_dir():
            raise DataError(f"missing folder {path}: expected the official '{FOLDER_NAME}' layout")
        try:
            return sorted(os.listdir(path))
        except OSError as err:
            raise DataError(f"cannot read folder {path} ({err.strerror or err})") from None

    def read(self, rel: str) -> bytes:
        """A file's bytes; errors are DataError, so an OSError later means the cache side."""
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            raise DataError(f"missing file {self.root / rel}") from None
        except OSError as err:
            raise DataError(f"cannot read {self.root / rel} ({err.strerror or err})") from None


def check_zip_members(names: list[str], zip_path: Path) -> None:
    """Refuse a zip with an entry that would land outside its folder."""
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(
                f"refusing {zip_path}: entry {name!r} would be written outside the target "
                "folder. This is not the official Tiny ImageNet zip; delete it and get the "
                f"official one ({OFFICIAL_URL})."
            )


def open_zip(zip_path: Path) -> zipfile.ZipFile:
    """Open a zip, turning a truncated or corrupt file into a clear error."""
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{zip_path} is not a complete zip archive ({err}); the download was probably "
            "interrupted or truncated. Delete it and download it again."
        ) from None


class ZipSource:
    """The official zip, read in place without unpacking it."""

    kind = "zip"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip = open_zip(self.path)
        names = self.zip.namelist()
        check_zip_members(names, self.path)
        self.names = set(names)
        roots = [n[: -len("wnids.txt")] for n in names if PurePosixPath(n).name == "wnids.txt"]
        if not roots:
            raise DataError(
                f"{self.path} holds no wnids.txt: expected the official '{FOLDER_NAME}' zip"
            )
        self.prefix = min(roots, key=len)
        self.children: dict[str, set[str]] = {}
        for name in names:
            if not name.startswith(self.prefix):
                continue
            parts = name[len(self.prefix):].rstrip("/").split("/")
            for depth in range(len(parts)):
                self.children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])

    def describe(self) -> str:
        return str(self.path.resolve())

    def exists(self, rel: str) -> bool:
        return self.prefix + rel in self.names or self.is_dir(rel)

    def is_dir(self, rel: str) -> bool:
        return rel.strip("/") in self.children

    def list_dir(self, rel: str) -> list[str]:
        if not self.is_dir(rel):
            raise DataError(f"{self.path}: missing folder {self.prefix + rel}")
        return sorted(self.children[rel.strip("/")])

    def read(self, rel: str) -> bytes:
        name = self.prefix + rel
        if name not in self.names:
            raise DataError(f"{self.path}: missing file {name}")
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise DataError(f"{self.path}: cannot read {name} ({err}); the zip is corrupt") from None


def locate(path: str | os.PathLike) -> tuple[str, Path]:
    """Where a path's dataset is, without reading it: ("folder" | "zip", path)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. {HOW_TO_GET_DATA}")
    if path.is_file():
        return "zip", path.resolve()
    for root in (path, path / FOLDER_NAME):
        if (root / "wnids.txt").is_file():
            return "folder", root.resolve()
    raise DataError(
        f"{path} is not in the official layout: missing {path / 'wnids.txt'} "
        f"(expected {FOLDER_NAME}/wnids.txt, words.txt, train/, val/)."
    )


def open_source(path: str | os.PathLike) -> FolderSource | ZipSource:
    """A source from a path: the dataset folder, the folder holding it, or the zip."""
    kind, root = locate(path)
    return ZipSource(root) if kind == "zip" else FolderSource(root)


def find_source(download_if_missing: bool = True) -> FolderSource | ZipSource:
    """The first source that exists: ``TINYLIB_DATA``, the cache, or a download."""
    if os.environ.get(DATA_ENV):
        return open_source(os.environ[DATA_ENV])
    extracted = home() / FOLDER_NAME
    if (extracted / "wnids.txt").is_file():
        return FolderSource(extracted)
    if not download_if_missing:
        raise DataError(f"No Tiny ImageNet found. {HOW_TO_GET_DATA}")
    return FolderSource(download())


# ----------------------------------------------------------------------------
# Download: resumable, checked, extracted atomically into the cache.
# ----------------------------------------------------------------------------


def _report_progress(text: str, final: bool, due: bool) -> None:
    """One progress report: redrawn in place on a terminal, a plain line in a log.

    Carriage returns make a log unreadable, so without a terminal only the
    reports marked ``due`` (and the final one) are printed, each on its own line.
    """
    if sys.stderr.isatty():
        print(f"\r{text}", end="\n" if final else "", file=sys.stderr, flush=True)
    elif due or final:
        print(text, file=sys.stderr, flush=True)


def _print_progress(label: str, done: int, total: int | None, start: float, step: int = 0) -> None:
    """Download progress; in a log, a line every 10% (every 25 MiB if the size is unknown)."""
    elapsed = max(time.time() - start, 1e-9)
    if total:
        bar = "#" * int(30 * done / total)
        text = f"{label} [{bar:<30}] {done / 2**20:7.1f}/{total / 2**20:.1f} MiB"
        due = done * 10 // total != (done - step) * 10 // total
    else:
        text = f"{label} {done / 2**20:7.1f} MiB"
        due = done // (25 << 20) != (done - step) // (25 << 20)
    _report_progress(f"{text} {done / elapsed / 2**20:5.1f} MiB/s", False, due)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in blocks (checks downloads and cache files)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, md5: str | None = None, size: int | None = None,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming a ``.part`` file left by an interruption."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    start = time.time()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else size
            with open(part, "ab" if have else "wb") as out:
                done = have
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    done += len(block)
                    if progress:
                        _print_progress(f"downloading {dest.name}", done, total, start, len(block))
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"could not download {url} ({err}). What was fetched is kept in {part} and the "
            f"next try resumes from it. {HOW_TO_GET_DATA}"
        ) from None
    finally:
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)  # end the line redrawn in place
    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        if got > size:
            part.unlink()
        raise DataError(
            f"download of {url} stopped at {got:,} of {size:,} bytes; run again to resume."
        )
    if md5 is not None:
        got_md5 = file_digest(part, "md5")
        if got_md5 != md5:
            part.unlink()
            raise DataError(
                f"checksum mismatch for {url}: MD5 {got_md5}, expected {md5}. The file was "
                "deleted; run again to download it afresh."
            )
    os.replace(part, dest)
    return dest


def extract_zip(zip_path: Path, dest_parent: Path) -> Path:
    """Unpack the official zip into ``dest_parent/tiny-imagenet-200``, all or nothing."""
    dest_parent = Path(dest_parent)
    target = dest_parent / FOLDER_NAME
    with open_zip(zip_path) as archive:
        names = archive.namelist()
        check_zip_members(names, zip_path)  # before anything is written
        if not any(PurePosixPath(n).parts[:2] == (FOLDER_NAME, "wnids.txt") for n in names):
            raise DataError(f"{zip_path} is not the official zip: no {FOLDER_NAME}/wnids.txt")
        dest_parent.mkdir(parents=True, exist_ok=True)
        tmp = dest_parent / f".{FOLDER_NAME}.extracting-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            archive.extractall(tmp)
            os.replace(tmp / FOLDER_NAME, target)
        except zipfile.BadZipFile as err:
            raise DataError(f"{zip_path} is corrupt ({err}); delete it and download again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(url: str = OFFICIAL_URL, md5: str | None = OFFICIAL_MD5,
             size: int | None = OFFICIAL_SIZE) -> Path:
    """Download and unpack the official zip into the cache; returns the folder."""
    cache = home()
    print(f"Tiny ImageNet not found locally: downloading {url} into {cache}", file=sys.stderr)
    zip_path = download_file(url, cache / "downloads" / f"{FOLDER_NAME}.zip", md5=md5, size=size)
    folder = extract_zip(zip_path, cache)
    zip_path.unlink()
    return folder


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
        for name in source.list_dir(f"train/{wnid}/images"):
            if name.upper().endswith((".JPEG", ".JPG")):
                files["train"].append(f"train/{wnid}/images/{name}")
                labels["train"].append(index[wnid])
                boxes["train"].append(class_boxes.get(name, (-1, -1, -1, -1)))

    annotations = "val/val_annotations.txt"
    if not source.exists(annotations):
        class_dirs = [d for d in source.list_dir("val") if d in index] if source.is_dir("val") else []
        if class_dirs:
            raise DataError(
                f"val/ in {source.describe()} is laid out as class folders ({class_dirs[0]}/, ...), "
                "not the official val/images + val/val_annotations.txt. Labels must come from "
                "val_annotations.txt; re-extract the official zip."
            )
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
            if name.upper().endswith((".JPEG", ".JPG")):
                files["test"].append(f"test/images/{name}")
                labels["test"].append(-1)
                boxes["test"].append((-1, -1, -1, -1))
    return Layout(wnids, words, files, labels, boxes)


# ----------------------------------------------------------------------------
# Decoding, in parallel, straight into the cache files.
# ----------------------------------------------------------------------------

_worker_sources: dict[tuple[str, str], object] = {}


def _source_in_worker(kind: str, path: str):
    key = (kind, path)
    if key not in _worker_sources:
        _worker_sources[key] = FolderSource(Path(path)) if kind == "folder" else ZipSource(Path(path))
    return _worker_sources[key]


def decode_image(data: bytes, name: str) -> np.ndarray:
    """JPEG bytes -> (64, 64, 3) uint8; grayscale becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != IMAGE_SHAPE[:2][::-1]:
                raise DataError(
                    f"{name}: expected a {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]} image, got "
                    f"{image.size[0]}x{image.size[1]}"
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{name}: not a decodable JPEG ({err})") from None


def _write_at(fd: int, data, offset: int) -> None:
    """Write all of ``data`` at byte ``offset``: ordinary writes, so a full disk is an
    OSError (ENOSPC) we can report, where a memory map dies of SIGBUS."""
    view = memoryview(data).cast("B")
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view, offset = view[written:], offset + written


def _reserve(fd: int, size: int) -> None:
    """Give the file its full size now, blocks allocated where the system can, so
    that a disk too full fails here, before any decoding."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)


def _create_npy(path: Path, rows: int) -> int:
    """Create ``path`` as a uint8 .npy of ``rows`` images; returns where the pixels start."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (rows, *IMAGE_SHAPE)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()
        start = f.tell()
        _reserve(f.fileno(), start + rows * IMAGE_BYTES)
    return start


def _decode_chunk(kind: str, root: str, names: list[str], out_path: str, offset: int) -> int:
    """Decode ``names`` and write them at byte ``offset`` of ``out_path`` (runs in a worker)."""
    source = _source_in_worker(kind, root)
    rows = np.empty((len(names), *IMAGE_SHAPE), dtype=np.uint8)
    for i, name in enumerate(names):
        rows[i] = decode_image(source.read(name), f"{source.describe()}/{name}")
    fd = os.open(out_path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        _write_at(fd, rows, offset)
    finally:
        os.close(fd)
    return len(names)


def _chunk_size(images: int, workers: int) -> int:
    """Images per job: a few jobs per worker so all are busy, at most 2000 (24 MiB)."""
    return max(1, min(2000, -(-images // (max(workers, 1) * 4))))


def _decode_all(source, names: list[str], out_path: Path, pool, label: str, workers: int = 1) -> None:
    """Decode ``names`` into the .npy at ``out_path``, in ``pool`` if given."""
    start_of_pixels = _create_npy(out_path, len(names))
    chunk = _chunk_size(len(names), workers if pool is not None else 1)
    root = str(source.path if source.kind == "zip" else source.root)
    jobs = [(source.kind, root, names[i:i + chunk], str(out_path), start_of_pixels + i * IMAGE_BYTES)
            for i in range(0, len(names), chunk)]
    start, done = time.time(), 0
    if pool is None:
        for job in jobs:
            step = _decode_chunk(*job)
            done += step
            _print_progress_count(label, done, len(names), start, step)
        return
    futures = [pool.submit(_decode_chunk, *job) for job in jobs]
    try:
        for future in concurrent.futures.as_completed(futures):
            step = future.result()
            done += step
            _print_progress_count(label, done, len(names), start, step)
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _start_method() -> str:
    """Forking is fastest and works from any script, but a process that already
    runs TensorFlow or JAX threads must not fork: it spawns instead."""
    if START_METHOD:
        return START_METHOD
    threaded = any(m in sys.modules for m in ("tensorflow", "jax", "torch"))
    return "spawn" if threaded or sys.platform != "linux" else "fork"


def _decoding_pool(workers: int, images: int):
    """A process pool for large jobs; None (decode in this process) for small ones.

    Its workers die with this process, even of ``kill -9`` (see ``tinylib.processes``).
    """
    if workers <= 1 or images <= POOL_MIN_IMAGES:
        return contextlib.nullcontext(None)
    method = _start_method()
    parent = None if method == "forkserver" else os.getpid()  # a forkserver is their parent
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method),
        initializer=processes.die_with_parent, initargs=(parent,))


def _print_progress_count(label: str, done: int, total: int, start: float, step: int = 0) -> None:
    """Decoding progress; in a log or a notebook, a line every 20,000 images is enough."""
    rate = done / max(time.time() - start, 1e-9)
    due = done // 20000 != (done - step) // 20000
    _report_progress(f"decoding {label}: {done:,}/{total:,} images ({rate:,.0f}/s)", done >= total, due)


# ----------------------------------------------------------------------------
# The cache: arrays plus a manifest written last, moved into place atomically.
# ----------------------------------------------------------------------------


def cache_dir() -> Path:
    return home() / CACHE_DIR_NAME


def read_manifest(folder: Path | None = None) -> dict | None:
    """The manifest of a complete cache, or None if the cache is missing or incomplete."""
    folder = Path(folder or cache_dir())
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != CACHE_VERSION:
        return None
    for name, info in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            return None
    return manifest


def verify_cache(folder: Path | None = None) -> None:
    """Recompute every checksum; raises DataError naming the first bad file.

    The only check that catches a change that kept a file's size and mtime.
    """
    folder = Path(folder or cache_dir())
    manifest = read_manifest(folder)
    if manifest is None:
        raise DataError(f"no complete cache in {folder}; run `python -m tinylib prepare`")
    for name, info in manifest["files"].items():
        if file_digest(folder / name) != info["sha256"]:
            raise DataError(f"cache file {folder / name} is corrupt; run `python -m tinylib prepare --force`")
    _write_stamp(folder, manifest)


class CacheDamaged(DataError):
    """A cache file does not hold what its manifest says (flipped bytes, a bad header)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"cache file {path} is damaged ({why}); rebuild the cache with "
                         f"`python -m tinylib prepare --force` ({DATA_ENV} naming the dataset)")
        self.path, self.why = Path(path), why


# --- checking the cache cheaply: checksums again only for files that changed ---------------


def _file_stamp(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _write_stamp(folder: Path, manifest: dict) -> None:
    """Record each file's (size, mtime_ns) as verified; best effort (the cache may be read-only)."""
    with contextlib.suppress(OSError):
        write_json(folder / STAMP_NAME,
                           {name: _file_stamp(folder / name) for name in manifest["files"]})


def _damaged_file(folder: Path, manifest: dict) -> CacheDamaged | None:
    """The first file whose checksum no longer matches, among those whose size or
    mtime changed since they were last verified; None if all are good.

    Checking only changed files keeps ``load`` instant; a change that kept both
    size and mtime is caught only by ``verify_cache``.
    """
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        stamp = {}  # never verified (an older cache): check everything once
    changed = []
    for name in manifest["files"]:
        try:
            if stamp.get(name) != _file_stamp(folder / name):
                changed.append(name)
        except OSError as err:
            return CacheDamaged(folder / name, f"cannot read it: {err.strerror or err}")
    for name in changed:
        if file_digest(folder / name) != manifest["files"][name]["sha256"]:
            return CacheDamaged(folder / name, "its SHA-256 does not match the manifest")
    if changed:
        _write_stamp(folder, manifest)
    return None


# --- one preparation at a time ---------------------------------------------------------------


@contextlib.contextmanager
def _preparation_lock(parent: Path):
    """Hold ``TINYLIB_HOME/.arrays-vN.lock`` while preparing (``files.FolderLock``).

    A second preparation waits here, then finds the finished cache.  The holder
    deletes the file when done.  No lock where fcntl is missing (Windows) or the
    folder is read-only (nothing can be prepared there anyway).
    """
    lock = files.FolderLock(parent, LOCK_NAME, remove=True, optional=True)
    lock.acquire(wait=True, message=f"waiting for another preparation (pid {{pid}}) to finish with {parent} ...")
    try:
        yield
    finally:
        lock.release()


# --- writing the cache: enough room, and a failure said in words ----------------------------


def _size_text(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _space_needed(counts: dict[str, int]) -> int:
    """Bytes the cache will take: the pixels, labels and boxes, plus a margin."""
    images = sum(counts.values())
    exact = images * (IMAGE_BYTES + 4 + 8) + 4096 * len(counts) * 3
    return exact + exact // 20 + (16 << 20)


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _check_free_space(folder: Path, need: int) -> None:
    """Refuse up front, rather than fill the disk and fail half-way."""
    free = _free_bytes(folder)
    if free is not None and free < need:
        raise DataError(
            f"not enough free space for the Tiny ImageNet cache in {folder}: it needs about "
            f"{_size_text(need)}, {_size_text(free)} is free. Free some space, or set "
            f"{HOME_ENV} to a folder on a disk with more room.")


def _write_error(err: OSError, where: Path, need: int | None = None) -> DataError:
    """A failed write into the cache as a DataError: which path, why, what to do."""
    path = err.filename or where
    elsewhere = f"set {HOME_ENV} to a writable folder elsewhere (now {home()})"
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        free = _free_bytes(where if where.exists() else where.parent)
        return DataError(
            f"the disk is full: writing {path} failed ({err.strerror or err}). The cache needs "
            f"about {_size_text(need) if need else 'more'}, "
            f"{_size_text(free) if free is not None else 'an unknown amount'} is free. "
            f"Free some space, or {elsewhere}. Nothing was kept.")
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return DataError(
            f"cannot create the cache folder: {_in_the_way(Path(path))} is in the way (a file "
            f"where a folder should be). Move that file away, or {elsewhere}.")
    if isinstance(err, PermissionError) or err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DataError(
            f"cannot write to {path} ({err.strerror or err}): the cache folder is read-only or "
            f"not yours. Make it writable, or {elsewhere}. Nothing was kept.")
    return DataError(f"cannot write the cache at {path} ({err}); {elsewhere}. Nothing was kept.")


def _in_the_way(path: Path) -> Path:
    """The file that stops ``path`` from being a folder: itself or an ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return path


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(err, folder) from None


def _remove(path: Path) -> None:
    """Delete a folder or a file, whichever is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale_temporaries(parent: Path) -> None:
    """Folders left by a killed preparation; only call it holding the lock."""
    for tmp in parent.glob(f".{CACHE_DIR_NAME}.tmp-*"):
        _remove(tmp)


# --- preparing ---------------------------------------------------------------------------------


def prepare(source=None, force: bool = False, workers: int | None = None) -> Path:
    """Decode the dataset once into the cache; returns the cache folder.

    Safe to interrupt: everything is written into a temporary folder that only
    becomes the cache, with its manifest, when complete.  Safe to run twice at
    once: the second waits for the first, then uses its cache.
    """
    target = cache_dir()
    _make_folder(target.parent)
    with _preparation_lock(target.parent):
        source = _source_to_build(target, source, force)
        if source is None:
            return target
        _remove_stale_temporaries(target.parent)
        return _build(source, target, workers or os.cpu_count() or 1)


def _source_to_build(target: Path, source, force: bool):
    """The source to (re)build from, or None when the cache is good as it is."""
    if source is not None and not isinstance(source, (FolderSource, ZipSource)):
        source = open_source(source)
    if force:
        return source or find_source()
    if source is None:
        return _source_for_cache(target)
    manifest = read_manifest(target)
    if not _cache_matches(manifest, source):
        return source
    damage = _damaged_file(target, manifest)
    if damage is None:
        return None
    print(f"{damage.path} is damaged ({damage.why}): rebuilding the cache", file=sys.stderr)
    return source


def _build(source, target: Path, workers: int) -> Path:
    """Decode into a temporary folder, then move it into place; nothing half-written stays."""
    start = time.time()
    print(f"Preparing Tiny ImageNet from {source.describe()} into {target}", file=sys.stderr)
    layout = parse_layout(source)
    counts = {s: len(layout.files[s]) for s in SPLITS if s != "test" or layout.files[s]}
    need = _space_needed(counts)
    _check_free_space(target.parent, need)
    tmp = target.parent / f".{CACHE_DIR_NAME}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        _write_arrays(source, layout, counts, tmp, workers)
        _write_manifest(source, layout, counts, tmp, start)
        _install(tmp, target)
    except OSError as err:
        raise _write_error(err, tmp, need) from None
    finally:
        _remove(tmp)
    print(f"Prepared {', '.join(f'{n:,} {s}' for s, n in counts.items())} images "
          f"in {time.time() - start:.1f} s", file=sys.stderr)
    return target


def _write_arrays(source, layout: Layout, counts: dict[str, int], tmp: Path, workers: int) -> None:
    with _decoding_pool(workers, sum(counts.values())) as pool:
        for split in counts:
            _decode_all(source, layout.files[split], tmp / f"{split}_images.npy", pool, split, workers)
            np.save(tmp / f"{split}_labels.npy", np.asarray(layout.labels[split], dtype=np.int32))
            np.save(tmp / f"{split}_boxes.npy",
                    np.asarray(layout.boxes[split], dtype=np.int16).reshape(-1, 4))


def _write_manifest(source, layout: Layout, counts: dict[str, int], tmp: Path, start: float) -> None:
    """meta.json, then the manifest with each file's checksum read back from disk, and
    the stamp saying those files, as they are now, were verified."""
    meta = {
        "wnids": layout.wnids,
        "words": [layout.words.get(w, w) for w in layout.wnids],
        "files": {s: [PurePosixPath(n).name for n in layout.files[s]] for s in counts},
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(tmp.iterdir())}
    manifest = {
        "version": CACHE_VERSION,
        "source": source.describe(),
        "counts": counts,
        "classes": len(layout.wnids),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - start, 1),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    write_json(tmp / STAMP_NAME, {name: _file_stamp(tmp / name) for name in files})


def _install(tmp: Path, target: Path) -> None:
    """Put the finished folder in place of the old cache (or of whatever is there)."""
    if target.exists() or target.is_symlink():
        old = target.parent / f".{CACHE_DIR_NAME}.tmp-old-{os.getpid()}"
        os.replace(target, old)
        _remove(old)
    os.replace(tmp, target)


def _cache_matches(manifest: dict | None, source) -> bool:
    return manifest is not None and (source is None or manifest["source"] == source.describe())


def _other_source(manifest: dict) -> str | None:
    """``TINYLIB_DATA`` when it names another dataset than the cache was built from."""
    env = os.environ.get(DATA_ENV)
    return env if env and manifest["source"] != str(locate(env)[1]) else None


def _source_for_cache(target: Path):
    """The source to (re)build from, or None when the existing cache is good.

    A complete cache is reused unless ``TINYLIB_DATA`` names a different source
    or one of its files is damaged.
    """
    manifest = read_manifest(target)
    if manifest is None:
        return find_source()
    env = _other_source(manifest)
    if env:
        print(f"{DATA_ENV} names a different dataset than the cache was built from: rebuilding",
              file=sys.stderr)
        return open_source(env)
    damage = _damaged_file(target, manifest)
    return None if damage is None else _source_for_repair(manifest, damage)


def _available_source(manifest: dict):
    """A source to rebuild from without downloading: ``TINYLIB_DATA``, the one the
    cache was built from, or an extraction in the cache; None if there is none."""
    if os.environ.get(DATA_ENV):
        return open_source(os.environ[DATA_ENV])
    for candidate in (Path(manifest["source"]), home() / FOLDER_NAME):
        with contextlib.suppress(DataError):
            return open_source(candidate)
    return None


def _source_for_repair(manifest: dict, damage: CacheDamaged):
    """Where to rebuild a damaged cache from (said on stderr), or raise naming the file."""
    source = _available_source(manifest)
    if source is None:
        raise CacheDamaged(damage.path, f"{damage.why}; no dataset found to rebuild it from")
    print(f"cache file {damage.path} is damaged ({damage.why}): rebuilding the cache from "
          f"{source.describe()}", file=sys.stderr)
    return source


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
        damage = _damaged_file(folder, manifest)
        if damage is not None:
            raise damage
    try:
        return _open_cache(folder, manifest)
    except CacheDamaged as damage:
        if not prepare_if_needed:
            raise
        prepare(_source_for_repair(manifest, damage), force=True)
        return _open_cache(folder, read_manifest(folder))


def _needs_preparing(folder: Path, manifest: dict | None) -> bool:
    """Missing, built from another source than ``TINYLIB_DATA``, or damaged (quietly)."""
    return manifest is None or _other_source(manifest) is not None or (
        _damaged_file(folder, manifest) is not None)


def _open_cache(folder: Path, manifest: dict | None) -> TinyImageNet:
    """The cache's arrays, each checked against the manifest's counts."""
    if manifest is None:
        raise DataError(f"no complete cache in {folder}; run `python -m tinylib prepare`")
    try:
        meta = json.loads((folder / "meta.json").read_text())
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
    except (ValueError, EOFError):  # NumPy's own text may suggest unpickling: not shown
        raise CacheDamaged(path, "NumPy cannot read its .npy header") from None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise CacheDamaged(path, f"its header says {array.dtype} {array.shape}, "
                                 f"expected {np.dtype(dtype)} {tuple(shape)}")
    return array


def load_subset(profile=None) -> TinyImageNet:
    """The subset a profile asks for (see ``tinylib.profiles``)."""
    from tinylib.profiles import get_profile

    return load().subset(**get_profile(profile).subset_kwargs())
