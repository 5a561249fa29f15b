"""Target choice: which classes a targeted search (APGD-T) tries first, and in what order.

A targeted attack steers towards one class t at a time; success stays untargeted (the class k left). With
K classes there are K - 1 candidates, and most of the cost of APGD-T is spent on targets that never fool the
model. Two orders:

* :class:`ByLogits`: t by decreasing score f_t(x) (rank 2 = the runner-up), as APGD-T does.
* :class:`ByDistance`: t by increasing linearised distance to the boundary between k and t, the ratio of
  Prop. 1 / eq. 9 (DeepFool's step, rho1):

      d_t = (f_k(x) - f_t(x)) / norm_q(grad f_k(x) - grad f_t(x)),

  q the dual exponent of the attack's p. That is the size of the smallest perturbation that crosses the
  k/t boundary of the model linearised at x; the order MALT (Melamed, Yehudai and Shamir 2024) uses to
  attack only the few most promising targets. It costs one backward pass per candidate class.

Both return, per input, the other classes in the order to try, shape (N, c).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import integer
from .constraints import LpBall

__all__ = ["TargetOrder", "ByLogits", "ByDistance", "linearised_distances", "target_order_by_name"]


class TargetOrder:
    """Orders the other classes of each input for a targeted search. ``needs_grad``: whether the order
    costs gradients (the caller then runs it with autograd enabled)."""

    name = "target-order"
    needs_grad = False

    def order(self, forward: Callable[[Tensor], Tensor], x: Tensor, label: Tensor, ball: LpBall) -> Tensor:
        """(N, K - 1) class indices, the most promising target first (never ``label``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def __repr__(self) -> str:
        return self.name


def _others_by_score(out: Tensor, label: Tensor) -> Tensor:
    """The classes other than ``label`` by decreasing score, (N, K - 1)."""
    masked = out.detach().masked_fill(F.one_hot(label, out.shape[1]).bool(), -math.inf)
    return masked.argsort(dim=1, descending=True)[:, : out.shape[1] - 1]


@dataclass(frozen=True, repr=False)
class ByLogits(TargetOrder):
    """Targets by decreasing score f_t(x): APGD-T's rank order (rank R = position R - 1 here)."""

    name = "logits"

    def order(self, forward: Callable[[Tensor], Tensor], x: Tensor, label: Tensor, ball: LpBall) -> Tensor:
        with torch.no_grad():
            return _others_by_score(forward(x), label)


def linearised_distances(forward: Callable[[Tensor], Tensor], x: Tensor, label: Tensor, ball: LpBall,
                         classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """eq. 9's distance from x to the boundary between its class k and each class t of ``classes``.

    Args:
        forward: the model, (N, ...) -> scores (N, K).
        x: inputs (N, ...).
        label: (N,) the class k of each input.
        ball: the attack's lp ball (the ratio uses its dual norm).
        classes: (N, c) classes to measure (default: every other class, by decreasing score).

    Returns:
        ``(distances, classes)``, both (N, c): d_t = (f_k - f_t) / norm_q(grad f_k - grad f_t), +inf where that
        gradient is zero (a class the linearisation never reaches). One backward pass per column of ``classes``,
        batched over the inputs; no parameter gets a ``.grad``.
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward(xg)
        if classes is None:
            classes = _others_by_score(out, label)
        diff = out.gather(1, label[:, None]) - out.gather(1, classes)  # (N, c): f_k - f_t
        c = classes.shape[1]
        dist = torch.empty(diff.shape, dtype=x.dtype, device=x.device)
        for j in range(c):
            (g,) = torch.autograd.grad(diff[:, j].sum(), xg, retain_graph=j < c - 1)
            dn = ball.dual_norm(g)
            dist[:, j] = torch.where(dn > 0, diff[:, j].detach() / dn.clamp_min(1e-30), math.inf)
    return dist, classes


@dataclass(frozen=True, repr=False)
class ByDistance(TargetOrder):
    """Targets by increasing linearised distance to their boundary (eq. 9, MALT's order). ``candidates``:
    how many of the highest-scoring other classes are measured (None: all K - 1); the rest follow in score
    order. NaN distances (a model NaN at x) sort last."""

    candidates: int | None = None
    name = "distance"
    needs_grad = True

    def __post_init__(self) -> None:
        if self.candidates is not None:
            object.__setattr__(self, "candidates", integer("candidates", self.candidates, lo=1))

    def order(self, forward: Callable[[Tensor], Tensor], x: Tensor, label: Tensor, ball: LpBall) -> Tensor:
        with torch.no_grad():
            others = _others_by_score(forward(x), label)
        c = others.shape[1] if self.candidates is None else min(self.candidates, others.shape[1])
        dist, _ = linearised_distances(forward, x, label, ball, others[:, :c])
        dist = torch.nan_to_num(dist, nan=math.inf)
        # stable: equal distances keep the score order
        idx = dist.argsort(dim=1, stable=True)
        return torch.cat([others[:, :c].gather(1, idx), others[:, c:]], dim=1)


TARGET_ORDERS = {"logits": ByLogits, "distance": ByDistance}


def target_order_by_name(name: str | TargetOrder) -> TargetOrder:
    """``"logits"`` or ``"distance"`` (or a :class:`TargetOrder` instance, returned as is)."""
    if isinstance(name, TargetOrder):
        return name
    from ._validate import from_table

    return from_table(TARGET_ORDERS, name, "target order", " (or pass a TargetOrder instance)")
