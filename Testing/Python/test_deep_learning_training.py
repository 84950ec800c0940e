"""Patch training: data folders, determinism, resume, CSV log, export, and DDP with 2 CPU ranks (torchrun)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the 'dl' extra")
pytest.importorskip("monai", reason="MONAI is the 'dl' extra")

from MedSegLib.deep_learning.model_package import load_model_package  # noqa: E402
from MedSegLib.deep_learning.training import (  # noqa: E402
    PatchSampler,
    TrainConfig,
    find_training_pairs,
    load_cases_from_folder,
    train,
)
from MedSegLib.errors import UserInputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PREPROCESSING = {"orientation": "LPS", "normalization": {"type": "scale_range", "a_min": -1000, "a_max": 1000}}


def _write_pairs(folder: Path, n: int = 2, layout: str = "flat") -> Path:
    import SimpleITK as sitk

    from MedSegLib.sample_data import make_ct_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        phantom = make_ct_phantom(shape=(16, 40, 40), spacing_mm=(12.0, 10.0, 10.0), seed=seed)
        image = sitk.GetImageFromArray(phantom.hu)
        label = sitk.GetImageFromArray(np.where(phantom.labels == 8, 2, phantom.labels > 0).astype(np.uint8))
        for item in (image, label):
            item.SetSpacing((10.0, 10.0, 12.0))
        if layout == "msd":
            (folder / "imagesTr").mkdir(exist_ok=True)
            (folder / "labelsTr").mkdir(exist_ok=True)
            sitk.WriteImage(image, str(folder / "imagesTr" / f"case{seed}_0000.nii.gz"))
            sitk.WriteImage(label, str(folder / "labelsTr" / f"case{seed}.nii.gz"))
        else:
            sitk.WriteImage(image, str(folder / f"case{seed}.nrrd"))
            sitk.WriteImage(label, str(folder / f"case{seed}_label.nrrd"))
    return folder


def _config(out: Path, **overrides) -> TrainConfig:
    values = dict(
        labels=["body", "liver"],
        out_dir=str(out),
        epochs=2,
        steps_per_epoch=2,
        batch_size=2,
        roi_size=(16, 16, 16),
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
        preprocessing=PREPROCESSING,
        seed=7,
        model_name="tiny-trained",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_data_folders(tmp_path) -> None:
    flat = _write_pairs(tmp_path / "flat")
    msd = _write_pairs(tmp_path / "msd", layout="msd")
    assert [case for case, _, _ in find_training_pairs(flat)] == ["case0", "case1"]
    pairs = find_training_pairs(msd)
    assert [case for case, _, _ in pairs] == ["case0", "case1"] and pairs[0][1][0].name == "case0_0000.nii.gz"
    cases = load_cases_from_folder(flat, PREPROCESSING)
    assert cases[0].image.shape == (1, 16, 40, 40) and set(np.unique(cases[0].labels)) == {0, 1, 2}
    with pytest.raises(UserInputError, match="no \\(image, label\\) pairs"):
        find_training_pairs(tmp_path)


def test_patches_are_balanced_toward_labels(tmp_path) -> None:
    cases = load_cases_from_folder(_write_pairs(tmp_path / "d", n=1), PREPROCESSING)
    sampler = PatchSampler(cases, (8, 8, 8), pos_fraction=1.0, rng=np.random.default_rng(0))
    centres = [sampler.sample()[1][4, 4, 4] for _ in range(200)]
    # liver (2) is ~5 % of the voxels but half of the positive centres
    assert 0.35 < np.mean(np.asarray(centres) == 2) < 0.65


def test_label_sampling_weights_steer_positive_patches(tmp_path) -> None:
    cases = load_cases_from_folder(_write_pairs(tmp_path / "d", n=1), PREPROCESSING)
    only_liver = PatchSampler(cases, (8, 8, 8), pos_fraction=1.0, rng=np.random.default_rng(0), label_weights=[0, 1])
    assert all(only_liver.sample()[1][4, 4, 4] == 2 for _ in range(50))
    mostly_body = PatchSampler(cases, (8, 8, 8), 1.0, np.random.default_rng(0), label_weights=[9, 1])
    share = np.mean([mostly_body.sample()[1][4, 4, 4] == 2 for _ in range(300)])
    assert 0.03 < share < 0.2  # 10 % expected
    with pytest.raises(UserInputError, match="label sampling weights"):
        PatchSampler(cases, (8, 8, 8), 1.0, np.random.default_rng(0), label_weights=[0, 0])


def test_batch_norm_recalibration_is_a_plain_average() -> None:
    from MedSegLib.deep_learning.training import recalibrate_batch_norm

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1, bias=False), torch.nn.BatchNorm3d(2)).eval()
    torch.nn.init.ones_(net[0].weight)
    batches = iter([torch.full((1, 1, 2, 2, 2), float(v)) for v in (1.0, 2.0, 6.0)])
    assert recalibrate_batch_norm(net, lambda: next(batches), 3) == 1
    assert torch.allclose(net[1].running_mean, torch.full((2,), 3.0))  # mean of 1, 2, 6 (not an EMA)
    assert net[1].momentum == 0.1 and not net.training
    assert recalibrate_batch_norm(torch.nn.Conv3d(1, 1, 1), lambda: None, 5) == 0


def test_training_is_deterministic_resumable_and_exports(tmp_path) -> None:
    cases = load_cases_from_folder(_write_pairs(tmp_path / "d"), PREPROCESSING)
    first = train(_config(tmp_path / "a"), cases[:1], cases[1:], log=lambda s: None)
    assert first["best_epoch"] in (0, 1)
    with open(tmp_path / "a" / "training" / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"] and "dice_liver" in rows[0]
    package = load_model_package(tmp_path / "a")
    assert [label.name for label in package.labels] == ["body", "liver"]
    package.check_network_channels(package.load_network())

    # interrupted after epoch 1 of 2, then resumed: same weights as the uninterrupted run
    train(_config(tmp_path / "c", epochs=1), cases[:1], cases[1:], log=lambda s: None)
    messages = []
    train(_config(tmp_path / "c", epochs=2), cases[:1], cases[1:], log=messages.append)
    assert any("resumed" in m for m in messages)
    state_c = torch.load(str(tmp_path / "c" / "training" / "checkpoint_last.pt"), weights_only=False)["model"]
    state_a = torch.load(str(tmp_path / "a" / "training" / "checkpoint_last.pt"), weights_only=False)["model"]
    # run c is a separate run with the same seed, interrupted and resumed: identical weights prove both
    # determinism and bit-for-bit resume
    assert all(torch.equal(state_a[k], state_c[k]) for k in state_a), "same seed + resume must give the same weights"


def test_ddp_two_cpu_ranks_agree_after_a_step(tmp_path) -> None:
    """``medseg deepseg train`` under torchrun with 2 gloo ranks: weights identical on both after the step."""
    data = _write_pairs(tmp_path / "d", n=3)
    out = tmp_path / "model"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "MedSegExtension"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "MedSegLib.cli.main",
        "deepseg",
        "train",
        "--data",
        str(data),
        "--labels",
        "body",
        "liver",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--max-steps",
        "1",
        "--roi",
        "16",
        "--channels",
        "4",
        "8",
        "--res-units",
        "1",
        "--batch-size",
        "1",
        "-o",
        str(out),
        "--seed",
        "3",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "training" / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1]["world_size"] == "2"
    assert float(rows[-1]["ranks_max_weight_diff"]) == 0.0
    summary = json.loads((out / "training" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # a step happened: weights differ from the seeded initialisation
    from MedSegLib.deep_learning.model_package import build_network

    package = load_model_package(out)
    torch.manual_seed(3)
    initial = build_network(package.network).state_dict()
    trained = torch.load(str(out / "model.pt"), weights_only=True)
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
