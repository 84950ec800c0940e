"""Group DICOM image frames into loadable volumes, as Slicer's DICOMScalarVolumePlugin does, plus 4D grouping.

Why: one SeriesInstanceUID often is not one volume (localizers, several orientations or matrix sizes, repeated
acquisitions, several echoes or inversion times at the same positions), and one volume is sometimes spread over
several series (GE writes each inversion time as its own series). Every file is reduced to 2D ``Frame`` records
(single-frame image, one frame of an enhanced object, or one mosaic tile) carrying their own geometry; frames are
then split by what must never be stacked (orientation, matrix size, pixel spacing, image type) and grouped by
position: frames repeating at the same positions become one 4D loadable whose varying parameter is recorded per
volume.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .slice_geometry import POSITION_TOLERANCE_MM, orientation_vectors

#: Acquisition parameters that can distinguish the volumes of a multi-volume series, in reporting order.
VOLUME_PARAMETERS = (
    "InversionTime",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "TriggerTime",
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "AcquisitionNumber",
    "AcquisitionTime",
    "EchoNumbers",
    "SeriesNumber",
)
#: Scalar parameters by which volumes are sorted when they tell every volume apart (relaxometry series).
SORTABLE_PARAMETERS = ("InversionTime", "EchoTime", "RepetitionTime", "FlipAngle", "TriggerTime")
NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@dataclass(eq=False)
class FileInfo:
    """File-level facts needed to decode pixels and to name the result."""

    path: str
    transfer_syntax: str
    rows: int
    cols: int
    number_of_frames: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    photometric: str
    pixel_offset: int | None  # byte offset of native little-endian pixel data (fast path), else None
    pixel_length: int | None
    manufacturer: str = ""
    modality: str = ""
    padding_value: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # patient / study / series fields for the hierarchy


@dataclass(eq=False)
class Frame:
    """One 2D image plane: a single-frame file, a frame of a multi-frame file, or a mosaic tile."""

    file: FileInfo
    frame_index: int | None
    tile: tuple[int, int, int, int] | None
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float = 1.0
    intercept: float = 0.0
    philips_scale_slope: float | None = None
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference: str = ""
    sop_uid: str = ""
    instance_number: int = 0
    image_type: tuple[str, ...] = ()
    windows: list[tuple[float, float, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loadable:
    """A candidate volume: frames ordered volume-major, then slice ascending along the normal."""

    name: str
    frames: list[Frame]
    n_volumes: int
    n_slices: int
    series_uid: str
    warnings: list[str] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # parameters that differ between volumes
    per_volume: list[dict[str, Any]] = field(default_factory=list)
    selected: bool = True
    confidence: float = 0.5

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(frame.file.path for frame in self.frames))


class NotDicomError(Exception):
    """The file is not a DICOM image (not DICOM at all, or a DICOMDIR / object without pixels).

    ``quiet``: expected in a DICOM folder (READMEs, DICOMDIR, structured reports); otherwise (an image header
    without pixel data, e.g. a truncated copy) the caller should warn.
    """

    def __init__(self, message: str, quiet: bool = True) -> None:
        super().__init__(message)
        self.quiet = quiet


# ----------------------------------------------------------------------------------------------- header reading


def _number(value: Any) -> float | None:
    """A DS/IS/FD value or a raw private byte string as float (first value of multi-valued), else None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1", "replace").strip("\0 ")
        if not text:
            return None
        value = text.split("\\")[0]
    elif not isinstance(value, (str, int, float)) and hasattr(value, "__getitem__"):
        if not len(value):
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, int, float, bytes)) or not hasattr(value, "__len__") else list(value)


def _vector(value: Any, size: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if len(raw) == 8 * size:
            return tuple(float(v) for v in np.frombuffer(raw, "<f8"))
        value = raw.decode("latin-1", "replace").strip("\0 ").split("\\")
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == size else None


def _seconds(time_text: Any) -> float | None:
    """DICOM TM 'HHMMSS.frac' as seconds since midnight."""
    text = str(time_text or "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _private(ds, group: int, element: int) -> Any:
    item = ds.get((group, element))
    return None if item is None else item.value


def _acquisition_params(ds, manufacturer: str) -> dict[str, Any]:
    """Per-image acquisition parameters (standard tags first, vendor private tags as dcm2niix reads them)."""
    params: dict[str, Any] = {}
    for keyword in (
        "InversionTime",
        "EchoTime",
        "RepetitionTime",
        "FlipAngle",
        "TriggerTime",
        "EchoNumbers",
        "TemporalPositionIdentifier",
        "AcquisitionNumber",
        "SeriesNumber",
    ):
        value = _number(ds.get(keyword))
        if value is not None:
            params[keyword] = value
    seconds = _seconds(ds.get("AcquisitionTime"))
    if seconds is not None:
        params["AcquisitionTime"] = seconds
    b_value = _number(ds.get("DiffusionBValue"))
    direction = _vector(ds.get("DiffusionGradientOrientation"), 3)
    upper = manufacturer.upper()
    if b_value is None:
        if "SIEMENS" in upper:
            b_value = _number(_private(ds, 0x0019, 0x100C))
            direction = direction or _vector(_private(ds, 0x0019, 0x100E), 3)
        elif "GE" in upper.split() or upper.startswith("GE"):
            raw = _number(_private(ds, 0x0043, 0x1039))
            b_value = None if raw is None else float(int(raw) % 1000000000)
            gx, gy, gz = (_number(_private(ds, 0x0019, tag)) for tag in (0x10BB, 0x10BC, 0x10BD))
            if direction is None and None not in (gx, gy, gz):
                direction = (gx, gy, gz)
        elif "PHILIPS" in upper:
            b_value = _number(_private(ds, 0x2001, 0x1003))
        elif "UIH" in upper:
            b_value = _number(_private(ds, 0x0065, 0x1009))
            direction = direction or _vector(_private(ds, 0x0065, 0x1037), 3)
    if b_value is not None:
        params["DiffusionBValue"] = b_value
    if direction is not None:
        params["DiffusionGradientOrientation"] = tuple(round(v, 6) for v in direction)
    return params


def _windows(ds) -> list[tuple[float, float, str]]:
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is None or widths is None:
        return []

    def as_list(value: Any) -> list:
        return [value] if isinstance(value, (str, int, float)) or not hasattr(value, "__len__") else list(value)

    centers, widths = as_list(centers), as_list(widths)
    explanations = ds.get("WindowCenterWidthExplanation") or []
    explanations = [explanations] if isinstance(explanations, str) else list(explanations)
    presets = []
    for number, (center, width) in enumerate(zip(centers, widths)):
        try:
            presets.append(
                (float(center), float(width), str(explanations[number]) if number < len(explanations) else "")
            )
        except (TypeError, ValueError):
            continue
    return presets


def _pixel_element(fp, implicit: bool) -> tuple[int, int] | None:
    """At the (7FE0,0010) element header: return (value offset, length) for native data, None if encapsulated."""
    start = fp.tell()
    header = fp.read(12)
    if len(header) < 8 or header[:4] != b"\xe0\x7f\x10\x00":
        return None
    if implicit:
        length = int.from_bytes(header[4:8], "little")
        offset = start + 8
    elif header[4:6] in (b"OB", b"OW", b"UN", b"OV", b"OF", b"OD", b"OL"):
        length = int.from_bytes(header[8:12], "little")
        offset = start + 12
    else:
        length = int.from_bytes(header[6:8], "little")
        offset = start + 8
    return None if length == 0xFFFFFFFF else (offset, length)


# ----------------------------------------------------------------------------------------------- fast header path
# pydicom parses and converts every element (about 1-5 ms per file). For the common case (single-frame image,
# explicit or implicit VR little endian, no mosaic, no functional groups) a scan that only decodes the ~60
# tags used here is 5-10x faster; anything unusual returns None and goes through pydicom.

_FAST_TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080032: ("AcquisitionTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00082111: ("DerivationDescription", "ST"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180080: ("RepetitionTime", "DS"),
    0x00180081: ("EchoTime", "DS"),
    0x00180082: ("InversionTime", "DS"),
    0x00180086: ("EchoNumbers", "IS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181060: ("TriggerTime", "DS"),
    0x00181030: ("ProtocolName", "LO"),
    0x00181164: ("ImagerPixelSpacing", "DS"),
    0x00181314: ("FlipAngle", "DS"),
    0x00189087: ("DiffusionBValue", "FD"),
    0x00189089: ("DiffusionGradientOrientation", "FD"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200010: ("StudyID", "SH"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00200100: ("TemporalPositionIdentifier", "IS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280120: ("PixelPaddingValue", "xs"),
    0x00281050: ("WindowCenter", "DS"),
    0x00281051: ("WindowWidth", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00281055: ("WindowCenterWidthExplanation", "LO"),
    # vendor private tags read by _acquisition_params (fixed element numbers, as dcm2niix reads them)
    0x0019100C: ((0x0019, 0x100C), "IS"),
    0x0019100E: ((0x0019, 0x100E), "FD"),
    0x00431039: ((0x0043, 0x1039), "IS"),
    0x001910BB: ((0x0019, 0x10BB), "DS"),
    0x001910BC: ((0x0019, 0x10BC), "DS"),
    0x001910BD: ((0x0019, 0x10BD), "DS"),
    0x20011003: ((0x2001, 0x1003), "FL"),
    0x2005100E: ((0x2005, 0x100E), "FL"),
    0x00651009: ((0x0065, 0x1009), "FD"),
    0x00651037: ((0x0065, 0x1037), "FD"),
}
#: Tags whose presence means the file needs the full pydicom path (functional groups, mosaics, UIH grids).
_FAST_ABORT = {0x52009229, 0x52009230, 0x00651050, 0x00651051, 0x00291010}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
#: Character sets the quick scan decodes itself; others (ISO 2022 escapes, GB18030 ...) go through pydicom.
_SIMPLE_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}
_BINARY = {"US": "<H", "SS": "<h", "FD": "<d", "FL": "<f", "UL": "<I", "SL": "<i"}


class _Element:
    """Minimal stand-in for pydicom's DataElement (only ``.value`` is used)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _FastHeader:
    """Decoded subset of a header with the ``get`` / ``in`` interface of a pydicom Dataset."""

    def __init__(self, values: dict[Any, Any]) -> None:
        self._values = values

    def get(self, key: Any, default: Any = None) -> Any:
        if isinstance(key, tuple):
            return _Element(self._values[key]) if key in self._values else default
        return self._values.get(key, default)

    def __contains__(self, key: Any) -> bool:
        return key in self._values

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None


def _skip_undefined(data: bytes, pos: int, implicit: bool) -> int:
    """Position after the sequence delimiter of an undefined-length SQ/UN value starting at ``pos``."""
    end = len(data)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group == 0xFFFE and element == 0xE0DD:
            return pos
        if group == 0xFFFE and element == 0xE000:
            if length != 0xFFFFFFFF:
                pos += length
                continue
            pos = _skip_dataset(data, pos, implicit, until_item_end=True)
            continue
        raise ValueError("malformed sequence")
    raise ValueError("truncated sequence")


def _skip_dataset(data: bytes, pos: int, implicit: bool, until_item_end: bool) -> int:
    end = len(data)
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group == 0xFFFE and element == 0xE00D:
            return pos + 8
        vr = b"" if implicit else data[pos + 4 : pos + 6]
        if implicit or group == 0xFFFE:
            length = struct.unpack_from("<I", data, pos + 4)[0]
            pos += 8
        elif vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(data, pos, implicit or vr == b"UN")
        else:
            pos += length
    if until_item_end:
        raise ValueError("truncated item")
    return pos


def _decode(raw: bytes, vr: str, values: dict[Any, Any]) -> Any:
    if vr == "xs":
        vr = "SS" if values.get("PixelRepresentation") else "US"
    if vr in _BINARY:
        fmt = _BINARY[vr]
        size = struct.calcsize(fmt)
        count = len(raw) // size
        if count == 0:
            return None
        numbers = struct.unpack_from(f"<{count}{fmt[1]}", raw)
        return numbers[0] if count == 1 else list(numbers)
    encoding = "utf-8" if vr in _TEXT_VRS and values.get("SpecificCharacterSet") == "ISO_IR 192" else "latin-1"
    text = raw.decode(encoding, "replace").rstrip("\0 ").strip()
    if vr in ("DS", "IS", "CS", "UI") or (vr in ("LO", "SH") and "\\" in text):
        parts = [part.strip() for part in text.split("\\")]
        if vr in ("DS", "IS", "CS", "LO", "SH") and len(parts) > 1:
            return parts
        return parts[0] if parts else ""
    return text


def _fast_header(path: str) -> tuple[_FastHeader, str, tuple[int, int] | None, bool] | None:
    """(header, transfer syntax, native pixel (offset, length), has pixel data), or None to use pydicom."""
    with open(path, "rb") as handle:
        data = handle.read(262144)
        size = os.fstat(handle.fileno()).st_size
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    pos = 132
    transfer_syntax = ""
    while pos + 8 <= len(data):  # file meta group (always explicit VR little endian)
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if not vr.isalpha() or not vr.isupper():
            return None  # file meta not in explicit VR: unusual file, let pydicom decide
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if element == 0x0010:
            transfer_syntax = data[pos : pos + length].decode("latin-1").rstrip("\0 ")
        pos += length
    if (
        transfer_syntax not in NATIVE_TRANSFER_SYNTAXES
        and not transfer_syntax.startswith("1.2.840.10008.1.2.4")
        and transfer_syntax != "1.2.840.10008.1.2.5"
    ):
        return None  # big endian, deflated, private syntaxes: pydicom knows best
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    values: dict[Any, Any] = {}
    pixel: tuple[int, int] | None = None
    has_pixels = False
    end = len(data)
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | element
        if implicit:
            length = struct.unpack_from("<I", data, pos + 4)[0]
            header = 8
            vr = b""
        else:
            vr = data[pos + 4 : pos + 6]
            if not vr.isalpha() or not vr.isupper():
                return None  # not explicit VR after all (mislabelled transfer syntax): pydicom copes
            if vr in _LONG_VRS:
                length = struct.unpack_from("<I", data, pos + 8)[0]
                header = 12
            else:
                length = struct.unpack_from("<H", data, pos + 6)[0]
                header = 8
        if tag == 0x7FE00010:
            has_pixels = True
            if length != 0xFFFFFFFF and transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
                pixel = (pos + header, length)
            break
        if tag in _FAST_ABORT or tag > 0x7FE00010:
            return None if tag in _FAST_ABORT else (_FastHeader(values), transfer_syntax, None, False)
        pos += header
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(data, pos, implicit or vr == b"UN")
            continue
        if pos + length > end:
            if end < size and len(data) < size:
                return None  # header longer than the first chunk: let pydicom read it
            break
        wanted = _FAST_TAGS.get(tag)
        if wanted is not None:
            key, declared = wanted
            vr_text = vr.decode("latin-1") if vr and vr != b"UN" else declared
            if vr_text in ("OB", "UN"):
                vr_text = declared
            values[key] = _decode(data[pos : pos + length], vr_text, values)
            if tag == 0x00080005 and "\\".join(_as_list(values[key])).strip() not in _SIMPLE_CHARSETS:
                return None
        pos += length
    if not has_pixels and end < size:
        return None
    return _FastHeader(values), transfer_syntax, pixel, has_pixels


def read_frames(path: str | os.PathLike, fast: bool = True) -> list[Frame]:
    """All 2D frames of one file. Raises NotDicomError for non-image files; pydicom errors propagate.

    ``fast=False`` forces the full pydicom parse (the fast scan must give identical frames; tests check it).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from . import mosaic, multiframe

    path = os.fspath(path)
    if Path(path).name.upper() in ("DICOMDIR", "DIRFILE"):
        raise NotDicomError("directory record, not an image")
    try:
        fast_result = _fast_header(path) if fast else None
    except (ValueError, struct.error):
        fast_result = None
    simple = fast_result is not None and "Rows" in fast_result[0]
    if simple:
        header = fast_result[0]
        simple = int(_number(header.get("NumberOfFrames")) or 1) == 1 and not any(
            "MOSAIC" in str(v).upper() for v in _as_list(header.get("ImageType"))
        )
    if simple:
        ds, transfer_syntax, pixel, has_pixels = fast_result
    else:
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError as error:
                # Raw data sets without preamble (old exports start with group 0008): accept them as dcm2niix does.
                fp.seek(0)
                if fp.read(2) != b"\x08\x00":
                    raise NotDicomError(str(error)) from None
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            meta = getattr(ds, "file_meta", None)
            transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
            if not transfer_syntax:
                implicit, little = getattr(ds, "original_encoding", (True, True))
                transfer_syntax = (
                    "1.2.840.10008.1.2"
                    if implicit is not False
                    else ("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")
                )
            pixel = None
            tag_position = fp.tell()
            head = fp.read(4)
            has_pixels = head == b"\xe0\x7f\x10\x00"
            fp.seek(tag_position)
            if has_pixels and transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
                pixel = _pixel_element(fp, implicit=transfer_syntax == "1.2.840.10008.1.2")
    if "Rows" not in ds or "Columns" not in ds:
        raise NotDicomError("no image (Rows/Columns missing)")
    if not has_pixels:
        raise NotDicomError("image header without pixel data (7FE0,0010): truncated or incomplete file?", quiet=False)
    manufacturer = str(ds.get("Manufacturer", "") or "")
    padding = ds.get("PixelPaddingValue")
    file_info = FileInfo(
        path=path,
        transfer_syntax=transfer_syntax,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        number_of_frames=int(_number(ds.get("NumberOfFrames")) or 1),
        bits_allocated=int(ds.get("BitsAllocated", 16)),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated", 16)),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        pixel_offset=pixel[0] if pixel else None,
        pixel_length=pixel[1] if pixel else None,
        manufacturer=manufacturer,
        modality=str(ds.get("Modality", "") or ""),
        padding_value=_number(padding) if padding is not None and not isinstance(padding, bytes) else None,
        info={
            key: str(ds.get(key, "") or "")
            for key in (
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "PatientSex",
                "StudyInstanceUID",
                "StudyDate",
                "StudyTime",
                "StudyDescription",
                "StudyID",
                "AccessionNumber",
                "SeriesInstanceUID",
                "SeriesNumber",
                "SeriesDescription",
                "Modality",
                "Manufacturer",
                "BodyPartExamined",
                "DerivationDescription",
                "SliceThickness",
                "ProtocolName",
            )
        },
    )
    base_position = _vector(ds.get("ImagePositionPatient"), 3)
    base_orientation = _vector(ds.get("ImageOrientationPatient"), 6)
    spacing = _vector(ds.get("PixelSpacing"), 2) or _vector(ds.get("ImagerPixelSpacing"), 2)
    philips_ss = None
    if "PHILIPS" in manufacturer.upper():
        value = _private(ds, 0x2005, 0x100E)
        philips_ss = (
            _number(value)
            if not isinstance(value, (bytes, bytearray))
            else (float(np.frombuffer(bytes(value)[:4], "<f4")[0]) if len(value) >= 4 else None)
        )
    common = dict(
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""),
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        instance_number=int(_number(ds.get("InstanceNumber")) or 0),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
        philips_scale_slope=philips_ss,
    )
    params = _acquisition_params(ds, manufacturer)
    slope = _number(ds.get("RescaleSlope"))
    intercept = _number(ds.get("RescaleIntercept"))
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    windows = _windows(ds)

    if multiframe.is_enhanced(ds):
        frames = []
        for item in multiframe.enhanced_frames(ds):
            frame_params = dict(params)
            frame_params.update(item.params)
            frames.append(
                Frame(
                    file=file_info,
                    frame_index=item.index,
                    tile=None,
                    rows=file_info.rows,
                    cols=file_info.cols,
                    position=item.position
                    if item.position is not None
                    else (np.array(base_position) if base_position else None),
                    orientation=item.orientation
                    if item.orientation is not None
                    else (np.array(base_orientation) if base_orientation else None),
                    pixel_spacing=item.pixel_spacing or spacing,
                    slope=item.slope if item.slope is not None else slope,
                    intercept=item.intercept if item.intercept is not None else intercept,
                    windows=item.windows or windows,
                    params=frame_params,
                    **common,
                )
            )
            if item.frame_type:
                frames[-1].image_type = item.frame_type
        return frames

    if base_orientation and spacing and mosaic.is_mosaic(ds):
        layout = mosaic.mosaic_layout(ds, np.array(base_orientation), spacing)
        if layout is not None:
            frames = []
            for index in range(layout.n_slices):
                tile = layout.tile(index)
                frames.append(
                    Frame(
                        file=file_info,
                        frame_index=None,
                        tile=tile,
                        rows=tile[2],
                        cols=tile[3],
                        position=layout.positions[index].copy(),
                        orientation=np.array(base_orientation),
                        pixel_spacing=spacing,
                        slope=slope,
                        intercept=intercept,
                        windows=windows,
                        params=dict(params),
                        **common,
                    )
                )
            return frames

    frames = []
    for index in range(file_info.number_of_frames):
        frames.append(
            Frame(
                file=file_info,
                frame_index=index if file_info.number_of_frames > 1 else None,
                tile=None,
                rows=file_info.rows,
                cols=file_info.cols,
                position=np.array(base_position) if base_position else None,
                orientation=np.array(base_orientation) if base_orientation else None,
                pixel_spacing=spacing,
                slope=slope,
                intercept=intercept,
                windows=windows,
                params=dict(params),
                **common,
            )
        )
    if file_info.number_of_frames > 1:
        # Classic multi-frame without functional groups: frames are equally spaced along the normal.
        step = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness")) or 1.0
        if base_position and base_orientation:
            _, _, n = orientation_vectors(np.array(base_orientation))
            for index, frame in enumerate(frames):
                frame.position = np.array(base_position) + index * step * n
    return frames


# ----------------------------------------------------------------------------------------------- grouping


def _round_tuple(values: Iterable[float] | None, digits: int) -> tuple[float, ...]:
    return tuple(round(float(v), digits) + 0.0 for v in values) if values is not None else ()


def _split_key(frame: Frame) -> tuple:
    """Frames differing in any of these can never be one volume (Slicer splits on orientation and image type)."""
    return (
        frame.study_uid,
        frame.rows,
        frame.cols,
        frame.file.samples_per_pixel,
        _round_tuple(frame.orientation, 4),
        _round_tuple(frame.pixel_spacing, 4),
        _image_kind(frame.image_type),
    )


def _position_groups(frames: list[Frame]) -> tuple[list[list[Frame]], list[float]]:
    """Cluster frames by distance along the normal (ascending); each cluster holds the frames at one position."""
    if frames[0].orientation is None or any(f.position is None for f in frames):
        ordered = sorted(frames, key=lambda f: (f.instance_number, f.file.path, f.frame_index or 0))
        return [[f] for f in ordered], [float(i) for i in range(len(ordered))]
    _, _, n = orientation_vectors(frames[0].orientation)
    dist = np.array([float(np.asarray(f.position) @ n) for f in frames])
    order = np.argsort(dist, kind="stable")
    groups: list[list[Frame]] = []
    centres: list[float] = []
    for index in order:
        if groups and dist[index] - centres[-1] < POSITION_TOLERANCE_MM:
            groups[-1].append(frames[index])
        else:
            groups.append([frames[index]])
            centres.append(float(dist[index]))
    return groups, centres


def _temporal_key(frame: Frame) -> tuple:
    p = frame.params
    return (
        p.get("TemporalPositionIdentifier", 0),
        p.get("TemporalPositionIndex", 0),
        p.get("SeriesNumber", 0),
        p.get("AcquisitionNumber", 0),
        p.get("AcquisitionTime", 0.0),
        frame.instance_number,
        frame.frame_index or 0,
        frame.file.path,
    )


def _volume_params(frame: Frame) -> dict[str, Any]:
    return {key: frame.params[key] for key in VOLUME_PARAMETERS if key in frame.params}


def _series_name(frame: Frame) -> str:
    info = frame.file.info
    name = info.get("SeriesDescription") or info.get("Modality") or "Volume"
    number = info.get("SeriesNumber")
    return f"{number}: {name}" if number else name


def _make_loadable(frames: list[Frame], name: str, warnings: list[str]) -> Loadable:
    """Arrange frames of one homogeneous group into slices x volumes, recording what varies between volumes."""
    warnings = list(warnings)
    groups, _ = _position_groups(frames)
    counts = {len(g) for g in groups}
    if len(counts) > 1:
        groups = _complete_volumes(groups, warnings)
    n_volumes = len(groups[0])
    volumes: list[list[Frame]] = [[] for _ in range(n_volumes)]
    varying: list[str] = []
    if n_volumes > 1:
        sort_key = None
        for key in SORTABLE_PARAMETERS:
            if key in varying and all(
                len({f.params.get(key) for f in g}) == n_volumes and all(f.params.get(key) is not None for f in g)
                for g in groups
            ):
                sort_key = key
                break
        for group in groups:
            ordered = sorted(
                group, key=(lambda f: (f.params[sort_key], _temporal_key(f))) if sort_key else _temporal_key
            )
            for volume, frame in enumerate(ordered):
                volumes[volume].append(frame)
        if sort_key is None and not varying:
            warnings.append(
                f"{n_volumes} images at every position with no differing acquisition parameter; "
                "volumes ordered by acquisition time / instance number"
            )
    else:
        volumes[0] = [g[0] for g in groups]
    ordered_frames = [frame for volume in volumes for frame in volume]
    per_volume = [_volume_params(volume[0]) for volume in volumes] if n_volumes > 1 else []
    for key in VOLUME_PARAMETERS:
        if len({str(p.get(key)) for p in per_volume}) > 1:
            varying.append(key)
    if not all(f.sop_uid for f in ordered_frames):
        warnings.append("some images have no SOPInstanceUID (anonymised or invalid DICOM)")
    first = ordered_frames[0]
    return Loadable(
        name=name,
        frames=ordered_frames,
        n_volumes=n_volumes,
        n_slices=len(groups),
        series_uid=first.series_uid,
        warnings=warnings,
        varying=varying,
        per_volume=per_volume,
    )


def _volume_label(frame: Frame, key: str) -> Any:
    if key == "Diffusion":
        return (frame.params.get("DiffusionBValue"), frame.params.get("DiffusionGradientOrientation"))
    return frame.params.get(key)


def _complete_volumes(groups: list[list[Frame]], warnings: list[str]) -> list[list[Frame]]:
    """Positions repeat unequally (missing or extra images): keep the volumes that are complete.

    A volume is identified by the first parameter that takes one value per image at every position (inversion
    time, temporal position, acquisition number, diffusion b/direction ...). Without such a parameter the
    earliest image at each position is kept. Either way the loss is reported, never silent.
    """
    most = max(len(g) for g in groups)
    for key in SORTABLE_PARAMETERS + (
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "AcquisitionNumber",
        "Diffusion",
    ):
        labels = [[_volume_label(f, key) for f in g] for g in groups]
        if any(label is None or label == (None, None) for row in labels for label in row):
            continue
        if any(len(set(map(str, row))) != len(row) for row in labels):
            continue
        every = {str(label) for row in labels for label in row}
        if len(every) != most:
            continue
        complete = [label for label in every if all(label in {str(v) for v in row} for row in labels)]
        if not complete:
            break
        kept = [[f for f in g if str(_volume_label(f, key)) in complete] for g in groups]
        warnings.append(
            f"{most - len(complete)} incomplete volume(s) (by {key}) left out: images missing at "
            f"some of the {len(groups)} positions"
        )
        return kept
    fewest = min(len(g) for g in groups)
    warnings.append(
        f"positions repeat an unequal number of times ({fewest} to {most}) and no acquisition parameter tells the "
        f"volumes apart; kept the first {fewest} image(s) in acquisition order at each of the {len(groups)} "
        "positions (missing images, or repeated slices?)"
    )
    return [sorted(g, key=_temporal_key)[:fewest] for g in groups]


def _drop_duplicate_instances(frames: list[Frame], warnings: list[str]) -> list[Frame]:
    """The same SOPInstanceUID at the same position twice (copied folders) is one image: keep the first file."""
    seen: set[tuple] = set()
    kept: list[Frame] = []
    uids: dict[str, int] = defaultdict(int)
    for frame in frames:
        position = _round_tuple(frame.position, 3) if frame.position is not None else ()
        key = (frame.sop_uid, frame.frame_index, frame.tile, position)
        if frame.sop_uid and key in seen:
            continue
        seen.add(key)
        kept.append(frame)
        if frame.sop_uid and frame.frame_index is None and frame.tile is None:
            uids[frame.sop_uid] += 1
    if len(kept) != len(frames):
        warnings.append(
            f"{len(frames) - len(kept)} file(s) repeat an image (same SOPInstanceUID and position) and were ignored"
        )
    clashes = sum(count - 1 for count in uids.values() if count > 1)
    if clashes:
        warnings.append(f"{clashes} image(s) reuse the SOPInstanceUID of a different image (invalid DICOM)")
    return kept


def _image_kind(image_type: tuple[str, ...]) -> tuple[bool, bool, str]:
    """(localizer, derived, complex component): the ImageType facts that forbid stacking (dcm2niix, Slicer)."""
    localizer = any(word in image_type for word in ("LOCALIZER", "SCOUT"))
    derived = bool(image_type) and image_type[0] == "DERIVED"
    component = "M"
    words = set(image_type)
    third = image_type[2] if len(image_type) > 2 else ""
    if third in ("P", "R", "I"):
        component = third
    elif words & {"PHASE", "PHASE MAP"}:
        component = "P"
    elif "REAL" in words:
        component = "R"
    elif "IMAGINARY" in words:
        component = "I"
    return localizer, derived, component


def _positions_signature(frames: list[Frame]) -> tuple:
    _, centres = _position_groups(frames)
    return tuple(round(c, 1) for c in centres)


def _sub_series(loadable: Loadable) -> list[Loadable]:
    """Unselected alternatives per value of a tag that varies inside a 3D loadable (Slicer's sub-series split).

    DICOMScalarVolumePlugin offers one extra loadable per AcquisitionNumber / ImageType value; a user can pick
    e.g. only the 4 mm part of a CT that mixes reconstructions. The all-images loadable stays the default.
    """
    if loadable.n_volumes > 1:
        return []
    subs = []
    for label, value_of in (
        ("AcquisitionNumber", lambda f: f.params.get("AcquisitionNumber")),
        ("ImageType", lambda f: "\\".join(f.image_type)),
    ):
        values: dict[Any, list[Frame]] = defaultdict(list)
        for frame in loadable.frames:
            values[value_of(frame)].append(frame)
        if len(values) < 2 or len(values) == len(loadable.frames) or len(values) > 8:
            continue  # one value, or one per image (Siemens CT numbers every slice): nothing to offer
        for value, frames in values.items():
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            sub = _make_loadable(frames, f"{loadable.name} - {label} {shown}", [])
            sub.selected = False
            sub.confidence = 0.45
            subs.append(sub)
    return subs


def split_into_loadables(frames: list[Frame]) -> list[Loadable]:
    """Split frames (of one series or a whole folder) into loadable volumes, best first per series.

    Rules: never stack different orientation / matrix / pixel spacing / image type (each gets its own loadable,
    the smaller ones flagged as probable localizers); frames repeated at the same positions become one 4D loadable;
    single-volume series that share study, geometry and positions but differ in one acquisition parameter
    (GE writes each inversion time as its own series) are merged into one 4D loadable.
    """
    if not frames:
        return []
    by_series: dict[str, list[Frame]] = defaultdict(list)
    for frame in frames:
        by_series[frame.series_uid].append(frame)
    pieces: list[tuple[list[Frame], str, list[str]]] = []
    for series_frames in by_series.values():
        warnings: list[str] = []
        series_frames = _drop_duplicate_instances(series_frames, warnings)
        missing = [f for f in series_frames if f.position is None or f.orientation is None]
        if missing:
            warnings.append(
                f"{len(missing)} image(s) lack ImagePositionPatient/ImageOrientationPatient; they were left out"
                if len(missing) < len(series_frames)
                else "images lack ImagePositionPatient/ImageOrientationPatient: geometry is unknown"
            )
            if len(missing) < len(series_frames):
                series_frames = [f for f in series_frames if f not in missing]
        by_key: dict[tuple, list[Frame]] = defaultdict(list)
        for frame in series_frames:
            by_key[_split_key(frame)].append(frame)
        name = _series_name(series_frames[0])
        if len(by_key) > 1:
            kinds = []
            keys = list(by_key)
            for tag, index in (("orientation", 4), ("matrix size", 1), ("pixel spacing", 5), ("image type", 6)):
                if len({k[index] for k in keys}) > 1:
                    kinds.append(tag)
            warnings.append(
                f"series split into {len(by_key)} volumes because {', '.join(kinds) or 'geometry'} "
                "differ between images"
            )
        largest = max(len(v) for v in by_key.values())
        for number, (key, group) in enumerate(sorted(by_key.items(), key=lambda kv: -len(kv[1]))):
            group_warnings = list(warnings)
            group_name = name if len(by_key) == 1 else f"{name} ({number + 1})"
            if key[6][0] or (len(by_key) > 1 and len(group) <= 3 and len(group) < largest):
                group_warnings.append("probable localizer / scout images")
            pieces.append((group, group_name, group_warnings))

    # Merge single-volume series that differ only by an acquisition parameter (same positions and geometry).
    merged: list[tuple[list[Frame], str, list[str]]] = []
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for index, (group, _, _) in enumerate(pieces):
        groups, _ = _position_groups(group)
        if all(len(g) == 1 for g in groups) and group[0].position is not None:
            key = _split_key(group[0]) + (group[0].frame_of_reference, _positions_signature(group))
            buckets[key].append(index)
    used: set[int] = set()
    for indices in buckets.values():
        if len(indices) < 2:
            continue
        param_sets = [
            {
                k: v
                for k, v in _volume_params(pieces[i][0][0]).items()
                if k in SORTABLE_PARAMETERS or k in ("DiffusionBValue", "DiffusionGradientOrientation")
            }
            for i in indices
        ]
        distinct = {tuple(sorted((k, str(v)) for k, v in p.items())) for p in param_sets}
        if len(distinct) != len(indices):
            continue  # repeated identical acquisitions stay separate volumes
        differing = {k for p in param_sets for k in p if len({str(q.get(k)) for q in param_sets}) > 1}
        protocols = {
            (pieces[i][0][0].file.info.get("SeriesDescription", ""), pieces[i][0][0].file.info.get("ProtocolName", ""))
            for i in indices
        }
        if len(differing) > 1 and len(protocols) > 1:
            continue  # e.g. a T1 and a T2 sharing a slice prescription: different images, not one experiment
        frames_all = [f for i in indices for f in pieces[i][0]]
        first = min(indices, key=lambda i: (pieces[i][0][0].params.get("SeriesNumber", 0), i))
        merged.append(
            (
                frames_all,
                pieces[first][1],
                pieces[first][2]
                + [f"{len(indices)} series with the same positions merged into one multi-volume loadable"],
            )
        )
        used.update(indices)
    for index, piece in enumerate(pieces):
        if index not in used:
            merged.append(piece)
    loadables = [_make_loadable(group, name, warnings) for group, name, warnings in merged]
    for loadable in loadables:
        if any("localizer" in w for w in loadable.warnings):
            loadable.selected = False
            loadable.confidence = 0.3
    loadables += [sub for loadable in loadables for sub in _sub_series(loadable)]
    loadables.sort(key=lambda item: (not item.selected, -len(item.frames)))
    return loadables
