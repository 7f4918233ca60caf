"""What a run publishes, recomputed independently: the temperature of ``metrics.json`` is the one fitted on the
validation split (refitted here from ``predictions.npz``), and ``balanced`` class weights are N / (C n_c) of the
training labels (counted here) in the objects a config builds and in the trained run.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from ceexp.calibration import TemperatureScaler
from ceexp.train import build_loss, train
from tests.conftest import FAST, make_cfg

IMBALANCED = ["data.imbalance_ratio=4"]  # class k keeps 4^(-k/9) of its training samples: weights far from 1


def _hand_balanced(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels.numpy(), minlength=n_classes)
    assert (counts > 0).all() and len(set(counts.tolist())) > 2  # imbalanced: the weights are not all 1
    return torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    """A real 2-epoch digits run (the fast config) with loss=weighted_ce on a long-tailed training split."""
    run_dir = tmp_path_factory.mktemp("published") / "run"
    cfg = make_cfg(run_dir, [*FAST, "loss=weighted_ce", *IMBALANCED])
    train(cfg)
    dm = instantiate(cfg.data)
    dm.setup()
    return run_dir, dm


def test_temperature_is_fitted_on_the_validation_split(weighted_run):
    run_dir, _ = weighted_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = np.load(run_dir / "predictions.npz")
    val = TemperatureScaler().fit(torch.from_numpy(saved["val_logits"]), torch.from_numpy(saved["val_labels"]))
    test = TemperatureScaler().fit(torch.from_numpy(saved["test_logits"]), torch.from_numpy(saved["test_labels"]))
    assert metrics["status"] == "completed"
    assert metrics["test/temperature"] == pytest.approx(val.temperature, rel=1e-6)
    assert float(saved["temperature"]) == pytest.approx(val.temperature, rel=1e-6)
    # the test split's own fit is another temperature (0.7% away in this run), a thousand times the tolerance
    # above: a fit on the wrong split would be seen
    assert abs(math.log(test.temperature / val.temperature)) > 1e-3, (test.temperature, val.temperature)
    # and test/ece_ts, test/nll_ts are the test split after the validation temperature
    logits = torch.from_numpy(saved["test_logits"]).double() / val.temperature
    nll = torch.nn.functional.cross_entropy(logits, torch.from_numpy(saved["test_labels"])).item()
    assert metrics["test/nll_ts"] == pytest.approx(nll, rel=1e-5)


def test_balanced_weights_reach_the_trained_loss(weighted_run):
    run_dir, dm = weighted_run
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["loss.weight"], _hand_balanced(dm.train_labels, dm.n_classes))


def test_weighted_ce_config_builds_cross_entropy_with_balanced_weights(tmp_path):
    cfg = make_cfg(tmp_path / "run", ["loss=weighted_ce", *IMBALANCED])
    dm = instantiate(cfg.data)
    dm.setup()
    loss = build_loss(cfg.loss, dm.train_labels, dm.n_classes)
    assert type(loss) is torch.nn.CrossEntropyLoss
    assert (loss.reduction, loss.label_smoothing, loss.ignore_index) == ("mean", 0.0, -100)
    torch.testing.assert_close(loss.weight, _hand_balanced(dm.train_labels, dm.n_classes))


def test_focal_alpha_balanced_config_builds_focal_with_balanced_weights(tmp_path):
    from ceexp.losses import FocalLoss

    cfg = make_cfg(tmp_path / "run", ["loss=focal", "loss.alpha=balanced", "loss.gamma=3", *IMBALANCED])
    dm = instantiate(cfg.data)
    dm.setup()
    loss = build_loss(cfg.loss, dm.train_labels, dm.n_classes)
    assert type(loss) is FocalLoss
    assert (loss.gamma, loss.reduction, loss.ignore_index) == (3.0, "mean", -100)
    torch.testing.assert_close(loss.alpha, _hand_balanced(dm.train_labels, dm.n_classes))
    # the weights act: with gamma 0 the loss is CE weighted by alpha_y, divided by N
    logits, target = torch.randn(6, dm.n_classes, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    expected = (loss.alpha[target] * ce).sum() / 6
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=loss.alpha)(logits, target), expected)


def test_balanced_needs_every_class_in_the_training_split(tmp_path):
    from ceexp.validation import ConfigError

    cfg = make_cfg(tmp_path / "run", ["loss=weighted_ce"])
    with pytest.raises(ConfigError, match="loss.weight=balanced is undefined: the training split lacks some of"):
        build_loss(cfg.loss, torch.tensor([0, 1, 1, 2]), 4)
