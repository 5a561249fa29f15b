"""Models of the paper's experiments and a name registry.

Classifiers return logits; autoencoders return images in (0, 1). ``build_model("lenet5")`` builds
by name, as the command line and :func:`pertattack.training.load_model` do.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from .autoencoders import ConvAutoencoder, FCAutoencoder
from .cifar import NIN, DenseNet40
from .classifiers import FCNN, LeNet5, SmallCNN
from .colorization import Colorization
from .resnet import ResNet18

__all__ = [
    "FCNN",
    "LeNet5",
    "SmallCNN",
    "NIN",
    "DenseNet40",
    "ResNet18",
    "FCAutoencoder",
    "ConvAutoencoder",
    "Colorization",
    "MODELS",
    "build_model",
]

#: name -> model class; the names the command line and saved checkpoints use.
MODELS: dict[str, type[nn.Module]] = {
    "fcnn": FCNN,
    "lenet5": LeNet5,
    "smallcnn": SmallCNN,
    "nin": NIN,
    "densenet40": DenseNet40,
    "resnet18": ResNet18,
    "fc-ae": FCAutoencoder,
    "conv-ae": ConvAutoencoder,
    "colorization": Colorization,
}


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a key of :data:`MODELS` (case-insensitive; ``_`` is read as ``-``).
        seed: if given, the initial weights are drawn after ``torch.manual_seed(seed)`` inside
            ``torch.random.fork_rng()``: the same seed gives the same weights and the caller's
            global RNG state is untouched. ``None`` draws from the global RNG as usual.
        **kwargs: passed to the model's constructor.

    Raises:
        ValueError: unknown name; the message lists close matches and all names.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in MODELS:
        close = difflib.get_close_matches(key, list(MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(MODELS))}")
    cls = MODELS[key]
    if seed is None:
        return cls(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)
