"""DeepFool's candidate gradients: 9 backward passes, one batched backward, or a replicated batch.

DeepFool needs grad f_k(x) for every candidate class k at every iteration. Three ways to get them after one
forward of a batch of MNIST images through LeNet-5 (all give the same gradients; checked):

* ``loop``: one ``torch.autograd.grad`` per class, ``retain_graph`` (what pertattack does);
* ``batched``: one ``torch.autograd.grad(..., is_grads_batched=True)`` with the 9 one-hot cotangents (vmap over
  the backward);
* ``replicated``: the batch repeated 9 times, one forward and one backward of the selected scores.

``--device cuda`` runs them on the GPU, each timed from a synchronised start to a synchronised end.

Run (the median of ``--repeat`` rounds, round-robin)::

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python benchmarks/bench_deepfool_backward.py --n 256 --threads 1 --checkpoint <lenet5.pt>
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from pertattack.data import load_mnist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_classification import DEFAULT_CKPT, default_mnist, device_name, lenet5, timed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", default=default_mnist())
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = lenet5(args.checkpoint).to(args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = load_mnist(args.data, "test", limit=args.n)
    x = x.to(args.device)
    print(f"torch {torch.__version__}, device {device_name(args.device)}")
    k = 10

    def loop() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        return torch.stack([torch.autograd.grad(out[:, c].sum(), xg, retain_graph=c < k - 1)[0]
                            for c in range(1, k)])

    def batched() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        cot = torch.zeros(k - 1, *out.shape, device=out.device)
        for c in range(1, k):
            cot[c - 1, :, c] = 1
        return torch.autograd.grad(out, xg, cot, is_grads_batched=True)[0]

    def replicated() -> torch.Tensor:
        xr = x.repeat(k - 1, 1, 1, 1).requires_grad_(True)
        out = model(xr).reshape(k - 1, x.shape[0], k)
        sel = torch.stack([out[c - 1, :, c] for c in range(1, k)]).sum()
        return torch.autograd.grad(sel, xr)[0].reshape(k - 1, *x.shape)

    ref = loop()
    ways = {"loop": loop, "batched": batched, "replicated": replicated}
    for name, f in ways.items():
        same = torch.allclose(f(), ref, atol=1e-6)
        print(f"{name}: same gradients as the loop: {same}")
    times: dict[str, list[float]] = {n: [] for n in ways}
    for _ in range(args.repeat):
        for name, f in ways.items():
            times[name].append(timed(lambda a, b, f=f: f(), x, x))
    for name, ts in times.items():
        print(f"{name:<11} {1000 * statistics.median(ts):8.2f} ms  (n={args.n}, threads={args.threads}, "
              f"median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
