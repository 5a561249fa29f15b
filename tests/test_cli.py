"""The command line end to end, on small data: list, train, run, demo, reproduce, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pertattack import get_attack
from pertattack.cli import main
from pertattack.models import build_model
from pertattack.training import load_model, save_model

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
pytest.importorskip("sklearn")


def test_list_names_every_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fgsm", "pgd", "pgd-paper", "deepfool", "alg1-T", "alg2", "quadratic-l2", "linear-pixel-T"):
        assert f"\n{name} " in "\n" + out


def test_train_then_run_saves_npz(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    assert main(["train", "smallcnn", "--data", "digits", "--epochs", "2", "--out", str(ckpt)]) == 0
    model = load_model(ckpt)
    npz = tmp_path / "adv.npz"
    assert main(["run", "alg1-5", "--model", str(ckpt), "--data", "digits", "--n", "40", "--eps", "0.05,0.2",
                 "--out", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "eps 0.05: fooling ratio" in out and "eps 0.2: fooling ratio" in out
    saved = np.load(npz)
    from pertattack.data import load_digits

    x, y = load_digits("test")
    res = get_attack("alg1-5", eps=0.2, seed=0)(model, x[:40], y[:40])
    np.testing.assert_allclose(saved["x_adv"], res.x_adv.numpy(), atol=1e-6)
    assert saved["success"].tolist() == res.success.tolist()


def test_run_overrides_and_errors(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    save_model(ckpt, build_model("smallcnn", seed=1), "smallcnn")
    assert main(["run", "deepfool", "--model", str(ckpt), "--data", "digits", "--n", "10", "--set", "p=inf"]) == 0
    assert "fooling ratio" in capsys.readouterr().out
    assert main(["run", "pgd-papr", "--model", str(ckpt), "--data", "digits", "--n", "10", "--eps", "0.1"]) == 2
    assert "pgd-paper" in capsys.readouterr().err
    assert main(["run", "fgsm", "--model", str(ckpt), "--data", "digits", "--n", "10", "--eps", "-1"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["reproduce", "fig99"]) == 2
    assert "fig3b" in capsys.readouterr().err


def test_demo_writes_csv_and_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--eps", "0,0.2", "--n", "60"]) == 0
    rows = list(csv.reader(open(tmp_path / "demo_fooling.csv")))
    assert rows[0] == ["attack", "eps=0", "eps=0.2"]
    table = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    assert set(table) >= {"DeepFool", "Alg1-10", "FGSM", "PGD (paper)", "random"}
    assert all(v[0] == 0.0 for v in table.values())  # eps = 0 fools nothing
    assert table["Alg1-10"][1] > table["random"][1]
    assert (tmp_path / "demo_fooling.png").stat().st_size > 1000


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST folder not present")
def test_reproduce_fig3b_and_fig4a_on_cached_models(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    # untrained but cached models: the pipeline, not the training, is under test here
    from pertattack.data import load_mnist
    from pertattack.experiments.paper import cache_tag

    train = load_mnist(MNIST, "train")
    save_model(tmp_path / "cache" / f"{cache_tag('mnist', 'lenet5', 1, 0, *train)}.pt", build_model("lenet5", seed=0),
               "lenet5")
    save_model(tmp_path / "cache" / f"{cache_tag('mnist', 'fc-ae', 10, 0, *train)}.pt", build_model("fc-ae", seed=0),
               "fc-ae")
    args = ["--out", str(tmp_path / "res"), "--n", "4", "--root", str(MNIST), "--epochs", "1"]
    assert main(["reproduce", "fig3b", *args]) == 0
    rows = list(csv.reader(open(tmp_path / "res" / "fig3b.csv")))
    assert len(rows) == 10 and len(rows[0]) == 12
    assert main(["reproduce", "fig4a", *args]) == 0
    rows = list(csv.reader(open(tmp_path / "res" / "fig4a.csv")))
    assert rows[0] == ["attack", "eps", "input_psnr", "output_psnr", "output_psnr_clean"]
    assert {r[0] for r in rows[1:]} == {"rand-l2", "linear-l2-1", "linear-l2-10", "linear-l2-20", "quadratic-l2"}
    assert main(["reproduce", "fig2a", *args]) == 0
    assert (tmp_path / "res" / "fig2a.png").stat().st_size > 1000
    for r in rows[1:]:
        eps, psnr_in = float(r[1]), float(r[2])
        assert psnr_in >= 10 * np.log10(784 / eps**2) - 1e-3  # clipping can only raise the input PSNR


def test_run_regression_attack_reports_psnr(tmp_path, capsys):
    ckpt = tmp_path / "ae.pt"
    save_model(ckpt, build_model("fc-ae", in_shape=(1, 8, 8), code=4, hidden=16, seed=0), "fc-ae",
               in_shape=(1, 8, 8), code=4, hidden=16)
    assert main(["run", "quadratic-l2", "--model", str(ckpt), "--data", "digits", "--n", "6", "--eps", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "input PSNR" in out and "vs f(x)" in out
