"""Preprocessing a model declares, and its exact undo back onto the source voxel grid.

Order (as MONAI bundles and nnU-Net do it): reorient (axis permutation and flips only, so it is lossless
and exactly invertible) -> crop to foreground (bounding box kept) -> normalise intensities -> resample to
the model's spacing (trilinear). The prediction is mapped back in reverse: linear resampling of the
network output slab by slab (streamed, so never all classes at full resolution), argmax, paste into the
bounding box, inverse permutation/flips. The result lies on exactly the source node's voxel grid.

Spacings in ``medseg-model.json`` are given for the reoriented (i, j, k) axes in mm; ``axis_order`` says
which of those axes the network's axes 0, 1, 2 are (any permutation of 'kji').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.deep_learning.model_package import AXIS_ORDERS
from MedSegLib.errors import UserInputError

_LETTER_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class AxisTransform:
    """A permutation + flips of a numpy (k, j, i) array; ``apply`` then ``invert`` is the identity."""

    perm: Tuple[int, int, int]  # numpy axes of the source taken as new axes 0, 1, 2
    flips: Tuple[bool, bool, bool]  # flip new axis m

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.perm)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        return np.transpose(out, np.argsort(self.perm))

    def apply_spacing(self, spacing_kji: Sequence[float]) -> Tuple[float, float, float]:
        return tuple(float(spacing_kji[p]) for p in self.perm)  # type: ignore[return-value]


def orientation_transform(ijk_to_ras: np.ndarray, orientation: Optional[str]) -> AxisTransform:
    """Permutation/flips that make voxel axes i, j, k point toward ``orientation``'s letters (e.g. 'LPS').

    Oblique volumes use each axis' dominant direction (no resampling: the model sees the acquired
    voxels; the output is on the same grid).
    """
    if orientation is None:
        return AxisTransform((0, 1, 2), (False, False, False))
    orientation = orientation.upper()
    if len(orientation) != 3 or sorted(_LETTER_AXIS[c][0] for c in orientation) != [0, 1, 2]:
        raise UserInputError(f"invalid orientation {orientation!r}")
    directions = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)[None, :]
    world_of_ijk = []
    for a in range(3):
        w = int(np.argmax(np.abs(directions[:, a])))
        world_of_ijk.append((w, float(np.sign(directions[w, a]))))
    if sorted(w for w, _ in world_of_ijk) != [0, 1, 2]:
        raise UserInputError("the volume's axes are too oblique to assign a dominant direction to each")
    # new ijk axis n must point toward letter n; find the source ijk axis along that world axis.
    src_for_new = []
    flip_for_new = []
    for letter in orientation:
        world, sign = _LETTER_AXIS[letter]
        src = next(a for a, (w, _) in enumerate(world_of_ijk) if w == world)
        src_for_new.append(src)
        flip_for_new.append(world_of_ijk[src][1] != sign)
    # numpy axis m <-> ijk axis 2 - m
    perm = tuple(2 - src_for_new[2 - m] for m in range(3))
    flips = tuple(flip_for_new[2 - m] for m in range(3))
    return AxisTransform(perm, flips)  # type: ignore[arg-type]


def foreground_bbox(array: np.ndarray, threshold: float, margin: Sequence[int]) -> Optional[Tuple[slice, slice, slice]]:
    """Bounding box (with margin, clipped) of voxels above ``threshold``; None when nothing is above."""
    mask = array > threshold
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - int(margin[axis]), 0)
        hi = min(int(hits[-1]) + 1 + int(margin[axis]), array.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)  # type: ignore[return-value]


def normalize(array: np.ndarray, config: Dict[str, Any]) -> np.ndarray:
    """Intensity normalisation declared by the model, in float32 (in place where possible)."""
    kind = config.get("type", "none")
    out = np.asarray(array, dtype=np.float32)
    if kind == "none":
        return out
    if kind == "scale_range":  # MONAI ScaleIntensityRange
        a_min, a_max = float(config["a_min"]), float(config["a_max"])
        b_min, b_max = float(config.get("b_min", 0.0)), float(config.get("b_max", 1.0))
        out = (out - np.float32(a_min)) / np.float32(a_max - a_min)
        out = out * np.float32(b_max - b_min) + np.float32(b_min)
        if config.get("clip", True):
            np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
        return out
    if kind == "zscore":
        values = out[out != 0] if config.get("nonzero", False) else out
        mean = float(values.mean()) if values.size else 0.0
        std = float(values.std()) if values.size else 1.0
        return (out - np.float32(mean)) / np.float32(max(std, 1e-8))
    if kind == "ct_clip_zscore":  # nnU-Net CTNormalization
        out = np.clip(out, float(config["lower"]), float(config["upper"]))
        return (out - np.float32(config["mean"])) / np.float32(max(float(config["std"]), 1e-8))
    if kind == "piecewise_linear":
        # "points": [[x, y], ...] with x increasing: linear between points, the end values beyond them.
        # Lets a CT model spread soft tissue (tens of HU apart) over more of its input range than air and
        # bone, in one channel (a narrow window alone would clip lung and bone).
        xs, ys = piecewise_points(config.get("points"))
        result = np.empty(out.shape, dtype=np.float32)
        flat_in, flat_out = out.reshape(-1), result.reshape(-1)
        step = 1 << 22  # np.interp works in float64: bound its temporaries
        for start in range(0, flat_in.size, step):
            flat_out[start : start + step] = np.interp(flat_in[start : start + step], xs, ys)
        return result
    raise UserInputError(f"unknown normalisation {kind!r}")


def piecewise_points(points: Any) -> Tuple[List[float], List[float]]:
    """(xs, ys) of a ``piecewise_linear`` normalisation; two or more [x, y] pairs, x strictly increasing."""
    try:
        pairs = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        pairs = []
    xs = [x for x, _ in pairs]
    if len(pairs) < 2 or not np.all(np.isfinite(pairs)) or any(b <= a for a, b in zip(xs, xs[1:])):
        raise UserInputError(
            "'piecewise_linear' normalisation needs 'points': two or more [x, y] pairs with x increasing"
        )
    return xs, [y for _, y in pairs]


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Optional[Sequence[float]]
) -> Tuple[int, ...]:
    """nnU-Net's rule: round(n * spacing / target), at least 1."""
    if target is None:
        return tuple(int(n) for n in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resize_linear(tensor: Any, size: Sequence[int], mode: str = "trilinear") -> Any:
    """Resize ``[C, D, H, W]`` (align_corners=False, the 'same physical box' convention); no-op if same size."""
    import torch.nn.functional as F

    if tuple(tensor.shape[1:]) == tuple(size):
        return tensor
    if mode == "nearest":
        return F.interpolate(tensor[None].float(), size=tuple(size), mode="nearest-exact")[0]
    return F.interpolate(tensor[None], size=tuple(size), mode=mode, align_corners=False)[0]


class StreamingLinearResizer:
    """Resize a stream of z-slabs ``[K, dz, h, w]`` to ``[K, D, H, W]`` rows, like trilinear align_corners=False.

    Trilinear interpolation is separable: rows along z are blended from the two nearest source rows
    (PyTorch's source coordinate ``(t + 0.5) * n_src / n_dst - 0.5``, clamped at 0), then each row is
    resized bilinearly in-plane. Only a few source rows are buffered, so memory stays at slab size.
    """

    def __init__(self, src_depth: int, dst_size: Sequence[int]) -> None:
        self.src_depth = int(src_depth)
        self.dst_depth, self.dst_h, self.dst_w = (int(v) for v in dst_size)
        scale = self.src_depth / self.dst_depth
        coords = np.maximum((np.arange(self.dst_depth) + 0.5) * scale - 0.5, 0.0)
        self.i0 = np.minimum(np.floor(coords).astype(np.int64), self.src_depth - 1)
        self.i1 = np.minimum(self.i0 + 1, self.src_depth - 1)
        self.w1 = (coords - self.i0).astype(np.float32)
        self._buffer: Optional[Any] = None
        self._buffer_z0 = 0
        self._next = 0  # next destination row to emit

    def push(self, z0: int, slab: Any) -> Iterator[Tuple[int, int, Any]]:
        """Add source rows ``[z0, z0 + dz)``; yield finished destination rows ``(t0, t1, [K, t1-t0, H, W])``."""
        import torch
        import torch.nn.functional as F

        if self._buffer is None:
            self._buffer, self._buffer_z0 = slab, z0
        else:
            self._buffer = torch.cat([self._buffer, slab], dim=1)
        available = self._buffer_z0 + self._buffer.shape[1]
        t1 = self._next
        while t1 < self.dst_depth and self.i1[t1] < available:
            t1 += 1
        if t1 > self._next:
            rows = np.arange(self._next, t1)
            a = torch.from_numpy(self.i0[rows] - self._buffer_z0)
            b = torch.from_numpy(self.i1[rows] - self._buffer_z0)
            w = torch.from_numpy(self.w1[rows])[None, :, None, None]
            if self.src_depth == self.dst_depth:
                blended = self._buffer[:, a]
            else:
                blended = self._buffer[:, a] * (1 - w) + self._buffer[:, b] * w
            if blended.shape[2:] != (self.dst_h, self.dst_w):
                blended = F.interpolate(
                    blended.permute(1, 0, 2, 3), size=(self.dst_h, self.dst_w), mode="bilinear", align_corners=False
                ).permute(1, 0, 2, 3)
            yield self._next, t1, blended
            self._next = t1
            # keep only source rows still needed by later destination rows
            if t1 < self.dst_depth:
                keep_from = int(self.i0[t1])
                drop = keep_from - self._buffer_z0
                if drop > 0:
                    self._buffer = self._buffer[:, drop:]
                    self._buffer_z0 = keep_from


def network_axes(axis_order: str) -> Tuple[int, int, int]:
    """Numpy axes of the reoriented (k, j, i) array that become network axes 0, 1, 2.

    ``axis_order`` names the voxel axis of each network axis: 'kji' = numpy order (SimpleITK, nnU-Net
    without transpose), 'ijk' = MONAI's (x, y, z); nnU-Net's ``transpose_forward`` [1, 0, 2] is 'jki'.
    """
    if axis_order not in AXIS_ORDERS:
        raise UserInputError(f"axis order {axis_order!r} is not a permutation of 'kji'")
    return tuple("kji".index(c) for c in axis_order)  # type: ignore[return-value]


@dataclass
class PreparedInput:
    """The network-space input plus everything needed to map a prediction back onto the source grid."""

    tensor: Any  # float32 [C, D, H, W] in network space
    source_shape: Tuple[int, int, int]  # (k, j, i) of the source volume
    orientation: AxisTransform
    bbox: Optional[Tuple[slice, slice, slice]]  # in reoriented (numpy) axes
    cropped_shape: Tuple[int, int, int]  # reoriented + cropped, numpy axes
    axes: Tuple[int, int, int]  # network axis n is numpy axis axes[n] of the reoriented array
    network_spacing: Tuple[float, float, float]

    def network_shape_before_resample(self) -> Tuple[int, int, int]:
        return tuple(self.cropped_shape[a] for a in self.axes)  # type: ignore[return-value]

    def to_network_axes(self, array: np.ndarray) -> np.ndarray:
        """A reoriented (+ cropped) numpy-axes array in network axis order (a view)."""
        return array.transpose(self.axes)

    def from_network_axes(self, array: np.ndarray) -> np.ndarray:
        """Inverse of ``to_network_axes``."""
        return array.transpose(np.argsort(self.axes))


def prepare_input(
    channels_kji: List[np.ndarray], ijk_to_ras: np.ndarray, preprocessing: Dict[str, Any]
) -> PreparedInput:
    """Apply a model's declared preprocessing to source arrays (one per input channel, same grid)."""
    import torch

    shape = tuple(channels_kji[0].shape)
    transform = orientation_transform(ijk_to_ras, preprocessing.get("orientation"))
    spacing_ijk = np.linalg.norm(np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3], axis=0)
    spacing_kji = transform.apply_spacing(spacing_ijk[::-1])
    arrays = [transform.apply(np.asarray(a)) for a in channels_kji]
    bbox = None
    crop = preprocessing.get("crop_foreground")
    if crop:
        margin_mm = float(crop.get("margin_mm", 10.0))
        margin = [int(np.ceil(margin_mm / s)) for s in spacing_kji]
        bbox = foreground_bbox(arrays[0], float(crop.get("threshold", 0.0)), margin)
        if bbox is not None:
            arrays = [a[bbox] for a in arrays]
    cropped_shape = tuple(arrays[0].shape)
    norm = preprocessing.get("normalization", {"type": "none"})
    norms = norm if isinstance(norm, list) else [norm] * len(arrays)
    data = np.stack([normalize(a, n) for a, n in zip(arrays, norms)])
    axes = network_axes(preprocessing.get("axis_order", "kji"))
    data = data.transpose(0, *(a + 1 for a in axes))
    net_spacing = tuple(spacing_kji[a] for a in axes)
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    target = preprocessing.get("spacing_mm")
    if target is not None:
        target_net = tuple(float(target[2 - a]) for a in axes)  # spacing_mm is per (i, j, k)
        size = resampled_shape(tensor.shape[1:], net_spacing, target_net)
        tensor = resize_linear(tensor, size)
        net_spacing = tuple(s * n / m for s, n, m in zip(net_spacing, data.shape[1:], size))
    return PreparedInput(tensor, shape, transform, bbox, cropped_shape, axes, net_spacing)  # type: ignore[arg-type]
