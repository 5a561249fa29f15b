"""The Square attack (Andriushchenko et al. 2020) as a score-only solver of the schedule: budget, queries,
per-input randomness, success where an adversarial example provably exists, the proposals' math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CONV_SHAPE, DTYPE, MLP, MLP_SHAPE, BinaryAffine, ConvNet, gen, modes, no_grads, rand_x
from torch import nn

from pertattack import get_attack
from pertattack.constraints import Box
from pertattack.noise import Noise
from pertattack.solvers import Square
from pertattack.square import l2_start, l2_step, l2_tile, linf_start, linf_step, p_schedule, window_size

INF = math.inf
EPS = {INF: 0.1, 2.0: 0.3}


def np_norms(v: torch.Tensor, p: float) -> np.ndarray:
    a = np.abs(v.detach().reshape(v.shape[0], -1).numpy())
    return a.max(axis=1) if math.isinf(p) else np.sqrt((a**2).sum(axis=1))


class Recorder(nn.Module):
    """Keeps every batch the model is called with, and its predictions."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        self.batches.append((x.detach().clone(), out.detach().argmax(dim=1)))
        return out


# ---------------------------------------------------------------------------- the preset and its keywords


def test_preset_parts_and_queries_keyword():
    a = get_attack("square", eps=0.1)
    assert isinstance(a.solver, Square) and a.solver.p_init == 0.8
    assert a.schedule.steps == 5000 and a.objective.name == "margin"
    assert get_attack("square", queries=123).schedule.steps == 123
    assert get_attack("square", p_init=0.3).solver.p_init == 0.3
    assert get_attack("square", p=2).ball.p == 2.0
    with pytest.raises(TypeError, match="queries"):
        get_attack("pgd", queries=10)  # a gradient attack has no queries


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_other_norms_are_refused(p):
    with pytest.raises(ValueError, match="p=inf or p=2"):
        get_attack("square", p=p)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, math.nan, True, "0.5"])
def test_bad_p_init(bad):
    with pytest.raises(ValueError, match="p_init"):
        get_attack("square", p_init=bad)


def test_bad_inputs_and_objectives():
    model = MLP().eval()
    with pytest.raises(ValueError, match="classification"):
        get_attack("square", eps=0.1, objective="regression", queries=3)(model, rand_x(2, MLP_SHAPE))
    x5 = rand_x(2, (1, 2, 2, 3))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to(DTYPE).eval()
    with pytest.raises(ValueError, match="square attack"):
        get_attack("square", eps=0.1, queries=3)(flat, x5)


# ---------------------------------------------------------------------------- budget, box, queries, stopping


@pytest.mark.parametrize("p", [INF, 2.0])
@pytest.mark.parametrize("shape", [CONV_SHAPE, MLP_SHAPE, (2, 9)])
def test_result_in_budget_and_box(p, shape):
    torch.manual_seed(0)
    m = int(np.prod(shape))
    model = nn.Sequential(nn.Flatten(), nn.Linear(m, 5)).to(DTYPE).eval()
    x = rand_x(6, shape, seed=2)
    x[0].fill_(0.0)  # on a corner of the box: most proposals are clipped
    eps = EPS[p] * 3
    r = get_attack("square", p=p, eps=eps, seed=1, queries=60)(model, x)
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert (r.x_adv >= 0).all() and (r.x_adv <= 1).all()
    assert (np_norms(r.x_adv - x, p) <= eps * (1 + 1e-12)).all()
    assert (r.norms > 0).all()  # it did move every input
    # in another box too (per-call box)
    x2 = 2 * x - 1
    r2 = get_attack("square", p=p, eps=eps, seed=1, queries=60)(model, x2, box=(-1, 1))
    assert (r2.x_adv >= -1).all() and (r2.x_adv <= 1).all()
    assert (np_norms(r2.x_adv - x2, p) <= eps * (1 + 1e-12)).all()


@pytest.mark.parametrize("p", [INF, 2.0])
def test_zero_budget_returns_x_and_per_input_budgets(p):
    model = ConvNet().eval()
    x = rand_x(3, CONV_SHAPE, seed=5)
    r = get_attack("square", p=p, eps=0.0, seed=0, queries=20)(model, x)
    assert torch.equal(r.x_adv, x)
    # a budget per input: zero for the first, the others move and stay in their own ball
    eps = torch.tensor([0.0, 0.2, 0.4], dtype=DTYPE)
    r = get_attack("square", p=p, seed=0, queries=20)(model, x, eps=eps)
    assert torch.equal(r.x_adv[0], x[0]) and (r.norms[1:] > 0).all()
    assert (np_norms(r.x_adv - x, p) <= eps.numpy() * (1 + 1e-12)).all()


@pytest.mark.parametrize("p", [INF, 2.0])
def test_queries_within_budget_and_none_after_fooled(p):
    """The model sees the clean inputs once, then at most `queries` rows per input, none after the first that
    fools it, then the result once (the attack's final check)."""
    eps = EPS[p]
    x = rand_x(6, MLP_SHAPE, seed=4)

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (A, B) lp distances
        return torch.cdist(a.flatten(1), b.flatten(1), p=p)

    assert (dist(x, x) + 10 * torch.eye(6, dtype=DTYPE)).min() > 2 * eps  # each query is nearest its own input
    model = Recorder(MLP().eval())
    budget = 100
    r = get_attack("square", p=p, eps=eps, seed=0, queries=budget)(model, x)
    clean, final = model.batches[0], model.batches[-1]
    assert torch.equal(clean[0], x) and torch.equal(final[0], r.x_adv)
    label = clean[1]
    rows = torch.cat([b[0] for b in model.batches[1:-1]])
    preds = torch.cat([b[1] for b in model.batches[1:-1]])
    owner = dist(rows, x).argmin(dim=1)
    queries = torch.bincount(owner, minlength=6)
    assert (queries <= budget).all()
    assert torch.equal(queries, r.info["queries"]) and torch.equal(queries, r.steps)
    for i in range(6):
        fooled = (preds[owner == i] != label[i]).tolist()
        assert True not in fooled[:-1]  # no query after the first success
        assert fooled[-1] == bool(r.success[i])
        assert len(fooled) == (budget if not fooled[-1] else len(fooled))
    assert r.success.any() and not r.success.all()  # both cases were exercised
    assert (queries[r.success] < budget).all() and (queries[~r.success] == budget).all()


@pytest.mark.parametrize("p", [INF, 2.0])
def test_no_parameter_gradients_and_modes_restored(p):
    for mode in ("train", "mixed"):
        model = ConvNet().train()
        if mode == "mixed":
            model.bn.eval()
        m0 = modes(model)
        x = rand_x(3, CONV_SHAPE, seed=1)
        x0 = x.clone()
        get_attack("square", p=p, eps=EPS[p], seed=0, queries=30)(model, x)
        assert no_grads(model) and modes(model) == m0 and torch.equal(x, x0)


# ---------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("p", [INF, 2.0])
def test_seeded_runs_repeat_and_seeds_differ(p):
    model = ConvNet().eval()
    x = rand_x(4, CONV_SHAPE, seed=3)
    a = get_attack("square", p=p, eps=EPS[p], seed=7, queries=40)
    r1, r2 = a(model, x), a(model, x)
    assert torch.equal(r1.x_adv, r2.x_adv)
    r3 = a.replace(seed=8)(model, x)
    assert not torch.equal(r1.x_adv, r3.x_adv)


@pytest.mark.parametrize("p", [INF, 2.0])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_each_input_alone_in_any_batch(p, kind):
    """Input i's result depends on (seed, index[i]) only: alone, permuted, chunked, next to fooled inputs."""
    model, shape = (MLP(), MLP_SHAPE) if kind == "mlp" else (ConvNet(), CONV_SHAPE)
    model.eval()
    x = rand_x(4, shape, seed=1)
    attack = get_attack("square", p=p, eps=2 * EPS[p], seed=0, queries=40)
    r = attack(model, x)
    perm = torch.tensor([2, 0, 3, 1])
    rp = attack(model, x[perm], index=perm)
    torch.testing.assert_close(rp.x_adv, r.x_adv[perm], rtol=0, atol=1e-10)
    rc = attack.replace(batch_size=3)(model, x)
    torch.testing.assert_close(rc.x_adv, r.x_adv, rtol=0, atol=1e-10)
    for i in range(4):
        ri = attack(model, x[i : i + 1], index=torch.tensor([i]))
        torch.testing.assert_close(ri.x_adv[0], r.x_adv[i], rtol=0, atol=1e-10)
        assert torch.equal(ri.info["queries"][0], r.info["queries"][i])


# ---------------------------------------------------------------------------- it finds what exists


@pytest.mark.parametrize("p", [INF, 2.0])
def test_finds_the_adversarial_example_of_a_linear_classifier(p):
    """Logits [0, w.x + b]: the smallest perturbation that flips the class has lp norm |z| / norm_q(w).
    Inputs at 0.4 eps of it must be fooled; inputs at 1.05 eps cannot be, and are not."""
    shape, n = (1, 8, 8), 6
    w = torch.randn(64, generator=gen(0), dtype=DTYPE)
    q_norm = float(w.abs().sum()) if math.isinf(p) else float(w.norm())
    eps = EPS[p]
    x = rand_x(n, shape, seed=1)
    z0 = x.flatten(1) @ w
    dist = torch.tensor([0.4, 0.4, 0.4, 0.4, 1.05, 1.05], dtype=DTYPE) * eps
    sign = torch.tensor([1, -1, 1, -1, 1, -1], dtype=DTYPE)
    # one bias per input: put the whole batch through a model whose bias is read from a spare coordinate
    b = sign * dist * q_norm - z0

    class PerInputAffine(nn.Module):
        def forward(self, v):  # v: (N, 1, 8, 8) with the bias in a model-side table keyed by the clean input
            key = (v.flatten(1)[:, None] - x.flatten(1)[None]).abs().amax(-1).argmin(1)
            z = v.flatten(1) @ w + b[key]
            return torch.stack([torch.zeros_like(z), z], dim=1)

    r = get_attack("square", p=p, eps=eps, seed=0, queries=400, box=(-10, 10))(PerInputAffine(), x)
    assert r.success[:4].all()
    assert not r.success[4:].any()
    z_adv = r.x_adv.flatten(1) @ w + b
    assert (z_adv[:4] * sign[:4] < 0).all()
    assert (np_norms(r.x_adv - x, p) <= eps * (1 + 1e-12)).all()


def test_binary_affine_linf_small_margin():
    """The same on the shared BinaryAffine model: margin 0.3 eps norm_1(w) from the boundary."""
    w = torch.randn(36, generator=gen(5), dtype=DTYPE)
    x = rand_x(4, (1, 6, 6), seed=6)
    eps = 0.05
    model = BinaryAffine(w, 0.0)
    z = x.flatten(1) @ w
    model.b.data.fill_(float(0.3 * eps * w.abs().sum() - z[0]))  # input 0 at 0.3 eps from the boundary
    r = get_attack("square", eps=eps, seed=2, queries=300, box=(-10, 10))(model, x[:1])
    assert bool(r.success[0])
    assert int(r.info["queries"][0]) < 300


# ---------------------------------------------------------------------------- the proposals


def test_p_schedule_halves_at_the_papers_points():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 10, 10000) == 0.8 and p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 51, 10000) == 0.2
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512
    assert p_schedule(0.8, 500, 1000) == p_schedule(0.8, 5000, 10000) == 0.8 / 128  # rescaled to the budget


def test_window_sizes():
    assert window_size(0.8, 28, 28, l2=False) == (25, 25)
    assert window_size(0.8 / 512, 28, 28, l2=False) == (1, 1)
    assert window_size(0.8 / 512, 28, 28, l2=True) == (3, 3)
    assert window_size(0.1, 28, 28, l2=True) == (9, 9)  # round(8.85) = 9, odd
    assert window_size(0.05, 28, 28, l2=True) == (7, 7)  # round(6.26) = 6, made odd
    assert window_size(1.0, 6, 9, l2=False) == (6, 6)  # at most min(H, W)
    assert window_size(0.25, 1, 40, l2=False) == (1, 10)  # 1-D: a segment of p L
    assert window_size(0.25, 40, 1, l2=True) == (11, 1)


@pytest.mark.parametrize(("a", "b"), [(5, 5), (6, 6), (7, 4), (9, 1), (1, 1)])
def test_l2_tile(a, b):
    t = l2_tile(a, b)
    assert t.shape == (a, b)
    assert float(t.norm()) == pytest.approx(1.0)
    top, bottom = t[: a // 2], t[a // 2 :]
    assert (top >= 0).all() and (bottom < 0).all()
    if a > 1:  # the two halves carry the same energy
        assert float(top.norm()) == pytest.approx(float(bottom.norm()))
    # each half peaks at its centre and is symmetric where its width is odd
    c = bottom.shape[0] // 2, b // 2
    assert float(bottom.abs()[c]) == float(bottom.abs().max())
    if b % 2 == 1:
        torch.testing.assert_close(bottom, bottom.flip(1))
    # the rings: value at Chebyshev distance d from the centre is sum_{k>=d} 1/(k+1)^2 (up to the scale)
    if a == 6 and b == 6:
        ring = bottom.abs() / bottom.abs()[c]
        k = torch.arange(1, 5, dtype=DTYPE)  # the 3 x 6 half has 4 rings around (1, 3)
        tail = (1 / k**2).flip(0).cumsum(0).flip(0) / (1 / k**2).sum()
        assert float(ring[1, 3]) == pytest.approx(float(tail[0]))
        assert float(ring[0, 3]) == pytest.approx(float(tail[1]))
        assert float(ring[1, 1]) == pytest.approx(float(tail[2]))
        assert float(ring[0, 0]) == pytest.approx(float(tail[3]))


def _noise(n: int, seed: int = 0) -> Noise:
    return Noise.create(seed, n, "cpu")


def test_linf_start_is_vertical_stripes():
    x = rand_x(3, (2, 5, 7), seed=0, lo=0.2, hi=0.8)
    eps = torch.full((3,), 0.1, dtype=DTYPE)
    d = linf_start(x, eps, _noise(3), Box()) - x
    torch.testing.assert_close(d.abs(), torch.full_like(d, 0.1))
    assert torch.equal(d.sign(), d[:, :, :1].sign().expand_as(d))  # the same sign along each column
    assert (d > 0).any() and (d < 0).any()


def test_linf_step_sets_one_window():
    x = rand_x(8, (3, 10, 10), seed=0, lo=0.2, hi=0.8)
    eps = torch.full((8,), 0.1, dtype=DTYPE)
    noise = _noise(8)
    cur = linf_start(x, eps, noise, Box())
    p = 0.09  # side round(3) = 3
    new = linf_step(x, cur, eps, p, noise, Box())
    changed = (new != cur).any(dim=1)  # (N, H, W): pixels the step touched
    assert (new - x).abs().sub(0.1).abs().max() < 1e-12  # still on the l-inf sphere
    for i in range(8):
        rows, cols = changed[i].nonzero(as_tuple=True)
        assert rows.numel() > 0
        assert int(rows.max() - rows.min()) < 3 and int(cols.max() - cols.min()) < 3
    # per channel, the window holds one value of x + eps sigma_c
    win = (new - x)[changed[:, None].expand_as(new)]
    assert (win.abs() - 0.1).abs().max() < 1e-12


def test_linf_step_always_changes_a_one_pixel_window():
    """With 1 x 1 windows, half the draws would leave the point as it is: those are flipped."""
    x = rand_x(64, (1, 4, 4), seed=1, lo=0.2, hi=0.8)
    eps = torch.full((64,), 0.1, dtype=DTYPE)
    noise = _noise(64)
    cur = linf_start(x, eps, noise, Box())
    new = linf_step(x, cur, eps, 1e-4, noise, Box())
    assert ((new != cur).flatten(1).sum(dim=1) == 1).all()


@pytest.mark.parametrize("shape", [(3, 10, 10), (1, 28, 28), (2, 12), (30,)])
def test_l2_start_and_step_keep_norm_eps(shape):
    n = 5
    x = rand_x(n, shape, seed=2, lo=-100, hi=100)  # far from the box
    box = Box(-1000.0, 1000.0)
    eps = torch.linspace(0.5, 2.0, n, dtype=DTYPE)
    noise = _noise(n)
    cur = l2_start(x, eps, noise, box)
    torch.testing.assert_close((cur - x).flatten(1).norm(dim=1), eps)
    for _ in range(5):
        new = l2_step(x, cur, eps, 0.1, noise, box)
        torch.testing.assert_close((new - x).flatten(1).norm(dim=1), eps)
        assert not torch.equal(new, cur)
        cur = new


def test_l2_step_moves_mass_into_the_window():
    """Only the two windows change before the final rescaling to norm eps."""
    n = 6
    x = rand_x(n, (1, 12, 12), seed=3, lo=-100, hi=100)
    box = Box(-1000.0, 1000.0)
    eps = torch.ones(n, dtype=DTYPE)
    noise = _noise(n)
    cur = l2_start(x, eps, noise, box)
    new = l2_step(x, cur, eps, 0.06, noise, box)  # 3 x 3 windows (sqrt(0.06 * 144) = 2.9)
    d_old, d_new = (cur - x).flatten(1), (new - x).flatten(1)
    scale = (d_new / d_old).median(dim=1).values  # outside the windows (most pixels) new = scale * old
    moved = ((d_new - scale[:, None] * d_old).abs() > 1e-9).sum(dim=1)
    assert (moved > 0).all() and (moved <= 18).all()


@pytest.mark.parametrize("p", [INF, 2.0])
def test_without_the_stop_policy_fooled_inputs_are_still_not_queried(p):
    from pertattack.schedule import NeverStop

    model = MLP().eval()
    x = rand_x(4, MLP_SHAPE, seed=4)
    eps = 3 * EPS[p]  # large: every input is fooled early
    a = get_attack("square", p=p, eps=eps, seed=0, queries=30)
    r = a(model, x)
    r_all = a.replace(stop=NeverStop())(model, x)
    assert r.success.all()
    assert (r_all.steps == 30).all()  # the loop ran every step for every input ...
    assert torch.equal(r_all.info["queries"], r.info["queries"])  # ... but queried none once fooled
    torch.testing.assert_close(r_all.x_adv, r.x_adv, rtol=0, atol=0)


def test_command_line_run(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from pertattack.cli import main
    from pertattack.data import load_digits
    from pertattack.models import build_model
    from pertattack.training import load_model, save_model

    ckpt, npz = tmp_path / "cnn.pt", tmp_path / "adv.npz"
    save_model(ckpt, build_model("smallcnn", seed=1), "smallcnn")
    assert main(["run", "square", "--model", str(ckpt), "--data", "digits", "--n", "6", "--eps", "0.5",
                 "--set", "p=2", "queries=10", "--out", str(npz)]) == 0
    assert "fooling ratio" in capsys.readouterr().out
    x, y = load_digits("test")
    r = get_attack("square", p=2, queries=10, eps=0.5, seed=0)(load_model(ckpt), x[:6], y[:6])
    saved = np.load(npz)
    np.testing.assert_allclose(saved["x_adv"], r.x_adv.numpy(), rtol=0, atol=1e-6)
    assert (r.steps <= 10).all()


def test_pattern_and_schedule_agree_with_the_autoattack_code():
    """The authors' code (pyautoattack, when installed): the same l2 tile (up to its random transpose) and
    the same p at every step of a budget."""
    aa = pytest.importorskip("pyautoattack.square")
    ref = aa.SquareAttack(lambda v: v, norm="L2", eps=1.0, n_queries=1000, p_init=0.8, device="cpu")
    for s in (1, 2, 3, 4, 5, 9, 12, 25):
        e = ref.eta(s).double()
        t = l2_tile(s, s)
        assert min(float((e - t).abs().max()), float((e - t.T).abs().max())) < 1e-6
    assert all(p_schedule(0.8, i, 1000) == ref.p_selection(i) for i in range(1000))
