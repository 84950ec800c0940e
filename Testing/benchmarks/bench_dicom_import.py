"""Benchmark: DICOM header indexing (MedSeg) side by side with plain pydicom, in the same run.

Run from the project root:

    .venv/bin/python Testing/benchmarks/bench_dicom_import.py [--files 4000] [--workers 2]

It builds a corpus of small real DICOM files (copies of ../shared/data files up to 300 kB, each with a
unique SOPInstanceUID patched in place, same byte length) in a temporary folder, warms the page cache,
then times:

- reference: ``pydicom.dcmread(path, stop_before_pixels=True)`` in a plain loop;
- MedSeg's header walker alone (serial), and in a process pool / thread pool;
- the SQLite cost alone (writing already-parsed results into a fresh database);
- full ``import_paths`` into a fresh database (processes, threads, serial) and a re-import of unchanged files;
- peak memory (resident set) of the reference loop and of a full import, each in a fresh interpreter.

Wall times on a shared machine depend on what else runs (the load average is printed before and after);
files per CPU-second (this process and its pool workers) is the steadier number.

Not collected by pytest (the file name starts with ``bench_``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))

import pydicom  # noqa: E402

from MedSegLib.dicom.database import DicomDatabase  # noqa: E402
from MedSegLib.dicom.indexer import (  # noqa: E402
    ImportSummary,
    _Inserter,
    import_paths,
    iter_parsed,
    parse_files,
    walk_files,
)

GOAL_FILES_PER_S = 5000


def source_files(source: Path, max_size: int) -> List[Tuple[Path, str]]:
    """Real DICOM image files (not DICOMDIR) up to max_size bytes, with their SOPInstanceUID."""
    found = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.stat().st_size <= max_size):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and len(uid) > 12 and ds.file_meta.get("MediaStorageSOPClassUID") != "1.2.840.10008.1.3.10":
            found.append((path, uid))
    return found


def make_corpus(source: Path, target: Path, count: int, max_size: int) -> int:
    files = source_files(source, max_size)
    if not files:
        raise SystemExit(f"no DICOM files under {source}")
    originals = [(path.read_bytes(), uid) for path, uid in files]
    per_folder = 500
    for i in range(count):
        data, uid = originals[i % len(originals)]
        new_uid = uid[:-7] + f"{i:07d}"
        folder = target / f"series{i // per_folder:03d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IM{i:06d}.dcm").write_bytes(data.replace(uid.encode(), new_uid.encode()))
    return len(files)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (pool workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(label: str, n: int, func: Callable[[], object], results: List[Tuple[str, float, float, float]]) -> object:
    """Wall time and CPU time; on a shared machine files per CPU-second is the steadier number."""
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    value = func()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    results.append((label, elapsed, n / elapsed if elapsed > 0 else float("inf"), n / cpu if cpu > 0 else 0.0))
    print(f"  {label:<58s} {elapsed:6.2f} s {n / elapsed:8.0f} files/s | cpu {cpu:6.2f} s "
          f"{n / cpu if cpu > 0 else 0:8.0f} files/cpu-s", flush=True)
    return value


# Run in a fresh interpreter so that each peak is its own. Linux keeps ru_maxrss across exec (it would report
# this benchmark's own size), so the peak is the memory map's high-water mark VmHWM where /proc exists.
_MEMORY_SCRIPT = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
what, corpus, db_dir, workers = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB elsewhere

def status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(corpus) for f in fs)
import pydicom
from MedSegLib.dicom.database import DicomDatabase
from MedSegLib.dicom.indexer import import_paths
before = status_mb("VmRSS")
if what == "reference":
    for p in paths:
        pydicom.dcmread(p, stop_before_pixels=True)
else:
    db = DicomDatabase(db_dir)
    summary = import_paths(db, [corpus], mode=what, workers=workers)
    db.closeDatabase()
    assert summary.added == len(paths)
print(json.dumps({
    "baseline_mb": before,
    "peak_mb": status_mb("VmHWM"),
    "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20,
}))
"""


def peak_memory(what: str, corpus: Path, db_dir: Path, workers: int) -> Dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(ROOT / "MedSegExtension"), what, str(corpus), str(db_dir),
         str(workers)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--max-size", type=int, default=300_000, help="largest source file to copy (bytes)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reference-files", type=int, default=0, help="files for the pydicom loop (0: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    if not args.source.is_dir():
        print(f"shared data not found at {args.source}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        corpus = work / "corpus"
        distinct = make_corpus(args.source, corpus, args.files, args.max_size)
        entries = list(walk_files([str(corpus)]))
        paths = [e[0] for e in entries]
        n = len(paths)
        total_mb = sum(e[1] for e in entries) / 1e6
        for path in paths:  # warm the page cache so every method reads from memory
            with open(path, "rb") as f:
                f.read()
        print(f"corpus: {n} files ({total_mb:.0f} MB) made from {distinct} real files; "
              f"{os.cpu_count()} CPU(s); workers={args.workers}; python {sys.version.split()[0]}; "
              f"pydicom {pydicom.__version__}; load average {os.getloadavg()[0]:.2f}")
        results: List[Tuple[str, float, float, float]] = []

        ref_paths = paths[: args.reference_files] if args.reference_files else paths

        def reference() -> None:
            for p in ref_paths:
                pydicom.dcmread(p, stop_before_pixels=True)

        timed("reference: pydicom dcmread(stop_before_pixels=True), serial", len(ref_paths), reference, results)
        parsed = timed("MedSeg header walker, serial", n, lambda: parse_files(entries), results)
        for mode in ("processes", "threads"):
            timed(f"MedSeg header walker, {mode} x{args.workers}", n,
                  lambda mode=mode: [r for chunk in iter_parsed(entries, mode, args.workers) for r in chunk], results)

        def sqlite_only() -> None:
            db = DicomDatabase(work / "db-sqlite-only")
            for schema in ("main", "tc", "mi"):  # the settings import_paths uses
                db.connection().execute(f"PRAGMA {schema}.synchronous = OFF")
                db.connection().execute(f"PRAGMA {schema}.cache_size = -65536")
            summary = ImportSummary(database="", inputs=[])
            inserter = _Inserter(db, summary, False, {})
            for i in range(0, n, 2048):
                inserter.add_chunk(parsed[i : i + 2048])  # type: ignore[index]
            inserter.finish()
            db.closeDatabase()

        timed("SQLite writes alone (parsed results -> fresh database)", n, sqlite_only, results)
        for mode in ("processes", "threads", "serial"):
            def full_import(mode: str = mode) -> ImportSummary:
                db = DicomDatabase(work / f"db-{mode}")
                summary = import_paths(db, [str(corpus)], mode=mode, workers=args.workers)
                db.closeDatabase()
                assert summary.added == n, summary.format_text()
                return summary
            timed(f"MedSeg import_paths, fresh database, {mode}", n, full_import, results)

        def reimport() -> None:
            db = DicomDatabase(work / "db-processes")
            summary = import_paths(db, [str(corpus)])
            db.closeDatabase()
            assert summary.unchanged == n

        timed("MedSeg import_paths, re-import (all unchanged)", n, reimport, results)
        load_after = os.getloadavg()[0]
        reference_rate, reference_cpu = results[0][2], results[0][3]
        print("\nratio to the pydicom reference: wall files/s | files per cpu-s")
        for label, _elapsed, rate, cpu_rate in results[1:]:
            print(f"  {label:<58s} x{rate / reference_rate:5.1f} | x{cpu_rate / reference_cpu:5.1f}")
        cores = os.cpu_count() or 1
        walker_cpu = results[1][3]
        full = {label.rsplit(", ", 1)[1]: (rate, cpu_rate) for label, _e, rate, cpu_rate in results
                if label.startswith("MedSeg import_paths, fresh database")}
        best_mode = max(full, key=lambda mode: full[mode][0])
        best_rate, best_cpu = full[best_mode]
        print(f"\nheader indexing, full import into the database (fresh, {best_mode}): {best_rate:.0f} files/s wall "
              f"(goal {GOAL_FILES_PER_S}), {best_cpu:.0f} files per cpu-s | reference (pydicom loop): "
              f"{reference_rate:.0f} files/s wall, {reference_cpu:.0f} files per cpu-s | ratio "
              f"x{best_rate / reference_rate:.1f} wall, x{best_cpu / reference_cpu:.1f} cpu")
        import_cpu = full["processes"][1]
        print(f"upper bounds on {cores} idle core(s) (files per cpu-s x cores; load average {load_after:.2f} at the "
              f"end, other load lowers the wall numbers): header walker {walker_cpu * cores:.0f} files/s, "
              f"full import (processes) {import_cpu * cores:.0f} files/s")
        if not args.no_memory:
            print("\npeak memory (resident set, each in a fresh interpreter; interpreter + imports before the run):")
            ref = peak_memory("reference", corpus, work / "db-memory-ref", args.workers)
            print(f"  reference pydicom loop (datasets dropped)          peak {ref['peak_mb']:7.1f} MB "
                  f"(after imports {ref['baseline_mb']:.1f} MB)")
            for mode in ("serial", "processes"):
                ours = peak_memory(mode, corpus, work / f"db-memory-{mode}", args.workers)
                workers = f", largest worker {ours['workers_peak_mb']:.1f} MB (pages shared with the main process " \
                    "counted in both)" if mode == "processes" else ""
                print(f"  MedSeg import_paths, {mode:<9s}                    peak {ours['peak_mb']:7.1f} MB "
                      f"(after imports {ours['baseline_mb']:.1f} MB){workers}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
