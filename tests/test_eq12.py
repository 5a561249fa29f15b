"""Eq. 12 (a ground truth y != f(x)) with p = 2: quadratic_l2_truth on linear maps against explicit solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import gen

from pertattack.quadratic import quadratic_l2_truth

DT = torch.float64


def _lin(a: torch.Tensor, c: torch.Tensor):
    return lambda z: z.reshape(z.shape[0], -1) @ a.T + c


def _obj(a: torch.Tensor, r: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    return (r + eta.reshape(eta.shape[0], -1) @ a.T).square().sum(dim=1)


def test_two_dimensional_against_a_grid_over_the_circle():
    a = torch.randn(3, 2, dtype=DT, generator=gen(1))
    c = torch.randn(3, dtype=DT, generator=gen(2))
    x = torch.rand(4, 2, dtype=DT, generator=gen(3))
    y = torch.randn(4, 3, dtype=DT, generator=gen(4))
    eps = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=DT)
    eta = quadratic_l2_truth(_lin(a, c), x, y, eps)
    torch.testing.assert_close(eta.norm(dim=1), eps)
    r = x @ a.T + c - y
    ang = torch.linspace(0, 2 * math.pi, 200001, dtype=DT)[:-1]
    circle = torch.stack([ang.cos(), ang.sin()], dim=1)  # (G, 2)
    for i in range(4):
        grid = (r[i] + eps[i] * circle @ a.T).square().sum(dim=1).max()
        ours = _obj(a, r[i : i + 1], eta[i : i + 1])[0]
        assert float(ours) >= float(grid) * (1 - 1e-9)
        assert float(ours) == pytest.approx(float(grid), rel=1e-6)


def test_kkt_of_the_global_maximiser_in_eight_dimensions():
    """max of a convex quadratic on the sphere: (lam I - A^T A) eta = A^T r with lam >= lam_max(A^T A)."""
    a = torch.randn(5, 8, dtype=DT, generator=gen(5))
    x = torch.rand(3, 8, dtype=DT, generator=gen(6))
    y = torch.randn(3, 5, dtype=DT, generator=gen(7))
    eps = 0.7
    eta = quadratic_l2_truth(_lin(a, torch.zeros(5, dtype=DT)), x, y, eps)
    ata = a.T @ a
    lam_max = float(torch.linalg.eigvalsh(ata)[-1])
    r = x @ a.T - y
    for i in range(3):
        b = a.T @ r[i]
        lam = float(eta[i] @ (ata @ eta[i] + b)) / eps**2
        assert lam >= lam_max * (1 - 1e-9)
        torch.testing.assert_close(lam * eta[i], ata @ eta[i] + b, rtol=0, atol=1e-8 * lam)
    # and it beats the eq. 13 answer +-eps v_max, which ignores y
    v = torch.linalg.eigh(ata)[1][:, -1]
    for s in (1.0, -1.0):
        assert bool((_obj(a, r, eta) >= _obj(a, r, (s * eps * v).expand(3, 8)) - 1e-12).all())


def test_reduces_to_eq13_when_y_equals_f_x_and_hard_case():
    a = torch.from_numpy(np.diag([3.0, 2.0, 1.0])).to(DT)
    f = _lin(a, torch.zeros(3, dtype=DT))
    x = torch.rand(2, 3, dtype=DT, generator=gen(8))
    eta = quadratic_l2_truth(f, x, f(x), 0.5, generator=gen(9))  # r = 0: eq. 13, eta = +-eps e_1
    torch.testing.assert_close(eta.abs(), torch.tensor([[0.5, 0.0, 0.0]] * 2, dtype=DT), rtol=0, atol=1e-7)
    # hard case: r has no component along the top singular direction, eps large
    y = f(x) - torch.tensor([[0.0, 0.1, 0.0]], dtype=DT)  # r = (0, 0.1, 0): b = A^T r = (0, 0.2, 0)
    eta = quadratic_l2_truth(f, x, y, 2.0)
    r = f(x) - y
    # the optimum: lam = 9, eta_2 = 0.2 / (9 - 4) = 0.04, the rest along e_1
    assert float(eta[0, 1]) == pytest.approx(0.04, abs=1e-7)
    assert abs(float(eta[0, 0])) == pytest.approx(math.sqrt(4 - 0.04**2), abs=1e-6)
    best = max(float(_obj(a, r[:1], torch.tensor([[s * math.sqrt(4 - 0.04**2), 0.04, 0.0]], dtype=DT))[0])
               for s in (1, -1))
    assert float(_obj(a, r[:1], eta[:1])[0]) == pytest.approx(best, rel=1e-9)


def test_bad_arguments():
    a = torch.eye(3, dtype=DT)
    x = torch.rand(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="shaped like f"):
        quadratic_l2_truth(_lin(a, torch.zeros(3, dtype=DT)), x, torch.zeros(2, 4, dtype=DT), 0.1)
