"""Graph cut (Boykov-Jolly 2001) from object and background seed strokes, on a region of interest.

The energy is the classic one: regional terms -ln P(I | object/background) from smoothed intensity
histograms of the seeds' neighbourhoods, boundary terms ``lambda * exp(-(Ip - Iq)^2 / 2 sigma^2) / distance``
on the 6-neighbour grid, seeds as hard constraints. The max-flow/min-cut is PyMaxflow's (the Boykov-
Kolmogorov algorithm). Work is limited to the seeds' bounding box padded by ``roi_mm``: graph cut memory
grows ~100 bytes/voxel, so a whole CT would not fit.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask, radius_in_voxels, require_nonempty
from MedSegLib.segmentation.params import SEEDS_LABELLED, Method, Param

BACKGROUND_NAMES = ("background", "bg", "other", "outside")


def _split_groups(ctx: SegmentationContext) -> tuple:
    """(object name, object seeds, background seeds): the background group is the one named like
    "background"/"other", else the second group."""
    groups = ctx.seed_groups()
    if len(groups) < 2:
        raise UserInputError(f"{ctx.method_name}: needs object and background seeds (--seeds R,A,S@NAME ...)")
    names = list(groups)
    background = next((n for n in names if n.lower() in BACKGROUND_NAMES), names[1])
    objects = [n for n in names if n != background]
    object_seeds = np.concatenate([groups[n] for n in objects])
    return objects[0], object_seeds, groups[background]


def run_graph_cut(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    try:
        import maxflow
    except ImportError:  # pragma: no cover - declared dependency
        raise UserInputError(f"{ctx.method_name}: needs the Python package PyMaxflow (pip install PyMaxflow)") from None
    name, object_seeds, background_seeds = _split_groups(ctx)
    all_seeds = np.concatenate([object_seeds, background_seeds])
    pad = radius_in_voxels(p["roi_mm"], ctx.spacing_ijk, minimum=1)
    low = np.maximum(all_seeds.min(axis=0) - pad, 0)
    high = np.minimum(all_seeds.max(axis=0) + pad + 1, np.array(ctx.shape[::-1]))
    roi = (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))
    image = ctx.array[roi].astype(np.float32)
    if image.size > p["max_roi_voxels"]:
        raise UserInputError(
            f"{ctx.method_name}: the region of interest has {image.size} voxels (> --max-roi-voxels "
            f"{p['max_roi_voxels']}); place the seeds closer together or lower --roi-mm"
        )
    local_object = object_seeds - low
    local_background = background_seeds - low

    def neighbourhood_values(seeds: np.ndarray) -> np.ndarray:
        """Intensities of the seeds' 3x3x3 neighbourhoods (a stroke of a few points is enough)."""
        return np.concatenate(
            [image[max(k - 1, 0) : k + 2, max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2].ravel() for i, j, k in seeds]
        )

    object_values = neighbourhood_values(local_object)
    background_values = neighbourhood_values(local_background)
    # Regional terms from smoothed intensity histograms of the seeds (Boykov-Jolly): unlike one Gaussian,
    # a histogram represents a background made of several tissues (air, fat, muscle...).
    low_value = float(min(object_values.min(), background_values.min()))
    high_value = float(max(object_values.max(), background_values.max()))
    bins = 64
    edges = np.linspace(low_value, high_value + 1e-3, bins + 1)

    def neg_log_likelihood(values: np.ndarray, unseen_penalty: float) -> np.ndarray:
        from scipy.ndimage import gaussian_filter1d

        histogram = np.histogram(values, bins=edges)[0].astype(np.float64)
        histogram = gaussian_filter1d(histogram, 1.0, mode="constant") + 1e-3 * histogram.sum() / bins
        probability = histogram / histogram.sum()
        costs = -np.log(probability)
        # Intensities no seed has seen: the object's strokes are taken to cover the object's intensities,
        # so such voxels lean to the background ("everything else") - clipping them into an edge bin
        # would give them to whichever model owns that bin (e.g. outside air to the lungs).
        index = np.digitize(image, edges) - 1
        outside = (index < 0) | (index >= bins)
        result = costs[np.clip(index, 0, bins - 1)]
        result[outside] = -np.log(1e-3 / bins) + unseen_penalty
        return result

    cost_object = neg_log_likelihood(object_values, 1.0)  # cut cost if labelled background
    cost_background = neg_log_likelihood(background_values, 0.0)
    sd_object, sd_background = float(object_values.std()), float(background_values.std())
    sigma = float(p["sigma"]) if p["sigma"] else max(1.0, min(sd_object, sd_background))
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(image.shape)
    spacing_kji = ctx.spacing_kji
    for axis in range(3):
        difference = np.diff(image, axis=axis)
        weights = p["smoothness"] * np.exp(-(difference**2) / (2 * sigma * sigma)) / float(spacing_kji[axis])
        padded = np.zeros(image.shape, dtype=np.float64)
        index = [slice(None)] * 3
        index[axis] = slice(0, image.shape[axis] - 1)
        padded[tuple(index)] = weights
        structure = np.zeros((3, 3, 3))
        offset = [1, 1, 1]
        offset[axis] = 2
        structure[tuple(offset)] = 1
        graph.add_grid_edges(nodes, weights=padded, structure=structure, symmetric=True)
    # Source = object: capacity to source is the cost of labelling the voxel background.
    source = cost_background.astype(np.float64)
    sink = cost_object.astype(np.float64)
    hard = 1e9
    source[local_object[:, 2], local_object[:, 1], local_object[:, 0]] = hard
    sink[local_object[:, 2], local_object[:, 1], local_object[:, 0]] = 0
    source[local_background[:, 2], local_background[:, 1], local_background[:, 0]] = 0
    sink[local_background[:, 2], local_background[:, 1], local_background[:, 0]] = hard
    graph.add_grid_tedges(nodes, source, sink)
    ctx.report(0.5, "max-flow")
    graph.maxflow()
    inside = ~graph.get_grid_segments(nodes)  # True = sink side = background
    mask = np.zeros(ctx.shape, dtype=bool)
    mask[roi] = inside
    mask = ctx.finish(mask)
    require_nonempty(mask, ctx.method_name)
    return [SegmentMask(name, mask, p.get("terminology") or None)]


METHODS = [
    Method(
        "graph-cut",
        "Graph cut (Boykov-Jolly)",
        "object vs background seeds (a group named background/other, else the 2nd group), max-flow on an ROI",
        run_graph_cut,
        (
            Param("smoothness", float, 10.0, "boundary term weight (lambda)", minimum=0.0),
            Param("sigma", float, 0.0, "intensity difference scale of the boundary term (0 = from seeds)", "HU", 0.0),
            Param("roi_mm", float, 20.0, "margin around the seeds' bounding box", "mm", 0.0),
            Param("max_roi_voxels", int, 20_000_000, "refuse larger regions (memory)", minimum=1),
            Param("terminology", str, "", "terminology of the object segment by its 3D Slicer label"),
        ),
        SEEDS_LABELLED,
        "region",
    )
]
