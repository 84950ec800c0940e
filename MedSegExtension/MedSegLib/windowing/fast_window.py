"""Fast, bit-exact windowing of whole volumes (the path the CLI, the renderer and the demo use).

Strategy (every branch reproduces :mod:`MedSegLib.windowing.voi_lut` exactly):

- ``auto`` picks numba once it is warm (:func:`warm_up`, or any earlier numba call) or for inputs of 1 GB
  and more: a cold start costs ~1 s, more than it saves on one CT volume in a one-shot command;
- integer inputs of <= 16 bits (CT's int16 / uint16): a LUT over every possible input value, computed by
  the numpy reference itself (so exact by construction), then gathered in parallel: a numba kernel, or
  without numba ``np.take`` in chunks on a thread pool;
- other inputs (float32/64, int32): with numba, ``seed`` / ``linear`` / ``linear-exact`` run as one parallel
  kernel that repeats the reference's float64 operations per voxel; ``sigmoid`` (and everything without
  numba, e.g. a 3D Slicer without it, or ``MEDSEG_WINDOW_BACKEND=numpy``) runs the numpy reference
  chunk by chunk on a thread pool.

Memory: the only large allocation is the output (non-contiguous inputs are processed one slab at a
time); LUTs are at most 64 K entries. Threads: ``threads`` (default: all cores numba / the OS report).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Callable, Optional, Tuple

import numpy as np

from MedSegLib.windowing.voi_lut import (
    VoiLut,
    apply_voi_lut_sequence_reference,
    check_window,
    linear_parameters,
    lut_for_integer_dtype,
    normalize_function,
    output_dtype,
    output_max,
    voi_lut_index_reference,
    warn_nan,
    window_float_reference,
)

BACKEND_ENV = "MEDSEG_WINDOW_BACKEND"
_CHUNK = 1 << 18  # elements per numpy work unit: fits L2 with its temporaries


AUTO_NUMBA_BYTES = 1 << 30  # cold numba (import + cache load + thread pool) costs ~1 s: worth it from ~1 GB
_numba_warm = False


@lru_cache(maxsize=1)
def _numba_kernels() -> Optional[Any]:
    try:
        from MedSegLib.windowing import _kernels
    except ImportError:
        return None
    return _kernels


def numba_available() -> bool:
    return _numba_kernels() is not None


def warm_up() -> bool:
    """Load numba and its cached kernels now (e.g. at Slicer startup or before a batch); True if available.

    Until then ``auto`` uses the numpy path for inputs under 1 GB: a cold numba start (~1 s) costs more
    than it saves on one volume, while warm it is 3-5x faster than the numpy path.
    """
    global _numba_warm
    kernels = _numba_kernels()
    if kernels is None:
        return False
    codes = np.zeros(8, dtype=np.uint16)
    for dtype in (np.uint8, np.uint16, np.float64):
        kernels.gather(codes, np.zeros(65536, dtype=dtype), np.empty(8, dtype=dtype))
    for source in (np.zeros(8, np.float32), np.zeros(8, np.float64)):
        kernels.seed_to_int(source, 0.0, 1.0, 255.0, np.empty(8, np.uint8))
        kernels.linear_to_int(source, 0.0, 1.0, -0.5, 0.5, 255.0, np.empty(8, np.uint8))
    _numba_warm = True
    return True


def backend(nbytes: Optional[int] = None, requested: Optional[str] = None) -> str:
    """"numba" or "numpy": what :func:`window` uses for an input of ``nbytes`` (None: a large one).

    ``requested`` (or ``MEDSEG_WINDOW_BACKEND``): "auto" (default; numba once warm or from 1 GB),
    "numba" (error if missing) or "numpy".
    """
    wanted = (requested or os.environ.get(BACKEND_ENV, "auto")).strip().lower()
    if wanted not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend must be auto, numba or numpy, got {wanted!r}")
    if wanted == "numpy":
        return "numpy"
    if wanted == "numba":
        if not numba_available():
            raise RuntimeError("the numba backend was requested but numba is not installed")
        return "numba"
    if _numba_warm or nbytes is None or nbytes >= AUTO_NUMBA_BYTES:
        return "numba" if numba_available() else "numpy"
    return "numpy"


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _start(engine: str) -> str:
    """Mark numba warm once it runs (its one-time start is then paid)."""
    global _numba_warm
    if engine == "numba":
        _numba_warm = True
    return engine


def _prepare(values: Any, out_dtype: Any, out: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    array = np.asarray(values)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"cannot window values of type {array.dtype}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    dtype = output_dtype(out_dtype)
    if out is None:
        out = np.empty(array.shape, dtype=dtype)
    elif out.shape != array.shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {dtype} array of shape {array.shape}")
    return array, out


def _slabs(array: np.ndarray, out: np.ndarray):
    """(flat input, flat output) pieces: the whole array when contiguous, else one slab per first index."""
    if array.flags.c_contiguous or array.ndim <= 1:
        yield np.ascontiguousarray(array).reshape(-1), out.reshape(-1)
        return
    for index in range(array.shape[0]):
        yield from _slabs(array[index], out[index])


def _with_numba_threads(threads: Optional[int], call: Callable[[], int]) -> int:
    import numba

    if threads is None:
        return call()
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        return call()
    finally:
        numba.set_num_threads(previous)


def _run_chunks(size: int, threads: Optional[int], work: Callable[[int, int], int]) -> int:
    """Run ``work(start, stop)`` over chunks of a flat range on a thread pool; sum what it returns."""
    bounds = [(start, min(start + _CHUNK, size)) for start in range(0, size, _CHUNK)]
    workers = min(len(bounds), threads or default_threads())
    if workers <= 1:
        return sum(work(start, stop) for start, stop in bounds)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(lambda b: work(*b), bounds))


def _integer_lut(dtype: np.dtype, level: float, width: float, function: str, out_dtype: np.dtype) -> np.ndarray:
    """Output for every value of a <= 16-bit integer type, indexed by its raw bit pattern."""
    values, _ = lut_for_integer_dtype(dtype)
    y = window_float_reference(values, level, width, function, output_max(out_dtype))
    return _to_output(y, function, out_dtype)[0]


def _to_output(y: np.ndarray, function: str, dtype: np.dtype) -> Tuple[np.ndarray, int]:
    """Reference float -> output dtype (NaN -> 0), and the NaN count."""
    nan = np.isnan(y)
    count = int(nan.sum())
    if count:
        y[nan] = 0.0
    if dtype == np.float64:
        return y, count
    if function == "seed":
        return np.floor(y).astype(dtype), count
    whole = np.floor(y)
    whole += (y - whole) >= 0.5
    return whole.astype(dtype), count


def _gather(codes: np.ndarray, lut: np.ndarray, out: np.ndarray, threads: Optional[int], engine: str) -> None:
    if engine == "numba":
        kernels = _numba_kernels()
        _with_numba_threads(threads, lambda: kernels.gather(codes, lut, out))
        return

    def work(start: int, stop: int) -> int:
        np.take(lut, codes[start:stop], out=out[start:stop], mode="clip")  # codes always in range
        return 0

    _run_chunks(codes.size, threads, work)


def _small_integer(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" and dtype.itemsize <= 2


def window(
    values: Any,
    level: float,
    width: float,
    function: str = "seed",
    out_dtype: Any = np.uint8,
    out: Optional[np.ndarray] = None,
    threads: Optional[int] = None,
    engine: Optional[str] = None,
) -> np.ndarray:
    """Window ``values`` (any shape; int, uint or float) exactly as the reference, fast.

    ``function``: seed | linear | linear-exact | sigmoid; ``out_dtype``: uint8 | uint16 | float64;
    ``engine``: auto | numba | numpy (see :func:`backend`). NaN -> 0 with one RuntimeWarning.
    """
    function = normalize_function(function)
    check_window(float(width), function)
    level, width = float(level), float(width)
    array, out = _prepare(values, out_dtype, out)
    dtype = out.dtype
    if array.size == 0:
        return out
    engine = _start(backend(array.nbytes, engine))
    ymax = float(output_max(dtype))
    nan_total = 0
    lut = None
    for flat_in, flat_out in _slabs(array, out):
        if _small_integer(flat_in.dtype):
            if lut is None:
                lut = _integer_lut(flat_in.dtype, level, width, function, dtype)
            codes = flat_in.view(f"u{flat_in.dtype.itemsize}")
            _gather(codes, lut, flat_out, threads, engine)
        elif engine == "numba" and function != "sigmoid":
            kernels = _numba_kernels()
            as_float = dtype == np.float64
            if function == "seed":
                kernel = kernels.seed_to_float if as_float else kernels.seed_to_int
                args = (flat_in, level - width / 2.0, width, ymax, flat_out)
            else:
                center, adjusted, lower, upper = linear_parameters(level, width, function)
                kernel = kernels.linear_to_float if as_float else kernels.linear_to_int
                args = (flat_in, center, adjusted, lower, upper, ymax, flat_out)
            nan_total += int(_with_numba_threads(threads, lambda k=kernel, a=args: k(*a)))
        else:

            def work(start: int, stop: int, src=flat_in, dst=flat_out) -> int:
                y = window_float_reference(src[start:stop], level, width, function, int(ymax))
                converted, count = _to_output(y, function, dtype)
                dst[start:stop] = converted
                return count

            nan_total += _run_chunks(flat_in.size, threads, work)
    warn_nan(nan_total)
    return out


def apply_voi_lut_sequence(
    values: Any,
    lut: VoiLut,
    out: Optional[np.ndarray] = None,
    threads: Optional[int] = None,
    engine: Optional[str] = None,
) -> np.ndarray:
    """Explicit VOI LUT, exactly as :func:`voi_lut.apply_voi_lut_sequence_reference`, fast for <= 16-bit ints."""
    dtype = lut.data.dtype
    array = np.asarray(values)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if out is None:
        out = np.empty(array.shape, dtype=dtype)
    elif out.shape != array.shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {dtype} array of shape {array.shape}")
    if array.size == 0:
        return out
    engine = _start(backend(array.nbytes, engine))
    composed = None
    nan_total = 0
    for flat_in, flat_out in _slabs(array, out):
        if _small_integer(flat_in.dtype):
            if composed is None:
                composed = apply_voi_lut_sequence_reference(lut_for_integer_dtype(flat_in.dtype)[0], lut)
            _gather(flat_in.view(f"u{flat_in.dtype.itemsize}"), composed, flat_out, threads, engine)
        else:

            def work(start: int, stop: int, src=flat_in, dst=flat_out) -> int:
                index = voi_lut_index_reference(src[start:stop], lut)
                nan = index < 0
                dst[start:stop] = lut.data[np.maximum(index, 0)]
                count = int(nan.sum())
                if count:
                    dst[start:stop][nan] = 0
                return count

            nan_total += _run_chunks(flat_in.size, threads, work)
    warn_nan(nan_total)
    return out


def window_to_uint8(values: Any, level: float, width: float) -> np.ndarray:
    """Seed formula to uint8: Slicer's display mapping (truncating), exact and fast."""
    return window(values, level, width, "seed", np.uint8)
