"""Training utilities: convergence on a separable toy problem, seeding, RNG hygiene, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pertattack.models import build_model
from pertattack.training import (
    accuracy,
    load_model,
    reconstruction_mse,
    save_model,
    train_autoencoder,
    train_classifier,
)

TOY = {"in_shape": (1, 4, 4), "hidden": (16,), "classes": 2}


def _toy(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on either side of a fixed hyperplane, with a margin; inputs (N, 1, 4, 4) drawn by seed."""
    w = torch.randn(16, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    score = x.flatten(1) @ w
    keep = score.abs() > 0.5
    return x[keep], (score[keep] > 0).long()


def _train(seed: int = 0) -> tuple[torch.nn.Module, list[float]]:
    x, y = _toy()
    model = build_model("fcnn", seed=seed, **TOY)
    losses = train_classifier(model, x, y, epochs=15, batch_size=32, lr=1e-2, seed=seed)
    return model, losses


def test_train_classifier_learns_separable_problem() -> None:
    model, losses = _train()
    x, y = _toy(seed=0)
    x_test, y_test = _toy(seed=1)
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0]
    assert accuracy(model, x, y) > 0.9
    assert accuracy(model, x_test, y_test, batch_size=7) > 0.9


def test_same_seed_identical_weights() -> None:
    a, la = _train(seed=5)
    b, lb = _train(seed=5)
    c, _ = _train(seed=6)
    assert la == lb
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    model, _ = _train()
    x, y = _toy()
    accuracy(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_seeds_dropout_and_restores_mode() -> None:
    x, y = _toy()

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))

    a, b = make().eval(), make().eval()
    state = torch.get_rng_state()
    train_classifier(a, x, y, epochs=2, seed=1)
    train_classifier(b, x, y, epochs=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[2].weight, b[2].weight)
    assert not a.training  # mode restored
    assert all(p.grad is None for p in a.parameters())


def test_accuracy_restores_mode() -> None:
    model = build_model("fcnn", seed=0, **TOY)
    x, y = _toy()
    model.train()
    accuracy(model, x, y)
    assert model.training
    model.eval()
    accuracy(model, x, y)
    assert not model.training
    with pytest.raises(ValueError, match="differ in length"):
        accuracy(model, x, y[:-1])


def test_train_autoencoder_reduces_mse() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(256, 3, generator=g)
    basis = torch.rand(3, 16, generator=g)
    x = (codes @ basis / 3).reshape(-1, 1, 4, 4)  # data on a 3-dim subspace, in [0, 1]
    model = build_model("fc-ae", seed=0, in_shape=(1, 4, 4), code=4, hidden=32)
    before = reconstruction_mse(model, x)
    losses = train_autoencoder(model, x, epochs=30, batch_size=32, lr=1e-2, seed=0)
    after = reconstruction_mse(model, x)
    assert losses[-1] < 0.2 * losses[0] and after < 0.2 * before


def test_save_load_round_trip(tmp_path: Path) -> None:
    model, _ = _train()
    path = tmp_path / "sub" / "toy.pt"
    save_model(path, model, "fcnn", **TOY)
    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    x, _ = _toy(seed=3)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["toy.pt"]  # no temporary file left


def test_save_model_checks_architecture(tmp_path: Path) -> None:
    model = build_model("fcnn", seed=0, **TOY)
    with pytest.raises(ValueError, match="does not match"):
        save_model(tmp_path / "m.pt", model, "fcnn")  # kwargs forgotten: 784 inputs, not 16
    assert not (tmp_path / "m.pt").exists()


def test_load_model_rejects_foreign_file(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pertattack checkpoint"):
        load_model(tmp_path / "other.pt")


def test_progress_bar_reports_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _toy()
    model = build_model("fcnn", seed=0, **TOY)
    quiet = train_classifier(model, x, y, epochs=2, seed=0)
    assert capsys.readouterr().err == ""
    model = build_model("fcnn", seed=0, **TOY)
    loud = train_classifier(model, x, y, epochs=2, seed=0, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/2: loss" in captured.out and "epoch 2/2: loss" in captured.out
    assert loud == quiet  # the bar does not change the run


# --- checkpoints are checked before anything is built ----------------------------------------------


def _write(path: Path, record: object) -> Path:
    torch.save(record, path)
    return path


def test_absurd_model_arguments_are_refused_before_allocation(tmp_path: Path) -> None:
    """hidden=[1e5, 1e5] would allocate 40 GB; the record is refused on the meta device, with no allocation."""
    import time
    import tracemalloc

    good = build_model("fcnn", seed=0, **TOY).state_dict()
    for hidden in ([100_000, 100_000], [1e5, 1e5]):
        path = _write(tmp_path / "absurd.pt", {"format": 1, "name": "fcnn", "kwargs": {"hidden": hidden},
                                               "state_dict": good})
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=r"absurd.pt: bad checkpoint: .*(do not fit|do not build) 'fcnn'"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50e6 and time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"name": "fcnn", "kwargs": {"hidden": [16], "bogus": 1}}, "do not build 'fcnn'.*bogus"),
        ({"name": "fcnn", "kwargs": {"hidden": [float("nan")]}}, r"'hidden'\[0\] is nan"),
        ({"name": "fcnn", "kwargs": {"hidden": list(range(100))}}, "has 100 items"),
        ({"name": "fcnn", "kwargs": {"hidden": torch.zeros(2)}}, "is a Tensor, not a plain value"),
        ({"name": "nope", "kwargs": {}}, "unknown model 'nope'"),
        ({"name": 3, "kwargs": {}}, "name is a int"),
        ({"name": "fcnn", "kwargs": [1]}, "not a dict"),
        ({"name": "fcnn", "kwargs": TOY, "state_dict": {"x": 1}}, "not a mapping of names to tensors"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, record: dict, match: str) -> None:
    full = {"format": 1, "state_dict": build_model("fcnn", seed=0, **TOY).state_dict(), **record}
    with pytest.raises(ValueError, match=match):
        load_model(_write(tmp_path / "bad.pt", full))


def test_mismatched_state_dict_names_the_tensors(tmp_path: Path) -> None:
    state = build_model("fcnn", seed=0, **TOY).state_dict()
    state.pop("net.1.bias")
    state["net.3.weight"] = torch.zeros(5, 5)
    state["extra"] = torch.zeros(1)
    path = _write(tmp_path / "m.pt", {"name": "fcnn", "kwargs": TOY, "state_dict": state})
    with pytest.raises(ValueError, match=r"missing net.1.bias; unexpected extra; net.3.weight has shape \(5, 5\)"):
        load_model(path)


def test_load_model_refuses_folders_garbage_and_bad_devices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a folder, not a checkpoint"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")
    for payload in (b"hello", b"", b"PK\x03\x04garbage"):
        (tmp_path / "g.pt").write_bytes(payload)
        with pytest.raises(ValueError, match=r"g.pt: not a pertattack checkpoint \(torch.load could not read it"):
            load_model(tmp_path / "g.pt")
    save_model(tmp_path / "ok.pt", build_model("fcnn", seed=0, **TOY), "fcnn", **TOY)
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        load_model(tmp_path / "ok.pt", map_location="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(tmp_path / "ok.pt", map_location="cuda")


def test_training_and_evaluation_restore_every_submodule_mode() -> None:
    """A model in train mode with one frozen (eval) submodule keeps exactly that after training and evaluation."""
    x, y = _toy()
    model = build_model("fcnn", seed=0, **TOY).train()
    model.net[1].eval()
    before = [m.training for m in model.modules()]
    train_classifier(model, x, y, epochs=1, seed=0)
    assert [m.training for m in model.modules()] == before
    accuracy(model, x, y)
    reconstruction_mse(torch.nn.Sequential(model, torch.nn.Flatten()), x, torch.zeros(x.shape[0], 2))
    assert [m.training for m in model.modules()] == before


def test_divergence_and_bad_learning_rates_are_errors() -> None:
    x, y = _toy(64)
    model = build_model("fcnn", seed=0, **TOY)
    for lr in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="finite lr > 0"):
            train_classifier(model, x, y, epochs=1, lr=lr)
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="training diverged: the mean loss of epoch 1 is nan"):
        train_classifier(model, bad, y, epochs=2, seed=0)
