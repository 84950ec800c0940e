"""Run a pipeline over cases: in this process, on a local process pool, or on a Dask cluster.

Guarantees, whatever the backend:
- per-case isolation: an exception (or a crashed worker) fails that case alone, with its reason;
- atomic outputs: a case is written into ``OUTDIR/.staging/`` and renamed to ``OUTDIR/cases/<id>`` only when
  every step succeeded and its manifest is written; Ctrl-C or a crash never leaves a partial case folder;
- resumable: a case whose manifest matches the input hash, MedSeg version and pipeline digest is skipped;
- provenance: the manifest records MedSeg and slicer-core versions, parameters, model checksums, input
  series UIDs and a checksum of every output;
- one summary: ``OUTDIR/summary.json`` (+ ``summary.csv``) gathers every case, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from MedSegLib.errors import OperationCancelled, UserInputError
from MedSegLib.pipeline.cases import CaseSpec
from MedSegLib.pipeline.schema import PipelineSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "medseg-case-manifest/1"
SUMMARY_NAME = "summary.json"
STAGING = ".staging"
CRASH_RETRIES = 1  # a case whose worker dies is retried once on a fresh worker, then reported failed

ProgressEvent = Dict[str, Any]


def medseg_version() -> str:
    import MedSegLib

    return str(getattr(MedSegLib, "__version__", "unknown"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> Path:
    from MedSegLib.atomic import atomic_output

    with atomic_output(path) as temp:
        temp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def case_dir(out_root: Path, case_id: str) -> Path:
    return Path(out_root) / "cases" / case_id


def failure_path(out_root: Path, case_id: str) -> Path:
    return Path(out_root) / "failed" / f"{case_id}.json"


def read_manifest(out_root: Path, case_id: str) -> Optional[Dict[str, Any]]:
    path = case_dir(out_root, case_id) / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(out_root: Path, case: CaseSpec, pipeline: PipelineSpec) -> bool:
    """True when an earlier run finished this case from the same inputs, MedSeg version and pipeline."""
    manifest = read_manifest(out_root, case.id)
    return bool(
        manifest
        and manifest.get("status") == "complete"
        and case.input_hash
        and manifest.get("input", {}).get("hash") == case.input_hash
        and manifest.get("medseg_version") == medseg_version()
        and manifest.get("pipeline", {}).get("digest") == pipeline.digest
    )


def _host_provenance() -> Dict[str, Any]:
    from MedSegLib.runtime import slicer_core_version

    return {
        "medseg_version": medseg_version(),
        "slicer_core_version": slicer_core_version(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "host": platform.node(),
    }


def _one_line(error: BaseException) -> str:
    if isinstance(error, UserInputError):
        return error.one_line()
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _finalize(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames only (never a half-copied folder under the name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if target.exists():
        trash = target.parent.parent / STAGING / f"{target.name}.old.{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
    os.replace(staging, target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def run_case(
    case: CaseSpec,
    pipeline: PipelineSpec,
    out_root: Path,
    on_unavailable: str = "fail",
    emit: Optional[Callable[[ProgressEvent], None]] = None,
    keep_scene: bool = False,
    cancel: Any = None,
) -> Tuple[Dict[str, Any], Any]:
    """Run every step on one case in this process; returns (result summary, context).

    Never raises for a problem of the case itself: the result says ``failed`` with the step and reason.
    """
    from MedSegLib.pipeline.context import CaseContext, StepSkipped, StepUnavailable
    from MedSegLib.pipeline.schema import import_plugin
    from MedSegLib.pipeline.steps import get_step
    from MedSegLib.progress import CancelToken
    from MedSegLib.runtime import boot

    for module in pipeline.plugins:  # a fresh worker knows only the built-in steps
        import_plugin(module)
    out_root = Path(out_root)
    started = time.perf_counter()
    started_at = now_iso()
    staging_root = out_root / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{case.id}.", dir=staging_root))
    scratch = Path(tempfile.mkdtemp(prefix=f"{case.id}.scratch.", dir=staging_root))
    runtime = boot()
    if not keep_scene:
        runtime.scene.Clear(0)
    last_emit = [0.0]

    def progress(step: str, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if emit is not None and (now - last_emit[0] > 0.5 or fraction >= 1.0):
            last_emit[0] = now
            emit({"case": case.id, "event": "progress", "step": step, "fraction": fraction, "message": message})

    ctx = CaseContext(
        case_id=case.id,
        scene=runtime.scene,
        out_dir=staging,
        inputs=case.inputs,
        cancel=cancel or CancelToken(),
        progress=progress,
        scratch=scratch,
    )
    ctx.provenance.update(_host_provenance())
    steps_record: List[Dict[str, Any]] = []
    result: Dict[str, Any] = {"id": case.id, "label": case.label, "input_hash": case.input_hash}
    failed_step = ""
    try:
        if case.hash_error:
            raise UserInputError(case.hash_error)
        for number, step_spec in enumerate(pipeline.steps):
            ctx.cancel.raise_if_cancelled()
            ctx.current_step = step_spec.id
            if emit is not None:
                emit(
                    {
                        "case": case.id,
                        "event": "step",
                        "step": step_spec.id,
                        "index": number,
                        "total": len(pipeline.steps),
                    }
                )
            step = get_step(step_spec.type)
            record: Dict[str, Any] = {"id": step_spec.id, "type": step_spec.type, "params": step_spec.params}
            step_started = time.perf_counter()
            try:
                note = step.run(ctx, dict(step_spec.params))
                record.update(status="ok", message=note or "")
            except StepSkipped as skipped:
                record.update(status="skipped", message=str(skipped))
            except StepUnavailable as unavailable:
                record.update(status="not available", message=str(unavailable))
                if on_unavailable != "skip":
                    failed_step = step_spec.id
                    raise UserInputError(f"step {step_spec.id}: {unavailable}") from None
            except (KeyboardInterrupt, OperationCancelled):
                raise
            except BaseException:
                failed_step = step_spec.id
                record.update(status="failed")
                raise
            finally:
                record["seconds"] = round(time.perf_counter() - step_started, 3)
                steps_record.append(record)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "case": case.id,
            "label": case.label,
            "status": "complete",
            "medseg_version": medseg_version(),
            "pipeline": {"name": pipeline.name, "digest": pipeline.digest, "source": pipeline.source},
            "input": {"items": case.inputs, "hash": case.input_hash},
            "started": started_at,
            "finished": now_iso(),
            "seconds": round(time.perf_counter() - started, 3),
            "steps": steps_record,
            "outputs": ctx.outputs,
            "measurements": ctx.measurements,
            "tables": ctx.tables,
            "provenance": {
                **ctx.provenance,
                "parameters": [s.to_json() for s in pipeline.steps],
            },
        }
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        _finalize(staging, case_dir(out_root, case.id))
        failure = failure_path(out_root, case.id)
        if failure.exists():
            failure.unlink()
        result.update(
            status="complete",
            seconds=manifest["seconds"],
            measurements=ctx.measurements,
            steps=[{k: s[k] for k in ("id", "status", "seconds", "message") if k in s} for s in steps_record],
        )
    except (KeyboardInterrupt, OperationCancelled):
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except BaseException as error:  # noqa: BLE001 - one bad study must fail alone
        shutil.rmtree(staging, ignore_errors=True)
        reason = _one_line(error)
        result.update(
            status="failed",
            step=failed_step,
            reason=reason,
            seconds=round(time.perf_counter() - started, 3),
            steps=[{k: s[k] for k in ("id", "status", "seconds", "message") if k in s} for s in steps_record],
        )
        stale = case_dir(out_root, case.id)
        if stale.exists():  # an older result of different inputs must not pass for this run's
            _finalize_removal(stale, out_root)
        write_json_atomic(
            failure_path(out_root, case.id),
            {
                **result,
                "inputs": case.inputs,
                "medseg_version": medseg_version(),
                "pipeline": {"name": pipeline.name, "digest": pipeline.digest},
                "traceback": traceback.format_exc(limit=20),
                "finished": now_iso(),
            },
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not keep_scene:
            runtime.scene.Clear(0)
    if emit is not None:
        emit({"case": case.id, "event": "done", "status": result["status"], "reason": result.get("reason", "")})
    return result, ctx


def _finalize_removal(folder: Path, out_root: Path) -> None:
    trash = Path(out_root) / STAGING / f"{folder.name}.stale.{uuid.uuid4().hex[:8]}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def execute_case(
    case_json: Dict[str, Any],
    pipeline_json: Dict[str, Any],
    out_root: str,
    on_unavailable: str = "fail",
    events: Any = None,
    threads: int = 0,
) -> Dict[str, Any]:
    """Picklable entry point for pool and Dask workers: plain dicts in, the case result out."""
    from MedSegLib.pipeline.workers import WORKER_STATE, apply_thread_limits, warm_worker, worker_facts

    if WORKER_STATE["boot_s"] is None:  # a Dask worker, or a pool started without the warm-up
        warm_worker(pipeline_json, threads)
    elif threads:
        apply_thread_limits(threads)
    emit = None
    if events is not None:

        def emit(event: ProgressEvent) -> None:
            try:
                events.put({**event, "pid": os.getpid()})
            except Exception:  # noqa: BLE001 - progress must never fail a case
                pass

    WORKER_STATE["cases"] += 1
    result, _ = run_case(
        CaseSpec.from_json(case_json), PipelineSpec.from_json(pipeline_json), Path(out_root), on_unavailable, emit
    )
    result["worker_pid"] = os.getpid()
    result["worker"] = worker_facts()
    return result


def execute_case_on_dask(
    case_json: Dict[str, Any], pipeline_json: Dict[str, Any], out_root: str, on_unavailable: str, threads: int
) -> Dict[str, Any]:
    """Dask task: progress events go to the scheduler's ``medseg-progress`` topic."""

    class _Topic:
        def put(self, event: ProgressEvent) -> None:
            from distributed import get_worker

            get_worker().log_event("medseg-progress", event)

    return execute_case(case_json, pipeline_json, out_root, on_unavailable, _Topic(), threads)


# --------------------------------------------------------------------------------------------- progress


class RunProgress:
    """Overall bar (cases, with ETA) plus one line per case event on stderr; thread-safe."""

    def __init__(self, total: int, quiet: bool = False, description: str = "medseg run") -> None:
        from tqdm import tqdm

        self.quiet = quiet
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=description, unit="case", file=sys.stderr, disable=quiet, leave=True)
        self._current: Dict[str, str] = {}
        self._done: set = set()

    def event(self, event: ProgressEvent) -> None:
        with self._lock:
            case = event.get("case", "?")
            kind = event.get("event")
            if kind == "step":
                self._current[case] = f"{event['step']} ({event['index'] + 1}/{event['total']})"
            elif kind == "progress":
                self._current[case] = f"{event['step']} {100 * float(event.get('fraction', 0)):.0f}%"
            elif kind == "done":
                if case in self._done:
                    return
                self._done.add(case)
                self._current.pop(case, None)
                if not self.quiet:
                    text = f"{case}: {event['status']}" + (f" ({event['reason']})" if event.get("reason") else "")
                    self._bar.write(text, file=sys.stderr)
                self._bar.update(1)
            if not self.quiet:
                self._bar.set_postfix_str("; ".join(f"{c}: {s}" for c, s in sorted(self._current.items()))[:120])

    def skipped(self, case: CaseSpec) -> None:
        with self._lock:
            if not self.quiet:
                self._bar.write(f"{case.id}: complete earlier, skipped", file=sys.stderr)
            self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# ------------------------------------------------------------------------------------------------ backends


@dataclass
class RunOptions:
    """How to execute: ``workers`` 0 = in this process; ``scheduler`` a Dask address or "local"."""

    workers: Optional[int] = None
    threads_per_worker: Any = "auto"
    scheduler: Optional[str] = None
    on_unavailable: Optional[str] = None  # None: the pipeline's execution.on_unavailable, else "fail"
    force: bool = False
    quiet: bool = False
    keep_scene: bool = False  # in-process only: leave the last case's nodes in the scene (demo, Slicer)
    extra: Dict[str, Any] = field(default_factory=dict)


def _run_in_process(
    cases: Sequence[CaseSpec], pipeline: PipelineSpec, out_root: Path, options: RunOptions, progress: RunProgress
) -> List[Dict[str, Any]]:
    results = []
    for case in cases:
        result, _ = run_case(case, pipeline, out_root, options.on_unavailable, progress.event, options.keep_scene)
        results.append(result)
    return results


def _stop_pool(executor: Any) -> None:
    """Terminate pool workers now (Ctrl-C): their unfinished staging folders are removed afterwards."""
    processes = list(getattr(executor, "_processes", {}).values())
    for process in processes:
        try:
            process.terminate()
        except Exception:  # noqa: BLE001
            pass
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def _run_on_pool(
    cases: Sequence[CaseSpec], pipeline: PipelineSpec, out_root: Path, options: RunOptions, progress: RunProgress
) -> List[Dict[str, Any]]:
    """One case per worker process (spawned: no VTK state is forked); a crashed worker fails its case alone."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from MedSegLib.pipeline.workers import init_worker, threads_per_worker

    workers = max(1, min(int(options.workers or 1), len(cases)))
    threads = threads_per_worker(workers, options.threads_per_worker)
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    events = manager.Queue()
    stop = threading.Event()
    case_pids: Dict[str, int] = {}  # case -> worker pid, from the case's own events
    processes: Dict[int, Any] = {}  # every worker process seen, to read exit codes after a crash

    def drain() -> None:
        while not stop.is_set():
            try:
                event = events.get(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty or a closed manager
                continue
            if event.get("pid"):
                case_pids[event["case"]] = event["pid"]
            progress.event(event)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    pipeline_json = pipeline.to_json()
    queue: List[Tuple[CaseSpec, int]] = [(case, 0) for case in cases]
    results: Dict[str, Dict[str, Any]] = {}

    def new_executor() -> Any:
        # each worker boots the runtime and imports the step modules once, in parallel, then runs case after case
        return ProcessPoolExecutor(
            workers, mp_context=context, initializer=init_worker, initargs=(threads, True, pipeline_json)
        )

    executor = new_executor()
    running: Dict[Any, Tuple[CaseSpec, int]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                case, crashes = queue.pop(0)
                future = executor.submit(
                    execute_case, case.to_json(), pipeline_json, str(out_root), options.on_unavailable, events, threads
                )
                running[future] = (case, crashes)
            processes.update(getattr(executor, "_processes", None) or {})
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            broken: List[Tuple[CaseSpec, int]] = []
            for future in done:
                case, crashes = running.pop(future)
                try:
                    results[case.id] = future.result()
                except BrokenProcessPool:
                    broken.append((case, crashes))
                except Exception as error:  # noqa: BLE001 - pickling or pool errors: this case only
                    results[case.id] = _crashed(case, out_root, pipeline, _one_line(error))
                    progress.event({"case": case.id, "event": "done", "status": "failed", "reason": _one_line(error)})
            if broken:  # every future of a broken pool fails: find the case whose worker died, requeue the others
                broken += list(running.values())
                running.clear()
                culprits = _crashed_cases(broken, case_pids, processes)
                for case, crashes in broken:
                    if case.id in culprits or crashes >= CRASH_RETRIES:
                        code = culprits.get(case.id)
                        reason = "the worker process died while running this case (crash or out of memory" + (
                            f", exit code {code})" if code is not None else ")"
                        )
                        results[case.id] = _crashed(case, out_root, pipeline, reason)
                        progress.event({"case": case.id, "event": "done", "status": "failed", "reason": reason})
                    else:  # unknown culprit: every suspect gets one more try; innocent ones requeue as they are
                        queue.insert(0, (case, crashes if culprits else crashes + 1))
                executor.shutdown(wait=False, cancel_futures=True)
                executor = new_executor()
        executor.shutdown(wait=True)
    except KeyboardInterrupt:
        _stop_pool(executor)
        raise
    finally:
        time.sleep(0.3)  # let the last progress events arrive
        stop.set()
        drainer.join(timeout=2)
        manager.shutdown()
    return [results[case.id] for case in cases if case.id in results]


def _crashed_cases(
    suspects: Sequence[Tuple[CaseSpec, int]], case_pids: Dict[str, int], processes: Dict[int, Any]
) -> Dict[str, Optional[int]]:
    """Cases whose own worker exited by itself (not the pool's SIGTERM after the breakage) -> exit code."""
    import signal

    time.sleep(0.2)  # the pool terminates the surviving workers right after marking it broken
    culprits: Dict[str, Optional[int]] = {}
    for case, _ in suspects:
        process = processes.get(case_pids.get(case.id, -1))
        code = getattr(process, "exitcode", None)
        if code is not None and code not in (0, -signal.SIGTERM):
            culprits[case.id] = code
    return culprits


def _crashed(case: CaseSpec, out_root: Path, pipeline: PipelineSpec, reason: str = "") -> Dict[str, Any]:
    """Result of a case whose worker process died (segfault, out of memory): recorded like any failure."""
    reason = reason or "the worker process died while running this case (crash or out of memory)"
    result = {"id": case.id, "label": case.label, "status": "failed", "step": "", "reason": reason, "seconds": 0.0}
    write_json_atomic(
        failure_path(out_root, case.id),
        {**result, "inputs": case.inputs, "medseg_version": medseg_version(), "finished": now_iso()},
    )
    return result


def _run_on_dask(
    cases: Sequence[CaseSpec], pipeline: PipelineSpec, out_root: Path, options: RunOptions, progress: RunProgress
) -> List[Dict[str, Any]]:
    """The same cases as Dask tasks: a given scheduler (shared filesystem), or a LocalCluster."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserInputError("--scheduler needs Dask distributed (pip install distributed)") from None
    from MedSegLib.pipeline.workers import thread_environment, threads_per_worker

    cluster = None
    local = options.scheduler in (None, "", "local")
    workers = max(1, int(options.workers or 2))
    threads = threads_per_worker(workers, options.threads_per_worker)
    if local:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=thread_environment(threads),
            silence_logs=40,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(options.scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise UserInputError(f"cannot reach the Dask scheduler {options.scheduler} ({error})") from None
        threads = threads_per_worker(1, options.threads_per_worker) if options.threads_per_worker != "auto" else 0
    try:
        try:
            client.subscribe_topic("medseg-progress", lambda event: progress.event(event[1]))
        except Exception:  # noqa: BLE001 - older distributed: overall progress only
            pass
        pipeline_json = pipeline.to_json()
        futures = {}
        for case in cases:
            future = client.submit(
                execute_case_on_dask,
                case.to_json(),
                pipeline_json,
                str(out_root),
                options.on_unavailable,
                threads,
                key=f"medseg-case-{case.id}-{uuid.uuid4().hex[:8]}",
                pure=False,
                retries=0,
            )
            futures[future] = case
        results: Dict[str, Dict[str, Any]] = {}
        try:
            for future in as_completed(list(futures)):
                case = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 - KilledWorker and friends: this case only
                    result = _crashed(case, out_root, pipeline, f"Dask worker failed: {_one_line(error)}")
                results[case.id] = result
                # the topic may lag or be missing: count the case here too (duplicates are ignored)
                progress.event(
                    {"case": case.id, "event": "done", "status": result["status"], "reason": result.get("reason", "")}
                )
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise
        return [results[case.id] for case in cases if case.id in results]
    finally:
        try:
            client.unsubscribe_topic("medseg-progress")
        except Exception:  # noqa: BLE001
            pass
        client.close()
        if cluster is not None:
            cluster.close()


def _inside_slicer() -> bool:
    from MedSegLib.runtime import in_slicer_application

    return in_slicer_application()


def _clean_staging(out_root: Path) -> None:
    shutil.rmtree(Path(out_root) / STAGING, ignore_errors=True)


def run_pipeline(
    pipeline: PipelineSpec, cases: Sequence[CaseSpec], out_root: Path, options: Optional[RunOptions] = None
) -> Dict[str, Any]:
    """Run (or resume) ``pipeline`` on ``cases`` into ``out_root``; returns and writes the summary."""
    options = dataclasses.replace(options or RunOptions())
    if options.on_unavailable is None:
        options.on_unavailable = pipeline.execution.get("on_unavailable", "fail")
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise UserInputError("output exists and is not a folder", out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise UserInputError("two cases share an id; rename the input folders")
    started, started_at = time.perf_counter(), now_iso()
    todo, skipped = [], []
    for case in cases:
        (skipped if not options.force and is_complete(out_root, case, pipeline) else todo).append(case)
    backend = "dask" if options.scheduler is not None else ("process" if (options.workers or 0) > 0 else "in-process")
    if backend == "process" and _inside_slicer():
        # Slicer's executable cannot be re-launched as a bare Python worker: run cases one after another
        # (use --scheduler with an external Dask cluster for parallel work from Slicer)
        backend = "in-process"
    progress = RunProgress(len(cases), options.quiet, f"medseg run {pipeline.name}")
    for case in skipped:
        progress.skipped(case)
    results: List[Dict[str, Any]] = []
    try:
        if todo:
            if backend == "dask":
                results = _run_on_dask(todo, pipeline, out_root, options, progress)
            elif backend == "process":
                results = _run_on_pool(todo, pipeline, out_root, options, progress)
            else:
                results = _run_in_process(todo, pipeline, out_root, options, progress)
    except KeyboardInterrupt:
        progress.close()
        if backend != "dask" or options.scheduler in ("", "local"):
            _clean_staging(out_root)
        raise
    finally:
        progress.close()
    by_id = {r["id"]: r for r in results}
    entries = []
    for case in cases:
        if case.id in by_id:
            entries.append(by_id[case.id])
            continue
        manifest = read_manifest(out_root, case.id) or {}
        entries.append(
            {
                "id": case.id,
                "label": case.label,
                "status": "skipped",
                "reason": "complete from an earlier run (same inputs, MedSeg version and pipeline)",
                "seconds": 0.0,
                "measurements": manifest.get("measurements", {}),
                "input_hash": case.input_hash,
            }
        )
    if backend != "dask" or options.scheduler in (None, "", "local"):
        _clean_staging(out_root)
    from MedSegLib.pipeline.workers import available_cores, threads_per_worker

    workers = options.workers if backend != "in-process" else 0
    summary = {
        "schema": "medseg-run-summary/1",
        "pipeline": pipeline.to_json(),
        "pipeline_digest": pipeline.digest,
        "medseg_version": medseg_version(),
        "backend": backend,
        "scheduler": options.scheduler,
        "workers": workers,
        "threads_per_worker": threads_per_worker(max(1, workers or 1), options.threads_per_worker),
        "cores": available_cores(),
        "started": started_at,
        "finished": now_iso(),
        "seconds": round(time.perf_counter() - started, 3),
        "counts": {
            status: sum(1 for e in entries if e["status"] == status) for status in ("complete", "skipped", "failed")
        },
        "cases": entries,
    }
    write_json_atomic(out_root / SUMMARY_NAME, summary)
    _write_summary_csv(out_root / "summary.csv", entries)
    return summary


def _write_summary_csv(path: Path, entries: Sequence[Dict[str, Any]]) -> None:
    """One row per case: status, reason, seconds, then every measurement column (the cohort table)."""
    import csv
    import io

    columns: List[str] = []
    for entry in entries:
        for group, values in (entry.get("measurements") or {}).items():
            for column in values:
                name = f"{group} | {column}"
                if name not in columns:
                    columns.append(name)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "status", "seconds", "reason"] + columns)
    for entry in entries:
        measured = entry.get("measurements") or {}
        row = [entry["id"], entry["status"], entry.get("seconds", ""), entry.get("reason", "")]
        for name in columns:
            group, column = name.split(" | ", 1)
            value = measured.get(group, {}).get(column)
            row.append("" if value is None else f"{value:.6g}")
        writer.writerow(row)
    from MedSegLib.atomic import atomic_output

    with atomic_output(path) as temp:
        temp.write_text(buffer.getvalue(), encoding="utf-8")
