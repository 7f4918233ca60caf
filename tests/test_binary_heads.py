"""One-logit binary heads (loss=bce, loss=sigmoid_focal): values against float64 numpy, the reductions to BCE, and
real runs on two-class data whose metrics read the probabilities as [1 - p, p]."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ceexp.losses import BinaryCrossEntropyLoss, SigmoidFocalLoss, class_logits
from ceexp.metrics import expected_calibration_error
from ceexp.train import build_loss, train
from ceexp.validation import ConfigError

Z = torch.tensor([[-3.0], [-0.5], [0.0], [0.7], [4.0], [30.0]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 0, 1, 0])


def _np_sigmoid_focal(z, y, alpha, gamma):
    # log p = -log(1 + e^-z), log(1 - p) = -log(1 + e^z), in float64 without cancellation at |z| = 30
    log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)
    log_pt, log_1_minus_pt = np.where(y == 1, log_p, log_q), np.where(y == 1, log_q, log_p)
    at = np.ones_like(z) if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return -at * np.exp(gamma * log_1_minus_pt) * log_pt


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 0.5), (0.9, 0.0)])
def test_sigmoid_focal_values(alpha, gamma):
    z, y = Z[:, 0].numpy(), Y.numpy()
    expected = _np_sigmoid_focal(z, y, alpha, gamma)
    got = SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction="none")(Z, Y)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert SigmoidFocalLoss(alpha=alpha, gamma=gamma)(Z, Y).item() == pytest.approx(expected.mean(), rel=1e-12)
    assert SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction="sum")(Z, Y).item() == pytest.approx(expected.sum())
    # 16-bit logits are computed, and returned, in float32
    z16 = Z.to(torch.bfloat16)
    got16 = SigmoidFocalLoss(alpha=alpha, gamma=gamma)(z16, Y)
    assert got16.dtype == torch.float32
    want16 = _np_sigmoid_focal(z16[:, 0].double().numpy(), y, alpha, gamma).mean()
    assert got16.item() == pytest.approx(want16, rel=1e-6)
    # the defaults are the paper's, alpha 0.25 and gamma 2
    assert SigmoidFocalLoss().extra_repr() == "alpha=0.25, gamma=2.0, reduction='mean', ignore_index=-100"


def test_gamma_0_without_alpha_is_bce_and_bce_is_two_class_cross_entropy():
    bce = F.binary_cross_entropy_with_logits(Z[:, 0], Y.double())
    assert SigmoidFocalLoss(alpha=None, gamma=0.0)(Z, Y).item() == pytest.approx(bce.item(), rel=1e-12)
    assert BinaryCrossEntropyLoss()(Z, Y).item() == pytest.approx(bce.item(), rel=1e-12)
    assert F.cross_entropy(class_logits(Z), Y).item() == pytest.approx(bce.item(), rel=1e-12)


def test_pos_weight_and_ignore_index():
    z, y = Z[:, 0].numpy(), Y.numpy()
    target = Y.clone()
    target[2] = -100
    keep = np.arange(6) != 2
    for pos_weight in (3.0, 0.5, 1):
        per = pos_weight * y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
        loss = BinaryCrossEntropyLoss(pos_weight=pos_weight)
        assert loss(Z, target).item() == pytest.approx(per[keep].mean(), rel=1e-12)
        # a float buffer in torch's default dtype, which follows the module's .double()
        assert loss.pos_weight.dtype == torch.get_default_dtype()
        assert loss.double().pos_weight.dtype == torch.float64
    # every reduction; the ignored sample weighs 0 and gets a zero gradient
    bce = 3.0 * y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    references = [(BinaryCrossEntropyLoss, {"pos_weight": 3.0}, bce),
                  (SigmoidFocalLoss, {"alpha": 0.25, "gamma": 2.0}, _np_sigmoid_focal(z, y, 0.25, 2.0))]
    for cls, kwargs, per in references:
        want = {"none": np.where(keep, per, 0.0), "mean": per[keep].mean(), "sum": per[keep].sum()}
        for reduction in ("none", "mean", "sum"):
            logits = Z.clone().requires_grad_()
            got = cls(**kwargs, reduction=reduction)(logits, target)
            np.testing.assert_allclose(got.detach().numpy(), want[reduction], rtol=1e-12)
            got.sum().backward()
            assert torch.isfinite(logits.grad).all() and logits.grad[2, 0] == 0, (cls, reduction)


def test_gradient_of_sigmoid_focal_matches_finite_differences():
    z = Z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: SigmoidFocalLoss(0.25, 2.0)(t, Y), (z,))


def test_saturated_logits_stay_finite():
    z = torch.tensor([[1e4], [-1e4], [1e4]], requires_grad=True)
    y = torch.tensor([0, 1, 1])
    for loss in (SigmoidFocalLoss(), BinaryCrossEntropyLoss()):
        value = loss(z, y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z.grad).all()
        z.grad = None


@pytest.mark.parametrize("make, message", [
    (lambda: BinaryCrossEntropyLoss()(torch.zeros(6, 2), Y),
     ("Expected one logit per sample, `logits` of shape (N, 1), but got (6, 2): a binary loss trains a one-logit "
      "head (two classes)")),
    (lambda: SigmoidFocalLoss()(Z, torch.tensor([0, 1, 2, 0, 1, 0])),
     "Expected targets in {0, 1} (or ignore_index=-100), but got 2: a binary loss is for two classes"),
    (lambda: BinaryCrossEntropyLoss(pos_weight=0.0), "Expected argument `pos_weight` to be a number > 0, but got 0.0"),
    (lambda: BinaryCrossEntropyLoss(reduction="avg"),
     "Expected argument `reduction` to be one of ['none', 'mean', 'sum'], but got 'avg'"),
    (lambda: BinaryCrossEntropyLoss(ignore_index=1.5),
     "Expected argument `ignore_index` to be an integer, but got 1.5"),
    (lambda: SigmoidFocalLoss(gamma=-1), "Expected argument `gamma` to be a finite number >= 0, but got -1"),
    (lambda: SigmoidFocalLoss(alpha=1.5), "Expected argument `alpha` to be a number in [0, 1], but got 1.5"),
    (lambda: SigmoidFocalLoss(reduction="avg"),
     "Expected argument `reduction` to be one of ['none', 'mean', 'sum'], but got 'avg'"),
    (lambda: SigmoidFocalLoss(ignore_index=1.5), "Expected argument `ignore_index` to be an integer, but got 1.5"),
])
def test_bad_inputs_are_refused(make, message):
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == message


def test_balanced_pos_weight_is_negatives_over_positives():
    from omegaconf import OmegaConf

    labels = torch.tensor([0] * 7 + [1] * 3)
    loss = build_loss(OmegaConf.create({"_target_": "ceexp.losses.BinaryCrossEntropyLoss", "pos_weight": "balanced"}),
                      labels, 2)
    assert loss.pos_weight.item() == pytest.approx(7 / 3)


# the sigmoid focal run is slow-marked: its values are tested above, the one-logit pipeline by the bce run
@pytest.mark.parametrize("loss", ["bce", pytest.param("sigmoid_focal", marks=pytest.mark.slow)])
def test_one_logit_run_on_breast_cancer_reads_probabilities_as_two_classes(fast_cfg, loss):
    cfg = fast_cfg("data=breast_cancer", f"loss={loss}", "logger=none")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    head = [k for k in state if k.endswith(".weight")][-1]
    assert state[head].shape[0] == 1  # one output
    with np.load(run / "predictions.npz") as f:
        logits, labels = torch.from_numpy(f["test_logits"]).double(), torch.from_numpy(f["test_labels"])
    assert logits.shape[1] == 2 and torch.all(logits[:, 0] == 0)  # [0, z]
    p1 = torch.sigmoid(logits[:, 1])
    probs = torch.stack([1 - p1, p1], dim=1)
    assert metrics["test/acc"] == pytest.approx(((p1 > 0.5).long() == labels).double().mean().item(), abs=1e-6)
    assert metrics["test/ece"] == pytest.approx(expected_calibration_error(probs, labels).item(), abs=1e-6)
    bce = F.binary_cross_entropy_with_logits(logits[:, 1], labels.double()).item()
    assert metrics["test/nll"] == pytest.approx(bce, rel=1e-5)
    assert math.isfinite(metrics["test/ece_ts"]) and metrics["test/temperature"] > 0


def test_bce_on_ten_classes_is_a_one_line_config_error(fast_cfg):
    with pytest.raises(ConfigError, match=r"^loss=BinaryCrossEntropyLoss is invalid for 10 classes: a one-logit"):
        train(fast_cfg("loss=bce"))
