"""Convert an nnU-Net v2 trained-model folder to a MedSeg model package (needs the optional ``nnunetv2``).

Folder: ``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth`` (the first fold found is used).
The network is rebuilt with nnU-Net's own code (``nnUNetPredictor.initialize_from_trained_model_folder``),
then traced to TorchScript at the plans' patch size, so running it later needs neither nnunetv2 nor the
checkpoint's pickled trainer. Preprocessing taken from the plans: CT normalisation (clip to the 0.5/99.5
percentiles, subtract mean, divide by std of the training foreground) or z-score, target spacing, no
reorientation (nnU-Net uses voxel axes as stored; arrays are (k, j, i) like SimpleITK's).

Differences from nnU-Net's own inference, stated so users can judge: window positions follow MONAI's rule
(nnU-Net spreads steps evenly), the Gaussian follows MONAI (floor 1e-3), no mirroring test-time
augmentation, single fold, no crop to non-zero, trilinear instead of 3rd-order spline resampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from MedSegLib.errors import UserInputError


def nnunet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnunetv2") is not None


def convert_nnunet_folder(folder: Path, out_dir: Path, configuration_checkpoint: str = "checkpoint_final.pth") -> Any:
    """Write a MedSeg package (TorchScript ``model.ts``) for an nnU-Net v2 result folder."""
    import torch

    from MedSegLib.deep_learning.model_package import write_model_package

    folder = Path(folder)
    if not nnunet_available():
        raise UserInputError(
            "importing nnU-Net models needs the optional package 'nnunetv2' (pip install nnunetv2)", folder
        )
    dataset = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    folds = sorted(p for p in folder.glob("fold_*") if (p / configuration_checkpoint).is_file())
    if not folds:
        raise UserInputError(f"no fold_N/{configuration_checkpoint} in the nnU-Net folder", folder)
    fold = folds[0].name.split("_", 1)[1]
    labels_by_value = {int(v): k for k, v in dataset["labels"].items() if not isinstance(v, list)}
    values = sorted(v for v in labels_by_value if v != 0)
    if values != list(range(1, len(values) + 1)):
        raise UserInputError("nnU-Net region-based or non-consecutive labels are not supported", folder)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
    )
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=(fold if fold == "all" else int(fold),), checkpoint_name=configuration_checkpoint
    )
    net = predictor.network.eval()
    if predictor.list_of_parameters:
        net.load_state_dict(predictor.list_of_parameters[0])
    config_name = predictor.configuration_manager.configuration.get("data_identifier", "")
    configuration = predictor.configuration_manager
    patch = [int(v) for v in configuration.patch_size]
    if len(patch) != 3:
        raise UserInputError("only 3D nnU-Net configurations can be imported", folder)
    channels = len(dataset.get("channel_names", dataset.get("modality", {"0": "CT"})))
    with torch.inference_mode():
        traced = torch.jit.trace(net, torch.zeros(1, channels, *patch), check_trace=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    traced.save(str(out_dir / "model.ts"))
    schemes = configuration.normalization_schemes
    props = plans.get("foreground_intensity_properties_per_channel", {})
    norm: Dict[str, Any] = {"type": "zscore", "nonzero": bool(configuration.use_mask_for_norm[0])}
    if schemes and schemes[0] == "CTNormalization":
        p = props.get("0", {})
        norm = {
            "type": "ct_clip_zscore",
            "lower": p["percentile_00_5"],
            "upper": p["percentile_99_5"],
            "mean": p["mean"],
            "std": p["std"],
        }
    spacing_zyx = [float(v) for v in configuration.spacing]
    manifest = {
        "name": str(plans.get("dataset_name", folder.parent.name)).replace("/", "_"),
        "version": f"fold{fold}",
        "description": f"Imported nnU-Net v2 model ({folder.name}, {config_name}), fold {fold}",
        "licence": "see the model's source",
        "source": {"kind": "nnunet-v2", "folder": folder.name},
        "input": {"channels": channels, "modalities": [str(v) for v in dataset.get("channel_names", {}).values()]},
        "labels": [{"value": v, "name": labels_by_value[v]} for v in values],
        "network": {"weights": "model.ts", "format": "torchscript"},
        "preprocessing": {
            "orientation": None,
            "axis_order": "kji",
            "spacing_mm": spacing_zyx[::-1],
            "normalization": norm,
            "crop_foreground": None,
        },
        "inference": {"roi_size": patch, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1},
    }
    return write_model_package(out_dir, manifest, out_dir / "model.ts")
