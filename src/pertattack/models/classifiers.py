"""Classifiers of the paper's experiments. Every one returns logits (N, classes): no softmax inside."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["FCNN", "LeNet5", "SmallCNN"]


class FCNN(nn.Module):
    """Fully connected ReLU network; the default is the paper's MNIST net 784-150-100-10.

    Args:
        in_shape: shape of one input, e.g. (1, 28, 28); it is flattened.
        hidden: widths of the hidden layers, each followed by a ReLU.
        classes: number of outputs.

    Shape:
        ``(N, *in_shape) -> (N, classes)`` logits.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (150, 100),
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        widths = [math.prod(self.in_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs: conv 6@5x5 (pad 2), max-pool, conv 16@5x5, max-pool, fc 120, 84, classes.

    ReLU activations and 2x2 max-pooling (the modern variant the paper's MNIST experiments use).

    Shape:
        (N, in_channels, 28, 28) -> (N, classes) logits.
    """

    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.in_shape = (in_channels, 28, 28)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small conv net for the 1x8x8 scikit-learn digits (trains in seconds on a CPU; the demo's model).

    conv 16@3x3, conv 32@3x3 (both pad 1, ReLU), 2x2 max-pool, fc 64, classes.

    Shape:
        (N, in_channels, 8, 8) -> (N, classes) logits.
    """

    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.in_shape = (in_channels, 8, 8)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
