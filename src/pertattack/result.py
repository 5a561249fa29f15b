"""What an attack returns: :class:`AttackResult`, one per budget.

``print(result)`` gives a short summary (attack, eps, p, n, success rate, median and max norm);
``result.rows()`` the per-input table as a list of dicts, ``result.to_dataframe()`` the same as a
pandas DataFrame; ``result.save(path)`` and :func:`save_results` write plain NumPy ``.npz`` files.
In a notebook a result shows as an HTML table (``_repr_html_``) and ``result.plot()`` draws examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["AttackResult", "concat_results", "save_results"]

#: per-input fields of :meth:`AttackResult.rows`, in column order (those that are None are left out)
_ROW_FIELDS = ("label", "pred", "success", "norms", "eps", "steps", "margin")


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.4g}"


@dataclass(repr=False)
class AttackResult:
    """What one attack run at one budget produced.

    Attributes:
        x_adv: the adversarial inputs, same shape, dtype and device as x, inside the box.
        eta: x_adv - x.
        norms: norm_p(x_adv - x) per input, in the attack's p, shape (N,), float64 (computed in float64 from
            the returned tensors, as eps is held): ``(norms <= eps).all()`` holds.
        success: (N,) bool from a fresh evaluation of the model on x_adv (None for regression).
        eps: the budget per input (N,), or None for an unbounded minimum-norm run.
        label: (N,) the class k each input was attacked from (true label or prediction).
        pred: (N,) the model's class on x_adv (None for regression).
        steps: (N,) linearisations each input used.
        margin: (N,) the margin of eq. 2 at x_adv, on the model's outputs: f_k - max_{l != k} f_l
            (targeted: max_{l != t} f_l - f_t); negative where the attack succeeded (None for regression).
        p: the attack's norm.
        info: per-input figures of the solver, e.g. ``sigma`` (N,), the top singular value of the
            Jacobian found by quadratic-l2 (the operator norm norm(J)_{2->2}).
        attack: the name of the attack that produced it (None when unknown).
        members: for a cascade, the names of its members: ``info["attack"]`` indexes them (-1: none fooled the
            input); :meth:`fooled_by` gives the name per input.
        flags: the reliability flags raised while attacking (:mod:`pertattack.checks`): signs that the robust
            accuracy may be too high; empty when none fired.

    ``str(result)`` and ``repr(result)`` summarise it without printing the tensors.
    """

    x_adv: Tensor
    eta: Tensor
    norms: Tensor
    success: Tensor | None
    eps: Tensor | None
    label: Tensor | None
    pred: Tensor | None
    steps: Tensor
    p: float
    margin: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)
    attack: str | None = None
    members: tuple[str, ...] = ()
    flags: tuple[Any, ...] = ()

    def fooled_by(self) -> list[str | None]:
        """Per input, the name of the cascade member that fooled it (None where none did, or not a cascade)."""
        who = self.info.get("attack")
        if who is None or not self.members:
            return [None] * self.n
        return [self.members[i] if i >= 0 else None for i in who.tolist()]

    @property
    def n(self) -> int:
        """Number of inputs."""
        return int(self.x_adv.shape[0])

    def _eps_text(self) -> str:
        if self.eps is None:
            return "none (minimum norm)"
        e = self.eps.detach().flatten().double()
        if e.numel() == 0:
            return "-"
        lo, hi = float(e.min()), float(e.max())
        return _fmt(lo) if lo == hi else f"{_fmt(lo)} to {_fmt(hi)} (per input)"

    def _norm_text(self) -> str:
        if self.norms.numel() == 0:
            return "-"
        norms = self.norms.detach().double()
        return f"median {_fmt(float(norms.median()))}, max {_fmt(float(norms.max()))}"

    def __str__(self) -> str:
        """A few lines: attack, p, eps, n, success rate (classification), norms of eta, steps."""
        name = f"{self.attack!r}, " if self.attack else ""
        lines = [f"AttackResult({name}p={_fmt(self.p)}, eps={self._eps_text()}, n={self.n})"]
        if self.success is not None:
            k = int(self.success.sum())
            rate = k / self.n if self.n else math.nan
            lines.append(f"  success:  {k} / {self.n} ({rate:.1%})")
        else:
            lines.append("  regression attack (no success flag): see psnr() of the outputs")
        lines.append(f"  norm_{_fmt(self.p)}(eta): {self._norm_text()}")
        if self.steps.numel():
            lines.append(f"  steps: median {int(self.steps.median())}, max {int(self.steps.max())}")
        if self.info:
            lines.append("  info: " + ", ".join(sorted(self.info)))
        lines += [f"  flag: {f}" for f in self.flags]
        return "\n".join(lines)

    def __repr__(self) -> str:
        """One line: attack, p, eps, n, success rate, median norm (never the tensors)."""
        parts = [f"{self.attack!r}"] if self.attack else []
        parts += [f"p={_fmt(self.p)}", f"eps={self._eps_text()}", f"n={self.n}"]
        if self.success is not None and self.n:
            parts.append(f"success={float(self.success.float().mean()):.1%}")
        if self.norms.numel():
            parts.append(f"median_norm={_fmt(float(self.norms.detach().double().median()))}")
        return "AttackResult(" + ", ".join(parts) + ")"

    def rows(self) -> list[dict[str, Any]]:
        """The per-input table: one dict per input with ``index`` and, where the result has them,
        ``label``, ``pred``, ``success``, ``norm``, ``eps``, ``steps``, ``margin`` and every
        per-input entry of ``info``, as Python scalars."""
        cols: dict[str, list[Any]] = {"index": list(range(self.n))}
        for name in _ROW_FIELDS:
            v = getattr(self, name)
            if v is not None:
                cols["norm" if name == "norms" else name] = v.detach().cpu().reshape(-1).tolist()
        for k, v in self.info.items():
            if isinstance(v, Tensor) and v.dim() == 1 and v.shape[0] == self.n:
                cols[k] = v.detach().cpu().tolist()
        if self.attack is not None:
            cols["attack"] = [self.attack] * self.n
        if self.members:
            cols["fooled_by"] = self.fooled_by()
        names = list(cols)
        return [dict(zip(names, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]

    def _repr_html_(self, max_rows: int = 10) -> str:
        """The notebook view: the lines of ``str(result)`` and the first ``max_rows`` rows of :meth:`rows` as an
        HTML table."""
        import html

        lines = str(self).splitlines()
        rows = self.rows()
        head = list(rows[0]) if rows else ["index"]

        def cell(v: Any) -> str:
            return html.escape(_fmt(v) if isinstance(v, float) else str(v))

        parts = [f"<div><strong>{html.escape(lines[0])}</strong><br>"
                 + "<br>".join(html.escape(t.strip()) for t in lines[1:]) + "</div>",
                 "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
        parts += ["<tr>" + "".join(f"<td>{cell(r[h])}</td>" for h in head) + "</tr>" for r in rows[:max_rows]]
        parts.append("</tbody></table>")
        if len(rows) > max_rows:
            parts.append(f"<p>first {max_rows} of {len(rows)} rows: result.rows() or result.to_dataframe() for "
                         "all</p>")
        return "".join(parts)

    def plot(self, n: int = 8, *, indices: Sequence[int] | None = None) -> Any:
        """Draw examples with matplotlib: per input a column of the original x, the perturbation eta (scaled to its
        largest entry) and x_adv, with the class of each (red where it changed).

        Args:
            n: how many inputs: the first ``n`` that the attack fooled (the first ``n`` where none was, or for a
                regression attack).
            indices: the inputs to draw instead (positions in the batch).

        Returns:
            A ``matplotlib.figure.Figure`` (outside pyplot: a notebook shows it, ``fig.savefig(path)`` writes it)
            with three axes per input.

        Raises:
            ImportError: matplotlib is not installed.
        """
        from .report import example_figure

        if indices is None:
            fooled = [] if self.success is None else self.success.nonzero().flatten().tolist()
            indices = (fooled or list(range(self.n)))[:n]
        idx = list(indices)
        if not idx:
            raise ValueError("nothing to plot: the result holds no input")
        x_adv = self.x_adv.detach().cpu().double()[idx]
        eta = self.eta.detach().cpu().double()[idx]
        x = x_adv - eta
        lo, hi = float(torch.minimum(x.min(), x_adv.min())), float(torch.maximum(x.max(), x_adv.max()))

        def cls(t: Tensor | None, i: int) -> str:
            return "-" if t is None else str(int(t[i]))

        titles = [f"#{i}: {cls(self.label, i)}" for i in idx]
        captions = [cls(self.pred, i) for i in idx]
        changed = [self.pred is not None and self.label is not None and int(self.pred[i]) != int(self.label[i])
                   for i in idx]
        name = self.attack or "attack"
        eps = self._eps_text()
        fig = example_figure([(name, x.numpy(), eta.numpy(), titles, captions, changed)], (lo, hi))
        fig.suptitle(f"{name}: p={_fmt(self.p)}, eps={eps} (class of x and of x_adv; red: changed)", fontsize=9)
        return fig

    def to_dataframe(self) -> Any:
        """:meth:`rows` as a ``pandas.DataFrame`` (one row per input).

        Raises:
            ImportError: pandas is not installed (``rows()`` gives the same table without it).
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "AttackResult.to_dataframe() needs pandas, which is not installed: pip install pandas "
                "(or use result.rows(), a list of dicts with the same table)"
            ) from err
        return pd.DataFrame(self.rows()).set_index("index")

    @property
    def success_rate(self) -> float:
        """Share of inputs with ``success`` (all inputs, correctly classified or not)."""
        if self.success is None:
            raise TypeError("a regression attack has no success flag")
        return float(self.success.float().mean())

    def save(self, path: str) -> None:
        """Save every field as a NumPy ``.npz`` archive (plain arrays, readable without pertattack)."""
        arrays = {
            k: v.detach().cpu().numpy()
            for k, v in vars(self).items()
            if isinstance(v, Tensor)
        }
        arrays.update({f"info_{k}": v.detach().cpu().numpy() for k, v in self.info.items()})
        arrays["p"] = np.asarray(self.p)
        if self.attack is not None:
            arrays["attack"] = np.asarray(self.attack)
        np.savez_compressed(path, **arrays)


def save_results(path: str | Path, results: Sequence[AttackResult]) -> None:
    """Save the results of one attack at several budgets in one ``.npz`` (plain NumPy arrays).

    Every tensor field is stacked along a new first axis, one entry per result: ``x_adv`` has shape
    (K, N, ...), ``success``, ``norms`` and ``eps`` (K, N), ``info_<key>`` likewise; ``eps_grid`` (K,)
    holds each result's budget (the first input's; NaN for an unbounded run) and ``p`` the norm.
    ``np.load(path)["x_adv"][k]`` is the k-th budget's adversarial inputs. A single result is saved
    as by :meth:`AttackResult.save` (no extra axis).
    """
    if not results:
        raise ValueError("save_results needs at least one result")
    if len(results) == 1:
        results[0].save(str(path))
        return
    first = results[0]
    arrays: dict[str, np.ndarray] = {}
    for name, v in vars(first).items():
        if isinstance(v, Tensor):
            arrays[name] = np.stack([getattr(r, name).detach().cpu().numpy() for r in results])
    for k in first.info:
        arrays[f"info_{k}"] = np.stack([r.info[k].detach().cpu().numpy() for r in results])
    arrays["eps_grid"] = np.asarray(
        [math.nan if r.eps is None or r.eps.numel() == 0 else float(r.eps.flatten()[0]) for r in results])
    arrays["p"] = np.asarray(first.p)
    if first.attack is not None:
        arrays["attack"] = np.asarray(first.attack)
    np.savez_compressed(path, **arrays)


def concat_results(parts: list[AttackResult], p: float) -> AttackResult:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Tensor | None:
        vals = [getattr(r, name) for r in parts]
        return None if vals[0] is None else torch.cat(vals)

    info = {k: torch.cat([r.info[k] for r in parts]) for k in parts[0].info}
    fields = ("x_adv", "eta", "norms", "success", "eps", "label", "pred", "steps", "margin")
    flags = tuple(dict.fromkeys(f for r in parts for f in r.flags))  # each once, in order
    return AttackResult(**{k: cat(k) for k in fields}, p=p, info=info, attack=parts[0].attack,
                        members=parts[0].members, flags=flags)
