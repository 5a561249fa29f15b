"""``REPORT.md``: what ``pertattack reproduce`` ran, next to what the paper reports.

Every ``pertattack reproduce ITEM|all --out DIR`` run merges a record per item (status, command, time,
model test errors, files, or why it was skipped) into ``DIR/report.json`` and rewrites ``DIR/REPORT.md``
from it and from the CSV files the experiments wrote in ``DIR``. For each figure and table of the paper
the report gives our plot and numbers beside the paper's (Table 3 row by row), and for each figure the
claim the paper draws from it, checked on our numbers: "holds", "does not hold" or "not run".
The checks read only the CSV files, so the report can be rebuilt at any time with :func:`write_report`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PAPER", "TABLE3_PAPER", "record", "write_report", "load_records", "portable"]

#: Table 3 of the paper: test error, rho1 (DeepFool), rho2 (ours), smallest eps with DeepFool > 99% (p = inf).
TABLE3_PAPER: dict[str, tuple[float, float, float, float]] = {
    "fcnn": (0.017, 0.036, 0.034, 0.076),
    "lenet5": (0.009, 0.077, 0.061, 0.164),
    "nin": (0.138, 0.012, 0.004, 0.018),
    "densenet40": (0.052, 0.006, 0.002, 0.010),
}
_TABLE3_NAMES = {"fcnn": "FCNN (MNIST)", "lenet5": "LeNet-5 (MNIST)", "nin": "NIN (CIFAR-10)",
                 "densenet40": "DenseNet-40 (CIFAR-10)"}

Check = tuple[str, Callable[[Path], tuple[bool | None, str]]]


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _curves(path: Path) -> dict[str, list[float]]:
    """fig3-style CSV (attack, eps=...) -> attack -> values."""
    rows = _read(path)
    return {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}


def _psnr_rows(path: Path) -> dict[str, list[float]]:
    """fig4-style CSV -> attack -> output PSNR per budget (mean over images): Figure 4(c), compared at equal eps
    (its x axis); the others are compared at equal measured input PSNR (:func:`_at_input_psnr`)."""
    out: dict[str, list[float]] = {}
    for r in _read(path)[1:]:
        out.setdefault(r[0], []).append(float(r[3]))
    return out


def _mean(v: list[float]) -> float:
    v = [x for x in v if math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def _area(curves: dict[str, list[float]], name: str) -> float:
    return _mean(curves[name]) if name in curves else math.nan


def _fig3_checks(tag: str) -> list[Check]:
    def iterative(d: Path) -> tuple[bool | None, str]:
        c = _curves(d / f"{tag}.csv")
        a = {k: _area(c, k) for k in ("Alg1-10", "DeepFool", "PGD (paper)", "PGD (Madry)")}
        ok = a["Alg1-10"] >= a["DeepFool"] and a["Alg1-10"] >= a["PGD (paper)"]
        txt = ", ".join(f"{k} {v:.3f}" for k, v in a.items())
        return ok, (f"mean fooling ratio over the eps grid: {txt}"
                    + ("" if a["Alg1-10"] >= a["PGD (Madry)"] else "; Madry's PGD (random start, projection) beats "
                       "Alg1-10 here, a PGD the paper's Fig. 3 does not show"))

    def at_least(a: str, b: str, slack: float = 0.0, note: str = "") -> Callable[[Path], tuple[bool | None, str]]:
        """Whether attack a's mean fooling ratio is at least b's (less ``slack``)."""

        def check(d: Path) -> tuple[bool | None, str]:
            c = _curves(d / f"{tag}.csv")
            va, vb = _area(c, a), _area(c, b)
            return va >= vb - slack, f"mean fooling ratio {a} {va:.3f} vs {b} {vb:.3f}{note}"
        return check

    def random(d: Path) -> tuple[bool | None, str]:
        c = _curves(d / f"{tag}.csv")
        r, a1 = _area(c, "random"), _area(c, "Alg1")
        return a1 > r, f"mean fooling ratio random {r:.3f} vs Alg1 {a1:.3f}"

    return [("iterative methods: Alg1-10 outperforms DeepFool and PGD", iterative),
            ("non-iterative: Alg1 outperforms FGSM", at_least("Alg1", "FGSM")),
            ("Alg2 is competitive with FGSM", at_least("Alg2", "FGSM", 0.05, " (competitive: within 0.05 or above)")),
            ("iterations pay: Alg1-10 above Alg1", at_least("Alg1-10", "Alg1")),
            ("adversarial far above random noise", random)]


def _at_input_psnr(path: Path) -> dict[str, list[float]]:
    """fig4-style CSV -> attack -> output PSNR at each input PSNR of the paper's axis (measured input PSNR,
    interpolated; NaN outside an attack's measured range): attacks compared at equal input size."""
    from .regression import at_input_psnr

    pts: dict[str, tuple[list[float], list[float]]] = {}
    for r in _read(path)[1:]:
        pts.setdefault(r[0], ([], []))
        pts[r[0]][0].append(float(r[2]))
        pts[r[0]][1].append(float(r[3]))
    return {k: at_input_psnr(a, b) for k, (a, b) in pts.items()}


def _common(c: dict[str, list[float]], names: list[str]) -> tuple[dict[str, list[float]], str]:
    """The curves ``names`` restricted to the input PSNRs where every one of them was measured, and those
    PSNRs in words; KeyError for a missing attack, ValueError where they share no input PSNR."""
    from .regression import INPUT_PSNR

    keep = [i for i in range(len(INPUT_PSNR)) if all(math.isfinite(c[n][i]) for n in names)]
    if not keep:
        raise ValueError(f"{', '.join(names)} share no measured input PSNR on the axis {INPUT_PSNR}")
    where = f"at equal measured input PSNR {', '.join(f'{INPUT_PSNR[i]:g}' for i in keep)} dB"
    return {n: [c[n][i] for i in keep] for n in names}, where


def _psnr_checks(tag: str, p: str) -> list[Check]:
    lin1, lin20, quad, rand = f"linear-{p}-1", f"linear-{p}-20", f"quadratic-{p}", f"rand-{p}"

    def successive(d: Path) -> tuple[bool | None, str]:
        c, where = _common(_at_input_psnr(d / f"{tag}.csv"), [lin1, lin20])
        a1, a20 = _mean(c[lin1]), _mean(c[lin20])
        return a20 <= a1, f"mean output PSNR {where}: {lin1} {a1:.2f} dB, {lin20} {a20:.2f} dB (lower is stronger)"

    def quadratic(d: Path) -> tuple[bool | None, str]:
        c, where = _common(_at_input_psnr(d / f"{tag}.csv"), [quad, lin1, lin20])
        q, a1, a20 = _mean(c[quad]), _mean(c[lin1]), _mean(c[lin20])
        return q <= a1 + 0.5, (f"mean output PSNR {where}: {quad} {q:.2f} dB vs {lin1} {a1:.2f} and "
                               f"{lin20} {a20:.2f} (competitive: within 0.5 dB of linear-1 or below)")

    def random(d: Path) -> tuple[bool | None, str]:
        full = _at_input_psnr(d / f"{tag}.csv")
        c, where = _common(full, [rand, *(k for k in full if not k.startswith("rand"))])
        r = _mean(c[rand])
        worst = max(_mean(v) for k, v in c.items() if k != rand)
        return worst < r, f"mean output PSNR {where}: random {r:.2f} dB, weakest attack {worst:.2f} dB"

    return [("successive linearizations improve (linear-20 below linear-1)", successive),
            ("the non-iterative quadratic attack is competitive", quadratic),
            ("every attack below random noise of the same input PSNR", random)]


def _fig4c_checks() -> list[Check]:
    def single(d: Path) -> tuple[bool | None, str]:
        c = _psnr_rows(d / "fig4c.csv")
        a, r = _mean(c["linear-pixel-1"]), _mean(c["rand-pixel-1"])
        return r - a < 1.0, (f"mean output PSNR linear-pixel-1 {a:.2f} dB vs rand-pixel-1 {r:.2f} dB "
                             "(robust: < 1 dB apart)")

    def hundred(d: Path) -> tuple[bool | None, str]:
        c = _psnr_rows(d / "fig4c.csv")
        if "linear-pixel-100" not in c:
            return None, "the 100-pixel rows were not run"
        a, r = _mean(c["linear-pixel-100"]), _mean(c["rand-pixel-100"])
        return r - a >= 1.0, f"mean output PSNR linear-pixel-100 {a:.2f} dB vs rand-pixel-100 {r:.2f} dB"

    return [("the autoencoder is robust to single-pixel attacks", single),
            ("100 pixels degrade the output far more than random 100-pixel noise", hundred)]


def _fig4d_checks() -> list[Check]:
    def iterative(d: Path) -> tuple[bool | None, str]:
        c, where = _common(_at_input_psnr(d / "fig4d.csv"), ["linear-linf-1", "linear-linf-20"])
        gap = max(a - b for a, b in zip(c["linear-linf-1"], c["linear-linf-20"], strict=True))
        return gap > 10.0, f"largest output PSNR drop from linear-linf-1 to linear-linf-20 {where}: {gap:.2f} dB"

    def random(d: Path) -> tuple[bool | None, str]:
        c, where = _common(_at_input_psnr(d / "fig4d.csv"), ["rand-linf", "linear-linf-20"])
        r, a = _mean(c["rand-linf"]), _mean(c["linear-linf-20"])
        return a < r, f"mean output PSNR {where}: rand-linf {r:.2f} dB vs linear-linf-20 {a:.2f} dB"

    return [("iterative linearizations: more than 10 dB output PSNR reduction", iterative),
            ("the colorization network is unstable (attack far below random)", random)]


#: how far (dB) the random noise's measured input PSNR may lie from the attack's for "the same size"
SAME_SIZE_DB = 0.1


def _pair_check(tag: str, adv: str, rnd: str) -> list[Check]:
    """The attack's output PSNR below the random noise's, both of the same measured input PSNR (per image, within
    :data:`SAME_SIZE_DB`; not checked where the noise is of another size)."""

    def check(d: Path) -> tuple[bool | None, str]:
        rows = _read(d / f"{tag}.csv")
        h = rows[0]

        def col(name: str) -> list[float]:
            return [float(r[h.index(name)]) for r in rows[1:]]

        a, r = _mean(col(adv)), _mean(col(rnd))
        ia, ir = col("in_psnr_adv"), col("in_psnr_random")
        gap = max(abs(u - v) for u, v in zip(ia, ir, strict=True))
        size = (f"input PSNR adversarial {_mean(ia):.2f} dB, random {_mean(ir):.2f} dB, per image at most "
                f"{gap:.2f} apart")
        if not gap <= SAME_SIZE_DB:
            return None, f"the random noise is not of the same measured size ({size})"
        return a < r, f"mean output PSNR (vs x) {adv} {a:.2f} dB, {rnd} {r:.2f} dB; {size}"

    return [("the network undoes random noise but not the adversarial perturbation of the same size", check)]


def _fig1_checks() -> list[Check]:
    def check(d: Path) -> tuple[bool | None, str]:
        rows = _read(d / "fig1.csv")
        if len(rows) < 2:
            return False, "no correctly classified image was fooled"
        h = rows[0]
        parts = []
        for r in rows[1:]:
            parts.append(f"{r[h.index('dataset')]} {r[h.index('label')]}->{r[h.index('pred_adv')]}")
        return True, "shown (true -> adversarial prediction): " + ", ".join(parts)

    return [("correctly classified images are misclassified after Algorithm 1's perturbation", check)]


def _advtrain_rows(d: Path) -> list[dict[str, str]]:
    rows = _read(d / "advtrain.csv")
    return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


_FOOL = "fool "


def _worst_fool(r: dict[str, str]) -> tuple[float, str]:
    """The largest fooling ratio over the paper's attacks in an advtrain row, and that attack (the first one of
    the CSV's columns on a tie)."""
    fools = [(float(v), k[len(_FOOL):]) for k, v in r.items() if k.startswith(_FOOL) and math.isfinite(float(v))]
    return max(fools, key=lambda t: t[0], default=(math.nan, "none"))


def _advtrain_checks(model: str) -> list[Check]:
    """The conjecture on ``model``: PGD-trained more robust than Alg1-10-trained at every training eps, by the
    robust accuracy under auto, and by the paper's measure (the highest fooling ratio of its attacks: lower)."""

    def compare(measure: str) -> Callable[[Path], tuple[bool | None, str]]:
        def check(d: Path) -> tuple[bool | None, str]:
            by = {(r["method"], float(r["eps"])): r for r in _advtrain_rows(d) if r["model"] == model}
            grid = sorted(e for m, e in by if m == "pgd" and ("alg1-10", e) in by)
            if not grid:
                return None, f"{model} was not trained with both pgd and alg1-10"
            parts, wins = [], 0
            for e in grid:
                pgd, alg = by[("pgd", e)], by[("alg1-10", e)]
                if measure == "auto":
                    a, b = float(pgd["robust_auto"]), float(alg["robust_auto"])
                    noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / int(pgd["test_images"]))  # 2 s.e. of a - b
                    wins += a > b
                    parts.append(f"eps {e:g}: {a:.3f} vs {b:.3f} ({100 * (a - b):+.1f} points"
                                 + (", within 2 standard errors" if abs(a - b) < noise else "") + ")")
                else:
                    (a, ka), (b, kb) = _worst_fool(pgd), _worst_fool(alg)
                    wins += a < b
                    parts.append(f"eps {e:g}: {a:.3f} ({ka}) vs {b:.3f} ({kb})")
            what = ("robust accuracy under auto, pgd-trained vs alg1-10-trained" if measure == "auto" else
                    "highest fooling ratio of the paper's attacks (lower is more robust), pgd-trained vs "
                    "alg1-10-trained")
            return wins == len(grid), f"{what}: " + "; ".join(parts) + f"; pgd better at {wins} of {len(grid)} eps"
        return check

    return [(f"{model}: PGD is a better training attack than Alg1-10 (robust accuracy under auto, every eps)",
             compare("auto")),
            (f"{model}: the same by the paper's measure (highest fooling ratio of its attacks, every eps)",
             compare("fool"))]


def _advtrain_table(out: Path) -> list[str]:
    """advtrain.csv as a markdown table: per model and eps, each training attack's clean error, robust accuracy,
    fooling ratios of the main attacks, the highest one, and the training time."""
    path = out / "advtrain.csv"
    if not path.exists():
        return []
    shown = ["FGSM", "Alg1", "Alg1-10", "PGD (paper)", "PGD (Madry)", "DeepFool"]
    lines = ["| model | eps | trained with | clean error | robust acc. (auto) | "
             + " | ".join(f"fool {k}" for k in shown) + " | highest fool (attack) | training CPU s |",
             "|---" * (7 + len(shown)) + "|"]
    for r in _advtrain_rows(out):
        worst, attack = _worst_fool(r)
        lines.append(f"| {r['model']} | {float(r['eps']):g} | {r['method']} | {_fmt(float(r['clean_error']))} | "
                     f"**{float(r['robust_auto']):.3f}** | "
                     + " | ".join(f"{float(r[_FOOL + k]):.3f}" for k in shown)
                     + f" | {worst:.3f} ({attack}) | {float(r['train_cpu_s']):.0f} |")
    return lines


#: What the paper shows for each item: title, the paper's result in words, the claims checked.
PAPER: dict[str, dict[str, Any]] = {
    "fig1": dict(title="Figure 1: Algorithm 1 examples (MNIST, CIFAR-10)",
                 paper="Correctly classified MNIST and CIFAR-10 images that Algorithm 1 misclassifies "
                       "(original, adversarial, predictions).", checks=_fig1_checks(),
                 png=["fig1.png", "fig1-cifar10.png"]),
    "fig2a": dict(title="Figure 2(a): MNIST autoencoder, quadratic-linf vs random noise",
                  paper="The autoencoder denoises random noise but not the quadratic-linf perturbation.",
                  checks=_pair_check("fig2a", "out_psnr_adv", "out_psnr_random"), png=["fig2a.png"]),
    "fig2b": dict(title="Figure 2(b): autoencoder, linear-pixel-100 vs random 100-pixel noise",
                  paper="On the CIFAR-10 autoencoder (50% compression) linear-pixel-100 distorts the output "
                        "far more than random-pixel-100.",
                  checks=_pair_check("fig2b", "out_psnr_adv", "out_psnr_random"), png=["fig2b.png"]),
    "fig2c": dict(title="Figure 2(c): STL-10 colorization, linear-linf-20",
                  paper="Original and adversarial grey inputs look identical; the colorization is ruined.",
                  checks=_pair_check("fig2c", "out_psnr_adv", "out_psnr_random"), png=["fig2c.png"]),
    "fig3a": dict(title="Figure 3(a): fooling ratio vs eps, FCNN (MNIST)",
                  paper="Iterative methods beat non-iterative ones; Alg1-10 outperforms DeepFool and PGD; Alg1 "
                        "outperforms FGSM; Alg2 competitive with FGSM.", checks=_fig3_checks("fig3a"),
                  png=["fig3a.png"]),
    "fig3b": dict(title="Figure 3(b): fooling ratio vs eps, LeNet-5 (MNIST)", paper="As Figure 3(a).",
                  checks=_fig3_checks("fig3b"), png=["fig3b.png"]),
    "fig3c": dict(title="Figure 3(c): fooling ratio vs eps, NIN (CIFAR-10)", paper="As Figure 3(a).",
                  checks=_fig3_checks("fig3c"), png=["fig3c.png"]),
    "fig3d": dict(title="Figure 3(d): fooling ratio vs eps, DenseNet-40 (CIFAR-10)", paper="As Figure 3(a).",
                  checks=_fig3_checks("fig3d"), png=["fig3d.png"]),
    "table3": dict(title="Table 3: robustness measures (p = inf)",
                   paper="Test error, rho1, rho2 and DeepFool's 99% eps; 'coherent results between the 3 measures'.",
                   checks=[], png=[]),
    "fig4a": dict(title="Figure 4(a): MNIST autoencoder, l2 attacks",
                  paper="Successive linearizations improve; quadratic-l2 competitive with the iterative ones.",
                  checks=_psnr_checks("fig4a", "l2"), png=["fig4a.png"]),
    "fig4b": dict(title="Figure 4(b): MNIST autoencoder, linf attacks",
                  paper="Successive linearizations improve; quadratic-linf competitive with the iterative ones.",
                  checks=_psnr_checks("fig4b", "linf"), png=["fig4b.png"]),
    "fig4c": dict(title="Figure 4(c): CIFAR-10 autoencoder, multiple-pixel attacks",
                  paper="Robust to single-pixel attacks; the 100-pixel attack degrades far more than random.",
                  checks=_fig4c_checks(), png=["fig4c.png"]),
    "fig4d": dict(title="Figure 4(d): STL-10 colorization, linf attacks",
                  paper="Iterative linearizations give more than 10 dB output PSNR reduction; the colorization "
                        "network is unstable.", checks=_fig4d_checks(), png=["fig4d.png"]),
    "advtrain": dict(title="Adversarial training: PGD vs Algorithm 1-10 (the paper's conjecture, MNIST)",
                     paper="Not an experiment of the paper: after Figure 3 it conjectures that \"PGD may still be a "
                           "better choice than Algorithm 1-T for adversarial training\". Each model is trained with "
                           "pgd (Madry's PGD-40), alg1-10, fgsm-rs (FGSM with random start, Wong et al.) and plain "
                           "training at each eps, and measured at that eps: robust accuracy under auto, the paper's "
                           "fooling ratio per attack.",
                     checks=_advtrain_checks("lenet5") + _advtrain_checks("fcnn"), table=_advtrain_table,
                     png=["advtrain-lenet5.png", "advtrain-fcnn.png"]),
}


def load_records(out: Path) -> dict[str, dict[str, Any]]:
    """The records of ``out/report.json`` (empty when absent)."""
    path = Path(out) / "report.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def record(out: Path, name: str, entry: dict[str, Any]) -> None:
    """Merge one item's record (status, command, time_s, models, files, note/reason, part_skipped) into
    ``out/report.json``, its paths made :func:`portable`. The other items' records are kept as they are."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recs = load_records(out)
    recs[name] = _portable_record(dict(entry, when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())), out)
    _save_records(out, recs)


def _save_records(out: Path, recs: dict[str, dict[str, Any]]) -> None:
    (Path(out) / "report.json").write_text(json.dumps(recs, indent=1, sort_keys=True))


def _out_of(command: str) -> str | None:
    """The --out folder named in a ``pertattack reproduce`` command, else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == "--out" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--out="):
            return w[len("--out="):]
    return None


def _places(out: Path, command: str | None) -> list[tuple[str, str]]:
    """(absolute folder, what to write instead), longest first: see :func:`portable`."""
    from ..data.idx import default_data_root
    from .common import cache_dir

    places: dict[str, str] = {}
    for folder in (_out_of(command or ""), str(out)):
        if folder and Path(folder).is_absolute():
            places[str(Path(folder))] = "."
    places.setdefault(str(Path(out).resolve()), ".")
    named = {k: v for k, v in os.environ.items() if k.startswith("PERTATTACK_") and v and Path(v).is_absolute()}
    for name, var in (("mnist", "PERTATTACK_MNIST"), ("cifar10", "PERTATTACK_CIFAR10"), ("stl10", "PERTATTACK_STL10")):
        named.setdefault(var, str(default_data_root(name, var)))  # a folder the loaders read by default
    named.setdefault("PERTATTACK_CACHE", str(cache_dir()))
    home = str(Path.home())
    for var, folder in named.items():
        if Path(folder).is_absolute() and not folder.startswith(home + os.sep):
            places.setdefault(str(Path(folder)), f"${var}")
    if home != os.sep:
        places.setdefault(home, "~")
    return sorted(places.items(), key=lambda kv: -len(kv[0]))


def portable(text: str, out: Path, command: str | None = None) -> str:
    """``text`` without absolute paths of the machine that wrote it: the report's folder (``out``, and the
    --out of ``command``) as ``.``, the folders of $PERTATTACK_* (set, or the loaders' defaults outside the home
    folder) as ``$PERTATTACK_*``, the home folder as ``~``. Other paths are left as they are."""
    for folder, instead in _places(out, command):
        text = re.sub(re.escape(folder) + r"(?![\w.-])", lambda _m, r=instead: r, text)
    return text


def _portable_record(rec: dict[str, Any], out: Path) -> dict[str, Any]:
    """A record with every string in it (models' entries too) :func:`portable`."""
    command = rec.get("command")

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return portable(v, out, command)
        return {k: walk(w) for k, w in v.items()} if isinstance(v, dict) else v

    return walk(rec)


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _table3_md(out: Path) -> tuple[list[str], bool | None]:
    lines = ["| model | test error (paper / ours, on the attacked images) | rho1 (paper / ours) | "
             "rho2 (paper / ours) | eps DeepFool > 99% (paper / ours) | DeepFool success (ours) |",
             "|---|---|---|---|---|---|"]
    ours: dict[str, list[str]] = {}
    path = out / "table3.csv"
    if path.exists():
        rows = _read(path)
        h = rows[0]
        for r in rows[1:]:
            key = r[0].split(" ")[0].lower()
            ours[key] = [r[h.index(k)] for k in ("test_error", "rho1", "rho2", "eps_99", "deepfool_success")]
    for key, ref in TABLE3_PAPER.items():
        o = ours.get(key)
        cells = [f"{_fmt(ref[i])} / {_fmt(float(o[i])) if o else 'not run'}" for i in range(4)]
        lines.append(f"| {_TABLE3_NAMES[key]} | " + " | ".join(cells) + f" | {_fmt(float(o[4])) if o else ''} |")
    if len(ours) >= 2:
        keys = [k for k in TABLE3_PAPER if k in ours]
        orders = {m: sorted(keys, key=lambda k, i=i: float(ours[k][i])) for i, m in ((1, "rho1"), (2, "rho2"),
                                                                                  (3, "eps_99"))}
        same = len({tuple(v) for v in orders.values()}) == 1
        paper_order = sorted(keys, key=lambda k: TABLE3_PAPER[k][1])
        lines += ["", f"Claim 'coherent results between the 3 measures' (same ranking of the models by rho1, rho2 "
                      f"and eps_99): **{'holds' if same else 'does not hold'}** here "
                      f"({'; '.join(f'{m}: ' + ' < '.join(v) for m, v in orders.items())}); the paper's ranking by "
                      f"rho1: {' < '.join(paper_order)}."]
        return lines, same
    return lines, None


def write_report(out: Path) -> Path:
    """Rewrite ``out/REPORT.md`` from ``out/report.json`` and the CSV files in ``out``; returns its path."""
    out = Path(out)
    recs = {name: _portable_record(rec, out) for name, rec in load_records(out).items()}
    if recs:
        _save_records(out, recs)  # records written before paths were made portable: rewritten
    lines = ["# Reproduction report: Balda, Behboodi, Mathar (2018)", "",
             "Written by `pertattack reproduce`; each section shows what the paper reports next to what this run "
             "measured. Claims are checked on our CSV numbers with the rule given in each line; "
             "'does not hold' means what it says. Times are wall-clock on the machine that ran it "
             "(model training included where the model was not cached).", ""]
    ran = [n for n in PAPER if recs.get(n, {}).get("status") == "ran"]
    partly = [f"{n} ({recs[n]['part_skipped']})" for n in ran if recs[n].get("part_skipped")]
    skipped = [n for n in PAPER if recs.get(n, {}).get("status") == "skipped"]
    never = [n for n in PAPER if n not in recs]
    summary = ["| item | status | claims holding | time (s) |", "|---|---|---|---|"]
    body: list[str] = []
    for name, spec in PAPER.items():
        rec = recs.get(name)
        if rec is None:  # in the summary only: a folder of one item is not a report of empty sections
            summary.append(f"| {name} | not run | | |")
            continue
        status = rec["status"]
        body += [f"## {spec['title']}", "", f"*Paper:* {spec['paper']}", ""]
        if status == "skipped":
            body += [f"**Skipped:** {rec.get('reason', '')}", ""]
            summary.append(f"| {name} | skipped | | |")
            continue
        ran_as = _ran_as(rec)
        if ran_as != "ran":
            body += [f"**Status:** {ran_as}; the rest ran, as follows.", ""]
        cpu = f", {rec['cpu_s']:.1f} s CPU of the process" if "cpu_s" in rec else ""
        body += [f"*Command:* `{rec.get('command', '')}`  ", f"*Time:* {rec.get('time_s', math.nan):.1f} s{cpu}"
                 f" ({rec.get('when', '')})" + (f"  \n*Machine:* {rec['machine']}" if rec.get("machine") else ""), ""]
        for m, info in rec.get("models", {}).items():
            body.append(f"- model {m}: " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                                                    for k, v in info.items()))
        if rec.get("note"):
            body.append(f"- note: {rec['note']}")
        body.append("")
        n_ok = n_all = 0
        if name == "table3":
            t3, same = _table3_md(out)
            body += t3 + [""]
            n_all += same is not None
            n_ok += same is True
        if "table" in spec:
            body += spec["table"](out) + [""]
        for text, fn in spec["checks"]:
            try:
                ok, detail = fn(out)
            except (OSError, KeyError, ValueError, IndexError) as err:
                ok, detail = None, f"could not check ({type(err).__name__}: {err})"
            verdict = {True: "holds", False: "does not hold", None: "not checked"}[ok]
            n_all += ok is not None
            n_ok += ok is True
            body.append(f"- claim: {text}: **{verdict}** ({detail})")
        for csv_name in sorted(p.name for p in out.glob(f"{name}*.csv")):
            body.append(f"- numbers: [{csv_name}]({csv_name})")
        for png in spec["png"]:
            if (out / png).exists():
                body += ["", f"![{name}]({png})"]
        body.append("")
        summary.append(f"| {name} | {ran_as} | {n_ok}/{n_all} | {rec.get('time_s', math.nan):.0f} |")
    lines += ["## Summary", "", *summary, "",
              f"Ran: {', '.join(ran) or 'none'}" + (f"; of these, part skipped: {'; '.join(partly)}" if partly else "")
              + f". Skipped: {', '.join(skipped) or 'none'}."
              + (f" Not run into this folder (no section below): {', '.join(never)}." if never else ""),
              "", *_dither_md(out), ""]
    extra = [n for n in recs if n not in PAPER]
    for n in extra:
        lines += [f"- {n}: {recs[n].get('status')} {recs[n].get('note', '')}"]
    lines += body
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ran_as(rec: dict[str, Any]) -> str:
    """An item's status for the summary: ``ran``, or ``ran (part skipped: ...)`` when the item left a part out."""
    return f"ran (part skipped: {rec['part_skipped']})" if rec.get("part_skipped") else "ran"


def _dither_md(out: Path) -> list[str]:
    """Which attacks of the report start a linearisation at a dithered point (Algorithm 1's eta_t +
    random(eps~_t)) and with which eps~_t, read from the presets; the measured effect from ``out/dither.csv``
    (benchmarks/bench_dither.py) when it is there."""
    from ..presets import get_attack
    from .classification import FIG3_ATTACKS
    from .regression import FIG4A_ATTACKS, FIG4B_ATTACKS, FIG4C_ATTACKS, FIG4D_ATTACKS

    names = [preset for preset, _ in FIG3_ATTACKS.values()] + ["quadratic-linf", "linear-pixel-100",
                                                                "rand-pixel-100", "linear-linf-20"]
    names += FIG4A_ATTACKS + FIG4B_ATTACKS + FIG4C_ATTACKS + FIG4D_ATTACKS
    words = {"none": "not dithered", "first": "first point dithered: eps~_1 = eps (uniform in the eps-ball), "
                                              "eps~_t = 0 after", "all": "every point dithered: eps~_t = eps / T"}
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        radii = get_attack(name).schedule.dither.radii
        groups.setdefault(words.get(radii, str(radii)) if isinstance(radii, str) else str(radii), []).append(name)
    lines = ["## Dithering of the linearisation point", "",
             "Algorithm 1 may linearise at eta_t + random(eps~_t); the paper's Table 2 marks its own attacks as "
             "dithered without giving eps~_t. The choice made here (preset defaults; `dither=` changes it):", "",
             "| attacks in this report | dithering |", "|---|---|"]
    lines += [f"| {', '.join(v)} | {k} |" for k, v in groups.items()]
    lines += ["", "The regression attacks need it: with y = f(x) the gradient at eta = 0 is exactly zero. alg1, "
              "alg1-T and targeted are not dithered by default, where Table 2 dithers them (`dither=\"first\"` "
              "gives the paper's reading)."]
    path = out / "dither.csv"
    if path.exists():
        rows = _read(path)
        h = rows[0]
        last = [c for c in h if c.startswith("eps=")][-1]
        lines += ["", f"Measured ([dither.csv](dither.csv), `benchmarks/bench_dither.py`): fooling ratio, mean over "
                      f"the eps grid and at {last}:", "", f"| attack | dither | mean | at {last} |",
                      "|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]} | {float(r[h.index('mean')]):.3f} | {float(r[h.index(last)]):.3f} |"
                  for r in rows[1:]]
    return lines

