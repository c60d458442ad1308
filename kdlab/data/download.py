"""One archive, downloaded once, verified, kept: what CIFAR and Tiny-ImageNet share.

A data set that comes as one archive from its home server describes it with :class:`Archive`
and calls :func:`fetch`, which puts the extracted folder ``root/<folder>/`` in place from, in
this order:

1. ``root/<file>`` or ``cache/<file>`` (a kept archive): its MD5 is checked and it is extracted
   into ``root``;
2. a download, with a progress bar, from the mirror variable's address where it is set (a
   folder address holding the archive under its own name, or the archive's full address), else
   from the home server. It is written to ``root/<file>.tmp``, checked, and only then renamed to
   ``root/<file>`` (:func:`kdlab.io.atomic_write`); a partial or corrupted download is deleted,
   with a one-line error. A good archive is also copied into the cache.

The cache (:func:`cache_root`) is ``$KDLAB_CACHE`` where set, else, on Colab with Google Drive
mounted at ``/content/drive``, ``MyDrive/kdlab-data``: a folder that outlives the runtime, so the
next runtime extracts the archive from there instead of downloading it again. An archive whose
checksum is wrong is renamed ``<file>.corrupt`` so that it is never taken for a good one.
Extraction goes to a temporary folder first, and the data set's folder is renamed into place, so
a half-extracted folder never looks like a data set. ``.tar.gz`` / ``.tgz`` and ``.zip`` archives
are read; members with absolute paths or ``..`` are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..io import atomic_write
from .images import DatasetNotFoundError

__all__ = ["Archive", "COLAB_DRIVE", "CorruptArchiveError", "cache_root", "fetch", "md5sum"]

# Where Colab mounts Google Drive (google.colab.drive.mount("/content/drive")).
COLAB_DRIVE = Path("/content/drive/MyDrive")


class CorruptArchiveError(DatasetNotFoundError):
    """An archive is partial or its checksum is wrong (it was not kept)."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One downloadable archive of a data set.

    ``name``: the data set (for messages); ``file``: the archive's file name; ``url``: its home
    address; ``md5``: its checksum; ``folder``: the folder it extracts to; ``mirror``: the
    environment variable that names a mirror (a folder address or the archive's address).
    """

    name: str
    file: str
    url: str
    md5: str
    folder: str
    mirror: str


def cache_root() -> Path | None:
    """The folder that keeps verified archives across runtimes: ``$KDLAB_CACHE``, else on Colab
    with Drive mounted, ``MyDrive/kdlab-data``; None where there is neither."""
    if os.environ.get("KDLAB_CACHE"):
        return Path(os.environ["KDLAB_CACHE"])
    if "google.colab" in sys.modules and COLAB_DRIVE.is_dir():
        return COLAB_DRIVE / "kdlab-data"
    return None


def source_url(archive: Archive) -> str:
    """The address ``archive`` is downloaded from: the mirror variable's first, else home."""
    mirror = os.environ.get(archive.mirror, "").strip()
    if not mirror:
        return archive.url
    if mirror.endswith((".tar.gz", ".tgz", ".zip")):
        return mirror
    return f"{mirror.rstrip('/')}/{archive.file}"


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


def _unsafe(names: list[str]) -> str | None:
    """The first member name that would land outside the extraction folder, or None."""
    return next((n for n in names if n.startswith("/") or ".." in n.split("/")), None)


def _unpack(path: Path, into: str) -> None:
    """Extract the archive ``path`` (``.zip`` or ``.tar.gz``) into the folder ``into``."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            bad = _unsafe(archive.namelist())
            if bad:
                raise CorruptArchiveError(f"{path} holds unsafe paths such as {bad}")
            archive.extractall(into)
        return
    with tarfile.open(path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python < 3.10.12: members are checked by hand
            bad = _unsafe([m.name for m in tar])
            if bad:
                raise CorruptArchiveError(f"{path} holds unsafe paths such as {bad}")
            tar.extractall(into)


def extract(path: Path, root: Path, folder: str) -> None:
    """Extract ``path`` into ``root``: into a temporary folder first, then ``folder`` is
    renamed into place, so a half-extracted folder never looks like a data set."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder}.") as tmp:
        _unpack(path, tmp)
        if not (Path(tmp) / folder).is_dir():
            raise CorruptArchiveError(f"{path} has no {folder}/ folder: not the right archive")
        os.replace(Path(tmp) / folder, root / folder)


def fetch(archive: Archive, root: Path, download: bool, progress: bool) -> None:
    """Put ``root/<archive.folder>`` in place from a kept archive or a download (module
    docstring). DatasetNotFoundError (one line: what is missing, where it goes, why the download
    failed) when neither is possible; CorruptArchiveError for a partial or corrupted download."""
    cache = cache_root()
    kept = [p for p in (root / archive.file, cache / archive.file if cache else None) if p]
    good = next((p for p in kept if _verified(p, archive.md5)), None)
    error = None
    if good is None and download:
        url = source_url(archive)
        try:
            good = atomic_write(
                root / archive.file, lambda tmp: _download(url, tmp, archive.md5, progress)
            )
        except CorruptArchiveError:
            raise
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            error = f"download from {url} failed: {exc}".replace("\n", " ")
    if good is None:
        reason = f" ({error})" if error else ""
        raise DatasetNotFoundError(
            f"{archive.name} is not in {root}/ and could not be downloaded{reason}. Put "
            f"{archive.file} or its extracted folder {archive.folder}/ into {root}/, or set "
            f"{archive.mirror} to a mirror; the 'digits' dataset works offline."
        )
    if cache is not None and not _verified(cache / archive.file, archive.md5):
        atomic_write(cache / archive.file, lambda tmp: shutil.copyfile(good, tmp))
    extract(good, root, archive.folder)
