"""Tests of ceexp.calibration.TemperatureScaler.

Expected temperatures come from a closed form (derived below) or from scipy's bounded scalar minimiser and a
brute-force grid over log T on a float64 numpy NLL written here.
"""
from __future__ import annotations

import doctest
import math
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


def test_docstring_examples():
    result = doctest.testmod(ceexp.calibration, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
