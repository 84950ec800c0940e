"""Grow from seeds: several labelled seed segments compete for every voxel (GrowCut-like).

slicer-core does not wrap ``vtkITKGrowCut``, so this is MedSeg's own implementation of the same idea
(FastGrowCut, Zhu et al. 2014): each voxel takes the label of the seed with the cheapest path to it,
where a step costs the intensity difference plus ``locality`` x step length in mm. It is a multi-source
Dijkstra on the 6-neighbour grid, compiled with numba. Equal-cost paths go to the smaller label, so the
labels do not depend on the order voxels are processed in: the result is the unique fixed point
``label(v) = min label(u) over neighbours u with d(u) + w(u, v) == d(v)`` (float32 arithmetic).

Layout, chosen for speed (an update re-visits ~10^6 voxels; each costs a few cache misses, not a
division or a branch more than needed):

- The state lives on the volume padded by one voxel. A padded (or masked-out) voxel has distance
  ``-inf``: no candidate is smaller or equal, so it is never entered and needs no bounds check; the
  6 neighbours are ``index +- 1, +- row, +- slice`` on the flat index.
- Distance and intensity (both float32) sit side by side in one (voxels, 2) array, so reading a
  neighbour costs one cache line; labels are a separate uint16 array (read on ties, written on
  relaxation).
- The priority queue is a 4-ary heap of uint64 entries (float32 key bits above the voxel index), with
  lazy insertion instead of decrease-key: a voxel whose distance drops is pushed again and a popped
  entry whose key is above the voxel's current distance is stale and skipped. No position map is kept,
  so a sift touches only the heap (the wavefront), never a full-volume array.
- All of it (heap included) is allocated once and kept in the :class:`GrowFromSeeds` object.

Why a class: the Segment Editor re-runs the effect whenever seeds are edited. :class:`GrowFromSeeds`
keeps the distance and label maps, and :meth:`GrowFromSeeds.update` only re-propagates what changed:
added seeds relax outward from themselves (exact, because a shortest-path forest only shrinks where a
cheaper source appears); removed seeds invalidate their own label's region, which is refilled from its
valid border. Both give exactly the labels of a fresh run with the new seeds (tested voxel for voxel).
An update costs one compiled pass over the seed map (the changed voxels and the labels present) plus
the Dijkstra over the voxels whose distance changes; removing a seed adds two passes over the volume.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask
from MedSegLib.segmentation.params import SEEDS_LABELLED, Method, Param

_KERNELS = ("_heap_push", "_entry", "_propagate", "_push_sources", "_invalidate", "_diff_seeds")
_compiled = False


def _compile_kernels() -> None:
    """Replace the kernels below by numba-compiled versions on first use (importing numba costs ~1 s,
    which ``medseg --help`` should not pay). Callers are compiled lazily too, at their first call, by
    which time the module globals they use are already the compiled dispatchers."""
    global _compiled
    if _compiled:
        return
    try:
        import numba
    except ImportError:  # pragma: no cover - declared dependency; pure Python still works, slowly
        _compiled = True
        return
    namespace = globals()
    for name in _KERNELS:
        namespace[name] = numba.njit(cache=True, nogil=True)(namespace[name])
    _compiled = True


def _heap_push(heap, size, entry):
    """Insert ``entry`` into the 4-ary min-heap ``heap[:size]``; returns (heap, size), doubled when full."""
    if size == heap.shape[0]:
        grown = np.empty(2 * size, dtype=heap.dtype)
        grown[:size] = heap
        heap = grown
    position = size
    while position > 0:
        parent = (position - 1) >> 2
        if heap[parent] <= entry:
            break
        heap[position] = heap[parent]
        position = parent
    heap[position] = entry
    return heap, size + 1


def _propagate(state, labels, heap, size, offsets, steps):
    """Dijkstra from the heap's content (lazy insertion, see the module docstring); returns
    (voxels processed, heap). ``state[v] = (distance, intensity)`` and ``labels`` are flat padded arrays.

    A heap entry is one uint64: the float32 bits of the key (non-negative floats order like their bits)
    above the voxel index, so a comparison is one integer compare and a level of the 4-ary heap is one
    load per child (4 children = 32 contiguous bytes). The heap operations are written out here, not
    called, so the loop keeps its state in registers."""
    scratch = np.empty(1, dtype=np.float32)
    bits = scratch.view(np.uint32)
    low = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    visited = 0
    while size > 0:
        top = heap[0]
        # pop: the last entry sifts down from the root
        size -= 1
        if size > 0:
            last = heap[size]
            position = 0
            while True:
                child = 4 * position + 1
                if child >= size:
                    break
                best = child
                best_entry = heap[child]
                end = min(child + 4, size)
                for other in range(child + 1, end):
                    if heap[other] < best_entry:
                        best = other
                        best_entry = heap[other]
                if best_entry >= last:
                    break
                heap[position] = best_entry
                position = best
            heap[position] = last
        index = np.int64(top & low)
        d = state[index, 0]
        scratch[0] = d
        if (top >> shift) > np.uint64(bits[0]):
            continue  # stale: the voxel was reached more cheaply after this entry was queued
        visited += 1
        value = state[index, 1]
        label = labels[index]
        for direction in range(6):
            neighbour = index + offsets[direction]
            current = state[neighbour, 0]
            if current == -np.inf:
                continue  # padding or outside the mask
            difference = state[neighbour, 1] - value
            if difference < 0:
                difference = -difference
            candidate = np.float32(d + difference + steps[direction])
            # Equal-cost paths go to the smaller label (and that label is propagated on), so the labels do
            # not depend on the processing order: an incremental update equals a fresh run exactly.
            if candidate < current or (candidate == current and label < labels[neighbour]):
                state[neighbour, 0] = candidate
                labels[neighbour] = label
                scratch[0] = candidate
                entry = (np.uint64(bits[0]) << shift) | np.uint64(neighbour)
                heap, size = _heap_push(heap, size, entry)
    return visited, heap


def _entry(key, index, scratch, bits):
    scratch[0] = key
    return (np.uint64(bits[0]) << np.uint64(32)) | np.uint64(index)


def _push_sources(sources, source_labels, state, labels, heap, size):
    """Seeds at distance 0 (a padded/masked-out voxel, distance -inf, is not a source)."""
    for n in range(sources.shape[0]):
        index = sources[n]
        if state[index, 0] == -np.inf:
            continue
        state[index, 0] = 0.0
        labels[index] = source_labels[n]
        heap, size = _heap_push(heap, size, np.uint64(index))  # key 0.0 has all-zero bits
    return heap, size


def _invalidate(state, labels, removed, offsets, heap, size):
    """Forget every voxel of the removed labels and queue their reached neighbours (refilled from there)."""
    scratch = np.empty(1, dtype=np.float32)
    bits = scratch.view(np.uint32)
    total = labels.shape[0]
    for index in range(total):
        if labels[index] != 0 and removed[labels[index]]:
            labels[index] = 0
            state[index, 0] = np.inf
    for index in range(total):
        if state[index, 0] != np.inf:
            continue  # reached, padding or outside the mask
        for direction in range(6):
            neighbour = index + offsets[direction]
            if labels[neighbour] != 0:
                heap, size = _heap_push(heap, size, _entry(state[neighbour, 0], neighbour, scratch, bits))
    return heap, size


def _diff_seeds(new, old, present, changed, previous):
    """One pass over the seed map: marks the labels present, records the voxels whose seed changed (and
    their previous value) and copies the new seeds into ``old``; returns (count, changed, previous)."""
    count = 0
    for index in range(new.shape[0]):
        value = new[index]
        if value != 0:
            present[value] = True
        if value != old[index]:
            if count == changed.shape[0]:
                grown = np.empty(2 * count, dtype=changed.dtype)
                grown[:count] = changed
                changed = grown
                grown_previous = np.empty(2 * count, dtype=previous.dtype)
                grown_previous[:count] = previous
                previous = grown_previous
            changed[count] = index
            previous[count] = old[index]
            old[index] = value
            count += 1
    return count, changed, previous


class GrowFromSeeds:
    """Competitive region growing with incremental updates (see module docstring)."""

    def __init__(
        self,
        array: np.ndarray,
        spacing_ijk: Sequence[float] = (1.0, 1.0, 1.0),
        locality: float = 0.0,
        mask: Optional[np.ndarray] = None,
    ) -> None:
        if array.ndim != 3:
            raise ValueError("grow from seeds needs a 3D volume")
        _compile_kernels()
        self.image = np.ascontiguousarray(array) if array.dtype in (np.int16, np.float32) else array.astype(np.float32)
        self.shape = self.image.shape
        padded_shape = tuple(n + 2 for n in self.shape)
        if int(np.prod(padded_shape)) >= 2**31:
            raise UserInputError(f"grow from seeds: volume {self.shape} is too large (2^31 voxels at most)")
        self._padded_shape = padded_shape
        nk, nj, ni = padded_shape
        self._offsets = np.array([-1, 1, -ni, ni, -nj * ni, nj * ni], dtype=np.int32)
        # A tiny length term breaks ties between equal-intensity paths in favour of the nearer seed.
        epsilon = 1e-3
        step = [max(locality, epsilon) * float(s) for s in spacing_ijk]
        self._steps = np.array([step[0], step[0], step[1], step[1], step[2], step[2]], dtype=np.float32)
        self.step_cost = np.asarray(step, dtype=np.float32)
        # state[v] = (distance, intensity) side by side: a neighbour costs one cache line, not two.
        # The distance of an empty run: +inf inside (the mask), -inf on the padding and outside the mask.
        self._state = np.empty((int(np.prod(padded_shape)), 2), dtype=np.float32)
        state = self._state.reshape(padded_shape + (2,))
        state[..., 1] = 0.0
        state[1:-1, 1:-1, 1:-1, 1] = self.image
        empty = np.full(padded_shape, -np.inf, dtype=np.float32)
        if mask is None:
            empty[1:-1, 1:-1, 1:-1] = np.inf
        else:
            empty[1:-1, 1:-1, 1:-1][np.asarray(mask, dtype=bool)] = np.inf
        self._empty_distance = empty.ravel()
        self._state[:, 0] = self._empty_distance
        self._labels = np.zeros(self._state.shape[0], dtype=np.uint16)
        self.seeds = np.zeros(self.image.size, dtype=np.uint16)
        self.last_visited = 0
        self._heap = np.empty(4096, dtype=np.uint64)
        self._changed = np.empty(4096, dtype=np.int64)
        self._previous = np.empty(4096, dtype=np.uint16)

    @property
    def labels(self) -> np.ndarray:
        """The current label map [k, j, i] (a view of the kept state: copy it to keep it across updates)."""
        return self._labels.reshape(self._padded_shape)[1:-1, 1:-1, 1:-1]

    def _flat_seeds(self, seeds: np.ndarray) -> np.ndarray:
        seeds = np.asarray(seeds)
        if seeds.shape != self.shape:
            raise UserInputError(f"seed label map shape {seeds.shape} differs from the volume {self.shape}")
        if seeds.dtype != np.uint16 and (seeds.min(initial=0) < 0 or seeds.max(initial=0) > 65535):
            raise UserInputError("grow from seeds supports labels 1..65535")
        return np.ascontiguousarray(seeds, dtype=np.uint16).ravel()

    @staticmethod
    def _require_two(count: int) -> None:
        if count < 2:
            raise UserInputError(
                "grow-from-seeds needs seeds of at least two segments (e.g. the structure and its surroundings)"
            )

    def _padded_index(self, flat_index: np.ndarray) -> np.ndarray:
        k, j, i = np.unravel_index(flat_index, self.shape)
        _, pj, pi = self._padded_shape
        return (((k + 1) * pj + (j + 1)) * pi + (i + 1)).astype(np.int32)

    def _propagate_from(self, sources: np.ndarray, size: int) -> None:
        source_labels = self.seeds[sources]
        heap, size = _push_sources(
            self._padded_index(sources), source_labels, self._state, self._labels, self._heap, size
        )
        self.last_visited, self._heap = _propagate(self._state, self._labels, heap, size, self._offsets, self._steps)

    def run(self, seeds: np.ndarray) -> np.ndarray:
        """Full computation from a seed label map (0 = no seed); returns the label map [k, j, i]."""
        flat = self._flat_seeds(seeds)
        sources = np.flatnonzero(flat)
        self._require_two(np.unique(flat[sources]).size)
        self.seeds = flat.copy()
        self._state[:, 0] = self._empty_distance
        self._labels.fill(0)
        self._propagate_from(sources, 0)
        return self.labels

    def update(self, seeds: np.ndarray) -> np.ndarray:
        """Re-run after the seeds changed, re-propagating only where the result can change."""
        flat = self._flat_seeds(seeds)
        if not np.any(self.seeds):
            return self.run(seeds)
        present = np.zeros(65536, dtype=np.bool_)
        count, self._changed, self._previous = _diff_seeds(flat, self.seeds, present, self._changed, self._previous)
        if count == 0:
            return self.labels
        changed = self._changed[:count].copy()
        old = self._previous[:count]
        if np.count_nonzero(present[1:]) < 2:
            self.seeds[changed] = old  # refuse the edit, keep the previous state
            self._require_two(0)
        removed_labels = np.unique(old[old != 0])
        size = 0
        if removed_labels.size:
            removed = np.zeros(65536, dtype=np.bool_)
            removed[removed_labels] = True
            self._heap, size = _invalidate(self._state, self._labels, removed, self._offsets, self._heap, size)
            # Remaining seeds of the invalidated labels restart their growth.
            restart = np.flatnonzero(removed[self.seeds])
        else:
            restart = np.zeros(0, dtype=np.int64)
        added = changed[flat[changed] != 0]
        self._propagate_from(np.unique(np.concatenate([restart, added])), size)
        return self.labels


def seed_label_map(ctx: SegmentationContext, radius_mm: float) -> tuple:
    """Seed groups painted as balls into a label map; returns (label map, group names)."""
    from MedSegLib.segmentation.region import _seed_balls

    groups = ctx.seed_groups()
    seeds = np.zeros(ctx.shape, dtype=np.uint16)
    names = list(groups)
    for value, name in enumerate(names, start=1):
        seeds[_seed_balls(ctx, radius_mm, groups[name]) & (seeds == 0)] = value
    return seeds, names


def run_grow_from_seeds(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    if len({seed.group or "" for seed in ctx.seeds}) < 2:
        raise UserInputError(
            f"{ctx.method_name}: needs seeds of at least two segments: --seeds R,A,S@NAME "
            "(or one .mrk.json per segment, named after it)"
        )
    seeds, names = seed_label_map(ctx, p["seed_radius_mm"])
    array = ctx.array
    if p["smoothing_mm"] > 0:
        import SimpleITK as sitk

        # Noise adds |difference| at every step and would favour the seed with the shortest path;
        # a light Gaussian keeps edges but removes most of that.
        array = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(ctx.float_image, float(p["smoothing_mm"])))
    grower = GrowFromSeeds(array, ctx.spacing_ijk, p["locality"], ctx.mask)
    ctx.report(0.2, "growing")
    labels = grower.run(seeds)
    segments = []
    for value, name in enumerate(names, start=1):
        mask = ctx.finish(labels == value)
        if np.any(mask):
            segments.append(SegmentMask(name, mask))
    return segments


METHODS = [
    Method(
        "grow-from-seeds",
        "Grow from seeds",
        "labelled seed groups compete for voxels (GrowCut-like); incremental re-run in the panel",
        run_grow_from_seeds,
        (
            Param("locality", float, 0.0, "path length weight: higher keeps segments near their seeds", "HU/mm", 0.0),
            Param("seed_radius_mm", float, 2.0, "radius of seed balls", "mm", 0.0),
            Param("smoothing_mm", float, 1.0, "Gaussian sigma applied before growing (0 = off)", "mm", 0.0),
        ),
        SEEDS_LABELLED,
        "region",
    )
]
