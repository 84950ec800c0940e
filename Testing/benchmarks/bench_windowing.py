"""Benchmark: window a 300 x 512 x 512 int16 CT volume to uint8 (not a pytest test).

Side by side in one run (machines drift, so only ratios within a run mean anything):
- pydicom ``apply_windowing`` (LINEAR, float64 out) and the same rounded to uint8 (MedSeg's documented rounding);
- the numpy float64 seed formula ``clip((x - (L - W/2)) / W * 255, 0, 255)`` truncated to uint8;
- MedSeg ``fast_window.window`` for ``seed`` and ``linear`` (numba after ``warm_up()``, and the numpy fallback);
- a memcpy of the input (the ceiling).
GB/s are input bytes per second (median of ``--repeat`` runs). Bit-exactness of MedSeg's outputs against both
references is checked, and MedSeg's peak traced numpy memory is reported relative to one output volume.

Usage: .venv/bin/python Testing/benchmarks/bench_windowing.py [--slices 300] [--repeat 5] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))

LEVEL, WIDTH = 40.0, 400.0


def ct_like_volume(slices: int, seed: int = 0) -> np.ndarray:
    """int16 HU in -1024..3071: a smooth body on air with noise (branches and LUT hits like real CT)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-256:256, -256:256]
    body = ((x / 220.0) ** 2 + (y / 160.0) ** 2) < 1
    lung = (((x - 90) / 60.0) ** 2 + (y / 90.0) ** 2 < 1) | (((x + 90) / 60.0) ** 2 + (y / 90.0) ** 2 < 1)
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lung] = -850
    plane[(np.abs(x) < 20) & (y > 60) & (y < 110)] = 700
    volume = np.empty((slices, 512, 512), dtype=np.int16)
    for k in range(slices):
        noise = rng.normal(0, 20, (512, 512))
        volume[k] = np.clip(plane + noise, -1024, 3071).astype(np.int16)
    return volume


def timed(function: Callable[[], object], repeat: int) -> float:
    function()  # warm-up: numba compilation / page cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def pydicom_dataset(bits: int = 8):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = bits
    ds.PixelRepresentation = 0
    ds.WindowCenter = LEVEL
    ds.WindowWidth = WIDTH
    ds.VOILUTFunction = "LINEAR"
    return ds


def round_half_up(y: np.ndarray) -> np.ndarray:
    whole = np.floor(y)
    whole += (y - whole) >= 0.5
    return whole.astype(np.uint8)


def numpy_seed(volume: np.ndarray) -> np.ndarray:
    x = volume.astype(np.float64)
    return np.floor(np.clip((x - (LEVEL - WIDTH / 2)) / WIDTH * 255, 0, 255)).astype(np.uint8)


def peak_overhead(function: Callable[[], np.ndarray], output_bytes: int) -> float:
    """Peak traced allocation while ``function`` runs, in units of one output volume."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak / output_bytes


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="MedSeg threads (default: all cores)")
    args = parser.parse_args(argv)

    from pydicom.pixels import apply_windowing

    from MedSegLib.windowing import fast_window

    volume = ct_like_volume(args.slices)
    nbytes = volume.nbytes
    print(f"volume {volume.shape} int16 = {nbytes / 1e6:.0f} MB; W {WIDTH:g} / L {LEVEL:g}; "
          f"cpus {fast_window.default_threads()}")  # fmt: skip

    started = time.perf_counter()
    warm = fast_window.warm_up()
    print(f"numba warm-up (import, cached kernels, thread pool): {time.perf_counter() - started:.2f} s"
          if warm else "numba not installed: only the numpy backend is measured")  # fmt: skip
    engine = "numba" if warm else "numpy"

    def medseg(function: str, backend: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            return fast_window.window(volume, LEVEL, WIDTH, function, np.uint8, threads=args.threads, engine=backend)

        return run

    candidates: Dict[str, Callable[[], object]] = {
        "memcpy (np.copy)": lambda: volume.copy(),
        "pydicom apply_windowing (float64 out)": lambda: apply_windowing(volume, pydicom_dataset()),
        "pydicom apply_windowing + round to uint8": lambda: round_half_up(apply_windowing(volume, pydicom_dataset())),
        "numpy float64 seed formula -> uint8": lambda: numpy_seed(volume),
        f"MedSeg window seed -> uint8 ({engine})": medseg("seed", engine),
        f"MedSeg window linear -> uint8 ({engine})": medseg("linear", engine),
        "MedSeg window seed, numpy backend": medseg("seed", "numpy"),
        "MedSeg window linear, numpy backend": medseg("linear", "numpy"),
    }
    seconds = {name: timed(function, args.repeat) for name, function in candidates.items()}
    pydicom_s = seconds["pydicom apply_windowing (float64 out)"]  # the anchor's pydicom figure
    numpy_s = seconds["numpy float64 seed formula -> uint8"]
    print(f"{'kernel':44s} {'seconds':>8s} {'GB/s':>7s} {'x pydicom':>10s} {'x numpy':>8s}")
    for name, value in seconds.items():
        print(f"{name:44s} {value:8.4f} {nbytes / value / 1e9:7.2f} {pydicom_s / value:10.1f} {numpy_s / value:8.1f}")

    exact_seed = np.array_equal(medseg("seed", engine)(), numpy_seed(volume))
    exact_linear = np.array_equal(medseg("linear", engine)(), round_half_up(apply_windowing(volume, pydicom_dataset())))
    exact_numpy = np.array_equal(medseg("linear", "numpy")(), medseg("linear", engine)())
    print(f"bit-exact: seed vs float64 formula {exact_seed}; linear vs pydicom {exact_linear}; "
          f"numpy backend vs default {exact_numpy}")  # fmt: skip
    overhead = peak_overhead(medseg("seed", engine), volume.size)
    print(f"MedSeg peak traced memory: {overhead:.3f} x one uint8 output volume")
    return 0 if exact_seed and exact_linear and exact_numpy else 1


if __name__ == "__main__":
    sys.exit(main())
