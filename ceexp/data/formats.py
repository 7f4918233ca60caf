"""The distribution formats of the image sets: gzipped IDX (MNIST, Fashion-MNIST), CIFAR's python pickles in a
``.tar.gz``, SVHN's MATLAB 5 files and the CIFAR-10-C / CIFAR-100-C tar of ``.npy`` arrays, read with the damage a
download can leave named in one line.

The file names and checksums are in :mod:`ceexp.download`; this module only knows formats. Every damage a
reader detects raises :class:`DamagedFileError`, whose message is ``"<path> <what is wrong>"``, e.g.

    /data/mnist/train-images-idx3-ubyte.gz ends early: its gzip stream stops after 4,915,200 bytes, before
    its end-of-stream marker (an interrupted download?)

The damage kinds: an empty file; an HTML or XML page (a mirror's error page saved under the file's name);
bytes that are not gzip at all (or IDX data already decompressed); a gzip stream cut off before its end
marker; gzip data failing their CRC or not decompressing; bytes after the gzip stream; an IDX file with a
wrong magic number, a header shorter than its dimension count says, or a body of the wrong size; a ``.tar.gz``
holding no tar archive, missing members, members that do not unpickle or lack CIFAR's fields; a ``.mat`` file
that is not MATLAB 5 (or is MATLAB 7.3), cut off or corrupt, or lacks SVHN's variables; a CIFAR-C tar cut off,
missing members, or holding ``.npy`` members of the wrong shape or type.
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

__all__ = ["CIFAR_C_CORRUPTIONS", "DamagedFileError", "check_cifar", "read_cifar", "read_cifar_c", "read_idx",
           "read_svhn"]


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


# -- files that are not gzip: the damage recognisable from their first bytes ------------------------------

def _head_reason(path: Path, what: str) -> tuple[bytes, str | None]:
    """The first bytes of ``path`` and why it cannot be ``what`` (``"a MATLAB file"``) judging by them alone:
    empty, or a web page; ``None`` otherwise."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if not head:
        return head, "is empty (0 bytes)"
    if head.lstrip()[:1] == b"<":
        said = _page_text(head)
        return head, (f"is a web page, not {what}: an error page a server sent in place of the file"
                      + (f" ({said!r})" if said else ""))
    return head, None


# -- SVHN (MATLAB 5 .mat) --------------------------------------------------------------------------------

_MAT_HEADER = 128  # 116 bytes of text, 8 of subsystem offset, 2 of version, 2 of endian indicator


def _mat_layout(path: Path) -> None:
    """Check a MATLAB 5 file's header and walk its top-level data elements' 8-byte tags (type, byte count) to the
    end of the file, reading nothing else, so that a cut-off file is named before scipy parses it."""
    head, reason = _head_reason(path, "a MATLAB file")
    if reason:
        raise DamagedFileError(path, reason)
    order = {b"IM": "<", b"MI": ">"}.get(head[126:128]) if len(head) >= _MAT_HEADER else None
    version = struct.unpack(order + "H", head[124:126])[0] if order else None
    if version == 0x0200 or head.startswith(b"MATLAB 7.3") or head[512:516] == b"\x89HDF" or head[:4] == b"\x89HDF":
        raise DamagedFileError(path, "is a MATLAB 7.3 (HDF5) file, not the MATLAB 5 format SVHN is distributed in")
    if version != 0x0100:
        raise DamagedFileError(path, f"is not a MATLAB 5 file: it starts with the bytes {head[:4].hex()}, not the "
                                     "text 'MATLAB 5.0 MAT-file'")
    size = path.stat().st_size
    pos = _MAT_HEADER
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            tag = f.read(8)
            if len(tag) < 8:
                pos += 8
                break
            kind, count = struct.unpack(order + "II", tag)
            pos += 8 if kind >> 16 else 8 + count  # a small data element holds its data in its tag
    if pos > size:
        raise DamagedFileError(path, f"ends early: its MATLAB data elements need {pos:,} bytes, but the file holds "
                                     f"{size:,} (an interrupted download?)")


def read_svhn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file (``test_32x32.mat``, ``train_32x32.mat``; Netzer et al. 2011, "Reading
    digits in natural images with unsupervised feature learning") with ``scipy.io.loadmat``.

    Layout: a MATLAB 5 file holding ``X``, uint8 ``(32, 32, 3, N)`` (row, column, RGB channel, image), and ``y``,
    ``(N, 1)`` labels 1..10, where 10 stands for the digit 0.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (C order) and int64 ``(N,)`` digits 0..9 (label 10 -> 0).

    Raises:
        DamagedFileError: naming the file: empty, a web page, not a MATLAB 5 file (or a MATLAB 7.3 one), cut off
            (its data elements announce more bytes than it holds), corrupt (compressed data failing their check,
            or data scipy cannot parse), without the variables ``X`` and ``y``, with arrays of other shapes or
            types, or with labels outside 1..10.
        OSError: the file cannot be opened.
    """
    import scipy.io

    path = Path(path)
    _mat_layout(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except zlib.error as e:
        raise DamagedFileError(path, f"is corrupt: its compressed MATLAB data do not decompress ({e})") from None
    except Exception as e:  # noqa: BLE001 (scipy raises a handful of types for malformed data)
        said = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedFileError(path, f"is corrupt: scipy.io.loadmat cannot parse it ({said})") from None
    absent = [k for k in ("X", "y") if k not in mat]
    if absent:
        raise DamagedFileError(path, f"is not an SVHN file: it lacks the variable{'s' * (len(absent) > 1)} "
                                     f"{' and '.join(repr(k) for k in absent)}")
    x, y = mat["X"], mat["y"]
    n = x.shape[3] if x.ndim == 4 else -1
    if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.shape not in ((n, 1), (n,))
            or y.dtype.kind not in "uif"):
        raise DamagedFileError(path, f"holds X of shape {x.shape} ({x.dtype}) and y of shape {y.shape} ({y.dtype}), "
                                     "expected X (32, 32, 3, N) uint8 and y (N, 1) numbers")
    y = y.reshape(-1)
    bad = y[(y < 1) | (y > 10) | (y != np.round(y))]  # labels may be stored as doubles: whole numbers 1..10
    if bad.size:
        raise DamagedFileError(path, f"holds labels that are not whole numbers in 1..10 (10 is the digit 0): "
                                     f"{bad.size} of them, e.g. {bad[0].item()!r}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y.astype(np.int64) % 10


# -- CIFAR-10-C / CIFAR-100-C (a tar of .npy arrays) -----------------------------------------------------

# the 19 corruptions of CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich 2019): 15 of the benchmark, then the
# 4 held out for validation (speckle_noise, gaussian_blur, spatter, saturate); one <name>.npy each
CIFAR_C_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                       "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                       "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
_C_SEVERITIES = 5
_TAR_END = 1024  # a tar archive ends with two 512-byte blocks of zeros


def _npy_header(path: Path, name: str, f) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` from the header of the ``.npy`` member ``name`` open as ``f``."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, tarfile.ReadError) as e:
        said = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedFileError(path, f"is corrupt: its member {name} is not a .npy array ({said})") from None
    if fortran and len(shape) > 1:
        raise DamagedFileError(path, f"is not a CIFAR-C archive: its member {name} holds a Fortran-ordered array")
    return tuple(shape), dtype, f.tell()


def read_cifar_c(path: str | Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one corruption at one severity from ``CIFAR-10-C.tar`` or ``CIFAR-100-C.tar`` (Hendrycks & Dietterich
    2019, "Benchmarking neural network robustness to common corruptions and perturbations", ICLR), in place.

    Layout: an uncompressed tar holding ``<folder>/<corruption>.npy`` for each of :data:`CIFAR_C_CORRUPTIONS`,
    uint8 ``(5 N, 32, 32, 3)`` (N = 10,000 test images; rows ``(s - 1) N`` to ``s N - 1`` are severity s), and
    ``<folder>/labels.npy``, ``(5 N,)`` integer labels (uint8 in the published files) in the same order. Only the
    tar headers, the two ``.npy`` headers and the rows of severity ``severity`` are read (about 31 MB of the 2.9 GB).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        ValueError: ``corruption`` not one of :data:`CIFAR_C_CORRUPTIONS`, or ``severity`` not an integer in 1..5.
        DamagedFileError: naming the archive: empty, a web page, not a tar archive, cut off (a member or the
            end-of-archive blocks past the end of the file), without the corruption's ``.npy`` or ``labels.npy``, a
            member that is not a ``.npy`` array or holds other shapes or types, or a member shorter than its header.
        OSError: the file cannot be opened.
    """
    if corruption not in CIFAR_C_CORRUPTIONS:
        raise ValueError(f"Expected argument `corruption` to be one of {', '.join(CIFAR_C_CORRUPTIONS)}, but got "
                         f"{corruption!r}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"Expected argument `severity` to be an integer from 1 to 5, but got {severity!r}")
    path = Path(path)
    head, reason = _head_reason(path, "a tar archive")
    if reason:
        raise DamagedFileError(path, reason)
    if head.startswith(_GZIP_MAGIC):
        raise DamagedFileError(path, "is gzip data, not the uncompressed tar archive CIFAR-C is distributed as "
                                     "(compressed after the download?)")
    size = path.stat().st_size
    cut = f"ends early: its tar data stop after {size:,} bytes, before their end (an interrupted download?)"
    try:
        with tarfile.open(path, "r:") as tar:
            members = {info.name: info for info in tar if info.isfile()}
            if tar.offset + _TAR_END > size or any(m.offset_data + m.size > size for m in members.values()):
                raise DamagedFileError(path, cut)
            folders = {n.split("/")[0] for n in members if n.endswith(".npy") and n.count("/") == 1}
            folder = folders.pop() + "/" if len(folders) == 1 else ""  # CIFAR-10-C/ or CIFAR-100-C/
            wanted = (f"{folder}{corruption}.npy", f"{folder}labels.npy")
            absent = [w for w in wanted if w not in members]
            if absent:
                raise DamagedFileError(path, f"is not a complete CIFAR-C archive: it lacks {', '.join(absent)}")
            arrays = []
            for name, row_shape in zip(wanted, ((32, 32, 3), ())):
                f = tar.extractfile(members[name])
                shape, dtype, start = _npy_header(path, name, f)
                kind_ok = dtype == np.uint8 if row_shape else dtype.kind in "ui" and dtype.itemsize <= 8
                if not kind_ok or len(shape) != 1 + len(row_shape) or shape[1:] != row_shape or shape[0] % 5:
                    expected = "uint8 (5 N, 32, 32, 3): 5 severities of N images" if row_shape else "integer (5 N,)"
                    raise DamagedFileError(path, f"is not a CIFAR-C archive: its member {name} holds {dtype} data of "
                                                 f"shape {shape}, expected {expected}")
                if start + math.prod(shape) * dtype.itemsize != members[name].size:
                    raise DamagedFileError(path, f"is corrupt: its member {name} holds {members[name].size - start:,} "
                                                 f"bytes of data, its .npy header says {shape} {dtype}")
                n = shape[0] // _C_SEVERITIES
                row = math.prod(row_shape) * dtype.itemsize
                f.seek(start + (severity - 1) * n * row)
                arrays.append(np.frombuffer(f.read(n * row), dtype=dtype).reshape(n, *row_shape))
    except tarfile.ReadError as e:
        if str(e) in ("unexpected end of data", "truncated header"):
            raise DamagedFileError(path, cut) from None
        raise DamagedFileError(path, f"is not a tar archive: it starts with the bytes {head[:4].hex()}") from None
    images, labels = arrays
    if labels.size and labels.min() < 0:
        raise DamagedFileError(path, f"is not a CIFAR-C archive: its member {wanted[1]} holds negative labels")
    if len(images) != len(labels):
        raise DamagedFileError(path, f"is not a CIFAR-C archive: {wanted[0]} holds {5 * len(images)} images, but "
                                     f"{wanted[1]} {5 * len(labels)} labels")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)
