"""CIFAR-10 and CIFAR-100: downloaded once, verified, kept, read as uint8 tensors.

Where :func:`load_cifar` finds a dataset, in this order:

1. ``root/<folder>/``, the extracted archive (``cifar-10-batches-py``, ``cifar-100-python``):
   read directly.
2. ``root/<archive>`` or ``cache/<archive>`` (``cifar-10-python.tar.gz``,
   ``cifar-100-python.tar.gz``): its MD5 is checked (the same checksums as torchvision's) and it
   is extracted into ``root``.
3. A download, with a progress bar, from ``$KDLAB_CIFAR_URL`` where set (a mirror: a folder
   address holding the archives under their own names, or one archive's full address), else from
   the dataset's home server. It is written to ``root/<archive>.tmp``, checked, and only then
   renamed to ``root/<archive>``; a partial or corrupted download is deleted, with a one-line
   error. A good archive is also copied into the cache.

The cache (:func:`cache_root`) is ``$KDLAB_CACHE`` where set, else, on Colab with Google Drive
mounted at ``/content/drive``, ``MyDrive/kdlab-data``: a folder that outlives the runtime, so the
next runtime extracts the archive from there instead of downloading it again. An archive whose
checksum is wrong is renamed ``<archive>.corrupt`` so that it is never taken for a good one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from . import register_dataset
from .images import DatasetNotFoundError, ImageDataset

__all__ = ["load_cifar", "cache_root", "CorruptArchiveError", "CIFAR", "COLAB_DRIVE"]

CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        labels="labels",
        meta=("batches.meta", "label_names"),
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"],
        test=["test"],
        labels="fine_labels",
        meta=("meta", "fine_label_names"),
    ),
}

# Where Colab mounts Google Drive (google.colab.drive.mount("/content/drive")).
COLAB_DRIVE = Path("/content/drive/MyDrive")


class CorruptArchiveError(DatasetNotFoundError):
    """A CIFAR archive is partial or its checksum is wrong (it was not kept)."""


def cache_root() -> Path | None:
    """The folder that keeps verified archives across runtimes: ``$KDLAB_CACHE``, else on Colab
    with Drive mounted, ``MyDrive/kdlab-data``; None where there is neither."""
    if os.environ.get("KDLAB_CACHE"):
        return Path(os.environ["KDLAB_CACHE"])
    if "google.colab" in sys.modules and COLAB_DRIVE.is_dir():
        return COLAB_DRIVE / "kdlab-data"
    return None


def source_url(name: str) -> str:
    """The address the archive of ``name`` is downloaded from (``$KDLAB_CIFAR_URL`` first)."""
    spec = CIFAR[name]
    mirror = os.environ.get("KDLAB_CIFAR_URL", "").strip()
    if not mirror:
        return spec["url"]
    if mirror.endswith((".tar.gz", ".tgz")):
        return mirror
    return f"{mirror.rstrip('/')}/{spec['archive']}"


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, path: Path, md5: str, progress: bool) -> None:
    """Write ``url`` to ``path`` with a tqdm bar; CorruptArchiveError when it ends early or its
    MD5 is not ``md5`` (the caller deletes ``path``)."""
    from tqdm.auto import tqdm

    digest, size = hashlib.md5(), 0
    request = urllib.request.Request(url, headers={"User-Agent": "kdlab"})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name[:-4],
            disable=not progress, file=sys.stderr,
        )  # fmt: skip
        with bar, open(path, "wb") as f:
            try:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead:
                pass  # reported below, as a short download
    if total is not None and size != total:
        raise CorruptArchiveError(
            f"the download of {url} stopped after {size} of {total} bytes; it was not kept, "
            "load the dataset again to retry"
        )
    if digest.hexdigest() != md5:
        raise CorruptArchiveError(
            f"{url} sent {size} bytes whose MD5 is {digest.hexdigest()}, not {md5}: not the "
            "archive (a corrupted download or a wrong mirror); it was not kept"
        )


def _verified(path: Path, md5: str) -> bool:
    """Whether ``path`` is an archive with checksum ``md5``; a wrong one is renamed ``.corrupt``."""
    if not path.is_file():
        return False
    if md5sum(path) == md5:
        return True
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    print(f"{path} is not the archive (wrong MD5): moved aside to {aside.name}", file=sys.stderr)
    return False


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract ``archive`` into ``root``: into a temporary folder first, then ``folder`` is
    renamed into place, so a half-extracted folder never looks like a dataset."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder}.") as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.10.12: members are checked by hand
                bad = [m.name for m in tar if m.name.startswith("/") or ".." in m.name.split("/")]
                if bad:
                    raise CorruptArchiveError(f"{archive} holds unsafe paths such as {bad[0]}")
                tar.extractall(tmp)
        if not (Path(tmp) / folder).is_dir():
            raise CorruptArchiveError(f"{archive} has no {folder}/ folder: not a CIFAR archive")
        os.replace(Path(tmp) / folder, root / folder)


def _fetch(name: str, root: Path, download: bool, progress: bool) -> None:
    """Put ``root/<folder>`` in place from a kept archive or a download (module docstring)."""
    spec = CIFAR[name]
    archive, md5 = spec["archive"], spec["md5"]
    cache = cache_root()
    kept = [p for p in (root / archive, cache / archive if cache else None) if p is not None]
    good = next((p for p in kept if _verified(p, md5)), None)
    error = None
    if good is None and download:
        url = source_url(name)
        try:
            good = atomic_write(root / archive, lambda tmp: _download(url, tmp, md5, progress))
        except CorruptArchiveError:
            raise
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            error = f"download from {url} failed: {exc}".replace("\n", " ")
    if good is None:
        reason = f" ({error})" if error else ""
        raise DatasetNotFoundError(
            f"{name} is not in {root}/ and could not be downloaded{reason}. Put {archive} or its "
            f"extracted folder {spec['folder']}/ into {root}/, or set KDLAB_CIFAR_URL to a "
            f"mirror; the 'digits' dataset works offline."
        )
    if cache is not None and not _verified(cache / archive, md5):
        atomic_write(cache / archive, lambda tmp: shutil.copyfile(good, tmp))
    _extract(good, root, spec["folder"])


def _read_batches(folder: Path, files: list[str], label_key: str):
    images, labels = [], []
    for name in files:
        if not (folder / name).is_file():
            raise DatasetNotFoundError(
                f"{folder}/ is incomplete (no {name}): delete it and load the dataset again"
            )
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def load_cifar(name: str, root: Path, download: bool = True, progress: bool = True):
    """CIFAR-10/100 (``name``) from ``root``, fetched first where needed (module docstring).

    Raises DatasetNotFoundError (one line: what is missing, where it goes, why the download
    failed) and its subclass CorruptArchiveError for a partial or corrupted download.
    """
    spec = CIFAR[name]
    folder = root / spec["folder"]
    if not folder.is_dir():
        _fetch(name, root, download, progress)
    train_x, train_y = _read_batches(folder, spec["train"], spec["labels"])
    test_x, test_y = _read_batches(folder, spec["test"], spec["labels"])
    meta_file, meta_key = spec["meta"]
    if (folder / meta_file).exists():
        with open(folder / meta_file, "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")[meta_key])
    else:
        classes = [str(c) for c in range(int(max(train_y.max(), test_y.max())) + 1)]
    return ImageDataset(name, train_x, train_y, test_x, test_y, classes, padding=4, flip=True)


@register_dataset("cifar10", summary="CIFAR-10: 50,000 + 10,000 images, 32×32 RGB, 10 classes")
def cifar10(root: Path, download: bool = True) -> ImageDataset:
    """CIFAR-10 (:func:`load_cifar`)."""
    return load_cifar("cifar10", root, download)


@register_dataset("cifar100", summary="CIFAR-100: 50,000 + 10,000 images, 32×32 RGB, 100 classes")
def cifar100(root: Path, download: bool = True) -> ImageDataset:
    """CIFAR-100 (:func:`load_cifar`)."""
    return load_cifar("cifar100", root, download)
