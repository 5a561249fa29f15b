"""The ``pertattack`` command: list, demo, train, run, reproduce."""

from __future__ import annotations

import argparse
import ast
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]


def _value(text: str) -> Any:
    """A --set value: a Python literal when it parses as one (0.1, inf, None, True, (0, 1)), else the string."""
    if text.lower() in ("inf", "+inf"):
        return math.inf
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def _eps_list(text: str) -> list[float]:
    return [float(e) for e in text.split(",") if e.strip()]


def _load_data(name: str, split: str, root: str | None, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_cifar10, load_digits, load_mnist

    if name == "mnist":
        return load_mnist(root, split, limit=n)
    if name == "cifar10":
        return load_cifar10(root, split, limit=n)
    if name == "digits":
        x, y = load_digits(split)
        return (x[:n], y[:n]) if n else (x, y)
    raise SystemExit(f"unknown data set {name!r}: mnist, cifar10 or digits")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_list(args: argparse.Namespace) -> int:
    from .attacks import list_attacks

    rows = list_attacks()
    for r in rows:
        print(f"{r['name']:<16} {r['objective']:<14} {r['constraint']:<10} {r['solver']:<16} {r['description']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small CNN on the 8x8 digits that ship with scikit-learn and attack it."""
    from .data import load_digits
    from .experiments.classification import run_fig3
    from .metrics import robustness
    from .models import build_model
    from .training import accuracy, train_classifier

    t0 = time.perf_counter()
    x_tr, y_tr = load_digits("train", seed=args.seed)
    x_te, y_te = load_digits("test", seed=args.seed)
    if args.n is not None:
        if args.n < 1:
            raise SystemExit(f"pertattack demo: --n must be >= 1, got {args.n}")
        x_te, y_te = x_te[: args.n], y_te[: args.n]
    model = build_model("smallcnn", seed=args.seed)
    train_classifier(model, x_tr, y_tr, epochs=args.epochs, batch_size=64, lr=3e-3, seed=args.seed)
    print(f"SmallCNN on the scikit-learn 8x8 digits: {x_tr.shape[0]} train / {x_te.shape[0]} test images, "
          f"test error {1 - accuracy(model, x_te, y_te):.3f} ({time.perf_counter() - t0:.1f} s)")
    out = Path(args.out)
    eps = _eps_list(args.eps)
    print(f"fooling ratio (correctly classified test images) at eps = {eps} (l-inf, pixels in [0, 1]):")
    run_fig3(model, x_te, y_te, eps, out / "demo_fooling", "SmallCNN, 8x8 digits", seed=args.seed, progress=False)
    r = robustness(model, x_te, y_te, math.inf)
    print("robustness (p = inf): " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
    print(f"wrote {out / 'demo_fooling.csv'}" + (f" and {out / 'demo_fooling.png'}"
                                                   if (out / "demo_fooling.png").exists() else ""))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models import build_model
    from .training import accuracy, reconstruction_mse, save_model, train_autoencoder, train_classifier

    x, y = _load_data(args.data, "train", args.root, args.n)
    x_te, y_te = _load_data(args.data, "test", args.root, None)
    model = build_model(args.model, seed=args.seed).to(args.device)  # batches follow the model's device
    t0 = time.perf_counter()
    if args.model.endswith("-ae"):
        train_autoencoder(model, x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          progress=True)
        print(f"test MSE {reconstruction_mse(model, x_te):.5f}")
    else:
        train_classifier(model, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         progress=True)
        print(f"test error {1 - accuracy(model, x_te, y_te):.4f}")
    save_model(args.out, model, args.model)
    print(f"trained in {time.perf_counter() - t0:.1f} s; saved {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .attacks import get_attack
    from .metrics import predict, psnr
    from .training import load_model

    model = load_model(args.model, map_location=args.device)
    x, y = (t.to(args.device) for t in _load_data(args.data, args.split, args.root, args.n))
    attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size,
                        **_overrides(args.set))
    eps = _eps_list(args.eps) if args.eps else None
    t0 = time.perf_counter()
    labels = y if attack.objective.classification else None  # regression: reference f(x)
    results = attack(model, x, labels, eps=eps if eps is None or len(eps) > 1 else eps[0])
    elapsed = time.perf_counter() - t0
    results = results if isinstance(results, list) else [results]
    print(f"{attack!r} on {x.shape[0]} {args.data} {args.split} images, {elapsed:.1f} s")
    if attack.objective.classification:
        correct = predict(model, x) == y
        print(f"{int(correct.sum())} images correctly classified")
    else:
        with torch.no_grad():
            clean = model(x)
    for r in results:
        e = "none" if r.eps is None else f"{float(r.eps[0]):g}"
        if r.success is not None:
            fr = float((r.success & correct).sum() / correct.sum().clamp_min(1))
            print(f"eps {e}: fooling ratio {fr:.4f}, mean norm {float(r.norms[correct].mean()):.4g}")
        else:
            with torch.no_grad():
                out = model(r.x_adv)
            vs_x, vs_clean = float(psnr(out, x.reshape(out.shape)).mean()), float(psnr(out, clean).mean())
            print(f"eps {e}: input PSNR {float(psnr(r.x_adv, x).mean()):.2f} dB, output PSNR vs x "
                  f"{vs_x:.2f} dB, vs f(x) {vs_clean:.2f} dB")
    if args.out:
        results[-1].save(args.out)
        print(f"saved the last result to {args.out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import paper

    return paper.reproduce(args.experiment, out=Path(args.out), n=args.n, root=args.root, seed=args.seed,
                           epochs=args.epochs, device=args.device)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", choices=["mnist", "cifar10", "digits"])
    p.add_argument("--root", default=None,
                   help="data folder (default: $PERTATTACK_MNIST / $PERTATTACK_CIFAR10, or ../shared/data/...)")


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=_default_device(), help="torch device (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pertattack",
        description="Adversarial examples by perturbation analysis (Balda, Behboodi and Mathar, 2018).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the attack presets and their four parts")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="train a small CNN on scikit-learn's 8x8 digits and attack it (no download)")
    p.add_argument("--out", default="pertattack-demo", help="folder for the CSV and PNG")
    p.add_argument("--eps", default="0,0.05,0.1,0.15,0.2,0.25,0.3", help="comma-separated eps grid")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="attack the first N test images only (default: all)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model of the paper on MNIST (or the digits) and save it")
    p.add_argument("model", help="fcnn, lenet5, smallcnn, fc-ae (MNIST); nin, densenet40 (CIFAR-10)")
    _data_arguments(p)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=None, help="use the first n training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    _device_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run one attack on a saved model and report the fooling ratio")
    p.add_argument("attack", help="a preset name (see `pertattack list`), e.g. alg1-10")
    p.add_argument("--model", required=True, help="checkpoint written by `pertattack train`")
    _data_arguments(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=1000, help="attack the first n images")
    p.add_argument("--eps", default=None, help="budget, or comma-separated budgets")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. p=2 steps=20")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save the result as .npz")
    _device_argument(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="reproduce a figure or table of the paper (CSV + PNG)")
    p.add_argument("experiment", help="fig2a, fig3a, fig3b, fig3c, fig3d, table3, fig4a, fig4b, fig4c, or all")
    p.add_argument("--out", default="results")
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--root", default=None, help="data folder (MNIST, or CIFAR-10 for fig3c/fig3d)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of models not yet cached")
    p.add_argument("--seed", type=int, default=0)
    _device_argument(p)
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"pertattack {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
