"""Figure 4: output PSNR of regression attacks against input PSNR (a, b: MNIST autoencoder, l2 and
l-inf; d: STL-10 colorization) or against the per-pixel budget eps (c: CIFAR-10 autoencoder, multiple-pixel
attacks).

Against input PSNR, attacks are compared at equal *measured* input PSNR, the paper's x axis: clipping to the box
shrinks each attack's real perturbation differently (a box-aware attack keeps more of its budget), so equal eps
is not equal input size. Each attack runs on a grid of budgets, its (measured input PSNR, output PSNR) points are
plotted as measured, and :func:`at_input_psnr` interpolates them onto the common grid :data:`INPUT_PSNR` where
the claims are judged (:mod:`pertattack.experiments.report`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from ..metrics import eps_for_psnr, psnr_curve
from .common import plot_lines, write_csv

__all__ = ["FIG4A_ATTACKS", "FIG4B_ATTACKS", "FIG4C_ATTACKS", "FIG4D_ATTACKS", "INPUT_PSNR", "at_input_psnr",
           "run_fig4"]

FIG4A_ATTACKS = ["rand-l2", "linear-l2-1", "linear-l2-10", "linear-l2-20", "quadratic-l2"]
FIG4B_ATTACKS = ["rand-linf", "linear-linf-1", "linear-linf-10", "linear-linf-20", "quadratic-linf"]
FIG4D_ATTACKS = ["rand-linf", "linear-linf-1", "linear-linf-10", "linear-linf-20"]
FIG4C_ATTACKS = ["linear-pixel-1", "linear-pixel-10", "linear-pixel-100", "rand-pixel-1", "rand-pixel-10",
                 "rand-pixel-100"]
#: the paper's x axis: measured input PSNR from 10 to 40 dB, where Figure 4(a, b, d) is judged
INPUT_PSNR = [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
#: the budgets run reach this many dB below the axis' low end before clipping, so that the measured input PSNR
#: (raised by clipping: about 2.5 dB for random l-inf noise on MNIST) still reaches it; never below 6.03 dB
#: (l-inf eps 0.5, l2 eps half the box's diameter: a larger eps warns)
REACH_DB = 4.0
#: Figure 4(c)'s x axis: the budget of each touched pixel's channels, 0.1 to 0.7
PIXEL_EPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def at_input_psnr(input_psnr: Sequence[float], output_psnr: Sequence[float], grid: Sequence[float] = INPUT_PSNR
                  ) -> list[float]:
    """One attack's output PSNR at each input PSNR of ``grid``: linear interpolation (in dB) between its measured
    (input PSNR, output PSNR) points; NaN outside the measured range (never extrapolated)."""
    pts = sorted((float(a), float(b)) for a, b in zip(input_psnr, output_psnr, strict=True)
                 if math.isfinite(a) and math.isfinite(b))
    if not pts:
        return [math.nan] * len(grid)
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return [float(v) for v in np.interp(np.asarray(grid, dtype=float), xs, ys, left=math.nan, right=math.nan)]


def _budgets(input_psnr: Sequence[float], p: float, m: int) -> list[float]:
    """The budgets run for a target input-PSNR axis: the axis (as if unclipped) and REACH_DB below its low end."""
    low = max(min(input_psnr) - REACH_DB, 20 * math.log10(2) + 0.01)
    targets = sorted({*input_psnr, *([low] if low < min(input_psnr) else [])})
    return [eps_for_psnr(d, p, m) for d in targets]


def run_fig4(model: nn.Module, x: Tensor, attacks: Sequence[str], p: float, out: Path, title: str, *,
             input_psnr: Sequence[float] = INPUT_PSNR, eps: Sequence[float] | None = None, seed: int = 0,
             truth: Tensor | None = None, log: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Each attack on a grid of budgets; CSV rows (one per attack and budget, with the measured input PSNR) and
    a PNG plot.

    Without ``eps``: the budgets reach the input PSNRs ``input_psnr`` after clipping (:func:`_budgets`), the plot
    shows each attack at its measured input PSNR, and the log its output PSNR interpolated onto ``input_psnr``
    (:func:`at_input_psnr`). With ``eps``: those budgets, which form the plot's x axis (Figure 4(c)).
    ``truth``: the ground-truth outputs the output PSNR is measured against (default x: an autoencoder; the
    colour image for colorization)."""
    by_psnr = eps is None
    eps = _budgets(input_psnr, p, x[0].numel()) if by_psnr else list(eps)
    curves = {}
    rows = []
    for name in attacks:
        c = psnr_curve(model, x, name, eps, truth=truth, seed=seed, progress=True)
        curves[name] = c
        for i in range(len(eps)):
            rows.append([name, c["eps"][i], c["input_psnr"][i], c["output_psnr"][i], c["output_psnr_clean"][i]])
        shown = at_input_psnr(c["input_psnr"], c["output_psnr"], input_psnr) if by_psnr else c["output_psnr"]
        log(f"{name:>15}: output PSNR " + " ".join(f"{v:6.2f}" for v in shown)
            + (f" at input PSNR {', '.join(f'{v:g}' for v in input_psnr)} dB (measured, interpolated)" if by_psnr
               else " | vs f(x) " + " ".join(f"{v:6.2f}" for v in c["output_psnr_clean"])))
    write_csv(out.with_suffix(".csv"), ["attack", "eps", "input_psnr", "output_psnr", "output_psnr_clean"], rows)
    plot_lines(out.with_suffix(".png"), {k: c["input_psnr"] for k, c in curves.items()} if by_psnr else eps,
               {k: c["output_psnr"] for k, c in curves.items()},
               xlabel="input PSNR (dB), measured after clipping" if by_psnr else "eps per pixel",
               ylabel="output PSNR (dB)", title=title)
    return curves
