"""IDX files (the MNIST container format) and the MNIST loader.

An IDX file is a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the array in C order and big-endian byte order. MNIST ships it gzip-compressed;
:func:`read_idx` accepts both, telling them apart by the gzip magic ``1f 8b``, not by the name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_URL",
    "MNIST_FILES",
    "MNIST_MD5",
    "IDX_DTYPES",
    "read_idx",
    "write_idx",
    "load_mnist",
    "download_mnist",
    "default_mnist_root",
]

#: Mirror of the four MNIST files (the one torchvision uses first); any folder URL holding
#: ``train-images-idx3-ubyte.gz`` and the other three works.
DEFAULT_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: split -> (images file, labels file), gzip names; the un-gzipped names drop ``.gz``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: un-gzipped name -> md5 of the file's content after gunzip (mirrors differ in gzip headers, not in
#: content): what a download must hold, see :func:`download_mnist`.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

#: IDX type code -> numpy dtype (big-endian, as stored on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """The file as a stream of its content, gunzipped when it starts with the gzip magic; a corrupt or cut gzip
    stream is a ``ValueError`` naming the file."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        try:
            yield gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw  # type: ignore[misc]
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut stream an EOFError
            if not gz:
                raise
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err


def _read_upto(f: BinaryIO, n: int) -> bytearray:
    """At most ``n`` bytes of ``f``, fewer at its end; memory grows with what is there, not with ``n``."""
    buf = bytearray()
    while len(buf) < n and (chunk := f.read(min(n - len(buf), 1 << 20))):
        buf += chunk
    return buf


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed.

    The header is read first, then only the bytes it announces (and one more, to refuse trailing bytes):
    a small gzip file that inflates to far more than its header promises is never inflated whole.

    Args:
        path: the file. Compression is detected from the content (gzip magic ``1f 8b``).

    Returns:
        The array in native byte order, with the file's dtype (uint8 for MNIST) and shape.

    Raises:
        ValueError: bad magic number, unknown type code, truncated data or trailing bytes.
    """
    with _open(path) as f:
        magic = _read_upto(f, 4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise ValueError(f"{path}: not an IDX file (magic {magic.hex() or 'empty'}, expected 0000<type><ndim>)")
        code, ndim = magic[2], magic[3]
        if code not in IDX_DTYPES:
            known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
            raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} (known: {known})")
        dims = _read_upto(f, 4 * ndim)
        if len(dims) < 4 * ndim:
            raise ValueError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, {ndim} dimensions need "
                             f"{4 + 4 * ndim})")
        shape = struct.unpack(f">{ndim}I", dims)
        dtype = IDX_DTYPES[code]
        expected = math.prod(shape) * dtype.itemsize
        data = _read_upto(f, expected)
        if len(data) < expected:
            raise ValueError(f"{path}: IDX data truncated: shape {shape} needs {expected} bytes, found {len(data)}")
        if f.read(1):
            raise ValueError(f"{path}: IDX data has trailing bytes: shape {shape} needs {expected} bytes, found more")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a native-order copy


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends with ``.gz``.

    Args:
        path: destination.
        array: uint8, int8, int16, int32, float32 or float64, with 1 to 255 dimensions.

    Raises:
        ValueError: a dtype IDX cannot store, or an unsupported number of dimensions.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


def default_mnist_root() -> Path:
    """Where MNIST is looked for when no folder is given.

    ``$PERTATTACK_MNIST`` if set, else ``../shared/data/mnist`` relative to the working directory
    if that folder exists, else ``~/.cache/pertattack/mnist``.
    """
    return default_data_root("mnist", "PERTATTACK_MNIST")


def default_data_root(name: str, env_var: str) -> Path:
    """``$env_var`` if set, else ``../shared/data/<name>`` relative to the working directory if that
    folder exists, else ``~/.cache/pertattack/<name>``: where a data set is looked for by default."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    shared = Path.cwd().parent / "shared" / "data" / name
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "pertattack" / name


class DownloadableError(FileNotFoundError):
    """Data files that are missing and that ``download=True`` (``--download`` on the command line) would fetch:
    MNIST and CIFAR-10. Other missing files (STL-10, a user's) are plain FileNotFoundErrors."""


def _find(root: Path, gz_name: str) -> Path | None:
    """The file under ``root`` by its gzip name or its un-gzipped name, else None."""
    for name in (gz_name, gz_name.removesuffix(".gz")):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _fetch(url: str, dest: Path, timeout: float = 60.0, md5: str | None = None) -> None:
    """Download ``url`` to ``dest`` atomically: a temporary file in the same folder, then a rename.

    With ``md5``, the (gunzipped) content must have that md5, else ``ValueError`` and nothing is kept.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        if md5 is not None:
            h = hashlib.md5(usedforsecurity=False)
            with _open(tmp) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = h.hexdigest()
            if digest != md5.lower():
                raise ValueError(f"{url}: the content's md5 {digest} differs from the published {md5.lower()}: "
                                 "a corrupt download or not the MNIST file; nothing was kept")
        read_idx(tmp)  # refuse to install an error page or a cut download
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_mnist(
    root: str | os.PathLike[str],
    split: Literal["train", "test"] = "train",
    base_url: str = DEFAULT_URL,
    md5: dict[str, str] | None = MNIST_MD5,
) -> list[Path]:
    """Fetch the split's missing MNIST files from ``base_url`` into ``root``; returns their paths.

    Files already present (gzip or un-gzipped name) are kept. Each download's content (after
    gunzip) is checked against ``md5`` and to parse as IDX before it is renamed into place, so a
    failed, cut or altered fetch never leaves a file.

    Args:
        md5: un-gzipped file name -> md5 of its content, :data:`MNIST_MD5` by default; ``None`` skips
            the check (only for files you made yourself).

    Raises:
        ValueError: a download whose md5 differs, or that is not an IDX file.
        OSError: the download failed.
    """
    root = Path(root).expanduser()
    paths = []
    for name in _split_files(split):
        found = _find(root, name)
        if found is None:
            found = root / name
            expected = None if md5 is None else md5.get(name.removesuffix(".gz"))
            _fetch(base_url.rstrip("/") + "/" + name, found, md5=expected)
        paths.append(found)
    return paths


def _split_files(split: str) -> tuple[str, str]:
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return MNIST_FILES[split]


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    base_url: str = DEFAULT_URL,
    limit: int | None = None,
    md5: dict[str, str] | None = MNIST_MD5,
) -> tuple[Tensor, Tensor]:
    """Load an MNIST split from the four standard IDX files.

    Args:
        root: folder with ``train-images-idx3-ubyte.gz`` etc. (gzip or not); ``None`` means
            :func:`default_mnist_root`.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        download: fetch missing files from ``base_url`` into ``root``.
        base_url: folder URL of a mirror, see :data:`DEFAULT_URL`.
        limit: keep only the first ``limit`` examples.
        md5: what downloaded files must hold, see :func:`download_mnist`.

    Returns:
        ``(x, y)``: x float32 of shape (N, 1, 28, 28) with values in [0, 1], y int64 of shape (N,).

    Raises:
        FileNotFoundError: a file is missing and ``download`` is False.
        ValueError: a bad split, a negative limit, or files that do not form an MNIST split.
    """
    root = default_mnist_root() if root is None else Path(root).expanduser()
    names = _split_files(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if download:
        download_mnist(root, split, base_url, md5=md5)
    paths = []
    for name in names:
        found = _find(root, name)
        if found is None:
            raise DownloadableError(
                f"MNIST file {name} (or {name.removesuffix('.gz')}) not found in {root}. Pass download=True "
                f"(fetches from {base_url}), or download the four files yourself and point root or "
                "$PERTATTACK_MNIST at their folder."
            )
        paths.append(found)
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not form an MNIST split")
    if images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: MNIST images must be uint8, got {images.dtype}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
