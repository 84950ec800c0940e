"""Benchmark: classical segmentation methods, MedSeg vs the bare SimpleITK call (not a pytest test).

For each method, in the same run on the same synthetic CT (default 300 x 512 x 512 int16, the MedSeg
phantom), side by side:
- ``bare``: the SimpleITK filter(s) the method is built on, called directly on a prepared sitk image;
- ``medseg``: ``run_method`` on the numpy volume (incl. the numpy->sitk copy - into MedSeg's reused staging
  image after the warm-up run -, seed conversion, validation);
- ``node``: ``segment_volume_node`` on a volume node (incl. writing the segment into a segmentation node).
Overhead = medseg / bare - 1 (target <= 10 %); every timing follows one untimed warm-up run. All MedSeg
runs come before the bare calls (see the comment in ``main``). Peak memory
above the resident volume (``run_method``, in a forked child) is reported as a multiple of the input volume's
bytes (target <= 2x). The benchmark re-runs itself with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc otherwise
raises its mmap threshold after the first large free, later arrays come from the heap, and freed heap pages
that stay resident hide part of a method's peak (figures then depend on which methods ran before).
Grow-from-seeds: first run and each kind of incremental update on 256^3 (strokes of a
label present, of a new label, removing strokes, erasing part of one; target < 1 s each), with the voxels
expanded / invalidated.

Usage: .venv/bin/python Testing/benchmarks/bench_segmentation.py [--shape 300 512 512] [--methods ...] [--repeat 1]
       .venv/bin/python Testing/benchmarks/bench_segmentation.py --growcut-only [--growcut-size 256]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _release_free_heap() -> None:
    """Give freed heap pages back to the kernel (glibc ``malloc_trim``): pages freed by earlier methods but
    still resident would otherwise be reused without raising the peak, hiding part of it."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def peak_memory(function: Callable[[], Any]) -> float:
    """Peak RSS growth (bytes) while ``function`` runs, measured in a forked child (whose VmHWM starts
    at its RSS at fork), so earlier peaks of this process do not hide it."""
    import os

    _release_free_heap()  # before the fork: the child's high-water mark starts at the RSS it is forked with
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        before = _rss_kib("VmRSS")
        function()
        os.write(write, str((_rss_kib("VmHWM") - before) * 1024).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return float(text or "nan")


def measure(function: Callable[[], Any], repeat: int) -> float:
    """Median seconds over ``repeat`` runs after one untimed warm-up run."""
    function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def bare_calls(image: Any, seed_ijk: Tuple[int, int, int], stats: Dict[str, float]) -> Dict[str, Callable[[], Any]]:
    """The SimpleITK work each method does, without MedSeg (same parameters as MedSeg's defaults)."""
    import SimpleITK as sitk

    lower, upper = stats["lower"], stats["upper"]

    def otsu():
        f = sitk.OtsuThresholdImageFilter()
        f.SetNumberOfHistogramBins(256)
        return f.Execute(image)

    def multi_otsu():
        f = sitk.OtsuMultipleThresholdsImageFilter()
        f.SetNumberOfThresholds(2)
        f.SetNumberOfHistogramBins(256)
        return f.Execute(image)

    def watershed():
        gradient = sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 2.0)
        return sitk.MorphologicalWatershed(gradient, level=20.0, markWatershedLine=False, fullyConnected=False)

    def fast_marching():
        floated = sitk.Cast(image, sitk.sitkFloat32)
        gradient = sitk.GradientMagnitudeRecursiveGaussian(floated, 1.5)
        speed = sitk.Sigmoid(gradient, alpha=-stats["alpha"], beta=stats["beta"], outputMaximum=1.0, outputMinimum=0.0)
        f = sitk.FastMarchingImageFilter()
        f.AddTrialPoint((*seed_ijk, 0))
        f.SetStoppingValue(30.0 * 1.05)
        return sitk.BinaryThreshold(f.Execute(speed), 0, 30.0)

    def level_set():
        # MedSeg's default (intensity) level set on the same ROI: the ROI crop, the analytic signed distance
        # to a 5 mm ball around the seed, thresholds = ball mean +/- 2.5 SD, then ITK's filter.
        spacing = np.array(image.GetSpacing())
        pad = np.rint(LEVEL_SET_ROI_MM / spacing).astype(int)
        low = np.maximum(np.array(seed_ijk) - pad, 0)
        high = np.minimum(np.array(seed_ijk) + pad + 1, np.array(image.GetSize()))
        sub = sitk.Cast(image[low[0] : high[0], low[1] : high[1], low[2] : high[2]], sitk.sitkFloat32)
        k, j, i = np.ogrid[: high[2] - low[2], : high[1] - low[1], : high[0] - low[0]]
        si, sj, sk = np.array(seed_ijk) - low
        radius = max(5.0, 1.5 * float(spacing.max()))
        phi = (
            np.sqrt(((i - si) * spacing[0]) ** 2 + ((j - sj) * spacing[1]) ** 2 + ((k - sk) * spacing[2]) ** 2) - radius
        ).astype(np.float32)
        values = sitk.GetArrayViewFromImage(sub)[phi < 0]
        distance = sitk.GetImageFromArray(phi)
        distance.CopyInformation(sub)
        f = sitk.ThresholdSegmentationLevelSetImageFilter()
        f.SetLowerThreshold(float(values.mean() - 2.5 * values.std()))
        f.SetUpperThreshold(float(values.mean() + 2.5 * values.std()))
        f.SetMaximumRMSError(0.002)
        f.SetNumberOfIterations(300)
        f.SetCurvatureScaling(1.0)
        f.SetPropagationScaling(1.0)
        return f.Execute(distance, sub)

    return {
        "threshold": lambda: sitk.BinaryThreshold(image, 200.0, 3071.0, 1, 0),
        "otsu": otsu,
        "multi-otsu": multi_otsu,
        "region-growing": lambda: sitk.ConnectedThreshold(image, seedList=[seed_ijk], lower=lower, upper=upper),
        "confidence-connected": lambda: sitk.ConfidenceConnected(
            image,
            seedList=[seed_ijk],
            numberOfIterations=4,
            multiplier=2.5,
            initialNeighborhoodRadius=int(stats["cc_radius"]),  # MedSeg's 3 mm default in voxels
        ),
        "watershed": watershed,
        "fast-marching": fast_marching,
        "level-set": level_set,
    }


SEEDED = ("region-growing", "confidence-connected", "fast-marching", "level-set")
LEVEL_SET_ROI_MM = 40.0  # a level set works around its seeds (ITK-SNAP's ROI); both sides use this box

MEDSEG_PARAMETERS: Dict[str, Dict[str, Any]] = {
    "level-set": {"roi_mm": LEVEL_SET_ROI_MM},
    "threshold": {"lower": 200.0, "upper": 3071.0},
    "region-growing": {"leak_radius_mm": 0.0},  # the bare call has no leak cut
    "confidence-connected": {"leak_radius_mm": 0.0},
}


GROWCUT_EDITS: List[Tuple[str, Any, int]] = [  # (update, region on 256^3, new seed value)
    ("stroke of label 1", np.s_[25:29, 25:29, 42], 1),
    ("second stroke of label 1", np.s_[200, 60:80, 50:53], 1),
    ("stroke of label 2", np.s_[60, 200:220, 180:183], 2),
    ("stroke of a new label 3", np.s_[100, 100:120, 100:103], 3),
    ("remove the second stroke", np.s_[200, 60:80, 50:53], 0),
    ("remove the label 3 stroke", np.s_[100, 100:120, 100:103], 0),
    ("erase part of the first stroke", np.s_[25:27, 25:29, 42], 0),
]


def _scaled(region: Any, size: int) -> Any:
    def scale(value: Any) -> Any:
        if isinstance(value, slice):
            return slice(value.start * size // 256, max(value.start * size // 256 + 1, value.stop * size // 256))
        return value * size // 256

    return tuple(scale(v) for v in region)


def grow_from_seeds_update(size: int, check: bool = True) -> Dict[str, Any]:
    """First run and each kind of incremental update on a size^3 float32 volume (noise, two halves 200 HU
    apart, one seed in each): wall and CPU seconds (the CPU time is less affected by other processes on a
    shared machine), voxels expanded and, for removals, invalidated; with ``check``, each update is
    compared with a fresh run."""
    from MedSegLib.segmentation.grow_from_seeds import GrowFromSeeds

    tiny = np.zeros((4, 4, 4), dtype=np.uint16)  # compile (or load) every kernel before timing
    tiny[0, 0, 0], tiny[3, 3, 3] = 1, 2
    warm = GrowFromSeeds(np.zeros((4, 4, 4), dtype=np.float32))
    warm.run(tiny)
    for value in (1, 0):
        tiny[1, 1, 1] = value
        warm.update(tiny)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 10, (size, size, size)).astype(np.float32)
    image[:, :, size // 2 :] += 200
    seeds = np.zeros(image.shape, dtype=np.uint16)
    seeds[size // 2, size // 2, size // 8] = 1
    seeds[size // 2, size // 2, size - size // 8] = 2
    grower = GrowFromSeeds(image)
    results: Dict[str, Any] = {}

    def timed(name: str, function: Callable[[], Any]) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        function()
        results[name] = {
            "s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "visited": grower.last_visited,
            "invalidated": grower.last_invalidated,
        }

    timed("first run", lambda: grower.run(seeds))
    for name, region, value in GROWCUT_EDITS:
        seeds[_scaled(region, size)] = value
        timed(name, lambda: grower.update(seeds))
        if check:
            results[name]["exact"] = bool(np.array_equal(grower.labels, GrowFromSeeds(image).run(seeds)))
    return results


def print_grow_from_seeds(size: int) -> None:
    if size <= 0:  # --growcut-size 0: skip
        return
    print(f"grow-from-seeds {size}^3 (target: every update < 1 s)")
    print(f"{'':<32}{'wall s':>8}{'cpu s':>8}{'expanded':>11}{'invalidated':>13}  == fresh run")
    for name, row in grow_from_seeds_update(size).items():
        exact = "" if "exact" not in row else str(row["exact"])
        print(
            f"{name:<32}{row['s']:>8.3f}{row['cpu_s']:>8.3f}{row['visited']:>11d}{row['invalidated']:>13d}  {exact}",
            flush=True,
        )


def _fixed_mmap_threshold() -> None:
    """Re-execute this script with a fixed glibc mmap threshold (see the module doc) unless already set."""
    import os

    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("K", "J", "I"))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--growcut-size", type=int, default=256, help="0: skip the grow-from-seeds updates")
    parser.add_argument("--growcut-only", action="store_true", help="only the grow-from-seeds timings")
    parser.add_argument("--skip-node", action="store_true", help="skip the segment_volume_node column")
    args = parser.parse_args(argv)
    if args.growcut_only:
        print_grow_from_seeds(args.growcut_size)
        return 0

    import SimpleITK as sitk

    from MedSegLib.runtime import boot
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.segmentation import run_method, segment_volume_node
    from MedSegLib.segmentation.core import SegmentationContext, image_from_array
    from MedSegLib.segmentation.region import seed_range
    from MedSegLib.selftests.segmentation_selftests import deepest_voxel_ras
    from MedSegLib.volume_nodes import RAS_FROM_LPS, add_volume_node, ijk_to_ras_from_geometry

    runtime = boot()
    started = time.perf_counter()
    phantom = make_ct_phantom(tuple(args.shape), (300.0 / args.shape[0], 0.78, 0.78), seed=0)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(phantom.spacing[::-1], np.eye(3), phantom.origin_lps)
    hu = phantom.hu
    print(f"volume {hu.shape} int16 ({hu.nbytes / 2**20:.0f} MiB), built in {time.perf_counter() - started:.1f} s")
    seed = deepest_voxel_ras(phantom.labels == 3, ijk_to_ras)  # right lung
    ctx = SegmentationContext(hu, ijk_to_ras, method_name="bench")
    from MedSegLib.segmentation.core import SeedPoint

    ctx.seeds = [SeedPoint(seed)]
    seed_ijk = tuple(int(v) for v in ctx.seed_indices()[0])
    lower, upper = seed_range(ctx, {"lower": None, "upper": None, "neighborhood_mm": 5.0, "multiplier": 2.5})
    image = image_from_array(hu, ijk_to_ras)
    gradient = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 1.5))
    k1, k2 = float(np.percentile(gradient[::4, ::4, ::4], 50)), float(np.percentile(gradient[::4, ::4, ::4], 95))
    stats = {"lower": lower, "upper": upper, "alpha": (k2 - k1) / 6.0, "beta": (k1 + k2) / 2.0}
    stats["cc_radius"] = max(1, int(round(3.0 / float(min(ctx.spacing_ijk)))))
    del gradient
    bare = bare_calls(image, seed_ijk, stats)
    volume_node = None if args.skip_node else add_volume_node(hu, ijk_to_ras, "bench", runtime.scene)
    methods = args.methods or list(bare) + ["bone", "lungs", "body"]
    print(f"{'method':<22}{'bare s':>9}{'medseg s':>10}{'overhead':>10}{'node s':>9}{'peak/in':>9}{'bare/in':>9}")
    # All MedSeg runs first, then the bare calls: a forked child measured after ITK's MorphologicalWatershed
    # reads ~1.2x the input higher (that filter leaves the heap fragmented), whatever runs in the child.
    medseg: Dict[str, Tuple[float, float, float]] = {}
    for name in methods:
        parameters = MEDSEG_PARAMETERS.get(name, {})
        seeds = [seed] if name in SEEDED else None
        run = functools.partial(run_method, hu, ijk_to_ras, name, seeds=seeds, parameters=parameters)
        medseg_s = measure(run, args.repeat)
        peak = peak_memory(run)
        node_s = float("nan")
        if volume_node is not None:
            node_run = functools.partial(
                segment_volume_node, volume_node, method=name, seeds=seeds, parameters=parameters
            )
            node_s = measure(node_run, 1)
        medseg[name] = (medseg_s, peak, node_s)
    for name in methods:
        medseg_s, peak, node_s = medseg[name]
        bare_s = measure(bare[name], args.repeat) if name in bare else float("nan")
        bare_peak = peak_memory(bare[name]) if name in bare else float("nan")
        overhead = medseg_s / bare_s - 1.0 if bare_s == bare_s else float("nan")
        print(
            f"{name:<22}{bare_s:>9.2f}{medseg_s:>10.2f}{overhead * 100:>9.0f}%{node_s:>9.2f}"
            f"{peak / hu.nbytes:>9.2f}{bare_peak / hu.nbytes:>9.2f}",
            flush=True,
        )
    print_grow_from_seeds(args.growcut_size)
    return 0


if __name__ == "__main__":
    _fixed_mmap_threshold()
    sys.exit(main())
