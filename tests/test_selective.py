"""Tests of the selective-classification metrics of ceexp.metrics: risk-coverage curve, AURC, E-AURC, AUGRC.

Expected numbers come from hand computations (derived in comments), from float64 numpy references written
here from the definitions (sharing no code with ceexp), and from fd-shifts, the AUGRC authors' code (values
pasted below, computed with ``fd_shifts.analysis.rc_stats.RiskCoverageStatsMixin``, which is not installed).

The definitions under test. Sorting by confidence and accepting tied samples together gives one curve point
per distinct confidence. Between points the error fraction E(c) (accepted and wrong, over N) is linear in the
coverage c. AURC = integral over [0, 1] of E(c) / c, AUGRC = integral of E(c), E-AURC = AURC - (r + (1 - r)
ln(1 - r)) with r the error rate. The references check the tie rule two ways: as the mean over every way of
breaking the ties (each a strict ranking), and by quadrature of the interpolated curve.
"""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from ceexp.metrics import SELECTIVE_FUNCTIONS, aurc, augrc, eaurc, risk_coverage_curve

# ---------------------------------------------------------------------------------------------------------
# float64 numpy references


def np_strict_areas(wrong_in_order):
    """(AURC, AUGRC) of a strict ranking, the samples given most confident first as 0/1 'wrong' flags.

    Sample i (1-based) is accepted as the coverage goes from (i-1)/N to i/N, during which the error fraction
    rises linearly from e_{i-1}/N to e_i/N; the integrals are taken in closed form per step:
    integral of (a + s c) / c = s (c1 - c0) + a ln(c1 / c0), with a = 0 on the first step.
    """
    w = np.asarray(wrong_in_order, dtype=np.float64)
    n = len(w)
    e = np.concatenate([[0.0], np.cumsum(w)]) / n
    area_r = area_g = 0.0
    for i in range(1, n + 1):
        c0, c1 = (i - 1) / n, i / n
        slope = (e[i] - e[i - 1]) / (c1 - c0)
        offset = e[i - 1] - slope * c0
        area_r += slope * (c1 - c0) + (offset * math.log(c1 / c0) if i > 1 else 0.0)
        area_g += (e[i] + e[i - 1]) / 2 * (c1 - c0)
    return area_r, area_g


def np_tie_averaged_areas(confidence, wrong):
    """(AURC, AUGRC) averaged over every order of the tied samples (each a strict ranking)."""
    confidence, wrong = np.asarray(confidence, dtype=np.float64), np.asarray(wrong, dtype=np.float64)
    groups = [wrong[confidence == v] for v in sorted(set(confidence.tolist()), reverse=True)]
    # the distinct orders of a group's 0/1 flags are equally likely under a uniform random permutation
    orders = [sorted(set(itertools.permutations(g.tolist()))) for g in groups]
    areas = [np_strict_areas([x for part in combination for x in part]) for combination in itertools.product(*orders)]
    return tuple(np.mean(areas, axis=0))


def np_quadrature_areas(confidence, wrong):
    """(AURC, AUGRC) by numerical integration of the curve through one point per distinct confidence."""
    confidence, wrong = np.asarray(confidence, dtype=np.float64), np.asarray(wrong, dtype=np.float64)
    n = len(confidence)
    cov, err = [0.0], [0.0]
    for v in sorted(set(confidence.tolist()), reverse=True):
        accepted = confidence >= v
        cov.append(accepted.sum() / n)
        err.append(wrong[accepted].sum() / n)
    area_r = area_g = 0.0
    for k in range(1, len(cov)):
        c0, c1, e0, e1 = cov[k - 1], cov[k], err[k - 1], err[k]

        def line(c):
            return e0 + (e1 - e0) * (c - c0) / (c1 - c0)

        # on the first step E(c) / c is constant (line(0) = 0): evaluate it away from 0
        area_r += quad(lambda c: line(c) / c, max(c0, 1e-300), c1, epsabs=1e-13, epsrel=1e-12)[0]
        area_g += quad(line, c0, c1, epsabs=1e-13, epsrel=1e-12)[0]
    return area_r, area_g


def np_oracle_aurc(wrong):
    """AURC of the strict ranking with every right prediction above every wrong one (the numpy reference)."""
    return np_strict_areas(np.sort(np.asarray(wrong, dtype=np.float64)))[0]


def as_probs(confidence, wrong):
    """Two-class probabilities whose top label is class 0 with the given confidences (>= 0.5), and targets
    that make the listed samples wrong."""
    conf = torch.tensor(confidence, dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], dim=1)
    target = torch.tensor(wrong, dtype=torch.int64)  # class 1 is wrong, class 0 right
    return probs, target


# ---------------------------------------------------------------------------------------------------------
# hand-computed cases


def test_two_samples_by_hand():
    # wrong (0.9) above right (0.8): risk 1 on [0, 1/2], then 0.5 / c: 1/2 + ln(2)/2; E: 1/2 from c = 1/2 on,
    # area 1/8 + 1/4. Right above wrong: 0, then (c - 1/2) / c: 1/2 - ln(2)/2 (the oracle); E: area 1/8.
    probs, target = as_probs([0.9, 0.8], [1, 0])
    assert aurc(probs, target).item() == pytest.approx(0.5 + math.log(2) / 2, abs=1e-15)
    assert augrc(probs, target).item() == pytest.approx(0.375, abs=1e-15)
    assert eaurc(probs, target).item() == pytest.approx(math.log(2), abs=1e-15)
    probs, target = as_probs([0.9, 0.8], [0, 1])
    assert aurc(probs, target).item() == pytest.approx(0.5 - math.log(2) / 2, abs=1e-15)
    assert augrc(probs, target).item() == pytest.approx(0.125, abs=1e-15)
    assert eaurc(probs, target).item() == pytest.approx(0.0, abs=1e-15)


# 0.9 right; 0.8 twice, one right one wrong; 0.6 wrong
TIED_CONF, TIED_WRONG = [0.9, 0.8, 0.8, 0.6], [0, 0, 1, 1]


def test_tied_curve_by_hand():
    curve = risk_coverage_curve(*as_probs(TIED_CONF, TIED_WRONG))
    assert curve.threshold.tolist() == [0.9, 0.8, 0.6]
    assert curve.coverage.tolist() == [0.25, 0.75, 1.0]
    assert curve.count.tolist() == [1, 3, 4] and curve.errors.tolist() == [0, 1, 2]
    assert curve.selective_risk.numpy() == pytest.approx([0.0, 1 / 3, 0.5], abs=1e-15)
    assert curve.generalized_risk.numpy() == pytest.approx([0.0, 0.25, 0.5], abs=1e-15)


def test_tied_areas_by_hand():
    # E: 0 on [0, 1/4]; (c - 1/4) / 2 on [1/4, 3/4] (the tied pair, half wrong); c - 1/2 on [3/4, 1].
    # AURC = int (1/2 - 1/(8c)) over [1/4, 3/4] + int (1 - 1/(2c)) over [3/4, 1]
    #      = 1/4 - ln(3)/8 + 1/4 - ln(4/3)/2.
    # AUGRC = trapezoids (0 + 1/4)/2 * 1/2 + (1/4 + 1/2)/2 * 1/4 = 1/16 + 3/32 = 5/32.
    probs, target = as_probs(TIED_CONF, TIED_WRONG)
    want = 0.5 - math.log(3) / 8 - math.log(4 / 3) / 2
    assert aurc(probs, target).item() == pytest.approx(want, abs=1e-15)
    assert augrc(probs, target).item() == pytest.approx(5 / 32, abs=1e-15)
    # error rate 1/2: oracle 1/2 + 1/2 ln(1/2)
    assert eaurc(probs, target).item() == pytest.approx(want - (0.5 + 0.5 * math.log(0.5)), abs=1e-15)
    # the two ways of breaking the tie, averaged
    both = [np_strict_areas([0, 0, 1, 1]), np_strict_areas([0, 1, 0, 1])]
    assert want == pytest.approx((both[0][0] + both[1][0]) / 2, abs=1e-15)
    assert 5 / 32 == pytest.approx((both[0][1] + both[1][1]) / 2, abs=1e-15)


def test_fd_shifts_values():
    # fd-shifts (IML-DKFZ/fd-shifts, rc_stats.py), on these residuals and confidences:
    # evaluate_auc(risk="selective-risk", interpolation="non-linear") / 1000 = 0.2721097634921983,
    # augrc / 1000 = 0.17361111111111113, aurc_optimal / 1000 = 0.15342640972002758; its default
    # (trapezoid) aurc / 1000 = 0.25362554112554114 is a different estimator and is not matched.
    conf = [0.95, 0.9, 0.9, 0.9, 0.8, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6, 0.5]
    wrong = [0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 1]
    probs, target = as_probs(conf, wrong)
    assert aurc(probs, target).item() == pytest.approx(0.2721097634921983, abs=1e-14)
    assert augrc(probs, target).item() == pytest.approx(0.17361111111111113, abs=1e-14)
    assert eaurc(probs, target).item() == pytest.approx(0.2721097634921983 - 0.15342640972002758, abs=1e-14)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_all_correct_and_all_wrong(n):
    rng = np.random.default_rng(n)
    conf = (0.5 + 0.5 * rng.random(n)).tolist()
    for wrong, want in [(0, (0.0, 0.0, 0.0)), (1, (1.0, 0.0, 0.5))]:
        probs, target = as_probs(conf, [wrong] * n)
        got = (aurc(probs, target).item(), eaurc(probs, target).item(), augrc(probs, target).item())
        assert got == pytest.approx(want, abs=1e-15)


def test_one_tie_group_is_the_error_rate():
    # every sample at one confidence: E(c) = r c, so AURC = r and AUGRC = r / 2, whatever the order
    probs, target = as_probs([0.7] * 8, [1, 0, 0, 1, 0, 0, 0, 1])
    assert aurc(probs, target).item() == pytest.approx(3 / 8, abs=1e-15)
    assert augrc(probs, target).item() == pytest.approx(3 / 16, abs=1e-15)


def test_perfect_rankings_have_zero_excess():
    wrong = [0, 0, 0, 1, 0, 1, 1, 0, 0, 1]
    r = np.mean(wrong)
    strict = [0.99 - 0.01 * i if not w else 0.6 - 0.01 * i for i, w in enumerate(wrong)]  # distinct, right above
    tied = [0.9 if not w else 0.6 for w in wrong]  # two tie groups, right above wrong
    for conf in (strict, tied):
        probs, target = as_probs(conf, wrong)
        assert eaurc(probs, target).item() == pytest.approx(0.0, abs=1e-15)
        assert aurc(probs, target).item() == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-15)
        assert augrc(probs, target).item() == pytest.approx(r * r / 2, abs=1e-15)
    # the closed form agrees with the numpy AURC of the strict oracle ranking
    assert np_oracle_aurc(wrong) == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-15)


# ---------------------------------------------------------------------------------------------------------
# against the numpy references


@pytest.mark.parametrize("seed", range(6))
def test_small_tied_cases_match_the_tie_average(seed):
    rng = np.random.default_rng(seed)
    n = 9
    conf = rng.choice([0.55, 0.7, 0.85, 0.95], size=n)  # many ties
    wrong = (rng.random(n) < 0.4).astype(int)
    probs, target = as_probs(conf.tolist(), wrong.tolist())
    want_r, want_g = np_tie_averaged_areas(conf, wrong)
    assert aurc(probs, target).item() == pytest.approx(want_r, abs=1e-13)
    assert augrc(probs, target).item() == pytest.approx(want_g, abs=1e-13)
    assert eaurc(probs, target).item() == pytest.approx(want_r - np_oracle_aurc(wrong), abs=1e-13)


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_softmax_case_matches_quadrature(decimals):
    rng = np.random.default_rng(1)
    n, c = 300, 5
    y = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) * 2
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf = p.max(axis=1) if decimals is None else np.round(p.max(axis=1), decimals)
    wrong = (p.argmax(axis=1) != y).astype(float)
    probs, target = torch.from_numpy(p), torch.from_numpy(y)
    confidence = None if decimals is None else torch.from_numpy(conf)
    want_r, want_g = np_quadrature_areas(conf, wrong)
    assert aurc(probs, target, confidence).item() == pytest.approx(want_r, abs=1e-9)
    assert augrc(probs, target, confidence).item() == pytest.approx(want_g, abs=1e-9)
    r = wrong.mean()
    want_e = want_r - (r + (1 - r) * math.log(1 - r))
    assert eaurc(probs, target, confidence).item() == pytest.approx(want_e, abs=1e-9)
    assert eaurc(probs, target, confidence).item() >= 0
    # the curve: one point per distinct confidence, risks by direct counting
    curve = risk_coverage_curve(probs, target, confidence)
    distinct = np.unique(conf)[::-1]
    assert curve.threshold.numpy() == pytest.approx(distinct, abs=0)
    for k in [0, len(distinct) // 2, len(distinct) - 1]:
        accepted = conf >= distinct[k]
        assert curve.coverage[k].item() == pytest.approx(accepted.mean(), abs=1e-15)
        assert curve.selective_risk[k].item() == pytest.approx(wrong[accepted].mean(), abs=1e-15)
        assert curve.generalized_risk[k].item() == pytest.approx(wrong[accepted].sum() / n, abs=1e-15)


def test_close_to_geifmans_discrete_mean_without_ties():
    # Geifman et al.'s AURC: the mean selective risk over the coverages 1/N, ..., 1. Same limit, O(log N / N) apart.
    rng = np.random.default_rng(2)
    n = 4000
    conf = rng.random(n) * 0.5 + 0.5
    wrong = (rng.random(n) < 1.2 - conf).astype(float)  # less confident, more often wrong
    order = np.argsort(-conf)
    discrete = np.mean(np.cumsum(wrong[order]) / np.arange(1, n + 1))
    got = aurc(*as_probs(conf.tolist(), wrong.astype(int).tolist())).item()
    assert abs(got - discrete) < math.log(n) / n


def test_order_of_samples_does_not_matter():
    rng = np.random.default_rng(3)
    conf = rng.choice([0.6, 0.7, 0.8, 0.9], size=50).tolist()
    wrong = (rng.random(50) < 0.3).astype(int).tolist()
    probs, target = as_probs(conf, wrong)
    perm = torch.from_numpy(rng.permutation(50))
    for fn in (aurc, eaurc, augrc):
        assert fn(probs[perm], target[perm]).item() == pytest.approx(fn(probs, target).item(), abs=1e-15)


def test_a_given_confidence_ranks_instead_of_the_max_probability():
    probs, target = as_probs([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0])  # max probability: worst ranking
    correct = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert eaurc(probs, target, confidence=correct).item() == pytest.approx(0.0, abs=1e-15)
    assert eaurc(probs, target).item() > 0.3
    # a float32 confidence for float64 probs
    assert aurc(probs, target, confidence=correct.float()).item() == pytest.approx(0.5 + 0.5 * math.log(0.5))


# ---------------------------------------------------------------------------------------------------------
# registry, dtypes, bad input


def test_registry():
    assert set(SELECTIVE_FUNCTIONS) == {"aurc", "eaurc", "augrc"}
    probs, target = as_probs(TIED_CONF, TIED_WRONG)
    for tag, fn in zip(("aurc", "eaurc", "augrc"), (aurc, eaurc, augrc)):
        got = SELECTIVE_FUNCTIONS[tag](probs, target, 10)  # n_bins positionally, ignored
        assert got.shape == () and got.dtype == torch.float64
        assert got.item() == fn(probs, target).item()


@pytest.mark.parametrize("dtype, want", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                         (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_result_dtype(dtype, want):
    probs, target = as_probs(TIED_CONF, TIED_WRONG)
    probs = probs.to(dtype)
    for fn in (aurc, eaurc, augrc):
        got = fn(probs, target)
        assert got.dtype == want and got.shape == ()
    # 16-bit ties stay ties: still the hand value
    assert augrc(probs, target).item() == pytest.approx(5 / 32, abs=1e-7)


@pytest.mark.parametrize("fn", [aurc, eaurc, augrc, risk_coverage_curve])
def test_bad_input_raises(fn):
    probs, target = as_probs([0.9, 0.8], [0, 1])
    with pytest.raises(ValueError, match="`probs`.*sum to 1"):
        fn(torch.tensor([[0.7, 0.2], [0.4, 0.6]]), target)
    with pytest.raises(ValueError, match=r"`target` values in \[0, 2\)"):
        fn(probs, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"`confidence` to have shape \(N,\) with N=2"):
        fn(probs, target, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="`confidence` to be a floating tensor"):
        fn(probs, target, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="`confidence` to be finite"):
        fn(probs, target, torch.tensor([0.5, float("nan")]))


def test_bad_confidence_messages():
    probs, target = as_probs([0.9, 0.8, 0.7], [0, 1, 0])  # N = 3 samples, C = 2 classes
    shape = "Expected `confidence` to have shape (N,) with N=3, but got "
    cases = [
        (torch.tensor([0.5, 0.4]), shape + "(2,)"),
        (torch.zeros(3, 1), shape + "(3, 1)"),
        ([0.5, 0.4, 0.3], shape + "list"),
        (np.array([0.5, 0.4, 0.3]), shape + "ndarray"),
        (torch.tensor([1, 0, 1]), "Expected `confidence` to be a floating tensor, but got dtype torch.int64"),
        (torch.tensor([0.5, float("inf"), 0.1]), "Expected `confidence` to be finite, but it contains NaN or inf"),
    ]
    for fn in (aurc, eaurc, augrc, risk_coverage_curve):
        for confidence, message in cases:
            with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
                fn(probs, target, confidence)
