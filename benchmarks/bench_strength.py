"""Strength of the evaluation attacks: pertattack against torchattacks, foolbox and AutoAttack.

What is measured
----------------
One process. Each model (``--checkpoint``, several allowed: e.g. LeNet-5 and the FCNN of ``pertattack
train``) on the first ``--n`` MNIST test images, l-inf (and l2 for the minimum-norm attacks):

* ``apgd-ce``: pertattack's ``apgd-ce`` (100 steps) against torchattacks' ``APGD(loss="ce", steps=100)``;
  robust accuracy (lower is stronger) and seconds, per eps of ``--eps``.
* ``auto`` against the AutoAttack authors' standard evaluation: see ``bench_auto.py`` (per input, per member,
  CPU time).
* ``square``: pertattack's ``square`` against torchattacks' ``Square`` at ``--queries`` queries.
* ``fmn``: pertattack's ``fmn`` (minimum norm, 100 steps) against foolbox's FMN and DDN (l2) at 100 steps
  and pertattack's DeepFool: success and median norm of the successful perturbations (smaller is stronger).

Robust accuracy: the share of all ``--n`` images still classified correctly at x_adv (evaluated here, the
same way for every library). Seconds: the whole call a user makes. Every attack is seeded.

Run::

    python benchmarks/bench_strength.py --checkpoint lenet5.pt fcnn.pt --n 1000 --eps 0.1,0.2 \
        --out benchmarks/results/strength.csv

A peer that is not installed is skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import pertattack
from pertattack.data import load_mnist
from pertattack.training import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classification import write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = os.environ.get("PERTATTACK_MNIST", str(ROOT.parent / "shared" / "data" / "mnist"))


def robust_accuracy(model: nn.Module, x_adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ours(name: str, model: nn.Module, x: Tensor, y: Tensor, **kw) -> tuple[Tensor, float]:  # type: ignore[no-untyped-def]
    attack = pertattack.get_attack(name, seed=0, **kw)
    res, sec = timed(lambda: attack(model, x, y))
    return res.x_adv, sec


def peer_apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, float] | None:
    try:
        import torchattacks
    except ImportError:
        print("torchattacks not installed: skipped", file=sys.stderr)
        return None
    atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=0, loss="ce")
    return timed(lambda: atk(x, y))


def peer_square(model: nn.Module, x: Tensor, y: Tensor, eps: float, queries: int) -> tuple[Tensor, float] | None:
    try:
        import torchattacks
    except ImportError:
        return None
    atk = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=0)
    return timed(lambda: atk(x, y))


def peer_minnorm(model: nn.Module, x: Tensor, y: Tensor, p: float, steps: int) -> dict[str, tuple[Tensor, float]]:
    try:
        import foolbox as fb
    except ImportError:
        print("foolbox not installed: skipped", file=sys.stderr)
        return {}
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    fmn = fb.attacks.LInfFMNAttack(steps=steps) if math.isinf(p) else fb.attacks.L2FMNAttack(steps=steps)
    attacks = {"foolbox-fmn": fmn}
    if p == 2:
        attacks["foolbox-ddn"] = fb.attacks.DDNAttack(steps=steps)
    out = {}
    for name, atk in attacks.items():
        (raw, clipped, _), sec = timed(lambda atk=atk: atk(fmodel, x, y, epsilons=None))
        out[name] = (clipped, sec)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True, help="classifier checkpoints of `pertattack train`")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", default="0.1,0.2")
    ap.add_argument("--queries", type=int, default=1000, help="square's query budget")
    ap.add_argument("--parts", default="apgd,square,fmn", help="which comparisons to run (apgd, square, fmn)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_mnist(args.data, "test", limit=args.n)
    parts = set(args.parts.split(","))
    rows: list[dict] = []

    def add(model_name: str, test: str, impl: str, eps: float | None, p: float, acc: float | None, sec: float,
            success: float | None = None, median: float | None = None) -> None:
        row = dict(model=model_name, test=test, impl=impl, eps="" if eps is None else eps,
                   p="inf" if math.isinf(p) else f"{p:g}", robust_acc="" if acc is None else f"{acc:.4f}",
                   seconds=f"{sec:.2f}", success="" if success is None else f"{success:.4f}",
                   median_norm="" if median is None else f"{median:.4f}")
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    for ckpt in args.checkpoint:
        model = load_model(ckpt).eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        mname = Path(ckpt).stem
        clean = robust_accuracy(model, x, y)
        add(mname, "clean", "-", None, math.inf, clean, 0.0)
        for eps in [float(e) for e in args.eps.split(",")]:
            if "apgd" in parts:
                xa, s = ours("apgd-ce", model, x, y, eps=eps)
                add(mname, "apgd-ce", "pertattack", eps, math.inf, robust_accuracy(model, xa, y), s)
                peer = peer_apgd(model, x, y, eps)
                if peer:
                    add(mname, "apgd-ce", "torchattacks", eps, math.inf, robust_accuracy(model, peer[0], y), peer[1])
            if "square" in parts:
                try:
                    xa, s = ours("square", model, x, y, eps=eps, queries=args.queries)
                    add(mname, f"square-{args.queries}", "pertattack", eps, math.inf, robust_accuracy(model, xa, y), s)
                except ValueError as e:
                    print(f"square: {e}", file=sys.stderr)
                peer = peer_square(model, x, y, eps, args.queries)
                if peer:
                    add(mname, f"square-{args.queries}", "torchattacks", eps, math.inf,
                        robust_accuracy(model, peer[0], y), peer[1])
        if "fmn" in parts:
            correct = model(x).argmax(1) == y
            for p in (2.0, math.inf):
                runs = {}
                for name in ("fmn", "deepfool") + (("ddn",) if p == 2 else ()):
                    attack = pertattack.get_attack(name, p=p, seed=0)
                    res, s = timed(lambda attack=attack, model=model: attack(model, x, y))
                    runs[f"pertattack-{name}"] = (res.x_adv, s)
                runs.update(peer_minnorm(model, x, y, p, 100))
                for impl, (xa, s) in runs.items():
                    with torch.no_grad():
                        fooled = (model(xa).argmax(1) != y) & correct
                    norms = pertattack.LpBall(p).norm(xa - x)
                    med = float(norms[fooled].median()) if bool(fooled.any()) else math.nan
                    add(mname, "min-norm", impl, None, p, None, s, float(fooled.sum()) / float(correct.sum()), med)
    if args.out:
        write_csv(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
