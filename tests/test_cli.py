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


def test_list_shows_the_norm_of_each_preset(capsys):
    """issue 18: deepfool defaults to l2 where pgd, fgsm, apgd and fmn default to l-inf; list shows p."""
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["deepfool"] == "2" and rows["ddn"] == "2" and rows["quadratic-l1"] == "1"
    assert all(rows[n] == "inf" for n in ("pgd", "fgsm", "apgd-ce", "fmn", "square", "auto"))


def test_train_then_run_saves_npz(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    assert main(["train", "smallcnn", "--data", "digits", "--epochs", "2", "--out", str(ckpt)]) == 0
    model = load_model(ckpt)
    npz = tmp_path / "adv.npz"
    assert main(["run", "alg1-5", "--model", str(ckpt), "--data", "digits", "--n", "40", "--eps", "0.05,0.2",
                 "--out", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "eps 0.05: fooling ratio" in out and "eps 0.2: fooling ratio" in out
    saved = np.load(npz)  # several eps: arrays stacked along a first axis, one entry per eps
    from pertattack.data import load_digits

    x, y = load_digits("test")
    assert saved["eps_grid"].tolist() == pytest.approx([0.05, 0.2])
    assert saved["x_adv"].shape == (2, 40, 1, 8, 8)
    for k, eps in enumerate((0.05, 0.2)):
        res = get_attack("alg1-5", eps=eps, seed=0)(model, x[:40], y[:40])
        np.testing.assert_allclose(saved["x_adv"][k], res.x_adv.numpy(), atol=1e-6)
        assert saved["success"][k].tolist() == res.success.tolist()
    assert str(saved["attack"]) == "alg1-5"


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


def test_demo_quick_end_to_end(tmp_path, capsys):
    import torch

    from pertattack.experiments.demo import CLASSIFICATION_ATTACKS, FIGURES, REGRESSION_ATTACKS

    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the demo's thread count is restored
    assert "report.md" in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    assert report.count("2 epochs of Adam") == 2  # --epochs reaches both models
    for fig in FIGURES:
        assert (tmp_path / fig).stat().st_size > 5000, fig
        assert f"]({fig})" in report, fig  # embedded in the report
    for name in ("fooling.csv", "robustness.csv", "regression.csv", "operator_norm.csv"):
        assert (tmp_path / name).exists() and name in report
    assert "torch 2" in report and "with 1 torch thread " in report
    rows = list(csv.reader(open(tmp_path / "fooling.csv")))
    assert rows[0] == ["attack", "preset", "eps=0", "eps=0.1", "eps=0.2"]
    table = {r[0]: [float(v) for v in r[2:]] for r in rows[1:]}
    assert set(table) == set(CLASSIFICATION_ATTACKS)
    assert all(v[0] == 0.0 for v in table.values())  # eps = 0 fools nothing
    assert table["Alg1-10"][2] > table["random"][2]
    reg = list(csv.DictReader(open(tmp_path / "regression.csv")))
    assert {r["attack"] for r in reg} == {n for ns in REGRESSION_ATTACKS.values() for n in ns}
    out = {(r["attack"], r["target_input_psnr"]): float(r["output_psnr_clean"]) for r in reg}
    assert out[("quadratic-l2", "10")] < out[("rand-l2", "10")]  # the attack beats noise of the same budget
    sigma = [float(r["sigma"]) for r in csv.DictReader(open(tmp_path / "operator_norm.csv"))]
    assert len(sigma) == 80 and min(sigma) > 0


def test_torch_threads_restores_the_count():
    import torch

    from pertattack.experiments.demo import torch_threads

    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_demo_rejects_bad_grids(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--eps", "0,-0.1", "--no-progress"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(tmp_path), "--epochs", "0", "--no-progress"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_version_help_defaults_and_list_header(capsys):
    from pertattack import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"pertattack {__version__}"
    for cmd, default in (("run", "(default: 1000)"), ("train", "(default: 3)"), ("demo", "(default: pertattack-demo)"),
                         ("reproduce", "(default: results)")):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert default in " ".join(capsys.readouterr().out.split()), cmd
    assert main(["list"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["preset", "p", "objective", "constraint", "solver", "description"]


@pytest.fixture
def two_checkpoints(tmp_path):
    from pertattack.data import load_digits

    x, y = load_digits("train")
    paths = []
    for seed in (0, 1):
        model = build_model("smallcnn", seed=seed)
        from pertattack.training import train_classifier

        train_classifier(model, x, y, epochs=1, batch_size=64, lr=3e-3, seed=seed)
        paths.append(tmp_path / f"cnn{seed}.pt")
        save_model(paths[-1], model, "smallcnn")
    return paths


def test_run_targeted_class_random_least_likely(two_checkpoints, tmp_path, capsys):
    ckpt = str(two_checkpoints[0])
    base = ["run", "targeted", "--model", ckpt, "--data", "digits", "--n", "30", "--eps", "0.3"]
    npz = tmp_path / "t.npz"
    assert main([*base, "--target", "3", "--out", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "targeted success rate" in out and "left out" in out
    saved = np.load(npz)
    assert (saved["label"] != 3).all()  # images of class 3 are left out
    assert saved["success"].any() and (saved["pred"][saved["success"]] == 3).all()
    for spec in ("random", "least-likely"):
        assert main([*base, "--target", spec, "--out", str(npz)]) == 0
        saved = np.load(npz)
        assert saved["success"].any()
        assert (saved["pred"][saved["success"]] != saved["label"][saved["success"]]).all()
    assert "targeted success rate" in capsys.readouterr().out
    assert main([*base, "--target", "12"]) == 2
    assert "classes 0 to 9" in capsys.readouterr().err
    assert main([*base, "--target", "cat"]) == 2
    assert "least-likely" in capsys.readouterr().err
    assert main(base) == 2  # targeted needs --target
    assert "--target" in capsys.readouterr().err
    assert main(["run", "fgsm", "--model", ckpt, "--data", "digits", "--n", "5", "--eps", "0.1", "--target", "3"]) == 2
    assert "--target goes with the targeted preset" in capsys.readouterr().err


def test_run_transfer_with_surrogate(two_checkpoints, tmp_path, capsys):
    from pertattack.data import load_digits

    target_ckpt, surrogate_ckpt = (str(p) for p in two_checkpoints)
    npz = tmp_path / "tr.npz"
    assert main(["run", "transfer", "--model", target_ckpt, "--surrogate", surrogate_ckpt, "--data", "digits",
                 "--n", "20", "--eps", "0.2", "--out", str(npz)]) == 0
    assert "fooling ratio" in capsys.readouterr().out
    x, y = load_digits("test")
    res = get_attack("transfer", eps=0.2, seed=0, surrogate=load_model(surrogate_ckpt))(load_model(target_ckpt),
                                                                                         x[:20], y[:20])
    np.testing.assert_allclose(np.load(npz)["x_adv"], res.x_adv.numpy(), atol=1e-6)
    assert main(["run", "transfer", "--model", target_ckpt, "--data", "digits", "--n", "5", "--eps", "0.1"]) == 2
    assert "--surrogate" in capsys.readouterr().err
    assert main(["run", "alg1", "--model", target_ckpt, "--surrogate", surrogate_ckpt, "--data", "digits",
                 "--n", "5", "--eps", "0.1"]) == 2
    assert "transfer preset" in capsys.readouterr().err


def test_missing_data_error_advises_download(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    save_model(ckpt, build_model("lenet5", seed=0), "lenet5")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "fgsm", "--model", str(ckpt), "--root", str(empty), "--eps", "0.1"]) == 2
    assert "--download" in capsys.readouterr().err
    assert main(["reproduce", "fig3b", "--root", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "--download" in capsys.readouterr().err


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
    save_model(tmp_path / "cache" / f"{cache_tag('mnist', 'fc-ae', 1, 0, *train)}.pt", build_model("fc-ae", seed=0),
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


def test_loaders_at_the_top_level():
    import pertattack
    from pertattack import data

    assert pertattack.load_mnist is data.load_mnist
    assert pertattack.load_cifar10 is data.load_cifar10
    assert pertattack.load_digits is data.load_digits
    assert {"load_mnist", "load_cifar10", "load_digits"} <= set(pertattack.__all__)


def test_demo_report_without_figures_says_so(tmp_path):
    import math

    import torch

    from pertattack.experiments.demo import CLASSIFICATION_ATTACKS, REGRESSION_ATTACKS, DemoConfig, DemoResult, _report

    cfg = DemoConfig.quick()
    curve = {"eps": [0.1] * 3, "input_psnr": [10.0, 25.0, 40.0], "output_psnr": [9.0, 20.0, 30.0],
             "output_psnr_clean": [9.5, 21.0, 31.0]}
    res = DemoResult(out=tmp_path, config=cfg, fooling={k: [0.0, 0.5, 0.9] for k in CLASSIFICATION_ATTACKS},
                     robustness=dict(test_error=0.01, rho1=0.1, rho2=0.09, eps_99=0.2, deepfool_success=1.0),
                     regression={n: curve for ns in REGRESSION_ATTACKS.values() for n in ns},
                     operator_norm=torch.tensor([1.0, 2.0]), test_error=0.01, ae_mse=0.02, n_test=80, n_correct=79,
                     files=["fooling.csv"], timings={"data": 0.5}, seconds=3.0)
    text = _report(res)
    assert "matplotlib is not installed" in text and "![" not in text
    assert "| Alg1-10 | 0.000 | 0.500 | 0.900 |" in text
    assert "| quadratic-l2 | 9.5 | 21.0 | 31.0 |" in text
    assert "1.00%" in text and not math.isnan(res.seconds)


def test_eps_takes_fractions(tmp_path, capsys):
    """`--eps 8/255` is how l-inf budgets are written: run and evaluate take it (issue 18)."""
    from pertattack.cli import _eps_list

    assert _eps_list("8/255, 0.1,1/2") == [8 / 255, 0.1, 0.5]
    ckpt = tmp_path / "cnn.pt"
    save_model(ckpt, build_model("smallcnn", seed=1), "smallcnn")
    assert main(["run", "fgsm", "--model", str(ckpt), "--data", "digits", "--n", "5", "--eps", "8/255"]) == 0
    assert f"eps {8 / 255:g}" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(ckpt), "--data", "digits", "--attack", "fgsm", "--eps", "8/255,16/255",
                 "--limit", "4", "--out", str(out), "--no-progress"]) == 0
    assert [float(r["eps"]) for r in csv.DictReader(open(out / "summary.csv"))] == [8 / 255, 16 / 255]
    for bad in ("8/0", "8/", "a/255", "1/2/3"):
        assert main(["run", "fgsm", "--model", str(ckpt), "--data", "digits", "--n", "5", "--eps", bad]) == 2
        assert f"--eps: {bad!r} is not a number" in capsys.readouterr().err


def test_list_into_a_closed_pipe_exits_quietly():
    """`pertattack list | head -c 10`: the reader has gone; stop without an error message, as unix tools do."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "pertattack", "list"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE: what a shell reports for `yes | head`


def test_demo_default_output_folder_is_git_ignored():
    from pertattack.cli import build_parser

    gitignore = Path(__file__).resolve().parents[1] / ".gitignore"
    if not gitignore.exists():
        pytest.skip("not a source checkout")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    default = sub.choices["demo"].get_default("out")
    lines = gitignore.read_text().split()
    assert default in lines or f"{default}/" in lines or f"/{default}/" in lines
