"""Constraint sets: dual exponents, norms, projections (against scipy), sampling, the box, partitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DTYPE, gen
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from pertattack.constraints import Box, LpBall, Partition, as_batch_eps, dual_exponent, lp_norm
from pertattack.noise import Noise

INF = math.inf
PS = [1.0, 1.5, 2.0, 3.0, INF]
SEEDS = st.integers(0, 2**31 - 1)


def np_norm(v: np.ndarray, p: float) -> float:
    v = np.abs(np.ravel(v))
    return float(v.max()) if math.isinf(p) else float((v**p).sum() ** (1.0 / p))


# ---------------------------------------------------------------------------- dual exponent, norms


@pytest.mark.parametrize(("p", "q"), [(1, INF), (1.5, 3.0), (2, 2.0), (3, 1.5), (INF, 1.0), (4, 4 / 3)])
def test_dual_exponent(p, q):
    assert dual_exponent(p) == pytest.approx(q)
    assert LpBall(p).q == pytest.approx(q)
    if not math.isinf(p) and p > 1:
        assert 1 / p + 1 / dual_exponent(p) == pytest.approx(1.0)


@pytest.mark.parametrize("p", PS)
def test_lp_norm_matches_numpy(p):
    v = torch.randn(4, 3, 5, generator=gen(0), dtype=DTYPE)
    got = lp_norm(v, p)
    want = [np_norm(v[i].numpy(), p) for i in range(4)]
    assert got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert torch.equal(LpBall(p).norm(v), got)
    assert torch.allclose(LpBall(p).dual_norm(v), lp_norm(v, dual_exponent(p)))


@pytest.mark.parametrize("p", [0.5, 0, -1, float("nan")])
def test_lpball_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be >= 1"):
        LpBall(p)


def test_lpball_accepts_string_inf():
    assert LpBall("inf").p == INF


@pytest.mark.parametrize("p", PS)
def test_steepest_is_the_unit_holder_maximiser(p):
    g = torch.randn(5, 7, generator=gen(1), dtype=DTYPE)
    u = LpBall(p).steepest(g)
    np.testing.assert_allclose(lp_norm(u, p).numpy(), 1.0, rtol=1e-10)
    gq = np.array([np_norm(g[i].numpy(), dual_exponent(p)) for i in range(5)])
    np.testing.assert_allclose((u * g).sum(dim=1).numpy(), gq, rtol=1e-10)


@pytest.mark.parametrize("p", PS)
def test_steepest_of_zero_is_zero(p):
    g = torch.zeros(2, 4, dtype=DTYPE)
    u = LpBall(p).steepest(g)
    assert torch.equal(u, torch.zeros_like(g))


def test_steepest_large_q_does_not_overflow():
    # p close to 1: q huge; abs(g)^(q-1) underflows without the rescaling by max abs(g)
    g = torch.tensor([[1e-3, -2e-3, 5e-4]], dtype=DTYPE)
    u = LpBall(1.01).steepest(g)
    assert torch.isfinite(u).all()
    assert float(lp_norm(u, 1.01)) == pytest.approx(1.0, rel=1e-8)
    assert int(u.abs().argmax()) == 1 and float(u[0, 1]) < 0


# ---------------------------------------------------------------------------- projection


def scipy_projection(v: np.ndarray, eps: float, p: float) -> np.ndarray:
    """argmin ||z - v||_2 s.t. ||z||_p <= eps, by SLSQP on a smooth reformulation."""
    m = v.size
    if math.isinf(p):
        res = minimize(lambda z: ((z - v) ** 2).sum(), np.zeros(m), jac=lambda z: 2 * (z - v),
                       bounds=[(-eps, eps)] * m, method="SLSQP", options=dict(ftol=1e-14, maxiter=500))
        return res.x
    if p == 1:  # variables (z, t): -t <= z <= t, sum t <= eps
        def f(zt):
            return ((zt[:m] - v) ** 2).sum()

        def jac(zt):
            return np.concatenate([2 * (zt[:m] - v), np.zeros(m)])

        cons = [
            dict(type="ineq", fun=lambda zt: zt[m:] - zt[:m], jac=lambda zt: np.hstack([-np.eye(m), np.eye(m)])),
            dict(type="ineq", fun=lambda zt: zt[m:] + zt[:m], jac=lambda zt: np.hstack([np.eye(m), np.eye(m)])),
            dict(type="ineq", fun=lambda zt: eps - zt[m:].sum(),
                 jac=lambda zt: np.concatenate([np.zeros(m), -np.ones(m)])[None]),
        ]
        res = minimize(f, np.zeros(2 * m), jac=jac, constraints=cons, method="SLSQP",
                       options=dict(ftol=1e-14, maxiter=500))
        return res.x[:m]
    cons = [dict(type="ineq", fun=lambda z: eps**p - (np.abs(z) ** p).sum())]
    res = minimize(lambda z: ((z - v) ** 2).sum(), np.zeros(m), jac=lambda z: 2 * (z - v), constraints=cons,
                   method="SLSQP", options=dict(ftol=1e-14, maxiter=500))
    return res.x


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, eps=st.floats(0.05, 2.0))
def test_project_is_exact_euclidean_projection(p, seed, eps):
    v = torch.randn(3, 6, generator=gen(seed), dtype=DTYPE)
    e = torch.full((3,), eps, dtype=DTYPE)
    z = LpBall(p).project(v, e)
    for i in range(3):
        vi = v[i].numpy()
        zs = scipy_projection(vi, eps, p)
        zi = z[i].numpy()
        assert np_norm(zi, p) <= eps * (1 + 1e-9)
        # as close to v as the scipy optimum (never farther), and the same point (unique projection)
        assert np.linalg.norm(zi - vi) <= np.linalg.norm(zs - vi) + 1e-6
        np.testing.assert_allclose(zi, zs, atol=1e-4)
        if np_norm(vi, p) <= eps:
            np.testing.assert_array_equal(zi, vi)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_project_per_input_radius_and_zero_radius(p):
    v = torch.randn(4, 5, generator=gen(3), dtype=DTYPE)
    eps = torch.tensor([0.0, 0.1, 0.5, 100.0], dtype=DTYPE)
    z = LpBall(p).project(v, eps)
    assert torch.equal(z[0], torch.zeros(5, dtype=DTYPE))
    assert torch.equal(z[3], v[3])  # inside: unchanged
    assert (lp_norm(z, p) <= eps * (1 + 1e-12)).all()
    # shrinking towards the ball never flips signs
    assert ((z * v) >= 0).all()


@pytest.mark.parametrize("p", [1.5, 3.0, 1.2, 7.0])
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, eps=st.floats(0.01, 3.0))
def test_project_other_p_lands_in_ball(p, seed, eps):
    v = torch.randn(3, 2, 4, generator=gen(seed), dtype=DTYPE)
    e = torch.full((3,), eps, dtype=DTYPE)
    z = LpBall(p).project(v, e)
    norms = lp_norm(v, p)
    assert (lp_norm(z, p) <= eps * (1 + 1e-12)).all()
    inside = norms <= eps
    assert torch.equal(z[inside], v[inside])
    # outside: on the sphere
    np.testing.assert_allclose(lp_norm(z, p)[~inside].numpy(), eps, rtol=1e-10)


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("p", PS + [1.2])
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_sample_lies_in_the_ball(p, seed):
    like = torch.zeros(5, 2, 3, dtype=DTYPE)
    radius = torch.tensor([0.0, 0.01, 0.3, 1.0, 5.0], dtype=DTYPE)
    s = LpBall(p).sample(like, radius, Noise.create(seed, 5, 'cpu'))
    assert s.shape == like.shape and s.dtype == like.dtype
    assert (lp_norm(s, p) <= radius * (1 + 1e-12)).all()
    assert torch.equal(s[0], torch.zeros(2, 3, dtype=DTYPE))
    assert (lp_norm(s[1:], p) > 0).all()


@pytest.mark.parametrize("p", PS)
def test_sample_is_seeded_and_spread(p):
    like = torch.zeros(4000, 3, dtype=DTYPE)
    r = torch.ones(4000, dtype=DTYPE)
    a = LpBall(p).sample(like, r, Noise.create(5, 4000, 'cpu'))
    b = LpBall(p).sample(like, r, Noise.create(5, 4000, 'cpu'))
    assert torch.equal(a, b)
    # the radius of a uniform point of an M-dim ball is U^(1/M): mean M / (M + 1) = 0.75 for M = 3
    assert float(lp_norm(a, p).mean()) == pytest.approx(0.75, abs=0.03)
    # symmetric: the mean point is ~0
    assert a.mean(dim=0).abs().max() < 0.05


def test_sample_uniform_in_cube_for_inf():
    like = torch.zeros(20000, 2, dtype=DTYPE)
    s = LpBall(INF).sample(like, torch.full((20000,), 2.0, dtype=DTYPE), Noise.create(0, 20000, 'cpu'))
    # uniform on [-2, 2]: P(|s_i| <= 1) = 1/2
    assert float((s.abs() <= 1).double().mean()) == pytest.approx(0.5, abs=0.02)


# ---------------------------------------------------------------------------- budgets, box


def test_as_batch_eps():
    like = torch.zeros(3, 2, dtype=DTYPE)
    assert torch.equal(as_batch_eps(0.5, 3, like), torch.full((3,), 0.5, dtype=DTYPE))
    t = torch.tensor([0.1, 0.2, 0.3])
    out = as_batch_eps(t, 3, like)
    assert out.dtype == DTYPE and torch.allclose(out, t.double())
    with pytest.raises(ValueError, match="eps must be a scalar or have shape"):
        as_batch_eps(torch.ones(2), 3, like)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        as_batch_eps(-0.1, 3, like)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        as_batch_eps(torch.tensor([0.1, float("nan"), 0.2]), 3, like)


def test_box_clip_and_check():
    box = Box(-1.0, 2.0)
    x = torch.tensor([[-3.0, 0.5, 5.0]], dtype=DTYPE)
    assert torch.equal(box.clip(x), torch.tensor([[-1.0, 0.5, 2.0]], dtype=DTYPE))
    box.check(box.clip(x))
    with pytest.raises(ValueError, match="x lies outside the box"):
        box.check(x)
    with pytest.raises(ValueError, match="inp contains NaN"):
        box.check(torch.tensor([[0.0, float("nan")]]), "inp")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        box.check(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="lo must be <= hi"):
        Box(1.0, 0.0).clip(x)
    assert Box(-1.0, 2.0).peak == 3.0


def test_box_free_directions():
    box = Box(0.0, 1.0)
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 0.5]], dtype=DTYPE)
    g = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]], dtype=DTYPE)
    # a descent step -g leaves the box at lo where g > 0 and at hi where g < 0
    want = torch.tensor([[0.0, -1.0, 1.0, 0.0, 1.0, -1.0]], dtype=DTYPE)
    assert torch.equal(box.free_directions(g, x), want)


def test_box_per_channel():
    lo = torch.tensor([0.0, -1.0]).reshape(2, 1, 1)
    hi = torch.tensor([1.0, 0.0]).reshape(2, 1, 1)
    box = Box(lo, hi)
    x = torch.full((3, 2, 2, 2), 0.5, dtype=DTYPE)
    c = box.clip(x)
    assert (c[:, 0] == 0.5).all() and (c[:, 1] == 0.0).all()
    assert box.peak == 2.0


# ---------------------------------------------------------------------------- partitions


def test_partition_pixel_for_images():
    n, c, h, w = 2, 3, 4, 5
    like = torch.zeros(n, c, h, w)
    part = Partition("pixel")
    idx = part.index(like)
    assert idx.shape == (c * h * w,)
    assert part.size(like) == h * w
    # coordinate (ci, hi, wi) of the flattened input belongs to pixel hi * W + wi, for every channel
    want = torch.tensor([hi * w + wi for _ in range(c) for hi in range(h) for wi in range(w)])
    assert torch.equal(idx, want)
    v = torch.randn(n, c, h, w, generator=gen(0), dtype=DTYPE)
    sums = part.subset_sums(v)
    assert sums.shape == (n, h * w)
    assert torch.allclose(sums, v.sum(dim=1).reshape(n, h * w))
    chosen = torch.zeros(n, h * w, dtype=torch.bool)
    chosen[0, 7] = True  # pixel (1, 2)
    chosen[1, 0] = chosen[1, 19] = True
    mask = part.mask(chosen, v)
    assert mask.shape == v.shape
    assert mask[0, :, 1, 2].all() and int(mask[0].sum()) == c
    assert mask[1, :, 0, 0].all() and mask[1, :, 3, 4].all() and int(mask[1].sum()) == 2 * c


def test_partition_flat_inputs_and_explicit_ids():
    like = torch.zeros(2, 6)
    assert torch.equal(Partition().index(like), torch.arange(6))
    assert Partition().size(torch.zeros(1, 4, 4)) == 16  # (N, H, W): each coordinate its own subset
    part = Partition([0, 1, 1, 2, 0, 2])
    v = torch.arange(12, dtype=DTYPE).reshape(2, 6)
    assert torch.equal(part.subset_sums(v), torch.tensor([[4.0, 3.0, 8.0], [16.0, 15.0, 20.0]], dtype=DTYPE))
    with pytest.raises(ValueError, match="partition has 3 ids"):
        Partition([0, 1, 2]).index(like)
    with pytest.raises(ValueError, match="ids must be >= 0"):
        Partition([0, -1, 1, 1, 1, 1]).index(like)
    with pytest.raises(ValueError, match="unknown partition"):
        Partition("row").index(like)
