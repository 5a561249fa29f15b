"""`pertattack evaluate`: rows per (input, attack, eps), sharding over gloo ranks, resumption, refusals.

The ranks are real processes joined by a gloo process group: forked here (cheap: torch is already
imported) with the environment torchrun would give them, or launched by torchrun itself.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

import eval_callables  # noqa: E402  (tests/ is on sys.path, as for conftest)

from pertattack import get_attack  # noqa: E402
from pertattack.cli import build_parser, main  # noqa: E402
from pertattack.evaluation import RESULT_COLUMNS, summarize  # noqa: E402

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
EPS = "0.05,0.2"
ATTACKS = "pgd,deepfool,random"


def _args(out: Path, *, model: str = "eval_callables:centroids", data: str = "eval_callables:digits_test",
          batch_size: int = 13, eps: str = EPS, extra: tuple[str, ...] = ()) -> list[str]:
    # --device cpu: the same runs on a machine with CUDA, where the default would be cuda and the forked ranks
    # of `launch` could not use it once this process has (tests/test_cuda.py runs evaluate on CUDA)
    return ["evaluate", "--model", model, "--data", data, "--attack", ATTACKS, "--eps", eps, "--set", "steps=5",
            "--batch-size", str(batch_size), "--device", "cpu", "--out", str(out), "--no-progress", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str], log: Path, env: dict[str, str]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # pytest may have replaced them
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
    code = 1
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001 - the exit code and the log carry it
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def launch(argv: list[str], world: int, logs: Path, *, env: dict[str, str] | None = None,
           stop_others: bool = True, timeout: float = 120.0) -> list[int | None]:
    """Run ``pertattack <argv>`` as ``world`` forked ranks; returns their exit codes (negative: killed by a signal).

    ``stop_others``: when a rank exits non-zero, SIGTERM the others, as torchrun does.
    """
    logs.mkdir(parents=True, exist_ok=True)
    # fork is fast (no new interpreter), but where CUDA is there torch refuses autograd in a child forked after
    # this process ran a backward ("Unable to handle autograd's threading in combination with fork-based
    # multiprocessing", seen on an H200): spawn there
    ctx = torch.multiprocessing.get_context(os.environ.get("PERTATTACK_TEST_START", "spawn" if torch.cuda.is_available()
                                                           else "fork"))
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, argv, logs / f"rank{r}.log", env or {}))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    while any(p.exitcode is None for p in procs):
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise AssertionError(f"the ranks hang: {[p.exitcode for p in procs]}")
        if stop_others and any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
        time.sleep(0.02)
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def _rows(out: Path) -> list[list[str]]:
    with open(out / "results.csv") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, one batch for the whole set: the rows every other run must reproduce."""
    out = tmp_path_factory.mktemp("eval") / "ref"
    assert main(_args(out, batch_size=96)) == 0
    return out


def test_rows_are_the_attacks_results(reference):
    rows = _rows(reference)
    assert tuple(rows[0]) == RESULT_COLUMNS
    model = eval_callables.centroids()
    x, y = eval_callables.digits_test()
    eps = [0.05, 0.2]
    body = rows[1:]
    assert len(body) == 96 * 3 * 2
    for name in ATTACKS.split(","):
        res = get_attack(name, seed=0, steps=5)(model, x, y, eps=eps, index=torch.arange(96))
        for j, r in enumerate(res):
            mine = [row for row in body if row[1] == name and float(row[2]) == eps[j]]
            assert [int(row[0]) for row in mine] == list(range(96))
            assert [int(row[3]) for row in mine] == y.tolist()
            assert [int(row[4]) for row in mine] == r.pred.tolist()
            assert [row[5] == "1" for row in mine] == r.success.tolist()
            np.testing.assert_allclose([float(row[6]) for row in mine], r.norms.numpy(), rtol=1e-6)
    # the summary is what the rows say
    with open(reference / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [s["attack"] for s in summary] == [n for n in ATTACKS.split(",") + ["worst-case"] for _ in eps]
    clean = (model(x).argmax(1) == y).double().mean().item()
    for s in summary:
        assert float(s["clean_accuracy"]) == pytest.approx(clean)
        names = ATTACKS.split(",") if s["attack"] == "worst-case" else [s["attack"]]
        held = [all(row[3] == row[4] for row in body if row[0] == str(i) and row[1] in names
                    and float(row[2]) == float(s["eps"])) and bool(model(x[i:i + 1]).argmax(1) == y[i])
                for i in range(96)]
        assert float(s["robust_accuracy"]) == pytest.approx(sum(held) / 96)
    md = (reference / "summary.md").read_text()
    assert "| worst-case |" in md and "| pgd | inf | 0.05 |" in md
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["seed"] == 0 and manifest["versions"]["torch"] == torch.__version__
    assert manifest["runs"][0]["batches_computed"] == 1 and manifest["finished"]


def test_two_ranks_and_other_batch_sizes_give_identical_rows(reference, tmp_path):
    """Rows do not depend on the world size, the shard, the batch size, or on the data being a Dataset."""
    two = tmp_path / "two"
    assert launch(_args(two, data="eval_callables:DigitsDataset"), 2, tmp_path / "logs") == [0, 0]
    assert (two / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert (two / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()
    assert json.loads((two / "manifest.json").read_text())["world_size"] == 2
    assert "96 inputs in 8 batches (0 reused, 8 computed, 2 process(es))" in (tmp_path / "logs/rank0.log").read_text()
    other = tmp_path / "bs7"
    assert main(_args(other, batch_size=7)) == 0
    assert (other / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def test_killed_rank_resumes_with_identical_rows(reference, tmp_path):
    """Rank 1 is SIGKILLed in the middle of a batch; rank 0 notices the silence and stops (no hang);
    the same command again computes exactly the missing batches and gives the reference rows."""
    out = tmp_path / "out"
    argv = _args(out, model="eval_callables:killed", extra=("--timeout", "1.5"))
    codes = launch(argv, 2, tmp_path / "logs1", env=dict(EVAL_TEST_KILL_RANK="1", EVAL_TEST_KILL_CALL="40"),
                   stop_others=False)
    assert codes == [2, -signal.SIGKILL]
    assert "rank 1 has not finished a batch for 1.5 s" in (tmp_path / "logs1/rank0.log").read_text()
    parts = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "parts").glob("b*.npz")}
    assert 4 <= len(parts) < 8, sorted(parts)  # rank 0's four, and not all of rank 1's
    assert not (out / "results.csv").exists()
    assert launch(argv, 2, tmp_path / "logs2") == [0, 0]
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert [r["batches_reused"] for r in runs] == [0, len(parts)]
    assert runs[-1]["batches_computed"] == 8 - len(parts)
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == parts[p.name] for p in (out / "parts").glob("b*.npz")
               if p.name in parts)  # finished batches are not rewritten
    assert f"({len(parts)} reused, {8 - len(parts)} computed" in (tmp_path / "logs2/rank0.log").read_text()
    # once more: nothing left to compute
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["batches_computed"] == 0


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path):
    out = tmp_path / "out"
    codes = launch(_args(out, model="eval_callables:failing"), 2, tmp_path / "logs",
                   env=dict(EVAL_TEST_FAIL_RANK="1"), stop_others=False)
    assert codes[0] == 2 and codes[1] != 0
    log0 = (tmp_path / "logs/rank0.log").read_text()
    assert "rank 1 failed" in log0 and "RuntimeError: boom on rank 1" in log0
    assert "boom on rank 1" in (tmp_path / "logs/rank1.log").read_text()
    assert not (out / "results.csv").exists()


def test_out_made_with_other_arguments_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(out, extra=("--limit", "20"))) == 0
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert main(_args(out, eps="0.05,0.3", extra=("--limit", "20"))) == 2
    err = capsys.readouterr().err
    assert "made with other arguments" in err and "eps: [0.05, 0.2] there, [0.05, 0.3] now" in err
    assert main(_args(out, batch_size=5, extra=("--limit", "20"))) == 2
    assert "batch_size: 13 there, 5 now" in capsys.readouterr().err
    assert main(_args(out, extra=("--limit", "20", "--seed", "1"))) == 2
    assert main(_args(out, extra=("--limit", "20", "--set", "steps=6"))) == 2  # the attack's settings count
    assert (out / "results.csv").read_bytes() == before
    capsys.readouterr()
    assert main(_args(out, extra=("--limit", "20"))) == 0  # the same arguments resume (nothing to do)
    assert "(2 reused, 0 computed" in capsys.readouterr().out
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(_args(stranger)) == 2
    assert "not a pertattack evaluation folder" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    (dict(model="eval_callables:nothing"), "has no attribute"),
    (dict(model="no_such_module_xyz:f"), "cannot import"),
    (dict(model="missing.pt"), "no such checkpoint"),
    (dict(data="eval_callables:centroids"), "expected a Dataset of (x, y)"),
    (dict(data="imagenet"), "mnist, cifar10, digits"),
    (dict(eps="0.1,-1"), ">= 0"),
    (dict(eps="0.1,8"), "--eps: eps 8 (p = inf) against the box [0, 1]: its width max(hi - lo) is 1"),  # issue 18
    (dict(extra=("--attack", "targeted")), "targeted"),
    (dict(extra=("--attack", "quadratic-l2")), "regression"),
    (dict(extra=("--set", "seed=3")), "use --seed"),
    (dict(extra=("--attack", "pgd-papr")), "pgd-paper"),
    # issue 18: labels that are not class indices, inputs of the wrong dtype or shape: exit 2 naming --data
    (dict(data="eval_callables:float_labels"), "--data 'eval_callables:float_labels': labels y must be integer "
                                               "class indices, got torch.float64"),
    (dict(data="eval_callables:FloatLabelDataset"), "labels y (item 0) must be integer class indices"),
    (dict(data="eval_callables:uint8_inputs"), "inputs x must be floating point"),
    (dict(data="eval_callables:wrong_shape"), "--data eval_callables:wrong_shape: the model (Centroids) cannot take "
                                              "its inputs of shape (1, 7, 7)"),
])
def test_user_mistakes_are_clear_errors(tmp_path, capsys, change, message):
    argv = _args(tmp_path / "out", **change)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # a failed run leaves no --out behind (not even its .lock)
    (tmp_path / "out").mkdir()
    assert main(argv) == 2
    assert list((tmp_path / "out").iterdir()) == []  # nor anything in a folder that was there


def _damage(kind: str, part: Path) -> None:
    if kind == "copied over":
        part.write_bytes(part.with_name("b0000000.npz").read_bytes())
    elif kind == "truncated":
        part.write_bytes(part.read_bytes()[:200])
    elif kind == "empty":
        part.write_bytes(b"")
    elif kind == "garbage":
        part.write_bytes(b"not a part at all")
    elif kind == "wrong key":  # (or a part of an older pertattack, without the data's digest)
        with np.load(part) as z:
            arrays = {("nrom" if k == "norm" else k): z[k] for k in z.files}
        np.savez(part, **arrays)
    elif kind == "pickled":
        np.savez(part, index=np.array([object()], dtype=object))


def test_damaged_or_misplaced_parts_are_computed_again(tmp_path, capsys):
    """A part that cannot be reused (another batch's rows, or a damaged file) is named and computed again: the
    rows stay those of an uninterrupted run (issue 18)."""
    out = tmp_path / "out"
    argv = _args(out, extra=("--limit", "26"))
    assert main(argv) == 0
    want = (out / "results.csv").read_bytes()
    for kind in ("copied over", "truncated", "empty", "garbage", "wrong key", "pickled"):
        _damage(kind, out / "parts" / "b0000001.npz")
        capsys.readouterr()
        with pytest.warns(UserWarning, match=r"b0000001\.npz: .*; computing this batch again") as record:
            assert main(argv) == 0, (kind, capsys.readouterr().err)
        assert len(record) == 1, (kind, [str(w.message) for w in record])
        assert "(1 reused, 1 computed" in capsys.readouterr().out, kind
        assert (out / "results.csv").read_bytes() == want, kind


def test_resume_on_changed_data_is_refused(tmp_path, capsys, monkeypatch):
    """A Dataset is checked by content, batch by batch: rows of two data sets never mix (issue 18)."""
    out = tmp_path / "out"
    argv = _args(out, data="eval_callables:ShiftedDataset", extra=("--limit", "26"))
    assert main(argv) == 0
    want = (out / "results.csv").read_bytes()
    (out / "parts" / "b0000000.npz").unlink()  # as if the run had been stopped
    monkeypatch.setenv("EVAL_TEST_SHIFT", "1")  # input 20, in batch 1, changed since
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "made with other arguments (data of batch 1 (inputs 13 to 25): sha256 " in err and "batch 0" not in err
    monkeypatch.delenv("EVAL_TEST_SHIFT")
    assert main(argv) == 0
    assert (out / "results.csv").read_bytes() == want


def test_manifest_is_strict_json_and_old_ones_still_resume(tmp_path, capsys):
    def strict(text: str) -> dict:
        def refuse(name: str) -> None:
            raise ValueError(f"{name} is not JSON")

        return json.loads(text, parse_constant=refuse)

    out = tmp_path / "out"
    argv = _args(out, extra=("--limit", "13", "--p", "inf"))
    assert main(argv) == 0
    manifest = out / "manifest.json"
    assert strict(manifest.read_text())["arguments"]["p"] == "inf"
    # a manifest written before (bare Infinity, as Python's json wrote it) is still read, and rewritten strict
    manifest.write_text(manifest.read_text().replace('"p": "inf"', '"p": Infinity'))
    capsys.readouterr()
    assert main(argv) == 0
    assert "(1 reused, 0 computed" in capsys.readouterr().out
    assert strict(manifest.read_text())["arguments"]["p"] == "inf"


def test_checkpoint_model_and_builtin_data(tmp_path, capsys):
    from pertattack.models import build_model
    from pertattack.training import save_model

    ckpt = tmp_path / "cnn.pt"
    save_model(ckpt, build_model("smallcnn", seed=0), "smallcnn")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(ckpt), "--data", "digits", "--attack", "fgsm", "--eps", "0.1",
                 "--limit", "10", "--out", str(out), "--no-progress", "--preprocess", "0/1"]) == 0
    assert len(_rows(out)) == 11
    assert "fgsm           eps 0.1 " in capsys.readouterr().out


def test_summarize_worst_case():
    label = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 2, 0])  # input 3 misclassified
    pred = np.array([[[0, 2, 2, 3]], [[1, 1, 2, 3]]])  # attack a fools input 1, attack b input 0
    rows = summarize(label, clean, pred, ["a", "b"], [0.1], [np.inf, np.inf])
    got = {r["attack"]: (r["clean_accuracy"], r["robust_accuracy"], r["fooling_ratio"]) for r in rows}
    assert got == {"a": (0.75, 0.5, 1 / 3), "b": (0.75, 0.5, 1 / 3), "worst-case": (0.75, 0.25, 2 / 3)}


# ------------------------------------------------------------------------------------------- torchrun


def _evaluate_options() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return [s for a in sub.choices["evaluate"]._actions for s in a.option_strings if s not in ("-h", "--help")]


def test_torchrun_leaves_every_option_to_us():
    """torchrun's parser takes abbreviations of its own options even after the module: an option of
    ours that is a prefix of one of its options (``--n`` of ``--nnodes``) would break the launch."""
    run = pytest.importorskip("torch.distributed.run")
    theirs = [s for a in run.get_args_parser()._actions for s in a.option_strings]
    ours = _evaluate_options()
    assert {"--model", "--data", "--attack", "--eps", "--p", "--limit", "--batch-size", "--seed", "--out"} <= set(ours)
    for opt in ours:
        assert not any(t.startswith(opt) for t in theirs), f"{opt} is a prefix of a torchrun option"
        for form in ([opt, "1"], [f"{opt}=1"]):
            args = run.get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "pertattack", "evaluate", *form])
            assert args.module and args.training_script == "pertattack"
            assert args.training_script_args == ["evaluate", *form]
    with pytest.raises(SystemExit):  # what the rule above protects against
        run.get_args_parser().parse_args(["-m", "pertattack", "evaluate", "--n", "1"])


def _torchrun(argv: list[str], tmp: Path, env: dict[str, str] | None = None, nproc: int = 2,
              launcher: tuple[str, ...] = ("--standalone",)) -> subprocess.Popen[str]:
    """``torchrun <launcher> --nproc-per-node <nproc> -m pertattack <argv>`` in ``tmp``, one thread per process."""
    full = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    full["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), full.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc-per-node", str(nproc),
           "-m", "pertattack", *argv]
    return subprocess.Popen(cmd, cwd=tmp, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_torchrun_with_every_option(reference, tmp_path):
    """The real launch: torchrun, 2 gloo ranks, every option of ours on the command line (slow: ~5-10 s of
    process start-up; the default run covers the options by torchrun's own parser, above, and the ranks by fork)."""
    out = tmp_path / "out"
    argv = _args(out, data="eval_callables:DigitsDataset", extra=(
        "--root", str(tmp_path), "--split", "test", "--p", "inf", "--limit", "96", "--seed", "0", "--device", "cpu",
        "--preprocess", "0/1", "--model-output", "0", "--dtype", "float64", "--timeout", "600"))
    argv[argv.index("--model") + 1] = "eval_callables:tupled"
    # the ecosystem options go with timm:NAME / robustbench:NAME models only (tests/test_ecosystem.py runs them
    # through evaluate; torchrun's parser leaves them to us, test_torchrun_leaves_every_option_to_us)
    ecosystem = {"--weights", "--threat-model", "--model-dataset", "--model-dir"}
    assert set(_evaluate_options()) - {"--no-progress"} - ecosystem <= set(argv)
    proc = _torchrun([a for a in argv if a != "--no-progress"] + ["--no-progress"], tmp_path)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert "96 inputs in 8 batches (0 reused, 8 computed, 2 process(es))" in text
    ref = _rows(reference)
    got = _rows(out)
    # --p inf changes deepfool's norm (l2 by default): compare the other attacks' rows
    keep = lambda rows: [r for r in rows if r[1] != "deepfool"]  # noqa: E731
    assert keep(got) == keep(ref)


@pytest.mark.slow
def test_torchrun_tears_down_when_a_worker_is_killed(reference, tmp_path):
    """SIGKILL of one worker: torchrun stops the other and exits non-zero (no hang); the rerun resumes."""
    out = tmp_path / "out"
    argv = _args(out, model="eval_callables:killed")
    proc = _torchrun(argv, tmp_path, env=dict(EVAL_TEST_KILL_RANK="1", EVAL_TEST_KILL_CALL="40"))
    t0 = time.monotonic()
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and time.monotonic() - t0 < 120, text
    assert "Signal 9 (SIGKILL)" in text or "SIGKILL" in text, text
    done = len(list((out / "parts").glob("b*.npz")))
    assert done < 8
    proc = _torchrun(argv, tmp_path)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert f"({done} reused, {8 - done} computed" in text
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def test_two_nodes_give_the_rows_of_one_process(reference, tmp_path):
    """Across machines, on one host: two torchrun launchers join as two nodes of one process each (c10d
    rendezvous on 127.0.0.1), share --out and write the rows of the one-process run (15 to 19 s at load average
    4, nearly all of it the start-up of four Python processes)."""
    out = tmp_path / "out"
    launcher = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                "--rdzv-id", "two-nodes")
    procs = [_torchrun(_args(out), tmp_path, nproc=1, launcher=launcher) for _ in range(2)]
    texts = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], texts
    assert sum("96 inputs in 8 batches (0 reused, 8 computed, 2 process(es))" in t for t in texts) == 1, texts
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["world_size"] == 2


@pytest.mark.slow
def test_elastic_restart_resumes_from_the_finished_batches(reference, tmp_path):
    """torchrun --max-restarts 1: rank 1 is SIGKILLed in its third batch, torchrun restarts both workers, and
    the new attempt reuses the batches finished before the kill and writes the reference rows (slow: 18 to 22 s
    at load average 4; the default run covers resumption after a kill by fork, above, and the two-node launch).
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: see the next test."""
    out = tmp_path / "out"
    env = dict(EVAL_TEST_KILL_RANK="1", EVAL_TEST_KILL_CALL="40", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    proc = _torchrun(_args(out, model="eval_callables:killed"), tmp_path, env=env,
                     launcher=("--standalone", "--max-restarts", "1"))
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    reused = runs[-1]["batches_reused"]
    assert 1 <= reused < 8 and runs[-1]["batches_computed"] == 8 - reused, (runs, text)
    assert f"({reused} reused, {8 - reused} computed, 2 process(es))" in text
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def test_a_restart_on_a_shared_store_says_how_to_launch(monkeypatch):
    """torch 2.13's elastic agent keeps one store across restarts and the env:// rendezvous adds no per-attempt
    prefix: a restarted gloo group reads the dead attempt's addresses (seen in the test above without the
    variable). The failure names the cure."""
    import torch.distributed as dist

    from pertattack.evaluation import EvaluationError, _distributed

    def refused(*args, **kwargs):
        raise RuntimeError("Gloo connectFullMesh failed: Connection refused")

    monkeypatch.setattr(dist, "init_process_group", refused)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(EvaluationError, match="restart 1 failed .*TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        with _distributed("cpu", 5.0):
            pass
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt's failure is torch's own error
    with pytest.raises(RuntimeError, match="^Gloo connectFullMesh failed"):
        with _distributed("cpu", 5.0):
            pass


def test_progress_bar_and_busy_out(tmp_path, capsys):
    import fcntl

    out = tmp_path / "out"
    argv = [a for a in _args(out, extra=("--limit", "26")) if a != "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "26/26" in err and "robust acc @0.05" in err  # rank 0's bar: inputs done, robust accuracy so far
    with open(out / ".lock", "a+") as f:  # another evaluation holds the folder
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert main(argv) == 2
        assert "in use by another evaluation" in capsys.readouterr().err


def test_reliability_flags_reach_the_summary_and_the_manifest(tmp_path):
    """A model without gradients: fgsm cannot move, so inputs stay robust at eps = 1 (the whole box), and `auto`
    flags the masked gradients itself; both are in summary.md, manifest.json and a warning."""
    out = tmp_path / "out"
    argv = ["evaluate", "--model", "eval_callables:quantised", "--data", "eval_callables:digits_test", "--attack",
            "fgsm,auto", "--eps", "1", "--limit", "4", "--batch-size", "4", "--device", "cpu", "--out", str(out),
            "--no-progress"]
    with pytest.warns(UserWarning, match="overestimate robustness"):
        assert main(argv) == 0
    summary = (out / "summary.md").read_text()
    assert "## Reliability flags" in summary
    assert "`fgsm`: **robust-at-full-box**" in summary and "`auto`: **masked-gradients**" in summary
    flags = {(f["attack"], f["flag"]) for f in json.loads((out / "manifest.json").read_text())["flags"]}
    assert {("fgsm", "robust-at-full-box"), ("auto", "masked-gradients")} <= flags


# ------------------------------------------------------------------------------------------- report.md (issue 19)


def _table_rows(md: str, head: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with ``head``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _min_norm(body: list[list[str]], attack: str, ok: set[int]) -> dict[int, float]:
    """From results.csv: per correctly classified input that ``attack`` fooled, its smallest fooling norm."""
    d: dict[int, float] = {}
    for row in body:
        i = int(row[0])
        if row[1] == attack and row[5] == "1" and i in ok:
            d[i] = min(d.get(i, math.inf), float(row[6]))
    return d


def test_report_holds_the_runs_numbers(reference):
    """report.md: the robust accuracies of summary.md, deepfool's distances, per-class robust accuracy and the
    examples, all as results.csv says; the figures exist."""
    md = (reference / "report.md").read_text()
    for name in ("robust_accuracy.png", "min_norm_distances.png", "examples.png"):
        assert f"](figures/{name})" in md
        assert (reference / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (reference / "summary.md").read_text()
    assert _table_rows(md, "| attack | p | eps |") == _table_rows(summary, "| attack | p | eps |")
    body = _rows(reference)[1:]
    label = {int(r[0]): int(r[3]) for r in body}
    model = eval_callables.centroids()
    x, y = eval_callables.digits_test()
    clean = model(x).argmax(1)
    ok = {i for i in range(96) if clean[i] == y[i]}
    # deepfool (minimum-norm): the distances' quartiles
    d = _min_norm(body, "deepfool", ok)
    (stats,) = _table_rows(md, "| attack | p | fooled |")
    assert stats[:3] == ["deepfool", "l2", f"{len(d)} of {len(ok)}"]
    assert [float(v) for v in stats[3:6]] == pytest.approx(np.quantile(list(d.values()), [0.25, 0.5, 0.75]),
                                                            rel=1e-3)
    # per class: the worst case over the attacks at each eps
    per_class = _table_rows(md, "| class | inputs |")
    assert [int(r[0]) for r in per_class] == sorted(set(label.values()))
    for r in per_class:
        members = [i for i in range(96) if label[i] == int(r[0])]
        assert int(r[1]) == len(members)
        for j, e in enumerate((0.05, 0.2)):
            held = [i in ok and all(row[3] == row[4] for row in body if int(row[0]) == i and float(row[2]) == e)
                    for i in members]
            assert float(r[3 + j]) == pytest.approx(sum(held) / len(members), abs=5e-5)
    with open(reference / "per_class.csv") as f:
        assert len(list(csv.DictReader(f))) == len(per_class)
    # examples: per attack, correctly classified inputs, those fooled at the largest eps first
    examples = _table_rows(md, "| attack | eps | input |")
    assert [r[0] for r in examples] == [n for n in ATTACKS.split(",") for _ in range(6)]
    pred = {(r[1], int(r[0])): int(r[4]) for r in body if float(r[2]) == 0.2}
    for r in examples:
        i = int(r[2])
        assert i in ok and r[1] == "0.2" and int(r[3]) == label[i] and int(r[4]) == pred[r[0], i]
    assert all(int(r[4]) != int(r[3]) for r in examples if r[0] == "pgd")  # pgd fools more than 6 at 0.2
    assert "## Reliability flags\n\nNone fired" in md
    cmd = json.loads((reference / "manifest.json").read_text())["command"]  # (here: pytest's own argv)
    assert f"- Command: `{shlex.join(cmd)}`" in md
    assert f"torch {torch.__version__}" in md and "finished 20" in md


def test_minimum_norm_curve_meets_the_eps_grid(reference):
    """DeepFool's whole curve (from its norms) equals its robust accuracy at each eps of the grid."""
    from pertattack.report import _curve, load_run

    run = load_run(reference)
    a = run.names.index("deepfool")
    e, acc = _curve(run, a)
    with open(reference / "summary.csv") as f:
        grid = {float(s["eps"]): float(s["robust_accuracy"]) for s in csv.DictReader(f) if s["attack"] == "deepfool"}
    for eps, want in grid.items():
        assert acc[np.searchsorted(e, eps, side="right") - 1] == pytest.approx(want)
    assert acc[0] == pytest.approx(float((run.clean == run.label).mean()))  # at eps 0: the clean accuracy
    assert np.all(np.diff(acc) <= 0)


def _without_time(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("- This report:"))


def test_report_command_on_a_finished_and_a_partial_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(out, extra=("--limit", "26"))) == 0
    first = (out / "report.md").read_text()
    body = _rows(out)[1:]
    shutil.rmtree(out / "figures")
    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "report.md (26 inputs)" in capsys.readouterr().out
    assert _without_time((out / "report.md").read_text()) == _without_time(first)
    assert len(list((out / "figures").glob("*.png"))) == 3
    # as if the run had been stopped after batch 0: the report of the first 13 inputs, saying so
    (out / "parts" / "b0000001.npz").unlink()
    for name in ("results.csv", "summary.csv", "summary.md"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert "from the 1 of 2 batches finished so far (a partial run)" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "**Partial run**: 1 of 2 batches finished (13 of 26 inputs)" in md
    rows = {(r[0], r[2]): r[3] for r in _table_rows(md, "| attack | p | eps |")}
    model = eval_callables.centroids()
    x, y = eval_callables.digits_test()
    clean = model(x[:13]).argmax(1) == y[:13]
    for name in ATTACKS.split(","):
        for e in ("0.05", "0.2"):
            held = [bool(clean[i]) and r[3] == r[4] for i in range(13) for r in body
                    if int(r[0]) == i and r[1] == name and r[2] == e]
            assert float(rows[name, e]) == pytest.approx(sum(held) / 13, abs=5e-5)
    # nothing finished: a clear error
    for part in (out / "parts").iterdir():
        part.unlink()
    assert main(["report", str(out)]) == 2
    assert "no batch has finished yet" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a pertattack evaluate folder" in capsys.readouterr().err


def test_report_without_matplotlib_keeps_the_tables(reference, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.count("needs matplotlib, which is not installed") == 3 and "](figures/" not in md
    assert "| pgd | inf | 0.05 |" in md and "| class | inputs |" in md and "| attack | eps | input |" in md
    assert not list((out / "figures").glob("*.png"))  # the earlier report's figures are not left behind


def test_parts_of_an_older_pertattack_resume_and_report(tmp_path, capsys):
    """Parts without the examples (written before report.md existed) are reused as they are; the rows stay the
    same and report.md says that it has no examples."""
    out = tmp_path / "out"
    argv = _args(out, extra=("--limit", "26"))
    assert main(argv) == 0
    want = (out / "results.csv").read_bytes()
    for part in (out / "parts").glob("b*.npz"):
        with np.load(part) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("ex_")}
        np.savez(part, **arrays)
    capsys.readouterr()
    assert main(argv) == 0
    assert "(2 reused, 0 computed" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == want
    md = (out / "report.md").read_text()
    assert "No example kept" in md and "examples.png" not in md
