"""Segmentation node <-> DICOM SEG (highdicom).

Export samples every segment on the reference series grid (``arrayFromSegmentBinaryLabelmap`` with the reference
volume), so frame ``k`` references the instance at slice ``k``; names, colours (CIELab) and SNOMED CT codes from
the segment's terminology are written per segment. Import rebuilds each segment on the geometry stored in the SEG
itself (plane positions, orientation, spacing), so it needs no source series and keeps voxels exactly.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.export import terminology as terms
from MedSegLib.export.reference import (
    ReferenceSeries,
    equipment,
    ras_from_hd_affine,
    reference_volume_node,
    right_handed,
)

PathLike = Union[str, Path]
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclasses.dataclass
class SegmentData:
    """One segment read from or written to a SEG."""

    name: str
    mask: np.ndarray  # (k, j, i); bool (binary) or float 0..1 (fractional)
    color: tuple = (0.5, 0.5, 0.5)
    terminology: Optional[str] = None  # serialised Slicer entry
    algorithm: str = ""  # name of the producing algorithm ("" = manual)


@dataclasses.dataclass
class SegContents:
    """All segments of a SEG on the geometry it stores."""

    segments: List[SegmentData]
    ijk_to_ras: np.ndarray
    fractional: bool
    referenced_series_uid: str = ""
    series_instance_uid: str = ""


def _segment_description(number: int, segment: SegmentData) -> Any:
    import highdicom as hd

    codes = terms.parse_entry(segment.terminology)
    rgb = [float(np.clip(c, 0.0, 1.0)) for c in segment.color]
    kwargs: Dict[str, Any] = {}
    if segment.algorithm:
        from pydicom.sr.codedict import codes as dcm_codes

        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        kwargs["algorithm_identification"] = hd.AlgorithmIdentificationSequence(
            name=segment.algorithm[:64],
            version=equipment()["software_versions"],
            family=dcm_codes.cid7162.ArtificialIntelligence,
        )
    else:
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    if codes.region:
        kwargs["anatomic_regions"] = [terms.coded(codes.region)]
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64] or f"Segment {number}",
        segmented_property_category=terms.coded(codes.category),
        segmented_property_type=terms.coded(codes.type),
        algorithm_type=algorithm_type,
        display_color=hd.color.CIELabColor.from_rgb(*[round(c * 255.0) for c in rgb]),
        **kwargs,
    )
    if codes.type_modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            terms.coded(codes.type_modifier)
        ]
    return description


def segments_from_node(
    segmentation: Any, reference: ReferenceSeries, segment_ids: Optional[Sequence[str]] = None, scene: Any = None
) -> List[SegmentData]:
    """Each segment of a segmentation node as a mask on the reference grid (resampled exactly when aligned)."""
    import slicer

    from MedSegLib.runtime import boot

    boot()
    scene = scene or segmentation.GetScene()
    seg = segmentation.GetSegmentation()
    ids = list(segment_ids) if segment_ids else [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    if not ids:
        raise UserInputError(f"segmentation {segmentation.GetName()!r} has no segments to export")
    volume = reference_volume_node(reference, scene)
    try:
        result = []
        for segment_id in ids:
            segment = seg.GetSegment(segment_id)
            if segment is None:
                raise UserInputError(f"no segment {segment_id!r} in {segmentation.GetName()!r}")
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
            mask = np.zeros(reference.shape, dtype=bool) if array is None else array.astype(bool)
            result.append(
                SegmentData(
                    name=segment.GetName(),
                    mask=mask,
                    color=tuple(segment.GetColor()),
                    terminology=_tag(segment, terms.SLICER_TERMINOLOGY_TAG) or None,
                    algorithm=_tag(segment, "MedSegModel"),
                )
            )
        return result
    finally:
        scene.RemoveNode(volume)


def _tag(segment: Any, name: str) -> str:
    """A segment tag's value ("" when absent); VTK returns it through an output reference."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def write_seg(
    segments: Sequence[SegmentData],
    reference: ReferenceSeries,
    out_path: PathLike,
    fractional: bool = False,
    series_description: str = "MedSeg segmentation",
    series_number: int = 901,
    content_label: str = "MEDSEG",
    omit_empty_frames: bool = True,
    deidentify: Any = None,
) -> Path:
    """Write a DICOM SEG (binary or fractional) of ``segments`` on the reference grid; returns the path."""
    import highdicom as hd

    from MedSegLib.atomic import atomic_output

    if not segments:
        raise UserInputError("no segments to export")
    shape = reference.shape
    stack = []
    for segment in segments:
        mask = np.asarray(segment.mask)
        if mask.shape != shape:
            raise UserInputError(f"segment {segment.name!r} has shape {mask.shape}, the reference {shape}")
        if fractional:
            stack.append(np.clip(mask.astype(np.float32), 0.0, 1.0))
        else:
            stack.append(mask.astype(bool))
    pixel_array = np.stack(stack, axis=-1)
    if not fractional:
        pixel_array = pixel_array.astype(np.uint8)
    descriptions = [_segment_description(i + 1, s) for i, s in enumerate(segments)]
    with warnings.catch_warnings():  # source names like "HEAD" draw a person-name style warning
        warnings.filterwarnings("ignore", message=".*intended person name")
        seg = hd.seg.Segmentation(
            source_images=reference.datasets,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            content_label=content_label,
            content_description=series_description[:64],
            omit_empty_frames=omit_empty_frames,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            **equipment(),
        )
    seg.SeriesDescription = series_description[:64]
    if deidentify is not None:
        deidentify.apply(seg)
    with atomic_output(out_path) as temp:
        seg.save_as(temp)
    return Path(out_path)


def export_segmentation(
    segmentation: Any,
    reference: ReferenceSeries,
    out_path: PathLike,
    segment_ids: Optional[Sequence[str]] = None,
    fractional: bool = False,
    **options: Any,
) -> Path:
    """Segmentation node -> DICOM SEG file referencing ``reference``."""
    return write_seg(
        segments_from_node(segmentation, reference, segment_ids), reference, out_path, fractional=fractional, **options
    )


def _rgb(description: Any) -> tuple:
    import highdicom as hd

    value = getattr(description, "RecommendedDisplayCIELabValue", None)
    if value is None:
        return (0.5, 0.5, 0.5)
    rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb()  # 8-bit, as Slicer's plugin
    return tuple(float(c) / 255.0 for c in rgb)


def read_seg(path: PathLike) -> SegContents:
    """Every segment of a DICOM SEG with its mask, colour, codes and the SEG's own geometry."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as error:  # highdicom/pydicom raise many types for a non-SEG file
        raise UserInputError(f"not a readable DICOM SEG ({error})", path) from None
    fractional = str(seg.SegmentationType) == "FRACTIONAL"
    try:
        volume = seg.get_volume(
            combine_segments=False, rescale_fractional=True, dtype=np.float32 if fractional else np.uint8
        )
    except (ValueError, RuntimeError) as error:
        raise UserInputError(f"SEG frames do not form a regular 3D volume ({error})", path) from None
    array = np.asarray(volume.array)
    ijk_to_ras = ras_from_hd_affine(volume.affine)
    array, ijk_to_ras = right_handed(array, ijk_to_ras)
    segments = []
    for index, description in enumerate(seg.SegmentSequence):
        codes = terms.SegmentTerms(
            category=terms.code3(description.SegmentedPropertyCategoryCodeSequence[0]),
            type=terms.code3(description.SegmentedPropertyTypeCodeSequence[0]),
        )
        modifier = description.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
        if modifier:
            codes.type_modifier = terms.code3(modifier[0])
        region = description.get("AnatomicRegionSequence")
        if region:
            codes.region = terms.code3(region[0])
        mask = array[..., index]
        algorithm = ""
        if str(description.SegmentAlgorithmType) != "MANUAL" and description.get("SegmentAlgorithmName"):
            algorithm = str(description.SegmentAlgorithmName)
        segments.append(
            SegmentData(
                name=str(description.SegmentLabel),
                mask=mask.astype(np.float32) if fractional else mask.astype(bool),
                color=_rgb(description),
                terminology=terms.serialize_terms(codes),
                algorithm=algorithm,
            )
        )
    referenced = ""
    if seg.get("ReferencedSeriesSequence"):
        referenced = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return SegContents(
        segments=segments,
        ijk_to_ras=ijk_to_ras,
        fractional=fractional,
        referenced_series_uid=referenced,
        series_instance_uid=str(seg.SeriesInstanceUID),
    )


def import_seg(path: PathLike, scene: Any = None, name: Optional[str] = None, threshold: float = 0.5) -> Any:
    """DICOM SEG -> segmentation node (fractional segments are thresholded at ``threshold``)."""
    import slicer

    from MedSegLib.runtime import boot, resolve_scene
    from MedSegLib.volume_nodes import add_volume_node

    boot()
    scene = resolve_scene(scene)
    contents = read_seg(path)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or Path(path).stem)
    segmentation.CreateDefaultDisplayNodes()
    shape = contents.segments[0].mask.shape if contents.segments else (1, 1, 1)
    geometry = add_volume_node(np.zeros(shape, dtype=np.uint8), contents.ijk_to_ras, "SEG geometry", scene)
    try:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(geometry)
        seg = segmentation.GetSegmentation()
        for segment_data in contents.segments:
            mask = segment_data.mask >= threshold if contents.fractional else segment_data.mask
            name = segment_data.name
            # ID = segment label when free (as Slicer names segments), so the same SEG imports the same way
            segment_id = seg.AddEmptySegment(name if name and not seg.GetSegment(name) else "", name)
            segment = seg.GetSegment(segment_id)
            segment.SetColor(*segment_data.color)
            if segment_data.terminology:
                segment.SetTag(terms.SLICER_TERMINOLOGY_TAG, segment_data.terminology)
            if segment_data.algorithm:
                segment.SetTag("MedSegModel", segment_data.algorithm)
            if hasattr(segment, "SetNameAutoGenerated"):
                segment.SetNameAutoGenerated(False)
                segment.SetColorAutoGenerated(False)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                np.ascontiguousarray(mask, dtype=np.uint8), segmentation, segment_id, geometry
            )
    finally:
        scene.RemoveNode(geometry)
    segmentation.SetAttribute("DICOM.SeriesInstanceUID", contents.series_instance_uid)
    if contents.referenced_series_uid:
        segmentation.SetAttribute("DICOM.ReferencedSeriesInstanceUID", contents.referenced_series_uid)
    return segmentation
