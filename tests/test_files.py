"""Atomic writes on a full disk: every file of a run (metrics.json, predictions.npz, figures, checkpoints, the
comparison tables) either is written whole or keeps its previous content, and the error names the file.

The full disk is injected at the system-call boundary: ``os.write`` on a file below a folder fails with ENOSPC
after a few bytes, as the kernel does when the disk fills up mid-write.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ceexp.files import atomic_savefig, atomic_write_bytes, write_json


class FullDisk:
    """Patch ``os.write``: a write to a file below ``folder`` whose name contains one of ``names`` (any, when
    empty) gets ``allow`` bytes through, then ENOSPC. Other files write as usual."""

    def __init__(self, monkeypatch, folder: Path, names: tuple[str, ...] = (), allow: int = 10):
        self.folder, self.names, self.allow = str(Path(folder).resolve()), names, allow
        self.written: dict[str, int] = {}
        self.refused: list[str] = []
        self._real = os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return self._real(fd, data)
        if not target.startswith(self.folder) or (self.names and not any(n in target for n in self.names)):
            return self._real(fd, data)
        done = self.written.get(target, 0)
        if done >= self.allow:
            self.refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._real(fd, bytes(data[: self.allow - done]))
        self.written[target] = done + n
        return n


def _no_temporary_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def _assert_refused(info, path: Path) -> None:
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)
    assert str(path) in str(info.value)


def test_metrics_json_keeps_its_last_good_record(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "running", "train/loss": 0.5})
    before = path.read_bytes()
    disk = FullDisk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as info:
        write_json(path, {"status": "completed", "test/acc": 0.9, "test/nll": float("nan")})
    _assert_refused(info, path)
    assert disk.refused  # the write did reach the disk and was cut off
    assert path.read_bytes() == before
    assert json.loads(before) == {"status": "running", "train/loss": 0.5}
    _no_temporary_files(tmp_path)


def test_predictions_keep_the_previous_file(tmp_path, monkeypatch):
    from ceexp.runs import PREDICTIONS, read_predictions, write_predictions

    rng = np.random.default_rng(0)
    first = (rng.normal(size=(7, 3)).astype(np.float32), np.arange(7) % 3,
             rng.normal(size=(5, 3)).astype(np.float32), np.arange(5) % 3, 1.5)
    write_predictions(tmp_path, *first)
    FullDisk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as info:
        write_predictions(tmp_path, first[0] * 2, first[1], first[2] * 2, first[3], 3.0)
    _assert_refused(info, tmp_path / PREDICTIONS)
    monkeypatch.undo()
    kept = read_predictions(tmp_path)
    np.testing.assert_array_equal(kept["val_logits"], first[0])
    np.testing.assert_array_equal(kept["test_logits"], first[2])
    assert kept["temperature"] == 1.5
    _no_temporary_files(tmp_path)


def test_figure_keeps_the_previous_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "reliability_diagram.png"
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    atomic_savefig(fig, path)
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    FullDisk(monkeypatch, tmp_path)
    fig.add_subplot().plot([0, 1], [1, 0])
    with pytest.raises(OSError) as info:
        atomic_savefig(fig, path)
    _assert_refused(info, path)
    assert path.read_bytes() == before
    _no_temporary_files(tmp_path)


def test_reliability_diagram_goes_through_the_atomic_writer(tmp_path, monkeypatch):
    from ceexp.plots import save_reliability_diagrams

    path = tmp_path / "reliability_diagram.png"
    path.write_bytes(b"previous")
    bins = SimpleNamespace(confidence=np.array([0.3, 0.9]), accuracy=np.array([0.2, 0.95]),
                           count=np.array([3, 7]), edges=np.array([0.0, 0.5, 1.0]))
    FullDisk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as info:
        save_reliability_diagrams(path, [(bins, "test", 0.05)])
    _assert_refused(info, path)
    assert path.read_bytes() == b"previous"
    _no_temporary_files(tmp_path)


def test_a_missing_folder_is_named_too(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_bytes(tmp_path / "gone" / "metrics.json", b"{}")
    assert info.value.filename == str(tmp_path / "gone" / "metrics.json")


def test_partial_os_writes_are_completed(tmp_path, monkeypatch):
    """os.write may write fewer bytes than asked; the writer loops until all are on disk."""
    real = os.write
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return real(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", short_write)
    atomic_write_bytes(tmp_path / "f.bin", bytes(range(10)))
    monkeypatch.undo()
    assert (tmp_path / "f.bin").read_bytes() == bytes(range(10))
    assert calls == [10, 7, 4, 1]


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def _tiny_trainer(tmp_path, **kwargs):
    import pytorch_lightning as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, **kwargs)
    return trainer, Tiny(), torch.utils.data.DataLoader(data, batch_size=8)


def test_atomic_checkpoint_io_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Trainer(plugins=[AtomicCheckpointIO()]): ModelCheckpoint's last.ckpt goes through the atomic writer; on a
    full disk the save raises OSError naming last.ckpt and the previous epoch's checkpoint loads unchanged."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from ceexp.files import AtomicCheckpointIO

    folder = tmp_path / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False)
    trainer, module, loader = _tiny_trainer(tmp_path, max_epochs=2, plugins=[AtomicCheckpointIO()],
                                            callbacks=[checkpoint])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(module, loader)
    path = folder / "last.ckpt"
    before = path.read_bytes()
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 4
    for name, value in module.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value)
    FullDisk(monkeypatch, folder)
    with torch.no_grad():
        module.layer.weight.add_(1.0)
    with pytest.raises(OSError) as info:
        trainer.save_checkpoint(path)
    _assert_refused(info, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    _no_temporary_files(folder)


def test_atomic_checkpoint_io_is_a_config_target(tmp_path):
    """plugins: [{_target_: ceexp.files.AtomicCheckpointIO}] in a trainer config instantiates to it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import pickle

    from lightning_fabric.plugins import CheckpointIO

    plugin = instantiate(OmegaConf.create({"_target_": "ceexp.files.AtomicCheckpointIO"}))
    assert isinstance(plugin, CheckpointIO) and type(plugin).__name__ == "AtomicCheckpointIO"
    assert type(pickle.loads(pickle.dumps(plugin))) is type(plugin)  # ddp_spawn sends the strategy to its processes


# ---------------------------------------------------------------------------------------------------------
# the comparison of a sweep


def _fake_job(folder: Path, loss: str, seed: int, ece: float) -> None:
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"loss={loss}", f"seed={seed}"]))
    (hydra / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "n_bins": 15}))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"loss": loss}}}}))
    write_json(folder / "metrics.json", {"status": "completed", "test/acc": 0.9 - ece, "test/nll": 0.3 + ece,
                                         "test/ece": ece, "test/ece_ts": ece / 2, "test/temperature": 1.5})


def test_comparison_files_keep_the_previous_report(tmp_path, monkeypatch):
    from ceexp.compare import compare, write_report

    sweep = tmp_path / "sweep"
    for i, (loss, seed) in enumerate((loss, seed) for loss in ("ce", "focal") for seed in (0, 1, 2)):
        _fake_job(sweep / f"{i}_loss={loss},seed={seed}", loss, seed, 0.05 + 0.01 * i)
    cmp = compare([sweep], metrics=["ece"], n_resamples=50)
    write_report(cmp)
    report = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and ("comparison" in p.parts[-1]
                                                                              or "comparison" in p.parent.name)}
    assert sweep / "comparison.csv" in report and sweep / "comparison.md" in report
    disk = FullDisk(monkeypatch, sweep, names=("comparison",))
    with pytest.raises(OSError) as info:
        write_report(cmp)
    assert info.value.errno == errno.ENOSPC and "comparison" in str(info.value.filename)
    assert disk.refused
    monkeypatch.undo()
    for path, content in report.items():
        assert path.read_bytes() == content, path
    _no_temporary_files(sweep)


def test_atomic_checkpoint_io_is_one_class_defined_on_first_use():
    """``ceexp.files.AtomicCheckpointIO`` is made on first access and kept: every later access (attribute or
    import) gives the same class, a Lightning CheckpointIO; other missing names are an AttributeError."""
    import ceexp.files as files
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    first = files.AtomicCheckpointIO
    from ceexp.files import AtomicCheckpointIO

    assert AtomicCheckpointIO is first and files.AtomicCheckpointIO is first
    assert vars(files)["AtomicCheckpointIO"] is first
    assert issubclass(first, TorchCheckpointIO)
    with pytest.raises(AttributeError, match="^module 'ceexp.files' has no attribute 'nothing'$"):
        files.nothing
