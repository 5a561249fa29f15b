"""``pertattack reproduce``: the paper's figures and tables (Section 6) on MNIST and CIFAR-10.

Models are trained once (Adam, cross-entropy or MSE, seeded) and cached in
:func:`~pertattack.experiments.common.cache_dir`; attacks run on the first ``n`` test images.
The CIFAR-10 experiments (fig3c, fig3d, fig4c; the CIFAR-10 parts of fig1, fig2b, table3) need the CIFAR-10
files ($PERTATTACK_CIFAR10) and, to train NIN and DenseNet-40 in reasonable time, a GPU (``--device cuda``);
the colorization experiments (fig2c, fig4d) need the STL-10 binary files ($PERTATTACK_STL10, or --root when
run alone). ``all`` skips what has no data, saying what to provide; every run writes REPORT.md in --out.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data import CIFAR10_CLASSES, load_cifar10, load_mnist
from ..training import accuracy, reconstruction_mse, train_autoencoder, train_classifier
from .advtrain import run_advtrain
from .classification import run_fig3, run_table3
from .common import cached_model, data_digest
from .regression import FIG4A_ATTACKS, FIG4B_ATTACKS, FIG4C_ATTACKS, FIG4D_ATTACKS, PIXEL_EPS, run_fig4

__all__ = ["reproduce", "EXPERIMENTS", "classifier", "autoencoder", "mnist_autoencoder", "cache_tag", "same_size_noise"]

#: Figure 3's eps grids, p = inf, as the paper's x axes: MNIST to 0.2, NIN to 0.03, DenseNet to 0.01.
FIG3_EPS = [float(e) for e in np.round(np.linspace(0.0, 0.2, 11), 3)]
FIG3C_EPS = [float(e) for e in np.round(np.linspace(0.0, 0.03, 7), 4)]
FIG3D_EPS = [float(e) for e in np.round(np.linspace(0.0, 0.01, 6), 4)]
LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def cache_tag(dataset: str, name: str, epochs: int, seed: int, x: torch.Tensor, y: torch.Tensor) -> str:
    """The cache file name (without ``.pt``) of a model trained on ``(x, y)``: data set, model, epochs,
    seed and :func:`~pertattack.experiments.common.data_digest` of the training data, so a model trained
    on other data (another ``--root``) is never reused."""
    return f"{dataset}-{name}-e{epochs}-s{seed}-{data_digest(x, y)}"


def classifier(dataset: str, name: str, root: str | None, epochs: int, seed: int, device: str = "cpu"):
    """A classifier of the paper (fcnn, lenet5 on MNIST; nin, densenet40 on CIFAR-10), trained once, cached
    under a name that includes a digest of the training data."""
    x, y = LOADERS[dataset](root, "train")

    def train(model):
        train_classifier(model, x, y, epochs=epochs, batch_size=128, lr=1e-3, seed=seed, progress=True)

    return cached_model(name, cache_tag(dataset, name, epochs, seed, x, y), train, seed=seed, device=device)


def autoencoder(dataset: str, root: str | None, epochs: int, seed: int, device: str = "cpu"):
    """The fully connected autoencoders of Section 6.2, cached: MNIST 784 -> 32 -> 784 (96% compression),
    CIFAR-10 3072 -> 1536 -> 3072 (50% compression)."""
    kwargs = {} if dataset == "mnist" else {"in_shape": (3, 32, 32), "code": 1536, "hidden": 2048}
    x, y = LOADERS[dataset](root, "train")

    def train(model):
        train_autoencoder(model, x, epochs=epochs, batch_size=128, lr=1e-3, seed=seed, progress=True)

    return cached_model("fc-ae", cache_tag(dataset, "fc-ae", epochs, seed, x, y), train, seed=seed, device=device,
                        **kwargs)


def mnist_autoencoder(root: str | None, epochs: int, seed: int, device: str = "cpu"):
    """The fully connected MNIST autoencoder (784 -> 32 -> 784), trained once and cached."""
    return autoencoder("mnist", root, epochs, seed, device)


#: training epochs of an item when ``reproduce`` is given none (the paper's models: 3)
DEFAULT_EPOCHS = {"advtrain": 1}
#: the items that take ``limit`` (training images) and ``eps`` (training budgets)
TAKES_LIMIT_AND_EPS = ("advtrain",)


def reproduce(experiment: str, *, out: Path, n: int = 1000, root: str | None = None, seed: int = 0,
              epochs: int | None = None, device: str = "cpu", command: str | None = None,
              limit: int | None = None, eps: list[float] | None = None) -> int:
    """Run one experiment of :data:`EXPERIMENTS` (or ``all``); ``root`` is the data folder (MNIST or
    CIFAR-10, as the experiment needs; None: the loaders' defaults). ``epochs``: None gives each item its
    default (:data:`DEFAULT_EPOCHS`, else 3). ``limit`` (training images) and ``eps`` (training budgets) go to
    the items of :data:`TAKES_LIMIT_AND_EPS` (None: their defaults).

    Each item's record (command, time, model test errors, or why it was skipped) is merged into
    ``out/report.json`` and ``out/REPORT.md`` is rewritten (:mod:`pertattack.experiments.report`).
    With ``all``, an item whose data is missing is skipped with a message; a single item re-raises.
    """
    from .report import record, write_report

    if experiment not in EXPERIMENTS and experiment != "all":
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}, all")
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    extra = {k: v for k, v in (("limit", limit), ("eps", eps)) if v is not None}
    if extra and not set(names) & set(TAKES_LIMIT_AND_EPS):
        raise ValueError(f"limit and eps go with {', '.join(TAKES_LIMIT_AND_EPS)} (or all), not {experiment}")
    out = Path(out)
    if command is None:
        command = (f"pertattack reproduce {experiment} --out {out} --n {n}"
                   + (f" --epochs {epochs}" if epochs is not None else "") + f" --seed {seed}"
                   + (f" --limit {limit}" if limit is not None else "")
                   + (f" --eps {','.join(f'{e:g}' for e in eps)}" if eps is not None else "")
                   + (f" --root {root}" if root else "") + f" --device {device}")
    for name in names:
        print(f"== {name}: {EXPERIMENTS[name][0]}")
        t0, c0 = time.perf_counter(), time.process_time()
        kw = dict(out=out, n=n, root=root, seed=seed, device=device,
                  epochs=DEFAULT_EPOCHS.get(name, 3) if epochs is None else epochs)
        try:
            info = EXPERIMENTS[name][1](**kw, **(extra if name in TAKES_LIMIT_AND_EPS else {})) or {}
        except FileNotFoundError as err:
            record(out, name, dict(status="skipped", reason=str(err), command=command))
            write_report(out)
            if experiment != "all":
                raise
            print(f"skipped {name}: {err}")
            continue
        record(out, name, dict(status="ran", command=command, time_s=time.perf_counter() - t0,
                               cpu_s=time.process_time() - c0, machine=_machine(device), **info))
        write_report(out)
    print(f"wrote {out / 'REPORT.md'}")
    return 0


def _machine(device: str) -> str:
    import os
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} CPUs (load average {load:.1f} at the end), torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, device {device}")


def _timed_classifier(dataset: str, name: str, root: str | None, epochs: int, seed: int, device: str
                      ) -> tuple[torch.nn.Module, dict[str, float | str]]:
    """The cached classifier and its report entry: test error on the whole test split, load/train time."""
    t0 = time.perf_counter()
    model = classifier(dataset, name, root, epochs, seed, device)
    took = time.perf_counter() - t0
    x_te, y_te = LOADERS[dataset](root, "test")
    err = 1 - accuracy(model, x_te.to(device), y_te.to(device))
    print(f"{name} ({dataset}): test error {err:.4f}")
    return model, {"test_error": float(err), "epochs": epochs, "load_or_train_s": round(took, 1)}


def _timed_autoencoder(dataset: str, root: str | None, epochs: int, seed: int, device: str
                       ) -> tuple[torch.nn.Module, dict[str, float | str]]:
    t0 = time.perf_counter()
    model = autoencoder(dataset, root, epochs, seed, device)
    took = time.perf_counter() - t0
    x_all = LOADERS[dataset](root, "test")[0].to(device)
    mse = reconstruction_mse(model, x_all)
    print(f"fc-ae ({dataset}): test MSE {mse:.5f}")
    return model, {"test_mse": float(mse), "epochs": epochs, "load_or_train_s": round(took, 1)}


def _fig3(dataset: str, model_name: str, eps: list[float], title: str, tag: str):
    def run(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
        load = LOADERS[dataset]
        x, y = (t.to(device) for t in load(root, "test", limit=n))
        model, info = _timed_classifier(dataset, model_name, root, epochs, seed, device)
        run_fig3(model, x, y, eps, out / tag, title, seed=seed)
        print(f"wrote {out / tag}.csv (+ .png with matplotlib)")
        return {"models": {f"{model_name} ({dataset})": info}, "note": f"{x.shape[0]} test images"}

    return run


def _cifar_available() -> str | None:
    """None when the CIFAR-10 files load from the default root ($PERTATTACK_CIFAR10), else why not."""
    try:
        load_cifar10(None, "test", limit=1)
    except FileNotFoundError as err:
        return str(err)
    return None


def _table3(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Table 3: the MNIST rows on ``root``; the NIN and DenseNet-40 rows when the CIFAR-10 files are found
    at the default CIFAR-10 root ($PERTATTACK_CIFAR10)."""
    x, y = (t.to(device) for t in load_mnist(root, "test", limit=n))
    models, infos = {}, {}
    for m in ("fcnn", "lenet5"):
        model, infos[f"{m} (MNIST)"] = _timed_classifier("mnist", m, root, epochs, seed, device)
        models[f"{m} (MNIST)"] = (model, x, y)
    why = _cifar_available()
    if why is None:
        xc, yc = (t.to(device) for t in load_cifar10(None, "test", limit=n))
        for m in ("nin", "densenet40"):
            model, infos[f"{m} (CIFAR-10)"] = _timed_classifier("cifar10", m, None, epochs, seed, device)
            models[f"{m} (CIFAR-10)"] = (model, xc, yc)
    run_table3(models, out / "table3", p=math.inf)
    print(f"wrote {out / 'table3'}.csv")
    info: dict = {"models": infos, "note": f"{x.shape[0]} test images per model"}
    if why is not None:
        info["note"] += f"; NIN and DenseNet-40 rows not run: {why}"
        info["part_skipped"] = "CIFAR-10 rows (NIN, DenseNet-40): no CIFAR-10 files"
        print("table3: NIN and DenseNet-40 rows skipped:", why)
    return info


def _fig4(dataset: str, attacks: list[str], p: float, tag: str, title: str, eps: list[float] | None = None):
    def run(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
        model, info = _timed_autoencoder(dataset, root, epochs, seed, device)
        x_all = LOADERS[dataset](root, "test")[0].to(device)
        idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, 20)]
        run_fig4(model, x_all[idx], attacks, p, out / tag, title, eps=eps, seed=seed)
        print(f"wrote {out / tag}.csv (+ .png with matplotlib)")
        return {"models": {f"fc-ae ({dataset})": info}, "note": f"{len(idx)} random test images"}

    return run


def same_size_noise(model: torch.nn.Module, x: torch.Tensor, adv: torch.Tensor, preset: str, *, seed: int,
                    iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Random noise of the same measured size as the attack: the random ``preset`` (rand-linf, rand-pixel-T) with
    each image's budget chosen so that PSNR(noise, x), measured after clipping to the box, equals PSNR(adv, x).

    Clipping shrinks random noise more than a box-aware attack (half of the random signs on MNIST's black
    background are clipped away), so noise at the attack's eps is smaller than the attack. The noise (the
    preset's draws for ``seed``) is fixed and its clipped size grows with eps: bisection on eps in (0, width of
    the box], ``iters`` halvings per image. Where even the whole width is smaller than the attack, that noise
    is returned (the figure's CSV shows both input PSNRs). Returns (noisy x, eps per image).
    """
    import warnings

    from ..metrics import psnr
    from ..presets import get_attack

    attack = get_attack(preset, seed=seed)
    peak = attack.box.peak
    target = psnr(adv, x, peak).double()
    lo = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    hi = torch.full_like(lo, peak)

    def noise(eps: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # budgets above half the box are meant here
            warnings.filterwarnings("ignore", message=".*more than half of it")
            return attack(model, x, eps=eps.to(x.dtype)).x_adv

    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        bigger = psnr(noise(mid), x, peak).double() < target  # noise larger than the attack
        hi, lo = torch.where(bigger, mid, hi), torch.where(bigger, lo, mid)
    return noise(hi), hi


def _pair_figure(out: Path, tag: str, model: torch.nn.Module, x: torch.Tensor, adv: torch.Tensor,
                 rnd: torch.Tensor, adv_name: str, rnd_name: str, title: str, eps_rnd: torch.Tensor) -> None:
    """Rows original / output / adversarial / output / random / output to ``tag``.png, PSNRs (and the random
    noise's budget per image) to ``tag``.csv."""
    from ..metrics import psnr
    from .common import plot_images, write_csv

    with torch.no_grad():
        clean, out_adv, out_rnd = model(x), model(adv), model(rnd)
    tgt = x.reshape(clean.shape)
    cols = {"in_psnr_adv": psnr(adv, x), "in_psnr_random": psnr(rnd, x), "out_psnr_adv": psnr(out_adv, tgt),
            "out_psnr_random": psnr(out_rnd, tgt), "out_psnr_clean": psnr(clean, tgt), "eps_random": eps_rnd}
    write_csv(out / f"{tag}.csv", ["image", *cols], [[i, *[float(c[i]) for c in cols.values()]]
                                                     for i in range(x.shape[0])])
    caps = [f"{float(a):.1f} / {float(b):.1f} dB" for a, b in zip(cols["out_psnr_adv"], cols["out_psnr_random"],
                                                                   strict=True)]
    rows = {"original": x, "output": clean, adv_name: adv, "its output": out_adv, rnd_name: rnd,
            "its output ": out_rnd}
    plot_images(out / f"{tag}.png", rows, captions=caps,
                title=title + ", random noise of the same measured input PSNR: output PSNR adversarial / random")
    print("output PSNR (adversarial / random):", ", ".join(caps))
    print(f"wrote {out / tag}.csv and {out / tag}.png")


def _fig2a(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Figure 2(a): the autoencoder denoises random noise but not quadratic-linf noise of the same size (the same
    measured input PSNR, :func:`same_size_noise`)."""
    from ..metrics import eps_for_psnr
    from ..presets import get_attack

    model, info = _timed_autoencoder("mnist", root, epochs, seed, device)
    x_all = load_mnist(root, "test")[0].to(device)
    idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, 6)]
    x = x_all[idx]
    eps = eps_for_psnr(20.0, math.inf, x[0].numel())
    adv = get_attack("quadratic-linf", eps=eps)(model, x).x_adv
    rnd, eps_rnd = same_size_noise(model, x, adv, "rand-linf", seed=seed)
    _pair_figure(out, "fig2a", model, x, adv, rnd, "quadratic-linf", "random",
                 f"MNIST autoencoder, l-inf eps = {eps:.3f} (input PSNR 20 dB before clipping)", eps_rnd)
    return {"models": {"fc-ae (mnist)": info},
            "note": f"{x.shape[0]} random test images, quadratic-linf at l-inf eps {eps:.3f}; random l-inf noise of "
                    f"the same measured input PSNR (eps {_span(eps_rnd)})"}


def _span(v: torch.Tensor) -> str:
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:.3f}" if round(lo, 3) == round(hi, 3) else f"{lo:.3f} to {hi:.3f}"


#: Figure 2(b)'s per-pixel budget (the paper does not state it; the middle of Figure 4(c)'s axis)
FIG2B_EPS = 0.5


def _fig2b(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Figure 2(b): linear-pixel-100 against random 100-pixel noise (rand-pixel-100) of the same measured input
    PSNR (:func:`same_size_noise`), on the CIFAR-10 autoencoder as in the paper when the CIFAR-10 files are
    found, else on the MNIST autoencoder (100 of its 784 pixels)."""
    from ..presets import get_attack

    dataset = "cifar10" if _cifar_available() is None else "mnist"
    droot = None if dataset == "cifar10" else root
    model, info = _timed_autoencoder(dataset, droot, epochs, seed, device)
    x_all = LOADERS[dataset](droot, "test")[0].to(device)
    idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, 6)]
    x = x_all[idx]
    adv = get_attack("linear-pixel-100", eps=FIG2B_EPS, seed=seed)(model, x).x_adv
    rnd, eps_rnd = same_size_noise(model, x, adv, "rand-pixel-100", seed=seed)
    _pair_figure(out, "fig2b", model, x, adv, rnd, "linear-pixel-100", "rand-pixel-100",
                 f"{dataset} autoencoder, 100 pixels, eps = {FIG2B_EPS}", eps_rnd)
    note = (f"{x.shape[0]} random test images, linear-pixel-100 at eps {FIG2B_EPS}; rand-pixel-100 of the same "
            f"measured input PSNR (eps {_span(eps_rnd)})")
    if dataset == "mnist":
        note += " (MNIST autoencoder: CIFAR-10 files not found; the paper uses the CIFAR-10 autoencoder)"
        return {"models": {f"fc-ae ({dataset})": info}, "note": note,
                "part_skipped": "the CIFAR-10 autoencoder: no CIFAR-10 files, MNIST's ran instead"}
    return {"models": {f"fc-ae ({dataset})": info}, "note": note}


#: Figure 1's l-inf budgets: the right end of Figure 3's axes for MNIST (a) and NIN on CIFAR-10 (c)
FIG1_EPS = {"mnist": 0.2, "cifar10": 0.03}


def _fig1_one(dataset: str, model_name: str, root: str | None, n: int, seed: int, epochs: int, device: str,
              out: Path, tag: str) -> tuple[list[list], dict, str]:
    from ..metrics import predict
    from ..presets import get_attack
    from .common import plot_images

    model, info = _timed_classifier(dataset, model_name, root, epochs, seed, device)
    x, y = (t.to(device) for t in LOADERS[dataset](root, "test", limit=min(n, 200)))
    eps = FIG1_EPS[dataset]
    res = get_attack("alg1", eps=eps, seed=seed)(model, x, y)
    pred, pred_adv = predict(model, x), predict(model, res.x_adv)
    correct = pred == y
    fooled = correct & (pred_adv != y)
    pick = torch.nonzero(fooled).flatten()[:8]
    rows = [[dataset, int(i), int(y[i]), int(pred[i]), int(pred_adv[i]), eps, float(res.norms[i])] for i in pick]
    names = CIFAR10_CLASSES if dataset == "cifar10" else [str(d) for d in range(10)]
    if len(pick):
        eta = res.x_adv[pick] - x[pick]
        plot_images(out / f"{tag}.png", {"original": x[pick], "adversarial": res.x_adv[pick],
                                         "perturbation": 0.5 + eta / (2 * eps)},
                    captions=[f"{names[int(y[i])]} -> {names[int(pred_adv[i])]}" for i in pick],
                    title=f"Algorithm 1, {model_name} on {dataset}, l-inf eps = {eps}: true -> adversarial class")
    share = float(fooled.sum() / correct.sum().clamp_min(1))
    note = (f"{dataset}: Alg1 at eps {eps} fools {int(fooled.sum())} of {int(correct.sum())} correctly classified "
            f"images among the first {x.shape[0]} ({share:.1%}); the figure shows the first {len(pick)} fooled")
    print(note)
    return rows, {f"{model_name} ({dataset})": info}, note


def _fig1(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Figure 1: correctly classified images that Algorithm 1 (alg1, l-inf) misclassifies: original,
    adversarial, perturbation and predictions; LeNet-5 on MNIST, and NIN on CIFAR-10 when its files are found
    at the default CIFAR-10 root."""
    from .common import write_csv

    rows, models, note = _fig1_one("mnist", "lenet5", root, n, seed, epochs, device, out, "fig1")
    why = _cifar_available()
    if why is None:
        r2, m2, n2 = _fig1_one("cifar10", "nin", None, n, seed, epochs, device, out, "fig1-cifar10")
        rows, models, note = rows + r2, models | m2, note + "; " + n2
    write_csv(out / "fig1.csv", ["dataset", "index", "label", "pred", "pred_adv", "eps", "norm"], rows)
    if why is None:
        return {"models": models, "note": note}
    return {"models": models, "note": note + f"; CIFAR-10 part not run: {why}",
            "part_skipped": "CIFAR-10 (NIN): no CIFAR-10 files"}


#: width of the colorization network trained here (the published one is 64: too slow to train on a CPU)
COLOR_WIDTH = 16


def _stl_root(root: str | None) -> str:
    """The folder the STL-10 items read: ``root`` when it holds the STL-10 test files (a single STL-10 item run
    with --root), else the default STL-10 root ($PERTATTACK_STL10; under ``all``, --root is the MNIST folder).
    When neither holds them, the FileNotFoundError names both."""
    from ..data.stl10 import default_stl10_root, find_stl10_root

    return str(find_stl10_root("test", *([root] if root else []), default_stl10_root()))


def colorization_model(root: str | None, epochs: int, seed: int, device: str = "cpu"):
    """The colorization network (width :data:`COLOR_WIDTH`, no fusion) trained on the STL-10 train split
    (grey luma -> RGB, MSE), cached."""
    from ..data import load_stl10, to_gray

    def train(model):
        x, _ = load_stl10(root, "train")
        train_autoencoder(model, to_gray(x), target=x, epochs=epochs, batch_size=64, lr=1e-3, seed=seed,
                          progress=True)

    return cached_model("colorization", f"stl10-colorization-w{COLOR_WIDTH}-e{epochs}-s{seed}", train, seed=seed,
                        device=device, width=COLOR_WIDTH)


def _stl10_setup(root: str | None, n: int, epochs: int, seed: int, device: str, limit: int):
    from ..data import load_stl10, to_gray

    root = _stl_root(root)  # FileNotFoundError (what to provide, where it was looked for) before any training
    t0 = time.perf_counter()
    model = colorization_model(root, epochs, seed, device)
    took = time.perf_counter() - t0
    x_te, _ = load_stl10(root, "test")
    x_te = x_te.to(device)
    mse = reconstruction_mse(model, to_gray(x_te), x_te)
    print(f"colorization (STL-10): test MSE {mse:.5f}")
    idx = torch.randperm(x_te.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, limit)]
    rgb = x_te[idx]
    info = {"test_mse": float(mse), "epochs": epochs, "width": COLOR_WIDTH, "fusion": "off",
            "load_or_train_s": round(took, 1)}
    return model, to_gray(rgb), rgb, info


def _fig4d(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Figure 4(d): output PSNR (against the true colour image) vs input PSNR, l-inf attacks on the grey input
    of the STL-10 colorization network."""
    model, gray, rgb, info = _stl10_setup(root, n, epochs, seed, device, 20)
    run_fig4(model, gray, FIG4D_ATTACKS, math.inf, out / "fig4d", "STL-10 colorization, l-inf", seed=seed,
             truth=rgb)
    print(f"wrote {out / 'fig4d'}.csv (+ .png with matplotlib)")
    return {"models": {"colorization (stl10)": info}, "note": f"{gray.shape[0]} random test images"}


#: Figure 2(c)'s input PSNR (not stated in the paper: inputs "nearly identical")
FIG2C_PSNR = 30.0


def _fig2c(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> dict:
    """Figure 2(c): linear-linf-20 against random l-inf noise of the same size (the same measured input PSNR,
    :func:`same_size_noise`) on the colorization network."""
    from ..metrics import eps_for_psnr, psnr
    from ..presets import get_attack
    from .common import plot_images, write_csv

    model, gray, rgb, info = _stl10_setup(root, n, epochs, seed, device, 6)
    eps = eps_for_psnr(FIG2C_PSNR, math.inf, gray[0].numel())
    adv = get_attack("linear-linf-20", eps=eps, seed=seed)(model, gray).x_adv
    rnd, eps_rnd = same_size_noise(model, gray, adv, "rand-linf", seed=seed)
    with torch.no_grad():
        clean, out_adv, out_rnd = model(gray), model(adv), model(rnd)
    cols = {"in_psnr_adv": psnr(adv, gray), "in_psnr_random": psnr(rnd, gray), "out_psnr_adv": psnr(out_adv, rgb),
            "out_psnr_random": psnr(out_rnd, rgb), "out_psnr_clean": psnr(clean, rgb), "eps_random": eps_rnd}
    write_csv(out / "fig2c.csv", ["image", *cols], [[i, *[float(c[i]) for c in cols.values()]]
                                                    for i in range(gray.shape[0])])
    g3 = lambda t: t.expand(-1, 3, -1, -1)  # noqa: E731
    plot_images(out / "fig2c.png", {"colour": rgb, "grey input": g3(gray), "output": clean.clamp(0, 1),
                                    "linear-linf-20": g3(adv), "its output": out_adv.clamp(0, 1),
                                    "random": g3(rnd), "its output ": out_rnd.clamp(0, 1)},
                captions=[f"{float(a):.1f} / {float(b):.1f} dB" for a, b in zip(cols["out_psnr_adv"],
                                                                               cols["out_psnr_random"], strict=True)],
                title=f"STL-10 colorization, l-inf eps = {eps:.4f} (input PSNR {FIG2C_PSNR:g} dB): "
                      "output PSNR adversarial / random")
    return {"models": {"colorization (stl10)": info},
            "note": f"{gray.shape[0]} random test images, eps {eps:.4f}; random l-inf noise of the same measured "
                    f"input PSNR (eps {_span(eps_rnd)})"}


EXPERIMENTS = {
    "fig1": ("Algorithm 1 example images: LeNet-5 on MNIST (and NIN on CIFAR-10 when its files are there)", _fig1),
    "fig3a": ("fooling ratio vs eps (p = inf), FCNN 784-150-100-10 on MNIST",
              _fig3("mnist", "fcnn", FIG3_EPS, "MNIST FCNN, l-inf", "fig3a")),
    "fig3b": ("fooling ratio vs eps (p = inf), LeNet-5 on MNIST",
              _fig3("mnist", "lenet5", FIG3_EPS, "MNIST LeNet-5, l-inf", "fig3b")),
    "fig3c": ("fooling ratio vs eps (p = inf), Network-in-Network on CIFAR-10",
              _fig3("cifar10", "nin", FIG3C_EPS, "CIFAR-10 NIN, l-inf", "fig3c")),
    "fig3d": ("fooling ratio vs eps (p = inf), DenseNet-40 on CIFAR-10",
              _fig3("cifar10", "densenet40", FIG3D_EPS, "CIFAR-10 DenseNet-40, l-inf", "fig3d")),
    "table3": ("test error, rho1, rho2, DeepFool's 99% eps (p = inf): FCNN, LeNet-5 (and NIN, DenseNet-40 when "
               "CIFAR-10 is there)", _table3),
    "fig2a": ("example images: MNIST autoencoder on quadratic-linf vs random noise of the same size", _fig2a),
    "fig2b": ("example images: linear-pixel-100 vs random 100-pixel noise (CIFAR-10 autoencoder, else MNIST's)",
              _fig2b),
    "fig4a": ("output vs input PSNR, l2 attacks, MNIST fully connected autoencoder (20 test images)",
              _fig4("mnist", FIG4A_ATTACKS, 2.0, "fig4a", "MNIST autoencoder, l2")),
    "fig4b": ("output vs input PSNR, l-inf attacks, MNIST fully connected autoencoder (20 test images)",
              _fig4("mnist", FIG4B_ATTACKS, math.inf, "fig4b", "MNIST autoencoder, l-inf")),
    "fig4c": ("output PSNR vs eps, multiple-pixel attacks, CIFAR-10 fully connected autoencoder (20 test images)",
              _fig4("cifar10", FIG4C_ATTACKS, math.inf, "fig4c", "CIFAR-10 autoencoder, pixels", PIXEL_EPS)),
    "fig2c": ("example images: STL-10 colorization network on linear-linf-20 vs random noise", _fig2c),
    "fig4d": ("output vs input PSNR, l-inf attacks, STL-10 colorization network (20 test images)", _fig4d),
    "advtrain": ("the paper's conjecture: adversarial training with PGD vs Algorithm 1-10 (vs FGSM with random "
                 "start and plain training), LeNet-5 and FCNN on MNIST, robust accuracy under auto", run_advtrain),
}
