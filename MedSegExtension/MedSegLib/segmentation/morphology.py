"""Binary erosion and dilation with ITK's flat structuring elements, compiled with numba.

The result is the same, voxel for voxel, as SimpleITK's ``BinaryErode`` / ``BinaryDilate`` (foreground 1,
background 0) with the same radius and kernel type, ~20-50x faster on CT-sized masks.

The kernel is read from ITK itself (the dilation of a single voxel), so its definition cannot drift from
ITK's. ITK's ball and box are symmetric and convex along x: each kernel row ``(dz, dy)`` covers the
contiguous range ``[-w, w]``. A voxel survives the erosion when, for every kernel row, the input row
``(z + dz, y + dy)`` is all foreground on ``[x - w, x + w]``; with ``L[x]`` the number of consecutive
foreground voxels ending at ``x`` (run length from the left), that is ``L[x + w] >= 2w + 1``: one test
per kernel row, whatever the radius. Run lengths are kept for the ``2 rz + 1`` slices around the current
one only (a ring buffer per block of slices; blocks run in parallel), so the memory stays a few slices.

Boundary conventions (as ITK's): for the erosion, voxels outside the image are background, or foreground
with ``boundary_to_foreground``; for the dilation they are background. The dilation is the complement of
the erosion of the complement (the kernel is symmetric, so its reflection is itself), with the outside of
the complement foreground.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import numpy as np

_BIG = 1 << 30  # run length of a run that starts at a foreground left boundary (beyond any kernel width)
_KERNELS = ("_row_runs", "_erode_block", "_erode")


def _compile_kernels() -> None:
    """Replace the kernels below by numba-compiled versions on first use (see MedSegLib.lazy_numba)."""
    from MedSegLib.lazy_numba import compile_parallel_kernels

    compile_parallel_kernels(globals(), _KERNELS, parallel=("_erode",))


_prange = range


def _row_runs(src, z, y, invert, boundary_fg, out):
    """``out[x]`` = consecutive "foreground" voxels of ``src[z, y]`` ending at ``x`` (the complement when
    ``invert``); a run reaching the left border counts ``_BIG`` more when the outside is foreground.
    Returns whether the row has any foreground voxel."""
    run = _BIG if boundary_fg else 0
    found = False
    for x in range(src.shape[2]):
        if (src[z, y, x] != 0) != invert:
            run += 1
            found = True
        else:
            run = 0
        out[x] = run
    return found


def _erode_block(src, dst, z0, z1, dzs, dys, ws, rz, invert, boundary_fg, ring, filled, acc):
    """Erode slices ``z0 <= z < z1`` of ``src`` (or of its complement) into ``dst`` (its complement);
    ``ring`` holds the run lengths of the ``2 rz + 1`` slices around the current one, ``filled`` whether
    each of their rows has any foreground, ``acc`` is one row of scratch."""
    nz, ny, nx = src.shape
    slots = ring.shape[0]
    next_z = max(0, z0 - rz)  # first slice whose run lengths are not yet in the ring
    rows = dzs.shape[0]
    fill = np.uint8(1 if invert else 0)  # dst value of a voxel that does not survive
    for z in range(z0, z1):
        last = min(nz - 1, z + rz)
        while next_z <= last:
            slot = next_z % slots
            for y in range(ny):
                filled[slot, y] = _row_runs(src, next_z, y, invert, boundary_fg, ring[slot, y])
            next_z += 1
        out = dst[z]
        for y in range(ny):
            alive = filled[z % slots, y]
            if alive:
                for x in range(nx):
                    acc[x] = np.uint8(1) if (src[z, y, x] != 0) != invert else np.uint8(0)
                for r in range(rows):
                    zz = z + dzs[r]
                    yy = y + dys[r]
                    if zz < 0 or zz >= nz or yy < 0 or yy >= ny:
                        if boundary_fg:
                            continue
                        alive = False
                        break
                    slot = zz % slots
                    if not filled[slot, yy]:
                        alive = False
                        break
                    runs = ring[slot, yy]
                    w = ws[r]
                    need = np.int32(2 * w + 1)
                    inside = max(0, nx - w)  # x + w < nx
                    shifted = runs[w:]
                    for x in range(inside):
                        acc[x] &= np.uint8(shifted[x] >= need)
                    for x in range(inside, nx):  # the window passes the right border
                        if boundary_fg:
                            acc[x] &= np.uint8(runs[nx - 1] >= nx - x + w)
                        else:
                            acc[x] = 0
            if alive:
                for x in range(nx):
                    out[y, x] = acc[x] ^ fill
            else:
                for x in range(nx):
                    out[y, x] = fill


def _erode(src, dst, dzs, dys, ws, rz, invert, boundary_fg, block):
    nz, ny, nx = src.shape
    blocks = (nz + block - 1) // block
    for b in _prange(blocks):
        ring = np.empty((2 * rz + 1, ny, nx), dtype=np.int32)
        filled = np.zeros((2 * rz + 1, ny), dtype=np.bool_)
        acc = np.empty(nx, dtype=np.uint8)
        z0 = b * block
        _erode_block(src, dst, z0, min(nz, z0 + block), dzs, dys, ws, rz, invert, boundary_fg, ring, filled, acc)


@functools.lru_cache(maxsize=64)
def kernel_rows(radius_ijk: Tuple[int, int, int], kernel: str = "ball") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's flat structuring element of ``radius_ijk`` (voxels, x y z order) as rows ``(dz, dy)`` with
    half-width ``w``: the dilation of a single voxel by SimpleITK, so the shape is exactly ITK's. The
    rows are ordered centre first (it fails first at most boundaries), then by distance."""
    import SimpleITK as sitk

    rx, ry, rz = (int(r) for r in radius_ijk)
    kernel_type = {"ball": sitk.sitkBall, "box": sitk.sitkBox}[kernel]
    point = np.zeros((2 * rz + 1, 2 * ry + 1, 2 * rx + 1), dtype=np.uint8)
    point[rz, ry, rx] = 1
    footprint = sitk.GetArrayFromImage(
        sitk.BinaryDilate(sitk.GetImageFromArray(point), [rx, ry, rz], kernel_type, 0, 1)
    )
    footprint = footprint.astype(bool)
    if not np.array_equal(footprint, footprint[::-1, ::-1, ::-1]):  # pragma: no cover - ITK's ball and box are
        raise ValueError(f"{kernel} kernel of radius {radius_ijk} is not symmetric")
    rows = []
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            xs = np.flatnonzero(footprint[dz + rz, dy + ry]) - rx
            if xs.size == 0:
                continue
            w = int(xs[-1])
            if xs[0] != -w or xs.size != 2 * w + 1:  # pragma: no cover - convex along x
                raise ValueError(f"{kernel} kernel of radius {radius_ijk} has a row that is not an interval")
            rows.append((dz * dz + dy * dy, dz, dy, w))
    rows.sort()
    dzs = np.array([row[1] for row in rows], dtype=np.int64)
    dys = np.array([row[2] for row in rows], dtype=np.int64)
    ws = np.array([row[3] for row in rows], dtype=np.int64)
    for array in (dzs, dys, ws):
        array.setflags(write=False)
    return dzs, dys, ws


@functools.lru_cache(maxsize=64)
def distance_rows(
    radius_mm: float, spacing_ijk: Tuple[float, float, float]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The offsets whose centre-to-centre distance is at most ``radius_mm`` (a Euclidean ball in mm on
    the voxel grid) as rows ``(dz, dy)`` with half-width ``w``, centre row first.

    Eroding with it removes exactly the voxels that have a background voxel centre within ``radius_mm``,
    and dilating adds exactly those with a foreground voxel centre within it: the Euclidean distance
    rule of a margin, with no distance map (the output mask is the only whole-volume allocation).
    Offsets at exactly the radius are inside (a float32 distance map decides such ties by rounding)."""
    sx, sy, sz = (float(s) for s in spacing_ijk)
    r2 = float(radius_mm) ** 2 * (1.0 + 1e-9)  # an exact tie (e.g. a 3-4-5 triangle) is within the radius
    rows = []
    for dz in range(-int(radius_mm // sz), int(radius_mm // sz) + 1):
        for dy in range(-int(radius_mm // sy), int(radius_mm // sy) + 1):
            left = r2 - (dz * sz) ** 2 - (dy * sy) ** 2
            if left < 0:
                continue
            w = int(np.sqrt(left) // sx)
            while ((w + 1) * sx) ** 2 <= left:  # sqrt rounding: the widest w with (w sx)^2 <= left
                w += 1
            while w > 0 and (w * sx) ** 2 > left:
                w -= 1
            rows.append((dz * dz + dy * dy, dz, dy, w))
    rows.sort()
    result = tuple(np.array([row[i] for row in rows], dtype=np.int64) for i in (1, 2, 3))
    for array in result:
        array.setflags(write=False)
    return result  # type: ignore[return-value]


def _run(mask: np.ndarray, radius_ijk: Sequence[int], kernel: str, invert: bool, boundary_fg: bool) -> np.ndarray:
    radius = tuple(max(0, int(r)) for r in radius_ijk)
    if len(radius) != 3:
        raise ValueError(f"expected 3 radii (i, j, k), got {radius_ijk!r}")
    if not any(radius):
        return _source(mask).copy()
    return _run_rows(mask, kernel_rows(radius, kernel), invert, boundary_fg)


def _source(mask: np.ndarray) -> np.ndarray:
    source = np.ascontiguousarray(mask, dtype=bool)
    if source.ndim != 3:
        raise ValueError(f"expected a 3D mask (k, j, i), got shape {source.shape}")
    return source


def _run_rows(mask: np.ndarray, rows: Tuple[np.ndarray, np.ndarray, np.ndarray], invert: bool, boundary_fg: bool):
    source = _source(mask)
    if source.size == 0:
        return source.copy()
    _compile_kernels()
    dzs, dys, ws = rows
    rz = int(np.abs(dzs).max())
    out = np.empty(source.shape, dtype=np.uint8)
    threads = _threads()
    block = max(1, -(-source.shape[0] // (4 * threads)), 2 * rz + 1)  # halo recomputed per block
    _erode(source.view(np.uint8), out, dzs, dys, ws, rz, invert, boundary_fg, block)
    return out.view(bool)


def erode_distance(mask: np.ndarray, radius_mm: float, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Voxels of ``mask`` with no background voxel centre within ``radius_mm``; outside the image counts
    as foreground (anatomy cut by the scan's edge continues beyond it). See :func:`distance_rows`."""
    rows = distance_rows(float(radius_mm), tuple(float(s) for s in spacing_ijk))
    return _run_rows(mask, rows, False, True)


def dilate_distance(mask: np.ndarray, radius_mm: float, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Voxels with a foreground voxel centre of ``mask`` within ``radius_mm`` (see :func:`distance_rows`)."""
    rows = distance_rows(float(radius_mm), tuple(float(s) for s in spacing_ijk))
    return _run_rows(mask, rows, True, True)


def _threads() -> int:
    try:
        import numba

        return max(1, int(numba.get_num_threads()))
    except ImportError:  # pragma: no cover
        return 1


def binary_erode(
    mask: np.ndarray, radius_ijk: Sequence[int], kernel: str = "ball", boundary_to_foreground: bool = False
) -> np.ndarray:
    """``sitk.BinaryErode(image, radius_ijk, kernel, 0, 1, boundary_to_foreground)`` on a (k, j, i) bool mask."""
    return _run(mask, radius_ijk, kernel, False, bool(boundary_to_foreground))


def binary_dilate(mask: np.ndarray, radius_ijk: Sequence[int], kernel: str = "ball") -> np.ndarray:
    """``sitk.BinaryDilate(image, radius_ijk, kernel, 0, 1)`` on a (k, j, i) bool mask (outside is background)."""
    return _run(mask, radius_ijk, kernel, True, True)
