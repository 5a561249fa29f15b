"""Cascades: several attacks in order, each only on the inputs still robust (the shape of AutoAttack); and
restarts, the same run again on the inputs still robust (``restarted``).

    pertattack.cascade(["apgd-ce", "square"], eps=8 / 255)

The result is one :class:`AttackResult` per eps whose ``success`` is the union of the members'
successes and whose ``info["attack"]`` says which member fooled each input (its position in
``members``; -1 where none did; :meth:`AttackResult.fooled_by` gives the names). An input that a member
fools is never attacked again, so the cost of the later (stronger, slower) members falls on the robust
inputs only. :class:`Auto` (the ``auto`` preset) is a cascade that checks the model first and picks its
members by what it finds.
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

__all__ = ["Cascade", "Auto"]

# keywords a cascade passes on to every member
SHARED = ("eps", "seed", "batch_size", "progress", "preprocess", "output", "p", "box")


@dataclass(frozen=True)
class Cascade:
    """Attacks run in order on the inputs still robust; callable like an :class:`Attack`.

    Args:
        attacks: the members (attacks, or cascades).
        name: shown in results and reprs.
        order: a :class:`pertattack.targets.TargetOrder`: computed once on every input before the members run,
            it steers the members whose objective takes a target (``apgd-dlrt``): the j-th of them is given the
            j-th class of each input's order as its target (APGD-T over the targets in that order).
    """

    attacks: tuple[Any, ...]
    name: str = "cascade"
    order: Any = None

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
    progress = property(lambda self: getattr(self.attacks[0], "progress", False))
    minimum_norm = False  # a cascade needs a budget

    def replace(self, **kw: Any) -> Cascade:
        """The same cascade with shared settings changed on every member (eps, seed, p, box, ...)."""
        unknown = [k for k in kw if k not in SHARED]
        if unknown:
            raise TypeError(f"a cascade passes only {', '.join(SHARED)} to its members, got {unknown}; "
                            "set other keywords on the member attacks")
        return dataclasses.replace(self, attacks=tuple(a.replace(**kw) for a in self.attacks))

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
        targets = None
        if self.order is not None:
            with eval_mode(fwd):
                targets = self.order.order(fwd, x, y, self.ball)
        results = [self._run(fwd, model, x, y, e, box, index, targets) for e in eps_list]
        return results if many else results[0]

    def _run(self, fwd: Any, model: nn.Module, x: Tensor, y: Tensor, eps: Any, box: Any,
             index: Tensor, targets: Tensor | None = None) -> AttackResult:
        n = x.shape[0]
        with eval_mode(fwd), torch.no_grad():
            out0 = fwd(x[:1])
        check_scores(out0)
        k = out0.shape[1]
        res: AttackResult | None = None
        who = torch.full((n,), -1, dtype=torch.long, device=x.device)
        todo = torch.arange(n, device=x.device)
        steered = 0  # members steered by the target order so far
        for j, member in enumerate(self.attacks):
            obj = getattr(member, "objective", None)
            if obj is not None and not obj.usable(k):
                continue  # e.g. a targeted-DLR rank beyond the model's classes
            if todo.numel() == 0:
                break
            kw = {}
            if targets is not None and getattr(obj, "steered", False) and not isinstance(member, Cascade):
                if steered >= targets.shape[1]:
                    continue  # fewer classes than members
                kw["target"] = targets[todo, steered]
                steered += 1
            r = member(model, x[todo], y[todo], eps=rows_of(eps, todo), box=box, index=index[todo], **kw)
            assert isinstance(r, AttackResult) and r.success is not None
            if res is None:  # the first member that ran (earlier ones may not apply) ran on every row
                res = dataclasses.replace(r, info={})
            else:
                put_rows(vars(res), vars(r), todo, take=r.success)
            who[todo[r.success]] = j
            todo = todo[~r.success]
            if getattr(member, "progress", False):  # the members' bars show steps; this line, the cascade
                from tqdm.auto import tqdm

                tqdm.write(f"{self.name}: {getattr(member, 'name', j)} fooled {int(r.success.sum())} of "
                           f"{r.success.numel()}; {todo.numel()} of {n} still robust")
        if res is None:
            raise ValueError(f"no member of cascade {self.name!r} applies to a model with {k} classes (the model's "
                             "output)")
        res.info["attack"] = who
        res.attack = self.name
        res.members = tuple(getattr(a, "name", "?") for a in self.attacks)
        return res



@dataclass(frozen=True, repr=False)
class Auto(Cascade):
    """A cascade that checks the model first (:func:`pertattack.checks.check_model`, one forward and two backward
    passes on up to 1,024 inputs) and adapts to what it finds:

    * outputs that are probabilities, or a saturated cross-entropy (``zero-gradients``): ``scale_free`` (apgd-dlr)
      replaces the first member where the flag concerns at least half of the inputs, and runs after it otherwise
      (the first member keeps the inputs where cross-entropy works);
    * gradients that are zero even for the logit margin (``masked-gradients``), a randomised model, or
      probabilities: ``gradient_free`` (Square) runs last, on the inputs still robust.

    The flags, and ``gradient-free-wins`` where the gradient-free member fooled inputs the others missed, go to
    every result's ``flags`` and to one warning."""

    scale_free: Any = None
    gradient_free: Any = None

    def replace(self, **kw: Any) -> Auto:
        out = super().replace(**kw)
        return dataclasses.replace(out, **{k: getattr(self, k).replace(**kw) for k in ("scale_free", "gradient_free")
                                           if getattr(self, k) is not None})

    def members_for(self, flags: Any) -> tuple[Any, ...]:
        """The members to run given the checks' flags (see the class docstring)."""
        names = {f.name for f in flags}
        members = self.attacks
        if names & {"zero-gradients", "probabilities"} and self.scale_free is not None:
            scale = [f for f in flags if f.name in ("zero-gradients", "probabilities")]
            most = all(f.share is None or f.share >= 0.5 for f in scale)
            members = (self.scale_free, *members[1:]) if most else (members[0], self.scale_free, *members[1:])
        if names & {"masked-gradients", "randomised", "probabilities"} and self.gradient_free is not None:
            members = (*members, self.gradient_free)
        return members

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, eps: EpsLike = None,
                 target: Tensor | None = None, box: Any = None, index: Tensor | None = None
                 ) -> AttackResult | list[AttackResult]:
        """Check the model, then run the members the checks call for (see the class docstring)."""
        from ._validate import check_labels
        from .checks import Flag, check_model, warn_flags

        if target is not None:
            raise ValueError("a cascade is untargeted: it takes no target=")
        xc = check_input(x, self.box_for(model, box))
        check_rows(xc.shape[0], y=y)
        fwd = as_model(model, preprocess=self.preprocess, output=self.output)
        probe = xc[:1024]
        with eval_mode(fwd):
            with torch.no_grad():
                out = fwd(probe)
            check_scores(out)
            label = out.argmax(dim=1) if y is None else check_labels(torch.as_tensor(y)[:1024], out, "y")
            flags = check_model(fwd, probe, label)
        members = self.members_for(flags)
        chosen = Cascade(members, self.name, self.order)
        out_all = chosen(model, x, y, eps=eps, box=box, index=index)
        results = out_all if isinstance(out_all, list) else [out_all]
        free = torch.tensor([not getattr(getattr(a, "solver", None), "needs_grad", True) for a in members] + [False])
        for r in results:
            extra = []
            wins = free[r.info["attack"]]  # -1 (none fooled) reads the last entry, False
            if bool(wins.any()):
                extra.append(Flag("gradient-free-wins", f"the gradient-free member fooled {int(wins.sum())} inputs "
                                                        "that every gradient member missed: gradients are masked"))
            r.flags = (*flags, *extra)
        warn_flags(results[-1].flags, f"attack {self.name!r}")
        return out_all


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
