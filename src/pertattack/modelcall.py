"""Calling the user's model: preprocessing, output selection, eval mode, output checks.

Attacks work in the raw input space (eps and the box in raw units). A model trained on
normalised inputs gets its per-channel ``(mean, std)`` once, applied inside the call; a model
whose forward returns a tuple or dict gets ``output`` (an index, a key or a callable) naming the
scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Model", "ModelCall", "as_model", "eval_mode", "Preprocess", "OutputSelector"]

Preprocess = tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor]
OutputSelector = int | str | Callable[[Any], Tensor] | None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then restore every submodule's own mode (recorded at call time)."""
    modes = [(m, m.training) for m in model.modules()]
    if any(mode for _, mode in modes):
        model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            if m.training != mode:  # nn.Module.__setattr__ is slow: set only what changed
                m.training = mode


def _channel_tensor(v: float | Sequence[float] | Tensor, like: Tensor, name: str) -> Tensor:
    """preprocess's ``name`` (mean or std) shaped to broadcast over ``like`` (N, C, ...): one number, or one per
    channel (dimension 1); any other count is an error that names preprocess, never a silent broadcast."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 1 and t.numel() > 1:
        if like.dim() < 2 or like.shape[1] != t.numel():
            raise ValueError(f"preprocess {name} has {t.numel()} channel statistics, but the inputs of shape "
                             f"{tuple(like.shape)} have {like.shape[1] if like.dim() >= 2 else 'no'} channels "
                             "(dimension 1): give one number or one per channel")
        t = t.reshape(-1, *([1] * (like.dim() - 2)))  # per channel: (C,) -> (C, 1, ..., 1)
    return t


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} (indices 0 to {len(out) - 1})"
    if isinstance(out, dict):  # a Hugging Face ModelOutput too: its fields that are not None are its keys
        return f"a {type(out).__name__} with keys {list(out)}"
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if dataclasses.is_dataclass(out):
        return f"a {type(out).__name__} with fields {[f.name for f in dataclasses.fields(out)]}"
    return f"a {type(out).__name__}"


class Model(nn.Module):
    """A model wrapped once with what every attack and metric needs to call it (as foolbox's models):

        model = pertattack.Model(net, box=(0, 1), preprocess=(mean, std), output="logits")
        pertattack.get_attack("pgd", eps=8 / 255)(model, x, y)
        pertattack.robustness(model, x, y)

    Args:
        module: any ``nn.Module``.
        box: ``(lo, hi)`` of valid raw inputs (scalars or per channel); None: the attack's, else [0, 1].
        preprocess: ``(mean, std)``, scalars or per channel; the module sees (x - mean) / std, so eps and
            the box stay in raw input units.
        output: which part of the module's output holds the scores: an int index (tuple/list output),
            a key (dict output, or an attribute such as ``"logits"``), or a callable. A Hugging Face image
            classifier (``AutoModelForImageClassification``: forward(pixel_values) returns a ``ModelOutput``,
            a dict whose fields are keys and attributes) takes ``output="logits"``; so does any object with a
            ``.logits`` attribute (a dataclass, a named tuple).

    The module always receives a tensor of its own (a model that writes into its input cannot change
    the caller's x), in the dtype the attack was called with.
    """

    def __init__(self, module: nn.Module, box: tuple[Any, Any] | None = None, preprocess: Preprocess | None = None,
                 output: OutputSelector = None):
        super().__init__()
        if isinstance(module, Model):
            raise TypeError("the module is already a pertattack.Model")
        if not isinstance(module, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        if preprocess is not None:
            _check_preprocess(preprocess)
        if output is not None and not (callable(output) or isinstance(output, (int, str))) or isinstance(output, bool):
            raise TypeError(f"output must be an index, a key or a callable, got {output!r}")
        from .constraints import make_box

        self.model = module
        self.training = module.training  # the wrapper starts in its module's mode (it has none of its own)
        self.box = None if box is None else make_box(*box)
        self.preprocess = preprocess
        self.output = output
        self.input_dtype: torch.dtype | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_dtype is not None and x.dtype != self.input_dtype:
            x = x.to(self.input_dtype)
        z = x
        if self.preprocess is not None:
            mean, std = self.preprocess
            try:
                z = (x - _channel_tensor(mean, x, "mean")) / _channel_tensor(std, x, "std")
            except RuntimeError as err:  # statistics of a shape that does not broadcast over x
                raise ValueError(f"preprocess (mean, std) does not fit inputs of shape {tuple(x.shape)}: {err}"
                                 ) from err
        else:
            z = x.clone()  # the module may write into its input; never into the caller's tensor
        out = self.model(z)
        sel = self.output
        if callable(sel):
            out = sel(out)
        elif sel is not None:
            try:
                out = out[sel] if isinstance(sel, int) or isinstance(out, dict) else getattr(out, sel)
            except (IndexError, KeyError, AttributeError, TypeError) as err:
                raise ValueError(f"output={sel!r} names no part of what the model returned: "
                                 f"{_describe(out)}") from err
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the model returned {type(out).__name__}, not a tensor; pass output=<index, key or callable> "
                "to say which part holds the scores"
            )
        if out.dim() == 0:
            raise ValueError(f"the model mapped {x.shape[0]} inputs to a scalar output")
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"the model mapped {x.shape[0]} inputs to {out.shape[0]} outputs")
        return out

    def __repr__(self) -> str:
        parts = [type(self.model).__name__]
        if self.box is not None:
            parts.append(f"box=({_short(self.box.lo)}, {_short(self.box.hi)})")
        if self.preprocess is not None:
            parts.append("preprocess=(mean, std)")
        if self.output is not None:
            parts.append(f"output={self.output!r}")
        return f"Model({', '.join(parts)})"


def ModelCall(model: nn.Module, preprocess: Preprocess | None = None, output: OutputSelector = None) -> Model:  # noqa: N802
    """``Model(model, preprocess=..., output=...)``: the package's name for it before the wrapper was public."""
    return Model(model, preprocess=preprocess, output=output)


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else "per channel"


def _check_preprocess(pre: Any) -> None:
    try:
        mean, std = pre
    except (TypeError, ValueError):
        raise ValueError(f"preprocess must be a pair (mean, std), got {pre!r}") from None
    for name, v in (("mean", mean), ("std", std)):
        t = torch.as_tensor(v, dtype=torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError(f"preprocess {name} must be finite, got {v!r}")
    if (torch.as_tensor(std, dtype=torch.float64) <= 0).any():
        raise ValueError(f"preprocess std must be > 0, got {std!r}")


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    try:
        ta, tb = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return a == b
    return ta.shape == tb.shape and bool(torch.equal(ta, tb))


def as_model(model: nn.Module, *, preprocess: Preprocess | None = None, output: OutputSelector = None,
             box: Any = None) -> Model:
    """``model`` as a :class:`Model`: a plain module is wrapped with the keywords; a :class:`Model` is
    used as it is, and a keyword that disagrees with it is an error (no silently different number)."""
    if isinstance(model, Model):
        for name, kw, own in (("preprocess", preprocess, model.preprocess), ("output", output, model.output)):
            if kw is not None and not _same(kw, own):
                raise ValueError(f"{name}={kw!r} disagrees with the pertattack.Model's {name}={own!r}: "
                                 "give it once, on the Model")
        if box is not None and model.box is not None:
            lo, hi = (box.lo, box.hi) if hasattr(box, "lo") else box
            if not (_same(lo, model.box.lo) and _same(hi, model.box.hi)):
                raise ValueError(f"box=({lo}, {hi}) disagrees with the pertattack.Model's box "
                                 f"({model.box.lo}, {model.box.hi}): give it once, on the Model")
        return model
    return Model(model, preprocess=preprocess, output=output)


def check_scores(out: Tensor) -> None:
    """Classification outputs must be (N, K), K >= 2; warn when they look like probabilities."""
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(
            f"a classifier must map (N, ...) to scores (N, K) with K >= 2, got output shape {tuple(out.shape)}"
        )
    # both questions in one host-device sync: finite? non-negative rows that sum to 1 (allclose's tolerance)?
    rows = out.sum(dim=1)
    probs = (out >= 0).all() & ((rows - 1).abs() <= 1e-4 + 1e-5).all()
    finite, probs = torch.stack([torch.isfinite(out).all(), probs]).tolist()
    if not finite:
        bad = (~torch.isfinite(out.reshape(out.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"the model's output at the clean inputs contains NaN or inf (inputs {bad[:10]})")
    if probs:
        warnings.warn(
            "the model's outputs look like probabilities (non-negative rows summing to 1); objectives take "
            "f as logits: gradients of a saturated softmax vanish and attacks weaken. Return logits if you can.",
            stacklevel=3,
        )
