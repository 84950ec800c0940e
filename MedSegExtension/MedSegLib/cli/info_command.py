"""``medseg info``: host and library versions, for bug reports and reproducibility."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from typing import Dict

from MedSegLib import __version__

REPORTED_PACKAGES = ("slicer-core", "vtk", "torch", "SimpleITK", "pydicom", "numpy", "monai", "highdicom", "pynetdicom")


def package_versions() -> Dict[str, str]:
    """Installed versions read from package metadata (no heavy imports)."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def collect_info() -> Dict[str, object]:
    from MedSegLib.runtime import boot

    runtime = boot()
    return {
        "medseg": __version__,
        "host": runtime.host_description,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }


def run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"MedSeg {info['medseg']}")
    print(f"host: {info['host']}")
    print(f"python: {info['python']} ({info['platform']})")
    for name, version in info["packages"].items():  # type: ignore[union-attr]
        print(f"{name}: {version}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show the host (3D Slicer or headless slicer-core) and versions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run_info)
