"""Headless DICOM import: folder walk, parallel header reading, database insertion, import summary.

Headers are read by ``MedSegLib.dicom.header_reader`` (a byte walker, see there); this module walks
folders, skips files whose path, size and mtime did not change since the last import, reads headers
in a process pool (or threads inside Slicer), and writes what CTK's ``ctkDICOMDatabase::insert`` writes
(Patients, Studies, Series, Images, tag cache) in few large transactions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
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
from MedSegLib.dicom.header_reader import (
    CACHED_KEYS,
    DicomReadError,
    NotDicomError,
    read_header,
)

if TYPE_CHECKING:
    from MedSegLib.dicom.database import DicomDatabase

# --------------------------------------------------------------------------------------
# Folder walk and parallel parsing
# --------------------------------------------------------------------------------------

#: (path, size, mtime_ns)
FileEntry = Tuple[str, int, int]
#: (path, size, mtime_ns, kind, payload); kind "ok" -> (values, has_pixel_data, media_sop_uid, cache_json(values)),
#: else the reason
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
            payload = (record.values, record.has_pixel_data, record.media_sop_instance_uid, record.cache_json)
            results.append((path, size, mtime, KIND_OK, payload))
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
    entries: Sequence[FileEntry], mode: str, workers: int, chunk_size: int = 256, ahead: int = 0
) -> Iterator[List[ParseResult]]:
    """Parse files in chunks, serially or in a pool; yields chunks in submission order.

    Up to ``max(ahead, 4 * workers * chunk_size)`` files are in flight, so that workers keep reading while
    the caller writes a batch into the database. Each worker keeps its own layout template (see
    ``header_reader``), which is why chunks are runs of consecutive files.
    """
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
        window = max(workers * 4, -(-ahead // chunk_size) + workers * 2)
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
        # stale rows of an instance indexed again (also tags Slicer cached) are deleted before its new rows; an
        # empty cache (a new database) needs no deletes
        self.cache_had_rows = conn.execute("SELECT 1 FROM tc.TagCache LIMIT 1").fetchone() is not None
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
        self.json_rows = _sqlite_has_json(conn)
        self.prefix = db.databaseDirectory() + "/"  # Images.Filename is relative inside the database folder

    def _remove_instance(self, sop: str) -> None:
        conn = self.conn
        row = conn.execute("SELECT SeriesInstanceUID, Filename FROM Images WHERE SOPInstanceUID = ?", (sop,)).fetchone()
        if row:
            self.touched_series.add(row[0])
            conn.execute("DELETE FROM Images WHERE SOPInstanceUID = ?", (sop,))
            if row[1] and not os.path.isabs(row[1]):
                self.db._remove_copy(self.db.absolute_path(row[1]))
        conn.execute("DELETE FROM tc.TagCache WHERE SOPInstanceUID = ?", (sop,))
        self.owner.pop(sop, None)

    def add_chunk(self, results: List[ParseResult]) -> None:
        conn = self.conn
        summary = self.summary
        tag_rows: List[Tuple[str, str, str]] = []
        json_rows: List[Tuple[str, str]] = []
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
                values, has_pixels, media_sop, text = payload  # type: ignore[misc]
                status, sop = self._add_instance(path, values, has_pixels, media_sop, image_rows)
                if status == STATUS_INDEXED:
                    if text is not None and self.json_rows:
                        json_rows.append((sop, text))
                    else:
                        tag_rows.extend((sop, key, values[key]) for key in CACHED_KEYS if key in values)
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
            # the TagCache primary-key index is the largest cost of an import: rows go in sorted, and with
            # SQLite's json_each one statement per instance expands its {tag: value} object into rows
            if self.cache_had_rows:
                conn.executemany(
                    "DELETE FROM tc.TagCache WHERE SOPInstanceUID = ?", [(row[0],) for row in image_rows]
                )
            json_rows.sort()
            conn.executemany("INSERT INTO tc.TagCache SELECT ?1, key, value FROM json_each(?2)", json_rows)
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
        image_rows: List[Tuple[str, str, str, str, str, str]],
    ) -> Tuple[str, str]:
        get = values.get
        derived = False
        sop = get("0008,0018") or media_sop
        if not sop:
            sop = _derived_uid("sop", path)
            derived = True
        study = get("0020,000D", "")
        series = get("0020,000E", "")
        folder = "" if study and series else os.path.dirname(path)
        if not study:
            study = _derived_uid(
                "study",
                folder,
                get("0010,0020", ""),
                get("0010,0010", ""),
                get("0010,0030", ""),
                get("0008,0020", ""),
                get("0008,0030", ""),
                get("0020,0010", ""),
                get("0008,0050", ""),
            )
            derived = True
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
        # displayed fields are recounted in finish(): stamp them so Slicer does not redo it per instance
        if not (filename.startswith("/") and "/." not in filename and "//" not in filename):
            filename = self.db.internal_path(filename)
        elif filename.startswith(self.prefix):  # an absolute, normalised path (walk_files): no abspath needed
            filename = filename[len(self.prefix) :]
        image_rows.append((sop, filename, "", series, self.timestamp, self.displayed_timestamp))
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


def _sqlite_has_json(conn: sqlite3.Connection) -> bool:
    """SQLite's JSON functions are built in since 3.38 (Python 3.11+ ships newer); older builds may lack them."""
    try:
        return conn.execute("""SELECT COUNT(*) FROM json_each('{"a":"b"}')""").fetchone()[0] == 1
    except sqlite3.Error:
        return False


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
    chunk_size: int = 256,
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
    db.record_cached_tags(CACHED_KEYS)
    try:
        pending: List[ParseResult] = []
        try:
            for results in iter_parsed(to_parse, summary.mode, summary.workers, chunk_size, ahead=commit_every):
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
