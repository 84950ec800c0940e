"""Atomic output files: write to a temporary sibling, then rename over the target.

A crash, a full disk or Ctrl-C never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


def _compound_suffix(path: Path) -> str:
    """'.seg.nrrd', '.nii.gz' and friends must stay intact so writers pick the right format."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in (".gz", ".nrrd", ".json"):
        return "".join(suffixes[-2:])
    return path.suffix


@contextlib.contextmanager
def atomic_output(target: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = _compound_suffix(target)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        os.replace(temp_path, target)
    finally:
        if temp_path.exists():
            temp_path.unlink()
