"""Intensity thresholds: manual range, Otsu, multi-Otsu and percentiles.

Manual and percentile thresholds are plain numpy comparisons on the volume's own voxels (no copy to
ITK needed); Otsu variants use SimpleITK's histogram filters, optionally computed inside a mask so
that e.g. air outside the body does not dominate the histogram.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask, array_view, require_nonempty
from MedSegLib.segmentation.params import SEEDS_NONE, Method, Param, check_range


def threshold_mask(array: np.ndarray, lower: float | None, upper: float | None) -> np.ndarray:
    """``lower <= v <= upper`` (either bound may be None = open); with both bounds the second test is
    applied a slab at a time, so the output is the only whole-volume mask."""
    from MedSegLib.segmentation import postprocess

    if lower is None and upper is None:
        return np.ones(array.shape, dtype=bool)
    if lower is None:
        return array <= upper
    if upper is None:
        return array >= lower
    return postprocess.intersect_by_slab(array >= lower, lambda part: array[part] <= upper)


def run_threshold(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    lower, upper = p["lower"], p["upper"]
    check_range(lower, upper, ctx.method_name)
    if lower is None and upper is None:
        raise UserInputError(f"{ctx.method_name}: give --lower and/or --upper")
    mask = ctx.finish(threshold_mask(ctx.array, lower, upper))
    require_nonempty(mask, ctx.method_name, f"no voxel in [{_fmt(lower)}, {_fmt(upper)}]")
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def _fmt(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


def _masked_image(ctx: SegmentationContext) -> Any:
    return ctx.like(ctx.mask) if ctx.mask is not None else None


def otsu_threshold(ctx: SegmentationContext, bins: int) -> float:
    """Otsu's threshold of the volume (inside the context mask if any)."""
    return otsu(ctx, bins)[0]


def otsu(ctx: SegmentationContext, bins: int, bright: bool = True) -> Tuple[float, Any]:
    """(Otsu's threshold, the filter's binary output): 1 where the value is above the threshold
    (``bright``) or at/below it, as ITK labels them (inside = value <= threshold); the output image is
    used as the segment's voxels, so MedSeg adds no pass over the volume."""
    import SimpleITK as sitk

    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(int(bins))
    otsu.SetInsideValue(0 if bright else 1)
    otsu.SetOutsideValue(1 if bright else 0)
    mask_image = _masked_image(ctx)
    if mask_image is not None:
        otsu.SetMaskValue(1)
        output = otsu.Execute(ctx.image, mask_image)
    else:
        output = otsu.Execute(ctx.image)
    return float(otsu.GetThreshold()), output


def run_otsu(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    threshold, output = otsu(ctx, p["bins"], p["foreground"] == "bright")
    # The 0/1 uint8 output viewed as bool (same bytes); with a mask the threshold is the masked histogram's
    # and the result is restricted to the mask by ``finish``.
    mask = ctx.finish(array_view(output, bool))
    require_nonempty(mask, ctx.method_name, f"Otsu threshold {threshold:g}")
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def multi_otsu_thresholds(ctx: SegmentationContext, classes: int, bins: int) -> List[float]:
    """The ``classes - 1`` multi-Otsu thresholds (inside the context mask if any), ascending."""
    return multi_otsu(ctx, classes, bins)[0]


def multi_otsu(ctx: SegmentationContext, classes: int, bins: int) -> Tuple[List[float], Any]:
    """(thresholds, class label image or None).

    Without a mask, the filter's own output is the class image (class index 0..N-1 per voxel, computed
    by ITK's multi-threaded labeller in the same call), so MedSeg adds no pass over the volume. With a
    mask, the thresholds come from a histogram of the masked voxels only (a 1-D image of them) and the
    label image is None (the caller labels the masked voxels)."""
    import SimpleITK as sitk

    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(int(classes) - 1)
    otsu.SetNumberOfHistogramBins(int(bins))
    otsu.SetValleyEmphasis(False)
    if ctx.mask is None:
        labelled = otsu.Execute(ctx.image)
        return sorted(float(t) for t in otsu.GetThresholds()), labelled
    values = ctx.array[ctx.mask]
    if values.size == 0:
        raise UserInputError(f"{ctx.method_name}: the mask is empty")
    otsu.Execute(sitk.GetImageFromArray(values.reshape(1, 1, -1)))
    return sorted(float(t) for t in otsu.GetThresholds()), None


def _class_labels(ctx: SegmentationContext, thresholds: List[float]) -> np.ndarray:
    """Class index + 1 of every voxel inside the context mask (0 outside), uint8."""
    labels = np.zeros(ctx.shape, dtype=np.uint8)
    inside = ctx.mask
    labels[inside] = 1
    for threshold in thresholds:  # class = number of thresholds below the value (ITK: value > t -> next class)
        labels += (ctx.array > threshold) & inside
    return labels


def run_multi_otsu(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    """One segment per intensity class, all views of one label image (see :class:`SegmentMask`): the
    per-class masks are never built here, the writer imports the label image as it is."""
    thresholds, labelled = multi_otsu(ctx, p["classes"], p["bins"])
    if labelled is not None:
        labels, offset = array_view(labelled), 0  # class index per voxel
    else:
        labels, offset = _class_labels(ctx, thresholds), 1
    segments = []
    first = 0 if p["include_lowest"] else 1
    for index in range(first, len(thresholds) + 1):
        segment = SegmentMask(f"{p['segment_name']}_{index + 1}", labels=labels, value=index + offset)
        if segment.any():
            segments.append(segment)
    if not segments:
        raise UserInputError(f"{ctx.method_name}: every class is empty")
    return segments


def run_percentile(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    low, high = p["lower_percentile"], p["upper_percentile"]
    check_range(low, high, ctx.method_name, "percentile")
    values = ctx.array[ctx.mask] if ctx.mask is not None else ctx.array
    if values.size == 0:
        raise UserInputError(f"{ctx.method_name}: the mask is empty")
    lower, upper = (float(v) for v in np.percentile(values, [low, high]))
    mask = ctx.finish(threshold_mask(ctx.array, lower, upper))
    require_nonempty(mask, ctx.method_name)
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


SEGMENT_NAME = Param("segment_name", str, "Segment", "name of the output segment")
TERMINOLOGY = Param(
    "terminology", str, "", "terminology of the segment by its 3D Slicer label (e.g. liver, bone); default: name"
)
BINS = Param("bins", int, 256, "histogram bins", minimum=2, maximum=65536)

METHODS = [
    Method(
        "threshold",
        "Threshold",
        "voxels with lower <= value <= upper",
        run_threshold,
        (
            Param("lower", float, None, "lowest intensity included", "HU"),
            Param("upper", float, None, "highest intensity included", "HU"),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_NONE,
        "threshold",
    ),
    Method(
        "otsu",
        "Otsu threshold",
        "automatic two-class threshold (Otsu 1979), computed inside --mask if given",
        run_otsu,
        (
            BINS,
            Param("foreground", str, "bright", "which class is the segment", choices=("bright", "dark")),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_NONE,
        "threshold",
    ),
    Method(
        "multi-otsu",
        "Multi-Otsu",
        "automatic thresholds into N intensity classes; one segment per class",
        run_multi_otsu,
        (
            Param("classes", int, 3, "number of intensity classes", minimum=2, maximum=10),
            BINS,
            Param("include_lowest", bool, False, "also output the darkest class (usually background)"),
            Param("segment_name", str, "Class", "segment name prefix"),
        ),
        SEEDS_NONE,
        "threshold",
    ),
    Method(
        "percentile",
        "Percentile threshold",
        "voxels between two percentiles of the intensity histogram",
        run_percentile,
        (
            Param("lower_percentile", float, 90.0, "lower percentile", "%", 0.0, 100.0),
            Param("upper_percentile", float, 100.0, "upper percentile", "%", 0.0, 100.0),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_NONE,
        "threshold",
    ),
]
