"""The CUDA path: the same results as on the CPU, no host-device sync per step, ``evaluate --device cuda``.

Skipped where CUDA is not available (CI has no GPU); run them on a GPU machine with
``pytest tests/test_cuda.py``. Float64 models: the CPU and the GPU differ only by the order of their sums.
"""

from __future__ import annotations

import copy
import csv
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import CONV_SHAPE, ConvNet, no_grads, rand_x

import pertattack
from pertattack import schedule
from pertattack.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

INF = math.inf
#: (preset, keywords, eps): eps None for the minimum-norm attacks
CASES = [
    ("fgsm", {}, 0.1),
    ("bim", {}, 0.1),
    ("pgd", {"steps": 10}, 0.1),
    ("pgd-paper", {}, 0.1),
    ("alg1-10", {}, 0.1),
    ("apgd-ce", {"steps": 20}, 0.1),
    ("apgd-dlr", {"steps": 20}, 0.1),
    ("apgd-ce", {"steps": 20, "p": 2.0}, 0.5),
    ("square", {"queries": 50}, 0.1),
    ("random", {}, 0.1),
    ("deepfool", {}, None),
    ("deepfool", {"p": INF}, None),
    ("fmn", {"steps": 20}, None),
    ("ddn", {"steps": 20}, None),
]


def _problem():
    model = ConvNet().eval()
    x = rand_x(8, CONV_SHAPE, seed=1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("name, kw, eps", CASES, ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_same_result_as_on_the_cpu(name, kw, eps):
    model, x, y = _problem()
    cpu = pertattack.get_attack(name, seed=0, **kw)(model, x, y, eps=eps)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = pertattack.get_attack(name, seed=0, **kw)(gpu_model, x.cuda(), y.cuda(), eps=eps)
    assert gpu.x_adv.is_cuda and gpu.success.is_cuda
    assert no_grads(gpu_model) and not gpu_model.training
    np.testing.assert_allclose(gpu.x_adv.cpu().numpy(), cpu.x_adv.numpy(), rtol=0, atol=1e-9)
    assert torch.equal(gpu.success.cpu(), cpu.success)
    assert torch.equal(gpu.steps.cpu(), cpu.steps)


@pytest.mark.parametrize("p", [2.0, INF])
def test_deepfool_takes_the_batched_backward_on_cuda(p):
    """On CUDA the default is one vmapped backward; the loop of backwards gives the same attack."""
    model, x, y = _problem()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    runs = [pertattack.get_attack("deepfool", p=p, batched_backward=b)(model, x, y) for b in (None, False, True)]
    for r in runs[1:]:
        np.testing.assert_allclose(r.x_adv.cpu().numpy(), runs[0].x_adv.cpu().numpy(), rtol=0, atol=1e-12)


def _syncs(run) -> int:
    """How many synchronising CUDA calls ``run()`` makes (torch.cuda.set_sync_debug_mode('warn'))."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _syncs_by_steps(name: str, eps: float, steps: tuple[int, ...]) -> dict[int, int]:
    """The syncs of one warm call of preset ``name`` on CUDA, for each number of steps."""
    model, x, y = _problem()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    counts = {}
    for t in steps:
        attack = pertattack.get_attack(name, eps=eps, steps=t, seed=0)
        attack(model, x, y)  # warm-up
        counts[t] = _syncs(lambda a=attack: a(model, x, y))
    return counts


@pytest.mark.parametrize("name", ["pgd", "bim", "alg1", "pgd-paper"])
def test_no_sync_per_step(name):
    """The synchronisations do not grow with the number of steps: before and after the loop only."""
    counts = _syncs_by_steps(name, 0.1, (4, 16))
    assert counts[4] > 0  # the counter works: the checks before and after the loop synchronise
    assert counts[16] - counts[4] <= 2, counts


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr"])
def test_early_stop_syncs_every_few_steps(name):
    """APGD's early stop refreshes the inputs in play every SYNC_EVERY steps on CUDA, not at every step."""
    counts = _syncs_by_steps(name, 0.01, (16, 48))  # eps small: few inputs fooled
    assert counts[48] - counts[16] <= (48 - 16) // schedule.SYNC_EVERY + 2, counts


def test_evaluate_on_cuda_gives_the_cpu_rows(tmp_path):
    rows = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["evaluate", "--model", "eval_callables:centroids", "--data", "eval_callables:digits_test",
                     "--attack", "pgd,deepfool,apgd-ce", "--eps", "0.05,0.2", "--set", "steps=5",
                     "--batch-size", "32", "--device", device, "--out", str(out), "--no-progress"]) == 0
        with open(out / "results.csv") as f:
            rows[device] = list(csv.DictReader(f))
    assert len(rows["cuda"]) == len(rows["cpu"]) == 96 * 3 * 2
    for a, b in zip(rows["cpu"], rows["cuda"], strict=True):
        for key in a:
            try:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6, abs=1e-9), (key, a, b)
            except ValueError:
                assert b[key] == a[key], (key, a, b)
