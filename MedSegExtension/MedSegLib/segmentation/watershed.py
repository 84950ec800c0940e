"""Memory-lean watershed: Gaussian gradient magnitude on 15-bit levels, ITK's h-minima markers and flooding.

ITK's pipeline (GradientMagnitudeRecursiveGaussian, then MorphologicalWatershed) peaks at ~20x the int16
input on a 512x512x300 CT: a float copy, the recursive filter's float/double buffers, the h-minima image,
the regional-minima image, a 32-bit marker image and a 32-bit output. Here the only whole-volume arrays
are the uint16 gradient levels (which end up holding the basin labels) and, while the markers are found,
one byte per voxel: the h-minima transform's difference to the levels, then the minima mask. Markers are
kept as runs and queues hold only the flooding front (~1.5x the input at the peak).

- Gradient: the magnitude of the derivatives of a Gaussian of ``sigma_mm`` (scipy's
  ``gaussian_gradient_magnitude`` with ``mode="reflect"``, derivatives per mm), computed a slab of slices at
  a time from the input (FIR kernels: the same numbers as for the whole volume), in two passes (the
  maximum, then the levels) so that only a slab of floats exists at once.
- Levels: rounded to ``0..LEVELS`` with ``LEVELS = 2**15 - 1`` (the top bit is a flag: regional minima,
  then flooded), scaled so that ``gradient max + h`` still fits and ``h`` is at most ``255 * BYTE_ROUNDS``.
- Markers: ITK's MorphologicalWatershed: regional minima (face connectivity) of the h-minima transform
  (reconstruction by erosion of ``levels + h`` over ``levels``, computed in the levels' own memory in
  rounds of at most 255 with a byte of rise per voxel), numbered in raster order as ITK's
  ConnectedComponent does. The levels are then computed again from the input for the flooding.
- Flooding: ITK's MorphologicalWatershedFromMarkers without watershed lines (Beucher's variant: a
  hierarchical queue per level, FIFO within a level, neighbours in ITK's offset order), so the labels are
  ITK's, voxel for voxel, on the same levels (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from MedSegLib.segmentation.run_components import RunComponents

LEVELS = (1 << 15) - 1
BYTE_ROUNDS = 4  # h-minima in rounds of <= 255 levels (a byte per voxel) up to this many, else one 16-bit round
_FLAG = 1 << 15
_MARKER_SLAB_VOXELS = 1 << 20  # int32 marker labels painted at once (4 MiB)
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
    "_ring_pop",
    "_ring_grow",
    "_queue_marker_slices",
    "_gradient_slices",
    "_flood",
    "_reconstruct_by_erosion",
    "_flag_non_minima",
    "_minima_bytes",
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


def _ring_pop(ring, front):
    """(first entry, new front) of the non-empty FIFO at ``ring[front]``; the caller uncounts the entry."""
    return ring[front], front + 1 if front + 1 < ring.shape[0] else 0


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


def _axis_kernels(spacing_ijk: Sequence[float], sigma_mm: float) -> Tuple[np.ndarray, ...]:
    """(smooth, derivative) kernel pairs for z, y, x: the kernel arguments of :func:`_gradient_slices`."""
    sx, sy, sz = (float(s) for s in spacing_ijk)
    return (*_kernels_mm(sigma_mm, sz), *_kernels_mm(sigma_mm, sy), *_kernels_mm(sigma_mm, sx))


def _slab_buffer(array: np.ndarray) -> np.ndarray:
    """The float32 slab that :func:`_gradient_slices` writes: ``SLAB_SLICES`` slices of ``array``."""
    return np.empty((min(SLAB_SLICES, array.shape[0]), *array.shape[1:]), dtype=np.float32)


def gradient_levels(
    array: np.ndarray, spacing_ijk: Sequence[float], sigma_mm: float, level: float = 0.0
) -> Tuple[np.ndarray, float]:
    """(uint16 levels of the gradient magnitude, levels per gradient unit). The scale puts the gradient's
    maximum plus ``level`` at ``LEVELS`` (so ``levels + int(level * scale)`` fits in 15 bits), or ``level`` at
    ``255 * BYTE_ROUNDS`` levels if that is coarser (so the h-minima transform takes at most
    ``BYTE_ROUNDS`` rounds of a byte per voxel; the basins of the float gradient are kept, tested).

    Two passes of slabs (the maximum, then the levels), so only ``SLAB_SLICES`` float slices exist at once."""
    _compile_kernels()
    kernels = _axis_kernels(spacing_ijk, sigma_mm)
    depth = array.shape[0]
    buffer = _slab_buffer(array)
    top = 0.0
    for k0 in range(0, depth, SLAB_SLICES):
        k1 = min(depth, k0 + SLAB_SLICES)
        _gradient_slices(array, k0, k1, *kernels, buffer)
        top = max(top, float(buffer[: k1 - k0].max()))
    scale = LEVELS / (top + float(level)) if top + float(level) > 0 else 1.0
    if level > 0:  # h within BYTE_ROUNDS byte rounds: steps of level / 1020 still kept apart
        scale = min(scale, 255 * BYTE_ROUNDS / float(level))
    levels = np.empty(array.shape, dtype=np.uint16)
    fill_gradient_levels(array, spacing_ijk, sigma_mm, scale, levels, buffer)
    return levels, scale


def fill_gradient_levels(
    array: np.ndarray,
    spacing_ijk: Sequence[float],
    sigma_mm: float,
    scale: float,
    levels: np.ndarray,
    buffer: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``levels`` (uint16, the shape of ``array``) = the gradient magnitude x ``scale``, rounded, at most
    ``LEVELS``: the second pass of :func:`gradient_levels`, also how the levels are made again after the
    h-minima transform has used their memory."""
    _compile_kernels()
    kernels = _axis_kernels(spacing_ijk, sigma_mm)
    depth = array.shape[0]
    buffer = _slab_buffer(array) if buffer is None else buffer
    for k0 in range(0, depth, SLAB_SLICES):
        k1 = min(depth, k0 + SLAB_SLICES)
        _gradient_slices(array, k0, k1, *kernels, buffer)
        part = buffer[: k1 - k0]
        np.multiply(part, scale, out=part)
        np.add(part, 0.5, out=part)
        np.minimum(part, LEVELS, out=part)
        levels[k0:k1] = part  # truncation of x * scale + 0.5: rounding
    return levels


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


def _queue_marker_slices(levels, labels, first, k0, k1, nz, ny, nx, queue):
    """Slices ``k0 <= k < k1`` of the marker image ``labels`` (which holds slices ``first ..`` with a face
    neighbour's slice on each side where the volume has one): each marker voxel with an unmarked face
    neighbour is queued at its level (raster order: where ITK's flooding starts), then every marker voxel
    becomes ``_FLAG | label`` in ``levels`` (a flooded voxel's level is never read again). Returns the
    queue (its pool may have grown)."""
    pool, links, free, head, tail, hpos, tpos, state = queue
    plane = ny * nx
    flat = labels.reshape(-1)
    offset = first * plane
    for p in range(k0 * plane, k1 * plane):
        label = flat[p - offset]
        if label == 0:
            continue
        z, y, x = _coordinates(p, nx, plane)
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and flat[q - offset] == 0:
                if _q_full(pool, state):
                    pool, links, free = _q_grow(pool, links, free)
                _q_push(pool, links, free, head, tail, hpos, tpos, state, levels[p], p)
                break
        levels[p] = _FLAG | label
    return pool, links, free, head, tail, hpos, tpos, state


def _flood(levels, queue, nz, ny, nx, nlevels):
    """ITK MorphologicalWatershedFromMarkers (no watershed line, face connectivity, Beucher's variant), in
    place on the flat ``levels`` whose marker voxels already hold ``_FLAG | label``, from the ``queue`` of
    marker boundary voxels (:func:`_queue_marker_slices`)."""
    pool, links, free, head, tail, hpos, tpos, state = queue
    plane = ny * nx
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


def _reconstruct_by_erosion(rise, levels, nz, ny, nx):
    """In place on the flat ``rise`` (uint8 or uint16, ``h`` everywhere on entry): ``levels + rise``
    becomes the geodesic reconstruction by erosion of ``levels + h`` over ``levels`` (Vincent's hybrid
    algorithm: a forward and a backward raster scan, then a FIFO for what is left). Only the rise above
    ``levels`` is stored: it stays in ``0..h``."""
    plane = ny * nx
    n = nz * plane
    ring, front, queued = _ring_new(n)
    for p in range(n):
        z, y, x = _coordinates(p, nx, plane)
        v = np.int64(levels[p]) + rise[p]
        for which in range(3):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0:
                w = np.int64(levels[q]) + rise[q]
                if w < v:
                    v = w
        rise[p] = v - levels[p] if v > levels[p] else 0
    for p in range(n - 1, -1, -1):
        z, y, x = _coordinates(p, nx, plane)
        v = np.int64(levels[p]) + rise[p]
        for which in range(3, 6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0:
                w = np.int64(levels[q]) + rise[q]
                if w < v:
                    v = w
        if v < levels[p]:
            v = levels[p]
        rise[p] = v - levels[p]
        for which in range(3, 6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and rise[q] > 0 and np.int64(levels[q]) + rise[q] > v:
                ring, front = _ring_push(ring, front, queued, p)
                queued += 1
                break
    while queued > 0:
        p, front = _ring_pop(ring, front)
        queued -= 1
        z, y, x = _coordinates(p, nx, plane)
        v = np.int64(levels[p]) + rise[p]
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and rise[q] > 0 and np.int64(levels[q]) + rise[q] > v:
                rise[q] = v - levels[q] if v > levels[q] else 0
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
        p, front = _ring_pop(ring, front)
        queued -= 1
        z, y, x = _coordinates(p, nx, plane)
        v = values[p] & 0x7FFF
        for which in range(6):
            q = _neighbour(p, z, y, x, nz, ny, nx, plane, which)
            if q >= 0 and values[q] == v:  # same level, not yet flagged
                values[q] |= 0x8000
                ring, front = _ring_push(ring, front, queued, q)
                queued += 1


def _minima_bytes(values, as_bytes):
    """``as_bytes[p] = 1`` where ``values[p]`` is unflagged (a regional-minimum voxel), else 0."""
    for p in range(values.shape[0]):
        as_bytes[p] = 1 if values[p] < 0x8000 else 0


def h_minima(levels: np.ndarray, h: int) -> np.ndarray:
    """In place: ``levels`` (15-bit uint16, ``levels + h`` within 15 bits) becomes ITK's h-minima transform
    of itself (reconstruction by erosion of ``levels + h`` over ``levels``). Returns the scratch array
    beside it (uint8 unless ``h`` needs more than ``BYTE_ROUNDS`` rounds), for the caller to reuse.

    Only the rise above ``levels`` is stored, in rounds of at most 255: the h-minima transform of the
    h1-minima transform is the (h1 + h2)-minima transform (each lake is filled h1 more, up to its spill
    level; tested against ITK), so a byte per voxel carries any ``h`` in a few rounds."""
    _compile_kernels()
    nz, ny, nx = levels.shape
    flat_levels = levels.reshape(-1)
    h = max(0, int(h))
    rise_type = np.uint8 if h <= 255 * BYTE_ROUNDS else np.uint16
    rise = np.empty(levels.shape, dtype=rise_type)
    flat = rise.reshape(-1)
    remaining = h
    while remaining > 0:
        step = min(remaining, int(np.iinfo(rise_type).max))
        flat.fill(step)
        _reconstruct_by_erosion(flat, flat_levels, nz, ny, nx)
        np.add(flat_levels, flat, out=flat_levels)
        remaining -= step
    return rise


def morphological_markers(levels: np.ndarray, h: int) -> RunComponents:
    """ITK's MorphologicalWatershed markers - the regional minima of the h-minima transform of ``levels``
    (15-bit uint16, ``levels + h`` within 15 bits) - as face-connected components numbered as ITK's
    ConnectedComponent (:class:`run_components.RunComponents`: runs, not a label image).

    ``levels`` is overwritten by the h-minima transform (with ``h = 0`` it keeps its values): flood the
    markers over the levels made again (:func:`fill_gradient_levels`) or over a copy. The only other
    whole-volume array is one byte per voxel (:func:`h_minima`'s rise, then the minima mask). Raises
    ``OverflowError`` beyond 32767 minima (the flooding's label range)."""
    from MedSegLib.segmentation.run_components import run_components

    _compile_kernels()
    nz, ny, nx = levels.shape
    flat_levels = levels.reshape(-1)
    scratch = h_minima(levels, h)
    _flag_non_minima(flat_levels, nz, ny, nx)
    as_bytes = scratch.reshape(-1).view(np.uint8)[: flat_levels.size]  # reads ``levels`` only
    _minima_bytes(flat_levels, as_bytes)
    np.bitwise_and(flat_levels, np.uint16(_FLAG - 1), out=flat_levels)
    components = run_components(as_bytes.view(bool).reshape(levels.shape))
    del scratch, as_bytes
    if components.count >= _FLAG:
        raise OverflowError(f"{components.count} regional minima: more than the 32767 labels the flooding holds")
    return components


def flood(levels: np.ndarray, markers: Union[np.ndarray, RunComponents, List[Any]]) -> np.ndarray:
    """Flood ``markers`` (labels 1..32767, 0 = none) over ``levels`` (15-bit uint16): the labels are written
    into ``levels``, which is returned (uint16 labels). ``markers`` is a label image or the components of
    :func:`morphological_markers` (their labels are painted a slab at a time, never as a whole image).
    Pass ``[markers]`` (the only reference, taken out of the list here) to free the markers once their
    boundary is queued: the flooding itself needs only ``levels`` and its queue."""
    from MedSegLib.segmentation.run_components import RunComponents

    _compile_kernels()
    marker_source = markers.pop() if isinstance(markers, list) else markers
    nz, ny, nx = levels.shape
    flat = levels.reshape(-1)
    nlevels = int(flat.max(initial=0)) + 1
    queue = _q_new(nlevels, 1 << 16)
    if isinstance(marker_source, RunComponents):
        if marker_source.count >= _FLAG:
            raise OverflowError("marker labels must be below 32768")
        step = max(1, _MARKER_SLAB_VOXELS // max(1, ny * nx))
        for k0 in range(0, nz, step):
            k1 = min(nz, k0 + step)
            first = max(0, k0 - 1)
            slab = marker_source.label_slices(first, k1 + 1)
            queue = _queue_marker_slices(flat, slab, first, k0, k1, nz, ny, nx, queue)
    else:
        if int(marker_source.max(initial=0)) >= _FLAG:
            raise OverflowError("marker labels must be below 32768")
        queue = _queue_marker_slices(flat, np.ascontiguousarray(marker_source), 0, 0, nz, nz, ny, nx, queue)
    del marker_source, markers
    _flood(flat, queue, nz, ny, nx, nlevels)
    np.bitwise_and(flat, np.uint16(_FLAG - 1), out=flat)
    return levels
