"""Autoencoders for the regression experiments (paper Section 3, Fig. 4): image in, image out in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["FCAutoencoder", "ConvAutoencoder"]


class FCAutoencoder(nn.Module):
    """Fully connected autoencoder M -> hidden -> code -> hidden -> M, sigmoid output.

    ReLU after each hidden layer; the code itself is linear (a ReLU there left 11 of 32 units dead).

    The default 784 -> 32 code is the paper's MNIST autoencoder with 96% compression
    (1 - 32/784 = 95.9%).

    Args:
        in_shape: shape of one input, e.g. (1, 28, 28).
        code: width of the bottleneck.
        hidden: width of the one hidden layer on each side.

    Shape:
        ``(N, *in_shape) -> (N, *in_shape)``, values in (0, 1).
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), code: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        m = math.prod(self.in_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(m, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(
            nn.Linear(code, hidden),
            nn.ReLU(),
            nn.Linear(hidden, m),
            nn.Sigmoid(),
            nn.Unflatten(1, self.in_shape),
        )

    def encode(self, x: Tensor) -> Tensor:
        """``(N, *in_shape) -> (N, code)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``(N, code) -> (N, *in_shape)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for images of any size divisible by 4 (the 3x96x96 scale benchmark).

    Two stride-2 convolutions down to (2 width, H/4, W/4), two stride-2 transposed convolutions back,
    ReLU inside, sigmoid output. Fully convolutional, so one instance serves every such H, W.

    Args:
        channels: image channels (input and output).
        width: channels of the first hidden layer (the second has twice as many).

    Shape:
        (N, channels, H, W) -> (N, channels, H, W), H and W divisible by 4, values in (0, 1).
    """

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f"ConvAutoencoder needs H and W divisible by 4, got {h}x{w}")
        return self.decoder(self.encoder(x))
