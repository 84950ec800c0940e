"""Headless DICOM import: folder walk, fast parallel header reading, import summary.

Why a hand-written header walker: ``pydicom.dcmread(stop_before_pixels=True)`` builds a full
``Dataset`` (hundreds of elements, private blocks, sequences) and manages a few hundred files/s per
core; indexing only needs about 60 top-level elements (measured ~6-10x faster, see
``Testing/benchmarks/bench_dicom_import.py``). The walker below reads element headers, keeps the
values of ``CACHED_TAGS``, skips everything else by length, and stops at Pixel Data, which it
also checks for truncation (a check ``stop_before_pixels`` cannot do). Values are converted to
the same strings pydicom gives (multi-values joined with ``\\``), so ``fileValue`` answers are
identical whether they come from the cache or from pydicom. Transfer syntaxes the walker does
not handle (big endian, deflated) fall back to pydicom.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import sys
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from MedSegLib.dicom.database import (
    STATUS_DUPLICATE,
    STATUS_FAILED,
    STATUS_INDEXED,
    STATUS_NON_DICOM,
    dicom_date_to_iso,
    dicom_int,
    human_readable_patient_name,
    now_timestamp,
    utc_timestamp,
)

if TYPE_CHECKING:
    from MedSegLib.dicom.database import DicomDatabase

# --------------------------------------------------------------------------------------
# Tags cached per instance (TagCache keys are "GGGG,EEEE", upper-case hex, as CTK writes them)
# --------------------------------------------------------------------------------------

#: keyword -> (tag key, VR used when the file is implicit VR). What the series splitter and loader ask for
#: (geometry, acquisition parameters, display and rescale), what CTK's browser shows, and the character set.
#: Kept short on purpose: every entry is one TagCache row per instance, the main cost of an import.
CACHED_TAGS: Dict[str, Tuple[str, str]] = {
    "TransferSyntaxUID": ("0002,0010", "UI"),
    "SpecificCharacterSet": ("0008,0005", "CS"),
    "ImageType": ("0008,0008", "CS"),
    "SOPClassUID": ("0008,0016", "UI"),
    "SOPInstanceUID": ("0008,0018", "UI"),
    "StudyDate": ("0008,0020", "DA"),
    "SeriesDate": ("0008,0021", "DA"),
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
    "MRAcquisitionType": ("0018,0023", "CS"),
    "SliceThickness": ("0018,0050", "DS"),
    "RepetitionTime": ("0018,0080", "DS"),
    "EchoTime": ("0018,0081", "DS"),
    "InversionTime": ("0018,0082", "DS"),
    "EchoNumbers": ("0018,0086", "IS"),
    "SpacingBetweenSlices": ("0018,0088", "DS"),
    "TriggerTime": ("0018,1060", "DS"),
    "GantryDetectorTilt": ("0018,1120", "DS"),
    "FlipAngle": ("0018,1314", "DS"),
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
    "SamplesPerPixel": ("0028,0002", "US"),
    "PhotometricInterpretation": ("0028,0004", "CS"),
    "NumberOfFrames": ("0028,0008", "IS"),
    "Rows": ("0028,0010", "US"),
    "Columns": ("0028,0011", "US"),
    "PixelSpacing": ("0028,0030", "DS"),
    "BitsAllocated": ("0028,0100", "US"),
    "PixelRepresentation": ("0028,0103", "US"),
    "WindowCenter": ("0028,1050", "DS"),
    "WindowWidth": ("0028,1051", "DS"),
    "RescaleIntercept": ("0028,1052", "DS"),
    "RescaleSlope": ("0028,1053", "DS"),
}

#: tag key -> keyword (for reports)
TAG_KEYWORDS: Dict[str, str] = {key: kw for kw, (key, _vr) in CACHED_TAGS.items()}

_TAG_INT: Dict[int, Tuple[str, str]] = {
    int(key[:4], 16) << 16 | int(key[5:], 16): (key, vr) for key, vr in CACHED_TAGS.values()
}
_MAX_DATASET_TAG = max(t for t in _TAG_INT if t >> 16 != 0x0002)

UNDEFINED_LENGTH = 0xFFFFFFFF
_CHUNK = 32768
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS"}
    | {b"ST", b"TM", b"UI", b"UL", b"US"}
)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VR_HEADER = {**{vr: 8 for vr in _SHORT_VRS}, **{vr: 12 for vr in _LONG_VRS}}
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_SIMPLE_CHARSETS = ("", "ISO_IR 100", "ISO_IR 6", "ISO 2022 IR 6")
_STRIP_BOTH = frozenset({"DS", "IS", "AE"})
_STRIP_EACH = frozenset({"LO", "SH", "UC"})
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_unpack_from = struct.unpack_from
_S_EXPLICIT = struct.Struct("<HH2sHI").unpack_from
_S_IMPLICIT = struct.Struct("<HHI").unpack_from


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
        pad = 0
        if pos + n > self.size:
            if pos + 8 > self.size:
                raise DicomReadError(f"truncated: needs bytes {pos}..{pos + n} but the file has {self.size}")
            pad = pos + n - self.size  # an element header at the very end: zero-pad its unused long length
        self.f.seek(pos)
        self.buf = self.f.read(max(n, _CHUNK))
        self.start = pos
        if len(self.buf) < n - pad:
            raise DicomReadError(f"truncated: short read at byte {pos}")
        if pad:
            self.buf += b"\x00" * pad
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
            from pydicom.charset import convert_encodings, decode_bytes
            from pydicom.values import TEXT_VR_DELIMS

            text = decode_bytes(raw, convert_encodings(charset.split("\\")), TEXT_VR_DELIMS)
    else:
        text = raw.decode("latin-1")
    if vr in _STRIP_BOTH:
        if "\\" not in text:
            return text.strip()
        return "\\".join(part.strip() for part in text.split("\\"))
    if vr in _STRIP_EACH and "\\" in text:
        return "\\".join(part.rstrip("\x00 ") for part in text.split("\\"))
    return text.rstrip(" \x00")


def _convert(raw: bytes, vr: str, charset: str) -> str:
    """Convert one element value to the string pydicom shows (numbers via Python's ``str``)."""
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is None:
        return _decode_text(raw, vr, charset)
    size = struct.calcsize(fmt)
    count = len(raw) // size
    values = struct.unpack(f"<{count}{fmt}", raw[: count * size])
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
    if size == 0:
        raise NotDicomError("empty file")
    raw_values: Dict[int, Tuple[bytes, str]] = {}
    transfer_syntax = ""
    media_sop_class = ""
    media_sop_instance = ""
    has_meta = len(head) >= 132 and head[128:132] == b"DICM"
    if has_meta:
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
    group = elem = length = header = 0
    truncated = False
    wanted = _TAG_INT
    limit = _MAX_DATASET_TAG
    shortcut_tried = False
    vr_header = _VR_HEADER
    unpack_explicit = _S_EXPLICIT
    unpack_implicit = _S_IMPLICIT
    buf = reader.buf
    bstart = reader.start
    blen = len(buf)
    while True:
        off = pos - bstart
        if off < 0 or off + 12 > blen:
            if pos + 8 > size:
                break
            buf, off = reader.at(pos, 12)
            bstart = reader.start
            blen = len(buf)
        if implicit:
            group, elem, length = unpack_implicit(buf, off)
            header = 8
            vr_bytes = b""
        else:
            group, elem, vr_bytes, length, long_length = unpack_explicit(buf, off)
            header = vr_header.get(vr_bytes, 0)
            if header == 12:
                length = long_length
            elif not header:
                raise DicomReadError(f"corrupt element ({group:04X},{elem:04X}) at byte {pos}: invalid VR")
        tag = group << 16 | elem
        if tag > limit:
            if group == 0xFFFE:
                raise DicomReadError(f"corrupt data set: item tag (FFFE,{elem:04X}) at top level, byte {pos}")
            if tag in _PIXEL_TAGS:
                has_pixel_data = True
                _check_pixel_element(reader, pos, header, length, elem)
                break
            if tag > 0x7FE00010:
                break  # past Pixel Data (padding, signatures): nothing left to find
            if not shortcut_tried:
                shortcut_tried = True
                if _find_pixel_data(reader, pos, implicit):
                    has_pixel_data = True
                    break
                limit = 0x7FE00007
                buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
                continue
        if length == UNDEFINED_LENGTH:
            pos = _skip_undefined(reader, pos + header, implicit or vr_bytes == b"UN")
            buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
            continue
        if tag in wanted:
            if pos + header + length > size:
                truncated = True
                break
            dict_vr = wanted[tag][1]
            vr = vr_bytes.decode("ascii") if vr_bytes else dict_vr
            if vr in ("UN", "OB", "OW"):
                vr = dict_vr
            vstart = off + header
            if vstart + length <= blen:
                raw_values[tag] = (buf[vstart : vstart + length], vr)
            else:
                vbuf, voff = reader.at(pos + header, length)
                raw_values[tag] = (vbuf[voff : voff + length], vr)
                buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
        pos += header + length
    if truncated or pos > size:  # an element's declared length runs past the end of the file
        raise DicomReadError(
            f"truncated: element ({group:04X},{elem:04X}) declares {length} bytes, the file ends at byte {size}"
        )
    charset = ""
    if 0x00080005 in raw_values:
        charset = raw_values[0x00080005][0].decode("latin-1").strip(" \x00")
        # pydicom uses the first value for single-byte text; multi-valued (ISO 2022) go through pydicom
    values: Dict[str, str] = {}
    if transfer_syntax and has_meta:
        values["0002,0010"] = transfer_syntax  # as in the file meta; a bare data set has none
    for tag, (raw, vr) in raw_values.items():
        if not raw:
            continue
        text = _convert(raw, vr, charset)
        if text:
            values[wanted[tag][0]] = text
    return HeaderRecord(values, has_pixel_data, media_sop_instance)


def _check_pixel_element(reader: _Reader, pos: int, header: int, length: int, elem: int) -> None:
    """Pixel data must be complete: a defined length must fit in the file, fragments must end."""
    size = reader.size
    if length == UNDEFINED_LENGTH:
        try:
            _skip_undefined(reader, pos + header, True)
        except DicomReadError as error:
            raise DicomReadError(f"truncated pixel data (encapsulated fragments): {error}") from None
    elif pos + header + length > size:
        raise DicomReadError(
            f"truncated pixel data: (7FE0,{elem:04X}) declares {length} bytes, {max(0, size - pos - header)} remain"
        )


_PIXEL_TAG_BYTES = b"\xe0\x7f\x10\x00"
_SEARCH_LIMIT = 4 * 1024 * 1024


def _find_pixel_data(reader: _Reader, pos: int, implicit: bool) -> Optional[bool]:
    """Shortcut past the last cached tag: locate the (7FE0,0010) header by its bytes and check it.

    Walking the private groups (Siemens CSA, GE 0043) element by element costs more than the rest of the
    header. A candidate counts only if its VR/length are consistent with being the last element; anything
    doubtful returns ``None`` and the caller walks element by element (exact, slower).
    """
    size = reader.size
    search_from = pos
    while search_from < size and search_from - pos < _SEARCH_LIMIT:
        buf, off = reader.at(search_from, min(_CHUNK, size - search_from))
        idx = buf.find(_PIXEL_TAG_BYTES, off)
        if idx < 0:
            if reader.start + len(buf) >= size:
                return None  # no Pixel Data bytes at all: let the exact walk decide (rare)
            search_from = reader.start + len(buf) - 3
            continue
        cand = reader.start + idx
        if cand + 12 > size:
            return None
        cbuf, coff = reader.at(cand, 12)
        if implicit:
            length = _unpack_from("<I", cbuf, coff + 4)[0]
            header = 8
        else:
            vr = cbuf[coff + 4 : coff + 6]
            if vr not in (b"OB", b"OW") or cbuf[coff + 6 : coff + 8] != b"\x00\x00":
                search_from = cand + 1
                continue
            length = _unpack_from("<I", cbuf, coff + 8)[0]
            header = 12
        remaining = size - cand - header
        if length == UNDEFINED_LENGTH:
            if implicit:
                return None
            _check_pixel_element(reader, cand, header, length, 0x0010)
            return True
        if length == remaining:
            return True
        if length > remaining:
            if implicit:
                return None
            _check_pixel_element(reader, cand, header, length, 0x0010)
        search_from = cand + 1
    return None


def _read_with_pydicom(path: str, transfer_syntax: str, media_sop_instance: str) -> HeaderRecord:
    """Fallback for big-endian and deflated files: pydicom parses them; same string conversion."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=256)
    except InvalidDicomError as error:
        raise NotDicomError(str(error).splitlines()[0]) from None
    except Exception as error:  # noqa: BLE001 - any parser failure is a per-file report, never fatal
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise DicomReadError(f"unreadable ({type(error).__name__}: {first_line})") from None
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


def read_tag_from_file(path: str, tag: str) -> Optional[str]:
    """Any tag's value from a file with pydicom (for tags outside the cache); None if unreadable."""
    import pydicom

    try:
        group, element = (int(part, 16) for part in tag.split(","))
    except ValueError:
        return None
    tag_int = group << 16 | element
    try:
        if group == 0x0002:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[])
            elem = ds.file_meta.get(tag_int)
        else:
            ds = pydicom.dcmread(path, stop_before_pixels=tag_int < 0x7FE00000, specific_tags=[tag_int])
            elem = ds.get(tag_int)
    except Exception:  # noqa: BLE001 - CTK answers "" for unreadable files
        return None
    if elem is None:
        return ""
    try:
        return element_to_string(elem.value)
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------
# Folder walk and parallel parsing
# --------------------------------------------------------------------------------------

#: (path, size, mtime_ns)
FileEntry = Tuple[str, int, int]
#: (path, size, mtime_ns, kind, payload); kind "ok" -> (values, has_pixel_data, media_sop_uid); else reason
ParseResult = Tuple[str, int, int, str, object]

KIND_OK = "ok"
KIND_NON_DICOM = "non-dicom"
KIND_FAILED = "failed"


def walk_files(paths: Sequence[str], exclude: Optional[str] = None) -> Iterator[FileEntry]:
    """Every regular file under the given files/folders, in sorted path order (like ``find | sort``).

    Symlinked folders are not followed (no loops); the database folder itself is skipped.
    """
    exclude_norm = os.path.normcase(os.path.abspath(exclude)) if exclude else None

    def sorted_entries(folder: str) -> Iterator[os.DirEntry]:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            return iter(())
        return iter(entries)

    for top in paths:
        top = os.path.abspath(top)
        if os.path.isfile(top):
            st = os.stat(top)
            yield top, st.st_size, st.st_mtime_ns
            continue
        stack = [sorted_entries(top)]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not (exclude_norm and os.path.normcase(entry.path) == exclude_norm):
                        stack.append(sorted_entries(entry.path))
                elif entry.is_file():
                    st = entry.stat()
                    yield entry.path, st.st_size, st.st_mtime_ns
            except OSError:
                continue


def parse_files(entries: Sequence[FileEntry]) -> List[ParseResult]:
    """Parse a chunk of files (runs in a worker); never raises for a bad file."""
    results: List[ParseResult] = []
    for path, size, mtime in entries:
        try:
            record = read_header(path, size)
            results.append(
                (path, size, mtime, KIND_OK, (record.values, record.has_pixel_data, record.media_sop_instance_uid))
            )
        except NotDicomError as error:
            results.append((path, size, mtime, KIND_NON_DICOM, str(error)))
        except DicomReadError as error:
            results.append((path, size, mtime, KIND_FAILED, str(error)))
        except Exception as error:  # noqa: BLE001 - a parser bug must not stop an import
            results.append((path, size, mtime, KIND_FAILED, f"unreadable ({type(error).__name__}: {error})"))
    return results


def _inside_slicer() -> bool:
    return "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app")


def choose_mode(n_files: int, mode: str = "auto", workers: Optional[int] = None) -> Tuple[str, int]:
    """Processes win for pure-Python parsing (GIL); threads inside Slicer (no safe fork); serial when small."""
    cpus = os.cpu_count() or 1
    if workers is None:
        workers = cpus
    if mode == "auto":
        if workers <= 1 or n_files < 400:
            mode = "serial"
        elif _inside_slicer() or sys.platform == "emscripten":
            mode = "threads"
        else:
            mode = "processes"
    if mode == "serial":
        workers = 1
    return mode, max(1, workers)


def iter_parsed(
    entries: Sequence[FileEntry], mode: str, workers: int, chunk_size: int = 128
) -> Iterator[List[ParseResult]]:
    """Parse files in chunks, serially or in a pool; yields chunks in submission order."""
    chunks = [entries[i : i + chunk_size] for i in range(0, len(entries), chunk_size)]
    if mode == "serial" or not chunks:
        for chunk in chunks:
            yield parse_files(chunk)
        return
    executor: Executor
    if mode == "threads":
        executor = ThreadPoolExecutor(max_workers=workers)
    else:
        import multiprocessing

        context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        window = workers * 4
        futures = [executor.submit(parse_files, chunk) for chunk in chunks[:window]]
        next_chunk = len(futures)
        index = 0
        while index < len(futures):
            result = futures[index].result()
            futures[index] = None  # type: ignore[call-overload]
            index += 1
            if next_chunk < len(chunks):
                futures.append(executor.submit(parse_files, chunks[next_chunk]))
                next_chunk += 1
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------
# Import summary
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImportSummary:
    """What an import did; ``to_dict`` is the ``--json`` form, ``format_text`` the console form."""

    database: str
    inputs: List[str]
    files_seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_non_dicom: int = 0
    non_dicom_reasons: Counter = dataclasses.field(default_factory=Counter)
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    duplicates: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
    no_pixel_data: List[str] = dataclasses.field(default_factory=list)
    missing_position: List[str] = dataclasses.field(default_factory=list)
    derived_uid_files: List[str] = dataclasses.field(default_factory=list)
    copied: int = 0
    mode: str = "serial"
    workers: int = 1
    elapsed_s: float = 0.0

    @property
    def duplicate_sop_instance_uid(self) -> bool:
        return bool(self.duplicates)

    @property
    def files_per_second(self) -> float:
        return self.files_seen / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def warnings(self) -> List[str]:
        lines = []
        for sop, kept, duplicate in self.duplicates:
            lines.append(f"duplicate SOPInstanceUID {sop}: {duplicate} not indexed (same instance as {kept})")
        if self.no_pixel_data:
            lines.append(
                f"{len(self.no_pixel_data)} indexed file(s) have no Pixel Data (7FE0,0010), "
                f"e.g. {self.no_pixel_data[0]}: not loadable as images"
            )
        if self.missing_position:
            lines.append(
                f"{len(self.missing_position)} indexed image file(s) lack ImagePositionPatient (0020,0032), "
                f"e.g. {self.missing_position[0]}: slices cannot be placed in space"
            )
        if self.derived_uid_files:
            folders = sorted({os.path.dirname(p) for p in self.derived_uid_files})
            lines.append(
                f"{len(self.derived_uid_files)} file(s) in {len(folders)} folder(s) lack Study/Series/SOP Instance "
                f"UIDs (anonymised?), e.g. {folders[0]}: MedSeg grouped them by folder with derived 2.25 UIDs; "
                "3D Slicer's own importer would reject them"
            )
        return lines

    def to_dict(self) -> Dict[str, object]:
        return {
            "database": self.database,
            "inputs": self.inputs,
            "files_seen": self.files_seen,
            "added": self.added,
            "updated": self.updated,
            "unchanged_skipped": self.unchanged,
            "non_dicom_skipped": self.skipped_non_dicom,
            "non_dicom_reasons": dict(self.non_dicom_reasons),
            "failed": [{"file": path, "reason": reason} for path, reason in self.failed],
            "duplicate_sop_instance_uid": self.duplicate_sop_instance_uid,
            "duplicates": [
                {"sop_instance_uid": sop, "kept": kept, "skipped": dup} for sop, kept, dup in self.duplicates
            ],
            "no_pixel_data": self.no_pixel_data,
            "missing_image_position": self.missing_position,
            "derived_uids": len(self.derived_uid_files),
            "copied": self.copied,
            "warnings": self.warnings(),
            "mode": self.mode,
            "workers": self.workers,
            "elapsed_s": round(self.elapsed_s, 3),
            "files_per_second": round(self.files_per_second, 1),
        }

    def format_text(self, max_failures: int = 20) -> str:
        lines = [
            f"database: {self.database}",
            f"files seen: {self.files_seen} in {self.elapsed_s:.2f} s ({self.files_per_second:.0f} files/s, "
            f"{self.mode}, {self.workers} worker(s))",
            f"added: {self.added}  updated: {self.updated}  unchanged (skipped): {self.unchanged}  "
            f"non-DICOM (skipped): {self.skipped_non_dicom}  failed: {len(self.failed)}",
        ]
        if self.copied:
            lines.append(f"copied into the database folder: {self.copied}")
        if self.non_dicom_reasons:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.non_dicom_reasons.most_common())
            lines.append(f"non-DICOM: {reasons}")
        for path, reason in self.failed[:max_failures]:
            lines.append(f"failed: {path}: {reason}")
        if len(self.failed) > max_failures:
            lines.append(f"failed: ... and {len(self.failed) - max_failures} more (use --json for all)")
        lines.extend(f"warning: {line}" for line in self.warnings())
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Database insertion
# --------------------------------------------------------------------------------------


#: What CTK writes into Patients.Connections for files imported from disk (connection name "").
LOCAL_CONNECTIONS = '{"allow":[""],"deny":[]}'


def _derived_uid(*parts: str) -> str:
    digest = hashlib.md5("\x1f".join(parts).encode("utf-8")).hexdigest()
    return "2.25." + str(int(digest, 16))


class _Inserter:
    """Writes parsed files into the database the way CTK's insert does (patient/study/series/image/cache)."""

    def __init__(
        self,
        db: DicomDatabase,
        summary: ImportSummary,
        copy_files: bool,
        states: Dict[str, Tuple[int, int, str, str, str]],
    ) -> None:
        self.db = db
        self.conn = db.connection()
        self.summary = summary
        self.copy_files = copy_files
        self.states = states
        conn = self.conn
        self.patients: Dict[Tuple[str, str], int] = {
            (pid or "", name or ""): uid
            for uid, pid, name in conn.execute("SELECT UID, PatientID, PatientsName FROM Patients")
        }
        self.studies = {row[0] for row in conn.execute("SELECT StudyInstanceUID FROM Studies")}
        self.series = {row[0] for row in conn.execute("SELECT SeriesInstanceUID FROM Series")}
        self.cached_sops = {row[0] for row in conn.execute("SELECT DISTINCT SOPInstanceUID FROM tc.TagCache")}
        # SOPInstanceUID -> source path of the file that holds it
        self.owner: Dict[str, str] = {}
        for sop, name in conn.execute("SELECT SOPInstanceUID, Filename FROM Images"):
            self.owner[sop] = db.absolute_path(name or "")
        for path, (_size, _mtime, status, sop, _reason) in states.items():
            if status == STATUS_INDEXED and sop:
                self.owner[sop] = path
        self.touched_series: set = set()
        self.touched_studies: set = set()
        self.touched_patients: set = set()
        self.timestamp = now_timestamp()
        self.displayed_timestamp = utc_timestamp()

    def _remove_instance(self, sop: str) -> None:
        conn = self.conn
        row = conn.execute("SELECT SeriesInstanceUID, Filename FROM Images WHERE SOPInstanceUID = ?", (sop,)).fetchone()
        if row:
            self.touched_series.add(row[0])
            conn.execute("DELETE FROM Images WHERE SOPInstanceUID = ?", (sop,))
            if row[1] and not os.path.isabs(row[1]):
                self.db._remove_copy(self.db.absolute_path(row[1]))
        conn.execute("DELETE FROM tc.TagCache WHERE SOPInstanceUID = ?", (sop,))
        self.cached_sops.discard(sop)
        self.owner.pop(sop, None)

    def add_chunk(self, results: List[ParseResult]) -> None:
        conn = self.conn
        summary = self.summary
        tag_rows: List[Tuple[str, str, str]] = []
        image_rows: List[Tuple[str, str, str, str, str, str]] = []
        file_rows: List[Tuple[str, int, int, str, Optional[str], Optional[int], Optional[str]]] = []
        conn.execute("BEGIN")
        try:
            for path, size, mtime, kind, payload in results:
                path = path.replace(os.sep, "/")
                previous = self.states.get(path)
                if previous and previous[2] == STATUS_INDEXED and previous[3]:
                    self._remove_instance(previous[3])
                if kind == KIND_NON_DICOM:
                    summary.skipped_non_dicom += 1
                    summary.non_dicom_reasons[_reason_class(str(payload))] += 1
                    file_rows.append((path, size, mtime, STATUS_NON_DICOM, None, None, str(payload)))
                    continue
                if kind == KIND_FAILED:
                    summary.failed.append((path, str(payload)))
                    file_rows.append((path, size, mtime, STATUS_FAILED, None, None, str(payload)))
                    continue
                values, has_pixels, media_sop = payload  # type: ignore[misc]
                status, sop = self._add_instance(path, values, has_pixels, media_sop, tag_rows, image_rows)
                if status == STATUS_INDEXED:
                    if previous and previous[2] == STATUS_INDEXED:
                        summary.updated += 1
                    else:
                        summary.added += 1
                    if not has_pixels:
                        summary.no_pixel_data.append(path)
                    elif "0020,0032" not in values and (dicom_int(values.get("0028,0008", "")) or 1) <= 1:
                        summary.missing_position.append(path)
                    file_rows.append((path, size, mtime, STATUS_INDEXED, sop, int(bool(has_pixels)), None))
                else:
                    file_rows.append(
                        (
                            path,
                            size,
                            mtime,
                            STATUS_DUPLICATE,
                            sop,
                            int(bool(has_pixels)),
                            f"same SOPInstanceUID as {self.owner.get(sop, '')}",
                        )
                    )
            conn.executemany(
                "INSERT INTO Images (SOPInstanceUID, Filename, URL, SeriesInstanceUID, InsertTimestamp, "
                "DisplayedFieldsUpdatedTimestamp) VALUES (?, ?, ?, ?, ?, ?)",
                image_rows,
            )
            tag_rows.sort()
            conn.executemany("INSERT INTO tc.TagCache VALUES (?, ?, ?)", tag_rows)
            conn.executemany("INSERT OR REPLACE INTO mi.Files VALUES (?, ?, ?, ?, ?, ?, ?)", file_rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _add_instance(
        self,
        path: str,
        values: Dict[str, str],
        has_pixels: bool,
        media_sop: str,
        tag_rows: List[Tuple[str, str, str]],
        image_rows: List[Tuple[str, str, str, str, str, str]],
    ) -> Tuple[str, str]:
        get = values.get
        folder = os.path.dirname(path)
        derived = False
        sop = get("0008,0018") or media_sop
        if not sop:
            sop = _derived_uid("sop", path)
            derived = True
        study = get("0020,000D", "")
        patient_key = (get("0010,0020", ""), get("0010,0010", ""), get("0010,0030", ""))
        if not study:
            study = _derived_uid(
                "study",
                folder,
                *patient_key,
                get("0008,0020", ""),
                get("0008,0030", ""),
                get("0020,0010", ""),
                get("0008,0050", ""),
            )
            derived = True
        series = get("0020,000E", "")
        if not series:
            series = _derived_uid(
                "series",
                study,
                folder,
                get("0020,0011", ""),
                get("0008,103E", ""),
                get("0008,0060", ""),
                get("0008,0021", ""),
                get("0008,0031", ""),
            )
            derived = True
        owner = self.owner.get(sop)
        if owner is not None and owner != path:
            if os.path.exists(owner):
                self.summary.duplicates.append((sop, owner, path))
                return STATUS_DUPLICATE, sop
            self._remove_instance(sop)  # the old file is gone: this file takes its place (CTK does the same)
        if derived:
            self.summary.derived_uid_files.append(path)
        patient_uid = self._patient(values, study)
        self._study(values, study, patient_uid)
        self._series(values, series, study)
        filename = path
        if self.copy_files:
            filename = self.db.copy_into_storage(path, study, series, sop)
            self.summary.copied += 1
        if sop in self.cached_sops:
            self.conn.execute("DELETE FROM tc.TagCache WHERE SOPInstanceUID = ?", (sop,))
            self.cached_sops.discard(sop)
        # displayed fields are recounted in finish(): stamp them so Slicer does not redo it per instance
        image_rows.append((sop, self.db.internal_path(filename), "", series, self.timestamp, self.displayed_timestamp))
        tag_rows.extend((sop, tag, value) for tag, value in values.items())
        self.owner[sop] = path
        self.touched_series.add(series)
        return STATUS_INDEXED, sop

    def _patient(self, values: Dict[str, str], study: str) -> int:
        get = values.get
        patient_id = get("0010,0020", "") or study  # CTK: study UID stands in for an empty PatientID
        name = get("0010,0010", "") or patient_id  # CTK: PatientID stands in for an empty name
        key = (patient_id, name)
        uid = self.patients.get(key)
        if uid is None:
            cursor = self.conn.execute(
                "INSERT INTO Patients (UID, PatientsName, PatientID, PatientsBirthDate, PatientsBirthTime, "
                "PatientsSex, PatientsAge, PatientsComments, InsertTimestamp, DisplayedPatientsName, Connections) "
                "VALUES (NULL, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                (
                    name,
                    patient_id,
                    dicom_date_to_iso(get("0010,0030", "")),
                    get("0010,0032", ""),
                    get("0010,0040", ""),
                    get("0010,4000", ""),
                    self.timestamp,
                    human_readable_patient_name(get("0010,0010", "")) or name,
                    LOCAL_CONNECTIONS,
                ),
            )
            uid = int(cursor.lastrowid or 0)
            self.patients[key] = uid
        self.touched_patients.add(uid)
        return uid

    def _study(self, values: Dict[str, str], study: str, patient_uid: int) -> None:
        if study in self.studies:
            self.touched_studies.add(study)
            return
        get = values.get
        self.conn.execute(
            "INSERT INTO Studies (StudyInstanceUID, PatientsUID, StudyID, StudyDate, StudyTime, AccessionNumber, "
            "ModalitiesInStudy, InstitutionName, ReferringPhysician, PerformingPhysiciansName, StudyDescription, "
            "InsertTimestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study,
                patient_uid,
                get("0020,0010", ""),
                get("0008,0020", "") or None,
                get("0008,0030", ""),
                get("0008,0050", ""),
                get("0008,0061", ""),
                get("0008,0080", ""),
                get("0008,0090", ""),
                get("0008,1050", ""),
                get("0008,1030", ""),
                self.timestamp,
            ),
        )
        self.studies.add(study)
        self.touched_studies.add(study)

    def _series(self, values: Dict[str, str], series: str, study: str) -> None:
        if series in self.series:
            return
        get = values.get
        self.conn.execute(
            "INSERT INTO Series (SeriesInstanceUID, StudyInstanceUID, SeriesNumber, SeriesDate, SeriesTime, "
            "SeriesDescription, Modality, BodyPartExamined, FrameOfReferenceUID, AcquisitionNumber, ContrastAgent, "
            "ScanningSequence, EchoNumber, TemporalPosition, InsertTimestamp) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                series,
                study,
                dicom_int(get("0020,0011", "")),
                dicom_date_to_iso(get("0008,0021", "")),
                get("0008,0031", ""),
                get("0008,103E", ""),
                get("0008,0060", ""),
                get("0018,0015", ""),
                get("0020,0052", ""),
                dicom_int(get("0020,0012", "")),
                get("0018,0010", ""),
                get("0018,0020", ""),
                dicom_int(get("0018,0086", "")),
                dicom_int(get("0020,0100", "")),
                self.timestamp,
            ),
        )
        self.series.add(series)

    def finish(self) -> None:
        """Drop emptied series/studies/patients, then recount the displayed fields of everything touched."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for series in list(self.touched_series):
                if not conn.execute("SELECT 1 FROM Images WHERE SeriesInstanceUID = ? LIMIT 1", (series,)).fetchone():
                    study = self.db.studyForSeries(series)
                    conn.execute("DELETE FROM Series WHERE SeriesInstanceUID = ?", (series,))
                    self.touched_series.discard(series)
                    self.series.discard(series)
                    if study:
                        self.db._cleanup_study(study)
            studies = {self.db.studyForSeries(s) for s in self.touched_series} | self.touched_studies
            studies = {s for s in studies if s and self.db.patientForStudy(s)}
            patients = {int(self.db.patientForStudy(s)) for s in studies} | self.touched_patients
            patients = {p for p in patients if self.db.fieldForPatient("UID", str(p))}
            self.db.update_displayed_fields(self.touched_series, studies, [str(p) for p in patients])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _reason_class(reason: str) -> str:
    """Group non-DICOM reasons for the summary ("DICOMDIR", "not DICOM", ...)."""
    if reason.startswith("DICOMDIR"):
        return "DICOMDIR"
    if reason.startswith("empty"):
        return "empty file"
    return "not DICOM"


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def import_paths(
    db: DicomDatabase,
    paths: Sequence[str],
    copy_files: bool = False,
    mode: str = "auto",
    workers: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    chunk_size: int = 128,
    commit_every: int = 2048,
    durable: bool = False,
) -> ImportSummary:
    """Index files/folders into ``db``; bad files are reported in the summary, never raised.

    A missing input path is a ``UserInputError`` (nothing is imported then). Files whose path, size
    and mtime match the previous import are not read again. Writes are committed every
    ``commit_every`` files; unless ``durable``, SQLite does not fsync during the import (an OS crash
    or power loss mid-import can damage the index, which a re-import rebuilds; originals are never
    written), which makes the database writes about twice as fast.
    """
    from MedSegLib.errors import UserInputError

    start = time.perf_counter()
    for path in paths:
        if not os.path.exists(path):
            raise UserInputError("input path does not exist", path)
    summary = ImportSummary(database=db.databaseDirectory(), inputs=[os.path.abspath(p) for p in paths])
    states = db.file_states()
    to_parse: List[FileEntry] = []
    seen: set = set()
    for path, size, mtime in walk_files(paths, exclude=db.databaseDirectory()):
        key = path.replace(os.sep, "/")
        if key in seen:
            continue  # overlapping inputs (a folder and its subfolder): each file once
        seen.add(key)
        summary.files_seen += 1
        state = states.get(key)
        if state is not None and state[0] == size and state[1] == mtime:
            status, reason = state[2], state[4]
            if status == STATUS_NON_DICOM:
                summary.skipped_non_dicom += 1
                summary.non_dicom_reasons[_reason_class(reason)] += 1
            elif status == STATUS_FAILED:
                summary.failed.append((key, reason))
            else:
                summary.unchanged += 1
            continue
        to_parse.append((path, size, mtime))
    summary.mode, summary.workers = choose_mode(len(to_parse), mode, workers)
    inserter = _Inserter(db, summary, copy_files, states)
    done = summary.files_seen - len(to_parse)
    if progress:
        progress(done, summary.files_seen)
    conn = db.connection()
    schemas = ("main", "tc", "mi")
    previous_sync = {name: conn.execute(f"PRAGMA {name}.synchronous").fetchone()[0] for name in schemas}
    previous_cache = {name: conn.execute(f"PRAGMA {name}.cache_size").fetchone()[0] for name in schemas}
    for name in schemas:
        conn.execute(f"PRAGMA {name}.cache_size = -65536")  # 64 MB: the TagCache index stays in memory
        if not durable:
            conn.execute(f"PRAGMA {name}.synchronous = OFF")
    db.record_cached_tags([key for key, _vr in CACHED_TAGS.values()])
    try:
        pending: List[ParseResult] = []
        try:
            for results in iter_parsed(to_parse, summary.mode, summary.workers, chunk_size):
                pending.extend(results)
                if len(pending) >= commit_every:
                    inserter.add_chunk(pending)
                    pending = []
                done += len(results)
                if progress:
                    progress(done, summary.files_seen)
            if pending:
                inserter.add_chunk(pending)
        finally:
            inserter.finish()  # also after Ctrl-C: committed chunks get their displayed fields
            db.reset_caches()
    finally:
        for name in schemas:
            conn.execute(f"PRAGMA {name}.synchronous = {int(previous_sync[name])}")
            conn.execute(f"PRAGMA {name}.cache_size = {int(previous_cache[name])}")
    summary.elapsed_s = time.perf_counter() - start
    return summary
