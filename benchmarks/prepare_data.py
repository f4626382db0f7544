"""Benchmark: prepare the full Tiny ImageNet from the zip into the cache, then load it again.

Targets on a 2-core CPU: preparing (train + val) in at most 60 s, loading again in at most 2 s.

    TINYLIB_DATA=/path/to/tiny-imagenet-200.zip python benchmarks/prepare_data.py

If TINYLIB_DATA names a folder instead, the script first zips it in the official layout into a
scratch folder (not timed) so the figure is the zip path, and points TINYLIB_DATA at that zip for
the rest of the run: otherwise the second load would see another source than the cache's and
decode everything again.  The cache goes to a scratch TINYLIB_HOME, so your own cache is left
alone.  The script checks that the second load was a cache hit (same manifest, no new cache).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path


def official_zip(folder: Path, scratch: Path) -> Path:
    """Zip a tiny-imagenet-200 folder as the official zip is laid out (deflated, top folder inside)."""
    target = scratch / "tiny-imagenet-200.zip"
    print(f"zipping {folder} into {target} (not timed) ...", flush=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, (Path("tiny-imagenet-200") / path.relative_to(folder)).as_posix())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the CPUs this process may use, at most 8)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    from tinylib import data

    if not os.environ.get(data.DATA_ENV):
        raise SystemExit(f"set {data.DATA_ENV} to the Tiny ImageNet zip or folder")
    scratch = Path(tempfile.mkdtemp(prefix="tinylib-bench-"))
    try:
        kind, path = data.locate(os.environ[data.DATA_ENV])
        zip_path = path if kind == "zip" else official_zip(path, scratch)
        os.environ[data.DATA_ENV] = str(zip_path)  # the source load() compares the cache with
        os.environ[data.HOME_ENV] = str(scratch / "home")

        start = time.perf_counter()
        folder = data.prepare(data.open_source(zip_path), workers=args.workers)
        prepare_s = time.perf_counter() - start
        prepared = data.read_manifest(folder)

        start = time.perf_counter()
        ds = data.load()
        checksum = int(ds.train.images[-1].sum()) + int(ds.val.images[-1].sum())  # touch the arrays
        load_s = time.perf_counter() - start
        if data.read_manifest(folder) != prepared:
            raise SystemExit("the second load rebuilt the cache: its time is not a cache hit")

        print(f"\ncores: {os.cpu_count()}, zip: {zip_path.stat().st_size:,} bytes, {ds.summary()}")
        print(f"prepare (zip -> decoded cache): {prepare_s:6.1f} s   target <= 60 s")
        print(f"load again (memory map):        {load_s:6.2f} s   target <= 2 s   (check {checksum})")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    from tinylib.processes import sigterm_as_exit

    with sigterm_as_exit():  # a polite kill removes the scratch folder too
        main()
