"""Schedules: the one iteration loop of the project and the policies it is made of (Algorithm 1).

    eta = start(x, eps)                                        # zero, or random in the ball
    alpha = step_size.init(eps, T)                             # eps/T, 2.5 eps/T, APGD's 2 eps, ...
    for t = 1..T:
        x_lin = x + (1 + overshoot) (eta + random(eps~_t))     # lin_point: dithering (Alg. 1)
        L, g  = grad L(x_lin)                                  # only inputs still in play (stop)
        keep.observe(eta, L, fooled)                           # last / best by loss / best by norm
        alpha, restart = step_size.update(t, keep)             # APGD: halve where progress stalled
        eta   = update(eta, solver(g, L, alpha, constraint))   # plain or momentum
        eta   = project(eta)                                   # none / eps ball / FMN's adaptive ball
    return keep.result(eta)

Presets are combinations of these policies (attacks.py): Algorithm 1 is Constant(1) steps without
projection (T steps of eps/T stay in the ball); Madry's PGD a random start, Constant(2.5) steps and
the eps-ball projection; pgd-paper Algorithm 1 dithered once; DeepFool min-norm steps (unbounded)
stopped per input when fooled; APGD (Croce and Hein 2020) a random start, Halving step sizes, Momentum
and the best iterate; FMN (Pintor et al. 2021) Cosine step sizes, an adaptive ball and the smallest
fooling iterate; Square (Andriushchenko et al. 2020) a score-only solver under the same loop.

Every step is batched; inputs that are done are frozen with ``torch.where``, and gradients are taken for
the inputs still in play only. The box is handled by three separate switches: ``mask_blocked`` (the
solver sees the gradient on the free coordinates only, :meth:`Box.free_directions`), ``clip_iterates``
(x + eta is kept in the box after every step) and ``push`` (classic DeepFool adds a hair to the
distance of its later min-norm steps so that iterates cannot creep up to the boundary from one side).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from ._validate import is_number
from .constraints import Box, LpBall, Partition, expand_like
from .noise import Noise
from .objectives import Context, Objective
from .solvers import Solver, Step

__all__ = [
    "Schedule",
    "Start",
    "ZeroStart",
    "RandomStart",
    "StepSize",
    "Constant",
    "Halving",
    "Cosine",
    "Update",
    "Plain",
    "Momentum",
    "Dither",
    "Keep",
    "KeepLast",
    "KeepBest",
    "Stop",
    "NeverStop",
    "WhenFooled",
    "Projection",
    "NoProjection",
    "BallProjection",
    "AdaptiveBall",
    "AdaptiveSphere",
    "apgd_checkpoints",
]


def _number(name: str, value: Any, *, lo: float | None = None, lo_open: bool = False, hi: float | None = None,
            integer: bool = False) -> None:
    """Raise a ValueError/TypeError naming ``name`` unless ``value`` is a finite number in range."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi:g}, got {value!r}")


@dataclass
class Loop:
    """The state of one run that the policies read: per input (N,) unless said otherwise."""

    x: Tensor
    eps: Tensor | None
    ball: LpBall
    box: Box
    noise: Noise
    steps: int
    done: Tensor
    state: dict[str, Any] = field(default_factory=dict)
    #: eps as one number when every input has the same budget (a linf projection is then one clamp)
    eps_scalar: float | None = None


# ---------------------------------------------------------------------------------------- start


class Start:
    """Where eta starts."""

    def __call__(self, loop: Loop) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ZeroStart(Start):
    """eta_1 = 0 (Algorithm 1)."""

    def __call__(self, loop: Loop) -> Tensor:
        return torch.zeros_like(loop.x)


@dataclass(frozen=True)
class RandomStart(Start):
    """eta_1 uniform in the eps ball, then clipped to the box (Madry's PGD, APGD)."""

    def __call__(self, loop: Loop) -> Tensor:
        if loop.eps is None:
            raise ValueError("a random start needs a budget eps")
        return loop.box.clip(loop.x + loop.ball.sample(loop.x, loop.eps, loop.noise)) - loop.x


# ------------------------------------------------------------------------------------ step size


class StepSize:
    """The budget alpha (N,) of each step. ``update`` may change it after step t and ask for a restart
    from the best iterate (a (N,) bool mask), as APGD does."""

    def init(self, eps: Tensor | None, steps: int, like: Tensor) -> Tensor | None:  # pragma: no cover
        raise NotImplementedError

    def update(self, t: int, alpha: Tensor | None, loop: Loop, keep: Keep) -> tuple[Tensor | None, Tensor | None]:
        return alpha, None


@dataclass(frozen=True)
class Constant(StepSize):
    """alpha = scale * eps / T (1 for Algorithm 1, 2.5 for Madry's PGD), or alpha = fraction * eps when
    ``fraction`` is given (1.0 for subset attacks: each step spends the whole budget on its subset).
    Unbounded (min-norm) solvers get no alpha."""

    scale: float = 1.0
    fraction: float | None = None

    def __post_init__(self) -> None:
        _number("step_scale", self.scale, lo=0, lo_open=True)
        if self.fraction is not None:
            _number("step", self.fraction, lo=0, lo_open=True)

    def init(self, eps: Tensor | None, steps: int, like: Tensor) -> Tensor | None:
        if eps is None:
            return None
        return eps * self.fraction if self.fraction is not None else eps * (self.scale / steps)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size (Croce and Hein 2020, Sec. 3.2):
    w_j = ceil(p_j T), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    ps = [0.0, 0.22]
    while ps[-1] < 1:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    marks = {math.ceil(round(p * steps, 6)) for p in ps[1:]}  # round: 0.41 + 0.16 is 0.5700000000000001
    return sorted(m for m in marks if m < steps)


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

    def init(self, eps: Tensor | None, steps: int, like: Tensor) -> Tensor | None:
        if eps is None:
            raise ValueError("APGD's step sizes need a budget eps")
        return eps * self.init_scale

    def update(self, t: int, alpha: Tensor | None, loop: Loop, keep: Keep) -> tuple[Tensor | None, Tensor | None]:
        assert alpha is not None
        st = loop.state
        if "checkpoints" not in st:
            st["checkpoints"] = apgd_checkpoints(loop.steps)
            st["last_ckpt"] = 0
            st["halved"] = torch.zeros_like(loop.done)
            st["best_at_ckpt"] = keep.best_value.clone()
        if t + 1 not in st["checkpoints"]:
            return alpha, None
        since = t + 1 - st["last_ckpt"]
        few_gains = keep.gains < self.rho * since
        stalled = ~st["halved"] & (keep.best_value >= st["best_at_ckpt"])
        halve = (few_gains | stalled) & ~loop.done
        st["halved"] = halve
        st["best_at_ckpt"] = keep.best_value.clone()
        st["last_ckpt"] = t + 1
        keep.gains.zero_()
        return torch.where(halve, alpha / 2, alpha), halve


@dataclass(frozen=True)
class Cosine(StepSize):
    """FMN's step size, in the units of the norm, annealed from ``first`` to ``last`` by a half cosine:
    alpha_t = last + (first - last) (1 + cos(pi t / T)) / 2. Needs no eps."""

    first: float = 1.0
    last: float = 0.01

    def __post_init__(self) -> None:
        _number("first", self.first, lo=0, lo_open=True)
        _number("last", self.last, lo=0)

    def init(self, eps: Tensor | None, steps: int, like: Tensor) -> Tensor | None:
        return like.new_full((like.shape[0],), float(self.first))

    def update(self, t: int, alpha: Tensor | None, loop: Loop, keep: Keep) -> tuple[Tensor | None, Tensor | None]:
        assert alpha is not None
        a = self.last + (self.first - self.last) * (1 + math.cos(math.pi * t / loop.steps)) / 2
        return torch.full_like(alpha, a), None


# --------------------------------------------------------------------------------------- update


class Update:
    """How the solver's step s is added to eta (before the projection)."""

    def __call__(self, t: int, eta: Tensor, s: Tensor, loop: Loop, project: Callable[[Tensor], Tensor]) -> Tensor:
        raise NotImplementedError  # pragma: no cover


@dataclass(frozen=True)
class Plain(Update):
    """eta + s."""

    def __call__(self, t: int, eta: Tensor, s: Tensor, loop: Loop, project: Callable[[Tensor], Tensor]) -> Tensor:
        return eta + s


@dataclass(frozen=True)
class Momentum(Update):
    """APGD's momentum: z = P(eta + s); eta' = eta + a (z - eta) + (1 - a)(eta - eta_prev), a = ``momentum``
    (a plain step at t = 0 and right after a restart)."""

    momentum: float = 0.75

    def __post_init__(self) -> None:
        _number("momentum", self.momentum, lo=0, hi=1)

    def __call__(self, t: int, eta: Tensor, s: Tensor, loop: Loop, project: Callable[[Tensor], Tensor]) -> Tensor:
        prev = loop.state.get("eta_prev")
        z = project(eta + s)
        loop.state["eta_prev"] = eta
        if prev is None:
            return z
        a = self.momentum
        return eta + a * (z - eta) + (1 - a) * (eta - prev)


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


class Keep:
    """What the run returns: it observes every iterate with its loss, gradient and whether it fooled
    the model. ``best_value`` (N,) and ``gains`` (N,) (steps whose loss improved on the step before,
    since the last reset) serve APGD's step-size rule."""

    needs_final_check = False

    def start(self, eta: Tensor) -> None:
        pass

    def observe(self, eta: Tensor, value: Tensor | None, g: Tensor | None, fooled: Tensor | None, ball: LpBall,
                rows: Tensor) -> None:
        pass

    def restart(self, mask: Tensor, eta: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return eta, g

    def result(self, eta: Tensor) -> Tensor:
        return eta


@dataclass
class KeepLast(Keep):
    """The last iterate (Algorithm 1, PGD, DeepFool)."""


@dataclass
class KeepBest(Keep):
    """The best iterate: by ``"loss"`` (APGD: the lowest loss, and any iterate that fooled the model
    wins over it) or by ``"norm"`` (FMN: the smallest perturbation that fooled the model; the last
    iterate where none did)."""

    by: str = "loss"
    needs_final_check = True

    def __post_init__(self) -> None:
        if self.by not in ("loss", "norm"):
            raise ValueError(f"keep: 'loss' or 'norm', got {self.by!r}")

    def start(self, eta: Tensor) -> None:
        n = eta.shape[0]
        self.best_value = eta.new_full((n,), math.inf)
        self.prev_value = eta.new_full((n,), math.inf)
        self.gains = torch.zeros(n, dtype=torch.long, device=eta.device)
        self.best_eta = eta.clone()
        self.best_g: Tensor | None = None
        self.adv_eta = eta.clone()
        self.adv = torch.zeros(n, dtype=torch.bool, device=eta.device)
        self.adv_norm = eta.new_full((n,), math.inf)

    def observe(self, eta: Tensor, value: Tensor | None, g: Tensor | None, fooled: Tensor | None, ball: LpBall,
                rows: Tensor) -> None:
        if value is not None:
            self.gains += (rows & (value < self.prev_value)).long()
            self.prev_value = torch.where(rows, value, self.prev_value)
            better = rows & (value < self.best_value)
            self.best_value = torch.where(better, value, self.best_value)
            self.best_eta = torch.where(expand_like(better, eta), eta, self.best_eta)
            if g is not None:
                self.best_g = g.clone() if self.best_g is None else torch.where(expand_like(better, g), g, self.best_g)
        if fooled is not None:
            fooled = fooled & rows
            if self.by == "norm":
                norms = ball.norm(eta)
                take = fooled & (norms < self.adv_norm)
                self.adv_norm = torch.where(take, norms, self.adv_norm)
            else:
                take = fooled & ~self.adv
            self.adv_eta = torch.where(expand_like(take, eta), eta, self.adv_eta)
            self.adv = self.adv | fooled

    def restart(self, mask: Tensor, eta: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        eta = torch.where(expand_like(mask, eta), self.best_eta, eta)
        if g is not None and self.best_g is not None:
            g = torch.where(expand_like(mask, g), self.best_g, g)
        return eta, g

    def result(self, eta: Tensor) -> Tensor:
        fallback = eta if self.by == "norm" else self.best_eta
        return torch.where(expand_like(self.adv, eta), self.adv_eta, fallback)


# ----------------------------------------------------------------------------------------- stop


class Stop:
    """When an input leaves the loop."""

    active = False  # whether the loop checks at all
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


class Projection:
    """What keeps eta in its ball after a step."""

    def radius(self, loop: Loop) -> Tensor | None:
        return loop.eps

    def apply(self, v: Tensor, loop: Loop) -> Tensor:
        r = self.radius(loop)
        return v if r is None else loop.ball.project(v, r)

    def observe(self, t: int, loop: Loop, eta: Tensor, value: Tensor | None, g: Tensor | None,
                fooled: Tensor | None, keep: Keep) -> None:
        pass


@dataclass(frozen=True)
class NoProjection(Projection):
    """No projection: Algorithm 1's T steps of eps/T stay in the ball by the triangle inequality."""

    def radius(self, loop: Loop) -> Tensor | None:
        return None


@dataclass(frozen=True)
class BallProjection(Projection):
    """Projection on the eps ball after every step (PGD, APGD)."""

    def apply(self, v: Tensor, loop: Loop) -> Tensor:
        assert loop.eps is not None
        return loop.ball.project(v, loop.eps if loop.eps_scalar is None else loop.eps_scalar)


@dataclass(frozen=True)
class AdaptiveBall(Projection):
    """FMN's adaptive norm constraint (Pintor et al. 2021): the radius r shrinks to (1 - gamma_t) times
    min(r, best fooling norm) while the iterate fools the model, grows by (1 + gamma_t) while it does not
    (before any success: (1 + gamma_t) times the current norm plus the first-order distance to the boundary,
    |L| / norm_q(g), so that the iterates cross it),
    gamma_t annealed from ``gamma`` to ``gamma_final`` by a half cosine. Capped at eps when one is given."""

    gamma: float = 0.05
    gamma_final: float = 0.001

    def __post_init__(self) -> None:
        _number("gamma", self.gamma, lo=0, hi=1)
        _number("gamma_final", self.gamma_final, lo=0, hi=1)

    def radius(self, loop: Loop) -> Tensor | None:
        return loop.state.get("radius")

    def observe(self, t: int, loop: Loop, eta: Tensor, value: Tensor | None, g: Tensor | None,
                fooled: Tensor | None, keep: Keep) -> None:
        assert value is not None and g is not None and fooled is not None
        gamma = self.gamma_final + (self.gamma - self.gamma_final) * (1 + math.cos(math.pi * t / loop.steps)) / 2
        r = loop.state.get("radius")
        if r is None:
            r = value.new_full(value.shape, math.inf)
        norms = loop.ball.norm(eta)
        found = keep.adv if isinstance(keep, KeepBest) else fooled
        best = keep.adv_norm if isinstance(keep, KeepBest) else norms
        # before any success: the first-order distance to the boundary, times (1 + gamma) so that the
        # iterates cross it instead of creeping up to it from one side
        first = (norms + value.abs() / loop.ball.dual_norm(g).clamp_min(1e-12)) * (1 + gamma)
        grown = torch.where(found, r * (1 + gamma), first)
        r = torch.where(fooled, torch.minimum(r * (1 - gamma), best), grown)
        lo, hi = loop.box.bounds(loop.x)
        worst = loop.ball.norm(torch.maximum(loop.x - lo, hi - loop.x))  # no larger ball changes anything
        r = torch.minimum(r, worst if loop.eps is None else torch.minimum(worst, loop.eps))
        loop.state["radius"] = torch.where(loop.done, loop.state.get("radius", r), r)


@dataclass(frozen=True)
class AdaptiveSphere(Projection):
    """DDN's norm rule (Rony et al. 2019, decoupled direction and norm): eta is rescaled onto the sphere of
    radius r after every step; r starts at ``init`` and shrinks by (1 - gamma) while the iterate fools the
    model, grows by (1 + gamma) while it does not. Capped at eps when one is given."""

    init: float = 1.0
    gamma: float = 0.05

    def __post_init__(self) -> None:
        _number("init", self.init, lo=0, lo_open=True)
        _number("gamma", self.gamma, lo=0, hi=1)

    def radius(self, loop: Loop) -> Tensor | None:
        return loop.state.get("radius")

    def apply(self, v: Tensor, loop: Loop) -> Tensor:
        r = loop.state.get("radius")
        if r is None:
            return v
        return v * expand_like(r / loop.ball.norm(v).clamp_min(1e-12), v)

    def observe(self, t: int, loop: Loop, eta: Tensor, value: Tensor | None, g: Tensor | None,
                fooled: Tensor | None, keep: Keep) -> None:
        assert fooled is not None
        r = loop.state.get("radius")
        if r is None:
            r = eta.new_full((eta.shape[0],), float(self.init))
        r = torch.where(fooled, r * (1 - self.gamma), r * (1 + self.gamma))
        if loop.eps is not None:
            r = torch.minimum(r, loop.eps)
        loop.state["radius"] = torch.where(loop.done, loop.state.get("radius", r), r)


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


#: steps between two host-device syncs of a stop policy without check_first (APGD, Square) on a GPU: the inputs
#: still in play are refreshed, and the loop ends once every input is done, at most SYNC_EVERY - 1 steps late.
#: On the CPU a sync costs nothing and the inputs done since the last refresh would cost their gradients (APGD-CE
#: at batch 1024 on LeNet-5 took 8% longer with 8): it refreshes at every step (SYNC_EVERY_CPU).
SYNC_EVERY = 8
SYNC_EVERY_CPU = 1

_ALIASES = ("random_start", "step_scale", "step", "dither", "project", "early_stop", "box_aware")


@dataclass(frozen=True)
class Schedule:
    """How many steps and how each is taken: one driver loop, configured by policies.

    Args:
        steps: T, the number of linearisations (the most, with a stop policy).
        start: :class:`ZeroStart` or :class:`RandomStart`.
        step_size: :class:`Constant`, :class:`Halving` (APGD) or :class:`Cosine` (FMN).
        update: :class:`Plain` or :class:`Momentum` (APGD).
        lin_point: :class:`Dither`, the dithering radii of the linearisation point (Algorithm 1).
        keep: :class:`KeepLast` or :class:`KeepBest` (by loss: APGD; by norm: FMN).
        stop: :class:`NeverStop` or :class:`WhenFooled`.
        project: :class:`NoProjection`, :class:`BallProjection` or :class:`AdaptiveBall` (FMN).
        overshoot: the linearisation point and the result are x + (1 + overshoot) eta (DeepFool's 0.02).
        mask_blocked: the solver sees the gradient on the coordinates a step can move only
            (:meth:`Box.free_directions`): the linearised problem is solved on ball-and-box.
        clip_iterates: x + eta is kept in the box after every step (else only the linearisation points
            and the result are clipped, as classic DeepFool does).
        push: added to the distance of min-norm steps after the first (classic DeepFool: 1e-4).

    Convenience keywords of :meth:`with_` (and of ``get_attack``): ``random_start``, ``step_scale``,
    ``step``, ``dither``, ``project`` (bool), ``early_stop`` and ``box_aware`` (True: mask_blocked and
    clip_iterates, no push; False: classic DeepFool's box handling).
    """

    steps: int = 1
    start: Start = field(default_factory=ZeroStart)
    step_size: StepSize = field(default_factory=Constant)
    update: Update = field(default_factory=Plain)
    lin_point: Dither = field(default_factory=Dither)
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
        _flag("mask_blocked", self.mask_blocked)
        _flag("clip_iterates", self.clip_iterates)
        for name, kind in (("start", Start), ("step_size", StepSize), ("update", Update), ("lin_point", Dither),
                           ("keep", Keep), ("stop", Stop), ("project", Projection)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"schedule {name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        self.lin_point.fractions(self.steps)

    @classmethod
    def of(cls, **kw: Any) -> Schedule:
        """A schedule from fields and convenience keywords: ``Schedule.of(steps=10, dither="first")``."""
        steps = kw.pop("steps", 1)
        return cls(steps=steps).with_(**kw) if kw else cls(steps=steps)

    def dither_radii(self) -> list[float]:
        """eps~_t / eps for t = 1..T."""
        return self.lin_point.fractions(self.steps)

    def with_(self, **kw: Any) -> Schedule:
        """A copy with fields or convenience keywords changed (see the class docstring)."""
        out: dict[str, Any] = {}
        for k, v in kw.items():
            if k == "random_start":
                out["start"] = RandomStart() if _flag(k, v) else ZeroStart()
            elif k in ("step_scale", "step"):
                cur = out.get("step_size", self.step_size)
                base = cur if isinstance(cur, Constant) else Constant()
                out["step_size"] = replace(base, **{"scale" if k == "step_scale" else "fraction": v})
            elif k == "dither":
                out["lin_point"] = v if isinstance(v, Dither) else Dither(v if isinstance(v, str) else _seq(k, v))
            elif k == "project" and not isinstance(v, Projection):
                out["project"] = BallProjection() if _flag(k, v) else NoProjection()
            elif k == "early_stop":
                out["stop"] = WhenFooled(check_first=True) if _flag(k, v) else NeverStop()
            elif k == "box_aware":
                aware = _flag(k, v)
                out.update(mask_blocked=aware, clip_iterates=aware, push=0.0 if aware else 1e-4)
            else:
                out[k] = v
        return replace(self, **out)

    @staticmethod
    def keywords() -> list[str]:
        return [f.name for f in fields(Schedule)] + list(_ALIASES)

    def run(
        self,
        forward: Callable[[Tensor], Tensor],
        x: Tensor,
        eps: Tensor | None,
        objective: Objective,
        solver: Solver,
        ball: LpBall,
        box: Box,
        ctx: Context,
        noise: Noise | None = None,
        progress: Callable[[int], None] | None = None,
        partition: Partition | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Run the loop; return the final eta (N, ...), the number of steps each input took (N,) and
        the per-input figures the solver reported (e.g. ``sigma`` of quadratic-l2).

        ``eps`` is the per-input budget (N,), or None for unbounded (min-norm) attacks.
        """
        n = x.shape[0]
        T = self.steps
        if type(box) is Box:
            box = _ResolvedBox.of(box, x)
        if noise is None:
            noise = Noise.create(None, n, x.device)
        radii = self.lin_point.fractions(T)
        needs_eps = (solver.bounded and not isinstance(self.step_size, Cosine)) or isinstance(self.start, RandomStart) \
            or isinstance(self.project, BallProjection) or any(radii)
        if eps is None and needs_eps:
            raise ValueError(f"{solver} with this schedule needs a budget eps")
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        alpha = self.step_size.init(eps, T, x)
        # eps as one number when every input has the same budget (an l-inf projection is then one clamp), and
        # alpha too for a constant step (the steepest step is then one multiplication by a Python number):
        # the same values, from one host-device sync per run, none per step
        eps_scalar = alpha_scalar = None
        if eps is not None and n:
            same = (eps == eps[0]).all().to(eps.dtype)
            a0 = alpha[0].to(eps.dtype) if alpha is not None else eps[0]
            uniform, e0, a0 = torch.stack([same, eps[0], a0]).tolist()
            if uniform:
                eps_scalar = e0
                if isinstance(self.step_size, Constant) and alpha is not None:
                    alpha_scalar = a0
        loop = Loop(x=x, eps=eps, ball=ball, box=box, noise=noise, steps=T, done=done, eps_scalar=eps_scalar)
        scale = 1.0 + self.overshoot
        eta = self.start(loop)
        keep = copy.copy(self.keep)  # the policy is configuration; its tracking state lives in a copy
        keep.start(eta)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        taken = 0  # steps taken by every input when no input can be done early
        state: dict = {}

        # the last projected eta and its point x + eta in the box: the next linearisation point is that
        # point itself, not clip(x + (point - x)) again (two elementwise operations per step fewer)
        last: list[Tensor | None] = [None, None]

        def project(v: Tensor) -> Tensor:
            v = self.project.apply(v, loop)
            if self.clip_iterates:
                if scale == 1.0:
                    point = box.clip(x + v)
                    v = point - x
                    last[0], last[1] = v, point
                else:
                    v = (box.clip(x + scale * v) - x) / scale
            return v

        def at(v: Tensor) -> Tensor:  # x + scale v in the box (1.0 * v == v exactly: skip the product)
            if v is last[0]:
                return last[1]  # type: ignore[return-value]
            return box.clip(x + v if scale == 1.0 else x + scale * v)

        # A step -a sign(g) per coordinate, clipped to the box afterwards, lands on the face wherever the
        # box blocks it: the same iterate as with the blocked coordinates masked (Box.free_directions), so
        # the mask is skipped (not at the first step, whose masked gradient the flatness warning reads, nor
        # at a dithered point, where the blocked coordinates are those of x + eta~, not of x + eta).
        mask_after_first = self.mask_blocked and not (self.clip_iterates and solver.separable(ball))
        part = partition if partition is not None else Partition()

        # without a stop policy no input is ever done: the freezing where() and the per-input step
        # count are no-ops, skipped (the count is T for every input)
        freezes = self.stop.active

        rows: Tensor | None = None if freezes else ~done  # every input, when none is ever done
        sync_every = SYNC_EVERY_CPU if x.device.type == "cpu" else SYNC_EVERY
        nonfinite: Tensor | None = None  # (N,): NaN (or inf) once L or g was not finite, else 0
        for t, radius in enumerate(radii):
            lin = eta
            if radius > 0:
                assert eps is not None
                lin = eta + ball.sample(x, eps * radius, noise)
            x_lin = at(lin)
            # With a stop policy, the inputs still in play (act) come from nonzero(), a host-device sync, and
            # gradients are taken for those only. DeepFool (check_first) refreshes them at every step: a cheap
            # forward decides who is done, and each finished input saves up to 9 backward passes. The others
            # (APGD) refresh them every SYNC_EVERY steps on a GPU, so that it does not wait at every step: in between,
            # inputs done since the last refresh get gradients too, but stay frozen and unobserved, so the
            # results are the same as with a refresh at every step (tests/test_speed.py). Without a stop policy
            # the loop has no sync at all.
            if self.stop.active and self.stop.check_first:
                act = (~done).nonzero().squeeze(1)
                with torch.no_grad():
                    done[act] = objective.fooled(forward(x_lin[act]), ctx.subset(act))
            if self.stop.active and solver.needs_grad and (self.stop.check_first or t % sync_every == 0):
                act = (~done).nonzero().squeeze(1)
                if act.numel() == 0:  # every input is done
                    break
            value = g = fooled = None
            if solver.needs_grad:
                if self.stop.active and act.numel() < n:  # gradients of the inputs in play only
                    v_act, g_act, out_act = objective.value_and_grad(forward, x_lin[act], ctx.subset(act))
                    value = x.new_zeros(n).index_copy(0, act, v_act.to(x.dtype))
                    g = torch.zeros_like(x).index_copy(0, act, g_act.to(x.dtype))
                    if objective.classification:
                        f_act = objective.fooled(out_act, ctx.subset(act))
                        fooled = torch.zeros_like(done).index_copy(0, act, f_act)
                else:
                    value, g, out = objective.value_and_grad(forward, x_lin, ctx)
                    if value.dtype != x.dtype or g.dtype != x.dtype:
                        value, g = value.to(x.dtype), g.to(x.dtype)
                    if objective.classification and (keep.needs_final_check or self.stop.active):
                        fooled = objective.fooled(out, ctx)
                # NaN/inf in L or its gradient (a model NaN away from x, a NaN gradient): the input is
                # reported (info['nonfinite']) and the attack returns it unperturbed, marked as failed.
                # Accumulated without a host sync, in 2 passes over g: max abs(g) propagates NaN and inf and
                # cannot overflow; L + 0 max abs(g) is NaN or inf exactly where L or g is not finite (IEEE:
                # 0 * inf is NaN), and adding 0 times that accumulates it (isfinite(g).all() took 5x longer;
                # tests/test_speed.py checks the detection). Inputs already done have L = g = 0.
                seen = (value + g.reshape(n, -1).abs().amax(dim=1) * 0) * 0
                if self.stop.active:  # inputs done before this step do not count (see act above)
                    seen = torch.where(done, 0.0, seen)
                nonfinite = seen if nonfinite is None else nonfinite.add_(seen)
                keep.observe(lin, value, g, fooled, ball, ~done if rows is None else rows)
                self.project.observe(t, loop, lin, value, g, fooled, keep)
                if self.stop.active and not self.stop.check_first and fooled is not None:
                    done = done | fooled
                    loop.done = done
            alpha, restart = self.step_size.update(t, alpha, loop, keep)
            if restart is not None:  # APGD: back to the best iterate and its gradient; no momentum there
                eta, g = keep.restart(restart, eta, g)
                x_lin = at(eta)
                if "eta_prev" in loop.state:
                    loop.state["eta_prev"] = torch.where(expand_like(restart, eta), eta, loop.state["eta_prev"])
            if g is not None:
                if self.mask_blocked and (t == 0 or radius > 0 or mask_after_first):
                    g = box.free_directions(g, x_lin)
                if t == 0:
                    _warn_if_flat(g, done, alpha, objective)
            push = self.push if t > 0 else 0.0
            step = Step(x_lin, g, value, alpha if alpha is not None else x.new_zeros(n), ball, forward, noise, state,
                        box, push, part, x, t, T, objective, ctx, alpha_scalar)
            s = solver(step)
            new = project(self.update(t, eta, s, loop, project))
            if freezes:
                active = ~done
                eta = torch.where(expand_like(active, eta), new, eta)
                used = used + active.long()
            else:
                active = done.logical_not() if "fooled" in state else None
                eta = new
                taken += 1
            if "fooled" in state:  # a score-based solver reports which new iterates fool the model
                fooled_now = state.pop("fooled")
                keep.observe(eta, None, None, fooled_now, ball, active)  # type: ignore[arg-type]
                if self.stop.active:
                    done = done | fooled_now
                    loop.done = done
            if progress is not None:
                progress(1)
            # a score-based solver's stop (Square): checked every SYNC_EVERY steps (with gradients, act does it)
            if self.stop.active and not solver.needs_grad and (t + 1) % sync_every == 0 and bool(done.all()):
                break
        if not freezes:
            used = used + taken
        if keep.needs_final_check:
            with torch.no_grad():
                x_last = at(eta)
                out = forward(x_last)
                value = objective.loss(out, ctx)
                fooled = objective.fooled(out, ctx) if objective.classification else None
            keep.observe(eta, value, None, fooled, ball, ~done)
        eta = keep.result(eta)
        eta = at(eta) - x
        if eps is not None:  # exact budget, whatever the float rounding of T steps
            eta = box.clip(x + ball.project(eta, eps if eps_scalar is None else eps_scalar)) - x
        if nonfinite is not None:
            state["nonfinite"] = ~torch.isfinite(nonfinite)
        info = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.shape == (n,)}
        return eta, used, info


def _warn_if_flat(g: Tensor, done: Tensor, alpha: Tensor | None, objective: Objective) -> None:
    flat = g.reshape(g.shape[0], -1).abs().amax(dim=1) == 0
    if bool((flat & ~done & (alpha != 0 if alpha is not None else True)).any()):
        warnings.warn(
            "the gradient of the objective is exactly zero for some inputs at the first step"
            + (
                "; a regression objective with y = f(x) is flat at eta = 0: dither the first"
                " linearisation point (dither='first' or 'all')"
                if not objective.classification
                else " (saturated model or gradient masking?)"
            ),
            stacklevel=5,
        )


def _seq(name: str, v: Any) -> tuple:
    try:
        return tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be 'none', 'first', 'all' or T fractions, got {v!r}") from None


def _flag(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v
