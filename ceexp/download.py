"""The distribution files of the image data sets: names, MD5 checksums, mirrors, and a verified download.

Each data set is a folder ``<data.root>/<name>/`` holding its files exactly as distributed:

    mnist/, fashion_mnist/   train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                             t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     (gzipped IDX)
    cifar10/                 cifar-10-python.tar.gz                                    (python pickles)
    cifar100/                cifar-100-python.tar.gz
    svhn/                    test_32x32.mat                                            (MATLAB 5, out-of-distribution)
    cifar10_c/, cifar100_c/  CIFAR-10-C.tar, CIFAR-100-C.tar                           (tar of .npy, 2.9 GB each)

Checksums are the published ones (the same as torchvision's). :func:`download` tries each mirror in turn,
streams into a temporary file beside the target while computing the MD5, and renames it into place only
when the checksum matches: an interrupted, corrupt or failed transfer leaves nothing behind.

Files already on disk (copied there by hand, or left by an older download) are checked with :func:`verify`
before they are read. Hashing costs about 0.6 s for CIFAR's 170 MB (3 s/GB on one core, more on a slow
disk), so the result is cached: a verified file gets a stamp ``<file>.md5ok`` beside it holding its MD5, size,
modification time (ns) and inode, and a later check whose ``stat`` still matches the stamp skips the hashing
(one ``stat`` and one small read). A file rewritten in place changes its size or mtime and is hashed again; only
a rewrite that keeps size, mtime and inode alike would slip through, which needs deliberate effort. A folder that
cannot be written (a shared read-only copy) gets no stamp and is hashed on every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MNIST_FILES", "RESOURCES", "STAMP_SUFFIX", "DownloadError", "Resource", "download", "fetch", "md5sum",
           "missing_files", "verify"]

_CHUNK = 1 << 20
STAMP_SUFFIX = ".md5ok"  # <file>.md5ok: the cached result of a successful MD5 check (see verify)


class DownloadError(RuntimeError):
    """No mirror delivered a file with the expected MD5; the one-line message names the file, the checksum
    expected, and what each mirror gave."""


@dataclass(frozen=True)
class Resource:
    """The files of one data set: ``{file name: MD5 hex digest}`` and base URLs to try in order."""

    files: Mapping[str, str]
    mirrors: Sequence[str]


# the four files of MNIST and Fashion-MNIST, in the order the readers take them: training images, training
# labels, test images, test labels (the one definition; ceexp.data reads them by these names)
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

RESOURCES: dict[str, Resource] = {
    # LeCun, Cortes & Burges, "The MNIST database of handwritten digits"
    "mnist": Resource(
        dict(zip(MNIST_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    # Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST"
    "fashion_mnist": Resource(
        dict(zip(MNIST_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    ),
    # Krizhevsky 2009, "Learning multiple layers of features from tiny images"
    "cifar10": Resource({"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
                        ("https://www.cs.toronto.edu/~kriz/",)),
    "cifar100": Resource({"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
                         ("https://www.cs.toronto.edu/~kriz/",)),
    # Netzer et al. 2011, "Reading digits in natural images with unsupervised feature learning": the test split of
    # the cropped digits (26,032 images), an out-of-distribution set for digit classifiers; torchvision's MD5
    "svhn": Resource({"test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
                     ("http://ufldl.stanford.edu/housenumbers/",)),
    # Hendrycks & Dietterich 2019, "Benchmarking neural network robustness to common corruptions and perturbations":
    # Zenodo records 2535967 and 3555552 (the MD5s are Zenodo's; /record/ is the pre-2023 form of the address)
    "cifar10_c": Resource({"CIFAR-10-C.tar": "56bf5dcef84df0e2308c6dcbcbbd8499"},
                          ("https://zenodo.org/records/2535967/files/", "https://zenodo.org/record/2535967/files/")),
    "cifar100_c": Resource({"CIFAR-100-C.tar": "11f0ed0f1191edbf9fa23466ae6021d3"},
                           ("https://zenodo.org/records/3555552/files/", "https://zenodo.org/record/3555552/files/")),
}


def md5sum(path: str | Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _write_stamp(path: Path, md5: str) -> None:
    """Record that ``path`` has MD5 ``md5`` as it is now; silently nothing where the folder is read-only."""
    from ceexp.files import atomic_write_text

    try:
        atomic_write_text(_stamp(path), json.dumps({"md5": md5, **_fingerprint(path)}) + "\n")
    except OSError:
        pass


def verify(path: str | Path, md5: str) -> str | None:
    """Check that the file ``path`` has the MD5 hex digest ``md5``.

    A stamp ``<path>.md5ok`` written by an earlier successful check (or by :func:`fetch`) that names ``md5`` and
    still matches the file's size, modification time (ns) and inode answers without reading the file; otherwise
    the file is hashed (1 MiB chunks) and, when it matches, stamped. A stale or unreadable stamp is ignored.

    Returns:
        ``None`` when the file has that digest; otherwise the digest it has (32 hex characters).

    Raises:
        OSError: the file cannot be read (missing, a folder, no permission).
    """
    path = Path(path)
    try:
        stamp = json.loads(_stamp(path).read_text())
        if stamp == {"md5": md5, **_fingerprint(path)}:
            return None
    except (OSError, ValueError):
        pass
    found = md5sum(path)
    if found != md5:
        return found
    _write_stamp(path, md5)
    return None


def missing_files(name: str, folder: str | Path) -> list[str]:
    """The file names of data set ``name`` that are not (regular files) in ``folder``, in table order."""
    folder = Path(folder)
    return [f for f in RESOURCES[name].files if not (folder / f).is_file()]


def fetch(filename: str, md5: str, mirrors: Sequence[str], folder: str | Path, timeout: float = 60.0) -> Path:
    """Download ``filename`` from the first mirror that serves it with MD5 ``md5`` into ``folder``.

    Each try streams ``<mirror>/<filename>`` into ``folder/.<filename>.<random>.part`` and renames it to
    ``folder/<filename>`` (``os.replace``, atomic on one file system) only when the digest matches, then stamps
    it verified (see :func:`verify`). A part file is always removed, so concurrent downloaders (one per DDP
    process) never see a partial file.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: every mirror failed (HTTP or network error, a transfer shorter than its
            ``Content-Length``, or a wrong checksum); nothing is left in ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        part = folder / f".{filename}.{uuid.uuid4().hex}.part"
        try:
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                expected_size = response.headers.get("Content-Length")
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if expected_size is not None and size != int(expected_size):
                failures.append(f"{url}: transfer interrupted after {size} of {expected_size} bytes")
                continue
            if digest.hexdigest() != md5:
                failures.append(f"{url}: got MD5 {digest.hexdigest()}")
                continue
            os.replace(part, target)
            _write_stamp(target, md5)  # hashed while it streamed in: no second pass on the first run
            return target
        except Exception as e:  # noqa: BLE001 (any transport failure: try the next mirror)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            failures.append(f"{url}: {type(e).__name__}: {reason}")
        finally:
            part.unlink(missing_ok=True)
    raise DownloadError(
        f"could not download {filename} with MD5 {md5} into {folder}: {'; '.join(failures) or 'no mirrors'}; "
        "nothing was kept"
    )


def download(name: str, folder: str | Path, mirrors: Sequence[str] | None = None, timeout: float = 60.0) -> list[Path]:
    """Fetch the missing files of data set ``name`` (a key of :data:`RESOURCES`) into ``folder``.

    Files already present are kept as they are: the datamodules check them with :func:`verify` before reading,
    and a damaged one is reported, never replaced (delete it to fetch it again). ``mirrors`` replaces the data
    set's own list of base URLs (tests point it at a local server).

    Raises:
        DownloadError: see :func:`fetch`; files fetched before the failing one are kept (each is verified).
    """
    resource = RESOURCES[name]
    mirrors = list(mirrors) if mirrors else list(resource.mirrors)
    return [fetch(f, resource.files[f], mirrors, folder, timeout) for f in missing_files(name, folder)]
