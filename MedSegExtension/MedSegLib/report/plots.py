"""Figures for pipeline outputs and reports: maps with colour bars, fit curves, cohort bar charts.

matplotlib draws them when installed (through its object API and the Agg canvas: no pyplot, so the
backend of a running 3D Slicer is never touched); otherwise small SVG documents are written by hand,
so a report never lacks its plots. ``MEDSEG_PLOTS=svg`` forces the fallback (tests, tiny installs).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# 9 anchors of matplotlib's viridis, enough for a faithful linear interpolation in the fallback
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


@dataclass
class Figure:
    """An encoded figure: ``kind`` "png" or "svg" and its bytes."""

    kind: str
    data: bytes

    @property
    def mime(self) -> str:
        return "image/png" if self.kind == "png" else "image/svg+xml"

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def use_matplotlib() -> bool:
    if os.environ.get("MEDSEG_PLOTS", "").lower() == "svg":
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_figure(figure: Figure, stem: Path) -> Path:
    """Write ``figure`` as ``stem.png`` or ``stem.svg`` (atomically); returns the path."""
    from MedSegLib.atomic import atomic_output

    path = Path(str(stem) + f".{figure.kind}")
    with atomic_output(path) as temp:
        temp.write_bytes(figure.data)
    return path


def viridis(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB uint8 of ``values`` scaled to [low, high] (NaN -> black)."""
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    position = np.nan_to_num(scaled, nan=0.0) * (len(_VIRIDIS) - 1)
    lower = np.floor(position).astype(int).clip(0, len(_VIRIDIS) - 2)
    fraction = (position - lower)[..., None]
    rgb = _VIRIDIS[lower] * (1 - fraction) + _VIRIDIS[lower + 1] * fraction
    rgb[~np.isfinite(np.asarray(values, dtype=np.float64))] = 0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _canvas(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> Figure:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return Figure("png", buffer.getvalue())


def map_with_colour_bar(image: np.ndarray, low: float, high: float, label: str) -> Figure:
    """A parameter map slice (radiological display: rows as given) with a labelled colour bar."""
    image = np.asarray(image, dtype=np.float64)
    if use_matplotlib():
        figure = _canvas(4.6, 4.0)
        axes = figure.add_subplot(1, 1, 1)
        shown = axes.imshow(np.ma.masked_invalid(image), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        axes.set_axis_off()
        bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
        bar.set_label(label)
        return _png(figure)
    from MedSegLib.png_writer import encode_png

    rgb = viridis(image, low, high)
    rows, cols = rgb.shape[:2]
    scale = max(1, int(320 / max(rows, cols)))
    png = encode_png(np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1))
    width, height = cols * scale, rows * scale
    stops = "".join(
        f'<stop offset="{i / (len(_VIRIDIS) - 1):.3f}" stop-color="rgb({r:.0f},{g:.0f},{b:.0f})"/>'
        for i, (r, g, b) in enumerate(_VIRIDIS[::-1])
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 110}" height="{height}" '
        f'viewBox="0 0 {width + 110} {height}">'
        f'<image width="{width}" height="{height}" href="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
        f'<defs><linearGradient id="bar" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient></defs>'
        f'<rect x="{width + 10}" y="10" width="16" height="{height - 20}" fill="url(#bar)"/>'
        f'<text x="{width + 30}" y="20" font-size="11" font-family="sans-serif">{high:.4g}</text>'
        f'<text x="{width + 30}" y="{height - 10}" font-size="11" font-family="sans-serif">{low:.4g}</text>'
        f'<text x="{width + 30}" y="{height / 2}" font-size="11" font-family="sans-serif">{html.escape(label)}</text>'
        "</svg>"
    )
    return Figure("svg", svg.encode("utf-8"))


def fit_curves(series: Sequence[Dict[str, Any]], xlabel: str, ylabel: str, title: str) -> Figure:
    """Measured points and the fitted model curve for a few voxels (one colour per voxel)."""
    if use_matplotlib():
        figure = _canvas(5.6, 3.6)
        axes = figure.add_subplot(1, 1, 1)
        for number, item in enumerate(series):
            colour = _PALETTE[number % len(_PALETTE)]
            axes.plot(item["x"], item["y"], "o", color=colour, label=item["label"], markersize=4)
            if item.get("curve_y") is not None:
                axes.plot(item["curve_x"], item["curve_y"], "-", color=colour, linewidth=1.2)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=7, loc="best")
        axes.grid(alpha=0.3)
        return _png(figure)
    return _svg_lines(series, xlabel, ylabel, title)


def bar_chart(
    categories: Sequence[str], groups: Dict[str, Sequence[Optional[float]]], ylabel: str, title: str
) -> Figure:
    """Grouped bars: one group per category (case), one bar per series (segment / region)."""
    if use_matplotlib():
        figure = _canvas(max(4.0, 0.5 + 0.35 * len(categories) * max(1, len(groups))), 3.4)
        axes = figure.add_subplot(1, 1, 1)
        width = 0.8 / max(1, len(groups))
        for number, (name, values) in enumerate(groups.items()):
            positions = [i + (number - (len(groups) - 1) / 2) * width for i in range(len(categories))]
            heights = [float("nan") if v is None else v for v in values]
            axes.bar(positions, heights, width=width, label=name, color=_PALETTE[number % len(_PALETTE)])
        axes.set_xticks(range(len(categories)))
        axes.set_xticklabels(categories, rotation=20, ha="right", fontsize=8)
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize=10)
        if len(groups) <= 12:
            axes.legend(fontsize=7, loc="best")
        axes.grid(axis="y", alpha=0.3)
        return _png(figure)
    return _svg_bars(categories, groups, ylabel, title)


# ------------------------------------------------------------------------------------------------ SVG


def _ticks(low: float, high: float, count: int = 5) -> List[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _svg_frame(width: int, height: int, title: str, xlabel: str, ylabel: str) -> List[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
        f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>",
    ]


def _svg_lines(series: Sequence[Dict[str, Any]], xlabel: str, ylabel: str, title: str) -> Figure:
    width, height, left, right, top, bottom = 560, 340, 60, 170, 26, 40
    xs = [v for s in series for v in list(s["x"]) + list(s.get("curve_x") or [])]
    ys = [v for s in series for v in list(s["y"]) + list(s.get("curve_y") or [])]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(0.0, min(ys)), max(ys)) if ys else (0.0, 1.0)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = _svg_frame(width, height, title, xlabel, ylabel)
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#444"/>'
    )
    for tick in _ticks(x0, x1):
        parts.append(f'<text x="{px(tick):.1f}" y="{height - bottom + 14}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(y0, y1):
        parts.append(f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for number, item in enumerate(series):
        colour = _PALETTE[number % len(_PALETTE)]
        for x, y in zip(item["x"], item["y"]):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        if item.get("curve_y") is not None:
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(item["curve_x"], item["curve_y"]))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        legend_y = top + 14 + 16 * number
        parts.append(f'<rect x="{width - right + 10}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 24}" y="{legend_y}">{html.escape(item["label"][:26])}</text>')
    parts.append("</svg>")
    return Figure("svg", "".join(parts).encode("utf-8"))


def _svg_bars(
    categories: Sequence[str], groups: Dict[str, Sequence[Optional[float]]], ylabel: str, title: str
) -> Figure:
    width = max(420, 80 + 26 * len(categories) * max(1, len(groups)) + 170)
    height, left, right, top, bottom = 320, 60, 170, 26, 60
    values = [v for vs in groups.values() for v in vs if v is not None and math.isfinite(v)]
    y0, y1 = min(0.0, min(values, default=0.0)), max(values, default=1.0)
    y1 = y1 if y1 > y0 else y0 + 1

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = _svg_frame(width, height, title, "", ylabel)
    slot = (width - left - right) / max(1, len(categories))
    bar = slot * 0.8 / max(1, len(groups))
    for tick in _ticks(y0, y1):
        parts.append(f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#ddd"/>')
    for index, category in enumerate(categories):
        centre = left + slot * (index + 0.5)
        parts.append(
            f'<text x="{centre:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">'
            f"{html.escape(category[:18])}</text>"
        )
        for number, series in enumerate(groups.values()):
            value = series[index]
            if value is None or not math.isfinite(value):
                continue
            x = centre - slot * 0.4 + number * bar
            top_y, base = py(max(value, 0.0)), py(min(value, 0.0))
            parts.append(
                f'<rect x="{x:.1f}" y="{top_y:.1f}" width="{bar:.1f}" height="{base - top_y:.1f}" '
                f'fill="{_PALETTE[number % len(_PALETTE)]}"/>'
            )
    for number, name in enumerate(list(groups)[:14]):
        legend_y = top + 14 + 16 * number
        parts.append(
            f'<rect x="{width - right + 10}" y="{legend_y - 9}" width="10" height="10" '
            f'fill="{_PALETTE[number % len(_PALETTE)]}"/>'
        )
        parts.append(f'<text x="{width - right + 24}" y="{legend_y}">{html.escape(name[:26])}</text>')
    parts.append("</svg>")
    return Figure("svg", "".join(parts).encode("utf-8"))
