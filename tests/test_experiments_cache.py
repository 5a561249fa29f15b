"""The `reproduce` model cache: keyed by the training data, and a corrupt file is retrained with a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pertattack.data import write_idx
from pertattack.data.idx import load_mnist
from pertattack.experiments.common import cached_model, data_digest
from pertattack.experiments.paper import cache_tag
from pertattack.models import build_model

KW = {"in_shape": (1, 4, 4), "hidden": (8,), "classes": 3}


def test_data_digest_identifies_the_data() -> None:
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5)
    d = data_digest(x, y)
    assert len(d) == 12 and d == data_digest(x.clone(), y.clone())
    x2 = x.clone()
    x2[4, 0, 3, 3] += 1e-6  # one value
    others = {data_digest(x2, y), data_digest(x, y.flip(0)), data_digest(x[:4], y[:4]), data_digest(x.double(), y),
              data_digest(x.reshape(5, 16), y), data_digest(x)}
    assert d not in others and len(others) == 6


def _mnist_root(root: Path, seed: int, n: int = 6) -> Path:
    g = torch.Generator().manual_seed(seed)
    for prefix in ("train", "t10k"):
        root.mkdir(parents=True, exist_ok=True)
        write_idx(root / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g).to(torch.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=g).to(torch.uint8))
    return root


def test_another_root_never_reuses_a_cached_model(tmp_path: Path) -> None:
    a = load_mnist(_mnist_root(tmp_path / "a", 0), "train")
    b = load_mnist(_mnist_root(tmp_path / "b", 1), "train")
    same = load_mnist(_mnist_root(tmp_path / "c", 0), "train")  # a copy of a elsewhere: the same data
    tag = cache_tag("mnist", "fcnn", 3, 0, *a)
    assert tag.startswith("mnist-fcnn-e3-s0-")
    assert cache_tag("mnist", "fcnn", 3, 0, *b) != tag
    assert cache_tag("mnist", "fcnn", 3, 0, *same) == tag


def test_cached_model_trains_once_per_tag_and_retrains_a_corrupt_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path))
    trained: list[str] = []
    messages: list[str] = []

    def get(tag: str) -> torch.nn.Module:
        def train(model: torch.nn.Module) -> None:
            trained.append(tag)
            with torch.no_grad():
                model.net[1].bias.fill_(len(trained))  # tells the trainings apart

        return cached_model("fcnn", tag, train, log=messages.append, warn=messages.append, **KW)

    m1 = get("a")
    assert trained == ["a"] and (tmp_path / "a.pt").exists()
    assert torch.equal(get("a").net[1].bias, m1.net[1].bias) and trained == ["a"]  # loaded, not retrained
    get("b")
    assert trained == ["a", "b"]
    for corrupt in (b"", b"not a checkpoint", (tmp_path / "a.pt").read_bytes()[:100]):
        (tmp_path / "a.pt").write_bytes(corrupt)
        messages.clear()
        model = get("a")
        assert trained[-1] == "a" and isinstance(model, type(m1))
        assert any(m.startswith(f"warning: cached model {tmp_path / 'a.pt'} is unusable") for m in messages)
    assert len(trained) == 5
    torch.save({"weights": 1}, tmp_path / "a.pt")  # a foreign checkpoint
    get("a")
    assert len(trained) == 6
    from pertattack.training import save_model

    save_model(tmp_path / "c.pt", build_model("lenet5", seed=0), "lenet5")  # another model under this tag
    messages.clear()
    get("c")
    assert len(trained) == 7 and any("is a LeNet5, not a fcnn" in m for m in messages)


def test_corrupt_cache_message_goes_to_stderr(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path))
    (tmp_path / "t.pt").write_bytes(b"\x00" * 10)
    cached_model("fcnn", "t", lambda model: None, log=lambda m: None, **KW)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cached model") and "training it again" in err[0]
