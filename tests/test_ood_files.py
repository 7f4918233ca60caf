"""SVHN's ``test_32x32.mat`` and the CIFAR-10-C / CIFAR-100-C tars: fixture files written here in the distribution
formats, read back; damaged files named in one line; checksums; downloads from a loopback HTTP server.

The fixture writers follow the published layouts independently of ceexp's readers: SVHN, ``X`` uint8
``(32, 32, 3, N)`` and ``y`` ``(N, 1)`` with 10 for the digit 0 (``scipy.io.savemat``, as torchvision reads it);
CIFAR-C, an uncompressed tar of ``<folder>/<corruption>.npy`` uint8 ``(5 N, 32, 32, 3)``, severity s in rows
``(s - 1) N`` to ``s N - 1``, and ``<folder>/labels.npy`` (uint8, as ``make_cifar_c.py`` saves them). Expected
sizes and MD5s come from ``len``, ``struct`` and ``hashlib`` on the bytes written.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ceexp import download as dl
from ceexp.data.formats import CIFAR_C_CORRUPTIONS, DamagedFileError, read_cifar_c, read_svhn
from tests.test_damaged_files import NGINX_403
from tests.test_download import _Handler

SVHN = "test_32x32.mat"
C10 = "CIFAR-10-C.tar"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- fixture writers --------------------------------------------------------------------------------------

def write_svhn(path: Path, n: int = 12, seed: int = 0, compress: bool = True, label_dtype=np.uint8,
               **variables) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (32, 32, 3, n) uint8 and ``y`` (n, 1) labels 1..10 (every digit, 10 for 0), as a MATLAB 5 file."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(label_dtype).reshape(n, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y, **variables}, do_compression=compress)
    return x, y


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def cifar_c_members(folder: str = "CIFAR-10-C", n: int = 4, corruptions=("gaussian_noise", "contrast"),
                    seed: int = 0) -> dict[str, bytes]:
    """``{member name: bytes}`` of a CIFAR-C tar with ``n`` images per severity, and the arrays under ``arrays``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    members = {f"{folder}/labels.npy": _npy(np.tile(labels, 5))}
    for name in corruptions:
        members[f"{folder}/{name}.npy"] = _npy(rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8))
    return members


def tar_bytes(members: dict[str, bytes], folder: str | None = "CIFAR-10-C") -> bytes:
    """An uncompressed tar: the folder's entry, then the members in order (as ``tar cf``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if folder:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def load(payload: bytes) -> np.ndarray:
    return np.load(io.BytesIO(payload))


def _error(call) -> str:
    with pytest.raises(DamagedFileError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


# -- SVHN ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.float64])
def test_svhn_reads_images_channel_first_and_label_10_as_0(tmp_path, compress, label_dtype):
    x, y = write_svhn(tmp_path / SVHN, compress=compress, label_dtype=label_dtype)
    images, labels = read_svhn(tmp_path / SVHN)
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.dtype == np.int64 and labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    for i in range(12):  # image i is X[:, :, :, i], channel c its X[:, :, c, i]
        for c in range(3):
            np.testing.assert_array_equal(images[i, c], x[:, :, c, i])


def _first_element_end(good: bytes) -> int:
    """Where the first MATLAB data element ends: 128 header bytes, an 8-byte tag, then its byte count."""
    assert good[126:128] == b"IM"  # little-endian, as scipy writes on this machine
    return 128 + 8 + struct.unpack("<II", good[128:136])[1]


SVHN_DAMAGE = {
    "zero_length": lambda good, tmp: (b"", "is empty (0 bytes)"),
    "error_page_403": lambda good, tmp: (
        NGINX_403, "is a web page, not a MATLAB file: an error page a server sent in place of the file ('403 Forbidden')"),
    "cut_off_download": lambda good, tmp: (
        good[: len(good) // 2], f"ends early: its MATLAB data elements need {_first_element_end(good):,} bytes, but "
                                f"the file holds {len(good) // 2:,} (an interrupted download?)"),
    "cut_inside_a_tag": lambda good, tmp: (
        good[:132], "ends early: its MATLAB data elements need 136 bytes, but the file holds 132 (an interrupted "
                    "download?)"),
    "matlab_7_3": lambda good, tmp: (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 .".ljust(512)
        + b"\x89HDF\r\n\x1a\n" + bytes(100),
        "is a MATLAB 7.3 (HDF5) file, not the MATLAB 5 format SVHN is distributed in"),
    "zip_archive": lambda good, tmp: (
        b"PK\x03\x04" + bytes(200), "is not a MATLAB 5 file: it starts with the bytes 504b0304, not the text "
                                    "'MATLAB 5.0 MAT-file'"),
}


@pytest.mark.parametrize("kind", list(SVHN_DAMAGE))
def test_damaged_svhn_file_is_one_line_naming_it(tmp_path, kind):
    write_svhn(tmp_path / "good" / SVHN)
    damaged, reason = SVHN_DAMAGE[kind]((tmp_path / "good" / SVHN).read_bytes(), tmp_path)
    path = tmp_path / SVHN
    path.write_bytes(damaged)
    assert _error(lambda: read_svhn(path)) == f"{path} {reason}"


def test_svhn_with_corrupt_compressed_data_is_named(tmp_path):
    write_svhn(tmp_path / SVHN)
    good = bytearray((tmp_path / SVHN).read_bytes())
    good[len(good) // 2] ^= 0xFF  # inside X's deflate stream: its Adler-32 check (or the stream itself) fails
    (tmp_path / SVHN).write_bytes(bytes(good))
    message = _error(lambda: read_svhn(tmp_path / SVHN))
    assert message.startswith(f"{tmp_path / SVHN} is corrupt: its compressed MATLAB data do not decompress (Error -3")


def test_svhn_without_its_variables_or_with_other_shapes_is_named(tmp_path):
    path = tmp_path / SVHN
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    assert _error(lambda: read_svhn(path)) == f"{path} is not an SVHN file: it lacks the variable 'y'"
    scipy.io.savemat(path, {"images": np.zeros(3)})
    assert _error(lambda: read_svhn(path)) == f"{path} is not an SVHN file: it lacks the variables 'X' and 'y'"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 1, 2), np.uint8), "y": np.ones((2, 1))})
    assert _error(lambda: read_svhn(path)) == (
        f"{path} holds X of shape (32, 32, 1, 2) (uint8) and y of shape (2, 1) (float64), expected X (32, 32, 3, N) "
        "uint8 and y (N, 1) numbers")
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    assert "and y of shape (3, 1) (float64), expected" in _error(lambda: read_svhn(path))
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 3), np.uint8), "y": np.array([[1.0], [0.0], [2.5]])})
    assert _error(lambda: read_svhn(path)) == (
        f"{path} holds labels that are not whole numbers in 1..10 (10 is the digit 0): 2 of them, e.g. 0.0")


# -- CIFAR-10-C / CIFAR-100-C -------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["CIFAR-10-C", "CIFAR-100-C"])
def test_cifar_c_reads_each_severity_slice(tmp_path, folder):
    members = cifar_c_members(folder, n=4)
    path = tmp_path / f"{folder}.tar"
    path.write_bytes(tar_bytes(members, folder))
    labels_all = load(members[f"{folder}/labels.npy"])
    for name in ("gaussian_noise", "contrast"):
        array = load(members[f"{folder}/{name}.npy"])
        for s in range(1, 6):
            images, labels = read_cifar_c(path, name, s)
            assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
            np.testing.assert_array_equal(images, array[(s - 1) * 4: s * 4].transpose(0, 3, 1, 2))
            assert labels.dtype == np.int64 and labels.tolist() == labels_all[(s - 1) * 4: s * 4].tolist()


def test_cifar_c_reads_only_its_members(tmp_path):
    # another corruption's member is not a .npy at all: never opened, so never an error
    members = {**cifar_c_members(), "CIFAR-10-C/fog.npy": b"not read" * 100}
    path = tmp_path / C10
    path.write_bytes(tar_bytes(members))
    images, _ = read_cifar_c(path, "contrast", 5)
    assert images.shape == (4, 3, 32, 32)
    with pytest.raises(DamagedFileError, match="its member CIFAR-10-C/fog.npy is not a .npy array"):
        read_cifar_c(path, "fog", 1)


def test_cifar_c_reads_only_the_rows_of_one_severity(tmp_path, monkeypatch):
    path = tmp_path / C10
    members = cifar_c_members(n=50)
    path.write_bytes(tar_bytes(members))
    read = []
    real_open = tarfile.TarFile.extractfile

    def counting(self, member):
        f = real_open(self, member)
        inner = f.read
        f.read = lambda size=-1: read.append(len(data := inner(size))) or data
        return f

    monkeypatch.setattr(tarfile.TarFile, "extractfile", counting)
    read_cifar_c(path, "contrast", 3)
    # the .npy headers, 50 images of 3,072 bytes and 50 labels: a fifth of the arrays' 768,250 bytes
    assert 50 * 3072 + 50 <= sum(read) < 50 * 3072 + 50 + 2 * 1024


def _cut_tar(good: bytes) -> tuple[bytes, str]:
    half = good[: len(good) // 2]
    return half, f"ends early: its tar data stop after {len(half):,} bytes, before their end (an interrupted download?)"


def _without_end_blocks(good: bytes) -> tuple[bytes, str]:
    members = tarfile.open(fileobj=io.BytesIO(good)).getmembers()
    last = members[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # the last member's data, padded to a 512-byte block
    return good[:end], (f"ends early: its tar data stop after {end:,} bytes, before their end (an interrupted "
                        "download?)")


def _replace(name: str, payload: bytes | None):
    def damage(good: bytes) -> bytes:
        members = cifar_c_members()
        if payload is None:
            del members[name]
        else:
            members[name] = payload
        return tar_bytes(members)

    return damage


GN = "CIFAR-10-C/gaussian_noise.npy"
NUMPY_SAYS = "(numpy's reason)"
CIFAR_C_DAMAGE = {
    "zero_length": lambda good: (b"", "is empty (0 bytes)"),
    "error_page_403": lambda good: (
        NGINX_403, "is a web page, not a tar archive: an error page a server sent in place of the file "
                   "('403 Forbidden')"),
    "cut_off_download": _cut_tar,
    "cut_before_the_end_of_archive_blocks": _without_end_blocks,
    "recompressed": lambda good: (gzip.compress(good, mtime=0), "is gzip data, not the uncompressed tar archive "
                                                                "CIFAR-C is distributed as (compressed after the "
                                                                "download?)"),
    "not_a_tar": lambda good: (b"\x00\x01\x02\x03" + bytes(range(256)) * 8,
                               "is not a tar archive: it starts with the bytes 00010203"),
    "missing_labels": lambda good: (_replace("CIFAR-10-C/labels.npy", None)(good),
                                    "is not a complete CIFAR-C archive: it lacks CIFAR-10-C/labels.npy"),
    "missing_corruption": lambda good: (_replace(GN, None)(good),
                                        f"is not a complete CIFAR-C archive: it lacks {GN}"),
    "not_npy": lambda good: (_replace(GN, b"\x93NUMPX" + bytes(200))(good),
                             f"is corrupt: its member {GN} is not a .npy array " + NUMPY_SAYS),
    "grey_images": lambda good: (_replace(GN, _npy(np.zeros((20, 32, 32), np.uint8)))(good),
                                 f"is not a CIFAR-C archive: its member {GN} holds uint8 data of shape (20, 32, 32), "
                                 "expected uint8 (5 N, 32, 32, 3): 5 severities of N images"),
    "float_images": lambda good: (_replace(GN, _npy(np.zeros((20, 32, 32, 3), np.float32)))(good),
                                  f"is not a CIFAR-C archive: its member {GN} holds float32 data of shape "
                                  "(20, 32, 32, 3), expected uint8 (5 N, 32, 32, 3): 5 severities of N images"),
    "rows_not_five_severities": lambda good: (
        _replace(GN, _npy(np.zeros((21, 32, 32, 3), np.uint8)))(good),
        f"is not a CIFAR-C archive: its member {GN} holds uint8 data of shape (21, 32, 32, 3), expected uint8 "
        "(5 N, 32, 32, 3): 5 severities of N images"),
    "npy_cut_inside_the_tar": lambda good: (
        _replace(GN, _npy(np.zeros((20, 32, 32, 3), np.uint8))[:-3072])(good),
        f"is corrupt: its member {GN} holds {20 * 3072 - 3072:,} bytes of data, its .npy header says "
        "(20, 32, 32, 3) uint8"),
    "labels_for_other_images": lambda good: (
        _replace("CIFAR-10-C/labels.npy", _npy(np.zeros(25, np.uint8)))(good),
        f"is not a CIFAR-C archive: {GN} holds 20 images, but CIFAR-10-C/labels.npy 25 labels"),
}


@pytest.mark.parametrize("kind", list(CIFAR_C_DAMAGE))
def test_damaged_cifar_c_archive_is_one_line_naming_it(tmp_path, kind):
    good = tar_bytes(cifar_c_members())
    damaged, reason = CIFAR_C_DAMAGE[kind](good)
    path = tmp_path / C10
    path.write_bytes(damaged)
    message = _error(lambda: read_cifar_c(path, "gaussian_noise", 2))
    if reason.endswith(NUMPY_SAYS):  # numpy's own words vary between versions
        assert message.startswith(f"{path} {reason.removesuffix(NUMPY_SAYS)}(") and message.endswith(")")
    else:
        assert message == f"{path} {reason}"


def test_cifar_c_arguments_are_checked_first(tmp_path):
    path = tmp_path / C10
    path.write_bytes(tar_bytes(cifar_c_members()))
    with pytest.raises(ValueError) as err:
        read_cifar_c(path, "rotation", 1)
    assert str(err.value) == f"Expected argument `corruption` to be one of {', '.join(CIFAR_C_CORRUPTIONS)}, but got " \
                             "'rotation'"
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"^Expected argument `severity` to be an integer from 1 to 5, but got "):
            read_cifar_c(path, "contrast", bad)
    assert len(CIFAR_C_CORRUPTIONS) == 19  # 15 benchmark corruptions + 4 held out (Hendrycks & Dietterich 2019)


# -- checksums and downloads ----------------------------------------------------------------------------------

def test_published_checksums_and_names():
    # torchvision's SVHN table; the Zenodo records of CIFAR-10-C (2535967) and CIFAR-100-C (3555552)
    assert dl.RESOURCES["svhn"].files == {SVHN: "eb5a983be6a315427106f1b164d9cef3"}
    assert dl.RESOURCES["svhn"].mirrors[0] == "http://ufldl.stanford.edu/housenumbers/"
    assert dl.RESOURCES["cifar10_c"].files == {C10: "56bf5dcef84df0e2308c6dcbcbbd8499"}
    assert dl.RESOURCES["cifar100_c"].files == {"CIFAR-100-C.tar": "11f0ed0f1191edbf9fa23466ae6021d3"}
    assert "2535967" in dl.RESOURCES["cifar10_c"].mirrors[0] and "3555552" in dl.RESOURCES["cifar100_c"].mirrors[0]


def test_a_fixture_file_fails_the_published_checksum_and_passes_its_own(tmp_path):
    write_svhn(tmp_path / SVHN)
    data = (tmp_path / SVHN).read_bytes()
    assert dl.verify(tmp_path / SVHN, dl.RESOURCES["svhn"].files[SVHN]) == md5(data)
    assert dl.verify(tmp_path / SVHN, md5(data)) is None
    assert (tmp_path / (SVHN + dl.STAMP_SUFFIX)).exists()


@pytest.fixture
def server(tmp_path):
    """A loopback server (tests/test_download.py's handler: /good, /corrupt, /cut) over fixture SVHN and CIFAR-10-C
    files and a cut-off SVHN file; yields ``(base URL, {name: bytes})``."""
    write_svhn(tmp_path / "src" / SVHN)
    svhn = (tmp_path / "src" / SVHN).read_bytes()
    files = {SVHN: svhn, C10: tar_bytes(cifar_c_members()), "cut_" + SVHN: svhn[: len(svhn) // 2]}
    _Handler.files, _Handler.requests = files, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_fetches_verifies_and_the_files_read(server, tmp_path, monkeypatch):
    url, files = server
    monkeypatch.setitem(dl.RESOURCES, "svhn", dl.Resource({SVHN: md5(files[SVHN])}, (f"{url}/good",)))
    monkeypatch.setitem(dl.RESOURCES, "cifar10_c", dl.Resource({C10: md5(files[C10])}, (f"{url}/good",)))
    assert dl.download("svhn", tmp_path / "svhn") == [tmp_path / "svhn" / SVHN]
    assert dl.download("cifar10_c", tmp_path / "cifar10_c") == [tmp_path / "cifar10_c" / C10]
    assert dl.download("svhn", tmp_path / "svhn") == []  # present: kept, not fetched again
    assert _Handler.requests == [f"/good/{SVHN}", f"/good/{C10}"]
    assert sorted(p.name for p in (tmp_path / "svhn").iterdir()) == [SVHN, SVHN + dl.STAMP_SUFFIX]
    assert read_svhn(tmp_path / "svhn" / SVHN)[0].shape == (12, 3, 32, 32)
    assert read_cifar_c(tmp_path / "cifar10_c" / C10, "contrast", 1)[0].shape == (4, 3, 32, 32)


def test_the_published_checksum_refuses_a_foreign_file(server, tmp_path):
    url, files = server
    published = dl.RESOURCES["cifar10_c"].files[C10]
    with pytest.raises(dl.DownloadError) as err:
        dl.download("cifar10_c", tmp_path / "dest", mirrors=[f"{url}/good"], timeout=10)
    assert str(err.value) == (f"could not download {C10} with MD5 {published} into {tmp_path / 'dest'}: "
                              f"{url}/good/{C10}: got MD5 {md5(files[C10])}; nothing was kept")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_corrupt_or_cut_transfer_is_named_and_leaves_nothing(server, tmp_path):
    url, files = server
    body = files[SVHN]
    corrupt = md5(body[:10] + bytes([body[10] ^ 0xFF]) + body[11:])
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch(SVHN, md5(body), [f"{url}/corrupt", f"{url}/cut"], tmp_path / "dest", timeout=10)
    message = str(err.value)
    assert "\n" not in message and message == (
        f"could not download {SVHN} with MD5 {md5(body)} into {tmp_path / 'dest'}: {url}/corrupt/{SVHN}: got MD5 "
        f"{corrupt}; {url}/cut/{SVHN}: transfer interrupted after {len(body) // 2} of {len(body)} bytes; nothing was "
        "kept")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_damaged_file_that_matches_a_stand_in_checksum_is_named_when_read(server, tmp_path):
    url, files = server
    cut = files["cut_" + SVHN]
    path = dl.fetch("cut_" + SVHN, md5(cut), [f"{url}/good"], tmp_path, timeout=10)
    assert _error(lambda: read_svhn(path)) == (
        f"{path} ends early: its MATLAB data elements need {_first_element_end(files[SVHN]):,} bytes, but the file "
        f"holds {len(cut):,} (an interrupted download?)")
