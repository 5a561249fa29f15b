"""Quadratic solvers for regression attacks (paper Sections 3.1 and 4.1, eq. 13-15 and 19-21).

Each solver approximately maximises norm_2(J_i eta_i)^2 over a constraint set (eq. 13, y ~ f(x)),
for every input i of a batch at once, with J_i the Jacobian of ``f`` at ``x_i`` used matrix-free
(:mod:`pertattack.operators`): J is never stored. Loops over columns or subsets exist (the greedy of
eq. 20 is sequential) but every step is vectorised over the batch: there is no per-input Python loop.

The quadratic objective cannot tell eta from -eta. Every solver resolves the sign on the model itself
(:func:`resolve_sign`): it keeps the sign whose f(x +- eta) is farther from f(x) in l2.

Budgets hold exactly, before any box clipping (which is the caller's business): norm_2(eta) = eps
(l2), a single coordinate of magnitude eps (l1), all coordinates +-eps (linf), all coordinates of
exactly one subset +-eps and zero elsewhere (subset).

``f`` is a batched map (N, ...) -> (N, ...), each output row depending only on its own input (eval
mode), e.g. ``lambda z: model(z)``. ``eps`` is a scalar or a per-input tensor (N,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .constraints import Box, Partition, as_batch_eps, expand_like
from .operators import LANCZOS_BASIS, Linearization, Map, column_norms, top_singular

__all__ = ["quadratic_l2", "quadratic_l2_truth", "quadratic_l1", "quadratic_linf", "quadratic_subset", "resolve_sign"]


def _nan_where_nonfinite(eta: Tensor, figures: Tensor) -> Tensor:
    """eta with NaN rows where the Jacobian figures of that input (column norms, Gram blocks) are NaN or inf:
    a model that is NaN near x gives no silent choice of coordinates; the attack reports those inputs."""
    bad = ~torch.isfinite(figures.reshape(figures.shape[0], -1)).all(dim=1)
    return torch.where(expand_like(bad, eta), torch.full_like(eta, float("nan")), eta)


def resolve_sign(
    f: Map, x: Tensor, eta: Tensor, *, out: Tensor | None = None, box: Box | None = None
) -> Tensor:
    """Resolve the +-eta ambiguity: keep, per input, the sign with the larger norm_2(f(x +- eta) - f(x)).

    Ties, up to rounding (64 ulp of norm_2(f(x)) + both distortions), keep +eta: a linear map keeps the
    solver's own sign. With ``box``, the candidates x +- eta are clipped to it before evaluation (the
    returned eta itself is not clipped). Cost: two forward passes (three without ``out`` = f(x)).
    """
    x = x.detach()
    clip = box.clip if box is not None else (lambda z: z)
    with torch.no_grad():
        y0 = f(x) if out is None else out
        dp = (f(clip(x + eta)) - y0).reshape(x.shape[0], -1).norm(dim=1)
        dm = (f(clip(x - eta)) - y0).reshape(x.shape[0], -1).norm(dim=1)
        # a tie (a model symmetric to first order around x, e.g. linear) up to rounding keeps +eta
        scale = y0.reshape(x.shape[0], -1).norm(dim=1) + dp + dm
        tie = (dm - dp).abs() <= 64 * torch.finfo(dp.dtype).eps * scale
    sign = torch.where((dm > dp) & ~tie, -1.0, 1.0).to(eta.dtype)
    return eta * expand_like(sign, eta)


def quadratic_l2(
    f: Map,
    x: Tensor,
    eps: float | Tensor,
    *,
    iters: int = 100,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
    method: str = "lanczos",
    box: Box | None = None,
    face_iters: int = 30,
    basis: int | None = LANCZOS_BASIS,
) -> tuple[Tensor, Tensor]:
    """quadratic-l2, eq. 14: eta = +-eps v_max, v_max the top right singular vector of J.

    v_max by matrix-free thick-restart Lanczos on J^T J (or power iteration, ``method="power"``), see
    :func:`pertattack.operators.top_singular` for ``iters``, ``tol``, ``generator``, ``method`` and ``basis``.

    Cost: <= ``iters`` (jvp + vjp) on the batch, plus one jvp and three forward passes (sign choice);
    memory O(N (M + K)) plus the activations of one forward and one backward pass; Lanczos adds
    (basis + 1) N M floats for its basis. No M x M or K x M allocation. Measured on one CPU thread with a
    small conv autoencoder: see benchmarks/bench_quadratic.py (3x1080x1920 fits in well under 2 GB).

    Inputs on a face of ``box`` (x_i = lo_i or hi_i, e.g. the black background of MNIST) would
    lose the part of +-eps v_max that points out of the box to clipping. There, with ``face_iters``
    > 0, each sign s of v_max seeds a projected power iteration on the cone of feasible directions
    (u_i >= 0 at lo, u_i <= 0 at hi): u <- P(J^T J u) / norm, ``face_iters`` times (a heuristic
    for eq. 13 on ball-and-box, which is a non-convex cone problem), and the candidate that moves
    f(x) more is kept. Cost: 2 ``face_iters`` more (jvp + vjp), only for batches with an input on a face.

    Returns:
        eta shaped like x with norm_2(eta_i) = eps_i, and sigma (N,), the top singular value of J_i,
        i.e. the operator norm norm(J_i)_{2->2} (first-order output change per unit input l2 norm),
        of the unconstrained problem.
    """
    lin = Linearization(f, x)
    e = as_batch_eps(eps, lin.n, lin.x)
    sigma, v = top_singular(lin, iters=iters, tol=tol, generator=generator, method=method, basis=basis)
    eta = v * expand_like(e, v)
    if box is not None and face_iters > 0:
        lo, hi = box.bounds(lin.x)
        at_lo, at_hi = lin.x <= lo, lin.x >= hi
        if bool((at_lo | at_hi).any()):
            return _on_faces(f, lin, v, e, at_lo, at_hi, face_iters, box), sigma
    return resolve_sign(f, lin.x, eta, out=lin.out, box=box), sigma


def _on_faces(f: Map, lin: Linearization, v: Tensor, e: Tensor, at_lo: Tensor, at_hi: Tensor, iters: int,
              box: Box) -> Tensor:
    """Projected power iteration from +v and -v on the cone of directions that stay in the box."""

    def proj(u: Tensor) -> Tensor:
        return torch.where(at_lo, u.clamp_min(0), torch.where(at_hi, u.clamp_max(0), u))

    def unit(u: Tensor) -> Tensor:
        return u / expand_like(u.reshape(u.shape[0], -1).norm(dim=1).clamp_min(1e-30), u)

    best_eta, best_d = None, None
    for sign in (1.0, -1.0):
        u = unit(proj(sign * v))
        for _ in range(iters):
            u = unit(proj(lin.jtj(u)))
        eta = u * expand_like(e, u)
        with torch.no_grad():
            d = (f(box.clip(lin.x + eta)) - lin.out).reshape(lin.n, -1).norm(dim=1)
        if best_eta is None:
            best_eta, best_d = eta, d
        else:
            keep = best_d >= d
            best_eta = torch.where(expand_like(keep, eta), best_eta, eta)
            best_d = torch.where(keep, best_d, d)
    assert best_eta is not None
    return best_eta


def quadratic_l1(
    f: Map, x: Tensor, eps: float | Tensor, *, chunk: int = 64, box: Box | None = None
) -> Tensor:
    """quadratic-l1, eq. 15: eta = +-eps e_k*, k* = argmax_k norm_2(J_k): a single-coordinate attack.

    Cost: the column norms, min(K vjps, M jvps) on the batch in chunks of ``chunk`` tangents
    (:func:`pertattack.operators.column_norms`), plus three forward passes. Ties: the first column.
    """
    lin = Linearization(f, x)
    e = as_batch_eps(eps, lin.n, lin.x)
    norms = column_norms(lin, chunk=chunk)
    k = norms.argmax(dim=1, keepdim=True)
    eta = lin.x.new_zeros(lin.n, lin.m).scatter_(1, k, e.unsqueeze(1)).reshape(lin.x.shape)
    return _nan_where_nonfinite(resolve_sign(f, lin.x, eta, out=lin.out, box=box), norms)


def quadratic_linf(
    f: Map, x: Tensor, eps: float | Tensor, *, chunk: int = 64, box: Box | None = None
) -> Tensor:
    """quadratic-linf: the greedy of eq. 20 (S = 1) for max norm_2(J eta)^2 s.t. norm_inf(eta) <= eps.

    Columns are visited by decreasing norm_2(J_k) (stable order on ties); rho_1 = +1 and
    rho_z = sign(s_{z-1}^T J_z) with the running K-vector s_{z-1} = sum_{j<z} rho_j J_j (sign(0) := +1);
    eta = eps rho. The greedy has no optimality guarantee (the problem is NP-hard, norm(J)_{inf->2}).

    Cost: min(K, M) vjps/jvps for the column norms (:func:`pertattack.operators.column_norms`), then M
    jvps, one per column, ``chunk`` columns per vmapped call (each input has its own column order: one-hot
    tangents at different coordinates), all on the whole batch; plus M sequential steps of O(N K) flops
    for the running dot products s^T J_z. Memory O(chunk N (M + K)) plus the activations of ``chunk``
    batched jvps; never K x M. Loops over columns only; every step is vectorised over the batch.
    """
    lin = Linearization(f, x)
    e = as_batch_eps(eps, lin.n, lin.x)
    norms = column_norms(lin, chunk=chunk)
    order = torch.sort(norms, dim=1, descending=True, stable=True).indices
    rho, _ = _greedy_running(lin, order, chunk)
    eta = lin.x.new_zeros(lin.n, lin.m).scatter_(1, order, rho) * e.unsqueeze(1)
    return _nan_where_nonfinite(resolve_sign(f, lin.x, eta.reshape(lin.x.shape), out=lin.out, box=box), norms)


def quadratic_subset(
    f: Map,
    x: Tensor,
    eps: float | Tensor,
    partition: Partition | None = None,
    *,
    chunk: int = 64,
    gram: bool | None = None,
    box: Box | None = None,
) -> Tensor:
    """quadratic-pixel (single subset), eq. 19-21: the greedy of eq. 20 inside every subset S_s, then
    the subset s* with the largest norm_2(J eta_s)^2; eta = eps rho on S_s* and 0 elsewhere.

    Two exact implementations of the same greedy (same order, same signs, sign(0) := +1):

    - Gram (default when the largest subset has Z <= ``chunk`` coordinates, e.g. pixels, Z = C):
      G_s = J_{S_s}^T J_{S_s} (Z x Z) for all subsets, built from K rows (vjps) if K <= M or M columns
      (jvps) otherwise; then the greedy runs on all (input, subset) pairs at once: rho_z =
      sign(sum_{j<z} rho_j G_{jz}) and norm_2(J eta_s)^2 = eps^2 rho^T G_s rho. Cost min(K vjps, M jvps)
      on the batch, in chunks, memory O(N M Z) for the Gram blocks; Z Python steps.
    - Running (larger subsets, or ``gram=False``): per subset, the column-by-column greedy of
      :func:`quadratic_linf` restricted to it. Cost column norms plus M jvps; memory O(chunk N (M + K)).

    Subsets of size 1 reduce to the column norms (eq. 15 with an linf budget).

    Args:
        partition: a :class:`pertattack.constraints.Partition`; default ``Partition("pixel")`` (a pixel
            is its C channels for (N, C, H, W) inputs).
        chunk: tangents per vmapped jvp/vjp call.
        gram: force the Gram (True) or running (False) implementation; None chooses as above.
    """
    partition = Partition() if partition is None else partition
    lin = Linearization(f, x)
    e = as_batch_eps(eps, lin.n, lin.x)
    n, m = lin.n, lin.m
    sid = partition.index(lin.x)
    table, valid = _subset_table(sid)  # (S, Z) coordinate ids, padded; (S, Z) bool
    z = table.shape[1]
    use_gram = (z <= chunk) if gram is None else gram
    if z == 1:
        norms = figures = column_norms(lin, chunk=chunk)
        sq = lin.x.new_zeros(n, table.shape[0]).index_add_(1, sid, norms.square())
        best = sq.argmax(dim=1)
        rho = lin.x.new_ones(n, 1)
    elif use_gram:
        g = figures = _subset_grams(lin, table, valid, chunk)  # (N, S, Z, Z)
        rho_all, val = _greedy_gram(g)
        rho_all = rho_all * valid.to(rho_all.dtype)
        best = val.argmax(dim=1)
        rho = rho_all[torch.arange(n, device=best.device), best]
    else:
        norms = figures = column_norms(lin, chunk=chunk)
        best_val = lin.x.new_full((n,), -1.0)
        best = torch.zeros(n, dtype=torch.long, device=lin.x.device)
        rho = lin.x.new_zeros(n, z)
        for s in range(table.shape[0]):
            coords = table[s, valid[s]]
            sub = norms[:, coords]
            pos = torch.sort(sub, dim=1, descending=True, stable=True).indices
            r_sorted, val = _greedy_running(lin, coords[pos], chunk)
            r = torch.zeros_like(r_sorted).scatter_(1, pos, r_sorted)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best = torch.where(better, torch.full_like(best, s), best)
            padded = lin.x.new_zeros(n, z)
            padded[:, : r.shape[1]] = r
            rho = torch.where(better.unsqueeze(1), padded, rho)
    coords = table[best]  # (N, Z)
    eta = lin.x.new_zeros(n, m).scatter_(1, coords, rho * valid[best].to(rho.dtype))
    eta = (eta * e.unsqueeze(1)).reshape(lin.x.shape)
    return _nan_where_nonfinite(resolve_sign(f, lin.x, eta, out=lin.out, box=box), figures)


def _greedy_running(lin: Linearization, order: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Eq. 20 along ``order`` (N, Z) coordinate ids per input, keeping s = sum_j rho_j J_j (N, K).

    Returns rho (N, Z) in the order given and norm_2(s)^2 (N,). Columns come ``chunk`` at a time from one
    vmapped jvp; the sign updates are sequential over columns, vectorised over the batch.
    """
    n, zlen = order.shape
    s = lin.x.new_zeros(n, lin.k)
    rho = lin.x.new_empty(n, zlen)
    for a in range(0, zlen, chunk):
        b = min(a + chunk, zlen)
        cols = lin.columns(order[:, a:b].T.contiguous())  # (B, N, K)
        for j in range(b - a):
            c = cols[j]
            r = torch.where((s * c).sum(dim=1) >= 0, 1.0, -1.0).to(s.dtype)
            s = s + r.unsqueeze(1) * c
            rho[:, a + j] = r
    return rho, s.square().sum(dim=1)


def _greedy_gram(g: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 20 on Gram matrices ``g`` (..., Z, Z): order by the diagonal (squared column norms)
    descending, rho_1 = +1, rho_z = sign(sum_{j<z} rho_j g_{jz}) (sign(0) := +1).

    Returns rho (..., Z) in the original coordinate order and rho^T g rho (...).
    """
    zlen = g.shape[-1]
    order = torch.sort(torch.diagonal(g, dim1=-2, dim2=-1), dim=-1, descending=True, stable=True).indices
    gs = torch.take_along_dim(g, order.unsqueeze(-1), dim=-2)
    gs = torch.take_along_dim(gs, order.unsqueeze(-2), dim=-1)
    rho = torch.ones(order.shape, dtype=g.dtype, device=g.device)
    for zz in range(1, zlen):
        c = (rho[..., :zz] * gs[..., :zz, zz]).sum(dim=-1)
        rho[..., zz] = torch.where(c >= 0, 1.0, -1.0).to(g.dtype)
    val = torch.einsum("...i,...ij,...j->...", rho, gs, rho)
    out = torch.zeros_like(rho).scatter_(-1, order, rho)
    return out, val


def _subset_table(sid: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates of each subset: ``sid`` (M,) subset ids -> table (S, Z) (padded with 0), valid (S, Z)."""
    m = sid.numel()
    s = int(sid.max()) + 1
    counts = torch.bincount(sid, minlength=s)
    if bool((counts == 0).any()):
        raise ValueError("partition has empty subsets: ids must be 0..S-1 with every id used")
    z = int(counts.max())
    coords = torch.sort(sid, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(m, device=sid.device) - starts[sid[coords]]
    table = torch.zeros(s, z, dtype=torch.long, device=sid.device)
    valid = torch.zeros(s, z, dtype=torch.bool, device=sid.device)
    table[sid[coords], pos] = coords
    valid[sid[coords], pos] = True
    return table, valid


def _subset_grams(lin: Linearization, table: Tensor, valid: Tensor, chunk: int) -> Tensor:
    """G_s = J_{S_s}^T J_{S_s} for every subset and input: (N, S, Z, Z), zero on padding.

    From rows (K vjps) when K <= M, else from columns (M jvps), ``chunk`` tangents per vmapped call.
    """
    n, m, k = lin.n, lin.m, lin.k
    dev = lin.x.device
    s, z = table.shape
    g = lin.x.new_zeros(n, s, z, z)
    if k <= m:
        for a in range(0, k, chunk):
            idx = torch.arange(a, min(a + chunk, k), device=dev).unsqueeze(1).expand(-1, n)
            rows = lin.rows(idx)[:, :, table] * valid.to(lin.x.dtype)  # (B, N, S, Z)
            g += torch.einsum("bnsz,bnsw->nszw", rows, rows)
        return g
    per = max(1, chunk // z)  # subsets per call
    for a in range(0, s, per):
        b = min(a + per, s)
        vb = valid[a:b]
        idx = table[a:b][vb].unsqueeze(1).expand(-1, n)  # only real coordinates, not the padding
        cols = lin.x.new_zeros(b - a, z, n, k)
        cols[vb] = lin.columns(idx)  # (B, Z, N, K)
        g[:, a:b] = torch.einsum("bznk,bwnk->nbzw", cols, cols)
    return g


def quadratic_l2_truth(
    f: Map,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    iters: int = 50,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
    box: Box | None = None,
    box_iters: int = 30,
) -> Tensor:
    """Eq. 12 with p = 2, when a ground truth y != f(x) is known: maximise norm_2(r + J eta)^2 over
    norm_2(eta) <= eps, r = f(x) - y (equal to eq. 12's 2 r^T J eta + norm_2(J eta)^2 plus the constant
    norm_2(r)^2, and to the first-order norm_2(y - f(x + eta))^2 of eq. 11).

    The paper states eq. 12 and drops its linear term (eq. 13, y ~ f(x)); this solves it. It is a trust-region
    subproblem that *maximises* a convex quadratic, eta^T A eta + 2 b^T eta with A = J^T J and b = J^T r:
    the maximum lies on the sphere norm_2(eta) = eps, where (lam I - A) eta = b for a multiplier
    lam >= lam_max(A) (the global maximiser; every other stationary point has a smaller lam). Matrix-free, as
    the generalised Lanczos trust-region method does for minimisation: Lanczos on A from b spans a Krylov space
    K_j (one jvp + one vjp per step, full reorthogonalisation), the small problem on the tridiagonal T_j is
    solved exactly (eigendecomposition of T_j, then the secular equation sum c_i^2 / (lam - theta_i)^2 = eps^2
    by bisection on lam > theta_max in float64), and eta = Q_j h. It stops when the objective changes by less
    than ``tol`` relative, or after ``iters`` steps. In the hard case (b orthogonal to the top eigenvector
    within K_j) lam = theta_max and the remaining norm goes along the top Ritz vector; the Lanczos start is
    b / norm(b) plus 1% of a random unit vector, so that K_j finds the top eigenvector even where b is
    orthogonal to it. Where b = 0 (r = 0, or r orthogonal to the range of J) eq. 12 is eq. 13 and the answer
    is +-eps v_max, as :func:`quadratic_l2` gives (up to its sign rule).

    Box (``box``): the sphere's maximiser may leave the box [lo, hi] (MNIST's black background: about 20% of
    the budget was lost to clipping on the MNIST autoencoder). Where it does, the clipped point seeds
    ``_ball_box_ascent``: eta <- argmax of the linear term (J^T (r + J eta))^T u over the feasible set
    ball-and-box {norm_2(u) <= eps, lo <= x + u <= hi}, ``box_iters`` times at most. The objective is convex,
    so each step cannot lower it (a conditional-gradient ascent to a stationary point; the global maximum of a
    convex function over ball-and-box is NP-hard in general): the result is at least as good, to first order,
    as clipping the sphere's answer, uses the whole budget inside the box (norm_2(eta) = eps) wherever the box
    leaves room for it, and x + eta stays in the box.

    Cost: <= ``iters`` (jvp + vjp) on the batch, one vjp for b, O(iters^3) small eigendecompositions;
    memory (iters + 1) N M floats for the Krylov basis; with a box that clips, <= ``box_iters`` more
    (jvp + vjp) and a sort of M values per input and step.

    Args:
        f: the batched map; x: inputs (N, ...); y: ground truths shaped like f(x).
        eps: the l2 budget, scalar or (N,).
        iters: Lanczos steps at most; tol: relative change of the objective (twice in a row) that stops.
        generator: for the random part of the Lanczos start.
        box: the valid inputs; None: no box (eta may leave any box).
        box_iters: ascent steps at most on ball-and-box (0: the sphere's answer, clipping left to the caller).

    Returns:
        eta shaped like x with norm_2(eta_i) = eps_i (without a box; with one, norm_2(eta_i) <= eps_i, equal
        where the box leaves room), x + eta in the box.
    """
    lin = Linearization(f, x)
    e = as_batch_eps(eps, lin.n, lin.x).to(torch.float64)
    if y.shape != lin.out.shape:
        raise ValueError(f"y must be shaped like f(x) {tuple(lin.out.shape)}, got {tuple(y.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    r = (lin.out - y.to(lin.out.dtype)).detach()
    b = lin.jtu(r).reshape(lin.n, lin.m)
    basis, h = _lanczos_trs(lin, b, e, _krylov_start(b, generator), min(iters, lin.m), tol)
    eta = torch.bmm(basis.transpose(1, 2), h.to(b.dtype).unsqueeze(2)).squeeze(2)
    # exact budget (rounding of the Krylov basis)
    eta = eta * (e.to(b.dtype) / eta.norm(dim=1).clamp_min(1e-30)).unsqueeze(1)
    eta = eta.reshape(lin.x.shape)
    if box is None or box_iters < 1:
        return eta
    lo, hi = box.bounds(lin.x)
    lower, upper = (lo - lin.x).clamp_max(0), (hi - lin.x).clamp_min(0)
    clipped = torch.maximum(torch.minimum(eta, upper), lower)
    leaves = (clipped != eta).reshape(lin.n, -1).any(dim=1)
    if not bool(leaves.any()):
        return eta
    better = _ball_box_ascent(lin, r, clipped, lower.expand_as(eta), upper.expand_as(eta), e, box_iters, tol)
    return torch.where(expand_like(leaves, eta), better, eta)


def _ball_box_ascent(lin: Linearization, r: Tensor, eta: Tensor, lower: Tensor, upper: Tensor, e: Tensor,
                     iters: int, tol: float) -> Tensor:
    """Conditional-gradient ascent of norm_2(r + J eta)^2 on ball-and-box from a feasible ``eta``.

    Each step: c = J^T (r + J eta) (half the gradient), then eta <- argmax_u c^T u over norm_2(u) <= e,
    lower <= u <= upper (:func:`_ball_box_lmo`). A convex objective lies above its tangent, so the new value
    is at least the old one plus c^T (u - eta) >= 0. Stops after ``iters`` steps, or when the value rises
    by less than ``tol`` relative. One jvp and one vjp per step.
    """
    n = lin.n
    res = r + lin.jv(eta)
    val = res.reshape(n, -1).square().sum(dim=1)
    for _ in range(iters):
        u = _ball_box_lmo(lin.jtu(res), lower, upper, e)
        res_u = r + lin.jv(u)
        val_u = res_u.reshape(n, -1).square().sum(dim=1)
        up = val_u > val  # a step that rounding made worse is not taken
        eta = torch.where(expand_like(up, eta), u, eta)
        res = torch.where(expand_like(up, res), res_u, res)
        gain = (val_u - val).clamp_min(0)
        val = torch.maximum(val, val_u)
        if bool((gain <= tol * val.abs()).all()):
            break
    return eta


def _ball_box_lmo(c: Tensor, lower: Tensor, upper: Tensor, e: Tensor) -> Tensor:
    """argmax_u c^T u s.t. norm_2(u) <= e, lower <= u <= upper (lower <= 0 <= upper), batched, exact.

    KKT: u = clip(t c, lower, upper) for the t >= 0 with norm_2(u) = e, or the box's vertex sign(c) (upper or
    lower) when even that is no longer than e. norm_2(clip(t c))^2 is piecewise S_k + t^2 C_k between the
    sorted saturation points t_i = bound_i / c_i (S_k: squared bounds of the k saturated coordinates, C_k:
    the remaining sum of c_i^2), so t follows in closed form from the first piece that reaches e^2.
    """
    shape, n = c.shape, c.shape[0]
    cf = c.reshape(n, -1).double()
    bound = torch.where(cf > 0, upper.reshape(n, -1).double(),
                        torch.where(cf < 0, lower.reshape(n, -1).double(), torch.zeros_like(cf)))
    t_sat = torch.where(cf != 0, bound / torch.where(cf != 0, cf, torch.ones_like(cf)), torch.full_like(cf, math.inf))
    t_sorted, order = torch.sort(t_sat, dim=1)
    b2 = torch.take_along_dim(bound.square(), order, dim=1)
    c2 = torch.take_along_dim(cf.square(), order, dim=1)
    sat = torch.cumsum(b2, dim=1)  # S_k, k = 1..M
    rest = (c2.sum(dim=1, keepdim=True) - torch.cumsum(c2, dim=1)).clamp_min(0)  # C_k
    # squared norm at each breakpoint (0 * inf where nothing is left to grow: the saturated part alone)
    at = sat + torch.where(rest > 0, t_sorted.square() * rest, torch.zeros_like(rest))
    e2 = e.double().square().unsqueeze(1)
    reach = at >= e2
    k = torch.where(reach.any(dim=1), reach.int().argmax(dim=1), torch.full((n,), -1, device=c.device))
    # on the piece before breakpoint k: k coordinates saturated (S_{k-1}, C_{k-1}; S_0 = 0, C_0 = sum c^2)
    before = (k - 1).clamp_min(0).unsqueeze(1)
    prev_sat = torch.where(k > 0, sat.gather(1, before).squeeze(1), torch.zeros_like(e2[:, 0]))
    prev_rest = torch.where(k > 0, rest.gather(1, before).squeeze(1), c2.sum(dim=1))
    t = ((e2[:, 0] - prev_sat).clamp_min(0) / prev_rest.clamp_min(1e-300)).sqrt()
    u = torch.where((k >= 0).unsqueeze(1), t.unsqueeze(1) * cf, bound)
    u = torch.minimum(torch.maximum(u, lower.reshape(n, -1).double()), upper.reshape(n, -1).double())
    return u.to(c.dtype).reshape(shape)


def _krylov_start(b: Tensor, generator: torch.Generator | None) -> Tensor:
    """The Lanczos start of :func:`quadratic_l2_truth`, unit norm (N, M): b / norm(b) plus 1% of a random unit
    vector, so that the Krylov space also finds the top eigenvector where b is (nearly) orthogonal to it (the
    hard case) or zero (eq. 13)."""
    bn = b.norm(dim=1, keepdim=True)
    z = torch.randn(b.shape, dtype=b.dtype, device=b.device, generator=generator)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30)
    q0 = torch.where(bn > 0, b / bn.clamp_min(1e-30), torch.zeros_like(b)) + 1e-2 * z
    return q0 / q0.norm(dim=1, keepdim=True)


def _lanczos_trs(lin: Linearization, b: Tensor, e: Tensor, q0: Tensor, k_max: int, tol: float) -> tuple[Tensor, Tensor]:
    """Lanczos on A = J^T J from ``q0`` (full reorthogonalisation), the trust-region problem on each T_j solved
    by :func:`_trs_max`, until the objective changes by less than ``tol`` relative twice in a row, T_j breaks
    down or j = ``k_max``: the basis Q_j (N, j, M) and the maximiser h (N, j), float64, of the last T_j."""
    n, m = lin.n, lin.m
    basis = b.new_zeros(n, k_max + 1, m)
    basis[:, 0] = q0
    alphas = torch.zeros(n, k_max, dtype=torch.float64, device=b.device)
    betas = torch.zeros(n, k_max, dtype=torch.float64, device=b.device)
    h = torch.zeros(n, 1, dtype=torch.float64, device=b.device)
    prev = torch.full((n,), -1.0, dtype=torch.float64, device=b.device)
    quiet = 0
    steps = k_max
    for j in range(k_max):
        q = basis[:, j]
        w = lin.jtj(q.reshape(lin.x.shape)).reshape(n, m)
        a = (q * w).sum(dim=1)
        qs = basis[:, : j + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - torch.bmm(qs.transpose(1, 2), torch.bmm(qs, w.unsqueeze(2))).squeeze(2)
        beta = w.norm(dim=1)
        alphas[:, j] = a.double()
        betas[:, j] = beta.double()
        t = torch.diag_embed(alphas[:, : j + 1])
        if j > 0:
            off = torch.diag_embed(betas[:, :j], offset=1)
            t = t + off + off.transpose(1, 2)
        g = torch.bmm(qs, b.unsqueeze(2)).squeeze(2).double()  # Q^T b
        h = _trs_max(t, g, e)
        val = 2 * (g * h).sum(dim=1) + torch.einsum("ni,nij,nj->n", h, t, h)
        breakdown = beta <= 100 * torch.finfo(b.dtype).eps * a.abs().clamp_min(1e-30)
        quiet = quiet + 1 if bool(((val - prev).abs() <= tol * val.abs()).all()) else 0
        if quiet >= 2 or bool(breakdown.all()) or j == k_max - 1:
            steps = j + 1
            break
        prev = val
        basis[:, j + 1] = torch.where(breakdown.unsqueeze(1), torch.zeros_like(w),
                                      w / beta.clamp_min(1e-30).unsqueeze(1))
    return basis[:, :steps], h


def _trs_max(t: Tensor, g: Tensor, eps: Tensor) -> Tensor:
    """argmax over norm_2(h) = eps of h^T t h + 2 g^T h, batched, float64: t (N, k, k) symmetric, g (N, k).

    h = sum_i c_i / (lam - theta_i) u_i with (theta_i, u_i) the eigenpairs of t, c = U^T g and lam > theta_max
    solving sum_i c_i^2 / (lam - theta_i)^2 = eps^2 (bisection; the left side decreases in lam). Hard case
    (the left side stays below eps^2 as lam -> theta_max): lam = theta_max and the rest of the norm along
    u_max, with the sign of c_max (+ when 0).
    """
    theta, u = torch.linalg.eigh(t)
    c = torch.einsum("nki,nk->ni", u, g)
    top = theta[:, -1:]
    gap = top - theta  # >= 0
    scale = theta.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    lo = torch.zeros_like(top)
    hi = c.norm(dim=1, keepdim=True) / eps.unsqueeze(1) + 1e-300
    tiny = 1e-15 * scale

    def sq_norm(mu: Tensor) -> Tensor:
        return (c.square() / (gap + mu).square()).sum(dim=1, keepdim=True)

    hard = sq_norm(tiny) <= eps.unsqueeze(1).square()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        big = sq_norm(mid) > eps.unsqueeze(1).square()
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    mu = 0.5 * (lo + hi)
    coef = c / (gap + mu)
    # hard case: mu = 0, drop the (vanishing) top term and fill the norm along u_max
    rest = torch.where(gap > tiny, c / gap.clamp_min(1e-300), torch.zeros_like(c))
    fill = (eps.unsqueeze(1).square() - rest.square().sum(dim=1, keepdim=True)).clamp_min(0).sqrt()
    sgn = torch.where(c[:, -1:] < 0, -1.0, 1.0).to(c.dtype)
    hard_coef = rest.clone()
    hard_coef[:, -1:] = hard_coef[:, -1:] + sgn * fill
    coef = torch.where(hard, hard_coef, coef)
    return torch.einsum("nki,ni->nk", u, coef)
