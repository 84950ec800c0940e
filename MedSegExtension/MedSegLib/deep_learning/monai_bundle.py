"""Convert a MONAI bundle folder (``configs/metadata.json`` + ``configs/inference.json`` + ``models/``) to a package.

Why convert instead of running the bundle: bundle configs are executable (``_target_`` imports anything,
``$`` strings go through ``eval``) and ``monai.bundle.load`` downloads when a file is missing. Here the
configs are read as plain JSON/YAML and only these pieces are taken, literally:

- labels from ``metadata.json`` ``network_data_format.outputs.pred.channel_def`` (background = channel 0);
- input channels / modality from ``network_data_format.inputs.image``;
- the network: ``models/model.ts`` (TorchScript) if present, else ``network_def`` whose ``_target_`` must be
  a ``monai.networks.nets`` class with literal arguments (simple ``@id`` references are resolved) and
  ``models/model.pt`` as its state dict;
- preprocessing from the transforms list: ``Orientationd`` (axcodes), ``Spacingd`` (pixdim),
  ``ScaleIntensityRanged``, ``NormalizeIntensityd``, ``CropForegroundd``;
- the ``SlidingWindowInferer`` roi / batch / overlap / mode.

MONAI arrays are (x, y, z) = (i, j, k), so the package declares ``axis_order: ijk``. Resampling uses
MedSeg's trilinear grid (same physical box), which can differ from ``Spacingd``'s by a sub-voxel shift.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from MedSegLib.errors import UserInputError


def _read_config(path: Path) -> Dict[str, Any]:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserInputError("YAML bundle configs need the 'pyyaml' package", path) from None
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserInputError(f"invalid JSON: {error}", path) from None


def _resolve(value: Any, config: Dict[str, Any], path: Path, depth: int = 0) -> Any:
    """Resolve ``@id`` references to literal config entries; refuse ``$`` expressions (code)."""
    if depth > 20:
        raise UserInputError("reference cycle in bundle config", path)
    if isinstance(value, str):
        if value.startswith("@"):
            key = value[1:].replace("#", "::")
            node: Any = config
            for part in key.split("::"):
                if isinstance(node, list):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise UserInputError(f"unresolvable reference {value!r} in bundle config", path)
            return _resolve(node, config, path, depth + 1)
        if value.startswith("$"):
            raise UserInputError(f"bundle config expression {value!r} cannot be imported (code, not data)", path)
        return value
    if isinstance(value, list):
        return [_resolve(v, config, path, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, config, path, depth + 1) for k, v in value.items()}
    return value


def _target_name(target: str) -> str:
    return str(target).split(".")[-1].split("::")[-1]


def _transforms(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    pre = config.get("preprocessing", {})
    items = pre.get("transforms", []) if isinstance(pre, dict) else []
    return [t for t in items if isinstance(t, dict) and "_target_" in t]


def convert_monai_bundle(bundle_dir: Path, out_dir: Path) -> Any:
    """Write a MedSeg model package for ``bundle_dir`` into ``out_dir``; returns the package."""
    from MedSegLib.deep_learning.model_package import write_model_package

    bundle_dir = Path(bundle_dir)
    if bundle_dir.is_file():
        import tempfile
        import zipfile

        extract = Path(tempfile.mkdtemp(prefix="medseg-bundle-"))
        with zipfile.ZipFile(bundle_dir) as archive:
            archive.extractall(extract)
        metas = sorted(extract.rglob("configs/metadata.json"), key=lambda p: len(p.parts))
        bundle_dir = metas[0].parent.parent
    meta_path = bundle_dir / "configs" / "metadata.json"
    meta = _read_config(meta_path)
    config_path = next(
        (
            bundle_dir / "configs" / n
            for n in ("inference.json", "inference.yaml", "inference.yml")
            if (bundle_dir / "configs" / n).is_file()
        ),
        None,
    )
    if config_path is None:
        raise UserInputError("MONAI bundle without configs/inference.json", bundle_dir)
    config = _read_config(config_path)
    fmt = meta.get("network_data_format", {})
    outputs = fmt.get("outputs", {})
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {})
    channel_def = pred.get("channel_def") or {}
    n_out = int(pred.get("num_channels", len(channel_def) or 0))
    if n_out < 2:
        raise UserInputError("metadata.json does not describe a multi-channel segmentation output ('pred')", meta_path)
    labels = []
    for channel in range(1, n_out):
        name = str(channel_def.get(str(channel), f"label_{channel}"))
        labels.append({"value": channel, "name": name, "color": _default_color(channel)})
    image = fmt.get("inputs", {}).get("image", {})
    in_channels = int(image.get("num_channels", 1))
    modality = str(image.get("modality", "")).upper() or "unknown"

    models = bundle_dir / "models"
    network: Dict[str, Any]
    weights: Path
    if (models / "model.ts").is_file():
        network = {"weights": "model.ts", "format": "torchscript"}
        weights = models / "model.ts"
    elif (models / "model.pt").is_file():
        net_def = _resolve(config.get("network_def"), config, config_path)
        if not isinstance(net_def, dict) or "_target_" not in net_def:
            raise UserInputError("inference config has no 'network_def' with a '_target_'", config_path)
        target = str(net_def["_target_"])
        if "." in target and not target.startswith("monai.networks.nets."):
            raise UserInputError(f"network {target!r} is not a monai.networks.nets class", config_path)
        params = {k: v for k, v in net_def.items() if not k.startswith("_")}
        network = {
            "weights": "model.pt",
            "format": "state_dict",
            "architecture": _target_name(target),
            "parameters": params,
        }
        weights = models / "model.pt"
    else:
        raise UserInputError(
            "MONAI bundle without models/model.ts or models/model.pt (weights are not downloaded)", bundle_dir
        )

    preprocessing: Dict[str, Any] = {
        "orientation": None,
        "axis_order": "ijk",
        "spacing_mm": None,
        "normalization": {"type": "none"},
        "crop_foreground": None,
    }
    for t in _transforms(config):
        t = _resolve(t, config, config_path)
        name = _target_name(t["_target_"])
        if name in ("Orientationd", "Orientation"):
            preprocessing["orientation"] = str(t.get("axcodes", "RAS")).upper()
        elif name in ("Spacingd", "Spacing"):
            preprocessing["spacing_mm"] = [float(v) for v in t["pixdim"]]
        elif name in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            preprocessing["normalization"] = {
                "type": "scale_range",
                "a_min": float(t["a_min"]),
                "a_max": float(t["a_max"]),
                "b_min": float(t.get("b_min", 0.0) or 0.0),
                "b_max": float(t.get("b_max", 1.0) or 1.0),
                "clip": bool(t.get("clip", False)),
            }
        elif name in ("NormalizeIntensityd", "NormalizeIntensity"):
            preprocessing["normalization"] = {"type": "zscore", "nonzero": bool(t.get("nonzero", False))}
        elif name in ("CropForegroundd", "CropForeground"):
            margin = t.get("margin", 0)
            preprocessing["crop_foreground"] = {
                "threshold": 0.0,
                "margin_mm": float(margin if not isinstance(margin, list) else max(margin)),
            }
    inferer = _resolve(config.get("inferer", {}), config, config_path) or {}
    roi = inferer.get("roi_size") or image.get("spatial_shape")
    if not roi or len(roi) != 3 or not all(isinstance(v, int) for v in roi):
        raise UserInputError("cannot find a 3D roi_size in the bundle's inferer", config_path)
    manifest = {
        "name": str(meta.get("name") or bundle_dir.name).replace(" ", "_").replace("/", "_"),
        "version": str(meta.get("version", "0")),
        "description": str(meta.get("description", "")),
        "licence": _licence(bundle_dir),
        "authors": meta.get("authors", ""),
        "source": {"kind": "monai-bundle", "monai_version": meta.get("monai_version")},
        "input": {"channels": in_channels, "modalities": [modality] * in_channels},
        "labels": labels,
        "network": network,
        "preprocessing": preprocessing,
        "inference": {
            "roi_size": [int(v) for v in roi],
            "overlap": float(inferer.get("overlap", 0.25)),
            "mode": str(inferer.get("mode", "constant")),
            "sigma_scale": float(inferer.get("sigma_scale", 0.125)),
            "sw_batch_size": int(inferer.get("sw_batch_size", 1)),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for extra in ("docs",):
        if (bundle_dir / extra).is_dir():
            shutil.copytree(bundle_dir / extra, out_dir / extra, dirs_exist_ok=True)
    return write_model_package(out_dir, manifest, weights)


def _licence(bundle_dir: Path) -> str:
    path = bundle_dir / "docs" / "license.txt"
    if path.is_file():
        first = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return first[0][:200] if first else "see docs/license.txt"
    return "unknown (no docs/license.txt in the bundle)"


def _default_color(index: int) -> List[int]:
    palette = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
    ]
    return list(palette[(index - 1) % len(palette)])


def metadata_labels(meta: Dict[str, Any]) -> Optional[Dict[str, str]]:
    """Channel definitions of a bundle's prediction, for display."""
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or {}
    return pred.get("channel_def")
