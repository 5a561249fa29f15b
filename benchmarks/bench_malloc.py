"""How glibc's allocator settings change the cost of plain forward+backward passes (no attack at all).

The activations of a forward pass are large allocations. By default glibc serves them with fresh ``mmap()``s
(or returns the top of the heap to the system after each pass), and the page faults of touching that memory
again cost time, more or less from one process to the next. Run this script once per setting, each in a fresh
process, and compare the milliseconds and the minor page faults (``/usr/bin/time -f %R``)::

    for env in "" "MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296" \\
               "MALLOC_MMAP_THRESHOLD_=4294967296" "MALLOC_TRIM_THRESHOLD_=4294967296"; do
        env $env OMP_NUM_THREADS=1 /usr/bin/time -f "minor faults %R" python benchmarks/bench_malloc.py
    done

It times 10 forward+backward passes of LeNet-5 on 128 MNIST test images (a fresh input tensor each pass, as
an attack has), median of 7 rounds, one thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from pertattack.data import load_mnist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_classification import DEFAULT_CKPT, default_mnist, lenet5  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=default_mnist())
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = lenet5(args.checkpoint)
    x, y = load_mnist(args.data, "test", limit=args.n)

    def passes() -> None:
        for _ in range(10):
            xg = (x + 0).detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    passes()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        passes()
        times.append(time.perf_counter() - t0)
    print(f"{1000 * statistics.median(times):.1f} ms for 10 forward+backward passes (n={args.n}, "
          f"threads={args.threads}, median of 7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
