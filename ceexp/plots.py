"""Reliability diagrams (Guo et al. 2017, Fig. 1; DeGroot & Fienberg 1983).

A reliability diagram plots, for equal-width bins of top-label confidence, the accuracy of the
samples in each bin against the bin's confidence range. A perfectly calibrated model lies on the
diagonal; bars below it are over-confident. Under each diagram a histogram shows the share of
samples per bin, since ECE weights each bin's gap by that share.

A run's own diagrams (the TensorBoard image ``val/reliability_diagram`` and ``reliability_diagram.png``) are drawn
with Pillow, a few milliseconds each: a run draws one every few epochs, and a sweep of many short jobs does not pay
matplotlib's import and ~0.2 s per figure in every job.

The comparison of a sweep (``ceexp.compare``) draws its figures here with matplotlib's object API (no pyplot
state): per-group curves with a min-max band, a scatter with one point per run, paired bars (before / after
temperature scaling), a grid of the runs' own reliability diagrams, overlaid histograms (OOD scores) and boxes
against a severity axis (calibration under shift).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "group_colors", "reliability_diagram_image", "save_curves", "save_histograms", "save_image_grid",
    "save_intervals", "save_paired_bars", "save_reliability_diagrams", "save_scatter", "save_severity_boxes",
]


def _figure(width: float, height: float, dpi: int = 100, layout: Optional[str] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------------------
# one run's reliability diagrams, drawn with Pillow: a few milliseconds each, so a run can draw one every few
# epochs and a sweep does not pay matplotlib's ~0.2 s a figure per job (the sweep figures below use matplotlib)

_BLUE, _ORANGE, _BROWN, _GREEN = (76, 114, 176), (221, 132, 82), (160, 82, 45), (85, 168, 104)
_SCALE = 2  # drawn at twice the size, then downsampled: smooth diagonals and text

# one panel, in pixels at scale 1: the title band, the accuracy axes, the histogram axes, the x labels
_PANEL_W, _PANEL_H = 400, 460
_LEFT, _RIGHT, _TOP = 58, 12, 34
_MAIN_H, _GAP, _HIST_H = 290, 8, 70
_SUPTITLE_H = 30


@functools.lru_cache(maxsize=None)
def _font(size: int):
    """DejaVu Sans from matplotlib's data folder (found without importing matplotlib), else Pillow's default."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


class _Axes:
    """Maps data coordinates ``(x, y)`` in ``[0, 1] x [0, ymax]`` to pixels of a box ``(x0, y0, x1, y1)``."""

    def __init__(self, box: tuple[float, float, float, float], ymax: float = 1.0):
        self.box, self.ymax = box, ymax

    def x(self, v: float) -> float:
        x0, _, x1, _ = self.box
        return x0 + v * (x1 - x0)

    def y(self, v: float) -> float:
        _, y0, _, y1 = self.box
        return y1 - v / self.ymax * (y1 - y0)


def _panel_axes(left: float, top: float, hist_ymax: float, s: int = 1) -> tuple[_Axes, _Axes]:
    """The accuracy axes and the histogram axes of a panel whose top-left corner is ``(left, top)``, at scale ``s``."""
    x0, x1 = left + _LEFT * s, left + (_PANEL_W - _RIGHT) * s
    y0 = top + _TOP * s
    main = _Axes((x0, y0, x1, y0 + _MAIN_H * s))
    h0 = y0 + (_MAIN_H + _GAP) * s
    return main, _Axes((x0, h0, x1, h0 + _HIST_H * s), ymax=hist_ymax)


def _draw_panel(draw, left: float, top: float, bins, title: str, ece: Optional[float], s: int) -> None:
    """One reliability diagram (accuracy bars, gaps, 95% intervals, the diagonal, a legend, the confidence
    histogram) with its top-left corner at ``(left, top)``; the drawing is that of :func:`reliability_diagram_image`."""
    count = np.asarray(bins.count, dtype=float)
    acc = np.nan_to_num(np.asarray(bins.accuracy, dtype=float))
    conf = np.asarray(bins.confidence, dtype=float)
    edges = np.asarray(bins.edges, dtype=float)
    low, high, opacity = _bar_intervals(bins, count)
    share = count / max(count.sum(), 1.0)
    main, hist = _panel_axes(left, top, hist_ymax=max(float(share.max()) * 1.1, 1e-9), s=s)
    small, normal = _font(10 * s), _font(12 * s)

    for k in np.flatnonzero(count > 0):
        x0, x1 = main.x(edges[k]), main.x(edges[k + 1])
        a = float(opacity[k])
        draw.rectangle([x0, main.y(acc[k]), x1, main.y(0)], fill=(*_BLUE, round(255 * a)),
                       outline=(0, 0, 0, 255), width=max(1, s // 2))
        lo_gap, hi_gap = sorted((acc[k], np.nan_to_num(conf[k])))
        if hi_gap > lo_gap:
            q = (x1 - x0) / 4
            draw.rectangle([x0 + q, main.y(hi_gap), x1 - q, main.y(lo_gap)], fill=(*_ORANGE, round(191 * a)),
                           outline=(*_BROWN, 255), width=max(1, s // 2))
        if low is not None:
            xe, cap = x0 + 0.875 * (x1 - x0), 2 * s
            ya, yb = main.y(min(low[k], acc[k])), main.y(max(high[k], acc[k]))
            draw.line([xe, ya, xe, yb], fill=(0, 0, 0, 255), width=s)
            for yy in (ya, yb):
                draw.line([xe - cap, yy, xe + cap, yy], fill=(0, 0, 0, 255), width=s)
    # the diagonal, dashed: perfect calibration
    for t in np.arange(0.0, 1.0, 0.04):
        draw.line([main.x(t), main.y(t), main.x(t + 0.025), main.y(t + 0.025)], fill=(128, 128, 128, 255), width=s)
    for k in range(len(count)):
        draw.rectangle([hist.x(edges[k]), hist.y(share[k]), hist.x(edges[k + 1]), hist.y(0)],
                       fill=(*_GREEN, 255), outline=(0, 0, 0, 255), width=max(1, s // 2))

    for axes in (main, hist):
        draw.rectangle(axes.box, outline=(0, 0, 0, 255), width=s)
    for v in np.linspace(0, 1, 6):
        label = f"{v:.1f}"
        draw.line([main.x(0) - 4 * s, main.y(v), main.x(0), main.y(v)], fill=(0, 0, 0, 255), width=s)
        draw.text((main.x(0) - 6 * s, main.y(v)), label, font=small, fill=(0, 0, 0, 255), anchor="rm")
        draw.line([hist.x(v), hist.y(0), hist.x(v), hist.y(0) + 4 * s], fill=(0, 0, 0, 255), width=s)
        draw.text((hist.x(v), hist.y(0) + 6 * s), label, font=small, fill=(0, 0, 0, 255), anchor="mt")
    draw.text((hist.x(0) - 6 * s, hist.y(share.max())), f"{share.max():.2f}", font=small, fill=(0, 0, 0, 255),
              anchor="rm")
    draw.text((hist.x(0.5), hist.y(0) + 20 * s), "confidence (top-label probability)", font=small,
              fill=(0, 0, 0, 255), anchor="mt")
    draw.text(((main.x(0) + main.x(1)) / 2, top + _TOP * s / 2), title, font=normal, fill=(0, 0, 0, 255), anchor="mm")
    _vertical_text(draw, "accuracy", (left + 12 * s, (main.y(0) + main.y(1)) / 2), small)
    _vertical_text(draw, "share", (left + 12 * s, (hist.y(0) + hist.box[1]) / 2), small)

    legend = [("line", "perfect calibration"),
              (_BLUE, "accuracy (fill: 1 - interval width)" if low is not None else "accuracy"),
              (_ORANGE, "gap to confidence")] + ([("bar", "95% interval of accuracy (Wilson)")] if low is not None else [])
    x, y = main.x(0) + 6 * s, main.y(1) + 6 * s
    width = max(draw.textlength(text, font=small) for _, text in legend) + 30 * s
    draw.rectangle([x - 3 * s, y - 3 * s, x + width, y + len(legend) * 14 * s + 2 * s], fill=(255, 255, 255, 180))
    for kind, text in legend:
        if kind == "line":
            draw.line([x, y + 6 * s, x + 18 * s, y + 6 * s], fill=(128, 128, 128, 255), width=s)
        elif kind == "bar":
            draw.line([x + 9 * s, y + 1 * s, x + 9 * s, y + 11 * s], fill=(0, 0, 0, 255), width=s)
        else:
            draw.rectangle([x, y + 1 * s, x + 18 * s, y + 11 * s], fill=(*kind, 255), outline=(0, 0, 0, 255))
        draw.text((x + 24 * s, y + 6 * s), text, font=small, fill=(0, 0, 0, 255), anchor="lm")
        y += 14 * s
    if ece is not None:
        text = f"ECE = {100 * ece:.2f}%"
        bx, by = main.x(1) - 8 * s, main.y(0) - 8 * s
        w = draw.textlength(text, font=normal)
        draw.rounded_rectangle([bx - w - 8 * s, by - 20 * s, bx, by], radius=4 * s, fill=(255, 255, 255, 255),
                               outline=(200, 200, 200, 255), width=s)
        draw.text((bx - 4 * s, by - 10 * s), text, font=normal, fill=(0, 0, 0, 255), anchor="rm")


def _bar_intervals(bins, count: np.ndarray):
    """``(acc_low, acc_high, opacity)``: the bins' 95% intervals (``None`` when absent) and each accuracy bar's fill
    opacity, 1 - interval width clipped to [0.12, 1] (1 without intervals)."""
    if getattr(bins, "acc_low", None) is None or getattr(bins, "acc_high", None) is None:
        return None, None, np.ones_like(count)
    low, high = np.asarray(bins.acc_low, dtype=float), np.asarray(bins.acc_high, dtype=float)
    return low, high, np.clip(1.0 - np.nan_to_num(high - low, nan=1.0), 0.12, 1.0)


def _vertical_text(draw, text: str, center: tuple[float, float], font) -> None:
    """``text`` rotated 90 degrees (reading upwards), centred at ``center``."""
    from PIL import Image, ImageDraw

    w, h = int(draw.textlength(text, font=font)) + 4, int(font.size * 1.4)
    label = Image.new("L", (w, h), 0)
    ImageDraw.Draw(label).text((w / 2, h / 2), text, font=font, fill=255, anchor="mm")
    label = label.rotate(90, expand=True)
    black = Image.new("RGB", label.size, (0, 0, 0))
    draw._image.paste(black, (int(center[0] - label.width / 2), int(center[1] - label.height / 2)), label)


def _render(panels: Sequence[tuple], suptitle: Optional[str] = None):
    """The panels ``(bins, title, ece)`` side by side under ``suptitle``, as a Pillow RGB image at scale 1."""
    from PIL import Image, ImageDraw

    s = _SCALE
    head = _SUPTITLE_H if suptitle else 0
    image = Image.new("RGB", (_PANEL_W * len(panels) * s, (_PANEL_H + head) * s), (255, 255, 255))
    draw = ImageDraw.Draw(image, "RGBA")
    if suptitle:
        draw.text((image.width / 2, head * s / 2), suptitle, font=_font(13 * s), fill=(0, 0, 0, 255), anchor="mm")
    for i, (bins, title, ece) in enumerate(panels):
        _draw_panel(draw, i * _PANEL_W * s, head * s, bins, title, ece, s)
    return image.resize((image.width // s, image.height // s), Image.LANCZOS)


def reliability_diagram_image(bins, title: str = "", ece: Optional[float] = None) -> np.ndarray:
    """Render one reliability diagram to an ``(H, W, 3)`` uint8 RGB array (460 x 400; TensorBoard's ``add_image``).

    Accuracy bars over equal-width confidence bins (fill opacity 1 - the width of the bin's 95% Wilson interval,
    at least 0.12, so a bin of a few samples shows faint), the gap to the bin's mean confidence (what ECE sums),
    the interval as an error bar, the diagonal of perfect calibration, and under it the share of samples per bin.

    Args:
        bins: per-bin statistics with attributes ``confidence``, ``accuracy``, ``count`` (length n_bins),
            ``edges`` (length n_bins + 1) and, optionally, ``acc_low`` and ``acc_high`` (the interval of the
            accuracy; without them no error bars are drawn and every bar is opaque), as returned by
            ``ceexp.metrics.reliability_bins``.
        title: the panel's title.
        ece: printed in the panel when given (a probability; shown in %).
    """
    return np.asarray(_render([(bins, title, ece)]))


def save_reliability_diagrams(
    path: str | Path, panels: Sequence[tuple], suptitle: Optional[str] = None
) -> Path:
    """Save side-by-side reliability diagrams (each as :func:`reliability_diagram_image` draws it) as a PNG,
    written to a temporary name and renamed (``ceexp.files.atomic_write_bytes``).

    Args:
        path: destination ``.png``.
        panels: ``(bins, title, ece)`` per panel, e.g. the test split before and after temperature scaling.
        suptitle: a title over all panels.

    Returns:
        ``Path(path)``.
    """
    import io

    from ceexp.files import atomic_write_bytes

    buffer = io.BytesIO()
    _render(panels, suptitle).save(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


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


def save_curves(path: str | Path, curves: Sequence[tuple], title: str, xlabel: str, ylabel: str,
                integer_x: bool = True) -> Path:
    """Per-group curves over epochs: the mean line, and a band from the minimum to the maximum over the runs.

    Args:
        path: destination ``.png``.
        curves: ``(label, color, x, mean, low, high, n_runs)`` per group; ``x``, ``mean``, ``low`` and
            ``high`` are equal-length sequences (epochs and the statistics over the group's runs at each);
            ``n_runs`` is shown in the legend.
        title, xlabel, ylabel: axis texts (name the units, e.g. "validation NLL (nats)").
        integer_x: ticks at whole numbers only (epochs); false for a continuous x (coverage).
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

    if integer_x:
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


def save_rank_lines(path: str | Path, groups: Sequence[tuple], columns: Sequence[str], title: str,
                    ylabel: str) -> Path:
    """A bump chart: each group's rank (1 at the top) in each column (e.g. before and after each calibrator), one
    line per group with its label at both ends.

    Args:
        groups: ``(label, color, ranks)`` per group, ``ranks`` one integer per column.
        columns: the column names (x axis).
    """
    fig = _figure(max(6.0, 1.3 * len(columns) + 4.0), max(4.0, 0.35 * len(groups) + 1.8))
    ax = fig.add_subplot()
    x = np.arange(len(columns))
    for i, (label, color, ranks) in enumerate(groups):
        ax.plot(x, ranks, color=color, marker=_MARKERS[i % len(_MARKERS)], linestyle=_DASHES[i % len(_DASHES)],
                linewidth=1.6, label=label)
        ax.annotate(label, (x[-1], ranks[-1]), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8,
                    color=color)
        ax.annotate(label, (x[0], ranks[0]), xytext=(-6, 0), textcoords="offset points", va="center", ha="right",
                    fontsize=8, color=color)
    ax.set_xticks(x, list(columns))
    ax.set_yticks(range(1, len(groups) + 1))
    ax.invert_yaxis()
    ax.set_xlim(-1.2, len(columns) - 1 + 1.2)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
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


def save_histograms(path: str | Path, panels: Sequence[tuple], title: str, xlabel: str, bins: int = 40,
                    ncols: int = 4) -> Path:
    """Overlaid histograms (densities over common bins), one panel each: e.g. a score on in-distribution against
    out-of-distribution samples, one panel per group.

    Args:
        panels: ``(panel title, [(name, values, color), ...])`` per panel; ``values`` a 1-D array.
        xlabel: the score and its unit; bins: equal-width bins over the range of all values of a panel.
    """
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig = _figure(3.6 * ncols + 0.4, 2.9 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        name, series = panels[k]
        finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for _, v, _ in series]
        both = np.concatenate(finite) if finite else np.zeros(0)
        edges = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, bins + 1) \
            if both.size else bins
        for (label, _, color), values in zip(series, finite):
            ax.hist(values, bins=edges, density=True, color=color, alpha=0.45, edgecolor=color, linewidth=0.8,
                    label=f"{label} (n={len(values)})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def save_severity_boxes(path: str | Path, panels: Sequence[tuple], groups: Sequence[tuple], severities: Sequence,
                        title: str, subtitle: str = "") -> Path:
    """Box plots against a severity axis, one box per group at each severity, one panel per metric (Ovadia et al.
    2019, Fig. 2: each box spans the corruptions at that severity).

    Args:
        panels: ``(metric label, {group index: {severity: values}})`` per panel; ``values`` a 1-D array (one value
            per corruption; a single value draws a flat box).
        groups: ``(label, color)`` per group.
        severities: the x positions, in order (e.g. ``[0, 1, 2, 3, 4, 5]``, 0 the clean test split).
    """
    from matplotlib.patches import Patch

    n_groups = max(1, len(groups))
    fig = _figure(max(7.0, 0.22 * n_groups * len(severities) + 2.5), 3.3 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / n_groups
    for ax, (label, data) in zip(axes, panels):
        for g, (_, color) in enumerate(groups):
            for x, severity in enumerate(severities):
                values = np.asarray(data.get(g, {}).get(severity, []), dtype=float)
                values = values[np.isfinite(values)]
                if not values.size:
                    continue
                position = x - 0.4 + width * (g + 0.5)
                ax.boxplot(values, positions=[position], widths=width * 0.85, patch_artist=True, whis=(0, 100),
                           boxprops=dict(facecolor=color, edgecolor="black", linewidth=0.6, alpha=0.8),
                           medianprops=dict(color="black", linewidth=1), whiskerprops=dict(linewidth=0.6),
                           capprops=dict(linewidth=0.6), manage_ticks=False)
        ax.set_xticks(range(len(severities)))
        ax.set_xticklabels([str(s) for s in severities])
        ax.set_xlim(-0.5, len(severities) - 0.5)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("severity (0: the clean test split)")
    axes[0].legend(handles=[Patch(facecolor=c, edgecolor="black", label=lab) for lab, c in groups],
                   loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="group",
                   title_fontsize=9)
    fig.suptitle(title, fontsize=11)
    if subtitle:
        axes[0].set_title(subtitle, fontsize=8.5, color="dimgray")
    return _save(fig, path)


def save_image_grid(
    path: str | Path, images: Sequence[tuple], title: str, ncols: int = 3, tile_width: float = 8.0
) -> Path:
    """Tile PNG files into one figure, each under its caption.

    Args:
        images: ``(png path or None, caption)`` per tile; a missing file leaves a tile that says so.
        title: a title over all tiles.
        ncols: tiles per row (at most).
        tile_width: width of a tile in inches (a run's two-panel diagram is 800 pixels wide).
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
