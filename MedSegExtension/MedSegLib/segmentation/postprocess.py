"""Post-processing of binary masks, as the Segment Editor's Islands / Smoothing / Margin / Hollow /
Logical operators / Mask-by-intensity effects do, but sized in millimetres on anisotropic voxels.

All functions take and return boolean numpy arrays ``[k, j, i]``; sizes in mm use ``spacing_ijk``.
Heavy lifting is SimpleITK (multi-threaded). Island clean-ups and hysteresis work on the mask's runs
(``run_components``: ITK's numbering, no voxel label image); ``label_islands`` / ``split_islands`` use
ITK's relabel filter (sorted by size, ties by first occurrence).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError

SMOOTHING_METHODS = ("median", "opening", "closing", "gaussian")
LOGICAL_OPERATIONS = ("copy", "union", "intersect", "subtract", "invert", "clear", "fill")
HOLLOW_MODES = ("inside", "medial", "outside")


def _image(mask: np.ndarray, spacing_ijk: Optional[Sequence[float]] = None) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    if spacing_ijk is not None:
        image.SetSpacing(tuple(float(s) for s in spacing_ijk))
    return image


def _array(image: Any) -> np.ndarray:
    """A filter's 0/1 output as a bool array: a read-only view of the image's own buffer (no copy) for
    uint8 images, which every binary filter here writes."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.core import array_view

    if image.GetPixelID() == sitk.sitkUInt8:
        return array_view(image, bool)
    return sitk.GetArrayViewFromImage(image).astype(bool)


def label_islands(mask: np.ndarray, fully_connected: bool = False) -> np.ndarray:
    """Component labels 1..n sorted by decreasing size (0 = background)."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.core import array_view

    components = sitk.ConnectedComponent(_image(mask), fully_connected)
    relabelled = sitk.RelabelComponent(components, 0, True)
    del components  # peak = two uint32 images; the result is a read-only view of the second (no copy)
    return array_view(relabelled)


def keep_largest_island(mask: np.ndarray, fully_connected: bool = False) -> np.ndarray:
    """The largest component (ties: the first in raster order, as ITK's relabelling sorts them)."""
    if not np.any(mask):
        return np.asarray(mask, dtype=bool)
    from MedSegLib.segmentation.run_components import run_components

    components = run_components(mask, fully_connected)
    return components.paint_numbers([int(np.argmax(components.sizes[1:])) + 1])


def remove_small_islands(mask: np.ndarray, min_voxels: int, fully_connected: bool = False) -> np.ndarray:
    """Drop components smaller than ``min_voxels`` (the Islands effect's MinimumSize).

    Components come from the mask's runs (``run_components``), not a uint32 voxel label image: the
    peak stays at the input mask plus the new one."""
    if min_voxels <= 1 or not np.any(mask):
        return np.asarray(mask, dtype=bool)
    from MedSegLib.segmentation.run_components import run_components

    components = run_components(mask, fully_connected)
    return components.paint(components.sizes >= int(min_voxels))


SLAB_VOXELS = 1 << 22


def slices_per_slab(volume: np.ndarray, voxels: Optional[int] = None) -> int:
    """How many slices (first axis) hold about ``voxels`` (default ``SLAB_VOXELS``) voxels: the step of
    slab-wise passes whose temporaries must stay small whatever the volume's size."""
    return max(1, (SLAB_VOXELS if voxels is None else voxels) // max(1, volume[0].size))


def intersect_by_slab(mask: np.ndarray, condition: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``mask & condition(slices)``, with the condition built a slab of slices at a time (a whole-volume
    condition would be one more byte per voxel); in place when ``mask`` is writable."""
    out = mask if mask.flags.writeable else mask.copy()
    step = slices_per_slab(out)
    for start in range(0, out.shape[0], step):
        part = slice(start, start + step)
        out[part] &= condition(part)
    return out


def label_sizes(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value 0..max (int64), counted a slab at a time: ``np.bincount`` casts its input to
    8-byte indices, which for the whole volume would be 8 bytes per voxel on top of the label image."""
    sizes = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int64)
    step = slices_per_slab(labels)
    for start in range(0, labels.shape[0], step):
        sizes += np.bincount(labels[start : start + step].ravel(), minlength=sizes.size)
    return sizes


def islands_containing(mask: np.ndarray, seeds_ijk: np.ndarray, fully_connected: bool = False) -> np.ndarray:
    """Components of ``mask`` that contain at least one seed voxel (i, j, k)."""
    if len(seeds_ijk) == 0 or not np.any(mask):
        return np.zeros(mask.shape, dtype=bool)
    from MedSegLib.segmentation.run_components import run_components

    components = run_components(mask, fully_connected)
    seeds = np.asarray(seeds_ijk, dtype=np.int64)
    return components.paint_numbers([components.component_at(int(k), int(j), int(i)) for i, j, k in seeds])


def split_islands(mask: np.ndarray, min_voxels: int = 1, fully_connected: bool = False) -> List[np.ndarray]:
    """One mask per component (largest first), components below ``min_voxels`` dropped."""
    labels = label_islands(mask, fully_connected)
    counts = label_sizes(labels)
    return [labels == value for value in range(1, len(counts)) if counts[value] >= max(1, min_voxels)]


def fill_holes(mask: np.ndarray, per_slice: bool = False, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Fill cavities not connected to the border; ``per_slice`` fills each axial slice (k) in 2D,
    which also closes tubes open at the top/bottom of the scan (e.g. bone marrow, airway lumen).
    ``out`` (per slice only) receives the result; it may be ``mask`` itself (filled in place)."""
    import SimpleITK as sitk

    if not per_slice:
        return _array(sitk.BinaryFillhole(_image(mask), fullyConnected=False, foregroundValue=1))
    from scipy import ndimage

    out = np.empty(mask.shape, dtype=bool) if out is None else out
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k]) if mask[k].any() else False
    return out


def _radius(size_mm: float, spacing_ijk: Sequence[float]) -> List[int]:
    return [max(0, int(round(size_mm / 2.0 / float(s)))) for s in spacing_ijk]


def smooth(mask: np.ndarray, method: str, kernel_mm: float, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Smoothing effect: median / opening / closing with a kernel of ``kernel_mm`` diameter, or a
    Gaussian of sigma ``kernel_mm / 2`` re-thresholded at 0.5."""
    import SimpleITK as sitk

    if method not in SMOOTHING_METHODS:
        raise UserInputError(f"smoothing method must be one of {', '.join(SMOOTHING_METHODS)}, got {method!r}")
    if kernel_mm <= 0:
        return np.asarray(mask, dtype=bool)
    radius = _radius(kernel_mm, spacing_ijk)
    # An infinite spacing marks an axis the kernel must not extend along (in-plane operations).
    spacing = [float(s) if np.isfinite(s) else 1.0 for s in spacing_ijk]
    if method == "gaussian":
        image = _image(mask, spacing)
        blurred = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), kernel_mm / 2.0)
        return sitk.GetArrayViewFromImage(blurred) >= 0.5
    if not any(radius):
        return np.asarray(mask, dtype=bool)
    if method == "median":
        return _array(sitk.BinaryMedian(_image(mask, spacing), radius, 1, 0))
    # Erode/dilate explicitly: SimpleITK's BinaryMorphologicalOpening adds voxels outside the input
    # (checked with SimpleITK 2.5.7), which an opening must never do. ``morphology`` gives exactly
    # sitk.BinaryErode / BinaryDilate with ITK's ball (tested voxel for voxel), ~40x faster.
    from MedSegLib.segmentation.morphology import binary_dilate, binary_erode

    mask = np.asarray(mask, dtype=bool)
    if method == "opening":
        eroded = binary_erode(mask, radius, "ball", boundary_to_foreground=False)
        return binary_dilate(eroded, radius, "ball")
    dilated = binary_dilate(mask, radius, "ball")
    closed = binary_erode(dilated, radius, "ball", boundary_to_foreground=True)
    closed |= mask
    return closed


def signed_distance_mm(mask: np.ndarray, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Signed distance to the mask boundary in mm (negative inside), float32."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.core import array_view

    distance = sitk.SignedMaurerDistanceMap(
        _image(mask, spacing_ijk), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return array_view(distance)  # read-only view of the filter's float32 buffer (no copy)


# Voxels per slab for slab-wise margins: the distance map of a slab (float32) stays ~32 MiB.
MARGIN_SLAB_VOXELS = 1 << 23
# Margins whose Euclidean ball has at most this many kernel rows (~10 mm on 0.8 mm voxels) run as a
# run-length erosion/dilation with that ball (morphology.distance_rows): exact, 10-20x faster than the
# distance map for a few mm and no memory beyond the output; wider balls use slab-wise distance maps.
MARGIN_KERNEL_ROWS = 600


def margin(mask: np.ndarray, margin_mm: float, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Grow (positive) or shrink (negative) by ``margin_mm`` using the Euclidean distance in mm,
    so the result is the same on anisotropic voxels as on isotropic ones. When shrinking, anatomy cut
    by the edge of the scan is assumed to continue beyond it (the border does not erode).

    Margins of up to ``MARGIN_KERNEL_ROWS`` kernel rows are an erosion/dilation with the Euclidean ball
    itself (no memory beyond the output). Wider ones use distance maps, on large volumes in slabs of
    slices with a halo deeper than the margin: whether a voxel lies within ``margin_mm`` of the boundary
    depends only on voxels within that distance, so the result is the same as for the whole volume, with
    the distance map's memory bounded by the slab."""
    from MedSegLib.segmentation import morphology

    mask = np.asarray(mask, dtype=bool)
    if margin_mm == 0 or not np.any(mask):
        return mask
    spacing = tuple(float(s) for s in spacing_ijk)
    if len(morphology.distance_rows(abs(float(margin_mm)), spacing)[0]) <= MARGIN_KERNEL_ROWS:
        if margin_mm > 0:
            grown = morphology.dilate_distance(mask, margin_mm, spacing)
            grown |= mask
            return grown
        shrunk = morphology.erode_distance(mask, -margin_mm, spacing)
        shrunk &= mask
        return shrunk
    halo = int(np.ceil(abs(margin_mm) / float(spacing_ijk[2]))) + 1
    slab = slices_per_slab(mask, MARGIN_SLAB_VOXELS)
    if mask.shape[0] <= slab + 2 * halo:
        return _margin_whole(mask, margin_mm, spacing_ijk)
    out = np.empty(mask.shape, dtype=bool)
    for start in range(0, mask.shape[0], slab):
        stop = min(start + slab, mask.shape[0])
        low, high = max(0, start - halo), min(mask.shape[0], stop + halo)
        out[start:stop] = _margin_whole(mask[low:high], margin_mm, spacing_ijk)[start - low : stop - low]
    return out


def _margin_whole(mask: np.ndarray, margin_mm: float, spacing_ijk: Sequence[float]) -> np.ndarray:
    if not np.any(mask):
        return mask
    if margin_mm > 0:
        return mask | (signed_distance_mm(mask, spacing_ijk) <= margin_mm)
    pad = [int(np.ceil(-margin_mm / float(s))) + 1 for s in spacing_ijk[::-1]]
    padded = np.pad(mask, [(p, p) for p in pad], mode="edge")
    # Shrinking = growing the background: an object voxel goes when a background voxel centre lies
    # within |margin| (Maurer's outside distances are exact centre-to-centre distances).
    background_distance = signed_distance_mm(~padded, spacing_ijk)
    inner = background_distance[
        pad[0] : pad[0] + mask.shape[0], pad[1] : pad[1] + mask.shape[1], pad[2] : pad[2] + mask.shape[2]
    ]
    return mask & (inner > -margin_mm)


def hollow(mask: np.ndarray, thickness_mm: float, spacing_ijk: Sequence[float], mode: str = "inside") -> np.ndarray:
    """Shell of ``thickness_mm`` on the inside, centred on, or outside the surface (Hollow effect)."""
    if mode not in HOLLOW_MODES:
        raise UserInputError(f"hollow mode must be one of {', '.join(HOLLOW_MODES)}, got {mode!r}")
    if thickness_mm <= 0:
        raise UserInputError(f"shell thickness must be > 0 mm, got {thickness_mm:g}")
    mask = np.asarray(mask, dtype=bool)
    if mode == "inside":
        return mask & ~margin(mask, -thickness_mm, spacing_ijk)
    if mode == "outside":
        return margin(mask, thickness_mm, spacing_ijk) & ~mask
    half = thickness_mm / 2.0
    return margin(mask, half, spacing_ijk) & ~margin(mask, -half, spacing_ijk)


def logical(operation: str, mask: np.ndarray, modifier: Optional[np.ndarray] = None) -> np.ndarray:
    """Logical operators effect: the new content of ``mask`` given ``modifier``."""
    if operation not in LOGICAL_OPERATIONS:
        raise UserInputError(f"logical operation must be one of {', '.join(LOGICAL_OPERATIONS)}, got {operation!r}")
    mask = np.asarray(mask, dtype=bool)
    if operation in ("copy", "union", "intersect", "subtract"):
        if modifier is None:
            raise UserInputError(f"logical operation {operation!r} needs a modifier segment")
        modifier = np.asarray(modifier, dtype=bool)
        if modifier.shape != mask.shape:
            raise UserInputError(f"modifier segment shape {modifier.shape} differs from {mask.shape}")
    if operation == "copy":
        return modifier.copy()
    if operation == "union":
        return mask | modifier
    if operation == "intersect":
        return mask & modifier
    if operation == "subtract":
        return mask & ~modifier
    if operation == "invert":
        return ~mask
    if operation == "clear":
        return np.zeros(mask.shape, dtype=bool)
    return np.ones(mask.shape, dtype=bool)


def mask_by_intensity(
    mask: np.ndarray, array: np.ndarray, lower: Optional[float], upper: Optional[float]
) -> np.ndarray:
    """Keep only voxels whose intensity is within [lower, upper] (the editable intensity range)."""
    from MedSegLib.segmentation.params import check_range

    check_range(lower, upper, "mask by intensity", "intensity")
    result = np.asarray(mask, dtype=bool).copy()
    if lower is not None:
        result &= array >= lower
    if upper is not None:
        result &= array <= upper
    return result


def hysteresis(weak: np.ndarray, strong: np.ndarray, fully_connected: bool = True) -> np.ndarray:
    """Components of ``weak`` that contain at least one ``strong`` voxel (two-level threshold): what ITK's
    binary reconstruction by dilation of ``strong & weak`` under ``weak`` gives, computed on the runs of
    ``weak`` (no image copies: the output mask is the only whole-volume allocation)."""
    from MedSegLib.segmentation.run_components import run_components

    components = run_components(weak, fully_connected)
    return components.paint(components.touching(strong))
