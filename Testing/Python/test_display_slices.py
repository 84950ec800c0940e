"""Display-oriented slices: the patient axis each array axis runs along, whatever spacing and tilt."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegLib.display_slices import display_pixel_spacing, display_slice, slice_count
from MedSegLib.volume_nodes import ijk_to_ras_from_geometry


def _tilted_geometry(tilt_degrees: float, spacing=(0.49, 0.49, 2.62)) -> np.ndarray:
    """LPS-acquired axial stack (i -> patient left, j -> posterior) tilted about the R-L axis, as gantry tilt does."""
    angle = np.radians(tilt_degrees)
    direction = np.array(
        [[-1.0, 0.0, 0.0], [0.0, -np.cos(angle), -np.sin(angle)], [0.0, -np.sin(angle), np.cos(angle)]]
    )
    return ijk_to_ras_from_geometry(spacing, direction, (0.0, 0.0, 0.0))


@pytest.mark.parametrize("tilt", [0.0, 18.5, -30.0])
def test_axial_slice_picks_the_slice_axis_despite_thick_slices(tilt):
    array = np.zeros((7, 11, 13), dtype=np.int16)  # (k, j, i)
    ijk_to_ras = _tilted_geometry(tilt)
    assert slice_count(array, ijk_to_ras, "axial") == 7
    assert display_slice(array, ijk_to_ras, "axial", 3).shape == (11, 13)
    assert display_slice(array, ijk_to_ras, "sagittal", 5).shape == (7, 11)
    assert display_pixel_spacing(ijk_to_ras, "axial") == pytest.approx((0.49, 0.49))


def test_axial_orientation_patient_right_on_screen_left_anterior_on_top():
    array = np.zeros((3, 4, 5), dtype=np.int16)
    array[1, 0, 0] = 1  # voxel i=0 (patient right-most, LPS i axis), j=0 (anterior-most)
    image = display_slice(array, _tilted_geometry(0.0), "axial", 1)
    assert image[0, 0] == 1
    flipped = _tilted_geometry(0.0)
    flipped[:3, 0] *= -1  # i now runs towards patient right: the marked voxel is patient left-most
    image = display_slice(array, flipped, "axial", 1)
    assert image[0, -1] == 1
