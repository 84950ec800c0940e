"""`medseg demo`: the main job end to end (report.html, DICOM SEG, scene.mrb), and the .mrb re-opening with
identical voxels and geometry."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, runtime):
    from MedSegLib.cli.demo_command import run_demo
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    output = tmp_path_factory.mktemp("demo")
    summary = run_demo(output, seed=0, quiet=True)
    ct_node = runtime.scene.GetFirstNodeByName(summary["ct_volume"])
    array, ijk_to_ras = array_and_ijk_to_ras(ct_node, copy=True)
    return summary, array, ijk_to_ras


def test_demo_writes_expected_outputs(demo_run):
    summary, _, _ = demo_run
    with zipfile.ZipFile(summary["scene"]) as bundle:
        names = bundle.namelist()
    assert any(name.endswith(".mrml") for name in names), names
    assert any("/Data/" in name and name.endswith(".nrrd") for name in names), names
    png = open(summary["png"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100


def test_demo_ct_matches_the_phantom_hounsfield_units(demo_run):
    """The CT went through DICOM and back: voxels equal the generator's HU and geometry is LPS->RAS."""
    from MedSegLib.sample_data import make_ct_phantom

    summary, array, ijk_to_ras = demo_run
    phantom = make_ct_phantom(summary["ct_shape"], summary["ct_spacing_mm"], seed=0)
    assert array.shape == phantom.hu.shape
    assert np.array_equal(array, phantom.hu)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    assert np.allclose(spacing, phantom.spacing[::-1], atol=1e-6)  # (i, j, k) = (col, row, slice)
    origin_ras = np.asarray(phantom.origin_lps, float) * [-1, -1, 1]
    assert np.allclose(ijk_to_ras[:3, 3], origin_ras, atol=1e-4)


def test_demo_scene_bundle_reopens_identically(demo_run, runtime):
    from MedSegLib.node_io import load_scene_bundle
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    summary, array, ijk_to_ras = demo_run
    scene = load_scene_bundle(summary["scene"], runtime.scene)
    node = scene.GetFirstNodeByName(summary["ct_volume"])
    assert node is not None
    reopened, reopened_matrix = array_and_ijk_to_ras(node)
    assert reopened.dtype == array.dtype
    assert np.array_equal(reopened, array)
    assert np.abs(reopened_matrix - ijk_to_ras).max() < 1e-9
    display = node.GetScalarVolumeDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (summary["ct_window"]["width"], summary["ct_window"]["level"])
    sequences = [
        scene.GetNthNodeByClass(i, "vtkMRMLSequenceNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"))
    ]
    by_index = {sequence.GetIndexName(): sequence for sequence in sequences}
    assert by_index["InversionTime"].GetNumberOfDataNodes() == 7
    assert by_index["EchoTime"].GetNumberOfDataNodes() == 32


def test_demo_report_is_self_contained_and_lists_every_step(demo_run):
    import base64
    import re

    summary, _, _ = demo_run
    document = open(summary["report"], encoding="utf-8").read()
    sources = re.findall(r'src="([^"]+)"', document)
    assert len(sources) >= 8 and all(src.startswith("data:image/") for src in sources)
    assert "<script" not in document and "http://" not in document and "https://" not in document
    for uri in sources:
        assert base64.b64decode(uri.split(",", 1)[1], validate=True)
    # every step of the demo pipeline ran, or is listed as not available (e.g. no deep-learning model)
    assert set(summary["steps"]) == {"load", "window", "segment", "deep_segment", "statistics", "qmri", "export_seg"}
    for step, status in summary["steps"].items():
        assert status in ("ok", "not available"), (step, status)
        assert f"<td>{step}</td>" in document
    for step in ("load", "window", "segment", "statistics", "qmri", "export_seg"):
        assert summary["steps"][step] == "ok", step
    assert ("not available" in document) == bool(summary["not_available"])
    for caption in ("Lung window", "Mediastinum window", "Bone window", "T1 map", "T2 map", "fit curves"):
        assert caption in document, caption


def test_demo_exports_dicom_seg_referencing_the_ct(demo_run):
    import pydicom

    summary, _, _ = demo_run
    assert summary["dicom_objects"]
    seg = pydicom.dcmread(summary["dicom_objects"][0])
    assert seg.Modality == "SEG"
    names = {item.SegmentLabel for item in seg.SegmentSequence}
    assert {"Body", "Bone"} <= names or len(names) >= 3, names
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    from MedSegLib.dicom.loader import load_folder

    ct = [v for v in load_folder(summary["output"] + "/input_dicom/ct")][0]
    assert referenced == ct.series_uid
