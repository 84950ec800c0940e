"""``medseg run``: a declarative pipeline on many cases, locally or on a Dask cluster.

    medseg run PIPELINE.yaml INPUT... -o OUTDIR [--workers N] [--scheduler tcp://HOST:PORT|local]
               [--db DIR] [--force] [--report] [--json]

Each INPUT (a DICOM folder, a volume file, or a series UID with --db) is one case; the pipeline's own
``inputs:`` section may add folders, a DICOM database query or a PACS query. The pipeline is validated
before anything runs (errors name the YAML line). One bad case fails alone with its reason in
OUTDIR/summary.json; complete cases are skipped on re-run (same inputs, MedSeg version and pipeline).
Exit status: 0 all cases complete or skipped, 1 some case failed, 2 bad pipeline/arguments, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run_pipeline_command(args: argparse.Namespace) -> int:
    from MedSegLib.errors import UserInputError
    from MedSegLib.pipeline import RunOptions, load_pipeline, resolve_cases, run_pipeline

    spec = load_pipeline(args.pipeline)
    if args.workers is not None and args.workers < 0:
        raise UserInputError(f"--workers must be >= 0, got {args.workers}")
    cases = resolve_cases(spec.inputs, args.inputs, db=args.db)
    if not cases:
        raise UserInputError("no cases: give INPUT folders or an 'inputs:' section in the pipeline", args.pipeline)
    execution = spec.execution
    workers = args.workers if args.workers is not None else execution.get("workers")
    if workers is None:
        from MedSegLib.pipeline.workers import available_cores

        workers = min(available_cores(), len(cases))
        if workers == 1 and not args.scheduler:
            workers = 0  # one case or one core: no worker process to spawn and boot
    options = RunOptions(
        workers=workers,
        threads_per_worker=args.threads or execution.get("threads_per_worker", "auto"),
        scheduler=args.scheduler,
        on_unavailable=args.on_unavailable,
        force=args.force,
        quiet=args.quiet or args.json,
    )
    summary = run_pipeline(spec, cases, Path(args.output), options)
    report = None
    if args.report:
        from MedSegLib.report import build_report

        report = build_report(Path(args.output))
    if args.json:
        brief = {k: summary[k] for k in ("backend", "workers", "threads_per_worker", "seconds", "counts")}
        brief["cases"] = [
            {k: c.get(k) for k in ("id", "status", "reason", "step", "seconds") if c.get(k) not in (None, "")}
            for c in summary["cases"]
        ]
        brief["summary"] = str(Path(args.output) / "summary.json")
        if report:
            brief["report"] = str(report)
        print(json.dumps(brief, indent=2))
    elif not args.quiet:
        counts = summary["counts"]
        print(
            f"{counts['complete']} complete, {counts['skipped']} skipped, {counts['failed']} failed "
            f"in {summary['seconds']:.1f} s ({summary['backend']}, {summary['workers']} worker(s)); "
            f"summary: {Path(args.output) / 'summary.json'}" + (f"; report: {report}" if report else "")
        )
        for case in summary["cases"]:
            if case["status"] == "failed":
                print(f"failed: {case['id']}: {case.get('reason', '')}", file=sys.stderr)
    return 1 if summary["counts"]["failed"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a YAML pipeline on many cases (process pool or Dask cluster), resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", help="pipeline YAML file (see Resources/Pipelines/)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="case inputs: DICOM folders, volume files, UIDs")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    parser.add_argument("--workers", type=int, help="worker processes (default: cores; 0 = in this process)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: cores // workers)")
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on a Dask distributed cluster ('local' starts a LocalCluster with --workers workers)",
    )
    parser.add_argument("--db", metavar="DIR", help="DICOM database for series-UID inputs")
    parser.add_argument("--force", action="store_true", help="re-run cases that are complete")
    parser.add_argument(
        "--on-unavailable",
        choices=("fail", "skip"),
        help="a step whose capability is not installed fails the case (default) or is skipped",
    )
    parser.add_argument("--report", action="store_true", help="also write OUTDIR/report.html")
    parser.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(func=run_pipeline_command)
