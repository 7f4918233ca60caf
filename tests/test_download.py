"""Verified downloads against a loopback HTTP server (127.0.0.1 only) serving fixture files.

Expected checksums come from ``hashlib`` on the bytes served, never from the code under test.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from typing import ClassVar

import pytest

from ceexp import download as dl
from ceexp.data import CIFAR10DataModule, MNISTDataModule
from tests.test_image_data import MNIST_FILES, write_cifar, write_mnist


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/good/<name>``: the file; ``/corrupt/<name>``: one byte changed; ``/cut/<name>``: the full
    ``Content-Length`` announced, half the bytes sent, connection closed; ``/slow/<name>``, ``/slowcut/<name>``: the
    first MiB sent, then nothing until the test sets ``release``, then the rest (slow) or the connection closed
    (slowcut); anything else: 404."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_GET(self):
        self.requests.append(self.path)
        _, mode, name = self.path.split("/", 2)
        body = self.files.get(name)
        if body is None or mode not in ("good", "corrupt", "cut", "slow", "slowcut"):
            self.send_error(404)
            return
        if mode == "corrupt":
            body = body[:10] + bytes([body[10] ^ 0xFF]) + body[11:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("slow", "slowcut"):
            self.wfile.write(body[: 1 << 20])
            self.wfile.flush()
            self.release.wait(timeout=120)
            if mode == "slow":
                self.wfile.write(body[1 << 20:])
            self.close_connection = True
            return
        self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)
        if mode == "cut":
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback server over fixture MNIST and CIFAR-10 files; yields ``(base URL, {name: bytes})``."""
    src = tmp_path / "src"
    write_mnist(src)
    write_cifar(src)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    _Handler.files, _Handler.requests, _Handler.release = files, [], threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        _Handler.release.set()  # a slow transfer still waiting ends
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_fetch_writes_the_verified_file_and_nothing_else(server, tmp_path):
    url, files = server
    name = "cifar-10-python.tar.gz"
    out = dl.fetch(name, md5(files[name]), [f"{url}/good"], tmp_path / "dest", timeout=10)
    assert out == tmp_path / "dest" / name and out.read_bytes() == files[name]
    # the file and the stamp of its verified MD5 (ceexp.download.verify), no part file
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [name, name + ".md5ok"]
    stamp = json.loads((tmp_path / "dest" / (name + ".md5ok")).read_text())
    assert stamp["md5"] == md5(files[name]) and stamp["size"] == len(files[name])


def test_corrupt_file_names_file_and_checksums_and_leaves_nothing(server, tmp_path):
    url, files = server
    name = "train-images-idx3-ubyte.gz"
    body = files[name]
    corrupt = md5(body[:10] + bytes([body[10] ^ 0xFF]) + body[11:])
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch(name, md5(body), [f"{url}/corrupt"], tmp_path / "dest", timeout=10)
    message = str(err.value)
    assert "\n" not in message and name in message and md5(body) in message and corrupt in message
    assert "nothing was kept" in message
    assert list((tmp_path / "dest").iterdir()) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    url, files = server
    name = "cifar-10-python.tar.gz"
    with pytest.raises(dl.DownloadError, match=f"{name} with MD5 {md5(files[name])}") as err:
        dl.fetch(name, md5(files[name]), [f"{url}/cut"], tmp_path / "dest", timeout=10)
    assert f"transfer interrupted after {len(files[name]) // 2} of {len(files[name])} bytes" in str(err.value)
    assert list((tmp_path / "dest").iterdir()) == []


def _fetch_in_background(url: str, name: str, digest: str, dest):
    """Start ``dl.fetch`` in a thread; returns the thread and a dict that gets ``result`` or ``error``."""
    out: dict = {}

    def target():
        try:
            out["result"] = dl.fetch(name, digest, [url], dest, timeout=60)
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _wait_for_part_file(dest, size: int, deadline_s: float = 120.0):
    """Poll (no fixed sleep) until a file in ``dest`` holds ``size`` bytes; returns the folder's names then."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        names = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
        if any((dest / n).is_file() and (dest / n).stat().st_size >= size for n in names):
            return names
        time.sleep(0.02)
    raise AssertionError(f"no file in {dest} reached {size} bytes within {deadline_s} s: {names}")


@pytest.mark.parametrize("mode", ["slow", "slowcut"])
def test_the_final_name_never_exists_before_the_whole_verified_file(server, tmp_path, mode):
    """Watched during a transfer that stalls after its first MiB: the bytes so far are in a hidden part file and
    the final name does not exist; after the rest arrives, the final name is the whole file; after the
    connection is cut instead, nothing is left."""
    import re

    url, files = server
    name = "big.bin"
    files[name] = bytes(range(256)) * 6144  # 1.5 MiB: the first MiB arrives, then the transfer stalls
    dest = tmp_path / "dest"
    thread, out = _fetch_in_background(f"{url}/{mode}", name, md5(files[name]), dest)
    try:
        names = _wait_for_part_file(dest, 1 << 20)
        assert name not in names and (dest / name).exists() is False
        assert len(names) == 1 and re.fullmatch(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}\.part", names[0]), names
        assert (dest / names[0]).read_bytes() == files[name][: 1 << 20]
    finally:
        _Handler.release.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    if mode == "slow":
        assert out.get("result") == dest / name and (dest / name).read_bytes() == files[name]
        assert sorted(p.name for p in dest.iterdir()) == [name, name + ".md5ok"]
    else:
        assert isinstance(out.get("error"), dl.DownloadError), out
        assert f"transfer interrupted after {1 << 20} of {len(files[name])} bytes" in str(out["error"])
        assert list(dest.iterdir()) == []


def test_a_failing_mirror_falls_back_to_the_next(server, tmp_path):
    url, files = server
    name = "t10k-labels-idx1-ubyte.gz"
    out = dl.fetch(name, md5(files[name]), [f"{url}/missing", f"{url}/corrupt", f"{url}/good"], tmp_path / "dest",
                   timeout=10)
    assert out.read_bytes() == files[name]
    assert _Handler.requests == [f"/missing/{name}", f"/corrupt/{name}", f"/good/{name}"]
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [name, name + ".md5ok"]


def test_datamodule_downloads_missing_files_then_reads_them(server, tmp_path, monkeypatch):
    url, files = server
    mnist = dl.Resource({n: md5(files[n]) for n in MNIST_FILES}, (f"{url}/good",))
    monkeypatch.setitem(dl.RESOURCES, "mnist", mnist)
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / MNIST_FILES[0]).write_bytes(files[MNIST_FILES[0]])  # one file already there: kept
    dm = MNISTDataModule(root=str(root), download=True, val_fraction=0.5)
    dm.setup()
    # every file stamped verified: the downloaded ones by fetch, the one already there by setup's check
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted([*MNIST_FILES, *(n + ".md5ok" for n in MNIST_FILES)])
    assert _Handler.requests == [f"/good/{n}" for n in MNIST_FILES[1:]]
    assert len(dm.y_train) + len(dm.y_val) == 60


def test_datamodule_download_failure_names_the_file(server, tmp_path, monkeypatch):
    url, files = server
    name = "cifar-10-python.tar.gz"
    monkeypatch.setitem(dl.RESOURCES, "cifar10", dl.Resource({name: md5(files[name])}, ("unused",)))
    dm = CIFAR10DataModule(root=str(tmp_path), download=True, mirrors=[f"{url}/corrupt"])
    with pytest.raises(dl.DownloadError, match=f"could not download {name} with MD5 {md5(files[name])}"):
        dm.setup()
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_published_checksums_are_listed_for_every_file():
    # the digests printed on the data sets' pages and used by torchvision, for the file names of each format
    assert dl.RESOURCES["cifar10"].files == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert dl.RESOURCES["cifar100"].files == {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
    assert dl.RESOURCES["mnist"].files["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert dl.RESOURCES["fashion_mnist"].files["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert all(list(dl.RESOURCES[n].files) == list(MNIST_FILES) for n in ("mnist", "fashion_mnist"))


def test_md5sum_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MB: more than one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert dl.md5sum(tmp_path / "f") == md5(data)


@pytest.mark.promise
def test_a_run_with_download_true_fetches_verifies_and_trains(server, tmp_path, monkeypatch):
    """The README's download path end to end: a real run with data=mnist data.download=true on an empty data.root
    fetches the four files (from the loopback server, with their MD5s), stamps them verified and trains; a second
    run reads them without downloading again."""
    from ceexp.train import train
    from tests.conftest import FAST, make_cfg

    url, files = server
    monkeypatch.setitem(dl.RESOURCES, "mnist", dl.Resource({n: md5(files[n]) for n in MNIST_FILES}, (f"{url}/good",)))
    root = tmp_path / "root"
    args = [*FAST, "trainer.max_epochs=1", "logger=none", "data=mnist", f"data.root={root}", "data.download=true",
            "data.val_fraction=0.5", "data.on_device=false"]
    metrics = train(make_cfg(tmp_path / "run", args))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    assert metrics["test/acc"] >= 0
    assert _Handler.requests == [f"/good/{n}" for n in MNIST_FILES]
    stamps = [n + ".md5ok" for n in MNIST_FILES]
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted([*MNIST_FILES, *stamps])
    assert all((root / "mnist" / n).read_bytes() == files[n] for n in MNIST_FILES)
    train(make_cfg(tmp_path / "again", args))
    assert len(_Handler.requests) == len(MNIST_FILES)  # nothing fetched twice
