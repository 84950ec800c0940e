"""Convert an nnU-Net v2 trained-model folder to a MedSeg model package (needs the optional ``nnunetv2``).

Folder: ``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth`` (the first fold found is used).
The network is rebuilt with nnU-Net's own code (``nnUNetPredictor.initialize_from_trained_model_folder``),
then traced to TorchScript at the plans' patch size, so running it later needs neither nnunetv2 nor the
checkpoint's pickled trainer. Preprocessing taken from the plans: per channel CT normalisation (clip to the
0.5/99.5 percentiles, subtract mean, divide by std of the training foreground), z-score or none; target
spacing; the plans' ``transpose_forward`` as the package's ``axis_order`` (nnU-Net reads arrays as
SimpleITK does, (k, j, i), and puts the thickest axis first: [1, 0, 2] is 'jki'); no reorientation.

Differences from nnU-Net's own inference, stated so users can judge: window positions follow MONAI's rule
(nnU-Net spreads steps evenly; the same positions when the image is at most one step larger than the
patch per axis), the Gaussian follows MONAI (floor 1e-3), MedSeg sums windows in float32 where nnU-Net
2.x sums in float16 (its logits are the network's rounded to half precision, and where the float16
Gaussian underflows, near window corners, off by more), no mirroring test-time augmentation, single
fold, no crop to non-zero (z-score "nonzero" uses voxels != 0, nnU-Net its filled non-zero mask and
zeroes the outside), trilinear instead of 3rd-order spline resampling. Tested against nnU-Net 2.8.1 on a
model planned, trained and saved by nnU-Net itself (``Testing/Python/test_deep_learning.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from MedSegLib.errors import UserInputError

# nnU-Net normalisation class (plans' normalization_schemes) -> MedSeg normalisation without the statistics
_NORMALIZATION_TYPES = {"CTNormalization": "ct_clip_zscore", "ZScoreNormalization": "zscore", "NoNormalization": "none"}


def nnunet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnunetv2") is not None


def _normalizations(schemes: List[str], use_mask: List[bool], props: Dict[str, Any], folder: Path) -> List[Dict]:
    """MedSeg normalisation of each input channel, from the configuration and the plans' intensity statistics."""
    norms = []
    for channel, scheme in enumerate(schemes):
        kind = _NORMALIZATION_TYPES.get(scheme)
        if kind is None:
            raise UserInputError(f"nnU-Net normalisation {scheme!r} (channel {channel}) is not supported", folder)
        if kind == "ct_clip_zscore":
            p = props.get(str(channel), props.get(channel))
            if p is None:
                raise UserInputError(f"plans.json has no foreground intensity properties for channel {channel}", folder)
            norms.append(
                {
                    "type": kind,
                    "lower": float(p["percentile_00_5"]),
                    "upper": float(p["percentile_99_5"]),
                    "mean": float(p["mean"]),
                    "std": float(p["std"]),
                }
            )
        elif kind == "zscore":
            norms.append({"type": kind, "nonzero": bool(use_mask[channel])})
        else:
            norms.append({"type": kind})
    return norms


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
    if any(isinstance(v, (list, tuple)) for v in dataset.get("labels", {}).values()):
        raise UserInputError("nnU-Net region-based labels are not supported", folder)
    # nnU-Net's ignore label (named 'ignore', the highest value) gets no output channel
    labels_by_value = {int(v): k for k, v in dataset["labels"].items() if k != "ignore"}
    values = sorted(v for v in labels_by_value if v != 0)
    if values != list(range(1, len(values) + 1)):
        raise UserInputError("nnU-Net non-consecutive labels are not supported", folder)

    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as error:  # e.g. nnunetv2 installed with --no-deps but without MedSeg's 'nnunet' extra
        raise UserInputError(
            f"nnunetv2 is installed but cannot be imported ({error}); install MedSeg's 'nnunet' extra "
            "(pip install -e '.[nnunet]', see the README)",
            folder,
        ) from None

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=(fold if fold == "all" else int(fold),), checkpoint_name=configuration_checkpoint
    )
    configuration = predictor.configuration_manager
    if configuration.previous_stage_name is not None:
        raise UserInputError(
            "nnU-Net cascade configurations (they need the low-resolution stage's result) are not supported", folder
        )
    heads = predictor.label_manager.num_segmentation_heads
    if heads != len(values) + 1:
        raise UserInputError(f"the network has {heads} outputs but dataset.json lists {len(values)} labels", folder)
    net = predictor.network.eval()
    if predictor.list_of_parameters:
        net.load_state_dict(predictor.list_of_parameters[0])
    config_name = configuration.configuration.get("data_identifier", "")
    patch = [int(v) for v in configuration.patch_size]
    if len(patch) != 3:
        raise UserInputError("only 3D nnU-Net configurations can be imported", folder)
    transpose = [int(v) for v in predictor.plans_manager.transpose_forward]
    if sorted(transpose) != [0, 1, 2]:
        raise UserInputError(f"plans.json transpose_forward {transpose} is not a permutation of 3 axes", folder)
    channels = len(dataset.get("channel_names", dataset.get("modality", {"0": "CT"})))
    with torch.inference_mode():
        traced = torch.jit.trace(net, torch.zeros(1, channels, *patch), check_trace=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    traced.save(str(out_dir / "model.ts"))
    norms = _normalizations(
        list(configuration.normalization_schemes),
        list(configuration.use_mask_for_norm),
        plans.get("foreground_intensity_properties_per_channel", {}),
        folder,
    )
    if len(norms) != channels:
        raise UserInputError(f"plans.json normalises {len(norms)} channels, dataset.json lists {channels}", folder)
    # configuration.spacing is per network axis (after transpose_forward); MedSeg wants it per (i, j, k)
    spacing_kji = [0.0, 0.0, 0.0]
    for network_axis, numpy_axis in enumerate(transpose):
        spacing_kji[numpy_axis] = float(configuration.spacing[network_axis])
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
            "axis_order": "".join("kji"[a] for a in transpose),
            "spacing_mm": spacing_kji[::-1],
            "normalization": norms[0] if len(norms) == 1 else norms,
            "crop_foreground": None,
        },
        "inference": {"roi_size": patch, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1},
    }
    return write_model_package(out_dir, manifest, out_dir / "model.ts")
