"""Cascades: several attacks in order, each only on the inputs still robust (the shape of AutoAttack).

    auto = cascade([apgd-ce, apgd-t, fmn, square])

The result is one :class:`AttackResult` per eps whose ``success`` is the union of the members'
successes and whose ``info["attack"]`` says which member fooled each input (its position in the
list; -1 where none did). An input that a member fools is never attacked again, so the cost of the
later (stronger, slower) members falls on the robust inputs only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import _COMPOSITES, EpsLike, _eps_list, get_attack
from .modelcall import as_model, eval_mode
from .result import AttackResult

__all__ = ["Cascade", "cascade"]

# keywords a cascade passes on to every member
_SHARED = ("eps", "seed", "batch_size", "progress", "preprocess", "output", "p", "box")


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

    @property
    def eps(self) -> Any:
        return self.attacks[0].eps

    @property
    def minimum_norm(self) -> bool:
        return False

    @property
    def preprocess(self) -> Any:
        return self.attacks[0].preprocess

    @property
    def output(self) -> Any:
        return self.attacks[0].output

    @property
    def box(self) -> Any:
        return self.attacks[0].box

    @property
    def ball(self) -> Any:
        return self.attacks[0].ball

    @property
    def objective(self) -> Any:
        return self.attacks[0].objective

    def replace(self, **kw: Any) -> Cascade:
        """The same cascade with shared settings changed on every member (eps, seed, p, box, ...)."""
        unknown = [k for k in kw if k not in _SHARED]
        if unknown:
            raise TypeError(f"a cascade passes only {', '.join(_SHARED)} to its members, got {unknown}; "
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
        eps_list, many = _eps_list(eps)
        if eps_list == [None]:
            raise ValueError(f"cascade {self.name!r} needs a budget: pass eps=...")
        n = x.shape[0]
        if index is None:
            index = torch.arange(n, device=x.device)
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
            k = fwd(x[:1]).shape[1]
        res: AttackResult | None = None
        who = torch.full((n,), -1, dtype=torch.long, device=x.device)
        todo = torch.arange(n, device=x.device)
        for j, member in enumerate(self.attacks):
            obj = getattr(member, "objective", None)
            if obj is not None and not obj.usable(k):
                continue  # e.g. a targeted-DLR rank beyond the model's classes
            if todo.numel() == 0:
                break
            e = eps[todo] if isinstance(eps, Tensor) and eps.dim() == 1 else eps
            r = member(model, x[todo], y[todo], eps=e, box=box, index=index[todo])
            assert isinstance(r, AttackResult) and r.success is not None
            if res is None:
                res = _empty_like(r, n, todo)
            _put(res, r, todo, take=torch.ones_like(r.success) if j == 0 else r.success)
            who[todo[r.success]] = j
            todo = todo[~r.success]
        assert res is not None
        res.info["attack"] = who
        res.attack = self.name
        return res


def _empty_like(r: AttackResult, n: int, todo: Tensor) -> AttackResult:
    """A result for n inputs to be filled row by row (fields shaped like r's, first dimension n)."""

    def alloc(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.new_zeros((n, *t.shape[1:]))

    return AttackResult(x_adv=alloc(r.x_adv), eta=alloc(r.eta), norms=alloc(r.norms), success=alloc(r.success),
                        eps=alloc(r.eps), label=alloc(r.label), pred=alloc(r.pred), steps=alloc(r.steps), p=r.p,
                        margin=alloc(r.margin), info={})


def _put(res: AttackResult, r: AttackResult, rows: Tensor, take: Tensor) -> None:
    """Write r's rows where ``take`` (the member fooled them, or the first member's result) into res;
    every member's steps add up."""
    sel = rows[take]
    for name in ("x_adv", "eta", "norms", "success", "eps", "label", "pred", "margin"):
        dst, src = getattr(res, name), getattr(r, name)
        if dst is not None and src is not None:
            dst[sel] = src[take]
    res.steps[rows] += r.steps


def cascade(attacks: Sequence[Any | str], name: str = "cascade", **shared: Any) -> Cascade:
    """A :class:`Cascade` of attacks or preset names, with shared keywords (eps, seed, p, ...) set on all:
    ``pertattack.cascade(["apgd-ce", "square"], eps=8 / 255, seed=0)``."""
    members = tuple(get_attack(a) if isinstance(a, str) else a for a in attacks)
    c = Cascade(members, name)
    return c.replace(**shared) if shared else c


def apgd_t(targets: int = 9, **kw: Any) -> Cascade:
    """APGD-T (Croce and Hein 2020): APGD on the targeted DLR loss towards the classes of rank 2 .. targets + 1
    in f(x), each on the inputs still robust (a model with fewer classes uses the ranks it has)."""
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
        raise ValueError(f"targets must be a positive integer, got {targets!r}")
    shared = {k: kw.pop(k) for k in list(kw) if k in _SHARED}
    members = tuple(get_attack(f"apgd-dlrt-{r}", **kw) for r in range(2, targets + 2))
    return cascade(members, "apgd-t", **shared)


def auto(p: float = math.inf, queries: int = 5000, **kw: Any) -> Cascade:
    """The strongest evaluation: apgd-ce, apgd-t (9 targets), fmn, square (``queries``), each on the inputs
    still robust. Square needs no gradient: it is what catches gradient masking."""
    members: list[Any] = [get_attack("apgd-ce"), apgd_t(), get_attack("fmn")]
    try:
        members.append(get_attack("square", queries=queries))
    except ValueError:  # no square preset in this build
        pass
    return cascade(members, "auto", p=p, **kw)


_COMPOSITES["apgd-t"] = ("APGD-T: apgd-dlrt-R for R = 2..10 (targets=), each on the inputs still robust", apgd_t)
_COMPOSITES["auto"] = ("The strongest evaluation: apgd-ce, apgd-t, fmn, square, each on the inputs still robust "
                       "(AutoAttack's shape, FMN in place of FAB-T)", auto)
