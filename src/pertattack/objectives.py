"""Objectives L(x, eta): what an attack drives down (paper, Section 2 and Table 2).

Every objective here is a loss to MINIMISE over eta, per input, shape (N,):

=============  =======================================================================  =====================
name           L(x, eta)                                                                fooled when
=============  =======================================================================  =====================
margin         f_k(x+eta) - max_{l != k} f_l(x+eta)   (AGP, eq. 2)                      argmax != k  (L < 0)
cross-entropy  -CE(f(x+eta), k)   (FGSM, BIM, PGD)                                      argmax != k
score          f_k(x+eta)   (Algorithm 2)                                               argmax != k
targeted       max_{l != t} f_l(x+eta) - f_t(x+eta)                                     argmax == t  (L < 0)
deepfool       f_k - f_l^, l^ = argmin_{l!=k} abs(f_k - f_l) / norm_q(grad(f_k - f_l))  argmax != k
transfer       any of the above, evaluated on a surrogate model                         on the attacked model
regression     -norm_2(y - f(x+eta))^2  (maximises the squared error, Sec. 3)           (no label)
kl             -KL(softmax f(x), softmax f(x+eta))   (TRADES's inner loss)              argmax != k
=============  =======================================================================  =====================

k is the true label when given, else the model's own prediction on x. ``targeted`` equals the
paper's f_k - f_t whenever k is the top class; written with max_{l != t} it also says exactly when
the target is reached. f means the model's raw outputs, taken as logits; ``probs=True`` applies a
softmax first, as the paper's f (class probabilities) does. Cross-entropy always works on logits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._validate import flag, integer
from .constraints import LpBall

__all__ = [
    "Context",
    "Objective",
    "Margin",
    "CrossEntropy",
    "Score",
    "Targeted",
    "DeepFoolObjective",
    "Transfer",
    "Regression",
    "DLR",
    "DLRTargeted",
    "KL",
    "OBJECTIVES",
    "objective_by_name",
]

Forward = Callable[[Tensor], Tensor]


@dataclass
class Context:
    """What an objective needs besides the model's output: labels, target, reference output, norm.

    Attributes:
        label: (N,) int64 class k of each input (true label, or the model's prediction).
        target: (N,) int64 target classes for targeted attacks, else None.
        reference: (N, ...) regression reference y (f(x) when no ground truth is given), else None.
        ball: the attack's lp ball (DeepFool picks its class with the dual norm).
        extra: per-input tensors (N, ...) an objective keeps for the run (e.g. the target picked by rank).
    """

    label: Tensor | None = None
    target: Tensor | None = None
    reference: Tensor | None = None
    ball: LpBall = field(default_factory=lambda: LpBall(math.inf))
    extra: dict[str, Tensor] = field(default_factory=dict)

    def subset(self, idx: Tensor) -> Context:
        """The context of the inputs ``idx`` (an index tensor) only."""

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return Context(take(self.label), take(self.target), take(self.reference), self.ball,
                       {k: v[idx] for k, v in self.extra.items()})


def _other_max(scores: Tensor, cls: Tensor) -> Tensor:
    """max_{l != cls} scores_l, per row."""
    masked = scores.masked_fill(F.one_hot(cls, scores.shape[1]).bool(), -math.inf)
    return masked.amax(dim=1)


class Objective:
    """Base class: a subclass defines :meth:`loss` (per input, to minimise); gradients come from one
    backward pass, so an objective that only defines ``loss`` works with every gradient preset.

    Capabilities (class attributes, never names, decide how an attack treats the objective):
        classification: the model's outputs are class scores; results get ``success``, ``pred``, ``margin``.
        needs_target: the call must give ``target=`` (one class per input); success means reaching it.
        steered: the call may give ``target=`` to steer the search; success stays untargeted (the class k left).
    """

    name: str = "objective"
    classification: bool = True
    needs_target: bool = False
    steered: bool = False

    def loss(self, out: Tensor, ctx: Context) -> Tensor:  # pragma: no cover - abstract
        """The loss per input (shape (N,)), to minimise: its gradient is the solvers' g."""
        raise NotImplementedError

    def prepare(self, out: Tensor, ctx: Context) -> None:
        """Called once per run with the clean outputs f(x) (e.g. to pick a target by rank); no-op here."""

    def usable(self, num_classes: int) -> bool:
        """Whether the objective is defined for a model with this many classes (cascades skip it if not)."""
        return True

    def fooled(self, out: Tensor, ctx: Context) -> Tensor:
        """Whether the model's output ``out`` counts as fooled, (N,) bool: the target reached when the
        objective needs one, else the class k left."""
        if self.needs_target:
            return out.argmax(dim=1) == ctx.target
        return out.argmax(dim=1) != ctx.label

    def margin(self, out: Tensor, ctx: Context) -> Tensor:
        """The margin reported in ``AttackResult.margin``, negative exactly where :meth:`fooled`:
        eq. 2's f_k - max_{l != k} f_l, or max_{l != t} f_l - f_t towards a target."""
        if self.needs_target:
            return _other_max(out, ctx.target) - out.gather(1, ctx.target[:, None])[:, 0]
        return out.gather(1, ctx.label[:, None])[:, 0] - _other_max(out, ctx.label)

    def value_and_grad(self, forward: Forward, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """L at x (N,), its gradient in x (N, ...) and the model output at x (detached).

        Uses ``torch.autograd.grad`` on the sum of the per-input losses, so each input gets its
        own gradient and no model parameter receives ``.grad``.
        """
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(xg)
            loss = self.loss(out, ctx)
            # seeded with ones rather than through loss.sum(): one autograd node fewer per step
            (g,) = torch.autograd.grad(loss, xg, grad_outputs=torch.ones_like(loss))
        return loss.detach(), g.detach(), out.detach()

    def __repr__(self) -> str:
        return self.name


def _scores(out: Tensor, probs: bool) -> Tensor:
    return out.softmax(dim=1) if probs else out


@dataclass(repr=False)
class _OnScores(Objective):
    """An objective of the scores f, or of softmax(f) with ``probs=True`` (the paper's f, probabilities)."""

    probs: bool = False

    def __post_init__(self) -> None:
        flag("probs", self.probs)


@dataclass(repr=False)
class Margin(_OnScores):
    """AGP margin, eq. 2: f_k - max_{l != k} f_l; fooled iff negative (Algorithm 1)."""

    name = "margin"

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        s = _scores(out, self.probs)
        return s.gather(1, ctx.label[:, None])[:, 0] - _other_max(s, ctx.label)


@dataclass(repr=False)
class CrossEntropy(Objective):
    """-CE(f(x+eta), k) on logits (FGSM, BIM, PGD)."""

    name = "cross-entropy"

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        return -F.cross_entropy(out, ctx.label, reduction="none")

    def value_and_grad(self, forward: Forward, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`Objective.value_and_grad`, with the minus sign in the backward's seed instead of a
        negation node: the same numbers (multiplying by -1 is exact), one autograd node fewer (55 -> 46 us
        per gradient of a one-layer MNIST model at batch 1, where the nodes are the cost)."""
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(xg)
            ce = F.cross_entropy(out, ctx.label, reduction="none")
            (g,) = torch.autograd.grad(ce, xg, grad_outputs=torch.full_like(ce, -1.0))
        return -ce.detach(), g, out.detach()


@dataclass(repr=False)
class Score(_OnScores):
    """f_k(x+eta) alone (Algorithm 2): one gradient, no search over classes."""

    name = "score"

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        return _scores(out, self.probs).gather(1, ctx.label[:, None])[:, 0]


@dataclass(repr=False)
class Targeted(_OnScores):
    """max_{l != t} f_l - f_t: negative iff the model predicts the target t."""

    name = "targeted"
    needs_target = True

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        if ctx.target is None:
            raise ValueError("a targeted attack needs target=... (one class per input)")
        s = _scores(out, self.probs)
        return _other_max(s, ctx.target) - s.gather(1, ctx.target[:, None])[:, 0]


def _vmapped_default(x: Tensor) -> bool:
    """Whether DeepFool's ``batched_backward=None`` takes the vmapped backward for inputs like ``x``: on CUDA."""
    return x.is_cuda


@dataclass(repr=False)
class DeepFoolObjective(Objective):
    """DeepFool's objective: f_k - f_l^ with l^ the class closest by the rho1 criterion.

    l^ = argmin_{l != k} abs(f_k - f_l) / norm_q(grad f_k - grad f_l), chosen per input for the
    whole batch at once. Only the ``candidates`` classes with the highest scores (besides k) are
    searched. Their gradients come from one backward pass per candidate, batched over the inputs, or
    (``batched_backward=True``) from a single backward vmapped over the candidates
    (``torch.autograd.grad(..., is_grads_batched=True)``); both give the same gradients and the same l^.
    ``batched_backward=None`` (default) takes the single backward on CUDA, where the whole attack ran 1.4-1.6x
    faster with it (one launch sequence instead of 9; LeNet-5, 1,024 MNIST images, an H200), and the loop
    elsewhere: on a CPU both took the same time within 7%, the loop ahead, and the loop never holds the
    candidates' gradients all at once (``bench_classification.py --deepfool-variants``, benchmarks/README.md).
    Where the default's vmapped backward fails (an operation without a batching rule, such as ``.item()`` in a
    custom backward, or out of memory), it warns once and takes the loop from then on.
    """

    candidates: int = 10
    probs: bool = False
    batched_backward: bool | None = None
    name = "deepfool"

    def __post_init__(self) -> None:
        self.candidates = integer("candidates", self.candidates)
        flag("probs", self.probs)
        if self.batched_backward is not None:
            flag("batched_backward", self.batched_backward)
        self._vmap_failed = False  # set once the default vmapped backward failed: the loop from then on

    def loss(self, out: Tensor, ctx: Context) -> Tensor:  # the value at the chosen class
        raise NotImplementedError("DeepFoolObjective computes its value in value_and_grad")

    def value_and_grad(self, forward: Forward, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        xg = x.detach().requires_grad_(True)
        k = ctx.label
        auto = self.batched_backward is None
        batched = (_vmapped_default(x) and not self._vmap_failed) if auto else self.batched_backward
        with torch.enable_grad():
            out = forward(xg)
            s = _scores(out, self.probs)
            n, K = s.shape
            c = min(self.candidates, K - 1)
            others = s.detach().masked_fill(F.one_hot(k, K).bool(), -math.inf)
            cand = others.topk(c, dim=1).indices  # (N, c)
            diff = s.gather(1, k[:, None]) - s.gather(1, cand)  # (N, c): f_k - f_l for each candidate
            if batched:
                cot = torch.eye(c, dtype=diff.dtype, device=diff.device)[:, None, :].expand(c, n, c)
                try:  # (c, N, ...); the graph kept when chosen by default, for the loop to fall back on
                    (grads,) = torch.autograd.grad(diff, xg, cot, is_grads_batched=True, retain_graph=auto)
                except RuntimeError as err:  # an op without a batching rule (.item() in a custom backward), OOM
                    if not auto:
                        raise
                    self._vmap_failed = True
                    batched = False
                    warnings.warn(f"deepfool: the backward vmapped over the candidates failed ({err}); taking one "
                                  "backward per candidate instead (batched_backward=False skips the attempt)",
                                  stacklevel=2)
            best_d = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
            best_L = torch.zeros(n, dtype=x.dtype, device=x.device)
            best_g = torch.zeros_like(x)
            for j in range(c):  # candidate ranks, each batched over all inputs
                # the loop takes one backward per rank (the gradients are never all held at once)
                g = grads[j] if batched else torch.autograd.grad(diff[:, j].sum(), xg, retain_graph=j < c - 1)[0]
                dj = diff[:, j].detach()
                dn = ctx.ball.dual_norm(g)  # no floor: the closest class by the exact rho1 ratio
                zero = dn == 0
                d = torch.where(zero, math.inf, dj.abs() / torch.where(zero, torch.ones_like(dn), dn))
                better = (d < best_d) | d.isnan()  # a NaN gradient is kept, so the attack can report it
                best_d = torch.where(better, d, best_d)
                best_L = torch.where(better, dj, best_L)
                best_g = torch.where(better.view(-1, *([1] * (x.dim() - 1))), g, best_g)
        return best_L, best_g, out.detach()


@dataclass(repr=False)
class Transfer(Objective):
    """Any objective evaluated on a surrogate model (black-box / ensemble attacks, Table 2).

    The gradient comes from ``surrogate``; success is still judged on the attacked model.
    ``surrogate`` must take the same raw inputs as the attacked model.
    """

    surrogate: nn.Module | None = None
    base: Objective | str = field(default_factory=CrossEntropy)
    name = "transfer"

    def __post_init__(self) -> None:
        if self.surrogate is not None and not isinstance(self.surrogate, nn.Module):
            raise TypeError(f"transfer: surrogate must be a torch.nn.Module, got {self.surrogate!r}")
        if isinstance(self.base, str):
            try:
                self.base = objective_by_name(self.base)
            except ValueError as e:
                raise ValueError(f"transfer: base: {e}") from None
        if not isinstance(self.base, Objective) or isinstance(self.base, Transfer):
            raise TypeError(f"transfer: base must be an objective (or its name), got {self.base!r}")

    @property
    def needs_target(self) -> bool:  # type: ignore[override]
        return self.base.needs_target  # type: ignore[union-attr]

    @property
    def classification(self) -> bool:  # type: ignore[override]
        return self.base.classification  # type: ignore[union-attr]

    def prepare(self, out: Tensor, ctx: Context) -> None:
        self.base.prepare(out, ctx)  # type: ignore[union-attr]

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        return self.base.loss(out, ctx)  # type: ignore[union-attr]

    def fooled(self, out: Tensor, ctx: Context) -> Tensor:
        return self.base.fooled(out, ctx)  # type: ignore[union-attr]

    def margin(self, out: Tensor, ctx: Context) -> Tensor:
        return self.base.margin(out, ctx)  # type: ignore[union-attr]

    def value_and_grad(self, forward: Forward, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        if self.surrogate is None:
            raise ValueError("the transfer objective needs surrogate=<nn.Module>")
        from .modelcall import as_model, eval_mode

        surrogate = as_model(self.surrogate)  # a tensor of its own: it may write into its input
        surrogate.input_dtype = next((q.dtype for q in self.surrogate.parameters() if q.is_floating_point()), None)
        with eval_mode(surrogate):
            return self.base.value_and_grad(surrogate, x, ctx)  # type: ignore[union-attr]


@dataclass(repr=False)
class Regression(Objective):
    """-norm_2(y - f(x+eta))^2 (Section 3): minimising it maximises the output distortion.

    y is the reference output in ``ctx.reference``; the attack sets it to f(x) when no ground truth
    is given. Then the gradient at eta = 0 is exactly zero and only dithering (Section 3.2) moves
    the linearisation point off it.
    """

    name = "regression"
    classification = False

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        if ctx.reference is None:
            raise ValueError("the regression objective needs a reference output")
        d = (out - ctx.reference).reshape(out.shape[0], -1)
        return -(d * d).sum(dim=1)

    def fooled(self, out: Tensor, ctx: Context) -> Tensor:
        raise TypeError("a regression objective has no notion of fooling; compare outputs with psnr")


def _sorted_scores(out: Tensor) -> Tensor:
    return out.sort(dim=1, descending=True).values


@dataclass(repr=False)
class DLR(Objective):
    """Difference of logits ratio (Croce and Hein 2020), as a loss to minimise:

        L = (z_k - max_{l != k} z_l) / (z_pi1 - z_pi3 + 1e-12),

    z sorted decreasingly as z_pi1 >= z_pi2 >= ...: the margin of eq. 2 divided by a spread of the
    scores, so it does not change when the logits are shifted or scaled (no saturation as with
    cross-entropy). Negative exactly where the model is fooled. Needs K >= 3 classes.
    """

    name = "dlr"

    def usable(self, num_classes: int) -> bool:
        return num_classes >= 3

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        if out.shape[1] < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes, the model has {out.shape[1]}")
        z = _sorted_scores(out)
        m = out.gather(1, ctx.label[:, None])[:, 0] - _other_max(out, ctx.label)
        return m / (z[:, 0] - z[:, 2] + 1e-12)


@dataclass(repr=False)
class DLRTargeted(Objective):
    """Targeted DLR (Croce and Hein 2020), towards the class of rank ``rank`` in f(x) (2 = the runner-up),
    as a loss to minimise:

        L = (z_k - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

    Success stays untargeted (the class k left): the target only steers the search, as in APGD-T, which
    runs this for ranks 2..10 on the inputs still robust. Needs K >= 4 classes. A ``target=`` given with the
    call replaces the class of rank ``rank`` (a cascade that orders the targets otherwise, :mod:`pertattack.targets`).
    """

    rank: int = 2
    name = "dlr-targeted"
    steered = True

    def __post_init__(self) -> None:
        self.rank = integer("rank (2 = the runner-up class)", self.rank, lo=2)

    def usable(self, num_classes: int) -> bool:
        return num_classes >= max(4, self.rank)

    def prepare(self, out: Tensor, ctx: Context) -> None:
        if out.shape[1] < max(4, self.rank):
            raise ValueError(f"targeted DLR with rank {self.rank} needs at least {max(4, self.rank)} classes, "
                             f"the model has {out.shape[1]}")
        given = ctx.target
        ctx.extra["dlr_target"] = out.argsort(dim=1, descending=True)[:, self.rank - 1] if given is None else given

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        t = ctx.extra.get("dlr_target")
        if t is None:
            raise ValueError("targeted DLR: prepare() was not called with the clean outputs")
        z = _sorted_scores(out)
        zk = out.gather(1, ctx.label[:, None])[:, 0]
        zt = out.gather(1, t[:, None])[:, 0]
        return (zk - zt) / (z[:, 0] - (z[:, 2] + z[:, 3]) / 2 + 1e-12)


@dataclass(repr=False)
class KL(Objective):
    """-KL(p(x), p(x+eta)) = -sum_l p_l(x) log(p_l(x) / p_l(x+eta)), p the softmax of the logits: the inner loss
    of TRADES (Zhang et al. 2019), to minimise.

    Driving it down moves the output distribution away from the clean one p(x) (kept by :meth:`prepare`), label
    or not; fooled, as for every untargeted objective, when the class k is left. It is 0 with a zero gradient
    at eta = 0: start at random (the ``trades`` preset).
    """

    name = "kl"

    def prepare(self, out: Tensor, ctx: Context) -> None:
        ctx.extra["clean_log_probs"] = out.detach().log_softmax(dim=1)

    def loss(self, out: Tensor, ctx: Context) -> Tensor:
        ref = ctx.extra.get("clean_log_probs")
        if ref is None:
            raise ValueError("the KL objective: prepare() was not called with the clean outputs")
        return -(ref.exp() * (ref - out.log_softmax(dim=1))).sum(dim=1)


OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "margin": Margin,
    # PMA's probability margin (Xie et al. 2024): eq. 2 on the softmax, the paper's f as class probabilities
    "probability-margin": lambda: Margin(probs=True),
    "cross-entropy": CrossEntropy,
    "score": Score,
    "targeted": Targeted,
    "deepfool": DeepFoolObjective,
    "transfer": Transfer,
    "regression": Regression,
    "dlr": DLR,
    "dlr-targeted": DLRTargeted,
    "kl": KL,
}


def objective_by_name(name: str) -> Objective:
    """An objective of the table above, with its default settings."""
    from ._validate import from_table

    return from_table(OBJECTIVES, name, "objective", " (or pass an Objective instance)")
