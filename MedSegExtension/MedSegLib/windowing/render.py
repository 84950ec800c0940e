"""PNG rendering of windowed volumes: single slices, every slice, montages, presets side by side, overlays.

Images follow Slicer's radiological display (see :mod:`MedSegLib.display_slices`: axial with patient
right on the image's left and anterior at the top) and have square pixels in millimetres (nearest-
neighbour stretch along the coarser axis), so anisotropic volumes keep their true aspect ratio.
Windowing uses the exact fast path, so PNG grey values equal the ``.nrrd`` output's values.
Segment overlays come from ``slicer.util.arrayFromSegmentBinaryLabelmap`` with the volume as reference
geometry, drawn in each segment's colour as a translucent fill and/or an opaque outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.display_slices import display_pixel_spacing, display_slice, resample_to_square_pixels, slice_count
from MedSegLib.windowing.fast_window import window

VIEWS = ("axial", "coronal", "sagittal")
GAP = 4  # black pixels between tiles of a montage / side-by-side image
FILL_ALPHA = 0.35


@dataclass(frozen=True)
class WindowSpec:
    """What to render: window, level, VOI function and a label (preset name)."""

    window: float
    level: float
    function: str = "seed"
    label: str = ""


@dataclass(frozen=True)
class SegmentMask:
    """One segment resampled onto the volume's grid (array[k, j, i] of 0/1) with its RGB colour in 0..1."""

    name: str
    mask: np.ndarray
    color: Tuple[float, float, float]


def segment_masks(segmentation_node: Any, volume_node: Any) -> List[SegmentMask]:
    """Every segment of a segmentation on the volume's voxel grid (``arrayFromSegmentBinaryLabelmap``)."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    masks = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
        if array is None:
            continue
        masks.append(SegmentMask(segment.GetName(), np.asarray(array) != 0, tuple(segment.GetColor())))
    return masks


def oriented(array: np.ndarray, ijk_to_ras: np.ndarray, view: str, index: int) -> np.ndarray:
    """One display-oriented slice with square pixels (nearest neighbour)."""
    image = display_slice(array, ijk_to_ras, view, index)
    return resample_to_square_pixels(image, *display_pixel_spacing(ijk_to_ras, view))


def check_slice_index(array: np.ndarray, ijk_to_ras: np.ndarray, view: str, index: Optional[int]) -> int:
    """The slice index to show (default: the middle); out of range -> ValueError with the valid range."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    count = slice_count(array, ijk_to_ras, view)
    if index is None:
        return count // 2
    if not 0 <= index < count:
        raise ValueError(f"slice {index} is out of range for the {view} view (0..{count - 1})")
    return int(index)


def outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (a one-pixel inner contour)."""
    mask = mask.astype(bool)
    padded = np.pad(mask, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


Colour = Tuple[float, float, float]


def blend_overlays(grey: np.ndarray, masks: Sequence[Tuple[np.ndarray, Colour]], mode: str) -> np.ndarray:
    """RGB image: grey + each (2D mask, colour) as fill (alpha 0.35), outline, or both."""
    if mode not in ("outline", "fill", "both"):
        raise ValueError(f"overlay mode must be outline, fill or both, got {mode!r}")
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    for mask, color in masks:
        colour = np.asarray(color, dtype=np.float32) * 255.0
        mask = mask.astype(bool)
        if mode in ("fill", "both") and mask.any():
            rgb[mask] = rgb[mask] * (1.0 - FILL_ALPHA) + colour * FILL_ALPHA
        if mode in ("outline", "both"):
            rgb[outline(mask)] = colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_slice(
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    spec: WindowSpec,
    view: str = "axial",
    index: Optional[int] = None,
    overlays: Sequence[SegmentMask] = (),
    overlay_mode: str = "both",
    windowed: Optional[np.ndarray] = None,
) -> np.ndarray:
    """One windowed slice (uint8 grey, or RGB with overlays). ``windowed``: the volume already windowed."""
    index = check_slice_index(array, ijk_to_ras, view, index)
    if windowed is not None:
        grey = oriented(windowed, ijk_to_ras, view, index)
    else:
        grey = window(oriented(array, ijk_to_ras, view, index), spec.level, spec.window, spec.function, np.uint8)
    if not overlays:
        return grey
    masks = [(oriented(item.mask, ijk_to_ras, view, index), item.color) for item in overlays]
    return blend_overlays(grey, masks, overlay_mode)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def tile(images: Sequence[np.ndarray], columns: int, gap: int = GAP) -> np.ndarray:
    """Grid of equally sized images, row-major, ``gap`` black pixels apart (RGB if any tile is RGB)."""
    if not images:
        raise ValueError("nothing to tile")
    rgb = any(image.ndim == 3 for image in images)
    images = [_as_rgb(image) if rgb else image for image in images]
    rows_needed = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    shape = (rows_needed * height + (rows_needed - 1) * gap, columns * width + (columns - 1) * gap)
    canvas = np.zeros(shape + ((3,) if rgb else ()), dtype=np.uint8)
    for number, image in enumerate(images):
        row, column = divmod(number, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top : top + height, left : left + width] = image
    return canvas


def side_by_side(images: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Images in one row (e.g. lung | mediastinum | bone windows of the same slice)."""
    return tile(images, columns=len(images), gap=gap)


def montage_indices(count: int, tiles: Optional[int]) -> List[int]:
    """``tiles`` slice indices spread evenly from first to last (all slices when tiles is None or larger)."""
    if tiles is None or tiles >= count:
        return list(range(count))
    if tiles < 1:
        raise ValueError("a montage needs at least one tile")
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, tiles)})


def render_montage(
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    spec: WindowSpec,
    view: str = "axial",
    tiles: Optional[int] = 16,
    columns: Optional[int] = None,
    overlays: Sequence[SegmentMask] = (),
    overlay_mode: str = "both",
) -> np.ndarray:
    """Evenly spaced slices of one view in a near-square grid (``columns`` default ceil(sqrt(n)))."""
    check_slice_index(array, ijk_to_ras, view, None)
    indices = montage_indices(slice_count(array, ijk_to_ras, view), tiles)
    images = [render_slice(array, ijk_to_ras, spec, view, i, overlays, overlay_mode) for i in indices]
    return tile(images, columns or math.ceil(math.sqrt(len(images))))


def render_presets_side_by_side(
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    specs: Sequence[WindowSpec],
    view: str = "axial",
    index: Optional[int] = None,
    overlays: Sequence[SegmentMask] = (),
    overlay_mode: str = "both",
) -> np.ndarray:
    """The same slice under several windows in one row (the demo report's lung | mediastinum | bone)."""
    return side_by_side([render_slice(array, ijk_to_ras, spec, view, index, overlays, overlay_mode) for spec in specs])


def write_all_slices(
    folder: Path,
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    spec: WindowSpec,
    view: str = "axial",
    overlays: Sequence[SegmentMask] = (),
    overlay_mode: str = "both",
    prefix: Optional[str] = None,
    progress: Optional[Callable[[float, str], None]] = None,
) -> List[Path]:
    """Every slice of a view as ``<prefix>_<NNNN>.png`` (index along the view's normal, file order)."""
    from MedSegLib.png_writer import write_png

    check_slice_index(array, ijk_to_ras, view, None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = slice_count(array, ijk_to_ras, view)
    windowed = window(array, spec.level, spec.window, spec.function, np.uint8)  # once, whole volume
    digits = max(4, len(str(count - 1)))
    paths = []
    for index in range(count):
        image = render_slice(array, ijk_to_ras, spec, view, index, overlays, overlay_mode, windowed=windowed)
        paths.append(write_png(folder / f"{prefix or view}_{index:0{digits}d}.png", image))
        if progress is not None:
            progress((index + 1) / count, f"slice {index + 1}/{count}")
    return paths


def save_windowed_volume(volume_node: Any, spec: WindowSpec, path: Path, out_dtype: Any = np.uint8) -> Path:
    """Write the windowed volume (uint8 by default) on the input's exact grid as .nrrd / .nii.gz / ...

    The output is windowed straight into the new node's image buffer (no second copy), and the
    temporary node is removed afterwards, so the scene is left as it was.
    """
    import slicer
    import vtk

    from MedSegLib.node_io import save_node
    from MedSegLib.volume_nodes import array_and_ijk_to_ras, set_ijk_to_ras

    array, ijk_to_ras = array_and_ijk_to_ras(volume_node)
    dtype = np.dtype(out_dtype)
    vtk_type = {np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT}.get(
        dtype, vtk.VTK_DOUBLE
    )
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volume_node.GetName()} windowed")
    try:
        image = vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        image.AllocateScalars(vtk_type, 1)
        node.SetAndObserveImageData(image)
        set_ijk_to_ras(node, ijk_to_ras)
        window(array, spec.level, spec.window, spec.function, dtype, out=slicer.util.arrayFromVolume(node))
        slicer.util.arrayFromVolumeModified(node)
        return save_node(node, Path(path))
    finally:
        for extra in (node.GetStorageNode(), node.GetDisplayNode(), node):
            if extra is not None:
                scene.RemoveNode(extra)
