"""Every user mistake on the command line: a non-zero exit, exactly one line on stderr, no traceback, and
nothing done before the check (nothing on stdout). ``--debug`` keeps the traceback.

Cases: 52 bad command lines in-process (CASES), 4 more about output paths checked before any work, 2 of
``--debug``; 4 through a subprocess (3 of them marked slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pertattack.cli import UsageError, main
from pertattack.models import build_model
from pertattack.training import save_model

pytest.importorskip("sklearn")  # the digits data set
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Checkpoints good and bad, a plain file and a folder."""
    d = tmp_path_factory.mktemp("cli-errors")
    save_model(d / "cnn.pt", build_model("smallcnn", seed=0), "smallcnn")
    save_model(d / "mnist-fcnn.pt", build_model("fcnn", seed=0, hidden=(8,)), "fcnn", hidden=(8,))
    kw = {"in_shape": (1, 8, 8), "code": 4, "hidden": 8}
    save_model(d / "ae.pt", build_model("fc-ae", seed=0, **kw), "fc-ae", **kw)
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint")
    state = build_model("smallcnn", seed=0).state_dict()
    state.pop("net.0.bias")
    torch.save({"format": 1, "name": "smallcnn", "kwargs": {}, "state_dict": state}, d / "mismatch.pt")
    torch.save({"format": 1, "name": "fcnn", "kwargs": {"hidden": [100_000, 100_000]}, "state_dict": {}},
               d / "absurd.pt")
    (d / "afile").write_text("a file")
    (d / "folder.npz").mkdir()
    return {k: str(d / v) for k, v in {
        "dir": ".", "cnn": "cnn.pt", "mnist": "mnist-fcnn.pt", "ae": "ae.pt", "foreign": "foreign.pt",
        "garbage": "garbage.pt", "mismatch": "mismatch.pt", "absurd": "absurd.pt", "file": "afile",
        "folder_npz": "folder.npz",
    }.items()}


RUN = ["run", "fgsm", "--model", "{cnn}", "--data", "digits", "--n", "5"]
TRAIN = ["train", "smallcnn", "--data", "digits"]
#: (case id, argv with {placeholders} from the files fixture, a piece of the expected message)
CASES = [
    ("run-device-bogus", [*RUN, "--eps", "0.1", "--device", "bogus"], "--device: 'bogus' is not a device"),
    ("run-device-cuda", [*RUN, "--eps", "0.1", "--device", "cuda:99"], "--device cuda:99"),
    ("run-out-under-file", [*RUN, "--eps", "0.1", "--out", "{file}/adv.npz"], "is a file, not a folder"),
    ("run-out-is-folder", [*RUN, "--eps", "0.1", "--out", "{folder_npz}"], "is a folder, not a file"),
    ("run-out-is-folder-npz", [*RUN, "--eps", "0.1", "--out", "{dir}/folder"], "folder.npz: is a folder"),
    ("run-out-empty", [*RUN, "--eps", "0.1", "--out", ""], "--out: empty path"),
    ("run-eps-empty", [*RUN, "--eps", ""], "--eps: expected a number"),
    ("run-eps-comma", [*RUN, "--eps", ","], "--eps: expected a number"),
    ("run-eps-abc", [*RUN, "--eps", "abc"], "--eps: 'abc' is not a number"),
    ("run-eps-double-comma", [*RUN, "--eps", "0.1,,0.2"], "--eps: empty entry"),
    ("run-eps-nan", [*RUN, "--eps", "nan"], "--eps: 'nan' is not a number"),
    ("run-eps-negative", [*RUN, "--eps", "0.1,-1"], "--eps: budgets must be >= 0"),
    ("run-batch-size-negative", [*RUN, "--eps", "0.1", "--batch-size", "-1"], "--batch-size must be >= 1"),
    ("run-batch-size-zero", [*RUN, "--eps", "0.1", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("run-n-zero", [*RUN, "--eps", "0.1", "--n", "0"], "--n must be >= 1, got 0"),
    ("run-n-negative", [*RUN, "--eps", "0.1", "--n", "-5"], "--n must be >= 1, got -5"),
    ("run-model-folder", ["run", "fgsm", "--model", "{dir}", "--data", "digits", "--eps", "0.1"],
     "is a folder, not a checkpoint"),
    ("run-model-missing", ["run", "fgsm", "--model", "{dir}/nope.pt", "--data", "digits", "--eps", "0.1"],
     "no such file"),
    ("run-model-garbage", ["run", "fgsm", "--model", "{garbage}", "--data", "digits", "--eps", "0.1"],
     "not a pertattack checkpoint"),
    ("run-model-foreign", ["run", "fgsm", "--model", "{foreign}", "--data", "digits", "--eps", "0.1"],
     "not a pertattack checkpoint"),
    ("run-model-text-file", ["run", "fgsm", "--model", "{file}", "--data", "digits", "--eps", "0.1"],
     "not a pertattack checkpoint"),
    ("run-model-mismatch", ["run", "fgsm", "--model", "{mismatch}", "--data", "digits", "--eps", "0.1"],
     "missing net.0.bias"),
    ("run-model-absurd", ["run", "fgsm", "--model", "{absurd}", "--data", "digits", "--eps", "0.1"],
     "they describe 10,079,600,010 numbers"),
    ("run-data-shape", ["run", "fgsm", "--model", "{mnist}", "--data", "digits", "--eps", "0.1"],
     "takes inputs of shape (1, 28, 28), but --data digits has inputs of shape (1, 8, 8)"),
    ("run-regression-on-classifier", ["run", "quadratic-l2", "--model", "{cnn}", "--data", "digits", "--eps", "0.1"],
     "'quadratic-l2' is a regression attack"),
    ("run-classification-on-autoencoder", ["run", "fgsm", "--model", "{ae}", "--data", "digits", "--eps", "0.1"],
     "'fgsm' attacks a classifier"),
    ("run-unknown-preset", ["run", "pgd-papr", "--model", "{cnn}", "--data", "digits"], "pgd-paper"),
    ("run-set-no-equals", [*RUN, "--set", "p"], "--set takes key=value"),
    ("run-set-unknown-key", [*RUN, "--set", "bogus=1"], "bogus"),
    ("run-mnist-root-missing", ["run", "fgsm", "--model", "{cnn}", "--data", "mnist", "--root", "{dir}/none"],
     "not found in"),
    ("run-cifar-root-missing", ["run", "fgsm", "--model", "{cnn}", "--data", "cifar10", "--root", "{dir}/none"],
     "not found in"),
    ("run-n-not-int", [*RUN, "--n", "abc"], "argument --n: invalid int value"),
    ("run-no-model", ["run", "fgsm"], "the following arguments are required: --model"),
    ("run-data-bogus", [*RUN, "--data", "bogus"], "argument --data: invalid choice"),
    ("train-out-under-file", [*TRAIN, "--out", "{file}/m.pt"], "is a file, not a folder"),
    ("train-out-folder", ["train", "smallcnn", "--data", "digits", "--out", "{dir}"], "is a folder, not a file"),
    ("train-n-zero", ["train", "smallcnn", "--data", "digits", "--n", "0", "--out", "{dir}/m.pt"], "--n must be >= 1"),
    ("train-epochs-negative", ["train", "smallcnn", "--data", "digits", "--epochs", "-1", "--out", "{dir}/m.pt"],
     "--epochs must be >= 0"),
    ("train-lr-zero", [*TRAIN, "--lr", "0", "--out", "{dir}/m.pt"], "--lr must be > 0"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "--out", "{dir}/m.pt"], "--lr must be > 0"),
    ("train-batch-size-zero", ["train", "smallcnn", "--data", "digits", "--batch-size", "0", "--out", "{dir}/m.pt"],
     "--batch-size must be >= 1"),
    ("train-unknown-model", ["train", "lenet", "--data", "digits", "--out", "{dir}/m.pt"], "unknown model 'lenet'"),
    ("train-data-shape", ["train", "fcnn", "--data", "digits", "--out", "{dir}/m.pt"], "takes inputs of shape"),
    ("train-device-bogus", ["train", "smallcnn", "--data", "digits", "--out", "{dir}/m.pt", "--device", "gpu"],
     "--device: 'gpu' is not a device"),
    ("demo-out-file", ["demo", "--out", "{file}"], "is a file, not a folder"),
    ("demo-eps-abc", ["demo", "--out", "{dir}/demo", "--eps", "0,abc"], "--eps: 'abc' is not a number"),
    ("reproduce-unknown", ["reproduce", "fig99", "--out", "{dir}/res"], "unknown experiment 'fig99'"),
    ("reproduce-out-file", ["reproduce", "fig3a", "--out", "{file}"], "is a file, not a folder"),
    ("reproduce-n-zero", ["reproduce", "fig3a", "--n", "0", "--out", "{dir}/res"], "--n must be >= 1"),
    ("reproduce-device-bogus", ["reproduce", "fig3a", "--device", "bogus", "--out", "{dir}/res"], "--device"),
    ("no-command", [], "the following arguments are required: command"),
    ("unknown-command", ["attack"], "invalid choice: 'attack'"),
]


def _fill(argv: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in argv]


def _check_one_line(capsys: pytest.CaptureFixture[str], rc: int, expected: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc != 0 and rc == 2, rc
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("pertattack") and ": error: " in lines[0]
    assert expected in lines[0], lines[0]
    assert captured.out == "", "work was done before the mistake was reported"
    return lines[0]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return int(stop.code)


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line(argv: list[str], expected: str, files: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    if "cuda" in " ".join(argv) and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("a machine with 100 GPUs")
    _check_one_line(capsys, _run(_fill(argv, files)), expected)
    assert not (tmp_path / "cache").exists()  # nothing trained or cached


def test_cache_that_is_a_file_is_refused_before_any_work(files: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERTATTACK_CACHE", files["file"])
    line = _check_one_line(capsys, _run(["reproduce", "fig3a", "--out", files["dir"] + "/res"]), "is a file")
    assert "model cache ($PERTATTACK_CACHE)" in line


@pytest.mark.parametrize("name", ["demo_fooling.csv", "demo_fooling.png"])
def test_demo_output_file_that_is_a_folder(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / name).mkdir()
    _check_one_line(capsys, _run(["demo", "--out", str(tmp_path), "--epochs", "1"]), "is a folder, not a file")


def test_reproduce_output_file_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fig3a.csv").mkdir()
    _check_one_line(capsys, _run(["reproduce", "fig3a", "--out", str(tmp_path)]), "fig3a.csv: is a folder")


def test_debug_keeps_the_traceback(files: dict[str, str]) -> None:
    run = ["run", "fgsm", "--model", files["dir"]]
    for argv in (["--debug", *run], [*run, "--debug"]):
        with pytest.raises(UsageError, match="is a folder"):
            main(argv)
    with pytest.raises(ValueError, match="not a pertattack checkpoint"):
        main(["--debug", "run", "fgsm", "--model", files["garbage"], "--data", "digits"])


def test_run_says_the_real_output_path(files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """`--out adv` writes adv.npz and says so."""
    assert main(["run", "fgsm", "--model", files["cnn"], "--data", "digits", "--n", "3", "--eps", "0.1",
                 "--out", str(tmp_path / "adv")]) == 0
    assert f"saved the last result to {tmp_path / 'adv.npz'}\n" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["adv.npz"]


@pytest.mark.filterwarnings("ignore:the gradient of the objective is exactly zero")
def test_run_with_no_correct_input_reports_nan_not_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The metrics' rule on the command line: no correctly classified image, fooling ratio nan."""
    from pertattack.data import load_digits

    model = build_model("smallcnn", seed=0)
    with torch.no_grad():
        last = model.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.arange(10.0))  # always class 9
    save_model(tmp_path / "nine.pt", model, "smallcnn")
    _, y = load_digits("test")
    n = int((y == 9).nonzero()[0])  # the images before the first 9
    assert n >= 1
    assert main(["run", "fgsm", "--model", str(tmp_path / "nine.pt"), "--data", "digits", "--n", str(n),
                 "--eps", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "0 images correctly classified" in out and "fooling ratio nan (undefined" in out


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pertattack.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


def _check_subprocess(argv: list[str], expected: str) -> None:
    proc = _subprocess(argv)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


BOGUS_DEVICE = ["run", "fgsm", "--model", "{cnn}", "--data", "digits", "--device", "bogus"]


def test_bad_command_line_in_a_subprocess(files: dict[str, str]) -> None:
    """The real entry point (python -m pertattack.cli): one line and exit 2."""
    _check_subprocess(_fill(BOGUS_DEVICE, files), "--device: 'bogus'")


@pytest.mark.slow
def test_debug_in_a_subprocess_shows_the_traceback(files: dict[str, str]) -> None:
    debug = _subprocess(["--debug", *_fill(BOGUS_DEVICE, files)])
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "fgsm", "--model", "{cnn}", "--data", "digits", "--eps", ""], "--eps: expected a number"),
    (["train", "smallcnn", "--data", "digits", "--out", "{file}/m.pt"], "is a file, not a folder"),
])
def test_more_bad_command_lines_in_a_subprocess(argv: list[str], expected: str, files: dict[str, str]) -> None:
    _check_subprocess(_fill(argv, files), expected)
