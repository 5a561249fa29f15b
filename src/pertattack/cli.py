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


def _load_data(name: str, split: str, root: str | None, n: int | None, download: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_cifar10, load_digits, load_mnist

    try:
        if name == "mnist":
            return load_mnist(root, split, download=download, limit=n)
        if name == "cifar10":
            return load_cifar10(root, split, download=download, limit=n)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} On the command line: add --download.") from err
    if name == "digits":
        x, y = load_digits(split)
        return (x[:n], y[:n]) if n else (x, y)
    raise SystemExit(f"unknown data set {name!r}: mnist, cifar10 or digits")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_list(args: argparse.Namespace) -> int:
    from .attacks import list_attacks

    rows = list_attacks()
    fmt = "{:<16} {:<14} {:<10} {:<16} {}"
    print(fmt.format("preset", "objective", "constraint", "solver", "description"))
    print(fmt.format("-" * 6, "-" * 9, "-" * 10, "-" * 6, "-" * 11))
    for r in rows:
        print(fmt.format(r["name"], r["objective"], r["constraint"], r["solver"], r["description"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a classifier and an autoencoder on the 8x8 digits, attack both, write report.md, CSVs and PNGs."""
    from .experiments.demo import DemoConfig, run_demo

    kw: dict[str, Any] = dict(seed=args.seed, threads=args.threads)
    if args.eps is not None:
        kw["eps"] = tuple(_eps_list(args.eps))
    if args.psnr is not None:
        kw["input_psnr"] = tuple(_eps_list(args.psnr))
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    config = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    res = run_demo(args.out, config, progress=not args.no_progress)
    print(f"open {Path(args.out) / 'report.md'} (total {res.seconds:.1f} s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models import build_model
    from .training import accuracy, reconstruction_mse, save_model, train_autoencoder, train_classifier

    x, y = _load_data(args.data, "train", args.root, args.n, args.download)
    x_te, y_te = _load_data(args.data, "test", args.root, None, args.download)
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


def _targets(spec: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``--target``: target classes (N,) and the mask of the inputs to attack.

    A class number t: every input whose label is not t (those of class t are left out); ``random``:
    a class drawn uniformly among the K - 1 others, from a generator seeded by ``seed``;
    ``least-likely``: the class of the lowest score of the model at x.
    """
    from .modelcall import eval_mode

    with eval_mode(model), torch.no_grad():
        scores = torch.cat([model(x[i : i + 500]) for i in range(0, x.shape[0], 500)])
    k = scores.shape[1]
    keep = torch.ones_like(y, dtype=torch.bool)
    if spec == "random":
        gen = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, k, y.shape, generator=gen).to(y.device)
        return (y + shift) % k, keep
    if spec in ("least-likely", "least_likely", "ll"):
        t = scores.argmin(dim=1)
        return t, t != y
    try:
        c = int(spec)
    except ValueError:
        raise ValueError(f"--target takes a class number, 'random' or 'least-likely', got {spec!r}") from None
    if not 0 <= c < k:
        raise ValueError(f"--target {c}: the model has classes 0 to {k - 1}")
    return torch.full_like(y, c), y != c


def cmd_run(args: argparse.Namespace) -> int:
    from .attacks import get_attack
    from .metrics import predict, psnr
    from .result import save_results
    from .training import load_model

    model = load_model(args.model, map_location=args.device)
    x, y = (t.to(args.device) for t in _load_data(args.data, args.split, args.root, args.n, args.download))
    overrides = _overrides(args.set)
    attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size, **overrides)
    transfer = getattr(attack.objective, "name", "") == "transfer"
    targeted = bool(getattr(attack.objective, "needs_target", False))
    if (args.surrogate is not None) != transfer:
        raise ValueError(f"--surrogate CHECKPOINT goes with the transfer preset and only there (attack "
                         f"{args.attack!r} has objective {attack.objective!r})"
                         + ("; it needs --surrogate CHECKPOINT" if transfer else ""))
    if (args.target is not None) != targeted:
        raise ValueError(f"--target goes with the targeted preset and only there (attack {args.attack!r} has "
                         f"objective {attack.objective!r})"
                         + ("; give --target CLASS, random or least-likely" if targeted else ""))
    if args.surrogate is not None:
        attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size,
                            surrogate=load_model(args.surrogate, map_location=args.device), **overrides)
    target = None
    if args.target is not None:
        target, keep = _targets(args.target, model, x, y, args.seed)
        if not bool(keep.all()):
            print(f"--target {args.target}: {int((~keep).sum())} images already of the target class left out")
        x, y, target = x[keep], y[keep], target[keep]
        if x.shape[0] == 0:
            raise ValueError(f"--target {args.target}: no image left to attack")
    eps = _eps_list(args.eps) if args.eps else None
    t0 = time.perf_counter()
    labels = y if attack.objective.classification else None  # regression: reference f(x)
    results = attack(model, x, labels, eps=eps if eps is None or len(eps) > 1 else eps[0], target=target)
    elapsed = time.perf_counter() - t0
    results = results if isinstance(results, list) else [results]
    for r in results:
        if r.attack is None:
            r.attack = args.attack
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
            what = "targeted success rate" if target is not None else "fooling ratio"
            print(f"eps {e}: {what} {fr:.4f}, mean norm {float(r.norms[correct].mean()):.4g}")
        else:
            with torch.no_grad():
                out = model(r.x_adv)
            vs_x, vs_clean = float(psnr(out, x.reshape(out.shape)).mean()), float(psnr(out, clean).mean())
            print(f"eps {e}: input PSNR {float(psnr(r.x_adv, x).mean()):.2f} dB, output PSNR vs x "
                  f"{vs_x:.2f} dB, vs f(x) {vs_clean:.2f} dB")
    if args.out:
        save_results(args.out, results)
        if len(results) > 1:
            print(f"saved {len(results)} results to {args.out} (arrays stacked along a first axis, one entry "
                  f"per eps of 'eps_grid')")
        else:
            print(f"saved the result to {args.out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import paper

    if args.download:
        _download_for(args.experiment, args.root)
    try:
        return paper.reproduce(args.experiment, out=Path(args.out), n=args.n, root=args.root, seed=args.seed,
                               epochs=args.epochs, device=args.device)
    except FileNotFoundError as err:
        if args.download:
            raise
        raise FileNotFoundError(f"{err} On the command line: add --download.") from err


_CIFAR_EXPERIMENTS = ("fig3c", "fig3d", "fig4c")


def _download_for(experiment: str, root: str | None) -> None:
    """Fetch the data sets ``experiment`` reads (MNIST, CIFAR-10 or both for ``all``) into ``root``."""
    from .data import load_cifar10, load_mnist

    if experiment not in _CIFAR_EXPERIMENTS:
        for split in ("train", "test"):
            load_mnist(root, split, download=True, limit=0)
    if experiment in _CIFAR_EXPERIMENTS or experiment == "all":
        load_cifar10(root, "test", download=True, limit=0)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", choices=["mnist", "cifar10", "digits"], help="data set")
    p.add_argument("--root", default=None,
                   help="data folder (default: $PERTATTACK_MNIST / $PERTATTACK_CIFAR10, or ../shared/data/...)")
    p.add_argument("--download", action="store_true",
                   help="fetch MNIST or CIFAR-10 into --root when its files are missing")


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=_default_device(), help="torch device (default: cuda if available, else cpu)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none to show (None, a flag's
    False) or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if no_default or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pertattack",
        description="Adversarial examples by perturbation analysis (Balda, Behboodi and Mathar, 2018).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"pertattack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the attack presets and their four parts")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo",
                       help="train a classifier and an autoencoder on scikit-learn's 8x8 digits, attack both, "
                            "write a report (no download)")
    p.add_argument("--out", default="pertattack-demo", help="folder for report.md, the CSVs and the PNGs")
    p.add_argument("--quick", action="store_true",
                   help="a small grid (3 eps, 3 PSNRs, 80 test images, 3 epochs): a few seconds, for tests")
    p.add_argument("--eps", default=None,
                   help="comma-separated l-inf eps grid of the classification attacks "
                        "(default: 0,0.05,...,0.25; --quick: 0,0.1,0.2)")
    p.add_argument("--psnr", default=None,
                   help="comma-separated input-PSNR grid (dB) of the regression attacks "
                        "(default: 10,15,...,40; --quick: 10,25,40)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of both models (default: 20; --quick: 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest for these small models (benchmarks/bench_demo.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the attacks")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model of the paper on MNIST (or the digits) and save it")
    p.add_argument("model", help="fcnn, lenet5, smallcnn, fc-ae (MNIST); nin, densenet40 (CIFAR-10)")
    _data_arguments(p)
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--n", type=int, default=None, help="use the first n training images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    _device_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run one attack on a saved model and report the fooling ratio")
    p.add_argument("attack", help="a preset name (see `pertattack list`), e.g. alg1-10")
    p.add_argument("--model", required=True, help="checkpoint written by `pertattack train`")
    _data_arguments(p)
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split to attack")
    p.add_argument("--n", type=int, default=1000, help="attack the first n images")
    p.add_argument("--eps", default=None,
                   help="budget, or comma-separated budgets (default: the preset's; DeepFool: unbounded)")
    p.add_argument("--target", default=None, metavar="CLASS|random|least-likely",
                   help="target classes of the targeted preset: one class number (images of that class are "
                        "left out), a random other class per image (seeded by --seed), or the class the model "
                        "scores lowest")
    p.add_argument("--surrogate", default=None, metavar="CHECKPOINT",
                   help="the transfer preset: compute the attack on this model (a `pertattack train` "
                        "checkpoint), judge it on --model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other overrides, e.g. p=2 steps=20 (default: none)")
    p.add_argument("--batch-size", type=int, default=500, help="inputs per chunk")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts, dithering and --target random")
    p.add_argument("--out", default=None,
                   help="save the result as .npz (plain NumPy arrays); with several --eps, one file whose arrays "
                        "are stacked along a first axis, one entry per budget, listed in 'eps_grid'")
    _device_argument(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="reproduce a figure or table of the paper (CSV + PNG)")
    p.add_argument("experiment", help="fig2a, fig3a, fig3b, fig3c, fig3d, table3, fig4a, fig4b, fig4c, or all")
    p.add_argument("--out", default="results", help="folder for the CSV and PNG files")
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--root", default=None, help="data folder (MNIST, or CIFAR-10 for fig3c/fig3d/fig4c)")
    p.add_argument("--download", action="store_true", help="fetch the data sets the experiment needs into --root")
    p.add_argument("--epochs", type=int, default=3,
                   help="training epochs of every model not yet cached (classifiers and autoencoders)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the shuffling and the attacks")
    _device_argument(p)
    p.set_defaults(func=cmd_reproduce)
    for subparser in sub.choices.values():  # every subcommand's help shows the defaults
        subparser.formatter_class = _Formatter
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
