"""``medseg dicom ...``: database import/list and series loading."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dicom", help="DICOM database import, listing and loading")
    dicom_subparsers = parser.add_subparsers(dest="dicom_command", metavar="ACTION")
    from MedSegLib.cli.dicom_db_commands import register_database_commands
    from MedSegLib.cli.dicom_load_command import register_load_command

    register_database_commands(dicom_subparsers)
    register_load_command(dicom_subparsers)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
