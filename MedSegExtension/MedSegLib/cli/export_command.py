"""``medseg export``: results as DICOM objects that reference their source series.

    medseg export seg SEG --reference SERIES [--db DIR] -o OUT.dcm [--fractional] [--segments A,B] [--stats F]
                      [--sr SR.dcm]
    medseg export pmap MAP --reference SERIES [--db DIR] -o OUT.dcm [--quantity T1] [--unit ms]
    medseg export read IN.dcm -o OUT(.seg.nrrd|.nrrd)

SEG is a ``.seg.nrrd`` (or a label map with its ``.ctbl``); MAP a volume file (unit from ``--unit``, else by
quantity: T1/T2/T2star ms, R2star 1/s); SERIES a DICOM folder or a series UID in ``--db``. ``--deidentify``
applies the PS3.15 basic profile (``--date-shift DAYS``, ``--retain-uids``). Every written object is validated
(highdicom, and dciodvfy when installed); validation errors exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from MedSegLib.errors import UserInputError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="source DICOM series: folder or series UID with --db")
    parser.add_argument("--db", help="DICOM database folder (for a series UID)")
    parser.add_argument("-o", "--output", required=True, help="output .dcm file")
    parser.add_argument("--series-description", default="", help="SeriesDescription of the new object")
    parser.add_argument("--deidentify", action="store_true", help="PS3.15 basic profile on the output")
    parser.add_argument("--date-shift", type=int, help="with --deidentify: shift dates by DAYS (default: remove)")
    parser.add_argument("--retain-uids", action="store_true", help="with --deidentify: keep UIDs")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export DICOM SEG / Parametric Map (and read them back)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="export_command", metavar="ACTION")
    seg = actions.add_parser("seg", help="segmentation -> DICOM SEG")
    seg.add_argument("segmentation", metavar="SEG", help=".seg.nrrd or label map file")
    seg.add_argument("--fractional", action="store_true", help="FRACTIONAL (probability) SEG instead of BINARY")
    seg.add_argument("--segments", help="comma-separated segment names to export (default: all)")
    seg.add_argument("--stats", help="also write segment statistics (.csv or .json)")
    seg.add_argument("--sr", metavar="SR.dcm", help="also write the statistics as a DICOM SR (TID 1500) on the SEG")
    _common(seg)
    seg.set_defaults(func=run_seg)
    pmap = actions.add_parser("pmap", help="quantitative map -> DICOM Parametric Map")
    pmap.add_argument("map", metavar="MAP", help="map volume file (.nrrd, .nii.gz ...)")
    pmap.add_argument("--quantity", help="T1, T2, T2star, R2star, or any label (default: from the file name)")
    pmap.add_argument("--unit", help="ms, s, 1/s, Hz or 1 (default: by quantity)")
    _common(pmap)
    pmap.set_defaults(func=run_pmap)
    read = actions.add_parser("read", help="DICOM SEG / Parametric Map -> .seg.nrrd / .nrrd")
    read.add_argument("input", metavar="IN.dcm")
    read.add_argument("-o", "--output", required=True)
    read.set_defaults(func=run_read)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _deidentifier(args: argparse.Namespace) -> Optional[Any]:
    if not args.deidentify:
        return None
    from MedSegLib.export.deidentify import Deidentifier

    return Deidentifier(retain_uids=args.retain_uids, date_shift_days=args.date_shift)


def _deidentify_files(paths: list, deidentifier: Any) -> None:
    import pydicom

    from MedSegLib.atomic import atomic_output

    for path in paths:
        ds = deidentifier.apply(pydicom.dcmread(path))
        with atomic_output(path) as temp:
            ds.save_as(temp, enforce_file_format=True)


def _finish(out: Path, args: argparse.Namespace, extra: dict) -> int:
    from MedSegLib.export.validate import validate

    errors, warnings = validate(out)
    summary = {"output": str(out), "valid": not errors, "errors": errors, "warnings": len(warnings), **extra}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {out} ({'valid' if not errors else 'INVALID'}; {len(warnings)} validator warning(s))")
    for line in errors:
        print(f"medseg export: {out}: {line}", file=sys.stderr)
    return 1 if errors else 0


def _load_segmentation(path: str) -> Any:
    from MedSegLib.node_io import import_labelmap_as_segmentation, is_segmentation_file, load_segmentation

    if not Path(path).is_file():
        raise UserInputError("segmentation file not found", path)
    return load_segmentation(path) if is_segmentation_file(path) else import_labelmap_as_segmentation(path)


def run_seg(args: argparse.Namespace) -> int:
    from MedSegLib.export import seg as seg_export
    from MedSegLib.export.reference import load_reference

    reference = load_reference(args.reference, args.db)
    segmentation = _load_segmentation(args.segmentation)
    ids = None
    if args.segments:
        from MedSegLib.segmentation.output import find_segment_id

        ids = [find_segment_id(segmentation, name.strip()) for name in args.segments.split(",") if name.strip()]
    segments = seg_export.segments_from_node(segmentation, reference, ids)
    deidentifier = _deidentifier(args)
    out = seg_export.write_seg(
        segments,
        reference,
        args.output,
        fractional=args.fractional,
        series_description=args.series_description or "MedSeg segmentation",
        deidentify=None if args.sr else deidentifier,  # with an SR: both de-identified together below
    )
    if args.stats or args.sr:
        import numpy as np

        from MedSegLib.export.statistics import segment_statistics, write_statistics

        spacing = np.linalg.norm(reference.ijk_to_ras[:3, :3], axis=0)
        rows = segment_statistics(segments, reference.loaded.array, float(np.prod(spacing)))
        if args.stats:
            write_statistics(rows, args.stats)
        if args.sr:
            from MedSegLib.export.sr import write_measurement_report

            sr_path = write_measurement_report(out, rows, reference, args.sr)
            if deidentifier is not None:  # one remapping for both, so the SR still points at the SEG
                _deidentify_files([Path(out), Path(sr_path)], deidentifier)
            code = _finish(Path(sr_path), args, {"kind": "SR"})
            if code:
                return code
    return _finish(Path(out), args, {"segments": [s.name for s in segments]})


def run_pmap(args: argparse.Namespace) -> int:
    from MedSegLib.export import pmap
    from MedSegLib.export.reference import load_reference
    from MedSegLib.node_io import load_volume

    reference = load_reference(args.reference, args.db)
    if not Path(args.map).is_file():
        raise UserInputError("map file not found", args.map)
    volume = load_volume(args.map)
    out = pmap.export_volume_node(
        volume,
        reference,
        args.output,
        quantity=args.quantity,
        unit=args.unit,
        series_description=args.series_description,
        deidentify=_deidentifier(args),
    )
    return _finish(Path(out), args, {"quantity": args.quantity or volume.GetName()})


def run_read(args: argparse.Namespace) -> int:
    import pydicom

    from MedSegLib.node_io import save_node

    if not Path(args.input).is_file():
        raise UserInputError("file not found", args.input)
    sop = str(pydicom.dcmread(args.input, stop_before_pixels=True).get("SOPClassUID", ""))
    if sop == "1.2.840.10008.5.1.4.1.1.66.4":
        from MedSegLib.export.seg import import_seg

        node = import_seg(args.input)
    elif sop == "1.2.840.10008.5.1.4.1.1.30":
        from MedSegLib.export.pmap import import_parametric_map

        node = import_parametric_map(args.input)
    else:
        raise UserInputError("neither a DICOM SEG nor a Parametric Map", args.input)
    save_node(node, args.output)
    print(f"wrote {args.output}")
    return 0
