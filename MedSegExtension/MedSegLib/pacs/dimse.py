"""DIMSE services against a PACS: C-ECHO, C-FIND, C-GET, C-MOVE (with MedSeg's own storage SCP) and C-STORE.

Every association uses the node's timeout for TCP connect, association set-up and silent networks, and a longer
one for DIMSE responses, so a dead or wrong server is an error within seconds, never a hang. Failures are diagnosed
(connection refused, no DICOM answer, association rejected and why, unknown move destination) and raised as
``PacsError`` naming the node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from MedSegLib.errors import UserInputError
from MedSegLib.pacs.nodes import PacsError, PacsNode
from MedSegLib.pacs.receive import DatabaseReceiver
from MedSegLib.progress import ProgressCallback, report

LOG = logging.getLogger(__name__)

LEVELS = ("patient", "study", "series")
#: return keys per level (empty = ask the server to return the attribute)
RETURN_KEYS: Dict[str, Tuple[str, ...]] = {
    "patient": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "study": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "StudyID",
        "PatientName",
        "PatientID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "Modality",
        "SeriesDate",
        "NumberOfSeriesRelatedInstances",
    ),
}
#: user filter name -> (DICOM keyword, level it belongs to)
FILTERS: Dict[str, Tuple[str, str]] = {
    "patient_id": ("PatientID", "patient"),
    "patient_name": ("PatientName", "patient"),
    "birth_date": ("PatientBirthDate", "patient"),
    "study_uid": ("StudyInstanceUID", "study"),
    "study_date": ("StudyDate", "study"),
    "accession_number": ("AccessionNumber", "study"),
    "study_description": ("StudyDescription", "study"),
    "modality": ("Modality", "series"),
    "series_uid": ("SeriesInstanceUID", "series"),
    "series_description": ("SeriesDescription", "series"),
}
STATUS_SUCCESS = 0x0000
STATUS_PENDING = (0xFF00, 0xFF01)
MOVE_DESTINATION_UNKNOWN = 0xA801
# Storage SOP classes MedSeg must be able to receive by C-GET (at most 127 fit beside the query context).
_ESSENTIAL_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
)
_RECEIVE_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old archives)
)


@dataclasses.dataclass
class RetrieveResult:
    """What a C-GET / C-MOVE / WADO-RS retrieve brought into the database."""

    database: str
    level: str
    uid: str
    received: int = 0
    failed: int = 0
    warnings: int = 0
    series_uids: List[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    import_summary: Any = None

    def to_dict(self) -> Dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "import_summary"}
        data["indexed"] = self.import_summary.added + self.import_summary.updated if self.import_summary else 0
        return data


@dataclasses.dataclass
class StoreResult:
    """What a C-STORE / STOW-RS send did."""

    sent: int = 0
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    sop_instance_uids: List[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- association


def _tls_args(node: PacsNode) -> Optional[Tuple[ssl.SSLContext, str]]:
    if not node.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=node.tls_ca_file or None)
    if node.tls_cert_file:
        context.load_cert_chain(node.tls_cert_file, node.tls_key_file or None)
    return context, node.host


def _make_ae(node: PacsNode) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=node.calling_aet)
    timeout = float(node.timeout_s)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.network_timeout = max(timeout, 30.0)
    ae.dimse_timeout = max(timeout * 6, 60.0)
    ae.maximum_pdu_size = 0  # unlimited: fewer PDUs per instance
    return ae


def _diagnose(node: PacsNode, assoc: Any) -> str:
    """One line saying why the association failed (rejected, refused, silent, unknown host)."""
    where = node.describe()
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = getattr(primitive, "reason_str", "") or "no reason given"
        source = getattr(primitive, "source_str", "")
        hint = ""
        if "called AE title" in reason.lower() or "called ae" in reason.lower():
            hint = f" (is {node.ae_title!r} the server's AE title?)"
        elif "calling ae" in reason.lower():
            hint = f" (the server does not know MedSeg's AE title {node.calling_aet!r})"
        return f"PACS {where} rejected the association: {reason} [{source}]{hint}"
    try:
        with socket.create_connection((node.host, int(node.port)), timeout=min(float(node.timeout_s), 5.0)):
            pass
    except socket.gaierror:
        return f"PACS {where}: unknown host {node.host!r}"
    except ConnectionRefusedError:
        return f"PACS {where}: connection refused (nothing listens on {node.host}:{node.port}; wrong port?)"
    except TimeoutError:
        return f"PACS {where}: no answer within {node.timeout_s:g} s (server down, unreachable or firewalled)"
    except OSError as error:
        return f"PACS {where}: cannot connect ({error.strerror or error})"
    if node.tls:
        return f"PACS {where}: TLS handshake or association failed (check the TLS settings and certificates)"
    return (
        f"PACS {where}: connected, but no DICOM association answer within {node.timeout_s:g} s "
        "(is this a DICOM port? TLS needed?)"
    )


@contextlib.contextmanager
def associate(
    node: PacsNode, contexts: Sequence[Any], roles: Sequence[Any] = (), evt_handlers: Optional[List[Any]] = None
) -> Iterator[Any]:
    """An established association (released on exit) or a ``PacsError`` saying why not."""
    ae = _make_ae(node)
    for context in contexts:
        if isinstance(context, str):
            ae.add_requested_context(context)
        else:
            ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    try:
        assoc = ae.associate(
            node.host,
            int(node.port),
            ae_title=node.ae_title,
            ext_neg=list(roles) or None,
            tls_args=_tls_args(node),
            evt_handlers=evt_handlers,
        )
    except (OSError, ValueError) as error:
        raise PacsError(f"PACS {node.describe()}: cannot start the association: {error}") from None
    if not assoc.is_established:
        raise PacsError(_diagnose(node, assoc))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _check_alive(node: PacsNode, assoc: Any, what: str) -> None:
    if assoc.is_aborted or not assoc.is_established:
        raise PacsError(
            f"PACS {node.describe()}: {what} aborted (no answer within the timeout, or the server "
            "closed the association)"
        )


# ---------------------------------------------------------------------------------------------- C-ECHO


def echo(node: PacsNode) -> float:
    """C-ECHO; returns the round trip in seconds (association included)."""
    from pynetdicom.sop_class import Verification

    started = time.perf_counter()
    with associate(node, [Verification]) as assoc:
        status = assoc.send_c_echo()
        _check_alive(node, assoc, "C-ECHO")
        if status is None or "Status" not in status or status.Status != STATUS_SUCCESS:
            code = f"0x{status.Status:04X}" if status is not None and "Status" in status else "none"
            raise PacsError(f"PACS {node.describe()}: C-ECHO failed with status {code}")
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- C-FIND


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_value_text(v) for v in value)
    return str(value)


def _identifier(level: str, keys: Sequence[str], filters: Dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    for keyword in keys:
        setattr(ds, keyword, "")
    for keyword, value in filters.items():
        setattr(ds, keyword, value)
    return ds


#: DICOM keywords accepted as filter names too (pipelines and scripts write ``{"Modality": "CT"}``)
KEYWORD_FILTERS = {keyword: name for name, (keyword, _level) in FILTERS.items()}
KEYWORD_FILTERS["ModalitiesInStudy"] = "modality"


def normalise_filters(filters: Dict[str, Optional[str]]) -> Dict[str, str]:
    """Filter names (``patient_id``) or DICOM keywords (``PatientID``) -> filter names; empty values dropped."""
    named = {KEYWORD_FILTERS.get(key, key): value for key, value in filters.items()}
    unknown = sorted(set(named) - set(FILTERS))
    if unknown:
        raise UserInputError(f"unknown C-FIND filter(s) {', '.join(unknown)} (known: {', '.join(FILTERS)})")
    return {key: str(value) for key, value in named.items() if value not in (None, "")}


def _c_find(node: PacsNode, assoc: Any, model: Any, identifier: Any) -> List[Dict[str, str]]:
    results = []
    for status, answer in assoc.send_c_find(identifier, model):
        _check_alive(node, assoc, "C-FIND")
        if status is None or "Status" not in status:
            raise PacsError(
                f"PACS {node.describe()}: C-FIND aborted or unanswered within the timeout "
                f"(is MedSeg's AE title {node.calling_aet!r} allowed to query this PACS?)"
            )
        code = status.Status
        if code in STATUS_PENDING:
            if answer is not None:
                results.append(
                    {
                        elem.keyword: _value_text(elem.value)
                        for elem in answer
                        if elem.keyword
                        and elem.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle")
                    }
                )
        elif code != STATUS_SUCCESS:
            comment = getattr(status, "ErrorComment", "") or ""
            raise PacsError(f"PACS {node.describe()}: C-FIND failed with status 0x{code:04X} {comment}".strip())
    return results


def find(node: PacsNode, level: str, filters: Optional[Dict[str, Optional[str]]] = None) -> List[Dict[str, str]]:
    """C-FIND at ``patient``, ``study`` or ``series`` level; each match is a dict of DICOM keyword -> text.

    Series queries with patient/study filters are done hierarchically (studies first, then their series),
    which every archive supports, instead of relying on relational queries.
    """
    from pynetdicom.sop_class import (
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
    )

    level = level.lower()
    if level not in LEVELS:
        raise UserInputError(f"--level must be one of {', '.join(LEVELS)}")
    wanted = normalise_filters(filters or {})
    by_level: Dict[str, Dict[str, str]] = {name: {} for name in LEVELS}
    for key, value in wanted.items():
        keyword, key_level = FILTERS[key]
        by_level[key_level][keyword] = value
    if level == "patient" and (by_level["study"] or by_level["series"]):
        raise UserInputError("patient-level queries take only patient filters (--patient-id, --patient-name)")
    contexts = [PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind]
    with associate(node, contexts) as assoc:
        if level == "patient":
            identifier = _identifier("patient", RETURN_KEYS["patient"], by_level["patient"])
            return _c_find(node, assoc, PatientRootQueryRetrieveInformationModelFind, identifier)
        study_filters = {**by_level["patient"], **by_level["study"]}
        modality = by_level["series"].get("Modality")
        if level == "study":
            if by_level["series"].keys() - {"Modality"}:
                raise UserInputError("study-level queries take patient and study filters and --modality only")
            if modality:
                study_filters["ModalitiesInStudy"] = modality
            identifier = _identifier("study", RETURN_KEYS["study"], study_filters)
            return _c_find(node, assoc, StudyRootQueryRetrieveInformationModelFind, identifier)
        # series level
        series_filters = dict(by_level["series"])
        if set(study_filters) - {"StudyInstanceUID"}:
            studies = _c_find(
                node,
                assoc,
                StudyRootQueryRetrieveInformationModelFind,
                _identifier("study", ("StudyInstanceUID",), study_filters),
            )
            study_uids = [s.get("StudyInstanceUID", "") for s in studies if s.get("StudyInstanceUID")]
        else:
            study_uids = [study_filters.get("StudyInstanceUID", "")]
        results: List[Dict[str, str]] = []
        for study_uid in study_uids:
            query = dict(series_filters)
            if study_uid:
                query["StudyInstanceUID"] = study_uid
            found = _c_find(
                node,
                assoc,
                StudyRootQueryRetrieveInformationModelFind,
                _identifier("series", RETURN_KEYS["series"], query),
            )
            for item in found:
                item.setdefault("StudyInstanceUID", study_uid)
            results.extend(found)
        return results


def locate_uid(
    node: PacsNode, uid: str, query: Optional[Callable[..., List[Dict[str, str]]]] = None, server: str = ""
) -> Tuple[str, str]:
    """(level, study UID) of a series or study UID on the server; a UID it does not hold is a user error.

    ``query`` is the level search to ask (C-FIND by default; DICOMweb passes its QIDO-RS search) and ``server``
    names the server in that error."""
    query = query or find
    series = query(node, "series", {"series_uid": uid})
    if series:
        return "series", series[0].get("StudyInstanceUID", "")
    studies = query(node, "study", {"study_uid": uid})
    if studies:
        return "study", uid
    raise PacsError(f"{server or 'PACS ' + node.describe()} holds no study or series with UID {uid}")


def _retrieve_identifier(level: str, uid: str, study_uid: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    ds.StudyInstanceUID = study_uid if level == "series" else uid
    if level == "series":
        ds.SeriesInstanceUID = uid
    return ds


def _storage_handler(
    receiver: DatabaseReceiver, errors: List[str], progress: Optional[ProgressCallback], expected: List[int]
):
    def handle_store(event: Any) -> int:
        try:
            ds = event.dataset
            receiver.store_encoded(
                event.encoded_dataset(), ds.StudyInstanceUID, ds.SeriesInstanceUID, event.request.AffectedSOPInstanceUID
            )
        except Exception as error:  # any failure must become a DIMSE status, not kill the SCP
            errors.append(f"{event.request.AffectedSOPInstanceUID}: {error}")
            return 0xA700
        count = len(receiver.files)
        report(progress, min(count / expected[0], 1.0) if expected[0] else 0.0, f"{count} received")
        return STATUS_SUCCESS

    return handle_store


def _finish_retrieve(
    node: PacsNode,
    result: RetrieveResult,
    receiver: DatabaseReceiver,
    statuses: List[Any],
    errors: List[str],
    what: str,
) -> RetrieveResult:
    final = statuses[-1] if statuses else None
    if final is not None:
        result.failed = int(getattr(final, "NumberOfFailedSuboperations", 0) or 0)
        result.warnings = int(getattr(final, "NumberOfWarningSuboperations", 0) or 0)
    result.received = len(receiver.files)
    result.import_summary = receiver.finish()
    result.series_uids = sorted(receiver.series_uids)
    code = final.Status if final is not None else None
    if errors:
        raise PacsError(
            f"{what} from PACS {node.describe()}: {len(errors)} instance(s) could not be stored ({errors[0]})"
        )
    if code == MOVE_DESTINATION_UNKNOWN:
        raise PacsError(
            f"PACS {node.describe()} does not know the move destination {node.calling_aet!r}: add it "
            f"to the PACS's DICOM nodes with this computer's address and port {node.storage_port}"
        )
    if code is None:
        raise PacsError(
            f"{what} from PACS {node.describe()}: no final response within the timeout "
            f"({result.received} instance(s) received)"
        )
    if what == "C-MOVE" and code not in (STATUS_SUCCESS, 0xB000) and result.received == 0:
        raise PacsError(
            f"C-MOVE from PACS {node.describe()} failed with status 0x{code:04X}: the PACS could not "
            f"deliver to the move destination {node.move_aet or node.calling_aet!r} (it must know that "
            f"AE title with this computer's address and storage port {node.storage_port})"
        )
    if code not in (STATUS_SUCCESS, 0xB000):
        comment = getattr(final, "ErrorComment", "") or ""
        raise PacsError(
            f"{what} from PACS {node.describe()} failed with status 0x{code:04X} {comment} "
            f"({result.received} instance(s) received)".replace("  ", " ")
        )
    if result.received == 0:
        raise PacsError(f"{what} from PACS {node.describe()}: the server sent no instances for {result.uid}")
    return result


def _count_instances(node: PacsNode, level: str, uid: str, study_uid: str) -> int:
    try:
        if level == "series":
            items = find(node, "series", {"series_uid": uid, "study_uid": study_uid})
            return sum(int(i.get("NumberOfSeriesRelatedInstances") or 0) for i in items)
        items = find(node, "study", {"study_uid": uid})
        return sum(int(i.get("NumberOfStudyRelatedInstances") or 0) for i in items)
    except (PacsError, ValueError):
        return 0


def _storage_contexts_for_get() -> List[Any]:
    from pynetdicom import StoragePresentationContexts

    wanted = list(_ESSENTIAL_STORAGE)
    for context in StoragePresentationContexts:
        if len(wanted) >= 127:
            break
        if context.abstract_syntax not in wanted:
            wanted.append(context.abstract_syntax)
    return wanted


def get(
    node: PacsNode,
    uid: str,
    database_dir: Union[str, Path],
    level: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> RetrieveResult:
    """C-GET a study or series (level found by C-FIND when not given) straight into the DICOM database."""
    from pynetdicom import build_context, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    started = time.perf_counter()
    receiver = DatabaseReceiver(database_dir)
    level, study_uid = (level, uid) if level == "study" else locate_uid(node, uid)
    expected = [_count_instances(node, level, uid, study_uid)]
    storage = _storage_contexts_for_get()
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(sop, list(_RECEIVE_TRANSFER_SYNTAXES)) for sop in storage]
    roles = [build_role(sop, scp_role=True) for sop in storage]
    errors: List[str] = []
    handlers = [(evt.EVT_C_STORE, _storage_handler(receiver, errors, progress, expected))]
    result = RetrieveResult(database=str(database_dir), level=level, uid=uid)
    statuses: List[Any] = []
    with associate(node, contexts, roles, evt_handlers=handlers) as assoc:
        for status, _identifier_ds in assoc.send_c_get(
            _retrieve_identifier(level, uid, study_uid), StudyRootQueryRetrieveInformationModelGet
        ):
            _check_alive(node, assoc, "C-GET")
            if status is not None and "Status" in status:
                statuses.append(status)
    result = _finish_retrieve(node, result, receiver, statuses, errors, "C-GET")
    result.elapsed_s = time.perf_counter() - started
    return result


class StorageSCP:
    """MedSeg's storage SCP for C-MOVE: listens on the node's storage port and files instances into the database."""

    def __init__(
        self,
        node: PacsNode,
        receiver: DatabaseReceiver,
        errors: List[str],
        progress: Optional[ProgressCallback] = None,
        expected: Optional[List[int]] = None,
        bind_address: str = "",
    ) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.ae = _make_ae(node)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, _storage_handler(receiver, errors, progress, expected or [0]))]
        try:
            self.server = self.ae.start_server(
                (bind_address, int(node.storage_port)), block=False, evt_handlers=handlers
            )
        except OSError as error:
            raise PacsError(
                f"cannot listen on port {node.storage_port} for C-MOVE ({error.strerror or error}); "
                "choose another storage port"
            ) from None

    def close(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def move(
    node: PacsNode,
    uid: str,
    database_dir: Union[str, Path],
    level: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    bind_address: str = "",
) -> RetrieveResult:
    """C-MOVE a study or series to MedSeg's own storage SCP (``node.calling_aet`` on ``node.storage_port``)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    started = time.perf_counter()
    receiver = DatabaseReceiver(database_dir)
    level, study_uid = (level, uid) if level == "study" else locate_uid(node, uid)
    expected = [_count_instances(node, level, uid, study_uid)]
    errors: List[str] = []
    result = RetrieveResult(database=str(database_dir), level=level, uid=uid)
    statuses: List[Any] = []
    scp = StorageSCP(node, receiver, errors, progress, expected, bind_address)
    try:
        with associate(node, [StudyRootQueryRetrieveInformationModelMove]) as assoc:
            for status, _identifier_ds in assoc.send_c_move(
                _retrieve_identifier(level, uid, study_uid),
                node.calling_aet,
                StudyRootQueryRetrieveInformationModelMove,
            ):
                _check_alive(node, assoc, "C-MOVE")
                if status is not None and "Status" in status:
                    statuses.append(status)
    finally:
        scp.close()
    result = _finish_retrieve(node, result, receiver, statuses, errors, "C-MOVE")
    result.elapsed_s = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------- C-STORE


def _file_syntaxes(
    paths: Sequence[str], sop_uids: Dict[str, str], repair: set, keys: Dict[str, Tuple[str, str]]
) -> Dict[str, set]:
    import pydicom

    syntaxes: Dict[str, set] = {}
    for path in paths:
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            sop_class = str(meta.file_meta.get("MediaStorageSOPClassUID", "") or meta.get("SOPClassUID", ""))
            syntax = str(meta.file_meta.TransferSyntaxUID)
        except Exception as error:  # pydicom raises many types for a bad file
            raise UserInputError(f"not a DICOM file ({error})", path) from None
        sop_uids[path] = str(meta.file_meta.get("MediaStorageSOPInstanceUID", "") or meta.get("SOPInstanceUID", ""))
        if not meta.get("SOPClassUID") or not meta.get("SOPInstanceUID"):
            repair.add(path)  # real archives hold files whose dataset lacks these: take them from the file meta
        syntaxes.setdefault(sop_class, set()).add(syntax)
        keys[path] = (sop_class, syntax)
    return syntaxes


def _repaired(path: str) -> Any:
    """The file's dataset with SOP Class/Instance UID (mandatory in the dataset) copied from the file meta."""
    import pydicom

    ds = pydicom.dcmread(path)
    if not ds.get("SOPClassUID"):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    if not ds.get("SOPInstanceUID"):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def _sendable(item: Any, repair: set, accepted: set, keys: Dict[str, Tuple[str, str]]) -> Any:
    """The item as pynetdicom should send it: repaired, and decompressed when the PACS refused its encoding."""
    import pydicom

    if isinstance(item, str):
        if item not in repair and keys.get(item) in accepted:
            return item
        item = _repaired(item) if item in repair else pydicom.dcmread(item)
    syntax = str(item.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(item, "file_meta", {}) else ""
    if syntax and (str(item.SOPClassUID), syntax) not in accepted and item.file_meta.TransferSyntaxUID.is_compressed:
        item.decompress()  # the PACS took only uncompressed for this class; pixel values are unchanged
    return item


def store(
    node: PacsNode, items: Sequence[Union[str, Path, Any]], progress: Optional[ProgressCallback] = None
) -> StoreResult:
    """C-STORE files (paths) or pydicom datasets; instances the server refuses are listed, not raised."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_context

    started = time.perf_counter()
    paths = [str(i) for i in items if not isinstance(i, Dataset)]
    datasets = [i for i in items if isinstance(i, Dataset)]
    if not paths and not datasets:
        raise UserInputError("nothing to send")
    sop_uids: Dict[str, str] = {}
    repair: set = set()
    keys: Dict[str, Tuple[str, str]] = {}
    syntaxes = _file_syntaxes(paths, sop_uids, repair, keys)
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        syntax = (
            str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else "1.2.840.10008.1.2.1"
        )
        syntaxes.setdefault(str(ds.SOPClassUID), set()).add(syntax)
    pairs = sorted({(sop, ts) for sop, group in syntaxes.items() for ts in group})
    if len(pairs) + len(syntaxes) > 128:
        raise UserInputError(f"{len(pairs)} SOP class/transfer syntax pairs: send them in smaller groups")
    # one context per native encoding (an acceptor accepts one syntax per context) + an uncompressed fallback
    contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    contexts += [build_context(sop, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]) for sop in syntaxes]
    result = StoreResult()
    total = len(paths) + len(datasets)
    with associate(node, contexts) as assoc:
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
        for index, item in enumerate([*paths, *datasets]):
            label = item if isinstance(item, str) else str(getattr(item, "SOPInstanceUID", "dataset"))
            try:
                status = assoc.send_c_store(_sendable(item, repair, accepted, keys))
            except (ValueError, RuntimeError, AttributeError) as error:
                result.failed.append((label, str(error)))
                continue
            _check_alive(node, assoc, "C-STORE")
            if status is None or "Status" not in status:
                result.failed.append((label, "no response within the timeout"))
            elif status.Status in (STATUS_SUCCESS, 0xB000, 0xB007, 0xB006):
                result.sent += 1
                sop = sop_uids.get(item, "") if isinstance(item, str) else item.SOPInstanceUID
                result.sop_instance_uids.append(str(sop))
            else:
                result.failed.append((label, f"status 0x{status.Status:04X}"))
            report(progress, (index + 1) / total, f"{index + 1}/{total} sent")
    result.elapsed_s = time.perf_counter() - started
    return result
