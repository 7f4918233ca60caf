"""calibration=[...] in a real run: every calibrator is fitted on the validation split (refitted here from the run's
own predictions.npz, independently) and its test metrics are test/<metric>_<method> in metrics.json and TensorBoard;
a calibrator the split cannot fit is left out in one line while the others run; a bad name is a config error."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ceexp.calibration import CALIBRATORS, HistogramBinner, IsotonicCalibrator, VectorScaler
from ceexp.metrics import expected_calibration_error
from ceexp.train import train
from ceexp.validation import CALIBRATION_METHODS
from tests.conftest import ROOT


def test_the_config_knows_every_calibrator():
    assert tuple(CALIBRATORS) == CALIBRATION_METHODS


def test_each_calibrator_is_fitted_on_validation_and_reported_on_test(fast_cfg):
    cfg = fast_cfg("calibration=[temperature,vector,histogram,isotonic]")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    with np.load(run / "predictions.npz") as f:
        val = torch.from_numpy(f["val_logits"]), torch.from_numpy(f["val_labels"])
        test = torch.from_numpy(f["test_logits"]), torch.from_numpy(f["test_labels"])
    for name, cls in (("vector", VectorScaler), ("histogram", HistogramBinner), ("isotonic", IsotonicCalibrator)):
        probs = cls().fit(*val).log_probs(test[0]).double().softmax(dim=1)
        assert metrics[f"test/ece_{name}"] == pytest.approx(expected_calibration_error(probs, test[1]).item(), abs=1e-6)
        acc = (probs.argmax(1) == test[1]).double().mean().item()
        assert metrics[f"test/acc_{name}"] == pytest.approx(acc, abs=1e-9)
        # fitted on the test split instead, the numbers would differ: the test above pins the split
        leaked = cls().fit(*test).log_probs(test[0]).double().softmax(dim=1)
        assert expected_calibration_error(leaked, test[1]).item() != pytest.approx(metrics[f"test/ece_{name}"], abs=1e-6)
    assert "test/ece_ts" in metrics and "test/ece_temperature" not in metrics  # temperature keeps its _ts tags
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert acc.Scalars("test/ece_isotonic")[-1].value == pytest.approx(metrics["test/ece_isotonic"], rel=1e-6)


def test_a_calibrator_the_split_cannot_fit_is_left_out_and_the_run_completes(fast_cfg, caplog):
    # 5% of digits' 1,437 training-and-validation samples is 72: enough for vector scaling (2C = 20), not for
    # histogram binning (one parameter per class and bin: 150)
    cfg = fast_cfg("calibration=[temperature,vector,histogram]", "data.val_fraction=0.05", "trainer.max_epochs=1",
                   "logger=none")
    with caplog.at_level(logging.WARNING, logger="ceexp"):
        metrics = train(cfg)
    assert metrics["status"] == "completed"
    assert "test/ece_vector" in metrics and "test/ece_histogram" not in metrics
    (line,) = [r.getMessage() for r in caplog.records if "histogram skipped" in r.getMessage()]
    assert "\n" not in line and "fewer than the 150 that histogram binning needs" in line


def test_unknown_calibrator_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "calibration=[temperature,platt]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: calibration=['temperature', 'platt'] is invalid: expected a list of "
                                   "calibrators, each one of temperature, vector, matrix, dirichlet, histogram, "
                                   "isotonic")
