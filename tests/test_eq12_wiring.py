"""The quadratic presets with a ground truth y != f(x): quadratic-l2 solves eq. 12, the others refuse y."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPE, gen

from pertattack import get_attack


class Linear(torch.nn.Module):
    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T


def test_quadratic_l2_with_truth_maximises_the_error_to_the_truth():
    a = torch.randn(5, 8, generator=gen(0), dtype=DTYPE)
    model = Linear(a)
    x = torch.full((3, 8), 0.5, dtype=DTYPE)
    y = model(x) + torch.randn(3, 5, generator=gen(1), dtype=DTYPE)  # a truth away from f(x)
    eps = 0.2
    r = get_attack("quadratic-l2", eps=eps, seed=0)(model, x, y)
    err = (model(r.x_adv) - y).pow(2).sum(1)
    # brute force over many directions on the sphere: none does better (exact for a linear map)
    d = torch.randn(20000, 8, generator=gen(2), dtype=DTYPE)
    d = eps * d / d.norm(dim=1, keepdim=True)
    for i in range(3):
        best = ((model(x[i] + d) - y[i]).pow(2).sum(1)).max()
        assert err[i] >= best - 1e-9
    # and it differs from the eq. 13 answer that ignores y
    r13 = get_attack("quadratic-l2", eps=eps, seed=0)(model, x)
    assert (model(r13.x_adv) - y).pow(2).sum(1).le(err + 1e-12).all()


@pytest.mark.parametrize("name", ["quadratic-linf", "quadratic-l1", "quadratic-pixel"])
def test_other_quadratic_presets_refuse_a_truth(name):
    model = Linear(torch.randn(5, 8, generator=gen(3), dtype=DTYPE))
    x = torch.full((2, 8), 0.5, dtype=DTYPE)
    y = model(x) + 1.0
    with pytest.raises(ValueError, match="eq. 12"):
        get_attack(name, eps=0.1)(model, x, y)
