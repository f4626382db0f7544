"""Tiny ImageNet: find it, decode every image once, cache the arrays, hand out subsets.

The only package that knows the dataset's file layout.  The flow is one direction::

    source (folder | official zip | download)  ->  parse the layout
      ->  decode once into uint8 arrays  ->  on-disk cache with a manifest
      ->  load (a memory map, instant)   ->  subset(classes, per_class, seed)

Sources are tried in this order: the environment variable ``TINYLIB_DATA``
(a ``tiny-imagenet-200`` folder, the folder holding it, or the official zip);
a previous extraction in the cache; a download of the official zip.  The cache
lives in ``TINYLIB_HOME`` (default: ``~/.cache/tinylib``).

One module a job; the names the chapters use (``data.load``, ``data.load_subset``,
``data.prepare``, ...) are all here:

- ``common``: the settings' names, the official zip's identity, ``DataError``, ``home()``
- ``sources``: a folder or the zip, read through the same calls
- ``fetch``: the resumable, checked download and extraction; which source to use
- ``layout``: wnids, words, training folders, validation annotations
- ``decoding``: every JPEG decoded once, by workers that die with this process
- ``cache``: arrays and manifest, cheap checks and repair, one preparation at a time
- ``dataset``: ``TinyImageNet`` and ``Split``, loading, deterministic subsets
"""

from tinylib.data.common import (  # noqa: F401
    CACHE_DIR_NAME, CACHE_VERSION, DATA_ENV, FOLDER_NAME, HOME_ENV, HOW_TO_GET_DATA,
    IMAGE_BYTES, IMAGE_SHAPE, LOCK_NAME, OFFICIAL_MD5, OFFICIAL_SIZE, OFFICIAL_URL, SPLITS,
    STAMP_NAME, DataError, home)
from tinylib.data.sources import (  # noqa: F401
    FolderSource, ZipSource, check_zip_members, locate, open_source, open_zip)
from tinylib.data.fetch import (  # noqa: F401
    download, download_file, extract_zip, file_digest, find_source)
from tinylib.data.layout import (  # noqa: F401
    Layout, parse_layout)
from tinylib.data.decoding import (  # noqa: F401
    POOL_MIN_IMAGES, START_METHOD, decode_all, decode_image, decoding_pool)
from tinylib.data.cache import (  # noqa: F401
    CacheDamaged, cache_dir, damaged_file, other_source, prepare, read_manifest,
    source_for_repair, verify_cache)
from tinylib.data.dataset import (  # noqa: F401
    Split, TinyImageNet, load, load_subset)
