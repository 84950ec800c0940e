"""The source ("reference") series of an export: its datasets in volume slice order plus its loaded geometry.

DICOM SEG and Parametric Map frames reference source instances one to one, so every exported frame ``k`` must be
matched to the instance whose ImagePositionPatient is voxel (0, 0, k) of the loaded volume; series the loader had
to resample (gantry tilt, uneven spacing) or 4D series have no such match and are refused with a clear message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError

LPS = np.diag([-1.0, -1.0, 1.0])
POSITION_TOLERANCE_MM = 0.01


@dataclasses.dataclass
class ReferenceSeries:
    """Datasets (header only) sorted like the loaded volume's slices, and the loaded volume itself."""

    datasets: List[Any]
    loaded: Any  # MedSegLib.dicom.loader.LoadedVolume
    files: List[str]

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return np.asarray(self.loaded.ijk_to_ras, dtype=float)

    @property
    def shape(self) -> tuple:
        return tuple(self.loaded.array.shape)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def series_files(spec: str, db: Optional[str] = None) -> List[str]:
    """Files of the series ``spec`` designates: a folder (one series), a file list's folder, or a UID in ``db``."""
    from MedSegLib.dicom.loader import list_folder_files
    from MedSegLib.inputs import looks_like_uid, series_files_in_database

    path = Path(spec)
    if path.is_dir():
        return list_folder_files(path)
    if path.is_file():
        return list_folder_files(path.parent)
    if looks_like_uid(spec):
        return series_files_in_database(spec, db)
    raise UserInputError("reference series not found (a DICOM folder, or a series UID with --db)", spec)


def load_reference(spec_or_files: Any, db: Optional[str] = None) -> ReferenceSeries:
    """Load the reference series once (geometry + headers) and pair every slice with its instance."""
    import pydicom

    from MedSegLib.dicom.loader import load_series_files

    files = list(spec_or_files) if isinstance(spec_or_files, (list, tuple)) else series_files(str(spec_or_files), db)
    label = str(spec_or_files) if not isinstance(spec_or_files, (list, tuple)) else (files[0] if files else "")
    loaded_all = load_series_files(files)
    if not loaded_all:
        raise UserInputError("no loadable image series", label)
    if len(loaded_all) > 1:
        raise UserInputError(f"holds {len(loaded_all)} series or volumes; give exactly one reference series", label)
    loaded = loaded_all[0]
    if loaded.is_4d:
        raise UserInputError("the reference is a 4D series; export needs one 3D series", label)
    if loaded.resampled:
        raise UserInputError(
            "the reference series had to be resampled to load (gantry tilt or uneven slices), so "
            "exported frames cannot reference its instances one to one",
            label,
        )
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in loaded.files]
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise UserInputError("multi-frame reference series are not supported for export yet", label)
    datasets = match_slices(headers, np.asarray(loaded.ijk_to_ras, dtype=float), loaded.array.shape[0], label)
    for ds in datasets:
        if not ds.get("SOPClassUID") and "MediaStorageSOPClassUID" in ds.file_meta:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return ReferenceSeries(datasets=datasets, loaded=loaded, files=[str(d.filename) for d in datasets])


def match_slices(headers: Sequence[Any], ijk_to_ras: np.ndarray, n_slices: int, label: str) -> List[Any]:
    """Headers reordered so that item ``k`` holds voxel (0, 0, k); checks rows/columns follow IOP."""
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    direction_lps = LPS @ ijk_to_ras[:3, :3]
    row_cosine = np.array([float(v) for v in headers[0].ImageOrientationPatient[:3]])
    column_cosine = np.array([float(v) for v in headers[0].ImageOrientationPatient[3:]])
    unit = direction_lps / np.linalg.norm(direction_lps, axis=0)
    if not (np.allclose(unit[:, 0], row_cosine, atol=1e-4) and np.allclose(unit[:, 1], column_cosine, atol=1e-4)):
        raise UserInputError("loaded volume axes do not follow the instances' ImageOrientationPatient", label)
    ordered = []
    for k in range(n_slices):
        origin_lps = LPS @ (ijk_to_ras @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        distances = np.linalg.norm(positions - origin_lps, axis=1)
        best = int(np.argmin(distances))
        if distances[best] > POSITION_TOLERANCE_MM:
            raise UserInputError(
                f"no instance at slice {k} of the loaded volume (nearest {distances[best]:.3f} mm)", label
            )
        ordered.append(headers[best])
    return ordered


def reference_volume_node(reference: ReferenceSeries, scene: Any = None) -> Any:
    """A scalar volume node of the reference (the grid segments are sampled on)."""
    from MedSegLib.volume_nodes import add_volume_node

    return add_volume_node(reference.loaded.array, reference.ijk_to_ras, "MedSeg export reference", scene)


def ras_from_hd_affine(affine: np.ndarray) -> np.ndarray:
    """highdicom volume affine (LPS, index order slice/row/column) -> MRML IJKToRAS (index order i, j, k)."""
    affine = np.asarray(affine, dtype=float)
    ijk_to_lps = affine[:, [2, 1, 0, 3]]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps


def right_handed(array: np.ndarray, ijk_to_ras: np.ndarray) -> tuple:
    """Reverse the slice axis when IJK is left-handed (highdicom may stack slices descending)."""
    if np.linalg.det(ijk_to_ras[:3, :3]) >= 0:
        return array, ijk_to_ras
    flipped = ijk_to_ras.copy()
    n = array.shape[0]
    flipped[:3, 3] = ijk_to_ras[:3, 3] + (n - 1) * ijk_to_ras[:3, 2]
    flipped[:3, 2] = -ijk_to_ras[:3, 2]
    return array[::-1], flipped


def equipment() -> dict:
    """Manufacturer fields every MedSeg-created object carries (provenance in the PACS)."""
    from importlib import metadata

    try:
        version = metadata.version("medseg")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return {
        "manufacturer": "MedSeg",
        "manufacturer_model_name": "MedSeg",
        "software_versions": version,
        "device_serial_number": "0",
    }


def mark_laterality_unknown(ds: Any) -> None:
    """General Series Laterality is Type 2C (paired body parts); validators want it present, empty = unknown."""
    if "Laterality" not in ds and "ImageLaterality" not in ds:
        ds.Laterality = ""
