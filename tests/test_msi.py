"""MSI vs MSS offline: fake tiles in the archives' layout (class folders MSIMUT and MSS, train
and test split by patient), the four places the loader reads them from, the subset, the cache,
the class balance, and the task's AUROC and balanced accuracy through a run."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import kdlab
from kdlab.data import DatasetNotFoundError, load_dataset
from kdlab.data.msi import class_balance, patient_of, pick

COLOUR = {"MSIMUT": (200, 40, 60), "MSS": (60, 40, 200)}
# (split, class) → patients, tiles per patient. Train balanced, test 3 : 7 like the real one.
PLAN = {
    ("TRAIN", "MSIMUT"): (["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003"], 2),
    ("TRAIN", "MSS"): (["TCGA-BB-0001", "TCGA-BB-0002"], 3),
    ("TEST", "MSIMUT"): (["TCGA-CC-0001"], 3),
    ("TEST", "MSS"): (["TCGA-DD-0001", "TCGA-DD-0002"], 4),  # 8 tiles: one is dropped below
}


def _png(colour, shade: int) -> bytes:
    image = Image.new("RGB", (48, 48), tuple(min(255, c + shade) for c in colour))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiles(split: str, klass: str) -> dict[str, bytes]:
    patients, per = PLAN[(split, klass)]
    files = {}
    for p, patient in enumerate(patients):
        for k in range(per):
            files[f"blk-{klass[:3]}{p}{k}-{patient}-01Z-00-DX1.png"] = _png(COLOUR[klass], k)
    if (split, klass) == ("TEST", "MSS"):
        files.pop(sorted(files)[-1])  # 7 MSS test tiles against 3 MSIMUT
    return files


def write(root: Path, layout: str, prefix: str = "CRC_DX") -> Path:
    """The four tiles of data in one of the loader's four layouts."""
    for split, klass in PLAN:
        stem = f"{prefix}_{split}_{klass}"
        files = tiles(split, klass)
        if layout == "zip":
            with zipfile.ZipFile(root / f"{stem}.zip", "w") as archive:
                for name, data in files.items():
                    archive.writestr(f"{klass}/{name}", data)
            continue
        folder = {
            "split-folders": root / f"{prefix}_{split}" / klass,
            "archive-folders": root / stem / klass,
            "flat": root / stem,
        }[layout]
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return root


@pytest.mark.parametrize("layout", ["split-folders", "archive-folders", "flat", "zip"])
def test_every_layout_reads_the_same_tiles(tmp_path, layout, capsys):
    d = load_dataset("msi_crc", root=write(tmp_path, layout), size=16)
    assert d.classes == ["MSIMUT", "MSS"] and d.num_classes == 2
    assert d.train_images.shape == (12, 3, 16, 16) and d.train_images.dtype == torch.uint8
    assert d.train_labels.tolist() == [0] * 6 + [1] * 6
    assert d.test_labels.tolist() == [0] * 3 + [1] * 7
    # Resized once: a constant tile keeps its colour; MSIMUT red, MSS blue.
    assert d.train_images[0, :, 8, 8].tolist() == [200, 40, 60]
    assert d.test_images[-1, :, 0, 0].tolist()[2] >= 200
    assert class_balance(d) == {"train": {"MSIMUT": 6, "MSS": 6}, "test": {"MSIMUT": 3, "MSS": 7}}
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "test 3 MSIMUT / 7 MSS (30.0 % MSIMUT, 3 patients" in line
    assert d.padding == 1 and d.flip  # size // 16


def test_the_task_reports_auroc_and_balanced_accuracy(tmp_path):
    d = load_dataset("msi_crc", root=write(tmp_path, "split-folders"), size=16)
    assert d.task.metrics == ("acc", "auroc", "balanced_acc") and d.task.positive == 0
    config = kdlab.TrainConfig(epochs=1, batch_size=6, lr=0.05, schedule="constant", device="cpu")
    run = kdlab.run("kdml", ["cnn_tiny", "cnn_tiny"], d, teacher="cnn_tiny", config=config,
                    progress=False)  # fmt: skip
    last = run.history[-1]
    for name in ("teacher", "student1", "student2", "ensemble"):
        assert 0 <= last[f"auroc/{name}"] <= 1 and 0 <= last[f"balanced_acc/{name}"] <= 100
        entry = run.summary["networks"][name]
        assert entry["final_auroc"] == last[f"auroc/{name}"]
        assert entry["final_balanced_acc"] == last[f"balanced_acc/{name}"]


def test_subsets_keep_the_test_shares_and_span_the_patients(tmp_path, capsys):
    d = load_dataset("msi_crc", root=write(tmp_path, "zip"), size=16, max_per_class=3, max_test=5)
    assert class_balance(d) == {"train": {"MSIMUT": 3, "MSS": 3}, "test": {"MSIMUT": 2, "MSS": 3}}
    line = capsys.readouterr().err
    assert "train 3 MSIMUT / 3 MSS (50.0 % MSIMUT, 5 patients" in line  # 3 + 2: every patient
    assert "the archive's split: 3 / 7" in line


def test_pick_is_round_robin_over_patients_and_fixed():
    names = [f"t{k}-TCGA-AA-000{p}.png" for p in range(4) for k in range(5)]
    chosen = pick(names, 4)
    assert len({patient_of(n) for n in chosen}) == 4  # one tile from each patient
    assert chosen == pick(list(reversed(names)), 4) == sorted(chosen)
    assert pick(names, None) == sorted(names) and patient_of("x-TCGA-AB-12CD-01Z.png") == (
        "TCGA-AB-12CD"
    )


def test_the_resized_arrays_are_cached(tmp_path):
    root = write(tmp_path, "flat")
    first = load_dataset("msi_crc", root=root, size=16)
    cached = sorted(p.name for p in root.glob("*.npz"))
    assert cached == ["msi_crc-16px-train5000-test10000.uint8.npz"]
    for folder in root.glob("CRC_DX_*"):  # the tiles are not read again
        for tile in folder.iterdir():
            tile.unlink()
    again = load_dataset("msi_crc", root=root, size=16)
    assert torch.equal(again.train_images, first.train_images)
    assert again.test_labels.tolist() == first.test_labels.tolist()
    with pytest.raises(DatasetNotFoundError):  # other options: another cache, so the tiles
        load_dataset("msi_crc", root=root, size=24)


def test_absent_is_a_one_line_error_that_says_where_to_put_what(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("msi_stad", root=tmp_path)
    message = str(info.value)
    assert "STAD_TRAIN_MSIMUT.zip" in message and "zenodo.org/record/2530835" in message
    assert "never downloads" in message and str(tmp_path) in message and "\n" not in message


def test_the_gastric_set_reads_its_own_archives(tmp_path):
    d = load_dataset("msi_stad", root=write(tmp_path, "split-folders", prefix="STAD"), size=16)
    assert d.name == "msi_stad" and class_balance(d)["test"] == {"MSIMUT": 3, "MSS": 7}
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_dataset("msi_stad", root=tmp_path, size=4)
