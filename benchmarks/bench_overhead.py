"""The loop's overhead: budgeted attacks against the floor and torchattacks, at 1 and 2 threads.

What is measured
----------------
One process. For each thread count of ``--threads`` (``torch.set_num_threads``) and each attack:

* ``floor``: the attack's number of plain forward+backward passes of the same model on the same batch,
  ``torch.autograd.grad(cross_entropy(model(x), y, reduction="sum"), x)`` and nothing else
  (FGSM 1, BIM = alg1-10 = pgd-paper 10, PGD-40 40);
* ``pertattack``: ``get_attack(name, eps=...)(model, x, y)``, the whole call (checks, clean forward
  where one is needed, the loop, the budget fit, the success check);
* ``torchattacks`` 3.5.1 (if installed): FGSM, PGD(steps=40, alpha=2.5 eps/40, random_start=True),
  BIM(alpha=eps/10, steps=10), APGD(norm="Linf", steps=100, n_restarts=1, loss="ce" / "dlr").

Rows run round-robin (one untimed warm-up call each, then ``--repeat`` rounds, every row once per
round) so that background load on a shared machine spreads over all rows; ``seconds`` is the median,
``spread`` (max - min) / median, ``x_floor`` and ``x_peer`` ratios of medians *within one process*;
``best``, ``x_floor_best`` and ``x_peer_best`` the same from the fastest round of each row (on a shared
machine the fastest round is the least disturbed one).
``passes`` (fwd with autograd / fwd without / backward) are counted on an untimed run.

Models: ``lenet5`` (MNIST test images, the trained checkpoint if ``--checkpoint`` exists, else
random weights; the overhead does not depend on the weights) or ``resnet18`` (random weights, random
32x32 RGB images in [0, 1], eval mode), at every batch size of ``--batch``.

``--profile`` adds a torch.profiler table (top ``--top`` operators by self CPU time) of pertattack and
of the floor for each attack, at each thread count, to ``--profile-out``.

Run::

    python benchmarks/bench_overhead.py --model lenet5 --batch 256 --threads 1,2 --repeat 5 \
        --out benchmarks/results/overhead.csv --profile --profile-out benchmarks/results/profile.csv
    python benchmarks/bench_overhead.py --model resnet18 --batch 1,128 --threads 1,2 --attacks fgsm,bim \
        --out benchmarks/results/resnet18.csv
    python benchmarks/report.py      # the tables of benchmarks/README.md from the CSV files
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import pertattack
from pertattack.models import build_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_classification import DEFAULT_CKPT, Counting, default_mnist, device_name, lenet5, timed, write_csv  # noqa: E402

EPS = 0.1
#: name -> (pertattack preset, keywords, gradient passes)
ATTACKS: dict[str, tuple[str, dict, int]] = {
    "fgsm": ("fgsm", {}, 1),
    "pgd": ("pgd", {"seed": 0}, 40),
    "bim": ("bim", {}, 10),
    "alg1-10": ("alg1-10", {}, 10),
    "pgd-paper": ("pgd-paper", {"seed": 0}, 10),
    "apgd-ce": ("apgd-ce", {"seed": 0}, 100),
    "apgd-dlr": ("apgd-dlr", {"seed": 0}, 100),
}

Run = Callable[[Tensor, Tensor], object]

#: glibc's allocator settings of this process (the ``malloc`` column): by default glibc serves the large
#: activations of a forward pass with fresh mmap()s, whose page faults make the same loop 1.0x or 1.4x as
#: slow from one process to the next; MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
#: keeps them on the heap, and the timings stable (the same for every row of a run: ratios stay comparable)
MALLOC = "heap" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default"


def floor(model: nn.Module, passes: int) -> Run:
    def run(x: Tensor, y: Tensor) -> None:
        for _ in range(passes):
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    return run


def nograd_forward(model: nn.Module) -> Run:
    def run(x: Tensor, y: Tensor) -> None:
        with torch.no_grad():
            model(x)

    return run


def pert(model: nn.Module, name: str, kw: dict) -> Run:
    atk = pertattack.get_attack(name, eps=EPS, **kw)
    return lambda x, y: atk(model, x, y)


def peer(model: nn.Module, name: str) -> Run | None:
    try:
        import torchattacks as ta
    except ImportError:
        return None
    ctor = {"fgsm": lambda: ta.FGSM(model, eps=EPS),
            "pgd": lambda: ta.PGD(model, eps=EPS, alpha=2.5 * EPS / 40, steps=40, random_start=True),
            "bim": lambda: ta.BIM(model, eps=EPS, alpha=EPS / 10, steps=10),
            "apgd-ce": lambda: ta.APGD(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce", seed=0),
            "apgd-dlr": lambda: ta.APGD(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="dlr", seed=0),
            }.get(name)
    return None if ctor is None else ctor()


def passes_of(model: nn.Module, make: Callable[[nn.Module], Run], x: Tensor, y: Tensor) -> str:
    counter = Counting(model).eval()
    make(counter)(x, y)
    return f"{counter.fwd_grad}/{counter.fwd_nograd}/{counter.bwd}"


def data(args: argparse.Namespace, batch: int) -> tuple[nn.Module, Tensor, Tensor]:
    if args.model == "lenet5":
        from pertattack.data import load_mnist

        x, y = load_mnist(args.data, "test", limit=batch)
        model = lenet5(args.checkpoint)
    else:
        model = build_model("resnet18", seed=0).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, 32, 32, generator=g)
        with torch.no_grad():
            y = model(x).argmax(1)
    return model.to(args.device), x.to(args.device), y.to(args.device)


def profile_rows(run: Run, x: Tensor, y: Tensor, top: int) -> list[tuple[str, float, int, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(x, y)
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1000, e.count, e.self_cpu_time_total / total) for e in ev[:top]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["lenet5", "resnet18"], default="lenet5")
    ap.add_argument("--batch", default="256", help="comma-separated batch sizes (default 256)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda (timed from a synchronised start "
                    "to a synchronised end)")
    ap.add_argument("--attacks", default="fgsm,pgd,bim,alg1-10,pgd-paper",
                    help=f"comma-separated subset of {','.join(ATTACKS)}")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds; the median is reported (default 5)")
    ap.add_argument("--out", default=None, help="CSV file to write")
    ap.add_argument("--profile", action="store_true", help="also profile pertattack and the floor")
    ap.add_argument("--profile-out", default=None, help="CSV of the profiles (with --profile)")
    ap.add_argument("--top", type=int, default=8, help="operators per profile (default 8)")
    ap.add_argument("--data", default=default_mnist(), help="MNIST folder (lenet5)")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="LeNet-5 checkpoint, if it exists")
    args = ap.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad:
        ap.error(f"unknown attack(s) {bad}; known: {list(ATTACKS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"torch {torch.__version__}, device {device_name(args.device)}, model {args.model}, eps {EPS} (l-inf), "
          f"pid {os.getpid()}")

    table, prof_rows = [], []
    for batch in [int(b) for b in args.batch.split(",")]:
        model, x, y = data(args, batch)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            rows: list[dict] = [dict(attack="-", model=args.model, device=args.device, batch=batch, threads=threads,
                                     impl="no-grad forward",
                                     malloc=MALLOC, passes="0/1/0", run=nograd_forward(model), times=[],
                                     note="one forward without autograd (pertattack's success check)")]
            for a in attacks:
                name, kw, npass = ATTACKS[a]
                makers: list[tuple[str, Callable[[nn.Module], Run | None]]] = [
                    ("floor", lambda m, n=npass: floor(m, n)),
                    ("pertattack", lambda m, n=name, k=kw: pert(m, n, k)),
                    ("torchattacks", lambda m, n=a: peer(m, n)),
                ]
                for impl, make in makers:
                    run = make(model)
                    if run is None:
                        continue
                    rows.append(dict(attack=a, model=args.model, device=args.device, batch=batch, threads=threads,
                                     impl=impl,
                                     malloc=MALLOC,
                                     passes=passes_of(model, make, x, y), run=run, times=[],  # type: ignore[arg-type]
                                     note=f"{npass} fwd+bwd" if impl == "floor" else ""))
            for r in rows:
                r["run"](x, y)
            for _ in range(args.repeat):
                for r in rows:
                    r["times"].append(timed(r["run"], x, y))
            for r in rows:
                r["seconds"] = statistics.median(r["times"])
                r["best"] = min(r["times"])
                r["spread"] = (max(r["times"]) - min(r["times"])) / r["seconds"]
            fwd_s = rows[0]["seconds"]
            for r in rows:
                fl = next((q for q in rows if q["attack"] == r["attack"] and q["impl"] == "floor"), None)
                pe = next((q for q in rows if q["attack"] == r["attack"] and q["impl"] == "torchattacks"), None)
                nan = float("nan")
                r["x_floor"] = r["seconds"] / fl["seconds"] if fl else nan
                r["x_floor_best"] = r["best"] / fl["best"] if fl else nan
                cmp = pe is not None and r["impl"] != "floor"
                r["x_peer"] = r["seconds"] / pe["seconds"] if cmp else nan
                r["x_peer_best"] = r["best"] / pe["best"] if cmp else nan
                # less the no-grad forwards that the peer does not make (pertattack's success check): the
                # loop's own cost against the peer's
                extra = int(r["passes"].split("/")[1]) - (int(pe["passes"].split("/")[1]) if pe else 0)
                r["x_peer_net"] = (r["seconds"] - extra * fwd_s) / pe["seconds"] if cmp else nan
                print(f"{r['attack']:<10}{batch:>6}{threads:>3}  {r['impl']:<13}{r['passes']:<10}"
                      f"{r['seconds']:>9.4f}{100 * r['spread']:>6.0f}%{r['x_floor']:>8.3f}{r['x_peer']:>8.3f}"
                      f"  best{r['best']:>9.4f}{r['x_floor_best']:>8.3f}{r['x_peer_best']:>8.3f}"
                      f"  net{r['x_peer_net']:>8.3f}")
                table.append({k: (" ".join(f"{t:.4f}" for t in v) if k == "times" else v)
                              for k, v in r.items() if k != "run"})
            if args.profile:
                for a in attacks:
                    name, kw, npass = ATTACKS[a]
                    for impl, run in (("floor", floor(model, npass)), ("pertattack", pert(model, name, kw))):
                        for op, ms, calls, share in profile_rows(run, x, y, args.top):
                            prof_rows.append(dict(attack=a, batch=batch, threads=threads, impl=impl, op=op,
                                                  self_ms=ms, share=share, calls=calls))
    if args.out:
        write_csv(args.out, table)
    if prof_rows and args.profile_out:
        write_csv(args.profile_out, prof_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
