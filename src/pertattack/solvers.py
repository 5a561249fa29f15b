"""Solvers: the closed-form answer of the linearised problem on the constraint set (Section 2, 4).

A solver maps one linearisation (the gradient g of L at the linearisation point, the value L,
the step budget) to a step eta*. Linear solvers (this module) minimise eta^T g, which is the same
as maximising eta^T grad(-L) as the paper writes it:

* :class:`GNM` (eq. 5-7): argmin_{norm_p(eta) <= eps} eta^T g = -eps u(g), u the unit Hölder maximiser.
* :class:`MinNorm` (Prop. 1, eq. 8-9): argmin norm_p(eta) s.t. L + eta^T g <= 0
  = -(L / norm_q(g)) u(g), of norm L / norm_q(g) (Theorem 1). DeepFool's step.
* :class:`SingleSubset` (eq. 22-23): -eps sign(g) on the subset with the largest sum of abs(g);
  called again by the schedule it adds one new subset per step (multiple subsets, no reuse); with
  ``reuse=True`` a subset may be chosen again and its coordinates add a further step (Algorithm 1's
  eta_{t+1} = eta_t + eta*_t) within the budget and the box.
* :class:`RandomSign`, :class:`RandomGaussian`, :class:`RandomSubset`: the random baselines.

Quadratic solvers for regression (eq. 13-21) live in :mod:`pertattack.quadratic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._validate import flag, integer, is_number
from .constraints import Box, Constraint, LpBall, Partition, expand_like
from .noise import Noise
from .objectives import Context, Objective

__all__ = [
    "Linearisation", "Solution", "Solver", "GNM", "MinNorm", "SingleSubset", "RandomSign", "RandomGaussian",
    "RandomSubset", "Quadratic", "Square"
]


@dataclass
class Linearisation:
    """One linearisation, as the schedule hands it to a solver.

    Attributes:
        x: the linearisation point x + eta~ (N, ...).
        g: grad of L there (N, ...), or None when the solver needs no gradient.
        value: L there (N,), or None.
        eps: the budget alpha of this step, per input (N,).
        ball: the lp ball of the attack.
        forward: the model as a map of raw inputs (quadratic solvers use its Jacobian).
        noise: the attack's per-input random numbers (:class:`pertattack.noise.Noise`).
        state: the solver's own state, as its last :class:`Solution` left it (None at the first step).
        box: the box of valid inputs.
        push: added to the distance of a min-norm step (classic DeepFool's later steps).
        partition: the subsets of the constraint (subset solvers).
        x0: the clean inputs x (N, ...).
        t, steps: this step's number (from 0) and the schedule's T.
        objective, ctx: the attack's objective and its context (score-based solvers evaluate it).
        budget: the attack's eps per input (N,), the ball the final eta lies in (None: a min-norm run).
    """

    x: Tensor
    g: Tensor | None
    value: Tensor | None
    eps: Tensor
    ball: LpBall
    forward: Callable[[Tensor], Tensor]
    noise: Noise | None = None
    state: Any = None
    box: Box | None = None
    push: float = 0.0
    partition: Partition = field(default_factory=Partition)
    x0: Tensor | None = None
    t: int = 0
    steps: int = 1
    objective: Objective | None = None
    ctx: Context | None = None
    #: ``eps`` as one number when every input has the same step budget (else None)
    eps_scalar: float | None = None
    budget: Tensor | None = None


@dataclass
class Solution:
    """What a solver returns when a bare eta* (a Tensor) does not say it all.

    Attributes:
        eta: eta*, the solution of the linearised problem (N, ...).
        state: the solver's state for its next call (``Linearisation.state``).
        fooled: (N,) bool, the inputs whose new iterate fools the model (score-based solvers: the schedule
            observes them and, with a stop policy, stops them).
        info: per-input figures (N,) for ``AttackResult.info`` (``sigma``, ``queries``).
    """

    eta: Tensor
    state: Any = None
    fooled: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Subsets:
    """The state of a subset solver: the subsets used so far (N, S) and, with reuse, what eta holds on them."""

    used: Tensor
    eta: Tensor | None = None


class Solver:
    """Base class: ``solver(lin)`` returns eta* (a Tensor), or a :class:`Solution` with a state for the next
    call, the inputs fooled, or per-input figures. ``needs_grad`` tells the schedule whether to compute L
    and g; ``bounded`` whether the step's norm is the budget (False for min-norm steps, whose size the
    objective decides); ``norms`` the p of the balls it solves exactly (None: any p >= 1); ``subsets``
    whether it works on the constraint's partition; ``queries_per_step`` the score queries of the model
    one step costs per input (a query budget is then a number of steps). :meth:`check` refuses a
    constraint the solver does not solve."""

    name = "solver"
    needs_grad = True
    bounded = True
    norms: tuple[float, ...] | None = None
    subsets = False
    queries_per_step = 0
    hint = ""

    def __call__(self, lin: Linearisation) -> Tensor | Solution:  # pragma: no cover - abstract
        raise NotImplementedError

    def separable(self, ball: LpBall) -> bool:
        """Whether every step is -a_n sign(g) coordinate by coordinate (a_n >= 0 per input, nothing else of g
        used): then a coordinate that the box blocks is moved back onto its face by the schedule's clipping,
        exactly as if :meth:`Box.free_directions` had zeroed it, and the schedule skips that mask."""
        return False

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

    def separable(self, ball: LpBall) -> bool:
        return math.isinf(ball.p if self.direction_p is None else self.direction_p)

    def __call__(self, lin: Linearisation) -> Tensor:
        assert lin.g is not None
        ball = lin.ball if self.direction_p is None else LpBall(self.direction_p)
        if lin.eps_scalar is not None:
            return ball.steepest(lin.g).mul_(-lin.eps_scalar)
        return -expand_like(lin.eps, lin.g) * ball.steepest(lin.g)


class MinNorm(Solver):
    """Prop. 1, eq. 9: the smallest eta (in norm_p) with L + eta^T g <= 0.

    eta* = -(L / norm_q(g)^q) sign(g) abs(g)^(q-1) = -(L / norm_q(g)) u(g); its norm is
    L / norm_q(g). (The paper's eq. 9 misprints the exponent of abs(g); the form used here is the
    one whose norm is L / norm_q(g), Theorem 1, checked against scipy in tests/test_solvers.py.)
    Inputs with L < 0 (already fooled) get eta* = 0; an exact tie L = 0 gets the step of
    L = ``tie_push``, else iterating (DeepFool) would stay on the boundary forever.
    """

    name = "min-norm"
    bounded = False
    tie_push = 1e-4

    def __call__(self, lin: Linearisation) -> Tensor:
        assert lin.g is not None and lin.value is not None
        value = lin.value.clamp_min(0)
        # An exact tie (L == 0 in floating point) is a fixed point of the step: cross it by a hair
        # (1e-4 in the units of L, as foolbox's DeepFool does for every step).
        value = torch.where(lin.value == 0, torch.full_like(value, self.tie_push), value)
        dn = lin.ball.dual_norm(lin.g)  # exact: no floor, the step keeps its size at any gradient scale
        scale = torch.where(dn > 0, value / torch.where(dn > 0, dn, torch.ones_like(dn)), torch.zeros_like(dn))
        scale = scale + lin.push
        return -expand_like(scale, lin.g) * lin.ball.steepest(lin.g)


@dataclass(repr=False)
class SingleSubset(Solver):
    """Single-subset attack, eq. 23: s* = argmax_s sum_{i in S_s} abs(g_i), eta = -eps sign(g) on S_s*.

    Subsets chosen at earlier steps of the same run are excluded (its state), so T calls
    touch T distinct subsets (linear-pixel-T). The budget is per coordinate: the constraint's p is inf.

    ``reuse=True`` is the paper's variant without the exclusion (end of Section 5: Algorithm 1 with line 5
    restricted to one subset): every subset stays a candidate and the step adds to eta, eta_{t+1} =
    eta_t + eta*_t, where eta*_t solves the linearised problem on one subset with each coordinate in
    [-alpha, alpha] (alpha: this step's budget) and eta_t + eta*_t still in [-eps, eps] and the box. A
    subset is scored by the decrease of eta^T g it can still make, so one at its budget scores nothing and
    the next step goes elsewhere: T steps touch up to T distinct subsets, and a subset chosen again keeps
    its earlier change and adds to it (back towards 0 where its gradient's sign flipped).
    """

    reuse: bool = False
    name = "single-subset"
    norms = (math.inf,)
    subsets = True
    hint = " (eq. 23 bounds each coordinate of the chosen subset by eps: use p=inf)"

    def __post_init__(self) -> None:
        flag("reuse", self.reuse)

    def __call__(self, lin: Linearisation) -> Solution:  # type: ignore[override]
        assert lin.g is not None
        partition = lin.partition
        st: _Subsets | None = lin.state
        e = expand_like(lin.eps, lin.g)
        if not self.reuse:
            sums = partition.subset_sums(lin.g.abs())  # (N, S)
            used = st.used if st is not None else torch.zeros_like(sums, dtype=torch.bool)
            chosen = torch.zeros_like(used).scatter_(1, sums.masked_fill(used, -1.0).argmax(dim=1, keepdim=True),
                                                     True)
            return Solution(-e * lin.g.sign() * partition.mask(chosen, lin.g), _Subsets(used | chosen))
        done = st.eta if st is not None and st.eta is not None else torch.zeros_like(lin.g)  # eta_t
        lo, hi = self._room(lin, done)
        step = torch.minimum(torch.maximum(done - e * lin.g.sign(), lo), hi) - done  # per coordinate
        gain = partition.subset_sums(-(step * lin.g))  # (N, S), >= 0: what each subset can still gain
        chosen = torch.zeros_like(gain, dtype=torch.bool).scatter_(1, gain.argmax(dim=1, keepdim=True), True)
        used = chosen if st is None else st.used | chosen
        step = step * partition.mask(chosen, lin.g)
        return Solution(step, _Subsets(used, done + step))

    @staticmethod
    def _room(lin: Linearisation, like: Tensor) -> tuple[Tensor, Tensor]:
        """The bounds of eta per coordinate: [-eps, eps] (eps: the attack's budget, else this step's) and the
        box, x + eta in [lo, hi]."""
        eps = expand_like(lin.budget if lin.budget is not None else lin.eps, like).to(like.dtype)
        lo, hi = -eps, eps
        if lin.box is not None and lin.x0 is not None:
            blo, bhi = lin.box.bounds(like)
            lo, hi = torch.maximum(lo, blo - lin.x0), torch.minimum(hi, bhi - lin.x0)
        return lo, hi


class RandomSign(Solver):
    """Random baseline for p = inf: independent +-eps entries, P(+eps) = P(-eps) = 1/2."""

    name = "random-sign"
    needs_grad = False
    norms = (math.inf,)
    hint = " (Bernoulli +-eps entries fill the l-inf ball; random-gaussian draws for other p)"

    def __call__(self, lin: Linearisation) -> Tensor:
        assert lin.noise is not None
        signs = lin.noise.uniform_like(lin.x).reshape(lin.x.shape) < 0.5
        return expand_like(lin.eps, lin.x) * (signs.to(lin.x.dtype) * 2 - 1)


class RandomGaussian(Solver):
    """Random baseline for p >= 1: eta = eps w / norm_p(w), w standard Gaussian (random-l2 for p = 2)."""

    name = "random-gaussian"
    needs_grad = False

    def __call__(self, lin: Linearisation) -> Tensor:
        assert lin.noise is not None
        w = lin.noise.gaussian_like(lin.x)
        return expand_like(lin.eps / lin.ball.norm(w).clamp_min(1e-12), w) * w


class RandomSubset(Solver):
    """Random baseline for subset attacks: +-eps entries on one random, not yet used subset per call
    (rand-pixel-T after T calls)."""

    name = "random-subset"
    needs_grad = False
    norms = (math.inf,)
    subsets = True
    hint = " (+-eps entries on a subset: use p=inf)"

    def __call__(self, lin: Linearisation) -> Solution:  # type: ignore[override]
        x = lin.x
        partition = lin.partition
        n, s = x.shape[0], partition.size(x)
        used = lin.state.used if lin.state is not None else torch.zeros(n, s, dtype=torch.bool, device=x.device)
        assert lin.noise is not None
        u = lin.noise.uniform_like(x, 1, extra=s)  # one block per input: signs, then subset keys
        keys = u[:, -s:].masked_fill(used, -1.0)
        chosen = torch.zeros_like(used).scatter_(1, keys.argmax(dim=1, keepdim=True), True)
        signs = u[:, :-s].reshape(x.shape) < 0.5
        eta = expand_like(lin.eps, x) * (signs.to(x.dtype) * 2 - 1) * partition.mask(chosen, x)
        return Solution(eta, _Subsets(used | chosen))


@dataclass(repr=False)
class Quadratic(Solver):
    """The quadratic problem of regression attacks, eq. 13: max norm_2(J eta)^2 on the constraint set,
    J the Jacobian of the model at the linearisation point, used matrix-free (:mod:`pertattack.quadratic`).

    ``norm``: ``"l2"`` (eq. 14, top right singular vector; the top singular value, the operator norm
    norm(J)_{2->2}, goes to ``AttackResult.info['sigma']``), ``"l1"`` (eq. 15, largest column), ``"linf"`` (the
    greedy of eq. 20) or ``"subset"`` (eq. 19-21, the greedy inside the best subset). The sign of
    +-eta is the one that distorts the output more. With a ground truth y != f(x) (``y=`` of the call),
    quadratic-l2 solves eq. 12, max norm_2(f(x) - y + J eta)^2 (:func:`pertattack.quadratic.quadratic_l2_truth`,
    inside the box: no budget lost to clipping where the box leaves room); the other norms refuse it. Needs no
    gradient of the objective. ``method``:
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
        self.power_iters = integer("power_iters", self.power_iters)
        if not (is_number(self.tol) and math.isfinite(self.tol) and self.tol >= 0):
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

    def __call__(self, lin: Linearisation) -> Tensor | Solution:
        from . import quadratic as qd

        f, x, eps, box = lin.forward, lin.x, lin.eps, lin.box
        truth = None if lin.ctx is None else lin.ctx.extra.get("truth")
        if truth is not None:  # eq. 12: a ground truth y != f(x) was given
            if self.norm != "l2":
                raise ValueError(f"a ground truth y is solved for (eq. 12) by quadratic-l2 only; {self.name} solves "
                                 "eq. 13 (y = f(x)): call it without y, or use quadratic-l2 / the linear presets")
            gen = None if lin.noise is None else lin.noise.generator(x.device)
            return qd.quadratic_l2_truth(f, x, truth, eps, iters=self.power_iters, tol=self.tol, generator=gen,
                                         box=box)
        if self.norm == "l2":
            gen = None if lin.noise is None else lin.noise.generator(x.device)
            eta, sigma = qd.quadratic_l2(f, x, eps, iters=self.power_iters, tol=self.tol, generator=gen,
                                        method=self.svd_method, box=box)
            return Solution(eta, info={"sigma": sigma})
        if self.norm == "l1":
            return qd.quadratic_l1(f, x, eps, box=box)
        if self.norm == "linf":
            return qd.quadratic_linf(f, x, eps, box=box)
        return qd.quadratic_subset(f, x, eps, lin.partition, box=box)


@dataclass(repr=False)
class Square(Solver):
    """The Square attack (Andriushchenko, Croce, Flammarion and Hein 2020): a random search on the scores
    of the model, no gradient. p = inf or p = 2; the proposals are built in :mod:`pertattack.square`.

    One call = one step = one query of the model per input still in play. The first call evaluates the
    start (l-inf: vertical stripes of +-eps; l2: a grid of the paper's tiles, norm eps) and takes it; every
    later call proposes a new point that differs from the current one on a window of a share p of the
    input (p = ``p_init``, halved after fixed fractions of the budget T = ``lin.steps``) and takes it where
    the objective (the margin, eq. 2, in the preset) went down or the model is fooled. Returns the step to
    the new point (0 where the proposal was rejected), which stays in the eps ball (``lin.eps``, the whole
    budget) and in the box.

    Inputs found fooled are reported in ``Solution.fooled`` (the schedule stops them) and never queried
    again; ``queries`` (N,) counts each input's queries (``AttackResult.info['queries']``). Every
    random number comes from ``lin.noise``, the same amount for every input at each step, so input i's
    result depends on (seed, index[i]) only. An input the model already misclassifies is attacked like the
    others (its clean output costs a query the budget does not have).
    """

    p_init: float = 0.8
    name = "square"
    needs_grad = False
    norms = (math.inf, 2.0)
    queries_per_step = 1
    hint = " (Square's proposals are l-inf or l2 squares: use p=inf or p=2)"

    def __post_init__(self) -> None:
        v = self.p_init
        if not is_number(v) or not math.isfinite(v) or not 0 < v <= 1:
            raise ValueError(f"p_init (the share of the input the first squares cover) must be in (0, 1], got {v!r}")

    def __call__(self, lin: Linearisation) -> Solution:  # type: ignore[override]
        from . import square as sq

        x0, cur, eps, noise, box = lin.x0, lin.x, lin.eps, lin.noise, lin.box
        if x0 is None or noise is None or box is None or lin.objective is None or lin.ctx is None:
            raise ValueError("the square solver needs the clean inputs, the noise, the box and the objective of "
                             "its step (run it through a Schedule)")
        if not lin.objective.classification:
            raise ValueError("the square solver stops inputs when the model is fooled: it needs a classification "
                             f"objective, got {lin.objective!r}")
        linf = math.isinf(lin.ball.p)
        n = cur.shape[0]
        own: _SquareState | None = lin.state
        first = own is None  # the start, taken whatever its loss (the best loss so far is +inf)
        if own is None:
            own = _SquareState(torch.ones(n, dtype=torch.bool, device=cur.device), cur.new_full((n,), math.inf),
                               torch.zeros(n, dtype=torch.long, device=cur.device))
        rows = own.active.nonzero().squeeze(1)  # proposals for these inputs only; draws as for all
        every = rows.numel() == n  # no copies while every input is in play
        fooled = torch.zeros(n, dtype=torch.bool, device=cur.device)
        if not rows.numel():
            return Solution(torch.zeros_like(cur), own, fooled, {"queries": own.queries})

        def pick(t: Tensor) -> Tensor:
            return t if every else t[rows]

        cur_rows, sub = pick(cur), None if every else rows
        if first:
            new = (sq.linf_start if linf else sq.l2_start)(pick(x0), pick(eps), noise, box, sub)
        else:
            p = sq.p_schedule(self.p_init, lin.t - 1, lin.steps)
            new = (sq.linf_step if linf else sq.l2_step)(pick(x0), cur_rows, pick(eps), p, noise, box, sub)
        ctx = lin.ctx if every else lin.ctx.subset(rows)
        with torch.no_grad():
            out = lin.forward(new)
            loss = lin.objective.loss(out, ctx).to(own.best.dtype)
            hit = lin.objective.fooled(out, ctx)
        best = pick(own.best)
        take = (loss < best) | hit
        own.best[rows] = torch.where(take, loss, best)
        fooled[rows] = hit
        own.active = own.active & ~fooled
        own.queries[rows] += 1
        s_rows = (new - cur_rows) * expand_like(take, new)
        s = s_rows if every else torch.zeros_like(cur)
        if not every:
            s[rows] = s_rows
        return Solution(s, own, fooled, {"queries": own.queries})


@dataclass
class _SquareState:
    """Square's state, per input: still searched, the best loss so far, the queries made."""

    active: Tensor
    best: Tensor
    queries: Tensor
