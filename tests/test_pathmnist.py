"""Tests for the PathMNIST loader on a tiny .npz written in MedMNIST's format."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlab
from kdlab.cli import main
from kdlab.data import DatasetNotFoundError, load_dataset
from kdlab.data.small import PATHMNIST_CLASSES


def _write_npz(root, n_train=36, n_val=9, n_test=18, seed=0):
    """A MedMNIST-style file: images N×28×28×3 uint8, labels N×1 uint8, three splits."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = (np.arange(n) % 9).astype(np.uint8)[:, None]
        images = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        # Make the class visible: a bright square whose place depends on the label.
        for i, y in enumerate(labels[:, 0]):
            r, c = 3 * (y // 3) * 3, 3 * (y % 3) * 3
            images[i, r : r + 8, c : c + 8, :] = 255
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "pathmnist.npz", **arrays)
    return arrays


def test_loads_medmnist_format(tmp_path):
    arrays = _write_npz(tmp_path)
    ds = load_dataset("pathmnist", tmp_path, download=False)
    assert ds.name == "pathmnist" and ds.classes == PATHMNIST_CLASSES and ds.num_classes == 9
    assert ds.train_images.shape == (36, 3, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (18, 3, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.shape == (36,)
    assert ds.train_labels.tolist() == arrays["train_labels"][:, 0].tolist()
    assert ds.test_labels.tolist() == arrays["test_labels"][:, 0].tolist()
    # N×H×W×C became N×C×H×W: pixel (row 5, col 7) of channel 2 of image 4 is the same value.
    assert ds.train_images[4, 2, 5, 7].item() == arrays["train_images"][4, 5, 7, 2]
    first_test = torch.from_numpy(arrays["test_images"][3])
    assert torch.equal(ds.test_images[3].permute(1, 2, 0), first_test)
    # The statistics are the training images' per-channel mean, in [0, 1] units.
    expected = arrays["train_images"].reshape(-1, 3).mean(0) / 255
    assert ds.mean == pytest.approx(expected.tolist(), rel=1e-5)
    assert ds.in_channels == 3 and ds.flip


def test_train_size_keeps_a_balanced_subset(tmp_path):
    _write_npz(tmp_path)
    ds = load_dataset("pathmnist", tmp_path, train_size=18, download=False)
    assert len(ds.train_labels) == 18 and torch.bincount(ds.train_labels).tolist() == [2] * 9
    assert len(ds.test_labels) == 18  # the test split stays whole


def test_absent_offline_names_the_file_and_where_it_goes(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("pathmnist", tmp_path / "cache", download=False)
    message = str(info.value)
    assert str(tmp_path / "cache" / "pathmnist.npz") in message
    assert "kdlab[medmnist]" in message and "\n" not in message


def test_absent_without_the_medmnist_package_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist → ImportError
    with pytest.raises(DatasetNotFoundError, match="medmnist package is not installed"):
        load_dataset("pathmnist", tmp_path, download=True)


def test_failed_download_gives_the_reason(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(PathMNIST=offline))
    with pytest.raises(DatasetNotFoundError, match="download failed: Name or service not known"):
        load_dataset("pathmnist", tmp_path / "new", download=True)
    assert (tmp_path / "new").is_dir()  # the cache folder was made for the download


def _medmnist_cut(tmp_path, error: BaseException):
    """A medmnist whose download writes half the file in place, then fails with ``error``."""
    whole = tmp_path / "source"
    _write_npz(whole)
    data = (whole / "pathmnist.npz").read_bytes()

    def download(split, download, root):
        Path(root, "pathmnist.npz").write_bytes(data[: len(data) // 2])
        raise error

    def complete(split, download, root):
        Path(root, "pathmnist.npz").write_bytes(data)

    return types.SimpleNamespace(PathMNIST=download), types.SimpleNamespace(PathMNIST=complete)


@pytest.mark.parametrize("error", [OSError("connection reset"), KeyboardInterrupt()])
def test_a_download_cut_half_way_leaves_nothing_a_later_load_reads(tmp_path, monkeypatch, error):
    cut, complete = _medmnist_cut(tmp_path, error)
    root = tmp_path / "cache"
    monkeypatch.setitem(sys.modules, "medmnist", cut)
    with pytest.raises((DatasetNotFoundError, KeyboardInterrupt)):
        load_dataset("pathmnist", root, download=True)
    assert not (root / "pathmnist.npz").exists()
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    # Offline now: the half file is not taken for the dataset.
    with pytest.raises(DatasetNotFoundError, match="pathmnist is not in"):
        load_dataset("pathmnist", root, download=False)
    monkeypatch.setitem(sys.modules, "medmnist", complete)  # the next try completes
    assert len(load_dataset("pathmnist", root, download=True).train_labels) == 36


def test_file_in_the_wrong_format_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "pathmnist.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="no train_labels, test_images, test_labels"):
        load_dataset("pathmnist", tmp_path, download=False)


def test_cli_reports_absent_pathmnist_on_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)
    code = main(
        ["train", "--method", "independent", "--models", "cnn_tiny", "--dataset", "pathmnist",
         "--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pathmnist.npz" in err


def test_kdml_trains_on_the_tiny_npz(tmp_path):
    _write_npz(tmp_path, n_train=90, n_test=45)
    ds = load_dataset("pathmnist", tmp_path, download=False)
    config = kdlab.TrainConfig(epochs=1, batch_size=30, lr=0.05, schedule="constant", device="cpu")
    result = kdlab.run(
        "kdml", "cnn_tiny,cnn_tiny", ds, teacher="cnn_tiny", config=config, progress=False
    )
    assert set(result.summary["networks"]) == {"teacher", "student1", "student2", "ensemble"}
    assert all(0 <= v["final_acc"] <= 100 for v in result.summary["networks"].values())
