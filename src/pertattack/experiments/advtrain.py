"""``pertattack reproduce advtrain``: the paper's conjecture on adversarial training, tested.

After Figure 3 the paper writes that "adversarial training using PGD is the state of the art defense ..., thus PGD
may still be a better choice than Algorithm 1-T for adversarial training", and does not test it. Here each
classifier (LeNet-5 and the FCNN on MNIST) is trained from the same initial weights with each training attack
(:data:`TRAINING`: Madry's PGD-40, Algorithm 1-10, FGSM with random start, and plain training) at each eps of a
grid (l-inf), and every model is then measured at its training eps on the first ``n`` test images:

* robust accuracy under ``auto`` (APGD-CE and APGD-T with their checks), the strongest evaluation of the project;
* the paper's fooling ratio (the share of the correctly classified inputs that an attack fools) of each attack of
  Figure 3 (:data:`EVAL_ATTACKS`);
* the clean test error on the whole test split, and the training's CPU time (one process, ``time.process_time``).

The default scale fits a shared 2-core CPU (about 40 minutes at one torch thread): the first
:data:`DEFAULT_LIMIT` training images, one epoch, eps in :data:`DEFAULT_EPS`, 1,000 test images. The full scale is
``--limit 60000 --eps 0.02,0.04,...,0.2 --n 10000`` (and more ``--epochs``), hours on a CPU. Trained models are
cached like the paper's (:func:`~pertattack.experiments.common.cached_model`, the training data's digest in the
name) beside a JSON file with their training time, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_mnist
from ..metrics import evaluate
from ..presets import get_attack
from ..training import accuracy, adversarial_training, train_classifier
from .classification import FIG3_ATTACKS, fooling_table
from .common import cache_dir, cached_model, data_digest, plot_lines, write_csv

__all__ = ["TRAINING", "EVAL_ATTACKS", "DEFAULT_EPS", "DEFAULT_LIMIT", "MODELS", "COLUMNS", "run_advtrain",
           "plot_advtrain"]

#: the training attacks: label -> preset (None: plain training on clean images)
TRAINING: dict[str, str | None] = {"plain": None, "fgsm-rs": "fgsm-rs", "alg1-10": "alg1-10", "pgd": "pgd"}
#: the paper's attacks of Figure 3 whose fooling ratio is reported (Alg1-5, between Alg1 and Alg1-10, is left out)
EVAL_ATTACKS = {k: v for k, v in FIG3_ATTACKS.items() if k != "Alg1-5"}
#: the training budgets of the default scale: a subset of Figure 3's grid (0.02, 0.04, ..., 0.2)
DEFAULT_EPS = [0.04, 0.1, 0.2]
#: training images of the default scale (the first ones of the training split)
DEFAULT_LIMIT = 20000
MODELS = ("lenet5", "fcnn")
COLUMNS = ["model", "method", "eps", "train_images", "epochs", "test_images", "train_cpu_s", "train_wall_s",
           "clean_error", "robust_auto", *[f"fool {k}" for k in EVAL_ATTACKS]]


def _train(name: str, method: str, eps: float, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
           device: str) -> tuple[nn.Module, dict[str, float]]:
    """The model trained with ``method`` at ``eps`` (cached), and its training times (NaN when unknown)."""
    preset = TRAINING[method]
    tag = f"mnist-{name}-{method}" + (f"-eps{eps:g}" if preset else "") + \
        f"-e{epochs}-n{x.shape[0]}-s{seed}-{data_digest(x, y)}"
    times_file = cache_dir() / f"{tag}.json"

    def train(model: nn.Module) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        kw = dict(epochs=epochs, batch_size=128, lr=1e-3, seed=seed, progress=True)
        if preset is None:
            history: Any = train_classifier(model, x, y, **kw)
        else:
            history = adversarial_training(model, x, y, get_attack(preset, eps=eps), **kw)
        times = dict(train_cpu_s=time.process_time() - c0, train_wall_s=time.perf_counter() - t0,
                     threads=torch.get_num_threads(), history=history)
        times_file.parent.mkdir(parents=True, exist_ok=True)
        times_file.write_text(json.dumps(times))

    model = cached_model(name, tag, train, seed=seed, device=device)
    try:
        times = json.loads(times_file.read_text())
    except (OSError, ValueError):
        times = {}
    return model, {k: float(times.get(k, math.nan)) for k in ("train_cpu_s", "train_wall_s")}


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> dict[str, float]:
    """Robust accuracy under ``auto`` and each paper attack's fooling ratio at ``eps`` on (x, y)."""
    batches = [(x[i : i + 500], y[i : i + 500]) for i in range(0, x.shape[0], 500)]
    robust = evaluate(model, batches, get_attack("auto", eps=eps), [eps], seed=seed)["robust_accuracy"][0]
    fool = fooling_table(model, x, y, [eps], EVAL_ATTACKS, seed=seed, progress=False)
    print(f"    robust accuracy (auto) {robust:.3f}")
    return {"robust_auto": robust, **{f"fool {k}": v[0] for k, v in fool.items()}}


def plot_advtrain(out: Path) -> None:
    """``out/advtrain-<model>.png`` from ``out/advtrain.csv``: robust accuracy under auto vs eps, one curve per
    training attack (nothing without matplotlib)."""
    with open(out / "advtrain.csv", newline="") as fh:
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in list(csv.reader(fh))[1:]]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        grid = sorted({float(r["eps"]) for r in mine})
        curves = {m: [100 * float(r["robust_auto"]) for e in grid for r in mine if r["method"] == m
                      and float(r["eps"]) == e] for m in TRAINING}
        plot_lines(out / f"advtrain-{name}.png", grid, {m: c for m, c in curves.items() if c},
                   xlabel="training and test eps (l-inf)", ylabel="robust accuracy under auto (%)",
                   title=f"MNIST {name}, {mine[0]['train_images']} images x {mine[0]['epochs']} epoch(s)")


def run_advtrain(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str,
                 limit: int | None = None, eps: Sequence[float] | None = None,
                 models: Sequence[str] = MODELS) -> dict[str, Any]:
    """Train every model of ``models`` with every method of :data:`TRAINING` at every ``eps`` on the first ``limit``
    MNIST training images (``epochs`` passes), measure each on the first ``n`` test images; ``out/advtrain.csv``
    (columns :data:`COLUMNS`) and ``out/advtrain-<model>.png`` (robust accuracy vs eps). Returns the report's entry.
    """
    limit = DEFAULT_LIMIT if limit is None else limit
    grid = [float(e) for e in (DEFAULT_EPS if eps is None else eps)]
    if not grid or any(not (0 < e < 1) for e in grid):
        raise ValueError(f"advtrain: the training budgets must lie in (0, 1), got {grid}")
    x, y = load_mnist(root, "train", limit=limit)
    x_all, y_all = (t.to(device) for t in load_mnist(root, "test"))
    x_te, y_te = x_all[:n], y_all[:n]
    rows: list[list[Any]] = []
    for name in models:
        for method in TRAINING:
            for e in grid:
                print(f"== {name}, trained with {method}" + (f" at eps {e:g}" if TRAINING[method] else "")
                      + f", measured at eps {e:g}")
                model, times = _train(name, method, e, x, y, epochs, seed, device)
                clean_error = 1 - accuracy(model, x_all, y_all)
                print(f"    clean test error {clean_error:.4f}, training {times['train_cpu_s']:.1f} s CPU")
                m = _measure(model, x_te, y_te, e, seed)
                row = dict(model=name, method=method, eps=e, train_images=x.shape[0], epochs=epochs,
                           test_images=x_te.shape[0], clean_error=clean_error, **times, **m)
                rows.append([row[c] for c in COLUMNS])
    write_csv(out / "advtrain.csv", COLUMNS, rows)
    plot_advtrain(out)
    note = (f"{x.shape[0]} training images, {epochs} epoch(s), eps {', '.join(f'{e:g}' for e in grid)}, "
            f"{x_te.shape[0]} test images (clean error: all {x_all.shape[0]}); training CPU time at "
            f"{torch.get_num_threads()} torch thread(s)")
    return {"note": note}
