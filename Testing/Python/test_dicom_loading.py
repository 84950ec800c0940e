"""DICOM loading is exact: same voxel values and same world geometry as dcm2niix (and SimpleITK), real data.

References: NIfTI files written by dcm2niix 1.0.20260724 from the same DICOM files (see shared/data/INDEX.md).
Comparisons are made in RAS world space: every reference voxel centre is mapped through both affines, never by
assuming an array order. Bad-input cases are made in temporary folders from real files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from MedSegLib.errors import UserInputError

TRANSLATION_TOL_MM = 1e-3
DIRECTION_TOL = 1e-4


def _require(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not found (real scanner data is only on development machines and CI)")
    return path


def _load_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    nib = pytest.importorskip("nibabel")
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    slope, inter = image.header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        data = data * (slope or 1.0) + (inter or 0.0)
    return data, image.affine.astype(np.float64)


def reference_index_map(ijk_to_ras: np.ndarray, ref_affine: np.ndarray) -> np.ndarray:
    """4x4 matrix taking reference voxel indices to our voxel indices (through RAS world space)."""
    return np.linalg.inv(ijk_to_ras) @ ref_affine


def assert_same_geometry(ijk_to_ras: np.ndarray, ref_affine: np.ndarray, shape_ijk: tuple[int, ...],
                         ref_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both grids hold the same voxel centres: the index map is a signed permutation with integer offsets.

    Returns (perm, sign, offset): reference axis a corresponds to our axis perm[a], index = offset + sign * idx.
    """
    m = reference_index_map(ijk_to_ras, ref_affine)
    rot, shift = m[:3, :3], m[:3, 3]
    perm = np.argmax(np.abs(rot), axis=0)
    assert sorted(perm) == [0, 1, 2], f"axes do not correspond: {rot}"
    sign = np.sign(rot[perm, np.arange(3)])
    expected = np.zeros((3, 3))
    expected[perm, np.arange(3)] = sign
    # Compare the world-space columns: directions within 1e-4, corner positions within 1e-3 mm.
    ours_in_ref_order = ijk_to_ras[:3, :3] @ expected
    ref_dirs = ref_affine[:3, :3] / np.linalg.norm(ref_affine[:3, :3], axis=0)
    our_dirs = ours_in_ref_order / np.linalg.norm(ours_in_ref_order, axis=0)
    assert np.abs(ref_dirs - our_dirs).max() < DIRECTION_TOL, (ref_dirs, our_dirs)
    offset = np.rint(shift)
    assert np.abs(shift - offset).max() * np.abs(ijk_to_ras[:3, :3]).max() < TRANSLATION_TOL_MM * 10
    far_corner = np.array(list(np.array(ref_shape[:3]) - 1) + [1.0])
    for corner in (np.array([0, 0, 0, 1.0]), far_corner):
        ref_world = ref_affine @ corner
        ours = ijk_to_ras @ np.append(offset + (expected @ corner[:3]), 1.0)
        assert np.abs(ref_world - ours).max() < TRANSLATION_TOL_MM, (ref_world, ours)
    for axis in range(3):
        last = offset[perm[axis]] + sign[axis] * (ref_shape[axis] - 1)
        assert 0 <= offset[perm[axis]] < shape_ijk[perm[axis]] and 0 <= last < shape_ijk[perm[axis]]
    return perm, sign, offset


def in_reference_order(array_kji: np.ndarray, perm, sign, offset, ref_shape) -> np.ndarray:
    """Our (k, j, i) array re-indexed to the reference's (i, j, k) voxel grid."""
    ours_ijk = array_kji.transpose(2, 1, 0)
    index = [None, None, None]
    for axis in range(3):
        index[perm[axis]] = (offset[perm[axis]] + sign[axis] * np.arange(ref_shape[axis])).astype(int)
    picked = ours_ijk[np.ix_(*index)]  # axes in our order
    return picked.transpose(list(perm))


def compare_exact(volume, ref_path: Path) -> None:
    ref, affine = _load_reference(ref_path)
    arrays = [volume.array] if volume.array.ndim == 3 else list(volume.array)
    assert len(arrays) == (ref.shape[3] if ref.ndim == 4 else 1)
    perm, sign, offset = assert_same_geometry(volume.ijk_to_ras, affine, arrays[0].shape[::-1], ref.shape)
    for t, array in enumerate(arrays):
        ours = in_reference_order(array, perm, sign, offset, ref.shape)
        expected = ref[..., t] if ref.ndim == 4 else ref
        np.testing.assert_array_equal(ours, expected)


def sample_world(volume_array: np.ndarray, ijk_to_ras: np.ndarray, ras_points: np.ndarray) -> np.ndarray:
    """Trilinear sample of a (k, j, i) array at RAS points (N, 3); NaN outside."""
    from scipy.ndimage import map_coordinates

    ijk = (np.linalg.inv(ijk_to_ras) @ np.c_[ras_points, np.ones(len(ras_points))].T)[:3]
    return map_coordinates(volume_array.astype(np.float32), ijk[::-1], order=1, mode="constant", cval=np.nan)


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def loader():
    from MedSegLib.dicom import loader

    return loader


def test_totalsegmentator_ct_exact_spacing_from_positions_and_two_windows(loader):
    folder = _require("totalsegmentator", "example_ct_dicom")
    volumes = loader.load_folder(folder)
    assert len(volumes) == 1
    volume = volumes[0]
    assert volume.array.shape == (20, 512, 512) and volume.array.dtype == np.int16
    assert volume.spacing[2] == pytest.approx(2.0)  # IPP step, not SliceThickness 3
    assert [(c, w) for c, w, _ in volume.window_presets] == [(40.0, 300.0), (300.0, 1500.0)]
    assert not volume.resampled
    # The TotalSegmentator prediction on this series was saved with dcm2niix's affine and grid.
    compare_geometry_only = _require("totalsegmentator", "example_seg_dicom.nii.gz")
    _, affine = _load_reference(compare_geometry_only)
    assert_same_geometry(volume.ijk_to_ras, affine, volume.array.shape[::-1], (512, 512, 20))


def test_philips_ct_exact_against_dcm2niix_and_simpleitk(loader):
    folder = _require("dcm_qa_ct", "In", "Philips")
    ref_path = _require("dcm_qa_ct", "Ref_regenerated_dcm2niix", "1A_TRAUMA_PLAIN_HEAD_DM_Head_202.nii.gz")
    volumes = loader.load_folder(folder)  # DIRFILE is not DICOM and must be skipped
    assert len(volumes) == 1
    volume = volumes[0]
    assert volume.array.shape == (140, 512, 512) and volume.array.dtype == np.int16
    assert volume.window_presets[0][:2] == (40.0, 80.0)
    compare_exact(volume, ref_path)
    sitk = pytest.importorskip("SimpleITK")
    files = [f for f in volume.files]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted(files, key=lambda f: files.index(f)))
    image = reader.Execute()
    itk = sitk.GetArrayFromImage(image)  # (k, j, i) in our file order
    np.testing.assert_array_equal(itk.astype(np.int16), volume.array)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    itk_lps = np.eye(4)
    itk_lps[:3, :3] = direction * np.array(image.GetSpacing())
    itk_lps[:3, 3] = image.GetOrigin()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras
    np.testing.assert_allclose(itk_lps, lps, atol=1e-3)


def test_ge_tilt_keep_acquired_grid_matches_native_dcm2niix(loader):
    folder = _require("dcm_qa_ct", "In", "GE")
    ref_path = _require("dcm_qa_ct", "Ref_regenerated_dcm2niix", "_2.nii.gz")
    volumes = loader.load_folder(folder, keep_acquired_grid=True)
    assert len(volumes) == 1
    volume = volumes[0]
    assert volume.array.shape == (28, 512, 512)
    assert any("keep_acquired_grid" in w for w in volume.warnings)
    assert any("tilt" in w for w in volume.warnings) and any("not uniform" in w for w in volume.warnings)
    ref, affine = _load_reference(ref_path)
    # dcm2niix's native file keeps the acquired slices (flipped rows); its slice axis is only nominal, so
    # compare the voxels exactly and the geometry of the first slice in world space.
    assert ref.shape == (512, 512, 28)
    np.testing.assert_array_equal(volume.array, ref[:, ::-1, :].transpose(2, 1, 0))
    first_row_corner = volume.ijk_to_ras @ np.array([0, 511, 0, 1.0])
    np.testing.assert_allclose(first_row_corner[:3], affine[:3, 3], atol=TRANSLATION_TOL_MM)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 0], affine[:3, 0], atol=DIRECTION_TOL)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 1], -affine[:3, 1], atol=1e-3)
    # Every acquired slice origin is recorded exactly.
    assert volume.acquired_slice_origins_ras.shape == (28, 3)


def test_ge_tilt_default_resampling_matches_dcm2niix_tilt_eq(loader):
    folder = _require("dcm_qa_ct", "In", "GE")
    ref_path = _require("dcm_qa_ct", "Ref_regenerated_dcm2niix", "_2_Tilt_Eq_1.nii.gz")
    volume = loader.load_folder(folder)[0]
    assert volume.resampled and any("resampled" in w for w in volume.warnings)
    ref, affine = _load_reference(ref_path)
    # Same orthogonal patient-space grid as dcm2niix (56 slices of 2.62 mm, 611 rows).
    perm, sign, offset = assert_same_geometry(volume.ijk_to_ras, affine, volume.array.shape[::-1], ref.shape)
    ours = in_reference_order(volume.array, perm, sign, offset, ref.shape)
    inside = ref > -1000  # compare tissue, not the padding / air outside the field of view
    difference = np.abs(ours.astype(np.int32) - ref.astype(np.int32))[inside]
    assert np.median(difference) <= 5, np.median(difference)
    assert np.mean(difference) < 20


def test_nih_ge_epi_4d_exact(loader):
    base = _require("dcm_qa_nih", "In", "20180918GE")
    cases = (("mr_0004", "DCM2NIIX_regression_test_4.nii"), ("mr_0007", "DCM2NIIX_regression_test_7.nii"))
    for series, ref_name in cases:
        volumes = loader.load_folder(base / series)
        assert len(volumes) == 1
        volume = volumes[0]
        assert volume.array.shape == (10, 15, 64, 64)
        assert len(volume.per_volume) == 10
        compare_exact(volume, _require("dcm_qa_nih", "Ref", ref_name))


def test_nih_siemens_mosaic_exact(loader):
    base = _require("dcm_qa_nih", "In", "20180918Si")
    for series, ref_name in (("mr_0003", "EPI_PE=AP_3.nii"), ("mr_0006", "EPI_PE=LR_6.nii")):
        volume = loader.load_folder(base / series)[0]
        assert volume.array.shape == (2, 5, 72, 72)
        compare_exact(volume, _require("dcm_qa_nih", "Ref", ref_name))


def test_uih_dti_grid_4d_exact(loader):
    folder = _require("dcm_qa_uih_dti", "In")
    volume = loader.load_folder(folder)[0]
    assert volume.array.shape == (17, 20, 64, 64)
    bvals = np.loadtxt(_require("dcm_qa_uih_dti", "Ref", "dti_tra_dir16_PA_6_134431.bval"))
    np.testing.assert_allclose([v["DiffusionBValue"] for v in volume.per_volume], bvals, atol=1e-3)
    assert "DiffusionBValue" in volume.varying
    compare_exact(volume, _require("dcm_qa_uih_dti", "Ref", "dti_tra_dir16_PA_6_134431.nii"))


def test_hazen_ge_inversion_times_across_series_become_one_4d(loader):
    folder = _require("hazen_relaxometry", "T1", "site3_ge")
    volumes = loader.load_folder(folder)
    assert len(volumes) == 1
    volume = volumes[0]
    assert volume.array.shape == (6, 2, 256, 256)
    assert [v["InversionTime"] for v in volume.per_volume] == [50.0, 100.0, 200.0, 400.0, 600.0, 800.0]
    assert "InversionTime" in volume.varying


def test_hazen_siemens_echoes_sorted_by_echo_time(loader):
    folder = _require("hazen_relaxometry", "T2", "site1_20200218", "plate4")
    volume = loader.load_folder(folder)[0]
    echo_times = [v["EchoTime"] for v in volume.per_volume]
    assert volume.array.shape[0] == 32 and echo_times == sorted(echo_times)
    assert echo_times[0] == pytest.approx(12.7) and echo_times[-1] == pytest.approx(406.4)


# ------------------------------------------------------------------------------------------------ bad input


def _copy(files, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for number, source in enumerate(files):
        copy = target / f"{number:03d}.dcm"
        shutil.copyfile(source, copy)
        copies.append(copy)
    return copies


@pytest.fixture()
def ct_files() -> list[Path]:
    folder = _require("totalsegmentator", "example_ct_dicom")
    return sorted(p for p in folder.iterdir() if p.is_file())[:6]


def test_missing_empty_and_non_dicom_folders_are_user_errors(loader, tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        loader.load_folder(tmp_path / "nope")
    with pytest.raises(UserInputError, match="empty"):
        loader.load_folder(tmp_path)
    (tmp_path / "README.txt").write_text("not dicom")
    with pytest.raises(UserInputError, match="no loadable DICOM"):
        loader.load_folder(tmp_path)


def test_truncated_file_names_the_file(loader, tmp_path, ct_files):
    copies = _copy(ct_files, tmp_path)
    pydicom = pytest.importorskip("pydicom")
    # Native (uncompressed) copy, then cut in the middle of the pixel data.
    ds = pydicom.dcmread(copies[2])
    ds.decompress()
    ds.save_as(copies[2])
    data = copies[2].read_bytes()
    copies[2].write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserInputError) as error:
        loader.load_folder(tmp_path)
    assert copies[2].name in str(error.value)


def test_no_pixel_data_is_skipped(loader, tmp_path, ct_files):
    pydicom = pytest.importorskip("pydicom")
    copies = _copy(ct_files, tmp_path)
    ds = pydicom.dcmread(copies[0])
    del ds.PixelData
    ds.save_as(copies[0])
    volume = loader.load_folder(tmp_path)[0]
    assert volume.array.shape[0] == len(copies) - 1


def test_mixed_matrix_sizes_are_split_with_warning(loader, tmp_path, ct_files):
    pydicom = pytest.importorskip("pydicom")
    copies = _copy(ct_files, tmp_path)
    ds = pydicom.dcmread(copies[0])
    arr = ds.pixel_array[::2, ::2].copy()
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(copies[0], enforce_file_format=True)
    loadables = loader.examine_files(copies)
    assert [len(item.frames) for item in loadables] == [5, 1]
    assert any("matrix size" in w for w in loadables[0].warnings)
    volumes = loader.load_folder(tmp_path)
    assert volumes[0].array.shape == (5, 512, 512)


def test_missing_position_is_left_out_with_warning(loader, tmp_path, ct_files):
    pydicom = pytest.importorskip("pydicom")
    copies = _copy(ct_files, tmp_path)
    ds = pydicom.dcmread(copies[3])
    del ds.ImagePositionPatient
    ds.save_as(copies[3])
    volume = loader.load_folder(tmp_path)[0]
    assert any("ImagePositionPatient" in w for w in volume.warnings)
    # The image without position is left out; the gap it leaves is reported and filled by interpolation.
    assert any("missing" in w for w in volume.warnings) and volume.resampled
    assert volume.array.shape[0] == 6 and volume.spacing[2] == pytest.approx(2.0)
    kept = loader.load_folder(tmp_path, keep_acquired_grid=True)[0]
    assert kept.array.shape[0] == 5 and any("keep_acquired_grid" in w for w in kept.warnings)


def test_duplicate_sop_instance_uid_copy_is_ignored(loader, tmp_path, ct_files):
    pydicom = pytest.importorskip("pydicom")
    copies = _copy(ct_files, tmp_path)
    for number, path in enumerate(copies):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = f"1.2.3.4.{number}"
        ds.save_as(path)
    shutil.copyfile(copies[1], tmp_path / "copy_of_1.dcm")
    volume = loader.load_folder(tmp_path)[0]
    assert volume.array.shape[0] == len(copies)
    assert any("same SOPInstanceUID" in w for w in volume.warnings)


def test_unsupported_transfer_syntax_names_file_and_syntax(loader, tmp_path, ct_files):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate

    copies = _copy(ct_files[:3], tmp_path)
    ds = pydicom.dcmread(copies[1])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(copies[1])
    with pytest.raises(UserInputError) as error:
        loader.load_folder(tmp_path)
    text = str(error.value)
    assert copies[1].name in text and "1.2.840.10008.1.2.4.100" in text
