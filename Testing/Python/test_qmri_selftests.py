"""Quantitative MRI self-tests through MRML (shared with the MedSegQuantitativeMRI module's Test class)."""

from __future__ import annotations

import pytest

from MedSegLib.selftests import qmri_selftests


@pytest.mark.parametrize("check_name", sorted(qmri_selftests.ALL_CHECKS))
def test_qmri_selftest(check_name, scene, tmp_path):
    qmri_selftests.ALL_CHECKS[check_name](scene, tmp_path)
