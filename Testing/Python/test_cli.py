"""The ``medseg`` command line: info, help, error conventions (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from conftest import PROJECT_ROOT


def run_medseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env_path = str(PROJECT_ROOT / "MedSegExtension")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {env_path!r}); from MedSegLib.cli.main import run; run()",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )


def test_info_reports_headless_host_and_versions():
    result = run_medseg("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["host"] == f"headless slicer-core {metadata.version('slicer-core')}"
    assert info["packages"]["vtk"] == metadata.version("vtk")
    assert info["packages"]["SimpleITK"] == metadata.version("SimpleITK")
    assert info["packages"]["torch"].startswith("2.13.0")


def test_info_text_output():
    result = run_medseg("info")
    assert result.returncode == 0, result.stderr
    assert "host: headless slicer-core" in result.stdout
    assert "slicer-core:" in result.stdout


def test_help_is_fast_and_lists_commands():
    result = run_medseg("--help")
    assert result.returncode == 0
    for command in ("info", "demo", "dicom"):
        assert command in result.stdout


def test_user_error_is_one_line_with_exit_code_2(tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    result = run_medseg("demo", "--out", str(not_a_folder))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(not_a_folder) in lines[0] and "not a folder" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    result = run_medseg("--debug", "demo", "--out", str(not_a_folder))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_missing_subcommand_prints_help_and_exits_2():
    result = run_medseg()
    assert result.returncode == 2
    assert "usage: medseg" in result.stdout
