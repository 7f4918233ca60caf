"""Post-hoc calibrators: fitted on held-out (validation) logits, applied to test logits.

Six methods, named as ``calibration=[...]`` names them (:data:`CALIBRATORS`):

===========  ============================  ===========================================================  ==========
name         class                         map (``z``: logits, ``p = softmax(z)``)                      argmax
===========  ============================  ===========================================================  ==========
temperature  :class:`TemperatureScaler`    ``softmax(z / T)`` (Guo et al. 2017, Sec. 4.2)               kept
vector       :class:`VectorScaler`         ``softmax(w * z + b)``, ``w, b`` in R^C (Guo et al.)         may change
matrix       :class:`MatrixScaler`         ``softmax(W z + b)``, ODIR (Kull et al. 2019)                may change
dirichlet    :class:`DirichletCalibrator`  ``softmax(W ln p + b)``, ODIR (Kull et al. 2019)             may change
histogram    :class:`HistogramBinner`      equal-width bins of each ``p_c`` (Zadrozny & Elkan 2001)     may change
isotonic     :class:`IsotonicCalibrator`   isotonic regression of each ``p_c`` (Zadrozny & Elkan 2002)  may change
===========  ============================  ===========================================================  ==========

The last two map each class one-vs-rest and renormalise the row.

The common interface (:class:`Calibrator`): ``fit(logits (N, C) float, target (N,) int64) -> self``;
``log_probs(logits) -> (N, C) float32`` calibrated log-probabilities (nats), so that ``softmax`` (or ``exp``) of
them is the calibrated distribution and any code taking logits (``F.cross_entropy``, ``softmax`` then a metric)
takes them unchanged; a class attribute ``keeps_argmax`` (``True`` only where every fitted map keeps the arg-max,
so accuracy too); ``min_samples(n_classes)`` and ``needs_every_class``, the size a validation split needs
(:func:`fit_calibrators` skips a method it cannot fit). Calling a calibrator returns ``log_probs(logits)``, except
:class:`TemperatureScaler`, whose call keeps returning ``logits / T`` in the logits' dtype (its older API; the
softmax of either is the same distribution).

One-logit (binary) models: every calibrator accepts logits of shape ``(N, 1)``, a single logit ``z`` with class
probabilities ``[1 - sigmoid(z), sigmoid(z)]``, by turning them into the two-column logits ``[0, z]`` first
(:func:`two_column_logits`); ``log_probs`` of ``(N, 1)`` logits is ``(N, 2)``. Targets are then 0 or 1.

Zero probabilities: histogram binning and isotonic regression can map a probability to exactly 0 (an empty
neighbourhood of positives), which would make the NLL infinite. Their rows are normalised, floored at
:data:`PROB_FLOOR` (1e-7) and renormalised (:func:`floor_probabilities`), so every calibrated probability is at
least ``1e-7 / (1 + C 1e-7)`` and the NLL of a sample at most ``ln(1e7) + ln(1 + C 1e-7)``, 16.12 nats for C up to
1000. The one-vs-rest rows are renormalised in any case (they need not sum to 1).
The parametric maps give ``log_softmax`` of finite scores, never ``-inf``.

Temperature scaling has two fitting criteria (``TemperatureScaler(method=...)``):

* ``"nll"`` (Guo et al.): the T > 0 minimising the mean negative log-likelihood, found over log T by L-BFGS.
* ``"ece_grid"`` (Mukhoti et al. 2020, "Calibrating Deep Neural Networks using Focal Loss", NeurIPS; their
  released code, torrvision/focal_calibration ``temperature_scaling.py``, ``set_temperature(...,
  cross_validate='ece')``): the T of :data:`ECE_GRID` (0.1, 0.2, ..., 10.0) with the least validation ECE
  (15 equal-width bins), the first such T on a tie.

Since dividing by a positive number keeps the argmax, accuracy is unchanged while confidence (and so
calibration) moves.

Dtypes: every ``fit`` works on a float64 CPU copy of the logits whatever their dtype (float16 and bfloat16
included); ``log_probs`` computes in float64 and returns float32 on the logits' device. ``TemperatureScaler``
called on logits returns ``logits / T`` in the logits' own dtype.

Sources: C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks", ICML 2017;
M. Kull, M. Perello-Nieto, M. Kängsepp, T. Silva Filho, H. Song, P. Flach, "Beyond temperature scaling:
Obtaining well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS 2019 (and their released
code, dirichletcal/dirichlet_python and dirichletcal/experiments_dnn); B. Zadrozny, C. Elkan, "Obtaining
calibrated probability estimates from decision trees and naive Bayesian classifiers", ICML 2001, and
"Transforming classifier scores into accurate multiclass probability estimates", KDD 2002.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceexp.checks import check_choice, check_classification_inputs, check_positive_int
from ceexp.metrics import METRIC_FUNCTIONS, bin_edges, expected_calibration_error, nats_to_bits

__all__ = [
    "CALIBRATED_METRICS",
    "CALIBRATORS",
    "ECE_GRID",
    "METHODS",
    "ODIR_GRID",
    "PROB_FLOOR",
    "Calibrator",
    "DirichletCalibrator",
    "HistogramBinner",
    "IsotonicCalibrator",
    "MatrixScaler",
    "TemperatureScaler",
    "UnfittableSplitError",
    "VectorScaler",
    "calibrated_log_probs",
    "calibrated_metrics",
    "fit_calibrators",
    "floor_probabilities",
    "two_column_logits",
    "unfit_reason",
]

log = logging.getLogger(__name__)

METHODS = ("nll", "ece_grid")

#: The temperatures ``method="ece_grid"`` tries, in order: 0.1, 0.2, ..., 10.0 (100 values). Mukhoti et al.'s
#: ``temperature_scaling.py`` (lines 73-86) starts at ``T = 0.1`` and adds 0.1 a hundred times, so its T drift
#: from the decimals (0.30000000000000004, 0.7999999999999999, ...); here T number k is the float nearest k / 10.
ECE_GRID: tuple[float, ...] = tuple(k / 10 for k in range(1, 101))


#: The least probability :class:`HistogramBinner` and :class:`IsotonicCalibrator` give a class before the rows are
#: renormalised (:func:`floor_probabilities`): exact zeros would make the NLL infinite.
PROB_FLOOR = 1e-7


class UnfittableSplitError(ValueError):
    """A calibrator's ``fit`` was given a validation split it cannot fit: fewer samples than
    ``min_samples(C)``, a class absent where ``needs_every_class``, or an optimum that is not finite. The message is
    one line; :func:`fit_calibrators` reports it as the method's skip reason."""


def two_column_logits(logits: Tensor) -> Tensor:
    """Logits of a one-logit (binary) model, ``(N, 1)``, as two-column logits ``[0, z]`` ``(N, 2)``, whose softmax
    is ``[1 - sigmoid(z), sigmoid(z)]``; any other tensor is returned as it is. Same dtype and device.

    Example:
        >>> two_column_logits(torch.tensor([[2.0], [-1.0]]))
        tensor([[ 0.,  2.],
                [ 0., -1.]])
    """
    if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def floor_probabilities(probs: Tensor, floor: float = PROB_FLOOR) -> Tensor:
    """Normalise each row of non-negative scores ``(N, C)`` to sum 1 (a row of zeros becomes uniform), raise every
    entry to at least ``floor``, and normalise again. Same dtype (use float64) and device.

    Each result is then at least ``floor / (1 + C floor)``, so ``-log`` of it is finite (16.12 nats at most for
    ``floor = 1e-7`` and C up to 1000).

    Example:
        >>> floor_probabilities(torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64), floor=0.1)
        tensor([[0.6818, 0.2273, 0.0909],
                [0.3333, 0.3333, 0.3333]], dtype=torch.float64)
    """
    total = probs.sum(dim=1, keepdim=True)
    uniform = torch.full_like(probs, 1.0 / probs.shape[1])
    normalised = torch.where(total > 0, probs / torch.where(total > 0, total, 1.0), uniform)
    floored = normalised.clamp_min(floor)
    return floored / floored.sum(dim=1, keepdim=True)


def _check_logits(logits: Any, n_classes: int | None, who: str) -> Tensor:
    """``logits`` ``(N, C)`` or ``(N, 1)`` floating and finite, as two-column logits; ``C`` must be ``n_classes`` (the
    fitted width) unless ``None``. Raises ``ValueError`` naming what is wrong, ``RuntimeError`` before ``fit``."""
    if n_classes is None:
        raise RuntimeError(f"{who}: call `fit` on validation logits before calibrating")
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected `logits` to have shape (N, C) or (N, 1), but got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"Expected `logits` to be a floating tensor, but got dtype {logits.dtype}")
    z = two_column_logits(logits)
    if z.shape[1] != n_classes:
        raise ValueError(f"Expected `logits` with C={n_classes} columns (or 1 when C=2), as {who} was fitted on, "
                         f"but got shape {tuple(logits.shape)}")
    if z.numel() and not torch.isfinite(z).all():
        raise ValueError("Expected `logits` to be finite, but it contains NaN or inf")
    return z


def unfit_reason(calibrator: Calibrator, target: Tensor, n_classes: int) -> str | None:
    """Why ``calibrator`` cannot be fitted on a validation split with labels ``target`` ``(N,)`` int64 of
    ``n_classes`` classes: one line, or ``None`` when it can.

    The rules: at least ``calibrator.min_samples(n_classes)`` samples (its parameters, as each class documents),
    and every class present when ``calibrator.needs_every_class``.

    Example:
        >>> unfit_reason(VectorScaler(), torch.tensor([0, 1, 1]), 2)
        '3 validation samples, fewer than the 4 that vector scaling needs (its parameters: 2 per class, C = 2)'
        >>> unfit_reason(HistogramBinner(n_bins=1), torch.tensor([0, 0, 0, 2]), 3)
        'class 1 is absent from the validation split (histogram binning fits every class one-vs-rest)'
        >>> unfit_reason(TemperatureScaler(), torch.tensor([0, 0]), 3) is None
        True
    """
    n = int(target.numel())
    need = calibrator.min_samples(n_classes)
    if n < need:
        return (f"{n} validation samples, fewer than the {need} that {calibrator.title} needs "
                f"(its parameters: {calibrator.min_samples_rule}, C = {n_classes})")
    if calibrator.needs_every_class:
        counts = torch.bincount(target.detach().cpu(), minlength=n_classes)
        absent = (counts == 0).nonzero().flatten().tolist()
        if absent:
            which = f"class {absent[0]} is" if len(absent) == 1 else f"classes {absent} are"
            return f"{which} absent from the validation split ({calibrator.title} {calibrator.every_class_why})"
    return None


class Calibrator:
    """The interface of every post-hoc calibrator (:class:`TemperatureScaler` implements it on its own), and the
    steps the other five share.

    A subclass sets the class attributes and implements ``_fit(z, y)`` and ``_log_probs(z)`` on float64 CPU
    two-column logits ``z`` ``(N, C)`` and int64 labels ``y`` ``(N,)``; :meth:`fit` and :meth:`log_probs` check
    the inputs, turn ``(N, 1)`` logits into ``[0, z]`` (:func:`two_column_logits`), and convert dtypes and devices.

    Attributes:
        keeps_argmax: ``True`` when the fitted map never changes a sample's arg-max (so accuracy is unchanged).
        needs_every_class: whether :meth:`fit` needs every class among the validation labels.
        title: the method's name in messages.
        min_samples_rule: how :meth:`min_samples` counts, in words.
        n_classes: the C fitted on (2 for one-logit models); ``None`` before :meth:`fit`.
    """

    keeps_argmax: ClassVar[bool] = False
    needs_every_class: ClassVar[bool] = True
    title: ClassVar[str] = "calibrator"
    min_samples_rule: ClassVar[str] = ""
    every_class_why: ClassVar[str] = "needs every class"
    n_classes: int | None = None

    def min_samples(self, n_classes: int) -> int:
        """The fewest validation samples :meth:`fit` accepts for ``n_classes`` classes."""
        raise NotImplementedError

    def fit(self, logits: Tensor, target: Tensor) -> Calibrator:
        """Fit on validation logits; return ``self``.

        Args:
            logits: ``(N, C)`` floating logits (or ``(N, 1)`` one-logit), any dtype and device; not modified.
            target: ``(N,)`` int64 class indices in ``[0, C)`` (``[0, 2)`` for ``(N, 1)`` logits).

        Raises:
            ValueError: if ``logits`` / ``target`` fail :func:`ceexp.checks.check_classification_inputs`.
            UnfittableSplitError: (a ``ValueError``) if :func:`unfit_reason` gives a reason, or the fit diverges.
        """
        z = two_column_logits(logits)
        check_classification_inputs(z, target, input_name="logits")
        z = z.detach().to(device="cpu", dtype=torch.float64)
        y = target.detach().cpu()
        reason = unfit_reason(self, y, z.shape[1])
        if reason is not None:
            raise UnfittableSplitError(f"{self.title}: {reason}")
        self._fit(z, y)
        self.n_classes = z.shape[1]
        return self

    def log_probs(self, logits: Tensor) -> Tensor:
        """Calibrated log-probabilities (nats) of ``logits`` ``(N, C)`` or ``(N, 1)``: ``(N, C)`` (``(N, 2)``)
        float32 on the logits' device, computed in float64; ``softmax`` of them is the calibrated distribution.

        Raises:
            RuntimeError: before :meth:`fit`.
            ValueError: if ``logits`` is not 2-D, floating and finite with the fitted number of columns.
        """
        z = _check_logits(logits, self.n_classes, type(self).__name__)
        out = self._log_probs(z.detach().to(device="cpu", dtype=torch.float64))
        return out.to(device=logits.device, dtype=torch.float32)

    def __call__(self, logits: Tensor) -> Tensor:
        """:meth:`log_probs`."""
        return self.log_probs(logits)

    def _fit(self, z: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _log_probs(self, z: Tensor) -> Tensor:
        raise NotImplementedError


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a finite number > 0, but got {value!r}")


class TemperatureScaler(nn.Module, Calibrator):
    r"""Temperature scaling: ``forward(logits) = logits / T`` with T fitted by :meth:`fit`.

    The :class:`Calibrator` interface too: :meth:`log_probs` is ``log_softmax(logits / T)`` (float32),
    ``keeps_argmax`` is ``True``, and one sample is enough (one parameter; a class may be absent). One-logit
    models: ``fit`` and :meth:`log_probs` take ``(N, 1)`` logits as ``[0, z]``, so T scales ``z``
    (``sigmoid(z / T)``); calling the scaler on ``(N, 1)`` logits returns ``z / T``, ``(N, 1)``.

    **method="nll"** (the default). :meth:`fit` minimises the mean NLL (nats) of ``softmax(logits / T)`` over
    ``log T`` (so T stays positive) with L-BFGS and a strong-Wolfe line search, in float64 on detached CPU copies:

    .. math::
        T^* = \arg\min_{T > 0} \; \frac{1}{N} \sum_i \Big( \log \sum_c e^{z_{ic}/T} - z_{i y_i}/T \Big).

    The objective is convex in :math:`\beta = 1/T`, which gives two exact tests for an optimum that is not a
    finite positive T:

    * T → ∞ (or "negative"): the slope in β at β = 0, :math:`\frac{1}{N}\sum_i (\bar z_i - z_{iy_i})`, is >= 0,
      i.e. the true-class logit is on average no higher than the row mean. The logits are no better than chance
      or anti-correlated with the labels; the NLL keeps falling towards log C as T grows.
    * T → 0: no sample is misclassified (every true-class logit is a row maximum), so the NLL keeps falling
      towards 0 as T shrinks (a perfectly separated validation set).

    In both cases, and whenever the optimum found lies outside ``[t_min, t_max]`` or is not finite, T is set
    to the nearer bound and a ``UserWarning`` names the fitted value and the bound. The NLL is unimodal in
    log T, so the bound is the best T within ``[t_min, t_max]``; any positive T leaves the argmax, and so the
    accuracy, unchanged. Logits whose rows are constant make the NLL independent of T; T then stays 1.

    **method="ece_grid"** (Mukhoti et al. 2020; torrvision/focal_calibration ``temperature_scaling.py``,
    ``ModelWithTemperature.set_temperature`` with ``cross_validate='ece'``, the default of its ``evaluate.py``).
    :meth:`fit` evaluates the top-label ECE (:func:`ceexp.metrics.expected_calibration_error`, ``n_bins``
    equal-width bins ``(lo, hi]``, as their ``Metrics/metrics.py`` ``ECELoss``) of ``softmax(logits / T)`` for
    every T of :data:`ECE_GRID` in increasing order and keeps a T only when its ECE is strictly below the best so
    far (their ``if ece_val > after_temperature_ece``), so of tied temperatures the smallest wins; constant rows
    (ECE independent of T) give T = 0.1. The result always lies in ``[0.1, 10]``: ``t_min`` / ``t_max`` do not
    apply and nothing is clamped or warned about. Differences from the released code, which can change the pick
    only where two grid T have ECEs within float32 rounding (~1e-7) of each other: exact decimal T (see
    :data:`ECE_GRID`), float64 on the CPU (theirs: float32 on the GPU), and bin edges ``b / n_bins`` rounded
    once (theirs: float32 ``torch.linspace``).

    Cost: ``fit`` is one L-BFGS run ("nll") or 100 softmaxes of the ``(N, C)`` logits ("ece_grid"), in float64
    on the CPU; both take well under a second for CIFAR-100's 5,000 x 100 validation logits.

    Args:
        t_min: the smallest temperature :meth:`fit` returns with ``method="nll"`` (default 0.01).
        t_max: the largest temperature :meth:`fit` returns with ``method="nll"`` (default 100).
        method: ``"nll"`` or ``"ece_grid"``, the fitting criterion (above).
        n_bins: the number of equal-width ECE bins of ``method="ece_grid"`` (default 15, Mukhoti et al.'s).

    Attributes:
        temperature: the fitted T, a Python float > 0; 1.0 before :meth:`fit`. Saved in ``state_dict``.

    Raises:
        ValueError: if ``t_min`` or ``t_max`` is not a finite positive number, ``t_min > t_max``, ``method`` is
            not one of :data:`METHODS`, or ``n_bins`` is not a positive integer.

    Example:
        Three of four samples are class 0 with logits (3, 0): the NLL is least where sigmoid(3 / T) = 3/4,
        i.e. T = 3 / ln 3.

        >>> scaler = TemperatureScaler().fit(torch.tensor([[3.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
        >>> round(scaler.temperature, 4)
        2.7307
        >>> scaler(torch.tensor([[3.0, 0.0]]))
        tensor([[1.0986, 0.0000]])

        On the grid, the ECE is |3/4 - sigmoid(3 / T)|, least (0.0023) at T = 2.7, the grid point nearest 2.7307:

        >>> TemperatureScaler(method="ece_grid").fit(torch.tensor([[3.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
        TemperatureScaler(temperature=2.7, method='ece_grid', n_bins=15)
    """

    keeps_argmax: ClassVar[bool] = True
    needs_every_class: ClassVar[bool] = False
    title: ClassVar[str] = "temperature scaling"
    min_samples_rule: ClassVar[str] = "one temperature"

    def __init__(self, t_min: float = 0.01, t_max: float = 100.0, method: str = "nll", n_bins: int = 15) -> None:
        super().__init__()
        _check_positive_float("t_min", t_min)
        _check_positive_float("t_max", t_max)
        if t_min > t_max:
            raise ValueError(f"Expected argument `t_min` <= `t_max`, but got t_min={t_min!r} > t_max={t_max!r}")
        check_choice("method", method, METHODS)
        check_positive_int("n_bins", n_bins)
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.method = method
        self.n_bins = n_bins
        self.temperature = 1.0

    def forward(self, logits: Tensor) -> Tensor:
        """Return ``logits / T``: any shape, same dtype and device.

        Raises:
            ValueError: if ``logits`` is not a floating tensor.
        """
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            got = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"Expected `logits` to be a floating tensor, but got {got}")
        return logits / self.temperature

    def min_samples(self, n_classes: int) -> int:
        """1: one temperature, whatever ``n_classes``."""
        return 1

    def log_probs(self, logits: Tensor) -> Tensor:
        """``log_softmax(logits / T)``: ``(N, C)`` float32 (``(N, 2)`` for ``(N, 1)`` logits, as ``[0, z]``) on the
        logits' device, computed in float64. Any C, fitted or not (T = 1 before :meth:`fit`).

        Raises:
            ValueError: if ``logits`` is not a 2-D finite floating tensor.
        """
        width = logits.shape[1] if isinstance(logits, Tensor) and logits.ndim == 2 else -1  # -1: refused below
        z = _check_logits(logits, 2 if width == 1 else width, type(self).__name__)
        out = torch.log_softmax(z.detach().to(device="cpu", dtype=torch.float64) / self.temperature, dim=1)
        return out.to(device=logits.device, dtype=torch.float32)

    def fit(self, logits: Tensor, target: Tensor, max_iter: int = 100) -> TemperatureScaler:
        """Fit T on held-out logits by the scaler's ``method`` (least NLL, or least ECE on the grid); return ``self``.

        Args:
            logits: ``(N, C)`` floating, unnormalised scores (not probabilities), any device; not modified. ``(N, 1)``
                one-logit scores are taken as ``[0, z]``.
            target: ``(N,)`` int64 class indices in ``[0, C)``.
            max_iter: the most L-BFGS iterations (``method="nll"`` only).

        Returns:
            ``self``, with :attr:`temperature` set to a float in ``[t_min, t_max]`` ("nll") or to an element
            of :data:`ECE_GRID` ("ece_grid").

        Raises:
            ValueError: if ``max_iter`` is not a positive integer or ``logits`` / ``target`` fail
                :func:`ceexp.checks.check_classification_inputs`.

        Warns:
            UserWarning: if ``logits`` look like probabilities (all in [0, 1], rows summing to 1), or (``"nll"``)
                the optimum is not a finite T in ``[t_min, t_max]`` (T is then clamped; see the class docstring).
        """
        check_positive_int("max_iter", max_iter)
        logits = two_column_logits(logits)
        check_classification_inputs(logits, target, input_name="logits")
        self.n_classes = logits.shape[1]
        z = logits.detach().to(device="cpu", dtype=torch.float64)
        y = target.detach().cpu()
        if z.min() >= 0 and z.max() <= 1 and ((z.sum(dim=1) - 1).abs() <= 1e-4).all():
            warnings.warn(
                "TemperatureScaler.fit expects logits, but every row of `logits` is a probability vector "
                "(values in [0, 1] summing to 1); pass the model's pre-softmax outputs",
                UserWarning,
                stacklevel=2,
            )
        if self.method == "ece_grid":
            self.temperature = _ece_grid_temperature(z, y, self.n_bins)
            return self

        true_logit = z.gather(1, y[:, None]).squeeze(1)
        misclassified = (z.max(dim=1).values > true_logit).any()
        slope_at_zero = (z.mean(dim=1) - true_logit).mean()  # d NLL / d(1/T) at 1/T = 0
        flat = bool((z == z[:, :1]).all())
        if flat:
            self.temperature = 1.0  # the NLL does not depend on T
            return self
        if slope_at_zero >= 0:
            self._clamp(math.inf, "the NLL keeps falling as T grows: the logits are no better than chance "
                                  "or anti-correlated with the labels")
            return self
        if not misclassified:
            self._clamp(0.0, "the NLL keeps falling as T shrinks: every validation sample is classified "
                             "correctly (perfectly separated)")
            return self

        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z * torch.exp(-log_t), y)  # multiply by 1/T: no inf / inf at extreme T
            loss.backward()
            return loss

        optimizer.step(closure)
        fitted = math.exp(log_t.item()) if math.isfinite(log_t.item()) else math.nan
        if not math.isfinite(fitted) or not self.t_min <= fitted <= self.t_max:
            reason = "the optimum lies outside the allowed range" if math.isfinite(fitted) else "it diverged"
            self._clamp(fitted, reason)
        else:
            self.temperature = fitted
        return self

    def _clamp(self, fitted: float, reason: str) -> None:
        """Set T to the bound nearest ``fitted`` (``t_max`` for NaN) and warn."""
        if fitted < self.t_min:
            bound, name = self.t_min, "t_min"
        else:  # above t_max, or NaN: a large T is the harmless choice (it only softens)
            bound, name = self.t_max, "t_max"
        warnings.warn(
            "Temperature scaling: the NLL-optimal T is not a finite value in "
            f"[t_min={self.t_min:g}, t_max={self.t_max:g}] "
            f"(fitted T = {fitted:g}; {reason}); T is clamped to `{name}` = {bound:g}. "
            "Accuracy is unchanged by any positive T.",
            UserWarning,
            stacklevel=3,
        )
        self.temperature = bound

    def extra_repr(self) -> str:
        if self.method == "ece_grid":
            return f"temperature={self.temperature:.6g}, method='ece_grid', n_bins={self.n_bins}"
        return f"temperature={self.temperature:.6g}, t_min={self.t_min:g}, t_max={self.t_max:g}"

    def get_extra_state(self) -> dict:
        return {"temperature": self.temperature}

    def set_extra_state(self, state: dict) -> None:
        self.temperature = float(state["temperature"])


def _ece_grid_temperature(z: Tensor, y: Tensor, n_bins: int) -> float:
    """The first T of :data:`ECE_GRID` with the least ECE of ``softmax(z / T)``.

    ``z``: ``(N, C)`` float64 logits; ``y``: ``(N,)`` int64 targets; ``n_bins`` equal-width bins.

    Mirrors the loop of Mukhoti et al.'s ``temperature_scaling.py`` (lines 69-91): start from T = 1 and an ECE of
    10^7, replace them whenever a grid T gives a strictly smaller ECE.
    """
    best_t, best_ece = 1.0, 10.0**7
    for t in ECE_GRID:
        ece = expected_calibration_error(torch.softmax(z / t, dim=1), y, n_bins=n_bins).item()
        if ece < best_ece:  # strict: on a tie the smaller T, met first, stays
            best_t, best_ece = t, ece
    return best_t


# ---------------------------------------------------------------------------------------------------------
# Parametric maps fitted by NLL: vector scaling, matrix scaling and Dirichlet calibration

#: The ODIR strengths (lambda, and mu unless set) that :class:`MatrixScaler` and :class:`DirichletCalibrator`
#: choose from by cross-validation when ``reg_lambda`` is ``None``: 10^-4 ... 100 in the normalised form of Kull et
#: al. (the mean squared off-diagonal weight and mean squared intercept are penalised; see :class:`MatrixScaler`).
ODIR_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

# Dirichlet calibration's ln p: p clipped to [eps, 1 - eps] with eps the float64 machine epsilon, as the released
# Keras layer does (dirichletcal/experiments_dnn, calibration/cal_methods.py, Dirichlet_NN._logFunc)
_DIRICHLET_EPS = float(np.finfo(np.float64).eps)


def _minimise(params: list[Tensor], objective, max_iter: int, title: str) -> None:
    """Minimise ``objective()`` (a float64 scalar) over ``params`` in place: L-BFGS, strong-Wolfe line search.

    Raises:
        UnfittableSplitError: if the parameters or the objective end non-finite.
    """
    # stops at a largest |gradient| of 1e-7 or a step changing the loss or a parameter by < 1e-10: within ~1e-4 of
    # the optimum's probabilities (tested against scipy), at a third of the evaluations of 1e-9 / 1e-12
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        finite = math.isfinite(float(objective())) and all(bool(torch.isfinite(p).all()) for p in params)
    if not finite:
        raise UnfittableSplitError(f"{title}: the fit diverged (non-finite parameters or NLL)")


class VectorScaler(Calibrator):
    r"""Vector scaling (Guo et al. 2017, Sec. 4.2): ``softmax(w * z + b)``, one scale ``w_c`` and one bias ``b_c``
    per class, fitted on validation logits by the mean NLL (nats), unregularised:

    .. math::
        (w^*, b^*) = \arg\min_{w, b \in \mathbb{R}^C} \frac{1}{N} \sum_i
                     -\log \operatorname{softmax}(w \odot z_i + b)_{y_i}

    by L-BFGS (strong-Wolfe line search) in float64 from ``w = 1, b = 0`` (the start of Kull et al.'s released
    ``VectorScaling``, experiments_dnn ``cal_methods.py``). Different scales and biases per class can reorder the
    classes, so the arg-max, and accuracy, may change (``keeps_argmax = False``). On ``(N, 1)`` logits ``[0, z]``
    this is Platt scaling: ``sigmoid(w_1 z + b_1 - b_0)``.

    Needs ``2 C`` samples (its parameters) and every class (an absent class's bias would fall without bound). A
    perfectly separated validation split has no finite optimum either; the fit then stops after ``max_iter``
    L-BFGS iterations with large finite weights.

    Args:
        max_iter: the most L-BFGS iterations (default 500).

    Attributes:
        weight, bias: ``(C,)`` float64, the fitted ``w`` and ``b``; ``None`` before :meth:`fit`.

    Example:
        Class 1 is right 3 times in 4 at logits (0, 0) and never at (0, -30): the bias gives it log-odds ln 3.

        >>> z, y = torch.tensor([[0.0, 0.0]] * 4 + [[0.0, -30.0]]), torch.tensor([1, 1, 1, 0, 0])
        >>> VectorScaler().fit(z, y).log_probs(torch.zeros(1, 2)).exp()
        tensor([[0.2500, 0.7500]])
    """

    keeps_argmax: ClassVar[bool] = False
    title: ClassVar[str] = "vector scaling"
    min_samples_rule: ClassVar[str] = "2 per class"
    every_class_why: ClassVar[str] = "has no finite bias for a class never seen"

    def __init__(self, max_iter: int = 500) -> None:
        check_positive_int("max_iter", max_iter)
        self.max_iter = max_iter
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def min_samples(self, n_classes: int) -> int:
        """``2 C``: a scale and a bias per class."""
        return 2 * n_classes

    def _fit(self, z: Tensor, y: Tensor) -> None:
        c = z.shape[1]
        w = torch.ones(c, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        _minimise([w, b], lambda: F.cross_entropy(z * w + b, y), self.max_iter, self.title)
        self.weight, self.bias = w.detach(), b.detach()

    def _log_probs(self, z: Tensor) -> Tensor:
        return torch.log_softmax(z * self.weight + self.bias, dim=1)

    def __repr__(self) -> str:
        return f"VectorScaler(max_iter={self.max_iter})"


def _odir_fit(x: Tensor, y: Tensor, reg_lambda: float, reg_mu: float, max_iter: int, title: str,
              start: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The ODIR-regularised multinomial logistic regression of :class:`MatrixScaler` on features ``x`` ``(N, C)``
    float64: ``(W (C, C), b (C,))`` minimising the objective there, from ``start`` (default ``W = I, b = 0``)."""
    c = x.shape[1]
    w0, b0 = start if start is not None else (torch.eye(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    off_diagonal = 1.0 - torch.eye(c, dtype=torch.float64)

    def objective() -> Tensor:
        nll = F.cross_entropy(x @ w.T + b, y)
        return (nll + reg_lambda / (c * (c - 1)) * (w * off_diagonal).square().sum()
                + reg_mu / c * b.square().sum())

    _minimise([w, b], objective, max_iter, title)
    return w.detach(), b.detach()


class MatrixScaler(Calibrator):
    r"""Matrix scaling with ODIR, "MS-ODIR" (Kull et al. 2019, Sec. 3-4): ``softmax(W f(z) + b)`` with a full
    ``C x C`` matrix ``W`` and ``C`` intercepts ``b`` on features ``f(z) = z``, the logits (Guo et al. 2017's
    matrix scaling), fitted by the mean NLL plus Off-Diagonal and Intercept Regularisation:

    .. math::
        \frac{1}{N} \sum_i -\log \operatorname{softmax}(W f(z_i) + b)_{y_i}
        + \frac{\lambda}{C (C - 1)} \sum_{i \ne j} W_{ij}^2 + \frac{\mu}{C} \sum_j b_j^2 .

    The diagonal is not penalised, so strong ODIR leaves a per-class scaling. This is the normalised form of the
    paper (Sec. 3, "ODIR"), also ``reg_norm=True`` of dirichletcal/dirichlet_python's ``MultinomialRegression``
    ``_objective``; the released Keras layers (experiments_dnn ``Dirichlet_NN``) add the plain sums
    ``lambda sum W_ij^2 + mu sum b_j^2``, i.e. their lambda is ours over ``C (C - 1)``. Like both, the fit starts
    at ``W = I, b = 0`` and penalises the full matrix (the reference-row reparametrisation of dirichlet_python is
    not used). L-BFGS in float64; the objective is convex, strictly so for ``lambda, mu > 0``.

    Choosing lambda and mu: with ``reg_lambda=None`` (the default) lambda is the value of ``grid`` with the least
    ``n_folds``-fold cross-validated NLL on the validation split (sklearn ``KFold``, shuffled with ``seed``; the
    first of tied values), then ``W, b`` are refitted on the whole split; Kull et al. cross-validate both over
    powers of ten too (5 folds). Each fold walks the grid in order, each fit starting from the previous one's
    optimum, and stops after ``cv_max_iter`` L-BFGS iterations (enough to rank the lambdas; the final fit runs to
    ``max_iter``). ``reg_mu=None`` sets mu = lambda, as the released ``Dirichlet_NN`` does when its
    ``mu`` is not given (there with the same unnormalised value); a number fixes mu. The values used are
    :attr:`fitted_lambda` and :attr:`fitted_mu`, the cross-validated NLL of each grid value :attr:`cv_nll`.

    Cost: one L-BFGS fit per grid value and fold plus one, each a ``(N, C) x (C, C)`` product per step: about a
    second in all for C = 10 and N = 5,000 on one CPU core; for C = 100 the fits need hundreds of steps (ln p
    features make Dirichlet's the slowest) and the defaults take minutes, so fix ``reg_lambda`` or lower
    ``n_folds`` / ``grid`` there.

    ``keeps_argmax = False``: a full matrix reorders classes. Needs every class and ``2 C`` samples: ODIR shrinks
    the ``C (C - 1)`` off-diagonal weights, by as much as cross-validation asks, so the parameters the split must
    hold up are the ``C`` diagonal weights and ``C`` intercepts, as in vector scaling (Kull et al. fit it on
    CIFAR-100's 5,000 validation samples, ``C (C + 1)`` = 10,100 parameters).

    Args:
        reg_lambda: lambda >= 0, or ``None`` to cross-validate it over ``grid``.
        reg_mu: mu >= 0, or ``None`` for mu = lambda.
        grid: the lambdas to cross-validate, positive (default :data:`ODIR_GRID`); a repeated value is tried once.
        n_folds: the folds of the cross-validation, >= 2 (fewer when N is smaller).
        max_iter: the most L-BFGS iterations of the final fit (default 500).
        cv_max_iter: the most L-BFGS iterations of each cross-validation fit (default 100).
        seed: the shuffling seed of the folds.

    Attributes:
        weight: ``(C, C)`` float64 ``W``; bias: ``(C,)`` float64 ``b``; ``None`` before :meth:`fit`.
        fitted_lambda, fitted_mu: the lambda and mu of the final fit.
        cv_nll: ``{lambda: mean held-out NLL (nats)}`` over ``grid``; empty when ``reg_lambda`` is given.

    Raises:
        ValueError: on a negative or non-finite ``reg_lambda`` / ``reg_mu``, an empty or non-positive ``grid``,
            ``n_folds < 2`` or a non-positive ``max_iter`` / ``cv_max_iter``.

    Example:
        Four samples with logits (1, 0), three of them class 0: softmax gives (0.7311, 0.2689); unregularised, the
        fit reaches the frequencies (3/4, 1/4).

        >>> z, y = torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1])
        >>> MatrixScaler(reg_lambda=0.0, reg_mu=0.0).fit(z, y).log_probs(z[:1]).exp()
        tensor([[0.7500, 0.2500]])
    """

    keeps_argmax: ClassVar[bool] = False
    title: ClassVar[str] = "matrix scaling"
    min_samples_rule: ClassVar[str] = "2 per class not shrunk by ODIR, the diagonal and the intercepts"
    every_class_why: ClassVar[str] = "needs every class among the validation labels"

    def __init__(self, reg_lambda: float | None = None, reg_mu: float | None = None,
                 grid: Sequence[float] = ODIR_GRID, n_folds: int = 5, max_iter: int = 500, cv_max_iter: int = 100,
                 seed: int = 0) -> None:
        for name, value in (("reg_lambda", reg_lambda), ("reg_mu", reg_mu)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"Expected argument `{name}` to be None or a finite number >= 0, but got {value!r}")
        if not grid:
            raise ValueError(f"Expected argument `grid` to be a non-empty sequence of numbers > 0, but got {grid!r}")
        for value in grid:
            _check_positive_float("grid", value)
        if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
            raise ValueError(f"Expected argument `n_folds` to be an integer >= 2, but got {n_folds!r}")
        check_positive_int("max_iter", max_iter)
        check_positive_int("cv_max_iter", cv_max_iter)
        self.reg_lambda, self.reg_mu = reg_lambda, reg_mu
        self.grid = tuple(dict.fromkeys(float(v) for v in grid))  # a repeated value is tried once, where it first is
        self.n_folds, self.max_iter, self.cv_max_iter, self.seed = n_folds, max_iter, cv_max_iter, seed
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.fitted_lambda: float | None = None
        self.fitted_mu: float | None = None
        self.cv_nll: dict[float, float] = {}

    def min_samples(self, n_classes: int) -> int:
        """``2 C``: the diagonal and the intercepts (the off-diagonal weights are held by ODIR)."""
        return 2 * n_classes

    def _features(self, z: Tensor) -> Tensor:
        """``f(z)``: the logits themselves."""
        return z

    def _mu(self, reg_lambda: float) -> float:
        return reg_lambda if self.reg_mu is None else float(self.reg_mu)

    def _fit(self, z: Tensor, y: Tensor) -> None:
        x = self._features(z)
        self.cv_nll = {}
        reg_lambda = self.reg_lambda
        if reg_lambda is None:
            self.cv_nll = self._cross_validate(x, y)
            reg_lambda = min(self.cv_nll, key=self.cv_nll.get)  # the first of tied minima, in grid order
        self.fitted_lambda, self.fitted_mu = float(reg_lambda), self._mu(reg_lambda)
        self.weight, self.bias = _odir_fit(x, y, self.fitted_lambda, self.fitted_mu, self.max_iter, self.title)

    def _cross_validate(self, x: Tensor, y: Tensor) -> dict[float, float]:
        """``{lambda: held-out NLL summed over the folds / N}``; each fold walks the grid warm-started."""
        from sklearn.model_selection import KFold

        n = x.shape[0]
        folds = KFold(n_splits=min(self.n_folds, n), shuffle=True, random_state=self.seed).split(np.arange(n))
        total = dict.fromkeys(self.grid, 0.0)
        for train, held in folds:
            train, held = torch.from_numpy(train), torch.from_numpy(held)
            start = None
            for reg_lambda in self.grid:
                start = _odir_fit(x[train], y[train], reg_lambda, self._mu(reg_lambda), self.cv_max_iter,
                                  self.title, start)
                w, b = start
                total[reg_lambda] += float(F.cross_entropy(x[held] @ w.T + b, y[held], reduction="sum"))
        return {reg_lambda: value / n for reg_lambda, value in total.items()}

    def _log_probs(self, z: Tensor) -> Tensor:
        return torch.log_softmax(self._features(z) @ self.weight.T + self.bias, dim=1)

    def __repr__(self) -> str:
        fitted = ("" if self.fitted_lambda is None
                  else f", fitted_lambda={self.fitted_lambda:g}, fitted_mu={self.fitted_mu:g}")
        return (f"{type(self).__name__}(reg_lambda={self.reg_lambda!r}, reg_mu={self.reg_mu!r}, "
                f"n_folds={self.n_folds}{fitted})")


class DirichletCalibrator(MatrixScaler):
    r"""Dirichlet calibration with ODIR, "Dir-ODIR" (Kull et al. 2019, Sec. 3, Eq. for the linear
    parametrisation): ``softmax(W ln p + b)`` with ``p = softmax(z)``, i.e. :class:`MatrixScaler` on the features
    ``f(z) = ln p`` instead of the logits; everything else (ODIR, its normalisation, the cross-validation of
    lambda, mu = lambda by default, ``W = I, b = 0`` start, ``2 C`` samples and every class) is the same.

    ``ln p`` is ``log_softmax(z)`` clipped to ``[ln eps, ln(1 - eps)]``, ``eps`` the float64 machine epsilon
    (2.2e-16), as the released Keras layer clips ``p`` (experiments_dnn ``Dirichlet_NN._logFunc``): so very
    confident logits give features no smaller than -36.04. Where no probability is clipped, ``W = I, b = 0`` is
    the identity map (``softmax(ln p) = p``). Since ``W ln p = W z - (W 1) lse(z)``, it differs from matrix
    scaling unless the rows of ``W`` have equal sums. ``keeps_argmax = False``.

    Example:
        >>> z, y = torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1])
        >>> DirichletCalibrator(reg_lambda=0.0, reg_mu=0.0).fit(z, y).log_probs(z[:1]).exp()
        tensor([[0.7500, 0.2500]])
    """

    title: ClassVar[str] = "Dirichlet calibration"

    def _features(self, z: Tensor) -> Tensor:
        """``ln p``, clipped to ``[ln eps, ln(1 - eps)]``."""
        return torch.log_softmax(z, dim=1).clamp(math.log(_DIRICHLET_EPS), math.log1p(-_DIRICHLET_EPS))


# ---------------------------------------------------------------------------------------------------------
# One-vs-rest non-parametric maps: histogram binning and isotonic regression


class _OneVsRest(Calibrator):
    """Shared steps of the one-vs-rest maps: class ``c``'s probability ``p_c = softmax(z)_c`` is mapped by its own
    fitted function ``g_c``; the row ``g(p)`` is then normalised, floored at :data:`PROB_FLOOR` and normalised again
    (:func:`floor_probabilities`). Subclasses implement ``_fit_classes(p, y)`` and ``_map(p)``, ``p`` ``(N, C)``
    float64."""

    keeps_argmax: ClassVar[bool] = False
    every_class_why: ClassVar[str] = "fits every class one-vs-rest"

    def _fit(self, z: Tensor, y: Tensor) -> None:
        self._fit_classes(torch.softmax(z, dim=1), y)

    def _log_probs(self, z: Tensor) -> Tensor:
        return floor_probabilities(self._map(torch.softmax(z, dim=1))).log()

    def _fit_classes(self, p: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _map(self, p: Tensor) -> Tensor:
        raise NotImplementedError


class HistogramBinner(_OneVsRest):
    r"""Histogram binning (Zadrozny & Elkan 2001), one-vs-rest for C classes (Zadrozny & Elkan 2002): each class
    probability ``p_c = softmax(z)_c`` is replaced by the fraction of validation samples of class ``c`` among
    those whose ``p_c`` fell in the same bin, then the row is renormalised (with the :data:`PROB_FLOOR` floor).

    Bins: ``n_bins`` equal-width bins over ``[0, 1]``, ``(b / n_bins, (b + 1) / n_bins]`` with 0 in the first,
    the binning of :func:`ceexp.metrics.expected_calibration_error` (edges :func:`ceexp.metrics.bin_edges`). A bin
    that no validation sample reached keeps its midpoint ``(b + 1/2) / n_bins`` (netcal's ``HistogramBinning``
    rule; Guo et al.'s released code uses 0). Default 15 bins, as Guo et al.'s code and ceexp's ECE.

    ``keeps_argmax = False``: ties and the per-class bins reorder classes. Needs every class and ``C n_bins``
    samples (its parameters, one value per class and bin).

    Args:
        n_bins: the number of equal-width bins, a positive integer.

    Attributes:
        bin_values: ``(C, n_bins)`` float64, class ``c``'s calibrated probability in bin ``b`` (before
            renormalisation); bin_counts: ``(C, n_bins)`` int64 validation samples per bin. ``None`` before fit.

    Example:
        Two bins; class 1 has probability 0.27 (bin 0) for four samples, one of them class 1, and 0.73 (bin 1) for
        two, both class 1: class 1 gets 1/4 and 1, class 0 the complements, 3/4 and 0.

        >>> z = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
        >>> binner = HistogramBinner(n_bins=2).fit(z, torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> binner.bin_values
        tensor([[0.0000, 0.7500],
                [0.2500, 1.0000]], dtype=torch.float64)
        >>> binner.log_probs(torch.tensor([[1.0, 0.0]])).exp()
        tensor([[0.7500, 0.2500]])
    """

    title: ClassVar[str] = "histogram binning"
    min_samples_rule: ClassVar[str] = "one per class and bin"

    def __init__(self, n_bins: int = 15) -> None:
        check_positive_int("n_bins", n_bins)
        self.n_bins = n_bins
        self.bin_values: Tensor | None = None
        self.bin_counts: Tensor | None = None

    def min_samples(self, n_classes: int) -> int:
        """``C n_bins``: one value per class and bin."""
        return n_classes * self.n_bins

    def _bins(self, p: Tensor) -> Tensor:
        return torch.bucketize(p, bin_edges(self.n_bins, dtype=p.dtype)[1:-1], right=False)

    def _fit_classes(self, p: Tensor, y: Tensor) -> None:
        c = p.shape[1]
        index = self._bins(p) + self.n_bins * torch.arange(c)  # (N, C): flat (class, bin) index
        hits = F.one_hot(y, c).to(torch.float64)
        counts = torch.bincount(index.flatten(), minlength=c * self.n_bins).reshape(c, self.n_bins)
        hit_sums = torch.bincount(index.flatten(), weights=hits.flatten(), minlength=c * self.n_bins)
        midpoints = (torch.arange(self.n_bins, dtype=torch.float64) + 0.5) / self.n_bins
        self.bin_counts = counts
        self.bin_values = torch.where(counts > 0, hit_sums.reshape(c, self.n_bins) / counts.clamp_min(1),
                                      midpoints.expand(c, -1))

    def _map(self, p: Tensor) -> Tensor:
        return self.bin_values[torch.arange(p.shape[1]), self._bins(p)]

    def __repr__(self) -> str:
        return f"HistogramBinner(n_bins={self.n_bins})"


class IsotonicCalibrator(_OneVsRest):
    r"""Isotonic regression (Zadrozny & Elkan 2002), one-vs-rest: for each class ``c`` a non-decreasing map
    ``g_c`` of ``p_c = softmax(z)_c`` to the indicator ``[y = c]``, least squares over the validation split
    (pool-adjacent-violators), then the row ``g(p)`` renormalised (with the :data:`PROB_FLOOR` floor).

    Each ``g_c`` is ``sklearn.isotonic.IsotonicRegression(y_min=0, y_max=1, increasing=True,
    out_of_bounds="clip")``: tied ``p_c`` are pooled, predictions interpolate linearly between the fitted points
    and are clipped to the end values outside the fitted range (netcal's ``IsotonicRegression`` uses the same).

    ``keeps_argmax = False``. Needs every class (so every one-vs-rest problem has both outcomes), hence ``C``
    samples; the number of steps adapts to the data.

    Attributes:
        regressors: the ``C`` fitted sklearn models, class order; ``[]`` before :meth:`fit`.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
        >>> IsotonicCalibrator().fit(z, torch.tensor([0, 0, 0, 1, 1, 1])).log_probs(z[[0, 5]]).exp()
        tensor([[7.5000e-01, 2.5000e-01],
                [1.0000e-07, 1.0000e+00]])
    """

    title: ClassVar[str] = "isotonic regression"
    min_samples_rule: ClassVar[str] = "every class once"

    def __init__(self) -> None:
        self.regressors: list = []

    def min_samples(self, n_classes: int) -> int:
        """``C``: every class at least once."""
        return n_classes

    def _fit_classes(self, p: Tensor, y: Tensor) -> None:
        from sklearn.isotonic import IsotonicRegression

        p_np, y_np = p.numpy(), y.numpy()
        self.regressors = [
            IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            .fit(p_np[:, c], (y_np == c).astype(np.float64))
            for c in range(p.shape[1])
        ]

    def _map(self, p: Tensor) -> Tensor:
        p_np = p.numpy()
        columns = [regressor.predict(p_np[:, c]) for c, regressor in enumerate(self.regressors)]
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float64))

    def __repr__(self) -> str:
        return "IsotonicCalibrator()"


# ---------------------------------------------------------------------------------------------------------
# The registry and the functions a training pipeline calls

#: ``calibration=[...]`` name -> calibrator class, each constructible without arguments.
CALIBRATORS: dict[str, type] = {
    "temperature": TemperatureScaler,
    "vector": VectorScaler,
    "matrix": MatrixScaler,
    "dirichlet": DirichletCalibrator,
    "histogram": HistogramBinner,
    "isotonic": IsotonicCalibrator,
}


def fit_calibrators(methods: Sequence[str], val_logits: Tensor, val_labels: Tensor, n_classes: int,
                    options: Mapping[str, Mapping[str, Any]] | None = None,
                    ) -> tuple[dict[str, Calibrator], dict[str, str]]:
    """Fit each calibrator of ``methods`` on the validation logits; skip, with a one-line reason, those the split
    is too small for (:func:`unfit_reason`: fewer samples than its parameters, a class absent) or whose fit
    diverges, and fit the others.

    Args:
        methods: names of :data:`CALIBRATORS` (a repeated name is fitted once), in the order to fit them.
        val_logits: ``(N, n_classes)`` floating logits, or ``(N, 1)`` for a one-logit model with ``n_classes=2``.
        val_labels: ``(N,)`` int64 class indices in ``[0, n_classes)``.
        n_classes: the number of classes C, >= 2.
        options: ``{name: constructor keyword arguments}``, e.g. ``{"histogram": {"n_bins": 10}}``.

    Returns:
        ``(fitted, skipped)``: ``{name: fitted calibrator}`` and ``{name: reason}``, each in ``methods`` order. An
        empty split (N = 0) skips every method.

    Raises:
        ValueError: on an unknown name (the message lists the known ones), an ``options`` key not in ``methods``,
            ``n_classes`` < 2, logits whose width is neither ``n_classes`` nor 1 (with ``n_classes=2``), or
            inputs failing :func:`ceexp.checks.check_classification_inputs`.

    Example:
        >>> z, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 1, 1])
        >>> fitted, skipped = fit_calibrators(["temperature", "histogram"], z, y, n_classes=2)
        >>> list(fitted)
        ['temperature']
        >>> skipped["histogram"].startswith("4 validation samples, fewer than the 30 that histogram binning needs")
        True
    """
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise ValueError(f"Expected argument `methods` to be a list of names in {list(CALIBRATORS)}, "
                         f"but got {methods!r}")
    for name in methods:
        check_choice("methods", name, tuple(CALIBRATORS))
    options = dict(options or {})
    for name in options:
        if name not in methods:
            raise ValueError(f"Expected the keys of `options` to be among `methods` {list(methods)}, "
                             f"but got {name!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"Expected argument `n_classes` to be an integer >= 2, but got {n_classes!r}")
    if not isinstance(val_logits, Tensor) or val_logits.ndim != 2:
        shape = tuple(val_logits.shape) if isinstance(val_logits, Tensor) else type(val_logits).__name__
        raise ValueError(f"Expected `val_logits` to have shape (N, C), but got {shape}")
    width = val_logits.shape[1]
    if not (width == n_classes or (width == 1 and n_classes == 2)):
        raise ValueError(f"Expected `val_logits` with n_classes={n_classes} columns (or 1 when n_classes=2), "
                         f"but got shape {tuple(val_logits.shape)}")
    fitted: dict[str, Calibrator] = {}
    skipped: dict[str, str] = {}
    empty = val_logits.shape[0] == 0 and isinstance(val_labels, Tensor) and val_labels.numel() == 0
    if not empty:
        check_classification_inputs(two_column_logits(val_logits), val_labels, input_name="val_logits")
    for name in dict.fromkeys(methods):
        calibrator = CALIBRATORS[name](**options.get(name, {}))
        reason = "the validation split is empty" if empty else unfit_reason(calibrator, val_labels, n_classes)
        if reason is None:
            try:
                fitted[name] = calibrator.fit(val_logits, val_labels)
                continue
            except UnfittableSplitError as err:
                reason = str(err).removeprefix(f"{calibrator.title}: ")
        skipped[name] = reason
        log.warning("calibration=%s skipped: %s", name, reason)
    return fitted, skipped


def calibrated_log_probs(calibrators: Mapping[str, Calibrator], logits: Tensor) -> dict[str, Tensor]:
    """``{name: calibrator.log_probs(logits)}``: each fitted calibrator applied to (test) logits ``(N, C)`` or
    ``(N, 1)``, giving ``(N, C)`` (``(N, 2)``) float32 log-probabilities (nats) on the logits' device.

    Raises:
        ValueError / RuntimeError: as :meth:`Calibrator.log_probs` (wrong width, not fitted).
    """
    return {name: calibrator.log_probs(logits) for name, calibrator in calibrators.items()}


#: The metrics :func:`calibrated_metrics` reports by default: those ``ceexp.module.EvalMetrics`` logs for a stage
#: (``loss``, the training objective, aside).
CALIBRATED_METRICS: tuple[str, ...] = (
    "acc", "nll", "nll_bits", "ece", "mce", "adaece", "cwece", "brier", "confidence", "smece", "ece_debiased",
    "ece_signed",
)


def calibrated_metrics(log_probs: Mapping[str, Tensor], target: Tensor, n_bins: int = 15,
                       metrics: Sequence[str] = CALIBRATED_METRICS) -> dict[str, float]:
    """``{'<metric>_<method>': value}`` for calibrated log-probabilities ``{method: (N, C)}`` and labels ``(N,)``.

    Computed in float64 on the CPU, as ``ceexp.callbacks.temperature_fits`` does for the ``_ts`` tags: ``nll`` is
    ``F.cross_entropy(log_probs, target)`` in nats (``nll_bits`` the same in bits), every other metric
    ``METRIC_FUNCTIONS[metric](softmax(log_probs), target, n_bins)`` (``softmax`` renormalises the float32 rows
    exactly). The pipeline logs them as ``test/<metric>_<method>``.

    Raises:
        ValueError: on a metric name that is neither ``nll``, ``nll_bits`` nor a key of
            :data:`ceexp.metrics.METRIC_FUNCTIONS`, or inputs the metrics refuse.

    Example:
        Probabilities (1/2, 1/2) for class 0 (a tie goes to class 0: right) and (3/4, 1/4) for class 1 (wrong): the
        NLL is (ln 2 + ln 4) / 2 nats, 1.5 bits.

        >>> out = calibrated_metrics({"vector": torch.tensor([[0.5, 0.5], [0.75, 0.25]]).log()},
        ...                          torch.tensor([0, 1]), metrics=("acc", "nll_bits"))
        >>> {tag: round(value, 6) for tag, value in out.items()}
        {'acc_vector': 0.5, 'nll_bits_vector': 1.5}
    """
    known = ("nll", "nll_bits", *METRIC_FUNCTIONS)
    for metric in metrics:
        check_choice("metrics", metric, known)
    y = target.detach().cpu()
    out: dict[str, float] = {}
    for method, lp in log_probs.items():
        lp64 = lp.detach().to(device="cpu", dtype=torch.float64)
        probs = torch.softmax(lp64, dim=1)
        nll = F.cross_entropy(lp64, y)
        for metric in metrics:
            if metric == "nll":
                value = nll
            elif metric == "nll_bits":
                value = nats_to_bits(nll)
            else:
                value = METRIC_FUNCTIONS[metric](probs, y, n_bins)
            out[f"{metric}_{method}"] = float(value)
    return out
