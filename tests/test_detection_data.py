"""Detection data: the synthetic polyps, the device loader (flips, resume), boxes from masks,
and Kvasir-SEG / CVC-ClinicDB read from fake folders in their real on-disk formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import kdlab
from kdlab.data import DatasetNotFoundError
from kdlab.data.boxes import DetectionDataset, DetectionLoader, mask_boxes
from kdlab.data.polyps import KVASIR_BOXES


@pytest.fixture(scope="module")
def synthetic():
    return kdlab.load_dataset("synthetic_polyps", train=12, test=4)


# --------------------------------------------------------------------------- synthetic set
def test_synthetic_polyps_are_deterministic_and_say_they_are_synthetic(synthetic):
    again = kdlab.load_dataset("synthetic_polyps", train=12, test=4)
    assert torch.equal(synthetic.train_images, again.train_images)
    assert all(torch.equal(a, b) for a, b in zip(synthetic.train_boxes, again.train_boxes))
    other = kdlab.load_dataset("synthetic_polyps", train=12, test=4, seed=1)
    assert not torch.equal(synthetic.train_images, other.train_images)
    assert "SYNTHETIC" in repr(synthetic) and synthetic.synthetic
    assert synthetic.classes == ["background", "polyp"] and synthetic.num_classes == 2
    assert synthetic.train_images.shape == (12, 3, 64, 64) and len(synthetic.test_boxes) == 4
    assert synthetic.task.name == "detection" and kdlab.data.DATASETS["synthetic_polyps"].embedded


def test_synthetic_boxes_frame_dark_red_blobs(synthetic):
    """Inside a box the image is redder than the background (the blob), and boxes are 1–3 per
    image, inside it, and do not overlap."""
    for image, boxes in zip(synthetic.train_images, synthetic.train_boxes):
        assert 1 <= len(boxes) <= 3
        inside = torch.zeros(64, 64, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.long().tolist():
            assert not inside[y1:y2, x1:x2].any(), "overlapping objects"
            inside[y1:y2, x1:x2] = True
        green = image[1].float()
        assert green[inside].mean() < green[~inside].mean() - 10  # blobs are darker in green


def test_subset_keeps_a_fixed_subset_with_its_boxes(synthetic):
    small = synthetic.subset(5)
    assert len(small.train_images) == 5 == len(small.train_boxes)
    for image, boxes in zip(small.train_images, small.train_boxes):
        index = next(i for i in range(12) if torch.equal(image, synthetic.train_images[i]))
        assert torch.equal(boxes, synthetic.train_boxes[index])
    assert synthetic.subset(None) is synthetic


def test_bad_boxes_and_labels_are_one_line_errors():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    ok = [torch.tensor([[1.0, 1.0, 4.0, 4.0]])], [torch.tensor([1])]

    def make(boxes, labels, classes=("background", "polyp")):
        return DetectionDataset("x", image, boxes, labels, image, *ok, list(classes))

    make(*ok)
    with pytest.raises(ValueError, match="outside 8×8"):
        make([torch.tensor([[1.0, 1.0, 9.0, 4.0]])], [torch.tensor([1])])
    with pytest.raises(ValueError, match="label outside 1…1"):
        make([torch.tensor([[1.0, 1.0, 4.0, 4.0]])], [torch.tensor([0])])
    with pytest.raises(ValueError, match="background"):
        make(*ok, classes=("polyp", "background"))


# --------------------------------------------------------------------------- the loader
def _marked_dataset() -> DetectionDataset:
    """Two 8×16 images, each with one white 2×3 patch at its one box."""
    images = torch.zeros(2, 3, 8, 16, dtype=torch.uint8)
    images[0, :, 1:3, 2:5] = 255
    images[1, :, 4:6, 10:13] = 255
    boxes = [torch.tensor([[2.0, 1.0, 5.0, 3.0]]), torch.tensor([[10.0, 4.0, 13.0, 6.0]])]
    labels = [torch.tensor([1]), torch.tensor([1])]
    return DetectionDataset("marks", images, boxes, labels, images, boxes, labels,
                            ["background", "polyp"])  # fmt: skip


def test_flips_move_image_and_boxes_together():
    loader = DetectionLoader.train(_marked_dataset(), batch_size=2, device="cpu", seed=0)
    flipped = 0
    for _ in range(8):
        for x, targets in loader:
            assert x.dtype == torch.float32 and x.shape == (2, 3, 8, 16) and x.max() == 1.0
            for image, target in zip(x, targets):
                x1, y1, x2, y2 = target["boxes"][0].long().tolist()
                assert image[0, y1:y2, x1:x2].min() == 1.0, "the box left its patch"
                assert image[0].sum() == 6  # the patch, nothing else
                flipped += x1 not in (2, 10)
                assert target["labels"].dtype == torch.int64
    assert 0 < flipped < 16  # about half of 16 images


def test_loader_resumes_bit_exactly(synthetic):
    first = DetectionLoader.train(synthetic, batch_size=5, device="cpu", seed=3)
    assert len(first) == 3 and first.min_batch_size == 4
    list(first)
    state = first.state_dict()
    expected = [(x, [t["boxes"] for t in y]) for x, y in first]
    resumed = DetectionLoader.train(synthetic, batch_size=5, device="cpu", seed=99)
    resumed.load_state_dict(state)
    for (x, boxes), (x2, y2) in zip(expected, resumed):
        assert torch.equal(x, x2)
        assert all(torch.equal(a, t["boxes"]) for a, t in zip(boxes, y2))


def test_test_loader_is_in_order_and_unflipped(synthetic):
    batches = list(DetectionLoader.test(synthetic, 3, "cpu"))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, synthetic.test_images.float() / 255)
    assert torch.equal(batches[0][1][0]["boxes"], synthetic.test_boxes[0])


# --------------------------------------------------------------------------- masks → boxes
def _jpeg_mask(path, shape, rectangles):
    """A mask saved as JPEG, as Kvasir-SEG's are: white rectangles on black, lossy."""
    mask = np.zeros(shape, dtype=np.uint8)
    for x1, y1, x2, y2 in rectangles:
        mask[y1:y2, x1:x2] = 255
    Image.fromarray(mask).save(path, quality=75)
    return mask


def test_mask_boxes_reads_a_noisy_jpeg_mask_with_two_components(tmp_path):
    _jpeg_mask(tmp_path / "m.jpg", (60, 80), [(5, 10, 25, 30), (50, 35, 70, 55)])
    mask = np.asarray(Image.open(tmp_path / "m.jpg"))
    noisy = ((mask > 0) & (mask < 255)).sum()
    assert noisy > 0  # JPEG left grey values: a test for == 255 would be wrong
    boxes = mask_boxes(mask)
    assert len(boxes) == 2
    for found, true in zip(boxes, [(5, 10, 25, 30), (50, 35, 70, 55)]):
        assert np.allclose(found, true, atol=1)
    speck = mask.copy()
    speck[0:2, 78:80] = 255  # a 4-pixel speck: not a polyp
    assert len(mask_boxes(speck)) == 2
    assert len(mask_boxes(speck, min_area=1)) == 3


# --------------------------------------------------------------------------- Kvasir-SEG
def _kvasir(root, sizes):
    """A fake Kvasir-SEG: JPEG images of several sizes, JPEG masks, the box JSON. Image k has
    one polyp, except image ``b`` whose mask (and JSON entry) has two."""
    folder = root / "Kvasir-SEG"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    table = {}
    rng = np.random.default_rng(0)
    for k, (name, (w, h)) in enumerate(sizes.items()):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            folder / "images" / f"{name}.jpg"
        )
        rects = [(10 + k, 8, 30 + k, 28)] + (
            [(w - 25, h - 22, w - 5, h - 4)] if name == "b" else []
        )
        _jpeg_mask(folder / "masks" / f"{name}.jpg", (h, w), rects)
        table[name] = {"height": h, "width": w, "bbox": [
            {"label": "polyp", "xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2}
            for x1, y1, x2, y2 in rects]}  # fmt: skip
    (folder / KVASIR_BOXES).write_text(json.dumps(table))
    return folder


SIZES = {"a": (80, 60), "b": (100, 50), "c": (64, 64), "d": (90, 70), "e": (70, 90)}


def test_kvasir_boxes_from_the_json_scaled_to_the_cached_size(tmp_path):
    _kvasir(tmp_path, SIZES)
    data = kdlab.load_dataset("kvasir_seg", root=tmp_path, size=32, test_size=2)
    assert data.task.name == "detection" and data.num_classes == 2
    assert len(data.train_images) == 3 and len(data.test_images) == 2
    assert data.train_images.shape[1:] == (3, 32, 32)
    assert (tmp_path / "kvasir_seg-32px-json.npz").exists()
    # image "b" (100×50): its boxes (11, 8, 31, 28) and (75, 28, 95, 46) scaled by 32/100, 32/50
    two = [b for b in data.train_boxes + data.test_boxes if len(b) == 2]
    expected = torch.tensor([[3.52, 5.12, 9.92, 17.92], [24.0, 17.92, 30.4, 29.44]])
    assert len(two) == 1 and torch.allclose(two[0], expected)
    split = np.random.default_rng(0).permutation(5)[:2]  # the stated rule: ids sorted, permuted
    assert sorted(split.tolist()) == sorted(
        i for i, name in enumerate(sorted(SIZES)) if _in_test(data, tmp_path, name)
    )


def _in_test(data, root, name) -> bool:
    image = np.asarray(Image.open(root / "Kvasir-SEG" / "images" / f"{name}.jpg").convert("RGB")
                       .resize((32, 32), Image.BILINEAR))  # fmt: skip
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
    return any(torch.equal(tensor, t) for t in data.test_images)


def test_kvasir_boxes_from_masks_split_components_and_the_cache_is_reused(tmp_path):
    folder = _kvasir(tmp_path, SIZES)
    data = kdlab.load_dataset("kvasir_seg", root=tmp_path, size=50, boxes="masks", test_size=1)
    counts = sorted(len(b) for b in data.train_boxes + data.test_boxes)
    assert counts == [1, 1, 1, 1, 2]  # image "b"'s mask holds two polyps
    by_json = kdlab.load_dataset("kvasir_seg", root=tmp_path, size=50, test_size=1)
    for from_mask, from_json in zip(data.train_boxes, by_json.train_boxes):
        assert torch.allclose(from_mask, from_json, atol=1.0)  # JPEG edges: a pixel at most
    for image in (folder / "images").iterdir():
        image.unlink()  # the cache is read, the folder's images are not needed again
    again = kdlab.load_dataset("kvasir_seg", root=tmp_path, size=50, boxes="masks", test_size=1)
    assert torch.equal(again.train_images, data.train_images)


def test_kvasir_missing_or_broken_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        kdlab.load_dataset("kvasir_seg", root=tmp_path)
    message = str(missing.value)
    assert "\n" not in message and "datasets.simula.no/kvasir-seg" in message
    assert str(tmp_path) in message and "synthetic_polyps" in message
    folder = _kvasir(tmp_path, {"a": (40, 40), "b": (40, 40)})
    table = json.loads((folder / KVASIR_BOXES).read_text())
    del table["a"]
    (folder / KVASIR_BOXES).write_text(json.dumps(table))
    with pytest.raises(ValueError, match="no entry for image 'a'"):
        kdlab.load_dataset("kvasir_seg", root=tmp_path, size=32, test_size=1)
    with pytest.raises(ValueError, match="boxes must be"):
        kdlab.load_dataset("kvasir_seg", root=tmp_path, boxes="polygons")


# --------------------------------------------------------------------------- CVC-ClinicDB
def test_cvc_clinicdb_tif_frames_split_by_frame_number(tmp_path):
    folder = tmp_path / "CVC-ClinicDB"
    (folder / "Original").mkdir(parents=True)
    (folder / "Ground Truth").mkdir()
    for n in range(1, 11):
        Image.fromarray(np.full((36, 48, 3), n * 20, dtype=np.uint8)).save(
            folder / "Original" / f"{n}.tif"
        )
        mask = np.zeros((36, 48), dtype=np.uint8)
        mask[4:20, n : n + 12] = 255
        Image.fromarray(mask).save(folder / "Ground Truth" / f"{n}.tif")
    data = kdlab.load_dataset("cvc_clinicdb", root=tmp_path, size=32)
    assert len(data.train_images) == 8 and len(data.test_images) == 2
    # frames sorted by number (10 after 9, not after 1): the test split is frames 9 and 10
    assert data.test_images[:, 0, 0, 0].tolist() == [180, 200]
    assert data.train_images[:, 0, 0, 0].tolist() == [20, 40, 60, 80, 100, 120, 140, 160]
    box = data.test_boxes[1][0]  # frame 10: columns 10…22 of 48, rows 4…20 of 36
    assert torch.allclose(
        box, torch.tensor([10 * 32 / 48, 4 * 32 / 36, 22 * 32 / 48, 20 * 32 / 36])
    )
    with pytest.raises(DatasetNotFoundError, match="polyp.grand-challenge.org"):
        kdlab.load_dataset("cvc_clinicdb", root=tmp_path / "elsewhere")
