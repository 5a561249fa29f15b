"""Adversarial training (issue 20): one epoch of ``pertattack.adversarial_training`` with PGD against a plain
PyTorch PGD training loop of the same steps, on MNIST LeNet-5.

What is measured
----------------
One process, ``torch.set_num_threads(--threads)`` (default 1). Two rows, each one epoch over the first ``--n``
training images (default: all 60,000) from a fresh ``build_model("lenet5", seed=0)``, Adam, batches of
``--batch-size`` in the order of the same seeded permutation:

* ``pertattack``: ``adversarial_training(model, x, y, get_attack("pgd", eps=EPS), epochs=1, mix=0)``: the whole
  call (per batch the attack's checks, its 40 steps, the budget fit and the success check; the clean loss of the
  progress report, a no-grad forward; the training step);
* ``plain``: the loop as one writes it by hand: per batch, eval mode, a random start uniform in the eps ball,
  40 steps of ``x + 2.5 eps/40 * sign(grad)`` (``torch.autograd.grad`` of the summed cross-entropy, no
  parameter gradients), projected on the ball and clipped to [0, 1]; train mode, one Adam step on the
  cross-entropy at x_adv. Nothing else.

Times are ``time.process_time()`` (CPU time of this process, so that other processes' load counts less than in
wall time) of the epoch alone (data loading and model building excluded). Rows alternate over ``--repeat``
rounds (the order flips each round); the table gives the median and the minimum of each row and the ratios
pertattack / plain. ``--accuracy`` then evaluates the pertattack-trained model of the last round on the test
set: clean accuracy and robust accuracy against PGD-40 at the same eps (``get_attack("pgd", eps=EPS)``).

Run::

    python benchmarks/bench_advtrain.py --n 6000 --repeat 3          # a tenth of an epoch, three rounds
    python benchmarks/bench_advtrain.py --repeat 1 --rows pertattack --accuracy   # one full epoch, the test set
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import pertattack
from pertattack.models import build_model
from pertattack.training import accuracy, adversarial_training

ROOT = "/work/shared/data/mnist"


def plain_epoch(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, batch_size: int, lr: float,
                seed: int) -> None:
    """One epoch of PGD adversarial training written by hand (Madry et al.), the reference."""
    alpha = 2.5 * eps / steps
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for idx in torch.randperm(x.shape[0], generator=generator).split(batch_size):
        xb, yb = x[idx], y[idx]
        model.eval()
        delta = (torch.rand(xb.shape, generator=noise) * 2 - 1) * eps
        xa = (xb + delta).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), yb, reduction="sum"), xa)
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), xb - eps), xb + eps).clamp(0, 1)
        model.train()
        loss = F.cross_entropy(model(xa), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=ROOT, help="folder of the MNIST IDX files")
    ap.add_argument("--n", type=int, default=None, help="train on the first n images (default: all)")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs both rows once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="pertattack,plain", help="which rows to run (comma-separated)")
    ap.add_argument("--accuracy", action="store_true", help="evaluate the last pertattack model on the test set")
    ap.add_argument("--test-n", type=int, default=None, help="with --accuracy: the first n test images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = pertattack.load_mnist(args.root, "train", limit=args.n)
    eps = args.eps
    attack = pertattack.get_attack("pgd", eps=eps)
    steps = attack.schedule.steps

    def pert() -> nn.Module:
        model = build_model("lenet5", seed=0)
        adversarial_training(model, x, y, attack, epochs=1, batch_size=args.batch_size, lr=args.lr, seed=0)
        return model

    def plain() -> nn.Module:
        model = build_model("lenet5", seed=0)
        plain_epoch(model, x, y, eps, steps, args.batch_size, args.lr, seed=0)
        return model

    rows: dict[str, Callable[[], nn.Module]] = {k: v for k, v in (("pertattack", pert), ("plain", plain))
                                                if k in args.rows.split(",")}
    times: dict[str, list[float]] = {k: [] for k in rows}
    model = None
    for r in range(args.repeat):
        for name in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
            t0 = time.process_time()
            trained = rows[name]()
            times[name].append(time.process_time() - t0)
            if name == "pertattack":
                model = trained
            print(f"round {r + 1} {name:<10} {times[name][-1]:8.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{x.shape[0]} images, batch {args.batch_size}, PGD-{steps} eps {eps:g}, {args.threads} thread(s), "
          f"{args.repeat} round(s); CPU seconds per epoch")
    print(f"{'row':<12}{'median':>10}{'min':>10}  all")
    for k in rows:
        print(f"{k:<12}{med[k]:10.2f}{best[k]:10.2f}  {', '.join(f'{t:.2f}' for t in times[k])}")
    if len(rows) == 2:
        print(f"ratio pertattack / plain: median {med['pertattack'] / med['plain']:.3f}, "
              f"min {best['pertattack'] / best['plain']:.3f}")
    if args.accuracy and model is not None:
        xt, yt = pertattack.load_mnist(args.root, "test", limit=args.test_n)
        t0 = time.process_time()
        res = pertattack.get_attack("pgd", eps=eps, seed=0, batch_size=1000)(model, xt, yt)
        robust = float((~res.success & (res.label == yt)).float().mean())
        print(f"test ({xt.shape[0]} images): clean accuracy {accuracy(model, xt, yt):.4f}, robust accuracy "
              f"(PGD-{steps}, eps {eps:g}) {robust:.4f} ({time.process_time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
