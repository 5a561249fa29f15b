"""report.md from rows made up here (no attack runs): many classes, inputs that are vectors (issue 19)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pertattack import get_attack
from pertattack.report import EvalRun, write_report


def _run(tmp_path, n: int = 300, classes: int = 30) -> EvalRun:
    rng = np.random.default_rng(0)
    label = rng.integers(0, classes, n)
    clean = np.where(rng.random(n) < 0.9, label, (label + 1) % classes)
    pred = np.stack([np.stack([np.where(rng.random(n) < r, label, (label + 2) % classes) for r in (0.7, 0.4)])])
    part = dict(index=np.arange(n), label=label, clean=clean, pred=pred, success=pred != label,
                norm=rng.random((1, 2, n)) * 0.1, ex_index=np.array([[0, 1, -1]]),
                ex_drop=np.array([[1.0, 0.5, np.nan]]),
                ex_prob=rng.random((1, 3, 3)).astype(np.float32), ex_x=rng.random((1, 3, 100)).astype(np.float16),
                ex_eta=(rng.random((1, 3, 100)) * 0.02).astype(np.float16))
    manifest = {"fingerprint": {"model": "m", "data": "d", "split": "test", "batch_size": n}, "n_inputs": n}
    return EvalRun(tmp_path, manifest, ["pgd"], [0.2, 0.1], [get_attack("pgd")], [part], 1)


def test_many_classes_list_the_least_robust_and_keep_all_in_the_csv(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run(tmp_path)
    md = write_report(run, []).read_text()
    assert "The 10 least robust of 30 classes at eps 0.2; all in per_class.csv." in md
    with open(tmp_path / "per_class.csv") as f:
        every = list(csv.DictReader(f))
    assert len(every) == 30
    start = md.index("| class | inputs | clean accuracy | eps 0.2 | eps 0.1 |")
    shown = [line.split("|")[1:-1] for line in md[start:].splitlines()[2:12]]
    want = sorted(every, key=lambda r: (float(r["robust_accuracy@0.2"]), int(r["class"])))[:10]
    assert [int(r[0]) for r in shown] == [int(r["class"]) for r in want]
    # vectors of 100 entries are drawn as 10 x 10 images; the padding (-1) is no example
    assert "| pgd | 0.2 | 0 |" in md and "| pgd | 0.2 | 1 |" in md and "| pgd | 0.2 | -1 |" not in md
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["examples.png", "robust_accuracy.png"]
    assert "## Minimum-norm distances" not in md  # pgd is not a minimum-norm attack
