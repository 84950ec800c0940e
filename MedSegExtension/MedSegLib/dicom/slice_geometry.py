"""Slice stacking geometry: sort along the slice normal, measure spacing from positions, detect irregular stacks.

Why: ImagePositionPatient (IPP) is the only authoritative slice location. SliceThickness is not the spacing,
InstanceNumber is not spatial, and gantry tilt or missing slices make a plain "stack the files" volume wrong
without any visible error. Everything here works in DICOM LPS patient coordinates (mm); callers convert to RAS.

Conventions: a stack array is ``(k, j, i)`` = (slice, row, column); ``ijk_to_lps`` maps the column vector
``(i, j, k, 1)``. Slices are sorted so that k increases along ``n = row_dir x col_dir``, which makes the IJK
frame right-handed (Slicer never needs to reverse it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Positions closer than this along the normal are "the same slice" (mm). dcm2niix uses float equality,
#: Slicer 0.01 mm for spacing; 0.01 mm is well below any real slice gap and above DS rounding jitter.
POSITION_TOLERANCE_MM = 0.01
#: Largest allowed deviation of any slice from the regular grid before we call the stack irregular (mm).
#: Matches Slicer's examine-time spacing epsilon.
SPACING_TOLERANCE_MM = 0.01
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def orientation_vectors(iop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row direction r (column index step), column direction c (row index step) and normal r x c."""
    iop = np.asarray(iop, dtype=np.float64)
    r = iop[:3] / (np.linalg.norm(iop[:3]) or 1.0)
    c = iop[3:6] / (np.linalg.norm(iop[3:6]) or 1.0)
    n = np.cross(r, c)
    n /= np.linalg.norm(n) or 1.0
    return r, c, n


def sort_positions(positions: np.ndarray, iop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order (stable) and signed distances along the normal, ascending (as Slicer's getSortedImageFiles)."""
    _, _, n = orientation_vectors(iop)
    dist = np.asarray(positions, dtype=np.float64) @ n
    order = np.argsort(dist, kind="stable")
    return order, dist[order]


@dataclass
class StackGeometry:
    """What the positions of one sorted stack say about its grid."""

    origin: np.ndarray  # IPP of slice 0 (LPS)
    row_dir: np.ndarray  # r: direction of increasing column index i
    col_dir: np.ndarray  # c: direction of increasing row index j
    normal: np.ndarray  # n = r x c
    pixel_spacing: tuple[float, float]  # (row spacing = step along c, column spacing = step along r)
    positions: np.ndarray  # (N, 3) IPP per sorted slice
    distances: np.ndarray  # (N,) signed distance of each slice from slice 0 along n
    slice_step: float  # mean distance between consecutive slices along n (0 for one slice)
    uniform: bool = True  # gaps equal within SPACING_TOLERANCE_MM
    tilted: bool = False  # slices displaced in-plane (gantry tilt / shear)
    tilt_degrees: float = 0.0
    duplicates: int = 0  # slices sharing a position with another one
    missing_slices: int = 0  # estimated slices missing from gaps that are multiples of the typical gap
    warnings: list[str] = field(default_factory=list)

    @property
    def regular(self) -> bool:
        """True when one affine describes every slice exactly (within tolerance)."""
        return self.uniform and not self.tilted and self.duplicates == 0

    def affine_lps(self, sheared: bool = False) -> np.ndarray:
        """ijk -> LPS. Regular: third column = normal * mean step. ``sheared``: (last - first) / (N - 1) as Slicer."""
        m = np.eye(4)
        m[:3, 0] = self.row_dir * self.pixel_spacing[1]
        m[:3, 1] = self.col_dir * self.pixel_spacing[0]
        n_slices = len(self.positions)
        if sheared and n_slices > 1:
            m[:3, 2] = (self.positions[-1] - self.positions[0]) / (n_slices - 1)
        else:
            m[:3, 2] = self.normal * (self.slice_step if self.slice_step > 0 else 1.0)
        m[:3, 3] = self.origin
        return m


def analyse_stack(positions: np.ndarray, iop: np.ndarray, pixel_spacing: tuple[float, float]) -> StackGeometry:
    """Measure a stack that is already sorted ascending along the normal; record every irregularity as text."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    r, c, n = orientation_vectors(iop)
    rel = positions - positions[0]
    dist = rel @ n
    geo = StackGeometry(
        origin=positions[0].copy(),
        row_dir=r,
        col_dir=c,
        normal=n,
        pixel_spacing=tuple(pixel_spacing),
        positions=positions,
        distances=dist,
        slice_step=0.0,
    )
    count = len(positions)
    if count < 2:
        return geo
    gaps = np.diff(dist)
    geo.duplicates = int(np.count_nonzero(gaps < POSITION_TOLERANCE_MM))
    if geo.duplicates:
        geo.warnings.append(
            f"{geo.duplicates} slice(s) share a position with another slice; the series is not a single volume"
        )
    geo.slice_step = float((dist[-1] - dist[0]) / (count - 1))
    # In-plane displacement of each slice from the line through slice 0 along the normal = tilt or shear.
    lateral = rel - np.outer(dist, n)
    lateral_norm = np.linalg.norm(lateral, axis=1)
    if float(lateral_norm.max()) > SPACING_TOLERANCE_MM:
        geo.tilted = True
        span = positions[-1] - positions[0]
        cosine = abs(float(span @ n)) / (np.linalg.norm(span) or 1.0)
        geo.tilt_degrees = math.degrees(math.acos(min(1.0, cosine)))
        geo.warnings.append(
            f"slices are displaced in-plane (gantry tilt about {geo.tilt_degrees:.2f} degrees, "
            f"{float(lateral_norm.max()):.2f} mm at the last slice)"
        )
    positive = gaps[gaps >= POSITION_TOLERANCE_MM]
    if positive.size and float(np.abs(dist - dist[0] - geo.slice_step * np.arange(count)).max()) > SPACING_TOLERANCE_MM:
        geo.uniform = False
        typical = float(np.median(positive))
        ratios = positive / typical
        multiples = np.rint(ratios)
        if typical > 0 and np.all(np.abs(ratios - multiples) < 0.05) and np.all(multiples >= 1):
            geo.missing_slices = int((multiples - 1).sum())
        detail = ", ".join(f"{g:.3g}" for g in np.unique(np.round(positive, 2))[:6])
        text = f"slice spacing is not uniform (gaps along the normal: {detail} mm)"
        if geo.missing_slices:
            text += f"; about {geo.missing_slices} slice(s) appear to be missing"
        geo.warnings.append(text)
    return geo


def _shifted_plane(src: np.ndarray, dv: float, du: float, shape: tuple[int, int], fill: float, out: np.ndarray) -> None:
    """out[j, i] = src[j + dv, i + du] with bilinear interpolation; ``fill`` outside ``src`` (float32 maths)."""
    rows, cols = src.shape
    jv0 = math.floor(dv)
    iu0 = math.floor(du)
    fv = np.float32(dv - jv0)
    fu = np.float32(du - iu0)
    # Pad by one sample so the +1 neighbour of the last row/column exists.
    padded = np.full((rows + 2, cols + 2), fill, dtype=np.float32)
    padded[1:-1, 1:-1] = src
    out_rows, out_cols = shape

    def window(dj: int, di: int) -> np.ndarray:
        """Block of padded src for out[j, i] -> src[j + jv0 + dj, i + iu0 + di], fill outside."""
        block = np.full((out_rows, out_cols), fill, dtype=np.float32)
        j_start = jv0 + dj + 1
        i_start = iu0 + di + 1
        sj0, sj1 = max(j_start, 0), min(j_start + out_rows, rows + 2)
        si0, si1 = max(i_start, 0), min(i_start + out_cols, cols + 2)
        if sj1 > sj0 and si1 > si0:
            block[sj0 - j_start : sj1 - j_start, si0 - i_start : si1 - i_start] = padded[sj0:sj1, si0:si1]
        return block

    out[...] = window(0, 0) * ((1 - fv) * (1 - fu))
    if fu:
        out += window(0, 1) * ((1 - fv) * fu)
    if fv:
        out += window(1, 0) * (fv * (1 - fu))
        if fu:
            out += window(1, 1) * (fv * fu)


def regular_grid_for(geo: StackGeometry, rows: int, cols: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Orthogonal grid (ijk -> LPS, shape (k, j, i)) covering every acquired slice.

    In-plane: the slice-0 pixel lattice, extended to hold the in-plane shifts of tilted slices. Along the normal:
    the mean step when spacing is uniform; otherwise the smallest gap, capped at 2N slices (as dcm2niix's ``_Eq``)
    so that the first and last slices land exactly on grid planes.
    """
    rel = geo.positions - geo.positions[0]
    u = rel @ geo.row_dir / geo.pixel_spacing[1]
    v = rel @ geo.col_dir / geo.pixel_spacing[0]
    u0, v0 = math.floor(float(u.min()) + 1e-6), math.floor(float(v.min()) + 1e-6)
    u1, v1 = math.ceil(float(u.max()) - 1e-6), math.ceil(float(v.max()) - 1e-6)
    n_cols, n_rows = cols + (u1 - u0), rows + (v1 - v0)
    span = float(geo.distances[-1] - geo.distances[0])
    count = len(geo.positions)
    if geo.uniform or count < 2:
        n_slices = count
    else:
        gaps = np.diff(geo.distances)
        smallest = float(gaps[gaps >= POSITION_TOLERANCE_MM].min())
        n_slices = min(int(round(span / smallest)) + 1, 2 * count)
    step = span / (n_slices - 1) if n_slices > 1 else (geo.slice_step or 1.0)
    m = np.eye(4)
    m[:3, 0] = geo.row_dir * geo.pixel_spacing[1]
    m[:3, 1] = geo.col_dir * geo.pixel_spacing[0]
    m[:3, 2] = geo.normal * step
    m[:3, 3] = geo.origin + u0 * m[:3, 0] + v0 * m[:3, 1] + geo.distances[0] * geo.normal
    return m, (n_slices, n_rows, n_cols)


def resample_to_regular_grid(stack: np.ndarray, geo: StackGeometry, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a tilted and/or unevenly spaced stack (k, j, i) onto an orthogonal regular grid in patient space.

    Each output voxel is interpolated linearly along the slice normal between the two enclosing acquired planes,
    each sampled bilinearly in-plane at the voxel's projection (the dcm2niix ``_Tilt_Eq`` model). Integer data is
    rounded back to its dtype, as dcm2niix does. Returns ``(array, ijk_to_lps)``.
    """
    rows, cols = stack.shape[1:]
    m, shape = regular_grid_for(geo, rows, cols)
    out = np.empty(shape, dtype=stack.dtype)
    rel = geo.positions - geo.positions[0]
    grid_origin_rel = m[:3, 3] - geo.origin
    # Offset of grid index (0, 0) inside slice k, in slice-k pixel units.
    du = (grid_origin_rel - rel) @ geo.row_dir / geo.pixel_spacing[1]
    dv = (grid_origin_rel - rel) @ geo.col_dir / geo.pixel_spacing[0]
    w_out = geo.distances[0] + np.arange(shape[0]) * (np.linalg.norm(m[:3, 2]))
    w_in = geo.distances
    integer = np.issubdtype(stack.dtype, np.integer)
    planes: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        """Slice k projected onto the output lattice (kept for the next output slice)."""
        if k not in planes:
            for key in [key for key in planes if abs(key - k) > 1]:
                del planes[key]
            buffer = np.empty(shape[1:], dtype=np.float32)
            _shifted_plane(stack[k], float(dv[k]), float(du[k]), shape[1:], fill, buffer)
            planes[k] = buffer
        return planes[k]

    last = len(w_in) - 1
    for s, w in enumerate(w_out):
        k = min(max(int(np.searchsorted(w_in, w + 1e-6, side="right")) - 1, 0), last)
        if k == last or abs(w - w_in[k]) < 1e-6:
            result = plane(k).copy()
        else:
            t = np.float32((w - w_in[k]) / (w_in[k + 1] - w_in[k]))
            result = plane(k) * (1 - t)
            result += plane(k + 1) * t
        if integer:
            info = np.iinfo(stack.dtype)
            np.clip(np.rint(result), info.min, info.max, out=result)
        out[s] = result
    return out, m
