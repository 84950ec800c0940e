"""The compiled binary erosion / dilation (segmentation.morphology) gives exactly SimpleITK's BinaryErode /
BinaryDilate, voxel for voxel, and ``postprocess.smooth`` opening / closing exactly the former ITK-based
implementation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedSegLib.segmentation import morphology, postprocess

RADII = [(3, 3, 0), (2, 1, 1), (1, 3, 2), (0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 3), (4, 4, 4), (7, 2, 1), (20, 1, 0)]
_KERNEL_TYPES = {"ball": sitk.sitkBall, "box": sitk.sitkBox}


def _itk_erode(mask, radius, kernel="ball", boundary_to_foreground=False) -> np.ndarray:
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    out = sitk.BinaryErode(image, [int(r) for r in radius], _KERNEL_TYPES[kernel], 0, 1, boundary_to_foreground)
    return sitk.GetArrayFromImage(out).astype(bool)


def _itk_dilate(mask, radius, kernel="ball") -> np.ndarray:
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    out = sitk.BinaryDilate(image, [int(r) for r in radius], _KERNEL_TYPES[kernel], 0, 1)
    return sitk.GetArrayFromImage(out).astype(bool)


def _masks():
    rng = np.random.default_rng(7)
    yield "random50", rng.random((9, 11, 13)) < 0.5
    yield "random90", rng.random((12, 10, 17)) < 0.9
    yield "sparse", rng.random((10, 13, 9)) < 0.05
    blobs = ndimage.binary_opening(rng.random((14, 21, 19)) > 0.45)
    blobs[:, :3] = True  # touches the j borders ...
    blobs[0] = True  # ... the first and last slices ...
    blobs[-1, ::2] = True
    blobs[:, :, -2:] = True  # ... and the i borders
    blobs[:, :, 0] = rng.random(blobs.shape[:2]) < 0.5
    yield "blobs_on_borders", blobs
    yield "full", np.ones((6, 7, 8), dtype=bool)
    yield "empty", np.zeros((6, 7, 8), dtype=bool)
    single = np.zeros((9, 9, 9), dtype=bool)
    single[4, 4, 4] = True
    yield "single", single
    yield "one_slice", rng.random((1, 15, 16)) < 0.7
    yield "thin", rng.random((5, 1, 3)) < 0.7  # smaller than the kernel along every axis


MASKS = list(_masks())


@pytest.mark.parametrize("kernel", ["ball", "box"])
@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("name,mask", MASKS, ids=[name for name, _ in MASKS])
def test_erode_dilate_equal_itk(name, mask, radius, kernel) -> None:
    for boundary in (False, True):
        ours = morphology.binary_erode(mask, radius, kernel, boundary_to_foreground=boundary)
        assert ours.dtype == bool and ours.shape == mask.shape
        assert np.array_equal(ours, _itk_erode(mask, radius, kernel, boundary)), (name, radius, kernel, boundary)
    assert np.array_equal(morphology.binary_dilate(mask, radius, kernel), _itk_dilate(mask, radius, kernel))


def test_kernel_rows_are_itk_ball() -> None:
    dzs, dys, ws = morphology.kernel_rows((3, 3, 0), "ball")
    footprint = np.zeros((1, 7, 7), dtype=bool)
    for dz, dy, w in zip(dzs, dys, ws):
        footprint[dz, dy + 3, 3 - w : 3 + w + 1] = True
    expected = np.array(
        [
            [0, 0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0, 0],
        ],
        dtype=bool,
    )
    assert np.array_equal(footprint[0], expected)
    assert (dzs[0], dys[0]) == (0, 0)  # centre row first


def test_many_slices_and_threads() -> None:
    """Many slices: several blocks of slices (each with its own ring of run lengths) run in parallel."""
    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random((70, 24, 26)) > 0.93, iterations=2)
    for radius in [(2, 2, 3), (3, 1, 1), (1, 1, 0)]:
        assert np.array_equal(morphology.binary_erode(mask, radius), _itk_erode(mask, radius))
        assert np.array_equal(
            morphology.binary_erode(mask, radius, boundary_to_foreground=True), _itk_erode(mask, radius, "ball", True)
        )
        assert np.array_equal(morphology.binary_dilate(mask, radius), _itk_dilate(mask, radius))


def test_non_contiguous_input_is_not_modified() -> None:
    rng = np.random.default_rng(5)
    base = rng.random((10, 12, 28)) < 0.7
    mask = base[:, :, ::2]  # a strided view
    before = mask.copy()
    assert np.array_equal(morphology.binary_erode(mask, (2, 1, 1)), _itk_erode(before, (2, 1, 1)))
    assert np.array_equal(morphology.binary_dilate(mask.astype(np.uint8), (2, 1, 1)), _itk_dilate(before, (2, 1, 1)))
    assert np.array_equal(mask, before)


def _itk_smooth(mask, method, kernel_mm, spacing_ijk) -> np.ndarray:
    """``postprocess.smooth`` opening / closing as implemented with SimpleITK before ``morphology``."""
    radius = postprocess._radius(kernel_mm, spacing_ijk)
    if kernel_mm <= 0 or not any(radius):
        return np.asarray(mask, dtype=bool)
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    image.SetSpacing([float(s) if np.isfinite(s) else 1.0 for s in spacing_ijk])
    kernel = sitk.sitkBall
    if method == "opening":
        eroded = sitk.BinaryErode(image, radius, kernel, 0, 1, False)
        return sitk.GetArrayFromImage(sitk.BinaryDilate(eroded, radius, kernel, 0, 1)).astype(bool)
    dilated = sitk.BinaryDilate(image, radius, kernel, 0, 1)
    closed = sitk.GetArrayFromImage(sitk.BinaryErode(dilated, radius, kernel, 0, 1, True)).astype(bool)
    return closed | np.asarray(mask, dtype=bool)


@pytest.mark.parametrize("method", ["opening", "closing"])
@pytest.mark.parametrize(
    "kernel_mm,spacing",
    [
        (3.0, (0.78, 0.78, 1.0)),
        (5.0, (0.7, 0.9, float("inf"))),  # in-plane (as the presets use it)
        (4.0, (1.0, 2.0, 1.5)),
        (2.5, (0.5, 0.5, 3.0)),
        (0.4, (1.0, 1.0, 1.0)),  # radius 0 everywhere: unchanged
    ],
)
@pytest.mark.parametrize("name,mask", MASKS[:4], ids=[name for name, _ in MASKS[:4]])
def test_smooth_opening_closing_equal_itk(name, mask, method, kernel_mm, spacing) -> None:
    result = postprocess.smooth(mask, method, kernel_mm, spacing)
    expected = _itk_smooth(mask, method, kernel_mm, spacing)
    assert result.dtype == bool and result.shape == mask.shape
    assert np.array_equal(result, expected), (name, method, kernel_mm, spacing)
    if method == "opening":
        assert not np.any(result & ~mask)  # an opening never adds voxels
    else:
        assert np.all(result[mask])  # a closing never removes any
