"""Segment measurements -> DICOM SR "Imaging Measurement Report" (TID 1500), referencing a MedSeg DICOM SEG.

Per segment: volume (mm3) and, when intensities are given, mean/standard deviation/min/max in the image's unit,
each tied to the SEG segment and its source series, so a PACS viewer or a research database can read the numbers
with their meaning (codes) instead of parsing a CSV.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from MedSegLib.errors import UserInputError
from MedSegLib.export.reference import ReferenceSeries, equipment

PathLike = Union[str, Path]

# statistics row key -> (code value, scheme, meaning) of the measured concept
_CONCEPTS = {
    "mean": ("373098007", "SCT", "Mean"),
    "std": ("386136009", "SCT", "Standard Deviation"),
    "min": ("255605001", "SCT", "Minimum"),
    "max": ("56851009", "SCT", "Maximum"),
}


def write_measurement_report(
    seg_path: PathLike,
    rows: Sequence[Dict[str, Any]],
    reference: ReferenceSeries,
    out_path: PathLike,
    intensity_unit: str = "[hnsf'U]",
    intensity_unit_meaning: str = "Hounsfield unit",
    deidentify: Any = None,
) -> Path:
    """Write a Comprehensive 3D SR whose measurement groups reference the SEG's segments (rows in segment order)."""
    import highdicom as hd
    import pydicom
    from highdicom.sr.coding import CodedConcept
    from pydicom.sr.codedict import codes

    from MedSegLib.atomic import atomic_output

    seg = pydicom.dcmread(str(seg_path))
    if len(rows) != len(seg.SegmentSequence):
        raise UserInputError(f"{len(rows)} statistics rows for {len(seg.SegmentSequence)} segments", seg_path)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="MedSeg", manufacturer_name=equipment()["manufacturer"]
        ),
    )
    groups: List[Any] = []
    unit = CodedConcept(value=intensity_unit, scheme_designator="UCUM", meaning=intensity_unit_meaning)
    for number, (row, description) in enumerate(zip(rows, seg.SegmentSequence), start=1):
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=float(row["volume_mm3"]), unit=codes.UCUM.CubicMillimeter)
        ]
        for key, (value, scheme, meaning) in _CONCEPTS.items():
            if row.get(key) is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=CodedConcept(value=value, scheme_designator=scheme, meaning=meaning),
                        value=float(row[key]),
                        unit=unit,
                    )
                )
        category = description.SegmentedPropertyCategoryCodeSequence[0]
        finding = description.SegmentedPropertyTypeCodeSequence[0]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=str(description.SegmentLabel)[:64]
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(reference.series_instance_uid),
                ),
                finding_type=CodedConcept(finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning),
                finding_category=CodedConcept(
                    category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning
                ),
                measurements=measurements,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if str(reference.datasets[0].Modality) == "CT"
        else CodedConcept("25045-6", "LN", "Unspecified body region"),
        imaging_measurements=groups,
    )
    with warnings.catch_warnings():  # source names like "HEAD" draw a person-name style warning
        warnings.filterwarnings("ignore", message=".*intended person name")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg, *reference.datasets],
            content=report[0],
            series_instance_uid=hd.UID(),
            series_number=904,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=equipment()["manufacturer"],
            is_complete=True,
        )
    sr.SeriesDescription = "MedSeg segment measurements"
    if deidentify is not None:
        deidentify.apply(sr)
    with atomic_output(out_path) as temp:
        sr.save_as(temp)
    return Path(out_path)
