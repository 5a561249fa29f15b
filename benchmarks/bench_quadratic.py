"""Time and peak memory of the quadratic attacks (eq. 14, 20, 21): matrix-free vs an explicit-Jacobian baseline,
up to the paper's "intractable" image sizes.

For each input size M, on a batch of inputs of an untrained autoencoder (timing and memory do not depend on
training):

    M = 784        1x28x28, fully connected AE 784-256-32-256-784, sigmoid out (the paper's MNIST AE shape)
    M = 3072       3x32x32, convolutional AE (2 stride-2 convs, 2 stride-2 transposed convs, sigmoid out)
    M = 27648      3x96x96, the same convolutional AE
    M = 979200     3x480x680, the same (the paper: "storing J for a 680 x 480 RGB image is not tractable")
    M = 6220800    3x1080x1920, the same (full HD)

it runs
    lanczos       pertattack.quadratic.quadratic_l2 with its defaults: thick-restart Lanczos, basis of 20 vectors,
                  stopped at relative residual ``--tol`` (cap ``--iters``)
    lanczos-full  the same without restarts (basis=None): the whole Krylov basis, iters x N x M floats
    power         method="power", all ``--iters`` iterations (tol = 0)
    explicit      torch.func.jacrev (vmapped over the batch) for J (N, K, M), J^T J (N, M, M), torch.linalg.eigh
                  (skipped where J^T J alone exceeds --max-explicit-gb)
    linf, pixel   quadratic_linf (greedy of eq. 20) and quadratic_subset (eq. 21, pixels): run where
                  M <= --max-greedy-m; above, one chunk of the vmapped vjps their column norms need (K of them)
                  is timed and the whole run extrapolated (column ``note``): they need min(K, M) Jacobian rows
                  or columns, which at M = K = 979,200 is ~10^6 backward passes.

Each measurement runs in a fresh subprocess: it builds the model and the inputs, warms up torch.func on a
3x32x32 input (loads its decompositions), reads ru_maxrss, runs the solver once, and reports the wall time,
the peak resident memory of the whole process (``peak_mib``: torch, model, inputs and solver) and its growth
during the solve (``grow_mib``). ``iters`` is the number of J^T J products actually run.

    python benchmarks/bench_quadratic.py --sizes 784,3072,27648 --out bench_quadratic.csv
    python benchmarks/bench_quadratic.py --sizes 979200,6220800 --batch 1 --threads 1 \
        --methods lanczos,lanczos-full,linf,pixel --out results/quadratic_large.csv
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

SIZES = {784: (1, 28, 28), 3072: (3, 32, 32), 27648: (3, 96, 96), 979200: (3, 480, 680),
         6220800: (3, 1080, 1920)}
METHODS = ("power", "lanczos", "lanczos-full", "explicit", "linf", "pixel")


def build_model(m: int, shape: tuple[int, ...] | None = None):
    import torch
    from torch import nn

    torch.manual_seed(0)
    shape = SIZES[m] if shape is None else shape
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
    import pertattack.operators as ops
    from pertattack.quadratic import quadratic_l2, quadratic_linf, quadratic_subset

    model, shape, _ = build_model(spec["m"])
    for prm in model.parameters():
        prm.requires_grad_(False)
    products = [0]
    apply = ops._apply

    def counted(lin, v):
        products[0] += 1
        return apply(lin, v)

    ops._apply = counted
    f = model
    small = build_model(3072 if len(shape) == 3 and shape[0] == 3 else 784)[0]
    xs = torch.rand((1, *SIZES[3072 if shape[0] == 3 else 784]))
    ops.Linearization(small, xs).jtj(torch.ones_like(xs))  # warm-up: torch.func's decompositions
    x = torch.rand((spec["batch"], *shape), generator=torch.Generator().manual_seed(1))
    base = maxrss_mib()
    t0 = time.perf_counter()
    sigma = None
    note = ""
    method = spec["method"]
    if method == "explicit":
        one = lambda z: model(z.unsqueeze(0))[0].reshape(-1)  # noqa: E731
        with torch.no_grad():
            jac = torch.func.vmap(torch.func.jacrev(one, chunk_size=spec["chunk"]))(x)
            jac = jac.reshape(x.shape[0], jac.shape[1], -1)  # (N, K, M)
            gram = jac.transpose(1, 2) @ jac  # (N, M, M)
            del jac
            lam = torch.linalg.eigvalsh(gram)[:, -1] if spec["values_only"] else torch.linalg.eigh(gram)[0][:, -1]
        sigma = lam.clamp_min(0).sqrt()
    elif method in ("linf", "pixel"):
        m = x[0].numel()
        if m <= spec["max_greedy_m"]:
            if method == "linf":
                quadratic_linf(f, x, 0.01)
            else:
                quadratic_subset(f, x, 0.01)
        else:
            lin = ops.Linearization(f, x)
            k = lin.k
            chunk = 8
            idx = torch.arange(chunk).unsqueeze(1).expand(-1, x.shape[0])
            lin.rows(idx)  # the first call builds the vjp closure
            t1 = time.perf_counter()
            lin.rows(idx)
            per_row = (time.perf_counter() - t1) / chunk
            est = per_row * min(k, m)  # column norms (both); linf adds M jvps for the greedy
            when = f"{est / 86400:.1f} days" if est > 86400 else f"{est / 3600:.2f} h"
            note = (f"not run: {min(k, m):,} Jacobian rows needed at {per_row:.4f} s each (one chunk of {chunk} "
                    f"timed): about {when} for the column norms alone")
    else:
        tol = 0.0 if method == "power" else spec["tol"]
        gen = torch.Generator().manual_seed(2)
        kw = dict(method="power") if method == "power" else dict(method="lanczos")
        if method == "lanczos-full":
            kw["basis"] = None
        _, sigma = quadratic_l2(f, x, 1.0, iters=spec["iters"], tol=tol, generator=gen, **kw)
    elapsed = time.perf_counter() - t0
    peak = maxrss_mib()
    out = {"time_s": elapsed, "peak_mib": peak, "grow_mib": peak - base, "note": note,
           "sigma": [] if sigma is None else sigma.tolist()}
    return out | {"iters": products[0] if method in ("power", "lanczos", "lanczos-full") else ""}


def run_one(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="784,3072,27648", help="comma-separated M among " + ", ".join(map(str, SIZES)))
    ap.add_argument("--methods", default="power,lanczos,lanczos-full,explicit",
                    help="comma-separated among " + ", ".join(METHODS))
    ap.add_argument("--batch", type=int, default=4, help="inputs per batch")
    ap.add_argument("--iters", type=int, default=100, help="power iterations (Lanczos: the cap)")
    ap.add_argument("--tol", type=float, default=1e-6, help="Lanczos relative residual tolerance")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--chunk", type=int, default=256, help="jacrev chunk_size of the explicit baseline")
    ap.add_argument("--max-explicit-gb", type=float, default=2.0, help="skip the baseline above this J^T J size")
    ap.add_argument("--max-greedy-m", type=int, default=3072, help="run linf/pixel up to this M, else extrapolate")
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
    for mth in methods:
        if mth not in METHODS:
            ap.error(f"unknown method {mth}; choose among {', '.join(METHODS)}")
    import torch

    print(
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; batch {args.batch}; power: {args.iters} iterations; "
        f"lanczos: tol {args.tol:g}, cap {args.iters}"
    )
    cols = ["M", "input", "model", "method", "batch", "tol", "iters", "time_s", "peak_mib", "grow_mib", "sigma_mean",
            "rel_diff", "note"]
    rows = []
    for m in sizes:
        _, shape, desc = build_model(m)
        for method in methods:
            row = {c: "" for c in cols} | {"M": m, "input": "x".join(map(str, shape)), "model": desc,
                                            "method": method, "batch": args.batch}
            gb = m * m * 4 / 1e9
            if method == "explicit" and gb > args.max_explicit_gb:
                row["note"] = f"skipped: J^T J is {m:,}^2 float32 = {gb:.3g} GB per input (J the same)"
                rows.append(row)
                continue
            spec = dict(m=m, method=method, batch=args.batch, iters=args.iters, tol=args.tol, threads=args.threads,
                        chunk=args.chunk, values_only=args.values_only, max_greedy_m=args.max_greedy_m)
            res = run_one(spec)
            if "error" in res:
                row["note"] = "error: " + res["error"]
                rows.append(row)
                continue
            if method.startswith("lanczos"):
                row["tol"] = f"{args.tol:g}"
            row.update(iters=res["iters"], time_s=f"{res['time_s']:.3f}", peak_mib=f"{res['peak_mib']:.0f}",
                       grow_mib=f"{res['grow_mib']:.0f}", note=res["note"])
            if res["sigma"]:
                sig = torch.tensor(res["sigma"], dtype=torch.float64)
                row["sigma_mean"] = f"{float(sig.mean()):.7g}"
                row["_sigma"] = sig
            rows.append(row)
            print(" | ".join(str(row[c]) for c in cols), flush=True)
        here = [r for r in rows if r["M"] == m and "_sigma" in r]
        ref = next((r["_sigma"] for r in here if r["method"] == "explicit"), None)
        if ref is None:
            ref = next((r["_sigma"] for r in here if r["method"] == "lanczos-full"), None)
        for row in here:
            if ref is not None:
                row["rel_diff"] = f"{float(((row['_sigma'] - ref).abs() / ref).max()):.1e}"
    print()
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    print(
        "\npeak_mib: peak RSS of the measuring process (torch + model + inputs + solver); grow_mib: its growth "
        "during the solve; rel_diff: max over the batch of |sigma - sigma_ref| / sigma_ref, sigma_ref from the "
        "explicit baseline where it ran, else the unrestarted Lanczos (lanczos-full)."
    )
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
