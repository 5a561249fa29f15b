"""Time ``pertattack demo`` with 1 and 2 torch threads, each run in a fresh process, as a user runs it.

Each round runs the thread counts one after the other (order alternating between rounds, so that
neither always meets the warmer or the busier machine); a run is the whole command: interpreter
start, imports, training, attacks, figures, report. Beside the wall time: the CPU time (user + system)
of the process, and the load average before and after, since on a shared machine the neighbours
decide a good part of the wall time (on an idle machine, one thread's wall time is about its CPU time).

Usage::

    python benchmarks/bench_demo.py --threads 1,2 --repeat 3 [--quick] [--csv benchmarks/results/demo.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(threads: int, quick: bool, out: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``pertattack demo`` process with ``threads`` torch threads."""
    cmd = [sys.executable, "-m", "pertattack.cli", "demo", "--out", str(out), "--threads", str(threads),
           "--no-progress"]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    # OMP/MKL follow --threads too, so that no library spawns threads of its own beside torch's
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeat", type=int, default=3, help="rounds")
    ap.add_argument("--quick", action="store_true", help="time `pertattack demo --quick` instead")
    ap.add_argument("--csv", default=None, help="append the runs to this CSV")
    args = ap.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]
    print(f"{os.cpu_count()} CPU cores; pertattack demo{' --quick' if args.quick else ''}, {args.repeat} rounds")
    times: dict[int, list[float]] = {t: [] for t in counts}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            order = counts if r % 2 == 0 else counts[::-1]
            for t in order:
                load0 = os.getloadavg()[0]
                s, cpu = run_once(t, args.quick, Path(tmp) / f"t{t}")
                load1 = os.getloadavg()[0]
                times[t].append(s)
                rows.append([r, t, f"{s:.2f}", f"{cpu:.2f}", f"{load0:.2f}", f"{load1:.2f}"])
                print(f"round {r}: {t} thread(s) {s:6.2f} s wall, {cpu:6.2f} s CPU   "
                      f"(1-min load average {load0:.2f} -> {load1:.2f})")
    for t in counts:
        v = times[t]
        print(f"{t} thread(s): median {statistics.median(v):.2f} s, min {min(v):.2f} s, max {max(v):.2f} s")
    if args.csv:
        path = Path(args.csv)
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["round", "threads", "seconds", "cpu_seconds", "load_before", "load_after"])
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
