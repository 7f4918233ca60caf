"""Faults done for real: a NaN mid-training, a poisoned sweep job, SIGTERM / SIGKILL and resume= exactness."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ceexp.data import DigitsDataModule
from ceexp.train import train
from tests.conftest import FAST, ROOT, make_cfg

SCRIPT = str(ROOT / "scripts" / "train.py")


class PoisonedDigits(DigitsDataModule):
    """Digits whose training features turn NaN from epoch ``poison_epoch`` on (loaders are rebuilt each epoch)."""

    def __init__(self, poison_epoch: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.poison_epoch = poison_epoch

    def train_dataloader(self):
        if self.trainer is not None and self.trainer.current_epoch >= self.poison_epoch:
            self.x_train = torch.full_like(self.x_train, float("nan"))
        return super().train_dataloader()


def test_nan_mid_training_fails_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_cfg(run_dir, [*FAST, "trainer.max_epochs=5", "+trainer.reload_dataloaders_every_n_epochs=1",
                             "data._target_=tests.test_faults.PoisonedDigits", "+data.poison_epoch=2"])
    with pytest.raises(FloatingPointError, match="at epoch 2, step 34"):
        train(cfg)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("FloatingPointError: non-finite training loss (nan) at epoch 2")
    # 1,077 training samples / 64 = 17 steps an epoch: the last good checkpoint is the end of epoch 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 34)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        metrics = train(make_cfg(tmp_path / name, [*FAST, "logger=none", f"seed={seed}"]))
        runs[name] = {k: v for k, v in metrics.items() if k.startswith(("test/", "val/", "train/"))}
    assert runs["a"] == runs["b"]
    assert runs["a"]["test/nll"] != runs["c"]["test/nll"]


def test_sweep_with_poisoned_job_finishes_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "-m", "loss=focal", "loss.gamma=1,-1,2", "trainer.max_epochs=1",
         "logger=none", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    status = {p.parent.name.split("_")[0]: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert {k: v["status"] for k, v in status.items()} == {"0": "completed", "1": "failed", "2": "completed"}
    assert status["1"]["error"] == "ConfigError: loss.gamma=-1 is invalid: expected a number >= 0"
    assert "1 of 3 jobs did not complete" in proc.stderr + proc.stdout


def test_refused_config_leaves_no_run_folder(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "loss=smoothed", "loss.label_smoothing=1.5"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: loss.label_smoothing=1.5 is invalid: expected a number in [0, 1)"
    assert not (tmp_path / "outputs" / "runs").exists()


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("train/loss", "val/nll", "val/ece")}


def _interrupt_and_resume(tmp_path: Path, sig: signal.Signals, args: list[str]) -> Path:
    run_dir = tmp_path / f"cut_{sig.name}"
    proc = subprocess.Popen([sys.executable, SCRIPT, *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    first = ckpt.stat().st_mtime
    while ckpt.stat().st_mtime == first and time.time() < deadline:  # let a second epoch end, then kill mid-epoch
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    status = json.loads((run_dir / "metrics.json").read_text())["status"]
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and status == "interrupted", err[-2000:]
        assert "resume=" in err
    else:
        assert proc.returncode == -signal.SIGKILL and status == "running"
    resumed = subprocess.run([sys.executable, SCRIPT, f"resume={run_dir}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, sig):
    args = ["trainer.max_epochs=25", "model.dropout=0.2", "callbacks.progress_bar=null"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, SCRIPT, *args, f"hydra.run.dir={full}"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    cut = _interrupt_and_resume(tmp_path, sig, args)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert b["status"] == "completed"
    for key in a:
        if key.startswith(("test/", "val/", "train/")):
            assert b[key] == a[key], key
    ea, eb = _events(full), _events(cut)
    for tag in ea:
        steps = [s for s, _ in eb[tag]]
        assert len(steps) == len(set(steps)), f"duplicated steps in {tag}"
        assert eb[tag] == ea[tag], tag
