"""Shared plumbing of the experiments: cached trained models, CSV tables, line plots."""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models import MODELS, build_model
from ..training import load_model, save_model

__all__ = ["cached_model", "data_digest", "write_csv", "plot_lines", "plot_images", "cache_dir"]


def cache_dir() -> Path:
    """Where trained models are kept: $PERTATTACK_CACHE or ~/.cache/pertattack."""
    return Path(os.environ.get("PERTATTACK_CACHE", Path.home() / ".cache" / "pertattack")).expanduser()


def data_digest(*tensors: Tensor) -> str:
    """A short hex digest (12 characters, BLAKE2b) of tensors' dtypes, shapes and bytes.

    It names the data a cached model was trained on: other data (another ``--root``, another
    subset) gives another digest, hence another cache file.
    """
    h = hashlib.blake2b(digest_size=6)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def cached_model(name: str, tag: str, train: Callable[[nn.Module], None], *, seed: int = 0, device: str = "cpu",
                 log: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr,
                 **kwargs: Any) -> nn.Module:
    """Load ``<cache>/<tag>.pt`` or build ``name`` with ``seed`` on ``device``, train it with ``train``,
    save it (on the CPU); the model is returned on ``device``.

    ``tag`` must identify everything the training depends on, the data included (see
    :func:`data_digest`). A cache file that cannot be read as a checkpoint of this architecture
    (corrupt, truncated, another model) is reported through ``warn`` (one line on stderr by
    default) and replaced by a freshly trained model.
    """
    path = cache_dir() / f"{tag}.pt"
    if path.exists():
        try:
            model = load_model(path, map_location=device)
        except (ValueError, OSError) as err:
            warn(f"warning: cached model {path} is unusable ({err}); training it again")
        else:
            expected = MODELS.get(name)
            if expected is None or type(model) is expected:
                log(f"loading {path}")
                return model
            warn(f"warning: cached model {path} is a {type(model).__name__}, not a {name}; training it again")
    model = build_model(name, seed=seed, **kwargs).to(device)
    log(f"training {name} -> {path}")
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, name, **kwargs)
    return model


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain CSV table (floats with 6 significant digits)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def plot_lines(path: str | Path, x: Sequence[float] | dict[str, Sequence[float]], curves: dict[str, Sequence[float]],
               *, xlabel: str, ylabel: str, title: str) -> bool:
    """Line plot of several curves to a PNG (``x`` shared, or one per curve by name); returns False (and writes
    nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, ys in curves.items():
        ax.plot(list(x[name] if isinstance(x, dict) else x), list(ys), marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_images(path: str | Path, rows: dict[str, Tensor], *, title: str, captions: Sequence[str] | None = None
                ) -> bool:
    """A grid of images (one row per entry, (N, C, H, W) in [0, 1]) to a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(1.3 * n + 1.2, 1.3 * len(names) + 0.5), squeeze=False)
    for i, name in enumerate(names):
        imgs = rows[name].detach().cpu().clamp(0, 1)
        for j in range(n):
            ax = axes[i][j]
            img = imgs[j].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            if captions is not None and i == len(names) - 1:
                ax.set_xlabel(captions[j], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
