"""``pertattack demo``: the whole framework in one short run on the 8x8 digits that ship with scikit-learn.

Two models are trained on the digits (1,348 train / 449 test images, 1x8x8, no download):

* a classifier (:class:`~pertattack.models.SmallCNN`), attacked by the classification attacks of the
  paper's Figure 3 over a grid of l-inf budgets (fooling ratio per eps), with the robustness measures
  of its Table 3 (test error, rho1, rho2, DeepFool's 99% eps);
* a fully connected autoencoder (64 -> 128 -> 8 -> 128 -> 64, 87.5% compression), attacked by the
  regression attacks of Figure 4 (quadratic, linear and random, l2 and l-inf) over a grid of input
  PSNRs, with the operator norm norm(J)_{2->2} of its Jacobian at each test image.

:func:`run_demo` writes ``report.md``, the CSV tables and the PNG figures to one folder and returns
a :class:`DemoResult`. The run uses one torch thread by default: these models are so small that a
second intra-op thread only adds synchronisation, and on a shared 2-core machine it waits for a busy
core (``benchmarks/bench_demo.py`` measures both).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import load_digits
from ..metrics import eps_for_psnr, fooling_curve, operator_norm, predict, psnr, psnr_curve, robustness
from ..models import build_model
from ..presets import get_attack
from ..training import accuracy, reconstruction_mse, train_autoencoder, train_classifier
from . import demo_plots
from .classification import FIG3_ATTACKS
from .common import write_csv

__all__ = [
    "DemoConfig",
    "DemoResult",
    "CLASSIFICATION_ATTACKS",
    "REGRESSION_ATTACKS",
    "FIGURES",
    "OUTPUT_FILES",
    "run_demo",
    "torch_threads",
]

#: Figure 3's attacks, legend -> (preset, overrides). "PGD (paper)" is the paper's reading of PGD;
#: Madry's PGD runs beside it with the same number of gradient steps (10) as Alg1-10 and PGD (paper).
CLASSIFICATION_ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    ("PGD (Madry, 10 steps)" if k == "PGD (Madry)" else k): (("pgd", {"steps": 10}) if k == "PGD (Madry)" else v)
    for k, v in FIG3_ATTACKS.items()
}

#: Figure 4's regression attacks, by norm: p -> presets.
REGRESSION_ATTACKS: dict[float, list[str]] = {
    2.0: ["rand-l2", "linear-l2-1", "linear-l2-10", "quadratic-l2"],
    math.inf: ["rand-linf", "linear-linf-1", "linear-linf-10", "quadratic-linf"],
}

#: figure file -> what it shows (the report embeds each one with a paragraph on how to read it).
FIGURES: dict[str, str] = {
    "fooling.png": "fooling ratio vs eps, classifier",
    "examples.png": "adversarial examples, classifier",
    "regression.png": "output vs input PSNR, autoencoder",
    "autoencoder.png": "autoencoder under random and adversarial noise of the same PSNR",
}

#: every file the demo writes into its folder
OUTPUT_FILES: tuple[str, ...] = ("report.md", "fooling.csv", "robustness.csv", "regression.csv", "operator_norm.csv",
                                 *FIGURES)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        eps: l-inf budgets of the classification attacks (pixels in [0, 1]).
        input_psnr: target input PSNRs (dB) of the regression attacks; each becomes an l2 and an
            l-inf budget through :func:`~pertattack.metrics.eps_for_psnr`.
        epochs: training epochs of both models.
        n_test: classify and attack the first ``n_test`` test images (None: all 449).
        n_regression: test images the regression attacks and the autoencoder figure use.
        example_eps: the l-inf budget of the adversarial-example grid (Alg1-10).
        figure_psnr: the input PSNR (dB) that sets the l-inf budget of the autoencoder figure.
        seed: seeds the split, the weights, the shuffling, random starts and dithering.
        threads: torch intra-op threads during the run (restored afterwards).
    """

    eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
    input_psnr: tuple[float, ...] = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0)
    epochs: int = 20
    n_test: int | None = None
    n_regression: int = 20
    example_eps: float = 0.15
    figure_psnr: float = 15.0
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.eps or any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise ValueError(f"eps must be a non-empty list of finite values >= 0, got {self.eps}")
        if not self.input_psnr or any(not math.isfinite(d) or d <= 0 for d in self.input_psnr):
            raise ValueError(f"input_psnr must be a non-empty list of positive dB values, got {self.input_psnr}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.n_test is not None and self.n_test < 2:
            raise ValueError(f"n_test must be >= 2, got {self.n_test}")
        if self.n_regression < 1:
            raise ValueError(f"n_regression must be >= 1, got {self.n_regression}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A small grid for tests and a first look (a few seconds): 3 eps, 3 PSNRs, 80 test images, 3 epochs."""
        kw: dict[str, Any] = dict(eps=(0.0, 0.1, 0.2), input_psnr=(10.0, 25.0, 40.0), epochs=3, n_test=80,
                                  n_regression=6)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and where it wrote it.

    Attributes:
        out: the output folder.
        fooling: attack legend -> fooling ratio per eps of ``config.eps``.
        robustness: Table 3's measures for the classifier (:func:`~pertattack.metrics.robustness`).
        regression: preset -> :func:`~pertattack.metrics.psnr_curve` rows.
        operator_norm: norm(J)_{2->2} of the autoencoder at each attacked test image.
        test_error: the classifier's test error on the attacked images.
        ae_mse: the autoencoder's test MSE.
        files: every file written, relative to ``out``.
        timings: stage -> seconds.
        seconds: the whole run, seconds.
    """

    out: Path
    config: DemoConfig
    fooling: dict[str, list[float]] = field(default_factory=dict)
    robustness: dict[str, float] = field(default_factory=dict)
    regression: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    operator_norm: Tensor | None = None
    test_error: float = math.nan
    ae_mse: float = math.nan
    n_test: int = 0
    n_correct: int = 0
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = math.nan


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Stages:
    """A progress bar over the demo's stages (tqdm on stderr) that also times each stage."""

    def __init__(self, names: Sequence[str], progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(names), desc="demo", unit="stage", disable=not progress,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"demo: {name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - t0
            self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description("demo")
        self.bar.close()


def _autoencoder(seed: int) -> nn.Module:
    return build_model("fc-ae", in_shape=(1, 8, 8), code=8, hidden=128, seed=seed)


def run_demo(out: str | Path = "pertattack-demo", config: DemoConfig | None = None, *, progress: bool = True,
             log: Callable[[str], None] = print) -> DemoResult:
    """Train the demo's classifier and autoencoder on the digits, attack both, write the report.

    Args:
        out: output folder (created): ``report.md``, ``fooling.csv``, ``robustness.csv``,
            ``regression.csv``, ``operator_norm.csv`` and the PNGs of :data:`FIGURES` (with matplotlib).
        config: what to run; default :class:`DemoConfig` (the full grid), :meth:`DemoConfig.quick` for a
            small one.
        progress: a progress bar over the stages on stderr.
        log: where the one-line summaries go.

    Returns:
        A :class:`DemoResult` with every figure measured and the files written.
    """
    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    reg_presets = [name for names in REGRESSION_ATTACKS.values() for name in names]
    stages = _Stages(["data", "train classifier", "train autoencoder", *CLASSIFICATION_ATTACKS, "robustness",
                      *reg_presets, "operator norm", "figures"], progress)
    res = DemoResult(out=out, config=cfg)
    if log is print and progress:
        from tqdm.auto import tqdm

        log = tqdm.write  # a line above the bar, not through it
    try:
        with torch_threads(cfg.threads):
            _run(cfg, res, stages, reg_presets, log)
    finally:
        stages.close()
    res.timings = stages.timings
    res.seconds = time.perf_counter() - t_start
    # the report carries the total time, so it is written (in milliseconds) after the clock stops
    (out / "report.md").write_text(_report(res))
    res.files.append("report.md")
    log(f"wrote {len(res.files)} files to {out}/ (report.md, CSVs, PNGs) in {res.seconds:.1f} s")
    return res


def _run(cfg: DemoConfig, res: DemoResult, stages: _Stages, reg_presets: list[str],
         log: Callable[[str], None]) -> None:
    out = res.out
    with stages.stage("data"):
        x_tr, y_tr = load_digits("train", seed=cfg.seed)
        x_te, y_te = load_digits("test", seed=cfg.seed)
        if cfg.n_test is not None:
            x_te, y_te = x_te[: cfg.n_test], y_te[: cfg.n_test]
    with stages.stage("train classifier"):
        clf = build_model("smallcnn", seed=cfg.seed)
        train_classifier(clf, x_tr, y_tr, epochs=cfg.epochs, batch_size=64, lr=3e-3, seed=cfg.seed)
        clf.eval()
        pred = predict(clf, x_te)
        res.test_error = 1.0 - accuracy(clf, x_te, y_te)
        res.n_test, res.n_correct = x_te.shape[0], int((pred == y_te).sum())
    with stages.stage("train autoencoder"):
        ae = _autoencoder(cfg.seed)
        train_autoencoder(ae, x_tr, epochs=cfg.epochs, batch_size=64, lr=3e-3, seed=cfg.seed)
        ae.eval()
        res.ae_mse = reconstruction_mse(ae, x_te)
    log(f"classifier: test error {res.test_error:.2%} on {res.n_test} test images; "
        f"autoencoder: test MSE {res.ae_mse:.4f}")

    eps = list(cfg.eps)
    for label, (preset, overrides) in CLASSIFICATION_ATTACKS.items():
        with stages.stage(label):
            res.fooling[label] = fooling_curve(clf, x_te, y_te, preset, eps, seed=cfg.seed, **overrides)
    write_csv(out / "fooling.csv", ["attack", "preset", *[f"eps={e:g}" for e in eps]],
              [[k, CLASSIFICATION_ATTACKS[k][0], *v] for k, v in res.fooling.items()])
    res.files.append("fooling.csv")

    with stages.stage("robustness"):
        res.robustness = robustness(clf, x_te, y_te, math.inf)
    keys = ["test_error", "rho1", "rho2", "eps_99", "deepfool_success"]
    write_csv(out / "robustness.csv", ["model", *keys], [["SmallCNN", *[res.robustness[k] for k in keys]]])
    res.files.append("robustness.csv")

    x_reg = x_te[: cfg.n_regression]
    m = x_reg[0].numel()
    rows = []
    for p, presets in REGRESSION_ATTACKS.items():
        budgets = [eps_for_psnr(d, p, m) for d in cfg.input_psnr]
        for preset in presets:
            with stages.stage(preset):
                c = psnr_curve(ae, x_reg, preset, budgets, seed=cfg.seed)
            res.regression[preset] = c
            for i, d in enumerate(cfg.input_psnr):
                rows.append([preset, _pname(p), d, c["eps"][i], c["input_psnr"][i], c["output_psnr"][i],
                             c["output_psnr_clean"][i]])
    write_csv(out / "regression.csv", ["attack", "p", "target_input_psnr", "eps", "input_psnr", "output_psnr",
                                       "output_psnr_clean"], rows)
    res.files.append("regression.csv")

    with stages.stage("operator norm"):
        sigma = operator_norm(ae, x_te, seed=cfg.seed)
        res.operator_norm = sigma
    write_csv(out / "operator_norm.csv", ["image", "label", "sigma"],
              [[i, int(y_te[i]), float(s)] for i, s in enumerate(sigma)])
    res.files.append("operator_norm.csv")

    with stages.stage("figures"):
        res.files += _figures(cfg, res, clf, ae, x_te, y_te, pred, x_reg)
    figs = [f for f in FIGURES if f in res.files]
    log("fooling ratio (l-inf), eps = " + ", ".join(f"{e:g}" for e in eps))
    for k, v in res.fooling.items():
        log(f"  {k:>22}: " + " ".join(f"{f:.3f}" for f in v))
    r = res.robustness
    log(f"robustness (p = inf): rho1 {r['rho1']:.4f}, rho2 {r['rho2']:.4f}, DeepFool > 99% at eps {r['eps_99']:.3f}; "
        f"autoencoder operator norm: median {float(sigma.median()):.3f}")
    if not figs:
        log("matplotlib is not installed: no figures (pip install matplotlib)")


def _pname(p: float) -> str:
    return "inf" if math.isinf(p) else f"{p:g}"


def _figures(cfg: DemoConfig, res: DemoResult, clf: nn.Module, ae: nn.Module, x_te: Tensor, y_te: Tensor,
             pred: Tensor, x_reg: Tensor) -> list[str]:
    """Draw the PNGs of :data:`FIGURES`; returns the files written (none without matplotlib)."""
    if not demo_plots.available():
        return []
    out = res.out
    written = []
    note = (f"{res.n_test} test images ({res.n_correct} classified correctly), "
            f"test error {res.test_error:.1%}")
    demo_plots.fooling_plot(out / "fooling.png", list(cfg.eps), res.fooling,
                            title="SmallCNN on the 8x8 digits: fooling ratio (l-inf)", note=note)
    written.append("fooling.png")

    # adversarial examples: Alg1-10 at example_eps on correctly classified images, one per class where possible
    ok = (pred == y_te).nonzero().flatten()
    attack = get_attack("alg1-10", eps=cfg.example_eps, seed=cfg.seed)
    r = attack(clf, x_te[ok], y_te[ok])
    picked: list[int] = []
    seen: set[int] = set()
    for fooled_first in (True, False):  # fooled images of unseen classes first, then fill up
        for j in range(ok.numel()):
            if len(picked) == 10:
                break
            c = int(y_te[ok[j]])
            if bool(r.success[j]) == fooled_first and c not in seen and j not in picked:
                picked.append(j)
                seen.add(c)
    sel = torch.tensor(sorted(picked, key=lambda j: int(y_te[ok[j]])), dtype=torch.long)
    demo_plots.example_grid(out / "examples.png", x_te[ok][sel], r.eta[sel], r.x_adv[sel], y_te[ok][sel],
                            r.pred[sel], title=f"Alg1-10, l-inf eps = {cfg.example_eps:g}")
    written.append("examples.png")

    demo_plots.psnr_plot(out / "regression.png", res.regression, REGRESSION_ATTACKS,
                         note=f"{x_reg.shape[0]} test images, autoencoder test MSE {res.ae_mse:.4f}")
    written.append("regression.png")

    x6 = x_reg[:6]
    rows, caps = _same_psnr_noise(ae, x6, cfg.figure_psnr, cfg.seed)
    e = eps_for_psnr(cfg.figure_psnr, math.inf, x6[0].numel())
    demo_plots.autoencoder_grid(
        out / "autoencoder.png", rows, caps,
        title=f"Autoencoder: random vs adversarial l-inf noise of the same input PSNR (eps = {e:.3f}: "
              f"{cfg.figure_psnr:g} dB before clipping to [0, 1])")
    written.append("autoencoder.png")
    return written


def _same_psnr_noise(ae: nn.Module, x: Tensor, target_db: float, seed: int
                     ) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """quadratic-linf noise at the budget of ``target_db``, and random +-eps noise whose budget is tuned
    per image (a few multiplicative steps) so that its input PSNR after clipping to the box equals the
    adversarial one's: the two inputs are equally far from x, only the direction differs."""
    eps = eps_for_psnr(target_db, math.inf, x[0].numel())
    adv = get_attack("quadratic-linf", eps=eps)(ae, x).x_adv
    goal = psnr(adv, x)
    rand = get_attack("rand-linf", seed=seed)
    e = torch.full((x.shape[0],), eps)
    for _ in range(30):
        noisy = rand(ae, x, eps=e).x_adv
        gap = psnr(noisy, x) - goal
        if bool((gap.abs() < 0.01).all()):
            break
        e = (e * 10 ** (gap / 20)).clamp(max=1.0)
    with torch.no_grad():
        out_clean, out_rand, out_adv = ae(x), ae(noisy), ae(adv)
    rows = {"original": x, "output (clean)": out_clean, "random noise": noisy, "output (random)": out_rand,
            "adversarial noise\n(quadratic-linf)": adv, "output (adversarial)": out_adv}
    fmt = lambda v: [f"{float(d):.1f} dB" for d in v]  # noqa: E731
    caps = {name: fmt(psnr(img, x)) for name, img in rows.items() if name != "original"}
    return rows, caps


def _versions() -> dict[str, str]:
    import numpy

    from .. import __version__

    v = {"pertattack": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": numpy.__version__}
    for mod in ("sklearn", "matplotlib"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = "not installed"
    return v


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_READ = {
    "fooling.png": (
        "Each line is one attack; a point is the share of the correctly classified test images that the "
        "attack misclassifies with an l-inf perturbation of at most eps (pixels in [0, 1]). Higher is a "
        "stronger attack. Lines differ by marker and line style, not colour alone. Expect the random baseline "
        "near the bottom (random noise of the same size fools few images), the one-step attacks (FGSM, Alg2, Alg1) "
        "in the middle and the iterated ones (Alg1-10, PGD) on top; DeepFool runs once, unbounded, and counts "
        "as fooling at eps where its perturbation's norm is at most eps."
    ),
    "examples.png": (
        "Columns are correctly classified test images, one per class (fooled ones first). Top row: the "
        "original with its true class (also the model's prediction); "
        "middle row: the perturbation, scaled so that +-eps spans the colour map (red adds ink, blue removes "
        "it); bottom row: the adversarial image and the class the model now predicts (red when it changed). "
        "The perturbation is at most eps per pixel, yet the prediction flips."
    ),
    "regression.png": (
        "Left l2, right l-inf attacks on the autoencoder. x: input PSNR (how far x + eta is from x; right is "
        "less noise); y: output PSNR of the reconstruction against the clean output f(x) (lower is a larger "
        "output distortion). A point below the random line means the attack found a direction the "
        "autoencoder amplifies; the gap between random and quadratic/linear is the paper's Figure 4."
    ),
    "autoencoder.png": (
        "Columns are test images. Rows: the original and its reconstruction; random +-eps noise and its "
        "reconstruction; quadratic-linf noise (eq. 20) and its reconstruction. Both noises have the same input "
        "PSNR (captions: input rows against x, output rows against x). The autoencoder removes random noise "
        "but not adversarial noise of the same size."
    ),
}


def _report(res: DemoResult) -> str:
    sections = (_report_runs, _report_classifier, _report_regression, _report_figures)
    return "\n".join(line for section in sections for line in section(res))


def _report_runs(res: DemoResult) -> list[str]:
    """The title, the machine and versions, and what was run."""
    cfg = res.config
    return [
        "# pertattack demo",
        "",
        f"Ran in {res.seconds:.1f} s (data, training, attacks, figures; Python start-up and imports not counted) "
        f"with {cfg.threads} torch thread{'s' if cfg.threads > 1 else ''} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPU cores; "
        f"{', '.join(f'{k} {v}' for k, v in _versions().items())}.",
        "",
        "## What was run",
        "",
        f"- Data: the scikit-learn 8x8 digits (pixels in [0, 1]), split with seed {cfg.seed}; "
        f"{res.n_test} test images attacked.",
        f"- Classifier: SmallCNN (conv 16, conv 32, max-pool, fc 64, 10 classes), {cfg.epochs} epochs of Adam: "
        f"test error {res.test_error:.2%} ({res.n_correct} of {res.n_test} correct).",
        f"- Autoencoder: fully connected 64 -> 128 -> 8 -> 128 -> 64 (87.5% compression), {cfg.epochs} epochs "
        f"of Adam on the MSE: test MSE {res.ae_mse:.4f}.",
        f"- Classification attacks (Figure 3 of the paper), l-inf, eps = {', '.join(f'{e:g}' for e in cfg.eps)}: "
        + ", ".join(f"{k} (`{p}`)" for k, (p, _) in CLASSIFICATION_ATTACKS.items()) + ".",
        "- Robustness (Table 3): test error, rho1 (DeepFool's norm relative to norm(x)), rho2 (Theorem 1's "
        "first-order distance to the boundary, absolute), the smallest eps at which DeepFool fools > 99%.",
        f"- Regression attacks (Figure 4) on the first {min(cfg.n_regression, res.n_test)} test images at input "
        f"PSNR {', '.join(f'{d:g}' for d in cfg.input_psnr)} dB: "
        + "; ".join(f"p = {_pname(p)}: " + ", ".join(f"`{n}`" for n in ns) for p, ns in REGRESSION_ATTACKS.items())
        + ".",
        "- Operator norm norm(J)_{2->2} of the autoencoder's Jacobian at each test image (power iteration).",
        "",
    ]


def _report_classifier(res: DemoResult) -> list[str]:
    """Figure 3's fooling ratios and Table 3's robustness figures."""
    r = res.robustness
    return [
        "## Classifier: fooling ratio",
        "",
        _md_table(["attack", *[f"eps={e:g}" for e in res.config.eps]], [[k, *v] for k, v in res.fooling.items()]),
        "",
        "## Classifier: robustness (p = inf)",
        "",
        _md_table(["test error", "rho1 (relative)", "rho2 (absolute)", "eps with DeepFool > 99%",
                   "DeepFool success"],
                  [[f"{r['test_error']:.2%}", f"{r['rho1']:.4f}", f"{r['rho2']:.4f}", f"{r['eps_99']:.4f}",
                    f"{r['deepfool_success']:.1%}"]]),
        "",
        "rho1 is DeepFool's l-inf norm divided by norm_inf(x) (relative); rho2 and the 99% eps are in pixel units "
        "(absolute). Means over the correctly classified test images.",
        "",
    ]


def _report_regression(res: DemoResult) -> list[str]:
    """Figure 4's output PSNR by input PSNR, one table per norm, and the autoencoder's operator norm."""
    sigma = res.operator_norm if res.operator_norm is not None else torch.zeros(1)
    parts = [
        "## Autoencoder: output PSNR by input PSNR",
        "",
        "Output PSNR in dB of f(x + eta) against the clean output f(x), mean over the images (lower: larger "
        "distortion). Columns: the target input PSNR that sets eps; clipping to [0, 1] can only raise the input "
        "PSNR reached (`regression.csv` has it, and the output PSNR against x as the paper plots it).",
        "",
    ]
    for p, names in REGRESSION_ATTACKS.items():
        table = _md_table(["attack", *[f"target {d:g} dB" for d in res.config.input_psnr]],
                          [[n, *[f"{v:.1f}" for v in res.regression[n]["output_psnr_clean"]]] for n in names])
        parts += [f"p = {_pname(p)}:", "", table, ""]
    return parts + [
        "## Autoencoder: operator norm",
        "",
        _md_table(["images", "min", "median", "mean", "max"],
                  [[sigma.numel(), float(sigma.min()), float(sigma.median()), float(sigma.mean()),
                    float(sigma.max())]]),
        "",
        "norm(J)_{2->2} bounds the first-order output change per unit of input l2 norm: an l2 perturbation of "
        "norm eps moves the output by at most about sigma * eps.",
        "",
    ]


def _report_figures(res: DemoResult) -> list[str]:
    """The figures with how to read them, the files written and the time per stage."""
    parts = ["## Figures", ""]
    figs = [f for f in FIGURES if f in res.files]
    if not figs:
        parts += ["matplotlib is not installed: no figures were drawn (`pip install matplotlib`).", ""]
    for f in figs:
        parts += [f"### {FIGURES[f]}", "", f"![{FIGURES[f]}]({f})", "", _READ[f], ""]
    return parts + [
        "## Files",
        "",
        *[f"- `{f}`" for f in [*res.files, "report.md"]],
        "",
        "## Time per stage (s)",
        "",
        _md_table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in res.timings.items()]),
        "",
    ]
