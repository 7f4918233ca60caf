"""ceexp.stats: p-values, Holm's correction, intervals and marks, checked against scipy and statsmodels called
directly here, and against hand-built groups whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from ceexp import bootstrap as bs
from ceexp import stats

SEEDS = ["seed=0", "seed=1", "seed=2", "seed=3", "seed=4"]


def test_score_and_best_of_directions():
    assert stats.best_of([0.90, 0.92, 0.92], "max") == {1, 2}
    assert stats.best_of([0.05, float("nan"), 0.03], "min") == {2}
    assert stats.best_of([0.5, 1.9, 2.1], "one") == {1}  # |log| 0.69, 0.64, 0.74
    assert stats.best_of([0.5, 2.0], "one") == {0, 1}
    assert stats.best_of([-0.02, 0.03, 0.01], "zero") == {2}
    assert stats.best_of([-0.01, 0.01], "zero") == {0, 1}
    assert stats.best_of([0.2, 0.8], None) == set() and stats.best_of([float("nan")], "min") == set()
    np.testing.assert_allclose(stats.score([2.0, 0.5], "one"), [math.log(2)] * 2)
    with pytest.raises(ValueError, match="`direction`"):
        stats.score([1.0], "up")


def test_holm_is_statsmodels_with_nan_left_out():
    p = [0.01, 0.04, float("nan"), 0.03, 0.2]
    expected = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    out = stats.holm(p)
    assert math.isnan(out[2])
    np.testing.assert_allclose(out[[0, 1, 3, 4]], expected, rtol=1e-15)
    assert stats.holm([0.3])[0] == 0.3 and math.isnan(stats.holm([float("nan")])[0])


def test_p_values_are_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5), rng.normal(0.5, 1, 5)
    # the same seeds: paired, ttest_rel (keys given in different orders are matched)
    p, name, ci = stats.p_value(a, b, SEEDS, SEEDS)
    result = sps.ttest_rel(a, b)
    assert (p, name) == (result.pvalue, "paired t-test (ttest_rel)")
    assert ci == tuple(result.confidence_interval(0.95))
    p, _, _ = stats.p_value(a, b[::-1], SEEDS, SEEDS[::-1])
    assert p == pytest.approx(result.pvalue, rel=1e-14)
    # other seeds: Welch
    p, name, ci = stats.p_value(a, b[:4], SEEDS, SEEDS[:4])
    result = sps.ttest_ind(a, b[:4], equal_var=False)
    assert (p, name) == (result.pvalue, "Welch's t-test (ttest_ind)")
    assert ci == pytest.approx(tuple(result.confidence_interval(0.95)), rel=1e-12)
    # one run against several: Student (pooled variance)
    p, name, _ = stats.p_value(a[:1], b, SEEDS[:1], SEEDS)
    assert p == sps.ttest_ind(a[:1], b, equal_var=True).pvalue and name.startswith("Student")
    # one run each: no t-test
    p, name, ci = stats.p_value(a[:1], b[:1], SEEDS[:1], SEEDS[:1])
    assert math.isnan(p) and name == "one run in each group" and math.isnan(ci[0])


def test_t_interval_is_scipys():
    x = np.array([0.91, 0.93, 0.92, 0.95])
    expected = sps.t.interval(0.95, df=3, loc=x.mean(), scale=sps.sem(x))
    assert stats.t_interval(x) == pytest.approx(expected, rel=1e-14)
    assert all(math.isnan(v) for v in stats.t_interval(x[:1]))


def _holm_marks_by_hand(values, keys, best):
    """The rule, recomputed with scipy and statsmodels: tests of the best group against each other group."""
    others = [i for i in range(len(values)) if i != best]
    raw = [sps.ttest_rel(values[best], values[i]).pvalue if keys[best] == keys[i]
           else sps.ttest_ind(values[best], values[i], equal_var=False).pvalue for i in others]
    return dict(zip(others, multipletests(raw, method="holm")[1]))


def test_marks_two_identical_groups_tie_and_a_clearly_worse_one_is_left_out():
    rng = np.random.default_rng(1)
    same = 0.05 + 0.002 * rng.standard_normal(5)
    worse = same + 0.03 + 0.001 * rng.standard_normal(5)
    values, keys = [same, same.copy(), worse], [SEEDS] * 3
    marks, best, adjusted = stats.marks(values, keys, "min")
    assert best == 0 and marks == ["tied", "tied", ""]
    # identical runs: ttest_rel is 0/0 = NaN, but the data show no difference at all: p = 1, so tied
    assert adjusted[1] == 1.0
    worse_p = sps.ttest_rel(same, worse).pvalue
    assert adjusted[2] == pytest.approx(multipletests([1.0, worse_p], method="holm")[1][1], rel=1e-12)
    assert adjusted[2] < 0.05


def test_marks_a_clearly_better_group_is_best():
    rng = np.random.default_rng(2)
    same = 0.05 + 0.002 * rng.standard_normal(5)
    better = same - 0.03 + 0.001 * rng.standard_normal(5)
    other = same + 0.001 * rng.standard_normal(5)
    values, keys = [same, other, better], [SEEDS] * 3
    marks, best, adjusted = stats.marks(values, keys, "min")
    assert best == 2 and marks == ["", "", "best"]
    expected = _holm_marks_by_hand(values, keys, 2)
    assert adjusted[0] == pytest.approx(expected[0], rel=1e-12) and adjusted[1] == pytest.approx(expected[1], rel=1e-12)
    # accuracy: the direction turns
    marks, best, _ = stats.marks([1 - v for v in values], keys, "max")
    assert best == 2 and marks == ["", "", "best"]


def test_marks_not_significant_after_holm_is_tied():
    """Best against two groups, raw p-values 0.03 and 0.04: each below 0.05, but Holm makes them 0.06 and 0.06,
    so all three are tied."""
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 6)

    def shifted(target_p):  # a group whose Welch p against base is target_p
        from scipy.optimize import brentq

        noise = rng.normal(0, 1, 6)
        return base.mean() + noise + brentq(
            lambda d: sps.ttest_ind(base, noise + base.mean() + d, equal_var=False).pvalue - target_p, 0, 20)

    keys = [SEEDS + ["seed=5"], [f"s{i}" for i in range(6)], [f"t{i}" for i in range(6)]]
    values = [base, shifted(0.03), shifted(0.04)]
    marks, best, adjusted = stats.marks(values, keys, "min")
    raw = [sps.ttest_ind(base, v, equal_var=False).pvalue for v in values[1:]]
    assert raw == pytest.approx([0.03, 0.04], rel=1e-6)
    assert adjusted[1:] == pytest.approx(multipletests(raw, method="holm")[1], rel=1e-12)
    assert best == 0 and marks == ["tied", "tied", "tied"]


def test_marks_temperature_and_signed_ece_by_run():
    """Runs that err both ways: |signed ECE| per run is what counts, not the mean's."""
    both_ways = np.array([0.04, -0.04, 0.041, -0.039, 0.04])
    small = np.array([0.005, 0.006, 0.004, 0.005, 0.006])
    marks, best, _ = stats.marks([both_ways, small], [SEEDS, SEEDS], "zero")
    assert best == 1 and marks == ["", "best"]
    marks, best, _ = stats.marks([np.array([2.0, 2.1, 1.9]), np.array([0.95, 1.02, 1.0])], [SEEDS[:3]] * 2, "one")
    assert best == 1 and marks == ["", "best"]
    assert stats.marks([np.array([1.0])], [SEEDS[:1]], "min")[0] == [""]  # one group: nothing to beat
    assert stats.marks([np.array([1.0]), np.array([2.0])], [SEEDS[:1]] * 2, None)[0] == ["", ""]


# ---------------------------------------------------------------------------------------------------------
# the analysis


def _run(key, values=None, logits=None, labels=None, temperature=1.5, n_bins=15):
    predictions = None
    if logits is not None:
        data = {"val_logits": logits[:5], "val_labels": labels[:5], "test_logits": logits, "test_labels": labels,
                "temperature": temperature}
        predictions = lambda data=data: data  # noqa: E731
    return stats.Run(key=key, values=values or {}, predictions=predictions, n_bins=n_bins, name=key)


def test_seed_level_statistics_without_predictions():
    a = [0.90, 0.91, 0.93]
    b = [0.80, 0.82, 0.81]
    groups = [[_run(k, {"test/acc": v}) for k, v in zip(SEEDS, x)] for x in (a, b)]
    out = stats.analyse(groups, ["test/acc"], ref=0, directions={"test/acc": "max"}).tags["test/acc"]
    assert out.interval == ["t", "t"]
    assert (out.ci_low[1], out.ci_high[1]) == pytest.approx(stats.t_interval(b), rel=1e-14)
    result = sps.ttest_rel(b, a)
    assert out.p_raw[1] == result.pvalue and out.p[1] == result.pvalue  # a family of one
    assert (out.diff_low[1], out.diff_high[1]) == pytest.approx(tuple(result.confidence_interval(0.95)), rel=1e-12)
    assert out.diff[1] == pytest.approx(np.mean(b) - np.mean(a), rel=1e-14)
    assert out.mark == ["best", ""] and out.test[1] == "paired t-test (ttest_rel)"
    np.testing.assert_allclose(out.std, [np.std(a, ddof=1), np.std(b, ddof=1)], rtol=1e-14)


def test_identical_groups_pair_to_a_zero_difference():
    """Two groups with the same predictions, the same seeds and the same test split: every replicate of the
    difference is 0, so its interval is [0, 0] (pairing by seed and by test sample); the group intervals are the
    basic intervals of the explicit two-level bootstrap: (2 m - q97.5, 2 m - q2.5), m the mean of the runs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    logits = [rng.normal(size=(60, 3)).astype(np.float32) for _ in range(3)]
    groups = [[_run(k, {}, z, labels) for k, z in zip(SEEDS, logits)] for _ in range(2)]
    settings = stats.Settings(n_resamples=50)
    out = stats.analyse(groups, ["test/ece"], ref=0, directions={"test/ece": "min"}, settings=settings)
    st = out.tags["test/ece"]
    assert (st.diff_low[1], st.diff_high[1]) == (0.0, 0.0)
    assert st.mark == ["tied", "tied"]
    # the group interval, rebuilt from the plain metric on explicit resamples
    resampler = bs.Resampler(60, 0, bs.split_stream(labels))
    per_run = np.array([[bs.WeightedMetrics.from_logits(z, labels).evaluate(["ece"], resampler.counts([r]))["ece"][0]
                         for r in range(50)] for z in logits])
    draws = bs.seed_draws(3, 50, 0, bs.keys_stream(SEEDS[:3]))
    reps = per_run[draws, np.arange(50)[:, None]].mean(axis=1)
    import torch

    from ceexp.metrics import expected_calibration_error

    m = np.mean([float(expected_calibration_error(torch.from_numpy(z).double().softmax(1), torch.from_numpy(labels)))
                 for z in logits])
    expected = (max(2 * m - np.percentile(reps, 97.5), 0.0), max(2 * m - np.percentile(reps, 2.5), 0.0))
    assert (st.ci_low[0], st.ci_high[0]) == pytest.approx(expected, rel=1e-6)


def test_recomputed_value_when_metrics_json_lacks_it():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 100)
    z = rng.normal(size=(100, 4)).astype(np.float32)
    run = _run("seed=0", {"test/acc": 0.5}, z, labels, temperature=2.0)
    out = stats.analyse([[run]], ["test/acc", "test/ece_debiased", "test/ece_ts"],
                        settings=stats.Settings(n_resamples=20))
    import torch

    from ceexp import metrics as M

    probs = torch.from_numpy(z).softmax(dim=1)
    assert out.tags["test/acc"].mean[0] == 0.5  # the recorded value wins
    assert out.tags["test/ece_debiased"].mean[0] == pytest.approx(
        float(M.debiased_ece(probs, torch.from_numpy(labels))), rel=1e-6)
    assert out.tags["test/ece_ts"].mean[0] == pytest.approx(
        float(M.expected_calibration_error((torch.from_numpy(z) / 2.0).softmax(dim=1), torch.from_numpy(labels))),
        rel=1e-6)
    assert out.tags["test/ece_debiased"].interval == ["test samples"]
    # the recorded 0.5 is not what the predictions give: said in a note
    assert any("test/acc in metrics.json is 0.5" in n for n in out.notes)


def test_one_run_each_permutation_test_is_scipys():
    """One run against one run on the same test labels: scipy's paired permutation test over test samples,
    recomputed here with the accuracy of each sample (rng numpy.random.default_rng([seed, 0, 1]))."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 300)
    za = rng.normal(size=(300, 3)).astype(np.float32)
    zb = za.copy()
    zb[np.arange(300), labels] += 0.4  # B is right more often
    groups = [[_run("seed=0", {}, za, labels)], [_run("seed=0", {}, zb, labels)]]
    settings = stats.Settings(n_resamples=50, n_permutations=999, seed=3)
    st = stats.analyse(groups, ["test/acc"], ref=0, directions={"test/acc": "max"}, settings=settings).tags["test/acc"]
    correct_a = (za.argmax(1) == labels).astype(float)
    correct_b = (zb.argmax(1) == labels).astype(float)
    expected = sps.permutation_test((correct_a, correct_b), lambda x, y, axis: x.mean(axis) - y.mean(axis),
                                    permutation_type="samples", vectorized=True, n_resamples=999,
                                    rng=np.random.default_rng([3, 0, 1]))
    assert st.p_raw[1] == pytest.approx(expected.pvalue, rel=1e-12)
    assert st.test[1].startswith("paired permutation test")
    assert st.interval == ["test samples", "test samples"]
    # different test labels: no test
    other = labels.copy()
    other[0] = (other[0] + 1) % 3
    groups = [[_run("seed=0", {}, za, labels)], [_run("seed=0", {}, zb, other)]]
    st = stats.analyse(groups, ["test/acc"], settings=settings).tags["test/acc"]
    assert math.isnan(st.p_raw[1]) and st.test[1] == "one run in each group, on different test labels"


def test_p_value_is_one_when_the_runs_show_no_difference_at_all():
    """scipy's t-tests give 0/0 = NaN for identical data; no difference at all is p = 1, not 'untestable'."""
    a = [0.05, 0.07, 0.06]
    p, name, _ = stats.p_value(a, list(a), ["0", "1", "2"], ["0", "1", "2"])
    assert p == 1.0 and "ttest_rel" in name
    p, _, _ = stats.p_value([0.1, 0.1], [0.1, 0.1, 0.1])
    assert p == 1.0
    # a constant shift is a difference: scipy's paired test says p = 0 (t infinite), not 1
    p, _, _ = stats.p_value(a, [x + 0.01 for x in a], ["0", "1", "2"], ["0", "1", "2"])
    assert p < 0.05


def test_groups_measured_differently_are_ranked_only_within_their_class():
    """classes: groups 0, 1, 3 alike (the reference 0 among them), group 2 measured otherwise, group 4 mixed (None).
    Without classes group 2, the lowest, would be best; with them it is compared with nothing, and group 1 is tested
    against the reference alone (Holm over a family of its comparable groups)."""
    rng = np.random.default_rng(3)
    values = [0.10 + 0.01 * rng.normal(size=5), 0.05 + 0.001 * rng.normal(size=5),
              0.01 + 0.001 * rng.normal(size=5), 0.20 + 0.01 * rng.normal(size=5), 0.001 + 0.0 * rng.normal(size=5)]
    groups = [[stats.Run(key=k, values={"test/x": float(v)}) for k, v in zip(SEEDS, vals)] for vals in values]
    plain = stats.analyse(groups, ["test/x"], 0, {"test/x": "min"}).tags["test/x"]
    assert plain.mark[4] in ("best", "tied") and plain.mark[1] != "best"  # ranked across everything
    assert plain.test[2] == plain.test[4] == "paired t-test (ttest_rel)"

    out = stats.analyse(groups, ["test/x"], 0, {"test/x": "min"}, classes={"test/x": ["a", "a", "b", "a", None]})
    st = out.tags["test/x"]
    raw = [sps.ttest_rel(values[i], values[0]).pvalue for i in (1, 3)]
    np.testing.assert_allclose(st.p[[1, 3]], multipletests(raw, method="holm")[1], rtol=1e-12)
    assert all(math.isnan(st.p[i]) and math.isnan(st.diff[i]) and st.test[i] == stats.NOT_COMPARABLE for i in (2, 4))
    assert st.diff[1] == pytest.approx(values[1].mean() - values[0].mean(), rel=1e-12)
    # marks within class a: group 1 is the lowest, against 0 and 3 (paired, Holm)
    best_raw = [sps.ttest_rel(values[1], values[i]).pvalue for i in (0, 3)]
    assert all(multipletests(best_raw, method="holm")[1] < 0.05)
    assert st.mark == ["", "best", "", "", ""]
    # a class of its own with two groups is ranked within itself
    st = stats.analyse(groups, ["test/x"], 0, {"test/x": "min"},
                       classes={"test/x": ["a", "a", "b", "a", "b"]}).tags["test/x"]
    p = multipletests([sps.ttest_rel(values[4], values[2]).pvalue], method="holm")[1][0]
    assert st.mark[4] == ("best" if p < 0.05 else "tied") and st.mark[2] == ("" if p < 0.05 else "tied")
    with pytest.raises(ValueError, match="one class per group"):
        stats.analyse(groups, ["test/x"], 0, {"test/x": "min"}, classes={"test/x": ["a"]})
