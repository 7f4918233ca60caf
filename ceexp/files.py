"""Files a run leaves behind, written so that a crash never leaves a half-written one.

Each writer puts the content in a temporary file beside the destination, flushes it to disk and
renames it over the destination (``os.replace`` is atomic on POSIX and Windows), so a reader sees
either the old file or the new one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "read_json", "write_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``Path(path)``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file beside it, fsync, rename); returns ``Path(path)``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
