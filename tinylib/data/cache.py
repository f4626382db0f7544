"""The cache: uint8 arrays plus a manifest written last, moved into place atomically;
checked cheaply (checksums again only for files that changed), prepared by one
process at a time, with a failure to write said in words."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from tinylib import files
from tinylib.files import write_json
from tinylib.data.common import (CACHE_DIR_NAME, CACHE_VERSION, DATA_ENV, FOLDER_NAME, HOME_ENV, IMAGE_BYTES,
                                  LOCK_NAME, SPLITS, STAMP_NAME, DataError, home)
from tinylib.data.decoding import decode_all, decoding_pool
from tinylib.data.fetch import file_digest, find_source
from tinylib.data.layout import Layout, parse_layout
from tinylib.data.sources import FolderSource, ZipSource, locate, open_source


# ----------------------------------------------------------------------------
# The cache: arrays plus a manifest written last, moved into place atomically.
# ----------------------------------------------------------------------------


def cache_dir() -> Path:
    return home() / CACHE_DIR_NAME


def read_manifest(folder: Path | None = None) -> dict | None:
    """The manifest of a complete cache, or None if the cache is missing or incomplete."""
    folder = Path(folder or cache_dir())
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
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
            # Forget that the files were checked, so the next load checks them all again and
            # repairs the damage instead of trusting the unchanged size and time.
            (folder / STAMP_NAME).unlink(missing_ok=True)
            _VERIFIED_HERE.pop(str(folder), None)
            raise DataError(f"cache file {folder / name} is corrupt; run `python -m tinylib prepare --force` "
                            "(the next load rebuilds it from the source)")
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
    """Record each file's (size, mtime_ns) as verified: in the cache, and in this process
    for a cache it cannot write (one shared read-only), which would otherwise be hashed
    whole, 1.3 GB, at every load."""
    stamp = {name: _file_stamp(folder / name) for name in manifest["files"]}
    _VERIFIED_HERE[str(folder)] = stamp
    with contextlib.suppress(OSError):
        write_json(folder / STAMP_NAME, stamp)


_VERIFIED_HERE: dict = {}  # cache folder -> the stamp this process verified


def damaged_file(folder: Path, manifest: dict) -> CacheDamaged | None:
    """The first file whose checksum no longer matches, among those whose size or
    mtime changed since they were last verified; None if all are good.

    Checking only changed files keeps ``load`` instant; a change that kept both
    size and mtime is caught only by ``verify_cache``.
    """
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}  # never verified (an older cache): check everything once
    known = (stamp, _VERIFIED_HERE.get(str(folder), {}))  # either was taken after a full check
    changed = []
    for name in manifest["files"]:
        try:
            now = _file_stamp(folder / name)
            if all(verified.get(name) != now for verified in known):
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


def _refuse_a_file_in_the_way(target: Path) -> None:
    if target.is_file():
        raise DataError(f"{target} is a file, not tinylib's cache folder: it is not tinylib's to delete; "
                        f"move it away (or point {HOME_ENV} elsewhere) and run the command again")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(err, folder) from None


def _remove_stale_temporaries(parent: Path) -> None:
    """Folders left by a killed preparation or extraction; only call it holding the lock. A
    folder whose process (its name ends in the pid) still runs on this machine is left
    alone: where there is no lock (Windows, a file system without one) it is a preparation
    under way."""
    for pattern in (f".{CACHE_DIR_NAME}.tmp-*", f".{FOLDER_NAME}.extracting-*"):
        for tmp in parent.glob(pattern):
            if not _writer_alive(tmp):
                files.remove_path(tmp)


def _writer_alive(tmp: Path) -> bool:
    """Whether the process a temporary's name ends in (its pid) is another that still runs."""
    pid = tmp.name.rsplit("-", 1)[-1]
    return pid.isdigit() and files.writer_alive(tmp, int(pid))


# --- preparing ---------------------------------------------------------------------------------


MAX_DEFAULT_WORKERS = 8  # decoding 110,000 small JPEGs gains little beyond; each worker costs memory


def default_workers() -> int:
    """The decoding workers to start: the CPUs this process may run on (a container's or a
    batch job's share, not the host's count), at most ``MAX_DEFAULT_WORKERS``."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(available or 1, MAX_DEFAULT_WORKERS))


def _refuse_in_a_spawned_copy_of_a_script() -> None:
    """A decoding worker started by 'spawn' (macOS, Windows, or once TensorFlow or JAX is
    imported) runs the script's top level again, as module ``__mp_main__``: a script without an
    ``if __name__ == "__main__":`` guard would prepare again there and wait forever for
    the lock its own parent holds. Said at once instead, with what to do."""
    import multiprocessing

    # The test Python's own spawn check makes (multiprocessing.spawn._check_not_importing_main).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise DataError(
            "the dataset is being prepared from a worker process that re-ran your script's top level: "
            "put the script's code under `if __name__ == \"__main__\":` (Python's rule for scripts that "
            "start processes), or prepare the data once first with `python -m tinylib prepare`")


def prepare(source=None, force: bool = False, workers: int | None = None) -> Path:
    """Decode the dataset once into the cache; returns the cache folder.

    Safe to interrupt: everything is written into a temporary folder that only
    becomes the cache, with its manifest, when complete.  Safe to run twice at
    once: the second waits for the first, then uses its cache.
    """
    _refuse_in_a_spawned_copy_of_a_script()
    target = cache_dir()
    _make_folder(target.parent)
    _refuse_a_file_in_the_way(target)
    with _preparation_lock(target.parent):
        _recover_a_finished_build(target)
        _remove_stale_temporaries(target.parent)  # whether or not the cache is rebuilt: 1.3 GB each
        source = _source_to_build(target, source, force)
        if source is None:
            return target
        return _build(source, target, workers or default_workers())


def _recover_a_finished_build(target: Path) -> None:
    """Put back the cache that a kill between ``_install``'s two renames left beside its place:
    it would be swept as a temporary and the dataset decoded again. Only that gap leaves the
    pair, the old cache renamed to ``.tmp-old-PID`` and PID's new build (its arrays on disk
    before the first rename) in ``.tmp-PID``: the new one goes in, else the old. A build alone
    (a first one, killed anywhere) is not known to be on disk, and is swept. Only call it
    holding the lock."""
    if target.exists() or target.is_symlink():
        return
    for old in target.parent.glob(f".{CACHE_DIR_NAME}.tmp-old-*"):
        new = target.parent / old.name.replace(".tmp-old-", ".tmp-", 1)
        if _writer_alive(old):
            continue
        for candidate in (new, old):
            if read_manifest(candidate) is not None:
                try:
                    os.replace(candidate, target)
                except OSError as err:
                    raise _write_error(err, target) from None
                print(f"Recovered the cache an interrupted preparation left in {candidate.name}", file=sys.stderr)
                return


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
    damage = damaged_file(target, manifest)
    if damage is None:
        return None
    print(f"{damage.path} is damaged ({damage.why}): rebuilding the cache", file=sys.stderr)
    return source


def _build(source, target: Path, workers: int) -> Path:
    """Decode into a temporary folder, then move it into place; nothing half-written stays."""
    start = time.time()
    print(f"Preparing Tiny ImageNet from {source.describe()} into {target}", file=sys.stderr)
    fingerprint = source.fingerprint()  # before decoding: what the arrays are decoded from
    layout = parse_layout(source)
    counts = {s: len(layout.files[s]) for s in SPLITS if s != "test" or layout.files[s]}
    need = _space_needed(counts)
    _check_free_space(target.parent, need)
    tmp = target.parent / f".{CACHE_DIR_NAME}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        _write_arrays(source, layout, counts, tmp, workers)
        _write_manifest(source, layout, counts, tmp, start, fingerprint)
        files.flush_folder(tmp)  # the arrays were reserved at full size: on disk before the rename
        _install(tmp, target)
    except OSError as err:
        raise _write_error(err, tmp, need) from None
    finally:
        files.remove_path(tmp)
    print(f"Prepared {', '.join(f'{n:,} {s}' for s, n in counts.items())} images "
          f"in {time.time() - start:.1f} s", file=sys.stderr)
    return target


def _write_arrays(source, layout: Layout, counts: dict[str, int], tmp: Path, workers: int) -> None:
    with decoding_pool(workers, sum(counts.values())) as pool:
        for split in counts:
            decode_all(source, layout.files[split], tmp / f"{split}_images.npy", pool, split, workers)
            np.save(tmp / f"{split}_labels.npy", np.asarray(layout.labels[split], dtype=np.int32))
            np.save(tmp / f"{split}_boxes.npy",
                    np.asarray(layout.boxes[split], dtype=np.int16).reshape(-1, 4))


def _write_manifest(source, layout: Layout, counts: dict[str, int], tmp: Path, start: float,
                    fingerprint: str | None) -> None:
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
        "fingerprint": fingerprint,  # what the dataset held: a changed one is decoded again
        "counts": counts,
        "classes": len(layout.wnids),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - start, 1),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    write_json(tmp / STAMP_NAME, {name: _file_stamp(tmp / name) for name in files})


def _install(tmp: Path, target: Path) -> None:
    """Put the finished folder in place of the old cache.

    A file where the cache folder goes is not tinylib's to delete (``prepare`` refuses
    it before decoding anything; this is the last guard).
    """
    _refuse_a_file_in_the_way(target)
    old = None
    if target.exists() or target.is_symlink():
        old = target.parent / f".{CACHE_DIR_NAME}.tmp-old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)  # the new cache in place first: no cache is missing for longer than a rename
    if old is not None:
        files.remove_path(old)


def _cache_matches(manifest: dict | None, source) -> bool:
    return manifest is not None and (source is None or (manifest["source"] == source.describe()
                                                        and not _changed_since(manifest, source)))


def _changed_since(manifest: dict, source) -> bool:
    """Whether the dataset at the cache's own path holds other files than when the cache was
    built from it (a zip replaced, a folder edited); a cache older than the fingerprint, or a
    source whose fingerprint cannot be taken now, is taken as it is."""
    built = manifest.get("fingerprint")
    if built is None:
        return False
    now = source.fingerprint()
    return now is not None and now != built


def other_source(manifest: dict) -> str | None:
    """``TINYLIB_DATA`` when it names another dataset than the cache was built from: another
    path, or the same path holding other files (``_changed_since``).

    The path the cache was built from, unreachable now (a drive unplugged, a Drive not
    mounted in this Colab session), is not another dataset: the cache serves, with a note."""
    env = os.environ.get(DATA_ENV)
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.exists():
        candidates = {str(p.resolve(strict=False)) for p in (path, path / FOLDER_NAME)}
        if manifest["source"] in candidates:
            print(f"{DATA_ENV}={env} cannot be reached now; the cache built from it serves", file=sys.stderr)
            return None
    if manifest["source"] != str(locate(env)[1]):
        return env
    if manifest.get("fingerprint") is None:  # a cache older than the fingerprint: taken as it is
        return None
    try:
        source = open_source(env)
    except DataError:  # unreadable now (a zip cut short): the cache built from it serves
        return None
    return env if _changed_since(manifest, source) else None


def _source_for_cache(target: Path):
    """The source to (re)build from, or None when the existing cache is good.

    A complete cache is reused unless ``TINYLIB_DATA`` names a different source
    or one of its files is damaged.
    """
    manifest = read_manifest(target)
    if manifest is None:
        return find_source()
    env = other_source(manifest)
    if env:
        source = open_source(env)
        why = ("names a different dataset than the cache was built from" if manifest["source"] != source.describe()
               else f"({source.describe()}) holds other files than when the cache was built from it")
        print(f"{DATA_ENV} {why}: rebuilding", file=sys.stderr)
        return source
    damage = damaged_file(target, manifest)
    return None if damage is None else source_for_repair(manifest, damage)


def _available_source(manifest: dict):
    """A source to rebuild from without downloading: ``TINYLIB_DATA``, the one the
    cache was built from, or an extraction in the cache; None if there is none."""
    if os.environ.get(DATA_ENV):
        return open_source(os.environ[DATA_ENV])
    for candidate in (Path(manifest["source"]), home() / FOLDER_NAME):
        with contextlib.suppress(DataError):
            return open_source(candidate)
    return None


def source_for_repair(manifest: dict, damage: CacheDamaged):
    """Where to rebuild a damaged cache from (said on stderr), or raise naming the file."""
    source = _available_source(manifest)
    if source is None:
        raise CacheDamaged(damage.path, f"{damage.why}; no dataset found to rebuild it from")
    print(f"cache file {damage.path} is damaged ({damage.why}): rebuilding the cache from "
          f"{source.describe()}", file=sys.stderr)
    return source


