"""ECE, MCE, RMSCE, signed ECE, AdaECE and classwise ECE on fixtures built to catch binning mistakes: bins that are
over-confident next to bins that are under-confident (a gap taken after summing, not per bin, cancels), sample
counts that no bin count divides, tied confidences (across samples, at an equal-mass cut, within a row), and
confidences exactly on bin edges.

Expected values: by hand for the small fixture (worked in the comments), and float64 numpy written here, from the
definitions, for the random ones; neither uses ceexp's binning.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ceexp import metrics as M

# N = 7, C = 3. Per sample: top-label confidence, right/wrong, and d = hit - confidence.
#  1 (.9, .05, .05) y0: .9 right  +.10      5 (.4, .3, .3)   y1: .4 wrong  -.40 (on the edge .4)
#  2 (.85, .1, .05) y1: .85 wrong -.85      6 (.5, .25, .25) y0: .5 right  +.50
#  3 (.1, .8, .1)   y1: .8 right  +.20      7 (.5, .3, .2)   y1: .5 wrong  -.50 (tied with 6)
#  4 (.3, .35, .35) y1: .35 right +.65 (two classes tied at .35: the prediction is the first, class 1)
HAND_PROBS = [[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.3, 0.35, 0.35], [0.4, 0.3, 0.3],
              [0.5, 0.25, 0.25], [0.5, 0.3, 0.2]]
HAND_TARGET = [0, 1, 1, 1, 1, 0, 1]


def _hand():
    return torch.tensor(HAND_PROBS, dtype=torch.float64), torch.tensor(HAND_TARGET)


def test_hand_fixture_top_label_metrics_five_bins():
    probs, target = _hand()
    # bins (b/5, (b+1)/5]: (.8, 1] {.9 +.1, .85 -.85}: sum d -.75, over-confident; (.6, .8] {.8 +.2}: under;
    # (.4, .6] {.5 +.5, .5 -.5}: 0; (.2, .4] {.35 +.65, .4 -.4}: +.25, under. ECE = (.75 + .2 + 0 + .25) / 7
    assert M.expected_calibration_error(probs, target, n_bins=5).item() == pytest.approx(1.2 / 7, abs=1e-12)
    # MCE: per-bin gaps .75/2, .2/1, 0/2, .25/2
    assert M.expected_calibration_error(probs, target, 5, "max").item() == pytest.approx(0.375, abs=1e-12)
    # RMSCE: sqrt(sum_b n_b/N gap_b^2) = sqrt((2 * .375^2 + .2^2 + 2 * .125^2) / 7)
    assert M.expected_calibration_error(probs, target, 5, "l2").item() == pytest.approx(
        np.sqrt((2 * 0.375**2 + 0.2**2 + 2 * 0.125**2) / 7), abs=1e-12)
    # signed: sum(conf - hit) / N = (4.3 - 4) / 7; a gap taken after summing over bins would give this too
    assert M.signed_ece(probs, target, n_bins=5).item() == pytest.approx(0.3 / 7, abs=1e-12)
    # one bin: |4.3 - 4| / 7
    assert M.expected_calibration_error(probs, target, n_bins=1).item() == pytest.approx(0.3 / 7, abs=1e-12)


def test_hand_fixture_bins_are_closed_above():
    probs, target = _hand()
    bins = M.reliability_bins(probs, target, n_bins=5)
    # .8 is in (.6, .8] and .4 in (.2, .4]: lower-closed bins would move them up and change the ECE to
    # (|.1 - .85 + .2| + 0 + |.5 - .5 - .4| + .65) / 7 = 1.6 / 7
    assert bins.count.tolist() == [0, 2, 2, 1, 2]
    np.testing.assert_allclose(bins.confidence.numpy()[1:], [0.375, 0.5, 0.8, 0.875], atol=1e-12)
    np.testing.assert_allclose(bins.accuracy.numpy()[1:], [0.5, 0.5, 1.0, 0.5], atol=1e-12)
    assert np.isnan(bins.confidence[0].item()) and np.isnan(bins.accuracy[0].item())


def test_hand_fixture_adaptive_ece_keeps_a_tie_block_whole_at_a_cut():
    probs, target = _hand()
    # sorted: .35 +.65, .4 -.4, .5 +.5, .5 -.5, .8 +.2, .85 -.85, .9 +.1; 7 = 3 + 2 + 2 (array_split). The tie
    # block .5 spans positions 2 and 3 across the first cut: whole in chunk 0. Chunks {.35 .4 .5 .5}: +.25,
    # {.8}: +.2, {.85 .9}: -.75. AdaECE = 1.2 / 7, in every order of the samples.
    for order in ([0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [3, 6, 0, 5, 1, 4, 2]):
        p, y = probs[order], target[order]
        assert M.adaptive_calibration_error(p, y, n_bins=3).item() == pytest.approx(1.2 / 7, abs=1e-12), order
    # splitting the block at the cut would give (|.65 - .4 + .5| + |-.5 + .2| + .75) / 7 = 1.8 / 7, or
    # (|.65 - .4 - .5| + |.5 + .2| + .75) / 7 = 1.7 / 7 with the two tied samples the other way round
    # 2 bins: 7 = 4 + 3, no block at the cut: {.35 .4 .5 .5}: .25, {.8 .85 .9}: .55
    assert M.adaptive_calibration_error(probs, target, n_bins=2).item() == pytest.approx(0.8 / 7, abs=1e-12)
    # more bins than samples: one sample a chunk (the tie block in one), empty chunks skipped
    assert M.adaptive_calibration_error(probs, target, n_bins=10).item() == pytest.approx(
        (0.65 + 0.4 + 0.0 + 0.2 + 0.85 + 0.1) / 7, abs=1e-12)


def test_hand_fixture_classwise_ece():
    probs, target = _hand()
    # class 0, p = .9+ .85- .1- .3- .4- .5+ .5- (+: y = 0): (0, .2] {.1-}: .1; (.2, .4] {.3- .4-}: .7;
    #   (.4, .6] {.5+ .5-}: 0; (.8, 1] {.9+ .85-}: |.1 - .85| = .75                          -> 1.55
    # class 1, p = .05- .1+ .8+ .35+ .3+ .25- .3+: (0, .2] {.05- .1+}: .85; (.2, .4] {.35+ .3+ .25- .3+}:
    #   .65 + .7 - .25 + .7 = 1.8; (.6, .8] {.8+}: .2                                          -> 2.85
    # class 2 (never the label), p = .05 .05 .1 .35 .3 .25 .2: (0, .2] {.05 .05 .1 .2}: .4; (.2, .4]: .9 -> 1.3
    expected = (1.55 + 2.85 + 1.3) / 3 / 7
    assert M.classwise_calibration_error(probs, target, n_bins=5).item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# random fixtures against float64 numpy


def _grid_fixture(n: int, c: int, seed: int):
    """Probabilities on a grid of 1/20 (many ties; many values exactly on the edges of 5, 10 or 20 bins) and
    labels drawn so that some bins are over-confident and others under-confident."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, 21, size=(n, c - 1)), axis=1)
    counts = np.diff(np.concatenate([np.zeros((n, 1), int), cuts, np.full((n, 1), 20)], axis=1), axis=1)
    probs = counts / 20.0
    top = probs.argmax(1)
    # confident rows are right less often than their confidence says, unsure rows more often
    p_right = np.where(probs.max(1) > 0.6, 0.4, 0.9)
    right = rng.random(n) < p_right
    other = (top + rng.integers(1, c, size=n)) % c
    return probs, np.where(right, top, other)


def _bin_of(x: float, n_bins: int) -> int:
    """Equal-width bin (b/n, (b+1)/n] of x in [0, 1]; 0 in the first bin."""
    for b in range(n_bins):
        if x <= (b + 1) / n_bins:
            return b
    return n_bins - 1


def _gaps(values, hits, n_bins):
    """Per filled bin: (count, |sum hits - sum values|)."""
    out = []
    for b in range(n_bins):
        inside = [i for i, v in enumerate(values) if _bin_of(v, n_bins) == b]
        if inside:
            out.append((len(inside), abs(sum(hits[i] for i in inside) - sum(values[i] for i in inside))))
    return out


def ece_np(probs, y, n_bins, norm="l1"):
    conf, hit = probs.max(1), (probs.argmax(1) == y).astype(float)
    gaps, n = _gaps(conf, hit, n_bins), len(y)
    if norm == "l1":
        return sum(g for _, g in gaps) / n
    if norm == "l2":
        return np.sqrt(sum(g * g / k for k, g in gaps) / n)
    return max(g / k for k, g in gaps)


def adaece_np(probs, y, n_bins):
    conf, hit = probs.max(1), (probs.argmax(1) == y).astype(float)
    order = np.argsort(conf, kind="stable")
    conf, hit = conf[order], hit[order]
    chunk_of_position = np.concatenate([np.full(len(part), k) for k, part in
                                        enumerate(np.array_split(np.arange(len(conf)), n_bins))])
    total = 0.0
    for k in range(n_bins):
        # a tie block goes whole to the chunk of its first position
        members = [i for i in range(len(conf)) if chunk_of_position[np.flatnonzero(conf == conf[i])[0]] == k]
        total += abs(hit[members].sum() - conf[members].sum()) if members else 0.0
    return total / len(conf)


def cwece_np(probs, y, n_bins):
    n, c = probs.shape
    return np.mean([sum(g for _, g in _gaps(probs[:, k], (y == k).astype(float), n_bins)) / n for k in range(c)])


@pytest.mark.parametrize("n, c, seed", [(997, 4, 0), (61, 3, 1), (13, 5, 2)])
@pytest.mark.parametrize("n_bins", [1, 4, 10, 15])
def test_random_grid_fixtures_match_float64_numpy(n, c, seed, n_bins):
    probs, y = _grid_fixture(n, c, seed)
    conf, hit = probs.max(1), probs.argmax(1) == y
    p, t = torch.from_numpy(probs), torch.from_numpy(y)
    if n_bins == 10:  # the fixture is what it claims: mixed bins, ties, edges
        bins = np.array([_bin_of(v, 10) for v in conf])
        signs = {np.sign(hit[bins == b].mean() - conf[bins == b].mean()) for b in set(bins.tolist())}
        assert {-1.0, 1.0} <= signs and len(np.unique(conf)) < n and n % n_bins != 0
    for norm in ("l1", "l2", "max"):
        assert M.expected_calibration_error(p, t, n_bins, norm).item() == pytest.approx(
            ece_np(probs, y, n_bins, norm), abs=1e-12), norm
    assert M.adaptive_calibration_error(p, t, n_bins).item() == pytest.approx(adaece_np(probs, y, n_bins), abs=1e-12)
    assert M.classwise_calibration_error(p, t, n_bins).item() == pytest.approx(cwece_np(probs, y, n_bins), abs=1e-12)
    assert M.signed_ece(p, t, n_bins).item() == pytest.approx((conf.sum() - hit.sum()) / n, abs=1e-12)


def test_metric_classes_over_uneven_batches_equal_the_functions():
    probs, y = _grid_fixture(997, 4, 3)
    p, t = torch.from_numpy(probs), torch.from_numpy(y)
    metrics = {
        "ece": (M.CalibrationError(n_bins=15), ece_np(probs, y, 15)),
        "mce": (M.CalibrationError(n_bins=15, norm="max"), ece_np(probs, y, 15, "max")),
        "adaece": (M.AdaptiveCalibrationError(n_bins=15), adaece_np(probs, y, 15)),
        "cwece": (M.ClasswiseCalibrationError(num_classes=4, n_bins=15), cwece_np(probs, y, 15)),
    }
    for start, stop in ((0, 1), (1, 300), (300, 301), (301, 997)):  # batches of 1, 299, 1 and 696
        for metric, _ in metrics.values():
            metric.update(p[start:stop], t[start:stop])
    for name, (metric, expected) in metrics.items():
        assert metric.compute().item() == pytest.approx(expected, abs=1e-12), name
