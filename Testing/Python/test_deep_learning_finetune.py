"""Fine-tune the shipped demo model on one real CT (TotalSegmentator's example case) for the liver.

Honest scope: ONE case, fine-tuned and evaluated on the same case (there is no second labelled real CT
here), so the test proves that the fine-tuning path (start from a package's weights, real NIfTI input,
label remapping, export) moves the model towards the real anatomy -- not that it generalises.
The demo model has never seen a patient (synthetic phantom only). The targets keep the model's own
prediction for its other labels (body / lungs / bone) and take the liver from the reference
segmentation, so fine-tuning for the liver does not teach the network that the rest of the body is
background.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from MedSegLib.deep_learning import model_package as mp  # noqa: E402
from MedSegLib.deep_learning.inference import predict_labels  # noqa: E402
from MedSegLib.deep_learning.training import (  # noqa: E402
    config_from_package,
    dice_per_label,
    prepare_case,
    read_image,
    train,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "Resources" / "Models" / "medseg-ct-phantom"
CT_NAME, SEG_NAME = "example_ct_sm.nii.gz", "example_seg.nii.gz"  # 30x101x122 @ 3 mm, TotalSegmentator labels
TOTALSEG_LIVER = 5  # label_maps_total_and_total_mr.json: "5": "liver"
DEMO_LIVER = 4


def _liver_dice(package: mp.ModelPackage, hu: np.ndarray, ijk_to_ras: np.ndarray, liver: np.ndarray) -> float:
    labels = predict_labels([hu], ijk_to_ras, package, device="cpu").labels
    return dice_per_label((labels == DEMO_LIVER).astype(np.uint8), liver.astype(np.uint8), 1)[0]


def test_finetune_demo_model_on_real_ct_liver(tmp_path, shared_data) -> None:
    CT, SEG = shared_data / "totalsegmentator" / CT_NAME, shared_data / "totalsegmentator" / SEG_NAME
    if not (CT.is_file() and SEG.is_file()):
        pytest.skip(f"real CT with reference segmentation not available ({CT}, {SEG}: TotalSegmentator example)")
    torch.set_num_threads(1)  # deterministic, and the fastest setting on a shared 2-core machine
    started = time.perf_counter()
    package = mp.load_model_package(DEMO_MODEL)
    hu, ijk_to_ras = read_image(CT)
    reference, reference_ijk_to_ras = read_image(SEG)
    assert reference.shape == hu.shape and np.allclose(reference_ijk_to_ras, ijk_to_ras, atol=1e-3)
    liver = reference == TOTALSEG_LIVER
    assert liver.sum() > 10000, "the example case contains the liver"

    before = predict_labels([hu], ijk_to_ras, package, device="cpu").labels
    dice_before = dice_per_label((before == DEMO_LIVER).astype(np.uint8), liver.astype(np.uint8), 1)[0]

    # targets: the model's own body/lungs/bone, the reference liver; its false liver becomes body
    targets = np.where(before == DEMO_LIVER, 1, before).astype(np.uint8)
    targets[liver] = DEMO_LIVER
    case = prepare_case("totalseg-example", [hu], targets, ijk_to_ras, package.preprocessing)
    config = config_from_package(
        package,
        str(tmp_path / "finetuned"),
        epochs=4,
        steps_per_epoch=10,
        roi_size=(48, 48, 48),  # training patch (config_from_package keeps the package's inference window)
        batch_size=2,
        learning_rate=1e-3,
        pos_fraction=1.0,
        label_sampling_weights=[0.5, 0.5, 0.5, 3.0],
        dice_over_batch=True,
        freeze_batch_norm=False,  # frozen statistics (phantom) fine-tuned worse here: 0.56 vs 0.75
        intensity_scale=0.0,
        intensity_shift=0.0,
        seed=0,
        val_every=100,
    )
    summary = train(config, [case], [], log=lambda line: None)
    tuned = mp.load_model_package(summary["model_dir"])
    assert tuned.manifest["training"]["epochs"] == 4 and tuned.weights_path != package.weights_path
    dice_after = _liver_dice(tuned, hu, ijk_to_ras, liver)
    seconds = time.perf_counter() - started
    print(
        f"real CT ({CT.name}, one case, fine-tuned and evaluated on the same case): liver Dice "
        f"{dice_before:.4f} before -> {dice_after:.4f} after {config.epochs * config.steps_per_epoch} steps "
        f"({seconds:.0f} s)"
    )
    assert dice_after > dice_before + 0.05, (dice_before, dice_after)
