"""Reliability diagrams (Guo et al. 2017, Fig. 1; DeGroot & Fienberg 1983).

A reliability diagram plots, for equal-width bins of top-label confidence, the accuracy of the
samples in each bin against the bin's confidence range. A perfectly calibrated model lies on the
diagonal; bars below it are over-confident. Under each diagram a histogram shows the share of
samples per bin, since ECE weights each bin's gap by that share.

The comparison of a sweep (``ceexp.compare``) draws its figures here too: per-group curves with a min-max
band, a scatter with one point per run, paired bars (before / after temperature scaling), and a grid of
the runs' own reliability diagrams.

Figures are built with matplotlib's object API (no pyplot state), so they are safe in a training loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "draw_reliability_diagram", "group_colors", "reliability_diagram_image", "save_curves", "save_image_grid",
    "save_intervals", "save_paired_bars", "save_reliability_diagrams", "save_scatter",
]


def _figure(width: float, height: float, dpi: int = 100, layout: Optional[str] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def draw_reliability_diagram(fig, subplot_spec, bins, title: str, ece: Optional[float] = None) -> None:
    """Draw one diagram (accuracy bars over a confidence histogram) into ``subplot_spec`` of ``fig``.

    Each bin's accuracy bar carries its 95% interval as an error bar, and its fill is as opaque as the
    interval is narrow (opacity 1 - interval width, at least 0.12): a bin of a few samples shows as a faint bar
    with a long error bar rather than a solid full-height one. The outline stays, so the accuracy still reads.

    Args:
        bins: per-bin statistics with attributes ``confidence``, ``accuracy``, ``count`` (length n_bins),
            ``edges`` (length n_bins + 1) and, optionally, ``acc_low`` and ``acc_high`` (the interval of the
            accuracy; without them no error bars are drawn and every bar is opaque), as returned by
            ``ceexp.metrics.reliability_bins``.
        title: panel title.
        ece: printed in the panel when given (a probability; shown in %).
    """
    from matplotlib.colors import to_rgba

    count = np.asarray(bins.count, dtype=float)
    acc = np.nan_to_num(np.asarray(bins.accuracy, dtype=float))
    conf = np.asarray(bins.confidence, dtype=float)
    edges = np.asarray(bins.edges, dtype=float)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    filled = count > 0
    has_interval = getattr(bins, "acc_low", None) is not None and getattr(bins, "acc_high", None) is not None
    if has_interval:
        low = np.asarray(bins.acc_low, dtype=float)
        high = np.asarray(bins.acc_high, dtype=float)
        opacity = np.clip(1.0 - np.nan_to_num(high - low, nan=1.0), 0.12, 1.0)
    else:
        opacity = np.ones_like(count)

    grid = subplot_spec.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)

    ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge",
           color=[to_rgba("#4c72b0", a) for a in opacity[filled]], edgecolor="black", linewidth=0.6)
    # the gap between a bin's accuracy and its mean confidence: what ECE sums
    gap_bottom = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_bottom, width=width[filled] * 0.5,
           color=[to_rgba("#dd8452", 0.75 * a) for a in opacity[filled]], edgecolor="#a0522d", linewidth=0.5,
           hatch="//")
    interval = None
    if has_interval and filled.any():
        # beside the gap bar (which covers the middle half of the bin), not over it
        interval = ax.errorbar((edges[:-1] + 0.875 * width)[filled], acc[filled],
                               yerr=np.clip([acc[filled] - low[filled], high[filled] - acc[filled]], 0, None),
                               fmt="none", ecolor="black", elinewidth=1.0, capsize=2.0, capthick=1.0, zorder=3,
                               label="95% interval of accuracy (Wilson)")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelbottom=False)
    # a light frame: a long error bar of a nearly empty low-confidence bin may reach under the legend
    ax.legend(handles=_reliability_legend(has_interval) + ([interval] if interval else []), loc="upper left",
              fontsize=7, frameon=True, framealpha=0.7, edgecolor="none", borderaxespad=0.3)
    if ece is not None:
        ax.text(0.97, 0.05, f"ECE = {100 * ece:.2f}%", ha="right", va="bottom", transform=ax.transAxes,
                fontsize=9, bbox=dict(boxstyle="round", facecolor="white", edgecolor="lightgray"))

    total = max(count.sum(), 1.0)
    hist.bar(edges[:-1], count / total, width=width, align="edge", color="#55a868", edgecolor="black", linewidth=0.6)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (top-label probability)")
    hist.set_ylabel("share")


def _reliability_legend(has_interval: bool) -> list:
    """Legend handles of the lines and bars, drawn at full opacity (a bar's own first patch may be faint)."""
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Line2D([], [], linestyle="--", color="gray", linewidth=1, label="perfect calibration"),
        Patch(facecolor="#4c72b0", edgecolor="black", linewidth=0.6,
              label="accuracy (fill: 1 - interval width)" if has_interval else "accuracy"),
        Patch(facecolor=to_rgba("#dd8452", 0.75), edgecolor="#a0522d", linewidth=0.5, hatch="//",
              label="gap to confidence"),
    ]


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
    path = Path(path)
    # fixed margins: half the cost of a constrained layout, and the panels are always alike
    fig = _figure(4.0 * len(panels), 4.8, dpi=dpi, layout=None)
    grid = fig.add_gridspec(1, len(panels), left=0.17 / len(panels), right=0.98, bottom=0.1,
                            top=0.88 if suptitle else 0.93, wspace=0.3)
    for spec, (bins, title, ece) in zip(grid, panels):
        draw_reliability_diagram(fig, spec, bins, title, ece)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    from ceexp.files import atomic_savefig

    return atomic_savefig(fig, path, format="png")


# ---------------------------------------------------------------------------------------------------------
# sweep comparison figures (ceexp.compare): one colour per group, the same in every figure


def group_colors(n: int) -> list:
    """``n`` distinct colours (matplotlib's tab10, or tab20 beyond 10 groups), as RGBA tuples."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG atomically (``ceexp.files.atomic_savefig``: a full disk leaves the old file)."""
    from ceexp.files import atomic_savefig

    return atomic_savefig(fig, path, format="png", dpi=dpi)


# a marker and a dash pattern per group as well as a colour: groups whose curves coincide stay distinguishable
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_DASHES = ("-", "--", "-.", ":")


def _legend_outside(ax, n: int) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="group", title_fontsize=9, ncol=1 if n <= 16 else 2)


def save_curves(path: str | Path, curves: Sequence[tuple], title: str, xlabel: str, ylabel: str) -> Path:
    """Per-group curves over epochs: the mean line, and a band from the minimum to the maximum over the runs.

    Args:
        path: destination ``.png``.
        curves: ``(label, color, x, mean, low, high, n_runs)`` per group; ``x``, ``mean``, ``low`` and
            ``high`` are equal-length sequences (epochs and the statistics over the group's runs at each);
            ``n_runs`` is shown in the legend.
        title, xlabel, ylabel: axis texts (name the units, e.g. "validation NLL (nats)").
    """
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    for i, (label, color, x, mean, low, high, n_runs) in enumerate(curves):
        x = np.asarray(x, dtype=float)
        ax.plot(x, mean, color=color, linewidth=1.8, linestyle=_DASHES[i % len(_DASHES)],
                marker=_MARKERS[i % len(_MARKERS)] if len(x) <= 30 else None, markersize=5, markevery=max(1, len(x) // 15),
                label=f"{label} (n={n_runs})")
        if n_runs > 1:
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_outside(ax, len(curves))
    return _save(fig, path)


def save_scatter(path: str | Path, groups: Sequence[tuple], title: str, xlabel: str, ylabel: str) -> Path:
    """One point per run, coloured by group.

    Args:
        groups: ``(label, color, x, y)`` per group, ``x`` and ``y`` the runs' values (equal lengths).
    """
    fig = _figure(8.5, 5.0)
    ax = fig.add_subplot()
    for i, (label, color, x, y) in enumerate(groups):
        ax.scatter(x, y, color=color, marker=_MARKERS[i % len(_MARKERS)], s=40, alpha=0.85, edgecolor="black",
                   linewidth=0.5, label=f"{label} (n={len(x)})", zorder=3)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(groups))
    return _save(fig, path)


def save_paired_bars(
    path: str | Path, groups: Sequence[tuple], names: tuple[str, str], title: str, ylabel: str, subtitle: str = ""
) -> Path:
    """Two bars per group (e.g. before and after temperature scaling): the mean over the runs, each run a dot,
    the runs' pairs joined by a line.

    Args:
        groups: ``(label, color, before, after, note)`` per group: ``before`` and ``after`` the runs' paired
            values (equal lengths), ``note`` a short text over the pair (e.g. the mean temperature) or ``""``.
        names: legend names of the first and second bar.
        subtitle: a smaller line under the title (how to read the figure).
    """
    from matplotlib.patches import Patch

    n = len(groups)
    fig = _figure(max(6.0, 1.1 * n + 2.5), 5.2)
    ax = fig.add_subplot()
    width = 0.38
    top = 0.0
    for i, (label, color, before, after, note) in enumerate(groups):
        before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
        xs = (i - width / 2, i + width / 2)
        ax.bar(xs[0], np.nanmean(before), width, color=color, edgecolor="black", linewidth=0.6)
        ax.bar(xs[1], np.nanmean(after), width, color=color, alpha=0.45, edgecolor="black", linewidth=0.6,
               hatch="//")
        for b, a in zip(before, after):
            ax.plot(xs, (b, a), color="black", linewidth=0.6, alpha=0.6, marker="o", markersize=3, zorder=3)
        high = float(np.nanmax(np.concatenate([before, after]))) if len(before) else 0.0
        top = max(top, high)
        if note:
            ax.annotate(note, (i, high), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
    ax.set_xticks(range(n))
    ax.set_xticklabels([g[0] for g in groups], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center",
                       fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    fig.suptitle(title, fontsize=11)
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="dimgray")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[Patch(facecolor="lightgray", edgecolor="black", label=names[0]),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label=names[1])],
              loc="upper right", fontsize=8, frameon=False)
    return _save(fig, path)


def save_image_grid(
    path: str | Path, images: Sequence[tuple], title: str, ncols: int = 3, tile_width: float = 8.0
) -> Path:
    """Tile PNG files into one figure, each under its caption.

    Args:
        images: ``(png path or None, caption)`` per tile; a missing file leaves a tile that says so.
        title: a title over all tiles.
        ncols: tiles per row (at most).
        tile_width: width of a tile in inches (the run diagrams are 8 in wide at 110 dpi: no rescaling).
    """
    from matplotlib.image import imread

    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    loaded = [(imread(str(p)) if p is not None and Path(p).is_file() else None, caption) for p, caption in images]
    aspect = next((img.shape[0] / img.shape[1] for img, _ in loaded if img is not None), 0.6)
    fig = _figure(tile_width * ncols, (tile_width * aspect + 0.35) * nrows + 0.5)
    grid = fig.add_gridspec(nrows, ncols)
    for i, (img, caption) in enumerate(loaded):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        ax.set_axis_off()
        ax.set_title(caption, fontsize=10)
        if img is None:
            ax.text(0.5, 0.5, "no reliability_diagram.png", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(img, interpolation="none")
    import textwrap

    # about ten characters of 12-point text to the inch: wrap a title wider than the tiles
    fig.suptitle(textwrap.fill(title, width=int(10 * tile_width * ncols)), fontsize=12)
    return _save(fig, path)


def save_intervals(
    path: str | Path,
    panels: Sequence[tuple],
    labels: Sequence[str],
    colors: Sequence,
    title: str,
    subtitle: str = "",
    ncols: int = 4,
) -> Path:
    """A small-multiples forest plot: one panel per metric, the groups down the y axis, each group's mean as a
    dot with its interval as a horizontal bar, and the reference group's mean as a dashed vertical line.

    Args:
        panels: ``(metric name, means, lows, highs, reference mean, marks)`` per panel, each of ``means``,
            ``lows``, ``highs`` and ``marks`` one entry per group (NaN: nothing drawn); a mark ``"best"`` or
            ``"tied"`` is written beside the interval (``best`` in bold).
        labels: the groups' names, top to bottom.
        colors: one colour per group (:func:`group_colors`).
        title, subtitle: over the panels; the subtitle in smaller grey type (how to read the figure).
        ncols: panels per row (at most).
    """
    n_groups, n_panels = len(labels), len(panels)
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    label_width = min(3.5, 0.075 * max((len(lab) for lab in labels), default=5) + 0.4)
    panel_height = 0.32 * n_groups + 0.9
    fig = _figure(label_width + 3.1 * ncols, panel_height * nrows + (0.9 if subtitle else 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    y = np.arange(n_groups)
    for k, ax in enumerate(axes.flat):
        if k >= n_panels:
            ax.set_axis_off()
            continue
        name, mean, low, high, ref, marks = panels[k]
        mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
        if np.isfinite(ref):
            ax.axvline(ref, color="dimgray", linestyle="--", linewidth=1, zorder=1)
        for i in range(n_groups):
            if not np.isfinite(mean[i]):
                continue
            if np.isfinite(low[i]) and np.isfinite(high[i]):
                ax.plot([low[i], high[i]], [i, i], color=colors[i], linewidth=2.2, solid_capstyle="butt", zorder=2)
                for x in (low[i], high[i]):
                    ax.plot([x, x], [i - 0.14, i + 0.14], color=colors[i], linewidth=1.2, zorder=2)
            ax.plot(mean[i], i, marker=_MARKERS[i % len(_MARKERS)], markersize=6.5, color=colors[i],
                    markeredgecolor="black", markeredgewidth=0.6, zorder=3)
            if marks[i]:
                right = high[i] if np.isfinite(high[i]) else mean[i]
                ax.annotate(marks[i], (right, i), xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=7.5, fontweight="bold" if marks[i] == "best" else "normal",
                            color="black" if marks[i] == "best" else "dimgray", zorder=4,
                            bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85))
        finite = np.concatenate([v[np.isfinite(v)] for v in (mean, low, high)] + [np.array([ref])[np.isfinite([ref])]])
        if finite.size:
            lo, hi = finite.min(), finite.max()
            pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.01
            ax.set_xlim(lo - pad, hi + pad * 3.5)  # room on the right for the marks
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(n_groups - 0.5, -0.5)  # the first group on top
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        if k % ncols:
            ax.tick_params(axis="y", labelleft=False)
    fig.suptitle(title, fontsize=11)
    if subtitle:
        fig.supxlabel(subtitle, fontsize=8, color="dimgray")
    return _save(fig, path)
