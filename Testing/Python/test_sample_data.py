"""Built-in sample data: the CT and MR phantoms read back exactly, carry the intended values and tags,
and are deterministic. Small grids keep the whole file to a few seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage, special

from MedSegLib.sample_data import (
    DEFAULT_CT_SHAPE,
    DEFAULT_MR_SHAPE,
    DEFAULT_TI_MS,
    LABEL_NAMES,
    NIST_SPHERES_MS,
    TISSUE_HU,
    ir_signal,
    make_ct_phantom,
    make_mr_phantom,
    rescale_for_storage,
    se_signal,
    simulate_ir_series,
    simulate_se_series,
    write_all_sample_data,
    write_ct_phantom,
    write_ct_series,
    write_mr_ir_series,
    write_mr_se_series,
    write_truth_maps,
)

CT_SHAPE = (16, 128, 128)
CT_SPACING = (5.0, 3.0, 3.0)
CT_SEED = 7

MR_SHAPE = (6, 96, 96)
MR_SPACING = (4.0, 2.5, 2.5)
MR_SEED = 3
MR_SIGMA = 0.02
IR_TI = (50.0, 150.0, 400.0, 1000.0, 2500.0)
IR_TR = (3000.0, 3000.0, 4000.0, 5000.0, 6000.0)  # per-TI TR
SE_TE = tuple(12.0 * (n + 1) for n in range(8))


def read_series(folder: Path) -> List[pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


def file_bytes(folder: Path) -> Dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def ct_phantom():
    return make_ct_phantom(CT_SHAPE, CT_SPACING, seed=CT_SEED)


@pytest.fixture(scope="module")
def ct_folder(ct_phantom, tmp_path_factory):
    return write_ct_series(tmp_path_factory.mktemp("ct"), ct_phantom)


def voxel_centroid_lps(phantom, mask: np.ndarray) -> np.ndarray:
    k, j, i = (idx.mean() for idx in np.nonzero(mask))
    dz, dy, dx = phantom.spacing
    x0, y0, z0 = phantom.origin_lps
    return np.array([x0 + i * dx, y0 + j * dy, z0 + k * dz])


# --------------------------------------------------------------------------------------------- CT


def test_ct_phantom_arrays(ct_phantom):
    assert ct_phantom.hu.shape == CT_SHAPE and ct_phantom.hu.dtype == np.int16
    assert ct_phantom.labels.shape == CT_SHAPE and ct_phantom.labels.dtype == np.uint8
    assert ct_phantom.label_names == {
        1: "body", 2: "lung_left", 3: "lung_right", 4: "airway", 5: "spine", 6: "ribs", 7: "heart", 8: "liver"
    }
    assert set(np.unique(ct_phantom.labels)) == set(range(9)), "every labelled structure must appear"
    assert ct_phantom.hu.min() >= -1024 and ct_phantom.hu.max() <= 3071
    assert ct_phantom.spacing == CT_SPACING
    assert ct_phantom.origin_lps == (-190.5, -190.5, -37.5)


def test_ct_dicom_tags_and_exact_hu(ct_phantom, ct_folder):
    datasets = read_series(ct_folder)
    assert [p.name for p in sorted(ct_folder.iterdir())] == [f"CT{n:06d}.dcm" for n in range(1, 17)]
    assert len(datasets) == CT_SHAPE[0]
    assert len({ds.SOPInstanceUID for ds in datasets}) == CT_SHAPE[0]
    for uid_tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds.data_element(uid_tag).value for ds in datasets}) == 1
    x0, y0, z0 = ct_phantom.origin_lps
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.Modality == "CT" and ds.Manufacturer == "MedSeg" and str(ds.PatientName) == "MedSeg^Phantom"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.RescaleType) == (-1024.0, 1.0, "HU")
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([x0, y0, z0 + k * CT_SPACING[0]])
        assert [float(v) for v in ds.PixelSpacing] == [CT_SPACING[1], CT_SPACING[2]]
        assert float(ds.SliceThickness) == CT_SPACING[0]
        assert ds.InstanceNumber == k + 1 and ds.StudyDate == "20250101" and ds.PatientID
        assert [float(v) for v in ds.WindowCenter][:2] == [40.0, -600.0]
        assert [float(v) for v in ds.WindowWidth][:2] == [400.0, 1500.0]
        assert len(ds.WindowCenterWidthExplanation) == len(ds.WindowCenter) == len(ds.WindowWidth)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, ct_phantom.hu[k])


def test_ct_reads_with_simpleitk(ct_phantom, ct_folder):
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(ct_folder))
    assert len(files) == CT_SHAPE[0]
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkInt16)
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct_phantom.hu)  # (z, y, x) as the phantom
    assert image.GetSpacing() == pytest.approx((CT_SPACING[2], CT_SPACING[1], CT_SPACING[0]))
    assert image.GetOrigin() == pytest.approx(ct_phantom.origin_lps)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_ct_tissue_values(ct_phantom):
    hu, labels = ct_phantom.hu.astype(np.float64), ct_phantom.labels
    noiseless = make_ct_phantom(CT_SHAPE, CT_SPACING, seed=CT_SEED, noise_sd_hu=0).hu.astype(np.float64)
    unclipped = noiseless > -950
    noise = hu[unclipped] - noiseless[unclipped]
    assert abs(noise.mean()) < 0.5 and 14.0 < noise.std() < 16.0

    def inner(value: int) -> np.ndarray:
        mask = ndimage.binary_erosion(labels == value, iterations=1)
        assert mask.sum() > 50, LABEL_NAMES[value]
        return hu[mask]

    for lung in (2, 3):
        assert abs(inner(lung).mean() - TISSUE_HU["lung"]) < 5 and inner(lung).mean() < -700
    assert abs(inner(8).mean() - TISSUE_HU["liver"]) < 3
    assert hu[labels == 4].mean() < -850
    assert hu[labels == 5].mean() > 300 and np.percentile(hu[labels == 5], 99) > 800
    assert hu[labels == 6].mean() > 300
    heart = hu[labels == 7]
    assert 40 < heart.mean() < 250 and np.percentile(heart, 90) > 150  # contrast blood pool
    body = hu[labels == 1]
    assert np.mean((body > -150) & (body < -50)) > 0.1, "subcutaneous fat"
    assert np.mean((body > 20) & (body < 70)) > 0.1, "muscle / soft tissue"
    outside = ndimage.binary_erosion(labels == 0, iterations=2) & (noiseless < -990)
    assert abs(hu[outside].mean() + 1000) < 3


def test_ct_anatomy_in_patient_lps(ct_phantom):
    centroid = {name: voxel_centroid_lps(ct_phantom, ct_phantom.labels == value) for value, name in LABEL_NAMES.items()}
    assert centroid["lung_left"][0] > 30 and centroid["lung_right"][0] < -30  # patient left = +x
    assert centroid["liver"][0] < 0  # liver on the patient's right
    assert centroid["liver"][2] < centroid["lung_right"][2]  # under the right lung
    assert centroid["heart"][0] > 0 and centroid["heart"][1] < centroid["spine"][1]  # left, anterior to spine
    assert centroid["spine"][1] > 0 and abs(centroid["spine"][0]) < 5  # posterior midline
    assert centroid["airway"][2] > centroid["heart"][2]
    # Airway: a midline trachea at the top, branching into left and right bronchi lower down.
    airway = ct_phantom.labels == 4
    x_axis = ct_phantom.origin_lps[0] + np.arange(CT_SHAPE[2]) * CT_SPACING[2]
    top_slice = np.nonzero(airway.any(axis=(1, 2)))[0][-1]
    assert abs(x_axis[airway[top_slice].any(axis=0)].mean()) < 5
    per_slice = airway.any(axis=1)  # (slices, cols)
    both_sides = (per_slice & (x_axis < -20)).any(axis=1) & (per_slice & (x_axis > 20)).any(axis=1)
    assert both_sides.any() and np.nonzero(both_sides)[0].max() < top_slice
    # Table: bright non-body voxels posterior to the whole body.
    body_rows = np.nonzero((ct_phantom.labels > 0).any(axis=(0, 2)))[0]
    table_rows = np.nonzero(((ct_phantom.labels == 0) & (ct_phantom.hu > 100)).any(axis=(0, 2)))[0]
    assert table_rows.size and table_rows.min() > body_rows.max()


def test_ct_large_matrix_fits_field_of_view():
    phantom = make_ct_phantom((2, 512, 512), (2.5, 0.75, 0.75), seed=0)
    assert phantom.hu.shape == (2, 512, 512)
    body = phantom.labels > 0
    assert body.mean() > 0.3
    assert not body[:, [0, -1], :].any() and not body[:, :, [0, -1]].any(), "body must not touch the edges"


def test_ct_same_seed_is_byte_identical_and_other_seed_differs(ct_folder, tmp_path):
    again = write_ct_phantom(tmp_path / "a", CT_SHAPE, CT_SPACING, seed=CT_SEED)
    assert file_bytes(again) == file_bytes(ct_folder)
    other = write_ct_phantom(tmp_path / "b", CT_SHAPE, CT_SPACING, seed=CT_SEED + 1)
    first, second = read_series(ct_folder)[0], read_series(other)[0]
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.PixelData != second.PixelData


def test_ct_rewrite_removes_stale_slices(tmp_path):
    folder = write_ct_phantom(tmp_path, (6, 32, 32), (5.0, 12.0, 12.0))
    write_ct_phantom(tmp_path, (3, 32, 32), (5.0, 12.0, 12.0))
    assert sorted(p.name for p in folder.iterdir()) == ["CT000001.dcm", "CT000002.dcm", "CT000003.dcm"]
    assert len({ds.SeriesInstanceUID for ds in read_series(folder)}) == 1


# --------------------------------------------------------------------------------------------- MR


@pytest.fixture(scope="module")
def mr_phantom():
    return make_mr_phantom(MR_SHAPE, MR_SPACING, seed=MR_SEED)


def rician_mean(signal: float, sigma: float) -> float:
    """E|S + n1 + i n2| = sigma*sqrt(pi/2)*L_1/2(-S^2/2sigma^2), written with scaled Bessel functions."""
    x = -(signal**2) / (2 * sigma**2)
    laguerre = (1 - x) * special.i0e(-x / 2) - x * special.i1e(-x / 2)
    return float(sigma * np.sqrt(np.pi / 2) * laguerre)


def test_mr_phantom_maps_match_sphere_table(mr_phantom):
    t1_ref, t2_ref = NIST_SPHERES_MS[("3.0T", "MnCl2")]
    assert len(mr_phantom.spheres) == 14
    assert [s.t1_ms for s in mr_phantom.spheres] == list(t1_ref)
    assert [s.t2_ms for s in mr_phantom.spheres] == list(t2_ref)
    assert min(t1_ref) < 100 and max(t1_ref) > 2000 and min(t2_ref) < 10 and max(t2_ref) > 500
    for sphere in mr_phantom.spheres:
        inside = mr_phantom.labels == sphere.number
        assert inside.sum() > 80, sphere.number
        assert np.all(mr_phantom.t1_ms[inside] == np.float32(sphere.t1_ms))
        assert np.all(mr_phantom.t2_ms[inside] == np.float32(sphere.t2_ms))
        assert np.all(mr_phantom.m0[inside] == np.float32(sphere.m0))
        assert voxel_centroid_lps(mr_phantom, inside) == pytest.approx(sphere.center_lps, abs=0.6)
    assert mr_phantom.label_names[mr_phantom.fill_label] == "fill"
    outside = mr_phantom.labels == 0
    assert outside.any() and not mr_phantom.t1_ms[outside].any() and not mr_phantom.m0[outside].any()


def test_signal_equations():
    t1, t2, m0 = np.array([800.0]), np.array([60.0]), np.array([2.0])
    assert ir_signal(t1, m0, [300.0], 4000.0)[0, 0] == pytest.approx(
        abs(2.0 * (1 - 2 * np.exp(-300 / 800) + np.exp(-4000 / 800)))
    )
    assert se_signal(t2, m0, [30.0])[0, 0] == pytest.approx(2.0 * np.exp(-0.5))


def check_sphere_means(phantom, noisy: np.ndarray, noiseless: np.ndarray, sigma: float) -> None:
    for sphere in phantom.spheres:
        inside = phantom.labels == sphere.number
        n = int(inside.sum())
        for v in range(noisy.shape[0]):
            expected_signal = float(noiseless[v][inside][0])
            measured = float(noisy[v][inside].mean())
            tolerance = 4 * sigma / np.sqrt(n)
            assert abs(measured - rician_mean(expected_signal, sigma)) < tolerance, (sphere.number, v)


def test_mr_ir_series(mr_phantom, tmp_path):
    folder = write_mr_ir_series(tmp_path, phantom=mr_phantom, ti_ms=IR_TI, tr_ms=IR_TR, noise_sigma=MR_SIGMA)
    datasets = read_series(folder)
    n_slices = MR_SHAPE[0]
    assert len(datasets) == len(IR_TI) * n_slices
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    signal = simulate_ir_series(mr_phantom, IR_TI, IR_TR, MR_SIGMA)
    stored_volumes = np.zeros((len(IR_TI),) + MR_SHAPE)
    positions = {}
    slope = float(datasets[0].RescaleSlope)
    for ds in datasets:
        v = int(ds.AcquisitionNumber) - 1
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
        assert float(ds.InversionTime) == IR_TI[v] and float(ds.RepetitionTime) == IR_TR[v]
        assert float(ds.EchoTime) == 12.0 and float(ds.FlipAngle) == 90.0 and int(ds.EchoNumbers) == 1
        assert int(ds.TemporalPositionIdentifier) == v + 1 and float(ds.MagneticFieldStrength) == 3.0
        assert "IR" in ds.ScanningSequence and ds.SequenceVariant
        assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == 0
        k = int(ds.InstanceNumber) - 1 - v * n_slices
        positions.setdefault(v, []).append(tuple(float(p) for p in ds.ImagePositionPatient))
        stored_volumes[v, k] = ds.pixel_array
    assert all(positions[v] == positions[0] for v in positions), "same positions repeated for each TI"
    assert len(set(positions[0])) == n_slices
    values = stored_volumes * slope
    assert values.max() > 0.9 * signal.max()
    assert np.abs(values - signal).max() <= slope / 2 * (1 + 1e-6)
    noiseless = ir_signal(mr_phantom.t1_ms, mr_phantom.m0, IR_TI, IR_TR)
    check_sphere_means(mr_phantom, values, noiseless, MR_SIGMA)


def test_mr_se_series(mr_phantom, tmp_path):
    folder = write_mr_se_series(tmp_path, phantom=mr_phantom, te_ms=SE_TE, tr_ms=3000.0, noise_sigma=MR_SIGMA)
    datasets = read_series(folder)
    assert len(datasets) == len(SE_TE) * MR_SHAPE[0]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    signal = simulate_se_series(mr_phantom, SE_TE, MR_SIGMA)
    values = np.zeros(signal.shape)
    for ds in datasets:
        echo = int(ds.EchoNumbers)
        assert float(ds.EchoTime) == SE_TE[echo - 1] and float(ds.RepetitionTime) == 3000.0
        assert float(ds.FlipAngle) == 90.0 and "SE" in ds.ScanningSequence and "InversionTime" not in ds
        k = int(ds.InstanceNumber) - 1 - (echo - 1) * MR_SHAPE[0]
        values[echo - 1, k] = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    slope = float(datasets[0].RescaleSlope)
    assert np.abs(values - signal).max() <= slope / 2 * (1 + 1e-6)
    check_sphere_means(mr_phantom, values, se_signal(mr_phantom.t2_ms, mr_phantom.m0, SE_TE), MR_SIGMA)


def test_mr_background_is_rayleigh(mr_phantom):
    noisy = simulate_se_series(mr_phantom, SE_TE[:2], 0.05)
    background = noisy[:, mr_phantom.labels == 0]
    assert background.mean() == pytest.approx(0.05 * np.sqrt(np.pi / 2), rel=0.02)


def test_mr_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    kwargs = dict(shape=(3, 32, 32), spacing_mm=(5.0, 8.0, 8.0), ti_ms=(100.0, 900.0))
    first = write_mr_ir_series(tmp_path / "a", seed=5, **kwargs)
    second = write_mr_ir_series(tmp_path / "b", seed=5, **kwargs)
    assert file_bytes(first) == file_bytes(second)
    assert sorted(file_bytes(first)) == [f"IR{n:06d}.dcm" for n in range(1, 7)]
    other = write_mr_ir_series(tmp_path / "c", seed=6, **kwargs)
    a, c = read_series(first), read_series(other)
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID
    assert any(x.PixelData != y.PixelData for x, y in zip(a, c))


def test_rescale_for_storage_quantisation():
    signal = np.linspace(0.0, 1.7, 1001)
    stored, slope, text = rescale_for_storage(signal)
    assert stored.dtype == np.uint16 and stored.max() == pytest.approx(4000, abs=1) and len(text) <= 16
    assert float(text) == slope
    assert np.abs(stored * slope - signal).max() <= slope / 2 * (1 + 1e-6)


def test_truth_maps_round_trip(mr_phantom, tmp_path):
    written = write_truth_maps(tmp_path, {"t1": mr_phantom.t1_ms}, mr_phantom.spacing, mr_phantom.origin_lps)
    image = sitk.ReadImage(str(written["t1"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mr_phantom.t1_ms)
    assert image.GetOrigin() == pytest.approx(mr_phantom.origin_lps)
    assert image.GetSpacing() == pytest.approx(MR_SPACING[::-1])
    assert [p.name for p in tmp_path.iterdir()] == ["t1.nrrd"]


def test_write_all_sample_data_defaults(tmp_path):
    paths = write_all_sample_data(tmp_path, seed=0)
    assert set(paths) == {"ct", "mr_ir", "mr_se", "truth"}
    assert len(list(paths["ct"].glob("CT*.dcm"))) == DEFAULT_CT_SHAPE[0]
    assert len(list(paths["mr_ir"].glob("IR*.dcm"))) == len(DEFAULT_TI_MS) * DEFAULT_MR_SHAPE[0]
    assert len(list(paths["mr_se"].glob("SE*.dcm"))) == 32 * DEFAULT_MR_SHAPE[0]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "no temporary files left behind"
    ir, se = pydicom.dcmread(paths["mr_ir"] / "IR000001.dcm"), pydicom.dcmread(paths["mr_se"] / "SE000001.dcm")
    assert ir.StudyInstanceUID == se.StudyInstanceUID and ir.FrameOfReferenceUID == se.FrameOfReferenceUID
    assert ir.SeriesInstanceUID != se.SeriesInstanceUID
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["truth"] / "ct_labels.nrrd")))
    assert labels.shape == DEFAULT_CT_SHAPE and set(np.unique(labels)) == set(range(9))
    truth = json.loads((paths["truth"] / "truth.json").read_text())
    assert truth["ct_labels"]["8"] == "liver" and len(truth["mr_spheres"]) == 14
