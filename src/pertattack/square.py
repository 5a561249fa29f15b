"""The proposals of the Square attack (Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack:
a query-efficient black-box adversarial attack via random search"), batched over the inputs.

Square needs no gradient: it is a random search on the score of the model. Each step proposes a new
perturbation that differs from the current one on a window (a "square") of side s, queries the model
once, and keeps the proposal where the objective went down (:class:`pertattack.solvers.Square` does the
bookkeeping; the loop is the schedule's). This module builds the proposals:

* l-inf start: vertical stripes, every column of every channel at +eps or -eps (Sec. 3.1).
* l-inf step: the window is set to x + eps sigma_c, one random sign per channel (Alg. 2 of the paper).
* l2 start: a grid of tiles of side H // 5, each holding the l2 pattern (below) with a random sign per
  channel, the whole perturbation scaled to norm eps (Sec. 3.2).
* l2 step: the mass of the current perturbation on a second window is moved into the first window, where
  the pattern (random sign per channel) is added to the normalised old content; the result is scaled to
  norm eps (Alg. 3).

The l2 pattern of an a x b tile has two halves of opposite signs and equal l2 norms; each half is a stack
of concentric rectangles centred on it, the k-th (k = 0, 1, ...) weighted 1 / (k + 1)^2, so the value at a
point is sum_{k >= d} 1 / (k + 1)^2, d its Chebyshev distance to the centre; the tile has unit l2 norm.

The share of the input a window covers, p, starts at ``p_init`` and halves after fixed fractions of the
query budget (:func:`p_schedule`); the window side is s = round(sqrt(p H W)) (at least 1 for l-inf, at
least 3 and odd for l2), at most min(H, W).

Shapes: images (N, C, H, W); (N, C, L) is read as (N, C, 1, L) and (N, M) as (N, 1, 1, M): the windows
of such 1-D inputs are segments of length round(p L) (squares of side 1 would not shrink with p).
Every random number comes from :class:`pertattack.noise.Noise`, the same amount for every input at each
step (``rows``: the inputs given, x0[k] being input rows[k]; the counter advances as for all), so input
i's proposals depend on (seed, index[i]) only; window positions are per input (index arithmetic and
masks, no loop over the inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .constraints import Box, expand_like
from .noise import Noise

__all__ = ["p_schedule", "image_shape", "window_size", "l2_tile", "linf_start", "linf_step", "l2_start", "l2_step"]

# After these numbers of queries out of 10,000 (rescaled to the budget) p is halved (the paper's schedule).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12


def p_schedule(p_init: float, i: int, budget: int) -> float:
    """The share of the input covered by the window of proposal i (from 0) under a budget of queries:
    p_init halved once for every point of ``HALVINGS`` that i / budget * 10,000 has passed."""
    it = int(i / budget * 10000)
    return p_init / 2 ** sum(it > h for h in HALVINGS)


def image_shape(x: Tensor) -> tuple[int, int, int]:
    """(C, H, W) of the inputs as Square sees them: (N, C, H, W) as is, (N, C, L) as (N, C, 1, L),
    (N, M) as (N, 1, 1, M)."""
    if x.dim() == 4:
        c, h, w = x.shape[1:]
    elif x.dim() == 3:
        c, h, w = x.shape[1], 1, x.shape[2]
    elif x.dim() == 2:
        c, h, w = 1, 1, x.shape[1]
    else:
        raise ValueError(f"square attack: inputs must be (N, C, H, W) images, (N, C, L) or (N, M) signals, "
                         f"got shape {tuple(x.shape)}")
    return int(c), int(h), int(w)


def window_size(p: float, h: int, w: int, l2: bool) -> tuple[int, int]:
    """The (rows, columns) of a window covering about a share p of an H x W input: a square of side
    round(sqrt(p H W)) (l2: at least 3 and odd), at most min(H, W); a segment of round(p L) for 1-D inputs."""
    one_d = min(h, w) == 1
    side = p * max(h, w) if one_d else math.sqrt(p * h * w)
    s = max(int(round(side)), 3 if l2 else 1)
    if l2 and s % 2 == 0:
        s += 1
    if one_d:
        s = min(s, max(h, w))
        return (1, s) if h == 1 else (s, 1)
    s = min(s, h, w)
    return s, s


def _rings(a: int, b: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(a, b): sum_{k=d}^{K-1} 1 / (k + 1)^2, d the Chebyshev distance to the cell (a // 2, b // 2),
    K = max(a // 2, b // 2) + 1 (concentric rectangles around the centre, the k-th weighted 1 / (k+1)^2)."""
    rows = (torch.arange(a, device=device) - a // 2).abs()
    cols = (torch.arange(b, device=device) - b // 2).abs()
    d = torch.maximum(rows[:, None], cols[None, :])
    k_max = max(a // 2, b // 2) + 1
    w = 1.0 / torch.arange(1, k_max + 1, device=device, dtype=torch.float64) ** 2
    tail = w.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} w_k
    return tail[d].to(dtype)


def l2_tile(a: int, b: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """The l2 pattern of an a x b tile: rows [0, a // 2) positive rings, rows [a // 2, a) negative rings,
    both halves with the same l2 norm, the tile with norm 1."""
    device = torch.device(device)
    halves = [_rings(k, b, dtype, device) for k in (a // 2, a - a // 2)]
    top, bottom = (h / h.norm().clamp_min(_TINY) for h in halves)  # each half: unit norm (the same energy)
    t = torch.cat([top, -bottom], dim=0)
    return t / t.norm()


def _signs(u: Tensor) -> Tensor:
    """+1 / -1 from uniform numbers (P = 1/2 each)."""
    return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)


def _view(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], *image_shape(x))


def _window(u_row: Tensor, u_col: Tensor, sh: int, sw: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-input windows of sh x sw at random positions (from two uniform numbers per input in [0, 1)): the
    top row and left column (N,), and the row and column indices of the window's entries, shaped
    (N, 1, sh, 1) and (N, 1, 1, sw) to index (N, C, H, W) tensors together with the input and channel."""
    top = (u_row * (h - sh + 1)).long().clamp(0, h - sh)
    left = (u_col * (w - sw + 1)).long().clamp(0, w - sw)
    i_r = (top[:, None] + torch.arange(sh, device=top.device))[:, None, :, None]
    i_w = (left[:, None] + torch.arange(sw, device=top.device))[:, None, None, :]
    return top, left, i_r, i_w


def _batch_channel(n: int, c: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Input and channel indices, (N, 1, 1, 1) and (1, C, 1, 1)."""
    return torch.arange(n, device=device)[:, None, None, None], torch.arange(c, device=device)[None, :, None, None]


def _l2_pattern(sh: int, sw: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The window's pattern and its transpose (the pattern itself again for segments and other
    non-square windows, which cannot be transposed in place)."""
    if sh == sw:
        t = l2_tile(sh, sw, like.dtype, like.device)
        return t, t.T
    if min(sh, sw) == 1:  # a segment: the two halves along its length
        t = l2_tile(max(sh, sw), 1, like.dtype, like.device)
        t = t if sw == 1 else t.T
    else:
        t = l2_tile(sh, sw, like.dtype, like.device)
    return t, t


def _finish(x0: Tensor, delta: Tensor, box: Box) -> Tensor:
    return box.clip(x0 + delta.reshape(x0.shape))


def linf_start(x0: Tensor, eps: Tensor, noise: Noise, box: Box, rows: Tensor | None = None) -> Tensor:
    """x + eps sigma, sigma in {-1, +1} per input, channel and column (vertical stripes), in the box.
    Draws C W numbers per input."""
    c, h, w = image_shape(x0)
    sigma = _signs(noise.uniform(c * w, x0.dtype, rows)).reshape(-1, c, 1, w)
    return _finish(x0, expand_like(eps, sigma) * sigma.expand(-1, c, h, w), box)


def linf_step(x0: Tensor, cur: Tensor, eps: Tensor, p: float, noise: Noise, box: Box,
              rows: Tensor | None = None) -> Tensor:
    """The current point with one window per input set to x + eps sigma_c (a sign per channel), in the box.

    Where that would change nothing (the window already holds those values, as happens often once the
    windows are 1 x 1), the signs are flipped: the paper draws again until the window changes; flipping is
    the loop-free version of it. Only the windows are computed (gathered and written back by index), so a
    step costs one copy of the batch plus O(N C s^2). Draws C + 2 numbers per input."""
    c, h, w = image_shape(x0)
    sh, sw = window_size(p, h, w, l2=False)
    u = noise.uniform(c + 2, x0.dtype, rows)
    n = x0.shape[0]
    _, _, i_r, i_w = _window(u[:, 0], u[:, 1], sh, sw, h, w)
    i_n, i_c = _batch_channel(n, c, x0.device)  # with i_r, i_w: every window entry, (N, C, sh, sw)
    sigma = _signs(u[:, 2:]).reshape(n, c, 1, 1)
    x0v, curv = _view(x0), _view(cur)
    lo, hi = (b.expand(x0.shape[1:]).reshape(c, h, w) for b in box.bounds(x0))
    lo_w, hi_w = lo[i_c, i_r, i_w], hi[i_c, i_r, i_w]
    x0_w, cur_w = x0v[i_n, i_c, i_r, i_w], curv[i_n, i_c, i_r, i_w]
    e = expand_like(eps, x0_w)

    def window(sig: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(x0_w + e * sig, lo_w), hi_w)

    new_w = window(sigma)
    same = (new_w == cur_w).flatten(1).all(dim=1)
    if bool(same.any()):
        new_w = torch.where(expand_like(same, new_w), window(-sigma), new_w)
    new = curv.clone()
    new[i_n, i_c, i_r, i_w] = new_w
    return new.reshape(x0.shape)


def l2_start(x0: Tensor, eps: Tensor, noise: Noise, box: Box, rows: Tensor | None = None) -> Tensor:
    """A grid of tiles of side (H // 5, W // 5), centred, each holding the l2 pattern (transposed at random
    when square) times a random sign per channel; scaled to norm eps, then clipped to the box.
    Draws T (C + 1) numbers per input, T the number of tiles."""
    c, h, w = image_shape(x0)
    th, tw = max(h // 5, 1), max(w // 5, 1)
    nh, nw = h // th, w // tw
    n_tiles = nh * nw
    u = noise.uniform(n_tiles * (c + 1), x0.dtype, rows)
    sigma = _signs(u[:, : n_tiles * c]).reshape(-1, c, n_tiles)
    flip = u[:, n_tiles * c :] < 0.5  # (N, T)
    tile, tile_t = _l2_pattern(th, tw, x0)
    # every pixel's tile number and its coordinates inside the tile (-1 outside the grid)
    r = torch.arange(h, device=x0.device) - (h - nh * th) // 2
    q = torch.arange(w, device=x0.device) - (w - nw * tw) // 2
    in_r = (r >= 0) & (r < nh * th)
    in_c = (q >= 0) & (q < nw * tw)
    inside = in_r[:, None] & in_c[None, :]
    tid = ((r.clamp(0, nh * th - 1) // th)[:, None] * nw + (q.clamp(0, nw * tw - 1) // tw)[None, :]).flatten()
    lr, lc = r.clamp(0, nh * th - 1) % th, q.clamp(0, nw * tw - 1) % tw
    plain = tile[lr[:, None], lc[None, :]].flatten()
    swapped = tile_t[lr[:, None], lc[None, :]].flatten()
    pattern = torch.where(flip[:, tid], swapped, plain) * inside.flatten()  # (N, H W)
    delta = sigma[:, :, tid] * pattern[:, None, :]  # (N, C, H W)
    delta = delta * expand_like(eps / delta.flatten(1).norm(dim=1).clamp_min(_TINY), delta)
    return _finish(x0, delta, box)


def l2_step(x0: Tensor, cur: Tensor, eps: Tensor, p: float, noise: Noise, box: Box,
            rows: Tensor | None = None) -> Tensor:
    """Alg. 3 of the paper, per input: windows W1 and W2 at random positions; per channel, the content of
    W1 is replaced by pattern sigma_c + (old content of W1) / its norm, scaled so that the new window holds
    the energy that W1 and W2 held plus an even share of the unused budget, (eps^2 - norm(delta)^2) / C;
    W2 outside W1 is emptied; the whole perturbation is then scaled to norm eps and clipped to the box.
    The windows are gathered and written back by index. Draws C + 5 numbers per input."""
    c, h, w = image_shape(x0)
    sh, sw = window_size(p, h, w, l2=True)
    u = noise.uniform(c + 5, x0.dtype, rows)
    n = x0.shape[0]
    top1, left1, r1, c1 = _window(u[:, 0], u[:, 1], sh, sw, h, w)
    _, _, r2, c2 = _window(u[:, 2], u[:, 3], sh, sw, h, w)
    i_n, i_c = _batch_channel(n, c, x0.device)
    flip = u[:, 4] < 0.5
    sigma = _signs(u[:, 5:]).reshape(n, c, 1, 1)
    delta = _view(cur) - _view(x0)
    d1, d2 = delta[i_n, i_c, r1, c1], delta[i_n, i_c, r2, c2]  # (N, C, sh, sw)
    in_w1 = (r2 >= top1[:, None, None, None]) & (r2 < (top1 + sh)[:, None, None, None]) \
        & (c2 >= left1[:, None, None, None]) & (c2 < (left1 + sw)[:, None, None, None])

    def ch_sq(v: Tensor) -> Tensor:  # squared norm per input and channel, (N, C, 1, 1)
        return v.square().sum(dim=(2, 3), keepdim=True)

    tile, tile_t = _l2_pattern(sh, sw, x0)
    pattern = torch.where(flip[:, None, None, None], tile_t, tile)  # (N, 1, sh, sw)
    e = expand_like(eps, delta)
    total = expand_like(delta.flatten(1).square().sum(dim=1), delta)
    energy = (e.square() - total).clamp_min(0) / c + ch_sq(d1) + ch_sq(d2 * ~in_w1)
    new1 = pattern * sigma + d1 / (ch_sq(d1).sqrt() + _TINY)
    new1 = new1 / (ch_sq(new1).sqrt() + _TINY) * energy.sqrt()
    delta[i_n, i_c, r2, c2] = 0.0
    delta[i_n, i_c, r1, c1] = new1
    delta = delta * expand_like(eps / delta.flatten(1).norm(dim=1).clamp_min(_TINY), delta)
    return _finish(x0, delta, box)
