"""Eq. 12 (a ground truth y) inside the box: quadratic-l2 with y spends its budget inside [lo, hi] instead of
losing the part of the sphere's maximiser that points out of the box to clipping (issue 18)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import gen
from scipy.optimize import minimize

from pertattack import get_attack
from pertattack.constraints import Box
from pertattack.quadratic import _ball_box_lmo, quadratic_l2_truth

DT = torch.float64


class Linear(torch.nn.Module):
    def __init__(self, a: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.a, self.c = a, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.a.T + self.c


def _err(model: Linear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(z) - y).square().sum(dim=1)


def _old_clipped(model: Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """What the y path gave before: the sphere's maximiser, then clipped to [0, 1] by the attack."""
    return (x + quadratic_l2_truth(model, x, y, eps)).clamp(0, 1)


def test_lmo_on_ball_and_box_against_scipy():
    """The linear step: argmax c^T u on norm_2(u) <= eps, lower <= u <= upper, exact (against SLSQP)."""
    n, m = 6, 7
    c = torch.randn(n, m, dtype=DT, generator=gen(11))
    c[0, :3] = 0.0  # coordinates the linear term ignores
    x = torch.rand(n, m, dtype=DT, generator=gen(12))
    x[:, :2] = 0.0  # on the lower face
    x[:, 2] = 1.0  # on the upper face
    lower, upper = -x, 1 - x
    eps = torch.tensor([0.05, 0.3, 0.8, 1.5, 2.5, 10.0], dtype=DT)  # the last one: the box's vertex is shorter
    u = _ball_box_lmo(c, lower, upper, eps)
    assert bool((u >= lower - 1e-12).all() and (u <= upper + 1e-12).all())
    assert bool((u.norm(dim=1) <= eps * (1 + 1e-9)).all())
    for i in range(n):
        ci, lo, hi, e = (t[i].numpy() for t in (c, lower, upper, eps))
        best = -math.inf
        for start in range(5):
            z0 = np.clip(np.random.default_rng(start).normal(size=m) * 0.01, lo, hi)
            r = minimize(lambda z, ci=ci: -ci @ z, z0, jac=lambda z, ci=ci: -ci, method="SLSQP",
                         bounds=list(zip(lo, hi, strict=True)),
                         constraints=[{"type": "ineq", "fun": lambda z, e=e: e**2 - z @ z,
                                       "jac": lambda z: -2 * z}], options={"ftol": 1e-14, "maxiter": 500})
            best = max(best, float(ci @ np.clip(r.x, lo, hi)))
        assert float(c[i] @ u[i]) >= best - 1e-7 * (1 + abs(best))
    vertex = torch.where(c[-1] > 0, upper[-1], torch.where(c[-1] < 0, lower[-1], torch.zeros_like(c[-1])))
    torch.testing.assert_close(u[-1], vertex)


def _two_dimensional() -> tuple[Linear, torch.Tensor, torch.Tensor, float]:
    """A 2-D linear model whose error to y grows fastest out of the box: x on the lower face of coordinate 0."""
    a = torch.tensor([[2.0, 0.5], [0.3, 1.0], [-1.0, 0.2]], dtype=DT)
    model = Linear(a, torch.zeros(3, dtype=DT))
    x = torch.tensor([[0.0, 0.4], [0.05, 0.5], [0.0, 0.9]], dtype=DT)
    # y chosen so that the sphere's maximiser points to -e_0 (out of the box) for every input
    y = model(x) + torch.tensor([[2.0, 0.3, -1.0]], dtype=DT)
    return model, x, y, 0.3


def test_truth_path_uses_the_whole_budget_inside_the_box_and_beats_clipping_2d():
    model, x, y, eps = _two_dimensional()
    res = get_attack("quadratic-l2", eps=eps, seed=0)(model, x, y)
    eta = res.x_adv - x
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    # the whole budget inside the box (the box leaves room for it: x is far from the other faces)
    torch.testing.assert_close(eta.norm(dim=1), torch.full((3,), eps, dtype=DT), rtol=1e-9, atol=1e-12)
    old = _old_clipped(model, x, y, eps)
    assert bool(((old - x).norm(dim=1) < 0.9 * eps).all())  # the old answer lost budget to the face
    new_err, old_err = _err(model, res.x_adv, y), _err(model, old, y)
    assert bool((new_err >= old_err - 1e-12).all())
    assert bool((new_err > old_err * (1 + 1e-3)).any())
    # brute force: the maximum of a convex function on disc-and-box lies on its boundary; grid it
    ang = torch.linspace(0, 2 * math.pi, 100001, dtype=DT)[:-1]
    circle = eps * torch.stack([ang.cos(), ang.sin()], dim=1)
    for i in range(3):
        pts = (x[i] + circle).clamp(0, 1)  # the circle inside the box, and the box's edges inside the disc
        best = _err(model, pts, y[i].expand(pts.shape[0], -1)).max()
        assert float(new_err[i]) == pytest.approx(float(best), rel=1e-6)


def test_truth_path_in_the_box_on_a_background_like_mnist():
    """30 coordinates, two thirds on the lower face (a black background): the answer stays in the box, spends
    the whole budget, and beats both the clipped sphere maximiser and random feasible points."""
    m, k, n, eps = 30, 12, 4, 1.0
    a = torch.randn(k, m, dtype=DT, generator=gen(21))
    model = Linear(a, torch.zeros(k, dtype=DT))
    x = torch.rand(n, m, dtype=DT, generator=gen(22)) * 0.6 + 0.2
    x[:, :20] = 0.0
    y = model(x) + 0.5 * torch.randn(n, k, dtype=DT, generator=gen(23))
    eta = quadratic_l2_truth(model, x, y, eps, box=Box(0.0, 1.0))
    assert bool(((x + eta >= 0) & (x + eta <= 1)).all())
    torch.testing.assert_close(eta.norm(dim=1), torch.full((n,), eps, dtype=DT), rtol=1e-9, atol=1e-12)
    new_err = _err(model, x + eta, y)
    old = _old_clipped(model, x, y, eps)
    assert bool((new_err >= _err(model, old, y) - 1e-12).all())
    # random feasible points of norm eps (feasible directions scaled to the sphere, clipped): none does better
    d = torch.randn(20000, m, dtype=DT, generator=gen(24))
    for i in range(n):
        di = torch.where(x[i] <= 0, d.abs(), d)
        pts = (x[i] + eps * di / di.norm(dim=1, keepdim=True)).clamp(0, 1)
        assert float(new_err[i]) >= float(_err(model, pts, y[i].expand(pts.shape[0], -1)).max())


def test_truth_path_without_clipping_is_unchanged():
    """Inputs whose sphere maximiser stays in the box get exactly the answer without a box."""
    model, _, _, _ = _two_dimensional()
    x = torch.full((2, 2), 0.5, dtype=DT)
    y = model(x) + torch.tensor([[1.0, 0.2, -0.5]], dtype=DT)
    free = quadratic_l2_truth(model, x, y, 0.1, generator=gen(0))
    boxed = quadratic_l2_truth(model, x, y, 0.1, generator=gen(0), box=Box(0.0, 1.0))
    assert torch.equal(free, boxed)
