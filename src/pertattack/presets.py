"""The presets of :func:`get_attack`: the paper's attacks and today's strongest ones, each a recipe of
keyword settings for the four parts (:data:`PRESETS`), and the cascades made of them (:data:`COMPOSITES`:
``apgd-t``, ``auto``). Every name is registered here, in one place::

    import pertattack
    attack = pertattack.get_attack("pgd", eps=8 / 255, seed=0)
    pertattack.get_attack("alg1-10", eps=0.1)                 # *-T presets take any T in the name
    pertattack.cascade(["apgd-ce", "square"], eps=8 / 255)    # any list of presets, in order
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Sequence
from typing import Any

from ._validate import positive_int
from .attacks import Attack
from .cascade import SHARED, Auto, Cascade
from .keywords import KEYWORDS
from .schedule import (
    AdaptiveBall,
    AdaptiveSphere,
    BallProjection,
    Cosine,
    Halving,
    KeepBest,
    Momentum,
    RandomStart,
    WhenFooled,
)
from .solvers import GNM

__all__ = ["PRESETS", "COMPOSITES", "get_attack", "list_attacks", "cascade"]

_ALG1 = dict(objective="margin", solver="gnm")
_MADRY = dict(objective="cross-entropy", solver="gnm", random_start=True, project=True, step_scale=2.5)
_REG = dict(objective="regression", solver="gnm")
_APGD = dict(solver="gnm", steps=100, start=RandomStart(), step_size=Halving(), update=Momentum(),
             keep=KeepBest("loss"), stop=WhenFooled(), project=BallProjection(), mask_blocked=False)

#: The presets, name -> (description, the keyword settings of the four parts).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fgsm": ("FGSM (Goodfellow et al.): one GNM step on cross-entropy, p = inf",
             dict(objective="cross-entropy", solver="gnm")),
    "fgsm-rs": ("FGSM with random start (Wong et al. 2020, 'fast adversarial training'): start uniform in the eps "
                "ball, one step of 1.25 eps on cross-entropy, projected on the ball",
                dict(objective="cross-entropy", solver="gnm", random_start=True, step_scale=1.25, project=True)),
    "trades": ("TRADES's inner attack (Zhang et al. 2019): random start, 10 steps of eps/4 on KL(p(x), p(x+eta)), "
               "projected; train with adversarial_training(..., beta=6)",
               dict(objective="kl", solver="gnm", steps=10, random_start=True, project=True, step_scale=2.5)),
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
               dict(objective="margin", solver="square", steps=5000, step_fraction=1.0, stop=WhenFooled(),
                    mask_blocked=False)),
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
                       dict(_REG, solver="single-subset", steps=10, step_fraction=1.0, dither="first")),
    "rand-l2": ("Regression baseline: Gaussian scaled to norm_2 = eps", dict(_REG, solver="random-gaussian", p=2.0)),
    "rand-linf": ("Regression baseline: Bernoulli +-eps entries", dict(_REG, solver="random-sign")),
    "rand-pixel-T": ("Regression baseline: +-eps on T random pixels", dict(_REG, solver="random-subset", steps=10,
                                                                           step_fraction=1.0)),
}


def get_attack(name: str, **overrides: Any) -> Any:
    """Build a preset by the paper's name, with keyword overrides (``eps``, ``p``, ``steps``, ...).

    ``*-T`` presets take any T in the name: ``alg1-10``, ``linear-l2-20``. Every keyword goes to the
    part that owns it; ``part__field=value`` names the part; a part may be an instance
    (``objective=MyObjective()``). Unknown names or keywords raise errors that list the close ones.
    The keywords (generated from :data:`KEYWORDS`):
    """
    if isinstance(name, str) and name in COMPOSITES:
        return COMPOSITES[name][1](**overrides)
    return Attack(name=name).replace(**_resolve(name)).replace(_user=True, **overrides)


def _keyword_doc() -> str:
    lines = []
    for part in ("attack", "objective", "constraint", "solver", "schedule"):
        lines.append(f"\n    {part}:")
        for k, (owner, doc) in KEYWORDS.items():
            if owner == part:
                lines.append(f"        {k}: {doc}")
    return "\n".join(lines) + "\n"


get_attack.__doc__ = (get_attack.__doc__ or "") + _keyword_doc()


def list_attacks() -> list[dict[str, Any]]:
    """The presets with their description, their default norm ``p`` (eps is in that norm) and their four parts."""
    rows = []
    for name, (doc, _) in PRESETS.items():
        a = get_attack(name)
        rows.append(dict(name=name, description=doc, p=a.ball.p, objective=repr(a.objective),
                         constraint=repr(a.constraint), solver=repr(a.solver), schedule=a.schedule))
    for name, (doc, build) in COMPOSITES.items():
        rows.append(dict(name=name, description=doc, p=build().ball.p, objective="(several)", constraint="",
                         solver="(cascade)", schedule=None))
    return rows


_TEMPLATE = re.compile(r"^(?P<base>.+)-(?P<T>\d+)$")


def _resolve(name: str) -> dict[str, Any]:
    if not isinstance(name, str):
        raise TypeError(f"attack name must be a string, got {name!r}")
    if name in PRESETS:
        return dict(PRESETS[name][1])
    m = _TEMPLATE.match(name)
    for template, key in (("-T", "steps"), ("-R", "rank")):  # alg1-10: steps=10; apgd-dlrt-3: rank=3
        if m and m.group("base") + template in PRESETS:
            return {**PRESETS[m.group("base") + template][1], key: int(m.group("T"))}
    names = sorted(PRESETS) + sorted(COMPOSITES)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown attack {name!r}.{hint} Known: {', '.join(names)}")


def cascade(attacks: Sequence[Any | str], name: str = "cascade", **shared: Any) -> Cascade:
    """A :class:`Cascade` of attacks or preset names, with shared keywords (eps, seed, p, ...) set on all:
    ``pertattack.cascade(["apgd-ce", "square"], eps=8 / 255, seed=0)``."""
    members = tuple(get_attack(a) if isinstance(a, str) else a for a in attacks)
    c = Cascade(members, name)
    return c.replace(**shared) if shared else c


def apgd_t(targets: int = 9, order: str = "logits", **kw: Any) -> Cascade:
    """APGD-T (Croce and Hein 2020): APGD on the targeted DLR loss towards ``targets`` classes in turn, each on the
    inputs still robust. ``order="logits"``: the classes of rank 2 .. targets + 1 in f(x), as AutoAttack (a model
    with fewer classes uses the ranks it has); ``"distance"``: the classes closest to x by eq. 9's linearised
    distance first (:class:`pertattack.targets.ByDistance`, MALT's order), computed once for every input."""
    from .targets import target_order_by_name

    positive_int("targets", targets)
    chosen = target_order_by_name(order)
    shared = {k: kw.pop(k) for k in list(kw) if k in SHARED}
    if chosen.name == "logits":
        members = tuple(get_attack(f"apgd-dlrt-{r}", **kw) for r in range(2, targets + 2))
        return cascade(members, "apgd-t", **shared)
    members = tuple(dataclasses.replace(get_attack("apgd-dlrt-2", **kw), name=f"apgd-t-{j}")
                    for j in range(1, targets + 1))
    c = Cascade(members, "apgd-t", order=chosen)
    return c.replace(**shared) if shared else c


def auto(p: float = math.inf, targets: int = 3, order: str = "distance", restarts: int = 2, queries: int = 5000,
         **kw: Any) -> Auto:
    """The strongest evaluation for its time (issue 17, benchmarks/README.md): apgd-ce (``restarts`` runs, each
    again on the inputs still robust), then apgd-t on the ``targets`` classes closest by eq. 9 (``order``), each on
    the inputs still robust. Where a reliability check fires (:mod:`pertattack.checks`), it adapts: apgd-dlr (scale
    invariant, as many restarts) replaces apgd-ce where cross-entropy saturates on most inputs or the outputs are
    probabilities, and runs after it where it saturates on a few; Square (``queries``, no gradient) runs last
    where gradients are masked, the model is randomised or the outputs are probabilities."""
    a = Auto((get_attack("apgd-ce", restarts=restarts), apgd_t(targets, order)), "auto",
             scale_free=get_attack("apgd-dlr", restarts=restarts),
             gradient_free=get_attack("square", queries=queries))
    return a.replace(p=p, **kw)


#: Attacks made of several attacks (cascades), name -> (description, how to build it).
COMPOSITES: dict[str, tuple[str, Any]] = {
    "apgd-t": ("APGD-T: apgd-dlrt-R for R = 2..10 (targets=), each on the inputs still robust; order='distance' "
               "takes the targets closest by eq. 9 first", apgd_t),
    "auto": ("The strongest evaluation for its time: reliability checks, apgd-ce, apgd-t on the 3 targets closest "
             "by eq. 9 (targets=, order=); where a check fires apgd-dlr and square too", auto),
}
