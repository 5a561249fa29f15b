"""Adversarial training (issue 20): the model is trained on the attack's x_adv, in train mode, attacked in eval mode;
reproducible; clear errors; and the command on the digits."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DTYPE, MLP, MLP_SHAPE, ConvNet, gen, modes, no_grads, rand_x
from torch.nn import functional as F

import pertattack
from pertattack import adversarial_training, get_attack
from pertattack.cli import main
from pertattack.training import load_model, train_classifier

N = 24


def data(shape: tuple[int, ...] = MLP_SHAPE, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return rand_x(N, shape, seed=3), torch.randint(0, k, (N,), generator=gen(4))


class Spy:
    """An attack that records what it was called with and what it returned."""

    def __init__(self, inner: Any, calls: list[dict[str, Any]] | None = None):
        self.inner = inner
        self.calls = [] if calls is None else calls

    objective = property(lambda self: self.inner.objective)
    eps = property(lambda self: self.inner.eps)
    minimum_norm = property(lambda self: self.inner.minimum_norm)

    def replace(self, **kw: Any) -> Spy:
        return Spy(self.inner.replace(**kw), self.calls)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Any:
        training = model.training
        r = self.inner(model, x, y, **kw)
        self.calls.append(dict(x=x.clone(), y=y.clone(), index=kw["index"].clone(), x_adv=r.x_adv.clone(),
                               training=training, seed=self.inner.seed))
        return r


def pgd(**kw: Any) -> Any:
    return get_attack("pgd", eps=0.1, steps=3, **kw)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_one_step_is_adam_on_the_attacks_x_adv(mix: float) -> None:
    x, y = data()
    model = MLP()
    by_hand = copy.deepcopy(model)
    spy = Spy(pgd())
    losses = adversarial_training(model, x, y, spy, epochs=1, batch_size=N, lr=0.01, seed=7, mix=mix)
    (call,) = spy.calls
    assert call["training"] and call["seed"] == 7  # trained in train mode; the attack seeded by the run's seed
    perm = call["index"]
    assert torch.equal(call["x"], x[perm]) and torch.equal(call["y"], y[perm])
    assert not torch.equal(call["x_adv"], call["x"])
    # the same step written by hand
    opt = torch.optim.Adam(by_hand.parameters(), lr=0.01)
    adv = F.cross_entropy(by_hand(call["x_adv"]), call["y"])
    clean = F.cross_entropy(by_hand(call["x"]), call["y"])
    loss = mix * clean + (1 - mix) * adv if mix else adv
    loss.backward()
    opt.step()
    for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (h,) = losses
    adv, clean, loss = float(adv.detach()), float(clean.detach()), float(loss.detach())
    assert h["adversarial"] == pytest.approx(adv) and h["clean"] == pytest.approx(clean)
    assert h["loss"] == pytest.approx(loss) and h["adversarial"] > h["clean"]


def test_index_covers_the_data_and_changes_per_epoch() -> None:
    x, y = data()
    spy = Spy(pgd())
    adversarial_training(MLP(), x, y, spy, epochs=2, batch_size=5, seed=0)
    assert len(spy.calls) == 2 * 5
    for epoch in range(2):
        index = torch.cat([c["index"] for c in spy.calls[epoch * 5 : (epoch + 1) * 5]])
        assert sorted(index.tolist()) == list(range(epoch * N, (epoch + 1) * N))


def test_modes_restored_attacked_in_eval_no_grads_left() -> None:
    x, y = data((2, 6, 6), 3)
    model = ConvNet()
    model.eval()
    model.drop.train()  # a mixed state must come back as it was
    before = modes(model)
    seen: list[bool] = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    x0 = x.clone()
    adversarial_training(model, x, y, pgd(), epochs=1, batch_size=8, seed=0)
    assert modes(model) == before and no_grads(model)
    assert x.grad is None and not x.requires_grad and torch.equal(x, x0)
    # per batch: the check of f(x) (a random start's, b478570), 3 PGD steps and the success check in eval mode, the
    # training forward in train mode, the clean loss (reported) in eval mode
    assert seen.count(True) == 3 and len(seen) == 3 * 7


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    x, y = data()

    models = [MLP() for _ in range(3)]  # nn.Linear's own initialisation draws from the global RNG
    torch.manual_seed(0)
    state = torch.get_rng_state()
    fgsm = get_attack("fgsm", eps=0.1, random_start=True)
    la, lb, _ = [adversarial_training(m, x, y, fgsm, epochs=2, batch_size=10, seed=seed, mix=0.5)
                 for m, seed in zip(models, (1, 1, 2), strict=True)]
    assert torch.equal(torch.get_rng_state(), state)
    a, b, c = models
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_a_cascade_as_the_inner_attack() -> None:
    x, y = data()
    model = MLP()
    h = adversarial_training(model, x, y, pertattack.cascade(["fgsm", "bim"], eps=0.1), epochs=1, batch_size=12)
    assert len(h) == 1 and h[0]["adversarial"] >= h[0]["clean"]


@pytest.mark.parametrize("attack, kw, match", [
    (get_attack("pgd"), {}, "no budget"),
    (get_attack("pgd", eps=[0.1, 0.2]), {}, "several budgets"),
    (get_attack("targeted", eps=0.1), {}, "untargeted classification"),
    (get_attack("pgd", eps=0.1), {"mix": 1.5}, "mix"),
    (get_attack("pgd", eps=0.1), {"mix": True}, "mix"),
    (get_attack("pgd", eps=0.1), {"lr": -1.0}, "lr"),
])
def test_bad_arguments(attack: Any, kw: dict[str, Any], match: str) -> None:
    x, y = data()
    with pytest.raises(ValueError, match=match):
        adversarial_training(MLP(), x, y, attack, epochs=1, **kw)


def test_bad_attack_and_labels() -> None:
    x, y = data()
    with pytest.raises(TypeError, match="must be an attack"):
        adversarial_training(MLP(), x, y, lambda m, x, y: x)
    with pytest.raises(ValueError, match="int64 labels"):
        adversarial_training(MLP(), x, y.to(DTYPE), pgd())
    with pytest.raises(ValueError, match="differ in length"):
        adversarial_training(MLP(), x, y[:-1], pgd())


def test_cli_train_adversarial_on_digits(tmp_path, capsys) -> None:
    ckpt = tmp_path / "adv.pt"
    assert main(["train", "smallcnn", "--data", "digits", "--n", "64", "--epochs", "2", "--batch-size", "32",
                 "--adversarial", "pgd", "--eps", "0.1", "--set", "steps=2", "--mix", "0.5", "--out", str(ckpt)]) == 0
    out = capsys.readouterr()
    assert "test error" in out.out and "epoch 2/2: loss" in out.out and "adversarial" in out.out
    model = load_model(ckpt)
    assert isinstance(model, torch.nn.Module) and not model.training


@pytest.mark.parametrize("argv, match", [
    (["--mix", "0.5"], "--mix go"),
    (["--eps", "0.1"], "--eps go"),
    (["--adversarial", "pgd"], "one budget"),
    (["--adversarial", "pgd", "--eps", "0.1", "--mix", "2"], "in \\[0, 1\\]"),
    (["--adversarial", "targeted", "--eps", "0.1"], "untargeted"),
    (["--beta", "6"], "--beta go"),
    (["--adversarial", "trades", "--eps", "0.1", "--beta", "6", "--mix", "0.5"], "without --mix"),
])
def test_cli_train_adversarial_errors(tmp_path, capsys, argv: list[str], match: str) -> None:
    assert main(["train", "smallcnn", "--data", "digits", "--out", str(tmp_path / "m.pt"), *argv]) == 2
    err = capsys.readouterr().err
    assert "pertattack train: error:" in err
    assert re.search(match, err), err


def _rank_main(rank: int, world: int, port: int, out: str, mix: float, resume: bool) -> None:
    import os

    import torch.distributed as dist

    code = 1
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        x, y = data()
        model = MLP()
        kw: dict[str, Any] = dict(batch_size=8, lr=0.01, seed=0, mix=mix)
        if resume:  # 1 epoch, rank 0 saves the state (every rank's RNG), every rank reads it back and goes on to 2
            adversarial_training(model, x, y, pgd(), epochs=1, checkpoint=lambda s: torch.save(s, f"{out}/s.pt"),
                                 **kw)
            dist.barrier()
            kw["resume"] = torch.load(f"{out}/s.pt", weights_only=True)
            assert len(kw["resume"]["rng"]) == world
        h = adversarial_training(model, x, y, pgd(), epochs=2, **kw)
        torch.save({"weights": [p.detach() for p in model.parameters()], "history": h}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("mix, resume", [(0.0, False), (0.5, True)])
def test_two_ranks_train_as_one_process(tmp_path, mix: float, resume: bool) -> None:
    """DistributedDataParallel over 2 gloo ranks (forked processes, as torchrun would start them): each rank
    attacks half of every batch; the weights are those of one process on the whole batches (float64, up to
    rounding), the same on both ranks; also when stopped after an epoch and resumed from the checkpoint."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context(os.environ.get("PERTATTACK_TEST_START", "spawn" if torch.cuda.is_available()
                                                           else "fork"))
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, str(tmp_path), mix, resume)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    x, y = data()
    model = MLP()
    h = adversarial_training(model, x, y, pgd(), epochs=2, batch_size=8, lr=0.01, seed=0, mix=mix)
    for a, b, c in zip(r0["weights"], r1["weights"], model.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c.detach(), rtol=1e-9, atol=1e-9)
    assert r0["history"] == r1["history"]
    for got, want in zip(r0["history"], h, strict=True):
        assert got == pytest.approx(want, rel=1e-9)


def _cli_rank(rank: int, world: int, port: int, argv: list[str], log: str) -> None:
    import os
    import sys

    code = 1
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        torch.set_num_threads(1)
        sys.stdout = sys.stderr = open(log, "w")  # noqa: SIM115 - closed by os._exit's flush below
        code = main(argv)
        sys.stdout.flush()
    finally:
        os._exit(code)


def test_cli_train_adversarial_two_ranks(tmp_path) -> None:
    """``torchrun --nproc-per-node 2 -m pertattack train ... --adversarial pgd``, ranks forked with torchrun's
    environment: rank 0 saves weights close to one process's (float32) and alone reports."""
    import os
    import socket

    def argv(out: str) -> list[str]:
        return ["train", "smallcnn", "--data", "digits", "--limit", "64", "--epochs", "1", "--batch-size", "32",
                "--adversarial", "pgd", "--eps", "0.1", "--set", "steps=2", "--device", "cpu", "--out", out]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context(os.environ.get("PERTATTACK_TEST_START", "spawn" if torch.cuda.is_available()
                                                           else "fork"))
    ddp = tmp_path / "ddp.pt"
    procs = [ctx.Process(target=_cli_rank, args=(r, 2, port, argv(str(ddp)), str(tmp_path / f"rank{r}.log")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert [p.exitcode for p in procs] == [0, 0], logs
    assert "saved" in logs[0] and "saved" not in logs[1] and "test error" not in logs[1]
    one = tmp_path / "one.pt"
    assert main(argv(str(one))) == 0
    for a, b in zip(load_model(ddp).parameters(), load_model(one).parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_torchrun_leaves_the_train_options_to_us() -> None:
    """torchrun takes abbreviations of its own options even after ``-m pertattack``: every option of ``train``
    but ``--n`` (a prefix of ``--nnodes``; ``--limit`` is its other name) must not be a prefix of one of them."""
    from pertattack.cli import build_parser

    run = pytest.importorskip("torch.distributed.run")
    theirs = [s for a in run.get_args_parser()._actions for s in a.option_strings]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    ours = [s for a in sub.choices["train"]._actions for s in a.option_strings if s not in ("-h", "--help", "--n")]
    assert {"--adversarial", "--eps", "--set", "--mix", "--limit", "--beta", "--resume"} <= set(ours)
    for opt in ours:
        assert not any(t.startswith(opt) for t in theirs), f"{opt} is a prefix of a torchrun option"


def test_fgsm_rs_is_wongs_recipe() -> None:
    """``fgsm-rs`` (Wong et al. 2020): from a start uniform in the eps ball, one step of 1.25 eps along the sign of
    the cross-entropy's gradient, projected on the ball and clipped to the box, written here by hand."""
    x, y = data()
    model = MLP()
    eps = 0.1
    start = get_attack("fgsm-rs", eps=eps, seed=5, step_scale=1e-30)(model, x, y).x_adv  # the same draw, no step
    assert 0 < float((start - x).abs().amax()) <= eps and float((start - x).abs().amin()) < eps / 2
    x0 = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    want = torch.min(torch.max(start + 1.25 * eps * g.sign(), x - eps), x + eps).clamp(0, 1)
    got = get_attack("fgsm-rs", eps=eps, seed=5)(model, x, y).x_adv
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert float((got - x).abs().amax()) == pytest.approx(eps)


def _resumed(build: Any, epochs: int, stop: int, **kw: Any) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train ``stop`` epochs keeping the checkpoints' states, go through a file as torch.save/load(weights_only) would
    give them back, then resume a copy of the weights to ``epochs``."""
    import io

    model = build()
    states: list[dict[str, Any]] = []
    adversarial_training(model, *data((2, 6, 6), 3), pgd(), epochs=stop, checkpoint=states.append, **kw)
    assert [s["epoch"] for s in states] == list(range(1, stop + 1))
    buf = io.BytesIO()
    torch.save({"weights": model.state_dict(), "training": states[-1]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    again = build()  # another model, the saved weights: the interrupted process is gone
    again.load_state_dict(saved["weights"])
    h = adversarial_training(again, *data((2, 6, 6), 3), pgd(), epochs=epochs, resume=saved["training"], **kw)
    return again, h


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_resume_gives_the_weights_of_an_uninterrupted_run(mix: float) -> None:
    """float64, a model with dropout (the RNG state), Adam's moments, the shuffling and the attack's random starts
    (index e * N + i): stopped after 1 or 2 of 3 epochs and resumed, the weights and losses are those of one run."""
    kw = dict(batch_size=8, lr=0.01, seed=3, mix=mix)
    one = ConvNet()
    h = adversarial_training(one, *data((2, 6, 6), 3), pgd(), epochs=3, **kw)
    for stop in (1, 2):
        again, h2 = _resumed(ConvNet, 3, stop, **kw)
        assert h2 == h
        for a, b in zip(one.parameters(), again.parameters(), strict=True):
            assert torch.equal(a, b)


def test_resume_refuses_another_run() -> None:
    states: list[dict[str, Any]] = []
    x, y = data()
    model = MLP()
    adversarial_training(model, x, y, pgd(), epochs=2, batch_size=8, checkpoint=states.append)
    for kw, match in [(dict(batch_size=4), "batch_size 8 \\(now 4\\)"), (dict(epochs=1), "done 2 epochs"),
                      (dict(mix=0.5), "mix 0.0 \\(now 0.5\\)"),
                      (dict(attack=get_attack("pgd", eps=0.1, steps=4)), "recipe")]:
        args = dict(dict(epochs=3, batch_size=8), **kw)
        attack = args.pop("attack", pgd())
        with pytest.raises(ValueError, match=match):
            adversarial_training(MLP(), x, y, attack, resume=states[-1], **args)
    with pytest.raises(ValueError, match="not a training state"):
        adversarial_training(MLP(), x, y, pgd(), epochs=3, batch_size=8, resume={"epoch": 1})
    with pytest.raises(ValueError, match="other settings: n 24 \\(now 12\\)"):
        adversarial_training(MLP(), x[:12], y[:12], pgd(), epochs=3, batch_size=8, resume=states[-1])
    with pytest.raises(ValueError, match="recipe \"Attack\\('pgd'.*\\(now ''\\)"):  # plain training: another recipe
        train_classifier(MLP(), x, y, epochs=3, batch_size=8, resume=states[-1])


def test_cli_resume_continues_to_the_uninterrupted_weights(tmp_path, capsys) -> None:
    """``pertattack train ... --out b.pt`` for 1 epoch, then ``--resume b.pt`` to 2: the weights of a 2-epoch run,
    bit for bit (one process, the same thread count); plain training too. A checkpoint without a training state,
    another model's and other options are refused."""
    from pertattack.training import load_training_state, save_model

    def train(out: Path, epochs: int, *extra: str) -> list[torch.Tensor]:
        argv = ["train", "smallcnn", "--data", "digits", "--n", "64", "--batch-size", "16", "--epochs", str(epochs),
                "--out", str(out), *extra]
        assert main(argv) == 0, capsys.readouterr().err
        return [p.detach() for p in load_model(out).parameters()]

    adv = ["--adversarial", "pgd", "--eps", "0.1", "--set", "steps=2"]
    trades = ["--adversarial", "trades", "--eps", "0.1", "--set", "steps=2", "--beta", "6"]
    for extra in (adv, [], trades):
        whole = train(tmp_path / "a.pt", 2, *extra)
        train(tmp_path / "b.pt", 1, *extra)
        assert load_training_state(tmp_path / "b.pt")["epoch"] == 1
        resumed = train(tmp_path / "c.pt", 2, "--resume", str(tmp_path / "b.pt"), *extra)
        assert all(torch.equal(a, b) for a, b in zip(whole, resumed, strict=True))
        assert load_training_state(tmp_path / "c.pt")["epoch"] == 2
    save_model(tmp_path / "w.pt", load_model(tmp_path / "a.pt"), "smallcnn")
    base = ["train", "smallcnn", "--data", "digits", "--n", "64", "--batch-size", "16", "--out", str(tmp_path / "d.pt")]
    for argv, match in [(["--resume", str(tmp_path / "w.pt")], "weights only, no training state"),
                        (["--resume", str(tmp_path / "nothing.pt")], "no such checkpoint"),
                        (["--resume", str(tmp_path / "b.pt"), "--batch-size", "32"], "batch_size 16 \\(now 32\\)")]:
        assert main(base + argv) == 2
        assert re.search(match, capsys.readouterr().err)
    argv = ["train", "fcnn", "--data", "digits", "--out", str(tmp_path / "e.pt"), "--resume", str(tmp_path / "b.pt")]
    assert main(argv) == 2 and "holds a SmallCNN, not a fcnn" in capsys.readouterr().err


def test_kl_objective_is_minus_trades_kl() -> None:
    """The ``kl`` objective: -KL(p(x) || p(x+eta)) on the softmax, 0 with a zero gradient at x; the ``trades``
    preset (random start, 10 steps of eps/4, projected) drives the KL far above that of its random start."""
    from pertattack.objectives import KL, Context

    x, y = data()
    model = MLP()
    obj = KL()
    ctx = Context(label=y)
    obj.prepare(model(x), ctx)
    v0, g0, _ = obj.value_and_grad(model, x, ctx)
    assert torch.equal(v0, torch.zeros_like(v0)) or float(v0.abs().max()) < 1e-15
    assert float(g0.abs().max()) < 1e-12
    x2 = rand_x(N, MLP_SHAPE, seed=9)
    p, q = model(x).softmax(1), model(x2).softmax(1)
    torch.testing.assert_close(obj.value_and_grad(model, x2, ctx)[0], -(p * (p / q).log()).sum(1))

    def kl(xa: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.kl_div(model(xa).log_softmax(1), model(x).log_softmax(1), reduction="none",
                            log_target=True).sum(1)

    trades = get_attack("trades", eps=0.1, seed=0)(model, x, y)
    start = get_attack("trades", eps=0.1, seed=0, step_scale=1e-30)(model, x, y)  # the same random start
    assert (kl(trades.x_adv) > 2 * kl(start.x_adv)).all()
    assert float((trades.x_adv - x).abs().amax()) <= 0.1 + 1e-12


def test_trades_step_is_adam_on_ce_plus_beta_kl() -> None:
    """``beta``: one step is Adam on CE(x) + beta * KL(p(x) || p(x_adv)) (batch mean), through both outputs, at the
    attack's x_adv; the history reports the KL term as ``adversarial``."""
    x, y = data()
    model = MLP()
    by_hand = copy.deepcopy(model)
    spy = Spy(get_attack("trades", eps=0.1, steps=3))
    (h,) = adversarial_training(model, x, y, spy, epochs=1, batch_size=N, lr=0.01, seed=2, beta=6.0)
    (call,) = spy.calls
    opt = torch.optim.Adam(by_hand.parameters(), lr=0.01)
    p = by_hand(call["x"]).softmax(1)
    q = by_hand(call["x_adv"]).softmax(1)
    ce = F.cross_entropy(by_hand(call["x"]), call["y"])
    kl = (p * (p / q).log()).sum(1).mean()
    (ce + 6.0 * kl).backward()
    opt.step()
    ce, kl = ce.detach(), kl.detach()
    for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert h["clean"] == pytest.approx(float(ce)) and h["adversarial"] == pytest.approx(float(kl))
    assert h["loss"] == pytest.approx(float(ce + 6.0 * kl))
    for bad in (dict(beta=-1.0), dict(beta=6.0, mix=0.5), dict(beta=math.nan), dict(beta=True)):
        with pytest.raises(ValueError, match="beta"):
            adversarial_training(MLP(), x, y, pgd(), **bad)
