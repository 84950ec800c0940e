"""Seeded methods: connected threshold, confidence connected, level set, fast marching, watershed.

Each seeded method grows from voxels given as RAS seeds. Where ITK needs an intensity range and the user
gave none, it is taken from the seed neighbourhood (mean +/- k SD, the first step of confidence
connected) so one click is enough. ``leak_radius_mm`` cuts bridges thinner than that radius between the
grown region and neighbours of similar intensity (erode, keep the seeded part, dilate back inside the
original region) - the classic fix for region growing leaking into adjacent organs.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation import postprocess
from MedSegLib.segmentation.core import (
    SegmentationContext,
    SegmentMask,
    array_view,
    radius_in_voxels,
    require_nonempty,
)
from MedSegLib.segmentation.params import (
    SEEDS_OPTIONAL,
    SEEDS_REQUIRED,
    Method,
    Param,
    check_range,
)
from MedSegLib.segmentation.threshold import SEGMENT_NAME, TERMINOLOGY


def _seed_list(ctx: SegmentationContext) -> List[Tuple[int, int, int]]:
    indices = ctx.seed_indices()
    if len(indices) == 0:
        raise UserInputError(f"{ctx.method_name}: needs at least one seed point (--seeds R,A,S)")
    return [tuple(int(v) for v in row) for row in indices]


def seed_neighbourhood_values(
    ctx: SegmentationContext, radius_mm: float, array: Optional[np.ndarray] = None
) -> np.ndarray:
    """Values of ``array`` (default: the volume) within ``radius_mm`` of any seed (a ball in mm,
    anisotropy aware), read from small boxes around the seeds only."""
    array = ctx.array if array is None else array
    spacing = ctx.spacing_ijk
    radius = radius_in_voxels(radius_mm, spacing)
    values = []
    for i, j, k in ctx.seed_indices():
        k0, k1 = max(0, k - radius[2]), min(ctx.shape[0], k + radius[2] + 1)
        j0, j1 = max(0, j - radius[1]), min(ctx.shape[1], j + radius[1] + 1)
        i0, i1 = max(0, i - radius[0]), min(ctx.shape[2], i + radius[0] + 1)
        kk, jj, ii = np.meshgrid(
            (np.arange(k0, k1) - k) * spacing[2],
            (np.arange(j0, j1) - j) * spacing[1],
            (np.arange(i0, i1) - i) * spacing[0],
            indexing="ij",
        )
        ball = kk**2 + jj**2 + ii**2 <= radius_mm**2 + 1e-9
        values.append(array[k0:k1, j0:j1, i0:i1][ball])
    return np.concatenate(values).astype(np.float64)


def seed_range(ctx: SegmentationContext, p: Dict[str, Any]) -> Tuple[float, float]:
    """The user's --lower/--upper, or seed neighbourhood mean +/- multiplier x SD for missing ones."""
    lower, upper = p.get("lower"), p.get("upper")
    check_range(lower, upper, ctx.method_name)
    if lower is None or upper is None:
        values = seed_neighbourhood_values(ctx, p["neighborhood_mm"])
        mean, sd = float(values.mean()), float(values.std())
        half_width = p["multiplier"] * max(sd, 1e-6)
        lower = mean - half_width if lower is None else lower
        upper = mean + half_width if upper is None else upper
        check_range(lower, upper, ctx.method_name)
    return float(lower), float(upper)


def cut_leaks(mask: np.ndarray, ctx: SegmentationContext, radius_mm: float) -> np.ndarray:
    """Remove parts joined to the seeded region only through necks thinner than ``radius_mm``.

    Cavities (vessels inside an organ) are filled first so the erosion does not eat the organ from
    inside; the seeded core component is the one containing - or nearest to - each seed.
    """
    if radius_mm <= 0 or not np.any(mask):
        return mask
    spacing = ctx.spacing_ijk
    core = postprocess.margin(postprocess.fill_holes(mask), -radius_mm, spacing)
    labels = postprocess.label_islands(core)
    wanted = set()
    for i, j, k in ctx.seed_indices():
        value = _nearest_label(labels, (k, j, i), radius_mm, spacing)
        if value:
            wanted.add(value)
    if not wanted:
        return mask  # the seeded part is thinner than the radius everywhere: nothing to cut safely
    seeded_core = np.isin(labels, sorted(wanted))
    return postprocess.margin(seeded_core, radius_mm, spacing) & mask


def _nearest_label(labels: np.ndarray, kji: Tuple[int, int, int], radius_mm: float, spacing_ijk) -> int:
    """Label at ``kji``, else the nearest non-zero label within 2 x radius (0 if none)."""
    k, j, i = kji
    if labels[k, j, i]:
        return int(labels[k, j, i])
    reach = radius_in_voxels(2.0 * radius_mm, spacing_ijk, minimum=1)
    box = (
        slice(max(0, k - reach[2]), k + reach[2] + 1),
        slice(max(0, j - reach[1]), j + reach[1] + 1),
        slice(max(0, i - reach[0]), i + reach[0] + 1),
    )
    window = labels[box]
    found = np.argwhere(window > 0)
    if found.size == 0:
        return 0
    offsets = (found + [box[0].start, box[1].start, box[2].start] - [k, j, i]) * np.asarray(spacing_ijk)[::-1]
    nearest = found[np.argmin((offsets**2).sum(axis=1))]
    return int(window[tuple(nearest)])


def run_region_growing(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    import SimpleITK as sitk

    seeds = _seed_list(ctx)
    lower, upper = seed_range(ctx, p)
    ctx.report(0.2, f"growing in [{lower:.0f}, {upper:.0f}]")
    grown = sitk.ConnectedThreshold(ctx.image, seedList=seeds, lower=lower, upper=upper, replaceValue=1)
    mask = array_view(grown, bool)  # the filter's 0/1 output read as bool in place: no copy
    mask = cut_leaks(mask, ctx, p["leak_radius_mm"])
    mask = ctx.finish(mask)
    require_nonempty(mask, ctx.method_name, f"seed intensities outside [{lower:g}, {upper:g}]")
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def run_confidence_connected(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    _seed_list(ctx)
    radius = max(1, int(round(p["neighborhood_mm"] / float(min(ctx.spacing_ijk)))))
    mask = confidence_connected(
        ctx.array, ctx.seed_indices()[:, ::-1], radius, float(p["multiplier"]), int(p["iterations"])
    )
    mask = cut_leaks(mask, ctx, p["leak_radius_mm"])
    mask = ctx.finish(mask)
    require_nonempty(mask, ctx.method_name, "try a larger --multiplier")
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def confidence_connected(
    array: np.ndarray, seeds_kji: np.ndarray, radius: int, multiplier: float, iterations: int
) -> np.ndarray:
    """ITK's ConfidenceConnected (face connectivity) with the threshold masks and the flood fills done on
    runs (``run_components.connected_to_seeds``): the output mask is the only whole-volume array (ITK also
    keeps a visited-flags image and its output beside the input: ~2x the int16 input).

    As ITK: the first range is mean +/- ``multiplier`` SD over the seeds' (2 ``radius`` + 1)^3 boxes (edge
    voxels repeated beyond the border), widened to hold every seed's value, clipped to the pixel type and
    cast to it (truncation); each iteration re-estimates mean and SD (n - 1) over the grown region, stopping
    early when the SD is zero."""
    from MedSegLib.segmentation.run_components import connected_to_seeds
    from MedSegLib.segmentation.threshold import threshold_mask

    seeds_kji = np.asarray(seeds_kji, dtype=np.int64).reshape(-1, 3)
    values = array[tuple(seeds_kji.T)].astype(np.float64)
    if radius > 0:
        total = sum_of_squares = 0.0
        for seed in seeds_kji:
            box = np.ix_(*[np.clip(np.arange(c - radius, c + radius + 1), 0, n - 1) for c, n in zip(seed, array.shape)])
            neighbourhood = array[box].astype(np.float64)
            total += float(neighbourhood.mean())
            sum_of_squares += float((neighbourhood * neighbourhood).sum())
        count = len(seeds_kji) * (2 * radius + 1) ** 3
        mean = total / len(seeds_kji)
        variance = (sum_of_squares - mean * mean * count) / (count - 1.0)
    else:
        mean = float(values.sum()) / len(values)
        variance = (float((values * values).sum()) - float(values.sum()) ** 2 / len(values)) / (len(values) - 1.0)
    info = np.iinfo(array.dtype) if np.issubdtype(array.dtype, np.integer) else np.finfo(array.dtype)

    def grown(mean: float, variance: float) -> np.ndarray:
        sd = math.sqrt(variance) if variance >= 0 else float("nan")  # ITK's std::sqrt of a negative: NaN
        lower = min(mean - multiplier * sd, float(values.min()))
        upper = max(mean + multiplier * sd, float(values.max()))
        lower, upper = max(lower, float(info.min)), min(upper, float(info.max))
        if np.issubdtype(array.dtype, np.integer):  # static_cast to the pixel type truncates toward zero
            lower, upper = float(np.trunc(lower)), float(np.trunc(upper))
        return connected_to_seeds(threshold_mask(array, lower, upper), seeds_kji)

    mask = grown(mean, variance)
    step = postprocess.slices_per_slab(array)
    for _ in range(iterations):
        total = sum_of_squares = 0.0
        count = 0
        for start in range(0, array.shape[0], step):
            sample = array[start : start + step][mask[start : start + step]].astype(np.float64)
            total += float(sample.sum())
            sum_of_squares += float((sample * sample).sum())
            count += sample.size
        if count < 2:  # a one-voxel region has no SD (ITK divides by zero here): keep it as it is
            break
        mean = total / count
        variance = (sum_of_squares - total * total / count) / (count - 1.0)
        if abs(variance) < 1e-12:
            break
        del mask
        mask = grown(mean, variance)
    return mask


def _seed_balls(ctx: SegmentationContext, radius_mm: float, seeds: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of balls of ``radius_mm`` around seed voxels."""
    mask = np.zeros(ctx.shape, dtype=bool)
    indices = ctx.seed_indices() if seeds is None else seeds
    mask[indices[:, 2], indices[:, 1], indices[:, 0]] = True
    if radius_mm <= 0:
        return mask
    return postprocess.margin(mask, radius_mm, ctx.spacing_ijk)


def _seed_box(ctx: SegmentationContext, pad_ijk: Any) -> Tuple[slice, slice, slice]:
    """Bounding box (k, j, i slices) of all seeds padded by ``pad_ijk`` voxels, clipped to the volume."""
    indices = ctx.seed_indices()
    low = np.maximum(indices.min(axis=0) - pad_ijk, 0)
    high = np.minimum(indices.max(axis=0) + pad_ijk + 1, np.array(ctx.shape[::-1]))
    return (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))


def _roi(ctx: SegmentationContext, roi_mm: float) -> Tuple[slice, slice, slice]:
    """Bounding box (k, j, i slices) of all seeds padded by ``roi_mm`` (0 = whole volume)."""
    if roi_mm <= 0:
        return (slice(None), slice(None), slice(None))
    return _seed_box(ctx, radius_in_voxels(roi_mm, ctx.spacing_ijk))


def _cropped(ctx: SegmentationContext, box: Tuple[slice, slice, slice]) -> Tuple[SegmentationContext, np.ndarray]:
    """(context of ``ctx.array[box]`` with its shifted geometry and the same seeds, offset (i, j, k))."""
    offset = np.array([box[2].start or 0, box[1].start or 0, box[0].start or 0])
    sub_ctx = SegmentationContext(
        np.ascontiguousarray(ctx.array[box]), ctx.ijk_to_ras.copy(), seeds=list(ctx.seeds), method_name=ctx.method_name
    )
    sub_ctx.ijk_to_ras[:3, 3] = ctx.ijk_to_ras[:3, :3] @ offset + ctx.ijk_to_ras[:3, 3]
    return sub_ctx, offset


def edge_speed(image: Any, sigma_mm: float, inside: Any = None, alpha: Optional[float] = None) -> Any:
    """Speed image in [0, 1]: ~1 in homogeneous regions like the seed's, ~0 on strong edges
    (sigmoid of the gradient magnitude; K1 = median gradient inside the seeds' neighbourhood - ``inside``
    is a boolean mask or a callable giving those gradient values -, K2 = 95th percentile of the gradient,
    alpha = -(K2 - K1) / 6, beta = (K1 + K2) / 2)."""
    import SimpleITK as sitk

    gradient = sitk.GradientMagnitudeRecursiveGaussian(image, sigma=float(sigma_mm))
    g = sitk.GetArrayViewFromImage(gradient)  # a view: gradient stays alive below
    sample = g[::2, ::2, ::2]  # percentiles of every 8th voxel: same value, 8x less sorting
    if callable(inside):
        inside_values = inside(g)
    elif inside is not None and np.any(inside):
        inside_values = g[inside]
    else:
        inside_values = sample.ravel()
    k1 = float(np.median(inside_values))
    k2 = float(np.percentile(sample, 95))
    if k2 <= k1:
        k2 = k1 + 1.0
    alpha = -(k2 - k1) / 6.0 if alpha is None else alpha
    beta = (k1 + k2) / 2.0
    return sitk.Sigmoid(gradient, alpha=alpha, beta=beta, outputMaximum=1.0, outputMinimum=0.0), gradient


def run_level_set(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    """Level set from balls around the seeds: intensity-driven (threshold level set, ITK-SNAP's
    "thresholding" mode) or edge-driven (geodesic active contour on a sigmoid edge map)."""
    import SimpleITK as sitk

    _seed_list(ctx)
    roi = _roi(ctx, p["roi_mm"])
    sub_ctx, offset = _cropped(ctx, roi)
    sub = sub_ctx.array
    seeds = ctx.seed_indices() - offset
    # Initial level set: signed distance (mm) to balls around the seeds, analytic so that even a ball of
    # one or two voxels has a proper negative inside (a Maurer map of such a ball is all zeros).
    spacing = ctx.spacing_ijk
    radius_mm = max(float(p["seed_radius_mm"]), 1.5 * float(spacing.max()))
    k, j, i = np.ogrid[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
    phi = np.full(sub.shape, np.inf, dtype=np.float32)
    for si, sj, sk in seeds:
        d2 = ((i - si) * spacing[0]) ** 2 + ((j - sj) * spacing[1]) ** 2 + ((k - sk) * spacing[2]) ** 2
        np.minimum(phi, np.sqrt(d2).astype(np.float32) - radius_mm, out=phi)
    initial = phi < 0
    distance = sitk.GetImageFromArray(phi)
    image = sitk.Cast(sub_ctx.image, sitk.sitkFloat32)
    distance.CopyInformation(image)
    iterations = int(p["iterations"])
    ctx.report(0.1, "level set")
    if p["feature"] == "intensity":
        sub_ctx.seeds = []
        lower, upper = p.get("lower"), p.get("upper")
        check_range(lower, upper, ctx.method_name)
        if lower is None or upper is None:
            values = sub[initial] if np.any(initial) else sub.ravel()
            mean, sd = float(values.mean()), float(values.std())
            lower = mean - p["multiplier"] * sd if lower is None else lower
            upper = mean + p["multiplier"] * sd if upper is None else upper
        level_set = sitk.ThresholdSegmentationLevelSetImageFilter()
        level_set.SetLowerThreshold(float(lower))
        level_set.SetUpperThreshold(float(upper))
        level_set.SetMaximumRMSError(0.002)
        level_set.SetNumberOfIterations(iterations)
        level_set.SetCurvatureScaling(float(p["curvature"]))
        level_set.SetPropagationScaling(1.0)
        result = level_set.Execute(distance, image)
    else:
        speed, _ = edge_speed(image, p["sigma_mm"], initial)
        level_set = sitk.GeodesicActiveContourLevelSetImageFilter()
        level_set.SetPropagationScaling(float(p["propagation"]))
        level_set.SetCurvatureScaling(float(p["curvature"]))
        level_set.SetAdvectionScaling(1.0)
        level_set.SetMaximumRMSError(0.002)
        level_set.SetNumberOfIterations(iterations)
        result = level_set.Execute(distance, sitk.Cast(speed, sitk.sitkFloat32))
    sub_mask = sitk.GetArrayViewFromImage(result) < 0
    sub_mask = postprocess.islands_containing(sub_mask, seeds)
    mask = np.zeros(ctx.shape, dtype=bool)
    mask[roi] = sub_mask
    mask = ctx.finish(mask)
    require_nonempty(mask, ctx.method_name, "the contour collapsed; try a larger --seed-radius-mm")
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def fast_marching_box(ctx: SegmentationContext, stopping_value: float, sigma_mm: float) -> Tuple[slice, ...]:
    """(k, j, i) slices of the box the front can reach before ``stopping_value``, plus the Gaussian's margin.

    Why the bound holds: ITK's upwind update solves sum_d ((T - T_d) / h_d)^2 = 1 / F^2 with speed
    F <= 1 (the sigmoid's maximum), so a voxel's arrival time exceeds its smallest neighbour's by at least
    1 / sqrt(sum_d 1 / h_d^2) >= h_min / sqrt(3). A voxel reached by ``stopping_value`` therefore lies
    within ``stopping_value * sqrt(3) / h_min`` face steps of a seed. The margin of 4 sigma keeps the
    recursive-Gaussian gradient inside the reach equal (to float rounding) to the whole volume's.
    """
    spacing = np.asarray(ctx.spacing_ijk, dtype=float)
    reach = int(math.ceil(stopping_value * math.sqrt(3.0) / float(spacing.min()))) + 1
    return _seed_box(ctx, reach + np.ceil(4.0 * sigma_mm / spacing).astype(int))


def run_fast_marching(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    """Front propagation from the seeds at a speed that drops on edges; the segment is every voxel the
    front reaches before ``stopping_time`` (about mm travelled inside a homogeneous region).

    Everything runs on the box the front can reach (:func:`fast_marching_box`), so memory and time follow
    the stopping time, not the volume: the edge sigmoid's K2 (95th gradient percentile) is that box's.
    """
    import SimpleITK as sitk

    _seed_list(ctx)
    stopping = float(p["stopping_time"])
    box = fast_marching_box(ctx, stopping * 1.05, float(p["sigma_mm"]))
    sub_ctx, _ = _cropped(ctx, box)
    radius = 2.0 * p["sigma_mm"]
    speed, _ = edge_speed(
        sub_ctx.float_image, p["sigma_mm"], lambda gradient: seed_neighbourhood_values(sub_ctx, radius, gradient)
    )
    ctx.report(0.4, "fast marching")
    marching = sitk.FastMarchingImageFilter()
    for seed in sub_ctx.seed_indices():
        marching.AddTrialPoint((*(int(v) for v in seed), 0))
    marching.SetStoppingValue(stopping * 1.05)
    arrival = marching.Execute(speed)
    mask = np.zeros(ctx.shape, dtype=bool)
    mask[box] = sitk.GetArrayViewFromImage(arrival) <= stopping
    mask = ctx.finish(mask)
    require_nonempty(mask, ctx.method_name)
    return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]


def run_watershed(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    """Watershed of the gradient magnitude (Gaussian scale ``object_scale_mm``, as Slicer's Watershed effect).

    Marker-based with seeds of two or more groups (each group floods its basins; the result partitions
    the volume, as Slicer's Watershed effect). With one group, the morphological watershed (flooding level
    ``level`` of the gradient) basins containing its seeds; without seeds, the ``max_segments`` largest
    basins. (The volume border is not used as background: anatomy usually crosses it.)

    ITK's algorithms (h-minima markers, flooding) on 15-bit gradient levels in :mod:`watershed`: the
    whole-volume arrays are the 16-bit levels and, while markers are found, one byte per voxel (~1.5x the
    int16 input at the peak, against ~21x for SimpleITK's GradientMagnitudeRecursiveGaussian +
    MorphologicalWatershed).
    """
    from MedSegLib.segmentation import watershed

    groups = ctx.seed_groups() if ctx.seeds else {}
    level = float(p["level"]) if len(groups) < 2 else 0.0
    levels, scale = watershed.gradient_levels(ctx.array, ctx.spacing_ijk, float(p["object_scale_mm"]), level)
    ctx.report(0.3, "watershed")
    if len(groups) >= 2:
        names = list(groups)
        markers = np.zeros(ctx.shape, dtype=np.uint8 if len(names) < 256 else np.uint16)
        for value, name in enumerate(names, start=1):
            balls = _seed_balls(ctx, p["seed_radius_mm"], groups[name])
            markers[balls & (markers == 0)] = value
            del balls
        handed_over = [markers]  # the only reference: flood frees the markers once it has its start voxels
        del markers
        labels = _restricted(ctx, watershed.flood(levels, handed_over))
        del levels
        segments = [SegmentMask(name, labels=labels, value=value) for value, name in enumerate(names, start=1)]
        segments = [segment for segment in segments if segment.any()]
        if not segments:
            raise UserInputError(f"{ctx.method_name}: every basin is empty")
        return segments
    h = int(level * scale)  # truncated, as ITK casts it
    try:
        handed_over = [watershed.morphological_markers(levels, h)]  # levels: now the h-minima transform
    except OverflowError:  # more basins than 15-bit labels hold: ITK's filter, same labels, more memory
        handed_over = []
    ctx.report(0.6, "watershed flooding")
    watershed.fill_gradient_levels(ctx.array, ctx.spacing_ijk, float(p["object_scale_mm"]), scale, levels)
    if handed_over:
        labels = watershed.flood(levels, handed_over)
    else:
        import SimpleITK as sitk

        labels = array_view(sitk.MorphologicalWatershed(sitk.GetImageFromArray(levels), h, False, False))
    del levels  # the flooded labels are the same array
    if groups:  # one seed group: the basins that contain its seeds
        seeds = next(iter(groups.values()))
        wanted = np.unique(labels[seeds[:, 2], seeds[:, 1], seeds[:, 0]])
        mask = ctx.finish(np.isin(labels, wanted[wanted > 0]))
        require_nonempty(mask, ctx.method_name)
        return [SegmentMask(p["segment_name"], mask, p.get("terminology") or None)]
    counts = postprocess.label_sizes(labels)
    counts[0] = 0
    order = [int(value) for value in np.argsort(counts)[::-1][: int(p["max_segments"])] if counts[value] > 0]
    if not order:
        raise UserInputError(f"{ctx.method_name}: no basin found; lower --level")
    lookup = np.zeros(counts.size, dtype=np.uint8 if len(order) < 256 else np.uint16)
    lookup[order] = np.arange(1, len(order) + 1)
    kept = np.empty(ctx.shape, dtype=lookup.dtype)  # basin n of the result = the n-th largest
    step = postprocess.slices_per_slab(labels)
    for start in range(0, labels.shape[0], step):  # slab-wise: fancy indexing makes an int64 index copy
        kept[start : start + step] = lookup[labels[start : start + step]]
    del labels
    kept = _restricted(ctx, kept)
    return [SegmentMask(f"{p['segment_name']}_{n}", labels=kept, value=n) for n in range(1, len(order) + 1)]


def _restricted(ctx: SegmentationContext, labels: np.ndarray) -> np.ndarray:
    """``labels`` set to 0 outside the context mask (in place, a slab at a time)."""
    if ctx.mask is not None:
        step = postprocess.slices_per_slab(labels)
        for start in range(0, labels.shape[0], step):
            part = slice(start, start + step)
            labels[part][~ctx.mask[part]] = 0
    return labels


LOWER = Param("lower", float, None, "lowest intensity (default: from the seed neighbourhood)", "HU")
UPPER = Param("upper", float, None, "highest intensity (default: from the seed neighbourhood)", "HU")
MULTIPLIER = Param("multiplier", float, 2.5, "range = seed mean +/- multiplier x SD", minimum=0.0)
NEIGHBORHOOD = Param("neighborhood_mm", float, 5.0, "seed neighbourhood radius for statistics", "mm", 0.0)
LEAK = Param("leak_radius_mm", float, 5.0, "cut bridges to neighbours thinner than this radius (0 = off)", "mm", 0.0)

METHODS = [
    Method(
        "region-growing",
        "Region growing (connected threshold)",
        "voxels connected to the seeds within an intensity range",
        run_region_growing,
        (LOWER, UPPER, MULTIPLIER, NEIGHBORHOOD, LEAK, SEGMENT_NAME, TERMINOLOGY),
        SEEDS_REQUIRED,
        "region",
    ),
    Method(
        "confidence-connected",
        "Confidence connected",
        "region growing whose range (mean +/- k SD) is re-estimated from the region each iteration",
        run_confidence_connected,
        (
            MULTIPLIER,
            Param("iterations", int, 4, "re-estimation rounds", minimum=0, maximum=100),
            Param("neighborhood_mm", float, 3.0, "initial neighbourhood radius", "mm", 0.0),
            LEAK,
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_REQUIRED,
        "region",
    ),
    Method(
        "level-set",
        "Level set (ITK-SNAP snake)",
        "contour evolving from balls around the seeds, by intensity range or edges (geodesic active contour)",
        run_level_set,
        (
            Param("feature", str, "intensity", "what drives the contour", choices=("intensity", "edge")),
            LOWER,
            UPPER,
            MULTIPLIER,
            Param("seed_radius_mm", float, 5.0, "radius of the initial balls", "mm", 0.0),
            Param("iterations", int, 300, "maximum iterations", minimum=1, maximum=100000),
            Param("curvature", float, 1.0, "smoothness weight", minimum=0.0),
            Param("propagation", float, 1.0, "balloon force (edge mode)"),
            Param("sigma_mm", float, 1.5, "edge scale (edge mode)", "mm", 0.01),
            Param("roi_mm", float, 0.0, "work only within this distance of the seeds (0 = whole volume)", "mm", 0.0),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_REQUIRED,
        "region",
    ),
    Method(
        "fast-marching",
        "Fast marching",
        "front from the seeds slowed by edges; keeps voxels reached before --stopping-time",
        run_fast_marching,
        (
            Param(
                "stopping_time", float, 30.0, "arrival time limit (~mm travelled in a homogeneous region)", minimum=0.0
            ),
            Param("sigma_mm", float, 1.5, "edge scale", "mm", 0.01),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_REQUIRED,
        "region",
    ),
    Method(
        "watershed",
        "Watershed",
        "marker-based from >= 2 seed groups, else morphological basins (containing the seeds)",
        run_watershed,
        (
            Param("object_scale_mm", float, 2.0, "gradient smoothing scale", "mm", 0.01),
            Param("seed_radius_mm", float, 2.0, "marker ball radius around seeds", "mm", 0.0),
            Param("level", float, 20.0, "flooding level without seeds (gradient units)", minimum=0.0),
            Param("max_segments", int, 10, "largest basins kept without seeds", minimum=1),
            SEGMENT_NAME,
            TERMINOLOGY,
        ),
        SEEDS_OPTIONAL,
        "region",
    ),
]
