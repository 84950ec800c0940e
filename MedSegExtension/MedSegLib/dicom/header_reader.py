"""DICOM header reading for the database import: a byte walker that keeps ~50 elements of a file.

Why a hand-written walker: ``pydicom.dcmread(stop_before_pixels=True)`` builds a full ``Dataset``
(hundreds of elements, private blocks, sequences) and manages a few hundred files/s per core;
indexing needs about 50 top-level elements. The walker reads element headers, keeps the values of
``HEADER_TAGS``, skips everything else by length, and stops at Pixel Data, which it also checks for
truncation (a check ``stop_before_pixels`` cannot do). Values are converted to the same strings
pydicom gives (multi-values joined with ``\\``), so ``fileValue`` answers are identical whether they
come from the tag cache or from pydicom. Transfer syntaxes the walker does not handle (big endian,
deflated) fall back to pydicom.

Layout templates: files of one series written by one scanner repeat most of their header byte for
byte (private vendor groups, sequences, the study and series elements); only a few elements change
from file to file (SOP Instance UID, position, instance number, times, some private values). The
walker keeps, per thread, the element layout of a recent file and the bytes of its runs of stable
elements ("segments"). When the next file holds exactly a segment's bytes at an element boundary,
the walker jumps over it and takes the segment's already converted values: parsing is a function of
the bytes, so equal bytes at an element boundary give the same elements and values. Everything else
is walked element by element as before; which elements change is learnt from the files themselves.
The result never depends on the template (``Testing/Python/test_dicom_database.py`` compares both ways
on the shared data), only the speed does.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import operator
import os
import struct
import threading
from typing import Dict, List, Optional, Tuple

# --------------------------------------------------------------------------------------
# Tags read from each header, and the subset written into the tag cache
# --------------------------------------------------------------------------------------

#: keyword -> (tag key "GGGG,EEEE", VR used when the file is implicit VR): everything the importer reads from a
#: header: the Patients/Studies/Series/Images columns CTK fills, the import summary checks, the character set
#: and the tags cached below.
HEADER_TAGS: Dict[str, Tuple[str, str]] = {
    "TransferSyntaxUID": ("0002,0010", "UI"),
    "SpecificCharacterSet": ("0008,0005", "CS"),
    "ImageType": ("0008,0008", "CS"),
    "SOPClassUID": ("0008,0016", "UI"),
    "SOPInstanceUID": ("0008,0018", "UI"),
    "StudyDate": ("0008,0020", "DA"),
    "SeriesDate": ("0008,0021", "DA"),
    "StudyTime": ("0008,0030", "TM"),
    "SeriesTime": ("0008,0031", "TM"),
    "ContentTime": ("0008,0033", "TM"),
    "AccessionNumber": ("0008,0050", "SH"),
    "Modality": ("0008,0060", "CS"),
    "ModalitiesInStudy": ("0008,0061", "CS"),
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
    "PatientComments": ("0010,4000", "LT"),
    "ContrastBolusAgent": ("0018,0010", "LO"),
    "BodyPartExamined": ("0018,0015", "CS"),
    "ScanningSequence": ("0018,0020", "CS"),
    "EchoNumbers": ("0018,0086", "IS"),
    "TriggerTime": ("0018,1060", "DS"),
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
    "NumberOfFrames": ("0028,0008", "IS"),
    "Rows": ("0028,0010", "US"),
    "Columns": ("0028,0011", "US"),
    "PixelSpacing": ("0028,0030", "DS"),
    "WindowCenter": ("0028,1050", "DS"),
    "WindowWidth": ("0028,1051", "DS"),
}

#: The tags written into the tag cache (one TagCache row per present tag and instance, the main cost of an
#: import, so the list is short): what 3D Slicer's DICOMScalarVolumePlugin declares in its ``tags`` (its
#: examine step reads them for every file through ``fileValue``), the other sub-series split tags of that
#: step (ImageType, AcquisitionNumber), InstanceNumber (``DICOM.instanceNumbers``), StudyInstanceUID, Modality
#: and PixelSpacing, and what ``medseg dicom list`` and the displayed fields read. Any other tag is still
#: answered by ``fileValue`` from the file header (and then cached), in MedSeg as in CTK.
CACHED_TAGS: Dict[str, Tuple[str, str]] = {
    keyword: HEADER_TAGS[keyword]
    for keyword in (
        "ImageType",
        "SOPClassUID",
        "SOPInstanceUID",
        "ContentTime",
        "Modality",
        "SeriesDescription",
        "TriggerTime",
        "DiffusionGradientOrientation",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "AcquisitionNumber",
        "InstanceNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "PixelSpacing",
        "WindowCenter",
        "WindowWidth",
    )
}

#: Tag keys of ``CACHED_TAGS`` in tag order (the order rows are written in).
CACHED_KEYS: Tuple[str, ...] = tuple(sorted(key for key, _vr in CACHED_TAGS.values()))

#: tag key -> keyword (for reports)
TAG_KEYWORDS: Dict[str, str] = {key: kw for kw, (key, _vr) in HEADER_TAGS.items()}

_TAG_INT: Dict[int, Tuple[str, str]] = {
    int(key[:4], 16) << 16 | int(key[5:], 16): (key, vr) for key, vr in HEADER_TAGS.values()
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
    #: the tag-cache rows as one JSON object (see ``cache_json``); None: write them row by row
    cache_json: Optional[str] = None


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)


def _read_at(fd: int, n: int, pos: int) -> bytes:
    """Up to ``n`` bytes of the file at ``pos`` (fewer only at the end of the file)."""
    if _pread is not None:
        data = _pread(fd, n, pos)
    else:
        os.lseek(fd, pos, os.SEEK_SET)
        data = os.read(fd, n)
    while 0 < len(data) < n:  # a short read before the end of the file (rare; never seen on local disks)
        more = _read_at(fd, n - len(data), pos + len(data))
        if not more:
            break
        data += more
    return data


_pread = getattr(os, "pread", None)  # POSIX; Windows seeks and reads


class _Reader:
    """Buffered random access that reads element headers and wanted values, never skipped bytes."""

    __slots__ = ("fd", "buf", "start", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
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
        self.buf = _read_at(self.fd, min(max(n, _CHUNK), self.size - pos), pos)
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


def read_header(path: str, file_size: Optional[int] = None, use_layout: bool = True) -> HeaderRecord:
    """Read the header tags of one file without reading pixel values.

    Raises ``NotDicomError`` for non-DICOM files and DICOMDIRs, ``DicomReadError`` (one-line reason) for
    truncated or corrupt DICOM files. ``use_layout=False`` walks every element (no layout template);
    the result is the same either way.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise DicomReadError(f"cannot open: {error.strerror or error}") from None
    try:
        if file_size is None:
            file_size = os.fstat(fd).st_size
        head = _read_at(fd, min(_CHUNK, file_size), 0)
        reader = _Reader(fd, file_size)
        reader.buf = head
        return _walk(reader, head, path, _LAYOUTS if use_layout else None)
    finally:
        os.close(fd)


def _walk(reader: _Reader, head: bytes, path: str, layouts: Optional[threading.local]) -> HeaderRecord:
    size = reader.size
    if size == 0:
        raise NotDicomError("empty file")
    transfer_syntax = ""
    media_sop_class = ""
    media_sop_instance = ""
    has_meta = len(head) >= 132 and head[128:132] == b"DICM"
    if has_meta:
        pos = 132
        meta_implicit = not _is_vr(head[136:138]) if len(head) >= 138 else False
        head_len = len(head)
        while pos + 8 <= size:
            if pos + 12 <= head_len and not meta_implicit:  # the usual case: one unpack per element
                group, elem, vr, length, long_length = _S_EXPLICIT(head, pos)
                if group != 0x0002:
                    break
                header = 8
                if vr in _LONG_VRS:
                    length = long_length
                    header = 12
            else:
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
                if pos + header + length <= head_len:
                    vbuf, voff = head, pos + header
                else:
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
    layout: Optional[_Layout] = None
    record: Optional[List[Tuple[int, int]]] = None
    if layouts is not None:
        layout = getattr(layouts, "layout", None)
        if layout is None or layout.implicit != implicit or getattr(layouts, "record_next", False):
            layout = None
            record = []
    walk = _walk_dataset(reader, pos, implicit, layout, record)
    if layout is not None and walk.used_text and walk.charset_raw != layout.charset_raw:
        walk = _walk_dataset(reader, pos, implicit, None, None)  # other character set: converted values differ
        layouts.record_next = True  # type: ignore[union-attr]
        layout = None
    charset = ""
    if walk.charset_raw is not None:
        charset = walk.charset_raw.decode("latin-1").strip(" \x00")
        # pydicom uses the first value for single-byte text; multi-valued (ISO 2022) go through pydicom
    values: Dict[str, str] = {}
    if transfer_syntax and has_meta:
        values["0002,0010"] = transfer_syntax  # as in the file meta; a bare data set has none
    texts: Dict[int, Tuple[str, str]] = {}  # tag -> (text, the VR it was converted with), for a new layout
    wanted = _TAG_INT
    fragments: List[str] = []  # the tag-cache JSON members, in file order
    cached = 0
    empty = False
    for tag, raw, vr in walk.items:
        if tag < 0:
            piece: _Piece = raw  # type: ignore[assignment]
            values.update(piece[1])  # a segment's converted {key: text}
            if piece[8]:
                fragments.append(piece[7])
                cached += piece[8]
            empty = empty or piece[9]
            continue
        text = _convert(raw, vr, charset) if raw else ""  # type: ignore[arg-type]
        texts[tag] = (text, vr)
        key = wanted[tag][0]
        values[key] = text
        if not text:
            empty = True
        elif tag in _CACHED_TAG_INTS:
            fragments.append(_JSON_KEYS[key] + _json_string(text))
            cached += 1
    if layouts is not None:
        if record is not None:
            layouts.layout = _Layout.from_record(reader, record, walk.record_end, implicit, walk.charset_raw, texts)
            if layouts.layout is not None:
                layouts.layout.pixel_from_end = walk.pixel_from_end
            layouts.record_next = False
        elif layout is not None:
            layout.update(walk, layouts)
    if empty:
        values = {key: text for key, text in values.items() if text}
    if cached == sum(1 for key in CACHED_KEYS if key in values):  # no tag twice: the members are the rows
        json_text: Optional[str] = "{" + ",".join(fragments) + "}"
        if "\\u0000" in json_text or "\\ud" in json_text:  # type: ignore[operator]
            json_text = None
    else:
        json_text = cache_json(values)
    return HeaderRecord(values, walk.has_pixel_data, media_sop_instance, json_text)


def cache_json(values: Dict[str, str]) -> Optional[str]:
    """The instance's tag-cache rows as one JSON object {tag: value}, expanded into rows by SQLite's json_each.

    ``None`` when a value holds a NUL or a surrogate-range escape, which JSON text in SQLite does not carry
    through unchanged: such an instance is written row by row.
    """
    text = "{" + ",".join([_JSON_KEYS[key] + _json_string(values[key]) for key in CACHED_KEYS if key in values]) + "}"
    if "\\u0000" in text or "\\ud" in text:
        return None
    return text


_CACHED_TAG_INTS = frozenset(int(key[:4], 16) << 16 | int(key[5:], 16) for key in CACHED_KEYS)
_JSON_KEYS = {key: f'"{key}":' for key in CACHED_KEYS}
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: escapes and quotes


#: Elements that change between the files of a series in nearly every scanner's output; never in a segment.
_SEED_VOLATILE = frozenset({0x00080018, 0x00080032, 0x00080033, 0x00200013, 0x00200032, 0x00201041})
#: Per-thread layout template (process pool workers each have their own).
_LAYOUTS = threading.local()


class _Layout:
    """Element layout of a recently read file: its bytes, element boundaries, and runs of stable elements.

    Elements are numbered in file order; element ``i`` is ``view[starts[i]:starts[i + 1]]``. A run is a
    maximal sequence of elements not known to change between files (not ``volatile``); ``segments`` maps
    the tag of each run's first element to its piece (see ``piece``), ``run_end[i]`` is the last element
    of element ``i``'s run (-1 for volatile elements).
    """

    __slots__ = (
        "implicit",
        "charset_raw",
        "view",
        "tags",
        "starts",
        "index",
        "texts",
        "text_indexes",
        "charset_index",
        "volatile",
        "run_end",
        "segments",
        "fresh",
        "pixel_from_end",
    )

    def __init__(
        self,
        implicit: bool,
        charset_raw: Optional[bytes],
        data: bytes,
        tags: List[int],
        starts: List[int],
        texts: Dict[int, Tuple[str, str]],
    ) -> None:
        self.implicit = implicit
        self.charset_raw = charset_raw
        self.view = memoryview(data)
        self.tags = tags
        self.starts = starts  # len(tags) + 1 offsets into data
        self.index = {tag: i for i, tag in enumerate(tags)}
        wanted = _TAG_INT
        # header tags: element index -> (key, text, whether the text depends on the character set)
        self.texts: Dict[int, Tuple[str, str, bool]] = {
            i: (wanted[tag][0], texts[tag][0], texts[tag][1] in _CHARSET_VRS)
            for i, tag in enumerate(tags)
            if tag in texts  # every header tag of a recorded file
        }
        self.text_indexes = sorted(self.texts)
        self.charset_index = self.index.get(0x00080005, -1)
        self.volatile = set(_SEED_VOLATILE)
        self.fresh = True  # the next file teaches which elements change
        self.pixel_from_end = 0  # Pixel Data position from the end of the file (same image size: same place)
        self.run_end: List[int] = []
        self.segments: Dict[int, _Piece] = {}
        self.build_segments()

    @classmethod
    def from_record(
        cls,
        reader: _Reader,
        record: List[Tuple[int, int]],
        end: int,
        implicit: bool,
        charset_raw: Optional[bytes],
        texts: Dict[int, Tuple[str, str]],
    ) -> Optional[_Layout]:
        """Layout of the file just walked (``record``: tag and start of each top-level element, ``end``: after
        the last one)."""
        tags = [tag for tag, _start in record]
        if len(tags) < 2 or not all(map(operator.lt, tags, tags[1:])):
            return None  # repeated or unsorted tags: no template (still read correctly, element by element)
        first = record[0][1]
        data = _read_at(reader.fd, end - first, first)
        if len(data) != end - first:
            return None
        starts = [start - first for _tag, start in record]
        starts.append(end - first)
        return cls(implicit, charset_raw, data, tags, starts, texts)

    def piece(self, i: int, j: int) -> _Piece:
        """Elements i..j: (their bytes, {key: text} of the header tags among them, element count, last tag,
        whether a text depends on the character set, whether (0008,0005) is among them, index of the first,
        their tag-cache JSON members, how many, whether a header tag among them is empty)."""
        pairs = {}
        text = empty = False
        members = []
        texts = self.texts
        indexes = self.text_indexes
        for k in indexes[bisect.bisect_left(indexes, i) : bisect.bisect_right(indexes, j)]:
            key, value, charset_dependent = texts[k]
            pairs[key] = value
            text = text or charset_dependent
            if not value:
                empty = True
            elif key in _JSON_KEYS:
                members.append(_JSON_KEYS[key] + _json_string(value))
        data = self.view[self.starts[i] : self.starts[j + 1]]
        charset = i <= self.charset_index <= j
        return data, pairs, j - i + 1, self.tags[j], text, charset, i, ",".join(members), len(members), empty

    def build_segments(self) -> None:
        tags = self.tags
        volatile = self.volatile
        n = len(tags)
        run_end = [-1] * n
        segments = {}
        i = 0
        while i < n:
            if tags[i] in volatile:
                i += 1
                continue
            j = i
            while j + 1 < n and tags[j + 1] not in volatile:
                j += 1
            run_end[i : j + 1] = [j] * (j + 1 - i)
            segments[tags[i]] = self.piece(i, j)
            i = j + 1
        self.run_end = run_end
        self.segments = segments

    def matching(self, buf: bytes, off: int, i: int, j: int) -> int:
        """How many elements from ``i`` (at most to ``j``, which is known not to match as a whole) equal the
        bytes at ``buf[off:]``: a binary search with C comparisons instead of walking element by element."""
        view = self.view
        starts = self.starts
        start = starts[i]
        low, high = 0, j - i + 1
        while high - low > 1:
            middle = (low + high) // 2
            if buf.startswith(view[start : starts[i + middle]], off):
                low = middle
            else:
                high = middle
        return low

    def update(self, walk: _DatasetWalk, layouts: threading.local) -> None:
        """Learn from a file read with this layout, or ask for a new layout when it no longer fits."""
        if self.fresh or walk.skipped >= walk.walked:
            self.fresh = False
            if walk.learned:
                self.volatile |= walk.learned
                self.build_segments()
        else:
            layouts.record_next = True  # another series or scanner: take the next file as the template


#: see ``_Layout.piece``
_Piece = Tuple[memoryview, Dict[str, str], int, int, bool, bool, int, str, int, bool]


@dataclasses.dataclass
class _DatasetWalk:
    #: (tag, raw value, VR) of header tags read one by one, and (-1, piece, "") for segments
    items: List[Tuple[int, object, str]]
    has_pixel_data: bool
    charset_raw: Optional[bytes]
    used_text: bool  # a segment with text values was taken from the layout
    walked: int  # elements read one by one
    skipped: int  # elements jumped over inside segments
    learned: set  # elements seen to differ from the layout (or to move around)
    pixel_from_end: int  # where a complete (7FE0,0010) element starts, counted from the end of the file; 0: unknown
    record_end: int  # end of the last recorded element


def _walk_dataset(
    reader: _Reader,
    pos: int,
    implicit: bool,
    layout: Optional[_Layout],
    record: Optional[List[Tuple[int, int]]],
) -> _DatasetWalk:
    """Walk the top-level elements from ``pos`` to Pixel Data, jumping over segments of ``layout`` that match."""
    size = reader.size
    items: List[Tuple[int, object, str]] = []
    has_pixel_data = False
    charset_raw: Optional[bytes] = None
    used_text = False
    walked = skipped = 0
    learned: set = set()
    pixel_from_end = 0
    record_end = 0
    recording = record is not None
    group = elem = length = header = 0
    truncated = False
    wanted = _TAG_INT
    limit = _MAX_DATASET_TAG
    shortcut_tried = False
    vr_header = _VR_HEADER
    unpack_explicit = _S_EXPLICIT
    unpack_implicit = _S_IMPLICIT
    segments = index = run_end = None
    if layout is not None:
        segments, index, run_end = layout.segments, layout.index, layout.run_end
    previous_tag = -1
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
        if recording and tag > _MAX_DATASET_TAG:
            recording = False  # the layout covers a contiguous run of elements up to the last header tag
        if layout is not None and tag <= _MAX_DATASET_TAG:
            piece = segments.get(tag)  # type: ignore[union-attr]
            first = -1
            if piece is None:
                first = index.get(tag, -1)  # type: ignore[union-attr]
                if first >= 0 and run_end[first] >= 0:  # type: ignore[index]
                    # inside a run, after an element that differed: try the rest of the run
                    piece = layout.piece(first, run_end[first])  # type: ignore[index]
            if piece is not None:
                data = piece[0]
                n = len(data)
                if off + n > blen and pos + n <= size:
                    buf, off = reader.at(pos, n + 12)
                    bstart = reader.start
                    blen = len(buf)
                if not buf.startswith(data, off):
                    first = piece[6]
                    count = layout.matching(buf, off, first, first + piece[2] - 1)
                    piece = layout.piece(first, first + count - 1) if count else None
                if piece is not None:
                    pos += len(piece[0])
                    items.append((-1, piece, ""))
                    skipped += piece[2]
                    previous_tag = piece[3]
                    if piece[4]:
                        used_text = True
                    if piece[5]:
                        charset_raw = layout.charset_raw
                    continue
            walked += 1
            if tag not in layout.volatile:
                # learn which elements change: compare with the layout's element of the same tag
                i = index.get(tag, -1)  # type: ignore[union-attr]
                if i < 0:
                    learned.add(tag)  # not in the layout: it and the element before it split runs
                    learned.add(previous_tag)
                elif (layout.tags[i - 1] if i else -1) != previous_tag:
                    learned.add(layout.tags[i - 1] if i else -1)  # an element missing or moved
                    learned.add(previous_tag)
                elif (
                    length == UNDEFINED_LENGTH
                    or layout.starts[i + 1] - layout.starts[i] != header + length
                    or not buf.startswith(layout.view[layout.starts[i] : layout.starts[i + 1]], off)
                ):
                    learned.add(tag)
            previous_tag = tag
        if tag > limit:
            if group == 0xFFFE:
                raise DicomReadError(f"corrupt data set: item tag (FFFE,{elem:04X}) at top level, byte {pos}")
            if tag in _PIXEL_TAGS:
                has_pixel_data = True
                _check_pixel_element(reader, pos, header, length, elem)
                if tag == 0x7FE00010 and pos + header + length == size:
                    pixel_from_end = size - pos
                break
            if tag > 0x7FE00010:
                break  # past Pixel Data (padding, signatures): nothing left to find
            if not shortcut_tried:
                shortcut_tried = True
                if layout is not None and layout.pixel_from_end and _pixel_data_at(
                    reader, size - layout.pixel_from_end, implicit
                ):
                    has_pixel_data = True  # where the layout's file had it: no search
                    break
                found = _find_pixel_data(reader, pos, implicit)
                if found is not None:
                    has_pixel_data = True
                    if _pixel_data_at(reader, found, implicit):
                        pixel_from_end = size - found
                    break
                limit = 0x7FE00007
                buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
                continue
        if length == UNDEFINED_LENGTH:
            start = pos
            pos = _skip_undefined(reader, pos + header, implicit or vr_bytes == b"UN")
            buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
            if recording:
                record.append((tag, start))  # type: ignore[union-attr]
                record_end = pos
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
                raw = buf[vstart : vstart + length]
            else:
                vbuf, voff = reader.at(pos + header, length)
                raw = vbuf[voff : voff + length]
                buf, bstart, blen = reader.buf, reader.start, len(reader.buf)
            items.append((tag, raw, vr))
            if tag == 0x00080005:
                charset_raw = raw
        if recording:
            record.append((tag, pos))  # type: ignore[union-attr]
            record_end = pos + header + length
        pos += header + length
    if truncated or pos > size:  # an element's declared length runs past the end of the file
        raise DicomReadError(
            f"truncated: element ({group:04X},{elem:04X}) declares {length} bytes, the file ends at byte {size}"
        )
    learned.discard(-1)
    return _DatasetWalk(
        items, has_pixel_data, charset_raw, used_text, walked, skipped, learned, pixel_from_end, record_end
    )


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


def _pixel_data_at(reader: _Reader, cand: int, implicit: bool) -> bool:
    """Whether a (7FE0,0010) header at ``cand`` holds exactly the rest of the file (no search)."""
    size = reader.size
    header = 8 if implicit else 12
    if cand < 0 or cand + header > size:
        return False
    buf, off = reader.at(cand, header)
    if not buf.startswith(_PIXEL_TAG_BYTES, off):
        return False
    if implicit:
        length = _unpack_from("<I", buf, off + 4)[0]
    else:
        if buf[off + 4 : off + 8] not in (b"OB\x00\x00", b"OW\x00\x00"):
            return False
        length = _unpack_from("<I", buf, off + 8)[0]
    return length == size - cand - header


def _find_pixel_data(reader: _Reader, pos: int, implicit: bool) -> Optional[int]:
    """Shortcut past the last header tag: locate the (7FE0,0010) header by its bytes and check it.

    Walking the private groups (Siemens CSA, GE 0043) element by element costs more than the rest of the
    header. A candidate counts only if its VR/length are consistent with being the last element; returns
    its position, or ``None`` for anything doubtful: the caller then walks element by element (exact, slower).
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
            return cand
        if length == remaining:
            return cand
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
    return HeaderRecord(values, has_pixels, media_sop_instance, cache_json(values))


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

