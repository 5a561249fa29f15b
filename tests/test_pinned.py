"""Every preset's results pinned: refactors of the parts must not change what an attack returns.

The reference arrays in ``tests/data/pinned.npz`` were written by this module
(``PERTATTACK_WRITE_PINS=1 python -m pytest tests/test_pinned.py``) before the parts became objects.
Deterministic presets are pinned exactly; seeded random presets at a fixed seed (their draws come from
:mod:`pertattack.noise`). A change that alters a pinned result must say why in its commit and rewrite the
pins in a commit of its own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONV_SHAPE, MLP, MLP_SHAPE, ConvNet, rand_x

import pertattack

PINS = Path(__file__).parent / "data" / "pinned.npz"
INF = math.inf

# name, p, eps (None: minimum norm), model
CASES = [
    ("fgsm", INF, 0.1), ("fgsm", 2.0, 0.5), ("bim", INF, 0.1), ("bim", 1.0, 1.0), ("pgd", INF, 0.1),
    ("pgd", 2.0, 0.5), ("pgd", 1.0, 1.0), ("pgd-paper", INF, 0.1), ("alg1", INF, 0.1), ("alg1", 1.5, 0.5),
    ("alg1-5", INF, 0.1), ("alg1-5", 2.0, 0.5), ("alg2", INF, 0.1), ("targeted", INF, 0.2),
    ("transfer", INF, 0.1), ("random", INF, 0.1), ("random-l2", 2.0, 0.5),
    ("deepfool", 2.0, None), ("deepfool", INF, None), ("deepfool", 1.0, None), ("deepfool", 2.0, 0.3),
    ("quadratic-l2", 2.0, 0.5), ("quadratic-l1", 1.0, 0.5), ("quadratic-linf", INF, 0.05),
    ("quadratic-pixel", INF, 0.2), ("linear-l2-3", 2.0, 0.5), ("linear-linf-3", INF, 0.05),
    ("linear-pixel-3", INF, 0.2), ("rand-l2", 2.0, 0.5), ("rand-linf", INF, 0.05), ("rand-pixel-3", INF, 0.2),
    # pinned after the refactor, when they were added
    ("square", INF, 0.1), ("square", 2.0, 0.5), ("apgd-ce", INF, 0.1), ("apgd-dlr", 2.0, 0.5), ("fmn", INF, None),
    ("ddn", 2.0, None),
]


def _case_id(c: tuple) -> str:
    return f"{c[0]}-p{c[1]:g}-eps{c[2]}"


def _run(name: str, p: float, eps: float | None) -> torch.Tensor:
    torch.manual_seed(0)
    regression = name.startswith(("quadratic", "linear", "rand-"))
    model = (ConvNet() if regression or name == "deepfool" else MLP()).eval()
    shape = CONV_SHAPE if isinstance(model, ConvNet) else MLP_SHAPE
    x = rand_x(4, shape, seed=11, lo=0.05, hi=0.95)
    kw = {} if eps is None else {"eps": eps}
    extra = {}
    if name == "transfer":
        extra["surrogate"] = MLP().eval()
    attack = pertattack.get_attack(name, p=p, seed=3, **kw, **extra)
    if regression:
        return attack(model, x).x_adv  # the 3 class scores as a regression output
    with torch.no_grad():
        out = model(x)
    y = out.argmax(dim=1)
    target = (y + 1) % out.shape[1] if name == "targeted" else None
    return attack(model, x, y, target=target).x_adv


def test_pins_exist_for_every_case():
    if os.environ.get("PERTATTACK_WRITE_PINS"):
        np.savez_compressed(PINS, **{_case_id(c): _run(*c).numpy() for c in CASES})
    pins = np.load(PINS)
    assert sorted(pins.files) == sorted(_case_id(c) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_preset_result_is_pinned(case):
    want = np.load(PINS)[_case_id(case)]
    got = _run(*case).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
