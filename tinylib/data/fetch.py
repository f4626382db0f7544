"""Getting the dataset: the official zip downloaded resumably and checked, extracted
atomically into the cache; and the choice of source (``TINYLIB_DATA``, an earlier
extraction, a download)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath


from tinylib.data.common import (DATA_ENV, FOLDER_NAME, HOW_TO_GET_DATA, OFFICIAL_MD5, OFFICIAL_SIZE,
                                  OFFICIAL_URL, DataError, home)
from tinylib.data.sources import FolderSource, ZipSource, check_zip_members, open_source, open_zip
from tinylib import files
from tinylib.progress import report_bytes

# A download that fails writing the file: the disk is full or not ours, and the network is fine.
_WRITE_ERRORS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EACCES, errno.EROFS,
                           errno.EPERM})


# ----------------------------------------------------------------------------
# Download: resumable, checked, extracted atomically into the cache.
# ----------------------------------------------------------------------------


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
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{files.describe_os_error(err, 'making the download folder')} "
                        f"(or set TINYLIB_HOME to a writable folder, or {DATA_ENV} to the dataset)") from None
    if dest.is_file() and (size is None or dest.stat().st_size == size) and (
            md5 is None or file_digest(dest, "md5") == md5):
        return dest  # downloaded and checked before (an extraction failed after it): not again
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is None or have < size:  # else whole already: a kill came during its check
        _fetch(url, dest, part, have, size, progress)
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


def _fetch(url: str, dest: Path, part: Path, have: int, size: int | None, progress: bool) -> None:
    """Append what the server has past ``have`` bytes to ``part`` (all of it, where the server
    ignores the range)."""
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
                        report_bytes(f"downloading {dest.name}", done, total, start, len(block))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing past what is kept: it is whole, and checked next
            return
        raise DataError(f"could not download {url} ({err}). What was fetched is kept in {part} and the "
                        f"next try resumes from it. {HOW_TO_GET_DATA}") from None
    except (urllib.error.URLError, OSError) as err:
        if not isinstance(err, urllib.error.URLError) and err.errno in _WRITE_ERRORS:  # this disk, not the network
            raise DataError(f"{files.describe_os_error(err, f'writing {part}')} What was fetched is kept in "
                            f"{part} and the next try resumes from it.") from None
        raise DataError(
            f"could not download {url} ({err}). What was fetched is kept in {part} and the "
            f"next try resumes from it. {HOW_TO_GET_DATA}"
        ) from None
    finally:
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)  # end the line redrawn in place


def extract_zip(zip_path: Path, dest_parent: Path) -> Path:
    """Unpack the official zip into ``dest_parent/tiny-imagenet-200``, all or nothing."""
    dest_parent = Path(dest_parent)
    target = dest_parent / FOLDER_NAME
    with open_zip(zip_path) as archive:
        names = archive.namelist()
        check_zip_members(names, zip_path)  # before anything is written
        if not any(PurePosixPath(n).parts[:2] == (FOLDER_NAME, "wnids.txt") for n in names):
            raise DataError(f"{zip_path} is not the official zip: no {FOLDER_NAME}/wnids.txt")
        tmp = dest_parent / f".{FOLDER_NAME}.extracting-{os.getpid()}"
        try:
            dest_parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            archive.extractall(tmp)
            os.replace(tmp / FOLDER_NAME, target)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DataError(f"{zip_path} is corrupt ({err}); delete it and download again") from None
        except OSError as err:
            if target.is_dir() and any(target.iterdir()):  # os.replace onto a folder with files
                raise DataError(f"{target} is in the way of the unpacked dataset (it has no wnids.txt: an "
                                "extraction or copy cut short?): move it away or delete it, then run again; "
                                f"the download is kept in {zip_path}") from None
            raise DataError(f"{files.describe_os_error(err, f'unpacking {zip_path.name}')} The download is kept "
                            f"in {zip_path}; run again once that is fixed.") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(url: str = OFFICIAL_URL, md5: str | None = OFFICIAL_MD5,
             size: int | None = OFFICIAL_SIZE) -> Path:
    """Download and unpack the official zip into the cache; returns the folder. One process
    at a time (two chapters opened at once both find no data): the second waits, then uses
    the first one's folder."""
    cache = home()
    extracted = cache / FOLDER_NAME
    lock = files.FolderLock(cache, DOWNLOAD_LOCK_NAME, remove=True, optional=True)
    try:
        lock.acquire(wait=True, message=f"waiting for another download of Tiny ImageNet (pid {{pid}}) into {cache} ...")
    except OSError as err:
        raise DataError(f"{files.describe_os_error(err, 'making the download folder')} (or set TINYLIB_HOME to "
                        f"a writable folder, or {DATA_ENV} to the dataset)") from None
    try:
        if (extracted / "wnids.txt").is_file():
            return extracted  # another process downloaded it while this one waited
        print(f"Tiny ImageNet not found locally: downloading {url} into {cache}", file=sys.stderr)
        zip_path = download_file(url, cache / "downloads" / f"{FOLDER_NAME}.zip", md5=md5, size=size)
        folder = extract_zip(zip_path, cache)
        zip_path.unlink()
        return folder
    finally:
        lock.release()


DOWNLOAD_LOCK_NAME = ".download.lock"




def find_source(download_if_missing: bool = True) -> FolderSource | ZipSource:
    """The first source that exists: ``TINYLIB_DATA``, the dataset the array cache was
    built from, an extraction in the cache, or a download."""
    if os.environ.get(DATA_ENV):
        return open_source(os.environ[DATA_ENV])
    built_from = _cache_source()
    if built_from is not None:
        return built_from
    extracted = home() / FOLDER_NAME
    if (extracted / "wnids.txt").is_file():
        return FolderSource(extracted)
    if not download_if_missing:
        raise DataError(f"No Tiny ImageNet found. {HOW_TO_GET_DATA}")
    return FolderSource(download())


def _cache_source() -> FolderSource | ZipSource | None:
    """The dataset the array cache was built from, where it is still there: a chapter that
    reads the files themselves finds it in a session without ``TINYLIB_DATA``, as
    ``data.load`` finds the cache, instead of downloading the zip."""
    from tinylib.data.cache import read_manifest  # the cache module imports this one

    manifest = read_manifest()
    if not manifest:
        return None
    try:
        return open_source(manifest["source"])
    except DataError:
        return None
