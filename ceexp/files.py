"""Files a run leaves behind, written so that a crash or a full disk never leaves a half-written one.

Each writer puts the content in a temporary file beside the destination, flushes it to disk and
renames it over the destination (``os.replace`` is atomic on POSIX and Windows), so a reader sees
either the old file or the new one. A write that fails (``ENOSPC``: the disk is full) removes its
temporary file, leaves the previous file as it was, and raises ``OSError`` naming the destination
(``[Errno 28] No space left on device: '<run dir>/metrics.json'``).

Every file of a run goes through :func:`atomic_write_bytes`: ``metrics.json`` and ``predictions.npz``
(:mod:`ceexp.runs`), figures (:func:`atomic_savefig`), comparison tables, and checkpoints when the trainer has
``plugins=[AtomicCheckpointIO()]``. Lightning's own checkpoint writer stages the file in the system's
temporary folder (fsspec's transaction) and moves it into place, which is a copy, not a rename, when that
folder is on another file system: a full disk then truncates ``last.ckpt``.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# and AtomicCheckpointIO, defined on first use (module __getattr__): Lightning is not imported with this module
__all__ = ["atomic_savefig", "atomic_write_bytes", "atomic_write_text", "read_json", "write_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``Path(path)``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _naming(e: OSError, path: Path) -> OSError:
    """The same error, naming the destination rather than the temporary file (or nothing, for a write)."""
    return OSError(e.errno, e.strerror or (os.strerror(e.errno) if e.errno else str(e)), str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file beside it, fsync, rename); returns ``Path(path)``.

    Raises:
        OSError: naming ``path`` (the disk is full, the folder is read-only or missing...); the previous file at
            ``path``, if any, is unchanged and no temporary file is left.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a file system that cannot sync a folder is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_savefig(fig, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` into memory, then :func:`atomic_write_bytes` to ``path`` (format from its suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    buffer = io.BytesIO()
    fig.savefig(buffer, **kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: str | Path, data: dict) -> Path:
    """Write a flat dict as indented JSON, atomically. NaN becomes ``null`` (JSON has no NaN)."""
    return atomic_write_text(path, json.dumps({k: _plain(v) for k, v in data.items()}, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    """Read a JSON object written by :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _checkpoint_io_class():
    """Define :class:`AtomicCheckpointIO` on first use: Lightning is imported only by runs that train."""
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's ``TorchCheckpointIO`` writing local checkpoints through :func:`atomic_write_bytes`.

        ``Trainer(plugins=[AtomicCheckpointIO()])`` (or ``plugins: [{_target_: ceexp.files.AtomicCheckpointIO}]``
        in a trainer config): a full disk raises ``OSError`` naming the checkpoint and leaves the previous one
        whole. Remote paths (``s3://...``) go to Lightning's writer.
        """

        def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            import torch

            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())

    AtomicCheckpointIO.__module__, AtomicCheckpointIO.__qualname__ = __name__, "AtomicCheckpointIO"  # pickles
    return AtomicCheckpointIO


def __getattr__(name: str):
    if name == "AtomicCheckpointIO":
        cls = _checkpoint_io_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
