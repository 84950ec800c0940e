"""One entry point per use: fit an ``Acquisition`` by model name (CLI), or a sequence node into volume nodes (panel).

Model names: ``ir``, ``vfa``, ``molli`` (T1); ``t2`` (mono-exponential, ``method`` mono/loglinear), ``epg`` (T2
with stimulated echoes); ``t2star``. Output volumes carry their unit in the ``MedSeg.unit`` attribute, a colour
table and a window from the 2nd-98th percentile of fitted voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback
from MedSegLib.qmri import fitting
from MedSegLib.qmri.acquisition import Acquisition, acquisition_from_sequence, protocol_values, repetition_times

MODELS = ("ir", "vfa", "molli", "t2", "epg", "t2star")
# maps written by the CLI for each primary parameter (in this order), extras follow when present
CORE_MAPS = ("M0", "R2", "RMSE", "status")


def fit_acquisition(
    acquisition: Acquisition,
    model: str,
    values: Optional[Sequence[float]] = None,
    tr_ms: Optional[Sequence[float] | float] = None,
    mask: Any = "auto",
    b1: Any = None,
    options: Optional[Dict[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> fitting.QMRIResult:
    """Fit ``model`` to the acquisition; protocol values come from ``values``/``tr_ms`` or the DICOM headers."""
    if model not in MODELS:
        raise UserInputError(f"unknown model '{model}' (choose from {', '.join(MODELS)})")
    options = dict(options or {})
    times = protocol_values(acquisition, model, values)
    data = acquisition.array
    try:
        if model == "ir":
            return fitting.fit_t1_ir(
                data,
                times,
                repetition_times(acquisition, tr_ms),
                mask=mask,
                progress=progress,
                cancel=cancel,
                **options,
            )
        if model == "molli":
            return fitting.fit_t1_molli(data, times, mask=mask, progress=progress, cancel=cancel, **options)
        if model == "vfa":
            tr = repetition_times(acquisition, tr_ms)
            if tr is None:
                raise UserInputError(f"series '{acquisition.name}': RepetitionTime (0018,0080) missing; give --tr")
            if np.ptp(tr) > 1e-6 * max(tr):
                raise UserInputError(f"series '{acquisition.name}': VFA needs one TR, found {sorted(set(tr))}")
            return fitting.fit_t1_vfa(data, times, tr[0], b1=b1, mask=mask, progress=progress, cancel=cancel, **options)
        if model == "t2":
            return fitting.fit_t2(data, times, mask=mask, progress=progress, cancel=cancel, **options)
        if model == "epg":
            return fitting.fit_t2_epg(data, times, b1=b1, mask=mask, progress=progress, cancel=cancel, **options)
        return fitting.fit_t2star(data, times, mask=mask, progress=progress, cancel=cancel, **options)
    except ValueError as error:
        raise UserInputError(f"series '{acquisition.name}': {error}") from error


def map_names(result: fitting.QMRIResult) -> list[str]:
    """Primary map first, then M0, R2, RMSE, status, then model-specific extras."""
    names = [result.primary] + [n for n in CORE_MAPS if n in result.maps]
    return names + [n for n in result.maps if n not in names]


def _style(node: Any, name: str, values: np.ndarray, status: np.ndarray) -> None:
    node.SetAttribute("MedSeg.unit", fitting.UNITS.get(name, ""))
    display = node.GetDisplayNode()
    if display is None:
        return
    if name == "status":
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0, 127)
        return
    fitted = values[status == 0]
    if fitted.size:
        low, high = np.percentile(fitted, [2, 98])
        if high > low:
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(float(low), float(high))
    scene = node.GetScene()
    for color_id in ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow"):
        if name in ("T1", "T2", "T2star", "R2star", "T1star") and scene is not None and scene.GetNodeByID(color_id):
            display.SetAndObserveColorNodeID(color_id)
            break


def add_result_nodes(
    result: fitting.QMRIResult,
    ijk_to_ras: np.ndarray,
    scene: Any = None,
    prefix: str = "",
    reuse: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """One scalar volume node per map (``reuse`` maps names to existing nodes to overwrite)."""
    import slicer

    from MedSegLib.volume_nodes import add_volume_node, set_ijk_to_ras

    nodes: Dict[str, Any] = {}
    status = result.maps["status"]
    for name in map_names(result):
        values = result.maps[name]
        existing = (reuse or {}).get(name)
        if existing is not None:
            slicer.util.updateVolumeFromArray(existing, np.ascontiguousarray(values))
            set_ijk_to_ras(existing, ijk_to_ras)
            if existing.GetDisplayNode() is None:
                existing.CreateDefaultDisplayNodes()
            node = existing
        else:
            node = add_volume_node(values, ijk_to_ras, f"{prefix}{name}", scene)
        _style(node, name, values, status)
        nodes[name] = node
    return nodes


def write_result(
    result: fitting.QMRIResult, ijk_to_ras: np.ndarray, out_dir: Path, file_format: str = "nrrd", scene: Any = None
) -> Dict[str, Path]:
    """Write every map to ``out_dir/<name>.<format>`` (atomic writes); returns name -> path."""
    from MedSegLib.node_io import save_node

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nodes = add_result_nodes(result, ijk_to_ras, scene, prefix="")
    written = {}
    for name, node in nodes.items():
        written[name] = save_node(node, out_dir / f"{name}.{file_format}")
    return written


def _segment_mask(mask: Any, reference_node: Any) -> Optional[np.ndarray]:
    """(segmentation node, segment id) -> boolean array on the reference volume's grid."""
    import slicer

    if mask is None:
        return None
    if isinstance(mask, tuple):
        segmentation, segment_id = mask
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference_node).astype(bool)
    return np.asarray(mask, dtype=bool)


def fit_sequence_node(
    sequence: Any,
    model: str,
    acquisition_values: Optional[Sequence[float]] = None,
    repetition_time_ms: Optional[float] = None,
    mask: Any = None,
    options: Optional[Dict[str, Any]] = None,
    output_nodes: Optional[Dict[str, Any]] = None,
    b1: Any = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[fitting.QMRIResult, Dict[str, Any]]:
    """Fit a sequence node (one volume per TI/FA/TE); returns the result and one volume node per map.

    ``mask``: None (Otsu), a boolean array, or ``(segmentation node, segment id)``. ``output_nodes`` maps map
    names to existing volume nodes that are overwritten (the panel's selectors); the others are created.
    ``b1`` (VFA, EPG): None, a number, or a scalar volume node on the sequence's grid (see ``b1_factor``).
    """
    acquisition = acquisition_from_sequence(sequence)
    array_mask = _segment_mask(mask, sequence.GetNthDataNode(0)) if mask is not None else "auto"
    b1_value = b1
    if b1 is not None and hasattr(b1, "GetImageData"):
        from MedSegLib.volume_nodes import array_and_ijk_to_ras

        array, _ = array_and_ijk_to_ras(b1, copy=True)
        b1_value = b1_factor(array, acquisition.array.shape[1:], b1.GetName())
    result = fit_acquisition(
        acquisition,
        model,
        acquisition_values,
        repetition_time_ms,
        array_mask,
        b1=b1_value,
        options=options,
        progress=progress,
        cancel=cancel,
    )
    nodes = add_result_nodes(
        result, acquisition.ijk_to_ras, sequence.GetScene(), f"{sequence.GetName()} ", output_nodes
    )
    return result, nodes


def b1_factor(array: Any, shape: tuple, name: str = "B1 map") -> np.ndarray:
    """A B1 map as the factor actual/nominal flip angle on the fit grid; percent maps (100 = nominal) are scaled."""
    b1 = np.asarray(array, dtype=np.float64)
    if b1.shape != tuple(shape):
        raise UserInputError(f"'{name}' has shape {b1.shape}, the images {tuple(shape)}: resample it onto their grid")
    positive = b1[np.isfinite(b1) & (b1 > 0)]
    if positive.size == 0:
        raise UserInputError(f"'{name}' has no positive values")
    return b1 / 100.0 if np.median(positive) > 10 else b1


def segment_statistics_table(
    result: fitting.QMRIResult, segmentation: Any, reference_node: Any, scene: Any = None
) -> Any:
    """Per-segment mean/SD/median/IQR of the primary map as a table node."""
    import slicer

    segment_ids = [
        segmentation.GetSegmentation().GetNthSegmentID(i)
        for i in range(segmentation.GetSegmentation().GetNumberOfSegments())
    ]
    labels = {
        segmentation.GetSegmentation().GetSegment(s).GetName(): slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation, s, reference_node
        )
        for s in segment_ids
    }
    stats = fitting.segment_statistics(result.maps[result.primary], labels, result.maps["status"])
    scene = scene or reference_node.GetScene()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{result.primary} statistics")
    columns = ["segment", "count", "mean", "sd", "median", "iqr"]
    for column in columns:
        array = table.AddColumn()
        array.SetName(column if column in ("segment", "count") else f"{column} ({fitting.UNITS.get(result.primary)})")
    for name, row in stats.items():
        index = table.AddEmptyRow()
        table.SetCellText(index, 0, name)
        for column_index, key in enumerate(columns[1:], start=1):
            table.SetCellText(index, column_index, f"{row[key]:.6g}")
    return table
