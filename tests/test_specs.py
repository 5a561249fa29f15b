"""One front door for --model and --data (pertattack.specs): `run` takes what `evaluate` takes, and the same bad
spec gives the same one-line error from both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

import eval_callables  # noqa: E402  (tests/ is on sys.path, as for conftest)

from pertattack import get_attack  # noqa: E402
from pertattack.cli import main  # noqa: E402
from pertattack.specs import UsageError, load_data_spec, load_model_spec  # noqa: E402


@pytest.mark.parametrize("data", ["eval_callables:digits_test", "eval_callables:DigitsDataset"])
def test_run_takes_callables_for_model_and_data(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    npz = tmp_path / "adv.npz"
    assert main(["run", "fgsm", "--model", "eval_callables:centroids", "--data", data, "--n", "40", "--eps", "0.1",
                 "--device", "cpu", "--out", str(npz)]) == 0
    assert "eps 0.1: fooling ratio" in capsys.readouterr().out
    x, y = eval_callables.digits_test()
    ref = get_attack("fgsm", eps=0.1, seed=0)(eval_callables.centroids(), x[:40], y[:40])
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["label"], y[:40].numpy())
    np.testing.assert_array_equal(saved["x_adv"], ref.x_adv.numpy())


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and captured.out == "", captured
    return lines[0].split(": error: ", 1)[1]


@pytest.fixture
def garbage(tmp_path: Path) -> str:
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    return str(tmp_path / "garbage.pt")


@pytest.mark.parametrize(("model", "data", "message"), [
    ("eval_callables:nothing", "digits", "has no attribute 'nothing'"),
    ("no_such_module_xyz:f", "digits", "cannot import 'no_such_module_xyz'"),
    ("eval_callables:digits_test", "digits", "gave a tuple, not a torch.nn.Module"),
    ("missing.pt", "digits", "no such checkpoint (no such file)"),
    ("{tmp}", "digits", "is a folder, not a checkpoint file"),
    ("{garbage}", "digits", "not a pertattack checkpoint"),
    ("eval_callables:centroids", "imagenet", "invalid choice: 'imagenet' (choose from mnist, cifar10, digits"),
    ("eval_callables:centroids", "eval_callables:centroids", "expected a Dataset of (x, y)"),
    ("eval_callables:centroids", "eval_callables:", "expected package.module:callable"),
    ("eval_callables:centroids", "eval_callables:float_labels", "labels y must be integer class indices"),  # issue 18
    ("eval_callables:centroids", "eval_callables:FloatLabelDataset", "labels y (item 0) must be integer class"),
    ("eval_callables:centroids", "eval_callables:uint8_inputs", "inputs x must be floating point"),
])
def test_the_same_bad_spec_gives_the_same_error_from_run_and_evaluate(
        model: str, data: str, message: str, garbage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model.format(tmp=tmp_path, garbage=garbage)
    run = _error(["run", "fgsm", "--model", model, "--data", data, "--eps", "0.1", "--device", "cpu"], capsys)
    evaluate = _error(["evaluate", "--model", model, "--data", data, "--attack", "fgsm", "--eps", "0.1",
                       "--device", "cpu", "--out", str(tmp_path / "ev"), "--no-progress"], capsys)
    assert run == evaluate and message in run, (run, evaluate)


def test_surrogate_errors_name_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(["run", "transfer", "--model", "eval_callables:centroids", "--surrogate", "missing.pt",
                   "--data", "digits", "--eps", "0.1", "--device", "cpu"], capsys)
    assert line.startswith("--surrogate missing.pt: no such checkpoint"), line


def test_loaders_in_python() -> None:
    model = load_model_spec("eval_callables:Centroids")  # a class is a callable returning a model
    assert isinstance(model, eval_callables.Centroids) and not model.training
    data = load_data_spec("eval_callables:DigitsDataset", limit=10)
    x, y = data.xy()
    assert len(data) == 10 and x.shape == (10, 1, 8, 8) and y.dtype == torch.long
    assert torch.equal(x, eval_callables.digits_test()[0][:10])
    with pytest.raises(UsageError, match="--split must be train or test"):
        load_data_spec("digits", split="val")
