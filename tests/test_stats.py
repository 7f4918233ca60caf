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
    assert st.mark == ["", "best"]  # the permutation test decides the marks too
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


# ---------------------------------------------------------------------------------------------------------
# one run against one run: the paired permutation test, against scipy's with the metric recomputed here


def _calibrated(n=200, seed=0):
    """Logits (float64) of a 3-class model and labels drawn from its own probabilities: calibrated at scale 1,
    overconfident scaled up, underconfident scaled down."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.normal(size=(n, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return z, (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)


def _per_sample(z, labels, temperature=None):
    """Per test sample: the top-label confidence (float32 softmax, as the runs compute it; exact in float64), whether
    it is right, and -log p_y by a float64 log-softmax."""
    import torch

    z32 = torch.from_numpy(np.asarray(z, dtype=np.float32))
    probs = (z32 / temperature if temperature is not None else z32).softmax(dim=1).double().numpy()
    z64 = np.asarray(z, dtype=np.float32).astype(np.float64) / (temperature or 1.0)
    log_p = z64 - z64.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    return np.stack([probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float), -log_p[rows, labels]], 1)


def _ece(rows, n_bins=15):
    """Equal-width ECE of per-sample rows (confidence, correct, ...): bins (lower, upper], edges in float32."""
    inner = (np.arange(1, n_bins) / n_bins).astype(np.float32).astype(np.float64)
    gap = np.bincount(np.searchsorted(inner, rows[:, 0], side="left"), rows[:, 0] - rows[:, 1], minlength=n_bins)
    return np.abs(gap).sum() / len(rows)


def _adaece(rows, n_bins=15):
    """Equal-mass ECE: the sorted confidences cut into numpy.array_split's chunks (no ties here)."""
    chunks = np.array_split(rows[np.argsort(rows[:, 0], kind="stable")], n_bins)
    return sum(abs(c[:, 0].sum() - c[:, 1].sum()) for c in chunks) / len(rows)


def _reference_p(metric, a, b, n_resamples, seed, stream=(0, 1)):
    """scipy's paired permutation test over test samples (sample i of A and of B swapped or not), the statistic
    ``metric(A') - metric(B')`` recomputed from the per-sample rows of each permuted pair, one permutation at a time."""
    pooled, n = np.concatenate([a, b]), len(a)
    return sps.permutation_test((np.arange(n), np.arange(n) + n),
                                lambda x, y: metric(pooled[x.astype(int)]) - metric(pooled[y.astype(int)]),
                                permutation_type="samples", n_resamples=n_resamples,
                                rng=np.random.default_rng([seed, *stream])).pvalue


def test_permutation_test_statistic_is_the_metric_difference():
    """Two runs whose metrics differ by chance (moderate p-values, which depend on every permutation drawn): the
    p-value of ECE with 10 bins, of NLL after temperature scaling (one sample confidently wrong: a finite NLL from the
    logits, not -log 0), of signed ECE and NLL on their scores (direction "zero": |x|; "one": |log x|), each equal to
    scipy's test with the statistic recomputed here; the p-values of the scores are not those of the values."""
    z, labels = _calibrated()
    rng = np.random.default_rng(1)
    za, zb = z * 1.2, z * 1.2 + 0.5 * rng.normal(size=z.shape)
    za[0] = [0.0, 0.0, 0.0]
    za[0, (labels[0] + 1) % 3] = 60.0  # confidently wrong: p_y = e^-120 after T = 0.5, 0 in float32
    settings = stats.Settings(n_permutations=199, seed=5)

    def runs(a, b, n_bins=15, ta=1.5, tb=1.5):
        return _run("seed=0", {}, a.astype(np.float32), labels, ta, n_bins), _run("seed=0", {}, b.astype(np.float32),
                                                                                   labels, tb, n_bins)

    def check(tag, metric, expected_rows, direction=None, **kw):
        p, name = stats.permutation_p_value(*runs(**kw), tag, direction, settings)
        expected = _reference_p(metric, *expected_rows, 199, 5)
        assert p == pytest.approx(expected, rel=1e-12) and 0.02 < p < 0.98, (tag, p)
        assert name == "paired permutation test over test samples (permutation_test, 199)"
        return p

    check("test/ece", lambda r: _ece(r, 10), (_per_sample(za, labels), _per_sample(zb, labels)), a=za, b=zb, n_bins=10)
    check("test/adaece", _adaece, (_per_sample(za, labels), _per_sample(zb, labels)), a=za, b=zb)
    check("test/nll_ts", lambda r: r[:, 2].mean(), (_per_sample(za, labels, 0.5), _per_sample(zb, labels, 0.6)),
          a=za, b=zb, ta=0.5, tb=0.6)
    # signed ECE: the mean of confidence - correct; an overconfident model against an underconfident one
    a, b = _per_sample(z * 1.5, labels), _per_sample(z * 0.7, labels)
    signed = check("test/ece_signed", lambda r: abs(np.mean(r[:, 0] - r[:, 1])), (a, b), "zero", a=z * 1.5, b=z * 0.7)
    plain = stats.permutation_p_value(*runs(z * 1.5, z * 0.7), "test/ece_signed", "min", settings)[0]
    assert plain == pytest.approx(_reference_p(lambda r: np.mean(r[:, 0] - r[:, 1]), a, b, 199, 5), rel=1e-12)
    assert plain < 0.05 < signed, (plain, signed)
    # NLL in bits on both sides of 1 bit (direction "one")
    a, b = _per_sample(z, labels), _per_sample(z * 0.3, labels)
    check("test/nll_bits", lambda r: abs(np.log(r[:, 2].mean() / math.log(2))), (a, b), "one", a=z, b=z * 0.3)


def test_permutation_test_not_applicable_says_why_and_smece_takes_loop_resamples():
    """NaN and the reason, whichever run lacks what the test needs; a scaled tag needs a finite positive T."""
    z, labels = _calibrated(n=40)
    run = _run("seed=0", {}, z.astype(np.float32), labels)
    bare = _run("seed=1", {"test/ece": 0.1})

    def why(a, b, tag="test/ece"):
        p, reason = stats.permutation_p_value(a, b, tag)
        assert math.isnan(p)
        return reason

    assert why(run, run, "test/temperature") == "one run in each group, and not computable from predictions"
    assert why(run, bare) == why(bare, run) == "one run in each group, without predictions"
    assert why(run, _run("seed=1", {}, z.astype(np.float32), labels, n_bins=10)) == (
        "one run in each group, with different n_bins")
    for temperature in (0.0, -1.0, math.inf, math.nan):
        other = _run("seed=1", {}, z.astype(np.float32), labels, temperature)
        assert why(run, other, "test/ece_ts") == why(other, run, "test/ece_ts") == (
            "one run in each group, one without a temperature")
    # smECE has no weighted form: Settings.loop_resamples permutations, not n_permutations
    settings = stats.Settings(n_permutations=199, loop_resamples=9)
    p, name = stats.permutation_p_value(run, _run("seed=1", {}, (z * 0.5).astype(np.float32), labels), "test/smece",
                                        settings=settings)
    assert name == "paired permutation test over test samples (permutation_test, 9)"
    assert 0 < p <= 1 and (p * 10) == pytest.approx(round(p * 10), abs=1e-12)  # (k + 1) / (9 + 1)


def test_weights_of_one_chunk_fit_max_chunk_bytes(monkeypatch):
    """Settings.max_chunk_bytes bounds the float64 weights evaluated at once, and as many permutations (2 rows of
    2 n weights each: A's and B's test set) or bootstrap resamples (a row of n) are evaluated at once as fit, at
    least one; the answers do not depend on it."""
    z, labels = _calibrated(n=50)
    a, b = _run("seed=0", {}, z.astype(np.float32), labels), _run("seed=0", {}, (z * 0.8).astype(np.float32), labels)
    p_default = stats.permutation_p_value(a, b, "test/ece", settings=stats.Settings(n_permutations=99))
    reps_default = stats.analyse([[a]], ["test/ece"], settings=stats.Settings(n_resamples=20)).tags["test/ece"]
    shapes = []
    evaluate = bs.WeightedMetrics.evaluate
    monkeypatch.setattr(bs.WeightedMetrics, "evaluate",
                        lambda self, names, weights: shapes.append(np.shape(weights)) or evaluate(self, names, weights))
    for budget, permutations in ((8 * 2 * 2 * 50 * 7, 7), (8 * 2 * 2 * 50 * 7 - 1, 6), (1, 1)):
        shapes.clear()
        settings = stats.Settings(n_permutations=99, max_chunk_bytes=budget)
        assert stats.permutation_p_value(a, b, "test/ece", settings=settings) == p_default
        assert {s[1] for s in shapes} == {100} and max(s[0] for s in shapes) == 2 * permutations
    for budget, resamples in ((8 * 50 * 6, 6), (1, 1)):
        shapes.clear()
        st = stats.analyse([[a]], ["test/ece"], settings=stats.Settings(n_resamples=20, max_chunk_bytes=budget))
        np.testing.assert_array_equal(st.tags["test/ece"].replicates[0], reps_default.replicates[0])
        assert {s[1] for s in shapes} == {50} and max(s[0] for s in shapes) == resamples


def test_permutation_test_on_scipy_before_1_15(monkeypatch):
    """scipy < 1.15 (pyproject allows 1.11) names the generator `random_state`, not `rng`: the same draws."""
    z, labels = _calibrated(n=50)
    a, b = _run("seed=0", {}, z.astype(np.float32), labels), _run("seed=0", {}, (z * 0.8).astype(np.float32), labels)
    settings = stats.Settings(n_permutations=99)
    expected = stats.permutation_p_value(a, b, "test/ece", settings=settings)
    current = sps.permutation_test

    def before_1_15(data, statistic, *, permutation_type="independent", vectorized=None, n_resamples=9999,
                    batch=None, alternative="two-sided", axis=0, random_state=None):  # scipy 1.11's signature
        return current(data, statistic, permutation_type=permutation_type, vectorized=vectorized,
                       n_resamples=n_resamples, batch=batch, alternative=alternative, axis=axis, rng=random_state)

    monkeypatch.setattr(sps, "permutation_test", before_1_15)
    assert stats.permutation_p_value(a, b, "test/ece", settings=settings) == expected
    assert 0.02 < expected[0] < 0.98


# ---------------------------------------------------------------------------------------------------------
# the analysis: every field, by hand


def test_analysis_without_predictions_every_field_at_level_90():
    """Groups without predictions, level 0.9: the reference (3 seeds); 2 runs of other seeds (Welch; a t-interval
    from 2 runs); 1 run (Student; no interval); no runs; 2 runs measured otherwise (class None). Every field against
    scipy / statsmodels / numpy, and no warning (NaN for one run or none is the answer, not a warning)."""
    import warnings

    values = [[0.90, 0.91, 0.93], [0.80, 0.81], [0.82], [], [0.70, 0.75]]
    keys = [SEEDS[:3], SEEDS[3:], SEEDS[:1], [], SEEDS[:2]]
    groups = [[stats.Run(key=k, values={"test/acc": v}) for k, v in zip(ks, vs)] for ks, vs in zip(keys, values)]
    groups[3] = [stats.Run(key="seed=0", values={"test/acc": math.nan})]  # a run without the value: no runs
    settings = stats.Settings(level=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stats.analyse(groups, ["test/acc"], 0, {"test/acc": "max"}, settings,
                            classes={"test/acc": ["a", "a", "a", "a", None]})
    assert out.ref == 0 and out.settings is settings and out.notes == []
    st = out.tags["test/acc"]
    assert (st.tag, st.direction) == ("test/acc", "max")
    assert [v.tolist() for v in st.values] == values and st.keys == [*keys[:3], [], keys[4]]
    assert st.n.tolist() == [3, 2, 1, 0, 2] and st.replicates == [None] * 5
    nan = math.nan
    np.testing.assert_array_equal(st.mean, [np.mean(v) if v else nan for v in values])
    np.testing.assert_array_equal(st.std, [np.std(values[0], ddof=1), np.std(values[1], ddof=1), nan, nan,
                                           np.std(values[4], ddof=1)])
    assert st.interval == ["t", "t", "", "", "t"]
    for i in (0, 1, 4):
        assert (st.ci_low[i], st.ci_high[i]) == sps.t.interval(0.9, len(values[i]) - 1, np.mean(values[i]),
                                                               sps.sem(values[i]))
    assert all(math.isnan(st.ci_low[i]) and math.isnan(st.ci_high[i]) for i in (2, 3))
    welch = sps.ttest_ind(values[1], values[0], equal_var=False)
    student = sps.ttest_ind(values[2], values[0], equal_var=True)
    assert st.test == ["reference", "Welch's t-test (ttest_ind)", "Student's t-test (ttest_ind, one run)", "no runs",
                       stats.NOT_COMPARABLE]
    np.testing.assert_array_equal(st.p_raw, [nan, welch.pvalue, student.pvalue, nan, nan])
    np.testing.assert_allclose(st.p, [nan, *multipletests([welch.pvalue, student.pvalue], method="holm")[1], nan,
                                      nan], rtol=1e-15)
    np.testing.assert_allclose(st.diff, [0.0, np.mean(values[1]) - np.mean(values[0]),
                                         values[2][0] - np.mean(values[0]), nan, nan], rtol=1e-12)
    np.testing.assert_allclose(np.c_[st.diff_low, st.diff_high],
                               [[0, 0], welch.confidence_interval(0.9), student.confidence_interval(0.9), [nan, nan],
                                [nan, nan]], rtol=1e-12)
    # marks within class a (group 4 is not ranked): the reference, best, against groups 1 and 2 after Holm
    best_p = multipletests([sps.ttest_ind(values[0], values[1], equal_var=False).pvalue,
                            sps.ttest_ind(values[0], values[2], equal_var=True).pvalue], method="holm")[1]
    assert best_p.max() < 0.05 and st.mark == ["best", "", "", "", ""]


def _basic(replicates, estimate, level):
    """The basic bootstrap interval by hand: (2 m - q_high, 2 m - q_low), numpy's linear quantiles."""
    q_low, q_high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return 2 * estimate - q_high, 2 * estimate - q_low


def test_bootstrap_intervals_clamps_and_differences_at_level_90():
    """Level 0.9. The reference: two runs (seeds 1, 0); group 1: the same runs listed the other way round (pairing
    by seed, not by position: every difference replicate 0); group 2: one run predicting the same probabilities for
    every sample, 0.6 against an accuracy of 0.62 (ECE 0.02, signed -0.02). ECE cannot be negative: its interval is
    raised to 0; signed ECE's is not. The difference's interval: the basic interval of the replicates'
    differences. A reference without predictions: the t-test's interval."""
    z, labels = _calibrated(n=100, seed=2)
    z1 = z + 0.3 * np.random.default_rng(3).normal(size=z.shape)
    flat = np.tile(np.log(np.float32([0.6, 0.3, 0.1])), (100, 1))
    flat_labels = np.r_[np.zeros(62, int), np.ones(38, int)]
    runs = [_run("seed=0", {}, z.astype(np.float32), labels), _run("seed=1", {}, z1.astype(np.float32), labels)]
    groups = [runs[::-1], runs, [_run("seed=0", {}, flat, flat_labels)]]
    tags = ["test/ece", "test/ece_signed"]
    out = stats.analyse(groups, tags, settings=stats.Settings(n_resamples=40, level=0.9))
    for tag in tags:
        st = out.tags[tag]
        assert st.interval == ["bootstrap", "bootstrap", "test samples"]
        assert (st.diff[1], st.diff_low[1], st.diff_high[1]) == (0.0, 0.0, 0.0)
        assert np.all(st.replicates[1] == st.replicates[0]) and len(st.replicates[2]) == 40
        expected = _basic(st.replicates[2] - st.replicates[0], st.diff[2], 0.9)
        assert (st.diff_low[2], st.diff_high[2]) == pytest.approx(expected, rel=1e-12)
        assert (st.ci_low[0], st.ci_high[0]) == pytest.approx(_basic(st.replicates[0], st.mean[0], 0.9), rel=1e-12)
    ece, signed = out.tags["test/ece"], out.tags["test/ece_signed"]
    assert ece.mean[2] == pytest.approx(0.02, abs=1e-6) and signed.mean[2] == pytest.approx(-0.02, abs=1e-6)
    low, high = _basic(ece.replicates[2], ece.mean[2], 0.9)
    assert low < 0 < high and (ece.ci_low[2], ece.ci_high[2]) == (0.0, pytest.approx(high, rel=1e-12))
    low, high = _basic(signed.replicates[2], signed.mean[2], 0.9)
    assert low < 0 and (signed.ci_low[2], signed.ci_high[2]) == pytest.approx((low, high), rel=1e-12)
    # predictions against a reference without them: the paired t-test's interval of the values
    bare = [stats.Run(key=k, values={"test/ece": v}) for k, v in zip(SEEDS[:2], (0.05, 0.06))]
    st = stats.analyse([bare, runs], ["test/ece"], settings=stats.Settings(n_resamples=20, level=0.9)).tags["test/ece"]
    assert st.replicates[0] is None and st.replicates[1] is not None
    expected = sps.ttest_rel(st.values[1], [0.05, 0.06]).confidence_interval(0.9)
    assert (st.diff_low[1], st.diff_high[1]) == pytest.approx(tuple(expected), rel=1e-12)


def test_one_run_groups_permutation_streams_cached_pairs_and_scores():
    """One run per group. Three groups, ECE: each p-value is scipy's test with the generator of its pair of groups
    (seed, i, j), i < j; Holm and the marks from those; each pair is tested once (both runs read once more; the marks
    reuse the reference's tests). Signed ECE ("zero") and NLL in bits ("one"): the p-value tests the values, the marks
    the scores (|x|, |log x|): an overconfident and an underconfident model equally far off are tied, though their
    values differ clearly."""
    z, labels = _calibrated()
    noise = np.random.default_rng(1).normal(size=(2, *z.shape))
    logits = [z * 1.2, z * 1.2 + 0.5 * noise[0], z * 1.1 + 0.5 * noise[1]]
    reads = [0, 0, 0]

    def counted(k):
        data = {"val_logits": logits[k][:5], "val_labels": labels[:5], "test_logits": logits[k].astype(np.float32),
                "test_labels": labels, "temperature": 1.5}

        def predictions():
            reads[k] += 1
            return data
        return stats.Run(key="seed=0", values={}, predictions=predictions)

    settings = stats.Settings(n_resamples=20, n_permutations=199, seed=5)
    st = stats.analyse([[counted(k)] for k in range(3)], ["test/ece"], 0, {"test/ece": "min"},
                       settings).tags["test/ece"]
    rows = [_per_sample(x, labels) for x in logits]
    p = {(i, j): _reference_p(_ece, rows[i], rows[j], 199, 5, (i, j)) for i, j in ((0, 1), (0, 2), (1, 2))}
    assert st.p_raw[1:] == pytest.approx([p[0, 1], p[0, 2]], rel=1e-12) and p[0, 1] != p[0, 2]
    assert all(0.02 < x < 0.98 for x in p.values())
    np.testing.assert_allclose(st.p[1:], multipletests([p[0, 1], p[0, 2]], method="holm")[1], rtol=1e-12)
    best = int(np.argmin([_ece(r) for r in rows]))
    pairs = {(0, 1), (0, 2)} | {(min(best, i), max(best, i)) for i in range(3) if i != best}
    adjusted = multipletests([p[min(best, i), max(best, i)] for i in range(3) if i != best], method="holm")[1]
    assert adjusted.min() >= 0.05 and st.mark == ["tied"] * 3
    assert reads == [1 + sum(k in pair for pair in pairs) for k in range(3)]
    # the scores: signed ECE of 1.5 z (+0.08) and 0.7 z (-0.08); NLL of z (0.88 bits) and 0.3 z (1.14 bits)
    for tag, direction, (a, b), metric, score in (
            ("test/ece_signed", "zero", (1.5, 0.7), lambda r: np.mean(r[:, 0] - r[:, 1]), abs),
            ("test/nll_bits", "one", (1.0, 0.3), lambda r: r[:, 2].mean() / math.log(2), lambda x: abs(math.log(x)))):
        groups = [[_run("seed=0", {}, (z * a).astype(np.float32), labels)],
                  [_run("seed=0", {}, (z * b).astype(np.float32), labels)]]
        rows = [_per_sample(z * a, labels), _per_sample(z * b, labels)]
        values = _reference_p(metric, rows[1], rows[0], 199, 5)
        scores = _reference_p(lambda r, metric=metric, score=score: score(metric(r)), rows[1], rows[0], 199, 5)
        assert values < 0.05 < scores, tag
        best = int(np.argmin([score(metric(r)) for r in rows]))
        # the marks use the scores' p-value: not significant at alpha equal to it (though the values' p is far
        # below), significant just above it (signed ECE: both)
        cases = [(scores, ["tied", "tied"]), (scores + 1e-3, ["best" if i == best else "" for i in (0, 1)])]
        for alpha, marks in cases if direction == "zero" else cases[:1]:
            st = stats.analyse(groups, [tag], 0, {tag: direction},
                               stats.Settings(n_resamples=20, n_permutations=199, seed=5, alpha=alpha)).tags[tag]
            assert st.p_raw[1] == pytest.approx(values, rel=1e-12) and st.mark == marks, (tag, alpha)


def test_marks_groups_left_out_and_the_tester_for_one_run_each():
    """A group without runs or with a non-finite value is not ranked. The tester (the permutation test) is asked only
    for one run against one run, where no t-test exists; a p-value scipy cannot give otherwise (NaN: here the
    means overflow) leaves the groups tied. Significance is adjusted p < alpha, strictly, and a group whose mean
    score equals the best one's is never beaten."""
    a, b = np.array([0.10, 0.12, 0.11]), np.array([0.20, 0.21, 0.19])
    marks, best, adjusted = stats.marks([np.array([]), a, np.array([0.05, np.inf]), b], [[], SEEDS[:3], SEEDS[:2],
                                        SEEDS[:3]], "min")
    assert (marks, best) == (["", "best", "", ""], 1)
    assert math.isnan(adjusted[1]) and adjusted[3] == sps.ttest_rel(a, b).pvalue
    assert math.isnan(adjusted[0]) and math.isnan(adjusted[2])
    asked = []

    def tester(i, j):
        asked.append((i, j))
        return 0.001

    # one run against three: Student's t-test, not the tester
    marks, best, adjusted = stats.marks([a[:1], b], [SEEDS[:1], SEEDS[:3]], "min", tester=tester)
    assert asked == [] and adjusted[1] == sps.ttest_ind(a[:1], b, equal_var=True).pvalue
    huge = np.array([1.7e308, 1.7e308])  # mean inf: scipy's p is NaN
    with np.errstate(over="ignore"):
        marks, best, adjusted = stats.marks([huge, -huge], [SEEDS[:2], SEEDS[2:4]], "min", tester=tester)
    assert asked == [] and math.isnan(adjusted[0]) and (marks, best) == (["tied", "tied"], 1)
    # one run each: the tester's p (Holm over a family of one), strictly below alpha
    one = [np.array([0.3]), np.array([0.2])]
    assert stats.marks(one, [SEEDS[:1]] * 2, "min", tester=tester)[:2] == (["", "best"], 1) and asked == [(1, 0)]
    assert stats.marks(one, [SEEDS[:1]] * 2, "min", alpha=0.001, tester=tester)[0] == ["tied", "tied"]
    assert stats.marks(one, [SEEDS[:1]] * 2, "min")[0] == ["tied", "tied"]  # no tester: untestable
    assert stats.marks([one[0], one[0].copy()], [SEEDS[:1]] * 2, "min", tester=tester)[0] == ["tied", "tied"]


def test_p_value_test_choice_by_sizes_and_keys():
    """Two runs each are enough to pair by seed; repeated seeds do not pair; Welch from 2 runs on either side; no
    runs on either side: no test; pairs match by key whatever the order; p = 1 only for no difference at all; a level
    scipy refuses gives no interval, the p-value still."""
    a, b = np.array([0.81, 0.85, 0.84]), np.array([0.80, 0.86, 0.88])
    p, name, ci = stats.p_value(a[:2], b[:2], SEEDS[:2], SEEDS[1::-1])
    expected = sps.ttest_rel(a[:2], b[1::-1])
    assert (p, name, ci) == (expected.pvalue, "paired t-test (ttest_rel)", tuple(expected.confidence_interval()))
    twice = ["seed=0", "seed=0", "seed=1"]
    assert stats.p_value(a, b, twice, twice)[:2] == (sps.ttest_ind(a, b, equal_var=False).pvalue,
                                                     "Welch's t-test (ttest_ind)")
    for x, y in ((a[:2], b), (a, b[:2])):
        assert stats.p_value(x, y)[:2] == (sps.ttest_ind(x, y, equal_var=False).pvalue, "Welch's t-test (ttest_ind)")
    for x, y in (([], b), (a, []), ([], [])):
        p, name, (low, high) = stats.p_value(x, y)
        assert math.isnan(p) and name == "no runs" and math.isnan(low) and math.isnan(high)
    # no difference at all: runs equal to their pairs (keys in another order), or one value everywhere
    assert stats.p_value(a, a[::-1], SEEDS[:3], SEEDS[2::-1])[0] == 1.0
    assert stats.p_value([0.1], [0.1, 0.1])[0] == stats.p_value([0.1, 0.1], [0.1])[0] == 1.0
    # the first runs equal, the rest not: scipy's p
    assert stats.p_value(a, [0.81, 0.86, 0.88])[0] == sps.ttest_ind(a, [0.81, 0.86, 0.88], equal_var=False).pvalue
    p, name, (low, high) = stats.p_value(a, b, level=1.5)
    assert p == sps.ttest_ind(a, b, equal_var=False).pvalue and math.isnan(low) and math.isnan(high)


def test_score_holm_and_t_interval_in_float64_without_warnings():
    """float32 input is scored, corrected and averaged in float64; log(0) and log(-1) are +inf scores without a
    warning; a t-interval from two runs; a constant group's interval is its value."""
    import warnings

    x = np.float32([0.3, 0.7, 1.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(stats.score(x, "one"), np.abs(np.log(x.astype(np.float64))))
        np.testing.assert_array_equal(stats.score([0.0, -1.0, np.nan, 2.0], "one"), [np.inf, np.inf, np.inf, np.log(2)])
        np.testing.assert_array_equal(stats.score([-np.inf, 0.0], "zero"), [np.inf, 0.0])
    assert stats.score([1, 2], "max").dtype == np.float64
    p = np.float32([0.013, 0.041, 0.027, 0.2])
    out = stats.holm(p)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, multipletests(p.astype(np.float64), method="holm")[1])
    with pytest.raises(ValueError) as info:
        stats.score([1.0], "up")
    assert str(info.value) == "Expected argument `direction` to be one of ['min', 'max', 'one', 'zero'], but got 'up'"
    assert stats.t_interval([0.90, 0.94]) == pytest.approx(sps.t.interval(0.95, 1, 0.92, sps.sem([0.90, 0.94])),
                                                           rel=1e-14)
    assert stats.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    x = np.float32([0.913, 0.937, 0.921, 0.952])
    expected = sps.t.interval(0.9, 3, x.astype(np.float64).mean(), sps.sem(x.astype(np.float64)))
    assert stats.t_interval(x, 0.9) == pytest.approx(expected, rel=1e-14)


def test_recomputed_values_temperatures_empty_test_sets_and_notes():
    """A scaled tag needs a finite positive temperature: without one (NaN, 0, -1, inf) its recorded value stands
    alone (no interval from one run) and the run's other tags are still recomputed; T = 0.5 is recomputed on z / T.
    An empty test split recomputes nothing. smECE's replicates: Settings.loop_resamples. A recorded value is noted
    when it differs from the recomputed one by more than 1e-5 + 1e-4 |recorded| (the run's name, else its key)."""
    z, labels = _calibrated(n=60)
    settings = stats.Settings(n_resamples=20, loop_resamples=7)
    for temperature in (math.nan, 0.0, -1.0, math.inf, 0.5):
        recorded = {"test/ece_ts": 0.1234} if temperature != 0.5 else {}
        run = _run("seed=0", recorded, z.astype(np.float32), labels, temperature)
        out = stats.analyse([[run]], ["test/ece_ts", "test/ece"], settings=settings)
        ts, plain = out.tags["test/ece_ts"], out.tags["test/ece"]
        assert plain.mean[0] == pytest.approx(_ece(_per_sample(z, labels)), rel=1e-6)
        assert plain.interval == ["test samples"] and out.notes == []
        if temperature == 0.5:
            assert ts.mean[0] == pytest.approx(_ece(_per_sample(z, labels, 0.5)), rel=1e-6)
            assert ts.interval == ["test samples"]
        else:
            assert ts.mean[0] == 0.1234 and ts.interval == [""] and ts.replicates == [None], temperature
    empty = {"val_logits": z[:5], "val_labels": labels[:5], "test_logits": np.zeros((0, 3), np.float32),
             "test_labels": np.zeros(0, np.int64), "temperature": 1.0}
    run = stats.Run(key="seed=0", values={"test/ece": 0.07}, predictions=lambda: empty)
    st = stats.analyse([[run]], ["test/ece"], settings=settings).tags["test/ece"]
    assert st.mean[0] == 0.07 and st.interval == [""]
    st = stats.analyse([[_run("seed=0", {}, z[:30].astype(np.float32), labels[:30])]], ["test/smece"],
                       settings=settings).tags["test/smece"]
    assert len(st.replicates[0]) == 7
    # accuracy 16 / 91 (float32, as the run computes it); recorded values around it
    correct = np.r_[np.ones(16), np.zeros(75)].astype(int)
    logits = np.where(np.eye(2, dtype=bool)[1 - correct], 1.0, 0.0).astype(np.float32)  # right on the first 16
    acc = float(np.float32(16 / 91))
    start = (acc + 1e-5) / (1 - 1e-4)
    # the recorded value exactly at the tolerance (not noted) and the next float above it (noted)
    at_tolerance = [r for r in start + np.spacing(start) * np.arange(-3, 4) if abs(r - acc) == 1e-5 + 1e-4 * abs(r)]
    assert len(at_tolerance) == 1
    for recorded, name, noted in ((acc, "run-a", False), (acc + 2e-5, "run-a", False), (at_tolerance[0], "", False),
                                  (np.nextafter(at_tolerance[0], 1), "", True), (acc + 1e-4, "run-a", True)):
        run = stats.Run(key="seed=0", values={"test/acc": recorded}, name=name,
                        predictions=lambda: {"test_logits": logits, "test_labels": np.zeros(91, np.int64),
                                             "temperature": 1.0})
        notes = stats.analyse([[run]], ["test/acc"], settings=settings).notes
        expected = (f"{name or 'seed=0'}: test/acc in metrics.json is {recorded:.6g}, recomputed from predictions.npz "
                    f"{acc:.6g} (a changed definition?); the interval is the recomputed one's")
        assert notes == ([expected] if noted else []), recorded
