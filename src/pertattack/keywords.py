"""The keywords of :func:`pertattack.get_attack` and :meth:`Attack.replace <pertattack.attacks.Attack.replace>`:
what each means (:data:`KEYWORDS`) and which part it goes to (:func:`route`: the part that owns it, as
get_attack's docstring says; ``schedule__update__momentum=0.9`` names the part; solvers by name: :data:`SOLVERS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._validate import did_you_mean, from_table
from .constraints import Constraint
from .objectives import Objective, objective_by_name
from .schedule import POLICIES, Schedule
from .solvers import GNM, MinNorm, Quadratic, RandomGaussian, RandomSign, RandomSubset, SingleSubset, Solver, Square

__all__ = ["KEYWORDS", "SOLVERS", "route", "solver_by_name"]

#: The solvers by the name a recipe or ``solver=`` gives them.
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


#: Every keyword get_attack takes, with its meaning, in one table; help(get_attack) shows it and a test
#: checks it against what the parts accept (a keyword without a line here is a test failure).
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
                               "transfer, regression, dlr, dlr-targeted, probability-margin) or an Objective"),
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
    "reuse": ("solver", "single-subset: a subset may be chosen again (it adds a further step within eps and the box)"),
    "p_init": ("solver", "square: the initial share of the input changed by one square"),
    # schedule settings
    "steps": ("schedule", "T, the number of steps (linearisations)"),
    "start": ("schedule", "policy: ZeroStart() or RandomStart()"),
    "step_size": ("schedule", "policy: Constant(scale, fraction), Halving() (APGD) or Cosine(first, last) (FMN)"),
    "update": ("schedule", "policy: Plain() or Momentum(momentum) (APGD)"),
    "keep": ("schedule", "policy: KeepLast() or KeepBest(by='loss'|'norm')"),
    "stop": ("schedule", "policy: NeverStop() or WhenFooled(check_first)"),
    "project": ("schedule", "True/False (the eps ball after each step), or a Projection policy"),
    "overshoot": ("schedule", "linearisation point and result at x + (1 + overshoot) eta (DeepFool)"),
    "mask_blocked": ("schedule", "solve each step on the coordinates the box lets move"),
    "clip_iterates": ("schedule", "keep x + eta in the box after every step"),
    "push": ("schedule", "distance added to min-norm steps after the first (classic DeepFool: 1e-4)"),
    "random_start": ("schedule", "start uniform in the eps ball (RandomStart) instead of 0"),
    "step_scale": ("schedule", "step alpha = step_scale * eps / T"),
    "step_fraction": ("schedule", "step alpha = step_fraction * eps (overrides step_scale)"),
    "dither": ("schedule", "Dither(radii), or the radii eps~_t / eps: 'none', 'first', 'all' or T fractions"),
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

_ATTACK_FIELDS = tuple(k for k, (owner, _) in KEYWORDS.items() if owner == "attack")
_PARTS = ("objective", "constraint", "solver", "schedule")


def route(attack: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``attack`` (an :class:`~pertattack.attacks.Attack`) that the keywords ``kw`` change: its
    parts with their new settings, and its own fields (eps, seed, ...)."""
    parts: dict[str, Any] = {k: getattr(attack, k) for k in _PARTS}
    top: dict[str, Any] = {}
    for k in [k for k in kw if k in _PARTS]:  # whole parts first, then their settings
        parts[k] = _as_part(k, kw[k])
    for k, v in kw.items():
        if k in _PARTS:
            continue
        k = "steps" if k == "queries" and parts["solver"].queries_per_step == 1 else k  # one query per step
        if k in _ATTACK_FIELDS:
            top[k] = v
        elif "__" in k:
            parts.update(_route_path(parts, k, v))
        elif k in ("p", "box", "partition"):
            parts["constraint"] = dataclasses.replace(parts["constraint"], **{k: v})
        elif k in Schedule.keywords():
            parts["schedule"] = parts["schedule"].with_(**{k: v})
        else:
            parts.update(_route_flat(parts, k, v))
    return {**parts, **top}


def _route_flat(parts: dict[str, Any], k: str, v: Any) -> dict[str, Any]:
    owners = [p for p in ("objective", "solver") if k in _fields(parts[p])]
    sched = parts["schedule"]
    owners += [f"schedule.{pol}" for pol in POLICIES if k in _fields(getattr(sched, pol))]
    if not owners:
        known = sorted(KEYWORDS)
        if k in KEYWORDS:
            owner = KEYWORDS[k][0]
            raise TypeError(f"keyword {k!r} ({KEYWORDS[k][1]}) does not apply to this attack's {owner} "
                            f"{parts.get(owner, '')!r}")
        raise TypeError(f"unknown keyword {k!r}{did_you_mean(k, known)}; known: {', '.join(known)}")
    owner = owners[0]
    if owner.startswith("schedule."):
        pol = owner.split(".", 1)[1]
        return {"schedule": sched.with_(**{pol: dataclasses.replace(getattr(sched, pol), **{k: v})})}
    return {owner: dataclasses.replace(parts[owner], **{k: v})}


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


def _fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()


def _set_field(obj: Any, key: str, value: Any, where: str) -> Any:
    if key not in _fields(obj):
        raise TypeError(f"{where} {obj!r} has no setting {key!r}")
    return dataclasses.replace(obj, **{key: value})


#: what each part may be given as: its class, and the lookup of a part given by name (None: an instance only)
_AS_PART: dict[str, tuple[type, Any, str]] = {
    "objective": (Objective, objective_by_name, "a name or an Objective instance"),
    "solver": (Solver, solver_by_name, "a name or a Solver instance"),
    "constraint": (Constraint, None, "a Constraint instance"),
    "schedule": (Schedule, None, "a Schedule instance"),
}


def _as_part(kind: str, value: Any) -> Any:
    cls, by_name, what = _AS_PART[kind]
    if by_name is not None and isinstance(value, str):
        return by_name(value)
    if not isinstance(value, cls):
        raise TypeError(f"{kind} must be {what}, got {value!r}")
    return value
