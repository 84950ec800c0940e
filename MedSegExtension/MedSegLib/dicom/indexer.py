"""Headless DICOM import: folder walk, fast parallel header reading, import summary.

Why a hand-written header walker: ``pydicom.dcmread(stop_before_pixels=True)`` builds a full
``Dataset`` (hundreds of elements, private blocks, sequences) and manages ~500 files/s per core;
indexing only needs ~80 top-level elements. The walker below reads element headers, keeps the
values of ``CACHED_TAGS``, skips everything else by length, and stops at Pixel Data, which it
also checks for truncation (a check ``stop_before_pixels`` cannot do). Values are converted to
the same strings pydicom gives (multi-values joined with ``\\``), so ``fileValue`` answers are
identical whether they come from the cache or from pydicom. Transfer syntaxes the walker does
not handle (big endian, deflated) fall back to pydicom.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

# --------------------------------------------------------------------------------------
# Tags cached per instance (TagCache keys are "GGGG,EEEE", upper-case hex, as CTK writes them)
# --------------------------------------------------------------------------------------

#: keyword -> (tag key, VR used when the file is implicit VR)
CACHED_TAGS: Dict[str, Tuple[str, str]] = {
    "TransferSyntaxUID": ("0002,0010", "UI"),
    "SpecificCharacterSet": ("0008,0005", "CS"),
    "ImageType": ("0008,0008", "CS"),
    "SOPClassUID": ("0008,0016", "UI"),
    "SOPInstanceUID": ("0008,0018", "UI"),
    "StudyDate": ("0008,0020", "DA"),
    "SeriesDate": ("0008,0021", "DA"),
    "AcquisitionDate": ("0008,0022", "DA"),
    "ContentDate": ("0008,0023", "DA"),
    "AcquisitionDateTime": ("0008,002A", "DT"),
    "StudyTime": ("0008,0030", "TM"),
    "SeriesTime": ("0008,0031", "TM"),
    "AcquisitionTime": ("0008,0032", "TM"),
    "ContentTime": ("0008,0033", "TM"),
    "AccessionNumber": ("0008,0050", "SH"),
    "Modality": ("0008,0060", "CS"),
    "ModalitiesInStudy": ("0008,0061", "CS"),
    "Manufacturer": ("0008,0070", "LO"),
    "InstitutionName": ("0008,0080", "LO"),
    "ReferringPhysicianName": ("0008,0090", "PN"),
    "StudyDescription": ("0008,1030", "LO"),
    "SeriesDescription": ("0008,103E", "LO"),
    "PerformingPhysicianName": ("0008,1050", "PN"),
    "ManufacturerModelName": ("0008,1090", "LO"),
    "PatientName": ("0010,0010", "PN"),
    "PatientID": ("0010,0020", "LO"),
    "PatientBirthDate": ("0010,0030", "DA"),
    "PatientBirthTime": ("0010,0032", "TM"),
    "PatientSex": ("0010,0040", "CS"),
    "PatientAge": ("0010,1010", "AS"),
    "PatientComments": ("0010,4000", "LT"),
    "ContrastBolusAgent": ("0018,0010", "LO"),
    "BodyPartExamined": ("0018,0015", "CS"),
    "ScanningSequence": ("0018,0020", "CS"),
    "SequenceVariant": ("0018,0021", "CS"),
    "MRAcquisitionType": ("0018,0023", "CS"),
    "SliceThickness": ("0018,0050", "DS"),
    "RepetitionTime": ("0018,0080", "DS"),
    "EchoTime": ("0018,0081", "DS"),
    "InversionTime": ("0018,0082", "DS"),
    "EchoNumbers": ("0018,0086", "IS"),
    "MagneticFieldStrength": ("0018,0087", "DS"),
    "SpacingBetweenSlices": ("0018,0088", "DS"),
    "ProtocolName": ("0018,1030", "LO"),
    "TriggerTime": ("0018,1060", "DS"),
    "GantryDetectorTilt": ("0018,1120", "DS"),
    "FlipAngle": ("0018,1314", "DS"),
    "PatientPosition": ("0018,5100", "CS"),
    "DiffusionBValue": ("0018,9087", "FD"),
    "DiffusionGradientOrientation": ("0018,9089", "FD"),
    "StudyInstanceUID": ("0020,000D", "UI"),
    "SeriesInstanceUID": ("0020,000E", "UI"),
    "StudyID": ("0020,0010", "SH"),
    "SeriesNumber": ("0020,0011", "IS"),
    "AcquisitionNumber": ("0020,0012", "IS"),
    "InstanceNumber": ("0020,0013", "IS"),
    "ImagePositionPatient": ("0020,0032", "DS"),
    "ImageOrientationPatient": ("0020,0037", "DS"),
    "FrameOfReferenceUID": ("0020,0052", "UI"),
    "TemporalPositionIdentifier": ("0020,0100", "IS"),
    "NumberOfTemporalPositions": ("0020,0105", "IS"),
    "ImagesInAcquisition": ("0020,1002", "IS"),
    "SliceLocation": ("0020,1041", "DS"),
    "SamplesPerPixel": ("0028,0002", "US"),
    "PhotometricInterpretation": ("0028,0004", "CS"),
    "NumberOfFrames": ("0028,0008", "IS"),
    "Rows": ("0028,0010", "US"),
    "Columns": ("0028,0011", "US"),
    "PixelSpacing": ("0028,0030", "DS"),
    "BitsAllocated": ("0028,0100", "US"),
    "BitsStored": ("0028,0101", "US"),
    "PixelRepresentation": ("0028,0103", "US"),
    "WindowCenter": ("0028,1050", "DS"),
    "WindowWidth": ("0028,1051", "DS"),
    "RescaleIntercept": ("0028,1052", "DS"),
    "RescaleSlope": ("0028,1053", "DS"),
    "RescaleType": ("0028,1054", "LO"),
    "WindowCenterWidthExplanation": ("0028,1055", "LO"),
}

#: tag key -> keyword (for reports)
TAG_KEYWORDS: Dict[str, str] = {key: kw for kw, (key, _vr) in CACHED_TAGS.items()}

_TAG_INT: Dict[int, Tuple[str, str]] = {
    int(key[:4], 16) << 16 | int(key[5:], 16): (key, vr) for key, vr in CACHED_TAGS.values()
}
_MAX_DATASET_TAG = max(t for t in _TAG_INT if t >> 16 != 0x0002)

UNDEFINED_LENGTH = 0xFFFFFFFF
_CHUNK = 32768
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_SIMPLE_CHARSETS = ("", "ISO_IR 100", "ISO_IR 6", "ISO 2022 IR 6")
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_unpack_from = struct.unpack_from


class NotDicomError(Exception):
    """The file is not a DICOM instance (or is a DICOMDIR): skipped, counted, never fatal."""


class DicomReadError(Exception):
    """The file looks like DICOM but cannot be indexed (truncated, corrupt): reported with its reason."""


@dataclasses.dataclass
class HeaderRecord:
    """What the indexer keeps of one file: cached tag values and pixel-data facts."""

    values: Dict[str, str]
    has_pixel_data: bool
    media_sop_instance_uid: str = ""


class _Reader:
    """Buffered random access that reads element headers and wanted values, never skipped bytes."""

    __slots__ = ("f", "buf", "start", "size")

    def __init__(self, f, size: int) -> None:
        self.f = f
        self.size = size
        self.buf = b""
        self.start = 0

    def at(self, pos: int, n: int) -> Tuple[bytes, int]:
        """Return (buffer, offset) such that buffer[offset:offset+n] is the file's [pos, pos+n)."""
        off = pos - self.start
        if off >= 0 and off + n <= len(self.buf):
            return self.buf, off
        if pos + n > self.size:
            raise DicomReadError(f"truncated: needs bytes {pos}..{pos + n} but the file has {self.size}")
        self.f.seek(pos)
        self.buf = self.f.read(max(n, _CHUNK))
        self.start = pos
        if len(self.buf) < n:
            raise DicomReadError(f"truncated: short read at byte {pos}")
        return self.buf, 0


def _is_vr(b: bytes) -> bool:
    return len(b) == 2 and 65 <= b[0] <= 90 and 65 <= b[1] <= 90


def _skip_undefined(reader: _Reader, pos: int, implicit: bool) -> int:
    """Walk an undefined-length sequence (or encapsulated pixel data) and return the position after it."""
    stack: List[bool] = [implicit]  # one entry per open sequence/item; value = implicit VR inside
    size = reader.size
    while stack:
        if pos + 8 > size:
            raise DicomReadError(f"truncated inside a sequence at byte {pos} (file has {size} bytes)")
        buf, off = reader.at(pos, 12 if pos + 12 <= size else 8)
        group, elem, length = _unpack_from("<HHI", buf, off)
        if group == 0xFFFE:
            pos += 8
            if elem == 0xE000:  # item
                if length == UNDEFINED_LENGTH:
                    stack.append(stack[-1])
                else:
                    pos += length
            elif elem in (0xE0DD, 0xE00D):  # sequence / item delimiter
                stack.pop()
            else:
                raise DicomReadError(f"corrupt sequence: unexpected tag (FFFE,{elem:04X}) at byte {pos - 8}")
            continue
        inner_implicit = stack[-1]
        if inner_implicit:
            header = 8
            vr = b""
        else:
            vr = buf[off + 4 : off + 6]
            if not _is_vr(vr):
                raise DicomReadError(f"corrupt element ({group:04X},{elem:04X}) at byte {pos}: invalid VR")
            if vr in _LONG_VRS:
                length = _unpack_from("<I", buf, off + 8)[0]
                header = 12
            else:
                length = _unpack_from("<H", buf, off + 6)[0]
                header = 8
        pos += header
        if length == UNDEFINED_LENGTH:
            stack.append(inner_implicit or vr == b"UN")
        else:
            pos += length
        if pos > size:
            raise DicomReadError(f"truncated: element ({group:04X},{elem:04X}) runs past the end of the file")
    return pos


def _decode_text(raw: bytes, vr: str, charset: str) -> str:
    """Decode a text value like pydicom does (same stripping, '\\' kept as the separator)."""
    if vr in _CHARSET_VRS and charset not in _SIMPLE_CHARSETS:
        if charset == "ISO_IR 192":
            text = raw.decode("utf-8", "replace")
        else:
            from pydicom.charset import decode_bytes, convert_encodings
            from pydicom.values import TEXT_VR_DELIMS

            text = decode_bytes(raw, convert_encodings(charset.split("\\")), TEXT_VR_DELIMS)
    else:
        text = raw.decode("latin-1")
    if vr in ("DS", "IS", "AE"):
        return "\\".join(part.strip() for part in text.split("\\"))
    if vr in ("LO", "SH", "UC"):
        return "\\".join(part.rstrip("\x00 ") for part in text.split("\\"))
    return text.rstrip(" \x00")


def _convert(raw: bytes, vr: str, charset: str) -> str:
    """Convert one element value to the string pydicom shows (numbers via Python's ``str``)."""
    if not raw:
        return ""
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is None:
        return _decode_text(raw, vr, charset)
    size = struct.calcsize(fmt)
    count = len(raw) // size
    values = struct.unpack("<%d%s" % (count, fmt), raw[: count * size])
    return "\\".join(str(v) for v in values)


def read_header(path: str, file_size: Optional[int] = None) -> HeaderRecord:
    """Read the cached tags of one file without reading pixel values.

    Raises ``NotDicomError`` for non-DICOM files and DICOMDIRs, ``DicomReadError`` (one-line reason) for
    truncated or corrupt DICOM files.
    """
    try:
        f = open(path, "rb")
    except OSError as error:
        raise DicomReadError(f"cannot open: {error.strerror or error}") from None
    with f:
        if file_size is None:
            file_size = os.fstat(f.fileno()).st_size
        head = f.read(_CHUNK)
        reader = _Reader(f, file_size)
        reader.buf = head
        return _walk(reader, head, path)


def _walk(reader: _Reader, head: bytes, path: str) -> HeaderRecord:
    size = reader.size
    raw_values: Dict[int, Tuple[bytes, str]] = {}
    transfer_syntax = ""
    media_sop_class = ""
    media_sop_instance = ""
    if len(head) >= 132 and head[128:132] == b"DICM":
        pos = 132
        meta_implicit = not _is_vr(head[136:138]) if len(head) >= 138 else False
        while pos + 8 <= size:
            buf, off = reader.at(pos, 12 if pos + 12 <= size else 8)
            group, elem = _unpack_from("<HH", buf, off)
            if group != 0x0002:
                break
            if meta_implicit:
                length = _unpack_from("<I", buf, off + 4)[0]
                header = 8
            else:
                vr = buf[off + 4 : off + 6]
                if vr in _LONG_VRS:
                    length = _unpack_from("<I", buf, off + 8)[0]
                    header = 12
                else:
                    length = _unpack_from("<H", buf, off + 6)[0]
                    header = 8
            if length == UNDEFINED_LENGTH or pos + header + length > size:
                raise DicomReadError("corrupt or truncated file meta information (group 0002)")
            if elem in (0x0002, 0x0003, 0x0010):
                vbuf, voff = reader.at(pos + header, length)
                value = vbuf[voff : voff + length].decode("latin-1").rstrip(" \x00")
                if elem == 0x0010:
                    transfer_syntax = value
                elif elem == 0x0002:
                    media_sop_class = value
                else:
                    media_sop_instance = value
            pos += header + length
        if media_sop_class == _DICOMDIR_CLASS:
            raise NotDicomError("DICOMDIR (media storage directory), not an image")
    else:
        # No preamble: DCMTK (and so Slicer) accepts a bare data set that starts in group 0008.
        if len(head) < 8 or _unpack_from("<H", head, 0)[0] != 0x0008 or _unpack_from("<H", head, 2)[0] > 0x00FF:
            raise NotDicomError("no DICOM preamble ('DICM' at byte 128)")
        if _is_vr(head[4:6]):
            transfer_syntax = "1.2.840.10008.1.2.1"
        else:
            if _unpack_from("<I", head, 4)[0] > size:
                raise NotDicomError("no DICOM preamble ('DICM' at byte 128)")
            transfer_syntax = _IMPLICIT_LE
        pos = 0
    if transfer_syntax == _EXPLICIT_BE or transfer_syntax in _DEFLATED:
        return _read_with_pydicom(path, transfer_syntax, media_sop_instance)
    implicit = transfer_syntax == _IMPLICIT_LE
    if pos + 6 <= size:
        buf, off = reader.at(pos, 6)
        looks_explicit = _is_vr(buf[off + 4 : off + 6])
        implicit = not looks_explicit  # pydicom also trusts the bytes over the meta header here
    has_pixel_data = False
    wanted = _TAG_INT
    while pos + 8 <= size:
        buf, off = reader.at(pos, 12 if pos + 12 <= size else 8)
        group, elem = _unpack_from("<HH", buf, off)
        tag = group << 16 | elem
        if implicit:
            length = _unpack_from("<I", buf, off + 4)[0]
            header = 8
            vr_bytes = b""
        else:
            vr_bytes = buf[off + 4 : off + 6]
            if vr_bytes in _LONG_VRS:
                length = _unpack_from("<I", buf, off + 8)[0]
                header = 12
            elif _is_vr(vr_bytes):
                length = _unpack_from("<H", buf, off + 6)[0]
                header = 8
            else:
                raise DicomReadError(f"corrupt element ({group:04X},{elem:04X}) at byte {pos}: invalid VR")
        if group == 0x7FE0 and tag in _PIXEL_TAGS:
            has_pixel_data = True
            if length == UNDEFINED_LENGTH:
                try:
                    _skip_undefined(reader, pos + header, True)
                except DicomReadError as error:
                    raise DicomReadError(f"truncated pixel data (encapsulated fragments): {error}") from None
            elif pos + header + length > size:
                raise DicomReadError(
                    f"truncated pixel data: (7FE0,{elem:04X}) declares {length} bytes, "
                    f"{max(0, size - pos - header)} remain"
                )
            break
        if group == 0xFFFE:
            raise DicomReadError(f"corrupt data set: item tag (FFFE,{elem:04X}) at top level, byte {pos}")
        if length == UNDEFINED_LENGTH:
            pos = _skip_undefined(reader, pos + header, implicit or vr_bytes == b"UN")
            continue
        end = pos + header + length
        if end > size:
            raise DicomReadError(
                f"truncated: element ({group:04X},{elem:04X}) declares {length} bytes, {size - pos - header} remain"
            )
        if tag in wanted:
            dict_vr = wanted[tag][1]
            vr = vr_bytes.decode("ascii") if vr_bytes else dict_vr
            if vr in ("UN", "OB", "OW"):
                vr = dict_vr
            vbuf, voff = reader.at(pos + header, length)
            raw_values[tag] = (vbuf[voff : voff + length], vr)
        pos = end
    charset = ""
    if 0x00080005 in raw_values:
        charset = raw_values[0x00080005][0].decode("latin-1").strip(" \x00")
        # pydicom uses the first value for single-byte text; multi-valued (ISO 2022) go through pydicom
    values: Dict[str, str] = {}
    if transfer_syntax:
        values["0002,0010"] = transfer_syntax
    for tag, (raw, vr) in raw_values.items():
        text = _convert(raw, vr, charset)
        if text:
            values[wanted[tag][0]] = text
    return HeaderRecord(values, has_pixel_data, media_sop_instance)


def _read_with_pydicom(path: str, transfer_syntax: str, media_sop_instance: str) -> HeaderRecord:
    """Fallback for big-endian and deflated files: pydicom parses them; same string conversion."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=256)
    except InvalidDicomError as error:
        raise NotDicomError(str(error).splitlines()[0]) from None
    except Exception as error:  # noqa: BLE001 - any parser failure is a per-file report, never fatal
        raise DicomReadError(f"unreadable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    values = {"0002,0010": transfer_syntax}
    for tag_int, (key, _vr) in _TAG_INT.items():
        if tag_int >> 16 == 0x0002:
            continue
        elem = ds.get(tag_int)
        if elem is None:
            continue
        text = element_to_string(elem.value)
        if text:
            values[key] = text
    has_pixels = any(t in ds for t in _PIXEL_TAGS)
    return HeaderRecord(values, has_pixels, media_sop_instance)


def element_to_string(value: object) -> str:
    """The string form used everywhere (cache, ``fileValue``) for a pydicom element value."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(element_to_string(v) for v in value)  # type: ignore[union-attr]
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip(" \x00")
    return str(value)
