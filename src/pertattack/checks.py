"""Reliability checks: signs that an evaluation's robust accuracy may be too high (after AutoAttack's ``checks``).

A gradient attack that fails against a model does not show that the model is robust: the gradient can be useless
(masked) rather than the model strong. These checks look for the usual reasons before and after an evaluation;
each returns :class:`Flag` records, which :func:`pertattack.get_attack` ``("auto")`` reacts to (a scale-invariant
loss where cross-entropy is flat, a gradient-free member where gradients are suspect), puts in
``AttackResult.flags`` and warns about once.

Before the attack (:func:`check_model`, one extra forward and one backward on the inputs):

* ``randomised``: two forwards of the same inputs in eval mode differ (dropout left on, random defences):
  each gradient is then of another function, and one attack run is not a worst case (use EOT);
* ``probabilities``: the outputs are in [0, 1] and every row sums to 1: the model ends in a softmax, so
  cross-entropy and logit-based losses are computed on probabilities and saturate;
* ``zero-gradients``: the gradient of cross-entropy is exactly zero at some correctly classified inputs while that
  of the logit margin (eq. 2) is not: a saturated softmax, which a scale-invariant loss (DLR) does not see;
* ``masked-gradients``: the gradient of the logit margin itself is exactly zero at some correctly classified
  inputs (a non-differentiable or quantising layer, a shattered gradient): only a gradient-free attack helps.

After it (:func:`check_results`):

* ``gradient-free-wins``: the gradient-free member fooled inputs that every gradient member missed;
* ``not-monotone``: robust accuracy rose while eps grew (a stronger budget must fool at least as many);
* ``robust-at-full-box``: inputs stayed robust at an l-inf eps as large as the box (any input is reachable there).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Flag", "check_model", "check_results", "warn_flags"]


@dataclass(frozen=True)
class Flag:
    """One reliability flag: a short ``name`` (see the module docstring) and a sentence saying what was seen."""

    name: str
    message: str
    #: the share of the checked inputs it concerns, where that has a meaning (zero and masked gradients)
    share: float | None = None

    def __str__(self) -> str:  # the share is in the message
        return f"{self.name}: {self.message}"


def check_model(forward: Callable[[Tensor], Tensor], x: Tensor, label: Tensor) -> list[Flag]:
    """The checks before an attack, on inputs ``x`` (N, ...) with classes ``label`` (N,); the model in eval mode.

    Returns the flags that fired (none for an ordinary logit classifier)."""
    flags: list[Flag] = []
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = forward(xg)
        ce = F.cross_entropy(out, label, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), xg, retain_graph=True)
        others = out.masked_fill(F.one_hot(label, out.shape[1]).bool(), -math.inf)
        margin = out.gather(1, label[:, None])[:, 0] - others.amax(dim=1)
        (gm,) = torch.autograd.grad(margin.sum(), xg)
    out = out.detach()
    with torch.no_grad():
        again = forward(x.detach().clone())
    scale = out.abs().amax().clamp_min(1e-12)
    if not bool(((out - again).abs() <= 1e-5 * scale).all()):
        flags.append(Flag("randomised", "two forwards of the same inputs differ in eval mode (dropout left on or a "
                                        "random defence?): one attack run is not a worst case; average gradients "
                                        "over draws (EOT)"))
    if bool((out >= 0).all() and (out <= 1).all() and ((out.sum(dim=1) - 1).abs() <= 1e-4).all()):
        flags.append(Flag("probabilities", "the outputs are probabilities (rows in [0, 1] summing to 1): the losses "
                                           "expect logits; remove the final softmax if you can"))
    correct = out.argmax(dim=1) == label
    flat = g.reshape(len(g), -1).abs().amax(dim=1) == 0
    masked = (gm.reshape(len(gm), -1).abs().amax(dim=1) == 0) & correct
    saturated = flat & correct & ~masked
    if bool(saturated.any()):
        flags.append(Flag("zero-gradients", f"the cross-entropy gradient is exactly zero at {int(saturated.sum())} of "
                                            f"{int(correct.sum())} correctly classified inputs, the logit margin's is "
                                            "not (a saturated softmax: scale-invariant losses see through it)",
                          float(saturated.sum()) / max(int(correct.sum()), 1)))
    if bool(masked.any()):
        flags.append(Flag("masked-gradients", f"the gradient of the logit margin is exactly zero at "
                                              f"{int(masked.sum())} of {int(correct.sum())} correctly classified "
                                              "inputs (gradient masking: only a gradient-free attack helps there)",
                          float(masked.sum()) / max(int(correct.sum()), 1)))
    return flags


def check_results(robust_by_eps: Sequence[tuple[float, Tensor]], p: float, box_width: float | None = None
                  ) -> list[Flag]:
    """The checks across budgets: ``robust_by_eps`` pairs (eps, robust (N,) bool) of one attack on the same inputs;
    ``box_width``: hi - lo of a scalar box (None: skip the full-box check)."""
    flags: list[Flag] = []
    pairs = sorted(robust_by_eps, key=lambda t: t[0])
    for (e0, r0), (e1, r1) in zip(pairs, pairs[1:], strict=False):
        back = r1 & ~r0
        if bool(back.any()):
            flags.append(Flag("not-monotone", f"{int(back.sum())} inputs fooled at eps {e0:g} stayed robust at "
                                              f"{e1:g}: the attack is not finding the worst case"))
            break
    if box_width is not None and math.isinf(p):
        for e, r in pairs:
            if e >= box_width and bool(r.any()):
                flags.append(Flag("robust-at-full-box", f"{int(r.sum())} inputs robust at eps {e:g}, as large as "
                                                        "the box: any input is reachable there"))
                break
    return flags


def warn_flags(flags: Sequence[Flag], where: str) -> None:
    """One warning listing the flags (none when there are none)."""
    if flags:
        warnings.warn(f"{where}: the evaluation may overestimate robustness: " + "; ".join(str(f) for f in flags),
                      stacklevel=3)
