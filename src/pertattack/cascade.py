"""Cascades: several attacks in order, each only on the inputs still robust (the shape of AutoAttack); and
restarts, the same run again on the inputs still robust (:func:`restarted`).

    auto = cascade([apgd-ce, apgd-t, fmn, square])

The result is one :class:`AttackResult` per eps whose ``success`` is the union of the members'
successes and whose ``info["attack"]`` says which member fooled each input (its position in the
list; -1 where none did). An input that a member fools is never attacked again, so the cost of the
later (stronger, slower) members falls on the robust inputs only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._validate import EpsLike, budgets, check_input, check_rows
from .modelcall import as_model, check_scores, eval_mode
from .noise import Noise
from .objectives import Context
from .result import AttackResult

__all__ = ["Cascade"]

# keywords a cascade passes on to every member
SHARED = ("eps", "seed", "batch_size", "progress", "preprocess", "output", "p", "box")


@dataclass(frozen=True)
class Cascade:
    """Attacks run in order on the inputs still robust; callable like an :class:`Attack`.

    Args:
        attacks: the members (attacks, or cascades).
        name: shown in results and reprs.
    """

    attacks: tuple[Any, ...]
    name: str = "cascade"

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ValueError("a cascade needs at least one attack")
        for a in self.attacks:
            if not callable(a) or not hasattr(a, "replace"):
                raise TypeError(f"cascade members must be attacks (get_attack(...) or cascades), got {a!r}")
            obj = getattr(a, "objective", None)
            if obj is not None and (not obj.classification or obj.needs_target):
                raise ValueError(f"cascade member {a!r}: a cascade attacks classifiers, untargeted "
                                 "(success = the class left)")

    # what callers read from an attack (budget, model call, box, ball, objective): the first member's
    eps = property(lambda self: self.attacks[0].eps)
    preprocess = property(lambda self: self.attacks[0].preprocess)
    output = property(lambda self: self.attacks[0].output)
    box = property(lambda self: self.attacks[0].box)
    box_for = property(lambda self: self.attacks[0].box_for)
    ball = property(lambda self: self.attacks[0].ball)
    objective = property(lambda self: self.attacks[0].objective)
    minimum_norm = False  # a cascade needs a budget

    def replace(self, **kw: Any) -> Cascade:
        """The same cascade with shared settings changed on every member (eps, seed, p, box, ...)."""
        unknown = [k for k in kw if k not in SHARED]
        if unknown:
            raise TypeError(f"a cascade passes only {', '.join(SHARED)} to its members, got {unknown}; "
                            "set other keywords on the member attacks")
        return Cascade(tuple(a.replace(**kw) for a in self.attacks), self.name)

    def __repr__(self) -> str:
        return f"Cascade({self.name!r}, [{', '.join(getattr(a, 'name', '?') for a in self.attacks)}], eps={self.eps!r})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, eps: EpsLike = None,
                 target: Tensor | None = None, box: Any = None, index: Tensor | None = None
                 ) -> AttackResult | list[AttackResult]:
        """Run the members in order; each sees only the inputs no earlier member fooled."""
        if target is not None:
            raise ValueError("a cascade is untargeted: it takes no target=")
        eps = self.eps if eps is None else eps
        eps_list, many = budgets(eps)
        if eps_list == [None]:
            raise ValueError(f"cascade {self.name!r} needs a budget: pass eps=...")
        x = check_input(x, self.box_for(model, box))  # the user's mistakes named before any member runs
        n = x.shape[0]
        check_rows(n, y=y, eps=eps_list)
        index = Noise.create(0, n, x.device, index).index
        fwd = as_model(model, preprocess=self.preprocess, output=self.output)
        if y is None:  # one label for every member: the model's prediction on x
            with eval_mode(fwd), torch.no_grad():
                y = torch.cat([fwd(x[i : i + 4096]).argmax(dim=1) for i in range(0, n, 4096)])
        results = [self._run(fwd, model, x, y, e, box, index) for e in eps_list]
        return results if many else results[0]

    def _run(self, fwd: Any, model: nn.Module, x: Tensor, y: Tensor, eps: Any, box: Any,
             index: Tensor) -> AttackResult:
        n = x.shape[0]
        with eval_mode(fwd), torch.no_grad():
            out0 = fwd(x[:1])
        check_scores(out0)
        k = out0.shape[1]
        res: AttackResult | None = None
        who = torch.full((n,), -1, dtype=torch.long, device=x.device)
        todo = torch.arange(n, device=x.device)
        for j, member in enumerate(self.attacks):
            obj = getattr(member, "objective", None)
            if obj is not None and not obj.usable(k):
                continue  # e.g. a targeted-DLR rank beyond the model's classes
            if todo.numel() == 0:
                break
            r = member(model, x[todo], y[todo], eps=rows_of(eps, todo), box=box, index=index[todo])
            assert isinstance(r, AttackResult) and r.success is not None
            if res is None:  # the first member that ran (earlier ones may not apply) ran on every row
                res = dataclasses.replace(r, info={})
            else:
                put_rows(vars(res), vars(r), todo, take=r.success)
            who[todo[r.success]] = j
            todo = todo[~r.success]
        if res is None:
            raise ValueError(f"no member of cascade {self.name!r} applies to a model with {k} classes (the model's "
                             "output)")
        res.info["attack"] = who
        res.attack = self.name
        return res


def rows_of(v: Any, rows: Tensor | slice | None) -> Any:
    """``v`` on the inputs ``rows`` (an index tensor or a slice; all of them when None): a per-input tensor indexed, a
    :class:`Context` taken on those rows, anything else (a scalar eps, None) as it is."""
    if rows is None:
        return v
    if isinstance(v, Context):
        return v.subset(rows)
    return v[rows] if isinstance(v, Tensor) and v.dim() >= 1 else v


def put_rows(dst: dict[str, Any], src: dict[str, Any], rows: Tensor, take: Tensor | None = None) -> None:
    """Put back a run on the inputs ``rows``: its per-input tensors overwrite those rows of ``dst`` (only where
    ``take``, when given: where a later cascade member fooled them); every run's steps add up, and NaN met
    (``nonfinite``) in any run stays reported."""
    sel = rows if take is None else rows[take]
    for name, s in src.items():
        d = dst.get(name)
        if not isinstance(d, Tensor) or not isinstance(s, Tensor):
            continue
        if name == "steps":
            d[rows] += s
        elif name == "nonfinite":
            d[rows] |= s
        else:
            d[sel] = s if take is None else s[take]


Run = Callable[[Tensor | None, Noise], tuple[Tensor, Tensor, dict[str, Tensor]]]


def restarted(run: Run, restarts: int, noise: Noise, robust: Callable[[Tensor], Tensor]
              ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``run(None, noise)`` on every input, then up to ``restarts - 1`` more times on the inputs still robust
    (``robust(eta)``, a mask), like a cascade's members: ``run(rows, noise)`` on those rows, its noise
    carrying on from where the previous run left it (a new random start), its eta replacing theirs.
    Returns eta, the steps of every run added up, and the first run's info."""
    eta, steps, info = run(None, noise)
    if restarts == 1:
        return eta, steps, info
    out = {"eta": eta, "steps": steps, "nonfinite": info.get("nonfinite", torch.zeros_like(steps, dtype=torch.bool))}
    for _ in range(restarts - 1):
        rows = robust(out["eta"]).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        sub = Noise(noise.seed, noise.index[rows], noise.counter)
        eta_r, steps_r, info_r = run(rows, sub)
        noise.counter = sub.counter
        put_rows(out, {"eta": eta_r, "steps": steps_r, "nonfinite": info_r.get("nonfinite")}, rows)
    return out["eta"], out["steps"], {**info, "nonfinite": out["nonfinite"]}
