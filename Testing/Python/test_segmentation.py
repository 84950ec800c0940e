"""Classical segmentation on synthetic data with known truth: every method, validation, post-processing,
output to segmentation nodes / label maps / surfaces, and the ``medseg segment`` command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from MedSegLib.errors import UserInputError
from MedSegLib.selftests import segmentation_selftests as selftests
from MedSegLib.selftests.segmentation_selftests import deepest_voxel_ras, dice

CONTRACT_METHODS = (
    "threshold",
    "otsu",
    "multi-otsu",
    "region-growing",
    "confidence-connected",
    "grow-from-seeds",
    "watershed",
    "fast-marching",
    "level-set",
    "body",
    "lungs",
    "airway",
    "bone",
    "fat",
    "muscle",
)


@pytest.fixture(scope="module")
def phantom(runtime):
    """(hu, labels, ijk_to_ras) of the synthetic chest CT used by most tests."""
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    ct = make_ct_phantom(selftests.PHANTOM_SHAPE, selftests.PHANTOM_SPACING, seed=5)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(ct.spacing[::-1], np.eye(3), ct.origin_lps)
    return ct.hu, ct.labels, ijk_to_ras


def _sample_ras(mask: np.ndarray, ijk_to_ras: np.ndarray, count: int, rng: np.random.Generator, depth_mm=6.0):
    """Random seed positions at least ``depth_mm`` inside ``mask``."""
    from MedSegLib.segmentation import postprocess
    from MedSegLib.volume_nodes import ras_of_voxels

    core = postprocess.margin(mask, -depth_mm, np.linalg.norm(ijk_to_ras[:3, :3], axis=0))
    voxels = np.argwhere(core)
    picked = voxels[rng.choice(len(voxels), count, replace=False)]
    return [tuple(ras_of_voxels(ijk_to_ras, [[i, j, k]])[0]) for k, j, i in picked]


@pytest.mark.parametrize("name", sorted(selftests.ALL_CHECKS))
def test_segmentation_selftests(scene, name, tmp_path):
    selftests.ALL_CHECKS[name](scene, tmp_path)


def test_registry_has_contract_methods_with_declarations():
    from MedSegLib.segmentation import methods

    registry = methods()
    assert set(CONTRACT_METHODS) <= set(registry)
    for method in registry.values():
        names = [param.name for param in method.params]
        assert len(names) == len(set(names)), f"{method.name} declares a parameter twice"
        for param in method.params:
            assert param.help and param.kind in (int, float, bool, str)
            if param.default is not None:
                assert param.validate(param.default, method.name) == param.default


def test_threshold_otsu_percentile_exact(phantom):
    from MedSegLib.segmentation import run_method

    hu, labels, ijk_to_ras = phantom
    mask = run_method(hu, ijk_to_ras, "threshold", parameters={"lower": -200, "upper": 100})[0].mask
    assert np.array_equal(mask, (hu >= -200) & (hu <= 100))
    otsu = run_method(hu, ijk_to_ras, "otsu")[0].mask  # air vs everything else: the patient and table
    from MedSegLib.segmentation.core import SegmentationContext
    from MedSegLib.segmentation.threshold import otsu_threshold

    threshold = otsu_threshold(SegmentationContext(hu, ijk_to_ras), 256)
    assert otsu.dtype == bool and np.array_equal(otsu, hu > threshold)  # the filter's own output, as a view
    dark = run_method(hu, ijk_to_ras, "otsu", parameters={"foreground": "dark"})[0].mask
    assert np.array_equal(dark, hu <= threshold)
    assert dice(otsu & (labels > 0), labels > 0) > 0.85  # lungs are on the dark side
    high = run_method(hu, ijk_to_ras, "percentile", parameters={"lower_percentile": 99.0})[0].mask
    assert abs(high.mean() - 0.01) < 0.005
    classes = run_method(hu, ijk_to_ras, "multi-otsu", parameters={"classes": 3})
    assert len(classes) == 2 and all(c.mask.any() for c in classes)
    assert not np.any(classes[0].mask & classes[1].mask)


def test_multi_otsu_classes_are_views_of_one_label_image(phantom, scene):
    """Multi-Otsu segments are ``labels == value`` of the filter's label image (no per-class mask is built),
    equal voxel for voxel to thresholding at the reported thresholds, with and without a mask, and written
    into a segmentation node by one label-map import (names, colours kept; a re-run replaces them)."""
    import slicer

    from MedSegLib.segmentation import run_method, segment_volume_node
    from MedSegLib.segmentation.core import SegmentationContext
    from MedSegLib.segmentation.threshold import multi_otsu_thresholds

    hu, labels, ijk_to_ras = phantom
    low, high = multi_otsu_thresholds(SegmentationContext(hu, ijk_to_ras), 3, 256)
    classes = run_method(hu, ijk_to_ras, "multi-otsu", parameters={"classes": 3})
    assert [c.name for c in classes] == ["Class_2", "Class_3"]
    assert all(c.is_labelled for c in classes) and classes[0].labels is classes[1].labels
    assert np.array_equal(classes[0].mask, (hu > low) & (hu <= high))
    assert np.array_equal(classes[1].mask, hu > high)
    everything = run_method(hu, ijk_to_ras, "multi-otsu", parameters={"classes": 3, "include_lowest": True})
    assert np.array_equal(everything[0].mask, hu <= low) and len(everything) == 3
    body = labels > 0
    masked = run_method(hu, ijk_to_ras, "multi-otsu", mask=body, parameters={"classes": 3})
    m_low, m_high = multi_otsu_thresholds(SegmentationContext(hu, ijk_to_ras, mask=body), 3, 256)
    assert (m_low, m_high) != (low, high)  # the histogram is the body's only
    assert np.array_equal(masked[0].mask, body & (hu > m_low) & (hu <= m_high))
    assert np.array_equal(masked[1].mask, body & (hu > m_high))
    # post-processing materialises the masks
    largest = run_method(hu, ijk_to_ras, "multi-otsu", parameters={"classes": 3, "keep_largest_island": True})
    assert not largest[1].is_labelled and not np.any(largest[1].mask & (hu <= high))

    volume, _ = selftests.phantom_volume(scene)
    array = slicer.util.arrayFromVolume(volume)
    result = segment_volume_node(volume, method="multi-otsu", classes=3)
    node_low, node_high = multi_otsu_thresholds(SegmentationContext(array, np.eye(4)), 3, 256)
    seg = result.segmentation.GetSegmentation()
    assert [seg.GetSegment(s).GetName() for s in result.segment_ids] == ["Class_2", "Class_3"]
    first = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, result.segment_ids[0], volume)
    second = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, result.segment_ids[1], volume)
    assert np.array_equal(first.astype(bool), (array > node_low) & (array <= node_high))
    assert np.array_equal(second.astype(bool), array > node_high)
    colours = [seg.GetSegment(s).GetColor() for s in result.segment_ids]
    again = segment_volume_node(volume, result.segmentation, method="multi-otsu", classes=3)
    assert again.segment_ids == result.segment_ids and seg.GetNumberOfSegments() == 2
    assert [seg.GetSegment(s).GetColor() for s in result.segment_ids] == colours
    rewritten = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, result.segment_ids[1], volume)
    assert np.array_equal(rewritten.astype(bool), array > node_high)


def test_masking_restricts_result(phantom):
    from MedSegLib.segmentation import run_method

    hu, labels, ijk_to_ras = phantom
    body = labels > 0
    inside = run_method(hu, ijk_to_ras, "threshold", mask=body, parameters={"upper": -500})[0].mask
    assert inside.any() and not np.any(inside & ~body)
    masked_otsu = run_method(hu, ijk_to_ras, "otsu", mask=body)[0].mask
    assert not np.any(masked_otsu & ~body)


def test_validation_errors(phantom):
    from MedSegLib.segmentation import run_method

    hu, _, ijk_to_ras = phantom
    with pytest.raises(UserInputError, match="minimum 300 is greater than maximum 100"):
        run_method(hu, ijk_to_ras, "threshold", parameters={"lower": 300, "upper": 100})
    with pytest.raises(UserInputError, match="outside the volume"):
        run_method(hu, ijk_to_ras, "region-growing", seeds=[(5000.0, 0.0, 0.0)])
    with pytest.raises(UserInputError, match="empty"):
        run_method(hu, ijk_to_ras, "threshold", parameters={"lower": 30000})
    with pytest.raises(UserInputError, match="needs at least one seed"):
        run_method(hu, ijk_to_ras, "region-growing")
    with pytest.raises(UserInputError, match="at least two segments"):
        run_method(hu, ijk_to_ras, "grow-from-seeds", seeds=[(0.0, 0.0, 0.0)])
    with pytest.raises(UserInputError, match="--classes"):
        run_method(hu, ijk_to_ras, "multi-otsu", parameters={"classes": 1})
    with pytest.raises(UserInputError, match="do not apply"):
        run_method(hu, ijk_to_ras, "otsu", parameters={"lower": 1})
    with pytest.raises(UserInputError, match="unknown segmentation method"):
        run_method(hu, ijk_to_ras, "magic")


@pytest.mark.parametrize(
    "method,parameters,label,minimum",
    [
        ("region-growing", {}, 3, 0.85),
        ("confidence-connected", {}, 3, 0.85),
        ("level-set", {}, 3, 0.8),
        ("fast-marching", {"stopping_time": 100}, 3, 0.75),
        ("level-set", {}, 8, 0.7),  # liver: 60 HU beside 30-45 HU tissue with 15 HU noise
    ],
)
def test_seeded_methods_from_one_seed(phantom, method, parameters, label, minimum):
    from MedSegLib.segmentation import run_method

    hu, labels, ijk_to_ras = phantom
    truth = labels == label
    seed = deepest_voxel_ras(truth, ijk_to_ras)
    mask = run_method(hu, ijk_to_ras, method, seeds=[seed], parameters=parameters)[0].mask
    score = dice(mask, truth)
    print(f"phantom label {label} {method}: Dice {score:.3f}")
    assert score > minimum
    if label == 3:
        left = labels == 2
        assert np.count_nonzero(mask & left) < 0.02 * np.count_nonzero(left), "grew into the other lung"


@pytest.mark.parametrize("method", ["grow-from-seeds", "watershed"])
def test_competing_seeds_split_lungs(phantom, method):
    """Seeds in the right lung, the left lung and the rest: each segment finds its lung."""
    from MedSegLib.segmentation import SeedPoint, run_method

    hu, labels, ijk_to_ras = phantom
    rng = np.random.default_rng(1)
    right, left = labels == 3, labels == 2
    seeds = [SeedPoint(p, "right") for p in _sample_ras(right, ijk_to_ras, 3, rng)]
    seeds += [SeedPoint(p, "left") for p in _sample_ras(left, ijk_to_ras, 3, rng)]
    seeds += [SeedPoint(p, "other") for p in _sample_ras(~(right | left), ijk_to_ras, 30, rng, 3.0)]
    segments = {s.name: s.mask for s in run_method(hu, ijk_to_ras, method, seeds=seeds)}
    assert set(segments) == {"right", "left", "other"}
    assert dice(segments["right"], right) > 0.85, f"{method} right lung Dice {dice(segments['right'], right):.3f}"
    assert dice(segments["left"], left) > 0.85, f"{method} left lung Dice {dice(segments['left'], left):.3f}"


def test_graph_cut_from_strokes(phantom):
    """Object strokes in the right lung, background strokes in a ring around it: the min cut finds the lung."""
    pytest.importorskip("maxflow")
    from MedSegLib.segmentation import SeedPoint, postprocess, run_method
    from MedSegLib.volume_nodes import ras_of_voxels

    hu, labels, ijk_to_ras = phantom
    rng = np.random.default_rng(3)
    lung = labels == 3
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    ring = postprocess.margin(lung, 20.0, spacing) & ~postprocess.margin(lung, 3.0, spacing)
    ring_voxels = np.argwhere(ring)[rng.choice(int(ring.sum()), 40, replace=False)]
    seeds = [SeedPoint(p, "lung") for p in _sample_ras(lung, ijk_to_ras, 5, rng)]
    seeds += [SeedPoint(tuple(ras_of_voxels(ijk_to_ras, [[i, j, k]])[0]), "background") for k, j, i in ring_voxels]
    segments = run_method(hu, ijk_to_ras, "graph-cut", seeds=seeds, parameters={"roi_mm": 30})
    assert [s.name for s in segments] == ["lung"]
    score = dice(segments[0].mask, lung)
    print(f"phantom right lung graph-cut: Dice {score:.3f}")
    assert score > 0.75
    with pytest.raises(UserInputError, match="max-roi-voxels"):
        run_method(hu, ijk_to_ras, "graph-cut", seeds=seeds, parameters={"max_roi_voxels": 1000})


def _grow_edit(seeds, rng, op):
    """One seed edit as the Segment Editor makes them (returns the new seed map)."""
    new = seeds.copy()
    shape = seeds.shape
    k, j, i = (int(rng.integers(0, n)) for n in shape)
    placed = np.argwhere(new)
    if op == "stroke":  # of a label present or of a new one
        new[k, j : j + int(rng.integers(1, 6)), i : i + 2] = int(rng.integers(1, 5))
    elif op == "erase" and len(placed):
        k, j, i = placed[rng.integers(0, len(placed))]
        new[k, max(0, j - 2) : j + 3, max(0, i - 2) : i + 3] = 0
    elif op == "relabel":
        labels = np.unique(new[new > 0])
        new[new == labels[rng.integers(0, len(labels))]] = int(rng.integers(1, 6))
    elif op == "move" and len(placed):  # erase a voxel and paint another in one edit
        new[tuple(placed[rng.integers(0, len(placed))])] = 0
        new[k, j, i] = int(rng.integers(1, 5))
    return new


def test_grow_from_seeds_update_matches_fresh_run_and_is_fast():
    """Every kind of update (a stroke of a label present, a second one, one of a new label, erasing a
    stroke or part of one, relabelling) gives the labels of a fresh run, voxel for voxel, quickly; removing
    a stroke invalidates only the voxels whose path started there, not its whole label."""
    from MedSegLib.segmentation.grow_from_seeds import GrowFromSeeds

    rng = np.random.default_rng(2)
    image = rng.normal(0, 10, size=(96, 96, 96)).astype(np.float32)
    image[:, :, 48:] += 200.0
    seeds = np.zeros(image.shape, dtype=np.uint16)
    seeds[48, 48, 20] = 1
    seeds[48, 48, 80] = 2
    grower = GrowFromSeeds(image)
    grower.run(seeds)
    seconds = {}
    before_removal = None

    def edit(name, region, value):
        nonlocal before_removal
        if name == "remove the second stroke":
            before_removal = grower.labels.copy()
        seeds[region] = value
        started = time.perf_counter()
        updated = grower.update(seeds).copy()
        seconds[name] = time.perf_counter() - started
        # exact: equal-cost paths are resolved by label, not by processing order
        assert np.array_equal(updated, GrowFromSeeds(image).run(seeds)), name

    edit("a stroke", np.s_[10:14, 10:14, 30], 1)
    edit("a second stroke", np.s_[80, 20:30, 12:15], 1)
    edit("a stroke of the other label", np.s_[20, 70:80, 60:63], 2)
    edit("a stroke of a new label", np.s_[60, 30:40, 36:39], 3)
    edit("remove the second stroke", np.s_[80, 20:30, 12:15], 0)
    invalidated = grower.last_invalidated
    assert 0 < invalidated < np.count_nonzero(before_removal == 1) / 2  # not label 1's whole region
    edit("erase part of a stroke", np.s_[10:12, 10:14, 30], 0)
    edit("erase a seed and its label", np.s_[48, 48, 80], 0)
    edit("relabel", seeds == 3, 4)
    assert len(np.unique(grower.labels)) == 3
    print("grow-from-seeds 96^3 updates:", {name: round(s, 3) for name, s in seconds.items()})
    assert max(seconds.values()) < 1.0


@pytest.mark.parametrize("trial", range(6))
def test_grow_from_seeds_updates_with_ties_and_a_mask_match_fresh_runs(trial):
    """Random edit sequences on volumes with many equal-cost paths (integer and flat intensities), with
    a mask, anisotropic spacing and locality: every update equals a fresh run."""
    from MedSegLib.segmentation.grow_from_seeds import GrowFromSeeds

    rng = np.random.default_rng(trial)
    shape = tuple(int(n) for n in rng.integers(8, 24, 3))
    if trial % 2:
        image = np.zeros(shape, dtype=np.int16)
        image[:, :, shape[2] // 2 :] = 100  # flat halves: ties everywhere
    else:
        image = rng.integers(-3, 4, shape).astype(np.int16)
    spacing = (1.0, 1.0, 2.5) if trial % 3 else (0.5, 1.0, 1.0)
    locality = (0.0, 1.0, 10.0)[trial % 3]
    mask = rng.random(shape) > 0.15 if trial >= 2 else None
    inside = np.argwhere(mask if mask is not None else np.ones(shape, dtype=bool))
    seeds = np.zeros(shape, dtype=np.uint16)
    first, second = rng.choice(len(inside), 2, replace=False)
    seeds[tuple(inside[first])] = 1
    seeds[tuple(inside[second])] = 2
    grower = GrowFromSeeds(image, spacing, locality, mask)
    grower.run(seeds)
    for step in range(12):
        new = _grow_edit(seeds, rng, ("stroke", "stroke", "erase", "relabel", "move")[step % 5])
        if len(np.unique(new[(new > 0) & (mask if mask is not None else True)])) < 2:
            continue  # fewer than two segments: refused (tested below)
        seeds = new
        updated = grower.update(seeds).copy()
        assert np.array_equal(updated, GrowFromSeeds(image, spacing, locality, mask).run(seeds)), step
    if mask is not None:
        assert np.all(grower.labels[~mask] == 0)


def test_grow_from_seeds_refused_edit_and_saturated_distances():
    """An edit leaving one segment is refused and the state kept; a state whose distances saturate (huge
    locality on a tiny intensity range) is re-run from scratch, still equal to a fresh run."""
    from MedSegLib.segmentation.grow_from_seeds import GrowFromSeeds

    rng = np.random.default_rng(1)
    image = (rng.random((12, 14, 16)) > 0.5).astype(np.float32)
    seeds = np.zeros(image.shape, dtype=np.uint16)
    seeds[2, 2, 2] = 1
    seeds[9, 9, 9] = 2
    grower = GrowFromSeeds(image)
    grower.run(seeds)
    alone = seeds.copy()
    alone[9, 9, 9] = 0
    with pytest.raises(UserInputError, match="at least two segments"):
        grower.update(alone)
    seeds[5, 5, 5] = 2
    assert np.array_equal(grower.update(seeds), GrowFromSeeds(image).run(seeds))

    saturating = GrowFromSeeds(image, locality=2e5)
    saturating.run(seeds)
    assert saturating._saturated
    for region, value in ((np.s_[7, 3, 3], 3), (np.s_[2, 2, 2], 0)):
        seeds[region] = value
        assert np.array_equal(saturating.update(seeds), GrowFromSeeds(image, locality=2e5).run(seeds))


def test_postprocessing_operations():
    from MedSegLib.segmentation import postprocess

    spacing = (0.5, 0.5, 2.0)
    k, j, i = np.meshgrid(np.arange(40), np.arange(80), np.arange(80), indexing="ij")
    radius = 12.0
    ball = ((i - 40) * 0.5) ** 2 + ((j - 40) * 0.5) ** 2 + ((k - 20) * 2.0) ** 2 <= radius**2
    volume = lambda m: m.sum() * 0.5 * 0.5 * 2.0  # noqa: E731
    grown = postprocess.margin(ball, 4.0, spacing)
    assert abs(volume(grown) - 4 / 3 * np.pi * 16**3) / (4 / 3 * np.pi * 16**3) < 0.08
    shrunk = postprocess.margin(ball, -4.0, spacing)
    assert abs(volume(shrunk) - 4 / 3 * np.pi * 8**3) / (4 / 3 * np.pi * 8**3) < 0.15
    shell = postprocess.hollow(ball, 2.0, spacing)
    assert not np.any(shell & ~ball) and shell.sum() < ball.sum() / 2
    holed = ball & ~(((i - 40) ** 2 + (j - 40) ** 2 + (k - 20) ** 2) <= 9)
    assert np.array_equal(postprocess.fill_holes(holed), ball)
    speck = ball.copy()
    speck[2, 2, 2] = True
    assert np.array_equal(postprocess.keep_largest_island(speck), ball)
    assert np.array_equal(postprocess.remove_small_islands(speck, 5), ball)
    assert len(postprocess.split_islands(speck)) == 2
    assert np.array_equal(postprocess.logical("subtract", ball, shrunk), ball & ~shrunk)
    assert np.array_equal(postprocess.logical("invert", ball), ~ball)
    opened = postprocess.smooth(speck, "opening", 2.0, spacing)
    assert not opened[2, 2, 2] and not np.any(opened & ~speck)
    closed = postprocess.smooth(holed, "closing", 3.0, spacing)
    assert np.all(closed[ball & ~holed]) or closed.sum() >= holed.sum()
    intensities = np.where(ball, 50, -50)
    assert not postprocess.mask_by_intensity(ball, intensities, 60, None).any()


def vtk_string_reference():
    import vtk

    return vtk.reference("")


def test_segment_volume_node_names_colours_terminology_and_replace(scene):
    import slicer

    from MedSegLib.segmentation import segment_volume_node

    volume, ct = selftests.phantom_volume(scene)
    result = segment_volume_node(volume, method="lungs")
    seg = result.segmentation.GetSegmentation()
    names = [seg.GetSegment(s).GetName() for s in result.segment_ids]
    assert names == ["Right lung", "Left lung"]
    right = seg.GetSegment(result.segment_ids[0])
    assert "SCT^39607008^Lung" in right.GetTerminology() and "SCT^24028007^Right" in right.GetTerminology()
    tag = vtk_string_reference()
    assert right.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag) and tag.get() == right.GetTerminology()
    assert np.allclose(right.GetColor(), np.array([197, 165, 145]) / 255.0)
    again = segment_volume_node(volume, result.segmentation, method="lungs")
    assert seg.GetNumberOfSegments() == 2 and again.segment_ids == result.segment_ids
    written = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, result.segment_ids[1], volume)
    assert dice(written.astype(bool), ct.labels == 2) > 0.9
    # geometry of the segmentation is the volume's
    assert result.segmentation.GetNodeReference("referenceImageGeometryRef") is volume


def test_surface_export_ras_and_lps(scene, tmp_path):
    import vtk

    from MedSegLib.segmentation import segment_volume_node
    from MedSegLib.segmentation.output import export_surfaces

    volume, _ = selftests.phantom_volume(scene)
    result = segment_volume_node(volume, method="bone")
    bounds = {}
    for coordinates in ("RAS", "LPS"):
        files = export_surfaces(result.segmentation, tmp_path / coordinates, "stl", coordinates)
        stl = [f for f in files if f.suffix == ".stl"]
        assert len(stl) == 1
        reader = vtk.vtkSTLReader()
        reader.SetFileName(str(stl[0]))
        reader.Update()
        assert reader.GetOutput().GetNumberOfPoints() > 100
        bounds[coordinates] = np.array(reader.GetOutput().GetBounds())
    ras, lps = bounds["RAS"], bounds["LPS"]
    assert np.allclose(ras[[0, 1]], -lps[[1, 0]], atol=1e-3) and np.allclose(ras[4:], lps[4:], atol=1e-3)
    obj = export_surfaces(result.segmentation, tmp_path / "obj", "obj")
    assert any(f.suffix == ".obj" for f in obj)


def _write_phantom_nrrd(scene, tmp_path) -> Path:
    from MedSegLib.node_io import save_node

    volume, _ = selftests.phantom_volume(scene)
    return save_node(volume, tmp_path / "ct.nrrd")


def test_cli_segment_outputs(scene, tmp_path, capsys):
    from MedSegLib.cli.main import main
    from MedSegLib.node_io import import_labelmap_as_segmentation, load_segmentation

    ct = _write_phantom_nrrd(scene, tmp_path)
    assert main(["segment", str(ct), "--method", "lungs", "-o", str(tmp_path / "lungs.seg.nrrd"), "-q"]) == 0
    seg = load_segmentation(tmp_path / "lungs.seg.nrrd").GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["Right lung", "Left lung"]
    assert "Lung" in seg.GetNthSegment(0).GetTerminology()
    assert main(["segment", str(ct), "-m", "bone", "-o", str(tmp_path / "bone.nii.gz"), "-q"]) == 0
    assert (tmp_path / "bone.ctbl").is_file()
    back = import_labelmap_as_segmentation(tmp_path / "bone.nii.gz").GetSegmentation()
    assert back.GetNthSegment(0).GetName() == "Bone"

    # seeds: RAS on the command line and a markups file, grouped by name
    volume, phantom = selftests.phantom_volume(scene)
    from MedSegLib.volume_nodes import get_ijk_to_ras

    seed = deepest_voxel_ras(phantom.labels == 8, get_ijk_to_ras(volume))
    out = tmp_path / "liver.seg.nrrd"
    code = main(
        [
            "segment",
            str(ct),
            "-m",
            "region-growing",
            "--seeds",
            ",".join(f"{v:.2f}" for v in seed),
            "--segment-name",
            "liver",
            "--fill-holes",
            "-o",
            str(out),
            "--json",
            "-q",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["segments"] == ["liver"] and summary["parameters"]["fill_holes"] is True
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "liver")
    markups.AddControlPoint(*seed)
    from MedSegLib.node_io import save_node

    save_node(markups, tmp_path / "liver.mrk.json")
    assert (
        main(
            [
                "segment",
                str(ct),
                "-m",
                "region-growing",
                "--seeds",
                str(tmp_path / "liver.mrk.json"),
                "-o",
                str(tmp_path / "liver2.seg.nrrd"),
                "-q",
            ]
        )
        == 0
    )


def test_cli_errors_and_listing(scene, tmp_path, capsys):
    from MedSegLib.cli.main import main

    assert main(["segment", "--list-methods"]) == 0
    listing = capsys.readouterr().out
    for name in CONTRACT_METHODS:
        assert f"\n{name} " in "\n" + listing or listing.startswith(name)
    assert main(["segment", "--list-methods", "--json"]) == 0
    assert {m["name"] for m in json.loads(capsys.readouterr().out)} >= set(CONTRACT_METHODS)
    ct = _write_phantom_nrrd(scene, tmp_path)
    out = str(tmp_path / "x.seg.nrrd")
    cases = [
        (["-m", "threshold", "--lower", "300", "--upper", "100"], "greater than maximum"),
        (["-m", "region-growing", "--seeds", "9999,0,0"], "outside the volume"),
        (["-m", "region-growing", "--seeds", "-9999.5,-1,2"], "outside the volume"),  # negative: a value
        (["-m", "grow-from-seeds", "--seeds", "-1,2,3@a"], "at least two segments"),
        (["-m", "region-growing", "--seeds", "1,2"], "3 coordinates"),
        (["-m", "threshold", "--lower", "40000"], "empty"),
        (["-m", "otsu", "--iterations", "3"], "do not apply"),
        (["-m", "nonsense"], "unknown segmentation method"),
    ]
    for extra, message in cases:
        assert main(["segment", str(ct), *extra, "-o", out, "-q"]) == 2
        assert message in capsys.readouterr().err, extra
    assert main(["segment", str(ct), "-m", "bone", "-o", str(tmp_path / "x.png")]) == 2
    assert not Path(out).exists()


def test_atlas_mni152_affine_recovers_known_transform():
    """The MNI152 template moved by a known affine (and rescaled in intensity) is segmented by
    registering the atlas back: grey/white matter Dice against the equally moved labels."""
    pytest.importorskip("nilearn")
    import SimpleITK as sitk

    from MedSegLib.segmentation import atlas, run_method
    from MedSegLib.volume_nodes import ijk_to_ras_from_sitk

    template, labels, names = atlas.mni152_atlas(4.0)
    assert names == {1: "Gray matter", 2: "White matter"}
    moved = sitk.AffineTransform(3)
    moved.SetCenter(template.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in template.GetSize()]))
    angle = np.deg2rad(6.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved.SetMatrix((rotation * 1.05).ravel().tolist())
    moved.SetTranslation((4.0, -3.0, 2.0))
    target = sitk.Resample(template, template, moved, sitk.sitkLinear, 0) * 0.5 + 20.0
    truth = sitk.GetArrayFromImage(sitk.Resample(labels, labels, moved, sitk.sitkNearestNeighbor, 0))
    segments = run_method(
        sitk.GetArrayFromImage(target),
        ijk_to_ras_from_sitk(target),
        "atlas",
        parameters={"transform": "affine", "atlas_resolution_mm": 4.0},
    )
    scores = {s.name: dice(s.mask, truth == value) for s, value in zip(segments, (1, 2))}
    print(f"MNI152 atlas (affine): {scores}")
    assert scores["Gray matter"] > 0.9 and scores["White matter"] > 0.9
    assert [s.terminology for s in segments] == ["gray matter", "white matter"]


def test_grey_and_white_matter_terminology(runtime):
    """The atlas outputs' terminology: SNOMED CT codes of DICOM CID 7153 in category Anatomical Structure."""
    from MedSegLib.segmentation.output import terminology_for_label

    for label, code in (("gray matter", "SCT^389081007^Gray matter"), ("white matter", "SCT^389080008^White matter")):
        entry, color = terminology_for_label(label)
        assert entry is not None and code in entry, (label, entry)
        assert "SCT^123037004^Anatomical Structure" in entry
        assert color is not None and len(color) == 3


def test_label_fusion_majority_and_staple():
    import SimpleITK as sitk

    from MedSegLib.segmentation.atlas import fuse_labels

    truth = np.zeros((10, 12, 14), dtype=np.uint16)
    truth[2:8, 3:9, 4:10] = 1
    truth[2:8, 3:9, 10:13] = 2
    rng = np.random.default_rng(0)
    noisy = []
    for _ in range(3):
        candidate = truth.copy()
        flip = rng.random(truth.shape) < 0.1
        candidate[flip] = rng.integers(0, 3, flip.sum())
        noisy.append(sitk.GetImageFromArray(candidate))
    for fusion in ("majority", "staple"):
        fused = sitk.GetArrayFromImage(fuse_labels(noisy, fusion))
        assert np.mean(fused == truth) > np.mean(sitk.GetArrayFromImage(noisy[0]) == truth), fusion
    with pytest.raises(UserInputError):
        fuse_labels(noisy, "mean")


def test_staging_image_is_refilled_and_never_overwrites_a_held_image():
    """The input copy reuses one SimpleITK image (no 150 MB allocation per run), but only when no one holds it."""
    import SimpleITK as sitk

    from MedSegLib.segmentation.core import clear_staging, image_from_array

    clear_staging()
    first = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = image_from_array(first, np.eye(4), reuse=True)
    identity = id(image)
    del image
    again = image_from_array(first + 100, np.eye(4), reuse=True)
    assert id(again) == identity  # refilled, not reallocated
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), first + 100)
    held = again  # still referenced: the next call must not write into it
    other = image_from_array(first - 5, np.eye(4), reuse=True)
    assert other is not held
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(held), first + 100)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(other), first - 5)
    assert image_from_array(first, np.eye(4)) is not other  # reuse=False always copies into a new image
    clear_staging()


def test_fast_marching_box_equals_whole_volume(phantom):
    """The box the front can reach gives the whole-volume ITK result for the same speed sigmoid."""
    import SimpleITK as sitk

    from MedSegLib.segmentation import run_method
    from MedSegLib.segmentation.core import SeedPoint, SegmentationContext
    from MedSegLib.segmentation.region import fast_marching_box, seed_neighbourhood_values

    hu, labels, ijk_to_ras = phantom
    seed = deepest_voxel_ras(labels == 3, ijk_to_ras)
    stopping, sigma = 12.0, 1.5
    mask = run_method(hu, ijk_to_ras, "fast-marching", seeds=[seed], parameters={"stopping_time": stopping})[0].mask
    ctx = SegmentationContext(hu, ijk_to_ras, seeds=[SeedPoint(seed)], method_name="test")
    box = fast_marching_box(ctx, stopping * 1.05, sigma)
    box_size = [sl.stop - sl.start for sl in box]
    assert np.prod(box_size) < 0.5 * hu.size, f"the box {box_size} should be well inside {hu.shape}"
    outside = np.ones(hu.shape, bool)
    outside[box] = False
    assert not np.any(mask & outside)
    # Reference: ITK on the whole volume with the sigmoid MedSeg derives on the box.
    sub = SegmentationContext(np.ascontiguousarray(hu[box]), ijk_to_ras.copy(), seeds=ctx.seeds, method_name="test")
    offset = np.array([box[2].start, box[1].start, box[0].start])
    sub.ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ offset + ijk_to_ras[:3, 3]
    box_gradient = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(sub.float_image, sigma=sigma))
    k1 = float(np.median(seed_neighbourhood_values(sub, 2.0 * sigma, box_gradient)))
    k2 = float(np.percentile(box_gradient[::2, ::2, ::2], 95))
    gradient = sitk.GradientMagnitudeRecursiveGaussian(ctx.float_image, sigma=sigma)
    speed = sitk.Sigmoid(gradient, alpha=-(k2 - k1) / 6.0, beta=(k1 + k2) / 2.0, outputMaximum=1.0, outputMinimum=0.0)
    marching = sitk.FastMarchingImageFilter()
    marching.AddTrialPoint((*(int(v) for v in ctx.seed_indices()[0]), 0))
    marching.SetStoppingValue(stopping * 1.05)
    expected = sitk.GetArrayFromImage(marching.Execute(speed)) <= stopping
    differ = int(np.count_nonzero(mask != expected))
    print(f"fast marching box {box_size} of {hu.shape}: {np.count_nonzero(expected)} voxels, {differ} differ")
    assert np.count_nonzero(expected) > 100
    assert differ <= 1e-3 * np.count_nonzero(expected)
