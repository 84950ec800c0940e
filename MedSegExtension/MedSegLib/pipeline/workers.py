"""Worker-process setup, kept free of heavy imports so thread limits apply before numpy/torch load.

One case runs per worker at a time; with N workers on C cores each worker gets C // N threads (OpenMP,
OpenBLAS, MKL, numba, ITK, torch), so workers do not oversubscribe the machine and slow each other down.
Workers live for the whole run: the pool initializer boots the MRML runtime and imports the modules of the
pipeline's steps once per worker (:func:`warm_worker`), and every later case in that worker starts at once.
torch / MONAI are not part of that warm-up: only a deep-learning step imports them, the first time it runs.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Dict, Optional

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


#: what this worker process did so far (boot time, cases run): reported with every case result
WORKER_STATE: Dict[str, Any] = {"boot_s": None, "cases": 0, "warmed": []}

#: step type -> modules its first run would import (warmed up front); torch/MONAI deliberately absent
STEP_MODULES = {
    "load": ("MedSegLib.dicom.loader", "MedSegLib.dicom.mrml", "MedSegLib.node_io"),
    "window": ("MedSegLib.windowing.render", "MedSegLib.windowing.presets", "MedSegLib.png_writer"),
    "segment": ("MedSegLib.segmentation.api",),
    "statistics": ("MedSegLib.statistics",),
    "qmri": ("MedSegLib.qmri.pipeline", "MedSegLib.qmri.acquisition", "MedSegLib.report.plots"),
    "export_seg": ("MedSegLib.export.seg", "MedSegLib.export.reference"),
    "export_pmap": ("MedSegLib.export.pmap", "MedSegLib.export.reference"),
}


def init_worker(threads: int, ignore_sigint: bool = True, pipeline_json: Optional[Dict[str, Any]] = None) -> None:
    """Process-pool initializer: thread limits first, then the libraries that read them, then the warm-up.

    SIGINT is ignored in workers: on Ctrl-C the parent stops them and removes unfinished outputs,
    so no worker is killed half way through a rename.
    """
    os.environ.update(thread_environment(threads))
    os.environ.setdefault("MEDSEG_VTK_QUIET", "1")
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pipeline_json is not None:
        try:
            warm_worker(pipeline_json, threads)
        except Exception:  # noqa: BLE001 - never break the pool here: the first case retries and reports it
            WORKER_STATE["boot_s"] = None


def warm_worker(pipeline_json: Dict[str, Any], threads: int = 0) -> float:
    """Boot the MRML runtime and import the pipeline's step modules once per worker; returns the seconds.

    Idempotent (a Dask worker calls it before each case; only the first call does work). A module that
    fails to import is left for its step to report as "not available" when a case runs.
    """
    if WORKER_STATE["boot_s"] is not None:
        return 0.0
    import importlib

    started = time.perf_counter()
    from MedSegLib.pipeline.schema import import_plugin
    from MedSegLib.runtime import boot

    boot()
    for module in pipeline_json.get("plugins") or []:
        import_plugin(module)
    for step in pipeline_json.get("steps", []):
        for module in STEP_MODULES.get(step.get("type", ""), ()):
            try:
                importlib.import_module(module)
            except ImportError:
                continue
            WORKER_STATE["warmed"].append(module)
    if threads:
        apply_thread_limits(threads)
    WORKER_STATE["boot_s"] = round(time.perf_counter() - started, 3)
    return WORKER_STATE["boot_s"]


def worker_facts() -> Dict[str, Any]:
    """This worker's pid, warm-up seconds, how many cases it ran before, and whether torch is loaded."""
    return {
        "pid": os.getpid(),
        "boot_s": WORKER_STATE["boot_s"],
        "case_number": WORKER_STATE["cases"],
        "torch_loaded": "torch" in sys.modules,
    }


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
