"""ResNet-18 for 32x32 RGB inputs (He et al. 2016, the CIFAR variant of the ImageNet network).

The ImageNet stem (7x7 stride-2 convolution and max-pooling) would shrink a 32x32 image to 8x8 before
the first block; the CIFAR variant starts with a 3x3 stride-1 convolution instead, so the four stages
work at 32, 16, 8 and 4 pixels. Eight basic blocks (two 3x3 convolutions with batch normalisation
each), global average pooling, one linear layer: 11.2 million weights for 10 classes.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .._validate import positive_int

__all__ = ["ResNet18"]


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (a 1x1 strided convolution + BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for (N, in_channels, 32, 32) images; returns logits (N, classes).

    Args:
        classes: number of outputs.
        in_channels: input channels (3 for RGB).
        width: channels of the first stage (64 in He et al.; the stages have width, 2, 4 and 8 times it).

    Shape:
        (N, in_channels, H, W) -> (N, classes); built for H = W = 32 (any size >= 8 runs: the pooling is global).
    """

    def __init__(self, classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        positive_int("width", width)
        self.in_shape = (in_channels, 32, 32)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        blocks: list[nn.Module] = []
        c = width
        for stage, mult in enumerate((1, 2, 4, 8)):
            for b in range(2):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(_BasicBlock(c, width * mult, stride))
                c = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
