"""Self-tests of DICOM export (SEG, Parametric Map, de-identification) on the CT phantom; no network needed.

They run in both hosts (pytest on slicer-core, and the Slicer module's Test class), so a broken highdicom or
terminology set-up shows up inside 3D Slicer too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

SHAPE = (6, 48, 48)


def _phantom(work_dir: Path, seed: int = 21):
    from MedSegLib.export.reference import load_reference
    from MedSegLib.sample_data import make_ct_phantom, write_ct_phantom

    folder = write_ct_phantom(work_dir / f"ct-{seed}", shape=SHAPE, seed=seed)
    return load_reference(str(folder)), make_ct_phantom(SHAPE, seed=seed).labels


def check_seg_round_trip(scene: Any, work_dir: Path) -> None:
    """Segmentation node -> DICOM SEG -> segmentation node keeps names, colours, codes and voxels."""
    import slicer

    from MedSegLib.export import seg
    from MedSegLib.export.validate import validate
    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segment
    from MedSegLib.volume_nodes import add_volume_node

    reference, labels = _phantom(work_dir)
    volume = add_volume_node(reference.loaded.array, reference.ijk_to_ras, "ct", scene)
    node = ensure_segmentation_node(volume)
    for value, name in ((7, "heart"), (8, "liver")):
        write_segment(node, volume, name, labels == value)
    out = seg.export_segmentation(node, reference, work_dir / "seg.dcm")
    errors, _ = validate(out)
    assert not errors, errors
    imported = seg.import_seg(out, scene)
    back = imported.GetSegmentation()
    original = node.GetSegmentation()
    for index, value in enumerate((7, 8)):
        a, b = original.GetNthSegment(index), back.GetNthSegment(index)
        assert (a.GetName(), tuple(a.GetColor())) == (b.GetName(), tuple(b.GetColor())), (a.GetName(), b.GetName())
        assert seg._tag(a, "TerminologyEntry").split("~")[1:3] == seg._tag(b, "TerminologyEntry").split("~")[1:3]
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(imported, back.GetNthSegmentID(index), volume)
        assert np.array_equal(mask.astype(bool), labels == value), f"segment {a.GetName()} voxels changed"


def check_parametric_map_round_trip(scene: Any, work_dir: Path) -> None:
    """float32 T1 map -> Parametric Map (UCUM ms) -> volume gives the same numbers on the same grid."""
    from MedSegLib.export import pmap
    from MedSegLib.export.validate import validate

    reference, _ = _phantom(work_dir, seed=22)
    values = np.random.default_rng(4).uniform(50, 2500, SHAPE).astype(np.float32)
    out = pmap.write_parametric_map(values, reference.ijk_to_ras, reference, work_dir / "t1.dcm", quantity="T1")
    errors, _ = validate(out)
    assert not errors, errors
    data = pmap.read_parametric_map(out)
    assert data.unit == "ms" and data.quantity == "T1"
    assert np.array_equal(data.values, values) and np.allclose(data.ijk_to_ras, reference.ijk_to_ras, atol=1e-6)


def check_deidentify_removes_identity(scene: Any, work_dir: Path) -> None:
    """PS3.15 basic profile: identifying values gone, private tags gone, UIDs remapped consistently."""
    import pydicom

    from MedSegLib.export.deidentify import Deidentifier

    reference, _ = _phantom(work_dir, seed=23)
    ds = pydicom.dcmread(reference.files[0])
    ds.PatientName, ds.PatientID, ds.InstitutionName = "Doe^John", "ID-42", "General Hospital"
    ds.add_new(0x00091010, "LO", "private John")
    deidentifier = Deidentifier(date_shift_days=-7)
    study = str(ds.StudyInstanceUID)
    deidentifier.apply(ds)
    assert str(ds.PatientName) == "ANONYMIZED" and ds.PatientID != "ID-42" and "InstitutionName" not in ds
    assert not any(element.tag.is_private for element in ds.iterall())
    assert ds.StudyInstanceUID == deidentifier.new_uid(study) != study


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: function for name, function in sorted(globals().items()) if name.startswith("check_")
}
