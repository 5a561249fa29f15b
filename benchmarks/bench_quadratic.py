"""Time and peak memory of quadratic-l2 (eq. 14): matrix-free vs an explicit-Jacobian baseline.

For each input size M, on a batch of inputs (default 4) of an untrained autoencoder (timing and memory
do not depend on training):

    M = 784     1x28x28, fully connected AE 784-256-32-256-784, sigmoid out (the paper's MNIST AE shape)
    M = 3072    3x32x32, convolutional AE (2 stride-2 convs, 2 stride-2 transposed convs, sigmoid out)
    M = 27648   3x96x96, the same convolutional AE

it runs
    power     pertattack.quadratic.quadratic_l2, matrix-free power iteration, all ``--iters`` iterations
    lanczos   the same with method="lanczos", stopped at relative residual ``--tol`` (cap ``--iters``); it
              keeps a Krylov basis of iters x N x M floats
    explicit  torch.func.jacrev (vmapped over the batch) for J (N, K, M), J^T J (N, M, M), torch.linalg.eigh
              (skipped where J^T J alone exceeds --max-explicit-gb: at M = 27,648 it is 27,648^2 float32 =
              3.06 GB per input, and J another 3.06 GB)

Each measurement runs in a fresh subprocess: it builds the model and the inputs, warms up (one forward,
one jvp and one vjp on the batch: loads torch.func's decompositions), reads ru_maxrss, runs the solver
once, and reports the wall time and the growth of ru_maxrss (the peak resident memory the solver added
on top of the loaded model). The power iteration runs all ``--iters`` iterations (tol = 0); the column
``iters`` is the number of J^T J products actually run (counted from the model's forward calls).

    python benchmarks/bench_quadratic.py --sizes 784,3072,27648 --out bench_quadratic.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {784: (1, 28, 28), 3072: (3, 32, 32), 27648: (3, 96, 96)}
METHODS = ("power", "lanczos", "explicit")


def build_model(m: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    shape = SIZES[m]
    if m == 784:
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 32),
            nn.ReLU(),
            nn.Linear(32, 256),
            nn.ReLU(),
            nn.Linear(256, 784),
            nn.Sigmoid(),
            nn.Unflatten(1, shape),
        )
        desc = "FC AE 784-256-32-256-784"
    else:
        c, w = shape[0], 32
        net = nn.Sequential(
            nn.Conv2d(c, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(w, c, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )
        desc = f"conv AE {c}-{w}-{2 * w}-{w}-{c}"
    return net.eval(), shape, desc


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from pertattack.operators import jvp, vjp
    from pertattack.quadratic import quadratic_l2

    model, shape, _ = build_model(spec["m"])
    calls = [0]

    def f(z):
        calls[0] += 1
        return model(z)

    x = torch.rand((spec["batch"], *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = f(x)
    jvp(f, x, x)
    vjp(f, x, y)
    base = maxrss_mib()
    calls[0] = 0
    t0 = time.perf_counter()
    if spec["method"] == "explicit":
        one = lambda z: model(z.unsqueeze(0))[0].reshape(-1)  # noqa: E731
        with torch.no_grad():
            jac = torch.func.vmap(torch.func.jacrev(one, chunk_size=spec["chunk"]))(x)
            jac = jac.reshape(x.shape[0], jac.shape[1], -1)  # (N, K, M)
            gram = jac.transpose(1, 2) @ jac  # (N, M, M)
            del jac
            lam = torch.linalg.eigvalsh(gram)[:, -1] if spec["values_only"] else torch.linalg.eigh(gram)[0][:, -1]
        sigma = lam.clamp_min(0).sqrt()
    else:
        tol = 0.0 if spec["method"] == "power" else spec["tol"]
        gen = torch.Generator().manual_seed(2)
        _, sigma = quadratic_l2(f, x, 1.0, iters=spec["iters"], tol=tol, method=spec["method"], generator=gen)
    elapsed = time.perf_counter() - t0
    # quadratic_l2 calls f once per jvp (one per iteration, one final), once to build the vjp, twice for the sign
    iters = calls[0] - 4 if spec["method"] != "explicit" else ""
    out = {"time_s": elapsed, "peak_mib": maxrss_mib() - base, "base_mib": base, "sigma": sigma.tolist()}
    return out | {"iters": iters}


def run_one(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="784,3072,27648", help="comma-separated M among 784, 3072, 27648")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated among " + ", ".join(METHODS))
    ap.add_argument("--batch", type=int, default=4, help="inputs per batch")
    ap.add_argument("--iters", type=int, default=100, help="power iterations (Lanczos: the cap)")
    ap.add_argument("--tol", type=float, default=1e-6, help="Lanczos relative residual tolerance")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--chunk", type=int, default=256, help="jacrev chunk_size of the explicit baseline")
    ap.add_argument("--max-explicit-gb", type=float, default=2.0, help="skip the baseline above this J^T J size")
    ap.add_argument("--values-only", action="store_true", help="baseline: eigvalsh instead of eigh")
    ap.add_argument("--out", default="bench_quadratic.csv", help="CSV path")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    methods = [s for s in args.methods.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s}; choose among {sorted(SIZES)}")
    import torch

    print(
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; batch {args.batch}; power: {args.iters} iterations; "
        f"lanczos: tol {args.tol:g}, cap {args.iters}"
    )
    rows = []
    for m in sizes:
        _, shape, desc = build_model(m)
        ref = None
        for method in methods:
            row = {
                "M": m,
                "input": "x".join(map(str, shape)),
                "model": desc,
                "method": method,
                "batch": args.batch,
                "iters": "",
            }
            gb = m * m * 4 / 1e9
            if method == "explicit" and gb > args.max_explicit_gb:
                row.update(time_s="", peak_mib="", sigma_mean="", rel_diff="")
                row["note"] = f"skipped: J^T J is {m:,}^2 float32 = {gb:.2f} GB per input (J the same)"
                rows.append(row)
                continue
            spec = dict(m=m, method=method, batch=args.batch, iters=args.iters, tol=args.tol,
                        threads=args.threads, chunk=args.chunk, values_only=args.values_only)
            res = run_one(spec)
            if "error" in res:
                row.update(time_s="", peak_mib="", sigma_mean="", rel_diff="", note="error: " + res["error"])
                rows.append(row)
                continue
            sig = torch.tensor(res["sigma"], dtype=torch.float64)
            if method == "explicit" or ref is None and method == "lanczos":
                ref = sig
            row.update(
                iters=res["iters"],
                time_s=f"{res['time_s']:.3f}",
                peak_mib=f"{res['peak_mib']:.1f}",
                sigma_mean=f"{float(sig.mean()):.6g}",
                rel_diff="",
                note="",
            )
            row["_sigma"] = sig
            rows.append(row)
        for row in rows:
            if row["M"] == m and "_sigma" in row and ref is not None:
                row["rel_diff"] = f"{float(((row['_sigma'] - ref).abs() / ref).max()):.1e}"
    cols = ["M", "input", "model", "method", "batch", "iters", "time_s", "peak_mib", "sigma_mean", "rel_diff", "note"]
    print()
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    print(
        "\npeak_mib: growth of the peak RSS over the loaded model (fresh process per row); rel_diff: max over the "
        "batch of |sigma - sigma_ref| / sigma_ref, sigma_ref from the explicit baseline where it ran, else Lanczos."
    )
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
