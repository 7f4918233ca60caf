"""Data augmentation on whole batches of image tensors, on whatever device the batch is on.

The standard CIFAR training augmentation (He et al. 2016, Sec. 4.2; torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``): pad each image by 4 pixels on every side,
crop a window of the original size at a uniformly drawn offset, and mirror it left-right with
probability 1/2. Done here for a whole ``(B, C, H, W)`` batch with two ``gather`` calls, so a GPU epoch
is not bound by per-image work in a CPU loader.
"""
from __future__ import annotations

import torch

__all__ = ["crop_flip", "random_crop_flip"]


def crop_flip(
    x: torch.Tensor, padding: int, fill: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Pad, crop and mirror each image of a batch with given parameters (the deterministic part).

    Args:
        x: images ``(B, C, H, W)``, floating.
        padding: pixels added on each side (>= 0).
        fill: the padding value per channel, shape ``(C,)`` (for normalised images, the normalised value of a
            black pixel, ``-mean / std``), or a 0-dim tensor for all channels.
        top, left: int64 ``(B,)``, offsets of the crop window in the padded image, each in ``[0, 2 * padding]``.
        flip: bool ``(B,)``; True mirrors that image left-right (after the crop).

    Returns:
        ``(B, C, H, W)`` tensor of ``x``'s dtype and device; ``out[b] = pad(x[b])[:, top:top+H, left:left+W]``,
        then flipped along W where ``flip[b]``.
    """
    b, c, h, w = x.shape
    p = padding
    padded = fill.to(dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
    padded[:, :, p:p + h, p:p + w] = x
    rows = top.to(x.device)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    ar = torch.arange(w, device=x.device)
    cols = left.to(x.device)[:, None] + torch.where(flip.to(x.device)[:, None], w - 1 - ar, ar)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, fill: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with ``padding`` and random horizontal flip of every image in ``x`` ``(B, C, H, W)``.

    Offsets are uniform on ``[0, 2 * padding]`` for each axis and each image; each image is flipped with
    probability 1/2. The random draws come from ``generator`` (on ``x``'s device) or the global RNG.
    ``fill`` as in :func:`crop_flip` (default 0). Returns a new tensor; ``x`` is not modified.

    Raises:
        ValueError: ``x`` not 4-D, or a negative ``padding``.
    """
    if x.ndim != 4:
        raise ValueError(f"Expected `x` to have shape (B, C, H, W), but got {tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"Expected argument `padding` to be an integer >= 0, but got {padding!r}")
    b = x.shape[0]
    draw = {"generator": generator, "device": x.device}
    top = torch.randint(0, 2 * padding + 1, (b,), **draw)
    left = torch.randint(0, 2 * padding + 1, (b,), **draw)
    flip = torch.randint(0, 2, (b,), **draw).bool()
    fill = torch.zeros((), device=x.device) if fill is None else fill
    return crop_flip(x, padding, fill, top, left, flip)
