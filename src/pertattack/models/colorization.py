"""The colorization network of the paper's Figures 2(c) and 4(d), after Baldassarre, Morin and Rodes-Guirao
(2017, "Deep Koalarization": encoder, optional fusion with a global image embedding, decoder).

Input: the grey image, luma Y in [0, 1], shape (N, 1, H, W) (H, W divisible by 8). Output: the colour image,
RGB (N, 3, H, W). The network predicts the two chroma channels (Cb, Cr) with a tanh head (scaled to
+-0.5) at 1/2 resolution, upsampled to full size, and the RGB image is rebuilt from the given Y and the
predicted chroma with the linear YCbCr -> RGB map. Baldassarre et al. predict a*b* in CIE Lab; YCbCr is used
here because it is linear, so the whole map gray -> colour stays cheap and smooth to differentiate (the
attacks need J v and J^T u of it). RGB values are not clipped (clipping would zero the gradient).

Layers (``width`` w = 64 gives the published channel counts):

    encoder  conv w s2, conv 2w, conv 2w s2, conv 4w, conv 4w s2, conv 8w, conv 8w, conv 4w (3x3, ReLU)
    fusion   (optional) the embedding e (N, D) of the image, replicated over the H/8 x W/8 grid,
             concatenated to the encoder output, then 1x1 conv to 4w
    decoder  conv 2w, upsample x2, conv w, conv w, upsample x2, conv w/2, conv 2 (tanh), upsample x2

**No pretrained weights can be fetched here.** The paper's fusion branch is Inception-ResNet-v2 trained on
ImageNet; without its weights it is off by default (``fusion=False``). ``fusion=True`` builds a small
convolutional stand-in embedder (trained with the rest), or pass any module ``embedder`` mapping the RGB
replica of the grey image (N, 3, H, W) to (N, D) (e.g. a pretrained Inception-ResNet-v2 the user loaded,
with ``embed_dim`` D).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Colorization", "ycbcr_to_rgb"]


def ycbcr_to_rgb(y: Tensor, cb: Tensor, cr: Tensor) -> Tensor:
    """RGB (N, 3, H, W) from luma y and chroma cb, cr (each (N, 1, H, W), chroma centred on 0), ITU-R BT.601."""
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.cat([r, g, b], dim=1)


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]


class _StandInEmbedder(nn.Module):
    """A small CNN embedding (N, 3, H, W) -> (N, D): stands in for Inception-ResNet-v2 (no weights here)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*_conv(3, width, 2), *_conv(width, 2 * width, 2), *_conv(2 * width, 2 * width, 2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Colorization(nn.Module):
    """Grey (N, 1, H, W) in [0, 1] -> RGB (N, 3, H, W); see the module docstring.

    Args:
        width: channel unit w (64: the published sizes; the experiments use 16 on CPU).
        fusion: fuse a global embedding of the image (off by default: no Inception-ResNet-v2 weights here).
        embedder: the embedding module to fuse (implies ``fusion``); default a small stand-in CNN.
        embed_dim: D, the embedding size (1000 for Inception-ResNet-v2's logits, as in the paper).
    """

    def __init__(self, width: int = 64, fusion: bool = False, embedder: nn.Module | None = None,
                 embed_dim: int = 1000) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"width must be >= 2, got {width}")
        w = width
        self.encoder = nn.Sequential(*_conv(1, w, 2), *_conv(w, 2 * w), *_conv(2 * w, 2 * w, 2), *_conv(2 * w, 4 * w),
                                     *_conv(4 * w, 4 * w, 2), *_conv(4 * w, 8 * w), *_conv(8 * w, 8 * w),
                                     *_conv(8 * w, 4 * w))
        self.fusion = fusion or embedder is not None
        if self.fusion:
            self.embedder = embedder if embedder is not None else _StandInEmbedder(embed_dim, w)
            self.fuse = nn.Sequential(nn.Conv2d(4 * w + embed_dim, 4 * w, 1), nn.ReLU())
        self.decoder = nn.Sequential(*_conv(4 * w, 2 * w), nn.Upsample(scale_factor=2), *_conv(2 * w, w),
                                     *_conv(w, w), nn.Upsample(scale_factor=2), *_conv(w, max(1, w // 2)),
                                     nn.Conv2d(max(1, w // 2), 2, 3, padding=1), nn.Tanh())

    def forward(self, gray: Tensor) -> Tensor:
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"Colorization takes grey images (N, 1, H, W), got {tuple(gray.shape)}")
        if gray.shape[2] % 8 or gray.shape[3] % 8:
            raise ValueError(f"height and width must be multiples of 8, got {tuple(gray.shape[2:])}")
        h = self.encoder(gray)
        if self.fusion:
            e = self.embedder(gray.expand(-1, 3, -1, -1))
            h = self.fuse(torch.cat([h, e[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])], dim=1))
        chroma = 0.5 * F.interpolate(self.decoder(h), scale_factor=2, mode="nearest")
        return ycbcr_to_rgb(gray, chroma[:, :1], chroma[:, 1:])
