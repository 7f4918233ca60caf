"""Verdicts on a real sweep: two groups trained two mathematically identical ways come out tied, and two
clearly different groups come out significantly different.

Cross-entropy and focal loss with gamma = 0 are the same objective (FocalLoss docstring; Lin et al. 2017), so
their runs differ only by floating-point summation order; label smoothing 0.3 makes a model under-confident
(its ECE far above cross-entropy's). The reference numbers are recomputed here from the jobs' metrics.json
with scipy and statsmodels, not taken from the code under test.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ceexp.compare import main
from tests.conftest import ROOT

FAST = ["trainer.max_epochs=3", "data.batch_size=32", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false", "diagram_every_n_epochs=0"]
SEEDS = "seed=0,1,2"


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    a, b = root / "ce_and_smoothing", root / "focal_gamma_0"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # loss.label_smoothing is not a key of loss=ce: the smoothed jobs are a sweep of their own, beside it
    commands = [["loss=ce", SEEDS, f"hydra.sweep.dir={a}/ce"],
                ["loss=smoothed", "loss.label_smoothing=0.3", SEEDS, f"hydra.sweep.dir={a}/smoothed"],
                ["loss=focal", "loss.gamma=0", SEEDS, f"hydra.sweep.dir={b}"]]
    procs = [subprocess.Popen([sys.executable, "scripts/train.py", "-m", *FAST, *c], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    for p in procs:
        out = p.communicate(timeout=900)[0]
        assert p.returncode == 0, out[-3000:]
    return a, b


def _values(folder: Path, tag: str) -> dict[str, float]:
    """seed -> the tag's value in each job's metrics.json under ``folder``."""
    out = {}
    for metrics in folder.glob("**/metrics.json"):
        seed = next(o for o in (metrics.parent / ".hydra" / "overrides.yaml").read_text().split() if "seed=" in o)
        out[seed.split("=")[1]] = json.loads(metrics.read_text())[tag]
    return out


@pytest.mark.promise  # two real sweeps, ~20 s: run by CI with the other promises (make test-promises)
def test_identical_training_ties_and_different_training_is_significant(sweep_dirs, tmp_path):
    a, b = sweep_dirs
    assert main([str(a), str(b), "--metrics", "ece", "nll", "acc", "--ref", "loss=ce"]) == 0
    rows = {r["group"]: r for r in csv.DictReader((a / "comparison.csv").open())}
    ce, focal0, smoothed = (next(r for g, r in rows.items() if g.startswith(f"loss={name}"))
                            for name in ("ce", "focal", "smoothed"))

    # the same model trained two identical ways: a difference of nothing, not significant
    for tag in ("test/ece", "test/nll", "test/acc"):
        assert abs(float(focal0[f"{tag}_diff"])) < 1e-3, tag
        # (the runs differ by float32 rounding of the summation order: up to 1e-6)
        assert float(focal0[f"{tag}_diff_ci_low"]) <= 1e-6 and float(focal0[f"{tag}_diff_ci_high"]) >= -1e-6, tag
        assert float(focal0[f"{tag}_p"]) > 0.05, tag  # 1 where every pair of runs is equal

    # label smoothing 0.3: far less confident, an ECE clearly above cross-entropy's
    assert float(smoothed["test/ece_diff_ci_low"]) > 0
    assert float(smoothed["test/ece_p"]) < 0.05
    assert smoothed["test/ece_mark"] == ""
    assert {ce["test/ece_mark"], focal0["test/ece_mark"]} <= {"best", "tied"}
    assert ce["test/ece_mark"] == focal0["test/ece_mark"] == "tied"  # the two identical groups cannot be split

    # the p-values recomputed: paired t-tests by seed against cross-entropy, Holm across the two groups
    ref = _values(a / "ce", "test/ece")
    seeds = sorted(ref)
    raw = [stats.ttest_rel([_values(d, "test/ece")[s] for s in seeds], [ref[s] for s in seeds]).pvalue
           for d in (b, a / "smoothed")]
    holm = multipletests(raw, method="holm")[1]
    assert float(focal0["test/ece_p"]) == pytest.approx(holm[0], rel=1e-6)
    assert float(smoothed["test/ece_p"]) == pytest.approx(holm[1], rel=1e-6)
    # the group means are those of the runs
    assert float(smoothed["test/ece_mean"]) == pytest.approx(np.mean(list(_values(a / "smoothed", "test/ece").values())))
