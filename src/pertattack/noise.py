"""Per-input random numbers: what input i draws depends on (seed, index[i]) and nothing else.

Random starts (PGD), dithering of the linearisation point (Algorithm 1), the random baselines and
Square's proposals all draw from a :class:`Noise`. Row i of every draw is a counter-based hash
(splitmix64) of ``(seed, index[i], counter)``, computed with integer tensor arithmetic on the
inputs' device, so an input gets the same numbers

* in any batch, next to any other inputs, at any position;
* under any ``batch_size`` chunking, on any rank of a sharded evaluation (``index`` is the
  input's position in the data set);
* at every step of a multi-draw schedule, as long as the sequence of draws (their sizes) does not
  depend on the other inputs -- the schedule draws for the whole batch, so it does not.

No global RNG is reseeded; an unseeded attack takes its seed from ``torch``'s global generator, so
``torch.manual_seed`` still makes it reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Noise"]

_M64 = (1 << 64) - 1


def _s64(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_C1 = _s64(0xBF58476D1CE4E5B9)
_C2 = _s64(0x94D049BB133111EB)


def _lsr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic on signed integers)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    """splitmix64's finaliser, on int64 tensors (multiplication wraps modulo 2^64)."""
    z = (z ^ _lsr(z, 30)) * _C1
    z = (z ^ _lsr(z, 27)) * _C2
    return z ^ _lsr(z, 31)


def _mantissa_bits(dtype: torch.dtype) -> int:
    return {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}.get(dtype, 24)


@dataclass
class Noise:
    """A stream of per-input uniform numbers in [0, 1).

    Args:
        seed: the attack's seed.
        index: (N,) int64, each input's identity (its position in the data set; 0..N-1 by default).
        counter: how many numbers each row has drawn so far (advanced by every draw, for all rows).
    """

    seed: int
    index: Tensor
    counter: int = 0
    _keys: Tensor | None = field(default=None, repr=False)

    @classmethod
    def create(cls, seed: int | None, n: int, device: torch.device | str, index: Tensor | None = None) -> Noise:
        """A stream for n inputs; ``seed=None`` draws one from torch's global generator."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if index is None:
            index = torch.arange(n, device=device)
        index = torch.as_tensor(index, device=device)
        if index.shape != (n,) or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"index must be an integer tensor of shape ({n},), got {index.dtype} {tuple(index.shape)}")
        return cls(int(seed), index.long())

    @property
    def keys(self) -> Tensor:
        if self._keys is None:
            self._keys = _mix(_mix(torch.full_like(self.index, _s64(self.seed))) + self.index * _GOLDEN)
        return self._keys

    def uniform(self, k: int, dtype: torch.dtype = torch.float32, rows: Tensor | None = None) -> Tensor:
        """(N, k) uniform numbers in [0, 1) (only the rows ``rows`` when given); advances the counter by k."""
        keys = self.keys if rows is None else self.keys[rows]
        counter = torch.arange(self.counter + 1, self.counter + k + 1, device=keys.device, dtype=torch.int64)
        self.counter += k
        bits = _mantissa_bits(dtype)
        z = _lsr(_mix(keys[:, None] + counter[None, :] * _GOLDEN), 64 - bits)
        return (z.to(torch.float64) * 2.0**-bits).to(dtype)

    def uniform_like(self, like: Tensor, k: int = 1, extra: int = 0, rows: Tensor | None = None) -> Tensor:
        """(N, k M + extra) uniform numbers, M the size of one input of ``like``."""
        return self.uniform(k * like[0].numel() + extra, like.dtype, rows)

    def gaussian_like(self, like: Tensor, rows: Tensor | None = None) -> Tensor:
        """Standard Gaussian numbers shaped like ``like`` (Box-Muller on two uniform blocks)."""
        m = like[0].numel()
        u = self.uniform(2 * m, torch.float64 if like.dtype == torch.float64 else torch.float32, rows)
        return box_muller(u[:, :m], u[:, m:]).to(like.dtype).reshape(like.shape)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """A torch generator seeded from this stream (for code that needs one, e.g. a shared start vector)."""
        return torch.Generator(device=device).manual_seed(self.seed)


def box_muller(a: Tensor, b: Tensor) -> Tensor:
    """Standard normal numbers from two uniform tensors in [0, 1)."""
    return torch.sqrt(-2.0 * torch.log1p(-a)) * torch.cos(2 * math.pi * b)
