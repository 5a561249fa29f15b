"""Checks of what users give: the parts' settings and an attack's call (inputs, labels, budgets). Each error
names the setting or argument it refuses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .modelcall import check_scores

if TYPE_CHECKING:
    from .constraints import Box

__all__ = ["integer", "positive_int", "flag", "is_number", "EpsLike", "budgets", "eps_as_asked", "check_rows",
           "check_scale", "check_input", "check_labels", "check_reference", "FirstOutputCheck"]

EpsLike = float | Sequence[float] | Tensor | np.ndarray | None


def is_number(value: Any) -> bool:
    """Whether ``value`` is a Python int or float (not a bool, not a tensor)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(name: str, value: Any, lo: int = 1) -> int:
    """``value`` as an int, or a TypeError/ValueError naming ``name`` unless it is a whole number >= ``lo``
    (a float such as 3.0 is accepted; NaN, inf, 1.5, strings and bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer >= {lo}, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or int(value) != value):
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    v = int(value)
    if v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return v


def positive_int(name: str, value: Any, what: str = "a positive integer") -> int:
    """``value`` if it is an int >= 1 (not a bool, not a float), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else a TypeError naming ``name`` (no truthy strings or ints)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def did_you_mean(name: str, known: list[str], cutoff: float = 0.6) -> str:
    """' (did you mean a, b?)' for the close matches of ``name`` among ``known``, else ''."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=cutoff)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def from_table(table: dict[str, Any], name: Any, what: str, extra: str = "") -> Any:
    """A new default instance of ``table[name]``, or a ValueError naming ``what`` and the close matches."""
    if not isinstance(name, str) or name not in table:
        hint = did_you_mean(name, list(table)) if isinstance(name, str) else ""
        raise ValueError(f"unknown {what} {name!r}{hint}; known: {', '.join(table)}{extra}")
    return table[name]()


def eps_as_asked(e: Any, n: int, device: torch.device) -> Tensor:
    """The budget as the user gave it, per input, in float64 (not rounded to a low-precision dtype)."""
    t = torch.as_tensor(e, dtype=torch.float64, device=device)
    return t.expand(n).clone() if t.dim() == 0 else t.clone()


def budgets(eps: EpsLike) -> tuple[list[float | Tensor | None], bool]:
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


def check_rows(n: int, **args: Any) -> None:
    """y, target and per-input eps must have one row per input (checked before the inputs are chunked). A scalar
    label or a wrong length most often means one input without its batch dimension: the error says so."""
    hint = "; x must be batch-first (N, ...); for one input use x[None]"
    for name, v in args.items():
        vals = v if name == "eps" else [v]
        for t in vals:
            if name != "eps" and (is_number(t) or isinstance(t, (Tensor, np.ndarray)) and t.ndim == 0):
                raise ValueError(f"{name} must have shape ({n},) (one entry per input), got a scalar{hint}")
            if isinstance(t, (Tensor, np.ndarray)) and t.ndim >= 1 and t.shape[0] != n:
                if t.ndim > 1:
                    raise ValueError(f"{name} must have {n} rows (one per input), got shape {tuple(t.shape)}{hint}")
                want = "be a scalar or have shape" if name == "eps" else "have shape"
                raise ValueError(f"{name} must {want} ({n},) (one entry per input), got {tuple(t.shape)}{hint}")


def check_scale(eps_list: list[Any], p: float, box: Box, x: Tensor, warn: bool = True) -> None:
    """An eps on the wrong scale for the box (``eps=8`` meant 8/255 on [0, 1] images) is refused, a suspicious
    one warned. The box's reach in the lp norm: its width max(hi - lo) for p = inf, its diameter norm_p(hi - lo)
    over one input's shape otherwise. eps > reach is an error (the ball holds the whole box: every attack
    "succeeds"); reach / 2 < eps <= reach a warning unless ``warn`` is False (subset attacks, which change a few
    pixels by up to eps: Fig. 4(c) goes to 0.7); eps = width is meant only to test the evaluation, as the
    reliability check robust-at-full-box does. Scalar eps and box are read as numbers: no device sync."""
    shape = tuple(x.shape[1:])
    if is_number(box.lo) and is_number(box.hi):
        width = float(box.hi) - float(box.lo)
        m = math.prod(shape)
        reach = width if math.isinf(p) else width * m ** (1 / p) if m else 0.0
    else:
        span = (torch.as_tensor(box.hi, dtype=torch.float64) - torch.as_tensor(box.lo, dtype=torch.float64)).cpu()
        span = span.expand(shape) if span.dim() else span
        reach = float(span.max()) if math.isinf(p) else float(torch.linalg.vector_norm(span.flatten(), ord=p))
    if not math.isfinite(reach):
        return
    largest = max((float(e.max()) if isinstance(e, Tensor) else e for e in eps_list if e is not None
                   and (not isinstance(e, Tensor) or e.numel())), default=None)
    if largest is None or largest <= (reach / 2 if warn else reach):
        return
    what = (f"eps {largest:g} (p = {p:g}) against the box [{_bound(box.lo)}, {_bound(box.hi)}]: its "
            + ("width max(hi - lo)" if math.isinf(p) else f"diameter norm_{p:g}(hi - lo) over one input {shape}")
            + f" is {reach:.6g}")
    if largest > reach:
        raise ValueError(f"{what}: the ball holds the whole box, so every input is reachable. eps is in the units "
                         "of the box (8/255, not 8, for [0, 1] images); set box=(lo, hi) to the inputs' range")
    warnings.warn(f"{what}: more than half of it, so the ball holds most of the box; eps is in the units of the "
                  "box (8/255, not 8, for [0, 1] images)", stacklevel=3)


def _bound(b: Any) -> str:
    return f"{b:g}" if is_number(b) else "per-channel"


def check_input(x: Tensor, box: Box) -> Tensor:
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


class FirstOutputCheck:
    """The model, checking its first output as the clean forward would have: the scores
    (:func:`check_scores`) and the labels ``y`` (shape, integer dtype, range of classes). ``x``: the clean
    inputs when that first forward is elsewhere (a random start, a dithered point): their outputs are then
    computed (one no-grad forward, in the same single sync) and checked instead, so that a model NaN at x is
    an error even when it is finite at the start. ``label`` is y as int64 for the loop (shape and dtype
    checked here)."""

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
            if self.x is not None:
                with torch.no_grad():
                    first = self.fwd(self.x)  # the clean outputs decide, as the clean forward would have
            check_scores(first)
            self.label = check_labels(self.y, out, "y")
        return out


def check_labels(y: Tensor, out: Tensor, name: str) -> Tensor:
    y = torch.as_tensor(y, device=out.device)
    if y.shape != (out.shape[0],):
        raise ValueError(f"{name} must have shape ({out.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {y.dtype}")
    if bool(((y < 0) | (y >= out.shape[1])).any()):
        raise ValueError(f"{name} must lie in [0, {out.shape[1] - 1}] (the model has {out.shape[1]} classes)")
    return y.long()


def check_reference(y: Any, out: Tensor) -> Tensor:
    """The reference output of a regression attack: ``y`` as floats shaped like the model's outputs ``out`` at
    the clean inputs (None: ``out`` itself), both finite."""
    if not torch.isfinite(out).all():
        raise ValueError("the model's output at the clean inputs contains NaN or inf")
    if y is not None:
        y = torch.as_tensor(y, device=out.device)
        if not y.is_floating_point():
            raise TypeError(f"y of a regression attack is the reference output (floats), got {y.dtype}")
        if not torch.isfinite(y).all():
            raise ValueError("y (the reference output) contains NaN or inf")
    ref = out if y is None else y.to(out.dtype)
    if ref.shape != out.shape:
        raise ValueError(f"y has shape {tuple(ref.shape)}, the model's outputs {tuple(out.shape)}")
    return ref
