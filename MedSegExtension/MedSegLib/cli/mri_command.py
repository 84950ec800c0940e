"""``medseg mri``: MRI preprocessing, geometry kept exactly.

    medseg mri n4 INPUT -o OUT [--mask FILE] [--shrink 4] [--field FIELD_OUT]
    medseg mri normalize INPUT -o OUT --method zscore|percentile|whitestripe|nyul [--mask FILE] [--contrast T1|T2]
    medseg mri denoise INPUT -o OUT [--method curvature|nlm] [--iterations 5]
    medseg mri resample INPUT -o OUT --spacing X Y Z [--interpolator linear|bspline|nearest]
    medseg mri register INPUT... -o OUT_4D [--transform rigid|affine]
    medseg mri skullstrip INPUT -o OUT [--mask-output MASK]   (MNI152 template from the nilearn wheel)

INPUT is a volume file, a DICOM folder or a series UID with ``--db``. ``register`` takes a multi-volume series
(DICOM folder, 4D file) or several 3D volumes and writes the volumes registered to the first as one 4D file,
which ``medseg qmri`` reads with ``--ti/--te/--fa``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List

from MedSegLib.errors import UserInputError


def _image(spec: str, db: Any) -> Any:
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.runtime import boot
    from MedSegLib.volume_nodes import sitk_image_from_volume_node

    runtime = boot()
    return sitk_image_from_volume_node(load_input_volume(spec, runtime.scene, db=db))


def _mask(path: Any) -> Any:
    if path is None:
        return None
    import SimpleITK as sitk

    return sitk.ReadImage(str(path)) > 0


def _write(image: Any, path: Path) -> None:
    import SimpleITK as sitk

    from MedSegLib.atomic import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), True)


def _series_images(inputs: List[str], db: Any) -> List[Any]:
    import SimpleITK as sitk

    from MedSegLib.cli.qmri_command import load_acquisition
    from MedSegLib.volume_nodes import RAS_FROM_LPS, split_ijk_to_ras

    acquisition = load_acquisition(inputs, db)
    spacing, direction, origin = split_ijk_to_ras(RAS_FROM_LPS @ acquisition.ijk_to_ras)
    images = []
    for volume in acquisition.array:
        image = sitk.GetImageFromArray(volume.astype("float32"))
        image.SetSpacing([float(s) for s in spacing])
        image.SetDirection([float(v) for v in direction.ravel()])
        image.SetOrigin([float(v) for v in origin])
        images.append(image)
    return images


def run(args: argparse.Namespace) -> int:
    from MedSegLib import mri_preprocessing as pre

    out = Path(args.output)
    try:
        if args.mri_step == "register":
            import SimpleITK as sitk

            images = _series_images(args.inputs, args.db)
            if len(images) < 2:
                raise UserInputError("registration needs at least two volumes", args.inputs[0])
            registered, _ = pre.register_to_first(images, args.transform)
            _write(sitk.JoinSeries([sitk.Cast(image, sitk.sitkFloat32) for image in registered]), out)
            return 0
        image = _image(args.input, args.db)
        if args.mri_step == "n4":
            corrected = pre.n4_bias_correction(image, _mask(args.mask), args.shrink, return_field=bool(args.field))
            if args.field:
                corrected, field = corrected
                _write(field, Path(args.field))
            _write(corrected, out)
        elif args.mri_step == "normalize":
            _write(pre.normalize(image, args.method, _mask(args.mask), contrast=args.contrast), out)
        elif args.mri_step == "denoise":
            _write(pre.denoise(image, args.method, args.iterations), out)
        elif args.mri_step == "resample":
            _write(pre.resample(image, args.spacing, args.interpolator), out)
        elif args.mri_step == "skullstrip":
            from MedSegLib.mri_preprocessing.skull_strip import skull_strip

            mask, stripped = skull_strip(image)
            _write(stripped, out)
            if args.mask_output:
                _write(mask, Path(args.mask_output))
    except ValueError as error:
        raise UserInputError(str(error)) from error
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mri",
        help="MRI preprocessing: n4, normalize, denoise, resample, register, skullstrip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="mri_step", metavar="STEP", required=True)

    def common(sub: argparse.ArgumentParser, many: bool = False) -> None:
        if many:
            sub.add_argument("inputs", nargs="+", metavar="INPUT")
        else:
            sub.add_argument("input", metavar="INPUT")
        sub.add_argument("-o", "--output", required=True, metavar="OUT", help="output volume file")
        sub.add_argument("--db", metavar="DIR", help="DICOM database folder for series UIDs")
        sub.set_defaults(func=run)

    n4 = steps.add_parser("n4", help="N4 bias-field correction")
    n4.add_argument("--mask", metavar="FILE")
    n4.add_argument("--shrink", type=int, default=4)
    n4.add_argument("--field", metavar="FILE", help="also write the estimated bias field")
    common(n4)
    norm = steps.add_parser("normalize", help="intensity normalisation")
    norm.add_argument("--method", choices=("zscore", "percentile", "whitestripe", "nyul"), default="zscore")
    norm.add_argument("--mask", metavar="FILE")
    norm.add_argument("--contrast", choices=("T1", "T2"), default="T1", help="whitestripe: image contrast")
    common(norm)
    den = steps.add_parser("denoise", help="curvature anisotropic diffusion or non-local means")
    den.add_argument("--method", choices=("curvature", "nlm"), default="curvature")
    den.add_argument("--iterations", type=int, default=5)
    common(den)
    res = steps.add_parser("resample", help="resample to a new spacing")
    res.add_argument("--spacing", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"))
    res.add_argument("--interpolator", choices=("linear", "bspline", "nearest"), default="linear")
    common(res)
    strip = steps.add_parser("skullstrip", help="brain extraction with the MNI152 template (affine registration)")
    strip.add_argument("--mask-output", metavar="FILE", help="also write the brain mask")
    common(strip)
    reg = steps.add_parser("register", help="register the volumes of a series to the first")
    reg.add_argument("--transform", choices=("rigid", "affine"), default="rigid")
    common(reg, many=True)
