"""Shared pydicom helpers for writing the built-in sample series (one classic image file per slice).

Everything here is deterministic: UIDs are hashed from a seed and the phantom parameters, dates are
fixed, and the implementation UID is MedSeg's own, so the same call writes byte-identical files on
any machine. Files are written atomically (temporary sibling, then ``os.replace``) so an interrupted
write never leaves a truncated ``.dcm`` that a later DICOM import would choke on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Tuple, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from MedSegLib.atomic import atomic_output

PathLike = Union[str, "os.PathLike[str]"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

# Fixed (not wall-clock) so that repeated writes are byte-identical.
FIXED_DATE = "20250101"
FIXED_TIME = "120000"
MANUFACTURER = "MedSeg"
# Deterministic implementation UID: pydicom's own would change the file meta with every pydicom release.
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["MedSeg implementation class UID v1"])
IMPLEMENTATION_VERSION_NAME = "MEDSEG_SAMPLE_1"
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def deterministic_uid(*parts: object) -> str:
    """Return a UID hashed from ``parts`` (joined with '|', so ("1", "23") and ("12", "3") differ)."""
    return str(generate_uid(entropy_srcs=["MedSeg|" + "|".join(str(part) for part in parts)]))


def ds_value(value: float) -> str:
    """Format a number as a valid DS string (at most 16 characters), as it will be read back."""
    return format_number_as_ds(float(value))


def ds_values(values: Iterable[float]) -> list:
    return [ds_value(value) for value in values]


def grid_origin(shape: Sequence[int], spacing_mm: Sequence[float]) -> Tuple[float, float, float]:
    """LPS position of voxel (0, 0, 0) that centres the grid on (0, 0, 0); rounded so DS round-trips exactly."""
    slices, rows, cols = (int(n) for n in shape)
    dz, dy, dx = (float(s) for s in spacing_mm)
    return (
        float(ds_value(-(cols - 1) * dx / 2.0)),
        float(ds_value(-(rows - 1) * dy / 2.0)),
        float(ds_value(-(slices - 1) * dz / 2.0)),
    )


@dataclass(frozen=True)
class AxialGeometry:
    """Axial slice stack: IOP 1\\0\\0\\0\\1\\0; slice k lies at origin + k * slice spacing along +z (superior).

    ``shape`` and ``spacing_mm`` are (slices, rows, cols) like the numpy arrays; columns run along +x
    (patient left), rows along +y (posterior).
    """

    shape: Tuple[int, int, int]
    spacing_mm: Tuple[float, float, float]
    origin_lps: Tuple[float, float, float]

    def slice_position(self, k: int) -> Tuple[float, float, float]:
        """ImagePositionPatient of slice ``k`` (exactly what a DS round-trip gives back)."""
        x0, y0, z0 = self.origin_lps
        return (x0, y0, float(ds_value(z0 + k * self.spacing_mm[0])))

    def key(self) -> str:
        """Text that identifies the geometry, fed into the UID hashes."""
        return f"{self.shape}|{self.spacing_mm}|{self.origin_lps}"


def make_geometry(shape: Sequence[int], spacing_mm: Sequence[float]) -> AxialGeometry:
    """Validate shape/spacing and build a grid centred on the LPS origin."""
    shape_t = tuple(int(n) for n in shape)
    spacing_t = tuple(float(s) for s in spacing_mm)
    if len(shape_t) != 3 or min(shape_t) < 1:
        raise ValueError(f"shape must be three positive integers (slices, rows, cols), got {shape!r}")
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers (slice, row, col), got {spacing_mm!r}")
    return AxialGeometry(shape_t, spacing_t, grid_origin(shape_t, spacing_t))  # type: ignore[arg-type]


@dataclass(frozen=True)
class SeriesInfo:
    """Patient/study/series identity shared by every file of one series."""

    modality: str
    patient_name: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_number: int
    series_description: str
    study_description: str = "MedSeg sample data"
    study_id: str = "1"


def file_meta_for(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta for explicit VR little endian with MedSeg's fixed implementation identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def new_image_dataset(
    info: SeriesInfo,
    sop_class_uid: str,
    sop_instance_uid: str,
    geometry: AxialGeometry,
    slice_index: int,
    instance_number: int,
    stored: np.ndarray,
    bits_stored: int,
) -> Dataset:
    """Build one single-frame image dataset (patient, study, series, plane and pixel modules).

    ``stored`` is the (rows, cols) array of unsigned stored values; it must fit in ``bits_stored`` bits.
    Modality-specific tags (rescale, window, MR timing, ...) are added by the caller.
    """
    rows, cols = geometry.shape[1], geometry.shape[2]
    if stored.shape != (rows, cols):
        raise ValueError(f"slice has shape {stored.shape}, expected {(rows, cols)}")
    if stored.size and (int(stored.min()) < 0 or int(stored.max()) >= 2**bits_stored):
        raise ValueError(f"stored values out of range for {bits_stored} bits")

    ds = Dataset()
    ds.file_meta = file_meta_for(sop_class_uid, sop_instance_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = FIXED_TIME
    ds.AccessionNumber = ""
    ds.Modality = info.modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "MedSeg sample data"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.ManufacturerModelName = "MedSeg synthetic phantom"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = info.study_id
    ds.SeriesNumber = info.series_number
    ds.InstanceNumber = instance_number
    position = geometry.slice_position(slice_index)
    ds.ImagePositionPatient = ds_values(position)
    ds.ImageOrientationPatient = ds_values(AXIAL_ORIENTATION)
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = ds_value(position[2])
    ds.SliceThickness = ds_value(geometry.spacing_mm[0])
    ds.PixelSpacing = ds_values((geometry.spacing_mm[1], geometry.spacing_mm[2]))  # row spacing, column spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def write_dataset(ds: Dataset, path: PathLike) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically (temporary file in the folder, then os.replace)."""
    target = Path(path)
    with atomic_output(target) as temp_path:
        pydicom.dcmwrite(temp_path, ds, enforce_file_format=True)
    return target


def remove_stale_files(out_dir: Path, prefix: str, keep: Iterable[str]) -> None:
    """Delete earlier sample files named ``<prefix>NNNNNN.dcm`` that this write did not produce.

    Rewriting a folder with fewer slices must not leave old slices behind that a DICOM browser would
    merge into the new series. Only files following this module's own naming pattern are touched.
    """
    keep_set = set(keep)
    pattern = re.compile(re.escape(prefix) + r"\d{6}\.dcm")
    for entry in out_dir.iterdir():
        if entry.is_file() and pattern.fullmatch(entry.name) and entry.name not in keep_set:
            entry.unlink()


def instance_file_name(prefix: str, instance_number: int) -> str:
    return f"{prefix}{instance_number:06d}.dcm"
