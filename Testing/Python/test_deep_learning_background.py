"""Inference and training in a background process (what the Slicer panel uses): progress parsed from the
child's ``MEDSEG-PROGRESS`` lines, the JSON summary, the error message, and cancel = terminate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
sitk = pytest.importorskip("SimpleITK")

from MedSegLib.deep_learning.background import (  # noqa: E402
    PROGRESS_PREFIX,
    BackgroundRun,
    parse_progress_line,
    progress_line,
    start_inference,
    start_training,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "Resources" / "Models" / "medseg-ct-phantom"


def _phantom_file(path: Path, shape=(24, 64, 64), spacing=(5.0, 4.0, 4.0), seed=11) -> Path:
    from MedSegLib.sample_data import make_ct_phantom

    phantom = make_ct_phantom(shape=shape, spacing_mm=spacing, seed=seed)
    image = sitk.GetImageFromArray(phantom.hu)
    image.SetSpacing(tuple(reversed(phantom.spacing)))
    image.SetOrigin(phantom.origin_lps)
    sitk.WriteImage(image, str(path))
    return path


def test_progress_line_round_trip() -> None:
    line = progress_line(0.25, "window 8/32,\nETA 3 s")
    assert line == f"{PROGRESS_PREFIX} 0.2500 window 8/32, ETA 3 s"
    assert parse_progress_line(line + "\n") == (0.25, "window 8/32, ETA 3 s")
    assert parse_progress_line(progress_line(7, "")) == (1.0, "")
    assert parse_progress_line("epoch 1/2 loss 0.3") is None
    assert parse_progress_line(f"{PROGRESS_PREFIX} abc x") is None


def test_background_inference_progress_result_and_cancel(tmp_path) -> None:
    ct = _phantom_file(tmp_path / "ct.nrrd", shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0))
    out = tmp_path / "labels.nii.gz"
    run = start_inference(str(ct), str(DEMO_MODEL), str(out), device="cpu", overlap=0.5, sw_batch_size=1)
    assert run.running or run.returncode == 0
    assert run.wait(timeout=300) == 0, run.error_text[-2000:]
    fractions = [f for f, _ in run.progress_history]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert run.fraction == 1.0 and "window" in run.message
    summary = run.summary()
    assert summary is not None and summary["model"] == "medseg-ct-phantom" and summary["windows"] == len(fractions)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert labels.shape == (40, 96, 96)
    assert summary["voxels_per_label"]["body"] == int((labels == 1).sum()) > 1000

    # cancel: a bigger input with many windows, terminated after its first progress line
    big = _phantom_file(tmp_path / "big.nrrd", shape=(64, 160, 160), spacing=(4.0, 2.5, 2.5), seed=12)
    out2 = tmp_path / "cancelled.nii.gz"
    run = start_inference(str(big), str(DEMO_MODEL), str(out2), device="cpu", overlap=0.75, sw_batch_size=1)
    deadline = time.monotonic() + 240
    while not run.progress_history and run.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.progress_history and run.running, run.error_text[-2000:]
    first = run.fraction
    asked = time.perf_counter()
    code = run.cancel(grace_seconds=10)
    assert time.perf_counter() - asked < 15
    assert code != 0 and run.cancelled and not run.running
    assert first < 0.5 and not out2.exists()


def test_background_errors_are_reported(tmp_path) -> None:
    run = start_inference(str(tmp_path / "missing.nrrd"), str(DEMO_MODEL), str(tmp_path / "x.nii.gz"), device="cpu")
    assert run.wait(timeout=120) == 2
    assert "error" in run.error_message() and run.summary() is None and not run.progress_history
    with pytest.raises(RuntimeError, match="not started"):
        BackgroundRun(["deepseg", "models"]).wait()


def test_background_training_reports_epochs(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        from MedSegLib.sample_data import make_ct_phantom

        phantom = make_ct_phantom(shape=(16, 40, 40), spacing_mm=(8.0, 6.0, 6.0), seed=i)
        for name, array in ((f"case{i}.nrrd", phantom.hu), (f"case{i}_label.nrrd", (phantom.labels == 8).astype("u1"))):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(reversed(phantom.spacing)))
            sitk.WriteImage(image, str(data / name))
    run = start_training(
        str(data),
        ["liver"],
        2,
        str(tmp_path / "model"),
        extra=["--steps-per-epoch", "1", "--roi", "16", "--channels", "4", "8", "--res-units", "1", "--fresh"],
    )
    assert run.wait(timeout=300) == 0, run.error_text[-2000:]
    assert [round(f, 2) for f, _ in run.progress_history] == [0.5, 1.0]
    assert run.progress_history[-1][1] == "epoch 2/2"
    assert (tmp_path / "model" / "medseg-model.json").is_file()
    assert np.isfinite(run.summary()["seconds"])
