"""A DICOM database folder that 3D Slicer can open, written and read without CTK or Qt.

Layout (same as ``ctkDICOMDatabase``, schema 0.8.1):

- ``ctkDICOM.sql``: tables SchemaInfo, Patients, Studies, Series, Images, Directories,
  ColumnDisplayProperties, DisplayedFieldGeneratorRules, created from the same DDL as CTK's
  ``Libs/DICOM/Core/Resources/dicom-schema.sql`` so Slicer opens the folder without a schema update.
- ``ctkDICOMTagCache.sql``: ``TagCache(SOPInstanceUID, Tag, Value)`` with tag keys "GGGG,EEEE".
- ``MedSegFileIndex.sql``: MedSeg's own table (path, size, mtime, status) used to skip unchanged
  files on re-import. It is a separate file so CTK's schema stays exactly CTK's.
- ``dicom/``: copies, only when importing with ``copy_files=True`` (CTK's short storage path layout).

The query methods keep CTK's names and return types (lists of ``str``, ``""`` when missing) so the
loading logic runs unchanged against ``slicer.dicomDatabase`` or this class.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from MedSegLib.errors import UserInputError

SCHEMA_VERSION = "0.8.1"
DATABASE_FILENAME = "ctkDICOM.sql"
TAG_CACHE_FILENAME = "ctkDICOMTagCache.sql"
FILE_INDEX_FILENAME = "MedSegFileIndex.sql"
STORAGE_FOLDER = "dicom"

# CTK's tag-cache markers (written by Slicer; read here as "no value").
TAG_NOT_IN_INSTANCE = "__TAG_NOT_IN_INSTANCE__"
VALUE_IS_EMPTY_STRING = "__VALUE_IS_EMPTY_STRING__"
VALUE_IS_NOT_STORED = "__VALUE_IS_NOT_STORED__"
_MARKERS = frozenset({TAG_NOT_IN_INSTANCE, VALUE_IS_EMPTY_STRING, VALUE_IS_NOT_STORED})

# Statements of CTK's dicom-schema.sql (schema 0.8.1, commontk/CTK main, 2026-08), in CTK's order.
# Note: CTK's second "CREATE INDEX IF NOT EXISTS 'ImagesFilenameIndex' ON 'Images' ('URL')" reuses the
# name of the Filename index, so it is a no-op in CTK too; it is kept for an identical result.
CTK_SCHEMA_SQL = """
CREATE TABLE 'SchemaInfo' ( 'Version' VARCHAR(1024) NOT NULL );
INSERT INTO 'SchemaInfo' VALUES('0.8.1');

CREATE TABLE 'Images' (
  'SOPInstanceUID' VARCHAR(64) NOT NULL,
  'Filename' VARCHAR(1024) NULL,
  'URL' VARCHAR(2048) NULL,
  'SeriesInstanceUID' VARCHAR(64) NOT NULL ,
  'InsertTimestamp' VARCHAR(20) NOT NULL ,
  'DisplayedFieldsUpdatedTimestamp' DATETIME NULL ,
  PRIMARY KEY ('SOPInstanceUID')
);

CREATE TABLE 'Patients' (
  'UID' INTEGER PRIMARY KEY AUTOINCREMENT,
  'PatientsName' VARCHAR(255) NULL ,
  'PatientID' VARCHAR(255) NULL ,
  'PatientsBirthDate' DATE NULL ,
  'PatientsBirthTime' TIME NULL ,
  'PatientsSex' VARCHAR(1) NULL ,
  'PatientsAge' VARCHAR(10) NULL ,
  'PatientsComments' VARCHAR(255) NULL ,
  'InsertTimestamp' VARCHAR(20) NOT NULL ,
  'DisplayedPatientsName' VARCHAR(255) NULL ,
  'DisplayedNumberOfStudies' INT NULL ,
  'DisplayedLastStudyDate' DATE NULL ,
  'DisplayedFieldsUpdatedTimestamp' DATETIME NULL ,
  'Connections' VARCHAR(2048) NULL
);

CREATE TABLE 'Studies' (
  'StudyInstanceUID' VARCHAR(64) NOT NULL ,
  'PatientsUID' INT NOT NULL ,
  'StudyID' VARCHAR(255) NULL ,
  'StudyDate' DATE NULL ,
  'StudyTime' VARCHAR(20) NULL ,
  'StudyDescription' VARCHAR(255) NULL ,
  'AccessionNumber' VARCHAR(255) NULL ,
  'ModalitiesInStudy' VARCHAR(255) NULL ,
  'InstitutionName' VARCHAR(255) NULL ,
  'ReferringPhysician' VARCHAR(255) NULL ,
  'PerformingPhysiciansName' VARCHAR(255) NULL ,
  'InsertTimestamp' VARCHAR(20) NOT NULL ,
  'DisplayedNumberOfSeries' INT NULL ,
  'DisplayedFieldsUpdatedTimestamp' DATETIME NULL ,
  PRIMARY KEY ('StudyInstanceUID')
);

CREATE TABLE 'Series' (
  'SeriesInstanceUID' VARCHAR(64) NOT NULL ,
  'StudyInstanceUID' VARCHAR(64) NOT NULL ,
  'SeriesNumber' INT NULL ,
  'SeriesDate' DATE NULL ,
  'SeriesTime' VARCHAR(20) NULL ,
  'SeriesDescription' VARCHAR(255) NULL ,
  'Modality' VARCHAR(20) NULL ,
  'BodyPartExamined' VARCHAR(255) NULL ,
  'FrameOfReferenceUID' VARCHAR(64) NULL ,
  'AcquisitionNumber' INT NULL ,
  'ContrastAgent' VARCHAR(255) NULL ,
  'ScanningSequence' VARCHAR(45) NULL ,
  'EchoNumber' INT NULL ,
  'TemporalPosition' INT NULL ,
  'InsertTimestamp' VARCHAR(20) NOT NULL ,
  'DisplayedCount' INT NULL ,
  'DisplayedSize' VARCHAR(20) NULL ,
  'DisplayedNumberOfFrames' INT NULL ,
  'DisplayedFieldsUpdatedTimestamp' DATETIME NULL ,
  PRIMARY KEY ('SeriesInstanceUID')
);

CREATE INDEX IF NOT EXISTS 'ImagesFilenameIndex' ON 'Images' ('Filename');
CREATE INDEX IF NOT EXISTS 'ImagesFilenameIndex' ON 'Images' ('URL');
CREATE INDEX IF NOT EXISTS 'ImagesSeriesIndex' ON 'Images' ('SeriesInstanceUID');
CREATE INDEX IF NOT EXISTS 'SeriesStudyIndex' ON 'Series' ('StudyInstanceUID');
CREATE INDEX IF NOT EXISTS 'StudiesPatientIndex' ON 'Studies' ('PatientsUID');

CREATE TABLE 'Directories' (
  'Dirname' VARCHAR(1024) ,
  PRIMARY KEY ('Dirname')
);

CREATE TABLE 'ColumnDisplayProperties' (
  'TableName' VARCHAR(64) NOT NULL,
  'FieldName' VARCHAR(64) NOT NULL ,
  'DisplayedName' VARCHAR(255) NULL ,
  'Visibility' INT NULL DEFAULT 1 ,
  'Weight' INT NULL ,
  'Format' VARCHAR(255) NULL ,
  PRIMARY KEY ('TableName', 'FieldName')
);

CREATE TABLE 'DisplayedFieldGeneratorRules' (
  'Name' VARCHAR(64) NOT NULL,
  'Enabled' INT NULL DEFAULT 1 ,
  'Options' VARCHAR(255) NULL ,
  PRIMARY KEY ('Name')
);
"""

# Rows CTK's schema script pre-populates (browser column labels, visibility, order, format).
COLUMN_DISPLAY_PROPERTIES: Tuple[Tuple[str, str, str, int, int, str], ...] = (
    ("Patients", "UID", "", 0, 0, ""),
    ("Patients", "PatientsName", "Patient name", 0, 0, ""),
    ("Patients", "PatientID", "Patient ID", 1, 2, ""),
    ("Patients", "PatientsBirthDate", "Birth date", 1, 3, '{"resizeMode":"resizeToContents"}'),
    ("Patients", "PatientsBirthTime", "Birth time", 0, 0, ""),
    ("Patients", "PatientsSex", "Sex", 1, 4, '{"resizeMode":"resizeToContents"}'),
    ("Patients", "PatientsAge", "Age", 0, 0, ""),
    ("Patients", "PatientsComments", "Comments", 0, 0, ""),
    ("Patients", "InsertTimestamp", "Date added", 1, 7, '{"sort": "descending"}'),
    ("Patients", "DisplayedPatientsName", "Patient name", 1, 1, '{"resizeMode":"stretch"}'),
    ("Patients", "DisplayedNumberOfStudies", "Studies", 1, 5, '{"resizeMode":"resizeToContents"}'),
    ("Patients", "DisplayedLastStudyDate", "Last study date", 1, 6, ""),
    ("Patients", "DisplayedFieldsUpdatedTimestamp", "", 0, 0, ""),
    ("Patients", "Connections", "", 0, 0, ""),
    ("Studies", "StudyInstanceUID", "", 0, 0, ""),
    ("Studies", "PatientsUID", "", 0, 0, ""),
    ("Studies", "StudyID", "Study ID", 1, 2, ""),
    ("Studies", "StudyDate", "Study date", 1, 1, '{"resizeMode":"resizeToContents", "sort": "ascending"}'),
    ("Studies", "StudyTime", "Study time", 0, 0, ""),
    ("Studies", "StudyDescription", "Study description", 1, 3, '{"resizeMode":"stretch"}'),
    ("Studies", "AccessionNumber", "Accession #", 0, 0, ""),
    ("Studies", "ModalitiesInStudy", "Modalities", 0, 0, ""),
    ("Studies", "InstitutionName", "Institution", 0, 0, ""),
    ("Studies", "ReferringPhysician", "Referring physician", 0, 0, ""),
    ("Studies", "PerformingPhysiciansName", "Performing physician", 0, 0, ""),
    ("Studies", "InsertTimestamp", "Date added", 1, 5, ""),
    ("Studies", "DisplayedNumberOfSeries", "Series", 1, 4, '{"resizeMode":"resizeToContents"}'),
    ("Studies", "DisplayedFieldsUpdatedTimestamp", "", 0, 0, ""),
    ("Series", "SeriesInstanceUID", "", 0, 0, ""),
    ("Series", "StudyInstanceUID", "", 0, 0, ""),
    ("Series", "SeriesNumber", "Series #", 1, 1, '{"resizeMode":"resizeToContents", "sort": "ascending"}'),
    ("Series", "SeriesDate", "Series date", 0, 0, ""),
    ("Series", "SeriesTime", "Series time", 0, 0, ""),
    ("Series", "SeriesDescription", "Series description", 1, 2, '{"resizeMode":"stretch"}'),
    ("Series", "Modality", "Modality", 1, 3, '{"resizeMode":"resizeToContents"}'),
    ("Series", "BodyPartExamined", "Body part", 0, 0, ""),
    ("Series", "FrameOfReferenceUID", "", 0, 0, ""),
    ("Series", "AcquisitionNumber", "Acquisition #", 0, 0, ""),
    ("Series", "ContrastAgent", "Contrast agent", 0, 0, ""),
    ("Series", "ScanningSequence", "Scanning sequence", 0, 0, ""),
    ("Series", "EchoNumber", "Echo #", 0, 0, ""),
    ("Series", "TemporalPosition", "Temporal position", 0, 0, ""),
    ("Series", "InsertTimestamp", "Date added", 1, 6, ""),
    ("Series", "DisplayedSize", "Size", 1, 4, '{"resizeMode":"resizeToContents"}'),
    ("Series", "DisplayedCount", "Count", 1, 5, '{"resizeMode":"resizeToContents"}'),
    ("Series", "DisplayedNumberOfFrames", "Number of frames", 0, 0, ""),
    ("Series", "DisplayedFieldsUpdatedTimestamp", "", 0, 0, ""),
)

TAG_CACHE_SQL = "CREATE TABLE TagCache (SOPInstanceUID, Tag, Value, PRIMARY KEY (SOPInstanceUID, Tag))"

FILE_INDEX_SQL = """
CREATE TABLE IF NOT EXISTS Files (
  Path TEXT PRIMARY KEY,
  Size INTEGER NOT NULL,
  MTimeNs INTEGER NOT NULL,
  Status TEXT NOT NULL,
  SOPInstanceUID TEXT,
  HasPixelData INTEGER,
  Reason TEXT
);
CREATE INDEX IF NOT EXISTS FilesSOPIndex ON Files (SOPInstanceUID);
CREATE TABLE IF NOT EXISTS Info (Key TEXT PRIMARY KEY, Value TEXT);
"""

#: File-index statuses.
STATUS_INDEXED = "indexed"
STATUS_DUPLICATE = "duplicate"
STATUS_NON_DICOM = "non-dicom"
STATUS_FAILED = "failed"

_TABLE_COLUMNS = {
    "Patients": (
        "UID",
        "PatientsName",
        "PatientID",
        "PatientsBirthDate",
        "PatientsBirthTime",
        "PatientsSex",
        "PatientsAge",
        "PatientsComments",
        "InsertTimestamp",
        "DisplayedPatientsName",
        "DisplayedNumberOfStudies",
        "DisplayedLastStudyDate",
        "DisplayedFieldsUpdatedTimestamp",
        "Connections",
    ),
    "Studies": (
        "StudyInstanceUID",
        "PatientsUID",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "InstitutionName",
        "ReferringPhysician",
        "PerformingPhysiciansName",
        "InsertTimestamp",
        "DisplayedNumberOfSeries",
        "DisplayedFieldsUpdatedTimestamp",
    ),
    "Series": (
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "SeriesNumber",
        "SeriesDate",
        "SeriesTime",
        "SeriesDescription",
        "Modality",
        "BodyPartExamined",
        "FrameOfReferenceUID",
        "AcquisitionNumber",
        "ContrastAgent",
        "ScanningSequence",
        "EchoNumber",
        "TemporalPosition",
        "InsertTimestamp",
        "DisplayedCount",
        "DisplayedSize",
        "DisplayedNumberOfFrames",
        "DisplayedFieldsUpdatedTimestamp",
    ),
}

PathLike = Union[str, "os.PathLike[str]"]


def now_timestamp() -> str:
    """Local time in Qt's ISO form with milliseconds, as CTK writes InsertTimestamp.

    CTK's ``fileExistsAndUpToDate`` compares it with the file's modification time, so it must be
    local time without a zone, like ``QDateTime::currentDateTime()``.
    """
    return datetime.now().isoformat(timespec="milliseconds")


def dicom_date_to_iso(value: str) -> Optional[str]:
    """ "20200218" -> "2020-02-18" (what Qt stores for a QDate bound value); invalid/empty -> None."""
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        try:
            return datetime.strptime(value, "%Y%m%d").strftime("%Y-%m-%d")
        except ValueError:
            return None
    return None


def dicom_int(value: str) -> Optional[int]:
    """First value of an IS as int (CTK's GetElementAsInteger), None when absent or not a number."""
    first = value.split("\\", 1)[0].strip()
    try:
        return int(float(first)) if first else None
    except ValueError:
        return None


def human_readable_patient_name(dicom_name: str) -> str:
    """CTK's display form of a PN: "Last, First Middle, Suffix (Prefix)" from the alphabetic group."""
    alphabetic = dicom_name.split("=", 1)[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    last, first, middle, prefix, suffix = (p.strip() for p in parts)
    name = ""
    if last:
        name += last
        if first or middle:
            name += ","
    if first:
        name += " " + first
    if middle:
        name += " " + middle
    if suffix:
        name += ", " + suffix
    if prefix:
        name += " (" + prefix + ")"
    return name.strip()


def storage_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """CTK's short storage path (``useShortStoragePath``, the default) of a copied instance."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode("utf-8")).hexdigest()

    return f"{STORAGE_FOLDER}/{md5(study_uid)[:8]}/{md5(series_uid)[:8]}/{md5(sop_uid)}.dcm"


def default_database_directory() -> str:
    """``$MEDSEG_DICOM_DB`` or ``~/.medseg/dicom-db``."""
    return os.environ.get("MEDSEG_DICOM_DB") or os.path.join(os.path.expanduser("~"), ".medseg", "dicom-db")


def normalize_path(path: PathLike) -> str:
    """Absolute path with forward slashes, the way Qt (and so CTK) stores file names."""
    return os.path.abspath(os.fspath(path)).replace(os.sep, "/")


class DicomDatabase:
    """CTK-compatible DICOM database in a folder; CTK method names, plain Python types."""

    def __init__(self, directory: PathLike, create: bool = True) -> None:
        directory = os.fspath(directory)
        self._directory = normalize_path(directory)
        db_file = os.path.join(directory, DATABASE_FILENAME)
        exists = os.path.isfile(db_file)
        if not exists:
            if not create:
                raise UserInputError(f"no DICOM database ({DATABASE_FILENAME}) in this folder", directory)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as error:
                raise UserInputError(f"cannot create the database folder: {error.strerror}", directory) from None
        try:
            self._conn: Optional[sqlite3.Connection] = sqlite3.connect(db_file, isolation_level=None, timeout=30.0)
            # A new database is created without waiting for the disk (fsync): the three files' schemas are
            # empty and nothing else is at stake (like imports, which also write with synchronous=OFF).
            default_sync = self._conn.execute("PRAGMA synchronous").fetchone()[0]
            if not exists:
                self._conn.execute("PRAGMA synchronous = OFF")
                self._initialize_database()
        except sqlite3.Error as error:
            self._conn = None
            raise UserInputError(f"cannot create the DICOM database: {error}", db_file) from None
        conn = self._conn
        version = self.schemaVersionLoaded()
        if version != SCHEMA_VERSION:
            conn.close()
            self._conn = None
            raise UserInputError(
                f"DICOM database schema is {version or 'unknown'}, MedSeg reads {SCHEMA_VERSION} "
                "(update it in 3D Slicer, or use another --db folder)",
                db_file,
            )
        try:
            tag_cache_file = os.path.join(directory, TAG_CACHE_FILENAME)
            conn.execute("ATTACH DATABASE ? AS tc", (tag_cache_file,))
            conn.execute("ATTACH DATABASE ? AS mi", (os.path.join(directory, FILE_INDEX_FILENAME),))
            if not exists:
                conn.execute("PRAGMA tc.synchronous = OFF")
                conn.execute("PRAGMA mi.synchronous = OFF")
            if not conn.execute("SELECT name FROM tc.sqlite_master WHERE type='table' AND name='TagCache'").fetchone():
                conn.execute(TAG_CACHE_SQL.replace("CREATE TABLE TagCache", "CREATE TABLE tc.TagCache"))
            conn.executescript(
                FILE_INDEX_SQL.replace("EXISTS Files", "EXISTS mi.Files")
                .replace("EXISTS FilesSOPIndex", "EXISTS mi.FilesSOPIndex")
                .replace("EXISTS Info", "EXISTS mi.Info")
            )
            for schema in ("main", "tc", "mi"):
                conn.execute(f"PRAGMA {schema}.synchronous = {int(default_sync)}")
        except sqlite3.Error as error:
            conn.close()
            self._conn = None
            raise UserInputError(f"cannot open the tag cache or file index: {error}", directory) from None
        self._instance_for_file: Dict[str, str] = {}
        self._cached_tag_keys: Optional[frozenset] = None

    # ------------------------------------------------------------------ lifecycle
    def _initialize_database(self) -> None:
        conn = self._db()
        conn.executescript("BEGIN;" + CTK_SCHEMA_SQL + "COMMIT;")
        with_rows = "INSERT INTO ColumnDisplayProperties VALUES (?, ?, ?, ?, ?, ?)"
        conn.execute("BEGIN")
        conn.executemany(with_rows, COLUMN_DISPLAY_PROPERTIES)
        conn.execute("COMMIT")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the DICOM database is closed")
        return self._conn

    @property
    def isOpen(self) -> bool:
        return self._conn is not None

    def closeDatabase(self) -> None:
        """Close all three files (safe to call twice)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DicomDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closeDatabase()

    def databaseDirectory(self) -> str:
        return self._directory

    def databaseFilename(self) -> str:
        return self._directory + "/" + DATABASE_FILENAME

    def schemaVersion(self) -> str:
        return SCHEMA_VERSION

    def schemaVersionLoaded(self) -> str:
        try:
            row = self._db().execute("SELECT Version FROM SchemaInfo").fetchone()
        except sqlite3.Error:
            return ""
        return str(row[0]) if row else ""

    # ------------------------------------------------------------------ paths
    def internal_path(self, path: PathLike) -> str:
        """Path as stored in Images.Filename: relative inside the database folder, else absolute."""
        absolute = normalize_path(path)
        prefix = self._directory + "/"
        return absolute[len(prefix) :] if absolute.startswith(prefix) else absolute

    def absolute_path(self, internal: str) -> str:
        if not internal:
            return internal
        if os.path.isabs(internal) or (len(internal) > 1 and internal[1] == ":"):
            return internal
        return self._directory + "/" + internal

    # ------------------------------------------------------------------ hierarchy (CTK names)
    def _column(self, sql: str, args: Sequence[object] = ()) -> List[str]:
        return ["" if row[0] is None else str(row[0]) for row in self._db().execute(sql, args)]

    def _scalar(self, sql: str, args: Sequence[object] = ()) -> str:
        row = self._db().execute(sql, args).fetchone()
        return "" if row is None or row[0] is None else str(row[0])

    def patients(self) -> List[str]:
        return self._column("SELECT UID FROM Patients")

    def studiesForPatient(self, patientUID: str) -> List[str]:
        return self._column("SELECT StudyInstanceUID FROM Studies WHERE PatientsUID = ?", (str(patientUID),))

    def seriesForStudy(self, studyUID: str) -> List[str]:
        return self._column("SELECT SeriesInstanceUID FROM Series WHERE StudyInstanceUID = ?", (studyUID,))

    def studyForSeries(self, seriesUID: str) -> str:
        return self._scalar("SELECT StudyInstanceUID FROM Series WHERE SeriesInstanceUID = ?", (seriesUID,))

    def patientForStudy(self, studyUID: str) -> str:
        return self._scalar("SELECT PatientsUID FROM Studies WHERE StudyInstanceUID = ?", (studyUID,))

    def instancesForSeries(self, seriesUID: str, hits: int = -1) -> List[str]:
        sql = "SELECT SOPInstanceUID FROM Images WHERE SeriesInstanceUID = ?"
        if hits > 0:
            sql += f" LIMIT {int(hits)}"
        return self._column(sql, (seriesUID,))

    def filesForSeries(self, seriesUID: str, hits: int = -1) -> List[str]:
        sql = "SELECT Filename FROM Images WHERE SeriesInstanceUID = ?"
        if hits > 0:
            sql += f" LIMIT {int(hits)}"
        return [self.absolute_path(name) for name in self._column(sql, (seriesUID,))]

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.absolute_path(
            self._scalar("SELECT Filename FROM Images WHERE SOPInstanceUID = ?", (sopInstanceUID,))
        )

    def seriesForFile(self, fileName: str) -> str:
        return self._scalar("SELECT SeriesInstanceUID FROM Images WHERE Filename = ?", (self.internal_path(fileName),))

    def instanceForFile(self, fileName: str) -> str:
        return self._scalar("SELECT SOPInstanceUID FROM Images WHERE Filename = ?", (self.internal_path(fileName),))

    def allFiles(self) -> List[str]:
        return [self.absolute_path(name) for name in self._column("SELECT Filename FROM Images")]

    def descriptionForSeries(self, seriesUID: str) -> str:
        return self._scalar("SELECT SeriesDescription FROM Series WHERE SeriesInstanceUID = ?", (seriesUID,))

    def descriptionForStudy(self, studyUID: str) -> str:
        return self._scalar("SELECT StudyDescription FROM Studies WHERE StudyInstanceUID = ?", (studyUID,))

    def nameForPatient(self, patientUID: str) -> str:
        return self._scalar("SELECT PatientsName FROM Patients WHERE UID = ?", (str(patientUID),))

    def displayedNameForPatient(self, patientUID: str) -> str:
        return self._scalar("SELECT DisplayedPatientsName FROM Patients WHERE UID = ?", (str(patientUID),))

    def _field(self, table: str, key: str, field: str, uid: str) -> str:
        if field not in _TABLE_COLUMNS[table]:
            return ""  # CTK logs an SQL error and returns ""
        return self._scalar(f"SELECT {field} FROM {table} WHERE {key} = ?", (str(uid),))

    def fieldForPatient(self, field: str, patientUID: str) -> str:
        return self._field("Patients", "UID", field, patientUID)

    def fieldForStudy(self, field: str, studyInstanceUID: str) -> str:
        return self._field("Studies", "StudyInstanceUID", field, studyInstanceUID)

    def fieldForSeries(self, field: str, seriesInstanceUID: str) -> str:
        return self._field("Series", "SeriesInstanceUID", field, seriesInstanceUID)

    def patientsCount(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM Patients"))

    def studiesCount(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM Studies"))

    def seriesCount(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM Series"))

    def imagesCount(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM Images"))

    # ------------------------------------------------------------------ tag values
    @staticmethod
    def groupElementToTag(group: int, element: int) -> str:
        return f"{group:04X},{element:04X}"

    @staticmethod
    def tagToGroupElement(tag: str) -> Tuple[int, int]:
        group, element = tag.split(",")
        return int(group, 16), int(element, 16)

    def cachedTag(self, sopInstanceUID: str, tag: str) -> str:
        """Raw cache entry (may be one of CTK's markers); "" when not cached."""
        return self._scalar(
            "SELECT Value FROM tc.TagCache WHERE SOPInstanceUID = ? AND Tag = ?", (sopInstanceUID, tag.upper())
        )

    def getCachedTags(self, sopInstanceUID: str) -> Dict[str, str]:
        rows = self._db().execute("SELECT Tag, Value FROM tc.TagCache WHERE SOPInstanceUID = ?", (sopInstanceUID,))
        return {str(tag): "" if value is None else str(value) for tag, value in rows}

    def cacheTag(self, sopInstanceUID: str, tag: str, value: str) -> bool:
        try:
            self._db().execute(
                "INSERT OR REPLACE INTO tc.TagCache VALUES (?, ?, ?)", (sopInstanceUID, tag.upper(), value)
            )
        except sqlite3.Error:
            return False
        return True

    def instanceValue(self, sopInstanceUID: str, tag: str, element: Optional[int] = None) -> str:
        """Tag value of an instance (cache first, else read the file and cache it, like CTK)."""
        if element is not None:
            tag = self.groupElementToTag(int(tag), element)  # type: ignore[arg-type]
        tag = tag.upper()
        cached = self.cachedTag(sopInstanceUID, tag)
        if cached:
            return "" if cached in _MARKERS else cached
        file_name = self.fileForInstance(sopInstanceUID)
        if not file_name:
            return ""
        return self._value_from_file(file_name, sopInstanceUID, tag)

    def fileValue(self, fileName: str, tag: Union[str, int], element: Optional[int] = None) -> str:
        """Tag value as a string (multi-values '\\'-joined; missing -> ""), from the tag cache when possible.

        ``fileValue(file, "0020,0032")`` or ``fileValue(file, 0x0020, 0x0032)`` like CTK.
        """
        if not fileName:
            return ""
        if element is not None:
            tag = self.groupElementToTag(int(tag), element)
        tag = str(tag).upper()
        key = normalize_path(fileName)
        sop = self._instance_for_file.get(key)
        if sop is None:
            sop = self.instanceForFile(fileName)
            if sop:
                self._instance_for_file[key] = sop
        if sop:
            cached = self.cachedTag(sop, tag)
            if cached:
                return "" if cached in _MARKERS else cached
            if tag in self.cached_tag_keys() and self._indexed_by_medseg(sop):
                return ""  # MedSeg cached every present value of these tags: absent means not in the file
        return self._value_from_file(self.absolute_path(fileName), sop, tag)

    def reset_caches(self) -> None:
        """Forget in-memory lookups (file -> instance); called after imports and removals."""
        self._instance_for_file.clear()
        self._cached_tag_keys = None

    def cached_tag_keys(self) -> frozenset:
        """Tags every MedSeg import of this database cached for each instance (when present in the file)."""
        if self._cached_tag_keys is None:
            stored = self._scalar("SELECT Value FROM mi.Info WHERE Key = 'CachedTags'")
            self._cached_tag_keys = frozenset(stored.split(";")) if stored else frozenset()
        return self._cached_tag_keys

    def record_cached_tags(self, keys: Sequence[str]) -> None:
        """Remember which tags imports cache; keeps the intersection when versions differ."""
        keys_set = frozenset(k.upper() for k in keys)
        stored = self._scalar("SELECT Value FROM mi.Info WHERE Key = 'CachedTags'")
        had_files = self._scalar("SELECT 1 FROM mi.Files WHERE Status = ? LIMIT 1", (STATUS_INDEXED,))
        if stored or had_files:
            keys_set &= frozenset(stored.split(";")) if stored else frozenset()
        self._db().execute("INSERT OR REPLACE INTO mi.Info VALUES ('CachedTags', ?)", (";".join(sorted(keys_set)),))
        self._cached_tag_keys = keys_set

    def _indexed_by_medseg(self, sop: str) -> bool:
        return bool(
            self._scalar(
                "SELECT 1 FROM mi.Files WHERE SOPInstanceUID = ? AND Status = ? LIMIT 1", (sop, STATUS_INDEXED)
            )
        )

    def _value_from_file(self, file_name: str, sop: str, tag: str) -> str:
        from MedSegLib.dicom.header_reader import read_tag_from_file

        value = read_tag_from_file(file_name, tag)
        if sop and value is not None:
            self.cacheTag(sop, tag, value if value else TAG_NOT_IN_INSTANCE)
        return value or ""

    def fileExistsAndUpToDate(self, filePath: str) -> bool:
        """CTK's rule: indexed, and modified before it was inserted."""
        stamp = self._scalar("SELECT InsertTimestamp FROM Images WHERE Filename = ?", (self.internal_path(filePath),))
        if not stamp:
            return False
        try:
            inserted = datetime.fromisoformat(stamp).timestamp()
            return os.path.getmtime(filePath) < inserted
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ removal
    def removeSeries(self, seriesInstanceUID: str, clearCachedTags: bool = False, cleanup: bool = True) -> bool:
        """Remove a series; copies under ``dicom/`` are deleted, original files never are."""
        conn = self._db()
        rows = conn.execute(
            "SELECT Filename, SOPInstanceUID FROM Images WHERE SeriesInstanceUID = ?", (seriesInstanceUID,)
        ).fetchall()
        study = self.studyForSeries(seriesInstanceUID)
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM Images WHERE SeriesInstanceUID = ?", (seriesInstanceUID,))
            sops = [(sop,) for _name, sop in rows]
            if clearCachedTags:
                conn.executemany("DELETE FROM tc.TagCache WHERE SOPInstanceUID = ?", sops)
            conn.executemany("DELETE FROM mi.Files WHERE SOPInstanceUID = ?", sops)
            if cleanup:
                conn.execute("DELETE FROM Series WHERE SeriesInstanceUID = ?", (seriesInstanceUID,))
                self._cleanup_study(study)
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            return False
        for name, _sop in rows:
            if name and not os.path.isabs(name):
                self._remove_copy(self.absolute_path(name))
        self.reset_caches()
        return True

    def removeStudy(self, studyInstanceUID: str, cleanup: bool = True) -> bool:
        ok = all(self.removeSeries(uid, cleanup=cleanup) for uid in self.seriesForStudy(studyInstanceUID))
        if cleanup:
            self._cleanup_study(studyInstanceUID)
        return ok

    def removePatient(self, patientUID: str, cleanup: bool = True) -> bool:
        return all(self.removeStudy(uid, cleanup=cleanup) for uid in self.studiesForPatient(patientUID))

    def _cleanup_study(self, study: str) -> None:
        conn = self._db()
        if not study or conn.execute("SELECT 1 FROM Series WHERE StudyInstanceUID = ? LIMIT 1", (study,)).fetchone():
            if study:
                self._update_displayed_study(study)
            return
        patient = self.patientForStudy(study)
        conn.execute("DELETE FROM Studies WHERE StudyInstanceUID = ?", (study,))
        if patient:
            if conn.execute("SELECT 1 FROM Studies WHERE PatientsUID = ? LIMIT 1", (patient,)).fetchone():
                self._update_displayed_patient(patient)
            else:
                conn.execute("DELETE FROM Patients WHERE UID = ?", (patient,))

    def _remove_copy(self, path: str) -> None:
        storage = self._directory + "/" + STORAGE_FOLDER
        if not normalize_path(path).startswith(storage + "/"):
            return
        try:
            os.remove(path)
            folder = os.path.dirname(path)
            while normalize_path(folder).startswith(storage + "/") and not os.listdir(folder):
                os.rmdir(folder)
                folder = os.path.dirname(folder)
        except OSError:
            pass

    # ------------------------------------------------------------------ displayed fields
    def _update_displayed_series(self, series_uid: str, timestamp: str) -> None:
        conn = self._db()
        count = conn.execute("SELECT COUNT(*) FROM Images WHERE SeriesInstanceUID = ?", (series_uid,)).fetchone()[0]
        rows = conn.execute(
            "SELECT t.Tag, t.Value FROM Images i JOIN tc.TagCache t ON t.SOPInstanceUID = i.SOPInstanceUID "
            "WHERE i.SeriesInstanceUID = ? AND t.Tag IN ('0028,0010', '0028,0011', '0028,0008')",
            (series_uid,),
        ).fetchall()
        rows_value = next((v for t, v in rows if t == "0028,0010" and v not in _MARKERS), "")
        cols_value = next((v for t, v in rows if t == "0028,0011" and v not in _MARKERS), "")
        frames = sum((dicom_int(v) or 1) for t, v in rows if t == "0028,0008" and v not in _MARKERS)
        frames += count - sum(1 for t, v in rows if t == "0028,0008" and v not in _MARKERS)
        size = f"{cols_value}x{rows_value}" if rows_value and cols_value else None
        conn.execute(
            "UPDATE Series SET DisplayedCount = ?, DisplayedSize = ?, DisplayedNumberOfFrames = ?, "
            "DisplayedFieldsUpdatedTimestamp = ? WHERE SeriesInstanceUID = ?",
            (count, size, frames, timestamp, series_uid),
        )

    def _update_displayed_study(self, study_uid: str, timestamp: Optional[str] = None) -> None:
        conn = self._db()
        count = conn.execute("SELECT COUNT(*) FROM Series WHERE StudyInstanceUID = ?", (study_uid,)).fetchone()[0]
        modalities = self._column(
            "SELECT DISTINCT Modality FROM Series WHERE StudyInstanceUID = ? "
            "AND Modality IS NOT NULL AND Modality != '' ORDER BY Modality",
            (study_uid,),
        )
        conn.execute(
            "UPDATE Studies SET DisplayedNumberOfSeries = ?, DisplayedFieldsUpdatedTimestamp = ?, "
            "ModalitiesInStudy = COALESCE(NULLIF(ModalitiesInStudy, ''), ?) WHERE StudyInstanceUID = ?",
            (count, timestamp or utc_timestamp(), "\\".join(modalities), study_uid),
        )

    def _update_displayed_patient(self, patient_uid: str, timestamp: Optional[str] = None) -> None:
        conn = self._db()
        count, last = conn.execute(
            "SELECT COUNT(*), MAX(StudyDate) FROM Studies WHERE PatientsUID = ?", (patient_uid,)
        ).fetchone()
        last = "" if last is None else str(last)
        last_iso = dicom_date_to_iso(last) or (last if len(last) == 10 else None)
        conn.execute(
            "UPDATE Patients SET DisplayedNumberOfStudies = ?, DisplayedLastStudyDate = ?, "
            "DisplayedFieldsUpdatedTimestamp = ? WHERE UID = ?",
            (count, last_iso, timestamp or utc_timestamp(), patient_uid),
        )

    def update_displayed_fields(self, series: Iterable[str], studies: Iterable[str], patients: Iterable[str]) -> None:
        """Recount what CTK's displayed-field rules show (instances/series/studies, size, last date)."""
        timestamp = utc_timestamp()
        for uid in series:
            self._update_displayed_series(uid, timestamp)
        for uid in studies:
            self._update_displayed_study(uid, timestamp)
        for uid in patients:
            self._update_displayed_patient(uid, timestamp)

    # ------------------------------------------------------------------ MedSeg file index
    def file_states(self) -> Dict[str, Tuple[int, int, str, str, str]]:
        """path -> (size, mtime_ns, status, SOPInstanceUID, reason) for every file seen by earlier imports."""
        rows = self._db().execute("SELECT Path, Size, MTimeNs, Status, SOPInstanceUID, Reason FROM mi.Files")
        return {path: (size, mtime, status, sop or "", reason or "") for path, size, mtime, status, sop, reason in rows}

    def duplicate_files(self) -> Dict[str, List[str]]:
        """SOPInstanceUID -> other paths that hold the same instance (not indexed, reported)."""
        result: Dict[str, List[str]] = {}
        for path, sop in self._db().execute(
            "SELECT Path, SOPInstanceUID FROM mi.Files WHERE Status = ?", (STATUS_DUPLICATE,)
        ):
            result.setdefault(sop or "", []).append(path)
        return result

    def instances_without_pixel_data(self) -> Dict[str, int]:
        """SeriesInstanceUID -> number of indexed instances that have no Pixel Data element."""
        rows = self._db().execute(
            "SELECT i.SeriesInstanceUID, COUNT(*) FROM mi.Files f JOIN Images i ON i.SOPInstanceUID = f.SOPInstanceUID "
            "WHERE f.Status = ? AND f.HasPixelData = 0 GROUP BY i.SeriesInstanceUID",
            (STATUS_INDEXED,),
        )
        return {series: count for series, count in rows}

    def tag_values_by_series(self, tags: Sequence[str]) -> Dict[str, List[Tuple[str, str, str]]]:
        """SeriesInstanceUID -> [(SOPInstanceUID, tag, value)] for the given tag keys, from the cache."""
        marks = ",".join("?" for _ in tags)
        rows = self._db().execute(
            "SELECT i.SeriesInstanceUID, i.SOPInstanceUID, t.Tag, t.Value FROM Images i "
            f"JOIN tc.TagCache t ON t.SOPInstanceUID = i.SOPInstanceUID WHERE t.Tag IN ({marks})",
            [t.upper() for t in tags],
        )
        result: Dict[str, List[Tuple[str, str, str]]] = {}
        for series, sop, tag, value in rows:
            if value in _MARKERS:
                continue
            result.setdefault(series, []).append((sop, tag, "" if value is None else str(value)))
        return result

    def connection(self) -> sqlite3.Connection:
        """The open connection (ctkDICOM.sql as ``main``, tag cache as ``tc``, file index as ``mi``)."""
        return self._db()

    def copy_into_storage(self, source: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Copy a file into ``<db>/dicom/`` (CTK layout); returns the absolute destination."""
        relative = storage_path(study_uid, series_uid, sop_uid)
        destination = self._directory + "/" + relative
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(source, destination)
        return destination


def utc_timestamp() -> str:
    """SQLite's CURRENT_TIMESTAMP form (UTC), which CTK writes into DisplayedFieldsUpdatedTimestamp."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------- listing with loadability warnings

_LIST_TAGS = ("0028,0010", "0028,0011", "0020,0032", "0020,0037", "0028,0008", "0020,000E")


def _orientation_key(value: str, tolerance: float = 1e-4) -> Tuple[float, ...]:
    try:
        return tuple(round(float(v) / tolerance) * tolerance for v in value.split("\\"))
    except ValueError:
        return (float("nan"),)


def _floats(value: str) -> List[float]:
    try:
        return [float(v) for v in value.split("\\")]
    except ValueError:
        return []


def _geometry_warnings(instances: List[Dict[str, str]], spacing_tolerance: float = 0.01) -> List[str]:
    """Slice stacking problems visible from cached IPP/IOP: repeated positions, uneven steps, tilt.

    Tolerances follow Slicer's examine step (0.01 mm spacing epsilon); the tilt check compares the
    stacking direction with the slice normal (a gantry tilt shears the volume).
    """
    if len(instances) < 2:
        return []
    orientation = _floats(instances[0].get("0020,0037", ""))
    positions = [_floats(v.get("0020,0032", "")) for v in instances]
    if len(orientation) != 6 or any(len(p) != 3 for p in positions):
        return []
    r, c = orientation[:3], orientation[3:]
    normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    norm = math.sqrt(sum(x * x for x in normal)) or 1.0
    normal = [x / norm for x in normal]
    distances = sorted((sum(p[i] * normal[i] for i in range(3)), p) for p in positions)
    unique: List[Tuple[float, List[float]]] = []
    for distance, position in distances:
        if not unique or distance - unique[-1][0] > spacing_tolerance:
            unique.append((distance, position))
    warnings: List[str] = []
    if len(unique) < len(instances):
        per_position = len(instances) / len(unique)
        warnings.append(
            f"{len(instances)} instances at {len(unique)} slice position(s) "
            f"(~{per_position:.3g} per position: several volumes, e.g. time, echo or b-value?)"
        )
    if len(unique) >= 3:
        steps = [b[0] - a[0] for a, b in zip(unique, unique[1:])]
        if max(steps) - min(steps) > spacing_tolerance:
            warnings.append(f"unequal slice spacing ({min(steps):.3g} to {max(steps):.3g} mm)")
    if len(unique) >= 2:
        first, last = unique[0][1], unique[-1][1]
        direction = [last[i] - first[i] for i in range(3)]
        length = math.sqrt(sum(x * x for x in direction))
        if length > 0:
            cosine = min(1.0, abs(sum(direction[i] * normal[i] for i in range(3))) / length)
            angle = math.degrees(math.acos(cosine))
            if angle > 0.01:
                warnings.append(f"slices are not stacked along their normal ({angle:.3g} degrees: gantry tilt?)")
    return warnings


def series_warnings(instances: Dict[str, Dict[str, str]], duplicates: int, without_pixels: int) -> List[str]:
    """Loadability warnings for one series from cached values (sop -> {tag: value})."""
    warnings: List[str] = []
    total = len(instances)
    sizes = Counter(
        f"{values.get('0028,0011', '?')}x{values.get('0028,0010', '?')}"
        for values in instances.values()
        if "0028,0010" in values or "0028,0011" in values
    )
    if len(sizes) > 1:
        detail = ", ".join(f"{size}: {n}" for size, n in sizes.most_common())
        warnings.append(f"mixed matrix sizes ({detail})")
    single_frame = [v for v in instances.values() if (dicom_int(v.get("0028,0008", "")) or 1) <= 1 and "0028,0010" in v]
    missing_position = sum(1 for v in single_frame if "0020,0032" not in v)
    if missing_position:
        warnings.append(f"missing ImagePositionPatient in {missing_position} of {total} instance(s)")
    orientations = {_orientation_key(v["0020,0037"]) for v in instances.values() if "0020,0037" in v}
    if len(orientations) > 1:
        warnings.append(f"multiple orientations ({len(orientations)})")
    if len(orientations) == 1 and not missing_position:
        warnings.extend(_geometry_warnings(single_frame))
    if duplicates:
        warnings.append(f"duplicate SOPInstanceUID: {duplicates} other file(s) hold instances of this series")
    if without_pixels:
        warnings.append(f"no pixel data in {without_pixels} of {total} instance(s)")
    multi_frame = sum(1 for v in instances.values() if (dicom_int(v.get("0028,0008", "")) or 1) > 1)
    if multi_frame:
        warnings.append(f"multi-frame: {multi_frame} instance(s) hold several frames")
    if any("0020,000E" not in v for v in instances.values()):
        warnings.append("no SeriesInstanceUID in the files (MedSeg derived one from folder and header)")
    return warnings


def describe_database(db: DicomDatabase) -> List[Dict[str, object]]:
    """Patients -> studies -> series with instance counts and loadability warnings (for ``medseg dicom list``)."""
    by_series: Dict[str, Dict[str, Dict[str, str]]] = {}
    for series, entries in db.tag_values_by_series(_LIST_TAGS).items():
        per_instance = by_series.setdefault(series, {})
        for sop, tag, value in entries:
            per_instance.setdefault(sop, {})[tag] = value
    duplicate_sops = db.duplicate_files()
    without_pixels = db.instances_without_pixel_data()
    conn = db.connection()
    patients: List[Dict[str, object]] = []
    for uid, name, pid, birth, sex, shown in conn.execute(
        "SELECT UID, PatientsName, PatientID, PatientsBirthDate, PatientsSex, DisplayedPatientsName FROM Patients "
        "ORDER BY UID"
    ).fetchall():
        studies: List[Dict[str, object]] = []
        for study_uid, date, description, study_id, accession in conn.execute(
            "SELECT StudyInstanceUID, StudyDate, StudyDescription, StudyID, AccessionNumber FROM Studies "
            "WHERE PatientsUID = ? ORDER BY StudyDate, StudyInstanceUID",
            (uid,),
        ).fetchall():
            series_list: List[Dict[str, object]] = []
            for series_uid, number, modality, series_description in conn.execute(
                "SELECT SeriesInstanceUID, SeriesNumber, Modality, SeriesDescription FROM Series "
                "WHERE StudyInstanceUID = ? ORDER BY SeriesNumber, SeriesInstanceUID",
                (study_uid,),
            ).fetchall():
                sops = db.instancesForSeries(series_uid)
                instances = {sop: by_series.get(series_uid, {}).get(sop, {}) for sop in sops}
                duplicates = sum(len(duplicate_sops.get(sop, [])) for sop in sops)
                size = db.fieldForSeries("DisplayedSize", series_uid)
                series_list.append(
                    {
                        "series_instance_uid": series_uid,
                        "series_number": number,
                        "modality": modality or "",
                        "description": series_description or "",
                        "instances": len(sops),
                        "size": size,
                        "warnings": series_warnings(instances, duplicates, without_pixels.get(series_uid, 0)),
                    }
                )
            studies.append(
                {
                    "study_instance_uid": study_uid,
                    "study_date": "" if date is None else str(date),
                    "description": description or "",
                    "study_id": study_id or "",
                    "accession_number": accession or "",
                    "series": series_list,
                }
            )
        patients.append(
            {
                "patient_uid": str(uid),
                "patient_id": pid or "",
                "name": name or "",
                "displayed_name": shown or "",
                "birth_date": birth or "",
                "sex": sex or "",
                "studies": studies,
            }
        )
    return patients
