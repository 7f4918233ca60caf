"""ceexp.bootstrap: the vectorised replicates against the plain ceexp.metrics functions on explicitly resampled
rows, the percentile interval against numpy, the two-level assembly against an explicit construction, and the
coverage of the interval on a synthetic model whose ECE is known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ceexp import bootstrap as bs
from ceexp import metrics as M


def _plain(name: str, logits: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """The definition: the ceexp.metrics function on these rows (NLL from the logits)."""
    z, y = torch.from_numpy(logits), torch.from_numpy(target)
    if name in ("nll", "nll_bits"):
        value = float(M.negative_log_likelihood(z, y))
        return value / math.log(2) if name == "nll_bits" else value
    return float(M.METRIC_FUNCTIONS[name](z.softmax(dim=1), y, n_bins))


def _predictions(n: int, c: int, seed: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Logits with ties (rounded to 0.5, a block of identical rows) and mixed calibration: half the samples
    labelled with their top class (under-confident bins), half at random (over-confident bins)."""
    rng = np.random.default_rng(seed)
    logits = np.round(2 * rng.normal(size=(n, c)), 0) / 2
    logits[: n // 10] = logits[0]  # a block of equal confidences that resamples repeat
    target = rng.integers(0, c, n)
    right = rng.random(n) < 0.5
    target[right] = logits[right].argmax(axis=1)
    return logits.astype(dtype), target


VECTORISED = [m for m in bs.VECTORISED_METRICS if m in bs.available_metrics()]


def test_every_logged_metric_is_computable():
    assert set(M.METRIC_FUNCTIONS) | set(M.SELECTIVE_FUNCTIONS) | {"nll", "nll_bits"} == set(bs.available_metrics())
    assert set(VECTORISED) == set(bs.VECTORISED_METRICS)


@pytest.mark.parametrize("n, c, n_bins", [(503, 5, 15), (97, 3, 10), (40, 4, 7), (9, 3, 15)])
def test_replicates_equal_plain_metric_on_explicit_resamples(n, c, n_bins):
    """Replicate r of each vectorised metric equals the plain function on (probs[idx_r], target[idx_r]): bin
    counts that do not divide N (and N < n_bins), tie blocks, repeats of a sample, over- and under-confident bins."""
    logits, target = _predictions(n, c, seed=n)
    table = bs.WeightedMetrics.from_logits(logits, target, n_bins)
    resampler = bs.Resampler(n, seed=7, stream=bs.split_stream(target))
    # chunks of 3 resamples: the chunking must not show
    reps = bs.replicates(table, VECTORISED, resampler, 70, max_chunk_bytes=3 * 8 * n)
    for r in (0, 1, 33, 64, 69):  # 64: the second block of the resampler
        idx = resampler.indices(r)
        for name in VECTORISED:
            expected = _plain(name, logits[idx], target[idx], n_bins)
            assert reps[name][r] == pytest.approx(expected, rel=1e-10, abs=1e-12), (name, r)


def test_mixed_calibration_and_ties_are_exercised():
    """The data of the test above has over- and under-confident equal-width bins and tie blocks that straddle
    the equal-mass cuts, so a wrong tie rule or a |sum| in place of a sum of |.| would show."""
    logits, target = _predictions(503, 5, seed=503)
    probs = torch.from_numpy(logits).softmax(dim=1)
    bins = M.reliability_bins(probs, torch.from_numpy(target), 15)
    gap = (bins.confidence - bins.accuracy)[bins.count > 1]
    assert (gap > 0.05).any() and (gap < -0.05).any()
    conf = np.sort(probs.max(dim=1).values.numpy())
    cuts = np.cumsum([len(a) for a in np.array_split(conf, 15)])[:-1]
    assert sum(conf[k - 1] == conf[k] for k in cuts) >= 3
    # the tie rule matters here: array_split on a stable sort would give another AdaECE
    stable = sum(abs(a.size * (np.mean(a) - h.mean())) for a, h in zip(
        np.array_split(conf, 15), np.array_split(
            (probs.argmax(1).numpy() == target).astype(float)[np.argsort(probs.max(1).values.numpy(), kind="stable")],
            15)))
    assert stable / len(conf) != pytest.approx(float(M.adaptive_calibration_error(probs, torch.from_numpy(target))))


def test_float32_predictions_bin_as_the_run_did():
    """float32 logits (predictions.npz): probabilities and bins in float32, as the run's metrics were."""
    logits, target = _predictions(300, 4, seed=1, dtype=np.float32)
    table = bs.WeightedMetrics.from_logits(logits, target, 15)
    resampler = bs.Resampler(300, seed=0)
    reps = bs.replicates(table, VECTORISED, resampler, 5)
    idx = resampler.indices(4)
    for name in VECTORISED:
        expected = _plain(name, logits[idx], target[idx], 15)
        assert reps[name][4] == pytest.approx(expected, rel=1e-6, abs=1e-7), name


def test_temperature_scaled_replicates():
    logits, target = _predictions(200, 4, seed=2)
    table = bs.WeightedMetrics.from_logits(logits, target, 15, temperature=1.7)
    resampler = bs.Resampler(200, seed=3)
    reps = bs.replicates(table, ["ece", "nll", "adaece"], resampler, 4)
    idx = resampler.indices(2)
    for name in ("ece", "nll", "adaece"):
        assert reps[name][2] == pytest.approx(_plain(name, logits[idx] / 1.7, target[idx], 15), rel=1e-10)


def test_looped_metric_smece():
    """smECE has no weighted form: replicates call the plain function on the resampled rows."""
    logits, target = _predictions(120, 3, seed=3)
    table = bs.WeightedMetrics.from_logits(logits, target, 15)
    resampler = bs.Resampler(120, seed=4)
    reps = bs.replicates(table, ["smece", "ece"], resampler, 10, loop_resamples=3)
    assert reps["smece"].shape == (3,) and reps["ece"].shape == (10,)
    for r in range(3):
        idx = resampler.indices(r)
        assert reps["smece"][r] == pytest.approx(_plain("smece", logits[idx], target[idx], 15), rel=1e-12)
    # the same through evaluate() with weights (a row of counts)
    w = resampler.counts([1])
    assert table.evaluate(["smece"], w)["smece"][0] == pytest.approx(reps["smece"][1], rel=1e-12)


def test_any_weights_select_rows():
    """0/1 weights over a pool (what the permutation test builds) give the metric of the selected rows."""
    logits, target = _predictions(150, 4, seed=5)
    table = bs.WeightedMetrics.from_logits(logits, target, 15)
    rng = np.random.default_rng(0)
    rows = [np.sort(rng.choice(150, size=size, replace=False)) for size in (150, 77, 31)]
    for chosen in rows:
        w = np.zeros((1, 150))
        w[0, chosen] = 1
        values = table.evaluate(VECTORISED, w)
        for name in VECTORISED:
            assert values[name][0] == pytest.approx(_plain(name, logits[chosen], target[chosen], 15),
                                                    rel=1e-10, abs=1e-12), (name, len(chosen))


def test_resampler_counts_and_streams():
    resampler = bs.Resampler(50, seed=1, stream=9)
    w = resampler.counts(range(130))
    assert w.shape == (130, 50) and (w.sum(axis=1) == 50).all()
    for r in (0, 63, 64, 129):
        assert (w[r] == np.bincount(resampler.indices(r), minlength=50)).all()
    assert (bs.Resampler(50, seed=1, stream=9).counts([64, 3]) == w[[64, 3]]).all()  # any order, any chunk
    assert not (bs.Resampler(50, seed=1, stream=8).counts([0]) == w[0]).all()
    labels = np.arange(10) % 3
    assert bs.split_stream(labels) == bs.split_stream(labels.copy())
    assert bs.split_stream(labels) != bs.split_stream(labels[::-1])


def test_percentile_interval_is_numpy_percentile():
    reps = np.random.default_rng(0).gamma(2.0, size=999)
    assert bs.percentile_interval(reps, 0.95) == (np.percentile(reps, 2.5), np.percentile(reps, 97.5))
    assert bs.percentile_interval(reps, 0.9) == (np.percentile(reps, 5), np.percentile(reps, 95))
    assert all(math.isnan(x) for x in bs.percentile_interval(np.array([])))


def test_two_level_is_the_mean_over_drawn_runs():
    rng = np.random.default_rng(1)
    per_run = rng.random((4, 6))
    draws = bs.seed_draws(4, 6, seed=2, stream=3)
    assert draws.shape == (6, 4) and draws.min() >= 0 and draws.max() <= 3
    expected = [np.mean([per_run[draws[r, k], r] for k in range(4)]) for r in range(6)]
    np.testing.assert_allclose(bs.two_level(per_run, draws), expected, rtol=1e-15)
    assert (bs.seed_draws(1, 5) == 0).all()


def test_two_level_replicate_is_an_explicit_two_level_resample():
    """Replicate r of a group: the runs drawn by seed_draws, each on test resample r, then the mean of the plain
    metric: a group of three runs sharing a test split."""
    n, c = 80, 3
    target = np.random.default_rng(0).integers(0, c, n)
    runs = [np.random.default_rng(s).normal(size=(n, c)) for s in range(3)]
    resampler = bs.Resampler(n, seed=0, stream=bs.split_stream(target))
    per_run = np.stack([bs.replicates(bs.WeightedMetrics.from_logits(z, target), ["ece"], resampler, 20)["ece"]
                        for z in runs])
    draws = bs.seed_draws(3, 20, seed=0, stream=bs.keys_stream(["seed=0", "seed=1", "seed=2"]))
    group = bs.two_level(per_run, draws)
    for r in (0, 7, 19):
        idx = resampler.indices(r)
        explicit = np.mean([_plain("ece", runs[k][idx], target[idx], 15) for k in draws[r]])
        assert group[r] == pytest.approx(explicit, rel=1e-12)


def test_bootstrap_run_value_and_interval():
    logits, target = _predictions(400, 5, seed=9, dtype=np.float32)
    out = bs.bootstrap_run(logits, target, ["ece", "acc"], n_resamples=200, seed=1)
    table = bs.WeightedMetrics.from_logits(logits, target, 15)
    reps = bs.replicates(table, ["ece", "acc"], bs.Resampler(400, 1, bs.split_stream(target)), 200)
    for name in ("ece", "acc"):
        assert out[name].value == pytest.approx(_plain(name, logits, target, 15), rel=1e-6)
        q_low, q_high = np.percentile(reps[name], [2.5, 97.5])  # the basic interval, reflected about the value
        expected = (max(2 * out[name].value - q_high, 0.0), max(2 * out[name].value - q_low, 0.0))
        assert (out[name].low, out[name].high) == pytest.approx(expected, rel=1e-12)


def test_tag_metric():
    assert bs.tag_metric("test/ece") == ("test", "ece", False)
    assert bs.tag_metric("test/ece_signed_ts") == ("test", "ece_signed", True)
    assert bs.tag_metric("val/nll") == ("val", "nll", False)
    assert bs.tag_metric("test/temperature") is None and bs.tag_metric("time/fit") is None
    assert bs.tag_metric("test/loss") is None


# ---------------------------------------------------------------------------------------------------------
# coverage on a synthetic model with a known ECE

# top-label confidence c ~ Uniform(0.5, 1) (two classes, class 0 predicted), right with probability c + delta_b
# in equal-width bin b (15 bins): E[acc - conf | bin b] = delta_b, so the population ECE over the same bins is
# sum_b P(bin b) |delta_b| exactly. Bin 7 is (7/15, 8/15], of which (0.5, 8/15] is reached: 1/30 of the width 1/2.
_DELTA = {7: 0.10, 8: -0.07, 9: 0.06, 10: -0.09, 11: 0.08, 12: -0.06, 13: 0.07, 14: -0.08}
_SHARE = {b: (1 / 30 if b == 7 else 1 / 15) / 0.5 for b in _DELTA}
TRUE_ECE = sum(_SHARE[b] * abs(d) for b, d in _DELTA.items())


def _synthetic(n: int, rng, delta=_DELTA) -> tuple[np.ndarray, np.ndarray]:
    c = rng.uniform(0.5, 1.0, n)
    b = np.searchsorted(np.arange(1, 15) / 15, c, side="left")
    right = rng.random(n) < c + np.vectorize(delta.get)(b)
    probs = np.stack([c, 1 - c], axis=1)
    return probs, np.where(right, 0, 1)


def _coverage(repetitions: int, n: int, n_resamples: int, scale: float = 1.0, percentile: bool = False) -> float:
    """How often the interval covers the true ECE of the synthetic model with its gaps delta_b times ``scale``."""
    rng = np.random.default_rng(2024)
    delta = {b: scale * d for b, d in _DELTA.items()}
    true_ece = sum(_SHARE[b] * abs(d) for b, d in delta.items())
    hits = 0
    for k in range(repetitions):
        probs, target = _synthetic(n, rng, delta)
        table = bs.WeightedMetrics(probs, target, 15)
        reps = bs.replicates(table, ["ece"], bs.Resampler(n, seed=k), n_resamples)["ece"]
        estimate = float(M.expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(target)))
        low, high = bs.percentile_interval(reps) if percentile else bs.basic_interval(reps, estimate, lower=0.0)
        hits += low <= true_ece <= high
    return hits / repetitions


def test_synthetic_model_is_as_stated():
    assert sum(_SHARE.values()) == pytest.approx(1.0)
    probs, target = _synthetic(200_000, np.random.default_rng(0))
    ece = float(M.expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(target)))
    assert ece == pytest.approx(TRUE_ECE, abs=0.003)


def test_coverage_fast():
    """40 draws of 3,000 samples (true ECE 7.5 %): the 95% interval covers the true ECE in most (loose bound)."""
    assert _coverage(40, 3000, 300) >= 0.8


def test_coverage_of_a_well_calibrated_model_needs_the_basic_interval():
    """A true ECE of 2.2 % on 1,000 test samples, as the loss_comparison runs have: the binned ECE is biased
    upward and its resamples more so, so the percentile interval misses the true value in most draws; the basic
    interval, which subtracts the resampling bias, covers it in most (measured: 33 % against 90 %)."""
    assert _coverage(40, 1000, 300, scale=0.3) >= 0.8
    assert _coverage(40, 1000, 300, scale=0.3, percentile=True) <= 0.6


@pytest.mark.slow
def test_coverage_about_95_percent():
    """400 draws, 1,000 resamples each: coverage near 0.95 when the model is far from calibrated (ECE 7.5 %,
    3,000 samples) and near 0.9 when it is close (ECE 2.2 %, 1,000 samples; the binned ECE's bias there is
    comparable to its spread), binomial sd about 0.015."""
    assert _coverage(400, 3000, 1000) >= 0.88
    assert _coverage(400, 1000, 1000, scale=0.3) >= 0.85
