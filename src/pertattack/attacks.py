"""Attack = objective x constraint x solver x schedule, and the registry of the paper's presets.

An :class:`Attack` is a frozen configuration: the model, the inputs and the labels come with each
call, so one attack is reusable and cloneable (``attack.replace(eps=0.2)``). Presets are entries of
a table of keyword settings, never classes: ``get_attack("alg1-10", eps=0.1)``.

Example::

    import pertattack
    attack = pertattack.get_attack("pgd", eps=8 / 255, seed=0)
    result = attack(model, x, y)            # x in [0, 1], y the true labels (or None)
    result.x_adv, result.success, result.norms
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .constraints import Box, LpBall, Partition, as_batch_eps
from .modelcall import ModelCall, check_scores, eval_mode
from .noise import Noise
from .objectives import OBJECTIVES, Context, Margin, Objective, Targeted
from .result import AttackResult, concat_results
from .schedule import Schedule
from .solvers import GNM, MinNorm, Quadratic, RandomGaussian, RandomSign, RandomSubset, SingleSubset, Solver

__all__ = ["Attack", "AttackResult", "get_attack", "list_attacks", "PRESETS"]

EpsLike = float | Sequence[float] | Tensor | None


def _solver(name: str, partition: Any, power_iters: int = 100, tol: float = 1e-6, svd_method: str = "lanczos"
            ) -> Solver:
    table: dict[str, Callable[[], Solver]] = {
        "gnm": GNM,
        "min-norm": MinNorm,
        "single-subset": lambda: SingleSubset(Partition(partition)),
        "random-sign": RandomSign,
        "random-gaussian": RandomGaussian,
        "random-subset": lambda: RandomSubset(Partition(partition)),
        **{
            f"quadratic-{norm}": (
                lambda norm=norm: Quadratic(norm, Partition(partition), int(power_iters), float(tol), svd_method)
            )
            for norm in ("l2", "l1", "linf", "subset")
        },
    }
    if name not in table:
        raise ValueError(f"unknown solver {name!r}; known: {sorted(table)}")
    return table[name]()


def _objective(name: str | Objective, params: dict) -> Objective:
    if isinstance(name, Objective):
        return name
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    if name == "transfer":
        base = _objective(params.get("base", "cross-entropy"), {**params, "base": None})
        return OBJECTIVES["transfer"](surrogate=params.get("surrogate"), base=base)  # type: ignore[call-arg]
    kw = {}
    if name in ("margin", "score", "targeted", "deepfool"):
        kw["probs"] = bool(params.get("probs", False))
    if name == "deepfool":
        kw["candidates"] = int(params.get("candidates", 10))
    return OBJECTIVES[name](**kw)  # type: ignore[call-arg]


# Every keyword a preset or an override may set, with its default.
DEFAULTS: dict[str, Any] = {
    "objective": "margin",  # a name of objectives.OBJECTIVES or an Objective
    "p": math.inf,
    "solver": "gnm",
    "eps": None,  # float, per-input tensor, or a sequence of floats (one result per eps)
    "steps": 1,
    "step_scale": 1.0,
    "step": None,
    "dither": "none",
    "random_start": False,
    "project": False,
    "early_stop": False,
    "overshoot": 0.0,
    "box_aware": True,
    "box": (0.0, 1.0),
    "preprocess": None,
    "output": None,
    "probs": False,
    "candidates": 10,
    "surrogate": None,
    "base": "cross-entropy",
    "partition": "pixel",
    "power_iters": 100,
    "tol": 1e-6,
    "svd_method": "lanczos",
    "seed": None,
    "batch_size": None,
    "progress": False,
}

_ALG1 = dict(objective="margin", p=math.inf, solver="gnm")
_MADRY = dict(objective="cross-entropy", p=math.inf, solver="gnm", random_start=True, project=True, step_scale=2.5)

_REG = dict(objective="regression", p=math.inf, solver="gnm")

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fgsm": ("FGSM (Goodfellow et al.): one GNM step on cross-entropy, p = inf",
             dict(objective="cross-entropy", solver="gnm")),
    "bim": ("BIM (Kurakin et al.): 10 steps of eps/10 on cross-entropy, projected",
            dict(objective="cross-entropy", solver="gnm", steps=10, project=True)),
    "pgd": ("PGD (Madry et al.): random start, 40 steps of 2.5 eps/T, projection on the ball", dict(_MADRY, steps=40)),
    "pgd-paper": ("PGD as the paper reads it (Table 2, Fig. 3): Algorithm 1 on cross-entropy, steps of eps/T, "
                  "dithered once (eps~_1 = eps)",
                  dict(objective="cross-entropy", solver="gnm", steps=10, dither="first")),
    "deepfool": ("DeepFool (Moosavi-Dezfooli et al.): min-norm steps on the closest class, until fooled, "
                 "at most 50, overshoot 0.02, box only clipping the iterates; p = 2 (p = inf with p=inf)",
                 dict(objective="deepfool", p=2.0, solver="min-norm", steps=50, early_stop=True, overshoot=0.02,
                      box_aware=False)),
    "alg1": ("Algorithm 1 with T = 1: GNM on the margin (AGP, eq. 2)", dict(_ALG1)),
    "alg1-T": ("Algorithm 1 with T steps of eps/T on the margin (e.g. alg1-10)", dict(_ALG1, steps=10)),
    "alg2": ("Algorithm 2: GNM on the score f_k alone", dict(objective="score", solver="gnm")),
    "targeted": ("Targeted Algorithm 1-10: margin towards target=... classes",
                 dict(_ALG1, objective="targeted", steps=10)),
    "transfer": ("Transfer: Algorithm 1-10 on cross-entropy of surrogate=<model>, judged on the model",
                 dict(objective="transfer", base="cross-entropy", solver="gnm", steps=10)),
    "random": ("Random baseline: Bernoulli +-eps entries", dict(solver="random-sign")),
    "random-l2": ("Random baseline: Gaussian scaled to norm_2 = eps", dict(solver="random-gaussian", p=2.0)),
    # Regression (Sections 3-4): maximise norm_2(y - f(x + eta))^2, y = f(x) unless given.
    "quadratic-l2": ("Regression, eq. 14: eps times the top right singular vector of J (power iteration, "
                     "matrix-free); info['sigma'] = norm(J)_{2->2}", dict(_REG, solver="quadratic-l2", p=2.0)),
    "quadratic-l1": ("Regression, eq. 15: eps on the coordinate of J's largest column (single pixel, gray)",
                     dict(_REG, solver="quadratic-l1", p=1.0)),
    "quadratic-linf": ("Regression, eq. 20: greedy signs by decreasing column norm",
                       dict(_REG, solver="quadratic-linf")),
    "quadratic-pixel": ("Regression, eq. 19-21: the greedy inside each subset (pixel), best subset kept",
                        dict(_REG, solver="quadratic-subset")),
    "linear-l2-T": ("Regression: Algorithm 1 with T GNM steps, p = 2, first linearisation point dithered",
                    dict(_REG, p=2.0, steps=10, dither="first")),
    "linear-linf-T": ("Regression: Algorithm 1 with T GNM steps, p = inf, first linearisation point dithered",
                      dict(_REG, steps=10, dither="first")),
    "linear-pixel-T": ("Regression: T single-subset steps (eq. 23), one new pixel per step, +-eps, dithered first",
                       dict(_REG, solver="single-subset", steps=10, step=1.0, dither="first")),
    "rand-l2": ("Regression baseline: Gaussian scaled to norm_2 = eps", dict(_REG, solver="random-gaussian", p=2.0)),
    "rand-linf": ("Regression baseline: Bernoulli +-eps entries", dict(_REG, solver="random-sign")),
    "rand-pixel-T": ("Regression baseline: +-eps on T random pixels", dict(_REG, solver="random-subset", steps=10,
                                                                           step=1.0)),
}

_TEMPLATE = re.compile(r"^(?P<base>.+)-(?P<T>\d+)$")


def _resolve(name: str) -> dict[str, Any]:
    if name in PRESETS:
        return dict(PRESETS[name][1])
    m = _TEMPLATE.match(name)
    if m and m.group("base") + "-T" in PRESETS:
        return {**PRESETS[m.group("base") + "-T"][1], "steps": int(m.group("T"))}
    names = sorted(PRESETS)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown attack {name!r}.{hint} Known: {', '.join(names)}")


def get_attack(name: str, **overrides: Any) -> Attack:
    """Build a preset by the paper's name, with keyword overrides (``eps``, ``p``, ``steps``, ...).

    ``*-T`` presets take any T in the name: ``alg1-10``, ``linear-l2-20``. Unknown names or keywords
    raise a ValueError that lists the close ones. See :func:`list_attacks`.
    """
    params = {**DEFAULTS, **_resolve(name)}
    return Attack(name=name, params=params).replace(**overrides)


def list_attacks() -> list[dict[str, Any]]:
    """The presets with their description and their four parts."""
    rows = []
    for name, (doc, _) in PRESETS.items():
        a = get_attack(name)
        rows.append(
            dict(name=name, description=doc, objective=repr(a.objective), constraint=f"l{a.ball.p:g} ball",
                 solver=repr(a.solver), schedule=a.schedule)
        )
    return rows


@dataclass(frozen=True)
class Attack:
    """A configured attack: the four parts plus budget, box, model adapter and seed.

    Call it as ``attack(model, x, y=None, *, eps=None, target=None)``. Build it with
    :func:`get_attack`; ``params`` holds the flat keyword settings it was built from.
    """

    name: str
    params: dict[str, Any]
    objective: Objective = field(init=False, repr=False)
    ball: LpBall = field(init=False, repr=False)
    solver: Solver = field(init=False, repr=False)
    schedule: Schedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = self.params
        set_ = object.__setattr__
        set_(self, "ball", LpBall(p["p"]))
        set_(self, "objective", _objective(p["objective"], p))
        set_(self, "solver", _solver(p["solver"], p["partition"], p["power_iters"], p["tol"], p["svd_method"]))
        set_(self, "schedule", Schedule(
            steps=p["steps"], step_scale=p["step_scale"], step=p["step"], dither=p["dither"],
            random_start=p["random_start"], project=p["project"], early_stop=p["early_stop"],
            overshoot=p["overshoot"], box_aware=p["box_aware"]))
        if p["eps"] is not None:
            _eps_list(p["eps"])  # validate early

    def replace(self, **overrides: Any) -> Attack:
        """A copy with some keyword settings changed (same names as :func:`get_attack`)."""
        unknown = [k for k in overrides if k not in DEFAULTS]
        if unknown:
            hints = {k: difflib.get_close_matches(k, list(DEFAULTS), n=3) for k in unknown}
            raise TypeError(
                "unknown keyword(s) "
                + ", ".join(f"{k!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for k, h in hints.items())
                + f"; known: {', '.join(DEFAULTS)}"
            )
        return Attack(name=self.name, params={**self.params, **overrides})

    def __repr__(self) -> str:
        diff = {k: v for k, v in self.params.items() if DEFAULTS.get(k) != v}
        return f"Attack({self.name!r}, " + ", ".join(f"{k}={v!r}" for k, v in diff.items()) + ")"

    @property
    def minimum_norm(self) -> bool:
        """True when the solver decides the size of its steps (DeepFool): one run serves every eps."""
        return not self.solver.bounded

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
                regression objective). It runs in eval mode; its own mode is restored afterwards.
            x: inputs (N, ...) inside the box (default [0, 1]); never modified.
            y: true labels (N,) (regression: the reference outputs); None: the model's prediction
                (regression: f(x)).
            eps: budget, overriding the attack's: a float, a per-input tensor (N,), or a sequence
                of floats, which returns a list with one result per eps.
            target: target classes (N,) for a targeted objective.
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
        if box is not None:
            return self.replace(box=box)(model, x, y, eps=eps, target=target, index=index)
        eps = self.params["eps"] if eps is None else eps
        eps_list, many = _eps_list(eps)
        targeted = getattr(self.objective, "base", self.objective).name == "targeted"
        if (target is not None) != targeted:
            raise ValueError(f"target=... goes with a targeted objective and only there; attack {self.name!r} "
                             f"has objective {self.objective!r}" + (" and needs target=" if targeted else ""))
        if eps_list == [None] and not self.minimum_norm:
            raise ValueError(f"attack {self.name!r} needs a budget: pass eps=... (in the units of the box)")
        x = _check_input(x, self.box)
        n = x.shape[0]
        bs = self.params["batch_size"] or n
        fwd = ModelCall(model, self.params["preprocess"], self.params["output"])
        # one stream per eps, each seeded alike: every result of a list equals its single-eps call
        seed = self.params["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        index = Noise.create(seed, n, x.device, index).index
        bar = None
        if self.params["progress"]:
            from tqdm.auto import tqdm

            total = math.ceil(n / bs) * self.schedule.steps * (1 if self.minimum_norm else len(eps_list))
            bar = tqdm(total=total, desc=self.name, unit="step")
        with eval_mode(model):
            chunks = [
                self._run_chunk(fwd, x[i : i + bs], _slice(y, i, bs), _slice(target, i, bs),
                                [_slice_eps(e, i, bs) for e in eps_list],
                                [Noise(seed, index[i : i + bs]) for _ in eps_list], bar)
                for i in range(0, n, bs)
            ]
        if bar is not None:
            bar.close()
        results = [concat_results([c[j] for c in chunks], self.ball.p) for j in range(len(eps_list))]
        return results if many else results[0]

    @property
    def box(self) -> Box:
        lo, hi = self.params["box"]
        return Box(lo, hi)

    def _run_chunk(
        self,
        fwd: ModelCall,
        x: Tensor,
        y: Tensor | None,
        target: Tensor | None,
        eps_list: list[float | Tensor | None],
        noises: list[Noise],
        bar: Any,
    ) -> list[AttackResult]:
        n = x.shape[0]
        with torch.no_grad():
            out0 = fwd(x)
        ctx = Context(ball=self.ball)
        if self.objective.classification:
            check_scores(out0)
            ctx.label = _check_labels(y, out0, "y") if y is not None else out0.argmax(dim=1)
            if target is not None:
                ctx.target = _check_labels(target, out0, "target")
                if (ctx.target == ctx.label).any():
                    raise ValueError("target equals the true label (or the prediction) for some inputs")
        else:
            ref = out0 if y is None else y.to(out0.dtype)
            if ref.shape != out0.shape:
                raise ValueError(f"y has shape {tuple(ref.shape)}, the model's outputs {tuple(out0.shape)}")
            ctx.reference = ref
        progress = bar.update if bar is not None else None
        run = lambda e, noise: self.schedule.run(  # noqa: E731
            fwd, x, e, self.objective, self.solver, self.ball, self.box, ctx, noise, progress)
        results = []
        if self.minimum_norm:
            eta_free, steps, info = run(None, noises[0])
            for e in eps_list:
                eta = eta_free
                eb = None if e is None else as_batch_eps(e, n, x)
                if eb is not None:
                    eta = self.box.clip(x + self.ball.project(eta, eb)) - x
                results.append(self._result(fwd, x, eta, eb, ctx, steps, info))
        else:
            for e, noise in zip(eps_list, noises, strict=True):
                eb = as_batch_eps(e, n, x)
                eta, steps, info = run(eb, noise)
                results.append(self._result(fwd, x, eta, eb, ctx, steps, info))
        return results

    def _result(self, fwd: ModelCall, x: Tensor, eta: Tensor, eps: Tensor | None, ctx: Context,
                steps: Tensor, info: dict[str, Tensor]) -> AttackResult:
        x_adv = (x + eta).detach()
        eta = x_adv - x
        success = pred = margin = None
        if self.objective.classification:
            with torch.no_grad():
                out = fwd(x_adv)
            pred = out.argmax(dim=1)
            success = self.objective.fooled(out, ctx)
            margin = (Margin() if ctx.target is None else Targeted()).loss(out, ctx)
        return AttackResult(x_adv=x_adv, eta=eta, norms=self.ball.norm(eta), success=success, eps=eps,
                            label=ctx.label, pred=pred, steps=steps, p=self.ball.p, margin=margin, info=info)


def _eps_list(eps: EpsLike) -> tuple[list[float | Tensor | None], bool]:
    if eps is None:
        return [None], False
    if isinstance(eps, Tensor):
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        return [eps], False
    if isinstance(eps, (int, float)):
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        return [float(eps)], False
    vals = [float(e) for e in eps]
    if not vals or any(not math.isfinite(e) or e < 0 for e in vals):
        raise ValueError(f"eps must be a non-empty list of finite values >= 0, got {eps}")
    return list(vals), True


def _check_input(x: Tensor, box: Box) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be batch-first (N, ...), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    box.check(x, "x")
    return x.detach()


def _check_labels(y: Tensor, out: Tensor, name: str) -> Tensor:
    y = torch.as_tensor(y, device=out.device)
    if y.shape != (out.shape[0],):
        raise ValueError(f"{name} must have shape ({out.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {y.dtype}")
    if (y < 0).any() or (y >= out.shape[1]).any():
        raise ValueError(f"{name} must lie in [0, {out.shape[1] - 1}] (the model has {out.shape[1]} classes)")
    return y.long()


def _slice(t: Tensor | None, i: int, bs: int) -> Tensor | None:
    return None if t is None else t[i : i + bs]


def _slice_eps(e: float | Tensor | None, i: int, bs: int) -> float | Tensor | None:
    return e[i : i + bs] if isinstance(e, Tensor) and e.dim() == 1 else e
