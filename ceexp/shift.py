"""Synthetic distribution shift: common corruptions applied on the fly to whole batches of images, on their device.

The corruptions of Hendrycks & Dietterich 2019 ("Benchmarking neural network robustness to common corruptions and
perturbations", ICLR; their ``make_cifar_c.py`` made CIFAR-10-C) and one of MNIST-C (Mu & Gilmer 2019, "MNIST-C:
a robustness benchmark for computer vision"), each at severities 1-5, written as tensor operations on a
``(B, C, H, W)`` batch so that a test set is corrupted where it lives (GPU batches stay on the GPU) and the result
depends only on the generator's seed.

Pixel space. Every corruption is defined on pixel values in [0, 1] (0 black, 1 white), as in both papers, and its
output is clipped to [0, 1]. The datamodules hand out *normalised* batches: the image sets
(:mod:`ceexp.data.images`) ``(x_uint8 - mean) / std`` per channel, mean and std in pixel units 0..255; the
embedded image sets (``mnist_5k``, raw values 0..255; ``digits``, raw values 0..16 and flattened to 64 features)
one mean and spread over all pixels. Pass a :class:`PixelSpace` that describes the batch; :func:`corrupt` maps it
to [0, 1], corrupts, and maps the result back to the batch's own space and shape::

    space = PixelSpace(dm.mean, dm.std, max_value=255)               # MNIST, CIFAR: (B, C, H, W) batches
    space = PixelSpace(mean, std, max_value=16, shape=(1, 8, 8))     # digits: (B, 64) batches
    g = torch.Generator(device=x.device).manual_seed(0)
    x_shifted = corrupt(x, "gaussian_noise", 3, g, space=space)

Without ``space`` the batch is taken to be in [0, 1] already. Unlike the published CIFAR-10-C files, results are
not rounded to 8 bits.

Two parameter tables. Colour images (C != 1) get CIFAR-10-C's parameters (``make_cifar_c.py``), so a 32x32
CIFAR batch is corrupted as CIFAR-10-C was. Hendrycks & Dietterich tuned those on CIFAR's natural images; on
grey digits (white strokes on black) they barely move a classifier's accuracy (noise of sigma 0.1 and blur of
sigma 1 pixel leave an MLP on MNIST within 1 point of its clean accuracy). Single-channel images (C == 1: MNIST,
Fashion-MNIST, mnist_5k, digits) therefore get the stronger parameters of MNIST-C's code (``corruptions.py``),
except in the rows marked *, chosen here on MLPs trained on mnist_5k so that their accuracy falls at every step:
MNIST-C's gaussian noise (sigma 0.08 to 0.38) leaves accuracy where it was at its first two severities, so sigma
runs from 0.2 to 0.6; its shot noise (lambda 60 down to 3) costs near-binary digits about 2 points at most, so
lambda starts at its severity-4 value and goes on down; its pixelate sizes (28 px to 16, 14, 11, 8, 7) do not
order the damage (16 and 8 alias worse than 14 and 7), so the sizes here are 12, 10, 7, 6, 4. Blur widths are
given in pixels of a 32-pixel (colour) or 28-pixel (grey) image and scale with the image side ``min(H, W)``;
pixelate fractions are relative to the side already. Severity 0 is the identity for every corruption (the batch
is returned as it is).

    corruption      parameter (unit)              colour, C != 1 (CIFAR-10-C)      grey, C == 1 (MNIST-C; * here)
    gaussian_noise  sigma (pixel value)           0.04  0.06  0.08  0.09  0.10     0.2*  0.3*  0.4*  0.5*  0.6*
    shot_noise      lambda (photons per unit)     500   250   100   75    50       5*    2*    1*    0.5*  0.25*
    impulse_noise   amount (fraction of values)   0.01  0.02  0.03  0.05  0.07     0.03  0.06  0.09  0.17  0.27
    gaussian_blur   sigma (pixels at side 32/28)  0.4   0.6   0.7   0.8   1.0      1     2     3     4     6
    contrast        c (factor)                    0.75  0.5   0.4   0.3   0.15     0.4   0.3   0.2   0.1   0.05
    brightness      c (HSV value shift)           0.05  0.1   0.15  0.2   0.3      0.1   0.2   0.3   0.4   0.5
    pixelate        c (fraction of the side)      0.95  0.9   0.85  0.75  0.65     0.43* 0.36* 0.25* 0.22* 0.15*
    rotation        angle (radians, sign random)  (refused: MNIST-like only)       0.2   0.4   0.6   0.8   1.0

Definitions (``p`` a pixel value in [0, 1], every output clipped to [0, 1]; random draws independent per value,
i.e. per image, channel and pixel, unless said):

- ``gaussian_noise``: ``p + sigma * N(0, 1)``.
- ``shot_noise``: ``Poisson(lambda * p) / lambda`` (photon noise: fewer photons, more noise).
- ``impulse_noise``: salt and pepper (scikit-image ``random_noise(mode="s&p")``): each value is hit with
  probability ``amount``, and a hit value becomes 1 or 0 with probability 1/2 each.
- ``gaussian_blur``: each channel convolved with a Gaussian of standard deviation ``sigma`` pixels, truncated at
  ``int(4 sigma + 0.5)`` pixels, borders extended with the edge value (scipy ``gaussian_filter(mode="nearest")``,
  which scikit-image's ``gaussian`` calls).
- ``contrast``: ``(p - m) * c + m``, ``m`` the mean of that image's channel.
- ``brightness``: the HSV value ``V = max over channels`` becomes ``min(V + c, 1)`` with hue and saturation
  kept, i.e. ``p * min(V + c, 1) / V`` (a black pixel becomes grey ``min(c, 1)``); for one channel ``p + c``.
- ``pixelate``: PIL's ``BOX`` resize to ``int(H c) x int(W c)`` and back (each small pixel the mean of the pixels
  whose centres fall in its box, then each pixel copies the small pixel its centre falls in).
- ``rotation`` (MNIST-C): each image rotated by ``+angle`` or ``-angle`` (sign drawn per image; positive is
  counter-clockwise as displayed, row 0 at the top) about its centre, bilinear, black outside the image. Only for
  MNIST-like images ``(1, 28, 28)``: the corners it uncovers are black, which is neutral only on a black
  background; any other shape raises ``ValueError``.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["CORRUPTIONS", "SEVERITIES", "Corruption", "PixelSpace", "check_corruption", "corrupt",
           "corruption_parameter"]

SEVERITIES = (1, 2, 3, 4, 5)


# -- the corruptions, on pixel batches (B, C, H, W) in [0, 1] ----------------------------------------------

def _draw(kind: Callable, shape: Sequence[int], p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``kind(shape)`` drawn on the generator's device (so a CPU generator gives the same values for a batch on any
    device), in ``p``'s dtype, moved to ``p``'s device."""
    device = generator.device if generator is not None else p.device
    return kind(tuple(shape), generator=generator, device=device, dtype=p.dtype).to(p.device)


def _gaussian_noise(p: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return (p + sigma * _draw(torch.randn, p.shape, p, generator)).clamp_(0, 1)


def _shot_noise(p: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else p.device
    counts = torch.poisson((p * rate).to(device), generator=generator).to(p.device)
    return (counts / rate).clamp_(0, 1)


def _impulse_noise(p: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    hit = _draw(torch.rand, p.shape, p, generator) < amount
    salt = _draw(torch.rand, p.shape, p, generator) < 0.5
    return torch.where(hit, salt.to(p.dtype), p)


def _gaussian_blur(p: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's truncate=4.0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=p.device, dtype=p.dtype)
    b, c, h, w = p.shape
    out = p
    for dim, size in ((3, w), (2, h)):  # separable: along W, then along H
        # "nearest" borders for any radius (even one beyond the image): clamped indices
        index = torch.arange(-radius, size + radius, device=p.device).clamp_(0, size - 1)
        padded = out.index_select(dim, index)
        weight = kernel.view(1, 1, 1, -1) if dim == 3 else kernel.view(1, 1, -1, 1)
        out = F.conv2d(padded.reshape(b * c, 1, *padded.shape[2:]), weight).reshape(b, c, h, w)
    return out.clamp_(0, 1)


def _contrast(p: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    m = p.mean(dim=(2, 3), keepdim=True)
    return ((p - m) * factor + m).clamp_(0, 1)


def _brightness(p: torch.Tensor, shift: float, generator: torch.Generator | None) -> torch.Tensor:
    value = p.amax(dim=1, keepdim=True)  # HSV value; hue and saturation are ratios, unchanged by a common factor
    new = (value + shift).clamp(0, 1)
    scaled = p * (new / value.clamp_min(torch.finfo(p.dtype).tiny))
    return torch.where(value > 0, scaled, new.expand_as(p)).clamp_(0, 1)


def _box_resize_matrix(n: int, m: int) -> torch.Tensor:
    """``(n, n)`` float64 matrix of PIL's BOX resize from n to m pixels and back to n (exact integer tests)."""
    down = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):  # input pixel j falls in box i when its centre j + 1/2 is in (i n / m, (i + 1) n / m]
        js = [j for j in range(n) if 2 * i * n < (2 * j + 1) * m <= 2 * (i + 1) * n]
        down[i, js] = 1.0 / len(js)
    up = torch.zeros(n, m, dtype=torch.float64)
    for i in range(n):  # output pixel i copies the small pixel its centre (i + 1/2) m / n falls in
        up[i, ((2 * i + 1) * m) // (2 * n)] = 1.0
    return up @ down


def _pixelate(p: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    h, w = p.shape[2:]
    rows = _box_resize_matrix(h, max(int(h * fraction), 1)).to(device=p.device, dtype=p.dtype)
    cols = _box_resize_matrix(w, max(int(w * fraction), 1)).to(device=p.device, dtype=p.dtype)
    return (rows @ p @ cols.T).clamp_(0, 1)


def _rotation(p: torch.Tensor, angle: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else p.device
    sign = torch.randint(0, 2, (p.shape[0],), generator=generator, device=device).to(p.device)
    theta = (2 * sign - 1).to(p.dtype) * angle
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # grid_sample reads the output pixel at (x, y) (y pointing down) from the input at R(theta) (x, y): the image
    # turns by -theta in those axes, i.e. by +theta counter-clockwise as displayed
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(affine, list(p.shape), align_corners=False)
    return F.grid_sample(p, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def _mnist_like(name: str, shape: tuple[int, ...]) -> None:
    if tuple(shape) != (1, 28, 28):
        raise ValueError(f"Expected images of shape (1, 28, 28) for corruption {name!r} (MNIST-like, black "
                         f"background), but got images of shape {tuple(shape)}")


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``apply(pixels, parameter, generator)`` on ``(B, C, H, W)`` values in [0, 1], and its
    parameter per severity 1-5 for colour (C != 1) and single-channel (C == 1) images.

    ``unit`` names the parameter's unit; ``colour`` is None where colour images are refused; ``spatial`` marks a
    parameter in pixels, given at side 32 (colour) or 28 (grey) and scaled by ``min(H, W) / 32`` (or ``/ 28``);
    ``check(name, (C, H, W))`` raises ``ValueError`` for image shapes the corruption does not apply to.
    """

    apply: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]
    colour: tuple[float, ...] | None
    grey: tuple[float, ...]
    unit: str
    spatial: bool = False
    check: Callable[[str, tuple[int, ...]], None] | None = None


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10), (0.2, 0.3, 0.4, 0.5, 0.6),
                                 "standard deviation, pixel value"),
    "shot_noise": Corruption(_shot_noise, (500, 250, 100, 75, 50), (5, 2, 1, 0.5, 0.25), "photons per unit value"),
    "impulse_noise": Corruption(_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07), (0.03, 0.06, 0.09, 0.17, 0.27),
                                "fraction of values"),
    "gaussian_blur": Corruption(_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0), (1, 2, 3, 4, 6),
                                "standard deviation, pixels", spatial=True),
    "contrast": Corruption(_contrast, (0.75, 0.5, 0.4, 0.3, 0.15), (0.4, 0.3, 0.2, 0.1, 0.05), "factor"),
    "brightness": Corruption(_brightness, (0.05, 0.1, 0.15, 0.2, 0.3), (0.1, 0.2, 0.3, 0.4, 0.5), "HSV value shift"),
    "pixelate": Corruption(_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), (0.43, 0.36, 0.25, 0.22, 0.15),
                           "fraction of the side"),
    "rotation": Corruption(_rotation, None, (0.2, 0.4, 0.6, 0.8, 1.0), "radians", check=_mnist_like),
}


def check_corruption(name: str, severity: int | None = None) -> None:
    """Check a corruption name and (when given) a severity, before any data is touched.

    Raises:
        ValueError: one line: ``Expected argument `name` to be one of gaussian_noise, ..., but got 'fog'``, or
            ``Expected argument `severity` to be an integer from 1 to 5 (0 is the identity), but got 7``.
    """
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(f"Expected argument `name` to be one of {', '.join(CORRUPTIONS)}, but got {name!r}")
    if severity is not None and (isinstance(severity, bool) or not isinstance(severity, numbers.Integral)
                                 or not 0 <= severity <= len(SEVERITIES)):
        raise ValueError(f"Expected argument `severity` to be an integer from 1 to {len(SEVERITIES)} (0 is the "
                         f"identity), but got {severity!r}")


def corruption_parameter(name: str, severity: int, shape: Sequence[int]) -> float:
    """The parameter in force for corruption ``name`` at ``severity`` (1-5) on images of shape ``(C, H, W)``: the
    table's entry (module docstring) for colour (C != 1) or grey (C == 1) images, blur widths scaled to the side.

    Raises:
        ValueError: an unknown name or a severity outside 1-5 (see :func:`check_corruption`), or an image shape
            the corruption does not apply to (``rotation``: only ``(1, 28, 28)``); one line naming both.

    Example: CIFAR-10-C's blur of 1 pixel at severity 5 is 2 pixels on 64x64 colour images.

        >>> corruption_parameter("gaussian_blur", 5, (3, 64, 64))
        2.0
    """
    check_corruption(name, severity)
    if severity == 0:
        raise ValueError(f"Expected argument `severity` to be an integer from 1 to {len(SEVERITIES)} (0 is the "
                         "identity, which has no parameter), but got 0")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"Expected images of shape (C, H, W) for corruption {name!r}, but got shape {shape}")
    spec = CORRUPTIONS[name]
    if spec.check is not None:
        spec.check(name, shape)
    grey = shape[0] == 1
    value = float((spec.grey if grey else spec.colour)[severity - 1])
    if spec.spatial:
        value *= min(shape[1:]) / (28 if grey else 32)
    return value


@dataclass(frozen=True)
class PixelSpace:
    """How a datamodule's batches map to pixel values in [0, 1]: ``pixels = (x * std + mean) / max_value``.

    Args:
        mean, std: per channel (a sequence of C numbers, or one number for all), in the raw units in which
            ``max_value`` is white: the image datamodules' ``mean`` / ``std`` (units 0..255), or the single mean
            and spread of an embedded image set.
        max_value: the raw value of white: 255 for 8-bit images (MNIST, CIFAR, mnist_5k), 16 for ``digits``.
        shape: ``(C, H, W)`` of the images when the batch holds them flattened (``digits``: ``(1, 8, 8)``);
            None when batches are ``(B, C, H, W)`` already.
    """

    mean: float | Sequence[float] = 0.0
    std: float | Sequence[float] = 1.0
    max_value: float = 255.0
    shape: tuple[int, int, int] | None = None

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        as_column = lambda v: torch.as_tensor(v, dtype=torch.float64).reshape(1, -1, 1, 1).to(x.device, x.dtype)
        return as_column(self.mean), as_column(self.std)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Batch ``x`` ``(B, ...)`` (floating) -> pixel values ``(B, C, H, W)`` in [0, 1] (clipped), ``x``'s dtype."""
        images = x.reshape(x.shape[0], *self.shape) if self.shape is not None else x
        mean, std = self._stats(images)
        return ((images * std + mean) / self.max_value).clamp(0, 1)

    def normalise(self, pixels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Pixel values ``(B, C, H, W)`` -> the batch space, in the shape of ``like`` (the batch they came from)."""
        mean, std = self._stats(pixels)
        return ((pixels * self.max_value - mean) / std).reshape(like.shape)


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None,
            space: PixelSpace | None = None) -> torch.Tensor:
    """Corrupt every image of a batch with corruption ``name`` at ``severity`` (see the module docstring).

    Args:
        x: a floating batch: ``(B, C, H, W)`` pixel values in [0, 1] when ``space`` is None, else a batch in the
            space ``space`` describes (normalised, possibly flattened), on any device.
        name: a key of :data:`CORRUPTIONS`.
        severity: 0 (the identity: ``x`` itself is returned) or 1-5.
        generator: the source of every random draw (noise, salt and pepper, rotation signs); a fixed seed gives the
            same output. Draws are made on the generator's device and moved to ``x``'s: a generator on ``x``'s
            device avoids the transfer, a CPU generator gives the same values on every device. None: torch's
            global RNG. Ignored by the deterministic corruptions (blur, contrast, brightness, pixelate).
        space: maps ``x`` to pixel values and back (:class:`PixelSpace`, or any object with its ``denormalise``
            and ``normalise`` methods).

    Returns:
        A new tensor of ``x``'s shape, dtype and device, in ``x``'s space (pixel values clipped to [0, 1]).

    Raises:
        ValueError: one line, for an unknown ``name`` or a ``severity`` outside 0-5 (:func:`check_corruption`), a
            batch that is not floating or not ``(B, C, H, W)`` in pixel space, or images the corruption does not
            apply to (``rotation`` on anything but ``(1, 28, 28)``).

    Example (one grey 2x2 image; contrast at severity 2 scales deviations from the image's mean 0.5 by 0.3):

        >>> x = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
        >>> corrupt(x, "contrast", 2)
        tensor([[[[0.3500, 0.6500],
                  [0.5000, 0.5000]]]])
        >>> corrupt(x, "contrast", 0) is x
        True
    """
    check_corruption(name, severity)
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"Expected `x` to be a floating tensor, but got {getattr(x, 'dtype', type(x).__name__)}")
    if severity == 0:
        return x
    pixels = space.denormalise(x) if space is not None else x
    if pixels.ndim != 4:
        raise ValueError(f"Expected `x` to be images (B, C, H, W) in pixel space, but got shape {tuple(pixels.shape)}"
                         + ("" if space is not None else "; pass `space` for flattened or normalised batches"))
    parameter = corruption_parameter(name, severity, pixels.shape[1:])
    work = pixels if pixels.dtype in (torch.float32, torch.float64) else pixels.float()  # half: compute in float32
    out = CORRUPTIONS[name].apply(work, parameter, generator).to(x.dtype)
    return space.normalise(out, x) if space is not None else out
