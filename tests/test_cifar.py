"""CIFAR's download, checksum, mirror and cache, offline: small archives in CIFAR's own format,
made here and served from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import sys
import tarfile
import threading
import types

import numpy as np
import pytest

from kdlab.data import DatasetNotFoundError, cifar, download, load_dataset
from kdlab.data.cifar import CorruptArchiveError


def _rows(first: int, count: int) -> np.ndarray:
    """N×3072 rows in CIFAR's layout where image i is red i, green 100 + i, blue 200 + i."""
    idx = np.arange(first, first + count, dtype=np.uint8)[:, None]
    ones = np.ones((1, 1024), dtype=np.uint8)
    return np.concatenate([idx * ones, (100 + idx) * ones, (200 + idx) * ones], axis=1)


def make_archive(name: str) -> bytes:
    """A .tar.gz laid out as CIFAR's "python version": cifar-10 has 5 training batches of two
    images (labels 0…9) and a test batch of three; cifar-100 a train and a test file."""
    if name == "cifar10":
        folder = "cifar-10-batches-py"
        files = {f"data_batch_{b + 1}": {"data": _rows(2 * b, 2), "labels": [2 * b, 2 * b + 1]}
                 for b in range(5)}  # fmt: skip
        files["test_batch"] = {"data": _rows(50, 3), "labels": [3, 1, 4]}
        files["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)]}
    else:
        folder = "cifar-100-python"
        files = {
            "train": {"data": _rows(0, 4), "fine_labels": [0, 99, 5, 42]},
            "test": {"data": _rows(10, 2), "fine_labels": [7, 8]},
            "meta": {"fine_label_names": [f"c{i}" for i in range(100)]},
        }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file, content in files.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"{folder}/{file}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVES = {name: make_archive(name) for name in ("cifar10", "cifar100")}
NAMES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


class Server:
    """A loopback HTTP server: ``files`` maps a path to its bytes; ``short`` paths announce their
    whole length but send half and hang up; ``requests`` lists the paths asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.short else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    """The server stands in for the datasets' home; the spec's checksums are the test archives'."""
    srv = Server()
    for name, data in ARCHIVES.items():
        srv.files[f"/home/{NAMES[name]}"] = data
        spec = dict(cifar.CIFAR[name], url=f"{srv.url}/home/{NAMES[name]}")
        spec["md5"] = hashlib.md5(data).hexdigest()
        monkeypatch.setitem(cifar.CIFAR, name, spec)
    for var in ("KDLAB_CACHE", "KDLAB_CIFAR_URL", "KDLAB_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    yield srv
    srv.close()


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_checks_and_keeps_the_archive(server, tmp_path, capsys):
    d = load_dataset("cifar10", root=tmp_path)
    assert server.requests == ["/home/cifar-10-python.tar.gz"]
    assert d.train_labels.tolist() == list(range(10)) and d.test_labels.tolist() == [3, 1, 4]
    assert d.train_images[7, :, 3, 3].tolist() == [7, 107, 207] and d.classes[9] == "class9"
    assert _files(tmp_path) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no .tmp left
    bar = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in bar and "100%" in bar  # the progress bar
    again = load_dataset("cifar10", root=tmp_path)
    assert server.requests == ["/home/cifar-10-python.tar.gz"]  # read from the folder
    assert again.train_labels.tolist() == d.train_labels.tolist()


def test_an_archive_without_its_folder_is_extracted_not_downloaded(server, tmp_path):
    (tmp_path / NAMES["cifar100"]).write_bytes(ARCHIVES["cifar100"])
    d = load_dataset("cifar100", root=tmp_path, download=False)
    assert d.train_labels.tolist() == [0, 99, 5, 42] and d.classes[99] == "c99"
    assert server.requests == []


@pytest.mark.parametrize("form", ["folder", "folder/", "archive"])
def test_mirror_address(server, tmp_path, monkeypatch, form):
    server.files["/mirror/cifar-100-python.tar.gz"] = ARCHIVES["cifar100"]
    address = f"{server.url}/mirror"
    address = {"folder": address, "folder/": address + "/"}.get(
        form, address + "/" + NAMES["cifar100"]
    )
    monkeypatch.setenv("KDLAB_CIFAR_URL", address)
    d = load_dataset("cifar100", root=tmp_path)
    assert server.requests == ["/mirror/cifar-100-python.tar.gz"]  # not the home server
    assert d.test_labels.tolist() == [7, 8]


def test_kdlab_data_is_the_default_root(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "data"))
    load_dataset("cifar10")
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_a_corrupted_download_is_an_error_and_not_kept(server, tmp_path):
    bad = bytearray(ARCHIVES["cifar10"])
    bad[100] ^= 0xFF
    server.files["/home/cifar-10-python.tar.gz"] = bytes(bad)
    with pytest.raises(CorruptArchiveError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "MD5" in message and "not kept" in message and "\n" not in message
    assert isinstance(info.value, DatasetNotFoundError)  # the lab profile falls back on it
    assert _files(tmp_path) == []
    server.files["/home/cifar-10-python.tar.gz"] = ARCHIVES["cifar10"]  # the next try works
    assert len(load_dataset("cifar10", root=tmp_path).train_labels) == 10


def test_a_partial_download_is_an_error_and_not_kept(server, tmp_path):
    server.short.add("/home/cifar-100-python.tar.gz")
    with pytest.raises(CorruptArchiveError) as info:
        load_dataset("cifar100", root=tmp_path)
    size = len(ARCHIVES["cifar100"])
    assert f"stopped after {size // 2} of {size} bytes" in str(info.value)
    assert "\n" not in str(info.value)
    assert _files(tmp_path) == []


def test_a_corrupted_archive_in_place_is_moved_aside(server, tmp_path):
    (tmp_path / NAMES["cifar10"]).write_bytes(ARCHIVES["cifar10"][:-10])  # truncated
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert _files(tmp_path) == ["cifar-10-python.tar.gz.corrupt"]
    load_dataset("cifar10", root=tmp_path)  # now downloaded
    assert server.requests == ["/home/cifar-10-python.tar.gz"]


def test_offline_is_a_one_line_error(server, tmp_path, monkeypatch):
    server.close()  # nothing listens on that port any more
    monkeypatch.setenv("KDLAB_CIFAR_URL", server.url)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "download from" in message and "failed" in message and "\n" not in message
    assert "KDLAB_CIFAR_URL" in message and "works offline" in message
    assert _files(tmp_path) == []


@pytest.mark.parametrize("how", ["KDLAB_CACHE", "colab drive"])
def test_the_cache_spares_the_next_runtime_a_download(server, tmp_path, monkeypatch, how):
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    if how == "KDLAB_CACHE":
        monkeypatch.setenv("KDLAB_CACHE", str(drive / "kdlab-data"))
    else:  # on Colab with Drive mounted
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        monkeypatch.setattr(download, "COLAB_DRIVE", drive)
    load_dataset("cifar10", root=tmp_path / "runtime1")
    kept = drive / "kdlab-data" / NAMES["cifar10"]
    assert kept.read_bytes() == ARCHIVES["cifar10"]
    server.close()  # the next runtime: a fresh root, and no network
    d = load_dataset("cifar10", root=tmp_path / "runtime2")
    assert server.requests == ["/home/cifar-10-python.tar.gz"]  # only runtime 1 downloaded
    assert d.train_labels.tolist() == list(range(10))


def test_no_cache_outside_colab_without_kdlab_cache(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "COLAB_DRIVE", tmp_path)  # a Drive folder, but not on Colab
    assert cifar.cache_root() is None


def test_an_incomplete_folder_is_a_clear_error(server, tmp_path):
    load_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="incomplete \\(no data_batch_3\\)"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_the_real_checksums_are_torchvisions():
    # The values torchvision's CIFAR10/CIFAR100 check (tgz_md5).
    assert cifar.CIFAR["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert cifar.CIFAR["cifar100"]["md5"] == "eb9058c3a382ffc7106e4002c42a8d85"


# --------------------------------------------------------------------------- cut half-way


class Cut(KeyboardInterrupt):
    """An interruption planted by a test (a user's Ctrl-C, a kill)."""


def test_a_download_cut_half_way_leaves_no_archive(server, tmp_path, monkeypatch):
    real = download._download

    def half_then_cut(url, path, md5, progress):
        real(url, path, md5, progress)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        raise Cut

    monkeypatch.setattr(download, "_download", half_then_cut)
    with pytest.raises(Cut):
        load_dataset("cifar10", root=tmp_path)
    assert _files(tmp_path) == []  # the old state: nothing
    monkeypatch.setattr(download, "_download", real)
    assert load_dataset("cifar10", root=tmp_path).train_labels.tolist() == list(range(10))


def test_an_extraction_cut_half_way_leaves_no_dataset_folder(server, tmp_path, monkeypatch):
    (tmp_path / NAMES["cifar10"]).write_bytes(ARCHIVES["cifar10"])
    real = tarfile.TarFile.extractall

    def first_member_then_cut(self, path=".", members=None, **kwargs):
        self.extract(self.getmembers()[0], path, **kwargs)
        raise Cut

    monkeypatch.setattr(tarfile.TarFile, "extractall", first_member_then_cut)
    with pytest.raises(Cut):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    d = load_dataset("cifar10", root=tmp_path, download=False)  # extracted whole this time
    assert d.train_labels.tolist() == list(range(10)) and server.requests == []
