"""MRI preprocessing: N4 bias correction, intensity normalisation, denoising, resampling, series registration."""

from MedSegLib.mri_preprocessing.core import (
    NORMALISATIONS,
    denoise,
    foreground_mask,
    n4_bias_correction,
    normalize,
    nyul_landmarks,
    register_to_first,
    resample,
)

__all__ = [
    "NORMALISATIONS",
    "denoise",
    "foreground_mask",
    "n4_bias_correction",
    "normalize",
    "nyul_landmarks",
    "register_to_first",
    "resample",
]
