"""Validation of every exported object: highdicom must read it back, and dciodvfy (dicom3tools) must report no
errors when it is installed. Warnings are returned for the record; errors make the export fail loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple, Union

PathLike = Union[str, Path]


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None


def run_dciodvfy(path: PathLike) -> Tuple[List[str], List[str]]:
    """(errors, warnings) lines from dciodvfy; empty lists when it is not installed."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        return [], []
    completed = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warn")]


def highdicom_errors(path: PathLike) -> List[str]:
    """Read the object back with highdicom's SOP-class reader; any exception is an error."""
    import highdicom as hd
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        sop = str(ds.SOPClassUID)
        if sop == "1.2.840.10008.5.1.4.1.1.66.4":
            hd.seg.Segmentation.from_dataset(ds)
        elif sop == "1.2.840.10008.5.1.4.1.1.30":
            hd.pm.ParametricMap.from_dataset(ds)
        elif sop.startswith("1.2.840.10008.5.1.4.1.1.88."):
            hd.sr.srread(str(path))
        else:
            hd.Image.from_dataset(ds)
    except Exception as error:  # any failure to parse is a validation error
        return [f"highdicom cannot read it back: {error}"]
    return []


def validate(path: PathLike) -> Tuple[List[str], List[str]]:
    """(errors, warnings) for an exported file."""
    errors = highdicom_errors(path)
    dcm_errors, warnings = run_dciodvfy(path)
    return errors + dcm_errors, warnings
