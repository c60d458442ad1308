"""Tiny-ImageNet offline: a small folder in the real format (a grey image, the validation
annotations), the decoded cache, and the archive served from 127.0.0.1 like CIFAR's."""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.data import DatasetNotFoundError, load_dataset, tinyimagenet
from kdlab.data.download import Archive

WNIDS = ["n02", "n01", "n03"]  # wnids.txt's order, deliberately not sorted
# Validation files in an order that is neither the classes' nor the files' own.
VAL = [("val_0.JPEG", "n03"), ("val_1.JPEG", "n02"), ("val_2.JPEG", "n03"), ("val_3.JPEG", "n01")]


def _jpeg(value: int, grey: bool = False) -> bytes:
    """A constant 64×64 JPEG: RGB (value, value + 20, value + 40), or grey ``value``."""
    if grey:
        image = Image.new("L", (64, 64), value)
    else:
        image = Image.new("RGB", (64, 64), (value, value + 20, value + 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def tiny_files() -> dict[str, bytes]:
    """The files of a fake ``tiny-imagenet-200/``: two training images per class (class k's are
    values 10·k + 1 and 10·k + 2; n01's second one grey), four validation images (value 100 + i),
    words.txt naming two classes."""
    files = {"wnids.txt": ("\n".join(WNIDS) + "\n").encode()}
    files["words.txt"] = b"n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\n"
    for k, wnid in enumerate(WNIDS):
        for j in (1, 2):
            grey = wnid == "n01" and j == 2
            files[f"train/{wnid}/images/{wnid}_{j}.JPEG"] = _jpeg(10 * k + j, grey)
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
    for i, (name, _) in enumerate(VAL):
        files[f"val/images/{name}"] = _jpeg(100 + i)
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in VAL]
    files["val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    files["test/images/test_0.JPEG"] = _jpeg(7)
    return files


def write_folder(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    for name, data in tiny_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in tiny_files().items():
            archive.writestr(f"tiny-imagenet-200/{name}", data)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def no_cache_or_mirror(monkeypatch):
    for var in ("KDLAB_CACHE", "KDLAB_TINYIMAGENET_URL", "KDLAB_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


def _close(values, expected, tolerance=3):
    """JPEG is lossy: a constant colour decodes within a few levels."""
    return np.abs(np.asarray(values, dtype=int) - np.asarray(expected)).max() <= tolerance


def test_folder_in_the_real_format(tmp_path):
    write_folder(tmp_path)
    d = load_dataset("tinyimagenet", root=tmp_path, download=False)
    assert d.train_images.shape == (6, 3, 64, 64) and d.test_images.shape == (4, 3, 64, 64)
    assert d.train_images.dtype == torch.uint8 and d.num_classes == 3
    assert d.classes == ["tabby", "goldfish", "n03"]  # wnids.txt's order; words.txt's names
    assert d.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    # The validation labels come from val_annotations.txt, in its order (n03 n02 n03 n01).
    assert d.test_labels.tolist() == [2, 0, 2, 1]
    for i in range(4):
        assert _close(d.test_images[i, :, 30, 30], [100 + i, 120 + i, 140 + i])
    # Class n01 (label 1) is the second in wnids.txt: its images have values 11 and 12.
    assert _close(d.train_images[2, :, 5, 5], [11, 31, 51])
    grey = d.train_images[3]  # n01_2.JPEG, greyscale: three equal channels
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    assert _close(grey[:, 10, 10], [12, 12, 12])
    assert d.padding == 8 and d.flip


def test_the_decoded_cache_spares_the_jpegs(tmp_path, monkeypatch):
    folder = write_folder(tmp_path)
    first = load_dataset("tinyimagenet", root=tmp_path, download=False)
    cache = tmp_path / tinyimagenet.CACHE_FILE
    assert cache.is_file() and not cache.with_name(cache.name + ".tmp").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a JPEG was decoded again")

    monkeypatch.setattr(tinyimagenet, "_read_image", refuse)
    (folder / "wnids.txt").unlink()  # not read either
    again = load_dataset("tinyimagenet", root=tmp_path, download=False)
    assert (again.train_images == first.train_images).all()
    assert again.test_labels.tolist() == first.test_labels.tolist()
    assert again.classes == first.classes


def test_an_incomplete_folder_is_a_one_line_error(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="no val/val_annotations.txt") as info:
        load_dataset("tinyimagenet", root=tmp_path, download=False)
    assert "\n" not in str(info.value)


def test_an_annotation_with_an_unknown_class_is_an_error(tmp_path):
    folder = write_folder(tmp_path)
    with open(folder / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt:5: expected"):
        load_dataset("tinyimagenet", root=tmp_path, download=False)


def test_absent_offline_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("tinyimagenet", root=tmp_path, download=False)
    message = str(info.value)
    assert "tiny-imagenet-200.zip" in message and "KDLAB_TINYIMAGENET_URL" in message
    assert "\n" not in message


@pytest.fixture
def server(monkeypatch):
    from test_cifar import Server  # the loopback server of the CIFAR tests

    srv = Server()
    data = make_zip()
    srv.files["/mirror/tiny-imagenet-200.zip"] = data
    archive = Archive(**{**tinyimagenet.TINY_IMAGENET.__dict__,
                         "md5": hashlib.md5(data).hexdigest()})  # fmt: skip
    monkeypatch.setattr(tinyimagenet, "TINY_IMAGENET", archive)
    yield srv
    srv.close()


def test_download_from_a_mirror_checks_extracts_and_decodes(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDLAB_TINYIMAGENET_URL", f"{server.url}/mirror/")
    d = load_dataset("tinyimagenet", root=tmp_path)
    assert server.requests == ["/mirror/tiny-imagenet-200.zip"]
    assert d.test_labels.tolist() == [2, 0, 2, 1]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["tiny-imagenet-200", "tiny-imagenet-200.uint8.npz", "tiny-imagenet-200.zip"]
    assert "100%" in capsys.readouterr().err  # the progress bar


def test_a_corrupted_download_is_not_kept(server, tmp_path, monkeypatch):
    from kdlab.data.download import CorruptArchiveError

    good = server.files["/mirror/tiny-imagenet-200.zip"]
    server.files["/mirror/tiny-imagenet-200.zip"] = good[:-1] + bytes([good[-1] ^ 0xFF])
    monkeypatch.setenv("KDLAB_TINYIMAGENET_URL", f"{server.url}/mirror")
    with pytest.raises(CorruptArchiveError, match="MD5"):
        load_dataset("tinyimagenet", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_download_is_a_one_line_error(server, tmp_path, monkeypatch):
    server.close()
    monkeypatch.setenv("KDLAB_TINYIMAGENET_URL", server.url)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("tinyimagenet", root=tmp_path)
    message = str(info.value)
    assert "download from" in message and "failed" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
