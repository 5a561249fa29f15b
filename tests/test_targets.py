"""Target order: eq. 9's linearised distance is exact on affine models, the orders are permutations of the
other classes, and nothing leaks into the model (no .grad, mode kept)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DTYPE, MLP, MLP_SHAPE, Affine, rand_x

from pertattack.constraints import LpBall
from pertattack.targets import ByDistance, ByLogits, linearised_distances, target_order_by_name


def _affine_distances(model: Affine, x: torch.Tensor, label: torch.Tensor, q: float) -> np.ndarray:
    """(f_k - f_t) / norm_q(w_k - w_t) for every t, by hand in NumPy (inf at t = k)."""
    W = model.lin.weight.detach().numpy()
    f = model(x).detach().numpy()
    out = np.full(f.shape, np.inf)
    for i in range(len(x)):
        k = int(label[i])
        for t in range(f.shape[1]):
            if t != k:
                out[i, t] = (f[i, k] - f[i, t]) / np.linalg.norm(W[k] - W[t], ord=q)
    return out


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_distances_are_exact_on_an_affine_model(p):
    model = Affine(12, 6, seed=3)
    x = rand_x(7, (12,), seed=4)
    label = model(x).argmax(1)
    dist, classes = linearised_distances(model, x, label, LpBall(p))
    want = _affine_distances(model, x, label, LpBall(p).q)
    got = np.take_along_axis(want, classes.numpy(), axis=1)
    np.testing.assert_allclose(dist.numpy(), got, rtol=1e-10)
    assert (dist > 0).all()
    if p == 2.0:  # the distance is the true one: a step of that length along w_t - w_k lands on the k/t boundary
        W = model.lin.weight.detach()
        for i in range(len(x)):
            k, t = int(label[i]), int(classes[i, 0])
            u = (W[t] - W[k]) / torch.linalg.vector_norm(W[t] - W[k])
            f = model((x[i] + dist[i, 0] * u)[None])[0].detach()
            assert abs(float(f[k] - f[t])) < 1e-10


def test_distance_order_is_sorted_and_a_permutation():
    model = MLP().eval()
    x = rand_x(9, MLP_SHAPE, seed=5)
    label = model(x).argmax(1)
    ball = LpBall(math.inf)
    order = ByDistance().order(model, x, label, ball)
    k = model(x).shape[1]
    assert order.shape == (9, k - 1)
    for i in range(9):
        assert sorted(order[i].tolist() + [int(label[i])]) == list(range(k))
    dist, classes = linearised_distances(model, x, label, ball, order)
    assert (dist[:, 1:] >= dist[:, :-1]).all()


def test_logit_order_is_by_decreasing_score():
    model = MLP().eval()
    x = rand_x(6, MLP_SHAPE, seed=6)
    label = torch.zeros(6, dtype=torch.long)  # not always the top class: the label is excluded anyway
    order = ByLogits().order(model, x, label, LpBall(2.0))
    out = model(x).detach()
    for i in range(6):
        assert 0 not in order[i].tolist()
        s = out[i, order[i]]
        assert (s[:-1] >= s[1:]).all()


def test_candidates_limit_the_measured_classes():
    model = Affine(12, 8, seed=7)
    x = rand_x(5, (12,), seed=8)
    label = model(x).argmax(1)
    ball = LpBall(math.inf)
    order = ByDistance(candidates=3).order(model, x, label, ball)
    by_score = ByLogits().order(model, x, label, ball)
    # the first 3 are the top-3 by score, re-ordered by distance; the rest keep the score order
    for i in range(5):
        assert set(order[i, :3].tolist()) == set(by_score[i, :3].tolist())
    assert torch.equal(order[:, 3:], by_score[:, 3:])


def test_no_grad_on_parameters_and_mode_kept():
    model = MLP().train()
    x = rand_x(4, MLP_SHAPE, seed=9)
    ByDistance().order(model, x, model(x).argmax(1), LpBall(2.0))
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_order_by_name():
    assert isinstance(target_order_by_name("distance"), ByDistance)
    assert isinstance(target_order_by_name("logits"), ByLogits)
    with pytest.raises(ValueError, match="target order"):
        target_order_by_name("closest")
    with pytest.raises(ValueError):
        ByDistance(candidates=0)
    assert DTYPE == torch.float64
