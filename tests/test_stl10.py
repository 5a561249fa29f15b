"""STL-10 binary loader (orientation on files written here), the colorization network, and the smallest
fig4d / fig2c runs on written STL-10 files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pertattack.data import load_stl10, to_gray, write_stl10
from pertattack.experiments import paper
from pertattack.models import Colorization, build_model
from pertattack.training import save_model

S = 96


def _raw_column_major(img: np.ndarray) -> bytes:
    """The documented layout, written byte by byte: channel planes, each column after column."""
    out = bytearray(3 * S * S)
    for c in range(3):
        for w in range(S):
            for h in range(S):
                out[c * S * S + w * S + h] = int(img[c, h, w])
    return bytes(out)


def test_loader_orientation_on_hand_written_bytes(tmp_path):
    img = np.zeros((3, S, S), dtype=np.uint8)
    img[0, 5, 70] = 255  # red dot at row 5, column 70 (upper right)
    img[1, :, 3] = 100  # green vertical line at column 3
    img[2, 90, :] = 200  # blue horizontal line at row 90
    (tmp_path / "stl10_binary").mkdir()
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(_raw_column_major(img) * 2)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 10]))
    x, y = load_stl10(tmp_path, "test")
    assert x.shape == (2, 3, S, S) and x.dtype == torch.float32
    assert y.tolist() == [0, 9]
    assert x[0, 0, 5, 70] == 1.0 and x[0, 0, 70, 5] == 0.0
    assert bool((x[0, 1, :, 3] == 100 / 255).all()) and float(x[0, 1, :, 4].sum()) == 0.0
    assert bool((x[1, 2, 90, :] == 200 / 255).all())
    x1, _ = load_stl10(tmp_path / "stl10_binary", "test", limit=1)
    assert torch.equal(x1, x[:1])


def test_writer_roundtrip_unlabeled_and_errors(tmp_path):
    imgs = torch.randint(0, 256, (3, 3, S, S), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    write_stl10(tmp_path, "train", imgs, torch.tensor([0, 4, 9]))
    x, y = load_stl10(tmp_path, "train")
    assert torch.equal((x * 255).round().to(torch.uint8), imgs) and y.tolist() == [0, 4, 9]
    write_stl10(tmp_path, "unlabeled", imgs, None)
    xu, yu = load_stl10(tmp_path, "unlabeled", limit=2)
    assert xu.shape[0] == 2 and yu.tolist() == [-1, -1]
    with pytest.raises(FileNotFoundError, match="PERTATTACK_STL10"):
        load_stl10(tmp_path / "nothing", "test")
    (tmp_path / "test_X.bin").write_bytes(b"\0" * 100)
    (tmp_path / "test_y.bin").write_bytes(b"\1")
    with pytest.raises(ValueError, match="whole number"):
        load_stl10(tmp_path, "test")
    with pytest.raises(ValueError):
        load_stl10(tmp_path, "valid")  # type: ignore[arg-type]


def test_colorization_shapes_gray_consistency_and_fusion():
    model = Colorization(width=4).eval()
    g = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(1))
    rgb = model(g)
    assert rgb.shape == (2, 3, 32, 48)
    # the luma of the output is the input: the network only adds chroma (YCbCr is exact for BT.601)
    torch.testing.assert_close(to_gray(rgb), g, rtol=0, atol=1e-3)
    fused = Colorization(width=4, fusion=True, embed_dim=8).eval()
    assert fused(g).shape == (2, 3, 32, 48) and hasattr(fused, "embedder")
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 30, 32))
    assert isinstance(build_model("colorization", width=4), Colorization)


@pytest.fixture
def stl_files(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(3)
    for split, n in (("train", 4), ("test", 3)):
        write_stl10(tmp_path / "stl", split, torch.rand(n, 3, S, S, generator=g), torch.arange(n))
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("PERTATTACK_CACHE", str(cache))
    monkeypatch.setenv("PERTATTACK_STL10", str(tmp_path / "stl"))
    save_model(cache / f"stl10-colorization-w{paper.COLOR_WIDTH}-e1-s0.pt", build_model("colorization", width=2,
                                                                                         seed=0), "colorization",
               width=2)
    return tmp_path


def test_fig4d_and_fig2c_smallest_on_written_files(stl_files, monkeypatch):
    monkeypatch.setattr(paper, "FIG4D_ATTACKS", ["rand-linf", "linear-linf-1"])
    out = stl_files / "res"
    paper.reproduce("fig4d", out=out, n=2, epochs=1)
    rows = list(csv.reader(open(out / "fig4d.csv")))
    assert rows[0] == ["attack", "eps", "input_psnr", "output_psnr", "output_psnr_clean"]
    # the 7 budgets of the input-PSNR axis and one below it, so that the measured (clipped) PSNR reaches 10 dB
    assert {r[0] for r in rows[1:]} == {"rand-linf", "linear-linf-1"} and len(rows) == 1 + 2 * 8
    for r in rows[1:]:
        assert float(r[2]) >= 10 * np.log10(1 / float(r[1]) ** 2) - 1e-3
    paper.reproduce("fig2c", out=out, n=2, epochs=1)
    rows = list(csv.reader(open(out / "fig2c.csv")))
    assert len(rows) == 3 and float(rows[1][1]) >= paper.FIG2C_PSNR - 1e-3
    rep = (out / "REPORT.md").read_text()
    assert "| fig4d | ran |" in rep and "| fig2c | ran |" in rep


def test_fig4d_skipped_with_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTATTACK_STL10", str(tmp_path / "none"))
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="stl10_binary"):
        paper.reproduce("fig4d", out=tmp_path / "res", n=2, epochs=1)
    rep = (tmp_path / "res" / "REPORT.md").read_text()
    assert "| fig4d | skipped |" in rep and "PERTATTACK_STL10" in rep


def test_missing_stl10_on_the_command_line_one_instruction_and_the_folders_searched(tmp_path, monkeypatch, capsys):
    """The CLI does not add "add --download" to STL-10's message (--download fetches no STL-10), and the message
    names the folders searched: --root first, then the default root, not the default alone (issue 18)."""
    from pertattack.cli import main

    monkeypatch.setenv("PERTATTACK_STL10", str(tmp_path / "default"))
    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    for argv in (["reproduce", "fig4d", "--root", str(tmp_path / "mine")], ["reproduce", "fig2c"]):
        assert main([*argv, "--out", str(tmp_path / "res")]) == 2
        err = capsys.readouterr().err
        assert "--download" in err and "add --download" not in err and "does not download STL-10" in err
        folders = [str(tmp_path / "mine"), str(tmp_path / "mine" / "stl10_binary")] if "--root" in argv else []
        for folder in [*folders, str(tmp_path / "default"), str(tmp_path / "default" / "stl10_binary")]:
            assert folder + "," in err or folder + " or" in err or folder + "." in err, (folder, err)
    assert not (tmp_path / "cache").exists()  # refused before any training


def test_missing_mnist_and_cifar10_still_say_add_download(tmp_path, monkeypatch, capsys):
    from pertattack.cli import main

    monkeypatch.setenv("PERTATTACK_CACHE", str(tmp_path / "cache"))
    for item in ("fig3a", "fig3c"):
        assert main(["reproduce", item, "--root", str(tmp_path / "none"), "--out", str(tmp_path / "res")]) == 2
        assert "On the command line: add --download." in capsys.readouterr().err


def test_labels_must_match_the_images_and_are_read_only_up_to_limit(tmp_path):
    """More labels than images is refused, from the file's size: a huge labels file is not read (issue 18)."""
    import tracemalloc

    imgs = torch.zeros((3, 3, S, S), dtype=torch.uint8)
    write_stl10(tmp_path, "test", imgs, torch.tensor([0, 4, 9]))
    (tmp_path / "test_y.bin").write_bytes(bytes([1, 5, 10, 2]))
    with pytest.raises(ValueError, match="4 labels for the 3 images"):
        load_stl10(tmp_path, "test")
    with open(tmp_path / "test_y.bin", "wb") as f:  # 1 GB (sparse): refused without reading it
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{1 << 30} labels for the 3 images"):
            load_stl10(tmp_path, "test", limit=1)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    (tmp_path / "test_y.bin").write_bytes(bytes([1, 5, 99]))  # only the first limit labels are read and checked
    assert load_stl10(tmp_path, "test", limit=2)[1].tolist() == [0, 4]
    with pytest.raises(ValueError, match="1..10"):
        load_stl10(tmp_path, "test")
