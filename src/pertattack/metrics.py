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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import Attack, AttackResult, get_attack
from .constraints import LpBall, lp_norm
from .modelcall import ModelCall, OutputSelector, Preprocess, eval_mode
from .objectives import Context, Margin

__all__ = [
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


def predict(model: nn.Module, x: Tensor, *, preprocess: Preprocess | None = None, output: OutputSelector = None,
            batch_size: int = 1024) -> Tensor:
    """The model's classes for x (N,), in eval mode (restored afterwards), in batches."""
    fwd = ModelCall(model, preprocess, output)
    with eval_mode(model), torch.no_grad():
        return torch.cat([fwd(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def fooling_ratio(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, **kw: Any) -> float:
    """Share of the inputs that ``model`` classifies correctly on x and wrongly on x_adv.

    The paper's definition: only correctly classified inputs count. NaN (with a warning) when none is.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    correct = predict(model, x, **kw) == y
    if not bool(correct.any()):
        warnings.warn("no input is classified correctly: the fooling ratio is undefined", stacklevel=2)
        return math.nan
    fooled = predict(model, x_adv, **kw) != y
    return float((fooled & correct).sum() / correct.sum())


def _as_attack(attack: Attack | str, overrides: dict[str, Any]) -> Attack:
    if isinstance(attack, str):
        return get_attack(attack, **overrides)
    return attack.replace(**overrides) if overrides else attack


def _fooled_at(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, eps: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Which inputs are classified correctly (N,), and which of those the attack fools at each eps (E, N).

    A minimum-norm attack runs once, unbounded: an input counts as fooled at eps when its
    perturbation's norm is <= eps. Other attacks run once per eps.
    """
    kw = dict(preprocess=attack.params["preprocess"], output=attack.params["output"])
    correct = predict(model, x, **kw) == y
    if attack.minimum_norm:
        free = attack.replace(eps=None)(model, x, y)
        assert isinstance(free, AttackResult) and free.success is not None
        return correct, torch.stack([free.success & correct & (free.norms <= e) for e in eps])
    results = attack(model, x, y, eps=list(eps))
    assert isinstance(results, list)
    return correct, torch.stack([r.success & correct for r in results])  # type: ignore[operator]


def fooling_curve(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | str, eps: Sequence[float],
                  **overrides: Any) -> list[float]:
    """Fooling ratio at each eps of a grid: one unbounded run of a minimum-norm attack for the whole
    grid (an input counts as fooled at eps when its perturbation's norm is <= eps), one run per eps
    otherwise."""
    correct, fooled = _fooled_at(model, x, y, _as_attack(attack, overrides), eps)
    n_correct = correct.sum().clamp_min(1)
    return [float(f.sum() / n_correct) for f in fooled]


def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], attack: Attack | str, eps: Sequence[float],
             *, progress: bool = False, **overrides: Any) -> dict[str, Any]:
    """Robust accuracy and fooling ratio at each eps over a whole data set, streamed batch by batch.

    Args:
        data: an iterable of ``(x, y)`` batches, e.g. a ``torch.utils.data.DataLoader``.
        attack: an :class:`Attack` or a preset name (with ``overrides``).
        eps: the budgets; a minimum-norm attack (DeepFool) runs once per batch for all of them.

    Returns:
        ``n``, ``clean_accuracy`` and, one value per eps, ``robust_accuracy`` (share of all inputs
        still classified correctly) and ``fooling_ratio`` (share of the correctly classified inputs
        fooled), with the list ``eps``.
    """
    a = _as_attack(attack, overrides)
    n = 0
    n_correct = 0
    n_fooled = torch.zeros(len(eps), dtype=torch.long)
    batches = data
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(data, desc=f"evaluate {a.name}", unit="batch")
    for x, y in batches:
        correct, fooled = _fooled_at(model, x, y, a, eps)
        n += x.shape[0]
        n_correct += int(correct.sum())
        n_fooled += fooled.sum(dim=1).cpu()
    if n == 0:
        raise ValueError("evaluate got no data")
    robust = [(n_correct - int(f)) / n for f in n_fooled]
    ratio = [int(f) / n_correct if n_correct else math.nan for f in n_fooled]
    return dict(eps=[float(e) for e in eps], n=n, clean_accuracy=n_correct / n, robust_accuracy=robust,
                fooling_ratio=ratio)


def rho2(model: nn.Module, x: Tensor, y: Tensor | None = None, p: float = math.inf, **kw: Any) -> Tensor:
    """L(x, 0) / norm_q(grad L(x, 0)) per input (Theorem 1), margin on logits; 0 where misclassified."""
    fwd = ModelCall(model, kw.get("preprocess"), kw.get("output"))
    ball = LpBall(p)
    with eval_mode(model):
        label = y if y is not None else predict(model, x, **kw)
        value, g, _ = Margin().value_and_grad(fwd, x, Context(label=label, ball=ball))
    return value.clamp_min(0) / ball.dual_norm(g).clamp_min(1e-12)


def robustness(model: nn.Module, x: Tensor, y: Tensor, p: float = math.inf, *, batch_size: int = 500,
               **kw: Any) -> dict[str, float]:
    """Table 3 of the paper for one classifier: test error, rho1, rho2 and the smallest eps at which
    DeepFool fools more than 99% of the correctly classified inputs.

    rho1 is DeepFool's (and the paper's) mean of norm_p(r(x)) / norm_p(x) over the correctly classified inputs
    that DeepFool *fools*: an input on which it fails (no boundary crossed within its step cap) has no minimal
    perturbation and is dropped from the mean, which can make rho1 look smaller (less robust) than it is.
    ``deepfool_failed`` counts those inputs and ``deepfool_success`` is the share fooled; eps_99 treats a
    failure as an infinite distance.

    Returns a dict with keys ``test_error``, ``rho1``, ``rho2``, ``eps_99``, ``deepfool_success`` and
    ``deepfool_failed`` (the number of correctly classified inputs rho1 leaves out).
    """
    correct = predict(model, x, **kw) == y
    if not bool(correct.any()):
        raise ValueError("no input is classified correctly")
    df = get_attack("deepfool", p=p, batch_size=batch_size, **kw)
    res = df(model, x, y)
    assert isinstance(res, AttackResult) and res.success is not None
    xc = x[correct]
    ok = res.success[correct]
    norms = res.norms[correct]
    rho1 = float((norms / lp_norm(xc, p).clamp_min(1e-12))[ok].mean()) if bool(ok.any()) else math.nan
    r2 = torch.cat([rho2(model, xc[i : i + batch_size], y[correct][i : i + batch_size], p, **kw)
                    for i in range(0, xc.shape[0], batch_size)])
    r2n = float(r2.mean())
    dist = torch.where(ok, norms, torch.full_like(norms, math.inf)).sort().values
    k = math.floor(0.99 * dist.numel())  # more than 99% fooled: k+1 smallest distances
    eps99 = float(dist[min(k, dist.numel() - 1)])
    return dict(test_error=float(1 - correct.float().mean()), rho1=rho1, rho2=r2n, eps_99=eps99,
                deepfool_success=float(ok.float().mean()), deepfool_failed=float((~ok).sum()))


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> Tensor:
    """PSNR in dB of each input of a batch: 10 log10(peak^2 / MSE(a_i, b_i)), shape (N,).

    inf where a_i == b_i. peak = hi - lo of the box (1 for [0, 1] images).
    """
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
    fwd = ModelCall(model, attack.params["preprocess"], attack.params["output"])
    truth = x if truth is None else truth
    results = attack(model, x, eps=list(eps))
    assert isinstance(results, list)
    rows: dict[str, list[float]] = {"eps": [], "input_psnr": [], "output_psnr": [], "output_psnr_clean": []}
    with eval_mode(model), torch.no_grad():
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

    fwd = ModelCall(model, kw.get("preprocess"), kw.get("output"))
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model):
        sigma, _ = top_singular(fwd, x, iters=iters, tol=tol, generator=gen)
    return sigma.detach()
