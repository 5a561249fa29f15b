"""AttackResult for people: the summary str/repr, rows(), to_dataframe(), save_results()."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from conftest import MLP, MLP_SHAPE, rand_x

from pertattack import get_attack
from pertattack.result import AttackResult, concat_results, save_results


def _result(n: int = 4, *, regression: bool = False, attack: str | None = "alg1-10") -> AttackResult:
    x = torch.rand(n, 1, 3, 3)
    eta = torch.full_like(x, 0.1) * torch.arange(1, n + 1).view(n, 1, 1, 1) / n
    return AttackResult(
        x_adv=x + eta, eta=eta, norms=eta.flatten(1).abs().amax(1), eps=torch.full((n,), 0.1),
        success=None if regression else torch.tensor([True, False, True, True])[:n],
        label=None if regression else torch.arange(n), pred=None if regression else torch.arange(n) + 1,
        steps=torch.full((n,), 10), p=math.inf, margin=None if regression else -torch.ones(n),
        info={"sigma": torch.arange(n, dtype=torch.float32)} if regression else {}, attack=attack)


def test_str_is_a_short_summary_not_the_tensors():
    r = _result()
    text = str(r)
    assert "'alg1-10'" in text and "p=inf" in text and "eps=0.1" in text and "n=4" in text
    assert "3 / 4 (75.0%)" in text
    assert "median 0.05, max 0.1" in text  # norms 0.025, 0.05, 0.075, 0.1: torch takes the lower middle
    assert "tensor" not in text and len(text.splitlines()) <= 6
    one = repr(r)
    assert one.startswith("AttackResult('alg1-10'") and "success=75.0%" in one and "\n" not in one
    assert "tensor" not in one


def test_str_of_regression_and_per_input_and_unbounded_eps():
    r = _result(regression=True, attack=None)
    text = str(r)
    assert "success:" not in text and "regression" in text and "sigma" in text
    assert "alg1" not in text
    r.eps = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert "0.1 to 0.4 (per input)" in str(r)
    r.eps = None
    assert "minimum norm" in str(r)


def test_rows_one_dict_per_input():
    r = _result()
    rows = r.rows()
    assert len(rows) == 4
    assert rows[1] == {"index": 1, "label": 1, "pred": 2, "success": False, "norm": pytest.approx(0.05),
                       "eps": pytest.approx(0.1), "steps": 10, "margin": -1.0, "attack": "alg1-10"}
    reg = _result(regression=True, attack=None).rows()
    assert set(reg[0]) == {"index", "norm", "eps", "steps", "sigma"}
    assert [row["sigma"] for row in reg] == [0.0, 1.0, 2.0, 3.0]


def test_to_dataframe_without_pandas_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas.*rows()"):
        _result().to_dataframe()


def test_to_dataframe_with_pandas():
    pd = pytest.importorskip("pandas")
    df = _result().to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == [0, 1, 2, 3]
    assert df["success"].tolist() == [True, False, True, True]
    assert df["norm"].iloc[3] == pytest.approx(0.1)


def test_concat_keeps_attack_name():
    r = concat_results([_result(), _result()], math.inf)
    assert r.attack == "alg1-10" and r.n == 8


def test_summary_of_a_real_run():
    model = MLP()
    x = rand_x(16, MLP_SHAPE)
    res = get_attack("fgsm", eps=0.05)(model, x)
    text = str(res)
    assert f"n={x.shape[0]}" in text and "eps=0.05" in text
    assert f"{int(res.success.sum())} / {x.shape[0]}" in text


def test_save_results_stacks_budgets(tmp_path):
    a, b = _result(), _result()
    b.eps = torch.full((4,), 0.2)
    save_results(tmp_path / "two.npz", [a, b])
    d = np.load(tmp_path / "two.npz")
    assert d["x_adv"].shape == (2, 4, 1, 3, 3)
    assert d["eps_grid"].tolist() == pytest.approx([0.1, 0.2])
    np.testing.assert_allclose(d["x_adv"][1], b.x_adv.numpy())
    assert str(d["attack"]) == "alg1-10"
    save_results(tmp_path / "one.npz", [a])
    assert np.load(tmp_path / "one.npz")["x_adv"].shape == (4, 1, 3, 3)
    with pytest.raises(ValueError, match="at least one"):
        save_results(tmp_path / "none.npz", [])


def test_repr_html_shows_the_summary_and_the_first_rows():
    r = _result()
    page = r._repr_html_()
    assert page.startswith("<div><strong>AttackResult(&#x27;alg1-10&#x27;, p=inf, eps=0.1, n=4)</strong>")
    assert "success:  3 / 4 (75.0%)" in page and "<table>" in page
    assert "<th>index</th><th>label</th><th>pred</th><th>success</th><th>norm</th>" in page
    assert page.count("<tr>") == 1 + 4 and "<td>0.05</td>" in page  # the header and the rows; floats as in str()
    many = concat_results([_result()] * 5, math.inf)
    page = many._repr_html_()
    assert page.count("<tr>") == 1 + 10 and "first 10 of 20 rows" in page
    assert "&lt;" in AttackResult(**{**vars(r), "attack": "<b>"})._repr_html_()  # escaped
    reg = _result(regression=True, attack=None)._repr_html_()
    assert "regression attack" in reg and "<th>sigma</th>" in reg


def test_plot_draws_original_perturbation_adversarial():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    r = _result()  # success: inputs 0, 2, 3
    fig = r.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 3
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["#0: 0", "#2: 2", "#3: 3"]
    captions = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel() and not ax.get_xlabel().startswith("max")]
    assert captions == ["1", "3", "4"]  # the classes at x_adv
    assert len(r.plot(2).axes) == 6 and len(r.plot(indices=[1]).axes) == 3
    assert len(_result(regression=True).plot().axes) == 3 * 4  # no success flag: the first inputs


def test_plot_of_a_real_run():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model = MLP()
    x = rand_x(6, MLP_SHAPE)
    res = get_attack("fgsm", eps=0.3)(model, x)
    fig = res.plot(4)
    fooled = int(res.success.sum())
    assert len(fig.axes) == 3 * (min(4, fooled) if fooled else 4)
