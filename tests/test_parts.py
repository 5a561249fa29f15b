"""The four parts as objects: a user's own part plugs in, keywords go to their owner, mismatches are refused,
and the policies of the evaluation attacks (DLR, APGD's step size, FMN/DDN) do what their papers say."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import DTYPE, MLP, MLP_SHAPE, Affine, BinaryAffine, gen, rand_x
from torch import Tensor

import pertattack
from pertattack import get_attack
from pertattack.constraints import Box, LpBall
from pertattack.keywords import KEYWORDS
from pertattack.noise import Noise
from pertattack.objectives import DLR, Context, DLRTargeted, Margin, Objective
from pertattack.schedule import (
    Constant,
    Halving,
    Observation,
    RandomStart,
    Run,
    Schedule,
    Start,
    apgd_checkpoints,
)
from pertattack.solvers import GNM, Linearisation, Solver

INF = math.inf


# ---------------------------------------------------------------------------- a user's own parts


class DropTheScore(Objective):
    """Only ``loss``: drive the true class's logit down (a toy Algorithm-2-like objective)."""

    name = "drop-the-score"

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        return out.gather(1, ctx.label[:, None])[:, 0]


class HalfGNM(Solver):
    """A toy solver: half of GNM's step."""

    name = "half-gnm"

    def __call__(self, lin: Linearisation) -> Tensor:
        return 0.5 * GNM()(lin)


@dataclass(frozen=True)
class CornerStart(Start):
    """A toy start policy: the corner -eps (per coordinate) of the l-inf ball."""

    needs_eps = True

    def init(self, run: Run) -> Tensor:
        assert run.eps is not None
        return -run.eps.reshape(-1, *([1] * (run.x.dim() - 1))).expand_as(run.x).clone()


def test_own_objective_plugs_into_a_gradient_preset():
    model = MLP().eval()
    x = rand_x(5, MLP_SHAPE, seed=1, lo=0.2, hi=0.8)
    y = model(x).argmax(1)
    r = get_attack("pgd", objective=DropTheScore(), eps=0.1, seed=0, steps=5)(model, x, y)
    assert r.success is not None and r.x_adv.shape == x.shape
    assert (LpBall(INF).norm(r.x_adv - x) <= 0.1 + 1e-12).all()
    # it really is the objective that was used: one step equals GNM on its gradient
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, y[:, None]).sum(), xg)
    one = get_attack("fgsm", objective=DropTheScore(), eps=0.05)(model, x, y)
    torch.testing.assert_close(one.x_adv, (x - 0.05 * g.sign()).clamp(0, 1), rtol=0, atol=1e-12)


def test_own_solver_and_policy_plug_in():
    model = MLP().eval()
    x = rand_x(4, MLP_SHAPE, seed=2, lo=0.2, hi=0.8)
    y = model(x).argmax(1)
    full = get_attack("fgsm", eps=0.1)(model, x, y)
    half = get_attack("fgsm", eps=0.1, solver=HalfGNM())(model, x, y)
    torch.testing.assert_close(half.eta, 0.5 * full.eta, rtol=0, atol=1e-12)
    # a start policy of one's own: with zero steps of movement (step_scale tiny) the result is the corner
    corner = get_attack("bim", eps=0.1, start=CornerStart(), step_scale=1e-9)(model, x, y)
    torch.testing.assert_close(corner.eta, torch.full_like(x, -0.1), rtol=0, atol=1e-8)
    # and through the part__field path
    a = get_attack("bim", eps=0.1, schedule__start=CornerStart())
    assert isinstance(a.schedule.start, CornerStart)


def test_keywords_go_to_the_part_that_owns_them():
    a = get_attack("deepfool", candidates=3, p=2, steps=7, overshoot=0.05)
    assert a.objective.candidates == 3 and a.constraint.p == 2 and a.schedule.steps == 7
    assert a.schedule.overshoot == 0.05
    b = get_attack("apgd-ce", momentum=0.5, rho=0.5)
    assert b.schedule.update.momentum == 0.5 and b.schedule.step_size.rho == 0.5
    c = get_attack("quadratic-l2", power_iters=7, tol=1e-3)
    assert c.solver.power_iters == 7 and c.solver.tol == 1e-3
    with pytest.raises(TypeError, match="'probs'.*does not apply"):
        get_attack("fgsm", probs=True)  # cross-entropy has no softmax switch
    with pytest.raises(TypeError, match="no setting 'nope'"):
        get_attack("pgd", schedule__start__nope=1)
    with pytest.raises(TypeError, match=r"steps= \(the number of steps\) or step_fraction= \(alpha = step_fraction"):
        get_attack("pgd", step=0.5)
    with pytest.raises(TypeError, match="dither="):
        get_attack("pgd", lin_point="first")
    with pytest.raises(TypeError, match="init_radius="):
        get_attack("ddn", init=2.0)
    assert get_attack("ddn", init_radius=2.0).schedule.project.init_radius == 2.0
    assert get_attack("linear-pixel-3", step_fraction=0.5).schedule.step_size.fraction == 0.5


def test_every_routable_keyword_is_documented():
    doc = get_attack.__doc__ or ""
    for k in KEYWORDS:
        assert f"        {k}: " in doc
    # and every keyword of the docs table reaches a part of some preset
    reachable = set()
    for name in ["pgd", "deepfool", "quadratic-l2", "transfer", "apgd-ce", "fmn", "apgd-dlrt-2", "linear-pixel-3"]:
        a = get_attack(name)
        for k in KEYWORDS:
            try:
                a.replace(**{k: getattr_default(a, k)})
                reachable.add(k)
            except (TypeError, ValueError):
                pass
    missing = set(KEYWORDS) - reachable - {"queries", "p_init", "surrogate", "rank", "first", "last", "gamma",
                                            "gamma_final", "init_scale"}
    assert not missing, missing


def getattr_default(attack: pertattack.Attack, k: str) -> object:
    """The current value of keyword k on the attack (so that replacing it is a no-op)."""
    for obj in (attack, attack.objective, attack.constraint, attack.solver, attack.schedule,
                attack.schedule.update, attack.schedule.step_size, attack.schedule.project):
        if hasattr(obj, k) and not inspect.ismethod(getattr(obj, k)):
            return getattr(obj, k)
    return {"random_start": False, "step_scale": 1.0, "dither": "none", "early_stop": False, "box_aware": True,
            "project": False}.get(k, None)


@pytest.mark.parametrize(
    ("name", "p", "hint"),
    [("quadratic-l2", INF, "quadratic-linf"), ("quadratic-linf", 2.0, "quadratic-l2"), ("quadratic-l1", 2.0, "eq. 15"),
     ("linear-pixel-3", 2.0, "p=inf"), ("rand-pixel-3", 1.0, "p=inf"), ("random", 2.0, "random-gaussian")],
)
def test_a_solver_refuses_a_constraint_it_does_not_solve(name, p, hint):
    with pytest.raises(ValueError, match=hint):
        get_attack(name, p=p)


def test_objective_capabilities_not_names():
    class MyTarget(Objective):
        needs_target = True

        def loss(self, out: Tensor, ctx: Context) -> Tensor:
            return out.logsumexp(1) - out.gather(1, ctx.target[:, None])[:, 0]

    model = MLP().eval()
    x = rand_x(6, MLP_SHAPE, seed=3)
    y = model(x).argmax(1)
    t = (y + 1) % 4
    a = get_attack("alg1-10", objective=MyTarget(), eps=0.5)
    with pytest.raises(ValueError, match="target"):
        a(model, x, y)
    r = a(model, x, y, target=t)
    pred = model(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred == t)  # success means the target reached
    assert torch.equal(r.margin < 0, r.success)


# ---------------------------------------------------------------------------- DLR


def _np_dlr(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    s = np.sort(z, axis=1)[:, ::-1]
    zy = z[np.arange(len(y)), y]
    other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(1)
    return (zy - other) / (s[:, 0] - s[:, 2] + 1e-12)


def _np_dlr_t(z: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    s = np.sort(z, axis=1)[:, ::-1]
    rows = np.arange(len(y))
    return (z[rows, y] - z[rows, t]) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12)


def test_dlr_against_its_formula_and_invariances():
    z = torch.randn(64, 10, generator=gen(0), dtype=DTYPE) * 3
    y = torch.randint(0, 10, (64,), generator=gen(1))
    ctx = Context(label=y)
    got = DLR().loss(z, ctx)
    np.testing.assert_allclose(got.numpy(), _np_dlr(z.numpy(), y.numpy()), rtol=1e-12)
    # shift and (positive) scale invariant; negative exactly where fooled
    torch.testing.assert_close(DLR().loss(2.5 * z + 7.0, ctx), got, rtol=1e-9, atol=1e-12)
    assert torch.equal(got < 0, z.argmax(1) != y)


def test_targeted_dlr_against_its_formula():
    z = torch.randn(32, 10, generator=gen(2), dtype=DTYPE)
    y = z.argmax(1)
    ctx = Context(label=y)
    obj = DLRTargeted(rank=3)
    obj.prepare(z, ctx)
    t = z.argsort(1, descending=True)[:, 2]
    assert torch.equal(ctx.extra["dlr_target"], t)
    np.testing.assert_allclose(obj.loss(z, ctx).numpy(), _np_dlr_t(z.numpy(), y.numpy(), t.numpy()), rtol=1e-12)
    assert not obj.needs_target  # the target steers; success stays untargeted
    assert obj.usable(10) and not obj.usable(3)
    with pytest.raises(ValueError, match="rank"):
        DLRTargeted(rank=1)


# ---------------------------------------------------------------------------- APGD's step size


def test_apgd_checkpoints_are_the_papers():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06):
    # 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]


def _halving_run(losses: list[float], steps: int = 100) -> list[float]:
    """Feed Halving a loss sequence for one input; return alpha after each step."""
    x = torch.zeros(1, 3, dtype=DTYPE)
    eps = torch.ones(1, dtype=DTYPE)
    rule = Halving()
    run = Run(Schedule(steps=steps, step_size=rule), lambda z: z, x, eps, Margin(), GNM(), LpBall(INF), Box(-10, 10),
              Context(), Noise.create(0, 1, "cpu"))
    state = rule.init(run)
    out = []
    for t in range(steps):
        obs = Observation(t, steps, x, x, torch.tensor([losses[t]], dtype=DTYPE), None, None, ~run.done, run.done)
        state = rule.update(state, obs)
        out.append(float(state.alpha[0]))
    return out


def test_apgd_halves_where_progress_stalls_and_only_there():
    steps = 100
    always_better = _halving_run([-float(t) for t in range(steps)])
    assert always_better == [2.0] * steps  # every step improves: never halved
    flat = _halving_run([0.0] * steps)
    # a flat loss: halved at every checkpoint (condition 2 first, then condition 1)
    ckpts = apgd_checkpoints(steps)
    want = [2.0 / 2 ** sum(c <= t + 1 for c in ckpts) for t in range(steps)]
    assert flat == want
    # improving at every other step: the best keeps improving (condition 2 never holds) but at fewer than
    # rho = 0.75 of the steps, so condition 1 halves at every checkpoint
    half = _halving_run([-float(t // 2) for t in range(steps)])
    assert half == want


def test_apgd_restarts_from_the_best_iterate_on_a_small_quadratic():
    # L(eta) = (sum(eta) - c)^2 on an affine 'model' whose output is sum(x): APGD-CE's machinery on a known
    # quadratic. The minimum at sum(eta) = c is inside the ball; the iterates must reach it closely.
    class Quad(Objective):
        classification = False

        def loss(self, out: Tensor, ctx: Context) -> Tensor:
            return (out[:, 0] - 0.3) ** 2

    class Sum(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.sum(dim=1, keepdim=True)

    x = torch.zeros(2, 4, dtype=DTYPE)
    a = get_attack("apgd-ce", objective=Quad(), eps=0.5, seed=0, box=(-1, 1), stop=pertattack.schedule.NeverStop())
    r = a(Sum(), x)
    assert (r.eta.sum(dim=1) - 0.3).abs().max() < 2e-3
    assert (r.norms <= 0.5 + 1e-12).all()


# ---------------------------------------------------------------------------- minimum-norm schedules


@pytest.mark.parametrize("p", [2.0, INF])
def test_fmn_and_ddn_find_the_exact_distance_of_an_affine_classifier(p):
    w = torch.randn(12, generator=gen(5), dtype=DTYPE)
    model = BinaryAffine(w, 0.05)
    x = rand_x(8, MLP_SHAPE, seed=4, lo=-1, hi=1)
    d = (x @ w + 0.05).abs() / LpBall(p).dual_norm(w[None].expand(8, 12))  # Theorem 1, exact here
    names = ["fmn"] + (["ddn"] if p == 2 else [])
    for name in names:
        r = get_attack(name, p=p, steps=200, box=(-10, 10))(model, x)
        assert r.success.all()
        assert (r.norms >= d - 1e-9).all()  # nothing can beat the exact distance
        assert (r.norms <= d * 1.05).all(), (name, (r.norms / d).max())


def test_minimum_norm_presets_serve_every_eps_from_one_run():
    model = Affine(12, 4, seed=6).eval()
    x = rand_x(6, MLP_SHAPE, seed=7)
    a = get_attack("fmn", p=2.0, steps=30)
    assert a.minimum_norm and get_attack("ddn").minimum_norm and not get_attack("apgd-ce").minimum_norm
    free = a(model, x)
    per = a(model, x, eps=[0.01, math.sqrt(12)])  # the box's l2 diameter, the largest eps accepted (issue 18)
    torch.testing.assert_close(per[1].x_adv, free.x_adv, rtol=0, atol=1e-12)  # a big ball changes nothing
    assert (per[0].norms <= 0.01 + 1e-12).all()


def test_schedule_validates_its_policies():
    with pytest.raises(TypeError, match="start"):
        Schedule(start="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        get_attack("apgd-ce", momentum=1.5)
    with pytest.raises(ValueError, match="rho"):
        Halving(rho=-0.1)
    with pytest.raises(ValueError, match="step_scale"):
        Constant(scale=0.0)
    assert isinstance(get_attack("pgd").schedule.start, RandomStart)


def test_restarts_rerun_only_the_inputs_still_robust():
    model = MLP(k=4, seed=8).eval()
    x = rand_x(30, MLP_SHAPE, seed=9)
    y = model(x).argmax(1)
    one = get_attack("apgd-ce", eps=0.05, steps=5, seed=0)(model, x, y)
    three = get_attack("apgd-ce", eps=0.05, steps=5, seed=0, restarts=3)(model, x, y)
    assert bool((three.success | ~one.success).all())  # never weaker than the first run
    torch.testing.assert_close(three.x_adv[one.success], one.x_adv[one.success], rtol=0, atol=0)
    assert (three.steps[~one.success] > one.steps[~one.success]).all()  # the robust ones ran again
    assert (three.norms <= 0.05 + 1e-12).all()
    with pytest.raises(ValueError, match="restarts"):
        get_attack("apgd-ce", restarts=0)


def test_probability_margin_is_eq2_on_softmax():
    """PMA's probability margin (Xie et al. 2024) by name: the margin of eq. 2 on the softmax outputs."""
    obj = get_attack("apgd-ce", objective="probability-margin").objective
    model = MLP().eval()
    x = rand_x(5, MLP_SHAPE, seed=3)
    out = model(x).detach()
    y = out.argmax(1)
    p = out.softmax(1)
    others = p.clone()
    others[torch.arange(5), y] = -1.0
    want = p[torch.arange(5), y] - others.amax(1)
    torch.testing.assert_close(obj.loss(out, Context(label=y)), want, rtol=0, atol=1e-12)
