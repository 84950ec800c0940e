"""Atlas-based segmentation: register labelled atlases to the target and propagate their labels.

Registration is SimpleITK's (Mattes mutual information, so atlas and target may differ in modality or
intensity scale): rigid (Euler, moments-initialised) -> affine -> deformable (B-spline, ~``mesh_mm``
control-point spacing), each multi-resolution. Labels are resampled nearest-neighbour through the
composed transform; several atlases are fused by majority voting (``LabelVoting``) or STAPLE
(``MultiLabelSTAPLE``, Warfield et al. 2004).

Built-in atlas ``mni152``: the ICBM 2009a symmetric MNI152 T1 template with its grey/white-matter
probability maps (label 1 = grey matter, 2 = white matter where that class is >= 50 % and the larger),
read from the files the ``nilearn`` wheel ships (no download, and without importing nilearn, which is slow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.segmentation.core import SegmentationContext, SegmentMask
from MedSegLib.segmentation.params import SEEDS_NONE, Method, Param

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MNI_LABELS = {1: "Gray matter", 2: "White matter"}
# 3D Slicer labels in MedSeg's terminology: SCT 389081007 "Gray matter" / 389080008 "White matter" (DICOM CID 7153,
# CNS segmentation types), category Anatomical Structure.
MNI_TERMINOLOGY = {1: "gray matter", 2: "white matter"}


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("the built-in MNI152 atlas needs the Python package nilearn (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def mni152_atlas(resolution_mm: float = 2.0) -> Tuple[Any, Any, Dict[int, str]]:
    """(T1 template, label map) as SimpleITK images (LPS) at ``resolution_mm``, and label names."""
    import SimpleITK as sitk

    folder = _nilearn_data_dir()
    images = {key: sitk.ReadImage(str(folder / name), sitk.sitkFloat32) for key, name in MNI_FILES.items()}
    gm = sitk.GetArrayFromImage(images["gm"])
    wm = sitk.GetArrayFromImage(images["wm"])
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[(gm >= 127.5) & (gm > wm)] = 1
    labels[(wm >= 127.5) & (wm >= gm)] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(images["t1"])
    template = images["t1"]
    if resolution_mm and abs(resolution_mm - template.GetSpacing()[0]) > 1e-6:
        template, label_image = (
            _resample_to_spacing(im, resolution_mm, nearest) for im, nearest in ((template, False), (label_image, True))
        )
    return template, label_image, dict(MNI_LABELS)


def _resample_to_spacing(image: Any, spacing_mm: float, nearest: bool) -> Any:
    import SimpleITK as sitk

    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    if not nearest:  # anti-alias before downsampling
        image = sitk.SmoothingRecursiveGaussian(image, spacing_mm / 2.0)
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * 3,
        image.GetDirection(),
        0,
        image.GetPixelID(),
    )


def register(
    fixed: Any, moving: Any, transform: str = "deformable", mesh_mm: float = 40.0, sampling: float = 0.1, seed: int = 0
) -> Any:
    """Transform mapping ``fixed`` physical points into ``moving`` (SimpleITK convention), built
    rigid -> affine -> (B-spline) by maximising Mattes mutual information."""
    import SimpleITK as sitk

    if transform not in ("rigid", "affine", "deformable"):
        raise UserInputError(f"atlas transform must be rigid, affine or deformable, got {transform!r}")
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)

    def method(shrink: Sequence[int], sigmas: Sequence[float], iterations: int) -> Any:
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsMattesMutualInformation(32)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(sampling, seed)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetShrinkFactorsPerLevel(list(shrink))
        registration.SetSmoothingSigmasPerLevel(list(sigmas))
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        registration.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, iterations, relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        return registration

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid_method = method((4, 2), (4.0, 2.0), 100)
    rigid_method.SetInitialTransform(initial, inPlace=True)
    rigid_method.Execute(fixed, moving)
    composite = sitk.CompositeTransform(initial)
    if transform == "rigid":
        return composite
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(initial.GetMatrix())
    affine.SetTranslation(initial.GetTranslation())
    affine.SetCenter(initial.GetCenter())
    affine_method = method((4, 2, 1), (2.0, 1.0, 0.0), 100)
    affine_method.SetInitialTransform(affine, inPlace=True)
    affine_method.Execute(fixed, moving)
    composite = sitk.CompositeTransform(affine)
    if transform == "affine":
        return composite
    physical = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(extent / mesh_mm))) for extent in physical]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    deformable = sitk.ImageRegistrationMethod()
    deformable.SetMetricAsMattesMutualInformation(32)
    deformable.SetMetricSamplingStrategy(deformable.RANDOM)
    deformable.SetMetricSamplingPercentage(sampling, seed)
    deformable.SetInterpolator(sitk.sitkLinear)
    deformable.SetMovingInitialTransform(composite)
    deformable.SetInitialTransform(bspline, inPlace=True)
    # Coarse levels only: full-resolution B-spline optimisation costs minutes for little gain after affine.
    deformable.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-4, numberOfIterations=20)
    deformable.SetShrinkFactorsPerLevel([4, 2])
    deformable.SetSmoothingSigmasPerLevel([2.0, 1.0])
    deformable.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    deformable.Execute(fixed, moving)
    composite.AddTransform(bspline)
    return composite


def propagate_labels(labels: Any, transform: Any, reference: Any) -> Any:
    """Atlas labels on the target grid (nearest neighbour through ``transform``)."""
    import SimpleITK as sitk

    return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def fuse_labels(candidates: List[Any], fusion: str = "majority") -> Any:
    """One label map from several propagated atlases."""
    import SimpleITK as sitk

    if len(candidates) == 1:
        return candidates[0]
    candidates = [sitk.Cast(c, sitk.sitkUInt16) for c in candidates]
    if fusion == "majority":
        return sitk.LabelVoting(candidates, 0)
    if fusion == "staple":
        staple = sitk.MultiLabelSTAPLEImageFilter()
        staple.SetLabelForUndecidedPixels(0)
        return staple.Execute(candidates)
    raise UserInputError(f"fusion must be majority or staple, got {fusion!r}")


def _load_atlases(p: Dict[str, Any]) -> Tuple[List[Tuple[Any, Any]], Dict[int, str]]:
    import SimpleITK as sitk

    if p["atlas"].strip().lower() == "mni152":
        template, labels, names = mni152_atlas(p["atlas_resolution_mm"])
        return [(template, labels)], names
    volumes = [s.strip() for s in p["atlas"].split(",") if s.strip()]
    label_files = [s.strip() for s in p["atlas_labels"].split(",") if s.strip()]
    if len(volumes) != len(label_files):
        raise UserInputError(f"--atlas lists {len(volumes)} volumes but --atlas-labels {len(label_files)} label maps")
    pairs = []
    for volume, label_file in zip(volumes, label_files):
        for path in (volume, label_file):
            if not Path(path).is_file():
                raise UserInputError("atlas file not found", path)
        pairs.append((sitk.ReadImage(volume, sitk.sitkFloat32), sitk.ReadImage(label_file, sitk.sitkUInt16)))
    names = _label_names(label_files[0])
    return pairs, names


def _label_names(label_file: str) -> Dict[int, str]:
    """Names from a Slicer ``.ctbl`` beside the label map (``value name r g b a`` lines), if any."""
    from MedSegLib.node_io import label_table_path

    table = label_table_path(label_file)
    names: Dict[int, str] = {}
    if table.is_file():
        for line in table.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#") and parts[0].isdigit() and int(parts[0]) > 0:
                names[int(parts[0])] = parts[1].replace("_", " ")
    return names


def run_atlas(ctx: SegmentationContext, p: Dict[str, Any]) -> List[SegmentMask]:
    import SimpleITK as sitk

    atlases, names = _load_atlases(p)
    terminology = MNI_TERMINOLOGY if p["atlas"].strip().lower() == "mni152" else {}
    target = ctx.float_image
    candidates = []
    for index, (volume, labels) in enumerate(atlases):
        ctx.report(0.1 + 0.7 * index / len(atlases), f"registering atlas {index + 1}/{len(atlases)}")
        transform = register(target, volume, p["transform"], p["mesh_mm"], p["sampling"])
        candidates.append(propagate_labels(labels, transform, target))
    fused = sitk.GetArrayFromImage(fuse_labels(candidates, p["fusion"]))
    segments = []
    for value in [int(v) for v in np.unique(fused) if v > 0]:
        mask = ctx.finish(fused == value)
        if np.any(mask):
            segments.append(SegmentMask(names.get(value, f"Label {value}"), mask, terminology.get(value)))
    if not segments:
        raise UserInputError(f"{ctx.method_name}: no atlas label reached the target (registration failed?)")
    return segments


METHODS = [
    Method(
        "atlas",
        "Atlas-based (registration + label propagation)",
        "register atlas(es) rigid->affine->B-spline (mutual information), propagate and fuse labels",
        run_atlas,
        (
            Param("atlas", str, "mni152", "mni152 (built in: grey/white matter) or comma-separated atlas volumes"),
            Param("atlas_labels", str, "", "comma-separated label maps of the atlases (names from .ctbl beside)"),
            Param("transform", str, "deformable", "registration stages", choices=("rigid", "affine", "deformable")),
            Param("fusion", str, "majority", "multi-atlas label fusion", choices=("majority", "staple")),
            Param("mesh_mm", float, 40.0, "B-spline control point spacing", "mm", 5.0),
            Param("sampling", float, 0.1, "fraction of voxels sampled by the metric", minimum=0.001, maximum=1.0),
            Param("atlas_resolution_mm", float, 2.0, "resolution of the built-in MNI152 atlas", "mm", 0.5),
        ),
        SEEDS_NONE,
        "atlas",
    )
]
