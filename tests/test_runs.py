"""ceexp.runs without training: resume= handling, statuses, the readers' error paths, sweep records and names.

The failure policy itself (run_job, one line, exit codes) is tested in tests/test_faults.py's ``test_policy_*``;
here its building blocks (failure_of, first_failure, one_line, remove_fresh_run) and every branch they take.
Expected values are written out by hand.
"""
from __future__ import annotations

import errno
import json
import os
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
