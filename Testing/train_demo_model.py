#!/usr/bin/env python3
"""Train the demo model shipped in ``Resources/Models/medseg-ct-phantom`` (CPU, a few minutes).

      .venv/bin/python Testing/train_demo_model.py --fresh [--out Resources/Models/medseg-ct-phantom]

Data: MedSeg's synthetic CT phantom (``MedSegLib.sample_data.make_ct_phantom``). The phantom's anatomy does
not depend on the seed (only the noise does), so the training set varies the field of view (the anatomy
is scaled in-plane when the field of view is under 400 mm), the slice count and spacing, and the noise
seed. Labels: body (phantom body + heart), lungs (left + right lung + airway), bone (spine + ribs),
liver. The unseen evaluation phantoms (seeds >= 100, other geometries) are in
``Testing/Python/test_deep_learning.py``.

The shipped model was produced by ``.venv/bin/python Testing/train_demo_model.py --fresh`` with the
defaults: MONAI UNet channels 4-8-16-32-64, strides 1-2-2-2 (the first level at full resolution: with a
stride-2 first level, the network never sees full-resolution intensities after the first layer, and the
2-3 voxel wide ribs and vertebral cortex came out dilated by a voxel, bone Dice ~0.8), batch norm, 40
epochs x 25 steps, batch 2, 32x64x64 patches (in-plane context separates liver from muscle), 80 % of
patches centred on a label drawn with weights body 1 / lungs 1 / bone 3 / liver 2.5, DiceCE with Dice
over the batch, Adam 3e-3 with poly decay, mild intensity augmentation, and batch-norm statistics
re-estimated over 40 training batches at the end. About 10 minutes of one core (``--threads 1``, the
fastest setting on the shared 2-core box; ~5 minutes on 2 idle cores). Reproducible: fixed seeds for
phantoms, weight init and patch sampling; the same command on the same torch build and thread count
gives the same weights (checked for the training loop by
``test_training_is_deterministic_resumable_and_exports``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedSegExtension"))

# phantom label -> demo label (0 background)
LABEL_MAP = {0: 0, 1: 1, 7: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 8: 4}
LABELS = ["body", "lungs", "bone", "liver"]
COLORS = [(177, 122, 101), (197, 165, 145), (241, 214, 145), (221, 130, 101)]
TERMINOLOGY = [
    {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "38266002", "Entire body"]},
    {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "39607008", "Lung"]},
    {"category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "272673000", "Bone"]},
    {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]},
]
PREPROCESSING = {
    "orientation": "LPS",
    "axis_order": "kji",
    "spacing_mm": None,  # native grid: no interpolation loss on thin ribs when mapping back
    "normalization": {"type": "scale_range", "a_min": -1000.0, "a_max": 1000.0, "b_min": 0.0, "b_max": 1.0},
    "crop_foreground": {"threshold": -500.0, "margin_mm": 12.0},
}
# (slices, rows, cols), (slice, row, col) spacing mm, noise seed
TRAIN_GEOMETRIES = [
    ((64, 128, 128), (4.0, 3.0, 3.0), 0),
    ((48, 112, 112), (5.0, 3.2, 3.2), 1),
    ((80, 160, 160), (3.0, 2.2, 2.2), 2),
    ((56, 128, 128), (4.5, 2.6, 2.6), 3),
    ((72, 144, 144), (3.5, 2.8, 2.8), 4),
    ((40, 96, 96), (6.0, 4.0, 4.0), 5),
]
VAL_GEOMETRIES = [((60, 120, 120), (4.0, 3.0, 3.0), 50)]


def phantom_case(shape, spacing, seed, preprocessing):
    import numpy as np

    from MedSegLib.deep_learning.training import prepare_case
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    phantom = make_ct_phantom(shape=shape, spacing_mm=spacing, seed=seed)
    spacing_ijk = tuple(reversed(phantom.spacing))
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(spacing_ijk, np.eye(3), phantom.origin_lps)
    return prepare_case(f"phantom-{seed}", [phantom.hu], phantom.labels, ijk_to_ras, preprocessing, LABEL_MAP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Models" / "medseg-ct-phantom")
    parser.add_argument("--epochs", type=int, default=44)
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core box; 0: torch's choice)"
    )
    parser.add_argument(
        "--label-weights",
        type=float,
        nargs=4,
        default=[1.0, 1.0, 3.0, 2.5],
        help="relative chance of body/lungs/bone/liver as a positive patch centre (thin bone needs more)",
    )
    parser.add_argument("--pos-fraction", type=float, default=0.8, help="share of patches centred on a label")
    parser.add_argument("--bn-recalibration", type=int, default=40, help="batches for the final batch-norm statistics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32, 64],
        help="UNet channels per level (the first level runs at full resolution: thin bone needs it)",
    )
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 2, 2], help="UNet strides (one fewer)")
    parser.add_argument(
        "--patch",
        type=int,
        nargs=3,
        default=[48, 48, 48],
        help="training patch (slices, rows, cols); in-plane context tells liver from muscle; inference uses 64^3",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint (no resume)")
    parser.add_argument("--intensity-scale", type=float, default=0.02, help="augmentation (normalised units)")
    parser.add_argument("--intensity-shift", type=float, default=0.01, help="augmentation (normalised units)")
    parser.add_argument("--intensity-noise", type=float, default=0.01, help="augmentation noise sd")
    parser.add_argument("--norm", default="batch", help="network normalisation layers (batch, instance)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/training/ (to resume later)")
    args = parser.parse_args()

    import torch

    from MedSegLib.deep_learning.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cases = [phantom_case(s, sp, seed, PREPROCESSING) for s, sp, seed in TRAIN_GEOMETRIES]
    val_cases = [phantom_case(s, sp, seed, PREPROCESSING) for s, sp, seed in VAL_GEOMETRIES]
    print(
        f"{len(cases)} training / {len(val_cases)} validation phantoms ready in {time.perf_counter() - started:.1f} s"
    )
    config = TrainConfig(
        labels=LABELS,
        out_dir=str(args.out),
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        roi_size=tuple(args.patch),
        inference_roi_size=(64, 64, 64),
        learning_rate=3e-3,
        lr_schedule="poly",
        intensity_scale=args.intensity_scale,
        intensity_shift=args.intensity_shift,
        intensity_noise=args.intensity_noise,
        seed=args.seed,
        val_every=12,
        pos_fraction=args.pos_fraction,
        label_sampling_weights=list(args.label_weights),
        dice_over_batch=True,
        bn_recalibration_batches=args.bn_recalibration,
        channels=tuple(args.channels),
        strides=tuple(args.strides),
        num_res_units=2,
        norm=args.norm,
        preprocessing=PREPROCESSING,
        overlap=0.25,
        label_colors=COLORS,
        label_terminology=TERMINOLOGY,
        model_name="medseg-ct-phantom",
        model_version="1.1.0",
        description=(
            "Demo model trained by MedSeg on its synthetic CT phantom (Testing/train_demo_model.py): body, lungs "
            "(incl. airway), bone (spine + ribs), liver. Not for clinical use."
        ),
        resume=not args.fresh,
    )
    summary = train(config, cases, val_cases)
    # ship only the package and its log: checkpoints (optimizer state) would double the size
    work = args.out / "training"
    if (work / "training_log.csv").is_file():
        shutil.copyfile(work / "training_log.csv", args.out / "training_log.csv")
    if not args.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.0f} s: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
