"""Figure 3 (fooling ratio vs eps, p = inf) and Table 3 (robustness measures) of the paper."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..metrics import fooling_curve, robustness
from .common import plot_lines, write_csv

__all__ = ["FIG3_ATTACKS", "fooling_table", "run_fig3", "run_table3"]

#: Figure 3's legend -> (preset, overrides). "PGD" is the paper's reading (pgd-paper); Madry's PGD is
#: added beside it since it is the stronger one at equal budget.
FIG3_ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "DeepFool": ("deepfool", {"p": math.inf}),
    "Alg1-10": ("alg1-10", {}),
    "Alg1-5": ("alg1-5", {}),
    "Alg1": ("alg1", {}),
    "Alg2": ("alg2", {}),
    "FGSM": ("fgsm", {}),
    "PGD (paper)": ("pgd-paper", {}),
    "PGD (Madry)": ("pgd", {}),
    "random": ("random", {}),
}


def fooling_table(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float],
                  attacks: dict[str, tuple[str, dict[str, Any]]] = FIG3_ATTACKS, *, seed: int = 0,
                  batch_size: int = 500, progress: bool = True, log: Callable[[str], None] = print
                  ) -> dict[str, list[float]]:
    """Fooling ratio of each attack at each eps (the paper's definition, correctly classified inputs)."""
    table = {}
    for label, (preset, overrides) in attacks.items():
        table[label] = fooling_curve(model, x, y, preset, list(eps), seed=seed, batch_size=batch_size,
                                     progress=progress, **overrides)
        log(f"{label:>12}: " + " ".join(f"{v:.3f}" for v in table[label]))
    return table


def run_fig3(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float], out: Path, title: str, **kw: Any
             ) -> dict[str, list[float]]:
    """Fooling-ratio curves to ``out``.csv and ``out``.png."""
    table = fooling_table(model, x, y, eps, **kw)
    write_csv(out.with_suffix(".csv"), ["attack", *[f"eps={e:g}" for e in eps]],
              [[k, *v] for k, v in table.items()])
    plot_lines(out.with_suffix(".png"), eps, {k: [100 * v for v in vs] for k, vs in table.items()},
               xlabel="eps (l-inf)", ylabel="fooling ratio (%)", title=title)
    return table


def run_table3(models: dict[str, tuple[nn.Module, Tensor, Tensor]], out: Path, p: float = math.inf,
               log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Test error, rho1, rho2 and DeepFool's 99% eps for each model, to ``out``.csv."""
    rows = {}
    for name, (model, x, y) in models.items():
        rows[name] = robustness(model, x, y, p)
        log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[name].items()))
    keys = ["test_error", "rho1", "rho2", "eps_99", "deepfool_success", "deepfool_failed"]
    write_csv(out.with_suffix(".csv"), ["model", *keys], [[n, *[r[k] for k in keys]] for n, r in rows.items()])
    return rows
