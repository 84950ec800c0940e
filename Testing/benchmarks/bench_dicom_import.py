"""Benchmark: DICOM header indexing (MedSeg) side by side with plain pydicom, in the same run.

Run from the project root:

    .venv/bin/python Testing/benchmarks/bench_dicom_import.py [--files 4000] [--workers 2]

It builds a corpus of small real DICOM files (copies of ../shared/data files up to 300 kB, each with a
unique SOPInstanceUID patched in place, same byte length) in a temporary folder, warms the page cache,
then times:

- reference: ``pydicom.dcmread(path, stop_before_pixels=True)`` in a plain loop;
- MedSeg's header walker alone (serial), and in a process pool / thread pool;
- the SQLite cost alone (writing already-parsed results into a fresh database);
- full ``import_paths`` into a fresh database (processes, threads, serial) and a re-import of unchanged files.

Not collected by pytest (the file name starts with ``bench_``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--max-size", type=int, default=300_000, help="largest source file to copy (bytes)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reference-files", type=int, default=0, help="files for the pydicom loop (0: all)")
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
              f"pydicom {pydicom.__version__}")
        results: List[Tuple[str, float, float, float]] = []

        ref_paths = paths[: args.reference_files] if args.reference_files else paths
        timed("reference: pydicom dcmread(stop_before_pixels=True), serial", len(ref_paths),
              lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in ref_paths], results)
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
        reference, reference_cpu = results[0][2], results[0][3]
        print("\nratio to the pydicom reference: wall files/s | files per cpu-s")
        for label, _elapsed, rate, cpu_rate in results[1:]:
            print(f"  {label:<58s} x{rate / reference:5.1f} | x{cpu_rate / reference_cpu:5.1f}")
        cores = os.cpu_count() or 1
        walker_cpu = results[1][3]
        import_cpu = max(r[3] for r in results if r[0].endswith("fresh database, processes"))
        print(f"\nupper bounds on {cores} idle core(s) (files per cpu-s x cores; other load on a shared machine "
              f"lowers the wall numbers above): header walker {walker_cpu * cores:.0f} files/s, "
              f"full import (processes) {import_cpu * cores:.0f} files/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
