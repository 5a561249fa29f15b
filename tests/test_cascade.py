"""Cascades: attacks in order, each on the inputs still robust (cascade.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, MLP_SHAPE, rand_x

import pertattack
from pertattack import cascade, get_attack


def _setup(n: int = 24, seed: int = 3):
    model = MLP(k=6, seed=seed).eval()
    x = rand_x(n, MLP_SHAPE, seed=seed)
    y = model(x).argmax(1)
    return model, x, y


def test_cascade_equals_its_attacks_in_order_on_the_remaining_inputs():
    model, x, y = _setup()
    members = [get_attack("fgsm", eps=0.05), get_attack("bim", eps=0.05), get_attack("pgd", eps=0.05, seed=1)]
    got = cascade(members)(model, x, y)
    # by hand
    idx = torch.arange(x.shape[0])
    x_adv = torch.empty_like(x)
    who = torch.full((x.shape[0],), -1)
    for j, a in enumerate(members):
        r = a(model, x[idx], y[idx], index=idx)
        take = r.success if j else torch.ones_like(r.success)
        x_adv[idx[take]] = r.x_adv[take]
        who[idx[r.success]] = j
        idx = idx[~r.success]
    torch.testing.assert_close(got.x_adv, x_adv, rtol=0, atol=0)
    assert torch.equal(got.info["attack"], who)
    assert torch.equal(got.success, who >= 0)
    assert torch.equal(got.success, model(got.x_adv).argmax(1) != y)  # success re-evaluated, a union
    assert (got.norms <= 0.05 + 1e-12).all()
    assert got.attack == "cascade"


def test_cascade_is_at_least_as_strong_as_each_member():
    model, x, y = _setup(40, seed=4)
    members = [get_attack("fgsm"), get_attack("apgd-ce", steps=20, seed=0)]
    c = cascade(members, eps=0.08)
    got = c(model, x, y)
    for a in members:
        r = a.replace(eps=0.08)(model, x, y)
        assert bool((got.success | ~r.success).all())  # every input a member fools, the cascade fools


def test_cascade_eps_list_and_shared_keywords():
    model, x, y = _setup(12)
    c = cascade(["fgsm", "bim"], eps=0.1, seed=0)
    assert all(a.eps == 0.1 and a.seed == 0 for a in c.attacks)
    res = c(model, x, y, eps=[0.02, 0.2])
    assert isinstance(res, list) and len(res) == 2
    assert res[0].success.sum() <= res[1].success.sum()
    with pytest.raises(TypeError, match="members"):
        c.replace(steps=3)
    with pytest.raises(ValueError, match="budget"):
        cascade(["fgsm"])(model, x, y)
    with pytest.raises(ValueError, match="untargeted"):
        cascade(["targeted"])
    with pytest.raises(ValueError, match="at least one"):
        pertattack.Cascade(())


def test_apgd_t_uses_the_ranks_the_model_has():
    model, x, y = _setup(10)  # 6 classes: ranks 2..6 only
    c = get_attack("apgd-t", eps=0.05, seed=0)
    assert len(c.attacks) == 9 and c.name == "apgd-t"
    r = c(model, x, y)
    assert r.success is not None and (r.info["attack"] <= 4).all()  # members of rank 7..10 were skipped
    small = get_attack("apgd-t", targets=2, eps=0.05)
    assert [a.objective.rank for a in small.attacks] == [2, 3]


def test_auto_is_registered_and_reports_who_fooled():
    model, x, y = _setup(16, seed=5)
    auto = get_attack("auto", eps=0.1, seed=0)
    assert auto.name == "auto"
    names = [getattr(a, "name", "") for a in auto.attacks]
    assert names == ["apgd-ce", "apgd-t"]
    assert auto.attacks[1].order is not None and len(auto.attacks[1].attacks) == 3  # 3 targets by eq. 9
    assert auto.scale_free.name == "apgd-dlr" and auto.gradient_free.name == "square"
    # a cheap version of the same cascade, to keep the test fast
    quick = cascade([get_attack("apgd-ce", steps=10), get_attack("fmn", steps=10)], eps=0.1, seed=0)
    r = quick(model, x, y)
    assert set(r.info["attack"].tolist()) <= {-1, 0, 1}
    with torch.no_grad():
        assert torch.equal(r.success, model(r.x_adv).argmax(1) != y)
    m = pertattack.Model(model)
    assert torch.equal(quick(m, x, y).x_adv, r.x_adv)
    assert r.members == ("apgd-ce", "fmn")
    assert r.fooled_by() == [r.members[i] if i >= 0 else None for i in r.info["attack"].tolist()]
    assert {row["fooled_by"] for row in r.rows()} <= {"apgd-ce", "fmn", None}


def test_a_given_target_steers_targeted_dlr_as_its_rank_would():
    model, x, y = _setup(12, seed=6)
    with torch.no_grad():
        third = model(x).argsort(dim=1, descending=True)[:, 2]  # the class of rank 3
    by_rank = get_attack("apgd-dlrt-3", eps=0.1, seed=0, steps=5)(model, x, y)
    steered = get_attack("apgd-dlrt-2", eps=0.1, seed=0, steps=5)(model, x, y, target=third)
    assert torch.equal(by_rank.x_adv, steered.x_adv)
    assert torch.equal(steered.success, model(steered.x_adv).argmax(1) != y)  # success stays untargeted
    with pytest.raises(ValueError, match="target"):
        get_attack("apgd-ce", eps=0.1)(model, x, y, target=third)


def test_a_cascade_order_gives_each_steered_member_its_target():
    from pertattack.targets import ByLogits

    model, x, y = _setup(12, seed=7)
    by_rank = get_attack("apgd-t", targets=2, eps=0.1, seed=0, steps=5)(model, x, y)
    members = (get_attack("apgd-dlrt-2", steps=5), get_attack("apgd-dlrt-2", steps=5))
    ordered = pertattack.Cascade(members, "apgd-t", order=ByLogits()).replace(eps=0.1, seed=0)(model, x, y)
    assert torch.equal(by_rank.x_adv, ordered.x_adv)  # rank R by logits = the (R-1)-th target of ByLogits
    dist = get_attack("apgd-t", targets=2, order="distance", eps=0.1, seed=0, steps=5)
    assert [a.name for a in dist.attacks] == ["apgd-t-1", "apgd-t-2"]
    r = dist(model, x, y)
    assert torch.equal(r.success, model(r.x_adv).argmax(1) != y)


def _quick_auto(eps: float = 0.1):
    from pertattack.cascade import Auto

    return Auto((get_attack("apgd-ce", steps=5), get_attack("apgd-t", targets=2, order="distance", steps=5)),
                "auto", scale_free=get_attack("apgd-dlr", steps=5),
                gradient_free=get_attack("square", queries=30)).replace(eps=eps, seed=0)


class _Scaled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, scale: float, quantise: bool = False) -> None:
        super().__init__()
        self.model, self.scale, self.quantise = model, scale, quantise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantise:  # a step function before the model: every gradient is zero
            x = torch.round(x * 4) / 4
        return self.model(x) * self.scale


def test_auto_adapts_to_what_the_checks_find():
    model, x, y = _setup(16, seed=5)
    plain = _quick_auto()(model, x, y)
    assert plain.flags == () and set(plain.fooled_by()) <= {"apgd-ce", "apgd-t", None}
    with pytest.warns(UserWarning, match="zero-gradients"):
        sat = _quick_auto()(_Scaled(model, 1e6), x, y)
    assert [f.name for f in sat.flags] == ["zero-gradients"]
    assert sat.members == ("apgd-dlr", "apgd-t")  # CE flat at (nearly) every input: DLR replaces it
    assert "apgd-dlr" in sat.fooled_by()
    from pertattack.checks import Flag

    few = [Flag("zero-gradients", "", share=0.1)]  # a few saturated inputs: DLR after CE, not instead
    assert [a.name for a in _quick_auto().members_for(few)] == ["apgd-ce", "apgd-dlr", "apgd-t"]
    with pytest.warns(UserWarning, match="masked-gradients"):
        masked = _quick_auto(0.3)(_Scaled(model, 1.0, quantise=True), x, y)
    assert "masked-gradients" in [f.name for f in masked.flags] and masked.members[-1] == "square"
    # Square fools inputs the gradient members (only their random starts move) missed, and the result says so
    assert "square" in masked.fooled_by()
    assert "gradient-free-wins" in [f.name for f in masked.flags]
