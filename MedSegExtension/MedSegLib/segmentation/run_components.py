"""Connected components of a binary mask on its runs (row segments), not on a voxel label image.

Why: ITK's ConnectedComponent writes a uint32 label per voxel, twice the bytes of an int16 CT, and the
island clean-ups of the CT presets only need each component's size and bounding box and a way to keep
some components. Here a mask is stored as runs along i (one per uninterrupted stretch of a row), runs
of neighbouring rows that touch are joined with union-find, and components are numbered in raster order
of their first voxel, as ITK numbers them. Memory: 20 bytes per run plus 8 per row, next to the mask
(a CT body mask of 512 x 512 x 300 has about two runs per row: ~6 MB instead of 300 MB).

Connectivity as ITK's ``fullyConnected``: False joins face neighbours (6 in 3D), True also edge and
corner neighbours (26).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _compile() -> None:
    """Replace the kernels below by numba-compiled versions on first use (see MedSegLib.lazy_numba)."""
    from MedSegLib.lazy_numba import compile_kernels_in_place

    compile_kernels_in_place(
        globals(),
        ("_count_runs", "_fill_runs", "_find", "_join_rows", "_number", "_paint", "_paint_labels", "_touching"),
    )


def _count_runs(mask, counts):  # mask uint8 [rows, width]; counts int64 [rows]
    for row in range(mask.shape[0]):
        inside = False
        n = 0
        for i in range(mask.shape[1]):
            if mask[row, i] != 0:
                if not inside:
                    n += 1
                    inside = True
            else:
                inside = False
        counts[row] = n


def _fill_runs(mask, row_start, starts, stops):
    for row in range(mask.shape[0]):
        r = row_start[row]
        inside = False
        for i in range(mask.shape[1]):
            if mask[row, i] != 0:
                if not inside:
                    starts[r] = i
                    inside = True
            elif inside:
                stops[r] = i
                r += 1
                inside = False
        if inside:
            stops[r] = mask.shape[1]


def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:  # path compression
        following = parent[a]
        parent[a] = root
        a = following
    return root


def _join_rows(row_start, starts, stops, parent, depth, height, full):
    """Union runs of each row with the touching runs of the rows before it (face or full connectivity)."""
    reach = 1 if full else 0  # full: runs that only touch at a corner also join
    for k in range(depth):
        for j in range(height):
            row = k * height + j
            a0, a1 = row_start[row], row_start[row + 1]
            if a0 == a1:
                continue
            for dk in range(-1, 1):
                for dj in range(-1, 2):
                    if dk == 0 and dj >= 0:
                        continue  # only rows already visited: (k, j-1) and the slice before
                    if not full and dk != 0 and dj != 0:
                        continue
                    kk, jj = k + dk, j + dj
                    if kk < 0 or jj < 0 or jj >= height:
                        continue
                    other = kk * height + jj
                    b, b1 = row_start[other], row_start[other + 1]
                    a = a0
                    while a < a1 and b < b1:
                        if starts[a] < stops[b] + reach and starts[b] < stops[a] + reach:
                            ra, rb = _find(parent, a), _find(parent, b)
                            if ra != rb:
                                if ra < rb:
                                    parent[rb] = ra
                                else:
                                    parent[ra] = rb
                        if stops[a] < stops[b]:
                            a += 1
                        else:
                            b += 1


def _number(parent, row_start, starts, stops, height, component, sizes, boxes):
    """Component numbers 1..n in raster order of the first run; sizes and boxes (k0, j0, i0, k1, j1, i1)."""
    rows = row_start.shape[0] - 1
    label_of_root = np.zeros(parent.shape[0], np.int32)
    n = 0
    for row in range(rows):
        k, j = row // height, row % height
        for r in range(row_start[row], row_start[row + 1]):
            root = _find(parent, r)
            if label_of_root[root] == 0:
                n += 1
                label_of_root[root] = n
                boxes[n, 0], boxes[n, 1], boxes[n, 2] = k, j, starts[r]
                boxes[n, 3], boxes[n, 4], boxes[n, 5] = k, j, stops[r] - 1
            value = label_of_root[root]
            component[r] = value
            sizes[value] += stops[r] - starts[r]
            boxes[value, 0] = min(boxes[value, 0], k)
            boxes[value, 1] = min(boxes[value, 1], j)
            boxes[value, 2] = min(boxes[value, 2], starts[r])
            boxes[value, 3] = max(boxes[value, 3], k)
            boxes[value, 4] = max(boxes[value, 4], j)
            boxes[value, 5] = max(boxes[value, 5], stops[r] - 1)
    return n


def _paint(out, row_start, starts, stops, component, keep):
    for row in range(row_start.shape[0] - 1):
        for r in range(row_start[row], row_start[row + 1]):
            if keep[component[r]]:
                for i in range(starts[r], stops[r]):
                    out[row, i] = True


def _paint_labels(out, first_row, row_start, starts, stops, component):
    for row in range(out.shape[0]):
        source = first_row + row
        for r in range(row_start[source], row_start[source + 1]):
            for i in range(starts[r], stops[r]):
                out[row, i] = component[r]


def _touching(strong, row_start, starts, stops, component, keep):
    """keep[c] = True for every component with a run that covers a ``strong`` voxel."""
    for row in range(row_start.shape[0] - 1):
        for r in range(row_start[row], row_start[row + 1]):
            if keep[component[r]]:
                continue
            for i in range(starts[r], stops[r]):
                if strong[row, i] != 0:
                    keep[component[r]] = True
                    break


@dataclass
class RunComponents:
    """The components of a mask: per run its component, per component (index 1..n) size and box."""

    shape: tuple
    row_start: np.ndarray  # int64 [rows + 1]: runs of row (k * height + j) are row_start[row]:row_start[row+1]
    starts: np.ndarray  # int32 first i of each run
    stops: np.ndarray  # int32 one past the last i
    component: np.ndarray  # int32 component number of each run
    sizes: np.ndarray  # int64 [n + 1] voxels per component (index 0 unused)
    boxes: np.ndarray  # int32 [n + 1, 6] (k0, j0, i0, k1, j1, i1), inclusive

    @property
    def count(self) -> int:
        return len(self.sizes) - 1

    def paint(self, keep: np.ndarray) -> np.ndarray:
        """A new mask of the components whose ``keep[number]`` is true."""
        _compile()
        out = np.zeros(self.shape, dtype=bool)
        keep = np.asarray(keep, dtype=np.bool_)
        keep[0] = False
        _paint(out.reshape(-1, self.shape[2]), self.row_start, self.starts, self.stops, self.component, keep)
        return out

    def paint_numbers(self, numbers) -> np.ndarray:
        """A new mask of the components numbered ``numbers`` (0 = background is ignored)."""
        keep = np.zeros(self.count + 1, dtype=np.bool_)
        keep[np.asarray(numbers, dtype=np.int64)] = True
        return self.paint(keep)

    def label_slices(self, k0: int, k1: int) -> np.ndarray:
        """The int32 component-number image of slices ``k0:k1`` (0 = background): labels for a slab only."""
        _compile()
        depth, height, width = self.shape
        k0, k1 = max(0, int(k0)), min(depth, int(k1))
        out = np.zeros((max(0, k1 - k0), height, width), dtype=np.int32)
        _paint_labels(out.reshape(-1, width), k0 * height, self.row_start, self.starts, self.stops, self.component)
        return out

    def touching(self, strong: np.ndarray) -> np.ndarray:
        """Per component number: does it contain a voxel of ``strong`` (same shape as the mask)?"""
        _compile()
        keep = np.zeros(self.count + 1, dtype=np.bool_)
        rows = np.ascontiguousarray(strong, dtype=bool).view(np.uint8).reshape(-1, self.shape[2])
        _touching(rows, self.row_start, self.starts, self.stops, self.component, keep)
        return keep

    def component_at(self, k: int, j: int, i: int) -> int:
        """The component number of voxel (k, j, i), 0 outside the mask."""
        row = k * self.shape[1] + j
        for r in range(int(self.row_start[row]), int(self.row_start[row + 1])):
            if self.starts[r] <= i < self.stops[r]:
                return int(self.component[r])
        return 0


def run_components(mask: np.ndarray, fully_connected: bool = False) -> RunComponents:
    """Connected components of a 3D boolean ``mask`` [k, j, i] (ITK's numbering and connectivity)."""
    _compile()
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    depth, height, width = mask.shape
    rows = np.ascontiguousarray(mask).view(np.uint8).reshape(depth * height, width)
    counts = np.empty(depth * height, dtype=np.int64)
    _count_runs(rows, counts)
    row_start = np.zeros(depth * height + 1, dtype=np.int64)
    np.cumsum(counts, out=row_start[1:])
    del counts
    total = int(row_start[-1])
    starts = np.empty(total, dtype=np.int32)
    stops = np.empty(total, dtype=np.int32)
    _fill_runs(rows, row_start, starts, stops)
    parent = np.arange(total, dtype=np.int32)
    _join_rows(row_start, starts, stops, parent, depth, height, bool(fully_connected))
    component = np.empty(total, dtype=np.int32)
    sizes = np.zeros(total + 1, dtype=np.int64)
    boxes = np.zeros((total + 1, 6), dtype=np.int32)
    n = _number(parent, row_start, starts, stops, height, component, sizes, boxes)
    return RunComponents(
        tuple(mask.shape), row_start, starts, stops, component, sizes[: n + 1].copy(), boxes[: n + 1].copy()
    )


def connected_to_seeds(mask: np.ndarray, seeds_kji: np.ndarray, fully_connected: bool = False) -> np.ndarray:
    """The components of ``mask`` that contain a seed voxel (rows of ``seeds_kji``): what ITK's connected
    threshold gives for ``mask`` = the threshold test, with the output mask as the only whole-volume array
    (ITK adds an image of visited flags and its own output beside the input)."""
    components = run_components(mask, fully_connected)
    numbers = [components.component_at(int(k), int(j), int(i)) for k, j, i in np.asarray(seeds_kji).reshape(-1, 3)]
    return components.paint_numbers(numbers)
