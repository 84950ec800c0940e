"""``medseg dicom load``: load a DICOM series (from a database or a folder) and write NRRD/NIfTI volumes.

A series whose volumes differ only by time or one acquisition parameter is written as one 4D file; a folder
holding several unrelated volumes is written as numbered files (OUT_1.nii.gz, OUT_2.nii.gz, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedSegLib.errors import UserInputError


def register_load_command(dicom_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``load`` subcommand under ``medseg dicom``."""
    parser = dicom_subparsers.add_parser(
        "load",
        help="load a DICOM series exactly and write it as .nrrd / .nii.gz",
        description="Load one DICOM series (SERIES_UID with --db, or every series in DICOM_FOLDER), sorted by "
        "slice position, rescaled to modality values, and write it with exact patient-space geometry. Tilted or "
        "unevenly spaced stacks are resampled onto a regular grid unless --keep-acquired-grid is given.",
    )
    parser.add_argument("source", metavar="SERIES_UID|DICOM_FOLDER",
                        help="a SeriesInstanceUID (needs --db) or a folder of DICOM files")
    parser.add_argument("--db", metavar="DIR", help="MedSeg DICOM database folder holding the series")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output file: .nrrd, .seq.nrrd, .nii or .nii.gz")
    parser.add_argument("--keep-acquired-grid", action="store_true",
                        help="keep tilted / unevenly spaced slices as acquired (approximate geometry, warned)")
    parser.add_argument("--philips-scale-slope", action="store_true",
                        help="Philips MR: write floating-point values DV/(RescaleSlope*ScaleSlope) (2005,100E)")
    parser.set_defaults(func=run_load)


def _numbered(output: Path, number: int, suffix: str) -> Path:
    stem = output.name[: len(output.name) - len(suffix)]
    return output.with_name(f"{stem}_{number}{output.name[len(stem):]}")


def run_load(args: argparse.Namespace) -> int:
    """Load, write, report. UserInputError (exit 2) for a missing/empty folder or nothing loadable."""
    from MedSegLib.dicom import loader
    from MedSegLib.dicom.volume_files import volume_suffix, write_volume

    output = Path(args.output)
    suffix = volume_suffix(output)
    if args.db:
        from MedSegLib.inputs import series_files_in_database

        files = series_files_in_database(args.source, args.db)
        volumes = loader.load_series_files(files, args.keep_acquired_grid, args.philips_scale_slope)
    else:
        volumes = loader.load_folder(args.source, args.keep_acquired_grid, args.philips_scale_slope)
    if not volumes:
        raise UserInputError("no loadable DICOM series", args.source)
    if len(volumes) > 1:
        print(f"{len(volumes)} separate volumes found; writing numbered files")
    for number, volume in enumerate(volumes, start=1):
        target = output if len(volumes) == 1 else _numbered(output, number, suffix)
        write_volume(volume, target)
        shape = "x".join(str(n) for n in volume.array.shape[::-1])
        spacing = " x ".join(f"{s:.4g}" for s in volume.spacing)
        extra = f", {len(volume.per_volume)} volumes varying in {', '.join(volume.varying[:3])}" \
            if volume.is_4d else ""
        print(f"{target}: {volume.name}: {shape} {volume.array.dtype} voxels, {spacing} mm{extra}")
        for warning in volume.warnings:
            print(f"  warning: {warning}", file=sys.stderr)
    return 0
