"""Data loaders: MNIST-format IDX files and the scikit-learn 8x8 digits.

Every loader returns ``(x, y)``: x float32 of shape (N, C, H, W) with values in [0, 1] (the
default attack box), y int64 of shape (N,).
"""

from __future__ import annotations

from .digits import load_digits
from .idx import (
    DEFAULT_URL,
    MNIST_FILES,
    default_mnist_root,
    download_mnist,
    load_mnist,
    read_idx,
    write_idx,
)

__all__ = [
    "DEFAULT_URL",
    "MNIST_FILES",
    "default_mnist_root",
    "download_mnist",
    "load_digits",
    "load_mnist",
    "read_idx",
    "write_idx",
]
