"""``medseg qmri``: T1, T2 and T2* maps with goodness-of-fit and fit-status maps.

    medseg qmri t1 --method ir|vfa|molli INPUT... -o DIR [--ti MS...|--fa DEG...] [--tr MS...] [--b1 FILE]
    medseg qmri t2 --method mono|loglinear|epg INPUT... -o DIR [--te MS...] [--offset] [--drop-first-echo]
    medseg qmri t2star INPUT... -o DIR [--te MS...] [--offset]

INPUT: a DICOM folder, a series UID (with ``--db DIR``), or volume files (one 4D file, or one 3D file per image)
with the protocol values given by ``--ti/--te/--fa``. Several INPUTs that share a voxel grid form one acquisition
(e.g. one series per TI). DICOM pixel values are read as Philips floating-point values when the private scale
slope is present, so the ratios between images are right. DIR gets one file per map: the parameter (``T1``,
``T2`` or ``T2star``), ``M0``, ``R2``, ``RMSE``, ``status`` (bit flags: 1 masked, 2 invalid input, 4 at search
bound, 8 not converged, 16 degenerate, 32 IR polarity ambiguous, 64 outside physical range) and model extras.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from MedSegLib.errors import UserInputError

FORMATS = ("nrrd", "nii.gz")


def _floats(text: str) -> List[float]:
    try:
        return [float(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None


def _value_list(values: Any) -> Optional[List[float]]:
    """Flatten ``--ti 50 100,200 --ti 400`` style values (append + nargs + comma lists)."""
    if not values:
        return None
    if isinstance(values, (int, float)):
        return [float(values)]
    return [v for group in values for v in (_value_list(group) or [])]


def _read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (N, k, j, i) or (1, k, j, i), IJKToRAS) of a 3D or 4D volume file (SimpleITK)."""
    import SimpleITK as sitk

    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(f"cannot read volume file ({str(error).splitlines()[0]})", path) from None
    array = sitk.GetArrayFromImage(image)
    dimension = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:  # 4D stored as vector image: (k, j, i, N)
        array = np.moveaxis(array, -1, 0)
    elif dimension == 3:
        array = array[None]
    elif dimension != 4:
        raise UserInputError(f"expected a 3D or 4D volume, got {dimension}D", path)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    ijk_to_lps = ijk_to_ras_from_geometry(image.GetSpacing()[:3], direction, image.GetOrigin()[:3])
    return array.astype(np.float64), RAS_FROM_LPS @ ijk_to_lps


def load_acquisition(inputs: List[str], db: Optional[str] = None) -> Any:
    """All INPUTs as one ``Acquisition`` (DICOM folders / UIDs keep their per-image parameters)."""
    from types import SimpleNamespace

    from MedSegLib.inputs import looks_like_uid, series_files_in_database
    from MedSegLib.qmri.acquisition import combine_volumes

    items: List[Any] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            from MedSegLib.dicom.loader import load_folder

            loaded = load_folder(path, use_philips_scale_slope=True)
            if not loaded:
                raise UserInputError("no loadable DICOM series in folder", path)
            items.extend(loaded)
        elif path.is_file():
            array, ijk_to_ras = _read_array_file(path)
            items.append(SimpleNamespace(array=array, ijk_to_ras=ijk_to_ras, per_volume=[], name=path.name))
        elif looks_like_uid(spec):
            from MedSegLib.dicom.loader import load_series_files

            items.extend(load_series_files(series_files_in_database(spec, db), use_philips_scale_slope=True))
        else:
            raise UserInputError("no such file, folder or series UID", spec)
    acquisition = combine_volumes(items)
    if acquisition.array.ndim == 4 and acquisition.array.shape[0] == 1:
        raise UserInputError("only one image found; a relaxometry fit needs a series of images", inputs[0])
    return acquisition


def _mask_argument(text: str, shape: tuple) -> Any:
    if text in ("auto", "none"):
        return text
    array, _ = _read_array_file(Path(text))
    mask = array[0] > 0
    if mask.shape != shape:
        raise UserInputError(f"mask shape {mask.shape} differs from the image grid {shape}", text)
    return mask


def _b1_argument(text: Optional[str], shape: tuple) -> Any:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    from MedSegLib.qmri.pipeline import b1_factor

    array, _ = _read_array_file(Path(text))
    return b1_factor(array[0], shape, text)  # percent maps (100 = nominal) -> factor


def run(args: argparse.Namespace) -> int:
    from MedSegLib.progress import tqdm_callback
    from MedSegLib.qmri.pipeline import fit_acquisition, write_result
    from MedSegLib.runtime import boot

    kind = args.qmri_kind
    model = {"t1": args.method if kind == "t1" else None, "t2": None, "t2star": "t2star"}[kind]
    options: dict = {}
    values = None
    if kind == "t1":
        values = _value_list(args.fa) if model == "vfa" else _value_list(args.ti)
        if model in ("ir", "molli") and args.signed:
            options["magnitude"] = False
        if model == "molli" and args.time_offset:
            options["time_offset_ms"] = args.time_offset
        if model == "vfa":
            options["method"] = args.vfa_fit
    elif kind == "t2":
        values = _value_list(args.te)
        if args.method == "epg":
            model = "epg"
            options.update(t1_ms=args.t1, refocusing_deg=args.refocusing)
        else:
            model = "t2"
            options.update(method=args.method, offset=args.offset, drop_first_echo=args.drop_first_echo)
    else:
        values = _value_list(args.te)
        options.update(method=args.method, offset=args.offset)
    acquisition = load_acquisition(args.inputs, args.db)
    spatial = acquisition.array.shape[1:]
    mask = _mask_argument(args.mask, spatial)
    b1 = _b1_argument(getattr(args, "b1", None), spatial)
    tr = _value_list(getattr(args, "tr", None))
    callback, bar = tqdm_callback(100, f"qmri {kind}", disable=args.quiet)
    try:
        result = fit_acquisition(acquisition, model, values, tr, mask, b1, options, progress=callback)
    finally:
        bar.close()
    runtime = boot()
    written = write_result(result, acquisition.ijk_to_ras, Path(args.output), args.format, runtime.scene)
    runtime.scene.Clear(0)
    primary = result.maps[result.primary][result.maps["status"] == 0]
    summary = {
        "model": result.info.get("model"),
        "files": {name: str(path) for name, path in written.items()},
        "voxels": result.status_counts(),
        f"median_{result.primary}": float(np.median(primary)) if primary.size else None,
        "protocol": {k: v for k, v in result.info.items() if k != "model"},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        median = summary[f"median_{result.primary}"]
        print(
            f"{result.primary}: {summary['voxels']['fitted']} voxels fitted"
            + (f", median {median:.1f} ms" if median is not None else "")
            + f"; maps in {args.output}"
        )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM folder, series UID (--db) or volume file(s)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (one file per map)")
    parser.add_argument("--format", choices=FORMATS, default="nrrd", help="map file format (default nrrd)")
    parser.add_argument(
        "--mask",
        default="auto",
        metavar="auto|none|FILE",
        help="auto: Otsu on the brightest image (default); none; or a label/mask volume",
    )
    parser.add_argument("--db", metavar="DIR", help="DICOM database folder for series UIDs")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    parser.set_defaults(func=run)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "qmri",
        help="quantitative MRI maps: T1, T2, T2*",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="qmri_kind", metavar="MAP", required=True)

    t1 = kinds.add_parser("t1", help="T1 by inversion recovery, variable flip angle or Look-Locker/MOLLI")
    t1.add_argument("--method", choices=("ir", "vfa", "molli"), default="ir")
    t1.add_argument("--ti", type=_floats, nargs="+", action="append", metavar="MS", help="inversion times (ir, molli)")
    t1.add_argument("--fa", type=_floats, nargs="+", action="append", metavar="DEG", help="flip angles (vfa)")
    t1.add_argument(
        "--tr", type=_floats, nargs="+", action="append", metavar="MS", help="repetition time, one or per image"
    )
    t1.add_argument("--b1", metavar="FILE|FACTOR", help="B1 map (factor or percent) or one factor (vfa)")
    t1.add_argument("--signed", action="store_true", help="images are real/phase-corrected: no polarity restoration")
    t1.add_argument(
        "--time-offset",
        type=float,
        default=0.0,
        metavar="MS",
        help="molli: inversion delay minus the first time label (trigger-time labels)",
    )
    t1.add_argument("--vfa-fit", choices=("nonlinear", "linear"), default="nonlinear")
    _common(t1)

    t2 = kinds.add_parser("t2", help="T2 from a multi-echo spin echo")
    t2.add_argument("--method", choices=("mono", "loglinear", "epg"), default="mono")
    t2.add_argument("--te", type=_floats, nargs="+", action="append", metavar="MS", help="echo times")
    t2.add_argument("--offset", action="store_true", help="fit a constant offset (noise floor)")
    t2.add_argument("--drop-first-echo", action="store_true", help="ignore the first echo (imperfect refocusing)")
    t2.add_argument("--b1", metavar="FILE|FACTOR", help="epg: fix B1 instead of fitting it")
    t2.add_argument("--t1", type=float, default=1000.0, metavar="MS", help="epg: assumed T1 (default 1000)")
    t2.add_argument("--refocusing", type=float, default=180.0, metavar="DEG", help="epg: refocusing angle")
    _common(t2)

    t2star = kinds.add_parser("t2star", help="T2* / R2* from a multi-echo gradient echo")
    t2star.add_argument("--method", choices=("mono", "loglinear"), default="mono")
    t2star.add_argument("--te", type=_floats, nargs="+", action="append", metavar="MS", help="echo times")
    t2star.add_argument("--offset", action="store_true", help="fit a constant offset (noise floor)")
    _common(t2star)
