"""Self-tests of quantitative MRI fitting through MRML (run headless by pytest and inside 3D Slicer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

SHAPE = (2, 48, 48)
SPACING = (6.0, 5.0, 5.0)


def _sequence_from_folder(folder: Path, scene: Any) -> Any:
    from MedSegLib.dicom.mrml import load_dicom_folder_into_scene

    nodes = load_dicom_folder_into_scene(folder, scene)
    sequences = [node for node in nodes if node.IsA("vtkMRMLSequenceNode")]
    assert len(sequences) == 1, f"expected one multi-volume series in {folder}, got {[n.GetName() for n in nodes]}"
    return sequences[0]


def _check_spheres(phantom: Any, values: np.ndarray, attribute: str, count: int, tolerance: float) -> None:
    for sphere in phantom.spheres[:count]:
        inside = phantom.labels == sphere.number
        median = float(np.median(values[inside]))
        expected = getattr(sphere, attribute)
        assert abs(median / expected - 1.0) < tolerance, f"sphere {sphere.number}: {median:.1f} vs {expected:.1f} ms"


def check_ir_t1_from_dicom_sequence(scene: Any, work_dir: Path) -> None:
    """IR series -> sequence node -> T1/M0/R2/RMSE/status volumes; sphere T1 within 3 % of the truth."""
    import slicer

    from MedSegLib.qmri.pipeline import fit_sequence_node
    from MedSegLib.sample_data import make_mr_phantom, write_mr_ir_series

    phantom = make_mr_phantom(SHAPE, SPACING, field_strength_t=1.5, array="NiCl2")
    folder = write_mr_ir_series(
        work_dir / "ir",
        phantom=phantom,
        ti_ms=[50, 150, 400, 900, 2000, 4000],
        tr_ms=[3000, 3000, 3000, 4000, 5000, 6000],
        noise_sigma=0.005,
    )
    sequence = _sequence_from_folder(folder, scene)
    result, nodes = fit_sequence_node(sequence, "ir")
    assert result.info["TR_ms"] is not None, "the per-image TR from DICOM must be used"
    assert {"T1", "M0", "R2", "RMSE", "status"} <= set(nodes)
    t1 = slicer.util.arrayFromVolume(nodes["T1"])
    _check_spheres(phantom, t1, "t1_ms", 9, 0.03)
    status = slicer.util.arrayFromVolume(nodes["status"])
    assert np.all(status[phantom.labels == 0] & 1), "background must be masked by the Otsu mask"


def check_t2_from_dicom_sequence_with_segment_mask(scene: Any, work_dir: Path) -> None:
    """Multi-echo SE -> T2 restricted to a segment; voxels outside the segment are flagged masked."""
    import slicer

    from MedSegLib.qmri.pipeline import fit_sequence_node
    from MedSegLib.sample_data import make_mr_phantom, write_mr_se_series

    phantom = make_mr_phantom(SHAPE, SPACING, field_strength_t=1.5, array="MnCl2")
    folder = write_mr_se_series(work_dir / "se", phantom=phantom, noise_sigma=0.005)
    sequence = _sequence_from_folder(folder, scene)
    reference = sequence.GetNthDataNode(0)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "spheres")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("spheres", "spheres")
    inside = ((phantom.labels >= 1) & (phantom.labels <= 14)).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(inside, segmentation, segment_id, reference)
    result, nodes = fit_sequence_node(sequence, "t2", mask=(segmentation, segment_id))
    t2 = slicer.util.arrayFromVolume(nodes["T2"])
    _check_spheres(phantom, t2, "t2_ms", 8, 0.03)
    status = slicer.util.arrayFromVolume(nodes["status"])
    assert np.all(status[inside == 0] == 1)
    r2 = slicer.util.arrayFromVolume(nodes["R2"])
    assert np.median(r2[inside > 0]) > 0.99


def check_statistics_table(scene: Any, work_dir: Path) -> None:
    """Per-segment statistics of a map come back as a table with one row per segment."""
    from MedSegLib.qmri import fitting, models
    from MedSegLib.qmri.pipeline import add_result_nodes, segment_statistics_table

    te = np.arange(1, 9) * 10.0
    t2 = np.full((1, 8, 8), 50.0)
    t2[:, :, 4:] = 100.0
    result = fitting.fit_t2(np.moveaxis(models.mono_exp_signal(t2, 100.0, te), -1, 0), te, mask="none")
    nodes = add_result_nodes(result, np.eye(4), scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "halves")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(nodes["T2"])
    import slicer

    for name, columns in (("left", slice(0, 4)), ("right", slice(4, 8))):
        segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name)
        labelmap = np.zeros((1, 8, 8), np.uint8)
        labelmap[:, :, columns] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(labelmap, segmentation, segment_id, nodes["T2"])
    table = segment_statistics_table(result, segmentation, nodes["T2"], scene)
    assert table.GetNumberOfRows() == 2
    assert abs(float(table.GetCellText(0, 2)) - 50.0) < 0.01 and abs(float(table.GetCellText(1, 2)) - 100.0) < 0.01


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: function for name, function in sorted(globals().items()) if name.startswith("check_") and callable(function)
}
