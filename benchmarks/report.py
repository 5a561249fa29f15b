"""Regenerate the tables of benchmarks/README.md from the CSV files the benchmarks write.

Each table lives between two marker comments in the README::

    <!-- table:classification -->
    ...generated, do not edit by hand...
    <!-- /table:classification -->

and is rebuilt from ``benchmarks/results/<name>.csv``. A CSV that does not exist leaves its table as it
is (with a note on stderr). Run::

    python benchmarks/report.py                 # every table of the README
    python benchmarks/report.py --check         # exit 1 if the README is not up to date
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results"


def _num(v: str, spec: str, scale: float = 1.0) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v or "-"
    return "-" if math.isnan(f) else format(f * scale, spec)


# a column: (header, CSV field, formatter)
Column = tuple[str, str, Callable[[str], str]]

CLASSIFICATION: list[Column] = [
    ("attack", "attack", str),
    ("impl", "impl", str),
    ("n", "n", str),
    ("fwd_g/fwd_ng/bwd", "passes", str),
    ("seconds", "seconds", lambda v: _num(v, ".3f")),
    ("spread", "spread", lambda v: _num(v, ".0f", 100) + "%" if _num(v, ".0f") != "-" else "-"),
    ("ms/img", "s_per_image", lambda v: _num(v, ".3f", 1000)),
    ("x_floor", "x_floor", lambda v: _num(v, ".2f")),
    ("x_peer", "x_peer", lambda v: _num(v, ".2f")),
    ("success", "success", lambda v: _num(v, ".3f")),
    ("norm", "norm", lambda v: _num(v, ".3f")),
    ("note", "note", str),
]

PROFILE: list[Column] = [
    ("attack", "attack", str),
    ("batch", "batch", str),
    ("threads", "threads", str),
    ("impl", "impl", str),
    ("op", "op", str),
    ("self ms", "self_ms", lambda v: _num(v, ".1f")),
    ("share", "share", lambda v: _num(v, ".1f", 100) + "%" if _num(v, ".1f") != "-" else "-"),
    ("calls", "calls", str),
]

SUMMARY: list[Column] = [
    ("model", "model", str),
    ("attack", "attack", str),
    ("batch", "batch", str),
    ("threads", "threads", str),
    ("pertattack passes", "passes", str),
    ("pertattack / floor", "x_floor", lambda v: _num(v, ".3f")),
    ("torchattacks / floor", "peer_x_floor", lambda v: _num(v, ".3f")),
    ("pertattack / torchattacks", "x_peer", lambda v: _num(v, ".3f")),
    ("same, less the success forward", "x_peer_net", lambda v: _num(v, ".3f")),
    ("spread (pertattack)", "spread", lambda v: _num(v, ".0f", 100) + "%" if _num(v, ".0f") != "-" else "-"),
]


def _all(row: dict[str, str]) -> bool:
    return True


def summary(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """One row per (model, attack, batch, threads): pertattack's and torchattacks' time over the floor,
    and pertattack's over torchattacks' (medians of the rounds, from one process)."""
    out = []
    for r in rows:
        if r.get("impl") != "pertattack":
            continue
        peer = next((q for q in rows if q.get("impl") == "torchattacks" and all(
            q.get(k) == r.get(k) for k in ("model", "device", "attack", "batch", "threads"))), None)
        out.append({**r, "peer_x_floor": peer["x_floor"] if peer else "nan"})
    return out


#: table name -> (CSV file in results/, columns, which rows[, how the rows are summarised]); the profile
#: table shows PGD-40 and BIM only
TABLES: dict[str, tuple] = {
    "classification": ("classification.csv", CLASSIFICATION, _all),
    "summary": ("overhead.csv", SUMMARY, _all, summary),
    "summary-before": ("overhead_before.csv", SUMMARY, _all, summary),
    "summary-heap": ("overhead_heap.csv", SUMMARY, _all, summary),
    "summary-resnet18": ("resnet18_b1.csv", SUMMARY, _all, summary),
    "summary-resnet18-128": ("resnet18.csv", SUMMARY, _all, summary),
    "profile": ("profile.csv", PROFILE, lambda r: r.get("attack") in ("pgd", "bim") and r.get("batch") == "128"),
    # on a GPU (benchmarks/gpu.sh)
    "summary-cuda": ("overhead_cuda.csv", SUMMARY, _all, summary),
    "summary-cuda-r10": ("overhead_cuda_r10.csv", SUMMARY, _all, summary),
    "summary-resnet18-cuda": ("resnet18_cuda.csv", SUMMARY, _all, summary),
    "classification-cuda": ("classification_cuda.csv", CLASSIFICATION, _all),
    "classification-cuda-deepfool": ("classification_cuda_deepfool.csv", CLASSIFICATION, _all),
}


def markdown(rows: list[dict[str, str]], columns: list[Column]) -> str:
    """A markdown table of ``rows`` (CSV dicts) in ``columns``; numbers right-aligned."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    align = "|" + "|".join("---" if f in ("attack", "impl", "note", "op") else "--:" for _, f, _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(f, "")).replace("|", "\\|") for _, f, fmt in columns) + " |" for r in rows]
    return "\n".join([head, align, *body])


def render(readme: str, results: Path = RESULTS) -> str:
    """The README text with every marked table rebuilt from its CSV (tables without a CSV unchanged)."""
    for name, (file, columns, keep, *how) in TABLES.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(.*?)(<!-- /table:{name} -->)", re.S)
        if not pattern.search(readme):
            continue
        path = results / file
        if not path.exists():
            print(f"[keep] {path} does not exist: table {name!r} left as it is", file=sys.stderr)
            continue
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if keep(r)]
        if how:
            rows = how[0](rows)
        table = (f"<!-- generated by `python benchmarks/report.py` from results/{file}; "
                 f"do not edit by hand -->\n" + markdown(rows, columns) + "\n")
        readme = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(3), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=str(README), help="the README to rewrite (default benchmarks/README.md)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the CSV files (default benchmarks/results)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the README is out of date")
    args = ap.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = render(old, Path(args.results))
    if args.check:
        if new != old:
            print(f"{path} is out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
        print(f"rewrote {path}")
    else:
        print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
