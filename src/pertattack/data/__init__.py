"""Data loaders: MNIST-format IDX files, CIFAR-10 (python version) and the scikit-learn 8x8 digits.

Every loader returns ``(x, y)``: x float32 of shape (N, C, H, W) with values in [0, 1] (the
default attack box), y int64 of shape (N,).
"""

from __future__ import annotations

from .cifar import (
    CIFAR10_BATCHES,
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    default_cifar10_root,
    download_cifar10,
    extract_cifar10,
    load_cifar10,
)
from .digits import load_digits
from .idx import (
    DEFAULT_URL,
    MNIST_FILES,
    MNIST_MD5,
    default_mnist_root,
    download_mnist,
    load_mnist,
    read_idx,
    write_idx,
)

__all__ = [
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DEFAULT_URL",
    "MNIST_FILES",
    "MNIST_MD5",
    "default_cifar10_root",
    "default_mnist_root",
    "download_cifar10",
    "download_mnist",
    "extract_cifar10",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "read_idx",
    "write_idx",
]
