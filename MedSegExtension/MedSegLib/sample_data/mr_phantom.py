"""MR relaxometry phantom: 14 spheres with ISMRM/NIST system-phantom T1/T2 in a water-filled cylinder.

Gives the T1/T2 fitting code a ground truth: inversion-recovery and multi-echo spin-echo series are
simulated analytically, with Rician noise, and written as real MR DICOM series (all TIs or all echoes
in ONE series, like a scanner's multi-volume export).

Reference values (ms) are the ISMRM/NIST system phantom sphere values of Stupic KF et al., "A standard
system phantom for magnetic resonance imaging", Magn Reson Med 2021;86(3):1194-1211,
doi:10.1002/mrm.28779, Supporting Information, as transcribed in tomgriesler/OpenMRF
``include_misc/src_nist_values/NIST_references.m`` @ dbf8d3d (cross-checked against GSTT-CSC/hazen
``hazenlib/data/relaxometry_params.py`` @ ce5426a; the two disagree for 1.5 T MnCl2 sphere 1 T1:
2736 vs 2376 ms, the OpenMRF value is kept). NiCl2 is the phantom's "T1 array", MnCl2 its "T2 array".
The default (3.0 T, MnCl2) covers T1 91-2480 ms and T2 5.6-581 ms with the values of the same spheres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from MedSegLib.sample_data.dicom_series_writer import (
    MR_IMAGE_STORAGE,
    PathLike,
    SeriesInfo,
    deterministic_uid,
    ds_value,
    instance_file_name,
    make_geometry,
    new_image_dataset,
    remove_stale_files,
    write_dataset,
)

# (field strength, array) -> (T1 list, T2 list) for spheres 1..14 (sphere 1 = longest), ms.
NIST_SPHERES_MS: Dict[Tuple[str, str], Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    ("1.5T", "NiCl2"): (
        (2033, 1489, 1012, 730.8, 514.1, 367.9, 260.1, 184.6, 132.7, 92.7, 65.4, 46.32, 32.45, 22.859),
        (1669, 1244, 859.3, 628.5, 446.3, 321.2, 227.7, 161.9, 117.1, 81.9, 57.7, 41.0, 28.7, 20.2),
    ),
    ("1.5T", "MnCl2"): (
        (2736, 2183, 1870, 1539, 1237, 1030, 752.2, 550.2, 413.4, 292.9, 194.9, 160.2, 106.4, 83.33),
        (939.4, 594.3, 416.5, 267.0, 184.9, 140.6, 91.76, 64.84, 45.28, 30.62, 19.76, 15.99, 10.47, 8.15),
    ),
    ("3.0T", "NiCl2"): (
        (1989, 1454, 984.1, 706.0, 496.7, 351.5, 247.13, 175.3, 125.9, 89.0, 62.7, 44.53, 30.84, 21.719),
        (1465, 1077, 717.9, 510.1, 359.6, 255.5, 180.8, 127.3, 90.3, 64.3, 45.7, 31.86, 22.38, 15.83),
    ),
    ("3.0T", "MnCl2"): (
        (2480, 2173, 1907, 1604, 1332, 1044, 801.7, 608.6, 458.4, 336.5, 244.2, 176.9, 126.9, 90.9),
        (581.3, 403.5, 278.1, 190.94, 133.27, 96.89, 64.07, 46.42, 31.97, 22.56, 15.81, 11.24, 7.91, 5.59),
    ),
}

# Fill fluid: water-like, long T1/T2. Assumed round values (not from the reference above).
FILL_T1_MS = 3000.0
FILL_T2_MS = 1500.0
FILL_M0 = 1.0
SPHERE_M0 = 1.0  # the relaxation spheres are aqueous solutions: same proton density as the fill

DEFAULT_MR_SHAPE: Tuple[int, int, int] = (12, 128, 128)
DEFAULT_MR_SPACING_MM: Tuple[float, float, float] = (4.0, 2.0, 2.0)
DEFAULT_TI_MS: Tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
DEFAULT_IR_TR_MS = 5000.0
DEFAULT_IR_TE_MS = 12.0
DEFAULT_SE_ECHOES = 32
DEFAULT_ECHO_SPACING_MS = 10.0
DEFAULT_SE_TR_MS = 5000.0
DEFAULT_NOISE_SIGMA = 0.01  # Gaussian SD of each of the real/imaginary channels, in units of M0
STORED_MAX = 4000  # the largest stored value of a series; RescaleSlope = signal_max / STORED_MAX (rounded)

_MODEL_FOV_MM = 240.0
_CYLINDER_RADIUS_MM = 100.0
_SPHERE_RADIUS_MM = 9.0
_OUTER_RING_MM = 62.0
_INNER_RING_MM = 25.0


@dataclass(frozen=True)
class SphereSpec:
    """One sphere: its number (= label value), LPS centre, radius and reference relaxation."""

    number: int
    center_lps: Tuple[float, float, float]
    radius_mm: float
    t1_ms: float
    t2_ms: float
    m0: float


@dataclass
class MRPhantom:
    """Ground-truth maps, (slices, rows, cols); label n = sphere n (1..14), ``fill_label`` = fill fluid."""

    t1_ms: np.ndarray  # float32, 0 outside the cylinder
    t2_ms: np.ndarray  # float32, 0 outside the cylinder
    m0: np.ndarray  # float32, 0 outside the cylinder
    labels: np.ndarray  # uint8
    spheres: Tuple[SphereSpec, ...]
    label_names: Dict[int, str]
    fill_label: int
    spacing: Tuple[float, float, float]
    origin_lps: Tuple[float, float, float]
    field_strength_t: float
    array: str
    seed: int = 0

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]


def _reference_values(field_strength_t: float, array: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    key = ("1.5T" if abs(field_strength_t - 1.5) < 1e-6 else "3.0T" if abs(field_strength_t - 3.0) < 1e-6 else "",
           array)
    if key not in NIST_SPHERES_MS:
        raise ValueError(f"no reference values for {field_strength_t} T / {array!r}; use 1.5 or 3.0 T, NiCl2 or MnCl2")
    return NIST_SPHERES_MS[key]


def make_mr_phantom(
    shape: Sequence[int] = DEFAULT_MR_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_MR_SPACING_MM,
    seed: int = 0,
    field_strength_t: float = 3.0,
    array: str = "MnCl2",
) -> MRPhantom:
    """Cylinder (axis along z) of fill fluid with 10 spheres on an outer ring and 4 on an inner ring.

    Sphere 1 is anterior (top of the image), numbering runs clockwise as displayed (towards patient
    left = +x). All sphere centres lie in the central axial plane (z = 0). The layout shrinks when the
    field of view is smaller than 240 mm. ``seed`` is kept for the UIDs of the written series; the maps
    themselves are noise-free.
    """
    geometry = make_geometry(shape, spacing_mm)
    n_slices, rows, cols = geometry.shape
    dz, dy, dx = geometry.spacing_mm
    x0, y0, z0 = geometry.origin_lps
    t1_ref, t2_ref = _reference_values(field_strength_t, array)
    scale = min(1.0, cols * dx / _MODEL_FOV_MM, rows * dy / _MODEL_FOV_MM)
    z_centre = float(ds_value(z0 + (n_slices - 1) * dz / 2.0))

    angles = [2 * np.pi * i / 10 for i in range(10)] + [np.pi / 4 + np.pi / 2 * i for i in range(4)]
    radii = [_OUTER_RING_MM] * 10 + [_INNER_RING_MM] * 4
    spheres = tuple(
        SphereSpec(
            number=i + 1,
            center_lps=(scale * r * float(np.sin(a)), -scale * r * float(np.cos(a)), z_centre),
            radius_mm=scale * _SPHERE_RADIUS_MM,
            t1_ms=float(t1_ref[i]),
            t2_ms=float(t2_ref[i]),
            m0=SPHERE_M0,
        )
        for i, (a, r) in enumerate(zip(angles, radii))
    )

    x = (x0 + np.arange(cols) * dx)[None, None, :]
    y = (y0 + np.arange(rows) * dy)[None, :, None]
    z = (z0 + np.arange(n_slices) * dz)[:, None, None]
    fill_label = len(spheres) + 1
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    in_cylinder = np.broadcast_to(x**2 + y**2 <= (scale * _CYLINDER_RADIUS_MM) ** 2, geometry.shape)
    labels[in_cylinder] = fill_label
    for sphere in spheres:
        cx, cy, cz = sphere.center_lps
        inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= sphere.radius_mm**2
        labels[np.broadcast_to(inside, geometry.shape)] = sphere.number

    # Lookup tables indexed by label value: vectorised map filling.
    t1_lut = np.zeros(fill_label + 1, dtype=np.float32)
    t2_lut = np.zeros_like(t1_lut)
    m0_lut = np.zeros_like(t1_lut)
    t1_lut[fill_label], t2_lut[fill_label], m0_lut[fill_label] = FILL_T1_MS, FILL_T2_MS, FILL_M0
    for sphere in spheres:
        t1_lut[sphere.number], t2_lut[sphere.number], m0_lut[sphere.number] = sphere.t1_ms, sphere.t2_ms, sphere.m0
    label_names = {s.number: f"sphere_{s.number:02d}" for s in spheres}
    label_names[fill_label] = "fill"
    return MRPhantom(
        t1_ms=t1_lut[labels],
        t2_ms=t2_lut[labels],
        m0=m0_lut[labels],
        labels=labels,
        spheres=spheres,
        label_names=label_names,
        fill_label=fill_label,
        spacing=geometry.spacing_mm,
        origin_lps=geometry.origin_lps,
        field_strength_t=float(field_strength_t),
        array=array,
        seed=int(seed),
    )


def _per_volume(values: Union[float, Sequence[float]], count: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.size == 1:
        arr = np.full(count, float(arr[0]))
    if arr.shape != (count,):
        raise ValueError(f"{name} must be one value or one per volume ({count}), got {arr.size}")
    return arr


def ir_signal(
    t1_ms: np.ndarray, m0: np.ndarray, ti_ms: Sequence[float], tr_ms: Union[float, Sequence[float]]
) -> np.ndarray:
    """Noise-free magnitude inversion recovery, one volume per TI (ideal 180/90 pulses, TE << T2):

        S(TI) = | M0 * (1 - 2*exp(-TI/T1) + exp(-TR/T1)) |

    ``tr_ms`` is one TR or one per TI. Voxels with T1 = 0 (outside the phantom) give 0.
    """
    ti = np.asarray(ti_ms, dtype=np.float64)
    tr = _per_volume(tr_ms, ti.size, "tr_ms")
    t1 = np.asarray(t1_ms, dtype=np.float64)
    safe_t1 = np.where(t1 > 0, t1, 1.0)
    out = np.empty((ti.size,) + t1.shape, dtype=np.float64)
    for i in range(ti.size):  # loop over volumes only
        out[i] = np.abs(m0 * (1.0 - 2.0 * np.exp(-ti[i] / safe_t1) + np.exp(-tr[i] / safe_t1)))
    out[:, t1 <= 0] = 0.0
    return out


def se_signal(t2_ms: np.ndarray, m0: np.ndarray, te_ms: Sequence[float]) -> np.ndarray:
    """Noise-free multi-echo spin echo, one volume per echo: S(TE) = M0 * exp(-TE/T2).

    TR is assumed long enough for full T1 recovery (M0 is the effective amplitude); stimulated echoes
    from imperfect refocusing are not modelled. Voxels with T2 = 0 give 0.
    """
    te = np.asarray(te_ms, dtype=np.float64)
    t2 = np.asarray(t2_ms, dtype=np.float64)
    safe_t2 = np.where(t2 > 0, t2, 1.0)
    out = np.empty((te.size,) + t2.shape, dtype=np.float64)
    for i in range(te.size):
        out[i] = m0 * np.exp(-te[i] / safe_t2)
    out[:, t2 <= 0] = 0.0
    return out


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels: |S + n1 + i*n2|.

    This is the noise of a single-coil magnitude image: Rayleigh-distributed where S = 0 (mean
    sigma*sqrt(pi/2)) and biased upwards at low SNR, which fitting code must cope with.
    """
    if sigma <= 0:
        return np.abs(signal)
    n1 = rng.standard_normal(signal.shape)
    n2 = rng.standard_normal(signal.shape)
    return np.hypot(signal + sigma * n1, sigma * n2)


def default_echo_times(
    n_echoes: int = DEFAULT_SE_ECHOES, echo_spacing_ms: float = DEFAULT_ECHO_SPACING_MS
) -> List[float]:
    """Equally spaced echo train: TE_n = n * spacing, n = 1..n_echoes."""
    return [echo_spacing_ms * (n + 1) for n in range(n_echoes)]


def simulate_ir_series(
    phantom: MRPhantom,
    ti_ms: Sequence[float] = DEFAULT_TI_MS,
    tr_ms: Union[float, Sequence[float]] = DEFAULT_IR_TR_MS,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    seed: Optional[int] = None,
) -> np.ndarray:
    """Noisy float IR magnitude images (n_ti, slices, rows, cols): exactly what ``write_mr_ir_series`` stores."""
    seed = phantom.seed if seed is None else seed
    rng = np.random.default_rng([int(seed), 1])  # stream 1: IR noise
    return add_rician_noise(ir_signal(phantom.t1_ms, phantom.m0, ti_ms, tr_ms), noise_sigma, rng)


def simulate_se_series(
    phantom: MRPhantom,
    te_ms: Optional[Sequence[float]] = None,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    seed: Optional[int] = None,
) -> np.ndarray:
    """Noisy float multi-echo images (n_echoes, slices, rows, cols): exactly what ``write_mr_se_series`` stores."""
    seed = phantom.seed if seed is None else seed
    te = default_echo_times() if te_ms is None else te_ms
    rng = np.random.default_rng([int(seed), 2])  # stream 2: SE noise
    return add_rician_noise(se_signal(phantom.t2_ms, phantom.m0, te), noise_sigma, rng)


def rescale_for_storage(signal: np.ndarray, stored_max: int = STORED_MAX) -> Tuple[np.ndarray, float, str]:
    """Quantise a float series to uint16 with ONE RescaleSlope for the whole series (intercept 0).

    slope = max(signal) / stored_max, rounded to 6 significant digits (a valid DS string); stored =
    round(signal / slope), so stored * slope reproduces the float signal within slope / 2. One slope per
    series matters: readers that take the rescale from one file would otherwise mis-scale the others.
    Returns (stored, slope, slope_text).
    """
    peak = float(np.max(signal)) if signal.size else 0.0
    slope_text = ds_value(float(f"{peak / stored_max:.6g}")) if peak > 0 else "1"
    slope = float(slope_text)
    stored = np.rint(signal / slope)
    if stored.max(initial=0) >= 2**12:
        raise ValueError("rescaled signal exceeds 12 bits")
    return stored.astype(np.uint16), slope, slope_text


def _mr_series_info(phantom: MRPhantom, kind: str, series_number: int, description: str) -> Tuple[SeriesInfo, str]:
    geometry = make_geometry(phantom.shape, phantom.spacing)
    study_key = f"mr|seed={phantom.seed}|{geometry.key()}|{phantom.field_strength_t}|{phantom.array}"
    series_key = f"{study_key}|{kind}"
    info = SeriesInfo(
        modality="MR",
        patient_name="MedSeg^RelaxometryPhantom",
        patient_id="MEDSEG-MR-PHANTOM",
        study_uid=deterministic_uid(study_key, "study"),
        series_uid=deterministic_uid(series_key, "series"),
        # IR and SE share the study and frame of reference: their maps are registered by construction.
        frame_of_reference_uid=deterministic_uid(study_key, "frame-of-reference"),
        series_number=series_number,
        series_description=description,
        study_description="MedSeg sample MR relaxometry",
    )
    return info, series_key


def _write_mr_volumes(
    out_dir: PathLike,
    phantom: MRPhantom,
    signal: np.ndarray,
    info: SeriesInfo,
    series_key: str,
    per_volume_tags,
    file_prefix: str,
) -> Path:
    """Write volumes (n_vol, slices, rows, cols) as one series, volume-major instance numbering."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry = make_geometry(phantom.shape, phantom.spacing)
    stored, _, slope_text = rescale_for_storage(signal)
    n_vol, n_slices = stored.shape[0], stored.shape[1]
    names = []
    for v in range(n_vol):
        for k in range(n_slices):
            instance = v * n_slices + k + 1
            ds = new_image_dataset(
                info, MR_IMAGE_STORAGE, deterministic_uid(series_key, "sop", v, k), geometry, k, instance,
                stored[v, k], bits_stored=12,
            )
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            ds.MagneticFieldStrength = ds_value(phantom.field_strength_t)
            ds.ImagingFrequency = ds_value(round(42.577478 * phantom.field_strength_t, 6))
            ds.ImagedNucleus = "1H"
            ds.MRAcquisitionType = "2D"
            ds.SpacingBetweenSlices = ds_value(geometry.spacing_mm[0])
            ds.NumberOfAverages = "1"
            ds.BodyPartExamined = "PHANTOM"
            # Modality LUT as written by several vendors for MR: value = stored * slope + 0, arbitrary units.
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = slope_text
            ds.RescaleType = "US"
            per_volume_tags(ds, v)
            name = instance_file_name(file_prefix, instance)
            write_dataset(ds, out / name)
            names.append(name)
    remove_stale_files(out, file_prefix, names)
    return out


def write_mr_ir_series(
    out_dir: PathLike,
    shape: Sequence[int] = DEFAULT_MR_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_MR_SPACING_MM,
    seed: int = 0,
    *,
    ti_ms: Sequence[float] = DEFAULT_TI_MS,
    tr_ms: Union[float, Sequence[float]] = DEFAULT_IR_TR_MS,
    te_ms: float = DEFAULT_IR_TE_MS,
    flip_angle_deg: float = 90.0,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    field_strength_t: float = 3.0,
    array: str = "MnCl2",
    phantom: Optional[MRPhantom] = None,
) -> Path:
    """Write an inversion-recovery series: every TI is one volume, all in ONE SeriesInstanceUID.

    Each TI repeats the same ImagePositionPatient set; InversionTime, RepetitionTime (per TI),
    AcquisitionNumber and TemporalPositionIdentifier (both TI index + 1) tell the volumes apart.
    Pixels are uint16 with RescaleSlope = signal_max / 4000 (see ``rescale_for_storage``); the float
    images are ``simulate_ir_series(phantom, ti_ms, tr_ms, noise_sigma)`` and the ground truth is
    ``make_mr_phantom(shape, spacing_mm, seed, field_strength_t, array)`` (or ``phantom`` if given).
    """
    if phantom is None:
        phantom = make_mr_phantom(shape, spacing_mm, seed=seed, field_strength_t=field_strength_t, array=array)
    ti = [float(t) for t in ti_ms]
    tr = _per_volume(tr_ms, len(ti), "tr_ms")
    signal = simulate_ir_series(phantom, ti, tr, noise_sigma)
    info, series_key = _mr_series_info(phantom, "ir", 2, "MedSeg phantom IR T1 (multi-TI)")
    series_key += f"|{ti}|{[float(t) for t in tr]}|{te_ms}|{flip_angle_deg}|{noise_sigma}"

    def tags(ds, v: int) -> None:
        ds.ScanningSequence = ["IR"]
        ds.SequenceVariant = ["SK"]
        ds.ScanOptions = "IR"
        ds.SequenceName = "MedSeg_IR"
        ds.InversionTime = ds_value(ti[v])
        ds.RepetitionTime = ds_value(tr[v])
        ds.EchoTime = ds_value(te_ms)
        ds.EchoNumbers = 1
        ds.EchoTrainLength = 1
        ds.FlipAngle = ds_value(flip_angle_deg)
        ds.AcquisitionNumber = v + 1
        ds.TemporalPositionIdentifier = v + 1
        ds.NumberOfTemporalPositions = len(ti)

    return _write_mr_volumes(out_dir, phantom, signal, info, series_key, tags, "IR")


def write_mr_se_series(
    out_dir: PathLike,
    shape: Sequence[int] = DEFAULT_MR_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_MR_SPACING_MM,
    seed: int = 0,
    *,
    te_ms: Optional[Sequence[float]] = None,
    tr_ms: float = DEFAULT_SE_TR_MS,
    flip_angle_deg: float = 90.0,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    field_strength_t: float = 3.0,
    array: str = "MnCl2",
    phantom: Optional[MRPhantom] = None,
) -> Path:
    """Write a multi-echo spin-echo series: every echo is one volume, all in ONE SeriesInstanceUID.

    Default echo train: 32 echoes, TE = 10, 20, ... 320 ms. EchoTime and EchoNumbers (1..n) tell the
    volumes apart; AcquisitionNumber is 1 throughout (one acquisition, as scanners write it).
    Pixels: uint16, RescaleSlope = signal_max / 4000; float images = ``simulate_se_series``.
    """
    if phantom is None:
        phantom = make_mr_phantom(shape, spacing_mm, seed=seed, field_strength_t=field_strength_t, array=array)
    te = [float(t) for t in (default_echo_times() if te_ms is None else te_ms)]
    signal = simulate_se_series(phantom, te, noise_sigma)
    info, series_key = _mr_series_info(phantom, "se", 3, "MedSeg phantom multi-echo SE T2")
    series_key += f"|{te}|{tr_ms}|{flip_angle_deg}|{noise_sigma}"

    def tags(ds, v: int) -> None:
        ds.ScanningSequence = ["SE"]
        ds.SequenceVariant = ["NONE"]
        ds.SequenceName = "MedSeg_MESE"
        ds.RepetitionTime = ds_value(tr_ms)
        ds.EchoTime = ds_value(te[v])
        ds.EchoNumbers = v + 1
        ds.EchoTrainLength = len(te)
        ds.FlipAngle = ds_value(flip_angle_deg)
        ds.AcquisitionNumber = 1

    return _write_mr_volumes(out_dir, phantom, signal, info, series_key, tags, "SE")
