"""Classification attacks: pertattack against the floor and against torchattacks / foolbox.

What is measured
----------------
One process, one trained LeNet-5 (MNIST, logits), one batch: the first ``--n`` MNIST test images
(default 256), eps = 0.1 in l-inf for the budgeted attacks, the minimum norm for DeepFool. Each
implementation is timed on the whole call that a user makes (``attack(model, x, y)``,
``torchattacks.X(model, ...)(x, y)``, ``foolbox_attack(fmodel, x, y, epsilons=...)``), including
the library's own checks and its final evaluation of the model on x_adv. Building the attack
object is not timed.

Rows (``impl``):

* ``floor``: the same number of plain forward+backward passes of the same model on the same batch
  as pertattack performs: ``torch.autograd.grad(cross_entropy(model(x), y, reduction="sum"), x)``,
  nothing else. FGSM = 1, BIM = alg1-10 = 10, PGD-40 = 40. DeepFool: pertattack's loop runs one
  forward and the backward of every candidate class (9 for MNIST) per iteration: one backward per
  candidate on the CPU, one backward vmapped over the candidates on CUDA (``is_grads_batched``: the
  counting wrapper sees it as 1 backward), for as many iterations
  as the slowest input of the batch needs (plus the iteration that finds every input fooled). The
  ``floor`` row of a DeepFool attack is one forward+backward pass (one gradient) per iteration of
  that loop; the ``floor-9b`` row is one forward and 9 backward passes (retain_graph) per
  iteration, which is what the DeepFool algorithm needs with 10 candidates. The number of
  iterations is counted (not assumed) on an untimed run, see below.
* ``pertattack``: fgsm, pgd (40 steps of 2.5 eps/40, random start, Madry), bim (10 steps of
  eps/10), alg1-10 (the paper's Algorithm 1, margin, T = 10), deepfool (p = 2 and p = inf,
  <= 50 steps, overshoot 0.02, 10 candidates).
  With ``--deepfool-variants``, DeepFool also as ``pertattack-loop`` (``batched_backward=False``) and
  ``pertattack-vmap`` (``batched_backward=True``).
* ``torchattacks`` 3.5.1: FGSM, PGD(steps=40, alpha=2.5*eps/40, random_start=True),
  BIM(alpha=eps/10, steps=10), DeepFool(steps=50, overshoot=0.02) (l2 only; per image).
* ``foolbox`` 3.3.4 (``fb.PyTorchModel(model, bounds=(0, 1))``): FGSM, LinfPGD(steps=40,
  rel_stepsize=2.5/40), LinfBasicIterativeAttack(steps=10, rel_stepsize=0.1),
  L2DeepFoolAttack / LinfDeepFoolAttack(steps=50, overshoot=0.02, candidates=10).

Passes (``fwd_g/fwd_ng/bwd``): before timing, every implementation runs once on a counting
wrapper of the model that counts forwards with and without autograd and backward passes through
the logits. That run also gives the x_adv whose success is reported; it is not timed.

Timing: ``torch.set_num_threads(--threads)`` (default 2), one untimed warm-up call of every row,
then ``--repeat`` rounds; in each round every row runs once (round-robin, so background load on a
shared machine is spread over all rows). ``seconds`` is the median over the rounds; ``spread`` is
(max - min) / median, a measure of the noise. ``s/img`` = seconds / images attacked.

Columns:

* ``x_floor``: (s/img) / (s/img of the attack's ``floor`` row).
* ``x_peer``: (s/img) / (s/img of the fastest peer, torchattacks or foolbox, for the same attack);
  per image because torchattacks' DeepFool may run on fewer images (``--ta-deepfool-n``).
* ``success``: share of the correctly classified images (of those attacked) whose x_adv the model
  misclassifies, evaluated here from x_adv, the same way for every library.
* ``norm``: the largest l-inf norm of x_adv - x for budgeted attacks (must be <= eps); for DeepFool
  the median l2 / l-inf norm over the successful, correctly classified images (smaller is better).

The model: a checkpoint from ``--checkpoint`` (default the pertattack cache,
``~/.cache/pertattack/mnist-lenet5-e3-s0-<digest>.pt``, the newest) if it exists, otherwise LeNet-5 (seed 0) trained
here for ``--train-epochs`` (default 1) epochs on the MNIST training set (not timed, not saved).
Only DeepFool's iteration count depends on the model's weights.

``--device cuda`` puts the model and the images on the GPU; every timed call then starts and ends
with ``torch.cuda.synchronize()``.

Run::

    python benchmarks/bench_classification.py --n 256 --repeat 3 --out benchmarks/results/classification.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import pertattack
from pertattack.data import load_mnist
from pertattack.models import build_model
from pertattack.training import accuracy, load_model, train_classifier

EPS = 0.1
ATTACKS = ["fgsm", "pgd", "bim", "alg1-10", "deepfool-l2", "deepfool-linf"]
IMPLS = ["floor", "floor-9b", "pertattack", "pertattack-loop", "pertattack-vmap", "torchattacks", "foolbox"]
PEERS = ("torchattacks", "foolbox")
def _default_checkpoint() -> Path:
    """The newest cached `reproduce` LeNet-5 (named with a digest of its training data), else the old name."""
    cache = Path(os.environ.get("PERTATTACK_CACHE", Path.home() / ".cache" / "pertattack")).expanduser()
    found = sorted(cache.glob("mnist-lenet5-e3-s0-*.pt"), key=lambda f: f.stat().st_mtime)
    return found[-1] if found else cache / "mnist-lenet5-e3-s0.pt"


DEFAULT_CKPT = _default_checkpoint()
REPO = Path(__file__).resolve().parents[1]


def default_mnist() -> str:
    """``$PERTATTACK_MNIST`` if set, else ``../shared/data/mnist`` relative to the repository root."""
    return os.environ.get("PERTATTACK_MNIST") or str((REPO / ".." / "shared" / "data" / "mnist").resolve())

Run = Callable[[Tensor, Tensor], Tensor]  # (x, y) -> x_adv


# --------------------------------------------------------------------------------------------
# counting wrapper
# --------------------------------------------------------------------------------------------


class Counting(nn.Module):
    """The model, counting forwards (with / without autograd) and backward passes through its output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.fwd_grad = self.fwd_nograd = self.bwd = 0

    def _hook(self, grad: Tensor) -> None:
        self.bwd += 1

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if out.requires_grad:
            self.fwd_grad += 1
            out.register_hook(self._hook)
        else:
            self.fwd_nograd += 1
        return out


# --------------------------------------------------------------------------------------------
# the rows
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    impl: str
    make: Callable[[nn.Module], Run]  # model -> run(x, y) -> x_adv; building is not timed
    n: int
    norm_p: float = math.inf
    note: str = ""
    passes: tuple[int, int, int] = (0, 0, 0)
    times: list[float] = field(default_factory=list)
    success: float = float("nan")
    n_correct: int = 0
    norm: float = float("nan")

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def per_image(self) -> float:
        return self.seconds / self.n

    @property
    def spread(self) -> float:
        return (max(self.times) - min(self.times)) / self.seconds if self.times else float("nan")


def floor_run(passes: int, extra_backwards: int = 0) -> Callable[[nn.Module], Run]:
    """``passes`` x (forward + 1 + extra_backwards backward passes of the summed loss w.r.t. x)."""

    def make(model: nn.Module) -> Run:
        def run(x: Tensor, y: Tensor) -> Tensor:
            for _ in range(passes):
                xg = x.detach().requires_grad_(True)
                out = model(xg)
                if extra_backwards:
                    others = out.detach().masked_fill(F.one_hot(y, out.shape[1]).bool(), -math.inf)
                    cand = others.topk(1 + extra_backwards, dim=1).indices
                    fk = out.gather(1, y[:, None])[:, 0]
                    for j in range(1 + extra_backwards):
                        diff = fk - out.gather(1, cand[:, j : j + 1])[:, 0]
                        torch.autograd.grad(diff.sum(), xg, retain_graph=j < extra_backwards)
                else:
                    loss = F.cross_entropy(out, y, reduction="sum")
                    torch.autograd.grad(loss, xg)
            return x  # the floor produces no adversarial example

        return run

    return make


def pertattack_row(attack: str, **extra) -> Callable[[nn.Module], Run]:
    name, kw = {
        "fgsm": ("fgsm", dict(eps=EPS)),
        "pgd": ("pgd", dict(eps=EPS, seed=0)),
        "bim": ("bim", dict(eps=EPS)),
        "alg1-10": ("alg1-10", dict(eps=EPS)),
        "deepfool-l2": ("deepfool", dict(p=2.0)),
        "deepfool-linf": ("deepfool", dict(p=math.inf)),
    }[attack]

    def make(model: nn.Module) -> Run:
        atk = pertattack.get_attack(name, **kw, **extra)
        return lambda x, y: atk(model, x, y).x_adv

    return make


def torchattacks_row(attack: str) -> Callable[[nn.Module], Run] | None:
    import torchattacks as ta

    ctor = {
        "fgsm": lambda m: ta.FGSM(m, eps=EPS),
        "pgd": lambda m: ta.PGD(m, eps=EPS, alpha=2.5 * EPS / 40, steps=40, random_start=True),
        "bim": lambda m: ta.BIM(m, eps=EPS, alpha=EPS / 10, steps=10),
        "deepfool-l2": lambda m: ta.DeepFool(m, steps=50, overshoot=0.02),
    }.get(attack)
    if ctor is None:
        return None

    def make(model: nn.Module) -> Run:
        atk = ctor(model)

        def run(x: Tensor, y: Tensor) -> Tensor:
            out = atk(x, y)
            for prm in model.parameters():  # DeepFool's .backward() leaves .grad on the weights
                prm.grad = None
            return out

        return run

    return make


def foolbox_row(attack: str) -> Callable[[nn.Module], Run] | None:
    import foolbox as fb

    ctor = {
        "fgsm": lambda: (fb.attacks.FGSM(), EPS),
        "pgd": lambda: (fb.attacks.LinfPGD(steps=40, rel_stepsize=2.5 / 40), EPS),
        "bim": lambda: (fb.attacks.LinfBasicIterativeAttack(steps=10, rel_stepsize=0.1), EPS),
        "deepfool-l2": lambda: (fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02, candidates=10), None),
        "deepfool-linf": lambda: (fb.attacks.LinfDeepFoolAttack(steps=50, overshoot=0.02, candidates=10), None),
    }.get(attack)
    if ctor is None:
        return None

    def make(model: nn.Module) -> Run:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        atk, eps = ctor()

        def run(x: Tensor, y: Tensor) -> Tensor:
            _, clipped, _ = atk(fmodel, x, y, epsilons=eps)
            return clipped

        return run

    return make


# --------------------------------------------------------------------------------------------
# model, data
# --------------------------------------------------------------------------------------------


def lenet5(checkpoint: str | Path) -> nn.Module:
    """The LeNet-5 of ``checkpoint`` if it exists, else one with random weights (seed 0), in eval mode: for
    timings that do not depend on the weights."""
    ckpt = Path(checkpoint).expanduser()
    return (load_model(ckpt) if ckpt.exists() else build_model("lenet5", seed=0)).eval()


def timed(run: Callable[[Tensor, Tensor], object], x: Tensor, y: Tensor) -> float:
    """Seconds of ``run(x, y)``; on CUDA from a synchronised start to a synchronised end (kernels are async)."""
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    run(x, y)
    if cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def device_name(device: str) -> str:
    """``device`` with the GPU's name, for the printed header and the CSV."""
    d = torch.device(device)
    return f"{d} ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else str(d)


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file at ``path``, its folder made if needed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


def get_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    ckpt = Path(args.checkpoint).expanduser()
    if ckpt.exists():
        return load_model(ckpt).eval(), f"checkpoint {ckpt}"
    xtr, ytr = load_mnist(args.data, "train")
    model = build_model("lenet5", seed=0)
    t0 = time.perf_counter()
    train_classifier(model, xtr, ytr, epochs=args.train_epochs, seed=0)
    return model.eval(), f"LeNet-5 trained here: {args.train_epochs} epoch(s), seed 0, {time.perf_counter() - t0:.0f} s"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def build_rows(attacks: list[str], n: int, ta_deepfool_n: int, deepfool_variants: bool = False) -> list[Row]:
    rows: list[Row] = []
    for a in attacks:
        p = 2.0 if a == "deepfool-l2" else math.inf
        rows.append(Row(a, "pertattack", pertattack_row(a), n, p))
        if deepfool_variants and a.startswith("deepfool"):
            rows.append(Row(a, "pertattack-loop", pertattack_row(a, batched_backward=False), n, p,
                            "one backward per candidate"))
            rows.append(Row(a, "pertattack-vmap", pertattack_row(a, batched_backward=True), n, p,
                            "one backward vmapped over the candidates"))
        for impl, factory in (("torchattacks", torchattacks_row), ("foolbox", foolbox_row)):
            try:
                make = factory(a)
            except ImportError:
                print(f"[skip] {impl} is not installed", file=sys.stderr)
                continue
            if make is None:
                continue
            m = n
            note = ""
            if impl == "torchattacks" and a == "deepfool-l2" and ta_deepfool_n < n:
                m, note = ta_deepfool_n, f"first {ta_deepfool_n} images only (per-image loop)"
            rows.append(Row(a, impl, make, m, p, note))
    return rows


def evaluate(row: Row, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> None:
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    ok = fooled & clean
    row.n_correct = int(clean.sum())
    row.success = float(ok.sum()) / max(row.n_correct, 1)
    eta = (x_adv - x).reshape(len(x), -1)
    if row.attack.startswith("deepfool"):
        norms = eta.norm(p=row.norm_p, dim=1)[ok]
        row.norm = float(norms.median()) if len(norms) else float("nan")
    else:
        row.norm = float(eta.abs().amax())


def fmt(v: float, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="images attacked (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    ap.add_argument("--out", default=None, help="CSV file to write")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated subset of {','.join(ATTACKS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: model and images there")
    ap.add_argument("--deepfool-variants", action="store_true",
                    help="also time DeepFool with batched_backward=False and True (rows pertattack-loop, -vmap)")
    ap.add_argument("--ta-deepfool-n", type=int, default=64,
                    help="images for torchattacks' per-image DeepFool (default 64; times compared per image)")
    ap.add_argument("--data", default=default_mnist(),
                    help="folder with the MNIST IDX files (default $PERTATTACK_MNIST, else ../shared/data/mnist "
                         "relative to the repository)")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="LeNet-5 checkpoint to use if it exists")
    ap.add_argument("--train-epochs", type=int, default=1, help="epochs when no checkpoint exists (default 1)")
    ap.add_argument("--readme", action="store_true",
                    help="after writing --out, regenerate the tables of benchmarks/README.md (benchmarks/report.py)")
    args = ap.parse_args(argv)

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad:
        ap.error(f"unknown attack(s) {bad}; known: {ATTACKS}")
    if args.readme and not args.out:
        ap.error("--readme needs --out (the CSV the README's table is made from)")
    if args.repeat < 1 or args.n < 1:
        ap.error("--n and --repeat must be >= 1")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    model, origin = get_model(args)
    model.to(args.device)
    for prm in model.parameters():
        prm.requires_grad_(True)
    x, y = load_mnist(args.data, "test", limit=args.n)
    x, y = x.to(args.device), y.to(args.device)
    acc = accuracy(model, x, y)
    print(f"model: {origin}; clean accuracy on the {len(x)} images: {acc:.4f}")
    print(f"torch {torch.__version__}, device {device_name(args.device)}, threads {torch.get_num_threads()}, "
          f"eps {EPS} (l-inf), n {args.n}, repeat {args.repeat}")

    rows = build_rows(attacks, args.n, args.ta_deepfool_n, args.deepfool_variants)

    # 1. counting run (untimed): passes and x_adv for success
    counter = Counting(model).eval()
    for row in rows:
        counter.reset()
        xs, ys = x[: row.n], y[: row.n]
        x_adv = row.make(counter)(xs, ys)
        row.passes = (counter.fwd_grad, counter.fwd_nograd, counter.bwd)
        evaluate(row, model, xs, ys, x_adv)

    # 2. floors, from pertattack's counted passes
    floors: list[Row] = []
    for a in attacks:
        pa = next(r for r in rows if r.attack == a and r.impl == "pertattack")
        iters = pa.passes[0]  # forwards with autograd = iterations of the loop (= gradient passes)
        if a.startswith("deepfool"):
            floors.append(Row(a, "floor", floor_run(iters), args.n, note=f"{iters} iterations x 1 fwd+bwd"))
            floors.append(Row(a, "floor-9b", floor_run(iters, extra_backwards=8), args.n,
                              note=f"{iters} iterations x (1 fwd + 9 bwd)"))
        else:
            floors.append(Row(a, "floor", floor_run(iters), args.n, note=f"{iters} fwd+bwd"))
    for f in floors:
        counter.reset()
        f.make(counter)(x, y)
        f.passes = (counter.fwd_grad, counter.fwd_nograd, counter.bwd)
    rows = sorted(floors + rows, key=lambda r: (attacks.index(r.attack), IMPLS.index(r.impl)))

    # 3. warm-up, then round-robin timing
    runs = [row.make(model) for row in rows]
    for row, run in zip(rows, runs, strict=True):
        run(x[: row.n], y[: row.n])
    for _ in range(args.repeat):
        for row, run in zip(rows, runs, strict=True):
            row.times.append(timed(run, x[: row.n], y[: row.n]))

    # 4. ratios, table, CSV
    table = []
    for row in rows:
        floor = next(r for r in rows if r.attack == row.attack and r.impl == "floor")
        peers = [r for r in rows if r.attack == row.attack and r.impl in PEERS]
        best = min((r.per_image for r in peers), default=float("nan"))
        is_floor = row.impl.startswith("floor")
        table.append(dict(
            attack=row.attack,
            impl=row.impl,
            device=args.device,
            n=row.n,
            passes="/".join(map(str, row.passes)),
            seconds=row.seconds,
            spread=row.spread,
            s_per_image=row.per_image,
            x_floor=row.per_image / floor.per_image,
            x_peer=float("nan") if is_floor or not peers else row.per_image / best,
            success=float("nan") if is_floor else row.success,
            n_correct=row.n_correct if not is_floor else "",
            norm=float("nan") if is_floor else row.norm,
            times=" ".join(f"{t:.4f}" for t in row.times),
            note=row.note,
        ))

    head = f"{'attack':<14}{'impl':<13}{'n':>4}  {'fwd_g/fwd_ng/bwd':<17}{'seconds':>9}{'spread':>8}" \
           f"{'ms/img':>9}{'x_floor':>9}{'x_peer':>8}{'success':>9}{'norm':>8}  note"
    print()
    print(head)
    print("-" * len(head))
    last = None
    for t in table:
        if last is not None and t["attack"] != last:
            print()
        last = t["attack"]
        print(f"{t['attack']:<14}{t['impl']:<13}{t['n']:>4}  {t['passes']:<17}{t['seconds']:>9.3f}"
              f"{fmt(100 * t['spread'], '7.0f')}%{1000 * t['s_per_image']:>9.3f}{t['x_floor']:>9.2f}"
              f"{fmt(t['x_peer'], '8.2f'):>8}{fmt(t['success'], '9.3f'):>9}{fmt(t['norm'], '8.3f'):>8}  {t['note']}")
    print()
    print("fwd_g/fwd_ng/bwd: forwards with autograd / without / backward passes, counted on an untimed run.")
    print("seconds: median of the rounds; spread: (max - min) / median; x_floor, x_peer: per image.")
    print("success: on the correctly classified images; norm: max l-inf (eps attacks) or median lp of "
          "successful (DeepFool).")

    if args.out:
        write_csv(args.out, table)
        if args.readme:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import report

            report.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
