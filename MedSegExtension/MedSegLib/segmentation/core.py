"""What every method receives (:class:`SegmentationContext`) and returns (:class:`SegmentMask`).

Methods work on the volume's own voxel grid: a numpy view ``array[k, j, i]`` and, when an ITK filter
needs it, a SimpleITK image built lazily (once) with the node's exact LPS geometry. Seeds arrive as RAS
millimetres and are converted to voxel indices here, once, with the checks users need (outside the
volume -> a clear error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback, report


@dataclass
class SeedPoint:
    """A seed in RAS millimetres; ``group`` names the segment it belongs to (grow-from-seeds, watershed)."""

    ras: Tuple[float, float, float]
    group: str = ""


class SegmentMask:
    """One output segment on the source grid plus how to present it (name, terminology, colour).

    The voxels are either a boolean/uint8 ``mask`` or, for methods whose filter already produces one label
    image for several segments (multi-Otsu), ``labels`` + ``value``: the segment is ``labels == value``.
    That mask is derived only when someone reads :attr:`mask` (not kept, so N segments never hold N
    full-volume masks at once); the writer imports the shared label image directly (one copy for all
    segments, see :func:`MedSegLib.segmentation.output.write_segments`)."""

    __slots__ = ("name", "_mask", "terminology", "color", "labels", "value")

    def __init__(
        self,
        name: str,
        mask: Optional[np.ndarray] = None,
        terminology: Optional[str] = None,  # 3dSlicerLabel in MedSeg's terminology (e.g. "liver", "right lung")
        color: Optional[Tuple[float, float, float]] = None,
        labels: Optional[np.ndarray] = None,
        value: int = 1,
    ) -> None:
        if mask is None and labels is None:
            raise ValueError("SegmentMask needs a mask or a label array")
        self.name = name
        self._mask = mask
        self.terminology = terminology
        self.color = color
        self.labels = labels
        self.value = int(value)

    @property
    def mask(self) -> np.ndarray:
        return self._mask if self._mask is not None else self.labels == self.value

    @mask.setter
    def mask(self, mask: np.ndarray) -> None:
        self._mask, self.labels = mask, None

    @property
    def is_labelled(self) -> bool:
        """True when the voxels are ``labels == value`` of a shared label array (not materialised)."""
        return self._mask is None

    def any(self) -> bool:
        """Whether the segment has a voxel, without building a full-volume mask for labelled segments."""
        if self._mask is not None:
            return bool(np.any(self._mask))
        return label_present(self.labels, self.value)

    def __repr__(self) -> str:
        kind = f"labels=={self.value}" if self.is_labelled else "mask"
        return f"SegmentMask({self.name!r}, {kind}, terminology={self.terminology!r})"


def label_present(labels: np.ndarray, value: int) -> bool:
    """``np.any(labels == value)`` one slab at a time from the middle outwards, stopping at the first hit
    (a present class is usually found in the first slab, so this touches a few MB, not the volume)."""
    if labels.ndim == 0 or labels.shape[0] == 0:
        return False
    count = labels.shape[0]
    middle = count // 2
    order = [middle]
    for offset in range(1, count):
        if middle + offset < count:
            order.append(middle + offset)
        if middle - offset >= 0:
            order.append(middle - offset)
    return any(bool(np.any(labels[index] == value)) for index in order)


@dataclass
class SegmentationContext:
    """The source volume as methods need it: voxels, geometry, seeds, optional mask, progress/cancel."""

    array: np.ndarray  # [k, j, i], a view of the volume node's voxels (never modify)
    ijk_to_ras: np.ndarray
    seeds: List[SeedPoint] = field(default_factory=list)
    mask: Optional[np.ndarray] = None  # restrict results to this region (bool, same shape)
    progress: Optional[ProgressCallback] = None
    cancel: Optional[CancelToken] = None
    method_name: str = ""
    _image: Any = None
    _float_image: Any = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_ijk(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_kji(self) -> np.ndarray:
        return self.spacing_ijk[::-1].copy()

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    @property
    def image(self) -> Any:
        """SimpleITK image of the voxels (LPS geometry), built on first use (into the reusable staging image,
        see :func:`image_from_array`)."""
        if self._image is None:
            self._image = image_from_array(self.array, self.ijk_to_ras, reuse=True)
        return self._image

    @property
    def float_image(self) -> Any:
        """The image as float32 (what gradient / level-set filters want)."""
        if self._float_image is None:
            import SimpleITK as sitk

            self._float_image = sitk.Cast(self.image, sitk.sitkFloat32)
        return self._float_image

    def like(self, array: np.ndarray) -> Any:
        """A SimpleITK image of ``array`` with the source geometry (for masks, label maps)."""
        return image_from_array(array, self.ijk_to_ras)

    def seed_indices(self, seeds: Optional[Sequence[SeedPoint]] = None) -> np.ndarray:
        """Seed positions as voxel indices (i, j, k) rows; a seed outside the volume is a user error."""
        seeds = self.seeds if seeds is None else list(seeds)
        if not seeds:
            return np.zeros((0, 3), dtype=np.int64)
        ras = np.array([seed.ras for seed in seeds], dtype=np.float64)
        ijk = ras_to_ijk(self.ijk_to_ras, ras)
        rounded = np.rint(ijk).astype(np.int64)
        size = np.array(self.shape[::-1])
        outside = np.any((rounded < 0) | (rounded >= size), axis=1)
        if np.any(outside):
            first = int(np.argmax(outside))
            r, a, s = ras[first]
            raise UserInputError(
                f"{self.method_name or 'segment'}: seed at R,A,S = {r:g},{a:g},{s:g} mm is outside the volume "
                f"(voxel {tuple(int(v) for v in rounded[first])}, volume size {tuple(int(v) for v in size)})"
            )
        return rounded

    def seed_groups(self) -> Dict[str, np.ndarray]:
        """Seed indices per group name, in first-seen order ("" groups become "Segment_1")."""
        indices = self.seed_indices()
        groups: Dict[str, List[np.ndarray]] = {}
        for seed, index in zip(self.seeds, indices):
            groups.setdefault(seed.group or "Segment_1", []).append(index)
        return {name: np.array(rows) for name, rows in groups.items()}

    def report(self, fraction: float, message: str = "") -> None:
        """Progress + cancellation point between the steps of a method."""
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        report(self.progress, fraction, message)

    def finish(self, mask: np.ndarray) -> np.ndarray:
        """Apply the optional restriction mask and return a boolean array."""
        mask = np.asarray(mask, dtype=bool)
        if self.mask is not None:
            mask = mask & self.mask  # not in place: ``mask`` may be a read-only view of a filter output
        return mask


class _ImageBuffer:
    """Exposes a SimpleITK image's buffer to numpy while holding the image (see :func:`array_view`)."""

    def __init__(self, image: Any, view: np.ndarray) -> None:
        self.image = image
        self.__array_interface__ = view.__array_interface__


def array_view(image: Any, dtype: Any = None) -> np.ndarray:
    """A numpy view [k, j, i] of a SimpleITK image's voxels (no copy) that keeps the image alive for as long
    as the array (or any view of it) exists - unlike ``sitk.GetArrayViewFromImage``, whose view dangles once
    the image is collected. Used to hand a filter's output to the caller as it is. ``dtype``: reinterpret
    the bytes (e.g. a 0/1 uint8 mask as bool)."""
    import SimpleITK as sitk

    view = sitk.GetArrayViewFromImage(image)
    array = np.asarray(_ImageBuffer(image, view))
    return array.view(dtype) if dtype is not None else array


def ras_to_ijk(ijk_to_ras: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """Continuous voxel coordinates (i, j, k) of RAS points given as rows."""
    ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
    ras_to_ijk_matrix = np.linalg.inv(ijk_to_ras)
    return ras @ ras_to_ijk_matrix[:3, :3].T + ras_to_ijk_matrix[:3, 3]


_STAGING: Dict[str, Any] = {}


def _staged_image(array: np.ndarray) -> Any:
    """The staging image refilled with ``array``, or None when it cannot be reused.

    A fresh SimpleITK image of a 512x512x300 CT costs ~0.35 s before any filter runs: the 150 MB are
    allocated, zero-filled and page-faulted; copying the voxels into already-mapped memory takes ~0.05 s.
    So the input copy goes into one kept image of the same size and type - only when nobody else holds
    it (reference count: the cache entry alone) - and its buffer is made unique first, so an image that
    shares it copy-on-write keeps its own voxels."""
    import sys

    import SimpleITK as sitk

    try:  # what sitk.GetImageFromArray itself uses to copy the voxels
        from SimpleITK.SimpleITK import _SetImageFromArray as fill
    except ImportError:  # pragma: no cover - another SimpleITK layout: plain copies
        fill = None
    if fill is None or not array.flags.c_contiguous:
        return None
    key = (array.shape, array.dtype.str)
    entry = _STAGING.get("input")
    # Reused only when held by the cache tuple alone (getrefcount adds its own argument).
    if entry is None or entry[0] != key or sys.getrefcount(entry[1]) > 2:
        _STAGING.pop("input", None)
        image = sitk.GetImageFromArray(array)
        _STAGING["input"] = (key, image)
        return image
    image = entry[1]
    image.MakeUnique()
    fill(array, image)
    return image


def clear_staging() -> None:
    """Release the staging image (e.g. before loading another large volume)."""
    _STAGING.clear()


def image_from_array(array: np.ndarray, ijk_to_ras: np.ndarray, reuse: bool = False) -> Any:
    """SimpleITK image (copy of ``array``) placed with the LPS geometry of ``ijk_to_ras``.

    ``reuse``: copy into MedSeg's staging image (see :func:`_staged_image`) instead of a new one; for the
    input of a method, which no result keeps."""
    import SimpleITK as sitk

    from MedSegLib.volume_nodes import RAS_FROM_LPS, split_ijk_to_ras

    if array.dtype == bool:
        array = array.view(np.uint8)
    image = _staged_image(array) if reuse else None
    if image is None:
        image = sitk.GetImageFromArray(array)
    spacing, direction, origin = split_ijk_to_ras(RAS_FROM_LPS @ ijk_to_ras)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in origin))
    return image


def radius_in_voxels(radius_mm: float, spacing_ijk: Sequence[float], minimum: int = 0) -> List[int]:
    """Per-axis (i, j, k) kernel radius in voxels for a physical radius (anisotropic voxels)."""
    return [max(minimum, int(round(radius_mm / float(s)))) for s in spacing_ijk]


def require_nonempty(mask: np.ndarray, method: str, hint: str = "") -> np.ndarray:
    """An empty result is almost always wrong parameters; say so instead of writing an empty segment."""
    if not np.any(mask):
        raise UserInputError(f"{method}: the result is empty{(' - ' + hint) if hint else ''}")
    return mask
