"""The iteration loop (Algorithm 1): validation, step sizes, dithering, projection, early stop, overshoot."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DTYPE, MLP, MLP_SHAPE, BinaryAffine, gen, rand_x

from pertattack.constraints import Box, LpBall, lp_norm
from pertattack.noise import Noise
from pertattack.objectives import Context, CrossEntropy, DeepFoolObjective, Margin, Regression
from pertattack.schedule import Schedule
from pertattack.solvers import GNM, MinNorm, RandomSign

INF = math.inf


class Recording(Margin):
    """The margin objective, recording every linearisation point it is asked about."""

    def __init__(self):
        super().__init__()
        self.points: list[torch.Tensor] = []

    def value_and_grad(self, forward, x, ctx):
        self.points.append(x.clone())
        return super().value_and_grad(forward, x, ctx)


def affine_setup(n=4, m=6, seed=0, b=0.05):
    w = torch.randn(m, generator=gen(seed), dtype=DTYPE)
    model = BinaryAffine(w, b)
    x = rand_x(n, (m,), seed=seed + 1, lo=-1, hi=1)
    label = model(x).argmax(dim=1)
    return model, x, label, w


def run(schedule, model, x, eps, objective=None, solver=None, p=INF, box=(-10.0, 10.0), label=None, seed=None):
    ball = LpBall(p)
    ctx = Context(label=label if label is not None else model(x).argmax(dim=1), ball=ball)
    e = None if eps is None else torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0]).clone()
    eta, used, _info = schedule.run(model, x, e, objective or Margin(), solver or GNM(), ball, Box(*box), ctx,
                                    None if seed is None else Noise.create(seed, x.shape[0], x.device))
    return eta, used


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_steps_must_be_positive_integer(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        Schedule.of(steps=steps)


def test_overshoot_and_dither_validation():
    with pytest.raises(ValueError, match="overshoot must be >= 0"):
        Schedule.of(overshoot=-0.1)
    with pytest.raises(ValueError, match="dither must be"):
        Schedule.of(dither="sometimes")
    with pytest.raises(ValueError, match="dither needs 3 non-negative fractions"):
        Schedule.of(steps=3, dither=[0.1, 0.2])
    with pytest.raises(ValueError, match="dither needs (2 )?non-negative fractions"):
        Schedule.of(steps=2, dither=[0.1, -0.2])


def test_dither_radii():
    assert Schedule.of(steps=3).dither_radii() == [0.0, 0.0, 0.0]
    assert Schedule.of(steps=3, dither="first").dither_radii() == [1.0, 0.0, 0.0]
    assert Schedule.of(steps=4, dither="all").dither_radii() == [0.25] * 4
    assert Schedule.of(steps=2, dither=(0.5, 0.1)).dither_radii() == [0.5, 0.1]


def test_bounded_solver_needs_eps():
    model, x, label, _ = affine_setup()
    with pytest.raises(ValueError, match="needs a budget eps"):
        run(Schedule.of(), model, x, None)
    with pytest.raises(ValueError, match="needs a budget eps"):
        run(Schedule.of(project=True), model, x, None, solver=MinNorm())


# ---------------------------------------------------------------------------- step sizes and projection


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_algorithm1_steps_add_up_to_one_gnm_step_on_an_affine_model(p):
    # constant gradient: T steps of eps/T in the same direction equal one step of eps
    model, x, label, w = affine_setup()
    eps = 0.3
    one, used1 = run(Schedule.of(steps=1), model, x, eps, p=p)
    ten, used10 = run(Schedule.of(steps=10), model, x, eps, p=p)
    assert torch.allclose(one, ten, atol=1e-12)
    want = -eps * LpBall(p).steepest(torch.where(label[:, None] == 1, w, -w).expand_as(x))
    assert torch.allclose(one, want, atol=1e-12)
    assert torch.equal(used1, torch.ones(4, dtype=torch.long)) and torch.equal(used10, torch.full((4,), 10))


def test_step_scale_and_projection():
    model, x, label, w = affine_setup()
    eps = 0.2
    sched = Schedule.of(steps=4, step_scale=2.5, project=False)
    # without projection the final exact-budget projection still clips to the ball (p = inf)
    eta, _ = run(sched, model, x, eps)
    assert torch.allclose(eta.abs(), torch.full_like(x, eps))
    # one step of 2.5 eps / 4 only: below the budget
    one, _ = run(Schedule.of(steps=1, step_fraction=2.5 / 4), model, x, eps)
    assert torch.allclose(one.abs(), torch.full_like(x, 2.5 * eps / 4))
    # projected steps of alpha = step * eps stay in the ball whatever the step
    for p in (1.0, 2.0, 1.5, INF):
        eta, _ = run(Schedule.of(steps=5, step_fraction=1.0, project=True), model, x, eps, p=p)
        assert (lp_norm(eta, p) <= eps + 1e-12).all()


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, INF])
def test_box_is_kept_and_budget_exact(p):
    model = MLP().eval()
    x = rand_x(5, MLP_SHAPE, seed=3)
    eps = 0.4
    eta, _ = run(Schedule.of(steps=7, step_scale=2.5, random_start=True, project=True), model, x, eps,
                 objective=CrossEntropy(), p=p, box=(0.0, 1.0), seed=0)
    xa = x + eta
    assert (xa >= 0).all() and (xa <= 1).all()
    assert (lp_norm(eta, p) <= eps * (1 + 1e-12)).all()


# ---------------------------------------------------------------------------- dithering and random start


def test_no_dither_linearises_at_x_first():
    model, x, label, _ = affine_setup()
    obj = Recording()
    run(Schedule.of(steps=3), model, x, 0.3, objective=obj)
    assert len(obj.points) == 3
    assert torch.equal(obj.points[0], x)


@pytest.mark.parametrize("p", [2.0, INF])
def test_dither_first_moves_only_the_first_linearisation_point(p):
    model = MLP().eval()
    x = rand_x(4, MLP_SHAPE, seed=5)
    eps = 0.2
    obj = Recording()
    run(Schedule.of(steps=3, dither="first"), model, x, eps, objective=obj, p=p, box=(-10, 10), seed=1)
    d0 = lp_norm(obj.points[0] - x, p)
    assert (d0 > 0).all() and (d0 <= eps * (1 + 1e-12)).all()
    # later points: x + eta_t with norm_p(eta_t) <= (t - 1) eps / T, no extra dither
    for t in (1, 2):
        assert (lp_norm(obj.points[t] - x, p) <= t * eps / 3 * (1 + 1e-9)).all()


def test_dither_all_radii():
    model = MLP().eval()
    x = rand_x(3, MLP_SHAPE, seed=6)
    eps = 0.3
    obj = Recording()
    run(Schedule.of(steps=3, dither="all"), model, x, eps, objective=obj, box=(-10, 10), seed=2)
    assert not torch.equal(obj.points[0], x)
    # eps~_t = eps / T at every step, the point is x + eta_t + dither: ||.||_inf <= (t - 1) eps/T + eps/T
    for t, pt in enumerate(obj.points):
        assert (lp_norm(pt - x, INF) <= (t + 1) * eps / 3 + 1e-12).all()


def test_random_start_is_seeded():
    model = MLP().eval()
    x = rand_x(3, MLP_SHAPE, seed=7)
    sched = Schedule.of(steps=2, step_scale=2.5, random_start=True, project=True)
    a, _ = run(sched, model, x, 0.2, objective=CrossEntropy(), box=(0, 1), seed=5)
    b, _ = run(sched, model, x, 0.2, objective=CrossEntropy(), box=(0, 1), seed=5)
    c, _ = run(sched, model, x, 0.2, objective=CrossEntropy(), box=(0, 1), seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------- min-norm steps, early stop, overshoot


@pytest.mark.parametrize("p", [2.0, INF])
def test_min_norm_with_overshoot_crosses_in_one_step_then_stops(p):
    model, x, label, w = affine_setup(n=5)
    obj = Recording()
    sched = Schedule.of(steps=50, early_stop=True, overshoot=0.02)
    eta, used = run(sched, model, x, None, objective=obj, solver=MinNorm(), p=p)
    z = x @ w + model.b.detach()
    d = z.abs() / lp_norm(w[None], LpBall(p).q)
    assert torch.allclose(lp_norm(eta, p), 1.02 * d, rtol=1e-10)
    assert torch.equal(used, torch.ones(5, dtype=torch.long))
    assert len(obj.points) == 1  # one gradient; the check that stops the loop is a plain forward
    assert (model(x + eta).argmax(dim=1) != label).all()


def test_early_stop_freezes_done_inputs():
    model = MLP().eval()
    x = rand_x(6, MLP_SHAPE, seed=8)
    label = model(x).argmax(dim=1)
    eta, used = run(Schedule.of(steps=50, early_stop=True, overshoot=0.02), model, x, None,
                    objective=DeepFoolObjective(), solver=MinNorm(), p=2.0, box=(-10, 10))
    assert (used >= 1).all() and (used <= 50).all()
    assert (model(x + eta).argmax(dim=1) != label).all()
    # an input alone takes the same number of steps and ends at the same point
    for i in range(6):
        e_i, u_i = run(Schedule.of(steps=50, early_stop=True, overshoot=0.02), model, x[i : i + 1], None,
                       objective=DeepFoolObjective(), solver=MinNorm(), p=2.0, box=(-10, 10))
        assert int(u_i) == int(used[i])
        assert torch.allclose(e_i[0], eta[i], atol=1e-10)


def test_progress_callback_counts_steps():
    model, x, label, _ = affine_setup()
    ticks = []
    sched = Schedule.of(steps=4)
    ball = LpBall(INF)
    sched.run(model, x, torch.full((4,), 0.1, dtype=DTYPE), Margin(), GNM(), ball, Box(-10, 10),
              Context(label=label, ball=ball), None, ticks.append)
    assert ticks == [1, 1, 1, 1]


def test_random_solver_runs_without_gradient():
    model, x, label, _ = affine_setup()
    obj = Recording()
    eta, _ = run(Schedule.of(), model, x, 0.1, objective=obj, solver=RandomSign(), seed=0)
    assert obj.points == []
    assert torch.allclose(eta.abs(), torch.full_like(x, 0.1))


# ---------------------------------------------------------------------------- zero gradients


def test_zero_gradient_warns_for_undithered_regression():
    model = MLP().eval()
    x = rand_x(3, MLP_SHAPE, seed=9)
    ball = LpBall(2.0)
    ctx = Context(reference=model(x).detach(), ball=ball)
    e = torch.full((3,), 0.1, dtype=DTYPE)
    with pytest.warns(UserWarning, match="dither"):
        eta = Schedule.of(steps=2).run(model, x, e, Regression(), GNM(), ball, Box(0, 1), ctx)[0]
    assert torch.equal(eta, torch.zeros_like(x))  # flat at eta = 0: no step at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eta = Schedule.of(steps=2, dither="first").run(model, x, e, Regression(), GNM(), ball, Box(0, 1), ctx,
                                                    Noise.create(0, x.shape[0], x.device))[0]
    assert (lp_norm(eta, 2.0) > 0).all()
