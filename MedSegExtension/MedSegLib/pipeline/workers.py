"""Worker-process setup, kept free of heavy imports so thread limits apply before numpy/torch load.

One case runs per worker; with N workers on C cores each worker gets C // N threads (OpenMP, OpenBLAS,
MKL, numba, ITK, torch), so workers do not oversubscribe the machine and slow each other down.
"""

from __future__ import annotations

import os
import signal
import sys

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


def available_cores() -> int:
    """CPU cores this process may use (affinity / container limits respected where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, requested: object = "auto") -> int:
    """``requested`` if an integer, else cores // workers (at least 1)."""
    if isinstance(requested, int) and requested > 0:
        return requested
    return max(1, available_cores() // max(1, workers))


def thread_environment(threads: int) -> dict:
    return {name: str(threads) for name in THREAD_VARIABLES}


def init_worker(threads: int, ignore_sigint: bool = True) -> None:
    """Process-pool initializer: thread limits first, then (lazily) the libraries that read them.

    SIGINT is ignored in workers: on Ctrl-C the parent stops them and removes unfinished outputs,
    so no worker is killed half way through a rename.
    """
    os.environ.update(thread_environment(threads))
    os.environ.setdefault("MEDSEG_VTK_QUIET", "1")
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def apply_thread_limits(threads: int) -> None:
    """Thread limits for libraries already imported (Dask workers start before a task can set env)."""
    os.environ.update(thread_environment(threads))
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # noqa: BLE001 - numba missing or its threading layer already fixed
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except Exception:  # noqa: BLE001
        pass
    torch = sys.modules.get("torch")  # never import torch just to limit it
    if torch is not None:
        try:
            torch.set_num_threads(threads)
        except Exception:  # noqa: BLE001
            pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # noqa: BLE001 - optional
        pass
