"""CIFAR-10: the python-version loader (folder, tarball, download, safety) and the NIN / DenseNet-40 models."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve_folder

import pertattack
from pertattack.data import CIFAR10_BATCHES, download_cifar10, load_cifar10
from pertattack.data.cifar import read_batch_pickle
from pertattack.experiments.paper import cache_tag
from pertattack.models import NIN, DenseNet40, FCAutoencoder, build_model

FOLDER = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
REAL_CIFAR10 = Path("/work/shared/data/cifar10")


def _fake_batches(n: int = 3, seed: int = 0) -> dict[str, dict[bytes, object]]:
    """A few images per batch, in the official dict layout; batch i has labels starting at i."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate(CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        batches[name] = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}
    first = batches["data_batch_1"][b"data"]
    first[0] = 0
    first[0, 0] = 255  # the extremes map to exactly 0 and 1
    # known pixels: row = R plane, G plane, B plane, each 32x32 row-major
    batches["test_batch"][b"data"][1, 1024 * 2 + 32 * 5 + 7] = 200  # (c, h, w) = (2, 5, 7) of test image 1
    batches["test_batch"][b"data"][1, 1024 * 1 + 32 * 0 + 31] = 51  # (1, 0, 31)
    return batches


def _write_folder(root: Path, batches: dict[str, dict[bytes, object]]) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def _write_tarball(path: Path, batches: dict[str, dict[bytes, object]], extra: dict[str, bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        files = {f"{FOLDER}/{name}": pickle.dumps(batch, protocol=2) for name, batch in batches.items()}
        files.update(extra or {})
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _expected(batches: dict[str, dict[bytes, object]], split: str) -> tuple[np.ndarray, list[int]]:
    names = CIFAR10_BATCHES[split]
    data = np.concatenate([batches[n][b"data"] for n in names])
    labels = [lab for n in names for lab in batches[n][b"labels"]]
    return data, labels


@pytest.mark.parametrize("form", ["folder", "tarball"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_cifar10(tmp_path: Path, split: str, form: str) -> None:
    batches = _fake_batches()
    if form == "folder":
        _write_folder(tmp_path, batches)
    else:
        _write_tarball(tmp_path / TARBALL, batches)
    x, y = load_cifar10(tmp_path, split)
    n = 15 if split == "train" else 3
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    data, labels = _expected(batches, split)
    assert y.tolist() == labels  # batches 1..5 in order
    torch.testing.assert_close(x * 255, torch.from_numpy(data).float().reshape(n, 3, 32, 32))
    if split == "train":
        assert x[0].min() == 0.0 and x[0].max() == 1.0 and x[0, 0, 0, 0] == 1.0
    else:
        assert x[1, 2, 5, 7] == 200 / 255 and x[1, 1, 0, 31] == 51 / 255
    if form == "tarball":
        assert sorted(os.listdir(tmp_path)) == [FOLDER, TARBALL]  # extracted once, no temporary left
        assert sorted(os.listdir(tmp_path / FOLDER)) == sorted(batches)
    x4, y4 = load_cifar10(tmp_path, split, limit=4)
    assert torch.equal(x4, x[:4]) and torch.equal(y4, y[:4])
    x0, y0 = load_cifar10(tmp_path, split, limit=0)
    assert x0.shape == (0, 3, 32, 32) and y0.shape == (0,)


def test_load_cifar10_limit_reads_only_needed_batches(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path, _fake_batches())
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    x, _ = load_cifar10(tmp_path, "train", limit=6)  # batches 1 and 2 suffice
    assert x.shape[0] == 6
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path, "train")


def test_load_cifar10_bad_arguments_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "valid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        load_cifar10(tmp_path, "test", limit=-1)
    with pytest.raises(FileNotFoundError, match=r"test_batch not found.*download=True.*PERTATTACK_CIFAR10"):
        load_cifar10(tmp_path, "test")
    batches = _fake_batches()
    del batches["data_batch_4"]
    _write_folder(tmp_path, batches)
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(tmp_path, "train")
    assert load_cifar10(tmp_path, "test")[0].shape == (3, 3, 32, 32)


def test_load_cifar10_rejects_bad_batches(tmp_path: Path) -> None:
    batches = _fake_batches()
    batches["test_batch"][b"labels"] = [0, 1]  # 3 images, 2 labels
    _write_folder(tmp_path, batches)
    with pytest.raises(ValueError, match="b'labels'"):
        load_cifar10(tmp_path, "test")
    batches["test_batch"] = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    _write_folder(tmp_path, batches)
    with pytest.raises(ValueError, match="b'data'"):
        load_cifar10(tmp_path, "test")


def test_load_cifar10_refuses_batch_outside_folder(tmp_path: Path) -> None:
    """A batch name that is a link to a file elsewhere is not unpickled."""
    folder = _write_folder(tmp_path / "data", {"data_batch_1": _fake_batches()["test_batch"]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(pickle.dumps(_fake_batches()["test_batch"]))
    (folder / "test_batch").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_cifar10(tmp_path / "data", "test")


@pytest.mark.parametrize(
    "evil",
    [f"{FOLDER}/../x", "../x", "/tmp/pertattack-evil-x"],
)
def test_tarball_with_unsafe_member_is_rejected(tmp_path: Path, evil: str) -> None:
    root = tmp_path / "root"
    _write_tarball(root / TARBALL, _fake_batches(), extra={evil: b"pwned"})
    with pytest.raises(ValueError, match="unsafe member"):
        load_cifar10(root, "test")
    assert sorted(os.listdir(root)) == [TARBALL]  # nothing extracted, no temporary left
    assert not (tmp_path / "x").exists() and not Path("/tmp/pertattack-evil-x").exists()


def test_tarball_with_link_is_rejected(tmp_path: Path) -> None:
    path = _write_tarball(tmp_path / TARBALL, _fake_batches())
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{FOLDER}/test_batch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="link"):
        load_cifar10(tmp_path, "test")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server for a folder holding a fake CIFAR-10 tarball; yields (url, folder, request log)."""
    served = tmp_path / "served"
    _write_tarball(served / TARBALL, _fake_batches(seed=1))
    with serve_folder(served) as (url, requests):
        yield url, served, requests


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_load_cifar10_download(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, served, requests = mirror
    root = tmp_path / "cache" / "cifar10"
    x, y = load_cifar10(root, "test", download=True, base_url=url + TARBALL, md5=_md5(served / TARBALL))
    assert x.shape == (3, 3, 32, 32)
    assert y.tolist() == _fake_batches(seed=1)["test_batch"][b"labels"]
    assert sorted(os.listdir(root)) == [FOLDER, TARBALL]  # no temporary files left behind
    assert (root / TARBALL).read_bytes() == (served / TARBALL).read_bytes()
    n_requests = len(requests)
    x2, y2 = load_cifar10(root, "train", download=True, base_url=url)  # present: no new request
    assert len(requests) == n_requests and x2.shape == (15, 3, 32, 32)
    assert torch.equal(x, load_cifar10(root, "test")[0])


def test_load_cifar10_download_failure_leaves_nothing(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, served, _ = mirror
    root = tmp_path / "cache"
    with pytest.raises(OSError):  # HTTP 404
        load_cifar10(root, "test", download=True, base_url=url + "missing.tar.gz")
    assert list(root.iterdir()) == []
    (served / TARBALL).write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a readable tarball"):
        load_cifar10(root, "test", download=True, base_url=url, md5=None)
    assert list(root.iterdir()) == []


def test_download_cifar10_checks_the_published_md5(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    """A tarball whose md5 is not the published one (here: any fake) is refused and not kept."""
    url, served, _ = mirror
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"md5 [0-9a-f]{32} differs from the published c58f30108f718f92721a"):
        download_cifar10(root, url)  # the default: the published md5
    assert not root.exists() or list(root.iterdir()) == []
    with pytest.raises(ValueError, match="md5"):
        load_cifar10(root, "test", download=True, base_url=url, md5="0" * 32)
    assert list(root.iterdir()) == []
    assert download_cifar10(root, url, md5=_md5(served / TARBALL).upper()) == root / TARBALL  # hex in any case
    assert _md5(root / TARBALL) == _md5(served / TARBALL)


# --- the restricted unpickler ----------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2 wrote for the official batches: protocol 2, str as (SHORT_)BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _binstring(self, obj: bytes | str) -> None:
        raw = obj.encode("ascii") if isinstance(obj, str) else obj
        n = len(raw)
        self.write(b"U" + bytes([n]) if n < 256 else b"T" + struct.pack("<i", n))
        self.write(raw)
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(obj)

    def save_str(self, obj: str) -> None:
        self._binstring(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_pickle(obj: object) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")  # NumPy 1's names


@pytest.mark.parametrize("writer", ["python2-numpy1", "protocol2", "protocol4", "protocol5"])
def test_restricted_unpickler_reads_every_writer_of_the_format(tmp_path: Path, writer: str) -> None:
    batch = _fake_batches()["test_batch"]
    batch[b"scalar"] = np.float32(0.5)  # NumPy scalars are numbers too
    batch[b"floats"] = np.linspace(0, 1, 5)
    if writer == "python2-numpy1":
        payload = _py2_pickle(batch)
        assert b"cnumpy.core.multiarray\n_reconstruct" in payload and b"_codecs" not in payload
    else:
        payload = pickle.dumps(batch, protocol=int(writer[-1]))
    loaded = read_batch_pickle(payload)
    assert loaded.keys() == batch.keys() and loaded[b"labels"] == batch[b"labels"]
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"data"].dtype == np.uint8 and loaded[b"scalar"] == np.float32(0.5)
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "test_batch").write_bytes(payload)
    x, y = load_cifar10(tmp_path, "test")
    assert y.tolist() == batch[b"labels"] and x.shape == (3, 3, 32, 32)


class _Evil:
    """A pickle that calls ``func(*args)`` when loaded."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _payloads(target: Path) -> dict[str, object]:
    return {
        "builtins.open": _Evil(open, str(target), "w"),
        "os.system": _Evil(os.system, f"touch {target}"),
        "numpy.save": _Evil(np.save, str(target), np.zeros(1)),  # a numpy global outside the array format
        "pathlib.Path": _Evil(Path, str(target)),
    }


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("name", ["builtins.open", "os.system", "numpy.save", "pathlib.Path"])
def test_malicious_batch_runs_no_code(tmp_path: Path, name: str, protocol: int) -> None:
    """A hostile batch would create a file when unpickled: it is refused with a clear error and nothing is created."""
    target = tmp_path / "pwned"
    batch = _fake_batches()["test_batch"]
    batch[b"data"] = [_payloads(target)[name], batch[b"data"]]
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 batch \(it names the global [\w.]+, .*"
                                         r"refusing to load it: unpickling it could run code\)"):
        load_cifar10(tmp_path, "test")
    assert not target.exists() and sorted(os.listdir(tmp_path)) == [FOLDER]


def test_restricted_unpickler_refuses_non_numeric_arrays_and_foreign_objects() -> None:
    for obj, what in [(np.array([1, "a"], dtype=object), "dtype object"), (np.array(["ab"]), "<U2"),
                      ({b"data": {1, 2}}, "set"), (b"x" * 3, None)]:
        payload = pickle.dumps(obj, protocol=2)
        if what is None:
            assert read_batch_pickle(payload) == obj
            continue
        with pytest.raises(pickle.UnpicklingError, match=what):
            read_batch_pickle(payload)
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode is allowed only"):
        read_batch_pickle(pickle.dumps(_Evil(__import__("codecs").encode, "eJwDAAAAAAE=", "base64"), protocol=2))


def test_shared_references_are_checked_once(tmp_path: Path) -> None:
    """A crafted batch of shared references (50 wide, 8 deep: 50**8 paths, a few hundred bytes) is read in
    moments: the structure check visits objects, not paths (issue 18)."""
    import signal

    labels: list = [0]
    for _ in range(8):
        labels = [labels] * 50
    assert len(pickle.dumps(labels, protocol=2)) < 1000
    payload = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}, protocol=2)

    def too_slow(*_: object) -> None:
        raise TimeoutError("the structure check walks paths")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        got = read_batch_pickle(payload)[b"labels"]  # (no == here: comparing would walk the paths)
        assert len(got) == 50 and got[0] is got[1]
        _write_folder(tmp_path, {**_fake_batches(), "test_batch": {b"data": np.zeros((3, 3072), np.uint8),
                                                                   b"labels": labels}})
        with pytest.raises(ValueError, match="b'labels' must be a list of integers"):
            load_cifar10(tmp_path, "test")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    cyclic: list = []
    cyclic.append(cyclic)
    assert read_batch_pickle(pickle.dumps(cyclic, protocol=2))[0][0] is not None  # a cycle ends too


@pytest.mark.skipif(not (REAL_CIFAR10 / FOLDER).is_dir() and not (REAL_CIFAR10 / TARBALL).is_file(),
                    reason="real CIFAR-10 not available")  # fmt: skip
def test_real_cifar10_test_split() -> None:
    x, y = load_cifar10(REAL_CIFAR10, "test")
    assert x.shape == (10000, 3, 32, 32) and x.min() == 0.0 and x.max() == 1.0
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10


# --- models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nin", "densenet40"])
def test_cifar_models_output_logits(name: str) -> None:
    model = build_model(name, seed=0).eval()
    out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities
    assert build_model(name, classes=4)(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_nin_architecture() -> None:
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size[0]) for m in NIN().modules() if isinstance(m, torch.nn.Conv2d)
    ]
    assert convs == [(3, 192, 5), (192, 160, 1), (160, 96, 1), (96, 192, 5), (192, 192, 1), (192, 192, 1),
                     (192, 192, 3), (192, 192, 1), (192, 10, 1)]  # fmt: skip
    assert any(isinstance(m, torch.nn.Dropout) for m in NIN().modules())
    half = [(m.in_channels, m.out_channels) for m in NIN(width=0.5).modules() if isinstance(m, torch.nn.Conv2d)]
    assert half == [(3, 96), (96, 80), (80, 48), (48, 96), (96, 96), (96, 96), (96, 96), (96, 96), (96, 10)]
    assert NIN(width=0.5)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        NIN(width=0)


def test_densenet40_architecture() -> None:
    model = DenseNet40()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.9e6 < n_params < 1.1e6  # the paper's 1.0M
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 12 + 2  # depth 40 = these 39 convolutions + the linear layer
    assert convs[0].out_channels == 16
    assert sum(c.kernel_size == (3, 3) for c in convs) == 37
    assert model.classifier.in_features == 16 + 3 * 12 * 12


def test_build_densenet40_deterministic() -> None:
    a, b = build_model("densenet40", seed=0), build_model("densenet40", seed=0)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), key
    c = build_model("densenet40", seed=1)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def _calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set BatchNorm running statistics to those of ``x``, then eval mode.

    Untrained, the running statistics are (0, 1): in eval mode the 39 unnormalised layers of DenseNet-40
    give logits of order 1e3, the softmax saturates and the cross-entropy gradient is exactly zero.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


@pytest.mark.parametrize("name", ["nin", "densenet40"])
def test_fgsm_on_cifar_models(name: str) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _calibrate_batchnorm(build_model(name, seed=0), torch.rand(8, 3, 32, 32))
    result = pertattack.get_attack("fgsm", eps=0.03)(model, x)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1  # the box
    assert (result.x_adv - x).abs().max() <= 0.03 + 1e-6
    assert not torch.equal(result.x_adv, x)
    assert not model.training


def test_fc_autoencoder_cifar_50_percent() -> None:
    ae = FCAutoencoder(in_shape=(3, 32, 32), code=1536)
    assert build_model("fc-ae", in_shape=(3, 32, 32), code=1536).encoder[-1].out_features == 1536 == 3072 // 2
    x = torch.rand(2, 3, 32, 32)
    out = ae(x)
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert ae.encode(x).shape == (2, 1536)


def test_cli_train_and_run_on_cifar10(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pertattack train/run --data cifar10` on a synthetic folder (4 images per batch)."""
    from pertattack.cli import main

    _write_folder(tmp_path, _fake_batches(4))
    ckpt = tmp_path / "nin.pt"
    data = ["--data", "cifar10", "--root", str(tmp_path)]
    assert main(["train", "nin", *data, "--epochs", "1", "--out", str(ckpt)]) == 0
    assert main(["run", "fgsm", "--model", str(ckpt), *data, "--n", "4", "--eps", "0.03"]) == 0
    assert "eps 0.03: fooling ratio" in capsys.readouterr().out


def test_reproduce_fig3c_on_synthetic_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The fig3c pipeline on a synthetic folder and a cached (untrained) NIN; no CIFAR data: fig3d raises,
    while `all` would skip it."""
    import csv

    from pertattack.cli import main
    from pertattack.training import save_model

    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    _write_folder(tmp_path / "data", _fake_batches(4))
    tag = cache_tag("cifar10", "nin", 1, 0, *load_cifar10(tmp_path / "data", "train"))
    # a narrow NIN (the checkpoint carries its width): the same pipeline at a fraction of the cost
    save_model(tmp_path / "cache" / f"{tag}.pt", build_model("nin", seed=0, width=1 / 24), "nin", width=1 / 24)
    args = ["--out", str(tmp_path / "res"), "--n", "4", "--root", str(tmp_path / "data"), "--epochs", "1",
            "--device", "cpu"]
    assert main(["reproduce", "fig3c", *args]) == 0
    rows = list(csv.reader(open(tmp_path / "res" / "fig3c.csv")))
    assert rows[0][1:] == ["eps=0", "eps=0.005", "eps=0.01", "eps=0.015", "eps=0.02", "eps=0.025", "eps=0.03"]
    assert {r[0] for r in rows[1:]} >= {"DeepFool", "Alg1-10", "FGSM", "random"}
    missing = ["--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "res"), "--epochs", "1"]
    assert main(["reproduce", "fig3d", *missing]) == 2
    assert "cifar-10" in capsys.readouterr().err.lower()


@pytest.mark.slow  # 23-24 s: the whole fig4c grid (7 budgets x 6 attacks); the pixel attacks are tested on their own
def test_reproduce_fig4c_on_synthetic_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fig4c pipeline (pixel attacks on the CIFAR-10 autoencoder) on a synthetic folder; the cached
    autoencoder is a small untrained one (the checkpoint carries its own sizes)."""
    import csv

    from pertattack.cli import main
    from pertattack.training import save_model

    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    kw = {"in_shape": (3, 32, 32), "code": 32, "hidden": 64}
    _write_folder(tmp_path / "data", _fake_batches(3))
    tag = cache_tag("cifar10", "fc-ae", 10, 0, *load_cifar10(tmp_path / "data", "train"))
    save_model(tmp_path / "cache" / f"{tag}.pt", build_model("fc-ae", seed=0, **kw), "fc-ae", **kw)
    assert main(["reproduce", "fig4c", "--out", str(tmp_path / "res"), "--n", "3", "--root", str(tmp_path / "data"),
                 "--epochs", "1", "--device", "cpu"]) == 0
    rows = list(csv.reader(open(tmp_path / "res" / "fig4c.csv")))
    assert {r[0] for r in rows[1:]} == {"linear-pixel-1", "linear-pixel-10", "linear-pixel-100", "rand-pixel-1",
                                        "rand-pixel-10", "rand-pixel-100"}
    assert sorted({float(r[1]) for r in rows[1:]}) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert (tmp_path / "res" / "fig4c.png").exists()


def test_resnet18_for_32x32_inputs() -> None:
    """The CIFAR ResNet-18: 11,173,962 weights (3x3 stem, 4 stages of 2 basic blocks), logits out."""
    from pertattack.models import ResNet18

    assert sum(p.numel() for p in ResNet18().parameters()) == 11_173_962
    small = build_model("resnet18", seed=0, width=4).eval()
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, two per block, three 1x1 shortcuts
    assert [m.out_channels for m in convs[-3:]] == [32, 32, 32]
    x = torch.rand(3, 3, 32, 32)
    assert small(x).shape == (3, 10)
    result = pertattack.get_attack("bim", eps=0.03)(small, x)
    assert (result.x_adv - x).abs().max() <= 0.03 + 1e-6
    with pytest.raises(ValueError, match="width"):
        ResNet18(width=0)
