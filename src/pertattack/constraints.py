"""Constraint sets for the perturbation eta: lp balls, the box of valid inputs, subset partitions.

All norm arithmetic of the project lives here (one concept, one place). Tensors are batch-first:
a perturbation of shape (N, ...) is one vector of R^M per input, M = prod(...).

Notation (paper, Section 2): p in [1, inf], dual exponent q = p / (p - 1), q = 1 for p = inf and
q = inf for p = 1. Hölder: eta^T g <= norm_p(eta) norm_q(g), with equality at the unit Hölder
maximiser returned by :meth:`LpBall.steepest`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import is_number
from .noise import Noise, box_muller

__all__ = [
    "Constraint",
    "LpBall",
    "Box",
    "Partition",
    "dual_exponent",
    "lp_norm",
    "as_batch_eps",
    "expand_like",
    "fit_budget",
]

_TINY = 1e-12


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (q = inf for p = 1, q = 1 for p = inf)."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def lp_norm(v: Tensor, p: float) -> Tensor:
    """Per-input lp norm of a batch: shape (N, ...) -> (N,)."""
    flat = v.reshape(v.shape[0], -1)
    if math.isinf(p):
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return torch.linalg.vector_norm(flat, ord=p, dim=1)


def expand_like(t: Tensor, like: Tensor) -> Tensor:
    """View a per-input tensor of shape (N,) as (N, 1, ..., 1) to broadcast against ``like``."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def as_batch_eps(eps: float | Tensor, n: int, like: Tensor) -> Tensor:
    """A budget as a per-input tensor of shape (N,) on the device and dtype of ``like``.

    Accepts a scalar or a tensor of shape () or (N,) (per-input budgets, broadcast as in ART).
    """
    if is_number(eps):  # checked as a number: no host-device sync
        if math.isnan(eps) or eps < 0:  # type: ignore[arg-type]
            raise ValueError(f"eps must be >= 0, got {eps}")
        return torch.as_tensor(eps, dtype=like.dtype, device=like.device).expand(n)
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.dim() == 0:
        e = e.expand(n)
    if e.shape != (n,):
        raise ValueError(f"eps must be a scalar or have shape ({n},), got {tuple(e.shape)}")
    if bool((torch.isnan(e) | (e < 0)).any()):
        raise ValueError(f"eps must be >= 0, got {eps}")
    return e


@dataclass(frozen=True)
class LpBall:
    """The lp ball {eta : norm_p(eta) <= eps}, for any real p >= 1 or p = inf.

    Args:
        p: the norm; ``float('inf')`` (or ``"inf"``) for the max norm.
    """

    p: float

    def __post_init__(self) -> None:
        p = float(self.p)
        if math.isnan(p) or p < 1:
            raise ValueError(f"p must be >= 1 (or inf), got {self.p}")
        object.__setattr__(self, "p", p)

    @property
    def q(self) -> float:
        """The dual exponent."""
        return dual_exponent(self.p)

    def norm(self, eta: Tensor) -> Tensor:
        """norm_p of each input's perturbation, shape (N,)."""
        return lp_norm(eta, self.p)

    def dual_norm(self, g: Tensor) -> Tensor:
        """norm_q of each input's gradient, shape (N,); computed on g divided by its largest entry, so tiny
        or huge gradients (1e-20 .. 1e20, float32 too) neither underflow nor overflow."""
        flat = g.reshape(g.shape[0], -1)
        if math.isinf(self.q) or self.q == 1:
            return lp_norm(flat, self.q)
        m = _row_max(flat)
        return lp_norm(flat / m, self.q) * m[:, 0]

    def steepest(self, g: Tensor) -> Tensor:
        """The unit Hölder maximiser u(g): norm_p(u) = 1 and u^T g = norm_q(g) (eq. 6 without -eps).

        u = sign(g) abs(g)^(q-1) / norm_q(g)^(q-1); sign(g) for p = inf; for p = 1 all mass on the
        largest abs(g_i) (the first such coordinate on ties). Zero where g = 0.
        """
        n = g.shape[0]
        flat = g.reshape(n, -1)
        if math.isinf(self.p):
            u = flat.sign()
        elif self.p == 1:
            idx = flat.abs().argmax(dim=1, keepdim=True)
            u = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign())
        else:
            # Divide by the largest entry first (scale invariance: u(c g) = u(g) for every c > 0, at
            # gradient norms from 1e-20 to 1e20; no floor on the norm, no overflow of abs(g)^(q-1) or of
            # squares). The largest entry of ``a`` is then 1, so norm_p(a) >= 1 on every row that is not 0.
            a = flat.abs() / _row_max(flat)
            if self.p != 2:
                a = a ** (self.q - 1.0)
            u = flat.sign() * a / lp_norm(a, self.p).unsqueeze(1).clamp_min(1.0)
        return u.reshape(g.shape)

    def project(self, eta: Tensor, eps: Tensor | float) -> Tensor:
        """Euclidean projection onto the ball of per-input radius ``eps`` (shape (N,), or one number for
        every input: for p = inf one ``clamp`` then).

        Exact for p in {1, 2, inf}; for other p the rescaling eps * eta / norm_p(eta), which lands in
        the ball but is not the Euclidean projection (documented, as in ART).
        """
        if math.isinf(self.p):
            if not isinstance(eps, Tensor):
                return eta.clamp(-eps, eps)
            e = expand_like(eps, eta)
            return torch.maximum(torch.minimum(eta, e), -e)
        if not isinstance(eps, Tensor):
            eps = eta.new_full((eta.shape[0],), eps)
        e = expand_like(eps, eta)
        if self.p == 1:
            return _project_l1(eta, eps)
        norms = expand_like(self.norm(eta), eta)
        # norms > e >= 0 wherever the factor is used: no floor needed (a floor would shrink tiny balls)
        factor = torch.where(norms > e, e / torch.where(norms > 0, norms, torch.ones_like(norms)),
                             torch.ones_like(norms))
        return eta * factor

    def sample(self, like: Tensor, radius: Tensor, noise: Noise) -> Tensor:
        """A random point of the ball of per-input ``radius`` (shape (N,)), shaped like ``like``.

        Uniform in the ball for p in {1, 2, inf} (Laplace / Gaussian direction, radius * U^(1/M));
        for other p a Gaussian direction rescaled to the lp sphere, radius * U^(1/M): in the ball,
        not exactly uniform. Input i's draws depend on its own key in ``noise`` only.
        """
        m = like[0].numel()
        if math.isinf(self.p):
            return noise.uniform_like(like).reshape(like.shape).mul(2).sub(1) * expand_like(radius, like)
        u = noise.uniform_like(like, 2, extra=1)
        a, b, r = u[:, :m], u[:, m : 2 * m], u[:, 2 * m]
        if self.p == 1:  # Laplace: exponential magnitude, random sign
            d = torch.where(b < 0.5, -1.0, 1.0).to(like.dtype) * (-torch.log1p(-a))
        else:
            d = box_muller(a, b)
        d = d / lp_norm(d, self.p).clamp_min(_TINY).unsqueeze(1)
        return d.reshape(like.shape) * expand_like(radius * r ** (1.0 / m), like)


def _row_max(flat: Tensor) -> Tensor:
    """max_i abs(flat_i) per row, shape (N, 1); 1 on rows that are 0 (NaN propagates)."""
    m = flat.abs().amax(dim=1, keepdim=True) if flat.shape[1] else flat.new_ones(flat.shape[0], 1)
    return torch.where(m == 0, torch.ones_like(m), m)


def _project_l1(eta: Tensor, eps: Tensor) -> Tensor:
    """Exact Euclidean projection onto the l1 ball (sort-based, Duchi et al. 2008), batched."""
    n = eta.shape[0]
    flat = eta.reshape(n, -1)
    a = flat.abs()
    inside = a.sum(dim=1) <= eps
    srt, _ = a.sort(dim=1, descending=True)
    cums = srt.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=eta.device, dtype=eta.dtype)
    cond = srt - (cums - eps.unsqueeze(1)) / ks > 0
    # cond holds on a prefix of the sorted values: rho = its last index
    rho = (cond * torch.arange(flat.shape[1], device=eta.device)).argmax(dim=1, keepdim=True)
    theta = ((cums.gather(1, rho) - eps.unsqueeze(1)) / (rho + 1).to(eta.dtype)).clamp_min(0)
    proj = flat.sign() * (a - theta).clamp_min(0)
    out = torch.where(inside.unsqueeze(1), flat, proj)
    return out.reshape(eta.shape)


@dataclass(frozen=True)
class Box:
    """The box of valid inputs [lo, hi] (scalars or tensors broadcastable to one input, e.g. (C, 1, 1))."""

    lo: float | Tensor = 0.0
    hi: float | Tensor = 1.0

    def bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.as_tensor(self.lo, dtype=like.dtype, device=like.device)
        hi = torch.as_tensor(self.hi, dtype=like.dtype, device=like.device)
        # numbers are compared as numbers: no host-device sync for the common scalar box
        bad = self.lo > self.hi if is_number(self.lo) and is_number(self.hi) else bool((lo > hi).any())
        if bad:
            raise ValueError(f"box: lo must be <= hi, got lo={self.lo}, hi={self.hi}")
        return lo, hi

    def clip(self, x: Tensor) -> Tensor:
        lo, hi = self.bounds(x)
        return torch.maximum(torch.minimum(x, hi), lo)

    def check(self, x: Tensor, name: str = "x") -> None:
        """Raise a ValueError naming ``name`` if x has NaN/inf or leaves the box."""
        if not isinstance(self.lo, Tensor) and not isinstance(self.hi, Tensor) and x.numel():
            # scalar bounds: one pass (min and max; NaN propagates, inf leaves the box); any doubt goes on to
            # the checks below, which say what is wrong
            mn, mx = torch.stack(torch.aminmax(x)).tolist()  # one host-device sync
            lo, hi = (torch.tensor(b, dtype=x.dtype).item() for b in (self.lo, self.hi))
            if lo <= hi and lo <= mn and mx <= hi:
                return
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        lo, hi = self.bounds(x)
        one = tuple(x.shape[1:])
        for side, t in (("lo", lo), ("hi", hi)):
            try:
                ok = torch.broadcast_shapes(t.shape, one) == one
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"box {side} of shape {tuple(t.shape)} does not broadcast to one input of shape "
                                 f"{one} (per-channel bounds of (N, C, H, W) inputs have shape (C, 1, 1))")
        if (x < lo).any() or (x > hi).any():
            raise ValueError(
                f"{name} lies outside the box [{float(lo.min())}, {float(hi.max())}] "
                f"(min {float(x.min())}, max {float(x.max())}); set box=(lo, hi) to the range of your inputs "
                "(attacks work in the raw input space; give normalisation as preprocess=(mean, std))"
            )

    def free_directions(self, g: Tensor, x: Tensor) -> Tensor:
        """g with the coordinates zeroed along which a descent step -g would leave the box at x.

        At a face of the box (x_i = lo_i with g_i > 0, or x_i = hi_i with g_i < 0) the step would be
        clipped to nothing; solving the linearised problem on the free coordinates only spends the
        budget where it moves x (the first-order active set of ball-and-box).
        """
        lo, hi = self.bounds(x)
        blocked = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
        return g.masked_fill(blocked, 0.0)

    @property
    def peak(self) -> float:
        """hi - lo, the peak signal of PSNR (largest value where lo/hi are per channel)."""
        return float(torch.as_tensor(self.hi).max() - torch.as_tensor(self.lo).min())


@dataclass(frozen=True)
class Partition:
    """A partition of the M coordinates of one input into S subsets (Section 4, eq. 19-23).

    Args:
        groups: ``"pixel"`` (default): for inputs (N, C, H, W) a subset is the C channels of one pixel;
            for (N, H, W) or (N, M) inputs each coordinate is its own subset. Or a sequence/tensor of
            M subset ids in [0, S) giving the subset of each coordinate of the flattened input.
    """

    groups: str | Sequence[int] | Tensor = "pixel"

    def __post_init__(self) -> None:
        g = self.groups
        if isinstance(g, str):
            if g != "pixel":
                raise ValueError(f"unknown partition {g!r}; use 'pixel' or a list of subset ids")
            return
        try:
            t = torch.as_tensor(g)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"partition must be 'pixel' or a sequence of integer subset ids, got {g!r}") from None
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.numel() == 0:
            raise TypeError(f"partition must be 'pixel' or a non-empty sequence of integer subset ids, got {g!r}")
        if bool((t < 0).any()):
            raise ValueError("partition ids must be >= 0")

    def index(self, like: Tensor) -> Tensor:
        """Subset id of each coordinate of one flattened input, shape (M,), int64, values 0..S-1."""
        shape = like.shape[1:]
        m = like[0].numel()
        if isinstance(self.groups, str):  # "pixel" (the only name __post_init__ lets through)
            if len(shape) == 3:  # (C, H, W): pixel id = h * W + w, shared by the channels
                c, h, w = shape
                return torch.arange(h * w, device=like.device).repeat(c)
            return torch.arange(m, device=like.device)
        idx = torch.as_tensor(self.groups, device=like.device, dtype=torch.int64).reshape(-1)
        if idx.numel() != m:
            raise ValueError(f"partition has {idx.numel()} ids, the input has {m} coordinates")
        if idx.min() < 0:
            raise ValueError("partition ids must be >= 0")
        return idx

    def size(self, like: Tensor) -> int:
        """Number S of subsets."""
        return int(self.index(like).max()) + 1

    def subset_sums(self, values: Tensor) -> Tensor:
        """Sum of ``values`` (N, ...) within each subset: shape (N, S)."""
        idx = self.index(values)
        n = values.shape[0]
        flat = values.reshape(n, -1)
        out = flat.new_zeros(n, int(idx.max()) + 1)
        return out.index_add_(1, idx, flat)

    def mask(self, chosen: Tensor, like: Tensor) -> Tensor:
        """Coordinate mask (N, ...) of the subsets marked in ``chosen`` (N, S) bool."""
        idx = self.index(like)
        return chosen[:, idx].reshape(like.shape)


@dataclass(frozen=True)
class Constraint:
    """The set eta lives in, one part of an attack: the lp ball of radius eps, the box of valid inputs
    (x + eta in [lo, hi]) and, for subset attacks (Section 4), the partition of the coordinates.

    Args:
        p: the norm of the ball (``inf``, or any real p >= 1).
        box: ``(lo, hi)`` or a :class:`Box`; None: the model wrapper's box, else [0, 1].
        partition: the subsets of single-subset solvers: ``"pixel"`` or M subset ids (:class:`Partition`).
    """

    p: float = math.inf
    box: Box | tuple | None = None
    partition: Partition | str | Sequence[int] | Tensor = "pixel"

    def __post_init__(self) -> None:
        if isinstance(self.p, str):
            if self.p.lower() not in ("inf", "+inf", "linf"):
                raise ValueError(f"p must be a number >= 1 or 'inf', got {self.p!r}")
            object.__setattr__(self, "p", math.inf)
        if not is_number(self.p):
            raise TypeError(f"p must be a number >= 1 or inf, got {self.p!r}")
        object.__setattr__(self, "p", LpBall(self.p).p)
        if self.box is not None and not isinstance(self.box, Box):
            try:
                lo, hi = self.box
            except (TypeError, ValueError):
                raise ValueError(f"box must be a pair (lo, hi), got {self.box!r}") from None
            object.__setattr__(self, "box", make_box(lo, hi))
        if not isinstance(self.partition, Partition):
            object.__setattr__(self, "partition", Partition(self.partition))

    @property
    def ball(self) -> LpBall:
        return LpBall(self.p)

    def __repr__(self) -> str:
        return f"l{self.p:g} ball"


def make_box(lo: float | Tensor, hi: float | Tensor) -> Box:
    """A :class:`Box`, its bounds checked: finite numbers (or tensors) with lo <= hi."""
    for name, v in (("lo", lo), ("hi", hi)):
        try:
            t = torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"box {name} must be a number or a real tensor, got {v!r}") from None
        if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"box {name} must be a number or a real tensor, got {v!r}")
        if not torch.isfinite(t.double()).all():
            raise ValueError(f"box {name} must be finite, got {v!r}")
    if (torch.as_tensor(lo).double() > torch.as_tensor(hi).double()).any():
        raise ValueError(f"box: lo must be <= hi, got lo={lo}, hi={hi}")
    return Box(lo, hi)


def fit_budget(x: Tensor, x_adv: Tensor, eps: Tensor | None, ball: LpBall, box: Box) -> Tensor:
    """``x_adv`` in the dtype of ``x``, inside the box, with norm_p(x_adv - x) <= eps exactly as computed in
    float64 from the returned tensors: rounding to the dtype goes toward x wherever it would move a
    coordinate away from x, and a row still over its budget (float rounding of the projection) is shrunk."""
    out = box.clip(x_adv.to(x.dtype))
    xd = x.double()  # converted once (the float64 copies were a fifth of FGSM's time on LeNet-5)
    d = out.double() - xd
    if x_adv.dtype != x.dtype:  # rounded to a lower precision: toward x where the rounding went away from it
        want = (x_adv - x.to(x_adv.dtype)).double()
        away = d.abs() > want.abs()
        if bool(away.any()):
            out = torch.where(away, torch.nextafter(out, x), out)
            d = out.double() - xd
    if eps is None:
        return out
    e64 = eps.double()
    if math.isinf(ball.p):  # per coordinate, without the loop below: where x + eta rounded past the budget
        e_el = e64.reshape(-1, *([1] * (x.dim() - 1)))  # (float32 at eps = 0.1 does), the nearest value to the
        for i in range(8):  # bound x +- eps (within half an ulp of it), then one ulp toward x if still over
            over = d.abs() > e_el
            if not bool(over.any()):
                return out
            near = (xd + d.clamp(-e_el, e_el)).to(x.dtype) if i == 0 else torch.nextafter(out, x)
            out = torch.where(over, near, out)
            d = out.double() - xd
    for _ in range(8):
        norms = ball.norm(d)
        over = norms > e64
        if not bool(over.any()):
            break
        tiny = 4.0 * torch.finfo(x.dtype).eps * 2.0 ** _  # a few ulps, more if rounding keeps it over
        factor = torch.where(over, e64 / norms.clamp_min(1e-300) * (1 - tiny), torch.ones_like(norms))
        shrunk = xd + d * factor.reshape(-1, *([1] * (x.dim() - 1)))
        cand = shrunk.to(x.dtype)
        away = (cand.double() - xd).abs() > (shrunk - xd).abs()
        cand = torch.where(away, torch.nextafter(cand, x), cand)
        out = torch.where(over.reshape(-1, *([1] * (x.dim() - 1))), cand, out)
        d = out.double() - xd
    still = ball.norm(d) > e64
    if bool(still.any()):  # never seen; the budget is a promise, so x itself rather than a row over it
        out = torch.where(still.reshape(-1, *([1] * (x.dim() - 1))), x, out)
    return out
