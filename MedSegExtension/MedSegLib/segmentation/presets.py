"""CT presets without a model: body, lungs (split left/right), airway, bone, fat, muscle.

Each preset is a short pipeline of the generic steps (threshold, islands, morphology, fill holes) on
Hounsfield units, with thresholds taken from the radiology literature rather than fitted to a scan:

- body: tissue > -500 HU (halfway between air and fat), the patient table removed by an in-plane
  opening (the table is a thin shell) followed by reconstruction inside the original region, islands
  smaller than ``min_island_ml`` dropped (arms are kept), cavities filled slice by slice.
- lungs: air < -400 HU inside the body, components whose median is lung parenchyma (-950..-600 HU;
  bowel gas is almost pure air, ~ -1000 HU) and larger than ``min_lung_ml``; trachea/main bronchi
  (< -950 HU tubes) removed; components assigned to left/right by their side of the body midline.
- airway: trachea and bronchi grown from the most cranial air tube inside the body, < -950 HU,
  with the threshold lowered when the growth explodes into the lungs (the classic leak check).
- bone: see :func:`run_bone` (cortex-seeded hysteresis, fluid-like regions removed, marrow filled).
- fat: -190..-30 HU and muscle: -29..150 HU inside the body (the usual body-composition ranges).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation import postprocess
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask, require_nonempty
from MedSegLib.segmentation.params import SEEDS_NONE, SEEDS_OPTIONAL, Method, Param, check_range

AIR_TISSUE_HU = -500.0
AIRWAY_LOWER_HU = -3000.0  # below: padding outside the reconstruction circle (e.g. -3024), not lumen


def _ml_to_voxels(ctx: SegmentationContext, ml: float) -> int:
    return max(1, int(round(ml * 1000.0 / ctx.voxel_volume_mm3)))


def body_mask(
    ctx: SegmentationContext, threshold: float = AIR_TISSUE_HU, table_mm: float = 4.0, min_island_ml: float = 20.0
) -> np.ndarray:
    """The patient: tissue above ``threshold`` without the table, cavities filled (see module doc)."""
    candidate = ctx.array > threshold
    if not np.any(candidate):
        raise UserInputError(f"{ctx.method_name}: no voxel above {threshold:g} HU - is this a CT in HU?")
    spacing = ctx.spacing_ijk
    if table_mm > 0:
        in_plane = np.array([spacing[0], spacing[1], np.inf])  # no opening across slices
        opened = postprocess.smooth(candidate, "opening", table_mm, in_plane)
        del candidate  # a byte per voxel; recomputed slab by slab below rather than held through the margin
        opened = postprocess.remove_small_islands(opened, _ml_to_voxels(ctx, min_island_ml))
        opened = _drop_flat_plates(ctx, opened)
        body = postprocess.margin(opened, table_mm / 2.0 + max(spacing[:2]), spacing)
        del opened
        body = postprocess.intersect_by_slab(body, lambda part: ctx.array[part] > threshold)
    else:
        body = candidate
    body = postprocess.remove_small_islands(body, _ml_to_voxels(ctx, min_island_ml))
    return postprocess.fill_holes(body, per_slice=True)


def _drop_flat_plates(ctx: SegmentationContext, mask: np.ndarray, ratio: float = 3.0) -> np.ndarray:
    """Remove components (other than the largest) that are flat plates under/over the patient: the
    table. A plate is ``ratio`` times wider (patient left-right) than thick (anterior-posterior); arms
    and legs are roughly round in cross-section, so they stay."""
    from MedSegLib.segmentation.run_components import run_components

    components = run_components(mask)  # sizes and boxes from the runs, no voxel label image
    if components.count <= 1:
        return np.asarray(mask, dtype=bool)
    largest = int(np.argmax(components.sizes[1:])) + 1
    # Index axes (i, j) closest to RAS x (left-right) and y (anterior-posterior).
    directions = np.abs(ctx.ijk_to_ras[:3, :2] / np.linalg.norm(ctx.ijk_to_ras[:3, :2], axis=0))
    lr_axis = int(np.argmax(directions[0]))  # 0 -> i, 1 -> j
    spacing = ctx.spacing_ijk
    boxes = components.boxes  # (k0, j0, i0, k1, j1, i1) inclusive
    extent_i = (boxes[:, 5] - boxes[:, 2] + 1) * spacing[0]
    extent_j = (boxes[:, 4] - boxes[:, 1] + 1) * spacing[1]
    lr, ap = (extent_i, extent_j) if lr_axis == 0 else (extent_j, extent_i)
    keep = lr < ratio * ap
    keep[largest] = True
    return components.paint(keep)


def run_body(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    mask = ctx.finish(body_mask(ctx, p["threshold"], p["table_mm"], p["min_island_ml"]))
    require_nonempty(mask, ctx.method_name)
    return [SegmentMask("Body", mask, "body")]


def _ras_x_of_voxels(ctx: SegmentationContext, mask: np.ndarray) -> float:
    """Mean RAS x (patient right is +) of a mask's voxels."""
    # Mean index per axis from the per-axis voxel counts (np.nonzero would hold 24 bytes per voxel).
    total = float(np.count_nonzero(mask))
    ijk = (
        np.array(
            [
                np.arange(mask.shape[axis]) @ mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
                for axis in (2, 1, 0)
            ],
            dtype=np.float64,
        )
        / total
    )
    return float(ctx.ijk_to_ras[0, :3] @ ijk + ctx.ijk_to_ras[0, 3])


def _right_of(ctx: SegmentationContext, mask: np.ndarray, x_ras: float) -> np.ndarray:
    """Voxels of ``mask`` whose RAS x is greater than ``x_ras`` (patient right), a slice at a time (a
    whole-volume coordinate array would be 8 bytes per voxel)."""
    m = ctx.ijk_to_ras
    j, i = np.ogrid[: ctx.shape[1], : ctx.shape[2]]
    in_plane = m[0, 0] * i + m[0, 1] * j + m[0, 3]
    out = np.empty(ctx.shape, dtype=bool)
    for k in range(ctx.shape[0]):
        np.logical_and(mask[k], in_plane + m[0, 2] * k > x_ras, out=out[k])
    return out


def lung_components(ctx: SegmentationContext, p: Dict[str, Any], body: np.ndarray) -> np.ndarray:
    """Air components inside the body whose intensity distribution is lung parenchyma."""
    from MedSegLib.segmentation.run_components import run_components

    air = (ctx.array < p["air_threshold"]) & body
    components = run_components(air)  # sizes from the runs: no voxel label image (4 bytes per voxel)
    del air
    min_voxels = _ml_to_voxels(ctx, p["min_lung_ml"])
    lungs = []
    # Only a few components are big enough to test; one painted mask per candidate.
    for value in np.flatnonzero(components.sizes[1:] >= min_voxels) + 1:
        median = float(np.median(ctx.array[components.paint_numbers([value])]))
        if p["parenchyma_min"] <= median <= p["parenchyma_max"]:
            lungs.append(value)
    return components.paint_numbers(lungs)


def trachea_seed(ctx: SegmentationContext, body: np.ndarray, threshold: float) -> np.ndarray:
    """Voxel (i, j, k) of the trachea: in the most cranial slices, the air blob enclosed by the body
    (not touching outside air) with the cross-section of a trachea (50-800 mm2), nearest the midline."""
    pixel_area = float(ctx.spacing_ijk[0] * ctx.spacing_ijk[1])
    # Which end is cranial: larger RAS S.
    s_first = ctx.ijk_to_ras[2, 3]
    s_last = ctx.ijk_to_ras[2, :3] @ np.array([0, 0, ctx.shape[0] - 1]) + ctx.ijk_to_ras[2, 3]
    slices = range(ctx.shape[0] - 1, -1, -1) if s_last > s_first else range(ctx.shape[0])
    from scipy import ndimage

    checked = 0
    for k in slices:
        checked += 1
        if checked > max(3, ctx.shape[0] // 5):
            break
        air = (ctx.array[k] < threshold) & body[k]
        labels, count = ndimage.label(air)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:] * pixel_area
        centres = ndimage.center_of_mass(air, labels, range(1, count + 1))
        body_centre = np.array(ndimage.center_of_mass(body[k]))
        best, best_distance = None, np.inf
        for index, (area, centre) in enumerate(zip(areas, centres), start=1):
            if not 50.0 <= area <= 800.0:
                continue
            distance = abs(centre[1] - body_centre[1]) * ctx.spacing_ijk[0]
            if distance < best_distance:
                best, best_distance = index, distance
        if best is not None:
            j, i = np.argwhere(labels == best)[0]
            return np.array([[i, j, k]])
    raise UserInputError(
        f"{ctx.method_name}: no trachea found in the cranial slices - give a seed in the trachea with --seeds"
    )


def airway_mask(ctx: SegmentationContext, p: Dict[str, Any], seeds: np.ndarray) -> np.ndarray:
    """Trachea/bronchi: connected threshold from the trachea ``seeds`` (rows i, j, k), raising the upper
    threshold in 25 HU steps (from ``airway_threshold`` up to ``airway_max_threshold``) until the volume
    explodes (a leak into the lung parenchyma: > 1.5x growth in one step, or above ``max_airway_ml``); the
    last good one wins. Each step is ITK's ConnectedThreshold (face connectivity) on the runs of the
    threshold mask (``run_components.connected_to_seeds``)."""
    from MedSegLib.segmentation.run_components import connected_to_seeds
    from MedSegLib.segmentation.threshold import threshold_mask

    seeds_kji = np.asarray(seeds)[:, ::-1]
    max_voxels = _ml_to_voxels(ctx, p["max_airway_ml"])
    best: Optional[np.ndarray] = None
    best_count = 0
    threshold = float(p["airway_threshold"])
    while threshold <= p["airway_max_threshold"] + 1e-6:
        lumen = threshold_mask(ctx.array, AIRWAY_LOWER_HU, threshold)
        mask = connected_to_seeds(lumen, seeds_kji)
        del lumen
        count = int(np.count_nonzero(mask))
        if count > max_voxels or (best is not None and count > 1.5 * best_count):
            break
        best, best_count = mask, count
        del mask
        threshold += 25.0
    if best is None or best_count == 0:
        raise UserInputError(
            f"{ctx.method_name}: airway growth leaks into the lungs already at {p['airway_threshold']:g} HU"
        )
    return best


def run_lungs(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    check_range(p["parenchyma_min"], p["parenchyma_max"], ctx.method_name, "parenchyma median")
    body = body_mask(ctx)
    ctx.report(0.3, "air components")
    lungs = lung_components(ctx, p, body)
    if not np.any(lungs):
        raise UserInputError(f"{ctx.method_name}: no lung found (no air region with lung parenchyma intensities)")
    midline_x = _ras_x_of_voxels(ctx, body)
    try:
        seeds: Optional[np.ndarray] = (
            ctx.seed_indices() if ctx.seeds else trachea_seed(ctx, body, p["airway_threshold"])
        )
    except UserInputError:
        seeds = None  # no trachea in the field of view (e.g. abdomen scans): nothing to remove
    del body  # a byte per voxel: what follows needs only the midline and the seeds
    if seeds is not None:
        try:
            airway = airway_mask(ctx, p, seeds)
            lungs &= ~postprocess.margin(airway, float(max(ctx.spacing_ijk)), ctx.spacing_ijk)
            del airway
        except UserInputError:
            pass  # the airway leaks at once: nothing removed
    postprocess.fill_holes(lungs, per_slice=True, out=lungs)  # vessels inside the lungs belong to them
    lungs = postprocess.smooth(lungs, "closing", 2.0 * float(max(ctx.spacing_ijk[:2])), ctx.spacing_ijk)
    lungs = ctx.finish(lungs)
    if not p["split"]:
        return [SegmentMask("Lungs", lungs, "lung")]
    # Left/right by side of the body midline, per connected component (a component crossing the midline,
    # e.g. joined at the anterior junction, is cut at the midline).
    right = _right_of(ctx, lungs, midline_x)
    left = lungs & ~right
    segments = []
    if np.any(right):
        segments.append(SegmentMask("Right lung", right, "right lung"))
    if np.any(left):
        segments.append(SegmentMask("Left lung", left, "left lung"))
    return segments


def run_airway(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    if ctx.seeds:
        seeds = ctx.seed_indices()
    else:
        body = body_mask(ctx)
        seeds = trachea_seed(ctx, body, p["airway_threshold"])
        del body  # only the seed search needs it
    mask = ctx.finish(airway_mask(ctx, p, seeds))
    require_nonempty(mask, ctx.method_name)
    return [SegmentMask("Airway", mask, "airway")]


def noise_sd(ctx: SegmentationContext, body: np.ndarray) -> float:
    """Image noise (HU, one SD) from differences of in-plane neighbours inside soft tissue (-100..100 HU):
    a robust (MAD) estimate, so edges and texture barely move it.

    The differences are integers in -198..198, so a histogram gives the exact medians ``np.median`` would
    (the mean of the two middle values for an even count) without holding one float per voxel pair."""
    counts = np.zeros(2 * _SOFT_DIFF + 1, dtype=np.int64)
    step = postprocess.slices_per_slab(ctx.array)  # a slab at a time: the temporaries stay small
    for start in range(0, ctx.shape[0], step):
        a = ctx.array[start : start + step, :, 1:]
        b = ctx.array[start : start + step, :, :-1]
        soft = (a > -100) & (a < 100) & (b > -100) & (b < 100) & body[start : start + step, :, 1:]
        difference = a[soft].astype(np.int32) - b[soft]
        counts += np.bincount(difference + _SOFT_DIFF, minlength=counts.size)
    if counts.sum() < 100:
        return 0.0
    values = np.arange(-_SOFT_DIFF, _SOFT_DIFF + 1, dtype=np.float64)
    median = _median_of_counts(values, counts)
    deviations = np.abs(values - median)
    order = np.argsort(deviations, kind="stable")
    mad = _median_of_counts(deviations[order], counts[order])
    return 1.4826 * mad / float(np.sqrt(2.0))


_SOFT_DIFF = 199  # |a - b| < 200 for a, b in (-100, 100)


def _median_of_counts(values: np.ndarray, counts: np.ndarray) -> float:
    """``np.median`` of the sample holding ``counts[i]`` copies of ``values[i]`` (values ascending)."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    low = values[np.searchsorted(cumulative, (n - 1) // 2 + 1)]
    high = values[np.searchsorted(cumulative, n // 2 + 1)]
    return float((low + high) / 2.0)


def _fluid_like_regions(ctx: SegmentationContext, candidate: np.ndarray, sigma: float, p: Dict[str, Any]) -> np.ndarray:
    """Thick non-cortical parts of ``candidate`` whose intensity is as homogeneous as the noise (see run_bone).

    Each core (a component of ``candidate`` minus cortex, eroded by the texture radius) grows back to
    the soft voxels nearest to it within ``reach``: one region per core. The nearest core of such a voxel
    lies within ``reach``, so the nearest-core search runs slab by slab with a halo of ``reach``, on the
    labels of that slab only (from the cores' runs): no whole-volume label image or index arrays."""
    from scipy import ndimage

    from MedSegLib.segmentation.run_components import run_components

    spacing = ctx.spacing_ijk
    soft = candidate & (ctx.array < p["strong"])  # not cortex (cortex = >= strong HU)
    radius = float(p["texture_radius_mm"])
    core = postprocess.margin(soft, -radius, spacing)
    del soft  # recomputed slab by slab below: one mask less held through the second margin
    fluid = np.zeros(ctx.shape, dtype=bool)
    if sigma <= 0 or not np.any(core):
        return fluid
    cores = run_components(core)  # numbered in raster order with face connectivity, as ndimage.label
    count = cores.count
    reach = radius + 0.5 * float(max(spacing[:2]))
    near = postprocess.margin(core, reach, spacing)
    del core
    near = postprocess.intersect_by_slab(near, lambda part: candidate[part] & (ctx.array[part] < p["strong"]))
    k_any = np.flatnonzero(near.any(axis=(1, 2)))
    j_any = np.flatnonzero(near.any(axis=(0, 2)))
    i_any = np.flatnonzero(near.any(axis=(0, 1)))
    rows, cols = slice(j_any[0], j_any[-1] + 1), slice(i_any[0], i_any[-1] + 1)
    k_first, k_stop = int(k_any[0]), int(k_any[-1]) + 1
    halo = int(np.ceil(reach / float(spacing[2]))) + 1
    step = postprocess.slices_per_slab(near[:, rows, cols])
    n = np.zeros(count + 1)
    total = np.zeros(count + 1)
    squares = np.zeros(count + 1)
    regions_near = []  # the region of every near voxel, slab after slab
    for s0 in range(k_first, k_stop, step):
        s1 = min(s0 + step, k_stop)
        inside = near[s0:s1, rows, cols]
        if not inside.any():
            regions_near.append(np.zeros(0, dtype=np.int32))
            continue
        c0, c1 = max(k_first, s0 - halo), min(k_stop, s1 + halo)
        labels = cores.label_slices(c0, c1)[:, rows, cols]
        nearest = ndimage.distance_transform_edt(
            labels == 0, sampling=ctx.spacing_kji, return_distances=False, return_indices=True
        )[:, s0 - c0 : s1 - c0]
        regions = labels[tuple(nearest)][inside]
        del nearest, labels
        sample = ctx.array[s0:s1, rows, cols][inside].astype(np.float64)
        n += np.bincount(regions, minlength=count + 1)
        total += np.bincount(regions, sample, minlength=count + 1)
        squares += np.bincount(regions, sample * sample, minlength=count + 1)
        regions_near.append(regions)
    mean = total[1:] / np.maximum(n[1:], 1)
    sd = np.sqrt(np.maximum(squares[1:] / np.maximum(n[1:], 1) - mean * mean, 0.0))
    fluid_labels = np.flatnonzero(sd < p["texture_ratio"] * sigma) + 1
    if fluid_labels.size:
        for s0, regions in zip(range(k_first, k_stop, step), regions_near):
            if regions.size:
                s1 = min(s0 + step, k_stop)
                block = fluid[s0:s1, rows, cols]
                block[near[s0:s1, rows, cols]] = np.isin(regions, fluid_labels)
    return fluid


def _fill_marrow(ctx: SegmentationContext, bone: np.ndarray, p: Dict[str, Any]) -> None:
    """Close ``bone`` in-plane (``closing_mm``) and add its marrow cavities, in place, a slab of slices
    at a time: both are per-slice operations, so no whole-volume copy is needed."""
    in_plane = np.array([ctx.spacing_ijk[0], ctx.spacing_ijk[1], np.inf])
    step = postprocess.slices_per_slab(bone)
    for start in range(0, ctx.shape[0], step):
        part = slice(start, min(start + step, ctx.shape[0]))
        closed = postprocess.smooth(bone[part], "closing", p["closing_mm"], in_plane)  # includes bone[part]
        bone[part] = closed
        for k in range(part.start, part.stop):
            if bone[k].any():
                bone[k] |= _marrow_holes(ctx.array[k], bone[k], p)


def _marrow_holes(hu: np.ndarray, closed: np.ndarray, p: Dict[str, Any]) -> np.ndarray:
    """The holes of a closed bone cross-section that are marrow: a hole whose mean HU is that of CSF /
    neural tissue (``canal_min``..``canal_max``) is the spinal canal (enclosed by the vertebral arch)."""
    from scipy import ndimage

    holes = ndimage.binary_fill_holes(closed) & ~closed
    if not holes.any():
        return holes
    labels, count = ndimage.label(holes)
    counts = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    means = np.bincount(labels.ravel(), hu.ravel().astype(np.float64), minlength=count + 1)[1:]
    means = means / np.maximum(counts, 1)
    canal = np.flatnonzero((means > p["canal_min"]) & (means < p["canal_max"])) + 1
    return holes & ~np.isin(labels, canal) if canal.size else holes


def run_bone(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    """Bone without a model: cortex-seeded hysteresis, fluid-like regions removed, marrow filled.

    Steps (HU facts from the CT literature; no constant was fitted to a test scan):

    1. Body: outside air and the table removed (:func:`body_mask`).
    2. Seeds = cortical bone, >= ``strong`` (300 HU). Compact bone is > ~700-1000 HU, but the thin cortex of
       ribs and vertebrae is averaged with soft tissue in 2-3 mm voxels (a 3 mm scan's ribs peak at
       300-600 HU); 300 HU stays above every unenhanced soft tissue (< ~100 HU) and portal-venous blood.
    3. Hysteresis: voxels >= ``lower`` (120 HU) connected to a seed. Cancellous (trabecular) bone is
       ~150-400 HU in adults, down to ~100 HU in osteoporosis (L1 < 110 HU), so the lower level sits at
       the top of enhanced parenchyma (liver/spleen ~100-130 HU in the portal phase).
    4. Fluid-like regions removed. Contrast-filled vessels (aorta 150-350 HU in the arterial/portal phase),
       enhancing organs and the renal collecting system can exceed the bone levels and touch bone through
       calcified walls or partial volume; HU cannot tell them apart, texture can: blood with iodine is a
       homogeneous fluid whose SD is the image noise, while cancellous bone mixes trabeculae and marrow
       (SD several times the noise), and cortex is not "soft" at all. So the non-cortical part of the
       hysteresis result is split into thick regions (cores deeper than ``texture_radius_mm``, grown back;
       thin partial-volume rims are never judged, they have no texture to measure) and a region whose
       SD is below ``texture_ratio`` x the image noise (noise estimated from the scan itself, MAD of
       neighbour differences in soft tissue) is removed; the hysteresis is then re-run, which drops
       what was only connected through such a region (e.g. the calcified wall of the aorta stays
       only where it touches bone).
    5. Marrow: an in-plane closing (``closing_mm``, bridging cortical gaps of a few voxels) and per-slice
       hole filling add the medullary cavity and cancellous interior enclosed by cortex. Holes whose mean
       HU is that of CSF / spinal cord (``canal_min``..``canal_max``, 0-40 HU +/- noise) are the spinal
       canal enclosed by the vertebral arch and stay out (fatty marrow is < -20 HU, cancellous > 100 HU).
    6. Islands smaller than ``min_island_ml`` dropped (calcified plaques, noise).

    Known limits: calcified costal cartilage and sclerotic end plates / discs are bone-dense and stay.
    """
    check_range(p["lower"], p["strong"], ctx.method_name, "bone threshold")
    body = body_mask(ctx)
    sigma = noise_sd(ctx, body) if p["texture_ratio"] > 0 else 0.0
    ctx.report(0.4, "hysteresis")
    weak = ctx.array >= p["lower"]
    weak &= body
    del body  # masks are a byte per voxel each: only what a later step needs is kept (cortex is recomputed)
    bone = postprocess.hysteresis(weak, ctx.array >= p["strong"])  # seeds: cortex
    del weak
    if p["texture_ratio"] > 0 and np.any(bone):
        ctx.report(0.55, "removing fluid-like regions")
        fluid = _fluid_like_regions(ctx, bone, sigma, p)
        if np.any(fluid):
            np.logical_not(fluid, out=fluid)
            fluid &= bone
            del bone
            bone = postprocess.hysteresis(fluid, ctx.array >= p["strong"])
        del fluid
    if p["fill_marrow"]:
        ctx.report(0.7, "marrow")
        _fill_marrow(ctx, bone, p)
    bone = postprocess.remove_small_islands(bone, _ml_to_voxels(ctx, p["min_island_ml"]))
    bone = ctx.finish(bone)
    require_nonempty(bone, ctx.method_name, f"no voxel >= {p['strong']:g} HU inside the body")
    return [SegmentMask("Bone", bone, "bone")]


def _tissue_range(name: str, terminology: str):
    def run(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
        check_range(p["lower"], p["upper"], ctx.method_name)
        body = body_mask(ctx)
        mask = (ctx.array >= p["lower"]) & (ctx.array <= p["upper"]) & body
        mask = postprocess.remove_small_islands(mask, _ml_to_voxels(ctx, p["min_island_ml"]))
        mask = ctx.finish(mask)
        require_nonempty(mask, ctx.method_name)
        return [SegmentMask(name, mask, terminology)]

    return run


MIN_ISLAND = Param("min_island_ml", float, 0.5, "drop islands smaller than this", "mL", 0.0)

METHODS = [
    Method(
        "body",
        "CT body",
        "patient outline: > -500 HU, table removed, cavities filled",
        run_body,
        (
            Param("threshold", float, AIR_TISSUE_HU, "air/tissue boundary", "HU"),
            Param("table_mm", float, 4.0, "structures thinner than this are removed (table)", "mm", 0.0),
            Param("min_island_ml", float, 20.0, "drop islands smaller than this", "mL", 0.0),
        ),
        SEEDS_NONE,
        "preset",
    ),
    Method(
        "lungs",
        "CT lungs (left/right)",
        "air inside the body with lung parenchyma intensities, trachea removed, split left/right",
        run_lungs,
        (
            Param("air_threshold", float, -400.0, "air (incl. lung parenchyma) is below", "HU"),
            Param("parenchyma_min", float, -950.0, "lowest median HU of a lung component", "HU"),
            Param("parenchyma_max", float, -600.0, "highest median HU of a lung component", "HU"),
            Param("min_lung_ml", float, 10.0, "smallest lung component", "mL", 0.0),
            Param("airway_threshold", float, -950.0, "trachea/bronchi lumen is below", "HU"),
            Param("airway_max_threshold", float, -800.0, "highest lumen threshold tried before a leak", "HU"),
            Param("max_airway_ml", float, 300.0, "airway volume above which growth is a leak", "mL", 0.0),
            Param("split", bool, True, "output right and left lung as two segments"),
        ),
        SEEDS_OPTIONAL,
        "preset",
    ),
    Method(
        "airway",
        "CT airway",
        "trachea and main bronchi from an automatic (or given) trachea seed",
        run_airway,
        (
            Param("airway_threshold", float, -950.0, "lumen is below (first try)", "HU"),
            Param("airway_max_threshold", float, -800.0, "highest lumen threshold tried before a leak", "HU"),
            Param("max_airway_ml", float, 300.0, "volume above which growth is a leak", "mL", 0.0),
        ),
        SEEDS_OPTIONAL,
        "preset",
    ),
    Method(
        "bone",
        "CT bone",
        "cortex-seeded hysteresis, contrast-filled (fluid-like) regions removed, marrow filled",
        run_bone,
        (
            Param("lower", float, 120.0, "cancellous bone is above", "HU"),
            Param("strong", float, 300.0, "cortical bone (seeds) is above", "HU"),
            Param("texture_ratio", float, 2.0, "remove thick regions with SD below this x noise (0 = off)", "", 0.0),
            Param("texture_radius_mm", float, 3.0, "regions judged by texture are thicker than 2x this", "mm", 0.0),
            Param("fill_marrow", bool, True, "close and fill bone cross-sections slice by slice"),
            Param("closing_mm", float, 6.0, "in-plane closing diameter before filling", "mm", 0.0),
            Param("canal_min", float, -20.0, "holes with a mean HU in canal_min..canal_max are the spinal canal", "HU"),
            Param("canal_max", float, 60.0, "(CSF / spinal cord), not marrow", "HU"),
            MIN_ISLAND,
        ),
        SEEDS_NONE,
        "preset",
    ),
    Method(
        "fat",
        "CT fat",
        "adipose tissue -190..-30 HU inside the body",
        _tissue_range("Fat", "fat"),
        (
            Param("lower", float, -190.0, "lowest HU", "HU"),
            Param("upper", float, -30.0, "highest HU", "HU"),
            MIN_ISLAND,
        ),
        SEEDS_NONE,
        "preset",
    ),
    Method(
        "muscle",
        "CT muscle",
        "skeletal muscle -29..150 HU inside the body",
        _tissue_range("Muscle", "muscle"),
        (Param("lower", float, -29.0, "lowest HU", "HU"), Param("upper", float, 150.0, "highest HU", "HU"), MIN_ISLAND),
        SEEDS_NONE,
        "preset",
    ),
]
