"""Tests of the run's reliability diagrams in ceexp.plots (drawn with Pillow), read back from the pixels: each
accuracy bar reaches its bin's accuracy, its fill is as opaque as its 95% interval is narrow (a nearly empty bin is
drawn faint), and the interval is drawn as an error bar from its low to its high end."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ceexp.metrics import reliability_bins
from ceexp.plots import _BLUE, _panel_axes, reliability_diagram_image, save_reliability_diagrams


@pytest.fixture(scope="module")
def bins():
    """4 bins of width 0.25: one sample (right) at 0.6, 400 at 0.9 (200 right), none elsewhere (the legend sits
    over the first bins)."""
    probs = torch.tensor([[0.6, 0.2, 0.1, 0.1]] + [[0.9, 0.1, 0.0, 0.0]] * 400, dtype=torch.float64)
    target = torch.tensor([0] + [0, 1] * 200)
    return reliability_bins(probs, target, n_bins=4)


def _axes(image, bins):
    count = np.asarray(bins.count, dtype=float)
    main, _ = _panel_axes(0, 0, hist_ymax=count.max() / count.sum() * 1.1)
    return main


def _bar_column(image, main, bins, k):
    """The pixel column through the left quarter of bin k's accuracy bar (clear of the gap bar and error bar)."""
    x0, x1 = main.x(bins.edges[k].item()), main.x(bins.edges[k + 1].item())
    return image[:, int(round(x0 + 0.12 * (x1 - x0))), :].astype(float)


def _fill_rows(column, main):
    """Rows inside the accuracy axes whose colour is the blue fill blended on white (any opacity)."""
    rows = []
    for r in range(int(main.y(1)) - 1, int(main.y(0)) - 1):
        red, green, blue = column[r]
        a = (255 - red) / (255 - _BLUE[0])
        expected = 255 - a * (255 - np.array(_BLUE))
        if a > 0.05 and np.abs(column[r] - expected).max() < 6:
            rows.append((r, a))
    return rows


def test_bars_reach_the_accuracy_and_fill_by_interval_width(bins):
    image = reliability_diagram_image(bins, "validation", ece=0.1)
    assert image.dtype == np.uint8 and image.shape == (460, 400, 3)
    main = _axes(image, bins)
    for k, acc in ((2, 1.0), (3, 0.5)):
        rows = _fill_rows(_bar_column(image, main, bins, k), main)
        top = min(r for r, _ in rows)
        assert top == pytest.approx(main.y(acc), abs=3)
        opacity = np.median([a for _, a in rows])
        width = (bins.acc_high[k] - bins.acc_low[k]).item()  # Wilson: ~0.79 for 1 of 1, ~0.1 for 200 of 400
        assert opacity == pytest.approx(max(1 - width, 0.12), abs=0.04)
    # nothing drawn in an empty bin
    below_legend = [r for r, _ in _fill_rows(_bar_column(image, main, bins, 1), main) if r > main.y(0.6)]
    assert not below_legend


def _error_bar_rows(image, main, bins, k):
    """The run of dark pixel rows, in the error bar's column, through the row of bin k's accuracy."""
    x0, x1 = main.x(bins.edges[k].item()), main.x(bins.edges[k + 1].item())
    xe = int(round(x0 + 0.875 * (x1 - x0)))
    dark = image[:, xe - 1:xe + 2, :].astype(int).max(axis=2).min(axis=1) < 110  # a 1-pixel line, anti-aliased
    r = int(round(main.y(bins.accuracy[k].item())))
    if not dark[r]:
        return []
    lo = hi = r
    while dark[lo - 1]:
        lo -= 1
    while dark[hi + 1]:
        hi += 1
    return list(range(lo, hi + 1))


def test_interval_drawn_from_low_to_high(bins):
    image = reliability_diagram_image(bins, "validation", ece=0.1)
    main = _axes(image, bins)
    for k in (2, 3):
        dark = _error_bar_rows(image, main, bins, k)
        assert min(dark) == pytest.approx(main.y(bins.acc_high[k].item()), abs=3)
        assert max(dark) == pytest.approx(main.y(bins.acc_low[k].item()), abs=3)


def test_bins_without_intervals_are_opaque_without_error_bars(bins):
    plain = SimpleNamespace(edges=bins.edges, confidence=bins.confidence, accuracy=bins.accuracy, count=bins.count)
    image = reliability_diagram_image(plain, "validation")
    main = _axes(image, plain)
    rows = _fill_rows(_bar_column(image, main, plain, 2), main)
    assert np.median([a for _, a in rows]) == pytest.approx(1.0, abs=0.03)
    assert len(_error_bar_rows(image, main, plain, 3)) < 4


def test_png_of_two_panels(bins, tmp_path):
    path = save_reliability_diagrams(tmp_path / "d.png", [(bins, "before", 0.1), (bins, "after", 0.05)], "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        assert png.size == (800, 490)
        right = np.asarray(png.convert("RGB"))[30:, 400:]
    # the second panel is the same drawing as the first (same bins), shifted by one panel width
    left = np.asarray(Image.open(path).convert("RGB"))[30:, :400]
    assert np.mean(np.abs(left.astype(int) - right.astype(int)) > 40) < 0.02


def test_interval_a_rounding_error_inside_the_accuracy_still_draws(bins):
    # a bound 1e-16 on the wrong side of the accuracy (rounding at p = 1) is drawn as a zero-length error bar
    nudged = bins._replace(acc_high=torch.where(bins.count > 0, bins.accuracy - 1e-16, bins.acc_high))
    image = reliability_diagram_image(nudged, "validation")
    assert image.shape == (460, 400, 3)
