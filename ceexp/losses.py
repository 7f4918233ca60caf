"""The training objectives of ceexp that torch does not ship: focal, FLSD-53 and Brier.

Plain cross-entropy, label smoothing and class-weighted cross-entropy are torch's own
:class:`torch.nn.CrossEntropyLoss` (``label_smoothing=...``, ``weight=...``) and are not repeated here.

Every loss takes logits ``(N, C)`` (floating) and class indices ``(N,)`` (int64), like
``nn.CrossEntropyLoss``, and is computed from ``F.log_softmax`` so that saturated logits stay finite.
Per-sample values are in nats (focal, FLSD-53) or in squared probability (Brier).
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

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ceexp.checks import check_choice, check_classification_inputs, check_non_negative, working_dtype

__all__ = [
    "BrierLoss",
    "FocalLoss",
    "SampleDependentFocalLoss",
    "brier_loss",
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
    # validated targets lie in [0, C) or equal ignore_index, so a negative ignore_index is the only negative value
    return keep, (target.clamp(min=0) if ignore_index < 0 else target * keep)


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
