#!/usr/bin/env python3
"""Sliding-window inference: MedSeg vs MONAI ``sliding_window_inference``, side by side in one run.

    .venv/bin/python Testing/benchmarks/bench_deepseg.py [--shape 128 256 256] [--threads N] [--device cpu|cuda]

Network: MONAI UNet(1 -> 5 classes, channels 16-32-64-128, strides 2-2-2, 2 res units), random weights
(seeded), over a 256x256x128 volume (array 128x256x256), ROI 96^3, overlap 0.25, gaussian blending, fp32.
Each variant runs in its own process so that its peak RSS is its own; timings exclude imports and model
construction and include MedSeg's network optimisation (``-opt``), stitching and the final argmax. Every
argmax is compared with the first variant's (MONAI sw_batch 1, the reference): the goal is >= 2x faster
at identical argmax. Variants: ``monai-B`` (MONAI, B windows per batch), ``medseg-B`` (eager network),
``medseg-B-opt`` (traced + frozen network, CPU), ``medseg-B-amp`` (autocast: bf16 on CPU, fp16 on GPU),
``medseg-B-wN`` (CPU: the B windows of a batch split over N worker threads, each with 1/N of torch's
intra-op threads; ``-w0`` = one worker per thread, MedSeg's CPU default), ``medseg-B-aot`` (the network
AOT-compiled single-threaded, run in this process and in threads-1 forked copies: ``--compile``) and
``medseg-B-aotmt`` (compiled for all threads, one process). The one-time compilation (cached per model
and machine) is printed apart; the timed run includes loading the compiled package.
MONAI's time includes its ``torch.argmax`` over the classes (what ``AsDiscrete(argmax=True)`` runs),
printed apart; MedSeg's includes its own argmax (``torch.max`` indices, the same labels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))

ROI = (96, 96, 96)
OVERLAP = 0.25
CLASSES = 5


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _network(kind: str = "unet", classes: int = CLASSES):
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    if kind == "light":  # a 1x1x1 convolution: isolates the stitching's memory and time (--net light)
        return torch.nn.Conv3d(1, classes, 1).eval()
    return UNet(3, 1, classes, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()


def run_variant(variant: str, shape, out_file: str, threads: int, device: str, net_kind: str, classes: int) -> dict:
    """Run one variant in this process; saves its argmax to ``out_file``."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    net = _network(net_kind, classes).to(device)
    image = torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(1))
    warm = torch.zeros((1, 1, *ROI), device=device)
    with torch.inference_mode():
        net(warm)  # oneDNN primitives / CUDA context: same for all variants
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    parts = variant.split("-")
    batch = int(parts[1])
    workers = next((int(p[1:]) for p in parts[2:] if p[:1] == "w" and p[1:].isdigit()), 1)
    result = {"variant": variant}
    aot = ("aot" in parts or "aotmt" in parts) and device == "cpu"
    processes, all_threads = 0, torch.get_num_threads()
    if aot:  # one-time compilation per model and machine, cached: timed apart from the run
        from MedSegLib.deep_learning.compiled_network import compile_for_cpu

        compiled_batch = batch
        if "aot" in parts:  # single-threaded network in this process + (threads - 1) forked ones
            processes = next((int(p[1:]) for p in parts[2:] if p[:1] == "p" and p[1:].isdigit()), all_threads - 1)
            torch.set_num_threads(1)
            compiled_batch = 1  # one window per call: a single thread works best on cache-sized activations
        cache = os.path.join(os.path.dirname(out_file), "compiled")
        compile_started = time.perf_counter()
        _, note = compile_for_cpu(net, (1, *ROI), compiled_batch, cache_dir=cache)
        result["compile_seconds"] = time.perf_counter() - compile_started
        result["note"] = note
        workers = 1
    started = time.perf_counter()
    if variant.startswith("monai"):
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            logits = sliding_window_inference(image.to(device), ROI, batch, net, overlap=OVERLAP, mode="gaussian")
        inferred = time.perf_counter()
        labels = torch.argmax(logits[0], dim=0).to(torch.uint8).cpu().numpy()  # as MONAI's AsDiscrete(argmax)
        result["argmax_seconds"] = time.perf_counter() - inferred
    else:
        from MedSegLib.deep_learning.inference import optimize_for_cpu
        from MedSegLib.deep_learning.sliding_window import channel_argmax, iter_sliding_window_slabs

        if variant.endswith("-opt") and device == "cpu":
            net, _ = optimize_for_cpu(net, warm)
        if aot:
            net, result["note"] = compile_for_cpu(net, (1, *ROI), compiled_batch, cache_dir=cache)  # loads it
            torch.set_num_threads(all_threads)
        labels = np.empty(shape, dtype=np.uint8)
        slabs = iter_sliding_window_slabs(
            image[0], net, ROI, overlap=OVERLAP, mode="gaussian", sw_batch_size=batch, device=device,
            amp=variant.endswith("-amp"), workers=workers, processes=processes, out_channels=classes,
        )  # fmt: skip
        for z0, z1, slab in slabs:
            labels[z0:z1] = channel_argmax(slab).to(torch.uint8).numpy()
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    np.save(out_file, labels)
    if variant.startswith("monai") and batch == 1:  # the reference's top-2 logit gap, to judge any flip
        top2 = torch.topk(logits[0], 2, dim=0).values
        np.save(out_file.replace(".npy", "-gap.npy"), (top2[0] - top2[1]).cpu().numpy())
    result.update(seconds=seconds, peak_rss_mb=_peak_rss_mb(), threads=torch.get_num_threads())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    if processes and children:
        result["worker_rss_mb"] = children  # largest forked worker, pages shared with this process included
    if device != "cpu":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256], help="array shape (k j i)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (the goal's setting) or cuda (GPU check)")
    parser.add_argument(
        "--variants", nargs="+", default=["monai-1", "monai-4", "medseg-4", "medseg-4-aot", "medseg-4-aotmt"]
    )
    parser.add_argument("--net", default="unet", choices=["unet", "light"], help="light: 1x1x1 conv (memory check)")
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the variant list N times, interleaved; report medians"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(
            json.dumps(
                run_variant(
                    args.variant, tuple(args.shape), args.out, args.threads, args.device, args.net, args.classes
                )
            )
        )
        return 0

    import numpy as np

    runs: dict = {}  # variant -> results of each repeat
    gap = None  # MONAI sw_batch 1's gap between its two largest logits per voxel
    with tempfile.TemporaryDirectory(prefix="bench-deepseg-") as work:
        for repeat in range(args.repeat):
            for variant in args.variants:
                out = os.path.join(work, f"{variant}.npy")
                command = [sys.executable, __file__, "--variant", variant, "--out", out, "--device", args.device,
                           "--threads", str(args.threads), "--net", args.net, "--classes", str(args.classes),
                           "--shape", *map(str, args.shape)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"  {variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["labels"] = np.load(out)
                gap_file = out.replace(".npy", "-gap.npy")
                if os.path.exists(gap_file) and gap is None:
                    gap = np.load(gap_file)
                runs.setdefault(variant, []).append(result)
                gpu = f"   peak GPU {result['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in result else ""
                extra = f"   (torch.argmax {result['argmax_seconds']:.2f} s)" if "argmax_seconds" in result else ""
                if "worker_rss_mb" in result:
                    extra += f"   (+ forked worker peak RSS {result['worker_rss_mb']:.0f} MB, partly shared)"
                if "compile_seconds" in result:
                    extra += f"   (one-time compile {result['compile_seconds']:.1f} s; {result['note']})"
                print(
                    f"  [{repeat + 1}] {variant:<13} {result['seconds']:7.2f} s   "
                    f"peak RSS {result['peak_rss_mb']:6.0f} MB{gpu}{extra}",
                    flush=True,
                )
    if not runs:
        return 1
    reference_name = args.variants[0]
    if reference_name not in runs:
        return 1
    reference = runs[reference_name][-1]
    print(
        f"\n{'UNet 16-32-64-128 (2 res units)' if args.net == 'unet' else '1x1x1 conv'}, {args.classes} classes, "
        f"array {tuple(args.shape)} (k j i), ROI 96^3, "
        f"overlap {OVERLAP}, gaussian, {args.device}; reference: {reference_name}; "
        f"medians of {args.repeat} interleaved run(s); speed-up = median of the per-run ratios"
    )

    def agreement(labels, other) -> str:
        differ = labels != other["labels"]
        flips = int(np.count_nonzero(differ))
        if flips == 0:
            return "identical"
        if gap is None or other is not reference:
            return f"{flips} voxels differ"
        return f"{flips} voxels differ (top-2 logit gap there <= {float(gap[differ].max()):.1e})"

    print(
        f"{'variant':<15} {'seconds':>8} {'speed-up':>9} {'peak RSS MB':>12}  argmax vs reference / vs MONAI same batch"
    )
    for variant, results in runs.items():
        last = results[-1]
        same_batch = runs.get("monai-" + variant.split("-")[1], [None])[-1]
        seconds = float(np.median([r["seconds"] for r in results]))
        ratios = [
            ref["seconds"] / r["seconds"] for ref, r in zip(runs[reference_name], results)
        ]  # same repeat, side by side
        print(
            f"{variant:<15} {seconds:8.2f} {float(np.median(ratios)):8.2f}x "
            f"{max(r['peak_rss_mb'] for r in results):12.0f}  {agreement(last['labels'], reference)} / "
            f"{agreement(last['labels'], same_batch) if same_batch else '-'}"
            + (f"   (per run: {', '.join(f'{x:.2f}x' for x in ratios)})" if len(ratios) > 1 else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
