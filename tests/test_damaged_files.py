"""Damaged distribution files end in one line naming the file and its damage (issue 13.1), checksums are checked
before parsing and cached, and a relative data.root survives hydra.job.chdir=true (issue 13.4).

Damaged files are made here from fixture files in the exact formats (tests/test_image_data.py's writers); sizes,
offsets, magic numbers and MD5s in the expected messages come from the bytes written (len, hashlib, struct).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ceexp import download as dl
from ceexp.data import CIFAR10DataModule, MNISTDataModule, data_root
from ceexp.validation import ConfigError
from tests.conftest import ROOT, make_cfg
from tests.test_image_data import MNIST_FILES, write_cifar, write_mnist

FIX = "delete it and pass data.download=true to fetch a good copy"
IMAGES = MNIST_FILES[0]  # train-images-idx3-ubyte.gz
ARCHIVE = "cifar-10-python.tar.gz"
NGINX_403 = (b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>"
             b"\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
S3_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
             b"<RequestId>X1</RequestId></Error>")
WEB_PAGE = "is a web page, not gzip data: an error page a server sent in place of the file"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def cut_off(data: bytes) -> tuple[bytes, str]:
    half = data[: len(data) // 2]
    return half, (f"ends early: its gzip stream stops after {len(half):,} bytes, before its end-of-stream marker "
                  "(an interrupted download?)")


def bad_crc(data: bytes) -> bytes:
    """A gzip member's trailer is CRC-32 (4 bytes, little-endian) then the length: change the CRC's first byte."""
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]


# -- MNIST: (damaged bytes of train-images-idx3-ubyte.gz, reason) from the good bytes -----------------------

def _idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


MNIST_DAMAGE = {
    "cut_off_download": cut_off,
    "error_page_403": lambda good: (NGINX_403, f"{WEB_PAGE} ('403 Forbidden')"),
    "s3_error_xml": lambda good: (S3_DENIED, f"{WEB_PAGE} ('AccessDenied Access Denied X1')"),
    "header_shorter_than_its_dimensions": lambda good: (
        gz(_idx_header(60, 28, 28)[:8]),  # 3 dimensions announced, one size written: 8 of 16 header bytes
        "is truncated: its IDX header announces 3 dimensions (16 header bytes), but the file holds 8 bytes"),
    "zero_length": lambda good: (b"", "is empty (0 bytes)"),
    "wrong_magic_number": lambda good: (gz(b"\x00\x01" + gzip.decompress(good)[2:]),
                                        "is not an IDX file: its magic number is 00010803"),
    "gzip_of_wrong_content": lambda good: (gz(b"not an idx file\n"), "is not an IDX file: its magic number is 6e6f7420"),
    "body_shorter_than_header": lambda good: (
        gz(_idx_header(60, 28, 28) + bytes(100)),
        f"is truncated or corrupt: the header says (60, 28, 28), but it holds 100 bytes of data, not {60 * 28 * 28}"),
    "crc_mismatch": lambda good: (bad_crc(good), "is corrupt: its gzip data fail their CRC check"),
    "decompressed_idx_under_the_gz_name": lambda good: (
        gzip.decompress(good), "holds uncompressed IDX data, not gzip data (decompressed after the download?)"),
    "zip_archive": lambda good: (b"PK\x03\x04" + bytes(60), "is not gzip data: it starts with the bytes 504b0304, not 1f8b"),
    "bytes_after_the_stream": lambda good: (good + b"garbage!", "is corrupt: bytes that are not gzip follow its gzip stream"),
    # a gzip header, then a deflate block of the reserved type 3 (RFC 1951, 3.2.3: BFINAL 1, BTYPE 11)
    "deflate_data_damaged": lambda good: (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 20,
        "is corrupt: its gzip data do not decompress (Error -3 while decompressing data: invalid block type)"),
}


@pytest.fixture
def mnist(tmp_path, monkeypatch):
    """Fixture MNIST files under ``tmp_path/data/mnist`` whose MD5s stand in for the published ones."""
    folder = tmp_path / "data" / "mnist"
    write_mnist(folder)
    good = {name: (folder / name).read_bytes() for name in MNIST_FILES}
    monkeypatch.setitem(dl.RESOURCES, "mnist", dl.Resource({n: md5(b) for n, b in good.items()}, ("unused",)))
    return folder, good


def _setup_error(cls, root: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        cls(root=str(root), val_fraction=0.5, **kwargs).setup()
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", list(MNIST_DAMAGE))
def test_damaged_mnist_file_is_one_line_naming_it(mnist, kind):
    folder, good = mnist
    damaged, reason = MNIST_DAMAGE[kind](good[IMAGES])
    (folder / IMAGES).write_bytes(damaged)
    path = folder / IMAGES
    # the published checksum fails first, and the probe says what is wrong
    assert _setup_error(MNISTDataModule, folder.parent) == (
        f"{path} {reason}; its MD5 is {md5(damaged)}, not the published {md5(good[IMAGES])}; {FIX}")
    # without checksums, the reader itself names the damage
    assert _setup_error(MNISTDataModule, folder.parent, checksum=False) == f"{path} {reason}; {FIX}"


def test_labels_that_do_not_match_the_images_name_the_labels_file(mnist):
    folder, _ = mnist
    labels = folder / MNIST_FILES[1]
    labels.write_bytes(gz(_idx_header(59) + bytes(59)))  # 60 training images in the fixture, 59 labels
    assert _setup_error(MNISTDataModule, folder.parent, checksum=False) == (
        f"{labels} holds labels of shape (59,), expected (60,), one per image of {IMAGES}; {FIX}")


def test_an_intact_file_that_is_not_the_published_one_says_so_and_how_to_read_it(tmp_path):
    write_mnist(tmp_path / "mnist")  # random images: a well-formed file whose MD5 is not the published one
    path = tmp_path / "mnist" / IMAGES
    published = dl.RESOURCES["mnist"].files[IMAGES]
    assert _setup_error(MNISTDataModule, tmp_path) == (
        f"{path} is not the published file: its MD5 is {md5(path.read_bytes())}, not {published}, though it reads as "
        f"an intact mnist file (another release, or a file of your own?); {FIX}, or pass data.checksum=false to "
        "read it as it is")


# -- CIFAR ------------------------------------------------------------------------------------------------

def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _archive(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


BATCH_1 = "cifar-10-batches-py/data_batch_1"


def _replace(good: bytes, name: str, payload: bytes | None) -> bytes:
    members = _members(good)
    if payload is None:
        del members[name]
    else:
        members[name] = payload
    return _archive(members)


def _narrow_batch(good: bytes) -> tuple[bytes, str]:
    entry = pickle.loads(_members(good)[BATCH_1], encoding="latin1")
    n = len(entry["labels"])
    entry["data"] = entry["data"][:, :3000]  # 3,000 values per image instead of 3 x 32 x 32
    return (_replace(good, BATCH_1, pickle.dumps(entry, protocol=2)),
            f"is corrupt: its member {BATCH_1} holds {n * 3000} pixel values for {n} labels, expected 3072 per label")


# damage found without unpickling: reported the same with and without checksums
CIFAR_DAMAGE = {
    "cut_off_download": cut_off,
    "error_page_403": lambda good: (NGINX_403, f"{WEB_PAGE} ('403 Forbidden')"),
    "zero_length": lambda good: (b"", "is empty (0 bytes)"),
    "gzip_of_wrong_content": lambda good: (gz(b"no tar here\n" * 100), "is not a tar archive inside its gzip layer"),
    "crc_mismatch": lambda good: (bad_crc(good), "is corrupt: its gzip data fail their CRC check"),
    "missing_member": lambda good: (_replace(good, "cifar-10-batches-py/test_batch", None),
                                    "is not a complete CIFAR archive: it lacks cifar-10-batches-py/test_batch"),
}
# damage inside the pickles: only a file that passed its checksum or checksum=false is unpickled
PICKLE_DAMAGE = {
    "truncated_pickle": lambda good: (_replace(good, BATCH_1, _members(good)[BATCH_1][:100]),
                                      f"is corrupt: its member {BATCH_1} is not a readable pickle (UnpicklingError)"),
    "pixels_do_not_fit_the_labels": _narrow_batch,
    "member_without_labels": lambda good: (
        _replace(good, BATCH_1, pickle.dumps({"data": np.zeros((1, 3072), np.uint8)})),
        f"is not a CIFAR archive: its member {BATCH_1} lacks the fields 'data' and 'labels'"),
}


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar10"
    write_cifar(folder)
    good = (folder / ARCHIVE).read_bytes()
    monkeypatch.setitem(dl.RESOURCES, "cifar10", dl.Resource({ARCHIVE: md5(good)}, ("unused",)))
    return folder, good


@pytest.mark.parametrize("kind", list(CIFAR_DAMAGE))
def test_damaged_cifar_archive_is_one_line_naming_it(cifar, kind):
    folder, good = cifar
    damaged, reason = CIFAR_DAMAGE[kind](good)
    path = folder / ARCHIVE
    path.write_bytes(damaged)
    assert _setup_error(CIFAR10DataModule, folder.parent) == (
        f"{path} {reason}; its MD5 is {md5(damaged)}, not the published {md5(good)}; {FIX}")
    assert _setup_error(CIFAR10DataModule, folder.parent, checksum=False) == f"{path} {reason}; {FIX}"


@pytest.mark.parametrize("kind", list(PICKLE_DAMAGE))
def test_damaged_pickles_are_named_when_read_and_never_unpickled_when_the_checksum_fails(cifar, kind):
    folder, good = cifar
    damaged, reason = PICKLE_DAMAGE[kind](good)
    path = folder / ARCHIVE
    path.write_bytes(damaged)
    assert _setup_error(CIFAR10DataModule, folder.parent, checksum=False) == f"{path} {reason}; {FIX}"
    assert _setup_error(CIFAR10DataModule, folder.parent).startswith(
        f"{path} is not the published file: its MD5 is {md5(damaged)}, not {md5(good)}, though it reads as an intact")


class _Touch:
    """A pickle that creates a file when loaded: what a tampered archive could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_archive_failing_its_checksum_is_not_unpickled(cifar, tmp_path):
    folder, good = cifar
    marker = tmp_path / "unpickled"
    (folder / ARCHIVE).write_bytes(_replace(good, BATCH_1, pickle.dumps(_Touch(str(marker)))))
    _setup_error(CIFAR10DataModule, folder.parent)
    assert not marker.exists()


# -- the checksum cache -----------------------------------------------------------------------------------

def test_a_verified_file_is_stamped_and_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "f.gz"
    data = bytes(range(256)) * 100
    path.write_bytes(data)
    assert dl.verify(path, md5(data)) is None
    stamp = json.loads((tmp_path / "f.gz.md5ok").read_text())
    st = path.stat()
    assert stamp == {"md5": md5(data), "size": len(data), "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    hashed = []
    real = dl.md5sum
    monkeypatch.setattr(dl, "md5sum", lambda p: hashed.append(p) or real(p))
    assert dl.verify(path, md5(data)) is None and hashed == []  # the stamp answers
    # same size, another byte, another mtime: hashed again and refused
    changed = data[:-1] + b"\x00"
    path.write_bytes(changed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert dl.verify(path, md5(data)) == md5(changed) and hashed == [path]
    # a stamp for another digest (a changed table of checksums) does not answer for this one
    assert dl.verify(path, md5(changed)) is None and len(hashed) == 2
    assert dl.verify(path, md5(data)) == md5(changed) and len(hashed) == 3


def test_a_read_only_folder_is_verified_on_every_run_without_a_stamp(tmp_path, monkeypatch):
    import ceexp.files

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ceexp.files, "atomic_write_text", refuse)
    (tmp_path / "f").write_bytes(b"abc")
    assert dl.verify(tmp_path / "f", md5(b"abc")) is None
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_setup_after_the_first_reads_the_stamps_not_the_files(mnist, monkeypatch):
    folder, good = mnist
    MNISTDataModule(root=str(folder.parent), val_fraction=0.5).setup()
    assert sorted(p.name for p in folder.glob("*.md5ok")) == sorted(n + ".md5ok" for n in MNIST_FILES)
    monkeypatch.setattr(dl, "md5sum", lambda p: pytest.fail(f"{p} hashed again"))
    dm = MNISTDataModule(root=str(folder.parent), val_fraction=0.5)
    dm.setup()
    assert len(dm.y_train) + len(dm.y_val) == 60


# -- before training, through the entry point ---------------------------------------------------------------

def test_train_stops_before_training_and_leaves_no_metrics(mnist, tmp_path):
    from ceexp.train import train

    folder, good = mnist
    (folder / IMAGES).write_bytes(good[IMAGES][:1000])
    run = tmp_path / "run"
    cfg = make_cfg(run, ["data=mnist", f"data.root={folder.parent}", "model=mlp", "logger=none"])
    with pytest.raises(ConfigError, match=f"^{folder / IMAGES} ends early: its gzip stream stops after 1,000 bytes"):
        train(cfg)
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()


CLI = [sys.executable, str(ROOT / "scripts" / "train.py"), "data=mnist", "model=mlp", "logger=none",
       "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
       "data.val_fraction=0.5"]


def test_entry_point_refuses_a_cut_off_download_in_one_line_with_exit_code_2(tmp_path):
    good = write_mnist(tmp_path / "data" / "mnist")
    path = tmp_path / "data" / "mnist" / IMAGES
    cut = path.read_bytes()[:4096]
    path.write_bytes(cut)
    proc = subprocess.run([*CLI, f"data.root={tmp_path / 'data'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    published = dl.RESOURCES["mnist"].files[IMAGES]
    assert lines == [f"error: {path} ends early: its gzip stream stops after 4,096 bytes, before its end-of-stream "
                     f"marker (an interrupted download?); its MD5 is {md5(cut)}, not the published {published}; {FIX}"]
    assert not list((tmp_path / "outputs").rglob("*")) and len(good["y_train"]) == 60


# -- a relative data.root with hydra.job.chdir=true -----------------------------------------------------------

@pytest.fixture
def hydra_state():
    """Put back whatever HydraConfig held before the test (make_cfg sets it process-wide)."""
    from hydra.core.hydra_config import HydraConfig

    before = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = before


def test_relative_root_is_the_start_folder_also_when_the_job_changes_directory(tmp_path, monkeypatch, hydra_state):
    (tmp_path / "start").mkdir()
    (tmp_path / "job").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    make_cfg(tmp_path / "job", ["hydra.job.chdir=true"])  # Hydra records the start folder as runtime.cwd
    monkeypatch.chdir(tmp_path / "job")
    assert data_root("rel/data") == tmp_path / "start" / "rel" / "data"
    assert data_root(str(tmp_path / "abs")) == tmp_path / "abs"
    make_cfg(tmp_path / "job", ["hydra.job.chdir=false"])  # the job runs in the start folder: the cwd counts
    assert data_root("rel") == tmp_path / "job" / "rel"


def test_entry_point_reads_a_relative_root_from_the_start_folder_with_job_chdir(tmp_path):
    written = write_mnist(tmp_path / "rel" / "mnist")
    proc = subprocess.run([*CLI, "data.root=rel", "hydra.job.chdir=true", "data.checksum=false",
                           "+trainer.limit_train_batches=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/metrics.json")]
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    assert not (run / "rel").exists()
    # the test split is the fixture's official test set, in file order
    with np.load(run / "predictions.npz") as f:
        assert f["test_labels"].tolist() == written["y_test"].tolist()
