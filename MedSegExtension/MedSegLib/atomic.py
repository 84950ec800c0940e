"""Atomic output files: write into a private temporary folder beside the target, then rename.

A crash, a full disk or Ctrl-C never leaves a half-written output under the final name. The
temporary file keeps the target's exact name (inside a hidden sibling folder), so writers that
choose the format from the extension (``.seg.nrrd``, ``.nii.gz``) or record the file name in
the file itself see the real name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_output(target: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path named like ``target``; on success move it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        temp_path = work_dir / target.name
        yield temp_path
        if not temp_path.exists():
            raise FileNotFoundError(f"{target}: the writer produced no file")
        os.replace(temp_path, target)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
