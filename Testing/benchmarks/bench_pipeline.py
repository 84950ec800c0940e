#!/usr/bin/env python3
"""Cases per minute of a pipeline: sequential (1 worker) vs the local process pool (N workers), side by side.

    .venv/bin/python Testing/benchmarks/bench_pipeline.py [--cases 6] [--workers 2] [--pipeline demo]
                                                           [--shape 32 128 128] [--repeat 1] [--dask]

Cases are CT phantoms written as DICOM (different noise seeds). Each configuration runs the same cases into
its own fresh output folder (no resume), in the default worker setup: spawned processes that live for the whole
run (the pool initializer boots the MRML runtime and imports the steps' modules once per worker; torch/MONAI
only when a deep-learning step first runs), one case per worker at a time, cores // workers threads each.
Wall time includes starting and warming the workers, which is what a batch user waits for.

Reported honestly, per configuration: wall time (median of --repeat runs), cases/min, speed-up and parallel
efficiency against 1 worker, the workers' warm-up seconds, the mean seconds per case inside a worker (which
grows when workers compete for cores or memory bandwidth), how many cases each worker ran, and the load
average before the run (other processes on the machine make every number noisy). ``--dask`` adds a Dask
LocalCluster with the same number of workers. Outputs of every configuration are compared with the
sequential run (images, segmentations, tables and measurements; DICOM objects carry new UIDs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))


def _outputs(out: Path, case_id: str) -> dict:
    manifest = json.loads((out / "cases" / case_id / "manifest.json").read_text())
    files = {o["path"]: o["sha256"] for o in manifest["outputs"] if o["kind"] != "dicom"}  # SEG UIDs are new
    return {"files": files, "measurements": manifest["measurements"]}


def _differences(reference: Path, other: Path, case_ids) -> list:
    found = []
    for case_id in case_ids:
        a, b = _outputs(reference, case_id), _outputs(other, case_id)
        found += [f"{case_id}/{path}" for path, digest in a["files"].items() if b["files"].get(path) != digest]
        for group, values in a["measurements"].items():
            for column, value in values.items():
                other_value = b["measurements"].get(group, {}).get(column)
                if other_value != value:
                    found.append(f"{case_id}: {group} {column} {value:.6g} vs {other_value}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipeline", default="demo", help="name in Resources/Pipelines or a YAML path")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (the median is reported)")
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
        configurations = [("sequential (1 worker)", 1, RunOptions(workers=1, quiet=True))]
        configurations.append(
            (f"process pool ({args.workers} workers)", args.workers, RunOptions(workers=args.workers, quiet=True))
        )
        if args.dask:
            configurations.append(
                (
                    f"Dask LocalCluster ({args.workers} workers)",
                    args.workers,
                    RunOptions(workers=args.workers, scheduler="local", quiet=True),
                )
            )
        cores = available_cores()
        print(
            f"pipeline {spec.name} ({', '.join(s.id for s in spec.steps)}), {args.cases} CT phantom cases "
            f"{slices}x{rows}x{cols}, {cores} cores, {args.repeat} run(s) per configuration"
        )
        results = []
        for label, workers, options in configurations:
            runs = []
            for repeat in range(args.repeat):
                out = work / f"out{len(results)}-{repeat}"
                load = os.getloadavg()[0]
                started = time.perf_counter()
                summary = run_pipeline(spec, cases, out, options)
                runs.append((time.perf_counter() - started, load, summary, out))
            runs.sort(key=lambda run: run[0])
            seconds, load, summary, out = runs[len(runs) // 2]
            ran = [c for c in summary["cases"] if c["status"] == "complete"]
            facts = {}
            for case in ran:
                worker = case.get("worker") or {}
                facts.setdefault(worker.get("pid"), []).append(worker)
            boots = [w[0].get("boot_s") or 0.0 for w in facts.values()]
            per_worker = sorted(len(w) for w in facts.values())
            torch = any(w.get("torch_loaded") for ws in facts.values() for w in ws)
            per_case = statistics.mean(c["seconds"] for c in ran) if ran else float("nan")
            failed = summary["counts"]["failed"]
            results.append({"label": label, "workers": workers, "seconds": seconds, "out": out})
            print(
                f"{label:<30} {seconds:6.1f} s  {60.0 * args.cases / seconds:5.2f} cases/min  "
                f"threads/worker {summary['threads_per_worker']}  warm-up {max(boots, default=0):.1f} s/worker  "
                f"{per_case:.1f} s/case in a worker  cases per worker {per_worker}  torch loaded {torch}  "
                f"load avg before {load:.1f}" + (f"  FAILED {failed}" if failed else "")
            )
        base = results[0]["seconds"]
        for result in results[1:]:
            speedup = base / result["seconds"]
            print(
                f"scaling of {result['label']}: {speedup:.2f}x speed-up, {100 * speedup / result['workers']:.0f}% "
                f"parallel efficiency on {cores} cores (ideal {min(result['workers'], cores)}x)"
            )
        identical = True
        for result in results[1:]:
            different = _differences(results[0]["out"], result["out"], [case.id for case in cases])
            identical = identical and not different
            print(f"outputs of {result['label']} identical to sequential: {not different}")
            for line in different[:12]:
                print(f"  differs: {line}")
        return 0 if identical else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
