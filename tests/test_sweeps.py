"""Real Hydra multiruns: folder layout, job records and failures, parallel launcher, HParams and layout per job and
per sweep (read back with TensorBoard's own plugins), Optuna with sqlite and failed trials, the sweeps extra."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import ROOT
from tests.test_tensorboard import chart_tags, domain, experiment_of

SCRIPT = str(ROOT / "scripts" / "train.py")
QUICK = ["trainer.max_epochs=1", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
         "diagram_every_n_epochs=0", "data.batch_size=256"]


def _run(args: list[str], cwd: Path, timeout: int = 300, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def _jobs(sweep: Path) -> list[Path]:
    """The sweep's job folders: every folder holding .hydra/, at any depth."""
    return sorted((p.parent for p in sweep.rglob(".hydra")), key=lambda p: int(p.name.split("_", 1)[0]))


@pytest.mark.slow  # a real sweep of its own (~10-20 s): make test-slow
def test_two_sweeps_started_together_get_two_folders(tmp_path):
    cmd = [sys.executable, SCRIPT, "-m", "loss=ce", *QUICK, "logger=none", f"paths.root_dir={tmp_path}/outputs"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for sweep in sweeps:
        jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert len(jobs) == 1 and jobs[0].name.startswith("0_") and "root_dir" not in jobs[0].name
        assert json.loads((jobs[0] / "metrics.json").read_text())["status"] == "completed"


def test_slash_and_long_overrides_flat_folders_every_job_listed(tmp_path):
    """``optimized_metric=val/ece`` and a path value would nest job folders, and a 10-class alpha list makes a name
    longer than a file name may be: every job gets one flat folder, named by its number, and the failed job (its
    alpha has a negative weight) is listed at the end (exit code 1)."""
    sweep = tmp_path / "sweep"
    alpha = "[" + ",".join(f"{0.1 + 1e-9 * k:.12f}" for k in range(9)) + ",-0.000000000001]"
    overrides = ["loss=focal", f"loss.alpha=null,{alpha}", "optimized_metric=val/ece", "paths.root_dir=runs/a/../b"]
    quick = [*QUICK, "logger=none"]  # not in the folder names, so that the names are the overrides above
    unnamed = ",".join(["resume", "data.root", *(q.split("=")[0] for q in quick)])  # paths.root_dir named
    proc = _run(["-m", *overrides, *quick, f"hydra.sweep.dir={sweep}",
                 f"hydra.job.config.override_dirname.exclude_keys=[{unnamed}]"], tmp_path, code=1)
    jobs = _jobs(sweep)
    assert [j.parent for j in jobs] == [sweep] * 2  # flat: no job below another folder
    short, long = jobs
    for job in jobs:
        assert len(job.name.encode()) <= 128 and "/" not in job.name
        lines = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert "optimized_metric=val/ece" in lines and "paths.root_dir=runs/a/../b" in lines  # the full overrides
    # short enough: the overrides, '/' escaped
    assert short.name == "0_loss.alpha=null,loss=focal,optimized_metric=val%2Fece,paths.root_dir=runs%2Fa%2F..%2Fb"
    assert json.loads((short / "metrics.json").read_text())["status"] == "completed"
    # too long: the number, the start of the overrides and a hash of them all
    assert long.name.startswith("1_loss.alpha=[0.1") and len(long.name.encode()) == 128
    import hashlib

    lines = yaml.safe_load((long / ".hydra" / "overrides.yaml").read_text())
    named = sorted(line for line in lines if line.split("=", 1)[0] not in unnamed.split(","))  # Hydra's order
    assert len(named) == 4 and named[0].startswith("loss.alpha=[0.1,") and named[0].endswith(",-1e-12]")
    assert long.name.rsplit("~", 1)[1] == hashlib.sha1(",".join(named).encode()).hexdigest()[:8]
    record = json.loads((long / "metrics.json").read_text())
    assert record["status"] == "failed" and "loss.alpha" in record["error"]
    # the sweep's record lists what Hydra launched, and the end of the sweep lists the failure
    records = [json.loads((sweep / ".jobs" / f"{k}.json").read_text()) for k in range(2)]
    assert [sweep / r["dir"] for r in records] == jobs
    log = proc.stdout + proc.stderr
    assert "1 of 2 jobs did not complete" in log
    assert f"  {long.name}: failed: {record['error']}" in log


@pytest.mark.slow  # a real sweep of its own (~10-20 s): make test-slow
def test_joblib_sweep_each_job_has_its_run_hparams_and_layout(tmp_path):
    sweep = tmp_path / "sweep"
    _run(["-m", "loss=ce,focal", "seed=0,1", "hydra/launcher=joblib", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = _jobs(sweep)
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1", "2", "3"]
    assert all("seed=" in j.name and "loss=" in j.name for j in jobs)
    metric_tags = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        metric_tags |= {k for k, v in metrics.items() if "/" in k and not k.startswith("time/")
                        and isinstance(v, (float, int, type(None)))}
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        loss = "focal" if "loss=focal" in job.name else "ce"
        events = EventAccumulator(str(job), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")
        assert "_hparams_/experiment" not in content  # the sweep's, below
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        assert hparams["loss"].string_value == loss and hparams["seed"].number_value == config.seed
        # hparams.yaml: the HParams tab's values, as the config has them
        written = yaml.safe_load((job / "hparams.yaml").read_text())
        assert written["loss"] == loss and written["seed"] == config.seed
        assert written["optimizer.lr"] == config.optimizer.lr and written["n_bins"] == config.n_bins
        if loss == "focal":
            assert written["loss.gamma"] == config.loss.gamma
        assert set(written) == set(hparams)
        assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"], rel=1e-6)
        assert "custom_scalars__config__" in events.Tags()["tensors"]
    # the Custom Scalars charts of a real run: cross-entropy is train/nll and val/nll, not val/nll_bits
    charts = chart_tags(sweep)[jobs[0].name]
    assert charts["cross-entropy (nats): train vs validation"] == {"train/nll", "val/nll"}
    # the sweep's HParams experiment, as TensorBoard serves it for the sweep folder
    experiment = experiment_of(sweep)
    infos = {i.name: i for i in experiment.hparam_infos}
    assert infos["loss"].differs and domain(infos["loss"]) == {"ce", "focal"}
    assert infos["seed"].differs and not infos["data"].differs and not infos["optimizer.lr"].differs
    assert {m.name.tag for m in experiment.metric_infos} == metric_tags
    assert "loss" in [i.name for i in experiment_of(sweep, hparams_limit=5).hparam_infos]


@pytest.mark.promise
def test_optuna_failed_and_non_finite_trials_do_not_stop_the_study(tmp_path):
    """A real study of 3 trials over gamma in {-1, 2} and optimized_metric in {val/nll, val/nope}: gamma=-1 fails
    validation, val/nope is no metric (NaN). Those trials are FAIL in the study, which goes on; the others are
    COMPLETE with the job's val/nll; the failures are listed at the end, exit code 1."""
    optuna = pytest.importorskip("optuna")
    # sampler seed 13 draws: fail, non-finite, complete (checked below from what ran)
    proc = _run(["hparams_search=focal_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=13",
                 "loss.gamma=-1,2", "optimized_metric=val/nll,val/nope", *QUICK, "logger=none",
                 f"paths.root_dir={tmp_path}/outputs"], tmp_path, code=1)
    db = tmp_path / "outputs" / "optuna.db"
    study = optuna.load_study(study_name="focal_optuna", storage=f"sqlite:///{db}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 3  # the first failure did not end the study
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = _jobs(sweep)
    assert len(jobs) == 3
    outcomes = []
    for trial, job in zip(trials, jobs):
        overrides = dict(line.split("=", 1) for line in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert float(overrides["loss.gamma"]) == trial.params["loss.gamma"]
        assert overrides["optimized_metric"] == trial.params["optimized_metric"]
        metrics = json.loads((job / "metrics.json").read_text())
        if trial.params["loss.gamma"] == -1:
            outcome = "failed"
            assert metrics["status"] == "failed" and trial.state == optuna.trial.TrialState.FAIL
        elif trial.params["optimized_metric"] == "val/nope":
            outcome = "non-finite"
            assert metrics["status"] == "completed" and trial.state == optuna.trial.TrialState.FAIL
        else:
            outcome = "complete"
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(metrics["val/nll"], rel=1e-9)
            assert 1e-4 <= trial.params["optimizer.lr"] <= 1e-2
        outcomes.append(outcome)
    assert outcomes[0] != "complete" and {"failed", "non-finite", "complete"} <= set(outcomes)
    bad = [job.name for job, o in zip(jobs, outcomes) if o != "complete"]
    log = proc.stdout + proc.stderr
    assert f"{len(bad)} of 3 jobs did not complete" in log
    for job, outcome in zip(jobs, outcomes):
        if outcome == "non-finite":
            assert f"  {job.name}: completed: completed, but val/nope is nan" in log
        elif outcome == "failed":
            assert f"  {job.name}: failed: ConfigError: loss.gamma=-1" in log
    best = min((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert study.best_trial.number == best.number


def _site_without(tmp_path: Path, hidden: tuple[str, ...]) -> Path:
    """A view of this environment's site-packages (symbolic links) without the distributions in ``hidden``."""
    import site

    (packages,) = [Path(p) for p in site.getsitepackages() if (Path(p) / "hydra").is_dir()]
    view = tmp_path / "site"
    (view / "hydra_plugins").mkdir(parents=True)
    for entry in packages.iterdir():
        if entry.name.lower().startswith(hidden) or entry.name == "hydra_plugins" or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)
    for entry in (packages / "hydra_plugins").iterdir():
        if not entry.name.startswith(hidden):
            (view / "hydra_plugins" / entry.name).symlink_to(entry)
    return view


def test_optuna_search_without_the_sweeps_extra_says_how_to_install_it(tmp_path):
    view = _site_without(tmp_path, ("optuna", "hydra_optuna_sweeper"))
    env = {**os.environ, "PYTHONPATH": f"{view}{os.pathsep}{ROOT}", "PYTHONNOUSERSITE": "1"}
    probe = subprocess.run([sys.executable, "-S", "-c", "import hydra, torch, ceexp.runs; import optuna"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert "No module named 'optuna'" in probe.stderr  # the view works, and hides the extra
    proc = subprocess.run([sys.executable, "-S", SCRIPT, "hparams_search=focal_optuna", *QUICK,
                           f"paths.root_dir={tmp_path}/outputs"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        'error: hparams_search=focal_optuna needs the Optuna sweeper (optuna, hydra_optuna_sweeper not installed): '
        'pip install "ceexp[sweeps]"']
    assert not (tmp_path / "outputs").exists()


def test_the_sweeps_extra_holds_optuna_and_its_pins():
    """Installing ceexp never downgrades SQLAlchemy: the Optuna sweeper and its pins are the extra ceexp[sweeps],
    which the Makefile installs."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert not base & {"sqlalchemy", "alembic", "optuna", "hydra-optuna-sweeper"}
    assert {"pandas", "hydra-core", "hydra-joblib-launcher"} <= base
    sweeps = {Requirement(r).name.lower(): Requirement(r) for r in project["optional-dependencies"]["sweeps"]}
    assert set(sweeps) == {"hydra-optuna-sweeper", "sqlalchemy", "alembic"}
    assert not sweeps["sqlalchemy"].specifier.contains("2.0") and sweeps["sqlalchemy"].specifier.contains("1.4.54")
    assert not sweeps["alembic"].specifier.contains("1.14.0")
    assert '-e ".[test,sweeps]"' in (ROOT / "Makefile").read_text()


@pytest.mark.promise
def test_optuna_study_whose_every_trial_fails_lists_them_and_exits_1(tmp_path):
    """Every trial fails (gamma < 0 is refused in each): the sweeper's own end (it asks the study for its best
    trial, and there is none) still lists each failed job, and the exit code is 1, as for any sweep with failures."""
    optuna = pytest.importorskip("optuna")
    proc = _run(["hparams_search=focal_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=1",
                 "loss.gamma=-1,-2", *QUICK, "logger=none", f"paths.root_dir={tmp_path}/outputs"], tmp_path, code=1)
    study = optuna.load_study(study_name="focal_optuna", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = _jobs(sweep)
    log = proc.stdout + proc.stderr
    assert "2 of 2 jobs did not complete" in log
    for job in jobs:
        assert f"  {job.name}: failed: ConfigError: loss.gamma=" in log
    # the sweeper's own error (sqlite storage: "Record does not exist.") in one line after the list
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
