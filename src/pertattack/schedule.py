"""Schedules: the one iteration loop of the project (Algorithm 1 and its relatives).

    eta_1 = start (0, or a random point of the ball: Madry's random start)
    for t = 1..T:
        eta~_t  = eta_t + random(eps~_t)                  # dithering of the linearisation point
        eta*_t  = solver(grad L(x, (1 + overshoot) eta~_t)) with budget alpha
        eta_t+1 = eta_t + eta*_t   [projected on the eps ball when ``project``]   [kept in the box]
    return eta_T+1

Presets differ only in these fields:

* Algorithm 1 (alg1-T, linear-*-T): alpha = eps / T, no projection needed (T steps of norm eps/T
  stay in the ball by the triangle inequality), dithering per ``dither``.
* PGD as users know it (Madry et al.): random start in the ball, alpha = 2.5 eps / T, projection.
* pgd-paper (Table 2, Fig. 3): Algorithm 1 on cross-entropy with eps~_1 = eps, eps~_t = 0 after.
* DeepFool: min-norm steps (unbounded) until fooled, at most 50, overshoot 0.02, early stop per input.

Every step is batched; inputs that are done are frozen with ``torch.where``, and with
``early_stop`` the gradients are taken for the inputs still in play only (one no-grad forward per
step decides which). Keeping x + eta in
the box after each step only shrinks each coordinate of eta towards 0, so no norm grows. The
solver sees the gradient on the free coordinates only (:meth:`Box.free_directions`): a step
along a coordinate already at a face of the box would be clipped away, so the linearised problem is
solved on ball-and-box (without it DeepFool stalls on images with many saturated pixels).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .constraints import Box, LpBall, expand_like
from .noise import Noise
from .objectives import Context, Objective
from .solvers import Solver, Step

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """How many steps, their size, where the linearisation point is dithered (Algorithm 1).

    Args:
        steps: T, the number of linearisations (the most, with ``early_stop``).
        step_scale: alpha = step_scale * eps / T (1 for Algorithm 1, 2.5 for Madry's PGD).
        step: if given, alpha = step * eps, overriding ``step_scale`` (1.0 for subset attacks).
        dither: radii eps~_t / eps of the dithering: ``"none"``, ``"first"`` (eps~_1 = eps, 0 after:
            pgd-paper), ``"all"`` (eps~_t = eps / T at every step), or a sequence of T fractions.
        random_start: start from a uniform random point of the eps ball (Madry).
        project: project eta on the eps ball after each step.
        early_stop: freeze an input once the model is fooled at its linearisation point (DeepFool).
        overshoot: the linearisation point and the result are x + (1 + overshoot) eta (DeepFool's 0.02).
        box_aware: solve each linearised problem on ball-and-box: the gradient is zeroed where a step
            would leave the box (:meth:`Box.free_directions`) and x + eta is kept in the box after each
            step. False is classic DeepFool: the box only clips the linearisation points and the result,
            eta accumulates unclipped, and every min-norm step after the first adds ``push`` to its
            distance (as foolbox does) so that iterates cannot creep up to the boundary from one side.
            On a LeNet-5 (MNIST) classic DeepFool found 6-8% smaller perturbations in ~3x the steps.
        push: the distance added to later min-norm steps when not ``box_aware`` (units of the norm).
    """

    steps: int = 1
    step_scale: float = 1.0
    step: float | None = None
    dither: str | Sequence[float] = "none"
    random_start: bool = False
    project: bool = False
    early_stop: bool = False
    overshoot: float = 0.0
    box_aware: bool = True
    push: float = 1e-4

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")
        if self.overshoot < 0:
            raise ValueError(f"overshoot must be >= 0, got {self.overshoot}")
        if self.push < 0:
            raise ValueError(f"push must be >= 0, got {self.push}")
        self.dither_radii()

    def dither_radii(self) -> list[float]:
        """eps~_t / eps for t = 1..T."""
        T = self.steps
        if isinstance(self.dither, str):
            table = {"none": [0.0] * T, "first": [1.0] + [0.0] * (T - 1), "all": [1.0 / T] * T}
            if self.dither not in table:
                raise ValueError(f"dither must be 'none', 'first', 'all' or {T} fractions, got {self.dither!r}")
            return table[self.dither]
        radii = [float(r) for r in self.dither]
        if len(radii) != T or any(r < 0 or math.isnan(r) for r in radii):
            raise ValueError(f"dither needs {T} non-negative fractions of eps, got {self.dither!r}")
        return radii

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
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Run the loop; return the final eta (N, ...), the number of steps each input took (N,) and
        the per-input figures the solver reported (e.g. ``sigma`` of quadratic-l2).

        ``eps`` is the per-input budget (N,), or None for unbounded (min-norm) attacks.
        """
        n = x.shape[0]
        T = self.steps
        if noise is None:
            noise = Noise.create(None, n, x.device)
        if eps is None and (solver.bounded or self.random_start or self.project or any(self.dither_radii())):
            raise ValueError(f"{solver} with this schedule needs a budget eps")
        alpha = None
        if eps is not None:
            alpha = eps * self.step if self.step is not None else eps * (self.step_scale / T)
        scale = 1.0 + self.overshoot
        eta = torch.zeros_like(x)
        if self.random_start:
            eta = box.clip(x + ball.sample(x, eps, noise)) - x
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        state: dict = {}
        for t, radius in enumerate(self.dither_radii()):
            lin = eta
            if radius > 0:
                lin = eta + ball.sample(x, eps * radius, noise)
            x_lin = box.clip(x + scale * lin)
            if self.early_stop:  # one cheap forward decides who is done before any gradient is taken
                act = (~done).nonzero().squeeze(1)
                with torch.no_grad():
                    done[act] = objective.fooled(forward(x_lin[act]), ctx.subset(act))
                if bool(done.all()):
                    break
            value = g = None
            if solver.needs_grad:
                if self.early_stop:  # gradients of the inputs still in play only
                    act = (~done).nonzero().squeeze(1)
                    v_act, g_act, _ = objective.value_and_grad(forward, x_lin[act], ctx.subset(act))
                    value = x.new_zeros(n).index_copy(0, act, v_act)
                    g = torch.zeros_like(x).index_copy(0, act, g_act)
                else:
                    value, g, _ = objective.value_and_grad(forward, x_lin, ctx)
                if self.box_aware:
                    g = box.free_directions(g, x_lin)
                flat = g.reshape(n, -1).abs().amax(dim=1) == 0
                if t == 0 and bool((flat & ~done & (alpha != 0 if alpha is not None else True)).any()):
                    warnings.warn(
                        "the gradient of the objective is exactly zero for some inputs at the first step"
                        + (
                            "; a regression objective with y = f(x) is flat at eta = 0: dither the first"
                            " linearisation point (dither='first' or 'all')"
                            if not objective.classification
                            else " (saturated model or gradient masking?)"
                        ),
                        stacklevel=4,
                    )
            push = self.push if (t > 0 and not self.box_aware) else 0.0
            step = Step(x_lin, g, value, alpha if alpha is not None else x.new_zeros(n), ball, forward,
                        noise, state, box, push)
            new = eta + solver(step)
            if self.project and eps is not None:
                new = ball.project(new, eps)
            if self.box_aware:
                new = (box.clip(x + scale * new) - x) / scale
            active = ~done
            eta = torch.where(expand_like(active, eta), new, eta)
            used = used + active.long()
            if progress is not None:
                progress(1)
        eta = box.clip(x + scale * eta) - x
        if eps is not None:  # exact budget, whatever the float rounding of T steps
            eta = box.clip(x + ball.project(eta, eps)) - x
        info = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.shape == (n,)}
        return eta, used, info
