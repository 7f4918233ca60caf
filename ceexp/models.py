"""Classifiers: ``nn.Module``s mapping a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``.

Every model takes ``input_shape`` and ``num_classes`` from the data (``train`` passes them),
so a model config only holds the architecture's own hyperparameters.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Multilayer perceptron: flatten, then ``Linear -> ReLU -> Dropout`` per hidden layer, then a linear head.

    Args:
        input_shape: shape of one sample, e.g. ``(64,)`` or ``(1, 28, 28)``; flattened.
        num_classes: number of output logits C.
        hidden_sizes: widths of the hidden layers (may be empty: multinomial logistic regression).
        dropout: dropout probability after each hidden layer, in [0, 1).

    Shapes: input ``(B, *input_shape)`` float32, output ``(B, C)`` float32 logits.

    Raises:
        ValueError: for a non-positive hidden size or dropout outside [0, 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (128, 128),
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden_sizes):
            raise ValueError(f"model.hidden_sizes={hidden_sizes!r} is invalid: expected a list of integers >= 1")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout!r} is invalid: expected a number in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
