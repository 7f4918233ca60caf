"""Tests of the post-hoc calibrators of ceexp.calibration (issue #11).

Where netcal implements the same definition (temperature scaling, one-vs-rest histogram binning with equal-width
bins, one-vs-rest isotonic regression) the calibrated probabilities are compared with netcal's; vector scaling,
matrix scaling and Dirichlet calibration with ODIR are compared with a float64 numpy objective written here,
minimised by scipy's L-BFGS-B with its analytic gradient. Real data: a logistic regression on sklearn's digits.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, softmax
from sklearn.model_selection import KFold

import ceexp.calibration as cal
from ceexp.calibration import (
    CALIBRATORS,
    DirichletCalibrator,
    HistogramBinner,
    IsotonicCalibrator,
    MatrixScaler,
    TemperatureScaler,
    UnfittableSplitError,
    VectorScaler,
    calibrated_log_probs,
    calibrated_metrics,
    fit_calibrators,
)

netcal_binning = pytest.importorskip("netcal.binning")
netcal_scaling = pytest.importorskip("netcal.scaling")

NAMES = ["temperature", "vector", "matrix", "dirichlet", "histogram", "isotonic"]
# where the cross-validation of the ODIR strength is not what a test is about, a fixed one saves its 35 fits
QUICK = {"matrix": {"reg_lambda": 0.01}, "dirichlet": {"reg_lambda": 0.01}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The fits are small float64 problems: one thread avoids oversubscribing a shared CPU (tenfold slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t(array) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def synthetic(seed: int, n: int, c: int, scale: float = 1.5, sharpen: float = 1.0, shift=None):
    """Logits ``sharpen * z`` with labels drawn from ``softmax(z + shift)``: calibrated when sharpen = 1 and there is
    no shift, over-confident for sharpen > 1, with a class-prior shift otherwise."""
    rng = np.random.default_rng(seed)
    z = scale * rng.normal(size=(n, c))
    truth = softmax(z + (0.0 if shift is None else np.asarray(shift)), axis=1)
    y = (rng.random((n, 1)) > np.cumsum(truth, axis=1)).sum(axis=1)
    return sharpen * z, np.minimum(y, c - 1), truth


def probs_of(calibrator, logits: np.ndarray) -> np.ndarray:
    return calibrator.log_probs(t(logits)).double().exp().numpy()


# ---------------------------------------------------------------------------------------------------------
# the registry and the interface


def test_registry_names_and_argmax_flags():
    assert list(CALIBRATORS) == NAMES
    assert CALIBRATORS["temperature"] is TemperatureScaler
    assert {name: cls.keeps_argmax for name, cls in CALIBRATORS.items()} == {
        "temperature": True, "vector": False, "matrix": False, "dirichlet": False, "histogram": False,
        "isotonic": False}
    assert all(isinstance(cls(), cal.Calibrator) for cls in CALIBRATORS.values())


@pytest.mark.parametrize("name", NAMES)
def test_common_interface(name):
    z, y, _ = synthetic(0, 300, 4, sharpen=2.0)
    z32 = t(z).float()
    before = z32.clone()
    calibrator = CALIBRATORS[name]()
    assert calibrator.fit(z32, t(y)) is calibrator
    out = calibrator.log_probs(z32)
    assert out.dtype == torch.float32 and out.shape == (300, 4) and out.device == z32.device
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double().logsumexp(dim=1), torch.zeros(300, dtype=torch.float64), atol=1e-5)
    assert torch.equal(z32, before)
    if name == "temperature":  # calling it keeps its older API: logits / T, whose softmax is the same
        assert torch.equal(calibrator(z32), z32 / calibrator.temperature)
        assert torch.allclose(calibrator(z32).softmax(1), out.exp(), atol=1e-6)
    else:
        assert torch.equal(calibrator(z32), out)
    # 16-bit logits are fitted on their exact values, in float64
    assert CALIBRATORS[name]().fit(z32.half(), t(y)).log_probs(z32.half()).dtype == torch.float32


@pytest.mark.parametrize("name", NAMES[1:])
def test_log_probs_before_fit_and_wrong_width_raise(name):
    calibrator = CALIBRATORS[name](**QUICK.get(name, {}))
    with pytest.raises(RuntimeError, match="call `fit`"):
        calibrator.log_probs(torch.zeros(2, 3))
    z, y, _ = synthetic(1, 120, 3)
    calibrator.fit(t(z), t(y))
    with pytest.raises(ValueError, match="C=3 columns"):
        calibrator.log_probs(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="finite"):
        calibrator.log_probs(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        calibrator.log_probs(torch.zeros(2, 3, dtype=torch.int64))


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="`reg_lambda`"):
        MatrixScaler(reg_lambda=-1.0)
    with pytest.raises(ValueError, match="`reg_mu`"):
        DirichletCalibrator(reg_mu=float("nan"))
    with pytest.raises(ValueError, match="`grid`"):
        MatrixScaler(grid=())
    with pytest.raises(ValueError, match="`n_folds`"):
        MatrixScaler(n_folds=1)
    with pytest.raises(ValueError, match="`n_bins`"):
        HistogramBinner(n_bins=0)
    with pytest.raises(ValueError, match="`max_iter`"):
        VectorScaler(max_iter=0)


# ---------------------------------------------------------------------------------------------------------
# against netcal 1.4: temperature scaling, histogram binning, isotonic regression


def test_temperature_matches_netcal():
    z, y, _ = synthetic(2, 800, 5, sharpen=2.5)
    ours = TemperatureScaler().fit(t(z), t(y))
    theirs = netcal_scaling.TemperatureScaling().fit(softmax(z, axis=1), y)  # softmax(ln p / T)
    # netcal's T from its output on logits (1, 0, 0, 0, 0): ln(p_0 / p_1) = 1 / T
    probe = theirs.transform(softmax(np.eye(5)[:1], axis=1))[0]
    assert ours.temperature > 2
    assert ours.temperature == pytest.approx(1 / math.log(probe[0] / probe[1]), rel=1e-3)
    np.testing.assert_allclose(probs_of(ours, z), theirs.transform(softmax(z, axis=1)), atol=1e-4)


@pytest.mark.parametrize("n_bins, n, sharpen", [(5, 1500, 2.0), (15, 1500, 2.0), (60, 300, 4.0)])
def test_histogram_binning_matches_netcal(n_bins, n, sharpen):
    z, y, _ = synthetic(3, n, 4, sharpen=sharpen)
    z_test, _, _ = synthetic(4, 500, 4, sharpen=sharpen)
    ours = HistogramBinner(n_bins=n_bins).fit(t(z), t(y))
    theirs = netcal_binning.HistogramBinning(bins=n_bins).fit(softmax(z, axis=1), y)
    expected = theirs.transform(softmax(z_test, axis=1))  # one-vs-rest bins, rows divided by their sums
    expected = np.maximum(expected / expected.sum(1, keepdims=True), 1e-7)  # the floor, by hand
    np.testing.assert_allclose(probs_of(ours, z_test), expected / expected.sum(1, keepdims=True), atol=1e-6)
    # empty bins keep their midpoints, as netcal's (60 bins for 300 samples leave some empty)
    empty = ours.bin_counts == 0
    assert empty.any() or n_bins < 60
    assert torch.equal(ours.bin_values[empty], (torch.nonzero(empty)[:, 1].double() + 0.5) / n_bins)


def test_isotonic_matches_netcal():
    z, y, _ = synthetic(5, 1500, 4, sharpen=2.0)
    z_test, _, _ = synthetic(6, 500, 4, sharpen=2.0)
    ours = IsotonicCalibrator().fit(t(z), t(y))
    theirs = netcal_binning.IsotonicRegression().fit(softmax(z, axis=1), y)
    expected = theirs.transform(softmax(z_test, axis=1))
    expected = np.maximum(expected / expected.sum(1, keepdims=True), 1e-7)
    np.testing.assert_allclose(probs_of(ours, z_test), expected / expected.sum(1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("name, netcal_cls", [
    ("temperature", lambda: netcal_scaling.TemperatureScaling()),
    ("histogram", lambda: netcal_binning.HistogramBinning(bins=15)),
    ("isotonic", lambda: netcal_binning.IsotonicRegression()),
])
def test_one_logit_models_match_netcal_binary(name, netcal_cls):
    # A single logit z: netcal calibrates sigmoid(z) alone; ours the two columns [1 - sigmoid(z), sigmoid(z)]
    # one-vs-rest and renormalises. Equal-width bins and isotonic fits are symmetric under p -> 1 - p, y -> 1 - y,
    # so both give the same sigmoid-class probability.
    rng = np.random.default_rng(7)
    z = 3.0 * rng.normal(size=(1000, 1))
    y = (rng.random(1000) < expit(z[:, 0] / 2.5)).astype(np.int64)
    z_test = 3.0 * rng.normal(size=(300, 1))
    ours = CALIBRATORS[name]().fit(t(z), t(y))
    theirs = netcal_cls().fit(expit(z[:, 0]), y)
    out = ours.log_probs(t(z_test))
    assert out.shape == (300, 2)
    expected = np.clip(theirs.transform(expit(z_test[:, 0])), 1e-7, 1 - 1e-7)
    atol = 1e-4 if name == "temperature" else 1e-6
    np.testing.assert_allclose(out.double().exp().numpy()[:, 1], expected, atol=atol)


# ---------------------------------------------------------------------------------------------------------
# against a float64 numpy objective minimised by scipy: vector scaling, matrix scaling and Dirichlet (ODIR)


def np_fit(x: np.ndarray, y: np.ndarray, kind: str, lam: float = 0.0, mu: float = 0.0):
    """Minimise mean NLL + lam / (C (C - 1)) sum_{i != j} W_ij^2 + mu / C sum_j b_j^2 (Kull et al. 2019's ODIR,
    normalised) over ``W`` (full for kind="full", diagonal ``w`` for "vector") and ``b``, from W = I, b = 0.
    Returns (weights, b, objective)."""
    n, c = x.shape
    onehot = np.eye(c)[y]
    off = 1.0 - np.eye(c)

    def unpack(theta):
        return (theta[:c], theta[c:]) if kind == "vector" else (theta[:c * c].reshape(c, c), theta[c * c:])

    def objective(theta):
        w, b = unpack(theta)
        s = x * w + b if kind == "vector" else x @ w.T + b
        lp = log_softmax(s, axis=1)
        g = (np.exp(lp) - onehot) / n  # d mean NLL / d scores
        value = -lp[np.arange(n), y].mean() + lam / (c * (c - 1)) * np.sum((w * off) ** 2) + mu / c * np.sum(b ** 2)
        if kind == "vector":
            grad_w = (g * x).sum(0)
        else:
            grad_w = (g.T @ x + 2 * lam / (c * (c - 1)) * w * off).ravel()
        return value, np.concatenate([grad_w, g.sum(0) + 2 * mu / c * b])

    start = np.concatenate([np.ones(c) if kind == "vector" else np.eye(c).ravel(), np.zeros(c)])
    res = minimize(objective, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-14, "gtol": 1e-9})
    w, b = unpack(res.x)
    return w, b, res.fun


def dirichlet_features(z: np.ndarray) -> np.ndarray:
    """ln p with p clipped to [eps, 1 - eps], as the released Keras layer (Dirichlet_NN._logFunc)."""
    eps = np.finfo(np.float64).eps
    return np.log(np.clip(softmax(z, axis=1), eps, 1 - eps))


def test_vector_scaling_matches_scipy():
    z, y, _ = synthetic(8, 600, 4, sharpen=2.0, shift=[1.0, 0.0, -0.5, 0.0])
    ours = VectorScaler().fit(t(z), t(y))
    w, b, _ = np_fit(z, y, "vector")
    z_test, _, _ = synthetic(9, 200, 4)
    np.testing.assert_allclose(probs_of(ours, z_test), softmax(z_test * w + b, axis=1), atol=1e-4)
    np.testing.assert_allclose(ours.weight.numpy(), w, atol=1e-3)
    assert (w < 0.8).all()  # over-confident logits: every class scaled down


@pytest.mark.parametrize("cls", [MatrixScaler, DirichletCalibrator])
@pytest.mark.parametrize("lam, mu", [(0.0, 0.0), (0.05, 0.05), (1.0, 0.01)])
def test_odir_fit_matches_scipy(cls, lam, mu):
    z, y, _ = synthetic(10, 500, 4, sharpen=2.0, shift=[1.0, 0.0, -0.5, 0.0])
    z[:3] *= 20  # a few very confident rows: Dirichlet's clipped ln p
    features = (lambda v: v) if cls is MatrixScaler else dirichlet_features
    ours = cls(reg_lambda=lam, reg_mu=mu).fit(t(z), t(y))
    w, b, objective = np_fit(features(z), y, "full", lam, mu)
    z_test, _, _ = synthetic(11, 200, 4, sharpen=2.0)
    np.testing.assert_allclose(probs_of(ours, z_test), softmax(features(z_test) @ w.T + b, axis=1), atol=2e-4)
    ours_w, ours_b = ours.weight.numpy(), ours.bias.numpy()
    off = 1.0 - np.eye(4)
    ours_objective = (-log_softmax(features(z) @ ours_w.T + ours_b, axis=1)[np.arange(500), y].mean()
                      + lam / 12 * np.sum((ours_w * off) ** 2) + mu / 4 * np.sum(ours_b ** 2))
    assert ours_objective == pytest.approx(objective, abs=1e-7)
    assert ours.fitted_lambda == lam and ours.fitted_mu == mu and ours.cv_nll == {}


def test_mu_defaults_to_lambda():
    z, y, _ = synthetic(12, 300, 3, sharpen=2.0)
    ours = MatrixScaler(reg_lambda=0.3).fit(t(z), t(y))
    w, b, _ = np_fit(z, y, "full", 0.3, 0.3)
    assert ours.fitted_mu == 0.3
    np.testing.assert_allclose(probs_of(ours, z), softmax(z @ w.T + b, axis=1), atol=2e-4)


@pytest.mark.parametrize("cls", [MatrixScaler, DirichletCalibrator])
def test_odir_cross_validation_matches_scipy(cls):
    # lambda (and mu = lambda) by 5-fold CV: sklearn's KFold(shuffle=True, random_state=0) folds, each fold's fit
    # by scipy, the held-out NLL summed over folds / N
    z, y, _ = synthetic(13, 150, 3, sharpen=3.0)
    grid = (1e-3, 1e-1, 10.0)
    features = (lambda v: v) if cls is MatrixScaler else dirichlet_features
    x = features(z)
    expected = dict.fromkeys(grid, 0.0)
    for train, held in KFold(n_splits=5, shuffle=True, random_state=0).split(x):
        for lam in grid:
            w, b, _ = np_fit(x[train], y[train], "full", lam, lam)
            expected[lam] -= log_softmax(x[held] @ w.T + b, axis=1)[np.arange(len(held)), y[held]].sum() / len(y)
    ours = cls(grid=grid, cv_max_iter=2000).fit(t(z), t(y))
    assert list(ours.cv_nll) == list(grid)
    np.testing.assert_allclose(list(ours.cv_nll.values()), list(expected.values()), rtol=1e-5)
    best = min(expected, key=expected.get)
    assert ours.fitted_lambda == best == ours.fitted_mu
    w, b, _ = np_fit(x, y, "full", best, best)
    np.testing.assert_allclose(probs_of(ours, z), softmax(x @ w.T + b, axis=1), atol=2e-4)


def test_dirichlet_differs_from_matrix_scaling():
    # W ln p = W z - (W 1) lse(z): the same ODIR fit on ln p and on z gives different maps
    z, y, _ = synthetic(14, 400, 3, sharpen=2.0, shift=[1.0, 0.0, 0.0])
    a = probs_of(MatrixScaler(reg_lambda=0.0, reg_mu=0.0).fit(t(z), t(y)), z)
    b = probs_of(DirichletCalibrator(reg_lambda=0.0, reg_mu=0.0).fit(t(z), t(y)), z)
    assert np.abs(a - b).max() > 1e-2


# ---------------------------------------------------------------------------------------------------------
# behaviour: arg-max, an already calibrated model, the floor


def test_temperature_keeps_the_argmax():
    z, y, _ = synthetic(15, 500, 5, sharpen=3.0, shift=[2.0, 0, 0, 0, 0])
    z_test, y_test, _ = synthetic(16, 500, 5, sharpen=3.0, shift=[2.0, 0, 0, 0, 0])
    scaler = TemperatureScaler().fit(t(z), t(y))
    assert torch.equal(scaler.log_probs(t(z_test)).argmax(1), t(z_test).argmax(1))
    metrics = calibrated_metrics({"temperature": scaler.log_probs(t(z_test))}, t(y_test), metrics=("acc",))
    assert metrics["acc_temperature"] == pytest.approx(np.mean(z_test.argmax(1) == y_test), abs=1e-12)


@pytest.mark.parametrize("name", ["vector", "matrix", "dirichlet", "histogram", "isotonic"])
def test_other_methods_can_change_the_argmax(name):
    # Labels drawn with class 0 favoured by e^2 over what the logits say: a calibrator that learns the shift moves
    # samples to class 0, and so changes accuracy, which calibrated_metrics reports.
    shift = [2.0, 0.0, 0.0, 0.0]
    z, y, _ = synthetic(17, 2000, 4, shift=shift)
    z_test, y_test, _ = synthetic(18, 2000, 4, shift=shift)
    calibrator = CALIBRATORS[name](**QUICK.get(name, {})).fit(t(z), t(y))
    assert not calibrator.keeps_argmax
    pred = probs_of(calibrator, z_test).argmax(1)
    changed = np.mean(pred != z_test.argmax(1))
    assert changed > 0.05
    assert np.mean(pred[pred != z_test.argmax(1)] == 0) > 0.9  # moved towards the favoured class
    acc = calibrated_metrics({name: calibrator.log_probs(t(z_test))}, t(y_test), metrics=("acc",))[f"acc_{name}"]
    assert acc == pytest.approx(np.mean(pred == y_test), abs=1e-12)
    assert acc > np.mean(z_test.argmax(1) == y_test)


@pytest.mark.parametrize("name, tolerance", [
    ("temperature", 0.01), ("vector", 0.01), ("matrix", 0.015), ("dirichlet", 0.015), ("histogram", 0.03),
    ("isotonic", 0.03),
])
def test_calibrated_model_is_left_nearly_unchanged(name, tolerance):
    # Labels drawn from softmax(logits): the identity map is the calibrated one. On fresh samples each fitted map
    # stays close to it, in mean absolute difference of probabilities; the tolerances are well below the 0.08 by
    # which doubling the logits moves them. Histogram binning's bins 1/15 wide cost the most.
    z, y, _ = synthetic(19, 4000, 4)
    z_test, _, truth = synthetic(20, 2000, 4)
    assert np.abs(softmax(2 * z_test, axis=1) - truth).mean() > 0.08
    calibrator = CALIBRATORS[name]().fit(t(z), t(y))
    assert np.abs(probs_of(calibrator, z_test) - truth).mean() < tolerance
    if name == "temperature":
        assert calibrator.temperature == pytest.approx(1.0, abs=0.05)
    if name == "vector":
        np.testing.assert_allclose(calibrator.weight.numpy(), 1.0, atol=0.1)


def test_floor_keeps_the_nll_finite():
    # Histogram binning, two bins, two classes: class 1 never occurs where its probability is below 1/2, so a
    # sample there gets p_1 = 0, floored to 1e-7: the row is (1, 1e-7) / (1 + 1e-7), NLL ln(1e7 + 1) nats.
    z = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
    binner = HistogramBinner(n_bins=2).fit(z, torch.tensor([0, 0, 0, 0, 1, 1]))
    assert binner.bin_values[1, 0] == 0.0
    out = calibrated_metrics({"histogram": binner.log_probs(z[:1])}, torch.tensor([1]), metrics=("nll",))
    assert out["nll_histogram"] == pytest.approx(math.log(1e7 + 1), rel=1e-6)
    lp = binner.log_probs(z[:1]).double()
    assert lp.exp()[0, 1].item() == pytest.approx(1e-7 / (1 + 1e-7), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# one-logit models


@pytest.mark.parametrize("name", NAMES)
def test_one_logit_equals_two_columns_zero_z(name):
    rng = np.random.default_rng(21)
    z = 2.5 * rng.normal(size=(400, 1))
    y = (rng.random(400) < expit(z[:, 0] / 2)).astype(np.int64)
    one = CALIBRATORS[name](**QUICK.get(name, {})).fit(t(z), t(y))
    two = CALIBRATORS[name](**QUICK.get(name, {})).fit(t(np.hstack([np.zeros_like(z), z])), t(y))
    z_test = t(2.5 * rng.normal(size=(50, 1)))
    out = one.log_probs(z_test)
    assert out.shape == (50, 2)
    torch.testing.assert_close(out, two.log_probs(torch.cat([torch.zeros_like(z_test), z_test], 1)))
    torch.testing.assert_close(out, one.log_probs(torch.cat([torch.zeros_like(z_test), z_test], 1)))


def test_one_logit_temperature_closed_form():
    # Four samples with the single logit 3 and labels 1, 1, 1, 0: sigmoid(3 / T) = 3/4, T = 3 / ln 3.
    scaler = TemperatureScaler().fit(torch.full((4, 1), 3.0), torch.tensor([1, 1, 1, 0]))
    assert scaler.temperature == pytest.approx(3 / math.log(3), rel=1e-5)
    assert scaler(torch.full((1, 1), 3.0)).shape == (1, 1)
    assert scaler.log_probs(torch.full((1, 1), 3.0)).exp()[0].tolist() == pytest.approx([0.25, 0.75], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# fit_calibrators: skips with reasons, unknown names


def test_too_small_split_skips_with_reasons():
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.5]])
    y = torch.tensor([0, 1, 2, 1, 1])
    fitted, skipped = fit_calibrators(NAMES, z, y, n_classes=3)
    assert list(fitted) == ["temperature", "isotonic"]  # 1 parameter; every class once (3 samples)
    assert list(skipped) == ["vector", "matrix", "dirichlet", "histogram"]
    assert skipped["vector"] == ("5 validation samples, fewer than the 6 that vector scaling needs "
                                 "(its parameters: 2 per class, C = 3)")
    assert "fewer than the 6 that matrix scaling needs" in skipped["matrix"]
    assert "fewer than the 6 that Dirichlet calibration needs" in skipped["dirichlet"]
    assert "fewer than the 45 that histogram binning needs" in skipped["histogram"]  # 3 classes x 15 bins
    assert all("\n" not in reason for reason in skipped.values())
    assert fitted["temperature"].temperature > 0
    # the options reach the constructors: 1 bin needs 3 samples
    fitted, skipped = fit_calibrators(["histogram"], z, y, 3, options={"histogram": {"n_bins": 1}})
    assert list(fitted) == ["histogram"] and not skipped


def test_absent_class_skips_all_but_temperature():
    z, y, _ = synthetic(22, 300, 3)
    keep = y != 2
    fitted, skipped = fit_calibrators(NAMES, t(z[keep]), t(y[keep]), n_classes=3)
    assert list(fitted) == ["temperature"]
    assert set(skipped) == set(NAMES[1:])
    assert skipped["histogram"] == ("class 2 is absent from the validation split "
                                    "(histogram binning fits every class one-vs-rest)")
    assert all("class 2 is absent" in reason for reason in skipped.values())
    with pytest.raises(UnfittableSplitError, match="vector scaling: class 2 is absent"):
        VectorScaler().fit(t(z[keep]), t(y[keep]))


def test_empty_split_skips_everything():
    fitted, skipped = fit_calibrators(NAMES, torch.empty(0, 3), torch.empty(0, dtype=torch.int64), 3)
    assert fitted == {} and skipped == dict.fromkeys(NAMES, "the validation split is empty")


def test_unknown_name_and_bad_inputs_raise():
    z, y, _ = synthetic(23, 100, 3)
    with pytest.raises(ValueError, match=r"\['temperature', 'vector', 'matrix', 'dirichlet', 'histogram', "
                                         r"'isotonic'\], but got 'platt'"):
        fit_calibrators(["vector", "platt"], t(z), t(y), 3)
    with pytest.raises(ValueError, match="n_classes=4 columns"):
        fit_calibrators(["vector"], t(z), t(y), 4)
    with pytest.raises(ValueError, match="`n_classes`"):
        fit_calibrators(["vector"], t(z), t(y), 1)
    with pytest.raises(ValueError, match="`options`"):
        fit_calibrators(["vector"], t(z), t(y), 3, options={"histogram": {}})
    with pytest.raises(ValueError, match=r"`target` values in \[0, 3\)"):
        fit_calibrators(["vector"], t(z), t(np.where(y == 0, 5, y)), 3)


def test_repeated_names_fit_once_in_order():
    z, y, _ = synthetic(24, 200, 3)
    fitted, skipped = fit_calibrators(["isotonic", "temperature", "isotonic"], t(z), t(y), 3)
    assert list(fitted) == ["isotonic", "temperature"] and skipped == {}


# ---------------------------------------------------------------------------------------------------------
# metrics of the calibrated test logits


def test_calibrated_metrics_match_numpy_and_the_ts_tags():
    from ceexp.callbacks import temperature_fits

    z, y, _ = synthetic(25, 600, 4, sharpen=2.5)
    z_test, y_test, _ = synthetic(26, 600, 4, sharpen=2.5)
    fitted, _ = fit_calibrators(["temperature", "vector", "isotonic"], t(z), t(y), 4)
    log_probs = calibrated_log_probs(fitted, t(z_test).float())
    assert set(log_probs) == {"temperature", "vector", "isotonic"}
    out = calibrated_metrics(log_probs, t(y_test), n_bins=15)
    assert set(out) == {f"{m}_{k}" for m in cal.CALIBRATED_METRICS for k in log_probs}
    for method, lp in log_probs.items():
        lp64 = lp.double().numpy()
        p = softmax(lp64, axis=1)
        assert out[f"acc_{method}"] == pytest.approx(np.mean(p.argmax(1) == y_test), abs=1e-12)
        nll = -log_softmax(lp64, axis=1)[np.arange(600), y_test].mean()
        assert out[f"nll_{method}"] == pytest.approx(nll, rel=1e-12)
        assert out[f"nll_bits_{method}"] == pytest.approx(nll / math.log(2), rel=1e-12)
        brier = np.mean(np.sum((p - np.eye(4)[y_test]) ** 2, axis=1))
        assert out[f"brier_{method}"] == pytest.approx(brier, rel=1e-9)
        assert out[f"confidence_{method}"] == pytest.approx(p.max(1).mean(), rel=1e-9)
    # temperature: the same values as the pipeline's existing _ts tags (float32 log-probs: to 1e-6)
    ts = temperature_fits({"nll": fitted["temperature"].temperature}, t(z_test).float(), t(y_test), n_bins=15)
    assert out["ece_temperature"] == pytest.approx(ts["test/ece_ts_nll"], abs=1e-6)
    assert out["nll_temperature"] == pytest.approx(ts["test/nll_ts_nll"], abs=1e-6)
    with pytest.raises(ValueError, match="`metrics`"):
        calibrated_metrics(log_probs, t(y_test), metrics=("accuracy",))


# ---------------------------------------------------------------------------------------------------------
# real data


@pytest.mark.slow  # every calibrator fitted on real digits logits, ~9 s (make test-slow)
def test_digits_logistic_regression_ece_falls_on_held_out_data():
    # A weakly regularised logistic regression on 40% of sklearn's digits is over-confident on the rest (test NLL
    # 0.45 nats at 96% accuracy). Every calibrator, fitted on half of the rest, lowers the ECE and the NLL of the
    # other half.
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x / 16.0, y, train_size=0.4, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=0.5, random_state=0,
                                                    stratify=y_rest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=1e4, max_iter=10000).fit(x_train, y_train)
    z_val, z_test = t(model.decision_function(x_val)), t(model.decision_function(x_test))
    fitted, skipped = fit_calibrators(NAMES, z_val, t(y_val), n_classes=10)
    assert skipped == {}
    log_probs = {"none": torch.log_softmax(z_test, dim=1), **calibrated_log_probs(fitted, z_test)}
    out = calibrated_metrics(log_probs, t(y_test), metrics=("acc", "nll", "ece"))
    assert out["nll_none"] > 0.4 and out["acc_none"] > 0.95
    for name in NAMES:
        assert out[f"ece_{name}"] < out["ece_none"], name
        assert out[f"nll_{name}"] < out["nll_none"], name
    assert out["acc_temperature"] == out["acc_none"]


# ---------------------------------------------------------------------------------------------------------
# exact messages, attributes, edge cases (issue #14)

KNOWN = "['temperature', 'vector', 'matrix', 'dirichlet', 'histogram', 'isotonic']"


def test_attributes_defaults_and_reprs():
    # before fit: documented None / empty attributes and default arguments
    vector, matrix, binner, isotonic = VectorScaler(), MatrixScaler(), HistogramBinner(), IsotonicCalibrator()
    assert vector.weight is None and vector.bias is None and vector.max_iter == 500
    assert (matrix.weight, matrix.bias, matrix.fitted_lambda, matrix.fitted_mu, matrix.cv_nll) == (
        None, None, None, None, {})
    assert (matrix.max_iter, matrix.cv_max_iter, matrix.n_folds, matrix.grid) == (500, 100, 5, cal.ODIR_GRID)
    assert binner.bin_values is None and binner.bin_counts is None and binner.n_bins == 15
    assert isotonic.regressors == []
    assert repr(matrix) == "MatrixScaler(reg_lambda=None, reg_mu=None, n_folds=5)"
    assert repr(DirichletCalibrator(reg_mu=0.5, n_folds=3)) == "DirichletCalibrator(reg_lambda=None, reg_mu=0.5, n_folds=3)"
    assert repr(isotonic) == "IsotonicCalibrator()"
    # after fit: float64 parameters, the fitted strengths in the repr
    z, y, _ = synthetic(27, 60, 3, sharpen=2.0)
    vector.fit(t(z).float(), t(y))
    assert vector.weight.dtype == vector.bias.dtype == torch.float64
    fitted = MatrixScaler(reg_lambda=0.25).fit(t(z).float(), t(y))
    assert fitted.weight.dtype == fitted.bias.dtype == torch.float64
    assert fitted.weight.shape == (3, 3) and fitted.bias.shape == (3,)
    assert repr(fitted) == "MatrixScaler(reg_lambda=0.25, reg_mu=None, n_folds=5, fitted_lambda=0.25, fitted_mu=0.25)"
    assert repr(isotonic.fit(t(z), t(y))) == "IsotonicCalibrator()" and len(isotonic.regressors) == 3


@pytest.mark.parametrize("make, message", [
    (lambda: MatrixScaler(reg_lambda="0.1"), ("Expected argument `reg_lambda` to be None or a finite number >= 0, "
                                            "but got '0.1'")),
    (lambda: DirichletCalibrator(reg_mu=True), ("Expected argument `reg_mu` to be None or a finite number >= 0, "
                                               "but got True")),
    (lambda: MatrixScaler(grid=(0.1, -1.0)), "Expected argument `grid` to be a finite number > 0, but got -1.0"),
    (lambda: MatrixScaler(n_folds=2.5), "Expected argument `n_folds` to be an integer >= 2, but got 2.5"),
    (lambda: MatrixScaler(max_iter=0), "Expected argument `max_iter` to be a positive integer, but got 0"),
    (lambda: MatrixScaler(cv_max_iter=0), "Expected argument `cv_max_iter` to be a positive integer, but got 0"),
])
def test_constructor_messages_are_exact(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_calibrator_input_messages_are_exact():
    z, y, _ = synthetic(28, 60, 3)
    binner = HistogramBinner(n_bins=2)
    with pytest.raises(RuntimeError) as info:
        binner.log_probs(t(z))
    assert str(info.value) == "HistogramBinner: call `fit` on validation logits before calibrating"
    with pytest.raises(ValueError) as info:
        binner.fit(t(z).long(), t(y))
    assert str(info.value) == "Expected `logits` to be a floating tensor, but got dtype torch.int64"
    binner.fit(t(z), t(y))
    for bad, message in (
        (torch.zeros(2, 4), ("Expected `logits` with C=3 columns (or 1 when C=2), as HistogramBinner was fitted on, "
                            "but got shape (2, 4)")),
        (torch.tensor([[0.0, math.inf, 1.0]]), "Expected `logits` to be finite, but it contains NaN or inf"),
    ):
        with pytest.raises(ValueError) as info:
            binner.log_probs(bad)
        assert str(info.value) == message


BASE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.3, 0.0], [0.0, 0.5]], dtype=torch.float64)
BASE_Y = torch.tensor([0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("make, scale", [
    (lambda: VectorScaler(), 1e100),
    (lambda: VectorScaler(max_iter=1), 1.7e308),  # the NLL ends infinite while the parameters are still finite
    (lambda: MatrixScaler(reg_lambda=0.0), 1e100),  # the final fit
    (lambda: MatrixScaler(grid=(0.1,), n_folds=2), 1.7e308),  # a cross-validation fit
])
def test_a_diverging_fit_is_refused_and_skipped(make, scale, caplog):
    # logits of 1e100 and more overflow the scores: the fit is refused, and fit_calibrators skips it
    calibrator = make()
    with pytest.raises(UnfittableSplitError) as info:
        calibrator.fit(BASE * scale, BASE_Y)
    assert str(info.value) == f"{calibrator.title}: the fit diverged (non-finite parameters or NLL)"
    name = "vector" if isinstance(calibrator, VectorScaler) else "matrix"
    options = {name: {k: getattr(calibrator, k) for k in ("max_iter",)}}
    if name == "matrix":
        options[name].update(reg_lambda=calibrator.reg_lambda, grid=calibrator.grid, n_folds=calibrator.n_folds)
    with caplog.at_level("WARNING", logger="ceexp.calibration"):
        fitted, skipped = fit_calibrators([name], BASE * scale, BASE_Y, 2, options=options)
    assert fitted == {} and skipped == {name: "the fit diverged (non-finite parameters or NLL)"}
    assert caplog.messages == [f"calibration={name} skipped: the fit diverged (non-finite parameters or NLL)"]


@pytest.mark.parametrize("methods, logits, labels, n_classes, message", [
    ("temperature", BASE, BASE_Y, 2, (f"Expected argument `methods` to be a list of names in {KNOWN}, "
                                     "but got 'temperature'")),
    ({"vector"}, BASE, BASE_Y, 2, (f"Expected argument `methods` to be a list of names in {KNOWN}, "
                                  "but got {'vector'}")),
    (["vector", "platt"], BASE, BASE_Y, 2, f"Expected argument `methods` to be one of {KNOWN}, but got 'platt'"),
    (["vector"], BASE, BASE_Y, 2.0, "Expected argument `n_classes` to be an integer >= 2, but got 2.0"),
    (["vector"], BASE, BASE_Y, True, "Expected argument `n_classes` to be an integer >= 2, but got True"),
    (["vector"], BASE[:, 0], BASE_Y, 2, "Expected `val_logits` to have shape (N, C), but got (6,)"),
    (["vector"], BASE.tolist(), BASE_Y, 2, "Expected `val_logits` to have shape (N, C), but got list"),
    (["vector"], BASE[:, :1], BASE_Y, 3, ("Expected `val_logits` with n_classes=3 columns (or 1 when n_classes=2), "
                                         "but got shape (6, 1)")),
    (["vector"], torch.zeros(6, 3), BASE_Y, 2, ("Expected `val_logits` with n_classes=2 columns (or 1 when "
                                               "n_classes=2), but got shape (6, 3)")),
    (["vector"], BASE.long(), BASE_Y, 2, "Expected `val_logits` to be a floating tensor, but got dtype torch.int64"),
    (["vector"], BASE, torch.empty(0, dtype=torch.int64), 2,
     "Expected `target` to have N=6 entries to match `val_logits` of shape (6, 2), but got 0"),
    (["vector"], torch.empty(0, 2), BASE_Y[:1], 2,
     "Expected `target` to have N=0 entries to match `val_logits` of shape (0, 2), but got 1"),
])
def test_fit_calibrators_messages_are_exact(methods, logits, labels, n_classes, message):
    with pytest.raises(ValueError) as info:
        fit_calibrators(methods, logits, labels, n_classes)
    assert str(info.value) == message


def test_fit_calibrators_two_classes_one_or_two_columns(caplog):
    # n_classes = 2 with (N, 2) logits and with one-logit (N, 1) ones
    two = torch.cat([BASE, BASE.flip(0)])
    labels = torch.cat([BASE_Y, BASE_Y])
    fitted, skipped = fit_calibrators(["vector", "histogram"], two, labels, 2)
    assert list(fitted) == ["vector"]
    assert skipped == {"histogram": "12 validation samples, fewer than the 30 that histogram binning needs "
                                    "(its parameters: one per class and bin, C = 2)"}
    fitted, skipped = fit_calibrators(["temperature"], two[:, 1:] - two[:, :1], labels, 2)
    assert list(fitted) == ["temperature"] and skipped == {}
    assert fitted["temperature"].log_probs(two[:2, 1:] - two[:2, :1]).shape == (2, 2)
    with caplog.at_level("WARNING", logger="ceexp.calibration"):
        fit_calibrators(["isotonic"], torch.empty(0, 1), torch.empty(0, dtype=torch.int64), 2)
    assert caplog.messages[-1] == "calibration=isotonic skipped: the validation split is empty"


def test_histogram_bins_by_hand():
    # rows (0, 0): p = (1/2, 1/2), exactly on the edge 1/2, so in the first bin (0, 1/2] of both classes; rows
    # (1, 0): p = (0.73, 0.27). Class 1's bin (1/2, 1] stays empty (midpoint 3/4).
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    binner = HistogramBinner(n_bins=2).fit(z, torch.tensor([0, 0, 0, 1]))
    assert binner.bin_counts.tolist() == [[2, 2], [4, 0]]
    assert binner.bin_values.tolist() == [[1.0, 0.5], [0.25, 0.75]]
    assert binner.bin_values.dtype == torch.float64
    # (0, 0): g = (1, 1/4) -> (4/5, 1/5); (1, 0): g = (1/2, 1/4) -> (2/3, 1/3)
    np.testing.assert_allclose(binner.log_probs(z[1:3]).double().exp().numpy(), [[0.8, 0.2], [2 / 3, 1 / 3]],
                               rtol=1e-6)


def test_cross_validation_walks_the_grid_warm_started():
    # each fold fits the grid in order, each fit starting where the previous one stopped: with 2 L-BFGS iterations
    # per fit the second of two nearly equal lambdas gets further than the same lambda fitted alone from W = I
    z, y, _ = synthetic(13, 150, 3, sharpen=3.0)
    walk = MatrixScaler(grid=(0.01, 0.01001), cv_max_iter=2).fit(t(z), t(y)).cv_nll
    alone = MatrixScaler(grid=(0.01001,), cv_max_iter=2).fit(t(z), t(y)).cv_nll
    first = MatrixScaler(grid=(0.01,), cv_max_iter=2).fit(t(z), t(y)).cv_nll
    assert walk[0.01] == first[0.01]
    assert walk[0.01001] < alone[0.01001] - 0.05


def test_two_fold_cross_validation_matches_scipy():
    z, y, _ = synthetic(29, 80, 3, sharpen=3.0)
    grid = (1e-2, 1.0)
    expected = dict.fromkeys(grid, 0.0)
    for train, held in KFold(n_splits=2, shuffle=True, random_state=0).split(z):
        for lam in grid:
            w, b, _ = np_fit(z[train], y[train], "full", lam, lam)
            expected[lam] -= log_softmax(z[held] @ w.T + b, axis=1)[np.arange(len(held)), y[held]].sum() / len(y)
    ours = MatrixScaler(grid=grid, n_folds=2, cv_max_iter=2000).fit(t(z), t(y))
    np.testing.assert_allclose(list(ours.cv_nll.values()), list(expected.values()), rtol=1e-5)
    # a value repeated in the grid is tried once: its held-out NLL is not counted twice
    repeated = MatrixScaler(grid=(1e-2, 1.0, 1e-2), n_folds=2, cv_max_iter=2000).fit(t(z), t(y))
    assert repeated.grid == grid and repeated.fitted_lambda == ours.fitted_lambda
    np.testing.assert_allclose(list(repeated.cv_nll.values()), list(expected.values()), rtol=1e-5)


def test_very_confident_logits_match_scipy():
    # logits x40 (over-confident): the line search keeps L-BFGS on track
    z, y, _ = synthetic(8, 300, 3, sharpen=40.0, shift=[1.0, 0.0, -0.5])
    ours = MatrixScaler(reg_lambda=0.0, reg_mu=0.0).fit(t(z), t(y))
    w, b, _ = np_fit(z, y, "full")
    np.testing.assert_allclose(probs_of(ours, z), softmax(z @ w.T + b, axis=1), atol=1e-4)


def test_floor_probabilities_by_hand():
    rows = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    # (3, 1, 0) / 4 floored at 0.1: (0.75, 0.25, 0.1) / 1.1; a row of zeros: uniform
    torch.testing.assert_close(cal.floor_probabilities(rows, floor=0.1), torch.tensor(
        [[0.75 / 1.1, 0.25 / 1.1, 0.1 / 1.1], [1 / 3, 1 / 3, 1 / 3], [0.5 / 1.1, 0.5 / 1.1, 0.1 / 1.1]],
        dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(cal.floor_probabilities(rows, floor=0.0), torch.tensor(
        [[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], dtype=torch.float64), rtol=1e-12, atol=0)


def np_top_label_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, correct = p.max(1), p.argmax(1) == y
    ece = 0.0
    for lo, hi in zip(np.arange(n_bins) / n_bins, np.arange(1, n_bins + 1) / n_bins):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += abs(conf[in_bin].mean() - correct[in_bin].mean()) * in_bin.mean()
    return ece


def test_calibrated_metrics_use_n_bins_default_15():
    z, y, _ = synthetic(30, 200, 3, sharpen=2.0)
    lp = torch.log_softmax(t(z), dim=1)
    p = softmax(z, axis=1)
    eces = {n: np_top_label_ece(p, y, n) for n in (5, 15, 16)}
    assert len(set(eces.values())) == 3
    assert calibrated_metrics({"m": lp}, t(y), metrics=("ece",))["ece_m"] == pytest.approx(eces[15], rel=1e-9)
    assert calibrated_metrics({"m": lp}, t(y), n_bins=5, metrics=("ece",))["ece_m"] == pytest.approx(eces[5], rel=1e-9)
