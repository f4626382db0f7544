"""tinylib: the helper library of the Tiny ImageNet course book.

Submodules (imported on demand, so ``import tinylib`` stays fast and does not
start TensorFlow): ``data``, ``profiles``, ``augment``, ``models``, ``train``,
``evaluate``, ``plots``, ``cli``.
"""

from tinylib import startup as _startup

# Picks JAX when TensorFlow is missing, and keeps TensorFlow's C++ start-up lines
# (CUDA probing, CPU flags) off the book's pages; real warnings still show.
_startup.install()

__version__ = "0.1.0"
