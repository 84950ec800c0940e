"""Write 8-bit greyscale or RGB images as PNG (atomically), with no dependency beyond zlib.

Rows are written top to bottom exactly as given: callers orient the image for display.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from MedSegLib.atomic import atomic_output


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image shaped (rows, cols) or (rows, cols, 3)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG writer expects uint8, got {image.dtype}")
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"PNG writer expects (rows, cols) or (rows, cols, 3), got {image.shape}")
    rows, cols = image.shape[:2]
    raw = np.zeros((rows, 1 + cols * channels), dtype=np.uint8)  # filter byte 0 per row
    raw[:, 1:] = image.reshape(rows, cols * channels)
    header = struct.pack(">IIBBBBB", cols, rows, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Union[str, Path], image: np.ndarray) -> Path:
    path = Path(path)
    data = encode_png(image)
    with atomic_output(path) as temp_path:
        temp_path.write_bytes(data)
    return path
