"""``pertattack reproduce``: the paper's figures and tables (Section 6) on MNIST and CIFAR-10.

Models are trained once (Adam, cross-entropy or MSE, seeded) and cached in
:func:`~pertattack.experiments.common.cache_dir`; attacks run on the first ``n`` test images.
The CIFAR-10 experiments (fig3c, fig3d) need the CIFAR-10 files and, to train NIN and DenseNet-40
in reasonable time, a GPU (``--device cuda``); ``all`` skips them when the data is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data import load_cifar10, load_mnist
from ..training import accuracy, reconstruction_mse, train_autoencoder, train_classifier
from .classification import run_fig3, run_table3
from .common import cached_model, data_digest
from .regression import FIG4A_ATTACKS, FIG4B_ATTACKS, FIG4C_ATTACKS, PIXEL_EPS, run_fig4

__all__ = ["reproduce", "EXPERIMENTS", "classifier", "autoencoder", "mnist_autoencoder", "cache_tag"]

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


def reproduce(experiment: str, *, out: Path, n: int = 1000, root: str | None = None, seed: int = 0,
              epochs: int = 3, device: str = "cpu") -> int:
    """Run one experiment of :data:`EXPERIMENTS` (or ``all``); ``root`` is the data folder (MNIST or
    CIFAR-10, as the experiment needs; None: the loaders' defaults)."""
    if experiment not in EXPERIMENTS and experiment != "all":
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}, all")
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    for name in names:
        print(f"== {name}: {EXPERIMENTS[name][0]}")
        try:
            EXPERIMENTS[name][1](out=out, n=n, root=root, seed=seed, epochs=epochs, device=device)
        except FileNotFoundError as err:
            if experiment != "all":
                raise
            print(f"skipped {name}: {err}")
    return 0


def _fig3(dataset: str, model_name: str, eps: list[float], title: str, tag: str):
    def run(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> None:
        load = LOADERS[dataset]
        x, y = (t.to(device) for t in load(root, "test", limit=n))
        model = classifier(dataset, model_name, root, epochs, seed, device)
        print(f"{model_name}: test error {1 - accuracy(model, *load(root, 'test')):.4f}")
        run_fig3(model, x, y, eps, out / tag, title, seed=seed)
        print(f"wrote {out / tag}.csv (+ .png with matplotlib)")

    return run


def _table3(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> None:
    x, y = (t.to(device) for t in load_mnist(root, "test", limit=n))
    models = {f"{m} (MNIST)": (classifier("mnist", m, root, epochs, seed, device), x, y) for m in ("fcnn", "lenet5")}
    run_table3(models, out / "table3", p=math.inf)
    print(f"wrote {out / 'table3'}.csv")


def _fig4(dataset: str, attacks: list[str], p: float, tag: str, title: str, eps: list[float] | None = None):
    def run(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> None:
        model = autoencoder(dataset, root, max(epochs, 10), seed, device)
        x_all = LOADERS[dataset](root, "test")[0].to(device)
        print(f"fc-ae ({dataset}): test MSE {reconstruction_mse(model, x_all):.5f}")
        idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, 20)]
        run_fig4(model, x_all[idx], attacks, p, out / tag, title, eps=eps, seed=seed)
        print(f"wrote {out / tag}.csv (+ .png with matplotlib)")

    return run


def _fig2a(*, out: Path, n: int, root: str | None, seed: int, epochs: int, device: str) -> None:
    """Figure 2(a): the autoencoder denoises random noise but not quadratic-linf noise of the same size."""
    from ..attacks import get_attack
    from ..metrics import eps_for_psnr, psnr
    from .common import plot_images

    model = mnist_autoencoder(root, max(epochs, 10), seed, device)
    x_all = load_mnist(root, "test")[0].to(device)
    idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))[: min(n, 6)]
    x = x_all[idx]
    eps = eps_for_psnr(20.0, math.inf, x[0].numel())
    adv = get_attack("quadratic-linf", eps=eps)(model, x).x_adv
    rnd = get_attack("rand-linf", eps=eps, seed=seed)(model, x).x_adv
    with torch.no_grad():
        rows = {"original": x, "output": model(x), "quadratic-linf": adv, "its output": model(adv),
                "random": rnd, "its output ": model(rnd)}
        caps = [f"out {float(a):.1f} / {float(b):.1f} dB" for a, b in zip(psnr(model(adv), x), psnr(model(rnd), x),
                                                                        strict=True)]
    plot_images(out / "fig2a.png", rows, captions=caps,
                title=f"MNIST autoencoder, l-inf eps = {eps:.3f} (input PSNR 20 dB): output PSNR adversarial / random")
    print("output PSNR (adversarial / random):", ", ".join(caps))
    print(f"wrote {out / 'fig2a.png'}")


EXPERIMENTS = {
    "fig3a": ("fooling ratio vs eps (p = inf), FCNN 784-150-100-10 on MNIST",
              _fig3("mnist", "fcnn", FIG3_EPS, "MNIST FCNN, l-inf", "fig3a")),
    "fig3b": ("fooling ratio vs eps (p = inf), LeNet-5 on MNIST",
              _fig3("mnist", "lenet5", FIG3_EPS, "MNIST LeNet-5, l-inf", "fig3b")),
    "fig3c": ("fooling ratio vs eps (p = inf), Network-in-Network on CIFAR-10",
              _fig3("cifar10", "nin", FIG3C_EPS, "CIFAR-10 NIN, l-inf", "fig3c")),
    "fig3d": ("fooling ratio vs eps (p = inf), DenseNet-40 on CIFAR-10",
              _fig3("cifar10", "densenet40", FIG3D_EPS, "CIFAR-10 DenseNet-40, l-inf", "fig3d")),
    "table3": ("test error, rho1, rho2, DeepFool's 99% eps (p = inf), FCNN and LeNet-5", _table3),
    "fig2a": ("example images: MNIST autoencoder on quadratic-linf vs random noise of the same size", _fig2a),
    "fig4a": ("output vs input PSNR, l2 attacks, MNIST fully connected autoencoder (20 test images)",
              _fig4("mnist", FIG4A_ATTACKS, 2.0, "fig4a", "MNIST autoencoder, l2")),
    "fig4b": ("output vs input PSNR, l-inf attacks, MNIST fully connected autoencoder (20 test images)",
              _fig4("mnist", FIG4B_ATTACKS, math.inf, "fig4b", "MNIST autoencoder, l-inf")),
    "fig4c": ("output PSNR vs eps, multiple-pixel attacks, CIFAR-10 fully connected autoencoder (20 test images)",
              _fig4("cifar10", FIG4C_ATTACKS, math.inf, "fig4c", "CIFAR-10 autoencoder, pixels", PIXEL_EPS)),
}
