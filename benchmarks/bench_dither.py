"""Fooling ratio vs eps (Figure 3(b)'s grid, l-inf) of the paper's own attacks with and without dithering.

Table 2 of the paper marks "Ours" (Algorithm 1, alg1 / alg1-T) and "Targeted" as dithered; the presets default
to dither="none". This measures alg1, alg1-10 and targeted (Algorithm 1-10 towards target (y + 1) mod 10) with
dither "none", "first" (eps~_1 = eps) and "all" (eps~_t = eps / T), on the LeNet-5 MNIST model of
``pertattack reproduce fig3b`` (trained once, cached), on the first ``--n`` test images. Untargeted: the
fooling ratio (correctly classified inputs misclassified); targeted: the share of correctly classified inputs
classified as the target. The dithering draws from a seeded generator (``--seed``).

    PERTATTACK_MNIST=../shared/data/mnist python benchmarks/bench_dither.py --n 1000 --epochs 10 --out dither.csv
"""

from __future__ import annotations

import argparse
import csv
import time

from pertattack import get_attack
from pertattack.experiments.paper import FIG3_EPS, classifier
from pertattack.metrics import fooling_curve, predict


def targeted_curve(model, x, y, eps, dither, seed):
    target = (y + 1) % 10
    correct = predict(model, x) == y
    out = []
    for e in eps:
        res = get_attack("targeted", eps=e, dither=dither, seed=seed, batch_size=500)(model, x, y, target=target)
        hit = predict(model, res.x_adv) == target
        out.append(float((hit & correct).sum() / correct.sum()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None)
    ap.add_argument("--attacks", default="alg1,alg1-10,targeted")
    ap.add_argument("--out", default="dither.csv")
    args = ap.parse_args(argv)
    from pertattack.data import load_mnist

    model = classifier("mnist", "lenet5", args.root, args.epochs, args.seed)
    x, y = load_mnist(args.root, "test", limit=args.n)
    rows = []
    for name in args.attacks.split(","):
        for dither in ("none", "first", "all"):
            t0 = time.perf_counter()
            if name == "targeted":
                curve = targeted_curve(model, x, y, FIG3_EPS, dither, args.seed)
            else:
                curve = fooling_curve(model, x, y, name, FIG3_EPS, dither=dither, seed=args.seed, batch_size=500)
            took = time.perf_counter() - t0
            mean = sum(curve) / len(curve)
            rows.append([name, dither, *[f"{v:.4f}" for v in curve], f"{mean:.4f}", f"{took:.1f}"])
            print(f"{name:>9} dither={dither:<5} " + " ".join(f"{v:.3f}" for v in curve) + f" | mean {mean:.4f}"
                  f" | {took:.1f} s", flush=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["attack", "dither", *[f"eps={e:g}" for e in FIG3_EPS], "mean", "time_s"])
        w.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
