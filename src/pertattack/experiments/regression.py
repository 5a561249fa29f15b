"""Figure 4: output PSNR of regression attacks against input PSNR (a, b: MNIST autoencoder, l2 and
l-inf) or against the per-pixel budget eps (c: CIFAR-10 autoencoder, multiple-pixel attacks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn

from ..metrics import eps_for_psnr, psnr_curve
from .common import plot_lines, write_csv

__all__ = ["FIG4A_ATTACKS", "FIG4B_ATTACKS", "FIG4C_ATTACKS", "FIG4D_ATTACKS", "run_fig4"]

FIG4A_ATTACKS = ["rand-l2", "linear-l2-1", "linear-l2-10", "linear-l2-20", "quadratic-l2"]
FIG4B_ATTACKS = ["rand-linf", "linear-linf-1", "linear-linf-10", "linear-linf-20", "quadratic-linf"]
FIG4D_ATTACKS = ["rand-linf", "linear-linf-1", "linear-linf-10", "linear-linf-20"]
FIG4C_ATTACKS = ["linear-pixel-1", "linear-pixel-10", "linear-pixel-100", "rand-pixel-1", "rand-pixel-10",
                 "rand-pixel-100"]
#: the paper's x axis: input PSNR from 10 to 40 dB
INPUT_PSNR = [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
#: Figure 4(c)'s x axis: the budget of each touched pixel's channels, 0.1 to 0.7
PIXEL_EPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def run_fig4(model: nn.Module, x: Tensor, attacks: Sequence[str], p: float, out: Path, title: str, *,
             input_psnr: Sequence[float] = INPUT_PSNR, eps: Sequence[float] | None = None, seed: int = 0,
             truth: Tensor | None = None, log: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Each attack at the budgets that give the target input PSNRs (or at the budgets ``eps``, which
    then form the plot's x axis); CSV rows and a PNG plot. ``truth``: the ground-truth outputs the output
    PSNR is measured against (default x: an autoencoder; the colour image for colorization)."""
    m = x[0].numel()
    by_psnr = eps is None
    eps = [eps_for_psnr(d, p, m) for d in input_psnr] if by_psnr else list(eps)
    xs = list(input_psnr) if by_psnr else eps
    curves = {}
    rows = []
    for name in attacks:
        c = psnr_curve(model, x, name, eps, truth=truth, seed=seed, progress=True)
        curves[name] = c
        for i in range(len(eps)):
            rows.append([name, c["eps"][i], c["input_psnr"][i], c["output_psnr"][i], c["output_psnr_clean"][i]])
        log(f"{name:>15}: output PSNR " + " ".join(f"{v:6.2f}" for v in c["output_psnr"])
            + " | vs f(x) " + " ".join(f"{v:6.2f}" for v in c["output_psnr_clean"]))
    write_csv(out.with_suffix(".csv"), ["attack", "eps", "input_psnr", "output_psnr", "output_psnr_clean"], rows)
    plot_lines(out.with_suffix(".png"), xs, {k: c["output_psnr"] for k, c in curves.items()},
               xlabel="input PSNR (dB), target" if by_psnr else "eps per pixel", ylabel="output PSNR (dB)",
               title=title)
    return curves
