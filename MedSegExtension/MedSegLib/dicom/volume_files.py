"""Write a LoadedVolume to NRRD or NIfTI with its exact geometry, atomically.

Why: the exported file must describe the same voxels in the same patient space as the loaded volume, readable
by Slicer, ITK, nibabel and FSL alike. NIfTI files are laid out as dcm2niix writes 2D acquisitions (rows
reversed, RAS sform = qform, code 1 "scanner"), so a MedSeg file and a dcm2niix file of the same series hold the
same array. NRRD uses LPS "space directions" as Slicer does; a 4D volume becomes a Slicer sequence NRRD (a "list"
axis last, as vtkMRMLVolumeSequenceStorageNode writes it, indexed by the varying acquisition parameter).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_output
from ..errors import UserInputError

if TYPE_CHECKING:
    from .loader import LoadedVolume

NRRD_TYPES = {
    np.dtype(np.int16): "short",
    np.dtype(np.float32): "float",
    np.dtype(np.uint8): "uchar",
    np.dtype(np.uint16): "ushort",
    np.dtype(np.int32): "int",
    np.dtype(np.float64): "double",
}
SUFFIXES = (".seq.nrrd", ".nii.gz", ".nrrd", ".nii")


def volume_suffix(path: str | os.PathLike) -> str:
    """The recognised output suffix of ``path`` or a UserInputError."""
    name = Path(path).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserInputError(f"unsupported output format; use one of {', '.join(SUFFIXES)}", path)


def write_volume(volume: LoadedVolume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (.nrrd, .seq.nrrd, .nii, .nii.gz); the file appears only when complete."""
    path = Path(path)
    suffix = volume_suffix(path)
    with atomic_output(path) as temporary:
        if suffix in (".nrrd", ".seq.nrrd"):
            _write_nrrd(volume, temporary, compress)
        else:
            _write_nifti(volume, temporary)
    return path


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def _write_nrrd(volume: LoadedVolume, path: Path, compress: bool) -> None:
    """Plain NRRD writer (3D scalar or 4D list-of-volumes as Slicer's sequence storage node reads it)."""
    array = volume.array
    if array.dtype not in NRRD_TYPES:
        raise UserInputError(f"cannot write {array.dtype} voxels to NRRD", path)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras
    directions = " ".join(_vector(lps[:3, axis]) for axis in range(3))
    lines = ["NRRD0004", "# Written by MedSeg from DICOM", f"type: {NRRD_TYPES[array.dtype]}"]
    if array.ndim == 4:
        # Slicer's vtkMRMLVolumeSequenceStorageNode layout: the list axis last (slowest), i.e. our (t, k, j, i).
        t, k, j, i = array.shape
        data = np.ascontiguousarray(array)
        name, values = "volume", [str(n) for n in range(t)]
        for key in volume.varying:  # first varying scalar parameter that tells every volume apart
            candidate = [p.get(key) for p in volume.per_volume]
            if len(candidate) == t and all(isinstance(v, (int, float)) for v in candidate) and len(set(candidate)) == t:
                name, values = key, [f"{float(v):g}" for v in candidate]
                break
        unit = {
            "InversionTime": "ms",
            "EchoTime": "ms",
            "RepetitionTime": "ms",
            "TriggerTime": "ms",
            "AcquisitionTime": "s",
            "FlipAngle": "deg",
        }.get(name, "")
        lines += [
            "dimension: 4",
            "space: left-posterior-superior",
            f"sizes: {i} {j} {k} {t}",
            f"space directions: {directions} none",
            "kinds: domain domain domain list",
            f'labels: "" "" "" "{name}"',
            f'units: "" "" "" "{unit}"',
        ]
        extra = [
            "DataNodeClassName:=vtkMRMLScalarVolumeNode",
            "axis 3 index type:=numeric",
            "axis 3 index values:=" + " ".join(values),
        ]
    else:
        k, j, i = array.shape
        data = np.ascontiguousarray(array)
        lines += [
            "dimension: 3",
            "space: left-posterior-superior",
            f"sizes: {i} {j} {k}",
            f"space directions: {directions}",
            "kinds: domain domain domain",
        ]
        extra = []
    lines += ["endian: little", f"encoding: {'gzip' if compress else 'raw'}", f"space origin: {_vector(lps[:3, 3])}"]
    lines += extra
    header = ("\n".join(lines) + "\n\n").encode("latin-1")
    raw = data.astype(data.dtype.newbyteorder("<"), copy=False)
    with open(path, "wb") as handle:
        handle.write(header)
        if compress:
            with gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=1) as zipped:
                zipped.write(memoryview(raw.reshape(-1)).cast("B"))
        else:
            handle.write(memoryview(raw.reshape(-1)).cast("B"))


def nifti_layout(volume: LoadedVolume) -> tuple[np.ndarray, np.ndarray]:
    """(data in NIfTI (i, j, k[, t]) order with rows reversed as dcm2niix, matching RAS affine)."""
    affine = volume.ijk_to_ras.copy()
    rows = volume.array.shape[-2]
    affine[:3, 3] = affine[:3, 3] + affine[:3, 1] * (rows - 1)
    affine[:3, 1] = -affine[:3, 1]
    if volume.array.ndim == 4:
        data = volume.array[:, :, ::-1, :].transpose(3, 2, 1, 0)
    else:
        data = volume.array[:, ::-1, :].transpose(2, 1, 0)
    return data, affine


def _write_nifti_stream(header, array: np.ndarray, path: Path) -> None:
    """Header, then the voxels slice by slice (rows reversed): no full-volume copy, unlike ``nib.save``."""
    header.set_data_offset(352)
    header.set_data_dtype(array.dtype)
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan  # stored values are final (no scaling)
    with (
        open(path, "wb") as raw,
        (
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1)
            if path.name.endswith(".gz")
            else contextlib.nullcontext(raw)
        ) as handle,
    ):
        handle.write(header.binaryblock)
        handle.write(b"\0\0\0\0")  # no extensions
        planes = array.reshape((-1,) + array.shape[-2:])
        little = array.dtype.newbyteorder("<")
        for plane in planes:
            handle.write(np.ascontiguousarray(plane[::-1, :], dtype=little).data)


def _write_nifti(volume: LoadedVolume, path: Path) -> None:
    data, affine = nifti_layout(volume)
    try:
        import nibabel as nib
    except ImportError:
        nib = None
    if nib is not None:
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1, strip_shears=True)  # qform cannot hold the shear of a tilted stack
        image.header.set_xyzt_units("mm", "sec")
        if volume.is_4d:
            repetition = volume.per_volume[0].get("RepetitionTime") if volume.per_volume else None
            zooms = list(image.header.get_zooms())
            zooms[3] = float(repetition) / 1000.0 if repetition else 1.0
            image.header.set_zooms(zooms)
        image.header["descrip"] = volume.name.encode("ascii", "replace")[:79]
        _write_nifti_stream(image.header, volume.array, path)
        return
    import SimpleITK as sitk  # Slicer ships SimpleITK, not nibabel

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    if volume.is_4d:
        raise UserInputError("4D NIfTI export needs nibabel; write a .seq.nrrd instead", path)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith(".gz"))
