"""Extract display-oriented 2D slices of a volume in patient orientation.

Radiological convention as 3D Slicer shows it: axial slices with patient anterior at the top and
patient right on the screen's left; coronal with superior at the top and patient right on the left;
sagittal with superior at the top and anterior on the left. Works for any volume whose axes are
(close to) aligned with the patient axes, whatever their order or sign in the file.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

VIEW_AXES = {
    # view: (RAS axis normal to the slice, RAS axis shown top->bottom with its sign, RAS axis left->right with sign)
    "axial": (2, (1, -1), (0, -1)),  # rows: anterior->posterior; cols: right->left
    "coronal": (1, (2, -1), (0, -1)),  # rows: superior->inferior; cols: right->left
    "sagittal": (0, (2, -1), (1, -1)),  # rows: superior->inferior; cols: anterior->posterior
}


def _array_axis_for_ras(ijk_to_ras: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each RAS axis, the numpy axis (of array[k, j, i]) that runs along it, and its direction sign."""
    linear = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)  # unit columns: spacing must not vote
    ijk_for_ras = np.argmax(np.abs(linear), axis=1)  # RAS row -> ijk column with the largest component
    if len(set(ijk_for_ras.tolist())) != 3:
        raise ValueError("volume axes are too oblique to map onto patient axes")
    signs = np.sign(linear[np.arange(3), ijk_for_ras])
    numpy_axis = 2 - ijk_for_ras  # i -> axis 2, j -> axis 1, k -> axis 0
    return numpy_axis, signs


def display_slice(array_kji: np.ndarray, ijk_to_ras: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` (along the view's normal, in array order) oriented for display."""
    if view not in VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; expected one of {sorted(VIEW_AXES)}")
    normal_ras, (row_ras, row_sign), (col_ras, col_sign) = VIEW_AXES[view]
    numpy_axis, signs = _array_axis_for_ras(ijk_to_ras)
    image = np.take(array_kji, index, axis=int(numpy_axis[normal_ras]))
    remaining = [axis for axis in range(3) if axis != numpy_axis[normal_ras]]
    row_axis = remaining.index(int(numpy_axis[row_ras]))
    if row_axis != 0:
        image = image.T
    if signs[row_ras] != row_sign:
        image = image[::-1, :]
    if signs[col_ras] != col_sign:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def display_pixel_spacing(ijk_to_ras: np.ndarray, view: str) -> Tuple[float, float]:
    """(row spacing, column spacing) in mm of a display slice, for aspect-correct rendering."""
    _, (row_ras, _), (col_ras, _) = VIEW_AXES[view]
    numpy_axis, _ = _array_axis_for_ras(ijk_to_ras)
    spacing_ijk = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    return float(spacing_ijk[2 - numpy_axis[row_ras]]), float(spacing_ijk[2 - numpy_axis[col_ras]])


def slice_count(array_kji: np.ndarray, ijk_to_ras: np.ndarray, view: str) -> int:
    numpy_axis, _ = _array_axis_for_ras(ijk_to_ras)
    return int(array_kji.shape[numpy_axis[VIEW_AXES[view][0]]])


def resample_to_square_pixels(image: np.ndarray, row_spacing: float, col_spacing: float) -> np.ndarray:
    """Nearest-neighbour stretch so that one screen pixel is square in mm (correct aspect ratio)."""
    if np.isclose(row_spacing, col_spacing, rtol=1e-3):
        return image
    target = min(row_spacing, col_spacing)
    rows = max(1, int(round(image.shape[0] * row_spacing / target)))
    cols = max(1, int(round(image.shape[1] * col_spacing / target)))
    row_index = np.minimum((np.arange(rows) + 0.5) * image.shape[0] / rows, image.shape[0] - 1).astype(int)
    col_index = np.minimum((np.arange(cols) + 0.5) * image.shape[1] / cols, image.shape[1] - 1).astype(int)
    return image[np.ix_(row_index, col_index)]


def window_to_uint8(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Seed formula clip((v - (level - width/2)) / width * 255, 0, 255), truncated as Slicer's display does.

    Kept for callers of this module; the exact, fast implementation is MedSegLib.windowing.fast_window.
    """
    from MedSegLib.windowing.fast_window import window_to_uint8 as exact_window_to_uint8

    return exact_window_to_uint8(values, level, width)
