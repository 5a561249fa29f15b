"""Attack = objective x constraint x solver x schedule, and the registry of the paper's presets.

An :class:`Attack` holds its four parts as objects (:mod:`pertattack.objectives`,
:mod:`pertattack.constraints`, :mod:`pertattack.solvers`, :mod:`pertattack.schedule`) plus the budget,
the seed and how the model is called. It is frozen: the model, the inputs and the labels come with
each call, so one attack is reusable and cloneable (``attack.replace(eps=0.2)``). A preset is a recipe
of keyword settings, never a class: ``get_attack("alg1-10", eps=0.1)``.

Every keyword goes to the part that owns it (``steps`` to the schedule, ``p`` to the constraint,
``candidates`` to DeepFool's objective, ...); ``part__field`` names the part explicitly
(``schedule__update__momentum=0.9``), and any part may be given as an instance::

    import pertattack
    attack = pertattack.get_attack("pgd", eps=8 / 255, seed=0)
    result = attack(model, x, y)            # x in [0, 1], y the true labels (or None)
    result.x_adv, result.success, result.norms
    pertattack.get_attack("pgd", objective=MyObjective())   # a user's own part, no registration
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._validate import from_table
from .constraints import Box, Constraint, LpBall, as_batch_eps
from .modelcall import Model, as_model, check_scores, eval_mode
from .noise import Noise
from .objectives import Context, Objective, objective_by_name
from .result import AttackResult, concat_results
from .schedule import (
    AdaptiveBall,
    AdaptiveSphere,
    BallProjection,
    Cosine,
    Halving,
    KeepBest,
    Momentum,
    RandomStart,
    Schedule,
    WhenFooled,
    ZeroStart,
)
from .solvers import GNM, MinNorm, Quadratic, RandomGaussian, RandomSign, RandomSubset, SingleSubset, Solver, Square

__all__ = ["Attack", "AttackResult", "get_attack", "list_attacks", "PRESETS", "SOLVERS", "KEYWORDS"]

EpsLike = float | Sequence[float] | Tensor | np.ndarray | None

SOLVERS: dict[str, Any] = {
    "gnm": GNM,
    "min-norm": MinNorm,
    "single-subset": SingleSubset,
    "random-sign": RandomSign,
    "random-gaussian": RandomGaussian,
    "random-subset": RandomSubset,
    "quadratic-l2": lambda: Quadratic("l2"),
    "quadratic-l1": lambda: Quadratic("l1"),
    "quadratic-linf": lambda: Quadratic("linf"),
    "quadratic-subset": lambda: Quadratic("subset"),
    "square": Square,
}


def solver_by_name(name: str) -> Solver:
    """A solver of the table :data:`SOLVERS`, with its default settings."""
    return from_table(SOLVERS, name, "solver", " (or pass a Solver instance)")


# Every keyword get_attack takes, with its meaning: one table, shown by help(get_attack) and checked by a
# test against what the parts accept (a keyword without a line here is a test failure).
KEYWORDS: dict[str, tuple[str, str]] = {
    # the attack itself
    "eps": ("attack", "budget: a float, a per-input tensor/array (N,), or a list of floats (one result each); "
                      "None for a minimum-norm run"),
    "seed": ("attack", "seed of every random draw; input i's draws depend on (seed, index[i]) only"),
    "batch_size": ("attack", "chunk the inputs into batches of this size (None: one batch)"),
    "progress": ("attack", "show a progress bar"),
    "preprocess": ("attack", "(mean, std) applied inside the model call; eps and the box stay in raw units"),
    "output": ("attack", "which part of the model's output holds the scores: index, key or callable"),
    "restarts": ("attack", "run the schedule again from a new random start on the inputs still robust"),
    # the parts, by name or instance
    "objective": ("objective", "the objective L: a name (margin, cross-entropy, score, targeted, deepfool, "
                               "transfer, regression, dlr, dlr-targeted) or an Objective"),
    "constraint": ("constraint", "a Constraint (p, box, partition)"),
    "solver": ("solver", "the solver: a name of SOLVERS or a Solver"),
    "schedule": ("schedule", "a Schedule"),
    # objective settings
    "probs": ("objective", "apply a softmax to the scores first (the paper's f); margin, score, targeted, deepfool"),
    "candidates": ("objective", "DeepFool: the classes searched for the closest boundary (the top ones by score)"),
    "batched_backward": ("objective", "DeepFool: the candidates' gradients from one vmapped backward (True), one "
                                      "backward each (False), or None: vmapped on CUDA only"),
    "surrogate": ("objective", "transfer: the model whose gradients are used (same raw inputs)"),
    "base": ("objective", "transfer: the objective evaluated on the surrogate"),
    "rank": ("objective", "dlr-targeted: the target is the class of this rank in f(x) (2 = runner-up)"),
    # constraint settings
    "p": ("constraint", "the norm of the ball: inf or any p >= 1"),
    "box": ("constraint", "(lo, hi) of valid inputs, scalars or per channel (default (0, 1))"),
    "partition": ("constraint", "subsets of subset attacks: 'pixel' or M subset ids"),
    # solver settings
    "power_iters": ("solver", "quadratic-l2: the most power/Lanczos iterations"),
    "tol": ("solver", "quadratic-l2: relative tolerance on the top singular value"),
    "svd_method": ("solver", "quadratic-l2: 'lanczos' or 'power'"),
    "queries": ("solver", "square: the score queries per input (one per step)"),
    "reuse": ("solver", "single-subset: a subset may be chosen again (its coordinates re-decided within eps)"),
    "p_init": ("solver", "square: the initial share of the input changed by one square"),
    # schedule settings
    "steps": ("schedule", "T, the number of steps (linearisations)"),
    "start": ("schedule", "policy: ZeroStart() or RandomStart()"),
    "step_size": ("schedule", "policy: Constant(scale, fraction), Halving() (APGD) or Cosine(first, last) (FMN)"),
    "update": ("schedule", "policy: Plain() or Momentum(momentum) (APGD)"),
    "lin_point": ("schedule", "policy: Dither(radii), the dithering of the linearisation point"),
    "keep": ("schedule", "policy: KeepLast() or KeepBest(by='loss'|'norm')"),
    "stop": ("schedule", "policy: NeverStop() or WhenFooled(check_first)"),
    "project": ("schedule", "True/False (the eps ball after each step), or a Projection policy"),
    "overshoot": ("schedule", "linearisation point and result at x + (1 + overshoot) eta (DeepFool)"),
    "mask_blocked": ("schedule", "solve each step on the coordinates the box lets move"),
    "clip_iterates": ("schedule", "keep x + eta in the box after every step"),
    "push": ("schedule", "distance added to min-norm steps after the first (classic DeepFool: 1e-4)"),
    "random_start": ("schedule", "start uniform in the eps ball (RandomStart) instead of 0"),
    "step_scale": ("schedule", "step alpha = step_scale * eps / T"),
    "step": ("schedule", "step alpha = step * eps (overrides step_scale)"),
    "dither": ("schedule", "dithering radii eps~_t / eps: 'none', 'first', 'all' or T fractions"),
    "early_stop": ("schedule", "stop an input once fooled, checked before its gradient (DeepFool)"),
    "box_aware": ("schedule", "True: mask_blocked and clip_iterates; False: classic DeepFool's box handling"),
    "momentum": ("schedule", "APGD: the momentum of the update"),
    "rho": ("schedule", "APGD: halve the step where the loss improved at fewer than rho of the steps"),
    "init_scale": ("schedule", "APGD: the first step is init_scale * eps"),
    "first": ("schedule", "FMN: the first step size (units of the norm)"),
    "last": ("schedule", "FMN: the last step size"),
    "gamma": ("schedule", "FMN: the first relative change of the adaptive radius"),
    "gamma_final": ("schedule", "FMN: the last relative change of the adaptive radius"),
}

_ATTACK_FIELDS = ("eps", "seed", "batch_size", "progress", "preprocess", "output", "restarts")
_PARTS = ("objective", "constraint", "solver", "schedule")
_POLICIES = ("start", "step_size", "update", "lin_point", "keep", "stop", "project")

_ALG1 = dict(objective="margin", solver="gnm")
_MADRY = dict(objective="cross-entropy", solver="gnm", random_start=True, project=True, step_scale=2.5)
_REG = dict(objective="regression", solver="gnm")
_APGD = dict(solver="gnm", steps=100, start=RandomStart(), step_size=Halving(), update=Momentum(),
             keep=KeepBest("loss"), stop=WhenFooled(), project=BallProjection(), mask_blocked=False)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fgsm": ("FGSM (Goodfellow et al.): one GNM step on cross-entropy, p = inf",
             dict(objective="cross-entropy", solver="gnm")),
    "bim": ("BIM (Kurakin et al.): 10 steps of eps/10 on cross-entropy, projected",
            dict(objective="cross-entropy", solver="gnm", steps=10, project=True)),
    "pgd": ("PGD (Madry et al.): random start, 40 steps of 2.5 eps/T, projection on the ball", dict(_MADRY, steps=40)),
    "pgd-paper": ("PGD as the paper reads it (Table 2, Fig. 3): Algorithm 1 on cross-entropy, steps of eps/T, "
                  "dithered once (eps~_1 = eps)",
                  dict(objective="cross-entropy", solver="gnm", steps=10, dither="first")),
    "deepfool": ("DeepFool (Moosavi-Dezfooli et al.): min-norm steps on the closest of the 10 highest-scoring other "
                 "classes (candidates=10), until fooled, at most 50, overshoot 0.02, box only clipping the iterates; "
                 "p = 2 (p = inf with p=inf)",
                 dict(objective="deepfool", p=2.0, solver="min-norm", steps=50, early_stop=True, overshoot=0.02,
                      box_aware=False)),
    "alg1": ("Algorithm 1 with T = 1: GNM on the margin (AGP, eq. 2); not dithered (Table 2 dithers it: "
             "dither='first', +2.6 points of fooling ratio on LeNet-5, docs/reproduction)", dict(_ALG1)),
    "alg1-T": ("Algorithm 1 with T steps of eps/T on the margin (e.g. alg1-10); not dithered (dither='first' is "
               "Table 2's, +0.5 points for alg1-10)", dict(_ALG1, steps=10)),
    "alg2": ("Algorithm 2: GNM on the score f_k alone", dict(objective="score", solver="gnm")),
    "targeted": ("Targeted Algorithm 1-10: margin towards target=... classes; not dithered (dither='first' is "
                 "Table 2's, +0.3 points)",
                 dict(_ALG1, objective="targeted", steps=10)),
    "transfer": ("Transfer: Algorithm 1-10 on cross-entropy of surrogate=<model>, judged on the model",
                 dict(objective="transfer", base="cross-entropy", solver="gnm", steps=10)),
    "random": ("Random baseline: Bernoulli +-eps entries", dict(solver="random-sign")),
    "random-l2": ("Random baseline: Gaussian scaled to norm_2 = eps", dict(solver="random-gaussian", p=2.0)),
    # The attacks of today's strongest evaluations (Croce and Hein 2020; Pintor et al. 2021;
    # Andriushchenko et al. 2020), as combinations of the same parts.
    "apgd-ce": ("APGD-CE (Croce and Hein 2020): 100 steps on cross-entropy, random start, step 2 eps halved at "
                "checkpoints where progress stalls, momentum 0.75, best iterate; p = inf or 2",
                dict(_APGD, objective="cross-entropy")),
    "apgd-dlr": ("APGD-DLR: APGD on the difference-of-logits-ratio loss (shift and scale invariant)",
                 dict(_APGD, objective="dlr")),
    "apgd-dlrt-R": ("APGD on the targeted DLR loss towards the class of rank R in f(x) (2 = runner-up); success "
                    "stays untargeted. apgd-t runs R = 2..10 as a cascade",
                    dict(_APGD, objective="dlr-targeted", steps=100)),
    "fmn": ("FMN (Pintor et al. 2021): minimum-norm, 100 steps on the margin, an adaptive ball that shrinks while "
            "fooled and grows while not, normalised-gradient steps cosine-annealed from 1 to 0.01, the smallest "
            "fooling iterate kept; p = inf or 2",
            dict(objective="margin", solver=GNM(2.0), steps=100, step_size=Cosine(1.0, 0.01), keep=KeepBest("norm"),
                 project=AdaptiveBall())),
    "ddn": ("DDN (Rony et al. 2019): minimum-norm, 100 steps of the normalised cross-entropy gradient, "
            "cosine-annealed, eta rescaled onto a sphere whose radius shrinks by 5% while fooled and grows by 5% "
            "while not; the smallest fooling iterate kept; p = 2",
            dict(objective="cross-entropy", solver=GNM(2.0), p=2.0, steps=100, step_size=Cosine(1.0, 0.01),
                 keep=KeepBest("norm"), project=AdaptiveSphere())),
    "square": ("Square (Andriushchenko et al. 2020): score-only random search on the margin, queries=5000 (one per "
               "step), l-inf stripes / l2 tiles to start, windows covering p_init=0.8 of the input at first; stops "
               "when fooled; p = inf or 2",
               dict(objective="margin", solver="square", steps=5000, step=1.0, stop=WhenFooled(), mask_blocked=False)),
    # Regression (Sections 3-4): maximise norm_2(y - f(x + eta))^2, y = f(x) unless given.
    "quadratic-l2": ("Regression, eq. 14: eps times the top right singular vector of J (Lanczos, "
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
    if not isinstance(name, str):
        raise TypeError(f"attack name must be a string, got {name!r}")
    if name in PRESETS:
        return dict(PRESETS[name][1])
    m = _TEMPLATE.match(name)
    if m and m.group("base") + "-T" in PRESETS:
        return {**PRESETS[m.group("base") + "-T"][1], "steps": int(m.group("T"))}
    if m and m.group("base") + "-R" in PRESETS:
        return {**PRESETS[m.group("base") + "-R"][1], "rank": int(m.group("T"))}
    names = sorted(PRESETS) + sorted(_COMPOSITES)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown attack {name!r}.{hint} Known: {', '.join(names)}")


# Attacks made of several attacks (cascades), registered by the modules that build them.
_COMPOSITES: dict[str, tuple[str, Any]] = {}


def get_attack(name: str, **overrides: Any) -> Any:
    """Build a preset by the paper's name, with keyword overrides (``eps``, ``p``, ``steps``, ...).

    ``*-T`` presets take any T in the name: ``alg1-10``, ``linear-l2-20``. Every keyword goes to the
    part that owns it; ``part__field=value`` names the part; a part may be an instance
    (``objective=MyObjective()``). Unknown names or keywords raise errors that list the close ones.
    The keywords (generated from :data:`KEYWORDS`):
    """
    if isinstance(name, str) and name in _COMPOSITES:
        return _COMPOSITES[name][1](**overrides)
    return _base_attack(name).replace(**_resolve(name)).replace(_user=True, **overrides)


def _keyword_doc() -> str:
    lines = []
    for part in ("attack", "objective", "constraint", "solver", "schedule"):
        lines.append(f"\n    {part}:")
        for k, (owner, doc) in KEYWORDS.items():
            if owner == part:
                lines.append(f"        {k}: {doc}")
    return "\n".join(lines) + "\n"


get_attack.__doc__ = (get_attack.__doc__ or "") + _keyword_doc()


def _base_attack(name: str) -> Attack:
    return Attack(name=name)


def list_attacks() -> list[dict[str, Any]]:
    """The presets with their description and their four parts."""
    rows = []
    for name, (doc, _) in PRESETS.items():
        a = get_attack(name)
        rows.append(
            dict(name=name, description=doc, objective=repr(a.objective), constraint=repr(a.constraint),
                 solver=repr(a.solver), schedule=a.schedule)
        )
    for name, (doc, _build) in _COMPOSITES.items():
        rows.append(dict(name=name, description=doc, objective="(several)", constraint="", solver="(cascade)",
                         schedule=None))
    return rows


def _fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()


def _set_field(obj: Any, key: str, value: Any, where: str) -> Any:
    if key not in _fields(obj):
        raise TypeError(f"{where} {obj!r} has no setting {key!r}")
    return dataclasses.replace(obj, **{key: value})


def _as_part(kind: str, value: Any) -> Any:
    if kind == "objective":
        if isinstance(value, str):
            return objective_by_name(value)
        if not isinstance(value, Objective):
            raise TypeError(f"objective must be a name or an Objective instance, got {value!r}")
    elif kind == "solver":
        if isinstance(value, str):
            return solver_by_name(value)
        if not isinstance(value, Solver):
            raise TypeError(f"solver must be a name or a Solver instance, got {value!r}")
    elif kind == "constraint" and not isinstance(value, Constraint):
        raise TypeError(f"constraint must be a Constraint instance, got {value!r}")
    elif kind == "schedule" and not isinstance(value, Schedule):
        raise TypeError(f"schedule must be a Schedule instance, got {value!r}")
    return value


def _check_bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")


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
            _eps_list(self.eps)  # validate early
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {self.seed!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {self.restarts!r}")
        _check_bool("progress", self.progress)
        if self.preprocess is not None or self.output is not None:
            Model(nn.Identity(), preprocess=self.preprocess, output=self.output)  # validates both

    def replace(self, _user: bool = False, **kw: Any) -> Attack:
        """A copy with some settings changed (the keywords of :func:`get_attack`)."""
        parts: dict[str, Any] = {k: getattr(self, k) for k in _PARTS}
        top: dict[str, Any] = {}
        for k in [k for k in kw if k in _PARTS]:  # whole parts first, then their settings
            parts[k] = _as_part(k, kw[k])
        for k, v in kw.items():
            if k in _PARTS:
                continue
            k = "steps" if k == "queries" and isinstance(parts["solver"], Square) else k  # one query per step
            if k in _ATTACK_FIELDS:
                top[k] = v
            elif "__" in k:
                parts.update(self._route_path(parts, k, v))
            elif k in ("p", "box", "partition"):
                parts["constraint"] = dataclasses.replace(parts["constraint"], **{k: v})
            elif k in Schedule.keywords():
                parts["schedule"] = parts["schedule"].with_(**{k: v})
            else:
                parts.update(self._route_flat(parts, k, v))
        overrides = self.overrides + (tuple(kw.items()) if _user else ())
        return dataclasses.replace(self, **parts, **top, overrides=overrides)

    @staticmethod
    def _route_flat(parts: dict[str, Any], k: str, v: Any) -> dict[str, Any]:
        owners = [p for p in ("objective", "solver") if k in _fields(parts[p])]
        sched = parts["schedule"]
        owners += [f"schedule.{pol}" for pol in _POLICIES if k in _fields(getattr(sched, pol))]
        if not owners:
            known = sorted(KEYWORDS)
            if k in KEYWORDS:
                owner = KEYWORDS[k][0]
                raise TypeError(f"keyword {k!r} ({KEYWORDS[k][1]}) does not apply to this attack's {owner} "
                                f"{parts.get(owner, '')!r}")
            close = difflib.get_close_matches(k, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TypeError(f"unknown keyword {k!r}{hint}; known: {', '.join(known)}")
        owner = owners[0]
        if owner.startswith("schedule."):
            pol = owner.split(".", 1)[1]
            return {"schedule": sched.with_(**{pol: dataclasses.replace(getattr(sched, pol), **{k: v})})}
        return {owner: dataclasses.replace(parts[owner], **{k: v})}

    @staticmethod
    def _route_path(parts: dict[str, Any], k: str, v: Any) -> dict[str, Any]:
        path = k.split("__")
        if path[0] not in _PARTS:
            raise TypeError(f"unknown part {path[0]!r} in {k!r}; parts: {', '.join(_PARTS)}")

        def put(obj: Any, names: list[str]) -> Any:
            if len(names) == 1:
                if isinstance(obj, Schedule):
                    return obj.with_(**{names[0]: v})
                return _set_field(obj, names[0], v, k)
            return _set_field(obj, names[0], put(getattr(obj, names[0]), names[1:]), k)

        return {path[0]: put(parts[path[0]], path[1:])}

    def __repr__(self) -> str:
        p = "inf" if math.isinf(self.constraint.p) else f"{self.constraint.p:g}"
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides if k not in ("p", "eps"))
        return f"Attack({self.name!r}, p={p}, eps={self.eps!r}{extra})"

    @property
    def ball(self) -> LpBall:
        return self.constraint.ball

    @property
    def minimum_norm(self) -> bool:
        """True for minimum-norm attacks (DeepFool's unbounded steps, FMN's adaptive ball): they need no
        eps, and one run serves every eps (projected on each ball and re-evaluated)."""
        return not self.solver.bounded or isinstance(self.schedule.project, (AdaptiveBall, AdaptiveSphere))

    def box_for(self, model: Any, box: Any = None) -> Box:
        """The box of a call: the call's ``box=``, else the model wrapper's, else the attack's, else [0, 1]."""
        from .constraints import make_box

        if box is not None:
            b = box if isinstance(box, Box) else make_box(*box)
        elif isinstance(model, Model) and model.box is not None:
            b = model.box
        elif self.constraint.box is not None:
            b = self.constraint.box  # type: ignore[assignment]
        else:
            b = Box(0.0, 1.0)
        return b

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
            target: target classes (N,) for an objective that needs a target.
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
        eps = self.eps if eps is None else eps
        eps_list, many = _eps_list(eps)
        if (target is not None) != self.objective.needs_target:
            raise ValueError(f"target=... goes with an objective that needs a target and only there; attack "
                             f"{self.name!r} has objective {self.objective!r}"
                             + (" and needs target=" if self.objective.needs_target else ""))
        if eps_list == [None] and not self.minimum_norm:
            raise ValueError(f"attack {self.name!r} needs a budget: pass eps=... (in the units of the box)")
        x_in = _check_input(x, the_box)
        n = x_in.shape[0]
        _check_rows(n, y=y, target=target, eps=eps_list)  # before chunking: a slice would hide a wrong length
        work = torch.float32 if x_in.dtype in (torch.float16, torch.bfloat16) else x_in.dtype
        xw = x_in.to(work)
        bs = self.batch_size or n
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        index = Noise.create(seed, n, x_in.device, index).index
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
                                    [_slice_eps(e, i, bs) for e in eps_list],
                                    [Noise(seed, index[i : i + bs]) for _ in eps_list], bar, the_box, x_in.dtype)
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

    def _run_chunk(
        self,
        fwd: Model,
        x: Tensor,
        y: Tensor | None,
        target: Tensor | None,
        eps_list: list[float | Tensor | None],
        noises: list[Noise],
        bar: Any,
        box: Box,
        dtype: torch.dtype,
    ) -> list[AttackResult]:
        n = x.shape[0]
        ctx = Context(ball=self.ball)
        obj = self.objective
        sched = self.schedule
        loop_fwd: Any = fwd
        # With labels given, the clean forward f(x) only validates the labels and the scores. When nothing
        # else needs f(x), the loop's first forward does the same checks instead: one forward fewer (FGSM:
        # the floor + the success check). Where that forward is not at x itself (a random start, a dithered
        # point), f(x) is computed only if its output is not finite, to tell a model NaN at x (an error)
        # from one NaN elsewhere (those inputs fail, with a warning).
        if (y is not None and target is None and obj.classification and self.restarts == 1
                and type(obj).prepare is Objective.prepare and self.solver.needs_grad):
            at_x = isinstance(sched.start, ZeroStart) and sched.dither_radii()[0] == 0
            loop_fwd = _FirstOutputCheck(fwd, y, x.device, None if at_x else x)
            ctx.label = loop_fwd.label
        else:
            with torch.no_grad():
                out0 = fwd(x)
            if obj.classification:
                check_scores(out0)
                ctx.label = _check_labels(y, out0, "y") if y is not None else out0.argmax(dim=1)
                if target is not None:
                    ctx.target = _check_labels(target, out0, "target")
                    if (ctx.target == ctx.label).any():
                        raise ValueError("target equals the true label (or the prediction) for some inputs")
                obj.prepare(out0, ctx)
            else:
                if not torch.isfinite(out0).all():
                    raise ValueError("the model's output at the clean inputs contains NaN or inf")
                if y is not None:
                    y = torch.as_tensor(y, device=out0.device)
                    if not y.is_floating_point():
                        raise TypeError(f"y of a regression attack is the reference output (floats), got {y.dtype}")
                    if not torch.isfinite(y).all():
                        raise ValueError("y (the reference output) contains NaN or inf")
                ref = out0 if y is None else y.to(out0.dtype)
                if ref.shape != out0.shape:
                    raise ValueError(f"y has shape {tuple(ref.shape)}, the model's outputs {tuple(out0.shape)}")
                ctx.reference = ref
                if y is not None and not torch.equal(ref, out0):
                    ctx.extra["truth"] = ref  # eq. 12 (solvers that use the model's Jacobian need it)
        progress = bar.update if bar is not None else None

        def run(e: Tensor | None, noise: Noise) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            eta, steps, info = self.schedule.run(loop_fwd, x, e, obj, self.solver, self.ball, box, ctx, noise, progress,
                                                 self.constraint.partition)  # type: ignore[arg-type]
            for _ in range(self.restarts - 1):  # again from a new random start, on the inputs still robust
                with torch.no_grad():
                    robust = ~obj.fooled(fwd(x + eta), ctx)
                if not bool(robust.any()):
                    break
                idx = robust.nonzero().squeeze(1)
                sub_noise = Noise(noise.seed, noise.index[idx], noise.counter)
                eta_r, steps_r, info_r = self.schedule.run(fwd, x[idx], None if e is None else e[idx], obj,
                                                           self.solver, self.ball, box, ctx.subset(idx), sub_noise,
                                                           progress, self.constraint.partition)  # type: ignore[arg-type]
                noise.counter = sub_noise.counter
                if "nonfinite" in info_r:  # NaN/inf met in a restart: reported like the first run's
                    nf = info.get("nonfinite", torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
                    info = {**info, "nonfinite": nf.index_copy(0, idx, nf[idx] | info_r["nonfinite"])}
                eta = eta.index_copy(0, idx, eta_r)
                steps = steps.index_add(0, idx, steps_r)
            return eta, steps, info

        results = []
        if self.minimum_norm:
            eta_free, steps, info = run(None, noises[0])
            for e in eps_list:
                eb = None if e is None else as_batch_eps(e, n, x)
                results.append(self._result(fwd, x, eta_free, eb, ctx, steps, info, box, dtype, e))
        else:
            for e, noise in zip(eps_list, noises, strict=True):
                eb = as_batch_eps(e, n, x)
                eta, steps, info = run(eb, noise)
                results.append(self._result(fwd, x, eta, eb, ctx, steps, info, box, dtype, e))
        return results

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
        eps_report = None if eps is None else _eps_report(eps_asked, x.shape[0], x.device)
        x_adv = fit_budget(x_out, x + eta, eps_report, self.ball, box)
        eta_out = x_adv - x_out
        success = pred = margin = None
        if self.objective.classification:
            with torch.no_grad():
                out = fwd(x_adv)
            finite = torch.isfinite(out).all(dim=1)
            pred = out.argmax(dim=1)
            success = self.objective.fooled(out, ctx) & finite & ~bad
            margin = self.objective.margin(out, ctx)
            if not bool(finite.all()):
                warnings.warn(f"the model's output at x_adv is NaN or inf for inputs "
                              f"{(~finite).nonzero().flatten().tolist()[:10]}: marked as not fooled", stacklevel=4)
        else:  # regression: no success flag, but a NaN output at x_adv is never silent
            with torch.no_grad():
                out = fwd(x_adv)
            finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                warnings.warn(f"the model's output at x_adv is NaN or inf for inputs "
                              f"{(~finite).nonzero().flatten().tolist()[:10]}", stacklevel=4)
        return AttackResult(x_adv=x_adv, eta=eta_out, norms=self.ball.norm(eta_out.to(x.dtype)), success=success,
                            eps=eps_report, label=ctx.label, pred=pred, steps=steps, p=self.ball.p, margin=margin,
                            info=info)


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


def _eps_report(e: Any, n: int, device: torch.device) -> Tensor:
    """The budget as the user gave it, per input, in float64 (not rounded to a low-precision dtype)."""
    t = torch.as_tensor(e, dtype=torch.float64, device=device)
    return t.expand(n).clone() if t.dim() == 0 else t.clone()


def _eps_list(eps: EpsLike) -> tuple[list[float | Tensor | None], bool]:
    """One rule: a list/tuple of numbers is several budgets; a number, tensor or NumPy array is one budget
    (per input when it has shape (N,))."""
    if eps is None:
        return [None], False
    if isinstance(eps, np.ndarray):
        eps = torch.as_tensor(eps)
    if isinstance(eps, Tensor):
        if eps.is_complex() or eps.dtype == torch.bool or eps.dim() > 1:
            raise ValueError(f"eps as a tensor must be a real scalar or have shape (N,), got {eps.dtype} "
                             f"{tuple(eps.shape)}; several budgets go in a list")
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        return [eps], False
    if isinstance(eps, bool):
        raise TypeError(f"eps must be a number, got {eps!r}")
    if isinstance(eps, (int, float, np.number)):
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        return [float(eps)], False
    if not isinstance(eps, (list, tuple)):
        raise TypeError(f"eps must be a number, a list of numbers or a tensor, got {type(eps).__name__}")
    try:
        vals = [float(e) for e in eps]
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a list of numbers, got {eps!r}") from None
    if not vals or any(not math.isfinite(e) or e < 0 for e in vals):
        raise ValueError(f"eps must be a non-empty list of finite values >= 0, got {eps}")
    return list(vals), True


def _check_rows(n: int, **args: Any) -> None:
    """y, target and per-input eps must have one row per input (checked before the inputs are chunked)."""
    for name, v in args.items():
        vals = v if name == "eps" else [v]
        for t in vals:
            if isinstance(t, (Tensor, np.ndarray)) and t.ndim >= 1 and t.shape[0] != n:
                if t.ndim > 1:
                    raise ValueError(f"{name} must have {n} rows (one per input), got shape {tuple(t.shape)}")
                want = "be a scalar or have shape" if name == "eps" else "have shape"
                raise ValueError(f"{name} must {want} ({n},) (one entry per input), got {tuple(t.shape)}")


def _check_input(x: Tensor, box: Box) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be batch-first (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}): an attack needs at least one input")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    box.check(x, "x")
    return x.detach()


class _FirstOutputCheck:
    """The model, checking its first output as the clean forward would have: the scores
    (:func:`check_scores`) and the labels ``y`` (shape, integer dtype, range of classes). ``x``: the clean
    inputs when that first forward is elsewhere (their outputs are computed, and checked, only if the
    first output is not finite). ``label`` is y as int64 for the loop (shape and dtype checked here)."""

    def __init__(self, fwd: Any, y: Any, device: torch.device, x: Tensor | None = None) -> None:
        self.fwd = fwd
        self.y = y
        self.x = x
        self.checked = False
        t = torch.as_tensor(y, device=device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"y must hold integer class indices, got {t.dtype}")
        self.label = t.long()

    def __call__(self, x: Tensor) -> Tensor:
        out = self.fwd(x)
        if not self.checked:
            self.checked = True
            first = out.detach()
            if self.x is not None and first.dim() == 2 and not bool(torch.isfinite(first).all()):
                with torch.no_grad():
                    first = self.fwd(self.x)  # the clean outputs decide, as the clean forward would have
            check_scores(first)
            self.label = _check_labels(self.y, out, "y")
        return out


def _check_labels(y: Tensor, out: Tensor, name: str) -> Tensor:
    y = torch.as_tensor(y, device=out.device)
    if y.shape != (out.shape[0],):
        raise ValueError(f"{name} must have shape ({out.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {y.dtype}")
    if bool(((y < 0) | (y >= out.shape[1])).any()):
        raise ValueError(f"{name} must lie in [0, {out.shape[1] - 1}] (the model has {out.shape[1]} classes)")
    return y.long()


def _slice(t: Tensor | None, i: int, bs: int) -> Tensor | None:
    return None if t is None else t[i : i + bs]


def _slice_eps(e: float | Tensor | None, i: int, bs: int) -> float | Tensor | None:
    return e[i : i + bs] if isinstance(e, Tensor) and e.dim() == 1 else e
