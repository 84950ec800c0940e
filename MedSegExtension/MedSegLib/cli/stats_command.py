"""``medseg stats``: per-segment statistics with Slicer's Segment Statistics names and units.

    medseg stats INPUT SEG -o stats.(csv|json) [--segments NAME ...] [--no-shape]

INPUT is the scalar volume (file, DICOM folder, or series UID with --db) for intensity measures; SEG a
``.seg.nrrd`` segmentation or a label map (``.nii.gz``/``.nrrd``, names from a ``.ctbl`` beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from MedSegLib.errors import UserInputError


def run_stats(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise UserInputError("statistics output must end in .csv or .json", output)
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.node_io import import_labelmap_as_segmentation, is_segmentation_file, load_segmentation
    from MedSegLib.runtime import boot
    from MedSegLib.segmentation.output import find_segment_id
    from MedSegLib.statistics import compute_statistics

    boot()
    volume = load_input_volume(args.input, db=args.db)
    seg_path = Path(args.segmentation)
    if not seg_path.is_file():
        raise UserInputError("segmentation file not found", seg_path)
    segmentation = (
        load_segmentation(seg_path) if is_segmentation_file(seg_path) else import_labelmap_as_segmentation(seg_path)
    )
    ids = [find_segment_id(segmentation, name) for name in args.segments] if args.segments else None
    table = compute_statistics(segmentation, volume, ids, shape_measures=not args.no_shape)
    table.write(output)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1))
    elif not args.quiet:
        for sid in table.segment_ids:
            print(f"{table.names[sid]}: {table.value(sid, 'volume_cm3'):.3f} cm3", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="segment statistics (volume, surface, intensity, shape) as CSV or JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="scalar volume: file, DICOM folder, or series UID with --db")
    parser.add_argument("segmentation", help=".seg.nrrd segmentation or label map (+ .ctbl)")
    parser.add_argument("--output", "-o", required=True, help="stats.csv or stats.json")
    parser.add_argument("--segments", nargs="+", metavar="NAME", help="only these segments (names or IDs)")
    parser.add_argument("--no-shape", action="store_true", help="skip shape measures (centroid, axes, OBB, surface)")
    parser.add_argument("--db", metavar="DIR", help="DICOM database folder (when INPUT is a series UID)")
    parser.add_argument("--json", action="store_true", help="also print the table as JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")
    parser.set_defaults(func=run_stats)
