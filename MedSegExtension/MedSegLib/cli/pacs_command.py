"""``medseg pacs``: talk to a PACS by DIMSE or DICOMweb.

    medseg pacs echo  (--node NAME | --host H --port P --called-aet AET) [--calling-aet AET] [--timeout S]
    medseg pacs find  ... --level patient|study|series [--patient-id ID] [--patient-name N] [--study-date D[-D]]
                      [--modality M] [--accession A] [--study-uid UID] [--series-uid UID] [--json]
    medseg pacs get   ... UID --db DIR [--level study|series]
    medseg pacs move  ... UID --db DIR [--storage-port N]
    medseg pacs send  ... PATH|UID [--db DIR] [--deidentify [--date-shift DAYS] [--retain-uids]]
    medseg pacs nodes list | add NAME (--host H --port P --called-aet AET | --web URL) [...] | remove NAME

``--web URL`` (with ``--user``/``--password`` or ``--token``, also ``$MEDSEG_PACS_PASSWORD``) switches to DICOMweb:
find = QIDO-RS, get/move = WADO-RS, send = STOW-RS, echo = a one-result QIDO-RS. Nodes are configured in
``$MEDSEG_PACS_CONFIG`` or ``~/.medseg/pacs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from MedSegLib.errors import UserInputError

FILTER_OPTIONS = {
    "patient_id": "--patient-id",
    "patient_name": "--patient-name",
    "birth_date": "--birth-date",
    "study_uid": "--study-uid",
    "study_date": "--study-date",
    "accession_number": "--accession",
    "study_description": "--study-description",
    "modality": "--modality",
    "series_uid": "--series-uid",
    "series_description": "--series-description",
}


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server (a configured --node, or --host/--port/--called-aet, or --web)")
    group.add_argument("--node", help="configured PACS node name (settings file: $MEDSEG_PACS_CONFIG)")
    group.add_argument("--host", help="PACS host name or address")
    group.add_argument("--port", type=int, help="PACS DICOM port")
    group.add_argument("--called-aet", help="the PACS's AE title")
    group.add_argument("--calling-aet", help="MedSeg's AE title (default MEDSEG or the settings file's)")
    group.add_argument("--timeout", type=float, help="seconds to wait for connect/association/answers (default 10)")
    group.add_argument("--tls", action="store_true", default=None, help="DICOM TLS (with --tls-ca/--tls-cert/-key)")
    group.add_argument("--tls-ca", help="CA certificate file to verify the PACS")
    group.add_argument("--tls-cert", help="client certificate file")
    group.add_argument("--tls-key", help="client private key file")
    group.add_argument("--web", metavar="URL", help="DICOMweb root URL (QIDO/WADO/STOW instead of DIMSE)")
    group.add_argument("--user", help="DICOMweb HTTP basic auth user")
    group.add_argument("--password", help="DICOMweb password (or $MEDSEG_PACS_PASSWORD)")
    group.add_argument("--token", help="DICOMweb bearer token (or $MEDSEG_PACS_TOKEN)")
    group.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pacs",
        help="PACS query/retrieve/send (DIMSE and DICOMweb)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="pacs_command", metavar="ACTION")
    parent = _connection_options()

    echo = actions.add_parser("echo", parents=[parent], help="C-ECHO (is the PACS reachable?)")
    echo.set_defaults(func=run_echo)

    find = actions.add_parser("find", parents=[parent], help="C-FIND / QIDO-RS search")
    find.add_argument("--level", choices=("patient", "study", "series"), default="study")
    for key, option in FILTER_OPTIONS.items():
        find.add_argument(option, dest=key, help=f"filter on {key.replace('_', ' ')} (DICOM wildcards and ranges)")
    find.set_defaults(func=run_find)

    for name, helptext in (
        ("get", "C-GET (or WADO-RS) a study/series into a DICOM database"),
        ("move", "C-MOVE (or WADO-RS) a study/series into a DICOM database"),
    ):
        sub = actions.add_parser(name, parents=[parent], help=helptext)
        sub.add_argument("uid", metavar="UID", help="StudyInstanceUID or SeriesInstanceUID")
        sub.add_argument("--db", required=True, help="DICOM database folder to receive into")
        sub.add_argument("--level", choices=("study", "series"), help="skip the C-FIND that finds the UID's level")
        if name == "move":
            sub.add_argument("--storage-port", type=int, help="port of MedSeg's storage SCP (the PACS sends here)")
            sub.add_argument("--bind", default="", help="address the storage SCP listens on (default: all)")
        sub.set_defaults(func=run_retrieve, retrieve=name)

    send = actions.add_parser("send", parents=[parent], help="C-STORE (or STOW-RS) files, a folder or a series UID")
    send.add_argument("items", nargs="+", metavar="PATH|UID", help="DICOM files/folders, or series UIDs with --db")
    send.add_argument("--db", help="DICOM database for series UIDs")
    send.add_argument("--deidentify", action="store_true", help="PS3.15 basic profile before sending")
    send.add_argument("--date-shift", type=int, help="with --deidentify: shift dates by DAYS (default: remove)")
    send.add_argument("--retain-uids", action="store_true", help="with --deidentify: keep UIDs")
    send.set_defaults(func=run_send)

    nodes = actions.add_parser("nodes", help="list, add or remove configured PACS nodes")
    node_actions = nodes.add_subparsers(dest="nodes_command", metavar="NODES_ACTION")
    node_actions.add_parser("list", help="show the configured nodes").set_defaults(func=run_nodes_list, json=False)
    add = node_actions.add_parser("add", parents=[parent], help="add or replace a node (settings file)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--storage-port", type=int, help="port of MedSeg's storage SCP for C-MOVE")
    add.set_defaults(func=run_nodes_add)
    remove = node_actions.add_parser("remove", help="remove a node")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=run_nodes_remove)
    nodes.set_defaults(func=run_nodes_list, json=False)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def node_from_args(args: argparse.Namespace) -> Any:
    from MedSegLib.pacs.nodes import resolve_node

    overrides: Dict[str, Any] = {
        "tls": args.tls,
        "tls_ca_file": args.tls_ca,
        "tls_cert_file": args.tls_cert,
        "tls_key_file": args.tls_key,
        "username": args.user,
        "password": args.password or os.environ.get("MEDSEG_PACS_PASSWORD"),
        "token": args.token or os.environ.get("MEDSEG_PACS_TOKEN"),
        "storage_port": getattr(args, "storage_port", None),
    }
    return resolve_node(
        args.node, args.host, args.port, args.called_aet, args.calling_aet, args.web, args.timeout, **overrides
    )


def _use_web(args: argparse.Namespace, node: Any) -> bool:
    return bool(args.web) or (not args.host and not node.ae_title and bool(node.web_url))


def run_echo(args: argparse.Namespace) -> int:
    from MedSegLib.pacs import dicomweb, dimse

    node = node_from_args(args)
    if _use_web(args, node):
        import time

        started = time.perf_counter()
        dicomweb.search(node, "study", limit=1)
        seconds, where = time.perf_counter() - started, node.web_url
    else:
        seconds, where = dimse.echo(node), node.describe()
    if args.json:
        print(json.dumps({"ok": True, "server": where, "seconds": round(seconds, 4)}))
    else:
        print(f"{where}: OK ({seconds * 1000:.0f} ms)")
    return 0


def run_find(args: argparse.Namespace) -> int:
    from MedSegLib.pacs import dicomweb, dimse

    node = node_from_args(args)
    filters = {key: getattr(args, key) for key in FILTER_OPTIONS}
    if _use_web(args, node):
        rows = dicomweb.search(node, args.level, filters)
    else:
        rows = dimse.find(node, args.level, filters)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = {
        "patient": ["PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
        "study": ["StudyInstanceUID", "StudyDate", "PatientID", "ModalitiesInStudy", "StudyDescription"],
        "series": [
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
            "SeriesDescription",
        ],
    }[args.level]
    widths = [max([len(c)] + [len(r.get(c, "")) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(row.get(c, "").ljust(w) for c, w in zip(columns, widths)))
    print(f"{len(rows)} {args.level} match(es)", file=sys.stderr)
    return 0


def run_retrieve(args: argparse.Namespace) -> int:
    from MedSegLib.pacs import dicomweb, dimse

    node = node_from_args(args)
    if _use_web(args, node):
        result = dicomweb.retrieve(node, args.uid, args.db, level=args.level)
        how = "WADO-RS"
    elif args.retrieve == "move":
        result = dimse.move(node, args.uid, args.db, level=args.level, bind_address=args.bind)
        how = "C-MOVE"
    else:
        result = dimse.get(node, args.uid, args.db, level=args.level)
        how = "C-GET"
    if args.json:
        print(json.dumps({"method": how, **result.to_dict()}, indent=2))
    else:
        print(
            f"{how}: {result.received} instance(s) of {result.level} {args.uid} into {args.db} "
            f"({result.elapsed_s:.1f} s); series: {', '.join(result.series_uids)}"
        )
    return 0 if not result.failed else 1


def _send_items(args: argparse.Namespace) -> List[str]:
    from MedSegLib.dicom.loader import list_folder_files
    from MedSegLib.inputs import looks_like_uid, series_files_in_database

    files: List[str] = []
    for item in args.items:
        path = Path(item)
        if path.is_dir():
            files += list_folder_files(path)
        elif path.is_file():
            files.append(str(path))
        elif looks_like_uid(item):
            files += series_files_in_database(item, args.db)
        else:
            raise UserInputError("no such file, folder or series UID", item)
    return files


def _dicom_only(files: List[str]) -> List[str]:
    """Drop non-DICOM files a folder may hold (READMEs, DICOMDIR's companions) the way the importer does."""
    import pydicom

    kept = []
    for path in files:
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # not DICOM: skipped, like the database importer
            continue
        if "MediaStorageSOPClassUID" in meta.file_meta or meta.get("SOPClassUID"):
            kept.append(path)
    return kept


def run_send(args: argparse.Namespace) -> int:
    from MedSegLib.pacs import dicomweb, dimse

    node = node_from_args(args)
    files = _dicom_only(_send_items(args))
    if not files:
        raise UserInputError("no DICOM files to send")
    items: List[Any] = list(files)
    if args.deidentify:
        import pydicom

        from MedSegLib.export.deidentify import Deidentifier

        deidentifier = Deidentifier(retain_uids=args.retain_uids, date_shift_days=args.date_shift)
        items = [deidentifier.apply(pydicom.dcmread(f)) for f in files]
    result = dicomweb.stow(node, items) if _use_web(args, node) else dimse.store(node, items)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"sent {result.sent} of {len(items)} instance(s) ({result.elapsed_s:.1f} s)")
        for label, reason in result.failed[:20]:
            print(f"  failed: {label}: {reason}", file=sys.stderr)
    return 0 if not result.failed else 1


def run_nodes_list(args: argparse.Namespace) -> int:
    from MedSegLib.pacs.nodes import load_nodes, settings_path

    nodes = load_nodes()
    if getattr(args, "json", False):
        print(
            json.dumps(
                {name: {k: v for k, v in node.to_dict().items() if k != "password"} for name, node in nodes.items()},
                indent=2,
            )
        )
        return 0
    print(f"# {settings_path()}", file=sys.stderr)
    for name, node in sorted(nodes.items()):
        parts = [
            f"{node.ae_title}@{node.host}:{node.port}" if node.ae_title else "",
            node.web_url,
            "TLS" if node.tls else "",
        ]
        print(f"{name}: {'  '.join(p for p in parts if p)}")
    return 0


def run_nodes_add(args: argparse.Namespace) -> int:
    import dataclasses

    from MedSegLib.pacs.nodes import PacsNode, load_nodes, save_nodes

    if not args.web and not (args.host and args.port and args.called_aet):
        raise UserInputError("a node needs --host, --port and --called-aet, or --web URL")
    nodes = load_nodes()
    node = nodes.get(args.name) or PacsNode(name=args.name)
    values = {
        "host": args.host,
        "port": args.port,
        "ae_title": args.called_aet,
        "calling_aet": args.calling_aet,
        "timeout_s": args.timeout,
        "tls": args.tls,
        "tls_ca_file": args.tls_ca,
        "tls_cert_file": args.tls_cert,
        "tls_key_file": args.tls_key,
        "web_url": args.web,
        "username": args.user,
        "password": args.password,
        "token": args.token,
        "storage_port": args.storage_port,
    }
    node = dataclasses.replace(node, **{k: v for k, v in values.items() if v not in (None, "")})
    nodes[args.name] = node
    path = save_nodes(nodes)
    print(
        f"saved node {args.name} ({node.describe()}) in {path}"
        + ("; note: the password is stored in plain text, prefer $MEDSEG_PACS_PASSWORD" if args.password else "")
    )
    return 0


def run_nodes_remove(args: argparse.Namespace) -> int:
    from MedSegLib.pacs.nodes import load_nodes, save_nodes

    nodes = load_nodes()
    if args.name not in nodes:
        raise UserInputError(f"no PACS node named {args.name!r}")
    del nodes[args.name]
    save_nodes(nodes)
    print(f"removed node {args.name}")
    return 0
