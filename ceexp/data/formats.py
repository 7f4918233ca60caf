"""The distribution formats of the image sets: gzipped IDX (MNIST, Fashion-MNIST) and CIFAR's python pickles
in a ``.tar.gz``, read with the damage a download can leave named in one line.

The file names and checksums are in :mod:`ceexp.download`; this module only knows formats. Every damage a
reader detects raises :class:`DamagedFileError`, whose message is ``"<path> <what is wrong>"``, e.g.

    /data/mnist/train-images-idx3-ubyte.gz ends early: its gzip stream stops after 4,915,200 bytes, before
    its end-of-stream marker (an interrupted download?)

The damage kinds: an empty file; an HTML or XML page (a mirror's error page saved under the file's name);
bytes that are not gzip at all (or IDX data already decompressed); a gzip stream cut off before its end
marker; gzip data failing their CRC or not decompressing; bytes after the gzip stream; an IDX file with a
wrong magic number, a header shorter than its dimension count says, or a body of the wrong size; a ``.tar.gz``
holding no tar archive, missing members, members that do not unpickle or lack CIFAR's fields.
"""
from __future__ import annotations

import gzip
import html
import math
import pickle
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["DamagedFileError", "check_cifar", "read_cifar", "read_idx"]


class DamagedFileError(ValueError):
    """A data file that cannot be what its name says. ``str(e)`` is one line, ``"<path> <reason>"``.

    Attributes:
        path: the file (a :class:`~pathlib.Path`).
        reason: what is wrong with it, a predicate (``"is empty (0 bytes)"``, ``"ends early: ..."``).
    """

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} {reason}")


# -- gzip ------------------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_HEAD = 4096  # bytes read to recognise what a file is when it is not gzip


def _page_text(head: bytes) -> str:
    """The title of an HTML page (or the text of an XML error), whitespace collapsed, at most 80 characters."""
    text = head.decode("utf-8", errors="replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, flags=re.IGNORECASE | re.DOTALL)
    if title is None:
        text = re.sub(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", " ", text, flags=re.DOTALL | re.IGNORECASE)
    words = " ".join(html.unescape(re.sub(r"<[^>]*>", " ", title.group(1) if title else text)).split())
    return words[:77] + "..." if len(words) > 80 else words


def _not_gzip(path: Path) -> str | None:
    """Why ``path`` cannot be gzip data (empty, a web page, other bytes), or ``None`` when it starts like gzip."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(_GZIP_MAGIC):
        return None
    if head.lstrip()[:1] == b"<":
        said = _page_text(head)
        return ("is a web page, not gzip data: an error page a server sent in place of the file"
                + (f" ({said!r})" if said else ""))
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES:
        return "holds uncompressed IDX data, not gzip data (decompressed after the download?)"
    return f"is not gzip data: it starts with the bytes {head[:4].hex()}, not 1f8b"


def _gzip_reason(path: Path, error: BaseException) -> str:
    """What a gzip (or zlib) error raised while decompressing ``path`` says about the file."""
    if isinstance(error, EOFError):
        size = path.stat().st_size
        return (f"ends early: its gzip stream stops after {size:,} bytes, before its end-of-stream marker "
                "(an interrupted download?)")
    message = str(error)
    if "CRC check failed" in message:
        return "is corrupt: its gzip data fail their CRC check"
    if "Incorrect length" in message:
        return "is corrupt: its gzip data fail their length check"
    if "Not a gzipped file" in message:  # a second member that is not gzip: bytes appended to the stream
        return "is corrupt: bytes that are not gzip follow its gzip stream"
    said = message.splitlines()[0] if message else type(error).__name__
    return f"is corrupt: its gzip data do not decompress ({said})"


_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _gunzip(path: Path) -> bytes:
    """The decompressed content of a gzip file, or :class:`DamagedFileError`."""
    reason = _not_gzip(path)
    if reason:
        raise DamagedFileError(path, reason)
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _GZIP_ERRORS as e:
        raise DamagedFileError(path, _gzip_reason(path, e)) from None


# -- IDX -------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST distribution format, LeCun et al.).

    Layout: two zero bytes, a type byte (0x08 unsigned byte, ...), a byte with the number of dimensions d,
    d big-endian uint32 sizes, then the data in C order.

    Returns:
        An array of those sizes (``uint8`` for the MNIST files: images ``(N, 28, 28)``, labels ``(N,)``).

    Raises:
        DamagedFileError: naming the file and its damage: empty, not gzip (a web page, ...), a gzip stream cut
            off or corrupt, a wrong magic number, a header shorter than its dimension count says, or a body
            whose size does not match the header.
        OSError: the file cannot be opened (missing, no permission).
    """
    path = Path(path)
    data = _gunzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DamagedFileError(path, f"is not an IDX file: its magic number is {data[:4].hex() or 'missing'}")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise DamagedFileError(path, f"is truncated: its IDX header announces {ndim} dimensions ({4 + 4 * ndim} "
                                     f"header bytes), but the file holds {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    expected = math.prod(shape) * dtype.itemsize
    if len(body) != expected:
        raise DamagedFileError(path, f"is truncated or corrupt: the header says {shape}, but it holds {len(body)} "
                                     f"bytes of data, not {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


# -- CIFAR python version (.tar.gz of pickles) -----------------------------------------------------------

def _tar_members(path: Path, members: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each member of ``members`` in the ``.tar.gz``, in archive order, in one pass; then
    the gzip stream is read to its end, so its CRC is checked (tarfile stops at the end-of-archive blocks)."""
    reason = _not_gzip(path)
    if reason:
        raise DamagedFileError(path, reason)
    wanted, seen = set(members), set()
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:  # sequential: seeking back in a .tar.gz would decompress it again
                if info.name in wanted and info.isfile():
                    seen.add(info.name)
                    yield info.name, tar.extractfile(info).read()
            while tar.fileobj.read(1 << 20):
                pass
    except _GZIP_ERRORS as e:
        raise DamagedFileError(path, _gzip_reason(path, e)) from None
    except tarfile.ReadError as e:
        if str(e).startswith("zlib error"):
            raise DamagedFileError(path, _gzip_reason(path, zlib.error(str(e)))) from None
        if "unexpected end of data" in str(e):
            raise DamagedFileError(path, _gzip_reason(path, EOFError())) from None
        raise DamagedFileError(path, "is not a tar archive inside its gzip layer") from None
    absent = [m for m in members if m not in seen]
    if absent:
        raise DamagedFileError(path, f"is not a complete CIFAR archive: it lacks {', '.join(absent)}")


def check_cifar(path: str | Path, members: Sequence[str]) -> None:
    """Check a CIFAR ``*-python.tar.gz`` without unpickling anything: its gzip layer whole (CRC included), a tar
    archive inside, and every one of ``members`` present and readable to its end.

    Raises:
        DamagedFileError: as :func:`read_cifar`, for the damage found before unpickling.
        OSError: the file cannot be opened.
    """
    for _ in _tar_members(Path(path), members):
        pass


def read_cifar(path: str | Path, members: Sequence[str], label_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read pickled batches from a CIFAR ``*-python.tar.gz`` (Krizhevsky 2009) in one pass over the archive.

    Each member is a pickled dict with ``data``, a ``(N, 3072)`` uint8 array (1,024 red, then green, then blue
    values of each 32x32 image, row-major), and N labels under ``label_key`` (``labels`` in CIFAR-10,
    ``fine_labels`` in CIFAR-100). The archive is read in place (not extracted). The members are pickles, which
    can run code: read only archives whose MD5 is the published one (the datamodules check it first, see
    :func:`ceexp.download.verify`) or that you made yourself.

    Returns:
        ``{member: (images (N, 3, 32, 32) uint8, labels (N,) int64)}`` for each of ``members``.

    Raises:
        DamagedFileError: naming the archive: empty, not gzip (a web page, ...), its gzip stream cut off or
            corrupt, no tar archive inside, a member missing, not a readable pickle, lacking the fields
            ``data`` and ``label_key``, or with data and labels that do not fit together.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, payload in _tar_members(path, members):
        try:
            entry = pickle.loads(payload, encoding="latin1")  # noqa: S301 (see the docstring)
        except Exception as e:  # noqa: BLE001 (a damaged pickle raises any of a dozen types)
            raise DamagedFileError(path, f"is corrupt: its member {name} is not a readable pickle "
                                         f"({type(e).__name__})") from None
        if isinstance(entry, dict):
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise DamagedFileError(path, f"is not a CIFAR archive: its member {name} lacks the fields 'data' and "
                                         f"{label_key!r}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if labels.ndim != 1 or data.size % 3072 or data.size // 3072 != len(labels):
            raise DamagedFileError(path, f"is corrupt: its member {name} holds {data.size} pixel values for "
                                         f"{labels.size} labels, expected 3072 per label")
        out[name] = (data.reshape(-1, 3, 32, 32), labels)
    return out
