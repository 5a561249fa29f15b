"""Square attack: pertattack's ``square`` preset against torchattacks' ``Square``, same budget, MNIST LeNet-5.

What is measured
----------------
One process, one trained LeNet-5 (MNIST, logits), the first ``--n`` MNIST test images (default 500).
Both libraries attack the images the model classifies correctly (the AutoAttack protocol, which
torchattacks' Square follows by itself); an image the model gets wrong counts as not robust.

Rows: for each norm (l-inf, eps = ``--eps-linf`` 0.1; l2, eps = ``--eps-l2`` 1.5) and each thread count
(``--threads``, default ``1,2``, ``torch.set_num_threads``):

* ``pertattack``: ``get_attack("square", p=..., eps=..., queries=Q, seed=0)(model, x, y)``; Q queries per
  image in all: the start and Q - 1 proposals.
* ``torchattacks`` 3.5.1: ``Square(model, norm=..., eps=..., n_queries=Q, n_restarts=1, p_init=0.8,
  loss="margin", resc_schedule=True, seed=0)(x, y)``: the start and Q proposals (Q + 1 queries).

Both use p_init = 0.8, the margin loss, stop querying an image once it is fooled and take the same
schedule of square sizes; they differ in the random numbers (torchattacks draws one window position
per step for the whole batch from the global generator, pertattack one per image from its
counter-based stream) and in small details (pertattack flips the signs of an l-inf window that would
not change the image; positions may reach the last row/column).

Columns: ``seconds`` (median of ``--repeat`` rounds; in each round every row runs once, round-robin, so
background load on a shared machine is spread over the rows), ``spread`` ((max - min) / median),
``robust_acc`` (share of the n images classified correctly both clean and at x_adv; evaluated here, the
same way for both), ``success`` (share of the attacked images fooled), ``queries`` (model rows per
attacked image, counted by a wrapper of the model on the first round; it includes each library's own
clean and final evaluations) and ``max_norm`` (largest lp norm of x_adv - x, must be <= eps).

The model: ``--checkpoint`` (default ``~/.cache/pertattack/mnist-lenet5-e1-s0.pt``) if it exists, else
LeNet-5 (seed 0) trained here with ``pertattack.training.train_classifier`` for ``--train-epochs``
(default 1) epochs on the MNIST training set (not timed, not saved).

Run::

    python benchmarks/bench_square.py --n 500 --queries 1000 --threads 1,2 --repeat 3 \\
        --out benchmarks/results/square.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from bench_classification import default_mnist, get_model  # the same LeNet-5 and data folder
from torch import Tensor, nn

import pertattack
from pertattack.data import load_mnist

DEFAULT_CKPT = Path.home() / ".cache" / "pertattack" / "mnist-lenet5-e1-s0.pt"
Run = Callable[[Tensor, Tensor], Tensor]  # (x, y) -> x_adv


class Counting(nn.Module):
    """The model, counting the rows (inputs) it is called on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.model(x)


@dataclass
class Row:
    norm: str
    eps: float
    impl: str
    threads: int
    run: Run
    times: list[float] = field(default_factory=list)
    robust_acc: float = math.nan
    success: float = math.nan
    queries: float = math.nan
    max_norm: float = math.nan

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return (max(self.times) - min(self.times)) / self.seconds


def make_run(impl: str, norm: str, eps: float, queries: int, model: nn.Module) -> Run:
    p = math.inf if norm == "linf" else 2.0
    if impl == "pertattack":
        atk = pertattack.get_attack("square", p=p, eps=eps, queries=queries, seed=0)
        return lambda x, y: atk(model, x, y).x_adv
    import torchattacks as ta

    tatk = ta.Square(model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=queries, n_restarts=1,
                     p_init=0.8, loss="margin", resc_schedule=True, seed=0)
    return lambda x, y: tatk(x, y)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="test images (default 500)")
    ap.add_argument("--queries", type=int, default=1000, help="query budget per image (default 1000)")
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--norms", default="linf,l2", help="comma-separated subset of linf,l2")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values (default 1,2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    ap.add_argument("--impls", default="pertattack,torchattacks")
    ap.add_argument("--out", default=None, help="CSV file to write")
    ap.add_argument("--data", default=default_mnist(), help="folder with the MNIST IDX files")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="LeNet-5 checkpoint to use if it exists")
    ap.add_argument("--train-epochs", type=int, default=1, help="epochs when no checkpoint exists (default 1)")
    args = ap.parse_args(argv)
    norms = [s.strip() for s in args.norms.split(",") if s.strip()]
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    threads = [int(s) for s in args.threads.split(",") if s.strip()]
    if any(nm not in ("linf", "l2") for nm in norms) or any(i not in ("pertattack", "torchattacks") for i in impls):
        ap.error("--norms: linf,l2; --impls: pertattack,torchattacks")
    if args.n < 1 or args.repeat < 1 or args.queries < 1 or not threads or min(threads) < 1:
        ap.error("--n, --repeat, --queries and --threads must be >= 1")
    warnings.filterwarnings("ignore", category=UserWarning)

    model, how = get_model(args)
    x, y = load_mnist(args.data, "test", limit=args.n)
    x = x.float()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    xa, ya = x[clean], y[clean]
    print(f"model: {how}; clean accuracy {float(clean.float().mean()):.4f} on {args.n} test images; "
          f"{int(clean.sum())} attacked; queries {args.queries}; torch {torch.__version__}", file=sys.stderr)

    counter = Counting(model).eval()
    rows = [Row(nm, args.eps_linf if nm == "linf" else args.eps_l2, impl, t,
                make_run(impl, nm, args.eps_linf if nm == "linf" else args.eps_l2, args.queries, counter))
            for t in threads for nm in norms for impl in impls]
    for t in threads:
        torch.set_num_threads(t)
        mine = [r for r in rows if r.threads == t]
        for r in mine:  # warm-up, untimed
            r.run(xa[:8], ya[:8])
        for k in range(args.repeat):
            for r in mine:
                counter.rows = 0
                t0 = time.perf_counter()
                x_adv = r.run(xa, ya)
                r.times.append(time.perf_counter() - t0)
                if k == 0:
                    r.queries = counter.rows / len(xa)
                    with torch.no_grad():
                        robust = model(x_adv).argmax(1) == ya
                    r.robust_acc = float(robust.sum()) / args.n
                    r.success = float((~robust).float().mean())
                    d = (x_adv - xa).flatten(1)
                    r.max_norm = float(d.abs().amax() if r.norm == "linf" else d.norm(dim=1).max())
                print(f"  {r.norm} {r.impl} threads={t} round {k}: {r.times[-1]:.2f} s", file=sys.stderr)

    header = ["norm", "eps", "impl", "threads", "seconds", "spread", "robust_acc", "success", "queries", "max_norm"]
    table = [[r.norm, r.eps, r.impl, r.threads, f"{r.seconds:.2f}", f"{r.spread:.2f}", f"{r.robust_acc:.4f}",
              f"{r.success:.4f}", f"{r.queries:.1f}", f"{r.max_norm:.4f}"] for r in rows]
    widths = [max(len(str(v)) for v in col) for col in zip(header, *table, strict=True)]
    for line in [header, *table]:
        print("  ".join(str(v).rjust(w) for v, w in zip(line, widths, strict=True)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
