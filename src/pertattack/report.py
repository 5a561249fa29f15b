"""``report.md`` of a ``pertattack evaluate`` folder: tables, and PNG figures where matplotlib is installed.

``pertattack evaluate`` writes it at the end of a run; ``pertattack report OUT`` draws it again from what the
folder holds (the finished batches of a run that was stopped included), without running any attack. It has

* robust accuracy against eps, per attack and the worst case over the attacks (``figures/robust_accuracy.png``);
  a minimum-norm attack (DeepFool, FMN, DDN) adds its whole curve up to the largest eps, from the norms of its rows;
* where a minimum-norm attack ran, the distribution of the distances it found (``figures/min_norm_distances.png``);
* robust accuracy per class (the worst case over the attacks; every class also in ``per_class.csv``);
* the adversarial examples whose margin (eq. 2) dropped most, at the largest eps (``figures/examples.png``: the
  original, the perturbation scaled to be seen, the adversarial input, with labels), from the few inputs each batch
  keeps for it (``ex_*`` in ``parts/``);
* the reliability flags (:mod:`pertattack.checks`), the command, the versions and the times.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import (
    WORST,
    EvalConfig,
    EvaluationError,
    _atomic_write,
    _build_attacks,
    _flags,
    _now,
    _part_name,
    _read_part,
    summarize,
    summary_table,
)

__all__ = ["EvalRun", "load_run", "write_report", "example_figure", "FIGURES"]

#: the figures of report.md, under ``OUT/figures/``
FIGURES = dict(curve="robust_accuracy.png", norms="min_norm_distances.png", examples="examples.png")
_COLUMNS = 6  # examples per attack in the grid
_CLASSES = 20  # more classes than this: report.md lists the least robust ones, per_class.csv all of them


@dataclass
class EvalRun:
    """The rows of an ``--out`` folder: every batch of a finished run, or those finished so far.

    Attributes:
        parts: the finished batches' parts, in batch order; ``index``, ``label``, ``clean`` (N,), ``pred``,
            ``success``, ``norm`` (A, E, N) their rows, concatenated.
        skipped: why a part that is there was left out (unreadable, or not its batch's rows).
    """

    out: Path
    manifest: dict[str, Any]
    names: list[str]
    eps: list[float]
    attacks: list[Any]
    parts: list[dict[str, np.ndarray]]
    n_batches: int
    skipped: list[str] = field(default_factory=list)
    index: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)
    clean: np.ndarray = field(init=False)
    pred: np.ndarray = field(init=False)
    success: np.ndarray = field(init=False)
    norm: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for k in ("index", "label", "clean", "pred", "success", "norm"):
            setattr(self, k, np.concatenate([d[k] for d in self.parts], axis=-1))

    @property
    def partial(self) -> bool:
        return len(self.parts) < self.n_batches

    @property
    def ps(self) -> list[float]:
        return [float(a.ball.p) for a in self.attacks]

    @property
    def minimum_norm(self) -> list[bool]:
        return [bool(getattr(a, "minimum_norm", False)) for a in self.attacks]


def _from_json(v: Any) -> Any:
    """The manifest's strict JSON read back: "inf", "-inf", "nan" as floats."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    if isinstance(v, dict):
        return {k: _from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def load_run(out: str | Path) -> EvalRun:
    """The finished batches of the evaluation in ``out`` (read only: nothing is computed or changed).

    Raises:
        EvaluationError: ``out`` is not an evaluate folder, or no batch has finished yet.
    """
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        args = _from_json(manifest["arguments"])
        n_inputs, n_batches = int(manifest["n_inputs"]), int(manifest["n_batches"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationError(f"{out} is not a pertattack evaluate folder (its manifest.json: {err})") from err
    names = set(f.name for f in fields(EvalConfig))
    args = {k: v for k, v in args.items() if k in names}
    args.update(attacks=tuple(args["attacks"]), eps=tuple(args["eps"]),
                preprocess=None if args.get("preprocess") is None else tuple(args["preprocess"]))
    cfg = EvalConfig(**args)
    attacks = _build_attacks(cfg)
    parts, skipped = [], []
    for b in range(n_batches):
        path = out / "parts" / _part_name(b)
        if not path.exists():
            continue
        idx = range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, n_inputs))
        part, why = _read_part(path, idx, (len(cfg.attacks), len(cfg.eps)))
        if part is None:
            skipped.append(f"{path.name}: {why}")
        else:
            parts.append(part)
    if not parts:
        raise EvaluationError(f"{out}: no batch has finished yet (none in {out / 'parts'}); nothing to report")
    return EvalRun(out, manifest, list(cfg.attacks), [float(e) for e in cfg.eps], attacks, parts, n_batches, skipped)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure outside pyplot: no backend is chosen or changed, nothing stays registered."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _pnorm(p: float) -> str:
    return "l-inf" if math.isinf(p) else f"l{p:g}"


# --------------------------------------------------------------------------- numbers


def _min_norm_distances(run: EvalRun, a: int) -> np.ndarray:
    """Per correctly classified input, the smallest norm at which attack ``a`` fooled it (its row at the smallest
    eps where it did; inf where it did not fool it at any eps)."""
    fooled = np.where(run.success[a], run.norm[a], np.inf).min(axis=0)
    return fooled[run.clean == run.label]


def _curve(run: EvalRun, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust accuracy of minimum-norm attack ``a`` on [0, max eps]: an input counts as robust at e while the
    smallest perturbation that fooled it is longer than e."""
    d = np.sort(_min_norm_distances(run, a))
    top = max(run.eps)
    e = np.unique(np.concatenate([np.linspace(0, top, 200), d[d <= top]]))
    return e, (d.size - np.searchsorted(d, e, side="right")) / run.label.size


def _per_class(run: EvalRun) -> tuple[list[str], list[list[Any]]]:
    """Per class: inputs, clean accuracy, worst-case robust accuracy at each eps (in the order of --eps)."""
    ok = run.clean == run.label
    held = ((run.pred == run.label[None, None, :]) & ok[None, None, :]).all(axis=0)  # (E, N)
    head = ["class", "inputs", "clean_accuracy"] + [f"robust_accuracy@{e:g}" for e in run.eps]
    rows = []
    for c in np.unique(run.label):
        m = run.label == c
        rows.append([int(c), int(m.sum()), float(ok[m].mean())] + [float(h[m].mean()) for h in held])
    return head, rows


@dataclass
class _Example:
    index: int
    attack: str
    fooled: bool  # at the largest eps
    drop: float
    prob: np.ndarray  # p(label) at x, p(label) at x_adv, p(pred) at x_adv
    x: np.ndarray
    eta: np.ndarray


def _examples(run: EvalRun) -> tuple[list[list[_Example]], int]:
    """Per attack, the kept examples it fooled at the largest eps, then the others, each by margin drop (at most
    :data:`_COLUMNS`), and the number of finished batches that kept none (parts of an older pertattack)."""
    per: list[list[_Example]] = [[] for _ in run.names]
    j = run.eps.index(max(run.eps))
    where = {int(i): k for k, i in enumerate(run.index)}
    without = 0
    for part in run.parts:
        if "ex_index" not in part:
            without += 1
            continue
        for a, name in enumerate(run.names):
            for k, i in enumerate(part["ex_index"][a]):
                if i >= 0:
                    per[a].append(_Example(int(i), name, bool(run.success[a, j, where[int(i)]]),
                                           float(part["ex_drop"][a, k]), part["ex_prob"][a, k],
                                           part["ex_x"][a, k].astype(np.float32),
                                           part["ex_eta"][a, k].astype(np.float32)))
    return [sorted(ex, key=lambda e: (not e.fooled, -e.drop, e.index))[:_COLUMNS] for ex in per], without


# --------------------------------------------------------------------------- figures


def _image(v: np.ndarray) -> np.ndarray:
    """One input as an image: (H, W) or (H, W, 3). (C, H, W) with 1 or 3 channels, (H, W), or a vector (shown as a
    square where its length is one, else as one row)."""
    if v.ndim == 3 and v.shape[0] in (1, 3):
        return v[0] if v.shape[0] == 1 else v.transpose(1, 2, 0)
    if v.ndim == 3 and v.shape[-1] == 3:
        return v
    if v.ndim == 2:
        return v
    if v.ndim == 3:
        return v[0]
    flat = v.reshape(-1)
    side = math.isqrt(flat.size)
    return flat.reshape(side, side) if side * side == flat.size else flat[None, :]


def example_figure(blocks: Sequence[tuple[str, np.ndarray, np.ndarray, list[str], list[str], list[bool]]],
                   value_range: tuple[float, float]) -> Any:
    """The grid of examples: per block three rows (original, perturbation scaled to its largest entry, adversarial)
    and one column per input.

    Args:
        blocks: ``(name, x, eta, titles, captions, changed)``: x and eta (n, ...) as arrays, a title above each
            original, a caption under each adversarial input, and whether its class changed (drawn in red).
        value_range: (lo, hi) of the inputs: shown as black to white.

    Returns:
        A ``matplotlib.figure.Figure`` with three axes per input.
    """
    lo, hi = value_range
    width = max(len(b[1]) for b in blocks)
    fig = _figure(1.55 * width + 1.2, 4.9 * len(blocks) + 0.1)
    grid = fig.add_gridspec(3 * len(blocks), width)
    for bi, (name, x, eta, titles, captions, changed) in enumerate(blocks):
        for j in range(len(x)):
            img = np.clip((_image(x[j]) - lo) / (hi - lo or 1.0), 0, 1)
            adv = np.clip((_image(x[j] + eta[j]) - lo) / (hi - lo or 1.0), 0, 1)
            e = _image(eta[j])
            scale = float(np.abs(e).max()) or 1.0
            axes = [fig.add_subplot(grid[3 * bi + r, j]) for r in range(3)]
            gray = dict(cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[0].imshow(img, **gray)
            if e.ndim == 3:  # colour: 0.5 grey is zero, each channel scaled by the largest entry
                axes[1].imshow(np.clip(0.5 + 0.5 * e / scale, 0, 1), interpolation="nearest")
            else:
                axes[1].imshow(e, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            axes[2].imshow(adv, **gray)
            axes[0].set_title(titles[j], fontsize=8)
            axes[1].set_xlabel(f"max |eta| {scale:.2g}", fontsize=7, labelpad=1)
            axes[2].set_xlabel(captions[j], fontsize=8, color="tab:red" if changed[j] else "black",
                               fontweight="bold" if changed[j] else "normal", labelpad=1)
            for ax in axes:
                ax.set_xticks([])
                ax.set_yticks([])
            if j == 0:
                for ax, text in zip(axes, (f"{name}\noriginal", "perturbation\n(scaled)", "adversarial"),
                                    strict=True):
                    ax.set_ylabel(text, fontsize=8)
    return fig


def _curve_figure(run: EvalRun, path: Path) -> None:
    from .experiments.demo_plots import line_styles

    rows = summarize(run.label, run.clean, run.pred, run.names, run.eps, run.ps)
    order = np.argsort(run.eps)
    eps = np.asarray(run.eps)[order]
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot()
    groups = run.names + ([WORST] if len(run.names) > 1 else [])
    styles = line_styles(len(groups))
    for g, (name, st) in enumerate(zip(groups, styles, strict=True)):
        acc = np.asarray([r["robust_accuracy"] for r in rows if r["attack"] == name])[order]
        if name == WORST:
            ax.plot(eps, acc, color="black", lw=2.6, marker="o", ms=7, label="worst case over the attacks", zorder=5)
            continue
        label = f"{name} ({_pnorm(run.ps[g])})"
        if run.minimum_norm[g]:
            e, curve = _curve(run, g)
            ax.step(e, curve, where="post", color=st["color"], lw=1.6, linestyle=st["linestyle"],
                    label=f"{label}, whole curve")
            ax.plot(eps, acc, linestyle="none", marker=st["marker"], color=st["color"], mfc="white", mew=1.4, ms=7)
        else:
            ax.plot(eps, acc, label=label, ms=7, lw=1.6, mfc="white", mew=1.4, **st)
    clean = float((run.clean == run.label).mean())
    ax.axhline(clean, color="grey", linestyle=":", lw=1.2, label=f"clean accuracy {clean:.3f}")
    mixed = len(set(run.ps)) > 1
    ax.set_xlabel("eps (in each attack's norm)" if mixed else f"eps ({_pnorm(run.ps[0])})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Robust accuracy on {run.label.size} inputs" + (" (partial run)" if run.partial else ""),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, handlelength=3.2)
    fig.savefig(path, dpi=110)


def _norms_figure(run: EvalRun, which: list[int], path: Path) -> None:
    fig = _figure(5.2 * len(which), 3.8)
    axes = fig.subplots(1, len(which), squeeze=False)[0]
    top = max(run.eps)
    for ax, a in zip(axes, which, strict=True):
        d = _min_norm_distances(run, a)
        fooled = d[np.isfinite(d)]
        ax.hist(fooled, bins=int(np.clip(np.sqrt(fooled.size), 5, 40)), range=(0, top), color="tab:blue",
                edgecolor="white")
        for e in run.eps:
            ax.axvline(e, color="grey", linestyle="--", lw=0.9)
        if fooled.size:
            ax.axvline(float(np.median(fooled)), color="tab:red", lw=1.4, label=f"median {np.median(fooled):.3g}")
            ax.legend(fontsize=8, frameon=False)
        ax.set_xlabel(f"{_pnorm(run.ps[a])} norm of the smallest perturbation found")
        ax.set_ylabel("inputs")
        ax.set_title(f"{run.names[a]}: {fooled.size} of {d.size} correctly classified inputs\nfooled within eps "
                     f"{top:g} (dashed: the eps grid)", fontsize=9)
    fig.savefig(path, dpi=110)


def _value_range(run: EvalRun, examples: list[list[_Example]]) -> tuple[float, float]:
    for a in run.attacks:
        lo, hi = getattr(a.box, "lo", None), getattr(a.box, "hi", None)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > lo:
            return float(lo), float(hi)
    xs = [e.x for ex in examples for e in ex]
    return float(min(x.min() for x in xs)), float(max(x.max() for x in xs))


def _examples_figure(run: EvalRun, examples: list[list[_Example]], path: Path) -> None:
    top = max(run.eps)
    j = run.eps.index(top)
    where = {int(i): k for k, i in enumerate(run.index)}
    blocks = []
    for a, ex in enumerate(examples):
        if not ex:
            continue
        pred = [int(run.pred[a, j, where[e.index]]) for e in ex]
        label = [int(run.label[where[e.index]]) for e in ex]
        blocks.append((f"{run.names[a]} @ {top:g}", np.stack([e.x for e in ex]), np.stack([e.eta for e in ex]),
                       [f"#{e.index}: {y} (p {e.prob[0]:.2f})" for e, y in zip(ex, label, strict=True)],
                       [f"{k} (p {e.prob[2]:.2f})" for e, k in zip(ex, pred, strict=True)],
                       [k != y for k, y in zip(pred, label, strict=True)]))
    fig = example_figure(blocks, _value_range(run, examples))
    fig.suptitle("Largest drops of the margin (eq. 2) at the largest eps: class (probability) of the original "
                 "and of the adversarial input (red: changed)", fontsize=9)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- report.md


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


class _Figures:
    """Draws the report's figures into ``out/figures`` (with matplotlib, unless disabled) and gives the lines that
    show them in report.md; remembers which it drew."""

    def __init__(self, out: Path, draw: bool) -> None:
        self.out, self.draw, self.dir, self.drawn = out, draw, out / "figures", set()
        if draw:
            self.dir.mkdir(exist_ok=True)

    def __call__(self, key: str, make: Any, *args: Any) -> list[str]:
        if not self.draw:
            return ["*(figure: needs matplotlib, which is not installed: `pip install matplotlib`, then "
                    f"`pertattack report {self.out}`)*", ""]
        make(*args, self.dir / FIGURES[key])
        self.drawn.add(key)
        return [f"![{key}](figures/{FIGURES[key]})", ""]

    def remove_stale(self) -> None:
        """Delete a figure of an earlier report that this one does not have."""
        for key, name in FIGURES.items():
            if key not in self.drawn and (self.dir / name).exists():
                (self.dir / name).unlink()


def write_report(run: EvalRun, flags: list[tuple[str, str, str]] | None = None, *, figures: bool = True) -> Path:
    """Write ``report.md``, ``per_class.csv`` and (with matplotlib, unless ``figures`` is False) the PNGs of
    :data:`FIGURES` into ``run.out``; returns the path of report.md.

    Args:
        flags: the run's reliability flags; None: computed from the parts, as evaluate does.
    """
    if flags is None:
        flags = _flags(run.parts, run.names, run.attacks, run.eps, run.label, run.clean, run.pred)
    figure = _Figures(run.out, figures and _has_matplotlib())
    lines = (_report_head(run) + _report_curve(run, figure) + _report_norms(run, figure) + _report_classes(run)
             + _report_examples(run, figure) + _report_flags(flags) + _report_run(run))
    figure.remove_stale()
    path = run.out / "report.md"
    _atomic_write(path, "\n".join(lines).encode())
    return path


def _report_head(run: EvalRun) -> list[str]:
    m, n, ok = run.manifest, run.label.size, run.clean == run.label
    fp = m.get("fingerprint", {})
    lines = [f"# Robustness report: `{fp.get('model', '?')}` on `{fp.get('data', '?')}` ({fp.get('split', '?')})", ""]
    if run.partial:
        n_all = int(m.get("n_inputs", n))
        lines += [f"> **Partial run**: {len(run.parts)} of {run.n_batches} batches finished ({n} of {n_all} inputs); "
                  "everything below is from those inputs only. Run the evaluate command (below) again to finish "
                  "it.", ""]
    lines += [f"> Left out: {s}." for s in run.skipped] + ([""] if run.skipped else [])
    return lines + [f"{n} inputs, clean accuracy {ok.mean():.4f} ({int(ok.sum())} of {n}). Robust accuracy: the share "
                    "of all inputs still classified correctly at x_adv; fooling ratio: the share of the correctly "
                    "classified inputs that the attack misclassifies.", ""]


def _report_curve(run: EvalRun, figure: _Figures) -> list[str]:
    lines = ["## Robust accuracy against eps", ""] + figure("curve", _curve_figure, run)
    if any(run.minimum_norm):
        lines += ["Minimum-norm attacks: the line is the whole curve, from the norm of each input's smallest "
                  "perturbation in results.csv (known up to the largest eps); the markers are the eps grid.", ""]
    summary = summarize(run.label, run.clean, run.pred, run.names, run.eps, run.ps)
    return lines + summary_table(summary, run.names, run.ps) + [""]


def _report_norms(run: EvalRun, figure: _Figures) -> list[str]:
    which = [a for a, mn in enumerate(run.minimum_norm) if mn]
    if not which:
        return []
    lines = ["## Minimum-norm distances", ""] + figure("norms", _norms_figure, run, which)
    stats = []
    for a in which:
        d = _min_norm_distances(run, a)
        f = d[np.isfinite(d)]
        q = [f"{v:.4g}" for v in np.quantile(f, [0.25, 0.5, 0.75])] if f.size else ["-"] * 3
        top = f"{f.max():.4g}" if f.size else "-"
        stats.append([run.names[a], _pnorm(run.ps[a]), f"{f.size} of {d.size}", *q, top])
    lines += [f"The smallest perturbation each minimum-norm attack found for the correctly classified inputs it "
              f"fooled within eps {max(run.eps):g} (the norm of its row at the smallest eps where it fooled the "
              "input).", ""]
    return lines + _table(["attack", "p", "fooled", "25%", "median", "75%", "max"], stats) + [""]


def _report_classes(run: EvalRun) -> list[str]:
    """The per-class section; writes per_class.csv."""
    head, rows = _per_class(run)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows])
    _atomic_write(run.out / "per_class.csv", buf.getvalue().encode())
    who = "the worst case over the attacks" if len(run.names) > 1 else run.names[0]
    lines = ["## Robust accuracy per class", "", f"Robust accuracy of {who} at each eps, per true class."]
    shown = rows
    if len(rows) > _CLASSES:
        last = len(head) - 1 - (len(run.eps) - 1 - run.eps.index(max(run.eps)))
        shown = sorted(rows, key=lambda r: (r[last], r[0]))[:10]
        lines[-1] += f" The 10 least robust of {len(rows)} classes at eps {max(run.eps):g}; all in per_class.csv."
    return lines + [""] + _table(["class", "inputs", "clean accuracy"] + [f"eps {e:g}" for e in run.eps],
                                 [[str(r[0]), str(r[1])] + [f"{v:.4f}" for v in r[2:]] for r in shown]) + [""]


def _report_examples(run: EvalRun, figure: _Figures) -> list[str]:
    examples, without = _examples(run)
    lines = ["## Adversarial examples with the largest confidence change", ""]
    if not any(examples):
        return lines + ["No example kept: the finished batches were computed by an older pertattack, which kept "
                        "none.", ""]
    lines += figure("examples", _examples_figure, run, examples)
    j = run.eps.index(max(run.eps))
    where = {int(i): k for k, i in enumerate(run.index)}
    rows = [[e.attack, f"{run.eps[j]:g}", str(e.index), str(int(run.label[where[e.index]])),
             str(int(run.pred[run.names.index(e.attack), j, where[e.index]])), f"{e.drop:.4g}",
             f"{e.prob[0]:.3f} -> {e.prob[1]:.3f}"] for ex in examples for e in ex]
    lines += ["Per attack, at the largest eps, the correctly classified inputs whose margin f_y - max_{l != y} "
              "f_l (eq. 2, on the model's scores) the attack lowered most, those it fooled first; in the figure "
              "the perturbation is scaled to its largest entry.", ""]
    lines += _table(["attack", "eps", "input", "class", "class at x_adv", "margin drop", "p(class): x -> x_adv"],
                    rows) + [""]
    if without:
        lines += [f"({without} finished batches were computed by an older pertattack and kept no example.)", ""]
    return lines


def _report_flags(flags: list[tuple[str, str, str]]) -> list[str]:
    if not flags:
        return ["## Reliability flags", "",
                "None fired (pertattack.checks: the attacks' own checks, and the robust accuracies across eps).", ""]
    return (["## Reliability flags", "", "Signs that these robust accuracies may be too high (pertattack.checks):", ""]
            + [f"- `{a}`: **{f}**: {msg}" for a, f, msg in flags] + [""])


def _report_run(run: EvalRun) -> list[str]:
    m = run.manifest
    fp, v, cmd = m.get("fingerprint", {}), m.get("versions", {}), m.get("command")
    if cmd and (Path(cmd[0]).name == "pertattack" or Path(cmd[0]).parts[-2:] == ("pertattack", "__main__.py")):
        cmd = ["pertattack", *cmd[1:]]
    lines = ["## Run", "",
             f"- Command: `{shlex.join(cmd) if cmd else '(not recorded: called from Python)'}`",
             "- Versions: " + ", ".join(f"{k} {v[k]}" for k in ("pertattack", "torch", "numpy", "python")
                                        if k in v) + (f"; {v['platform']}" if "platform" in v else ""),
             f"- Seed {m.get('seed')}, batches of {fp.get('batch_size')}, {m.get('world_size')} process(es); "
             f"started {m.get('started')}, finished {m.get('finished') or '(not yet)'}"]
    for r in m.get("runs", []):
        lines.append(f"  - run {r.get('run_id')}: started {r.get('started')}, finished {r.get('finished') or '-'}, "
                     f"{r.get('world_size')} process(es), {r.get('batches_reused')} batches reused, "
                     f"{r.get('batches_computed', '-')} computed")
    return lines + [f"- This report: {_now()}; arguments in manifest.json, rows in results.csv, per class in "
                    "per_class.csv.", ""]
