"""DICOM export self-tests (shared with the Slicer module's Test class), on the real slicer-core."""

from __future__ import annotations

import pytest

from MedSegLib.selftests import export_selftests


@pytest.mark.parametrize("check_name", sorted(export_selftests.ALL_CHECKS))
def test_export_selftest(check_name, scene, tmp_path):
    export_selftests.ALL_CHECKS[check_name](scene, tmp_path)
