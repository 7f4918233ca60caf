"""Reliability diagrams (Guo et al. 2017, Fig. 1; DeGroot & Fienberg 1983).

A reliability diagram plots, for equal-width bins of top-label confidence, the accuracy of the
samples in each bin against the bin's confidence range. A perfectly calibrated model lies on the
diagonal; bars below it are over-confident. Under each diagram a histogram shows the share of
samples per bin, since ECE weights each bin's gap by that share.

Figures are built with matplotlib's object API (no pyplot state), so they are safe in a training loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["draw_reliability_diagram", "reliability_diagram_image", "save_reliability_diagrams"]


def _figure(width: float, height: float, dpi: int = 100, layout: Optional[str] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def draw_reliability_diagram(fig, subplot_spec, bins, title: str, ece: Optional[float] = None) -> None:
    """Draw one diagram (accuracy bars over a confidence histogram) into ``subplot_spec`` of ``fig``.

    Args:
        bins: per-bin statistics with attributes ``confidence``, ``accuracy``, ``count`` (length n_bins)
            and ``edges`` (length n_bins + 1), as returned by ``ceexp.metrics.reliability_bins``.
        title: panel title.
        ece: printed in the panel when given (a probability; shown in %).
    """
    count = np.asarray(bins.count, dtype=float)
    acc = np.nan_to_num(np.asarray(bins.accuracy, dtype=float))
    conf = np.asarray(bins.confidence, dtype=float)
    edges = np.asarray(bins.edges, dtype=float)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    filled = count > 0

    grid = subplot_spec.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)

    ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge",
           color="#4c72b0", edgecolor="black", linewidth=0.6, label="accuracy")
    # the gap between a bin's accuracy and its mean confidence: what ECE sums
    gap_bottom = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_bottom, width=width[filled] * 0.5,
           color="#dd8452", alpha=0.75, edgecolor="#a0522d", linewidth=0.5, hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    if ece is not None:
        ax.text(0.97, 0.05, f"ECE = {100 * ece:.2f}%", ha="right", va="bottom", transform=ax.transAxes,
                fontsize=9, bbox=dict(boxstyle="round", facecolor="white", edgecolor="lightgray"))

    total = max(count.sum(), 1.0)
    hist.bar(edges[:-1], count / total, width=width, align="edge", color="#55a868", edgecolor="black", linewidth=0.6)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (top-label probability)")
    hist.set_ylabel("share")


def reliability_diagram_image(bins, title: str = "", ece: Optional[float] = None) -> np.ndarray:
    """Render one reliability diagram to an ``(H, W, 3)`` uint8 RGB array (for TensorBoard's ``add_image``)."""
    # fixed margins: a constrained layout would triple the cost of an image drawn during training
    fig = _figure(4.0, 4.6, dpi=80, layout=None)
    grid = fig.add_gridspec(1, 1, left=0.16, right=0.96, bottom=0.1, top=0.93)
    draw_reliability_diagram(fig, grid[0], bins, title, ece)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_reliability_diagrams(
    path: str | Path, panels: Sequence[tuple], suptitle: Optional[str] = None, dpi: int = 110
) -> Path:
    """Save side-by-side reliability diagrams as a PNG, written to a temporary name and renamed.

    Args:
        path: destination ``.png``.
        panels: ``(bins, title, ece)`` per panel, e.g. the test split before and after temperature scaling.
        suptitle: a title over all panels.

    Returns:
        ``Path(path)``.
    """
    import os

    path = Path(path)
    # fixed margins: half the cost of a constrained layout, and the panels are always alike
    fig = _figure(4.0 * len(panels), 4.8, dpi=dpi, layout=None)
    grid = fig.add_gridspec(1, len(panels), left=0.17 / len(panels), right=0.98, bottom=0.1,
                            top=0.88 if suptitle else 0.93, wspace=0.3)
    for spec, (bins, title, ece) in zip(grid, panels):
        draw_reliability_diagram(fig, spec, bins, title, ece)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
