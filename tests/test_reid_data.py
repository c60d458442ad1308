"""Re-identification data: Market-1501 read from a tiny fake folder in its own format, the
embedded reid_digits set, random erasing on the device loader, and the retrieval profiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdlab
from kdlab.cli import main as cli_main
from kdlab.data import DatasetNotFoundError, DeviceLoader, load_dataset
from kdlab.data import market1501 as market
from kdlab.data.images import RetrievalDataset

# ------------------------------------------------------------------ Market-1501, faked
# (split, file name): two training identities (0002 in cameras 1 and 2, 0007 in camera 3);
# queries of identities 0002 and 0005; a gallery with their images, a distractor (0000) and
# two junk boxes (-1), in several cameras.
FILES = [
    ("bounding_box_train", "0002_c1s1_000451_03.jpg"),
    ("bounding_box_train", "0002_c2s1_000301_01.jpg"),
    ("bounding_box_train", "0007_c3s3_015718_02.jpg"),
    ("query", "0002_c1s1_000551_01.jpg"),
    ("query", "0005_c4s1_002001_01.jpg"),
    ("bounding_box_test", "0002_c1s1_000601_02.jpg"),
    ("bounding_box_test", "0002_c3s2_004321_01.jpg"),
    ("bounding_box_test", "0005_c5s2_010101_04.jpg"),
    ("bounding_box_test", "0000_c6s1_000001_01.jpg"),
    ("bounding_box_test", "-1_c1s1_000010_05.jpg"),
    ("bounding_box_test", "-1_c2s1_000020_05.jpg"),
]


def _fake_market(root, files=FILES):
    """Write each file as a 64×128 (W×H, Market's own size) JPEG whose colour encodes its
    position in FILES; plus a Thumbs.db that must be ignored."""
    from PIL import Image

    folder = root / market.FOLDER
    for split in market.SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / split / "Thumbs.db").write_bytes(b"not an image")
    for i, (split, name) in enumerate(files):
        Image.new("RGB", (64, 128), (20 * i, 100, 200)).save(folder / split / name, quality=95)
    return folder


def test_file_names_give_identity_and_camera():
    assert market.parse_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert market.parse_name("-1_c6s4_002510_01.jpg") == (-1, 6)
    assert market.parse_name("0000_c3s1_000001_01.jpg") == (0, 3)
    with pytest.raises(ValueError, match="not a Market-1501 image name"):
        market.parse_name("person_0002.jpg")


def test_market1501_from_its_own_folders(tmp_path):
    _fake_market(tmp_path)
    data = load_dataset("market1501", root=tmp_path, size=(32, 16))
    assert isinstance(data, RetrievalDataset) and data.task.name == "retrieval"
    assert data.classes == ["0002", "0007"] and data.num_classes == 2
    assert data.train_labels.tolist() == [0, 0, 1]  # relabelled 0 … in identity order
    assert data.train_images.shape == (3, 3, 32, 16) and data.train_images.dtype == torch.uint8
    assert data.train_cams.tolist() == [1, 2, 3]
    images, ids, cams = data.query
    assert ids.tolist() == [2, 5] and cams.tolist() == [1, 4] and data.num_query == 2
    # the gallery in file-name order, junk left out by default, the distractor kept
    g_images, g_ids, g_cams = data.gallery
    assert g_ids.tolist() == [0, 2, 2, 5] and g_cams.tolist() == [6, 1, 3, 5]
    # the pixels are the files' own (red channel 20·i; JPEG rounds a little)
    red = data.test_images[:, 0].float().mean((1, 2))
    assert red.tolist() == pytest.approx([60, 80, 160, 100, 120, 140], abs=3)
    assert data.padding == 10 and data.flip and data.erasing == 0.5
    kept = load_dataset("market1501", root=tmp_path, size=(32, 16), keep_junk=True)
    assert kept.gallery[1].tolist() == [-1, -1, 0, 2, 2, 5]


def test_the_decoded_images_are_cached_and_reread(tmp_path, monkeypatch):
    _fake_market(tmp_path)
    first = load_dataset("market1501", root=tmp_path, size=(32, 16))
    assert (tmp_path / "market1501_32x16.npz").exists()

    def no_decoding(paths, size):
        raise AssertionError("decoded again")

    monkeypatch.setattr(market, "_decode", no_decoding)
    again = load_dataset("market1501", root=tmp_path, size=(32, 16))
    assert torch.equal(first.test_images, again.test_images)
    assert torch.equal(first.train_images, again.train_images)
    # another file in a folder: the cache no longer matches, so the images are decoded again
    _fake_market(tmp_path, [*FILES, ("query", "0007_c2s1_000001_01.jpg")])
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("market1501", root=tmp_path, size=(32, 16))


def test_the_small_size_and_the_stated_memory(tmp_path):
    _fake_market(tmp_path)
    small = load_dataset("market1501", root=tmp_path, size=(128, 64))
    assert small.train_images.shape[2:] == (128, 64)
    # the module docstring's figures: 256×128×3 bytes per image, Market-1501's counts
    per_image = 256 * 128 * 3
    assert per_image == 98_304
    assert round(12_936 * per_image / 1e9, 2) == 1.27 and round(3_368 * per_image / 1e9, 2) == 0.33
    assert round(15_913 * per_image / 1e9, 2) == 1.56 and round(19_732 * per_image / 1e9, 2) == 1.94
    with pytest.raises(ValueError, match="size must be"):
        load_dataset("market1501", root=tmp_path, size=(8, 4))


def test_a_bad_file_name_is_named(tmp_path):
    folder = _fake_market(tmp_path)
    from PIL import Image

    Image.new("RGB", (8, 16)).save(folder / "query" / "someone.jpg")
    with pytest.raises(ValueError, match="'someone.jpg' is not a Market-1501 image name"):
        load_dataset("market1501", root=tmp_path, size=(32, 16))


def test_a_missing_folder_is_one_line_saying_where_it_goes(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("market1501", root=tmp_path)
    message = str(error.value)
    assert "\n" not in message and "manual download" in message and "(root=…)" in message
    assert f"{tmp_path / market.FOLDER}/{{bounding_box_train,bounding_box_test,query}}" in message
    code = cli_main(["train", "--method", "dml", "--models", "mobilenetv1,mobilenetv1",
                     "--dataset", "market1501", "--data-root", str(tmp_path), "--epochs", "1",
                     "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "market1501 is not in" in err
    assert "(--data-root DIR)" in err and "root=" not in err  # the command line's own option


# ------------------------------------------------------------------ the embedded set
def test_reid_digits_has_market1501s_structure():
    data = load_dataset("reid_digits")
    assert data.train_images.shape == (1200, 3, 16, 16) and data.num_classes == 150
    assert data.train_labels.bincount().tolist() == [8] * 150  # 4 cameras × 2 frames
    q_images, q_ids, q_cams = data.query
    g_images, g_ids, g_cams = data.gallery
    assert len(q_ids) == 200 and len(g_ids) == 720
    assert int((g_ids == 0).sum()) == 100 and int((g_ids == -1).sum()) == 20
    assert set(q_ids.tolist()) == set(range(1, 101))  # test identities, disjoint from training
    for i in range(0, 200, 37):  # every query: 5 true matches in other cameras, 1 in its own
        same = g_ids == q_ids[i]
        assert int((same & (g_cams != q_cams[i])).sum()) == 5
        assert int((same & (g_cams == q_cams[i])).sum()) == 1
    again = load_dataset("reid_digits")
    assert torch.equal(again.test_images, data.test_images)  # the same set every time
    assert again.train_images is data.train_images  # built once, shared


def test_a_training_subset_keeps_the_cameras_in_step():
    data = load_dataset("reid_digits", train_size=300)
    assert len(data.train_labels) == len(data.train_cams) == len(data.train_images) == 300


# ------------------------------------------------------------------ random erasing
def _loader(images, erasing, seed=0):
    return DeviceLoader(images, torch.zeros(len(images), dtype=torch.long), 50,
                        mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, augment=True,
                        erasing=erasing, seed=seed)  # fmt: skip


def test_random_erasing_draws_rectangles_of_the_stated_sizes():
    images = torch.full((2000, 3, 32, 16), 255, dtype=torch.uint8)  # normalised: 2 everywhere
    x = torch.cat([b for b, _ in _loader(images, 0.5)])
    erased = x == 0
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    hit = erased[:, 0].flatten(1).any(1)
    assert 0.45 < hit.float().mean().item() < 0.55  # probability ½ per image
    area = erased[hit, 0].flatten(1).float().mean(1)
    assert area.min() >= 1 / (32 * 16) and area.max() <= 0.45  # within [0.02, 0.4], clipped
    assert 0.15 < area.mean().item() < 0.25  # uniform in [0.02, 0.4]: mean 0.21
    for mask in erased[hit, 0][:50]:  # each one rectangle: its rows × its columns
        rows, cols = mask.any(1), mask.any(0)
        assert torch.equal(mask, rows[:, None] & cols[None, :])
    assert (x[~erased] == 2).all()  # the rest is the image, untouched
    assert not (torch.cat([b for b, _ in _loader(images, 0.0)]) == 0).any()


def test_erasing_resumes_bit_exact_from_the_loaders_state():
    """Every draw comes from the loader's generator: a loader restored from a state gives the
    batches an uninterrupted one gives, whatever the global RNG did meanwhile."""
    images = torch.randint(0, 256, (120, 3, 16, 8), dtype=torch.uint8)
    loader = _loader(images, 0.5, seed=3)
    list(loader)  # epoch 1
    state = {k: v.clone() for k, v in loader.state_dict().items()}
    torch.manual_seed(1)
    epoch2 = list(loader)
    restored = _loader(images, 0.5, seed=99)
    restored.load_state_dict(state)
    torch.manual_seed(2)
    for (a, _), (b, _) in zip(epoch2, restored):
        assert torch.equal(a, b)


def test_erasing_is_a_probability():
    with pytest.raises(ValueError, match="erasing is a probability"):
        _loader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 1.5)


# ------------------------------------------------------------------ profiles
def test_retrieval_profiles_and_the_task_of_a_dataset():
    smoke = kdlab.profile("smoke", task="retrieval")
    assert smoke.dataset == "reid_digits" and smoke.label_smoothing == 0.1
    paper = kdlab.profile("paper", dataset="market1501")  # the task follows the dataset
    config = paper.train_config()
    assert (config.optimizer, config.lr, config.betas) == ("adam", 2e-4, (0.5, 0.999))
    assert (config.weight_decay, config.label_smoothing, config.batch_size) == (4e-5, 0.1, 16)
    assert (config.schedule, config.epochs, paper.student) == ("constant", 247, "mobilenetv1")
    assert kdlab.profile("paper").dataset == "cifar100"  # no dataset: classification
    assert kdlab.profile("lab", betas=[0.5, 0.9]).train_config().betas == (0.5, 0.9)
    with pytest.raises(ValueError, match="'digits' is a classification data set"):
        kdlab.profile("smoke", task="retrieval", dataset="digits")


def test_the_embedded_set_trains_in_the_smoke_profile():
    cfg, data = kdlab.profile("smoke", task="retrieval").load()
    config = cfg.train_config(seed=0, device="cpu", epochs=1)
    result = kdlab.run("independent", [cfg.student], data, config=config, progress=False)
    assert set(result.summary["networks"]) == {"net1"}
    assert np.isfinite(result.history[-1]["map/net1"])


def test_train_takes_the_optimizer_and_label_smoothing(tmp_path):
    """``train --optimizer --label-smoothing`` reach the run's recipe; a re-ID data set picks
    the retrieval profile (Adam by default there)."""
    import json

    base = ["train", "--method", "independent", "--models", "cnn_tiny", "--dataset",
            "reid_digits", "--profile", "smoke", "--epochs", "1", "--no-progress"]  # fmt: skip
    assert cli_main([*base, "--out", str(tmp_path / "a")]) == 0
    train = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (train["optimizer"], train["label_smoothing"]) == ("adam", 0.1)
    flags = ["--optimizer", "sgd", "--label-smoothing", "0.2", "--lr", "0.05"]
    assert cli_main([*base, *flags, "--out", str(tmp_path / "b")]) == 0
    train = json.loads((tmp_path / "b" / "config.json").read_text())["train"]
    assert (train["optimizer"], train["label_smoothing"], train["lr"]) == ("sgd", 0.2, 0.05)
