"""Self-tests of DICOM import and loading into MRML (run headless by pytest and inside 3D Slicer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

SMALL_CT_SHAPE = (12, 96, 96)
SMALL_CT_SPACING = (2.5, 1.5, 1.5)


def _small_ct(work_dir: Path):
    from MedSegLib.sample_data import make_ct_phantom, write_ct_phantom

    folder = write_ct_phantom(work_dir / "ct", shape=SMALL_CT_SHAPE, spacing_mm=SMALL_CT_SPACING, seed=3)
    return folder, make_ct_phantom(shape=SMALL_CT_SHAPE, spacing_mm=SMALL_CT_SPACING, seed=3)


def check_ct_folder_loads_exact_hounsfield_units(scene: Any, work_dir: Path) -> None:
    """Voxels equal the generator's HU, geometry is its LPS grid in RAS, DICOM W/L applied and sticky."""
    from MedSegLib.dicom.mrml import load_dicom_folder_into_scene
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    folder, phantom = _small_ct(work_dir)
    nodes = load_dicom_folder_into_scene(folder, scene)
    assert len(nodes) == 1, [node.GetName() for node in nodes]
    array, ijk_to_ras = array_and_ijk_to_ras(nodes[0])
    assert array.dtype == np.int16, array.dtype
    assert np.array_equal(array, phantom.hu), "HU differ from the phantom"
    expected = np.eye(4)
    expected[:3, :3] = np.diag(np.asarray(SMALL_CT_SPACING[::-1]) * [-1, -1, 1])
    expected[:3, 3] = np.asarray(phantom.origin_lps) * [-1, -1, 1]
    assert np.abs(ijk_to_ras - expected).max() < 1e-6, ijk_to_ras
    display = nodes[0].GetScalarVolumeDisplayNode()
    assert not display.GetAutoWindowLevel(), "auto W/L must be off so the DICOM window sticks"
    assert display.GetNumberOfWindowLevelPresets() >= 2
    assert (display.GetWindow(), display.GetLevel()) == (display.GetWindowPreset(0), display.GetLevelPreset(0))
    uids = nodes[0].GetAttribute("DICOM.instanceUIDs").split()
    assert len(uids) == SMALL_CT_SHAPE[0] and len(set(uids)) == len(uids)


def check_subject_hierarchy_patient_study_series(scene: Any, work_dir: Path) -> None:
    """The volume sits under patient and study items like Slicer's DICOM plugins place it."""
    import slicer

    from MedSegLib.dicom.mrml import load_dicom_folder_into_scene

    folder, _ = _small_ct(work_dir)
    node = load_dicom_folder_into_scene(folder, scene)[0]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    series_item = sh.GetItemByDataNode(node)
    study_item = sh.GetItemParent(series_item)
    patient_item = sh.GetItemParent(study_item)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    assert sh.GetItemLevel(study_item) == constants.GetDICOMLevelStudy()
    assert sh.GetItemLevel(patient_item) == constants.GetDICOMLevelPatient()
    assert sh.GetItemParent(patient_item) == sh.GetSceneItemID()


def check_database_import_then_load_by_series_uid(scene: Any, work_dir: Path) -> None:
    """Import into a folder database, browse patients -> studies -> series, load the series by UID."""
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.indexer import import_paths
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    folder, phantom = _small_ct(work_dir)
    database_dir = work_dir / "db"
    database = DicomDatabase(database_dir)
    summary = import_paths(database, [str(folder)])
    assert database.imagesCount() == SMALL_CT_SHAPE[0], summary
    patients = database.patients()
    assert len(patients) == 1
    studies = database.studiesForPatient(patients[0])
    series = database.seriesForStudy(studies[0])
    assert len(series) == 1
    assert len(database.filesForSeries(series[0])) == SMALL_CT_SHAPE[0]
    database.closeDatabase()
    node = load_input_volume(series[0], scene, db=str(database_dir))
    array, _ = array_and_ijk_to_ras(node)
    assert np.array_equal(array, phantom.hu)


def check_multi_ti_series_becomes_sequence(scene: Any, work_dir: Path) -> None:
    """An inversion-recovery series with several TIs loads as one sequence indexed by TI, TR kept per volume."""
    from MedSegLib.dicom.mrml import PER_VOLUME_ATTRIBUTE, load_dicom_folder_into_scene
    from MedSegLib.sample_data import write_mr_ir_series

    ti_ms = (100.0, 400.0, 1200.0)
    folder = write_mr_ir_series(work_dir / "ir", shape=(3, 32, 32), spacing_mm=(5.0, 4.0, 4.0), ti_ms=ti_ms, seed=1)
    nodes = load_dicom_folder_into_scene(folder, scene)
    assert len(nodes) == 1 and nodes[0].IsA("vtkMRMLSequenceNode"), [n.GetClassName() for n in nodes]
    sequence = nodes[0]
    assert sequence.GetIndexName() == "InversionTime" and sequence.GetIndexUnit() == "ms"
    assert [float(sequence.GetNthIndexValue(i)) for i in range(sequence.GetNumberOfDataNodes())] == list(ti_ms)
    import json

    per_volume = json.loads(sequence.GetAttribute(PER_VOLUME_ATTRIBUTE))
    assert all(float(item["RepetitionTime"]) > 0 for item in per_volume), per_volume


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: function for name, function in sorted(globals().items()) if name.startswith("check_")
}
