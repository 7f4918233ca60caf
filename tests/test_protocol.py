"""The training protocol of Mukhoti et al. 2020 ("Calibrating Deep Neural Networks using Focal Loss", NeurIPS) as
its released code runs it (github.com/torrvision/focal_calibration), in experiment=mukhoti_cifar10 / _cifar100:
losses summed over the batch (their Brier score a batch mean), the gradient norm clipped at 2, T picked by the
least validation ECE on a grid (tested in test_calibration.py), and the published numbers in ``expected``.

Expected numbers come from float64 numpy evaluations of each loss's definition, from hand computation, and from
the released README's tables (percent there, fractions here).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from ceexp.validation import CONFIG_DIR, ConfigError, validate_config
from tests.conftest import make_cfg

EXPERIMENTS = ("mukhoti_cifar10", "mukhoti_cifar100")
PRESETS = ("ce", "brier", "ls_0.05", "focal_3", "flsd_53")
# the released code: F.cross_entropy(reduction='sum') (Losses/loss.py:18); FocalLoss / FocalLossAdaptive with
# size_average=False, i.e. loss.sum() (focal_loss.py:32, focal_loss_adaptive_gamma.py:68); BrierScore divides
# the sum of the N x C squared errors by N (brier_score.py:26). Label smoothing is not released: summed as CE.
PAPER_REDUCTION = {"ce": "sum", "brier": "mean", "ls_0.05": "sum", "focal_3": "sum", "flsd_53": "sum"}


# ---------------------------------------------------------------------------------------------------------
# float64 numpy definitions: per-sample losses (N,)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_per_sample(name: str, z: np.ndarray, y: np.ndarray, **kw) -> np.ndarray:
    logp = np_log_softmax(z)
    lp_y = logp[np.arange(len(y)), y]
    p_y = np.exp(lp_y)
    if name == "ce":
        return -lp_y
    if name == "smoothed":  # PyTorch's convention: eps/C on every class, the true class included
        eps = kw["eps"]
        return (1 - eps) * -lp_y + eps / z.shape[1] * -logp.sum(axis=1)
    if name == "focal":
        return -((1 - p_y) ** kw["gamma"]) * lp_y
    if name == "focal_sd53":
        return -((1 - p_y) ** np.where(p_y < 0.2, 5.0, 3.0)) * lp_y
    if name == "mse":
        return ((np.exp(logp) - np.eye(z.shape[1])[y]) ** 2).sum(axis=1)
    raise AssertionError(name)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(40, 6))
    y = rng.integers(0, 6, size=40)
    return z, y


def loss_from_config(overrides: list[str], tmp_path, **kwargs) -> torch.nn.Module:
    cfg = make_cfg(tmp_path / "run", overrides)
    validate_config(cfg)
    return instantiate(cfg.loss, **kwargs)


def evaluate(loss: torch.nn.Module, z: np.ndarray, y: np.ndarray) -> float:
    return loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y)).item()


# ---------------------------------------------------------------------------------------------------------
# loss.reduction


@pytest.mark.parametrize(
    "name, kw",
    [("ce", {}), ("smoothed", {"eps": 0.1}), ("focal", {"gamma": 2.0}), ("focal_sd53", {}), ("mse", {})],
)
def test_reduction_sum_is_n_times_the_mean(name, kw, batch, tmp_path):
    z, y = batch
    per_sample = np_per_sample(name, z, y, **kw)
    if name == "focal_sd53":  # both gammas occur in the batch
        assert 0 < (np.exp(np_log_softmax(z)[np.arange(len(y)), y]) < 0.2).sum() < len(y)
    got_sum = evaluate(loss_from_config([f"loss={name}", "loss.reduction=sum"], tmp_path), z, y)
    got_mean = evaluate(loss_from_config([f"loss={name}"], tmp_path), z, y)  # the default: mean
    assert got_sum == pytest.approx(per_sample.sum(), rel=1e-12)
    assert got_mean == pytest.approx(per_sample.sum() / len(y), rel=1e-12)
    assert got_sum == pytest.approx(len(y) * got_mean, rel=1e-12)


def test_weighted_ce_sum_and_torch_weighted_mean(batch, tmp_path):
    # torch's weighted mean divides by the sum of the samples' class weights, not by N
    z, y = batch
    w = np.arange(1.0, 7.0)
    per_sample = w[y] * np_per_sample("ce", z, y)
    weight = torch.tensor(w)  # "balanced" is replaced by train.build_loss; here the weights are given
    got_sum = evaluate(loss_from_config(["loss=weighted_ce", "loss.reduction=sum"], tmp_path, weight=weight), z, y)
    got_mean = evaluate(loss_from_config(["loss=weighted_ce"], tmp_path, weight=weight), z, y)
    assert got_sum == pytest.approx(per_sample.sum(), rel=1e-12)
    assert got_mean == pytest.approx(per_sample.sum() / w[y].sum(), rel=1e-12)


def test_paper_brier_reduction_by_hand(tmp_path):
    # Logits (0, 0) and (ln 3, 0), both labelled class 0: softmax (1/2, 1/2) and (3/4, 1/4).
    # Squared errors: (1/2 - 1)^2 + (1/2)^2 = 1/2 and (3/4 - 1)^2 + (1/4)^2 = 1/8; their sum 5/8.
    # The released BrierScore: torch.sum(squared_diff) / N = (5/8) / 2 = 5/16 (a mean over all N x C = 4
    # elements would be 5/32, a sum 5/8).
    z, y = np.array([[0.0, 0.0], [math.log(3.0), 0.0]]), np.array([0, 0])
    brier = loss_from_config(["experiment=mukhoti_cifar10", "+loss_preset=brier"], tmp_path)
    assert brier.reduction == "mean"
    assert evaluate(brier, z, y) == pytest.approx(5 / 16, rel=1e-15)
    assert evaluate(loss_from_config(["loss=mse", "loss.reduction=sum"], tmp_path), z, y) == pytest.approx(5 / 8)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_reduces_as_the_released_code(experiment, preset, batch, tmp_path):
    z, y = batch
    loss = loss_from_config([f"experiment={experiment}", f"+loss_preset={preset}"], tmp_path)
    assert loss.reduction == PAPER_REDUCTION[preset]
    name, kw = {"ce": ("ce", {}), "brier": ("mse", {}), "ls_0.05": ("smoothed", {"eps": 0.05}),
                "focal_3": ("focal", {"gamma": 3.0}), "flsd_53": ("focal_sd53", {})}[preset]
    total = np_per_sample(name, z, y, **kw).sum()
    assert evaluate(loss, z, y) == pytest.approx(total if preset != "brier" else total / len(y), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# the composed experiments


def compose_with_hydra(experiment: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)


# The released README.md, ResNet-50 on CIFAR-10: test ECE % (T), and test error %
README_CIFAR10 = {
    "ce": (4.35, 1.35, 2.5, 4.95),
    "brier": (1.82, 1.08, 1.1, 5.0),
    "ls_0.05": (2.96, 1.67, 0.9, 5.29),
    "focal_3": (1.48, 1.42, 1.1, 5.25),
    "flsd_53": (1.55, 0.95, 1.1, 4.98),
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sets_the_released_protocol(experiment, tmp_path):
    sweep = compose_with_hydra(experiment).hydra.sweeper.params
    assert tuple(sweep["+loss_preset"].split(",")) == PRESETS
    for preset in PRESETS:
        cfg = make_cfg(tmp_path / "run", [f"experiment={experiment}", f"+loss_preset={preset}"])
        validate_config(cfg)
        assert cfg.trainer.gradient_clip_val == 2 and cfg.trainer.gradient_clip_algorithm == "norm"
        assert cfg.temperature_fit == "ece_grid" and cfg.n_bins == 15
        assert cfg.loss.reduction == PAPER_REDUCTION[preset]
    expected = cfg.expected
    if experiment == "mukhoti_cifar100":
        assert expected is None  # not verified from here: no numbers rather than unverified ones
        return
    assert expected.source == "Mukhoti et al. 2020, Table 1 (CIFAR-10, ResNet-50)"
    assert expected.key == "loss_preset" and "+" + expected.key in sweep  # the sweep's setting names the rows
    assert tuple(expected["values"]) == PRESETS
    for preset, (ece, ece_ts, temperature, error) in README_CIFAR10.items():
        row = expected["values"][preset]
        assert set(row) == {"test/ece", "test/ece_ts", "test/temperature", "test/acc"}
        assert row["test/ece"] == pytest.approx(ece / 100, abs=1e-12)
        assert row["test/ece_ts"] == pytest.approx(ece_ts / 100, abs=1e-12)
        assert row["test/temperature"] == temperature
        assert row["test/acc"] == pytest.approx(1 - error / 100, abs=1e-12)


def test_defaults_stay_mean_nll_and_no_expected(tmp_path):
    cfg = make_cfg(tmp_path / "run", [])
    assert cfg.loss.reduction == "mean" and cfg.temperature_fit == "nll" and cfg.expected is None
    assert cfg.trainer.get("gradient_clip_val") is None
    # the command line still wins over the experiment and the preset
    cfg = make_cfg(tmp_path / "run", ["experiment=mukhoti_cifar10", "+loss_preset=brier", "loss.reduction=sum"])
    assert cfg.loss.reduction == "sum"


@pytest.mark.parametrize(
    "override, message",
    [
        ("temperature_fit=foo", "temperature_fit='foo' is invalid: expected one of nll, ece_grid"),
        ("loss.reduction=avg", "loss.reduction='avg' is invalid: expected 'mean' or 'sum' (training needs a scalar)"),
        ("expected=foo", "expected='foo' is invalid: expected null or a mapping with the keys source, key, values"),
        ("+expected.values.ce.acc=high", "expected.values.ce.acc='high' is invalid: expected a number"),
    ],
)
def test_validation_refuses_with_one_line(override, message, tmp_path):
    base = ["experiment=mukhoti_cifar10", "+loss_preset=ce"] if override.startswith("+expected.") else []
    cfg = make_cfg(tmp_path / "run", [*base, override])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------------------
# gradient clipping: the experiment's trainer settings make Lightning clip as clip_grad_norm_(params, 2)


def tiny_linear_module(w0: np.ndarray, b0: np.ndarray, lr: float):
    """A float64 LightningModule: linear 3 -> 2 from (w0, b0), summed cross-entropy, plain SGD with ``lr``."""
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2, dtype=torch.float64)
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(w0))
                self.linear.bias.copy_(torch.from_numpy(b0))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.linear(x), y, reduction="sum")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Tiny()


def test_lightning_clips_the_gradient_norm_at_2(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(8, 3))
    y = rng.integers(0, 2, size=8)
    w0, b0, lr = rng.normal(size=(2, 3)), rng.normal(size=2), 0.1

    # the hand-computed step: grad of sum_i CE = (softmax - onehot)^T x for W and its column sums for b;
    # clip_grad_norm_ scales every gradient by min(1, 2 / (||g||_2 + 1e-6)), ||g|| over all parameters
    logits = x @ w0.T + b0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = p - np.eye(2)[y]
    gw, gb = delta.T @ x, delta.sum(axis=0)
    norm = math.sqrt((gw**2).sum() + (gb**2).sum())
    assert norm > 4  # clipping matters
    scale = min(1.0, 2.0 / (norm + 1e-6))

    cfg = make_cfg(tmp_path / "run", ["experiment=mukhoti_cifar10", "+loss_preset=ce", "trainer=default"])
    trainer = instantiate(
        cfg.trainer, max_steps=1, max_epochs=1, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=str(tmp_path), limit_val_batches=0,
    )
    assert trainer.gradient_clip_val == 2 and trainer.gradient_clip_algorithm == "norm"
    model = tiny_linear_module(w0, b0, lr)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))

    np.testing.assert_allclose(model.linear.weight.detach().numpy(), w0 - lr * scale * gw, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.linear.bias.detach().numpy(), b0 - lr * scale * gb, rtol=1e-12, atol=1e-14)
    assert not np.allclose(model.linear.weight.detach().numpy(), w0 - lr * gw)  # not the unclipped step


# ---------------------------------------------------------------------------------------------------------
# learning-rate schedule


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_learning_rate_per_epoch_matches_the_released_loop(experiment, tmp_path):
    # The released train.py: scheduler = MultiStepLR(milestones=[150, 250], gamma=0.1), then for each epoch
    # scheduler.step() *before* training it. Lightning (interval "epoch") steps after each epoch.
    import warnings

    def sgd():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    theirs, opt = [], sgd()
    released = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 250], gamma=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": what their loop does
        for _ in range(350):
            released.step()
            theirs.append(opt.param_groups[0]["lr"])
    cfg = make_cfg(tmp_path / "run", [f"experiment={experiment}", "+loss_preset=ce"])
    ours, opt = [], sgd()
    scheduler = instantiate(cfg.scheduler)(optimizer=opt)
    for _ in range(cfg.trainer.max_epochs):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert [round(lr, 6) for lr in (theirs[148], theirs[149], theirs[248], theirs[249])] == [0.1, 0.01, 0.01, 0.001]
