"""What an attack returns: :class:`AttackResult`, one per budget."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["AttackResult", "concat_results"]


@dataclass
class AttackResult:
    """What one attack run at one budget produced.

    Attributes:
        x_adv: the adversarial inputs, same shape, dtype and device as x, inside the box.
        eta: x_adv - x.
        norms: norm_p(eta) per input, in the attack's p, shape (N,).
        success: (N,) bool from a fresh evaluation of the model on x_adv (None for regression).
        eps: the budget per input (N,), or None for an unbounded minimum-norm run.
        label: (N,) the class k each input was attacked from (true label or prediction).
        pred: (N,) the model's class on x_adv (None for regression).
        steps: (N,) linearisations each input used.
        margin: (N,) the margin of eq. 2 at x_adv, on the model's outputs: f_k - max_{l != k} f_l
            (targeted: max_{l != t} f_l - f_t); negative where the attack succeeded (None for regression).
        p: the attack's norm.
        info: per-input figures of the solver, e.g. ``sigma`` (N,), the top singular value of the
            Jacobian found by quadratic-l2 (the operator norm norm(J)_{2->2}).
    """

    x_adv: Tensor
    eta: Tensor
    norms: Tensor
    success: Tensor | None
    eps: Tensor | None
    label: Tensor | None
    pred: Tensor | None
    steps: Tensor
    p: float
    margin: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Share of inputs with ``success`` (all inputs, correctly classified or not)."""
        if self.success is None:
            raise TypeError("a regression attack has no success flag")
        return float(self.success.float().mean())

    def save(self, path: str) -> None:
        """Save every field as a NumPy ``.npz`` archive (plain arrays, readable without pertattack)."""
        arrays = {
            k: v.detach().cpu().numpy()
            for k, v in vars(self).items()
            if isinstance(v, Tensor)
        }
        arrays.update({f"info_{k}": v.detach().cpu().numpy() for k, v in self.info.items()})
        arrays["p"] = np.asarray(self.p)
        np.savez_compressed(path, **arrays)


def concat_results(parts: list[AttackResult], p: float) -> AttackResult:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Tensor | None:
        vals = [getattr(r, name) for r in parts]
        return None if vals[0] is None else torch.cat(vals)

    info = {k: torch.cat([r.info[k] for r in parts]) for k in parts[0].info}
    fields = ("x_adv", "eta", "norms", "success", "eps", "label", "pred", "steps", "margin")
    return AttackResult(**{k: cat(k) for k in fields}, p=p, info=info)
