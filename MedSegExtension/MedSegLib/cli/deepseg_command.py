"""``medseg deepseg``: deep-learning segmentation with MedSeg model packages (offline, CPU or GPU).

    medseg deepseg infer INPUT --model MODEL -o OUT.seg.nrrd [--device cpu|cuda|mps] [--overlap 0.5] [--amp]
    medseg deepseg models [--json]
    medseg deepseg import PATH [--overwrite]
    medseg deepseg train --data DIR --labels NAME [NAME ...] --epochs N -o MODEL_DIR

INPUT is a volume file, a DICOM folder or a series UID with ``--db``. MODEL is a model folder, a zip, or the
name of an installed model (``medseg deepseg models``). OUT ``.seg.nrrd`` writes a segmentation (names,
colours, terminology); ``.nii.gz`` / ``.nrrd`` writes a label map plus its ``.ctbl`` label table.
Installed models live in ``$MEDSEG_MODELS`` or ``~/.medseg/models``. Training runs under
``torchrun --nproc-per-node N`` unchanged (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from MedSegLib.errors import UserInputError


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


def _progress_printer(args: argparse.Namespace, total: int, description: str):
    """(callback, closer): ``MEDSEG-PROGRESS`` lines on stdout with --progress-lines, else a tqdm bar."""
    if getattr(args, "progress_lines", False):
        from MedSegLib.deep_learning.background import progress_line

        def callback(fraction: float, message: str = "") -> None:
            print(progress_line(fraction, message), flush=True)

        return callback, lambda: None
    from MedSegLib.progress import tqdm_callback

    callback, bar = tqdm_callback(total, description, disable=getattr(args, "quiet", False))
    return callback, bar.close


def _infer(args: argparse.Namespace) -> int:
    from MedSegLib.deep_learning.inference import labels_to_segmentation, predict_labels
    from MedSegLib.deep_learning.model_package import resolve_model
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.node_io import export_segmentation_to_labelmap, save_node
    from MedSegLib.runtime import boot
    from MedSegLib.volume_nodes import add_volume_node, array_and_ijk_to_ras

    out = Path(args.output)
    name = out.name.lower()
    as_segmentation = name.endswith((".seg.nrrd", ".seg.nhdr"))
    if not as_segmentation and not name.endswith((".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha")):
        raise UserInputError("output must end in .seg.nrrd (segmentation) or .nii.gz / .nrrd (label map)", out)
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise UserInputError(f"--overlap must be >= 0 and < 1, got {args.overlap}")
    started = time.perf_counter()
    package = resolve_model(args.model)
    runtime = boot()
    volume = load_input_volume(args.input, runtime.scene, db=args.db)
    array, ijk_to_ras = array_and_ijk_to_ras(volume)
    callback, close_progress = _progress_printer(args, 1000, f"deepseg {package.name}")
    try:
        result = predict_labels(
            [array],
            ijk_to_ras,
            package,
            device=args.device,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch,
            amp=args.amp,
            probabilities=args.probabilities,
            progress=callback,
            optimize=args.optimize,
            workers=args.workers,
            compile=args.compile,
        )
    finally:
        close_progress()
    segmentation = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} {package.name}")
    segmentation.CreateDefaultDisplayNodes()
    ids = labels_to_segmentation(result.labels, volume, package, segmentation)
    if as_segmentation:
        save_node(segmentation, out)
    else:
        export_segmentation_to_labelmap(segmentation, out, reference_volume=volume, segment_ids=ids)
    written = [str(out)]
    if result.probabilities:
        stem = out.name[: -len(".seg.nrrd")] if as_segmentation else out.name.split(".")[0]
        for label_name, prob in result.probabilities.items():
            node = add_volume_node(prob, ijk_to_ras, f"{label_name} probability", runtime.scene)
            path = out.with_name(f"{stem}_prob_{label_name}.nrrd")
            save_node(node, path)
            written.append(str(path))
    counts = {label.name: int((result.labels == label.value).sum()) for label in package.labels}
    summary: Dict[str, Any] = {
        "model": package.name,
        "version": package.version,
        "device": result.device,
        "windows": result.windows,
        "network": result.network_mode,
        "seconds": round(time.perf_counter() - started, 2),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "voxels_per_label": counts,
        "outputs": written,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(
            f"{out}: {len(ids)} segments by {package.name} {package.version} on {result.device}, "
            f"{result.windows} windows, {summary['seconds']} s, peak RSS {summary['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    from MedSegLib.deep_learning.model_package import list_models, model_search_dirs

    packages = list_models()
    if args.json:
        print(json.dumps([p.summary() for p in packages], indent=2))
        return 0
    if not packages:
        print("no models installed (looked in " + ", ".join(map(str, model_search_dirs())) + ")")
        return 0
    width = max(len(p.name) for p in packages)
    for p in packages:
        print(f"{p.name:<{width}}  {p.version:<8}  {', '.join(label.name for label in p.labels)}  ({p.root})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from MedSegLib.deep_learning.model_package import install_model

    package = install_model(args.path, models_dir=args.models_dir, overwrite=args.overwrite)
    if args.check:
        net = package.load_network("cpu")
        package.check_network_channels(net)
    print(f"installed {package.name} {package.version} ({len(package.labels)} labels) into {package.root}")
    return 0


def _parse_label_map(text: Optional[str]) -> Optional[Dict[int, int]]:
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        try:
            source, target = item.split(":")
            mapping[int(source)] = int(target)
        except ValueError:
            raise UserInputError(f"--label-map items are SOURCE:TARGET integers, got {item!r}") from None
    return mapping


def _train(args: argparse.Namespace) -> int:
    from MedSegLib.deep_learning.training import TrainConfig, load_cases_from_folder, train

    labels: List[str] = [name for item in args.labels for name in item.split(",") if name]
    if not labels:
        raise UserInputError("--labels needs at least one name (label values 1..N in order)")
    preprocessing = {
        "orientation": args.orientation,
        "axis_order": "kji",
        "spacing_mm": args.spacing,
        "normalization": (
            {"type": "scale_range", "a_min": args.ct_window[0], "a_max": args.ct_window[1], "b_min": 0.0, "b_max": 1.0}
            if args.normalization == "ct"
            else {"type": "zscore", "nonzero": False}
        ),
        "crop_foreground": None,
    }
    cases = load_cases_from_folder(Path(args.data), preprocessing, _parse_label_map(args.label_map))
    if len(cases) > 1 and args.val_cases > 0:
        n_val = min(args.val_cases, len(cases) - 1)
        train_cases, val_cases = cases[:-n_val], cases[-n_val:]
    else:
        train_cases, val_cases = cases, []
    roi = tuple(args.roi) if len(args.roi) == 3 else (args.roi[0],) * 3
    config = TrainConfig(
        labels=labels,
        out_dir=str(args.output),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        roi_size=roi,  # type: ignore[arg-type]
        learning_rate=args.learning_rate,
        seed=args.seed,
        val_every=args.val_every,
        channels=tuple(args.channels),
        strides=(2,) * (len(args.channels) - 1),
        num_res_units=args.res_units,
        preprocessing=preprocessing,
        model_name=args.name or Path(args.output).name,
        device=args.device,
        resume=not args.fresh,
        max_steps=args.max_steps,
        init_weights=args.init_weights,
    )
    callback = _progress_printer(args, 1000, "deepseg train")[0] if args.progress_lines else None
    summary = train(config, train_cases, val_cases, progress=callback, log=lambda line: print(line, file=sys.stderr))
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deepseg",
        help="deep-learning segmentation: infer, list/import models, train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="deepseg_command", metavar="ACTION")
    sub.required = True

    infer = sub.add_parser("infer", help="segment a volume with a model")
    infer.add_argument("input", metavar="INPUT", help="volume file, DICOM folder, or series UID with --db")
    infer.add_argument("--model", required=True, help="model folder, zip, or installed model name")
    infer.add_argument("-o", "--output", required=True, help="OUT.seg.nrrd (segmentation) or OUT.nii.gz (label map)")
    infer.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    infer.add_argument("--overlap", type=float, default=None, help="window overlap (default: the model's)")
    infer.add_argument("--amp", action="store_true", help="mixed precision (fp16 on GPU, bf16 on CPU)")
    infer.add_argument("--sw-batch", type=int, default=None, help="windows per forward pass (default: model's)")
    infer.add_argument("--probabilities", action="store_true", help="also write OUT_prob_<label>.nrrd (uint8)")
    infer.add_argument("--optimize", action="store_true", help="CPU: run a traced+frozen copy if it is exact")
    infer.add_argument(
        "--compile",
        action="store_true",
        help="CPU: AOT-compile the network (once per model and machine, cached in ~/.medseg/cache or "
        "$MEDSEG_CACHE; needs a C++ compiler) and run it in one process per core",
    )
    infer.add_argument(
        "--workers", type=int, default=None, help="CPU: windows run concurrently (default: one per thread; 1: off)"
    )
    infer.add_argument("--db", help="DICOM database folder (when INPUT is a series UID)")
    infer.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    infer.add_argument("--quiet", action="store_true", help="no progress bar")
    infer.add_argument(
        "--progress-lines", action="store_true", help="progress as 'MEDSEG-PROGRESS FRACTION MESSAGE' lines on stdout"
    )
    infer.set_defaults(func=_infer)

    models = sub.add_parser("models", help="list installed models")
    models.add_argument("--json", action="store_true", help="JSON list of {name, labels, version, ...}")
    models.set_defaults(func=_models)

    imp = sub.add_parser("import", help="install a MedSeg package, MONAI bundle or nnU-Net v2 folder")
    imp.add_argument("path", metavar="PATH")
    imp.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    imp.add_argument("--models-dir", default=None, help="install here instead of $MEDSEG_MODELS / ~/.medseg/models")
    imp.add_argument("--check", action="store_true", help="also run one window to check channels")
    imp.set_defaults(func=_import)

    tr = sub.add_parser("train", help="patch-based 3D U-Net training; export a model package")
    tr.add_argument("--data", required=True, help="imagesTr/+labelsTr/ folder, or CASE.nrrd + CASE_label.nrrd")
    tr.add_argument("--labels", required=True, nargs="+", help="label names for values 1..N (space/comma list)")
    tr.add_argument("--epochs", type=int, required=True)
    tr.add_argument("-o", "--output", required=True, help="model folder to write")
    tr.add_argument("--label-map", help="remap label values first, e.g. 1:1,7:1,2:2")
    tr.add_argument("--steps-per-epoch", type=int, default=20)
    tr.add_argument("--batch-size", type=int, default=2)
    tr.add_argument("--roi", type=int, nargs="+", default=[64], help="patch size (one or three ints)")
    tr.add_argument("--learning-rate", type=float, default=2e-3)
    tr.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    tr.add_argument("--res-units", type=int, default=2)
    tr.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to (i j k) mm")
    tr.add_argument("--orientation", default="LPS", help="axis orientation for the network (default LPS)")
    tr.add_argument("--normalization", choices=["ct", "zscore"], default="ct")
    tr.add_argument("--ct-window", type=float, nargs=2, default=[-1000.0, 1000.0], help="HU mapped to 0..1")
    tr.add_argument("--val-cases", type=int, default=1, help="last N cases are the validation set")
    tr.add_argument("--val-every", type=int, default=1)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--name", default=None, help="model name (default: output folder name)")
    tr.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    tr.add_argument("--fresh", action="store_true", help="do not resume from MODEL_DIR/training/checkpoint_last.pt")
    tr.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    tr.add_argument("--init-weights", default=None, help="fine-tune: start from this state dict (same network)")
    tr.add_argument(
        "--progress-lines", action="store_true", help="progress as 'MEDSEG-PROGRESS FRACTION MESSAGE' lines on stdout"
    )
    tr.set_defaults(func=_train)
