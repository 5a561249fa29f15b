"""The ``pertattack`` command: list, demo, train, run, reproduce.

Every mistake in a command line ends with one line on stderr, ``pertattack <command>: error: ...``,
and exit status 2, before any work is done where it can be checked up front (arguments, devices,
output paths, the checkpoint, the data's shape against the model, the preset's kind against the
model's). ``--debug`` (before or after the command) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "UsageError", "build_parser"]


class UsageError(ValueError):
    """A mistake in the command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _value(text: str) -> Any:
    """A --set value: a Python literal when it parses as one (0.1, inf, None, True, (0, 1)), else the string."""
    if text.lower() in ("inf", "+inf"):
        return math.inf
    if text.lower() == "-inf":
        return -math.inf
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--set takes key=value, got {pair!r}")
        out[k.strip()] = _value(v.strip())
    return out


def _eps_list(text: str | None, option: str = "--eps") -> list[float] | None:
    """Comma-separated budgets; ``None`` when the option was not given."""
    if text is None:
        return None
    parts = [e.strip() for e in text.split(",")]
    if not any(parts):
        raise UsageError(f"{option}: expected a number or comma-separated numbers, got {text!r}")
    if not all(parts):
        raise UsageError(f"{option}: empty entry in {text!r} (expected numbers separated by single commas)")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not a number") from None
        if math.isnan(value):
            raise UsageError(f"{option}: {part!r} is not a number")
        if value < 0:
            raise UsageError(f"{option}: budgets must be >= 0, got {part}")
        values.append(value)
    return values


def _at_least(option: str, value: int | float | None, low: float, strict: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < low or (strict and value == low):
        relation = ">" if strict else ">="
        raise UsageError(f"{option} must be {relation} {low:g}, got {value:g}")


def _device(text: str) -> str:
    """Check ``--device``: a torch device that exists on this machine."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device: {text!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return text
    if device.type == "meta":
        raise UsageError("--device meta holds no data; use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return text
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise UsageError(f"--device {text}: {device.type} is not available on this machine")
    return text


def _writable_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` is a writable folder (so the folders can be made)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {path}: the folder {parent} is not writable")
            return
        if parent.is_symlink():  # a dangling link
            raise UsageError(f"{option} {path}: {parent} is a broken link")


def _output_file(text: str, option: str = "--out", suffix: str | None = None) -> Path:
    """Check an output file path before any work; returns the path that will really be written."""
    if not text.strip():
        raise UsageError(f"{option}: empty path")
    path = Path(text).expanduser()
    if suffix is not None and path.suffix != suffix:
        path = path.with_name(path.name + suffix)  # what numpy.savez writes
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: the file is not writable")
    _writable_parent(path, option)
    return path


def _output_folder(text: str, option: str = "--out") -> Path:
    """Check an output folder before any work: a folder, or a path where one can be made."""
    if not text.strip():
        raise UsageError(f"{option}: empty path")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{option} {path}: is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: the folder is not writable")
        return path
    _writable_parent(path, option)
    return path


def _load_model(text: str, device: str) -> torch.nn.Module:
    from .training import load_model

    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(f"--model {path}: no such file")
    try:
        return load_model(path, map_location=device)
    except ValueError as err:
        raise UsageError(f"--model {_one_line(err)}") from err


def _probe(model: torch.nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    """One forward pass on one input: the model must take the data's inputs. Returns its output."""
    name = type(model).__name__
    want = getattr(model, "in_shape", None)
    if want is not None and tuple(want) != tuple(x.shape[1:]):
        raise UsageError(f"the model ({name}) takes inputs of shape {tuple(want)}, but {what} has inputs of shape "
                         f"{tuple(x.shape[1:])}; use a model trained on this data")
    from .modelcall import eval_mode

    try:
        with eval_mode(model), torch.no_grad():
            return model(x[:1])
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise UsageError(f"the model ({name}) cannot take {what}'s inputs of shape {tuple(x.shape[1:])}: "
                         f"{_one_line(err)}") from err


def _load_data(name: str, split: str, root: str | None, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_cifar10, load_digits, load_mnist

    if name == "mnist":
        return load_mnist(root, split, limit=n)
    if name == "cifar10":
        return load_cifar10(root, split, limit=n)
    if name == "digits":
        x, y = load_digits(split)
        return (x[:n], y[:n]) if n is not None else (x, y)
    raise UsageError(f"unknown data set {name!r}: mnist, cifar10 or digits")


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

    out = _output_folder(args.out)
    for suffix in (".csv", ".png"):
        _output_file(str(out / f"demo_fooling{suffix}"), "--out")
    eps = _eps_list(args.eps) or []
    _at_least("--epochs", args.epochs, 0)
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

    out = _output_file(args.out)
    device = _device(args.device)
    _at_least("--n", args.n, 1)
    _at_least("--epochs", args.epochs, 0)
    _at_least("--batch-size", args.batch_size, 1)
    _at_least("--lr", args.lr, 0, strict=True)
    model = build_model(args.model, seed=args.seed)
    x, y = _load_data(args.data, "train", args.root, args.n)
    x_te, y_te = _load_data(args.data, "test", args.root, None)
    autoencoder = args.model.endswith("-ae")
    sample = _probe(model, x, f"--data {args.data}")
    if not autoencoder and (sample.dim() != 2 or sample.shape[1] <= int(y.max())):
        raise UsageError(f"{args.model} outputs shape {tuple(sample.shape[1:])}, not one score for each of the "
                         f"{int(y.max()) + 1} classes of --data {args.data}")
    model = model.to(device)  # batches follow the model's device
    t0 = time.perf_counter()
    if autoencoder:
        train_autoencoder(model, x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          progress=True)
        print(f"test MSE {reconstruction_mse(model, x_te):.5f}")
    else:
        train_classifier(model, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         progress=True)
        print(f"test error {1 - accuracy(model, x_te, y_te):.4f}")
    save_model(out, model, args.model)
    print(f"trained in {time.perf_counter() - t0:.1f} s; saved {out}")
    return 0


def _check_kind(attack: Any, sample: torch.Tensor, x: torch.Tensor, model_path: str) -> None:
    """A classification preset needs scores (N, K); the command's regression report needs an image-to-image
    model (outputs shaped like the inputs)."""
    name = attack.name
    if attack.objective.classification:
        if sample.dim() != 2 or sample.shape[1] < 2:
            raise UsageError(f"{name!r} attacks a classifier, but --model {model_path} outputs shape "
                             f"{tuple(sample.shape[1:])}, not class scores; use a regression preset such as "
                             "quadratic-l2 (see `pertattack list`)")
    elif tuple(sample.shape[1:]) != tuple(x.shape[1:]):
        raise UsageError(f"{name!r} is a regression attack (it distorts the output of an image-to-image model "
                         f"such as fc-ae), but --model {model_path} outputs shape {tuple(sample.shape[1:])}, "
                         f"not images like its inputs {tuple(x.shape[1:])}; use a classification preset such "
                         "as fgsm or alg1-10 (see `pertattack list`)")


def cmd_run(args: argparse.Namespace) -> int:
    from .attacks import get_attack
    from .metrics import predict, psnr

    out = _output_file(args.out, suffix=".npz") if args.out is not None else None
    device = _device(args.device)
    eps = _eps_list(args.eps)
    _at_least("--n", args.n, 1)
    _at_least("--batch-size", args.batch_size, 1)
    attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size,
                        **_overrides(args.set))
    model = _load_model(args.model, device)
    x, y = (t.to(device) for t in _load_data(args.data, args.split, args.root, args.n))
    if x.shape[0] == 0:
        raise UsageError(f"--data {args.data} --split {args.split} holds no images")
    _check_kind(attack, _probe(model, x, f"--data {args.data}"), x, args.model)
    t0 = time.perf_counter()
    labels = y if attack.objective.classification else None  # regression: reference f(x)
    results = attack(model, x, labels, eps=eps if eps is None or len(eps) > 1 else eps[0])
    elapsed = time.perf_counter() - t0
    results = results if isinstance(results, list) else [results]
    print(f"{attack!r} on {x.shape[0]} {args.data} {args.split} images, {elapsed:.1f} s")
    if attack.objective.classification:
        correct = predict(model, x) == y
        n_correct = int(correct.sum())
        print(f"{n_correct} images correctly classified")
    else:
        with torch.no_grad():
            clean = model(x)
    for r in results:
        e = "none" if r.eps is None else f"{float(r.eps[0]):g}"
        if r.success is not None:
            if n_correct == 0:  # the metrics' rule: nothing to measure is NaN, not 0
                print(f"eps {e}: fooling ratio nan (undefined: no image is correctly classified)")
                continue
            fr = int((r.success & correct).sum()) / n_correct
            print(f"eps {e}: fooling ratio {fr:.4f}, mean norm {float(r.norms[correct].mean()):.4g}")
        else:
            with torch.no_grad():
                out_adv = model(r.x_adv)
            vs_x, vs_clean = float(psnr(out_adv, x).mean()), float(psnr(out_adv, clean).mean())
            print(f"eps {e}: input PSNR {float(psnr(r.x_adv, x).mean()):.2f} dB, output PSNR vs x "
                  f"{vs_x:.2f} dB, vs f(x) {vs_clean:.2f} dB")
    if out is not None:
        results[-1].save(str(out))
        print(f"saved the last result to {out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import paper
    from .experiments.common import cache_dir

    if args.experiment not in paper.EXPERIMENTS and args.experiment != "all":
        raise UsageError(f"unknown experiment {args.experiment!r}; known: {', '.join(paper.EXPERIMENTS)}, all")
    out = _output_folder(args.out)
    for name in paper.EXPERIMENTS if args.experiment == "all" else [args.experiment]:
        for suffix in (".csv", ".png"):
            _output_file(str(out / f"{name}{suffix}"), "--out")
    _output_folder(str(cache_dir()), "the model cache ($PERTATTACK_CACHE)")
    device = _device(args.device)
    _at_least("--n", args.n, 1)
    _at_least("--epochs", args.epochs, 0)
    return paper.reproduce(args.experiment, out=out, n=args.n, root=args.root, seed=args.seed,
                           epochs=args.epochs, device=device)


# --- pertattack evaluate (issue 8): the command; the engine is pertattack.evaluation ------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Robustness of a model over a data set: one row per (input, attack, eps); resumable; torchrun shards it."""
    from .evaluation import EvalConfig, EvaluationError, parse_preprocess, run_evaluation

    try:
        p = None if args.p is None else _value(args.p)
        if p is not None and not isinstance(p, (int, float)):
            raise EvaluationError(f"--p takes a number or inf, got {args.p!r}")
        output = args.model_output
        cfg = EvalConfig(
            model=args.model, data=args.data, attacks=tuple(a.strip() for a in args.attack.split(",") if a.strip()),
            eps=tuple(_eps_list(args.eps)), out=args.out, root=args.root, split=args.split,
            p=None if p is None else float(p), limit=args.limit, batch_size=args.batch_size, seed=args.seed,
            device=args.device, preprocess=None if args.preprocess is None else parse_preprocess(args.preprocess),
            model_output=int(output) if output is not None and output.lstrip("-").isdigit() else output,
            dtype=args.dtype,
            overrides=_overrides(args.set), progress=not args.no_progress, timeout=args.timeout,
        )
        report = run_evaluation(cfg, argv=list(sys.argv))
    except EvaluationError as err:
        print(f"pertattack evaluate: error: {err}", file=sys.stderr)
        return 2
    if report.rank == 0:
        print(f"{report.n_inputs} inputs in {report.n_batches} batches ({report.batches_reused} reused, "
              f"{report.batches_computed} computed, {report.world_size} process(es)); wrote {report.out}/results.csv, "
              "summary.csv, summary.md, manifest.json")
        for r in report.summary:
            print(f"  {r['attack']:<14} eps {r['eps']:<8g} robust accuracy {r['robust_accuracy']:.4f}  "
                  f"fooling ratio {r['fooling_ratio']:.4f}")
    return 0


def _add_evaluate(sub: Any) -> None:
    # Under `torchrun ... -m pertattack evaluate ...`, torchrun's parser also reads these options and
    # takes abbreviations: none may be a prefix of a torchrun option (tests/test_evaluation.py checks).
    p = sub.add_parser(
        "evaluate", help="robustness of a model on a whole data set: resumable, sharded with torchrun",
        description="One row per (input, attack, eps) in OUT/results.csv, a summary in OUT/summary.csv and "
                    "summary.md. Run it again to resume. Sharded over processes and machines with "
                    "`torchrun --nproc-per-node K -m pertattack evaluate ...`.")
    p.add_argument("--model", required=True, help="checkpoint of `pertattack train`, or package.module:callable "
                   "returning an nn.Module")
    p.add_argument("--data", required=True, help="mnist (any folder of MNIST-format IDX files), cifar10, digits, "
                   "or package.module:callable returning a Dataset of (x, y) or a pair of tensors (x, y)")
    p.add_argument("--root", default=None, help="folder of the mnist / cifar10 files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--attack", required=True, help="preset name(s), comma-separated, e.g. pgd,deepfool")
    p.add_argument("--eps", required=True, help="budget(s), comma-separated")
    p.add_argument("--p", default=None, help="norm of every attack (1, 2, inf); default: each preset's own")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N inputs")
    p.add_argument("--batch-size", type=int, default=256, help="inputs per batch (the unit of resumption)")
    p.add_argument("--seed", type=int, default=0, help="random draws for input i depend only on (seed, i)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is there, else cpu")
    p.add_argument("--out", required=True, help="output folder (every rank must see it)")
    p.add_argument("--preprocess", default=None, metavar="MEAN/STD",
                   help="normalisation inside the model call, e.g. 0.1307/0.3081 or m1,m2,m3/s1,s2,s3")
    p.add_argument("--model-output", default=None, help="index or key of the logits in a tuple/dict output")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="run model and inputs in this dtype (float64: rows identical across batch sizes)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="attack overrides, e.g. steps=100")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds without a finished batch after which a silent rank counts as dead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


# --- end of pertattack evaluate ------------------------------------------------------------------------------------


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", choices=["mnist", "cifar10", "digits"])
    p.add_argument("--root", default=None,
                   help="data folder (default: $PERTATTACK_MNIST / $PERTATTACK_CIFAR10, or ../shared/data/...)")


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=_default_device(), help="torch device (default: cuda if available)")


def _debug_argument(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an error instead of one line")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pertattack",
        description="Adversarial examples by perturbation analysis (Balda, Behboodi and Mathar, 2018).",
    )
    _debug_argument(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the attack presets and their four parts")
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="train a small CNN on scikit-learn's 8x8 digits and attack it (no download)")
    p.add_argument("--out", default="pertattack-demo", help="folder for the CSV and PNG")
    p.add_argument("--eps", default="0,0.05,0.1,0.15,0.2,0.25,0.3", help="comma-separated eps grid")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="attack the first N test images only (default: all)")
    _debug_argument(p, argparse.SUPPRESS)
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
    _debug_argument(p, argparse.SUPPRESS)
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
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="reproduce a figure or table of the paper (CSV + PNG)")
    p.add_argument("experiment", help="fig2a, fig3a, fig3b, fig3c, fig3d, table3, fig4a, fig4b, fig4c, or all")
    p.add_argument("--out", default="results")
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--root", default=None, help="data folder (MNIST, or CIFAR-10 for fig3c/fig3d)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of models not yet cached")
    p.add_argument("--seed", type=int, default=0)
    _device_argument(p)
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_reproduce)
    _add_evaluate(sub)
    return parser


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (torch's state_dict errors, for one, span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


#: errors that a user's input can cause: one line, exit status 2
_USER_ERRORS = (UsageError, ValueError, TypeError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for an internal error, 2 for a user's mistake)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    prog = f"pertattack {args.command}"
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - any other failure: one line, the traceback with --debug
        if debug:
            raise
        print(f"{prog}: error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
