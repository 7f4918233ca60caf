"""Tests for the second-round losses of ceexp.losses (issue #11): MbLS, CE + MMCE, CE + DCA, the confidence
penalty, Poly-1, dual focal, scheduled focal (FLSc-531) and AdaFocal; their configs and config rules.

Expected numbers come from hand derivations (in the comments) and from float64 numpy references written here from
the papers' definitions and the released codes' formulas, independently of the implementation (loops where the
released code loops); gradients are checked against finite differences by ``torch.autograd.gradcheck`` in float64.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ceexp.losses import (
    AdaFocalLoss,
    ConfidencePenaltyLoss,
    DCALoss,
    DualFocalLoss,
    MarginBasedLabelSmoothingLoss,
    MMCELoss,
    Poly1Loss,
    ScheduledFocalLoss,
)
from ceexp.validation import CONFIG_DIR, ConfigError, check_command_line
from tests.conftest import ROOT

# ---------------------------------------------------------------------------------------------------------
# float64 numpy references: per-sample values of the non-ignored samples, then reduced


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_mbls(z, y, margin=10.0, alpha=0.1):
    distance = z.max(axis=1, keepdims=True) - z
    return np_ce(z, y) + alpha * np.maximum(0.0, distance - margin).mean(axis=1)


def np_mmce_weighted(z, y, width=0.4):
    """The released MMCE_weighted (torrvision/focal_calibration, Losses/mmce.py), by loops over the pairs."""
    p = np.exp(np_log_softmax(z))
    r, correct = p.max(axis=1), p.argmax(axis=1) == y
    right, wrong = r[correct], r[~correct]
    m, n = len(right), len(wrong)
    if m == 0 or n == 0:
        return 0.0

    def k(u, v):
        return math.exp(-abs(u - v) / width)

    cc = sum((1 - a) * (1 - b) * k(a, b) for a in right for b in right) / (m * m)  # torch.mean of the m x m matrix
    ww = sum(a * b * k(a, b) for a in wrong for b in wrong) / (n * n)
    cw = sum((1 - a) * b * k(a, b) for a in right for b in wrong) / (m * n)
    mmd = cc / (m * m + 1e-5) + ww / (n * n + 1e-5) - 2 * cw / (m * n + 1e-5)
    return math.sqrt(mmd + 1e-10)


def np_mmce(z, y, lamda=2.0, width=0.4):
    return np_ce(z, y) + lamda * np_mmce_weighted(z, y, width)


def np_dca(z, y, beta=5.0):
    p = np.exp(np_log_softmax(z))
    accuracy = (p.argmax(axis=1) == y).mean()
    return np_ce(z, y) + beta * abs(accuracy - p.max(axis=1).mean())


def np_confidence_penalty(z, y, beta=0.1):
    p = np.exp(np_log_softmax(z))
    entropy = -(p * np.log(p)).sum(axis=1)
    return np_ce(z, y) - beta * entropy


def np_poly1(z, y, epsilon=1.0):
    return np_ce(z, y) + epsilon * (1 - np.exp(-np_ce(z, y)))


def np_dual_focal(z, y, gamma=5.0):
    p = np.exp(np_log_softmax(z))
    out = []
    for row, t in zip(p, y):
        below = [q for q in row if q < row[t]]
        p_j = max(below) if below else 0.0
        out.append(-((1 - row[t] + p_j) ** gamma) * math.log(row[t]))
    return np.array(out)


def np_focal(z, y, gamma):
    p_y = np.exp(-np_ce(z, y))
    return (1 - p_y) ** gamma * np_ce(z, y)


def np_adafocal_gamma(p, gammas, edges):
    """The released get_gamma_per_sample: the first bin whose condition holds, else the last one."""
    out = []
    n_bins = len(gammas)
    for value in p:
        for b in range(n_bins):
            lower, upper = edges[b], edges[b + 1]
            if b == 0 and value < upper:
                break
            if b == n_bins - 1 and value >= lower:
                break
            if lower <= value < upper:
                break
        out.append(gammas[b])
    return np.array(out)


def np_adafocal(z, y, gammas, edges):
    p_y = np.exp(-np_ce(z, y))
    g = np_adafocal_gamma(p_y, gammas, edges)
    return (1 - np.sign(g) * p_y) ** np.abs(g) * np_ce(z, y)


def np_adafocal_update(gammas, probs, labels, lamda=1.0, switch_pt=0.2, gamma_min=-2.0, gamma_max=20.0):
    """The released update_bin_stats on the bins of adaECE_error_mukhoti, in python floats."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    n_bins, npt = len(gammas), len(conf)
    edges = np.interp(np.linspace(0, npt, n_bins + 1), np.arange(npt), np.sort(conf))
    new = []
    for b in range(n_bins):
        inside = (conf > edges[b]) & (conf <= edges[b + 1])
        gap = conf[inside].mean() - correct[inside].mean() if inside.any() else 0.0
        g = gammas[b]
        nxt = g * math.exp(lamda * gap) if g > 0 else g * math.exp(-lamda * gap)
        if abs(nxt) < switch_pt:
            nxt = -switch_pt if nxt > 0 else switch_pt
        new.append(max(min(nxt, gamma_max), gamma_min))
    return np.array(new), edges


def reduce_np(per_sample_kept, keep, reduction):
    full = np.zeros(len(keep))
    full[keep] = per_sample_kept
    if reduction == "none":
        return full
    return full.sum() / (keep.sum() if reduction == "mean" else 1)


# name -> (a fresh module with non-default settings, reference(z, y) of the kept samples)
GAMMAS5 = [1.5, -0.5, 0.0, 3.0, -2.0]
EDGES5 = [0.0, 0.05, 0.2, 0.4, 0.6, 1.0]


def _adafocal():
    loss = AdaFocalLoss(n_bins=5)
    loss.gammas.copy_(torch.tensor(GAMMAS5, dtype=torch.float64))
    loss.edges.copy_(torch.tensor(EDGES5, dtype=torch.float64))
    return loss


def _scheduled():
    loss = ScheduledFocalLoss(milestones=[2, 5], gammas=[4.0, 2.5, 0.5])
    loss.set_epoch(3)
    return loss


LOSSES = {
    "mbls": (lambda: MarginBasedLabelSmoothingLoss(margin=1.5, alpha=0.3), lambda z, y: np_mbls(z, y, 1.5, 0.3)),
    "mmce": (lambda: MMCELoss(lamda=1.5, kernel_width=0.3), lambda z, y: np_mmce(z, y, 1.5, 0.3)),
    "dca": (lambda: DCALoss(beta=2.0), lambda z, y: np_dca(z, y, 2.0)),
    "confidence_penalty": (lambda: ConfidencePenaltyLoss(beta=0.7), lambda z, y: np_confidence_penalty(z, y, 0.7)),
    "poly1": (lambda: Poly1Loss(epsilon=2.0), lambda z, y: np_poly1(z, y, 2.0)),
    "dual_focal": (lambda: DualFocalLoss(gamma=2.5), lambda z, y: np_dual_focal(z, y, 2.5)),
    "focal_scheduled": (_scheduled, lambda z, y: np_focal(z, y, 2.5)),
    "adafocal": (_adafocal, lambda z, y: np_adafocal(z, y, GAMMAS5, EDGES5)),
}


def batch(n=40, c=5, seed=0, scale=2.0):
    gen = np.random.default_rng(seed)
    return gen.normal(scale=scale, size=(n, c)), gen.integers(0, c, size=n)


def as_torch(z, y, requires_grad=False):
    return torch.tensor(z, dtype=torch.float64, requires_grad=requires_grad), torch.tensor(y, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("ignore_index", [-100, 3, 255])  # 255: past the classes, as in segmentation
def test_matches_numpy_with_every_reduction_and_ignored_samples(name, ignore_index):
    make, reference = LOSSES[name]
    z, y = batch()
    y[::6] = ignore_index
    keep = y != ignore_index
    per_sample = reference(z[keep], y[keep])
    logits, target = as_torch(z, y)
    for reduction in ("none", "mean", "sum"):
        loss = make()
        loss.reduction, loss.ignore_index = reduction, ignore_index
        got = loss(logits, target)
        assert got.dtype == torch.float64 and got.shape == ((len(y),) if reduction == "none" else ())
        np.testing.assert_allclose(got.numpy(), reduce_np(per_sample, keep, reduction), rtol=1e-12, atol=1e-14)


def test_the_references_exercise_what_they_should():
    z, y = batch()
    p = np.exp(np_log_softmax(z))
    assert 0.2 < (p.argmax(1) == y).mean() < 0.8  # MMCE and DCA see right and wrong samples
    assert (z.max(1, keepdims=True) - z > 1.5).any() and (z.max(1, keepdims=True) - z < 1.5).any()
    bins = np.digitize(p[np.arange(len(y)), y], EDGES5[1:-1])
    assert set(bins) == {0, 1, 2, 3, 4}  # every AdaFocal gamma, positive, negative and 0, is used


def test_hand_values():
    # MbLS: logits (0, 12, 1), margin 10: distances 12, 0, 11 -> penalties 2, 0, 1, mean 1; alpha 0.1 -> 0.1
    logits = torch.tensor([[0.0, 12.0, 1.0]], dtype=torch.float64)
    ce = math.log(1 + math.exp(-12) + math.exp(-11))
    assert MarginBasedLabelSmoothingLoss()(logits, torch.tensor([1])).item() == pytest.approx(ce + 0.1, rel=1e-14)
    # DCA: two samples right at confidence e^2 / (1 + e^2) = 0.880797: |1 - 0.880797| = 0.119203
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64), torch.tensor([0, 1])
    ce = math.log(1 + math.exp(-2))
    assert DCALoss(beta=1.0)(logits, target).item() == pytest.approx(ce + 1 / (1 + math.exp(2)), rel=1e-14)
    # confidence penalty, uniform over 4: CE = H = log 4
    assert ConfidencePenaltyLoss(beta=0.5)(torch.zeros(1, 4, dtype=torch.float64), torch.tensor([0])).item() == \
        pytest.approx(0.5 * math.log(4), rel=1e-14)
    # Poly-1, 2 classes, equal logits: log 2 + epsilon / 2
    assert Poly1Loss(epsilon=3.0)(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1])).item() == \
        pytest.approx(math.log(2) + 1.5, rel=1e-14)


def test_dual_focal_picks_the_largest_probability_strictly_below_the_true_one():
    p = torch.tensor([[0.5, 0.3, 0.2],    # p_j = 0.3
                      [0.4, 0.4, 0.2],    # a class tied with p_y is not below it: p_j = 0.2
                      [0.6, 0.2, 0.2],    # true class the smallest: no class below, p_j = 0
                      [0.25, 0.5, 0.25]], dtype=torch.float64)  # true 0.25, the other 0.25 tied: p_j = 0
    target = torch.tensor([0, 0, 1, 0])
    got = DualFocalLoss(gamma=2.0, reduction="none")(p.log(), target)
    want = [(1 - 0.5 + 0.3) ** 2 * math.log(2), (1 - 0.4 + 0.2) ** 2 * -math.log(0.4),
            (1 - 0.2) ** 2 * -math.log(0.2), (1 - 0.25) ** 2 * math.log(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("z, y", [
    ([[2.2, 0.0], [0.0, 0.4]], [0, 0]),  # one right (r = 0.90), one wrong (r = 0.60)
    ([[2.2, 0.0], [0.0, 0.4], [0.3, 0.0]], [0, 0, 0]),  # two right, one wrong
    ([[2.2, 0.0], [0.0, 0.4], [0.0, 1.5]], [0, 0, 0]),  # one right, two wrong
])
def test_mmce_with_a_single_right_or_wrong_sample(z, y):
    z, y = np.array(z), np.array(y)
    assert np_mmce_weighted(z, y, 0.4) > 0.05  # a term well above its 1e-5 floor
    logits, target = as_torch(z, y)
    got = MMCELoss(lamda=1.0, reduction="none")(logits, target)
    np.testing.assert_allclose(got.numpy(), np_mmce(z, y, 1.0, 0.4), rtol=1e-12)


def test_dca_of_a_single_kept_sample():
    # right at confidence e^2 / (1 + e^2): DCA |1 - 0.880797| = 1 / (1 + e^2); the ignored sample counts nowhere
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([0, -100])
    want = math.log(1 + math.exp(-2)) + 1 / (1 + math.exp(2))
    np.testing.assert_allclose(DCALoss(beta=1.0, reduction="none")(logits, target).numpy(), [want, 0.0], rtol=1e-14)
    assert DCALoss(beta=1.0)(logits[:1], target[:1]).item() == pytest.approx(want, rel=1e-14)


def test_mmce_all_right_or_all_wrong_is_cross_entropy():
    z, y = batch(12, 3, seed=5)
    logits, _ = as_torch(z, y)
    for target in (logits.argmax(1), (logits.argmax(1) + 1) % 3):  # every top label right / every one wrong
        assert MMCELoss()(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-13)


@pytest.mark.parametrize("make", [
    lambda: MarginBasedLabelSmoothingLoss(alpha=0.0), lambda: MMCELoss(lamda=0.0), lambda: DCALoss(beta=0.0),
    lambda: ConfidencePenaltyLoss(beta=0.0), lambda: Poly1Loss(epsilon=0.0), lambda: DualFocalLoss(gamma=0.0),
    lambda: ScheduledFocalLoss(milestones=[], gammas=[0.0]), lambda: AdaFocalLoss(gamma_initial=0.0),
], ids=["mbls", "mmce", "dca", "confidence_penalty", "poly1", "dual_focal", "focal_scheduled", "adafocal"])
def test_zero_weight_is_cross_entropy(make):
    z, y = batch(seed=2)
    y[::7] = -100
    logits, target = as_torch(z, y)
    for reduction in ("none", "mean", "sum"):
        loss = make()
        loss.reduction = reduction
        want = F.cross_entropy(logits, target, reduction=reduction)
        np.testing.assert_allclose(loss(logits, target).numpy(), want.numpy(), rtol=1e-13, atol=0)


def test_every_target_ignored_gives_nan_mean_zero_sum_and_zero_gradient():
    target = torch.full((4,), -100)
    for name, (make, _) in LOSSES.items():
        logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        loss = make()
        out = loss(logits, target)
        out.backward()
        assert torch.isnan(out) and (logits.grad == 0).all(), name
        loss.reduction = "sum"
        assert loss(logits, target).item() == 0.0, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_are_computed_in_float32(dtype):
    z, y = batch(64, 5, seed=4)
    logits = torch.tensor(z).to(dtype)
    z16 = logits.double().numpy()  # the values the loss sees
    for name, (make, reference) in LOSSES.items():
        out = make()(logits, torch.tensor(y))
        assert out.dtype == torch.float32, name
        assert out.item() == pytest.approx(reference(z16, y).mean(), rel=2e-5), name


# ---------------------------------------------------------------------------------------------------------
# gradients


def directional_differences(f, z: torch.Tensor, directions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of the scalar function ``f`` at ``z`` along each of ``directions`` (float64)."""
    return torch.stack([(f(z + eps * v) - f(z - eps * v)) / (2 * eps) for v in directions])


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_matches_finite_differences(name):
    make, _ = LOSSES[name]
    z, y = batch(10, 5, seed=1)
    y[3] = -100
    logits, target = as_torch(z, y, requires_grad=True)
    for reduction in ("none", "mean"):
        loss = make()
        loss.reduction = reduction
        if name != "focal_scheduled":
            assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-8, rtol=1e-6,
                                            fast_mode=True)
            continue
        # the focal kernel's hand-written backward runs once per graph (gradcheck runs it once per output): one
        # backward of a weighted sum, against differences along random directions, as gradcheck's fast mode
        weights = torch.linspace(-1, 2, len(y), dtype=torch.float64) if reduction == "none" else 1.0
        (grad,) = torch.autograd.grad((loss(logits, target) * weights).sum(), logits)
        directions = torch.randn((6, *logits.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            want = directional_differences(lambda x: (loss(x, target) * weights).sum(), logits.detach(), directions)
        np.testing.assert_allclose((directions * grad).sum(dim=(1, 2)).numpy(), want.numpy(), rtol=1e-6, atol=1e-8)


SATURATED = {
    **{name: make for name, (make, _) in LOSSES.items()},
    **{f"{name}_defaults": cls for name, cls in [
        ("mbls", MarginBasedLabelSmoothingLoss), ("mmce", MMCELoss), ("dca", DCALoss),
        ("confidence_penalty", ConfidencePenaltyLoss), ("poly1", Poly1Loss), ("dual_focal", DualFocalLoss),
        ("focal_scheduled", ScheduledFocalLoss), ("adafocal", AdaFocalLoss)]},
    "dual_focal_gamma0.5": lambda: DualFocalLoss(gamma=0.5),
    "adafocal_gamma0.5": lambda: AdaFocalLoss(gamma_initial=0.5),
    "adafocal_inverse": lambda: AdaFocalLoss(gamma_initial=-0.5),
}


@pytest.mark.parametrize("name", list(SATURATED))
def test_saturated_logits_give_finite_loss_and_gradient(name):
    # +-1e4: p_y is exactly 1 or 0 (e^-2e4 underflows in float64 too), the places where log p, (1 - p)^gamma
    # with gamma < 1, and |r - r'| at 0 have infinite or undefined derivatives
    rows = [[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]]
    for dtype in (torch.float32, torch.float64):
        for target in (torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2]), torch.tensor([0, 2, 2, 1])):
            for reduction in ("none", "mean"):
                loss = SATURATED[name]()
                loss.reduction = reduction
                logits = torch.tensor(rows, dtype=dtype, requires_grad=True)
                out = loss(logits, target)
                out.sum().backward()
                assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all(), (dtype, target, reduction)


# ---------------------------------------------------------------------------------------------------------
# scheduled focal


def test_scheduled_focal_follows_the_epoch():
    z, y = batch(seed=6)
    logits, target = as_torch(z, y)
    loss = ScheduledFocalLoss()  # FLSc-531: 5 before epoch 100, 3 before 250, then 1
    for epoch, gamma in [(None, 5.0), (0, 5.0), (99, 5.0), (100, 3.0), (249, 3.0), (250, 1.0), (10**6, 1.0),
                         (7, 5.0)]:
        if epoch is not None:
            loss.set_epoch(epoch)
        assert loss.gamma == gamma
        assert loss(logits, target).item() == pytest.approx(np_focal(z, y, gamma).mean(), rel=1e-12)
    loss = ScheduledFocalLoss(milestones=[0], gammas=[9.0, 2.0])  # a schedule starting at epoch 0
    loss.set_epoch(0)
    assert loss.gamma == 2.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`epoch`"):
            loss.set_epoch(bad)


# ---------------------------------------------------------------------------------------------------------
# AdaFocal


def validation_probs(n, c, seed, scale, right_rate):
    gen = np.random.default_rng(seed)
    probs = np.exp(np_log_softmax(gen.normal(scale=scale, size=(n, c))))
    labels = np.where(gen.random(n) < right_rate, probs.argmax(1), gen.integers(0, c, size=n))
    return probs, labels


def test_adafocal_update_rule_matches_the_released_code_step_by_step():
    """Over-confident validation sets raise gamma (to the clip at 20); under-confident ones lower it, switch it
    to -0.2 (inverse focal) below 0.2, then push it down to the clip at -2; back over-confident, a negative
    gamma moves toward 0 and switches back to +0.2."""
    loss = AdaFocalLoss(n_bins=6, lamda=4.0)
    gammas = np.ones(6)
    sets = [(3.0, 0.2)] * 3 + [(0.3, 1.0)] * 6 + [(3.0, 0.0)] * 3  # (logit scale, rate of right labels)
    seen_negative = seen_clip_high = seen_clip_low = seen_switch_back = False
    for step, (scale, right) in enumerate(sets):
        probs, labels = validation_probs(97, 4, step, scale, right)
        got = loss.update_from_validation(torch.tensor(probs), torch.tensor(labels))
        want, edges = np_adafocal_update(gammas, probs, labels, lamda=4.0)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)
        np.testing.assert_allclose(loss.edges.numpy(), edges, rtol=0, atol=0)
        seen_negative |= (want < 0).any()
        seen_clip_high |= (want == 20.0).any()
        seen_clip_low |= (want == -2.0).any()
        seen_switch_back |= ((gammas < 0) & (want == 0.2)).any()
        gammas = want
    assert seen_negative and seen_clip_high and seen_clip_low and seen_switch_back
    np.testing.assert_allclose(loss.gammas.numpy(), gammas, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n, n_bins", [(5, 3), (7, 2), (1, 4), (2, 3), (6, 6), (10, 15), (9, 1)])
def test_adafocal_edges_are_mukhotis_equal_mass_interpolation(n, n_bins):
    # histedges_equalN: np.interp(np.linspace(0, N, n_bins + 1), np.arange(N), np.sort(conf)); (5, 3) puts an
    # edge between the two largest confidences, (1, 4) and (10, 15) positions past the last sample
    probs, labels = validation_probs(n, 3, n + n_bins, 1.5, 0.5)
    loss = AdaFocalLoss(n_bins=n_bins)
    loss.update_from_validation(torch.tensor(probs), torch.tensor(labels))
    conf = np.sort(probs.max(axis=1))
    want = np.interp(np.linspace(0, n, n_bins + 1), np.arange(n), conf)
    np.testing.assert_allclose(loss.edges.numpy(), want, rtol=1e-15, atol=0)


def test_adafocal_forward_reads_the_updated_bins_and_gammas():
    loss = AdaFocalLoss(n_bins=4, lamda=10.0)
    probs, labels = validation_probs(50, 3, 9, 1.0, 0.9)  # under-confident: three gammas switch to inverse focal
    loss.update_from_validation(torch.tensor(probs), torch.tensor(labels))
    gammas, edges = loss.gammas.numpy().copy(), loss.edges.numpy().copy()
    assert (gammas < 0).any() and (gammas > 0).any()
    z, y = batch(seed=9)
    logits, target = as_torch(z, y)
    np.testing.assert_allclose(loss(logits, target).item(), np_adafocal(z, y, gammas, edges).mean(), rtol=1e-12)


def test_adafocal_state_is_in_the_state_dict_and_restored():
    loss = AdaFocalLoss(n_bins=5)
    probs, labels = validation_probs(60, 3, 11, 2.0, 0.5)
    loss.update_from_validation(torch.tensor(probs).float(), torch.tensor(labels))
    state = loss.state_dict()
    assert set(state) == {"gammas", "edges"}
    resumed = AdaFocalLoss(n_bins=5)
    assert not torch.equal(resumed.gammas, loss.gammas)
    resumed.load_state_dict(state)
    z, y = batch(seed=12)
    logits, target = as_torch(z, y)
    assert resumed(logits, target).item() == loss(logits, target).item()
    # also inside a parent module, as the LightningModule holds it
    parent = torch.nn.Module()
    parent.loss = loss
    assert {"loss.gammas", "loss.edges"} <= set(parent.state_dict())


def test_adafocal_update_refuses_bad_probabilities_and_skips_ignored_targets():
    loss = AdaFocalLoss(n_bins=2)
    with pytest.raises(ValueError, match="`probs`"):
        loss.update_from_validation(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    probs, labels = validation_probs(30, 3, 13, 1.0, 0.5)
    marked = np.concatenate([labels, [-100, -100]])
    extra = np.concatenate([probs, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    got = loss.update_from_validation(torch.tensor(extra), torch.tensor(marked))
    np.testing.assert_allclose(got.numpy(), np_adafocal_update(np.ones(2), probs, labels)[0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("make, name", [
    (lambda: MarginBasedLabelSmoothingLoss(margin=-1), "margin"),
    (lambda: MarginBasedLabelSmoothingLoss(alpha=-0.1), "alpha"),
    (lambda: MMCELoss(lamda=-1), "lamda"),
    (lambda: MMCELoss(kernel_width=0), "kernel_width"),
    (lambda: MMCELoss(kernel_width=float("inf")), "kernel_width"),
    (lambda: DCALoss(beta=-1), "beta"),
    (lambda: ConfidencePenaltyLoss(beta=float("nan")), "beta"),
    (lambda: Poly1Loss(epsilon=-1), "epsilon"),
    (lambda: DualFocalLoss(gamma=-1), "gamma"),
    (lambda: DualFocalLoss(reduction="avg"), "reduction"),
    (lambda: ScheduledFocalLoss(milestones=[250, 100]), "milestones"),
    (lambda: ScheduledFocalLoss(milestones=[100, 100]), "milestones"),
    (lambda: ScheduledFocalLoss(milestones=[-1, 100]), "milestones"),
    (lambda: ScheduledFocalLoss(gammas=[5.0, 3.0]), "gammas"),
    (lambda: ScheduledFocalLoss(gammas=[5.0, -3.0, 1.0]), "gammas"),
    (lambda: AdaFocalLoss(n_bins=0), "n_bins"),
    (lambda: AdaFocalLoss(lamda=-1), "lamda"),
    (lambda: AdaFocalLoss(gamma_min=1.0), "gamma_min"),
    (lambda: AdaFocalLoss(gamma_max=-1.0), "gamma_max"),
    (lambda: AdaFocalLoss(gamma_initial=30.0), "gamma_initial"),
    (lambda: AdaFocalLoss(switch_pt=-0.2), "switch_pt"),
    (lambda: AdaFocalLoss(ignore_index=1.5), "ignore_index"),
])
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: AdaFocalLoss(gamma_initial=float("inf")),
     "Expected argument `gamma_initial` to be a finite number, but got inf"),
    (lambda: AdaFocalLoss(gamma_initial="1"), "Expected argument `gamma_initial` to be a finite number, but got '1'"),
    (lambda: AdaFocalLoss(gamma_min=float("nan")), "Expected argument `gamma_min` to be a finite number, but got nan"),
    (lambda: AdaFocalLoss(gamma_min=True), "Expected argument `gamma_min` to be a finite number, but got True"),
    (lambda: AdaFocalLoss(gamma_max=float("-inf")),
     "Expected argument `gamma_max` to be a finite number, but got -inf"),
    (lambda: ScheduledFocalLoss(milestones=100),
     "Expected arguments `milestones` and `gammas` to be sequences, but got 100 and (5.0, 3.0, 1.0)"),
    (lambda: ScheduledFocalLoss(milestones=[1.5], gammas=[1.0, 2.0]),
     "Expected argument `milestones` to hold epochs (integers >= 0), but got [1.5]"),
    (lambda: ScheduledFocalLoss(milestones=[True], gammas=[1.0, 2.0]),
     "Expected argument `milestones` to hold epochs (integers >= 0), but got [True]"),
])
def test_bad_arguments_messages_are_exact(make, message):
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == message


def test_extra_repr_shows_the_papers_defaults():
    scheduled = ScheduledFocalLoss()
    want = {
        MarginBasedLabelSmoothingLoss(): "margin=10.0, alpha=0.1, reduction='mean', ignore_index=-100",
        MMCELoss(): "lamda=2.0, kernel_width=0.4, reduction='mean', ignore_index=-100",
        DCALoss(): "beta=5.0, reduction='mean', ignore_index=-100",
        ConfidencePenaltyLoss(): "beta=0.1, reduction='mean', ignore_index=-100",
        Poly1Loss(): "epsilon=1.0, reduction='mean', ignore_index=-100",
        DualFocalLoss(): "gamma=5.0, reduction='mean', ignore_index=-100",
        scheduled: "milestones=[100, 250], gammas=[5.0, 3.0, 1.0], epoch=0, gamma=5.0, reduction='mean', "
                   "ignore_index=-100",
        AdaFocalLoss(): "n_bins=15, lamda=1.0, gamma_initial=1.0, gamma_min=-2.0, gamma_max=20.0, switch_pt=0.2, "
                        "reduction='mean', ignore_index=-100",
    }
    for loss, text in want.items():
        assert loss.extra_repr() == text
    scheduled.set_epoch(120)
    assert scheduled.extra_repr() == ("milestones=[100, 250], gammas=[5.0, 3.0, 1.0], epoch=120, gamma=3.0, "
                                      "reduction='mean', ignore_index=-100")
    assert ScheduledFocalLoss([3], [2, 1], "sum", 9).extra_repr() == \
        "milestones=[3], gammas=[2.0, 1.0], epoch=0, gamma=2.0, reduction='sum', ignore_index=9"


def test_losses_give_no_warning():
    import warnings

    z, y = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make, _ in LOSSES.values():
            logits, target = as_torch(z, y, requires_grad=True)
            make()(logits, target).backward()
        AdaFocalLoss().update_from_validation(torch.tensor(np.exp(np_log_softmax(z))), torch.tensor(y))


def test_bad_inputs_name_the_argument():
    for name, (make, _) in LOSSES.items():
        with pytest.raises(ValueError, match="`target`"):
            make()(torch.zeros(3, 5), torch.tensor([0, 1, 5]))
        with pytest.raises(ValueError, match="`logits`"):
            make()(torch.tensor([[0.0, float("nan")]] * 2), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------------------
# configs: the shipped files, their rules on the command line, two epochs of training

CONFIGS = {
    "mbls": (MarginBasedLabelSmoothingLoss, {"margin": 10.0, "alpha": 0.1}),
    "mmce": (MMCELoss, {"lamda": 2.0, "kernel_width": 0.4}),
    "dca": (DCALoss, {"beta": 5.0}),
    "confidence_penalty": (ConfidencePenaltyLoss, {"beta": 0.1}),
    "poly1": (Poly1Loss, {"epsilon": 1.0}),
    "dual_focal": (DualFocalLoss, {"gamma": 5.0}),
    "focal_scheduled": (ScheduledFocalLoss, {"milestones": (100, 250), "gammas": (5.0, 3.0, 1.0)}),
    "adafocal": (AdaFocalLoss, {"n_bins": 15, "lamda": 1.0, "gamma_initial": 1.0, "gamma_min": -2.0,
                                "gamma_max": 20.0, "switch_pt": 0.2}),
}


def test_configs_build_the_losses_with_their_defaults():
    for name, (cls, settings) in CONFIGS.items():
        loss = instantiate(OmegaConf.load(CONFIG_DIR / "loss" / f"{name}.yaml"))
        assert type(loss) is cls and loss.reduction == "mean", name
        for key, value in settings.items():
            assert getattr(loss, key) == value, (name, key)


REFUSED = [
    (["loss=mbls", "loss.margin=-1"], "loss.margin=-1 is invalid: expected a number >= 0"),
    (["loss=mbls", "loss.alpha=-0.5"], "loss.alpha=-0.5 is invalid: expected a number >= 0"),
    (["loss=mmce", "loss.lamda=-2"], "loss.lamda=-2 is invalid: expected a number >= 0"),
    (["loss=mmce", "loss.kernel_width=0"], "loss.kernel_width=0 is invalid: expected a number > 0"),
    (["loss=dca", "loss.beta=-1.0"], "loss.beta=-1.0 is invalid: expected a number >= 0"),
    (["loss=confidence_penalty", "loss.beta=-0.1"], "loss.beta=-0.1 is invalid: expected a number >= 0"),
    (["loss=poly1", "loss.epsilon=-1"], "loss.epsilon=-1 is invalid: expected a number >= 0"),
    (["loss=dual_focal", "loss.gamma=-2"], "loss.gamma=-2 is invalid: expected a number >= 0"),
    (["loss=focal_scheduled", "loss.milestones=[250,100]"],
     "loss.milestones=[250, 100] is invalid: expected a strictly increasing list of epochs (integers >= 0)"),
    (["loss=focal_scheduled", "loss.milestones=[100,100]"],
     "loss.milestones=[100, 100] is invalid: expected a strictly increasing list of epochs (integers >= 0)"),
    (["loss=focal_scheduled", "loss.gammas=[5,3]"],
     "loss.gammas=[5, 3] is invalid: expected a list of len(loss.milestones) + 1 = 3 numbers >= 0 (one per stage "
     "of the schedule)"),
    (["loss=adafocal", "loss.lamda=-1"], "loss.lamda=-1 is invalid: expected a number >= 0"),
    (["loss=adafocal", "loss.n_bins=0"], "loss.n_bins=0 is invalid: expected an integer >= 1"),
    (["loss=adafocal", "loss.gamma_initial=25"],
     "loss.gamma_initial=25 is invalid: expected a number in [loss.gamma_min, loss.gamma_max] = [-2, 20]"),
    (["loss=mbls", "loss.gama=1"],
     "loss.gama=1 is invalid: expected an argument of ceexp.losses.MarginBasedLabelSmoothingLoss (alpha, "
     "ignore_index, margin, reduction)"),
]


@pytest.mark.parametrize("args, line", REFUSED)
def test_bad_values_are_refused_in_one_line_naming_the_field(args, line):
    with pytest.raises(ConfigError) as info:
        check_command_line(args)  # what scripts/train.py runs on its arguments before Hydra
    assert str(info.value) == line


@pytest.mark.parametrize("args, line", [REFUSED[3], REFUSED[8], REFUSED[13]])
def test_bad_values_stop_the_command_line_with_exit_2_before_any_data(tmp_path, args, line):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts" / "train.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    imported = {x.split("|")[-1].strip() for x in proc.stderr.splitlines() if x.startswith("import time:")}
    assert [x for x in proc.stderr.splitlines() if not x.startswith("import time:")] == [f"error: {line}"]
    # no torch, no Lightning, no data module imported; no run folder
    assert {"torch", "pytorch_lightning", "ceexp.data"}.isdisjoint(imported)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name", CONFIGS)
def test_every_new_loss_trains_two_epochs_on_digits(fast_cfg, name):
    from ceexp.train import train

    metrics = train(fast_cfg(f"loss={name}", "logger=none"))
    assert metrics["status"] == "completed"
    # chance is 0.1; two epochs show that it learns (DCA's beta 5 slows the first epochs: 0.45 after two, 0.89
    # after five, against 0.90 for cross-entropy after two)
    assert metrics["test/acc"] > 0.3 and math.isfinite(metrics["test/nll"]) and math.isfinite(metrics["test/loss"])
