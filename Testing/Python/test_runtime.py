"""Headless runtime, node I/O and geometry: the shared self-tests, run on the real slicer-core."""

from __future__ import annotations

import pytest

from MedSegLib.selftests import runtime_selftests


@pytest.mark.parametrize("check_name", sorted(runtime_selftests.ALL_CHECKS))
def test_runtime_selftest(check_name, scene, tmp_path):
    runtime_selftests.ALL_CHECKS[check_name](scene, tmp_path)


def test_boot_is_lazy():
    """Importing MedSegLib must not boot slicer-core (Slicer scans module files at startup)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'MedSegExtension'); import MedSegLib.runtime, MedSegLib.node_io; "
        "print('vtkmodules' in sys.modules, 'slicer' in sys.modules)"
    )
    from conftest import PROJECT_ROOT

    output = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.split() == ["False", "False"], output.stdout


def test_round_trip_check_detects_a_geometry_change(scene, tmp_path, monkeypatch):
    """The round-trip check must fail when a writer shifts the origin (guards against a test that cannot fail)."""
    from MedSegLib import node_io

    original = node_io.load_volume

    def shifted_load(path, scene=None, name=None, label=False):
        node = original(path, scene, name, label)
        node.SetOrigin(node.GetOrigin()[0] + 0.01, *node.GetOrigin()[1:])
        return node

    monkeypatch.setattr(node_io, "load_volume", shifted_load)
    with pytest.raises(AssertionError, match="IJKToRAS"):
        runtime_selftests.check_volume_file_round_trips(scene, tmp_path)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    from MedSegLib.atomic import atomic_output

    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temp_path:
            temp_path.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
