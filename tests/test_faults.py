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
from pytorch_lightning import Callback

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
    # a checkpoint every epoch (the default writes once a minute): the one before the poisoned epoch must survive
    cfg = make_cfg(run_dir, [*FAST, "trainer.max_epochs=5", "+trainer.reload_dataloaders_every_n_epochs=1",
                             "data._target_=tests.test_faults.PoisonedDigits", "+data.poison_epoch=2",
                             "callbacks.model_checkpoint.every_n_seconds=0"])
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


@pytest.mark.promise
def test_sweep_with_poisoned_job_finishes_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "-m", "loss=focal", "loss.gamma=1,-1,2", "trainer.max_epochs=1",
         "logger=none", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
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


def _poll(condition, proc: subprocess.Popen, what: str, deadline_s: float = 600.0) -> None:
    """Wait until ``condition()`` holds, polling (no fixed sleep), for at most ``deadline_s`` (a loaded machine
    may take minutes); fail with the child's stderr if it exits first or the deadline passes."""
    end = time.monotonic() + deadline_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {what} within {deadline_s} s")
        time.sleep(0.05)


def _interrupt_and_resume(tmp_path: Path, sig: signal.Signals, args: list[str]) -> Path:
    run_dir = tmp_path / f"cut_{sig.name}"
    proc = subprocess.Popen([sys.executable, SCRIPT, *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    def stamp():  # each checkpoint is a new file (written under a temporary name, renamed)
        try:
            st = ckpt.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    _poll(lambda: stamp() is not None, proc, "first checkpoint")
    first = stamp()
    _poll(lambda: stamp() not in (None, first), proc, "second checkpoint")  # a second epoch ended: kill after it
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    status = json.loads((run_dir / "metrics.json").read_text())["status"]
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and status == "interrupted", err[-2000:]
        assert "resume=" in err
    else:
        assert proc.returncode == -signal.SIGKILL and status == "running"
    resumed = subprocess.run([sys.executable, SCRIPT, f"resume={run_dir}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return run_dir


@pytest.mark.promise
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, sig):
    # a checkpoint every epoch (not every minute): the kill lands after the second one
    args = ["trainer.max_epochs=25", "model.dropout=0.2", "callbacks.progress_bar=null",
            "callbacks.model_checkpoint.every_n_seconds=0"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, SCRIPT, *args, f"hydra.run.dir={full}"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=900)
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



class SigtermInTest(Callback):
    """Lightning's SIGTERM (its ``SIGTERMException``) as testing starts: a run stopped after its last epoch."""

    def on_test_start(self, trainer, pl_module):
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        raise SIGTERMException()


def test_resume_after_the_last_epoch_logs_nothing_twice_and_resuming_a_completed_run_changes_nothing(tmp_path):
    """A run stopped after its last training epoch (here by SIGTERM as testing starts), resumed: every val/* tag
    once per epoch in the event file (no extra point, no extra epoch), metrics.json with the train/* and val/*
    values of the last epoch; resuming the completed run exits 0, says so in one line and leaves metrics.json
    byte for byte."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ceexp.runs import RunInterrupted

    run_dir = tmp_path / "run"
    args = [*FAST, "+trainer.check_val_every_n_epoch=2", "trainer.max_epochs=3"]
    with pytest.raises(RunInterrupted):
        train(make_cfg(run_dir, [*args, "+callbacks.sigterm._target_=tests.test_faults.SigtermInTest"]))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    metrics = train(make_cfg(run_dir, [*args, f"resume={run_dir}"]))

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    val_tags = [t for t in acc.Tags()["scalars"] if t.startswith("val/")]
    assert len(val_tags) >= 10
    for tag in val_tags:  # validated at epochs 2 and 3 (17 steps an epoch), once each
        assert [e.step for e in acc.Scalars(tag)] == [33, 50], tag
    assert [e.step for e in acc.Images("val/reliability_diagram")] == [50]
    assert max(e.value for e in acc.Scalars("epoch") if e.step <= 50) == 2.0  # 0-based: three epochs, not four
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed" and on_disk == pytest.approx(metrics)
    for tag in ("train/loss_epoch", "train/nll", "val/nll", "val/ece"):
        assert on_disk[tag] == pytest.approx(acc.Scalars(tag)[-1].value, rel=1e-6), tag

    # resuming the completed run through the command line: nothing runs, nothing changes
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\n" for a in args))
    before = (run_dir / "metrics.json").read_bytes()
    proc = subprocess.run([sys.executable, SCRIPT, f"resume={run_dir}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "metrics.json").read_bytes() == before
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "completed already" in line]
    assert len(said) == 1 and str(run_dir) in said[0]

# ---------------------------------------------------------------------------------------------------------
# the failure policy (ceexp.runs.run_job): status, one line, exit code, sweep continuation

import errno  # noqa: E402 - this section's own import (the file is appended to)


def _fresh_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "2026-01-01" / "12-00-00.000000_ce"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "train.log").write_text("")
    return run_dir


def _raise(e: BaseException):
    def task():
        raise e

    return task


def test_policy_config_error_single_run_leaves_nothing(tmp_path, capsys):
    from ceexp.runs import run_job
    from ceexp.validation import ConfigError

    run_dir = _fresh_run(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_job(_raise(ConfigError("loss.gamma=-1 is invalid: expected a number >= 0")), run_dir, multirun=False)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: loss.gamma=-1 is invalid: expected a number >= 0"]
    assert not (tmp_path / "runs").exists()  # the run folder, its date folder and runs/ were all empty
    # resuming a run refused by a config error leaves the run as it was
    run_dir = _fresh_run(tmp_path)
    with pytest.raises(SystemExit):
        run_job(_raise(ConfigError("x=1 is invalid: expected y")), run_dir, multirun=False, resumed=True)
    assert run_dir.is_dir() and not (run_dir / "metrics.json").exists()


def test_policy_in_a_sweep_every_failure_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    from ceexp.runs import run_job
    from ceexp.validation import ConfigError

    cases = {
        "config": (ConfigError("loss.gamma=-1 is invalid: expected a number >= 0"),
                   "ConfigError: loss.gamma=-1 is invalid: expected a number >= 0"),
        "nan": (FloatingPointError("non-finite training loss (nan) at epoch 2, step 34"),
                "FloatingPointError: non-finite training loss (nan) at epoch 2, step 34"),
        "disk": (OSError(errno.ENOSPC, "No space left on device", "/x/predictions.npz"),
                 "OSError: cannot write /x/predictions.npz: No space left on device"),
        "bug": (KeyError("test/acc"), "KeyError: 'test/acc'"),
    }
    for name, (error, recorded) in cases.items():
        run_dir = _fresh_run(tmp_path / name)
        assert run_job(_raise(error), run_dir, multirun=True) is None
        record = json.loads((run_dir / "metrics.json").read_text())
        assert (record["status"], record["error"]) == ("failed", recorded)
    assert capsys.readouterr().err == ""  # a sweep logs its failures; SweepRecord lists them at the end
    assert run_job(lambda: {"val/nll": 0.5}, _fresh_run(tmp_path / "ok"), multirun=True) == {"val/nll": 0.5}


def test_policy_single_run_messages_and_exit_codes(tmp_path, capsys):
    import logging

    from ceexp.runs import RunInterrupted, run_job

    run_dir = _fresh_run(tmp_path / "nan")
    with pytest.raises(SystemExit) as info:
        run_job(_raise(FloatingPointError("non-finite training loss (nan) at epoch 2, step 34")), run_dir,
                multirun=False)
    assert info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: non-finite training loss (nan) at epoch 2, step 34; the last good checkpoint is in "
        f"{run_dir / 'checkpoints'}"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"

    for multirun in (False, True):  # an interrupted job stops a sweep too
        run_dir = _fresh_run(tmp_path / f"cut{multirun}")
        with pytest.raises(SystemExit) as info:
            run_job(_raise(RunInterrupted(run_dir, 3)), run_dir, multirun=multirun)
        assert info.value.code == 130
        assert capsys.readouterr().err.splitlines() == [
            f"interrupted: stopped in epoch 3; continue with: python scripts/train.py resume={run_dir}"]
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    # a bug: one line on the console, the traceback in the run's log file
    run_dir = _fresh_run(tmp_path / "bug")
    handler = logging.FileHandler(run_dir / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info:
            run_job(_raise(RuntimeError("boom\nsecond line")), run_dir, multirun=False)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: RuntimeError: boom (traceback in {run_dir / 'train.log'})"]
    log_text = (run_dir / "train.log").read_text()
    assert "Traceback (most recent call last)" in log_text and 'raise e' in log_text
    assert json.loads((run_dir / "metrics.json").read_text())["error"] == "RuntimeError: boom"


def test_policy_full_disk_names_the_first_file_and_keeps_the_last_record(tmp_path, capsys):
    """The checkpoint write fails on a full disk, then so does recording the failure: the line names the
    checkpoint (the cause), and metrics.json keeps its last good record."""
    from ceexp.files import write_json
    from ceexp.runs import run_job, write_status

    run_dir = _fresh_run(tmp_path)
    write_status(run_dir, "running")
    before = (run_dir / "metrics.json").read_bytes()
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    def task():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(ckpt))
        except OSError:
            write_json(run_dir / "metrics.json", {"status": "failed"})  # as train() records it: also refused

    from tests.test_files import FullDisk

    mp = pytest.MonkeyPatch()
    FullDisk(mp, run_dir, names=("metrics.json",))
    try:
        with pytest.raises(SystemExit) as info:
            run_job(task, run_dir, multirun=False)
    finally:
        mp.undo()
    assert info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"error: cannot write {ckpt}: No space left on device"]
    assert (run_dir / "metrics.json").read_bytes() == before


def test_policy_keeps_the_record_train_wrote_for_the_same_failure(tmp_path):
    from ceexp.runs import run_job, write_status

    run_dir = _fresh_run(tmp_path)

    def task():
        write_status(run_dir, "failed", error="FloatingPointError: nan at epoch 2", **{"train/loss": 0.7})
        raise FloatingPointError("nan at epoch 2")

    assert run_job(task, run_dir, multirun=True) is None
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["train/loss"] == 0.7 and record["error"] == "FloatingPointError: nan at epoch 2"


_FULL_DISK_SITE = '''
import errno, os
_real = os.write
def _write(fd, data):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return _real(fd, data)
    if os.environ["CEEXP_TEST_FULL"] in target:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real(fd, data)
os.write = _write
'''


def test_cli_full_disk_one_line_exit_1(tmp_path):
    """The real command line on a disk that fills up when predictions.npz is written (os.write patched in the
    child process through sitecustomize): exit code 1, one line naming the file, metrics.json records the
    failure, and the checkpoint of the finished training is still there."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FULL_DISK_SITE)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "CEEXP_TEST_FULL": "predictions.npz"}
    proc = subprocess.run([sys.executable, SCRIPT, "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                           "logger=none", "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    target = run_dir / "predictions.npz"
    assert proc.stderr.strip().splitlines() == [f"error: cannot write {target}: No space left on device"]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and str(target) in record["error"] and "No space left" in record["error"]
    # nothing half-written: no predictions file, no temporary file; the trained checkpoint is there
    assert not target.exists() and not list(run_dir.glob(".predictions.npz.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.promise
def test_sweep_cell_lacking_a_key_fails_alone(tmp_path):
    """-m loss=ce,focal loss.gamma=3: the ce job (CrossEntropyLoss has no gamma) is recorded as failed with one
    line, the focal job completes, the exit code is 1; trainer.limit_train_batches is typed as Lightning's."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "-m", "loss=ce,focal", "loss.gamma=3", "trainer.max_epochs=1",
         "trainer.limit_train_batches=3", "logger=none", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    records = {("focal" if "loss=focal" in p.parent.name else "ce"): json.loads(p.read_text())
               for p in sweep.glob("*/metrics.json")}
    assert records["ce"]["status"] == "failed"
    assert records["ce"]["error"] == ("ConfigError: loss.gamma=3 is invalid: expected an argument of "
                                      "torch.nn.CrossEntropyLoss (ignore_index, label_smoothing, reduction, weight)")
    assert records["focal"]["status"] == "completed"
    assert records["focal"]["train/loss_epoch"] > 0
    assert "1 of 2 jobs did not complete" in proc.stderr + proc.stdout


def test_hydra_own_failures_are_one_line(capsys, monkeypatch):
    """ceexp.runs.run_hydra: Hydra's errors (composition, overrides) exit 2 with one line; anything else Hydra lets
    through exits 1 with one line; HYDRA_FULL_ERROR=1 set by the user keeps the traceback."""
    from hydra.errors import ConfigCompositionException

    from ceexp.runs import run_hydra

    def composition():
        raise ConfigCompositionException("In 'train': Could not load 'data/nope'.\nAvailable options: ...")

    def bug():
        raise RuntimeError("launcher broke\nmore")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for fn, code, line in ((composition, 2, "error: In 'train': Could not load 'data/nope'."),
                           (bug, 1, "error: RuntimeError: launcher broke")):
        with pytest.raises(SystemExit) as info:
            run_hydra(fn)
        assert info.value.code == code
        assert capsys.readouterr().err.splitlines() == [line]
    import os

    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while Hydra runs
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(RuntimeError, match="launcher broke"):
        run_hydra(bug)
