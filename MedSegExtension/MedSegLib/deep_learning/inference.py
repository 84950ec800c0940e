"""Run a model package on a volume node (or file): preprocessing, sliding window, exact undo, segments out.

Memory: the stitched network output is streamed by slab (see ``sliding_window``) and, when the model
resamples, mapped back to the source resolution slab by slab (``StreamingLinearResizer``); only the uint8
label map (and, on request, one uint8 probability map per label) exist at full resolution. The peak is
the float32 network-space input plus a ring of ``classes x (roi_z + batch overhang) x H x W`` float32 for
the weighted sums (+ one class's worth for the weights) plus the uint8 outputs. Measured
(``bench_deepseg.py --net light --classes 9 --shape 300 512 512``, whole process incl. ~0.5 GB of
imports): MONAI 4255 MB, MedSeg 3040 MB; MONAI grows by 9 x 4 B per voxel with depth (about 10 GB more
at 1000 slices), MedSeg by about 5 B per voxel (input + labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.deep_learning.model_package import ModelPackage, resolve_model
from MedSegLib.deep_learning.preprocessing import PreparedInput, StreamingLinearResizer, prepare_input
from MedSegLib.deep_learning.sliding_window import channel_argmax, iter_sliding_window_slabs
from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback

DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(requested: str = "auto") -> Any:
    """cuda > mps > cpu for 'auto'; an explicit device that is not available is a user error."""
    import torch

    requested = (requested or "auto").lower()
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise UserInputError(f"unknown device {requested!r} (choose from {', '.join(DEVICES)})")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("--device cuda requested but no CUDA GPU is available to torch (use --device cpu)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserInputError("--device mps requested but Apple MPS is not available (use --device cpu)")
    return torch.device(requested)


def optimize_for_cpu(net: Any, example: Any, tolerance: float = 1e-5) -> Tuple[Any, str]:
    """Trace + freeze + ``optimize_for_inference`` (oneDNN layouts, folded constants) when it is exact.

    A micro-benchmark showed ~2x per window for MONAI's UNet on a loaded 2-core CPU, the full benchmark
    did not (``Testing/benchmarks/bench_deepseg.py`` variant ``medseg-4-opt``), so it is opt-in. The
    optimised module is used only if it reproduces the eager output on ``example`` within ``tolerance``
    (relative to the output's magnitude); otherwise the eager network is returned. Returns (net, note).
    """
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = net if isinstance(net, torch.jit.ScriptModule) else torch.jit.trace(net, example)
            optimized = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
            with torch.inference_mode():
                reference = net(example)
                candidate = optimized(example)
                candidate = optimized(example)  # second call: the one that runs the optimised graph
    except Exception as error:  # noqa: BLE001 - any failure means: keep the eager network
        return net, f"eager (optimisation failed: {type(error).__name__})"
    from MedSegLib.deep_learning.compiled_network import reproduces

    ok, difference = reproduces(reference, candidate, tolerance)
    if not ok:
        return net, f"eager (optimised graph differed by {difference:.2g})"
    return optimized, "traced+frozen"


@dataclass
class InferenceResult:
    """Labels on the source grid (k, j, i), 0 = background, i = package label i."""

    labels: np.ndarray
    probabilities: Optional[Dict[str, np.ndarray]] = None  # label name -> uint8 0..255 on the source grid
    timings: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    windows: int = 0
    network_mode: str = "eager"  # or "traced+frozen" (optimize_for_cpu), "AOT-compiled ..." (compile_for_cpu)


def predict_labels(
    channels_kji: Sequence[np.ndarray],
    ijk_to_ras: np.ndarray,
    package: ModelPackage,
    device: str = "auto",
    overlap: Optional[float] = None,
    sw_batch_size: Optional[int] = None,
    amp: bool = False,
    probabilities: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    network: Any = None,
    optimize: bool = False,
    workers: Optional[int] = None,
    compile: bool = False,
) -> InferenceResult:
    """Segment source arrays (one per model input channel, same grid) with ``package``.

    ``workers`` (CPU): windows of a batch run concurrently on that many threads, each with an equal
    share of torch's intra-op threads (None: one per thread, at most the window batch; 1: off). Same
    arithmetic as MONAI's ``sw_batch_size=1`` (identical argmax). Its gain depends on the host: 2.2-2.5x
    MONAI's batch-1 speed on one 2-core machine, 1.1x on another (``Testing/benchmarks/bench_deepseg.py``).

    ``optimize`` (CPU only, opt-in) runs a traced, frozen copy of the network when it reproduces the eager
    output; its speed-up was not consistent on the shared 2-core test machine, hence off by default.

    ``compile`` (CPU only, opt-in): AOT-compile the network for the window batch once per model and
    machine (cached, see ``compiled_network``; needs a C++ compiler) and, on Linux, run it
    single-threaded in this process and in one forked copy per further torch thread
    (``window_processes``). Falls back to the eager network, with the reason in ``network_mode``.
    ``bench_deepseg.py`` variant ``medseg-4-aot``: 2.2x MONAI's batch-1 speed (median of 3 runs, 2-core).
    """
    import torch

    if len(channels_kji) != package.in_channels:
        raise UserInputError(
            f"model {package.name!r} needs {package.in_channels} input channel(s) "
            f"({', '.join(package.manifest['input'].get('modalities', [])) or 'volumes'}), got {len(channels_kji)}"
        )
    shapes = {tuple(a.shape) for a in channels_kji}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise UserInputError(f"input channels must be 3D volumes on one grid, got shapes {sorted(shapes)}")
    timings: Dict[str, float] = {}
    t = time.perf_counter()
    torch_device = select_device(device)
    net = network if network is not None else package.load_network(torch_device)
    note = "eager"
    processes = 0
    settings = package.inference
    batch = int(sw_batch_size or settings.get("sw_batch_size", 4))
    if compile and torch_device.type == "cpu" and not amp:
        net, note, processes = _compiled(net, package, batch)
        workers = 1
    elif optimize and torch_device.type == "cpu" and not amp:
        probe = torch.rand((1, package.in_channels, *package.roi_size), generator=torch.Generator().manual_seed(0))
        net, note = optimize_for_cpu(net, probe)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    prepared = prepare_input(list(channels_kji), ijk_to_ras, package.preprocessing)
    timings["preprocess"] = time.perf_counter() - t

    labels_net, probs_net, windows = _predict_network_space(
        prepared,
        net,
        package,
        roi_size=package.roi_size,
        overlap=float(settings.get("overlap", 0.25) if overlap is None else overlap),
        mode=str(settings.get("mode", "gaussian")),
        sigma_scale=float(settings.get("sigma_scale", 0.125)),
        sw_batch_size=batch,
        device=torch_device,
        amp=amp,
        probabilities=probabilities,
        progress=progress,
        cancel=cancel,
        workers=workers,
        processes=processes,
    )
    t = time.perf_counter()
    labels = _restore(labels_net, prepared)
    probs = {name: _restore(p, prepared) for name, p in probs_net.items()} if probs_net is not None else None
    timings["postprocess"] = time.perf_counter() - t
    return InferenceResult(labels, probs, timings, str(torch_device), windows, note)


def _compiled(net: Any, package: ModelPackage, batch: int) -> Tuple[Any, str, int]:
    """(network, note, forked processes) for ``compile``: single-threaded + forks where fork is safe."""
    import torch

    from MedSegLib.deep_learning.compiled_network import compile_for_cpu
    from MedSegLib.deep_learning.window_processes import forking_available

    threads = torch.get_num_threads()
    forks = threads > 1 and forking_available()
    if forks:
        torch.set_num_threads(1)  # the generated code is for the thread count it was compiled under
    try:
        # Forked single-threaded copies run one window per call (activations stay cache-sized: 0.28 s
        # against 0.38 s per window for batch 4 on the 2-core test machine); the batch is still stitched whole.
        compiled, note = compile_for_cpu(net, (package.in_channels, *package.roi_size), 1 if forks else batch)
    finally:
        torch.set_num_threads(threads)
    if not note.startswith("AOT"):
        return net, note, 0
    return compiled, note + (f", {threads} processes" if forks else ""), threads - 1 if forks else 0


def _restore(array_net: np.ndarray, prepared: PreparedInput) -> np.ndarray:
    array = prepared.from_network_axes(array_net)
    if prepared.bbox is not None:
        reoriented_shape = tuple(prepared.source_shape[p] for p in prepared.orientation.perm)
        full = np.zeros(reoriented_shape, dtype=array.dtype)
        full[prepared.bbox] = array
        array = full
    return np.ascontiguousarray(prepared.orientation.invert(array))


def _predict_network_space(
    prepared: PreparedInput,
    net: Any,
    package: ModelPackage,
    roi_size: Sequence[int],
    overlap: float,
    mode: str,
    sigma_scale: float,
    sw_batch_size: int,
    device: Any,
    amp: bool,
    probabilities: bool,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
    workers: Optional[int] = None,
    processes: int = 0,
):
    import torch

    out_shape = prepared.network_shape_before_resample()
    labels = np.zeros(out_shape, dtype=np.uint8 if package.out_channels <= 256 else np.uint16)
    probs = {label.name: np.zeros(out_shape, dtype=np.uint8) for label in package.labels} if probabilities else None
    resample = tuple(prepared.tensor.shape[1:]) != tuple(out_shape)
    resizer = StreamingLinearResizer(prepared.tensor.shape[1], out_shape) if resample else None
    counted = {"windows": 0}

    def on_progress(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)
        counted["message"] = message

    def consume(t0: int, t1: int, block: Any) -> None:
        if block.shape[0] != package.out_channels:
            raise UserInputError(
                f"the network returned {block.shape[0]} channels but model {package.name!r} lists "
                f"{len(package.labels)} labels (+ background = {package.out_channels})",
                package.root,
            )
        labels[t0:t1] = channel_argmax(block).numpy().astype(labels.dtype)
        if probs is not None:
            soft = torch.softmax(block, dim=0)
            for index, label in enumerate(package.labels, start=1):
                probs[label.name][t0:t1] = torch.round(soft[index] * 255).to(torch.uint8).numpy()

    slabs = iter_sliding_window_slabs(
        prepared.tensor,
        net,
        roi_size,
        overlap=overlap,
        mode=mode,
        sigma_scale=sigma_scale,
        sw_batch_size=sw_batch_size,
        device=device,
        amp=amp,
        progress=on_progress,
        cancel=cancel,
        workers=workers,
        processes=processes,
        out_channels=package.out_channels,
    )
    for z0, z1, slab in slabs:
        if resizer is None:
            consume(z0, z1, slab)
        else:
            for t0, t1, block in resizer.push(z0, slab):
                consume(t0, t1, block)
    from MedSegLib.deep_learning.sliding_window import plan_windows

    windows = plan_windows(tuple(prepared.tensor.shape[1:]), roi_size, overlap).num_windows
    return labels, probs, windows


# --- MRML output ------------------------------------------------------------------------------------


def labels_to_segmentation(
    labels: np.ndarray, reference_volume: Any, package: ModelPackage, segmentation: Any = None
) -> List[str]:
    """Put label values 1..N into ``segmentation`` as segments named/coloured/coded as the model says.

    Segments of the same names already in the node are replaced (re-running does not duplicate them).
    Returns the segment IDs in label order.
    """
    from MedSegLib.runtime import boot
    from MedSegLib.segmentation.output import write_label_array

    boot()
    scene = reference_volume.GetScene()
    if segmentation is None:
        segmentation = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{reference_volume.GetName()} {package.name}"
        )
        segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg = segmentation.GetSegmentation()
    ids = []
    for label in package.labels:  # values are 1..N in order (validated when the package loads)
        existing = seg.GetSegmentIdBySegmentName(label.name)
        if existing:
            seg.RemoveSegment(existing)
        # segment ID = label name, as Slicer does for named segments: the same input gives the same file
        sid = seg.AddEmptySegment("" if seg.GetSegment(label.name) else label.name, label.name)
        segment = seg.GetSegment(sid)
        segment.SetColor(*(c / 255.0 for c in label.color))
        entry = label.terminology_entry()
        if entry:
            segment.SetTag("TerminologyEntry", entry)
        segment.SetTag("MedSegModel", f"{package.name} {package.version}")
        ids.append(sid)
    write_label_array(segmentation, reference_volume, labels, ids)
    return ids


def segment_volume_node(
    volume: Any,
    segmentation: Any = None,
    model_path: Any = None,
    device: str = "auto",
    overlap: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    amp: bool = False,
    sw_batch_size: Optional[int] = None,
    probabilities: bool = False,
    extra_channels: Sequence[Any] = (),
) -> List[str]:
    """Segment a volume node (plus optional extra channel nodes on the same grid) into ``segmentation``.

    Returns the segment IDs in label order; with ``probabilities`` each label also gets a scalar volume
    node ``<volume> <label> probability`` (uint8, 255 = 1.0).
    """
    from MedSegLib.volume_nodes import add_volume_node, array_and_ijk_to_ras

    if volume is None:
        raise UserInputError("no input volume")
    package = model_path if isinstance(model_path, ModelPackage) else resolve_model(model_path)
    array, ijk_to_ras = array_and_ijk_to_ras(volume)
    channels = [array] + [array_and_ijk_to_ras(node)[0] for node in extra_channels]
    result = predict_labels(
        channels, ijk_to_ras, package, device, overlap, sw_batch_size, amp, probabilities, progress, cancel
    )
    ids = labels_to_segmentation(result.labels, volume, package, segmentation)
    if result.probabilities:
        for name, prob in result.probabilities.items():
            add_volume_node(prob, ijk_to_ras, f"{volume.GetName()} {name} probability", volume.GetScene())
    return ids
