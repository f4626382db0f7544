"""What every part of the data package shares: the settings' names, the official
zip's identity, the cache's names and the one error type."""

from __future__ import annotations

import os
import sys
from pathlib import Path




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
        return Path(os.environ[HOME_ENV]).expanduser().absolute()  # a relative one: from where it was set
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "tinylib"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinylib"


