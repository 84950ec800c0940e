"""DICOM export: SEG and Parametric Map round trips, validation, de-identification, statistics and the CLI.

Round trips go through the real slicer-core segmentation node and back from the written file: names, colours,
SNOMED CT codes, geometry and every voxel must survive. Every written object must pass highdicom's reader and
dciodvfy (dicom3tools) with no errors.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from MedSegLib.errors import UserInputError
from MedSegLib.export import pmap, seg
from MedSegLib.export.deidentify import ACTIONS, Deidentifier
from MedSegLib.export.reference import load_reference
from MedSegLib.export.validate import dciodvfy_available, validate

SHAPE = (8, 64, 64)
LABELS = {2: "left lung", 7: "heart", 8: "liver"}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from MedSegLib.sample_data import make_ct_phantom, write_ct_phantom

    folder = write_ct_phantom(tmp_path_factory.mktemp("phantom") / "ct", shape=SHAPE, seed=5)
    return folder, make_ct_phantom(SHAPE, seed=5).labels


def _assert_valid(path: Path) -> None:
    errors, _warnings = validate(path)
    assert errors == [], errors


def _segmentation_node(scene, reference, labels):
    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segment
    from MedSegLib.volume_nodes import add_volume_node

    volume = add_volume_node(reference.loaded.array, reference.ijk_to_ras, "ct", scene)
    node = ensure_segmentation_node(volume)
    for value, name in LABELS.items():
        write_segment(node, volume, name, labels == value)
    return node, volume


def test_dciodvfy_is_installed_where_ci_runs():
    if shutil.which("Orthanc") and not dciodvfy_available():  # the Makefile installs both together
        pytest.fail("dicom3tools (dciodvfy) missing although the Makefile's system packages are installed")


def test_seg_round_trip_keeps_everything(phantom, scene, tmp_path):
    import slicer

    folder, labels = phantom
    reference = load_reference(str(folder))
    node, volume = _segmentation_node(scene, reference, labels)
    out = seg.export_segmentation(node, reference, tmp_path / "seg.dcm")
    _assert_valid(out)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == seg.SEG_SOP_CLASS and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == reference.datasets[0].FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.series_instance_uid
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in reference.datasets}
    types = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in ds.SegmentSequence]
    assert types == [("left lung", "39607008"), ("heart", "80891009"), ("liver", "10200004")]
    modifier = ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "7771000"  # SNOMED CT "Left"

    back = seg.import_seg(out, scene)
    original, imported = node.GetSegmentation(), back.GetSegmentation()
    assert imported.GetNumberOfSegments() == len(LABELS)
    for index in range(len(LABELS)):
        a, b = original.GetNthSegment(index), imported.GetNthSegment(index)
        assert b.GetName() == a.GetName()
        assert b.GetColor() == pytest.approx(a.GetColor(), abs=1e-9)
        terms_a = seg._tag(a, "TerminologyEntry").split("~")[1:4]
        assert seg._tag(b, "TerminologyEntry").split("~")[1:4] == terms_a
        mask_a = slicer.util.arrayFromSegmentBinaryLabelmap(node, original.GetNthSegmentID(index), volume)
        mask_b = slicer.util.arrayFromSegmentBinaryLabelmap(back, imported.GetNthSegmentID(index), volume)
        assert np.array_equal(mask_b, mask_a) and mask_a.sum() > 0
        assert np.array_equal(mask_b.astype(bool), labels == list(LABELS)[index])
    contents = seg.read_seg(out)
    for segment in contents.segments:  # geometry stored in the SEG: on the reference grid, not merely close
        ijk = np.linalg.solve(reference.ijk_to_ras, contents.ijk_to_ras)
        assert np.allclose(ijk[:3, :3], np.eye(3), atol=1e-6) and np.allclose(ijk[:3, 3], np.round(ijk[:3, 3]))
        assert segment.mask.dtype == bool


def test_fractional_seg_round_trip(phantom, tmp_path):
    folder, labels = phantom
    reference = load_reference(str(folder))
    rng = np.random.default_rng(0)
    probability = (rng.integers(0, 256, SHAPE) / 255.0).astype(np.float32) * (labels > 0)
    out = seg.write_seg(
        [seg.SegmentData("body probability", probability, (0.2, 0.6, 1.0))],
        reference,
        tmp_path / "fractional.dcm",
        fractional=True,
    )
    _assert_valid(out)
    contents = seg.read_seg(out)
    assert contents.fractional
    assert np.allclose(contents.segments[0].mask, probability, atol=1e-6)
    assert contents.segments[0].color == pytest.approx((51 / 255, 153 / 255, 1.0), abs=1e-9)


@pytest.mark.parametrize("quantity,unit,code", [("T1", None, "ms"), ("R2star", "1/s", "/s")])
def test_parametric_map_round_trip(phantom, scene, tmp_path, quantity, unit, code):
    from MedSegLib.volume_nodes import add_volume_node, array_and_ijk_to_ras

    folder, _ = phantom
    reference = load_reference(str(folder))
    values = np.random.default_rng(1).uniform(0.5, 3000.0, SHAPE).astype(np.float32)
    values[0, 0, :4] = [0.0, -1.5, 1e-7, 123456.789]
    node = add_volume_node(values, reference.ijk_to_ras, f"{quantity} map", scene)
    if unit:
        node.SetAttribute("MedSeg.unit", unit)
    out = pmap.export_volume_node(node, reference, tmp_path / f"{quantity}.dcm")
    _assert_valid(out)
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == code
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.series_instance_uid
    back = pmap.import_parametric_map(out, scene)
    array, ijk_to_ras = array_and_ijk_to_ras(back, copy=True)
    assert array.dtype == np.float32 and np.array_equal(array, values)
    assert np.allclose(ijk_to_ras, reference.ijk_to_ras, atol=1e-6)
    assert back.GetAttribute("MedSeg.unit") == (unit or "ms")


def test_map_off_the_reference_grid_is_refused(phantom, tmp_path):
    folder, _ = phantom
    reference = load_reference(str(folder))
    shifted = reference.ijk_to_ras.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(UserInputError, match="geometry differs"):
        pmap.write_parametric_map(np.zeros(SHAPE, np.float32), shifted, reference, tmp_path / "x.dcm")
    with pytest.raises(UserInputError, match="shape"):
        pmap.write_parametric_map(np.zeros((2, 3, 4), np.float32), shifted, reference, tmp_path / "x.dcm")


def test_real_series_seg_export(shared_data, tmp_path):
    """The Philips head CT (140 slices): every frame references its own instance, output validates."""
    folder = shared_data / "dcm_qa_ct" / "In" / "Philips"
    reference = load_reference(str(folder))
    assert len(reference.datasets) == 140
    brain = (reference.loaded.array > 20) & (reference.loaded.array < 60)
    out = seg.write_seg([seg.SegmentData("brain window", brain)], reference, tmp_path / "philips-seg.dcm")
    _assert_valid(out)
    contents = seg.read_seg(out)
    mask = contents.segments[0].mask
    offset = np.linalg.solve(reference.ijk_to_ras, contents.ijk_to_ras)[:3, 3].round().astype(int)
    k0, j0, i0 = offset[2], offset[1], offset[0]
    sub = brain[k0 : k0 + mask.shape[0], j0 : j0 + mask.shape[1], i0 : i0 + mask.shape[2]]
    assert np.array_equal(sub, mask) and mask.sum() == brain.sum()


def test_tilted_series_is_refused_as_reference(shared_data):
    with pytest.raises(UserInputError, match="resampled"):
        load_reference(str(shared_data / "dcm_qa_ct" / "In" / "GE"))


PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-123456",
    "PatientBirthDate": "19610704",
    "PatientAddress": "12 Main Street, Springfield",
    "InstitutionName": "St. Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "AccessionNumber": "ACC-998877",
    "StudyID": "STUDY-4711",
    "OtherPatientIDs": "ALT-5555",
    "PatientTelephoneNumbers": "555-0100",
    "InstitutionAddress": "1 Hospital Way",
    "StationName": "CT-ROOM-7",
    "PerformingPhysicianName": "Grey^Meredith",
    "StudyDescription": "Jane head trauma",
    "ImageComments": "patient Jane Doe, bed 4",
}


def _with_phi(files, destination: Path) -> list:
    destination.mkdir()
    written = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.add_new(0x00291010, "LO", "private Jane Doe note")
        ds.AcquisitionDate = "20240102"
        target = destination / f"{index:03d}.dcm"
        ds.save_as(target)
        written.append(str(target))
    return written


def _assert_no_phi(path: Path, originals: dict) -> pydicom.Dataset:
    raw = Path(path).read_bytes()
    for keyword, value in PHI.items():
        assert value.encode() not in raw, f"{keyword} value left in {path}"
    for value in originals.values():
        assert value.encode() not in raw, f"original identifier {value} left in {path}"
    assert b"Jane" not in raw
    ds = pydicom.dcmread(path)
    for element in ds.iterall():
        action = ACTIONS.get(element.keyword)
        assert action != "X", f"{element.keyword} should have been removed"
        if action == "Z" and element.keyword not in ("PatientName", "PatientID"):
            assert element.value in ("", None, []), f"{element.keyword} not emptied"
        assert not element.tag.is_private, f"private element {element.tag} left"
    assert ds.PatientIdentityRemoved == "YES"
    return ds


def test_deidentified_export_has_no_phi_and_consistent_uids(phantom, tmp_path):
    folder, labels = phantom
    sources = _with_phi(sorted(str(p) for p in Path(folder).iterdir()), tmp_path / "phi")
    first = pydicom.dcmread(sources[0])
    originals = {
        "study": str(first.StudyInstanceUID),
        "series": str(first.SeriesInstanceUID),
        "sop": str(first.SOPInstanceUID),
        "frame": str(first.FrameOfReferenceUID),
    }
    reference = load_reference(sources)
    deidentifier = Deidentifier(date_shift_days=-100, key=b"k" * 32)
    out = seg.write_seg(
        [seg.SegmentData("heart", labels == 7)], reference, tmp_path / "seg.dcm", deidentify=deidentifier
    )
    pm = pmap.write_parametric_map(
        np.ones(SHAPE, np.float32), reference.ijk_to_ras, reference, tmp_path / "pm.dcm", deidentify=deidentifier
    )
    for path in (out, pm):
        ds = _assert_no_phi(path, originals)
        _assert_valid(path)
        expected = datetime.date(int(first.StudyDate[:4]), int(first.StudyDate[4:6]), int(first.StudyDate[6:8]))
        assert ds.StudyDate == (expected - datetime.timedelta(days=100)).strftime("%Y%m%d")
        assert ds.StudyInstanceUID == deidentifier.new_uid(originals["study"])
        assert ds.FrameOfReferenceUID == deidentifier.new_uid(originals["frame"])
        assert ds.PatientID == deidentifier.pseudonym("MRN-123456")
    # the de-identified source series matches what the SEG references (consistent remapping)
    sent = [deidentifier.apply(pydicom.dcmread(f)) for f in sources]
    seg_ds = pydicom.dcmread(out)
    referenced = {i.ReferencedSOPInstanceUID for i in seg_ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in sent}
    shifted = pydicom.dcmread(sources[0]).AcquisitionDate
    assert shifted == "20240102" and sent[0].AcquisitionDate == "20230924"  # 100 days earlier
    target = tmp_path / "deid.dcm"
    sent[0].save_as(target)
    _assert_no_phi(target, originals)


def test_deidentify_remove_dates_and_retain_uids(phantom, tmp_path):
    folder, _ = phantom
    source = _with_phi(sorted(str(p) for p in Path(folder).iterdir())[:1], tmp_path / "phi")[0]
    ds = Deidentifier(retain_uids=True).apply(pydicom.dcmread(source))
    original = pydicom.dcmread(source)
    assert ds.SOPInstanceUID == original.SOPInstanceUID and ds.StudyDate == "" and ds.AcquisitionDate == ""
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113110"]


def test_cli_export_seg_pmap_and_read(phantom, scene, tmp_path):
    import contextlib
    import io

    from MedSegLib.cli.main import main
    from MedSegLib.node_io import save_node
    from MedSegLib.volume_nodes import add_volume_node

    folder, labels = phantom
    reference = load_reference(str(folder))
    node, _volume = _segmentation_node(scene, reference, labels)
    seg_file = save_node(node, tmp_path / "labels.seg.nrrd")
    values = np.random.default_rng(2).uniform(10, 90, SHAPE).astype(np.float32)
    map_file = save_node(add_volume_node(values, reference.ijk_to_ras, "T2 map", scene), tmp_path / "T2.nrrd")

    def cli(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
        return code, out.getvalue()

    code, out = cli(
        "export",
        "seg",
        seg_file,
        "--reference",
        folder,
        "-o",
        tmp_path / "out-seg.dcm",
        "--stats",
        tmp_path / "stats.json",
        "--json",
        "--sr",
        tmp_path / "sr.dcm",
        "--deidentify",
    )
    summaries = [json.loads(part) for part in out.replace("}\n{", "}\x00{").split("\x00")]
    assert code == 0 and all(s["valid"] for s in summaries) and summaries[-1]["segments"] == list(LABELS.values())
    sr_ds, seg_ds = pydicom.dcmread(tmp_path / "sr.dcm"), pydicom.dcmread(tmp_path / "out-seg.dcm")
    assert sr_ds.PatientIdentityRemoved == seg_ds.PatientIdentityRemoved == "YES"
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr_ds.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg_ds.SOPInstanceUID in evidence  # one remapping for both: the SR still points at the SEG
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [row["voxels"] for row in stats] == [int((labels == v).sum()) for v in LABELS]
    code, out = cli(
        "export",
        "pmap",
        map_file,
        "--reference",
        folder,
        "-o",
        tmp_path / "out-pm.dcm",
        "--quantity",
        "T2",
        "--deidentify",
    )
    assert code == 0 and "valid" in out
    code, _ = cli("export", "read", tmp_path / "out-pm.dcm", "-o", tmp_path / "back.nrrd")
    assert code == 0
    from MedSegLib.node_io import load_volume
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    back, _ = array_and_ijk_to_ras(load_volume(tmp_path / "back.nrrd", scene), copy=True)
    assert np.array_equal(back, values)
    code, _ = cli("export", "seg", seg_file, "--reference", tmp_path / "nowhere", "-o", tmp_path / "x.dcm")
    assert code == 2


def test_secondary_capture_of_a_rendering(phantom, tmp_path):
    from MedSegLib.export.secondary_capture import write_secondary_capture

    folder, _ = phantom
    reference = load_reference(str(folder))
    rgb = np.random.default_rng(7).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    out = write_secondary_capture(rgb, reference, tmp_path / "sc.dcm")
    _assert_valid(out)
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == reference.datasets[0].StudyInstanceUID and ds.Modality == "OT"
    assert np.array_equal(ds.pixel_array, rgb)
    with pytest.raises(UserInputError, match="uint8"):
        write_secondary_capture(rgb.astype(np.float32), reference, tmp_path / "bad.dcm")


def test_cli_reference_by_database_uid_and_seg_read(phantom, scene, tmp_path):
    """``--reference UID --db DIR`` finds the series in a DICOM database; ``export read`` gives the SEG back."""
    import contextlib
    import io

    from MedSegLib.cli.main import main
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.indexer import import_paths
    from MedSegLib.node_io import load_segmentation, save_node

    folder, labels = phantom
    with DicomDatabase(tmp_path / "db") as db:
        import_paths(db, [str(folder)])
    reference = load_reference(str(folder))
    node, volume = _segmentation_node(scene, reference, labels)
    seg_file = save_node(node, tmp_path / "labels.seg.nrrd")

    def cli(*argv):
        with contextlib.redirect_stdout(io.StringIO()):
            return main([str(a) for a in argv])

    uid = reference.series_instance_uid
    assert cli("export", "seg", seg_file, "--reference", uid, "--db", tmp_path / "db", "-o", tmp_path / "s.dcm") == 0
    assert cli("export", "read", tmp_path / "s.dcm", "-o", tmp_path / "back.seg.nrrd") == 0
    back = load_segmentation(tmp_path / "back.seg.nrrd", scene)
    import slicer

    segmentation = back.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == list(LABELS.values())
    for index, value in enumerate(LABELS):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(back, segmentation.GetNthSegmentID(index), volume)
        assert np.array_equal(mask.astype(bool), labels == value)
    assert cli("export", "seg", seg_file, "--reference", "1.2.3.4", "--db", tmp_path / "db", "-o", "x.dcm") == 2
    odd = pmap.write_parametric_map(
        np.ones(SHAPE, np.float32),
        reference.ijk_to_ras,
        reference,
        tmp_path / "odd.dcm",
        quantity="fat-fraction (%)",
        unit="1",
    )
    _assert_valid(odd)


def test_measurement_report_sr_references_the_seg(phantom, tmp_path):
    import highdicom as hd

    from MedSegLib.export.sr import write_measurement_report
    from MedSegLib.export.statistics import segment_statistics

    folder, labels = phantom
    reference = load_reference(str(folder))
    segments = [seg.SegmentData(name, labels == value) for value, name in LABELS.items()]
    seg_path = seg.write_seg(segments, reference, tmp_path / "seg.dcm")
    spacing = np.linalg.norm(reference.ijk_to_ras[:3, :3], axis=0)
    rows = segment_statistics(segments, reference.loaded.array, float(np.prod(spacing)))
    out = write_measurement_report(seg_path, rows, reference, tmp_path / "sr.dcm")
    _assert_valid(out)
    sr = hd.sr.srread(str(out))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == list(LABELS.values())
    volumes = [g.get_measurements(name=pydicom.sr.codedict.codes.SCT.Volume)[0].value for g in groups]
    assert volumes == pytest.approx([row["volume_mm3"] for row in rows])
    assert all(
        g.referenced_segment.referenced_sop_instance_uid
        == pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID
        for g in groups
    )
