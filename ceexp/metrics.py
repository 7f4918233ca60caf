"""Calibration metrics: functional forms and torchmetrics ``Metric`` classes.

Every calibration metric takes class probabilities ``probs`` of shape ``(N, C)`` (floating, each in
``[0, 1]``, rows summing to 1: pass ``softmax(logits)``) and class indices ``target`` of shape ``(N,)``
(int64). The results are in units of probability (fractions in ``[0, 1]``; the Brier score is in ``[0, 2]``).
The negative log-likelihood helpers are the exception: they take logits and report nats (or bits).

The code follows torchmetrics' layering, so that one set of pieces serves both forms:

1. argument validation (``n_bins``, ``norm``),
2. tensor validation (:func:`ceexp.checks.check_probabilities`),
3. update: reduce a batch to sufficient statistics (per-bin counts and sums),
4. compute: finish the metric from those statistics.

A functional form runs 1-4 on one batch; a ``Metric`` runs 1 at construction, 2-3 in ``update`` (adding the
statistics to its states, which are summed across processes) and 4 in ``compute``.

Binning. Equal-width bins split ``[0, 1]`` at ``b / n_bins``; bin ``b`` holds the confidences in
``(b / n_bins, (b + 1) / n_bins]``, except that a confidence of exactly 0 goes in the first bin (and exactly 1
in the last, which it already is under that rule). torchmetrics' calibration error instead gives a
confidence of exactly 1 an extra bin of its own; ceexp does not. The edges are rounded to ``probs``' dtype, so a
bfloat16 confidence of 0.6 (0.6015625) sits on the bfloat16 edge 0.6 and joins the bin below it.

Dtypes. ``probs`` may be float16, bfloat16, float32 or float64. Every sum and mean (per-bin statistics, the
Brier score, accuracy, mean confidence, the ``Metric`` states) is accumulated in float64, the kernel sums of
smECE too, the NLL in float32 or wider (:func:`ceexp.checks.working_dtype`), and the row-sum check in float32 or
wider with a tolerance that allows for 16-bit rounding (:func:`ceexp.checks.check_probabilities`), so a 16-bit
softmax is accepted, inside ``torch.autocast`` or not. A functional form returns a 0-dim tensor of the working
dtype of its input: float32 for float16 or bfloat16, else the input's own dtype; ``Metric.compute`` a float64 one.

Equal-mass bins (AdaECE, the debiased ECE) cut the sorted top-label confidences into ``n_bins`` contiguous
chunks of the sizes ``numpy.array_split`` gives, except that a block of equal confidences is never split: it
goes whole to the chunk of its first member, so the value does not depend on the order of the samples. This is
the binning of Kumar et al.'s ``calibration.get_equal_bins`` (edges half-way between neighbouring chunks, a
value on an edge joining the bin below).

:data:`METRIC_FUNCTIONS` maps the tag of every probability-based metric that ``ceexp.module.EvalMetrics``
logs to a function ``f(probs, target, n_bins) -> 0-dim tensor``.
"""
from __future__ import annotations

import math
from functools import partial
from statistics import NormalDist
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ceexp.checks import (
    check_choice,
    check_classification_inputs,
    check_positive_int,
    check_probabilities,
    working_dtype,
)

__all__ = [
    "METRIC_FUNCTIONS",
    "AdaptiveCalibrationError",
    "BrierScore",
    "CalibrationError",
    "ClasswiseCalibrationError",
    "DebiasedCalibrationError",
    "ReliabilityBins",
    "SmoothCalibrationError",
    "adaptive_calibration_error",
    "bin_edges",
    "brier_score",
    "classwise_calibration_error",
    "debiased_ece",
    "expected_calibration_error",
    "nats_to_bits",
    "negative_log_likelihood",
    "reliability_bins",
    "signed_ece",
    "smooth_ece",
]

_NORMS = ("l1", "l2", "max")
_REDUCTIONS = ("none", "mean", "sum")
_ACC = torch.float64  # dtype of every accumulated sum
_WILSON_Z = NormalDist().inv_cdf(0.975)  # 1.959964: two-sided 95% normal quantile of the accuracy intervals


class ReliabilityBins(NamedTuple):
    """What a reliability diagram plots, for ``n_bins`` equal-width bins of top-label confidence.

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges ``0, 1/n_bins, ..., 1`` (float64).
        confidence: ``(n_bins,)`` mean top-label confidence of the samples in each bin; NaN for an empty bin.
        accuracy: ``(n_bins,)`` fraction of the samples in each bin whose top-label prediction is right;
            NaN for an empty bin.
        count: ``(n_bins,)`` number of samples in each bin (int64).
        acc_low, acc_high: ``(n_bins,)`` 95% Wilson score interval of each bin's accuracy (float64, in
            ``[0, 1]``); NaN for an empty bin. A bin of one sample spans about 0.79 of ``[0, 1]``.
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor
    acc_low: Tensor
    acc_high: Tensor


# ---------------------------------------------------------------------------------------------------------
# 1. argument validation


def _binning_arg_validation(n_bins: int, norm: str = "l1") -> None:
    check_positive_int("n_bins", n_bins)
    check_choice("norm", norm, _NORMS)


# ---------------------------------------------------------------------------------------------------------
# binning


def bin_edges(n_bins: int, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> Tensor:
    """The ``n_bins + 1`` equal-width edges over ``[0, 1]``; edge ``b`` is the float nearest ``b / n_bins``.

    Dividing an exact integer (rather than accumulating a step, as ``linspace`` may) makes the edge for
    0.6 the same float as the literal ``0.6``, so a confidence written as 0.6 falls in the bin that ends at 0.6.

    Example:
        >>> bin_edges(5)
        tensor([0.0000, 0.2000, 0.4000, 0.6000, 0.8000, 1.0000], dtype=torch.float64)
    """
    check_positive_int("n_bins", n_bins)
    return (torch.arange(n_bins + 1, dtype=torch.float64, device=device) / n_bins).to(dtype)


def _bin_index(values: Tensor, n_bins: int) -> Tensor:
    """Bin of each value in ``[0, 1]``: ``(lower, upper]`` intervals, with 0 in the first bin and 1 in the last.

    ``bucketize(right=False)`` against the inner edges returns ``i`` with ``inner[i-1] < v <= inner[i]``:
    a value on an edge joins the bin below it, 0 lands in bin 0 and 1 (above every inner edge) in the last.
    Edges are taken in ``values``' dtype so that a float32 0.6 is compared with a float32 0.6 (and a bfloat16
    0.6, 0.6015625, with a bfloat16 0.6).
    """
    inner = bin_edges(n_bins, dtype=values.dtype, device=values.device)[1:-1]
    return torch.bucketize(values, inner, right=False)


def _binned_sums(values: Tensor, hits: Tensor, index: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count (int64), sum of ``values`` and sum of ``hits`` (float64) for bins ``0 .. n_bins - 1``."""
    count = torch.zeros(n_bins, dtype=torch.int64, device=values.device)
    value_sum = torch.zeros(n_bins, dtype=_ACC, device=values.device)
    hit_sum = torch.zeros(n_bins, dtype=_ACC, device=values.device)
    count.scatter_add_(0, index, torch.ones_like(index))
    value_sum.scatter_add_(0, index, values.to(_ACC))
    hit_sum.scatter_add_(0, index, hits.to(_ACC))
    return count, value_sum, hit_sum


# ---------------------------------------------------------------------------------------------------------
# 3. update: one batch -> sufficient statistics


def _top_label(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Top-label confidence ``max_c p_c`` and correctness ``argmax_c p_c == y`` (ties: the lowest class index)."""
    confidence, prediction = probs.max(dim=1)
    return confidence, prediction == target


def _calibration_error_update(probs: Tensor, target: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, sum of confidence, number correct) of the top-label confidences."""
    confidence, correct = _top_label(probs, target)
    return _binned_sums(confidence, correct, _bin_index(confidence, n_bins), n_bins)


def _classwise_update(probs: Tensor, target: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class, per-bin statistics of ``p_c`` over all samples, each of shape ``(C, n_bins)``.

    Returns (count, sum of ``p_c``, number of samples with ``y == c``) for every (class, bin).
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(target, num_classes)
    # flatten (class, bin) into one index so a single scatter fills the (C, n_bins) table
    index = _bin_index(probs, n_bins) + n_bins * torch.arange(num_classes, device=probs.device)
    count, p_sum, hit_sum = _binned_sums(probs.reshape(-1), onehot.reshape(-1), index.reshape(-1), num_classes * n_bins)
    return count.view(num_classes, n_bins), p_sum.view(num_classes, n_bins), hit_sum.view(num_classes, n_bins)


def _brier_update(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over samples of ``sum_c (p_c - onehot(y)_c)^2`` (float64) and the number of samples (int64)."""
    onehot = F.one_hot(target, probs.shape[1]).to(_ACC)
    total = (probs.to(_ACC) - onehot).square().sum()
    return total, torch.tensor(probs.shape[0], dtype=torch.int64, device=probs.device)


# ---------------------------------------------------------------------------------------------------------
# 4. compute: statistics -> metric


def _nan(device) -> Tensor:
    return torch.tensor(float("nan"), dtype=_ACC, device=device)


def _calibration_error_compute(count: Tensor, conf_sum: Tensor, hit_sum: Tensor, norm: str) -> Tensor:
    """ECE / RMSCE / MCE from per-bin statistics; NaN when no sample has been seen.

    With ``n_b`` samples in bin b, ``n_b |acc_b - conf_b| = |hit_sum_b - conf_sum_b|``, so the l1 form is the
    sum of those gaps over N; the l2 form weights the squared gap ``(gap_b / n_b)^2`` by ``n_b / N``.
    """
    n = count.sum()
    if n == 0:
        return _nan(count.device)
    filled = count > 0
    gap = (hit_sum - conf_sum).abs()[filled]
    n_b = count[filled].to(_ACC)
    if norm == "l1":
        return gap.sum() / n
    if norm == "l2":
        return torch.sqrt((gap.square() / n_b).sum() / n)
    return (gap / n_b).max()


def _signed_compute(count: Tensor, conf_sum: Tensor, hit_sum: Tensor) -> Tensor:
    """Signed ECE from per-bin statistics: ``sum_b n_b / N (conf_b - acc_b) = sum_b (conf_sum_b - hit_sum_b) / N``."""
    n = count.sum()
    if n == 0:
        return _nan(count.device)
    return (conf_sum - hit_sum).sum() / n


def _wilson_interval(hits: Tensor, count: Tensor, z: float = _WILSON_Z) -> tuple[Tensor, Tensor]:
    """Wilson score interval of a proportion ``hits / count``, per entry; NaN where ``count`` is 0.

    ``(p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)``. The interval always holds ``p``;
    at p = 0 or 1 rounding would put a bound a hair on the wrong side of it (e.g. 1 - 1e-16), so the bounds are
    taken no further in than ``p`` (a plot's error bar is then never negative).
    """
    n = count.to(_ACC)
    p = hits / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * torch.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    empty = count == 0
    low = torch.where(empty, torch.nan, torch.minimum(center - half, p).clamp(min=0))
    high = torch.where(empty, torch.nan, torch.maximum(center + half, p).clamp(max=1))
    return low, high


def _reliability_compute(count: Tensor, conf_sum: Tensor, hit_sum: Tensor) -> ReliabilityBins:
    n_bins = count.shape[0]
    denom = count.to(_ACC)
    empty = count == 0
    confidence = torch.where(empty, torch.nan, conf_sum / denom)
    accuracy = torch.where(empty, torch.nan, hit_sum / denom)
    low, high = _wilson_interval(hit_sum, count)
    return ReliabilityBins(bin_edges(n_bins, device=count.device), confidence, accuracy, count.clone(), low, high)


def _equal_mass_sums(confidence: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, sum of confidence, number correct) over ``n_bins`` equal-mass bins of ``N >= 1`` samples.

    The sorted confidences are cut into contiguous chunks with the sizes ``numpy.array_split`` gives (the first
    ``N % n_bins`` chunks hold one sample more; ``N < n_bins`` leaves chunks empty). A block of equal confidences
    goes whole to the chunk of its first sorted position, so no tie block is split and the chunks it overlaps
    shrink (or empty); without ties this is exactly array_split.
    """
    n = confidence.numel()
    device = confidence.device
    ordered, order = torch.sort(confidence)
    base, extra = divmod(n, n_bins)
    sizes = torch.tensor([base + 1] * extra + [base] * (n_bins - extra), device=device)
    chunk = torch.repeat_interleave(torch.arange(n_bins, device=device), sizes)
    position = torch.arange(n, device=device)
    starts_block = torch.ones(n, dtype=torch.bool, device=device)
    starts_block[1:] = ordered[1:] != ordered[:-1]
    # running maximum of the positions where a block starts: each sample's first tied position
    block_start = torch.cummax(torch.where(starts_block, position, 0), dim=0).values
    return _binned_sums(ordered, correct[order], chunk[block_start], n_bins)


def _adaptive_calibration_error_compute(confidence: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """AdaECE from all top-label confidences and correctness flags (any order); NaN when there are none.

    Equal-mass bins of :func:`_equal_mass_sums`; empty bins are dropped.
    """
    if confidence.numel() == 0:
        return _nan(confidence.device)
    return _calibration_error_compute(*_equal_mass_sums(confidence, correct, n_bins), "l1")


def _debiased_compute(count: Tensor, conf_sum: Tensor, hit_sum: Tensor) -> Tensor:
    """Debiased l2 calibration error from per-bin statistics; NaN when no sample has been seen.

    Each bin of ``n_b >= 2`` samples contributes ``n_b / N [(conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1)]``
    (the plug-in square minus an unbiased estimate of its sampling variance); bins of fewer samples contribute 0
    (their weight still counts in N). The root of the sum, clamped at 0 first.
    """
    n = count.sum()
    if n == 0:
        return _nan(count.device)
    enough = count >= 2
    n_b = count[enough].to(_ACC)
    conf, acc = conf_sum[enough] / n_b, hit_sum[enough] / n_b
    square = (n_b * ((conf - acc).square() - acc * (1 - acc) / (n_b - 1))).sum() / n
    return square.clamp(min=0).sqrt()


# The discretisation of relplot 1.0.3's smECE, reproduced so that ceexp's value is relplot's (up to rounding).
_SMECE_EVAL_POINTS = 200  # at least this many evenly spaced points t_j on [0, 1] (round(10 / sigma) if more)
_SMECE_GRID_POINTS = 2000  # the kernel grid has max(this, round(20 / sigma)) // 2 + 1 points
_SMECE_DENSITY_EPS = 1e-4  # added to the smoothed density at every t_j (relplot's guard against 0 / 0)
_SMECE_SIGMA_MIN = 1e-3  # a bandwidth below this is taken as the fixed point without evaluating it
_SMECE_BISECTIONS = 10  # halvings of the bandwidth interval (0, 1]: sigma* to 2^-10


class _KernelSmoother:
    """smECE of one set of top-label samples at any bandwidth ``sigma``, in float64 numpy on the CPU.

    The kernel sums ``sum_i K_sigma(t_j, f_i) w_i`` are taken as relplot takes them: the weights ``w`` (the
    residual ``f - a`` and 1, for the density) are spread linearly onto a grid of ``m`` points on ``[0, 1]``, the
    grid, mirrored about 0 and about 1, is convolved with a Gaussian of standard deviation ``sigma`` sampled on
    the grid (``phi_sigma(d)`` per grid step, not normalised, truncated at ``|d| <= 1/2``), and the result is
    linearly interpolated at the ``E`` evaluation points ``t_j``. ``m`` depends on ``sigma`` only below 0.01 and
    ``E`` below 0.05, so what does not depend on ``sigma`` (the grid's spectrum, the interpolation weights) is
    kept per size: the bisection's first bandwidths share one grid. numpy rather than torch: the bisection is a
    sequence of small steps with a decision after each, and torch's multithreaded CPU FFT of a few thousand
    points cost 10 to 100 times more than numpy's on a busy two-core machine (1.6 ms in all at N = 1000).
    """

    def __init__(self, confidence: Tensor, correct: Tensor) -> None:
        self.confidence = confidence.detach().to("cpu", _ACC).numpy()
        self.residual = self.confidence - correct.detach().to("cpu", _ACC).numpy()
        self._grids: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._interpolation: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _grid(self, m: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(spectrum of the mirrored grid ``(2, size // 2 + 1)``, squared kernel offsets ``(m,)``, FFT size)."""
        if m not in self._grids:
            # linear deposit: a confidence between grid points g and g + 1 splits its weight by proximity
            position = self.confidence * (m - 1)
            left = np.clip(position.astype(np.int64), 0, m - 2)
            frac = position - left
            index = np.concatenate([left, left + 1])
            grid = np.stack([np.bincount(index, np.concatenate([w * (1 - frac), w * frac]), minlength=m)
                             for w in (self.residual, np.ones_like(frac))])
            mirrored = np.concatenate([grid[:, :0:-1], grid, grid[:, -2::-1]], axis=1)  # reflect about 0 and 1
            # a circular convolution of length >= 3m - 2 does not wrap into the window that is kept
            size = 1 << (3 * m - 3).bit_length()
            offset = np.arange(m) / (m - 1) - 0.5
            self._grids[m] = (np.fft.rfft(mirrored, size), offset * offset, size)
        return self._grids[m]

    def _interpolation_weights(self, m: int, n_eval: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid cell of each evaluation point ``t_j = j / (E - 1)`` and its position within the cell."""
        key = (m, n_eval)
        if key not in self._interpolation:
            t = np.arange(n_eval) / (n_eval - 1)
            step = 1.0 / (m - 1)
            cell = np.clip((t * (m - 1)).astype(np.int64), 0, m - 2)
            self._interpolation[key] = (cell, (t - cell * step) / step)
        return self._interpolation[key]

    def smooth(self, sigma: float) -> np.ndarray:
        """Kernel sums of the residual and of 1 at the evaluation points: ``(2, E)`` float64."""
        m = max(_SMECE_GRID_POINTS, round(20 / sigma)) // 2 + 1
        n_eval = max(round(10 / sigma), _SMECE_EVAL_POINTS)
        spectrum, offset_squared, size = self._grid(m)
        kernel = np.exp(-offset_squared / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
        # the kernel is symmetric, so convolving is correlating: grid point g gets sum_k mirrored[g + m // 2 + k]
        # * kernel[k], which is entry g + m // 2 + m - 1 of the full convolution
        full = np.fft.irfft(spectrum * np.fft.rfft(kernel, size), size)
        smoothed = full[:, m // 2 + m - 1:m // 2 + 2 * m - 1]
        cell, within = self._interpolation_weights(m, n_eval)
        return smoothed[:, cell] * (1 - within) + smoothed[:, cell + 1] * within

    def smece(self, sigma: float) -> float:
        """``sum_j |smoothed residual_j| / sum_j (smoothed density_j + eps)``."""
        residual, density = self.smooth(sigma)
        return float(np.abs(residual).sum() / (density.sum() + _SMECE_DENSITY_EPS * density.size))


def _smooth_ece_compute(confidence: Tensor, correct: Tensor) -> Tensor:
    """smECE at its fixed-point bandwidth from top-label confidences and correctness flags; NaN when none.

    Bisection on ``(0, 1]`` for the smallest tested ``sigma`` with ``smECE_sigma <= sigma`` (relplot's
    ``search_param``): a bandwidth passes when ``sigma < smECE_sigma`` (or ``sigma < 1e-3``), ten halvings, and the
    result is smECE at the last bandwidth that did not pass (already evaluated, so it is cached).
    """
    if confidence.numel() == 0:
        return _nan(confidence.device)
    smoother = _KernelSmoother(confidence, correct)
    values: dict[float, float] = {}

    def smaller_than_its_smece(sigma: float) -> bool:
        if sigma < _SMECE_SIGMA_MIN:
            return True
        values[sigma] = smoother.smece(sigma)
        return sigma < values[sigma]

    sigma = 1.0
    if not smaller_than_its_smece(sigma):
        passed = 0.0
        for _ in range(_SMECE_BISECTIONS):
            mid = (sigma + passed) / 2
            if smaller_than_its_smece(mid):
                passed = mid
            else:
                sigma = mid
    return torch.tensor(values[sigma], dtype=_ACC, device=confidence.device)


def _classwise_compute(count: Tensor, p_sum: Tensor, hit_sum: Tensor) -> Tensor:
    """Mean over classes of the per-class l1 calibration error; NaN when no sample has been seen."""
    n = count[0].sum()  # every class bins every sample
    if n == 0:
        return _nan(count.device)
    return ((hit_sum - p_sum).abs().sum(dim=1) / n).mean()


# ---------------------------------------------------------------------------------------------------------
# functional forms


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15, norm: str = "l1") -> Tensor:
    r"""Top-label calibration error over equal-width confidence bins: ECE, RMSCE or MCE.

    With top-label confidence :math:`\hat p_i = \max_c p_{ic}`, correctness :math:`a_i = [\arg\max_c p_{ic} = y_i]`
    and, for bin :math:`B_b`, :math:`\mathrm{acc}_b` and :math:`\mathrm{conf}_b` the means of :math:`a_i` and
    :math:`\hat p_i` over it:

    .. math::
        \mathrm{ECE} = \sum_b \frac{|B_b|}{N} |\mathrm{acc}_b - \mathrm{conf}_b| \quad (\texttt{norm="l1"}),\qquad
        \mathrm{RMSCE} = \sqrt{\sum_b \frac{|B_b|}{N} (\mathrm{acc}_b - \mathrm{conf}_b)^2} \quad (\texttt{"l2"}),\qquad
        \mathrm{MCE} = \max_{b:\,|B_b|>0} |\mathrm{acc}_b - \mathrm{conf}_b| \quad (\texttt{"max"}).

    Bins are ``(b / n_bins, (b + 1) / n_bins]``; a confidence of exactly 0 goes in the first bin and exactly 1
    in the last (not in a bin of its own, as in torchmetrics).

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE).

    Returns:
        A 0-dim tensor in units of probability, in ``[0, 1]``: float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer, ``norm`` is not one of ``"l1"``, ``"l2"``,
            ``"max"``, or ``probs`` / ``target`` fail :func:`ceexp.checks.check_probabilities`.

    References:
        Naeini, Cooper & Hauskrecht (2015), "Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI;
        Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks", ICML, eq. (3).

    Example:
        Confidences 1.0 (wrong) and 0.9 (right) share the bin (0.8, 1]: conf 0.95, acc 0.5, weight 2/3;
        0.3 (wrong) is alone in (0.2, 0.4]: gap 0.3, weight 1/3. ECE = 0.45 * 2/3 + 0.3 / 3 = 0.4.

        >>> probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.05, 0.9, 0.05, 0.0], [0.3, 0.25, 0.25, 0.2]])
        >>> target = torch.tensor([1, 1, 1])
        >>> expected_calibration_error(probs, target, n_bins=5)
        tensor(0.4000)
        >>> expected_calibration_error(probs, target, n_bins=5, norm="max")
        tensor(0.4500)
    """
    _binning_arg_validation(n_bins, norm)
    check_probabilities(probs, target)
    count, conf_sum, hit_sum = _calibration_error_update(probs, target, n_bins)
    return _calibration_error_compute(count, conf_sum, hit_sum, norm).to(working_dtype(probs.dtype))


def adaptive_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    r"""Adaptive (equal-mass) calibration error, AdaECE.

    The l1 formula of :func:`expected_calibration_error`, but over bins that each hold (nearly) the same number
    of samples: the top-label confidences are sorted and cut into ``n_bins`` contiguous chunks of the sizes
    ``numpy.array_split`` gives (the first ``N % n_bins`` chunks hold one more sample; empty chunks, when
    ``N < n_bins``, are skipped). Ties: a block of equal confidences is never split; it goes whole to the chunk
    of its first sorted position (the chunks it overlaps lose those samples), so the value does not depend on
    the order of the samples.

    .. math::
        \mathrm{AdaECE} = \sum_b \frac{|B_b|}{N} |\mathrm{acc}_b - \mathrm{conf}_b|,\qquad
        |B_b| \approx N / n\_bins.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-mass bins.

    Returns:
        A 0-dim tensor in units of probability, in ``[0, 1]``: float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer or ``probs`` / ``target`` fail
            :func:`ceexp.checks.check_probabilities`.

    References:
        Nguyen & O'Connor (2015), "Posterior Calibration and Exploratory Analysis for Natural Language
        Processing Models", EMNLP; Mukhoti et al. (2020), "Calibrating Deep Neural Networks using Focal Loss",
        NeurIPS, Sec. 5.

    Example:
        Sorted confidences 0.6 (right), 0.7 (wrong) | 0.8 (right), 0.9 (right) in 2 bins:
        |0.5 - 0.65| * 2/4 + |1.0 - 0.85| * 2/4 = 0.15.

        >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
        >>> target = torch.tensor([0, 0, 1, 0])
        >>> adaptive_calibration_error(probs, target, n_bins=2)
        tensor(0.1500)

        Four equal confidences 0.6, two right: one tie block, one bin, |0.5 - 0.6| = 0.1 in any order.

        >>> tied = torch.tensor([[0.6, 0.4]] * 4)
        >>> adaptive_calibration_error(tied, torch.tensor([0, 0, 1, 1]), n_bins=2)
        tensor(0.1000)
        >>> adaptive_calibration_error(tied, torch.tensor([0, 1, 0, 1]), n_bins=2)
        tensor(0.1000)
    """
    _binning_arg_validation(n_bins)
    check_probabilities(probs, target)
    confidence, correct = _top_label(probs, target)
    return _adaptive_calibration_error_compute(confidence, correct, n_bins).to(working_dtype(probs.dtype))


def smooth_ece(probs: Tensor, target: Tensor) -> Tensor:
    r"""Smooth ECE (smECE) of the top-label confidence, at its automatic (fixed-point) bandwidth.

    With top-label confidence :math:`f_i = \max_c p_{ic}`, correctness :math:`a_i = [\arg\max_c p_{ic} = y_i]`
    and :math:`K_\sigma` a Gaussian kernel of standard deviation :math:`\sigma` reflected at 0 and at 1, the
    kernel-smoothed residual :math:`\hat r_\sigma(t) = \sum_i K_\sigma(t, f_i)(f_i - a_i) / \sum_i K_\sigma(t, f_i)`
    (Nadaraya-Watson) is integrated against the kernel density of the confidences:

    .. math::
        \mathrm{smECE}_\sigma = \int_0^1 |\hat r_\sigma(t)|\, \hat\delta_\sigma(t)\, dt
        \approx \frac{\sum_j \left|\sum_i K_\sigma(t_j, f_i)(f_i - a_i)\right|}
        {\sum_j \left(\sum_i K_\sigma(t_j, f_i) + \epsilon\right)},\qquad
        \mathrm{smECE} = \mathrm{smECE}_{\sigma^*},\quad \sigma^* = \mathrm{smECE}_{\sigma^*}.

    The bandwidth is the fixed point, found by bisection on ``(0, 1]`` to :math:`2^{-10}`; the kernel sums are
    taken on a grid of spacing at most :math:`\sigma / 10` and the integral over ``max(200, 10 / sigma)`` evenly
    spaced points :math:`t_j`, with :math:`\epsilon = 10^{-4}`. Every one of these choices is relplot's (the
    authors' package, version 1.0.3, ``relplot.smECE``): the value is relplot's up to rounding (1e-15). No bins.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.

    Returns:
        A 0-dim tensor in units of probability, in ``[0, 1]`` (computed in float64): float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``probs`` / ``target`` fail :func:`ceexp.checks.check_probabilities`.

    References:
        Błasiok & Nakkiran (2023), "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing", ICLR 2024
        (arXiv:2309.12236): smECE at bandwidth sigma, and the scale sigma* with smECE_sigma* = sigma*;
        their implementation ``relplot.smECE`` (reflected Gaussian kernel, ``search_param``).

    Example:
        Always right at confidence 1: no residual anywhere. Four predictions at 0.75, three right: calibrated
        on average, and smoothing cannot find a gap.

        >>> smooth_ece(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        tensor(0.)
        >>> smooth_ece(torch.tensor([[0.75, 0.25]] * 4), torch.tensor([0, 0, 0, 1]))
        tensor(0.)

        Confidence 0.9, every prediction wrong: the residual is 0.9 wherever there is mass (0.8999979 with the
        density's epsilon).

        >>> smooth_ece(torch.tensor([[0.9, 0.1]] * 100), torch.ones(100, dtype=torch.int64))
        tensor(0.9000)
    """
    check_probabilities(probs, target)
    confidence, correct = _top_label(probs, target)
    return _smooth_ece_compute(confidence, correct).to(working_dtype(probs.dtype))


def debiased_ece(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    r"""Debiased top-label l2 calibration error over equal-mass bins (Kumar, Liang & Ma 2019).

    The plug-in squared error of each bin is corrected by an unbiased estimate of the part that sampling noise
    adds to it, :math:`\mathrm{acc}_b (1 - \mathrm{acc}_b) / (|B_b| - 1)`:

    .. math::
        \mathrm{ECE}_{debiased} = \sqrt{\max\left(0,\ \sum_{b:\,|B_b| \ge 2} \frac{|B_b|}{N}
        \left[(\mathrm{conf}_b - \mathrm{acc}_b)^2 - \frac{\mathrm{acc}_b (1 - \mathrm{acc}_b)}{|B_b| - 1}\right]
        \right)}

    over the equal-mass bins of :func:`adaptive_calibration_error` (same tie rule); a bin of one sample
    contributes 0 but keeps its weight in N. The root of the squared error, not the square (an RMS calibration
    error in probability units, comparable with ``norm="l2"`` of :func:`expected_calibration_error`). Equals
    ``calibration.get_calibration_error(probs, target, p=2, debias=True, mode="top-label")`` of Kumar et al.'s
    package for continuous outputs (with ``n_bins=15``; that package's default mode is ``"marginal"``, i.e.
    classwise, and it switches to one bin per distinct value when the outputs take few values; ceexp does
    neither).

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-mass bins.

    Returns:
        A 0-dim tensor in units of probability, in ``[0, 1]``: float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer or ``probs`` / ``target`` fail
            :func:`ceexp.checks.check_probabilities`.

    References:
        Kumar, Liang & Ma (2019), "Verified Uncertainty Calibration", NeurIPS (the debiased estimator of the
        squared l2 calibration error, with equal-mass bins); their package ``uncertainty-calibration``
        (``calibration.utils.unbiased_square_ce``, ``unbiased_l2_ce``, ``get_equal_bins``).

    Example:
        One bin of four at confidence 0.75, acc 0.5: 0.25^2 - 0.5 * 0.5 / 3 < 0 is clamped to 0. Confidence
        0.9, acc 0.5: sqrt(0.4^2 - 0.25 / 3) = sqrt(0.076667) = 0.2769.

        >>> target = torch.tensor([0, 0, 1, 1])
        >>> debiased_ece(torch.tensor([[0.75, 0.25]] * 4), target, n_bins=1)
        tensor(0.)
        >>> debiased_ece(torch.tensor([[0.9, 0.1]] * 4), target, n_bins=1)
        tensor(0.2769)
    """
    _binning_arg_validation(n_bins)
    check_probabilities(probs, target)
    confidence, correct = _top_label(probs, target)
    return _debiased_compute(*_equal_mass_sums(confidence, correct, n_bins)).to(working_dtype(probs.dtype))


def signed_ece(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    r"""Signed top-label calibration error: positive when over-confident, negative when under-confident.

    The ECE of :func:`expected_calibration_error` without the absolute value, over the same equal-width bins:

    .. math::
        \mathrm{ECE}_{signed} = \sum_b \frac{|B_b|}{N} (\mathrm{conf}_b - \mathrm{acc}_b)
        = \frac{1}{N}\sum_i \hat p_i - \frac{1}{N}\sum_i a_i.

    The weights cancel the bin sizes, so the sum is the mean confidence minus the accuracy whatever the bins:
    ``n_bins`` is checked (for a signature uniform with the other estimators) but does not change the value.
    Over- and under-confident bins offset each other; :math:`|\mathrm{ECE}_{signed}| \le \mathrm{ECE}`.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]`` (no effect on the value, see above).

    Returns:
        A 0-dim tensor in units of probability, in ``[-1, 1]``: float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer or ``probs`` / ``target`` fail
            :func:`ceexp.checks.check_probabilities`.

    References:
        Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks", ICML, eq. (3) without
        the absolute value (the over-/under-confidence reading of their Fig. 1).

    Example:
        Confidence 0.9 right and 0.9 wrong (bin (0.8, 1]: 0.9 - 0.5 = +0.4, weight 2/3); 0.6 right (bin
        (0.4, 0.6]: 0.6 - 1 = -0.4, weight 1/3): +0.4 * 2/3 - 0.4 / 3 = 0.1333.

        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
        >>> signed_ece(probs, torch.tensor([0, 1, 0]), n_bins=5)
        tensor(0.1333)
    """
    _binning_arg_validation(n_bins)
    check_probabilities(probs, target)
    return _signed_compute(*_calibration_error_update(probs, target, n_bins)).to(working_dtype(probs.dtype))


def classwise_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    r"""Classwise calibration error (classwise-ECE): the ECE of every class's probability, averaged over classes.

    For each class c, the probabilities :math:`p_{ic}` of all N samples are put in equal-width bins (same rule
    as :func:`expected_calibration_error`: 0 in the first bin, 1 in the last), and

    .. math::
        \mathrm{cwECE} = \frac{1}{C} \sum_{c=1}^{C} \sum_b \frac{|B_{b,c}|}{N}
        \left| \overline{[y_i = c]}_{B_{b,c}} - \overline{p_{ic}}_{B_{b,c}} \right|.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``.

    Returns:
        A 0-dim tensor in units of probability, in ``[0, 1]``: float32 for float16 or
        bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer or ``probs`` / ``target`` fail
            :func:`ceexp.checks.check_probabilities`.

    References:
        Kull et al. (2019), "Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with
        Dirichlet calibration", NeurIPS (classwise-ECE).

    Example:
        One bin: class 0 has mean p 0.5 and frequency 1/2; class 1 mean p 0.5, frequency 1/2: both gaps 0.
        With 2 bins, each class has 0.75 (a hit) and 0.25 (a miss) in separate bins: gaps 0.25, weight 1/2.

        >>> probs = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
        >>> target = torch.tensor([0, 1])
        >>> classwise_calibration_error(probs, target, n_bins=1)
        tensor(0.)
        >>> classwise_calibration_error(probs, target, n_bins=2)
        tensor(0.2500)
    """
    _binning_arg_validation(n_bins)
    check_probabilities(probs, target)
    return _classwise_compute(*_classwise_update(probs, target, n_bins)).to(working_dtype(probs.dtype))


def brier_score(probs: Tensor, target: Tensor) -> Tensor:
    r"""Multiclass Brier score: :math:`\frac{1}{N} \sum_i \sum_c (p_{ic} - [y_i = c])^2`, in ``[0, 2]``.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.

    Returns:
        A 0-dim tensor in squared probability, 0 for perfect one-hot predictions and 2 for confident wrong
        ones; float32 for float16 or bfloat16 ``probs``, else ``probs``' dtype.

    Raises:
        ValueError: if ``probs`` / ``target`` fail :func:`ceexp.checks.check_probabilities`.

    References:
        Brier (1950), "Verification of forecasts expressed in terms of probability", Monthly Weather Review.

    Example:
        (0.8 - 1)^2 + 0.2^2 = 0.08 and 1^2 + 1^2 = 2, mean 1.04.

        >>> brier_score(torch.tensor([[0.8, 0.2], [1.0, 0.0]]), torch.tensor([0, 1]))
        tensor(1.0400)
    """
    check_probabilities(probs, target)
    total, count = _brier_update(probs, target)
    return (total / count).to(working_dtype(probs.dtype))


def reliability_bins(probs: Tensor, target: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Per-bin mean top-label confidence, accuracy and count: the data of a reliability diagram.

    Uses the binning of :func:`expected_calibration_error`, from whose statistics it is computed.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``.

    Returns:
        :class:`ReliabilityBins` ``(edges, confidence, accuracy, count, acc_low, acc_high)``: ``edges``
        ``(n_bins + 1,)``, the others ``(n_bins,)``; confidence, accuracy and the 95% Wilson score interval of
        the accuracy (``acc_low``, ``acc_high``) are float64 probabilities and NaN for empty bins (so a plot
        draws nothing there), ``count`` is int64.

    Raises:
        ValueError: if ``n_bins`` is not a positive integer or ``probs`` / ``target`` fail
            :func:`ceexp.checks.check_probabilities`.

    References:
        Wilson (1927), "Probable inference, the law of succession, and statistical inference", JASA 22:209-212
        (the score interval, z = 1.96); Brown, Cai & DasGupta (2001), "Interval Estimation for a Binomial
        Proportion", Statistical Science (why Wilson rather than the Wald interval for small bins).

    Example:
        0.6 sits on an edge and joins the bin (0.4, 0.6] below it; 1.0 is in the last bin. One right answer
        out of one: the Wilson interval is [1 / (1 + z^2), 1] = [0.2065, 1]; one wrong: [0, z^2 / (1 + z^2)].

        >>> bins = reliability_bins(torch.tensor([[0.6, 0.4], [0.0, 1.0]]), torch.tensor([0, 0]), n_bins=5)
        >>> bins.count
        tensor([0, 0, 1, 0, 1])
        >>> bins.accuracy
        tensor([nan, nan, 1., nan, 0.], dtype=torch.float64)
        >>> bins.acc_low
        tensor([   nan,    nan, 0.2065,    nan, 0.0000], dtype=torch.float64)
        >>> bins.acc_high
        tensor([   nan,    nan, 1.0000,    nan, 0.7935], dtype=torch.float64)
    """
    check_positive_int("n_bins", n_bins)
    check_probabilities(probs, target)
    return _reliability_compute(*_calibration_error_update(probs, target, n_bins))


def negative_log_likelihood(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood ``-log softmax(logits)_y`` in nats: ``F.cross_entropy``, whatever the training loss.

    Computed and returned in float32 or wider (:func:`ceexp.checks.working_dtype`): float32 for float16 or
    bfloat16 logits (a float16 sum overflows past 65,504: 20,000 samples at 5 nats), else the logits' dtype.

    Args:
        logits: ``(N, C)`` floating unnormalised scores (not probabilities).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        reduction: ``"mean"``, ``"sum"`` (0-dim) or ``"none"`` (``(N,)``).

    Raises:
        ValueError: if ``reduction`` is unknown or ``logits`` / ``target`` fail
            :func:`ceexp.checks.check_classification_inputs`.

    Example:
        >>> negative_log_likelihood(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor(0.6931)
    """
    check_choice("reduction", reduction, _REDUCTIONS)
    check_classification_inputs(logits, target, input_name="logits")
    return F.cross_entropy(logits.to(working_dtype(logits.dtype)), target, reduction=reduction)


def nats_to_bits(x: Tensor | np.ndarray | float) -> Tensor | np.ndarray | float:
    """Convert an information quantity from nats to bits: ``x / ln 2`` (a tensor, array or number, same type).

    Example:
        >>> nats_to_bits(math.log(2))
        1.0
    """
    return x / math.log(2)


# ---------------------------------------------------------------------------------------------------------
# the registry: tag -> f(probs, target, n_bins); the metrics without bins are given that signature


def _accuracy(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    check_probabilities(probs, target)
    return _top_label(probs, target)[1].to(_ACC).mean().to(working_dtype(probs.dtype))


def _confidence(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    """Mean top-label probability ``mean_i max_c p_ic`` (what ``CalibrationError.summary()`` calls confidence)."""
    check_probabilities(probs, target)
    return _top_label(probs, target)[0].to(_ACC).mean().to(working_dtype(probs.dtype))


def _brier(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    return brier_score(probs, target)


def _smece(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    return smooth_ece(probs, target)


METRIC_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "acc": _accuracy,
    "adaece": adaptive_calibration_error,
    "brier": _brier,
    "confidence": _confidence,
    "cwece": classwise_calibration_error,
    "ece": expected_calibration_error,
    "ece_debiased": debiased_ece,
    "ece_signed": signed_ece,
    "mce": partial(expected_calibration_error, norm="max"),
    "smece": _smece,
}
"""Tag -> ``f(probs (N, C), target (N,), n_bins=15) -> 0-dim tensor`` (float32 for 16-bit ``probs``, else their
dtype), for every probability-based metric that ``ceexp.module.EvalMetrics`` logs (same tags, same values on the
same samples). ``n_bins`` is passed positionally and ignored by the metrics without bins (``acc``, ``brier``,
``confidence``, ``smece``). NLL is absent: it needs logits (:func:`negative_log_likelihood`)."""


# ---------------------------------------------------------------------------------------------------------
# Metric classes


class _ProbabilityMetric(Metric):
    """Shared flags; ``validate_args=False`` skips the per-update input checks (for softmax outputs)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    def __init__(self, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args

    def _check(self, probs: Tensor, target: Tensor) -> None:
        if self.validate_args:
            check_probabilities(probs, target)


class CalibrationError(_ProbabilityMetric):
    """Top-label ECE / RMSCE / MCE accumulated over batches; see :func:`expected_calibration_error`.

    State: per-bin ``count`` (int64), ``conf_sum`` and ``correct_sum`` (float64), each ``(n_bins,)``, summed
    across processes; memory is O(n_bins) whatever the number of samples. ``compute()`` equals the functional
    form on all samples seen (a float64 0-dim tensor, NaN before any update); :meth:`reliability_bins` gives
    the per-bin data of a reliability diagram from the same state.

    Args:
        n_bins: number of equal-width bins over ``[0, 1]``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on a bad ``n_bins`` or ``norm`` (at construction) or bad ``probs`` / ``target`` (in update).

    Example:
        >>> metric = CalibrationError(n_bins=5)
        >>> metric.update(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([1]))
        >>> metric.update(torch.tensor([[0.05, 0.9, 0.05, 0.0], [0.3, 0.25, 0.25, 0.2]]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.4000, dtype=torch.float64)
        >>> metric.reliability_bins().count
        tensor([0, 1, 0, 0, 2])
    """

    plot_upper_bound = 1.0

    def __init__(self, n_bins: int = 15, norm: str = "l1", **kwargs) -> None:
        super().__init__(**kwargs)
        _binning_arg_validation(n_bins, norm)
        self.n_bins = n_bins
        self.norm = norm
        self.add_state("count", torch.zeros(n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("conf_sum", torch.zeros(n_bins, dtype=_ACC), dist_reduce_fx="sum")
        self.add_state("correct_sum", torch.zeros(n_bins, dtype=_ACC), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self._check(probs, target)
        count, conf_sum, correct_sum = _calibration_error_update(probs, target, self.n_bins)
        self.count += count
        self.conf_sum += conf_sum
        self.correct_sum += correct_sum

    def compute(self) -> Tensor:
        return _calibration_error_compute(self.count, self.conf_sum, self.correct_sum, self.norm)

    def reliability_bins(self) -> ReliabilityBins:
        """The :class:`ReliabilityBins` of all samples seen (synced across processes like ``compute``)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            return _reliability_compute(self.count, self.conf_sum, self.correct_sum)

    def summary(self) -> dict[str, Tensor]:
        """Everything the per-bin sums give, from one sync: ``ece`` (l1), ``rmsce`` (l2), ``mce`` (max),
        ``ece_signed`` (:func:`signed_ece`), ``acc`` (top-label accuracy) and ``confidence`` (mean top-label
        probability), float64 0-dim tensors."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            n = self.count.sum().to(_ACC)
            out = {name: _calibration_error_compute(self.count, self.conf_sum, self.correct_sum, norm)
                   for name, norm in (("ece", "l1"), ("rmsce", "l2"), ("mce", "max"))}
            out["ece_signed"] = _signed_compute(self.count, self.conf_sum, self.correct_sum)
            out["acc"] = self.correct_sum.sum() / n
            out["confidence"] = self.conf_sum.sum() / n
            return out


class _TopLabelSamples(_ProbabilityMetric):
    """Keeps every top-label confidence and correctness flag, for the estimators that need all samples.

    States: ``confidence`` and ``correct``, lists of float64 ``(B,)`` tensors (``dist_reduce_fx="cat"``, so a
    sync concatenates them across processes): memory O(N). A subclass implements ``_compute(confidence,
    correct)``; ``compute()`` returns its float64 0-dim result, NaN before any update.
    """

    plot_upper_bound = 1.0

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("confidence", [], dist_reduce_fx="cat")
        self.add_state("correct", [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self._check(probs, target)
        confidence, correct = _top_label(probs, target)
        self.confidence.append(confidence.to(_ACC))
        self.correct.append(correct.to(_ACC))  # float, not bool: every backend can all-gather it

    def _samples(self) -> tuple[Tensor, Tensor] | None:
        """All confidences and correctness flags seen, or None before any update."""
        # a list of batches here; one tensor (already concatenated) after a cross-process sync
        if isinstance(self.confidence, list) and not self.confidence:
            return None
        confidence, correct = dim_zero_cat(self.confidence), dim_zero_cat(self.correct)
        return (confidence, correct) if confidence.numel() else None

    def _compute(self, confidence: Tensor, correct: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self) -> Tensor:
        samples = self._samples()
        return _nan(self.device) if samples is None else self._compute(*samples)


class AdaptiveCalibrationError(_TopLabelSamples):
    """AdaECE accumulated over batches; see :func:`adaptive_calibration_error`.

    Equal-mass bins need every confidence, so the states are lists (``dist_reduce_fx="cat"``) of the top-label
    confidences and correctness flags: memory O(N). ``compute()`` returns a float64 0-dim tensor (NaN before
    any update); :meth:`summary` gives the other estimators that need every sample from the same state.

    Args:
        n_bins: number of equal-mass bins.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on a bad ``n_bins`` (at construction) or bad ``probs`` / ``target`` (in update).

    Example:
        >>> metric = AdaptiveCalibrationError(n_bins=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 0]))
        >>> metric.compute()
        tensor(0.1500, dtype=torch.float64)
    """

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        _binning_arg_validation(n_bins)
        self.n_bins = n_bins

    def _compute(self, confidence: Tensor, correct: Tensor) -> Tensor:
        return _adaptive_calibration_error_compute(confidence, correct, self.n_bins)

    def summary(self) -> dict[str, Tensor]:
        """Every estimator of the stored samples, from one sync: ``adaece``, ``ece_debiased``
        (:func:`debiased_ece`, the same ``n_bins`` equal-mass bins) and ``smece`` (:func:`smooth_ece`),
        float64 0-dim tensors (NaN before any update)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            samples = self._samples()
            if samples is None:
                return {name: _nan(self.device) for name in ("adaece", "ece_debiased", "smece")}
            sums = _equal_mass_sums(*samples, self.n_bins)
            return {
                "adaece": _calibration_error_compute(*sums, "l1"),
                "ece_debiased": _debiased_compute(*sums),
                "smece": _smooth_ece_compute(*samples),
            }


class DebiasedCalibrationError(_TopLabelSamples):
    """Debiased l2 calibration error accumulated over batches; see :func:`debiased_ece`.

    States as :class:`AdaptiveCalibrationError` (every top-label confidence and correctness flag, O(N));
    ``compute()`` returns a float64 0-dim tensor (NaN before any update).

    Args:
        n_bins: number of equal-mass bins.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on a bad ``n_bins`` (at construction) or bad ``probs`` / ``target`` (in update).
    """

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        _binning_arg_validation(n_bins)
        self.n_bins = n_bins

    def _compute(self, confidence: Tensor, correct: Tensor) -> Tensor:
        return _debiased_compute(*_equal_mass_sums(confidence, correct, self.n_bins))


class SmoothCalibrationError(_TopLabelSamples):
    """Smooth ECE (smECE) accumulated over batches; see :func:`smooth_ece`.

    States as :class:`AdaptiveCalibrationError` (every top-label confidence and correctness flag, O(N));
    ``compute()`` returns a float64 0-dim tensor (NaN before any update). It costs a few milliseconds for
    10,000 samples on a CPU.

    Args:
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on bad ``probs`` / ``target`` (in update).
    """

    def _compute(self, confidence: Tensor, correct: Tensor) -> Tensor:
        return _smooth_ece_compute(confidence, correct)


class ClasswiseCalibrationError(_ProbabilityMetric):
    """Classwise-ECE accumulated over batches; see :func:`classwise_calibration_error`.

    State: ``count`` (int64), ``prob_sum`` and ``hit_sum`` (float64), each ``(num_classes, n_bins)``, summed
    across processes. ``compute()`` returns a float64 0-dim tensor (NaN before any update).

    Args:
        num_classes: the number of classes C; every ``probs`` must be ``(N, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on a bad ``num_classes`` or ``n_bins`` (at construction) or bad ``probs`` / ``target``,
            including a class count other than ``num_classes`` (in update).
    """

    plot_upper_bound = 1.0

    def __init__(self, num_classes: int, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        _binning_arg_validation(n_bins)
        self.num_classes = num_classes
        self.n_bins = n_bins
        self.add_state("count", torch.zeros(num_classes, n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("prob_sum", torch.zeros(num_classes, n_bins, dtype=_ACC), dist_reduce_fx="sum")
        self.add_state("hit_sum", torch.zeros(num_classes, n_bins, dtype=_ACC), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self._check(probs, target)
        if probs.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected `probs` to have C={self.num_classes} classes (`num_classes`), "
                f"but got shape {tuple(probs.shape)}"
            )
        count, prob_sum, hit_sum = _classwise_update(probs, target, self.n_bins)
        self.count += count
        self.prob_sum += prob_sum
        self.hit_sum += hit_sum

    def compute(self) -> Tensor:
        return _classwise_compute(self.count, self.prob_sum, self.hit_sum)


class BrierScore(_ProbabilityMetric):
    """Multiclass Brier score accumulated over batches; see :func:`brier_score`.

    State: ``sum_squares`` (float64) and ``count`` (int64), summed across processes. ``compute()`` returns a
    float64 0-dim tensor in ``[0, 2]`` (NaN before any update).

    Raises:
        ValueError: on bad ``probs`` / ``target`` (in update).
    """

    plot_upper_bound = 2.0

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_squares", torch.zeros((), dtype=_ACC), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self._check(probs, target)
        total, count = _brier_update(probs, target)
        self.sum_squares += total
        self.count += count

    def compute(self) -> Tensor:
        return self.sum_squares / self.count  # 0 / 0 = NaN before any update


# ---------------------------------------------------------------------------------------------------------
# selective classification: risk-coverage curves and the areas under them


class RiskCoverageCurve(NamedTuple):
    """The risk-coverage curve of a confidence ranking: one point per distinct confidence.

    Point ``k`` accepts every sample whose confidence is at least ``threshold[k]`` (a tied group is accepted or
    rejected whole) and rejects the rest.

    Attributes:
        threshold: ``(K,)`` the distinct confidences, decreasing, in the confidence's dtype.
        coverage: ``(K,)`` fraction of the N samples accepted, increasing, the last exactly 1 (float64).
        selective_risk: ``(K,)`` fraction of the accepted samples whose top-label prediction is wrong (float64).
        generalized_risk: ``(K,)`` fraction of *all* N samples that are accepted and wrong:
            ``selective_risk * coverage`` (float64).
        count: ``(K,)`` number of samples accepted (int64).
        errors: ``(K,)`` number of accepted samples that are wrong (int64).
    """

    threshold: Tensor
    coverage: Tensor
    selective_risk: Tensor
    generalized_risk: Tensor
    count: Tensor
    errors: Tensor


def _selective_inputs(probs: Tensor, target: Tensor, confidence: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validated (confidence ``(N,)``, correct ``(N,)`` bool): the top-label confidence unless one is given."""
    check_probabilities(probs, target)
    top, correct = _top_label(probs, target)
    if confidence is None:
        return top, correct
    if not isinstance(confidence, Tensor) or confidence.shape != (probs.shape[0],):
        shape = tuple(confidence.shape) if isinstance(confidence, Tensor) else type(confidence).__name__
        raise ValueError(f"Expected `confidence` to have shape (N,) with N={probs.shape[0]}, but got {shape}")
    if not confidence.is_floating_point():
        raise ValueError(f"Expected `confidence` to be a floating tensor, but got dtype {confidence.dtype}")
    if not torch.isfinite(confidence).all():
        raise ValueError("Expected `confidence` to be finite, but it contains NaN or inf")
    return confidence.to(probs.device), correct


def _risk_coverage_compute(confidence: Tensor, correct: Tensor) -> RiskCoverageCurve:
    """The curve of :class:`RiskCoverageCurve` from ``N >= 1`` confidences and correctness flags (any order)."""
    n = confidence.numel()
    # the order within a tied group does not matter: the curve reads the error count only at each group's end
    ordered, order = torch.sort(confidence, descending=True)
    threshold, size = torch.unique_consecutive(ordered, return_counts=True)
    count = size.cumsum(0)
    errors = (~correct[order]).to(torch.int64).cumsum(0)[count - 1]
    coverage = count.to(_ACC) / n
    return RiskCoverageCurve(threshold, coverage, errors / count.to(_ACC), errors.to(_ACC) / n, count, errors)


def _aurc_compute(count: Tensor, errors: Tensor) -> Tensor:
    r"""Area under the selective-risk curve with the error count linear in the coverage within each tied group.

    Group k takes the coverage from :math:`c_{k-1} = n_{k-1} / N` to :math:`c_k = n_k / N` and adds
    :math:`g_k` errors among its :math:`b_k = n_k - n_{k-1}` samples; accepting a fraction of the group (any
    fraction of it, at random) makes the expected error fraction :math:`E(c) = a_k + s_k c` with
    :math:`s_k = g_k / b_k` and :math:`a_k = (e_{k-1} - s_k n_{k-1}) / N`, so its area is
    :math:`\int_{c_{k-1}}^{c_k} E(c) / c\, dc = g_k / N + a_k \ln(n_k / n_{k-1})`, the log term absent for
    the first group (:math:`a_1 = 0`: its risk is the constant :math:`s_1` down to coverage 0).
    """
    n = count[-1].to(_ACC)
    count, errors = count.to(_ACC), errors.to(_ACC)
    prev_count = torch.cat([count.new_zeros(1), count[:-1]])
    prev_errors = torch.cat([errors.new_zeros(1), errors[:-1]])
    gained, size = errors - prev_errors, count - prev_count
    offset = prev_errors - gained * prev_count / size
    # log1p(b / n_prev) = ln(n_k / n_{k-1}); the first group (n_prev = 0) has offset 0, so its (finite) log term
    # log1p(b / 1) adds nothing
    log_ratio = torch.log1p(size / prev_count.clamp(min=1))
    return (gained + offset * log_ratio).sum() / n


def _augrc_compute(count: Tensor, errors: Tensor) -> Tensor:
    """Trapezoidal area under the generalized risk ``e / N`` over the coverage ``n / N``, from (0, 0): exact for
    an error count linear in the coverage within each tied group."""
    n = count[-1].to(_ACC)
    count, errors = count.to(_ACC), errors.to(_ACC)
    prev_count = torch.cat([count.new_zeros(1), count[:-1]])
    prev_errors = torch.cat([errors.new_zeros(1), errors[:-1]])
    return ((errors + prev_errors) * (count - prev_count)).sum() / (2 * n * n)


def _oracle_aurc(error_rate: Tensor) -> Tensor:
    """AURC of a ranking that puts every right prediction above every wrong one: ``r + (1 - r) ln(1 - r)``."""
    return error_rate + torch.xlogy(1 - error_rate, 1 - error_rate)


def risk_coverage_curve(probs: Tensor, target: Tensor, confidence: Tensor | None = None) -> RiskCoverageCurve:
    r"""Risk-coverage curve of selective classification: reject the least confident, measure the error on the rest.

    The prediction is the top label :math:`\arg\max_c p_{ic}` (ties: the lowest class index); the confidence
    :math:`\kappa_i` is :math:`\max_c p_{ic}` unless ``confidence`` is given. For each distinct confidence
    :math:`t`, the samples with :math:`\kappa_i \ge t` are accepted:

    .. math::
        \mathrm{coverage}(t) = \frac{|\{i: \kappa_i \ge t\}|}{N},\qquad
        \mathrm{risk}(t) = \frac{|\{i: \kappa_i \ge t,\ \hat y_i \ne y_i\}|}{|\{i: \kappa_i \ge t\}|},\qquad
        \mathrm{generalized\ risk}(t) = \frac{|\{i: \kappa_i \ge t,\ \hat y_i \ne y_i\}|}{N}.

    Ties: samples of equal confidence are accepted or rejected together, so the curve has one point per
    distinct confidence (K points, K <= N), and it does not depend on the order of the samples. No point at
    coverage 0 is included (:func:`aurc` and :func:`augrc` say how they close the curve there).

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        confidence: optional ``(N,)`` floating, finite confidence scores (higher = more confident) to rank by
            instead of the maximum probability; the predictions stay the argmax of ``probs``.

    Returns:
        :class:`RiskCoverageCurve` ``(threshold, coverage, selective_risk, generalized_risk, count, errors)``,
        each ``(K,)``, ordered by decreasing threshold (increasing coverage); risks and coverage are float64
        fractions in ``[0, 1]``.

    Raises:
        ValueError: if ``probs`` / ``target`` fail :func:`ceexp.checks.check_probabilities`, or ``confidence``
            is not a finite floating ``(N,)`` tensor.

    References:
        El-Yaniv & Wiener (2010), "On the Foundations of Noise-free Selective Classification", JMLR (the
        risk-coverage curve); Geifman & El-Yaniv (2017), "Selective Classification for Deep Neural Networks",
        NeurIPS; Traub et al. (2024), "Overcoming Common Flaws in the Evaluation of Selective Classification
        Systems", NeurIPS (the generalized risk), and their ``fd_shifts.analysis.rc_stats_utils``, which also
        puts one point per distinct confidence.

    Example:
        Confidences 0.9 (right), 0.8 and 0.8 (one right, one wrong), 0.6 (wrong):

        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]])
        >>> curve = risk_coverage_curve(probs, torch.tensor([0, 0, 0, 1]))
        >>> curve.threshold
        tensor([0.9000, 0.8000, 0.6000])
        >>> curve.coverage
        tensor([0.2500, 0.7500, 1.0000], dtype=torch.float64)
        >>> curve.selective_risk
        tensor([0.0000, 0.3333, 0.5000], dtype=torch.float64)
        >>> curve.generalized_risk
        tensor([0.0000, 0.2500, 0.5000], dtype=torch.float64)
    """
    return _risk_coverage_compute(*_selective_inputs(probs, target, confidence))


def aurc(probs: Tensor, target: Tensor, confidence: Tensor | None = None) -> Tensor:
    r"""Area under the risk-coverage curve, AURC (lower is better), in ``[0, 1]``.

    .. math::
        \mathrm{AURC} = \int_0^1 \mathrm{risk}(c)\, dc,\qquad
        \mathrm{risk}(c) = \frac{E(c)}{c},

    where :math:`E(c)` is the fraction of all samples that are accepted and wrong at coverage :math:`c`. At the
    points of :func:`risk_coverage_curve` it is the generalized risk; between two points the next tied group is
    being accepted, and :math:`E` is taken linear in :math:`c` there: the expected error count when a random part
    of the group is accepted (breaking its ties at random). The integral is exact (a log term per group, see
    :func:`_aurc_compute`); below the first point the risk is that of the first group. The value is therefore the
    same for any order of the samples and any split of the ties, and no tie can do better than the oracle
    ranking (:func:`eaurc` >= 0).

    Without ties it is within O(log N / N) of Geifman et al.'s mean selective risk over the coverages
    ``1/N, ..., 1``. It equals fd-shifts' ``evaluate_auc(risk="selective-risk", interpolation="non-linear")``
    over all curve points (divided by fd-shifts' display scale 1000), not their default trapezoid, which rewards
    ties: a model that gives every right prediction one confidence and every wrong one a lower one gets a
    trapezoid of ``r^2 / 2`` (``r`` the error rate), below the oracle's ``r + (1 - r) ln(1 - r)``.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        confidence: optional ``(N,)`` floating, finite confidence scores to rank by instead of ``max_c p_c``.

    Returns:
        A 0-dim tensor, a fraction in ``[0, 1]`` (computed in float64): float32 for float16 or bfloat16 ``probs``,
        else ``probs``' dtype. 0 when every prediction is right, 1 when every one is wrong.

    Raises:
        ValueError: as :func:`risk_coverage_curve`.

    References:
        Geifman, Uziel & El-Yaniv (2019), "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers",
        ICLR, Sec. 2 (AURC, E-AURC); Traub et al. (2024), NeurIPS, Sec. 3 and Appendix (interpolation of the
        curve between its points, ``fd_shifts.analysis.rc_stats.RiskCoverageStatsMixin.evaluate_auc``).

    Example:
        Confidence 0.9 wrong, 0.8 right: risk 1 up to coverage 1/2, then 0.5 / c: 1/2 + ln(2)/2 = 0.8466.
        The other ranking (right above wrong): 0 then (c - 1/2) / c: 1/2 - ln(2)/2 = 0.1534, the oracle.

        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
        >>> aurc(probs, torch.tensor([1, 0]))
        tensor(0.8466, dtype=torch.float64)
        >>> aurc(probs, torch.tensor([0, 1]))
        tensor(0.1534, dtype=torch.float64)
    """
    confidence, correct = _selective_inputs(probs, target, confidence)
    curve = _risk_coverage_compute(confidence, correct)
    return _aurc_compute(curve.count, curve.errors).to(working_dtype(probs.dtype))


def eaurc(probs: Tensor, target: Tensor, confidence: Tensor | None = None) -> Tensor:
    r"""Excess AURC: :func:`aurc` minus the AURC of an oracle ranking of the same predictions (lower is better).

    The oracle puts every right prediction above every wrong one; with error rate
    :math:`r = 1 - \mathrm{accuracy}` its curve is 0 up to coverage :math:`1 - r` and :math:`(c - (1 - r)) / c`
    after, so

    .. math::
        \mathrm{E\text{-}AURC} = \mathrm{AURC} - \left(r + (1 - r) \ln(1 - r)\right)

    (:math:`0 \ln 0 = 0`). Geifman et al. give this closed form as the continuous limit of their discrete
    AURC; under the interpolation of :func:`aurc` it is exact, so a perfect ranking, tied or not, scores 0 (up
    to rounding, about 1e-16) and every ranking scores >= 0. The ranking quality apart from the accuracy.

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        confidence: optional ``(N,)`` floating, finite confidence scores to rank by instead of ``max_c p_c``.

    Returns:
        A 0-dim tensor, a fraction in ``[0, 1]`` (computed in float64): float32 for float16 or bfloat16 ``probs``,
        else ``probs``' dtype. 0 when every prediction is right or every one is wrong.

    Raises:
        ValueError: as :func:`risk_coverage_curve`.

    References:
        Geifman, Uziel & El-Yaniv (2019), "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers",
        ICLR, Sec. 2 (E-AURC and the optimal AURC ``r + (1 - r) ln(1 - r)``); fd-shifts'
        ``RiskCoverageStatsMixin.aurc_optimal`` uses the same closed form.

    Example:
        Ranking wrong above right (AURC 0.8466) against the oracle (0.1534): 0.6931 = ln 2; the oracle
        ranking itself: 0.

        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
        >>> eaurc(probs, torch.tensor([1, 0]))
        tensor(0.6931, dtype=torch.float64)
        >>> eaurc(probs, torch.tensor([0, 1])).abs() < 1e-15
        tensor(True)
    """
    confidence, correct = _selective_inputs(probs, target, confidence)
    curve = _risk_coverage_compute(confidence, correct)
    value = _aurc_compute(curve.count, curve.errors) - _oracle_aurc(curve.generalized_risk[-1])
    return value.to(working_dtype(probs.dtype))


def augrc(probs: Tensor, target: Tensor, confidence: Tensor | None = None) -> Tensor:
    r"""Area under the generalized risk-coverage curve, AUGRC (lower is better), in ``[0, 1/2]``.

    The generalized risk at coverage :math:`c` is the fraction of *all* samples that are accepted and wrong,
    :math:`E(c)` (the selective risk times the coverage): the AUGRC is the probability of a silent failure (a
    wrong prediction that is accepted), averaged over the coverages:

    .. math::
        \mathrm{AUGRC} = \int_0^1 E(c)\, dc
        = \sum_k \frac{E_{k-1} + E_k}{2} (c_k - c_{k-1}),\qquad (c_0, E_0) = (0, 0),

    over the points :math:`(c_k, E_k)` of :func:`risk_coverage_curve`. :math:`E` is linear within a tied group
    (the expected error count when a random part of the group is accepted), so the trapezoid is exact and the
    value does not depend on the order of the samples. This is the AUGRC of Traub et al.'s fd-shifts
    (``RiskCoverageStatsMixin.augrc``, divided by its display scale 1000), ties included. The oracle ranking
    scores :math:`r^2 / 2` (:math:`r` the error rate).

    Args:
        probs: ``(N, C)`` floating class probabilities (rows sum to 1).
        target: ``(N,)`` int64 class indices in ``[0, C)``.
        confidence: optional ``(N,)`` floating, finite confidence scores to rank by instead of ``max_c p_c``.

    Returns:
        A 0-dim tensor, a fraction in ``[0, 1/2]`` (computed in float64): float32 for float16 or bfloat16
        ``probs``, else ``probs``' dtype. 0 when every prediction is right, 1/2 when every one is wrong.

    Raises:
        ValueError: as :func:`risk_coverage_curve`.

    References:
        Traub, Bungert, Lüth, Baumgartner, Maier-Hein, Maier-Hein & Jaeger (2024), "Overcoming Common Flaws in
        the Evaluation of Selective Classification Systems", NeurIPS (arXiv:2407.01032), Sec. 4 (AUGRC);
        ``fd_shifts.analysis.rc_stats_utils.generalized_risk_stats``.

    Example:
        Confidence 0.9 wrong, 0.8 right: E = 1/2 from coverage 1/2 on, area 1/8 + 1/4 = 0.375. Right above
        wrong: E rises from 0 at coverage 1/2 to 1/2 at 1, area 1/8 = r^2 / 2.

        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
        >>> augrc(probs, torch.tensor([1, 0]))
        tensor(0.3750, dtype=torch.float64)
        >>> augrc(probs, torch.tensor([0, 1]))
        tensor(0.1250, dtype=torch.float64)
    """
    confidence, correct = _selective_inputs(probs, target, confidence)
    curve = _risk_coverage_compute(confidence, correct)
    return _augrc_compute(curve.count, curve.errors).to(working_dtype(probs.dtype))


def _aurc_tag(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    return aurc(probs, target)


def _eaurc_tag(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    return eaurc(probs, target)


def _augrc_tag(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    return augrc(probs, target)


SELECTIVE_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "aurc": _aurc_tag,
    "eaurc": _eaurc_tag,
    "augrc": _augrc_tag,
}
"""Tag -> ``f(probs (N, C), target (N,), n_bins=15) -> 0-dim tensor`` for the selective-classification metrics
(ranked by the top-label confidence; ``n_bins`` ignored), the signature of :data:`METRIC_FUNCTIONS`. Kept apart
from it because ``METRIC_FUNCTIONS`` lists exactly what ``ceexp.module.EvalMetrics`` logs."""

__all__ += ["SELECTIVE_FUNCTIONS", "RiskCoverageCurve", "aurc", "augrc", "eaurc", "risk_coverage_curve"]
