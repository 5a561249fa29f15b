"""Robustness of a model over a whole data set: one row per (input, attack, eps), resumable, sharded.

The engine behind ``pertattack evaluate``. One process, or one process per rank under ``torchrun``
(``torch.distributed`` with gloo; on GPUs rank r computes on ``cuda:LOCAL_RANK``).

How a run is organised (all of it under ``--out``):

* The data set (its first ``limit`` inputs) is cut into batches of ``batch_size`` consecutive
  positions; batch b holds the positions ``b*B .. (b+1)*B - 1``.
* At start, rank 0 checks ``manifest.json`` (a folder made with other arguments is refused), lists
  the batches already finished (``parts/b*.npz``) and broadcasts the pending ones; rank r takes
  ``pending[r::world]``. That broadcast is the only collective operation of the run. A finished part
  is reused only if it reads back as its own batch's rows, and its batch's data (read again, its
  sha256 kept in the part) is unchanged: else a warning and the batch again, or, for changed data,
  a refusal.
* Every finished batch is written atomically (a temporary file in the same folder, fsync, rename):
  a rank killed at any moment loses at most the batch it was working on, and running the same
  command again redoes only the missing batches.
* Random draws are seeded per input from ``(seed, index)`` (the attack's ``index=``), so the rows do
  not depend on the world size, the shard or the batch size.
* Each rank reports under ``ranks/``: a heartbeat after every batch, then ``rank<r>.done`` or, with
  the error text, ``rank<r>.failed``. Every rank stops when another has failed; rank 0 waits for
  every rank, shows the progress bar, then merges the parts into ``results.csv``, ``summary.csv``,
  ``summary.md``, updates ``manifest.json`` and draws ``report.md`` (:mod:`pertattack.report`). A rank
  that dies without a word (SIGKILL) is caught by torchrun, which stops the others; without torchrun,
  rank 0 gives up after ``timeout`` seconds without a heartbeat.

``--out`` must be a folder that every rank sees (on several machines: a shared file system).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .specs import DataSource, UsageError, load_data_spec, load_model_spec

__all__ = [
    "EvalConfig",
    "EvalReport",
    "EvaluationError",
    "DataSource",
    "load_model_spec",
    "load_data_spec",
    "parse_preprocess",
    "run_evaluation",
    "summarize",
    "RESULT_COLUMNS",
]

RESULT_COLUMNS = ("index", "attack", "eps", "label", "pred", "success", "norm")
WORST = "worst-case"
_FORMAT = 1
# keyword overrides that have their own option (or that the engine sets)
_RESERVED = {"eps": "--eps", "seed": "--seed", "p": "--p", "progress": "(the engine's own bar)",
             "preprocess": "--preprocess", "output": "--model-output"}


class EvaluationError(UsageError):
    """A user mistake or a failed rank: the message says which and what to do."""


@dataclass(frozen=True)
class EvalConfig:
    """The arguments of one evaluation (those of ``pertattack evaluate``).

    Attributes:
        model: a model spec (:func:`pertattack.specs.load_model_spec`): a ``pertattack train`` checkpoint,
            ``package.module:callable``, ``timm:NAME`` or ``robustbench:NAME``.
        model_options: keywords of :func:`pertattack.specs.load_model_spec` for an ecosystem spec
            (``weights``, ``threat_model``, ``dataset``, ``model_dir``).
        data: a data spec (:func:`pertattack.specs.load_data_spec`): ``mnist``, ``cifar10``, ``digits`` or
            ``package.module:callable``.
        attacks: preset names (see ``pertattack list``).
        eps: the budgets; every attack runs at each of them.
        out: the output folder.
        root: data folder of ``mnist`` / ``cifar10``.
        split: ``test`` or ``train`` (built-in data sets).
        p: the norm of every attack; None keeps each preset's own.
        limit: evaluate the first ``limit`` inputs only.
        batch_size: inputs per batch (the unit of work and of resumption).
        seed: the attacks' seed; random draws for input i depend only on (seed, i).
        device: torch device; None: ``cuda:LOCAL_RANK`` when CUDA is there, else CPU.
        preprocess: ``(mean, std)`` applied inside the model call (eps stays in raw units).
        model_output: which part of a tuple/dict output holds the logits (index or key).
        dtype: ``float32`` or ``float64`` for the model and the inputs; None keeps the model's own.
            float64 makes the rows identical across batch sizes (see :func:`run_evaluation`).
        overrides: further keyword settings for every attack (``steps``, ``overshoot``, ...).
        progress: show the progress bar (rank 0).
        timeout: seconds rank 0 waits for a silent rank, and the process group's timeout.
    """

    model: str
    data: str
    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    out: str
    root: str | None = None
    split: str = "test"
    p: float | None = None
    limit: int | None = None
    batch_size: int = 256
    seed: int = 0
    device: str | None = None
    preprocess: tuple[Any, Any] | None = None
    model_output: int | str | None = None
    model_options: dict[str, str] = field(default_factory=dict)
    dtype: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    timeout: float = 1800.0

    def check(self) -> None:
        """Raise :class:`EvaluationError` on arguments that cannot work."""
        if not self.attacks:
            raise EvaluationError("--attack needs at least one preset name")
        if len(set(self.attacks)) != len(self.attacks):
            raise EvaluationError(f"--attack names a preset twice: {','.join(self.attacks)}")
        if not self.eps:
            raise EvaluationError("--eps needs at least one budget")
        if any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise EvaluationError(f"--eps must be finite and >= 0, got {list(self.eps)}")
        if len(set(self.eps)) != len(self.eps):
            raise EvaluationError(f"--eps lists a budget twice: {list(self.eps)}")
        if self.batch_size < 1:
            raise EvaluationError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"--limit must be >= 1, got {self.limit}")
        if self.p is not None and not (self.p >= 1):
            raise EvaluationError(f"--p must be >= 1 (or inf), got {self.p}")
        if self.dtype not in (None, "float32", "float64"):
            raise EvaluationError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.timeout <= 0:
            raise EvaluationError(f"--timeout must be > 0, got {self.timeout}")
        for k in self.overrides:
            if k in _RESERVED:
                raise EvaluationError(f"--set {k}=... is not taken here: use {_RESERVED[k]}")


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _data_fingerprint(data: DataSource) -> str:
    """sha256 of the tensors (first n inputs), or of the spec and length for a Dataset (whose content is checked
    batch by batch: :func:`_batch_digest`, kept in each part)."""
    h = hashlib.sha256(f"{data.spec}|{data.n}".encode())
    if data.tensors is not None:
        for t in data.tensors:
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def _batch_digest(x: Tensor, y: Tensor) -> str:
    """sha256 of one batch as read from the data (dtype, shape and bytes of x and y): a part is reused only for
    the very inputs it was computed on."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _part_name(b: int) -> str:
    return f"b{b:07d}.npz"


def _part_index(name: str) -> int | None:
    if name.startswith("b") and name.endswith(".npz") and name[1:-4].isdigit():
        return int(name[1:-4])
    return None


def _save_part(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


def _load_part(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:  # (np.load leaves its own file open when the zip is damaged)
        z = np.load(f)
        if not hasattr(z, "files"):
            raise ValueError("a single array, not an .npz archive")
        with z:
            return {k: z[k] for k in z.files}


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float written as the string "inf", "-inf" or "nan": strict JSON (a manifest
    written before holds the bare ``Infinity`` that Python reads; it is normalised the same way)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json(obj: Any) -> bytes:
    return json.dumps(_finite(obj), indent=2, default=repr, allow_nan=False).encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- distributed context


@dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialised: bool

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _resolve_device(requested: str | None, local_rank: int) -> torch.device:
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EvaluationError(f"--device {requested}: CUDA is not available here")
        if dev.index is None:  # one GPU per local rank
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


@contextlib.contextmanager
def _distributed(requested_device: str | None, timeout: float) -> Iterator[_Dist]:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(requested_device, local_rank)
    if world == 1:
        yield _Dist(0, 1, local_rank, device, False)
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    # gloo on every device: the only collective is one broadcast of a small object (the pending batches),
    # and NCCL would refuse ranks that share a GPU (more ranks than GPUs, or one --device cuda:i for all)
    initialised = False
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", timeout=_dt.timedelta(seconds=timeout))
        except RuntimeError as err:
            if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and os.environ.get(
                    "TORCHELASTIC_USE_AGENT_STORE") == "True":
                raise EvaluationError(
                    f"the process group of torchrun's restart {os.environ['TORCHELASTIC_RESTART_COUNT']} failed "
                    f"({err}): torchrun's agent keeps its store across restarts, and the ranks read the addresses of "
                    "the attempt before (torch issue 135712); launch torchrun with "
                    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment (on every node)") from err
            raise
        initialised = True
    try:
        yield _Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, initialised)
    finally:
        if initialised:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- attacks


def _build_attacks(cfg: EvalConfig) -> list[Any]:
    from .presets import get_attack

    attacks = []
    for name in cfg.attacks:
        kw: dict[str, Any] = dict(cfg.overrides)
        if cfg.p is not None:
            kw["p"] = cfg.p
        if cfg.preprocess is not None:
            kw["preprocess"] = cfg.preprocess
        if cfg.model_output is not None:
            kw["output"] = cfg.model_output
        try:
            a = get_attack(name, seed=cfg.seed, progress=False, **kw)
        except (ValueError, TypeError) as err:
            raise EvaluationError(f"--attack {name}: {err}") from err
        if not a.objective.classification:
            raise EvaluationError(f"--attack {name} attacks regression models; evaluate measures classifiers")
        if a.objective.needs_target:
            raise EvaluationError(f"--attack {name} is targeted (it needs target=...); evaluate runs untargeted "
                                  "attacks")
        attacks.append(a)
    return attacks


def _probe(cfg: EvalConfig, model: nn.Module, data: DataSource, device: torch.device, attacks: list[Any]) -> None:
    """The model's scores for the first input, as the batches will be called: data of the wrong shape or dtype is
    refused here, naming --data, not inside torch at the first batch; an --eps on the wrong scale for the box
    (:func:`check_scale`), naming --eps, before anything is written."""
    from ._validate import check_scale
    from .metrics import predict

    x = data.batch([0])[0].to(device, dtype=None if cfg.dtype is None else getattr(torch, cfg.dtype))
    name = type(model).__name__
    try:
        predict(model, x, preprocess=cfg.preprocess, output=cfg.model_output)  # type: ignore[arg-type]
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise EvaluationError(f"--data {cfg.data}: the model ({name}) cannot take its inputs of shape "
                              f"{tuple(x.shape[1:])} and dtype {x.dtype}: {' '.join(str(err).split())}") from err
    for a in attacks:
        try:
            with warnings.catch_warnings():  # the attack's own call warns
                warnings.simplefilter("ignore")
                check_scale([max(float(e) for e in cfg.eps)], a.ball.p, a.box_for(model), x)
        except ValueError as err:
            raise EvaluationError(f"--eps: {err}") from err


def _call_attack(attack: Any, model: nn.Module, x: Tensor, y: Tensor, eps: list[float], index: Tensor) -> list[Any]:
    """One run of ``attack`` at every eps, seeded per input by its data-set position ``index``."""
    res = attack(model, x, y, eps=eps, index=index)
    return res if isinstance(res, list) else [res]


# --------------------------------------------------------------------------- the run


@dataclass
class EvalReport:
    """What :func:`run_evaluation` did (on rank 0 the whole run's figures; elsewhere the rank's own)."""

    rank: int
    world_size: int
    n_inputs: int
    n_batches: int
    batches_reused: int
    batches_computed: int
    out: Path
    summary: list[dict[str, Any]] = field(default_factory=list)


def _fingerprint(cfg: EvalConfig, attacks: list[Any], model: nn.Module, data: DataSource, device: torch.device
                 ) -> dict[str, Any]:
    """What makes two runs the same evaluation (JSON-normalised, as read back from the manifest)."""
    fp = dict(
        model=cfg.model, model_sha256=_model_fingerprint(model), data=cfg.data, split=cfg.split,
        data_sha256=_data_fingerprint(data), n_inputs=len(data), attacks=[repr(a) for a in attacks],
        eps=[float(e) for e in cfg.eps], seed=cfg.seed, batch_size=cfg.batch_size, device_type=device.type,
        dtype=cfg.dtype, preprocess=cfg.preprocess, model_output=cfg.model_output,
    )
    return json.loads(_json(fp))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _versions() -> dict[str, str]:
    from . import __version__

    return dict(pertattack=__version__, torch=torch.__version__, numpy=np.__version__,
                python=platform.python_version(), platform=platform.platform())


def _plan(cfg: EvalConfig, out: Path, fp: dict[str, Any], data: DataSource, world: int, argv: list[str] | None
          ) -> dict[str, Any]:
    """Rank 0: check or create the manifest, clean up after a killed run, check the finished parts, list the
    pending batches."""
    n_batches = math.ceil(len(data) / cfg.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    parts, ranks = out / "parts", out / "ranks"
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            old = _finite(manifest["fingerprint"])
        except (ValueError, KeyError) as err:
            raise EvaluationError(f"--out {out}: manifest.json is unreadable ({err}); use another --out") from err
        diff = _differences(old, fp)
        if diff:
            raise EvaluationError(f"--out {out} holds an evaluation made with other arguments ("
                                  + "; ".join(diff) + "). Use another --out, or delete that folder to start over.")
    else:
        if any(f.name != ".lock" for f in out.iterdir()):
            raise EvaluationError(f"--out {out} exists, is not empty and has no manifest.json: "
                                  "not a pertattack evaluation folder; use another --out")
        manifest = dict(format=_FORMAT, fingerprint=fp, runs=[])
        _atomic_write(manifest_path, _json(manifest))  # claim the folder first
    parts.mkdir(exist_ok=True)
    ranks.mkdir(exist_ok=True)
    for f in ranks.iterdir():  # reports of an earlier (killed) run
        f.unlink()
    done, other_data = set(), []
    for f in sorted(parts.iterdir()):
        b = _part_index(f.name)
        if f.name.endswith(".tmp"):  # a batch that was being written when its rank died
            f.unlink()
        elif b is not None and b < n_batches:
            idx = range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(data)))
            old = _check_part(f, idx, (len(cfg.attacks), len(cfg.eps)))
            if old is None:
                f.unlink()  # the warning named it: computed again below
                continue
            new = _batch_digest(*data.batch(idx))
            if old != new:
                other_data.append(f"data of batch {b} (inputs {idx[0]} to {idx[-1]}): sha256 {old[:12]}... there, "
                                  f"{new[:12]}... now")
            done.add(b)
    if other_data:
        raise EvaluationError(f"--out {out} holds an evaluation made with other arguments (" + "; ".join(other_data)
                              + "). Use another --out, or delete that folder to start over.")
    run_id = hashlib.sha256(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:16]
    pending = [b for b in range(n_batches) if b not in done]
    manifest.update(
        arguments={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        command=argv, versions=_versions(), world_size=world, seed=cfg.seed, n_inputs=fp["n_inputs"],
        n_batches=n_batches, run_id=run_id, started=_now(), finished=None,
    )
    manifest["runs"].append(dict(run_id=run_id, started=_now(), world_size=world, batches_reused=len(done),
                                 batches_pending=len(pending)))
    _atomic_write(manifest_path, _json(manifest))
    return dict(error=None, pending=pending, run_id=run_id, reused=len(done))


def _check_part(path: Path, idx: range, ae: tuple[int, int]) -> str | None:
    """The data digest a finished part was computed on, or None (with a warning naming the file) when the part
    cannot be reused: unreadable, keys or shapes not those of a part, or the rows of other inputs than ``idx``
    (a file copied over another batch's)."""
    part, why = _read_part(path, idx, ae)
    if part is not None:
        return str(part["data_sha256"])
    warnings.warn(f"{path}: {why}; computing this batch again", stacklevel=2)
    return None


def _read_part(path: Path, idx: range, ae: tuple[int, int]) -> tuple[dict[str, np.ndarray] | None, str]:
    """The part at ``path`` if it holds the rows of the inputs ``idx`` for (attacks, eps) = ``ae``; else None and
    why not. (The examples of report.md, ``ex_*``, are optional: parts of an older pertattack have none.)"""
    n = len(idx)
    shapes = dict(index=(n,), label=(n,), clean=(n,), pred=(*ae, n), success=(*ae, n), norm=(*ae, n), data_sha256=())
    try:
        part = _load_part(path)
        wrong = [k for k, shape in shapes.items() if k not in part or part[k].shape != shape]
        if wrong:
            return None, f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} missing or of another shape"
        if not np.array_equal(part["index"], np.arange(idx.start, idx.stop)):
            return None, f"it holds the rows of other inputs than {idx.start} to {idx.stop - 1}"
        return part, ""
    except Exception as err:  # noqa: BLE001 - whatever a damaged file raises (BadZipFile, EOFError, pickled data)
        first = str(err).split(". ")[0]  # (not NumPy's advice to load a pickle: a part never holds one)
        return None, f"it is not a readable part ({type(err).__name__}{': ' + first if first else ''})"


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Rank 0 holds ``out/.lock`` for the run: a second run into the same folder is refused. A run that fails
    before it wrote anything else takes the lock (and the folder, if it made it) away again."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise EvaluationError(f"--out {out} is in use by another evaluation (its .lock is held)") from err
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if [p.name for p in out.iterdir()] == [".lock"]:
                    (out / ".lock").unlink()
                    if made:
                        out.rmdir()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _Tally:
    """Rank 0's view of the finished parts: inputs done and robust counts so far (for the bar)."""

    def __init__(self, parts: Path, n_eps: int):
        self.parts = parts
        self.seen: set[str] = set()
        self.n = 0
        self.correct = 0
        self.robust = np.zeros(n_eps, dtype=np.int64)  # worst case over the attacks

    def add(self, part: dict[str, np.ndarray]) -> None:
        clean_ok = part["clean"] == part["label"]
        ok = (part["pred"] == part["label"][None, None, :]).all(axis=0) & clean_ok[None, :]  # (E, n)
        self.n += int(part["label"].shape[0])
        self.correct += int(clean_ok.sum())
        self.robust += ok.sum(axis=1)

    def scan(self) -> int:
        """Read the parts that appeared since the last scan; returns how many inputs they hold."""
        before = self.n
        for f in sorted(os.listdir(self.parts)):
            if f in self.seen or _part_index(f) is None:
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, OSError):
                self.add(_load_part(self.parts / f))
                self.seen.add(f)
        return self.n - before

    def postfix(self, eps: Sequence[float]) -> str:
        if not self.n:
            return ""
        acc = " ".join(f"@{e:g} {r / self.n:.3f}" for e, r in zip(eps, self.robust, strict=True))
        return f"clean acc {self.correct / self.n:.3f}, robust acc {acc}"


def _rank_files(ranks: Path) -> tuple[dict[int, str], set[int], dict[int, str]]:
    failed: dict[int, str] = {}
    done: set[int] = set()
    alive: dict[int, str] = {}
    for f in os.listdir(ranks):
        stem, _, kind = f.partition(".")
        if not stem.startswith("rank") or not stem[4:].isdigit():
            continue
        r = int(stem[4:])
        with contextlib.suppress(FileNotFoundError):
            if kind == "failed":
                failed[r] = (ranks / f).read_text()
            elif kind == "done":
                done.add(r)
            elif kind == "alive":
                alive[r] = (ranks / f).read_text()
    return failed, done, alive


def _first_failure(failed: dict[int, str], me: int) -> tuple[int, str] | None:
    others = {r: t for r, t in failed.items() if r != me}
    if not others:
        return None
    r = min(others)
    return r, others[r]


class _Progress:
    """Rank 0's progress bar over the whole run (every rank's parts), with robust accuracy so far."""

    def __init__(self, cfg: EvalConfig, parts: Path, n_inputs: int, world: int):
        self.eps = [float(e) for e in cfg.eps]
        self.tally = _Tally(parts, len(self.eps))
        self.tally.scan()
        self.bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_inputs, initial=self.tally.n, unit="input", dynamic_ncols=True,
                            desc=f"evaluate ({world} rank{'s' if world > 1 else ''})")
            self.bar.set_postfix_str(self.tally.postfix(self.eps))

    def poll(self) -> None:
        grown = self.tally.scan()
        if grown and self.bar is not None:
            self.bar.update(grown)
            self.bar.set_postfix_str(self.tally.postfix(self.eps))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_evaluation(cfg: EvalConfig, argv: list[str] | None = None) -> EvalReport:
    """Run (or resume) an evaluation; under torchrun every rank calls it with the same arguments.

    Returns:
        An :class:`EvalReport`; rank 0's holds the summary rows (also written to ``summary.csv``).

    Raises:
        EvaluationError: bad arguments, an ``--out`` made with other arguments, or a failed rank
            (with that rank's error).
    """
    cfg.check()
    out = Path(cfg.out)
    with _distributed(cfg.device, cfg.timeout) as dist_ctx:
        rank, world, device = dist_ctx.rank, dist_ctx.world, dist_ctx.device
        plan: dict[str, Any] = {"error": None}
        local_error: Exception | None = None
        try:
            attacks = _build_attacks(cfg)
            model = load_model_spec(cfg.model, device, **cfg.model_options)
            if cfg.dtype is not None:
                model = model.to(getattr(torch, cfg.dtype))
            data = load_data_spec(cfg.data, cfg.root, cfg.split, cfg.limit)
        except Exception as err:  # noqa: BLE001 - rank 0 reports its own; the others after the broadcast
            local_error = err
            plan = {"error": str(err)}
        n_batches = math.ceil(len(data) / cfg.batch_size) if local_error is None else 0
        with _lock(out) if rank == 0 else contextlib.nullcontext():
            if rank == 0 and local_error is None:
                try:
                    _probe(cfg, model, data, device, attacks)  # (the same model and data on every rank)
                    fp = _fingerprint(cfg, attacks, model, data, device)
                    plan = _plan(cfg, out, fp, data, world, argv)
                except UsageError as err:  # (an EvaluationError, or the data's own)
                    plan = {"error": str(err)}
            plan = dist_ctx.broadcast(plan)
            if plan["error"] is not None:
                if local_error is not None:
                    raise local_error
                raise EvaluationError(plan["error"])
            if local_error is not None:  # rank 0 loaded fine, this rank did not
                _report_failure(out, rank, str(local_error))
                raise local_error
            if rank != 0:
                try:
                    _check_shared(out, rank, plan)
                except EvaluationError as err:
                    _report_failure(out, rank, str(err))
                    raise
            mine = plan["pending"][rank::world]
            progress = _Progress(cfg, out / "parts", len(data), world) if rank == 0 else None
            try:
                computed = _work(cfg, attacks, model, data, device, out, rank, mine, plan, progress)
                if rank != 0:
                    return EvalReport(rank, world, len(data), n_batches, plan["reused"], computed, out)
                total_computed = _wait_for_ranks(cfg, out, world, progress)
            finally:
                if progress is not None:
                    progress.close()
            summary = _merge(cfg, attacks, out, n_batches, plan, total_computed)
            return EvalReport(0, world, len(data), n_batches, plan["reused"], total_computed, out, summary)


def _check_shared(out: Path, rank: int, plan: dict[str, Any]) -> None:
    try:
        seen = json.loads((out / "manifest.json").read_text()).get("run_id")
    except (OSError, ValueError):
        seen = None
    if seen != plan["run_id"]:
        raise EvaluationError(f"rank {rank} does not see rank 0's {out}/manifest.json: --out must be a folder "
                              "that every rank can read and write (a shared file system)")


def _report_failure(out: Path, rank: int, text: str) -> None:
    with contextlib.suppress(OSError):
        _atomic_write(out / "ranks" / f"rank{rank}.failed", f"rank {rank}: {text}".encode())


def _work(cfg: EvalConfig, attacks: list[Any], model: nn.Module, data: DataSource, device: torch.device, out: Path,
          rank: int, mine: list[int], plan: dict[str, Any], progress: _Progress | None) -> int:
    """This rank's batches; returns how many it computed. Writes ``ranks/rank<r>.done`` or ``.failed``."""
    parts, ranks = out / "parts", out / "ranks"
    eps = [float(e) for e in cfg.eps]
    top = eps.index(max(eps))  # the examples kept for report.md are those at the largest eps
    fwd = _Logits(model, cfg)
    heartbeat = ranks / f"rank{rank}.alive"
    dtype = None if cfg.dtype is None else getattr(torch, cfg.dtype)
    computed = 0
    b = -1
    try:
        _atomic_write(heartbeat, b"0")
        for b in mine:
            failure = _first_failure(_rank_files(ranks)[0], rank)
            if failure is not None:
                raise _Stopped(f"rank {rank} stopped: rank {failure[0]} failed:\n{failure[1]}")
            idx = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(data)))
            x, y = data.batch(idx.tolist())
            digest = _batch_digest(x, y)
            x, y, idx_d = x.to(device, dtype=dtype), y.to(device), idx.to(device)
            logits = fwd(x)
            clean = logits.argmax(dim=1)
            preds, succ, norms, flags, at_max = [], [], [], [], []
            for name, a in zip(cfg.attacks, attacks, strict=True):
                res = _call_attack(a, model, x, y, eps, idx_d)
                flags += [[name, f.name, f.message] for r in res for f in getattr(r, "flags", ())]
                preds.append(torch.stack([r.pred for r in res]))
                succ.append(torch.stack([r.success for r in res]))
                norms.append(torch.stack([r.norms for r in res]))
                at_max.append(res[top])
            _save_part(parts / _part_name(b), dict(
                index=idx.numpy(), label=y.cpu().numpy(), clean=clean.cpu().numpy(),
                pred=torch.stack(preds).cpu().numpy(), success=torch.stack(succ).cpu().numpy(),
                norm=torch.stack(norms).detach().cpu().numpy(), data_sha256=np.array(digest),
                flags=np.array(json.dumps(flags)), **_examples(fwd, x, y, idx, logits, at_max)))
            computed += 1
            _atomic_write(heartbeat, str(computed).encode())
            if progress is not None:
                progress.poll()
        _atomic_write(ranks / f"rank{rank}.done", json.dumps(dict(computed=computed, run_id=plan["run_id"])).encode())
    except _Stopped:
        raise
    except BaseException as err:
        text = str(err) if isinstance(err, UsageError) else "".join(traceback.format_exception(err)).rstrip()
        _report_failure(out, rank, (f"batch {b}: " if b >= 0 else "") + text)
        raise
    return computed


class _Logits:
    """The model's scores as :func:`pertattack.metrics.predict` computes them (eval mode, no gradient, chunks of
    1,024), so that their argmax is its prediction, bit for bit."""

    def __init__(self, model: nn.Module, cfg: EvalConfig):
        from .modelcall import as_model

        self.fwd = as_model(model, preprocess=cfg.preprocess, output=cfg.model_output)  # type: ignore[arg-type]

    def __call__(self, x: Tensor) -> Tensor:
        from .modelcall import eval_mode

        with eval_mode(self.fwd), torch.no_grad():
            return torch.cat([self.fwd(x[i : i + 1024]) for i in range(0, x.shape[0], 1024)])


#: examples per attack and batch kept in a part for report.md's grid (at the largest eps)
EXAMPLES = 6


def _margin(out: Tensor, label: Tensor) -> Tensor:
    """eq. 2's margin f_y - max_{l != y} f_l per row."""
    true = out.gather(1, label[:, None])[:, 0]
    return true - out.scatter(1, label[:, None], -math.inf).amax(dim=1)


def _probabilities(out: Tensor) -> Tensor:
    """Softmax of the scores, or the scores themselves where they already are probabilities."""
    out = out.double()
    if bool((out >= 0).all()) and bool(torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4)):
        return out
    return out.softmax(dim=1)


def _examples(fwd: _Logits, x: Tensor, y: Tensor, idx: Tensor, logits: Tensor, results: list[Any]
              ) -> dict[str, np.ndarray]:
    """For each attack (its result at the largest eps), the :data:`EXAMPLES` correctly classified inputs of the batch
    whose margin (eq. 2, on the model's scores) the attack lowered most, those it fooled first: their positions, the
    margin drop, the true class's probability at x and at x_adv and the adversarial class's at x_adv, x and eta
    (float16: for the figure only). The margins are the attack's own (``AttackResult.margin``): the only forward
    pass added is one on the few kept inputs, for their probabilities. Index -1 pads a batch with fewer correct
    inputs."""
    k = min(EXAMPLES, x.shape[0])
    ok = logits.argmax(dim=1) == y
    clean_margin = _margin(logits, y)
    picked, drops = [], []
    for r in results:
        adv = r.margin if r.margin is not None and r.margin.shape == clean_margin.shape else _margin(fwd(r.x_adv), y)
        drop = torch.where(ok, (clean_margin - adv).double(), -math.inf)
        order = drop.sort(descending=True, stable=True).indices
        order = order[(~(r.success & ok)[order]).sort(stable=True).indices][:k]  # fooled first
        picked.append(order)
        drops.append(drop[order])
    i = torch.stack(picked)  # (A, k)
    valid = torch.isfinite(torch.stack(drops))
    x_adv = torch.stack([r.x_adv[j] for r, j in zip(results, i, strict=True)])  # (A, k, ...)
    p_adv = _probabilities(fwd(x_adv.flatten(0, 1))).reshape(*i.shape, -1)
    p_clean = _probabilities(logits)[i]
    pred = p_adv.argmax(dim=-1, keepdim=True)
    lab = y[i][..., None]
    prob = torch.cat([p_clean.gather(-1, lab), p_adv.gather(-1, lab), p_adv.gather(-1, pred)], dim=-1)
    return dict(ex_index=torch.where(valid, idx.to(i.device)[i], -1).cpu().numpy(),
                ex_drop=torch.where(valid, torch.stack(drops), math.nan).cpu().numpy(),
                ex_prob=prob.float().cpu().numpy(), ex_x=x[i].detach().half().cpu().numpy(),
                ex_eta=(x_adv - x[i]).detach().half().cpu().numpy())


class _Stopped(EvaluationError):
    """This rank stops because another one failed."""


def _wait_for_ranks(cfg: EvalConfig, out: Path, world: int, progress: _Progress | None) -> int:
    """Rank 0: wait until every rank is done (or one failed, or one fell silent); total batches computed."""
    ranks = out / "ranks"
    last_seen: dict[int, tuple[str, float]] = {}
    while True:
        failed, done, alive = _rank_files(ranks)
        failure = _first_failure(failed, 0)
        if failure is not None:
            raise EvaluationError(f"rank {failure[0]} failed:\n{failure[1]}")
        if len(done) == world:
            break
        now = time.monotonic()
        for r in range(world):
            if r in done:
                continue
            beat = alive.get(r, "")
            if r not in last_seen or last_seen[r][0] != beat:
                last_seen[r] = (beat, now)
            elif now - last_seen[r][1] > cfg.timeout:
                raise EvaluationError(f"rank {r} has not finished a batch for {cfg.timeout:g} s and did not report: "
                                      "it died or hangs; run the same command again to resume")
        if progress is not None:
            progress.poll()
        time.sleep(0.1)
    if progress is not None:
        progress.poll()
    return sum(int(json.loads((ranks / f"rank{r}.done").read_text())["computed"]) for r in range(world))


def summarize(label: np.ndarray, clean: np.ndarray, pred: np.ndarray, attacks: Sequence[str], eps: Sequence[float],
              norms_p: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Clean accuracy, robust accuracy and fooling ratio per attack and eps (and the worst case over attacks).

    Args:
        label: (N,) true classes; clean: (N,) predictions on the clean inputs.
        pred: (A, E, N) predictions at x_adv of each attack and eps.

    Robust accuracy: share of all inputs classified correctly both clean and at x_adv. Fooling
    ratio: share of the correctly classified inputs that x_adv misclassifies (NaN if none is).
    With several attacks, the ``worst-case`` rows count an input as robust only when no attack fools it.
    """
    n = label.shape[0]
    clean_ok = clean == label
    n_ok = int(clean_ok.sum())
    rows = []
    held = (pred == label[None, None, :]) & clean_ok[None, None, :]  # (A, E, N)
    groups = [(a, held[i], None if norms_p is None else norms_p[i]) for i, a in enumerate(attacks)]
    if len(attacks) > 1:
        ps = set(norms_p) if norms_p is not None else set()
        groups.append((WORST, held.all(axis=0), ps.pop() if len(ps) == 1 else None))
    for name, h, p in groups:
        for j, e in enumerate(eps):
            robust = int(h[j].sum())
            rows.append(dict(attack=name, eps=float(e), p=p, n=n, clean_accuracy=n_ok / n, robust_accuracy=robust / n,
                             fooling_ratio=(n_ok - robust) / n_ok if n_ok else math.nan))
    return rows


def _flags(loaded: list[dict[str, np.ndarray]], names: list[str], attacks: list[Any], eps: list[float],
           label: np.ndarray, clean: np.ndarray, pred: np.ndarray) -> list[tuple[str, str, str]]:
    """The reliability flags of the run: those the attacks raised (any batch; the first message of each), and those
    of the robust accuracies across eps (:func:`pertattack.checks.check_results`)."""
    from .checks import check_results

    seen: dict[tuple[str, str], str] = {}
    for part in loaded:
        for a, f, m in json.loads(str(part["flags"])) if "flags" in part else []:
            seen.setdefault((a, f), m)
    held = (pred == label[None, None, :]) & (clean == label)[None, None, :]  # (A, E, N)
    for i, (name, a) in enumerate(zip(names, attacks, strict=True)):
        lo, hi = getattr(a.box, "lo", None), getattr(a.box, "hi", None)
        width = float(hi - lo) if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else None
        for f in check_results([(e, torch.from_numpy(held[i, j])) for j, e in enumerate(eps)], float(a.ball.p), width):
            seen.setdefault((name, f.name), f.message)
    return [(a, f, m) for (a, f), m in seen.items()]


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (np.floating,)):
        return str(v)
    if isinstance(v, float):
        return "inf" if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    return str(v)


def _merge(cfg: EvalConfig, attacks: list[Any], out: Path, n_batches: int, plan: dict[str, Any], computed: int
           ) -> list[dict[str, Any]]:
    """Rank 0: the parts into results.csv, summary.csv, summary.md; the manifest's run record."""
    parts = out / "parts"
    missing = [b for b in range(n_batches) if not (parts / _part_name(b)).exists()]
    if missing:
        raise EvaluationError(f"{len(missing)} batches have no result (first: {missing[:5]}); run the same command "
                              "again to compute them")
    from .report import EvalRun, write_report

    names = list(cfg.attacks)
    eps = [float(e) for e in cfg.eps]
    manifest = json.loads((out / "manifest.json").read_text())
    run = EvalRun(out, manifest, names, eps, attacks, [_load_part(parts / _part_name(b)) for b in range(n_batches)],
                  n_batches)
    eps_txt = [_fmt(e) for e in eps]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    index, label, pred, succ, norm = run.index, run.label, run.pred, run.success, run.norm
    if not np.array_equal(index, np.arange(index.shape[0])):  # a part replaced while the run went on
        raise EvaluationError(f"the parts in {parts} do not hold each input once, in order; run the same command "
                              "again to check them and compute what is wrong")
    for i in range(index.shape[0]):
        for a, name in enumerate(names):
            for j in range(len(eps)):
                w.writerow((int(index[i]), name, eps_txt[j], int(label[i]), int(pred[a, j, i]),
                            _fmt(bool(succ[a, j, i])), f"{float(norm[a, j, i]):.7g}"))
    _atomic_write(out / "results.csv", buf.getvalue().encode())

    ps = run.ps
    rows = summarize(label, run.clean, pred, names, eps, ps)
    cols = ["attack", "eps", "p", "n", "clean_accuracy", "robust_accuracy", "fooling_ratio"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r[c]) if r[c] is not None else "" for c in cols])
    _atomic_write(out / "summary.csv", buf.getvalue().encode())

    lines = [f"# Robustness of `{cfg.model}` on `{cfg.data}` ({cfg.split}, {index.shape[0]} inputs)", "",
             f"Clean accuracy {rows[0]['clean_accuracy']:.4f}. Attacks with seed {cfg.seed}; "
             "robust accuracy: share of all inputs still classified correctly at x_adv; fooling ratio: share of "
             "the correctly classified inputs that the attack misclassifies.", "", *summary_table(rows, names, ps)]
    flags = _flags(run.parts, names, attacks, eps, label, run.clean, pred)
    if flags:
        lines += ["", "## Reliability flags", "",
                  "Signs that these robust accuracies may be too high (pertattack.checks):", ""]
        lines += [f"- `{a}`: **{f}**: {m}" for a, f, m in flags]
        warnings.warn("the evaluation may overestimate robustness: "
                      + "; ".join(f"{a}: {f}" for a, f, _ in flags) + f" (see {out / 'summary.md'})", stacklevel=2)
    lines += ["", f"Made by pertattack {manifest['versions']['pertattack']} (torch {manifest['versions']['torch']}), "
              f"{manifest['world_size']} process(es); arguments in manifest.json.", ""]
    _atomic_write(out / "summary.md", "\n".join(lines).encode())

    manifest["flags"] = [dict(attack=a, flag=f, message=m) for a, f, m in flags]
    manifest["finished"] = _now()
    for record in manifest["runs"]:
        if record.get("run_id") == plan["run_id"]:
            record.update(finished=manifest["finished"], batches_computed=computed)
    _atomic_write(out / "manifest.json", _json(manifest))
    try:
        write_report(run, flags)
    except Exception as err:  # noqa: BLE001 - the rows are safe; a figure that fails must not fail the run
        warnings.warn(f"{out / 'report.md'} could not be written ({type(err).__name__}: {err}); "
                      f"`pertattack report {out}` draws it again", stacklevel=2)
    return rows


def summary_table(rows: list[dict[str, Any]], names: Sequence[str], ps: Sequence[float]) -> list[str]:
    """The rows of :func:`summarize` as a markdown table (summary.md, report.md), with the worst case explained."""
    lines = ["| attack | p | eps | robust accuracy | fooling ratio |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        p = "mixed" if r["p"] is None else f"{r['p']:g}"
        lines.append(f"| {r['attack']} | {p} | {r['eps']:g} | {r['robust_accuracy']:.4f} | {r['fooling_ratio']:.4f} |")
    if len(names) > 1:
        lines += ["", f"`{WORST}`: an input counts as robust only if no attack fools it at that eps."
                  + (" The attacks use different norms (see p): pass --p to compare them at one norm."
                     if len(set(ps)) > 1 else "")]
    return lines


def parse_preprocess(text: str) -> tuple[list[float], list[float]]:
    """``MEAN/STD``, each a number or comma-separated per-channel numbers: ``0.1307/0.3081``."""
    mean, sep, std = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
    except ValueError as err:
        raise EvaluationError(f"--preprocess takes MEAN/STD (per channel: m1,m2,m3/s1,s2,s3), got {text!r}") from err
