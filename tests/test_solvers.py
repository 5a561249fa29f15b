"""Linear closed forms (eq. 6, 9, 23) against scipy / brute-force optima; random baselines."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import DTYPE, gen
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize

from pertattack.constraints import Box, LpBall, Partition, dual_exponent, lp_norm
from pertattack.noise import Noise
from pertattack.solvers import (
    GNM,
    Linearisation,
    MinNorm,
    RandomGaussian,
    RandomSign,
    RandomSubset,
    SingleSubset,
    Solution,
    Solver,
)

INF = math.inf
PS = [1.0, 1.5, 2.0, 3.0, INF]
SEEDS = st.integers(0, 2**31 - 1)
M = 5


def np_norm(v: np.ndarray, p: float) -> float:
    v = np.abs(np.ravel(v))
    return float(v.max()) if math.isinf(p) else float((v**p).sum() ** (1.0 / p))


def make_step(g: torch.Tensor, eps: float | torch.Tensor, p: float, value: torch.Tensor | None = None,
              seed: int | None = None, partition: Partition | None = None) -> Linearisation:
    n = g.shape[0]
    e = torch.as_tensor(eps, dtype=g.dtype).expand(n).clone()
    return Linearisation(x=torch.zeros_like(g), g=g, value=value, eps=e, ball=LpBall(p), forward=lambda z: z,
                noise=Noise.create(seed, n, g.device), partition=partition or Partition())


def solve(solver: Solver, lin: Linearisation) -> torch.Tensor:
    """eta* of one call, as the schedule makes it: a Solution's state goes to the next call."""
    out = solver(lin)
    if isinstance(out, Solution):
        lin.state = out.state
        return out.eta
    return out


def scipy_gnm_value(g: np.ndarray, eps: float, p: float) -> float:
    """min eta^T g s.t. ||eta||_p <= eps (linprog for p in {1, inf}, SLSQP otherwise)."""
    m = g.size
    if math.isinf(p):
        return linprog(g, bounds=[(-eps, eps)] * m, method="highs").fun
    if p == 1:  # eta = a - b, a, b >= 0, sum(a + b) <= eps
        res = linprog(np.concatenate([g, -g]), A_ub=np.ones((1, 2 * m)), b_ub=[eps], bounds=[(0, None)] * (2 * m),
                      method="highs")
        return res.fun
    # homogeneous in eps: solve on the unit ball (well scaled for SLSQP's tolerances), then scale
    cons = [dict(type="ineq", fun=lambda z: 1.0 - (np.abs(z) ** p).sum())]
    x0 = -0.5 * g / np.linalg.norm(g) * m ** (-max(0.0, 1 / p - 0.5))
    res = minimize(lambda z: z @ g, x0, jac=lambda z: g, constraints=cons, method="SLSQP",
                   options=dict(ftol=1e-13, maxiter=500))
    assert np_norm(res.x, p) <= 1 + 1e-6
    return eps * res.fun


def scipy_min_norm(g: np.ndarray, L: float, p: float) -> float:
    """min ||eta||_p s.t. L + eta^T g <= 0."""
    m = g.size
    if math.isinf(p):  # variables (eta, t): min t, -t <= eta <= t, g^T eta <= -L
        c = np.r_[np.zeros(m), 1.0]
        a = np.vstack([np.c_[np.eye(m), -np.ones(m)], np.c_[-np.eye(m), -np.ones(m)], np.r_[g, 0.0][None]])
        b = np.r_[np.zeros(2 * m), -L]
        return linprog(c, A_ub=a, b_ub=b, bounds=[(None, None)] * m + [(0, None)], method="highs").fun
    if p == 1:
        res = linprog(np.ones(2 * m), A_ub=np.r_[g, -g][None], b_ub=[-L], bounds=[(0, None)] * (2 * m),
                      method="highs")
        return res.fun
    # the problem is homogeneous in L: solve it for L = 1 (well scaled for SLSQP's tolerances), then scale
    cons = [dict(type="ineq", fun=lambda z: -(1.0 + z @ g), jac=lambda z: -g)]
    x0 = -g / (g @ g)  # feasible start
    res = minimize(lambda z: (np.abs(z) ** p).sum(), x0, jac=lambda z: p * np.sign(z) * np.abs(z) ** (p - 1),
                   constraints=cons, method="SLSQP", options=dict(ftol=1e-14, maxiter=1000))
    assert 1.0 + res.x @ g <= 1e-6
    return L * np_norm(res.x, p)


# ---------------------------------------------------------------------------- GNM (eq. 6)


@pytest.mark.parametrize("p", PS)
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, eps=st.floats(0.01, 3.0))
def test_gnm_is_the_linear_optimum_on_the_ball(p, seed, eps):
    g = torch.randn(2, M, generator=gen(seed), dtype=DTYPE)
    eta = GNM()(make_step(g, eps, p))
    assert eta.shape == g.shape
    q = dual_exponent(p)
    for i in range(2):
        gi, ei = g[i].numpy(), eta[i].numpy()
        val = float(ei @ gi)
        # Hölder: the least value of eta^T g on the ball is -eps norm_q(g), reached on the sphere
        assert val == pytest.approx(-eps * np_norm(gi, q), rel=1e-9)
        assert np_norm(ei, p) == pytest.approx(eps, rel=1e-9)
        # and no solver finds better
        best = scipy_gnm_value(gi, eps, p)
        assert val <= best + 1e-7 * (1 + abs(best))
        assert val == pytest.approx(best, rel=1e-4, abs=1e-7)


def test_gnm_special_cases():
    g = torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.0, -1.0]], dtype=DTYPE)
    eps = 0.3
    assert torch.equal(GNM()(make_step(g, eps, INF)), -eps * g.sign())  # FGSM's step
    l1 = GNM()(make_step(g, eps, 1.0))
    assert torch.equal(l1, torch.tensor([[0.0, eps, 0.0], [-eps, 0.0, 0.0]], dtype=DTYPE))
    l2 = GNM()(make_step(g, eps, 2.0))
    assert torch.allclose(l2, -eps * g / g.norm(dim=1, keepdim=True))


def test_gnm_per_input_eps():
    g = torch.randn(3, M, generator=gen(4), dtype=DTYPE)
    eps = torch.tensor([0.0, 0.5, 2.0], dtype=DTYPE)
    eta = GNM()(make_step(g, eps, 2.0))
    assert torch.allclose(lp_norm(eta, 2.0), eps)


# ---------------------------------------------------------------------------- min-norm (Prop. 1, eq. 9)


@pytest.mark.parametrize("p", PS)
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, scale=st.floats(0.01, 5.0))
def test_min_norm_is_the_smallest_step_to_the_boundary(p, seed, scale):
    gg = gen(seed)
    g = torch.randn(2, M, generator=gg, dtype=DTYPE)
    L = scale * (torch.rand(2, generator=gg, dtype=DTYPE) + 0.1)
    eta = MinNorm()(make_step(g, 0.0, p, value=L))
    q = dual_exponent(p)
    for i in range(2):
        gi, ei, Li = g[i].numpy(), eta[i].numpy(), float(L[i])
        # reaches the linearised boundary L + eta^T g = 0 exactly
        assert Li + ei @ gi == pytest.approx(0.0, abs=1e-9 * (1 + Li))
        # Theorem 1: its norm is L / norm_q(g)
        assert np_norm(ei, p) == pytest.approx(Li / np_norm(gi, q), rel=1e-9)
        best = scipy_min_norm(gi, Li, p)
        assert np_norm(ei, p) <= best * (1 + 1e-6) + 1e-9
        assert np_norm(ei, p) == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("p", PS)
def test_min_norm_is_zero_when_already_fooled(p):
    g = torch.randn(3, M, generator=gen(7), dtype=DTYPE)
    L = torch.tensor([-0.5, 0.0, 0.7], dtype=DTYPE)
    eta = MinNorm()(make_step(g, 0.0, p, value=L))
    assert torch.equal(eta[0], torch.zeros(M, dtype=DTYPE))
    # an exact tie is crossed by the step of L = tie_push (else DeepFool would sit on the boundary)
    q = LpBall(p).q
    torch.testing.assert_close(lp_norm(eta[1:2], p), MinNorm.tie_push / lp_norm(g[1:2], q), rtol=1e-10, atol=0)
    assert float((eta[1] * g[1]).sum()) == pytest.approx(-MinNorm.tie_push, rel=1e-10)
    assert float(lp_norm(eta[2:], p)) > 0
    assert MinNorm.bounded is False and GNM.bounded is True


# ---------------------------------------------------------------------------- single subset (eq. 23)


def brute_force_single_subset(g: np.ndarray, ids: np.ndarray, eps: float) -> float:
    """min eta^T g over eta supported on one subset with ||eta||_inf <= eps: all sign patterns, all subsets."""
    best = 0.0
    for s in np.unique(ids):
        gs = g[ids == s]
        for signs in itertools.product([-1.0, 1.0], repeat=gs.size):
            best = min(best, float(eps * np.asarray(signs) @ gs))
    return best


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, s=st.integers(1, 4), eps=st.floats(0.01, 2.0))
def test_single_subset_against_brute_force(seed, s, eps):
    gg = gen(seed)
    m = 8
    ids = torch.randint(0, s, (m,), generator=gg)
    ids[:s] = torch.arange(s)  # every subset is non-empty
    g = torch.randn(2, m, generator=gg, dtype=DTYPE)
    part = Partition(ids.tolist())
    eta = solve(SingleSubset(), make_step(g, eps, INF, partition=part))
    for i in range(2):
        ei, gi = eta[i].numpy(), g[i].numpy()
        support = np.unique(ids.numpy()[ei != 0])
        assert support.size == 1  # one subset only
        assert np.abs(ei).max() == pytest.approx(eps)
        assert float(ei @ gi) == pytest.approx(brute_force_single_subset(gi, ids.numpy(), eps), rel=1e-12)


def test_single_subset_pixels_of_an_image_and_no_reuse():
    g = torch.zeros(1, 3, 2, 2, dtype=DTYPE)
    g[0, :, 1, 0] = torch.tensor([1.0, -1.0, 1.0])  # pixel 2: sum 3
    g[0, 0, 0, 1] = -2.5  # pixel 1: sum 2.5
    g[0, 2, 1, 1] = 1.0  # pixel 3: sum 1
    solver = SingleSubset()
    step = make_step(g, 0.1, INF, partition=Partition("pixel"))
    eta1 = solve(solver, step)
    want = torch.zeros_like(g)
    want[0, :, 1, 0] = -0.1 * torch.tensor([1.0, -1.0, 1.0], dtype=DTYPE)
    assert torch.equal(eta1, want)
    eta2 = solve(solver, step)  # same state: the next best, unused subset
    assert (eta2[0, :, 0, 1] != 0).sum() == 1 and float(eta2[0, 0, 0, 1]) == pytest.approx(0.1)
    assert (eta2 != 0).sum() == 1
    eta3 = solve(solver, step)
    assert float(eta3[0, 2, 1, 1]) == pytest.approx(-0.1) and (eta3 != 0).sum() == 1
    assert step.state.used.sum() == 3


# ---------------------------------------------------------------------------- random baselines


def test_random_sign():
    x = torch.zeros(4, 50, dtype=DTYPE)
    step = make_step(x, 0.2, INF, seed=0)
    eta = RandomSign()(step)
    assert torch.equal(eta.abs(), torch.full_like(x, 0.2))
    assert 0.3 < float((eta > 0).double().mean()) < 0.7
    assert torch.equal(RandomSign()(make_step(x, 0.2, INF, seed=0)), eta)
    assert not torch.equal(RandomSign()(make_step(x, 0.2, INF, seed=1)), eta)
    assert RandomSign.needs_grad is False


@pytest.mark.parametrize("p", PS)
def test_random_gaussian_on_the_sphere(p):
    x = torch.zeros(3, 10, dtype=DTYPE)
    eps = torch.tensor([0.1, 0.5, 0.0], dtype=DTYPE)
    eta = RandomGaussian()(make_step(x, eps, p, seed=3))
    assert torch.allclose(lp_norm(eta, p), eps)


def test_random_subset_uses_distinct_subsets():
    x = torch.zeros(2, 3, 2, 2, dtype=DTYPE)
    solver = RandomSubset()
    step = make_step(x, 0.3, INF, seed=4, partition=Partition("pixel"))
    touched = []
    for _ in range(4):
        eta = solve(solver, step)
        pix = (eta != 0).any(dim=1).reshape(2, 4)
        assert (pix.sum(dim=1) == 1).all()  # one pixel per call
        assert torch.equal(eta[eta != 0].abs(), torch.full(((eta != 0).sum(),), 0.3, dtype=DTYPE))
        touched.append(pix)
    assert (torch.stack(touched).sum(dim=0) == 1).all()  # 4 calls: every one of the 4 pixels once


def _reuse_gradient() -> torch.Tensor:
    """Pixel 2 by far the largest (sum 15), then pixel 1 (2), pixel 3 (1), pixel 0 (0.5)."""
    g = torch.zeros(1, 3, 2, 2, dtype=DTYPE)
    g[0, :, 1, 0] = torch.tensor([5.0, -5.0, 5.0])
    g[0, 0, 0, 1] = -2.0
    g[0, 2, 1, 1] = 1.0
    g[0, 1, 0, 0] = 0.5
    return g


def test_single_subset_with_reuse_touches_t_subsets_when_each_step_fills_its_budget():
    # alpha = eps: a subset chosen once is at its budget and can gain nothing more, so every step goes to a new
    # pixel (the variant that re-decided a chosen subset chose pixel 2 four times: one pixel)
    g = _reuse_gradient()
    step = make_step(g, 0.1, INF, partition=Partition("pixel"))
    step.budget = torch.full((1,), 0.1, dtype=DTYPE)
    solver = SingleSubset(reuse=True)
    total = torch.zeros_like(g)
    touched = []
    for _ in range(4):
        s = solve(solver, step)
        assert (s != 0).any(dim=1).sum() == 1  # one subset per step
        total = total + s
        touched.append((s != 0).any(dim=1).flatten().nonzero().item())
        assert total.abs().max() <= 0.1 + 1e-15  # the budget per coordinate holds
    assert touched == [2, 1, 3, 0]
    torch.testing.assert_close(total, -0.1 * g.sign(), rtol=0, atol=1e-15)


def test_single_subset_with_reuse_adds_to_a_subset_chosen_again():
    # alpha = eps / 2: pixel 2 is chosen twice and its two steps add up to eps (the old variant reset it to
    # -alpha sign(g)); then, at its budget, the next step goes to pixel 1
    g = _reuse_gradient()
    step = make_step(g, 0.05, INF, partition=Partition("pixel"))
    step.budget = torch.full((1,), 0.1, dtype=DTYPE)
    solver = SingleSubset(reuse=True)
    total = solve(solver, step)
    torch.testing.assert_close(total[0, :, 1, 0], -0.05 * g[0, :, 1, 0].sign(), rtol=0, atol=1e-15)
    total = total + solve(solver, step)
    torch.testing.assert_close(total[0, :, 1, 0], -0.1 * g[0, :, 1, 0].sign(), rtol=0, atol=1e-15)
    assert (total != 0).any(dim=1).sum() == 1
    total = total + solve(solver, step)
    assert float(total[0, 0, 0, 1]) == pytest.approx(0.05) and (total != 0).any(dim=1).sum() == 2
    # the gradient flips on pixel 2: chosen again, its step adds alpha back towards 0, within [-eps, eps]
    step.g = -g
    total = total + solve(solver, step)
    torch.testing.assert_close(total[0, :, 1, 0], -0.05 * g[0, :, 1, 0].sign(), rtol=0, atol=1e-15)
    assert float(total[0, 0, 0, 1]) == pytest.approx(0.05)  # pixel 1 kept its change
    no_reuse = SingleSubset()
    step2 = make_step(g, 0.1, INF, partition=Partition("pixel"))
    t2 = solve(no_reuse, step2) + solve(no_reuse, step2)
    assert (t2 != 0).any(dim=1).sum() == 2  # two distinct pixels


def test_single_subset_with_reuse_keeps_the_box():
    # pixel 2 sits 0.03 below the box's top where its gradient pushes up: it can gain only 0.03 per channel
    # that moves up, so it is filled to the face and the next steps go to the other pixels
    g = _reuse_gradient()
    x0 = torch.full_like(g, 0.5)
    x0[0, 1, 1, 0] = 0.97  # channel 1 of pixel 2 moves up (its g is negative)
    x0[0, 0, 1, 0] = 0.02  # channel 0 moves down (its g is positive)
    step = replace(make_step(g, 0.1, INF, partition=Partition("pixel")), x0=x0, box=Box(0.0, 1.0),
                   budget=torch.full((1,), 0.1, dtype=DTYPE))
    solver = SingleSubset(reuse=True)
    total = torch.zeros_like(g)
    for _ in range(4):
        total = total + solve(solver, step)
        assert ((x0 + total >= 0) & (x0 + total <= 1 + 1e-15)).all() and total.abs().max() <= 0.1 + 1e-15
    torch.testing.assert_close(total[0, :, 1, 0], torch.tensor([-0.02, 0.03, -0.1], dtype=DTYPE), rtol=0,
                               atol=1e-15)
    assert (total != 0).any(dim=1).sum() == 4
