"""The MedSeg model package: a folder (or zip of one) with ``medseg-model.json`` and the weights.

Why a manifest of our own: a hospital installs models from files, offline, and must know before running
one what it segments (labels with terminology), what it expects (channels, modality, spacing,
normalisation, patch size), under which licence, and that the weights are the ones published (sha256).
Everything is checked on load and every mismatch is one readable :class:`UserInputError`.

Weights are TorchScript (``"format": "torchscript"``, self-contained) or a state dict
(``"format": "state_dict"``) for a network class from ``monai.networks.nets`` named in the manifest with
its constructor arguments. Nothing is ever downloaded.

Installed models live in the user model dir: ``$MEDSEG_MODELS`` or ``~/.medseg/models``, one folder per
model; models shipped with MedSeg live in ``Resources/Models``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from MedSegLib.errors import UserInputError

MANIFEST_NAME = "medseg-model.json"
FORMAT_NAME = "medseg-model"
FORMAT_VERSION = 1
WEIGHT_FORMATS = ("torchscript", "state_dict")
ORIENTATIONS = (None, "RAS", "LPS", "LAS", "RPS", "LPI", "RAI")
# preprocessing.normalization "type" (MedSegLib.deep_learning.preprocessing.normalize): "scale_range"
# (a_min, a_max, b_min, b_max, clip), "zscore" (nonzero), "ct_clip_zscore" (lower, upper, mean, std),
# "piecewise_linear" (points: [[x, y], ...], x increasing; linear between, constant beyond)
NORMALIZATIONS = ("none", "scale_range", "zscore", "ct_clip_zscore", "piecewise_linear")
# voxel axis of each network axis: numpy/SimpleITK order, MONAI (x, y, z), or nnU-Net transpose_forward
AXIS_ORDERS = ("kji", "kij", "jki", "jik", "ikj", "ijk")
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class LabelSpec:
    """One output class: its integer value in the label map, name, colour and optional terminology codes."""

    value: int
    name: str
    color: Tuple[int, int, int] = (128, 128, 128)
    # {"category": [scheme, code, meaning], "type": [...], "modifier": [...] or None}
    terminology: Optional[Dict[str, Any]] = None

    def terminology_entry(self) -> str:
        """3D Slicer's segment tag string (``TerminologyEntry``) for these codes ('' when none)."""
        if not self.terminology:
            return ""

        def code(value: Optional[Sequence[str]]) -> str:
            return "^".join(value) if value else "^^"

        t = self.terminology
        return "~".join(
            [
                TERMINOLOGY_CONTEXT,
                code(t.get("category")),
                code(t.get("type")),
                code(t.get("modifier")),
                ANATOMIC_CONTEXT,
                "^^",
                "^^",
            ]
        )

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            data["terminology"] = self.terminology
        return data


@dataclass
class ModelPackage:
    """A validated model package; ``root`` is its folder."""

    root: Path
    manifest: Dict[str, Any]
    labels: List[LabelSpec] = field(default_factory=list)

    # --- manifest accessors -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "0"))

    @property
    def in_channels(self) -> int:
        return int(self.manifest["input"]["channels"])

    @property
    def out_channels(self) -> int:
        """Background plus one channel per label (softmax/argmax output)."""
        return len(self.labels) + 1

    @property
    def network(self) -> Dict[str, Any]:
        return self.manifest["network"]

    @property
    def preprocessing(self) -> Dict[str, Any]:
        return self.manifest.get("preprocessing", {})

    @property
    def inference(self) -> Dict[str, Any]:
        return self.manifest.get("inference", {})

    @property
    def roi_size(self) -> Tuple[int, int, int]:
        return tuple(int(v) for v in self.inference["roi_size"])  # type: ignore[return-value]

    @property
    def weights_path(self) -> Path:
        return self.root / self.network["weights"]

    def summary(self) -> Dict[str, Any]:
        """What ``medseg deepseg models --json`` lists."""
        return {
            "name": self.name,
            "version": self.version,
            "labels": [label.name for label in self.labels],
            "description": self.manifest.get("description", ""),
            "licence": self.manifest.get("licence", ""),
            "path": str(self.root),
        }

    # --- network --------------------------------------------------------------------------------
    def load_network(self, device: Any = "cpu") -> Any:
        """The network in eval mode on ``device``; weights checked against the manifest first."""
        import torch

        verify_weights(self)
        fmt = self.network["format"]
        path = self.weights_path
        if fmt == "torchscript":
            try:
                net = torch.jit.load(str(path), map_location=device)
            except Exception as error:  # noqa: BLE001 - any loader failure is a bad file for the user
                raise UserInputError(f"not a TorchScript model ({type(error).__name__}: {error})", path) from None
        else:
            net = build_network(self.network)
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001
                raise UserInputError(f"not a PyTorch state dict ({type(error).__name__}: {error})", path) from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as error:
                first = str(error).strip().splitlines()
                detail = " ".join(first[:3])
                raise UserInputError(
                    f"weights do not fit the network described in {MANIFEST_NAME} ({detail})", path
                ) from None
            net = net.to(device)
        net.eval()
        return net

    def check_network_channels(self, net: Any, device: Any = "cpu") -> None:
        """Run one zero window to prove the network takes ``in_channels`` and returns one channel per class."""
        import torch

        probe = torch.zeros((1, self.in_channels, *self.roi_size), device=device)
        try:
            with torch.inference_mode():
                out = net(probe)
        except RuntimeError as error:
            raise UserInputError(
                f"the network does not accept {self.in_channels} input channel(s) of size "
                f"{'x'.join(map(str, self.roi_size))}: {str(error).splitlines()[0]}",
                self.root,
            ) from None
        if out.shape[1] != self.out_channels:
            raise UserInputError(
                f"the network returns {out.shape[1]} channels but {MANIFEST_NAME} lists {len(self.labels)} labels "
                f"(+ background = {self.out_channels})",
                self.root,
            )


def build_network(config: Dict[str, Any]) -> Any:
    """Instantiate ``monai.networks.nets.<architecture>(**parameters)``; only MONAI's own networks."""
    import monai.networks.nets as nets

    name = str(config.get("architecture", ""))
    cls = getattr(nets, name, None)
    if not name or cls is None or not isinstance(cls, type):
        raise UserInputError(f"unknown network architecture {name!r} (expected a class of monai.networks.nets)")
    try:
        return cls(**config.get("parameters", {}))
    except TypeError as error:
        raise UserInputError(f"invalid parameters for {name}: {error}") from None


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(package: ModelPackage) -> None:
    path = package.weights_path
    if not path.is_file():
        raise UserInputError(f"weights file {package.network['weights']!r} named in {MANIFEST_NAME} is missing", path)
    expected = package.network.get("sha256")
    if expected:
        actual = sha256_of(path)
        if actual.lower() != str(expected).lower():
            raise UserInputError(
                f"checksum mismatch: sha256 is {actual[:16]}..., {MANIFEST_NAME} says {str(expected)[:16]}... "
                "(corrupted or replaced weights)",
                path,
            )


# --- manifest validation -----------------------------------------------------------------------------


def _require(condition: bool, problem: str, path: Path) -> None:
    if not condition:
        raise UserInputError(problem, path)


def validate_manifest(manifest: Dict[str, Any], path: Path) -> List[LabelSpec]:
    """Check the manifest's structure; return its labels. Raises UserInputError naming the field."""
    _require(isinstance(manifest, dict), "must be a JSON object", path)
    _require(manifest.get("format") == FORMAT_NAME, f"'format' must be {FORMAT_NAME!r}", path)
    version = manifest.get("format_version")
    _require(
        isinstance(version, int) and version <= FORMAT_VERSION,
        f"'format_version' {version!r} is not supported (this MedSeg reads <= {FORMAT_VERSION})",
        path,
    )
    for key in ("name", "version", "input", "labels", "network", "inference"):
        _require(key in manifest, f"missing required field {key!r}", path)
    name = str(manifest["name"])
    _require(bool(name) and "/" not in name and "\\" not in name and not name.startswith("."), "invalid 'name'", path)
    channels = manifest["input"].get("channels") if isinstance(manifest["input"], dict) else None
    _require(isinstance(channels, int) and channels >= 1, "'input.channels' must be a positive integer", path)
    modalities = manifest["input"].get("modalities", [])
    _require(
        not modalities or len(modalities) == channels,
        f"'input.modalities' lists {len(modalities)} modalities for {channels} channel(s)",
        path,
    )
    raw_labels = manifest["labels"]
    _require(isinstance(raw_labels, list) and raw_labels, "'labels' must be a non-empty list", path)
    labels = []
    for position, item in enumerate(raw_labels, start=1):
        _require(isinstance(item, dict) and "name" in item, f"label {position} needs a 'name'", path)
        value = item.get("value", position)
        _require(
            value == position,
            f"label values must be 1..N in order (label {item['name']!r} has value {value}, expected {position})",
            path,
        )
        color = tuple(int(c) for c in item.get("color", (128, 128, 128)))
        _require(len(color) == 3 and all(0 <= c <= 255 for c in color), f"label {item['name']!r}: bad colour", path)
        labels.append(LabelSpec(value, str(item["name"]), color, item.get("terminology")))  # type: ignore[arg-type]
    network = manifest["network"]
    _require(isinstance(network, dict) and "weights" in network, "'network.weights' (file name) is required", path)
    fmt = network.get("format")
    _require(fmt in WEIGHT_FORMATS, f"'network.format' must be one of {', '.join(WEIGHT_FORMATS)}", path)
    if fmt == "state_dict":
        _require("architecture" in network, "'network.architecture' is required for a state dict", path)
        params = network.get("parameters", {})
        n_in = params.get("in_channels", channels)
        n_out = params.get("out_channels", len(labels) + 1)
        _require(
            n_in == channels,
            f"network in_channels={n_in} but 'input.channels' is {channels}",
            path,
        )
        _require(
            n_out == len(labels) + 1,
            f"network out_channels={n_out} but {len(labels)} labels are listed (+ background = {len(labels) + 1})",
            path,
        )
    inference = manifest["inference"]
    roi = inference.get("roi_size") if isinstance(inference, dict) else None
    _require(
        isinstance(roi, list) and len(roi) == 3 and all(isinstance(v, int) and v > 0 for v in roi),
        "'inference.roi_size' must be three positive integers",
        path,
    )
    overlap = inference.get("overlap", 0.25)
    _require(0 <= float(overlap) < 1, "'inference.overlap' must be >= 0 and < 1", path)
    _require(inference.get("mode", "gaussian") in ("gaussian", "constant"), "'inference.mode' is invalid", path)
    pre = manifest.get("preprocessing", {})
    _require(pre.get("orientation") in ORIENTATIONS, f"'preprocessing.orientation' must be one of {ORIENTATIONS}", path)
    _require(
        pre.get("axis_order", "kji") in AXIS_ORDERS,
        "'preprocessing.axis_order' must be a permutation of 'kji' (e.g. 'kji', 'ijk')",
        path,
    )
    spacing = pre.get("spacing_mm")
    _require(
        spacing is None or (len(spacing) == 3 and all(float(s) > 0 for s in spacing)),
        "'preprocessing.spacing_mm' must be null or three positive numbers (i, j, k)",
        path,
    )
    norm = pre.get("normalization", {"type": "none"})
    norms = norm if isinstance(norm, list) else [norm]  # a list: one per input channel
    _require(
        all(isinstance(n, dict) and n.get("type") in NORMALIZATIONS for n in norms),
        f"'preprocessing.normalization.type' must be one of {', '.join(NORMALIZATIONS)}",
        path,
    )
    _require(
        not isinstance(norm, list) or len(norm) == channels,
        "'preprocessing.normalization' as a list needs one entry per input channel",
        path,
    )
    for n in norms:
        if n.get("type") == "piecewise_linear":
            from MedSegLib.deep_learning.preprocessing import piecewise_points

            try:
                piecewise_points(n.get("points"))
            except UserInputError as error:
                raise UserInputError(f"'preprocessing.normalization': {error.problem}", path) from None
    return labels


def _extract_zip(path: Path) -> Path:
    """Unpack a zipped package to a temporary folder; returns the folder that holds the manifest."""
    target = Path(tempfile.mkdtemp(prefix="medseg-model-"))
    atexit.register(shutil.rmtree, target, True)  # the package is read from here until the process ends
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                resolved = (target / member).resolve()
                if not str(resolved).startswith(str(target.resolve())):
                    raise UserInputError(f"zip member {member!r} escapes the archive folder", path)
            archive.extractall(target)
    except zipfile.BadZipFile:
        shutil.rmtree(target, ignore_errors=True)
        raise UserInputError("not a valid zip archive", path) from None
    manifests = sorted(target.rglob(MANIFEST_NAME), key=lambda p: len(p.parts))
    if not manifests:
        shutil.rmtree(target, ignore_errors=True)
        raise UserInputError(f"the archive holds no {MANIFEST_NAME}", path)
    return manifests[0].parent


def load_model_package(path: PathLike) -> ModelPackage:
    """Read and validate a package folder, its manifest file, or a zip of it (weights checked on use)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError("model not found (expected a model folder, zip, or an installed model's name)", path)
    if path.is_file() and path.suffix.lower() == ".zip":
        path = _extract_zip(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserInputError(f"not a MedSeg model package (no {MANIFEST_NAME})", path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"invalid JSON: {error}", manifest_path) from None
    labels = validate_manifest(manifest, manifest_path)
    package = ModelPackage(path, manifest, labels)
    if not package.weights_path.is_file():
        raise UserInputError(
            f"weights file {package.network['weights']!r} named in {MANIFEST_NAME} is missing", package.weights_path
        )
    return package


def write_model_package(
    out_dir: PathLike,
    manifest: Dict[str, Any],
    weights_file: Optional[PathLike] = None,
    overwrite: bool = True,
) -> ModelPackage:
    """Write ``out_dir`` (manifest + weights copied in), filling ``network.sha256``; validates the result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(manifest))  # deep copy, JSON-only content
    manifest.setdefault("format", FORMAT_NAME)
    manifest.setdefault("format_version", FORMAT_VERSION)
    weights_name = manifest["network"]["weights"]
    target = out_dir / weights_name
    if weights_file is not None and Path(weights_file).resolve() != target.resolve():
        if target.exists() and not overwrite:
            raise UserInputError("weights file exists", target)
        shutil.copyfile(weights_file, target)
    manifest["network"]["sha256"] = sha256_of(target)
    validate_manifest(manifest, out_dir / MANIFEST_NAME)
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST_NAME)
    return load_model_package(out_dir)


# --- model directories -------------------------------------------------------------------------------


def user_models_dir() -> Path:
    """``$MEDSEG_MODELS`` or ``~/.medseg/models`` (not created here)."""
    env = os.environ.get("MEDSEG_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".medseg" / "models"


def shipped_models_dir() -> Optional[Path]:
    try:
        from MedSegLib.resources import resource_path

        path = resource_path("Models")
    except FileNotFoundError:
        return None
    return path if path.is_dir() else None


def model_search_dirs() -> List[Path]:
    dirs = [user_models_dir()]
    shipped = shipped_models_dir()
    if shipped is not None:
        dirs.append(shipped)
    return dirs


def list_models() -> List[ModelPackage]:
    """Installed models (user dir first, then shipped); invalid folders are skipped."""
    found: Dict[str, ModelPackage] = {}
    for directory in model_search_dirs():
        if not directory.is_dir():
            continue
        for child in sorted(directory.iterdir()):
            if not (child / MANIFEST_NAME).is_file():
                continue
            try:
                package = load_model_package(child)
            except UserInputError:
                continue
            found.setdefault(package.name, package)
    return list(found.values())


def resolve_model(spec: PathLike) -> ModelPackage:
    """A model from a path (folder, zip, manifest) or the name of an installed / shipped model."""
    path = Path(spec)
    if path.exists():
        return load_model_package(path)
    name = str(spec)
    for directory in model_search_dirs():
        candidate = directory / name
        if (candidate / MANIFEST_NAME).is_file():
            return load_model_package(candidate)
    for package in list_models():
        if package.name == name:
            return package
    known = ", ".join(p.name for p in list_models()) or "none installed"
    raise UserInputError(f"no model folder or installed model named {name!r} (installed: {known})")


def detect_model_kind(path: Path) -> str:
    """'medseg', 'monai-bundle' or 'nnunet' for an importable folder/zip; UserInputError otherwise."""
    if path.is_file() and path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith(MANIFEST_NAME) for n in names):
            return "medseg"
        if any(n.endswith("configs/metadata.json") for n in names):
            return "monai-bundle"
        if any(n.endswith("plans.json") for n in names):
            return "nnunet"
    elif path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return "medseg"
        if (path / "configs" / "metadata.json").is_file():
            return "monai-bundle"
        if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
            return "nnunet"
    raise UserInputError(
        f"not an importable model (expected a MedSeg package with {MANIFEST_NAME}, a MONAI bundle with "
        "configs/metadata.json, or an nnU-Net v2 folder with plans.json + dataset.json + fold_N/)",
        path,
    )


def install_model(path: PathLike, models_dir: Optional[PathLike] = None, overwrite: bool = False) -> ModelPackage:
    """Copy (converting if needed) a model into the user model dir; returns the installed package."""
    path = Path(path)
    if not path.exists():
        raise UserInputError("not found", path)
    models_dir = Path(models_dir) if models_dir is not None else user_models_dir()
    kind = detect_model_kind(path)
    with tempfile.TemporaryDirectory(prefix="medseg-import-") as work:
        staging = Path(work) / "package"
        if kind == "medseg":
            source = load_model_package(path)
            verify_weights(source)
            shutil.copytree(source.root, staging)
        elif kind == "monai-bundle":
            from MedSegLib.deep_learning.monai_bundle import convert_monai_bundle

            convert_monai_bundle(path, staging)
        else:
            from MedSegLib.deep_learning.nnunet_import import convert_nnunet_folder

            convert_nnunet_folder(path, staging)
        package = load_model_package(staging)
        target = models_dir / package.name
        if target.exists():
            if not overwrite:
                raise UserInputError("a model with this name is installed already (use --overwrite)", target)
            shutil.rmtree(target)
        models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, target)
    return load_model_package(target)
