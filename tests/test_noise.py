"""Per-input counter-based random numbers (noise.py)."""

from __future__ import annotations

import pytest
import torch

from pertattack.noise import Noise, _mix

M64 = (1 << 64) - 1


def splitmix_finaliser(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def test_tensor_hash_equals_the_integer_reference():
    vals = [0, 1, 12345, 2**63 - 1, -5, -(2**63), 2**62 + 7]
    got = _mix(torch.tensor(vals, dtype=torch.int64)).tolist()
    assert [g & M64 for g in got] == [splitmix_finaliser(v) for v in vals]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_uniform_in_unit_interval_and_spread(dtype):
    u = Noise.create(3, 4, "cpu").uniform(20000, dtype)
    assert u.dtype == dtype and u.shape == (4, 20000)
    assert (u >= 0).all() and (u < 1).all()
    assert u.double().mean(dim=1).sub(0.5).abs().max() < 0.01
    assert u.double().var(dim=1).sub(1 / 12).abs().max() < 0.003


def test_rows_depend_on_seed_and_index_only():
    a = Noise.create(7, 5, "cpu")
    ua = [a.uniform(50), a.uniform(30)]
    b = Noise.create(7, 2, "cpu", index=torch.tensor([4, 1]))
    ub = [b.uniform(50), b.uniform(30)]
    for x, y in zip(ua, ub, strict=True):
        assert torch.equal(y, x[[4, 1]])
    assert not torch.equal(ua[0][0], ua[0][1])  # different inputs, different numbers
    assert not torch.equal(Noise.create(8, 5, "cpu").uniform(50), ua[0])  # different seed
    rows = Noise.create(7, 5, "cpu")
    assert torch.equal(rows.uniform(50, rows=torch.tensor([3])), ua[0][3:4])


def test_gaussian_moments():
    g = Noise.create(1, 3, "cpu").gaussian_like(torch.zeros(3, 50000, dtype=torch.float64))
    assert g.mean(dim=1).abs().max() < 0.02
    assert g.std(dim=1).sub(1).abs().max() < 0.02
    assert torch.isfinite(g).all()


def test_unseeded_stream_follows_the_global_generator():
    torch.manual_seed(0)
    a = Noise.create(None, 2, "cpu").uniform(10)
    torch.manual_seed(0)
    b = Noise.create(None, 2, "cpu").uniform(10)
    assert torch.equal(a, b)


def test_bad_index_is_refused():
    with pytest.raises(ValueError, match="index"):
        Noise.create(0, 3, "cpu", index=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="index"):
        Noise.create(0, 3, "cpu", index=torch.tensor([0, 1]))
