"""Grow from seeds: several labelled seed segments compete for every voxel (GrowCut-like).

slicer-core does not wrap ``vtkITKGrowCut``, so this is MedSeg's own implementation of the same idea
(FastGrowCut, Zhu et al. 2014): each voxel takes the label of the seed with the cheapest path to it,
where a step costs the intensity difference plus ``locality`` x step length in mm. It is a multi-source
Dijkstra on the 6-neighbour grid, compiled with numba.

Exact arithmetic. Costs are integers: intensities are stored in fixed point, ``(value - min) x scale``
with ``scale`` the power of two that maps the intensity range (at least 1) onto at most 2^22 units, and a
step costs ``|difference| + round(max(locality, 0.001) x spacing x scale)`` (at least 1 unit). Distances
are uint32, saturating at 2^32 - 2 (about 1000 times the intensity range). Every step costs >= 1, so the result is
the unique fixed point ``d(v) = min over neighbours u of d(u) + w(u, v)`` (0 at seeds) and ``label(v) =
min label(u) over the neighbours with d(u) + w(u, v) == d(v)`` (a seed's own label at seeds): equal-cost
paths go to the smaller label, and the labels do not depend on the order voxels are processed in. An
incremental update therefore gives exactly the labels of a fresh run (tested voxel for voxel). Once a
distance saturates, steps of cost 0 appear and that argument fails: updates of such a state re-run from
scratch.

Incremental updates (the Segment Editor re-runs the effect whenever seeds are edited; Slicer's
FastGrowCut does the same): every voxel keeps the direction to its parent, the neighbour its distance and
label came from (so its label is its parent's); the parent links form a forest rooted at the seeds.

- Added seeds: propagation from the new seeds only, over the voxels whose distance drops or whose label
  drops on a tie (a shortest-path forest only changes where a cheaper source appears).
- Removed (erased or relabelled) seeds: only their subtrees are invalidated (a traversal along the child
  links, no pass over the volume); every other voxel keeps a path to a remaining seed, so its distance
  cannot change. Each invalidated voxel takes its best still-valid neighbour, and the propagation from
  there refills them (and lowers the label of outside voxels that now tie with a smaller one).

An update costs one compiled pass over the seed map (8 bytes at a time) plus work proportional to the
voxels whose distance or label changes (``last_visited`` expansions, ``last_invalidated`` voxels).

Layout (an update expands ~10^6 voxels and is bound by memory latency):

- The state lives on the volume padded by one voxel, so the 6 neighbours are ``index +- 1, +- row,
  +- slice`` without bounds checks. Padding and masked-out voxels have distance 0 and label 0: no
  candidate (>= 1) beats them, so they are never entered. Unreached voxels have distance 2^32 - 1.
- One (voxels, 3) uint32 row per voxel: distance, fixed-point intensity, and ``label | parent << 16 |
  expanded << 19``: reading a neighbour is one cache line and a relaxation writes only that row. Held
  between updates: 12 bytes a voxel for this state plus 2 for the previous seed map (14 in all), plus
  the queue's pool (8 bytes per entry of the largest wavefront so far).
- The queue is a bucket queue (as in delta-stepping): bucket ``distance >> shift``, ``2^shift`` being
  1/16 to 1/8 of a typical step, processed in key order, each bucket first in first out. Within a bucket
  the order is not exact, so a voxel can be expanded again when a cheaper path reaches it later (the
  fixed point does not depend on it; < 0.2 % of the expansions on the test volumes and the CT phantom).
  A voxel whose distance or label drops is queued again; an entry whose key is not the voxel's distance
  is stale, and the ``expanded`` bit skips a second entry at the same distance. Compared with a binary
  heap, a push is an append and a pop a read, both sequential.
- Memory latency: the voxels of the entry 8 places ahead in the bucket (and, when invalidating, of the
  voxel 8 places ahead) are prefetched (LLVM's prefetch), which halves the time of a large update; and
  no kernel reassigns an array in its loop (numba would count references at every push, ~1.5x slower).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask
from MedSegLib.segmentation.params import SEEDS_LABELLED, Method, Param

_INFINITY = 0xFFFFFFFF  # distance of an unreached voxel
_CAP = 0xFFFFFFFE  # distances saturate here
_LABEL = 0xFFFF
_NO_PARENT = 7  # parent field of seeds, unreached, padding and masked-out voxels
_EXPANDED = 1 << 19
_FIXED_POINT_RANGE = 2.0**22  # the intensity range in fixed-point units (at most)
_CHUNK = 256  # queue entries per chunk
_AHEAD = 8  # entries ahead whose voxels are prefetched

_KERNELS = (
    "_appended",
    "_prefetch_neighbours",
    "_queue_push",
    "_propagate",
    "_invalidate",
    "_seed_from_border",
    "_reset",
    "_diff_seeds",
)
_INLINED = ("_queue_push", "_prefetch_neighbours", "_appended")


def _compile_kernels() -> None:
    """Replace the kernels below by numba-compiled versions on first use (importing numba costs ~1 s,
    which ``medseg --help`` should not pay). Callers are compiled lazily too, at their first call, by
    which time the module globals they use are already the compiled dispatchers."""
    from MedSegLib.lazy_numba import compile_kernels_in_place

    namespace = globals()
    compile_kernels_in_place(
        namespace,
        _KERNELS,
        # inlined: no call (nor array refcounts) per push
        options=lambda name: {"inline": "always" if name in _INLINED else "never"},
        prepare=lambda numba: namespace.update(_prefetch=_prefetch_intrinsic()),
    )


def _prefetch(state, row):
    """Hint that ``state[row]`` is read soon (compiled: LLVM's prefetch; a no-op in pure Python)."""


def _prefetch_intrinsic():
    """``_prefetch`` for numba: ``llvm.prefetch`` (read, high locality, data cache) of ``state[row, 0]``."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, state, row):
        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            array = context.make_array(array_type)(context, builder, args[0])
            row = context.cast(builder, args[1], signature.args[1], types.intp)
            zero = context.get_constant(types.intp, 0)
            pointer = cgutils.get_item_pointer(context, builder, array_type, array, [row, zero], wraparound=False)
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0"
            )
            builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(state, row), codegen

    return prefetch


def _prefetch_neighbours(state, index, offsets):
    """Prefetch the rows of a voxel and of its neighbours (the i neighbours share its cache line, mostly)."""
    _prefetch(state, index)
    _prefetch(state, index + offsets[2])
    _prefetch(state, index + offsets[3])
    _prefetch(state, index + offsets[4])
    _prefetch(state, index + offsets[5])


# --- bucket queue: bucket b holds the entries (key << 32 | voxel) with (key >> shift) % buckets == b, as a
# FIFO of linked chunks of one pool. buckets[b, 0] / [b, 1]: first / last chunk (-1: empty), [b, 2]: read
# position in the first chunk, [b, 3]: entries in the last chunk. link[c]: the chunk after c (in its
# bucket or in the free list). meta: see _META. The kernels never replace ``pool`` or ``link`` (a
# reassigned array costs reference counting at every push): ``_propagate`` returns when fewer than
# _HEADROOM chunks are left, the caller grows them and calls it again, and it resumes from ``meta``.
_META = ("free list head", "chunks used", "entries queued", "free chunks", "pending used", "bucket key", "expanded")
_HEADROOM = 8  # chunks: enough for the pushes of one expansion (6) or one pending entry


def _queue_push(pool, link, buckets, meta, bucket, entry):
    """Append ``entry`` to ``bucket`` (the caller made sure a chunk is free)."""
    chunk = buckets[bucket, 1]
    if chunk < 0 or buckets[bucket, 3] == _CHUNK:
        new = meta[0]
        if new >= 0:
            meta[0] = link[new]
            meta[3] -= 1
        else:
            new = meta[1]
            meta[1] = new + 1
        link[new] = -1
        if chunk < 0:
            buckets[bucket, 0] = new
            buckets[bucket, 2] = 0
        else:
            link[chunk] = new
        buckets[bucket, 1] = new
        buckets[bucket, 3] = 0
        chunk = new
    pool[chunk * _CHUNK + buckets[bucket, 3]] = entry
    buckets[bucket, 3] += 1
    meta[2] += 1


def _propagate(state, pending, pool, link, buckets, meta, offsets, steps, shift):
    """Label-correcting Dijkstra from the sorted ``pending`` entries; returns (done, saturated): not done
    when the pool needs to grow (see above). Buckets are processed in key order, each first in first out:
    an entry is expanded when its key is the voxel's distance and the voxel was not expanded at that
    distance yet; a voxel whose distance or label drops later (within the bucket's key range) is queued
    and expanded again. ``state`` rows are (distance, intensity, label | parent << 16 | expanded bit), see
    the module docstring."""
    count = buckets.shape[0]
    mask = count - 1
    low = np.uint64(0xFFFFFFFF)
    bits = np.uint64(32)
    capacity = link.shape[0] - _HEADROOM
    saturated = False
    waiting = meta[4]
    current = meta[5]  # the bucket key (distance >> shift) being processed
    visited = meta[6]
    while True:
        if meta[3] + capacity - meta[1] < 0:
            break  # the pool needs to grow
        # pending entries (sorted) join once their key is inside the buckets' window
        if waiting < pending.shape[0] and (np.int64(pending[waiting] >> bits) >> shift) < current + count:
            entry = pending[waiting]
            _queue_push(pool, link, buckets, meta, (np.int64(entry >> bits) >> shift) & mask, entry)
            waiting += 1
            continue
        bucket = current & mask
        chunk = buckets[bucket, 0]
        if chunk < 0:
            if meta[2] > 0:
                current += 1
            elif waiting < pending.shape[0]:
                current = np.int64(pending[waiting] >> bits) >> shift
            else:
                break
            continue
        read = buckets[bucket, 2]
        top = pool[chunk * _CHUNK + read]
        ahead = read + _AHEAD
        if ahead < (buckets[bucket, 3] if chunk == buckets[bucket, 1] else _CHUNK):
            _prefetch_neighbours(state, np.int64(pool[chunk * _CHUNK + ahead] & low), offsets)
        read += 1
        meta[2] -= 1
        if chunk == buckets[bucket, 1]:
            if read == buckets[bucket, 3]:  # the bucket is empty now
                link[chunk] = meta[0]
                meta[0] = chunk
                meta[3] += 1
                buckets[bucket, 0] = -1
                buckets[bucket, 1] = -1
                read = 0
        elif read == _CHUNK:
            buckets[bucket, 0] = link[chunk]
            link[chunk] = meta[0]
            meta[0] = chunk
            meta[3] += 1
            read = 0
        buckets[bucket, 2] = read
        index = np.int64(top & low)
        d = np.int64(top >> bits)
        word = np.int64(state[index, 2])
        if d != np.int64(state[index, 0]) or (word & _EXPANDED) != 0:
            continue  # stale (reached more cheaply since), or already expanded at this distance and label
        state[index, 2] = word | _EXPANDED
        visited += 1
        value = np.int64(state[index, 1])
        label = word & _LABEL
        for direction in range(6):
            neighbour = index + offsets[direction]
            reached = np.int64(state[neighbour, 0])
            if reached == 0:
                continue  # a seed, padding or outside the mask
            difference = np.int64(state[neighbour, 1]) - value
            if difference < 0:
                difference = -difference
            candidate = d + difference + steps[direction]
            if candidate > _CAP:
                candidate = _CAP
            if candidate > reached:
                continue
            # Equal-cost paths go to the smaller label (and that label is propagated on).
            if candidate == reached and label >= (np.int64(state[neighbour, 2]) & _LABEL):
                continue
            if candidate == _CAP:
                saturated = True
            state[neighbour, 0] = candidate
            state[neighbour, 2] = label | ((direction ^ 1) << 16)
            _queue_push(
                pool,
                link,
                buckets,
                meta,
                (candidate >> shift) & mask,
                (np.uint64(candidate) << bits) | np.uint64(neighbour),
            )
    meta[4] = waiting
    meta[5] = current
    meta[6] = visited
    return meta[2] == 0 and waiting == pending.shape[0], saturated


def _appended(order, count, value):
    """``order[count] = value``, doubling the buffer when it is full; returns the buffer (maybe a new one)."""
    if count == order.shape[0]:
        grown = np.empty(2 * count, dtype=order.dtype)
        grown[:count] = order
        order = grown
    order[count] = value
    return order


def _invalidate(state, roots, offsets, order):
    """Forget the subtrees of the removed seeds ``roots`` (along the child links); returns (their voxel
    count, order) with the invalidated voxels in ``order[:count]`` (grown when full)."""
    count = 0
    for n in range(roots.shape[0]):
        root = roots[n]
        if state[root, 0] == 0 and (state[root, 2] & _LABEL) == 0:
            continue  # padding or outside the mask: never a source
        order = _appended(order, count, root)
        count += 1
        state[root, 0] = _INFINITY
        state[root, 2] = _NO_PARENT << 16
    position = 0
    while position < count:
        index = order[position]
        if position + _AHEAD < count:
            _prefetch_neighbours(state, order[position + _AHEAD], offsets)
        position += 1
        for direction in range(6):
            child = index + offsets[direction]
            if (np.int64(state[child, 2]) >> 16) & 7 != direction ^ 1:
                continue  # its parent is another voxel
            order = _appended(order, count, child)
            count += 1
            state[child, 0] = _INFINITY
            state[child, 2] = _NO_PARENT << 16
    return count, order


def _seed_from_border(state, order, count, offsets, steps):
    """Each invalidated voxel takes its cheapest reached neighbour (ties: the smaller label); returns
    the queue entries of those that have one (in ``order``'s memory, as uint64)."""
    entries = order.view(np.uint64)
    queued = 0
    for n in range(count):
        index = order[n]
        if n + _AHEAD < count:
            _prefetch_neighbours(state, order[n + _AHEAD], offsets)
        value = np.int64(state[index, 1])
        best = np.int64(_INFINITY)
        best_label = np.int64(0)
        best_direction = _NO_PARENT
        for direction in range(6):
            neighbour = index + offsets[direction]
            label = np.int64(state[neighbour, 2]) & _LABEL
            if label == 0:
                continue  # padding, outside the mask, unreached or invalidated
            difference = np.int64(state[neighbour, 1]) - value
            if difference < 0:
                difference = -difference
            candidate = np.int64(state[neighbour, 0]) + difference + steps[direction]
            if candidate > _CAP:
                candidate = _CAP
            if candidate < best or (candidate == best and label < best_label):
                best = candidate
                best_label = label
                best_direction = direction
        if best_label == 0:
            continue
        state[index, 0] = best
        state[index, 2] = best_label | (best_direction << 16)
        entries[queued] = (np.uint64(best) << np.uint64(32)) | np.uint64(index)  # queued <= n: not read again
        queued += 1
    return entries[:queued]


def _reset(state):
    """Every voxel inside the mask unreached (padding and masked-out voxels: distance 0, label 0)."""
    for index in range(state.shape[0]):
        if state[index, 0] != 0 or (state[index, 2] & _LABEL) != 0:
            state[index, 0] = _INFINITY
            state[index, 2] = _NO_PARENT << 16


def _diff_seeds(new, old, new_words, old_words, counts, changed, previous):
    """One pass over the seed maps, 4 voxels (one uint64 word) at a time: records the voxels whose seed
    changed (and their previous value), updates the seed count of each label and copies the new seeds
    into ``old``; returns (count, changed, previous)."""
    count = 0
    words = new_words.shape[0]
    for word in range(words + 1):
        if word < words:
            if new_words[word] == old_words[word]:
                continue
            start, stop = 4 * word, 4 * word + 4
        else:
            start, stop = 4 * words, new.shape[0]  # the last voxels, less than a word
        for index in range(start, stop):
            value = new[index]
            if value == old[index]:
                continue
            if count == changed.shape[0]:
                grown = np.empty(2 * count, dtype=changed.dtype)
                grown[:count] = changed
                changed = grown
                grown_previous = np.empty(2 * count, dtype=previous.dtype)
                grown_previous[:count] = previous
                previous = grown_previous
            changed[count] = index
            previous[count] = old[index]
            counts[old[index]] -= 1
            counts[value] += 1
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
        self.shape = tuple(array.shape)
        padded_shape = tuple(n + 2 for n in self.shape)
        voxels = int(np.prod(padded_shape))
        if voxels >= 2**31:
            raise UserInputError(f"grow from seeds: volume {self.shape} is too large (2^31 voxels at most)")
        self._padded_shape = padded_shape
        nk, nj, ni = padded_shape
        self._offsets = np.array([-1, 1, -ni, ni, -nj * ni, nj * ni], dtype=np.int64)
        finite = np.isfinite(array) if array.dtype.kind == "f" else None
        low = float(array.min(initial=0, where=finite)) if finite is not None else float(array.min(initial=0))
        high = float(array.max(initial=0, where=finite)) if finite is not None else float(array.max(initial=0))
        # The intensity range maps onto at most 2^22 fixed-point units (a power of two, so integers stay exact);
        # a range below 1 (or a constant image) is treated as 1, which keeps the length term small.
        self.scale = float(2.0 ** np.floor(np.log2(_FIXED_POINT_RANGE / max(high - low, 1.0))))
        # A tiny length term breaks ties between equal-intensity paths in favour of the nearer seed.
        epsilon = 1e-3
        step = [min(_CAP, max(1, int(round(max(locality, epsilon) * float(s) * self.scale)))) for s in spacing_ijk]
        self._steps = np.array([step[0], step[0], step[1], step[1], step[2], step[2]], dtype=np.int64)
        # state[v] = (distance, fixed-point intensity, label | parent << 16 | expanded << 19)
        self._state = np.zeros((voxels, 3), dtype=np.uint32)
        state = self._state.reshape(padded_shape + (3,))
        inside = None if mask is None else np.asarray(mask, dtype=bool)
        for k in range(self.shape[0]):  # a slice at a time: no whole-volume float64 temporary
            plane = np.asarray(array[k], dtype=np.float64) - low
            if finite is not None:
                plane[~finite[k]] = 0.0
            state[k + 1, 1:-1, 1:-1, 1] = np.rint(np.clip(plane * self.scale, 0.0, _FIXED_POINT_RANGE))
            state[k + 1, 1:-1, 1:-1, 0] = _INFINITY if inside is None else np.where(inside[k], _INFINITY, 0)
        self._state[:, 2] = _NO_PARENT << 16
        self._shift, buckets = self._bucket_width(state[1:-1, 1:-1, 1:-1, 1])
        self._buckets = np.full((buckets, 4), -1, dtype=np.int64)
        self.seeds = np.zeros(int(np.prod(self.shape)), dtype=np.uint16)
        self._counts = np.zeros(65536, dtype=np.int64)  # seed voxels of each label
        self.last_visited = 0
        self.last_invalidated = 0
        self._saturated = False
        self._pool = np.empty(64 * _CHUNK, dtype=np.uint64)
        self._link = np.empty(64, dtype=np.int64)
        self._changed = np.empty(4096, dtype=np.int64)
        self._previous = np.empty(4096, dtype=np.uint16)

    @property
    def labels(self) -> np.ndarray:
        """The current label map [k, j, i] (a uint16 view of the kept state: copy it to keep it across updates)."""
        column = 4 if sys.byteorder == "little" else 5  # the low half of the third uint32
        return self._state.view(np.uint16)[:, column].reshape(self._padded_shape)[1:-1, 1:-1, 1:-1]

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
        return ((k + 1) * pj + (j + 1)) * pi + (i + 1)

    def _bucket_width(self, intensity: np.ndarray) -> tuple:
        """(shift, buckets): a bucket spans 2^shift distance units, 1/16 to 1/8 of a typical step (the
        median over a few slices), so few voxels are expanded twice; the buckets (a power of two, at most
        2^16) cover the longest step. Any width gives the same result, only the speed changes."""
        longest = int(_FIXED_POINT_RANGE) + 1 + int(self._steps.max())
        sample = intensity[:: max(1, intensity.shape[0] // 16)].astype(np.int64)
        typical = int(np.median(np.abs(np.diff(sample, axis=-1)))) if sample.shape[-1] > 1 else 0
        typical += int(self._steps[0])
        shift = max(typical.bit_length() - 4, longest.bit_length() - 15, 0)
        return shift, 1 << ((longest >> shift) + 3).bit_length()

    def _propagate_from(self, sources: np.ndarray, border: np.ndarray) -> None:
        """Seeds ``sources`` (flat indices) at distance 0, then the propagation from them and ``border``."""
        index = self._padded_index(sources)
        source = (self._state[index, 0] != 0) | ((self._state[index, 2] & _LABEL) != 0)  # not padding or masked
        index = index[source]
        self._state[index, 0] = 0
        self._state[index, 2] = self.seeds[sources[source]].astype(np.uint32) | (_NO_PARENT << 16)
        pending = np.sort(np.concatenate([border, index.astype(np.uint64)]))
        meta = np.zeros(len(_META), dtype=np.int64)
        meta[0] = -1  # no free chunk
        meta[5] = int(pending[0] >> np.uint64(32)) >> self._shift if pending.size else 0
        while True:
            done, saturated = _propagate(
                self._state,
                pending,
                self._pool,
                self._link,
                self._buckets,
                meta,
                self._offsets,
                self._steps,
                self._shift,
            )
            self._saturated |= bool(saturated)
            if done:
                break
            used = int(meta[1])  # grow the pool: the chunks keep their numbers
            self._link = np.concatenate([self._link[:used], np.empty(max(used, 64), dtype=np.int64)])
            self._pool = np.concatenate(
                [self._pool[: used * _CHUNK], np.empty(max(used, 64) * _CHUNK, dtype=np.uint64)]
            )
        self.last_visited = int(meta[6])

    def run(self, seeds: np.ndarray) -> np.ndarray:
        """Full computation from a seed label map (0 = no seed); returns the label map [k, j, i]."""
        flat = self._flat_seeds(seeds)
        sources = np.flatnonzero(flat)
        self._require_two(np.unique(flat[sources]).size)
        self.seeds = flat.copy()
        self._counts = np.bincount(flat, minlength=65536).astype(np.int64)
        _reset(self._state)
        self._saturated = False
        self.last_invalidated = 0
        self._propagate_from(sources, np.zeros(0, dtype=np.uint64))
        return self.labels

    def update(self, seeds: np.ndarray) -> np.ndarray:
        """Re-run after the seeds changed, re-propagating only where the result can change."""
        flat = self._flat_seeds(seeds)
        if self._saturated or not self._counts[1:].any():  # saturated (see the module docstring) or never run
            return self.run(seeds)
        words = flat.size // 4
        count, self._changed, self._previous = _diff_seeds(
            flat,
            self.seeds,
            flat[: 4 * words].view(np.uint64),
            self.seeds[: 4 * words].view(np.uint64),
            self._counts,
            self._changed,
            self._previous,
        )
        if count == 0:
            return self.labels
        changed = self._changed[:count].copy()
        old = self._previous[:count].copy()
        if np.count_nonzero(self._counts[1:]) < 2:  # refuse the edit, keep the previous state
            np.add.at(self._counts, flat[changed], -1)
            np.add.at(self._counts, old, 1)
            self.seeds[changed] = old
            self._require_two(0)
        roots = changed[old != 0]  # erased or relabelled seeds
        self.last_invalidated = 0
        border = np.zeros(0, dtype=np.uint64)
        if roots.size:
            invalidated, order = _invalidate(
                self._state, self._padded_index(roots), self._offsets, np.empty(max(4096, roots.size), dtype=np.int64)
            )
            self.last_invalidated = int(invalidated)
            border = _seed_from_border(self._state, order, invalidated, self._offsets, self._steps)
        self._propagate_from(changed[flat[changed] != 0], border)
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
