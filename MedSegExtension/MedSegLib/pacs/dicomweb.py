"""DICOMweb: QIDO-RS search, WADO-RS retrieve into the DICOM database, STOW-RS store (dicomweb-client).

HTTP basic auth (``username``/``password``) or a bearer ``token`` come from the node settings or the command line;
every HTTP or connection failure becomes a ``PacsError`` with the status and what it usually means.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from MedSegLib.errors import UserInputError
from MedSegLib.pacs.dimse import FILTERS, LEVELS, RetrieveResult, StoreResult, locate_uid, normalise_filters
from MedSegLib.pacs.nodes import PacsError, PacsNode
from MedSegLib.pacs.receive import DatabaseReceiver
from MedSegLib.progress import ProgressCallback, report

_HTTP_HINTS = {
    400: "bad request (a filter the server does not support?)",
    401: "authentication required or wrong user name/password",
    403: "forbidden for this user",
    404: "not found (wrong DICOMweb root URL or UID?)",
    409: "conflict (the server refused the instance)",
    413: "request too large",
    415: "unsupported media type",
    500: "server error",
    503: "service unavailable",
}
_QIDO_FIELDS = {
    "patient": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"],
    "study": [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "PatientName",
        "PatientID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "series": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    ],
}


def client(node: PacsNode) -> Any:
    """A ``DICOMwebClient`` with the node's credentials and timeout."""
    import requests
    from dicomweb_client import DICOMwebClient

    if not node.web_url:
        raise UserInputError("no DICOMweb URL (--web URL or the node's web_url)")
    session = requests.Session()
    if node.username:
        session.auth = (node.username, node.password)
    headers = {"Authorization": f"Bearer {node.token}"} if node.token else None
    if node.tls_ca_file:
        session.verify = node.tls_ca_file
    web = DICOMwebClient(
        url=node.web_url.rstrip("/"),
        session=session,
        headers=headers,
        timeout=(float(node.timeout_s), max(float(node.timeout_s) * 6, 60.0)),
    )
    web.set_http_retry_params(retry=False)  # its default backs off for ~30 s: a dead server must fail fast
    return web


def _web_error(node: PacsNode, error: Exception, what: str) -> PacsError:
    import requests

    where = f"DICOMweb {node.web_url}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        code = error.response.status_code
        return PacsError(f"{what} at {where}: HTTP {code} {_HTTP_HINTS.get(code, error.response.reason or '')}")
    if isinstance(error, requests.Timeout):
        return PacsError(f"{what} at {where}: no answer within {node.timeout_s:g} s")
    if isinstance(error, requests.ConnectionError):
        return PacsError(f"{what} at {where}: cannot connect (server down or wrong URL/port)")
    return PacsError(f"{what} at {where}: {error}")


def _text(element: Dict[str, Any]) -> str:
    values = element.get("Value") or []
    parts = []
    for value in values:
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        parts.append(str(value))
    return "\\".join(parts)


def _flatten(item: Dict[str, Any]) -> Dict[str, str]:
    from pydicom.datadict import keyword_for_tag

    result = {}
    for tag, element in item.items():
        keyword = keyword_for_tag(int(tag, 16)) or tag
        if keyword not in (
            "SpecificCharacterSet",
            "RetrieveURL",
            "RetrieveAETitle",
            "InstanceAvailability",
            "TimezoneOffsetFromUTC",
        ):
            result[keyword] = _text(element)
    return result


def search(
    node: PacsNode, level: str, filters: Optional[Dict[str, Optional[str]]] = None, limit: Optional[int] = None
) -> List[Dict[str, str]]:
    """QIDO-RS at ``patient`` (studies grouped by patient), ``study`` or ``series`` level; same filters as C-FIND."""
    level = level.lower()
    if level not in LEVELS:
        raise UserInputError(f"--level must be one of {', '.join(LEVELS)}")
    wanted = normalise_filters(filters or {})
    query = {FILTERS[key][0]: value for key, value in wanted.items()}
    web = client(node)
    try:
        if level == "series":
            study_uid = query.pop("StudyInstanceUID", None)
            items = web.search_for_series(
                study_instance_uid=study_uid, search_filters=query or None, fields=_QIDO_FIELDS["series"], limit=limit
            )
        else:
            if "Modality" in query:
                query["ModalitiesInStudy"] = query.pop("Modality")
            items = web.search_for_studies(search_filters=query or None, fields=_QIDO_FIELDS["study"], limit=limit)
    except Exception as error:
        raise _web_error(node, error, "QIDO-RS search") from None
    results = [_flatten(item) for item in items]
    if level == "patient":  # QIDO-RS has no patient resource: one row per distinct patient
        patients: Dict[tuple, Dict[str, str]] = {}
        for row in results:
            key = (row.get("PatientID", ""), row.get("PatientName", ""))
            entry = patients.setdefault(
                key, {"PatientName": key[1], "PatientID": key[0], "NumberOfPatientRelatedStudies": "0"}
            )
            entry["NumberOfPatientRelatedStudies"] = str(int(entry["NumberOfPatientRelatedStudies"]) + 1)
        results = list(patients.values())
    return results


def retrieve(
    node: PacsNode,
    uid: str,
    database_dir: Union[str, Path],
    level: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> RetrieveResult:
    """WADO-RS a series (or a whole study) into the DICOM database."""
    started = time.perf_counter()
    receiver = DatabaseReceiver(database_dir)
    web = client(node)
    level, study_uid = (level, uid) if level == "study" else locate_uid(node, uid, search, f"DICOMweb {node.web_url}")
    result = RetrieveResult(database=str(database_dir), level=level, uid=uid)
    try:
        if level == "series":
            instances = web.iter_series(study_instance_uid=study_uid, series_instance_uid=uid)
        else:
            instances = web.iter_study(study_instance_uid=uid)
        for count, dataset in enumerate(instances, start=1):
            receiver.store_dataset(dataset)
            report(progress, 0.0, f"{count} received")
    except Exception as error:
        raise _web_error(node, error, "WADO-RS retrieve") from None
    result.received = len(receiver.files)
    if not result.received:
        raise PacsError(f"DICOMweb {node.web_url}: the server sent no instances for {uid}")
    result.import_summary = receiver.finish()
    result.series_uids = sorted(receiver.series_uids)
    result.elapsed_s = time.perf_counter() - started
    return result


def stow(
    node: PacsNode, items: Sequence[Union[str, Path, Any]], progress: Optional[ProgressCallback] = None, batch: int = 32
) -> StoreResult:
    """STOW-RS files or pydicom datasets (in batches, so a large series never builds one huge request)."""
    import pydicom
    from pydicom.dataset import Dataset

    started = time.perf_counter()
    web = client(node)
    result = StoreResult()
    items = list(items)
    for start in range(0, len(items), batch):
        group = []
        for item in items[start : start + batch]:
            if isinstance(item, Dataset):
                group.append(item)
            else:
                try:
                    group.append(pydicom.dcmread(str(item)))
                except Exception as error:  # pydicom raises many types for a bad file
                    raise UserInputError(f"not a DICOM file ({error})", item) from None
        try:
            response = web.store_instances(datasets=group)
        except Exception as error:
            raise _web_error(node, error, "STOW-RS store") from None
        failed = response.get("00081198", {}).get("Value", []) if response else []
        for entry in failed:
            sop = _text(entry.get("00081155", {}))
            result.failed.append((sop, f"failure reason {_text(entry.get('00081197', {}))}"))
        failed_uids = {sop for sop, _ in result.failed}
        for ds in group:
            if str(ds.SOPInstanceUID) not in failed_uids:
                result.sent += 1
                result.sop_instance_uids.append(str(ds.SOPInstanceUID))
        report(progress, min(start + batch, len(items)) / len(items), f"{result.sent} stored")
    result.elapsed_s = time.perf_counter() - started
    return result
