"""Attack = objective x constraint x solver x schedule.

An :class:`Attack` holds its four parts as objects (:mod:`pertattack.objectives`,
:mod:`pertattack.constraints`, :mod:`pertattack.solvers`, :mod:`pertattack.schedule`) plus the budget,
the seed and how the model is called. It is frozen: the model, the inputs and the labels come with
each call, so one attack is reusable and cloneable (``attack.replace(eps=0.2)``, the keywords of
:mod:`pertattack.keywords`). The presets are recipes of keyword settings (:mod:`pertattack.presets`),
never classes::

    import pertattack
    attack = pertattack.get_attack("pgd", eps=8 / 255, seed=0)
    result = attack(model, x, y)            # x in [0, 1], y the true labels (or None)
    result.x_adv, result.success, result.norms
    pertattack.get_attack("pgd", objective=MyObjective())   # a user's own part, no registration
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._validate import (
    EpsLike,
    FirstOutputCheck,
    budgets,
    check_input,
    check_labels,
    check_reference,
    check_rows,
    check_scale,
    eps_as_asked,
    flag,
    positive_int,
)
from .cascade import restarted, rows_of
from .constraints import Box, Constraint, LpBall, as_batch_eps, fit_budget, make_box
from .keywords import route
from .modelcall import Model, as_model, check_scores, eval_mode
from .noise import Noise
from .objectives import Context, Objective, objective_by_name
from .result import AttackResult, concat_results
from .schedule import Schedule
from .solvers import GNM, Solver

__all__ = ["Attack", "AttackResult"]


@dataclass(frozen=True)
class Attack:
    """A configured attack: the four parts plus budget, seed and how the model is called.

    Call it as ``attack(model, x, y=None, *, eps=None, target=None, box=None, index=None)``. Build it
    with :func:`get_attack`; change it with :meth:`replace` (same keywords).
    """

    name: str = "custom"
    objective: Objective = field(default_factory=lambda: objective_by_name("margin"))
    constraint: Constraint = field(default_factory=Constraint)
    solver: Solver = field(default_factory=GNM)
    schedule: Schedule = field(default_factory=Schedule)
    eps: Any = None
    seed: int | None = None
    batch_size: int | None = None
    progress: bool = False
    preprocess: Any = None
    output: Any = None
    restarts: int = 1
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        self.solver.check(self.constraint)
        if self.eps is not None:
            budgets(self.eps)  # validate early
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {self.seed!r}")
        if self.batch_size is not None:
            positive_int("batch_size", self.batch_size, "a positive integer or None")
        positive_int("restarts", self.restarts)
        flag("progress", self.progress)
        if self.preprocess is not None or self.output is not None:
            Model(nn.Identity(), preprocess=self.preprocess, output=self.output)  # validates both

    def replace(self, _user: bool = False, **kw: Any) -> Attack:
        """A copy with some settings changed (the keywords of :func:`get_attack`)."""
        overrides = self.overrides + (tuple(kw.items()) if _user else ())
        return dataclasses.replace(self, **route(self, kw), overrides=overrides)

    def __repr__(self) -> str:
        p = "inf" if math.isinf(self.constraint.p) else f"{self.constraint.p:g}"
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides if k not in ("p", "eps"))
        return f"Attack({self.name!r}, p={p}, eps={self.eps!r}{extra})"

    @property
    def ball(self) -> LpBall:
        return self.constraint.ball

    @property
    def minimum_norm(self) -> bool:
        """Whether this is a minimum-norm attack (DeepFool's unbounded steps, FMN's adaptive ball), which needs no
        eps, and one run serves every eps (projected on each ball and re-evaluated)."""
        return not self.solver.bounded or self.schedule.project.minimum_norm

    def box_for(self, model: Any, box: Any = None) -> Box:
        """The box of a call: the call's ``box=``, else the model wrapper's, else the attack's, else [0, 1]."""
        if box is not None:
            return box if isinstance(box, Box) else make_box(*box)
        if isinstance(model, Model) and model.box is not None:
            return model.box
        return self.box

    @property
    def box(self) -> Box:
        return self.constraint.box if isinstance(self.constraint.box, Box) else Box(0.0, 1.0)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        eps: EpsLike = None,
        target: Tensor | None = None,
        box: tuple[float | Tensor, float | Tensor] | None = None,
        index: Tensor | None = None,
    ) -> AttackResult | list[AttackResult]:
        """Attack ``model`` at inputs ``x``.

        Args:
            model: any ``nn.Module`` mapping (N, ...) to scores (N, K) (or to outputs (N, ...) for a
                regression objective), or a :class:`pertattack.Model` wrapping one with its box,
                preprocessing and output selector. It runs in eval mode; its own mode is restored.
            x: inputs (N, ...) inside the box (default [0, 1]); never modified. float16/bfloat16 inputs
                are attacked in float32 and the result rounded toward x, so the budget still holds.
            y: true labels (N,) (regression: the reference outputs); None: the model's prediction
                (regression: f(x)).
            eps: budget, overriding the attack's. One rule: a Python list/tuple of numbers means several
                budgets (a list of results, one per eps); a float, a 0-d or (N,) tensor or NumPy array
                means one budget (per input when (N,)).
            target: target classes (N,) for an objective that needs a target, or that a target steers while
                success stays untargeted (``apgd-dlrt-R``: the target then replaces the class of rank R).
            box: ``(lo, hi)`` of valid inputs for this call (scalars or per-channel tensors such as
                shape (C, 1, 1)), overriding the attack's (default (0, 1)).
            index: (N,) integer identity of each input (its position in the data set; default 0..N-1).
                Every random draw for input i (random start, dithering, random baselines) depends only
                on (seed, index[i]): the same input gets the same result in any batch, chunk or process.

        Returns:
            An :class:`AttackResult` (a list of them when eps is a sequence).

        Shape:
            x: (N, ...); y, target: (N,); result.x_adv: like x; result.success, result.norms: (N,).
        """
        fwd = as_model(model, preprocess=self.preprocess, output=self.output,
                       box=box if box is not None else self.constraint.box)
        the_box = self.box_for(model, box)
        eps_list, many = budgets(self.eps if eps is None else eps)
        obj = self.objective
        if (target is not None and not (obj.needs_target or obj.steered)) or (target is None and obj.needs_target):
            raise ValueError(f"target=... goes with an objective that needs a target (or is steered by one) and only "
                             f"there; attack {self.name!r} has objective {obj!r}"
                             + (" and needs target=" if obj.needs_target else ""))
        if eps_list == [None] and not self.minimum_norm:
            raise ValueError(f"attack {self.name!r} needs a budget: pass eps=... (in the units of the box)")
        x_in = check_input(x, the_box)
        n = x_in.shape[0]
        check_rows(n, y=y, target=target, eps=eps_list)  # before chunking: a slice would hide a wrong length
        check_scale(eps_list, self.ball.p, the_box, x_in, warn=not self.solver.subsets)
        xw = x_in.to(torch.float32 if x_in.dtype in (torch.float16, torch.bfloat16) else x_in.dtype)
        bs = self.batch_size or n
        noise = Noise.create(self.seed, n, x_in.device, index)  # seed None: one drawn from torch's generator
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            total = math.ceil(n / bs) * self.schedule.steps * (1 if self.minimum_norm else len(eps_list))
            bar = tqdm(total=total, desc=self.name, unit="step")
        saved_dtype = fwd.input_dtype
        fwd.input_dtype = x_in.dtype
        try:
            with eval_mode(fwd):
                chunks = [
                    self._run_chunk(fwd, xw[i : i + bs], _slice(y, i, bs), _slice(target, i, bs),
                                    [rows_of(e, slice(i, i + bs)) for e in eps_list],
                                    [Noise(noise.seed, noise.index[i : i + bs]) for _ in eps_list], bar, the_box,
                                    x_in.dtype)
                    for i in range(0, n, bs)
                ]
        finally:
            fwd.input_dtype = saved_dtype
            if bar is not None:
                bar.close()
        results = [concat_results([c[j] for c in chunks], self.ball.p) for j in range(len(eps_list))]
        for r in results:
            r.attack = self.name
        return results if many else results[0]

    def _run_chunk(self, fwd: Model, x: Tensor, y: Tensor | None, target: Tensor | None,
                   eps_list: list[float | Tensor | None], noises: list[Noise], bar: Any, box: Box,
                   dtype: torch.dtype) -> list[AttackResult]:
        n = x.shape[0]
        ctx, loop_fwd = self._context(fwd, x, y, target)
        progress = bar.update if bar is not None else None

        def run(e: Tensor | None, noise: Noise) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            def once(rows: Tensor | None, nz: Noise) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
                return self.schedule.run(loop_fwd, rows_of(x, rows), rows_of(e, rows), self.objective, self.solver,
                                         self.ball, box, rows_of(ctx, rows), nz, progress,
                                         self.constraint.partition)  # type: ignore[arg-type]

            return restarted(once, self.restarts, noise, robust)

        def robust(eta: Tensor) -> Tensor:  # the inputs a restart runs on
            with torch.no_grad():
                return ~self.objective.fooled(fwd(x + eta), ctx)

        results = []
        for j, (e, noise) in enumerate(zip(eps_list, noises, strict=True)):
            eb = None if e is None else as_batch_eps(e, n, x)
            if j == 0 or not self.minimum_norm:  # one minimum-norm run serves every eps
                eta, steps, info = run(None if self.minimum_norm else eb, noise)
            results.append(self._result(fwd, x, eta, eb, ctx, steps, info, box, dtype, e))
        return results

    def _context(self, fwd: Model, x: Tensor, y: Any, target: Any) -> tuple[Context, Any]:
        """The context of a chunk (labels, target or reference output, checked) and the model the loop calls."""
        ctx = Context(ball=self.ball)
        obj = self.objective
        sched = self.schedule
        loop_fwd: Any = fwd
        # With labels given, the clean forward f(x) only validates the labels and the scores. When nothing
        # else needs f(x), the loop's first forward does the same checks instead: one forward fewer (FGSM:
        # the floor + the success check). Where that forward is not at x itself (a random start, a dithered
        # point), f(x) is computed without a graph and checked instead, to tell a model NaN at x (an error)
        # from one NaN elsewhere (those inputs fail, with a warning): one forward more, no sync more.
        if (y is not None and target is None and obj.classification and self.restarts == 1
                and type(obj).prepare is Objective.prepare and self.solver.needs_grad):
            at_x = sched.start.at_zero and sched.dither_radii()[0] == 0
            loop_fwd = FirstOutputCheck(fwd, y, x.device, None if at_x else x)
            ctx.label = loop_fwd.label
        else:
            with torch.no_grad():
                out0 = fwd(x)
            if obj.classification:
                check_scores(out0)
                ctx.label = check_labels(y, out0, "y") if y is not None else out0.argmax(dim=1)
                if target is not None:
                    ctx.target = check_labels(target, out0, "target")
                    if (ctx.target == ctx.label).any():
                        raise ValueError("target equals the true label (or the prediction) for some inputs")
                obj.prepare(out0, ctx)
            else:
                ctx.reference = check_reference(y, out0)
                if y is not None and not torch.equal(ctx.reference, out0):
                    ctx.extra["truth"] = ctx.reference  # eq. 12 (solvers that use the model's Jacobian need it)
        return ctx, loop_fwd

    def _result(self, fwd: Model, x: Tensor, eta: Tensor, eps: Tensor | None, ctx: Context, steps: Tensor,
                info: dict[str, Tensor], box: Box, dtype: torch.dtype, eps_asked: Any) -> AttackResult:
        bad = ~torch.isfinite(eta.reshape(eta.shape[0], -1)).all(dim=1)
        if "nonfinite" in info:  # NaN/inf in the objective or its gradient at some step (schedule.run)
            bad = bad | info["nonfinite"]
            info = {k: v for k, v in info.items() if k != "nonfinite"}
        if bool(bad.any()):
            warnings.warn(f"NaN or inf in the model's output or its gradient during the attack for inputs "
                          f"{bad.nonzero().flatten().tolist()[:10]}: they are returned unperturbed and marked as "
                          "failed", stacklevel=4)
            eta = torch.where(bad.reshape(-1, *([1] * (eta.dim() - 1))), torch.zeros_like(eta), eta)
        x_out = x.to(dtype)
        # the budget as asked (float64), not as rounded to the working dtype: the norm of the returned
        # x_adv - x, computed exactly, is at most what the user asked for
        eps_report = None if eps is None else eps_as_asked(eps_asked, x.shape[0], x.device)
        x_adv = fit_budget(x_out, x + eta, eps_report, self.ball, box)
        eta_out = x_adv - x_out  # norms: of the returned tensors in float64, the precision of eps (fit_budget)
        success = pred = margin = None
        with torch.no_grad():
            out = fwd(x_adv)
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
        if self.objective.classification:
            pred = out.argmax(dim=1)
            success = self.objective.fooled(out, ctx) & finite & ~bad
            margin = self.objective.margin(out, ctx)
        if not bool(finite.all()):  # regression: no success flag, but a NaN output at x_adv is never silent
            warnings.warn(f"the model's output at x_adv is NaN or inf for inputs "
                          f"{(~finite).nonzero().flatten().tolist()[:10]}"
                          + (": marked as not fooled" if success is not None else ""), stacklevel=4)
        return AttackResult(x_adv=x_adv, eta=eta_out, norms=self.ball.norm(x_adv.double() - x_out.double()),
                            success=success, eps=eps_report, label=ctx.label, pred=pred, steps=steps, p=self.ball.p,
                            margin=margin, info=info)


def _slice(t: Tensor | None, i: int, bs: int) -> Tensor | None:
    return None if t is None else t[i : i + bs]
