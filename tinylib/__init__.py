"""tinylib: the helper library of the Tiny ImageNet course book.

Submodules (imported on demand, so ``import tinylib`` stays fast and does not
start TensorFlow): ``data``, ``profiles``, ``augment``, ``models``, ``train``,
``evaluate``, ``plots``, ``cli``.
"""

__version__ = "0.1.0"
