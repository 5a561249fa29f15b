"""The CIFAR-10 loader, from the official "CIFAR-10 python version".

The official distribution is the tarball ``cifar-10-python.tar.gz`` holding the folder
``cifar-10-batches-py/`` with six pickled batches: ``data_batch_1`` ... ``data_batch_5`` (10,000
training images each) and ``test_batch`` (10,000 test images). Each batch is a dict with
``b"data"``, a uint8 array (N, 3072) whose rows are the red, green and blue 32x32 planes one after
the other (each plane row-major), and ``b"labels"``, a list of N ints in 0..9.

The batches are pickles, and a plain ``pickle.load`` runs whatever code the file names. The loader
never does: it reads them with a restricted unpickler (:func:`read_batch_pickle`) that builds only
what the format holds (dicts, lists, tuples, bytes, strings, numbers, booleans, None and NumPy
arrays or scalars of numbers) and refuses any other global with a ``ValueError`` before calling it.
It also unpickles only the six expected file names inside the expected folder (after resolving
links), and :func:`download_cifar10` checks the published md5 of the tarball.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor

from .idx import DownloadableError, default_data_root

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_TARBALL",
    "CIFAR10_FOLDER",
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "default_cifar10_root",
    "download_cifar10",
    "extract_cifar10",
    "load_cifar10",
    "read_batch_pickle",
]

#: The official tarball (163 MB; md5 c58f30108f718f92721af3b95e74349a).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: The md5 of :data:`CIFAR10_URL` as the CIFAR page (www.cs.toronto.edu/~kriz/cifar.html) publishes it.
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"

#: split -> the batch files it is made of, in order.
CIFAR10_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

#: label -> class name (the order of ``batches.meta``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32


# --- the restricted unpickler -----------------------------------------------------------------------

try:  # NumPy >= 2 writes numpy._core.*; NumPy 1 (and the official files, Python 2) numpy.core.*
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: never object, str, void or datetime


def _numeric_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it, for numeric types only."""
    dt = np.dtype(*args)
    if dt.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"NumPy dtype {dt} is not a numeric type")
    return dt


def _latin1_encode(text: str, encoding: str = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` with protocol < 3: ``encode(str, "latin1")`` only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or rest:
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(<str>, 'latin1')")
    return text.encode("latin-1")


def _array_globals() -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numeric_dtype,
                                         ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        for module, names in ((_multiarray, ("_reconstruct", "scalar")), (_numeric, ("_frombuffer",))):
            short = module.__name__.rsplit(".", 1)[1]
            for name in names:
                if hasattr(module, name):
                    found[(f"{package}.{short}", name)] = getattr(module, name)
    return found


#: (module, name) -> the object a CIFAR-10 batch may name: what NumPy 1 and 2 (and Python 2's NumPy,
#: which wrote the official files with protocol 2) need to pickle an array or a scalar, and
#: ``_codecs.encode`` for Python 3 ``bytes`` under protocol 2. Nothing else is ever imported.
SAFE_GLOBALS: dict[tuple[str, str], Any] = _array_globals()


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`SAFE_GLOBALS` (it never imports a module)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it names the global {module}.{name}, which a CIFAR-10 batch never holds (only dicts, lists, "
                "bytes, strings, numbers and NumPy arrays of numbers are read); refusing to load it: "
                "unpickling it could run code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR-10 batch")


def _check_plain(obj: Any, depth: int = 0, seen: set[int] | None = None) -> None:
    """Every object reached is a container, string, number or numeric array (no object arrays).

    Each container is checked once (by id): a pickle's shared references (a list of 50 references to
    one list, 8 levels deep) make few objects but astronomically many paths.
    """
    if depth > 20:
        raise pickle.UnpicklingError("nested more than 20 levels deep")
    if isinstance(obj, (dict, list, tuple)):
        seen = set() if seen is None else seen
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for v in (x for kv in obj.items() for x in kv) if isinstance(obj, dict) else obj:
            _check_plain(v, depth + 1, seen)
    elif isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise pickle.UnpicklingError(f"a NumPy array of dtype {obj.dtype} (not numbers)")
    elif not (obj is None or isinstance(obj, (bytes, str, int, float, complex))):  # bool is an int
        raise pickle.UnpicklingError(f"an object of type {type(obj).__name__}")


def read_batch_pickle(file: BinaryIO | bytes) -> Any:
    """Unpickle a CIFAR-10 batch without running code.

    Only dicts, lists, tuples, bytes, strings, numbers, booleans, None and NumPy arrays or scalars of
    numeric dtype are built (strings of Python 2 files come back as ``bytes``); any other global a
    pickle names is refused before it is imported or called.

    Args:
        file: an open binary file, or the pickle's bytes.

    Raises:
        pickle.UnpicklingError: a global or object outside the format (the message names it).
    """
    stream = io.BytesIO(file) if isinstance(file, (bytes, bytearray)) else file
    obj = _BatchUnpickler(stream, encoding="bytes").load()
    _check_plain(obj)
    return obj


def default_cifar10_root() -> Path:
    """Where CIFAR-10 is looked for when no folder is given.

    ``$PERTATTACK_CIFAR10`` if set, else ``../shared/data/cifar10`` relative to the working
    directory if that folder exists, else ``~/.cache/pertattack/cifar10``. The folder holds
    ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (or both).
    """
    return default_data_root("cifar10", "PERTATTACK_CIFAR10")


def _split_files(split: str) -> tuple[str, ...]:
    if split not in CIFAR10_BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return CIFAR10_BATCHES[split]


def _safe_members(tar: tarfile.TarFile, path: str | os.PathLike[str]) -> list[tarfile.TarInfo]:
    """The members to extract: regular files and folders under ``cifar-10-batches-py/``.

    Raises:
        ValueError: a member with an absolute path or a ``..`` component, a link or a device
            (anything a crafted tarball could use to write outside the target folder).
    """
    members = []
    for member in tar.getmembers():
        name = member.name
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ".." in parts or ":" in name:
            raise ValueError(f"{path}: unsafe member {name!r} (absolute path or '..'); refusing to extract")
        if not (member.isfile() or member.isdir()):
            raise ValueError(f"{path}: member {name!r} is a link or special file; refusing to extract")
        if parts and parts[0] == CIFAR10_FOLDER:
            members.append(member)
    return members


def _open_tarball(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable tarball ({err})") from err
    try:
        members = _safe_members(tar, path)
    except (tarfile.TarError, OSError, EOFError) as err:  # a cut gzip stream surfaces here
        tar.close()
        raise ValueError(f"{path}: corrupt or truncated tarball ({err})") from err
    except BaseException:
        tar.close()
        raise
    if not any(PurePosixPath(m.name).name in CIFAR10_BATCHES["test"] for m in members):
        tar.close()
        raise ValueError(f"{path}: no {CIFAR10_FOLDER}/ folder with the CIFAR-10 batches inside")
    return tar, members


def extract_cifar10(root: str | os.PathLike[str], tarball: str | os.PathLike[str] | None = None) -> Path:
    """Extract ``cifar-10-batches-py/`` from the tarball into ``root``; returns that folder.

    Every member is checked first (no absolute paths, no ``..``, no links or devices: the whole
    tarball is refused otherwise) and only ``cifar-10-batches-py/`` is extracted. Extraction goes
    to a temporary folder inside ``root`` and is moved into place afterwards, so an interrupted
    extraction never leaves a half-written batch; batch files already present are kept.

    Args:
        root: the data folder.
        tarball: the tarball; ``None`` means ``root / "cifar-10-python.tar.gz"``.

    Raises:
        ValueError: an unsafe member, or a file that is not a CIFAR-10 tarball.
    """
    root = Path(root).expanduser()
    tarball = root / CIFAR10_TARBALL if tarball is None else Path(tarball)
    folder = root / CIFAR10_FOLDER
    tar, members = _open_tarball(tarball)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{CIFAR10_FOLDER}.", suffix=".part"))
    try:
        with tar:
            try:
                # members are already checked; the "data" filter (Python >= 3.11.4, 3.10.12) checks again
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **extra)
            except (tarfile.TarError, EOFError) as err:
                raise ValueError(f"{tarball}: corrupt or truncated tarball ({err})") from err
        extracted = tmp / CIFAR10_FOLDER
        if not folder.exists():
            os.replace(extracted, folder)
        else:
            for item in extracted.iterdir():
                if not (folder / item.name).exists():
                    os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _tarball_url(base_url: str) -> str:
    return base_url + CIFAR10_TARBALL if base_url.endswith("/") else base_url


def download_cifar10(
    root: str | os.PathLike[str],
    base_url: str = CIFAR10_URL,
    timeout: float = 60.0,
    md5: str | None = CIFAR10_MD5,
) -> Path:
    """Fetch ``cifar-10-python.tar.gz`` into ``root`` unless it is already there; returns its path.

    The download goes to a temporary file in ``root``, its md5 is checked against ``md5``, it is
    checked to open as a CIFAR-10 tarball with safe members, and only then is it renamed into place:
    a failed, cut or altered download, or an error page, never leaves a file behind.

    Args:
        root: the data folder.
        base_url: URL of the tarball, or of a folder (ending with ``/``) holding it. A mirror must
            serve the official file: its md5 is checked all the same.
        timeout: seconds to wait for the server.
        md5: the expected md5 (hex) of the tarball, :data:`CIFAR10_MD5` by default; ``None`` skips the
            check (only for a tarball you made yourself).

    Raises:
        ValueError: the md5 differs, or the file is not a CIFAR-10 tarball with safe members.
        OSError: the download failed (``urllib.error.URLError`` and ``HTTPError`` are ``OSError``).
    """
    root = Path(root).expanduser()
    dest = root / CIFAR10_TARBALL
    if dest.is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    url = _tarball_url(base_url)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{CIFAR10_TARBALL}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise ValueError(
                f"{url}: md5 {digest.hexdigest()} differs from the published {md5.lower()}: the download is "
                "corrupt or not the official CIFAR-10 tarball; nothing was kept"
            )
        tar, _ = _open_tarball(Path(tmp))
        tar.close()
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _read_batch(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch, after checking it is the expected file inside ``folder``."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or path.name != name:
        raise ValueError(f"{folder / name}: resolves to {path}, outside {folder}; refusing to unpickle it")
    with path.open("rb") as f:
        try:
            batch = read_batch_pickle(f)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, OverflowError, MemoryError) as err:  # what a malformed pickle can raise
            raise ValueError(f"{path}: not a CIFAR-10 batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    # nested lists never reach np.asarray: its shape discovery walks paths (see _check_plain)
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path}: b'data' must be a uint8 array (N, {_ROW}), got a {type(data).__name__}")
    if isinstance(labels, (list, tuple)) and not all(isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{path}: b'labels' must be a list of integers, not of other objects")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, {_ROW}), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    base_url: str = CIFAR10_URL,
    limit: int | None = None,
    md5: str | None = CIFAR10_MD5,
) -> tuple[Tensor, Tensor]:
    """Load a CIFAR-10 split from the official python-version batches.

    ``root`` may hold the extracted folder ``cifar-10-batches-py/`` or the tarball
    ``cifar-10-python.tar.gz``; the tarball is extracted (safely, see :func:`extract_cifar10`) the
    first time it is needed.

    The batches are pickles, read without running code (:func:`read_batch_pickle`).

    Args:
        root: the data folder; ``None`` means :func:`default_cifar10_root`.
        split: ``"train"`` (50,000 images, ``data_batch_1`` to ``data_batch_5`` in order) or
            ``"test"`` (10,000, ``test_batch``).
        download: fetch the tarball from ``base_url`` into ``root`` when the batches are missing.
        base_url: URL of the tarball (or of a folder ending with ``/`` holding it), see
            :data:`CIFAR10_URL`.
        limit: keep only the first ``limit`` examples (later batches are then not read).
        md5: the md5 a downloaded tarball must have, see :func:`download_cifar10`.

    Returns:
        ``(x, y)``: x float32 of shape (N, 3, 32, 32) (RGB) with values in [0, 1], y int64 of
        shape (N,) with labels in 0..9 (see :data:`CIFAR10_CLASSES`).

    Raises:
        FileNotFoundError: the batches and the tarball are missing and ``download`` is False.
        ValueError: a bad split or limit, an unsafe or corrupt tarball, a download whose md5 differs,
            or a bad batch file (including one that names anything but dicts, lists, strings,
            numbers and numeric NumPy arrays).
    """
    root = default_cifar10_root() if root is None else Path(root).expanduser()
    names = _split_files(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    folder = root / CIFAR10_FOLDER
    if _missing(folder, names):
        tarball = root / CIFAR10_TARBALL
        if not tarball.is_file() and download:
            download_cifar10(root, base_url, md5=md5)
        if tarball.is_file():
            extract_cifar10(root, tarball)
    missing = _missing(folder, names)
    if missing:
        raise DownloadableError(
            f"CIFAR-10 batch {missing[0]} not found in {folder}, and no {CIFAR10_TARBALL} in {root}. Pass "
            f"download=True (fetches {_tarball_url(base_url)}), or download the 'CIFAR-10 python version' "
            f"tarball yourself into that folder (extracted or not) and point root or $PERTATTACK_CIFAR10 at it."
        )
    datas, labels = [], []
    count = 0
    for name in names:
        if limit is not None and count >= limit:
            break
        data, lab = _read_batch(folder, name)
        datas.append(data)
        labels.append(lab)
        count += data.shape[0]
    data = np.concatenate(datas) if datas else np.zeros((0, _ROW), dtype=np.uint8)
    lab = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if limit is not None:
        data, lab = data[:limit], lab[:limit]
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, *_SHAPE)).to(torch.float32).div_(255.0)
    y = torch.from_numpy(np.ascontiguousarray(lab))
    return x, y
