"""``medseg dicom import`` and ``medseg dicom list``: the headless, Slicer-compatible DICOM database."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from typing import Callable, List, Optional

from MedSegLib.errors import UserInputError


def _database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="DIR",
        default=None,
        help="database folder (default: $MEDSEG_DICOM_DB or ~/.medseg/dicom-db); 3D Slicer can open it",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _database_dir(args: argparse.Namespace) -> str:
    from MedSegLib.dicom.database import default_database_directory

    return os.path.abspath(os.path.expanduser(args.db)) if args.db else default_database_directory()


def _progress_bar(enabled: bool) -> tuple[Optional[Callable[[int, int], None]], Callable[[], None]]:
    """A tqdm bar on stderr that only appears when the import lasts more than a second."""
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    state: dict = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            tqdm.monitor_interval = 0  # no monitor thread: the import may fork worker processes afterwards
            bar = tqdm(total=total, unit="file", delay=1.0, file=sys.stderr, leave=False, desc="indexing")
            state["bar"] = bar
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        if state.get("bar") is not None:
            state["bar"].close()

    return update, close


def run_import(args: argparse.Namespace) -> int:
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.indexer import import_paths

    for path in args.paths:
        if not os.path.exists(path):
            raise UserInputError("input path does not exist", path)
    started = time.perf_counter()
    db = DicomDatabase(_database_dir(args), create=True)
    progress, close = _progress_bar(not args.no_progress)
    try:
        summary = import_paths(db, args.paths, copy_files=args.copy, mode=args.mode, workers=args.workers,
                               progress=progress, durable=args.durable)
    except sqlite3.OperationalError as error:
        raise UserInputError(f"cannot write the DICOM database ({error}); is 3D Slicer importing into it?",
                             db.databaseDirectory()) from None
    finally:
        close()
        db.closeDatabase()
    summary.elapsed_s = time.perf_counter() - started
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format_text())
    return 0


def _format_listing(patients: List[dict]) -> str:
    lines: List[str] = []
    for patient in patients:
        lines.append(f"Patient {patient['displayed_name'] or patient['name']}  ID {patient['patient_id']}  "
                     f"(uid {patient['patient_uid']})")
        for study in patient["studies"]:
            lines.append(f"  Study {study['study_date'] or '-'}  {study['description'] or '(no description)'}  "
                         f"{study['study_instance_uid']}")
            for series in study["series"]:
                number = series["series_number"] if series["series_number"] is not None else "-"
                description = series["description"] or "(no description)"
                lines.append(f"    #{number}  {series['modality'] or '?'}  {description}"
                             f"  {series['instances']} instance(s)  {series['size'] or ''}".rstrip())
                lines.append(f"        {series['series_instance_uid']}")
                lines.extend(f"        warning: {warning}" for warning in series["warnings"])
    if not lines:
        lines.append("the database is empty")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    from MedSegLib.dicom.database import DicomDatabase, describe_database

    directory = _database_dir(args)
    if not os.path.isdir(directory):
        raise UserInputError("database folder does not exist (run 'medseg dicom import' first)", directory)
    db = DicomDatabase(directory, create=False)
    try:
        patients = describe_database(db)
    finally:
        db.closeDatabase()
    if args.json:
        print(json.dumps(patients, indent=2))
    else:
        print(_format_listing(patients))
    return 0


def register_database_commands(dicom_subparsers: argparse._SubParsersAction) -> None:
    """Add ``import`` and ``list`` under ``medseg dicom``."""
    parser = dicom_subparsers.add_parser(
        "import",
        help="index DICOM files into a database folder (headers only; files stay in place)",
        description="Index DICOM files (folders are walked recursively) into a database 3D Slicer can open. "
        "Unchanged files are skipped on re-import; non-DICOM files are skipped and counted; unreadable files "
        "are reported with the reason.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to index")
    _database_argument(parser)
    parser.add_argument("--copy", action="store_true", help="copy the files into <db>/dicom/ (default: index in place)")
    parser.add_argument("--mode", choices=("auto", "processes", "threads", "serial"), default="auto",
                        help="how header reading runs in parallel (default: auto)")
    parser.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU count)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--durable", action="store_true",
                        help="fsync every commit (slower; by default an OS crash mid-import may need a re-import)")
    parser.set_defaults(func=run_import)

    parser = dicom_subparsers.add_parser(
        "list",
        help="list patients, studies and series with loadability warnings",
        description="List the database content: patients, studies, series with modality, description, number of "
        "instances, and warnings such as mixed matrix sizes or duplicate SOPInstanceUIDs.",
    )
    _database_argument(parser)
    parser.set_defaults(func=run_list)
