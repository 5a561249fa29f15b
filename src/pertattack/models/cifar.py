"""CIFAR-10 classifiers of the paper's Fig. 3c-d: Network-in-Network and DenseNet-40.

Both take (N, 3, 32, 32) images and return logits (N, classes): no softmax inside.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validate import is_number

__all__ = ["NIN", "DenseNet40"]


def _mlpconv(c_in: int, widths: tuple[int, int, int], kernel: int, relu_last: bool = True) -> list[nn.Module]:
    """One mlpconv block: a kxk convolution then two 1x1 convolutions (the "micro network"), ReLU after each."""
    a, b, c = widths
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, a, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.Conv2d(a, b, 1),
        nn.ReLU(),
        nn.Conv2d(b, c, 1),
    ]
    if relu_last:
        layers.append(nn.ReLU())
    return layers


class NIN(nn.Module):
    """Network-in-Network for CIFAR-10 (Lin et al. 2014, the authors' Caffe model).

    Three mlpconv blocks, each a kxk convolution and two 1x1 convolutions:

    - 5x5 192, 1x1 160, 1x1 96; 3x3 max-pool stride 2; dropout;
    - 5x5 192, 1x1 192, 1x1 192; 3x3 average-pool stride 2; dropout;
    - 3x3 192, 1x1 192, 1x1 ``classes``; global average pooling (8x8 -> 1x1).

    Pooling uses ceil mode, as Caffe does (32 -> 16 -> 8). The one deviation from the Caffe model:
    no ReLU after the last 1x1 convolution, whose global average is the logit (a ReLU there clips
    every logit at 0 and zeroes the gradient of classes with a dead map, which attacks need).

    Args:
        classes: number of outputs.
        dropout: dropout probability after the first two blocks (0.5 in the paper).
        width: the number of channels of every hidden convolution, as a fraction of the paper's
            (1.0: 192 / 160 / 96; small values give the same architecture cheaply, e.g. for tests).

    Shape:
        (N, 3, 32, 32) -> (N, classes) logits.
    """

    def __init__(self, classes: int = 10, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__()
        if not is_number(width) or not 0 < width <= 16:
            raise ValueError(f"width must be a number in (0, 16], got {width!r}")

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.in_shape = (3, 32, 32)
        self.features = nn.Sequential(
            *_mlpconv(3, (w(192), w(160), w(96)), 5),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Dropout(dropout),
            *_mlpconv(w(96), (w(192), w(192), w(192)), 5),
            nn.AvgPool2d(3, stride=2, ceil_mode=True),
            nn.Dropout(dropout),
            *_mlpconv(w(192), (w(192), w(192), classes), 3, relu_last=False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` new maps, concatenated to its input."""

    def __init__(self, c_in: int, growth: int, dropout: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.drop(self.conv(torch.relu(self.bn(x))))], dim=1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (same width) then 2x2 average pooling."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.AvgPool2d(2),
        )


class DenseNet40(nn.Module):
    """DenseNet of depth 40 for CIFAR (Huang et al. 2017; the basic DenseNet, no bottleneck, no compression).

    A 3x3 convolution to 16 channels; three dense blocks of 12 BN-ReLU-Conv3x3 layers, each adding
    ``growth`` channels (16 -> 160 -> 304 -> 448 with growth 12) at 32x32, 16x16 and 8x8; between
    the blocks a transition BN-ReLU-Conv1x1-AvgPool2; at the end BN-ReLU, global average pooling and
    a linear layer. About 1.0M parameters with growth 12, as in the paper. Initialised as in the
    authors' code: He-normal convolutions, BN weight 1 and bias 0, linear bias 0.

    Args:
        growth: growth rate k.
        classes: number of outputs.
        dropout: dropout after each convolution (the paper uses 0.2 without data augmentation).

    Shape:
        (N, 3, 32, 32) -> (N, classes) logits.
    """

    depth = 40

    def __init__(self, growth: int = 12, classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_shape = (3, 32, 32)
        per_block = (self.depth - 4) // 3
        channels = 16
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(per_block):
                layers.append(_DenseLayer(channels, growth, dropout))
                channels += growth
            if block < 2:
                layers.append(_Transition(channels, dropout))
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
