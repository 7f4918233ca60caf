"""ceexp.runs without training: resume= handling, statuses, the readers' error paths, sweep records and names.

The failure policy itself (run_job, one line, exit codes) is tested in tests/test_faults.py's ``test_policy_*``;
here its building blocks (failure_of, first_failure, one_line, remove_fresh_run) and every branch they take, and
run_job, run_hydra and the SweepRecord callback in-process (Hydra's own composed config and JobReturn), since mutation
testing (tests/mutation.py) does not see the command-line and sweep tests' subprocesses.
Expected values are written out by hand.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ceexp import runs


def _run_folder(path: Path, overrides: list[str] | None = None) -> Path:
    (path / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return path


# ---------------------------------------------------------------------------------------------------------
# resume=


def test_resume_argv_without_resume_is_the_same_command_line():
    assert runs.resume_argv(["loss=focal", "seed=1"]) == ["loss=focal", "seed=1"]
    assert runs.resume_argv([]) == []


def test_resume_argv_replays_the_runs_own_overrides_in_its_folder(tmp_path):
    run = _run_folder(tmp_path / "run", ["loss=focal", "loss.gamma=3", "hydra.job.chdir=true", "resume=/old"])
    assert runs.resume_argv([f"resume={run}"]) == [
        "loss=focal", "loss.gamma=3",  # hydra.* and an earlier resume= are not replayed
        f"hydra.run.dir={run}", "hydra.output_subdir=null", f"resume={run.resolve()}",
    ]


def test_resume_argv_of_a_run_without_overrides_and_the_last_resume_wins(tmp_path):
    empty = _run_folder(tmp_path / "empty", [])
    (empty / ".hydra" / "overrides.yaml").write_text("")  # Hydra writes "[]"; an empty file reads as None
    other = _run_folder(tmp_path / "other", ["seed=2"])
    assert runs.resume_argv([f"resume={other}", f"resume={empty}"]) == [
        f"hydra.run.dir={empty}", "hydra.output_subdir=null", f"resume={empty.resolve()}"]


def test_resume_argv_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    run = _run_folder(tmp_path / "run", ["seed=3"])
    assert runs.resume_argv(["resume=~/run"]) == [
        "seed=3", f"hydra.run.dir={run}", "hydra.output_subdir=null", f"resume={run.resolve()}"]


def test_resume_argv_refuses_a_folder_that_is_not_a_run_and_other_overrides(tmp_path):
    with pytest.raises(ValueError) as info:
        runs.resume_argv([f"resume={tmp_path}"])
    assert str(info.value) == f"resume={tmp_path} is invalid: expected a run folder with .hydra/overrides.yaml"
    (tmp_path / ".hydra" / "overrides.yaml").mkdir(parents=True)  # a folder by that name is no record either
    with pytest.raises(ValueError, match="expected a run folder"):
        runs.resume_argv([f"resume={tmp_path}"])
    run = _run_folder(tmp_path / "run", ["seed=0"])
    with pytest.raises(ValueError) as info:
        runs.resume_argv([f"resume={run}", "seed=1", "loss=ce"])
    assert str(info.value) == f"resume={run} takes no other overrides, but got seed=1 loss=ce"


def test_checked_argv_turns_a_bad_resume_into_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        runs.checked_argv([f"resume={tmp_path / 'nope'}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: resume={tmp_path / 'nope'} is invalid: expected a run folder with .hydra/overrides.yaml"]


# ---------------------------------------------------------------------------------------------------------
# statuses and metrics.json


@pytest.mark.parametrize("status", runs.STATUSES)
def test_write_status_records_status_fields_and_time(tmp_path, status):
    record = runs.write_status(tmp_path, status, error="E: x", **{"test/acc": 0.5})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == record
    assert list(record)[:3] == ["status", "error", "test/acc"]
    assert (record["status"], record["error"], record["test/acc"]) == (status, "E: x", 0.5)
    assert len(record["time/finished"]) == len("2026-01-01T12:00:00") and record["time/finished"][10] == "T"
    assert runs.read_status(tmp_path) == status and runs.read_metrics(tmp_path) == record


def test_statuses_are_the_documented_four_and_others_are_refused(tmp_path):
    assert runs.STATUSES == ("running", "completed", "failed", "interrupted")
    with pytest.raises(ValueError) as info:
        runs.write_status(tmp_path, "done")
    assert str(info.value) == ("Expected `status` to be one of ['running', 'completed', 'failed', 'interrupted'], "
                               "but got 'done'")
    assert not (tmp_path / "metrics.json").exists()


def test_read_status_is_unknown_without_a_readable_record(tmp_path):
    assert runs.read_status(tmp_path) == "unknown"  # no metrics.json
    (tmp_path / "metrics.json").write_text("{not json")
    assert runs.read_status(tmp_path) == "unknown"
    (tmp_path / "metrics.json").write_text('{"test/acc": 1.0}')
    assert runs.read_status(tmp_path) == "unknown"  # a record without a status
    (tmp_path / "metrics.json").write_text('{"status": "failed"}')
    assert runs.read_status(tmp_path) == "failed"


def test_read_metrics_error_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        runs.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"status": ')  # cut off
    with pytest.raises(ValueError) as info:
        runs.read_metrics(tmp_path)
    assert str(info.value) == "metrics.json unreadable: Expecting value"  # json's message, without the position
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError) as info:
        runs.read_metrics(tmp_path)
    assert str(info.value) == "metrics.json unreadable: not a JSON object"
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "metrics.json").mkdir()  # unreadable as a file: an OSError, reported as unreadable
    with pytest.raises(ValueError, match="^metrics.json unreadable: "):
        runs.read_metrics(tmp_path)


def test_nan_and_infinities_in_metrics_json(tmp_path):
    runs.write_status(tmp_path, "completed", a=float("nan"), b=float("inf"), c=float("-inf"), d=1.5)
    record = runs.read_metrics(tmp_path)
    assert (record["a"], record["b"], record["c"], record["d"]) == (None, "inf", "-inf", 1.5)


def test_run_interrupted_names_the_epoch_and_the_resume_command(tmp_path):
    e = runs.RunInterrupted(str(tmp_path), 4)
    assert e.run_dir == tmp_path
    assert str(e) == f"stopped in epoch 4; continue with: python scripts/train.py resume={tmp_path}"


# ---------------------------------------------------------------------------------------------------------
# the readers of .hydra/, hparams.yaml, predictions.npz, ood_logits.npz


def test_hydra_record_readers_and_their_fallbacks(tmp_path):
    run = tmp_path / "run"
    assert not runs.is_run(run)
    assert (runs.read_overrides(run), runs.read_choices(run), runs.read_config(run), runs.read_hparams(run)) == (
        [], {}, None, {})
    _run_folder(run, ["loss=focal", "seed=1"])
    assert runs.is_run(run)
    assert runs.read_overrides(run) == ["loss=focal", "seed=1"]
    (run / ".hydra" / "overrides.yaml").write_text("loss: focal\n")  # not a list
    assert runs.read_overrides(run) == []
    (run / ".hydra" / "overrides.yaml").write_text("[unclosed\n")
    assert runs.read_overrides(run) == []
    (run / ".hydra" / "overrides.yaml").write_text("- 3\n- seed=1\n")
    assert runs.read_overrides(run) == ["3", "seed=1"]
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      loss: focal\n      data: digits\n")
    assert runs.read_choices(run) == {"loss": "focal", "data": "digits"}
    for broken in ("hydra: 3\n", "hydra:\n  runtime:\n    choices: null\n", "- a\n", "{{\n", ""):
        (run / ".hydra" / "hydra.yaml").write_text(broken)
        assert runs.read_choices(run) == {}, broken
    (run / ".hydra" / "config.yaml").write_text("seed: 4\nloss:\n  gamma: 2.0\n")
    assert runs.read_config(run).loss.gamma == 2.0
    (run / ".hydra" / "config.yaml").write_text("seed: [\n")
    assert runs.read_config(run) is None
    (run / "hparams.yaml").write_text("loss: focal\nlr: 0.001\n")
    assert runs.read_hparams(run) == {"loss": "focal", "lr": 0.001}
    for broken in ("- a\n", "{{\n", ""):
        (run / "hparams.yaml").write_text(broken)
        assert runs.read_hparams(run) == {}, broken


def test_predictions_round_trip_dtypes_and_temperature(tmp_path):
    import torch

    assert not runs.has_predictions(tmp_path)
    val = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    path = runs.write_predictions(tmp_path, val, torch.tensor([1, 0], dtype=torch.int32),
                                  np.array([[0.5, -0.5]]), [1], temperature=1.25)
    assert path == tmp_path / "predictions.npz" and runs.has_predictions(tmp_path)
    out = runs.read_predictions(tmp_path)
    assert sorted(out) == sorted(["val_logits", "val_labels", "test_logits", "test_labels", "temperature"])
    assert out["val_logits"].dtype == np.float32 and out["test_logits"].dtype == np.float32
    assert out["val_labels"].dtype == np.int64 and out["test_labels"].dtype == np.int64
    np.testing.assert_array_equal(out["val_logits"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(out["val_labels"], [1, 0])
    np.testing.assert_array_equal(out["test_logits"], [[0.5, -0.5]])
    np.testing.assert_array_equal(out["test_labels"], [1])
    assert out["temperature"] == 1.25 and type(out["temperature"]) is float
    runs.write_predictions(tmp_path, val, [1, 0], val, [1, 0])
    assert np.isnan(runs.read_predictions(tmp_path)["temperature"])
    assert not [p for p in tmp_path.iterdir() if p.name != "predictions.npz"]  # no temporary file left


def test_read_predictions_error_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        runs.read_predictions(tmp_path)
    np.savez(tmp_path / "predictions.npz", val_logits=np.zeros((1, 2)), val_labels=np.zeros(1))
    with pytest.raises(ValueError) as info:
        runs.read_predictions(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'predictions.npz'} is not a predictions file: expected arrays val_logits, val_labels, "
        "test_logits, test_labels, temperature, missing test_logits, test_labels, temperature")
    (tmp_path / "predictions.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'predictions.npz'} is unreadable: "):
        runs.read_predictions(tmp_path)
    (tmp_path / "predictions.npz").write_text("garbage, neither a zip nor a .npy")  # numpy: a ValueError of its own
    with pytest.raises(ValueError) as info:
        runs.read_predictions(tmp_path)
    assert str(info.value) == f"{tmp_path / 'predictions.npz'} is not an .npz file (not a zip archive of arrays)"


def test_ood_logits_round_trip_and_error_paths(tmp_path):
    import torch

    assert runs.read_ood_logits(tmp_path) == {}
    runs.write_ood_logits(tmp_path, {"noise": torch.ones(2, 3, dtype=torch.float64), "svhn": np.zeros((1, 3))})
    out = runs.read_ood_logits(tmp_path)
    assert sorted(out) == ["noise", "svhn"] and out["noise"].dtype == np.float32 and out["svhn"].shape == (1, 3)
    np.testing.assert_array_equal(out["noise"], np.ones((2, 3)))
    (tmp_path / "ood_logits.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="ood_logits.npz is unreadable: "):
        runs.read_ood_logits(tmp_path)
    (tmp_path / "ood_logits.npz").write_text("garbage")
    with pytest.raises(ValueError) as info:
        runs.read_ood_logits(tmp_path)
    assert str(info.value) == f"{tmp_path / 'ood_logits.npz'} is not an .npz file (not a zip archive of arrays)"


# ---------------------------------------------------------------------------------------------------------
# finding runs; sweep records and job folder names


def test_find_runs_order_skips_links_and_nothing_below_a_run(tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("10_seed=1", "9_seed=0", "b_other", "a_other"):
        _run_folder(sweep / name)
    _run_folder(sweep / "9_seed=0" / "checkpoints" / "inner")  # below a run: not another run
    _run_folder(sweep / ".hidden" / "run")
    _run_folder(sweep / "skipme" / "run")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "to9").symlink_to(sweep / "9_seed=0")
    (tmp_path / "links" / "again").symlink_to(sweep / "9_seed=0")  # the same run twice: listed once
    (sweep / "loop").symlink_to(sweep)  # a link loop is searched once
    names = [p.relative_to(sweep).as_posix() for p in runs.find_runs(sweep, skip=("skipme",))]
    assert names == ["9_seed=0", "10_seed=1", "a_other", "b_other"]
    assert runs.find_runs(tmp_path / "links") == [tmp_path / "links" / "again"]
    assert runs.find_runs(sweep / "9_seed=0") == [sweep / "9_seed=0"]  # the folder itself
    assert runs.find_runs(tmp_path / "nowhere") == []


def test_sweep_jobs_follow_the_record_then_the_search(tmp_path):
    sweep = tmp_path / "sweep"
    jobs_dir = sweep / runs.JOBS_DIR
    jobs_dir.mkdir(parents=True)
    for num, name, status in ((0, "0_a", "completed"), (2, "2_c", "failed"), (1, "1_b", None)):
        run = _run_folder(sweep / name)
        if status:
            runs.write_status(run, status, **({"error": "ValueError: bad\nsecond line"} if status == "failed" else {}))
        (jobs_dir / f"{num}.json").write_text(json.dumps({"num": num, "dir": name, "problem": ""}))
    (jobs_dir / "3.json").write_text(json.dumps({"num": 3, "dir": "0_a"}))  # the same folder again: listed once
    (jobs_dir / "4.json").write_text("{broken")  # an unreadable record is passed over
    (jobs_dir / "5.json").write_text(json.dumps({"dir": "x"}))  # so is one without a number
    runs.write_status(_run_folder(sweep / "old"), "completed")  # not in the record: found by the search
    (sweep / "0_a" / "metrics.json").write_text("[]")
    jobs = runs.sweep_jobs(sweep)
    assert [(j.num, j.name, j.status) for j in jobs] == [
        (0, "0_a", "unknown"), (1, "1_b", "unknown"), (2, "2_c", "failed"), (None, "old", "completed")]
    assert jobs[0].error == "metrics.json unreadable: not a JSON object"
    assert jobs[1].error == "no metrics.json (not started, still starting, or killed)"
    assert jobs[2].error == "ValueError: bad"
    assert [j.completed for j in jobs] == [False, False, False, True]
    assert [j.num for j in runs.sweep_jobs(sweep, search=False)] == [0, 1, 2]
    assert repr(jobs[3]) == "SweepJob(None, 'old', 'completed', '')"


def test_a_completed_job_with_a_problem_in_the_record_is_not_completed(tmp_path):
    sweep = tmp_path / "sweep"
    runs.write_status(_run_folder(sweep / "0_a"), "completed")
    (sweep / runs.JOBS_DIR).mkdir()
    (sweep / runs.JOBS_DIR / "0.json").write_text(json.dumps(
        {"num": 0, "dir": "0_a", "problem": "completed, but val/nll is nan: not a finite number to optimise"}))
    (job,) = runs.sweep_jobs(sweep)
    assert job.status == "completed" and not job.completed
    assert job.error == "completed, but val/nll is nan: not a finite number to optimise"


def test_job_folder_name_escapes_and_stays_short():
    assert runs.job_folder_name(3, "optimized_metric=val/ece,seed=0") == "3_optimized_metric=val%2Fece,seed=0"
    assert runs.job_folder_name(0, "a=100%,b=c\\d") == "0_a=100%25,b=c%5Cd"
    assert runs.job_folder_name(1, "x=a\nb\tc") == "1_x=a%0Ab%09c"
    assert runs.job_folder_name(2, None) == "2_" and runs.job_folder_name(2, "") == "2_"
    exact = "x" * 126
    assert runs.job_folder_name(7, exact) == "7_" + exact  # 128 bytes: kept whole
    long = "seed=0," + "y" * 200
    import hashlib

    digest = hashlib.sha1(long.encode()).hexdigest()[:8]
    name = runs.job_folder_name(12, long)
    assert len(name.encode()) == 128 and name == "12_" + long[: 128 - len(f"12_~{digest}")] + "~" + digest
    assert runs.job_folder_name(12, long, max_bytes=10) == "12_" + long[: 32 - 12] + "~" + digest  # 32 at least
    # never cut inside an escape: "a/" * 100 escapes to "a%2F" * 100; the prefix may not end in "%" or "%2"
    for n in range(40, 60):
        cut = runs.job_folder_name(1, "a/" * 100, max_bytes=n)
        prefix = cut[2: cut.index("~")]
        assert prefix.endswith(("a", "F")) and len(cut.encode()) <= n, cut
    # multi-byte characters are cut whole: 41 - len("1_~<8 hex>") = 30 bytes of 2-byte characters, then 29 bytes
    for n in (41, 42):
        cut = runs.job_folder_name(1, "é" * 100, max_bytes=n)
        assert cut[2: cut.index("~")] == "é" * 15 and len(cut.encode()) <= n


def test_job_folder_name_is_the_registered_resolver():
    from omegaconf import OmegaConf

    assert OmegaConf.create({"n": "${ceexp.job_folder:4,a/b}"}).n == "4_a%2Fb"


# ---------------------------------------------------------------------------------------------------------
# the failure policy's building blocks


def test_one_line():
    assert runs.one_line(ValueError("bad value\nmore")) == "ValueError: bad value"
    assert runs.one_line(KeyError()) == "KeyError"
    assert runs.one_line(RuntimeError("\n")) == "RuntimeError"
    assert runs.one_line(RuntimeError("  x  \n")) == "RuntimeError: x"


def test_failure_of_each_kind(tmp_path):
    from ceexp.validation import ConfigError

    cases = [
        (ConfigError("a=1 is invalid: expected b"),
         ("failed", "ConfigError: a=1 is invalid: expected b", "a=1 is invalid: expected b", 2, True)),
        (runs.RunInterrupted(tmp_path, 2),
         ("interrupted",
          f"RunInterrupted: stopped in epoch 2; continue with: python scripts/train.py resume={tmp_path}",
          f"stopped in epoch 2; continue with: python scripts/train.py resume={tmp_path}", 130, True)),
        (KeyboardInterrupt(),
         ("interrupted", "KeyboardInterrupt", f"stopped; continue with: python scripts/train.py resume={tmp_path}",
          130, True)),
        (OSError(errno.ENOSPC, "No space left on device", "/r/x.npz"),
         ("failed", "OSError: cannot write /r/x.npz: No space left on device",
          "cannot write /r/x.npz: No space left on device", 1, True)),
        (OSError(errno.EROFS, ""),
         ("failed", f"OSError: cannot write a file: {os.strerror(errno.EROFS)}",
          f"cannot write a file: {os.strerror(errno.EROFS)}", 1, True)),
        (FloatingPointError("nan loss at epoch 1\nmore"),
         ("failed", "FloatingPointError: nan loss at epoch 1",
          f"nan loss at epoch 1; the last good checkpoint is in {tmp_path / 'checkpoints'}", 1, True)),
        (OSError(errno.ENOENT, "No such file or directory", "/r/x"),  # not a write failure: a bug
         ("failed", "FileNotFoundError: [Errno 2] No such file or directory: '/r/x'",
          "FileNotFoundError: [Errno 2] No such file or directory: '/r/x'", 1, False)),
        (KeyError("test/acc"), ("failed", "KeyError: 'test/acc'", "KeyError: 'test/acc'", 1, False)),
    ]
    for error, expected in cases:
        f = runs.failure_of(error, tmp_path)
        assert (f.status, f.error, f.message, f.exit_code, f.expected) == expected, error
    assert repr(runs.failure_of(KeyError("k"), tmp_path)) == (
        "Failure('failed', \"KeyError: 'k'\", \"KeyError: 'k'\", 1, False)")
    assert (runs.EXIT_FAILED, runs.EXIT_CONFIG, runs.EXIT_INTERRUPTED) == (1, 2, 130)


def test_first_failure_looks_behind_a_failed_write_for_its_cause():
    cause = FloatingPointError("nan")
    try:
        try:
            raise cause
        except FloatingPointError:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as system:
                raise OSError(errno.ENOSPC, "No space left on device", "/r/metrics.json") from system
    except OSError as e:
        assert runs.first_failure(e) is cause
    plain = OSError(errno.ENOSPC, "full")
    assert runs.first_failure(plain) is plain  # nothing behind it
    other = ValueError("x")
    assert runs.first_failure(other) is other  # not a write: itself
    try:
        try:
            raise cause
        except FloatingPointError:
            raise OSError(errno.ENOSPC, "full") from None  # context suppressed: itself
    except OSError as e:
        assert runs.first_failure(e) is e


def test_remove_fresh_run_removes_only_hydras_own_record(tmp_path):
    fresh = _run_folder(tmp_path / "runs" / "2026-01-01" / "12-00-00_ce")
    (fresh / "train.log").write_text("")
    runs.remove_fresh_run(fresh)
    assert not (tmp_path / "runs").exists()  # the run, its date folder and runs/ were left empty
    kept = _run_folder(tmp_path / "runs" / "2026-01-01" / "12-00-00_ce")
    (kept / "metrics.json").write_text("{}")
    runs.remove_fresh_run(kept)
    assert (kept / "metrics.json").exists()
    sibling = _run_folder(tmp_path / "runs" / "2026-01-01" / "13-00-00_ce")
    runs.remove_fresh_run(sibling)
    assert not sibling.exists() and kept.exists()  # the date folder still holds a run: kept
    runs.remove_fresh_run(tmp_path / "missing")  # nothing to do


def test_run_job_returns_what_the_task_returns(tmp_path):
    run = _run_folder(tmp_path / "run")
    assert runs.run_job(lambda: {"val/nll": 0.5}, run, multirun=False) == {"val/nll": 0.5}
    assert not (run / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------------
# SweepRecord, in-process, with Hydra's own composed config and JobReturn (the sweep tests run it in a subprocess)


_SWEEP_CFGS: dict = {}


def _sweep_cfg(tmp_path: Path, num: int, overrides: tuple[str, ...] = ("loss=focal", "seed=1"), mode="MULTIRUN"):
    """configs/train.yaml composed as Hydra composes a sweep job: ``hydra.mode``, ``hydra.job.num``, the sweep
    folder ``<tmp_path>/sweep`` and the job folder ``<sweep>/<num>_job`` (composed once per overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from ceexp.validation import CONFIG_DIR

    key = (overrides, mode)
    if key not in _SWEEP_CFGS:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            _SWEEP_CFGS[key] = compose(config_name="train", overrides=[*overrides, f"hydra.mode={mode}"],
                                       return_hydra_config=True)
        GlobalHydra.instance().clear()
    cfg = OmegaConf.create(OmegaConf.to_container(_SWEEP_CFGS[key]))  # a copy (hydra.mode stays an enum's name)
    with open_dict(cfg):
        cfg.hydra.mode = _SWEEP_CFGS[key].hydra.mode
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        cfg.hydra.job.num = num
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / f"{num}_job")
        cfg.paths.root_dir = str(tmp_path / "root" / "outputs")
    return cfg


def _job_return(status: str, value):
    from hydra.core.utils import JobReturn, JobStatus

    job_return = JobReturn(status=JobStatus[status])
    job_return.return_value = value
    return job_return


def _record(tmp_path: Path, num: int) -> dict:
    return json.loads((tmp_path / "sweep" / runs.JOBS_DIR / f"{num}.json").read_text())


def test_sweep_record_writes_each_jobs_record_as_it_starts_and_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = runs.SweepRecord()
    cfg = _sweep_cfg(tmp_path, 3)
    record.on_job_start(cfg)  # the sweep folder does not exist yet: .jobs/ is made with it
    start = {"num": 3, "dir": "3_job", "overrides": ["loss=focal", "seed=1"]}
    assert _record(tmp_path, 3) == start
    (tmp_path / "sweep" / runs.JOBS_DIR / "3.json").write_text(json.dumps({**start, "problem": "old", "x": 1}))
    record.on_job_start(cfg)  # a job starting again starts a new record
    assert _record(tmp_path, 3) == start
    job = tmp_path / "sweep" / "3_job"
    job.mkdir()
    runs.write_status(job, "completed")
    ends = record.on_job_end(cfg, _job_return("COMPLETED", 0.25))
    assert ends is None and _record(tmp_path, 3) == {**start, "problem": "", "status": "completed"}
    # a record is updated: what it held before stays
    (tmp_path / "sweep" / runs.JOBS_DIR / "3.json").write_text(json.dumps({**start, "note": "kept"}))
    record.on_job_end(cfg, _job_return("COMPLETED", 0.25))
    assert _record(tmp_path, 3) == {**start, "note": "kept", "problem": "", "status": "completed"}
    (tmp_path / "sweep" / runs.JOBS_DIR / "3.json").write_text("{broken")  # an unreadable record is rewritten
    record.on_job_end(cfg, _job_return("COMPLETED", 0.25))
    assert _record(tmp_path, 3) == {**start, "problem": "", "status": "completed"}
    # the sweep folder given relative to the working folder: the job's folder is still named relative to it
    relative = _sweep_cfg(tmp_path, 4)
    relative.hydra.sweep.dir = "sweep"
    record.on_job_start(relative)
    assert _record(tmp_path, 4) == {"num": 4, "dir": "4_job", "overrides": ["loss=focal", "seed=1"]}


@pytest.mark.parametrize("status, metrics, value, metric, problem, handed", [
    ("COMPLETED", "completed", 0.25, "val/nll", "", 0.25),
    ("COMPLETED", "completed", 3, "val/nll", "", 3),
    ("COMPLETED", "completed", "a text", "val/nll", "", "a text"),  # not a number: the sweeper's business
    ("COMPLETED", "completed", True, "val/nll", "", True),
    ("COMPLETED", "completed", float("nan"), "val/nll",
     "completed, but val/nll is nan: not a finite number to optimise", None),
    ("COMPLETED", "completed", float("-inf"), "val/ece",
     "completed, but val/ece is -inf: not a finite number to optimise", None),
    ("COMPLETED", "completed", None, None,
     "completed, but the returned value is None: not a finite number to optimise", None),
    ("COMPLETED", "failed", None, "val/nll", "", None),  # metrics.json says what went wrong
    ("COMPLETED", None, 0.5, "val/nll", "", None),  # no metrics.json: not completed, the sweeper gets None
    ("FAILED", "running", ValueError("bad gamma"), "val/nll", "ValueError: bad gamma", "raises"),
    ("FAILED", None, "the launcher said no", "val/nll", "the launcher said no", "raises"),
])
def test_sweep_record_job_end_records_what_went_wrong_and_hands_the_sweeper_none(
        tmp_path, monkeypatch, capsys, status, metrics, value, metric, problem, handed):
    monkeypatch.chdir(tmp_path)
    cfg = _sweep_cfg(tmp_path, 0)
    cfg.optimized_metric = metric
    job = tmp_path / "sweep" / "0_job"
    job.mkdir(parents=True)
    if metrics:
        runs.write_status(job, metrics)
    job_return = _job_return(status, value)
    runs.SweepRecord().on_job_end(cfg, job_return)
    assert _record(tmp_path, 0) == {"num": 0, "dir": "0_job", "overrides": ["loss=focal", "seed=1"],
                                    "problem": problem, "status": metrics or "unknown"}
    if handed == "raises":  # Hydra raises the job's error when the sweeper asks for its value
        assert job_return._return_value is value
    elif isinstance(handed, float):
        assert job_return.return_value == handed
    else:
        assert job_return.return_value is handed
    capsys.readouterr()


def test_sweep_record_leaves_single_runs_and_configs_without_hydra_alone(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    record = runs.SweepRecord()
    for cfg in (_sweep_cfg(tmp_path, 0, mode="RUN"), OmegaConf.create({"seed": 0})):
        job_return = _job_return("COMPLETED", float("nan"))
        record.on_job_start(cfg)
        record.on_job_end(cfg, job_return)
        assert np.isnan(job_return.return_value)  # the value is the sweeper's to judge
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no record anywhere


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ceexp.validation import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _find_spec_without(monkeypatch, missing=(), broken=()):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in broken:
            raise ValueError(f"{name}.__spec__ is None")
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"
_OPTUNA_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@pytest.mark.parametrize("overrides, missing, broken, line", [
    (["hparams_search=focal_optuna"], ["optuna"], [], "hparams_search=focal_optuna needs the Optuna sweeper "
                                                     "(optuna not installed)"),
    (["hparams_search=focal_optuna"], ["optuna", _PLUGIN], [], "hparams_search=focal_optuna needs the Optuna "
                                                              "sweeper (optuna, hydra_optuna_sweeper not installed)"),
    (["hparams_search=focal_optuna"], [], [_PLUGIN], "hparams_search=focal_optuna needs the Optuna sweeper "
                                                    "(hydra_optuna_sweeper not installed)"),
    (["hydra/sweeper=optuna_study"], ["optuna"], [],
     f"hydra.sweeper {_OPTUNA_TARGET} needs the Optuna sweeper (optuna not installed)"),
    (["hparams_search=focal_optuna"], [], [], None),  # installed
    (["hparams_search=focal_optuna"], ["other_module"], [], None),
    (["loss=ce"], ["optuna", _PLUGIN], [], None),  # Hydra's own sweeper needs nothing
])
def test_sweep_record_refuses_a_sweeper_that_is_not_installed(
        tmp_path, monkeypatch, capsys, overrides, missing, broken, line):
    """One line and exit code 2 before anything is made (README: "pip install ceexp[sweeps]")."""
    from omegaconf import open_dict

    cfg = _compose([*overrides, f"paths.root_dir={tmp_path / 'root' / 'outputs'}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    # a table of several sweepers: each is checked against its own prefix
    monkeypatch.setattr(runs, "_SWEEPER_MODULES", {"hydra_plugins.other": ("other_module",), **runs._SWEEPER_MODULES})
    monkeypatch.setattr(runs.SweepRecord, "failed", ["old"])
    monkeypatch.setattr(runs.SweepRecord, "unfinished", None)
    _find_spec_without(monkeypatch, missing, broken)
    if line is None:
        runs.SweepRecord().on_multirun_start(cfg)
        assert (tmp_path / "root" / "outputs").is_dir()  # made before any job (an Optuna study is kept there)
        runs.SweepRecord().on_multirun_start(cfg)  # already there
        assert runs.SweepRecord.failed == [] and runs.SweepRecord.unfinished == str(tmp_path / "sweep")
        assert capsys.readouterr() == ("", "")
        with open_dict(cfg):
            del cfg.paths  # no output root to make
        runs.SweepRecord().on_multirun_start(cfg)
        return
    with pytest.raises(SystemExit) as info:
        runs.SweepRecord().on_multirun_start(cfg)
    assert info.value.code == 2
    assert capsys.readouterr() == ("", f'error: {line}: pip install "ceexp[sweeps]"\n')
    assert not (tmp_path / "root").exists() and runs.SweepRecord.failed == ["old"]


def _sweep_of_jobs(tmp_path: Path) -> Path:
    """A recorded sweep: 0_a completed, 1_b failed, 2_c completed with a problem, 3_d never wrote metrics.json,
    4_e interrupted without an error."""
    sweep = tmp_path / "sweep"
    (sweep / runs.JOBS_DIR).mkdir(parents=True)
    problems = {2: "completed, but val/nll is nan: not a finite number to optimise"}
    for num, (name, status) in enumerate(
            (("0_a", "completed"), ("1_b", "failed"), ("2_c", "completed"), ("3_d", None), ("4_e", "interrupted"))):
        run = _run_folder(sweep / name)
        if status:
            runs.write_status(run, status, **({"error": "ValueError: bad"} if status == "failed" else {}))
        (sweep / runs.JOBS_DIR / f"{num}.json").write_text(
            json.dumps({"num": num, "dir": name, "problem": problems.get(num, "")}))
    (sweep / "0_a" / "hparams.yaml").write_text("loss: focal\nlr: 0.001\n")
    return sweep


def _logged(caplog) -> list[tuple]:
    return [(r.name, r.levelname, r.getMessage()) for r in caplog.records]


_REPORT = [("ceexp", "ERROR", "4 of 5 jobs did not complete:"),
           ("ceexp", "ERROR", "  1_b: failed: ValueError: bad"),
           ("ceexp", "ERROR", "  2_c: completed: completed, but val/nll is nan: not a finite number to optimise"),
           ("ceexp", "ERROR", "  3_d: unknown: no metrics.json (not started, still starting, or killed)"),
           ("ceexp", "ERROR", "  4_e: interrupted")]


def test_sweep_record_reports_the_jobs_that_did_not_complete(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(runs.SweepRecord, "failed", ["old"])
    sweep = _sweep_of_jobs(tmp_path)
    with caplog.at_level(logging.INFO):
        jobs = runs.SweepRecord.report(str(sweep))
    assert [job.name for job in jobs] == ["0_a", "1_b", "2_c", "3_d", "4_e"]
    assert _logged(caplog) == _REPORT
    assert runs.SweepRecord.failed == [str(sweep / name) for name in ("1_b", "2_c", "3_d", "4_e")]
    caplog.clear()
    import shutil

    for name in ("1_b", "2_c", "3_d", "4_e"):
        (sweep / runs.JOBS_DIR / f"{name[0]}.json").unlink()
        shutil.rmtree(sweep / name)
    with caplog.at_level(logging.INFO):
        assert [job.name for job in runs.SweepRecord.report(sweep)] == ["0_a"]
    assert _logged(caplog) == [] and runs.SweepRecord.failed == []


def test_sweep_record_multirun_end_reports_and_writes_the_hparams_summary(tmp_path, monkeypatch, caplog):
    import logging

    from ceexp.tensorboard import SWEEP_SUMMARY_SUFFIX

    monkeypatch.setattr(runs.SweepRecord, "failed", [])
    monkeypatch.setattr(runs.SweepRecord, "unfinished", "somewhere")
    sweep = _sweep_of_jobs(tmp_path)
    cfg = _sweep_cfg(tmp_path, 0)
    with caplog.at_level(logging.INFO):
        runs.SweepRecord().on_multirun_end(cfg)
    assert runs.SweepRecord.unfinished is None and len(runs.SweepRecord.failed) == 4
    assert _logged(caplog) == _REPORT
    assert len(list(sweep.glob(f"events.out.tfevents.*{SWEEP_SUMMARY_SUFFIX}"))) == 1
    caplog.clear()

    def full(sweep_dir, jobs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import ceexp.tensorboard

    monkeypatch.setattr(ceexp.tensorboard, "write_sweep_hparams", full)
    with caplog.at_level(logging.INFO):
        runs.SweepRecord().on_multirun_end(cfg)  # the sweep's results stand without the summary
    assert _logged(caplog) == [*_REPORT, ("ceexp", "WARNING", "the sweep's HParams summary was not written: "
                                                              "OSError: [Errno 28] No space left on device")]


# ---------------------------------------------------------------------------------------------------------
# the failure policy in-process: run_hydra, run_job, what goes to the run's log file


def test_run_hydra_one_line_for_each_kind_of_failure(tmp_path, monkeypatch, capsys, caplog):
    from hydra.errors import HydraException, OverrideParseException

    def raises(e: BaseException, cause: BaseException | None = None):
        def hydra_main():
            assert (os.environ["HYDRA_FULL_ERROR"], os.environ["CEEXP_HYDRA_ERRORS"]) == ("1", "1")
            raise e from cause

        return hydra_main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("CEEXP_HYDRA_ERRORS", raising=False)
    monkeypatch.setattr(runs.SweepRecord, "unfinished", None)
    monkeypatch.setattr(runs.SweepRecord, "failed", [])
    cases = [
        (raises(OverrideParseException("x", "Error parsing override 'seed=['\nmore"), ValueError("bad value\nmore")),
         2, "error: Error parsing override 'seed=[' (bad value)"),
        (raises(HydraException("Error in override"), ValueError("  ")), 2, "error: Error in override"),
        (raises(HydraException("Error in override"), ValueError()), 2, "error: Error in override"),
        (raises(HydraException("")), 2, "error: HydraException"),
        (raises(ValueError("\n")), 2, "error: ValueError"),
        (raises(RuntimeError("launcher broke"), KeyError("k")), 1, "error: RuntimeError: launcher broke"),
    ]
    for hydra_main, code, line in cases:
        with pytest.raises(SystemExit) as info:
            runs.run_hydra(hydra_main)
        assert (info.value.code, capsys.readouterr().err.splitlines()) == (code, [line])
        assert "HYDRA_FULL_ERROR" not in os.environ and "CEEXP_HYDRA_ERRORS" not in os.environ
    # the sweeper failed after its jobs ran (Optuna: every trial failed): its jobs are listed, exit code 1
    monkeypatch.setattr(runs.SweepRecord, "unfinished", str(_sweep_of_jobs(tmp_path)))
    with pytest.raises(SystemExit) as info:
        runs.run_hydra(raises(ValueError("No trials are completed yet")))
    assert (info.value.code, capsys.readouterr().err) == (1, "error: ValueError: No trials are completed yet\n")
    assert caplog.records[0].getMessage() == "4 of 5 jobs did not complete:"
    monkeypatch.setattr(runs.SweepRecord, "unfinished", str(tmp_path / "empty"))  # no job ran: Hydra's own
    with pytest.raises(SystemExit) as info:
        runs.run_hydra(raises(ValueError("No trials are completed yet")))
    assert (info.value.code, capsys.readouterr().err) == (2, "error: No trials are completed yet\n")
    # what the user set is put back; a variable Hydra's function removed stays removed
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit):
        runs.run_hydra(raises(HydraException("x")))
    assert capsys.readouterr().err == "error: x\n"
    assert os.environ["HYDRA_FULL_ERROR"] == "0" and "CEEXP_HYDRA_ERRORS" not in os.environ
    runs.run_hydra(lambda: os.environ.pop("CEEXP_HYDRA_ERRORS"))
    assert os.environ["HYDRA_FULL_ERROR"] == "0" and "CEEXP_HYDRA_ERRORS" not in os.environ
    # HYDRA_FULL_ERROR=1 set by ceexp itself (a run_hydra inside run_hydra) still gives one line
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("CEEXP_HYDRA_ERRORS", "1")
    with pytest.raises(SystemExit) as info:
        runs.run_hydra(raises(HydraException("Error in override")))
    assert (info.value.code, capsys.readouterr().err) == (2, "error: Error in override\n")
    assert (os.environ["HYDRA_FULL_ERROR"], os.environ["CEEXP_HYDRA_ERRORS"]) == ("1", "1")


def _log_handler(run_dir: Path):
    import logging

    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(name)s|%(levelname)s|%(module)s|%(lineno)d|%(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


@pytest.mark.parametrize("multirun", [False, True])
def test_run_job_writes_the_log_file_and_the_console_line(tmp_path, capsys, caplog, multirun):
    import logging

    from ceexp.validation import ConfigError

    def raises(e):
        def task():
            raise e

        return task

    cases = [  # (error, metrics.json's error, the message, traceback in the log, the console line, the exit code)
        (KeyError("k"), "KeyError: 'k'", "KeyError: 'k'", True, "error: KeyError: 'k' (traceback in {log})", 1),
        (FloatingPointError("nan at epoch 2"), "FloatingPointError: nan at epoch 2",
         "nan at epoch 2; the last good checkpoint is in {ckpt}", False, "error: {message}", 1),
        (ConfigError("seed=x is invalid: expected an integer"), "ConfigError: seed=x is invalid: expected an integer",
         "seed=x is invalid: expected an integer", False, "error: {message}", 2),
    ]  # in a sweep the job's failure is logged, not printed
    for i, (error, recorded, message, traceback, line, code) in enumerate(cases):
        run_dir = _run_folder(tmp_path / str(i))
        runs.write_status(run_dir, "failed", error="OldError: an earlier attempt")  # resumed: a new record
        handler = _log_handler(run_dir)
        caplog.clear()
        try:
            with caplog.at_level(logging.INFO):
                if multirun:
                    assert runs.run_job(raises(error), run_dir, multirun=True) is None
                else:
                    with pytest.raises(SystemExit) as info:
                        runs.run_job(raises(error), run_dir, multirun=False, resumed=True)
                    assert info.value.code == code
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        message = message.format(ckpt=run_dir / "checkpoints")
        # the line of "job failed" (the sweep's log, not the run's own record) is where logging.error was called
        log = [re.sub(r"\|runs\|[1-9]\d*\|job failed", "|runs|N|job failed", x)
               for x in (run_dir / "train.log").read_text().splitlines()]
        tail = [f"ceexp|ERROR|runs|N|job failed: {message}" if multirun else f"ceexp|ERROR|runs|0|{message}"]
        if traceback:
            assert log[:2] == [f"ceexp|ERROR|runs|0|{recorded} (traceback below)", "Traceback (most recent call last):"]
            assert log[-2:] == [recorded, *tail]
        else:
            assert log == tail
        if multirun:
            assert _logged(caplog) == [("ceexp", "ERROR", f"job failed: {message}")]
            assert capsys.readouterr().err == ""
        else:
            assert capsys.readouterr().err == line.format(log=run_dir / "train.log", message=message) + "\n"
        if multirun or code != 2:
            assert runs.read_metrics(run_dir)["error"] == recorded
        else:  # a resumed run refused by its config keeps its record
            assert runs.read_metrics(run_dir)["error"] == "OldError: an earlier attempt"


def test_record_failure_on_a_full_disk_keeps_the_record_and_warns(tmp_path, monkeypatch, caplog):
    import logging

    import ceexp.files

    run_dir = _run_folder(tmp_path / "run")
    runs.write_status(run_dir, "running")
    before = (run_dir / "metrics.json").read_bytes()
    for error, reason in ((OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
                          (OSError("the quota"), "the quota")):
        def refuse(path, record, error=error):
            raise error

        monkeypatch.setattr(ceexp.files, "write_json", refuse)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert runs.run_job(lambda: 1 / 0, run_dir, multirun=True) is None
        assert _logged(caplog) == [
            ("ceexp", "WARNING", f"could not record the failure in {run_dir / 'metrics.json'}: {reason}"),
            ("ceexp", "ERROR", "job failed: ZeroDivisionError: division by zero")]
        assert (run_dir / "metrics.json").read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# the corners of the readers, writers and names


def test_job_folder_name_escapes_and_cuts_exactly():
    import hashlib

    assert runs.job_folder_name(1, "a\u2028b") == "1_a%E2%80%A8b"  # a multi-byte control character: every byte
    text = "a/" * 100
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    # 43 bytes leave 32 for the overrides: 8 whole escapes "a%2F" are kept; 42 and 41 would end inside one
    assert runs.job_folder_name(1, text, max_bytes=43) == "1_" + "a%2F" * 8 + "~" + digest
    assert runs.job_folder_name(1, text, max_bytes=42) == "1_" + "a%2F" * 7 + "a~" + digest
    assert runs.job_folder_name(1, text, max_bytes=41) == "1_" + "a%2F" * 7 + "a~" + digest
    text = "ab/" + "c" * 100  # an escape early on stays
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    assert runs.job_folder_name(1, text, max_bytes=40) == "1_ab%2F" + "c" * 24 + "~" + digest


def test_register_resolver_registers_once(monkeypatch):
    from omegaconf import OmegaConf

    try:
        OmegaConf.clear_resolver("ceexp.job_folder")
        runs._register_resolver()
        assert OmegaConf.create({"n": "${ceexp.job_folder:4,a/b}"}).n == "4_a%2Fb"
        runs._register_resolver()  # registered already (the module imported twice): no error
    finally:
        if not OmegaConf.has_resolver("ceexp.job_folder"):
            OmegaConf.register_new_resolver("ceexp.job_folder", runs.job_folder_name)


def test_resume_argv_of_a_job_folder_with_equals_in_its_name(tmp_path):
    run = _run_folder(tmp_path / "sweep" / "9_seed=0,loss=ce", ["seed=0", "loss=ce"])
    assert runs.resume_argv([f"resume={run}"]) == [
        "seed=0", "loss=ce", f"hydra.run.dir={run}", "hydra.output_subdir=null", f"resume={run.resolve()}"]


def test_checked_argv_remembers_what_it_checked(monkeypatch):
    monkeypatch.setattr(runs, "_checked_argv", set())
    assert runs.checked_argv(["--help"]) == ["--help"]
    assert runs._checked_argv == {("--help",)}
    assert runs.checked_argv(("--help",)) == ["--help"]  # remembered: a list again


def test_writers_store_float32_logits_and_int64_labels_from_any_input(tmp_path):
    import torch

    runs.write_predictions(tmp_path, torch.tensor([[0.5, 1.5]], dtype=torch.bfloat16), torch.tensor([2 ** 24 + 1]),
                           np.array([[1.0, 2.0]]), np.array([3], dtype=np.int32))
    out = runs.read_predictions(tmp_path)
    assert [out[k].dtype for k in ("val_logits", "val_labels", "test_logits", "test_labels")] == [
        np.float32, np.int64, np.float32, np.int64]
    np.testing.assert_array_equal(out["val_logits"], [[0.5, 1.5]])
    assert out["val_labels"].tolist() == [2 ** 24 + 1]  # exact: never through a float
    runs.write_ood_logits(tmp_path, {"noise": torch.ones(1, 2, requires_grad=True), "svhn": np.zeros((1, 2))})
    out = runs.read_ood_logits(tmp_path)
    assert (out["noise"].dtype, out["svhn"].dtype) == (np.float32, np.float32)


def test_read_metrics_names_the_system_error(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(ValueError) as info:
        runs.read_metrics(tmp_path)
    assert str(info.value) == f"metrics.json unreadable: [Errno 21] Is a directory: '{tmp_path / 'metrics.json'}'"


def test_remove_fresh_run_through_a_link_leaves_it(tmp_path):
    fresh = _run_folder(tmp_path / "fresh")
    (tmp_path / "link").symlink_to(fresh)
    runs.remove_fresh_run(tmp_path / "link")  # rmtree refuses a link: nothing is removed, nothing raised
    assert runs.is_run(fresh) and (tmp_path / "link").is_symlink()


def test_sweep_jobs_and_find_runs_corners(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    (sweep / runs.JOBS_DIR).mkdir(parents=True)
    records = [("a", {"num": 5, "dir": "b_run"}), ("b", "{broken"), ("c", {"num": 1, "dir": "b_run"}),
               ("d", {"num": 2, "dir": "a_run"}), ("e", {"num": 1, "dir": "b_run", "problem": ""}), ("f", {"num": 3, "dir": "c"}),
               ("g", {"num": 4})]
    for name, record in records:  # the broken record among the others, whatever the order of the folder
        (sweep / runs.JOBS_DIR / f"{name}.json").write_text(record if isinstance(record, str) else json.dumps(record))
    for name in ("a_run", "b_run", "z_run"):
        _run_folder(sweep / name)
    (sweep / "a_run" / "metrics.json").write_text('{"test/acc": 1.0}')  # no status
    (sweep / "c").mkdir()  # recorded, but not a run
    jobs = runs.sweep_jobs(sweep)
    # by number; b_run recorded again (1 twice, and 5) is listed once; a record without a folder is the sweep's own
    assert [(j.num, j.name, j.path, j.status) for j in jobs] == [
        (1, "b_run", sweep / "b_run", "unknown"), (2, "a_run", sweep / "a_run", "unknown"),
        (3, "c", sweep / "c", "unknown"), (4, "", sweep, "unknown"), (None, "z_run", sweep / "z_run", "unknown")]
    assert jobs[1].error == ""
    # the recorded runs first, in the record's order, then the others; a folder reached twice is searched once
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "1").symlink_to(sweep / "z_run")
    (tmp_path / "links" / "2").symlink_to(sweep / "z_run")
    (tmp_path / "links" / "3").symlink_to(sweep)
    searched = []
    real_is_run = runs.is_run
    monkeypatch.setattr(runs, "is_run", lambda p: searched.append(Path(p).resolve()) or real_is_run(p))
    assert runs.find_runs(tmp_path / "links") == [tmp_path / "links" / name for name in (
        "1", "3/b_run", "3/a_run")]
    # z_run, reached again through links/2 and links/3/z_run, is not searched again (the sweep's record is read
    # where the sweep is reached: its folders are asked once there, once by the walk)
    assert searched == [(tmp_path / "links").resolve(), *(sweep.resolve() / name for name in (
        "z_run", "", "b_run", "a_run", "c", "", "a_run", "b_run", "c"))]


def test_sweep_job_defaults():
    job = runs.SweepJob(0, Path("s/0_a"), "0_a", "completed")
    assert job.error == "" and job.completed
