#!/usr/bin/env python3
"""Regenerate the 128x128 module and extension icons in Resources/Icons.

Kept as a dev tool so the icons can be redrawn (new colour, new module) without an image editor;
it uses only the standard library (zlib + struct PNG writer) so it runs without Slicer, VTK or Pillow.

Usage: python Testing/make_icons.py [--output-dir Resources/Icons]
"""

from __future__ import annotations

import argparse
import math
import struct
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

SIZE = 128
SUPERSAMPLING = 3  # samples per axis per pixel, for smooth edges without a drawing library

Color = Tuple[int, int, int, int]
# A layer returns the colour at a sub-pixel position, or None where it does not paint.
Layer = Callable[[float, float], Optional[Color]]

WHITE: Color = (255, 255, 255, 255)
YELLOW: Color = (255, 214, 64, 255)


def write_png(path: Path, rgba_rows: Sequence[bytes], width: int, height: int) -> None:
    """Write 8-bit RGBA rows as a PNG file (filter type 0 on every row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rgba_rows)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def _segment_distance(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def rounded_square(color: Color, margin: float = 4.0, radius: float = 22.0) -> Layer:
    def layer(x: float, y: float) -> Optional[Color]:
        lo, hi = margin + radius, SIZE - margin - radius
        cx, cy = min(max(x, lo), hi), min(max(y, lo), hi)
        return color if math.hypot(x - cx, y - cy) <= radius else None

    return layer


def rectangle(x0: float, y0: float, x1: float, y1: float, color: Color) -> Layer:
    return lambda x, y: color if x0 <= x <= x1 and y0 <= y <= y1 else None


def horizontal_ramp(x0: float, y0: float, x1: float, y1: float) -> Layer:
    def layer(x: float, y: float) -> Optional[Color]:
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            return None
        grey = int(255 * (x - x0) / (x1 - x0))
        return (grey, grey, grey, 255)

    return layer


def disk(cx: float, cy: float, r: float, color: Color) -> Layer:
    return lambda x, y: color if math.hypot(x - cx, y - cy) <= r else None


def ring(cx: float, cy: float, r: float, width: float, color: Color) -> Layer:
    return lambda x, y: color if abs(math.hypot(x - cx, y - cy) - r) <= width / 2 else None


def polyline(points: Sequence[Tuple[float, float]], width: float, color: Color) -> Layer:
    def layer(x: float, y: float) -> Optional[Color]:
        for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
            if _segment_distance(x, y, ax, ay, bx, by) <= width / 2:
                return color
        return None

    return layer


def blob(cx: float, cy: float, r: float, color: Color) -> Layer:
    """A lobed shape, to suggest an organ outline rather than a plain circle."""

    def layer(x: float, y: float) -> Optional[Color]:
        angle = math.atan2(y - cy, x - cx)
        radius = r * (1.0 + 0.18 * math.sin(3 * angle) + 0.08 * math.cos(5 * angle))
        return color if math.hypot(x - cx, y - cy) <= radius else None

    return layer


def render(layers: List[Layer]) -> List[bytes]:
    """Composite the layers (later ones on top) with supersampled coverage."""
    rows = []
    samples = SUPERSAMPLING * SUPERSAMPLING
    for py in range(SIZE):
        row = bytearray()
        for px in range(SIZE):
            acc = [0.0, 0.0, 0.0, 0.0]
            for sy in range(SUPERSAMPLING):
                for sx in range(SUPERSAMPLING):
                    x = px + (sx + 0.5) / SUPERSAMPLING
                    y = py + (sy + 0.5) / SUPERSAMPLING
                    color: Optional[Color] = None
                    for layer in layers:
                        painted = layer(x, y)
                        if painted is not None:
                            color = painted
                    if color is not None:
                        alpha = color[3] / 255.0
                        for i in range(3):
                            acc[i] += color[i] * alpha
                        acc[3] += alpha
            if acc[3] > 0:
                coverage = int(round(255 * acc[3] / samples))
                row += bytes(int(round(acc[i] / acc[3])) for i in range(3)) + bytes([coverage])
            else:
                row += b"\x00\x00\x00\x00"
        rows.append(bytes(row))
    return rows


def _decay_curve() -> List[Tuple[float, float]]:
    return [(30 + t, 34 + 62 * (1 - math.exp(-t / 22.0))) for t in range(0, 72, 3)][::-1]


ICONS = {
    # Extension icon: a segmented organ inside a slice frame.
    "MedSegExtension": [
        rounded_square((33, 72, 138, 255)),
        rectangle(24, 24, 104, 104, (20, 20, 28, 255)),
        blob(64, 64, 26, YELLOW),
        ring(64, 64, 34, 4, WHITE),
    ],
    # DICOM: a stack of slices.
    "MedSegDICOM": [
        rounded_square((46, 110, 170, 255)),
        rectangle(48, 22, 104, 78, (200, 215, 235, 255)),
        rectangle(36, 36, 92, 92, (225, 235, 245, 255)),
        rectangle(24, 50, 80, 106, WHITE),
        disk(52, 78, 14, (60, 60, 70, 255)),
    ],
    # Windowing: a grey ramp with the window bracket on it.
    "MedSegWindowing": [
        rounded_square((70, 70, 80, 255)),
        horizontal_ramp(18, 52, 110, 76),
        polyline([(46, 40), (46, 88)], 5, YELLOW),
        polyline([(82, 40), (82, 88)], 5, YELLOW),
        polyline([(46, 100), (82, 100)], 4, YELLOW),
    ],
    # Classical segmentation: an image disk with a labelled region.
    "MedSegSegmentation": [
        rounded_square((30, 130, 90, 255)),
        disk(64, 64, 44, (40, 40, 48, 255)),
        blob(60, 66, 22, YELLOW),
    ],
    # Deep learning: a small layered network.
    "MedSegDeepLearning": [
        rounded_square((120, 60, 150, 255)),
        polyline([(30, 40), (64, 64), (30, 88)], 3, (220, 200, 240, 255)),
        polyline([(30, 40), (64, 40), (98, 64), (64, 88), (30, 88)], 3, (220, 200, 240, 255)),
        polyline([(64, 40), (64, 88)], 3, (220, 200, 240, 255)),
        polyline([(64, 64), (98, 64)], 3, (220, 200, 240, 255)),
        disk(30, 40, 9, WHITE), disk(30, 88, 9, WHITE),
        disk(64, 40, 9, WHITE), disk(64, 64, 9, WHITE), disk(64, 88, 9, WHITE),
        disk(98, 64, 10, YELLOW),
    ],
    # Quantitative MRI: a relaxation curve on axes.
    "MedSegQuantitativeMRI": [
        rounded_square((180, 90, 40, 255)),
        polyline([(24, 24), (24, 104), (108, 104)], 5, WHITE),
        polyline(_decay_curve(), 5, YELLOW),
    ],
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[1] / "Resources" / "Icons"
    parser.add_argument("--output-dir", type=Path, default=default_dir)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, layers in ICONS.items():
        path = args.output_dir / f"{name}.png"
        write_png(path, render(layers), SIZE, SIZE)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
