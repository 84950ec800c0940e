"""Quantitative MRI fits: known truth, agreement with per-voxel scipy curve_fit, status flags, CLI.

The accuracy tests compare our vectorised fits with ``scipy.optimize.curve_fit`` on identical Rician-noise data:
median and 95th percentile of the relative T1/T2 error must agree within 0.1 percentage point (the issue's
criterion), and the per-voxel answers must agree closely where both solve the same least-squares problem.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegLib.qmri import engine, fitting, models

TI_MS = np.array([50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0])
TE_MS = np.arange(1, 33) * 10.0


def rician(signal: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))


def curve_fit_ir(y: np.ndarray, ti: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-voxel curve_fit of |a + b e^(-TI/T1)|: the lowest-RSS result of starts at the true T1 and at 100, 400,
    1500 and 4000 ms. One start is not enough: magnitude IR has local minima (qmri_methods.md 1.6)."""
    from scipy.optimize import curve_fit

    def model(t, a, b, t1):
        return np.abs(a + b * np.exp(-t / t1))

    out = np.full(len(y), np.nan)
    for v in range(len(y)):
        best = np.inf
        for start in (truth[v], 100.0, 400.0, 1500.0, 4000.0):
            try:
                p, _ = curve_fit(model, ti, y[v], p0=[y[v, -1], -2 * y[v, -1], start], maxfev=5000)
            except RuntimeError:
                continue
            rss = float(np.sum((model(ti, *p) - y[v]) ** 2))
            if rss < best:
                best, out[v] = rss, p[2]
    return out


def curve_fit_t2(y: np.ndarray, te: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from scipy.optimize import curve_fit

    out = np.empty(len(y))
    for v in range(len(y)):
        p, _ = curve_fit(lambda t, m0, t2: m0 * np.exp(-t / t2), te, y[v], p0=[y[v, 0] * 1.2, truth[v]], maxfev=5000)
        out[v] = p[1]
    return out


def error_summary(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    relative = np.abs(estimate / truth - 1.0) * 100.0
    return float(np.nanmedian(relative)), float(np.nanpercentile(relative, 95))


def test_epg_is_exponential_at_perfect_refocusing_and_mirror_symmetric():
    echoes = models.epg_cpmg(np.array([50.0, 80.0]), 1.0, 10.0, 16)
    expected = np.exp(-np.arange(1, 17)[None, :] * 10.0 / np.array([[50.0], [80.0]]))
    np.testing.assert_allclose(echoes, expected, rtol=1e-12)
    low = models.epg_cpmg(50.0, 0.8, 10.0, 16)
    high = models.epg_cpmg(50.0, 1.2, 10.0, 16)
    np.testing.assert_allclose(low, high, rtol=1e-10)
    # imperfect refocusing: the stimulated echo makes echo 2 higher than a pure decay predicts
    assert low[1] / low[0] > np.exp(-10.0 / 50.0)


def test_ir_accuracy_equals_curve_fit():
    rng = np.random.default_rng(1)
    truth = rng.uniform(150.0, 2500.0, 200)
    y = rician(models.ir_signal(truth, 1000.0, TI_MS, efficiency=1.95), 1000.0 / 50, seed=2)
    ours = fitting.fit_t1_ir(y.T, TI_MS, mask="none").maps["T1"]
    reference = curve_fit_ir(y, TI_MS, truth)
    median_ours, p95_ours = error_summary(ours, truth)
    median_ref, p95_ref = error_summary(reference, truth)
    assert abs(median_ours - median_ref) < 0.1 and abs(p95_ours - p95_ref) < 0.1, (
        median_ours,
        median_ref,
        p95_ours,
        p95_ref,
    )
    agree = np.abs(ours / reference - 1.0)
    assert np.nanmedian(agree) < 1e-4 and np.nanpercentile(agree, 90) < 1e-3


def test_t2_accuracy_equals_curve_fit():
    rng = np.random.default_rng(3)
    truth = rng.uniform(20.0, 300.0, 300)
    y = rician(models.mono_exp_signal(truth, 1000.0, TE_MS), 1000.0 / 100, seed=4)
    ours = fitting.fit_t2(y.T, TE_MS, mask="none").maps["T2"]
    reference = curve_fit_t2(y, TE_MS, truth)
    median_ours, p95_ours = error_summary(ours, truth)
    median_ref, p95_ref = error_summary(reference, truth)
    assert abs(median_ours - median_ref) < 0.1 and abs(p95_ours - p95_ref) < 0.1
    assert np.max(np.abs(ours / reference - 1.0)) < 5e-4


def test_ir_per_image_tr_term_is_needed_and_used():
    t1 = np.array([300.0, 800.0, 1500.0])
    ti = np.array([50.0, 100.0, 200.0, 400.0, 600.0, 800.0])
    tr = np.array([1000.0, 1000.0, 1000.0, 1260.0, 1860.0, 2460.0])
    y = np.abs(models.ir_signal(t1, 1000.0, ti, tr_ms=tr))
    with_tr = fitting.fit_t1_ir(y.T, ti, tr, mask="none")
    np.testing.assert_allclose(with_tr.maps["T1"], t1, rtol=2e-4)
    np.testing.assert_allclose(with_tr.maps["efficiency"], 2.0, rtol=1e-3)
    without = fitting.fit_t1_ir(y.T, ti, None, mask="none").maps["T1"]
    assert np.max(np.abs(without / t1 - 1.0)) > 0.02  # ignoring the varying TR biases T1


def test_ir_signed_data_without_polarity_restoration():
    t1 = np.array([100.0, 700.0, 2000.0])
    y = models.ir_signal(t1, 500.0, TI_MS)  # signed (real) images
    result = fitting.fit_t1_ir(y.T, TI_MS, mask="none")  # negative values: detected as signed
    assert result.info["magnitude"] is False
    np.testing.assert_allclose(result.maps["T1"], t1, rtol=1e-4)
    np.testing.assert_allclose(result.maps["M0"], 500.0, rtol=1e-4)
    assert "restored" not in result.maps


def test_vfa_linear_nonlinear_and_b1():
    flips = np.array([3.0, 8.0, 15.0, 25.0])
    t1 = np.array([500.0, 1000.0, 2000.0])
    b1 = np.array([0.85, 1.0, 1.15])
    y = models.vfa_signal(t1, 2000.0, flips, 15.0, b1)
    for method in ("linear", "nonlinear"):
        corrected = fitting.fit_t1_vfa(y.T, flips, 15.0, b1=b1, method=method, mask="none")
        np.testing.assert_allclose(corrected.maps["T1"], t1, rtol=1e-4)
        np.testing.assert_allclose(corrected.maps["M0"], 2000.0, rtol=1e-4)
    uncorrected = fitting.fit_t1_vfa(y.T, flips, 15.0, mask="none").maps["T1"]
    assert uncorrected[0] < 0.8 * t1[0] and uncorrected[2] > 1.2 * t1[2]  # T1 ~ B1^2 bias without the map


def test_molli_look_locker_correction():
    t1 = np.array([400.0, 1000.0, 1500.0])
    a, b = 100.0, 190.0
    times = np.array([100.0, 180.0, 260.0, 1000.0, 1080.0, 1900.0, 2700.0, 3500.0])
    y = np.abs(models.molli_signal(t1, a, b, times))
    result = fitting.fit_t1_molli(y.T, times, mask="none")
    np.testing.assert_allclose(result.maps["T1"], t1, rtol=1e-4)
    np.testing.assert_allclose(result.maps["T1star"], t1 / (b / a - 1), rtol=1e-4)


def test_t2star_offset_loglinear_and_drop_first_echo():
    te = np.arange(1, 13) * 3.0
    t2s = np.array([8.0, 25.0, 60.0])
    y = models.mono_exp_signal(t2s, 800.0, te, offset=20.0)
    plain = fitting.fit_t2star(y.T, te, mask="none")
    with_offset = fitting.fit_t2star(y.T, te, offset=True, mask="none")
    np.testing.assert_allclose(with_offset.maps["T2star"], t2s, rtol=1e-4)
    np.testing.assert_allclose(with_offset.maps["offset"], 20.0, rtol=1e-3)
    np.testing.assert_allclose(with_offset.maps["R2star"], 1000.0 / t2s, rtol=1e-4)
    assert plain.maps["T2star"][0] > 1.05 * t2s[0]  # the floor inflates T2* without the offset
    clean = models.mono_exp_signal(t2s, 800.0, te)
    loglin = fitting.fit_t2star(clean.T, te, method="loglinear", mask="none")
    np.testing.assert_allclose(loglin.maps["T2star"], t2s, rtol=1e-6)
    train = models.mono_exp_signal(t2s, 800.0, te)
    train[0] *= 0.8  # a low first echo (imperfect refocusing)
    dropped = fitting.fit_t2(train.T, te, drop_first_echo=True, mask="none").maps["T2"]
    np.testing.assert_allclose(dropped, t2s, rtol=1e-4)


def test_epg_fit_recovers_t2_and_b1():
    t2 = np.array([40.0, 70.0, 120.0])
    b1 = np.array([0.75, 0.85, 0.95])
    y = 1000.0 * models.epg_cpmg(t2, b1, 10.0, 16)
    result = fitting.fit_t2_epg(y.T, np.arange(1, 17) * 10.0, mask="none")
    np.testing.assert_allclose(result.maps["T2"], t2, rtol=0.01)
    np.testing.assert_allclose(result.maps["B1"], b1, atol=0.01)
    mono = fitting.fit_t2(y.T, np.arange(1, 17) * 10.0, mask="none").maps["T2"]
    assert mono[0] > 1.05 * t2[0]  # mono-exponential is biased by stimulated echoes
    fixed = fitting.fit_t2_epg(y.T, np.arange(1, 17) * 10.0, b1=b1, mask="none")
    np.testing.assert_allclose(fixed.maps["T2"], t2, rtol=0.005)


def test_status_map_flags_and_values_are_not_clipped():
    ti = TI_MS
    t1 = np.array([800.0, 800.0, 20000.0, 800.0])
    y = np.abs(models.ir_signal(t1, 1000.0, ti))
    y[1, :] = np.nan  # invalid input
    data = y.T.reshape(len(ti), 2, 2)
    mask = np.array([[True, True], [True, False]])
    result = fitting.fit_t1_ir(data, ti, mask=mask)
    status = result.maps["status"].reshape(-1)
    assert status[0] == 0
    assert status[1] == engine.STATUS_INVALID_INPUT and result.maps["T1"].reshape(-1)[1] == 0
    assert status[2] & engine.STATUS_AT_BOUND  # 20 s is beyond the 10 s search range: flagged
    assert status[3] == engine.STATUS_MASKED
    assert result.maps["R2"].reshape(-1)[0] > 0.999999
    counts = result.status_counts()
    assert counts["fitted"] == 1


def test_auto_mask_and_segment_statistics():
    image = np.zeros((1, 20, 20))
    image[0, 5:15, 5:15] = 100.0
    mask = fitting.auto_mask(image[0])
    assert mask.sum() == 100
    stats = fitting.segment_statistics(np.arange(400.0).reshape(20, 20), {"a": mask})
    assert stats["a"]["count"] == 100 and stats["a"]["median"] == pytest.approx(
        np.median(np.arange(400.0).reshape(20, 20)[mask])
    )


def test_cli_t1_from_dicom_series(tmp_path, runtime):
    from MedSegLib.cli.main import main
    from MedSegLib.node_io import load_volume
    from MedSegLib.sample_data import make_mr_phantom, write_mr_ir_series

    shape = (2, 48, 48)
    phantom = make_mr_phantom(shape, (6.0, 5.0, 5.0), field_strength_t=1.5, array="NiCl2")
    series = write_mr_ir_series(
        tmp_path / "ir", phantom=phantom, ti_ms=[50, 150, 400, 900, 2000, 4000], tr_ms=6000.0, noise_sigma=0.005
    )
    out = tmp_path / "maps"
    assert main(["qmri", "t1", "--method", "ir", str(series), "-o", str(out), "--json", "--quiet"]) == 0
    for name in ("T1", "M0", "R2", "RMSE", "status"):
        assert (out / f"{name}.nrrd").is_file()
    import slicer

    t1 = slicer.util.arrayFromVolume(load_volume(out / "T1.nrrd", runtime.scene))
    for sphere in phantom.spheres[:8]:
        inside = phantom.labels == sphere.number
        assert np.median(t1[inside]) == pytest.approx(sphere.t1_ms, rel=0.03), sphere
    assert main(["qmri", "t1", str(series), "-o", str(out), "--ti", "1", "2", "--quiet"]) == 2  # wrong count


def test_cli_t2_nifti_with_explicit_te(tmp_path, runtime):
    import SimpleITK as sitk

    from MedSegLib.cli.main import main

    t2 = np.array([[30.0, 60.0], [90.0, 150.0]])[None]
    data = models.mono_exp_signal(t2, 1000.0, TE_MS[:12])  # (1, 2, 2, 12)
    volumes = np.moveaxis(data, -1, 0).astype(np.float32)  # (t, k, j, i)
    image = sitk.JoinSeries([sitk.GetImageFromArray(volume) for volume in volumes])  # a 4D image
    sitk.WriteImage(image, str(tmp_path / "me.nii.gz"))
    out = tmp_path / "t2"
    code = main(
        [
            "qmri",
            "t2",
            str(tmp_path / "me.nii.gz"),
            "--te",
            " ".join(str(v) for v in TE_MS[:12]),
            "-o",
            str(out),
            "--format",
            "nii.gz",
            "--mask",
            "none",
            "--quiet",
        ]
    )
    assert code == 0
    fitted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "T2.nii.gz")))
    np.testing.assert_allclose(fitted, t2, rtol=1e-3)
    assert main(["qmri", "t2", str(tmp_path / "me.nii.gz"), "-o", str(out), "--quiet"]) == 2  # no TE known


def test_sequence_node_fit(scene):
    from MedSegLib.qmri.pipeline import fit_sequence_node
    from MedSegLib.volume_nodes import add_volume_node

    t2 = np.full((2, 3, 4), 80.0)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "mese")
    per_volume = []
    for te in TE_MS[:8]:
        volume = add_volume_node(models.mono_exp_signal(t2, 500.0, [te])[..., 0], np.eye(4), f"te{te}", scene)
        sequence.SetDataNodeAtValue(volume, f"{te:g}")
        per_volume.append({"EchoTime": float(te)})
    sequence.SetAttribute("MedSeg.perVolumeParameters", json.dumps(per_volume))
    result, nodes = fit_sequence_node(sequence, "t2", mask=np.ones((2, 3, 4), bool))
    import slicer

    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes["T2"]), 80.0, rtol=1e-4)
    assert nodes["T2"].GetAttribute("MedSeg.unit") == "ms"
    assert set(nodes) >= {"T2", "M0", "R2", "RMSE", "status"}
