"""Matrix-free Jacobian operators (pertattack.operators) against explicit Jacobians and numpy's SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import gen
from torch import Tensor, nn

from pertattack.operators import (
    Linearization,
    column_norms,
    jacobian,
    jtj,
    jvp,
    top_singular,
    vjp,
)

DT = torch.float64




def mlp(m: int, k: int, hidden: int = 16, seed: int = 0) -> nn.Module:
    """A small tanh MLP (N, m) -> (N, k) in float64; its parameters require grad (the default)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(m, hidden), nn.Tanh(), nn.Linear(hidden, k)).to(DT).eval()


def conv(seed: int = 0) -> nn.Module:
    """(N, 2, 6, 6) -> (N, 2, 6, 6) conv + transposed conv with BatchNorm and Dropout (eval mode).

    float32: float64 convolutions take a slow multithreaded path on CPU.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
        nn.Sigmoid(),
    )
    return net.eval()


def explicit(f, x: Tensor) -> Tensor:
    """Reference Jacobians (N, K, M): torch.func.jacrev of the single-input map, vmapped over the batch."""
    one = lambda z: f(z.unsqueeze(0))[0].reshape(-1)  # noqa: E731
    jac = torch.func.vmap(torch.func.jacrev(one))(x.detach())
    return jac.reshape(x.shape[0], jac.shape[1], -1)


def no_grads(model: nn.Module) -> bool:
    return all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_jvp_vjp_jtj_match_explicit(which: str) -> None:
    if which == "mlp":
        model, x = mlp(7, 5), torch.rand(4, 7, dtype=DT, generator=gen(1))
    else:
        model, x = conv(), torch.rand(3, 2, 6, 6, generator=gen(1))
    tol = dict(rtol=1e-10, atol=1e-12) if x.dtype == DT else dict(rtol=1e-5, atol=1e-6)
    f = lambda z: model(z)  # noqa: E731
    x0 = x.clone()
    jac = explicit(f, x)  # (N, K, M)
    n = x.shape[0]
    v = torch.randn(x.shape, dtype=x.dtype, generator=gen(2))
    u = torch.randn(f(x).shape, dtype=x.dtype, generator=gen(3))
    jv = jvp(f, x, v)
    jtu = vjp(f, x, u)
    jtjv = jtj(f, x, v)
    ref_jv = torch.einsum("nkm,nm->nk", jac, v.reshape(n, -1))
    ref_jtu = torch.einsum("nkm,nk->nm", jac, u.reshape(n, -1))
    ref_jtjv = torch.einsum("nkm,nk->nm", jac, ref_jv)
    assert jv.shape == u.shape and jtu.shape == x.shape and jtjv.shape == x.shape
    torch.testing.assert_close(jv.reshape(n, -1), ref_jv, **tol)
    torch.testing.assert_close(jtu.reshape(n, -1), ref_jtu, **tol)
    torch.testing.assert_close(jtjv.reshape(n, -1), ref_jtjv, **tol)
    torch.testing.assert_close(jacobian(f, x, chunk=3), jac, **tol)
    assert torch.equal(x, x0)
    assert no_grads(model)


@pytest.mark.parametrize("m,k", [(12, 4), (5, 9), (6, 6)])  # K <= M: rows (vjps); K > M: columns (jvps)
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_column_norms_both_branches(m: int, k: int, chunk: int) -> None:
    model = mlp(m, k, seed=m + k)
    x = torch.rand(3, m, dtype=DT, generator=gen(4))
    f = lambda z: model(z)  # noqa: E731
    ref = explicit(f, x).norm(dim=1)  # (N, M)
    got = column_norms(f, x, chunk=chunk)
    assert got.shape == (3, m)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # batch independence: input i alone gives its row
    torch.testing.assert_close(column_norms(f, x[1:2], chunk=chunk), ref[1:2], rtol=1e-10, atol=1e-12)
    assert no_grads(model)


def test_column_norms_conv_image_shape() -> None:
    model = conv()
    x = torch.rand(2, 2, 6, 6, generator=gen(5))
    f = lambda z: model(z)  # noqa: E731
    torch.testing.assert_close(column_norms(f, x, chunk=16), explicit(f, x).norm(dim=1), rtol=1e-5, atol=1e-6)


def linear_per_input(a: Tensor):
    """f(x)_i = A_i x_i for per-input matrices a (N, K, M)."""
    return lambda z: torch.einsum("nkm,nm->nk", a, z.reshape(z.shape[0], -1))


def with_spectrum(k: int, m: int, s: list[float], seed: int) -> np.ndarray:
    """A K x M matrix with prescribed singular values s (random singular vectors)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((k, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    return (u * np.asarray(s)) @ v.T


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_singular_per_input_matrices(method: str) -> None:
    k, m = 6, 8
    mats = np.stack([with_spectrum(k, m, [3.0 + i, 1.5, 1.0, 0.5, 0.2, 0.1], seed=i) for i in range(4)])
    a = torch.from_numpy(mats)
    x = torch.rand(4, m, dtype=DT, generator=gen(6))
    sigma, v = top_singular(linear_per_input(a), x, iters=300, tol=1e-12, generator=gen(7), method=method)
    assert sigma.shape == (4,) and v.shape == x.shape
    for i in range(4):
        _, s, vt = np.linalg.svd(mats[i])
        assert sigma[i].item() == pytest.approx(s[0], rel=1e-10)
        assert abs(float(np.dot(v[i].numpy(), vt[0]))) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4, dtype=DT))


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_singular_shared_random_matrix(method: str) -> None:
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((10, 7))
    a = torch.from_numpy(mat)
    x = torch.rand(3, 7, dtype=DT, generator=gen(8))
    sigma, v = top_singular(lambda z: z @ a.T, x, iters=2000, tol=1e-13, generator=gen(9), method=method)
    _, s, vt = np.linalg.svd(mat)
    np.testing.assert_allclose(sigma.numpy(), s[0], rtol=1e-9)
    np.testing.assert_allclose(np.abs(v.numpy() @ vt[0]), 1.0, atol=1e-8)


def test_lanczos_beats_power_on_small_gap() -> None:
    mat = with_spectrum(30, 40, [1.0, 0.99, 0.5, 0.1], seed=3)
    a = torch.from_numpy(mat)
    x = torch.zeros(1, 40, dtype=DT)
    f = lambda z: z @ a.T  # noqa: E731
    _, vp = top_singular(f, x, iters=20, tol=0.0, generator=gen(1), method="power")
    _, vl = top_singular(f, x, iters=20, tol=0.0, generator=gen(1), method="lanczos")
    vt = np.linalg.svd(mat)[2][0]
    assert abs(float(vl[0].numpy() @ vt)) > 1 - 1e-8
    assert abs(float(vl[0].numpy() @ vt)) > abs(float(vp[0].numpy() @ vt))


def test_top_singular_converges_per_input_and_zero_jacobian() -> None:
    # input 0 has J = 0 (sigma 0), input 1 a rank-one J (converges at once)
    a = torch.zeros(2, 3, 5, dtype=DT)
    a[1] = torch.outer(torch.tensor([1.0, 2.0, 2.0], dtype=DT), torch.tensor([0.0, 3.0, 0.0, 4.0, 0.0], dtype=DT))
    x = torch.rand(2, 5, dtype=DT, generator=gen(1))
    sigma, v = top_singular(linear_per_input(a), x, iters=50, generator=gen(2))
    assert sigma[0].item() == 0.0
    assert sigma[1].item() == pytest.approx(15.0, rel=1e-12)
    assert abs(float(v[1] @ torch.tensor([0.0, 0.6, 0.0, 0.8, 0.0], dtype=DT))) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2, dtype=DT))


def test_top_singular_nonlinear_matches_explicit_svd_and_batch() -> None:
    model = mlp(9, 6, seed=3)
    x = torch.rand(4, 9, dtype=DT, generator=gen(3))
    f = lambda z: model(z)  # noqa: E731
    sigma, v = top_singular(f, x, iters=300, tol=1e-12, generator=gen(4), method="lanczos")
    jac = explicit(f, x)
    ref = torch.linalg.matrix_norm(jac, ord=2)
    torch.testing.assert_close(sigma, ref, rtol=1e-9, atol=0.0)
    sigma2, v2 = top_singular(f, x[2:3], iters=300, tol=1e-12, generator=gen(5), method="lanczos")
    assert sigma2.item() == pytest.approx(sigma[2].item(), rel=1e-9)
    assert abs(float(v2[0] @ v[2])) == pytest.approx(1.0, abs=1e-8)
    assert no_grads(model)


def test_hygiene_x_untouched_no_grad_even_if_x_requires_grad() -> None:
    model = mlp(6, 4)
    x = torch.rand(3, 6, dtype=DT, generator=gen(1)).requires_grad_(True)
    x0 = x.detach().clone()
    f = lambda z: model(z)  # noqa: E731
    lin = Linearization(f, x)
    out = [lin.jv(torch.ones_like(x0)), lin.jtu(torch.ones(3, 4, dtype=DT)), column_norms(lin), jacobian(lin)]
    out += list(top_singular(lin, iters=5, generator=gen(0)))
    assert all(not t.requires_grad for t in out)
    assert x.grad is None and no_grads(model)
    assert torch.equal(x.detach(), x0)


def test_float32_and_bad_arguments() -> None:
    model = mlp(5, 3).float()
    x = torch.rand(2, 5, generator=gen(1))
    sigma, v = top_singular(lambda z: model(z), x, iters=10, generator=gen(0))
    assert sigma.dtype == torch.float32 and v.dtype == torch.float32
    with pytest.raises(ValueError):
        top_singular(lambda z: model(z), x, iters=0)
    with pytest.raises(ValueError):
        top_singular(lambda z: model(z), x, method="svd")
    with pytest.raises(ValueError):
        column_norms(lambda z: model(z), x, chunk=0)


def test_restarted_lanczos_matches_full_basis_at_small_size() -> None:
    """Thick restart with a 4-vector basis (many restarts) gives the full-basis Lanczos sigma on a conv net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, stride=2,
                                                                                              padding=1)).to(DT)
    x = torch.rand(3, 3, 12, 12, dtype=DT, generator=gen(2))
    f = lambda z: net(z)  # noqa: E731
    full, vf = top_singular(f, x, iters=400, tol=1e-10, generator=gen(1), basis=None)
    ref = torch.linalg.matrix_norm(jacobian(f, x), ord=2)
    torch.testing.assert_close(full, ref, rtol=1e-9, atol=0.0)
    for basis in (4, 7, 20):
        sigma, v = top_singular(f, x, iters=400, tol=1e-10, generator=gen(1), basis=basis)
        torch.testing.assert_close(sigma, full, rtol=1e-9, atol=0.0)
        cos = (v * vf).reshape(3, -1).sum(dim=1).abs()
        torch.testing.assert_close(cos, torch.ones(3, dtype=DT), rtol=0.0, atol=1e-6)
    with pytest.raises(ValueError):
        top_singular(f, x, basis=1)


def test_restarted_lanczos_memory_is_the_basis_not_the_iterations() -> None:
    """With basis b the Lanczos keeps (b + 1) N M floats however many iterations run."""
    a = torch.from_numpy(with_spectrum(50, 60, list(np.linspace(1.0, 0.9, 20)), seed=5))
    x = torch.zeros(1, 60, dtype=DT)
    sizes = []
    real = torch.Tensor.new_zeros

    def spy(t: Tensor, *shape, **kw):  # record the basis allocation
        out = real(t, *shape, **kw)
        sizes.append(out.numel())
        return out

    torch.Tensor.new_zeros = spy  # type: ignore[method-assign]
    try:
        top_singular(lambda z: z @ a.T, x, iters=200, tol=0.0, generator=gen(0), basis=5)
    finally:
        torch.Tensor.new_zeros = real  # type: ignore[method-assign]
    assert max(sizes) == 6 * 60


def test_jv_by_transposed_vjp_equals_forward_mode() -> None:
    model = conv(1)
    x = torch.rand(3, 2, 6, 6, generator=gen(4))
    v = torch.randn(3, 2, 6, 6, generator=gen(5))
    lin = Linearization(lambda z: model(z), x)
    a = lin.jv(v)
    assert lin._jv_mode == "transpose"
    _, b = torch.func.jvp(lambda z: model(z), (x,), (v,))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert no_grads(model)
