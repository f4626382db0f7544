"""tinylib: the helper library of the Tiny ImageNet course book.

Submodules (imported on demand, so ``import tinylib`` stays fast and does not
start TensorFlow): ``data``, ``profiles``, ``augment``, ``models``, ``train``,
``evaluate``, ``plots``, ``cli``.
"""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU flags) is noise on every page of
# the book and in every test log; real errors still surface as Python exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
