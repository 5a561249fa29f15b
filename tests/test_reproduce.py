"""`pertattack reproduce` items in their smallest form (fig1, fig2b, table3, skips) and REPORT.md.

MNIST comes from $PERTATTACK_MNIST or ../shared/data/mnist; models are cached in a temporary folder
(untrained, or trained for a second on a few MNIST images) so that the pipeline, not training, is tested.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from pertattack.experiments import paper
from pertattack.experiments.report import TABLE3_PAPER, write_report
from pertattack.models import build_model
from pertattack.training import save_model, train_classifier

MNIST = Path(os.environ.get("PERTATTACK_MNIST", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(  # both splits: the items train on one and attack the other
    not all((MNIST / f"{s}-images-idx3-ubyte.gz").exists() or (MNIST / f"{s}-images-idx3-ubyte").exists()
            for s in ("train", "t10k")), reason="MNIST files not present")


def _tag(dataset: str, name: str, epochs: int, root: str | None = None) -> str:
    """The cache file name ``reproduce`` looks for (with a digest of the training data where the code names
    its cache files that way)."""
    if hasattr(paper, "cache_tag"):
        x, y = paper.LOADERS[dataset](root, "train")
        return f"{paper.cache_tag(dataset, name, epochs, 0, x, y)}.pt"
    return f"{dataset}-{name}-e{epochs}-s0.pt"


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("PERTATTACK_CACHE", str(d))
    monkeypatch.setenv("PERTATTACK_CIFAR10", str(tmp_path / "no-cifar"))  # CIFAR-10 parts must be skipped
    return d


@needs_mnist
def test_fig1_shows_fooled_images_and_report(cache, tmp_path):
    from pertattack.data import load_mnist

    x, y = load_mnist(MNIST, "train", limit=2000)
    model = build_model("fcnn", seed=0)  # a quickly trained FCNN stands in under LeNet-5's cache tag
    train_classifier(model, x, y, epochs=1, batch_size=64, seed=0)
    save_model(cache / _tag("mnist", "lenet5", 1, str(MNIST)), model, "fcnn")
    out = tmp_path / "res"
    paper.reproduce("fig1", out=out, n=40, root=str(MNIST), epochs=1)
    rows = _rows(out / "fig1.csv")
    assert rows[0] == ["dataset", "index", "label", "pred", "pred_adv", "eps", "norm"]
    assert 1 <= len(rows) - 1 <= 8
    for r in rows[1:]:
        assert r[2] == r[3] != r[4]  # correctly classified, then misclassified
        assert float(r[6]) <= float(r[5]) + 1e-6  # within the l-inf budget
    assert (out / "fig1.png").stat().st_size > 1000
    rep = (out / "REPORT.md").read_text()
    assert "Figure 1" in rep and "**holds**" in rep and "CIFAR-10 part not run" in rep
    assert json.loads((out / "report.json").read_text())["fig1"]["status"] == "ran"


@needs_mnist
def test_fig2b_and_table3_smallest(cache, tmp_path):
    save_model(cache / _tag("mnist", "fc-ae", 10, str(MNIST)), build_model("fc-ae", seed=0), "fc-ae")
    for m in ("fcnn", "lenet5"):
        save_model(cache / _tag("mnist", m, 1, str(MNIST)), build_model(m, seed=0), m)
    out = tmp_path / "res"
    paper.reproduce("fig2b", out=out, n=3, root=str(MNIST), epochs=1)
    rows = _rows(out / "fig2b.csv")
    assert rows[0][:3] == ["image", "in_psnr_adv", "in_psnr_random"] and len(rows) == 4
    for r in rows[1:]:
        # 100 of 784 pixels at +-0.5 (clipping to [0, 1] can only raise the input PSNR)
        assert float(r[1]) >= 10 * __import__("math").log10(784 / (100 * 0.25)) - 1e-3
    paper.reproduce("table3", out=out, n=12, root=str(MNIST), epochs=1)
    rows = _rows(out / "table3.csv")
    assert [r[0] for r in rows[1:]] == ["fcnn (MNIST)", "lenet5 (MNIST)"]
    rep = (out / "REPORT.md").read_text()
    # the paper's numbers beside ours, row by row; the CIFAR-10 rows marked as not run
    assert f"{TABLE3_PAPER['lenet5'][1]:.3g} / " in rep and "DenseNet-40 (CIFAR-10) | 0.052 / not run" in rep
    assert "NIN and DenseNet-40 rows not run" in rep
    assert "Figure 2(b)" in rep and "| fig2b | ran (part skipped: the CIFAR-10 autoencoder" in rep


def test_missing_data_is_recorded_as_skipped(cache, tmp_path):
    out = tmp_path / "res"
    with pytest.raises(FileNotFoundError):
        paper.reproduce("fig3c", out=out, n=4, epochs=1)
    rep = (out / "REPORT.md").read_text()
    assert "| fig3c | skipped |" in rep and "**Skipped:**" in rep and "CIFAR-10" in rep


def _write(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_report_checks_claims_on_csv(tmp_path):
    """The claim checks read the CSVs: a table where the paper's claims hold and one where they do not."""
    eps = ["attack", "eps=0", "eps=0.1"]
    good = {"DeepFool": 0.5, "Alg1-10": 0.9, "Alg1-5": 0.8, "Alg1": 0.6, "Alg2": 0.45, "FGSM": 0.5,
            "PGD (paper)": 0.7, "PGD (Madry)": 0.95, "random": 0.01}
    _write(tmp_path / "fig3a.csv", [eps, *[[k, 0.0, v] for k, v in good.items()]])
    bad = dict(good, **{"Alg1-10": 0.3, "Alg1": 0.2})
    _write(tmp_path / "fig3b.csv", [eps, *[[k, 0.0, v] for k, v in bad.items()]])
    rec = {n: {"status": "ran", "command": "x", "time_s": 1.0} for n in ("fig3a", "fig3b")}
    rec["fig4d"] = {"status": "skipped", "reason": "provide the STL-10 binary files"}
    (tmp_path / "report.json").write_text(json.dumps(rec))
    rep = write_report(tmp_path).read_text()
    a = rep[rep.index("Figure 3(a)"): rep.index("Figure 3(b)")]
    b = _section(rep, "## Figure 3(b)")
    assert "Alg1-10 outperforms DeepFool and PGD: **holds**" in a
    assert "Madry's PGD (random start, projection) beats Alg1-10" in a
    assert "Alg1-10 outperforms DeepFool and PGD: **does not hold**" in b
    assert "Alg1 outperforms FGSM: **does not hold**" in b
    assert "| fig3a | ran | 5/5 |" in rep and "| fig4d | skipped |" in rep
    assert "provide the STL-10 binary files" in rep and "| fig4a | not run |" in rep


@pytest.mark.filterwarnings("ignore:the gradient of the objective is exactly zero")
def test_robustness_counts_the_inputs_rho1_drops():
    """DeepFool cannot move an input where the margin's gradient is zero: rho1 leaves it out, and says so."""
    import torch
    from torch import nn

    from pertattack.metrics import robustness

    class Flat(nn.Module):
        def forward(self, x):
            z = x.reshape(x.shape[0], -1).sum(dim=1, keepdim=True)
            return torch.cat([torch.relu(z - 2.0), torch.full_like(z, 0.5)], dim=1)

    x = torch.full((6, 4), 0.25)  # sum 1: logits (0, 0.5), class 1, zero gradient: DeepFool fails
    x[3:] = 0.9  # sum 3.6: logits (1.6, 0.5), class 0, DeepFool crosses the boundary
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    row = robustness(Flat(), x, y, p=2.0)
    assert row["deepfool_failed"] == 3.0 and row["deepfool_success"] == 0.5
    # rho1 is the mean over the fooled half only: distance (3.6 - 2.5) / 2 over norm_2(x) = 1.8
    assert row["rho1"] == pytest.approx(1.1 / 2 / 1.8, rel=0.05)


@needs_mnist
def test_cifar10_parts_on_a_synthetic_folder(cache, tmp_path, monkeypatch):
    """With CIFAR-10 files found ($PERTATTACK_CIFAR10): fig2b uses the CIFAR-10 autoencoder as in the paper,
    table3 gets its NIN and DenseNet-40 rows and fig1 its CIFAR-10 panel (small FCNNs stand in under the
    NIN / DenseNet-40 cache tags, so that the pipeline, not those networks, is tested)."""
    import pickle

    import numpy as np

    from pertattack.data import CIFAR10_BATCHES

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]:
        batch = {b"data": rng.integers(0, 256, size=(5, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3, 4]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    monkeypatch.setenv("PERTATTACK_CIFAR10", str(tmp_path / "cifar"))
    kw = {"in_shape": (3, 32, 32), "code": 16, "hidden": 32}
    save_model(cache / _tag("cifar10", "fc-ae", 10), build_model("fc-ae", seed=0, **kw), "fc-ae", **kw)
    small = {"in_shape": (3, 32, 32), "hidden": (8,)}
    stand_in = build_model("fcnn", seed=1, **small)
    for m in ("nin", "densenet40"):
        save_model(cache / _tag("cifar10", m, 1), stand_in, "fcnn", **small)
    # test labels = the stand-in's predictions but one, so that it classifies 4 of 5 correctly
    from pertattack.data import load_cifar10
    from pertattack.metrics import predict

    pred = predict(stand_in, load_cifar10(None, "test")[0])
    pred[0] = (pred[0] + 1) % 10
    test = {b"data": pickle.loads((folder / "test_batch").read_bytes())[b"data"], b"labels": pred.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    for m in ("fcnn", "lenet5"):
        save_model(cache / _tag("mnist", m, 1, str(MNIST)), build_model(m, seed=0), m)
    out = tmp_path / "res"
    paper.reproduce("fig2b", out=out, n=2, root=str(MNIST), epochs=1)
    rec = json.loads((out / "report.json").read_text())["fig2b"]
    assert "fc-ae (cifar10)" in rec["models"] and "MNIST autoencoder" not in rec["note"]
    assert len(_rows(out / "fig2b.csv")) == 3
    paper.reproduce("table3", out=out, n=12, root=str(MNIST), epochs=1)
    assert [r[0] for r in _rows(out / "table3.csv")[1:]] == ["fcnn (MNIST)", "lenet5 (MNIST)", "nin (CIFAR-10)",
                                                             "densenet40 (CIFAR-10)"]
    rep = (out / "REPORT.md").read_text()
    assert "| NIN (CIFAR-10) | 0.138 / " in rep and "NIN (CIFAR-10) | 0.138 / not run" not in rep
    paper.reproduce("fig1", out=out, n=5, root=str(MNIST), epochs=1)
    assert "CIFAR-10 part not run" not in json.loads((out / "report.json").read_text())["fig1"]["note"]


@needs_mnist
def test_advtrain_smallest(cache, tmp_path):
    """``reproduce advtrain`` in its smallest form: every model x training attack at one eps, the CSV, the figure
    data, and its REPORT.md section with the table and the conjecture's verdicts; the models are cached with their
    training times."""
    from pertattack.data import load_mnist
    from pertattack.experiments import advtrain
    from pertattack.experiments.advtrain import COLUMNS, TRAINING

    out = tmp_path / "res"
    paper.reproduce("advtrain", out=out, n=6, root=str(MNIST), limit=64, eps=[0.1])
    rows = _rows(out / "advtrain.csv")
    assert rows[0] == COLUMNS
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [(m, t, "0.1") for m in ("lenet5", "fcnn") for t in TRAINING]
    assert all(r[3] == "64" and r[4] == "1" and r[5] == "6" for r in rows[1:])  # the item's default: 1 epoch
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        assert all((out / f"advtrain-{m}.png").stat().st_size > 0 for m in ("lenet5", "fcnn"))
    rec = json.loads((out / "report.json").read_text())["advtrain"]
    assert "--limit 64 --eps 0.1" in rec["command"] and "--epochs" not in rec["command"] and rec["cpu_s"] > 0
    rep = (out / "REPORT.md").read_text()
    sec = rep[rep.index("## Adversarial training: PGD vs Algorithm 1-10"):]
    assert "| model | eps | trained with | clean error | robust acc. (auto) |" in sec
    assert sec.count("| lenet5 | 0.1 | ") == 4 and sec.count("| fcnn | 0.1 | ") == 4
    assert sec.count("- claim: ") == 4 and "**not checked**" not in sec and "| advtrain | ran |" in rep
    # a second run loads the cached models (an interrupted run resumes) and their recorded training times
    x, y = load_mnist(MNIST, "train", limit=64)
    model, times = advtrain._train("lenet5", "pgd", 0.1, x, y, 1, 0, "cpu")
    assert times["train_cpu_s"] == pytest.approx(float(rows[4][6]), rel=1e-5) and times["train_cpu_s"] > 0
    assert len(list(cache.glob("mnist-*-n64-*.pt"))) == len(list(cache.glob("mnist-*-n64-*.json"))) == 8


def test_advtrain_verdicts_read_the_csv(tmp_path):
    """The conjecture's checks: PGD-trained above Alg1-10-trained at every eps holds; below at one eps does not;
    a model without both rows is not checked."""
    from pertattack.experiments.advtrain import COLUMNS

    def row(method: str, eps: float, robust: float, fool: float) -> list:
        r = dict(model="lenet5", method=method, eps=eps, train_images=10, epochs=1, test_images=1000,
                 train_cpu_s=1.0, train_wall_s=1.0, clean_error=0.05, robust_auto=robust)
        return [r.get(c, fool) for c in COLUMNS]

    _write(tmp_path / "advtrain.csv", [COLUMNS, row("pgd", 0.1, 0.8, 0.1), row("alg1-10", 0.1, 0.7, 0.2),
                                       row("pgd", 0.2, 0.5, 0.5), row("alg1-10", 0.2, 0.51, 0.4)])
    (tmp_path / "report.json").write_text(json.dumps({"advtrain": {"status": "ran", "command": "x", "time_s": 1}}))
    rep = write_report(tmp_path).read_text()
    assert "lenet5: PGD is a better training attack than Alg1-10 (robust accuracy under auto, every eps): " \
           "**does not hold**" in rep
    assert "eps 0.1: 0.800 vs 0.700 (+10.0 points); eps 0.2: 0.500 vs 0.510 (-1.0 points, within 2 standard " \
           "errors); pgd better at 1 of 2 eps" in rep
    assert "eps 0.1: 0.100 (DeepFool) vs 0.200 (DeepFool); eps 0.2: 0.500 (DeepFool) vs 0.400 (DeepFool)" in rep
    assert "fcnn: PGD is a better training attack than Alg1-10 (robust accuracy under auto, every eps): " \
           "**not checked** (fcnn was not trained with both pgd and alg1-10)" in rep
    assert "| lenet5 | 0.1 | pgd | 0.05 | **0.800** |" in rep
    _write(tmp_path / "advtrain.csv", [COLUMNS, row("pgd", 0.1, 0.8, 0.1), row("alg1-10", 0.1, 0.7, 0.2)])
    rep = write_report(tmp_path).read_text()
    assert "(robust accuracy under auto, every eps): **holds**" in rep
    assert "(highest fooling ratio of its attacks, every eps): **holds**" in rep


@pytest.mark.parametrize("argv, match", [(["fig3a", "--limit", "10"], "--limit go\\(es\\) with advtrain only"),
                                         (["table3", "--eps", "0.1"], "--eps go\\(es\\) with advtrain only"),
                                         (["advtrain", "--eps", "0.1,1.5"], "must lie in \\(0, 1\\)"),
                                         (["advtrain", "--limit", "0"], "--limit must be >= 1")])
def test_reproduce_limit_and_eps_go_with_advtrain(tmp_path, capsys, argv, match):
    import re

    from pertattack.cli import main

    assert main(["reproduce", *argv, "--out", str(tmp_path / "o")]) == 2
    assert re.search(match, capsys.readouterr().err)


def _fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """A report.json as a run on another machine left it: absolute --out, a cache under the home folder, a data
    folder named by $PERTATTACK_CIFAR10; fig1 ran without its CIFAR-10 part, fig3c skipped."""
    out = tmp_path / "res"
    out.mkdir()
    cifar = tmp_path / "data" / "cifar10"
    monkeypatch.setenv("PERTATTACK_CIFAR10", str(cifar))
    home = str(Path.home())
    _write(out / "fig1.csv", [["dataset", "index", "label", "pred", "pred_adv", "eps", "norm"],
                              ["mnist", 0, 7, 7, 3, 0.2, 0.2]])
    why = f"CIFAR-10 batch test_batch not found in {cifar}/cifar-10-batches-py"
    rec = {"fig1": {"status": "ran", "command": f"pertattack reproduce all --out {out} --n 10", "time_s": 3.0,
                    "note": f"mnist: ...; CIFAR-10 part not run: {why}; figure in {out}/fig1.png",
                    "part_skipped": "CIFAR-10 (NIN): no CIFAR-10 files",
                    "models": {"lenet5 (mnist)": {"cache": f"{home}/.cache/pertattack/lenet5.pt"}}},
           "fig3c": {"status": "skipped", "command": f"pertattack reproduce all --out {out} --n 10", "reason": why}}
    (out / "report.json").write_text(json.dumps(rec))
    return out, {"out": str(out), "cifar": str(cifar), "home": home}


def test_report_has_no_absolute_path_and_says_a_part_was_skipped(tmp_path, monkeypatch):
    """REPORT.md and report.json: the --out folder as ".", $PERTATTACK_* folders by their variable, the home folder
    as ~; an item that ran without a part says so in the summary, the Ran line and its section (issue 18)."""
    out, paths = _fake_run(tmp_path, monkeypatch)
    rep = write_report(out).read_text()
    for text in (rep, (out / "report.json").read_text()):
        for absolute in paths.values():
            assert absolute not in text
    assert "`pertattack reproduce all --out . --n 10`" in rep
    assert "not found in $PERTATTACK_CIFAR10/cifar-10-batches-py" in rep and "figure in ./fig1.png" in rep
    assert "| fig1 | ran (part skipped: CIFAR-10 (NIN): no CIFAR-10 files) | 1/1 | 3 |" in rep
    assert "| fig1 | ran |" not in rep and "of these, part skipped: fig1 (CIFAR-10 (NIN)" in rep
    section = _section(rep, "## Figure 1")
    assert "**Status:** ran (part skipped: CIFAR-10 (NIN)" in section
    assert "| fig3c | skipped |" in rep
    assert json.loads((out / "report.json").read_text())["fig1"]["models"]["lenet5 (mnist)"]["cache"] \
        == "~/.cache/pertattack/lenet5.pt"
    before = rep
    assert write_report(out).read_text() == before  # rewriting is idempotent


def test_record_writes_portable_paths(tmp_path, monkeypatch):
    from pertattack.experiments.report import record

    out = tmp_path / "res"
    monkeypatch.setenv("PERTATTACK_STL10", str(tmp_path / "stl"))
    record(out, "fig4d", {"status": "skipped", "command": f"pertattack reproduce fig4d --out {out}",
                          "reason": f"not found in {tmp_path / 'stl'} or {tmp_path / 'stl' / 'stl10_binary'}"})
    rec = json.loads((out / "report.json").read_text())["fig4d"]
    assert rec["command"] == "pertattack reproduce fig4d --out ."
    assert rec["reason"] == "not found in $PERTATTACK_STL10 or $PERTATTACK_STL10/stl10_binary"
    assert str(tmp_path) not in (out / "report.json").read_text()


def test_report_says_the_dithering_choice(tmp_path):
    from pertattack.experiments.report import _dither_md

    (tmp_path / "report.json").write_text("{}")
    rep = write_report(tmp_path).read_text()
    assert "## Dithering of the linearisation point" in rep and "dither.csv" not in rep
    rows = {line.split(" | ")[1]: line for line in _dither_md(tmp_path) if line.startswith("| ")}
    first = next(line for line in rows.values() if "eps~_1 = eps" in line)
    none = next(line for line in rows.values() if "not dithered" in line)
    for name in ("pgd-paper", "linear-l2-20", "linear-linf-1", "linear-pixel-100"):
        assert name in first and name not in none
    for name in ("alg1-10", "alg1", "fgsm", "quadratic-l2"):
        assert f" {name}," in none or f" {name} |" in none
    _write(tmp_path / "dither.csv", [["attack", "dither", "eps=0", "eps=0.2", "mean", "time_s"],
                                     ["alg1", "none", 0, 0.707, 0.2734, 1], ["alg1", "first", 0, 0.7854, 0.2993, 1]])
    rep = write_report(tmp_path).read_text()
    assert "| alg1 | first | 0.299 | 0.785 |" in rep and "[dither.csv](dither.csv)" in rep


def test_reproducing_one_item_keeps_the_other_sections(tmp_path, monkeypatch):
    """`reproduce ITEM --out DIR` on a DIR with a report: that item's record and section are new, every other
    section is as it was (issue 18)."""
    out, _ = _fake_run(tmp_path, monkeypatch)
    old = write_report(out).read_text()

    def fake_fig4a(*, out: Path, **_: object) -> dict:
        _write(out / "fig4a.csv", [["attack", "eps", "input_psnr", "output_psnr"],
                                   *[[a, 0.1, 20.0, v] for a, v in (("rand-l2", 30.0), ("linear-l2-1", 20.0),
                                                                    ("linear-l2-20", 15.0), ("quadratic-l2", 16.0))]])
        return {"note": "fake"}

    monkeypatch.setitem(paper.EXPERIMENTS, "fig4a", ("fake", fake_fig4a))
    paper.reproduce("fig4a", out=out, n=2, epochs=1)
    new = (out / "REPORT.md").read_text()
    recs = json.loads((out / "report.json").read_text())
    assert set(recs) == {"fig1", "fig3c", "fig4a"} and recs["fig4a"]["note"] == "fake"
    for item in ("## Figure 1", "## Figure 3(c)"):
        assert _section(new, item).strip() == _section(old, item).strip()
    assert "| fig4a | ran | 3/3 |" in new and "| fig4a | not run |" in old


def _section(rep: str, heading: str) -> str:
    """The section of REPORT.md that starts at ``heading``, up to the next section (or the end)."""
    start = rep.index(heading)
    end = rep.find("\n## ", start + len(heading))
    return rep[start:] if end < 0 else rep[start:end]


def test_a_folder_of_one_item_has_no_empty_sections(tmp_path, monkeypatch):
    """Items never run into the folder stay in the summary as 'not run' and are named under it, with no empty
    section of their own, and 'Skipped: none' is not left alone to suggest that everything ran."""
    out, _ = _fake_run(tmp_path, monkeypatch)
    rep = write_report(out).read_text()
    assert "| fig4a | not run |" in rep and "## Figure 4(a)" not in rep
    assert "Not run into this folder (no section below): " in rep and "fig4a" in rep.split("Not run into")[1]
    assert "## Figure 1" in rep


def test_pertattack_report_redraws_a_reproduce_folder(tmp_path, monkeypatch, capsys):
    from pertattack.cli import main

    out, paths = _fake_run(tmp_path, monkeypatch)
    assert main(["report", str(out)]) == 0
    rep = (out / "REPORT.md").read_text()
    assert "| fig1 | ran (part skipped:" in rep and paths["out"] not in rep
    assert "wrote" in capsys.readouterr().out
