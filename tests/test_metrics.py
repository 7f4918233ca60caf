"""Tests of ceexp.metrics.

Every expected number comes from a hand computation (derived in a comment), from the float64 numpy
reference implementations below (plain loops, written from the papers' formulas, sharing no code with
ceexp), or from another library: torchmetrics, relplot (smECE, by its authors), uncertainty-calibration
(``calibration``, the debiased ECE, by its authors) and statsmodels (Wilson intervals).
"""
from __future__ import annotations

import math
import re
import warnings

import calibration
import numpy as np
import pytest
import relplot
import torch
from statsmodels.stats.proportion import proportion_confint
from torchmetrics.functional.classification import multiclass_calibration_error

from ceexp.metrics import (
    METRIC_FUNCTIONS,
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    ClasswiseCalibrationError,
    DebiasedCalibrationError,
    SmoothCalibrationError,
    adaptive_calibration_error,
    bin_edges,
    brier_score,
    classwise_calibration_error,
    debiased_ece,
    expected_calibration_error,
    nats_to_bits,
    negative_log_likelihood,
    reliability_bins,
    signed_ece,
    smooth_ece,
)

# ---------------------------------------------------------------------------------------------------------
# float64 numpy references


def np_bin(value: float, n_bins: int) -> int:
    """(lower, upper] bins with edges b / n_bins; 0 joins the first bin, 1 is in the last."""
    for b in range(n_bins):
        if value <= (b + 1) / n_bins:
            return b
    raise AssertionError(value)


def np_gaps(conf, correct, bins):
    """Per non-empty bin: (weight n_b / N, |acc_b - conf_b|)."""
    out = []
    for b in sorted(set(bins)):
        members = [i for i in range(len(conf)) if bins[i] == b]
        acc = np.mean([correct[i] for i in members])
        mean_conf = np.mean([conf[i] for i in members])
        out.append((len(members) / len(conf), abs(acc - mean_conf)))
    return out


def np_ece(p, y, n_bins, norm="l1"):
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    gaps = np_gaps(conf, correct, [np_bin(c, n_bins) for c in conf])
    if norm == "l1":
        return sum(w * g for w, g in gaps)
    if norm == "l2":
        return math.sqrt(sum(w * g * g for w, g in gaps))
    return max(g for _, g in gaps)


def np_adaece(p, y, n_bins):
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    bins = np.empty(len(conf), dtype=int)
    for b, chunk in enumerate(np.array_split(np.argsort(conf, kind="stable"), n_bins)):
        bins[chunk] = b
    return sum(w * g for w, g in np_gaps(conf, correct, list(bins)))


def np_adaece_ties(conf, correct, n_bins):
    """AdaECE with the tie rule: array_split positions of the sorted values; every sample takes the chunk of the
    first sorted position holding its value (found by searchsorted, not by a running maximum)."""
    conf, correct = np.asarray(conf, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    ordered = np.sort(conf)
    chunk_of_position = np.empty(len(conf), dtype=int)
    for b, positions in enumerate(np.array_split(np.arange(len(conf)), n_bins)):
        chunk_of_position[positions] = b
    bins = [chunk_of_position[np.searchsorted(ordered, c, side="left")] for c in conf]
    return sum(w * g for w, g in np_gaps(conf, correct, bins))


def np_classwise(p, y, n_bins):
    per_class = []
    for c in range(p.shape[1]):
        pc, hit = p[:, c], y == c
        per_class.append(sum(w * g for w, g in np_gaps(pc, hit, [np_bin(v, n_bins) for v in pc])))
    return np.mean(per_class)


def np_brier(p, y):
    return np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1))


@pytest.fixture(scope="module")
def data():
    """N=500, C=5, float64: logits that favour the true class, sharpened so the model is overconfident."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=500)
    logits = rng.normal(size=(500, 5)) * 2.0
    logits[np.arange(500), y] += 1.5
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return torch.from_numpy(p), torch.from_numpy(y), p, y


# ---------------------------------------------------------------------------------------------------------
# hand-computed cases

# Top-label confidences 1.0 (wrong), 0.9 (right), 0.3 (wrong); C=4 so that 0.3 can be a row maximum.
HAND_PROBS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.05, 0.9, 0.05, 0.0], [0.3, 0.25, 0.25, 0.2]], dtype=torch.float64)
HAND_TARGET = torch.tensor([1, 1, 1])


def test_ece_hand_case_puts_one_in_last_bin():
    # 5 bins. (0.8, 1.0] holds 1.0 (wrong) and 0.9 (right): conf 0.95, acc 0.5, gap 0.45, weight 2/3.
    # (0.2, 0.4] holds 0.3 (wrong): gap 0.3, weight 1/3.  ECE = 0.45 * 2/3 + 0.3 * 1/3 = 0.3 + 0.1 = 0.4.
    # (Were 1.0 in a bin of its own: 1/3 + 0.1/3 + 0.1 = 0.4667.)
    assert expected_calibration_error(HAND_PROBS, HAND_TARGET, n_bins=5).item() == pytest.approx(0.4, abs=1e-12)


def test_mce_and_rmsce_hand_case():
    # MCE = max(0.45, 0.3) = 0.45.  RMSCE = sqrt(2/3 * 0.45^2 + 1/3 * 0.3^2) = sqrt(0.135 + 0.03) = sqrt(0.165).
    assert expected_calibration_error(HAND_PROBS, HAND_TARGET, 5, norm="max").item() == pytest.approx(0.45, abs=1e-12)
    assert expected_calibration_error(HAND_PROBS, HAND_TARGET, 5, norm="l2").item() == pytest.approx(
        math.sqrt(0.165), abs=1e-12
    )


def test_torchmetrics_gives_exact_one_its_own_bin():
    # The documented difference: torchmetrics bins 1.0 apart from 0.9, giving 1/3 + 0.1/3 + 0.1 = 0.46667.
    theirs = multiclass_calibration_error(HAND_PROBS, HAND_TARGET, num_classes=4, n_bins=5)
    assert theirs.item() == pytest.approx(1 / 3 + 0.1 / 3 + 0.1, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confidence_on_an_edge_joins_the_bin_below(dtype):
    # Row maxima exactly 0.2, 0.4, 0.6, 0.8, 1.0 with 5 bins: (lower, upper] puts one in each bin 0..4.
    probs = torch.tensor(
        [[0.2] * 5, [0.4, 0.3, 0.3, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0, 0.0], [1.0, 0, 0, 0, 0]],
        dtype=dtype,
    )
    bins = reliability_bins(probs, torch.tensor([0, 1, 0, 0, 0]), n_bins=5)
    assert bins.count.tolist() == [1, 1, 1, 1, 1]
    # accuracy per bin: row 0 predicts class 0 (ties -> lowest index), target 0: right; row 1 wrong; rest right
    assert bins.accuracy.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert bins.confidence.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-7)
    assert bins.edges.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-15)


def test_zero_goes_in_first_bin_and_one_in_last_classwise():
    # Rows p=(0.0, 1.0) with y=0 and p=(0.1, 0.9) with y=1; 5 bins.
    # Class 0: p_0 = 0.0 (y==0) and 0.1 (y!=0) share (0, 0.2]: mean p 0.05, frequency 1/2, gap 0.45, weight 1.
    # Class 1: p_1 = 1.0 (y!=1) and 0.9 (y==1) share (0.8, 1]: mean p 0.95, frequency 1/2, gap 0.45, weight 1.
    # cwECE = (0.45 + 0.45) / 2 = 0.45.  (Separate bins for 0 and 1 would give (0.55 + 0.55) / 2.)
    probs = torch.tensor([[0.0, 1.0], [0.1, 0.9]], dtype=torch.float64)
    got = classwise_calibration_error(probs, torch.tensor([0, 1]), n_bins=5)
    assert got.item() == pytest.approx(0.45, abs=1e-12)


def test_reliability_bins_hand_case():
    bins = reliability_bins(HAND_PROBS, HAND_TARGET, n_bins=5)
    assert bins.count.tolist() == [0, 1, 0, 0, 2]
    assert bins.confidence[1].item() == pytest.approx(0.3) and bins.confidence[4].item() == pytest.approx(0.95)
    assert bins.accuracy[1].item() == 0.0 and bins.accuracy[4].item() == 0.5
    assert torch.isnan(bins.confidence[[0, 2, 3]]).all() and torch.isnan(bins.accuracy[[0, 2, 3]]).all()


def test_adaptive_with_fewer_samples_than_bins():
    # Two samples, 15 bins: array_split gives chunks of 1, 1, 0, ..., 0; the empty ones are skipped.
    # 0.7 (wrong): gap 0.7; 0.9 (right): gap 0.1; each weight 1/2 -> 0.4.
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]], dtype=torch.float64)
    assert adaptive_calibration_error(probs, torch.tensor([0, 1])).item() == pytest.approx(0.4, abs=1e-12)


def test_brier_hand_case():
    # (0.8-1)^2 + 0.2^2 = 0.08 ; (0.5-0)^2 + (0.5-1)^2 = 0.5 ; mean 0.29.  Perfect one-hot gives 0, wrong one-hot 2.
    probs = torch.tensor([[0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    assert brier_score(probs, torch.tensor([0, 1])).item() == pytest.approx(0.29, abs=1e-12)
    eye = torch.eye(3, dtype=torch.float64)
    assert brier_score(eye, torch.tensor([0, 1, 2])).item() == 0.0
    assert brier_score(eye, torch.tensor([1, 2, 0])).item() == 2.0


def test_nll_helpers():
    # -log softmax((2, 0))_1 = log(1 + e^2) - 0 ;  ln 2 nats = 1 bit
    logits, target = torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([1])
    assert negative_log_likelihood(logits, target).item() == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-12)
    assert negative_log_likelihood(logits, target, reduction="none").shape == (1,)
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bits(torch.tensor(math.log(8))).item() == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------------------
# random data against numpy and torchmetrics


@pytest.mark.parametrize("n_bins", [1, 7, 15])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_numpy(data, n_bins, norm):
    probs, target, p, y = data
    got = expected_calibration_error(probs, target, n_bins=n_bins, norm=norm)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(np_ece(p, y, n_bins, norm), abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 15, 37])  # 500 = 37 * 13 + 19: unequal chunks
def test_adaptive_matches_numpy(data, n_bins):
    probs, target, p, y = data
    assert adaptive_calibration_error(probs, target, n_bins).item() == pytest.approx(np_adaece(p, y, n_bins), abs=1e-12)


def test_classwise_and_brier_match_numpy(data):
    probs, target, p, y = data
    assert classwise_calibration_error(probs, target, 10).item() == pytest.approx(np_classwise(p, y, 10), abs=1e-12)
    assert brier_score(probs, target).item() == pytest.approx(np_brier(p, y), abs=1e-12)
    assert METRIC_FUNCTIONS["confidence"](probs, target).item() == pytest.approx(p.max(axis=1).mean(), abs=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_torchmetrics_off_the_edges(data, norm):
    probs, target, p, _ = data
    conf = p.max(axis=1)
    edges = np.arange(16) / 15
    assert np.abs(conf[:, None] - edges[None, :]).min() > 1e-9  # no confidence on an edge or at 1.0
    theirs = multiclass_calibration_error(probs, target, num_classes=5, n_bins=15, norm=norm)
    assert expected_calibration_error(probs, target, 15, norm).item() == pytest.approx(theirs.item(), abs=1e-6)


def test_float32_input_gives_float32_output(data):
    probs, target, p, y = data
    got = expected_calibration_error(probs.float(), target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(np_ece(p, y, 15), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------
# smECE, debiased ECE, signed ECE, AdaECE with ties, Wilson intervals, the registry


def _probs(n, n_classes, temperature, seed, dtype=np.float64):
    """Softmax of logits that favour the true class; temperature < 1 sharpens (over-confident), > 1 flattens."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) * 2.0
    logits[np.arange(n), y] += 2.0
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype), y


def _calibrated_binary(n, seed):
    """Two classes, P(y = 1) = p_1 exactly: a calibrated model, so smECE is small and its bandwidth below 0.01."""
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.02, 0.98, size=n)
    return np.stack([1 - p1, p1], axis=1), (rng.uniform(size=n) < p1).astype(np.int64)


SMECE_CASES = {
    "over-confident N=500 C=10": lambda: _probs(500, 10, 0.3, 1),
    "under-confident N=37 C=10": lambda: _probs(37, 10, 3.0, 2),
    "N=3000 C=5": lambda: _probs(3000, 5, 1.0, 3),
    "calibrated binary N=30000": lambda: _calibrated_binary(30000, 4),
    "one sample": lambda: _probs(1, 3, 1.0, 5),
    "one-hot rows (confidence exactly 1)": lambda: (np.eye(4)[[0, 1, 2, 3, 0, 1]], np.array([0, 1, 2, 0, 1, 1])),
}


@pytest.mark.parametrize("case", list(SMECE_CASES))
def test_smooth_ece_matches_relplot(case):
    p, y = SMECE_CASES[case]()
    f, correct = relplot.multiclass_logits_to_confidences(p, y, probs=True)  # top-label (confidence, 0/1)
    want = relplot.smECE(f, correct)
    got = smooth_ece(torch.from_numpy(p), torch.from_numpy(y))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, abs=1e-9)


def test_smooth_ece_bandwidth_below_one_percent_is_exercised():
    # The calibrated case ends where the grid and the evaluation points grow with 1 / sigma: sigma* = 7/1024,
    # a grid of round(20 / sigma) // 2 + 1 = 1464 points (even: the kernel's centre falls between two of them).
    p, y = SMECE_CASES["calibrated binary N=30000"]()
    _, sigma = relplot.smECE(*relplot.multiclass_logits_to_confidences(p, y, probs=True), return_width=True)
    assert sigma < 0.01 and (max(2000, round(20 / sigma)) // 2 + 1) % 2 == 0


def test_smooth_ece_float32_input():
    p, y = _probs(400, 10, 0.5, 6, dtype=np.float32)
    f, correct = relplot.multiclass_logits_to_confidences(p, y, probs=True)
    want = relplot.smECE(f.astype(np.float64), correct)
    got = smooth_ece(torch.from_numpy(p), torch.from_numpy(y))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_smooth_ece_hand_cases():
    # Every prediction right at confidence 1, or a calibrated average at one confidence: no residual anywhere.
    assert smooth_ece(torch.eye(3, dtype=torch.float64), torch.tensor([0, 1, 2])).item() == 0.0
    three_of_four = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)
    assert smooth_ece(three_of_four, torch.tensor([0, 0, 0, 1])).item() == pytest.approx(0.0, abs=1e-15)
    # All wrong at 0.9: the residual is 0.9 wherever the density is, so smECE is 0.9 (less the density's 1e-4
    # guard, relative to a density sum in the millions)
    all_wrong = torch.tensor([[0.9, 0.1]] * 100, dtype=torch.float64)
    assert smooth_ece(all_wrong, torch.ones(100, dtype=torch.int64)).item() == pytest.approx(0.9, abs=1e-5)


DEBIASED_CASES = {
    "over-confident N=500 C=10": lambda: _probs(500, 10, 0.3, 11),
    "under-confident N=61 C=10": lambda: _probs(61, 10, 3.0, 12),
    "N=2003 C=5": lambda: _probs(2003, 5, 1.0, 13),
    "calibrated binary N=1000": lambda: _calibrated_binary(1000, 14),
}


@pytest.mark.parametrize("case", list(DEBIASED_CASES))
def test_debiased_ece_matches_calibration_package(case):
    p, y = DEBIASED_CASES[case]()
    assert not calibration.utils.is_discrete(p)  # the package's equal-mass (scaling) path, not per-value bins
    want = calibration.get_calibration_error(p, y, p=2, debias=True, mode="top-label")
    assert debiased_ece(torch.from_numpy(p), torch.from_numpy(y)).item() == pytest.approx(want, abs=1e-12)
    for n_bins in (1, 7, 40):
        want = calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins, mode="top-label")
        got = debiased_ece(torch.from_numpy(p), torch.from_numpy(y), n_bins).item()
        assert got == pytest.approx(want, abs=1e-12), n_bins


def test_debiased_ece_hand_cases():
    # One bin of four at 0.9, accuracy 1/2: sqrt(0.4^2 - (1/2)(1/2)/3) = sqrt(0.16 - 0.083333) = sqrt(0.076667).
    target = torch.tensor([0, 0, 1, 1])
    got = debiased_ece(torch.tensor([[0.9, 0.1]] * 4, dtype=torch.float64), target, n_bins=1)
    assert got.item() == pytest.approx(math.sqrt(0.16 - 0.25 / 3), abs=1e-12)
    # At 0.75 the correction exceeds the plug-in square (0.0625 < 0.083333): clamped to 0.
    assert debiased_ece(torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64), target, n_bins=1).item() == 0.0
    # N=3, 2 bins: array_split sizes 2, 1. Sorted 0.6 (wrong), 0.8 (wrong) | 0.9 (right).
    # Bin 1: conf 0.7, acc 0: 0.49 - 0 / 1 = 0.49, weight 2/3. Bin 2 holds one sample: 0, but N stays 3.
    # sqrt(0.49 * 2/3) = sqrt(0.326667) = 0.571548  (dropping the single sample's weight would give 0.7).
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    got = debiased_ece(probs, torch.tensor([0, 0, 1]), n_bins=2)
    assert got.item() == pytest.approx(math.sqrt(0.49 * 2 / 3), abs=1e-12)


def _tied(n, seed, grid=20):
    """Top-label confidences on a grid of 1/grid (heavy ties), right with probability 0.35 + 1.6 (conf - 0.5):
    over-confident below 0.75 and under-confident above, so that the gaps of neighbouring bins differ in sign."""
    rng = np.random.default_rng(seed)
    conf = rng.integers(grid // 2 + 1, grid + 1, size=n) / grid
    p = np.stack([conf, 1 - conf], axis=1)
    y = np.where(rng.uniform(size=n) < np.clip(0.35 + 1.6 * (conf - 0.5), 0, 1), 0, 1)
    return p, y


def test_adaptive_ties_are_never_split_hand_case():
    # The example: four rows at 0.6, two right; whatever the order, one bin: |0.5 - 0.6| = 0.1.
    tied = torch.tensor([[0.6, 0.4]] * 4, dtype=torch.float64)
    for target in ([0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0]):
        assert adaptive_calibration_error(tied, torch.tensor(target), n_bins=2).item() == pytest.approx(0.1, abs=1e-12)
    # Sorted 0.5 (wrong), 0.6 (right), 0.6 (right), 0.6 (wrong), 0.9 (right), 0.9 (right); 3 bins of 2 by
    # position. The 0.6 block starts at position 1 (chunk 0), so chunk 0 = {0.5, 0.6 x 3}: conf 2.3/4 = 0.575,
    # acc 2/4, gap 0.075, weight 4/6; chunk 1 is empty; chunk 2 = {0.9, 0.9}: gap 0.1, weight 2/6.
    # AdaECE = 0.05 + 0.1/3 = 0.083333.  (Block to the chunk of its last member: 0.5/6 + 0.0667/2 + 0.1/3 = 0.15.)
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.1, 0.9], [0.4, 0.6]], dtype=torch.float64)
    target = torch.tensor([0, 0, 1, 1, 1, 1])  # rows: 0.6 right, 0.9 right, 0.5 wrong, 0.6 wrong, 0.9 right, 0.6 right
    assert adaptive_calibration_error(probs, target, n_bins=3).item() == pytest.approx(0.05 + 0.1 / 3, abs=1e-12)


@pytest.mark.parametrize("n_bins", [2, 7, 15])
def test_adaptive_with_ties_matches_numpy_and_ignores_order(n_bins):
    p, y = _tied(203, seed=n_bins)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    want = np_adaece_ties(conf, correct, n_bins)
    rng = np.random.default_rng(0)
    for _ in range(4):
        perm = rng.permutation(len(y))
        got = adaptive_calibration_error(torch.from_numpy(p[perm]), torch.from_numpy(y[perm]), n_bins)
        assert got.item() == pytest.approx(want, abs=1e-12)
    # the old rule (stable sort, array_split cut through the tie blocks) depends on the order here: within
    # each tie block, wrong predictions first, then right ones first
    wrong_first, right_first = np.lexsort((correct, conf)), np.lexsort((~correct, conf))
    assert np_adaece(p[wrong_first], y[wrong_first], n_bins) != pytest.approx(
        np_adaece(p[right_first], y[right_first], n_bins), abs=1e-6)
    for order in (wrong_first, right_first):
        got = adaptive_calibration_error(torch.from_numpy(p[order]), torch.from_numpy(y[order]), n_bins)
        assert got.item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n_bins", [3, 15])
def test_debiased_ece_ties_bin_like_kumar_et_al(n_bins):
    # calibration.get_equal_bins puts edges half-way between chunks, and a value on an edge joins the bin below:
    # a tie block goes whole to the chunk of its first member, the rule ceexp uses for every equal-mass bin
    p, y = _tied(301, seed=20 + n_bins)
    want = calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins, mode="top-label")
    assert want > 0.05
    perm = np.random.default_rng(1).permutation(len(y))
    got = debiased_ece(torch.from_numpy(p[perm]), torch.from_numpy(y[perm]), n_bins)
    assert got.item() == pytest.approx(want, abs=1e-12)


# Seven predictions in 4 bins of width 0.25 (7 is not a multiple of 4); C=4 so that 0.4 can be a row maximum.
SIGNED_PROBS = torch.tensor([
    [0.4, 0.3, 0.2, 0.1],    # 0.4  right  (0.25, 0.5]
    [0.5, 0.3, 0.1, 0.1],    # 0.5  right  (0.25, 0.5]: conf 0.45, acc 1: -0.55 (under-confident), weight 2/7
    [0.6, 0.2, 0.1, 0.1],    # 0.6  wrong  (0.5, 0.75]
    [0.7, 0.1, 0.1, 0.1],    # 0.7  right  (0.5, 0.75]
    [0.75, 0.25, 0.0, 0.0],  # 0.75 wrong  (0.5, 0.75] (on the edge): conf 2.05/3, acc 1/3: +0.35, weight 3/7
    [0.8, 0.2, 0.0, 0.0],    # 0.8  right  (0.75, 1]
    [1.0, 0.0, 0.0, 0.0],    # 1.0  wrong  (0.75, 1]: conf 0.9, acc 0.5: +0.4 (over-confident), weight 2/7
], dtype=torch.float64)
SIGNED_TARGET = torch.tensor([0, 0, 1, 0, 1, 0, 1])


def test_signed_ece_hand_case():
    # (2 * -0.55 + 3 * 0.35 + 2 * 0.4) / 7 = 0.75 / 7 = 0.107143; ECE (absolute) = (1.1 + 1.05 + 0.8) / 7.
    assert signed_ece(SIGNED_PROBS, SIGNED_TARGET, n_bins=4).item() == pytest.approx(0.75 / 7, abs=1e-12)
    assert expected_calibration_error(SIGNED_PROBS, SIGNED_TARGET, 4).item() == pytest.approx(2.95 / 7, abs=1e-12)
    # Right and wrong swapped on the two under/over-confident extremes: 0.4, 0.5 wrong, 1.0 right.
    # Bin 1: 0.45 - 0 = +0.45; bin 3: 0.9 - 1 = -0.1: (0.9 + 1.05 - 0.2) / 7 = 1.75 / 7.
    flipped = torch.tensor([1, 1, 1, 0, 1, 0, 0])
    assert signed_ece(SIGNED_PROBS, flipped, n_bins=4).item() == pytest.approx(1.75 / 7, abs=1e-12)
    # an under-confident model is negative: confidence 0.6, always right
    under = torch.tensor([[0.6, 0.4]] * 5, dtype=torch.float64)
    assert signed_ece(under, torch.zeros(5, dtype=torch.int64)).item() == pytest.approx(-0.4, abs=1e-12)


def test_signed_ece_is_confidence_minus_accuracy_for_any_bins(data):
    # sum_b (n_b / N)(conf_b - acc_b) telescopes: the bins cancel
    probs, target, p, y = data
    want = p.max(axis=1).mean() - (p.argmax(axis=1) == y).mean()
    for n_bins in (1, 4, 15, 37):
        assert signed_ece(probs, target, n_bins).item() == pytest.approx(want, abs=1e-12)
    assert abs(signed_ece(probs, target).item()) <= expected_calibration_error(probs, target).item()


Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def test_wilson_interval_hand_cases():
    # n = 1: p = 1 gives [1 / (1 + z^2), 1]; p = 0 gives [0, z^2 / (1 + z^2)].
    # n = 4, k = 2 (p = 1/2): centre 1/2, half-width z sqrt(1/16 + z^2/64) / (1 + z^2/4).
    probs = torch.tensor([[0.1, 0.9], [0.0, 1.0], [0.65, 0.35], [0.65, 0.35], [0.65, 0.35], [0.65, 0.35]],
                         dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([1, 0, 0, 0, 1, 1]), n_bins=3)
    # bins (0, 1/3], (1/3, 2/3], (2/3, 1]: the 0.9 (right) and 1.0 (wrong) share the last bin
    assert bins.count.tolist() == [0, 4, 2]
    half = Z95 * math.sqrt(1 / 16 + Z95**2 / 64) / (1 + Z95**2 / 4)
    assert bins.acc_low[1].item() == pytest.approx(0.5 - half, abs=1e-12)
    assert bins.acc_high[1].item() == pytest.approx(0.5 + half, abs=1e-12)
    assert math.isnan(bins.acc_low[0].item()) and math.isnan(bins.acc_high[0].item())
    single = reliability_bins(torch.tensor([[0.3, 0.7]], dtype=torch.float64), torch.tensor([1]), n_bins=1)
    assert single.acc_low.item() == pytest.approx(1 / (1 + Z95**2), abs=1e-12) and single.acc_high.item() == 1.0
    single = reliability_bins(torch.tensor([[0.3, 0.7]], dtype=torch.float64), torch.tensor([0]), n_bins=1)
    assert single.acc_low.item() == 0.0 and single.acc_high.item() == pytest.approx(Z95**2 / (1 + Z95**2), abs=1e-12)


@pytest.mark.parametrize("right", [0, 1])
def test_wilson_interval_holds_the_accuracy_exactly_when_all_or_none_are_right(right):
    # n samples in one bin, all right (or all wrong), n = 1 .. 60: the bound on the accuracy's side is exactly
    # the accuracy (rounding must not put it at 1 - 1e-16, which a plot would draw as a negative error bar)
    for n in range(1, 61):
        probs = torch.tensor([[0.7, 0.3]] * n, dtype=torch.float64)
        bins = reliability_bins(probs, torch.full((n,), 1 - right), n_bins=1)
        low, high = proportion_confint(right * n, n, alpha=0.05, method="wilson")
        if right:
            assert bins.acc_high.item() == 1.0 and bins.acc_low.item() == pytest.approx(low, abs=1e-12)
        else:
            assert bins.acc_low.item() == 0.0 and bins.acc_high.item() == pytest.approx(high, abs=1e-12)


def test_wilson_interval_matches_statsmodels(data):
    probs, target, _, _ = data
    bins = reliability_bins(probs, target, n_bins=15)
    filled = bins.count > 0
    hits = np.rint((bins.accuracy * bins.count)[filled].numpy())
    low, high = proportion_confint(hits, bins.count[filled].numpy(), alpha=0.05, method="wilson")
    assert bins.acc_low[filled].numpy() == pytest.approx(low, abs=1e-12)
    assert bins.acc_high[filled].numpy() == pytest.approx(high, abs=1e-12)
    assert torch.isnan(bins.acc_low[~filled]).all() and torch.isnan(bins.acc_high[~filled]).all()
    acc = bins.accuracy[filled]
    assert (bins.acc_low[filled] <= acc).all() and (acc <= bins.acc_high[filled]).all()
    # still a NamedTuple whose first four fields are the old ones
    edges, confidence, accuracy, count, *_ = bins
    assert edges is bins.edges and count is bins.count


def registry_references(p, y, n_bins):
    """The value of every METRIC_FUNCTIONS entry from numpy, uncertainty-calibration and relplot."""
    return {
        "acc": (p.argmax(axis=1) == y).mean(),
        "adaece": np_adaece(p, y, n_bins),
        "brier": np_brier(p, y),
        "confidence": p.max(axis=1).mean(),
        "cwece": np_classwise(p, y, n_bins),
        "ece": np_ece(p, y, n_bins),
        "ece_debiased": calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins, mode="top-label"),
        "ece_signed": p.max(axis=1).mean() - (p.argmax(axis=1) == y).mean(),
        "mce": np_ece(p, y, n_bins, "max"),
        "smece": relplot.smECE(*relplot.multiclass_logits_to_confidences(p, y, probs=True)),
    }


def test_metric_functions_registry(data):
    probs, target, p, y = data
    assert set(METRIC_FUNCTIONS) == {"acc", "adaece", "brier", "confidence", "cwece", "ece", "ece_debiased",
                                     "ece_signed", "mce", "smece"}
    want = registry_references(p, y, 10)
    for name, fn in METRIC_FUNCTIONS.items():
        got = fn(probs, target, 10)  # n_bins positionally, for every entry
        assert got.shape == () and got.dtype == torch.float64, name
        assert got.item() == pytest.approx(want[name], abs=1e-9), name


def test_eval_metrics_logs_the_new_estimators(data):
    from ceexp.module import EvalMetrics

    probs, target, _, _ = data
    logits = probs.log().float()  # softmax(log p) = p, up to float32
    metrics = EvalMetrics(num_classes=5, n_bins=15)
    for chunk in torch.split(torch.arange(500), [200, 300]):
        metrics.update(logits[chunk], target[chunk])
    values = metrics.compute()
    assert set(values) == set(METRIC_FUNCTIONS) | {"nll", "nll_bits"}
    softmax = logits.softmax(dim=1).double()
    for name, fn in METRIC_FUNCTIONS.items():
        assert values[name] == pytest.approx(fn(softmax, target, 15).item(), abs=1e-6), name


# ---------------------------------------------------------------------------------------------------------
# Metric classes


def _metrics():
    return {
        "ece": (CalibrationError(n_bins=15), lambda p, t: expected_calibration_error(p, t, 15)),
        "rmsce": (CalibrationError(n_bins=10, norm="l2"), lambda p, t: expected_calibration_error(p, t, 10, "l2")),
        "mce": (CalibrationError(n_bins=10, norm="max"), lambda p, t: expected_calibration_error(p, t, 10, "max")),
        "adaece": (AdaptiveCalibrationError(n_bins=15), lambda p, t: adaptive_calibration_error(p, t, 15)),
        "cwece": (ClasswiseCalibrationError(5, n_bins=15), lambda p, t: classwise_calibration_error(p, t, 15)),
        "brier": (BrierScore(), brier_score),
        "smece": (SmoothCalibrationError(), smooth_ece),
        "ece_debiased": (DebiasedCalibrationError(n_bins=10), lambda p, t: debiased_ece(p, t, 10)),
    }


@pytest.mark.parametrize("name", list(_metrics()))
def test_metric_over_batches_equals_functional(data, name):
    probs, target, _, _ = data
    metric, functional = _metrics()[name]
    for chunk in torch.split(torch.arange(500), [100, 250, 150]):
        metric.update(probs[chunk], target[chunk])
    assert metric.compute().item() == pytest.approx(functional(probs, target).item(), abs=1e-12)


@pytest.mark.parametrize("name", list(_metrics()))
def test_merging_two_processes_equals_union(data, name):
    probs, target, _, _ = data
    first, functional = _metrics()[name]
    second, _ = _metrics()[name]
    first.update(probs[:180], target[:180])
    second.update(probs[180:], target[180:])
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(functional(probs, target).item(), abs=1e-12)


def test_calibration_error_state_is_per_bin_sums(data):
    probs, target, _, _ = data
    metric = CalibrationError(n_bins=15)
    for _ in range(3):
        metric.update(probs, target)
    state = metric.metric_state
    assert set(state) == {"count", "conf_sum", "correct_sum"}
    assert all(isinstance(v, torch.Tensor) and v.shape == (15,) for v in state.values())
    assert int(metric.count.sum()) == 1500
    cw = ClasswiseCalibrationError(num_classes=5, n_bins=15)
    cw.update(probs, target)
    assert all(v.shape == (5, 15) for v in cw.metric_state.values())
    # summing the states by hand (what a DDP all-reduce does) gives the metric of the union
    a, b = CalibrationError(n_bins=15), CalibrationError(n_bins=15)
    a.update(probs[:300], target[:300])
    b.update(probs[300:], target[300:])
    summed = CalibrationError(n_bins=15)
    summed.merge_state({key: getattr(a, key) + getattr(b, key) for key in ("count", "conf_sum", "correct_sum")})
    with warnings.catch_warnings():  # torchmetrics warns that `summed` itself was never updated
        warnings.simplefilter("ignore", UserWarning)
        ece = summed.compute()
    assert ece.item() == pytest.approx(expected_calibration_error(probs, target).item(), abs=1e-12)


def test_metric_reliability_bins_equal_functional(data):
    probs, target, _, _ = data
    metric = CalibrationError(n_bins=15)
    metric.update(probs[:250], target[:250])
    metric.update(probs[250:], target[250:])
    got, want = metric.reliability_bins(), reliability_bins(probs, target, 15)
    assert torch.equal(got.count, want.count) and torch.equal(got.edges, want.edges)
    for a, b in ((got.confidence, want.confidence), (got.accuracy, want.accuracy)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-12)
    # the numpy reference for the filled bins
    conf, correct = data[2].max(axis=1), data[2].argmax(axis=1) == data[3]
    bins = np.array([np_bin(c, 15) for c in conf])
    assert got.count.tolist() == [int((bins == b).sum()) for b in range(15)]
    for b in range(15):
        if (bins == b).any():
            assert got.accuracy[b].item() == pytest.approx(correct[bins == b].mean(), abs=1e-12)


def test_metric_reliability_bins_intervals_equal_functional(data):
    probs, target, _, _ = data
    metric = CalibrationError(n_bins=15)
    metric.update(probs[:123], target[:123])
    metric.update(probs[123:], target[123:])
    got, want = metric.reliability_bins(), reliability_bins(probs, target, 15)
    for a, b in ((got.acc_low, want.acc_low), (got.acc_high, want.acc_high)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-12)


def test_summaries_equal_functionals(data):
    probs, target, _, _ = data
    ece = CalibrationError(n_bins=15)
    first, second = AdaptiveCalibrationError(n_bins=15), AdaptiveCalibrationError(n_bins=15)
    ece.update(probs, target)
    first.update(probs[:200], target[:200])
    second.update(probs[200:], target[200:])
    first.merge_state(second)  # what a DDP gather of the list states gives
    assert ece.summary()["ece_signed"].item() == pytest.approx(signed_ece(probs, target).item(), abs=1e-12)
    summary = first.summary()
    assert set(summary) == {"adaece", "ece_debiased", "smece"}
    assert summary["adaece"].item() == pytest.approx(adaptive_calibration_error(probs, target).item(), abs=1e-12)
    assert summary["ece_debiased"].item() == pytest.approx(debiased_ece(probs, target).item(), abs=1e-12)
    assert summary["smece"].item() == pytest.approx(smooth_ece(probs, target).item(), abs=1e-12)
    assert all(torch.isnan(v) for v in AdaptiveCalibrationError().summary().values())


@pytest.mark.parametrize("name", list(_metrics()))
def test_metric_before_update_is_nan(name):
    metric, _ = _metrics()[name]
    with pytest.warns(UserWarning):  # torchmetrics: compute called before update
        value = metric.compute()
    assert torch.isnan(value) and value.dtype == torch.float64 and value.shape == ()


@pytest.mark.parametrize("num_classes", [1, 2, 7])
def test_classwise_before_update_is_nan_for_any_class_count(num_classes):
    with pytest.warns(UserWarning):  # torchmetrics: compute called before update
        value = ClasswiseCalibrationError(num_classes).compute()
    assert torch.isnan(value) and value.dtype == torch.float64


def test_metric_reset(data):
    probs, target, _, _ = data
    metric = CalibrationError()
    metric.update(probs, target)
    metric.reset()
    metric.update(probs[:50], target[:50])
    assert metric.compute().item() == pytest.approx(expected_calibration_error(probs[:50], target[:50]).item())


# ---------------------------------------------------------------------------------------------------------
# bad input


GOOD_P = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
GOOD_T = torch.tensor([0, 1])
FUNCTIONS = {
    "ece": expected_calibration_error,
    "adaece": adaptive_calibration_error,
    "cwece": classwise_calibration_error,
    "brier": brier_score,
    "reliability": reliability_bins,
    "smece": smooth_ece,
    "ece_debiased": debiased_ece,
    "ece_signed": signed_ece,
    **{f"registry_{name}": fn for name, fn in METRIC_FUNCTIONS.items()},
}


@pytest.mark.parametrize(
    "probs, target, match",
    [
        (torch.tensor([[0.7, 0.2], [0.4, 0.6]]), GOOD_T, "`probs`.*sum to 1"),
        (torch.tensor([[1.5, -0.5], [0.4, 0.6]]), GOOD_T, r"`probs` in \[0, 1\]"),
        (torch.tensor([0.7, 0.3]), GOOD_T, r"`probs` to have shape \(N, C\)"),
        (GOOD_P, torch.tensor([0, 2]), r"`target` values in \[0, 2\)"),
        (GOOD_P, torch.tensor([0.0, 1.0]), "`target` to have dtype torch.int64"),
        (GOOD_P, torch.tensor([[0], [1]]), r"`target` to have shape \(N,\)"),
        (torch.empty(0, 2), torch.empty(0, dtype=torch.int64), "non-empty `probs`"),
        (torch.tensor([[1.0], [1.0]]), GOOD_T, "C >= 2"),
        (torch.tensor([[0, 1], [1, 0]]), GOOD_T, "`probs` to be a floating tensor"),
    ],
)
@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_bad_tensors_raise(fn, probs, target, match):
    with pytest.raises(ValueError, match=match):
        FUNCTIONS[fn](probs, target)


@pytest.mark.parametrize("fn", ["ece", "adaece", "cwece", "reliability", "ece_debiased", "ece_signed"])
@pytest.mark.parametrize("n_bins", [0, -3, 2.0, True, "15"])
def test_bad_n_bins_raises(fn, n_bins):
    with pytest.raises(ValueError, match="Expected argument `n_bins` to be a positive integer"):
        FUNCTIONS[fn](GOOD_P, GOOD_T, n_bins=n_bins)


def test_bad_norm_and_reduction_raise():
    with pytest.raises(ValueError, match="Expected argument `norm` to be one of.*'l3'"):
        expected_calibration_error(GOOD_P, GOOD_T, norm="l3")
    with pytest.raises(ValueError, match="`norm`"):
        CalibrationError(norm="l3")
    with pytest.raises(ValueError, match="`reduction`"):
        negative_log_likelihood(GOOD_P, GOOD_T, reduction="avg")
    with pytest.raises(ValueError, match="`logits`"):
        negative_log_likelihood(GOOD_P[0], GOOD_T)


def test_metric_classes_validate():
    with pytest.raises(ValueError, match="Expected argument `n_bins` to be a positive integer, but got 0"):
        CalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="`n_bins`"):
        AdaptiveCalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="Expected argument `n_bins` to be a positive integer, but got 0"):
        DebiasedCalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="`num_classes`"):
        ClasswiseCalibrationError(num_classes=0)
    with pytest.raises(ValueError, match="`num_classes`"):
        ClasswiseCalibrationError(num_classes=3).update(GOOD_P, GOOD_T)
    for metric in (CalibrationError(), AdaptiveCalibrationError(), ClasswiseCalibrationError(2), BrierScore(),
                   SmoothCalibrationError(), DebiasedCalibrationError()):
        with pytest.raises(ValueError, match="`probs`.*sum to 1"):
            metric.update(torch.tensor([[0.7, 0.2], [0.4, 0.6]]), GOOD_T)
        with pytest.raises(ValueError, match="`target`"):
            metric.update(GOOD_P, torch.tensor([[0], [1]]))


# ---------------------------------------------------------------------------------------------------------
# defaults, result and state dtypes, one sample, summaries, cross-process sync


def test_the_default_is_fifteen_bins():
    p, y = _calibrated_binary(400, 8)  # gaps of both signs, so the bins matter
    probs, target = torch.from_numpy(p), torch.from_numpy(y)
    debiased = {k: calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=k, mode="top-label")
                for k in (15, 16)}
    # 16 bins give other values on these data, so a different default would show
    assert np_adaece(p, y, 15) != pytest.approx(np_adaece(p, y, 16), abs=1e-6)
    assert np_classwise(p, y, 15) != pytest.approx(np_classwise(p, y, 16), abs=1e-6)
    assert debiased[15] != pytest.approx(debiased[16], abs=1e-6)
    assert adaptive_calibration_error(probs, target).item() == pytest.approx(np_adaece(p, y, 15), abs=1e-12)
    assert classwise_calibration_error(probs, target).item() == pytest.approx(np_classwise(p, y, 15), abs=1e-12)
    assert reliability_bins(probs, target).count.tolist() == [
        sum(np_bin(c, 15) == b for c in p.max(axis=1)) for b in range(15)]
    for metric, want in ((AdaptiveCalibrationError(), np_adaece(p, y, 15)),
                         (DebiasedCalibrationError(), debiased[15]),
                         (ClasswiseCalibrationError(2), np_classwise(p, y, 15))):
        metric.update(probs, target)
        assert metric.compute().item() == pytest.approx(want, abs=1e-9), type(metric).__name__


# 12 two-class rows whose top-label confidence is k / 256 (exact in float16 and bfloat16), mostly over-confident
K256 = np.array([131, 140, 153, 166, 177, 190, 201, 213, 229, 241, 250, 255])
K256_PROBS = np.stack([K256 / 256, 1 - K256 / 256], axis=1)
K256_TARGET = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_registry_gives_float32_for_16_and_32_bit_probs(dtype):
    # the values are exact in every dtype, so each metric is its float64 reference rounded to float32: the sums
    # and means are taken in float64 (a bfloat16 mean of the confidences would be off by 1e-3) and smECE's kernel
    # sums too (float16 grid positions would be off by 3e-6)
    want = registry_references(K256_PROBS, K256_TARGET, 3)
    assert want["ece_debiased"] > 0.2 and want["smece"] > 0.3
    probs, target = torch.from_numpy(K256_PROBS).to(dtype), torch.from_numpy(K256_TARGET)
    for name, fn in METRIC_FUNCTIONS.items():
        got = fn(probs, target, 3)
        assert got.dtype == torch.float32 and got.shape == (), name
        assert got.item() == pytest.approx(want[name], abs=1e-7), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nll_of_16_bit_logits_is_float32(dtype):
    # -log softmax((2, 0))_1 = log(1 + e^2); 2 and 0 are exact in 16 bits
    logits, target = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=dtype), torch.tensor([1, 1])
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (2,))):
        got = negative_log_likelihood(logits, target, reduction=reduction)
        assert got.dtype == torch.float32 and got.shape == shape, reduction
    assert negative_log_likelihood(logits, target).item() == pytest.approx(math.log1p(math.exp(2.0)), abs=1e-6)


def test_brier_counts_classes_that_no_target_names():
    # C = 3, class 2 never a target: (0.5 - 1)^2 + 0.3^2 + 0.2^2 = 0.38; 0.1^2 + (0.6 - 1)^2 + 0.3^2 = 0.26
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    assert brier_score(probs, torch.tensor([0, 1])).item() == pytest.approx(0.32, abs=1e-12)
    metric = BrierScore()
    metric.update(probs, torch.tensor([0, 1]))
    assert metric.compute().item() == pytest.approx(0.32, abs=1e-12)


def test_one_sample():
    # confidence 0.7 for class 0, the target is class 1: one bin (of any binning) holds it, gap 0.7.
    # classwise: class 0 p 0.7 (not y) 0.7, class 1 p 0.2 (y) 0.8, class 2 p 0.1 (not y) 0.1: mean 1.6 / 3.
    # debiased: a bin of one sample contributes 0. Brier: 0.7^2 + 0.8^2 + 0.1^2 = 1.14.
    probs, target = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64), torch.tensor([1])
    want = {"ece": 0.7, "mce": 0.7, "adaece": 0.7, "ece_signed": 0.7, "cwece": 1.6 / 3, "ece_debiased": 0.0,
            "brier": 1.14, "acc": 0.0, "confidence": 0.7}
    for name, value in want.items():
        assert METRIC_FUNCTIONS[name](probs, target, 15).item() == pytest.approx(value, abs=1e-12), name
    ece, ada, cw = CalibrationError(), AdaptiveCalibrationError(), ClasswiseCalibrationError(3)
    for metric in (ece, ada, cw):
        metric.update(probs, target)
    assert cw.compute().item() == pytest.approx(1.6 / 3, abs=1e-12)
    assert ece.summary()["ece_signed"].item() == pytest.approx(0.7, abs=1e-12)
    summary = ada.summary()
    assert summary["adaece"].item() == pytest.approx(0.7, abs=1e-12) and summary["ece_debiased"].item() == 0.0


def test_adaptive_tie_block_at_the_lowest_confidence_stays_whole():
    # Sorted 0.6 (right), 0.6 (wrong), 0.7 (right), 0.8 (right) in 4 bins of one: the 0.6 block starts at
    # position 0 and goes whole to chunk 0 (conf 0.6, acc 0.5, gap 0.1, weight 1/2); chunk 1 is empty;
    # 0.7: gap 0.3, 0.8: gap 0.2, each weight 1/4. AdaECE = 0.05 + 0.075 + 0.05 = 0.175 (split: 0.35).
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 0])
    assert np_adaece_ties([0.6, 0.6, 0.7, 0.8], [1, 0, 1, 1], 4) == pytest.approx(0.175, abs=1e-12)
    assert adaptive_calibration_error(probs, target, n_bins=4).item() == pytest.approx(0.175, abs=1e-12)


def test_smooth_ece_below_a_thousandth():
    # 2048 classes, nearly uniform: top-label confidences about 5e-4, below the first grid step (1e-3)
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(60, 2048)) * 0.1
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.where(rng.uniform(size=60) < 0.5, p.argmax(axis=1), rng.integers(0, 2048, size=60))
    f, correct = relplot.multiclass_logits_to_confidences(p, y, probs=True)
    assert f.max() < 1e-3 and 0 < correct.sum() < 60
    got = smooth_ece(torch.from_numpy(p), torch.from_numpy(y))
    assert got.item() == pytest.approx(relplot.smECE(f, correct), abs=1e-12)


def test_metric_states_keep_their_documented_dtypes(data):
    # float32 input: the per-bin counts stay int64 and every sum float64, as documented (and as a DDP
    # all-reduce of the states sums them); the stored top-label samples are float64
    probs, target, _, _ = data
    probs = probs.float()
    ece, cw, brier = CalibrationError(), ClasswiseCalibrationError(5), BrierScore()
    samples = (AdaptiveCalibrationError(), DebiasedCalibrationError(), SmoothCalibrationError())
    for metric in (ece, cw, brier, *samples):
        metric.update(probs[:200], target[:200])
        metric.update(probs[200:], target[200:])
        assert metric.compute().dtype == torch.float64, type(metric).__name__
    assert ece.count.dtype == torch.int64 and ece.conf_sum.dtype == ece.correct_sum.dtype == torch.float64
    assert cw.count.dtype == torch.int64 and cw.prob_sum.dtype == cw.hit_sum.dtype == torch.float64
    assert brier.count.dtype == torch.int64 and brier.sum_squares.dtype == torch.float64
    for metric in samples:
        assert [t.dtype for t in metric.confidence + metric.correct] == [torch.float64] * 4


def test_summaries_name_every_estimator(data):
    probs, target, p, y = data
    metric = CalibrationError(n_bins=15)
    metric.update(probs[:300], target[:300])
    metric.update(probs[300:], target[300:])
    conf, acc = p.max(axis=1).mean(), (p.argmax(axis=1) == y).mean()
    want = {"ece": np_ece(p, y, 15), "rmsce": np_ece(p, y, 15, "l2"), "mce": np_ece(p, y, 15, "max"),
            "ece_signed": conf - acc, "acc": acc, "confidence": conf}
    summary = metric.summary()
    assert set(summary) == set(want)
    for name, value in want.items():
        assert summary[name].dtype == torch.float64 and summary[name].shape == (), name
        assert summary[name].item() == pytest.approx(value, abs=1e-12), name
    empty = AdaptiveCalibrationError().summary()
    assert set(empty) == {"adaece", "ece_debiased", "smece"}
    assert all(torch.isnan(v) and v.dtype == torch.float64 for v in empty.values())


class TwoProcesses:
    """A fake all_gather between this process and a second one, ``other`` (a metric of the same kind, updated
    apart): each call returns ``[this process's tensor, the other's state]``, taking the other's states in the
    order they were added. A list state is gathered once, concatenated (what every process sends), so a process
    that gathered it batch by batch would take the wrong state or run out."""

    def __init__(self):
        self.other, self.queue = None, []

    def load(self):
        self.queue = [torch.cat(v) if isinstance(v, list) else v for v in self.other.metric_state.values()]

    def __call__(self, tensor, group=None):
        return [tensor, self.queue.pop(0)]


@pytest.mark.parametrize("sync_on_compute", [True, False])
def test_summaries_and_reliability_bins_sync_like_compute(data, sync_on_compute):
    probs, target, _, _ = data
    here, there = [(0, 50), (50, 120), (120, 180)], [(180, 400), (400, 500)]  # 3 batches here, 2 there
    seen = (probs, target) if sync_on_compute else (probs[:180], target[:180])
    kwargs = {"distributed_available_fn": lambda: True, "sync_on_compute": sync_on_compute, "compute_with_cache": False}
    ece_gather, ada_gather = TwoProcesses(), TwoProcesses()
    ece = CalibrationError(n_bins=15, dist_sync_fn=ece_gather, **kwargs)
    ada = AdaptiveCalibrationError(n_bins=15, dist_sync_fn=ada_gather, **kwargs)
    ece_gather.other, ada_gather.other = CalibrationError(n_bins=15), AdaptiveCalibrationError(n_bins=15)
    for metric, batches in ((ece, here), (ada, here), (ece_gather.other, there), (ada_gather.other, there)):
        for start, stop in batches:
            metric.update(probs[start:stop], target[start:stop])
    for _ in range(2):  # twice: each call restores the local state after its sync
        for gather, call, check in (
            (ece_gather, ece.summary,
             lambda out: out["rmsce"].item() == pytest.approx(expected_calibration_error(*seen, 15, "l2").item())),
            (ece_gather, ece.reliability_bins,
             lambda out: torch.equal(out.count, reliability_bins(*seen, 15).count)),
            (ada_gather, ada.summary,
             lambda out: out["ece_debiased"].item() == pytest.approx(debiased_ece(*seen, 15).item(), abs=1e-12)),
            (ada_gather, ada.compute,
             lambda out: out.item() == pytest.approx(adaptive_calibration_error(*seen, 15).item(), abs=1e-12)),
        ):
            gather.load()
            assert check(call()), call.__name__
            assert (gather.queue == []) == sync_on_compute, call.__name__  # every state gathered exactly once
    assert int(ece.count.sum()) == 180 and sum(len(t) for t in ada.confidence) == 180


def test_bin_edges():
    assert bin_edges(5).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert bin_edges(5)[3].item() == 0.6 and bin_edges(5, dtype=torch.float32)[3].item() == np.float32(0.6)
    with pytest.raises(ValueError, match="^" + re.escape("Expected argument `n_bins` to be a positive integer, "
                                                         "but got 0") + "$"):
        bin_edges(0)
