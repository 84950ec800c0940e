"""Atlas-based skull stripping with the MNI152 template that the ``nilearn`` wheel ships (ICBM 2009a, brain only).

Why atlas-based: no model weights to download and no GPU; the brain-only template is registered to the head image
(affine, Mattes mutual information), its brain mask (template > 20 % of max, as nilearn's
``load_mni152_brain_mask``) is carried over, then refined morphologically inside the image's own foreground.
The template file is read directly from the installed wheel, so nilearn (and pandas, scikit-learn) is never
imported. For better masks a user model can be run through the deep-learning panel instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

import numpy as np

TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MASK_THRESHOLD = 0.2


def template_path() -> Path:
    """Location of the MNI152 T1 template inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("skull stripping needs the 'nilearn' package (it ships the MNI152 template)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_NAME
    if not path.is_file():
        raise ValueError(f"MNI152 template not found in the nilearn package: {path}")
    return path


def skull_strip(image: Any, template: Optional[Any] = None, iterations: int = 200) -> tuple[Any, Any]:
    """(brain mask uint8 image on ``image``'s grid, brain-only image). ``template`` overrides the MNI152 file."""
    import SimpleITK as sitk

    from MedSegLib.mri_preprocessing.core import resample

    fixed = sitk.Cast(image, sitk.sitkFloat32)
    moving = sitk.Cast(sitk.ReadImage(str(template_path())) if template is None else template, sitk.sitkFloat32)
    working_spacing = max(2.0, min(fixed.GetSpacing()))  # the 1 mm template is needlessly fine for an affine
    if min(moving.GetSpacing()) < working_spacing:
        moving = resample(moving, [working_spacing] * 3)
    moving_array = sitk.GetArrayViewFromImage(moving)
    template_mask = sitk.Cast(moving > MASK_THRESHOLD * float(moving_array.max()), sitk.sitkUInt8)
    # the metric only looks at the template's brain (plus a margin), so the subject's scalp cannot pull on it
    metric_mask = sitk.BinaryDilate(template_mask, [max(1, int(round(6.0 / s))) for s in moving.GetSpacing()])

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)  # fixed seed: deterministic
    method.SetMetricMovingMask(metric_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, int(iterations), relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([4.0, 2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving)

    mask = sitk.Resample(template_mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    # refine: inside the head's own foreground, closed, holes filled, largest component only
    foreground = sitk.OtsuThreshold(fixed, 0, 1, 200)
    mask = sitk.And(mask, foreground)
    radius = [max(1, int(round(2.0 / s))) for s in fixed.GetSpacing()]
    mask = sitk.BinaryMorphologicalClosing(mask, radius)
    mask = sitk.BinaryFillhole(mask)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(components == 1, sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    stripped = sitk.Mask(image, mask)
    return mask, stripped


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0
