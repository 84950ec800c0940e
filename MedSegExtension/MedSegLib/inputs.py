"""Resolve a CLI INPUT argument: a volume file, a DICOM folder, or a series UID in a DICOM database.

Every subcommand that reads images accepts the same three forms, so scripts can switch between
them without learning per-command rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional

from MedSegLib.errors import UserInputError

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def looks_like_uid(text: str) -> bool:
    """DICOM UIDs are dot-separated digit groups (PS3.5 9.1), at most 64 characters."""
    return len(text) <= 64 and bool(_UID_PATTERN.match(text))


def series_files_in_database(series_uid: str, db: Optional[str]) -> List[str]:
    """Files of ``series_uid`` in an existing DICOM database: how every command resolves ``UID --db DIR``.

    The database is opened read-only in spirit (``create=False``): a wrong ``--db`` never creates
    a database inside some unrelated folder.
    """
    if not db:
        raise UserInputError(f"series UID {series_uid} given without --db DIR (the DICOM database to look in)")
    database_dir = Path(db)
    if not database_dir.is_dir():
        raise UserInputError("DICOM database folder does not exist", database_dir)
    from MedSegLib.dicom.database import DicomDatabase

    with DicomDatabase(database_dir, create=False) as database:
        files = list(database.filesForSeries(series_uid))
    if not files:
        raise UserInputError(f"series {series_uid} is not in the database", database_dir)
    return files


def load_input_volumes(
    spec: str, scene: Any = None, db: Optional[str] = None, keep_acquired_grid: bool = False
) -> List[Any]:
    """All volume nodes an INPUT designates (a DICOM folder or series may hold several)."""
    from MedSegLib.node_io import is_volume_file, load_volume

    path = Path(spec)
    if path.is_dir():
        from MedSegLib.dicom.mrml import load_dicom_folder_into_scene

        nodes = load_dicom_folder_into_scene(path, scene, keep_acquired_grid=keep_acquired_grid)
        if not nodes:
            raise UserInputError("no loadable DICOM series in folder", path)
        return nodes
    if path.is_file():
        if is_volume_file(path):
            return [load_volume(path, scene)]
        raise UserInputError("not a volume file (.nrrd, .nii, .nii.gz, .mha) nor a DICOM folder", path)
    if looks_like_uid(spec):
        from MedSegLib.dicom.loader import load_series_files
        from MedSegLib.dicom.mrml import add_loaded_volume

        files = series_files_in_database(spec, db)
        loaded = load_series_files(files, keep_acquired_grid=keep_acquired_grid)
        return [add_loaded_volume(item, scene) for item in loaded]
    raise UserInputError("no such file, folder or series UID", spec)


def load_input_volume(spec: str, scene: Any = None, db: Optional[str] = None, keep_acquired_grid: bool = False) -> Any:
    """The single volume an INPUT designates; several candidates is a user error that lists them."""
    nodes = load_input_volumes(spec, scene, db, keep_acquired_grid)
    if len(nodes) > 1:
        names = ", ".join(node.GetName() for node in nodes)
        raise UserInputError(
            f"holds {len(nodes)} volumes ({names}); pass one series (UID with --db, or its folder)", spec
        )
    return nodes[0]
