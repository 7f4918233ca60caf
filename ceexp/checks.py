"""Argument and tensor checks shared by the losses, metrics and temperature scaling.

Every check raises ``ValueError`` with one line that names the argument, what was
expected and what was got, in the style of torchmetrics:
"Expected argument `n_bins` to be a positive integer, but got 0".
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "check_positive_int",
    "check_choice",
    "check_non_negative",
    "check_classification_inputs",
    "check_probabilities",
]


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"Expected argument `{name}` to be one of {list(allowed)}, but got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected argument `{name}` to be a finite number >= 0, but got {value!r}")


def check_classification_inputs(
    input: torch.Tensor,
    target: torch.Tensor,
    input_name: str = "input",
    ignore_index: int | None = None,
) -> None:
    """Check a ``(N, C)`` floating score tensor against ``(N,)`` int64 class targets.

    Args:
        input: logits or probabilities, shape ``(N, C)``, floating dtype, finite.
        target: class indices, shape ``(N,)``, dtype int64, each in ``[0, C)`` (or equal to ``ignore_index``).
        input_name: the argument name used in error messages (``"logits"`` or ``"probs"``).
        ignore_index: a target value that is allowed outside ``[0, C)``.

    Raises:
        ValueError: on a wrong rank or dtype, ``N`` mismatch (``(N, 1)`` targets are not broadcast),
            ``C < 2``, empty input, non-finite scores or out-of-range targets.
    """
    if not isinstance(input, torch.Tensor) or input.ndim != 2:
        shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"Expected `{input_name}` to have shape (N, C), but got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"Expected `{input_name}` to be a floating tensor, but got dtype {input.dtype}")
    if not isinstance(target, torch.Tensor) or target.ndim != 1:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"Expected `target` to have shape (N,) of class indices, but got {shape}")
    if target.dtype != torch.int64:
        raise ValueError(f"Expected `target` to have dtype torch.int64 (class indices), but got {target.dtype}")
    n, c = input.shape
    if target.shape[0] != n:
        raise ValueError(
            f"Expected `target` to have N={n} entries to match `{input_name}` of shape {tuple(input.shape)}, "
            f"but got {target.shape[0]}"
        )
    if n == 0:
        raise ValueError(f"Expected non-empty `{input_name}`, but got shape {tuple(input.shape)}")
    if c < 2:
        raise ValueError(f"Expected `{input_name}` to have C >= 2 classes, but got shape {tuple(input.shape)}")
    # These run on every loss call, so each is one fused pass: min and max propagate NaN and expose +-inf
    # (~10x cheaper than isfinite(input).all()), and the targets are filtered only when their range is off.
    lo, hi = torch.aminmax(input)
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
        raise ValueError(f"Expected `{input_name}` to be finite, but it contains NaN or inf")
    t_lo, t_hi = torch.aminmax(target)
    if not (0 <= t_lo.item() and t_hi.item() < c):
        valid = target if ignore_index is None else target[target != ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() >= c):
            bad = valid[(valid < 0) | (valid >= c)][0].item()
            raise ValueError(f"Expected `target` values in [0, {c}), but got {bad}")


def check_probabilities(probs: torch.Tensor, target: torch.Tensor, atol: float = 1e-3) -> None:
    """Check ``(N, C)`` class probabilities against ``(N,)`` int64 targets.

    Raises:
        ValueError: as :func:`check_classification_inputs`, or when a probability lies outside
            ``[0, 1]`` or a row does not sum to 1 within ``atol``.
    """
    check_classification_inputs(probs, target, input_name="probs")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"Expected `probs` in [0, 1], but got values in [{probs.min().item():.4g}, {probs.max().item():.4g}]"
            " (pass softmax(logits), not logits)"
        )
    sums = probs.sum(dim=1)
    worst = (sums - 1).abs().max()
    if worst > atol:
        raise ValueError(
            f"Expected each row of `probs` to sum to 1 (within {atol}), but a row sums to "
            f"{sums[(sums - 1).abs().argmax()].item():.6g}"
        )
