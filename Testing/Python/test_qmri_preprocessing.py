"""MRI preprocessing: N4 removes a known bias field, normalisations hit their targets, registration undoes a
known shift, and the ``medseg mri`` commands keep the geometry."""

from __future__ import annotations

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from MedSegLib import mri_preprocessing as pre  # noqa: E402


def phantom_image(shift_mm: float = 0.0) -> sitk.Image:
    z, y, x = np.mgrid[0:24, 0:48, 0:48].astype(np.float64)
    body = ((x - 24 - shift_mm / 2.0) ** 2 + (y - 24) ** 2 < 18**2) & (np.abs(z - 12) < 10)
    inner = ((x - 20 - shift_mm / 2.0) ** 2 + (y - 22) ** 2 < 6**2) & body
    array = np.where(body, 100.0, 0.0) + np.where(inner, 60.0, 0.0)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin((-40.0, 10.0, 5.0))
    return image


def test_n4_flattens_a_smooth_bias_field():
    image = phantom_image()
    array = sitk.GetArrayFromImage(image)
    x = np.linspace(-1, 1, array.shape[2])[None, None, :]
    biased = sitk.GetImageFromArray((array * (1.0 + 0.4 * x)).astype(np.float32))
    biased.CopyInformation(image)
    corrected = sitk.GetArrayFromImage(pre.n4_bias_correction(biased, shrink_factor=2, iterations=(30, 30)))
    body = array == 100.0
    before = np.std(sitk.GetArrayFromImage(biased)[body]) / np.mean(sitk.GetArrayFromImage(biased)[body])
    after = np.std(corrected[body]) / np.mean(corrected[body])
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("method", ["zscore", "percentile", "whitestripe", "nyul"])
def test_normalisations(method):
    image = phantom_image()
    result = sitk.GetArrayFromImage(pre.normalize(image, method, contrast="T1"))
    mask = sitk.GetArrayFromImage(pre.foreground_mask(image)) > 0
    values = result[mask]
    if method == "zscore":
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4
    elif method == "percentile":
        assert np.percentile(values, 1) == pytest.approx(0.0, abs=1e-6)
    elif method == "nyul":
        assert values.min() >= -1e-3 and values.max() <= 100.0 + 1e-3
        original = sitk.GetArrayFromImage(image)[mask]
        assert values[original == 160].min() > values[original == 100].max()  # order kept
    else:
        assert np.isfinite(values).all()
    assert result.shape == sitk.GetArrayFromImage(image).shape


def test_denoise_and_resample_keep_geometry():
    image = phantom_image()
    noisy = image + sitk.AdditiveGaussianNoise(image * 0, 5.0, 0.0, 1)
    smooth = pre.denoise(noisy, "curvature", iterations=3)
    assert smooth.GetOrigin() == image.GetOrigin()
    residual = sitk.GetArrayFromImage(smooth - image)
    assert np.std(residual) < np.std(sitk.GetArrayFromImage(noisy - image))
    coarse = pre.resample(image, (4.0, 4.0, 3.0))
    assert coarse.GetSize() == (24, 24, 24) and coarse.GetOrigin() == image.GetOrigin()


def test_registration_undoes_a_shift():
    fixed = phantom_image()
    moving = phantom_image(shift_mm=6.0)
    moving.CopyInformation(fixed)
    registered, transforms = pre.register_to_first([fixed, moving], "rigid", iterations=100)
    before = np.abs(sitk.GetArrayFromImage(moving) - sitk.GetArrayFromImage(fixed)).mean()
    after = np.abs(sitk.GetArrayFromImage(registered[1]) - sitk.GetArrayFromImage(fixed)).mean()
    assert after < 0.35 * before, (before, after)


def test_mri_cli_normalize(tmp_path):
    from MedSegLib.cli.main import main

    source = tmp_path / "in.nrrd"
    sitk.WriteImage(phantom_image(), str(source))
    out = tmp_path / "norm.nii.gz"
    assert main(["mri", "normalize", str(source), "-o", str(out), "--method", "zscore"]) == 0
    result = sitk.ReadImage(str(out))
    assert result.GetSpacing() == pytest.approx((2.0, 2.0, 3.0))
    assert main(["mri", "denoise", str(tmp_path / "missing.nrrd"), "-o", str(out)]) == 2


def test_skull_strip_recovers_the_brain_of_a_moved_synthetic_head():
    from MedSegLib.mri_preprocessing import skull_strip as ss

    try:
        template = sitk.ReadImage(str(ss.template_path()))
    except ValueError as error:
        pytest.skip(str(error))
    # a coarse synthetic head: the brain-only template plus a bright scalp shell 4-8 mm outside the brain
    small = pre.resample(sitk.Cast(template, sitk.sitkFloat32), (3.0, 3.0, 3.0))
    brain = sitk.Cast(small > ss.MASK_THRESHOLD * 255, sitk.sitkUInt8)
    outer = sitk.BinaryDilate(brain, [3, 3, 3])
    inner = sitk.BinaryDilate(brain, [1, 1, 1])
    scalp = sitk.Cast(sitk.And(outer, sitk.Not(inner)), sitk.sitkFloat32) * 180.0
    head = small + scalp
    moved = sitk.Euler3DTransform((0, 0, 0), 0.12, -0.05, 0.08, (6.0, -9.0, 4.0))
    head_moved = sitk.Resample(head, head, moved, sitk.sitkLinear, 0.0)
    truth = sitk.GetArrayFromImage(sitk.Resample(brain, head, moved, sitk.sitkNearestNeighbor, 0))
    mask, stripped = ss.skull_strip(head_moved, iterations=100)
    score = ss.dice(sitk.GetArrayFromImage(mask), truth)
    assert score > 0.9, score
    assert (
        sitk.GetArrayFromImage(stripped)[truth == 0].mean()
        < 0.5 * sitk.GetArrayFromImage(head_moved)[truth == 0].mean()
    )
