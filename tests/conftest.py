"""Tiny models and inputs shared by the tests of the core (all built from fixed seeds, float64)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import Tensor, nn

# Property tests draw the same examples on every run and machine (no example database): a CI run is reproducible.
# A random draw found fmn's batch dependence at p = 2 (tests/test_attacks.py, 6e-3 at one boundary-hovering input).
settings.register_profile("pertattack", derandomize=True, database=None)
settings.load_profile("pertattack")

DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _init(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Deterministic parameters from a private generator (the global RNG is not touched)."""
    g = gen(seed)
    with torch.no_grad():
        for prm in module.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=prm.dtype) * scale / max(1, prm.shape[-1]) ** 0.5)
    return module


class BinaryAffine(nn.Module):
    """Two-class affine classifier: logits [0, w.x + b] (decision boundary w.x + b = 0)."""

    def __init__(self, w: Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.reshape(-1).to(DTYPE).clone())
        self.b = nn.Parameter(torch.tensor(float(b), dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        z = x.reshape(x.shape[0], -1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


class Affine(nn.Module):
    """K-class affine classifier W x + b on flattened inputs."""

    def __init__(self, m: int, k: int, seed: int = 0):
        super().__init__()
        self.lin = nn.Linear(m, k).to(DTYPE)
        _init(self, seed, 3.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    def __init__(self, m: int = 12, hidden: int = 16, k: int = 4, seed: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(m, hidden), nn.Tanh(), nn.Linear(hidden, k)).to(DTYPE)
        _init(self, seed, 3.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """(N, 2, 6, 6) -> 3 classes, with BatchNorm and Dropout (their train mode is batch-dependent/random)."""

    def __init__(self, seed: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.to(DTYPE)
        _init(self, seed, 2.0)
        g = gen(seed + 100)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.copy_(torch.randn(4, generator=g, dtype=DTYPE) * 0.1)
            self.bn.running_var.copy_(torch.rand(4, generator=g, dtype=DTYPE) + 0.5)
            self.bn.weight.copy_(torch.rand(4, generator=g, dtype=DTYPE) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


class Normalize(nn.Module):
    """Per-channel (x - mean) / std by hand, to compare with ``preprocess=(mean, std)``."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.as_tensor(mean, dtype=DTYPE).reshape(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=DTYPE).reshape(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


class DictModel(nn.Module):
    """Returns {'logits': ..., 'features': ...}."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"features": x.flatten(1), "logits": self.base(x)}


class TupleModel(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.base(x), x.flatten(1)


class CallCounter(nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.base(x)


MLP_SHAPE = (12,)
CONV_SHAPE = (2, 6, 6)


def rand_x(n: int, shape: tuple[int, ...], seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Inputs strictly inside the box [lo, hi] (float64)."""
    u = torch.rand((n, *shape), generator=gen(seed), dtype=DTYPE)
    return lo + (hi - lo) * (0.05 + 0.9 * u)


def no_grads(model: nn.Module) -> bool:
    return all(prm.grad is None for prm in model.parameters())


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread for the whole test run (restored afterwards).

    The tests call tiny models thousands of times: thread hand-off costs far more than it saves
    there, and on a busy 2-core machine it slowed them down by an order of magnitude (a 48 x 20
    matmul under forward AD was measured 100x slower with two threads than with one).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server on 127.0.0.1 for ``folder`` (the download tests); yields (url, request log)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
