"""The models of the strength benchmark (bench_auto.py), made from MNIST with the project's own code.

* ``lenet5.pt``, ``fcnn.pt``: plain training (``pertattack train``, 3 epochs, seed 0).
* ``lenet5-adv.pt``: Madry-style adversarial training of LeNet-5: every minibatch is replaced by pertattack's
  ``pgd`` (l-inf, ``--eps``, ``--steps`` steps, random start) against the current weights; Adam, lr 1e-3,
  ``--epochs`` epochs, with the budget ramped linearly over the first epoch (small models trained at eps 0.3 from
  scratch otherwise stay at chance).
* The gradient-masked model is not a file: bench_auto.py wraps ``lenet5.pt`` with its logits times 1000
  (``lenet5.pt*1000``), which saturates the softmax of cross-entropy.

Run::

    python benchmarks/strength_models.py --out models/   # ~6 min on one CPU thread
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pertattack
from pertattack.data import load_mnist
from pertattack.models import build_model
from pertattack.training import accuracy, save_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = os.environ.get("PERTATTACK_MNIST", str(ROOT.parent / "shared" / "data" / "mnist"))


def adversarial_lenet5(data: str, eps: float, steps: int, epochs: int, seed: int = 0) -> torch.nn.Module:
    x, y = load_mnist(data, "train")
    model = build_model("lenet5", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    batches_per_epoch = -(-x.shape[0] // 128)
    b = 0
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i, idx in enumerate(perm.split(128)):
            e = eps * min(1.0, (b + 1) / batches_per_epoch)  # ramp over the first epoch
            b += 1
            xb, yb = x[idx], y[idx]
            atk = pertattack.get_attack("pgd", eps=e, steps=steps, seed=seed * 1_000_003 + b)
            x_adv = atk(model, xb, yb).x_adv  # eval mode inside, mode restored
            model.train()
            loss = F.cross_entropy(model(x_adv), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.eval()
            total += float(loss) * len(idx)
            if i % 100 == 0:
                print(f"epoch {epoch + 1} batch {i} eps {e:.3f} adv loss {float(loss):.3f}", flush=True)
        print(f"epoch {epoch + 1}: mean adversarial loss {total / x.shape[0]:.4f}", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="models")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PERTATTACK_MNIST": args.data}
    for name in ("lenet5", "fcnn"):
        if not (out / f"{name}.pt").exists():
            subprocess.run([sys.executable, "-m", "pertattack", "train", name, "--epochs", "3", "--seed", "0",
                            "--out", str(out / f"{name}.pt")], check=True, env=env)
    path = out / "lenet5-adv.pt"
    if not path.exists():
        t0 = time.process_time()
        model = adversarial_lenet5(args.data, args.eps, args.steps, args.epochs)
        xt, yt = load_mnist(args.data, "test")
        print(f"lenet5-adv: clean test accuracy {accuracy(model, xt, yt):.4f}, "
              f"{time.process_time() - t0:.0f} s CPU", flush=True)
        save_model(path, model, "lenet5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
