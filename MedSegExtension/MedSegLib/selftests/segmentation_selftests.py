"""Self-tests of classical segmentation and statistics (run under pytest headless and in 3D Slicer).

Each check builds a small synthetic CT with known anatomy, so it needs no data and says exactly what
broke. Thresholds on Dice are far from what the methods reach, so they catch breakage, not noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

PHANTOM_SHAPE = (40, 112, 112)
PHANTOM_SPACING = (3.0, 3.0, 3.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


def phantom_volume(scene: Any, seed: int = 3) -> Tuple[Any, Any]:
    """(volume node, phantom) of the synthetic chest CT on an LPS-aligned grid."""
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.volume_nodes import RAS_FROM_LPS, add_volume_node, ijk_to_ras_from_geometry

    phantom = make_ct_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=seed)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(phantom.spacing[::-1], np.eye(3), phantom.origin_lps)
    return add_volume_node(phantom.hu, ijk_to_ras, "phantom CT", scene), phantom


def deepest_voxel_ras(mask: np.ndarray, ijk_to_ras: np.ndarray) -> Tuple[float, float, float]:
    """RAS of the voxel farthest from the mask boundary: an unambiguous seed inside a structure."""
    from scipy import ndimage

    from MedSegLib.volume_nodes import ras_of_voxels

    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)[::-1]
    distance = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    k, j, i = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return tuple(float(v) for v in ras_of_voxels(ijk_to_ras, [[i, j, k]])[0])  # type: ignore[return-value]


def check_threshold_to_segmentation(scene: Any, work_dir: Path) -> None:
    """Threshold writes exactly the thresholded voxels, named, coloured and terminology-tagged."""
    import slicer

    from MedSegLib.segmentation import segment_volume_node

    volume, phantom = phantom_volume(scene)
    result = segment_volume_node(volume, method="threshold", lower=200, upper=3000, segment_name="bone")
    segment_id = result.segment_ids[0]
    written = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, segment_id, volume)
    expected = (phantom.hu >= 200) & (phantom.hu <= 3000)
    assert np.array_equal(written.astype(bool), expected), "segment voxels differ from the threshold"
    segment = result.segmentation.GetSegmentation().GetSegment(segment_id)
    entry = segment.GetTerminology()  # the "TerminologyEntry" tag
    assert "SCT^272673000^Bone" in entry, f"terminology tag missing: {entry!r}"


def check_presets_on_phantom(scene: Any, work_dir: Path) -> None:
    """CT presets find body, lungs (on the correct side) and bone of the phantom."""
    from MedSegLib.segmentation import run_method
    from MedSegLib.volume_nodes import get_ijk_to_ras

    volume, phantom = phantom_volume(scene)
    ijk_to_ras = get_ijk_to_ras(volume)
    labels = phantom.labels
    body = run_method(phantom.hu, ijk_to_ras, "body")[0].mask
    assert dice(body, labels > 0) > 0.95, f"body Dice {dice(body, labels > 0):.3f}"
    lungs = {s.name: s.mask for s in run_method(phantom.hu, ijk_to_ras, "lungs")}
    assert dice(lungs["Right lung"], labels == 3) > 0.9, "right lung wrong (side swapped?)"
    assert dice(lungs["Left lung"], labels == 2) > 0.9, "left lung wrong (side swapped?)"
    bone = run_method(phantom.hu, ijk_to_ras, "bone")[0].mask
    truth = np.isin(labels, (5, 6))
    # The phantom's contrast-filled heart and aorta (180-200 HU) touch the spine: HU alone includes them,
    # so the check is that all bone is found and most of the result is bone.
    recall = np.count_nonzero(bone & truth) / np.count_nonzero(truth)
    assert recall > 0.95 and dice(bone, truth) > 0.6, f"bone recall {recall:.3f}, Dice {dice(bone, truth):.3f}"


def check_region_growing_from_seed(scene: Any, work_dir: Path) -> None:
    """Region growing from one seed in the right lung recovers that lung (and not the left one)."""
    from MedSegLib.segmentation import run_method
    from MedSegLib.volume_nodes import get_ijk_to_ras

    volume, phantom = phantom_volume(scene)
    ijk_to_ras = get_ijk_to_ras(volume)
    lung = phantom.labels == 3
    seed = deepest_voxel_ras(lung, ijk_to_ras)
    grown = run_method(phantom.hu, ijk_to_ras, "region-growing", seeds=[seed])[0].mask
    assert dice(grown, lung) > 0.85, f"right lung Dice {dice(grown, lung):.3f}"


def check_grow_from_seeds_incremental(scene: Any, work_dir: Path) -> None:
    """An incremental update gives the same labels as a fresh run."""
    from MedSegLib.segmentation.grow_from_seeds import GrowFromSeeds

    rng = np.random.default_rng(0)
    image = rng.normal(0, 5, size=(20, 30, 40)).astype(np.float32)
    image[:, :, 20:] += 100
    seeds = np.zeros(image.shape, dtype=np.uint16)
    seeds[10, 15, 5] = 1
    seeds[10, 15, 35] = 2
    grower = GrowFromSeeds(image)
    first = grower.run(seeds).copy()
    assert (first[:, :, :18] == 1).mean() > 0.99 and (first[:, :, 22:] == 2).mean() > 0.99
    seeds[2, 2, 2] = 2
    seeds[10, 15, 5] = 0
    seeds[12, 20, 8] = 1
    updated = grower.update(seeds).copy()
    fresh = GrowFromSeeds(image).run(seeds)
    assert np.mean(updated == fresh) > 0.999, "incremental update differs from a fresh run"


def check_statistics(scene: Any, work_dir: Path) -> None:
    """Volume, centroid and intensity statistics of a known ball."""
    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segment
    from MedSegLib.statistics import compute_statistics
    from MedSegLib.volume_nodes import add_volume_node, ras_of_voxels

    spacing = np.array([0.8, 0.9, 1.5])  # i, j, k
    shape = (40, 60, 60)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.array([30.0, 28.0, 20.0])  # i, j, k
    ball = ((i - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2 + (
        (k - centre[2]) * spacing[2]
    ) ** 2 <= 15.0**2
    ijk_to_ras = np.diag([*spacing, 1.0])
    ijk_to_ras[:3, 3] = (5.0, -7.0, 11.0)
    voxels = np.where(ball, 100, 0).astype(np.int16)
    volume = add_volume_node(voxels, ijk_to_ras, "ball", scene)
    segmentation = ensure_segmentation_node(volume)
    write_segment(segmentation, volume, "ball", ball)
    table = compute_statistics(segmentation, volume)
    count = int(ball.sum())
    assert table.value("ball", "voxel_count") == count
    assert abs(table.value("ball", "volume_mm3") - count * float(np.prod(spacing))) < 1e-6
    centroid = np.array(table.value("ball", "centroid_ras"))
    expected = ras_of_voxels(ijk_to_ras, [centre])[0]
    assert np.abs(centroid - expected).max() < 0.05, f"centroid {centroid} != {expected}"
    assert table.value("ball", "ScalarVolumeSegmentStatisticsPlugin.mean") == 100.0
    sphericity = table.value("ball", "sphericity")
    assert 0.8 < sphericity <= 1.05, f"sphericity of a ball {sphericity}"


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: value for name, value in sorted(globals().items()) if name.startswith("check_") and callable(value)
}
