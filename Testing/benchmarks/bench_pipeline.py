#!/usr/bin/env python3
"""Cases per minute of a pipeline: sequential (1 worker) vs the local process pool (N workers), side by side.

    .venv/bin/python Testing/benchmarks/bench_pipeline.py [--cases 6] [--workers 2] [--pipeline demo]
                                                           [--shape 32 128 128] [--dask]

Cases are CT phantoms written as DICOM (different noise seeds). Each configuration runs the same cases into
its own fresh output folder (no resume), in the default worker setup (spawned processes, one case per
worker, cores // workers threads each); wall time includes starting and booting the workers, which is what a
batch user waits for. ``--dask`` adds a Dask LocalCluster with the same number of workers. Outputs of every
configuration are compared with the sequential run (identical images, segmentations and tables).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))


def _outputs(out: Path, case_id: str) -> dict:
    manifest = json.loads((out / "cases" / case_id / "manifest.json").read_text())
    return {o["path"]: o["sha256"] for o in manifest["outputs"] if o["kind"] != "dicom"}  # SEG UIDs are new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipeline", default="demo", help="name in Resources/Pipelines or a YAML path")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--dask", action="store_true", help="also run on a Dask LocalCluster")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from MedSegLib.pipeline import RunOptions, load_pipeline, resolve_cases, run_pipeline
    from MedSegLib.pipeline.workers import available_cores
    from MedSegLib.resources import resource_path
    from MedSegLib.sample_data import write_ct_phantom

    path = Path(args.pipeline)
    spec = load_pipeline(path if path.suffix == ".yaml" else resource_path("Pipelines", f"{args.pipeline}.yaml"))
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-pipeline-"))
    try:
        slices, rows, cols = args.shape
        spacing = (160.0 / slices, 384.0 / rows, 384.0 / cols)  # the phantom's anatomy in any matrix
        folders = [
            write_ct_phantom(work / "in" / f"case{n:02d}", shape=args.shape, spacing_mm=spacing, seed=n)
            for n in range(args.cases)
        ]
        cases = resolve_cases({}, [str(f) for f in folders])
        configurations = [("sequential (1 worker)", RunOptions(workers=1, quiet=True))]
        configurations.append((f"process pool ({args.workers} workers)", RunOptions(workers=args.workers, quiet=True)))
        if args.dask:
            configurations.append(
                (
                    f"Dask LocalCluster ({args.workers} workers)",
                    RunOptions(workers=args.workers, scheduler="local", quiet=True),
                )
            )
        print(
            f"pipeline {spec.name} ({', '.join(s.id for s in spec.steps)}), {args.cases} CT phantom cases "
            f"{slices}x{rows}x{cols}, {available_cores()} cores"
        )
        results = []
        for label, options in configurations:
            out = work / f"out{len(results)}"
            started = time.perf_counter()
            summary = run_pipeline(spec, cases, out, options)
            seconds = time.perf_counter() - started
            failed = summary["counts"]["failed"]
            results.append((label, seconds, summary, out))
            print(
                f"{label:<32} {seconds:7.1f} s  {60.0 * args.cases / seconds:6.2f} cases/min  "
                f"threads/worker {summary['threads_per_worker']}" + (f"  FAILED {failed}" if failed else "")
            )
        base = results[0][1]
        for label, seconds, _, _ in results[1:]:
            print(f"speed-up of {label}: {base / seconds:.2f}x")
        reference = results[0][3]
        for label, _, _, out in results[1:]:
            same = all(_outputs(reference, case.id) == _outputs(out, case.id) for case in cases)
            print(f"outputs of {label} identical to sequential: {same}")
            if not same:
                return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
