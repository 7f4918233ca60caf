"""Tests of ceexp.calibration.TemperatureScaler.

Expected temperatures come from a closed form (derived below) or from scipy's bounded scalar minimiser and a
brute-force grid over log T on a float64 numpy NLL written here.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

import ceexp.calibration
from ceexp.calibration import TemperatureScaler


def np_nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logits / t
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def overconfident(seed: int = 0, n: int = 600, c: int = 4):
    """Logits correlated with the true class, then sharpened 5x; 25% of labels flipped so nothing is separable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    logits *= 5.0
    flip = rng.random(n) < 0.25
    y = np.where(flip, rng.integers(0, c, size=n), y)
    return logits, y


def test_closed_form_two_class():
    # Four samples with logits (3, 0); labels 0, 0, 0, 1. With s = sigmoid(3 / T) = p(class 0),
    # NLL(T) = -(3 log s + log(1 - s)) / 4, stationary where 3 / s = 1 / (1 - s), i.e. s = 3/4.
    # sigmoid(3 / T) = 3/4  <=>  3 / T = log(3/4 / (1/4)) = ln 3  <=>  T = 3 / ln 3 = 2.7307...
    logits = torch.tensor([[3.0, 0.0]] * 4, dtype=torch.float64)
    scaler = TemperatureScaler()
    assert scaler.temperature == 1.0
    assert scaler.fit(logits, torch.tensor([0, 0, 0, 1])) is scaler
    assert isinstance(scaler.temperature, float)
    assert scaler.temperature == pytest.approx(3 / math.log(3), rel=1e-5)
    assert torch.equal(scaler(logits), logits / scaler.temperature)


def test_forward_keeps_dtype_device_and_argmax():
    logits, y = overconfident(seed=1)
    z32 = torch.from_numpy(logits).float()
    scaler = TemperatureScaler().fit(z32, torch.from_numpy(y))
    out = scaler(z32)
    assert out.dtype == torch.float32 and out.device == z32.device and out.shape == z32.shape
    assert torch.equal(out.argmax(dim=1), z32.argmax(dim=1))
    assert torch.allclose(out, z32 / scaler.temperature)
    assert torch.equal(z32, torch.from_numpy(logits).float())  # the input is not modified


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overconfident_logits_match_scipy_and_grid(seed):
    logits, y = overconfident(seed)
    scaler = TemperatureScaler().fit(torch.from_numpy(logits), torch.from_numpy(y))
    t = scaler.temperature
    assert t > 1.0
    assert np_nll(logits, y, t) < np_nll(logits, y, 1.0)
    best = minimize_scalar(lambda log_t: np_nll(logits, y, math.exp(log_t)), bounds=(-3, 5), method="bounded",
                           options={"xatol": 1e-10})
    assert t == pytest.approx(math.exp(best.x), rel=1e-4)
    grid = np.linspace(-1, 3, 801)  # T in [0.37, 20], step 0.005 in log T
    z = logits[None] / np.exp(grid)[:, None, None]
    grid_nll = np.mean(logsumexp(z, axis=2) - z[:, np.arange(len(y)), y], axis=1)
    assert t == pytest.approx(math.exp(grid[int(np.argmin(grid_nll))]), rel=5e-3)
    assert np_nll(logits, y, t) <= grid_nll.min() + 1e-12


def test_anti_correlated_logits_warn_and_clamp_to_t_max():
    # The true class gets the lowest logit: NLL falls monotonically as T grows (the best "T" is negative).
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3))
    logits[np.arange(200), y] -= 3.0
    z = torch.from_numpy(logits)
    with pytest.warns(UserWarning, match="t_max"):
        scaler = TemperatureScaler(t_max=50.0).fit(z, torch.from_numpy(y))
    assert scaler.temperature == 50.0 and math.isfinite(scaler.temperature)
    assert torch.equal(scaler(z).argmax(dim=1), z.argmax(dim=1))


def test_chance_level_logits_warn():
    # Logits (2, 0) twice, labels 0 and 1. With b = 1/T, NLL = log(1 + e^(2b)) - b, slope 2 sigmoid(2b) - 1 >= 0:
    # least at b = 0, i.e. T = infinity.
    with pytest.warns(UserWarning, match=r"clamped to `t_max` = 100"):
        scaler = TemperatureScaler().fit(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
    assert scaler.temperature == 100.0


def test_separated_logits_warn_and_clamp_to_t_min():
    # Every sample's true logit is the row maximum: NLL -> 0 as T -> 0.
    y = torch.tensor([0, 1, 2, 1])
    logits = 2.0 * torch.nn.functional.one_hot(y, 3).double() + 0.1
    with pytest.warns(UserWarning, match="t_min"):
        scaler = TemperatureScaler(t_min=0.05).fit(logits, y)
    assert scaler.temperature == 0.05


def test_optimum_beyond_bound_is_clamped():
    # The closed-form case has T* = 3 / ln 3 = 2.73 > t_max = 2: clamp to 2 and warn with the fitted value.
    with pytest.warns(UserWarning, match=r"fitted T = 2\.730.*`t_max` = 2"):
        scaler = TemperatureScaler(t_max=2.0).fit(torch.tensor([[3.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
    assert scaler.temperature == 2.0


def test_constant_rows_leave_t_at_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = TemperatureScaler().fit(torch.zeros(3, 4), torch.tensor([0, 1, 2]))
    assert scaler.temperature == 1.0


def test_probabilities_as_logits_warn():
    probs = torch.softmax(torch.from_numpy(overconfident()[0]), dim=1)
    with pytest.warns(UserWarning, match="expects logits"):
        TemperatureScaler().fit(probs, torch.from_numpy(overconfident()[1]))


def test_ordinary_fit_does_not_warn():
    logits, y = overconfident()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemperatureScaler().fit(torch.from_numpy(logits), torch.from_numpy(y))


def test_state_dict_round_trip():
    scaler = TemperatureScaler().fit(torch.tensor([[3.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
    fresh = TemperatureScaler()
    fresh.load_state_dict(scaler.state_dict())
    assert fresh.temperature == scaler.temperature


GOOD_Z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
GOOD_Y = torch.tensor([0, 1])


@pytest.mark.parametrize(
    "logits, target, kwargs, match",
    [
        (GOOD_Z[0], GOOD_Y, {}, r"`logits` to have shape \(N, C\)"),
        (GOOD_Z.long(), GOOD_Y, {}, "`logits` to be a floating tensor"),
        (GOOD_Z, GOOD_Y.float(), {}, "`target` to have dtype torch.int64"),
        (GOOD_Z, torch.tensor([0, 2]), {}, r"`target` values in \[0, 2\)"),
        (GOOD_Z, GOOD_Y[:, None], {}, r"`target` to have shape \(N,\)"),
        (torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), GOOD_Y, {}, "`logits` to be finite"),
        (torch.empty(0, 2), torch.empty(0, dtype=torch.int64), {}, "non-empty `logits`"),
        (GOOD_Z, GOOD_Y, {"max_iter": 0}, "`max_iter`"),
    ],
)
def test_fit_bad_inputs_raise(logits, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureScaler().fit(logits, target, **kwargs)


def test_bad_constructor_and_forward_raise():
    with pytest.raises(ValueError, match="`t_min`"):
        TemperatureScaler(t_min=0.0)
    with pytest.raises(ValueError, match="`t_max`"):
        TemperatureScaler(t_max=float("inf"))
    with pytest.raises(ValueError, match="`t_min` <= `t_max`"):
        TemperatureScaler(t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match="`logits`"):
        TemperatureScaler()(torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------------------
# method="ece_grid": Mukhoti et al. 2020's released temperature_scaling.py (cross_validate='ece')


def np_ece(logits: np.ndarray, y: np.ndarray, t: float, n_bins: int = 15) -> float:
    """Top-label ECE of softmax(logits / t) over bins (b/n, (b+1)/n], in float64, one bin at a time."""
    z = logits / t
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    edges = np.arange(n_bins + 1) / n_bins
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += abs(conf[in_bin].mean() - correct[in_bin].mean()) * in_bin.mean()
    return ece


NP_GRID = np.array([float(f"{k // 10}.{k % 10}") for k in range(1, 101)])  # "0.1", ..., "10.0" parsed


def np_ece_grid_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Brute force: the ECE at every grid T; np.argmin returns the first of tied minima."""
    return float(NP_GRID[np.argmin([np_ece(logits, y, t) for t in NP_GRID])])


def ece_grid_fit(logits: np.ndarray, y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grid never clamps or warns
        scaler = TemperatureScaler(method="ece_grid").fit(torch.from_numpy(logits), torch.from_numpy(y))
    assert isinstance(scaler.temperature, float)
    return scaler.temperature


def test_ece_grid_is_the_decimals_0_1_to_10():
    assert len(ceexp.calibration.ECE_GRID) == 100
    assert ceexp.calibration.ECE_GRID == tuple(NP_GRID.tolist())
    assert ceexp.calibration.ECE_GRID[0] == 0.1 and ceexp.calibration.ECE_GRID[2] == 0.3
    assert ceexp.calibration.ECE_GRID[-1] == 10.0


def underconfident(seed: int = 0, n: int = 500, c: int = 5):
    """Logits correlated with the true class, flattened 1.5x: the ECE-optimal T is below 1 (0.3 or 0.4)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 2.0
    return logits / 1.5, y


@pytest.mark.parametrize("fixture", [overconfident, underconfident])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_grid_matches_brute_force_numpy(fixture, seed):
    logits, y = fixture(seed)
    t = ece_grid_fit(logits, y)
    assert t == np_ece_grid_temperature(logits, y)
    assert 0.1 < t < 10.0  # an interior optimum: the ends of the grid are tested below
    assert (t > 1.0) == (fixture is overconfident)
    assert np_ece(logits, y, t) < np_ece(logits, y, 1.0)


def test_ece_grid_reaches_the_last_grid_point_10():
    # Two samples with logits (2, 0), labels 0 and 1: accuracy 1/2 and confidence sigmoid(2 / T) > 1/2, so the
    # ECE = sigmoid(2 / T) - 1/2 falls as T grows: the largest grid T, 10.0, wins.
    logits, y = np.array([[2.0, 0.0], [2.0, 0.0]]), np.array([0, 1])
    assert ece_grid_fit(logits, y) == 10.0 == np_ece_grid_temperature(logits, y)


def test_ece_grid_ties_go_to_the_first_grid_point():
    # Every sample right with a margin of 40: for T <= 1.0, exp(-40 / T) < 2^-53 and softmax gives confidence
    # exactly 1.0, so the ECE is exactly 0 at T = 0.1, ..., 1.0 (and a little beyond, depending on how softmax
    # rounds), > 0 at larger T. The released code keeps a T only when its ECE is strictly lower, so the first
    # of the tied T, 0.1, wins (not the last, 1.0 or more).
    y = np.array([0, 1, 1, 0])
    logits = 40.0 * np.eye(2)[y]
    eces = [np_ece(logits, y, t) for t in NP_GRID]
    assert eces[:10] == [0.0] * 10 and eces[-1] > 0
    assert ece_grid_fit(logits, y) == 0.1 == np_ece_grid_temperature(logits, y)
    # constant rows: the ECE does not depend on T at all, so again the first grid point
    assert ece_grid_fit(np.zeros((3, 4)), np.array([0, 1, 2])) == 0.1


def test_ece_grid_uses_n_bins():
    logits, y = overconfident(seed=4)
    ts = {n: TemperatureScaler(method="ece_grid", n_bins=n).fit(torch.from_numpy(logits), torch.from_numpy(y))
          .temperature for n in (1, 15)}
    # one bin: |accuracy - mean confidence|, least where the mean confidence is nearest the accuracy
    one_bin = NP_GRID[np.argmin([np_ece(logits, y, t, n_bins=1) for t in NP_GRID])]
    assert ts[1] == one_bin and ts[15] == np_ece_grid_temperature(logits, y)


def test_ece_grid_float32_logits_and_scaling():
    logits, y = overconfident(seed=5)
    z32 = torch.from_numpy(logits).float()
    scaler = TemperatureScaler(method="ece_grid").fit(z32, torch.from_numpy(y))
    assert scaler.temperature in ceexp.calibration.ECE_GRID
    assert scaler.temperature == np_ece_grid_temperature(z32.double().numpy(), y)
    assert torch.equal(scaler(z32), z32 / scaler.temperature)
    assert "method='ece_grid'" in repr(scaler)


def test_bad_method_and_n_bins_raise():
    with pytest.raises(ValueError, match="`method` to be one of \\['nll', 'ece_grid'\\], but got 'ece'"):
        TemperatureScaler(method="ece")
    with pytest.raises(ValueError, match="`n_bins`"):
        TemperatureScaler(method="ece_grid", n_bins=0)


def test_input_errors_name_what_was_given():
    scaler = TemperatureScaler()
    for bad, message in ((torch.zeros(2, dtype=torch.int64), "but got torch.int64"), ([1.0], "but got list")):
        with pytest.raises(ValueError) as info:
            scaler(bad)
        assert str(info.value) == f"Expected `logits` to be a floating tensor, {message}"
    for bad, got in ((torch.zeros(3), "(3,)"), ([1.0], "list"), (torch.zeros(2, 3, 4), "(2, 3, 4)")):
        with pytest.raises(ValueError) as info:
            scaler.log_probs(bad)
        assert str(info.value) == f"Expected `logits` to have shape (N, C) or (N, 1), but got {got}"


def test_log_probs_are_computed_in_float64_and_fit_records_the_width():
    z = torch.randn(500, 7, generator=torch.Generator().manual_seed(0)) * 30  # float32, large: float32 rounding shows
    y = torch.arange(500) % 7
    scaler = TemperatureScaler().fit(z, y)
    assert scaler.n_classes == 7 and TemperatureScaler().fit(z[:, :1], (y % 2)).n_classes == 2  # one logit: [0, z]
    expected = torch.log_softmax(z.double() / scaler.temperature, dim=1).float()
    assert torch.equal(scaler.log_probs(z), expected)
    assert not torch.equal(torch.log_softmax(z / scaler.temperature, dim=1), expected)  # float32 would differ


# ---------------------------------------------------------------------------------------------------------
# exact warning texts, a diverging optimiser, max_iter, optima far from T = 1 (issue #14)

PROBABILITY_WARNING = ("TemperatureScaler.fit expects logits, but every row of `logits` is a probability vector "
                       "(values in [0, 1] summing to 1); pass the model's pre-softmax outputs")


def clamp_warning(fitted: str, reason: str, bound: str, t_min: str = "0.01", t_max: str = "100") -> str:
    return ("Temperature scaling: the NLL-optimal T is not a finite value in "
            f"[t_min={t_min}, t_max={t_max}] (fitted T = {fitted}; {reason}); T is clamped to {bound}. "
            "Accuracy is unchanged by any positive T.")


def fit_and_record(logits, target, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler = TemperatureScaler(**kwargs).fit(torch.tensor(logits, dtype=torch.float64), torch.tensor(target))
    return scaler.temperature, [str(w.message) for w in caught]


@pytest.mark.parametrize("logits, target, kwargs, temperature, said", [
    # probabilities with a misclassified row: the probability warning alone, T fitted as usual
    ([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.9, 0.1]], [0, 0, 1, 0], {}, None, [PROBABILITY_WARNING]),
    # every row right: T -> 0, clamped to t_min
    ([[2.0, 0.0], [0.0, 1.0]], [0, 1], {}, 0.01, [clamp_warning(
        "0", "the NLL keeps falling as T shrinks: every validation sample is classified correctly (perfectly "
        "separated)", "`t_min` = 0.01")]),
    # T* = 3 / ln 3 = 2.73072 above t_max = 2
    ([[3.0, 0.0]] * 4, [0, 0, 0, 1], {"t_max": 2.0}, 2.0, [clamp_warning(
        "2.73072", "the optimum lies outside the allowed range", "`t_max` = 2", t_max="2")]),
])
def test_warning_texts_are_exact(logits, target, kwargs, temperature, said):
    fitted, messages = fit_and_record(logits, target, **kwargs)
    assert messages == said
    if temperature is not None:
        assert fitted == temperature


@pytest.mark.parametrize("log_t", [math.nan, math.inf, -math.inf])
def test_a_diverged_fit_warns_and_takes_t_max(monkeypatch, log_t):
    # an optimiser that ends at a non-finite log T (forced here: L-BFGS on the 1-D convex NLL does not) gives
    # T = t_max, the harmless choice, and a warning that names the divergence
    def diverge(self, closure):
        for group in self.param_groups:
            for param in group["params"]:
                param.fill_(log_t)

    monkeypatch.setattr(torch.optim.LBFGS, "step", torch.no_grad()(diverge))
    fitted, said = fit_and_record([[3.0, 0.0]] * 4, [0, 0, 0, 1])
    assert fitted == 100.0
    assert said == [clamp_warning("nan", "it diverged", "`t_max` = 100")]


@pytest.mark.parametrize("scale", [0.02, 50.0])
def test_optima_far_from_one_match_scipy_and_max_iter_bounds_the_fit(scale):
    # under-confident logits (x0.02: T* ~ 0.1) and over-confident ones (x50: T* ~ 200) start far from T = 1
    logits, y = overconfident(seed=0, n=200)
    logits = logits * scale
    best = minimize_scalar(lambda log_t: np_nll(logits, y, math.exp(log_t)), bounds=(-12, 12), method="bounded",
                           options={"xatol": 1e-12})
    z, target = torch.from_numpy(logits), torch.from_numpy(y)
    scaler = TemperatureScaler(t_min=1e-4, t_max=1e4).fit(z, target)
    assert scaler.temperature == pytest.approx(math.exp(best.x), rel=1e-6)
    assert abs(scaler.temperature - 1.0) > 0.5
    # one L-BFGS iteration does not get there
    one = TemperatureScaler(t_min=1e-4, t_max=1e4).fit(z, target, max_iter=1).temperature
    assert abs(one / math.exp(best.x) - 1) > 0.01


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames")
def test_probability_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TemperatureScaler().fit(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]), torch.tensor([0, 0, 1]))
    assert [(w.category, w.filename) for w in caught] == [(UserWarning, __file__)]


@pytest.mark.parametrize("value", ["1", True, None])
def test_range_arguments_must_be_numbers(value):
    for name in ("t_min", "t_max"):
        with pytest.raises(ValueError) as info:
            TemperatureScaler(**{name: value})
        assert str(info.value) == f"Expected argument `{name}` to be a finite number > 0, but got {value!r}"
