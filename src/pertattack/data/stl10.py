"""STL-10 (Coates, Lee, Ng 2011) from its binary files, for the colorization experiment (Figures 2(c), 4(d)).

The binary release (``stl10_binary.tar.gz``, http://ai.stanford.edu/~acoates/stl10/) holds, in the folder
``stl10_binary/``:

    train_X.bin  train_y.bin   5,000 labelled images
    test_X.bin   test_y.bin    8,000 labelled images
    unlabeled_X.bin          100,000 unlabelled images
    class_names.txt

``*_X.bin`` is raw uint8, 3 x 96 x 96 bytes per image, no header: the three colour planes (R, G, B) one
after the other, each plane stored **column-major** (the byte of pixel (row h, column w) of channel c is at
offset c*96*96 + w*96 + h). Read row-major, an image comes out transposed, so the loader swaps the two
spatial axes. ``*_y.bin`` is one uint8 per image, labels 1..10; they are returned as 0..9.

Nothing is downloaded here: give the folder (extracted, either ``root`` itself or ``root/stl10_binary``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .idx import default_data_root

__all__ = ["STL10_CLASSES", "STL10_URL", "default_stl10_root", "find_stl10_root", "load_stl10", "write_stl10",
           "to_gray"]

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
_SIDE = 96
_BYTES = 3 * _SIDE * _SIDE
_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
          "unlabeled": ("unlabeled_X.bin", None)}


def default_stl10_root() -> Path:
    """``$PERTATTACK_STL10`` if set, else ``../shared/data/stl10`` if that folder exists, else
    ``~/.cache/pertattack/stl10``."""
    return default_data_root("stl10", "PERTATTACK_STL10")


def _folder(root: Path, name: str) -> Path | None:
    for folder in (root, root / "stl10_binary"):
        if (folder / name).is_file():
            return folder
    return None


def _has_split(root: Path, split: str) -> Path | None:
    """The folder under ``root`` holding ``split``'s files (images and, if labelled, labels), else None."""
    xname, yname = _FILES[split]
    folder = _folder(root, xname)
    return folder if folder is not None and (yname is None or (folder / yname).is_file()) else None


def _missing(split: str, *roots: str | os.PathLike[str]) -> FileNotFoundError:
    """The error for ``split``'s files found in none of ``roots``: names every folder searched and the one
    way to get them (pertattack downloads no STL-10, with ``--download`` or without)."""
    xname, yname = _FILES[split]
    where = [str(f) for r in roots for f in (Path(r), Path(r) / "stl10_binary")]
    return FileNotFoundError(
        f"STL-10 binary files for split {split!r} ({xname}" + (f", {yname}" if yname else "") + ") not found in "
        + (", ".join(where[:-1]) + " or " + where[-1]) + f". pertattack does not download STL-10 (--download "
        f"fetches MNIST and CIFAR-10 only): download {STL10_URL} yourself, extract it, and point root= (--root) "
        "or $PERTATTACK_STL10 at the stl10_binary folder.")


def find_stl10_root(split: str, *roots: str | os.PathLike[str]) -> Path:
    """The first of ``roots`` that holds ``split``'s files (itself or its ``stl10_binary/``); FileNotFoundError
    naming every folder searched when none does."""
    for root in roots:
        if _has_split(Path(root).expanduser(), split) is not None:
            return Path(root).expanduser()
    raise _missing(split, *(Path(r).expanduser() for r in roots))


def load_stl10(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test", "unlabeled"] = "train",
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Load an STL-10 split from the binary files (column-major images, see the module docstring).

    Args:
        root: the folder holding ``<split>_X.bin`` (or its ``stl10_binary/`` subfolder); None:
            :func:`default_stl10_root`.
        split: ``"train"`` (5,000), ``"test"`` (8,000) or ``"unlabeled"`` (100,000; labels -1).
        limit: read only the first ``limit`` images (the file is memory-mapped, not read whole).

    Returns:
        ``(x, y)``: x float32 (N, 3, 96, 96) RGB in [0, 1], y int64 (N,) in 0..9 (-1 when unlabelled).

    Raises:
        FileNotFoundError: the files are missing; the message says what to provide.
        ValueError: a bad split or limit, a file whose size is not a whole number of images, or a labels
            file with another number of labels than there are images.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train', 'test' or 'unlabeled', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    root = default_stl10_root() if root is None else Path(root).expanduser()
    xname, yname = _FILES[split]
    folder = _has_split(root, split)
    if folder is None:
        raise _missing(split, root)
    size = (folder / xname).stat().st_size
    if size % _BYTES:
        raise ValueError(f"{folder / xname}: {size} bytes is not a whole number of 3x96x96 images")
    n = size // _BYTES if limit is None else min(limit, size // _BYTES)
    raw = np.memmap(folder / xname, dtype=np.uint8, mode="r", shape=(size // _BYTES, 3, _SIDE, _SIDE))[:n]
    # stored (channel, column, row): swap to (channel, row, column)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(raw).transpose(0, 1, 3, 2))).to(torch.float32).div_(255.0)
    if yname is None:
        return x, torch.full((n,), -1, dtype=torch.int64)
    n_labels = (folder / yname).stat().st_size  # one byte each: counted, never read beyond the first n
    if n_labels != size // _BYTES:
        raise ValueError(f"{folder / yname}: {n_labels} labels for the {size // _BYTES} images of {folder / xname}")
    lab = np.fromfile(folder / yname, dtype=np.uint8, count=n).astype(np.int64)
    if lab.size and (lab.min() < 1 or lab.max() > 10):
        raise ValueError(f"{folder / yname}: labels must be in 1..10, got {lab.min()}..{lab.max()}")
    return x, torch.from_numpy(lab - 1)


def write_stl10(root: str | os.PathLike[str], split: str, x: Tensor | np.ndarray, y: Tensor | np.ndarray | None
                ) -> None:
    """Write images (N, 3, 96, 96) (uint8, or floats in [0, 1]) and labels 0..9 in STL-10's binary layout."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train', 'test' or 'unlabeled', got {split!r}")
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim != 4 or arr.shape[1:] != (3, _SIDE, _SIDE):
        raise ValueError(f"images must be (N, 3, 96, 96), got {arr.shape}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    xname, yname = _FILES[split]
    np.ascontiguousarray(arr.transpose(0, 1, 3, 2)).tofile(root / xname)
    if yname is not None:
        if y is None:
            raise ValueError(f"split {split!r} needs labels")
        lab = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
        (lab.astype(np.int64) + 1).astype(np.uint8).tofile(root / yname)


def to_gray(x: Tensor) -> Tensor:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of RGB images (N, 3, H, W) -> (N, 1, H, W): the colorization input."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)
