"""Self-tests of the runtime, node I/O and geometry conversions (run in both hosts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np


def random_oblique_ijk_to_ras(seed: int = 0, spacing=(0.7, 0.8, 2.5), origin=(10.5, -20.25, 33.0)) -> np.ndarray:
    """A non-axis-aligned, right-handed IJKToRAS with anisotropic spacing."""
    from MedSegLib.volume_nodes import ijk_to_ras_from_geometry

    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1
    return ijk_to_ras_from_geometry(spacing, rotation, origin)


def _test_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3071, size=(6, 7, 9)).astype(np.int16)


def check_runtime_boot(scene: Any, work_dir: Path) -> None:
    """slicer.mrmlScene and module logics are what slicer.util expects."""
    import slicer

    from MedSegLib.runtime import boot

    runtime = boot()
    assert boot() is runtime, "boot() must be idempotent"
    assert slicer.mrmlScene is runtime.scene
    assert slicer.modules.volumes.logic() is runtime.logic("Volumes")
    preset_ids = runtime.logic("Volumes").GetVolumeDisplayPresetIDs()
    assert "CT_BONE" in preset_ids and "MEDSEG_MEDIASTINUM" in preset_ids, preset_ids
    assert scene.GetFirstNodeByClass("vtkMRMLColorTableNode") is not None, "default colour nodes missing"


def check_array_helpers(scene: Any, work_dir: Path) -> None:
    """slicer.util array helpers (volumes and segments) work unchanged."""
    import slicer

    from MedSegLib.volume_nodes import add_volume_node

    voxels = _test_volume(1)
    volume = add_volume_node(voxels, random_oblique_ijk_to_ras(1), "helpers", scene)
    assert np.array_equal(slicer.util.arrayFromVolume(volume), voxels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("bone", "bone")
    mask = (voxels > 300).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    back = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    assert np.array_equal(back, mask), "segment array round trip changed voxels"


def check_volume_file_round_trips(scene: Any, work_dir: Path) -> None:
    """Every volume format keeps voxels exactly and geometry within float32 header precision."""
    from MedSegLib.node_io import load_volume, save_node
    from MedSegLib.volume_nodes import add_volume_node, array_and_ijk_to_ras

    voxels = _test_volume(2)
    ijk_to_ras = random_oblique_ijk_to_ras(2)
    volume = add_volume_node(voxels, ijk_to_ras, "oblique", scene)
    for suffix, tolerance in ((".nrrd", 1e-9), (".nii.gz", 1e-5), (".nii", 1e-5), (".mha", 1e-9)):
        path = save_node(volume, work_dir / f"oblique{suffix}")
        loaded, loaded_matrix = array_and_ijk_to_ras(load_volume(path, scene))
        assert loaded.dtype == voxels.dtype, f"{suffix}: dtype {loaded.dtype} != {voxels.dtype}"
        assert np.array_equal(loaded, voxels), f"{suffix}: voxels changed"
        error = np.abs(loaded_matrix - ijk_to_ras).max()
        assert error < tolerance, f"{suffix}: IJKToRAS differs by {error}"


def check_sitk_conversions(scene: Any, work_dir: Path) -> None:
    """MRML (RAS) <-> SimpleITK (LPS) keeps every voxel at the same world position."""
    import SimpleITK as sitk

    from MedSegLib.volume_nodes import (
        add_volume_node,
        array_and_ijk_to_ras,
        sitk_image_from_volume_node,
        volume_node_from_sitk,
    )

    voxels = _test_volume(3)
    ijk_to_ras = random_oblique_ijk_to_ras(3)
    volume = add_volume_node(voxels, ijk_to_ras, "oblique", scene)
    image = sitk_image_from_volume_node(volume)
    assert np.array_equal(sitk.GetArrayFromImage(image), voxels)
    for index in ((0, 0, 0), (8, 6, 5), (3, 1, 4)):
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = ijk_to_ras[:3, :3] @ np.array(index, float) + ijk_to_ras[:3, 3]
        assert np.allclose(lps, ras * [-1, -1, 1], atol=1e-9), f"voxel {index}: LPS {lps} vs RAS {ras}"
    back, back_matrix = array_and_ijk_to_ras(volume_node_from_sitk(image, "back", scene))
    assert np.array_equal(back, voxels)
    assert np.abs(back_matrix - ijk_to_ras).max() < 1e-9


def check_segmentation_round_trips(scene: Any, work_dir: Path) -> None:
    """.seg.nrrd keeps names/colours/voxels; label-map export (+ .ctbl) re-imports with names."""
    import slicer

    from MedSegLib.node_io import (
        export_segmentation_to_labelmap,
        import_labelmap_as_segmentation,
        load_segmentation,
        save_node,
    )
    from MedSegLib.volume_nodes import add_volume_node

    voxels = _test_volume(4)
    volume = add_volume_node(voxels, random_oblique_ijk_to_ras(4), "ref", scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    masks = {"lung": voxels < -500, "bone": voxels > 1500}
    colors = {"lung": (0.8, 0.6, 0.5), "bone": (0.9, 0.85, 0.55)}
    for name, mask in masks.items():
        segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name, colors[name])
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentation, segment_id, volume)
    loaded = load_segmentation(save_node(segmentation, work_dir / "seg.seg.nrrd"), scene)
    for name, mask in masks.items():
        segment = loaded.GetSegmentation().GetSegment(name)
        assert segment is not None, f"segment {name} lost"
        assert segment.GetName() == name
        assert np.allclose(segment.GetColor(), colors[name], atol=1e-6), f"{name} colour changed"
        back = slicer.util.arrayFromSegmentBinaryLabelmap(loaded, name, volume)
        assert np.array_equal(back.astype(bool), mask), f"{name} voxels changed"
    outputs = export_segmentation_to_labelmap(segmentation, work_dir / "labels.nii.gz", volume)
    assert outputs["label_table"].read_text().count("lung") == 1
    imported = import_labelmap_as_segmentation(outputs["labelmap"], scene)
    names = [imported.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["lung", "bone"], names
    back = slicer.util.arrayFromSegmentBinaryLabelmap(imported, imported.GetSegmentation().GetNthSegmentID(1), volume)
    assert np.array_equal(back.astype(bool), masks["bone"])


def check_markups_and_tables(scene: Any, work_dir: Path) -> None:
    """Markups (.mrk.json) and tables (.csv) round trip."""
    import slicer

    from MedSegLib.node_io import load_markups, load_table, save_node

    points = np.array([[1.5, -2.25, 3.0], [10.0, 20.0, -30.125]])
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seeds")
    slicer.util.updateMarkupsControlPointsFromArray(markups, points)
    back = slicer.util.arrayFromMarkupsControlPoints(
        load_markups(save_node(markups, work_dir / "seeds.mrk.json"), scene)
    )
    assert np.allclose(back, points, atol=1e-9), back
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "ruler")
    slicer.util.updateMarkupsControlPointsFromArray(line, points)
    loaded_line = load_markups(save_node(line, work_dir / "ruler.mrk.json"), scene)
    assert loaded_line.IsA("vtkMRMLMarkupsLineNode"), loaded_line.GetClassName()
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(loaded_line), points, atol=1e-9)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "stats")
    column = table.AddColumn()
    column.SetName("Volume [mm3]")
    table.AddEmptyRow()
    table.SetCellText(0, 0, "123.5")
    loaded = load_table(save_node(table, work_dir / "stats.csv"), scene)
    assert loaded.GetColumnName(0) == "Volume [mm3]"
    assert loaded.GetCellText(0, 0) == "123.5"


def check_scene_bundle(scene: Any, work_dir: Path) -> None:
    """A whole scene saved as .mrb re-opens with identical voxels and geometry."""
    from MedSegLib.node_io import load_scene_bundle, save_scene_bundle
    from MedSegLib.volume_nodes import add_volume_node, array_and_ijk_to_ras

    voxels = _test_volume(5)
    ijk_to_ras = random_oblique_ijk_to_ras(5)
    add_volume_node(voxels, ijk_to_ras, "bundled", scene)
    path = save_scene_bundle(work_dir / "scene.mrb", scene)
    assert path.stat().st_size > 0
    load_scene_bundle(path, scene)
    volume = scene.GetFirstNodeByName("bundled")
    assert volume is not None, "volume missing after re-opening the bundle"
    loaded, matrix = array_and_ijk_to_ras(volume)
    assert np.array_equal(loaded, voxels)
    assert np.abs(matrix - ijk_to_ras).max() < 1e-9


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: function for name, function in sorted(globals().items()) if name.startswith("check_")
}
