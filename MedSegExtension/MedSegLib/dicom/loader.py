"""Load DICOM series into exact numpy volumes with their voxel-to-RAS matrix (headless; no Qt, no MRML).

Why: everything downstream (segmentation, statistics, quantitative MRI) trusts these arrays and matrices. The
loader groups files into volumes (``series_split``), sorts slices by position along the slice normal, decodes
pixels with per-slice rescale (``pixel_reader``), and refuses to hide irregular geometry: tilted or unevenly
spaced stacks are resampled onto a regular patient-space grid by default (as dcm2niix's ``_Tilt_Eq``), or kept as
acquired with a recorded warning when ``keep_acquired_grid=True``.

Array layout: ``array[k, j, i]`` (slice, row, column) for 3D, ``array[t, k, j, i]`` for 4D, C-order.
``ijk_to_ras @ (i, j, k, 1)`` is the RAS position (mm) of the voxel centre. k increases along the slice normal
(row direction x column direction), so IJK is right-handed and Slicer keeps the slice order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import UserInputError
from . import pixel_reader
from .series_split import Frame, Loadable, NotDicomError, read_frames, split_into_loadables
from .slice_geometry import LPS_TO_RAS, analyse_stack, resample_to_regular_grid

ProgressCallback = Callable[[int, int], None]
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "StudyID", "AccessionNumber")
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "Manufacturer", "BodyPartExamined")

__all__ = [
    "Loadable",
    "LoadedVolume",
    "examine_files",
    "load_loadable",
    "load_series_files",
    "load_folder",
    "list_folder_files",
]


@dataclass
class LoadedVolume:
    """One loaded scalar volume (3D) or multi-volume (4D) with exact geometry and provenance."""

    name: str
    array: np.ndarray  # (k, j, i) or (t, k, j, i)
    ijk_to_ras: np.ndarray  # 4x4 float64
    window_presets: list[tuple[float, float, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    series_uid: str = ""
    instance_uids: list[str] = field(default_factory=list)  # acquired slice order; volume-major for 4D
    instance_numbers: list[int] = field(default_factory=list)  # InstanceNumber (0020,0013), same order
    per_volume: list[dict[str, Any]] = field(default_factory=list)  # 4D: acquisition parameters per volume
    varying: list[str] = field(default_factory=list)  # 4D: parameters that differ between volumes
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    resampled: bool = False  # True when voxel values were interpolated onto a regular grid
    acquired_slice_origins_ras: np.ndarray | None = None  # (k, 3) true slice origins when the grid is approximate
    files: list[str] = field(default_factory=list)

    @property
    def is_4d(self) -> bool:
        return self.array.ndim == 4

    @property
    def dicom_info(self) -> dict[str, str]:
        """Patient, study and series fields in one flat dict (for the subject hierarchy)."""
        return {**self.patient, **self.study, **self.series}

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (i, j, k) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))


# ------------------------------------------------------------------------------------------------ examine


def list_folder_files(folder: str | os.PathLike) -> list[str]:
    """Every regular, non-hidden file below ``folder`` (sorted); raises UserInputError for a bad folder."""
    root = Path(folder)
    if not root.exists():
        raise UserInputError("folder does not exist", root)
    if not root.is_dir():
        return [str(root)]
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserInputError("folder is empty", root)
    return files


def _read_headers(files: Sequence[str]) -> tuple[list[Frame], list[str]]:
    """Frames of all readable image files, plus one note per skipped file (threaded: I/O bound)."""

    def one(path: str) -> tuple[list[Frame], str | None]:
        try:
            return read_frames(path), None
        except NotDicomError as error:
            return [], None if error.quiet else f"{path}: skipped, {error}"
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            return [], f"{path}: skipped, unreadable DICOM ({type(error).__name__}: {error})"

    workers = min(8, (os.cpu_count() or 2) + 2)
    if len(files) < 8:
        results = [one(path) for path in files]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, files))
    frames = [frame for result, _ in results for frame in result]
    notes = [note for _, note in results if note]
    return frames, notes


def examine_files(files: Iterable[str | os.PathLike]) -> list[Loadable]:
    """Group files into loadable volumes (best first). Raises UserInputError when nothing is loadable."""
    files = [os.fspath(f) for f in files]
    if not files:
        raise UserInputError("no files given")
    frames, notes = _read_headers(files)
    if not frames:
        where = os.path.dirname(files[0]) if len(files) > 1 else files[0]
        reason = notes[0].split(": ", 1)[-1] if len(notes) == 1 else f"none of {len(files)} files is a DICOM image"
        raise UserInputError(f"no loadable DICOM image series ({reason})", where)
    loadables = split_into_loadables(frames)
    if notes:
        for loadable in loadables:
            loadable.warnings.append(f"{len(notes)} file(s) skipped; first: {notes[0]}")
    return loadables


# ------------------------------------------------------------------------------------------------ load


def _info(frame: Frame, keys: Sequence[str]) -> dict[str, str]:
    return {key: frame.file.info.get(key, "") for key in keys}


def _fill_value(frames: Sequence[Frame], array: np.ndarray) -> float:
    """Background for resampled regions: PixelPaddingValue (rescaled) if given, else the volume minimum."""
    first = frames[0]
    if first.file.padding_value is not None:
        return float(first.file.padding_value * first.slope + first.intercept)
    return float(array.min()) if array.size else 0.0


def load_loadable(
    loadable: Loadable,
    keep_acquired_grid: bool = False,
    use_philips_scale_slope: bool = False,
    progress: ProgressCallback | None = None,
) -> LoadedVolume:
    """Decode one loadable into a LoadedVolume with its exact ijk_to_ras."""
    frames = loadable.frames
    n_volumes, n_slices = loadable.n_volumes, loadable.n_slices
    warnings = list(loadable.warnings)
    data = pixel_reader.read_frames(frames, use_philips_scale_slope, progress)
    data = data.reshape(n_volumes, n_slices, frames[0].rows, frames[0].cols)
    first_volume = frames[:n_slices]
    reference = first_volume[0]
    resampled = False
    acquired = None
    if reference.orientation is None or any(f.position is None for f in first_volume):
        spacing = reference.pixel_spacing or (1.0, 1.0)
        ijk_to_lps = np.diag([spacing[1], spacing[0], 1.0, 1.0])
        warnings.append(
            "images lack position/orientation: identity orientation assumed, slices in InstanceNumber order"
        )
    else:
        positions = np.array([f.position for f in first_volume], dtype=np.float64)
        spacing = reference.pixel_spacing or (1.0, 1.0)
        if reference.pixel_spacing is None:
            warnings.append("PixelSpacing missing: 1 mm assumed")
        geo = analyse_stack(positions, reference.orientation, spacing)
        warnings.extend(geo.warnings)
        if n_slices == 1:
            thickness = float(reference.file.info.get("SliceThickness") or 0) or 1.0
            geo.slice_step = thickness
            ijk_to_lps = geo.affine_lps()
        elif geo.regular:
            ijk_to_lps = geo.affine_lps()
        elif keep_acquired_grid:
            ijk_to_lps = geo.affine_lps(sheared=True)
            acquired = (LPS_TO_RAS[:3, :3] @ positions.T).T
            warnings.append(
                "kept the acquired slices (keep_acquired_grid): the volume matrix is only exact for the first and "
                "last slice; true slice origins are in acquired_slice_origins_ras"
            )
        else:
            fill = _fill_value(frames, data)
            out = None
            for volume in range(n_volumes):
                grid, ijk_to_lps = resample_to_regular_grid(data[volume], geo, fill)
                if out is None:
                    out = np.empty((n_volumes,) + grid.shape, dtype=grid.dtype)
                out[volume] = grid
            data = out
            resampled = True
            warnings.append(
                f"resampled onto a regular grid in patient space ({data.shape[1]} slices of "
                f"{float(np.linalg.norm(ijk_to_lps[:3, 2])):.3f} mm, orthogonal to the image plane), linear "
                "interpolation; use keep_acquired_grid to keep the acquired slices"
            )
    if reference.file.photometric.upper() == "MONOCHROME1":
        warnings.append("MONOCHROME1: low values are displayed bright; voxel values are not inverted")
    ijk_to_ras = LPS_TO_RAS @ ijk_to_lps
    array = data[0] if n_volumes == 1 else data
    middle = first_volume[len(first_volume) // 2]
    return LoadedVolume(
        name=loadable.name,
        array=np.ascontiguousarray(array),
        ijk_to_ras=ijk_to_ras,
        window_presets=list(middle.windows),
        warnings=warnings,
        series_uid=loadable.series_uid,
        instance_uids=[f.sop_uid for f in frames],
        instance_numbers=[f.instance_number for f in frames],
        per_volume=[dict(p) for p in loadable.per_volume],
        varying=list(loadable.varying),
        patient=_info(reference, PATIENT_KEYS),
        study=_info(reference, STUDY_KEYS),
        series=_info(reference, SERIES_KEYS),
        resampled=resampled,
        acquired_slice_origins_ras=acquired,
        files=loadable.files,
    )


def load_series_files(
    files: Iterable[str | os.PathLike],
    keep_acquired_grid: bool = False,
    use_philips_scale_slope: bool = False,
    progress: ProgressCallback | None = None,
    include_unselected: bool = False,
) -> list[LoadedVolume]:
    """Load every selected loadable of ``files`` (localizers and other unselected ones only if asked)."""
    loadables = examine_files(files)
    chosen = [item for item in loadables if item.selected or include_unselected] or loadables[:1]
    return [load_loadable(item, keep_acquired_grid, use_philips_scale_slope, progress) for item in chosen]


def load_folder(
    folder: str | os.PathLike,
    keep_acquired_grid: bool = False,
    use_philips_scale_slope: bool = False,
    progress: ProgressCallback | None = None,
    include_unselected: bool = False,
) -> list[LoadedVolume]:
    """Load all image series found below ``folder`` (non-DICOM files such as READMEs or DICOMDIR are skipped)."""
    return load_series_files(
        list_folder_files(folder), keep_acquired_grid, use_philips_scale_slope, progress, include_unselected
    )
