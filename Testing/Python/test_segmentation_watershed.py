"""The memory-lean watershed (MedSegLib.segmentation.watershed) against independent references: ITK's
MorphologicalWatershed / MorphologicalWatershedFromMarkers on the same levels (voxel for voxel), scipy's
Gaussian derivatives for the gradient, and ITK's watershed of the float gradient for the quantisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSegLib.segmentation import watershed


def _levels(seed: int, shape=(14, 23, 27), spacing=(0.8, 0.9, 1.3)):
    rng = np.random.default_rng(seed)
    volume = (ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 1000).astype(np.int16)
    return volume, watershed.gradient_levels(volume, spacing, 1.5, 20.0)


def _scipy_gradient(volume: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """|grad| per mm from scipy's Gaussian derivative filters on the whole volume (float64)."""
    spacing_kji = spacing[::-1]
    sigma = [sigma_mm / s for s in spacing_kji]
    parts = []
    for axis in range(3):
        order = [int(axis == a) for a in range(3)]
        derivative = ndimage.gaussian_filter(volume.astype(np.float64), sigma, order=order, mode="reflect")
        parts.append(derivative / spacing_kji[axis])
    return np.sqrt(sum(part**2 for part in parts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_levels_are_scipys_gaussian_gradient(monkeypatch, seed) -> None:
    spacing = (0.8, 0.9, 1.3)
    volume, (levels, scale) = _levels(seed, spacing=spacing)
    reference = _scipy_gradient(volume, spacing, 1.5)
    assert levels.dtype == np.uint16 and levels.max() <= watershed.LEVELS
    finest = min(watershed.LEVELS / (reference.max() + 20.0), 255 * watershed.BYTE_ROUNDS / 20.0)
    assert scale == pytest.approx(finest, rel=1e-5)
    np.testing.assert_allclose(levels / scale, reference, atol=0.5 / scale + 1e-4 * reference.max())
    monkeypatch.setattr(watershed, "SLAB_SLICES", 3)  # slabs with halos give the whole-volume numbers
    assert np.array_equal(watershed.gradient_levels(volume, spacing, 1.5, 20.0)[0], levels)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_morphological_watershed_equals_itk(seed) -> None:
    import SimpleITK as sitk

    _, (levels, scale) = _levels(seed)
    h = int(20.0 * scale)
    expected = sitk.GetArrayFromImage(
        sitk.MorphologicalWatershed(sitk.GetImageFromArray(levels), h, markWatershedLine=False, fullyConnected=False)
    )
    markers = watershed.morphological_markers(levels.copy(), h)
    assert markers.count == expected.max() > 3
    got = watershed.flood(levels.copy(), [markers])
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("h", [0, 1, 255, 256, 700, 1021, 2000])
def test_h_minima_in_byte_rounds_equals_itk(h) -> None:
    """The h-minima transform in rounds of <= 255 (a byte of rise per voxel; one 16-bit round beyond
    ``BYTE_ROUNDS``) is ITK's HMinima, and its markers flood to ITK's basins."""
    import SimpleITK as sitk

    _, (levels, scale) = _levels(1)
    levels = np.minimum(levels.astype(np.int64) * 7, watershed.LEVELS - h).astype(np.uint16)
    expected = sitk.GetArrayFromImage(sitk.HMinima(sitk.GetImageFromArray(levels), h))
    transformed = levels.copy()
    scratch = watershed.h_minima(transformed, h)
    assert scratch.dtype == (np.uint8 if h <= 255 * watershed.BYTE_ROUNDS else np.uint16)
    assert np.array_equal(transformed, expected)
    basins = sitk.GetArrayFromImage(
        sitk.MorphologicalWatershed(sitk.GetImageFromArray(levels), h, markWatershedLine=False, fullyConnected=False)
    )
    got = watershed.flood(levels.copy(), [watershed.morphological_markers(levels.copy(), h)])
    assert np.array_equal(got, basins) and basins.max() >= 1


def test_component_markers_flood_as_the_label_image(monkeypatch) -> None:
    """Markers streamed from runs a slab at a time (halos of one slice) flood as their label image does."""
    _, (levels, scale) = _levels(2)
    markers = watershed.morphological_markers(levels.copy(), int(20.0 * scale))
    whole = markers.label_slices(0, levels.shape[0])
    expected = watershed.flood(levels.copy(), whole)
    monkeypatch.setattr(watershed, "_MARKER_SLAB_VOXELS", levels.shape[1] * levels.shape[2] * 2)
    assert np.array_equal(watershed.flood(levels.copy(), markers), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_marker_flooding_equals_itk(seed) -> None:
    import SimpleITK as sitk

    _, (levels, _) = _levels(seed)
    markers = np.zeros(levels.shape, np.uint8)
    markers[0, 0, 0] = 1
    markers[-1, -1, -4:] = 2
    markers[7, 10:12, 13] = 3
    expected = sitk.GetArrayFromImage(
        sitk.MorphologicalWatershedFromMarkers(
            sitk.GetImageFromArray(levels),
            sitk.GetImageFromArray(markers),
            markWatershedLine=False,
            fullyConnected=False,
        )
    )
    got = watershed.flood(levels.copy(), markers)
    assert np.array_equal(got, expected)
    assert set(np.unique(got)) == {1, 2, 3}


def test_levels_keep_the_basins_of_the_float_gradient() -> None:
    """15-bit levels give the basins ITK finds on the float gradient itself (all but a few voxels)."""
    import SimpleITK as sitk

    from MedSegLib.sample_data import make_ct_phantom

    phantom = make_ct_phantom((40, 96, 96), (5.0, 2.0, 2.0), seed=4)
    spacing = (2.0, 2.0, 5.0)
    levels, scale = watershed.gradient_levels(phantom.hu, spacing, 2.0, 20.0)
    gradient = sitk.GetImageFromArray(_scipy_gradient(phantom.hu, spacing, 2.0).astype(np.float32))
    exact = sitk.GetArrayFromImage(sitk.MorphologicalWatershed(gradient, 20.0, False, False))
    ours = watershed.flood(levels, [watershed.morphological_markers(levels.copy(), int(20.0 * scale))])
    assert exact.max() == ours.max() > 10
    pairs, counts = np.unique(exact.astype(np.int64) << 32 | ours, return_counts=True)
    agreeing = np.zeros(int(exact.max()) + 1, np.int64)
    np.maximum.at(agreeing, pairs >> 32, counts)
    assert agreeing.sum() / exact.size > 1 - 1e-4


def test_flood_rejects_labels_beyond_15_bits() -> None:
    levels = np.zeros((2, 3, 4), np.uint16)
    markers = np.zeros((2, 3, 4), np.uint16)
    markers[0, 0, 0] = 40000
    with pytest.raises(OverflowError, match="32768"):
        watershed.flood(levels, markers)


def test_too_many_minima_fall_back_to_itk_with_the_same_basins(monkeypatch) -> None:
    """Beyond 32767 regional minima (15-bit labels) the method floods with ITK's filter on the same levels:
    the same segments as MedSeg's own flooding."""
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.segmentation import run_method
    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    phantom = make_ct_phantom((24, 64, 64), (6.0, 3.0, 3.0), seed=2)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(phantom.spacing[::-1], np.eye(3), phantom.origin_lps)
    own = run_method(phantom.hu, ijk_to_ras, "watershed", parameters={"max_segments": 4})

    def overflow(levels, h):
        raise OverflowError("more than 32767 regional minima")

    monkeypatch.setattr(watershed, "morphological_markers", overflow)
    itk = run_method(phantom.hu, ijk_to_ras, "watershed", parameters={"max_segments": 4})
    assert [s.name for s in itk] == [s.name for s in own] and len(own) == 4
    for mine, theirs in zip(own, itk):
        assert np.array_equal(mine.mask, theirs.mask)
