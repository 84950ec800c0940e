"""Run-length connected components against ITK's ConnectedComponent (numbering, sizes, boxes, painting)."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegLib.segmentation.run_components import run_components


def _label_image(components) -> np.ndarray:
    """The voxel label image the runs describe (test only: what the module avoids storing)."""
    labels = np.zeros(components.shape, dtype=np.int64).reshape(-1, components.shape[2])
    for row in range(len(components.row_start) - 1):
        for r in range(components.row_start[row], components.row_start[row + 1]):
            labels[row, components.starts[r] : components.stops[r]] = components.component[r]
    return labels.reshape(components.shape)


def _itk_labels(mask: np.ndarray, fully_connected: bool) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, fully_connected)).astype(np.int64)


@pytest.mark.parametrize("fully_connected", [False, True])
@pytest.mark.parametrize("density,seed", [(0.3, 0), (0.5, 1), (0.65, 2), (0.05, 3)])
def test_components_equal_itk(density, seed, fully_connected) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((9, 17, 23)) < density
    mask[0, 0, :] = True  # runs touching the volume's edges
    mask[-1, :, -1] = True
    components = run_components(mask, fully_connected)
    expected = _itk_labels(mask, fully_connected)
    assert np.array_equal(_label_image(components), expected)
    assert np.array_equal(components.label_slices(2, 6), expected[2:6])
    assert components.count == expected.max()
    assert np.array_equal(components.sizes[1:], np.bincount(expected.ravel())[1:])
    for value in range(1, components.count + 1):
        k, j, i = np.nonzero(expected == value)
        assert tuple(components.boxes[value]) == (k.min(), j.min(), i.min(), k.max(), j.max(), i.max())


def test_paint_and_lookup() -> None:
    mask = np.zeros((4, 6, 8), dtype=bool)
    mask[0, 0, 0:3] = True  # component 1: 3 voxels
    mask[1:3, 2:4, 4:8] = True  # component 2: 16 voxels
    mask[3, 5, 7] = True  # component 3: 1 voxel
    components = run_components(mask)
    assert components.count == 3 and list(components.sizes) == [0, 3, 16, 1]
    kept = components.paint(components.sizes >= 3)
    assert np.array_equal(kept, mask & ~(np.arange(mask.size).reshape(mask.shape) == mask.size - 1))
    assert components.component_at(2, 3, 5) == 2 and components.component_at(0, 0, 5) == 0
    empty = run_components(np.zeros((2, 3, 4), dtype=bool))
    assert empty.count == 0 and not empty.paint(np.ones(1, bool)).any()


def test_diagonal_touch_joins_only_when_fully_connected() -> None:
    mask = np.zeros((2, 2, 4), dtype=bool)
    mask[0, 0, 0:2] = True
    mask[1, 1, 2:4] = True  # touches the first run only at a corner
    assert run_components(mask, False).count == 2
    assert run_components(mask, True).count == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_connected_to_seeds_equals_itk_connected_threshold(seed) -> None:
    """The airway's connected threshold on runs gives ITK's ConnectedThreshold voxel for voxel (face
    connectivity, several seeds, a seed outside the range contributes nothing)."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.run_components import connected_to_seeds

    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 200, size=(18, 25, 31)).astype(np.int16)
    seeds_kji = np.array([[3, 4, 5], [10, 20, 7], [17, 0, 30]])
    array[tuple(seeds_kji[0])] = -900  # inside the range
    array[tuple(seeds_kji[1])] = 100  # outside it
    upper = -350
    expected = sitk.GetArrayFromImage(
        sitk.ConnectedThreshold(
            sitk.GetImageFromArray(array),
            seedList=[tuple(int(v) for v in row[::-1]) for row in seeds_kji],
            lower=-3000.0,
            upper=float(upper),
        )
    ).astype(bool)
    got = connected_to_seeds((array >= -3000) & (array <= upper), seeds_kji)
    assert expected.sum() > 50
    assert np.array_equal(got, expected)
