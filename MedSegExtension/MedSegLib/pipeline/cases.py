"""Cases of a run: what each one reads (folder, volume file, database series/study, PACS study) and its hash.

Cases are resolved once, in the submitting process, so every worker (local or on a Dask cluster) gets
plain paths and UIDs and reads the data where it is. The input hash (file names and contents) decides
whether an earlier complete result can be reused.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from MedSegLib.errors import UserInputError


@dataclass
class CaseSpec:
    """One unit of work: a study (or series, or folder) and how to read it."""

    id: str
    inputs: List[Dict[str, Any]]
    label: str = ""
    input_hash: str = ""
    hash_error: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "inputs": self.inputs,
            "label": self.label,
            "input_hash": self.input_hash,
            "hash_error": self.hash_error,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> CaseSpec:
        return cls(
            data["id"], data["inputs"], data.get("label", ""), data.get("input_hash", ""), data.get("hash_error", "")
        )


def safe_id(text: str) -> str:
    """A folder-safe case id ("Patient 1/CT" -> "Patient_1_CT")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "case"


def _unique(cases: List[CaseSpec]) -> List[CaseSpec]:
    seen: Dict[str, int] = {}
    for case in cases:
        base = case.id
        if base in seen:
            seen[base] += 1
            case.id = f"{base}-{seen[base]}"
        else:
            seen[base] = 1
    return cases


def _files_of(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def hash_files(files: Sequence[Path], root: Optional[Path] = None) -> str:
    """SHA-256 over relative names and contents, in sorted order (the same data -> the same hash)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        name = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name
        digest.update(name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\1")
    return digest.hexdigest()


def compute_input_hash(case: CaseSpec) -> None:
    """Fill ``case.input_hash``; an unreadable input gets an error note (the case will fail when run)."""
    digest = hashlib.sha256()
    try:
        for item in case.inputs:
            kind = item["kind"]
            if kind == "path":
                path = Path(item["path"])
                if not path.exists():
                    raise FileNotFoundError(f"{path}: input not found")
                digest.update(hash_files(_files_of(path), path if path.is_dir() else None).encode())
            elif kind == "series":
                from MedSegLib.dicom.database import DicomDatabase

                with DicomDatabase(item["db"], create=False) as database:
                    files = [Path(f) for f in database.filesForSeries(item["uid"])]
                digest.update(item["uid"].encode() + hash_files(files).encode())
            elif kind == "pacs":  # the archive's own identity: study UID, its image series and their sizes
                series = "|".join(f"{s['uid']}:{s.get('instances', '')}" for s in item.get("series", []))
                digest.update(f"{item['node']}|{item['study_uid']}|{series}".encode())
    except (OSError, UserInputError) as error:
        case.hash_error = str(error)
        case.input_hash = ""
        return
    case.input_hash = digest.hexdigest()


def cases_from_paths(paths: Sequence[str], db: Optional[str] = None) -> List[CaseSpec]:
    """CLI INPUTs: each folder or volume file is one case; a series UID with ``db`` is one case."""
    from MedSegLib.inputs import looks_like_uid

    cases = []
    for spec in paths:
        path = Path(spec)
        if not path.exists() and looks_like_uid(spec):
            if not db:
                raise UserInputError(f"series UID {spec} given without --db DIR")
            cases.append(
                CaseSpec(safe_id(f"series_{spec[-12:]}"), [{"kind": "series", "uid": spec, "db": str(db)}], spec)
            )
            continue
        resolved = path.resolve()
        name = resolved.name
        for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        cases.append(CaseSpec(safe_id(name), [{"kind": "path", "path": str(resolved)}], str(path)))
    return cases


_DB_COLUMNS = {
    "PatientID": "p.PatientID",
    "PatientName": "p.PatientsName",
    "StudyInstanceUID": "st.StudyInstanceUID",
    "StudyDate": "st.StudyDate",
    "StudyDescription": "st.StudyDescription",
    "SeriesInstanceUID": "se.SeriesInstanceUID",
    "SeriesDescription": "se.SeriesDescription",
    "Modality": "se.Modality",
    "SeriesNumber": "se.SeriesNumber",
}


def cases_from_database(path: str, query: Optional[Dict[str, Any]] = None, group_by: str = "series") -> List[CaseSpec]:
    """Series (or studies) of a MedSeg/Slicer DICOM database matching ``query`` (``*`` wildcards)."""
    from MedSegLib.dicom.database import DicomDatabase

    if not Path(path).is_dir():
        raise UserInputError("DICOM database folder not found", path)
    where, args = [], []
    for key, value in (query or {}).items():
        if key not in _DB_COLUMNS:
            raise UserInputError(f"unknown database query key {key!r} (known: {', '.join(_DB_COLUMNS)})")
        text = str(value)
        if "*" in text or "?" in text:
            where.append(f"{_DB_COLUMNS[key]} LIKE ?")
            args.append(text.replace("*", "%").replace("?", "_"))
        else:
            where.append(f"{_DB_COLUMNS[key]} = ?")
            args.append(text)
    sql = (
        "SELECT se.SeriesInstanceUID, se.StudyInstanceUID, se.Modality, se.SeriesNumber, se.SeriesDescription, "
        "p.PatientID FROM Series se JOIN Studies st ON st.StudyInstanceUID = se.StudyInstanceUID "
        "JOIN Patients p ON p.UID = st.PatientsUID"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY p.PatientID, st.StudyDate, se.SeriesNumber"
    )
    with DicomDatabase(path, create=False) as database:
        rows = database.connection().execute(sql, args).fetchall()
    cases: List[CaseSpec] = []
    if group_by == "study":
        studies: Dict[str, CaseSpec] = {}
        for series_uid, study_uid, _modality, _number, _description, patient in rows:
            case = studies.get(study_uid)
            if case is None:
                case = CaseSpec(safe_id(f"{patient or 'patient'}_{study_uid[-8:]}"), [], f"study {study_uid}")
                studies[study_uid] = case
                cases.append(case)
            case.inputs.append({"kind": "series", "uid": series_uid, "db": str(path)})
    else:
        for series_uid, _study, modality, number, description, patient in rows:
            label = f"{patient or ''} {modality or ''} {number or ''} {description or ''}".strip()
            name = safe_id(f"{patient or 'patient'}_{modality or 'series'}{number or ''}_{series_uid[-8:]}")
            cases.append(CaseSpec(name, [{"kind": "series", "uid": series_uid, "db": str(path)}], label))
    return cases


#: series a pipeline may have sent back (or a viewer stored) that are no input images: left out of PACS cases,
#: so a study that received its own DICOM SEG keeps its input hash and is skipped on re-run
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "PLAN"})


def pacs_node(name: str, settings: Optional[str] = None) -> Any:
    """A configured PACS node by name, from ``settings`` (a PACS nodes JSON file) or MedSeg's settings file."""
    try:
        from MedSegLib.pacs import nodes
    except ImportError as error:
        raise UserInputError(f"PACS access is not available in this installation ({error})") from None
    if not settings:
        return nodes.resolve_node(name)
    path = Path(settings).expanduser()
    if not path.is_file():
        raise UserInputError("PACS settings file not found", path)
    known = nodes.load_nodes(path)
    if name not in known:
        raise UserInputError(f"no PACS node named {name!r} (nodes: {', '.join(sorted(known)) or 'none'})", path)
    return known[name]


def _pacs_search(node: Any, level: str, filters: Dict[str, str]) -> List[Dict[str, str]]:
    """C-FIND, or QIDO-RS when the node has a DICOMweb URL."""
    if node.web_url:
        from MedSegLib.pacs import dicomweb

        return dicomweb.search(node, level, filters)
    from MedSegLib.pacs import dimse

    return dimse.find(node, level, filters)


def cases_from_pacs(
    node_name: str, query: Optional[Dict[str, Any]] = None, settings: Optional[str] = None
) -> List[CaseSpec]:
    """One case per study a PACS query (C-FIND or QIDO-RS) returns; retrieval happens in the worker.

    Each case lists the study's image series (a ``Modality`` in the query keeps only that modality) with
    their instance counts: they make the input hash, and the load step retrieves exactly those series.
    """
    node = pacs_node(node_name, settings)
    filters = {key: str(value) for key, value in (query or {}).items()}
    wanted_modality = str(filters.get("Modality") or filters.get("modality") or "").upper()
    cases = []
    for study in _pacs_search(node, "study", filters):
        uid = study.get("StudyInstanceUID", "")
        if not uid:
            continue
        series = []
        for row in _pacs_search(node, "series", {"study_uid": uid}):
            modality = str(row.get("Modality", "")).upper()
            if modality in NON_IMAGE_MODALITIES or (wanted_modality and modality != wanted_modality):
                continue
            instances = str(row.get("NumberOfSeriesRelatedInstances", ""))
            series.append({"uid": row.get("SeriesInstanceUID", ""), "modality": modality, "instances": instances})
        series.sort(key=lambda s: s["uid"])
        label = f"{study.get('PatientID', '')} {study.get('StudyDate', '')} {study.get('StudyDescription', '')}"
        item: Dict[str, Any] = {"kind": "pacs", "node": node_name, "study_uid": uid, "series": series}
        if settings:
            item["settings"] = str(Path(settings).expanduser().resolve())
        cases.append(CaseSpec(safe_id(f"{study.get('PatientID') or 'study'}_{uid[-8:]}"), [item], label.strip()))
    return cases


def resolve_cases(
    inputs: Dict[str, Any], cli_inputs: Sequence[str] = (), db: Optional[str] = None, hash_inputs: bool = True
) -> List[CaseSpec]:
    """Every case of a run: the pipeline's ``inputs:`` section plus the command line's INPUTs."""
    cases: List[CaseSpec] = []
    cases += cases_from_paths(inputs.get("folders", []))
    if inputs.get("glob"):
        cases += cases_from_paths(sorted(p for p in globbing.glob(inputs["glob"]) if Path(p).exists()))
    if inputs.get("dicom_db"):
        source = inputs["dicom_db"]
        cases += cases_from_database(source["path"], source.get("query"), source.get("group_by", "series"))
    if inputs.get("pacs"):
        source = inputs["pacs"]
        cases += cases_from_pacs(source["node"], source.get("query"), source.get("settings"))
    cases += cases_from_paths(cli_inputs, db)
    cases = _unique(cases)
    if hash_inputs:
        for case in cases:
            compute_input_hash(case)
    return cases
