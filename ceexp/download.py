"""The distribution files of the image data sets: names, MD5 checksums, mirrors, and a verified download.

Each data set is a folder ``<data.root>/<name>/`` holding its files exactly as distributed:

    mnist/, fashion_mnist/   train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                             t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     (gzipped IDX)
    cifar10/                 cifar-10-python.tar.gz                                    (python pickles)
    cifar100/                cifar-100-python.tar.gz

Checksums are the published ones (the same as torchvision's). :func:`download` tries each mirror in turn,
streams into a temporary file beside the target while computing the MD5, and renames it into place only
when the checksum matches: an interrupted, corrupt or failed transfer leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RESOURCES", "DownloadError", "Resource", "download", "fetch", "md5sum", "missing_files"]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No mirror delivered a file with the expected MD5; the one-line message names the file, the checksum
    expected, and what each mirror gave."""


@dataclass(frozen=True)
class Resource:
    """The files of one data set: ``{file name: MD5 hex digest}`` and base URLs to try in order."""

    files: Mapping[str, str]
    mirrors: Sequence[str]


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

RESOURCES: dict[str, Resource] = {
    # LeCun, Cortes & Burges, "The MNIST database of handwritten digits"
    "mnist": Resource(
        dict(zip(_MNIST_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    # Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST"
    "fashion_mnist": Resource(
        dict(zip(_MNIST_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    ),
    # Krizhevsky 2009, "Learning multiple layers of features from tiny images"
    "cifar10": Resource({"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
                        ("https://www.cs.toronto.edu/~kriz/",)),
    "cifar100": Resource({"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
                         ("https://www.cs.toronto.edu/~kriz/",)),
}


def md5sum(path: str | Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def missing_files(name: str, folder: str | Path) -> list[str]:
    """The file names of data set ``name`` that are not (regular files) in ``folder``, in table order."""
    folder = Path(folder)
    return [f for f in RESOURCES[name].files if not (folder / f).is_file()]


def fetch(filename: str, md5: str, mirrors: Sequence[str], folder: str | Path, timeout: float = 60.0) -> Path:
    """Download ``filename`` from the first mirror that serves it with MD5 ``md5`` into ``folder``.

    Each try streams ``<mirror>/<filename>`` into ``folder/.<filename>.<random>.part`` and renames it to
    ``folder/<filename>`` (``os.replace``, atomic on one file system) only when the digest matches. A
    part file is always removed, so concurrent downloaders (one per DDP process) never see a partial file.

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

    Files already present are kept as they are (not re-verified). ``mirrors`` replaces the data set's own
    list of base URLs (tests point it at a local server).

    Raises:
        DownloadError: see :func:`fetch`; files fetched before the failing one are kept (each is verified).
    """
    resource = RESOURCES[name]
    mirrors = list(mirrors) if mirrors else list(resource.mirrors)
    return [fetch(f, resource.files[f], mirrors, folder, timeout) for f in missing_files(name, folder)]
