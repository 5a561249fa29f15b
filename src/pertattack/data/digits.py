"""The scikit-learn 8x8 digits: 1,797 images shipped inside scikit-learn, no download needed.

Used by ``pertattack demo`` because a model trains on it in seconds on a CPU.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["load_digits"]


def load_digits(
    split: Literal["train", "test"] = "train",
    seed: int = 0,
    test_fraction: float = 0.25,
) -> tuple[Tensor, Tensor]:
    """Load a train or test split of the scikit-learn digits.

    The split is a permutation drawn from a ``torch.Generator`` seeded by ``seed`` (the global RNG
    is untouched): the same seed gives the same split, and the two splits of one seed are disjoint
    and together cover the 1,797 images.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: seed of the split.
        test_fraction: share of the images in the test split, in (0, 1).

    Returns:
        ``(x, y)``: x float32 of shape (N, 1, 8, 8) with values in [0, 1] (pixel counts 0..16
        divided by 16), y int64 of shape (N,).

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: a bad split or test fraction.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the 8x8 digits ship with scikit-learn, which is not installed: pip install pertattack[demo]"
        ) from err
    bunch = _sk_load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    n = x.shape[0]
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return x[idx], y[idx]
