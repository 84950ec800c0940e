"""The compiled whole-volume VARPRO kernel (qmri._kernels) against the numpy engine path and against first principles:
same minimum, same status bits, goodness-of-fit maps recomputed from the fitted model, independence from the
thread split, the image order and the input dtype."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegLib.qmri import _kernels, engine, fitting, models

TI_MS = np.array([50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0])
TE_MS = np.arange(1, 33) * 10.0


def rician(signal: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))


def ir_data(count: int = 600, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    truth = np.random.default_rng(seed).uniform(80.0, 3000.0, count)
    return rician(models.ir_signal(truth, 1000.0, TI_MS, efficiency=1.9), 25.0, seed + 1).T, truth


def t2_data(count: int = 600, seed: int = 21, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    truth = np.random.default_rng(seed).uniform(15.0, 400.0, count)
    return rician(models.mono_exp_signal(truth, 1000.0, TE_MS, offset=offset), 8.0, seed + 1).T, truth


def numpy_path(monkeypatch, function, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(_kernels, "AVAILABLE", False)
        return function(*args, **kwargs)


def test_status_bits_agree_with_engine():
    assert _kernels._INVALID == engine.STATUS_INVALID_INPUT
    assert _kernels._AT_BOUND == engine.STATUS_AT_BOUND
    assert _kernels._NOT_CONVERGED == engine.STATUS_NOT_CONVERGED
    assert _kernels._DEGENERATE == engine.STATUS_DEGENERATE


@pytest.mark.parametrize(
    "case",
    ["ir-magnitude", "ir-signed", "ir-tr", "molli", "t2", "t2-offset", "t2star"],
)
def test_kernel_matches_numpy_engine(case, monkeypatch):
    """Both paths solve the same least-squares problem: the kernel must land on the numpy path's minimum (which
    the curve_fit tests pin down) with the same flags and quality maps."""
    if case.startswith("ir") or case == "molli":
        data, _ = ir_data()
        if case == "ir-signed":
            data = models.ir_signal(np.linspace(100, 2500, 300), 700.0, TI_MS).T + np.random.default_rng(3).normal(
                0, 5.0, (len(TI_MS), 300)
            )
        if case == "molli":
            call = (fitting.fit_t1_molli, (data, TI_MS), {"mask": "none"})
        elif case == "ir-tr":
            tr = 1500.0 + TI_MS
            data = rician(models.ir_signal(np.linspace(100, 2500, 300), 900.0, TI_MS, tr_ms=tr), 10.0, 5).T
            call = (fitting.fit_t1_ir, (data, TI_MS, tr), {"mask": "none"})
        else:
            call = (fitting.fit_t1_ir, (data, TI_MS), {"mask": "none"})
    else:
        data, _ = t2_data(offset=40.0 if case == "t2-offset" else 0.0)
        options = {"mask": "none", "offset": case == "t2-offset"}
        call = (fitting.fit_t2star if case == "t2star" else fitting.fit_t2, (data, TE_MS), options)
    function, args, kwargs = call
    fast = function(*args, **kwargs)
    slow = numpy_path(monkeypatch, function, *args, **kwargs)
    assert fast.primary == slow.primary
    value_fast, value_slow = fast.maps[fast.primary], slow.maps[slow.primary]
    relative = np.abs(value_fast / value_slow - 1.0)
    assert np.median(relative) < 1e-5 and np.percentile(relative, 99) < 1e-3, (np.median(relative), relative.max())
    np.testing.assert_allclose(fast.maps["R2"], slow.maps["R2"], atol=1e-4)
    np.testing.assert_allclose(fast.maps["RMSE"], slow.maps["RMSE"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fast.maps["M0"], slow.maps["M0"], rtol=1e-3)
    same_status = fast.maps["status"] == slow.maps["status"]
    assert same_status.mean() > 0.99, np.unique(fast.maps["status"][~same_status], return_counts=True)
    if "restored" in fast.maps:
        assert (fast.maps["restored"] == slow.maps["restored"]).mean() > 0.99


def test_goodness_of_fit_maps_follow_from_the_fitted_model():
    data, _ = t2_data(200)
    result = fitting.fit_t2(data, TE_MS, mask="none")
    model = models.mono_exp_signal(result.maps["T2"], result.maps["M0"], TE_MS).T
    residual = data - model
    rss = (residual**2).sum(axis=0)
    ss_tot = ((data - data.mean(axis=0)) ** 2).sum(axis=0)
    np.testing.assert_allclose(result.maps["RMSE"], np.sqrt(rss / len(TE_MS)), rtol=1e-4)
    np.testing.assert_allclose(result.maps["R2"], 1.0 - rss / ss_tot, atol=1e-5)
    assert np.all(result.maps["status"] == 0)
    # IR magnitude: R2/RMSE of |model| against the magnitude data
    ir, _ = ir_data(200)
    fit = fitting.fit_t1_ir(ir, TI_MS, mask="none")
    a = fit.maps["M0"]
    b = -fit.maps["efficiency"] * a
    model = np.abs(a[:, None] + b[:, None] * np.exp(-TI_MS[None, :] / fit.maps["T1"][:, None])).T
    rss = ((ir - model) ** 2).sum(axis=0)
    ok = fit.maps["status"] & engine.STATUS_POLARITY_AMBIGUOUS == 0
    np.testing.assert_allclose(fit.maps["RMSE"][ok], np.sqrt(rss / len(TI_MS))[ok], rtol=2e-3)


def test_thread_split_image_order_and_dtype_do_not_change_the_answer():
    data, _ = ir_data(3000)
    flat = np.ascontiguousarray(data)
    q = engine._grid_basis(lambda t: models.ir_basis(t, TI_MS), 1.0, 10000.0, 64)
    arguments = (q, TI_MS, None, _kernels.KIND_IR, True, True, 0.0, float(np.log(10000.0)))
    index = np.arange(flat.shape[1])
    one = _kernels.fit_voxels(flat, np.arange(7), index, *arguments, threads=1)
    three = _kernels.fit_voxels(flat, np.arange(7), index, *arguments, threads=3)
    assert np.array_equal(one, three)  # bit-identical: every voxel is fitted on its own
    # images given in another order: sorted by TI inside the fit
    permutation = np.array([3, 0, 6, 1, 5, 2, 4])
    reference = fitting.fit_t1_ir(data, TI_MS, mask="none")
    shuffled = fitting.fit_t1_ir(data[permutation], TI_MS[permutation], mask="none")
    np.testing.assert_array_equal(reference.maps["T1"], shuffled.maps["T1"])
    # float32 and integer stacks are converted chunk by chunk to float64 for the same kernel
    rounded = np.round(data)
    as_float = fitting.fit_t1_ir(rounded, TI_MS, mask="none")
    as_int = fitting.fit_t1_ir(rounded.astype(np.int16), TI_MS, mask="none")
    as_single = fitting.fit_t1_ir(rounded.astype(np.float32), TI_MS, mask="none")
    np.testing.assert_array_equal(as_float.maps["T1"], as_int.maps["T1"])
    np.testing.assert_array_equal(as_float.maps["T1"], as_single.maps["T1"])


def test_invalid_masked_and_bound_voxels_in_a_volume():
    t2 = np.full((2, 3, 4), 60.0)
    t2[0, 0, 1] = 9000.0  # beyond the 5 s search range
    data = np.moveaxis(models.mono_exp_signal(t2, 500.0, TE_MS[:10]), -1, 0).copy()
    data[:, 1, 1, 1] = 0.0  # all-zero signal
    data[3, 1, 2, 2] = np.nan  # one non-finite sample
    mask = np.ones((2, 3, 4), bool)
    mask[1, 2, 3] = False
    result = fitting.fit_t2(data, TE_MS[:10], mask=mask)
    status = result.maps["status"]
    assert status[1, 1, 1] == engine.STATUS_INVALID_INPUT and result.maps["T2"][1, 1, 1] == 0
    assert status[1, 2, 2] == engine.STATUS_INVALID_INPUT and result.maps["M0"][1, 2, 2] == 0
    assert status[1, 2, 3] == engine.STATUS_MASKED and result.maps["R2"][1, 2, 3] == 0
    assert status[0, 0, 1] & engine.STATUS_AT_BOUND and result.maps["T2"][0, 0, 1] == pytest.approx(5000.0)
    ok = status == 0
    assert ok.sum() == 24 - 4
    np.testing.assert_allclose(result.maps["T2"][ok], 60.0, rtol=1e-6)
    np.testing.assert_allclose(result.maps["R2"][ok], 1.0, atol=1e-9)


def test_drop_first_echo_with_unsorted_echoes_and_auto_mask_on_the_first_echo():
    te = TE_MS[:12]
    t2 = np.full((1, 6, 6), 70.0)
    amplitude = np.zeros((1, 6, 6))
    amplitude[0, 1:5, 1:5] = 800.0
    data = np.moveaxis(models.mono_exp_signal(t2, amplitude, te), -1, 0)
    data[0] *= 0.7  # low first echo (imperfect refocusing)
    order = np.arange(12)[::-1]
    result = fitting.fit_t2(data[order], te[order], drop_first_echo=True)
    inside = amplitude > 0
    assert np.array_equal(result.maps["status"] != engine.STATUS_MASKED, inside)
    np.testing.assert_allclose(result.maps["T2"][inside], 70.0, rtol=1e-6)
    assert result.info["TE_ms"] == te[1:].tolist()


def test_sequence_node_vfa_with_b1_map_and_epg_options(scene):
    """The panel's B1 map / VFA method / EPG options reach the fits through fit_sequence_node."""
    import json

    import slicer

    from MedSegLib.qmri.pipeline import fit_sequence_node
    from MedSegLib.volume_nodes import add_volume_node

    t1 = np.full((1, 2, 3), 900.0)
    b1 = np.array([[[0.8, 0.9, 1.0], [1.1, 1.2, 0.85]]])
    flips = [3.0, 8.0, 15.0, 25.0]
    vfa = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "vfa")
    signal = models.vfa_signal(t1, 1500.0, flips, 12.0, b1)
    for index, flip in enumerate(flips):
        vfa.SetDataNodeAtValue(add_volume_node(signal[..., index], np.eye(4), f"fa{flip}", scene), f"{flip:g}")
    vfa.SetAttribute(
        "MedSeg.perVolumeParameters", json.dumps([{"FlipAngle": f, "RepetitionTime": 12.0} for f in flips])
    )
    b1_node = add_volume_node(100.0 * b1, np.eye(4), "B1 percent", scene)  # percent map: scaled to a factor
    full = np.ones(t1.shape, bool)
    for method in ("linear", "nonlinear"):
        result, nodes = fit_sequence_node(vfa, "vfa", mask=full, b1=b1_node, options={"method": method})
        np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes["T1"]), 900.0, rtol=1e-4)
        assert result.info["B1"] is True and result.info["model"] == f"vfa-{method}"
    nominal, _ = fit_sequence_node(vfa, "vfa", mask=full)
    assert np.abs(nominal.maps["T1"] / 900.0 - 1.0).max() > 0.15  # without the map: biased by ~B1^2
    te = np.arange(1, 17) * 10.0
    t2 = np.array([[[40.0, 60.0, 90.0], [120.0, 50.0, 70.0]]])
    b1_epg = np.array([[[0.8, 0.9, 0.95], [0.85, 0.75, 1.0]]])
    train = 1000.0 * models.epg_cpmg(t2, b1_epg, 10.0, 16, t1_ms=1500.0, refocusing_deg=160.0)
    epg = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "epg")
    for index, echo in enumerate(te):
        epg.SetDataNodeAtValue(add_volume_node(train[..., index], np.eye(4), f"te{echo:g}", scene), f"{echo:g}")
    epg.SetAttribute("MedSeg.perVolumeParameters", json.dumps([{"EchoTime": float(echo)} for echo in te]))
    options = {"refocusing_deg": 160.0, "t1_ms": 1500.0}
    given = add_volume_node(b1_epg, np.eye(4), "B1", scene)
    result, nodes = fit_sequence_node(epg, "epg", mask=full, b1=given, options=options)
    assert result.info["refocusing_deg"] == 160.0 and result.info["T1_ms"] == 1500.0 and not result.info["B1_fitted"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes["T2"]), t2, rtol=0.005)
    fitted, _ = fit_sequence_node(epg, "epg", mask=full, options=options)
    assert fitted.info["B1_fitted"]
    np.testing.assert_allclose(fitted.maps["T2"], t2, rtol=0.01)
    np.testing.assert_allclose(fitted.maps["B1"], b1_epg, atol=0.01)
    from MedSegLib.errors import UserInputError

    wrong = add_volume_node(np.ones((1, 3, 3)), np.eye(4), "B1 wrong grid", scene)
    with pytest.raises(UserInputError, match="B1 wrong grid.*resample"):
        fit_sequence_node(vfa, "vfa", mask=full, b1=wrong)
