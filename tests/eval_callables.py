"""``module:callable`` models and data for tests/test_evaluation.py (imported by name, as a user's would be).

Not a test module: pytest collects only ``test_*.py``.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import Tensor, nn

from pertattack.data import load_digits


def digits_test() -> tuple[Tensor, Tensor]:
    """The first 96 test digits in float64, as a pair of tensors."""
    x, y = load_digits("test")
    return x[:96].double(), y[:96]


class DigitsDataset(torch.utils.data.Dataset):
    """The same 96 digits as a map-style Dataset of (x, y) items."""

    def __init__(self) -> None:
        self.x, self.y = digits_test()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


class Centroids(nn.Module):
    """Nearest class mean of the digits training split, as a linear classifier (no training, float64):
    logit_k = mu_k . x - norm(mu_k)^2 / 2, followed by a tanh layer so that DeepFool needs several steps."""

    def __init__(self) -> None:
        super().__init__()
        x, y = load_digits("train")
        x = x.double().flatten(1)
        mu = torch.stack([x[y == k].mean(0) for k in range(10)])
        self.lin = nn.Linear(64, 10).double()
        with torch.no_grad():
            self.lin.weight.copy_(mu)
            self.lin.bias.copy_(-0.5 * mu.pow(2).sum(1))

    def forward(self, x: Tensor) -> Tensor:
        return 4 * torch.tanh(self.lin(x.flatten(1)) / 4)


def centroids() -> nn.Module:
    return Centroids()


class Failing(Centroids):
    """Raises on the rank named by $EVAL_TEST_FAIL_RANK, at its first forward call."""

    def forward(self, x: Tensor) -> Tensor:
        if os.environ.get("RANK", "0") == os.environ.get("EVAL_TEST_FAIL_RANK"):
            raise RuntimeError(f"boom on rank {os.environ.get('RANK')}")
        return super().forward(x)


def failing() -> nn.Module:
    return Failing()


class Killed(Centroids):
    """SIGKILLs its own process at forward call number $EVAL_TEST_KILL_CALL on rank $EVAL_TEST_KILL_RANK:
    a kill at a chosen moment, in the middle of a batch (in the first attempt only, when torchrun restarts)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if (os.environ.get("RANK", "0") == os.environ.get("EVAL_TEST_KILL_RANK")
                and str(self.calls) == os.environ.get("EVAL_TEST_KILL_CALL")
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):  # not again after torchrun's restart
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def killed() -> nn.Module:
    return Killed()


class Tupled(Centroids):
    """Returns (logits, features): needs ``--model-output 0``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return super().forward(x), x.flatten(1)


def tupled() -> nn.Module:
    return Tupled()


class ShiftedDataset(DigitsDataset):
    """The digits, with input 20 changed when $EVAL_TEST_SHIFT is set: a data set that changed between two runs."""

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = super().__getitem__(i)
        return (x + 0.25 if i == 20 and os.environ.get("EVAL_TEST_SHIFT") else x), y


def float_labels() -> tuple[Tensor, Tensor]:
    x, y = digits_test()
    return x, y.double() + 0.5


class FloatLabelDataset(DigitsDataset):
    def __getitem__(self, i: int) -> tuple[Tensor, float]:  # type: ignore[override]
        return self.x[i], float(self.y[i]) + 0.5


def uint8_inputs() -> tuple[Tensor, Tensor]:
    x, y = digits_test()
    return (x * 16).to(torch.uint8), y


def wrong_shape() -> tuple[Tensor, Tensor]:
    x, y = digits_test()
    return x.flatten(1)[:, :49].reshape(-1, 1, 7, 7), y


class Quantised(Centroids):
    """The centroids on inputs rounded to {0, 0.5, 1}: every input gradient is zero (gradient masking)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(torch.round(x * 2) / 2)


def quantised() -> nn.Module:
    return Quantised()
