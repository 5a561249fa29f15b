"""Solvers: the closed-form answer of the linearised problem on the constraint set (Section 2, 4).

A solver maps one linearisation (the gradient g of L at the linearisation point, the value L,
the step budget) to a step eta*. Linear solvers (this module) minimise eta^T g, which is the same
as maximising eta^T grad(-L) as the paper writes it:

* :class:`GNM` (eq. 5-7): argmin_{norm_p(eta) <= eps} eta^T g = -eps u(g), u the unit Hölder maximiser.
* :class:`MinNorm` (Prop. 1, eq. 8-9): argmin norm_p(eta) s.t. L + eta^T g <= 0
  = -(L / norm_q(g)) u(g), of norm L / norm_q(g) (Theorem 1). DeepFool's step.
* :class:`SingleSubset` (eq. 22-23): -eps sign(g) on the subset with the largest sum of abs(g);
  called again by the schedule it adds one new subset per step (multiple subsets, no reuse).
* :class:`RandomSign`, :class:`RandomGaussian`, :class:`RandomSubset`: the random baselines.

Quadratic solvers for regression (eq. 13-21) live in :mod:`pertattack.quadratic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .constraints import Box, Constraint, LpBall, Partition, expand_like
from .noise import Noise
from .objectives import Context, Objective

__all__ = [
    "Step",
    "Solver",
    "GNM",
    "MinNorm",
    "SingleSubset",
    "RandomSign",
    "RandomGaussian",
    "RandomSubset",
    "Quadratic",
]


@dataclass
class Step:
    """One linearisation, as the schedule hands it to a solver.

    Attributes:
        x: the linearisation point x + eta~ (N, ...).
        g: grad of L there (N, ...), or None when the solver needs no gradient.
        value: L there (N,), or None.
        eps: the step's budget per input (N,).
        ball: the lp ball of the attack.
        forward: the model as a map of raw inputs (quadratic solvers use its Jacobian).
        noise: the attack's per-input random numbers (:class:`pertattack.noise.Noise`).
        state: per-run scratch space of the solver (e.g. subsets already used); tensors of shape
            (N,) left there are reported in ``AttackResult.info``.
        box: the box of valid inputs.
        push: added to the distance of a min-norm step (classic DeepFool's later steps).
        partition: the subsets of the constraint (subset solvers).
        x0: the clean inputs x (N, ...).
        t, steps: this step's number (from 0) and the schedule's T.
        objective, ctx: the attack's objective and its context (score-based solvers evaluate it).
    """

    x: Tensor
    g: Tensor | None
    value: Tensor | None
    eps: Tensor
    ball: LpBall
    forward: Callable[[Tensor], Tensor]
    noise: Noise | None = None
    state: dict = field(default_factory=dict)
    box: Box | None = None
    push: float = 0.0
    partition: Partition = field(default_factory=Partition)
    x0: Tensor | None = None
    t: int = 0
    steps: int = 1
    objective: Objective | None = None
    ctx: Context | None = None


class Solver:
    """Base class. ``needs_grad`` tells the schedule whether to compute L and g; ``bounded`` whether
    the step's norm is the budget (False for min-norm steps, whose size the objective decides);
    ``norms`` the p of the balls it solves exactly (None: any p >= 1); ``subsets`` whether it works on
    the constraint's partition. :meth:`check` refuses a constraint the solver does not solve."""

    name = "solver"
    needs_grad = True
    bounded = True
    norms: tuple[float, ...] | None = None
    subsets = False
    hint = ""

    def __call__(self, step: Step) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, constraint: Constraint) -> None:
        """Raise a ValueError, saying what to use instead, when this solver does not solve ``constraint``."""
        if self.norms is not None and constraint.p not in self.norms:
            ps = " or ".join("inf" if math.isinf(q) else f"{q:g}" for q in self.norms)
            raise ValueError(f"solver {self.name} solves p = {ps}, not p = {constraint.p:g}" + self.hint)

    def __repr__(self) -> str:
        return self.name


@dataclass(repr=False)
class GNM(Solver):
    """Generalised gradient-norm method, eq. 6-7: eta* = -eps sign(g) abs(g)^(q-1) / norm_q(g)^(q-1).

    p = inf gives -eps sign(g) (FGSM's step), p = 1 all mass on the largest abs(g_i).
    eta*^T g = -eps norm_q(g), the least value on the ball (Hölder).

    ``direction_p``: take the steepest step of another norm (e.g. 2: the normalised gradient) and leave
    the constraint's ball to the schedule's projection, as FMN does in l-inf; None: the constraint's p.
    """

    direction_p: float | None = None
    name = "gnm"

    def __post_init__(self) -> None:
        if self.direction_p is not None:
            LpBall(self.direction_p)  # validates

    def __call__(self, step: Step) -> Tensor:
        assert step.g is not None
        ball = step.ball if self.direction_p is None else LpBall(self.direction_p)
        return -expand_like(step.eps, step.g) * ball.steepest(step.g)


class MinNorm(Solver):
    """Prop. 1, eq. 9: the smallest eta (in norm_p) with L + eta^T g <= 0.

    eta* = -(L / norm_q(g)^q) sign(g) abs(g)^(q-1) = -(L / norm_q(g)) u(g); its norm is
    L / norm_q(g). Inputs with L < 0 (already fooled) get eta* = 0; an exact tie L = 0 gets the
    step of L = ``tie_push``, else iterating (DeepFool) would stay on the boundary forever.
    """

    name = "min-norm"
    bounded = False
    tie_push = 1e-4

    def __call__(self, step: Step) -> Tensor:
        assert step.g is not None and step.value is not None
        value = step.value.clamp_min(0)
        # An exact tie (L == 0 in floating point) is a fixed point of the step: cross it by a hair
        # (1e-4 in the units of L, as foolbox's DeepFool does for every step).
        value = torch.where(step.value == 0, torch.full_like(value, self.tie_push), value)
        scale = value / step.ball.dual_norm(step.g).clamp_min(1e-12) + step.push
        return -expand_like(scale, step.g) * step.ball.steepest(step.g)


class SingleSubset(Solver):
    """Single-subset attack, eq. 23: s* = argmax_s sum_{i in S_s} abs(g_i), eta = -eps sign(g) on S_s*.

    Subsets chosen at earlier steps of the same run are excluded (``state['used']``), so T calls
    touch T distinct subsets (linear-pixel-T). The budget is per coordinate: the constraint's p is inf.
    """

    name = "single-subset"
    norms = (math.inf,)
    subsets = True
    hint = " (eq. 23 bounds each coordinate of the chosen subset by eps: use p=inf)"

    def __call__(self, step: Step) -> Tensor:
        assert step.g is not None
        partition = step.partition
        sums = partition.subset_sums(step.g.abs())  # (N, S)
        used = step.state.get("used")
        if used is None:
            used = torch.zeros_like(sums, dtype=torch.bool)
        best = sums.masked_fill(used, -1.0).argmax(dim=1, keepdim=True)
        chosen = torch.zeros_like(used).scatter_(1, best, True)
        step.state["used"] = used | chosen
        mask = partition.mask(chosen, step.g)
        return -expand_like(step.eps, step.g) * step.g.sign() * mask


class RandomSign(Solver):
    """Random baseline for p = inf: independent +-eps entries, P(+eps) = P(-eps) = 1/2."""

    name = "random-sign"
    needs_grad = False
    norms = (math.inf,)
    hint = " (Bernoulli +-eps entries fill the l-inf ball; random-gaussian draws for other p)"

    def __call__(self, step: Step) -> Tensor:
        assert step.noise is not None
        signs = step.noise.uniform_like(step.x).reshape(step.x.shape) < 0.5
        return expand_like(step.eps, step.x) * (signs.to(step.x.dtype) * 2 - 1)


class RandomGaussian(Solver):
    """Random baseline for p >= 1: eta = eps w / norm_p(w), w standard Gaussian (random-l2 for p = 2)."""

    name = "random-gaussian"
    needs_grad = False

    def __call__(self, step: Step) -> Tensor:
        assert step.noise is not None
        w = step.noise.gaussian_like(step.x)
        return expand_like(step.eps / step.ball.norm(w).clamp_min(1e-12), w) * w


class RandomSubset(Solver):
    """Random baseline for subset attacks: +-eps entries on one random, not yet used subset per call
    (rand-pixel-T after T calls)."""

    name = "random-subset"
    needs_grad = False
    norms = (math.inf,)
    subsets = True
    hint = " (+-eps entries on a subset: use p=inf)"

    def __call__(self, step: Step) -> Tensor:
        x = step.x
        partition = step.partition
        n, s = x.shape[0], partition.size(x)
        used = step.state.get("used")
        if used is None:
            used = torch.zeros(n, s, dtype=torch.bool, device=x.device)
        assert step.noise is not None
        u = step.noise.uniform_like(x, 1, extra=s)  # one block per input: signs, then subset keys
        keys = u[:, -s:].masked_fill(used, -1.0)
        chosen = torch.zeros_like(used).scatter_(1, keys.argmax(dim=1, keepdim=True), True)
        step.state["used"] = used | chosen
        signs = u[:, :-s].reshape(x.shape) < 0.5
        return expand_like(step.eps, x) * (signs.to(x.dtype) * 2 - 1) * partition.mask(chosen, x)


@dataclass(repr=False)
class Quadratic(Solver):
    """The quadratic problem of regression attacks, eq. 13: max norm_2(J eta)^2 on the constraint set,
    J the Jacobian of the model at the linearisation point, used matrix-free (:mod:`pertattack.quadratic`).

    ``norm``: ``"l2"`` (eq. 14, top right singular vector; the top singular value, the operator norm
    norm(J)_{2->2}, goes to ``state['sigma']``), ``"l1"`` (eq. 15, largest column), ``"linf"`` (the
    greedy of eq. 20) or ``"subset"`` (eq. 19-21, the greedy inside the best subset). The sign of
    +-eta is the one that distorts the output more. Needs no gradient of the objective. ``method``:
    ``"lanczos"`` (default; reaches tol in 40-70 iterations at M = 3,072-27,648 where 100 power
    iterations stay ~0.5% off sigma, benchmarks/bench_quadratic.py) or ``"power"``.
    """

    norm: str = "l2"
    power_iters: int = 100
    tol: float = 1e-6
    svd_method: str = "lanczos"
    needs_grad = False

    def __post_init__(self) -> None:
        if self.norm not in ("l2", "l1", "linf", "subset"):
            raise ValueError(f"quadratic solver norm must be l2, l1, linf or subset, got {self.norm!r}")
        if isinstance(self.power_iters, bool) or int(self.power_iters) != self.power_iters or self.power_iters < 1:
            raise ValueError(f"power_iters must be a positive integer, got {self.power_iters!r}")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if self.svd_method not in ("lanczos", "power"):
            raise ValueError(f"svd_method must be 'lanczos' or 'power', got {self.svd_method!r}")

    @property
    def norms(self) -> tuple[float, ...]:  # type: ignore[override]
        return {"l2": (2.0,), "l1": (1.0,), "linf": (math.inf,), "subset": (math.inf,)}[self.norm]

    @property
    def subsets(self) -> bool:  # type: ignore[override]
        return self.norm == "subset"

    @property
    def hint(self) -> str:  # type: ignore[override]
        other = {2.0: "quadratic-l2", 1.0: "quadratic-l1", math.inf: "quadratic-linf"}
        return f" (eq. {dict(l2=14, l1=15, linf=20, subset='19-21')[self.norm]}; the presets " + ", ".join(
            f"{v} (p={k:g})" for k, v in other.items()) + " solve the others)"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"quadratic-{self.norm}"

    def __call__(self, step: Step) -> Tensor:
        from . import quadratic as qd

        f, x, eps, box = step.forward, step.x, step.eps, step.box
        if self.norm == "l2":
            gen = None if step.noise is None else step.noise.generator(x.device)
            eta, sigma = qd.quadratic_l2(f, x, eps, iters=self.power_iters, tol=self.tol, generator=gen,
                                        method=self.svd_method, box=box)
            step.state["sigma"] = sigma
            return eta
        if self.norm == "l1":
            return qd.quadratic_l1(f, x, eps, box=box)
        if self.norm == "linf":
            return qd.quadratic_linf(f, x, eps, box=box)
        return qd.quadratic_subset(f, x, eps, step.partition, box=box)
