"""Exact reference definitions of every window function MedSeg offers (float64 numpy, simple and slow).

These functions *define* the output; the fast path (:mod:`MedSegLib.windowing.fast_window`) must be
bit-identical to them on every input value, and the tests check both against independent references.

Functions (``function`` argument):

``seed``
    The project's formula ``display = clip((x - (level - width/2)) / width * ymax, 0, ymax)``, evaluated in
    float64 in exactly that operation order, then **truncated** (floor) to an integer. Truncation is what
    3D Slicer's slice views do (``vtkImageMapToWindowLevelColors`` casts to unsigned char after clamping):
    for every int16 value and Slicer's CT presets the uint8 output equals VTK's (see the tests).
``linear``, ``linear-exact``, ``sigmoid``
    DICOM PS3.3 C.11.2.1.2 / C.11.2.1.3 VOI LUT functions, computed with the very float64 operations of
    ``pydicom.pixels.apply_windowing`` (pydicom 3.0) for an output range ``[0, ymax]``: with
    ``out_dtype=float64`` the result equals pydicom's array bit for bit. Integer outputs round that float
    **half up**: ``n = floor(y); n += (y - n >= 0.5)`` (exact; ``floor(y + 0.5)`` is not, for y just
    below .5).

Output ranges: uint8 -> ymax 255, uint16 -> ymax 65535, float64 -> ymax 255 (the unrounded value).
NaN inputs give 0 and one ``RuntimeWarning`` naming how many voxels were NaN.

Explicit VOI LUT Sequence items (PS3.3 C.11.2.1.1) are applied with :func:`apply_voi_lut_sequence`:
values below the first mapped value take entry 0, values past the end the last entry, as the standard
and pydicom's ``apply_voi`` do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

FUNCTIONS: Tuple[str, ...] = ("seed", "linear", "linear-exact", "sigmoid")
_ALIASES: Dict[str, str] = {
    "seed": "seed",
    "slicer": "seed",
    "linear": "linear",
    "linear-exact": "linear-exact",
    "linear_exact": "linear-exact",
    "linearexact": "linear-exact",
    "sigmoid": "sigmoid",
}
OUTPUT_DTYPES: Tuple[np.dtype, ...] = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float64))


def normalize_function(name: str) -> str:
    """Canonical function name from user spellings (DICOM's ``LINEAR_EXACT`` included)."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown window function {name!r}; expected one of {', '.join(FUNCTIONS)}")
    return _ALIASES[key]


def output_dtype(dtype: Any) -> np.dtype:
    """The output dtype, checked: uint8, uint16 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"window output must be uint8, uint16 or float64, got {dtype}")
    return dtype


def output_max(dtype: Any) -> int:
    """ymax of the output range: 255 for uint8 (and float64), 65535 for uint16."""
    return 65535 if np.dtype(dtype) == np.uint16 else 255


def check_window(width: float, function: str) -> None:
    """Reject widths the function cannot use, with the DICOM rule in the message."""
    function = normalize_function(function)
    if not np.isfinite(width):
        raise ValueError(f"window width must be finite, got {width}")
    if function == "linear" and width < 1:
        raise ValueError(f"LINEAR windowing needs a width >= 1 (PS3.3 C.11.2.1.2.1), got {width}")
    if function != "linear" and width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")


def linear_parameters(level: float, width: float, function: str) -> Tuple[float, float, float, float]:
    """(center, width, lower bound, upper bound) after pydicom's LINEAR adjustment (c - 0.5, w - 1)."""
    center, width = float(level), float(width)
    if normalize_function(function) == "linear":
        center -= 0.5
        width -= 1
    return center, width, center - width / 2, center + width / 2


def warn_nan(count: int) -> None:
    if count:
        warnings.warn(f"{count} NaN voxel(s) mapped to 0 by windowing", RuntimeWarning, stacklevel=3)


def _round_half_up(y: np.ndarray) -> np.ndarray:
    whole = np.floor(y)
    whole += (y - whole) >= 0.5
    return whole


def window_float_reference(values: np.ndarray, level: float, width: float, function: str, ymax: int) -> np.ndarray:
    """Unrounded float64 output (NaN stays NaN); the exact operations that define each function."""
    function = normalize_function(function)
    check_window(width, function)
    x = np.asarray(values).astype(np.float64)  # a copy: the caller's array is never modified
    if function == "seed":
        lower = float(level) - float(width) / 2.0
        y = (x - lower) / float(width) * float(ymax)
        return np.clip(y, 0.0, float(ymax), out=y)  # NaN stays NaN
    y_min, y_range = 0, ymax  # ints, as pydicom's unsigned output range
    if function == "sigmoid":
        center, width = float(level), float(width)
        with np.errstate(over="ignore"):  # exp overflow -> inf -> y = 0, as intended
            return y_range / (1 + np.exp(-4 * (x - center) / width)) + y_min
    center, width, lower, upper = linear_parameters(level, width, function)
    below = x <= lower
    above = x > upper
    between = np.logical_and(~below, ~above)
    x[below] = y_min
    x[above] = ymax
    if between.any():
        x[between] = ((x[between] - center) / width + 0.5) * y_range + y_min
    return x


def window_reference(
    values: np.ndarray, level: float, width: float, function: str = "seed", out_dtype: Any = np.uint8
) -> np.ndarray:
    """The defining float64 computation of every window function, to uint8 / uint16 / float64."""
    dtype = output_dtype(out_dtype)
    function = normalize_function(function)
    y = window_float_reference(values, level, width, function, output_max(dtype))
    nan = np.isnan(y)
    warn_nan(int(nan.sum()))
    y[nan] = 0.0
    if dtype == np.float64:
        return y
    if function == "seed":
        return np.floor(y).astype(dtype)
    return _round_half_up(y).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# Explicit VOI LUT Sequence (0028,3010)


@dataclass(frozen=True)
class VoiLut:
    """One VOI LUT Sequence item: LUT Descriptor (entries, first mapped value, bits) and LUT Data."""

    first_mapped: int
    data: np.ndarray  # uint8 (8 bits per entry) or uint16 (10-16 bits)
    bits: int
    explanation: str = ""

    @property
    def entries(self) -> int:
        return int(self.data.size)


def make_voi_lut(data: Sequence[int], first_mapped: int, bits: int, explanation: str = "") -> VoiLut:
    """Checked VoiLut: bits 8 or 10-16 (PS3.3 C.11.2.1.1), entries fit the bits."""
    bits = int(bits)
    if bits == 8:
        dtype = np.uint8
    elif 10 <= bits <= 16:
        dtype = np.uint16
    else:
        raise ValueError(f"VOI LUT entries must have 8 or 10-16 bits, got {bits}")
    raw = np.asarray(data, dtype=np.int64).ravel()
    if raw.size == 0 or raw.size > 65536:
        raise ValueError(f"a VOI LUT has 1..65536 entries, got {raw.size}")
    if raw.min() < 0 or raw.max() > (1 << bits) - 1:
        raise ValueError(f"VOI LUT entries must lie in 0..{(1 << bits) - 1}")
    return VoiLut(int(first_mapped), raw.astype(dtype), bits, explanation)


def voi_luts_from_dataset(ds: Any) -> List[VoiLut]:
    """Every VOI LUT Sequence item of a pydicom dataset, decoded the way pydicom's ``apply_voi`` does."""
    from struct import unpack_from

    luts: List[VoiLut] = []
    for item in ds.get("VOILUTSequence", None) or []:
        descriptor = [int(v) for v in item.LUTDescriptor]
        entries = descriptor[0] or 65536
        element = item["LUTData"]
        if element.VR == "OW":
            little = ds.file_meta._tsyntax_encoding[1] if hasattr(ds, "file_meta") else ds.original_encoding[1]
            if little is None:
                raise ValueError("cannot tell the byte order of LUT Data (no transfer syntax)")
            data = unpack_from(f"{'><'[bool(little)]}{entries}H", bytes(item.LUTData))
        else:
            data = item.LUTData
            data = [data] if isinstance(data, int) else list(data)
        luts.append(make_voi_lut(data, descriptor[1], descriptor[2], str(item.get("LUTExplanation", "") or "")))
    return luts


def voi_lut_index_reference(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """LUT index of every value: floor(x - first) clipped to [0, entries - 1]; NaN -> -1 (output 0).

    ``x - first`` is exact for integers (int64) and computed in the input's own precision for floats
    (float32 stays float32), as pydicom's ``apply_voi`` does, so float results match pydicom wherever
    pydicom's uint16 index does not overflow.
    """
    x = np.asarray(values)
    if x.dtype.kind == "f":
        difference = (x - x.dtype.type(lut.first_mapped)).astype(np.float64)
    else:
        difference = x.astype(np.int64) - lut.first_mapped
    nan = np.isnan(difference) if difference.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)
    index = np.floor(np.clip(difference, 0, lut.entries - 1))
    index[nan] = -1
    return index.astype(np.int64)


def apply_voi_lut_sequence_reference(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Explicit VOI LUT applied by the standard's rule (uint8 or uint16 by the LUT's bits)."""
    index = voi_lut_index_reference(values, lut)
    nan = index < 0
    warn_nan(int(nan.sum()))
    out = lut.data[np.maximum(index, 0)]
    out[nan] = 0
    return out


def voi_lut_to_uint8(values16: np.ndarray, bits: int) -> np.ndarray:
    """Rescale a VOI LUT output of ``bits`` bits to 0..255 (round half up) for PNG rendering."""
    if bits == 8:
        return np.asarray(values16, dtype=np.uint8)
    top = (1 << bits) - 1
    return ((np.asarray(values16, dtype=np.uint32) * 255 * 2 + top) // (2 * top)).astype(np.uint8)


def lut_for_integer_dtype(dtype: Any) -> Tuple[np.ndarray, np.ndarray]:
    """All values of an integer dtype of <= 16 bits, ordered by their raw bit pattern (uint view).

    Returns (values, raw codes): ``values[code]`` is the number whose bits are ``code``, so a LUT built
    as ``f(values)`` is indexed directly by ``array.view(unsigned)``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise ValueError(f"LUT needs an integer type of at most 16 bits, got {dtype}")
    unsigned = np.dtype(f"u{dtype.itemsize}")
    codes = np.arange(1 << (8 * dtype.itemsize), dtype=np.int64).astype(unsigned)
    return codes.view(dtype), codes
