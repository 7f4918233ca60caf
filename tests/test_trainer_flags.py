"""Lightning Trainer flags given as ``trainer.<arg>=...``, the ``debug=`` group, ``trainer=ddp`` on CPUs, and "the
last epoch": the final validation metrics, ``last.ckpt`` and the last reliability diagram are of the tested weights
whatever ends training. Numbers are read back from real event files and checkpoints, and recomputed in float64 numpy.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ceexp.train import train
from tests.conftest import ROOT, make_cfg, mlp_val_metrics64

SCRIPT = str(ROOT / "scripts" / "train.py")
QUIET = ["trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def digits_val64(ckpt_path: Path, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (nats) and top-label ECE of the checkpoint's MLP on the digits validation split, float64 numpy."""
    from ceexp.data import DigitsDataModule

    return mlp_val_metrics64(ckpt_path, DigitsDataModule(), n_bins)


def steps_per_epoch(batch_size: int = 64) -> int:
    from ceexp.data import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup()
    return math.ceil(len(dm.y_train) / batch_size)


def assert_final_weights_validated(metrics: dict, run_dir: Path, last_step: int) -> None:
    """The run's final val metrics are those of last.ckpt's weights (float64 numpy), which were saved at the last
    optimizer step; the last val events and the last reliability diagram are at that step."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == last_step + 1
    expected = digits_val64(run_dir / "checkpoints" / "last.ckpt")
    assert metrics["val/acc"] == pytest.approx(expected["val/acc"], abs=1e-6)
    assert metrics["val/nll"] == pytest.approx(expected["val/nll"], rel=1e-5)
    assert metrics["val/ece"] == pytest.approx(expected["val/ece"], rel=1e-4, abs=1e-6)
    acc = events(run_dir)
    val = acc.Scalars("val/nll")
    assert val[-1].step == last_step and val[-1].value == pytest.approx(metrics["val/nll"], rel=1e-6)
    assert acc.Images("val/reliability_diagram")[-1].step == last_step


# -- the last epoch (issue 13.3) --------------------------------------------------------------------------

def test_an_unvalidated_last_epoch_is_validated_checkpointed_and_drawn(tmp_path):
    """check_val_every_n_epoch=2, 3 epochs: epoch 3 is validated too (its metrics are final), last.ckpt holds
    epoch 3, and its reliability diagram is drawn; earlier epochs keep the interval."""
    run_dir = tmp_path / "run"
    metrics = train(make_cfg(run_dir, [*QUIET, "trainer.max_epochs=3", "+trainer.check_val_every_n_epoch=2",
                                       "diagram_every_n_epochs=0"]))
    n = steps_per_epoch()
    assert scalar_steps(events(run_dir), "val/nll") == [2 * n - 1, 3 * n - 1]
    assert scalar_steps(events(run_dir), "train/nll") == [n - 1, 2 * n - 1, 3 * n - 1]
    assert [e.step for e in events(run_dir).Images("val/reliability_diagram")] == [3 * n - 1]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2  # 0-based: the third epoch, so a resume repeats nothing
    assert metrics["test/epoch"] == 3.0
    assert_final_weights_validated(metrics, run_dir, 3 * n - 1)


def test_max_steps_mid_epoch(tmp_path):
    """max_steps=5 stops in the middle of the first epoch: the weights after step 5 are validated, saved, drawn."""
    run_dir = tmp_path / "run"
    metrics = train(make_cfg(run_dir, [*QUIET, "trainer.max_epochs=2", "+trainer.max_steps=5"]))
    assert metrics["status"] == "completed" and metrics["test/epoch"] == 1.0
    assert {"train/loss_epoch", "train/nll"} <= set(metrics)
    assert scalar_steps(events(run_dir), "val/nll") == [4]
    assert_final_weights_validated(metrics, run_dir, 4)


def test_max_time_stops_on_validated_weights(tmp_path):
    """max_time ends training whenever it falls (here with validation every 3rd epoch): whatever the epoch, the
    final metrics, last.ckpt and the last diagram are of the weights training ended with."""
    run_dir = tmp_path / "run"
    metrics = train(make_cfg(run_dir, [*QUIET, "trainer.max_epochs=1000", "+trainer.max_time=00:00:00:01",
                                       "+trainer.check_val_every_n_epoch=3", "diagram_every_n_epochs=0"]))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert metrics["test/epoch"] == ckpt["epoch"] + 1 < 1000
    assert_final_weights_validated(metrics, run_dir, ckpt["global_step"] - 1)



def test_early_stopping_between_validations_validates_the_final_weights_after_fit(tmp_path, caplog):
    """Early stopping on a training metric after epoch 2, with validation every 3rd epoch: nothing in fit could
    see it coming, so the final weights are validated after fit (one log line), logged at the last training step
    and epoch as the epoch's own validation would have been, with their diagram."""
    run_dir = tmp_path / "run"
    stop = "+callbacks.early_stopping"
    with caplog.at_level(logging.INFO, logger="ceexp"):
        metrics = train(make_cfg(run_dir, [
            *QUIET, "trainer.max_epochs=5", "+trainer.check_val_every_n_epoch=3", "diagram_every_n_epochs=0",
            f"{stop}._target_=pytorch_lightning.callbacks.EarlyStopping", f"{stop}.monitor=train/nll",
            f"{stop}.min_delta=100", f"{stop}.patience=0", f"{stop}.check_on_train_epoch_end=true"]))
    n = steps_per_epoch()
    assert metrics["test/epoch"] == 2.0
    assert any(r.getMessage().startswith("validating the final weights") for r in caplog.records)
    assert_final_weights_validated(metrics, run_dir, 2 * n - 1)
    acc = events(run_dir)
    assert scalar_steps(acc, "val/nll") == [2 * n - 1]
    assert [(e.step, e.value) for e in acc.Scalars("epoch") if e.step == 2 * n - 1][-1] == (2 * n - 1, 1.0)
    # last.ckpt records that validation: a resume of this ended run finds nothing left to validate
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("EndOfTraining")]
    assert ckpt["global_step"] == 2 * n and state["validated_step"] == ckpt["global_step"]
    assert state["ended"] and state["metrics"]["val/nll"] == pytest.approx(metrics["val/nll"])
    assert state["metrics"]["train/nll"] == pytest.approx(metrics["train/nll"])  # what a resume reports

def test_resume_of_a_run_early_stopping_ended_between_validations(tmp_path):
    """The run above, killed while testing (metrics.json not completed) and resumed: nothing is trained or
    validated again (val/nll once, at the last training step), and metrics.json keeps the train/* entries."""
    run_dir = tmp_path / "run"
    stop = "+callbacks.early_stopping"
    overrides = [*QUIET, "trainer.max_epochs=5", "+trainer.check_val_every_n_epoch=3", "diagram_every_n_epochs=0",
                 f"{stop}._target_=pytorch_lightning.callbacks.EarlyStopping", f"{stop}.monitor=train/nll",
                 f"{stop}.min_delta=100", f"{stop}.patience=0", f"{stop}.check_on_train_epoch_end=true"]
    first = train(make_cfg(run_dir, overrides))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted"}))  # as if killed during testing
    again = train(make_cfg(run_dir, [*overrides, f"resume={run_dir}"]))
    n = steps_per_epoch()
    assert scalar_steps(events(run_dir), "val/nll") == [2 * n - 1]
    for tag in ("train/nll", "train/loss_epoch", "val/nll", "test/ece", "test/epoch"):
        assert again[tag] == pytest.approx(first[tag], rel=1e-6), tag


# -- trainer flags (issue 9.1) ----------------------------------------------------------------------------

def test_fast_dev_run(tmp_path, caplog):
    """One batch of each split; Lightning saves no checkpoint, so metrics.json and one log line say the run
    cannot be resumed."""
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="ceexp"):
        metrics = train(make_cfg(run_dir, [*QUIET, "+trainer.fast_dev_run=true"]))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["resumable"] is False
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    assert [r.getMessage() for r in caplog.records if "cannot be resumed" in r.getMessage()] == [
        "this run cannot be resumed: trainer.fast_dev_run writes no checkpoint"]
    for tag in ("train/nll", "val/nll", "test/nll", "test/ece_ts"):
        assert math.isfinite(metrics[tag]), tag
    with np.load(run_dir / "predictions.npz") as f:  # one batch of 64 test samples
        assert f["test_logits"].shape == (64, 10) and f["test_labels"].shape == (64,)


def test_limits_and_no_validation(tmp_path, caplog):
    """limit_train/val/test_batches: 3 training batches an epoch, no validation (0), 2 test batches. No val/*
    metrics, temperature scaling and checkpoint=best_val_nll each say in one line what they do instead."""
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ceexp"):
        metrics = train(make_cfg(run_dir, [*QUIET, "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
                                           "+trainer.limit_val_batches=0", "+trainer.limit_test_batches=2",
                                           "checkpoint=best_val_nll"]))
    assert not [k for k in metrics if k.startswith("val/")]
    assert not [k for k in metrics if k.startswith("test/temperature") or k.endswith("_ts")]
    assert metrics["test/epoch"] == 2.0 and math.isfinite(metrics["test/nll"])
    messages = [r.getMessage() for r in caplog.records]
    assert "temperature scaling skipped: no validation (trainer.limit_val_batches=0)" in messages
    assert ("checkpoint=best_val_nll: trainer.limit_val_batches=0, so the weights at the end of training are "
            "tested") in messages
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 6)
    acc = events(run_dir)
    assert "val/nll" not in acc.Tags()["scalars"] and scalar_steps(acc, "train/nll") == [2, 5]
    with np.load(run_dir / "predictions.npz") as f:
        assert f["val_logits"].shape == (0, 10) and f["test_logits"].shape == (128, 10)
        assert math.isnan(float(f["temperature"]))


def test_log_every_n_steps_0_logs_no_step_values(tmp_path):
    """Lightning's "no step logging": no train/loss per step, the epoch values as usual."""
    run_dir = tmp_path / "run"
    metrics = train(make_cfg(run_dir, [*QUIET, "trainer.max_epochs=1", "trainer.log_every_n_steps=0"]))
    acc = events(run_dir)
    assert "train/loss" not in acc.Tags()["scalars"]
    assert scalar_steps(acc, "train/nll") == [steps_per_epoch() - 1]
    assert metrics["status"] == "completed"


def test_callbacks_follow_the_progress_bar_and_checkpointing_flags(tmp_path, caplog):
    """enable_progress_bar=false and enable_checkpointing=false with the default callbacks (a RichProgressBar and
    a ModelCheckpoint, which Lightning would refuse): both left out in one line each; the run completes and says
    in metrics.json and one line that it cannot be resumed."""
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ceexp"):
        metrics = train(make_cfg(run_dir, ["trainer.max_epochs=1", "+trainer.limit_train_batches=3",
                                           "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false"]))
    messages = [r.getMessage() for r in caplog.records]
    assert "trainer.enable_progress_bar=false: callbacks.progress_bar left out" in messages
    assert "trainer.enable_checkpointing=false: callbacks.model_checkpoint left out" in messages
    assert "this run cannot be resumed: trainer.enable_checkpointing=false writes no checkpoint" in messages
    assert metrics["status"] == "completed" and metrics["resumable"] is False
    assert json.loads((run_dir / "metrics.json").read_text())["resumable"] is False
    assert not (run_dir / "checkpoints").exists()


DEBUG = {"fdr": {"fast_dev_run": True, "max_epochs": 1}, "limit": {"limit_train_batches": 3, "max_epochs": 3},
         "overfit": {"overfit_batches": 3, "max_epochs": 20}, "profiler": {"profiler": "simple", "max_epochs": 1}}


def test_debug_comes_last_in_the_defaults_list(tmp_path):
    """debug=<option> overrides what an experiment sets (loss_comparison: 30 epochs) and the trainer group."""
    for option, expected in DEBUG.items():
        cfg = make_cfg(tmp_path / option, [f"debug={option}", "experiment=loss_comparison", "trainer=gpu"])
        assert {k: cfg.trainer[k] for k in expected} == expected, option
        assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.detect_anomaly) == ("cpu", 1, True)
        assert cfg.data._target_.endswith("MNIST5kDataModule")  # the rest of the experiment stays


@pytest.mark.parametrize("option", list(DEBUG))
def test_debug_group_options_run(tmp_path, option):
    """Each debug=<option> (configs/debug/) runs to the end."""
    run_dir = tmp_path / "run"
    cfg = make_cfg(run_dir, [*QUIET, f"debug={option}", *(["trainer.max_epochs=2"] if option == "overfit" else [])])
    metrics = train(cfg)
    assert metrics["status"] == "completed" and math.isfinite(metrics["test/nll"])
    assert metrics["test/epoch"] == cfg.trainer.max_epochs


@pytest.mark.slow
def test_trainer_ddp_runs_two_cpu_processes(tmp_path):
    """trainer=ddp on a machine without GPUs: two CPU processes (gloo) with trainer.devices=2, one run folder."""
    proc = subprocess.run([sys.executable, SCRIPT, "trainer=ddp", "trainer.devices=2", "data=synthetic",
                           "data.n_samples=400", "trainer.max_epochs=1", "logger=none", *QUIET],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "MEMBER: 2/2" in out
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert (run_dir / "train_ddp_process_1.log").is_file()


def test_overfit_batches_train_on_the_same_whole_batches_every_epoch():
    """trainer.overfit_batches=2: the training loader yields the split's first batches, whole and in order (not
    single samples, as when Lightning swaps an index-batch sampler for a per-sample SequentialSampler), and
    Lightning keeps it as it is."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.connectors.data_connector import _resolve_overfit_batches
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    from ceexp.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    dm.trainer = pl.Trainer(overfit_batches=2, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        combined = CombinedLoader(loader)
        _resolve_overfit_batches(combined, RunningStage.TRAINING)
        batches = list(combined.flattened[0])
        y = dm.y_train if loader.dataset.batches.y is dm.y_train else dm.y_val
        assert [len(b[1]) for b in batches[:2]] == [64, 64]
        assert (batches[0][1] == y[:64]).all() and (batches[1][1] == y[64:128]).all()
