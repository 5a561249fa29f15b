"""Calling the user's model: preprocessing, output selection, eval mode, output checks.

Attacks work in the raw input space (eps and the box in raw units). A model trained on
normalised inputs gets its per-channel ``(mean, std)`` once, applied inside the call; a model
whose forward returns a tuple or dict gets ``output`` (an index, a key or a callable) naming the
scores.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelCall", "eval_mode", "Preprocess", "OutputSelector"]

Preprocess = tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor]
OutputSelector = int | str | Callable[[Any], Tensor] | None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then restore every submodule's own mode (recorded at call time)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _channel_tensor(v: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 1 and like.dim() >= 3:  # per channel: (C,) -> (C, 1, ..., 1)
        t = t.reshape(-1, *([1] * (like.dim() - 2)))
    return t


class ModelCall(nn.Module):
    """``model`` as a map from raw inputs (N, ...) to scores (N, K).

    Args:
        model: any ``nn.Module``.
        preprocess: ``(mean, std)``, scalars or per channel; the model sees (x - mean) / std.
        output: which part of the model's output holds the scores: an int index (tuple/list output),
            a key (dict output, or an attribute such as ``"logits"``), or a callable.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess | None = None, output: OutputSelector = None):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        z = x
        if self.preprocess is not None:
            mean, std = self.preprocess
            z = (x - _channel_tensor(mean, x)) / _channel_tensor(std, x)
        out = self.model(z)
        sel = self.output
        if callable(sel):
            out = sel(out)
        elif isinstance(sel, int):
            out = out[sel]
        elif isinstance(sel, str):
            out = out[sel] if isinstance(out, dict) else getattr(out, sel)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the model returned {type(out).__name__}, not a tensor; pass output=<index, key or callable> "
                "to say which part holds the scores"
            )
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"the model mapped {x.shape[0]} inputs to {out.shape[0]} outputs")
        return out


def check_scores(out: Tensor) -> None:
    """Classification outputs must be (N, K), K >= 2; warn when they look like probabilities."""
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(
            f"a classifier must map (N, ...) to scores (N, K) with K >= 2, got output shape {tuple(out.shape)}"
        )
    if not torch.isfinite(out).all():
        raise ValueError("the model's output contains NaN or inf")
    rows = out.sum(dim=1)
    if (out >= 0).all() and torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        warnings.warn(
            "the model's outputs look like probabilities (non-negative rows summing to 1); objectives take "
            "f as logits: gradients of a saturated softmax vanish and attacks weaken. Return logits if you can.",
            stacklevel=3,
        )
