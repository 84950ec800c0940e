"""Exact conversions between numpy / SimpleITK images and MRML volume nodes.

Conventions (the source of most geometry bugs, so spelled out once):
- A numpy volume is C-ordered ``array[k, j, i]`` (slice, row, column), as ``slicer.util.arrayFromVolume``.
- MRML stores geometry as the 4x4 ``IJKToRAS`` matrix: RAS world position of voxel index (i, j, k).
- ITK / SimpleITK / DICOM use LPS: ``LPS = diag(-1, -1, 1) @ RAS``; ITK's direction matrix holds unit
  column vectors, spacing the column norms and origin the position of voxel (0, 0, 0).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from MedSegLib.runtime import resolve_scene

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def vtk_matrix_to_numpy(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_from_geometry(spacing: Tuple[float, float, float], direction_ras: np.ndarray, origin_ras) -> np.ndarray:
    """Build IJKToRAS from spacing (i, j, k), a 3x3 matrix of unit RAS column vectors and an RAS origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(direction_ras, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)[None, :]
    matrix[:3, 3] = np.asarray(origin_ras, dtype=np.float64)
    return matrix


def split_ijk_to_ras(ijk_to_ras: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, unit direction columns, origin) of an IJKToRAS matrix."""
    linear = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate IJKToRAS matrix (zero spacing): {ijk_to_ras.tolist()}")
    return spacing, linear / spacing[None, :], np.asarray(ijk_to_ras, dtype=np.float64)[:3, 3].copy()


def set_ijk_to_ras(node: Any, ijk_to_ras: np.ndarray) -> None:
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(np.asarray(ijk_to_ras, dtype=np.float64)))


def get_ijk_to_ras(node: Any) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return vtk_matrix_to_numpy(matrix)


def add_volume_node(
    array_kji: np.ndarray,
    ijk_to_ras: Optional[np.ndarray] = None,
    name: str = "Volume",
    scene: Any = None,
    label: bool = False,
) -> Any:
    """Add a scalar (or label map) volume node holding a copy of ``array_kji`` with the given geometry."""
    import slicer

    scene = resolve_scene(scene)
    array_kji = np.asarray(array_kji)
    if array_kji.ndim != 3:
        raise ValueError(f"expected a 3D array (k, j, i), got shape {array_kji.shape}")
    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    set_ijk_to_ras(node, np.eye(4) if ijk_to_ras is None else ijk_to_ras)
    node.CreateDefaultDisplayNodes()
    return node


def array_and_ijk_to_ras(node: Any, copy: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """The voxel array ``[k, j, i]`` (a zero-copy view unless ``copy``) and IJKToRAS of a volume node."""
    import slicer

    array = slicer.util.arrayFromVolume(node)
    return (array.copy() if copy else array), get_ijk_to_ras(node)


def sitk_image_from_volume_node(node: Any) -> Any:
    """A SimpleITK image (LPS physical space) with the node's voxels and exact geometry."""
    import SimpleITK as sitk

    array, ijk_to_ras = array_and_ijk_to_ras(node)
    image = sitk.GetImageFromArray(array.copy())
    spacing, direction, origin = split_ijk_to_ras(RAS_FROM_LPS @ ijk_to_ras)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in origin))
    return image


def ijk_to_ras_from_sitk(image: Any) -> np.ndarray:
    """IJKToRAS of a 3D SimpleITK image."""
    direction_lps = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = ijk_to_ras_from_geometry(image.GetSpacing(), direction_lps, image.GetOrigin())
    return RAS_FROM_LPS @ ijk_to_lps


def volume_node_from_sitk(image: Any, name: str = "Volume", scene: Any = None, label: bool = False) -> Any:
    """Add a volume node from a 3D SimpleITK image, keeping voxels and geometry exactly."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("only 3D scalar SimpleITK images can become scalar volume nodes")
    return add_volume_node(sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image), name, scene, label)


def ras_of_voxels(ijk_to_ras: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """RAS positions of voxel indices given as rows (i, j, k)."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
