"""Decoding every JPEG once, in parallel worker processes (which die with this one),
straight into the cache's ``.npy`` files."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from tinylib import processes
from tinylib.data.common import IMAGE_BYTES, IMAGE_SHAPE, DataError
from tinylib.data.sources import FolderSource, ZipSource
from tinylib.progress import report_count


POOL_MIN_IMAGES = 4000  # below this, starting worker processes costs more than it saves
START_METHOD: str | None = None  # None: fork on Linux unless a threaded framework is loaded

_worker_sources: dict[tuple[str, str], object] = {}


def _source_in_worker(kind: str, path: str):
    key = (kind, path)
    if key not in _worker_sources:
        _worker_sources[key] = FolderSource(Path(path)) if kind == "folder" else ZipSource(Path(path))
    return _worker_sources[key]


def _forget_sources() -> None:
    """Close the sources this process opened to decode: a zip replaced at the same path
    later is read afresh, and a pool forked later does not share this one's file offset."""
    for source in _worker_sources.values():
        if isinstance(source, ZipSource):
            source.zip.close()
    _worker_sources.clear()


def decode_image(data: bytes, name: str) -> np.ndarray:
    """JPEG bytes -> (64, 64, 3) uint8; grayscale becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != IMAGE_SHAPE[:2][::-1]:  # from the header: refused before decoding its pixels
                raise DataError(
                    f"{name}: expected a {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]} image, got "
                    f"{image.size[0]}x{image.size[1]}"
                )
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
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


def decode_all(source, names: list[str], out_path: Path, pool, label: str, workers: int = 1) -> None:
    """Decode ``names`` into the .npy at ``out_path``, in ``pool`` if given."""
    start_of_pixels = _create_npy(out_path, len(names))
    chunk = _chunk_size(len(names), workers if pool is not None else 1)
    root = str(source.path if source.kind == "zip" else source.root)
    jobs = [(source.kind, root, names[i:i + chunk], str(out_path), start_of_pixels + i * IMAGE_BYTES)
            for i in range(0, len(names), chunk)]
    start, done = time.time(), 0
    if pool is None:
        try:
            for job in jobs:
                step = _decode_chunk(*job)
                done += step
                report_count(label, done, len(names), start, step)
        finally:
            _forget_sources()
        return
    futures = [pool.submit(_decode_chunk, *job) for job in jobs]
    try:
        for future in concurrent.futures.as_completed(futures):
            step = future.result()
            done += step
            report_count(label, done, len(names), start, step)
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


def decoding_pool(workers: int, images: int):
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
