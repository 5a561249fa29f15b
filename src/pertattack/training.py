"""Training, evaluation and checkpoints for the models of :mod:`pertattack.models`.

Randomness is explicit: shuffling draws from a ``torch.Generator`` seeded by ``seed``, and the
whole run sits inside ``torch.random.fork_rng()`` with ``torch.manual_seed(seed)`` (for layers
such as dropout), so the caller's global RNG state is never changed. With a model built by
``build_model(name, seed=s)``, the same seeds give bit-identical weights on the same machine and
thread count (conv kernels may sum in another order with another ``torch.get_num_threads()``).
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .modelcall import eval_mode
from .models import MODELS, build_model

__all__ = [
    "train_classifier",
    "adversarial_training",
    "train_autoencoder",
    "accuracy",
    "reconstruction_mse",
    "save_model",
    "load_model",
    "load_training_state",
    "check_record",
]

_FORMAT = 1


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group, (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG ``fork_rng`` must save and restore, if any."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


Perturb = Callable[[Tensor, Tensor, Tensor], Tensor]
#: the keys of a training state (see :func:`adversarial_training`'s ``checkpoint``)
_STATE_KEYS = ("epoch", "history", "optimizer", "shuffle", "rng", "settings")


def _snapshot(epoch: int, history: list[dict[str, float]], optimizer: torch.optim.Optimizer,
              generator: torch.Generator, device: torch.device, settings: dict[str, Any], world: int
              ) -> dict[str, Any]:
    """The training state after ``epoch`` epochs: what ``_resume`` needs to continue to the weights of an
    uninterrupted run (the optimizer's moments, the shuffling generator, every rank's RNG for dropout), a copy."""
    mine = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])
    rngs: list[Any] = [mine]
    if world > 1:  # every rank's RNG (dropout masks differ between ranks); a collective: every rank calls it
        rngs = [None] * world
        torch.distributed.all_gather_object(rngs, mine)
    return {"epoch": epoch, "history": [dict(h) for h in history],
            "optimizer": copy.deepcopy(optimizer.state_dict()), "shuffle": generator.get_state(),
            "rng": [[t.cpu() for t in r] for r in rngs], "settings": dict(settings)}


def _resume(state: Mapping[str, Any], settings: dict[str, Any], epochs: int, optimizer: torch.optim.Optimizer,
            generator: torch.Generator, rank: int) -> tuple[int, list[dict[str, float]], list[Tensor]]:
    """Check a training state against this run and load it into the optimizer and the generator; returns the
    epochs done, their history and this rank's RNG states (set inside the run's forked RNG)."""
    if not isinstance(state, Mapping) or not set(_STATE_KEYS) <= set(state):
        raise ValueError(f"resume: not a training state (expected the keys {', '.join(_STATE_KEYS)})")
    done, history, saved = state["epoch"], state["history"], state["settings"]
    if isinstance(done, bool) or not isinstance(done, int) or done < 0 or not isinstance(history, list) \
            or len(history) != done or not isinstance(saved, Mapping):
        raise ValueError(f"resume: a corrupt training state (epoch {done!r}, {type(history).__name__} history)")
    other = [f"{k} {saved.get(k)!r} (now {v!r})" for k, v in settings.items() if saved.get(k) != v]
    if other:
        raise ValueError(f"resume: the checkpoint was trained with other settings: {'; '.join(other)}; resume "
                         "with the same ones")
    if epochs < done:
        raise ValueError(f"resume: the checkpoint has done {done} epochs, more than epochs={epochs}")
    rngs = state["rng"]
    if not isinstance(rngs, list) or len(rngs) != settings["world"] or not all(
            isinstance(t, Tensor) and t.dtype == torch.uint8 for t in rngs[rank]):
        raise ValueError("resume: the training state's RNG states do not fit this run")
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the moments must have the shapes of the weights they go with
        for prm in group["params"]:
            for name, value in optimizer.state.get(prm, {}).items():
                if isinstance(value, Tensor) and value.dim() and value.shape != prm.shape:
                    raise ValueError(f"resume: the optimizer's {name} has shape {tuple(value.shape)}, the weights "
                                     f"{tuple(prm.shape)}")
    generator.set_state(state["shuffle"])
    return done, [dict(h) for h in history], rngs[rank]


def _adversarial_loss(net: nn.Module, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], xb: Tensor,
                      tb: Tensor, x_adv: Tensor, mix: float, beta: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """The training loss of a batch and its clean and adversarial parts: ``mix * loss(x) + (1 - mix) * loss(x_adv)``
    (with ``mix = 0``, Madry's, the clean loss is computed for the report only, in eval mode without gradient), or
    with ``beta`` TRADES's ``loss(x) + beta * KL(p(x) || p(x_adv))`` (p: the softmax; the adversarial part: the KL
    term, a per-example mean, through both outputs as in Zhang et al.'s code)."""
    if beta is not None:
        out = net(xb)
        clean = loss_fn(out, tb)
        kl = F.kl_div(net(x_adv).log_softmax(dim=1), out.log_softmax(dim=1), reduction="batchmean", log_target=True)
        return clean + beta * kl, clean, kl
    adv = loss_fn(net(x_adv), tb)
    if mix > 0:
        clean = loss_fn(net(xb), tb)
        return mix * clean + (1 - mix) * adv, clean, adv
    with eval_mode(model), torch.no_grad():
        clean = loss_fn(model(xb), tb)
    return adv, clean, adv


def _fit(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
    perturb: Perturb | None = None,
    mix: float = 0.0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
    recipe: str = "",
    beta: float | None = None,
) -> list[dict[str, float]]:
    """The one training loop: Adam on minibatches of a seeded permutation; per-epoch mean losses.

    With ``perturb``, each batch is replaced by ``perturb(x, t, index)`` (``index``: the inputs'
    positions in the data, offset by ``epoch * n`` so that every epoch draws afresh) and the loss is
    ``mix * loss(x) + (1 - mix) * loss(x_adv)`` (or TRADES's with ``beta``: ``_adversarial_loss``); the history
    then holds ``clean`` and ``adversarial`` besides ``loss``. ``on_epoch(epoch, history[-1])`` runs after each
    epoch, on rank 0, and so does ``checkpoint(state)`` with the training state (``_snapshot``); ``resume``,
    such a state, continues from its epoch if the run's settings (data size, batch size, lr, seed, loss, ``mix``,
    ``beta``, ``recipe``: the attack, world size) are those it was saved with. The history returned includes the
    epochs of ``resume``.

    In a torch.distributed process group (torchrun) of W processes, every rank draws the same permutation and
    takes every W-th input of each batch; the model is wrapped in ``DistributedDataParallel`` for the training
    step (the gradients, the mean of the ranks' mean losses, are averaged) and attacked unwrapped; a last batch
    smaller than W is skipped. The losses reported are per-example means over all the ranks' inputs.
    """
    n = inputs.shape[0]
    if targets.shape[0] != n:
        raise ValueError(f"inputs and targets differ in length: {n} vs {targets.shape[0]}")
    if n == 0:
        raise ValueError("no training data")
    if epochs < 0 or batch_size < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"need epochs >= 0, batch_size >= 1, finite lr > 0; got {epochs}, {batch_size}, {lr}")
    device = _device(model)
    rank, world = _world()
    if min(batch_size, n) < world:
        raise ValueError(f"{world} processes share each batch: need batch_size and the data's length >= {world}, got "
                         f"{batch_size} and {n}")
    net = model if world == 1 else nn.parallel.DistributedDataParallel(model)
    progress = progress and rank == 0
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    settings = dict(n=n, batch_size=batch_size, lr=lr, seed=seed, loss=getattr(loss_fn, "__name__", repr(loss_fn)),
                    mix=mix, beta=beta, recipe=recipe, world=world)
    start, history, rng = 0, [], []
    if resume is not None:
        start, history, rng = _resume(resume, settings, epochs, optimizer, generator, rank)
    keys = ("loss",) if perturb is None else ("loss", "clean", "adversarial")
    # eval_mode records every submodule's mode and restores each one afterwards; inside, train mode
    with torch.random.fork_rng(devices=_cuda_indices(device)), eval_mode(model):
        torch.manual_seed(seed + rank)  # dropout masks differ between ranks
        if rng:
            torch.set_rng_state(rng[0])
            if device.type == "cuda" and len(rng) > 1:
                torch.cuda.set_rng_state(rng[1], device)
        model.train()
        try:
            for epoch in range(start, epochs):
                perm = torch.randperm(n, generator=generator)
                batches = perm.split(batch_size)
                totals = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # sums, then the count
                bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
                for idx in bar:
                    if world > 1:
                        if len(idx) < world:
                            continue
                        idx = idx[rank::world]
                    xb = inputs[idx].to(device, non_blocking=True)
                    tb = targets[idx].to(device, non_blocking=True)
                    if perturb is None:
                        loss = loss_fn(net(xb), tb)
                        parts = loss.detach().reshape(1)
                    else:
                        # the attack runs the model in eval mode and restores train mode
                        x_adv = perturb(xb, tb, idx + epoch * n).detach()
                        loss, clean, adv = _adversarial_loss(net, model, loss_fn, xb, tb, x_adv, mix, beta)
                        parts = torch.stack([loss.detach(), clean.detach(), adv.detach()])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    totals += torch.cat([parts, parts.new_ones(1)]) * len(idx)
                    if progress and perturb is not None:
                        clean_m, adv_m = (totals[1:-1] / totals[-1]).tolist()
                        bar.set_postfix(clean=f"{clean_m:.4f}", adv=f"{adv_m:.4f}", refresh=False)
                if world > 1:
                    torch.distributed.all_reduce(totals)
                history.append(dict(zip(keys, (totals[:-1] / totals[-1]).tolist(), strict=True)))
                if not math.isfinite(history[-1]["loss"]):
                    raise ValueError(f"training diverged: the mean loss of epoch {epoch + 1} is {history[-1]['loss']} "
                                     f"(lower lr, now {lr:g}, or check the data for NaN/inf)")
                if progress:
                    losses = ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items())
                    bar.write(f"epoch {epoch + 1}/{epochs}: {losses}")
                if checkpoint is not None:
                    state = _snapshot(epoch + 1, history, optimizer, generator, device, settings, world)
                    if rank == 0:
                        checkpoint(state)
                if on_epoch is not None and rank == 0:
                    on_epoch(epoch, history[-1])
        finally:
            optimizer.zero_grad(set_to_none=True)
    return history


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> list[float]:
    """Train a logit classifier with Adam and cross-entropy, in place.

    Args:
        model: returns logits (N, K); trained on the device of its parameters (batches are moved there).
        x: inputs (N, ...).
        y: int64 labels (N,).
        epochs: passes over the data.
        batch_size: minibatch size (the last batch may be smaller).
        lr: Adam learning rate.
        seed: seeds the shuffling generator and, inside a forked RNG, any randomness of the model.
        progress: show a tqdm bar per epoch.
        checkpoint, resume: resumable checkpoints, as in :func:`adversarial_training`.

    Returns:
        The mean training loss of each epoch (per example), the epochs of ``resume`` included.

    The train/eval mode of the model and of each of its submodules is restored afterwards;
    parameter ``.grad`` are left as None.
    """
    return [h["loss"] for h in _fit(model, x, y, F.cross_entropy, epochs, batch_size, lr, seed, progress,
                                    checkpoint=checkpoint, resume=resume)]


def adversarial_training(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Any,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    mix: float = 0.0,
    beta: float | None = None,
    progress: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Adversarial training (Madry et al.): train a classifier, in place, on the examples an attack finds.

    Each minibatch is attacked (``attack(model, x_b, y_b, index=...)``, the model in eval mode) and the
    model is then trained (in train mode) with Adam on ``mix * CE(x_b) + (1 - mix) * CE(x_adv)``. The same
    loop as :func:`train_classifier`: the same shuffling, seeding and restored modes.

    Args:
        model: returns logits (N, K); trained on the device of its parameters.
        x: inputs (N, ...) in the attack's box; y: int64 labels (N,).
        attack: any classification attack with a budget: ``get_attack("pgd", eps=0.1)``,
            ``get_attack("fgsm-rs", eps=0.1)`` (Wong et al.), a :class:`pertattack.Cascade`, ...
            It is built once and given ``seed``; its random draws for input i in epoch e depend only on
            ``(seed, e * N + i)`` (the attack's ``index=``), so a run is reproducible under any batching
            and every epoch draws new random starts.
        epochs, batch_size, lr, seed, progress: as in :func:`train_classifier` (the bar shows the running
            clean and adversarial losses).
        mix: the weight of the clean loss in [0, 1]: 0 trains on the adversarial examples only (Madry's
            recipe), 0.5 half and half (Goodfellow et al.'s). With ``mix = 0`` the clean loss is still
            computed (in eval mode, without gradient) for the report.
        beta: TRADES (Zhang et al. 2019): the loss is ``CE(x_b) + beta * KL(p(x_b) || p(x_adv))`` (p: the
            softmax; ``beta`` 6 in their paper; ``mix`` must stay 0), with ``get_attack("trades", eps=...)``
            (the KL objective, :class:`pertattack.objectives.KL`) as the attack; ``adversarial`` then reports
            the KL term. None: the loss of ``mix``.
        on_epoch: called as ``on_epoch(epoch, losses)`` after each epoch (rank 0).
        checkpoint: called as ``checkpoint(state)`` after each epoch (rank 0; under torch.distributed give it on
            every rank: the ranks' RNG states are gathered) with the training state, a dict of tensors and
            plain values (the epochs done and their losses, Adam's state, the shuffling generator's and the RNG
            states, the run's settings) to save with the weights:
            ``checkpoint=lambda state: save_model(path, model, "lenet5", training=state)``.
        resume: such a state (:func:`load_training_state` reads it back from the file, :func:`load_model` the
            weights): the run continues from its epoch to ``epochs``, to the weights of an uninterrupted run.
            It must come from a run with the same data size, ``batch_size``, ``lr``, ``seed``, ``mix``, attack
            and number of processes (else ``ValueError``).

    Returns:
        Per epoch, the mean (per example) training ``loss``, ``clean`` and ``adversarial`` cross-entropy (the
        epochs of ``resume`` included).

    Raises:
        ValueError: an attack that is not a classification attack, has no budget, or gives several
            results (a list of eps); ``mix`` outside [0, 1]; bad data or hyper-parameters.
    """
    if not callable(attack) or not hasattr(attack, "replace"):
        raise TypeError(f"attack must be an attack (get_attack(...) or a Cascade), got {type(attack).__name__}")
    objective = getattr(attack, "objective", None)
    if objective is None or not objective.classification or objective.needs_target:
        raise ValueError(f"adversarial training needs an untargeted classification attack; {attack!r} has "
                         f"objective {objective!r}")
    if attack.eps is None and not attack.minimum_norm:
        raise ValueError(f"the attack {attack!r} has no budget: build it with eps=...")
    if isinstance(attack.eps, (list, tuple)):
        raise ValueError(f"the attack {attack!r} has several budgets ({attack.eps}); adversarial training takes one")
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:
        raise ValueError(f"mix (the weight of the clean loss) must be a number in [0, 1], got {mix!r}")
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta)
                             or beta < 0 or mix != 0):
        raise ValueError(f"beta (TRADES's weight of the KL term) must be a finite number >= 0 with mix = 0, got "
                         f"beta {beta!r} and mix {mix!r}")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"y must be int64 labels of shape (N,), got {y.dtype} of shape {tuple(y.shape)}")
    seeded = attack.replace(seed=seed)

    def perturb(xb: Tensor, yb: Tensor, index: Tensor) -> Tensor:
        return seeded(model, xb, yb, index=index.to(xb.device)).x_adv

    return _fit(model, x, y, F.cross_entropy, epochs, batch_size, lr, seed, progress, perturb, float(mix), on_epoch,
                checkpoint, resume, recipe=repr(seeded), beta=None if beta is None else float(beta))


def train_autoencoder(
    model: nn.Module,
    x: Tensor,
    *,
    target: Tensor | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> list[float]:
    """Train an image-to-image model with Adam and mean squared error, in place.

    Args:
        model: maps (N, ...) to outputs of ``target``'s shape.
        x: inputs (N, ...).
        target: desired outputs (N, ...); ``None`` means ``x`` (an autoencoder reconstructs its
            input). A colorization net would take gray ``x`` and color ``target``.
        epochs, batch_size, lr, seed, progress, checkpoint, resume: as in :func:`train_classifier`.

    Returns:
        The mean training MSE of each epoch (the epochs of ``resume`` included).
    """
    t = x if target is None else target
    return [h["loss"] for h in _fit(model, x, t, F.mse_loss, epochs, batch_size, lr, seed, progress,
                                    checkpoint=checkpoint, resume=resume)]


def _batched_eval(model: nn.Module, x: Tensor, batch_size: int, fn: Callable[[Tensor, slice], Tensor]) -> Tensor:
    """Sum of ``fn(model(x[i:j]), slice(i, j))`` over batches, in eval mode under no_grad; mode restored."""
    if x.shape[0] == 0:
        raise ValueError("no data to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            total += fn(model(x[sl].to(device)), sl).to(torch.float64)
    return total


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Share of inputs whose argmax logit equals the label, in eval mode without gradients.

    The model's train/eval mode is restored afterwards.
    """
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    hits = _batched_eval(model, x, batch_size, lambda out, sl: (out.argmax(1) == y[sl].to(out.device)).sum())
    return float(hits) / x.shape[0]


def reconstruction_mse(model: nn.Module, x: Tensor, target: Tensor | None = None, batch_size: int = 1024) -> float:
    """Mean squared error of ``model(x)`` against ``target`` (default ``x``) over all elements.

    Eval mode without gradients; the model's mode is restored afterwards.
    """
    t = x if target is None else target
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"x and target differ in length: {x.shape[0]} vs {t.shape[0]}")
    sse = _batched_eval(model, x, batch_size, lambda out, sl: (out - t[sl].to(out.device)).square().sum())
    return float(sse) / t.numel()


def save_model(path: str | os.PathLike[str], model: nn.Module, name: str,
               training: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """Save a registered model as ``{"name", "kwargs", "state_dict"}`` (tensors on CPU), atomically.

    Args:
        path: destination file (parent folders are created).
        model: the trained model.
        name: its key in :data:`pertattack.models.MODELS`.
        training: a training state (the ``checkpoint`` argument of :func:`adversarial_training` and
            :func:`train_classifier`), saved beside the weights under ``"training"`` so that the training can
            resume (:func:`load_training_state`); None: the weights only.
        **kwargs: the constructor arguments it was built with (plain Python values: ints,
            floats, strings, tuples, lists, dicts), so that ``build_model(name, **kwargs)``
            rebuilds its architecture.

    Raises:
        ValueError: ``name``/``kwargs`` do not rebuild an architecture matching ``model``.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        check_record(name, kwargs, state)
    except ValueError as err:
        raise ValueError(f"build_model({name!r}, **{kwargs}) does not match the model being saved: {err}") from err
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        record = {"format": _FORMAT, "name": name, "kwargs": kwargs, "state_dict": state}
        torch.save(record if training is None else dict(record, training=training), tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_MAX_DEPTH = 4
_MAX_ITEMS = 64


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """A recorded constructor argument is a plain value: bool, int, finite float, str, None, or a
    short list/tuple/dict of those (nesting <= 4, <= 64 items)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}")
        return
    if isinstance(value, (list, tuple, dict)):
        if len(value) > _MAX_ITEMS:
            raise ValueError(f"{where} has {len(value)} items (at most {_MAX_ITEMS})")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(value, dict) and not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}[{k!r}]", depth + 1)
        return
    raise ValueError(f"{where} is a {type(value).__name__}, not a plain value")


def _shape_summary(problems: list[str]) -> str:
    head = "; ".join(problems[:3])
    return head + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def check_record(name: Any, kwargs: Any, state_dict: Any) -> None:
    """Check a checkpoint's record before any model is built for real.

    ``name`` must be a key of :data:`pertattack.models.MODELS`, ``kwargs`` a dict of plain values
    (see :func:`save_model`), and the architecture they describe must have exactly the tensors of
    ``state_dict`` (names and shapes). The architecture is built on PyTorch's ``meta`` device, which
    allocates no memory: a record such as ``hidden=[100000, 100000]`` is refused here instead of
    allocating 40 GB, and the model built afterwards is never larger than the weights the file holds.

    Raises:
        ValueError: what is wrong, naming the argument or the first mismatching tensors.
    """
    if not isinstance(name, str):
        raise ValueError(f"the model name is a {type(name).__name__}, not a string")
    key = name.strip().lower().replace("_", "-")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("the model arguments are not a dict with string keys")
    for k, v in kwargs.items():
        _check_plain(v, f"model argument {k!r}")
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()
    ):
        raise ValueError("the state_dict is not a mapping of names to tensors")
    try:
        with torch.device("meta"):
            skeleton = MODELS[key](**kwargs)
    except Exception as err:  # noqa: BLE001 - any constructor failure means the record is wrong
        raise ValueError(f"the arguments {kwargs} do not build {key!r}: {type(err).__name__}: {err}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [
        f"{k} has shape {tuple(state_dict[k].shape)}, the arguments {kwargs} give {shape}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    if problems:
        want = sum(math.prod(shape) for shape in expected.values())
        have = sum(t.numel() for t in state_dict.values())
        sizes = f" (they describe {want:,} numbers, the file holds {have:,})" if want != have else ""
        raise ValueError(f"the weights do not fit {key!r} built with {kwargs}{sizes}: {_shape_summary(problems)}")


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (read with ``weights_only=True``: no code runs).

    The record (name, arguments, tensor names and shapes) is checked by :func:`check_record` before the
    model is built, so a hostile or corrupt file can neither run code nor make it allocate more than
    the weights it holds.

    Returns:
        The model on ``map_location``, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, a file that is not a pertattack checkpoint, a bad record, weights that do
            not fit the recorded architecture, or an unknown device.
    """
    path = Path(path)
    try:
        device = torch.device(map_location)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"unknown device {map_location!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {map_location!r}: CUDA is not available on this machine")
    ckpt = _read_checkpoint(path)
    model = build_model(ckpt["name"], seed=0, **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The record of a checkpoint file, read with ``weights_only=True`` and checked (:func:`check_record`)."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, UnicodeDecodeError) as err:  # what torch.load raises on a foreign or truncated file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path}: not a pertattack checkpoint (torch.load could not read it: "
                         f"{type(err).__name__}{': ' + first if first else ''})") from err
    if not isinstance(ckpt, dict) or not {"name", "kwargs", "state_dict"} <= ckpt.keys():
        raise ValueError(f"{path}: not a pertattack checkpoint (expected keys name, kwargs, state_dict)")
    try:
        check_record(ckpt["name"], ckpt["kwargs"], ckpt["state_dict"])
    except ValueError as err:
        raise ValueError(f"{path}: bad checkpoint: {err}") from None
    return ckpt


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training state saved beside a checkpoint's weights (``save_model(..., training=state)``), to give
    as ``resume=`` with the model of :func:`load_model`; None when the file holds the weights only.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_model`; a ``training`` entry that is not a dict.
    """
    path = Path(path)
    state = _read_checkpoint(path).get("training")
    if state is not None and not isinstance(state, dict):
        raise ValueError(f"{path}: bad checkpoint: its training state is a {type(state).__name__}, not a dict")
    return state
