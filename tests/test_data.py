"""Data loaders: IDX round trips and errors, MNIST from files, downloads from a local server, digits."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve_folder

from pertattack.data import (
    MNIST_FILES,
    MNIST_MD5,
    default_cifar10_root,
    default_mnist_root,
    download_mnist,
    load_digits,
    load_mnist,
    read_idx,
    write_idx,
)

REAL_MNIST = Path("/work/shared/data/mnist")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint8, (5, 3, 4)), (np.int8, (7,)), (np.int16, (2, 3)), (np.int32, (3, 1)), (np.float32, (4, 2)),
     (np.float64, (2, 2, 2, 2))],
)  # fmt: skip
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz, plain = tmp_path / "really-gzip.idx", tmp_path / "not-gzip.gz.idx"
    write_idx(tmp_path / "x.gz", array)
    (tmp_path / "x.gz").rename(gz)
    write_idx(plain, array)
    np.testing.assert_array_equal(read_idx(gz), array)
    np.testing.assert_array_equal(read_idx(plain), array)


def test_idx_header_is_big_endian(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.idx", np.array([[1, 2, 3]], dtype=np.int16))
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX type code"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "trailing bytes"),
    ],
)
def test_idx_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros((50, 50), dtype=np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "cut.gz")


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot store dtype"):
        write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.uint16))


def _fake_mnist(root: Path, split: str, n: int, *, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a small MNIST-format split; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[0, 0, 0] = 255  # the extremes map to exactly 0 and 1
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_FILES[split], (images, labels), strict=True):
        write_idx(root / (name if gz else name.removesuffix(".gz")), array)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_from_files(tmp_path: Path, split: str, gz: bool) -> None:
    images, labels = _fake_mnist(tmp_path, split, 20, gz=gz)
    x, y = load_mnist(tmp_path, split)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (20,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    torch.testing.assert_close(x[:, 0] * 255, torch.from_numpy(images).float())
    assert y.tolist() == labels.tolist()
    x5, y5 = load_mnist(tmp_path, split, limit=5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


def test_load_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "valid")  # type: ignore[arg-type]


def test_load_mnist_mismatched_files(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, "test", 4)
    write_idx(tmp_path / MNIST_FILES["test"][1], np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="do not form an MNIST split"):
        load_mnist(tmp_path, "test")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server for a folder holding a fake MNIST test split; yields (url, folder, request log)."""
    served = tmp_path / "served"
    _fake_mnist(served, "test", 12, seed=1)
    with serve_folder(served) as (url, requests):
        yield url, served, requests


def test_load_mnist_download(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, served, requests = mirror
    root = tmp_path / "cache" / "mnist"
    x, y = load_mnist(root, "test", download=True, base_url=url, md5=_md5s(served))
    assert x.shape == (12, 1, 28, 28)
    assert sorted(os.listdir(root)) == sorted(MNIST_FILES["test"])  # no temporary files left behind
    for name in MNIST_FILES["test"]:
        assert (root / name).read_bytes() == (served / name).read_bytes()
    n_requests = len(requests)
    x2, y2 = load_mnist(root, "test", download=True, base_url=url)  # present: no new request, no check
    assert len(requests) == n_requests
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_load_mnist_download_failure_leaves_nothing(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, served, _ = mirror
    root = tmp_path / "cache"
    with pytest.raises(OSError):  # HTTP 404 for the train split, which the mirror lacks
        load_mnist(root, "train", download=True, base_url=url)
    assert list(root.iterdir()) == []
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(root, "test", download=True, base_url=url, md5=None)
    assert list(root.iterdir()) == []


def _md5s(folder: Path) -> dict[str, str]:
    """Un-gzipped name -> md5 of the content, for the files of a folder."""
    return {p.name.removesuffix(".gz"): hashlib.md5(gzip.decompress(p.read_bytes())).hexdigest()
            for p in folder.glob("*.gz")}


def test_mnist_download_checks_the_published_md5(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    """A file whose content is not the published MNIST (here: any fake) is refused and not kept."""
    url, served, _ = mirror
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"md5 [0-9a-f]{32} differs from the published 2646ac647ad5339dbf08"):
        load_mnist(root, "test", download=True, base_url=url)  # the default: the published md5s
    assert list(root.iterdir()) == []
    assert len(download_mnist(root, "test", url, md5=_md5s(served))) == 2


def test_shared_mnist_matches_the_published_md5() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not shared.is_dir():
        pytest.skip("shared MNIST folder not present")
    assert _md5s(shared) == MNIST_MD5


@pytest.mark.parametrize(("find", "name", "env"), [(default_mnist_root, "mnist", "PERTATTACK_MNIST"),
                                                   (default_cifar10_root, "cifar10", "PERTATTACK_CIFAR10")])
def test_default_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, find, name: str, env: str) -> None:
    monkeypatch.setenv(env, str(tmp_path / "env"))
    assert find() == tmp_path / "env"
    monkeypatch.delenv(env)
    work = tmp_path / "work" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find() == tmp_path / "home" / ".cache" / "pertattack" / name
    (tmp_path / "work" / "shared" / "data" / name).mkdir(parents=True)
    assert find() == tmp_path / "work" / "shared" / "data" / name


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="real MNIST not available")
def test_real_mnist_test_split() -> None:
    x, y = load_mnist(REAL_MNIST, "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert 0.12 < x.mean() < 0.14  # MNIST's mean pixel is 0.1325
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_digits() -> None:
    pytest.importorskip("sklearn")
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == round(1797 * 0.25)
    assert x_tr.min() >= 0 and x_tr.max() == 1.0
    assert set(y_te.tolist()) == set(range(10))
    again, _ = load_digits("train", seed=0)
    other, _ = load_digits("train", seed=1)
    assert torch.equal(again, x_tr) and not torch.equal(other, x_tr)
    # the two splits partition the data set: as multisets, train + test == all images
    from sklearn.datasets import load_digits as sk_load_digits

    ours = sorted(tuple(r) for r in (torch.cat([x_tr, x_te]).flatten(1) * 16).round().int().tolist())
    assert ours == sorted(tuple(int(v) for v in r) for r in sk_load_digits().data)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits("test", test_fraction=1.0)


def test_load_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install pertattack\[demo\]"):
        load_digits()


def test_gzip_module_compat(tmp_path: Path) -> None:
    """Files written by write_idx(.gz) are ordinary gzip files readable by other tools."""
    write_idx(tmp_path / "a.gz", np.arange(4, dtype=np.uint8))
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"


def test_idx_reads_only_what_the_header_announces(tmp_path: Path) -> None:
    """A 64 KB gzip file announcing 10 bytes, then 64 MB of zeros: refused without inflating the zeros; a
    header promising far more than the file holds is refused without allocating the promise (issue 18)."""
    import struct
    import tracemalloc
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    parts = [comp.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(range(10)))]
    parts += [comp.compress(bytes(1 << 20)) for _ in range(64)]
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(b"".join([*parts, comp.flush()]))
    assert bomb.stat().st_size < 200_000
    promise = tmp_path / "promise.idx"
    promise.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">4I", *[2**32 - 1] * 4) + b"\x01\x02")
    for path, message in ((bomb, "trailing bytes"), (promise, "truncated")):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=message):
                read_idx(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{path.name}: {peak} bytes"
