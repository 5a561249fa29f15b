"""The figures of ``pertattack demo`` (matplotlib, Agg backend): readable in grey scale and at a glance.

Every function writes one PNG and returns its path; :func:`available` says whether matplotlib is installed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["available", "line_styles", "fooling_plot", "example_grid", "psnr_plot", "autoencoder_grid"]

_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p"]
_DASHES = ["-", "--", "-.", ":"]


def available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_styles(n: int) -> list[dict[str, Any]]:
    """``n`` distinct (marker, line style, colour) triples: two lines never share marker and dash pattern,
    so they stay apart without colour (grey-scale print, colour blindness)."""
    if n > len(_MARKERS) * len(_DASHES):
        raise ValueError(f"at most {len(_MARKERS) * len(_DASHES)} lines, got {n}")
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    pairs = list(zip(_MARKERS, itertools.cycle(_DASHES)))
    return [dict(marker=m, linestyle=d, color=colours[i % len(colours)]) for i, (m, d) in enumerate(pairs[:n])]


def fooling_plot(path: Path, eps: Sequence[float], curves: dict[str, Sequence[float]], *, title: str,
                 note: str) -> Path:
    """Fooling ratio (%) against eps, one line per attack, with ``note`` (images, test error) on the plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for (name, ys), st in zip(curves.items(), line_styles(len(curves)), strict=True):
        ax.plot(list(eps), [100 * v for v in ys], label=name, ms=6, lw=1.6, mfc="white", mew=1.4, **st)
    ax.set_xlabel("eps (l-inf, pixels in [0, 1])")
    ax.set_ylabel("fooling ratio (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, handlelength=3.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def example_grid(path: Path, x: Tensor, eta: Tensor, x_adv: Tensor, label: Tensor, pred: Tensor, *,
                 title: str) -> Path:
    """Original / perturbation (scaled to its largest entry, diverging map) / adversarial, one column per
    image, with the true class, the prediction and the prediction on the adversarial image."""
    plt = _plt()
    n = x.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.25 * n + 1.3, 4.4), squeeze=False)
    scale = float(eta.abs().max().clamp_min(1e-12))
    rows = ["original", f"perturbation\n(+-{scale:.2g} = full scale)", "adversarial"]
    for j in range(n):
        imgs = [x[j, 0], eta[j, 0], x_adv[j, 0]]
        for i, img in enumerate(imgs):
            ax = axes[i][j]
            if i == 1:
                ax.imshow(img.cpu().numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            else:
                ax.imshow(img.cpu().numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=9)
        changed = int(pred[j]) != int(label[j])
        axes[0][j].set_title(f"true {int(label[j])}", fontsize=9)
        axes[2][j].set_xlabel(f"pred {int(pred[j])}", fontsize=10, color="tab:red" if changed else "black",
                              fontweight="bold" if changed else "normal")
    fig.suptitle(title + ": correctly classified test images (red: prediction changed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def psnr_plot(path: Path, curves: dict[str, dict[str, list[float]]], groups: dict[float, list[str]], *,
              note: str) -> Path:
    """Output PSNR against f(x) vs the input PSNR reached, one panel per norm (Figure 4)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups), 4.2), squeeze=False, sharey=True)
    for ax, (p, names) in zip(axes[0], groups.items(), strict=True):
        for name, st in zip(names, line_styles(len(names)), strict=True):
            c = curves[name]
            ax.plot(c["input_psnr"], c["output_psnr_clean"], label=name, ms=6, lw=1.6, mfc="white", mew=1.4, **st)
        ax.set_title("l2 attacks" if p == 2 else "l-inf attacks" if math.isinf(p) else f"l{p:g} attacks",
                     fontsize=11)
        ax.set_xlabel("input PSNR (dB), x + eta against x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5, handlelength=3.2)
    axes[0][0].set_ylabel("output PSNR (dB), f(x + eta) against f(x)")
    fig.suptitle(f"Autoencoder on the 8x8 digits: lower output PSNR = stronger attack ({note})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def autoencoder_grid(path: Path, rows: dict[str, Tensor], captions: dict[str, list[str]], *, title: str) -> Path:
    """Rows of images (N, 1, H, W) in [0, 1], one column per image, with a PSNR caption under each image
    of the rows named in ``captions``."""
    plt = _plt()
    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(1.25 * n + 1.6, 1.45 * len(names) + 0.5), squeeze=False)
    for i, name in enumerate(names):
        imgs = rows[name].detach().cpu().clamp(0, 1)
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j, 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name.strip(), fontsize=8.5)
            if name in captions:
                ax.set_xlabel(captions[name][j], fontsize=8, labelpad=2)
    fig.suptitle(title + "\n(captions: PSNR against the original x)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
