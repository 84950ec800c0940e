"""``medseg report``: a self-contained HTML report (images embedded, no network) of a ``medseg run`` folder.

medseg report OUTDIR [-o report.html] [--title TEXT]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run_report(args: argparse.Namespace) -> int:
    from MedSegLib.report import build_report

    path = build_report(Path(args.outdir), Path(args.output) if args.output else None, title=args.title or "")
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="HTML report (self-contained) of a pipeline run folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="folder written by `medseg run`")
    parser.add_argument("-o", "--output", help="report file (default OUTDIR/report.html)")
    parser.add_argument("--title", help="report title")
    parser.set_defaults(func=run_report)
