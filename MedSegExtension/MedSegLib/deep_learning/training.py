"""Patch-based training of a 3D U-Net from (volume, label map) pairs, exported as a MedSeg model package.

Design choices (why):
- Cases go through the very ``prepare_input`` that inference uses, so training and inference can never
  disagree on orientation, crop, normalisation or spacing.
- Patches are drawn with a seeded numpy Generator: half centred on a foreground voxel of a randomly chosen
  label (so small organs are seen as often as large ones), half anywhere (negatives).
- DiceCE loss (MONAI), Adam; validation Dice per label with the same sliding window as inference; the best
  mean Dice checkpoint is kept and exported; ``checkpoint_last.pt`` holds model, optimiser, epoch and RNG
  states so an interrupted run resumes bit-for-bit.
- Under ``torchrun`` the same entry point uses DistributedDataParallel (gloo on CPU, nccl on CUDA); each
  rank draws different patches; rank 0 validates and writes; after every epoch the ranks compare a weight
  fingerprint and the CSV log records whether they agree.
- Instance norm by default: SyncBatchNorm does not exist on CPU and batch norm with batch 2 is noisy.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.progress import CancelToken, ProgressCallback

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class TrainingCase:
    """One training pair in network space: image ``[C, D, H, W]`` float32 and labels ``[D, H, W]`` uint8."""

    name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class TrainConfig:
    labels: List[str]
    out_dir: str
    epochs: int = 20
    steps_per_epoch: int = 20
    batch_size: int = 2
    roi_size: Tuple[int, int, int] = (64, 64, 64)  # training patch
    inference_roi_size: Optional[Tuple[int, int, int]] = None  # validation / exported window (default: roi_size)
    learning_rate: float = 2e-3
    lr_schedule: str = "constant"  # or "poly": lr * (1 - epoch / epochs) ** 0.9 (nnU-Net's schedule)
    weight_decay: float = 1e-5
    seed: int = 0
    val_every: int = 1
    pos_fraction: float = 0.67
    # relative chance of each label (1..n) being the centre of a positive patch; None: uniform over the
    # labels present in the case. Thin structures (bone) profit from more than their uniform share.
    label_sampling_weights: Optional[List[float]] = None
    dice_over_batch: bool = False  # Dice per label over the whole batch (stable when a patch lacks a label)
    # after training, re-estimate batch-norm statistics as a plain average over this many training batches
    # (train mode, no gradients): the running averages of the last steps are noisy with batch 2
    bn_recalibration_batches: int = 0
    # fine-tuning: start from these state-dict weights (same network config) instead of a random init
    init_weights: Optional[str] = None
    freeze_batch_norm: bool = False  # keep batch-norm statistics fixed (fine-tuning on few cases)
    channels: Tuple[int, ...] = (16, 32, 64, 128)
    strides: Tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"
    in_channels: int = 1
    modalities: List[str] = field(default_factory=lambda: ["CT"])
    preprocessing: Dict[str, Any] = field(
        default_factory=lambda: {
            "orientation": "LPS",
            "axis_order": "kji",
            "spacing_mm": None,
            "normalization": {"type": "scale_range", "a_min": -1000.0, "a_max": 1000.0, "b_min": 0.0, "b_max": 1.0},
            "crop_foreground": None,
        }
    )
    overlap: float = 0.25
    augment_flip_axes: Tuple[int, ...] = ()  # flips swap left/right labels: off unless labels are symmetric
    augment_intensity: bool = True
    # in normalised units; CT intensities are absolute (HU), so keep these small: 0.1 with HU -1000..1000
    # scaled to 0..1 is +-200 HU, which blurs blood (200 HU) into cancellous bone (300 HU)
    intensity_scale: float = 0.02
    intensity_shift: float = 0.01
    intensity_noise: float = 0.01  # sd of the Gaussian noise added to 30 % of the patches
    label_colors: Optional[List[Tuple[int, int, int]]] = None
    label_terminology: Optional[List[Optional[Dict[str, Any]]]] = None
    model_name: str = "medseg-model"
    model_version: str = "1.0.0"
    description: str = ""
    licence: str = "Apache-2.0"
    device: str = "cpu"
    resume: bool = True
    max_steps: Optional[int] = None  # stop early (tests)


# --- data ---------------------------------------------------------------------------------------------


def _strip_suffix(name: str) -> str:
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_training_pairs(data_dir: Path) -> List[Tuple[str, List[Path], Path]]:
    """(case, image channel files, label file) from an MSD / nnU-Net raw folder or a flat folder.

    Flat folder: ``CASE.nrrd`` (or ``CASE_0000.nii.gz`` ...) with ``CASE_label.nrrd`` / ``CASE_seg.nii.gz``.
    MSD / nnU-Net: ``imagesTr/CASE[_XXXX].nii.gz`` with ``labelsTr/CASE.nii.gz``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserInputError("training data folder not found", data_dir)
    if (data_dir / "imagesTr").is_dir() and (data_dir / "labelsTr").is_dir():
        labels = {_strip_suffix(p.name): p for p in (data_dir / "labelsTr").iterdir() if not p.name.startswith(".")}
        images: Dict[str, List[Path]] = {}
        for p in sorted((data_dir / "imagesTr").iterdir()):
            if p.name.startswith("."):
                continue
            stem = _strip_suffix(p.name)
            case = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
            images.setdefault(case, []).append(p)
    else:
        labels, images = {}, {}
        for p in sorted(data_dir.iterdir()):
            stem = _strip_suffix(p.name)
            if not p.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            for tag in ("_label", "_labels", "_seg"):
                if stem.endswith(tag):
                    labels[stem[: -len(tag)]] = p
                    break
            else:
                case = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
                images.setdefault(case, []).append(p)
    pairs = [(case, sorted(files), labels[case]) for case, files in sorted(images.items()) if case in labels]
    if not pairs:
        raise UserInputError(
            "no (image, label) pairs found (expected imagesTr/ + labelsTr/, or CASE.nrrd with CASE_label.nrrd)",
            data_dir,
        )
    return pairs


def read_image(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Array (k, j, i) and IJKToRAS of an image file (SimpleITK: no MRML scene needed in workers)."""
    import SimpleITK as sitk

    from MedSegLib.volume_nodes import ijk_to_ras_from_sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(f"cannot read image: {str(error).splitlines()[0]}", path) from None
    return sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image)


def prepare_case(
    name: str,
    channels_kji: Sequence[np.ndarray],
    labels_kji: np.ndarray,
    ijk_to_ras: np.ndarray,
    preprocessing: Dict[str, Any],
    label_map: Optional[Dict[int, int]] = None,
) -> TrainingCase:
    """Apply the model's preprocessing to an image and (nearest) to its labels; remap label values."""
    import torch

    from MedSegLib.deep_learning.preprocessing import prepare_input, resize_linear

    prepared = prepare_input(list(channels_kji), ijk_to_ras, preprocessing)
    labels = np.asarray(labels_kji)
    if label_map is not None:
        lut = np.zeros(max(256, int(labels.max()) + 1), dtype=np.uint8)
        for source, target in label_map.items():
            lut[int(source)] = int(target)
        labels = lut[labels]
    labels = prepared.orientation.apply(labels)
    if prepared.bbox is not None:
        labels = labels[prepared.bbox]
    labels = prepared.to_network_axes(labels)
    labels_t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))[None]
    labels_t = resize_linear(labels_t, tuple(prepared.tensor.shape[1:]), mode="nearest")
    return TrainingCase(name, prepared.tensor.numpy(), labels_t[0].numpy().astype(np.uint8))


def load_cases_from_folder(
    data_dir: Path, preprocessing: Dict[str, Any], label_map: Optional[Dict[int, int]] = None
) -> List[TrainingCase]:
    cases = []
    for case, image_files, label_file in find_training_pairs(Path(data_dir)):
        channels = []
        ijk_to_ras = None
        for path in image_files:
            array, ijk_to_ras = read_image(path)
            channels.append(array)
        labels, _ = read_image(label_file)
        if labels.shape != channels[0].shape:
            raise UserInputError(f"label map shape {labels.shape} differs from image {channels[0].shape}", label_file)
        cases.append(prepare_case(case, channels, labels, ijk_to_ras, preprocessing, label_map))
    return cases


# --- patches and augmentation -------------------------------------------------------------------------


class PatchSampler:
    """Random patches, ``pos_fraction`` of them centred on a voxel of a chosen present label.

    The label is drawn uniformly among those present in the case, or with ``label_weights`` (relative
    weight of label value ``i + 1`` at index ``i``) when given.
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        roi: Sequence[int],
        pos_fraction: float,
        rng: Any,
        label_weights: Optional[Sequence[float]] = None,
    ) -> None:
        self.cases = list(cases)
        self.roi = tuple(int(r) for r in roi)
        self.pos_fraction = pos_fraction
        self.rng = rng
        self.label_weights = None if label_weights is None else [float(w) for w in label_weights]
        if self.label_weights is not None and (
            any(w < 0 for w in self.label_weights) or not any(w > 0 for w in self.label_weights)
        ):
            raise UserInputError(f"label sampling weights must be >= 0 with one > 0, got {self.label_weights}")
        # foreground voxel indices per case and label, subsampled to bound memory
        self.fg: List[Dict[int, np.ndarray]] = []
        for case in self.cases:
            per_label = {}
            for value in np.unique(case.labels):
                if value == 0:
                    continue
                idx = np.flatnonzero(case.labels.ravel() == value)
                if idx.size > 20000:
                    idx = idx[np.linspace(0, idx.size - 1, 20000).astype(np.int64)]
                per_label[int(value)] = idx
            self.fg.append(per_label)

    def sample(self) -> Tuple[np.ndarray, np.ndarray]:
        ci = int(self.rng.integers(len(self.cases)))
        case = self.cases[ci]
        shape = case.labels.shape
        if self.fg[ci] and self.rng.random() < self.pos_fraction:
            keys = sorted(self.fg[ci])
            if self.label_weights is None:
                value = keys[int(self.rng.integers(len(keys)))]
            else:
                w = np.asarray([self._weight(k) for k in keys], dtype=np.float64)
                if w.sum() <= 0:
                    w = np.ones(len(keys))
                value = keys[int(self.rng.choice(len(keys), p=w / w.sum()))]
            flat = self.fg[ci][value][int(self.rng.integers(len(self.fg[ci][value])))]
            centre = np.unravel_index(int(flat), shape)
        else:
            centre = tuple(int(self.rng.integers(s)) for s in shape)
        image_patch = np.full((case.image.shape[0], *self.roi), float(case.image.min()), dtype=np.float32)
        label_patch = np.zeros(self.roi, dtype=np.uint8)
        src, dst = [], []
        for c, r, s in zip(centre, self.roi, shape):
            start = int(c) - r // 2
            lo, hi = max(start, 0), min(start + r, s)
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        image_patch[(slice(None), *dst)] = case.image[(slice(None), *src)]
        label_patch[tuple(dst)] = case.labels[tuple(src)]
        return image_patch, label_patch

    def _weight(self, value: int) -> float:
        weights = self.label_weights or []
        return weights[value - 1] if 0 < value <= len(weights) else 0.0


def recalibrate_batch_norm(model: Any, batches: Callable[[], Any], count: int) -> int:
    """Replace batch-norm running statistics by their plain average over ``count`` batches (no gradients).

    Returns the number of batch-norm layers updated (0: nothing to do, the model is left untouched).
    """
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or count <= 0:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches seen
    model.train()
    with torch.no_grad():
        for _ in range(count):
            model(batches())
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(layers)


def augment(image: np.ndarray, labels: np.ndarray, rng: Any, config: TrainConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Flips (configured axes), intensity scale/shift and Gaussian noise: cheap, label-preserving."""
    for axis in config.augment_flip_axes:
        if rng.random() < 0.5:
            image = np.flip(image, axis=axis + 1)
            labels = np.flip(labels, axis=axis)
    if config.augment_intensity:
        scale, shift = config.intensity_scale, config.intensity_shift
        image = image * np.float32(rng.uniform(1 - scale, 1 + scale)) + np.float32(rng.uniform(-shift, shift))
        if rng.random() < 0.3:
            image = image + rng.normal(0.0, config.intensity_noise, size=image.shape).astype(np.float32)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)


# --- metrics -------------------------------------------------------------------------------------------


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, n_labels: int) -> List[float]:
    """Dice of labels 1..n (NaN when both are empty)."""
    scores = []
    for value in range(1, n_labels + 1):
        p, t = prediction == value, truth == value
        denominator = int(p.sum()) + int(t.sum())
        scores.append(float("nan") if denominator == 0 else 2.0 * int((p & t).sum()) / denominator)
    return scores


# --- the training loop -----------------------------------------------------------------------------------


def config_from_package(package: Any, out_dir: str, **overrides: Any) -> TrainConfig:
    """A fine-tuning configuration: the network, labels, preprocessing and patch size of a state-dict
    MONAI ``UNet`` package, starting from its weights; ``overrides`` set any other TrainConfig field."""
    network = package.network
    parameters = network.get("parameters", {})
    if network.get("architecture") != "UNet" or network.get("format") != "state_dict":
        raise UserInputError("fine-tuning needs a MedSeg package with a state-dict MONAI UNet", package.root)
    values: Dict[str, Any] = {
        "labels": [label.name for label in package.labels],
        "out_dir": str(out_dir),
        "roi_size": package.roi_size,
        "inference_roi_size": package.roi_size,
        "channels": tuple(parameters["channels"]),
        "strides": tuple(parameters["strides"]),
        "num_res_units": int(parameters.get("num_res_units", 0)),
        "norm": parameters.get("norm", "instance"),
        "in_channels": package.in_channels,
        "modalities": list(package.manifest.get("input", {}).get("modalities", [])),
        "preprocessing": package.preprocessing,
        "overlap": float(package.inference.get("overlap", 0.25)),
        "label_colors": [tuple(label.color) for label in package.labels],
        "label_terminology": [label.terminology for label in package.labels],
        "model_name": f"{package.name}-finetuned",
        "model_version": package.version,
        "description": f"{package.name} {package.version} fine-tuned",
        "licence": package.manifest.get("licence", ""),
        "init_weights": str(package.weights_path),
        "resume": False,
    }
    values.update(overrides)
    return TrainConfig(**values)


def network_config(config: TrainConfig) -> Dict[str, Any]:
    return {
        "architecture": "UNet",
        "parameters": {
            "spatial_dims": 3,
            "in_channels": config.in_channels,
            "out_channels": len(config.labels) + 1,
            "channels": list(config.channels),
            "strides": list(config.strides),
            "num_res_units": config.num_res_units,
            "norm": config.norm,
        },
    }


def _distributed() -> Tuple[int, int]:
    """(rank, world size) when launched by torchrun with more than one process, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _fingerprint(model: Any) -> Any:
    import torch

    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def train(
    config: TrainConfig,
    cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase] = (),
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Train, validate, checkpoint and export; returns a summary (best Dice, paths, timings)."""
    import torch
    from monai.losses import DiceCELoss

    from MedSegLib.deep_learning.model_package import build_network
    from MedSegLib.deep_learning.sliding_window import sliding_window_predict

    if not cases:
        raise UserInputError("no training cases")
    out_dir = Path(config.out_dir)
    rank, world = _distributed()
    distributed = world > 1
    device = torch.device(
        config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / "training"
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)  # same initial weights on every rank
    model = build_network(network_config(config)).to(device)
    if config.init_weights:
        try:
            model.load_state_dict(torch.load(str(config.init_weights), map_location=device, weights_only=True))
        except (OSError, RuntimeError) as error:
            raise UserInputError(
                f"cannot start from these weights: {str(error).splitlines()[0]}", config.init_weights
            ) from None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=config.dice_over_batch)
    rng = np.random.default_rng([config.seed, rank])
    start_epoch, best_dice, best_epoch = 0, -1.0, -1
    last_path, best_path = work_dir / "checkpoint_last.pt", work_dir / "checkpoint_best.pt"
    log_path = work_dir / "training_log.csv"
    if config.resume and last_path.is_file():
        state = torch.load(str(last_path), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_dice, best_epoch = state["epoch"] + 1, state["best_dice"], state["best_epoch"]
        rng.bit_generator.state = state["rng"][rank] if rank < len(state["rng"]) else rng.bit_generator.state
        torch.set_rng_state(state["torch_rng"].cpu())
        if rank == 0:
            log(f"resumed from {last_path} at epoch {start_epoch}")
    ddp_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = PatchSampler(cases, config.roi_size, config.pos_fraction, rng, config.label_sampling_weights)
    n_labels = len(config.labels)
    header = ["epoch", "train_loss", "mean_dice"] + [f"dice_{n}" for n in config.labels]
    header += ["seconds", "world_size", "ranks_max_weight_diff"]
    if rank == 0 and (not log_path.exists() or start_epoch == 0):
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(header)
    started = time.perf_counter()
    total_steps = 0

    def next_batch() -> Tuple[Any, Any]:
        images, labels = [], []
        for _b in range(config.batch_size):
            image, label = augment(*sampler.sample(), rng, config)
            images.append(image)
            labels.append(label[None])
        x = torch.from_numpy(np.stack(images)).to(device)
        return x, torch.from_numpy(np.stack(labels).astype(np.int64)).to(device)

    def validate() -> List[float]:
        model.eval()
        scores = []
        for case in val_cases:
            logits = sliding_window_predict(
                torch.from_numpy(case.image),
                model,
                tuple(config.inference_roi_size or config.roi_size),
                overlap=config.overlap,
                mode="gaussian",
                sw_batch_size=2,
                device=device,
            )
            scores.append(dice_per_label(torch.argmax(logits, 0).numpy(), case.labels, n_labels))
        return list(np.nanmean(np.asarray(scores, dtype=np.float64), axis=0))

    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        if config.lr_schedule == "poly":  # a function of the epoch only, so resuming keeps the schedule
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * (1 - epoch / config.epochs) ** 0.9
        ddp_model.train()
        if config.freeze_batch_norm:
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        losses = []
        for _ in range(config.steps_per_epoch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            x, y = next_batch()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            total_steps += 1
            if config.max_steps is not None and total_steps >= config.max_steps:
                break
        weight_diff = 0.0
        if distributed:
            import torch.distributed as dist

            mine = _fingerprint(model)
            gathered = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine)
            weight_diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        dice = [float("nan")] * n_labels
        if rank == 0 and val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            dice = validate()
        mean_dice = float(np.nanmean(dice)) if not all(np.isnan(dice)) else float("nan")
        if rank == 0:
            improved = not np.isnan(mean_dice) and mean_dice > best_dice
            if improved or (not val_cases):
                best_dice, best_epoch = (mean_dice if improved else best_dice), epoch
                torch.save(model.state_dict(), str(best_path))
            rng_states = [rng.bit_generator.state]
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_dice": best_dice,
                "best_epoch": best_epoch,
                "rng": rng_states,
                "torch_rng": torch.get_rng_state(),
                "config": asdict(config),
            }
            tmp = last_path.with_suffix(".tmp")
            torch.save(state, str(tmp))
            os.replace(tmp, last_path)
            seconds = time.perf_counter() - epoch_started
            row = [epoch, f"{np.mean(losses):.5f}", f"{mean_dice:.4f}"] + [f"{d:.4f}" for d in dice]
            row += [f"{seconds:.1f}", world, f"{weight_diff:.3g}"]
            with open(log_path, "a", newline="") as handle:
                csv.writer(handle).writerow(row)
            log(
                f"epoch {epoch + 1}/{config.epochs}  loss {np.mean(losses):.4f}  mean Dice {mean_dice:.4f}  "
                + "  ".join(f"{n} {d:.3f}" for n, d in zip(config.labels, dice))
                + f"  ({seconds:.1f} s)"
            )
        if progress is not None:
            progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs}")
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        if config.max_steps is not None and total_steps >= config.max_steps:
            break
    if rank == 0 and config.bn_recalibration_batches > 0:
        recal_started = time.perf_counter()
        layers = recalibrate_batch_norm(model, lambda: next_batch()[0], config.bn_recalibration_batches)
        if layers:
            dice = validate() if val_cases else [float("nan")] * n_labels
            mean_dice = float(np.nanmean(dice)) if not all(np.isnan(dice)) else float("nan")
            # the recalibrated final weights win ties: same training, better statistics
            if not val_cases or (not np.isnan(mean_dice) and mean_dice >= best_dice):
                best_dice, best_epoch = (mean_dice if val_cases else best_dice), config.epochs - 1
                torch.save(model.state_dict(), str(best_path))
            seconds = time.perf_counter() - recal_started
            row = ["bn-recalibrated", "", f"{mean_dice:.4f}"] + [f"{d:.4f}" for d in dice]
            row += [f"{seconds:.1f}", world, "0"]
            with open(log_path, "a", newline="") as handle:
                csv.writer(handle).writerow(row)
            log(
                f"batch norm recalibrated on {config.bn_recalibration_batches} batches ({layers} layers): mean Dice "
                f"{mean_dice:.4f}  " + "  ".join(f"{n} {d:.3f}" for n, d in zip(config.labels, dice))
            )
    summary: Dict[str, Any] = {
        "best_mean_dice": best_dice,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - started,
        "world_size": world,
        "rank": rank,
    }
    if rank == 0:
        package = export_package(config, best_path if best_path.is_file() else None, model)
        summary["model_dir"] = str(package.root)
        (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


def export_package(config: TrainConfig, weights: Optional[Path], model: Any = None) -> Any:
    """Write the MedSeg model package (``medseg-model.json`` + ``model.pt`` state dict) into ``out_dir``."""
    import torch

    from MedSegLib.deep_learning.model_package import write_model_package

    out_dir = Path(config.out_dir)
    target = out_dir / "model.pt"
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    else:
        state = model.state_dict()
    torch.save({k: v.cpu() for k, v in state.items()}, str(target))
    colors = config.label_colors or [(128, 128, 128)] * len(config.labels)
    terms = config.label_terminology or [None] * len(config.labels)
    labels = []
    for value, (name, color, term) in enumerate(zip(config.labels, colors, terms), start=1):
        item: Dict[str, Any] = {"value": value, "name": name, "color": list(color)}
        if term:
            item["terminology"] = term
        labels.append(item)
    manifest = {
        "name": config.model_name,
        "version": config.model_version,
        "description": config.description,
        "licence": config.licence,
        "input": {"channels": config.in_channels, "modalities": list(config.modalities)},
        "labels": labels,
        "network": dict(network_config(config), weights="model.pt", format="state_dict"),
        "preprocessing": config.preprocessing,
        "inference": {
            "roi_size": list(config.inference_roi_size or config.roi_size),
            "overlap": config.overlap,
            "mode": "gaussian",
            "sigma_scale": 0.125,
            "sw_batch_size": 4,
        },
        "training": {
            "seed": config.seed,
            "epochs": config.epochs,
            "steps_per_epoch": config.steps_per_epoch,
            "batch_size": config.batch_size,
            "patch_size": list(config.roi_size),
            "learning_rate": config.learning_rate,
            "lr_schedule": config.lr_schedule,
            "intensity_scale": config.intensity_scale,
            "intensity_shift": config.intensity_shift,
            "intensity_noise": config.intensity_noise,
            "pos_fraction": config.pos_fraction,
            "label_sampling_weights": config.label_sampling_weights,
            "dice_over_batch": config.dice_over_batch,
            "bn_recalibration_batches": config.bn_recalibration_batches,
        },
    }
    return write_model_package(out_dir, manifest, target)
