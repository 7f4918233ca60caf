"""Reduced precision: float16 and bfloat16 inputs to every loss and metric, against float64 numpy references.

The references read the 16-bit values themselves (exact in float64), so what is left to differ is arithmetic.
The losses and metrics compute in float32 or wider and return float32 for 16-bit inputs: a result computed, or
only rounded, in 16 bits misses these tolerances by orders of magnitude (a bfloat16 number keeps ~3 digits), a
float16 sum of 20,000 losses of 5 nats is inf, and a bfloat16 softmax has rows that sum to 1 +- 0.003 only.
Other references: relplot (smECE) and uncertainty-calibration (``calibration``, the debiased ECE), by their
authors, as in tests/test_metrics.py; for gradients, float64 autograd through the same losses (whose float64
gradients tests/test_losses.py checks against finite differences of numpy references).
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import calibration
import numpy as np
import pytest
import relplot
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ceexp.calibration import TemperatureScaler
from ceexp.checks import check_probabilities
from ceexp.losses import BrierLoss, FocalLoss, SampleDependentFocalLoss, focal_loss
from ceexp.metrics import (
    METRIC_FUNCTIONS,
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    ClasswiseCalibrationError,
    DebiasedCalibrationError,
    SmoothCalibrationError,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    smooth_ece,
)

HALF = [torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # half the gap between 1 and the next number
LOSS_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "loss"


def autocast_bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def half_logits(n: int, c: int, dtype: torch.dtype, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=gen) * scale).to(dtype)


def targets(n: int, c: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# float64 numpy references: losses


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_reduce(per_sample: np.ndarray, reduction: str, denominator: float):
    return {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.sum() / denominator}[reduction]


def np_cross_entropy(z, y, reduction="mean", weight=None, label_smoothing=0.0):
    """torch's convention: (1 - eps) w_y (-log p_y) + eps / C sum_c w_c (-log p_c); the mean divides by sum w_y."""
    log_p = np_log_softmax(z)
    w = np.ones(z.shape[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    nll = -w[y] * log_p[np.arange(len(y)), y]
    smooth = -(log_p * w).sum(axis=1)
    per_sample = (1 - label_smoothing) * nll + label_smoothing / z.shape[1] * smooth
    return np_reduce(per_sample, reduction, w[y].sum())


def np_focal(z, y, gamma, reduction="mean", alpha=None, ignore_index=-100):
    """-alpha_y (1 - p_y)^gamma log p_y; ``gamma`` a number or a per-sample array; ignored samples give 0."""
    keep = y != ignore_index
    y_safe = np.where(keep, y, 0)
    log_p = np_log_softmax(z)[np.arange(len(y)), y_safe]
    w = np.ones(len(y)) if alpha is None else np.asarray(alpha, dtype=np.float64)[y_safe]
    per_sample = np.where(keep, -w * (1 - np.exp(log_p)) ** gamma * log_p, 0.0)
    return np_reduce(per_sample, reduction, keep.sum())


def np_flsd(z, y, reduction="mean"):
    p_y = np.exp(np_log_softmax(z)[np.arange(len(y)), y])
    return np_focal(z, y, np.where(p_y < 0.2, 5.0, 3.0), reduction)


def np_brier_loss(z, y, reduction="mean"):
    p = np.exp(np_log_softmax(z))
    return np_reduce(((p - np.eye(z.shape[1])[y]) ** 2).sum(axis=1), reduction, len(y))


ALPHA = [0.3, 0.5, 1.7, 2.0]  # repeated to C entries; 0.3 and 1.7 are not 16-bit numbers

# name -> (the loss as configured, its float64 numpy reference); the torch ones are configs/loss/*.yaml
LOSSES = {
    "ce": lambda c: (instantiate(OmegaConf.load(LOSS_CONFIGS / "ce.yaml")), np_cross_entropy),
    "smoothed": lambda c: (instantiate(OmegaConf.load(LOSS_CONFIGS / "smoothed.yaml")),
                           lambda z, y, r="mean": np_cross_entropy(z, y, r, label_smoothing=0.1)),
    "weighted_ce": lambda c: (
        instantiate(OmegaConf.load(LOSS_CONFIGS / "weighted_ce.yaml"), weight=torch.tensor((ALPHA * c)[:c])),
        lambda z, y, r="mean": np_cross_entropy(z, y, r, weight=(ALPHA * c)[:c])),
    "focal": lambda c: (instantiate(OmegaConf.load(LOSS_CONFIGS / "focal.yaml")),
                        lambda z, y, r="mean": np_focal(z, y, 2.0, r)),
    "focal_alpha_gamma0.5": lambda c: (FocalLoss(gamma=0.5, alpha=(ALPHA * c)[:c]),
                                       lambda z, y, r="mean": np_focal(z, y, 0.5, r, alpha=(ALPHA * c)[:c])),
    "focal_sd53": lambda c: (instantiate(OmegaConf.load(LOSS_CONFIGS / "focal_sd53.yaml")), np_flsd),
    "mse": lambda c: (instantiate(OmegaConf.load(LOSS_CONFIGS / "mse.yaml")), np_brier_loss),
}
TORCH_LOSSES = ("ce", "smoothed", "weighted_ce")  # computed in float32 by torch under autocast only


@functools.lru_cache(maxsize=None)
def _loss_prototype(name: str, c: int):
    return LOSSES[name](c)  # hydra's instantiate costs ~0.2 s a call: once per loss and class count


def make_loss(name: str, c: int, reduction: str = "mean"):
    """A fresh loss object (tests change its reduction and dtype) and its reference, for ``c`` classes."""
    prototype, reference = _loss_prototype(name, c)
    loss_fn = copy.deepcopy(prototype)
    loss_fn.reduction = reduction
    return loss_fn, (lambda z, y: reference(z, y, reduction))


def test_the_loss_configs_are_the_expected_objects():
    assert isinstance(make_loss("ce", 3)[0], torch.nn.CrossEntropyLoss)
    assert make_loss("smoothed", 3)[0].label_smoothing == 0.1
    assert isinstance(make_loss("focal_sd53", 3)[0], SampleDependentFocalLoss)
    assert isinstance(make_loss("mse", 3)[0], BrierLoss)


# ---------------------------------------------------------------------------------------------------------
# losses


@pytest.mark.parametrize("name", [n for n in LOSSES if n not in TORCH_LOSSES])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n, c", [(1, 2), (7, 3), (256, 100), (4096, 10)])
def test_ceexp_losses_on_16_bit_logits_compute_in_float32(name, dtype, n, c):
    logits, target = half_logits(n, c, dtype, seed=n), targets(n, c)
    for reduction in ("none", "mean", "sum"):
        loss_fn, reference = make_loss(name, c, reduction)
        out = loss_fn(logits, target)
        assert out.dtype == torch.float32 and out.shape == ((n,) if reduction == "none" else ()), reduction
        want = reference(logits.double().numpy(), target.numpy())
        np.testing.assert_allclose(out.numpy(), want, rtol=2e-5, atol=1e-6, err_msg=reduction)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_under_bf16_autocast_computes_in_float32(name):
    # Lightning's precision="bf16-mixed" (trainer=gpu): the model's logits come out of autocast in bfloat16
    logits, target = half_logits(256, 100, torch.bfloat16, seed=2), targets(256, 100)
    for reduction in ("none", "mean", "sum"):
        loss_fn, reference = make_loss(name, 100, reduction)
        with autocast_bf16():
            out = loss_fn(logits, target)
        assert out.dtype == torch.float32, reduction
        want = reference(logits.double().numpy(), target.numpy())
        np.testing.assert_allclose(out.numpy(), want, rtol=2e-5, atol=1e-6, err_msg=reduction)


@pytest.mark.parametrize("dtype", HALF)
def test_sum_of_20000_losses_of_5_nats_is_finite_and_exact(dtype):
    # 20,000 samples of 150 classes at about log(150) = 5 nats: the sum, ~1e5, is past float16's 65,504
    n, c = 20000, 150
    logits, target = half_logits(n, c, dtype, scale=0.5, seed=3), targets(n, c)
    for name in [n for n in LOSSES if n not in TORCH_LOSSES]:
        per_sample = make_loss(name, c, "none")[1](logits.double().numpy(), target.numpy())
        if name != "mse":  # a Brier loss is below 1 per sample
            assert per_sample.mean() > 3.5 and per_sample.sum() > 65504
        for reduction, want in (("mean", per_sample.mean()), ("sum", per_sample.sum())):
            out = make_loss(name, c, reduction)[0](logits, target)
            assert out.dtype == torch.float32 and math.isfinite(out.item()), (name, reduction)
            assert out.item() == pytest.approx(want, rel=2e-5), (name, reduction)


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_focal_loss_with_ignored_samples_and_alpha(dtype):
    logits, target = half_logits(300, 5, dtype, seed=4), targets(300, 5)
    target[::4] = -100
    alpha = [0.3, 0.5, 1.7, 2.0, 0.1]
    for reduction in ("none", "mean", "sum"):
        want = np_focal(logits.double().numpy(), target.numpy(), 2.0, reduction, alpha=alpha)
        for out in (FocalLoss(gamma=2.0, alpha=alpha, reduction=reduction)(logits, target),
                    focal_loss(logits, target, gamma=2.0, alpha=alpha, reduction=reduction)):
            assert out.dtype == torch.float32
            np.testing.assert_allclose(out.numpy(), want, rtol=2e-5, atol=1e-6, err_msg=reduction)


def test_a_float64_alpha_does_not_widen_16_bit_logits():
    # alpha is cast to the working dtype (float32), whatever its own dtype
    logits, target = half_logits(8, 2, torch.bfloat16), targets(8, 2)
    out = FocalLoss(alpha=torch.tensor([0.3, 0.7], dtype=torch.float64))(logits, target)
    assert out.dtype == torch.float32


# torch's CrossEntropyLoss computes in float32 only under autocast (in the logits' dtype outside it)
GRADIENT_CASES = [(name, dtype, under_autocast) for name in LOSSES
                  for dtype, under_autocast in ((torch.float16, False), (torch.bfloat16, False), (torch.bfloat16, True))
                  if under_autocast or name not in TORCH_LOSSES]


@pytest.mark.parametrize("name, dtype, under_autocast", GRADIENT_CASES,
                         ids=[f"{n}-{str(d)[6:]}{'-autocast' if a else ''}" for n, d, a in GRADIENT_CASES])
def test_gradient_reaches_16_bit_logits_rounded_once_from_float32(name, dtype, under_autocast):
    base = half_logits(256, 100, dtype, seed=5)
    target = targets(256, 100)
    loss_fn, _ = make_loss(name, 100, "mean")
    logits = base.clone().requires_grad_()
    if under_autocast:
        with autocast_bf16():
            out = loss_fn(logits, target)
    else:
        out = loss_fn(logits, target)
    out.backward()
    assert logits.grad.dtype == dtype
    # the float32 gradient of the same (exact) logits, rounded once to the 16-bit dtype
    wide = base.float().requires_grad_()
    loss_fn(wide, target).backward()
    assert torch.equal(logits.grad, wide.grad.to(dtype))
    # and the float64 gradient, to the 16-bit dtype's rounding
    exact = base.double().requires_grad_()
    loss_fn.double()(exact, target).backward()
    g, g64 = logits.grad.double().numpy(), exact.grad.numpy()
    assert np.abs(g64).max() > 1e-4
    np.testing.assert_allclose(g, g64, rtol=UNIT_ROUNDOFF[dtype] * 1.01, atol=6e-8)


@pytest.mark.parametrize("name", list(LOSSES))
def test_autocast_linear_layer_gets_the_float64_gradient(name):
    # the realistic path: float32 weights, a bfloat16 matmul under autocast, the loss in float32
    gen = torch.Generator().manual_seed(6)
    x, weight = torch.randn(64, 32, generator=gen), torch.randn(32, 10, generator=gen) * 0.5
    target = targets(64, 10)
    loss_fn, _ = make_loss(name, 10, "mean")
    w = weight.clone().requires_grad_()
    with autocast_bf16():
        logits = x @ w
        out = loss_fn(logits, target)
    assert logits.dtype == torch.bfloat16 and out.dtype == torch.float32
    out.backward()
    assert w.grad.dtype == torch.float32
    # float64 on the same bfloat16-rounded inputs; the rest of the gap is bfloat16 rounding (logits, gradient)
    x64, w64 = x.bfloat16().double(), weight.bfloat16().double().requires_grad_()
    loss_fn.double()(x64 @ w64, target).backward()
    scale = w64.grad.abs().max().item()
    assert (w.grad.double() - w64.grad).abs().max().item() <= 0.03 * scale


# ---------------------------------------------------------------------------------------------------------
# float64 numpy references: metrics of 16-bit probabilities


def np_round(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The nearest float16 / bfloat16 numbers (ties to even), as float64: bfloat16 keeps the top 16 bits of float32."""
    if dtype == torch.float16:
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32).astype(np.float64)


def np_equal_width_bins(values: np.ndarray, n_bins: int, dtype: torch.dtype) -> np.ndarray:
    """Bin b holds (e_b, e_{b+1}] (0 in the first), with the edges b / n_bins rounded to the values' dtype: the
    bin is the number of inner edges strictly below the value."""
    inner = np_round(np.arange(1, n_bins) / n_bins, dtype)
    return (values[:, None] > inner[None, :]).sum(axis=1)


def np_binned_gaps(conf, correct, bins):
    """Per filled bin: (count, |sum correct - sum conf|)."""
    out = []
    for b in np.unique(bins):
        members = bins == b
        out.append((members.sum(), abs(correct[members].sum() - conf[members].sum())))
    return out


def np_ece(p, y, n_bins, dtype, norm="l1"):
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    gaps = np_binned_gaps(conf, correct, np_equal_width_bins(conf, n_bins, dtype))
    if norm == "l1":
        return sum(g for _, g in gaps) / len(y)
    if norm == "l2":
        return math.sqrt(sum(g * g / n_b for n_b, g in gaps) / len(y))
    return max(g / n_b for n_b, g in gaps)


def np_adaece(p, y, n_bins):
    """Equal-mass chunks of the sorted confidences (numpy.array_split sizes); a tie block joins the chunk of its
    first sorted position."""
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    chunk_of_position = np.empty(len(conf), dtype=int)
    for b, positions in enumerate(np.array_split(np.arange(len(conf)), n_bins)):
        chunk_of_position[positions] = b
    bins = chunk_of_position[np.searchsorted(np.sort(conf), conf, side="left")]
    return sum(g for _, g in np_binned_gaps(conf, correct, bins)) / len(y)


def np_classwise(p, y, n_bins, dtype):
    """Mean over classes c of sum_b |sum_{i in B_bc} ([y_i = c] - p_ic)| / N, all (class, bin) cells at once."""
    n, c = p.shape
    cell = np_equal_width_bins(p.ravel(), n_bins, dtype).reshape(n, c) + n_bins * np.arange(c)
    residual = np.eye(c)[y] - p
    gap = np.bincount(cell.ravel(), residual.ravel(), minlength=c * n_bins)
    return np.abs(gap).sum() / n / c


def np_brier(p, y):
    return np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1))


def np_reference(tag, p, y, n_bins, dtype):
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    return {
        "acc": lambda: correct.mean(),
        "confidence": lambda: conf.mean(),
        "ece": lambda: np_ece(p, y, n_bins, dtype),
        "mce": lambda: np_ece(p, y, n_bins, dtype, "max"),
        "rmsce": lambda: np_ece(p, y, n_bins, dtype, "l2"),
        "ece_signed": lambda: conf.mean() - correct.mean(),
        "adaece": lambda: np_adaece(p, y, n_bins),
        "cwece": lambda: np_classwise(p, y, n_bins, dtype),
        "brier": lambda: np_brier(p, y),
        "ece_debiased": lambda: calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins,
                                                                   mode="top-label"),
        "smece": lambda: relplot.smECE(conf, correct.astype(np.float64)),
    }[tag]()


# 16-bit probability sets: (probs, target), probs made the way a model's 16-bit softmax makes them
def softmax_256x100(dtype):
    """The issue's case: a 16-bit softmax of 256 x 100 random logits (standard deviation 5)."""
    return half_logits(256, 100, dtype, scale=5.0, seed=7).softmax(dim=1), targets(256, 100)


def tiny_probabilities(dtype):
    """Logits of standard deviation 12: in float16 half the probabilities underflow to 0 (below 2^-25)."""
    logits = half_logits(300, 10, torch.float32, scale=12.0, seed=8)
    return logits.to(dtype).softmax(dim=1), targets(300, 10)


def many_small_probabilities(dtype):
    """1,000 classes of probability ~0.001: a row summed in 16-bit arithmetic drifts by over 0.01 (below)."""
    return half_logits(64, 1000, dtype, scale=0.5, seed=9).softmax(dim=1), targets(64, 1000)


def few_samples(dtype):
    return half_logits(5, 2, dtype, seed=10).softmax(dim=1), targets(5, 2)


def many_samples(dtype):
    return half_logits(20000, 10, dtype, scale=2.0, seed=11).softmax(dim=1), targets(20000, 10)


PROBABILITY_SETS = [softmax_256x100, tiny_probabilities, many_small_probabilities, few_samples, many_samples]


@pytest.fixture(scope="module", params=[(make, dtype) for make in PROBABILITY_SETS for dtype in HALF],
                ids=[f"{make.__name__}-{str(dtype)[6:]}" for make in PROBABILITY_SETS for dtype in HALF])
def half_probs(request):
    """(probs, target, reference) with ``reference(tag)`` the float64 numpy value for 15 bins."""
    make, dtype = request.param
    probs, target = make(dtype)
    assert probs.dtype == dtype
    p, y = probs.double().numpy(), target.numpy()
    return probs, target, functools.lru_cache(maxsize=None)(lambda tag: np_reference(tag, p, y, 15, dtype))


def test_the_probability_sets_exercise_16_bit_rounding():
    # the bfloat16 softmax rows sum to 1 only within 0.003 (a row summing to 0.998 is 0.9961 in bfloat16) ...
    probs, _ = softmax_256x100(torch.bfloat16)
    error = (probs.double().sum(dim=1) - 1).abs()
    assert 0.002 < error.max().item() < UNIT_ROUNDOFF[torch.bfloat16]
    # ... the float16 softmax underflows where float32 does not ...
    probs, _ = tiny_probabilities(torch.float16)
    wide, _ = tiny_probabilities(torch.float32)
    assert (probs == 0).float().mean() > 0.3 and (wide > 0).all()
    # ... and a row summed in bfloat16 arithmetic, one class after the other, is off by more than 0.01
    probs, _ = many_small_probabilities(torch.bfloat16)
    running = torch.zeros(probs.shape[0], dtype=torch.bfloat16)
    for column in probs.T:
        running = running + column  # rounded to bfloat16 at every step
    assert (running.double() - 1).abs().max() > 0.01
    assert (probs.double().sum(dim=1) - 1).abs().max() < UNIT_ROUNDOFF[torch.bfloat16]
    # the numpy rounding of the bin edges agrees with torch's
    edges = np.arange(1, 15) / 15
    for dtype in HALF:
        assert np.array_equal(np_round(edges, dtype), torch.from_numpy(edges).to(dtype).double().numpy())


def test_metric_functions_of_16_bit_probabilities(half_probs):
    probs, target, reference = half_probs
    for tag, fn in METRIC_FUNCTIONS.items():
        got = fn(probs, target, 15)
        assert got.dtype == torch.float32 and got.shape == (), tag
        assert got.item() == pytest.approx(reference(tag), abs=1e-6), tag
    got = expected_calibration_error(probs, target, 15, norm="l2")
    assert got.dtype == torch.float32 and got.item() == pytest.approx(reference("rmsce"), abs=1e-6)
    # the public functions behind the registry's wrappers
    assert brier_score(probs, target).item() == METRIC_FUNCTIONS["brier"](probs, target, 15).item()
    assert smooth_ece(probs, target).item() == METRIC_FUNCTIONS["smece"](probs, target, 15).item()


def test_reliability_bins_of_16_bit_probabilities(half_probs):
    probs, target, _ = half_probs
    p, y = probs.double().numpy(), target.numpy()
    bins = reliability_bins(probs, target, n_bins=15)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    index = np_equal_width_bins(conf, 15, probs.dtype)
    assert bins.count.tolist() == np.bincount(index, minlength=15).tolist()
    for b in np.unique(index):
        assert bins.confidence[b].item() == pytest.approx(conf[index == b].mean(), abs=1e-12)
        assert bins.accuracy[b].item() == pytest.approx(correct[index == b].mean(), abs=1e-12)


def _metric_classes(c):
    return {
        "ece": CalibrationError(n_bins=15),
        "rmsce": CalibrationError(n_bins=15, norm="l2"),
        "mce": CalibrationError(n_bins=15, norm="max"),
        "adaece": AdaptiveCalibrationError(n_bins=15),
        "cwece": ClasswiseCalibrationError(num_classes=c, n_bins=15),
        "brier": BrierScore(),
        "smece": SmoothCalibrationError(),
        "ece_debiased": DebiasedCalibrationError(n_bins=15),
    }


def test_metric_classes_of_16_bit_probabilities(half_probs):
    # validate_args=True (the default): every batch passes the row-sum check
    probs, target, reference = half_probs
    half = len(target) // 2
    for tag, metric in _metric_classes(probs.shape[1]).items():
        metric.update(probs[:half], target[:half])
        metric.update(probs[half:], target[half:])
        got = metric.compute()
        assert got.dtype == torch.float64, tag
        assert got.item() == pytest.approx(reference(tag), abs=1e-9), tag


def test_metrics_under_bf16_autocast_equal_those_outside():
    probs, target = softmax_256x100(torch.bfloat16)
    outside = {tag: fn(probs, target, 15) for tag, fn in METRIC_FUNCTIONS.items()}
    with autocast_bf16():
        inside = {tag: fn(probs, target, 15) for tag, fn in METRIC_FUNCTIONS.items()}
        metric = CalibrationError(n_bins=15)
        metric.update(probs, target)
    for tag in METRIC_FUNCTIONS:
        assert inside[tag].dtype == torch.float32 and inside[tag].item() == outside[tag].item(), tag
    assert metric.compute().item() == pytest.approx(outside["ece"].item(), abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# the row-sum check: tolerant of 16-bit rounding, not of wrong rows


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_softmax_rows_pass_the_check(dtype):
    for make in PROBABILITY_SETS:
        check_probabilities(*make(dtype))


@pytest.mark.parametrize(
    "row_sum, dtype, accepted",
    [
        # bfloat16: the numbers next to 1 are 1 - 2^-8, 1 - 2^-7 and 1 + 2^-7; tolerance 0.001 + 2^-7 = 0.0088
        (1 - 2**-8, torch.bfloat16, True),
        (1 - 2**-7, torch.bfloat16, True),
        (1 + 2**-7, torch.bfloat16, True),
        (1 - 2**-6, torch.bfloat16, False),
        (1 + 2**-5, torch.bfloat16, False),
        (1 + 39 * 2**-12, torch.bfloat16, False),  # 1.0095: 1.0078 if the sum were rounded to bfloat16
        # float16: tolerance 0.001 + 2^-10 = 0.00198
        (1 - 2**-11, torch.float16, True),
        (1 + 2**-10, torch.float16, True),
        (1 - 2**-9, torch.float16, True),
        (1 - 2**-8, torch.float16, False),
        (1 + 2**-8, torch.float16, False),
        (1 + 69 * 2**-15, torch.float16, False),  # 1.0021: 1.00195 if the sum were rounded to float16
        # float32 and float64 keep the tolerance of 0.001
        (1 - 2**-10, torch.float32, True),
        (1 - 2**-9, torch.float32, False),
        (1 + 2**-9, torch.float64, False),
    ],
)
def test_row_sum_tolerance_is_the_dtype_epsilon_plus_atol(row_sum, dtype, accepted):
    # the rows (1/2, 1/2, s - 1) or (1/2, s - 1/2, 0), exact in the dtype, sum to s
    row = [0.5, 0.5, row_sum - 1] if row_sum > 1 else [0.5, row_sum - 0.5, 0.0]
    probs = torch.tensor([row, [0.5, 0.5, 0.0]], dtype=torch.float64).to(dtype)
    assert probs[0].double().sum().item() == row_sum
    target = torch.tensor([0, 1])
    if accepted:
        check_probabilities(probs, target)
    else:
        with pytest.raises(ValueError, match="`probs` to sum to 1"):
            check_probabilities(probs, target)


# ---------------------------------------------------------------------------------------------------------
# NLL and temperature scaling of 16-bit logits


@pytest.mark.parametrize("dtype", HALF)
def test_negative_log_likelihood_of_16_bit_logits(dtype):
    logits, target = half_logits(20000, 150, dtype, scale=0.5, seed=12), targets(20000, 150)
    z, y = logits.double().numpy(), target.numpy()
    for reduction in ("none", "mean", "sum"):
        got = negative_log_likelihood(logits, target, reduction=reduction)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), np_cross_entropy(z, y, reduction), rtol=2e-5, atol=1e-6)
    assert negative_log_likelihood(logits, target, reduction="sum").item() > 65504


@pytest.mark.parametrize("dtype", HALF)
def test_temperature_scaling_of_16_bit_logits(dtype):
    # fit works on a float64 copy: the 16-bit logits give the temperature of their exact values
    logits, target = half_logits(200, 4, dtype, scale=4.0, seed=13), targets(200, 4)
    target[:120] = logits[:120].argmax(dim=1)  # better than chance, so T is finite
    scaler = TemperatureScaler().fit(logits, target)
    assert scaler.temperature == TemperatureScaler().fit(logits.double(), target).temperature
    assert scaler(logits).dtype == dtype
