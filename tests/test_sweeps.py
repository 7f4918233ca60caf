"""Real Hydra multiruns: folder layout, parallel launcher, HParams and layout per job, Optuna with sqlite."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "train.py")
QUICK = ["trainer.max_epochs=1", "callbacks.progress_bar=null", "diagram_every_n_epochs=0", "data.batch_size=256"]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_sweeps_started_together_get_two_folders(tmp_path):
    cmd = [sys.executable, SCRIPT, "-m", "loss=ce", *QUICK, "logger=none", f"paths.root_dir={tmp_path}/outputs"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for sweep in sweeps:
        jobs = [p for p in sweep.iterdir() if p.is_dir()]
        assert len(jobs) == 1 and jobs[0].name.startswith("0_") and "root_dir" not in jobs[0].name
        assert json.loads((jobs[0] / "metrics.json").read_text())["status"] == "completed"


def test_joblib_sweep_each_job_has_its_run_hparams_and_layout(tmp_path):
    sweep = tmp_path / "sweep"
    _run(["-m", "loss=ce,focal", "seed=0,1", "hydra/launcher=joblib", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1", "2", "3"]
    assert all("seed=" in j.name and "loss=" in j.name for j in jobs)
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        events = EventAccumulator(str(job), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {"test/acc", "test/ece", "val/nll"} <= {m.name.tag for m in experiment.metric_infos}
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["loss"].string_value == ("focal" if "loss=focal" in job.name else "ce")
        assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"], rel=1e-6)
        assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_optuna_search_with_sqlite_storage(tmp_path):
    optuna = pytest.importorskip("optuna")
    _run(["hparams_search=focal_optuna", "hydra.sweeper.n_trials=2", *QUICK, "logger=none",
          f"paths.root_dir={tmp_path}/outputs"], tmp_path)
    db = tmp_path / "outputs" / "optuna.db"
    study = optuna.load_study(study_name="focal_optuna", storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    returned = sorted(json.loads(p.read_text())["val/nll"] for p in jobs)
    assert sorted(t.value for t in trials) == pytest.approx(returned)
    for t in trials:
        assert 0 <= t.params["loss.gamma"] <= 5 and 1e-4 <= t.params["optimizer.lr"] <= 1e-2
