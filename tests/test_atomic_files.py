"""ceexp.files' own contract, watched while it writes: the destination keeps its old content (or does not exist)
until the rename, the temporary name, permissions, durability (fsync of the file and of its folder), clean-up
after any failure, the JSON conventions, figures, and AtomicCheckpointIO's routing.

tests/test_files.py covers the full disk for every kind of file a run writes; tests/test_download.py watches a
download's final name during a slow transfer.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from ceexp import files
from ceexp.files import atomic_savefig, atomic_write_bytes, atomic_write_text, read_json, write_json


class WatchWrites:
    """Patch ``os.write``; at each call record what the destination holds and which files the folder holds."""

    def __init__(self, monkeypatch, path: Path):
        self.path, self.seen, self._real = path, [], os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd, data):
        held = self.path.read_bytes() if self.path.exists() else None
        self.seen.append((os.readlink(f"/proc/self/fd/{fd}"), held, sorted(p.name for p in self.path.parent.iterdir())))
        return self._real(fd, data)


def test_the_destination_keeps_its_old_content_until_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"old")
    watch = WatchWrites(monkeypatch, path)
    assert atomic_write_bytes(path, b"new content") == path
    monkeypatch.undo()
    assert path.read_bytes() == b"new content"
    assert watch.seen, "nothing was written through os.write"
    for target, held, names in watch.seen:
        assert held == b"old"  # never truncated, never partly new
        temporary = Path(target).name
        assert Path(target).parent == tmp_path and temporary != "metrics.json"
        assert temporary.startswith(".metrics.json.") and temporary.endswith(".tmp")  # hidden, beside it
        assert names == sorted(["metrics.json", temporary])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_new_file_does_not_exist_until_it_is_whole(tmp_path, monkeypatch):
    path = tmp_path / "predictions.npz"
    watch = WatchWrites(monkeypatch, path)
    atomic_write_text(path, "ünïcode")
    monkeypatch.undo()
    assert watch.seen and all(held is None for _, held, _ in watch.seen)
    assert path.read_bytes() == "ünïcode".encode()


def test_permissions_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        files._UMASK, saved = 0o022, files._UMASK
        atomic_write_bytes(tmp_path / "a", b"x")
        files._UMASK = 0o077
        atomic_write_bytes(tmp_path / "b", b"x")
    finally:
        files._UMASK = saved
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_the_file_and_its_folder_are_synced_before_returning(tmp_path, monkeypatch):
    real, synced = os.fsync, []

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_bytes(tmp_path / "f", b"data")
    monkeypatch.undo()
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".f.") and Path(synced[1]) == tmp_path  # the data, then the rename


def test_a_folder_that_cannot_be_synced_is_left_as_it_is(tmp_path, monkeypatch):
    real_open, real_fsync = os.open, os.fsync

    def fsync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert atomic_write_bytes(tmp_path / "f", b"1").read_bytes() == b"1"

    def no_folder_open(path, flags, *args):
        if Path(path) == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_folder_open)
    assert atomic_write_bytes(tmp_path / "f", b"2").read_bytes() == b"2"


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_any_failure_removes_the_temporary_file_and_names_the_destination(tmp_path, monkeypatch, where):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    real_close, closed = os.close, []

    def close(fd):
        closed.append(fd)
        return real_close(fd)

    monkeypatch.setattr(os, where, fail)
    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert len(closed) == 1 and closed[0] > 2  # the temporary file's descriptor, once; never another one
    assert (info.value.errno, info.value.strerror, info.value.filename) == (errno.EIO, "Input/output error", str(path))
    assert str(info.value) == f"[Errno {errno.EIO}] Input/output error: '{path}'"
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_interrupt_while_writing_removes_the_temporary_file_and_goes_on(tmp_path, monkeypatch):
    def interrupted(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "f", b"x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_an_error_without_a_message_gets_the_systems(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.ENOSPC, "")

    monkeypatch.setattr(os, "write", fail)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "f", b"x")
    assert info.value.strerror == os.strerror(errno.ENOSPC) and info.value.filename == str(tmp_path / "f")
    assert files._naming(OSError("plain"), tmp_path / "g").strerror == "plain"


def test_write_json_is_indented_plain_json_with_nan_as_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": 0.5, "nan": float("nan"), "inf": float("inf"),
                                            "-inf": float("-inf"), "s": "x", "n": 3, "none": None})
    text = path.read_text()
    assert text == ('{\n  "a": 0.5,\n  "nan": null,\n  "inf": "inf",\n  "-inf": "-inf",\n  "s": "x",\n  "n": 3,\n'
                    '  "none": null\n}\n')
    assert read_json(path) == json.loads(text)


def test_atomic_savefig_takes_the_format_from_the_suffix(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    assert atomic_savefig(fig, tmp_path / "f.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert atomic_savefig(fig, tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    assert atomic_savefig(fig, tmp_path / "noext").read_bytes().startswith(b"\x89PNG")
    assert atomic_savefig(fig, tmp_path / "f.bin", format="png").read_bytes().startswith(b"\x89PNG")
    small = atomic_savefig(fig, tmp_path / "s.png", dpi=10).stat().st_size
    assert small < (tmp_path / "noext").stat().st_size  # keyword arguments reach savefig


def test_atomic_checkpoint_io_writes_locally_and_hands_remote_paths_to_lightning(tmp_path, monkeypatch):
    import torch
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    io = files._checkpoint_io_class()()  # a fresh definition (the module attribute is defined once per process)
    path = tmp_path / "new" / "folder" / "last.ckpt"  # its folder is made
    io.save_checkpoint({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    handed = []
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", lambda self, checkpoint, p, storage_options=None:
                        handed.append((checkpoint, str(p), storage_options)))
    io.save_checkpoint({"a": 1}, "s3://bucket/last.ckpt")
    io.save_checkpoint({"b": 2}, tmp_path / "x.ckpt", storage_options={"k": 1})
    assert handed == [({"a": 1}, "s3://bucket/last.ckpt", None), ({"b": 2}, str(tmp_path / "x.ckpt"), {"k": 1})]
    assert not (tmp_path / "x.ckpt").exists()


def test_module_attributes():
    cls = files.AtomicCheckpointIO
    assert vars(files)["AtomicCheckpointIO"] is cls and files.AtomicCheckpointIO is cls  # defined once, then kept
    fresh = files._checkpoint_io_class()
    assert (fresh.__module__, fresh.__qualname__, fresh.__name__) == ("ceexp.files", "AtomicCheckpointIO",
                                                                      "AtomicCheckpointIO")
    with pytest.raises(AttributeError, match="module 'ceexp.files' has no attribute 'nope'"):
        files.nope  # noqa: B018
