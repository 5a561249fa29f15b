"""Schedules: the one iteration loop of the project and the policies it is made of (Algorithm 1)::

    run = Run(schedule, x, eps, ...)                           # every policy's init(run): its state
    eta = start(x, eps)                                        # zero, or random in the ball
    for t = 1..T:
        x_lin = x + (1 + overshoot) (eta + random(eps~_t))     # linearisation point: dithering (Alg. 1)
        L, g, fooled = grad L(x_lin)                           # gradient: the inputs still in play (stop)
        keep, projection, stop observe (L, g, fooled)          # observe: best iterate, FMN's radius, done
        alpha = step_size.update(t)                            # adapt the step: APGD halves, restarts
        eta = project(update(eta, solver(g, L, alpha)))        # take the step: plain or momentum, then P
    return keep.result(eta)                                    # finish: last / best by loss / best by norm

:meth:`Schedule.run` is that loop, line for line, over the phases of :class:`Run`. Presets are
combinations of the policies (presets.py): Algorithm 1 is Constant(1) steps without projection (T
steps of eps/T stay in the ball); Madry's PGD a random start, Constant(2.5) steps and the eps-ball
projection; pgd-paper Algorithm 1 dithered once; DeepFool min-norm steps (unbounded) stopped per input
when fooled; APGD (Croce and Hein 2020) a random start, Halving step sizes, Momentum and the best
iterate; FMN (Pintor et al. 2021) Cosine step sizes, an adaptive ball and the smallest fooling iterate;
Square (Andriushchenko et al. 2020) a score-only solver under the same loop.

A step is one iteration; ``steps`` is T. Every step is batched; inputs that are done are frozen with
``torch.where``, and gradients are taken for the inputs still in play only. The box is handled by
three separate switches: ``mask_blocked`` (the solver sees the gradient on the free coordinates only,
:meth:`Box.free_directions`), ``clip_iterates`` (x + eta is kept in the box after every step) and
``push`` (classic DeepFool adds a hair to the distance of its later min-norm steps so that iterates
cannot creep up to the boundary from one side). Why the loop is shaped for speed (host-device syncs,
the NaN accounting, skipped masks): benchmarks/README.md, "How the loop stays fast".

Writing a part of one's own. A policy is a frozen dataclass of settings; the state of a run is not in
it but in the :class:`Run`, which asks every policy for its state once (``init(run)``, reading what
:class:`Run` lists) and hands it back with each :class:`Observation` (``update(state, obs) -> state``;
states are small dataclasses or tensors, updated in place or anew; :class:`Policy` has the defaults)::

    Start       init(run) -> eta_1
    StepSize    init(run) -> Alpha;  update(state, obs) -> Alpha     (state.alpha (N,) or None,
                                                                      state.restart (N,) bool or None)
    Update      init(run) -> state;  apply(state, eta, s, project) -> (eta, state);
                                     restart(state, mask, eta) -> state
    Keep        init(run) -> state;  update(state, obs) -> state;  result(state, eta) -> eta;
                                     restart(state, mask, eta, g) -> (eta, g)
    Projection  init(run) -> state;  update(state, obs) -> state;  apply(state, v) -> v
    Stop        the attributes ``active`` and ``check_first``
    Dither      fractions(T) -> the T radii eps~_t / eps
    Solver      solver(lin: Linearisation) -> eta* (a Tensor) or a Solution (:mod:`pertattack.solvers`)

No policy reads another's state. What the driver must know about a part, the part declares (never its
type): ``needs_eps`` (Start, StepSize, Projection), ``at_zero`` (Start), ``constant`` (StepSize),
``minimum_norm`` (Projection), ``needs_final_check`` (Keep), ``active`` and ``check_first`` (Stop), and
a solver's ``needs_grad``, ``bounded``, ``separable(ball)`` and ``queries_per_step``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from ._validate import flag, is_number
from .constraints import Box, LpBall, Partition, expand_like
from .noise import Noise
from .objectives import Context, Objective
from .solvers import Linearisation, Solution, Solver

__all__ = [
    "Schedule", "Run", "Observation", "Policy", "Alpha", "Start", "ZeroStart", "RandomStart", "StepSize", "Constant",
    "Halving", "Cosine", "Update", "Plain", "Momentum", "Dither", "Keep", "KeepLast", "KeepBest", "Stop", "NeverStop",
    "WhenFooled", "Projection", "NoProjection", "BallProjection", "AdaptiveBall", "AdaptiveSphere", "apgd_checkpoints"
]


def _number(name: str, value: Any, *, lo: float | None = None, lo_open: bool = False, hi: float | None = None) -> None:
    """Raise a ValueError/TypeError naming ``name`` unless ``value`` is a finite number in range."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi:g}, got {value!r}")


@dataclass
class Observation:
    """What the loop saw at step t (per input, (N,) unless said otherwise).

    Attributes:
        t, steps: the step, from 0 (T for the check after the last step), and T.
        eta: the iterate observed (at the linearisation point: the dithered one).
        point: x + (1 + overshoot) eta in the box, where L and g were taken (None: no gradient).
        value, g: L there (N,) and its gradient (N, ...), or None (the solver takes no gradient).
        fooled: (N,) bool, whether the model's output there fools it, or None.
        rows: the inputs the observation counts for (those in play), or None (no gradient).
        done: the inputs out of play. The stop policy adds those fooled at this step after Keep and
            Projection have seen the observation, before the step size does.
    """

    t: int
    steps: int
    eta: Tensor
    point: Tensor | None
    value: Tensor | None
    g: Tensor | None
    fooled: Tensor | None
    rows: Tensor | None
    done: Tensor


class Policy:
    """The protocol of the policies that keep a state in the run (StepSize, Update, Keep, Projection):
    ``init(run) -> state`` once (None here) and, but for Update, ``update(state, obs) -> state`` after each
    observation (the state unchanged here)."""

    def init(self, run: Run) -> Any:
        return None

    def update(self, state: Any, obs: Observation) -> Any:
        return state


# ---------------------------------------------------------------------------------------- start


class Start:
    """Where eta starts: ``init(run) -> eta_1``. ``at_zero``: eta_1 = 0 (the first linearisation point is x
    itself unless dithered); ``needs_eps``: the start needs a budget."""

    at_zero = False
    needs_eps = False

    def init(self, run: Run) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ZeroStart(Start):
    """eta_1 = 0 (Algorithm 1)."""

    at_zero = True

    def init(self, run: Run) -> Tensor:
        return torch.zeros_like(run.x)


@dataclass(frozen=True)
class RandomStart(Start):
    """eta_1 uniform in the eps ball, then clipped to the box (Madry's PGD, APGD)."""

    needs_eps = True

    def init(self, run: Run) -> Tensor:
        assert run.eps is not None  # the run refuses eps = None for a start that needs_eps
        return run.box.clip(run.x + run.ball.sample(run.x, run.eps, run.noise)) - run.x


# ------------------------------------------------------------------------------------ step size


@dataclass
class Alpha:
    """The state of a step size: the budget alpha (N,) of the next step (None: the solver needs none), and
    the inputs that go back to their best iterate before it (a (N,) bool mask, as APGD does), or None."""

    alpha: Tensor | None
    restart: Tensor | None = None


class StepSize(Policy):
    """The budget alpha of each step: ``init(run) -> Alpha``, ``update(state, obs) -> Alpha`` after each
    observation. ``needs_eps``: alpha is made of eps (for a bounded solver); ``constant``: alpha never
    changes (the loop reads it as one number when every input has the same)."""

    needs_eps = True
    constant = False

    def init(self, run: Run) -> Alpha:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(StepSize):
    """alpha = scale * eps / T (1 for Algorithm 1, 2.5 for Madry's PGD), or alpha = fraction * eps when
    ``fraction`` is given (1.0 for subset attacks: each step spends the whole budget on its subset).
    Unbounded (min-norm) solvers get no alpha."""

    scale: float = 1.0
    fraction: float | None = None
    constant = True

    def __post_init__(self) -> None:
        _number("step_scale", self.scale, lo=0, lo_open=True)
        if self.fraction is not None:
            _number("step_fraction", self.fraction, lo=0, lo_open=True)

    def init(self, run: Run) -> Alpha:
        eps = run.eps
        if eps is None:
            return Alpha(None)
        return Alpha(eps * self.fraction if self.fraction is not None else eps * (self.scale / run.steps))


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size (Croce and Hein 2020, Sec. 3.2):
    w_j = ceil(p_j T), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    ps = [0.0, 0.22]
    while ps[-1] < 1:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    marks = {math.ceil(round(p * steps, 6)) for p in ps[1:]}  # round: 0.41 + 0.16 is 0.5700000000000001
    return sorted(m for m in marks if m < steps)


@dataclass
class _Halving(Alpha):
    """Halving's state: its checkpoints, and per input the best loss, the last loss, the steps whose loss
    improved on the step before (since the last checkpoint), whether alpha was halved at the last one and
    the best loss then."""

    checkpoints: frozenset[int] = frozenset()
    last: int = 0
    best: Tensor | None = None
    prev: Tensor | None = None
    gains: Tensor | None = None
    halved: Tensor | None = None
    best_at_checkpoint: Tensor | None = None


@dataclass(frozen=True)
class Halving(StepSize):
    """APGD's step size: alpha = ``init`` eps at first; at each checkpoint w_j (:func:`apgd_checkpoints`)
    an input's alpha is halved, and it restarts from its best iterate, where

    1. the loss improved at fewer than ``rho`` of the steps since the last checkpoint, or
    2. alpha was not halved at the last checkpoint and the best loss has not improved since.
    """

    init_scale: float = 2.0
    rho: float = 0.75

    def __post_init__(self) -> None:
        _number("init_scale", self.init_scale, lo=0, lo_open=True)
        _number("rho", self.rho, lo=0, hi=1)

    def init(self, run: Run) -> Alpha:
        if run.eps is None:
            raise ValueError("APGD's step sizes need a budget eps")
        n, x = run.x.shape[0], run.x
        return _Halving(run.eps * self.init_scale, checkpoints=frozenset(apgd_checkpoints(run.steps)),
                        best=x.new_full((n,), math.inf), prev=x.new_full((n,), math.inf),
                        gains=torch.zeros(n, dtype=torch.long, device=x.device),
                        halved=torch.zeros(n, dtype=torch.bool, device=x.device))

    def update(self, state: _Halving, obs: Observation) -> Alpha:  # type: ignore[override]
        st = state
        assert st.alpha is not None and st.gains is not None
        st.restart = None
        if obs.value is not None and obs.rows is not None:
            st.gains += (obs.rows & (obs.value < st.prev)).long()
            st.prev = torch.where(obs.rows, obs.value, st.prev)
            st.best = torch.where(obs.rows & (obs.value < st.best), obs.value, st.best)
        if st.best_at_checkpoint is None:
            st.best_at_checkpoint = st.best
        if obs.t + 1 not in st.checkpoints:
            return st
        few_gains = st.gains < self.rho * (obs.t + 1 - st.last)
        stalled = ~st.halved & (st.best >= st.best_at_checkpoint)
        halve = (few_gains | stalled) & ~obs.done
        st.halved = st.restart = halve
        st.best_at_checkpoint, st.last = st.best, obs.t + 1
        st.gains.zero_()
        st.alpha = torch.where(halve, st.alpha / 2, st.alpha)
        return st


@dataclass(frozen=True)
class Cosine(StepSize):
    """FMN's step size, in the units of the norm, annealed from ``first`` to ``last`` by a half cosine:
    alpha_t = last + (first - last) (1 + cos(pi t / T)) / 2. Needs no eps."""

    first: float = 1.0
    last: float = 0.01
    needs_eps = False

    def __post_init__(self) -> None:
        _number("first", self.first, lo=0, lo_open=True)
        _number("last", self.last, lo=0)

    def init(self, run: Run) -> Alpha:
        return Alpha(run.x.new_full((run.x.shape[0],), float(self.first)))

    def update(self, state: Alpha, obs: Observation) -> Alpha:
        assert state.alpha is not None
        a = self.last + (self.first - self.last) * (1 + math.cos(math.pi * obs.t / obs.steps)) / 2
        state.alpha = torch.full_like(state.alpha, a)
        return state


# --------------------------------------------------------------------------------------- update


class Update(Policy):
    """How the solver's step s is added to eta (before the projection): ``init(run) -> state``,
    ``apply(state, eta, s, project) -> (eta, state)`` (eta + s unless overridden); ``restart(state, mask,
    eta)`` after the inputs of ``mask`` went back to their best iterate eta."""

    def apply(self, state: Any, eta: Tensor, s: Tensor, project: Callable[[Tensor], Tensor]) -> tuple[Tensor, Any]:
        return eta + s, state

    def restart(self, state: Any, mask: Tensor, eta: Tensor) -> Any:
        return state


@dataclass(frozen=True)
class Plain(Update):
    """eta + s."""


@dataclass(frozen=True)
class Momentum(Update):
    """APGD's momentum: z = P(eta + s); eta' = eta + a (z - eta) + (1 - a)(eta - eta_prev), a = ``momentum``
    (a plain step at t = 0 and, per input, right after a restart). The state: eta_prev, None at first."""

    momentum: float = 0.75

    def __post_init__(self) -> None:
        _number("momentum", self.momentum, lo=0, hi=1)

    def apply(self, state: Tensor | None, eta: Tensor, s: Tensor,
              project: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        z = project(eta + s)
        if state is None:
            return z, eta
        a = self.momentum
        return eta + a * (z - eta) + (1 - a) * (eta - state), eta

    def restart(self, state: Tensor | None, mask: Tensor, eta: Tensor) -> Tensor | None:
        return None if state is None else torch.where(expand_like(mask, eta), eta, state)


# ----------------------------------------------------------------------------- linearisation point


@dataclass(frozen=True)
class Dither:
    """Dithering radii eps~_t / eps of the linearisation point (Algorithm 1): ``"none"``, ``"first"``
    (eps~_1 = eps, 0 after: pgd-paper, the linear regression attacks), ``"all"`` (eps / T at every
    step), or a sequence of T fractions."""

    radii: str | tuple[float, ...] = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.radii, str):
            try:
                object.__setattr__(self, "radii", tuple(float(r) for r in self.radii))
            except (TypeError, ValueError):
                raise TypeError(f"dither must be 'none', 'first', 'all' or T fractions, got {self.radii!r}") from None
            if any(not math.isfinite(r) or r < 0 for r in self.radii):
                raise ValueError(f"dither needs non-negative fractions of eps (finite), got {self.radii!r}")
        elif self.radii not in ("none", "first", "all"):
            raise ValueError(f"dither must be 'none', 'first', 'all' or T fractions, got {self.radii!r}")

    def fractions(self, steps: int) -> list[float]:
        if isinstance(self.radii, str):
            return {"none": [0.0] * steps, "first": [1.0] + [0.0] * (steps - 1),
                    "all": [1.0 / steps] * steps}[self.radii]
        if len(self.radii) != steps:
            raise ValueError(f"dither needs {steps} non-negative fractions of eps (one per step), "
                             f"got {len(self.radii)}")
        return list(self.radii)


# ----------------------------------------------------------------------------------------- keep


class Keep(Policy):
    """What the run returns: ``init(run) -> state``; ``update(state, obs) -> state`` for every iterate
    observed; ``result(state, eta)`` at the end; ``restart(state, mask, eta, g)``: the best iterate and its
    gradient for the inputs of ``mask``. ``needs_final_check``: the last iterate is observed too (with a
    no-grad forward) before the result."""

    needs_final_check = False

    def restart(self, state: Any, mask: Tensor, eta: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return eta, g

    def result(self, state: Any, eta: Tensor) -> Tensor:
        return eta


@dataclass(frozen=True)
class KeepLast(Keep):
    """The last iterate (Algorithm 1, PGD, DeepFool)."""


@dataclass
class _Best:
    """KeepBest's state, per input: the iterate of the lowest loss (with its loss and gradient), and the
    fooling iterate kept (the first by loss, the smallest by norm) with its norm."""

    ball: LpBall
    value: Tensor
    eta: Tensor
    g: Tensor | None
    adv_eta: Tensor
    adv: Tensor
    adv_norm: Tensor


@dataclass(frozen=True)
class KeepBest(Keep):
    """The best iterate: by ``"loss"`` (APGD: the lowest loss, and any iterate that fooled the model
    wins over it) or by ``"norm"`` (FMN: the smallest perturbation that fooled the model; the last
    iterate where none did)."""

    by: str = "loss"
    needs_final_check = True

    def __post_init__(self) -> None:
        if self.by not in ("loss", "norm"):
            raise ValueError(f"keep: 'loss' or 'norm', got {self.by!r}")

    def init(self, run: Run) -> _Best:
        eta, n = run.eta, run.x.shape[0]
        return _Best(run.ball, eta.new_full((n,), math.inf), eta.clone(), None, eta.clone(),
                     torch.zeros(n, dtype=torch.bool, device=eta.device), eta.new_full((n,), math.inf))

    def update(self, state: _Best, obs: Observation) -> _Best:
        st, eta, g, rows = state, obs.eta, obs.g, obs.rows
        assert rows is not None
        if obs.value is not None:
            better = rows & (obs.value < st.value)
            st.value = torch.where(better, obs.value, st.value)
            st.eta = torch.where(expand_like(better, eta), eta, st.eta)
            if g is not None:
                st.g = g.clone() if st.g is None else torch.where(expand_like(better, g), g, st.g)
        if obs.fooled is not None:
            fooled = obs.fooled & rows
            if self.by == "norm":
                norms = st.ball.norm(eta)
                take = fooled & (norms < st.adv_norm)
                st.adv_norm = torch.where(take, norms, st.adv_norm)
            else:
                take = fooled & ~st.adv
            st.adv_eta = torch.where(expand_like(take, eta), eta, st.adv_eta)
            st.adv = st.adv | fooled
        return st

    def restart(self, state: _Best, mask: Tensor, eta: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        eta = torch.where(expand_like(mask, eta), state.eta, eta)
        if g is not None and state.g is not None:
            g = torch.where(expand_like(mask, g), state.g, g)
        return eta, g

    def result(self, state: _Best, eta: Tensor) -> Tensor:
        fallback = eta if self.by == "norm" else state.eta
        return torch.where(expand_like(state.adv, eta), state.adv_eta, fallback)


# ----------------------------------------------------------------------------------------- stop


class Stop:
    """When an input leaves the loop: ``active``, whether the loop checks at all; ``check_first``, whether
    it checks before the gradient (else from the gradient's own forward)."""

    active = False
    check_first = False


@dataclass(frozen=True)
class NeverStop(Stop):
    """Every input runs all T steps."""


@dataclass(frozen=True)
class WhenFooled(Stop):
    """An input stops once the model is fooled at its iterate. ``check_first``: decide with a no-grad
    forward before any gradient is taken (DeepFool, whose gradient costs one backward per class);
    else from the outputs of the gradient's own forward (one backward per step, no extra forward)."""

    check_first: bool = False
    active = True


# ----------------------------------------------------------------------------------- projection


@dataclass
class _Radius:
    """A projection's state: the ball, its radius (per input (N,), one number, or None: none yet) and, for
    the adaptive ones, what caps it (N,) and whether (and at which smallest norm) each input was fooled."""

    ball: LpBall
    r: Tensor | float | None = None
    cap: Tensor | None = None
    found: Tensor | None = None
    best: Tensor | None = None


class Projection(Policy):
    """What keeps eta in its ball after a step: ``init(run) -> state``, ``update(state, obs) -> state`` after
    each gradient, ``apply(state, v) -> v`` (v itself unless overridden). ``needs_eps``: the projection needs
    a budget; ``minimum_norm``: the radius adapts to each input (one run serves every eps)."""

    needs_eps = False
    minimum_norm = False

    def apply(self, state: Any, v: Tensor) -> Tensor:
        return v


@dataclass(frozen=True)
class NoProjection(Projection):
    """No projection: Algorithm 1's T steps of eps/T stay in the ball by the triangle inequality."""


@dataclass(frozen=True)
class BallProjection(Projection):
    """Projection on the eps ball after every step (PGD, APGD)."""

    needs_eps = True

    def init(self, run: Run) -> _Radius:
        return _Radius(run.ball, run.eps if run.eps_scalar is None else run.eps_scalar)

    def apply(self, state: _Radius, v: Tensor) -> Tensor:
        return state.ball.project(v, state.r)


@dataclass(frozen=True)
class AdaptiveBall(Projection):
    """FMN's adaptive norm constraint (Pintor et al. 2021): the radius r shrinks to (1 - gamma_t) times
    min(r, best fooling norm) while the iterate fools the model, grows by (1 + gamma_t) while it does not
    (before any success: (1 + gamma_t) times the current norm plus the first-order distance to the boundary,
    abs(L) / norm_q(g), so that the iterates cross it),
    gamma_t annealed from ``gamma`` to ``gamma_final`` by a half cosine. Capped at eps when one is given."""

    gamma: float = 0.05
    gamma_final: float = 0.001
    minimum_norm = True

    def __post_init__(self) -> None:
        _number("gamma", self.gamma, lo=0, hi=1)
        _number("gamma_final", self.gamma_final, lo=0, hi=1)

    def init(self, run: Run) -> _Radius:
        x, n = run.x, run.x.shape[0]
        lo, hi = run.box.bounds(x)
        worst = run.ball.norm(torch.maximum(x - lo, hi - x))  # no larger ball changes anything
        return _Radius(run.ball, None, worst if run.eps is None else torch.minimum(worst, run.eps),
                       torch.zeros(n, dtype=torch.bool, device=x.device), x.new_full((n,), math.inf))

    def update(self, state: _Radius, obs: Observation) -> _Radius:
        st, value, g, fooled = state, obs.value, obs.g, obs.fooled
        assert value is not None and g is not None and fooled is not None and obs.rows is not None
        assert st.found is not None and st.best is not None and st.cap is not None
        gamma = self.gamma_final + (self.gamma - self.gamma_final) * (1 + math.cos(math.pi * obs.t / obs.steps)) / 2
        r = st.r if st.r is not None else value.new_full(value.shape, math.inf)
        norms = st.ball.norm(obs.eta)
        counted = fooled & obs.rows  # the smallest fooling norm so far
        st.best = torch.where(counted & (norms < st.best), norms, st.best)
        st.found = st.found | counted
        # before any success: the first-order distance to the boundary, times (1 + gamma) so that the
        # iterates cross it instead of creeping up to it from one side
        first = (norms + value.abs() / st.ball.dual_norm(g).clamp_min(1e-12)) * (1 + gamma)
        grown = torch.where(st.found, r * (1 + gamma), first)
        r = torch.minimum(torch.where(fooled, torch.minimum(r * (1 - gamma), st.best), grown), st.cap)
        st.r = torch.where(obs.done, r if st.r is None else st.r, r)
        return st

    def apply(self, state: _Radius, v: Tensor) -> Tensor:
        return v if state.r is None else state.ball.project(v, state.r)


@dataclass(frozen=True)
class AdaptiveSphere(Projection):
    """DDN's norm rule (Rony et al. 2019, decoupled direction and norm): eta is rescaled onto the sphere of
    radius r after every step; r starts at ``init_radius`` and shrinks by (1 - gamma) while the iterate fools the
    model, grows by (1 + gamma) while it does not. Capped at eps when one is given."""

    init_radius: float = 1.0
    gamma: float = 0.05
    minimum_norm = True

    def __post_init__(self) -> None:
        _number("init_radius", self.init_radius, lo=0, lo_open=True)
        _number("gamma", self.gamma, lo=0, hi=1)

    def init(self, run: Run) -> _Radius:
        return _Radius(run.ball, None, run.eps)

    def update(self, state: _Radius, obs: Observation) -> _Radius:
        assert obs.fooled is not None
        r = state.r if state.r is not None else obs.eta.new_full((obs.eta.shape[0],), float(self.init_radius))
        r = torch.where(obs.fooled, r * (1 - self.gamma), r * (1 + self.gamma))
        if state.cap is not None:
            r = torch.minimum(r, state.cap)
        state.r = torch.where(obs.done, r if state.r is None else state.r, r)
        return state

    def apply(self, state: _Radius, v: Tensor) -> Tensor:
        if state.r is None:
            return v
        return v * expand_like(state.r / state.ball.norm(v).clamp_min(1e-12), v)


# ------------------------------------------------------------------------------------ the driver


@dataclass(frozen=True)
class _ResolvedBox(Box):
    """A :class:`Box` whose bounds were converted and checked once, for the loop's dtype and device.

    ``Box.bounds`` builds two tensors and checks lo <= hi with ``bool(tensor)`` on every call: a
    host-device synchronisation, three times per step in the loop. Same values, same results.
    Scalar bounds (the common [0, 1]) clip with one ``clamp`` instead of a ``minimum`` and a ``maximum``.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_scalars", None)

    @classmethod
    def of(cls, box: Box, like: Tensor) -> _ResolvedBox:
        out = cls(box.lo, box.hi)
        lo, hi = Box.bounds(box, like)
        out._cache[(like.dtype, like.device)] = (lo, hi)  # type: ignore[attr-defined]
        if lo.dim() == 0 and hi.dim() == 0:  # the values as the dtype rounds them: clamp gives the same result
            # rounded on the CPU: no host-device sync
            scalars = [torch.as_tensor(b, dtype=like.dtype).item() for b in (box.lo, box.hi)]
            object.__setattr__(out, "_scalars", tuple(scalars))
        return out

    def bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        got = self._cache.get((like.dtype, like.device))  # type: ignore[attr-defined]
        return got if got is not None else super().bounds(like)

    def clip(self, x: Tensor) -> Tensor:
        sc = self._scalars  # type: ignore[attr-defined]
        if sc is not None and (x.dtype, x.device) in self._cache:  # type: ignore[attr-defined]
            return x.clamp(sc[0], sc[1])
        return super().clip(x)

    def free_directions(self, g: Tensor, x: Tensor) -> Tensor:
        """As :meth:`Box.free_directions`, in 6 elementwise operations instead of 8 (same mask: where
        g > 0 the step is blocked at lo, where g < 0 at hi; never where g = 0 or NaN)."""
        lo, hi = self.bounds(x)
        return g.masked_fill(torch.where(g > 0, x <= lo, (x >= hi) & (g < 0)), 0.0)


#: steps between two refreshes of the inputs in play (a host-device sync) under a stop policy without check_first
#: (APGD, Square): 8 on a GPU, every step on the CPU (benchmarks/README.md, "How the loop stays fast")
SYNC_EVERY = 8
SYNC_EVERY_CPU = 1

_ALIASES = ("random_start", "step_scale", "step_fraction", "project", "early_stop", "box_aware")
#: the policy fields of a :class:`Schedule`, and the class each one's value must be an instance of
POLICIES = {"start": Start, "step_size": StepSize, "update": Update, "dither": Dither, "keep": Keep, "stop": Stop,
            "project": Projection}
#: keywords that were renamed: what each one meant
_RENAMED = {"step": "steps= (the number of steps) or step_fraction= (alpha = step_fraction * eps)",
            "lin_point": "dither= (a Dither policy, or 'none', 'first', 'all' or T fractions)",
            "init": "init_radius= (DDN's first radius, AdaptiveSphere)"}


@dataclass(frozen=True)
class Schedule:
    """How many steps and how each is taken: one driver loop, configured by policies.

    Args:
        steps: T, the number of steps (linearisations; the most, with a stop policy).
        start: :class:`ZeroStart` or :class:`RandomStart`.
        step_size: :class:`Constant`, :class:`Halving` (APGD) or :class:`Cosine` (FMN).
        update: :class:`Plain` or :class:`Momentum` (APGD).
        dither: :class:`Dither`, the dithering radii of the linearisation point (Algorithm 1).
        keep: :class:`KeepLast` or :class:`KeepBest` (by loss: APGD; by norm: FMN).
        stop: :class:`NeverStop` or :class:`WhenFooled`.
        project: :class:`NoProjection`, :class:`BallProjection` or :class:`AdaptiveBall` (FMN).
        overshoot: the linearisation point and the result are x + (1 + overshoot) eta (DeepFool's 0.02).
        mask_blocked: the solver sees the gradient on the coordinates a step can move only
            (:meth:`Box.free_directions`): the linearised problem is solved on ball-and-box.
        clip_iterates: x + eta is kept in the box after every step (else only the linearisation points
            and the result are clipped, as classic DeepFool does).
        push: added to the distance of min-norm steps after the first (classic DeepFool: 1e-4).

    :meth:`with_` (and ``get_attack``) also take ``dither`` as radii, ``project`` as a bool and the convenience
    keywords ``random_start``, ``step_scale``, ``step_fraction``, ``early_stop``, ``box_aware``: see
    :data:`pertattack.keywords.KEYWORDS`.
    """

    steps: int = 1
    start: Start = field(default_factory=ZeroStart)
    step_size: StepSize = field(default_factory=Constant)
    update: Update = field(default_factory=Plain)
    dither: Dither = field(default_factory=Dither)
    keep: Keep = field(default_factory=KeepLast)
    stop: Stop = field(default_factory=NeverStop)
    project: Projection = field(default_factory=NoProjection)
    overshoot: float = 0.0
    mask_blocked: bool = True
    clip_iterates: bool = True
    push: float = 0.0

    def __post_init__(self) -> None:
        if not is_number(self.steps) or not math.isfinite(self.steps) \
                or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        _number("overshoot", self.overshoot, lo=0)
        _number("push", self.push, lo=0)
        flag("mask_blocked", self.mask_blocked)
        flag("clip_iterates", self.clip_iterates)
        for name, kind in POLICIES.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"schedule {name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        self.dither.fractions(self.steps)

    @classmethod
    def of(cls, **kw: Any) -> Schedule:
        """A schedule from fields and convenience keywords: ``Schedule.of(steps=10, dither="first")``."""
        return cls(steps=kw.pop("steps", 1)).with_(**kw)

    def dither_radii(self) -> list[float]:
        """eps~_t / eps for t = 1..T."""
        return self.dither.fractions(self.steps)

    def with_(self, **kw: Any) -> Schedule:
        """A copy with fields or convenience keywords changed (see the class docstring)."""
        out: dict[str, Any] = {}
        for k, v in kw.items():
            if k in _RENAMED:
                raise TypeError(f"schedule keyword {k!r} was renamed: {_RENAMED[k]}")
            if k == "random_start":
                out["start"] = RandomStart() if flag(k, v) else ZeroStart()
            elif k in ("step_scale", "step_fraction"):
                cur = out.get("step_size", self.step_size)
                base = cur if isinstance(cur, Constant) else Constant()
                out["step_size"] = replace(base, **{"scale" if k == "step_scale" else "fraction": v})
            elif k == "dither" and not isinstance(v, Dither):
                out["dither"] = Dither(v)
            elif k == "project" and not isinstance(v, Projection):
                out["project"] = BallProjection() if flag(k, v) else NoProjection()
            elif k == "early_stop":
                out["stop"] = WhenFooled(check_first=True) if flag(k, v) else NeverStop()
            elif k == "box_aware":
                aware = flag(k, v)
                out.update(mask_blocked=aware, clip_iterates=aware, push=0.0 if aware else 1e-4)
            else:
                out[k] = v
        return replace(self, **out)

    @staticmethod
    def keywords() -> list[str]:
        """The fields and convenience keywords (and the renamed ones, which :meth:`with_` refuses by name)."""
        return [f.name for f in fields(Schedule)] + list(_ALIASES) + list(_RENAMED)

    def run(self, forward: Callable[[Tensor], Tensor], x: Tensor, eps: Tensor | None, objective: Objective,
            solver: Solver, ball: LpBall, box: Box, ctx: Context, noise: Noise | None = None,
            progress: Callable[[int], None] | None = None,
            partition: Partition | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Algorithm 1: return the final eta (N, ...), the number of steps each input took (N,) and the
        per-input figures the solver reported (e.g. ``sigma`` of quadratic-l2, ``queries`` of Square).

        ``eps`` is the per-input budget (N,), or None for unbounded (min-norm) attacks.
        """
        run = Run(self, forward, x, eps, objective, solver, ball, box, ctx, noise, partition)
        for t in range(self.steps):
            eta, point = run.linearisation_point(t)
            if not run.in_play(t, point):  # every input is done
                break
            obs = run.gradient(t, eta, point)
            run.observe(obs)
            run.take_step(run.adapt_step(obs))
            if progress is not None:
                progress(1)
            if run.all_done(t):
                break
        return run.finish()


@dataclass
class _States:
    """The state of every policy of a run, as its ``init`` made it and its updates left it."""

    step_size: Alpha
    keep: Any
    project: Any
    update: Any
    solver: Any = None


class Run:
    """One run of a :class:`Schedule`: what the policies read (``x``, ``eps`` (N,) or None, ``eps_scalar``,
    ``ball``, ``box``, ``noise``, ``steps``, ``eta``, ``done``), the state of every policy (``state``), and the
    phases of Algorithm 1, one method each, in the order :meth:`Schedule.run` calls them."""

    def __init__(self, schedule: Schedule, forward: Callable[[Tensor], Tensor], x: Tensor, eps: Tensor | None,
                 objective: Objective, solver: Solver, ball: LpBall, box: Box, ctx: Context,
                 noise: Noise | None = None, partition: Partition | None = None) -> None:
        s = self.schedule = schedule
        n = x.shape[0]
        self.forward, self.x, self.eps, self.objective, self.solver, self.ball, self.ctx = \
            forward, x, eps, objective, solver, ball, ctx
        self.box = _ResolvedBox.of(box, x) if type(box) is Box else box
        self.noise = noise if noise is not None else Noise.create(None, n, x.device)
        self.partition = partition if partition is not None else Partition()
        self.steps, self.radii, self.scale = s.steps, s.dither.fractions(s.steps), 1.0 + s.overshoot
        needs_eps = (solver.bounded and s.step_size.needs_eps) or s.start.needs_eps or s.project.needs_eps \
            or any(self.radii)
        if eps is None and needs_eps:
            raise ValueError(f"{solver} with this schedule needs a budget eps")
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.eps_scalar = self.alpha_scalar = None
        alpha = s.step_size.init(self)
        self._read_scalars(alpha.alpha)
        self.eta = s.start.init(self)
        self.state = _States(alpha, s.keep.init(self), s.project.init(self), s.update.init(self))
        self.info: dict[str, Tensor] = {}
        # without a stop policy no input is ever done: no freezing, every input takes every step
        self.freezes = s.stop.active
        self.used = torch.zeros(n, dtype=torch.long, device=x.device)
        self.taken = 0
        self.rows = None if self.freezes else ~self.done  # the inputs in play, when that never changes
        self.act: Tensor | None = None  # the inputs in play (indices) at the last refresh
        self.sync_every = SYNC_EVERY_CPU if x.device.type == "cpu" else SYNC_EVERY
        self.nonfinite: Tensor | None = None  # (N,): NaN (or inf) once L or g was not finite, else 0
        self.mask_after_first = s.mask_blocked and not (s.clip_iterates and solver.separable(ball))
        self._last: tuple[Tensor, Tensor] | None = None  # the last projected eta and its point x + eta

    def _read_scalars(self, alpha: Tensor | None) -> None:
        """eps (and a constant alpha) as one number when every input has the same: one sync per run."""
        eps = self.eps
        if eps is None or not self.x.shape[0]:
            return
        same = (eps == eps[0]).all().to(eps.dtype)
        a0 = alpha[0].to(eps.dtype) if alpha is not None else eps[0]
        uniform, e0, a0 = torch.stack([same, eps[0], a0]).tolist()
        if uniform:
            self.eps_scalar = e0
            if self.schedule.step_size.constant and alpha is not None:
                self.alpha_scalar = a0

    def linearisation_point(self, t: int) -> tuple[Tensor, Tensor]:
        """eta + random(eps~_t) (Algorithm 1's dithering) and its point x + (1 + overshoot) eta in the box."""
        eta = self.eta
        if self.radii[t] > 0:
            assert self.eps is not None
            eta = eta + self.ball.sample(self.x, self.eps * self.radii[t], self.noise)
        return eta, self._at(eta)

    def in_play(self, t: int, point: Tensor) -> bool:
        """Refresh the inputs in play under a stop policy (a sync): at every step with ``check_first`` (whose
        no-grad forward decides who is done first), every ``SYNC_EVERY`` steps else. False once all are done."""
        stop = self.schedule.stop
        if not stop.active:
            return True
        if stop.check_first:
            act = (~self.done).nonzero().squeeze(1)
            with torch.no_grad():
                self.done[act] = self.objective.fooled(self.forward(point[act]), self.ctx.subset(act))
        if self.solver.needs_grad and (stop.check_first or t % self.sync_every == 0):
            self.act = (~self.done).nonzero().squeeze(1)
            return self.act.numel() > 0
        return True

    def gradient(self, t: int, eta: Tensor, point: Tensor) -> Observation:
        """L and its gradient at the point (for the inputs in play only), and whether the model is fooled there."""
        value = g = fooled = rows = None
        if self.solver.needs_grad:
            x, n, obj, ctx, act = self.x, self.x.shape[0], self.objective, self.ctx, self.act
            if act is not None and act.numel() < n:  # act: set by a stop policy
                v_act, g_act, out_act = obj.value_and_grad(self.forward, point[act], ctx.subset(act))
                value = x.new_zeros(n).index_copy(0, act, v_act.to(x.dtype))
                g = torch.zeros_like(x).index_copy(0, act, g_act.to(x.dtype))
                if obj.classification:
                    fooled = torch.zeros_like(self.done).index_copy(0, act, obj.fooled(out_act, ctx.subset(act)))
            else:
                value, g, out = obj.value_and_grad(self.forward, point, ctx)
                if value.dtype != x.dtype or g.dtype != x.dtype:
                    value, g = value.to(x.dtype), g.to(x.dtype)
                if obj.classification and (self.schedule.keep.needs_final_check or self.schedule.stop.active):
                    fooled = obj.fooled(out, ctx)
            # NaN/inf in L or g (reported as info['nonfinite']): accumulated without a sync, L + 0 max abs(g)
            seen = (value + g.reshape(n, -1).abs().amax(dim=1) * 0) * 0
            if self.schedule.stop.active:  # inputs done before this step do not count
                seen = torch.where(self.done, 0.0, seen)
            self.nonfinite = seen if self.nonfinite is None else self.nonfinite.add_(seen)
            rows = ~self.done if self.rows is None else self.rows
        return Observation(t, self.steps, eta, point, value, g, fooled, rows, self.done)

    def observe(self, obs: Observation) -> None:
        """Keep and the projection see the gradient's observation; the stop policy marks the fooled done."""
        if not self.solver.needs_grad:
            return
        s, st = self.schedule, self.state
        st.keep = s.keep.update(st.keep, obs)
        st.project = s.project.update(st.project, obs)
        if s.stop.active and not s.stop.check_first and obs.fooled is not None:
            self.done = obs.done = self.done | obs.fooled

    def adapt_step(self, obs: Observation) -> Observation:
        """alpha of the next step; APGD's restart from the best iterate and its gradient (no momentum there)."""
        s, st = self.schedule, self.state
        st.step_size = s.step_size.update(st.step_size, obs)
        mask = st.step_size.restart
        if mask is None:
            return obs
        self.eta, g = s.keep.restart(st.keep, mask, self.eta, obs.g)
        st.update = s.update.restart(st.update, mask, self.eta)
        return replace(obs, point=self._at(self.eta), g=g)

    def take_step(self, obs: Observation) -> None:
        """eta <- P(update(eta, solver(g, L, alpha))) for the inputs in play; a score-based solver's new
        iterates that fool the model are observed and done."""
        s, st, t, g, x = self.schedule, self.state, obs.t, obs.g, self.x
        alpha = st.step_size.alpha
        assert obs.point is not None
        if g is not None:
            if s.mask_blocked and (t == 0 or self.radii[t] > 0 or self.mask_after_first):
                g = self.box.free_directions(g, obs.point)
            if t == 0:
                _warn_if_flat(g, self.done, alpha, self.objective)
        alpha = alpha if alpha is not None else x.new_zeros(x.shape[0])
        lin = Linearisation(obs.point, g, obs.value, alpha, self.ball, self.forward, self.noise, st.solver, self.box,
                            s.push if t > 0 else 0.0, self.partition, x, t, s.steps, self.objective, self.ctx,
                            self.alpha_scalar, self.eps)
        out = self.solver(lin)
        step, fooled = out, None
        if isinstance(out, Solution):
            step, fooled, st.solver = out.eta, out.fooled, out.state
            self.info.update(out.info)
        new, st.update = s.update.apply(st.update, self.eta, step, self._project)
        new = self._project(new)
        if self.freezes:
            active = ~self.done
            self.eta = torch.where(expand_like(active, self.eta), new, self.eta)
            self.used = self.used + active.long()
        else:
            active = self.done.logical_not() if fooled is not None else None
            self.eta = new
            self.taken += 1
        if fooled is not None:
            obs = Observation(t, self.steps, self.eta, None, None, None, fooled, active, self.done)
            st.keep = s.keep.update(st.keep, obs)
            if s.stop.active:
                self.done = self.done | fooled

    def all_done(self, t: int) -> bool:
        """A score-based solver's stop (Square): every input done, checked every ``SYNC_EVERY`` steps."""
        return self.schedule.stop.active and not self.solver.needs_grad and (t + 1) % self.sync_every == 0 \
            and bool(self.done.all())

    def finish(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The kept iterate, x + (1 + overshoot) eta in the box and, given eps, exactly in its ball."""
        s, x, eta = self.schedule, self.x, self.eta
        if s.keep.needs_final_check:
            with torch.no_grad():
                point = self._at(eta)
                out = self.forward(point)
                value = self.objective.loss(out, self.ctx)
                fooled = self.objective.fooled(out, self.ctx) if self.objective.classification else None
            obs = Observation(self.steps, self.steps, eta, point, value, None, fooled, ~self.done, self.done)
            self.state.keep = s.keep.update(self.state.keep, obs)
        eta = self._at(s.keep.result(self.state.keep, eta)) - x
        if self.eps is not None:  # exact budget, whatever the float rounding of T steps
            eps = self.eps if self.eps_scalar is None else self.eps_scalar
            eta = self.box.clip(x + self.ball.project(eta, eps)) - x
        info = dict(self.info)
        if self.nonfinite is not None:
            info["nonfinite"] = ~torch.isfinite(self.nonfinite)
        return eta, self.used if self.freezes else self.used + self.taken, info

    def _project(self, v: Tensor) -> Tensor:
        """The projection policy, then (clip_iterates) x + (1 + overshoot) v into the box."""
        v = self.schedule.project.apply(self.state.project, v)
        if self.schedule.clip_iterates:
            if self.scale == 1.0:
                point = self.box.clip(self.x + v)
                v = point - self.x
                self._last = (v, point)  # the next linearisation point is this point itself
            else:
                v = (self.box.clip(self.x + self.scale * v) - self.x) / self.scale
        return v

    def _at(self, v: Tensor) -> Tensor:
        """x + (1 + overshoot) v in the box (1.0 * v == v exactly: the product is skipped)."""
        if self._last is not None and v is self._last[0]:
            return self._last[1]
        return self.box.clip(self.x + v if self.scale == 1.0 else self.x + self.scale * v)


def _warn_if_flat(g: Tensor, done: Tensor, alpha: Tensor | None, objective: Objective) -> None:
    flat = g.reshape(g.shape[0], -1).abs().amax(dim=1) == 0
    if bool((flat & ~done & (alpha != 0 if alpha is not None else True)).any()):
        why = (" (saturated model or gradient masking?)" if objective.classification else
               "; a regression objective with y = f(x) is flat at eta = 0: dither the first linearisation point "
               "(dither='first' or 'all')")
        warnings.warn("the gradient of the objective is exactly zero for some inputs at the first step" + why,
                      stacklevel=6)
