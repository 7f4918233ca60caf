"""End-to-end runs of ``train(cfg)`` on real data, with the event file read back."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
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
    """The run's HParams session and hparams.yaml hold its hyperparameters; its final metrics are scalars of the
    run, from which TensorBoard fills the HParams metric columns (a sweep lists them in its own summary). No
    experiment summary per run: TensorBoard would take one run's for the whole folder."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics, run_dir = focal_run
    events = read_events(run_dir)
    content = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in content
    scalars = set(events.Tags()["scalars"])
    assert {"test/acc", "test/nll", "test/ece", "test/ece_ts", "val/nll"} <= scalars and "hp_metric" not in scalars
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["loss.gamma"].number_value == 3.0
    assert start.hparams["loss"].string_value == "focal"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    written = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert (written["loss"], written["loss.gamma"], written["optimizer.lr"]) == ("focal", 3.0, pytest.approx(1e-3))
    assert set(written) == set(start.hparams)



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
        "error: loss=focla is not a known choice: expected one of adafocal, bce, ce, confidence_penalty, dca, "
        "dual_focal, focal, focal_scheduled, focal_sd53, mbls, mmce, mse, poly1, sigmoid_focal, smoothed, weighted_ce"
    )
    assert not (tmp_path / "outputs").exists()


def test_cli_bad_value_one_line_exit_2(tmp_path):
    proc = _cli("loss=focal", "loss.gamma=-1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: loss.gamma=-1 is invalid: expected a number >= 0"]


def _softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_predictions_file_recomputes_the_run(focal_run):
    """predictions.npz holds the validation and test logits of the tested model: float32 / int64, the labels
    of the split, the temperature of metrics.json; accuracy and NLL recomputed from it in float64 match."""
    from ceexp.data import DigitsDataModule

    metrics, run_dir = focal_run
    with np.load(run_dir / "predictions.npz") as f:
        p = {k: f[k] for k in f.files}
    assert p["val_logits"].dtype == np.float32 and p["test_logits"].dtype == np.float32
    assert p["val_labels"].dtype == np.int64 and p["test_labels"].dtype == np.int64
    dm = DigitsDataModule()
    dm.setup()
    assert (p["val_labels"] == dm.y_val.numpy()).all() and (p["test_labels"] == dm.y_test.numpy()).all()
    assert p["val_logits"].shape == (len(dm.y_val), 10) and p["test_logits"].shape == (len(dm.y_test), 10)
    y = p["test_labels"]
    probs = _softmax64(p["test_logits"])
    assert metrics["test/acc"] == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-6)
    assert metrics["test/nll"] == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-5)
    assert float(p["temperature"]) == pytest.approx(metrics["test/temperature"], rel=1e-6)
    probs_ts = _softmax64(p["test_logits"].astype(np.float64) / float(p["temperature"]))
    assert metrics["test/nll_ts"] == pytest.approx(-np.log(probs_ts[np.arange(len(y)), y]).mean(), rel=1e-5)
    # the temperature was fitted on these validation logits: the NLL is stationary in T there
    v, yv = p["val_logits"].astype(np.float64), p["val_labels"]

    def val_nll(t):
        q = _softmax64(v / t)
        return -np.log(q[np.arange(len(yv)), yv]).mean()

    t = float(p["temperature"])
    assert val_nll(t) <= min(val_nll(t * 1.02), val_nll(t / 1.02))
    assert metrics["test/epoch"] == 2.0  # checkpoint=last: the weights after both epochs


def test_save_predictions_false_writes_none(fast_cfg):
    cfg = fast_cfg("trainer.max_epochs=1", "save_predictions=false")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "predictions.npz").exists()


def test_hparams_columns_start_with_what_the_command_line_set(focal_run):
    """hparams.yaml lists the HParams columns in order: the overridden keys, then loss and its settings. (TensorBoard
    itself orders its columns: those that differ between runs first, then by name.)"""
    from tests.conftest import FAST

    _, run_dir = focal_run
    names = list(yaml.safe_load((run_dir / "hparams.yaml").read_text()))
    typed = [o.split("=")[0] for o in [*FAST, "loss=focal", "loss.gamma=3"] if not o.endswith("=null")]
    assert names[:len(typed)] == typed
    rest = names[len(typed):]
    assert rest.index("loss.alpha") < rest.index("seed") < rest.index("model") < rest.index("data")
    assert rest.index("data") < rest.index("data.batch_size") < rest.index("optimizer")



def _ece64(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE by its definition in float64: equal-width bins (lower, upper], 0 in the first bin."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return sum(abs(correct[b == k].sum() - conf[b == k].sum()) for k in range(n_bins)) / len(y)


def test_temperature_fit_ece_grid_and_both_fits_reported(fast_cfg):
    """temperature_fit=ece_grid: T is the grid value 0.1..10 with the lowest validation ECE (brute force here,
    first minimum on ties); the NLL fit is reported beside it, and each fit's test ECE and NLL match numpy."""
    cfg = fast_cfg("temperature_fit=ece_grid")
    metrics = train(cfg)
    with np.load(Path(cfg.paths.output_dir) / "predictions.npz") as f:
        v, yv, z, y = (f[k].astype(np.float64) if "logits" in k else f[k]
                       for k in ("val_logits", "val_labels", "test_logits", "test_labels"))
    grid = [k / 10 for k in range(1, 101)]
    eces = [_ece64(_softmax64(v / t), yv) for t in grid]
    t_grid = grid[int(np.argmin(eces))]
    assert metrics["test/temperature_ece_grid"] == pytest.approx(t_grid)
    assert metrics["test/temperature"] == pytest.approx(t_grid)  # the chosen fit drives the *_ts tags
    t_nll = metrics["test/temperature_nll"]
    assert t_nll != pytest.approx(t_grid, abs=1e-3)
    for name, t in (("ece_grid", t_grid), ("nll", t_nll)):
        p = _softmax64(z / t)
        assert metrics[f"test/ece_ts_{name}"] == pytest.approx(_ece64(p, y), abs=1e-6)
        assert metrics[f"test/nll_ts_{name}"] == pytest.approx(-np.log(p[np.arange(len(y)), y]).mean(), rel=1e-5)
    assert metrics["test/ece_ts"] == pytest.approx(metrics["test/ece_ts_ece_grid"], abs=1e-5)


def test_summed_objective_is_logged_per_sample(fast_cfg):
    """loss.reduction=sum (the paper code's protocol): */loss is the objective per sample, so for
    cross-entropy it equals */nll whatever the batch size."""
    metrics = train(fast_cfg("loss.reduction=sum", "data.batch_size=50"))
    for stage in ("val", "test"):
        assert metrics[f"{stage}/loss"] == pytest.approx(metrics[f"{stage}/nll"], rel=1e-5)
    assert metrics["train/loss_epoch"] == pytest.approx(metrics["train/nll"], rel=1e-5)


def _trained_digits_mlp(seed: int = 0):
    """An MLP trained for a few hundred plain Adam steps on the digits training split (its losses then differ from
    sample to sample, as a weighting needs), and the datamodule's splits."""
    from ceexp.data import DigitsDataModule
    from ceexp.models import MLP

    dm = DigitsDataModule()
    dm.setup()
    torch.manual_seed(seed)
    model = MLP(dm.input_shape, dm.n_classes, [32], 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(dm.x_train), dm.y_train).backward()
        opt.step()
    return model.eval(), dm


@pytest.mark.parametrize("objective", ["weighted_ce", "focal_alpha"])
def test_epoch_loss_of_a_weighted_objective_is_the_same_for_every_batch_size(objective):
    """train/loss_epoch, val/loss and test/loss are the split's mean of the objective as its "mean" reduction
    defines it, whatever data.batch_size cuts it into: sum_i w_{y_i} l_i / sum_i w_{y_i} for
    CrossEntropyLoss(weight=w) (torch's convention), sum_i alpha_{y_i} l_i / N for FocalLoss(alpha) (ceexp's);
    float64 numpy from the same weights (the optimizer's lr is 0, so training leaves them as they are)."""
    import functools

    import pytorch_lightning as pl

    from ceexp.data import DigitsDataModule
    from ceexp.losses import FocalLoss
    from ceexp.module import ClassifierModule

    model, dm = _trained_digits_mlp()
    w = torch.tensor([0.25, 4.0, 1.0, 0.5, 3.0, 1.5, 0.3, 2.0, 0.8, 5.0])
    loss = torch.nn.CrossEntropyLoss(weight=w) if objective == "weighted_ce" else FocalLoss(gamma=2.0, alpha=w)
    expected = {}
    for stage, x, y in (("train", dm.x_train, dm.y_train), ("val", dm.x_val, dm.y_val), ("test", dm.x_test, dm.y_test)):
        with torch.no_grad():
            z = model(x).double().numpy()
        yy = y.numpy()
        z = z - z.max(1, keepdims=True)
        logp = (z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(yy)), yy]
        wy = w.double().numpy()[yy]
        if objective == "weighted_ce":
            expected[stage] = (wy * -logp).sum() / wy.sum()
        else:
            expected[stage] = (wy * (1 - np.exp(logp)) ** 2 * -logp).sum() / len(yy)
    logged = {}
    for batch_size in (50, 500):
        module = ClassifierModule(model, loss, functools.partial(torch.optim.SGD, lr=0.0), dm.n_classes)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        data = DigitsDataModule(batch_size=batch_size)
        trainer.fit(module, datamodule=data)
        values = {"train": float(trainer.callback_metrics["train/loss_epoch"]),
                  "val": float(trainer.callback_metrics["val/loss"])}
        trainer.test(module, datamodule=data, verbose=False)
        values["test"] = float(trainer.callback_metrics["test/loss"])
        logged[batch_size] = values
    for stage in expected:
        assert logged[50][stage] == pytest.approx(expected[stage], rel=1e-5), stage
        assert logged[500][stage] == pytest.approx(expected[stage], rel=1e-5), stage
