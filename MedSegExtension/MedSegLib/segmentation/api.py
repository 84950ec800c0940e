"""Method registry and the two entry points shared by the CLI, the panel and scripts.

- :func:`run_method` works on a numpy volume + IJKToRAS (no MRML): returns :class:`SegmentMask` objects.
- :func:`segment_volume_node` runs a method on a volume node and writes the segments into a
  ``vtkMRMLSegmentationNode`` on the volume's geometry.

Post-processing options (:data:`POST_PARAMS`) apply to every method's output, in a fixed order:
mask by intensity -> islands -> fill holes -> smoothing -> margin -> hollow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback
from MedSegLib.segmentation import postprocess
from MedSegLib.segmentation.core import SeedPoint, SegmentationContext, SegmentMask
from MedSegLib.segmentation.params import (
    SEEDS_LABELLED,
    SEEDS_REQUIRED,
    Method,
    Param,
    resolve_parameters,
)

POST_PARAMS: Tuple[Param, ...] = (
    Param("mask_lower", float, None, "post: keep only voxels >= this intensity", "HU"),
    Param("mask_upper", float, None, "post: keep only voxels <= this intensity", "HU"),
    Param("keep_largest_island", bool, False, "post: keep only the largest connected component"),
    Param("min_island_mm3", float, 0.0, "post: remove islands smaller than this", "mm3", 0.0),
    Param("fill_holes", bool, False, "post: fill internal cavities (3D)"),
    Param("smoothing", str, "none", "post: smoothing filter", choices=("none",) + postprocess.SMOOTHING_METHODS),
    Param("smoothing_mm", float, 3.0, "post: smoothing kernel size", "mm", 0.0),
    Param("margin_mm", float, 0.0, "post: grow (+) or shrink (-) by this distance", "mm"),
    Param("hollow_mm", float, 0.0, "post: replace by an inside shell this thick (0 = off)", "mm", 0.0),
)

# Options that change a mask when true / non-zero (mask_lower/upper: when not None; smoothing: when not "none").
_POST_SWITCHES = ("keep_largest_island", "min_island_mm3", "fill_holes", "margin_mm", "hollow_mm")

_POST_METHOD = Method("post-processing", "Post-processing", "", lambda ctx, p: [], POST_PARAMS)


def _load_methods() -> Dict[str, Method]:
    from MedSegLib.segmentation import grow_from_seeds, presets, region, threshold

    methods: Dict[str, Method] = {}
    for module in (threshold, region, grow_from_seeds, presets):
        for method in module.METHODS:
            methods[method.name] = method
    for optional in ("graph_cut", "atlas"):
        try:
            module = __import__(f"MedSegLib.segmentation.{optional}", fromlist=["METHODS"])
        except ImportError:
            continue
        for method in getattr(module, "METHODS", []):
            methods[method.name] = method
    return methods


_METHODS: Optional[Dict[str, Method]] = None


def methods() -> Dict[str, Method]:
    """All registered methods by name (threshold, otsu, ..., presets)."""
    global _METHODS
    if _METHODS is None:
        _METHODS = _load_methods()
    return _METHODS


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("_", "-")
    registry = methods()
    if key not in registry:
        raise UserInputError(f"unknown segmentation method {name!r} (known: {', '.join(registry)})")
    return registry[key]


def register_method(method: Method) -> None:
    """Add a method (extensions, tests); it appears in the CLI and the panel."""
    methods()[method.name] = method


@dataclass
class SegmentationResult:
    """What :func:`segment_volume_node` produced."""

    segmentation: Any
    segment_ids: List[str]
    method: str
    parameters: Dict[str, Any]
    seconds: Dict[str, float] = field(default_factory=dict)


SeedsLike = Union[None, Sequence[SeedPoint], Sequence[Sequence[float]], Any]


def as_seed_points(seeds: SeedsLike) -> List[SeedPoint]:
    """Seeds from SeedPoints, (R, A, S) tuples, or markups fiducial nodes (group = node name)."""
    if seeds is None:
        return []
    if hasattr(seeds, "GetNumberOfControlPoints"):
        seeds = [seeds]
    points: List[SeedPoint] = []
    for item in seeds:
        if isinstance(item, SeedPoint):
            points.append(item)
        elif hasattr(item, "GetNumberOfControlPoints"):
            points.extend(seeds_from_markups(item))
        else:
            values = [float(v) for v in item]
            if len(values) != 3:
                raise UserInputError(f"a seed needs 3 coordinates (R, A, S), got {values}")
            points.append(SeedPoint(tuple(values)))  # type: ignore[arg-type]
    return points


def seeds_from_markups(node: Any, group: Optional[str] = None) -> List[SeedPoint]:
    """Control points of a markups node as seeds (world RAS, transforms applied); group = node name."""
    points = []
    name = group if group is not None else node.GetName()
    for index in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        points.append(SeedPoint(tuple(position), name))  # type: ignore[arg-type]
    return points


def post_process(ctx: SegmentationContext, segments: List[SegmentMask], post: Mapping[str, Any]) -> List[SegmentMask]:
    """Apply the post-processing options to every segment (order in the module docstring)."""
    spacing = ctx.spacing_ijk
    active = (
        post.get("mask_lower") is not None
        or post.get("mask_upper") is not None
        or any(post.get(name) for name in _POST_SWITCHES)
        or post.get("smoothing", "none") != "none"
    )
    result = []
    for segment in segments:
        if not active and (segment.is_labelled or (ctx.mask is None and segment.mask.dtype == bool)):
            # Nothing to do: keep the segment as it is (a labelled one stays a view of its label image;
            # methods already restrict labelled segments to the context mask).
            result.append(segment)
            continue
        mask = np.asarray(segment.mask, dtype=bool)
        if post.get("mask_lower") is not None or post.get("mask_upper") is not None:
            mask = postprocess.mask_by_intensity(mask, ctx.array, post.get("mask_lower"), post.get("mask_upper"))
        if post.get("keep_largest_island"):
            mask = postprocess.keep_largest_island(mask)
        if post.get("min_island_mm3"):
            mask = postprocess.remove_small_islands(mask, int(np.ceil(post["min_island_mm3"] / ctx.voxel_volume_mm3)))
        if post.get("fill_holes"):
            mask = postprocess.fill_holes(mask)
        if post.get("smoothing", "none") != "none":
            mask = postprocess.smooth(mask, post["smoothing"], post["smoothing_mm"], spacing)
        if post.get("margin_mm"):
            mask = postprocess.margin(mask, post["margin_mm"], spacing)
        if post.get("hollow_mm"):
            mask = postprocess.hollow(mask, post["hollow_mm"], spacing)
        if ctx.mask is not None:
            mask = mask & ctx.mask
        result.append(SegmentMask(segment.name, mask, segment.terminology, segment.color))
    return result


def split_parameters(method: Method, given: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(method parameters, post-processing parameters) from one mapping, both validated."""
    post_names = {param.name for param in POST_PARAMS}
    method_given = {k: v for k, v in given.items() if k not in post_names}
    post_given = {k: v for k, v in given.items() if k in post_names}
    return resolve_parameters(method, method_given), resolve_parameters(_POST_METHOD, post_given)


def _check_seeds(method: Method, seeds: List[SeedPoint]) -> None:
    if method.seeds == SEEDS_REQUIRED and not seeds:
        raise UserInputError(f"{method.name}: needs at least one seed point (--seeds R,A,S or a .mrk.json)")
    if method.seeds == SEEDS_LABELLED and len({seed.group for seed in seeds}) < 2:
        raise UserInputError(
            f"{method.name}: needs seeds of at least two segments (--seeds R,A,S@NAME, or one .mrk.json per segment)"
        )


def run_method(
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    method: Union[str, Method],
    seeds: SeedsLike = None,
    mask: Optional[np.ndarray] = None,
    parameters: Optional[Mapping[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    image: Any = None,
) -> List[SegmentMask]:
    """Run a method (and the post-processing options among ``parameters``) on a numpy volume.

    ``image`` may pass the SimpleITK copy of ``array`` when the caller has one (see
    :func:`segment_volume_node`), saving the copy, which costs as much as a fast filter."""
    method = get_method(method) if isinstance(method, str) else method
    method_params, post_params = split_parameters(method, parameters or {})
    seed_points = as_seed_points(seeds)
    _check_seeds(method, seed_points)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise UserInputError(f"{method.name}: mask shape {mask.shape} differs from the volume {array.shape}")
        if not np.any(mask):
            raise UserInputError(f"{method.name}: the mask is empty")
    ctx = SegmentationContext(
        array, np.asarray(ijk_to_ras, dtype=np.float64), seed_points, mask, progress, cancel, method.name
    )
    ctx._image = image
    ctx.seed_indices()  # validate seeds up front, even for methods that only use them optionally
    ctx.report(0.0, method.name)
    segments = method.run(ctx, method_params)
    ctx.report(0.8, "post-processing")
    segments = post_process(ctx, segments, post_params)
    if not any(segment.any() for segment in segments):
        raise UserInputError(f"{method.name}: the result is empty after post-processing")
    ctx.report(1.0, "done")
    return segments


def mask_from_segment(volume: Any, segmentation: Any, segment: str) -> np.ndarray:
    """A segment (by name or ID) as a boolean mask on the volume's grid."""
    from MedSegLib.segmentation.output import find_segment_id, segment_array

    return segment_array(segmentation, find_segment_id(segmentation, segment), volume)


def segment_volume_node(
    volume: Any,
    segmentation: Any = None,
    method: Union[str, Method] = "threshold",
    seeds: SeedsLike = None,
    mask: Any = None,
    parameters: Optional[Mapping[str, Any]] = None,
    replace_existing: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **extra: Any,
) -> SegmentationResult:
    """Segment ``volume`` (a scalar volume node) with ``method`` into ``segmentation`` (created if None).

    ``parameters`` (or keyword arguments) are the method's and post-processing declarations, e.g.
    ``segment_volume_node(ct, method="threshold", lower=200, keep_largest_island=True)``.
    ``mask`` is a boolean array on the volume grid or ``(segmentation_node, segment_name_or_id)``.
    Segments with the same name are replaced, so re-running updates the result in place.
    """
    import slicer

    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segments

    if volume is None or volume.GetImageData() is None:
        raise UserInputError("segment: no input volume (or it has no voxels)")
    method = get_method(method) if isinstance(method, str) else method
    given = dict(parameters or {})
    given.update(extra)
    if isinstance(mask, tuple):
        mask = mask_from_segment(volume, *mask)
    timings: Dict[str, float] = {}
    started = time.perf_counter()
    array = slicer.util.arrayFromVolume(volume)
    from MedSegLib.volume_nodes import get_ijk_to_ras

    ijk_to_ras = get_ijk_to_ras(volume)
    image = _cached_image(volume, array, ijk_to_ras)
    segments = run_method(array, ijk_to_ras, method, seeds, mask, given, progress, cancel, image)
    timings["compute"] = time.perf_counter() - started
    started = time.perf_counter()
    segmentation = ensure_segmentation_node(volume, segmentation)
    ids = write_segments(segmentation, volume, segments, replace_existing)
    timings["write"] = time.perf_counter() - started
    method_params, post_params = split_parameters(method, given)
    return SegmentationResult(segmentation, ids, method.name, {**method_params, **post_params}, timings)


_IMAGE_CACHE: Dict[str, Tuple[Tuple[Any, ...], Any]] = {}


def _cached_image(volume: Any, array: np.ndarray, ijk_to_ras: np.ndarray) -> Any:
    """The SimpleITK copy of a volume node's voxels, kept for one volume while its voxels and geometry
    are unchanged (re-runs from the panel then skip the copy)."""
    from MedSegLib.segmentation.core import image_from_array

    image_data = volume.GetImageData()
    key = (volume.GetID(), image_data.GetMTime(), array.ctypes.data, array.shape, ijk_to_ras.tobytes())
    cached = _IMAGE_CACHE.get(volume.GetID() or "")
    if cached is not None and cached[0] == key:
        return cached[1]
    _IMAGE_CACHE.clear()  # one volume at a time: the copy is as big as the volume
    image = image_from_array(array, ijk_to_ras)
    _IMAGE_CACHE[volume.GetID() or ""] = (key, image)
    return image


def clear_image_cache() -> None:
    _IMAGE_CACHE.clear()


def method_names(category: Optional[str] = None) -> List[str]:
    return [m.name for m in methods().values() if category is None or m.category == category]


def iter_methods() -> Iterable[Method]:
    return list(methods().values())
