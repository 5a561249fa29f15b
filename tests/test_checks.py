"""Reliability checks: each flag fires on a model built to have the problem, and none on an ordinary one."""

from __future__ import annotations

import math

import torch
from conftest import MLP, MLP_SHAPE, rand_x
from torch import Tensor, nn

from pertattack.checks import check_model, check_results


class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x + 0.01 * torch.randn_like(x))


class Quantised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net, self.scale = MLP(), scale

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.scale


def _names(model: nn.Module, n: int = 32) -> set[str]:
    x = rand_x(n, MLP_SHAPE, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    return {f.name for f in check_model(model.eval(), x, y)}


def test_an_ordinary_model_raises_no_flag():
    assert _names(MLP()) == set()
    assert _names(Saturated(1.0)) == set()


def test_each_flag_fires_on_its_problem():
    assert _names(Softmaxed()) == {"probabilities"}
    assert "randomised" in _names(Noisy())
    assert _names(Saturated(1e6)) == {"zero-gradients"}
    assert _names(Quantised()) == {"masked-gradients"}


def test_zero_gradient_flag_counts_the_inputs():
    model = Saturated(1e6).eval()
    x = rand_x(20, MLP_SHAPE, seed=4)
    y = model(x).argmax(1)
    (flag,) = check_model(model, x, y)
    assert "of 20 correctly classified" in flag.message


def test_checks_leave_no_grad_and_keep_the_inputs():
    model = MLP().eval()
    x = rand_x(8, MLP_SHAPE, seed=5)
    x0 = x.clone()
    check_model(model, x, model(x).argmax(1))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0) and not x.requires_grad


def test_results_checks():
    r = [(0.1, torch.tensor([True, False, True])), (0.2, torch.tensor([True, True, False]))]
    assert [f.name for f in check_results(r, math.inf)] == ["not-monotone"]
    ok = [(0.1, torch.tensor([True, True])), (0.2, torch.tensor([True, False])), (1.0, torch.tensor([False, False]))]
    assert check_results(ok, math.inf, box_width=1.0) == []
    full = [(1.0, torch.tensor([True, False]))]
    assert [f.name for f in check_results(full, math.inf, box_width=1.0)] == ["robust-at-full-box"]
    assert check_results(full, 2.0, box_width=1.0) == []  # l2 at eps = 1 does not cover the box
