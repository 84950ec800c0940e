"""Sliding-window inference that equals MONAI 1.6.1 ``sliding_window_inference`` but streams by slab.

Why not call MONAI: its output buffer holds ``classes x full volume`` float32 (41 GiB for 105 classes on
512x512x400) plus a count map of the same spatial size. Here windows are visited in MONAI's order
(C-order over window starts, first spatial axis slowest), so once every window starting before z has
run, the voxels below z are final: they are divided by the summed weights and handed to a consumer
(argmax to uint8, optional probabilities) and their buffer rows are dropped.

Peak memory of the stitching: a ring buffer of ``classes x rows x H x W`` float32 for the weighted sums
plus ``rows x H x W`` for the weights, where ``rows`` is ``roi_z`` plus the z-extent one window batch
spans beyond its first row (0 when batches stay within a row of windows); finished rows are averaged and
handed on ``FLUSH_ROWS`` at a time. The arithmetic (window positions, padding, Gaussian
importance map with its 1e-3 floor, weighted sum then division, window order) follows MONAI exactly,
so results agree to float rounding (tested: max abs diff <= 1e-5 in fp32).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from MedSegLib.deep_learning.window_processes import ForkedWindowWorkers, forking_available
from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback

BLEND_MODES = ("gaussian", "constant")
FLUSH_ROWS = 8  # finished rows are averaged and handed on this many at a time (bounds the temporary)


class DeviceOutOfMemory(UserInputError):
    """The accelerator ran out of memory even with one window per batch."""


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go on the (padded) image, exactly as MONAI places them."""

    image_size: Tuple[int, ...]  # original spatial size
    padded_size: Tuple[int, ...]  # max(image, roi) per dim
    roi_size: Tuple[int, ...]
    pad_before: Tuple[int, ...]
    starts: Tuple[Tuple[int, ...], ...]  # per-dim window starts (padded coordinates)

    @property
    def windows(self) -> List[Tuple[int, ...]]:
        """All window starts in MONAI's order (meshgrid 'ij': last dim fastest)."""
        import itertools

        return list(itertools.product(*self.starts))

    @property
    def num_windows(self) -> int:
        return math.prod(len(s) for s in self.starts)


def plan_windows(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: Union[float, Sequence[float]]
) -> WindowPlan:
    """MONAI's ``_get_scan_interval`` + ``dense_patch_slices`` + padding rule, without MONAI."""
    ndim = len(image_size)
    roi = tuple(int(r) if r is not None and int(r) > 0 else int(s) for r, s in zip(roi_size, image_size))
    if len(roi) != ndim:
        raise ValueError(f"roi_size {tuple(roi_size)} does not match {ndim} spatial dims")
    overlaps = tuple(overlap) if isinstance(overlap, (list, tuple)) else (float(overlap),) * ndim
    for o in overlaps:
        if not 0 <= o < 1:
            raise UserInputError(f"overlap must be >= 0 and < 1, got {o}")
    padded = tuple(max(int(s), r) for s, r in zip(image_size, roi))
    pad_before = tuple((max(r - int(s), 0)) // 2 for s, r in zip(image_size, roi))
    starts = []
    for size, r, o in zip(padded, roi, overlaps):
        interval = r if r == size else max(int(r * (1 - o)), 1)
        num = int(math.ceil(float(size) / interval))
        steps = next((d for d in range(num) if d * interval + r >= size), None)
        count = steps + 1 if steps is not None else 1
        dim_starts = []
        for idx in range(count):
            start = idx * interval
            start -= max(start + r - size, 0)
            dim_starts.append(start)
        starts.append(tuple(dim_starts))
    return WindowPlan(tuple(int(s) for s in image_size), padded, roi, pad_before, tuple(starts))


def importance_map(
    roi_size: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125, device: Any = "cpu"
) -> Any:
    """MONAI's ``compute_importance_map``: separable Gaussian centred at (p-1)/2, sigma = scale*p, floor 1e-3."""
    import torch

    if mode not in BLEND_MODES:
        raise UserInputError(f"blend mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")
    if mode == "constant":
        return torch.ones(tuple(roi_size), dtype=torch.float32, device=device)
    scales = tuple(sigma_scale) if isinstance(sigma_scale, (list, tuple)) else (sigma_scale,) * len(roi_size)
    weight = None
    for i, (p, s) in enumerate(zip(roi_size, scales)):
        sigma = p * s
        x = torch.arange(start=-(p - 1) / 2.0, end=(p - 1) / 2.0 + 1, dtype=torch.float, device=device)
        x = torch.exp(x**2 / (-2 * sigma**2))
        weight = x if i == 0 else weight.unsqueeze(-1) * x[(None,) * i]
    floor = max(torch.min(weight).item(), 1e-3)
    return torch.clamp_(weight, min=floor)


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class _ParallelPredictor:
    """Run the windows of a batch one by one on ``workers`` threads at once (CPU inter-op parallelism).

    On a few CPU cores, one forward pass split over all cores (intra-op threads) wastes much of its time
    in small, poorly parallel layers (norms, activations, the deep low-resolution levels). Here each
    worker thread runs whole windows with an equal share of the intra-op threads (torch releases the GIL
    inside its kernels), so the cores stay busy. Every window is its own forward pass of batch 1, the
    arithmetic of MONAI's ``sw_batch_size=1`` (a batched convolution may round differently: MONAI with
    ``sw_batch_size=4`` flips a few argmax voxels against its own batch 1, see
    ``Testing/benchmarks/bench_deepseg.py``).
    """

    def __init__(self, predictor: Callable[[Any], Any], workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.predictor = predictor
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseg-window")

    def _run(self, data: Any, amp: bool, device_type: str, amp_dtype: Any) -> Any:
        import torch

        with torch.inference_mode():  # thread-local: enter it in the worker
            if amp:
                with torch.autocast(device_type=device_type, dtype=amp_dtype):
                    return self.predictor(data)
            return self.predictor(data)

    def __call__(self, data: Any, amp: bool, device_type: str, amp_dtype: Any) -> Any:
        import torch

        parts = torch.split(data, 1)
        futures = [self.pool.submit(self._run, part, amp, device_type, amp_dtype) for part in parts]
        return torch.cat([future.result() for future in futures])

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def cpu_workers(requested: Optional[int], sw_batch_size: int) -> Tuple[int, int]:
    """(worker threads, intra-op threads each) for ``workers``: None/0 = one thread per intra-op thread
    torch would use (at most the batch size), 1 = the plain single forward pass."""
    import torch

    threads = max(1, torch.get_num_threads())
    workers = threads if not requested else int(requested)
    workers = max(1, min(workers, max(1, int(sw_batch_size))))
    return workers, max(1, threads // workers)


def iter_sliding_window_slabs(
    image: Any,
    predictor: Callable[[Any], Any],
    roi_size: Sequence[int],
    overlap: Union[float, Sequence[float]] = 0.25,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    sw_batch_size: int = 4,
    padding_mode: str = "constant",
    cval: float = 0.0,
    device: Any = "cpu",
    amp: bool = False,
    amp_dtype: Any = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    workers: Optional[int] = 1,
    processes: int = 0,
    out_channels: Optional[int] = None,
) -> Iterator[Tuple[int, int, Any]]:
    """Yield ``(z0, z1, averaged)`` slabs of the stitched prediction, in z order, on the CPU.

    ``workers`` (CPU only): run each batch of windows as that many concurrent sub-batches, each with an
    equal share of torch's intra-op threads (None or 0: one per thread); 1 = one forward pass per batch.
    ``processes`` (CPU on Linux, needs ``out_channels``): that many forked single-threaded copies of
    ``predictor`` take windows one at a time beside this process, which also runs one torch thread (see
    ``window_processes``; meant for an AOT-compiled network, which holds the GIL); ``workers`` and the
    batch size are then ignored. Elsewhere the batches run here with all threads.

    ``image`` is a CPU tensor ``[C, D, H, W]`` (one image); ``averaged`` is float32 ``[K, z1-z0, H, W]``,
    exactly what MONAI returns for those rows (weighted average of raw predictor outputs).
    ``predictor`` gets ``[B, C, *roi]`` on ``device``. On a GPU out-of-memory the batch is halved and
    retried; at one window it raises :class:`DeviceOutOfMemory`. ``cancel`` is checked before every batch.
    """
    import torch
    import torch.nn.functional as F

    if image.ndim != 4:
        raise ValueError(f"expected a [C, D, H, W] tensor, got shape {tuple(image.shape)}")
    device = torch.device(device)
    plan = plan_windows(tuple(image.shape[1:]), roi_size, overlap)
    roi = plan.roi_size
    diffs = [p - s for p, s in zip(plan.padded_size, plan.image_size)]
    if any(diffs):
        pad = []
        for d in reversed(diffs):
            pad.extend([d // 2, d - d // 2])
        image = (
            F.pad(image[None], pad=pad, mode=padding_mode, value=cval)[0]
            if padding_mode == "constant"
            else (F.pad(image[None], pad=pad, mode=padding_mode)[0])
        )
    image = image.float() if image.dtype != torch.float32 else image
    weight = importance_map(roi, mode, sigma_scale, device=device)
    if amp and amp_dtype is None:
        amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16

    batch = max(1, int(sw_batch_size))
    parallel: Optional[_ParallelPredictor] = None
    pool: Optional[ForkedWindowWorkers] = None
    saved_threads = torch.get_num_threads()
    try:
        if device.type == "cpu" and processes > 0 and forking_available() and not amp:
            if out_channels is None:
                raise ValueError("processes > 0 needs out_channels (the shared output buffers are allocated first)")
            torch.set_num_threads(1)
            pool = ForkedWindowWorkers(predictor, processes, image, plan.windows, roi, weight, out_channels)
        elif device.type == "cpu":
            n_workers, per_worker = cpu_workers(workers, batch)
            if n_workers > 1:
                parallel = _ParallelPredictor(predictor, n_workers)
                torch.set_num_threads(per_worker)
        stitched_batch = 1 if pool is not None else batch  # the forked path stitches window by window
        yield from _stitch(
            image, predictor, parallel, pool, plan, weight, stitched_batch, device, amp, amp_dtype, progress, cancel
        )
    finally:
        if parallel is not None:
            parallel.close()
        if pool is not None:
            pool.close()
        torch.set_num_threads(saved_threads)


def _stitch(
    image: Any,
    predictor: Callable[[Any], Any],
    parallel: Optional[_ParallelPredictor],
    processes: Optional[ForkedWindowWorkers],
    plan: WindowPlan,
    weight: Any,
    batch: int,
    device: Any,
    amp: bool,
    amp_dtype: Any,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
) -> Iterator[Tuple[int, int, Any]]:
    """The window loop of :func:`iter_sliding_window_slabs` (ring buffer, flushing, OOM retry)."""
    import torch

    roi = plan.roi_size
    weight_cpu = weight.cpu()
    windows = plan.windows
    total = len(windows)
    depth, height, width = plan.padded_size
    z_crop0 = plan.pad_before[0]
    z_crop1 = z_crop0 + plan.image_size[0]
    h_sl = slice(plan.pad_before[1], plan.pad_before[1] + plan.image_size[1])
    w_sl = slice(plan.pad_before[2], plan.pad_before[2] + plan.image_size[2])
    # Ring buffer over padded rows: row r lives at r % ring. Its depth is the largest row span one batch
    # touches (from the first unflushed row to the end of the batch's last window), so nothing is copied
    # or reallocated while streaming; a smaller batch after an OOM only needs fewer rows.
    ring = max(max(z for z, _, _ in windows[i : i + batch]) + roi[0] - windows[i][0] for i in range(0, total, batch))
    ring = min(ring, depth)
    acc: Optional[Any] = None  # [K, ring, H, W] weighted sums (allocated when K is known)
    count = torch.zeros((ring, height, width), dtype=torch.float32)  # summed weights
    emitted = 0  # padded z below which output was yielded
    started = time.perf_counter()
    index = 0

    def ring_pieces(a: int, b: int) -> List[Tuple[int, slice]]:
        """Rows [a, b) of the padded image as (first row, ring slice) pieces (two when wrapping)."""
        s0 = a % ring
        e0 = s0 + (b - a)
        if e0 <= ring:
            return [(a, slice(s0, e0))]
        return [(a, slice(s0, ring)), (a + ring - s0, slice(0, e0 - ring))]

    def flush(z_final: int) -> Iterator[Tuple[int, int, Any]]:
        """Yield padded rows [emitted, z_final) (cropped to the image) in chunks, then zero their ring rows."""
        nonlocal emitted
        if acc is None or z_final <= emitted:
            return
        for a in range(emitted, z_final, FLUSH_ROWS):
            for first, sl in ring_pieces(a, min(a + FLUSH_ROWS, z_final)):
                last = first + (sl.stop - sl.start)
                lo, hi = max(first, z_crop0), min(last, z_crop1)
                if hi > lo:
                    rows = slice(sl.start + lo - first, sl.start + hi - first)
                    yield lo - z_crop0, hi - z_crop0, acc[:, rows, h_sl, w_sl] / count[None, rows, h_sl, w_sl]
                acc[:, sl].zero_()
                count[sl].zero_()
        emitted = z_final

    def accumulate(chunk: Sequence[Tuple[int, ...]], out: Any) -> Iterator[Tuple[int, int, Any]]:
        """Add a batch's weighted outputs (MONAI's order), flush what is final, report progress."""
        nonlocal acc, index
        if acc is None:
            acc = torch.zeros((out.shape[1], ring, height, width), dtype=torch.float32)
        for window_out, (z, y, x) in zip(out, chunk):
            for first, sl in ring_pieces(z, z + roi[0]):
                part = slice(first - z, first - z + (sl.stop - sl.start))
                acc[:, sl, y : y + roi[1], x : x + roi[2]] += window_out[:, part]
                count[sl, y : y + roi[1], x : x + roi[2]] += weight_cpu[part]
        index += len(chunk)
        # Everything below the next window's z start is final.
        next_z = windows[index][0] if index < total else depth
        yield from flush(next_z)
        if progress is not None:
            elapsed = time.perf_counter() - started
            eta = elapsed / index * (total - index)
            progress(index / total, f"window {index}/{total}, ETA {_format_eta(eta)}")

    def window_batch(chunk: Sequence[Tuple[int, ...]]) -> Any:
        return torch.stack([image[:, z : z + roi[0], y : y + roi[1], x : x + roi[2]] for z, y, x in chunk])

    if processes is not None:  # CPU, windows shared with forked processes, already weighted, in order
        for window_index, out in processes.run(cancel):
            yield from accumulate(windows[window_index : window_index + 1], out[None])
        return

    while index < total:
        if cancel is not None:
            cancel.raise_if_cancelled()
        chunk = windows[index : index + batch]
        data = window_batch(chunk).to(device)
        try:
            with torch.inference_mode():
                if parallel is not None:
                    out = parallel(data, amp, device.type, amp_dtype)
                elif amp:
                    with torch.autocast(device_type=device.type, dtype=amp_dtype):
                        out = predictor(data)
                else:
                    out = predictor(data)
                out = out.float() if out.dtype != torch.float32 else out
                # Weighted in place where possible (a fresh network output): one pass less over memory.
                out = out.mul_(weight) if out.is_contiguous() else out * weight
                out = out.cpu()
        except Exception as error:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_out_of_memory(error):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch == 1:
                raise DeviceOutOfMemory(
                    f"{device} ran out of memory with one {'x'.join(map(str, roi))} window; "
                    "run on the CPU (--device cpu) or use a model with a smaller patch size"
                ) from None
            batch = max(1, batch // 2)
            continue
        yield from accumulate(chunk, out)


def channel_argmax(block: Any) -> Any:
    """Index of the largest channel per voxel (first on ties), as ``torch.argmax(block, dim=0)``.

    ``torch.max(dim=0)`` returns the same indices (the first maximal value) and is about 13x faster on
    CPU than ``torch.argmax`` over the leading dimension (68 ms against 5 ms for 5 x 8 x 256 x 256).
    """
    import torch

    return torch.max(block, dim=0).indices


def sliding_window_predict(image: Any, predictor: Callable[[Any], Any], roi_size: Sequence[int], **kwargs: Any) -> Any:
    """Whole stitched prediction ``[K, D, H, W]`` (for tests and small images: holds all classes)."""
    import torch

    slabs = [slab for _, _, slab in iter_sliding_window_slabs(image, predictor, roi_size, **kwargs)]
    return torch.cat(slabs, dim=1)
