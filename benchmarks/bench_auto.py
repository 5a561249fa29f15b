"""`auto` against AutoAttack standard, per input and per member (issue 17).

Each case is ``MODEL:P:EPS``; MODEL a checkpoint of ``pertattack train`` (``strength_models.py`` makes them),
optionally ``*S`` for its logits times S (``lenet5.pt*1000``: cross-entropy saturates, gradient masking). On the
first ``--n`` correctly classified MNIST test images of each case, one process, ``--threads`` torch threads:

* AutoAttack standard (``pyautoattack``: apgd-ce, apgd-t, fab-t, square 5000), its robust flags and the CPU time
  of each of its attacks (their ``perturb`` wrapped), cached in ``--cache`` (the reference need not be rerun);
* each variant of ``--variants``: a cascade of members, each on the inputs still robust; the CPU time of each.

Reported per case and variant: robust accuracy, the inputs it fools that AutoAttack does not and the reverse,
CPU seconds (``time.process_time``) and the ratio to AutoAttack's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import pertattack
from pertattack.data import load_mnist
from pertattack.training import load_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = os.environ.get("PERTATTACK_MNIST", str(ROOT.parent / "shared" / "data" / "mnist"))


class Scaled(nn.Module):
    """logits times ``scale``: the same classifier, with a saturated cross-entropy."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale


def load_case(spec: str, models: Path) -> tuple[str, nn.Module, float, float]:
    name, p, eps = spec.rsplit(":", 2)
    path, _, scale = name.partition("*")
    model: nn.Module = load_model(models / path).eval()
    if scale:
        model = Scaled(model, float(scale)).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return spec, model, (math.inf if p == "inf" else float(p)), float(eps)


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, p: float, eps: float) -> dict[str, Any]:
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=eps, norm="Linf" if math.isinf(p) else "L2", version="standard", seed=0)
    aa.verbose = False
    times: dict[str, float] = {}
    for attr, label in (("apgd", "apgd-ce"), ("apgd_targeted", "apgd-t"), ("fab", "fab-t"), ("square", "square")):
        atk = getattr(aa, attr)
        orig = atk.perturb

        def timed(*a: Any, _orig: Any = orig, _label: str = label, **k: Any) -> Any:
            t0 = time.process_time()
            try:
                return _orig(*a, **k)
            finally:
                times[_label] = times.get(_label, 0.0) + time.process_time() - t0

        atk.perturb = timed
    t0 = time.process_time()
    out = aa.run_standard_evaluation(x, y, batch_size=len(x))
    x_adv = out[0] if isinstance(out, tuple) else out
    total = time.process_time() - t0
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    norms = pertattack.LpBall(p).norm(x_adv - x)
    assert bool((norms <= eps * (1 + 1e-5)).all()), "AutoAttack left the ball"
    return dict(robust=robust, seconds=total, members=times)


def target_objective(targets: Tensor) -> pertattack.objectives.Objective:
    """Targeted DLR towards given classes (one per input of the call)."""
    from pertattack.objectives import DLRTargeted

    class Given(DLRTargeted):
        def prepare(self, out: Tensor, ctx: Any) -> None:
            ctx.extra["dlr_target"] = targets

    return Given(rank=2)


def apgd_targets(model: nn.Module, x: Tensor, y: Tensor, p: float, eps: float, order: str, k: int, steps: int,
                 seed: int, index: Tensor) -> tuple[Tensor, dict[str, float]]:
    """APGD-T over the first k targets of ``order``, each on the inputs still robust (``index``: their positions in
    the case's inputs, which seed their random starts, as in a cascade). Returns fooled (N,)."""
    fooled = torch.zeros(len(x), dtype=torch.bool)
    t0 = time.process_time()
    ball = pertattack.LpBall(p)
    if order == "distance":
        tgt = pertattack.targets.ByDistance().order(model, x, y, ball)
    else:
        tgt = pertattack.targets.ByLogits().order(model, x, y, ball)
    times = {f"order-{order}": time.process_time() - t0}
    for r in range(min(k, tgt.shape[1])):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        t0 = time.process_time()
        atk = pertattack.get_attack("apgd-dlrt-2", eps=eps, p=p, seed=seed, steps=steps,
                                    objective=target_objective(tgt[todo, r]))
        res = atk(model, x[todo], y[todo], index=index[todo])
        fooled[todo[res.success]] = True
        times[f"apgd-t{r + 1}"] = time.process_time() - t0
        times[f"fooled-t{r + 1}"] = int(res.success.sum())
    return fooled, times


def run_variant(name: str, model: nn.Module, x: Tensor, y: Tensor, p: float, eps: float, seed: int = 0
                ) -> dict[str, Any]:
    """A variant: members separated by '+', each run on the inputs still robust; ``#S`` at the end: seed S; a member
    ``preset@key=int`` sets one integer keyword (``auto@targets=5``, ``apgd-ce@restarts=2``); ``tK[d|l][-S]``: APGD-T
    on K targets by distance / logits with S steps; ``ta-apgd-ce``: torchattacks' APGD-CE."""
    name, _, s = name.partition("#")
    seed = int(s) if s else seed
    fooled = torch.zeros(len(x), dtype=torch.bool)
    times: dict[str, float] = {}
    who: dict[str, int] = {}
    t_all = time.process_time()
    for member in name.split("+"):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        t0 = time.process_time()
        before = int(fooled.sum())
        if member == "ta-apgd-ce":  # torchattacks' APGD-CE, 100 steps, one restart
            import torchattacks

            atk = torchattacks.APGD(model, norm="Linf" if math.isinf(p) else "L2", eps=eps, steps=100, n_restarts=1,
                                    seed=seed, loss="ce")
            torch.manual_seed(seed)  # its random start draws from torch's global generator
            with torch.no_grad():
                f = model(atk(x[todo], y[todo])).argmax(1) != y[todo]
            fooled[todo[f]] = True
        elif member.startswith("t"):  # tK[d|l][-S]: APGD-T on K targets by distance / logits, S steps
            spec, _, st = member[1:].partition("-")
            order = "distance" if spec.endswith("d") else "logits"
            f, tm = apgd_targets(model, x[todo], y[todo], p, eps, order, int(spec[:-1]), int(st or 100), seed, todo)
            fooled[todo[f]] = True
            times.update({f"{member}:{k}": v for k, v in tm.items()})
        else:
            preset, _, extra = member.partition("@")
            kw: dict[str, Any] = {}
            if preset == "apgd-pm":  # APGD on the probability margin (PMA, Xie et al. 2024): eq. 2 on softmax
                preset, kw = "apgd-ce", dict(objective="margin", probs=True)
            if extra:
                k, v = extra.split("=")
                kw[k] = int(v)
            res = pertattack.get_attack(preset, eps=eps, p=p, seed=seed, **kw)(model, x[todo], y[todo], index=todo)
            fooled[todo[res.success]] = True
        times[member] = time.process_time() - t0
        who[member] = int(fooled.sum()) - before
    total = time.process_time() - t_all
    return dict(robust=~fooled, seconds=total, members=times, fooled_by=who)


def table(path: str) -> str:
    """A markdown table from a JSON-lines file of this script: per case and variant, robust accuracy, the inputs it
    misses of AutoAttack's successes and the ones it adds, CPU seconds and the ratio to AutoAttack's."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["case"], r["impl"]))
    out = ["| case | variant | robust acc. | AutoAttack | missed / extra | CPU s | time / AutoAttack |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        aa = r["seconds"] / r["ratio"]
        aa_acc = r.get("aa_robust_acc", r["robust_acc"] - (r["missed"] - r["extra"]) / 500)
        out.append(f"| {r['case']} | {r['impl']} | {100 * r['robust_acc']:.1f}% | {100 * aa_acc:.1f}%, {aa:.0f} s | "
                   f"{r['missed']} / {r['extra']} | {r['seconds']:.1f} | {r['ratio']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", help="MODEL[*SCALE]:P:EPS")
    ap.add_argument("--table", default=None, help="print the markdown table of a JSON-lines file of this script")
    ap.add_argument("--models", default="models")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--variants", default="apgd-ce+t9l+fmn+square", help="comma-separated cascades")
    ap.add_argument("--cache", default="benchmarks/results/aa-cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON lines file to append to")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if not args.case:
        ap.error("give --case (or --table)")
    torch.set_num_threads(args.threads)
    xt, yt = load_mnist(args.data, "test")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for spec in args.case:
        name, model, p, eps = load_case(spec, Path(args.models))
        with torch.no_grad():
            ok = (model(xt[:4000]).argmax(1) == yt[:4000]).nonzero().squeeze(1)[: args.n]
        x, y = xt[ok], yt[ok]
        key = cache / (spec.replace("/", "_").replace("*", "x").replace(":", "_") + f"_n{args.n}.pt")
        if key.exists():
            ref = torch.load(key)
        else:
            ref = run_autoattack(model, x, y, p, eps)
            torch.save(ref, key)
        line = dict(case=spec, impl="autoattack-standard", robust_acc=float(ref["robust"].float().mean()),
                    seconds=round(ref["seconds"], 2), members={k: round(v, 2) for k, v in ref["members"].items()})
        print(json.dumps(line), flush=True)
        for variant in args.variants.split(","):
            out = run_variant(variant, model, x, y, p, eps)
            rob, aa_rob = out["robust"], ref["robust"]
            line = dict(case=spec, impl=variant, robust_acc=float(rob.float().mean()),
                        aa_robust_acc=float(aa_rob.float().mean()),
                        missed=int((rob & ~aa_rob).sum()), extra=int((~rob & aa_rob).sum()),
                        seconds=round(out["seconds"], 2), ratio=round(out["seconds"] / ref["seconds"], 3),
                        members={k: round(v, 2) for k, v in out["members"].items()}, fooled_by=out["fooled_by"])
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
