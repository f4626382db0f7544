"""Where a session stands before it trains anything: the profile and what chose it, Keras
and its backend, the device, the dataset, the decoded cache and the runs folder.

Chapter 1 prints it so that a student sees, in one cell, what the chapters will use and
where they will write; nothing here loads or downloads the data.
"""

from __future__ import annotations

import os


def report(profile=None) -> str:
    """The lines chapter 1 prints (a string, a line each), for ``profile`` (default: the
    one in force: ``TINYLIB_PROFILE``, else the hardware's)."""
    import keras

    from tinylib import data, environment, runs
    from tinylib.profiles import PROFILE_ENV, get_profile

    chosen = get_profile(profile)
    by = ("the caller" if profile is not None else PROFILE_ENV if os.environ.get(PROFILE_ENV)
          else "the hardware")
    lines = [chosen.describe(), f"  chosen by {by}",
             f"Keras {keras.__version__}, backend: {keras.backend.backend()}",
             f"device: {environment.device_name()}", _data_line(data)]
    manifest = data.read_manifest()
    if manifest is None:
        lines.append(f"cache: {data.cache_dir()} (empty: data.load() will fill it)")
    else:
        counts = ", ".join(f"{n:,} {split}" for split, n in manifest["counts"].items())
        lines.append(f"cache: {data.cache_dir()} ({counts} images, decoded once)")
    lines.append(f"training runs: {runs.runs_dir()}")
    return "\n".join(lines)


def _data_line(data) -> str:
    """Where the dataset is, without downloading it; a ``TINYLIB_DATA`` that names no dataset
    is said with the error that says what is wrong."""
    try:
        source = data.find_source(download_if_missing=False)
    except data.DataError as error:
        if os.environ.get(data.DATA_ENV):
            return f"data: {error}"
        return "data: not found yet; the first data.load() will download it"
    return f"data: {source.kind} {source.describe()}"
