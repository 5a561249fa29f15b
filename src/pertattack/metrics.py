"""Robustness measures (paper, Section 6): fooling ratio, rho1, rho2, PSNR.

* fooling ratio: the share of correctly classified inputs that the attack misclassifies
  (as DeepFool defines it); a minimum-norm attack fools at eps when its norm is <= eps.
* rho1 (DeepFool): mean of norm_p(r(x)) / norm_p(x), r DeepFool's minimal perturbation.
* rho2 (Theorem 1): mean of L(x, 0) / norm_q(grad L(x, 0)) with the margin objective on logits,
  the first-order distance to the decision boundary (exact for affine classifiers). As in the
  paper, rho2 is not divided by norm_p(x) (for [0, 1] images and p = inf that norm is ~1 anyway).
  On probabilities a confident model's gradient vanishes and the ratio explodes: logits it is.
* PSNR: 10 log10(peak^2 / MSE) in dB, peak = hi - lo.

Means run over the correctly classified inputs (the others have distance 0 by definition).

**Nothing to measure: one rule.** A metric whose set of counted inputs is empty (the fooling ratio,
its curve and :func:`evaluate` when no input is classified correctly; rho1 and rho2 likewise, rho1
also when DeepFool fools none of them) is ``NaN``, never a number that reads as a result (0.0 would
read "perfectly robust"), and an :class:`UndefinedMetricWarning` says which metric and why, once per
call. Metrics that stay defined keep their value (the test error of :func:`robustness` is 1.0 then).
An empty input (no inputs at all) is a mistake, not a measurement: ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._validate import positive_int
from .attacks import Attack, AttackResult
from .constraints import LpBall, lp_norm
from .modelcall import OutputSelector, Preprocess, as_model, eval_mode
from .objectives import Context, Margin
from .presets import get_attack

__all__ = [
    "UndefinedMetricWarning",
    "predict",
    "fooling_ratio",
    "fooling_curve",
    "evaluate",
    "robustness",
    "psnr",
    "rho2",
    "eps_for_psnr",
    "psnr_curve",
    "operator_norm",
]


class UndefinedMetricWarning(UserWarning):
    """A metric had nothing to measure (e.g. no correctly classified input) and is NaN."""


def _undefined(what: str, why: str = "no input is classified correctly", stacklevel: int = 3) -> float:
    warnings.warn(f"{why}: {what} is undefined (NaN)", UndefinedMetricWarning, stacklevel=stacklevel)
    return math.nan


def _require_inputs(x: Tensor, what: str) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"{what} got no inputs (an empty batch): there is nothing to measure")


def _check_batch_size(batch_size: int) -> None:
    positive_int("batch_size", batch_size, "an int >= 1")


def _check_eps_grid(eps: Sequence[float]) -> None:
    if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence) or len(eps) == 0:
        raise ValueError(f"eps must be a non-empty sequence of budgets, got {eps!r}")


def predict(model: nn.Module, x: Tensor, *, preprocess: Preprocess | None = None, output: OutputSelector = None,
            batch_size: int = 1024) -> Tensor:
    """The model's classes for x (N,), in eval mode (restored afterwards), in batches of ``batch_size``."""
    _check_batch_size(batch_size)
    fwd = as_model(model, preprocess=preprocess, output=output)
    with eval_mode(fwd), torch.no_grad():
        return torch.cat([fwd(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def _adv(v: Tensor | AttackResult) -> Tensor:
    """x_adv, given as a tensor or as the :class:`AttackResult` that holds it."""
    return v.x_adv if isinstance(v, AttackResult) else v


def fooling_ratio(model: nn.Module, x: Tensor, x_adv: Tensor | AttackResult, y: Tensor, **kw: Any) -> float:
    """Share of the inputs that ``model`` classifies correctly on x and wrongly on x_adv (a tensor or the result).

    The paper's definition: only correctly classified inputs count. NaN with an
    :class:`UndefinedMetricWarning` when none is; ``ValueError`` for an empty batch.
    """
    x_adv = _adv(x_adv)
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    _require_inputs(x, "fooling_ratio")
    correct = predict(model, x, **kw) == y
    if not bool(correct.any()):
        return _undefined("the fooling ratio")
    fooled = predict(model, x_adv, **kw) != y
    return float((fooled & correct).sum() / correct.sum())


def _as_attack(attack: Attack | str, overrides: dict[str, Any]) -> Attack:
    if isinstance(attack, str):
        return get_attack(attack, **overrides)
    return attack.replace(**overrides) if overrides else attack


def _fooled_at(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, eps: Sequence[float],
               index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Which inputs are classified correctly (N,), and which of those the attack fools at each eps (E, N).

    One rule for every attack: an input is fooled at eps when the model misclassifies the attack's
    x_adv at that eps, which lies in the eps ball (a minimum-norm attack runs once, and its perturbation
    is projected on each ball and re-evaluated, so it counts at least where its norm is <= eps).
    ``index``: the inputs' data-set positions, which seed their random draws (the attack's ``index=``).
    """
    _check_eps_grid(eps)
    kw = dict(preprocess=attack.preprocess, output=attack.output)
    correct = predict(model, x, **kw) == y
    results = attack(model, x, y, eps=list(eps), index=index)
    assert isinstance(results, list)
    return correct, torch.stack([r.success & correct for r in results])  # type: ignore[operator]


def fooling_curve(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | str, eps: Sequence[float],
                  **overrides: Any) -> list[float]:
    """Fooling ratio at each eps of a grid (the rule of :func:`evaluate`: the model misclassifies the
    attack's x_adv in the eps ball); a minimum-norm attack runs once for the whole grid.

    NaN at every eps (one :class:`UndefinedMetricWarning`) when no input is classified correctly:
    there is nothing to fool, which is not "perfectly robust".
    """
    _require_inputs(x, "fooling_curve")
    correct, fooled = _fooled_at(model, x, y, _as_attack(attack, overrides), eps)
    n_correct = int(correct.sum())
    if n_correct == 0:
        _undefined("the fooling curve")
        return [math.nan] * len(eps)
    return [float(f.sum()) / n_correct for f in fooled]


def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], attack: Attack | str, eps: Sequence[float],
             *, seed: int | None = None, progress: bool = False, **overrides: Any) -> dict[str, Any]:
    """Robust accuracy and fooling ratio at each eps over a whole data set, streamed batch by batch.

    Args:
        data: an iterable of ``(x, y)`` batches, e.g. a ``torch.utils.data.DataLoader``.
        attack: an :class:`Attack` or a preset name (with ``overrides``).
        eps: the budgets; a minimum-norm attack (DeepFool) runs once per batch for all of them.
        seed: the attack's seed. The inputs are numbered in the order ``data`` yields them, and
            every random draw for input i depends only on (seed, i): the same figures for any
            batching of the same sequence. None keeps the attack's own seed.

    Returns:
        ``n``, ``clean_accuracy`` and, one value per eps, ``robust_accuracy`` (share of all inputs
        still classified correctly) and ``fooling_ratio`` (share of the correctly classified inputs
        fooled), with the list ``eps``. The fooling ratios are NaN (one
        :class:`UndefinedMetricWarning`) when no input is classified correctly.

    Raises:
        ValueError: ``data`` holds no input.
    """
    a = _as_attack(attack, overrides)
    _check_eps_grid(eps)
    if seed is not None:
        a = a.replace(seed=seed)
    n = 0
    n_correct = 0
    n_fooled = torch.zeros(len(eps), dtype=torch.long)
    batches = data
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(data, desc=f"evaluate {a.name}", unit="batch")
    for x, y in batches:
        index = torch.arange(n, n + x.shape[0], device=x.device)
        correct, fooled = _fooled_at(model, x, y, a, eps, index)
        n += x.shape[0]
        n_correct += int(correct.sum())
        n_fooled += fooled.sum(dim=1).cpu()
    if n == 0:
        raise ValueError("evaluate got no data")
    robust = [(n_correct - int(f)) / n for f in n_fooled]
    if n_correct == 0:
        _undefined("the fooling ratio")
    ratio = [int(f) / n_correct if n_correct else math.nan for f in n_fooled]
    return dict(eps=[float(e) for e in eps], n=n, clean_accuracy=n_correct / n, robust_accuracy=robust,
                fooling_ratio=ratio)


def rho2(model: nn.Module, x: Tensor, y: Tensor | None = None, p: float = math.inf, **kw: Any) -> Tensor:
    """L(x, 0) / norm_q(grad L(x, 0)) per input (Theorem 1), margin on logits; 0 where misclassified,
    inf where the gradient is exactly zero (no first-order path to the boundary; not 1e12)."""
    fwd = as_model(model, preprocess=kw.get("preprocess"), output=kw.get("output"))
    ball = LpBall(p)
    with eval_mode(fwd):
        label = y if y is not None else predict(model, x, **kw)
        value, g, _ = Margin().value_and_grad(fwd, x, Context(label=label, ball=ball))
    value = value.detach()
    dn = ball.dual_norm(g).detach()
    dist = torch.where(dn > 0, value.clamp_min(0) / torch.where(dn > 0, dn, torch.ones_like(dn)),
                       torch.full_like(value, math.inf))
    return torch.where(value > 0, dist, torch.zeros_like(dist))


def robustness(model: nn.Module, x: Tensor, y: Tensor, p: float = math.inf, *, batch_size: int = 500,
               method: str = "deepfool", **kw: Any) -> dict[str, float]:
    """Table 3 of the paper for one classifier: test error, rho1, rho2 and the smallest eps at which
    DeepFool fools more than 99% of the correctly classified inputs.

    ``method``: the minimum-norm attack behind rho1 and eps_99: ``"deepfool"`` (the paper's), or the
    stronger ``"fmn"`` / ``"ddn"`` (smaller perturbations, so smaller rho1: a tighter upper bound on the
    distance to the boundary). The ``deepfool_*`` keys describe that attack.

    rho1 is DeepFool's (and the paper's) mean of norm_p(r(x)) / norm_p(x) over the correctly classified inputs
    that DeepFool *fools*: an input on which it fails (no boundary crossed within its step cap) has no minimal
    perturbation and is dropped from the mean, which can make rho1 look smaller (less robust) than it is.
    ``deepfool_failed`` counts those inputs and ``deepfool_success`` is the share fooled; eps_99 treats a
    failure as an infinite distance.

    Relative and absolute figures: rho1 is relative (each minimal perturbation divided by norm_p(x));
    rho2 and eps_99 are absolute, in the units of the box (as eps is).

    Returns a dict with keys ``test_error``, ``rho1``, ``rho2``, ``eps_99``, ``deepfool_success`` and
    ``deepfool_failed`` (the number of correctly classified inputs rho1 leaves out). When no input is
    classified correctly, every key but ``test_error`` (then 1.0) is NaN, with one
    :class:`UndefinedMetricWarning`; rho1 is NaN (with the warning) also when DeepFool fools none of them.

    Raises:
        ValueError: an empty batch.
    """
    _require_inputs(x, "robustness")
    _check_batch_size(batch_size)
    correct = predict(model, x, **kw) == y
    if not bool(correct.any()):
        _undefined("rho1, rho2, eps_99 and the DeepFool success rate")
        return dict(test_error=1.0, rho1=math.nan, rho2=math.nan, eps_99=math.nan, deepfool_success=math.nan,
                    deepfool_failed=math.nan)
    df = get_attack(method, p=p, batch_size=batch_size, **kw)
    if not getattr(df, "minimum_norm", False):
        raise ValueError(f"robustness needs a minimum-norm attack for rho1 (deepfool, fmn, ddn), got {method!r}")
    res = df(model, x, y)
    assert isinstance(res, AttackResult) and res.success is not None
    xc = x[correct]
    ok = res.success[correct]
    norms = res.norms[correct]
    if bool(ok.any()):
        rho1 = float((norms / lp_norm(xc, p).clamp_min(1e-12))[ok].mean())
    else:
        rho1 = _undefined("rho1", "DeepFool fooled no correctly classified input")
    r2 = torch.cat([rho2(model, xc[i : i + batch_size], y[correct][i : i + batch_size], p, **kw)
                    for i in range(0, xc.shape[0], batch_size)])
    r2n = float(r2.mean())
    dist = torch.where(ok, norms, torch.full_like(norms, math.inf)).sort().values
    k = math.floor(0.99 * dist.numel())  # more than 99% fooled: k+1 smallest distances
    eps99 = float(dist[min(k, dist.numel() - 1)])
    return dict(test_error=float(1 - correct.float().mean()), rho1=rho1, rho2=r2n, eps_99=eps99,
                deepfool_success=float(ok.float().mean()), deepfool_failed=float((~ok).sum()))


def psnr(a: Tensor | AttackResult, b: Tensor | AttackResult, peak: float = 1.0) -> Tensor:
    """PSNR in dB of each input of a batch: 10 log10(peak^2 / MSE(a_i, b_i)), shape (N,).

    inf where a_i == b_i. peak = hi - lo of the box (1 for [0, 1] images). An :class:`AttackResult` stands for its
    x_adv.
    """
    a, b = _adv(a), _adv(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a - b).reshape(a.shape[0], -1).double().pow(2).mean(dim=1)
    return (10 * torch.log10(peak**2 / mse)).to(a.dtype if a.is_floating_point() else torch.float64)


def eps_for_psnr(psnr_db: float, p: float, m: int, peak: float = 1.0) -> float:
    """The budget whose full use gives input PSNR ``psnr_db``: MSE = (peak 10^(-psnr/20))^2.

    p = inf (all M coordinates at +-eps): eps = peak 10^(-psnr/20); p = 2: eps = sqrt(M) times that.
    Clipping to the box can only raise the PSNR actually reached; :func:`psnr_curve` reports that one.
    """
    rms = peak * 10 ** (-psnr_db / 20)
    if math.isinf(p):
        return rms
    if p == 2:
        return rms * math.sqrt(m)
    raise ValueError(f"eps_for_psnr knows p = 2 and p = inf, got p = {p}")


def psnr_curve(model: nn.Module, x: Tensor, attack: Attack | str, eps: Sequence[float], truth: Tensor | None = None,
               **overrides: Any) -> dict[str, list[float]]:
    """Figure 4: output PSNR against input PSNR of a regression attack over a grid of eps.

    For each eps: the mean over inputs of PSNR(x + eta, x) (input), of PSNR(f(x + eta), truth)
    (output, as the paper plots it; ``truth`` defaults to x, the target of an autoencoder) and of
    PSNR(f(x + eta), f(x)) (output against the clean output: the attack alone, without the model's
    own error). Returns lists keyed ``eps``, ``input_psnr``, ``output_psnr``, ``output_psnr_clean``.
    """
    if isinstance(attack, str):
        attack = get_attack(attack, **overrides)
    elif overrides:
        attack = attack.replace(**overrides)
    peak = attack.box.peak
    fwd = as_model(model, preprocess=attack.preprocess, output=attack.output)
    truth = x if truth is None else truth
    results = attack(model, x, eps=list(eps))
    assert isinstance(results, list)
    rows: dict[str, list[float]] = {"eps": [], "input_psnr": [], "output_psnr": [], "output_psnr_clean": []}
    with eval_mode(fwd), torch.no_grad():
        clean = fwd(x)
        for e, r in zip(eps, results, strict=True):
            out = fwd(r.x_adv)
            rows["eps"].append(float(e))
            rows["input_psnr"].append(float(psnr(r.x_adv, x, peak).mean()))
            rows["output_psnr"].append(float(psnr(out, truth.reshape(out.shape), peak).mean()))
            rows["output_psnr_clean"].append(float(psnr(out, clean, peak).mean()))
    return rows


def operator_norm(model: nn.Module, x: Tensor, *, iters: int = 100, tol: float = 1e-6, seed: int | None = 0,
                  **kw: Any) -> Tensor:
    """norm(J_i)_{2->2} per input (N,): the top singular value of the model's Jacobian at each x_i,
    by matrix-free power iteration (eq. 14). The worst-case first-order output change per unit of
    input l2 norm: a robustness figure for regression models."""
    from .operators import top_singular

    fwd = as_model(model, preprocess=kw.get("preprocess"), output=kw.get("output"))
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(fwd):
        sigma, _ = top_singular(fwd, x, iters=iters, tol=tol, generator=gen)
    return sigma.detach()
