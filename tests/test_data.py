"""Tests for kdlab.data: the device-resident loader, digits, CIFAR folders and the offline error."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest
import torch

from kdlab.data import DATASETS, DatasetNotFoundError, DeviceLoader, ImageDataset, load_dataset

# mean 0 and std 1/255 make the loader's normalisation ``(x − 0) / 1``: batches hold raw pixels.
RAW = dict(mean=(0.0,), std=(1 / 255,))


def pattern_images(num_classes: int = 3, per_class: int = 20, size: int = 8):
    """1×size×size images whose every pixel says which class and which position it is:
    ``1 + r·size + c + 64·label`` (all distinct, none 0, so a padded 0 is never a pixel)."""
    base = 1 + torch.arange(size * size).view(1, size, size)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = (base[None] + 64 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    return images, labels, base


def candidates(base: torch.Tensor, label: int, padding: int, flip: bool) -> list[torch.Tensor]:
    """Every crop (and mirror) of the zero-padded image of ``label`` the loader may produce."""
    image = (base + 64 * label).float()
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out.append(crop)
            if flip:
                out.append(crop.flip(-1))
    return out


# --------------------------------------------------------------------------- DeviceLoader


def test_loader_dtypes_and_shapes():
    images, labels, _ = pattern_images()
    loader = DeviceLoader(
        images, labels, 16, shuffle=True, augment=True, padding=1, flip=True, **RAW
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # ceil(60 / 16)
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert x.device.type == "cpu"


def test_loader_normalises_with_mean_and_std():
    images = torch.full((4, 2, 3, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    images[:, 1] = 204  # 0.8
    loader = DeviceLoader(
        images, torch.zeros(4, dtype=torch.long), 4, mean=(0.1, 0.5), std=(0.5, 0.25)
    )
    x, _ = next(iter(loader))
    assert x[:, 0].flatten().tolist() == pytest.approx([(0.2 - 0.1) / 0.5] * 36, abs=1e-5)
    assert x[:, 1].flatten().tolist() == pytest.approx([(0.8 - 0.5) / 0.25] * 36, abs=1e-5)


@pytest.mark.parametrize("padding,flip", [(1, False), (0, True), (2, True)])
def test_augmentation_keeps_the_label(padding, flip):
    images, labels, base = pattern_images()
    loader = DeviceLoader(
        images, labels, 32, shuffle=True, augment=True, padding=padding, flip=flip, seed=3, **RAW
    )
    cands = {k: torch.stack(candidates(base, k, padding, flip)) for k in range(3)}
    seen_views = set()
    for _ in range(3):
        for x, y in loader:
            for xi, yi in zip(x, y):
                match = (cands[int(yi)] == xi).flatten(1).all(1).nonzero().flatten().tolist()
                assert match, "an augmented image is no crop/flip of its label's image"
                seen_views.add(match[0])
                # Every real pixel carries the label in its value (64·label + 1..64).
                pixels = xi[xi > 0]
                assert ((pixels - 1) // 64 == yi).all()
    # The augmentation does something: more than one view of the images shows up.
    expected_views = (2 * padding + 1) ** 2 * (2 if flip else 1)
    assert len(seen_views) > expected_views // 2


def test_constant_images_keep_their_label_through_crop():
    # An image of constant value 10·label, zero padding: after a crop every pixel is 0 or
    # 10·label and the centre (never cropped away for padding 2 on 6×6) is 10·label.
    labels = torch.arange(1, 11).repeat(5)
    images = (10 * labels).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 6, 6).contiguous()
    loader = DeviceLoader(
        images, labels, 25, shuffle=True, augment=True, padding=2, flip=True, **RAW
    )
    saw_padding = False
    for x, y in loader:
        value = (10 * y).float().view(-1, 1, 1, 1)
        assert ((x == 0) | (x == value)).all()
        assert (x[:, :, 2:4, 2:4] == value).all()
        saw_padding |= bool((x == 0).any())
    assert saw_padding


def test_every_sample_once_per_epoch_and_shuffled():
    n = 103
    images = torch.arange(n).remainder(256).to(torch.uint8).view(n, 1, 1, 1)
    labels = torch.arange(n)
    loader = DeviceLoader(images, labels, 10, shuffle=True, **RAW)
    orders = []
    for _ in range(2):
        seen = []
        for x, y in loader:
            assert (x.flatten() == y.float()).all()  # image and label stay paired
            seen.extend(y.tolist())
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != list(range(n)) and orders[0] != orders[1]


def test_no_shuffle_keeps_order():
    labels = torch.arange(30)
    loader = DeviceLoader(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), labels, 8, **RAW)
    assert torch.cat([y for _, y in loader]).tolist() == list(range(30))


@pytest.mark.parametrize("n,batch", [(130, 64), (129, 64), (65, 64), (64, 64), (1000, 7)])
def test_near_equal_batches(n, batch):
    loader = DeviceLoader(
        torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), batch,
        shuffle=True, **RAW,
    )  # fmt: skip
    sizes = [len(y) for _, y in loader]
    assert len(sizes) == len(loader) == -(-n // batch)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= batch
    assert loader.min_batch_size == min(sizes)


def test_min_batch_size_values():
    def loader(n, b):
        return DeviceLoader(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.zeros(n), b, **RAW)

    assert loader(130, 64).min_batch_size == 43  # 3 batches: 44, 43, 43
    assert loader(65, 64).min_batch_size == 32  # 2 batches: 33, 32 (not 64 + 1)
    assert loader(128, 64).min_batch_size == 64


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(torch.zeros(4, 1, 1, 1, dtype=torch.uint8), torch.zeros(4), 0, **RAW)


def _epoch(seed):
    images, labels, _ = pattern_images()
    loader = DeviceLoader(
        images, labels, 16, shuffle=True, augment=True, padding=1, flip=True, seed=seed, **RAW
    )
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_given_the_seed():
    a, b, c = _epoch(7), _epoch(7), _epoch(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_loader_state_round_trip():
    images, labels, _ = pattern_images()
    loader = DeviceLoader(images, labels, 16, shuffle=True, augment=True, padding=1, **RAW)
    state = loader.state_dict()
    first = [y.clone() for _, y in loader]
    loader.load_state_dict(state)
    assert all(torch.equal(a, y) for a, (_, y) in zip(first, loader))


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def full_digits():
    return load_dataset("digits")


def test_digits_sizes_and_types(full_digits):
    d = full_digits
    assert len(d.train_labels) + len(d.test_labels) == 1797
    assert (len(d.train_labels), len(d.test_labels)) == (1257, 540)
    assert d.train_images.shape == (1257, 1, 8, 8) and d.test_images.shape == (540, 1, 8, 8)
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert d.num_classes == 10 and d.in_channels == 1 and d.image_size == (8, 8)
    assert int(d.train_images.max()) == 255 and int(d.train_images.min()) == 0
    assert d.flip is False  # a mirrored digit is another symbol


def test_digits_split_is_stratified_and_fixed(full_digits):
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    train = np.bincount(full_digits.train_labels.numpy(), minlength=10)
    test = np.bincount(full_digits.test_labels.numpy(), minlength=10)
    assert (train + test == totals).all()
    assert np.abs(test - 0.3 * totals).max() <= 1  # 30 % of every class in the test split
    again = load_dataset("digits")
    assert torch.equal(again.train_images, full_digits.train_images)
    assert torch.equal(again.test_labels, full_digits.test_labels)


def test_digits_statistics(full_digits):
    x = full_digits.train_images.float() / 255
    assert full_digits.mean[0] == pytest.approx(x.mean().item(), abs=1e-5)
    assert full_digits.std[0] == pytest.approx(x.std().item(), abs=1e-4)


@pytest.mark.parametrize("size", [200, 505])
def test_digits_train_size_is_balanced_and_fixed(full_digits, size):
    sub = load_dataset("digits", train_size=size)
    counts = torch.bincount(sub.train_labels, minlength=10)
    assert len(sub.train_labels) == size
    assert int(counts.max() - counts.min()) <= 1
    again = load_dataset("digits", train_size=size)
    assert torch.equal(again.train_images, sub.train_images)
    assert torch.equal(again.train_labels, sub.train_labels)
    # A subset of the training split, never of the test split, which stays whole.
    flat = {
        bytes(img.numpy()) + bytes([int(lab)])
        for img, lab in zip(full_digits.train_images, full_digits.train_labels)
    }
    assert all(
        bytes(img.numpy()) + bytes([int(lab)]) in flat
        for img, lab in zip(sub.train_images, sub.train_labels)
    )
    assert len(sub.test_labels) == 540
    # The normalisation statistics stay those of the full training split.
    assert sub.mean == full_digits.mean


def test_train_size_smaller_than_classes_is_an_error():
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=5)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "mnist" in message and all(name in message for name in DATASETS)


# --------------------------------------------------------------------------- CIFAR folders


@pytest.fixture(autouse=True)
def no_cifar_cache_or_mirror(monkeypatch):
    """The CIFAR tests see neither the user's archive cache nor a mirror address."""
    monkeypatch.delenv("KDLAB_CACHE", raising=False)
    monkeypatch.delenv("KDLAB_CIFAR_URL", raising=False)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(first_index: int, count: int) -> np.ndarray:
    """N×3072 rows (CIFAR layout: 1024 red, 1024 green, 1024 blue values) where image i has
    red = i, green = 100 + i, blue = 200 + i."""
    idx = np.arange(first_index, first_index + count, dtype=np.uint8)[:, None]
    ones = np.ones((1, 1024), dtype=np.uint8)
    return np.concatenate([idx * ones, (100 + idx) * ones, (200 + idx) * ones], axis=1)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(5):  # two images per batch, labels 2b and 2b + 1
        _pickle(
            folder / f"data_batch_{b + 1}",
            {"data": _cifar_rows(2 * b, 2), "labels": [2 * b, 2 * b + 1], "batch_label": "x"},
        )
    _pickle(folder / "test_batch", {"data": _cifar_rows(50, 3), "labels": [3, 1, 4]})
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _pickle(
        folder / "train",
        {"data": _cifar_rows(0, 4), "fine_labels": [0, 99, 5, 42], "coarse_labels": [0, 1, 2, 3]},
    )
    _pickle(
        folder / "test",
        {"data": _cifar_rows(10, 2), "fine_labels": [7, 8], "coarse_labels": [0, 0]},
    )
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["a"] * 20},
    )
    return tmp_path


def test_cifar10_from_a_folder(cifar10_root):
    d = load_dataset("cifar10", root=cifar10_root, download=False)
    assert d.name == "cifar10"
    assert d.train_images.shape == (10, 3, 32, 32) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (3, 3, 32, 32)
    assert d.train_labels.tolist() == list(range(10))  # data_batch_1 … 5 in order
    assert d.test_labels.tolist() == [3, 1, 4] and d.test_labels.dtype == torch.int64
    assert d.classes[0] == "airplane" and d.num_classes == 10
    # Channel-major rows: image i is red i, green 100 + i, blue 200 + i everywhere.
    for i in range(10):
        assert d.train_images[i, :, 5, 7].tolist() == [i, 100 + i, 200 + i]
        assert (d.train_images[i, 1] == 100 + i).all()
    assert d.test_images[2, :, 31, 0].tolist() == [52, 152, 252]
    assert d.flip and d.padding == 4


def test_cifar10_train_size(cifar10_root):
    d = load_dataset("cifar10", root=cifar10_root, download=False, train_size=10)
    assert len(d.train_labels) == 10


def test_cifar100_from_a_folder(cifar100_root):
    d = load_dataset("cifar100", root=cifar100_root, download=False)
    assert d.train_images.shape == (4, 3, 32, 32) and d.test_images.shape == (2, 3, 32, 32)
    assert d.train_labels.tolist() == [0, 99, 5, 42]  # fine labels, not coarse
    assert d.test_labels.tolist() == [7, 8]
    assert d.num_classes == 100 and d.classes[99] == "c99"
    assert d.train_images[3, :, 0, 0].tolist() == [3, 103, 203]


@pytest.mark.parametrize(
    "name,archive,folder",
    [
        ("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python"),
    ],
)
def test_absent_dataset_without_download(tmp_path, name, archive, folder):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    assert archive in message and folder in message and str(tmp_path) in message
    assert "'digits' dataset works offline" in message and "\n" not in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_absent_dataset_offline(tmp_path, monkeypatch, name):
    # Offline: the download address refuses the connection (a loopback port nothing listens on).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KDLAB_CIFAR_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert f"download from http://127.0.0.1:{port}/cifar-" in message and "failed" in message
    assert ".tar.gz" in message and str(tmp_path) in message and "works offline" in message
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-downloaded left behind


def test_image_dataset_repr_and_properties():
    d = ImageDataset(
        "toy",
        torch.zeros(6, 3, 4, 5, dtype=torch.uint8),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.zeros(2, 3, 4, 5, dtype=torch.uint8),
        torch.tensor([0, 1]),
        ["a", "b", "c"],
    )
    assert d.num_classes == 3 and d.in_channels == 3 and d.image_size == (4, 5)
    assert "6 train / 2 test" in repr(d)
    assert len(d.std) == 3 and min(d.std) >= 1e-3  # constant images: std clamped, no division by 0
