"""The training objectives of ceexp that torch does not ship: focal, FLSD-53 and Brier; margin-based label
smoothing, CE + MMCE, CE + DCA, the confidence penalty, Poly-1, dual focal, scheduled focal (FLSc-531) and AdaFocal.

Plain cross-entropy, label smoothing and class-weighted cross-entropy are torch's own
:class:`torch.nn.CrossEntropyLoss` (``label_smoothing=...``, ``weight=...``) and are not repeated here.

Every loss takes logits ``(N, C)`` (floating) and class indices ``(N,)`` (int64), like
``nn.CrossEntropyLoss``, and is computed from ``F.log_softmax`` so that saturated logits stay finite.
Per-sample values are in nats (focal, FLSD-53 and the second-round losses) or in squared probability (Brier).
``reduction`` is one of ``"none"`` (shape ``(N,)``), ``"mean"`` or ``"sum"`` (scalars); samples whose target
equals ``ignore_index`` contribute 0 and do not count in the mean's denominator (a batch in which every
target is ignored gives a NaN mean and a zero gradient, as ``F.cross_entropy`` does).

Reduced precision: every loss computes in float32 or wider whatever the logits' dtype
(:func:`ceexp.checks.working_dtype`), and returns that dtype: float32 for float16 or bfloat16 logits, inside
``torch.autocast`` or not (as autocast runs ``F.cross_entropy``), the logits' own dtype for float32 and float64.
A float16 mean or sum would overflow past 65,504 (20,000 samples at 5 nats), a bfloat16 one keep three digits.
The gradient reaches 16-bit logits in their own dtype, rounded once from the float32 gradient. torch's
``nn.CrossEntropyLoss`` computes in float32 under autocast (Lightning's ``"bf16-mixed"``, ``"16-mixed"``) but in
the logits' dtype outside it (``"16-true"``: a float16 sum past 65,504 is inf): give it ``logits.float()`` there.

>>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.bfloat16, requires_grad=True)
>>> loss = FocalLoss(gamma=0.0)(logits, torch.tensor([0, 1]))
>>> loss.dtype, round(loss.item(), 4)
(torch.float32, 0.3955)
>>> loss.backward()
>>> logits.grad.dtype
torch.bfloat16
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ceexp.checks import (
    check_choice,
    check_classification_inputs,
    check_non_negative,
    check_positive_int,
    check_probabilities,
    working_dtype,
)

__all__ = [
    "AdaFocalLoss",
    "BinaryCrossEntropyLoss",
    "BrierLoss",
    "ConfidencePenaltyLoss",
    "DCALoss",
    "DualFocalLoss",
    "FocalLoss",
    "MMCELoss",
    "MarginBasedLabelSmoothingLoss",
    "Poly1Loss",
    "SampleDependentFocalLoss",
    "ScheduledFocalLoss",
    "SigmoidFocalLoss",
    "brier_loss",
    "class_logits",
    "focal_loss",
    "sample_dependent_focal_loss",
]

Alpha = Union[None, float, Sequence[float], torch.Tensor]
_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------------------
# argument checks (run once at construction, or on every call of the functional forms)


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Expected argument `{name}` to be an integer, but got {value!r}")


def _check_probability(name: str, value) -> None:
    check_non_negative(name, value)
    if value > 1:
        raise ValueError(f"Expected argument `{name}` to be a number in [0, 1], but got {value!r}")


def _prepare_alpha(alpha: Alpha, dtype: torch.dtype | None = None) -> None | float | torch.Tensor:
    """Validate ``alpha`` and return None, a float in [0, 1], or a 1-D tensor of class weights.

    A sequence becomes a tensor of ``dtype`` (default: torch's default dtype); a floating tensor keeps its own.
    """
    if alpha is None:
        return None
    dtype = dtype or torch.get_default_dtype()
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        _check_probability("alpha", alpha)
        return float(alpha)
    if isinstance(alpha, str):
        raise ValueError(
            f"Expected argument `alpha` to be None, a float or a sequence of class weights, but got {alpha!r}"
        )
    try:
        if isinstance(alpha, torch.Tensor):
            weights = alpha.detach().clone() if alpha.is_floating_point() else alpha.detach().to(dtype)
        else:  # list, tuple, numpy array, OmegaConf ListConfig
            weights = torch.tensor([float(a) for a in alpha], dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected argument `alpha` to be None, a float or a sequence of class weights, but got {alpha!r}"
        ) from None
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(
            f"Expected argument `alpha` to be a non-empty 1-D sequence, but got shape {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"Expected argument `alpha` to hold finite weights >= 0, but got {weights.tolist()}")
    return weights


def _alpha_per_class(
    alpha: None | float | torch.Tensor, num_classes: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Expand a prepared ``alpha`` into a ``(C,)`` weight tensor (or None), checking it against C."""
    if alpha is None:
        return None
    if isinstance(alpha, float):
        if num_classes != 2:
            raise ValueError(
                f"Expected argument `alpha` to be a sequence of C={num_classes} per-class weights, but got the "
                f"float {alpha!r}: a float `alpha` is only defined for C == 2 classes; pass a sequence of C "
                "per-class weights"
            )
        return torch.tensor([1.0 - alpha, alpha], dtype=dtype, device=device)
    if alpha.numel() != num_classes:
        raise ValueError(
            f"Expected argument `alpha` to have C={num_classes} entries (one per class), but got {alpha.numel()}"
        )
    return alpha.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# kernels (no argument checks; inputs are checked by the callers)


class _Focal(torch.autograd.Function):
    """Focal loss ``-w_i (1 - p_i)^gamma_i log p_i``, reduced, with a closed-form backward.

    Autograd through ``log_softmax -> gather -> pow -> sum`` would allocate two more ``(N, C)`` buffers in the
    backward (the scattered gather gradient, then the log_softmax gradient) and run a dozen more small kernels.
    Here the backward turns the saved log-probabilities into the gradient in place, so one ``(N, C)`` buffer
    serves the whole step; that is what keeps focal within 1.3x of ``F.cross_entropy``
    (benchmarks/bench_losses.py). With ``s = log p`` and ``q = 1 - p``:
    ``d loss / d s = -w q^gamma (1 - gamma p s / q)`` and ``d s / d z_c = [c = y] - softmax(z)_c``.
    The backward can run once (``retain_graph=True`` then a second backward raises autograd's "modified by an
    inplace operation" error) and is not itself differentiable.
    """

    @staticmethod
    def forward(ctx, logits, target, weight, keep, gamma, gamma_switch, reduction):
        log_probs = F.log_softmax(logits, dim=1)
        log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        if gamma_switch is None and gamma == 0.0:
            loss = (weight * log_pt).neg_()  # exactly (weighted) cross-entropy
            minus_dloss_dlogpt = weight
        else:
            pt = log_pt.exp()
            if gamma_switch is not None:  # FLSD: gamma per sample from p_y; no gradient flows through the choice
                threshold, gamma_low, gamma_high = gamma_switch
                gamma = torch.full_like(pt, gamma_high).masked_fill_(pt < threshold, gamma_low)
            # 1 - p from expm1 keeps its relative accuracy when p is near 1. At p == 1 exactly, q^(gamma - 1) is
            # infinite for gamma < 1; the clamp makes gamma p loss / q read 0 / tiny = 0 there, its limit.
            one_minus_pt = torch.expm1(log_pt).neg_().clamp_(min=torch.finfo(log_pt.dtype).tiny)
            scale = one_minus_pt.pow(gamma).mul_(weight)
            loss = (scale * log_pt).neg_()
            # -d loss / d s = scale + gamma p loss / q, with scale = w q^gamma and loss = -scale s
            minus_dloss_dlogpt = pt.mul_(loss).mul_(gamma).div_(one_minus_pt).add_(scale)
        ctx.save_for_backward(log_probs, target, minus_dloss_dlogpt)
        ctx.reduction = reduction
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        ctx.count = keep.sum()
        return loss.sum() / ctx.count  # NaN when every target is ignored, as in F.cross_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        log_probs, target, minus_dloss_dlogpt = ctx.saved_tensors
        if ctx.reduction == "mean":
            grad_loss = grad_loss / ctx.count.clamp(min=1)  # zero gradient when every target is ignored
        h = (minus_dloss_dlogpt * grad_loss).unsqueeze(1)
        # d/dz = -h (onehot(y) - softmax(z)) = h softmax(z) - h onehot(y), built in the log_probs buffer
        grad_logits = log_probs.exp_().mul_(h)
        grad_logits.scatter_add_(1, target.unsqueeze(1), h.neg())
        return grad_logits, None, None, None, None, None, None


def _keep_and_safe_target(target: torch.Tensor, ignore_index: int):
    """The non-ignored mask ``(N,)`` and targets safe to gather with (ignored rows read class 0, weighted 0)."""
    keep = target != ignore_index
    # validated targets lie in [0, C) or equal ignore_index (which may be negative or >= C): zero it out
    return keep, target * keep


def _focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float | None,
    alpha: torch.Tensor | None,
    reduction: str,
    ignore_index: int,
    gamma_switch: tuple | None = None,
) -> torch.Tensor:
    """The focal kernel shared by the focal and FLSD-53 losses, in the working dtype (``alpha`` already in it).

    ``gamma`` is a float, or None together with ``gamma_switch = (threshold, gamma_low, gamma_high)`` to use
    ``gamma_low`` where ``p_y < threshold`` and ``gamma_high`` elsewhere.
    """
    logits = logits.to(working_dtype(logits.dtype))  # a no-op for float32 and float64
    keep, safe_target = _keep_and_safe_target(target, ignore_index)
    weight = keep if alpha is None else alpha[safe_target] * keep  # a bool mask multiplies as 0 / 1
    return _Focal.apply(logits, safe_target, weight, keep, gamma, gamma_switch, reduction)


def _brier(logits: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int) -> torch.Tensor:
    logits = logits.to(working_dtype(logits.dtype))
    keep, safe_target = _keep_and_safe_target(target, ignore_index)
    probs = F.log_softmax(logits, dim=1).exp()
    diff = probs - F.one_hot(safe_target, logits.shape[1]).to(probs.dtype)
    loss = diff.square().sum(dim=1) * keep
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = keep.sum()
    # NaN when every target is ignored, as in F.cross_entropy, with a zero gradient (where() routes none to it)
    return torch.where(count > 0, loss.sum() / count.clamp(min=1), torch.nan)


# ---------------------------------------------------------------------------------------------------------
# functional forms


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Alpha = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Softmax focal loss of Lin et al. 2017, "Focal Loss for Dense Object Detection" (ICCV), eq. 5.

    .. math:: \ell_i = -\alpha_{y_i} (1 - p_i)^\gamma \log p_i, \qquad p_i = \mathrm{softmax}(z_i)_{y_i}

    The paper states it for a sigmoid per class; this is the multi-class softmax form used for classifiers.
    ``gamma=0, alpha=None`` is exactly cross-entropy; larger ``gamma`` down-weights samples the model already
    gets right. Mukhoti et al. 2020's released ``FocalLoss`` (torrvision/focal_calibration,
    ``Losses/focal_loss.py``) is this form with ``alpha=None`` and ``reduction="sum"``.

    Args:
        logits: ``(N, C)`` unnormalised scores, floating dtype (16-bit ones are computed in float32), finite.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index``.
        gamma: focusing parameter, a finite number ``>= 0``.
        alpha: class weights: None (all 1); a sequence or tensor of ``C`` weights ``>= 0``; or a float in
            ``[0, 1]`` when ``C == 2``, meaning ``alpha`` on class 1 and ``1 - alpha`` on class 0.
        reduction: ``"none"`` gives the ``(N,)`` per-sample losses; ``"sum"`` their sum; ``"mean"`` the sum
            divided by the number of non-ignored samples (not by the sum of their ``alpha``, as in torchvision's
            ``sigmoid_focal_loss``), so with ``gamma=0`` it equals
            ``F.cross_entropy(logits, target, weight=alpha, reduction="sum") / N``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Returns:
        The loss in nats, shape ``(N,)`` for ``"none"``, else a scalar; float32 for float16 or bfloat16
        logits, else ``logits.dtype``.

    Raises:
        ValueError: on a bad ``gamma``, ``alpha``, ``reduction`` or ``ignore_index``; on a float ``alpha`` with
            ``C != 2`` or an ``alpha`` sequence whose length is not ``C``; on inputs refused by
            :func:`ceexp.checks.check_classification_inputs`.

    Example:
        >>> focal_loss(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 1]), gamma=0.0)
        tensor(0.3955)
    """
    check_non_negative("gamma", gamma)
    check_choice("reduction", reduction, _REDUCTIONS)
    _check_int("ignore_index", ignore_index)
    check_classification_inputs(logits, target, "logits", ignore_index)
    dtype = working_dtype(logits.dtype)
    alpha = _prepare_alpha(alpha, dtype=dtype)  # straight to the working dtype: no float32 round trip
    weights = _alpha_per_class(alpha, logits.shape[1], dtype, logits.device)
    return _focal(logits, target, float(gamma), weights, reduction, ignore_index)


def sample_dependent_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma_low: float = 5.0,
    gamma_high: float = 3.0,
    threshold: float = 0.2,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Sample-dependent focal loss FLSD-53 of Mukhoti et al. 2020, "Calibrating Deep Neural Networks using
    Focal Loss" (NeurIPS), Sec. 5.

    The focal loss :math:`-(1 - p_i)^{\gamma_i} \log p_i` with a per-sample :math:`\gamma_i`, ``gamma_low``
    (5) where ``p_i < threshold`` (0.2) and ``gamma_high`` (3) elsewhere. The choice of :math:`\gamma_i` is
    made on the detached :math:`p_i`, so no gradient flows through the switch; the per-sample :math:`\gamma_i`
    then enter the same kernel as :func:`focal_loss`. This is the released code's ``FocalLossAdaptive(gamma=3)``
    (torrvision/focal_calibration, ``Losses/focal_loss_adaptive_gamma.py``): gamma 5 where ``p < 0.2``
    strictly, 3 from ``p = 0.2`` on (its table also maps ``0.2 <= p < 0.5`` to 3), ``p`` computed as
    ``exp(log_softmax)`` and the gammas a constant tensor. That code sums over the batch (``size_average=False``):
    ``reduction="sum"``.

    Args:
        logits: ``(N, C)`` unnormalised scores, floating dtype (16-bit ones are computed in float32), finite.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index``.
        gamma_low: gamma for samples with ``p_y < threshold``, a finite number ``>= 0``.
        gamma_high: gamma for the other samples, a finite number ``>= 0``.
        threshold: the switching probability, in ``[0, 1]``.
        reduction: ``"none"``, ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Returns:
        The loss in nats, shape ``(N,)`` for ``"none"``, else a scalar; float32 for float16 or bfloat16
        logits, else ``logits.dtype``.

    Raises:
        ValueError: on a bad ``gamma_low``, ``gamma_high``, ``threshold``, ``reduction`` or ``ignore_index``,
            or on inputs refused by :func:`ceexp.checks.check_classification_inputs`.
    """
    check_non_negative("gamma_low", gamma_low)
    check_non_negative("gamma_high", gamma_high)
    _check_probability("threshold", threshold)
    check_choice("reduction", reduction, _REDUCTIONS)
    _check_int("ignore_index", ignore_index)
    check_classification_inputs(logits, target, "logits", ignore_index)
    switch = (float(threshold), float(gamma_low), float(gamma_high))
    return _focal(logits, target, None, None, reduction, ignore_index, gamma_switch=switch)


def brier_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Brier score of the softmax against the one-hot label (Brier 1950), the "MSE" training baseline.

    .. math:: \ell_i = \sum_{c=1}^{C} \left(\mathrm{softmax}(z_i)_c - [y_i = c]\right)^2 \in [0, 2]

    ``reduction="mean"`` (the mean over samples of this sum over classes, not a mean over all ``N x C``
    elements) is the Brier loss of Mukhoti et al. 2020's released code (torrvision/focal_calibration,
    ``Losses/brier_score.py``: ``torch.sum(squared_diff) / N``), which divides by N even where its other losses
    sum over the batch.

    Args:
        logits: ``(N, C)`` unnormalised scores, floating dtype (16-bit ones are computed in float32), finite.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index``.
        reduction: ``"none"``, ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Returns:
        Squared probability error (unitless), shape ``(N,)`` for ``"none"``, else a scalar; float32 for float16
        or bfloat16 logits, else ``logits.dtype``.

    Raises:
        ValueError: on a bad ``reduction`` or ``ignore_index``, or on inputs refused by
            :func:`ceexp.checks.check_classification_inputs`.
    """
    check_choice("reduction", reduction, _REDUCTIONS)
    _check_int("ignore_index", ignore_index)
    check_classification_inputs(logits, target, "logits", ignore_index)
    return _brier(logits, target, reduction, ignore_index)


# ---------------------------------------------------------------------------------------------------------
# modules: arguments checked once here, inputs on every forward


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017) as a module; see :func:`focal_loss` for the definition and arguments.

    A sequence ``alpha`` is kept as the buffer ``alpha`` (torch's default dtype unless given as a floating
    tensor) so that it follows ``.to(device)`` and ``.double()``; it is cast to the working dtype of the logits
    (float32 for 16-bit logits) at each call.
    """

    def __init__(self, gamma: float = 2.0, alpha: Alpha = None, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("gamma", gamma)
        check_choice("reduction", reduction, _REDUCTIONS)
        _check_int("ignore_index", ignore_index)
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = ignore_index
        alpha = _prepare_alpha(alpha)
        if isinstance(alpha, float):
            self.alpha = alpha
        else:
            self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        weights = _alpha_per_class(self.alpha, logits.shape[1], working_dtype(logits.dtype), logits.device)
        return _focal(logits, target, self.gamma, weights, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        alpha = self.alpha.tolist() if isinstance(self.alpha, torch.Tensor) else self.alpha
        return f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class SampleDependentFocalLoss(nn.Module):
    """FLSD-53 (Mukhoti et al. 2020) as a module; see :func:`sample_dependent_focal_loss`."""

    def __init__(
        self,
        gamma_low: float = 5.0,
        gamma_high: float = 3.0,
        threshold: float = 0.2,
        reduction: str = "mean",
        ignore_index: int = -100,
    ):
        super().__init__()
        check_non_negative("gamma_low", gamma_low)
        check_non_negative("gamma_high", gamma_high)
        _check_probability("threshold", threshold)
        check_choice("reduction", reduction, _REDUCTIONS)
        _check_int("ignore_index", ignore_index)
        self.gamma_low = float(gamma_low)
        self.gamma_high = float(gamma_high)
        self.threshold = float(threshold)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        switch = (self.threshold, self.gamma_low, self.gamma_high)
        return _focal(logits, target, None, None, self.reduction, self.ignore_index, gamma_switch=switch)

    def extra_repr(self) -> str:
        return (
            f"gamma_low={self.gamma_low}, gamma_high={self.gamma_high}, threshold={self.threshold}, "
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
        )


class BrierLoss(nn.Module):
    """Brier score of softmax(logits) against the one-hot label as a module; see :func:`brier_loss`."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        _check_int("ignore_index", ignore_index)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        return _brier(logits, target, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"


# ---------------------------------------------------------------------------------------------------------
# second round (issue #11): regularised cross-entropy, dual / scheduled / adaptive focal losses
#
# Each is a module whose arguments are checked once at construction and whose inputs are checked on every
# forward. The per-sample value is written out for ``reduction="none"``; ``"mean"`` divides the sum by the
# number of non-ignored samples (NaN with a zero gradient when there are none, as F.cross_entropy), ``"sum"``
# is the sum. A batch-level term (MMCE, DCA) is shared by every non-ignored sample: the per-sample value is
# CE_i + weight * term, so "mean" is mean CE + weight * term (the released codes' form) and "sum" is N times it.


def _check_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Expected argument `{name}` to be a finite number, but got {value!r}")


def _check_common(reduction: str, ignore_index: int) -> None:
    check_choice("reduction", reduction, _REDUCTIONS)
    _check_int("ignore_index", ignore_index)


def _log_probs_and_true_class(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """``(logits in the working dtype, log_softmax (N, C), log p_y (N,), keep (N,), safe target (N,))``."""
    logits = logits.to(working_dtype(logits.dtype))
    keep, safe_target = _keep_and_safe_target(target, ignore_index)
    log_probs = F.log_softmax(logits, dim=1)
    log_pt = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    return logits, log_probs, log_pt, keep, safe_target


def _reduce(per_sample: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    """Zero the ignored samples (their gradient too), then reduce as the module docstrings say."""
    loss = torch.where(keep, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = keep.sum()
    return torch.where(count > 0, loss.sum() / count.clamp(min=1), torch.nan)


def _one_minus(log_p: torch.Tensor) -> torch.Tensor:
    """``1 - exp(log_p)``, accurate when p is near 1 (where ``1 - p`` would cancel)."""
    return torch.expm1(log_p).neg()


class MarginBasedLabelSmoothingLoss(nn.Module):
    r"""Margin-based label smoothing, MbLS (Liu et al. 2022, "The Devil is in the Margin: Margin-based Label
    Smoothing for Network Calibration", CVPR), with its linear (L1) margin penalty.

    .. math:: \ell_i = -\log p_{i,y_i} + \frac{\alpha}{C} \sum_{k=1}^{C} \max(0, \max_j z_{ij} - z_{ik} - m)

    The penalty is averaged over the samples *and* the classes, as the authors' released ``LogitMarginL1``
    (by-liu/MbLS, ``calibrate/losses/logit_margin_l1.py``: ``F.relu(diff - margin).mean()`` over the ``(N, C)``
    distances) does; the per-sample value above keeps that mean when ``reduction="mean"``. The distances
    ``max_j z_j - z_k`` are those of the logits, which equal those of ``log_softmax`` (a per-row shift); the
    gradient through ``max_j`` reaches one arg-max per row, as ``Tensor.max(dim)`` does in that code.
    ``alpha = 0`` is exactly cross-entropy. Unlike the released code (which drops ignored samples only for
    ``ignore_index >= 0``), ignored samples never count in the penalty.

    Args:
        margin: ``m``, the logit distance left free of penalty, a finite number ``>= 0`` (logit units);
            default 10, the paper's.
        alpha: the penalty's weight, a finite number ``>= 0``; default 0.1, the paper's.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats plus the weighted penalty, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on a bad ``margin``, ``alpha``, ``reduction`` or ``ignore_index`` (at construction), or on
            inputs refused by :func:`ceexp.checks.check_classification_inputs`.

    Example:
        Distances 12, 0, 11 to the largest logit: penalties 2, 0, 1 over 3 classes, weighted 0.1 / 3 = 0.1.

        >>> loss = MarginBasedLabelSmoothingLoss(reduction="none")
        >>> logits = torch.tensor([[0.0, 12.0, 1.0]])
        >>> round(loss(logits, torch.tensor([1])).item() - F.cross_entropy(logits, torch.tensor([1])).item(), 6)
        0.1
    """

    def __init__(self, margin: float = 10.0, alpha: float = 0.1, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("margin", margin)
        check_non_negative("alpha", alpha)
        _check_common(reduction, ignore_index)
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        logits, _, log_pt, keep, _ = _log_probs_and_true_class(logits, target, self.ignore_index)
        distance = logits.max(dim=1, keepdim=True).values - logits
        penalty = F.relu(distance - self.margin).mean(dim=1)
        return _reduce(penalty.mul(self.alpha).sub(log_pt), keep, self.reduction)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, alpha={self.alpha}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}")


def _mmce_weighted(log_probs: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, width: float) -> torch.Tensor:
    """MMCE_w of the rows where ``keep``, as torrvision/focal_calibration's ``MMCE_weighted``: the ignored rows
    weigh 0 in every kernel sum (no index_select, so no host sync on an accelerator)."""
    log_conf, pred = log_probs.max(dim=1)
    conf = log_conf.exp()
    correct = ((pred == target) & keep).to(conf.dtype)
    wrong = ((pred != target) & keep).to(conf.dtype)
    a = correct * _one_minus(log_conf)  # correct samples weigh 1 - r
    b = wrong * conf  # incorrect samples weigh r
    kernel = torch.exp((conf.unsqueeze(1) - conf.unsqueeze(0)).abs().div(-width))  # Laplacian, (N, N)
    k_a = kernel @ a
    m, n = correct.sum(), wrong.sum()
    m2, n2, mn = m * m, n * n, m * n
    # each kernel mean (sum / m^2 ...) is divided by m^2 + 1e-5 ... once more, as in the released code
    mmd = ((a @ k_a) / (m2.clamp(min=1) * (m2 + 1e-5))
           + (b @ (kernel @ b)) / (n2.clamp(min=1) * (n2 + 1e-5))
           - 2 * (b @ k_a) / (mn.clamp(min=1) * (mn + 1e-5)))
    both = (m > 0) & (n > 0)  # all correct or all wrong: 0, as the released code's cond_k * cond_k_p
    return torch.where(both, mmd.clamp(min=0).add(1e-10).sqrt(), torch.zeros((), dtype=mmd.dtype, device=mmd.device))


class MMCELoss(nn.Module):
    r"""Cross-entropy plus ``lamda`` times the weighted MMCE of the batch (Kumar et al. 2018, "Trainable
    Calibration Measures for Neural Networks from Kernel Mean Embeddings", ICML), as Mukhoti et al.'s released
    ``MMCE_weighted`` (torrvision/focal_calibration, ``Losses/mmce.py``) computes it for CIFAR (``lamda`` 2).

    With ``r_i`` the top-label probability, ``c_i`` whether the top label is right, ``m`` / ``n`` the numbers of
    correct / wrong samples and the Laplacian kernel :math:`k(r, r') = \exp(-|r - r'| / w)`, ``w = kernel_width``:

    .. math::
        \mathrm{MMD}^2 = \frac{S_{cc}}{m^2 (m^2 + 10^{-5})} + \frac{S_{ww}}{n^2 (n^2 + 10^{-5})}
            - \frac{2 S_{cw}}{m n (m n + 10^{-5})}, \qquad \mathrm{MMCE_w} = \sqrt{\mathrm{MMD}^2 + 10^{-10}}

    :math:`S_{cc} = \sum_{i,j\ \mathrm{correct}} (1 - r_i)(1 - r_j) k(r_i, r_j)`,
    :math:`S_{ww} = \sum_{i,j\ \mathrm{wrong}} r_i r_j k(r_i, r_j)`,
    :math:`S_{cw} = \sum_{i\ \mathrm{correct},\, j\ \mathrm{wrong}} (1 - r_i) r_j k(r_i, r_j)`; 0 when the batch is
    all correct or all wrong. This is the released code's formula, which divides each kernel sum twice by the
    squared count (its ``1/(m*m + 1e-5) * torch.sum(mean)``; Kumar et al.'s estimator divides once), so each term
    of ``MMD^2`` is smaller than the paper's by a factor of about ``m^2``, ``n^2`` or ``mn``; ``lamda`` 2 was
    tuned with it. ``MMD^2`` is clamped at 0
    before the square root (the released code could take the root of a rounding-negative number). No gradient
    flows through ``c_i`` (an arg-max). The per-sample value is ``CE_i + lamda * MMCE_w`` (see the section note):
    ``"mean"`` is the released ``F.cross_entropy(...) + lamda * mmce``, ``"sum"`` its training loss (the
    released ``train_utils.py`` multiplies by the batch size). ``lamda = 0`` is exactly cross-entropy.

    Cost: the kernel is an ``(N, N)`` matrix, so time and memory are quadratic in the batch size
    (about 64 MiB of float32 per kernel-sized buffer at N = 4096): keep batches in the hundreds.

    Args:
        lamda: the weight of MMCE_w, a finite number ``>= 0`` (spelled as in the released code; ``lambda`` is a
            Python keyword); default 2.0, the released CIFAR-10/100 setting.
        kernel_width: ``w``, the Laplacian kernel's width in probability units, a finite number ``> 0``;
            default 0.4, the released code's.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the CE mean and of MMCE.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats plus the weighted (unitless) MMCE, ``(N,)`` or a scalar, float32 for 16-bit logits, else their
    dtype.

    Raises:
        ValueError: on a bad ``lamda``, ``kernel_width``, ``reduction`` or ``ignore_index`` (at construction), or
            on inputs refused by :func:`ceexp.checks.check_classification_inputs`.

    Example:
        One right sample at r = 0.5 and one wrong at r = 0.5: MMD^2 = 0.25/(1 + 1e-5) * (1 + 1 - 2) = 0.

        >>> loss = MMCELoss(lamda=1.0)
        >>> logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
        >>> round(loss(logits, target).item() - math.log(2), 5)
        1e-05
    """

    def __init__(self, lamda: float = 2.0, kernel_width: float = 0.4, reduction: str = "mean",
                 ignore_index: int = -100):
        super().__init__()
        check_non_negative("lamda", lamda)
        check_non_negative("kernel_width", kernel_width)
        if kernel_width == 0:
            raise ValueError(f"Expected argument `kernel_width` to be a finite number > 0, but got {kernel_width!r}")
        _check_common(reduction, ignore_index)
        self.lamda = float(lamda)
        self.kernel_width = float(kernel_width)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        _, log_probs, log_pt, keep, safe_target = _log_probs_and_true_class(logits, target, self.ignore_index)
        term = _mmce_weighted(log_probs, safe_target, keep, self.kernel_width)
        return _reduce(term.mul(self.lamda) - log_pt, keep, self.reduction)

    def extra_repr(self) -> str:
        return (f"lamda={self.lamda}, kernel_width={self.kernel_width}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}")


class DCALoss(nn.Module):
    r"""Cross-entropy plus ``beta`` times the difference between confidence and accuracy of the batch, DCA
    (Liang et al. 2020, "Improved Trainable Calibration Method for Neural Networks on Medical Imaging
    Classification", BMVC).

    .. math:: \mathcal{L} = \mathrm{CE} + \beta \left| \frac{1}{N} \sum_i [\hat y_i = y_i]
        - \frac{1}{N} \sum_i \max_k p_{ik} \right|

    over the batch's non-ignored samples, as the authors' released ``cross_entropy_with_dca_loss``
    (GB-TonyLiang/DCA) computes it: the accuracy carries no gradient (an arg-max), the mean confidence does.
    The per-sample value is ``CE_i + beta * DCA`` (see the section note). ``beta = 0`` is exactly cross-entropy.

    Args:
        beta: the weight of the DCA term, a finite number ``>= 0``; default 5.0, the released code's default.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of both means.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats plus the weighted difference of probabilities, ``(N,)`` or a scalar, float32 for 16-bit logits,
    else their dtype.

    Raises:
        ValueError: on a bad ``beta``, ``reduction`` or ``ignore_index`` (at construction), or on inputs refused by
            :func:`ceexp.checks.check_classification_inputs`.

    Example:
        Both samples right at confidence 1/(1 + e^-2) = 0.8808: |1 - 0.8808| = 0.1192 per unit of beta.

        >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
        >>> round((DCALoss(beta=1.0)(logits, target) - F.cross_entropy(logits, target)).item(), 4)
        0.1192
    """

    def __init__(self, beta: float = 5.0, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("beta", beta)
        _check_common(reduction, ignore_index)
        self.beta = float(beta)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        _, log_probs, log_pt, keep, safe_target = _log_probs_and_true_class(logits, target, self.ignore_index)
        log_conf, pred = log_probs.max(dim=1)
        count = keep.sum().clamp(min=1)
        zero = torch.zeros((), dtype=log_conf.dtype, device=log_conf.device)
        confidence = torch.where(keep, log_conf.exp(), zero).sum() / count
        accuracy = ((pred == safe_target) & keep).sum().to(log_conf.dtype) / count
        return _reduce((accuracy - confidence).abs().mul(self.beta) - log_pt, keep, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class ConfidencePenaltyLoss(nn.Module):
    r"""Cross-entropy minus ``beta`` times the entropy of the prediction, the confidence penalty (Pereyra et al.
    2017, "Regularizing Neural Networks by Penalizing Confident Output Distributions", ICLR workshop).

    .. math:: \ell_i = -\log p_{i,y_i} - \beta H(p_i), \qquad H(p_i) = -\sum_{k=1}^{C} p_{ik} \log p_{ik}

    H in nats, summed over the classes (by-liu/MbLS's ``PenaltyEntropy`` averages it over the classes instead,
    i.e. uses ``beta / C``). The loss can be negative (down to ``-beta log C``). ``beta = 0`` is exactly
    cross-entropy. ``p log p`` is computed as ``exp(s) s`` from ``s = log_softmax``, so a probability that
    underflows to 0 contributes 0, never ``0 * log 0``.

    Args:
        beta: the entropy's weight, a finite number ``>= 0``; default 0.1 (the paper tunes it per task;
            by-liu/MbLS's config uses 0.1).
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on a bad ``beta``, ``reduction`` or ``ignore_index`` (at construction), or on inputs refused by
            :func:`ceexp.checks.check_classification_inputs`.

    Example:
        Uniform over 4 classes: CE = H = log 4 = 1.3863, so beta = 1 gives 0.

        >>> ConfidencePenaltyLoss(beta=1.0)(torch.zeros(1, 4), torch.tensor([2])).abs().item() < 1e-6
        True
    """

    def __init__(self, beta: float = 0.1, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("beta", beta)
        _check_common(reduction, ignore_index)
        self.beta = float(beta)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        _, log_probs, log_pt, keep, _ = _log_probs_and_true_class(logits, target, self.ignore_index)
        minus_entropy = (log_probs.exp() * log_probs).sum(dim=1)
        return _reduce(minus_entropy.mul(self.beta) - log_pt, keep, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class Poly1Loss(nn.Module):
    r"""Poly-1 cross-entropy (Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of Classification
    Loss Functions", ICLR).

    .. math:: \ell_i = -\log p_{i,y_i} + \epsilon (1 - p_{i,y_i})

    ``1 - p`` comes from ``expm1`` of ``log p``, accurate near ``p = 1``. ``epsilon = 0`` is exactly
    cross-entropy. The paper also tries ``epsilon = -1``; ceexp allows only ``epsilon >= 0`` (issue #11).

    Args:
        epsilon: the weight of the first polynomial term, a finite number ``>= 0``; default 1.0, the paper's
            general recommendation.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats plus the weighted probability, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on a bad ``epsilon``, ``reduction`` or ``ignore_index`` (at construction), or on inputs refused
            by :func:`ceexp.checks.check_classification_inputs`.

    Example:
        Two classes, equal logits: log 2 + 1 * (1 - 1/2) = 1.1931.

        >>> round(Poly1Loss()(torch.zeros(1, 2), torch.tensor([0])).item(), 4)
        1.1931
    """

    def __init__(self, epsilon: float = 1.0, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("epsilon", epsilon)
        _check_common(reduction, ignore_index)
        self.epsilon = float(epsilon)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        _, _, log_pt, keep, _ = _log_probs_and_true_class(logits, target, self.ignore_index)
        return _reduce(_one_minus(log_pt).mul(self.epsilon) - log_pt, keep, self.reduction)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class DualFocalLoss(nn.Module):
    r"""Dual focal loss (Tao et al. 2023, "Dual Focal Loss for Calibration", ICML).

    .. math:: \ell_i = -(1 - p_{i,y_i} + p_{i,j})^\gamma \log p_{i,y_i}, \qquad
        p_{i,j} = \max \{ p_{ik} : p_{ik} < p_{i,y_i} \} \ (0 \text{ when no class is below } p_{i,y_i})

    as the authors' released ``DualFocalLoss`` (Linwei94/DualFocalLoss, ``dual_focal_loss.py``) computes it: the
    largest probability *strictly* below the true class's (classes tied with it are left out), chosen without a
    gradient through the choice, while the gradient reaches both ``p_y`` and the chosen ``p_j``. That code sums
    over the batch (``size_average=False``): ``reduction="sum"``. ``gamma = 0`` is exactly cross-entropy.
    ``1 - p_y`` comes from ``expm1`` of ``log p_y``; where the base is 0 (``p_y = 1`` and no ``p_j``) it is read
    as the smallest normal number, so the loss and its gradient are 0 there, not NaN, for every ``gamma``.

    Args:
        gamma: the focusing parameter, a finite number ``>= 0``; default 5.0 (the released class defaults to 0,
            i.e. cross-entropy, and the paper picks gamma per dataset).
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on a bad ``gamma``, ``reduction`` or ``ignore_index`` (at construction), or on inputs refused
            by :func:`ceexp.checks.check_classification_inputs`.

    Example:
        p = (0.5, 0.3, 0.2), true class 0: p_j = 0.3, so (1 - 0.5 + 0.3)^2 log 2 = 0.64 * 0.6931 = 0.4436.

        >>> logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
        >>> round(DualFocalLoss(gamma=2.0)(logits, torch.tensor([0])).item(), 4)
        0.4436
    """

    def __init__(self, gamma: float = 5.0, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_non_negative("gamma", gamma)
        _check_common(reduction, ignore_index)
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        logits = logits.to(working_dtype(logits.dtype))
        keep, safe_target = _keep_and_safe_target(target, self.ignore_index)
        log_probs = F.log_softmax(logits, dim=1)
        with torch.no_grad():  # which class is j: p_y and p_j are then gathered together, one (N, C) backward
            probs = log_probs.exp()
            not_below = probs >= probs.gather(1, safe_target.unsqueeze(1))
            largest_below, j = probs.masked_fill_(not_below, -1.0).max(dim=1)
        log_pt, log_pj = log_probs.gather(1, torch.stack([safe_target, j], dim=1)).unbind(dim=1)
        zero = torch.zeros((), dtype=log_pt.dtype, device=log_pt.device)
        p_j = torch.where(largest_below >= 0, log_pj.exp(), zero)  # 0 where no class is strictly below p_y
        base = (_one_minus(log_pt) + p_j).clamp(min=torch.finfo(log_pt.dtype).tiny)
        return _reduce(-base.pow(self.gamma) * log_pt, keep, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


def _check_schedule(milestones, gammas) -> tuple[tuple[int, ...], tuple[float, ...]]:
    try:
        milestones, gammas = list(milestones), list(gammas)
    except TypeError:
        raise ValueError(f"Expected arguments `milestones` and `gammas` to be sequences, but got {milestones!r} "
                         f"and {gammas!r}") from None
    for m in milestones:
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"Expected argument `milestones` to hold epochs (integers >= 0), but got {milestones!r}")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"Expected argument `milestones` to be strictly increasing, but got {milestones!r}")
    if len(gammas) != len(milestones) + 1:
        raise ValueError(f"Expected argument `gammas` to have len(milestones) + 1 = {len(milestones) + 1} entries, "
                         f"but got {len(gammas)}")
    for g in gammas:
        check_non_negative("gammas", g)
    return tuple(milestones), tuple(float(g) for g in gammas)


class ScheduledFocalLoss(nn.Module):
    r"""Focal loss with gamma scheduled by epoch, FLSc-531 (Mukhoti et al. 2020, "Calibrating Deep Neural
    Networks using Focal Loss", NeurIPS): gamma 5 before epoch 100, 3 before epoch 250, then 1.

    .. math:: \ell_i = -(1 - p_{i,y_i})^{\gamma(e)} \log p_{i,y_i}, \qquad
        \gamma(e) = \mathrm{gammas}[\#\{k : \mathrm{milestones}_k \le e\}]

    with ``e`` the 0-based training epoch, as the released ``train.py`` (torrvision/focal_calibration,
    ``--gamma-schedule 1 --gamma 5 --gamma2 3 --gamma3 1``, steps 100 and 250 of its 350 epochs) chooses gamma
    at the start of each epoch: ``epoch < 100`` gives 5, ``100 <= epoch < 250`` gives 3, ``epoch >= 250`` 1.
    The loss is the focal kernel of :func:`focal_loss` with that gamma (``alpha=None``); that code sums over the
    batch: ``reduction="sum"``. The framework calls :meth:`set_epoch` at the start of every training epoch
    (also after a resume, so the epoch needs no checkpoint state); until then gamma is ``gammas[0]``.
    ``gammas=[0]`` with ``milestones=[]`` is exactly cross-entropy.

    Args:
        milestones: the epochs at which gamma changes, strictly increasing integers ``>= 0``; default
            ``(100, 250)``, the released code's for 350 epochs (scale them to ``trainer.max_epochs``).
        gammas: ``len(milestones) + 1`` focusing parameters, finite numbers ``>= 0``; default ``(5, 3, 1)``.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator.

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on bad ``milestones`` (not integers >= 0, not strictly increasing), ``gammas`` (a negative
            or non-finite one, or not ``len(milestones) + 1`` of them), ``reduction`` or ``ignore_index``; on a
            bad epoch in :meth:`set_epoch`; on inputs refused by :func:`ceexp.checks.check_classification_inputs`.

    Example:
        >>> loss = ScheduledFocalLoss()
        >>> [(loss.set_epoch(e), loss.gamma)[1] for e in (0, 99, 100, 249, 250, 349)]
        [5.0, 5.0, 3.0, 3.0, 1.0, 1.0]
    """

    def __init__(self, milestones: Sequence[int] = (100, 250), gammas: Sequence[float] = (5.0, 3.0, 1.0),
                 reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.milestones, self.gammas = _check_schedule(milestones, gammas)
        _check_common(reduction, ignore_index)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.epoch = 0
        self.gamma = self.gammas[0]

    def set_epoch(self, epoch: int) -> None:
        """Use the gamma of 0-based training epoch ``epoch`` from now on.

        Raises:
            ValueError: unless ``epoch`` is an integer ``>= 0``.
        """
        _check_int("epoch", epoch)
        if epoch < 0:
            raise ValueError(f"Expected argument `epoch` to be an integer >= 0, but got {epoch!r}")
        self.epoch = epoch
        self.gamma = self.gammas[bisect.bisect_right(self.milestones, epoch)]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        return _focal(logits, target, self.gamma, None, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return (f"milestones={list(self.milestones)}, gammas={list(self.gammas)}, epoch={self.epoch}, "
                f"gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}")


# AdaFocal's gammas stay within [-100, 100]: an inverse-focal weight (1 + p)^|gamma| reaches 2^|gamma|, and
# 2^100 (1e30) times a loss of 1e4 nats is still finite in float32 (the rule of the config schema too)
ADAFOCAL_GAMMA_LIMIT = 100.0


def _equal_mass_edges(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``n_bins + 1`` edges splitting the sorted ``conf`` (float64) into equal counts, as
    ``np.interp(np.linspace(0, N, n_bins + 1), np.arange(N), np.sort(conf))`` (Mukhoti et al.'s
    ``histedges_equalN``): positions past the last sample read the largest confidence."""
    s = conf.sort().values
    n = s.numel()
    pos = torch.arange(n_bins + 1, dtype=torch.float64, device=s.device) * (n / n_bins)
    pos[-1] = n  # np.linspace sets the end point exactly
    lo = pos.floor().clamp(max=n - 1)
    lo_index = lo.long()
    hi_index = (lo_index + 1).clamp(max=n - 1)
    # from position n - 1 on, lo = hi = n - 1: the interpolation reads s[-1] itself
    return (s[hi_index] - s[lo_index]) * (pos - lo) + s[lo_index]


class AdaFocalLoss(nn.Module):
    r"""AdaFocal (Ghosh et al. 2022, "AdaFocal: Calibration-aware Adaptive Focal Loss", NeurIPS): a focal
    loss whose gamma is chosen per confidence bin and updated from the validation split after every epoch,
    switching to an inverse-focal loss where a bin is under-confident, as the authors' released ``AdaFocal``
    (3mcloud/adafocal, ``losses/adafocal.py``, with the bins of ``utils/metrics.py``) does.

    Loss, for sample ``i`` whose true-class probability ``p_i`` falls in bin ``b`` (its gamma :math:`\gamma_b`):

    .. math:: \ell_i = -(1 - \mathrm{sign}(\gamma_b)\, p_i)^{|\gamma_b|} \log p_i

    i.e. focal :math:`(1 - p)^\gamma` for :math:`\gamma_b > 0`, inverse-focal :math:`(1 + p)^{|\gamma|}` for
    :math:`\gamma_b < 0`, and cross-entropy for :math:`\gamma_b = 0`. The bin of ``p_i`` is looked up in the
    edges of the last update: bin 0 below the second edge, the last bin from the last inner edge on, else the
    bin with ``lower <= p_i < upper``. No gradient flows through the choice of bin. The released code adds
    ``1e-20`` to the base; here the base is clamped at the smallest normal number instead (so ``p = 1``
    exactly gives a zero loss and gradient, not NaN). That code sums over the batch: ``reduction="sum"``.

    Update (:meth:`update_from_validation`), per bin ``b``, from the validation split's top-label confidences:
    ``n_bins`` equal-mass bins (edges by interpolating the sorted confidences, as Mukhoti et al.'s AdaECE;
    a sample is in a bin when ``lower < conf <= upper``, so the least confident sample is in none),
    :math:`g_b` = mean confidence - accuracy in the bin (0 when empty), then

    .. math:: \gamma_b \leftarrow \gamma_b \exp(\lambda g_b) \text{ if } \gamma_b > 0
        \text{ else } \gamma_b \exp(-\lambda g_b)

    followed by the switch: a new :math:`|\gamma_b| <` ``switch_pt`` becomes ``-switch_pt`` if it was positive
    and ``+switch_pt`` otherwise, and by clipping to ``[gamma_min, gamma_max]``; the edges of those bins become the
    lookup edges for training. Before the first update the bins are ``n_bins`` equal-width bins of [0, 1] and
    every gamma is ``gamma_initial``. Bins are made from top-label confidences but looked up with the
    true-class probability, as in the released code.

    State: ``gammas`` ``(n_bins,)`` and ``edges`` ``(n_bins + 1,)`` are float64 buffers, saved in the
    checkpoint with the model (so a resumed run continues from the last update) and moved by ``.to()``; a
    16-bit ``.to(dtype)`` of the whole module rounds them too. Under DDP the caller must pass the whole
    validation split (gathered from every rank), so that every rank holds the same gammas.

    Args:
        n_bins: the number of bins, an integer ``>= 1``; default 15, the released code's.
        lamda: the update's step size :math:`\lambda`, a finite number ``>= 0`` (0 freezes the gammas apart from
            the switch); default 1.0, the released code's.
        gamma_initial: every bin's gamma before the first update, in ``[gamma_min, gamma_max]``; default 1.0.
        gamma_min: the lower clip, in ``[-100, 0]``; default -2.0, the released code's.
        gamma_max: the upper clip, in ``[0, 100]``; default 20.0, the released code's.
        switch_pt: the magnitude below which gamma switches sign, a finite number ``>= 0``; default 0.2.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` (over non-ignored samples) or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are left out of the mean's denominator (and of the
            update).

    Shapes: logits ``(N, C)`` floating (16-bit ones computed in float32), finite; target ``(N,)`` int64.
    Returns nats, ``(N,)`` or a scalar, float32 for 16-bit logits, else their dtype.

    Raises:
        ValueError: on a bad argument (at construction); on inputs refused by
            :func:`ceexp.checks.check_classification_inputs` (forward) or
            :func:`ceexp.checks.check_probabilities` (update).

    Example:
        A bin whose validation samples are 20% over-confident: gamma 1 becomes e^0.2.

        One bin, (0.6, 0.8] (the least confident sample, at 0.6, lies in none): confidence 0.8, accuracy 3/5.

        >>> loss = AdaFocalLoss(n_bins=1)
        >>> probs = torch.tensor([[0.2, 0.8]] * 5 + [[0.4, 0.6]])
        >>> loss.update_from_validation(probs, torch.tensor([1, 1, 1, 0, 0, 1]))
        tensor([1.2214], dtype=torch.float64)
    """

    def __init__(self, n_bins: int = 15, lamda: float = 1.0, gamma_initial: float = 1.0, gamma_min: float = -2.0,
                 gamma_max: float = 20.0, switch_pt: float = 0.2, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        check_positive_int("n_bins", n_bins)
        check_non_negative("lamda", lamda)
        check_non_negative("switch_pt", switch_pt)
        for name, value in (("gamma_initial", gamma_initial), ("gamma_min", gamma_min), ("gamma_max", gamma_max)):
            _check_finite(name, value)
        if not -ADAFOCAL_GAMMA_LIMIT <= gamma_min <= 0:
            raise ValueError(f"Expected argument `gamma_min` to be a number in [-100, 0], but got {gamma_min!r}")
        if not 0 <= gamma_max <= ADAFOCAL_GAMMA_LIMIT:
            raise ValueError(f"Expected argument `gamma_max` to be a number in [0, 100], but got {gamma_max!r}")
        if not gamma_min <= gamma_initial <= gamma_max:
            raise ValueError(f"Expected argument `gamma_initial` to be a number in [gamma_min, gamma_max] = "
                             f"[{gamma_min}, {gamma_max}], but got {gamma_initial!r}")
        _check_common(reduction, ignore_index)
        self.n_bins = n_bins
        self.lamda = float(lamda)
        self.gamma_initial = float(gamma_initial)
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        self.switch_pt = float(switch_pt)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.register_buffer("gammas", torch.full((n_bins,), self.gamma_initial, dtype=torch.float64))
        self.register_buffer("edges", torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))

    def bins_of(self, p: torch.Tensor) -> torch.Tensor:
        """The bin index ``(N,)`` int64 of each probability in ``p`` ``(N,)`` under the current edges."""
        inner = self.edges[1:-1].to(torch.float64)
        return torch.bucketize(p.detach().to(torch.float64), inner, right=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_classification_inputs(logits, target, "logits", self.ignore_index)
        _, _, log_pt, keep, _ = _log_probs_and_true_class(logits, target, self.ignore_index)
        pt = log_pt.exp()
        gamma = self.gammas.to(device=pt.device, dtype=pt.dtype)[self.bins_of(pt)]
        # 1 - p from expm1 where focal; 1 + p where inverse-focal; 1 where gamma is 0 (cross-entropy)
        base = torch.where(gamma > 0, _one_minus(log_pt), torch.where(gamma < 0, 1 + pt, torch.ones_like(pt)))
        base = base.clamp(min=torch.finfo(pt.dtype).tiny)
        return _reduce(-base.pow(gamma.abs()) * log_pt, keep, self.reduction)

    @torch.no_grad()
    def update_from_validation(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Update every bin's gamma and the bin edges from the validation split's predictions (the rule of the
        class docstring), in float64.

        Args:
            probs: ``(N, C)`` class probabilities (``softmax(logits)``) of the whole validation split.
            target: ``(N,)`` int64 labels; those equal to ``ignore_index`` are left out.

        Returns:
            the new gammas, ``(n_bins,)`` float64 (a copy).

        Raises:
            ValueError: on probabilities or targets refused by :func:`ceexp.checks.check_probabilities`.
        """
        if isinstance(target, torch.Tensor) and isinstance(probs, torch.Tensor) and target.ndim == 1 \
                and probs.ndim == 2 and target.shape[0] == probs.shape[0]:
            keep = target != self.ignore_index
            probs, target = probs[keep], target[keep]
        check_probabilities(probs, target)
        conf, pred = probs.to(torch.float64).max(dim=1)
        correct = (pred == target).to(torch.float64)
        edges = _equal_mass_edges(conf, self.n_bins)
        inside = (conf.unsqueeze(0) > edges[:-1].unsqueeze(1)) & (conf.unsqueeze(0) <= edges[1:].unsqueeze(1))
        count = inside.sum(dim=1)
        gap = ((inside * conf).sum(dim=1) - (inside * correct).sum(dim=1)) / count.clamp(min=1)  # 0 when empty
        gamma = self.gammas.to(torch.float64).cpu()
        gap = gap.cpu()
        step = torch.where(gamma > 0, gap, -gap).mul(self.lamda).exp()
        new = gamma * step
        small = new.abs() < self.switch_pt
        new = torch.where(small & (new > 0), -self.switch_pt, torch.where(small, self.switch_pt, new))
        new = new.clamp(self.gamma_min, self.gamma_max)
        self.gammas.copy_(new)
        self.edges.copy_(edges)
        return new.clone()

    def extra_repr(self) -> str:
        return (f"n_bins={self.n_bins}, lamda={self.lamda}, gamma_initial={self.gamma_initial}, "
                f"gamma_min={self.gamma_min}, gamma_max={self.gamma_max}, switch_pt={self.switch_pt}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}")


# ---------------------------------------------------------------------------------------------------------
# binary heads: one logit z per sample, p = sigmoid(z) the probability of class 1


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C)`` for the softmax-based metrics and calibrators: a one-logit head's ``(N, 1)`` becomes
    ``(N, 2)`` = ``[0, z]``, whose softmax is exactly ``[1 - sigmoid(z), sigmoid(z)]`` (and ``[0, z] / T`` is the
    temperature-scaled ``z / T``); ``(N, C)`` with ``C >= 2`` is returned as it is.

    >>> class_logits(torch.tensor([[0.0], [2.0]])).softmax(dim=1)[:, 1].tolist() == torch.sigmoid(torch.tensor([0.0, 2.0])).tolist()
    True
    """
    if logits.ndim == 2 and logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def _binary_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """``(z (N,), y (N,) in the working dtype, keep (N,))`` from one-logit ``(N, 1)`` (or ``(N,)``) logits and int64
    targets in {0, 1} or ``ignore_index``.

    Raises:
        ValueError: logits of another shape, or a target outside {0, 1} that is not ``ignore_index``.
    """
    if not (logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)):
        raise ValueError(f"Expected one logit per sample, `logits` of shape (N, 1), but got {tuple(logits.shape)}: "
                         "a binary loss trains a one-logit head (two classes)")
    z = logits.reshape(-1).to(working_dtype(logits.dtype))
    keep = target != ignore_index
    bad = keep & (target != 0) & (target != 1)
    if bool(bad.any()):
        raise ValueError(f"Expected targets in {{0, 1}} (or ignore_index={ignore_index}), but got "
                         f"{target[bad][0].item()}: a binary loss is for two classes")
    return z, (target * keep).to(z.dtype), keep


class BinaryCrossEntropyLoss(nn.BCEWithLogitsLoss):
    r"""Binary cross-entropy of one logit per sample: torch's :class:`~torch.nn.BCEWithLogitsLoss` taking ceexp's
    inputs, logits ``(N, 1)`` and int64 targets ``(N,)`` in {0, 1}.

    .. math:: \ell_i = -[w_+ y_i \log \sigma(z_i) + (1 - y_i) \log(1 - \sigma(z_i))]

    in nats, ``w_+`` the ``pos_weight`` (e.g. ``n_negative / n_positive`` for imbalanced data). With
    ``pos_weight=None`` it equals ``F.cross_entropy`` of the two-class logits ``[0, z]``. ``reduction="mean"``
    divides by the number of non-ignored samples.

    Args:
        pos_weight: the weight of the positive class's term, a number > 0, or None (1).
        reduction: ``"none"`` (shape ``(N,)``), ``"mean"`` or ``"sum"``.
        ignore_index: targets equal to it contribute 0 and are not counted.

    Raises:
        ValueError: ``pos_weight`` <= 0; in ``forward``, logits not ``(N, 1)`` or targets outside {0, 1}.
    """

    one_logit = True  # the model gets one output (ceexp.train)

    def __init__(self, pos_weight: float | torch.Tensor | None = None, reduction: str = "mean",
                 ignore_index: int = -100):
        if pos_weight is not None:
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.get_default_dtype()).reshape(())
            if not bool(pos_weight > 0):
                raise ValueError(f"Expected argument `pos_weight` to be a number > 0, but got {pos_weight.item()}")
        check_choice("reduction", reduction, _REDUCTIONS)
        _check_int("ignore_index", ignore_index)
        super().__init__(pos_weight=pos_weight)
        self.reduction = reduction  # applied in forward, after the ignored samples are dropped
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z, y, keep = _binary_inputs(logits, target, self.ignore_index)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(z.dtype)
        per_sample = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight, reduction="none")
        return _reduce(per_sample, keep, self.reduction)


class SigmoidFocalLoss(nn.Module):
    r"""Sigmoid focal loss of one logit per sample, Lin et al. 2017, "Focal Loss for Dense Object Detection"
    (ICCV), eqs. 4-5, in its original binary form:

    .. math:: \ell_i = -\alpha_t (1 - p_t)^\gamma \log p_t, \qquad p_t = \sigma(z_i) \text{ if } y_i = 1
              \text{ else } 1 - \sigma(z_i), \quad \alpha_t = \alpha \text{ if } y_i = 1 \text{ else } 1 - \alpha

    in nats, from ``F.logsigmoid`` (finite for saturated logits). ``alpha=None`` weighs both classes 1, and with
    ``gamma=0`` it is then exactly binary cross-entropy. The paper's defaults: ``alpha=0.25``, ``gamma=2``.
    Takes logits ``(N, 1)`` and int64 targets ``(N,)`` in {0, 1}; ``reduction="mean"`` divides by the number of
    non-ignored samples (torchvision's ``sigmoid_focal_loss`` convention).

    Raises:
        ValueError: ``gamma`` < 0, ``alpha`` outside [0, 1]; in ``forward``, logits not ``(N, 1)`` or targets outside
            {0, 1}.
    """

    one_logit = True

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean",
                 ignore_index: int = -100):
        super().__init__()
        check_non_negative("gamma", gamma)
        if alpha is not None:
            _check_probability("alpha", alpha)
        check_choice("reduction", reduction, _REDUCTIONS)
        _check_int("ignore_index", ignore_index)
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z, y, keep = _binary_inputs(logits, target, self.ignore_index)
        signed = torch.where(y > 0, z, -z)  # log p_t = logsigmoid(+z) for y = 1, logsigmoid(-z) for y = 0
        log_pt = F.logsigmoid(signed)
        one_minus_pt = torch.sigmoid(-signed)
        per_sample = -one_minus_pt.pow(self.gamma) * log_pt
        if self.alpha is not None:
            per_sample = per_sample * (self.alpha * y + (1.0 - self.alpha) * (1.0 - y))  # alpha_t, in z's dtype
        return _reduce(per_sample, keep, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"
