"""MRI preprocessing on SimpleITK images (geometry kept exactly): N4, normalisation, denoising, resampling, and
rigid/affine registration of the volumes of a relaxometry series to the first.

Why SimpleITK images rather than arrays: every step here either needs the physical geometry (N4's B-spline
field, resampling, registration) or must hand it on unchanged, and ``volume_nodes`` converts to and from MRML.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

NORMALISATIONS = ("zscore", "percentile", "whitestripe", "nyul")


def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


def _float(image: Any) -> Any:
    sitk = _sitk()
    return sitk.Cast(image, sitk.sitkFloat32)


def foreground_mask(image: Any) -> Any:
    """Otsu foreground (uint8 image on the same grid), as the default region for N4 and normalisation."""
    sitk = _sitk()
    return sitk.OtsuThreshold(_float(image), 0, 1, 200)


def n4_bias_correction(
    image: Any,
    mask: Optional[Any] = None,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (50, 50, 50, 50),
    return_field: bool = False,
) -> Any:
    """N4 bias-field correction (Tustison 2010). The field is estimated on a shrunken copy for speed and applied
    at full resolution as ``image / exp(log_field)``; returns the corrected image (and the field if asked)."""
    sitk = _sitk()
    image = _float(image)
    mask = foreground_mask(image) if mask is None else sitk.Cast(mask > 0, sitk.sitkUInt8)
    shrink = [max(1, int(shrink_factor)) if size > 4 * shrink_factor else 1 for size in image.GetSize()]
    small = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_field)
    corrected.CopyInformation(image)
    if return_field:
        return corrected, sitk.Exp(log_field)
    return corrected


def _masked_values(array: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    values = array[mask] if mask is not None else array.reshape(-1)
    return values[np.isfinite(values)]


def normalize(
    image: Any,
    method: str = "zscore",
    mask: Optional[Any] = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    landmarks: Optional[Sequence[float]] = None,
    contrast: str = "T1",
) -> Any:
    """Intensity normalisation inside ``mask`` (default Otsu foreground), applied to every voxel.

    zscore: (x - mean) / SD. percentile: the given percentiles map to 0 and 1. whitestripe (Shinohara 2014):
    z-score against the voxels within +-5 % quantile of the white-matter histogram mode (the last mode for T1w,
    the first for T2w). nyul (Nyul & Udupa 2000): piecewise-linear map of the image's deciles onto ``landmarks``
    (learned with ``nyul_landmarks``; default: the image's own deciles scaled to 0-100).
    """
    sitk = _sitk()
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r} ({', '.join(NORMALISATIONS)})")
    array = sitk.GetArrayFromImage(_float(image)).astype(np.float64)
    mask_array = sitk.GetArrayFromImage(foreground_mask(image) if mask is None else mask) > 0
    values = _masked_values(array, mask_array)
    if values.size == 0:
        raise ValueError("the normalisation mask is empty")
    if method == "zscore":
        out = (array - values.mean()) / max(values.std(), 1e-12)
    elif method == "percentile":
        low, high = np.percentile(values, percentiles)
        out = (array - low) / max(high - low, 1e-12)
    elif method == "whitestripe":
        hist, edges = np.histogram(values, bins=200)
        smooth = np.convolve(hist, np.ones(5) / 5, mode="same")
        peaks = [
            i
            for i in range(1, len(smooth) - 1)
            if smooth[i] >= smooth[i - 1] and smooth[i] > smooth[i + 1] and smooth[i] > 0.05 * smooth.max()
        ]
        peak = (peaks[-1] if contrast.upper() == "T1" else peaks[0]) if peaks else int(np.argmax(smooth))
        mode = 0.5 * (edges[peak] + edges[peak + 1])
        quantile = np.mean(values <= mode)
        low, high = np.quantile(values, [max(0.0, quantile - 0.05), min(1.0, quantile + 0.05)])
        stripe = values[(values >= low) & (values <= high)]
        out = (array - stripe.mean()) / max(stripe.std(), 1e-12)
    else:
        source = np.percentile(values, np.arange(0, 101, 10))
        target = np.asarray(landmarks if landmarks is not None else np.linspace(0, 100, 11), dtype=np.float64)
        if target.size != source.size:
            raise ValueError(f"Nyul landmarks must have {source.size} values (deciles 0..100)")
        source = np.maximum.accumulate(source + np.arange(source.size) * 1e-9)
        out = np.interp(array, source, target, left=np.nan, right=np.nan)
        below, above = array < source[0], array > source[-1]
        slope_low = (target[1] - target[0]) / (source[1] - source[0])
        slope_high = (target[-1] - target[-2]) / (source[-1] - source[-2])
        out[below] = target[0] + (array[below] - source[0]) * slope_low
        out[above] = target[-1] + (array[above] - source[-1]) * slope_high
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.CopyInformation(image)
    return result


def nyul_landmarks(images: Sequence[Any], masks: Optional[Sequence[Any]] = None) -> np.ndarray:
    """Standard scale for ``normalize(..., 'nyul')``: mean of each image's deciles after mapping its 0-100th
    percentiles to 0-100."""
    sitk = _sitk()
    scaled = []
    for index, image in enumerate(images):
        array = sitk.GetArrayFromImage(_float(image)).astype(np.float64)
        mask = masks[index] if masks is not None else foreground_mask(image)
        values = _masked_values(array, sitk.GetArrayFromImage(mask) > 0)
        deciles = np.percentile(values, np.arange(0, 101, 10))
        scaled.append(100.0 * (deciles - deciles[0]) / max(deciles[-1] - deciles[0], 1e-12))
    return np.mean(scaled, axis=0)


def denoise(image: Any, method: str = "curvature", iterations: int = 5, strength: float = 1.0) -> Any:
    """Edge-preserving denoising: curvature anisotropic diffusion (fast) or patch-based non-local means."""
    sitk = _sitk()
    image = _float(image)
    if method == "curvature":
        spacing = min(image.GetSpacing())
        time_step = 0.0625 * spacing  # stable for 3D: < spacing / 2^(N+1)
        return sitk.CurvatureAnisotropicDiffusion(
            image, timeStep=time_step, conductanceParameter=3.0 * strength, numberOfIterations=int(iterations)
        )
    if method == "nlm":
        nlm = sitk.PatchBasedDenoisingImageFilter()
        nlm.SetNumberOfIterations(max(1, int(iterations // 5) or 1))
        nlm.SetKernelBandwidthSigma(0.5 * strength * float(np.std(sitk.GetArrayViewFromImage(image))) + 1e-6)
        nlm.SetPatchRadius(2)
        return nlm.Execute(image)
    raise ValueError(f"unknown denoising method {method!r} (curvature, nlm)")


def resample(image: Any, spacing: Sequence[float], interpolator: str = "linear") -> Any:
    """Resample to a new voxel spacing over the same physical extent (linear, bspline or nearest)."""
    sitk = _sitk()
    interpolators = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    if interpolator not in interpolators:
        raise ValueError(f"unknown interpolator {interpolator!r} ({', '.join(interpolators)})")
    spacing = [float(s) for s in spacing]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        interpolators[interpolator],
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def register_to_first(
    volumes: Sequence[Any], transform: str = "rigid", iterations: int = 200
) -> tuple[List[Any], List[Any]]:
    """Register every volume of a series to the first (Mattes mutual information, multi-resolution), so motion
    between the images of a relaxometry series does not corrupt the fit. Returns (resampled volumes, transforms);
    the first volume is returned unchanged with an identity transform."""
    sitk = _sitk()
    if transform not in ("rigid", "affine"):
        raise ValueError(f"unknown transform {transform!r} (rigid, affine)")
    fixed = _float(volumes[0])
    out, transforms = [volumes[0]], [sitk.Euler3DTransform()]
    for moving_image in volumes[1:]:
        moving = _float(moving_image)
        initial = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, initial, sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.25, seed=1)  # fixed seed: deterministic
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, int(iterations), relaxationFactor=0.5)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2, 1, 0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(initial, inPlace=False)
        result = method.Execute(fixed, moving)
        transforms.append(result)
        out.append(sitk.Resample(moving_image, volumes[0], result, sitk.sitkLinear, 0.0, moving_image.GetPixelID()))
    return out, transforms
