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
    slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)  # the header copy hides them
    data = image.dataobj.get_unscaled()
    if slope.is_integer() and inter.is_integer():  # keep integers exact (and fast)
        if (slope, inter) != (1.0, 0.0):
            data = data.astype(np.int32) * int(slope) + int(inter)
    else:
        data = data * slope + inter
    return data, image.affine.astype(np.float64)


def assert_equal_arrays(ours: np.ndarray, expected: np.ndarray) -> None:
    """Exact equality (much faster than numpy.testing on 36 M voxels), with a useful message."""
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    if not np.array_equal(ours, expected):
        wrong = np.count_nonzero(ours != expected)
        raise AssertionError(f"{wrong} of {ours.size} voxels differ")


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
    index = [slice(None)] * 3
    for axis in range(3):
        start, count = int(offset[perm[axis]]), ref_shape[axis]
        if sign[axis] > 0:
            index[perm[axis]] = slice(start, start + count)
        else:
            stop = start - count
            index[perm[axis]] = slice(start, stop if stop >= 0 else None, -1)
    picked = ours_ijk[tuple(index)]  # axes in our order
    return picked.transpose(list(perm))


def compare_exact(volume, ref_path: Path) -> None:
    ref, affine = _load_reference(ref_path)
    assert np.linalg.det(volume.ijk_to_ras[:3, :3]) > 0  # right-handed IJK: Slicer keeps the slice order
    arrays = [volume.array] if volume.array.ndim == 3 else list(volume.array)
    assert len(arrays) == (ref.shape[3] if ref.ndim == 4 else 1)
    perm, sign, offset = assert_same_geometry(volume.ijk_to_ras, affine, arrays[0].shape[::-1], ref.shape)
    for t, array in enumerate(arrays):
        ours = in_reference_order(array, perm, sign, offset, ref.shape)
        expected = ref[..., t] if ref.ndim == 4 else ref
        assert_equal_arrays(ours, expected)


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
    # JPEG 2000 decoded by pydicom's plugins must equal GDCM's decoding (SimpleITK).
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(volume.files)
    image = reader.Execute()
    assert_equal_arrays(sitk.GetArrayFromImage(image).astype(np.int16), volume.array)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-6)


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
    assert_equal_arrays(itk.astype(np.int16), volume.array)
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
    assert_equal_arrays(volume.array, ref[:, ::-1, :].transpose(2, 1, 0))
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
    assert any("without pixel data" in w and copies[0].name in w for w in volume.warnings)


def test_raw_dataset_without_preamble_is_read(loader, tmp_path, ct_files):
    """Old exports have no 128-byte preamble / 'DICM' / file meta (dcm2niix accepts them too)."""
    pydicom = pytest.importorskip("pydicom")
    copies = _copy(ct_files[:3], tmp_path)
    reference = loader.load_folder(tmp_path)[0]
    ds = pydicom.dcmread(copies[1])
    ds.decompress()
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(copies[1], ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert copies[1].read_bytes()[:2] == b"\x08\x00"
    volume = loader.load_folder(tmp_path)[0]
    assert_equal_arrays(volume.array, reference.array)


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


def test_fast_header_scan_equals_pydicom_parse():
    """The quick tag scan used for ordinary files must yield exactly what the full pydicom parse yields."""
    from MedSegLib.dicom.series_split import read_frames

    folders = [("totalsegmentator", "example_ct_dicom"), ("dcm_qa_ct", "In", "GE"),
               ("dcm_qa_ct", "In", "Philips", "S21570", "S2020"), ("dcm_qa_nih", "In", "20180918GE", "mr_0004"),
               ("hazen_relaxometry", "T1", "site3_ge", "plate5"),
               ("hazen_relaxometry", "T2", "site1_20200218", "plate4")]
    checked = 0
    for parts in folders:
        folder = _require(*parts)
        for path in sorted(p for p in folder.iterdir() if p.suffix != ".txt" and p.name != "DIRFILE")[:3]:
            fast, slow = read_frames(path), read_frames(path, fast=False)
            assert len(fast) == len(slow) == 1
            a, b = fast[0], slow[0]
            for name in ("rows", "cols", "pixel_spacing", "slope", "intercept", "philips_scale_slope", "series_uid",
                         "study_uid", "frame_of_reference", "sop_uid", "instance_number", "image_type", "windows",
                         "params"):
                assert getattr(a, name) == getattr(b, name), (path, name, getattr(a, name), getattr(b, name))
            np.testing.assert_array_equal(a.position, b.position)
            np.testing.assert_array_equal(a.orientation, b.orientation)
            for name in ("transfer_syntax", "rows", "cols", "bits_allocated", "bits_stored", "pixel_representation",
                         "pixel_offset", "pixel_length", "padding_value", "info", "manufacturer", "modality"):
                assert getattr(a.file, name) == getattr(b.file, name), (path, name)
            checked += 1
    assert checked == 18


# ------------------------------------------------------------------------------------------------ files and CLI


def test_written_nifti_is_voxel_identical_to_dcm2niix(loader, tmp_path):
    nib = pytest.importorskip("nibabel")
    from MedSegLib.dicom.volume_files import write_volume

    volume = loader.load_folder(_require("dcm_qa_uih_dti", "In"))[0]
    path = write_volume(volume, tmp_path / "dti.nii.gz")
    ours = nib.load(str(path))
    ref = nib.load(str(_require("dcm_qa_uih_dti", "Ref", "dti_tra_dir16_PA_6_134431.nii")))
    assert ours.shape == ref.shape == (64, 64, 20, 17)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=TRANSLATION_TOL_MM)
    assert int(ours.header["sform_code"]) == int(ours.header["qform_code"]) == 1


def test_written_nrrd_matches_volume_geometry(loader, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from MedSegLib.dicom.volume_files import write_volume

    volume = loader.load_folder(_require("totalsegmentator", "example_ct_dicom"))[0]
    image = sitk.ReadImage(str(write_volume(volume, tmp_path / "ct.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras
    np.testing.assert_allclose(image.GetOrigin(), lps[:3, 3], atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-6)


def _cli(*args: str) -> tuple[int, str, str]:
    import argparse
    import contextlib
    import io

    from MedSegLib.cli.dicom_load_command import register_load_command

    parser = argparse.ArgumentParser(prog="medseg")
    dicom = parser.add_subparsers().add_parser("dicom").add_subparsers()
    register_load_command(dicom)
    namespace = parser.parse_args(["dicom", "load", *args])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = namespace.func(namespace)
        except UserInputError as error:
            return 2, out.getvalue(), error.one_line()
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_4d_and_numbered_files(tmp_path):
    nib = pytest.importorskip("nibabel")
    code, out, _ = _cli(str(_require("hazen_relaxometry", "T1", "site3_ge")), "-o", str(tmp_path / "t1.nii.gz"))
    assert code == 0 and nib.load(str(tmp_path / "t1.nii.gz")).shape == (256, 256, 2, 6)
    code, out, _ = _cli(str(_require("dcm_qa_nih", "In", "20180918Si")), "-o", str(tmp_path / "epi.nii.gz"))
    assert code == 0 and "4 separate volumes" in out
    assert sorted(p.name for p in tmp_path.glob("epi_*.nii.gz")) == [f"epi_{n}.nii.gz" for n in (1, 2, 3, 4)]
    code, _, err = _cli(str(_require("dcm_qa_ct", "In", "GE")), "-o", str(tmp_path / "ge.nrrd"),
                        "--keep-acquired-grid")
    assert code == 0 and "keep_acquired_grid" in err


def test_cli_bad_folders_exit_2_with_one_line(tmp_path):
    assert _cli(str(tmp_path / "missing"), "-o", str(tmp_path / "x.nrrd"))[0] == 2
    (tmp_path / "empty").mkdir()
    code, _, message = _cli(str(tmp_path / "empty"), "-o", str(tmp_path / "x.nrrd"))
    assert code == 2 and "empty" in message and "\n" not in message
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    code, _, message = _cli(str(tmp_path / "text"), "-o", str(tmp_path / "x.nrrd"))
    assert code == 2 and "no loadable DICOM" in message
    assert not list(tmp_path.glob("x*"))


# ------------------------------------------------------------------------------------------------ enhanced multi-frame


def _enhanced_from_single_frames(files: list[Path], target: Path, volumes: int, slopes: list[float],
                                 rle: bool = False) -> None:
    """Build an Enhanced MR object from real single-frame files: frames shuffled, per-frame rescale and position."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    datasets = [pydicom.dcmread(f) for f in files]
    order = np.random.default_rng(1).permutation(len(datasets))
    first = datasets[0]
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "Modality", "Manufacturer", "Rows", "Columns",
                    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "enhanced test"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(datasets)
    shared = Dataset()
    orientation, measures, echo = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    echo.EffectiveEchoTime = float(first.EchoTime)
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.MREchoSequence = Sequence([echo])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    slices = len(datasets) // volumes
    for number in order:
        source = datasets[number]
        item, plane, content, transform = Dataset(), Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = source.ImagePositionPatient
        content.TemporalPositionIndex = int(number // slices) + 1
        content.InStackPositionNumber = int(number % slices) + 1
        transform.RescaleSlope = slopes[number % len(slopes)]
        transform.RescaleIntercept = 0
        transform.RescaleType = "US"
        item.PlanePositionSequence = Sequence([plane])
        item.FrameContentSequence = Sequence([content])
        item.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(datasets[number].pixel_array.astype(datasets[0].pixel_array.dtype).tobytes()
                            for number in order)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if rle:
        ds.compress(pydicom.uid.RLELossless)  # encapsulated frames: decoded frame by frame via pydicom.pixels
    ds.save_as(target, enforce_file_format=True)


@pytest.mark.parametrize("rle", [False, True])
def test_enhanced_multiframe_per_frame_geometry_and_rescale(loader, tmp_path, rle):
    folder = _require("dcm_qa_nih", "In", "20180918GE", "mr_0004")
    files = sorted(folder.glob("*.dcm"))[:30]  # 15 slices x 2 time points
    reference = loader.load_series_files(files)[0]
    assert reference.array.shape == (2, 15, 64, 64)
    slopes = [1.0, 0.5, 2.0]
    _enhanced_from_single_frames(files, tmp_path / "enhanced.dcm", volumes=2, slopes=slopes, rle=rle)
    volume = loader.load_folder(tmp_path)[0]
    assert volume.array.shape == (2, 15, 64, 64)
    assert volume.array.dtype == np.float32  # slope 0.5 makes half-integers
    np.testing.assert_allclose(volume.ijk_to_ras, reference.ijk_to_ras, atol=1e-6)
    expected = np.empty(reference.array.shape, dtype=np.float64)
    for number in range(30):
        t, k = divmod(number, 15)
        expected[t, k] = reference.array[t, k] * slopes[number % len(slopes)]
    np.testing.assert_array_equal(volume.array, expected)
    assert [v.get("TemporalPositionIndex") for v in volume.per_volume] == [1, 2]


# ------------------------------------------------------------------------------------------------ geometry units


def _tilted_stack(gaps: list[float], tilt_deg: float, rows: int = 40, cols: int = 30):
    """Axial-like slices (IOP tilted about x) whose IPPs move along z only (gantry tilt), and a linear ramp."""
    angle = np.radians(tilt_deg)
    iop = np.array([1.0, 0, 0, 0, np.cos(angle), -np.sin(angle)])
    r, c = iop[:3], iop[3:]
    z = np.concatenate([[0.0], np.cumsum(gaps)])
    positions = np.array([[-10.0, -20.0, 5.0 + value] for value in z])
    spacing = (0.8, 0.6)  # (row spacing along c, column spacing along r)

    def ramp(points):  # any linear function is reproduced exactly by linear interpolation
        return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2]

    jj, ii = np.mgrid[0:rows, 0:cols]
    stack = np.stack([ramp(p + ii[..., None] * spacing[1] * r + jj[..., None] * spacing[0] * c) for p in positions])
    return stack.astype(np.float32), positions, iop, spacing, ramp


def test_analyse_stack_reports_missing_duplicate_and_tilt():
    from MedSegLib.dicom.slice_geometry import analyse_stack

    _, positions, iop, spacing, _ = _tilted_stack([2, 2, 4, 2], 0.0)
    geo = analyse_stack(positions, iop, spacing)
    assert not geo.uniform and geo.missing_slices == 1 and not geo.tilted
    _, positions, iop, spacing, _ = _tilted_stack([2, 0, 2], 0.0)
    assert analyse_stack(positions, iop, spacing).duplicates == 1
    _, positions, iop, spacing, _ = _tilted_stack([3, 3, 3], 15.0)
    geo = analyse_stack(positions, iop, spacing)
    assert geo.tilted and geo.uniform and geo.tilt_degrees == pytest.approx(15.0, abs=1e-6)
    assert geo.slice_step == pytest.approx(3 * np.cos(np.radians(15)))


@pytest.mark.parametrize("gaps,tilt", [([3, 3, 3, 3], 20.0), ([2, 2, 5, 1, 3], 0.0), ([2, 5, 1, 3, 3], -12.0)])
def test_resampling_reproduces_a_linear_field_in_patient_space(gaps, tilt):
    from MedSegLib.dicom.slice_geometry import analyse_stack, resample_to_regular_grid

    stack, positions, iop, spacing, ramp = _tilted_stack(gaps, tilt)
    geo = analyse_stack(positions, iop, spacing)
    out, ijk_to_lps = resample_to_regular_grid(stack, geo, fill=np.nan)
    # Orthogonal grid: columns mutually perpendicular.
    cols = ijk_to_lps[:3, :3] / np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    np.testing.assert_allclose(cols.T @ cols, np.eye(3), atol=1e-9)
    k, j, i = np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij")
    world = (ijk_to_lps @ np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1))[:3].T.reshape(out.shape + (3,))
    inside = np.isfinite(out)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out[inside], ramp(world)[inside], atol=1e-2)
    # The first and last acquired slice planes lie on the grid.
    assert np.linalg.norm(ijk_to_lps[:3, 2]) * (out.shape[0] - 1) == pytest.approx(geo.distances[-1])


def test_keep_acquired_grid_is_exact_for_uniform_tilt():
    from MedSegLib.dicom.slice_geometry import analyse_stack

    _, positions, iop, spacing, _ = _tilted_stack([3, 3, 3, 3], 20.0)
    geo = analyse_stack(positions, iop, spacing)
    sheared = geo.affine_lps(sheared=True)
    for k, position in enumerate(positions):
        np.testing.assert_allclose(sheared @ [0, 0, k, 1], np.append(position, 1), atol=1e-9)


def test_philips_private_scale_slope_option(loader, tmp_path):
    """Default: display values DV = SV*RS + RI. Option: FP = DV / (RS * SS) with SS = (2005,100E), as dcm2niix."""
    pydicom = pytest.importorskip("pydicom")
    folder = _require("dcm_qa_ct", "In", "Philips", "S21570", "S2020")
    sources = sorted((p for p in folder.iterdir() if p.name != "DIRFILE"), key=lambda p: int(p.name[1:]))[:3]
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.RescaleSlope = 2
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 4.0)
        ds.save_as(tmp_path / f"{number}.dcm")
    display = loader.load_folder(tmp_path)[0]
    floating = loader.load_folder(tmp_path, use_philips_scale_slope=True)[0]
    assert display.array.dtype == np.int16 and floating.array.dtype == np.float32
    np.testing.assert_allclose(floating.array, display.array.astype(np.float64) / (2 * 4.0), rtol=1e-6)
    stored = pydicom.dcmread(sources[0]).pixel_array
    np.testing.assert_array_equal(display.array[0], stored.astype(np.int32) * 2 - 1024)


def test_unsigned_values_beyond_int16_become_float32(loader, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = _require("dcm_qa_ct", "In", "Philips", "S21570", "S2020")
    sources = sorted((p for p in folder.iterdir() if p.name != "DIRFILE"), key=lambda p: int(p.name[1:]))[:3]
    expected = []
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        pixels = ds.pixel_array.astype(np.uint16)
        if number == 1:
            pixels[10, 10] = 60000
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleIntercept = 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / f"{number}.dcm")
        expected.append(pixels)
    small = loader.load_series_files([tmp_path / "0.dcm", tmp_path / "2.dcm"])[0]
    assert small.array.dtype == np.int16  # every value fits: stays int16
    volume = loader.load_folder(tmp_path)[0]
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, np.stack(expected).astype(np.float32))
    assert volume.array[1, 10, 10] == 60000


def test_sequence_nrrd_reads_back_in_slicer(loader, runtime, tmp_path):
    """Slicer's own volume-sequence reader gets the same voxels, geometry and inversion-time index."""
    from vtk.util.numpy_support import vtk_to_numpy

    from MedSegLib.dicom.volume_files import write_volume

    volume = loader.load_folder(_require("hazen_relaxometry", "T1", "site3_ge"))[0]
    path = write_volume(volume, tmp_path / "t1.seq.nrrd")
    sequence = runtime.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = runtime.scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(sequence)
    assert sequence.GetIndexName() == "InversionTime" and sequence.GetIndexUnit() == "ms"
    assert [float(sequence.GetNthIndexValue(n)) for n in range(6)] == [50, 100, 200, 400, 600, 800]
    import vtk

    for t in range(6):
        node = sequence.GetNthDataNode(t)
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
        voxels = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(volume.array.shape[1:])
        assert_equal_arrays(voxels, volume.array[t])
    runtime.scene.Clear(0)


def test_peak_memory_and_progress(loader):
    """Pixels go straight into the preallocated volume: peak numpy memory <= 1.3 x the output volume."""
    import tracemalloc

    loadable = loader.examine_files(loader.list_folder_files(_require("dcm_qa_ct", "In", "Philips")))[0]
    calls = []
    tracemalloc.start()
    try:
        volume = loader.load_loadable(loadable, progress=lambda done, total: calls.append((done, total)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.3 * volume.array.nbytes, peak / volume.array.nbytes
    assert calls[-1] == (140, 140) and len(calls) == 140


def test_incomplete_volume_of_a_4d_series_is_left_out_with_warning(loader, tmp_path):
    folder = _require("dcm_qa_nih", "In", "20180918GE", "mr_0004")
    files = sorted(folder.glob("*.dcm"))[:45]  # 3 volumes of 15 slices
    copies = _copy(files[:44], tmp_path)  # the last slice of volume 3 is missing
    volume = loader.load_folder(tmp_path)[0]
    assert volume.array.shape == (2, 15, 64, 64)
    assert any("repeat an unequal number" in w for w in volume.warnings)
    full = loader.load_series_files(files[:30])[0]
    assert_equal_arrays(volume.array, full.array)
    assert len(copies) == 44


def test_incomplete_echo_is_left_out_by_echo_time(loader, tmp_path):
    base = _require("hazen_relaxometry", "T2", "site3_ge")
    files = sorted(base.rglob("Z*"))
    assert len(files) == 16  # 8 echoes x 2 plates
    volume_full = loader.load_series_files(files)[0]
    dropped = [f for f in files if f.name != "Z832"]  # one plate of the longest echo
    volume = loader.load_series_files(dropped)[0]
    assert volume.array.shape == (7, 2, 256, 256)
    assert any("incomplete volume(s) (by EchoTime)" in w for w in volume.warnings)
    assert [v["EchoTime"] for v in volume.per_volume] == [v["EchoTime"] for v in volume_full.per_volume][:7]
    assert_equal_arrays(volume.array, volume_full.array[:7])


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100", ["", "ISO 2022 IR 87"]])
def test_patient_names_decode_like_pydicom(tmp_path, ct_files, charset):
    pydicom = pytest.importorskip("pydicom")
    from MedSegLib.dicom.series_split import read_frames

    ds = pydicom.dcmread(ct_files[0])
    ds.SpecificCharacterSet = charset
    ds.PatientName = "Müller^Jörg" if charset != ["", "ISO 2022 IR 87"] else "Yamada^Tarou"
    ds.SeriesDescription = "Kopf nativ"
    path = tmp_path / "named.dcm"
    ds.save_as(path)
    assert read_frames(path)[0].file.info == read_frames(path, fast=False)[0].file.info


def test_series_differing_in_several_parameters_and_protocol_stay_separate(loader, tmp_path):
    """A T1 and a T2 sharing a slice prescription are two volumes, not one 4D experiment."""
    pydicom = pytest.importorskip("pydicom")
    sources = sorted(_require("hazen_relaxometry", "T1", "site3_ge").rglob("Z*"))
    by_ti: dict[float, list[Path]] = {}
    for path in sources:
        by_ti.setdefault(float(pydicom.dcmread(path, stop_before_pixels=True).InversionTime), []).append(path)
    for name, ti, te, tr in (("t1", 50.0, 10, 500), ("t2", 100.0, 90, 4000)):
        for number, path in enumerate(by_ti[ti]):
            ds = pydicom.dcmread(path)
            ds.SeriesDescription, ds.EchoTime, ds.RepetitionTime = f"{name} axial", te, tr
            del ds.InversionTime
            ds.save_as(tmp_path / f"{name}_{number}.dcm")
    loadables = [item for item in loader.examine_files(sorted(tmp_path.iterdir())) if item.selected]
    assert sorted(item.n_volumes for item in loadables) == [1, 1]
    assert sorted(item.name.split(": ")[-1] for item in loadables) == ["t1 axial", "t2 axial"]
