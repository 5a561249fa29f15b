"""Every preset through a table of bad inputs and edge conditions (issue #7, "trust at every boundary").

Each case asserts one of two outcomes: an error (TypeError/ValueError) whose message names the argument,
or a result that satisfies every invariant of :func:`check_invariants` (x unchanged, eta == x_adv - x
exactly, x_adv in the box, norm_p(x_adv - x) <= eps computed in float64 from the returned tensors,
``res.eps`` the budget asked for, ``success`` equal to a fresh evaluation of the model, no parameter
``.grad``, every submodule's mode restored).

The presets are ``list_attacks()``'s names (``*-T`` with T = 3, ``apgd-dlrt-2``, the cascades ``apgd-t``
with T = 3 and ``auto`` as it is; auto's eps-rule, in-place and low-precision cases are marked slow). Cases
per category with the 28 presets of issue #7's branch point (``python tests/test_bad_inputs.py`` prints the
current numbers):

=============  =====  ==================================================================================
category       cases  what
=============  =====  ==================================================================================
bad-keyword     3248  every preset x 115 bad get_attack keyword values, and an unknown keyword
bad-call         834  every preset x bad calls (x, y, target, per-input eps, box, index); 1-output models
edge             216  every preset but auto x {eps 0, 1e3, 1e-30, per-input with 0, N = 1, x on the box's
                      faces, another box, batch_size 1}
eps-rule         168  every preset: float / 0-d tensor / 0-d array / (N,) tensor / (N,) array / list
nan-model        123  every preset x {NaN away from x, NaN at x, inf at x, NaN gradients}; regression
inplace-model    114  every preset x {x.sub_ in forward, in-place first layer} x {one batch, chunks}
low-precision    304  every preset x {float16, bfloat16} x 2 eps; gradient presets x p in {1, 1.5, 2, inf}
regression-y      50  every regression preset x bad reference y (NaN, inf, dtype, shape)
steepest         141  p in {1, 1.5, 2, 3, inf} x gradient norms 1e-20 .. 1e20 x {steepest float64, float32,
                      min-norm step}; tiny balls
hypothesis        85  budget and box of fit_budget (60 draws) and of whole attacks (25 draws)
=============  =====  ==================================================================================
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DTYPE, MLP, gen, modes, no_grads, rand_x
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import pertattack
from pertattack.constraints import Box, LpBall, fit_budget, lp_norm

INF = math.inf
N = 4
M = 12
K = 4
SMALL_T = 3

# ------------------------------------------------------------------------------------------- presets


def _concrete(name: str) -> str:
    if name.endswith("-T"):
        return name[:-2] + f"-{SMALL_T}"
    if name.endswith("-R"):
        return name[:-2] + "-2"
    return name


PRESETS = [_concrete(r["name"]) for r in pertattack.list_attacks()]
CASCADES = ["apgd-t", "auto"]
SINGLE = [n for n in PRESETS if n not in CASCADES]


def _is_regression(name: str) -> bool:
    if name in CASCADES:
        return False
    return not pertattack.get_attack(name).objective.classification


REGRESSION = [n for n in SINGLE if _is_regression(n)]
# "auto" runs its members' full 100 steps (it takes no steps=): opt-in (-m slow) where a test runs it often
PRESETS_RUN = [pytest.param(n, marks=pytest.mark.slow) if n == "auto" else n for n in PRESETS]
CLASSIFICATION = [n for n in PRESETS if n not in REGRESSION]


class Reg(nn.Module):
    """A small regression model R^12 -> R^3."""

    def __init__(self, seed: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(M, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)
        g = gen(seed)
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g, dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def base_model(name: str) -> nn.Module:
    return Reg() if name in REGRESSION else MLP(m=M, k=K)


def defaults(name: str, model: nn.Module | None = None) -> dict[str, Any]:
    """Small settings that keep every preset fast: T <= 3 (cascades: their members), a surrogate."""
    kw: dict[str, Any] = {"seed": 1}
    if name == "auto":
        return kw  # auto takes no steps=: its members keep theirs (fast on the tiny MLP)
    if name == "apgd-t":
        return {**kw, "steps": SMALL_T}
    a = pertattack.get_attack(name)
    if a.schedule.steps > SMALL_T:
        kw["steps"] = SMALL_T
    if name == "transfer":
        kw["surrogate"] = model if model is not None else MLP(m=M, k=K, seed=7)
    return kw


def make(name: str, model: nn.Module | None = None, **kw: Any) -> Any:
    return pertattack.get_attack(name, **{**defaults(name, model), **kw})


def call_args(name: str, model: nn.Module, x: Tensor) -> dict[str, Any]:
    """y and target for a call: the model's prediction, and the next class as the target."""
    if name in REGRESSION:
        return {}
    with torch.no_grad():
        y = model(x.clone()).argmax(dim=1)
    args: dict[str, Any] = {"y": y}
    if name == "targeted":
        args["target"] = (y + 1) % K
    return args


def x_in(dtype: torch.dtype = DTYPE, seed: int = 0) -> Tensor:
    return rand_x(N, (M,), seed=seed).to(dtype)


def eps_for(name: str) -> float:
    p = make(name).ball.p if name not in CASCADES else INF
    return {INF: 0.1, 1.0: 0.7, 2.0: 0.3}.get(p, 0.3)


# ---------------------------------------------------------------------------------------- invariants


def check_invariants(res: Any, name: str, model: nn.Module, x: Tensor, x_before: Tensor, eps: Any, *,
                     y: Tensor | None = None, target: Tensor | None = None, modes_before: list[bool] | None = None,
                     box: tuple[float, float] = (0.0, 1.0)) -> None:
    """Every promise of an AttackResult, checked from the returned tensors alone."""
    assert torch.equal(x, x_before), "x was modified"
    assert res.x_adv.dtype == x.dtype and res.x_adv.shape == x.shape
    assert torch.equal(res.eta, res.x_adv - x), "eta != x_adv - x"
    assert bool(torch.isfinite(res.x_adv).all())
    assert bool((res.x_adv >= box[0]).all() and (res.x_adv <= box[1]).all()), "x_adv outside the box"
    d = res.x_adv.double() - x.double()
    norms64 = lp_norm(d, res.p)
    if eps is not None:
        want = torch.as_tensor(eps, dtype=torch.float64)
        want = want.expand(x.shape[0]) if want.dim() == 0 else want
        assert res.eps.dtype == torch.float64 and torch.equal(res.eps, want), "res.eps is not the budget asked for"
        over = norms64 - want
        assert bool((norms64 <= want).all()), f"norm over budget by {over.max().item():.3g} ({name}, {x.dtype})"
    if res.success is not None:
        with torch.no_grad():
            out = model(res.x_adv.clone())
        finite = torch.isfinite(out).all(dim=1)
        fooled = out.argmax(dim=1) == target if target is not None and name == "targeted" else \
            out.argmax(dim=1) != res.label
        assert torch.equal(res.success, fooled & finite), "success differs from a fresh evaluation"
        if y is not None:
            assert torch.equal(res.label, y)
    assert no_grads(model), "a parameter got a .grad"
    if modes_before is not None:
        assert modes(model) == modes_before, "the model's modes were not restored"


_DEFAULT: Any = object()


def run_checked(name: str, model: nn.Module, x: Tensor, eps: Any = _DEFAULT, attack: Any = None,
                **call: Any) -> Any:
    """Run preset ``name`` on ``model`` at x (a copy kept), check every invariant, return the result."""
    attack = attack if attack is not None else make(name, model if name == "transfer" else None)
    eps = eps_for(name) if eps is _DEFAULT else eps
    args = {**call_args(name, model, x), **call}
    model.train()  # the attack must run in eval mode and restore this
    before = modes(model)
    x_before = x.clone()
    res = attack(model, x, eps=eps, **args)
    check_invariants(res, name, model, x, x_before, eps, y=args.get("y"), target=args.get("target"),
                     modes_before=before)
    return res


# ------------------------------------------------------------------------------ 1. bad get_attack keywords

NAN = float("nan")

BAD_KEYWORDS: list[tuple[str, Any]] = [
    ("box", (0, NAN)), ("box", (NAN, 1)), ("box", (1, 0)), ("box", (0, INF)), ("box", "ab"), ("box", (0, 1, 2)),
    ("box", ("a", 1)),
    ("overshoot", NAN), ("overshoot", -1.0), ("overshoot", INF), ("overshoot", "a"),
    ("step_fraction", NAN), ("step_fraction", -1.0), ("step_fraction", 0.0), ("step_fraction", INF),
    ("step_fraction", "a"),
    ("step_scale", -1.0), ("step_scale", 0.0), ("step_scale", NAN), ("step_scale", INF),
    ("candidates", 0), ("candidates", -1), ("candidates", 1.5), ("candidates", NAN), ("candidates", "a"),
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 1.5), ("batch_size", "a"), ("batch_size", True),
    ("steps", 0), ("steps", -1), ("steps", 1.5), ("steps", NAN), ("steps", "3"), ("steps", INF),
    ("p", 0.5), ("p", 0), ("p", -1), ("p", NAN), ("p", "a"), ("p", None), ("p", True),
    ("seed", "a"), ("seed", 1.5), ("seed", True),
    ("dither", "bogus"), ("dither", [NAN, 0.0, 0.0]), ("dither", [-1.0, 0.0, 0.0]), ("dither", [1.0, 0.0]),
    ("dither", 5),
    ("eps", -1.0), ("eps", NAN), ("eps", INF), ("eps", "a"), ("eps", []), ("eps", [NAN]), ("eps", True),
    ("eps", [-0.1, 0.1]), ("eps", torch.tensor([[0.1]])), ("eps", np.array([NAN])),
    ("restarts", 0), ("restarts", -1), ("restarts", 1.5),
    ("progress", "yes"),
    ("momentum", -0.1), ("momentum", 1.5), ("momentum", NAN),
    ("rho", NAN), ("rho", 2.0), ("init_scale", 0.0), ("init_scale", NAN),
    ("first", NAN), ("first", -1.0), ("last", NAN), ("gamma", NAN), ("gamma", 2.0), ("gamma_final", -1.0),
    ("push", NAN), ("push", -1.0),
    ("random_start", "yes"), ("project", "yes"), ("early_stop", 1), ("box_aware", "no"),
    ("mask_blocked", "no"), ("clip_iterates", 1),
    ("probs", "yes"), ("probs", 1),
    ("rank", 1), ("rank", NAN), ("rank", 2.5), ("rank", "a"),
    ("power_iters", 0), ("power_iters", NAN), ("power_iters", "a"),
    ("tol", NAN), ("tol", -1.0), ("tol", "a"), ("svd_method", "qr"),
    ("preprocess", (0.0, 0.0)), ("preprocess", (NAN, 1.0)), ("preprocess", "a"),
    ("output", 1.5), ("output", True),
    ("surrogate", "a"), ("surrogate", 3),
    ("base", "bogus"),
    ("partition", "bogus"), ("partition", [0.5] * M), ("partition", [-1] * M),
    ("objective", "bogus"), ("solver", "bogus"), ("objective", 3), ("schedule", "x"), ("constraint", "x"),
]


def _kw_id(kv: tuple[str, Any]) -> str:
    return f"{kv[0]}={kv[1]!r}"[:40]


@pytest.mark.parametrize("kv", BAD_KEYWORDS, ids=_kw_id)
def test_bad_keyword_named(kv: tuple[str, Any]) -> None:
    """Every preset refuses the bad value when the attack is built, with an error naming the keyword."""
    key, value = kv
    for name in PRESETS:
        extra = {"surrogate": MLP(m=M, k=K)} if name == "transfer" and key != "surrogate" else {}
        with pytest.raises((TypeError, ValueError), match=re.escape(key)):
            pertattack.get_attack(name, **extra, **{key: value})


def test_unknown_keyword_named() -> None:
    for name in PRESETS:
        with pytest.raises(TypeError, match="stesp"):
            pertattack.get_attack(name, stesp=3)


# ------------------------------------------------------------------------------------------ 2. bad calls


def _bad_calls(name: str) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """(argument named in the error, call arguments) for preset ``name``."""
    x = x_in()
    reg = name in REGRESSION
    cases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("x", lambda: dict(x=x[:0])),
        ("x", lambda: dict(x=torch.zeros(N, 0, dtype=DTYPE))),
        ("x", lambda: dict(x=x[0])),
        ("x", lambda: dict(x=(x * 255).long())),
        ("x", lambda: dict(x=x.numpy())),
        ("x", lambda: dict(x=x + 1.0)),
        ("x", lambda: dict(x=torch.where(torch.arange(M) == 3, NAN, x))),
        ("x", lambda: dict(x=torch.where(torch.arange(M) == 3, INF, x))),
        ("eps", lambda: dict(eps=torch.full((N + 1,), 0.1))),
        ("eps", lambda: dict(eps=torch.full((N + 1,), 0.1), batch_size=2)),
        ("eps", lambda: dict(eps=torch.full((N - 1,), 0.1))),
        ("eps", lambda: dict(eps=torch.tensor([0.1, NAN, 0.1, 0.1]))),
        ("eps", lambda: dict(eps=np.array([0.1, -0.1, 0.1, 0.1]))),
        ("eps", lambda: dict(eps=torch.full((N, 1), 0.1))),
        ("eps", lambda: dict(eps="0.1")),
        ("eps", lambda: dict(eps=[0.1, "a"])),
        ("box", lambda: dict(box=(0.0, NAN))),
        ("box", lambda: dict(box=(1.0, 0.0))),
        ("box", lambda: dict(box=(0.0,))),
        ("box", lambda: dict(box=(torch.zeros(5), torch.ones(5)))),
        ("box", lambda: dict(box=(torch.zeros(3, 1, 1), torch.ones(3, 1, 1)))),
        ("index", lambda: dict(index=torch.arange(N + 1))),
        ("index", lambda: dict(index=torch.zeros(N))),
    ]
    if reg:
        cases += [
            ("y", lambda: dict(y=torch.zeros(N, 4, dtype=DTYPE))),
            ("y", lambda: dict(y=torch.zeros(N, 3, dtype=torch.long))),
            ("y", lambda: dict(y=torch.full((N, 3), NAN, dtype=DTYPE))),
            ("target", lambda: dict(target=torch.zeros(N, dtype=torch.long))),
        ]
    else:
        cases += [
            ("y", lambda: dict(y=torch.zeros(N + 1, dtype=torch.long))),
            ("y", lambda: dict(y=torch.zeros(N, 1, dtype=torch.long))),
            ("y", lambda: dict(y=torch.zeros(N, dtype=DTYPE))),
            ("y", lambda: dict(y=torch.zeros(N, dtype=torch.bool))),
            ("y", lambda: dict(y=torch.full((N,), K, dtype=torch.long))),
            ("y", lambda: dict(y=torch.full((N,), -1, dtype=torch.long))),
        ]
        if name == "targeted" or pertattack.get_attack(name).objective.steered:  # steered: a target is optional
            cases += [("target", lambda: dict(target=None))] if name == "targeted" else []
            cases += [
                ("target", lambda: dict(target=torch.zeros(N + 1, dtype=torch.long))),
                ("target", lambda: dict(target=torch.full((N,), K, dtype=torch.long))),
                ("target", lambda: dict(target=torch.full((N,), 0.5))),
                ("target", lambda: dict(target="y")),  # the target equal to the label
            ]
        else:
            cases.append(("target", lambda: dict(target=torch.zeros(N, dtype=torch.long))))
    return cases


BAD_CALL_CASES = [(name, i) for name in PRESETS for i in range(len(_bad_calls(name)))]


@pytest.mark.parametrize("name", PRESETS)
def test_bad_call_named(name: str) -> None:
    model = base_model(name)
    for arg, build in _bad_calls(name):
        x = x_in()
        args: dict[str, Any] = {"x": x, "eps": eps_for(name), **call_args(name, model, x)}
        args.update(build())
        if args.get("target") == "y" if isinstance(args.get("target"), str) else False:
            args["target"] = args["y"]
        if args.get("target", 0) is None:
            del args["target"]
        kw = {k: args.pop(k) for k in ("batch_size",) if k in args}
        attack = make(name, **kw)
        xx = args.pop("x")
        with pytest.raises((TypeError, ValueError), match=re.escape(arg)):
            attack(model, xx, **args)


def test_classifier_output_shape_named() -> None:
    """A classification preset on a model with one output: the error names the model's output."""
    one = nn.Sequential(nn.Linear(M, 1)).to(DTYPE)
    for name in CLASSIFICATION:
        args = {"target": torch.zeros(N, dtype=torch.long)} if name == "targeted" else {}
        with pytest.raises(ValueError, match="output"):
            make(name)(one, x_in(), eps=0.1, **args)


def test_cascade_fewer_classes() -> None:
    """apgd-t on a 3-class model (no targeted-DLR member applies): an error naming the classes, not an
    AssertionError; a cascade whose first member does not apply still fills every row."""
    model = MLP(m=M, k=3)
    x = x_in()
    with pytest.raises(ValueError, match="classes"):
        pertattack.get_attack("apgd-t", steps=2)(model, x, eps=0.1)
    c = pertattack.cascade([pertattack.get_attack("apgd-dlrt-2", steps=2), pertattack.get_attack("bim", steps=2)],
                           eps=0.05, seed=0)
    res = c(model, x)
    check_invariants(res, "cascade", model, x, x.clone(), 0.05)


def reach(name: str) -> float:
    """The largest eps accepted on [0, 1]^M (issue 18): the box's width for p = inf, its diameter M^(1/p) else."""
    p = make(name).ball.p if name not in CASCADES else INF
    return 1.0 if math.isinf(p) else M ** (1 / p)


def _faces() -> Tensor:
    x = x_in().clone()
    x[:, :4] = 0.0
    x[:, 4:8] = 1.0
    return x


EDGES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("eps 0", lambda: dict(eps=0.0)),
    ("eps the box's reach (the largest accepted)", lambda: dict(eps="reach")),
    ("eps 1e-30", lambda: dict(eps=1e-30)),
    ("per-input eps with zeros", lambda: dict(eps=torch.tensor([0.0, 0.1, 0.0, 0.2], dtype=DTYPE))),
    ("one input", lambda: dict(x=x_in()[:1])),
    ("x on the faces of the box", lambda: dict(x=_faces())),
    ("another box", lambda: dict(x=x_in() * 5 - 2, box=(-2.0, 3.0))),
    ("batch_size 1", lambda: dict(batch_size=1)),
]


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "auto"])
def test_edge_conditions(name: str) -> None:
    """Legal but extreme calls: every invariant holds."""
    model = base_model(name)
    for label, build in EDGES:
        kw = {"x": x_in(), "eps": eps_for(name), **build()}
        x, eps, box = kw.pop("x"), kw.pop("eps"), kw.pop("box", None)
        eps = reach(name) if eps == "reach" else eps
        attack = make(name, model, **kw)
        args = call_args(name, model, x)
        before = modes(model)
        res = attack(model, x, eps=eps, box=box, **args)
        check_invariants(res, name, model, x, x.clone(), eps, y=args.get("y"), target=args.get("target"),
                         modes_before=before, box=box or (0.0, 1.0))
        if isinstance(eps, float) and eps == 0.0:
            assert torch.equal(res.x_adv, x), label
    with pytest.raises(ValueError, match="the ball holds the whole box"):  # eps 1e3 was legal before issue 18
        make(name, model)(model, x_in(), eps=1e3, **call_args(name, model, x_in()))


# ----------------------------------------------------------------------------------------- 3. eps rule

EPS_FORMS = ["float", "tensor0", "ndarray0", "tensorN", "ndarrayN", "list"]


@pytest.mark.parametrize("name", PRESETS_RUN)
def test_eps_one_rule(name: str) -> None:
    """A number, a 0-d tensor and a 0-d array are one budget; an (N,) tensor and the same (N,) array are one
    budget per input (identical results); only a list means several budgets."""
    model = base_model(name)
    x = x_in()
    e = eps_for(name)
    base = run_checked(name, model, x, e)
    for form in ("tensor0", "ndarray0"):
        val = torch.tensor(e, dtype=torch.float64) if form == "tensor0" else np.array(e)
        r = run_checked(name, model, x, val)
        assert torch.equal(r.x_adv, base.x_adv), form
    per = [e, e / 2, e, e / 3]
    rt = run_checked(name, model, x, torch.tensor(per, dtype=torch.float64))
    ra = run_checked(name, model, x, np.array(per))
    assert not isinstance(ra, list) and torch.equal(rt.x_adv, ra.x_adv)
    rl = make(name, model)(model, x, eps=[e, e / 2], **call_args(name, model, x))
    assert isinstance(rl, list) and len(rl) == 2
    assert torch.equal(rl[0].x_adv, base.x_adv)
    for r, ei in zip(rl, [e, e / 2], strict=True):
        check_invariants(r, name, model, x, x.clone(), ei, **{k: v for k, v in call_args(name, model, x).items()})


# ---------------------------------------------------------------------------------------- 4. NaN models


class NaNAway(nn.Module):
    """Finite at the clean inputs, NaN anywhere else (rows compared with the stored inputs)."""

    def __init__(self, base: nn.Module, x0: Tensor):
        super().__init__()
        self.base = base
        self.x0 = x0.clone()

    def forward(self, z: Tensor) -> Tensor:
        out = self.base(z)
        flat = z.reshape(z.shape[0], -1)
        known = (flat[:, None, :] == self.x0.reshape(self.x0.shape[0], -1).to(z.dtype)[None]).all(dim=2).any(dim=1)
        return torch.where(known[:, None], out, torch.full_like(out, NAN))


class NaNAt(nn.Module):
    """NaN (or inf) output for the first input, always."""

    def __init__(self, base: nn.Module, value: float = NAN):
        super().__init__()
        self.base = base
        self.value = value

    def forward(self, z: Tensor) -> Tensor:
        out = self.base(z)
        bad = torch.zeros_like(out, dtype=torch.bool)
        bad[0] = True
        return torch.where(bad, torch.full_like(out, self.value), out)


class NaNGrad(nn.Module):
    """Finite outputs everywhere, NaN gradients everywhere (0 * d sqrt(0))."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, z: Tensor) -> Tensor:
        out = self.base(z)
        return out + 0.0 * torch.sqrt(z - z.detach()).sum(dim=tuple(range(1, z.dim())))[:, None]


NAN_MODELS = ["nan-away", "nan-at-x", "inf-at-x", "nan-grad"]


@pytest.mark.parametrize("kind", NAN_MODELS)
@pytest.mark.parametrize("name", PRESETS)
def test_nan_models(name: str, kind: str) -> None:
    """NaN/inf model output is never a success: at x an error naming the model's output, away from x the
    inputs concerned are marked failed with a warning; NaN gradients leave a result with every invariant."""
    base = base_model(name)
    x = x_in()
    args = call_args(name, base, x)
    if kind in ("nan-at-x", "inf-at-x"):
        model = NaNAt(base, NAN if kind == "nan-at-x" else INF)
        with pytest.raises(ValueError, match="output"):
            make(name, base)(model, x, eps=eps_for(name), **args)
        return
    model = NaNAway(base, x) if kind == "nan-away" else NaNGrad(base)
    attack = make(name, base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_checked(name, model, x, attack=attack, **args)
    messages = [str(w.message) for w in caught]
    uses_model_derivatives = name in CASCADES or name != "transfer" and (  # transfer: the surrogate's gradients
        attack.solver.needs_grad or attack.solver.name.startswith("quadratic"))
    if kind == "nan-grad" and uses_model_derivatives:
        assert any("NaN" in m for m in messages), f"NaN gradients went unreported: {messages}"
    if kind == "nan-away":
        moved = (res.x_adv != x).reshape(N, -1).any(dim=1)
        if res.success is not None:
            assert not bool((res.success & moved).any()), "an input at a NaN output counted as fooled"
        if bool(moved.any()) or any("NaN" in m for m in messages):
            assert any("NaN" in m for m in messages), f"no warning about NaN output: {messages}"


class NaNAwayFrom(nn.Module):
    """NaN wherever the first input coordinate leaves [0.2, 0.8] (finite at the inputs of x_in)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, z: Tensor) -> Tensor:
        out = self.base(z)
        ok = (z[:, 0] > 0.2) & (z[:, 0] < 0.8)
        return torch.where(ok[:, None], out, torch.full_like(out, NAN))


def test_nan_in_restart_reported() -> None:
    """NaN met in a restart (a new random start) is reported as in the first run: failed, with a warning."""
    base = MLP(m=M, k=K)
    x = x_in().clone()
    x[:, 0] = 0.5
    model = NaNAwayFrom(base)
    attack = make("pgd", steps=1, restarts=3, random_start=True)
    with pytest.warns(UserWarning, match="NaN"):
        res = run_checked("pgd", model, x, 0.5, attack=attack)
    assert not bool(res.success.any())


# ------------------------------------------------------------------------------------ 5. in-place models


class SubInput(nn.Module):
    """Writes into its input: x.sub_(0.25) in forward."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, z: Tensor) -> Tensor:
        z.sub_(0.25)
        return self.base(z)


def _inplace_first(base: nn.Module) -> nn.Module:
    """An in-place first layer (Threshold: entries below 0.5 set to 0 in the input tensor itself)."""
    return nn.Sequential(nn.Threshold(0.5, 0.0, inplace=True), base)


INPLACE = ["sub_", "first-layer"]


@pytest.mark.parametrize("kind", INPLACE)
@pytest.mark.parametrize("name", PRESETS_RUN)
def test_inplace_models(name: str, kind: str) -> None:
    """x is never modified and eta == x_adv - x, whatever the model does to its input (one batch, chunks)."""
    base = base_model(name)
    model = SubInput(base) if kind == "sub_" else _inplace_first(base)
    run_checked(name, model, x_in())
    run_checked(name, model, x_in(), attack=make(name, model, batch_size=3))


def test_inplace_surrogate() -> None:
    """A transfer surrogate that writes into its input gets a tensor of its own too."""
    model = MLP(m=M, k=K)
    for sur in (SubInput(MLP(m=M, k=K, seed=7)), _inplace_first(MLP(m=M, k=K, seed=7))):
        run_checked("transfer", model, x_in(), attack=make("transfer", surrogate=sur))


# ----------------------------------------------------------------------------------- 6. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", PRESETS_RUN)
def test_low_precision_budget(name: str, dtype: torch.dtype) -> None:
    """float16/bfloat16 inputs and model: x_adv in the input's dtype, the budget exact in float64,
    res.eps the eps asked for (not rounded to the dtype)."""
    model = base_model(name).to(dtype)
    x = x_in(dtype)
    for e in (eps_for(name), 0.0123):
        run_checked(name, model, x, e)


GRADIENT_P1 = [n for n in SINGLE if make(n).solver.norms is None and make(n).solver.needs_grad]


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, INF], ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("name", GRADIENT_P1)
def test_float32_budget_every_p(name: str, p: float) -> None:
    """float32 (p = 1 was 3e-6 relative over): the budget holds exactly for every p."""
    model = base_model(name).float()
    x = x_in(torch.float32)
    attack = make(name, model if name == "transfer" else None, p=p)
    for e in (0.1, 0.7, 1.0 if p == INF else 1.3):  # p = inf: 1.0, the box's width, the largest accepted
        run_checked(name, model, x, e, attack=attack)


# ---------------------------------------------------------------------------------- 7. regression y


REG_Y: list[tuple[str, Callable[[], Tensor]]] = [
    ("y", lambda: torch.full((N, 3), NAN, dtype=DTYPE)),
    ("y", lambda: torch.where(torch.arange(3) == 1, NAN, torch.zeros(N, 3, dtype=DTYPE))),
    ("y", lambda: torch.full((N, 3), INF, dtype=DTYPE)),
    ("y", lambda: torch.zeros(N, 3, dtype=torch.long)),
    ("y", lambda: torch.zeros(N + 1, 3, dtype=DTYPE)),
]


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_bad_y(name: str) -> None:
    model = Reg()
    for arg, build in REG_Y:
        with pytest.raises((TypeError, ValueError), match=arg):
            make(name)(model, x_in(), build(), eps=eps_for(name))


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_nan_away_warns(name: str) -> None:
    """A regression model NaN at x + eta (finite at x): a warning that says so, never silence."""
    x = x_in()
    model = NaNAway(Reg(), x)
    with pytest.warns(UserWarning, match="NaN"):
        make(name)(model, x, eps=eps_for(name))


# --------------------------------------------------------------------------------------- 8. steepest

STEEP_P = [1.0, 1.5, 2.0, 3.0, INF]
STEEP_SCALES = [10.0**k for k in range(-20, 21, 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("p", STEEP_P, ids=lambda p: f"p{p:g}")
def test_steepest_scale_invariant(p: float, dtype: torch.dtype) -> None:
    """The unit Hölder maximiser has norm_p exactly 1 (to rounding) and u^T g = norm_q(g), at gradient
    norms from 1e-20 to 1e20: the step keeps its size exactly (no floor on the gradient's norm)."""
    ball = LpBall(p)
    g0 = torch.randn(3, 2, 5, generator=gen(4), dtype=torch.float64)
    g0[2] = 0.0
    g0[1, 0, 0] = 0.0
    ref = ball.steepest(g0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for s in STEEP_SCALES:
        g = g0 * s / lp_norm(g0[:1], 2)[0]
        if dtype == torch.float32 and s < 1e-30:
            continue
        gd = g.to(dtype)
        u = ball.steepest(gd)
        assert u.dtype == dtype
        norms = lp_norm(u.double(), p)
        assert torch.allclose(norms[:2], torch.ones(2, dtype=torch.float64), rtol=tol, atol=0), (s, norms)
        assert bool((u[2] == 0).all()), "a zero gradient gives a zero step"
        assert torch.allclose(u.double(), ref, rtol=0, atol=10 * tol), s
        inner = (u.double() * gd.double()).reshape(3, -1).sum(dim=1)
        dual = lp_norm(gd.double(), ball.q)
        assert torch.allclose(inner[:2], dual[:2], rtol=10 * tol, atol=0)


@pytest.mark.parametrize("p", STEEP_P, ids=lambda p: f"p{p:g}")
def test_min_norm_step_scale_invariant(p: float) -> None:
    """DeepFool's min-norm step (eq. 9) has norm L / norm_q(g) at every gradient scale (no 1e-12 floor), and the
    dual norm neither under- nor overflows in float32."""
    ball = LpBall(p)
    g0 = torch.randn(2, 9, generator=gen(6), dtype=torch.float64)
    for s in STEEP_SCALES:
        g = g0 * s
        value = torch.tensor([0.3, 2.0], dtype=torch.float64) * s  # L scales with g: the step does not change
        lin = pertattack.solvers.Linearisation(x=torch.zeros_like(g), g=g, value=value, eps=torch.zeros(2), ball=ball,
                                               forward=None)
        step = pertattack.solvers.MinNorm()(lin)
        got = ball.norm(step)
        ref = torch.tensor([0.3, 2.0], dtype=torch.float64) / lp_norm(g0, ball.q)
        assert torch.allclose(got, ref, rtol=1e-12, atol=0), (s, got, ref)
        g32 = g.float()
        assert torch.allclose(ball.dual_norm(g32).double() / s, lp_norm(g0, ball.q), rtol=1e-5, atol=0), s


def test_gnm_step_size_tiny_gradient() -> None:
    """The example of the issue: p = 2, gradient norm 1e-13, the GNM step is eps (it was 0.76 eps)."""
    g = torch.randn(2, 50, generator=gen(0), dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True) * 1e-13
    step = 0.3 * LpBall(2.0).steepest(g)
    assert torch.allclose(step.norm(dim=1), torch.full((2,), 0.3, dtype=torch.float64), rtol=1e-14)


def test_project_tiny_radius() -> None:
    """Projection onto a ball of tiny radius keeps the radius (scale-invariant), every p."""
    v = torch.randn(2, 7, generator=gen(1), dtype=torch.float64) * 1e-14
    for p in STEEP_P:
        ball = LpBall(p)
        r = torch.full((2,), 1e-16, dtype=torch.float64)
        out = ball.project(v, r)
        norms = ball.norm(out)
        assert bool((norms <= r * (1 + 1e-12)).all()) and bool((norms >= r * (1 - 1e-12)).all()), (p, norms)


# ------------------------------------------------------------------------------------- 9. hypothesis


@settings(max_examples=60, deadline=None)
@given(
    p=st.sampled_from([1.0, 1.5, 2.0, 3.0, INF]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    eps=st.floats(1e-4, 2.0),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.5, 3.0),
)
def test_fit_budget_property(p: float, dtype: torch.dtype, eps: float, seed: int, scale: float) -> None:
    """fit_budget: any float32 candidate (even over budget by a factor) comes back in the input dtype, in the
    box, with norm_p(x_adv - x) <= eps exactly in float64."""
    g = gen(seed)
    x = torch.rand(3, 9, generator=g).to(dtype)
    ball = LpBall(p)
    d = ball.sample(torch.zeros(3, 9), torch.full((3,), eps), pertattack.noise.Noise(seed, torch.arange(3)))
    d = d * scale
    x_adv = x.float() + d
    out = fit_budget(x, x_adv, torch.full((3,), eps, dtype=torch.float64), ball, Box(0.0, 1.0))
    assert out.dtype == dtype
    assert bool(((out >= 0) & (out <= 1)).all())
    assert bool((ball.norm(out.double() - x.double()) <= eps).all())


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from([n for n in SINGLE if n not in ("auto",)]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    eps=st.floats(1e-3, 1.5),
    seed=st.integers(0, 1000),
)
def test_attack_budget_property(name: str, dtype: torch.dtype, eps: float, seed: int) -> None:
    """Any preset, dtype and eps: every invariant holds."""
    model = base_model(name).to(dtype)
    run_checked(name, model, x_in(dtype, seed), min(eps, reach(name)))  # above the reach: refused (issue 18)


# ------------------------------------------------------------------------------------------- counts


def case_counts() -> dict[str, int]:
    """The number of (preset, condition) cases each category tries."""
    return {
        "bad-keyword": len(BAD_KEYWORDS) * len(PRESETS) + len(PRESETS),
        "bad-call": len(BAD_CALL_CASES) + len(CLASSIFICATION) + 2,
        "edge": (len(PRESETS) - 1) * len(EDGES),
        "eps-rule": len(PRESETS) * len(EPS_FORMS),
        "nan-model": len(PRESETS) * len(NAN_MODELS) + len(REGRESSION) + 1,
        "inplace-model": len(PRESETS) * len(INPLACE) * 2 + 2,
        "low-precision": len(PRESETS) * 2 * 2 + len(GRADIENT_P1) * 4 * 3,
        "regression-y": len(REGRESSION) * len(REG_Y),
        "steepest": len(STEEP_P) * 3 * len(STEEP_SCALES) + 1 + len(STEEP_P),
        "hypothesis": 60 + 25,
    }


def test_case_counts() -> None:
    """The docstring's table names every category of this module (its numbers are those of 28 presets; a new
    preset adds cases, which ``python tests/test_bad_inputs.py`` prints)."""
    documented = dict(re.findall(r"^([a-z-]+) +(\d+)  ", __doc__ or "", flags=re.M))
    counts = case_counts()
    assert set(documented) == set(counts)
    assert all(counts[k] >= int(v) for k, v in documented.items())


if __name__ == "__main__":
    total = 0
    for k, v in case_counts().items():
        print(f"{k:15s} {v:6d}")
        total += v
    print(f"{'total':15s} {total:6d}")
