"""The ``pertattack`` command: list, demo, train, run, reproduce.

Every mistake in a command line ends with one line on stderr, ``pertattack <command>: error: ...``,
and exit status 2, before any work is done where it can be checked up front (arguments, devices,
output paths, the checkpoint, the data's shape against the model, the preset's kind against the
model's). ``--debug`` (before or after the command) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .specs import DATA_HELP, MODEL_HELP, UsageError, load_data_spec, load_model_spec

__all__ = ["main", "UsageError", "build_parser"]


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
    """Comma-separated budgets, each a number or a fraction a/b (8/255); ``None`` when the option was not given."""
    if text is None:
        return None
    parts = [e.strip() for e in text.split(",")]
    if not any(parts):
        raise UsageError(f"{option}: expected a number or comma-separated numbers, got {text!r}")
    if not all(parts):
        raise UsageError(f"{option}: empty entry in {text!r} (expected numbers separated by single commas)")
    values = []
    for part in parts:
        num, slash, den = part.partition("/")  # a fraction a/b, the way l-inf budgets are written (8/255)
        try:
            value = float(num) / float(den) if slash else float(part)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{option}: {part!r} is not a number (or a fraction a/b)") from None
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


def _load_data(args: argparse.Namespace, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``--data`` (with ``--root``, ``--download``): the first n inputs of ``split`` as tensors (x, y)."""
    from .data.idx import DownloadableError

    try:
        return load_data_spec(args.data, args.root, split, n, download=args.download).xy()
    except DownloadableError as err:  # MNIST, CIFAR-10: --download fetches them (other files it cannot)
        raise FileNotFoundError(f"{err} On the command line: add --download.") from err


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_list(args: argparse.Namespace) -> int:
    from .presets import list_attacks

    rows = list_attacks()
    fmt = "{:<16} {:<3} {:<14} {:<10} {:<16} {}"  # p: the norm eps is in by default (deepfool: 2, pgd: inf)
    print(fmt.format("preset", "p", "objective", "constraint", "solver", "description"))
    print(fmt.format("-" * 6, "-", "-" * 9, "-" * 10, "-" * 6, "-" * 11))
    for r in rows:
        print(fmt.format(r["name"], f"{r['p']:g}", r["objective"], r["constraint"], r["solver"], r["description"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a classifier and an autoencoder on the 8x8 digits, attack both, write report.md, CSVs and PNGs."""
    from .experiments.demo import OUTPUT_FILES, DemoConfig, run_demo

    out = _output_folder(args.out)
    for name in OUTPUT_FILES:  # refuse before any work, not after the training
        _output_file(str(out / name), "--out")
    kw: dict[str, Any] = dict(seed=args.seed, threads=args.threads)
    eps = _eps_list(args.eps)
    if eps is not None:
        kw["eps"] = tuple(eps)
    psnr = _eps_list(args.psnr, "--psnr")
    if psnr is not None:
        kw["input_psnr"] = tuple(psnr)
    if args.epochs is not None:
        _at_least("--epochs", args.epochs, 1)
        kw["epochs"] = args.epochs
    _at_least("--threads", args.threads, 1)
    config = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    res = run_demo(out, config, progress=not args.no_progress)
    print(f"open {out / 'report.md'} (total {res.seconds:.1f} s)")
    return 0


def _training_attack(args: argparse.Namespace) -> Any:
    """``--adversarial PRESET --eps E [--set k=v ...] [--mix M]``: the inner attack of adversarial training, or None."""
    from .presets import get_attack

    if args.adversarial is None:
        given = [o for o, v in (("--eps", args.eps), ("--set", args.set or None), ("--mix", args.mix),
                                ("--beta", args.beta)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} go(es) with --adversarial PRESET and only there")
        return None
    if args.model.endswith("-ae"):
        raise UsageError(f"--adversarial trains a classifier; {args.model} is an autoencoder")
    eps = _eps_list(args.eps)
    if eps is None or len(eps) != 1:
        raise UsageError("--adversarial needs one budget: --eps E (e.g. --eps 0.1 or --eps 8/255)")
    mix = 0.0 if args.mix is None else args.mix
    if not 0 <= mix <= 1:
        raise UsageError(f"--mix is the weight of the clean loss, in [0, 1]; got {mix:g}")
    if args.beta is not None and (not math.isfinite(args.beta) or args.beta < 0 or mix != 0):
        raise UsageError(f"--beta (TRADES's weight of the KL term) must be a finite number >= 0, without --mix; got "
                         f"{args.beta:g}")
    attack = get_attack(args.adversarial, eps=eps[0], seed=args.seed, **_overrides(args.set))
    obj = attack.objective
    if not obj.classification or obj.needs_target:
        raise UsageError(f"--adversarial {args.adversarial}: adversarial training needs an untargeted classification "
                         f"attack, this one has objective {obj!r}")
    return attack


@contextlib.contextmanager
def _process_group() -> Iterator[tuple[int, int]]:
    """torchrun's process group (gloo) for the command when torchrun started it; yields (rank, local rank)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield 0, local
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield dist.get_rank(), local
        return
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), local
    finally:
        dist.destroy_process_group()


def cmd_train(args: argparse.Namespace) -> int:
    """Train and save a model; under torchrun, data parallel (each rank takes its share of every batch)."""
    with _process_group() as (rank, local_rank):
        return _train(args, rank, local_rank)


def _initial_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """``build_model(MODEL, seed=--seed)``, or with ``--resume CKPT`` the checkpoint's weights and training state."""
    from .models import MODELS, build_model
    from .training import load_model, load_training_state

    if args.resume is None:
        return build_model(args.model, seed=args.seed), None
    try:
        model, state = load_model(args.resume), load_training_state(args.resume)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"--resume: {_one_line(err)}") from err
    want = MODELS.get(args.model.strip().lower().replace("_", "-"))
    if type(model) is not want:
        raise UsageError(f"--resume {args.resume} holds a {type(model).__name__}, not a {args.model}")
    if state is None:
        raise UsageError(f"--resume {args.resume} holds weights only, no training state (a checkpoint of an older "
                         "pertattack train?): nothing to resume")
    return model.train(), state


def _train(args: argparse.Namespace, rank: int, local_rank: int) -> int:
    from .training import (
        accuracy,
        adversarial_training,
        reconstruction_mse,
        save_model,
        train_autoencoder,
        train_classifier,
    )

    out = _output_file(args.out)
    device = _device(args.device)
    if device.startswith("cuda") and ":" not in device and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{local_rank % torch.cuda.device_count()}"  # one GPU per rank
    _at_least("--n", args.n, 1)
    _at_least("--epochs", args.epochs, 0)
    _at_least("--batch-size", args.batch_size, 1)
    _at_least("--lr", args.lr, 0, strict=True)
    attack = _training_attack(args)
    model, state = _initial_model(args)
    x, y = _load_data(args, "train", args.n)
    x_te, y_te = _load_data(args, "test", None)
    autoencoder = args.model.endswith("-ae")
    sample = _probe(model, x, f"--data {args.data}")
    if not autoencoder and (sample.dim() != 2 or sample.shape[1] <= int(y.max())):
        raise UsageError(f"{args.model} outputs shape {tuple(sample.shape[1:])}, not one score for each of the "
                         f"{int(y.max()) + 1} classes of --data {args.data}")
    model = model.to(device)  # batches follow the model's device
    t0 = time.perf_counter()
    last = {"state": state}

    def checkpoint(new: dict[str, Any]) -> None:  # after every epoch: the weights and the training state
        last["state"] = new
        save_model(out, model, args.model, training=new)

    kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=rank == 0,
              checkpoint=checkpoint, resume=state)
    if autoencoder:
        train_autoencoder(model, x, **kw)
    elif attack is not None:
        adversarial_training(model, x, y, attack, mix=0.0 if args.mix is None else args.mix, beta=args.beta, **kw)
    else:
        train_classifier(model, x, y, **kw)
    if rank > 0:  # the ranks hold the same weights: rank 0 reports and saves
        return 0
    if autoencoder:
        print(f"test MSE {reconstruction_mse(model, x_te):.5f}")
    else:
        clean = " (clean; the robust accuracy: pertattack evaluate)" if attack is not None else ""
        print(f"test error {1 - accuracy(model, x_te, y_te):.4f}{clean}")
    save_model(out, model, args.model, training=last["state"])
    print(f"trained in {time.perf_counter() - t0:.1f} s; saved {out}")
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
    from .metrics import predict, psnr
    from .presets import get_attack
    from .result import save_results

    out = _output_file(args.out, suffix=".npz") if args.out is not None else None
    device = _device(args.device)
    eps = _eps_list(args.eps)
    _at_least("--n", args.n, 1)
    _at_least("--batch-size", args.batch_size, 1)
    overrides = _overrides(args.set)
    attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size, **overrides)
    transfer = getattr(attack.objective, "name", "") == "transfer"
    targeted = bool(getattr(attack.objective, "needs_target", False))
    if (args.surrogate is not None) != transfer:
        raise UsageError(f"--surrogate CHECKPOINT goes with the transfer preset and only there (attack "
                         f"{args.attack!r} has objective {attack.objective!r})"
                         + ("; it needs --surrogate CHECKPOINT" if transfer else ""))
    if (args.target is not None) != targeted:
        raise UsageError(f"--target goes with the targeted preset and only there (attack {args.attack!r} has "
                         f"objective {attack.objective!r})"
                         + ("; give --target CLASS, random or least-likely" if targeted else ""))
    if args.surrogate is not None:
        attack = get_attack(args.attack, seed=args.seed, progress=True, batch_size=args.batch_size,
                            surrogate=load_model_spec(args.surrogate, device, "--surrogate"), **overrides)
    model = load_model_spec(args.model, device, **_model_options(args))
    x, y = (t.to(device) for t in _load_data(args, args.split, args.n))
    _check_kind(attack, _probe(model, x, f"--data {args.data}"), x, args.model)
    target = None
    if args.target is not None:
        target, keep = _targets(args.target, model, x, y, args.seed)
        if not bool(keep.all()):
            print(f"--target {args.target}: {int((~keep).sum())} images already of the target class left out")
        x, y, target = x[keep], y[keep], target[keep]
        if x.shape[0] == 0:
            raise UsageError(f"--target {args.target}: no image left to attack")
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
            what = "targeted success rate" if target is not None else "fooling ratio"
            print(f"eps {e}: {what} {fr:.4f}, mean norm {float(r.norms[correct].mean()):.4g}")
        else:
            with torch.no_grad():
                out_adv = model(r.x_adv)
            vs_x, vs_clean = float(psnr(out_adv, x).mean()), float(psnr(out_adv, clean).mean())
            print(f"eps {e}: input PSNR {float(psnr(r.x_adv, x).mean()):.2f} dB, output PSNR vs x "
                  f"{vs_x:.2f} dB, vs f(x) {vs_clean:.2f} dB")
    if out is not None:
        save_results(out, results)
        if len(results) > 1:
            print(f"saved {len(results)} results to {out} (arrays stacked along a first axis, one entry "
                  f"per eps of 'eps_grid')")
        else:
            print(f"saved the result to {out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .data.idx import DownloadableError
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
    _at_least("--limit", args.limit, 1)
    eps = _eps_list(args.eps)
    given = [o for o, v in (("--limit", args.limit), ("--eps", eps)) if v is not None]
    if given and args.experiment not in (*paper.TAKES_LIMIT_AND_EPS, "all"):
        raise UsageError(f"{', '.join(given)} go(es) with {', '.join(paper.TAKES_LIMIT_AND_EPS)} only")
    if eps is not None and not all(0 < e < 1 for e in eps):
        raise UsageError(f"--eps: the training budgets (l-inf, images in [0, 1]) must lie in (0, 1), got {args.eps}")
    if args.download:
        _download_for(args.experiment, args.root)
    try:
        return paper.reproduce(args.experiment, out=out, n=args.n, root=args.root, seed=args.seed,
                               epochs=args.epochs, device=device, limit=args.limit, eps=eps)
    except DownloadableError as err:  # MNIST, CIFAR-10; STL-10's message says how to get it
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
            model_options=_model_options(args), dtype=args.dtype,
            overrides=_overrides(args.set), progress=not args.no_progress, timeout=args.timeout,
        )
        report = run_evaluation(cfg, argv=list(sys.argv))
    except EvaluationError as err:
        print(f"pertattack evaluate: error: {err}", file=sys.stderr)
        return 2
    if report.rank == 0:
        print(f"{report.n_inputs} inputs in {report.n_batches} batches ({report.batches_reused} reused, "
              f"{report.batches_computed} computed, {report.world_size} process(es)); wrote {report.out}/results.csv, "
              "summary.csv, summary.md, report.md, manifest.json")
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
    p.add_argument("--model", required=True, help=MODEL_HELP)
    _model_arguments(p)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--root", default=None, help="folder of the mnist / cifar10 files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--attack", required=True, help="preset name(s), comma-separated, e.g. pgd,deepfool")
    p.add_argument("--eps", required=True, help="budget(s), comma-separated; a fraction a/b such as 8/255 is taken")
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


def cmd_report(args: argparse.Namespace) -> int:
    """report.md and its figures, drawn again from an evaluate folder (finished or not); REPORT.md from a reproduce
    folder's report.json and CSV files. No attack runs."""
    from .report import load_run, write_report

    out = Path(args.out)
    if (out / "report.json").is_file() and not (out / "manifest.json").exists():  # pertattack reproduce's
        from .experiments.report import write_report as write_reproduction

        print(f"wrote {write_reproduction(out)} (from {out / 'report.json'} and the CSV files beside it)")
        return 0
    run = load_run(args.out)
    path = write_report(run, figures=not args.no_figures)
    print(f"wrote {path}" + (f" from the {len(run.parts)} of {run.n_batches} batches finished so far (a partial run)"
                             if run.partial else f" ({run.label.size} inputs)"))
    return 0


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="draw report.md and its figures again from an evaluate --out folder, or REPORT.md from a "
                       "reproduce --out folder (no attack runs)",
        description="Robust accuracy against eps, minimum-norm distances, per-class robust accuracy, the examples "
                    "with the largest confidence change, the reliability flags, the command and the versions, from "
                    "the batches that OUT holds: a finished run, or the batches finished so far. For a folder of "
                    "pertattack reproduce: REPORT.md again from its report.json and CSV files (the claims checked "
                    "anew, paths made portable), with the writer of this version.")
    p.add_argument("out", help="the --out folder of pertattack evaluate or pertattack reproduce")
    p.add_argument("--no-figures", action="store_true", help="tables only (no matplotlib needed)")
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_report)


# --- end of pertattack evaluate ------------------------------------------------------------------------------------


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ecosystem model specs (pertattack.specs): each goes with its own kind of --model only."""
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="state dict of a timm:NAME model (default: timm's pretrained weights)")
    p.add_argument("--threat-model", default=None, help="robustbench:NAME: Linf, L2 or corruptions (default Linf)")
    p.add_argument("--model-dataset", default=None,
                   help="robustbench:NAME: cifar10, cifar100 or imagenet (default cifar10)")
    p.add_argument("--model-dir", default=None, help="robustbench:NAME: its checkpoint folder (default ./models)")


def _model_options(args: argparse.Namespace) -> dict[str, str]:
    """The ecosystem options given on the command line, as keywords of load_model_spec."""
    given = dict(weights=args.weights, threat_model=args.threat_model, dataset=args.model_dataset,
                 model_dir=args.model_dir)
    return {k: v for k, v in given.items() if v is not None}


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", help=DATA_HELP)
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


def _debug_argument(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an error instead of one line")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run one attack on a saved model and report the fooling ratio")
    p.add_argument("attack", help="a preset name (see `pertattack list`), e.g. alg1-10")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    _model_arguments(p)
    _data_arguments(p)
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split to attack")
    p.add_argument("--n", type=int, default=1000, help="attack the first n images")
    p.add_argument("--eps", default=None,
                   help="budget, or comma-separated budgets, each a number or a fraction such as 8/255 (default: the "
                        "preset's; DeepFool: unbounded)")
    p.add_argument("--target", default=None, metavar="CLASS|random|least-likely",
                   help="target classes of the targeted preset: one class number (images of that class are "
                        "left out), a random other class per image (seeded by --seed), or the class the model "
                        "scores lowest")
    p.add_argument("--surrogate", default=None, metavar="CHECKPOINT",
                   help="the transfer preset: compute the attack on this model (a spec like --model's), "
                        "judge it on --model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other overrides, e.g. p=2 steps=20 (default: none)")
    p.add_argument("--batch-size", type=int, default=500, help="inputs per chunk")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts, dithering and --target random")
    p.add_argument("--out", default=None,
                   help="save the result as .npz (plain NumPy arrays); with several --eps, one file whose arrays "
                        "are stacked along a first axis, one entry per budget, listed in 'eps_grid'")
    _device_argument(p)
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="pertattack",
        description="Adversarial examples by perturbation analysis (Balda, Behboodi and Mathar, 2018).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"pertattack {__version__}")
    _debug_argument(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the attack presets and their four parts")
    _debug_argument(p, argparse.SUPPRESS)
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
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model of the paper on MNIST (or the digits) and save it; "
                                      "--adversarial PRESET for adversarial training; data parallel under torchrun")
    p.add_argument("model", help="fcnn, lenet5, smallcnn, fc-ae (MNIST); nin, densenet40 (CIFAR-10)")
    _data_arguments(p)
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--n", "--limit", dest="n", type=int, default=None,
                   help="use the first n training images (default: all; under torchrun write --limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling")
    p.add_argument("--out", required=True, help="checkpoint path (.pt; saved after every epoch, with the training "
                                                 "state for --resume)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the training saved in CKPT (a checkpoint of pertattack train) to --epochs, with "
                        "the same options: the weights of an uninterrupted run")
    p.add_argument("--adversarial", default=None, metavar="PRESET",
                   help="adversarial training: attack every minibatch with this preset (e.g. pgd, fgsm-rs, alg1-10)")
    p.add_argument("--eps", default=None, help="the budget of --adversarial (a number or a fraction such as 8/255)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the --adversarial attack, e.g. steps=10 random_start=True")
    p.add_argument("--mix", type=float, default=None,
                   help="weight of the clean loss with --adversarial (default 0: adversarial only; 0.5: half and half)")
    p.add_argument("--beta", type=float, default=None,
                   help="TRADES with --adversarial trades: the loss CE(x) + BETA * KL(p(x) || p(x_adv)) (their 6)")
    _device_argument(p)
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)

    _add_run(sub)

    p = sub.add_parser("reproduce", help="reproduce a figure or table of the paper (CSV + PNG + REPORT.md)")
    p.add_argument("experiment",
                   help="fig1, fig2a, fig2b, fig2c, fig3a, fig3b, fig3c, fig3d, table3, fig4a, fig4b, fig4c, fig4d, "
                        "advtrain (the paper's conjecture on adversarial training), or all")
    p.add_argument("--out", default="results", help="folder for the CSV, PNG and REPORT.md files")
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--root", default=None, help="data folder (MNIST, or CIFAR-10 for fig3c/fig3d/fig4c)")
    p.add_argument("--download", action="store_true", help="fetch the data sets the experiment needs into --root")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of every model not yet cached (default: 3; advtrain: 1)")
    p.add_argument("--limit", type=int, default=None,
                   help="advtrain: train on the first LIMIT training images (default: 20000; 60000: all)")
    p.add_argument("--eps", default=None,
                   help="advtrain: comma-separated training budgets (l-inf; default: 0.04,0.1,0.2; the paper's grid: "
                        "0.02,0.04,...,0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the shuffling and the attacks")
    _device_argument(p)
    _debug_argument(p, argparse.SUPPRESS)
    p.set_defaults(func=cmd_reproduce)
    _add_evaluate(sub)
    _add_report(sub)
    for subparser in sub.choices.values():  # every subcommand's help shows the defaults
        subparser.formatter_class = _Formatter
    return parser


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (torch's state_dict errors, for one, span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


#: errors that a user's input can cause: one line, exit status 2
_USER_ERRORS = (UsageError, ValueError, TypeError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for an internal error, 2 for a user's mistake, 130 when
    interrupted, 141 when stdout's reader has gone, as for a tool killed by SIGPIPE)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    prog = f"pertattack {args.command}"
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:  # `pertattack list | head`: stop quietly, as a unix tool killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return 128 + 13
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
