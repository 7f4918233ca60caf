"""Tests of ceexp.ood: OOD scores, AUROC / AUPR / FPR95 with in-distribution positive, and the noise set.

Expected numbers come from hand computations (in comments) and from float64 numpy references written here
from the definitions (pairwise comparisons, precision and recall at each distinct threshold), sharing no code
with ceexp or sklearn. The end-to-end check trains sklearn's logistic regression on sklearn's digits.
"""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import ceexp.ood
from ceexp.ood import (
    METRICS,
    SCORES,
    aupr,
    auroc,
    energy,
    entropy,
    fpr95,
    maxlogit,
    msp,
    noise_set,
    ood_metrics,
)

# ---------------------------------------------------------------------------------------------------------
# float64 numpy references


def np_auroc(s_in, s_out):
    """Mann-Whitney: P(in > out) + P(in = out) / 2 over all pairs."""
    s_in, s_out = np.asarray(s_in, dtype=np.float64)[:, None], np.asarray(s_out, dtype=np.float64)[None, :]
    return float(np.mean((s_in > s_out) + 0.5 * (s_in == s_out)))


def np_aupr(s_in, s_out):
    """sum_k (R_k - R_{k-1}) P_k over the distinct scores t_k, descending; accept every sample scored >= t_k."""
    s_in, s_out = np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64)
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s_in.tolist()) | set(s_out.tolist()), reverse=True):
        tp, fp = np.sum(s_in >= t), np.sum(s_out >= t)
        recall = tp / len(s_in)
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return total


def np_fpr_at_tpr(s_in, s_out, level=0.95):
    """The largest threshold t with |{in >= t}| >= level * N_in (exact integer arithmetic for 0.95); the
    fraction of OOD scores >= t."""
    s_in, s_out = np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64)
    for t in sorted(set(s_in.tolist()), reverse=True):
        kept = np.sum(s_in >= t)
        if (kept * 100 >= 95 * len(s_in)) if level == 0.95 else (kept >= level * len(s_in)):
            return float(np.mean(s_out >= t))
    raise AssertionError


def np_scores(z, t=1.0):
    """msp, negative entropy (nats), energy score T logsumexp(z / T), max logit / T, all in float64."""
    z = np.asarray(z, dtype=np.float64) / t
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(z - lse[:, None])
    return {
        "msp": p.max(axis=1),
        "entropy": np.sum(p * np.log(p), axis=1),
        "energy": t * lse,
        "maxlogit": z.max(axis=1),
    }


# ---------------------------------------------------------------------------------------------------------
# metrics by hand


def test_metrics_by_hand_with_a_tie():
    # in = (3, 2), out = (1, 2). Pairs: (3,1) (3,2) (2,1) won, (2,2) tied: AUROC = 3.5 / 4.
    # AP: t = 3: P 1, R 1/2; t = 2: P 2/3, R 1: 1/2 + 1/3 = 5/6.
    # FPR95: keeping both ID needs t = 2; the OOD 2 is at the threshold and counts: 1/2.
    assert auroc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875, abs=1e-15)
    assert aupr([3.0, 2.0], [1.0, 2.0]) == pytest.approx(5 / 6, abs=1e-15)
    assert fpr95([3.0, 2.0], [1.0, 2.0]) == 0.5


def test_metrics_by_hand_separable_and_reversed():
    assert (auroc([5.0, 4.0], [1.0, 2.0, 3.0]), aupr([5.0, 4.0], [1.0, 2.0, 3.0]), fpr95([5.0, 4.0], [1.0, 2.0, 3.0])) \
        == (1.0, 1.0, 0.0)
    # reversed, ID (1, 0.5) below OOD (3, 2, 1.5): AUROC 0, FPR 1; AP: t = 1: P 1/4, R 1/2; t = 0.5: P 2/5, R 1
    s_in, s_out = [1.0, 0.5], [3.0, 2.0, 1.5]
    assert auroc(s_in, s_out) == 0.0 and fpr95(s_in, s_out) == 1.0
    assert aupr(s_in, s_out) == pytest.approx(0.5 * 0.25 + 0.5 * 0.4, abs=1e-15)


def test_fpr95_threshold_on_an_exact_95_percent():
    # 20 ID scores 1..20: t = 2 keeps 19 / 20 = 95% exactly, t = 3 only 90%. OOD scores at or above 2 are
    # 2 (tied with the threshold), 2.5 and 7: 3 of 5.
    s_in = np.arange(1.0, 21.0)
    s_out = [2.0, 2.5, 7.0, 1.5, 0.0]
    assert fpr95(s_in, s_out) == pytest.approx(3 / 5, abs=1e-15)
    # ties inside the ID set: 1 appears twice, so no threshold keeps exactly 95% of 21; t = 1 keeps all
    assert fpr95(np.concatenate([[1.0], s_in]), s_out) == pytest.approx(4 / 5, abs=1e-15)
    # another level
    assert fpr95(s_in, s_out, tpr=0.7) == pytest.approx(1 / 5, abs=1e-15)  # t = 7 keeps 14 / 20; OOD: the 7


def test_metrics_of_identical_distributions_are_chance():
    s = [0.1, 0.2, 0.2, 0.7]
    assert auroc(s, s) == 0.5
    assert fpr95(s, s) == 1.0  # t = 0.1 keeps all ID, and all OOD with them


# ---------------------------------------------------------------------------------------------------------
# metrics against numpy


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_metrics_match_numpy(decimals):
    rng = np.random.default_rng(decimals or 7)
    s_in = rng.normal(1.0, 1.0, size=137)
    s_out = rng.normal(0.0, 1.2, size=91)
    if decimals is not None:  # many ties, within and across the sets
        s_in, s_out = np.round(s_in, decimals), np.round(s_out, decimals)
    assert auroc(torch.from_numpy(s_in), torch.from_numpy(s_out)) == pytest.approx(np_auroc(s_in, s_out), abs=1e-12)
    assert aupr(s_in, s_out) == pytest.approx(np_aupr(s_in, s_out), abs=1e-12)
    assert fpr95(s_in, s_out) == pytest.approx(np_fpr_at_tpr(s_in, s_out), abs=1e-15)
    assert fpr95(s_in, s_out, tpr=0.8) == pytest.approx(np_fpr_at_tpr(s_in, s_out, 0.8), abs=1e-15)
    assert set(METRICS) == {"auroc", "aupr", "fpr95"}


# ---------------------------------------------------------------------------------------------------------
# scores


@pytest.mark.parametrize("temperature", [None, 0.5, 2.0])
def test_scores_match_numpy(temperature):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 6)) * 4
    want = np_scores(z, 1.0 if temperature is None else temperature)
    for name, fn in SCORES.items():
        got = fn(torch.from_numpy(z), temperature)
        assert got.shape == (40,) and got.dtype == torch.float64, name
        assert got.numpy() == pytest.approx(want[name], abs=1e-12), name
    assert list(SCORES) == ["msp", "entropy", "energy", "maxlogit"]


def test_energy_with_temperature_by_hand():
    # T logsumexp(z / T): z = (0, 0): T ln 2; z = (2, 0), T = 2: 2 ln(e + 1)
    assert energy(torch.tensor([[0.0, 0.0]], dtype=torch.float64), 3.0).item() == pytest.approx(3 * math.log(2))
    assert energy(torch.tensor([[2.0, 0.0]], dtype=torch.float64), 2.0).item() == pytest.approx(
        2 * math.log(math.e + 1), abs=1e-15)
    # T -> 0 tends to the max logit; large T to T ln C + mean logit
    z = torch.tensor([[1.0, 3.0, -2.0]], dtype=torch.float64)
    assert energy(z, 1e-3).item() == pytest.approx(3.0, abs=1e-9)
    assert energy(z, 1e6).item() == pytest.approx(1e6 * math.log(3) + 2 / 3, abs=1e-3)


def test_score_signs_higher_is_in_distribution():
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    uniform = torch.tensor([[0.0, 0.0, 0.0]])
    for name, fn in SCORES.items():
        assert fn(confident).item() > fn(uniform).item(), name
    assert entropy(uniform).item() == pytest.approx(-math.log(3), abs=1e-6)
    assert msp(uniform).item() == pytest.approx(1 / 3, abs=1e-7)


def test_scores_of_16_bit_logits_are_float32():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float16, torch.bfloat16):
        for name, fn in SCORES.items():
            got = fn(z.to(dtype))
            assert got.dtype == torch.float32, name
            assert got.numpy() == pytest.approx(fn(z.to(dtype).float()).numpy(), abs=1e-6), name


# ---------------------------------------------------------------------------------------------------------
# ood_metrics


def test_ood_metrics_keys_and_values():
    rng = np.random.default_rng(5)
    z_in = torch.from_numpy(rng.normal(size=(60, 4)) * 3)
    z_out = torch.from_numpy(rng.normal(size=(45, 4)))
    plain = ood_metrics(z_in, z_out)
    assert list(plain) == [f"{m}_{s}" for s in ("msp", "entropy", "energy", "maxlogit")
                           for m in ("auroc", "aupr", "fpr95")]
    both = ood_metrics(z_in, z_out, temperature=2.5)
    assert set(both) == set(plain) | {f"{k}_ts" for k in plain}
    assert all(isinstance(v, float) for v in both.values())
    for t, suffix in ((1.0, ""), (2.5, "_ts")):
        want_in, want_out = np_scores(z_in.numpy(), t), np_scores(z_out.numpy(), t)
        for score in SCORES:
            assert both[f"auroc_{score}{suffix}"] == pytest.approx(np_auroc(want_in[score], want_out[score]), abs=1e-12)
            assert both[f"aupr_{score}{suffix}"] == pytest.approx(np_aupr(want_in[score], want_out[score]), abs=1e-12)
            assert both[f"fpr95_{score}{suffix}"] == pytest.approx(
                np_fpr_at_tpr(want_in[score], want_out[score]), abs=1e-15)
    for key in plain:
        assert both[key] == plain[key]
    # a temperature only rescales the max logit: same ranking
    assert both["auroc_maxlogit_ts"] == plain["auroc_maxlogit"]


# ---------------------------------------------------------------------------------------------------------
# the noise set


def test_noise_set_distribution_and_determinism():
    x = noise_set((1, 8, 8), n=2001, seed=3)
    assert x.shape == (2001, 1, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x, noise_set((1, 8, 8), n=2001, seed=3))
    assert not torch.equal(x, noise_set((1, 8, 8), n=2001, seed=4))
    gauss, uniform = x[:1001].double(), x[1001:].double()  # ceil(n / 2) Gaussian first
    # N(0.5, 1) clipped to [0, 1]: P(u <= 0) = P(u >= 1) = Phi(-0.5) = 0.3085
    phi = 0.5 * math.erfc(0.5 / math.sqrt(2))
    assert (gauss == 0).double().mean().item() == pytest.approx(phi, abs=0.01)
    assert (gauss == 1).double().mean().item() == pytest.approx(phi, abs=0.01)
    assert gauss.min().item() == 0 and gauss.max().item() == 1
    # U[0, 1): no mass on the ends, mean 1/2, variance 1/12
    assert ((uniform > 0) & (uniform < 1)).all()
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.005)
    assert uniform.var().item() == pytest.approx(1 / 12, abs=0.002)


def test_noise_set_is_normalised_like_the_data():
    raw = noise_set((3, 4, 4), n=10, seed=0)
    mean, std = [10.0, 100.0, 200.0], [2.0, 50.0, 4.0]
    x = noise_set((3, 4, 4), n=10, seed=0, mean=mean, std=std, pixel_max=255)
    want = (raw.double() * 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(x.double(), want, atol=1e-4, rtol=1e-6)
    scalar = noise_set((64,), n=4, seed=1, mean=4.9, std=6.0, pixel_max=16)
    assert torch.allclose(scalar.double(), (noise_set((64,), n=4, seed=1).double() * 16 - 4.9) / 6.0, atol=1e-5)
    assert noise_set((2,), n=1, seed=0).shape == (1, 2)  # n = 1: the one sample is Gaussian


@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (0, 3)}, "`input_shape`"),
    ({"input_shape": "64"}, "`input_shape`"),
    ({"n": 0}, "`n` to be a positive integer"),
    ({"seed": -1}, "`seed` to be an int >= 0"),
    ({"seed": 1.5}, "`seed` to be an int >= 0"),
    ({"mean": [0.0, 1.0]}, "`mean` to be a number or 3 values"),
    ({"std": 0.0}, "`std` to be > 0"),
    ({"std": [1.0, -1.0, 1.0]}, "`std` to be > 0"),
    ({"pixel_max": 0}, "`pixel_max` to be a finite number > 0"),
])
def test_noise_set_bad_arguments(kwargs, match):
    args = {"input_shape": (3, 2, 2), "n": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        noise_set(**args)


# ---------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("logits, match", [
    (torch.zeros(3), r"`logits` to have shape \(N, C\)"),
    (torch.zeros(3, 2, dtype=torch.int64), "`logits` to be a floating tensor"),
    (torch.zeros(0, 2), "non-empty `logits`"),
    (torch.zeros(3, 1), "C >= 2"),
    (torch.tensor([[0.0, float("inf")]]), "`logits` to be finite"),
])
@pytest.mark.parametrize("name", list(SCORES))
def test_bad_logits_raise(name, logits, match):
    with pytest.raises(ValueError, match=match):
        SCORES[name](logits)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), True, "2"])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="Expected argument `temperature` to be None or a finite number > 0"):
        msp(torch.zeros(2, 3), temperature)
    with pytest.raises(ValueError, match="`temperature`"):
        ood_metrics(torch.zeros(2, 3), torch.zeros(2, 3), temperature)


def test_bad_metric_inputs_raise():
    with pytest.raises(ValueError, match="`in_scores` to be a non-empty 1-D"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="`out_scores` to be a non-empty 1-D"):
        aupr([1.0], [[1.0]])
    with pytest.raises(ValueError, match="`out_scores` to be finite"):
        fpr95([1.0], [float("nan")])
    for tpr in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="`tpr` to be a number in"):
            fpr95([1.0], [0.0], tpr=tpr)
    with pytest.raises(ValueError, match="`out_logits` to have C=3 classes"):
        ood_metrics(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"`in_logits` to have shape \(N, C\)"):
        ood_metrics(torch.zeros(2), torch.zeros(2, 4))


def test_docstring_examples():
    runner = doctest.DocTestRunner()
    report: list[str] = []
    for test in doctest.DocTestFinder().find(ceexp.ood):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0, "".join(report)


# ---------------------------------------------------------------------------------------------------------
# end to end: a linear classifier of sklearn's digits tells digits from noise


def test_digits_classifier_separates_digits_from_noise():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    digits = load_digits()  # 8 x 8 pixels in 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=0, stratify=digits.target)
    # one mean and spread over all training pixels, as ceexp's digits data module normalises
    scaler = StandardScaler().fit(x_train.reshape(-1, 1))

    def normalise(x):
        return scaler.transform(x.reshape(-1, 1)).reshape(len(x), -1)

    with threadpool_limits(1):  # BLAS threads on a busy machine make this small fit 100x slower
        model = LogisticRegression(C=0.03, max_iter=1000).fit(normalise(x_train), y_train)
    assert model.score(normalise(x_test), y_test) > 0.9
    noise = noise_set((64,), n=len(x_test), seed=0, mean=float(scaler.mean_[0]), std=float(scaler.scale_[0]),
                      pixel_max=16)
    z_in = torch.from_numpy(model.decision_function(normalise(x_test)))
    z_out = torch.from_numpy(model.decision_function(noise.double().numpy()))
    values = ood_metrics(z_in, z_out)
    for score in SCORES:
        assert values[f"auroc_{score}"] > 0.9, (score, values)
