"""The memory-lean post-processing primitives give exactly what the plain whole-volume numpy/scipy
computations give (slab-wise margins, run-length hysteresis, slab-wise island sizes, sparse label stats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from MedSegLib.segmentation import postprocess, presets


def _blobs(shape=(40, 30, 33), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random(shape) > 0.55)
    mask[:, :5] = True  # touches the scan border (shrinking must not erode it)
    return mask


@pytest.mark.parametrize("margin_mm", [2.5, -2.5, 4.05, -4.05, 1.0])
def test_margin_paths_equal_the_euclidean_rule(monkeypatch, margin_mm) -> None:
    """The ball-kernel path, the whole-volume distance map and slab-wise distance maps give the same mask,
    and it is the Euclidean distance rule itself (scipy's float64 EDT as the reference; margins that are
    no exact voxel-distance tie: ITK's map is float32, the kernel includes ties, scipy rounds them)."""
    mask = _blobs()
    spacing = (0.8, 0.9, 1.1)
    kernel = postprocess.margin(mask, margin_mm, spacing)
    monkeypatch.setattr(postprocess, "MARGIN_KERNEL_ROWS", 0)  # distance maps from here on
    whole = postprocess.margin(mask, margin_mm, spacing)
    monkeypatch.setattr(postprocess, "MARGIN_SLAB_VOXELS", 30 * 33 * 3)  # 3-slice slabs, halo 3-5 slices
    slabs = postprocess.margin(mask, margin_mm, spacing)
    assert np.array_equal(whole, slabs)
    assert np.array_equal(kernel, whole)
    if margin_mm > 0:
        reference = mask | (ndimage.distance_transform_edt(~mask, sampling=spacing[::-1]) <= margin_mm)
    else:  # the border does not erode: scipy's EDT of the background with the outside as object
        padded = np.pad(~mask, 6, constant_values=False)
        reference = mask & (
            ndimage.distance_transform_edt(~padded, sampling=spacing[::-1])[6:-6, 6:-6, 6:-6] > -margin_mm
        )
    assert np.array_equal(kernel, reference)
    assert kernel.sum() != mask.sum()  # the margin did something


def test_margin_includes_exact_ties() -> None:
    """A voxel exactly ``margin`` away (a 3-4-5 triangle of 0.6 x 0.8 mm steps) is within the margin."""
    from MedSegLib.segmentation import morphology

    mask = np.zeros((1, 9, 9), dtype=bool)
    mask[0, 4, 4] = True
    grown = postprocess.margin(mask, 3.0, (0.6, 0.8, 1.0))  # i steps 0.6 mm, j steps 0.8 mm
    assert grown[0, 4 + 2, 4 + 4]  # 2 x 0.8 = 1.6 mm, 4 x 0.6 = 2.4 mm: exactly 3.0 mm
    assert not grown[0, 4 + 3, 4 + 4]  # 3.0 mm + 2.4 mm apart: sqrt(2.4^2 + 2.4^2) = 3.39 mm
    dzs, dys, ws = morphology.distance_rows(3.0, (0.6, 0.8, 1.0))
    assert (ws[(dzs == 0) & (dys == 0)] == 5).all()  # 5 x 0.6 = 3.0 mm


def test_hysteresis_and_islands_equal_scipy_labelling(monkeypatch) -> None:
    mask = _blobs(seed=1)
    strong = np.zeros_like(mask)
    strong[::7, ::5, ::3] = True
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    wanted = np.unique(labels[strong & mask])
    assert np.array_equal(postprocess.hysteresis(mask, strong), np.isin(labels, wanted[wanted > 0]))
    labels, count = ndimage.label(mask)
    wanted = np.unique(labels[strong & mask])
    assert np.array_equal(postprocess.hysteresis(mask, strong, False), np.isin(labels, wanted[wanted > 0]))
    sizes = np.bincount(labels.ravel())
    monkeypatch.setattr(postprocess, "SLAB_VOXELS", 30 * 33 * 3)  # 3-slice slabs: sizes summed across slabs
    assert np.array_equal(postprocess.label_sizes(labels), sizes)
    for minimum in (2, 10, 200):
        keep = sizes >= minimum
        keep[0] = False
        assert np.array_equal(postprocess.remove_small_islands(mask, minimum), keep[labels])


def test_fork_after_a_parallel_kernel_is_safe(tmp_path) -> None:
    """MedSegLib selects a fork-safe numba threading layer: a process that ran a parallel kernel (morphology)
    can still fork (the DICOM indexer's pool does); with GNU OpenMP the child would abort."""
    import os
    import subprocess
    import sys

    script = tmp_path / "fork_check.py"
    script.write_text(
        "import os, sys\n"
        "import numpy as np\n"
        "from MedSegLib.segmentation import morphology\n"
        "mask = np.zeros((20, 64, 64), bool); mask[5:15, 10:50, 10:50] = True\n"
        "first = morphology.binary_erode(mask, (3, 3, 0))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(morphology.binary_erode(mask, (3, 3, 0)), first) else 3)\n"
        "status = os.waitpid(pid, 0)[1]\n"
        "import numba\n"
        "print(numba.threading_layer(), status)\n"
        "sys.exit(0 if status == 0 else 1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "MedSegExtension"), *sys.path])
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] in ("tbb", "workqueue")


@pytest.mark.parametrize("n", [101, 1000, 1001, 50000])
def test_noise_sd_histogram_equals_float_medians(n) -> None:
    """The noise estimate from a histogram of integer differences is the float MAD formula exactly."""
    from types import SimpleNamespace

    steps = np.random.default_rng(n).integers(-150, 150, size=n)
    array = np.zeros((1, 1, n + 1), np.int16)
    array[0, 0, 1:] = steps.cumsum() % 90  # soft tissue range (-100, 100)
    ctx = SimpleNamespace(array=array, shape=array.shape)
    difference = array[0, 0, 1:].astype(np.float32) - array[0, 0, :-1].astype(np.float32)
    mad = float(np.median(np.abs(difference - np.median(difference))))
    assert presets.noise_sd(ctx, np.ones(array.shape, bool)) == 1.4826 * mad / float(np.sqrt(2.0))


@pytest.mark.parametrize("radius, multiplier, iterations", [(1, 2.5, 4), (2, 2.0, 3), (0, 3.0, 2), (3, 2.5, 0)])
def test_confidence_connected_equals_itk(radius, multiplier, iterations) -> None:
    """MedSeg's run-based confidence connected gives ITK's ConfidenceConnected voxel for voxel (two seeds,
    boxes that cross the volume border, the zero-radius statistics of the seed values)."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.region import confidence_connected

    rng = np.random.default_rng(radius)
    volume = (ndimage.gaussian_filter(rng.normal(size=(20, 30, 40)), 1.0) * 300).astype(np.int16)
    seeds = np.array([[0, 15, 39], [10, 3, 20]])  # (k, j, i); the first sits on the border
    expected = sitk.GetArrayFromImage(
        sitk.ConfidenceConnected(
            sitk.GetImageFromArray(volume),
            seedList=[tuple(int(v) for v in seed[::-1]) for seed in seeds],
            numberOfIterations=iterations,
            multiplier=multiplier,
            initialNeighborhoodRadius=radius,
            replaceValue=1,
        )
    ).astype(bool)
    got = confidence_connected(volume, seeds, radius, multiplier, iterations)
    assert 20 < expected.sum() < volume.size
    assert np.array_equal(got, expected)
