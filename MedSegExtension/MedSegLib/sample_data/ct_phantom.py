"""Synthetic chest/upper-abdomen CT made by code, so demos and tests need no downloads.

The anatomy is a set of ellipses, ellipsoids and tubes defined in a "model" space of a standard adult
(mm; X = patient left, Y = posterior, Z = superior, as in DICOM LPS). The model is 400 mm wide and
320 mm long (liver bottom to lung apices); it is scaled in-plane only when the field of view is smaller
than 400 mm and stretched/compressed in z so that every organ appears in any number of slices.
The patient lies supine, head first (HFS), on a table posterior to the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.sample_data.dicom_series_writer import (
    CT_IMAGE_STORAGE,
    PathLike,
    SeriesInfo,
    deterministic_uid,
    ds_value,
    ds_values,
    instance_file_name,
    make_geometry,
    new_image_dataset,
    remove_stale_files,
    write_dataset,
)

DEFAULT_CT_SHAPE: Tuple[int, int, int] = (64, 256, 256)
DEFAULT_CT_SPACING_MM: Tuple[float, float, float] = (2.5, 1.5, 1.5)
DEFAULT_NOISE_SD_HU = 15.0
HU_MIN, HU_MAX = -1024, 3071
RESCALE_INTERCEPT = -1024  # stored = HU + 1024 fits 12 bits for -1024..3071

LABEL_NAMES: Dict[int, str] = {
    1: "body",
    2: "lung_left",
    3: "lung_right",
    4: "airway",
    5: "spine",
    6: "ribs",
    7: "heart",
    8: "liver",
}

# Target (noise-free) attenuation of each tissue, HU.
TISSUE_HU: Dict[str, float] = {
    "air": -1000.0,
    "table_shell": 200.0,
    "table_core": -200.0,
    "skin": 40.0,
    "fat": -100.0,
    "muscle": 45.0,
    "viscera": 30.0,
    "lung": -850.0,
    "airway": -1000.0,
    "airway_wall": 50.0,
    "myocardium": 40.0,
    "blood_contrast": 200.0,
    "aorta_contrast": 180.0,
    "liver": 60.0,
    "kidney": 150.0,
    "stomach_fluid": 10.0,
    "cancellous_bone": 300.0,
    "cortical_bone": 1000.0,
    "posterior_elements": 700.0,
    "disc": 90.0,
    "spinal_canal": 30.0,
    "rib": 800.0,
}

# Window presets written as the multi-valued WindowCenter/WindowWidth pair.
WINDOW_PRESETS: Tuple[Tuple[str, float, float], ...] = (
    ("SOFT_TISSUE", 40.0, 400.0),
    ("LUNG", -600.0, 1500.0),
    ("BONE", 500.0, 2000.0),
)

_MODEL_WIDTH_MM = 400.0
_MODEL_LENGTH_MM = 320.0
_CHUNK_SLICES = 8  # slices painted at once: bounds memory for 512x512xN volumes


@dataclass
class CTPhantom:
    """Synthetic CT volume (arrays are (slices, rows, cols) = (z, y, x), like SimpleITK's GetArrayFromImage)."""

    hu: np.ndarray  # int16 HU, noise included
    labels: np.ndarray  # uint8 label map, see label_names
    label_names: Dict[int, str]
    spacing: Tuple[float, float, float]  # (slice, row, col) mm
    origin_lps: Tuple[float, float, float]  # LPS position (x, y, z) of voxel (0, 0, 0)
    noise_sd_hu: float = DEFAULT_NOISE_SD_HU
    seed: int = 0
    tissue_hu: Dict[str, float] = field(default_factory=lambda: dict(TISSUE_HU))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a, b) -> np.ndarray:
    """Normalised squared radius ((x-cx)/a)^2 + ((y-cy)/b)^2 (<= 1 inside)."""
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2


def _tube(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, start: Sequence[float], end: Sequence[float], radius: float
) -> np.ndarray:
    """Voxels within ``radius`` of the segment start-end (a capsule), in model mm.

    ``x``, ``y``, ``z`` are ascending axes shaped (1,1,c), (1,r,1), (n,1,1); only the segment's
    bounding box is evaluated, which keeps thin tubes cheap on big grids.
    """
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    mask = np.zeros(shape, dtype=bool)
    p0 = np.asarray(start, dtype=np.float64)
    p1 = np.asarray(end, dtype=np.float64)
    bounds = []
    for axis_values, lo, hi in ((z.ravel(), p0[2], p1[2]), (y.ravel(), p0[1], p1[1]), (x.ravel(), p0[0], p1[0])):
        i0 = int(np.searchsorted(axis_values, min(lo, hi) - radius, side="left"))
        i1 = int(np.searchsorted(axis_values, max(lo, hi) + radius, side="right"))
        if i0 >= i1:
            return mask
        bounds.append(slice(i0, i1))
    zs, ys, xs = bounds
    d = p1 - p0
    rx, ry, rz = x[:, :, xs] - p0[0], y[:, ys, :] - p0[1], z[zs] - p0[2]
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / float(d @ d), 0.0, 1.0)
    mask[zs, ys, xs] = (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2 <= radius**2
    return mask


# Polyline centre lines (model mm: X left, Y posterior, Z superior).
_AORTA = ((-10.0, -30.0, 215.0), (-10.0, -30.0, 255.0), (20.0, -15.0, 268.0), (30.0, 25.0, 262.0),
          (30.0, 25.0, 90.0), (15.0, 28.0, -10.0))
_AORTA_RADIUS = 12.0
_TRACHEA = ((0.0, 15.0, 340.0), (0.0, 15.0, 250.0))
_RIGHT_BRONCHUS = ((0.0, 15.0, 250.0), (-38.0, 8.0, 225.0), (-62.0, 10.0, 198.0))
_LEFT_BRONCHUS = ((0.0, 15.0, 250.0), (45.0, 2.0, 215.0), (70.0, 8.0, 188.0))


def _polyline(x, y, z, points, radius: float) -> np.ndarray:
    mask = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
    for start, end in zip(points[:-1], points[1:]):
        mask |= _tube(x, y, z, start, end, radius)
    return mask


def _paint_chunk(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Noise-free HU and labels for one chunk; x (1,1,c), y (1,r,1), z (n,1,1) in model mm.

    Structures are painted back to front: later ones overwrite earlier ones.
    """
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    hu = np.full(shape, TISSUE_HU["air"], dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, tissue: str, label: Optional[int] = None) -> None:
        mask = np.broadcast_to(mask, shape)
        hu[mask] = TISSUE_HU[tissue]
        if label is not None:
            lab[mask] = label

    # Patient table (posterior, supine patient): carbon/foam sandwich, not part of the body label.
    table = (y >= 125.0) & (y <= 155.0) & (np.abs(x) <= 230.0)
    paint(table, "table_shell")
    paint(table & (y >= 132.0) & (y <= 148.0), "table_core")

    # Body wall: skin, subcutaneous fat, muscle, then the visceral cavity.
    a, b = 165.0, 118.0
    paint(_ellipse(x, y, 0, 0, a, b) <= 1, "skin", 1)
    paint(_ellipse(x, y, 0, 0, a - 2, b - 2) <= 1, "fat", 1)
    paint(_ellipse(x, y, 0, 0, a - 14, b - 14) <= 1, "muscle", 1)
    cavity = _ellipse(x, y, 0, 0, a - 26, b - 26) <= 1
    paint(cavity, "viscera", 1)

    # Liver in the right upper quadrant (patient right = -X); the lungs painted next carve its dome.
    paint(cavity & (_ellipse(x, y, -55, 5, 90, 85) + ((z - 110.0) / 75.0) ** 2 <= 1), "liver", 8)

    # Kidneys (contrast-enhanced cortex) and a stomach with an air-fluid level, left upper quadrant.
    for cx in (-70.0, 70.0):
        paint(cavity & (_ellipse(x, y, cx, 62, 24, 30) + ((z - 70.0) / 50.0) ** 2 <= 1), "kidney", 1)
    stomach = cavity & (_ellipse(x, y, 55, -25, 45, 35) + ((z - 125.0) / 40.0) ** 2 <= 1)
    paint(stomach, "stomach_fluid", 1)
    paint(stomach & (y < -35.0), "air", 1)

    # Lungs: elliptic cylinders tapering to the apices, floor = diaphragm dome (right dome higher).
    taper = np.sqrt(np.clip(1.0 - ((z - 250.0) / 95.0) ** 2, 0.0, 1.0))
    taper = np.where(z < 250.0, 1.0, taper)
    for label, cx, dome_base in ((3, -78.0, 150.0), (2, 78.0, 140.0)):
        rr = _ellipse(x, y, cx, 5.0, 60.0 * taper + 1e-6, 80.0 * taper + 1e-6)
        above_dome = z > dome_base + 35.0 * (1.0 - np.clip(_ellipse(x, y, cx, 5.0, 60.0, 80.0), 0, 1))
        paint((rr <= 1) & above_dome & cavity, "lung", label)

    # Heart (left of midline, anterior) with a contrast-filled blood pool, then the aorta.
    heart_r = _ellipse(x, y, 25, -25, 65, 50) + ((z - 180.0) / 55.0) ** 2
    paint(heart_r <= 1, "myocardium", 7)
    paint(heart_r <= 0.72**2, "blood_contrast", 7)
    paint(_polyline(x, y, z, _AORTA, _AORTA_RADIUS), "aorta_contrast", 1)

    # Airway: trachea wall, then lumen of trachea and main/lobar bronchi.
    paint(_polyline(x, y, z, _TRACHEA, 11.0), "airway_wall", 1)
    airway = _polyline(x, y, z, _TRACHEA, 9.0)
    airway |= _polyline(x, y, z, _RIGHT_BRONCHUS[:2], 7.0) | _polyline(x, y, z, _RIGHT_BRONCHUS[1:], 4.5)
    airway |= _polyline(x, y, z, _LEFT_BRONCHUS[:2], 6.5) | _polyline(x, y, z, _LEFT_BRONCHUS[1:], 4.0)
    paint(airway, "airway", 4)

    # Spine: vertebral bodies (cortical shell and end plates, cancellous core) with discs every 30 mm,
    # the spinal canal and the posterior arch with a spinous process.
    phase = np.mod(z, 30.0)
    in_vertebra = phase >= 6.0
    end_plate = in_vertebra & ((phase < 8.0) | (phase >= 28.0))
    body_r = _ellipse(x, y, 0, 60, 22, 18)
    paint(body_r <= 1, "disc", 1)
    paint((body_r <= 1) & in_vertebra, "cortical_bone", 5)
    paint((body_r <= (1 - 2.0 / 18.0) ** 2) & in_vertebra & ~end_plate, "cancellous_bone", 5)
    canal_d2 = x**2 + (y - 92.0) ** 2
    arch = ((canal_d2 <= 15.0**2) | ((np.abs(x) <= 4.0) & (y >= 92.0) & (y <= 112.0))) & (body_r > 1)
    paint(arch & in_vertebra, "posterior_elements", 5)
    paint(canal_d2 <= 9.0**2, "spinal_canal", 1)

    # Ribs: a band inside the chest wall muscle, oblique (posterior end higher), every 24 mm,
    # interrupted anteriorly (costal cartilage / sternum) and posteriorly (the spine).
    ra, rb = a - 20.0, b - 21.0
    rho = np.sqrt(_ellipse(x, y, 0, 0, ra, rb))
    radial = np.hypot(x, y) * (rho - 1.0) / np.maximum(rho, 1e-6)  # distance along the ray from the band
    z_eff = z - 45.0 * np.clip(y / rb, -1.0, 1.0)
    rib_z = (np.mod(z_eff, 24.0) < 9.0) & (z_eff > 130.0) & (z_eff < 330.0)
    rib = (np.abs(radial) <= 4.5) & rib_z & (np.abs(x) > 30.0)
    paint(rib, "rib", 6)
    return hu, lab


def make_ct_phantom(
    shape: Sequence[int] = DEFAULT_CT_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_CT_SPACING_MM,
    seed: int = 0,
    noise_sd_hu: float = DEFAULT_NOISE_SD_HU,
    blur_sigma_px: float = 0.5,
) -> CTPhantom:
    """Build the phantom: painted anatomy, slight in-plane blur (scanner resolution), Gaussian noise.

    Same ``seed`` gives the same noise (numpy Generator); the anatomy does not depend on the seed.
    Memory stays bounded for 512x512xN because the volume is painted ``_CHUNK_SLICES`` slices at a time.
    """
    from scipy.ndimage import gaussian_filter  # lazy: scipy import costs time

    geometry = make_geometry(shape, spacing_mm)
    n_slices, rows, cols = geometry.shape
    dz, dy, dx = geometry.spacing_mm
    x0, y0, z0 = geometry.origin_lps
    scale_xy = min(1.0, cols * dx / _MODEL_WIDTH_MM, rows * dy / _MODEL_WIDTH_MM)
    # Model Z of slice centres: the slab [z0 - dz/2, z_last + dz/2] maps onto [0, 320] mm.
    z_model = (np.arange(n_slices) + 0.5) / n_slices * _MODEL_LENGTH_MM
    x_model = (x0 + np.arange(cols) * dx) / scale_xy
    y_model = (y0 + np.arange(rows) * dy) / scale_xy

    rng = np.random.default_rng(seed)
    hu = np.empty(geometry.shape, dtype=np.int16)
    labels = np.empty(geometry.shape, dtype=np.uint8)
    for start in range(0, n_slices, _CHUNK_SLICES):
        stop = min(start + _CHUNK_SLICES, n_slices)
        chunk_hu, chunk_lab = _paint_chunk(
            x_model[None, None, :], y_model[None, :, None], z_model[start:stop, None, None]
        )
        if blur_sigma_px > 0:
            chunk_hu = gaussian_filter(chunk_hu, sigma=(0.0, blur_sigma_px, blur_sigma_px), mode="nearest")
        if noise_sd_hu > 0:
            chunk_hu += rng.standard_normal(chunk_hu.shape, dtype=np.float32) * np.float32(noise_sd_hu)
        hu[start:stop] = np.clip(np.rint(chunk_hu), HU_MIN, HU_MAX).astype(np.int16)
        labels[start:stop] = chunk_lab
    return CTPhantom(
        hu=hu,
        labels=labels,
        label_names=dict(LABEL_NAMES),
        spacing=geometry.spacing_mm,
        origin_lps=geometry.origin_lps,
        noise_sd_hu=float(noise_sd_hu),
        seed=int(seed),
    )


def write_ct_series(out_dir: PathLike, phantom: CTPhantom, file_prefix: str = "CT") -> Path:
    """Write ``phantom`` as a CT Image Storage series, one explicit-VR-little-endian file per slice.

    Pixels are stored unsigned (BitsStored 12) with RescaleIntercept -1024 / RescaleSlope 1, the way
    most scanners store CT, so readers must apply the rescale to get HU.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry = make_geometry(phantom.hu.shape, phantom.spacing)
    if geometry.origin_lps != tuple(phantom.origin_lps):
        raise ValueError("phantom origin does not match the centred grid this writer produces")
    key = f"ct|seed={phantom.seed}|{geometry.key()}"
    info = SeriesInfo(
        modality="CT",
        patient_name="MedSeg^Phantom",
        patient_id="MEDSEG-CT-PHANTOM",
        study_uid=deterministic_uid(key, "study"),
        series_uid=deterministic_uid(key, "series"),
        frame_of_reference_uid=deterministic_uid(key, "frame-of-reference"),
        series_number=1,
        series_description="MedSeg synthetic chest/abdomen CT phantom",
        study_description="MedSeg sample CT",
    )
    names = []
    for k in range(geometry.shape[0]):
        instance = k + 1
        ds = new_image_dataset(
            info,
            CT_IMAGE_STORAGE,
            deterministic_uid(key, "sop", k),
            geometry,
            k,
            instance,
            (phantom.hu[k].astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16),  # per slice: bounded memory
            bits_stored=12,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "CHEST"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.ConvolutionKernel = "STANDARD"
        ds.ReconstructionDiameter = ds_value(geometry.shape[2] * geometry.spacing_mm[2])
        ds.GantryDetectorTilt = "0"
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = ds_values(center for _, center, _ in WINDOW_PRESETS)
        ds.WindowWidth = ds_values(width for _, _, width in WINDOW_PRESETS)
        ds.WindowCenterWidthExplanation = [name for name, _, _ in WINDOW_PRESETS]
        name = instance_file_name(file_prefix, instance)
        write_dataset(ds, out / name)
        names.append(name)
    remove_stale_files(out, file_prefix, names)
    return out


def write_ct_phantom(
    out_dir: PathLike,
    shape: Sequence[int] = DEFAULT_CT_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_CT_SPACING_MM,
    seed: int = 0,
    noise_sd_hu: float = DEFAULT_NOISE_SD_HU,
) -> Path:
    """Make the CT phantom and write it as a DICOM series into ``out_dir``; returns the folder."""
    phantom = make_ct_phantom(shape, spacing_mm, seed=seed, noise_sd_hu=noise_sd_hu)
    return write_ct_series(out_dir, phantom)

