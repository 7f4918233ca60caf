"""Every threshold of the losses, metrics and calibrators, tested at the boundary and on each side of it, so that
``<`` turned into ``<=`` (or the reverse) fails a test.

Expected values are float64 formulas written here (``math``), not ceexp's kernels.
"""
from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from ceexp import calibration as cal
from ceexp import losses as L
from ceexp import metrics as M

# ---------------------------------------------------------------------------------------------------------
# FLSD-53: gamma 5 where p_y < 0.2 strictly, 3 from p_y = 0.2 on


def _five_class_logits(delta: float) -> torch.Tensor:
    """One sample, 5 classes, true class 0 with logit ``delta`` and the others 0: p_y = e^d / (e^d + 4)."""
    return torch.tensor([[delta, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)


def _focal64(p: float, gamma: float) -> float:
    return -((1 - p) ** gamma) * math.log(p)


def test_five_equal_logits_give_p_exactly_one_fifth():
    assert torch.softmax(_five_class_logits(0.0), 1)[0, 0].item() == 0.2
    assert torch.log_softmax(_five_class_logits(0.0), 1)[0, 0].exp().item() == 0.2  # as the loss computes it


@pytest.mark.parametrize("delta, gamma", [(0.0, 3.0), (-1e-9, 5.0), (1e-9, 3.0), (-0.5, 5.0), (0.5, 3.0)])
def test_flsd53_switches_gamma_at_p_one_fifth(delta, gamma):
    z = _five_class_logits(delta)
    p = math.exp(delta) / (math.exp(delta) + 4)
    assert (p < 0.2) == (gamma == 5.0) and (delta != 0.0 or p == 0.2)
    target = torch.tensor([0])
    loss = L.SampleDependentFocalLoss(reduction="sum")(z, target)
    assert loss.item() == pytest.approx(_focal64(p, gamma), rel=1e-12)
    assert L.sample_dependent_focal_loss(z, target).item() == pytest.approx(_focal64(p, gamma), rel=1e-12)
    # the closed-form backward at the boundary is the gradient of the focal loss with that gamma
    loss.backward()
    w = z.detach().clone().requires_grad_(True)
    pt = torch.softmax(w, 1)[0, 0]
    (-(1 - pt) ** gamma * torch.log(pt)).backward()
    torch.testing.assert_close(z.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_flsd53_at_exactly_one_fifth_is_not_gamma_5():
    z, target = _five_class_logits(0.0), torch.tensor([0])
    value = L.sample_dependent_focal_loss(z, target, reduction="sum").item()
    assert value == pytest.approx(0.8**3 * math.log(5), rel=1e-12)  # 0.8240
    assert abs(value - 0.8**5 * math.log(5)) > 0.25  # gamma 5 would give 0.5274


def test_flsd53_custom_threshold_boundary():
    z = torch.zeros(3, 2, dtype=torch.float64)  # p_y = 0.5 exactly
    target = torch.tensor([0, 1, 0])
    at = L.sample_dependent_focal_loss(z, target, gamma_low=1.0, gamma_high=2.0, threshold=0.5, reduction="none")
    above = L.sample_dependent_focal_loss(z, target, gamma_low=1.0, gamma_high=2.0, threshold=0.5 + 1e-12,
                                          reduction="none")
    torch.testing.assert_close(at, torch.full((3,), 0.25 * math.log(2), dtype=torch.float64))  # gamma_high
    torch.testing.assert_close(above, torch.full((3,), 0.5 * math.log(2), dtype=torch.float64))  # gamma_low


def test_flsd53_threshold_and_gamma_bounds():
    z, target = torch.zeros(1, 2), torch.tensor([0])
    for ok in (0, 0.0, 1, 1.0):
        L.sample_dependent_focal_loss(z, target, threshold=ok)
        L.SampleDependentFocalLoss(threshold=ok)
    for bad in (-1e-12, 1 + 1e-12, math.nan, math.inf):
        with pytest.raises(ValueError, match="`threshold`"):
            L.sample_dependent_focal_loss(z, target, threshold=bad)
    L.sample_dependent_focal_loss(z, target, gamma_low=0.0, gamma_high=0.0)
    for name in ("gamma_low", "gamma_high"):
        with pytest.raises(ValueError, match=f"Expected argument `{name}` to be a finite number >= 0, but got -1e-12"):
            L.sample_dependent_focal_loss(z, target, **{name: -1e-12})


def test_focal_gamma_zero_is_cross_entropy_and_negative_is_refused():
    z = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([2, 1])
    torch.testing.assert_close(L.FocalLoss(gamma=0.0)(z, y), torch.nn.functional.cross_entropy(z, y))
    with pytest.raises(ValueError, match="`gamma`"):
        L.FocalLoss(gamma=-1e-12)


# ---------------------------------------------------------------------------------------------------------
# FLSc-531 (gamma by epoch), dual focal (strictly below), AdaFocal (bins, switch, clips)


def test_scheduled_focal_switches_on_the_milestone_epoch():
    loss = L.ScheduledFocalLoss(milestones=[100, 250], gammas=[5.0, 3.0, 1.0])
    assert loss.gamma == 5.0
    for epoch, gamma in ((0, 5.0), (99, 5.0), (100, 3.0), (249, 3.0), (250, 1.0), (10**6, 1.0)):
        loss.set_epoch(epoch)
        assert (loss.epoch, loss.gamma) == (epoch, gamma)
    loss = L.ScheduledFocalLoss(milestones=[0], gammas=[4.0, 2.0])
    loss.set_epoch(0)
    assert loss.gamma == 2.0  # a milestone at 0 applies from epoch 0
    with pytest.raises(ValueError, match="`epoch` to be an integer >= 0"):
        loss.set_epoch(-1)


def test_scheduled_focal_milestones_must_increase_strictly():
    L.ScheduledFocalLoss(milestones=[0, 1], gammas=[1, 2, 3])
    L.ScheduledFocalLoss(milestones=[], gammas=[0])
    with pytest.raises(ValueError, match="strictly increasing"):
        L.ScheduledFocalLoss(milestones=[5, 5], gammas=[1, 2, 3])
    with pytest.raises(ValueError, match="integers >= 0"):
        L.ScheduledFocalLoss(milestones=[-1, 5], gammas=[1, 2, 3])
    with pytest.raises(ValueError, match=r"len\(milestones\) \+ 1 = 3 entries, but got 2"):
        L.ScheduledFocalLoss(milestones=[1, 5], gammas=[1, 2])


def test_dual_focal_takes_the_largest_probability_strictly_below_p_y():
    # p = (0.4, 0.4, 0.2) from logits (ln 2, ln 2, 0), true class 0: class 1 ties p_y and is not below it,
    # so p_j = 0.2: loss = (1 - 0.4 + 0.2)^2 log(1/0.4)
    z = torch.tensor([[math.log(2), math.log(2), 0.0]], dtype=torch.float64)
    value = L.DualFocalLoss(gamma=2.0)(z, torch.tensor([0])).item()
    assert value == pytest.approx((1 - 0.4 + 0.2) ** 2 * -math.log(0.4), rel=1e-12)
    # every probability equal: nothing below p_y, p_j = 0: (1 - 1/3)^2 log 3
    value = L.DualFocalLoss(gamma=2.0)(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1])).item()
    assert value == pytest.approx((2 / 3) ** 2 * math.log(3), rel=1e-12)


def test_adafocal_lookup_puts_a_probability_on_an_edge_in_the_upper_bin():
    loss = L.AdaFocalLoss(n_bins=2, gamma_initial=1.0)  # edges 0, 0.5, 1
    loss.gammas.copy_(torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert loss.bins_of(torch.tensor([0.0, 0.5 - 1e-12, 0.5, 1.0], dtype=torch.float64)).tolist() == [0, 0, 1, 1]
    z = torch.zeros(1, 2, dtype=torch.float64)  # p_y = 0.5: bin 1, gamma 0: cross-entropy
    assert loss(z, torch.tensor([0])).item() == pytest.approx(math.log(2), rel=1e-12)
    loss.gammas.copy_(torch.tensor([0.0, -1.0], dtype=torch.float64))  # inverse focal: (1 + p)^1
    assert loss(z, torch.tensor([0])).item() == pytest.approx(1.5 * math.log(2), rel=1e-12)
    loss.gammas.copy_(torch.tensor([0.0, 2.0], dtype=torch.float64))  # focal: (1 - p)^2
    assert loss(z, torch.tensor([0])).item() == pytest.approx(0.25 * math.log(2), rel=1e-12)


def test_adafocal_update_leaves_the_least_confident_sample_out_and_switches_below_switch_pt():
    probs = torch.tensor([[0.2, 0.8]] * 5 + [[0.4, 0.6]], dtype=torch.float64)
    target = torch.tensor([1, 1, 1, 0, 0, 1])
    # one bin (0.6, 0.8]: the sample at 0.6 lies on the lower edge, outside; confidence 0.8, accuracy 3/5
    new = L.AdaFocalLoss(n_bins=1).update_from_validation(probs, target)
    assert new.item() == pytest.approx(math.exp(0.2), rel=1e-12)
    # lamda 0: gamma stays unless its magnitude is strictly below switch_pt
    at = L.AdaFocalLoss(n_bins=1, lamda=0.0, gamma_initial=0.2, switch_pt=0.2).update_from_validation(probs, target)
    below = L.AdaFocalLoss(n_bins=1, lamda=0.0, gamma_initial=0.1999, switch_pt=0.2).update_from_validation(
        probs, target)
    negative = L.AdaFocalLoss(n_bins=1, lamda=0.0, gamma_initial=-0.1, switch_pt=0.2).update_from_validation(
        probs, target)
    assert (at.item(), below.item(), negative.item()) == (0.2, -0.2, 0.2)
    # the clips are inclusive
    top = L.AdaFocalLoss(n_bins=1, lamda=50.0, gamma_initial=20.0, gamma_max=20.0)
    assert top.update_from_validation(probs, target).item() == 20.0


def test_adafocal_argument_bounds_are_inclusive():
    L.AdaFocalLoss(gamma_min=-100.0, gamma_max=100.0, gamma_initial=-100.0)
    L.AdaFocalLoss(gamma_min=0.0, gamma_max=0.0, gamma_initial=0.0)
    for kwargs, field in (({"gamma_min": -100.001}, "gamma_min"), ({"gamma_min": 1e-9}, "gamma_min"),
                          ({"gamma_max": 100.001}, "gamma_max"), ({"gamma_max": -1e-9, "gamma_min": -1.0,
                                                                   "gamma_initial": -1.0}, "gamma_max"),
                          ({"gamma_initial": 20.001}, "gamma_initial"), ({"gamma_initial": -2.001}, "gamma_initial")):
        with pytest.raises(ValueError, match=f"`{field}`"):
            L.AdaFocalLoss(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# metrics: the debiased estimator's bins of two, the probability check's tolerance, the Wilson bounds


def test_debiased_ece_counts_bins_of_two_and_drops_bins_of_one():
    # one bin of two at confidence 0.9, one right: (0.9 - 0.5)^2 - 0.5 * 0.5 / 1 = -0.09 -> clamped, 0
    # add a bin of one (weight only): still 0. Two samples at 0.9 both right: (0.9 - 1)^2 - 0 = 0.01 over N
    two_right = torch.tensor([[0.9, 0.1], [0.9, 0.1]], dtype=torch.float64)
    assert M.debiased_ece(two_right, torch.tensor([0, 0]), n_bins=1).item() == pytest.approx(0.1, abs=1e-12)
    one = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    assert M.debiased_ece(one, torch.tensor([0]), n_bins=1).item() == 0.0


def test_probability_rows_sum_to_one_within_a_thousandth():
    target = torch.tensor([0])
    M.expected_calibration_error(torch.tensor([[0.5, 0.5009]], dtype=torch.float64), target)
    M.expected_calibration_error(torch.tensor([[0.5, 0.4991]], dtype=torch.float64), target)
    for bad in ([[0.5, 0.5011]], [[0.5, 0.4989]]):
        with pytest.raises(ValueError):
            M.expected_calibration_error(torch.tensor(bad, dtype=torch.float64), target)
    M.expected_calibration_error(torch.tensor([[1.0, 0.0]], dtype=torch.float64), target)  # 0 and 1 allowed


def test_wilson_bounds_stay_in_zero_one_and_hold_p():
    bins = M.reliability_bins(torch.tensor([[0.95, 0.05, 0.0]] * 3 + [[0.4, 0.3, 0.3]] * 3, dtype=torch.float64),
                              torch.tensor([0, 0, 0, 1, 1, 1]), n_bins=2)
    # bin 1: three right (p = 1): upper bound exactly 1, lower (3) / (3 + z^2) with z = 1.96
    z = 1.959963984540054
    assert bins.acc_high[1].item() == 1.0 and bins.acc_low[1].item() == pytest.approx(3 / (3 + z * z), rel=1e-9)
    # bin 0: three at 0.4, all wrong (p = 0): lower bound exactly 0, upper z^2 / (3 + z^2)
    assert bins.acc_low[0].item() == 0.0 and bins.acc_high[0].item() == pytest.approx(z * z / (3 + z * z), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------
# temperature scaling: the two exact degenerate tests, the range, the probability warning; the ECE grid's ties


def _fit(logits, target, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler = cal.TemperatureScaler(**kwargs).fit(torch.tensor(logits, dtype=torch.float64), torch.tensor(target))
    return scaler.temperature, [str(w.message) for w in caught]


def test_temperature_slope_exactly_zero_goes_to_t_max():
    # true logits 2 and 0 in rows (2, 0): row means 1, slope mean(1 - 2, 1 - 0) = 0
    t, said = _fit([[2.0, 0.0], [2.0, 0.0]], [0, 1])
    assert t == 100.0 and said == [
        "Temperature scaling: the NLL-optimal T is not a finite value in [t_min=0.01, t_max=100] (fitted T = inf; "
        "the NLL keeps falling as T grows: the logits are no better than chance or anti-correlated with the labels); "
        "T is clamped to `t_max` = 100. Accuracy is unchanged by any positive T."]


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames")
def test_temperature_warning_is_a_user_warning_pointing_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal.TemperatureScaler().fit(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
    assert [(w.category, w.filename) for w in caught] == [(UserWarning, __file__)]


def test_temperature_a_true_logit_tied_with_the_max_is_not_misclassified():
    # row 1 ties (1, 1) with y = 0: a row maximum, not misclassified; row 2 right: perfectly separated, T -> t_min
    t, said = _fit([[1.0, 1.0], [2.0, 0.0]], [0, 0])
    assert t == 0.01 and len(said) == 1 and "keeps falling as T shrinks" in said[0]


def test_temperature_on_the_range_bound_is_kept_without_a_warning():
    logits, target = [[3.0, 0.0]] * 4, [0, 0, 0, 1]
    t, said = _fit(logits, target)
    assert t == pytest.approx(3 / math.log(3), rel=1e-6) and said == []
    assert _fit(logits, target, t_max=t) == (t, [])  # fitted == t_max: in range
    assert _fit(logits, target, t_min=t) == (t, [])  # fitted == t_min: in range
    t_low, said = _fit(logits, target, t_max=t * (1 - 1e-6))
    assert t_low == t * (1 - 1e-6) and len(said) == 1 and "clamped to `t_max`" in said[0]
    t_high, said = _fit(logits, target, t_min=t * (1 + 1e-6))
    assert t_high == t * (1 + 1e-6) and len(said) == 1 and "clamped to `t_min`" in said[0]


def test_temperature_range_arguments():
    cal.TemperatureScaler(t_min=2.0, t_max=2.0)
    with pytest.raises(ValueError, match=r"t_min=2.0 > t_max=1.99"):
        cal.TemperatureScaler(t_min=2.0, t_max=1.99)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="`t_min` to be a finite number > 0"):
            cal.TemperatureScaler(t_min=bad)


def test_temperature_warns_about_probabilities_only_within_the_tolerance():
    def warned(rows):
        return any("expects logits" in m for m in _fit(rows, [0, 1])[1])

    assert warned([[1.0, 0.0], [0.0, 1.0]])  # 0 and 1 are probabilities
    assert warned([[0.5, 0.50009], [0.3, 0.7]])  # off by 9e-5: within 1e-4
    assert not warned([[0.5, 0.5002], [0.3, 0.7]])  # off by 2e-4
    assert not warned([[1.0001, -0.0001], [0.3, 0.7]])  # outside [0, 1]
    assert not warned([[1.00005, 0.0], [0.3, 0.7]])  # sums to 1 within 1e-4, but a value above 1


def test_ece_grid_keeps_the_smallest_temperature_of_a_tie():
    # constant rows: every T gives the same ECE; the first grid T (0.1) stays
    scaler = cal.TemperatureScaler(method="ece_grid").fit(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    assert scaler.temperature == cal.ECE_GRID[0] == 0.1


def test_calibrators_need_exactly_their_minimum_samples():
    # vector scaling: 2 per class
    assert cal.unfit_reason(cal.VectorScaler(), torch.tensor([0, 1, 0, 1]), 2) is None
    assert cal.unfit_reason(cal.VectorScaler(), torch.tensor([0, 1, 0]), 2) == (
        "3 validation samples, fewer than the 4 that vector scaling needs (its parameters: 2 per class, C = 2)")
    assert cal.unfit_reason(cal.TemperatureScaler(), torch.tensor([1]), 5) is None
    assert cal.unfit_reason(cal.TemperatureScaler(), torch.tensor([], dtype=torch.int64), 5) is not None
    assert cal.unfit_reason(cal.VectorScaler(), torch.tensor([0, 0, 0, 0, 2, 2]), 3) == (
        "class 1 is absent from the validation split (vector scaling has no finite bias for a class never seen)")
    assert cal.unfit_reason(cal.VectorScaler(), torch.tensor([0, 0, 0, 0, 0, 0]), 3).startswith(
        "classes [1, 2] are absent")
