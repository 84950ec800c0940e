"""Memory-lean watershed: Gaussian gradient magnitude on 15-bit levels, ITK's h-minima markers and flooding.

ITK's pipeline (GradientMagnitudeRecursiveGaussian, then MorphologicalWatershed) peaks at ~10x the int16
input on a 512x512x300 CT: a float copy, the recursive filter's float/double buffers, the h-minima image,
the regional-minima image, a 32-bit marker image and a 32-bit output. Here the whole-volume arrays are the
uint16 gradient levels and one uint16 buffer that is in turn the h-minima image, the regional-minima
flags, the minima mask and the basin labels; queues hold only the flooding front.

- Gradient: the magnitude of the derivatives of a Gaussian of ``sigma_mm`` (scipy's
  ``gaussian_gradient_magnitude`` with ``mode="reflect"``, derivatives per mm), computed a slab of slices at
  a time from the input (FIR kernels: the same numbers as for the whole volume), in two passes (the
  maximum, then the levels) so that only a slab of floats exists at once.
- Levels: rounded to ``0..LEVELS`` with ``LEVELS = 2**15 - 1`` (the top bit of the shared buffer is the
  regional-minima flag), scaled so that ``gradient max + h`` still fits.
- Markers: ITK's MorphologicalWatershed: regional minima (face connectivity) of the h-minima transform
  (reconstruction by erosion of ``levels + h`` over ``levels``), labelled in raster order as ITK's
  ConnectedComponent does.
- Flooding: ITK's MorphologicalWatershedFromMarkers without watershed lines (Beucher's variant: a
  hierarchical queue per level, FIFO within a level, neighbours in ITK's offset order), so the labels are
  ITK's, voxel for voxel, on the same levels (tested).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np

LEVELS = (1 << 15) - 1
_FLAG = 1 << 15
_BLOCK = 64  # queue entries per pooled block (each active level holds one partly filled block)
_KERNELS = (
    "_coordinates",
    "_neighbour",
    "_reflect",
    "_q_new",
    "_q_grow",
    "_q_push",
    "_q_full",
    "_q_pop",
    "_ring_new",
    "_ring_push",
    "_ring_grow",
    "_on_marker_boundary",
    "_marker_boundary",
    "_mark_flooded",
    "_gradient_slices",
    "_flood",
    "_reconstruct_by_erosion",
    "_flag_non_minima",
    "_compact_minima",
)
_prange = range


def _compile_kernels() -> None:
    from MedSegLib.lazy_numba import compile_parallel_kernels

    compile_parallel_kernels(globals(), _KERNELS, parallel=("_gradient_slices",))


# ----------------------------------------------------------------------------------------------------------
# A hierarchical queue (one FIFO per level) of int32 voxel indices in blocks of one growable pool: memory
# follows the number of queued voxels, not the volume. ``state`` = [free blocks, blocks in use].


def _q_new(nlevels, capacity):
    blocks = max(4, capacity // _BLOCK)
    pool = np.empty((blocks, _BLOCK), np.int32)
    links = np.empty(blocks, np.int64)
    free = np.empty(blocks, np.int64)
    head = np.full(nlevels, -1, np.int64)
    tail = np.full(nlevels, -1, np.int64)
    hpos = np.zeros(nlevels, np.int64)
    tpos = np.zeros(nlevels, np.int64)
    state = np.zeros(2, np.int64)
    return pool, links, free, head, tail, hpos, tpos, state


def _q_grow(pool, links, free):
    """A pool with 1.5x the blocks (the only copy the queue ever makes)."""
    old = pool.shape[0]
    new = old + old // 2 + 1
    bigger = np.empty((new, _BLOCK), np.int32)
    bigger[:old] = pool
    more_links = np.empty(new, np.int64)
    more_links[:old] = links
    more_free = np.empty(new, np.int64)
    more_free[:old] = free
    return bigger, more_links, more_free


def _q_push(pool, links, free, head, tail, hpos, tpos, state, level, value):
    """Append ``value`` to the FIFO of ``level`` (the caller grows the pool first when ``_q_full``)."""
    t = tail[level]
    if t < 0 or tpos[level] == _BLOCK:
        if state[0] > 0:
            state[0] -= 1
            b = free[state[0]]
        else:
            b = state[1]
            state[1] += 1
        links[b] = -1
        if t < 0:
            head[level] = b
            hpos[level] = 0
        else:
            links[t] = b
        tail[level] = b
        tpos[level] = 0
        t = b
    pool[t, tpos[level]] = value
    tpos[level] += 1


def _q_full(pool, state):
    """No free block and no unused row left: the next push may need a new block."""
    return state[0] == 0 and state[1] == pool.shape[0]


def _ring_new(n):
    """An empty FIFO (ring, front, queued) for a volume of ``n`` voxels: ring[front], ... wrapping."""
    return np.empty(max(1 << 16, n >> 8), np.int32), 0, 0


def _ring_push(ring, front, queued, value):
    """Append ``value`` to the FIFO ``ring[front:]`` of ``queued`` entries (wrapping); returns the ring and its
    front (a larger ring, front 0, when it was full). The caller counts the entry."""
    if queued == ring.shape[0]:
        ring = _ring_grow(ring, front, queued)
        front = 0
    ring[(front + queued) % ring.shape[0]] = value
    return ring, front


def _ring_grow(ring, front, queued):
    """The FIFO's entries in order in a ring 1.5x larger."""
    bigger = np.empty(ring.shape[0] + ring.shape[0] // 2 + 1, np.int32)
    for i in range(queued):
        bigger[i] = ring[(front + i) % ring.shape[0]]
    return bigger


def _q_pop(pool, links, free, head, tail, hpos, tpos, state, level):
    """The first value of the (non-empty) FIFO of ``level``; an emptied block goes back to the free list."""
    h = head[level]
    value = pool[h, hpos[level]]
    hpos[level] += 1
    if h == tail[level]:
        if hpos[level] == tpos[level]:
            free[state[0]] = h
            state[0] += 1
            head[level] = -1
            tail[level] = -1
    elif hpos[level] == _BLOCK:
        head[level] = links[h]
        hpos[level] = 0
        free[state[0]] = h
        state[0] += 1
    return value


# ----------------------------------------------------------------------------------------------------------
# Gradient magnitude


def _reflect(index, size):
    """scipy's "reflect" boundary: d c b a | a b c d | d c b a."""
    while index < 0 or index >= size:
        index = -index - 1 if index < 0 else 2 * size - index - 1
    return index


def _gradient_slices(src, k0, k1, smooth_z, deriv_z, smooth_y, deriv_y, smooth_x, deriv_x, out):
    """|grad| of slices ``k0 <= k < k1`` of ``src`` (whole volume, any numeric dtype) into ``out[k - k0]``:
    the z-filters first (reading the ``len(kernel) // 2`` slices around each, mirrored at the volume's
    ends), then the in-plane filters. Kernels are correlation weights, derivatives per mm."""
    nz, ny, nx = src.shape
    rz, ry, rx = smooth_z.shape[0] // 2, smooth_y.shape[0] // 2, smooth_x.shape[0] // 2
    for s in _prange(k1 - k0):
        k = k0 + s
        sz = np.zeros((ny, nx), np.float64)  # z-smoothed
        dz = np.zeros((ny, nx), np.float64)  # z-derivative
        for t in range(-rz, rz + 1):
            kk = _reflect(k + t, nz)
            ws, wd = smooth_z[t + rz], deriv_z[t + rz]
            for y in range(ny):
                for x in range(nx):
                    v = float(src[kk, y, x])
                    sz[y, x] += ws * v
                    dz[y, x] += wd * v
        # in-plane: gx = dX sY sz, gy = sX dY sz, gz = sX sY dz; rows padded by reflection for the x-filter
        ysz = np.zeros((ny, nx + 2 * rx), np.float64)
        yds = np.zeros((ny, nx + 2 * rx), np.float64)
        ydz = np.zeros((ny, nx + 2 * rx), np.float64)
        for y in range(ny):
            for t in range(-ry, ry + 1):
                yy = _reflect(y + t, ny)
                ws, wd = smooth_y[t + ry], deriv_y[t + ry]
                for x in range(nx):
                    ysz[y, x + rx] += ws * sz[yy, x]
                    yds[y, x + rx] += wd * sz[yy, x]
                    ydz[y, x + rx] += ws * dz[yy, x]
            for x in range(rx):
                left = _reflect(x - rx, nx) + rx
                right = _reflect(nx + x, nx) + rx
                ysz[y, x], yds[y, x], ydz[y, x] = ysz[y, left], yds[y, left], ydz[y, left]
                ysz[y, nx + rx + x], yds[y, nx + rx + x], ydz[y, nx + rx + x] = (
                    ysz[y, right],
                    yds[y, right],
                    ydz[y, right],
                )
            for x in range(nx):
                gx = 0.0
                gy = 0.0
                gz = 0.0
                for t in range(2 * rx + 1):
                    gx += deriv_x[t] * ysz[y, x + t]
                    gy += smooth_x[t] * yds[y, x + t]
                    gz += smooth_x[t] * ydz[y, x + t]
                out[s, y, x] = np.sqrt(gx * gx + gy * gy + gz * gz)


def _kernels_mm(sigma_mm: float, spacing: float, truncate: float = 4.0) -> Tuple[np.ndarray, np.ndarray]:
    """scipy's Gaussian correlation weights (order 0 and 1, radius ``int(truncate * sigma + 0.5)`` voxels)
    for one axis, the derivative per mm."""
    sigma = float(sigma_mm) / float(spacing)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma**2 * x**2)
    phi /= phi.sum()
    # scipy correlates with the reversed kernel of order 1 (-x / sigma^2 phi): +x / sigma^2 phi, per voxel
    derivative = x / sigma**2 * phi / float(spacing)
    return phi, derivative


SLAB_SLICES = 16  # float slices computed at once (and the parallel width)


def gradient_levels(
    array: np.ndarray, spacing_ijk: Sequence[float], sigma_mm: float, level: float = 0.0
) -> Tuple[np.ndarray, float]:
    """(uint16 levels of the gradient magnitude, levels per gradient unit). The scale puts the gradient's
    maximum plus ``level`` at ``LEVELS``, so ``levels + round(level * scale)`` fits in 15 bits.

    Two passes of slabs (the maximum, then the levels), so only ``SLAB_SLICES`` float slices exist at once."""
    _compile_kernels()
    sx, sy, sz = (float(s) for s in spacing_ijk)
    kernels = (*_kernels_mm(sigma_mm, sz), *_kernels_mm(sigma_mm, sy), *_kernels_mm(sigma_mm, sx))
    depth = array.shape[0]
    buffer = np.empty((min(SLAB_SLICES, depth), *array.shape[1:]), dtype=np.float32)
    top = 0.0
    for k0 in range(0, depth, SLAB_SLICES):
        k1 = min(depth, k0 + SLAB_SLICES)
        _gradient_slices(array, k0, k1, *kernels, buffer)
        top = max(top, float(buffer[: k1 - k0].max()))
    scale = LEVELS / (top + float(level)) if top + float(level) > 0 else 1.0
    levels = np.empty(array.shape, dtype=np.uint16)
    for k0 in range(0, depth, SLAB_SLICES):
        k1 = min(depth, k0 + SLAB_SLICES)
        _gradient_slices(array, k0, k1, *kernels, buffer)
        part = buffer[: k1 - k0]
        np.multiply(part, scale, out=part)
        np.add(part, 0.5, out=part)
        np.minimum(part, LEVELS, out=part)
        levels[k0:k1] = part  # truncation of x * scale + 0.5: rounding
    return levels, scale


# ----------------------------------------------------------------------------------------------------------
# Flooding, h-minima, regional minima


def _coordinates(p, nx, plane):
    """(z, y, x) of flat index ``p``."""
    z = p // plane
    r = p - z * plane
    y = r // nx
    return z, y, r - y * nx


def _neighbour(p, z, y, x, nz, ny, nx, plane, which):
    """Index of neighbour ``which`` (ITK's face offsets in order: z-1, y-1, x-1, x+1, y+1, z+1) or -1."""
    if which == 0:
        return p - plane if z > 0 else -1
    if which == 1:
        return p - nx if y > 0 else -1
    if which == 2:
        return p - 1 if x > 0 else -1
    if which == 3:
        return p + 1 if x < nx - 1 else -1
    if which == 4:
        return p + nx if y < ny - 1 else -1
    return p + plane if z < nz - 1 else -1


def _on_marker_boundary(markers, p, nz, ny, nx, plane):
    """Whether marked voxel ``p`` has an unmarked face neighbour."""
    z, y, x = _coordinates(p, nx, plane)
    for which in range(6):
        q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
        if q >= 0 and markers[q] == 0:
            return True
    return False


def _marker_boundary(markers, nz, ny, nx):
    """Flat indices (raster order) of the marker voxels with an unmarked face neighbour: where ITK's
    flooding starts. Counted first, so the result is the only allocation."""
    plane = ny * nx
    n = nz * plane
    count = 0
    for p in range(n):
        if markers[p] != 0 and _on_marker_boundary(markers, p, nz, ny, nx, plane):
            count += 1
    found = np.empty(count, np.int32)
    count = 0
    for p in range(n):
        if markers[p] != 0 and _on_marker_boundary(markers, p, nz, ny, nx, plane):
            found[count] = p
            count += 1
    return found


def _mark_flooded(levels, markers):
    """``levels[p] = _FLAG | markers[p]`` where marked (a flooded voxel's level is never read again)."""
    for p in range(levels.shape[0]):
        if markers[p] != 0:
            levels[p] = _FLAG | markers[p]


def _flood(levels, starts, start_levels, nz, ny, nx, nlevels):
    """ITK MorphologicalWatershedFromMarkers (no watershed line, face connectivity, Beucher's variant), in
    place on the flat ``levels`` whose marker voxels already hold ``_FLAG | label``: ``starts`` are the
    marker boundary voxels in raster order with their original ``start_levels`` (ITK queues them so)."""
    plane = ny * nx
    pool, links, free, head, tail, hpos, tpos, state = _q_new(nlevels, max(1 << 16, starts.shape[0] * 2))
    for index in range(starts.shape[0]):
        if _q_full(pool, state):
            pool, links, free = _q_grow(pool, links, free)
        _q_push(pool, links, free, head, tail, hpos, tpos, state, start_levels[index], starts[index])
    for level in range(nlevels):
        while head[level] >= 0:
            p = _q_pop(pool, links, free, head, tail, hpos, tpos, state, level)
            marker = levels[p]
            z, y, x = _coordinates(p, nx, plane)
            for which in range(6):
                q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
                if q >= 0:
                    v = levels[q]
                    if v < _FLAG:
                        levels[q] = marker
                        if _q_full(pool, state):
                            pool, links, free = _q_grow(pool, links, free)
                        _q_push(pool, links, free, head, tail, hpos, tpos, state, level if v <= level else v, q)


def _reconstruct_by_erosion(marker, mask, nz, ny, nx):
    """In place on the flat ``marker`` (>= ``mask``): its geodesic reconstruction by erosion over ``mask``
    (Vincent's hybrid algorithm: a forward and a backward raster scan, then a FIFO for what is left)."""
    plane = ny * nx
    n = nz * plane
    ring, front, queued = _ring_new(n)
    for p in range(n):
        z, y, x = _coordinates(p, nx, plane)
        v = marker[p]
        for which in range(3):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and marker[q] < v:
                v = marker[q]
        marker[p] = v if v > mask[p] else mask[p]
    for p in range(n - 1, -1, -1):
        z, y, x = _coordinates(p, nx, plane)
        v = marker[p]
        for which in range(3, 6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and marker[q] < v:
                v = marker[q]
        if v < mask[p]:
            v = mask[p]
        marker[p] = v
        for which in range(3, 6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and marker[q] > v and marker[q] > mask[q]:
                ring, front = _ring_push(ring, front, queued, p)
                queued += 1
                break
    while queued > 0:
        p = ring[front]
        front = front + 1 if front + 1 < ring.shape[0] else 0
        queued -= 1
        z, y, x = _coordinates(p, nx, plane)
        v = marker[p]
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and marker[q] > v and marker[q] != mask[q]:
                marker[q] = v if v > mask[q] else mask[q]
                ring, front = _ring_push(ring, front, queued, q)
                queued += 1


def _flag_non_minima(values, nz, ny, nx):
    """Set the top bit of every voxel of the flat 15-bit ``values`` that is not in a regional minimum
    (face connectivity; a flat zone with a lower neighbour anywhere is no minimum; a flat image is one)."""
    plane = ny * nx
    n = nz * plane
    ring, front, queued = _ring_new(n)
    for p in range(n):
        z, y, x = _coordinates(p, nx, plane)
        v = values[p] & 0x7FFF
        lower = False
        equal = False
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0:
                w = values[q] & 0x7FFF
                if w < v:
                    lower = True
                elif w == v:
                    equal = True
        if lower:
            values[p] |= 0x8000
            if equal:  # the flag spreads through its flat zone
                ring, front = _ring_push(ring, front, queued, p)
                queued += 1
    while queued > 0:
        p = ring[front]
        front = front + 1 if front + 1 < ring.shape[0] else 0
        queued -= 1
        z, y, x = _coordinates(p, nx, plane)
        v = values[p] & 0x7FFF
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and values[q] == v:  # same level, not yet flagged
                values[q] |= 0x8000
                ring, front = _ring_push(ring, front, queued, q)
                queued += 1


def _compact_minima(values, as_bytes):
    """In place: byte ``p`` of the buffer = 1 where ``values[p]`` (uint16, the same memory) is unflagged.
    Byte ``p`` lies at or before the first byte of element ``p``: nothing is overwritten before it is read."""
    for p in range(values.shape[0]):
        as_bytes[p] = 1 if values[p] < 0x8000 else 0


def morphological_markers(levels: np.ndarray, h: int) -> Tuple[np.ndarray, int]:
    """(uint16 labels, count): ITK's MorphologicalWatershed markers - the regional minima of the h-minima
    transform of ``levels`` (15-bit uint16, ``levels + h`` within 15 bits), face-connected components
    numbered as ITK's ConnectedComponent. One uint16 buffer is in turn the h-minima image, the flags, the
    minima mask and the labels. Raises ``OverflowError`` beyond 32767 minima (the flooding's label range)."""
    from MedSegLib.segmentation.run_components import run_components

    _compile_kernels()
    nz, ny, nx = levels.shape
    flat_levels = levels.reshape(-1)
    buffer = np.empty(levels.shape, dtype=np.uint16)
    flat = buffer.reshape(-1)
    if h > 0:
        np.add(flat_levels, np.uint16(h), out=flat)
        _reconstruct_by_erosion(flat, flat_levels, nz, ny, nx)
    else:
        flat[:] = flat_levels
    _flag_non_minima(flat, nz, ny, nx)
    as_bytes = flat.view(np.uint8)
    _compact_minima(flat, as_bytes)
    # Components from the runs of the minima mask (few: minima are flat zones), then the labels overwrite
    # the buffer slab by slab - the runs no longer need the mask.
    components = run_components(as_bytes[: flat.size].view(bool).reshape(levels.shape))
    count = components.count
    if count >= _FLAG:
        raise OverflowError(f"{count} regional minima: more than the 32767 labels the flooding holds")
    step = max(1, (1 << 20) // max(1, ny * nx))  # int32 label slabs of ~4 MiB
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        buffer[k0:k1] = components.label_slices(k0, k1)
    return buffer, count


def flood(levels: np.ndarray, markers: Union[np.ndarray, List[np.ndarray]]) -> np.ndarray:
    """Flood ``markers`` (labels 1..32767, 0 = none) over ``levels`` (15-bit uint16): the labels are written
    into ``levels``, which is returned (uint16 labels). Pass ``[markers]`` (the only reference, taken out
    of the list here) to free the markers once the start voxels are listed: the flooding itself needs only
    ``levels`` and its queue."""
    _compile_kernels()
    if isinstance(markers, list):
        marker_array = markers.pop()
    else:
        marker_array = markers
    if int(marker_array.max(initial=0)) >= _FLAG:
        raise OverflowError("marker labels must be below 32768")
    nz, ny, nx = levels.shape
    flat = levels.reshape(-1)
    nlevels = int(flat.max(initial=0)) + 1
    starts = _marker_boundary(marker_array.reshape(-1), nz, ny, nx)
    start_levels = flat[starts]
    _mark_flooded(flat, marker_array.reshape(-1))
    del marker_array, markers
    _flood(flat, starts, start_levels, nz, ny, nx, nlevels)
    np.bitwise_and(flat, np.uint16(_FLAG - 1), out=flat)
    return levels
