"""Per-segment statistics with the measurement names and units of Slicer's Segment Statistics module.

Keys follow SegmentStatistics (``LabelmapSegmentStatisticsPlugin.volume_mm3`` ...) so tables and JSON
from MedSeg and from Slicer line up column by column. Label-map measures are computed on the segment's
binary label map on the segmentation's own geometry (as Slicer does); scalar measures on the voxels of
the scalar volume inside the segment resampled to the volume grid (as the Scalar Volume plugin does,
which is why its volume uses the scalar volume's spacing).

Shape measures (centroid, principal axes, OBB, surface area, sphericity...) use ITK's
LabelShapeStatistics (the filter behind Slicer's vtkITKLabelShapeStatistics); directions and points are
converted from ITK's LPS to RAS.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from MedSegLib.errors import UserInputError

LABELMAP = "LabelmapSegmentStatisticsPlugin"
SCALAR = "ScalarVolumeSegmentStatisticsPlugin"
SURFACE = "ClosedSurfaceSegmentStatisticsPlugin"


@dataclass(frozen=True)
class Measurement:
    key: str  # "<Plugin>.<key>" as SegmentStatistics stores it
    name: str  # column title
    unit: str


MEASUREMENTS: Tuple[Measurement, ...] = (
    Measurement(f"{LABELMAP}.voxel_count", "Voxel count", ""),
    Measurement(f"{LABELMAP}.volume_mm3", "Volume mm3", "mm3"),
    Measurement(f"{LABELMAP}.volume_cm3", "Volume cm3", "cm3"),
    Measurement(f"{LABELMAP}.surface_area_mm2", "Surface mm2", "mm2"),
    Measurement(f"{LABELMAP}.centroid_ras", "Centroid", "RAS"),
    Measurement(f"{LABELMAP}.feret_diameter_mm", "Feret diameter mm", "mm"),
    Measurement(f"{LABELMAP}.roundness", "Roundness", ""),
    Measurement(f"{LABELMAP}.flatness", "Flatness", ""),
    Measurement(f"{LABELMAP}.elongation", "Elongation", ""),
    Measurement(f"{LABELMAP}.principal_moments", "Principal moments", ""),
    Measurement(f"{LABELMAP}.principal_axis_x", "Principal X axis", "RAS"),
    Measurement(f"{LABELMAP}.principal_axis_y", "Principal Y axis", "RAS"),
    Measurement(f"{LABELMAP}.principal_axis_z", "Principal Z axis", "RAS"),
    Measurement(f"{LABELMAP}.obb_origin_ras", "OBB origin", "RAS"),
    Measurement(f"{LABELMAP}.obb_diameter_mm", "OBB diameter", "mm"),
    Measurement(f"{LABELMAP}.obb_direction_ras_x", "OBB X direction", "RAS"),
    Measurement(f"{LABELMAP}.obb_direction_ras_y", "OBB Y direction", "RAS"),
    Measurement(f"{LABELMAP}.obb_direction_ras_z", "OBB Z direction", "RAS"),
    Measurement(f"{LABELMAP}.sphericity", "Sphericity", ""),
    Measurement(f"{SCALAR}.voxel_count", "Voxel count", ""),
    Measurement(f"{SCALAR}.volume_mm3", "Volume mm3", "mm3"),
    Measurement(f"{SCALAR}.volume_cm3", "Volume cm3", "cm3"),
    Measurement(f"{SCALAR}.min", "Minimum", ""),
    Measurement(f"{SCALAR}.max", "Maximum", ""),
    Measurement(f"{SCALAR}.mean", "Mean", ""),
    Measurement(f"{SCALAR}.median", "Median", ""),
    Measurement(f"{SCALAR}.stdev", "Standard deviation", ""),
    Measurement(f"{SCALAR}.percentile_05", "Percentile 5", ""),
    Measurement(f"{SCALAR}.percentile_10", "Percentile 10", ""),
    Measurement(f"{SCALAR}.percentile_90", "Percentile 90", ""),
    Measurement(f"{SCALAR}.percentile_95", "Percentile 95", ""),
)
MEASUREMENT_BY_KEY: Dict[str, Measurement] = {m.key: m for m in MEASUREMENTS}


@dataclass
class SegmentStatisticsTable:
    """Rows per segment (ID, name and values keyed by measurement key) plus the units for display."""

    segment_ids: List[str] = field(default_factory=list)
    names: Dict[str, str] = field(default_factory=dict)
    values: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    scalar_unit: str = ""

    def value(self, segment: str, key: str) -> Any:
        """Value by segment ID or name and by key (full "Plugin.key" or short "volume_mm3" = label map)."""
        segment_id = (
            segment
            if segment in self.values
            else next((sid for sid, name in self.names.items() if name == segment), None)
        )
        if segment_id is None:
            raise KeyError(segment)
        full = key if "." in key else f"{LABELMAP}.{key}"
        return self.values[segment_id].get(full)

    def keys(self) -> List[str]:
        present = {key for row in self.values.values() for key in row}
        return [m.key for m in MEASUREMENTS if m.key in present]

    def unit(self, key: str) -> str:
        measurement = MEASUREMENT_BY_KEY[key]
        if key.startswith(SCALAR) and not measurement.unit:
            return self.scalar_unit
        return measurement.unit

    def column_title(self, key: str) -> str:
        """ "Volume mm3" / "Mean (HU)"-style column titles without duplicates between plugins."""
        measurement = MEASUREMENT_BY_KEY[key]
        title = measurement.name
        if key.startswith(SCALAR) and key.split(".")[1] in ("voxel_count", "volume_mm3", "volume_cm3"):
            title = f"{title} (scalar volume)"
        unit = self.unit(key)
        if unit and unit not in title and unit != "RAS":
            title = f"{title} ({unit})"
        return title

    def to_dict(self) -> Dict[str, Any]:
        return {
            "measurements": {
                key: {"name": MEASUREMENT_BY_KEY[key].name, "unit": self.unit(key)} for key in self.keys()
            },
            "segments": [
                {"id": sid, "name": self.names[sid], **{key: _jsonable(v) for key, v in self.values[sid].items()}}
                for sid in self.segment_ids
            ],
        }

    def write(self, path: Union[str, os.PathLike[str]]) -> Path:
        """CSV (one row per segment, first column "Segment" as Slicer) or JSON, chosen by extension."""
        from MedSegLib.atomic import atomic_output

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise UserInputError("statistics output must end in .csv or .json", path)
        with atomic_output(path) as temp_path:
            if suffix == ".json":
                temp_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
            else:
                keys = self.keys()
                with open(temp_path, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["Segment"] + [self.column_title(key) for key in keys])
                    for sid in self.segment_ids:
                        writer.writerow([self.names[sid]] + [_csv_cell(self.values[sid].get(key)) for key in keys])
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [float(v) for v in value.ravel()]
    if isinstance(value, (tuple, list)):
        return [float(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(f"{float(v):.6g}" for v in np.ravel(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6g}"


def _lps_to_ras(vector: Sequence[float]) -> List[float]:
    x, y, z = (float(v) for v in vector)
    return [-x, -y, z]


def labelmap_statistics(mask: np.ndarray, ijk_to_ras: np.ndarray, shape_measures: bool = True) -> Dict[str, Any]:
    """Label-map measures of one binary mask on a grid (volume, surface, centroid, axes, OBB...)."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.core import image_from_array

    mask = np.asarray(mask, dtype=bool)
    voxel_volume = float(abs(np.linalg.det(ijk_to_ras[:3, :3])))
    count = int(np.count_nonzero(mask))
    values: Dict[str, Any] = {
        f"{LABELMAP}.voxel_count": count,
        f"{LABELMAP}.volume_mm3": count * voxel_volume,
        f"{LABELMAP}.volume_cm3": count * voxel_volume / 1000.0,
    }
    if not shape_measures or count == 0:
        return values
    # Crop to the bounding box (+1 voxel) so shape statistics cost what the segment costs.
    nonzero = np.nonzero(mask)
    low = [max(0, int(n.min()) - 1) for n in nonzero]
    high = [min(s, int(n.max()) + 2) for n, s in zip(nonzero, mask.shape)]
    crop = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    offset = np.array([low[2], low[1], low[0]], dtype=np.float64)
    cropped_matrix = ijk_to_ras.copy()
    cropped_matrix[:3, 3] = ijk_to_ras[:3, :3] @ offset + ijk_to_ras[:3, 3]
    image = image_from_array(crop.astype(np.uint8), cropped_matrix)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.SetComputeFeretDiameter(True)
    shape.SetComputePerimeter(True)
    shape.SetComputeOrientedBoundingBox(True)
    shape.Execute(image)
    if not shape.HasLabel(1):
        return values
    surface = float(shape.GetPerimeter(1))
    volume = count * voxel_volume
    axes = np.asarray(shape.GetPrincipalAxes(1), dtype=np.float64).reshape(3, 3)
    obb_directions = np.asarray(shape.GetOrientedBoundingBoxDirection(1), dtype=np.float64).reshape(3, 3)
    values.update(
        {
            f"{LABELMAP}.surface_area_mm2": surface,
            f"{LABELMAP}.centroid_ras": _lps_to_ras(shape.GetCentroid(1)),
            f"{LABELMAP}.feret_diameter_mm": float(shape.GetFeretDiameter(1)),
            f"{LABELMAP}.roundness": float(shape.GetRoundness(1)),
            f"{LABELMAP}.flatness": float(shape.GetFlatness(1)),
            f"{LABELMAP}.elongation": float(shape.GetElongation(1)),
            f"{LABELMAP}.principal_moments": [float(v) for v in shape.GetPrincipalMoments(1)],
            f"{LABELMAP}.principal_axis_x": _lps_to_ras(axes[0]),
            f"{LABELMAP}.principal_axis_y": _lps_to_ras(axes[1]),
            f"{LABELMAP}.principal_axis_z": _lps_to_ras(axes[2]),
            f"{LABELMAP}.obb_origin_ras": _lps_to_ras(shape.GetOrientedBoundingBoxOrigin(1)),
            f"{LABELMAP}.obb_diameter_mm": [float(v) for v in shape.GetOrientedBoundingBoxSize(1)],
            f"{LABELMAP}.obb_direction_ras_x": _lps_to_ras(obb_directions[0]),
            f"{LABELMAP}.obb_direction_ras_y": _lps_to_ras(obb_directions[1]),
            f"{LABELMAP}.obb_direction_ras_z": _lps_to_ras(obb_directions[2]),
            # Sphericity (Wadell): surface of the equal-volume sphere / actual surface; 1 for a sphere.
            f"{LABELMAP}.sphericity": float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / surface) if surface else None,
        }
    )
    return values


def scalar_statistics(values: np.ndarray, voxel_volume_mm3: float) -> Dict[str, Any]:
    """Intensity measures of the voxels inside a segment (exact percentiles, as Slicer's plugin)."""
    values = np.asarray(values)
    count = int(values.size)
    result: Dict[str, Any] = {
        f"{SCALAR}.voxel_count": count,
        f"{SCALAR}.volume_mm3": count * voxel_volume_mm3,
        f"{SCALAR}.volume_cm3": count * voxel_volume_mm3 / 1000.0,
    }
    if count == 0:
        return result
    as_float = values.astype(np.float64)
    p5, p10, p50, p90, p95 = np.percentile(as_float, [5, 10, 50, 90, 95])
    result.update(
        {
            f"{SCALAR}.min": float(as_float.min()),
            f"{SCALAR}.max": float(as_float.max()),
            f"{SCALAR}.mean": float(as_float.mean()),
            f"{SCALAR}.median": float(p50),
            f"{SCALAR}.stdev": float(as_float.std()),
            f"{SCALAR}.percentile_05": float(p5),
            f"{SCALAR}.percentile_10": float(p10),
            f"{SCALAR}.percentile_90": float(p90),
            f"{SCALAR}.percentile_95": float(p95),
        }
    )
    return result


def _segment_on_own_geometry(segmentation: Any, segment_id: str) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """(mask [k, j, i], IJKToRAS) of a segment's binary label map on its own (effective) extent."""
    import slicer
    import vtk

    from MedSegLib.volume_nodes import vtk_matrix_to_numpy

    labelmap = slicer.vtkOrientedImageData()
    if not segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        return None, np.eye(4)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return None, np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    ijk_to_ras = vtk_matrix_to_numpy(matrix)
    from vtk.util import numpy_support

    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    scalars = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array(extent[::2], dtype=np.float64) + ijk_to_ras[:3, 3]
    return scalars > 0, ijk_to_ras


def compute_statistics(
    segmentation: Any,
    volume: Any = None,
    segment_ids: Optional[Sequence[str]] = None,
    shape_measures: bool = True,
    scalar_unit: Optional[str] = None,
) -> SegmentStatisticsTable:
    """Statistics of every segment (or ``segment_ids``) of a segmentation node, with an optional
    scalar volume for intensity measures."""
    from MedSegLib.segmentation.output import segment_array
    from MedSegLib.volume_nodes import get_ijk_to_ras

    seg = segmentation.GetSegmentation()
    ids = (
        list(segment_ids)
        if segment_ids is not None
        else [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    )
    table = SegmentStatisticsTable(scalar_unit=scalar_unit if scalar_unit is not None else _volume_unit(volume))
    array = None
    voxel_volume = 0.0
    if volume is not None:
        import slicer

        array = slicer.util.arrayFromVolume(volume)
        voxel_volume = float(abs(np.linalg.det(get_ijk_to_ras(volume)[:3, :3])))
    for segment_id in ids:
        segment = seg.GetSegment(segment_id)
        if segment is None:
            raise UserInputError(f"segment {segment_id!r} not in {segmentation.GetName()!r}")
        mask, ijk_to_ras = _segment_on_own_geometry(segmentation, segment_id)
        row = (
            labelmap_statistics(mask, ijk_to_ras, shape_measures)
            if mask is not None
            else labelmap_statistics(np.zeros((1, 1, 1), bool), np.eye(4), False)
        )
        if array is not None:
            on_volume = segment_array(segmentation, segment_id, volume)
            row.update(scalar_statistics(array[on_volume], voxel_volume))
        table.segment_ids.append(segment_id)
        table.names[segment_id] = segment.GetName()
        table.values[segment_id] = row
    return table


def _volume_unit(volume: Any) -> str:
    """ "HU" for CT-like volumes (Slicer: "Hounsfield unit" from DICOM), else the node's unit if any."""
    if volume is None:
        return ""
    quantity = volume.GetVoxelValueUnits() if hasattr(volume, "GetVoxelValueUnits") else None
    if quantity is not None and quantity.GetCodeMeaning():
        return quantity.GetCodeMeaning()
    return ""
