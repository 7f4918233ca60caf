"""Tests of ceexp.metrics.

Every expected number comes from a hand computation (derived in a comment), from the float64 numpy
reference implementations below (plain loops, written from the papers' formulas, sharing no code with
ceexp), or from torchmetrics.
"""
from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

import ceexp.metrics as M
from ceexp.metrics import (
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    ClasswiseCalibrationError,
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    mean_confidence,
    nats_to_bits,
    negative_log_likelihood,
    reliability_bins,
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
    assert mean_confidence(probs).item() == pytest.approx(p.max(axis=1).mean(), abs=1e-12)


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
# Metric classes


def _metrics():
    return {
        "ece": (CalibrationError(n_bins=15), lambda p, t: expected_calibration_error(p, t, 15)),
        "rmsce": (CalibrationError(n_bins=10, norm="l2"), lambda p, t: expected_calibration_error(p, t, 10, "l2")),
        "mce": (CalibrationError(n_bins=10, norm="max"), lambda p, t: expected_calibration_error(p, t, 10, "max")),
        "adaece": (AdaptiveCalibrationError(n_bins=15), lambda p, t: adaptive_calibration_error(p, t, 15)),
        "cwece": (ClasswiseCalibrationError(5, n_bins=15), lambda p, t: classwise_calibration_error(p, t, 15)),
        "brier": (BrierScore(), brier_score),
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


@pytest.mark.parametrize("name", list(_metrics()))
def test_metric_before_update_is_nan(name):
    metric, _ = _metrics()[name]
    with pytest.warns(UserWarning):  # torchmetrics: compute called before update
        assert torch.isnan(metric.compute())


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


@pytest.mark.parametrize("fn", ["ece", "adaece", "cwece", "reliability"])
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
    with pytest.raises(ValueError, match="`num_classes`"):
        ClasswiseCalibrationError(num_classes=0)
    with pytest.raises(ValueError, match="`num_classes`"):
        ClasswiseCalibrationError(num_classes=3).update(GOOD_P, GOOD_T)
    for metric in (CalibrationError(), AdaptiveCalibrationError(), ClasswiseCalibrationError(2), BrierScore()):
        with pytest.raises(ValueError, match="`probs`.*sum to 1"):
            metric.update(torch.tensor([[0.7, 0.2], [0.4, 0.6]]), GOOD_T)
        with pytest.raises(ValueError, match="`target`"):
            metric.update(GOOD_P, torch.tensor([[0], [1]]))


def test_mean_confidence_validates():
    with pytest.raises(ValueError, match=r"`probs` to have shape \(N, C\)"):
        mean_confidence(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="`probs`.*sum to 1"):
        mean_confidence(torch.tensor([[0.5, 0.6]]))


def test_docstring_examples():
    result = doctest.testmod(M, extraglobs={"torch": torch, "math": math})
    assert result.attempted > 0 and result.failed == 0
