"""Post-hoc temperature scaling (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural
Networks", ICML, Sec. 4.2).

One scalar T > 0 divides every logit: ``softmax(z / T)``. T is fitted on held-out (validation) logits, by one
of two criteria (``TemperatureScaler(method=...)``):

* ``"nll"`` (Guo et al.): the T > 0 minimising the mean negative log-likelihood, found over log T by L-BFGS.
* ``"ece_grid"`` (Mukhoti et al. 2020, "Calibrating Deep Neural Networks using Focal Loss", NeurIPS; their
  released code, torrvision/focal_calibration ``temperature_scaling.py``, ``set_temperature(...,
  cross_validate='ece')``): the T of :data:`ECE_GRID` (0.1, 0.2, ..., 10.0) with the least validation ECE
  (15 equal-width bins), the first such T on a tie.

Since dividing by a positive number keeps the argmax, accuracy is unchanged while confidence (and so
calibration) moves.

Dtypes: ``fit`` works on a float64 CPU copy of the logits whatever their dtype (float16 and bfloat16 included),
so 16-bit logits get the temperature of their exact values; calling the scaler returns ``logits / T`` in the
logits' own dtype.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceexp.checks import check_choice, check_classification_inputs, check_positive_int
from ceexp.metrics import expected_calibration_error

__all__ = ["ECE_GRID", "METHODS", "TemperatureScaler"]

METHODS = ("nll", "ece_grid")

#: The temperatures ``method="ece_grid"`` tries, in order: 0.1, 0.2, ..., 10.0 (100 values). Mukhoti et al.'s
#: ``temperature_scaling.py`` (lines 73-86) starts at ``T = 0.1`` and adds 0.1 a hundred times, so its T drift
#: from the decimals (0.30000000000000004, 0.7999999999999999, ...); here T number k is the float nearest k / 10.
ECE_GRID: tuple[float, ...] = tuple(k / 10 for k in range(1, 101))


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a finite number > 0, but got {value!r}")


class TemperatureScaler(nn.Module):
    r"""Temperature scaling: ``forward(logits) = logits / T`` with T fitted by :meth:`fit`.

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

    def fit(self, logits: Tensor, target: Tensor, max_iter: int = 100) -> TemperatureScaler:
        """Fit T on held-out logits by the scaler's ``method`` (least NLL, or least ECE on the grid); return ``self``.

        Args:
            logits: ``(N, C)`` floating, unnormalised scores (not probabilities), any device; not modified.
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
        check_classification_inputs(logits, target, input_name="logits")
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
