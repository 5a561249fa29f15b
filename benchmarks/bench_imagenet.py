"""One ImageNet-size model on the CPU (issue 19): PGD-10 and APGD-CE of pertattack against torchattacks 3.5.1.

The model is a ResNet-50 (He et al. 2016: bottleneck blocks 3-4-6-3, 25.6 million weights, 1000 classes) written
here, the architecture of torchvision's ``resnet50``: timm 1.0 and torchvision cannot be installed beside the
project's CPU torch without pulling another torch build (``import timm`` imports torchvision). Random weights
(seed 0), eval mode, 224x224 inputs drawn uniformly in [0, 1], batch ``--batch``; the labels are the model's own
predictions (every input starts correctly classified). l-inf, eps ``--eps`` (4/255).

* ``pgd-10``: ``get_attack("pgd", steps=10)`` (random start, steps of 2.5 eps / 10, projection) against
  ``torchattacks.PGD(eps, alpha=2.5 eps / 10, steps=10, random_start=True)``;
* ``apgd-ce``: ``get_attack("apgd-ce")`` (100 steps, one run; an input leaves once fooled) and
  ``get_attack("apgd-ce", early_stop=False)`` (``pertattack-nostop``: every input takes the 100 steps) against
  ``torchattacks.APGD(norm="Linf", eps, steps=100, n_restarts=1, loss="ce")`` (every input that starts correctly
  classified takes the 100 steps).

Each (attack, library) runs in a fresh subprocess with one torch thread: it builds the model and the inputs, runs
one forward and backward pass (warm-up), reads the peak resident memory (``base_mib``), runs the attack once and
reports its CPU time (``time.process_time``), the peak resident memory of the process (``peak_mib``; Linux
``ru_maxrss``), the model passes it made (forward with / without gradient, backward) and its success rate.
Rounds alternate the order of the libraries. The load average is printed beside each run.

    python benchmarks/bench_imagenet.py --repeat 1 --out benchmarks/results/imagenet_resnet50.csv
    python benchmarks/bench_imagenet.py --floor      # CPU time of one forward+backward and one forward pass
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ATTACKS = ("pgd-10", "apgd-ce")
IMPLS = ("pertattack", "pertattack-nostop", "torchattacks")  # -nostop: apgd-ce only (early_stop=False)


class Bottleneck(nn.Module):
    """1x1 (width) - 3x3 (width, stride) - 1x1 (4 width), each with BN, plus the shortcut; ReLU after the sum."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.down(x))


class ResNet50(nn.Module):
    """ImageNet ResNet-50: 7x7/2 stem and 3x3/2 max-pooling, four stages of bottlenecks, global pooling, fc."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, c_in = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                c_in = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Counting(nn.Module):
    """Counts the model's forward passes with and without gradient, and the backward passes through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.fwd_grad, self.fwd_nograd, self.bwd = model, 0, 0, 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if out.requires_grad:
            self.fwd_grad += 1
            out.register_hook(self._count)
        else:
            self.fwd_nograd += 1
        return out

    def _count(self, grad: Tensor) -> None:
        self.bwd += 1


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(attack: str, impl: str, batch: int, eps: float) -> dict[str, object]:
    """One attack run in this (fresh) process: CPU time, peak memory, passes, success rate."""
    import pertattack

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = ResNet50().eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    model = Counting(net).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xw = x.clone().requires_grad_(True)
    net(xw).logsumexp(1).sum().backward()  # warm-up: one forward and backward pass
    with torch.no_grad():
        y = net(x).argmax(1)
    base = maxrss_mib()
    steps = 10 if attack == "pgd-10" else 100
    if impl.startswith("pertattack"):
        kw = {"steps": 10} if attack == "pgd-10" else {"early_stop": False} if impl.endswith("nostop") else {}
        atk = pertattack.get_attack("pgd" if attack == "pgd-10" else "apgd-ce", eps=eps, seed=0, **kw)
        run = lambda: atk(model, x, y).x_adv  # noqa: E731
    else:
        import torchattacks as ta

        ta_atk = (ta.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
                  if attack == "pgd-10" else
                  ta.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0))
        run = lambda: ta_atk(x, y)  # noqa: E731
    t0 = time.process_time()
    x_adv = run()
    cpu = time.process_time() - t0
    peak = maxrss_mib()
    with torch.no_grad():
        success = float((net(x_adv).argmax(1) != y).float().mean())
    linf = float((x_adv - x).abs().max())
    return dict(attack=attack, impl=impl, batch=batch, eps=eps, cpu_s=round(cpu, 2), base_mib=round(base),
                peak_mib=round(peak), grow_mib=round(peak - base),
                passes=f"{model.fwd_grad}/{model.fwd_nograd}/{model.bwd}", success=success,
                linf=round(linf, 6), torch=torch.__version__)


def floor(batch: int, repeat: int = 5) -> dict[str, object]:
    """CPU seconds of one forward+backward pass (cross-entropy, gradient in the input) and of one no-grad forward
    pass: the floor of an attack is its passes times these."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = ResNet50().eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)

    def fwd_bwd() -> None:
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(net(xr), y), xr)

    fwd_bwd()
    t0 = time.process_time()
    for _ in range(repeat):
        fwd_bwd()
    fb = (time.process_time() - t0) / repeat
    with torch.no_grad():
        t0 = time.process_time()
        for _ in range(repeat):
            net(x)
    return dict(batch=batch, fwd_bwd_s=round(fb, 3), fwd_nograd_s=round((time.process_time() - t0) / repeat, 3),
                torch=torch.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eps", type=float, default=4 / 255)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV of the runs")
    ap.add_argument("--floor", action="store_true", help="time one forward+backward and one forward pass, and stop")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # ATTACK:IMPL, in the subprocess
    args = ap.parse_args()
    if args.one:
        attack, impl = args.one.split(":")
        print(json.dumps(measure(attack, impl, args.batch, args.eps)))
        return
    if args.floor:
        print(json.dumps(dict(floor(args.batch), load=round(os.getloadavg()[0], 2))))
        return
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for r in range(args.repeat):
        for attack in args.attacks.split(","):
            impls = args.impls.split(",")
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                if impl.endswith("-nostop") and attack != "apgd-ce":
                    continue
                load = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--one", f"{attack}:{impl}", "--batch", str(args.batch),
                       "--eps", repr(args.eps)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                row = dict(json.loads(out.strip().splitlines()[-1]), round=r, load_before=round(load, 2),
                           load_after=round(os.getloadavg()[0], 2))
                rows.append(row)
                print(f"{attack:<8} {impl:<12} cpu {row['cpu_s']:8.2f} s  peak {row['peak_mib']:6} MiB "
                      f"(+{row['grow_mib']} over the model and inputs)  passes {row['passes']:<10} "
                      f"success {row['success']:.3f}  load {row['load_before']}-{row['load_after']}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
