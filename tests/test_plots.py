"""Tests of the reliability diagrams in ceexp.plots: the accuracy intervals are drawn, and a nearly empty bin is
drawn faint instead of as a solid bar."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from ceexp.metrics import reliability_bins
from ceexp.plots import draw_reliability_diagram, reliability_diagram_image, save_reliability_diagrams


@pytest.fixture(scope="module")
def bins():
    """4 bins of width 0.25: one sample (right) at 0.3, 400 at 0.9 (200 right), none elsewhere."""
    probs = torch.tensor([[0.3, 0.25, 0.25, 0.2]] + [[0.9, 0.1, 0.0, 0.0]] * 400, dtype=torch.float64)
    target = torch.tensor([0] + [0, 1] * 200)
    return reliability_bins(probs, target, n_bins=4)


def _draw(bins):
    fig = Figure(figsize=(4.0, 4.6))
    draw_reliability_diagram(fig, fig.add_gridspec(1, 1)[0], bins, "t", ece=0.1)
    return fig.axes[0]


def test_intervals_are_drawn_as_error_bars(bins):
    ax = _draw(bins)
    (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # one vertical segment per filled bin, from acc_low to acc_high
    segments = errorbars.lines[2][0].get_segments()
    assert len(segments) == 2
    lows, highs = sorted(s[0][1] for s in segments), sorted(s[1][1] for s in segments)
    filled = bins.count > 0
    assert lows == pytest.approx(sorted(bins.acc_low[filled].tolist()))
    assert highs == pytest.approx(sorted(bins.acc_high[filled].tolist()))
    assert any("95% interval" in t.get_text() for t in ax.get_legend().get_texts())


def test_nearly_empty_bin_is_faint(bins):
    ax = _draw(bins)
    # the accuracy bars are the first patches drawn, one per filled bin, in bin order (0.3 first, then 0.9)
    alpha_single, alpha_full = (patch.get_facecolor()[3] for patch in ax.patches[:2])
    width_single = (bins.acc_high[1] - bins.acc_low[1]).item()  # Wilson interval of 1 of 1: about 0.79 wide
    width_full = (bins.acc_high[3] - bins.acc_low[3]).item()  # of 200 of 400: about 0.1
    assert alpha_single == pytest.approx(1 - width_single, abs=1e-6)
    assert alpha_full == pytest.approx(1 - width_full, abs=1e-6)
    assert alpha_single < 0.25 < 0.85 < alpha_full


def test_bins_without_intervals_still_draw(bins):
    plain = SimpleNamespace(edges=bins.edges, confidence=bins.confidence, accuracy=bins.accuracy, count=bins.count)
    ax = _draw(plain)
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert all(patch.get_facecolor()[3] == 1.0 for patch in ax.patches[:2])


def test_image_and_png(bins, tmp_path):
    image = reliability_diagram_image(bins, "validation", ece=0.1)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    path = save_reliability_diagrams(tmp_path / "d.png", [(bins, "before", 0.1), (bins, "after", 0.05)], "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interval_a_rounding_error_inside_the_accuracy_still_draws(bins):
    # a bound 1e-16 on the wrong side of the accuracy (rounding at p = 1) is drawn as a zero-length error bar
    nudged = bins._replace(acc_high=torch.where(bins.count > 0, bins.accuracy - 1e-16, bins.acc_high))
    ax = _draw(nudged)
    assert [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
