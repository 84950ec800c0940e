"""numba kernels of the fast path (imported lazily: only when numba is installed and wanted).

Each kernel repeats, per element and in the same order, the float64 IEEE operations of the reference in
:mod:`MedSegLib.windowing.voi_lut` (no fastmath, no reassociation), so results are bit-identical.
``exp`` is not used here: the sigmoid goes through a LUT built by numpy itself (libm and numpy's exp
may differ in the last bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTIONS = dict(parallel=True, cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_OPTIONS)
def seed_to_int(src, lower, width, ymax, out):  # pragma: no cover - compiled
    """floor(clip((x - lower) / width * ymax, 0, ymax)); NaN -> 0. Returns the NaN count."""
    nan = 0
    for i in prange(src.size):
        x = np.float64(src[i])
        if x != x:
            out[i] = 0
            nan += 1
        else:
            y = (x - lower) / width * ymax
            if y < 0.0:
                y = 0.0
            elif y > ymax:
                y = ymax
            out[i] = np.floor(y)
    return nan


@njit(**_OPTIONS)
def seed_to_float(src, lower, width, ymax, out):  # pragma: no cover - compiled
    nan = 0
    for i in prange(src.size):
        x = np.float64(src[i])
        if x != x:
            out[i] = 0.0
            nan += 1
        else:
            y = (x - lower) / width * ymax
            if y < 0.0:
                y = 0.0
            elif y > ymax:
                y = ymax
            out[i] = y
    return nan


@njit(**_OPTIONS)
def linear_to_int(src, center, width, lower, upper, ymax, out):  # pragma: no cover - compiled
    """pydicom's LINEAR / LINEAR_EXACT branches, then round half up."""
    nan = 0
    for i in prange(src.size):
        x = np.float64(src[i])
        if x != x:
            out[i] = 0
            nan += 1
        else:
            if x <= lower:
                y = 0.0
            elif x > upper:
                y = ymax
            else:
                y = ((x - center) / width + 0.5) * ymax + 0.0
            whole = np.floor(y)
            if y - whole >= 0.5:
                whole += 1.0
            out[i] = whole
    return nan


@njit(**_OPTIONS)
def linear_to_float(src, center, width, lower, upper, ymax, out):  # pragma: no cover - compiled
    nan = 0
    for i in prange(src.size):
        x = np.float64(src[i])
        if x != x:
            out[i] = 0.0
            nan += 1
        elif x <= lower:
            out[i] = 0.0
        elif x > upper:
            out[i] = ymax
        else:
            out[i] = ((x - center) / width + 0.5) * ymax + 0.0
    return nan


@njit(**_OPTIONS)
def gather(codes, lut, out):  # pragma: no cover - compiled
    """out[i] = lut[codes[i]] (codes: the input's raw unsigned bit patterns)."""
    for i in prange(codes.size):
        out[i] = lut[codes[i]]
    return 0
