"""Metrics: fooling ratio and curve, rho2, robustness (Table 3), PSNR."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import DTYPE, MLP, MLP_SHAPE, BinaryAffine, ConvNet, gen, modes, rand_x
from torch import nn

from pertattack import (
    UndefinedMetricWarning,
    evaluate,
    fooling_curve,
    fooling_ratio,
    get_attack,
    predict,
    psnr,
    rho2,
    robustness,
)
from pertattack.constraints import LpBall, lp_norm

INF = math.inf


# ---------------------------------------------------------------------------- fooling ratio


def threshold_model() -> BinaryAffine:
    """Class 1 iff x_0 > 0.5 (inputs of 2 coordinates)."""
    return BinaryAffine(torch.tensor([1.0, 0.0]), -0.5)


def test_fooling_ratio_counts_correctly_classified_inputs_only():
    model = threshold_model()
    x = torch.tensor([[0.2, 0.0], [0.8, 0.0], [0.3, 0.0], [0.9, 0.0], [0.1, 0.0]], dtype=DTYPE)
    y = torch.tensor([0, 1, 1, 1, 1])  # predictions 0 1 0 1 0: inputs 2 and 4 are misclassified
    x_adv = torch.tensor([[0.7, 0.0],   # correct -> fooled
                          [0.9, 0.0],   # correct -> still correct
                          [0.6, 0.0],   # misclassified -> now "correct": does not count either way
                          [0.1, 0.0],   # correct -> fooled
                          [0.2, 0.0]],  # misclassified -> still wrong: not a fooled input
                         dtype=DTYPE)
    assert fooling_ratio(model, x, x_adv, y) == pytest.approx(2 / 3)
    assert fooling_ratio(model, x, x, y) == 0.0
    # the naive share of wrong outputs on x_adv would be 3/5
    assert float((predict(model, x_adv) != y).double().mean()) == pytest.approx(3 / 5)


def test_fooling_ratio_undefined_without_correct_inputs():
    model = threshold_model()
    x = torch.tensor([[0.2, 0.0], [0.8, 0.0]], dtype=DTYPE)
    with pytest.warns(UndefinedMetricWarning, match="no input is classified correctly"):
        assert math.isnan(fooling_ratio(model, x, x, torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="differ in shape"):
        fooling_ratio(model, x, x[:1], torch.tensor([0, 1]))


def test_fooling_ratio_with_preprocess():
    model = threshold_model()
    x = torch.tensor([[0.2, 0.0], [0.8, 0.0]], dtype=DTYPE)
    y = torch.tensor([0, 1])
    x_adv = torch.tensor([[0.6, 0.0], [0.8, 0.0]], dtype=DTYPE)
    # raw: class 1 iff x_0 > 0.5, input 0 is fooled
    assert fooling_ratio(model, x, x_adv, y) == pytest.approx(0.5)
    # the model sees 2 x - 1: class 1 iff x_0 > 0.75, nothing is fooled
    assert fooling_ratio(model, x, x_adv, y, preprocess=(0.5, 0.5)) == 0.0


def test_metrics_accept_the_result_for_x_adv():
    """issue 18: fooling_ratio(model, x, res, y) failed with AttributeError 'shape'."""
    model = MLP().to(DTYPE).eval()
    x = rand_x(6, MLP_SHAPE, seed=0)
    y = predict(model, x)
    res = get_attack("pgd", eps=0.3, steps=5, seed=0)(model, x, y)
    assert fooling_ratio(model, x, res, y) == fooling_ratio(model, x, res.x_adv, y)
    assert torch.equal(psnr(res, x), psnr(res.x_adv, x))


def test_predict_restores_mode_and_batches():
    model = ConvNet()
    model.train()
    model.bn.eval()
    m0 = modes(model)
    x = rand_x(7, (2, 6, 6), seed=0)
    p1 = predict(model, x, batch_size=3)
    assert modes(model) == m0
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert torch.equal(p1, ref(x).argmax(dim=1))


# ---------------------------------------------------------------------------- fooling curve


def test_fooling_curve_of_deepfool_is_its_projected_result_per_eps():
    # one rule for every attack: fooled at eps when the model misclassifies x_adv in the eps ball. On an
    # affine model DeepFool's norm is 1.02 d: projected on a ball of radius just above d it still fools,
    # so the curve reaches an input at eps slightly below its own norm, never below d.
    w = torch.randn(12, generator=gen(0), dtype=DTYPE)
    model = BinaryAffine(w, 0.1)
    x = rand_x(20, MLP_SHAPE, seed=1, lo=-1, hi=1)
    y = predict(model, x)
    y[:3] = 1 - y[:3]  # three misclassified inputs: never counted
    d = (x @ w + 0.1).abs() / w.norm()
    grid = sorted({float(v) for v in d * 1.01} | {float(v) for v in d * 0.99} | {0.0, 10.0})
    df = get_attack("deepfool", box=(-10, 10))
    correct = predict(model, x) == y
    per_eps = df(model, x, y, eps=grid)
    want = [int((r.success & correct).sum()) / int(correct.sum()) for r in per_eps]
    got = fooling_curve(model, x, y, df, grid)
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == 0.0 and got[-1] == 1.0
    # the exact affine distance d decides: fooled at 1.01 d (norm 1.02 d projected), not at 0.99 d
    for e, g in zip(grid, got, strict=True):
        assert g == pytest.approx(float((d[correct] < e).sum()) / float(correct.sum()), abs=1e-6)


def test_fooling_curve_of_deepfool_on_a_small_network():
    model = MLP().eval()
    x = rand_x(30, MLP_SHAPE, seed=2)
    y = predict(model, x)
    y[::7] = (y[::7] + 1) % 4
    grid = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 2.0]
    per_eps = get_attack("deepfool", p=2.0)(model, x, y, eps=grid)
    free = get_attack("deepfool", p=2.0)(model, x, y)
    correct = predict(model, x) == y
    want = [int((r.success & correct).sum()) / int(correct.sum()) for r in per_eps]
    got = fooling_curve(model, x, y, "deepfool", grid, p=2.0)
    assert got == pytest.approx(want, abs=1e-12)
    # at least every input whose minimal perturbation fits in the ball
    lower = [int((free.success & correct & (free.norms <= e)).sum()) / int(correct.sum()) for e in grid]
    assert all(g >= lo - 1e-12 for g, lo in zip(got, lower, strict=True))


def test_fooling_curve_of_a_bounded_attack_is_the_fooling_ratio_per_eps():
    model = MLP().eval()
    x = rand_x(20, MLP_SHAPE, seed=3)
    y = predict(model, x)
    y[::5] = (y[::5] + 1) % 4
    grid = [0.0, 0.05, 0.2]
    curve = fooling_curve(model, x, y, "alg1-3", grid)
    for e, c in zip(grid, curve, strict=True):
        r = get_attack("alg1-3", eps=e)(model, x, y)
        assert c == pytest.approx(fooling_ratio(model, x, r.x_adv, y), abs=1e-12)
    assert curve[0] == 0.0
    assert curve == sorted(curve)  # more budget, not fewer fooled (here)


# ---------------------------------------------------------------------------- rho2, robustness


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, INF])
def test_rho2_is_the_distance_to_an_affine_boundary(p):
    w = torch.randn(12, generator=gen(4), dtype=DTYPE)
    model = BinaryAffine(w, -0.2)
    x = rand_x(10, MLP_SHAPE, seed=5, lo=-1, hi=1)
    z = x @ w - 0.2
    want = z.abs() / lp_norm(w[None], LpBall(p).q)
    np.testing.assert_allclose(rho2(model, x, p=p).numpy(), want.numpy(), rtol=1e-10)
    y = (z > 0).long()
    y[:2] = 1 - y[:2]  # misclassified: distance 0
    r = rho2(model, x, y, p=p)
    assert (r[:2] == 0).all()
    np.testing.assert_allclose(r[2:].numpy(), want[2:].numpy(), rtol=1e-10)


def test_rho2_on_a_network_is_margin_over_dual_norm():
    model = MLP().eval()
    x = rand_x(5, MLP_SHAPE, seed=6)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    k = out.argmax(dim=1)
    top2 = out.topk(2, dim=1).values
    (g,) = torch.autograd.grad((top2[:, 0] - top2[:, 1]).sum(), xg)
    margin = (top2[:, 0] - top2[:, 1]).detach()
    for p in (2.0, INF):
        want = margin / lp_norm(g, LpBall(p).q)
        torch.testing.assert_close(rho2(model, x, k, p=p), want, rtol=1e-10, atol=0)
    assert all(prm.grad is None for prm in model.parameters())


@pytest.mark.parametrize("p", [2.0, INF])
def test_robustness_table_row(p):
    model = MLP().eval()
    x = rand_x(60, MLP_SHAPE, seed=7)
    y = predict(model, x)
    y[::10] = (y[::10] + 1) % 4  # 6 misclassified
    row = robustness(model, x, y, p=p, batch_size=25)
    assert set(row) >= {"test_error", "rho1", "rho2", "eps_99", "deepfool_success"}
    assert row["test_error"] == pytest.approx(float((predict(model, x) != y).double().mean()))
    assert row["test_error"] == pytest.approx(0.1)
    # by hand from DeepFool's own norms
    res = get_attack("deepfool", p=p, batch_size=25)(model, x, y)  # the same call as robustness()
    correct = predict(model, x) == y
    ok = res.success[correct]
    norms = res.norms[correct]
    assert row["deepfool_success"] == pytest.approx(float(ok.double().mean()))
    n = int(correct.sum())
    eps99 = row["eps_99"]
    fooled_at = lambda e: int((ok & (norms <= e)).sum())  # noqa: E731
    assert fooled_at(eps99) > 0.99 * n  # more than 99% fooled at eps_99 ...
    smaller = norms[ok & (norms < eps99)]
    if smaller.numel():  # ... and not at any smaller DeepFool norm
        assert fooled_at(float(smaller.max())) <= 0.99 * n
    assert eps99 in set(norms[ok].tolist())
    rho1 = (norms / lp_norm(x[correct], p))[ok].mean()
    assert row["rho1"] == pytest.approx(float(rho1), rel=1e-10)
    assert row["rho2"] == pytest.approx(float(rho2(model, x[correct], y[correct], p=p).mean()), rel=1e-10)
    assert 0 < row["rho2"] < math.inf and 0 < row["rho1"] < math.inf


def _one_warning(record) -> str:
    """The single warning recorded: an UndefinedMetricWarning; its message."""
    assert [w.category for w in record] == [UndefinedMetricWarning]
    return str(record[0].message)


def test_nothing_to_measure_is_nan_with_one_warning_for_every_metric():
    """No input classified correctly: every metric that counts only those inputs is NaN, with exactly one
    UndefinedMetricWarning per call, never 0.0 ("perfectly robust")."""
    model = threshold_model()
    x = torch.tensor([[0.2, 0.0], [0.8, 0.0]], dtype=DTYPE)
    wrong = torch.tensor([1, 0])
    eps = [0.0, 0.5]
    cases = {
        "fooling_ratio": lambda: [fooling_ratio(model, x, x, wrong)],
        "fooling_curve deepfool": lambda: fooling_curve(model, x, wrong, "deepfool", eps),
        "fooling_curve fgsm": lambda: fooling_curve(model, x, wrong, "fgsm", eps),
        "evaluate": lambda: evaluate(model, [(x, wrong)], "fgsm", eps)["fooling_ratio"],
        "robustness": lambda: [v for k, v in robustness(model, x, wrong).items() if k != "test_error"],
    }
    for name, call in cases.items():
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            values = call()
        assert values and all(math.isnan(v) for v in values), name
        assert "undefined (NaN)" in _one_warning(record), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert robustness(model, x, wrong)["test_error"] == 1.0
        res = evaluate(model, [(x, wrong)], "fgsm", eps)
    assert res["clean_accuracy"] == 0.0 and res["robust_accuracy"] == [0.0, 0.0]  # still defined


def test_rho1_undefined_when_deepfool_fools_nothing():
    model = BinaryAffine(torch.zeros(2), 1.0)  # constant logits [0, 1]: always class 1, a zero gradient
    x = torch.tensor([[0.9, 0.0]], dtype=DTYPE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        row = robustness(model, x, torch.tensor([1]))
    assert row["deepfool_success"] == 0.0 and row["test_error"] == 0.0 and row["eps_99"] == math.inf
    assert row["rho2"] == math.inf  # a zero gradient: no first-order path to the boundary (was 1e12)
    assert rho2(model, x, torch.tensor([0])).tolist() == [0.0]  # misclassified: 0, even with a zero gradient
    assert math.isnan(row["rho1"])
    undefined = [str(w.message) for w in record if w.category is UndefinedMetricWarning]
    assert len(undefined) == 1 and "DeepFool fooled no" in undefined[0]


def test_empty_input_is_an_error_not_a_measurement():
    model = threshold_model()
    empty = torch.zeros(0, 2, dtype=DTYPE)
    y = torch.zeros(0, dtype=torch.long)
    for call in (lambda: fooling_ratio(model, empty, empty, y), lambda: fooling_curve(model, empty, y, "fgsm", [0.1]),
                 lambda: robustness(model, empty, y), lambda: evaluate(model, [], "fgsm", [0.1])):
        with pytest.raises(ValueError, match="no (inputs|data)"):
            call()


# ---------------------------------------------------------------------------- PSNR


def test_psnr_against_numpy():
    a = torch.rand(4, 3, 5, 5, generator=gen(9), dtype=DTYPE)
    b = (a + 0.05 * torch.randn(4, 3, 5, 5, generator=gen(10), dtype=DTYPE)).clamp(0, 1)
    for peak in (1.0, 2.0, 255.0):
        an, bn = a.numpy().reshape(4, -1), b.numpy().reshape(4, -1)
        want = 10 * np.log10(peak**2 / ((an - bn) ** 2).mean(axis=1))
        np.testing.assert_allclose(psnr(a, b, peak).numpy(), want, rtol=1e-12)
    assert psnr(a, b).shape == (4,)
    same = psnr(a, a)
    assert torch.isinf(same).all() and (same > 0).all()
    f32 = psnr(a.float(), b.float())
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), psnr(a, b).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, b[:2])


def test_psnr_known_value():
    a = torch.zeros(1, 100, dtype=DTYPE)
    b = torch.full((1, 100), 0.1, dtype=DTYPE)  # MSE 0.01 -> 20 dB
    assert float(psnr(a, b)) == pytest.approx(20.0)
    assert float(psnr(a, b, peak=10.0)) == pytest.approx(40.0)


def test_metrics_accept_wrapped_models():
    net = MLP().eval()
    model = nn.Sequential(net)
    x = rand_x(4, MLP_SHAPE, seed=11)
    assert torch.equal(predict(model, x), predict(net, x))


@pytest.mark.parametrize(("name", "kw"), [("alg1-3", {}), ("deepfool", {"p": INF})])
def test_evaluate_streams_batches_like_one_call(name, kw):
    model = MLP().eval()
    x = rand_x(30, MLP_SHAPE, seed=11)
    y = predict(model, x)
    y[::7] = (y[::7] + 1) % 4
    eps = [0.0, 0.1, 0.3]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    res = evaluate(model, loader, name, eps, **kw)
    correct = predict(model, x) == y
    assert res["n"] == 30 and res["clean_accuracy"] == pytest.approx(float(correct.double().mean()))
    curve = fooling_curve(model, x, y, name, eps, **kw)
    np.testing.assert_allclose(res["fooling_ratio"], curve, atol=1e-12)
    n_c = int(correct.sum())
    np.testing.assert_allclose(res["robust_accuracy"], [(n_c - f * n_c) / 30 for f in curve], atol=1e-12)
    assert res["fooling_ratio"][0] == 0.0
    with pytest.raises(ValueError, match="no data"):
        evaluate(model, [], name, eps, **kw)


def test_metric_arguments_are_checked():
    model = threshold_model()
    x = torch.tensor([[0.2, 0.0], [0.8, 0.0]], dtype=DTYPE)
    y = torch.tensor([0, 1])
    for bs in (0, -1, 1.5):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            predict(model, x, batch_size=bs)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        robustness(model, x, y, batch_size=0)
    for grid in ([], 0.1, "0.1"):
        with pytest.raises(ValueError, match="eps must be a non-empty sequence"):
            fooling_curve(model, x, y, "fgsm", grid)
    with pytest.raises(ValueError, match="eps must be a non-empty sequence"):
        evaluate(model, [(x, y)], "fgsm", [])


def test_evaluate_seed_is_per_input():
    """pgd draws a random start: with seed=, the figures do not depend on how the data are batched,
    and equal one call on the whole set (inputs numbered in the order the data yield them)."""
    model = MLP().eval()
    x = rand_x(30, MLP_SHAPE, seed=12)
    y = predict(model, x)
    eps = [0.05, 0.2]
    kw = dict(steps=3)
    runs = [evaluate(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs), "pgd",
                     eps, seed=3, **kw) for bs in (7, 30)]
    assert runs[0] == runs[1]
    np.testing.assert_allclose(runs[0]["fooling_ratio"], fooling_curve(model, x, y, "pgd", eps, seed=3, **kw),
                               atol=1e-6)
