"""Argument and tensor checks shared by the losses, metrics and temperature scaling, and their working dtype.

Every check raises ``ValueError`` with one line that names the argument, what was
expected and what was got, in the style of torchmetrics:
"Expected argument `n_bins` to be a positive integer, but got 0".

Reduced precision. The losses and metrics compute and accumulate in :func:`working_dtype` of their input:
float32 for float16 and bfloat16 tensors, the tensor's own dtype for float32 and float64. A 16-bit sum of many
terms overflows (float16 stops at 65,504) or loses its last digits (bfloat16 keeps about 3 significant
digits), so no sum or mean is ever taken in 16 bits; :func:`check_probabilities` sums rows in the working dtype
too, and allows for the rounding of every probability to a 16-bit dtype.
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
    "working_dtype",
]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute and accumulate in for inputs of ``dtype``: float32 or wider.

    float16 and bfloat16 give float32 (what ``torch.autocast`` runs ``cross_entropy`` in); float32 and float64
    are kept, so a float64 input is never narrowed.

    Example:
        >>> working_dtype(torch.bfloat16), working_dtype(torch.float16), working_dtype(torch.float64)
        (torch.float32, torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


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

    Each row must sum to 1 within ``atol`` plus the machine epsilon of ``probs``' dtype (0.0078 for bfloat16,
    0.00098 for float16, 1.2e-7 for float32): rounding each of a row's probabilities to the dtype moves its
    sum by up to half that epsilon (a bfloat16 softmax of 256 x 100 logits of standard deviation 5 has rows
    summing to 1 +- 0.003), and normalising in the dtype itself (``p / p.sum()``) by up to about the epsilon.
    The sums are accumulated in :func:`working_dtype` (float32 or wider), never rounded to 16 bits.

    Raises:
        ValueError: as :func:`check_classification_inputs`, or when a probability lies outside
            ``[0, 1]`` or a row does not sum to 1 within that tolerance.

    Example:
        A row summing to 1 - 2^-8, the bfloat16 number next below 1: accepted in bfloat16, not in float64.

        >>> probs = torch.tensor([[0.5, 0.25, 0.24609375]], dtype=torch.bfloat16)
        >>> check_probabilities(probs, torch.tensor([0]))
        >>> check_probabilities(probs.double(), torch.tensor([0]))
        Traceback (most recent call last):
        ...
        ValueError: Expected each row of `probs` to sum to 1 (within 0.001), but a row sums to 0.996094
    """
    check_classification_inputs(probs, target, input_name="probs")
    lo, hi = torch.aminmax(probs)
    if lo < 0 or hi > 1:
        raise ValueError(
            f"Expected `probs` in [0, 1], but got values in [{lo.item():.4g}, {hi.item():.4g}]"
            " (pass softmax(logits), not logits)"
        )
    sums = probs.sum(dim=1, dtype=working_dtype(probs.dtype))
    tol = atol + torch.finfo(probs.dtype).eps
    error = (sums - 1).abs()
    if error.max() > tol:
        raise ValueError(
            f"Expected each row of `probs` to sum to 1 (within {tol:.2g}), but a row sums to "
            f"{sums[error.argmax()].item():.6g}"
        )
