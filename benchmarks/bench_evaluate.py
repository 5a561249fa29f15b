"""`pertattack evaluate`: 1 process vs K processes (torchrun, gloo, one thread each), and kill-and-resume.

What is measured
----------------
LeNet-5 on the first ``--n`` MNIST test images (default 2,000), attacks ``pgd,deepfool`` at eps 0.1
in l-inf (``--p inf``), batches of ``--batch-size`` (default 250: 8 batches, 4 per rank with 2 ranks).
Each configuration is the whole command a user types, timed wall-clock from start to exit:

* ``1 process``: ``python -m pertattack evaluate ...`` with ``OMP_NUM_THREADS=1``;
* ``K processes``: ``torchrun --standalone --nproc-per-node K -m pertattack evaluate ...``, one
  thread per process.

Both include the start-up (Python, torch, the data, the model; torchrun's own process), which is
why the speed-up is below K even on idle cores. Every run starts from an empty ``--out``; the rows
of the K-process run are compared with the 1-process run's (they must be identical: PGD's random
start is drawn per input). Rounds alternate the configurations; ``--repeat`` rounds, the median is
reported. The machine's load average (1 min) is recorded before and after every run: on a shared
machine a load above the number of idle cores means the processes competed with others.

``cpu_seconds``: user + system CPU time of all the processes of the command (torchrun's workers
included): the work done, whatever the load. (1-process CPU) / (K-process CPU / K) is the speed-up
the run would reach on K idle cores if the ranks' work were balanced; the wall-clock speed-up on a
shared machine is lower.

``--kill-resume``: a K-process run in which one worker (rank 1) is SIGKILLed as soon as
``--kill-after-batches`` batches are finished; torchrun stops the others and exits non-zero. Then
the same command again: it reports how many batches it reused and computed, and its ``results.csv`` is compared with the
uninterrupted run's.

The model: ``--checkpoint`` (default ``~/.cache/pertattack/mnist-lenet5-e1-s0.pt``); if it does not
exist, LeNet-5 (seed 0) is trained for one epoch with ``pertattack train`` and saved there (not timed).

Run::

    python benchmarks/bench_evaluate.py --out benchmarks/results/evaluate.csv --kill-resume
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SRC), env.get("PYTHONPATH", "")] if p)
    return env


def _evaluate_args(a: argparse.Namespace, out: Path) -> list[str]:
    return ["evaluate", "--model", str(a.checkpoint), "--data", "mnist", "--root", str(a.data), "--attack", a.attacks,
            "--eps", a.eps, "--p", "inf", "--limit", str(a.n), "--batch-size", str(a.batch_size), "--seed", "0",
            "--device", "cpu", "--out", str(out), "--no-progress"]


def _command(a: argparse.Namespace, procs: int, out: Path) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "pertattack", *_evaluate_args(a, out)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
            "-m", "pertattack", *_evaluate_args(a, out)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: torchrun's workers too
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (all processes of the command), exit code, output."""
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    return time.perf_counter() - t0, _cpu() - c0, proc.returncode, proc.stdout + proc.stderr


def _ensure_checkpoint(a: argparse.Namespace) -> None:
    if a.checkpoint.exists():
        return
    print(f"training LeNet-5 for 1 epoch -> {a.checkpoint} (not timed)", file=sys.stderr)
    a.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pertattack", "train", "lenet5", "--data", "mnist", "--root", str(a.data),
                    "--epochs", "1", "--seed", "0", "--device", "cpu", "--out", str(a.checkpoint)],
                   env=dict(_env(), OMP_NUM_THREADS=str(os.cpu_count() or 1)), check=True)


def _workers(pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (from /proc: children and their RANK)."""
    found: dict[int, int] = {}
    try:
        kids = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return found
    for k in kids:
        try:
            env = open(f"/proc/{k}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = k
    return found


def _kill_resume(a: argparse.Namespace, work: Path, reference: Path) -> dict[str, object]:
    out = work / "killed"
    cmd = _command(a, a.procs, out)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while len(list((out / "parts").glob("b*.npz"))) < a.kill_after_batches and proc.poll() is None:
        time.sleep(0.05)
    victim = _workers(proc.pid).get(1)
    if victim is None:
        proc.kill()
        raise SystemExit("could not find rank 1's worker to kill (is /proc readable?)")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.perf_counter() - t0
    text, _ = proc.communicate(timeout=600)
    first_exit = time.perf_counter() - t0
    done = len(list((out / "parts").glob("b*.npz")))
    seconds, _, code, text2 = _run(cmd)
    if code != 0:
        raise SystemExit(f"the resumed run failed:\n{text2}")
    line = next((ln for ln in text2.splitlines() if " inputs in " in ln), "")
    same = (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    return dict(killed_after_s=round(killed_at, 1), torchrun_exit_code=proc.returncode,
                torchrun_exit_after_s=round(first_exit, 1), batches_kept=done,
                batches_total=math.ceil(a.n / a.batch_size), resumed_s=round(seconds, 1),
                resumed_report=line.strip(), rows_identical=same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("PERTATTACK_MNIST")
                                 or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"),
                    help="MNIST IDX folder (default $PERTATTACK_MNIST, else ../shared/data/mnist from the repository)")
    ap.add_argument("--checkpoint", type=Path,
                    default=Path.home() / ".cache" / "pertattack" / "mnist-lenet5-e1-s0.pt")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--attacks", default="pgd,deepfool")
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--procs", type=int, default=2, help="processes of the sharded run")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--kill-resume", action="store_true", help="also kill rank 1 midway and resume")
    ap.add_argument("--kill-after-batches", type=int, default=3,
                    help="kill rank 1 once this many batches are finished (by either rank)")
    ap.add_argument("--out", type=Path, default=None, help="CSV of the timings")
    a = ap.parse_args()
    _ensure_checkpoint(a)
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    rows = []
    times: dict[int, list[float]] = {1: [], a.procs: []}
    try:
        for r in range(a.repeat):
            for procs in (1, a.procs) if r % 2 == 0 else (a.procs, 1):
                out = work / f"p{procs}-r{r}"
                load0 = os.getloadavg()[0]
                seconds, cpu, code, text = _run(_command(a, procs, out))
                load1 = os.getloadavg()[0]
                if code != 0:
                    raise SystemExit(f"{procs} process(es) failed:\n{text}")
                same = (out / "results.csv").read_bytes() == (work / "p1-r0" / "results.csv").read_bytes() \
                    if (work / "p1-r0" / "results.csv").exists() else None
                times[procs].append(seconds)
                rows.append(dict(round=r, processes=procs, threads_per_process=1, n=a.n, attacks=a.attacks, eps=a.eps,
                                 batch_size=a.batch_size, seconds=round(seconds, 2), cpu_seconds=round(cpu, 2),
                                 load_before=round(load0, 2),
                                 load_after=round(load1, 2), rows_identical_to_1_process=same))
                print(rows[-1], flush=True)
        t1, tk = statistics.median(times[1]), statistics.median(times[a.procs])
        print(f"median: 1 process {t1:.1f} s, {a.procs} processes {tk:.1f} s, speed-up {t1 / tk:.2f}x "
              f"({os.cpu_count()} cores; load average now {os.getloadavg()[0]:.2f})")
        if a.kill_resume:
            print(_kill_resume(a, work, work / "p1-r0"))
        if a.out is not None:
            from bench_classification import write_csv  # imports torch: only when a CSV is written

            write_csv(a.out, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
