"""benchmarks/report.py: the README's tables are rebuilt from the CSV files, between their markers only."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_table_is_rebuilt_between_markers_only(report, tmp_path):
    rows = [dict(attack="pgd", impl="floor", n="256", passes="40/0/40", seconds="1.5", spread="0.1",
                 s_per_image="0.002", x_floor="1.0", x_peer="nan", success="nan", n_correct="", norm="nan", times="",
                 note="40 fwd+bwd"),
            dict(attack="pgd", impl="pertattack", n="256", passes="40/1/40", seconds="1.6", spread="0.05",
                 s_per_image="0.00625", x_floor="1.0667", x_peer="0.98", success="0.9", n_correct="250",
                 norm="0.1", times="", note="a|b")]
    _write(tmp_path / "classification.csv", rows)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:classification -->\nold table\n<!-- /table:classification -->\noutro\n"
                      "<!-- table:resnet18 -->\nkept\n<!-- /table:resnet18 -->\n")
    assert report.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 1
    assert report.main(["--readme", str(readme), "--results", str(tmp_path)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("kept\n<!-- /table:resnet18 -->\n")  # no CSV: kept
    assert "old table" not in text
    assert "| pgd | pertattack | 256 | 40/1/40 | 1.600 | 5% | 6.250 | 1.07 | 0.98 | 0.900 | 0.100 | a\\|b |" in text
    assert "| pgd | floor | 256 | 40/0/40 | 1.500 | 10% | 2.000 | 1.00 | - | - | - | 40 fwd+bwd |" in text
    assert report.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 0  # idempotent


def test_the_repository_readme_is_up_to_date(report):
    assert report.render(report.README.read_text()) == report.README.read_text()
