"""Compare the results.csv of two `pertattack evaluate` runs: which columns differ, and by how much.

Exit status 0 when every row is the same, 1 otherwise. Used by benchmarks/gpu.sh (1 process vs 2 ranks)::

    python benchmarks/compare_rows.py OUT_A OUT_B
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    a_dir, b_dir = (Path(p) for p in (argv if argv is not None else sys.argv[1:]))
    rows = []
    for d in (a_dir, b_dir):
        with open(d / "results.csv", newline="") as fh:
            rows.append(list(csv.DictReader(fh)))
    a, b = rows
    if len(a) != len(b):
        print(f"different row counts: {len(a)} vs {len(b)}")
        return 1
    differ: dict[str, list[float]] = {}
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if ra[key] != rb[key]:
                try:
                    va, vb = float(ra[key]), float(rb[key])
                    rel = abs(va - vb) / max(abs(va), abs(vb), 1e-300)
                except ValueError:
                    rel = float("inf")
                differ.setdefault(key, []).append(rel)
    if not differ:
        print(f"rows identical ({len(a)} rows)")
        return 0
    for key, rels in differ.items():
        print(f"column {key}: {len(rels)} of {len(a)} rows differ, largest relative difference {max(rels):.3g}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
