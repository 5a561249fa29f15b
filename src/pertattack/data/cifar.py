"""The CIFAR-10 loader, from the official "CIFAR-10 python version".

The official distribution is the tarball ``cifar-10-python.tar.gz`` holding the folder
``cifar-10-batches-py/`` with six pickled batches: ``data_batch_1`` ... ``data_batch_5`` (10,000
training images each) and ``test_batch`` (10,000 test images). Each batch is a dict with
``b"data"``, a uint8 array (N, 3072) whose rows are the red, green and blue 32x32 planes one after
the other (each plane row-major), and ``b"labels"``, a list of N ints in 0..9.

The batches are pickles, and unpickling runs code chosen by whoever wrote the file: only load
files from a trusted source (the official tarball, or a copy made by you). The loader unpickles
only the six expected file names inside the expected folder (after resolving links), and never a
file elsewhere.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .idx import default_data_root

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_TARBALL",
    "CIFAR10_FOLDER",
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "default_cifar10_root",
    "download_cifar10",
    "extract_cifar10",
    "load_cifar10",
]

#: The official tarball (163 MB; md5 c58f30108f718f92721af3b95e74349a).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
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


def download_cifar10(root: str | os.PathLike[str], base_url: str = CIFAR10_URL, timeout: float = 60.0) -> Path:
    """Fetch ``cifar-10-python.tar.gz`` into ``root`` unless it is already there; returns its path.

    The download goes to a temporary file in ``root``, is checked to open as a CIFAR-10 tarball
    with safe members, and only then is renamed into place: a failed or cut download, or an error
    page, never leaves a file behind.

    Args:
        root: the data folder.
        base_url: URL of the tarball, or of a folder (ending with ``/``) holding it.
        timeout: seconds to wait for the server.
    """
    root = Path(root).expanduser()
    dest = root / CIFAR10_TARBALL
    if dest.is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{CIFAR10_TARBALL}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(_tarball_url(base_url), timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
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
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the official format; trusted files only
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a CIFAR-10 batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
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
) -> tuple[Tensor, Tensor]:
    """Load a CIFAR-10 split from the official python-version batches.

    ``root`` may hold the extracted folder ``cifar-10-batches-py/`` or the tarball
    ``cifar-10-python.tar.gz``; the tarball is extracted (safely, see :func:`extract_cifar10`) the
    first time it is needed.

    The batches are pickles: only load trusted files. See the module docstring.

    Args:
        root: the data folder; ``None`` means :func:`default_cifar10_root`.
        split: ``"train"`` (50,000 images, ``data_batch_1`` to ``data_batch_5`` in order) or
            ``"test"`` (10,000, ``test_batch``).
        download: fetch the tarball from ``base_url`` into ``root`` when the batches are missing.
        base_url: URL of the tarball (or of a folder ending with ``/`` holding it), see
            :data:`CIFAR10_URL`.
        limit: keep only the first ``limit`` examples (later batches are then not read).

    Returns:
        ``(x, y)``: x float32 of shape (N, 3, 32, 32) (RGB) with values in [0, 1], y int64 of
        shape (N,) with labels in 0..9 (see :data:`CIFAR10_CLASSES`).

    Raises:
        FileNotFoundError: the batches and the tarball are missing and ``download`` is False.
        ValueError: a bad split or limit, an unsafe or corrupt tarball, or a bad batch file.
    """
    root = default_cifar10_root() if root is None else Path(root).expanduser()
    names = _split_files(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    folder = root / CIFAR10_FOLDER
    if _missing(folder, names):
        tarball = root / CIFAR10_TARBALL
        if not tarball.is_file() and download:
            download_cifar10(root, base_url)
        if tarball.is_file():
            extract_cifar10(root, tarball)
    missing = _missing(folder, names)
    if missing:
        raise FileNotFoundError(
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
