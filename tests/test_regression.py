"""Regression presets (Sections 3-4): quadratic, linear and subset attacks wired through get_attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DTYPE, gen, modes, no_grads, rand_x
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pertattack import eps_for_psnr, get_attack, operator_norm, psnr, psnr_curve
from pertattack.constraints import LpBall

INF = math.inf
REGRESSION = {
    "quadratic-l2": 2.0, "quadratic-l1": 1.0, "quadratic-linf": INF, "quadratic-pixel": INF,
    "linear-l2-3": 2.0, "linear-linf-3": INF, "linear-pixel-3": INF,
    "rand-l2": 2.0, "rand-linf": INF, "rand-pixel-3": INF,
}


class ConvAE(nn.Module):
    """A tiny conv autoencoder (N, 3, 4, 4) -> (N, 3, 4, 4) with a Dropout (eval mode must be used)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Dropout(0.5),
                                 nn.Conv2d(4, 3, 3, padding=1), nn.Sigmoid()).to(DTYPE)
        g = gen(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE))

    def forward(self, x):
        return self.net(x)


class Linear(nn.Module):
    """f(x) = A x on flattened inputs, output reshaped to (N, K)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.a.T


def subsets_touched(eta: torch.Tensor) -> torch.Tensor:
    """Pixels (channels of one location) with a nonzero entry, per input, for (N, C, H, W)."""
    return (eta != 0).any(dim=1).flatten(1).sum(dim=1)


@pytest.mark.filterwarnings("ignore:the gradient of the objective is exactly zero")  # eps ~ 0: flat, rightly
@pytest.mark.parametrize("name", list(REGRESSION))
@settings(max_examples=8, deadline=None)
@given(eps=st.floats(0.0, 0.5), seed=st.integers(0, 10), train=st.booleans())
def test_budget_box_hygiene(name, eps, seed, train):
    model = ConvAE(seed)
    model.train(train)
    m0 = modes(model)
    x = rand_x(2, (3, 4, 4), seed=seed)
    x0 = x.clone()
    r = get_attack(name, eps=eps, seed=seed)(model, x)
    p = REGRESSION[name]
    assert r.success is None and r.pred is None
    assert (r.norms <= eps * (1 + 1e-9) + 1e-12).all()
    assert (r.x_adv >= 0).all() and (r.x_adv <= 1).all()
    assert torch.equal(x, x0) and no_grads(model) and modes(model) == m0
    torch.testing.assert_close(r.norms, LpBall(p).norm(r.x_adv - x))
    if "pixel" in name:
        t = 1 if name.startswith("quadratic") else 3
        assert (subsets_touched(r.eta) <= t).all()  # the box may zero a subset's step
    if name == "quadratic-l1":
        assert ((r.eta != 0).flatten(1).sum(1) <= 1).all()


def test_subset_attacks_touch_exactly_t_pixels_away_from_the_box():
    model = ConvAE(3).eval()
    x = 0.25 + 0.5 * rand_x(3, (3, 4, 4), seed=2)  # +-0.2 stays inside [0, 1]: nothing is clipped
    for name, t in [("quadratic-pixel", 1), ("linear-pixel-1", 1), ("linear-pixel-5", 5), ("rand-pixel-4", 4)]:
        r = get_attack(name, eps=0.2, seed=0)(model, x)
        assert subsets_touched(r.eta).tolist() == [t] * 3, name
        assert torch.allclose(r.eta.abs()[r.eta != 0], torch.tensor(0.2, dtype=DTYPE)), name


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_pixel_with_reuse_touches_up_to_t_pixels_within_budget_and_box(seed):
    """reuse=True (the paper's multiple subsets without exclusion): a re-chosen pixel adds to its step, so a pixel
    at its budget is not chosen again for nothing and T steps spread over up to T pixels (a re-decided pixel kept
    linear-pixel-5 on 1 or 2 pixels)."""
    model = ConvAE(3).eval()
    inside = 0.25 + 0.5 * rand_x(3, (3, 4, 4), seed=2)
    r = get_attack("linear-pixel-5", eps=0.2, seed=seed, reuse=True)(model, inside)
    assert subsets_touched(r.eta).tolist() == [5, 5, 5]
    assert torch.allclose(r.eta.abs()[r.eta != 0], torch.tensor(0.2, dtype=DTYPE))
    x = rand_x(3, (3, 4, 4), seed=5)  # anywhere in [0, 1]: the box cuts steps
    r = get_attack("linear-pixel-10", eps=0.3, seed=seed, reuse=True)(model, x)
    assert (subsets_touched(r.eta) <= 10).all() and (subsets_touched(r.eta) >= 5).all()
    assert (r.eta.abs() <= 0.3).all() and (r.x_adv >= 0).all() and (r.x_adv <= 1).all()


def test_linear_attacks_need_dithering_when_y_is_f_x():
    """With y = f(x) the gradient of norm_2(y - f(x + eta))^2 at eta = 0 is exactly zero (Section 3.2)."""
    model = ConvAE(1).eval()
    x = 0.25 + 0.5 * rand_x(2, (3, 4, 4), seed=4)
    for name in ("linear-l2-4", "linear-linf-4", "linear-pixel-4"):
        with pytest.warns(UserWarning, match="dither"):
            flat = get_attack(name, eps=0.3, dither="none")(model, x)
        assert torch.equal(flat.eta, torch.zeros_like(x)), name
        dithered = get_attack(name, eps=0.3, seed=0)(model, x)
        assert (dithered.norms > 0).all(), name
        with torch.no_grad():
            assert (psnr(model(dithered.x_adv), model(x)) < 80).all(), name


def test_linear_attack_without_dithering_moves_when_y_is_given():
    model = ConvAE(1).eval()
    x = 0.25 + 0.5 * rand_x(2, (3, 4, 4), seed=4)
    y = torch.zeros(2, 3, 4, 4, dtype=DTYPE)
    r = get_attack("linear-l2-2", eps=0.3, dither="none")(model, x, y)
    assert (r.norms > 0.29).all()


def test_quadratic_l2_on_linear_map_is_top_singular_vector():
    a = torch.randn(5, 8, generator=gen(0), dtype=DTYPE)
    model = Linear(a)
    x = torch.full((1, 8), 0.5, dtype=DTYPE)
    r = get_attack("quadratic-l2", eps=0.1, box=(-10, 10), tol=1e-12, power_iters=200)(model, x)
    _, s, vt = np.linalg.svd(a.numpy())
    v = r.eta[0].numpy() / 0.1
    assert abs(abs(v @ vt[0]) - 1) < 1e-8
    assert abs(float(r.info["sigma"][0]) - s[0]) < 1e-8
    assert abs(float(operator_norm(model, x, tol=1e-12)[0]) - s[0]) < 1e-6


def test_quadratic_beats_random_on_a_linear_map():
    a = torch.randn(6, 10, generator=gen(1), dtype=DTYPE)
    model = Linear(a)
    x = torch.full((4, 10), 0.5, dtype=DTYPE)
    for q, rnd, p in [("quadratic-l2", "rand-l2", 2.0), ("quadratic-linf", "rand-linf", INF)]:
        dq = model(get_attack(q, eps=0.1)(model, x).x_adv) - model(x)
        dr = model(get_attack(rnd, eps=0.1, seed=0)(model, x).x_adv) - model(x)
        assert (dq.norm(dim=1) >= dr.norm(dim=1) - 1e-12).all(), (q, p)


def test_psnr_curve_and_eps_for_psnr():
    model = ConvAE(2).eval()
    x = 0.25 + 0.5 * rand_x(3, (3, 4, 4), seed=6)
    targets = [20.0, 30.0]
    eps = [eps_for_psnr(t, 2.0, 48) for t in targets]
    c = psnr_curve(model, x, "rand-l2", eps, seed=0)
    np.testing.assert_allclose(c["input_psnr"], targets, atol=1e-6)  # nothing clipped: exact
    with torch.no_grad():
        r = get_attack("rand-l2", eps=eps[0], seed=0)(model, x)
        out = model(r.x_adv)
        assert abs(c["output_psnr"][0] - float(psnr(out, x).mean())) < 1e-9
        assert abs(c["output_psnr_clean"][0] - float(psnr(out, model(x)).mean())) < 1e-9
    assert eps_for_psnr(20.0, INF, 48) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="p = 2"):
        eps_for_psnr(20.0, 1.0, 48)


def test_regression_reference_shape_is_checked():
    model = ConvAE(0).eval()
    x = rand_x(2, (3, 4, 4), seed=0)
    with pytest.raises(ValueError, match="y has shape"):
        get_attack("quadratic-l2", eps=0.1)(model, x, torch.zeros(2, 5, dtype=DTYPE))


@pytest.mark.parametrize("name", ["quadratic-l2", "linear-l2-2", "linear-linf-2"])
def test_presets_at_3x96x96_allocate_nothing_of_size_m_by_m(name):
    """Section 3.2 stops at storing J (M x K); the matrix-free presets never allocate anything near M^2."""
    from test_quadratic import _LargestTensor

    from pertattack.models import build_model

    model = build_model("conv-ae", channels=3, seed=0).eval()
    x = torch.rand(1, 3, 96, 96, generator=gen(0))
    m = x.numel()  # 27,648
    with _LargestTensor() as probe:
        kw = {"power_iters": 20} if name.startswith("quadratic-l2") else {}  # a quadratic-l2 setting only
        r = get_attack(name, eps=0.5 if "l2" in name else 0.02, seed=0, **kw)(model, x)
    assert probe.numel <= 25 * m < m * m / 1000, probe.numel
    assert r.eta.shape == x.shape and (r.norms > 0).all()


def test_quadratic_l2_on_a_box_face_uses_its_whole_budget_and_beats_clipping():
    """Half the coordinates sit at lo = 0 (an MNIST background): the projected power iteration keeps
    eta inside the box, so nothing is clipped away, and it moves A x more than clipped +-eps v_max."""
    a = torch.randn(6, 10, generator=gen(3), dtype=DTYPE)
    model = Linear(a)
    x = torch.zeros(4, 10, dtype=DTYPE)
    x[:, 5:] = 0.5
    eps = 0.2
    r = get_attack("quadratic-l2", eps=eps, tol=1e-12)(model, x)
    assert torch.equal(r.x_adv, r.x_adv.clamp(0, 1)) and (r.eta[:, :5] >= 0).all()
    torch.testing.assert_close(r.norms, torch.full((4,), eps, dtype=DTYPE))
    _, _, vt = np.linalg.svd(a.numpy())
    v = torch.as_tensor(vt[0])
    with torch.no_grad():
        clipped = max(float((model((x + s * eps * v).clamp(0, 1)) - model(x)).norm(dim=1)[0]) for s in (1, -1))
        ours = (model(r.x_adv) - model(x)).norm(dim=1)
    assert (ours >= clipped - 1e-12).all()
    assert float(r.info["sigma"][0]) == pytest.approx(float(np.linalg.svd(a.numpy())[1][0]), rel=1e-8)
    off = get_attack("quadratic-l2", eps=eps, tol=1e-12, box=(-1.0, 1.0))(model, x)  # no face: plain eq. 14
    assert abs(abs(float(off.eta[0] @ v)) / eps - 1) < 1e-8
