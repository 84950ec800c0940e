"""Shared pytest fixtures: MedSegLib on sys.path, the booted headless runtime, shared data location."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT / "MedSegExtension"))
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def runtime():
    """The real slicer-core runtime (booted once per test session)."""
    from MedSegLib.runtime import boot

    return boot()


@pytest.fixture()
def scene(runtime):
    """An emptied scene for each test."""
    runtime.scene.Clear(0)
    yield runtime.scene
    runtime.scene.Clear(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-scanner data folder; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data not found at {SHARED_DATA} (real scanner data is only on development machines and CI)"
        )
    return SHARED_DATA
