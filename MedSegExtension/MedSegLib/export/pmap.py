"""Quantitative map volume <-> DICOM Parametric Map (highdicom) with real-world value mapping and UCUM units.

Values are stored as 32-bit floats (Float Pixel Data) with an identity real-world value mapping that names the
quantity and its unit (T1/T2/T2* in ``ms``, R2* in ``/s``), so a viewer shows physical values and the round trip
returns the same float32 numbers. The map must lie on the reference series grid: quantitative values are never
silently interpolated.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.export.reference import (
    ReferenceSeries,
    equipment,
    mark_laterality_unknown,
    ras_from_hd_affine,
    right_handed,
)

PathLike = Union[str, Path]
PM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
GRID_TOLERANCE_MM = 1e-3

#: quantity -> (DCM code value, meaning, UCUM unit code, unit meaning)
QUANTITIES = {
    "T1": ("113063", "T1", "ms", "millisecond"),
    "T2": ("113065", "T2", "ms", "millisecond"),
    "T2star": ("113064", "T2*", "ms", "millisecond"),
    "R2star": ("126395", "R2*", "/s", "per second"),
}
UNIT_ALIASES = {
    "ms": ("ms", "millisecond"),
    "s": ("s", "second"),
    "/s": ("/s", "per second"),
    "1/s": ("/s", "per second"),
    "s-1": ("/s", "per second"),
    "hz": ("Hz", "hertz"),
    "1": ("1", "no units"),
    "": ("1", "no units"),
}


@dataclasses.dataclass
class ParametricMapData:
    """Values (k, j, i float32), IJKToRAS and the quantity/unit read back from a Parametric Map."""

    values: np.ndarray
    ijk_to_ras: np.ndarray
    quantity: str
    unit: str
    referenced_series_uid: str = ""


def unit_code(unit: str) -> Tuple[str, str]:
    """UCUM (code, meaning) for a unit written as MedSeg writes it (``ms``, ``1/s``...)."""
    key = unit.strip().lower() if unit.strip().lower() in UNIT_ALIASES else unit.strip()
    if key in UNIT_ALIASES:
        return UNIT_ALIASES[key]
    raise UserInputError(f"unknown unit {unit!r} (known: ms, s, 1/s, Hz, 1)")


def _content_label(quantity: str) -> str:
    """ContentLabel is a CS: upper-case letters, digits and underscores, at most 16, none at the ends."""
    label = re.sub(r"[^A-Z0-9_]+", "_", quantity.upper().replace("*", "STAR"))[:16].strip("_ ")
    return label or "MAP"


def check_on_grid(values: np.ndarray, ijk_to_ras: np.ndarray, reference: ReferenceSeries, label: str) -> None:
    if tuple(values.shape) != reference.shape:
        raise UserInputError(
            f"map shape {values.shape} differs from the reference series {reference.shape}; "
            "resample the map onto the reference first",
            label,
        )
    corners = np.array([[0, 0, 0, 1], [values.shape[2] - 1, values.shape[1] - 1, values.shape[0] - 1, 1]], float).T
    if not np.allclose(ijk_to_ras @ corners, reference.ijk_to_ras @ corners, atol=GRID_TOLERANCE_MM):
        raise UserInputError("map geometry differs from the reference series (origin, spacing or direction)", label)


def write_parametric_map(
    values: np.ndarray,
    ijk_to_ras: np.ndarray,
    reference: ReferenceSeries,
    out_path: PathLike,
    quantity: str = "T1",
    unit: Optional[str] = None,
    series_description: str = "",
    series_number: int = 902,
    deidentify: Any = None,
    label: str = "map",
) -> Path:
    """Write a float32 Parametric Map of ``values`` (k, j, i) on the reference grid."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    from MedSegLib.atomic import atomic_output

    values = np.asarray(values, dtype=np.float32)
    check_on_grid(values, np.asarray(ijk_to_ras, float), reference, label)
    known = QUANTITIES.get(quantity)
    unit_value, unit_meaning = unit_code(unit if unit is not None else (known[2] if known else "1"))
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=quantity[:16],
        lut_explanation=f"{known[1] if known else quantity} ({unit_meaning})"[:64],
        unit=CodedConcept(value=unit_value, scheme_designator="UCUM", meaning=unit_meaning),
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
        quantity_definition=CodedConcept(value=known[0], scheme_designator="DCM", meaning=known[1]) if known else None,
    )
    center, width = (low + high) / 2.0, max(high - low, 1e-6)
    # LINEAR windows must be >= 1 wide; narrow ranges (R2, fractions) need LINEAR_EXACT
    voi_function = "LINEAR" if width >= 1.0 else "LINEAR_EXACT"
    with warnings.catch_warnings():  # source names like "HEAD" draw a person-name style warning
        warnings.filterwarnings("ignore", message=".*intended person name")
        pmap = hd.pm.ParametricMap(
            source_images=reference.datasets,
            pixel_array=np.ascontiguousarray(values),
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=center, window_width=width, voi_lut_function=voi_function)
            ],
            content_label=_content_label(quantity),
            content_description=(series_description or f"MedSeg {quantity} map")[:64],
            **equipment(),
        )
    pmap.SeriesDescription = (series_description or f"MedSeg {quantity} map")[:64]
    mark_laterality_unknown(pmap)
    if deidentify is not None:
        deidentify.apply(pmap)
    with atomic_output(out_path) as temp:
        pmap.save_as(temp)
    return Path(out_path)


def export_volume_node(
    volume: Any,
    reference: ReferenceSeries,
    out_path: PathLike,
    quantity: Optional[str] = None,
    unit: Optional[str] = None,
    **options: Any,
) -> Path:
    """A map volume node (unit from its ``MedSeg.unit`` attribute, as the qMRI module sets it) -> Parametric Map."""
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    values, ijk_to_ras = array_and_ijk_to_ras(volume, copy=True)
    if quantity is None:
        name = volume.GetName()
        quantity = next((q for q in sorted(QUANTITIES, key=len, reverse=True) if q.lower() in name.lower()), name)
    if unit is None:
        unit = volume.GetAttribute("MedSeg.unit") or None
    return write_parametric_map(
        values, ijk_to_ras, reference, out_path, quantity=quantity, unit=unit, label=volume.GetName(), **options
    )


def read_parametric_map(path: PathLike) -> ParametricMapData:
    """Values after the real-world value mapping, with geometry, quantity and unit."""
    import highdicom as hd

    try:
        pmap = hd.pm.ParametricMap.from_file(str(path))
    except Exception as error:  # highdicom/pydicom raise many types for a non-PM file
        raise UserInputError(f"not a readable DICOM Parametric Map ({error})", path) from None
    try:
        volume = pmap.get_volume(apply_real_world_transform=True, dtype=np.float32)
    except (ValueError, RuntimeError) as error:
        raise UserInputError(f"Parametric Map frames do not form a regular 3D volume ({error})", path) from None
    values, ijk_to_ras = right_handed(np.asarray(volume.array), ras_from_hd_affine(volume.affine))
    mapping = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = str(mapping.MeasurementUnitsCodeSequence[0].CodeValue)
    referenced = str(pmap.ReferencedSeriesSequence[0].SeriesInstanceUID) if pmap.get("ReferencedSeriesSequence") else ""
    return ParametricMapData(
        values=np.ascontiguousarray(values, dtype=np.float32),
        ijk_to_ras=ijk_to_ras,
        quantity=str(mapping.LUTLabel),
        unit=unit,
        referenced_series_uid=referenced,
    )


def import_parametric_map(path: PathLike, scene: Any = None, name: Optional[str] = None) -> Any:
    """Parametric Map -> scalar volume node (float32) with ``MedSeg.unit`` set."""
    from MedSegLib.volume_nodes import add_volume_node

    data = read_parametric_map(path)
    node = add_volume_node(data.values, data.ijk_to_ras, name or data.quantity, scene)
    node.SetAttribute("MedSeg.unit", {"/s": "1/s"}.get(data.unit, data.unit))
    node.SetAttribute("MedSeg.quantity", data.quantity)
    return node
