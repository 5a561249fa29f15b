"""One front door for ``--model`` and ``--data`` (every command): :data:`MODEL_HELP` and :data:`DATA_HELP` say
what a spec may be. ``package.module:callable`` is imported from the Python path, the current folder searched too
(an object that is already a model or a data set is used as is; a callable's data ignores the split). Every
mistake is a :class:`UsageError` whose message names the option.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["UsageError", "DataSource", "load_model_spec", "load_data_spec", "MODEL_HELP", "DATA_HELP"]

#: What ``--model`` takes (the CLI's help).
MODEL_HELP = "checkpoint of `pertattack train`, or package.module:callable returning an nn.Module"
#: What ``--data`` takes (the CLI's help).
DATA_HELP = ("mnist (any folder of MNIST-format IDX files), cifar10, digits, or package.module:callable returning "
             "a Dataset of (x, y) or a pair of tensors (x, y)")


class UsageError(ValueError):
    """A mistake in what the user asked for (a command line, a model or data spec): one line, exit status 2."""


def _import_callable(spec: str, option: str) -> Any:
    """The object named by ``package.module:attr.attr``; the current folder is on the path (as with ``python -m``)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise UsageError(f"{option} {spec!r}: expected package.module:callable")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as err:
        raise UsageError(f"{option} {spec!r}: cannot import {mod_name!r} ({err}); is it on PYTHONPATH?") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_model_spec(spec: str, device: str | torch.device = "cpu", option: str = "--model") -> nn.Module:
    """A model spec's model, in eval mode on ``device``; ``option`` names it in the errors (e.g. ``--surrogate``)."""
    from .training import load_model

    path = Path(spec).expanduser()
    if path.exists():
        try:
            return load_model(path, map_location=device)
        except ValueError as err:
            raise UsageError(f"{option} {err}") from err
    if ":" not in spec:
        raise UsageError(f"{option} {path}: no such checkpoint (no such file), and not of the form "
                         "package.module:callable")
    obj = _import_callable(spec, option)
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise UsageError(f"{option} {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model.to(device).eval()


class DataSource:
    """Indexable inputs ``(x, y)``: a pair of tensors or a ``torch.utils.data.Dataset``, cut to ``limit``.

    ``batch(indices)`` returns the stacked inputs (N, ...) and labels (N,) at those positions; ``xy()`` all of them.
    """

    def __init__(self, data: Any, spec: str, limit: int | None = None):
        self.spec = spec
        self.tensors: tuple[Tensor, Tensor] | None = None
        self.dataset: Any = None
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
            x, y = data
            if x.dim() == 0 or x.shape[0] != (y.shape[0] if y.dim() else -1):
                raise UsageError(f"--data {spec!r}: x {tuple(x.shape)} and y {tuple(y.shape)} do not hold one label "
                                 "per input")
            if y.dim() != 1:
                raise UsageError(f"--data {spec!r}: y must be (N,) class labels, got shape {tuple(y.shape)}")
            self._check(x, y, "")
            self.tensors = (x[:limit], y[:limit].long())
            n = x.shape[0]
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.dataset = data
            n = len(data)
        else:
            raise UsageError(f"--data {spec!r} gave a {type(data).__name__}: expected a Dataset of (x, y) "
                             "or a pair of tensors (x, y)")
        self.n = n if limit is None else min(n, limit)
        if self.n == 0:
            raise UsageError(f"--data {spec!r} is empty")

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        if self.tensors is not None:
            idx = torch.as_tensor(list(indices), dtype=torch.long)
            return self.tensors[0][idx], self.tensors[1][idx]
        xs, ys = [], []
        for i in indices:
            item = self.dataset[int(i)]
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise UsageError(f"--data {self.spec!r}: item {i} is not an (x, y) pair")
            x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
            self._check(x[None], y.reshape(-1), f" (item {i})")
            if y.numel() != 1 or (xs and x.shape != xs[0].shape):
                raise UsageError(f"--data {self.spec!r}: item {i} holds x {tuple(x.shape)} and y {tuple(y.shape)}, "
                                 f"other items x {tuple(xs[0].shape) if xs else '?'} and one label")
            xs.append(x)
            ys.append(int(y))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)

    def _check(self, x: Tensor, y: Tensor, where: str) -> None:
        """Inputs are floating point, labels integer class indices (what the attacks take; no silent cast)."""
        if not x.is_floating_point():
            raise UsageError(f"--data {self.spec!r}: inputs x{where} must be floating point (scaled to the box, "
                             f"e.g. x.float() / 255), got {x.dtype}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise UsageError(f"--data {self.spec!r}: labels y{where} must be integer class indices, got {y.dtype} "
                             "(a float label such as 3.5 is not cut to 3)")

    def xy(self) -> tuple[Tensor, Tensor]:
        """All ``len(self)`` inputs and labels as two tensors."""
        return self.tensors if self.tensors is not None else self.batch(range(self.n))


def load_data_spec(spec: str, root: str | None = None, split: str = "test", limit: int | None = None,
                   download: bool = False) -> DataSource:
    """A data spec's first ``limit`` inputs of ``split`` (mnist / cifar10: from ``root``, fetched with ``download``)."""
    from .data import load_cifar10, load_digits, load_mnist

    if split not in ("train", "test"):
        raise UsageError(f"--split must be train or test, got {split!r}")
    if spec == "mnist":
        return DataSource(load_mnist(root, split, download=download, limit=limit), spec, limit)
    if spec == "cifar10":
        return DataSource(load_cifar10(root, split, download=download, limit=limit), spec, limit)
    if spec == "digits":
        return DataSource(load_digits(split), spec, limit)
    if ":" not in spec:
        raise UsageError(f"argument --data: invalid choice: {spec!r} (choose from mnist, cifar10, digits, or "
                         "package.module:callable)")
    obj = _import_callable(spec, "--data")
    is_data = not isinstance(obj, type) and hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
    data = obj if is_data or not callable(obj) else obj()
    return DataSource(data, spec, limit)
