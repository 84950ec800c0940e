"""Deep-learning segmentation: MONAI-exact sliding window, bounded streaming, model packages, output, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the 'dl' extra")
monai = pytest.importorskip("monai", reason="MONAI is the 'dl' extra")

from MedSegLib.deep_learning import model_package as mp  # noqa: E402
from MedSegLib.deep_learning.inference import predict_labels  # noqa: E402
from MedSegLib.deep_learning.preprocessing import (  # noqa: E402
    StreamingLinearResizer,
    orientation_transform,
    prepare_input,
)
from MedSegLib.deep_learning.sliding_window import (  # noqa: E402
    DeviceOutOfMemory,
    iter_sliding_window_slabs,
    plan_windows,
    sliding_window_predict,
)
from MedSegLib.errors import OperationCancelled, UserInputError  # noqa: E402
from MedSegLib.progress import CancelToken  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "Resources" / "Models" / "medseg-ct-phantom"
TINY_UNET = dict(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)


def _conv_net(out_channels: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(3, out_channels, 3, padding=1)
    ).eval()


# --- sliding window --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, roi, overlap, mode, batch",
    [
        ((20, 90, 50), (32, 48, 32), 0.25, "gaussian", 1),  # padding along z and x
        ((20, 31, 50), (16, 24, 32), 0.7, "constant", 3),  # overlap truncation, batch across rows
        ((50, 60, 61), (24, 24, 24), 0.5, "gaussian", 4),
        ((33, 33, 33), (33, 16, 16), 0.25, "gaussian", 2),  # roi == size in z
    ],
)
def test_sliding_window_equals_monai(shape, roi, overlap, mode, batch) -> None:
    from monai.inferers import sliding_window_inference

    net = _conv_net()
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = sliding_window_inference(x, roi, batch, net, overlap=overlap, mode=mode)
    got = sliding_window_predict(x[0], net, roi, overlap=overlap, mode=mode, sw_batch_size=batch)
    assert got.shape == expected.shape[1:]
    assert float((got - expected[0]).abs().max()) <= 1e-5


def test_sliding_window_equals_monai_for_unet() -> None:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**TINY_UNET).eval()
    x = torch.randn(1, 1, 40, 52, 36, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = sliding_window_inference(x, (16, 32, 16), 1, net, overlap=0.25, mode="gaussian")
    got = sliding_window_predict(x[0], net, (16, 32, 16), overlap=0.25, mode="gaussian", sw_batch_size=4)
    assert float((got - expected[0]).abs().max()) <= 1e-5
    assert torch.equal(got.argmax(0), expected[0].argmax(0))


@pytest.mark.parametrize("workers", [2, 3, None])
def test_parallel_window_workers_equal_monai(workers) -> None:
    """CPU inter-op parallelism (windows of a batch split over worker threads) changes nothing but speed."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from MedSegLib.deep_learning.sliding_window import cpu_workers

    torch.manual_seed(0)
    net = UNet(**TINY_UNET).eval()
    x = torch.randn(1, 1, 40, 52, 36, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    with torch.inference_mode():
        expected = sliding_window_inference(x, (16, 32, 16), 1, net, overlap=0.25, mode="gaussian")
    got = sliding_window_predict(
        x[0], net, (16, 32, 16), overlap=0.25, mode="gaussian", sw_batch_size=5, workers=workers
    )
    assert torch.get_num_threads() == threads, "the intra-op thread count is restored"
    assert float((got - expected[0]).abs().max()) <= 1e-5
    assert torch.equal(got.argmax(0), expected[0].argmax(0))
    assert cpu_workers(2, 5) == (2, max(1, threads // 2)) and cpu_workers(8, 3)[0] == 3
    assert cpu_workers(None, 1) == (1, threads) and cpu_workers(0, 8)[0] == min(threads, 8)


def test_window_plan_matches_monai() -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, roi, overlap in [((200, 512, 37), (96, 96, 96), 0.5), ((96, 97, 300), (96, 96, 64), 0.7)]:
        plan = plan_windows(size, roi, overlap)
        padded = tuple(max(s, r) for s, r in zip(size, roi))
        interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
        expected = [tuple(s.start for s in slices) for slices in dense_patch_slices(padded, roi, interval)]
        assert plan.windows == expected


def test_stitching_streams_by_slab() -> None:
    """The first rows come out long before the last window runs: memory is a slab, not the volume."""
    calls = {"n": 0}
    net = _conv_net()

    def predictor(x):
        calls["n"] += 1
        return net(x)

    x = torch.randn(1, 100, 40, 40)
    stream = iter_sliding_window_slabs(x, predictor, (16, 40, 40), overlap=0.5, sw_batch_size=1)
    z0, z1, first = next(stream)
    total = plan_windows((100, 40, 40), (16, 40, 40), 0.5).num_windows
    assert (z0, z1) == (0, 8) and first.shape == (4, 8, 40, 40)
    assert calls["n"] == 1 < total
    rows = [z1] + [b - a for a, b, _ in stream]
    assert sum(rows) == 100


def test_cancel_stops_within_one_batch_and_progress_has_eta() -> None:
    token = CancelToken()
    calls = {"n": 0}
    messages = []
    net = _conv_net()

    def predictor(x):
        calls["n"] += 1
        token.cancel()
        return net(x)

    with pytest.raises(OperationCancelled):
        sliding_window_predict(
            torch.randn(1, 40, 40, 40),
            predictor,
            (16, 16, 16),
            sw_batch_size=2,
            cancel=token,
            progress=lambda f, m: messages.append(m),
        )
    assert calls["n"] == 1
    assert messages and "ETA" in messages[0] and "window 2/" in messages[0]


def test_out_of_memory_halves_batch_then_gives_clear_error() -> None:
    net = _conv_net()
    seen = []

    def flaky(x):
        seen.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return net(x)

    x = torch.randn(1, 30, 30, 30)
    got = sliding_window_predict(x, flaky, (16, 16, 16), sw_batch_size=4)
    assert seen[:3] == [4, 2, 1]
    assert float((got - sliding_window_predict(x, net, (16, 16, 16), sw_batch_size=1)).abs().max()) <= 1e-6

    def always(x):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(DeviceOutOfMemory, match="--device cpu"):
        sliding_window_predict(x, always, (16, 16, 16), sw_batch_size=2)


def test_cpu_optimised_network_is_exact() -> None:
    from monai.networks.nets import UNet

    from MedSegLib.deep_learning.inference import optimize_for_cpu

    torch.manual_seed(0)
    net = UNet(**TINY_UNET).eval()
    x = torch.randn(1, 24, 30, 20)
    optimized, note = optimize_for_cpu(net, torch.rand(1, 1, 16, 16, 16))
    assert note == "traced+frozen"
    eager = sliding_window_predict(x, net, (16, 16, 16), sw_batch_size=4)
    fast = sliding_window_predict(x, optimized, (16, 16, 16), sw_batch_size=4)
    assert float((eager - fast).abs().max()) <= 1e-5 and torch.equal(eager.argmax(0), fast.argmax(0))

    class Drifting(torch.nn.Module):  # a network whose traced copy would not reproduce it: kept eager
        def forward(self, x):
            return x + torch.rand(1).item()

    kept, note = optimize_for_cpu(Drifting(), torch.rand(1, 1, 4, 4, 4))
    assert isinstance(kept, Drifting) and note.startswith("eager")


def test_amp_path_runs_on_cpu() -> None:
    net = _conv_net()
    x = torch.randn(1, 24, 24, 24)
    fp32 = sliding_window_predict(x, net, (16, 16, 16))
    bf16 = sliding_window_predict(x, net, (16, 16, 16), amp=True)
    assert bf16.dtype == torch.float32
    assert float((fp32 - bf16).abs().max()) < 0.1


# --- preprocessing and its undo -----------------------------------------------------------------------


def test_orientation_transform_round_trip() -> None:
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    # i toward A, j toward L, k toward I (a permuted, flipped acquisition)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[0, -0.8, 0], [0.7, 0, 0], [0, 0, -2.0]])
    transform = orientation_transform(ijk_to_ras, "RAS")
    out = transform.apply(array)
    assert out.shape == (3, 5, 4)  # (k->S, i->A, j->R)
    assert np.array_equal(transform.invert(out), array)
    assert orientation_transform(np.diag([-1.0, -1.0, 1.0, 1.0]), "LPS").is_identity


def test_streaming_resizer_equals_trilinear() -> None:
    import torch.nn.functional as F

    src = torch.randn(3, 17, 12, 10)
    size = (29, 20, 7)
    expected = F.interpolate(src[None], size=size, mode="trilinear", align_corners=False)[0]
    resizer = StreamingLinearResizer(17, size)
    parts = []
    for z0 in range(0, 17, 5):
        parts += [block for _, _, block in resizer.push(z0, src[:, z0 : z0 + 5])]
    got = torch.cat(parts, dim=1)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5


class _ThresholdNet(torch.nn.Module):
    """Two-class 'network': label 1 where the normalised input exceeds 0.5 (argmax is a threshold)."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def _threshold_package(tmp_path: Path, preprocessing: dict) -> mp.ModelPackage:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_ThresholdNet()).save(str(tmp_path / "thr.pt"))
    manifest = {
        "name": "threshold",
        "version": "1",
        "input": {"channels": 1, "modalities": ["CT"]},
        "labels": [{"name": "bright", "color": [255, 255, 0]}],
        "network": {"weights": "model.ts", "format": "torchscript"},
        "preprocessing": preprocessing,
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.5, "mode": "gaussian"},
    }
    return mp.write_model_package(tmp_path / "threshold", manifest, tmp_path / "thr.pt")


def test_preprocessing_is_undone_exactly_onto_source_grid(tmp_path) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 400, size=(21, 30, 26)).astype(np.int16)
    array[:, :3] = -1000  # air rows outside the body: cropped away
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[0, 0, 2.5], [-1.2, 0, 0], [0, -1.1, 0]])  # a sagittal-ish acquisition
    norm = {"type": "scale_range", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1}
    package = _threshold_package(
        tmp_path,
        {"orientation": "RAS", "normalization": norm, "crop_foreground": {"threshold": -900, "margin_mm": 2}},
    )
    result = predict_labels([array], ijk_to_ras, package, device="cpu")
    assert result.labels.shape == array.shape
    assert np.array_equal(result.labels, (array > 0).astype(np.uint8))

    # with resampling the undo is a linear interpolation of the logits: close, not identical
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(rng.normal(size=(21, 30, 26)), sigma=3.0)
    smooth *= 400 / smooth.std()
    package2 = _threshold_package(
        tmp_path / "r",
        {"orientation": "LPS", "axis_order": "ijk", "spacing_mm": [2.0, 1.7, 1.9], "normalization": norm},
    )
    res2 = predict_labels([smooth], ijk_to_ras, package2, device="cpu", probabilities=True)
    truth = smooth > 0
    dice = 2 * (truth & (res2.labels == 1)).sum() / (truth.sum() + (res2.labels == 1).sum())
    assert res2.labels.shape == smooth.shape and dice > 0.95
    assert res2.probabilities["bright"].dtype == np.uint8


def test_prepare_input_spacing_and_axis_order() -> None:
    array = np.zeros((10, 20, 30), dtype=np.float32)
    ijk = np.diag([-2.0, -1.0, 3.0, 1.0])  # spacing i=2, j=1, k=3, LPS axes
    prepared = prepare_input([array], ijk, {"orientation": "LPS", "axis_order": "ijk", "spacing_mm": [4.0, 2.0, 3.0]})
    assert tuple(prepared.tensor.shape) == (1, 15, 10, 10)  # (i, j, k) = 30*2/4, 20*1/2, 10*3/3
    # any permutation, e.g. nnU-Net's transpose_forward [1, 0, 2] = network axes (j, k, i)
    ramp = np.arange(10 * 20 * 30, dtype=np.float32).reshape(10, 20, 30)
    prepared = prepare_input([ramp], np.diag([2.0, 1.0, 3.0, 1.0]), {"axis_order": "jki", "spacing_mm": None})
    assert prepared.axes == (1, 0, 2) and prepared.network_shape_before_resample() == (20, 10, 30)
    assert np.array_equal(prepared.tensor[0].numpy(), ramp.transpose(1, 0, 2))
    assert np.array_equal(prepared.from_network_axes(prepared.tensor[0].numpy()), ramp)
    assert prepared.network_spacing == (1.0, 3.0, 2.0)
    resampled = prepare_input([ramp], np.diag([2.0, 1.0, 3.0, 1.0]), {"axis_order": "jki", "spacing_mm": [4, 2, 3]})
    assert tuple(resampled.tensor.shape) == (1, 10, 10, 15)  # (j, k, i) = 20*1/2, 10*3/3, 30*2/4
    with pytest.raises(UserInputError, match="not a permutation"):
        prepare_input([ramp], np.eye(4), {"axis_order": "kjj"})


def test_piecewise_linear_normalization() -> None:
    """Linear between the points, the end values beyond them, float32; bad points are one clear error."""
    from MedSegLib.deep_learning.preprocessing import normalize

    config = {"type": "piecewise_linear", "points": [[-1000, 0], [-150, 0.1], [250, 0.8], [1000, 1]]}
    hu = np.array([[[-3000, -1000, -575, -150, 50, 250, 625, 1000, 3071]]], dtype=np.int16)
    out = normalize(hu, config)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.05, 0.1, 0.45, 0.8, 0.9, 1, 1], atol=1e-6)
    bad = (None, [[0, 0]], [[0, 0], [0, 1]], [[1, 0], [0, 1]], [[0, 0], [1, "x"]], [[0, 0], [float("nan"), 1]])
    for points in bad:
        with pytest.raises(UserInputError, match="two or more"):
            normalize(hu, {"type": "piecewise_linear", "points": points})


# --- model packages ------------------------------------------------------------------------------------


def _tiny_package(tmp_path: Path, name: str = "tiny") -> mp.ModelPackage:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**TINY_UNET).state_dict(), str(tmp_path / "w.pt"))
    manifest = {
        "name": name,
        "version": "0.1",
        "licence": "Apache-2.0",
        "input": {"channels": 1, "modalities": ["CT"]},
        "labels": [
            {"name": "a", "color": [255, 0, 0]},
            {
                "name": "bone",
                "color": [241, 214, 145],
                "terminology": {"category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "272673000", "Bone"]},
            },
        ],
        "network": {"weights": "model.pt", "format": "state_dict", "architecture": "UNet", "parameters": TINY_UNET},
        "preprocessing": {"orientation": "LPS", "normalization": {"type": "zscore"}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2},
    }
    return mp.write_model_package(tmp_path / name, manifest, tmp_path / "w.pt")


def _edit_manifest(package: mp.ModelPackage, change) -> None:
    path = package.root / mp.MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["labels"].append({"name": "extra"}), "out_channels=3 but 3 labels"),
        (lambda m: m["input"].update(channels=2, modalities=["CT", "PET"]), "in_channels=1 but 'input.channels' is 2"),
        (lambda m: m["labels"][1].update(value=5), "label values must be 1..N"),
        (lambda m: m["network"].update(weights="missing.pt"), "weights file 'missing.pt'"),
        (lambda m: m["network"].update(format="onnx"), "'network.format' must be one of"),
        (lambda m: m["inference"].update(roi_size=[16, 16]), "roi_size"),
        (lambda m: m.pop("labels"), "missing required field 'labels'"),
        (lambda m: m.update(format_version=99), "not supported"),
        (
            lambda m: m["preprocessing"].update(normalization={"type": "piecewise_linear", "points": [[0, 0], [0, 1]]}),
            "'preprocessing.normalization': 'piecewise_linear' normalisation needs 'points'",
        ),
        (lambda m: m["preprocessing"].update(normalization={"type": "window"}), "must be one of"),
    ],
)
def test_model_package_validation_errors(tmp_path, change, message) -> None:
    package = _tiny_package(tmp_path)
    _edit_manifest(package, change)
    with pytest.raises(UserInputError, match=message):
        mp.load_model_package(package.root)


def test_model_package_checksum_and_weights_errors(tmp_path) -> None:
    package = _tiny_package(tmp_path)
    mp.load_model_package(package.root).load_network()  # valid as written
    with open(package.weights_path, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(UserInputError, match="checksum mismatch"):
        mp.load_model_package(package.root).load_network()
    # weights of another shape: sha matches (updated) but the state dict does not fit
    from monai.networks.nets import UNet

    torch.save(UNet(**dict(TINY_UNET, channels=(8, 16))).state_dict(), str(package.weights_path))
    _edit_manifest(package, lambda m: m["network"].update(sha256=mp.sha256_of(package.weights_path)))
    with pytest.raises(UserInputError, match="weights do not fit"):
        mp.load_model_package(package.root).load_network()
    with pytest.raises(UserInputError, match="no medseg-model.json"):
        mp.load_model_package(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / mp.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UserInputError, match="invalid JSON"):
        mp.load_model_package(tmp_path / "bad")


def test_torchscript_channel_mismatch_is_reported(tmp_path) -> None:
    package = _threshold_package(tmp_path, {"normalization": {"type": "none"}})
    _edit_manifest(package, lambda m: m["labels"].append({"name": "second"}))
    package = mp.load_model_package(package.root)  # TorchScript: count known only by running it
    net = package.load_network()
    with pytest.raises(UserInputError, match="returns 2 channels"):
        package.check_network_channels(net)
    with pytest.raises(UserInputError, match="returned 2 channels"):
        predict_labels([np.zeros((8, 8, 8), np.float32)], np.eye(4), package, device="cpu")
    with pytest.raises(UserInputError, match="needs 1 input channel"):
        predict_labels([np.zeros((8, 8, 8))] * 2, np.eye(4), package, device="cpu")


def test_zip_package_and_install_and_listing(tmp_path, monkeypatch) -> None:
    package = _tiny_package(tmp_path, "zipped")
    archive = shutil.make_archive(str(tmp_path / "zipped"), "zip", tmp_path, "zipped")
    models_dir = tmp_path / "models"
    monkeypatch.setenv("MEDSEG_MODELS", str(models_dir))
    installed = mp.install_model(archive)
    assert installed.root == models_dir / "zipped" and installed.name == package.name
    assert "zipped" in [p.name for p in mp.list_models()]
    assert mp.resolve_model("zipped").root == installed.root
    with pytest.raises(UserInputError, match="installed already"):
        mp.install_model(package.root)
    with pytest.raises(UserInputError, match="not an importable model"):
        mp.install_model(tmp_path / "models")


# --- MRML output -----------------------------------------------------------------------------------


def test_segment_volume_node_output(scene, tmp_path) -> None:
    import slicer

    from MedSegLib.deep_learning.inference import segment_volume_node
    from MedSegLib.volume_nodes import add_volume_node

    package = _tiny_package(tmp_path)
    volume = add_volume_node(
        np.random.default_rng(0).normal(size=(20, 24, 28)), np.diag([-1.5, -1.5, 2, 1]), "ct", scene
    )
    ids = segment_volume_node(volume, None, model_path=package.root, device="cpu", probabilities=True)
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    names = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in ids]
    assert names == ["a", "bone"]
    assert list(ids) == ["a", "bone"]  # IDs from the label names: the same input writes the same .seg.nrrd
    bone = segmentation.GetSegmentation().GetSegment(ids[1])
    assert "SCT^272673000^Bone" in bone.GetTerminology()
    assert np.allclose(bone.GetColor(), (241 / 255, 214 / 255, 145 / 255))
    result = predict_labels([slicer.util.arrayFromVolume(volume)], np.diag([-1.5, -1.5, 2, 1]), package, device="cpu")
    for value, sid in enumerate(ids, start=1):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, sid, volume)
        assert np.array_equal(mask > 0, result.labels == value)
    assert scene.GetFirstNodeByName("ct bone probability") is not None
    # re-running replaces the segments instead of duplicating them
    again = segment_volume_node(volume, segmentation, model_path=package.root, device="cpu")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert list(again) == list(ids)


# --- CLI -----------------------------------------------------------------------------------------------


def _write_volume(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 2.0)) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_cli_infer_models_import(runtime, tmp_path, monkeypatch, capsys) -> None:
    from MedSegLib.cli.main import main
    from MedSegLib.node_io import load_segmentation, load_volume

    package = _tiny_package(tmp_path)
    monkeypatch.setenv("MEDSEG_MODELS", str(tmp_path / "models"))
    ct = _write_volume(tmp_path / "ct.nrrd", np.random.default_rng(1).normal(size=(18, 20, 22)).astype(np.float32))
    assert (
        main(
            [
                "deepseg",
                "infer",
                str(ct),
                "--model",
                str(package.root),
                "-o",
                str(tmp_path / "o.seg.nrrd"),
                "--device",
                "cpu",
                "--overlap",
                "0.5",
                "--quiet",
            ]
        )
        == 0
    )
    runtime.scene.Clear(0)
    seg = load_segmentation(tmp_path / "o.seg.nrrd")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    assert (
        main(
            [
                "deepseg",
                "infer",
                str(ct),
                "--model",
                str(package.root),
                "-o",
                str(tmp_path / "o.nii.gz"),
                "--device",
                "cpu",
                "--quiet",
                "--json",
                "--optimize",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["peak_rss_mb"] > 0 and summary["windows"] > 0 and summary["network"] == "traced+frozen"
    assert (tmp_path / "o.ctbl").is_file()
    labelmap = load_volume(tmp_path / "o.nii.gz", label=True)
    assert labelmap.GetImageData().GetDimensions() == (22, 20, 18)

    assert main(["deepseg", "import", str(package.root), "--check"]) == 0
    capsys.readouterr()
    assert main(["deepseg", "models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    tiny = next(item for item in listed if item["name"] == "tiny")
    assert tiny["labels"] == ["a", "bone"] and tiny["version"] == "0.1"
    # by name, once installed
    assert main(["deepseg", "infer", str(ct), "--model", "tiny", "-o", str(tmp_path / "n.seg.nrrd"), "--quiet"]) == 0
    assert main(["deepseg", "infer", str(ct), "--model", "nope", "-o", str(tmp_path / "x.seg.nrrd")]) == 2
    assert "no model folder or installed model named 'nope'" in capsys.readouterr().err
    assert main(["deepseg", "infer", str(ct), "--model", "tiny", "-o", str(tmp_path / "x.png")]) == 2


# --- the shipped demo model --------------------------------------------------------------------------


DEMO_DICE_REQUIRED = 0.90  # every label (the model's README lists Dice on five more unseen phantoms)


def test_demo_model_dice_on_unseen_phantom() -> None:
    """Dice >= 0.90 per label on a phantom with a noise seed and a geometry never used in training."""
    import sys

    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    assert (DEMO_MODEL / mp.MANIFEST_NAME).is_file(), "the demo model is not shipped (Testing/train_demo_model.py)"
    sys.path.insert(0, str(ROOT / "Testing"))
    from train_demo_model import LABEL_MAP

    package = mp.load_model_package(DEMO_MODEL)
    assert [label.name for label in package.labels] == ["body", "lungs", "bone", "liver"]
    assert package.weights_path.stat().st_size < 5e6
    phantom = make_ct_phantom(shape=(52, 120, 124), spacing_mm=(4.6, 2.9, 2.9), seed=123)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(
        tuple(reversed(phantom.spacing)), np.eye(3), phantom.origin_lps
    )
    result = predict_labels([phantom.hu], ijk_to_ras, package, device="cpu")
    truth = np.zeros(256, np.uint8)
    for source, target in LABEL_MAP.items():
        truth[source] = target
    truth = truth[phantom.labels]
    from MedSegLib.deep_learning.training import dice_per_label

    dice = dict(zip([label.name for label in package.labels], dice_per_label(result.labels, truth, 4)))
    print("demo model Dice on unseen phantom:", {k: round(v, 4) for k, v in dice.items()})
    failing = {name: d for name, d in dice.items() if d < DEMO_DICE_REQUIRED}
    assert not failing, f"Dice below {DEMO_DICE_REQUIRED}: {failing} (all: {dice})"


@pytest.mark.parametrize(
    "name", ["check_sliding_window_brute_force", "check_model_package_validation", "check_segment_volume_node"]
)
def test_selftests(scene, tmp_path, name) -> None:
    from MedSegLib.selftests import deep_learning_selftests

    deep_learning_selftests.ALL_CHECKS[name](scene, tmp_path)
    assert not deep_learning_selftests.SKIPPED


# --- imports of third-party model folders ----------------------------------------------------------------


def _fake_monai_bundle(root: Path) -> Path:
    """A bundle laid out like model-zoo's spleen_ct_segmentation (tiny UNet, literal configs)."""
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "license.txt").write_text("Apache License 2.0\n")
    meta = {
        "name": "tiny spleen",
        "version": "0.5.1",
        "monai_version": "1.6.1",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [16, 16, 16],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 3,
                    "channel_def": {"0": "background", "1": "spleen", "2": "kidney"},
                }
            },
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 1,
        },
        "roi": [16, 16, 16],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 4, "overlap": 0.5},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.manual_seed(5)
    torch.save(UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).state_dict(), str(root / "models" / "model.pt"))
    return root


def test_monai_bundle_import_matches_monai(tmp_path) -> None:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    bundle = _fake_monai_bundle(tmp_path / "tiny_spleen")
    package = mp.install_model(bundle, models_dir=tmp_path / "models")
    assert package.name == "tiny_spleen" and [label.name for label in package.labels] == ["spleen", "kidney"]
    assert package.preprocessing["orientation"] == "RAS" and package.preprocessing["axis_order"] == "ijk"
    assert package.inference["overlap"] == 0.5 and package.manifest["licence"] == "Apache License 2.0"
    # a RAS volume with the bundle's spacing: MedSeg's result must equal MONAI on the (x, y, z) array
    hu = np.random.default_rng(3).normal(50, 80, size=(20, 24, 28)).astype(np.float32)
    ijk_to_ras = np.diag([1.5, 1.5, 2.0, 1.0])
    result = predict_labels([hu], ijk_to_ras, package, device="cpu")
    torch.manual_seed(5)
    net = UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval()
    net.load_state_dict(torch.load(str(bundle / "models" / "model.pt"), weights_only=True))
    xyz = np.clip((hu.transpose(2, 1, 0) + 57) / (164 + 57), 0, 1)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(xyz)[None, None], (16, 16, 16), 4, net, overlap=0.5)
    expected = torch.argmax(logits[0], 0).numpy().transpose(2, 1, 0)
    assert np.array_equal(result.labels, expected)


def test_monai_bundle_with_code_is_refused(tmp_path) -> None:
    bundle = _fake_monai_bundle(tmp_path / "evil")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["channels"] = "$__import__('os').system('echo pwned')"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="cannot be imported"):
        mp.install_model(bundle, models_dir=tmp_path / "models")


def test_nnunet_import_without_nnunetv2_is_a_clear_error(tmp_path, monkeypatch) -> None:
    from MedSegLib.deep_learning import nnunet_import

    monkeypatch.setattr(nnunet_import, "nnunet_available", lambda: False)
    (tmp_path / "nn").mkdir()
    (tmp_path / "nn" / "plans.json").write_text("{}")
    (tmp_path / "nn" / "dataset.json").write_text("{}")
    with pytest.raises(UserInputError, match="needs the optional package 'nnunetv2'"):
        mp.install_model(tmp_path / "nn", models_dir=tmp_path / "models")


# nnU-Net raw dataset from the CT phantom, labels merged to 3 classes: body, lung, bone
_NNUNET_LABELS = {"background": 0, "body": 1, "lung": 2, "bone": 3}
_PHANTOM_TO_NNUNET = np.array([0, 1, 2, 2, 1, 3, 3, 1, 1], dtype=np.uint8)  # phantom label value -> class


def _nnunet_trained_model(root: Path, monkeypatch, shape, spacing_kji, steps: int = 10):
    """An nnU-Net v2 trained-model folder made by nnU-Net's own code, offline and in seconds.

    Raw dataset (2 phantom cases, nnU-Net raw layout) -> nnU-Net's fingerprint extraction and experiment
    planning (a planner subclass with 4..16 features so that training is quick) -> nnU-Net's
    preprocessor (its blosc2 files) -> nnUNetTrainer (built from the plans, its loss and optimiser, a few
    ``train_step`` calls, one whole preprocessed case each) -> ``nnUNetTrainer.save_checkpoint``.
    Returns (model folder, PlansManager, dataset.json dict).
    """
    import multiprocessing.pool
    from types import SimpleNamespace

    import SimpleITK as sitk
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from MedSegLib.sample_data.ct_phantom import make_ct_phantom

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(root / variable))  # nnunetv2.paths reads these when used
    name = "Dataset987_MedSegPhantom"
    raw = root / "nnUNet_raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    dataset_json = {
        "name": "MedSegPhantom",
        "channel_names": {"0": "CT"},
        "labels": _NNUNET_LABELS,
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    cases = []
    for seed in range(2):
        phantom = make_ct_phantom(shape, spacing_kji, seed=seed)
        case = f"case_{seed:03d}"
        for array, path in (
            (phantom.hu, raw / "imagesTr" / f"{case}_0000.nii.gz"),
            (_PHANTOM_TO_NNUNET[phantom.labels], raw / "labelsTr" / f"{case}.nii.gz"),
        ):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
            sitk.WriteImage(image, str(path))
        cases.append(case)

    class SmallSampleFingerprint(fingerprint_extractor.DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 10**5  # nnU-Net samples 1e8 (slow, same statistics)

    # the extractor's spawn pool as a thread pool: no Python start-up (seconds) for one worker
    threads = SimpleNamespace(Pool=multiprocessing.pool.ThreadPool)
    monkeypatch.setattr(fingerprint_extractor, "multiprocessing", SimpleNamespace(get_context=lambda *_: threads))
    extract_fingerprint_dataset(987, SmallSampleFingerprint, num_processes=1, verbose=False, show_progress_bar=False)

    class SmallUNetPlanner(ExperimentPlanner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.UNet_base_num_features = 4
            self.UNet_max_features_3d = 16

    _, plans_identifier = plan_experiment_dataset(987, SmallUNetPlanner)
    plans = json.loads((root / "nnUNet_preprocessed" / name / f"{plans_identifier}.json").read_text())
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    preprocessed = root / "nnUNet_preprocessed" / name / configuration.data_identifier
    preprocessed.mkdir()
    preprocessor = DefaultPreprocessor(verbose=False)
    for case in cases:  # what DefaultPreprocessor.run does per case in its worker pool
        preprocessor.run_case_save(
            str(preprocessed / case),
            [str(raw / "imagesTr" / f"{case}_0000.nii.gz")],
            str(raw / "labelsTr" / f"{case}.nii.gz"),
            plans_manager,
            configuration,
            dataset_json,
        )

    torch.manual_seed(0)
    trainer = nnUNetTrainer(dict(plans, continue_training=False), "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.enable_deep_supervision = False
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the allowed mirroring axes
    dataset = nnUNetDatasetBlosc2(str(preprocessed))
    data, target = [], []
    for case in cases:
        image, seg, _, _ = dataset.load_case(case)
        data.append(np.asarray(image[:]))
        target.append(np.maximum(np.asarray(seg[:]), 0))  # -1 = outside the non-zero mask -> background
    batches = [
        {"data": torch.from_numpy(d[None]), "target": torch.from_numpy(t[None]).float()} for d, t in zip(data, target)
    ]
    trainer.network.train()
    losses = [float(trainer.train_step(batches[step % len(batches)])["loss"]) for step in range(steps)]
    assert losses[-1] < losses[0]
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    model_dir = Path(trainer.output_folder_base)  # what nnUNetv2_train leaves: plans/dataset json + fold_0/
    (model_dir / "plans.json").write_text(json.dumps(plans))
    (model_dir / "dataset.json").write_text(json.dumps(dataset_json))
    return model_dir, plans_manager, dataset_json


@pytest.mark.parametrize(
    "spacing_kji, axis_order",
    [
        ((12.0, 9.0, 9.0), "kji"),  # slices thickest: nnU-Net keeps the axes
        ((6.0, 9.0, 9.0), "jki"),  # rows thickest: nnU-Net plans transpose_forward [1, 0, 2]
    ],
)
def test_nnunet_import_matches_nnunet(tmp_path, monkeypatch, capsys, spacing_kji, axis_order) -> None:
    """An nnU-Net v2 model planned, trained and saved by nnU-Net's own code, imported, matches nnU-Net.

    The test volume is at the plans' spacing and as large as the patch (one window, no resampling, no
    padding), so the documented differences (window placement, Gaussian, resampling order) do not apply.
    nnUNetPredictor sums windows in float16, so its logits are the network's rounded to half precision:
    the tolerance is that rounding (2**-11 relative) plus 1e-4 for float32 tracing/convolution order.
    With one window the Gaussian weights cancel, and in float16 nnU-Net's Gaussian underflows at the
    window corners (errors up to ~0.5 there), so nnU-Net is run with ``use_gaussian=False``. Measured:
    preprocessing identical; logits 4.8e-7 from nnU-Net's network in float32 (identical argmax), 2e-3 from
    nnUNetPredictor (max |logit| ~6); probabilities 2.2e-3; labels differ from nnUNetPredictor's at 0-2 of
    16384 voxels, all near-ties under its float16 rounding.
    """
    pytest.importorskip("nnunetv2", reason="nnunetv2 is the optional 'nnunet' extra")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from MedSegLib.cli.main import main
    from MedSegLib.deep_learning.nnunet_import import convert_nnunet_folder
    from MedSegLib.sample_data.ct_phantom import make_ct_phantom

    shape = (16, 32, 32)
    model_dir, plans_manager, dataset_json = _nnunet_trained_model(tmp_path / "nnunet", monkeypatch, shape, spacing_kji)
    configuration = plans_manager.get_configuration("3d_fullres")
    transpose = list(plans_manager.transpose_forward)
    assert "".join("kji"[a] for a in transpose) == axis_order
    assert list(configuration.patch_size) == [shape[a] for a in transpose]  # one window on the test volume
    assert configuration.normalization_schemes == ["CTNormalization"]

    # import: the library call and the CLI give the same package
    package = mp.load_model_package(convert_nnunet_folder(model_dir, tmp_path / "converted").root)
    assert main(["deepseg", "import", str(model_dir), "--models-dir", str(tmp_path / "models"), "--check"]) == 0
    assert "installed Dataset987_MedSegPhantom fold0 (3 labels)" in capsys.readouterr().out
    installed = mp.resolve_model(tmp_path / "models" / "Dataset987_MedSegPhantom")
    assert installed.manifest["preprocessing"] == package.manifest["preprocessing"]
    assert [(label.value, label.name) for label in installed.labels] == [(1, "body"), (2, "lung"), (3, "bone")]
    pre = installed.preprocessing
    intensity = plans_manager.foreground_intensity_properties_per_channel["0"]
    assert pre["axis_order"] == axis_order and pre["spacing_mm"] == list(spacing_kji[::-1])
    assert pre["normalization"] == {
        "type": "ct_clip_zscore",
        "lower": intensity["percentile_00_5"],
        "upper": intensity["percentile_99_5"],
        "mean": intensity["mean"],
        "std": intensity["std"],
    }
    assert list(installed.roi_size) == list(configuration.patch_size)

    test = make_ct_phantom(shape, spacing_kji, seed=7)  # unseen noise
    ijk_to_ras = np.diag([*spacing_kji[::-1], 1.0])
    properties = {"spacing": list(spacing_kji)}

    # preprocessing: nnU-Net's preprocessor (transpose, crop to non-zero = whole CT, CT normalisation)
    nn_data, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        test.hu[None].astype(np.float32), None, dict(properties), plans_manager, configuration, dataset_json
    )
    prepared = prepare_input([test.hu], ijk_to_ras, installed.preprocessing)
    assert prepared.tensor.shape == nn_data.shape
    prep_diff = float(np.abs(prepared.tensor.numpy() - nn_data).max())
    assert prep_diff <= 1e-5

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=False,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    net = installed.load_network(torch.device("cpu"))
    slabs = iter_sliding_window_slabs(
        prepared.tensor, net, installed.roi_size, overlap=0.5, mode="gaussian", sw_batch_size=1, device="cpu"
    )
    ms_logits = torch.cat([slab for _, _, slab in slabs], dim=1).numpy()
    # nnU-Net's network (rebuilt from the checkpoint by nnU-Net) in float32 on the same window
    with torch.inference_mode():
        nn_net_logits = predictor.network.eval()(torch.from_numpy(nn_data)[None])[0].numpy()
    net_diff = float(np.abs(ms_logits - nn_net_logits).max())
    assert net_diff <= 1e-4  # float32: TorchScript trace vs eager, one window
    assert np.array_equal(ms_logits.argmax(0), nn_net_logits.argmax(0))
    # nnU-Net's sliding window: the same, rounded to float16
    nn_logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(nn_data)).float().numpy()
    half_rounding = 2.0**-11 * float(np.abs(nn_logits).max())
    logit_diff = np.abs(ms_logits - nn_logits)
    assert np.all(logit_diff <= 2.0**-11 * np.abs(nn_logits) + 1e-4), float(logit_diff.max())

    # end to end on the source grid: nnUNetPredictor's labels and probabilities vs MedSeg's
    nn_labels, nn_probs = predictor.predict_single_npy_array(
        test.hu[None].astype(np.float32), dict(properties), save_or_return_probabilities=True
    )
    result = predict_labels([test.hu], ijk_to_ras, installed, device="cpu", probabilities=True)
    assert result.windows == 1 and result.labels.shape == nn_labels.shape == shape
    assert set(np.unique(nn_labels)) >= {0, 1, 2}  # trained: not a constant map
    accuracy = float((nn_labels == _PHANTOM_TO_NNUNET[test.labels]).mean())
    assert accuracy > 0.75  # 62% of the voxels are background
    # labels differ only where the top two logits are closer than nnU-Net's float16 rounding of both
    top2 = np.sort(ms_logits, axis=0)[-2:]
    near_tie = prepared.from_network_axes(top2[1] - top2[0]) <= 2 * half_rounding
    differ = result.labels != nn_labels
    assert not np.any(differ & ~near_tie), int((differ & ~near_tie).sum())
    assert np.array_equal(result.labels, prepared.from_network_axes(nn_net_logits.argmax(0)))
    prob_diff = max(
        float(np.abs(result.probabilities[label.name] / 255.0 - nn_probs[label.value]).max())
        for label in installed.labels
    )
    assert prob_diff <= 0.5 / 255 + half_rounding / 2 + 1e-6  # uint8 rounding + |d softmax| <= |d logit| / 2
    print(
        f"nnU-Net {axis_order}: preprocessing max diff {prep_diff:.2g}; logits max diff {net_diff:.2g} vs its "
        f"network, {logit_diff.max():.2g} vs nnUNetPredictor (max |logit| {np.abs(nn_logits).max():.3g}); "
        f"probabilities max diff {prob_diff:.3g}; labels differ at {int(differ.sum())} of {differ.size} voxels "
        f"(near-ties: {int(near_tie.sum())}); voxel accuracy vs phantom truth {accuracy:.3f}"
    )
