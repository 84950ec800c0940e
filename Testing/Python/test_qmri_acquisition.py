"""Protocol values for relaxometry fits: standard DICOM tags, the enhanced-MR functional groups and the Siemens CSA
protocol when the standard tag is empty, and clear errors (series and tag named) when values are missing or wrong.

Synthetic pydicom datasets, one per place (dicom_loading_facts.md: "TI: classic (0018,0082); enhanced
(0018,9115)->(0018,9079); Siemens CSA Series ASCII protocol alTI[0] in us. TE: classic (0018,0081); enhanced
(0018,9114)->(0018,9082). Cardiac delay: (0018,1060) or (0018,9118)->(0020,9153)").
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from MedSegLib.errors import UserInputError
from MedSegLib.qmri import acquisition
from MedSegLib.qmri.acquisition import Acquisition, combine_volumes, dataset_parameters, protocol_values

CSA_PROTOCOL = (
    b"SV10\x04\x03\x02\x01...### ASCCONV BEGIN ###\nulVersion\t = 0x14b44b6\nalTI[0]\t = %d\nalTR[0]\t = 3000000\n"
)


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def enhanced(per_frame: dict | None = None, shared: dict | None = None) -> Dataset:
    """An enhanced-MR-like dataset: ``{sequence keyword: {attribute: value}}`` in the first per-frame / shared item."""
    ds = Dataset()
    for keyword, groups in (
        ("PerFrameFunctionalGroupsSequence", per_frame),
        ("SharedFunctionalGroupsSequence", shared),
    ):
        if groups is not None:
            frame = Dataset()
            for sequence, values in groups.items():
                setattr(frame, sequence, Sequence([item(**values)]))
            setattr(ds, keyword, Sequence([frame]))
    return ds


def with_csa(ds: Dataset, ti_us: int, slot: int = 0x10) -> Dataset:
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    assert block.block_start == slot << 8
    block.add_new(0x20, "OB", CSA_PROTOCOL % ti_us)
    return ds


def test_standard_tags_win_and_report_their_place():
    ds = item(InversionTime="300", EchoTime="12.5", RepetitionTime="3000", FlipAngle="90", TriggerTime="410")
    ds = with_csa(ds, 999000)  # a protocol value never overrides the image's own tag
    found = dataset_parameters(ds)
    assert found["InversionTime"] == (300.0, "(0018,0082)")
    assert found["EchoTime"] == (12.5, "(0018,0081)")
    assert found["RepetitionTime"] == (3000.0, "(0018,0080)")
    assert found["FlipAngle"] == (90.0, "(0018,1314)")
    assert found["TriggerTime"] == (410.0, "(0018,1060)")


def test_enhanced_functional_groups_when_standard_tags_are_empty():
    ds = enhanced(
        per_frame={
            "MRModifierSequence": {"InversionTimes": [350.0, 1350.0]},
            "MREchoSequence": {"EffectiveEchoTime": 9.64},
            "CardiacSynchronizationSequence": {"NominalCardiacTriggerDelayTime": 120.0},
        },
        shared={
            "MRTimingAndRelatedParametersSequence": {"RepetitionTime": 4.2, "FlipAngle": 12.0},
            "MREchoSequence": {"EffectiveEchoTime": 99.0},  # per-frame wins over shared
        },
    )
    ds.InversionTime = ""  # present but empty
    found = dataset_parameters(ds)
    assert found["InversionTime"] == (350.0, "(0018,9115)>(0018,9079)")
    assert found["EchoTime"] == (9.64, "(0018,9114)>(0018,9082)")
    assert found["RepetitionTime"] == (4.2, "(0018,9112)>(0018,0080)")
    assert found["FlipAngle"] == (12.0, "(0018,9112)>(0018,1314)")
    assert found["TriggerTime"] == (120.0, "(0018,9118)>(0020,9153)")
    shared_only = enhanced(shared={"MREchoSequence": {"EffectiveEchoTime": 30.0}})
    assert dataset_parameters(shared_only)["EchoTime"] == (30.0, "(0018,9114)>(0018,9082)")


def test_siemens_csa_protocol_inversion_time_in_any_private_block():
    ds = with_csa(item(EchoTime="10"), 450000)
    assert dataset_parameters(ds)["InversionTime"] == (450.0, "Siemens CSA alTI[0]")
    other = item()
    other.add_new(0x00290010, "LO", "SOME OTHER CREATOR")  # CSA lands in block 0x11
    with_csa(other, 1250500, slot=0x11)
    assert dataset_parameters(other)["InversionTime"] == (1250.5, "Siemens CSA alTI[0]")
    assert "InversionTime" not in dataset_parameters(item(EchoTime="10"))


def _write_series(folder, ti_us: int, name: str) -> SimpleNamespace:
    """One classic MR file without InversionTime but with the CSA protocol, and a loader-like item for it."""
    folder.mkdir()
    ds = with_csa(item(RepetitionTime="3000", EchoTime="12", Modality="MR", SeriesDescription=name), ti_us)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    path = folder / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return SimpleNamespace(
        array=np.ones((2, 3, 4)),
        ijk_to_ras=np.eye(4),
        per_volume=[{"RepetitionTime": 3000.0, "EchoTime": 12.0}],
        name=name,
        files=[str(path)],
    )


def test_combine_volumes_fills_the_inversion_time_from_each_series_protocol(tmp_path):
    items = [_write_series(tmp_path / f"ti{ti}", ti * 1000, f"IR TI{ti}") for ti in (900, 100, 400)]
    stacked = combine_volumes(items, name="IR")
    assert protocol_values(stacked, "ir") == [900.0, 100.0, 400.0]
    assert [p["InversionTimeSource"] for p in stacked.per_volume] == ["Siemens CSA alTI[0]"] * 3
    assert acquisition.repetition_times(stacked) == [3000.0] * 3
    # a series without any place for TI: the error names the acquisition, the tag and every place looked at
    bare = SimpleNamespace(array=np.ones((2, 3, 4)), ijk_to_ras=np.eye(4), per_volume=[{}], name="x", files=[])
    with pytest.raises(UserInputError) as error:
        protocol_values(combine_volumes([bare, bare], name="IR series 7"), "ir")
    text = str(error.value)
    assert "IR series 7" in text and "InversionTime" in text and "2 of 2" in text
    assert "(0018,0082)" in text and "(0018,9115)>(0018,9079)" in text and "alTI[0]" in text


def test_inconsistent_protocol_values_are_errors_naming_series_and_tag():
    def acq(per_volume):
        return Acquisition(np.ones((len(per_volume), 1, 2, 2)), np.eye(4), per_volume, name="ME series 3")

    with pytest.raises(UserInputError, match=r"ME series 3.*EchoTime \(0018,0081\) of image 2 is -10"):
        protocol_values(acq([{"EchoTime": 10.0}, {"EchoTime": -10.0}, {"EchoTime": 30.0}]), "t2")
    with pytest.raises(UserInputError, match=r"ME series 3.*EchoTime is the same \(10\) in every image"):
        protocol_values(acq([{"EchoTime": 10.0}, {"EchoTime": 10.0}]), "t2")
    with pytest.raises(UserInputError, match=r"ME series 3.*FlipAngle \(0018,1314\) of image 1 is 270"):
        protocol_values(acq([{"FlipAngle": 270.0}, {"FlipAngle": 10.0}]), "vfa")
    partial_tr = acq([{"InversionTime": 50.0, "RepetitionTime": 1000.0}, {"InversionTime": 400.0}])
    with pytest.raises(UserInputError, match=r"ME series 3.*RepetitionTime missing in 1 of 2 image"):
        acquisition.repetition_times(partial_tr)
    assert acquisition.repetition_times(acq([{"InversionTime": 50.0}, {"InversionTime": 400.0}])) is None
    # MOLLI falls back to trigger times when the inversion time is missing
    molli = acq([{"TriggerTime": 100.0}, {"TriggerTime": 180.0}, {"TriggerTime": 1000.0}])
    assert protocol_values(molli, "molli") == [100.0, 180.0, 1000.0]
