"""DICOM -> MRML self-tests (shared with the MedSegDICOM module's Test class), on the real slicer-core."""

from __future__ import annotations

import pytest

from MedSegLib.selftests import dicom_selftests


@pytest.mark.parametrize("check_name", sorted(dicom_selftests.ALL_CHECKS))
def test_dicom_selftest(check_name, scene, tmp_path):
    dicom_selftests.ALL_CHECKS[check_name](scene, tmp_path)
