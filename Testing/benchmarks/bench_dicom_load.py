"""Benchmark: load a 300 x 512 x 512 int16 CT series with MedSeg, SimpleITK and dcm2niix (not a pytest test).

The series is made by replicating real uncompressed slices (shared/data/dcm_qa_ct Philips) with new positions and
UIDs into a temporary folder, so every tool reads the same 300 files from the page cache. Prints wall times,
ratios, and MedSeg's peak traced memory (numpy allocations) relative to the output volume.

Usage: .venv/bin/python Testing/benchmarks/bench_dicom_load.py [--slices 300] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))
SOURCE = ROOT.parent / "shared" / "data" / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"


def make_series(target: Path, slices: int) -> None:
    """Write ``slices`` native int16/uint16 files 1 mm apart, cycling through the real Philips slices."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = sorted((p for p in SOURCE.iterdir() if p.name != "DIRFILE"), key=lambda p: int(p.name[1:]))[:20]
    templates = [pydicom.dcmread(p) for p in sources]
    for ds in templates:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    series_uid = generate_uid()
    origin = [float(v) for v in templates[0].ImagePositionPatient]
    order = np.random.default_rng(0).permutation(slices)  # file names not in spatial order
    for number in range(slices):
        ds = templates[number % len(templates)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + number * 1.0]
        ds.save_as(target / f"IM{order[number]:05d}.dcm", enforce_file_format=True)


def time_it(function, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="reuse / keep the generated series in this folder")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"source data not found: {SOURCE}")
    temp = Path(tempfile.mkdtemp(prefix="medseg_bench_"))
    series = args.keep or temp / "series"
    series.mkdir(parents=True, exist_ok=True)
    if len(list(series.iterdir())) != args.slices:
        for old in series.iterdir():
            old.unlink()
        print(f"writing {args.slices} slices to {series} ...", flush=True)
        make_series(series, args.slices)
    files = sorted(str(p) for p in series.iterdir())
    for path in files:  # warm the page cache for every tool alike
        Path(path).read_bytes()

    from MedSegLib.dicom import loader

    results: dict[str, float] = {}
    results["MedSeg load_folder"], volumes = time_it(lambda: loader.load_folder(series), args.repeat)
    volume = volumes[0]
    results["MedSeg examine only"], loadables = time_it(lambda: loader.examine_files(files), args.repeat)
    results["MedSeg pixels only"], _ = time_it(lambda: loader.load_loadable(loadables[0]), args.repeat)

    tracemalloc.start()
    volume = loader.load_folder(series)[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    output_bytes = volume.array.nbytes

    try:
        import SimpleITK as sitk

        def read_sitk():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
            reader.SetOutputPixelType(sitk.sitkInt16)
            return sitk.GetArrayFromImage(reader.Execute())

        results["SimpleITK ImageSeriesReader (int16)"], itk = time_it(read_sitk, args.repeat)
        same = np.array_equal(np.asarray(itk), volume.array)
        print(f"SimpleITK voxels identical to MedSeg: {same}")
    except ImportError:
        print("SimpleITK not installed: skipped")

    dcm2niix = shutil.which("dcm2niix")
    if dcm2niix:
        out_dir = temp / "dcm2niix"
        out_dir.mkdir(exist_ok=True)

        def run_dcm2niix():
            for old in out_dir.iterdir():
                old.unlink()
            subprocess.run([dcm2niix, "-z", "n", "-b", "n", "-o", str(out_dir), "-f", "bench", str(series)],
                           check=True, capture_output=True)

        results["dcm2niix -z n (writes .nii)"], _ = time_it(run_dcm2niix, args.repeat)
        from MedSegLib.dicom.volume_files import write_volume

        def load_and_write():
            write_volume(loader.load_folder(series)[0], temp / "medseg.nii")

        results["MedSeg load + write .nii"], _ = time_it(load_and_write, args.repeat)
        try:
            import nibabel as nib

            ref = nib.load(str(out_dir / "bench.nii"))
            ours = nib.load(str(temp / "medseg.nii"))
            print(f"dcm2niix voxels identical to MedSeg .nii: {np.array_equal(ref.get_fdata(), ours.get_fdata())}, "
                  f"affine max diff {np.abs(ref.affine - ours.affine).max():.2e} mm")
        except (ImportError, FileNotFoundError) as error:
            print(f"dcm2niix comparison skipped: {error}")
    else:
        print("dcm2niix not on PATH: skipped (apt-get install dcm2niix)")

    print(f"\nseries: {volume.array.shape} {volume.array.dtype}, best of {args.repeat}")
    base = results["MedSeg load_folder"]
    for name, seconds in results.items():
        print(f"  {name:40s} {seconds:7.3f} s   ({seconds / base:5.2f} x MedSeg load_folder)")
    print(f"  MedSeg peak traced memory {peak / 2**20:.0f} MiB = {peak / output_bytes:.2f} x output "
          f"({output_bytes / 2**20:.0f} MiB)")
    if not args.keep:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
