"""Speed contracts of the loop: no host-device synchronisation per step, no forward beyond the floor's."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import MLP, MLP_SHAPE, rand_x
from torch import nn

import pertattack
from pertattack import schedule

SYNCS = ("__bool__", "item", "nonzero", "tolist", "__int__", "__float__")


@pytest.fixture
def sync_counter(monkeypatch):
    """Counts the Tensor methods that make the host wait for the device (bool(t), .item(), nonzero, ...)."""
    counts: collections.Counter = collections.Counter()
    for name in SYNCS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


class Counting(nn.Module):
    """The model, counting forwards with and without autograd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad = self.nograd = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if out.requires_grad:
            self.grad += 1
        else:
            self.nograd += 1
        return out


class _NaN(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * float("nan")


def _data():
    torch.manual_seed(0)
    model = MLP().eval()
    x = rand_x(6, MLP_SHAPE, seed=1, lo=0.05, hi=0.95)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


@pytest.mark.parametrize("name", ["pgd", "bim", "alg1", "pgd-paper"])
def test_no_sync_per_step(name, sync_counter):
    """The number of synchronisations does not grow with the number of steps (checks before and after
    the loop only); with CUDA the same run must pass under torch.cuda.set_sync_debug_mode('error')."""
    model, x, y = _data()
    runs = {}
    for steps in (3, 12):
        attack = pertattack.get_attack(name, eps=0.1, steps=steps, seed=0)
        attack(model, x, y)  # warm-up (lazy imports, caches)
        sync_counter.clear()
        attack(model, x, y)
        runs[steps] = sum(sync_counter.values())
    assert runs[3] > 0  # the counter works: the checks before and after the loop synchronise
    # one sync per step would add 9; the final budget fit may take one more or less, depending on the data
    assert abs(runs[12] - runs[3]) <= 2, runs


@pytest.mark.parametrize("name, dtype, most", [("fgsm", torch.float64, 14), ("fgsm", torch.float32, 14),
                                              ("pgd", torch.float32, 15)])
def test_syncs_of_the_checks_around_the_loop(name, dtype, most, sync_counter):
    """The checks before and after the loop (box, eps, labels, scores, budget fit, success) wait for the device
    at most 14 times an FGSM call, 15 with PGD's random start (the first output's finiteness); scalar boxes,
    numeric eps and the score checks are read as numbers, or several at once (they were 23 and 24)."""
    model, x, y = _data()
    model, x = model.to(dtype), x.to(dtype)
    attack = pertattack.get_attack(name, eps=0.1, seed=0)
    attack(model, x, y)
    sync_counter.clear()
    attack(model, x, y)
    assert sum(sync_counter.values()) <= most, dict(sync_counter)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr"])
def test_early_stop_syncs_every_few_steps(name, sync_counter, monkeypatch):
    """On a GPU, APGD's early stop refreshes the inputs in play every SYNC_EVERY steps, not at every step (the
    CPU's interval set to the GPU's here; tests/test_cuda.py counts them on CUDA)."""
    monkeypatch.setattr(schedule, "SYNC_EVERY_CPU", schedule.SYNC_EVERY)
    model, x, y = _data()
    runs = {}
    for steps in (16, 48):
        attack = pertattack.get_attack(name, eps=0.01, steps=steps, seed=0)  # eps small: few inputs fooled
        attack(model, x, y)
        sync_counter.clear()
        attack(model, x, y)
        runs[steps] = sum(sync_counter.values())
    refreshes = (48 - 16) // schedule.SYNC_EVERY
    assert runs[48] - runs[16] <= refreshes + 2, runs  # one nonzero() per refresh (3 per step before)


@pytest.mark.parametrize("every", [3, 8])
@pytest.mark.parametrize("name, kw", [("apgd-ce", {"steps": 30}), ("apgd-dlr", {"steps": 30}),
                                      ("apgd-ce", {"steps": 30, "p": 2.0, "eps": 0.5}),
                                      ("square", {"queries": 60}), ("deepfool", {"eps": None, "steps": 2}),
                                      ("apgd-t", {"steps": 12})])
def test_early_stop_results_do_not_depend_on_the_sync_interval(name, kw, every, monkeypatch):
    """Inputs done between two refreshes get gradients but stay frozen and unobserved: the same results."""
    torch.manual_seed(0)
    model = MLP().eval()
    x = rand_x(24, MLP_SHAPE, seed=3, lo=0.05, hi=0.95)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    kw = {"eps": 0.15, **kw}
    ref = pertattack.get_attack(name, seed=0, **kw)(model, x, y)
    assert 0 < int(ref.success.sum()) < len(x)  # some inputs stop early, some run to the end
    monkeypatch.setattr(schedule, "SYNC_EVERY_CPU", every)
    other = pertattack.get_attack(name, seed=0, **kw)(model, x, y)
    torch.testing.assert_close(other.x_adv, ref.x_adv, rtol=0, atol=1e-12)
    assert torch.equal(other.success, ref.success)
    assert torch.equal(other.steps, ref.steps)


@pytest.mark.parametrize("name, steps, nograd", [("fgsm", 1, 1), ("bim", 10, 1), ("alg1-5", 5, 1), ("pgd", 40, 2)])
def test_forwards_with_labels_given(name, steps, nograd):
    """With labels: one forward with autograd per step, and one no-grad forward, the success check; an
    attack whose first forward is not at x (pgd's random start) adds one no-grad forward at x, which
    validates the scores there (a model NaN only at x is an error, issue 18), in the same single sync."""
    model, x, y = _data()
    counting = Counting(model)
    pertattack.get_attack(name, eps=0.1, seed=0)(counting, x, y)
    assert counting.grad == steps
    assert counting.nograd == nograd


class _NaNAt(torch.nn.Module):
    """NaN exactly at the clean inputs ``x0`` and finite elsewhere (``at_x``; a random start's first forward is
    then finite), or the other way round."""

    def __init__(self, base, x0, at_x: bool):
        super().__init__()
        self.base, self.x0, self.at_x = base, x0, at_x

    def forward(self, z):
        out = self.base(z)
        hit = (z == self.x0).reshape(z.shape[0], -1).all(dim=1, keepdim=True)
        nan = torch.full_like(out, float("nan"))
        return torch.where(hit, nan, out) if self.at_x else torch.where(hit, out, nan)


def test_random_start_tells_nan_at_x_from_nan_elsewhere():
    """A model NaN at x is an error, and one NaN at the random start only (finite at x) is not: f(x) is
    computed (no graph) when the first forward is elsewhere, and decides."""
    model, x, y = _data()

    class NaNEverywhere(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, z):
            return self.base(z) * float("nan")

    pgd = pertattack.get_attack("pgd", eps=0.1, steps=2, seed=0)
    with pytest.raises(ValueError, match="clean inputs contains NaN"):
        pgd(NaNEverywhere(model), x, y)
    with pytest.warns(UserWarning, match="NaN"):
        res = pgd(_NaNAt(model, x, at_x=False), x, y)
    assert not bool(res.success.any())
    assert torch.equal(res.x_adv, x)  # returned unperturbed, marked failed


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "auto", "fgsm"])
def test_a_model_nan_only_at_x_is_an_error_under_a_random_start(name):
    """Issue 18: the README's promise (NaN at x is an error) held only where the first forward was at x."""
    model, x, y = _data()
    attack = pertattack.get_attack(name, eps=0.1, steps=2, seed=0) if name != "auto" else \
        pertattack.get_attack(name, eps=0.1, seed=0)
    with pytest.raises(ValueError, match="clean inputs contains NaN"):
        attack(_NaNAt(model, x, at_x=True), x, y)


def test_fgsm_without_labels_takes_two_extra_forwards():
    model, x, _ = _data()
    counting = Counting(model)
    pertattack.get_attack("fgsm", eps=0.1)(counting, x)
    assert (counting.grad, counting.nograd) == (1, 2)  # the prediction, the step, the success check


def test_labels_still_checked_without_the_clean_forward():
    model, x, y = _data()
    fgsm = pertattack.get_attack("fgsm", eps=0.1)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\]"):
        fgsm(model, x, torch.full_like(y, 7))
    with pytest.raises(TypeError, match="integer class indices"):
        fgsm(model, x, y.float())
    with pytest.raises(ValueError, match="y must have shape"):
        fgsm(model, x, y[:3])
    nan_model = _NaN(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        fgsm(nan_model, x, y)


def test_loop_free_directions_equal_the_box_ones():
    from pertattack.constraints import Box
    from pertattack.schedule import _ResolvedBox

    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 1.0]])
    g = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, float("nan"), float("nan")]])
    box = Box(0.0, 1.0)
    want = box.free_directions(g, x)
    got = _ResolvedBox.of(box, x).free_directions(g, x)
    assert torch.equal(want.isnan(), got.isnan())
    assert torch.equal(want.nan_to_num(7.0), got.nan_to_num(7.0))
    assert want[0, :8].tolist() == [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradient_detected_at_a_later_step(dtype, bad):
    """The loop's cheap NaN/inf accumulation (L + 0 max abs(g), summed with weight 0) flags an input whose
    gradient is not finite at one step only, and no other input; finite gradients up to the dtype's largest
    value are not flagged."""
    big = torch.finfo(dtype).max / 4

    class Spiky(torch.nn.Module):  # scores linear in x; the gradient of input 1 is `bad` at the 3rd call
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.w = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=dtype).reshape(4, 3), requires_grad=False)

        def forward(self, z):
            self.calls += 1
            out = z.reshape(z.shape[0], -1) @ self.w.T
            if torch.is_grad_enabled() and self.calls == 3:
                scale = torch.ones_like(out)
                scale[1] = bad
                scale[2] = big  # finite, huge: not flagged
                out = out.detach() + (out - out.detach()) * scale
            return out

    x = torch.full((4, 3), 0.5, dtype=dtype)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.warns(UserWarning, match=r"NaN or inf .* inputs \[1\]"):
        res = pertattack.get_attack("bim", eps=0.1, steps=5)(Spiky(), x, y)
    assert torch.equal(res.x_adv[1], x[1])
    assert not bool(res.success[1])
