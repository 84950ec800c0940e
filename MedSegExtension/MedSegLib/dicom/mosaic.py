"""Mosaic images: many slices tiled into one 2D DICOM image (Siemens EPI/DWI, United Imaging "grid" images).

Why: a mosaic's ImagePositionPatient describes the whole tiled image, not slice 1, and the slice order and
direction live in private tags. Unpacking the tiles without correcting the position shifts the volume by half
the mosaic size (the classic mosaic bug). The rules follow dcm2niix ``nii_demosaic`` / ``set_nii_header_x`` and
nibabel's ``MosaicWrapper``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from .slice_geometry import orientation_vectors

SIEMENS_CSA_IMAGE = (0x0029, 0x1010)
SIEMENS_IMAGES_IN_MOSAIC = (0x0019, 0x100A)
UIH_IMAGES_IN_GRID = (0x0065, 0x1050)
UIH_FRAME_SEQUENCE = (0x0065, 0x1051)


@dataclass
class MosaicLayout:
    """How to cut one stored image into slices, and where each slice lies (LPS)."""

    n_slices: int
    tile_rows: int
    tile_cols: int
    grid_cols: int  # tiles per mosaic row
    positions: np.ndarray  # (n_slices, 3) IPP of each tile, in tile order
    vendor: str

    def tile(self, index: int) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) of tile ``index`` in the stored image (row-major tile order)."""
        grid_row, grid_col = divmod(index, self.grid_cols)
        return grid_row * self.tile_rows, grid_col * self.tile_cols, self.tile_rows, self.tile_cols


def parse_csa_header(raw: bytes) -> dict[str, list[str]]:
    """Parse a Siemens CSA2 ("SV10") or CSA1 header into ``{name: [item strings]}`` (nibabel csareader format)."""
    if not raw or len(raw) < 16:
        return {}
    csa2 = raw[:4] == b"SV10"
    offset = 8 if csa2 else 0
    n_tags, _check = struct.unpack_from("<2I", raw, offset)
    if not 0 < n_tags <= 1000:
        return {}
    offset += 8
    tags: dict[str, list[str]] = {}
    for _ in range(n_tags):
        if offset + 84 > len(raw):
            break
        name = raw[offset : offset + 64].split(b"\0", 1)[0].decode("latin-1")
        _vm, _vr, _syngodt, n_items, _xx = struct.unpack_from("<i4sii i", raw, offset + 64)
        offset += 84
        items = []
        for _item in range(n_items):
            if offset + 16 > len(raw):
                break
            x0, x1, _x2, _x3 = struct.unpack_from("<4i", raw, offset)
            length = x1 if csa2 else x0
            offset += 16
            if length < 0 or offset + length > len(raw):
                return tags
            value = raw[offset : offset + length].split(b"\0", 1)[0].decode("latin-1").strip()
            if value:
                items.append(value)
            offset += (length + 3) // 4 * 4
        tags[name] = items
    return tags


def _raw_bytes(ds, tag: tuple[int, int]) -> bytes | None:
    element = ds.get(tag)
    if element is None:
        return None
    value = element.value
    return value if isinstance(value, (bytes, bytearray)) else None


def _int_value(ds, tag: tuple[int, int]) -> int | None:
    element = ds.get(tag)
    if element is None or element.value in (None, b"", ""):
        return None
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 2:
            return struct.unpack("<H", value)[0]
        try:
            return int(float(value.decode("latin-1").strip("\0 ").split("\\")[0]))
        except ValueError:
            return None
    if not isinstance(value, (str, int, float)) and hasattr(value, "__getitem__"):
        value = value[0] if len(value) else None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def is_mosaic(ds) -> bool:
    """Siemens: ImageType contains MOSAIC. UIH: grid count (0065,1050) > 1 with the per-slice sequence."""
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else [str(v).upper() for v in image_type]
    if any("MOSAIC" in v for v in image_type):
        return True
    manufacturer = str(ds.get("Manufacturer", "")).upper()
    return "UIH" in manufacturer and (_int_value(ds, UIH_IMAGES_IN_GRID) or 0) > 1 and UIH_FRAME_SEQUENCE in ds


def mosaic_layout(ds, iop: np.ndarray, pixel_spacing: tuple[float, float]) -> MosaicLayout | None:
    """Tile layout and per-tile positions, or None when the image is not a usable mosaic."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    r, c, n = orientation_vectors(iop)
    manufacturer = str(ds.get("Manufacturer", "")).upper()
    if "UIH" in manufacturer:
        count = _int_value(ds, UIH_IMAGES_IN_GRID) or 0
        items = ds.get(UIH_FRAME_SEQUENCE)
        if count < 2 or items is None:
            return None
        grid_cols = math.ceil(math.sqrt(count))
        grid_rows = math.ceil(count / grid_cols)  # UIH: 20 slices = 4 rows of 5 (dcm2niix issue 225)
        positions = np.array([[float(x) for x in item.ImagePositionPatient] for item in items.value][:count])
        if len(positions) != count:
            return None
        return MosaicLayout(count, rows // grid_rows, cols // grid_cols, grid_cols, positions, "UIH")
    csa = parse_csa_header(_raw_bytes(ds, SIEMENS_CSA_IMAGE) or b"")
    count = _int_value(ds, SIEMENS_IMAGES_IN_MOSAIC)
    if not count and csa.get("NumberOfImagesInMosaic"):
        count = int(float(csa["NumberOfImagesInMosaic"][0]))
    if not count or count < 1:
        return None
    grid = math.ceil(math.sqrt(count))
    tile_rows, tile_cols = rows // grid, cols // grid
    ipp = np.array([float(x) for x in ds.ImagePositionPatient])
    # Siemens IPP is the corner of a virtual slice as large as the whole mosaic, centred on the real slice.
    first = ipp + c * pixel_spacing[0] * (rows - tile_rows) / 2.0 + r * pixel_spacing[1] * (cols - tile_cols) / 2.0
    sign = 1.0
    normal_text = csa.get("SliceNormalVector")
    if normal_text and len(normal_text) == 3:
        csa_normal = np.array([float(v) for v in normal_text])
        if float(csa_normal @ n) < 0:
            sign = -1.0  # tiles stored against r x c (e.g. sagittal R->L)
    spacing = float(ds.get("SpacingBetweenSlices") or 0) or float(ds.get("SliceThickness") or 1.0)
    positions = first + np.outer(np.arange(count) * spacing * sign, n)
    return MosaicLayout(count, tile_rows, tile_cols, grid, positions, "SIEMENS")
