# ruff: noqa: E501  (the expected DDL below is CTK's dicom-schema.sql verbatim, long lines included)
"""Headless DICOM database (CTK schema 0.8.1) and importer: schema, real data, bad files, re-import, CLI.

The expected schema below is CTK's ``Libs/DICOM/Core/Resources/dicom-schema.sql`` (commontk/CTK main,
2026-08, SchemaInfo 0.8.1) copied here so the test never needs the network. A database made by MedSeg
must have exactly these tables, columns, types, constraints, indexes and pre-filled rows, so that
3D Slicer opens it without a schema update.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from MedSegLib.cli.main import main
from MedSegLib.dicom import header_reader
from MedSegLib.dicom.database import (
    DATABASE_FILENAME,
    FILE_INDEX_FILENAME,
    TAG_CACHE_FILENAME,
    DicomDatabase,
    describe_database,
    human_readable_patient_name,
)
from MedSegLib.dicom.header_reader import CACHED_TAGS, HEADER_TAGS, cache_json, read_header
from MedSegLib.dicom.indexer import import_paths

EXPECTED_CTK_SCHEMA = r"""
DROP TABLE IF EXISTS 'SchemaInfo' ;
DROP TABLE IF EXISTS 'Images' ;
DROP TABLE IF EXISTS 'Patients' ;
DROP TABLE IF EXISTS 'Series' ;
DROP TABLE IF EXISTS 'Studies' ;
DROP TABLE IF EXISTS 'ColumnDisplayProperties' ;
DROP TABLE IF EXISTS 'DisplayedFieldGeneratorRules' ;
DROP TABLE IF EXISTS 'Directories' ;

DROP INDEX IF EXISTS 'ImagesFilenameIndex' ;
DROP INDEX IF EXISTS 'ImagesSeriesIndex' ;
DROP INDEX IF EXISTS 'SeriesStudyIndex' ;
DROP INDEX IF EXISTS 'StudiesPatientIndex' ;

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

INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'UID',                             '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsName',                    'Patient name',         0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientID',                       'Patient ID',           1, 2, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsBirthDate',               'Birth date',           1, 3, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsBirthTime',               'Birth time',           0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsSex',                     'Sex',                  1, 4, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsAge',                     'Age',                  0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'PatientsComments',                'Comments',             0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'InsertTimestamp',                 'Date added',           1, 7, '{"sort": "descending"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'DisplayedPatientsName',           'Patient name',         1, 1, '{"resizeMode":"stretch"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'DisplayedNumberOfStudies',        'Studies',              1, 5, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'DisplayedLastStudyDate',          'Last study date',      1, 6, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'DisplayedFieldsUpdatedTimestamp', '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Patients', 'Connections',                     '',                     0, 0, '');

INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'StudyInstanceUID',                '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'PatientsUID',                     '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'StudyID',                         'Study ID',             1, 2, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'StudyDate',                       'Study date',           1, 1, '{"resizeMode":"resizeToContents", "sort": "ascending"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'StudyTime',                       'Study time',           0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'StudyDescription',                'Study description',    1, 3, '{"resizeMode":"stretch"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'AccessionNumber',                 'Accession #',          0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'ModalitiesInStudy',               'Modalities',           0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'InstitutionName',                 'Institution',          0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'ReferringPhysician',              'Referring physician',  0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'PerformingPhysiciansName',        'Performing physician', 0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'InsertTimestamp',                 'Date added',           1, 5, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'DisplayedNumberOfSeries',         'Series',               1, 4, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Studies',  'DisplayedFieldsUpdatedTimestamp', '',                     0, 0, '');

INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'SeriesInstanceUID',               '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'StudyInstanceUID',                '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'SeriesNumber',                    'Series #',             1, 1, '{"resizeMode":"resizeToContents", "sort": "ascending"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'SeriesDate',                      'Series date',          0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'SeriesTime',                      'Series time',          0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'SeriesDescription',               'Series description',   1, 2, '{"resizeMode":"stretch"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'Modality',                        'Modality',             1, 3, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'BodyPartExamined',                'Body part',            0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'FrameOfReferenceUID',             '',                     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'AcquisitionNumber',               'Acquisition #',        0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'ContrastAgent',                   'Contrast agent',       0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'ScanningSequence',                'Scanning sequence',    0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'EchoNumber',                      'Echo #',               0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'TemporalPosition',                'Temporal position',    0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'InsertTimestamp',                 'Date added',           1, 6, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'DisplayedSize',                   'Size',                 1, 4, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'DisplayedCount',                  'Count',                1, 5, '{"resizeMode":"resizeToContents"}');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'DisplayedNumberOfFrames',         'Number of frames',     0, 0, '');
INSERT INTO 'ColumnDisplayProperties' VALUES('Series',   'DisplayedFieldsUpdatedTimestamp', '',                     0, 0, '');

CREATE TABLE 'DisplayedFieldGeneratorRules' (
  'Name' VARCHAR(64) NOT NULL,
  'Enabled' INT NULL DEFAULT 1 ,
  'Options' VARCHAR(255) NULL ,
  PRIMARY KEY ('Name')
);
"""


# ----------------------------------------------------------------------------- helpers


def pydicom_string(value: object) -> str:
    """Reference string form of a pydicom value: multi-values joined with a backslash, None -> ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(pydicom_string(v) for v in value)  # type: ignore[union-attr]
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip(" \x00")
    return str(value)


def pydicom_tag_value(ds: pydicom.Dataset, key: str) -> str:
    tag = int(key.replace(",", ""), 16)
    container = ds.file_meta if key.startswith("0002") else ds
    elem = container.get(tag)
    return "" if elem is None else pydicom_string(elem.value)


def checksums(folder: Path) -> Dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def schema_of(conn: sqlite3.Connection) -> Dict[str, object]:
    tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    columns = {t: conn.execute(f"PRAGMA table_info('{t}')").fetchall() for t in tables}
    indexes = sorted(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index'").fetchall())
    index_columns = {name: conn.execute(f"PRAGMA index_info('{name}')").fetchall() for name, _ in indexes}
    return {"tables": tables, "columns": columns, "indexes": indexes, "index_columns": index_columns}


@pytest.fixture(scope="module")
def real_import(tmp_path_factory, shared_data):
    """The whole shared data folder imported once (parallel, the default mode), plus pydicom's view of it."""
    db_dir = tmp_path_factory.mktemp("realdb")
    db = DicomDatabase(db_dir)
    summary = import_paths(db, [str(shared_data)])
    pydicom_view: Dict[str, pydicom.Dataset] = {}
    rejected: List[str] = []
    for path in sorted(p for p in shared_data.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            rejected.append(str(path))
            continue
        if ds.file_meta.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10":
            rejected.append(str(path))  # DICOMDIR (Philips DIRFILE): not an image
            continue
        pydicom_view[str(path)] = ds
    yield db, summary, pydicom_view, rejected
    db.closeDatabase()


def small_series(shared_data: Path) -> List[Path]:
    """8 GE MR files of one series (hazen T2, plate 4), ~140 kB each."""
    files = sorted((shared_data / "hazen_relaxometry" / "T2" / "site3_ge" / "plate4").iterdir())
    assert len(files) == 8
    return files


# ----------------------------------------------------------------------------- schema


def test_schema_matches_ctk_0_8_1(tmp_path):
    expected = sqlite3.connect(":memory:")
    expected.executescript(EXPECTED_CTK_SCHEMA)
    DicomDatabase(tmp_path / "db").closeDatabase()
    made = sqlite3.connect(tmp_path / "db" / DATABASE_FILENAME)
    ours, theirs = schema_of(made), schema_of(expected)
    # AUTOINCREMENT creates sqlite_sequence in both; everything else must be identical
    assert ours == theirs
    assert made.execute("SELECT Version FROM SchemaInfo").fetchall() == [("0.8.1",)]
    rows = "SELECT * FROM ColumnDisplayProperties ORDER BY TableName, FieldName"
    assert made.execute(rows).fetchall() == expected.execute(rows).fetchall()
    assert made.execute("SELECT COUNT(*) FROM DisplayedFieldGeneratorRules").fetchone() == (0,)
    # the tag cache is its own file with CTK's table
    cache = sqlite3.connect(tmp_path / "db" / TAG_CACHE_FILENAME)
    assert cache.execute("SELECT sql FROM sqlite_master WHERE name='TagCache'").fetchone() == (
        "CREATE TABLE TagCache (SOPInstanceUID, Tag, Value, PRIMARY KEY (SOPInstanceUID, Tag))",
    )
    assert [r[1] for r in cache.execute("PRAGMA table_info(TagCache)")] == ["SOPInstanceUID", "Tag", "Value"]
    # MedSeg's skip table lives in a third file, never in CTK's
    assert (tmp_path / "db" / FILE_INDEX_FILENAME).is_file()
    assert "Files" not in ours["tables"]


def test_rows_look_like_ctk_inserted_them(tmp_path, shared_data):
    """What Slicer's ctkDICOMDatabase reads back: timestamps, dates, displayed fields, connections."""
    files = small_series(shared_data)
    db = DicomDatabase(tmp_path / "db")
    import_paths(db, [str(files[0].parent)], mode="serial")
    assert all(db.fileExistsAndUpToDate(str(p)) for p in files)  # InsertTimestamp (local) > file mtime
    raw = sqlite3.connect(tmp_path / "db" / DATABASE_FILENAME)
    stamps = raw.execute("SELECT InsertTimestamp, DisplayedFieldsUpdatedTimestamp, URL FROM Images").fetchall()
    assert len(stamps) == 8
    for inserted, displayed, url in stamps:
        assert len(inserted) == 23 and inserted[10] == "T"  # Qt ISO date-time with milliseconds
        assert displayed is not None and url == ""  # Slicer will not recompute displayed fields
    (patient,) = raw.execute("SELECT PatientsName, PatientID, PatientsBirthDate, DisplayedPatientsName, "
                             "DisplayedNumberOfStudies, Connections FROM Patients").fetchall()
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert patient[0] == str(ds.PatientName) and patient[1] == ds.PatientID
    assert patient[4] == 1 and patient[5] == '{"allow":[""],"deny":[]}'
    (series,) = raw.execute("SELECT SeriesNumber, Modality, DisplayedCount, DisplayedSize, "
                            "DisplayedFieldsUpdatedTimestamp FROM Series").fetchall()
    assert series[:4] == (int(ds.SeriesNumber), "MR", 8, f"{ds.Columns}x{ds.Rows}") and series[4]
    (study,) = raw.execute("SELECT StudyDate, DisplayedNumberOfSeries FROM Studies").fetchall()
    assert str(study[0]) == ds.StudyDate and study[1] == 1
    db.closeDatabase()


def test_schema_version_mismatch_is_a_user_error(tmp_path):
    DicomDatabase(tmp_path).closeDatabase()
    conn = sqlite3.connect(tmp_path / DATABASE_FILENAME)
    conn.execute("UPDATE SchemaInfo SET Version = '0.7.0'")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="0.7.0"):
        DicomDatabase(tmp_path)


# ----------------------------------------------------------------------------- real data


def test_real_data_counts_per_series_match_pydicom(real_import):
    db, summary, view, _rejected = real_import
    assert summary.failed == []
    assert summary.added == len(view) == db.imagesCount()
    groups: Dict[tuple, set] = defaultdict(set)
    for path, ds in view.items():
        uid = ds.get("SeriesInstanceUID", "") or ""
        groups[(uid, "" if uid else os.path.dirname(path))].add(path)
    db_series = {uid: set(db.filesForSeries(uid)) for uid in db_series_uids(db)}
    assert len(db_series) == len(groups) == db.seriesCount()
    for (uid, _folder), files in groups.items():
        series_uid = db.seriesForFile(next(iter(files)))
        if uid:
            assert series_uid == uid
        assert db_series[series_uid] == files
        assert db.fieldForSeries("DisplayedCount", series_uid) == str(len(files))


def db_series_uids(db: DicomDatabase) -> List[str]:
    return [s for p in db.patients() for st in db.studiesForPatient(p) for s in db.seriesForStudy(st)]


def test_real_data_non_dicom_files_are_skipped_and_counted(real_import, shared_data):
    db, summary, view, rejected = real_import
    assert summary.skipped_non_dicom == len(rejected)
    assert summary.files_seen == len(view) + len(rejected)
    assert summary.non_dicom_reasons["DICOMDIR"] == 1
    indexed = set(db.allFiles())
    for name in ("DIRFILE", "README-Study.txt", ".nii.gz", ".json"):
        matching = [p for p in rejected if p.endswith(name)]
        assert matching, name
        assert not indexed.intersection(matching)
    assert not summary.duplicates


def test_real_data_file_value_matches_pydicom(real_import):
    db, _summary, view, _rejected = real_import
    keys = [key for key, _vr in CACHED_TAGS.values()]
    for path, ds in list(view.items())[::3]:
        for key in keys:
            assert db.fileValue(path, key) == pydicom_tag_value(ds, key), (path, key)
    # tags the importer reads but does not cache come from the file header (slower, same answer)
    uncached = [key for key, _vr in HEADER_TAGS.values() if key not in keys]
    assert "0010,0010" in uncached and "0008,0020" in uncached
    for path, ds in list(view.items())[::40]:
        for key in uncached:
            assert db.fileValue(path, key) == pydicom_tag_value(ds, key), (path, key)
    path, ds = next(iter(view.items()))
    group, element = 0x0020, 0x0032
    assert db.fileValue(path, group, element) == pydicom_tag_value(ds, "0020,0032")
    assert db.fileValue(path, "0020,0032") == db.fileValue(path, "0020,0032".lower())
    # a tag outside the cache is read from the file (and then cached), still the pydicom string
    assert db.fileValue(path, "0018,1020") == pydicom_tag_value(ds, "0018,1020")
    assert db.fileValue(path, "0018,1020") == pydicom_tag_value(ds, "0018,1020")
    assert db.fileValue(path, "0009,1001") == ""
    assert db.fileValue("/no/such/file.dcm", "0010,0010") == ""


def test_real_data_hierarchy_and_displayed_fields(real_import):
    db, _summary, view, _rejected = real_import
    patients = db.patients()
    assert patients and all(p.isdigit() for p in patients)
    assert db.patientsCount() == len(patients)
    assert db.studiesCount() == sum(len(db.studiesForPatient(p)) for p in patients)
    for patient in patients:
        studies = db.studiesForPatient(patient)
        assert db.fieldForPatient("DisplayedNumberOfStudies", patient) == str(len(studies))
        assert db.nameForPatient(patient)
        for study in studies:
            series = db.seriesForStudy(study)
            assert db.fieldForStudy("DisplayedNumberOfSeries", study) == str(len(series))
            assert db.patientForStudy(study) == patient
            for uid in series:
                assert db.studyForSeries(uid) == study
                instances = db.instancesForSeries(uid)
                files = db.filesForSeries(uid)
                assert len(instances) == len(files) > 0
                assert db.instancesForSeries(uid, 1) == instances[:1]
                for sop, path in zip(instances, files):
                    assert db.fileForInstance(sop) == path
                    assert db.instanceForFile(path) == sop
                    assert db.seriesForFile(path) == uid
    philips = [p for p in view if "S2020" in p][0]
    series = db.seriesForFile(philips)
    assert db.descriptionForSeries(series) == "STD BRAIN 1MM, iDose"
    assert db.fieldForSeries("Modality", series) == "CT"
    assert db.fieldForSeries("DisplayedSize", series) == "512x512"
    assert db.fieldForSeries("no such column; DROP TABLE Images", series) == ""
    ge_mr = [p for p in view if "20180918GE" in p][0]
    patient = db.patientForStudy(db.studyForSeries(db.seriesForFile(ge_mr)))
    assert db.nameForPatient(patient) == "Test^Regression"
    assert db.displayedNameForPatient(patient) == "Test, Regression"
    assert db.fieldForPatient("DisplayedLastStudyDate", patient) == "2018-09-18"
    assert sorted(db.allFiles()) == sorted(view)


def test_real_data_listing_warns_about_known_traps(real_import):
    db, _summary, view, _rejected = real_import
    listing = {s["series_instance_uid"]: s for p in describe_database(db) for st in p["studies"] for s in st["series"]}
    assert sum(s["instances"] for s in listing.values()) == len(view)

    def warnings_for(fragment: str) -> str:
        path = next(p for p in view if fragment in p)
        return " | ".join(listing[db.seriesForFile(path)]["warnings"])

    ge_ct = warnings_for("dcm_qa_ct/In/GE/")  # tilt +18.5 degrees, steps 1.14 / 4.22 / 7.38 mm
    assert "unequal slice spacing" in ge_ct and "18.5 degrees" in ge_ct
    assert warnings_for("dcm_qa_ct/In/Philips/") == ""  # a regular stack: no warning
    assert "150 instances at 15 slice position(s)" in warnings_for("20180918GE/mr_0004")  # fMRI time series
    assert "missing ImagePositionPatient" in warnings_for("dcm_qa_uih_dti")  # UIH stores no IPP


def test_real_data_without_uids_gets_stable_derived_uids(real_import, tmp_path):
    db, summary, view, _rejected = real_import
    anonymised = sorted(p for p in view if "example_ct_dicom" in p)
    assert len(anonymised) == 20 and len(summary.derived_uid_files) == 20
    series = {db.seriesForFile(p) for p in anonymised}
    assert len(series) == 1 and next(iter(series)).startswith("2.25.")
    assert db.fileValue(anonymised[0], "0020,000E") == ""  # the cache keeps what the file says
    # SOP UIDs fall back to the file meta's MediaStorageSOPInstanceUID
    assert db.instanceForFile(anonymised[0]) == str(view[anonymised[0]].file_meta.MediaStorageSOPInstanceUID)
    other = DicomDatabase(tmp_path)
    import_paths(other, [os.path.dirname(anonymised[0])], mode="serial")
    assert {other.seriesForFile(p) for p in anonymised} == series
    other.closeDatabase()


def test_reimport_skips_unchanged_and_rereads_touched(tmp_path, shared_data):
    source = tmp_path / "in"
    source.mkdir()
    for path in small_series(shared_data):
        shutil.copy2(path, source / path.name)
    (source / "notes.txt").write_text("not dicom")
    db = DicomDatabase(tmp_path / "db")
    first = import_paths(db, [str(source)], mode="serial")
    assert (first.added, first.unchanged, first.skipped_non_dicom) == (8, 0, 1)
    again = import_paths(db, [str(source)], mode="serial")
    assert (again.added, again.updated, again.unchanged, again.skipped_non_dicom) == (0, 0, 8, 1)
    # rewrite one file with a new description (same SOPInstanceUID), keep another's bytes but touch it
    changed = source / small_series(shared_data)[0].name
    ds = pydicom.dcmread(changed)
    ds.SeriesDescription = "edited by the test"
    ds.save_as(changed)
    touched = source / small_series(shared_data)[1].name
    stamp = time.time() + 5
    os.utime(touched, (stamp, stamp))
    third = import_paths(db, [str(source)], mode="serial")
    assert (third.added, third.updated, third.unchanged) == (0, 2, 6)
    assert db.fileValue(str(changed), "0008,103E") == "edited by the test"
    assert db.imagesCount() == 8 and db.seriesCount() == 1
    db.closeDatabase()


def test_overlapping_inputs_index_each_file_once(tmp_path, shared_data):
    folder = shared_data / "hazen_relaxometry" / "T2" / "site3_ge"
    db = DicomDatabase(tmp_path / "db")
    summary = import_paths(db, [str(folder), str(folder / "plate4"), str(small_series(shared_data)[0])], mode="serial")
    assert (summary.files_seen, summary.added, summary.duplicates) == (16, 16, [])
    db.closeDatabase()


def test_threads_processes_and_serial_give_the_same_database(tmp_path, shared_data):
    folder = shared_data / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0004"
    results = {}
    for mode in ("serial", "threads", "processes"):
        db = DicomDatabase(tmp_path / mode)
        summary = import_paths(db, [str(folder)], mode=mode, workers=2)
        assert summary.mode == mode
        results[mode] = sorted(
            (p, db.instanceForFile(p), tuple(sorted(db.getCachedTags(db.instanceForFile(p)).items())))
            for p in db.allFiles()
        )
        db.closeDatabase()
    assert results["serial"] == results["threads"] == results["processes"]
    assert len(results["serial"]) == 150


# ----------------------------------------------------------------------------- bad files


def make_bad_corpus(shared_data: Path, folder: Path) -> Dict[str, Path]:
    """Bad and odd files made from real ones, next to good files of the same series."""
    ct = sorted((shared_data / "dcm_qa_ct" / "In" / "GE").glob("*.dcm"))
    good = folder / "good"
    good.mkdir(parents=True)
    for path in ct[:5]:
        shutil.copy2(path, good / path.name)
    files: Dict[str, Path] = {}
    data = ct[5].read_bytes()
    files["truncated_pixels"] = folder / "truncated_pixels.dcm"
    files["truncated_pixels"].write_bytes(data[: len(data) * 6 // 10])
    files["truncated_header"] = folder / "truncated_header.dcm"
    files["truncated_header"].write_bytes(data[:700])
    files["garbage"] = folder / "garbage.dcm"
    files["garbage"].write_bytes(bytes(range(256)) * 40)
    files["empty"] = folder / "empty.dcm"
    files["empty"].write_bytes(b"")
    ds = pydicom.dcmread(ct[6])
    del ds.PixelData
    files["no_pixels"] = folder / "no_pixels.dcm"
    ds.save_as(files["no_pixels"])
    files["duplicate"] = folder / "zz_duplicate_of_first.dcm"
    shutil.copy2(ct[0], files["duplicate"])
    ds = pydicom.dcmread(ct[7])
    del ds.ImagePositionPatient
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["medseg-t1"])
    files["no_position"] = folder / "no_position.dcm"
    ds.save_as(files["no_position"])
    mr = sorted((shared_data / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0004").glob("*.dcm"))[0]
    ds = pydicom.dcmread(mr)
    ds.SeriesInstanceUID = pydicom.dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["medseg-t2"])
    files["other_matrix"] = folder / "other_matrix.dcm"
    ds.save_as(files["other_matrix"])
    return files


def test_bad_files_are_reported_and_import_continues(tmp_path, shared_data):
    folder = tmp_path / "bad"
    files = make_bad_corpus(shared_data, folder)
    before = checksums(folder)
    db = DicomDatabase(tmp_path / "db")
    summary = import_paths(db, [str(folder)], mode="serial")
    failed = dict(summary.failed)
    assert set(failed) == {str(files["truncated_pixels"]), str(files["truncated_header"])}
    assert "truncated pixel data" in failed[str(files["truncated_pixels"])]
    assert "truncated" in failed[str(files["truncated_header"])]
    assert all("\n" not in reason for reason in failed.values())
    assert summary.skipped_non_dicom == 2  # garbage bytes, empty file
    assert summary.added == 5 + 3  # good files, no pixel data, no position, other matrix
    assert summary.duplicate_sop_instance_uid
    assert [d[2] for d in summary.duplicates] == [str(files["duplicate"])]
    assert summary.no_pixel_data == [str(files["no_pixels"])]
    assert summary.missing_position == [str(files["no_position"])]
    assert any("duplicate SOPInstanceUID" in w for w in summary.warnings())
    assert before == checksums(folder), "the input folder was modified"
    listing = describe_database(db)
    (series,) = [s for p in listing for st in p["studies"] for s in st["series"]]  # type: ignore[index]
    text = " | ".join(series["warnings"])
    for expected in ("mixed matrix sizes", "missing ImagePositionPatient", "multiple orientations",
                     "duplicate SOPInstanceUID", "no pixel data"):
        assert expected in text
    # unchanged bad files are reported again on re-import without being read
    again = import_paths(db, [str(folder)], mode="serial")
    assert dict(again.failed) == failed and again.skipped_non_dicom == 2 and again.unchanged == 9
    db.closeDatabase()


def test_cancelled_import_keeps_a_consistent_database(tmp_path, shared_data):
    from MedSegLib.errors import OperationCancelled

    folder = shared_data / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0005"
    db = DicomDatabase(tmp_path / "db")

    def cancel_after_first_chunk(done: int, total: int) -> None:
        if done >= 64:
            raise OperationCancelled()

    with pytest.raises(OperationCancelled):
        import_paths(db, [str(folder)], mode="serial", chunk_size=32, commit_every=32,
                     progress=cancel_after_first_chunk)
    (series,) = db_series_uids(db)
    indexed = db.imagesCount()
    assert 0 < indexed < 150
    assert db.fieldForSeries("DisplayedCount", series) == str(indexed)  # committed part is complete
    resumed = import_paths(db, [str(folder)], mode="serial")
    assert (resumed.unchanged, resumed.added) == (indexed, 150 - indexed)
    assert db.fieldForSeries("DisplayedCount", series) == "150"
    db.closeDatabase()


def test_header_reader_reports_reasons(tmp_path, shared_data):
    path = tmp_path / "cut.dcm"
    data = sorted((shared_data / "dcm_qa_ct" / "In" / "GE").glob("*.dcm"))[0].read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(Exception, match=r"truncated pixel data: \(7FE0,0010\) declares \d+ bytes"):
        read_header(str(path))
    record = read_header(str(sorted((shared_data / "dcm_qa_ct" / "In" / "GE").glob("*.dcm"))[0]))
    assert record.has_pixel_data and record.values["0008,0060"] == "CT"


@pytest.mark.parametrize("variant", ["implicit", "deflated", "bare", "utf8", "latin1", "japanese"])
def test_header_reader_matches_pydicom_on_encodings(tmp_path, shared_data, variant):
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(small_series(shared_data)[0])
    path = tmp_path / f"{variant}.dcm"
    if variant == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, implicit_vr=True, little_endian=True)
    elif variant == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path)
    elif variant == "bare":  # no preamble, no file meta (DCMTK and so Slicer accept these)
        with open(path, "wb") as raw:
            fp = DicomFileLike(raw)
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_dataset(fp, ds)
    else:
        charset, name = {"utf8": ("ISO_IR 192", "Müller^Jörg"), "latin1": ("ISO_IR 100", "Müller^Jörg"),
                         "japanese": ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎")}[variant]
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        ds.PatientName = name
        ds.SeriesDescription = "Série Ω" if variant == "utf8" else ds.SeriesDescription
        ds.save_as(path)
    reference = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    record = read_header(str(path))
    assert record.has_pixel_data
    for key, _vr in HEADER_TAGS.values():
        expected = "" if variant == "bare" and key.startswith("0002") else pydicom_tag_value(reference, key)
        assert record.values.get(key, "") == expected, key


# ----------------------------------------------------------------------------- layout templates


def header_outcome(path: Path, use_layout: bool) -> object:
    """What read_header says about a file: its record, or the kind and text of its error."""
    try:
        record = read_header(str(path), use_layout=use_layout)
    except (header_reader.NotDicomError, header_reader.DicomReadError) as error:
        return type(error).__name__, str(error)
    cached = {key: record.values[key] for key, _vr in CACHED_TAGS.values() if key in record.values}
    assert record.cache_json is not None and json.loads(record.cache_json) == cached  # the tag-cache rows
    return record.values, record.has_pixel_data, record.media_sop_instance_uid


def test_layout_templates_give_the_same_records_as_a_full_walk(shared_data, monkeypatch):
    """Every shared file in import order, with and without layout templates: identical records and errors."""
    counts = {"walked": 0, "skipped": 0}
    original = header_reader._walk_dataset

    def counting(*args):
        walk = original(*args)
        counts["walked"] += walk.walked
        counts["skipped"] += walk.skipped
        return walk

    monkeypatch.setattr(header_reader, "_walk_dataset", counting)
    vars(header_reader._LAYOUTS).clear()
    paths = sorted(p for p in shared_data.rglob("*") if p.is_file())
    plain = [header_outcome(p, use_layout=False) for p in paths]
    assert counts == {"walked": 0, "skipped": 0}
    templated = [header_outcome(p, use_layout=True) for p in paths]
    for path, expected, got in zip(paths, plain, templated):
        assert got == expected, path
    # the templates were really used: most elements of most files were jumped over, not walked
    assert counts["skipped"] > 5 * counts["walked"] > 0


def warm_layout(files: List[Path]) -> None:
    vars(header_reader._LAYOUTS).clear()
    for path in files:
        read_header(str(path))
    layout = header_reader._LAYOUTS.layout
    assert layout is not None and not layout.fresh and layout.segments


def patched_copy(source: Path, target: Path, tag: int, new_value: bytes) -> None:
    """Copy with one element's value bytes replaced in place (same length, nothing else moves)."""
    raw = pydicom.dcmread(source, stop_before_pixels=True, defer_size=None).get_item(tag)
    assert len(new_value) == raw.length
    data = bytearray(source.read_bytes())
    data[raw.value_tell : raw.value_tell + raw.length] = new_value
    target.write_bytes(bytes(data))


def test_layout_templates_follow_files_that_differ_from_the_template(tmp_path, shared_data):
    """Files of a series whose bytes differ where the template's previous files agreed: same result as a full walk.

    The series: 10 GE MR files, given a Latin-1 institution name (so that text decoding depends on the
    character set) and a body part written as LO instead of the dictionary's CS (the file's VR decides how a
    value is decoded). Each variant of the 9th file is read right after the template learnt the first 8.
    """
    series = tmp_path / "series"
    series.mkdir()
    for source in sorted((shared_data / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0004").glob("*.dcm"))[:10]:
        ds = pydicom.dcmread(source)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.InstitutionName = "Klinik Ärzte Zürich"
        ds.add_new(0x00180015, "LO", "Schädel")
        ds.save_as(series / source.name)
    files = sorted(series.iterdir())
    base = files[8]
    header = pydicom.dcmread(base, stop_before_pixels=True, defer_size=None)
    variants: Dict[str, Path] = {}
    variants["value_same_length"] = tmp_path / "value_same_length.dcm"
    patched_copy(base, variants["value_same_length"], 0x00080080, b"X" * header.get_item(0x00080080).length)
    private = next(t for t in header.keys() if t.group == 0x0019 and t.element > 0x1000)
    variants["private_value"] = tmp_path / "private_value.dcm"
    patched_copy(base, variants["private_value"], private, b"\x01" * header.get_item(private).length)
    # same bytes everywhere but the character set: the institution name now decodes differently
    charset_element = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"  # (0008,0005) CS, 10 bytes, explicit VR LE
    assert base.read_bytes().count(charset_element) == 1
    variants["other_charset_same_bytes"] = tmp_path / "other_charset_same_bytes.dcm"
    variants["other_charset_same_bytes"].write_bytes(
        base.read_bytes().replace(charset_element, charset_element.replace(b"100", b"192"))
    )
    edits = {
        "longer_description": lambda ds: setattr(ds, "StudyDescription", "a much longer study description"),
        "removed_element": lambda ds: delattr(ds, "InstitutionName"),
        "added_private": lambda ds: (ds.add_new(0x00110010, "LO", "MEDSEG TEST"), ds.add_new(0x00111001, "LO", "x")),
        "other_charset": lambda ds: (setattr(ds, "SpecificCharacterSet", "ISO_IR 192"),
                                     setattr(ds, "PatientName", "Müller^Jörg")),
    }
    for name, edit in edits.items():
        ds = pydicom.dcmread(base)
        edit(ds)
        variants[name] = tmp_path / f"{name}.dcm"
        ds.save_as(variants[name])
    variants["truncated_in_header"] = tmp_path / "truncated_in_header.dcm"
    variants["truncated_in_header"].write_bytes(base.read_bytes()[: header.get_item(0x0020000D).value_tell + 3])
    for name, path in variants.items():
        warm_layout(files[:8])
        expected = header_outcome(path, use_layout=False)
        assert header_outcome(path, use_layout=True) == expected, name
        if name == "truncated_in_header":
            assert expected[0] == "DicomReadError" and "truncated" in expected[1]  # type: ignore[index]
            continue
        values = expected[0]  # type: ignore[index]
        if name == "other_charset_same_bytes":  # Latin-1 bytes read as UTF-8: replacement characters
            assert values["0008,0080"] == "Klinik \ufffdrzte Z\ufffdrich"
            assert values["0018,0015"] == "Sch\ufffddel"
            continue
        reference = pydicom.dcmread(path, stop_before_pixels=True)
        for key, _vr in HEADER_TAGS.values():
            assert values.get(key, "") == pydicom_tag_value(reference, key), (name, key)
    plain = header_outcome(files[8], use_layout=False)[0]
    assert plain["0008,0080"] == "Klinik Ärzte Zürich" and plain["0018,0015"] == "Schädel"  # type: ignore[index]
    # and the series itself after all that: the next file still reads the same both ways
    warm_layout(files[:8])
    assert header_outcome(files[9], use_layout=True) == header_outcome(files[9], use_layout=False)


def test_tag_cache_holds_the_cached_tags_and_answers_the_others_from_the_file(tmp_path, shared_data, monkeypatch):
    files = small_series(shared_data)
    rows = {}
    for json_rows in (True, False):  # SQLite's json_each, and plain rows (SQLite builds without JSON)
        monkeypatch.setattr("MedSegLib.dicom.indexer._sqlite_has_json", lambda conn, value=json_rows: value)
        db = DicomDatabase(tmp_path / f"db-{json_rows}")
        import_paths(db, [str(files[0].parent)], mode="serial")
        sop = db.instanceForFile(str(files[0]))
        rows[json_rows] = db.getCachedTags(sop)
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        present = {key for key, _vr in CACHED_TAGS.values() if pydicom_tag_value(ds, key)}
        assert set(rows[json_rows]) == present and len(present) >= 15
        assert all(rows[json_rows][key] == pydicom_tag_value(ds, key) for key in present)
        # a header tag outside the cache: read from the file, then cached as CTK does
        assert "0010,0010" not in rows[json_rows]
        assert db.fileValue(str(files[0]), "0010,0010") == pydicom_tag_value(ds, "0010,0010") != ""
        assert db.getCachedTags(sop)["0010,0010"] == pydicom_tag_value(ds, "0010,0010")
        db.closeDatabase()
    assert rows[True] == rows[False]


def test_cache_json_round_trips_and_refuses_what_sqlite_json_would_change():
    values = {"0008,103E": 'say "hi" \\ Jörg', "0020,0032": "1\\2\\3", "0010,0010": "not cached"}
    assert json.loads(cache_json(values)) == {"0008,103E": 'say "hi" \\ Jörg', "0020,0032": "1\\2\\3"}
    assert cache_json({}) == "{}"
    assert cache_json({"0008,103E": "a\x00b"}) is None
    assert cache_json({"0008,103E": "\ud800"}) is None


# ----------------------------------------------------------------------------- copy, remove


def test_copy_mode_and_remove_series(tmp_path, shared_data):
    originals = small_series(shared_data)
    db = DicomDatabase(tmp_path / "db")
    summary = import_paths(db, [str(originals[0].parent)], copy_files=True, mode="serial")
    assert summary.copied == 8
    (series,) = db_series_uids(db)
    stored = db.filesForSeries(series)
    storage = (tmp_path / "db" / "dicom").resolve().as_posix()
    assert all(p.startswith(storage + "/") and p.endswith(".dcm") for p in stored)
    raw = sqlite3.connect(tmp_path / "db" / DATABASE_FILENAME).execute("SELECT Filename FROM Images").fetchall()
    assert all(name.startswith("dicom/") for (name,) in raw)  # relative inside the database, like CTK
    assert sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in stored) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in originals
    )
    assert db.removeSeries(series)
    assert db.imagesCount() == db.seriesCount() == db.studiesCount() == db.patientsCount() == 0
    assert not any((tmp_path / "db" / "dicom").rglob("*.dcm"))
    assert all(p.is_file() for p in originals)
    db.closeDatabase()


def test_remove_series_in_place_keeps_files_and_other_series(tmp_path, shared_data):
    folder = shared_data / "hazen_relaxometry" / "T2" / "site3_ge"
    db = DicomDatabase(tmp_path / "db")
    import_paths(db, [str(folder)], mode="serial")
    (series,) = db_series_uids(db)  # plate4 and plate5 share one series
    files = db.filesForSeries(series)
    assert len(files) == 16
    assert db.removeSeries(series, clearCachedTags=True)
    assert db.imagesCount() == 0 and db.patientsCount() == 0
    assert all(os.path.isfile(p) for p in files)
    cache = sqlite3.connect(tmp_path / "db" / TAG_CACHE_FILENAME)
    assert cache.execute("SELECT COUNT(*) FROM TagCache").fetchone() == (0,)
    again = import_paths(db, [str(folder)], mode="serial")  # removed files are indexed again
    assert again.added == 16
    db.closeDatabase()


def test_human_readable_patient_name():
    assert human_readable_patient_name("Test^Regression") == "Test, Regression"
    assert human_readable_patient_name("Doe^John^A^Dr^Jr") == "Doe, John A, Jr (Dr)"
    assert human_readable_patient_name("Anon") == "Anon"
    assert human_readable_patient_name("") == ""


# ----------------------------------------------------------------------------- command line


def test_cli_import_and_list_json(tmp_path, shared_data, capsys):
    db_dir = tmp_path / "db"
    folder = shared_data / "hazen_relaxometry" / "T1" / "site3_ge"
    assert main(["dicom", "import", str(folder), "--db", str(db_dir), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == 12 and summary["failed"] == [] and summary["duplicate_sop_instance_uid"] is False
    assert main(["dicom", "import", str(folder), "--db", str(db_dir), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged_skipped"] == 12
    assert main(["dicom", "list", "--db", str(db_dir), "--json"]) == 0
    patients = json.loads(capsys.readouterr().out)
    series = [s for p in patients for st in p["studies"] for s in st["series"]]
    assert len(series) == 6 and all(s["instances"] == 2 and s["modality"] == "MR" for s in series)
    assert main(["dicom", "list", "--db", str(db_dir)]) == 0
    assert "instance(s)" in capsys.readouterr().out


def test_cli_text_summary_and_env_default(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.setenv("MEDSEG_DICOM_DB", str(tmp_path / "envdb"))
    folder = shared_data / "dcm_qa_nih" / "In" / "20180918Si"
    assert main(["dicom", "import", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "added: 8" in out and "non-DICOM (skipped): 5" in out  # the README-*.txt files
    assert (tmp_path / "envdb" / DATABASE_FILENAME).is_file()


def test_cli_user_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    assert main(["dicom", "import", str(missing), "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and str(missing) in err
    assert not (tmp_path / "db").exists()
    assert main(["dicom", "list", "--db", str(tmp_path / "nodb"), "--json"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / DATABASE_FILENAME).write_bytes(b"this is not an SQLite file" * 100)
    assert main(["dicom", "list", "--db", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and DATABASE_FILENAME in err
