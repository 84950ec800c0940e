"""Self-tests of deep-learning inference (run headless by pytest and inside 3D Slicer by the module test).

They need torch (the ``dl`` extra, or the PyTorch extension in Slicer) but not MONAI: the sliding window is
checked against a brute-force weighted average, and the model is a TorchScript threshold network written
on the fly. Without torch every check reports that it was skipped (``SKIPPED`` is filled in).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

SKIPPED: List[str] = []


def _torch_available(name: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        SKIPPED.append(f"{name}: torch is not installed")
        return False
    return True


def _threshold_package(work_dir: Path, preprocessing: Dict[str, Any]) -> Any:
    import torch

    from MedSegLib.deep_learning.model_package import write_model_package

    class Threshold(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([0.5 - x, x - 0.5], dim=1)

    weights = work_dir / "threshold.ts"
    torch.jit.script(Threshold()).save(str(weights))
    manifest = {
        "name": "selftest-threshold",
        "version": "1",
        "input": {"channels": 1, "modalities": ["CT"]},
        "labels": [
            {
                "name": "dense",
                "color": [241, 214, 145],
                "terminology": {"category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "272673000", "Bone"]},
            }
        ],
        "network": {"weights": "model.ts", "format": "torchscript"},
        "preprocessing": preprocessing,
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2},
    }
    return write_model_package(work_dir / "selftest-threshold", manifest, weights)


def check_sliding_window_brute_force(scene: Any, work_dir: Path) -> None:
    """Streamed stitching equals sum(w * pred) / sum(w) computed window by window in float64."""
    if not _torch_available("check_sliding_window_brute_force"):
        return
    import torch

    from MedSegLib.deep_learning.sliding_window import importance_map, plan_windows, sliding_window_predict

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    image = torch.randn(1, 30, 21, 40)
    roi = (16, 16, 16)
    got = sliding_window_predict(image, net, roi, overlap=0.4, mode="gaussian", sw_batch_size=3)
    plan = plan_windows(image.shape[1:], roi, 0.4)
    pad = [(b, p - s - b) for b, p, s in zip(plan.pad_before, plan.padded_size, plan.image_size)]
    padded = np.pad(image[0].numpy(), pad)
    weight = importance_map(roi, "gaussian").double().numpy()
    total = np.zeros((2, *plan.padded_size))
    count = np.zeros(plan.padded_size)
    with torch.inference_mode():
        for z, y, x in plan.windows:
            window = torch.from_numpy(padded[None, None, z : z + 16, y : y + 16, x : x + 16].copy())
            out = net(window)[0].double().numpy()
            total[:, z : z + 16, y : y + 16, x : x + 16] += out * weight
            count[z : z + 16, y : y + 16, x : x + 16] += weight
    crop = tuple(slice(b, b + s) for b, s in zip(plan.pad_before, plan.image_size))
    expected = (total / count)[(slice(None), *crop)]
    difference = float(np.abs(got.numpy() - expected).max())
    assert difference < 1e-5, f"sliding window differs from the brute-force average by {difference}"


def check_model_package_validation(scene: Any, work_dir: Path) -> None:
    """A package loads; a tampered weights file and a label-count mismatch are refused with clear errors."""
    if not _torch_available("check_model_package_validation"):
        return
    import json

    from MedSegLib.deep_learning.model_package import MANIFEST_NAME, load_model_package
    from MedSegLib.errors import UserInputError

    package = _threshold_package(work_dir, {"normalization": {"type": "none"}})
    package.check_network_channels(package.load_network())
    manifest_path = package.root / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["labels"].append({"name": "extra"})
    manifest_path.write_text(json.dumps(manifest))
    try:
        bad = load_model_package(package.root)
        bad.check_network_channels(bad.load_network())
    except UserInputError as error:
        assert "channels" in str(error), str(error)
    else:
        raise AssertionError("a label-count mismatch was not detected")
    manifest["labels"].pop()
    manifest_path.write_text(json.dumps(manifest))
    with open(package.weights_path, "ab") as handle:
        handle.write(b"x")
    try:
        load_model_package(package.root).load_network()
    except UserInputError as error:
        assert "checksum" in str(error), str(error)
    else:
        raise AssertionError("tampered weights were not detected")


def check_segment_volume_node(scene: Any, work_dir: Path) -> None:
    """Inference lands on the source grid exactly (reorient + crop undone), with names, colours, terminology."""
    if not _torch_available("check_segment_volume_node"):
        return
    import slicer

    from MedSegLib.deep_learning.inference import segment_volume_node
    from MedSegLib.volume_nodes import add_volume_node

    rng = np.random.default_rng(1)
    voxels = rng.normal(0, 300, size=(18, 22, 25)).astype(np.int16)
    voxels[:, :2] = -1000
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = [[0, 0, 2.0], [-1.3, 0, 0], [0, -1.1, 0]]
    volume = add_volume_node(voxels, ijk_to_ras, "selftest-ct", scene)
    norm = {"type": "scale_range", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1}
    package = _threshold_package(
        work_dir, {"orientation": "RAS", "normalization": norm, "crop_foreground": {"threshold": -900, "margin_mm": 2}}
    )
    ids = segment_volume_node(volume, None, model_path=package.root, device="cpu")
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    segment = segmentation.GetSegmentation().GetSegment(ids[0])
    assert segment.GetName() == "dense"
    assert np.allclose(segment.GetColor(), (241 / 255, 214 / 255, 145 / 255))
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, ids[0], volume)
    assert np.array_equal(mask > 0, voxels > 0), "prediction is not on the source voxels"


def check_demo_model_loads(scene: Any, work_dir: Path) -> None:
    """The shipped demo model validates (checksum, channels) without running a whole volume."""
    if not _torch_available("check_demo_model_loads"):
        return
    if importlib.util.find_spec("monai") is None:  # the demo model is a state dict of a MONAI UNet
        SKIPPED.append("check_demo_model_loads: MONAI is not installed")
        return
    from MedSegLib.deep_learning.model_package import load_model_package
    from MedSegLib.resources import resource_path

    package = load_model_package(resource_path("Models", "medseg-ct-phantom"))
    package.check_network_channels(package.load_network())
    assert [label.name for label in package.labels] == ["body", "lungs", "bone", "liver"]


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    "check_sliding_window_brute_force": check_sliding_window_brute_force,
    "check_model_package_validation": check_model_package_validation,
    "check_segment_volume_node": check_segment_volume_node,
    "check_demo_model_loads": check_demo_model_loads,
}
