"""Locate the extension's ``Resources/`` folder in every install layout.

Source tree / editable install: ``<repo>/Resources``. Installed Slicer extension: next to the
scripted modules (``qt-scripted-modules/Resources``). Wheel install: ``<prefix>/share/medseg/Resources``.
``MEDSEG_RESOURCES`` overrides all of them.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def resources_root() -> Path:
    """The first existing Resources folder among the known layouts."""
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get("MEDSEG_RESOURCES"):
        candidates.append(Path(os.environ["MEDSEG_RESOURCES"]))
    candidates += [
        here.parents[1] / "Resources",  # <repo>/MedSegExtension/MedSegLib -> <repo>/Resources
        here.parent / "Resources",  # installed next to the scripted modules
        Path(sys.prefix) / "share" / "medseg" / "Resources",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("MedSeg Resources folder not found; looked in: " + ", ".join(map(str, candidates)))


def resource_path(*parts: str) -> Path:
    """Path of a file or folder under Resources (not checked for existence)."""
    return resources_root().joinpath(*parts)
