"""One front door for ``--model`` and ``--data`` (every command): :data:`MODEL_HELP` and :data:`DATA_HELP` say
what a spec may be. ``package.module:callable`` is imported from the Python path, the current folder searched too
(an object that is already a model or a data set is used as is; a callable's data ignores the split). Every
mistake is a :class:`UsageError` whose message names the option.

Models from the ecosystem (optional packages, imported only when such a spec is given):

- ``timm:NAME``: the architecture from ``timm.create_model(NAME)``; its weights from ``weights`` (a state dict
  file, loaded strictly) or else timm's pretrained ones (timm reads its own cache and fetches what is not there).
  The model is wrapped in :class:`pertattack.Model` with the ``(mean, std)`` of its ``pretrained_cfg``: it takes
  raw [0, 1] pixels, so eps is in pixel units.
- ``robustbench:NAME``: ``robustbench.utils.load_model(NAME, model_dir, dataset, threat_model)``, which reads
  ``model_dir/DATASET/THREAT_MODEL/NAME.pt`` and fetches the file only when it is not there. RobustBench's models
  normalise inside and take [0, 1] pixels.

Both packages import torchvision (timm 1.0 at ``import timm``, RobustBench through timm and its data loaders), so
both need the torchvision built for the installed torch.
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
MODEL_HELP = ("checkpoint of `pertattack train`, package.module:callable returning an nn.Module, timm:NAME (with "
              "--weights FILE, else timm's pretrained weights) or robustbench:NAME (with --threat-model, "
              "--model-dataset, --model-dir)")
#: RobustBench's names of its data sets (``BenchmarkDataset``) and threat models (``ThreatModel``).
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
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


def load_model_spec(spec: str, device: str | torch.device = "cpu", option: str = "--model", *,
                    weights: str | None = None, threat_model: str | None = None, dataset: str | None = None,
                    model_dir: str | None = None) -> nn.Module:
    """A model spec's model, in eval mode on ``device``; ``option`` names it in the errors (e.g. ``--surrogate``).

    ``weights`` goes with ``timm:NAME``; ``threat_model`` (default ``Linf``), ``dataset`` (default ``cifar10``) and
    ``model_dir`` (default ``./models``) go with ``robustbench:NAME``, named as RobustBench names them.
    """
    from .training import load_model

    kind, _, name = spec.partition(":")
    given = {"--weights": weights, "--threat-model": threat_model, "--model-dataset": dataset,
             "--model-dir": model_dir}
    takes = {"timm": ("--weights",), "robustbench": ("--threat-model", "--model-dataset", "--model-dir")}
    stray = [k for k, v in given.items() if v is not None and k not in takes.get(kind, ())]
    if stray:
        raise UsageError(f"{stray[0]} goes with " + ("timm:NAME" if stray[0] == "--weights" else "robustbench:NAME")
                         + f" only, not with {option} {spec}")
    if kind == "timm":
        model = _timm_model(name, weights, spec, option)
    elif kind == "robustbench":
        model = _robustbench_model(name, threat_model or "Linf", dataset or "cifar10", model_dir or "./models",
                                   spec, option)
    else:
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


def _optional(package: str, spec: str, option: str) -> Any:
    """Import an optional package of an ecosystem spec, or say what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise UsageError(f"{option} {spec}: needs the optional package {package.split('.')[0]} ({err}): "
                         f"pip install {package.split('.')[0]} torchvision (the torchvision built for your torch "
                         f"{torch.__version__})") from err


def _timm_model(name: str, weights: str | None, spec: str, option: str) -> nn.Module:
    """``timm.create_model(name)`` with ``weights`` (a state dict file) or timm's pretrained weights, taking raw
    pixels: the ``(mean, std)`` of its ``pretrained_cfg`` is applied inside the call (:class:`pertattack.Model`)."""
    from .modelcall import Model

    if not name:
        raise UsageError(f"{option} {spec!r}: expected timm:NAME (a timm model name such as resnet50)")
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: no such file")
    timm = _optional("timm", spec, option)
    try:
        net = timm.create_model(name, pretrained=weights is None)
    except (RuntimeError, ValueError, OSError) as err:  # an unknown name; pretrained weights neither cached nor got
        raise UsageError(f"{option} {spec}: timm could not build it ({err})") from err
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise UsageError(f"--weights {weights}: not a state dict of timm's {name} ({err})") from err
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return Model(net, preprocess=(list(cfg["mean"]), list(cfg["std"])))
    return net


def _robustbench_model(name: str, threat_model: str, dataset: str, model_dir: str, spec: str, option: str
                       ) -> nn.Module:
    """``robustbench.utils.load_model``: reads ``model_dir/dataset/threat_model/name.pt`` when it is there."""
    if not name:
        raise UsageError(f"{option} {spec!r}: expected robustbench:NAME (a RobustBench model name such as Standard)")
    if threat_model not in ROBUSTBENCH_THREATS:
        raise UsageError(f"--threat-model must be one of {', '.join(ROBUSTBENCH_THREATS)}, got {threat_model!r}")
    if dataset not in ROBUSTBENCH_DATASETS:
        raise UsageError(f"--model-dataset must be one of {', '.join(ROBUSTBENCH_DATASETS)}, got {dataset!r}")
    utils = _optional("robustbench.utils", spec, option)
    try:
        return utils.load_model(model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model)
    except KeyError as err:  # the model zoo's table has no such name
        raise UsageError(f"{option} {spec}: RobustBench has no model {name!r} for {dataset} / {threat_model}"
                         ) from err


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
