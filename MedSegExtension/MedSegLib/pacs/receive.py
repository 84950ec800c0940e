"""Received instances -> the DICOM database: files land in CTK's storage layout, then one import indexes them.

Writing the encoded bytes exactly as they arrived (no decode/re-encode) keeps transfer syntax and private data,
and placing them under ``<db>/dicom/`` makes them database-owned copies, like 3D Slicer's own DICOM listener.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, List, Optional

from MedSegLib.dicom.database import DicomDatabase, storage_path
from MedSegLib.errors import PathLike


class DatabaseReceiver:
    """Collects received instances for one retrieve and indexes them in ``finish``."""

    def __init__(self, database_dir: PathLike) -> None:
        self.database_dir = Path(database_dir)
        DicomDatabase(self.database_dir).closeDatabase()  # create it now: a bad folder fails before the transfer
        self.files: List[str] = []
        self.sop_instance_uids: List[str] = []
        self.series_uids: set = set()
        self._lock = threading.Lock()

    def store_encoded(self, encoded: bytes, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Write one instance (a complete Part 10 file as bytes) into the storage folder."""
        path = self.database_dir / storage_path(study_uid, series_uid, sop_uid)
        os.makedirs(path.parent, exist_ok=True)
        temp = path.with_suffix(".part")
        temp.write_bytes(encoded)
        os.replace(temp, path)
        with self._lock:
            self.files.append(str(path))
            self.sop_instance_uids.append(sop_uid)
            self.series_uids.add(series_uid)
        return str(path)

    def store_dataset(self, dataset: Any) -> str:
        """Write a pydicom dataset (from WADO-RS) into the storage folder."""
        from io import BytesIO

        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = dataset.SOPClassUID
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset.file_meta = meta
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return self.store_encoded(
            buffer.getvalue(), dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
        )

    def finish(self, progress: Optional[Any] = None) -> Any:
        """Index every received file; returns the indexer's ``ImportSummary`` (``None`` when nothing came)."""
        from MedSegLib.dicom.indexer import import_paths

        if not self.files:
            return None
        with DicomDatabase(self.database_dir) as db:
            return import_paths(db, sorted(set(self.files)), copy_files=False)
