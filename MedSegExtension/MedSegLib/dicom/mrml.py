"""Put loaded DICOM volumes into the MRML scene the way Slicer's DICOM plugins do.

A 3D volume becomes a ``vtkMRMLScalarVolumeNode`` with the DICOM window/level pairs as display
presets (the first applied, auto W/L off so it sticks), ``DICOM.instanceUIDs`` /
``DICOM.instanceNumbers`` attributes, and a place in the subject hierarchy under patient and study.
A multi-volume series (several TI, TE, b-values or time points) becomes a ``vtkMRMLSequenceNode``
of volumes with the varying acquisition parameters recorded per volume, plus a sequence browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import numpy as np

from MedSegLib.runtime import boot, resolve_scene
from MedSegLib.volume_nodes import add_volume_node

if TYPE_CHECKING:
    from MedSegLib.dicom.loader import LoadedVolume

PER_VOLUME_ATTRIBUTE = "MedSeg.perVolumeParameters"


def apply_window_presets(volume_node: Any, presets: Sequence[Sequence[Any]]) -> None:
    """Register DICOM window (center, width[, explanation]) pairs as display presets; apply the first."""
    display = volume_node.GetScalarVolumeDisplayNode()
    if display is None or not presets:
        return
    explanations = [str(preset[2]) if len(preset) > 2 and preset[2] else "" for preset in presets]
    if any(explanations):
        volume_node.SetAttribute("DICOM.WindowCenterWidthExplanation", "\\".join(explanations))
    display.ResetWindowLevelPresets()
    for preset in presets:
        center, width = float(preset[0]), float(preset[1])
        if width > 0:
            display.AddWindowLevelPreset(width, center)
    if display.GetNumberOfWindowLevelPresets():
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelFromPreset(0)


def _sh_node(scene: Any) -> Any:
    import slicer

    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def place_in_subject_hierarchy(node: Any, info: Dict[str, str], scene: Any) -> None:
    """Patient -> study -> series item with the DICOM attributes Slicer's plugins set."""
    import slicer

    constants = slicer.vtkMRMLSubjectHierarchyConstants
    sh = _sh_node(scene)
    uid_name = constants.GetDICOMUIDName()
    patient_id = info.get("PatientID", "") or "Anonymous"
    patient_item = sh.GetItemByUID(uid_name, patient_id)
    if not patient_item:
        patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), info.get("PatientName", "") or patient_id)
        sh.SetItemUID(patient_item, uid_name, patient_id)
        sh.SetItemAttribute(patient_item, constants.GetDICOMPatientIDAttributeName(), patient_id)
        sh.SetItemAttribute(patient_item, constants.GetDICOMPatientNameAttributeName(), info.get("PatientName", ""))
        sh.SetItemAttribute(patient_item, constants.GetDICOMPatientSexAttributeName(), info.get("PatientSex", ""))
        sh.SetItemAttribute(
            patient_item, constants.GetDICOMPatientBirthDateAttributeName(), info.get("PatientBirthDate", "")
        )
    study_uid = info.get("StudyInstanceUID", "")
    study_item = sh.GetItemByUID(uid_name, study_uid) if study_uid else 0
    if not study_item:
        study_name = info.get("StudyDescription", "") or f"Study {info.get('StudyDate', '')}".strip()
        study_item = sh.CreateStudyItem(patient_item, study_name)
        if study_uid:
            sh.SetItemUID(study_item, uid_name, study_uid)
        sh.SetItemAttribute(study_item, constants.GetDICOMStudyInstanceUIDAttributeName(), study_uid)
        sh.SetItemAttribute(study_item, constants.GetDICOMStudyDateAttributeName(), info.get("StudyDate", ""))
        sh.SetItemAttribute(
            study_item, constants.GetDICOMStudyDescriptionAttributeName(), info.get("StudyDescription", "")
        )
    series_item = sh.GetItemByDataNode(node)
    if not series_item:
        series_item = sh.CreateItem(study_item, node)
    else:
        sh.SetItemParent(series_item, study_item)
    if info.get("SeriesInstanceUID"):
        sh.SetItemUID(series_item, uid_name, info["SeriesInstanceUID"])
    sh.SetItemAttribute(series_item, constants.GetDICOMSeriesModalityAttributeName(), info.get("Modality", ""))
    sh.SetItemAttribute(series_item, constants.GetDICOMSeriesNumberAttributeName(), str(info.get("SeriesNumber", "")))


def _dicom_info(loaded: LoadedVolume) -> Dict[str, str]:
    info = dict(loaded.dicom_info)
    if loaded.series_uid:
        info.setdefault("SeriesInstanceUID", loaded.series_uid)
    return {key: "" if value is None else str(value) for key, value in info.items()}


def _tag_volume_node(node: Any, loaded: LoadedVolume) -> None:
    if loaded.instance_uids:
        node.SetAttribute("DICOM.instanceUIDs", " ".join(loaded.instance_uids))
    if loaded.instance_numbers:
        numbers = (str(n) if n is not None else "?" for n in loaded.instance_numbers)
        node.SetAttribute("DICOM.instanceNumbers", " ".join(numbers))
    if loaded.warnings:
        node.SetAttribute("MedSeg.loadWarnings", json.dumps(list(loaded.warnings)))


def add_loaded_volume(loaded: LoadedVolume, scene: Any = None) -> Any:
    """Add a loader result to the scene: a scalar volume (3D) or a sequence of volumes (4D)."""
    boot()
    scene = resolve_scene(scene)
    array = np.asarray(loaded.array)
    if array.ndim == 4:
        return _add_sequence(loaded, scene)
    node = add_volume_node(array, loaded.ijk_to_ras, loaded.name, scene)
    _tag_volume_node(node, loaded)
    apply_window_presets(node, loaded.window_presets)
    place_in_subject_hierarchy(node, _dicom_info(loaded), scene)
    return node


def _add_sequence(loaded: LoadedVolume, scene: Any) -> Any:
    """4D array (t, k, j, i) -> sequence node of scalar volumes + browser; parameters per volume."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", loaded.name)
    per_volume: List[Dict[str, Any]] = list(loaded.per_volume)
    index_name, index_unit = _sequence_index(per_volume)
    sequence.SetIndexName(index_name)
    sequence.SetIndexUnit(index_unit)
    sequence.SetIndexType(sequence.NumericIndex)
    presets = loaded.window_presets
    for index, volume_array in enumerate(np.asarray(loaded.array)):
        volume = add_volume_node(volume_array, loaded.ijk_to_ras, f"{loaded.name} [{index}]", scene)
        apply_window_presets(volume, presets)
        parameters = per_volume[index] if index < len(per_volume) else {}
        for key, value in parameters.items():
            volume.SetAttribute(f"DICOM.{key}", str(value))
        value = parameters.get(index_name, index) if index_name != "volume" else index
        sequence.SetDataNodeAtValue(volume, f"{float(value):g}")
        scene.RemoveNode(volume.GetDisplayNode())
        scene.RemoveNode(volume)
    sequence.SetAttribute(PER_VOLUME_ATTRIBUTE, json.dumps(per_volume))
    _tag_volume_node(sequence, loaded)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{loaded.name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    place_in_subject_hierarchy(sequence, _dicom_info(loaded), scene)
    return sequence


_UNITS = {"InversionTime": "ms", "EchoTime": "ms", "RepetitionTime": "ms", "FlipAngle": "deg", "TriggerTime": "ms"}


def _sequence_index(per_volume: List[Dict[str, Any]]):
    """The acquisition parameter that varies between volumes names the sequence index."""
    for key in ("InversionTime", "EchoTime", "FlipAngle", "DiffusionBValue", "TriggerTime", "RepetitionTime"):
        values = [item.get(key) for item in per_volume]
        if values and all(v is not None for v in values) and len(set(values)) == len(values):
            return key, _UNITS.get(key, "")
    return "volume", ""


def load_dicom_folder_into_scene(
    folder: Path, scene: Any = None, keep_acquired_grid: bool = False, use_philips_scale_slope: bool = False
) -> List[Any]:
    """Load every loadable volume of a DICOM folder into the scene (no database needed).

    ``use_philips_scale_slope`` gives Philips' floating-point values (needed for relaxometry fits,
    whose ratios between images are wrong with display values); default is display values like Slicer.
    """
    from MedSegLib.dicom.loader import load_folder

    loaded_volumes = load_folder(
        Path(folder), keep_acquired_grid=keep_acquired_grid, use_philips_scale_slope=use_philips_scale_slope
    )
    return [add_loaded_volume(loaded, scene) for loaded in loaded_volumes]
