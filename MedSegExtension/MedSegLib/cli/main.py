"""Entry point of the ``medseg`` command.

Subcommand modules are listed in ``COMMAND_MODULES``; each exposes
``register(subparsers)`` that adds its parser and sets ``func(args) -> int``.
Modules import heavy packages (vtk, torch, SimpleITK) inside their functions so that
``medseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional, Sequence

from MedSegLib.errors import OperationCancelled, UserInputError

COMMAND_MODULES: List[str] = [
    "MedSegLib.cli.info_command",
    "MedSegLib.cli.demo_command",
    "MedSegLib.cli.dicom_command",
    "MedSegLib.cli.window_command",
    "MedSegLib.cli.segment_command",
    "MedSegLib.cli.stats_command",
    "MedSegLib.cli.qmri_command",
    "MedSegLib.cli.mri_command",
    "MedSegLib.cli.deepseg_command",
    "MedSegLib.cli.pacs_command",
    "MedSegLib.cli.export_command",
    "MedSegLib.cli.run_command",
    "MedSegLib.cli.report_command",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MedSeg: DICOM loading, windowing, segmentation and quantitative MRI, headless or in 3D Slicer.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # command not shipped in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or EXIT_OK)
    except UserInputError as error:
        if args.debug:
            raise
        print(f"medseg {args.command}: error: {error.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (KeyboardInterrupt, OperationCancelled):
        print(f"medseg {args.command}: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
