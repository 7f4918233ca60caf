"""End-to-end runs of ``train(cfg)`` on real data, with the event file read back."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ceexp.train import train
from ceexp.validation import ConfigError
from tests.conftest import ROOT

EPOCH_TAGS = [f"train/{k}" for k in ("loss_epoch", "nll")] + [
    f"val/{k}" for k in ("loss", "nll", "nll_bits", "acc", "ece", "mce", "adaece", "cwece", "brier", "confidence")
]
TEST_TAGS = [f"test/{k}" for k in ("loss", "nll", "nll_bits", "acc", "ece", "mce", "adaece", "cwece", "brier",
                                    "confidence", "temperature", "ece_ts", "nll_ts", "acc_ts")]


def read_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def focal_run(tmp_path_factory):
    """One real 2-epoch run of the focal loss on digits; returns (metrics, run_dir)."""
    from tests.conftest import FAST, make_cfg

    run_dir = tmp_path_factory.mktemp("focal") / "run"
    cfg = make_cfg(run_dir, [*FAST, "loss=focal", "loss.gamma=3"])
    return train(cfg), run_dir


def test_run_leaves_all_files(focal_run):
    metrics, run_dir = focal_run
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed"
    for tag in EPOCH_TAGS + TEST_TAGS:
        assert isinstance(on_disk[tag], float) and math.isfinite(on_disk[tag]), tag
    assert on_disk == pytest.approx(metrics)


def test_event_file_has_every_tag(focal_run):
    metrics, run_dir = focal_run
    events = read_events(run_dir)
    scalars = set(events.Tags()["scalars"])
    missing = {"train/loss", *EPOCH_TAGS, *TEST_TAGS} - scalars
    assert not missing
    # per step: 1077 training samples / batch 64 = 17 steps an epoch, logged every 5 steps
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(steps) and len(steps) >= 6
    # per epoch: one value per epoch
    assert len(events.Scalars("val/nll")) == 2
    assert "val/reliability_diagram" in events.Tags()["images"]
    # the logged final values are those of metrics.json
    assert events.Scalars("test/ece")[-1].value == pytest.approx(metrics["test/ece"], rel=1e-6)


def test_hparams_register_final_metrics(focal_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics, run_dir = focal_run
    events = read_events(run_dir)
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"test/acc", "test/nll", "test/ece", "test/ece_ts", "val/nll"} <= metric_tags
    assert "hp_metric" not in metric_tags
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["loss.gamma"].number_value == 3.0
    assert start.hparams["loss"].string_value == "focal"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)


def test_val_nll_is_cross_entropy_not_the_focal_objective(focal_run):
    metrics, run_dir = focal_run
    # the focal objective (gamma=3) is far below the cross-entropy of the same predictions
    assert metrics["val/loss"] < 0.8 * metrics["val/nll"]
    assert metrics["val/nll_bits"] == pytest.approx(metrics["val/nll"] / math.log(2), rel=1e-6)
    assert metrics["test/acc_ts"] == pytest.approx(metrics["test/acc"])


def test_test_metrics_recomputed_from_checkpoint(focal_run):
    """Reload last.ckpt, predict the test split in float64 numpy, and recompute acc, NLL and Brier."""
    from hydra.utils import instantiate

    from ceexp.data import DigitsDataModule
    from ceexp.models import MLP

    metrics, run_dir = focal_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    dm = DigitsDataModule(**{k: v for k, v in hp["data"].items() if k != "_target_"})
    dm.setup()
    model = MLP(dm.input_shape, dm.n_classes, hp["model"]["hidden_sizes"], hp["model"]["dropout"])
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    with torch.no_grad():
        z = model(dm.x_test).double().numpy()
    y = dm.y_test.numpy()
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    assert metrics["test/acc"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-6)
    assert metrics["test/nll"] == pytest.approx(-logp[np.arange(len(y)), y].mean(), rel=1e-4)
    onehot = np.eye(dm.n_classes)[y]
    assert metrics["test/brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-4)
    T = metrics["test/temperature"]
    zt = z / T
    logpt = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))
    assert metrics["test/nll_ts"] == pytest.approx(-logpt[np.arange(len(y)), y].mean(), rel=1e-4)


@pytest.mark.parametrize("loss", ["ce", "smoothed", "focal_sd53", "mse", "weighted_ce"])
def test_every_loss_runs(fast_cfg, loss):
    metrics = train(fast_cfg(f"loss={loss}", "trainer.max_epochs=1", "logger=none"))
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] > 0.5
    assert math.isfinite(metrics["test/nll"])


def test_breast_cancer_binary_with_float_alpha(fast_cfg):
    metrics = train(fast_cfg("data=breast_cancer", "loss=focal", "loss.alpha=0.25", "logger=none"))
    assert metrics["test/acc"] > 0.8


@pytest.mark.parametrize(
    "override, field",
    [
        ("loss.gamma=-1", "loss.gamma"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing"),
        ("loss.alpha=[0.5,0.5]", "loss.alpha"),  # 2 weights for 10 classes
        ("loss.alpha=0.25", "loss.alpha"),  # float alpha with 10 classes
        ("n_bins=0", "n_bins"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.label_noise=1.5", "data.label_noise"),
    ],
)
def test_bad_config_stops_before_training(fast_cfg, override, field, tmp_path):
    loss = ["loss=smoothed"] if "label_smoothing" in override else ["loss=focal"]
    cfg = fast_cfg(*loss, override)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_unknown_choice_lists_choices(tmp_path):
    proc = _cli("loss=focla", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: loss=focla is not a known choice: expected one of ce, focal, focal_sd53, mse, smoothed, weighted_ce"
    )
    assert not (tmp_path / "outputs").exists()


def test_cli_bad_value_one_line_exit_2(tmp_path):
    proc = _cli("loss=focal", "loss.gamma=-1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: loss.gamma=-1 is invalid: expected a number >= 0"]
